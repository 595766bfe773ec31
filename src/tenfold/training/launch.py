"""Launching a training job with torchrun, bounded in time, with failures named.

:func:`run_torchrun` fits the preprocessing once on the training window (the only place it is ever
fit), writes the worker's config, and runs::

    python -m torch.distributed.run --nnodes=1 --nproc-per-node=N --rdzv-backend=c10d \\
        --rdzv-endpoint=$TMPDIR/tenfold-rdzv-XXXX/rendezvous --rdzv-conf=store_type=file --rdzv-id=ID --local-addr=HOST \\
        --max-restarts=R --monitor-interval=0.5 -m tenfold.training.worker --config OUT/train_config.json --out OUT

(one machine: a file rendezvous and every socket on loopback, see :func:`torchrun_command`; multi-node:
``--nnodes=M --rdzv-backend=c10d --rdzv-endpoint=HOST:PORT --rdzv-id=ID`` from settings).
The whole job runs under a wall-clock bound; on expiry its process group is terminated, then killed.
A job that fails after its restarts raises :class:`TrainingFailed` naming the first failing rank, its
exit code and its error (from torchelastic's error file / summary), with the log path; one that a rank refused
(an error whose class says ``retryable = False``, recorded in ``refused.json``) raises
:class:`~tenfold.training.errors.TrainingRefused`, which fails the task without retries.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc

from tenfold.config import Settings
from tenfold.data.lake import CorruptManifestError, Lake, MissingManifestError
from tenfold.fsio import atomic_write, file_uri_path
from tenfold.local.env import without_alert_hook_variables
from tenfold.model.preprocessing import PreprocessingError, Preprocessor
from tenfold.model_files import PREPROCESSING_FILE
from tenfold.training.config import TrainConfig
from tenfold.training.data import BatchTooBig, read_features, time_column, validation_split
from tenfold.training.errors import PeerLost, TrainingFailed, TrainingTimeout, refusal
from tenfold.training.remote import RemoteDir, is_remote
from tenfold.training.worker import (
    CHECKPOINT_DIR,
    CONFIG_FILE,
    MODEL_DIR,
    NON_TRAJECTORY,
    REFUSED_FILE,
    RESULT_FILE,
)
from tenfold.workloads import get_workload

if TYPE_CHECKING:
    from tenfold.local.process import ProcessRecord

log = logging.getLogger(__name__)

LOG_FILE = "torchrun.log"


@dataclass(frozen=True)
class TrainResult:
    out_dir: Path | str  # a path, or a gs:// URI when the run wrote to object storage
    model_dir: Path | str
    steps: int
    world_size: int
    samples_per_s: float
    train_seconds: float
    wall_seconds: float
    final_loss: float
    restart_count: int
    resumed_from_step: int | None
    manifests: dict[str, Any]
    config: dict[str, Any]
    raw: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        body = dict(self.raw)
        body.update(out_dir=str(self.out_dir), model_dir=str(self.model_dir), wall_seconds=self.wall_seconds,
                    config=self.config)
        return body


def fit_preprocessing(cfg: TrainConfig) -> Preprocessor:
    """Fit vocabularies and scaling of the workload's feature columns on the rows the ranks train on: the training
    window less its validation slice (cut as every rank cuts it). A value first seen in the slice (a route that
    began in the window's last days) is then out of vocabulary, the trained OOV row, not a row of its own that no
    step ever trains (its random initial vector, in the slice's scores and the holdout's alike)."""
    contract = get_workload(cfg.workload).contract
    when = time_column(contract)
    columns = list(dict.fromkeys((*contract.feature_columns, contract.label, *([when] if when else []))))
    table = read_features(Lake(cfg.lake_uri), cfg.partitions, contract=contract, table=cfg.table,
                          columns=columns, digest=cfg.data_digest)
    split = validation_split(table, contract, cfg.validation_days)
    train = table.take(split.train)
    if cfg.feedback_uri is None:  # (the feedback join's labelled rows join the window in the ranks)
        refuse_a_window_of_one_class(cfg, train.column(contract.label))
    return Preprocessor.fit(train.select(list(contract.feature_columns)), contract, min_count=cfg.vocabulary_min_count)


class OneClassWindow(ValueError):
    """Every training row has the same label: nothing to learn, on any try."""

    retryable = False


def refuse_a_window_of_one_class(cfg: TrainConfig, labels: pa.ChunkedArray) -> None:
    """Refused before the ranks start: a window whose labels are all one class (a features bug, an upstream that
    sent every flight as on time) trained every epoch, left the model uncalibrated with a warning, and registered
    a version the gate then failed on its AUC floor without naming why."""
    classes = pc.unique(labels.drop_null()).to_pylist()
    if len(classes) < 2:
        months = f"{cfg.train_months[0]}..{cfg.train_months[-1]}"
        held = f"only the label {classes[0]!r}" if classes else "no label at all"
        raise OneClassWindow(
            f"the training window {months} ({len(labels):,} rows less its validation slice) holds {held}: a "
            "classifier needs both outcomes. Check the features job's label column for those months (a broken "
            "upstream month?), or widen the training window")


def training_rows(cfg: TrainConfig, rows: int) -> int:
    """The rows the ranks train on of a training window of ``rows`` rows: the window less its validation slice, cut
    as every rank cuts it. Reads only the rows' time column, and nothing where there is no slice to cut."""
    contract = get_workload(cfg.workload).contract
    when = time_column(contract)
    if cfg.validation_days <= 0 or when is None:
        return rows
    table = read_features(Lake(cfg.lake_uri), cfg.partitions, contract=contract, table=cfg.table, columns=[when],
                          digest=cfg.data_digest)
    return len(validation_split(table, contract, cfg.validation_days).train)


def refuse_a_batch_the_window_cannot_fill(cfg: TrainConfig, world: int) -> None:
    """Refused before the job starts: every rank failed ("cannot fill one global batch"), torchrun restarted them and
    the task retried, in the cloud after scaling the GPU group up for each try.

    The ranks train on the window less its validation slice (:func:`training_rows`), so that is what must fill
    ``batch_size x world`` rows: checked on every launch, a retry whose preprocessing is staged (no fit) included."""
    if cfg.feedback_uri is not None:
        return  # the feedback join's rows join the window in the ranks: counted there (a refusal there is not retried)
    lake = Lake(cfg.lake_uri)
    try:
        rows = sum(lake.read_manifest(cfg.table, p).rows for p in cfg.partitions)
    except (MissingManifestError, CorruptManifestError):
        return  # refused by the read that follows, naming every month not published (or corrupt)
    batch = cfg.batch_size * world
    months = f"{cfg.train_months[0]}..{cfg.train_months[-1]}"
    fix = "give a smaller batch_size (the run conf's, or --batch-size), or a longer training window"
    if rows < batch:
        raise BatchTooBig(
            f"batch_size {cfg.batch_size} x {world} processes is a global batch of {batch:,} rows, and "
            f"the training window {months} holds {rows:,}: {fix}")
    train = training_rows(cfg, rows)  # (the manifests' rows are the window's: read once, above)
    if train < batch:
        raise BatchTooBig(
            f"batch_size {cfg.batch_size} x {world} processes is a global batch of {batch:,} rows, and the training "
            f"window {months} holds {rows:,}, {train:,} of them besides its validation slice (its newest "
            f"{cfg.validation_days:g} days, which no rank trains on): {fix}, or fewer validation_days")


def _needs_preprocessing(body: bytes | None, cfg: TrainConfig, target: str, *, has_checkpoints: bool) -> bool:
    """Whether the launcher fits the preprocessing state (again) before starting the ranks.

    Never refit on a resumed run whose data may have moved: its checkpoints were trained against the state it
    holds. A state that cannot be read is derived, though: it is fitted again where nothing was trained against it
    yet, or where the run pins its data's content (the same rows fit the same state); otherwise it is refused.
    ``body`` is the file's bytes, decoded here: bytes that are not UTF-8 (a flipped high bit) are as unreadable as
    bad JSON, not a UnicodeDecodeError naming no file.
    """
    if body is None:
        if has_checkpoints and cfg.data_digest is None:  # deleted: as unknown as an unreadable one
            raise ValueError(f"{target}/{PREPROCESSING_FILE} is missing and the checkpoints there were trained against "
                             f"it: delete the output folder {target} or use a fresh one")
        return True
    try:
        Preprocessor.from_json(body.decode())
        return False
    except (PreprocessingError, UnicodeDecodeError) as exc:
        if has_checkpoints and cfg.data_digest is None:
            raise ValueError(f"{target}/{PREPROCESSING_FILE} is unreadable ({exc}) and the checkpoints there were "
                             f"trained against it: delete the output folder {target} or use a fresh one") from exc
        log.warning("%s/%s is unreadable (%s): fitting it again", target, PREPROCESSING_FILE, exc)
        return True


RENDEZVOUS_FILE = "rendezvous"


def rendezvous_dir() -> Path:
    """A new folder only this user may enter (``mkdtemp``: mode 0700) for the file a one-machine job's ranks
    rendezvous through; :func:`run_torchrun` removes it after the job.

    torch's rendezvous agent unpickles what that file holds, so it must not sit at a name another local user can
    guess and create first: ``/tmp/tenfold-rdzv-<job id>`` (the job id is on the command line) was such a name.
    """
    return Path(tempfile.mkdtemp(prefix="tenfold-rdzv-"))


def loopback_env(settings: Settings) -> dict[str, str]:
    """Environment that keeps a one-machine job's sockets on ``settings.local.bind_host`` (loopback).

    torchrun's ``--standalone`` hosts its rendezvous and agent TCP stores on every interface (TCPStore
    takes no bind address). Instead the ranks rendezvous through a file (:func:`torchrun_command`), the
    agent hosts no store (``TORCH_DISABLE_SHARE_RDZV_TCP_STORE``), rank 0 hosts it on a socket bound to
    ``MASTER_ADDR`` (``--local-addr``; :func:`tenfold.training.worker.init_distributed`), and gloo and NCCL use the
    loopback interface instead of whatever the host name resolves to: NCCL (``backend="nccl"`` on a GPU machine)
    skips ``lo`` when another interface exists, and opened its bootstrap and proxy listeners on the machine's real
    address. ``NCCL_SOCKET_IFNAME``'s leading ``=`` asks for exactly that interface (not every name it prefixes).
    """
    import ipaddress
    import socket

    import psutil

    host = ipaddress.ip_address(settings.local.bind_host)

    def holds(addr: Any) -> bool:  # the interface's network holds the address (lo: 127.0.0.1/8 holds 127.0.0.2)
        if addr.family != socket.AF_INET or not addr.netmask:
            return False
        return host in ipaddress.ip_network(f"{addr.address}/{addr.netmask}", strict=False)

    iface = next((n for n, addrs in psutil.net_if_addrs().items() if any(holds(a) for a in addrs)), None)
    if iface is None:  # without it gloo and NCCL listen where the host name resolves: beyond loopback
        raise ValueError(f"no network interface holds local.bind_host {host} (`ip addr` lists them): gloo and NCCL would "
                         "listen on the address the host name resolves to; set TENFOLD_LOCAL__BIND_HOST=127.0.0.1")
    from tenfold.training.node import OWN_STORE_ENV

    return {**OWN_STORE_ENV, "GLOO_SOCKET_IFNAME": iface, "NCCL_SOCKET_IFNAME": f"={iface}"}


def torchrun_command(settings: Settings, out: str, *, nproc: int, job_id: str, max_restarts: int,
                     rendezvous: Path | None = None) -> list[str]:
    """torchrun's argv for the worker writing to ``out`` (a folder or a URI). When ``settings.training.nnodes``
    is 1, run it with :func:`loopback_env`; its ranks rendezvous in ``rendezvous`` (:func:`rendezvous_dir`)."""
    t = settings.training
    cmd = [sys.executable, "-m", "torch.distributed.run"]
    if t.nnodes == 1:
        if rendezvous is None:
            raise ValueError("a one-machine job's ranks rendezvous through a file: pass rendezvous=rendezvous_dir()")
        cmd += ["--nnodes=1", f"--nproc-per-node={nproc}", "--rdzv-backend=c10d",
                f"--rdzv-endpoint={rendezvous / RENDEZVOUS_FILE}", "--rdzv-conf=store_type=file", f"--rdzv-id={job_id}",
                f"--local-addr={settings.local.bind_host}"]
    else:
        if not t.rdzv_host:
            raise ValueError(
                f"settings.training.nnodes={t.nnodes} needs settings.training.rdzv_host (the first training VM) "
                "for the c10d rendezvous endpoint"
            )
        cmd += [f"--nnodes={t.nnodes}", f"--nproc-per-node={nproc}", "--rdzv-backend=c10d",
                f"--rdzv-endpoint={t.rdzv_host}:{t.rdzv_port}", f"--rdzv-id={job_id}"]
    cmd += [f"--max-restarts={max_restarts}", "--monitor-interval=0.5",
            "-m", "tenfold.training.worker", "--config", f"{out.rstrip('/')}/{CONFIG_FILE}", "--out", out]
    return cmd


_ROOT = re.compile(r"Root Cause \(first observed failure\):(.*?)(?:={20,}|\Z)", re.S)
_OTHERS = re.compile(r"Failures:(.*?)(?:Root Cause \(first observed failure\):|\Z)", re.S)
_ENTRY = re.compile(r"^\s*\[\d+\]:\s*$", re.M)


@dataclass(frozen=True)
class _Failure:
    rank: int | None
    error: str
    recorded: bool  # a Python error was recorded (not a bare exit code)
    exitcode: int | None

    @property
    def secondary(self) -> bool:
        """Caused by another failure: a collective broken by a stopped peer, or SIGTERMed by torchrun (no error)."""
        return PeerLost.__name__ in self.error or (not self.recorded and self.exitcode == -signal.SIGTERM)


def _recorded_error(path: str) -> str:
    """The first line of the error a rank's ``@record`` wrote into its error file (torchelastic's
    ``{"message": {"message": "<type>: <error>", "extraInfo": {...}}}``); "" when there is none to read."""
    try:
        message = json.loads(Path(path).read_text())["message"]["message"]
    except (OSError, ValueError, TypeError, KeyError):  # "<N/A>", gone, not torchelastic's JSON
        return ""
    lines = message.strip().splitlines() if isinstance(message, str) else []
    return lines[0].strip() if lines else ""


def _exception_line(traceback: str) -> str:
    """The exception line of a traceback as torchrun's summary shows it, else its last line (a signal, no record).

    Not simply the last line: a CUDA error's message ends with hint lines ("Compile with `TORCH_USE_CUDA_DSA`..."),
    NCCL's with detail lines ("ncclUnhandledCudaError: Call to CUDA function failed."), and those were named as the
    rank's error. The exception line is the first after the last frame ('File "..."') that is indented less than it:
    the frame's source and caret lines are indented more, the exception and its message at the traceback's base.
    """
    lines = [ln for ln in traceback.strip().splitlines()
             if ln.strip() and not re.fullmatch(r"[-=]{20,}", ln.strip())]  # not the summary's rules
    frames = [i for i, ln in enumerate(lines) if ln.lstrip().startswith('File "')]
    if frames:
        indent = len(lines[frames[-1]]) - len(lines[frames[-1]].lstrip())
        line = next((ln for ln in lines[frames[-1] + 1:] if len(ln) - len(ln.lstrip()) < indent), None)
        if line is not None:
            return line.strip()
    return lines[-1].strip() if lines else ""


def _read_failure(section: str) -> _Failure:
    rank_m = re.search(r"rank\s*:\s*(\d+)", section)
    code_m = re.search(r"exitcode\s*:\s*(-?\d+)", section)
    code = int(code_m.group(1)) if code_m else None
    # The error file that a rank's @record wrote names its exception first, with no frames or hints to skip; it stays
    # after the job in torchelastic's folder on this machine, where the summary names it. Without one (a signal, no
    # record, a file gone) the summary's traceback is read.
    file_m = re.search(r"error_file[ \t]*:[ \t]*(.*\S)", section)
    error = _recorded_error(file_m.group(1)) if file_m else ""
    tb = re.search(r"traceback\s*:\s*(.*)", section, re.S)
    if tb and not error:
        error = _exception_line(tb.group(1))
    # torchrun says "To enable traceback..." when nothing was recorded, "Signal 9 (SIGKILL) received..." for a signal.
    killed = re.match(r"Signal \d+ \((\w+)\) received", error)
    recorded = bool(error) and not killed and not error.startswith("To enable traceback")
    if killed:
        error = f"killed by {killed.group(1)} (exit code {code}), no Python error recorded"
    elif not recorded:
        error = f"exit code {code}, no Python error recorded (killed or os._exit)" if code is not None else "unknown error"
    return _Failure(int(rank_m.group(1)) if rank_m else None, error, recorded, code)


def parse_failure(log_text: str) -> tuple[int | None, str]:
    """The failing rank and its error from torchrun's failure summary ("unknown error" when none is recorded).

    torchrun's root cause is the failure with the earliest timestamp, in whole seconds: a rank whose collective
    broke because its peer died (:class:`PeerLost`), or that torchrun stopped with SIGTERM, ties with the peer
    and is often named instead. Such a root cause gives way to the first listed failure that is not one.
    """
    match = _ROOT.search(log_text)
    root = _read_failure(match.group(1) if match else log_text[-4000:])
    if root.secondary:
        others = _OTHERS.search(log_text)
        sections = _ENTRY.split(others.group(1))[1:] if others else []
        root = next((f for f in map(_read_failure, sections) if not f.secondary), root)
    return root.rank, root.error


def run_torchrun(
    settings: Settings,
    train_config: TrainConfig,
    out_dir: str | Path,
    *,
    nproc: int | None = None,
    timeout_s: float | None = None,
    max_restarts: int | None = None,
    env: dict[str, str] | None = None,
) -> TrainResult:
    """Train with torchrun into ``out_dir`` (a re-run with the same folder resumes from its checkpoints).

    ``out_dir`` may be a URI (``gs://...``, ``file://...``): the workers then train in local scratch
    folders and mirror checkpoints, the model and the result there, as on the cloud training group;
    ``torchrun.log`` then stays in the URI's local launch folder (:func:`launch_folder`; ``TrainingFailed.log_path``).

    Writes ``out_dir/model`` (load it with :func:`tenfold.model.load_model`), ``train_result.json``,
    ``losses.jsonl`` and ``torchrun.log``. Raises :class:`TrainingFailed` / :class:`TrainingTimeout`.
    """
    remote = RemoteDir(str(out_dir)) if is_remote(str(out_dir)) else None
    out = launch_folder(settings, str(out_dir)) if remote else Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    with _sole_launch(out, shown=str(out_dir)) as lock:
        result = _launch(settings, train_config, out, remote, lock, nproc=nproc, timeout_s=timeout_s,
                         max_restarts=max_restarts, env=env)
        if remote:  # the run is in the URI: what it left here (its log) goes, kept on failure (TrainingFailed.log_path),
            for left in out.iterdir():  # but the folder and its lock stay, cleared while held: removed after the
                if left.name not in (JOB_LOCK, JOB_HOLDER):  # lock went, a launch that took it meanwhile lost it,
                    shutil.rmtree(left) if left.is_dir() else left.unlink()  # and the next ran beside that one
    return result


def launch_folder(settings: Settings, uri: str) -> Path:
    """The local folder of a launch into ``uri`` (its lock, its job's record, torchrun.log): the same for every
    launch into that URI, so that a launch finds the job a killed launcher left training into it, stops it, and
    refuses while that launcher lives, as for a local folder. (A new temporary folder each time hid the orphan,
    which went on writing the URI's checkpoints and model beside the next job.)"""
    key = hashlib.sha256(uri.rstrip("/").encode()).hexdigest()[:16]
    folder = settings.local.home / "launches" / key
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    return folder


def _launch(settings: Settings, train_config: TrainConfig, out: Path, remote: RemoteDir | None, lock: _JobLock, *,
            nproc: int | None, timeout_s: float | None, max_restarts: int | None,
            env: dict[str, str] | None) -> TrainResult:
    from tenfold.local.process import MARKER_ENV, PARENT_MARKER_ENV, stop

    target = remote.uri if remote else str(out)
    nproc = nproc or settings.training.nproc_per_node
    restarts = settings.training.max_restarts if max_restarts is None else max_restarts
    timeout = float(timeout_s if timeout_s is not None else settings.training.job_timeout_s)

    def read_bytes(name: str) -> bytes | None:
        if remote:
            return remote.read_bytes(name)
        return (out / name).read_bytes() if (out / name).exists() else None

    def read(name: str) -> str | None:
        body = read_bytes(name)
        return None if body is None else body.decode()

    def write(name: str, text: str) -> None:
        if remote:
            remote.write_bytes(name, text.encode())
        else:
            atomic_write(out / name, text.encode())  # fsynced: a crash leaves the old file or the new, never an empty one

    previous_config = read_bytes(CONFIG_FILE)
    if previous_config is not None:
        try:  # decoded here: bytes that are not UTF-8 are as unreadable as bad JSON (a UnicodeDecodeError is a ValueError)
            previous = TrainConfig.from_dict(json.loads(previous_config.decode())).to_dict()
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise ValueError(f"{target}/{CONFIG_FILE} is unreadable ({type(exc).__name__}: {exc}): delete the output "
                             f"folder {target} or use a fresh one") from exc
        now = train_config.to_dict()
        # Only what shapes the trajectory: the ranks resume under another collective timeout, thread count or
        # checkpoint cadence (a run that failed on collective timeouts is resumed with a longer one), and the
        # folder's config becomes the new one below.
        changed = sorted(k for k in previous if k not in NON_TRAJECTORY and previous[k] != now.get(k))
        if changed:
            raise ValueError(f"{target} holds a run with a different config (changed: {changed}); use a fresh output folder")
    # On every launch (a retry whose preprocessing is staged fits nothing): before the job, which would fail in every
    # rank and be retried.
    refuse_a_batch_the_window_cannot_fill(train_config, nproc * settings.training.nnodes)
    has_checkpoints = bool(remote.list(CHECKPOINT_DIR) if remote else any((out / CHECKPOINT_DIR).glob("*")))
    # A state with no config beside it and nothing trained on it was left by a launch that died between the two
    # writes below (SIGKILL, a full disk on the second): fitted for a config no one can compare with this one, it is
    # fitted again, as a missing one is. (Kept, another config trained with its vocabularies and scalers, silently.)
    staged = read_bytes(PREPROCESSING_FILE) if previous_config is not None or has_checkpoints else None
    if _needs_preprocessing(staged, train_config, target, has_checkpoints=has_checkpoints):
        write(PREPROCESSING_FILE, fit_preprocessing(train_config).to_json())
    write(CONFIG_FILE, train_config.to_json())
    for stale in (RESULT_FILE, REFUSED_FILE):  # an earlier job's: this one's outcome is read from them
        if remote:
            remote.delete(stale)
        else:
            (out / stale).unlink(missing_ok=True)

    job_id = f"tenfold-{uuid.uuid4().hex[:8]}"
    rendezvous = rendezvous_dir() if settings.training.nnodes == 1 else None
    try:
        cmd = torchrun_command(settings, target, nproc=nproc, job_id=job_id, max_restarts=restarts, rendezvous=rendezvous)
        threads = train_config.threads or max(1, (os.cpu_count() or 1) // nproc)
        # No alert hook's variable: the ranks never alert (the task does), and a webhook URL is a secret.
        # The job's own marker (its lock's), and the platform's that this task inherited under PARENT_MARKER_ENV: a
        # torchrun outliving this task (killed first, by the OOM killer) is still found by `tenfold down`.
        run_env = {**without_alert_hook_variables(os.environ), "OMP_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1", MARKER_ENV: lock.marker,
                   **({PARENT_MARKER_ENV: os.environ[MARKER_ENV]} if os.environ.get(MARKER_ENV) else {}),
                   **(loopback_env(settings) if settings.training.nnodes == 1 else {}), **(env or {})}
    except BaseException:  # no job will use it (the launch below removes it once it has run)
        if rendezvous is not None:
            shutil.rmtree(rendezvous, ignore_errors=True)
        raise
    log_path = out / LOG_FILE
    started = time.monotonic()
    with _removed_after(rendezvous), open(log_path, "ab") as log:
        this_run = log.tell()  # the log keeps earlier launches into the same folder: a failure is read from here on
        log.write(f"\n$ {' '.join(cmd)}\n".encode())
        log.flush()
        # The job holds the folder's lock as long as it lives (it inherits it), and its process group is recorded:
        # a launcher killed now leaves a job that the next launch into the folder finds and stops (_sole_launch).
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=run_env, start_new_session=True,
                                pass_fds=(lock.fileno,))
        try:
            lock.record(job_pgid=proc.pid)  # inside: a failure here (a full disk) still stops the job
            rc = proc.wait(timeout=timeout)
        except BaseException as exc:
            # Past its bound, or interrupted while waiting (Airflow's task timeout or termination raised in the task,
            # Ctrl-C): the job runs in a session of its own, so nothing else would stop it writing into the run's
            # folders.
            _terminate(proc, lock.marker)
            if not isinstance(exc, subprocess.TimeoutExpired):
                raise
            raise TrainingTimeout(
                f"training ran past its {timeout:.0f} s bound and was killed; see {log_path}",
                rank=None, error="timeout", exitcode=-1, log_path=log_path,
            ) from None
        # torchrun ended, but what it started may not have: SIGKILLed (kill -9, the OOM killer), it leaves its workers
        # training, each in a session of its own with no parent-death signal and rank 0 hosting their store. The
        # folder's lock is released once this launch returns, and the task's retry would train beside them (two
        # writers of one folder's checkpoints and model). Whatever carries the job's marker is stopped first; after a
        # job that ended on its own nothing does, and the look costs a scan of the process table.
        if lock.job is not None:
            stop(lock.job, timeout=10.0)
    wall = time.monotonic() - started
    if rc != 0:
        with open(log_path, "rb") as written:
            written.seek(this_run)
            rank, error = parse_failure(written.read().decode(errors="replace"))
        refused = refusal(read(REFUSED_FILE), where=str(log_path), exitcode=rc, log_path=log_path)
        if refused is not None:  # a rank refused the run (a batch its rows cannot fill): no try would do better
            raise refused
        where = f"rank {rank}" if rank is not None else "a worker"
        raise TrainingFailed(
            f"training failed after {restarts} restart(s): {where} failed with {error} (exit {rc}); see {log_path}",
            rank=rank, error=error, exitcode=rc, log_path=log_path,
        )
    body = read(RESULT_FILE)
    if body is None:
        raise TrainingFailed(f"torchrun exited 0 but wrote no {RESULT_FILE} in {target}; see {log_path}",
                             rank=None, error="no result", exitcode=rc, log_path=log_path)
    raw = json.loads(body)
    out_ref: Path | str = _local_path(remote.uri) if remote else out
    return TrainResult(
        out_dir=out_ref, model_dir=_join(out_ref, MODEL_DIR), steps=raw["steps"], world_size=raw["world_size"],
        samples_per_s=raw["samples_per_s"], train_seconds=raw["train_seconds"], wall_seconds=wall,
        final_loss=raw["final_loss"], restart_count=raw["restart_count"], resumed_from_step=raw["resumed_from_step"],
        manifests=raw["manifests"], config=train_config.to_dict(), raw=raw,
    )


@contextlib.contextmanager
def _removed_after(folder: Path | None) -> Iterator[None]:
    try:
        yield
    finally:
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)


