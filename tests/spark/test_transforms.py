"""The features transforms on small hand-made frames (real Spark, local[2,4])."""

from __future__ import annotations

import datetime as dt
from typing import Any
from zoneinfo import ZoneInfo

import pyarrow as pa
import pytest
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.testing import assertDataFrameEqual

from tenfold.data.lake import Partition, schema_hash
from tenfold.features.job import ContractError, check_schema, sorted_single_file, write_features
from tenfold.workloads.flights import contract as schema
from tenfold.workloads.flights import transform as transforms
from tenfold.workloads.flights.sources import SCHEMAS

NY = ZoneInfo("America/New_York")
UTC = dt.UTC


def flight(**kw: Any) -> dict[str, Any]:
    """A raw flights row; ``time_hour`` follows from the local date and scheduled departure."""
    row: dict[str, Any] = dict(
        year=2013, month=1, day=1, dep_time=600, sched_dep_time=600, dep_delay=0.0, arr_time=900,
        sched_arr_time=900, arr_delay=0.0, carrier="AA", flight=1, tailnum="N1", origin="JFK", dest="LAX",
        air_time=300.0, distance=2475.0,
    )
    row.update(kw)
    hour, minute = divmod(row["sched_dep_time"], 100)
    row.setdefault("hour", hour)
    row.setdefault("minute", minute)
    local = dt.datetime(row["year"], row["month"], row["day"], hour, tzinfo=NY)
    row.setdefault("time_hour", local.astimezone(UTC))
    return row


def frame(spark: SparkSession, table: str, rows: list[dict[str, Any]]) -> DataFrame:
    """A Spark frame with exactly the raw table's types (as ingest writes them)."""
    sch = SCHEMAS[table]
    full = [{name: r.get(name) for name in sch.names} for r in rows]
    return spark.createDataFrame(pa.Table.from_pylist(full, schema=sch))


AIRPORTS = [
    {"faa": "JFK", "name": "JFK", "lat": 40.6, "lon": -73.8, "alt": 13, "tz": -5.0, "dst": "A", "tzone": "America/New_York"},
    {"faa": "LAX", "name": "LAX", "lat": 33.9, "lon": -118.4, "alt": 126, "tz": -8.0, "dst": "A", "tzone": "America/Los_Angeles"},
    {"faa": "PHX", "name": "PHX", "lat": 33.4, "lon": -112.0, "alt": 1135, "tz": -7.0, "dst": "N", "tzone": "America/Phoenix"},
]


def test_label_and_cancelled_follow_the_contract(spark: SparkSession) -> None:
    rows = [
        flight(flight=1, arr_delay=14.0),  # on time
        flight(flight=2, arr_delay=15.0),  # exactly the threshold: late
        flight(flight=3, arr_delay=None, dep_time=None, arr_time=None),  # cancelled: never left
        flight(flight=4, arr_delay=None, arr_time=None),  # diverted: left, never arrived
        flight(flight=5, arr_delay=-20.0),
    ]
    got = transforms.with_label(frame(spark, "flights", rows)).select("flight", "label", "cancelled")
    expected = spark.createDataFrame(
        [(1, 0, False), (2, 1, False), (3, 1, True), (4, 1, False), (5, 0, False)],
        "flight int, label int, cancelled boolean",
    )
    assertDataFrameEqual(got, expected, checkRowOrder=False)


def test_schedule_features(spark: SparkSession) -> None:
    rows = [
        flight(flight=1, sched_dep_time=515, tailnum="N14228"),  # 2013-01-01 is a Tuesday
        flight(flight=2, day=6, sched_dep_time=2359, tailnum=None),  # a Sunday; unknown tail number
    ]
    got = transforms.with_schedule(frame(spark, "flights", rows)).select(
        "flight", "sched_dep_hour", "sched_dep_minute_of_day", "day_of_week", "tailnum_bucket"
    )
    expected = spark.createDataFrame(
        [(1, 5, 315.0, 2, schema.tailnum_bucket("N14228")), (2, 23, 1439.0, 7, schema.UNKNOWN_TAILNUM_BUCKET)],
        "flight int, sched_dep_hour int, sched_dep_minute_of_day double, day_of_week int, tailnum_bucket int",
    )
    assertDataFrameEqual(got, expected, checkRowOrder=False)


