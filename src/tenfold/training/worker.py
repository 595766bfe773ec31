"""The DDP training worker: one process per rank, launched by torchrun.

Run through :func:`tenfold.training.launch.run_torchrun` (or ``tenfold train``), which fits the
preprocessing once and writes ``OUT/train_config.json`` and ``OUT/preprocessing.json``, then starts
``torchrun --nnodes=1 --nproc-per-node=N ... -m tenfold.training.worker --config OUT/train_config.json --out OUT``
with a file rendezvous and every store and gloo socket on loopback (``--standalone`` would listen on every
interface; see ``launch.py`` for the exact flags).

Each rank joins a process group built on a TCPStore that rank 0 hosts anew each round (the agents share no
store: ``TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1``, locally and on the nodes), so a restarted round never meets the
dead round's keys (pytorch#167288); under an agent's shared store the keys are kept apart by
``PrefixStore(f"attempt_{TORCHELASTIC_RESTART_COUNT}", ...)`` instead (see :func:`init_distributed`). It resumes from the newest valid checkpoint in ``OUT/checkpoints`` (model,
optimizer, scheduler, the weights' moving average, step, epoch, batch position, every rank's RNG), trains, checkpoints every
``checkpoint_every`` steps and at each epoch end, and rank 0 writes ``OUT/model`` (save_model),
``OUT/losses.jsonl`` and ``OUT/train_result.json``. Errors are recorded by torchelastic's ``@record``
so the launcher can name the failing rank and its error.

Model quality (docs/training.md): the newest ``validation_days`` of the window, by time, are the
validation slice (:func:`~tenfold.training.data.validation_split`); no rank trains on it. At every epoch
end rank 0 scores the slice and broadcasts the criterion (:func:`~tenfold.training.calibration.selection_loss`:
the slice's log loss once its own temperature and level are fitted), so every rank takes the same
decision: the best epoch's weights are kept (in the snapshot, so a resumed run chooses exactly as an
uninterrupted one), and training stops after ``patience`` epochs without improvement. Rank 0 saves the
best epoch's weights with the calibration fitted on the slice (:mod:`tenfold.training.calibration`). The weights
scored, kept and saved are the exponential moving average of the trained ones over ``average_epochs``
(``torch.optim.swa_utils.AveragedModel``), updated after every optimizer step; 0 uses the trained weights.

Feedback (docs/feedback.md, "Retraining with feedback"): with ``cfg.feedback_uri`` the rows ``train_model``'s
plan chose from the feedback join (SHA-256 checked) follow the features rows, each weighing
``cfg.feedback_weight`` features rows in the loss (:func:`~tenfold.training.loss.weighted_bce`); those of the
validation slice's days are left out. The preprocessing, the slice and the calibration's anchor stay features-only.

The loop is a :class:`Trainer` (after pytorch/examples' minGPT-ddp): ``_load_snapshot`` on
construction, ``train`` -> ``_run_epoch`` -> ``_run_batch``, and ``_save_snapshot`` writing a
:class:`~tenfold.training.checkpoint.Snapshot`. The model is constructed only in :func:`build_model`.

``--config`` and ``--out`` may be URIs (``gs://`` on the cloud training group): the worker then trains
in a local scratch folder and mirrors checkpoints, the model and the result to ``--out``
(:mod:`tenfold.training.remote`). The scratch folder is named after the run and the rank
(:func:`scratch_folder`), so the next round or task retry empties the one a killed worker left.

Test-only fault hooks (:mod:`tenfold.training.faults`): ``TENFOLD_TRAIN_FAULT`` holds a rank in the middle
of a step, or rank 0 halfway through writing a checkpoint, until a test SIGKILLs it; or makes a rank raise.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import logging
import os
import shutil
import socket
import stat
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

import torch
import torch.distributed as dist
from torch.distributed.elastic.multiprocessing.errors import record
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from tenfold.data.lake import Lake
from tenfold.fsio import atomic_write, open_lines_for_append
from tenfold.model.calibration import Calibrator
from tenfold.model.io import predict_logits, save_model
from tenfold.model.preprocessing import PreprocessingError, Preprocessor
from tenfold.model_files import PREPROCESSING_FILE
from tenfold.model_files import WRITE_ORDER as MODEL_WRITE_ORDER
from tenfold.training import checkpoint as ckpt
from tenfold.training import faults
from tenfold.training.calibration import calibrate, plain_log_loss, selection_loss
from tenfold.training.checkpoint import Snapshot
from tenfold.training.config import TrainConfig
from tenfold.training.data import (
    FEEDBACK_WEIGHT_COLUMN,
    FeatureDataset,
    ShardedBatches,
    read_features,
    read_feedback,
    row_times_us,
    seed_everything,
    time_column,
    validation_split,
)
from tenfold.training.errors import PeerLost, peer_lost
from tenfold.training.loss import weighted_bce
from tenfold.training.remote import RemoteDir, is_remote, read_text
from tenfold.workloads import get_workload

log = logging.getLogger("tenfold.training.worker")

FAULT_ENV = faults.FAULT_ENV
CHECKPOINT_DIR = "checkpoints"
MODEL_DIR = "model"
RESULT_FILE = "train_result.json"
LOSSES_FILE = "losses.jsonl"
CONFIG_FILE = "train_config.json"
# Written by a rank that refuses the run (an error whose class says retryable = False): the launch, and the cloud job,
# read it after the job failed and fail the task without retries (tenfold.training.errors.TrainingRefused).
REFUSED_FILE = "refused.json"
# OUT/PREPROCESSING_FILE (the launcher stages it) shares the model folder's name, imported above.
# Fields that do not change the trajectory: a resume may differ in them.
NON_TRAJECTORY = ("threads", "collective_timeout_s", "checkpoint_every", "keep_checkpoints")


class WorkerError(RuntimeError):
    """A worker cannot run; the message names what is wrong."""


class DeviceRefused(WorkerError):
    """A backend this machine's torch can never run (nccl on a CPU build): every try meets it, so the run is refused,
    not retried."""

    retryable = False


class TooFewGpus(DeviceRefused):
    """More ranks on a machine than it has GPUs: every try starts as many, so the run is refused, not retried."""


class ModelRefused(WorkerError):
    """A workload's ``build_model`` returned a module the loop cannot train (no input sizes, a forward that is not one
    logit per row): every try builds the same one, so the run is refused (``refused.json``), not restarted or retried."""

    retryable = False


def trajectory_digest(cfg: TrainConfig) -> str:
    body = {k: v for k, v in cfg.to_dict().items() if k not in NON_TRAJECTORY}
    return json.dumps(body, sort_keys=True)


def init_distributed(backend: str, rank: int, world_size: int, timeout_s: int) -> None:
    """Join the process group through the store rank 0 hosts (or, under an agent's shared store, a per-attempt
    prefix of it)."""
    host = os.environ.get("MASTER_ADDR", "127.0.0.1")
    port = int(os.environ.get("MASTER_PORT", "29500"))
    restart = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
    timeout = dt.timedelta(seconds=timeout_s)
    # Under torchrun the elastic agent hosts the store; without it (a bare multi-process launch) rank 0 does.
    agent_store = os.environ.get("TORCHELASTIC_USE_AGENT_STORE", "").lower() == "true"
    hosts = rank == 0 and not agent_store
    listen_fd = None
    if hosts:
        # TCPStore listens on every interface; handed a socket bound to MASTER_ADDR (loopback locally), only there.
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        listen_fd = socket.create_server((host, port), family=family).detach()
    base = dist.TCPStore(host, port, world_size, is_master=hosts, timeout=timeout, master_listen_fd=listen_fd)
    # A store rank 0 hosts is new each round: nothing of an earlier one to keep apart. The agent's store lives across
    # rounds, whose keys a prefix keeps apart; but the restart count is each agent's own (a restart for a peer's
    # failure is not counted), so two nodes' ranks could wait on two prefixes: the nodes never share the agent's.
    store = dist.PrefixStore(f"attempt_{restart}", base) if agent_store else base
    dist.init_process_group(backend, store=store, rank=rank, world_size=world_size, timeout=timeout)


def select_device(backend: str, local_rank: int) -> torch.device:
    """The device a backend implies: nccl needs CUDA (refused clearly without it), gloo runs on CPU."""
    if backend == "nccl":
        if torch.version.cuda is None:  # a CPU build of torch (the serving image's default variant) on any machine
            raise DeviceRefused("backend nccl needs CUDA, and this torch is a CPU build: run the image built with "
                              "--build-arg VARIANT=cuda (serving_image/Dockerfile), or use gloo "
                              "(settings.training.backend) on a machine without a GPU")
        if not torch.cuda.is_available():
            raise WorkerError("backend nccl needs CUDA, and this machine has none: use gloo (settings.training.backend)")
        # Checked here: set_device raised a bare "invalid device ordinal", which torchrun restarted and the task
        # retried (in the cloud scaling the GPU group up for each try), though every try starts as many ranks.
        gpus = torch.cuda.device_count()
        if local_rank >= gpus:
            raise TooFewGpus(
                f"backend nccl: local rank {local_rank} needs GPU {local_rank}, and this machine has {gpus} "
                f"GPU{'' if gpus == 1 else 's'}: set --nproc (settings.training.nproc_per_node) to at most {gpus}, "
                "or use the gloo backend (settings.training.backend)")
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    if backend != "gloo":
        raise WorkerError(f"unknown backend {backend!r}: use gloo (CPU) or nccl (CUDA)")
    return torch.device("cpu")


def _manifests(lake: Lake, cfg: TrainConfig) -> dict[str, Any]:
    out = {}
    for part in cfg.partitions:
        m = lake.read_manifest(cfg.table, part)
        out[part.label] = {"run_id": m.run_id, "data_dir": m.data_dir, "rows": m.rows, "schema_hash": m.schema_hash,
                           "created_at": m.created_at}
    return out


def build_model(cfg: TrainConfig, preprocessor: Preprocessor) -> torch.nn.Module:
    """The untrained module of a run, built by the run's workload: the one place the worker constructs a model."""
    workload = get_workload(cfg.workload)
    vocab_sizes, num_inputs = list(preprocessor.vocab_sizes.values()), preprocessor.num_inputs
    model = workload.build_model(cfg.model, vocab_sizes, num_inputs)
    # Checked now, not when the trained model is saved: a module without them trained through every epoch and
    # then failed on an AttributeError, on every restart from its checkpoint.
    sizes: Any = getattr(model, "vocab_sizes", None)
    width: Any = getattr(model, "num_inputs", None)
    try:  # any sequence of whole numbers (a tuple, a numpy array) will do
        got: tuple[Any, Any] = ([int(v) for v in sizes], int(width))
    except (TypeError, ValueError):
        got = (sizes, width)
    if not isinstance(model, torch.nn.Module) or got != (vocab_sizes, num_inputs):
        raise ModelRefused(
            f"workload {workload.name}'s build_model returned {type(model).__name__} with vocab_sizes={got[0]} and "
            f"num_inputs={got[1]}, not a torch module with vocab_sizes={vocab_sizes} and num_inputs={num_inputs}: "
            "keep the sizes it was given as those attributes (tenfold.workloads.Workload.build_model)")
    _check_forward(model, workload.name, len(vocab_sizes), num_inputs)
    return model


