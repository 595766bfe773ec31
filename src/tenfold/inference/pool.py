"""The local pool of inference workers: N ``python -m tenfold.inference.worker`` processes, supervised.

``batch_inference`` starts it when ``settings.is_local`` (``inference.workers`` processes) and stops it
whatever happens; in the cloud the inference instance group, autoscaled on the subscription's backlog, runs
the same module instead. Each worker is started by :func:`tenfold.local.process.start` (its own process
group, a pid file naming pid and start time, output in ``<home>/run/inference-worker-<i>.log``), so stopping
touches only the very processes this pool started. A supervisor thread restarts a worker that died (a
crash loses nothing: its unacknowledged messages are redelivered to the others).

One pool runs in a home at a time: it holds ``<home>/run/inference-pool.lock`` (``flock``, released by the
kernel when its process dies) from before it reads the pid files until its workers are stopped. A second
pool (the CLI's run beside the DAG's, a benchmark) waits for it: the pid files, ready files and settings file
are the pool's, and a second pool that took them over stopped the first pool's live workers as stale ones.

    with WorkerPool(settings) as pool:   # or pool.start() ... pool.stop()
        ...
"""

from __future__ import annotations

import fcntl
import logging
import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

from tenfold.local import process

if TYPE_CHECKING:
    from tenfold.config import Settings

log = logging.getLogger(__name__)

WORKER_MODULE = "tenfold.inference.worker"
SETTINGS_FILE = "inference-settings.json"
LOCK_FILE = "inference-pool.lock"


def worker_name(slot: int) -> str:
    return f"inference-worker-{slot}"