def test_tailnum_bucket_matches_python_for_many_tails(spark: SparkSession) -> None:
    tails = [f"N{i}{c}" for i in range(40) for c in "AQZ"]
    rows = [flight(flight=i, tailnum=t) for i, t in enumerate(tails)]
    got = transforms.with_schedule(frame(spark, "flights", rows)).select("tailnum", "tailnum_bucket")
    expected = spark.createDataFrame([(t, schema.tailnum_bucket(t)) for t in tails], "tailnum string, tailnum_bucket int")
    assertDataFrameEqual(got, expected, checkRowOrder=False)
    assert len({schema.tailnum_bucket(t) for t in tails}) > 30  # actually spread over the buckets


def test_block_minutes_cross_time_zones_midnight_and_dst(spark: SparkSession) -> None:
    rows = [
        # JFK 17:00 EST -> LAX 20:30 PST: 6.5 h in the air and on the ground
        flight(flight=1, sched_dep_time=1700, sched_arr_time=2030),
        # JFK 21:00 EST -> LAX 00:30 PST the next day
        flight(flight=2, sched_dep_time=2100, sched_arr_time=30),
        # July: JFK 10:00 EDT (14:00 UTC) -> PHX 12:00 MST (no DST; 19:00 UTC)
        flight(flight=3, month=7, day=1, sched_dep_time=1000, sched_arr_time=1200, dest="PHX"),
        # destination not in airports: unknown time zone
        flight(flight=4, sched_dep_time=1000, sched_arr_time=1400, dest="SJU"),
        # Overnight on the nights the clocks change (JetBlue 2002 and 112 to BUF in 2013): the arrival's own offset.
        # 2013-11-03 22:50 EST (03:50 UTC) -> 00:08 EST the next day (05:08 UTC): 78 min, not 18
        flight(flight=5, month=11, day=3, sched_dep_time=2250, sched_arr_time=8, dest="BUF"),
        # 2013-03-10 23:00 EDT (03:00 UTC) -> 00:21 EDT the next day (04:21 UTC): 81 min, not 141
        flight(flight=6, month=3, day=10, sched_dep_time=2300, sched_arr_time=21, dest="BUF"),
    ]
    airports = [*AIRPORTS, {**AIRPORTS[0], "faa": "BUF", "name": "BUF", "tzone": "America/New_York"}]
    got = transforms.with_block_minutes(frame(spark, "flights", rows), frame(spark, "airports", airports))
    expected = spark.createDataFrame(
        [(1, 390.0), (2, 390.0), (3, 300.0), (4, None), (5, 78.0), (6, 81.0)], "flight int, sched_block_minutes double"
    )
    assertDataFrameEqual(got.select("flight", "sched_block_minutes"), expected, checkRowOrder=False)


def test_weather_and_planes_joins(spark: SparkSession) -> None:
    flights = frame(spark, "flights", [
        flight(flight=1, sched_dep_time=600, tailnum="N1"),
        flight(flight=2, sched_dep_time=700, tailnum="NX"),  # no weather that hour, unknown plane
    ])
    at6 = dt.datetime(2013, 1, 1, 6, tzinfo=NY).astimezone(UTC)
    weather = frame(spark, "weather", [
        {"origin": "JFK", "year": 2013, "month": 1, "day": 1, "hour": 6, "temp": 30.0, "dewp": 20.0, "humid": 60.0,
         "wind_dir": 270.0, "wind_speed": 10.0, "wind_gust": None, "precip": 0.1, "pressure": 1012.0, "visib": 9.0,
         "time_hour": at6},
        {"origin": "LGA", "year": 2013, "month": 1, "day": 1, "hour": 6, "temp": 99.0, "time_hour": at6},
    ])
    planes = frame(spark, "planes", [{"tailnum": "N1", "year": 2004, "seats": 55}])
    got = transforms.join_planes(transforms.join_weather(flights, weather), planes).select(
        "flight", "temp", "wind_gust", "precip", "plane_age", "plane_seats"
    )
    expected = spark.createDataFrame(
        [(1, 30.0, None, 0.1, 9.0, 55.0), (2, None, None, None, None, None)],
        "flight int, temp double, wind_gust double, precip double, plane_age double, plane_seats double",
    )
    assertDataFrameEqual(got, expected, checkRowOrder=False)


