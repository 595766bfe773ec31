"""Two writers of one partition at once (a zombie task beside its retry, a CLI run beside the DAG's): each
publish holds the partition's writer lock, so neither removes the other's data folder or temporary files,
every publish succeeds, and what is left is one writer's complete content. (What a reader sees while a
publish lands is tests/unit/data/test_lake_faults.py's.)"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pyarrow.fs as pafs
import pytest

from tenfold.data.lake import PUBLISH_LOCK, Lake, Partition

PART = Partition(2013, 5)
TABLE = "events"
ROWS = 2_000

_WRITER = """
import json, pathlib, sys, time
import pyarrow as pa, pyarrow.parquet as pq
from tenfold.data.lake import Lake, Partition
lake, part, me, times = Lake(sys.argv[1]), Partition(2013, 5), int(sys.argv[2]), int(sys.argv[3])
gate = pathlib.Path(sys.argv[4])
(gate / f"ready-{me}").touch()
while not (gate / "go").exists():  # both start publishing together, their imports done
    time.sleep(0.01)
spans = []
for n in range(times):
    staged = lake.staging_path("events", part, f"w{me}-{n}")
    lake.fs.create_dir(staged, recursive=True)
    for f in range(3):
        with lake.fs.open_output_stream(f"{staged}/part-{f:05d}.parquet") as out:
            pq.write_table(pa.table({"writer": [me] * 2000, "n": [n] * 2000, "f": [f] * 2000}), out)
    started = time.monotonic()
    lake.publish("events", part, lake.uri_of(staged), run_id=f"w{me}-{n}")
    spans.append((started, time.monotonic()))
    lake.discard(staged)
print(json.dumps(spans), flush=True)
"""


def test_two_writers_of_one_partition_never_break_each_other(tmp_path: Path) -> None:
    import json
    import time

    uri, gate = (tmp_path / "lake").as_uri(), tmp_path / "gate"
    gate.mkdir()
    writers = [subprocess.Popen([sys.executable, "-c", _WRITER, uri, str(me), "40", str(gate)], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True) for me in (1, 2)]
    try:
        deadline = time.monotonic() + 60
        while not all((gate / f"ready-{me}").exists() for me in (1, 2)):
            assert time.monotonic() < deadline and all(w.poll() is None for w in writers), "a writer never got ready"
            time.sleep(0.01)
        (gate / "go").touch()
        outcomes = [w.communicate(timeout=120) for w in writers]
    finally:  # a writer left waiting for "go" (its peer died first) is not left running
        for w in writers:
            if w.poll() is None:
                w.kill()
                w.wait()
    for w, (_, err) in zip(writers, outcomes, strict=True):
        assert w.returncode == 0, err[-2000:]
    first, second = (json.loads(out) for out, _ in outcomes)
    # They published at the same time (else the lock was never contended, and this proved nothing of it).
    assert first[0][0] < second[-1][1] and second[0][0] < first[-1][1], (first[0], first[-1], second[0], second[-1])
    lake = Lake(uri)
    final = lake.read_table(TABLE, [PART])
    assert final.num_rows == 3 * ROWS and lake.files(TABLE, PART, verify=True)
    assert len(set(zip(final["writer"].to_pylist(), final["n"].to_pylist(), strict=True))) == 1  # one publish's rows
    # Only the manifest's folder is left, and the lock file; no temporary file of either writer.
    left = lake.fs.get_file_info(pafs.FileSelector(lake.partition_path(TABLE, PART), recursive=True))
    names = {i.base_name for i in left if i.type == pafs.FileType.File}
    assert not any(".tmp-" in n for n in names) and PUBLISH_LOCK in names
    folders = [i for i in left if i.type == pafs.FileType.Directory]
    assert [f.base_name for f in folders] == [lake.read_manifest(TABLE, PART).data_dir]


def test_a_lake_given_as_a_relative_path_is_the_folder_under_the_working_one(tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """`tenfold ingest --lake-uri relative/dir` ended in pyarrow's "Unsupported hostname in non-Windows local URI:
    'file://relative/dir'" (the path was read as a URI's host)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    monkeypatch.chdir(tmp_path)
    lake = Lake("relative/lake")
    assert lake.uri == str(tmp_path / "relative" / "lake")
    staged = tmp_path / "staged"
    staged.mkdir()
    pq.write_table(pa.table({"id": [1, 2]}), staged / "part-0.parquet")
    lake.publish("t", Partition(2013, 1), str(staged), run_id="r")
    assert (tmp_path / "relative" / "lake" / "t").is_dir()
    assert Lake(str(tmp_path / "relative" / "lake")).read_table("t", [Partition(2013, 1)]).num_rows == 2


def test_uris_with_a_scheme_are_not_taken_for_relative_folders(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tenfold.data.lake import LakeError

    monkeypatch.chdir(tmp_path)
    assert Lake(f"file:{tmp_path}/lake").root == str(tmp_path / "lake")  # the single-slash form Spark prints
    with pytest.raises(LakeError, match="empty"):
        Lake("")
    with pytest.raises(LakeError, match="names no bucket: give gs://bucket/"):
        Lake("gs:/typo")  # refused (a LakeError naming it, no raw ArrowInvalid), not a local folder named gs:
    assert not list(tmp_path.iterdir())


def test_a_single_slash_file_lake_publishes_quarantines_and_discards_by_its_own_uris(tmp_path: Path) -> None:
    """Lake(f"file:{tmp}/lake") opens, but a staged folder given by its uri_of (file:/tmp/...) was passed to pyarrow's
    local filesystem as it was: publish, quarantine and discard ended in a raw ArrowInvalid "Expected a local
    filesystem path, got a URI"."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    lake = Lake(f"file:{tmp_path}/lake")
    part = Partition(2013, 1)

    def staged() -> str:
        path = lake.staging_path("t", part)
        Path(path).mkdir(parents=True)
        pq.write_table(pa.table({"id": [1, 2]}), f"{path}/part-0.parquet")
        return lake.uri_of(path)

    uri = staged()
    assert uri.startswith("file:/") and not uri.startswith("file://")  # the lake's own single-slash form
    lake.publish("t", part, uri, run_id="r")
    assert lake.read_table("t", [part]).column("id").to_pylist() == [1, 2]
    lake.discard(uri)
    assert not Path(lake._path(uri)).exists()
    refused = lake.quarantine("t", part, staged(), "a1", {"reason": "test"})
    assert (Path(lake._path(refused)) / "part-0.parquet").is_file()