class WorkerPool:
    """``workers`` worker processes (default ``settings.inference.workers``); see the module docstring."""

    def __init__(self, settings: Settings, workers: int | None = None, *, env: dict[str, str] | None = None,
                 restart: bool = True, preload: str | None = None) -> None:
        from tenfold.local.env import alert_hook_env, without_alert_hooks

        # A worker never alerts: neither its settings file nor its environment carries the hooks (a webhook URL is
        # a secret), whatever the task's own settings and environment hold.
        self.settings = without_alert_hooks(settings)
        self.preload = preload  # the model every worker loads before its first pull (the run's version)
        self.workers = workers or settings.inference.workers
        self.env = {**os.environ, **(env or {}), **alert_hook_env(self.settings)}  # each hook blank
        self.restart = restart
        self.run_dir = settings.local.home / "run"
        self.records: dict[int, process.ProcessRecord] = {}
        self.restarts = 0
        self.max_restarts = 5 * self.workers  # then a crashing worker stays down and the run fails naming the logs
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._held: int | None = None  # the lock file's descriptor while this pool holds it

    @property
    def settings_path(self) -> Path:
        return self.run_dir / SETTINGS_FILE

    def ready_path(self, slot: int) -> Path:
        return self.run_dir / f"{worker_name(slot)}.ready"

    def worker_argv(self, slot: int) -> list[str]:
        argv = [sys.executable, "-m", WORKER_MODULE, "--settings-file", str(self.settings_path),
                "--ready-file", str(self.ready_path(slot))]
        return [*argv, "--preload", self.preload] if self.preload else argv

    def _start_one(self, slot: int) -> process.ProcessRecord:
        self.ready_path(slot).unlink(missing_ok=True)
        argv = self.worker_argv(slot)
        # Tied to this process: a killed task (or benchmark) takes its workers with it.
        record = process.start(worker_name(slot), argv, run_dir=self.run_dir, port=0, env=self.env,
                               tie_to_this_process=True)
        self.records[slot] = record
        return record

    def _take_pool_lock(self, report_every_s: float = 30.0) -> None:
        """Hold the home's pool lock, waiting (and saying so) while another pool holds it."""
        fd = os.open(self.run_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
        waited, said = time.monotonic(), float("-inf")
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if self._stop.is_set():  # stopped while it waited: it never starts
                        raise process.LocalPlatformError("the inference pool was stopped while it waited for "
                                                         f"{self.run_dir / LOCK_FILE}") from None
                    if time.monotonic() - said >= report_every_s:
                        holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
                        log.info("another inference pool (pid %s) runs in %s: waiting for it to stop (%.0f s so far)",
                                 holder, self.run_dir, time.monotonic() - waited)
                        said = time.monotonic()
                    time.sleep(0.2)
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._held = fd

    def _release_pool_lock(self) -> None:
        if self._held is not None:
            fd, self._held = self._held, None
            os.close(fd)  # closing the last descriptor releases the flock

    def start(self) -> WorkerPool:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._take_pool_lock()
        try:
            with self._lock:  # a stop() from another thread waits for the workers started here, then stops them
                if self._stop.is_set():
                    raise process.LocalPlatformError("the inference pool was stopped before it started")
                self._start_all()
        except BaseException:
            self.stop()
            raise
        return self

    def _start_all(self) -> None:
        from tenfold.fsio import atomic_write

        # Readable by this user only: the alert hooks are not in it (__init__), but a workload's own settings may
        # hold what its owner keeps private.
        atomic_write(self.settings_path, self.settings.model_dump_json().encode(), mode=0o600)
        # Workers an earlier, killed run left behind (only if still those processes), every one before any starts.
        # One that outlives SIGKILL keeps its pid file and this start is refused: started, the new worker's pid file
        # took its place.
        for slot in range(self.workers):
            stale = process.read_record(self.run_dir, worker_name(slot))
            if stale is not None:
                try:
                    process.stop(stale, check=True)
                except process.StillRunning as exc:
                    raise process.StillRunning(_kept(exc, self.run_dir, slot), exc.pids) from exc
        for slot in range(self.workers):
            self._start_one(slot)
        log.info("started %d inference workers (logs %s/%s.log)", self.workers, self.run_dir, worker_name(0).replace("0", "<i>"))
        self._thread = threading.Thread(target=self._supervise, name="tenfold-infer-pool", daemon=True)
        self._thread.start()

    def _supervise(self) -> None:
        while not self._stop.wait(1.0):
            with self._lock:
                if self._stop.is_set():
                    return
                for slot, record in list(self.records.items()):
                    if not process.is_running(record) and self.restart and self.restarts < self.max_restarts:
                        log.warning("inference worker %d (pid %d) exited; restarting it; last log lines:\n%s",
                                    slot, record.pid, process.log_tail(record.log, 5))
                        self.restarts += 1
                        try:
                            self._start_one(slot)
                        except Exception as exc:  # (its interpreter gone, the disk full): tried again next round,
                            # up to max_restarts. Escaping, it ended this thread while alive() went on counting
                            # the workers as about to be restarted: the run waited out its whole timeout.
                            log.warning("inference worker %d could not be restarted: %s", slot, exc)

    def ready(self) -> int:
        """Workers that have loaded their model (``preload``) and are pulling."""
        return sum(self.ready_path(slot).exists() and process.is_running(r) for slot, r in self.records.items())

    def wait_ready(self, timeout: float) -> bool:
        """Wait until every worker is pulling (True), or ``timeout`` seconds (False: some are still loading).
        A worker that dies meanwhile is the supervisor's to restart, so no process is watched here."""
        try:
            process.wait_until(lambda: self.ready() == self.workers, timeout=timeout,
                               what=f"{self.workers} inference workers", interval=0.1)
        except process.LocalPlatformError:
            return False
        return True

    def alive(self) -> int:
        """Workers running, or about to be restarted (a pool that keeps crashing stops being restarted)."""
        supervised = self._thread is not None and self._thread.is_alive()
        if self.restart and supervised and not self._stop.is_set() and self.restarts < self.max_restarts:
            return self.workers
        return sum(process.is_running(r) for r in self.records.values())

    def stop(self) -> None:
        """Stop every worker, all at once (SIGTERM: each finishes the requests in hand; SIGKILL after a grace period).

        A worker that outlives SIGKILL (stuck in uninterruptible I/O: a hung mount) keeps its pid file, said in one
        line naming its pid, and the others are still stopped: dropped, nothing knew of it any more, and the next
        pool's worker of that slot took its pid file as if the slot were free."""
        self._stop.set()
        with self._lock:
            # All at once: stopped in turn, each worker's SIGTERM waited for the one before to exit (a busy one takes
            # ~17 s), and the workers not yet signalled went on pulling requests only to hand them back.
            records = list(self.records.items())
            if records:
                with ThreadPoolExecutor(max_workers=len(records), thread_name_prefix="tenfold-infer-stop") as stopping:
                    stops = [stopping.submit(self._stop_one, slot, record) for slot, record in records]
                # A fault in stopping one (not a worker that outlived SIGKILL: said in _stop_one) is raised once every
                # other worker is stopped, and the lock stays held (the kernel frees it when this process exits).
                for stopped in stops:
                    if (fault := stopped.exception()) is not None:
                        raise fault
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._release_pool_lock()

    def _stop_one(self, slot: int, record: process.ProcessRecord) -> None:
        try:
            process.stop(record, timeout=25.0, check=True)  # a worker's own stop is bounded at ~15 s (pull + close)
        except process.StillRunning as exc:
            log.warning("inference worker %d not stopped: %s", slot, _kept(exc, self.run_dir, slot))
        else:
            process.remove_pid_file(self.run_dir, worker_name(slot))
        self.ready_path(slot).unlink(missing_ok=True)

    def __enter__(self) -> WorkerPool:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _kept(exc: process.StillRunning, run_dir: Path, slot: int) -> str:
    """What to say of a worker that outlived SIGKILL (``exc``): its pid file is kept, and what to do."""
    return (f"{exc}; its pid file {process.pid_file(run_dir, worker_name(slot))} is kept, so the next inference pool "
            f"refuses to start beside it: {process.what_it_waits_on(exc.pids)}; once it has exited (a reboot ends it), "
            "run the task again")
