"""Small synthetic partitions of the flights features table, exactly in its contract.

For tests and benchmarks that must not wait for the Spark features job: rows carry a learnable signal
(hour of day, carrier, route and weather effects) so metrics are meaningful, and they are published
through :meth:`tenfold.data.lake.Lake.publish` with a real ``_SUCCESS`` manifest, exactly as the
features job publishes them. Run ``python -m tenfold.workloads.flights.synthetic LAKE_URI 2013-01 2013-12 2000``.
"""

from __future__ import annotations

import datetime as dt
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from tenfold.config.settings import FEATURES_TABLE
from tenfold.data.lake import Lake, Partition, month_range
from tenfold.workloads.flights.contract import CONTRACT, tailnum_bucket

CARRIERS = ("AA", "B6", "DL", "EV", "MQ", "UA", "US", "WN")
ORIGINS = ("EWR", "JFK", "LGA")
DESTS = ("ATL", "BOS", "BWI", "CLT", "DCA", "DEN", "DFW", "DTW", "FLL", "IAD", "IAH", "LAS",
         "LAX", "MCO", "MIA", "MSP", "ORD", "PHL", "PIT", "RDU", "SEA", "SFO", "STL", "TPA")


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
    time_hour = [dt.datetime(d.year, d.month, d.day, int(h), tzinfo=dt.UTC) for d, h in zip(dates, hour, strict=True)]
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


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 4:
        print("usage: python -m tenfold.workloads.flights.synthetic LAKE_URI FIRST_MONTH LAST_MONTH ROWS_PER_MONTH", file=sys.stderr)
        return 2
    uri, first, last, rows = args
    parts = publish_synthetic_features(Lake(uri), month_range(first, last), int(rows))
    print(f"published {len(parts)} synthetic features partitions under {uri}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
