"""Test-only fault hooks: they hold a training worker at an exact point so that a test can SIGKILL it there.

Why they exist: a kill sent at a random moment lands anywhere, but the fault tests must kill rank 0
while it is writing a checkpoint, and rank 1 in the middle of a step, every time. With
``TENFOLD_TRAIN_FAULT`` set, the named rank stops at that point, writes a ready file naming its pid, and
waits there until the test kills it with a real ``os.kill(pid, SIGKILL)``
(tests/unit/training/test_fault_training.py). Outside the tests the variable is unset and each hook
costs one environment lookup.

    TENFOLD_TRAIN_FAULT="rank=1,step=31,at=step,mode=pause,ready=/tmp/t/ready.json"
    TENFOLD_TRAIN_FAULT="rank=0,step=24,at=checkpoint,mode=pause,ready=/tmp/t/ready.json"
    TENFOLD_TRAIN_FAULT="rank=1,step=2,mode=raise"

``at=step`` (the default): global step ``step``, after its backward pass (the gradients are all-reduced)
and before the optimizer updates this rank's weights. ``at=checkpoint``: rank 0 writing the checkpoint
of step ``step``, with half of the file in its temporary name (see
:func:`tenfold.training.checkpoint.save_checkpoint`). ``mode=pause`` waits to be killed;
``mode=raise`` raises an error (a worker that fails); ``mode=deaf`` pauses with SIGTERM ignored (a worker that
does not stop when asked: torchrun's own shutdown waits 30 s for it, the launch's timeout path must not). With ``ready``, a hook fires once: not while the
ready file exists, so the restarted worker runs past it.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

FAULT_ENV = "TENFOLD_TRAIN_FAULT"
PLACES = ("step", "checkpoint")
MODES = ("pause", "raise", "deaf")
# A paused worker that nobody kills (its test died) gives up after this and exits, so a job never hangs.
PAUSE_LIMIT_S = 600.0


@dataclass(frozen=True)
class Fault:
    rank: int
    step: int
    at: str = "step"
    mode: str = "pause"
    ready: Path | None = None

    @classmethod
    def parse(cls, spec: str) -> Fault:
        opts = dict(item.split("=", 1) for item in spec.split(",") if "=" in item)
        fault = cls(rank=int(opts.get("rank", -1)), step=int(opts.get("step", -1)), at=opts.get("at", "step"),
                    mode=opts.get("mode", "pause"), ready=Path(opts["ready"]) if opts.get("ready") else None)
        if fault.at not in PLACES or fault.mode not in MODES:
            raise ValueError(f"{FAULT_ENV}={spec!r}: at must be one of {PLACES}, mode one of {MODES}")
        if fault.mode != "raise" and fault.ready is None:
            raise ValueError(f"{FAULT_ENV}={spec!r}: mode={fault.mode} needs ready=<file> (the test waits on it)")
        return fault


def armed(rank: int, step: int, at: str) -> Fault | None:
    """The fault to fire on ``rank`` at ``step`` in place ``at``, if the environment asks for one."""
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return None
    fault = Fault.parse(spec)
    if (fault.rank, fault.step, fault.at) != (rank, step, at):
        return None
    if fault.ready is not None and fault.ready.exists():
        return None  # fired already, before a restart
    return fault


def fire(fault: Fault, **detail: Any) -> None:
    """Raise, or announce this process in the ready file and wait to be killed (never returns then)."""
    where = f"rank {fault.rank} at step {fault.step} ({fault.at})"
    if fault.mode == "deaf":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # before the ready file: the test's stop must find it deaf
    if fault.ready is not None:
        body = {"pid": os.getpid(), "rank": fault.rank, "step": fault.step, "at": fault.at, **detail}
        tmp = fault.ready.with_name(f".{fault.ready.name}.tmp-{os.getpid()}")
        tmp.write_text(json.dumps(body, default=str))
        os.replace(tmp, fault.ready)  # the test reads the file only once it is whole
    if fault.mode == "raise":
        raise RuntimeError(f"injected fault on {where} ({FAULT_ENV})")
    sys.stderr.write(f"[tenfold] injected fault: {where} paused, waiting to be killed (pid {os.getpid()})\n")
    sys.stderr.flush()
    deadline = time.monotonic() + PAUSE_LIMIT_S
    while time.monotonic() < deadline:
        time.sleep(0.1)
    sys.stderr.write(f"[tenfold] injected fault: {where} was not killed within {PAUSE_LIMIT_S:.0f} s; exiting\n")
    os._exit(70)