def _local_path(uri: str) -> Path | str:
    """A file:// URI as a path (so callers can open it); other URIs unchanged."""
    return file_uri_path(uri) if uri.startswith("file://") else uri


def _join(base: Path | str, name: str) -> Path | str:
    return base / name if isinstance(base, Path) else f"{base}/{name}"


JOB_LOCK = ".job.lock"  # in the output folder: held by the launch and by its job (torchrun inherits it)
JOB_HOLDER = ".job.json"  # who holds it: the launcher (pid and start time) and the job's process group


@dataclass
class _JobLock:
    """The output folder's lock, held: :meth:`record` says who holds it, for the next launch to read. ``marker`` goes
    into the job's environment (``tenfold.local.process.MARKER_ENV``), so that what it leaves is known as its own."""

    folder: Path
    fileno: int
    marker: str = field(default_factory=lambda: uuid.uuid4().hex)
    job: ProcessRecord | None = None  # as last recorded: what the launch stops of its job once torchrun has ended

    def record(self, *, job_pgid: int | None) -> None:
        """Write ``.job.json``: this launcher and the job (torchrun, leader of its process group), each as a
        ``tenfold.local.process.ProcessRecord`` (pid and start time: a reused pid is never taken for it)."""
        import psutil

        from tenfold.local.process import record_of

        try:
            self.job = record_of(psutil.Process(job_pgid), "torchrun", marker=self.marker) if job_pgid else None
        except psutil.Error:  # the job is gone already: nothing a later launch could stop
            self.job = None
        atomic_write(self.folder / JOB_HOLDER, json.dumps(
            {"launcher": asdict(record_of(psutil.Process(), "launcher")),
             "job": asdict(self.job) if self.job else None}).encode())