def _check_forward(model: torch.nn.Module, workload: str, categoricals: int, num_inputs: int) -> None:
    """Refuse a module whose ``forward(categorical, numeric)`` is not one floating logit per row, tried on two rows of
    zeros shaped and typed as :meth:`FeatureDataset.batch` gives them (int64 codes, float32 numerics), in eval mode
    without gradients. A forward of shape (N, 1) passed, and the first step failed in the loss on torch's "Target size
    ... must be the same as input size", naming no workload, restarted by torchrun and retried by the task. Every
    module's train/eval mode is put back as it was."""
    rows = 2
    device = next((t.device for t in (*model.parameters(), *model.buffers())), torch.device("cpu"))
    categorical = torch.zeros((rows, categoricals), dtype=torch.long, device=device)
    numeric = torch.zeros((rows, num_inputs), dtype=torch.float32, device=device)
    where = (f"workload {workload}'s model (tenfold.workloads.Workload.build_model): forward(categorical, numeric) "
             f"on {rows} rows (categorical int64 {tuple(categorical.shape)}, numeric float32 {tuple(numeric.shape)})")
    modes = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        with torch.no_grad():
            out = model(categorical, numeric)
    except Exception as exc:  # deterministic on zeros: every try would fail the same way in its first step
        reason = " ".join(f"{type(exc).__name__}: {exc}".split())[:500]
        raise ModelRefused(f"{where} failed ({reason}): it must take a batch of codes and a batch of numerics "
                           "and return one logit per row") from exc
    finally:
        for module, training in modes:
            module.training = training
    if not isinstance(out, torch.Tensor) or not out.is_floating_point() or tuple(out.shape) != (rows,):
        got = (f"a {out.dtype} tensor of shape {tuple(out.shape)}" if isinstance(out, torch.Tensor)
               else type(out).__name__)
        hint = " (squeeze the last dimension: .squeeze(1))" if isinstance(out, torch.Tensor) and tuple(
            out.shape) == (rows, 1) else ""
        raise ModelRefused(f"{where} returned {got}, not a floating tensor of shape ({rows},): return one logit per "
                           f"row{hint}")


