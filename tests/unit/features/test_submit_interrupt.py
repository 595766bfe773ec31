"""A spark-submit interrupted while its task waits (Airflow's task timeout or termination, raised in the task) is
killed with its whole group: it runs in a session of its own, and left running it would go on writing into the
staging folder that the retry rebuilds."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest

from tenfold.config import Settings
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
