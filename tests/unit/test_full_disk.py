"""Writes that fail on a real full disk (a small tmpfs, :func:`small_disk`) leave nothing behind: no hidden tmp,
no partial folder, no torn record; a retry once space is back succeeds and readers see exactly one result."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest


def _everything(folder: Path) -> list[str]:
    """Every name under ``folder`` (hidden ones too), but the disk's filler."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.name != "filler")


def _rows(n_bytes: int) -> pa.Table:
    return pa.table({"prediction_id": [f"p{i}" for i in range(4)], "blob": [os.urandom(n_bytes // 4) for _ in range(4)]})


def test_a_feedback_log_batch_that_fails_on_a_full_disk_leaves_no_tmp_and_its_retry_lands_once(
        small_disk: Any) -> None:
    from tenfold.data.lake import Lake, Partition
    from tenfold.feedback.log import log_files, read_log, write_batch

    lake, part, rows = Lake(small_disk.path.as_uri()), Partition(2026, 5), _rows(64 * 1024)
    (small_disk.path / "predictions" / "year=2026" / "month=5").mkdir(parents=True)
    small_disk.fill(leave=16 * 1024)
    for _ in range(3):  # the sink retries for write_retry_s: no attempt may leave a tmp behind
        with pytest.raises(OSError) as failed:
            write_batch(lake, "predictions", part, rows)
        assert failed.value.errno == 28  # ENOSPC, for real
    assert _everything(small_disk.path / "predictions") == ["year=2026", "year=2026/month=5"]
    small_disk.free()
    write_batch(lake, "predictions", part, rows)
    assert len(log_files(lake, "predictions", part)) == 1
    assert len(_everything(small_disk.path / "predictions" / "year=2026" / "month=5")) == 1
    assert read_log(lake, "predictions", [part], rows.schema).num_rows == 4


@pytest.mark.parametrize("op", ["create", "put"])
def test_a_record_that_fails_on_a_full_disk_leaves_no_tmp_and_its_retry_lands_once(small_disk: Any, op: str) -> None:
    from tenfold.storage import FileObjects

    objects, data = FileObjects(small_disk.path / "results"), os.urandom(64 * 1024)
    (small_disk.path / "results" / "r").mkdir(parents=True)
    small_disk.fill(leave=16 * 1024)
    for _ in range(3):  # the inference worker retries for transient_retry_s
        with pytest.raises(OSError) as failed:
            getattr(objects, op)("r/r.json", data)
        assert failed.value.errno == 28
    assert _everything(small_disk.path / "results") == ["r"]
    small_disk.free()
    getattr(objects, op)("r/r.json", data)
    assert objects.names("r") == ["r.json"] and _everything(small_disk.path / "results") == ["r", "r/r.json"]
    assert objects.get("r/r.json") == data


def test_a_model_download_that_fails_on_a_full_disk_leaves_no_partial_folder(local_settings: Any, small_disk: Any) -> None:
    """materialize downloads a trained model from the bucket (the real GCS emulator) into a partial folder; a download
    that failed there (the run's work dir on a full disk) left `.model.partial-<uuid>/`, one more per retry."""
    import uuid

    from tenfold.pipelines import train_model as pipeline
    from tenfold.storage import gcs_client

    bucket_name, prefix = local_settings.storage.models_bucket, f"trained/run-{uuid.uuid4().hex[:8]}"
    bucket = gcs_client(local_settings).bucket(bucket_name)
    bucket.blob(f"{prefix}/meta.json").upload_from_string(b"{}")
    weights = os.urandom(96 * 1024)
    bucket.blob(f"{prefix}/weights.pt").upload_from_string(weights)
    work = small_disk.path / "work"
    work.mkdir()
    small_disk.fill(leave=32 * 1024)
    for _ in range(3):  # each retry of the step downloads again
        with pytest.raises(OSError):
            pipeline.materialize(local_settings, f"gs://{bucket_name}/{prefix}", work / "model")
    assert _everything(work) == []
    small_disk.free()
    model = pipeline.materialize(local_settings, f"gs://{bucket_name}/{prefix}", work / "model")
    assert (model / "weights.pt").read_bytes() == weights and _everything(work) == ["model", "model/meta.json", "model/weights.pt"]


def test_an_airflow_db_copy_that_fails_on_a_full_disk_leaves_no_tmp(tmp_path: Path, small_disk: Any) -> None:
    """The migrated-SQLite template is copied into a new AIRFLOW_HOME (and back into the cache); a copy that failed
    on a full disk left `.airflow.db.<pid>.tmp` beside the database."""
    from tenfold.local.airflow import _atomic_copy

    template = tmp_path / "template.sqlite"
    template.write_bytes(os.urandom(96 * 1024))
    home = small_disk.path / "airflow"
    home.mkdir()
    small_disk.fill(leave=32 * 1024)
    with pytest.raises(OSError) as failed:
        _atomic_copy(template, home / "airflow.db")
    assert failed.value.errno == 28
    assert _everything(home) == []
    small_disk.free()
    _atomic_copy(template, home / "airflow.db")
    assert _everything(home) == ["airflow.db"] and (home / "airflow.db").read_bytes() == template.read_bytes()


def test_a_class_archive_that_cannot_be_kept_on_a_full_disk_does_not_fail_the_job_nor_leave_its_tmps(
        small_disk: Any, caplog: pytest.LogCaptureFixture) -> None:
    """After a Spark job exited 0, class_sharing's bookkeeping writes the archive's record; on a full disk that write
    raised ENOSPC out of the `with` (the successful job became an error) and left `<key>.<pid>.json.tmp` behind.
    The JVM is not needed here: the staged archive is what the context hands the job to write at its exit."""
    from tenfold.features.submit import JAVA_OPTIONS, class_sharing

    cmd = ["spark-submit", "--conf", f"{JAVA_OPTIONS}=-XX:+UseSerialGC", "job.py"]
    folder = small_disk.path / "cds"
    with class_sharing(cmd, folder=folder, min_free_bytes=0) as job:
        staged = Path(job.option.removeprefix("-XX:ArchiveClassesAtExit="))
        assert job.option.startswith("-XX:ArchiveClassesAtExit=") and staged.parent == folder
        staged.write_bytes(os.urandom(64 * 1024))  # what the JVM wrote at its exit
        small_disk.fill(leave=0)
        assert small_disk.free_bytes() == 0
        job.exit_code = 0  # the job succeeded
        result = "the job's output"
    assert result == "the job's output"
    assert _everything(folder) == []  # no archive without its record, no staged archive, no pending record, no lock
    assert "was not kept" in caplog.text
    # With space back, the next job keeps its archive.
    small_disk.free()
    with class_sharing(cmd, folder=folder, min_free_bytes=0) as job:
        Path(job.option.removeprefix("-XX:ArchiveClassesAtExit=")).write_bytes(os.urandom(64 * 1024))
        job.exit_code = 0
    assert sorted(p.rsplit(".", 1)[1] for p in _everything(folder)) == ["jsa", "json"]


def _tear_the_last_line(small_disk: Any, append: Any) -> None:
    """Fill the disk but the slack of the file's last page, then append a line longer than that slack: the kernel
    writes what fits (a short write) and the rest fails with ENOSPC, leaving a torn last line for real."""
    small_disk.fill(leave=0)
    with pytest.raises(OSError) as failed:
        append("x" * 6000)
    assert failed.value.errno == 28
    small_disk.free()


def test_an_alert_appended_after_one_torn_by_a_full_disk_is_a_line_of_its_own(make_settings: Any, small_disk: Any) -> None:
    import json

    from tenfold.monitoring.alerts import Alert, _file_hook

    settings = make_settings(monitoring={"alert_file": small_disk.path / "alerts.jsonl"})
    _file_hook(settings, Alert("first", {}, "local"))
    _tear_the_last_line(small_disk, lambda text: _file_hook(settings, Alert("torn", {"text": text}, "local")))
    lines = (small_disk.path / "alerts.jsonl").read_text().split("\n")
    assert len(lines) == 2 and lines[1].startswith("{") and not lines[1].endswith("}")  # the torn line is there
    _file_hook(settings, Alert("after", {}, "local"))
    lines = (small_disk.path / "alerts.jsonl").read_text().splitlines()
    assert len(lines) == 3
    assert [json.loads(lines[0])["title"], json.loads(lines[2])["title"]] == ["first", "after"]


def test_a_loss_appended_after_one_torn_by_a_full_disk_is_a_line_of_its_own(small_disk: Any) -> None:
    """The training worker's losses.jsonl (reopened to append after a restart) is opened with open_lines_for_append."""
    import json

    from tenfold.fsio import open_lines_for_append

    path = small_disk.path / "losses.jsonl"

    def append(loss: Any) -> None:
        with open_lines_for_append(path, buffering=1) as out:
            out.write(json.dumps({"step": 1, "loss": loss}) + "\n")

    append(0.5)
    _tear_the_last_line(small_disk, append)
    append(0.25)
    lines = path.read_text().splitlines()
    assert len(lines) == 3 and [json.loads(lines[0])["loss"], json.loads(lines[2])["loss"]] == [0.5, 0.25]


def test_a_drift_report_that_fails_on_a_full_disk_leaves_no_tmp_and_its_retry_lands_once(small_disk: Any) -> None:
    """Reports (drift, rollout) went through a timestamp-named tmp that a failed write left behind."""
    from tenfold.monitoring.drift import _write

    uri, data = (small_disk.path / "reports" / "2026-05" / "report.json").as_uri(), os.urandom(96 * 1024)
    (small_disk.path / "reports" / "2026-05").mkdir(parents=True)
    small_disk.fill(leave=32 * 1024)
    for _ in range(3):
        with pytest.raises(OSError):
            _write(uri, data)
    assert _everything(small_disk.path / "reports") == ["2026-05"]
    small_disk.free()
    _write(uri, data)
    assert _everything(small_disk.path / "reports") == ["2026-05", "2026-05/report.json"]
    assert (small_disk.path / "reports" / "2026-05" / "report.json").read_bytes() == data


def test_lines_append_to_a_pipe_as_to_a_file() -> None:
    """TENFOLD_ALERT_FILE=/dev/stdout in a container is a pipe: it cannot be read back for a torn last line, and an
    append to it must still work (it raised, and every alert was dropped)."""
    from tenfold.fsio import open_lines_for_append

    read_end, write_end = os.pipe()
    try:
        with open_lines_for_append(Path(f"/proc/self/fd/{write_end}")) as out:
            out.write('{"title": "x"}\n')
        assert os.read(read_end, 100) == b'{"title": "x"}\n'
    finally:
        os.close(read_end)
        os.close(write_end)


def test_a_publish_that_fails_on_a_full_disk_leaves_no_partial_copy_and_its_retry_publishes(
        tmp_path: Path, small_disk: Any) -> None:
    """Each failed attempt (an Airflow retry) left a partial ``part-*.parquet.tmp-*`` in the new data folder, holding
    whatever space had been freed since, until a publish of the month succeeded."""
    import pyarrow.parquet as pq

    from tenfold.data.lake import Lake, Partition

    lake, part = Lake(small_disk.path.as_uri()), Partition(2013, 2)
    staged = tmp_path / "staged"
    staged.mkdir()
    pq.write_table(_rows(96 * 1024), staged / "part-00000.parquet", compression="none")
    (small_disk.path / "flights").mkdir()
    small_disk.fill(leave=48 * 1024)
    for _ in range(3):
        with pytest.raises(OSError) as failed:
            lake.publish("flights", part, staged.as_uri(), run_id="r")
        assert failed.value.errno == 28  # ENOSPC, for real
    assert [p for p in _everything(small_disk.path) if ".tmp-" in p] == []
    assert not lake.has_manifest("flights", part)
    small_disk.free()
    lake.publish("flights", part, staged.as_uri(), run_id="r")
    assert lake.read_table("flights", [part]).num_rows == 4
    assert [p for p in _everything(small_disk.path) if ".tmp-" in p] == []


@pytest.mark.parametrize("by", ["lake", "gate"])
def test_a_withdrawal_on_a_full_disk_still_unpublishes_the_month(small_disk: Any, by: str) -> None:
    """A withdrawal writes its verdict into the data folder before it removes the manifest. On a full disk that
    write failed first, and the refused (or corrupt) month stayed published: removing the manifest needs no space."""
    import contextlib

    import pyarrow.parquet as pq

    from tenfold.data.lake import Lake, LakeError, Partition
    from tenfold.quality.gate import unpublish_to_quarantine

    lake, part = Lake(small_disk.path.as_uri()), Partition(2013, 1)
    staged = lake.staging_path("t", part, "run-1")
    lake.fs.create_dir(staged, recursive=True)
    with lake.fs.open_output_stream(f"{staged}/part-00000.parquet") as out:
        pq.write_table(pa.table({"id": [1, 2, 3]}), out)
    lake.publish("t", part, lake.uri_of(staged), run_id="run-1")
    lake.discard(staged)
    small_disk.fill(leave=0)
    with contextlib.suppress(OSError, LakeError):  # moving it aside may fail too: what counts is that no reader sees it
        if by == "lake":
            lake.withdraw("t", part, "gate-k1", {"why": "refused"})
        else:
            unpublish_to_quarantine(lake, "t", part, "gate-k1", {"why": "refused"})
    assert not lake.has_manifest("t", part), "the refused month is still published"
    small_disk.free()