class Trainer:
    """One rank's training run: resume from the newest valid snapshot, train, snapshot, save the model.

    Construct it after :func:`init_distributed` (the constructor loads the data and the newest snapshot
    and checks that every rank resumed from the same step); :meth:`train` runs to ``total_steps`` and
    returns the result body on rank 0 (``None`` on the others).

    ``out`` is a local folder; with ``mirror`` (a remote ``--out``) the preprocessing and checkpoints
    are fetched from it first, and checkpoints and the model are written through to it.
    """

    def __init__(
        self, cfg: TrainConfig, out: Path, rank: int, world: int, local_rank: int, mirror: RemoteDir | None = None
    ) -> None:
        self.cfg, self.out, self.rank, self.world, self.mirror = cfg, out, rank, world, mirror
        self.backend = cfg.backend or "gloo"
        self.device = select_device(self.backend, local_rank)
        self.ckpt_dir = out / CHECKPOINT_DIR
        self.restart = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
        self._fetch_mirrored()
        pre_path = out / PREPROCESSING_FILE
        if not pre_path.exists():
            raise WorkerError(f"{pre_path} is missing: launch through tenfold.training.launch.run_torchrun, which fits it once")
        try:
            self.preprocessor = Preprocessor.from_json(pre_path.read_bytes().decode())
        except (PreprocessingError, UnicodeDecodeError) as exc:  # bad JSON, or bytes that are not UTF-8 at all
            where = mirror.uri if mirror else str(out)
            raise WorkerError(f"{where}/{PREPROCESSING_FILE} is unreadable ({exc}): launch again through "
                              "tenfold.training.launch.run_torchrun, which fits it again where it may, or delete the "
                              f"output folder {where} or use a fresh one") from exc
        self.lake = Lake(cfg.lake_uri)
        pre = self.preprocessor
        contract = get_workload(cfg.workload).contract
        when = time_column(contract)
        columns = list(dict.fromkeys((*pre.categorical_columns, *pre.numeric_columns, contract.label,
                                      *([when] if when else []))))
        table = read_features(self.lake, cfg.partitions, contract=contract, table=cfg.table, columns=columns,
                              digest=cfg.data_digest)
        # Every rank cuts the same slice: the split depends on the rows' times only.
        self.split = validation_split(table, contract, cfg.validation_days)
        self.data = FeatureDataset.from_table(table.take(self.split.train), pre, contract.label).to(self.device)
        self.val: FeatureDataset | None = None
        if self.split.has_validation:
            self.val = FeatureDataset.from_table(table.take(self.split.validation), pre, contract.label).to(self.device)
        del table
        self.features_rows = len(self.data)
        self.feedback_info = self._add_feedback(contract, when)
        self.batches = ShardedBatches(self.data, cfg.batch_size, world, rank, cfg.seed)
        self.steps_per_epoch = self.batches.steps_per_epoch
        self.total_steps = cfg.epochs * self.steps_per_epoch
        if cfg.max_steps is not None:
            self.total_steps = min(self.total_steps, cfg.max_steps)

        seed_everything(cfg.seed)  # the same initial weights on every rank
        self.model = build_model(cfg, pre).to(self.device)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
            self.optimizer, T_max=max(1, self.total_steps), eta_min=cfg.lr * 0.05
        )
        self.step, self.epoch, self.batch_pos = 0, 0, 0
        self.resumed_from: int | None = None
        # Early stopping and the epoch choice; in every snapshot. best_state lives on rank 0 only (it saves).
        self.selection: dict[str, Any] = {"history": [], "best_loss": None, "best_epoch": None, "best_step": None,
                                          "bad_epochs": 0, "stopped": False}
        self.best_state: dict[str, torch.Tensor] | None = None
        self.calibrator: Calibrator | None = None
        # The moving average of the weights (every rank keeps the same one: DDP keeps their weights equal);
        # it is what the slice scores and what the run keeps and saves.
        self.averaged: AveragedModel | None = None
        self.steps_run, self.last_loss = 0, float("nan")  # a resume restores last_loss
        if cfg.average_epochs > 0:
            decay = 1.0 - 1.0 / max(1.0, cfg.average_epochs * self.steps_per_epoch)
            self.averaged = AveragedModel(self.model, multi_avg_fn=get_ema_multi_avg_fn(decay))
        self._load_snapshot()
        self._check_same_step()
        self.ddp = DistributedDataParallel(self.model, device_ids=[local_rank] if self.device.type == "cuda" else None)
        self._losses: TextIO | None = None
        self._pending: tuple[int, int, torch.Tensor] | None = None  # (step, epoch, loss) not yet read

    def _add_feedback(self, contract: Any, when: str | None) -> dict[str, Any] | None:
        """Append the feedback rows (``cfg.feedback_uri``) after the features rows, weighted; features rows weigh 1.

        The preprocessing was fit on the features window alone, so a feedback row's unseen category is code 0
        like any unseen value. Feedback rows that fall in the validation slice's time range are left out, as
        the slice's own flights are: no rank trains on the days the epoch choice and the calibration judge.
        """
        cfg = self.cfg
        if cfg.feedback_uri is None or cfg.feedback_sha256 is None:
            return None
        fb = read_feedback(cfg.feedback_uri, cfg.feedback_sha256, contract)
        planned = fb.num_rows
        dropped = 0
        if self.split.cutoff_us is not None and when is not None and fb.num_rows:
            keep = row_times_us(fb, when) <= self.split.cutoff_us
            dropped = int((~keep).sum())
            fb = fb.filter(keep)
        if fb.num_rows:
            extra = FeatureDataset.from_table(fb, self.preprocessor, contract.label, weight=FEEDBACK_WEIGHT_COLUMN)
            self.data = FeatureDataset.concat(self.data, extra.to(self.device))
        log.info("rank %d: %d feedback rows of weight %g beside %d features rows (%d in the validation slice's days "
                 "left out)", self.rank, fb.num_rows, cfg.feedback_weight, self.features_rows, dropped)
        return {"planned_rows": planned, "rows": fb.num_rows, "in_validation_days": dropped,
                "weight": cfg.feedback_weight, "sha256": cfg.feedback_sha256}

    def _fetch_mirrored(self) -> None:
        if self.mirror is None:
            return
        if (body := self.mirror.read_bytes(PREPROCESSING_FILE)) is not None:
            (self.out / PREPROCESSING_FILE).write_bytes(body)
        self.mirror.download_folder(CHECKPOINT_DIR, self.ckpt_dir)
        if self.rank == 0 and (body := self.mirror.read_bytes(LOSSES_FILE)) is not None:
            (self.out / LOSSES_FILE).write_bytes(body)

    def _load_snapshot(self) -> None:
        """Continue from the newest valid snapshot (older ones stand in for corrupt newer ones), or seed afresh."""
        # Loaded on the CPU: the RNG states must be CPU tensors (on cuda:N, set_rng_state failed on every resume);
        # load_state_dict copies the weights and the optimizer state to the parameters' device itself.
        found = ckpt.latest_valid_snapshot(self.ckpt_dir, map_location="cpu")
        if found is None:
            seed_everything(self.cfg.seed * 1000 + self.rank + 1)  # per-rank streams (dropout)
            return
        info, snap = found
        if snap.trajectory != trajectory_digest(self.cfg):
            raise WorkerError(f"{info.path} was written by a different training config; use a fresh output folder")
        if snap.world_size != self.world:
            # Its position counts global batches of batch_size x its world, and its learning-rate schedule spans
            # that world's steps: under another world it would train rows twice and restart the schedule.
            raise WorkerError(
                f"{info.path} was written by {snap.world_size} training processes and this run has {self.world}: "
                f"resume with the same number (--nproc {snap.world_size} per node, the same nodes) or use a fresh "
                "output folder"
            )
        self.model.load_state_dict(snap.model)
        self.optimizer.load_state_dict(snap.optimizer)
        self.scheduler.load_state_dict(snap.scheduler)
        if self.averaged is not None:
            if snap.averaged is None:
                raise WorkerError(f"{info.path} holds no averaged weights; use a fresh output folder")
            self.averaged.load_state_dict(snap.averaged)
        self.step, self.epoch, self.batch_pos, self.resumed_from = snap.step, snap.epoch, snap.batch, snap.step
        if snap.selection:
            self.selection = {k: v for k, v in snap.selection.items() if k not in ("best_state", "last_loss")}
            if self.rank == 0:
                self.best_state = snap.selection.get("best_state")
            # A job relaunched after it had finished (a train task cleared) runs no step: its result keeps the loss
            # of the last step trained, not NaN, which went into the registered lineage.
            self.last_loss = float(snap.selection.get("last_loss", float("nan")))
        if self.rank in snap.rng:
            ckpt.set_rng_state(snap.rng[self.rank])
        else:  # a snapshot without this rank's streams: start fresh ones
            seed_everything(self.cfg.seed * 1000 + 7919 * (self.step + 1) + self.rank)
        log.info("rank %d resumed from %s (step %d, epoch %d, batch %d)", self.rank, info.path.name, self.step,
                 self.epoch, self.batch_pos)

    def _check_same_step(self) -> None:
        # On several nodes a local --out is not shared, so a restarted node would start from scratch
        # while the others resume. Refuse rather than diverge.
        steps = [0] * self.world
        dist.all_gather_object(steps, self.step)
        if len(set(steps)) != 1:
            raise WorkerError(
                f"ranks resumed from different steps {steps}: the checkpoint folder is not shared between nodes; "
                "pass a shared --out (a gs:// URI) for multi-node training"
            )

    def _snapshot(self, next_epoch: int, next_batch: int) -> Snapshot | None:
        """This step's snapshot on rank 0 (``None`` elsewhere); every rank must call it (it gathers the RNGs)."""
        states: list[Any] = [None] * self.world
        dist.all_gather_object(states, ckpt.rng_state())
        if self.rank != 0:
            return None
        return Snapshot(
            model=self.model.state_dict(), optimizer=self.optimizer.state_dict(), scheduler=self.scheduler.state_dict(),
            step=self.step, epoch=next_epoch, batch=next_batch, world_size=self.world, rng=dict(enumerate(states)),
            trajectory=trajectory_digest(self.cfg),
            selection={**self.selection, "best_state": self.best_state, "last_loss": self.last_loss},
            averaged=self.averaged.state_dict() if self.averaged is not None else None,
        )

    def _save_snapshot(self, next_epoch: int, next_batch: int) -> None:
        """Checkpoint the state before batch ``next_batch`` of ``next_epoch`` (collective; rank 0 writes)."""
        snap = self._snapshot(next_epoch, next_batch)
        if snap is None:
            return
        info = ckpt.save_snapshot(self.ckpt_dir, snap, keep=self.cfg.keep_checkpoints)
        if self.mirror is None:
            return
        self.mirror.upload(info.path, f"{CHECKPOINT_DIR}/{info.path.name}")
        self.mirror.upload(info.sidecar, f"{CHECKPOINT_DIR}/{info.sidecar.name}")  # the commit marker, last
        self.mirror.upload(self.out / LOSSES_FILE, LOSSES_FILE)
        kept = {p.name for p in self.ckpt_dir.iterdir()}
        for name in self.mirror.list(CHECKPOINT_DIR):
            if name not in kept:
                self.mirror.delete(f"{CHECKPOINT_DIR}/{name}")

    def _run_batch(self, index: torch.Tensor) -> torch.Tensor:
        """One optimizer step on this rank's rows ``index``; the loss summed over all ranks, still on the device
        (reading it waits for the step to finish: :meth:`_run_epoch` reads it after queuing the next step)."""
        cat, num, y = self.data.batch(index)
        self.optimizer.zero_grad(set_to_none=True)
        loss = weighted_bce(self.ddp(cat, num), y, self.data.batch_weights(index))
        loss.backward()
        if (fault := faults.armed(self.rank, self.step + 1, "step")) is not None:
            faults.fire(fault)  # test-only: gradients all-reduced, this rank's weights not yet updated
        self.optimizer.step()
        self.scheduler.step()
        if self.averaged is not None:
            self.averaged.update_parameters(self.model)
        reduced = loss.detach().clone()
        dist.all_reduce(reduced)
        return reduced

    def _validation_loss(self) -> tuple[float, float]:
        """(criterion, plain log loss) of the slice under the current weights; collective: rank 0 scores the
        whole slice and broadcasts both, so every rank takes the same decision."""
        assert self.val is not None
        values = torch.zeros(2, dtype=torch.float64, device=self.device)
        if self.rank == 0:
            logits = predict_logits(self.scored, self.val.categorical, self.val.numeric).double().cpu().numpy()
            labels = self.val.labels.double().cpu().numpy()
            values[0], values[1] = selection_loss(logits, labels), plain_log_loss(logits, labels)
        dist.broadcast(values, src=0)
        return float(values[0].item()), float(values[1].item())

    def _select(self) -> None:
        """Score the slice after an epoch (or at the last step): keep the best weights, count epochs without gain."""
        if self.val is None:
            return
        sel = self.selection
        if sel["history"] and sel["history"][-1]["step"] == self.step:
            return  # already scored (a resumed run at an epoch end)
        loss, plain = self._validation_loss()
        sel["history"].append({"epoch": self.epoch, "step": self.step, "val_criterion": loss, "val_log_loss": plain})
        if sel["best_loss"] is None or loss < sel["best_loss"]:
            sel.update(best_loss=loss, best_epoch=self.epoch, best_step=self.step, bad_epochs=0)
            if self.rank == 0:
                self.best_state = {k: v.detach().cpu().clone() for k, v in self.scored.state_dict().items()}
        else:
            sel["bad_epochs"] += 1
            if self.cfg.patience is not None and sel["bad_epochs"] >= self.cfg.patience:
                sel["stopped"] = True
        log.info("rank %d epoch %d step %d: validation criterion %.5f, log loss %.5f (best %.5f at epoch %s)%s", self.rank,
                 self.epoch, self.step, loss, plain, sel["best_loss"], sel["best_epoch"],
                 "; stopping early" if sel["stopped"] else "")

    @property
    def scored(self) -> torch.nn.Module:
        """The weights the slice scores and the run keeps: the moving average, or the trained ones."""
        return self.averaged.module if self.averaged is not None else self.model

    @property
    def done(self) -> bool:
        return self.step >= self.total_steps or bool(self.selection["stopped"])

    def _log_loss(self) -> None:
        """Read the last step's loss (waiting for that step) and write its row; a no-op when it was read."""
        if self._pending is None:
            return
        step, epoch, reduced = self._pending
        self._pending = None
        self.last_loss = float(reduced.item()) / self.world
        if self._losses is not None:
            row = {"step": step, "epoch": epoch, "loss": self.last_loss, "attempt": self.restart}
            self._losses.write(json.dumps(row) + "\n")

    def _run_epoch(self) -> None:
        """Run ``self.epoch`` from the sampler position; it advances to the next epoch only if it finished.

        A step's loss is read after the next step is queued, so a GPU has that step to run while the host waits
        (reading it at once would leave the device idle while the host prepares every step). The rows are the
        same; every one before a snapshot is written before the snapshot, and the last when the loop ends (a step that
        raised leaves the row before it unwritten: that step is after the last snapshot, so a restart replays it).
        """
        finished = True
        for b, index in self.batches.epoch(self.epoch, self.batch_pos):
            if self.step >= self.total_steps:
                finished = False
                break
            reduced = self._run_batch(index)
            self._log_loss()
            self._pending = (self.step + 1, self.epoch, reduced)
            self.step += 1
            self.steps_run += 1
            if b + 1 == self.steps_per_epoch:
                self._log_loss()
                self._select()  # before the snapshot, which carries the choice
                self._save_snapshot(self.epoch + 1, 0)
            elif self.step % self.cfg.checkpoint_every == 0 or self.step == self.total_steps:
                self._log_loss()
                self._save_snapshot(self.epoch, b + 1)
        self._log_loss()
        if finished:
            self.epoch, self.batch_pos = self.epoch + 1, 0

    def train(self) -> dict[str, Any] | None:
        """Train to ``total_steps``; rank 0 saves the model and returns the result body."""
        # A torn last line (a write cut short by a full disk before a restart) is ended first: the next is not glued to it.
        self._losses = open_lines_for_append(self.out / LOSSES_FILE, buffering=1) if self.rank == 0 else None
        self._synchronize()
        started = time.perf_counter()
        self.ddp.train()
        try:
            while not self.done:
                self._run_epoch()
        finally:
            if self._losses is not None:
                self._losses.close()
                self._losses = None
        if not self.selection["stopped"]:
            self._select()  # max_steps may end mid-epoch: the last weights are a candidate too
        self._synchronize()
        elapsed = time.perf_counter() - started
        if self.rank != 0:
            return None
        self._choose_and_calibrate()
        self._save_model()
        return self._result(elapsed)

    def _choose_and_calibrate(self) -> None:
        """Rank 0: load the best epoch's weights and fit the calibration on the slice."""
        if self.val is None:
            if self.averaged is not None:  # no choice to make: the last averaged weights are the model
                self.model.load_state_dict(self.averaged.module.state_dict())
            return
        if self.best_state is None:
            raise WorkerError("a validation slice was scored but no best weights were kept; the checkpoint is inconsistent")
        self.model.load_state_dict(self.best_state)
        val_logits = predict_logits(self.model, self.val.categorical, self.val.numeric).double().cpu().numpy()
        # The features rows only: the anchor is the training window's own rate (feedback rows come after them).
        n = self.features_rows
        train_logits = predict_logits(self.model, self.data.categorical[:n], self.data.numeric[:n]).double().cpu().numpy()
        self.calibrator = calibrate(
            self.cfg.calibration, val_logits, self.val.labels.double().cpu().numpy(), train_logits=train_logits,
            train_labels=self.data.labels[:n].double().cpu().numpy(),
            slice_info={**self.split.info, "best_epoch": self.selection["best_epoch"]},
        )

    def _selection_summary(self) -> dict[str, Any]:
        sel = self.selection
        best: dict[str, Any] = next((h for h in sel["history"] if h["step"] == sel["best_step"]), {})
        return {**self.split.info, "best_epoch": sel["best_epoch"], "best_step": sel["best_step"],
                "best_criterion": sel["best_loss"], "best_log_loss": best.get("val_log_loss"),
                "stopped_early": sel["stopped"], "patience": self.cfg.patience, "history": sel["history"]}

    def _synchronize(self) -> None:
        if self.device.type == "cuda":  # CUDA runs asynchronously: time whole steps, not their launch
            torch.cuda.synchronize()

    def _save_model(self) -> None:
        extra = {"train_config": self.cfg.to_dict(), "steps": self.step, "validation": self._selection_summary()}
        save_model(self.out / MODEL_DIR, self.model, self.cfg.model, self.preprocessor, workload=self.cfg.workload,
                   extra=extra, calibration=self.calibrator)
        if self.mirror is not None:
            for name in MODEL_WRITE_ORDER:
                self.mirror.upload(self.out / MODEL_DIR / name, f"{MODEL_DIR}/{name}")
            self.mirror.upload(self.out / LOSSES_FILE, LOSSES_FILE)

    def _result(self, elapsed: float) -> dict[str, Any]:
        cfg, world = self.cfg, self.world
        return {
            "steps": self.step,
            "epochs_completed": self.epoch,
            "steps_per_epoch": self.steps_per_epoch,
            "world_size": world,
            "backend": self.backend,
            "device": str(self.device),
            "rows": len(self.data),
            "features_rows": self.features_rows,
            "feedback": self.feedback_info,
            "validation_rows": len(self.val) if self.val is not None else 0,
            "validation": self._selection_summary(),
            "calibration": self.calibrator.to_dict() if self.calibrator is not None else None,
            "global_batch": cfg.batch_size * world,
            "steps_this_attempt": self.steps_run,
            "train_seconds": elapsed,
            "samples_per_s": self.steps_run * cfg.batch_size * world / elapsed if elapsed > 0 else 0.0,
            "final_loss": self.last_loss,
            "restart_count": self.restart,
            "resumed_from_step": self.resumed_from,
            "manifests": _manifests(self.lake, cfg),
            "torch_version": torch.__version__,
        }


