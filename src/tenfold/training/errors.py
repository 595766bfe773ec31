"""The failures of a training job, wherever it ran (torchrun here, or the training instance group)."""

from __future__ import annotations

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
