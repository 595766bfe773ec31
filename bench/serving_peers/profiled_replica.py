"""One Tenfold replica whose event-loop thread can be put under cProfile, timed in that thread's CPU time.

Run by ``bench/serving.py`` (in .venv, with the bench's TENFOLD_* environment)::

    .venv/bin/python bench/serving_peers/profiled_replica.py OUT.prof --host 127.0.0.1 --port 8104 --model <version>

The arguments after ``OUT.prof`` are ``python -m tenfold.serving``'s. ``SIGUSR1`` starts profiling and
``SIGUSR2`` stops it and writes ``OUT.prof``, so startup and warm-up stay out of the figures. The
profiler's clock is ``time.thread_time``: CPU spent by the thread that runs uvicorn, the app and the
handlers (not wall time, which a busy machine inflates at random); the model thread and the Pub/Sub
client's threads are not in it (the benchmark times the model's steps separately).
"""

from __future__ import annotations

import cProfile
import signal
import sys
import time
from types import FrameType


def main(argv: list[str]) -> int:
    if not argv:
        print("usage: profiled_replica.py OUT.prof [python -m tenfold.serving arguments]", file=sys.stderr)
        return 2
    from tenfold.serving import replica

    out = argv[0]
    profiler = cProfile.Profile(time.thread_time)

    # Signal handlers run in the main thread, the one uvicorn's event loop runs in: that is the thread
    # enable() profiles.
    def start(sig: int, frame: FrameType | None) -> None:
        profiler.enable()

    def stop(sig: int, frame: FrameType | None) -> None:
        profiler.disable()
        profiler.dump_stats(out)

    signal.signal(signal.SIGUSR1, start)
    signal.signal(signal.SIGUSR2, stop)
    return replica.main(argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
