"""Nothing a launch started outlives it: real SIGKILLs of torchrun (an operator's kill -9, the OOM killer), alone and
together with its launcher.

torch starts each worker in a session of its own, with no parent-death signal, and the ranks host their own store
(rank 0): a killed torchrun leaves them training, reparented to init, and without the folder's lock (only torchrun
inherited it). The next launch into the folder (the Airflow task's retry) took the free lock and trained beside them:
two rank-0 processes pruned each other's checkpoints and both wrote the model and the result.

A real launcher runs in a child process with rank 1 held mid-step by the fault hook; the test finds the job's
processes by the marker each one carries in its environment (``tenfold.local.process.MARKER_ENV``).
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

from tenfold.config import Settings
from tenfold.local.process import MARKER_ENV, PARENT_MARKER_ENV, record_of, stop
from tenfold.training.config import TrainConfig
from tenfold.training.faults import FAULT_ENV
from tenfold.training.launch import JOB_HOLDER, JOB_LOCK, _sole_launch

READY_TIMEOUT_S = 300.0

_LAUNCHER = """
import pickle, sys
from tenfold.training.launch import run_torchrun
settings, config, out, env = pickle.load(open(sys.argv[1], "rb"))
run_torchrun(settings, config, out, nproc=2, timeout_s=300, max_restarts=0, env=env)
"""


def _marked(marker: str) -> list[psutil.Process]:
    """The live (not zombie) processes whose environment carries ``marker``."""
    found = []
    for p in psutil.process_iter():
        with contextlib.suppress(psutil.Error):
            if p.environ().get(MARKER_ENV) == marker and p.status() != psutil.STATUS_ZOMBIE:
                found.append(p)
    return found


def _gone(procs: list[psutil.Process], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not any(_alive(p) for p in procs):
            return True
        time.sleep(0.1)
    return False


def _alive(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _still_running(workers: list[psutil.Process], marker: str) -> list[int]:
    """The pids of the job's processes still running: its workers seen at the start, and whatever carries its marker."""
    return sorted({p.pid for p in workers if _alive(p)} | {p.pid for p in _marked(marker)})


def _lock_frees(path: Path, timeout: float) -> bool:
    """Whether the lock at ``path`` is free within ``timeout`` (the kernel releases a killed holder's lock as it
    closes its files, which may come a moment after the holder shows as gone)."""
    import fcntl

    deadline = time.monotonic() + timeout
    with open(path, "rb") as lock:
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if time.monotonic() > deadline:
                    return False
                time.sleep(0.1)
            else:
                fcntl.flock(lock, fcntl.LOCK_UN)
                return True


class _Job:
    """A launcher in a child process, its job held with rank 1 paused at step 3; ``stop`` kills all that is left."""

    def __init__(self, settings: Settings, config: TrainConfig, tmp_path: Path,
                 env: dict[str, str] | None = None) -> None:
        self.out, self.ready, self.log = tmp_path / "run", tmp_path / "ready.json", tmp_path / "launcher.log"
        args = tmp_path / "args.pkl"
        args.write_bytes(pickle.dumps((settings, config, self.out,
                                       {FAULT_ENV: f"rank=1,step=3,at=step,mode=pause,ready={self.ready}"})))
        self.marker = ""
        with open(self.log, "wb") as log:
            self.launcher = subprocess.Popen([sys.executable, "-c", _LAUNCHER, str(args)], stdout=log,
                                             stderr=subprocess.STDOUT, start_new_session=True, env=env)

    def started(self) -> tuple[psutil.Process, list[psutil.Process]]:
        """torchrun, and its workers (both ranks: rank 1 paused, rank 0 waiting on it), once rank 1 is held."""
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not self.ready.exists():
            assert self.launcher.poll() is None, f"the launcher exited {self.launcher.returncode}: {self.said()}"
            assert time.monotonic() < deadline, f"the job never reached step 3: {self.said()}"
            time.sleep(0.05)
        job = json.loads((self.out / JOB_HOLDER).read_text())["job"]
        self.marker = job["marker"]
        torchrun = psutil.Process(job["pid"])
        assert "torch.distributed.run" in " ".join(torchrun.cmdline())
        workers = [p for p in _marked(self.marker) if "tenfold.training.worker" in " ".join(p.cmdline())
                   and p.pid != torchrun.pid and "torch.distributed.run" not in " ".join(p.cmdline())]
        assert len(workers) == 2, [p.cmdline() for p in workers]
        return torchrun, workers

    def said(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]

    def stop(self) -> None:
        if not self.marker:  # the test failed before started() read it: the job's record may still name it
            with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
                self.marker = json.loads((self.out / JOB_HOLDER).read_text())["job"]["marker"]
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.launcher.pid, signal.SIGKILL)
        for p in _marked(self.marker) if self.marker else []:
            with contextlib.suppress(psutil.Error):
                p.kill()
        if self.ready.exists():
            with contextlib.suppress(ProcessLookupError):
                os.kill(json.loads(self.ready.read_text())["pid"], signal.SIGKILL)
        self.launcher.wait(30)