def test_history_aggregates_by_map_reduce(spark: SparkSession) -> None:
    history = frame(spark, "flights", [
        flight(flight=1, arr_delay=30.0, carrier="AA", dest="LAX", sched_dep_time=600),
        flight(flight=2, arr_delay=0.0, carrier="AA", dest="LAX", sched_dep_time=630),
        flight(flight=3, arr_delay=None, dep_time=None, carrier="B6", dest="LAX", sched_dep_time=600),  # cancelled
        flight(flight=4, arr_delay=-10.0, carrier="B6", dest="PHX", sched_dep_time=900),
    ])
    partials = transforms.history_partials(transforms.with_label(history))
    route = transforms.rollup(partials, "route", ("origin", "dest"))
    assertDataFrameEqual(
        route,
        spark.createDataFrame(
            # LAX: 3 flights, 2 late (one cancelled), mean over the 2 that arrived = 15
            [("JFK", "LAX", 2 / 3, 15.0, 3.0), ("JFK", "PHX", 0.0, -10.0, 1.0)],
            "origin string, dest string, route_delay_rate double, route_mean_delay double, route_flights double",
        ),
        checkRowOrder=False,
    )
    carrier = transforms.rollup(partials, "carrier", ("carrier",))
    assertDataFrameEqual(
        carrier,
        spark.createDataFrame(
            # B6: a cancelled flight only has no delay to average over... plus one that arrived
            [("AA", 0.5, 15.0, 2.0), ("B6", 0.5, -10.0, 2.0)],
            "carrier string, carrier_delay_rate double, carrier_mean_delay double, carrier_flights double",
        ),
        checkRowOrder=False,
    )
    only_cancelled = transforms.rollup(
        transforms.history_partials(transforms.with_label(history.where("flight = 3"))), "carrier", ("carrier",)
    )
    assert only_cancelled.collect()[0].asDict() == {
        "carrier": "B6", "carrier_delay_rate": 1.0, "carrier_mean_delay": None, "carrier_flights": 1.0
    }
    hour = transforms.rollup(partials, "origin_hour", ("origin", "sched_dep_hour"))
    assertDataFrameEqual(
        hour,
        spark.createDataFrame(
            [("JFK", 6, 2 / 3, 15.0, 3.0), ("JFK", 9, 0.0, -10.0, 1.0)],
            "origin string, sched_dep_hour int, origin_hour_delay_rate double, origin_hour_mean_delay double, "
            "origin_hour_flights double",
        ),
        checkRowOrder=False,
    )


# --- the whole transform, and leakage ---------------------------------------------------------------

FEATURE_COLUMNS = list(schema.CATEGORICAL_COLUMNS + schema.NUMERIC_COLUMNS)


def three_months() -> list[dict[str, Any]]:
    """Flights in Feb (history), Mar (the month built) and Apr (the future), two routes, two carriers."""
    rows = []
    n = 0
    for month, delays in ((2, [0.0, 40.0, None, 5.0]), (3, [10.0, 20.0, 90.0, None]), (4, [300.0, 300.0, 0.0, 1.0])):
        for i, delay in enumerate(delays):
            n += 1
            rows.append(flight(
                month=month, day=1 + i, flight=n, arr_delay=delay,
                dep_time=None if delay is None and i % 2 == 0 else 600,
                carrier="AA" if i % 2 else "B6", dest="LAX" if i < 2 else "PHX", sched_dep_time=600 + 100 * (i % 2),
            ))
    return rows