def scratch_folder(out: str, rank: int) -> Path:
    """A new, empty folder only this user may enter (mode 0700) in which rank ``rank`` of the run writing to the URI
    ``out`` trains: ``$TMPDIR/tenfold-train-<sha256 of out>-r<rank>``, emptied of what an earlier round left.

    It used to be a fresh ``mkdtemp`` each round, removed in a ``finally`` that a SIGKILL, the OOM killer or
    SIGTERM's default action skips: every restart round and task retry left a copy of the run's checkpoints on
    the training VM's disk. The name is the same for every round of one run and rank (two ranks on one machine,
    or two runs, never share one), so each round removes its predecessor's folder first. A path that exists and
    is not a directory of this user's (a link, another user's: a shared /tmp) is refused, never followed or
    entered; the folder is created with ``os.mkdir``, which fails where another process created the name since.
    """
    key = hashlib.sha256(out.rstrip("/").encode()).hexdigest()[:16]
    path = Path(tempfile.gettempdir()) / f"tenfold-train-{key}-r{rank}"
    elsewhere = "set TMPDIR to a folder only this user may write"
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise WorkerError(f"the scratch folder {path} cannot be looked at ({_os_reason(exc, path)}): {elsewhere}") from exc
    else:
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid():
            raise WorkerError(f"the scratch folder {path} exists and is not a folder of this user's (a link, a file, "
                              f"another user's): remove it, or {elsewhere}")
        try:
            shutil.rmtree(path)  # an earlier round's, killed before its own cleanup
        except OSError as exc:
            raise WorkerError(f"the scratch folder {path} an earlier round left cannot be removed "
                              f"({_os_reason(exc, path)}): remove it, or {elsewhere}") from exc
    try:
        os.mkdir(path, 0o700)
    except FileExistsError as exc:
        raise WorkerError(f"the scratch folder {path} was created by another process while this rank emptied it (is "
                          f"another job training into the same --out?): stop that job, or {elsewhere}") from exc
    except OSError as exc:
        raise WorkerError(f"the scratch folder {path} cannot be created ({_os_reason(exc, path)}): {elsewhere}") from exc
    return path


