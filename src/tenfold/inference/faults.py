"""Test-only fault hooks of offline inference, armed by ``TENFOLD_INFER_FAULT`` (as :mod:`tenfold.training.faults`).

A fault fires at a named place and does something real there:

    TENFOLD_INFER_FAULT="at=before_ack,mode=kill,ready=/tmp/t/killed.json"   # SIGKILL the worker after the
                                                                             # result is written, before the ack
    TENFOLD_INFER_FAULT="at=score,mode=slow,seconds=15"                       # a handler slower than the deadline
    TENFOLD_INFER_FAULT="at=publish,mode=raise,after=3,ready=/tmp/t/r.json"   # a task failing halfway

``request=ID`` fires only while handling request ``ID`` (a worker that dies on one request, every delivery of
it); ``trail=FILE`` appends a line (the pid, and what it was handling) to FILE each time the fault fires;
``after=N`` lets N passes go by first; ``settle=S`` waits S seconds before it fires (so what the earlier passes
handed to a client that batches, the Pub/Sub publisher, has left the process when a kill lands). With ``ready``, the fault fires once: it writes the file (the pid
and what it was handling) and does not fire again while the file exists, so the restarted worker or the
retried task runs past it. Outside the tests the variable is unset and each hook costs one lookup.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections import Counter
from pathlib import Path

FAULT_ENV = "TENFOLD_INFER_FAULT"
# Benchmark-only: with this set, a worker scores nothing (every probability 0.5, no model loaded), so what
# bench/offline.py measures is the queue's own cost: publish, pull, decode, write, ack.
STUB_SCORING_ENV = "TENFOLD_INFER_STUB_SCORING"
PLACES = ("score", "before_ack", "publish", "publish_results")
MODES = ("kill", "slow", "raise")

_passes: Counter[str] = Counter()
_lock = threading.Lock()


class InjectedFault(RuntimeError):
    """Raised by a ``mode=raise`` fault: the task fails as a real one would."""


def stub_scoring() -> bool:
    return bool(os.environ.get(STUB_SCORING_ENV))


def fire(at: str, what: str = "") -> None:
    """The hook: does nothing unless ``TENFOLD_INFER_FAULT`` names ``at``."""
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return
    opts = dict(item.split("=", 1) for item in spec.split(",") if "=" in item)
    if opts.get("at") != at or opts.get("request", what) != what:
        return
    mode = opts.get("mode", "raise")
    if at not in PLACES or mode not in MODES:
        raise ValueError(f"{FAULT_ENV}={spec!r}: at must be one of {PLACES} and mode one of {MODES}")
    ready = Path(opts["ready"]) if opts.get("ready") else None
    with _lock:
        _passes[at] += 1
        if _passes[at] <= int(opts.get("after", "0")):
            return
        if ready is not None:
            if ready.exists():
                return
            tmp = ready.with_name(ready.name + ".tmp")
            tmp.write_text(json.dumps({"pid": os.getpid(), "at": at, "what": what}))
            tmp.replace(ready)
        if opts.get("trail"):
            with open(opts["trail"], "a") as trail:  # one line a firing, on disk before it fires
                trail.write(json.dumps({"pid": os.getpid(), "at": at, "what": what}) + "\n")
                trail.flush()
                os.fsync(trail.fileno())
    if opts.get("settle"):
        time.sleep(float(opts["settle"]))
    if mode == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif mode == "slow":
        time.sleep(float(opts.get("seconds", "15")))
    else:
        raise InjectedFault(f"injected fault at {at} ({what})")
