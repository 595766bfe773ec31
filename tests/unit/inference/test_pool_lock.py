"""Two inference pools in one home (the CLI's run beside the DAG's): the second waits for the first.

The pools' workers here are real processes that sleep (the pool's own files, pid records and lock are what is
tested; the worker module runs in tests/integration/test_inference.py). Before the lock, the second pool read
the first one's pid files as stale ones and stopped its live workers.
"""

from __future__ import annotations

import sys
import threading
from pathlib import Path

from tenfold.config import build_settings
from tenfold.inference.pool import WorkerPool
from tenfold.local import process


class SleepingPool(WorkerPool):
    def worker_argv(self, slot: int) -> list[str]:
        return [sys.executable, "-c", "import time; time.sleep(300)"]


def test_a_second_pool_waits_for_the_first_and_leaves_its_workers_alone(tmp_path: Path) -> None:
    settings = build_settings("local", {"TENFOLD_HOME": str(tmp_path)})
    first = SleepingPool(settings, workers=2, restart=False).start()
    second = SleepingPool(settings, workers=2, restart=False)
    started = threading.Event()
    try:
        first_workers = dict(first.records)
        thread = threading.Thread(target=lambda: (second.start(), started.set()), daemon=True)
        thread.start()
        # The second pool is waiting for the lock (it holds nothing yet), and the first pool's workers live on.
        assert not started.wait(3.0), "the second pool started while the first one still ran"
        assert all(process.is_running(r) for r in first_workers.values())
        assert second.records == {}
        first.stop()
        assert started.wait(30.0), "the second pool did not start once the first one stopped"
        assert all(process.is_running(r) for r in second.records.values()) and len(second.records) == 2
        assert not any(process.is_running(r) for r in first_workers.values())
        assert {r.pid for r in second.records.values()}.isdisjoint(r.pid for r in first_workers.values())
        # Its pid files are its own workers'.
        for slot, record in second.records.items():
            assert process.read_record(second.run_dir, f"inference-worker-{slot}").pid == record.pid  # type: ignore[union-attr]
    finally:
        first.stop()
        second.stop()
    assert not any(process.is_running(r) for r in second.records.values())


def test_the_lock_of_a_killed_pool_is_free(tmp_path: Path) -> None:
    """flock dies with its process: a pool SIGKILLed mid-run does not hold every later run up."""
    import signal
    import subprocess
    import textwrap

    settings = build_settings("local", {"TENFOLD_HOME": str(tmp_path)})
    code = textwrap.dedent(f"""
        import sys, time
        from tenfold.config import build_settings
        from tenfold.inference.pool import WorkerPool
        class P(WorkerPool):
            def worker_argv(self, slot):
                return [sys.executable, "-c", "import time; time.sleep(300)"]
        P(build_settings("local", {{"TENFOLD_HOME": {str(tmp_path)!r}}}), workers=1, restart=False).start()
        print("started", flush=True)
        time.sleep(300)
    """)
    owner = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert owner.stdout is not None and owner.stdout.readline().strip() == "started"
        owner.send_signal(signal.SIGKILL)
        owner.wait(timeout=30)
    finally:
        owner.kill()
    pool = SleepingPool(settings, workers=1, restart=False)
    done = threading.Event()
    threading.Thread(target=lambda: (pool.start(), done.set()), daemon=True).start()
    try:
        assert done.wait(30.0), "a pool waited for the lock of a SIGKILLed one"
        assert process.is_running(pool.records[0])
    finally:
        pool.stop()


def test_a_pool_stopped_while_it_waits_never_starts(tmp_path: Path) -> None:
    settings = build_settings("local", {"TENFOLD_HOME": str(tmp_path)})
    first = SleepingPool(settings, workers=1, restart=False).start()
    second = SleepingPool(settings, workers=1, restart=False)
    raised: list[BaseException] = []

    def start() -> None:
        try:
            second.start()
        except BaseException as exc:  # what the waiting start ends with is the assertion
            raised.append(exc)

    waiter = threading.Thread(target=start, daemon=True)
    try:
        waiter.start()
        assert not second.records
        second.stop()  # the task was killed or timed out while it waited
        waiter.join(10)
        assert not waiter.is_alive() and len(raised) == 1, raised
        assert isinstance(raised[0], process.LocalPlatformError) and "stopped while it waited" in str(raised[0])
        assert second.records == {}
    finally:
        first.stop()
        second.stop()
    # the lock is free again: a third pool starts at once
    third = SleepingPool(settings, workers=1, restart=False)
    done = threading.Event()
    threading.Thread(target=lambda: (third.start(), done.set()), daemon=True).start()
    try:
        assert done.wait(30.0)
    finally:
        third.stop()


def test_a_worker_that_cannot_be_restarted_ends_the_pool_instead_of_passing_for_alive(tmp_path: Path) -> None:
    """A worker died and its restart failed (here its interpreter is gone: a venv rebuilt under the run). The error
    ended the supervisor's thread, and alive() went on counting the worker as about to be restarted: the run waited
    out its whole timeout (an hour) with no worker, instead of failing at once naming the logs."""
    import os
    import signal

    python = tmp_path / "python"
    python.symlink_to(sys.executable)

    class VanishingPython(WorkerPool):
        def worker_argv(self, slot: int) -> list[str]:
            return [str(python), "-c", "import time; time.sleep(300)"]

    settings = build_settings("local", {"TENFOLD_HOME": str(tmp_path / "home")})
    pool = VanishingPython(settings, workers=1).start()
    try:
        assert pool.alive() == 1
        python.unlink()
        os.kill(pool.records[0].pid, signal.SIGKILL)
        process.wait_until(lambda: pool.alive() == 0, timeout=20, what="the pool to give its worker up", interval=0.2)
        assert pool.restarts == pool.max_restarts
    finally:
        pool.stop()
