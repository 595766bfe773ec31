"""The append-only landing logs of the feedback loop (predictions and feedback, as they arrive).

Layout under the lake, beside the published tables' layout of :mod:`tenfold.data.lake`::

    <table>/year=2026/month=5/log-20260514T101500123456-<random>.parquet   one file per sink batch and month

A file is written whole before the sink acknowledges its messages: on a local lake to a hidden
temporary name, fsynced, renamed and its folder fsynced (so an acknowledged message survives a power
cut); on GCS by a single object upload, which is atomic and durable once it returns. Readers list only
``*.parquet`` names, so they never see a file being written. A log is at-least-once: a batch whose
acknowledgement was lost lands again in a second file, and the join deduplicates by prediction id.
These tables carry no ``_SUCCESS`` manifest: read them with :func:`read_log`, not ``Lake.read_table``.
"""

from __future__ import annotations

import datetime as dt
import errno
import hashlib
import io
import logging
import posixpath
import shutil
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from tenfold.data.lake import Lake, LakeError, Partition
from tenfold.fsio import atomic_write, make_dirs, make_dirs_durable

LOG_PREFIX = "log-"
# The lake quarantine's folder (settings.storage.lake_layout) for a month's log files that cannot be read as their
# table: ``<quarantine>/<table>/year=/month=/unreadable-logs/<file>``. The bucket's lifecycle rule for the quarantine
# deletes them after its retention, as it does refused batches.
QUARANTINE_ATTEMPT = "unreadable-logs"

log = logging.getLogger(__name__)


def _write_local(path: str, data: bytes) -> None:
    # Durable, and a failed write (a full disk) leaves no hidden tmp behind (the sink retries: each leak would fill
    # it more); atomic_write syncs the folder, and make_dirs_durable any folder this write created.
    make_dirs_durable(Path(path).parent)
    atomic_write(Path(path), data)


def write_batch(lake: Lake, table: str, part: Partition, rows: pa.Table, *, now: dt.datetime | None = None) -> str:
    """Write ``rows`` as one new, durable log file of ``table``'s month ``part``; returns its path."""
    now = now or dt.datetime.now(dt.UTC)
    buf = io.BytesIO()
    pq.write_table(rows, buf)
    data = buf.getvalue()
    name = f"{LOG_PREFIX}{now:%Y%m%dT%H%M%S%f}-{hashlib.sha256(data).hexdigest()[:8]}{uuid.uuid4().hex[:4]}.parquet"
    path = posixpath.join(lake.partition_path(table, part), name)
    _write(lake, path, data)
    return path


def _write(lake: Lake, path: str, data: bytes) -> None:
    if isinstance(lake.fs, pafs.LocalFileSystem):
        _write_local(path, data)
    else:
        # An object store: the upload is atomic and durable when close() returns.
        with lake.fs.open_output_stream(path) as out:
            out.write(data)


PROBE_PREFIX = "_probe-"
# A generous bound on one record's share of a log file: a prediction takes ~160 bytes (500 in a 78 KB file), its
# request echoed in it. What a batch of N records may need on a local disk is N times this.
LOG_ROW_BYTES = 1024


def probe(lake: Lake, table: str, *, reserve: int = 0) -> None:
    """Write a small file under ``table`` (a name no reader lists) as :func:`write_batch` writes, and remove it:
    OSError when the lake cannot take a log file now (a full disk, a folder in the way, a bucket that refuses).
    On a local disk, also OSError (ENOSPC) with less than ``reserve`` bytes free: a nearly full disk took the
    probe's few bytes, and then refused the batch the sink had pulled on the strength of it."""
    path = posixpath.join(lake.table_path(table), f"{PROBE_PREFIX}{uuid.uuid4().hex}")
    _write(lake, path, b"probe")
    lake.fs.delete_file(path)
    if reserve and isinstance(lake.fs, pafs.LocalFileSystem):
        free = shutil.disk_usage(posixpath.dirname(path)).free
        if free < reserve:
            raise OSError(errno.ENOSPC, f"the lake's disk has {free // 1024} KiB free, under the {reserve // 1024} KiB "
                                        "a batch may take")


def log_months(lake: Lake, table: str) -> list[Partition]:
    """Months of ``table`` that hold at least one log file, in time order."""
    selector = pafs.FileSelector(lake.table_path(table), recursive=True, allow_not_found=True)
    found = set()
    for info in lake.fs.get_file_info(selector):
        if info.type != pafs.FileType.File or not _is_log(info.base_name):
            continue
        rel = posixpath.relpath(posixpath.dirname(info.path), lake.table_path(table)).split("/")
        if len(rel) == 2 and rel[0].startswith("year=") and rel[1].startswith("month="):
            try:
                found.add(Partition(int(rel[0][5:]), int(rel[1][6:])))
            except ValueError as exc:  # year=x, month=13: not a folder the sink writes
                raise LakeError(f"{lake.uri}/{table}/{rel[0]}/{rel[1]} is not a month's folder ({exc}): the sink "
                                "writes year=YYYY/month=M only; move that folder out of the table") from None
    return sorted(found)


