"""An inference worker that outlives SIGKILL (stuck in uninterruptible I/O: a hung mount) keeps its pid file.

The pool's stop deleted it whatever the stop found, so nothing knew of the worker any more, and the next pool's worker
of that slot wrote its own pid file in its place. Here no signal reaches the stand-in worker, so it really does
outlive the stop (as in tests/unit/local/test_env_and_stack.py's `tenfold down` test).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import pytest

from tenfold.config import build_settings
from tenfold.inference.pool import WorkerPool, worker_name
from tenfold.local import process


class SleepingPool(WorkerPool):
    def worker_argv(self, slot: int) -> list[str]:
        return [sys.executable, "-c", "import time; time.sleep(300)"]


@pytest.mark.parametrize("slot", [0, 1])
def test_a_worker_that_outlived_sigkill_keeps_its_pid_file_and_the_next_pool_refuses_to_start_beside_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, slot: int
) -> None:
    """Either slot: with the stuck one second, the next pool started the first worker before refusing."""
    settings = build_settings("local", {"TENFOLD_HOME": str(tmp_path)})
    pool = SleepingPool(settings, workers=2, restart=False).start()
    stuck, other = pool.records[slot], pool.records[1 - slot]
    started: list[int] = []
    for each in (0, 1):
        pool.ready_path(each).write_text("")  # as a worker that loaded its model
    real_signal, real_stop = process._signal, process.stop

    def all_but_the_stuck_one(pgid, procs, sig):  # type: ignore[no-untyped-def]
        return real_signal(None if pgid == stuck.pid else pgid, [p for p in procs if p.pid != stuck.pid], sig)

    monkeypatch.setattr(process, "_signal", all_but_the_stuck_one)
    # Half a second before SIGKILL, not the pool's 25 (the wait for SIGKILL to take is the real 5 s).
    monkeypatch.setattr(process, "stop", lambda record, timeout=20.0, check=False: real_stop(record, timeout=0.5,
                                                                                             check=check))
    run = pool.run_dir
    try:
        with caplog.at_level(logging.WARNING, logger="tenfold.inference.pool"):
            pool.stop()  # returns: the pool's caller (the task) goes on
        assert process.is_running(stuck)
        assert process.read_record(run, worker_name(slot)) == stuck  # kept: what finds it
        # The rest is still stopped, and the ready files go (a stuck worker pulls nothing).
        assert not process.is_running(other) and not process.pid_file(run, worker_name(1 - slot)).exists()
        assert not pool.ready_path(0).exists() and not pool.ready_path(1).exists()
        said = [r.getMessage() for r in caplog.records if "not stopped" in r.getMessage()]
        assert len(said) == 1, caplog.text
        assert f"pid {stuck.pid} did not exit" in said[0] and str(process.pid_file(run, worker_name(slot))) in said[0]
        assert "run the task again" in said[0] and "\n" not in said[0]

        # The next pool (the lock is free again) refuses to start beside it, and leaves its pid file alone.
        second = SleepingPool(settings, workers=2, restart=False)
        real_start_one = second._start_one
        monkeypatch.setattr(second, "_start_one", lambda n: (started.append(n), real_start_one(n)))
        with pytest.raises(process.StillRunning, match=rf"^{worker_name(slot)}: pid {stuck.pid} did not exit") as refused:
            second.start()
        assert refused.value.pids == [stuck.pid] and "\n" not in str(refused.value)
        assert process.read_record(run, worker_name(slot)) == stuck and second.records == {}
        assert started == [], f"workers {started} were started before the refusal"
    finally:
        monkeypatch.undo()
        process.stop(stuck, timeout=5)
        process.stop(other, timeout=5)