def _holder(out: Path) -> tuple[ProcessRecord | None, ProcessRecord | None]:
    """The launcher and the job that ``out/.job.json`` names; None for what it does not name (no file yet: the
    holder is about to write it; unreadable)."""
    from tenfold.local.process import ProcessRecord

    try:
        holder = json.loads((out / JOB_HOLDER).read_text())
        return (ProcessRecord(**holder["launcher"]),
                ProcessRecord(**holder["job"]) if holder.get("job") else None)
    except (OSError, ValueError, TypeError, KeyError):
        return None, None


def _locked(fd: int) -> bool:
    import fcntl

    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


@contextlib.contextmanager
def _sole_launch(out: Path, grace_s: float = 35.0, *, shown: str | None = None) -> Iterator[_JobLock]:
    """One job at a time writes ``out``: its checkpoints, model and result assume a single writer (a second job's
    snapshots interleave with the first's, and its resume may start from the other's newest).

    The launch holds ``out/.job.lock`` and its job inherits it, so it stays held while the job lives, even after the
    launcher is killed (an Airflow task SIGKILLed: the job runs in a session of its own). A launch that finds it
    held reads ``.job.json``: when that launcher is still running, the launch is refused (two launches into one
    folder); when it is gone, its job is an orphan, and the launch stops it with ``tenfold.local.process.stop``
    (its process group, SIGTERM then SIGKILL after ``grace_s``: torchrun waits up to 30 s for its workers; then the
    workers themselves, which run in sessions of their own) and resumes from the folder's checkpoints. Processes
    are recognised by pid and start time, never a process group that reused the pid.

    A launch that finds the lock free but ``.job.json`` still there (a launch that ends removes it) follows a
    launcher killed together with its torchrun: the lock went with them, but not the workers, which never held it.
    They are found by the job's marker and stopped before this launch starts its own.
    """
    from tenfold.local.process import is_group_running, is_running, stop

    fd = os.open(out / JOB_LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        if _locked(fd):
            _, job = _holder(out)
            if job is not None:
                log.warning("a killed launch left its record of a job (pid %d) training into %s: stopping whatever of "
                            "it is still running, then resuming from the folder's checkpoints", job.pid, out)
                stop(job, timeout=grace_s)
        else:
            launcher, job = _holder(out)
            if launcher is not None and is_running(launcher):
                raise TrainingFailed(
                    f"another launch (pid {launcher.pid}) is training into {shown or out}: two jobs must not write one "
                    "folder's checkpoints. Wait for it to end, or stop it, then launch again", error="folder in use")
            if job is not None and is_group_running(job):
                log.warning("a killed launcher left its job (pid %d) training into %s: stopping it, then resuming "
                            "from the folder's checkpoints", job.pid, out)
                stop(job, timeout=grace_s)
            deadline = time.monotonic() + grace_s + 5
            while not _locked(fd):
                if time.monotonic() > deadline:
                    raise TrainingFailed(
                        f"{out / JOB_LOCK} is held by processes that did not stop (`fuser {out / JOB_LOCK}` names "
                        "them): stop them, then launch again", error="folder in use")
                time.sleep(0.1)
        lock = _JobLock(out, fd)
        try:
            lock.record(job_pgid=None)
            yield lock
        finally:  # the job ended or was stopped: a later launch finds no holder to stop (the lock is still ours)
            (out / JOB_HOLDER).unlink(missing_ok=True)
    finally:
        os.close(fd)


def _terminate(proc: subprocess.Popen[bytes], marker: str, grace_s: float = 10.0) -> None:
    """Stop the job: SIGTERM its process group (torchrun, which stops its workers), SIGKILL what is left after
    ``grace_s``, then the workers that outlived torchrun (they run in sessions of their own, so the group's kill
    misses them: a worker deaf to SIGTERM would go on writing the folder's checkpoints after the launch released
    its lock, beside the next launch's job).
    ``tenfold.local.process.stop`` does all of it, collecting the workers before the first signal."""
    import psutil

    from tenfold.local.process import record_of, stop

    with contextlib.suppress(psutil.NoSuchProcess):
        stop(record_of(psutil.Process(proc.pid), "torchrun", marker=marker), timeout=grace_s)
    proc.wait()
