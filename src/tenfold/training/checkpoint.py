"""Training checkpoints: written atomically with a checksum, resumed from the newest valid one.

A checkpoint is two files in the checkpoint folder::

    ckpt-00000120.pt     torch.save of a :class:`Snapshot` as a plain dict: model, optimizer, LR
                         scheduler, step, epoch, sampler position and every rank's RNG states
                         (python, numpy, torch, CUDA)
    ckpt-00000120.json   sidecar: step, size and sha256 of the .pt file — written last, so it is the
                         commit marker

Both are written to a temporary name, fsynced and renamed. A worker killed mid-write leaves a temp
file (ignored, and removed by the next save) or a .pt without its sidecar (ignored); a truncated or
bit-flipped .pt fails its checksum, and :func:`latest_valid_snapshot` (or :func:`latest_valid_checkpoint`
for a raw payload) falls back to the previous one. tests/unit/training/test_fault_training.py SIGKILLs
rank 0 halfway through writing one (the test-only hook of :mod:`tenfold.training.faults`).

A checkpoint that cannot be *read* (an I/O error, no permission) is skipped too, but it is not proven corrupt:
a later save keeps it, as it keeps every later checkpoint whose checksum matches. One whose checksum matches but
that torch cannot load (out of memory, a torch older than the writer's) stops the resume with
:class:`CheckpointUnloadable` instead of falling back: falling back would train over its steps and drop it.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import random
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch

from tenfold.fsio import atomic_write
from tenfold.training import faults

log = logging.getLogger(__name__)

_NAME = re.compile(r"^ckpt-(\d{8})\.pt$")
_T = TypeVar("_T")


class CheckpointError(RuntimeError):
    """A checkpoint cannot be used; the message says which file and why. A resume skips it for an older one."""


class CheckpointUnreadable(CheckpointError):
    """A checkpoint file could not be read (an OSError: EIO, EACCES): a resume skips it, but it is not proven corrupt,
    so :func:`save_checkpoint` never deletes it."""


class CheckpointUnloadable(RuntimeError):
    """A checkpoint whose bytes match its checksum, that torch could not load. Not a :class:`CheckpointError`: the
    resume stops, naming the file and the cause, rather than fall back to an older checkpoint and drop this one."""


@dataclass(frozen=True)
class CheckpointInfo:
    step: int
    path: Path
    sidecar: Path


@dataclass
class Snapshot:
    """Everything a rank needs to continue a run exactly where the snapshot was taken.

    ``epoch`` and ``batch`` are the *next* batch to run (the sampler position); ``rng`` holds every
    rank's RNG states by rank, valid only for the same ``world_size``; ``trajectory`` identifies the
    training config that produced it, so a resume under another config is refused. ``selection`` is the
    early-stopping state (validation history, best epoch and its weights), empty without a validation slice.
    """

    model: dict[str, Any]
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]
    step: int
    epoch: int
    batch: int
    world_size: int
    rng: dict[int, dict[str, Any]]
    trajectory: str
    selection: dict[str, Any] = field(default_factory=dict)
    # The moving average of the weights (AveragedModel's state), None when the run keeps the raw weights.
    averaged: dict[str, Any] | None = None

    def to_payload(self) -> dict[str, Any]:
        # Not dataclasses.asdict: it deep-copies every tensor of the model and optimizer states.
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_payload(cls, payload: dict[str, Any], where: str = "checkpoint") -> Snapshot:
        missing = [f.name for f in fields(cls) if f.name not in payload and f.name not in ("selection", "averaged")]
        if missing:
            raise CheckpointError(f"{where}: not a training snapshot (missing {missing})")
        return cls(
            model=payload["model"], optimizer=payload["optimizer"], scheduler=payload["scheduler"],
            step=int(payload["step"]), epoch=int(payload["epoch"]), batch=int(payload["batch"]),
            world_size=int(payload["world_size"]), rng=dict(payload["rng"]), trajectory=str(payload["trajectory"]),
            selection=dict(payload.get("selection") or {}), averaged=payload.get("averaged"),
        )


def rng_state() -> dict[str, Any]:
    """This process's RNG states in a form ``torch.load(weights_only=True)`` accepts."""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)  # type: ignore[misc]
    state: dict[str, Any] = {
        "python": [version, list(internal), gauss],
        "numpy": [kind, torch.from_numpy(np.asarray(keys, dtype=np.int64)), int(pos), int(has_gauss), float(cached)],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.cpu().numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"].cpu())  # both setters take CPU byte tensors, whatever a snapshot was loaded to
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"].cpu())


def checkpoint_path(directory: Path, step: int) -> Path:
    return directory / f"ckpt-{step:08d}.pt"


def save_checkpoint(directory: str | Path, step: int, payload: dict[str, Any], *, keep: int = 3) -> CheckpointInfo:
    """Write ``payload`` as the checkpoint of ``step`` and prune all but the newest ``keep`` ones."""
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    torch.save(payload, buf)
    data = buf.getvalue()
    path = checkpoint_path(folder, step)
    sidecar = path.with_suffix(".json")
    if (fault := faults.armed(int(os.environ.get("RANK", "0")), step, "checkpoint")) is not None:
        _fire_halfway(path, data, fault)
    atomic_write(path, data)
    body = {"step": step, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest(), "file": path.name,
            "torch": torch.__version__}
    atomic_write(sidecar, json.dumps(body, sort_keys=True).encode())
    # A checkpoint of a later step than this one was skipped by the resume. A corrupt one (bad checksum, no sidecar)
    # goes, so that it never counts among the ``keep`` newest and pushes this valid one out. One that verifies (of a
    # payload the resume could not use) or that could not be read (an I/O error: not proven corrupt) stays: deleting
    # it could lose the run's newest good state. Neither counts among the ``keep``: only steps up to this one do.
    present = list_checkpoints(folder)
    later = [c for c in present if c.step > step]
    kept = [c for c in present if c.step <= step]
    for old in [*(c for c in later if _proven_corrupt(c, step)), *(kept[:-keep] if keep > 0 else [])]:
        for f in (old.path, old.sidecar):
            f.unlink(missing_ok=True)
    # Temporary files of a writer that was killed (rank 0 is the only writer, so none is being written now).
    for stale in folder.glob(".ckpt-*.tmp-*"):
        stale.unlink(missing_ok=True)
    return CheckpointInfo(step, path, sidecar)


def _proven_corrupt(info: CheckpointInfo, saved: int) -> bool:
    """Whether ``info``, later than the checkpoint of step ``saved`` just written, fails its checksum (or has no
    sidecar) and so may be deleted; a checksum-valid or unreadable one is kept, and the log says so."""
    try:
        verify_checkpoint(info)
    except CheckpointUnreadable as exc:
        log.warning("keeping %s, later than the checkpoint of step %d just written: it could not be read (%s), which "
                    "does not prove it corrupt", info.path.name, saved, exc)
        return False
    except CheckpointError as exc:
        log.warning("deleting %s, later than the checkpoint of step %d just written: %s", info.path.name, saved, exc)
        return True
    log.warning("keeping %s, later than the checkpoint of step %d just written: its checksum matches, so it is never "
                "deleted as abandoned", info.path.name, saved)
    return False


def _fire_halfway(path: Path, data: bytes, fault: faults.Fault) -> None:
    """Test-only (see :mod:`tenfold.training.faults`): stop with half of the checkpoint in the temporary
    file that :func:`~tenfold.fsio.atomic_write` would be filling, so a test's SIGKILL lands mid-write."""
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    with open(tmp, "wb") as fh:
        fh.write(data[: len(data) // 2])
        fh.flush()
        os.fsync(fh.fileno())
    faults.fire(fault, partial=str(tmp), written=len(data) // 2, total=len(data), checkpoint=path.name)


def list_checkpoints(directory: str | Path) -> list[CheckpointInfo]:
    """Checkpoint files present (valid or not), oldest first."""
    folder = Path(directory)
    if not folder.is_dir():
        return []
    found = []
    for f in folder.iterdir():
        m = _NAME.match(f.name)
        if m:
            found.append(CheckpointInfo(int(m.group(1)), f, f.with_suffix(".json")))
    return sorted(found, key=lambda c: c.step)


def verify_checkpoint(info: CheckpointInfo) -> bytes:
    """The checkpoint's bytes if its sidecar exists and its size and sha256 match; else CheckpointError
    (:class:`CheckpointUnreadable` when either file could not be read)."""
    try:
        body = json.loads(info.sidecar.read_text())
        expected_size, expected_sha = int(body["bytes"]), str(body["sha256"])
    except FileNotFoundError as exc:
        raise CheckpointError(f"{info.path.name}: no sidecar {info.sidecar.name} (the write never finished)") from exc
    except OSError as exc:
        raise CheckpointUnreadable(f"{info.sidecar}: unreadable ({_reason(exc)})") from exc
    except (ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{info.sidecar}: unreadable sidecar ({exc})") from exc
    try:
        data = info.path.read_bytes()
    except FileNotFoundError as exc:
        raise CheckpointError(f"{info.path.name}: gone (its sidecar {info.sidecar.name} remains)") from exc
    except OSError as exc:
        raise CheckpointUnreadable(f"{info.path}: unreadable ({_reason(exc)})") from exc
    if len(data) != expected_size:
        raise CheckpointError(f"{info.path.name}: {len(data)} bytes, sidecar says {expected_size} (truncated)")
    if hashlib.sha256(data).hexdigest() != expected_sha:
        raise CheckpointError(f"{info.path.name}: sha256 mismatch (corrupt)")
    return data


def _reason(exc: BaseException) -> str:
    """``exc`` on one line (a launch shows an error's first line), with its type."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def load_checkpoint(info: CheckpointInfo, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """The checkpoint's payload. CheckpointError when it fails verification (a resume then falls back); when its
    bytes verify but torch cannot load them, :class:`CheckpointUnloadable`, which a resume does not fall back past."""
    data = verify_checkpoint(info)
    try:
        payload = torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
    except Exception as exc:  # the bytes are the ones written (their sha256 matched): not corruption
        raise CheckpointUnloadable(
            f"{info.path} matches its checksum but torch {torch.__version__} could not load it ({_reason(exc)}"
            f"{_writer(info)}); the resume stops rather than fall back to an older checkpoint and lose its steps: "
            "if the cause passes (memory), run again; if this torch cannot read it, resume with the torch that wrote "
            f"it; to give it up, delete {info.path.name} and {info.sidecar.name} and the run resumes from the one "
            "before"
        ) from exc
    if not isinstance(payload, dict) or "model" not in payload or "step" not in payload:
        raise CheckpointError(f"{info.path.name}: not a tenfold training checkpoint")
    return payload


def _writer(info: CheckpointInfo) -> str:
    """", written by torch X" from the sidecar (one written before it was recorded names none)."""
    try:
        written = json.loads(info.sidecar.read_text()).get("torch")
    except (OSError, ValueError, AttributeError):
        return ""
    return f", written by torch {written}" if isinstance(written, str) and written != torch.__version__ else ""


def save_snapshot(directory: str | Path, snapshot: Snapshot, *, keep: int = 3) -> CheckpointInfo:
    """Write ``snapshot`` as the checkpoint of its step and prune all but the newest ``keep`` ones."""
    return save_checkpoint(directory, snapshot.step, snapshot.to_payload(), keep=keep)


def latest_valid_checkpoint(
    directory: str | Path, map_location: str | torch.device = "cpu"
) -> tuple[CheckpointInfo, dict[str, Any]] | None:
    """The newest checkpoint that verifies and loads, skipping (and logging) corrupt or unreadable newer ones;
    :class:`CheckpointUnloadable` for a newer one that verifies but torch cannot load."""
    return _newest_valid(directory, map_location, lambda _info, payload: payload)


def latest_valid_snapshot(
    directory: str | Path, map_location: str | torch.device = "cpu"
) -> tuple[CheckpointInfo, Snapshot] | None:
    """The newest checkpoint that verifies and holds a whole :class:`Snapshot`, skipping (and logging) the rest."""
    return _newest_valid(directory, map_location, lambda info, payload: Snapshot.from_payload(payload, info.path.name))


def _newest_valid(
    directory: str | Path, map_location: str | torch.device, parse: Callable[[CheckpointInfo, dict[str, Any]], _T]
) -> tuple[CheckpointInfo, _T] | None:
    for info in reversed(list_checkpoints(directory)):
        try:
            return info, parse(info, load_checkpoint(info, map_location))
        except CheckpointError as exc:
            log.warning("skipping checkpoint: %s; falling back to an older one", exc)
    return None