def _is_log(name: str) -> bool:
    return name.startswith(LOG_PREFIX) and name.endswith(".parquet")


def landed_at(name: str) -> dt.datetime | None:
    """When a log file landed, from its name (the sink's clock, UTC); None for a name that does not say."""
    stamp = name[len(LOG_PREFIX):].split("-", 1)[0]
    try:
        return dt.datetime.strptime(stamp, "%Y%m%dT%H%M%S%f").replace(tzinfo=dt.UTC)
    except ValueError:
        return None


def log_files(lake: Lake, table: str, part: Partition, *, landed_since: dt.datetime | None = None) -> list[pafs.FileInfo]:
    """The log files of one month, oldest first (names start with their landing time); with ``landed_since``,
    only those landed then or later (and any whose name gives no time)."""
    selector = pafs.FileSelector(lake.partition_path(table, part), allow_not_found=True)
    infos = [i for i in lake.fs.get_file_info(selector) if i.type == pafs.FileType.File and _is_log(i.base_name)]
    if landed_since is not None:
        infos = [i for i in infos if (at := landed_at(i.base_name)) is None or at >= landed_since]
    return sorted(infos, key=lambda i: i.base_name)


def read_log(lake: Lake, table: str, parts: Iterable[Partition], schema: pa.Schema, *,
             landed_since: dt.datetime | None = None, quarantine: Callable[[], None] | None = None) -> pa.Table:
    """Every row of ``table``'s logs in ``parts`` (redeliveries included), as ``schema``; empty if none.
    ``landed_since``: only the files landed then or later (:func:`log_files`). A file whose content cannot be
    read as ``schema`` is skipped with a warning, and with ``quarantine`` (the join's check that it still holds
    the join lock, :func:`tenfold.feedback.lock.join_lock`, called before each move) moved out of every join's way."""
    tables = []
    for part in parts:
        for info in log_files(lake, table, part, landed_since=landed_since):
            read = _read_file(lake, table, part, info.path, schema, quarantine=quarantine)
            if read is not None:
                tables.append(read)
    return pa.concat_tables(tables) if tables else schema.empty_table()


def conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """``table`` (a log file's own columns) as ``schema``: columns in its order, cast to its types, a nullable
    column the file lacks (written before the column was added) as nulls. ValueError naming the columns when it
    cannot be: a required column missing or holding nulls, or a column of a type that does not convert (another
    table's file, say), which would otherwise fail every join of its month."""
    have = set(table.column_names)
    missing = [f.name for f in schema if not f.nullable and f.name not in have]
    if missing:
        raise ValueError(f"it lacks the required column(s) {', '.join(missing)}")
    columns = []
    for f in schema:
        if f.name not in have:
            columns.append(pa.nulls(table.num_rows, f.type))
            continue
        column = table[f.name]
        try:
            column = column.cast(f.type)
        except pa.ArrowException as exc:
            raise ValueError(f"its column {f.name} is {column.type}, which does not convert to {f.type} ({exc})") from exc
        if not f.nullable and column.null_count:
            raise ValueError(f"its required column {f.name} holds {column.null_count} null(s)")
        columns.append(column)
    return pa.Table.from_arrays(columns, schema=schema)


def quarantined_path(lake: Lake, table: str, part: Partition, path: str) -> str:
    """Where the log file ``path`` of ``table``'s month ``part`` goes when it cannot be read as its table."""
    return posixpath.join(lake.quarantine_path(table, part, QUARANTINE_ATTEMPT), posixpath.basename(path))


def _read_file(lake: Lake, table: str, part: Partition, path: str, schema: pa.Schema, *,
               quarantine: Callable[[], None] | None) -> pa.Table | None:
    """One log file as ``schema``; None when its content cannot be (one bad file, torn or another table's, copied in
    by hand or by another tool, must not stop every join, the canary's checks and the sink with it). An error
    reading the store itself is raised: the next join reads the file again."""
    raw: pa.Table | None
    try:
        raw = pq.read_table(path, filesystem=lake.fs)
    except (pa.ArrowException, OSError) as exc:
        try:
            with lake.fs.open_input_file(path) as f:
                data = f.readall()
        except OSError:
            raise exc from None  # the store, not the file
        try:
            raw = pq.read_table(pa.BufferReader(data))  # the first read's error was the store's
        except (pa.ArrowException, OSError) as bad:  # in memory: the bytes themselves are not the table
            raw, error = None, f"{type(bad).__name__}: {bad}"
    if raw is not None:
        try:
            return conform(raw, schema)
        except ValueError as wrong:
            error = str(wrong)
    if quarantine is None:
        log.warning("feedback log file %s of %s (%s) cannot be read as the %s log (%s): left out", path, table,
                    part.label, table, error)
        return None
    target = quarantined_path(lake, table, part, path)
    quarantine()  # still the join lock's holder (LockLost otherwise): another join may be reading the file
    make_dirs(lake.fs, posixpath.dirname(target))
    lake.fs.move(path, target)
    log.warning("feedback log file %s of %s (%s) cannot be read as the %s log (%s): moved to %s; no join reads it "
                "again", posixpath.basename(path), table, part.label, table, error, target)
    return None
