"""Byte-reproducible Parquet (:mod:`tenfold.data.parquet`): what a write that fails on a real full disk leaves and
says."""

from __future__ import annotations

import errno
import os
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from tenfold.data.parquet import write_sorted


def test_a_full_disk_names_the_file_written_and_leaves_no_tmp(small_disk: Any) -> None:
    """pyarrow's writer meets ENOSPC and names no file ("[Errno 28] Error writing bytes to file. Detail: [errno 28] No
    space left on device"): the feature job and bulk scoring printed that line, naming neither the file nor its disk,
    and the half-written ``.tmp-`` file stayed in the output folder for good (a retried task writes another name)."""
    rows = 1500  # 64 random bytes a row (zstd cannot shrink them): ~96 KiB, six times what is left, half the disk
    table = pa.table({"key": pa.array([os.urandom(64) for _ in range(rows)], pa.binary())})
    target = str(small_disk.path / "part-00000.parquet")
    small_disk.fill(leave=16 * 1024)
    with pytest.raises(OSError) as failed:
        write_sorted(table, ["key"], table.schema, pafs.LocalFileSystem(), target)
    assert failed.value.errno == errno.ENOSPC and failed.value.filename == target
    assert str(small_disk.path) in str(failed.value) and "No space left on device" in str(failed.value)
    assert sorted(os.listdir(small_disk.path)) == ["filler"]  # no .tmp- left, no file under the final name

    small_disk.free()  # the retry, once there is room, writes the file whole and nothing else
    assert write_sorted(table, ["key"], table.schema, pafs.LocalFileSystem(), target) == rows
    assert sorted(os.listdir(small_disk.path)) == ["part-00000.parquet"]
    assert pq.read_table(target).num_rows == rows


def test_the_same_rows_in_other_batches_give_the_same_bytes(tmp_path: Any) -> None:
    """The writer's pages followed the chunks it was given: 300,000 rows built as one chunk and the same rows read back
    in 65,536-row batches gave two files, so one month re-published from another source landed as other content."""
    import numpy as np

    from tenfold.data.parquet import write_table

    rows = 300_000
    whole = pa.table({"id": np.arange(rows, dtype=np.int64), "key": pa.array([f"k{i % 1000}" for i in range(rows)]),
                      "value": np.random.default_rng(0).random(rows)})
    batched = pa.Table.from_batches(whole.to_batches(max_chunksize=65536))
    assert batched.column("id").num_chunks == 5 and whole.column("id").num_chunks == 1
    fs = pafs.LocalFileSystem()
    write_table(whole, fs, str(tmp_path / "whole.parquet"))
    write_table(batched, fs, str(tmp_path / "batched.parquet"))
    assert (tmp_path / "whole.parquet").read_bytes() == (tmp_path / "batched.parquet").read_bytes()
    assert pq.read_table(tmp_path / "batched.parquet").equals(whole)


def test_an_empty_table_with_no_order_is_written_as_one_empty_file(tmp_path: Any) -> None:
    """The feature job writes a month that produced no rows as ``write_sorted(schema.empty_table(), [], ...)``: the sort
    by no keys raised ``ArrowInvalid: Must specify one or more sort keys`` instead of writing the promised empty file."""
    schema = pa.schema([("origin", pa.string()), ("hour", pa.timestamp("us", tz="UTC")), ("delay", pa.float64())])
    target = tmp_path / "part-00000.parquet"
    assert write_sorted(schema.empty_table(), [], schema, pafs.LocalFileSystem(), str(target)) == 0
    written = pq.read_table(target)
    assert written.num_rows == 0 and written.schema == schema
    assert sorted(os.listdir(tmp_path)) == ["part-00000.parquet"]  # the file under its name, no .tmp- beside it