def test_a_torchrun_killed_mid_job_leaves_no_worker_training_once_its_launch_has_failed(
        train_settings: Settings, small_config: TrainConfig, tmp_path: Path) -> None:
    """torchrun SIGKILLed while the launcher waits on it: the launch failed ("unknown error") and released the lock
    with both workers still running."""
    job = _Job(train_settings, small_config, tmp_path)
    try:
        torchrun, workers = job.started()
        os.kill(torchrun.pid, signal.SIGKILL)
        assert job.launcher.wait(120) == 1, job.said()  # TrainingFailed
        assert "TrainingFailed" in job.said()
        assert not (job.out / JOB_HOLDER).exists()  # the launch ended: its lock is free for the next
        left = _still_running(workers, job.marker)
        assert not left, f"the failed launch left processes of its job running: {left}"
    finally:
        job.stop()


def test_a_launch_stops_the_workers_a_launcher_killed_with_its_torchrun_left_before_it_starts(
        train_settings: Settings, small_config: TrainConfig, tmp_path: Path) -> None:
    """The launcher and torchrun SIGKILLed together (an OOM kill of the task's tree): the lock went with them, so the
    next launch took it at once and never looked at the job that ``.job.json`` still named."""
    job = _Job(train_settings, small_config, tmp_path)
    try:
        torchrun, workers = job.started()
        os.kill(job.launcher.pid, signal.SIGKILL)
        job.launcher.wait(30)
        os.kill(torchrun.pid, signal.SIGKILL)
        assert _gone([torchrun], 30)
        assert all(_alive(p) for p in workers)  # the orphans: training, reparented away from torchrun
        assert _lock_frees(job.out / JOB_LOCK, 30)  # and the lock with them, free for the next launch
        assert (job.out / JOB_HOLDER).exists()
        with _sole_launch(job.out, grace_s=10.0):
            left = _still_running(workers, job.marker)
            assert not left, f"the launch took the folder with the killed launcher's workers running: {left}"
    finally:
        job.stop()



def test_a_job_whose_task_died_first_is_stopped_with_the_platform_process_the_task_ran_under(
        train_settings: Settings, small_config: TrainConfig, tmp_path: Path) -> None:
    """The task (the launcher) killed first, by the OOM killer: torchrun, in a session of its own, was adopted by init
    and carried only its own marker (its lock's), so `tenfold down`, stopping the component the task ran under, found
    it neither by a parent link nor by that component's marker, and the job trained on. The launcher runs with a
    platform marker in its environment, as a task of a component that `tenfold up` started; its record stands for
    that component's."""
    import uuid

    platform = uuid.uuid4().hex
    job = _Job(train_settings, small_config, tmp_path, env={**os.environ, MARKER_ENV: platform})
    try:
        torchrun, workers = job.started()
        environ = torchrun.environ()
        assert (environ.get(MARKER_ENV), environ.get(PARENT_MARKER_ENV)) == (job.marker, platform)
        component = record_of(psutil.Process(job.launcher.pid), "airflow-scheduler", marker=platform)
        os.kill(job.launcher.pid, signal.SIGKILL)
        job.launcher.wait(30)
        assert _alive(torchrun) and all(_alive(p) for p in workers)  # adopted, training on
        stop(component, timeout=10)
        left = [p.pid for p in [torchrun, *workers] if not _gone([p], 10)]
        assert not left, f"the stop of the platform's component left its task's job running: {left}"
    finally:
        job.stop()
