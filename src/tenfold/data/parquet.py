"""Byte-reproducible Parquet: the same rows always give the same file.

Spark's Parquet writer (parquet-mr) is not byte-reproducible across JVMs: it lists each column
chunk's encodings from a hash set whose order changes between runs, so two identical jobs write
files that differ in the footer. Content-addressed publishing (:meth:`tenfold.data.lake.Lake.publish`)
needs equal bytes for equal content, so every file that enters the lake is written here by pyarrow
with fixed options and fixed row-group boundaries, streaming (bounded memory). The feature job's
Spark tasks write their files with :func:`write_sorted` (each file in a total order), so parquet-mr
never writes a file of the lake.
"""

from __future__ import annotations

import contextlib
import posixpath
import uuid
from collections.abc import Iterable, Iterator, Sequence

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from tenfold.fsio import make_dirs

ROW_GROUP_ROWS = 1 << 20
WRITE_OPTIONS: dict[str, object] = {
    "compression": "zstd",
    "compression_level": 3,
    "write_statistics": True,
    "version": "2.6",
}


def _fixed_chunks(batches: Iterable[pa.RecordBatch], schema: pa.Schema, rows: int) -> Iterator[pa.Table]:
    """Re-cut a stream of batches into tables of exactly ``rows`` rows (the last may be shorter), each one chunk.

    One chunk each, not the input's batches: the writer's pages follow the chunks it is given, so the same rows cut
    into other batches (65,536-row ones read back from a file, one chunk built in memory) gave other bytes."""
    pending: list[pa.RecordBatch] = []
    count = 0
    for batch in batches:
        pending.append(batch)
        count += batch.num_rows
        while count >= rows:
            table = pa.Table.from_batches(pending, schema=schema)
            yield table.slice(0, rows).combine_chunks()
            rest = table.slice(rows)
            pending, count = rest.to_batches(), rest.num_rows
    if count:
        yield pa.Table.from_batches(pending, schema=schema).combine_chunks()


def write_table(table: pa.Table, fs: pafs.FileSystem, path: str) -> None:
    """Write ``table`` to ``path`` on ``fs`` reproducibly (schema metadata dropped)."""
    write_batches(table.to_batches(), table.schema, fs, path)


def write_batches(batches: Iterable[pa.RecordBatch], schema: pa.Schema, fs: pafs.FileSystem, path: str) -> None:
    schema = schema.remove_metadata()
    make_dirs(fs, posixpath.dirname(path))
    with pq.ParquetWriter(path, schema, filesystem=fs, **WRITE_OPTIONS) as writer:  # type: ignore[arg-type]
        for chunk in _fixed_chunks((b.replace_schema_metadata(None) for b in batches), schema, ROW_GROUP_ROWS):
            writer.write_table(chunk, row_group_size=ROW_GROUP_ROWS)


def write_sorted(table: pa.Table, order: Sequence[str], schema: pa.Schema, fs: pafs.FileSystem, path: str) -> int:
    """Write ``table`` sorted by ``order`` (ascending, nulls last) and cast to ``schema`` to ``path``, reproducibly.

    With ``order`` naming every column (a total order), the same rows in any order give the same bytes.
    On a local disk the file is written under a
    temporary name and renamed, so a reader (or a retried task) never sees half of it; an object store
    (GCS) makes an object visible only once its upload is complete. Returns the rows written.
    """
    # No order (a job that produced no rows writes its empty month as one empty file): nothing to sort, and
    # pyarrow's sort_by refuses an empty list of keys ("Must specify one or more sort keys").
    ordered = (table.sort_by([(c, "ascending") for c in order]) if order else table).select(schema.names).cast(schema)
    try:
        if isinstance(fs, pafs.LocalFileSystem):
            tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"  # not *.parquet: never published, never validated
            try:
                write_table(ordered, fs, tmp)
                fs.move(tmp, path)
            except BaseException:
                # A write cut short (a full disk) must not leave its half file behind: a retried task writes another
                # tmp name, so nothing else would ever remove it.
                with contextlib.suppress(OSError):
                    fs.delete_file(tmp)
                raise
        else:
            write_table(ordered, fs, path)
    except OSError as exc:
        if exc.filename is not None or exc.errno is None:
            raise
        # pyarrow's writer names no file ("[Errno 28] Error writing bytes to file. Detail: [errno 28] No space left
        # on device"): the callers' one line would name neither the file nor its disk.
        raise OSError(exc.errno, exc.strerror or str(exc), path) from exc
    return int(ordered.num_rows)
