"""A quarantine key used again (a refused run cleared and re-run) keeps both refusals side by side."""

from __future__ import annotations

import json
import logging
import posixpath
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from tenfold.data.lake import Lake, Partition
from tenfold.quality.gate import unpublish_to_quarantine

PART = Partition(2013, 5)
TABLE = "events"


def _publish(lake: Lake, ids: list[int], run_id: str) -> None:
    staged = lake.staging_path(TABLE, PART, run_id)
    lake.fs.create_dir(staged, recursive=True)
    with lake.fs.open_output_stream(f"{staged}/part-00000.parquet") as out:
        pq.write_table(pa.table({"id": pa.array(ids, pa.int64())}), out)
    lake.publish(TABLE, PART, lake.uri_of(staged), run_id=run_id)
    lake.discard(staged)


def _quarantined(lake: Lake, uri: str) -> tuple[list[int], dict]:
    path = lake._path(uri)
    with lake.fs.open_input_stream(f"{path}/_QUARANTINED.json") as stream:
        reason = json.loads(stream.read())
    (data,) = [i.path for i in lake.fs.get_file_info(pafs.FileSelector(path, recursive=True))
               if i.path.endswith(".parquet")]
    with lake.fs.open_input_stream(data) as stream:
        return pq.read_table(pa.BufferReader(stream.read())).column("id").to_pylist(), reason


def test_withdrawing_twice_under_one_key_keeps_both_batches_and_reasons(lake: Lake) -> None:
    _publish(lake, [1, 2, 3], "r1")
    first = unpublish_to_quarantine(lake, TABLE, PART, "run-key", {"why": "first"})
    assert not lake.has_manifest(TABLE, PART)

    _publish(lake, [4, 5], "r2")  # the month re-run, refused again under the same key
    second = unpublish_to_quarantine(lake, TABLE, PART, "run-key", {"why": "second"})
    assert not lake.has_manifest(TABLE, PART)

    assert first == lake.uri_of(lake.quarantine_path(TABLE, PART, "run-key"))
    assert second == lake.uri_of(lake.quarantine_path(TABLE, PART, "run-key-2"))
    ids1, reason1 = _quarantined(lake, first)
    ids2, reason2 = _quarantined(lake, second)
    assert (ids1, reason1["why"], json.loads(reason1["manifest"])["run_id"]) == ([1, 2, 3], "first", "r1")
    assert (ids2, reason2["why"], json.loads(reason2["manifest"])["run_id"]) == ([4, 5], "second", "r2")


def test_a_staged_batch_refused_twice_under_one_attempt_is_kept_twice(lake: Lake) -> None:
    for n, ids in enumerate(([1], [2, 2])):
        staged = lake.staging_path(TABLE, PART, "attempt-1")
        lake.fs.create_dir(staged, recursive=True)
        with lake.fs.open_output_stream(f"{staged}/part-00000.parquet") as out:
            pq.write_table(pa.table({"id": pa.array(ids, pa.int64())}), out)
        where = lake.quarantine(TABLE, PART, staged, "attempt-1", {"n": n})
        assert _quarantined(lake, where) == (ids, {"n": n})
        assert lake.fs.get_file_info(staged).type == pafs.FileType.NotFound  # moved, not copied


def _data_dirs(lake: Lake) -> list[str]:
    selector = pafs.FileSelector(lake.partition_path(TABLE, PART), allow_not_found=True)
    return sorted(i.base_name for i in lake.fs.get_file_info(selector)
                  if i.type == pafs.FileType.Directory and i.base_name.startswith("data-"))


