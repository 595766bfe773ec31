"""Byte-reproducible Parquet: the same rows always give the same file.

Spark's Parquet writer (parquet-mr) is not byte-reproducible across JVMs: it lists each column
chunk's encodings from a hash set whose order changes between runs, so two identical jobs write
files that differ in the footer. Content-addressed publishing (:meth:`tenfold.data.lake.Lake.publish`)
needs equal bytes for equal content, so every file that enters the lake is (re)written here by
pyarrow with fixed options and fixed row-group boundaries, streaming (bounded memory).
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterable, Iterator

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

ROW_GROUP_ROWS = 1 << 20
WRITE_OPTIONS: dict[str, object] = {
    "compression": "zstd",
    "compression_level": 3,
    "write_statistics": True,
    "version": "2.6",
}


def _fixed_chunks(batches: Iterable[pa.RecordBatch], schema: pa.Schema, rows: int) -> Iterator[pa.Table]:
    """Re-cut a stream of batches into tables of exactly ``rows`` rows (the last may be shorter)."""
    pending: list[pa.RecordBatch] = []
    count = 0
    for batch in batches:
        pending.append(batch)
        count += batch.num_rows
        while count >= rows:
            table = pa.Table.from_batches(pending, schema=schema)
            yield table.slice(0, rows)
            rest = table.slice(rows)
            pending, count = rest.to_batches(), rest.num_rows
    if count:
        yield pa.Table.from_batches(pending, schema=schema)


def write_table(table: pa.Table, fs: pafs.FileSystem, path: str) -> None:
    """Write ``table`` to ``path`` on ``fs`` reproducibly (schema metadata dropped)."""
    write_batches(table.to_batches(), table.schema, fs, path)


def write_batches(batches: Iterable[pa.RecordBatch], schema: pa.Schema, fs: pafs.FileSystem, path: str) -> None:
    schema = schema.remove_metadata()
    fs.create_dir(posixpath.dirname(path), recursive=True)
    with pq.ParquetWriter(path, schema, filesystem=fs, **WRITE_OPTIONS) as writer:  # type: ignore[arg-type]
        for chunk in _fixed_chunks((b.replace_schema_metadata(None) for b in batches), schema, ROW_GROUP_ROWS):
            writer.write_table(chunk, row_group_size=ROW_GROUP_ROWS)


def rewrite_reproducibly(uri: str, *, name: str = "part-00000.parquet") -> str:
    """Replace the one ``.parquet`` file in folder ``uri`` by a reproducible copy ``name``; returns its path.

    Other files Spark leaves (``_SUCCESS``, ``.crc``) are removed so the folder holds the data only.
    """
    fs, root = pafs.FileSystem.from_uri(uri)
    infos = [i for i in fs.get_file_info(pafs.FileSelector(root)) if i.type == pafs.FileType.File]
    data = [i.path for i in infos if i.base_name.endswith(".parquet")]
    if len(data) != 1:
        raise ValueError(f"expected exactly one Parquet file in {uri}, found {len(data)}: coalesce the output first")
    source = pq.ParquetFile(data[0], filesystem=fs)
    target = posixpath.join(root, name)
    tmp = f"{target}.tmp"
    write_batches(source.iter_batches(batch_size=65536), source.schema_arrow, fs, tmp)
    for info in infos:
        fs.delete_file(info.path)
    fs.move(tmp, target)
    return target