@pytest.fixture(scope="module")
def reference(spark: SparkSession) -> dict[str, DataFrame]:
    return {
        "weather": frame(spark, "weather", []),
        "planes": frame(spark, "planes", [{"tailnum": "N1", "year": 2000, "seats": 100}]),
        "airports": frame(spark, "airports", AIRPORTS),
    }


def build(
    spark: SparkSession, rows: list[dict[str, Any]], ref: dict[str, DataFrame], *, weather: DataFrame | None = None,
    **kw: Any,
) -> DataFrame:
    return transforms.build_features(
        frame(spark, "flights", rows), ref["weather"] if weather is None else weather, ref["planes"], ref["airports"],
        Partition(2013, 3), **kw
    )


def observation(origin: str, when: dt.datetime, temp: float) -> dict[str, Any]:
    """A raw weather row observed at ``when`` (UTC; the local fields follow from it); ``temp`` tells rows apart."""
    local = when.astimezone(NY)
    return {"origin": origin, "year": local.year, "month": local.month, "day": local.day, "hour": local.hour,
            "temp": temp, "dewp": temp - 10, "humid": 50.0, "wind_dir": 180.0, "wind_speed": 5.0 + temp / 100,
            "wind_gust": None, "precip": 0.0, "pressure": 1000.0 + temp, "visib": 10.0, "time_hour": when}


LATER_HOURS = (1, 2, 24)


def hour_weather(rows: list[dict[str, Any]], later: bool = False) -> list[dict[str, Any]]:
    """Weather at each flight's origin in its scheduled hour (temp = 10 + flight); with ``later``, only
    observations 1, 2 and 24 hours after that hour, each with other values (temp = -100 * hours - flight)."""
    if not later:
        return [observation(r["origin"], r["time_hour"], 10.0 + r["flight"]) for r in rows]
    out = [observation(r["origin"], r["time_hour"] + dt.timedelta(hours=h), -100.0 * h - r["flight"])
           for r in rows for h in LATER_HOURS]
    scheduled = {(r["origin"], r["time_hour"]) for r in rows}
    assert not any((o["origin"], o["time_hour"]) in scheduled for o in out), "a later row fell on a flight's own hour"
    return out


def test_build_features_rows_columns_and_types(spark: SparkSession, reference: dict[str, DataFrame], tmp_path: Any) -> None:
    out = build(spark, three_months(), reference)
    assert tuple(out.columns) == schema.ALL_COLUMNS
    rows = out.collect()
    assert sorted(r["flight"] for r in rows) == [5, 6, 7, 8]  # March only
    assert {r["plane_age"] for r in rows} == {13.0}
    # History is February alone: route JFK-LAX had 0 and 40 (1 of 2 late), JFK-PHX a cancellation and 5.
    by_flight = {r["flight"]: r for r in rows}
    assert by_flight[5]["route_delay_rate"] == 0.5 and by_flight[5]["route_mean_delay"] == 20.0
    assert by_flight[7]["route_delay_rate"] == 0.5 and by_flight[7]["route_mean_delay"] == 5.0
    assert {r["route_flights"] for r in rows} == {2.0}
    # The written Parquet schema is the contract's, nullability included.
    sorted_out = sorted_single_file(out, schema.CONTRACT)
    sorted_out.write.parquet(str(tmp_path / "f"))
    import pyarrow.parquet as pq

    written = pq.read_table(str(tmp_path / "f"))
    assert schema_hash(written.schema) == schema_hash(schema.CONTRACT.arrow_schema())
    assert written.column("flight").to_pylist() == sorted(written.column("flight").to_pylist(), key=lambda f: (
        by_flight[f]["day"], f))