def test_a_publish_killed_before_its_cleanup_is_finished_by_its_retry_and_a_withdrawal_names_the_refused_data(
    lake: Lake, monkeypatch
) -> None:
    """The retry found its content visible and returned before removing the replaced folder, which stayed for good;
    a later withdrawal then quarantined both folders as refused and named whichever sorted last."""
    _publish(lake, [1, 2, 3], "good")
    real = Lake._collect_garbage

    def killed(self: Lake, table: str, part: Partition, keep: str) -> None:
        raise KeyboardInterrupt("killed after the commit, before the cleanup")

    monkeypatch.setattr(Lake, "_collect_garbage", killed)
    with pytest.raises(KeyboardInterrupt):
        _publish(lake, [4, 5], "new")
    monkeypatch.setattr(Lake, "_collect_garbage", real)
    assert len(_data_dirs(lake)) == 2 and lake.read_manifest(TABLE, PART).run_id == "new"
    left_behind = next(d for d in _data_dirs(lake) if d != lake.read_manifest(TABLE, PART).data_dir)

    # A withdrawal while the old folder is still there: the refused (named) content is the one reported.
    where = unpublish_to_quarantine(lake, TABLE, PART, "run-key", {"why": "refused"})
    ids, reason = _quarantined(lake, where)
    assert ids == [4, 5] and reason["why"] == "refused" and "left_behind" not in reason
    (other,) = [u for u in (lake.uri_of(lake.quarantine_path(TABLE, PART, k)) for k in ("run-key", "run-key-2"))
                if u != where]
    ids, reason = _quarantined(lake, other)
    assert ids == [1, 2, 3] and "not the one refused" in reason["left_behind"]
    assert left_behind not in _data_dirs(lake)

    # The same kill, then the retry of the same publish: it removes what the killed one left.
    _publish(lake, [1, 2, 3], "good")
    monkeypatch.setattr(Lake, "_collect_garbage", killed)
    with pytest.raises(KeyboardInterrupt):
        _publish(lake, [4, 5], "new")
    monkeypatch.setattr(Lake, "_collect_garbage", real)
    assert len(_data_dirs(lake)) == 2
    _publish(lake, [4, 5], "new-retry")
    assert _data_dirs(lake) == [lake.read_manifest(TABLE, PART).data_dir]
    assert lake.read_manifest(TABLE, PART).run_id == "new"  # the visible content kept its manifest


def test_a_withdrawal_of_content_re_published_since_it_was_checked_withdraws_nothing(lake: Lake) -> None:
    """The gate withdraws only the content it checked: a partition re-published while it was validated stays
    published, and both withdraw paths (the gate's and a reader's) say so with None."""
    _publish(lake, [1, 2], "checked")
    checked = lake.read_manifest(TABLE, PART).data_dir
    _publish(lake, [3, 4, 5], "newer")
    assert unpublish_to_quarantine(lake, TABLE, PART, "gate-run", {"why": "failed"}, data_dir=checked) is None
    assert lake.withdraw(TABLE, PART, "reader", {"why": "corrupt"}, data_dir=checked) is None
    assert lake.read_table(TABLE, [PART]).column("id").to_pylist() == [3, 4, 5]
    assert unpublish_to_quarantine(lake, TABLE, PART, "gate-run", {"why": "failed"},
                                   data_dir=lake.read_manifest(TABLE, PART).data_dir) is not None
    assert not lake.has_manifest(TABLE, PART)


def test_a_refused_folder_this_writer_may_not_quarantine_leaves_its_publish_committed_and_cleaned(
    lake: Lake, caplog: pytest.LogCaptureFixture, unwritable: Any
) -> None:
    """A withdrawal by another account (a reader of the labelled table) died after it marked the data folder and
    removed the manifest, before its move. The sink, which may not write that quarantine folder, then publishes the
    month: the move raised PermissionError after the commit, skipped the rest of the clean-up, and did so on every
    publish of the month after it."""
    assert lake.uri.startswith("file:") or lake.uri.startswith("/"), lake.uri  # a local lake: its folders are real
    _publish(lake, [1, 2, 3], "withdrawn")
    (refused,) = _data_dirs(lake)
    manifest = lake.manifest_path(TABLE, PART)
    with lake.fs.open_input_stream(manifest) as stream:
        text = stream.read().decode()
    # What Lake._withdraw_locked does before its move: the verdict into the folder, then the manifest removed.
    dest = lake.mark_refused(TABLE, PART, lake.partition_path(TABLE, PART) + f"/{refused}", "reader-x",
                             {"why": "corrupt", "manifest": text})
    lake.fs.delete_file(manifest)
    # Leftovers the same clean-up removes: an unmarked folder a killed publish replaced, and a manifest's temporary.
    lake.fs.create_dir(lake.partition_path(TABLE, PART) + "/data-0000000000000000")
    with lake.fs.open_output_stream(f"{manifest}.tmp-dead") as out:
        out.write(b"{}")

    with unwritable(Path(posixpath.dirname(dest))), caplog.at_level(logging.WARNING, logger="tenfold.data.lake"):
        _publish(lake, [4, 5], "next")  # returns: its commit happened
    assert lake.read_table(TABLE, [PART]).column("id").to_pylist() == [4, 5]
    assert sorted(_data_dirs(lake)) == sorted([refused, lake.read_manifest(TABLE, PART).data_dir])  # kept, not deleted
    assert lake.fs.get_file_info(f"{manifest}.tmp-dead").type == pafs.FileType.NotFound
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert refused in warning and "write access" in warning, warning

    # Allowed again, the next publish of the month finishes the move the withdrawal meant.
    _publish(lake, [4, 5], "next-again")
    assert _data_dirs(lake) == [lake.read_manifest(TABLE, PART).data_dir]
    ids, reason = _quarantined(lake, lake.uri_of(dest))
    assert ids == [1, 2, 3] and reason["why"] == "corrupt"