def _os_reason(exc: OSError, path: Path) -> str:
    """``exc`` on one line, without the path when it names ``path`` itself (the message names it already)."""
    if exc.strerror and exc.filename in (path, str(path)):
        return exc.strerror
    return " ".join(str(exc).split()) or type(exc).__name__


def _record_refusal(exc: BaseException, rank: int, out: Path, mirror: RemoteDir | None) -> None:
    """Write :data:`REFUSED_FILE` when ``exc``'s class says ``retryable = False`` (the run cannot succeed on any try:
    a batch its rows cannot fill); best effort, the error itself is raised either way."""
    from tenfold.outages import retry_cannot_cure

    if not retry_cannot_cure(exc):  # google-auth's network errors say retryable False too: not a refusal
        return
    body = json.dumps({"rank": rank, "error": f"{type(exc).__name__}: {exc}"[:2000]}).encode()
    try:
        if mirror is not None:
            mirror.write_bytes(REFUSED_FILE, body)
        else:
            atomic_write(out / REFUSED_FILE, body)
    except Exception:
        log.exception("rank %d could not record its refusal in %s", rank, mirror.uri if mirror else out)


@record
def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tenfold.training.worker", description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="train_config.json: a path or a URI (gs://...)")
    parser.add_argument("--out", required=True, help="output folder: a path, or a URI mirrored from a local scratch")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s rank%(process)d %(name)s: %(message)s")
    if "RANK" not in os.environ:
        raise WorkerError("RANK is not set: start the worker with torchrun (see this module's docstring)")
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    cfg = TrainConfig.from_dict(json.loads(read_text(args.config)))
    mirror = RemoteDir(args.out) if is_remote(args.out) else None
    out = scratch_folder(args.out, rank) if mirror else Path(args.out)
    try:  # the scratch folder goes whatever fails (a kill skips this: the next round's scratch_folder removes it)
        _train(cfg, out, rank, world, local_rank, mirror)
    finally:
        if mirror is not None:
            shutil.rmtree(out, ignore_errors=True)
    return 0


def _train(cfg: TrainConfig, out: Path, rank: int, world: int, local_rank: int, mirror: RemoteDir | None) -> None:
    """:func:`main`'s rank: join the group, train into ``out`` and write the result (to ``mirror``, a remote --out)."""
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    torch.set_num_threads(cfg.threads or max(1, (os.cpu_count() or 1) // local_world))
    try:  # refuse nccl without CUDA, or without a GPU for this rank, before joining any group
        select_device(cfg.backend or "gloo", local_rank)
    except WorkerError as exc:  # recorded when no try can mend it (TooFewGpus): the launch then refuses, not retries
        _record_refusal(exc, rank, out, mirror)
        raise
    init_distributed(cfg.backend or "gloo", rank, world, cfg.collective_timeout_s)
    try:
        try:
            result = Trainer(cfg, out, rank, world, local_rank, mirror).train()
            dist.barrier()
        except RuntimeError as exc:
            if peer_lost(exc):
                first = (str(exc).strip().splitlines() or [""])[0][:300]
                raise PeerLost(f"rank {rank}: a collective failed because another process of the job stopped; "
                               f"that process's failure is the cause ({first})") from exc
            _record_refusal(exc, rank, out, mirror)
            raise
        except Exception as exc:
            _record_refusal(exc, rank, out, mirror)
            raise
        if result is not None:
            body = json.dumps(result, indent=2, sort_keys=True)
            if mirror is not None:
                mirror.write_bytes(RESULT_FILE, body.encode())
            else:
                atomic_write(out / RESULT_FILE, body.encode())
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
