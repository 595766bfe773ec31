"""A spark-submit interrupted while its task waits (Airflow's task timeout or termination, raised in the task) is
killed with its whole group: it runs in a session of its own, and left running it would go on writing into the
staging folder that the retry rebuilds."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

from tenfold.config import Settings
from tenfold.features.submit import run_submit


def test_an_interrupted_job_is_killed_with_its_whole_group(make_settings: Callable[..., Settings], tmp_path: Path,
                                                           interrupted_after: Any) -> None:
    settings = make_settings(spark={"class_sharing": False})
    pid_file = tmp_path / "child.pid"
    job = ["sh", "-c", f"sleep 300 & echo $! > {pid_file}; wait"]  # a grandchild, like the driver's JVM
    with interrupted_after(2):
        run_submit(job, "a test job", settings=settings, timeout_s=300)
    child = psutil.Process(int(pid_file.read_text()))
    deadline = time.monotonic() + 5
    while child.is_running() and child.status() != psutil.STATUS_ZOMBIE and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not child.is_running() or child.status() == psutil.STATUS_ZOMBIE, "the job's process outlived its task"