def test_a_transform_whose_columns_are_not_the_contracts_is_refused_before_writing(
        spark: SparkSession, reference: dict[str, DataFrame]) -> None:
    """The writer casts each file to the contract: a string or int64 column was coerced, an extra one dropped, and
    the job's schema check compared the files it had cast, so it never refused anything (docs/workloads.md)."""
    out = build(spark, three_months(), reference)
    check_schema(out, schema.CONTRACT, "flights")  # the real transform's columns are the contract's
    wrong = (out.withColumn("distance", F.col("distance").cast("string"))
             .withColumn("flight", F.col("flight").cast("long"))
             .drop("visib").withColumn("extra", F.lit(1)))
    with pytest.raises(ContractError) as refused:
        check_schema(wrong, schema.CONTRACT, "flights")
    assert str(refused.value) == (
        "the flights workload's transform and its contract disagree on the features' columns (missing: visib; "
        "not in the contract: extra; flight is bigint, the contract says int32 (int); distance is string, the "
        "contract says double (double)): fix the transform (a cast, a select) or the contract's column_types before "
        "building the month (docs/workloads.md)")
    # a contract type Spark cannot produce is named, not left to the writer's cast
    import dataclasses

    unsigned = dataclasses.replace(schema.CONTRACT, column_types={**schema.CONTRACT.column_types, "flight": "uint32"})
    with pytest.raises(ContractError, match=r"the contract's flight is uint32, which Spark has no type for"):
        check_schema(out, unsigned, "flights")
    # wall-clock times with no zone would be written as if they were UTC, shifted by the zone's offset
    local = out.withColumn("time_hour", F.col("time_hour").cast("timestamp_ntz"))
    with pytest.raises(ContractError, match=r"time_hour is timestamp_ntz, the contract says timestamp\[us, "
                                            r"tz=UTC\] \(timestamp\)"):
        check_schema(local, schema.CONTRACT, "flights")


def test_a_null_in_a_required_column_is_refused_naming_the_column(
        spark: SparkSession, reference: dict[str, DataFrame], tmp_path: Any) -> None:
    """A column in required_in_file that holds a null failed in a Python worker with Arrow's "Casting field ... with
    null values to non-nullable", which names no column of the contract and says nothing of what to do."""
    out = build(spark, three_months(), reference)
    nulled = out.withColumn("route_flights", F.when(F.col("flight") == 5, F.lit(None)).otherwise(F.col("route_flights")))
    with pytest.raises(Exception, match=r"column 'route_flights' holds 1 nulls in part-0000\d.parquet, but the "
                                        r"contract's required_in_file says the transform makes it non-null"):
        write_features(nulled, schema.CONTRACT, (tmp_path / "out").as_uri(), files=2)


def test_no_history_gives_zero_flights_and_null_rates(spark: SparkSession, reference: dict[str, DataFrame]) -> None:
    march = [r for r in three_months() if r["month"] == 3]
    rows = build(spark, march, reference).collect()
    assert rows and all(r["route_flights"] == 0.0 and r["route_delay_rate"] is None for r in rows)


def test_no_leakage_from_the_month_itself_or_later(spark: SparkSession, reference: dict[str, DataFrame]) -> None:
    rows = three_months()
    march = [r for r in rows if r["month"] == 3]
    at_the_hour = hour_weather(rows)  # non-empty: every flight's scheduled hour is observed, the join is exercised
    base = build(spark, rows, reference, weather=frame(spark, "weather", at_the_hour)).select(
        *schema.KEY_COLUMNS, *FEATURE_COLUMNS)
    # The observation of the flight's scheduled hour is the one used.
    got = {r["flight"]: (r["temp"], r["dewp"], r["pressure"]) for r in base.collect()}
    assert got == {r["flight"]: (10.0 + r["flight"], r["flight"], 1010.0 + r["flight"]) for r in march}

    # Rewrite every outcome of March and April, add April flights on March's routes and hours, and add
    # weather observed 1, 2 and 24 hours after each flight's hour, with other values.
    mutated = []
    for r in rows:
        r = dict(r)
        if r["month"] >= 3:
            r["arr_delay"] = 999.0
            r["dep_time"] = None
        mutated.append(r)
    mutated += [flight(month=4, day=9, flight=100 + i, arr_delay=500.0, dest="LAX") for i in range(5)]
    weather = frame(spark, "weather", at_the_hour + hour_weather(rows, later=True))
    after = build(spark, mutated, reference, weather=weather).select(*schema.KEY_COLUMNS, *FEATURE_COLUMNS)
    assertDataFrameEqual(after, base, checkRowOrder=False)

    # Control: the same rewrite of February does move March's features (the test can fail).
    feb_changed = [dict(r, arr_delay=999.0) if r["month"] == 2 else r for r in rows]
    moved = build(spark, feb_changed, reference, weather=frame(spark, "weather", at_the_hour)).select(
        *schema.KEY_COLUMNS, *FEATURE_COLUMNS)
    assert {tuple(r) for r in moved.collect()} != {tuple(r) for r in base.collect()}


