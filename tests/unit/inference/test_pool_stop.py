"""The pool stops its workers all at once, not one after another.

Stopped in turn, each worker's SIGTERM waited for the one before to exit (a busy worker finishes the requests in
hand: ~17 s), while the workers not yet signalled went on pulling requests only to hand them back: two busy workers
took ~34 s, and up to 64 are allowed. The stand-in workers here are real processes that take ``EXIT_S`` seconds to
exit on SIGTERM and record when it came.
"""

from __future__ import annotations

import sys
import textwrap
import time
from pathlib import Path

from tenfold.config import build_settings
from tenfold.inference.pool import WorkerPool, worker_name
from tenfold.local import process

EXIT_S = 3.0
WORKERS = 4

STAND_IN = textwrap.dedent(f"""
    import signal, sys, time
    from pathlib import Path

    ready, done = Path(sys.argv[1]), Path(sys.argv[2])

    def finish(signum, frame):  # a worker finishing the requests in hand
        came = time.time()
        time.sleep({EXIT_S})
        done.write_text(f"{{signal.Signals(signum).name}} {{came}}")
        sys.exit(0)

    signal.signal(signal.SIGTERM, finish)
    ready.write_text("")  # only once SIGTERM is handled: the pool waits for it
    while True:
        time.sleep(1)
""")


class SlowToStopPool(WorkerPool):
    def done_path(self, slot: int) -> Path:
        return self.run_dir / f"stand-in-{slot}.done"

    def worker_argv(self, slot: int) -> list[str]:
        return [sys.executable, "-c", STAND_IN, str(self.ready_path(slot)), str(self.done_path(slot))]


def test_the_pool_signals_every_worker_at_once_and_waits_for_them_together(tmp_path: Path) -> None:
    settings = build_settings("local", {"TENFOLD_HOME": str(tmp_path)})
    pool = SlowToStopPool(settings, workers=WORKERS, restart=False).start()
    records = dict(pool.records)
    try:
        assert pool.wait_ready(60.0), "the stand-in workers did not start"
        began = time.time()
        pool.stop()
        took = time.time() - began
        # Each exited of itself on SIGTERM (SIGKILLed, it wrote nothing), every SIGTERM before any worker could have
        # finished (in turn, the second came after the first's EXIT_S), and the stop waited for them together.
        ended = {slot: pool.done_path(slot).read_text().split() for slot in records if pool.done_path(slot).exists()}
        assert sorted(ended) == sorted(records), f"workers {sorted(set(records) - set(ended))} were not let finish"
        assert {how for how, _ in ended.values()} == {"SIGTERM"}
        late = {slot: round(float(came) - began, 1) for slot, (_, came) in ended.items()}
        assert max(late.values()) < EXIT_S, f"SIGTERM came this long after stop() began, per worker: {late}"
        assert EXIT_S <= took < 2 * EXIT_S + 2, f"stop() took {took:.1f} s for {WORKERS} workers of {EXIT_S} s each"
        # Gone, their pid and ready files too, and the home's pool lock free for the next pool.
        assert not any(process.is_running(r) for r in records.values())
        assert not any(process.pid_file(pool.run_dir, worker_name(slot)).exists() for slot in records)
        assert not any(pool.ready_path(slot).exists() for slot in records)
        assert pool._held is None
    finally:
        for record in records.values():
            process.stop(record, timeout=5)
