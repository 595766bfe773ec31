"""A spark-submit interrupted while its task waits (Airflow's task timeout or termination, raised in the task) is
killed with its whole group: it runs in a session of its own, and left running it would go on writing into the
staging folder that the retry rebuilds."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest

from tenfold.config import Settings
from tenfold.data.lake import Partition
from tenfold.features import submit
from tenfold.features.runners import LocalSparkJob
from tenfold.features.submit import run_submit


def test_an_interrupted_job_is_killed_with_its_whole_group(make_settings: Callable[..., Settings], tmp_path: Path,
                                                           interrupted_after: Any) -> None:
    settings = make_settings(spark={"class_sharing": False})
    pid_file = tmp_path / "child.pid"
    job = ["sh", "-c", f"sleep 300 & echo $! > {pid_file}; wait"]  # a grandchild, like the driver's JVM
    with interrupted_after(2):
        run_submit(job, "a test job", settings=settings, timeout_s=300)
    try:
        child = psutil.Process(int(pid_file.read_text()))
    except psutil.NoSuchProcess:
        return  # gone already (and reaped): killed with its group
    deadline = time.monotonic() + 5
    while child.is_running() and child.status() != psutil.STATUS_ZOMBIE and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not child.is_running() or child.status() == psutil.STATUS_ZOMBIE, "the job's process outlived its task"


@pytest.mark.parametrize("chosen_disk", [False, True], ids=["default", "spark-local-dirs-set"])
def test_a_job_killed_past_its_bound_leaves_no_scratch_behind(make_settings: Callable[..., Settings],
                                                              tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                              chosen_disk: bool) -> None:
    """A SIGKILLed JVM runs no shutdown hook: its spark-* and blockmgr-* folders (shuffle data) stayed in /tmp after
    every timeout. The job's scratch is a folder of the call's own, removed once the job's group is gone."""
    from tenfold.features.submit import SparkJobError

    big_disk = tmp_path / "big-disk"
    if chosen_disk:  # the user's SPARK_LOCAL_DIRS (a large disk) keeps being where the scratch goes
        big_disk.mkdir()
        monkeypatch.setenv("SPARK_LOCAL_DIRS", f"{big_disk},/elsewhere")
    settings = make_settings(spark={"class_sharing": False})
    seen = tmp_path / "scratch"
    # Like the driver: shuffle blocks under SPARK_LOCAL_DIRS, a temporary file under TMPDIR, by a grandchild.
    job = ["sh", "-c", f'echo "$SPARK_LOCAL_DIRS $TMPDIR" > {seen}; mkdir -p "$SPARK_LOCAL_DIRS/blockmgr-1"; '
                       f'(touch "$TMPDIR/tmp-x" "$SPARK_LOCAL_DIRS/blockmgr-1/shuffle_0.data"; sleep 300) & wait']
    with pytest.raises(SparkJobError, match="ran past 2 s and was killed"):
        run_submit(job, "a test job", settings=settings, timeout_s=2)
    local_dirs, tmp = seen.read_text().split()
    assert local_dirs == tmp and Path(local_dirs).name.startswith("tenfold-spark-")
    assert (Path(local_dirs).parent == big_disk) is chosen_disk
    assert not Path(local_dirs).exists(), "the killed job's scratch was left behind"


FEB = Partition(2013, 2)

# A try of the build_features task in a process of its own (an Airflow task): LocalSparkJob.run, the job's spark-submit
# replaced by a shell that starts a grandchild (as spark-submit starts the driver's JVM) and waits for it.
_FIRST_TRY = """
import sys
from tenfold.config import build_settings
from tenfold.data.lake import Partition
from tenfold.features import submit
from tenfold.features.runners import LocalSparkJob

home, output, pid_file = sys.argv[1:4]
settings = build_settings("local", {"TENFOLD_HOME": home})
settings = settings.model_copy(update={"spark": settings.spark.model_copy(update={"class_sharing": False})})
submit.spark_submit_command = lambda *a, **k: ["sh", "-c", f"sleep 300 & echo $! > {pid_file}; wait"]
LocalSparkJob(settings, timeout_s=300).run(Partition(2013, 2), output, key="k", attempt=1)
"""


def _quick_job(monkeypatch: pytest.MonkeyPatch, argv: list[str]) -> None:
    monkeypatch.setattr(submit, "spark_submit_command", lambda *a, **k: argv)


def test_a_retry_stops_the_job_a_killed_try_left_running(
        make_settings: Callable[..., Settings], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        killed_first_try: Callable[..., psutil.Process], orphan_probe: Callable[..., list[str]]) -> None:
    """A task SIGKILLed while its job ran never ran its cleanup: its spark-submit, in a session of its own, went on
    writing the staging folder (its lookups rewritten in place) beside the retry's job, started 30 s later into the
    same folder. The retry stops it before its own job starts."""
    settings = make_settings(spark={"class_sharing": False})
    output = (tmp_path / "staging").as_uri()
    pid_file, seen, records = tmp_path / "orphan.pid", tmp_path / "seen", settings.local.home / "spark-jobs"
    orphan = killed_first_try([sys.executable, "-c", _FIRST_TRY, str(settings.local.home), output, str(pid_file)],
                              pid_file, records)
    _quick_job(monkeypatch, orphan_probe(orphan, seen))
    LocalSparkJob(settings, timeout_s=60).run(FEB, output, key="k", attempt=2)
    assert seen.read_text() == "gone", "the killed try's job still ran when the retry's job started"
    assert not any(records.glob("*.json")), "the record of a job that ended stayed behind"


def test_a_recorded_pid_that_names_another_process_now_is_never_stopped(
        make_settings: Callable[..., Settings], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The record's pid alone is not the job: once the job is gone the pid is recycled, and the process that has it
    (its start time differs) is left alone."""
    from tenfold.local.process import record_of

    settings = make_settings(spark={"class_sharing": False})
    output = (tmp_path / "staging").as_uri()
    stranger = subprocess.Popen(["sleep", "300"], start_new_session=True)
    try:
        record = submit.job_record(settings, output)
        record.parent.mkdir(parents=True)
        entry = record_of(psutil.Process(stranger.pid), "spark-submit")
        record.write_text(dataclasses.replace(entry, create_time=entry.create_time - 60).to_json())
        _quick_job(monkeypatch, ["true"])
        LocalSparkJob(settings, timeout_s=60).run(FEB, output, key="k", attempt=2)
        assert stranger.poll() is None, "a process that took the recorded pid was stopped"
        assert not record.exists()
    finally:
        stranger.kill()
        stranger.wait()


def test_a_job_that_cannot_be_recorded_is_stopped_with_one_line_saying_why(
        make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch) -> None:
    """Unrecorded, a job its killed try left running could not be found by the next: it never runs unrecorded."""
    from tenfold.features.submit import SparkJobError

    settings = make_settings(spark={"class_sharing": False})
    (settings.local.home / "spark-jobs").write_text("a file where the records' folder goes")
    _quick_job(monkeypatch, ["sleep", "300"])
    started = time.monotonic()
    with pytest.raises(SparkJobError, match=r"^build_features for 2013-02 was stopped: its process could not be "
                                            r"recorded in .*; free the disk or fix the folder's permissions") as raised:
        LocalSparkJob(settings, timeout_s=20).run(FEB, "file:///srv/staging", key="k", attempt=1)
    assert "\n" not in str(raised.value) and time.monotonic() - started < 15