def _join_latest_within_two_hours(flights: DataFrame, weather: DataFrame) -> DataFrame:
    """A leaky weather join, for the control below: the newest observation from the scheduled hour up to two
    hours later (what "the weather around departure" could tempt one to write)."""
    from pyspark.sql import Window

    obs = transforms.weather_observations(weather).withColumnsRenamed({"origin": "_w_origin", "time_hour": "_w_at"})
    rid = flights.withColumn("_rid", F.monotonically_increasing_id())
    cond = (rid["origin"] == obs["_w_origin"]) & (obs["_w_at"] >= rid["time_hour"]) & (
        obs["_w_at"] < rid["time_hour"] + F.expr("INTERVAL 2 HOURS"))
    newest = Window.partitionBy("_rid").orderBy(F.col("_w_at").desc_nulls_last())
    joined = rid.join(obs, cond, "left").withColumn("_n", F.row_number().over(newest)).where(F.col("_n") == 1)
    return joined.drop("_n", "_rid", "_w_origin", "_w_at")


def test_the_leakage_test_fails_for_a_weather_join_that_reads_a_later_hour(
    spark: SparkSession, reference: dict[str, DataFrame], monkeypatch: pytest.MonkeyPatch
) -> None:
    from pyspark.errors import PySparkAssertionError

    # The leaky join still finds the scheduled hour's observation when nothing later exists, so only the
    # "nothing later" half of the leakage test (its assertDataFrameEqual) can catch it; it must.
    monkeypatch.setattr(transforms, "join_weather", _join_latest_within_two_hours)
    with pytest.raises(PySparkAssertionError, match="DIFFERENT_ROWS"):
        test_no_leakage_from_the_month_itself_or_later(spark, reference)


def test_history_window_excludes_older_months(spark: SparkSession, reference: dict[str, DataFrame]) -> None:
    rows = [*three_months(), flight(month=1, day=5, flight=99, arr_delay=100.0, dest="LAX")]
    one = build(spark, rows, reference, history_months=1).where(F.col("dest") == "LAX").select("route_flights")
    two = build(spark, rows, reference, history_months=2).where(F.col("dest") == "LAX").select("route_flights")
    # Flights per history month: February alone has 2 LAX flights; January adds 1 over a second month.
    assert {r[0] for r in one.collect()} == {2.0}
    assert {r[0] for r in two.collect()} == {1.5}


def test_flights_are_per_history_month_and_do_not_grow_with_the_window(
    spark: SparkSession, reference: dict[str, DataFrame]
) -> None:
    # The same February repeated in January: a plain count would double, flights per month must not.
    feb = [r for r in three_months() if r["month"] == 2]
    jan = [dict(r, month=1, flight=r["flight"] + 1000) for r in feb]
    jan = [flight(**{k: v for k, v in r.items() if k not in ("hour", "minute", "time_hour")}) for r in jan]
    march = [r for r in three_months() if r["month"] == 3]
    cols = ["flight", "route_flights", "carrier_flights", "origin_hour_flights"]
    one = {tuple(r) for r in build(spark, feb + march, reference).select(*cols).collect()}
    two = {tuple(r) for r in build(spark, jan + feb + march, reference).select(*cols).collect()}
    assert one == two
    # A group that flew in only one of the two months averages over both (the month it missed is 0).
    only_jan_b6 = [r for r in jan if r["carrier"] == "B6"] + [r for r in feb if r["carrier"] == "AA"] + march
    got = {r["carrier"]: r["carrier_flights"] for r in build(spark, only_jan_b6, reference).collect()}
    assert got == {"AA": 1.0, "B6": 1.0}  # 2 flights each, over 2 history months
