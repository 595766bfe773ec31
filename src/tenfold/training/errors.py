"""The failures of a training job, wherever it ran (torchrun here, or the training instance group)."""

from __future__ import annotations

import json
import re
from pathlib import Path


class TrainingFailed(RuntimeError):
    """The training job did not succeed; the message says where to look.

    For a local torchrun job, ``rank`` and ``error`` name the root cause when known, with its exit code
    and log; a cloud run names its completion marker instead and leaves them unset.
    """

    def __init__(self, message: str, *, rank: int | None = None, error: str = "", exitcode: int | None = None,
                 log_path: Path | None = None) -> None:
        super().__init__(message)
        self.rank, self.error, self.exitcode, self.log_path = rank, error, exitcode, log_path


class TrainingTimeout(TrainingFailed, TimeoutError):
    """A bounded wait ran out: the job past its wall-clock bound (then killed), or a fleet wait."""


class TrainingRefused(TrainingFailed):
    """A rank refused the run with an error whose class says ``retryable = False`` (a batch the training rows cannot
    fill, a month not published): every try fails the same way, so the task fails at once
    (tenfold.pipelines.common.run_step) instead of being retried (in the cloud, the GPU group scaled up again)."""

    retryable = False


def refusal(text: str | bytes | None, *, where: str, exitcode: int | None = None,
            log_path: Path | None = None) -> TrainingRefused | None:
    """The :class:`TrainingRefused` a failed job's refusal record (``tenfold.training.worker.REFUSED_FILE``, written
    by the rank that refused) describes; None without one. ``where`` says where to read more (the log, the marker)."""
    if text is None:
        return None
    try:
        body = json.loads(text)
    except ValueError:
        body = None
    if not isinstance(body, dict):
        body = {"error": "an unreadable refusal record"}
    rank = body.get("rank") if isinstance(body.get("rank"), int) else None
    error = str(body.get("error") or "an error that no try can mend")
    who = f"rank {rank}" if rank is not None else "a rank"
    return TrainingRefused(f"training was refused by {who}: {error}. It cannot succeed on any try, so it is not "
                           f"retried; see {where}", rank=rank, error=error, exitcode=exitcode, log_path=log_path)


class PeerLost(RuntimeError):
    """A worker's collective failed because another process of the job stopped; that process's failure is the cause.

    torchrun's "first observed failure" orders failures by whole seconds, so a rank whose all-reduce broke
    when its peer died is often named in place of the peer. A worker raises this instead of the transport's
    error, and :func:`tenfold.training.launch.parse_failure` names another failure before one of these.
    """


# gloo: the peer's socket went away; NCCL: the communicator saw the remote process exit.
_PEER_GONE = re.compile(r"Connection (?:closed|reset) by peer|Broken pipe|remote process exited", re.I)


def peer_lost(exc: BaseException) -> bool:
    """Whether ``exc`` is a collective failing because another process of the job stopped (not its own fault)."""
    return isinstance(exc, RuntimeError) and not isinstance(exc, PeerLost) and bool(_PEER_GONE.search(str(exc)))
