"""The DDP training worker: one process per rank, launched by torchrun.

Run through :func:`tenfold.training.launch.run_torchrun` (or ``tenfold train``), which fits the
preprocessing once and writes ``OUT/train_config.json`` and ``OUT/preprocessing.json``; by hand::

    torchrun --standalone --nproc-per-node=2 --max-restarts=1 \\
        -m tenfold.training.worker --config OUT/train_config.json --out OUT

Each rank joins a process group built on ``PrefixStore(f"attempt_{TORCHELASTIC_RESTART_COUNT}",
TCPStore(...))``: after a restart the new round's keys never collide with the dead round's
(pytorch#167288). It resumes from the newest valid checkpoint in ``OUT/checkpoints`` (model,
optimizer, scheduler, step, epoch, batch position, every rank's RNG), trains, checkpoints every
``checkpoint_every`` steps and at each epoch end, and rank 0 writes ``OUT/model`` (save_model),
``OUT/losses.jsonl`` and ``OUT/train_result.json``. Errors are recorded by torchelastic's ``@record``
so the launcher can name the failing rank and its error.

``--config`` and ``--out`` may be URIs (``gs://`` on the cloud training group): the worker then trains
in a local scratch folder and mirrors checkpoints, the model and the result to ``--out``
(:mod:`tenfold.training.remote`).

Test-only fault hook: ``TENFOLD_TRAIN_FAULT="rank=1,step=7,mode=exit,once=/path/marker"`` makes that
rank die (``exit``: ``os._exit(17)`` as a killed process would; ``raise``: an exception) when it is
about to run global step 7; with ``once`` it fires only while the marker file does not exist.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.distributed.elastic.multiprocessing.errors import record
from torch.nn.parallel import DistributedDataParallel

from tenfold.data.lake import Lake
from tenfold.features import schema
from tenfold.model.io import save_model
from tenfold.model.network import FlightDelayModel
from tenfold.model.preprocessing import Preprocessor
from tenfold.training import checkpoint as ckpt
from tenfold.training.config import TrainConfig
from tenfold.training.data import FeatureDataset, ShardedBatches, read_features, seed_everything
from tenfold.training.remote import RemoteDir, is_remote, read_text

log = logging.getLogger("tenfold.training.worker")

FAULT_ENV = "TENFOLD_TRAIN_FAULT"
CHECKPOINT_DIR = "checkpoints"
MODEL_DIR = "model"
RESULT_FILE = "train_result.json"
LOSSES_FILE = "losses.jsonl"
CONFIG_FILE = "train_config.json"
PREPROCESSING_FILE = "preprocessing.json"
# Fields that do not change the trajectory: a resume may differ in them.
_NON_TRAJECTORY = ("threads", "collective_timeout_s", "checkpoint_every", "keep_checkpoints")


class WorkerError(RuntimeError):
    """A worker cannot run; the message names what is wrong."""


def trajectory_digest(cfg: TrainConfig) -> str:
    body = {k: v for k, v in cfg.to_dict().items() if k not in _NON_TRAJECTORY}
    return json.dumps(body, sort_keys=True)


def init_distributed(backend: str, rank: int, world_size: int, timeout_s: int) -> None:
    """Join the process group through a per-attempt prefix of the rendezvous store."""
    host = os.environ.get("MASTER_ADDR", "127.0.0.1")
    port = int(os.environ.get("MASTER_PORT", "29500"))
    restart = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
    timeout = dt.timedelta(seconds=timeout_s)
    # Under torchrun the elastic agent hosts the store; without it (a bare multi-process launch) rank 0 does.
    agent_store = os.environ.get("TORCHELASTIC_USE_AGENT_STORE", "").lower() == "true"
    base = dist.TCPStore(host, port, world_size, is_master=(rank == 0 and not agent_store), timeout=timeout)
    store = dist.PrefixStore(f"attempt_{restart}", base)
    dist.init_process_group(backend, store=store, rank=rank, world_size=world_size, timeout=timeout)


def select_device(backend: str, local_rank: int) -> torch.device:
    """The device a backend implies: nccl needs CUDA (refused clearly without it), gloo runs on CPU."""
    if backend == "nccl":
        if not torch.cuda.is_available():
            raise WorkerError("backend nccl needs CUDA, and this machine has none: use gloo (settings.training.backend)")
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    if backend != "gloo":
        raise WorkerError(f"unknown backend {backend!r}: use gloo (CPU) or nccl (CUDA)")
    return torch.device("cpu")


def _maybe_fault(rank: int, step: int) -> None:
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return
    opts = dict(item.split("=", 1) for item in spec.split(",") if "=" in item)
    if int(opts.get("rank", -1)) != rank or int(opts.get("step", -1)) != step:
        return
    marker = opts.get("once")
    if marker:
        if Path(marker).exists():
            return
        Path(marker).write_text(f"fired at rank {rank} step {step}\n")
    if opts.get("mode", "exit") == "raise":
        raise RuntimeError(f"injected fault on rank {rank} at step {step} ({FAULT_ENV})")
    sys.stderr.write(f"[tenfold] injected hard exit on rank {rank} at step {step}\n")
    sys.stderr.flush()
    os._exit(17)


def _manifests(lake: Lake, cfg: TrainConfig) -> dict[str, Any]:
    out = {}
    for part in cfg.partitions:
        m = lake.read_manifest(cfg.table, part)
        out[part.label] = {"run_id": m.run_id, "data_dir": m.data_dir, "rows": m.rows, "schema_hash": m.schema_hash,
                           "created_at": m.created_at}
    return out


def train(
    cfg: TrainConfig, out: Path, rank: int, world: int, local_rank: int, mirror: RemoteDir | None = None
) -> dict[str, Any] | None:
    """The training loop of one rank; rank 0 returns the result body.

    ``out`` is a local folder; with ``mirror`` (a remote ``--out``) the preprocessing and checkpoints
    are fetched from it first, and checkpoints and the model are written through to it.
    """
    device = select_device(cfg.backend or "gloo", local_rank)
    backend = cfg.backend or "gloo"
    pre_path = out / PREPROCESSING_FILE
    ckpt_dir = out / CHECKPOINT_DIR
    if mirror is not None:
        if (body := mirror.read_bytes(PREPROCESSING_FILE)) is not None:
            pre_path.write_bytes(body)
        mirror.download_folder(CHECKPOINT_DIR, ckpt_dir)
        if rank == 0 and (body := mirror.read_bytes(LOSSES_FILE)) is not None:
            (out / LOSSES_FILE).write_bytes(body)
    if not pre_path.exists():
        raise WorkerError(f"{pre_path} is missing: launch through tenfold.training.launch.run_torchrun, which fits it once")
    pre = Preprocessor.from_json(pre_path.read_text())
    lake = Lake(cfg.lake_uri)
    columns = list(dict.fromkeys((*pre.categorical_columns, *pre.numeric_columns, schema.LABEL)))
    table = read_features(lake, cfg.partitions, table=cfg.table, columns=columns)
    data = FeatureDataset.from_table(table, pre).to(device)
    batches = ShardedBatches(data, cfg.batch_size, world, rank, cfg.seed)
    steps_per_epoch = batches.steps_per_epoch
    total_steps = cfg.epochs * steps_per_epoch
    if cfg.max_steps is not None:
        total_steps = min(total_steps, cfg.max_steps)

    seed_everything(cfg.seed)  # the same initial weights on every rank
    model = FlightDelayModel(cfg.model, list(pre.vocab_sizes.values()), pre.num_inputs).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, total_steps), eta_min=cfg.lr * 0.05)
    step, epoch, batch_pos, resumed_from = 0, 0, 0, None
    found = ckpt.latest_valid_checkpoint(ckpt_dir, map_location=device)
    if found is not None:
        info, payload = found
        if payload.get("trajectory") != trajectory_digest(cfg):
            raise WorkerError(f"{info.path} was written by a different training config; use a fresh output folder")
        model.load_state_dict(payload["model"])
        optimizer.load_state_dict(payload["optimizer"])
        scheduler.load_state_dict(payload["scheduler"])
        step, epoch, batch_pos, resumed_from = int(payload["step"]), int(payload["epoch"]), int(payload["batch"]), int(payload["step"])
        rngs = payload.get("rng", {})
        if int(payload.get("world_size", -1)) == world and rank in rngs:
            ckpt.set_rng_state(rngs[rank])
        else:  # a different world size cannot continue the old per-rank streams: start fresh ones
            seed_everything(cfg.seed * 1000 + 7919 * (step + 1) + rank)
        log.info("rank %d resumed from %s (step %d, epoch %d, batch %d)", rank, info.path.name, step, epoch, batch_pos)
    else:
        seed_everything(cfg.seed * 1000 + rank + 1)  # per-rank streams (dropout)
    # Every rank must resume from the same step: on several nodes a local --out is not shared, so a
    # restarted node would start from scratch while the others resume. Refuse rather than diverge.
    steps = [0] * world
    dist.all_gather_object(steps, step)
    if len(set(steps)) != 1:
        raise WorkerError(
            f"ranks resumed from different steps {steps}: the checkpoint folder is not shared between nodes; "
            "pass a shared --out (a gs:// URI) for multi-node training"
        )
    ddp = DistributedDataParallel(model, device_ids=[local_rank] if device.type == "cuda" else None)
    loss_fn = torch.nn.BCEWithLogitsLoss()

    def save(next_epoch: int, next_batch: int) -> None:
        states: list[Any] = [None] * world
        dist.all_gather_object(states, ckpt.rng_state())
        if rank == 0:
            payload = {
                "model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "step": step, "epoch": next_epoch, "batch": next_batch, "world_size": world,
                "rng": dict(enumerate(states)), "trajectory": trajectory_digest(cfg),
            }
            info = ckpt.save_checkpoint(ckpt_dir, step, payload, keep=cfg.keep_checkpoints)
            if mirror is not None:
                mirror.upload(info.path, f"{CHECKPOINT_DIR}/{info.path.name}")
                mirror.upload(info.sidecar, f"{CHECKPOINT_DIR}/{info.sidecar.name}")  # the commit marker, last
                mirror.upload(out / LOSSES_FILE, LOSSES_FILE)
                kept = {p.name for p in ckpt_dir.iterdir()}
                for name in mirror.list(CHECKPOINT_DIR):
                    if name not in kept:
                        mirror.delete(f"{CHECKPOINT_DIR}/{name}")

    losses = open(out / LOSSES_FILE, "a", buffering=1) if rank == 0 else None  # noqa: SIM115
    restart = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
    steps_run, last_loss = 0, float("nan")
    if device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    ddp.train()
    try:
        while step < total_steps:
            for b, index in batches.epoch(epoch, batch_pos):
                if step >= total_steps:
                    break
                _maybe_fault(rank, step + 1)
                cat, num, y = data.batch(index)
                optimizer.zero_grad(set_to_none=True)
                loss = loss_fn(ddp(cat, num), y)
                loss.backward()
                optimizer.step()
                scheduler.step()
                step += 1
                steps_run += 1
                reduced = loss.detach().clone()
                dist.all_reduce(reduced)
                last_loss = reduced.item() / world
                if losses is not None:
                    losses.write(json.dumps({"step": step, "epoch": epoch, "loss": last_loss, "attempt": restart}) + "\n")
                end_of_epoch = b + 1 == steps_per_epoch
                if end_of_epoch:
                    save(epoch + 1, 0)
                elif step % cfg.checkpoint_every == 0 or step == total_steps:
                    save(epoch, b + 1)
            else:
                epoch, batch_pos = epoch + 1, 0
                continue
            break
    finally:
        if losses is not None:
            losses.close()
    if device.type == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - started
    if rank != 0:
        return None
    save_model(out / MODEL_DIR, model, cfg.model, pre, extra={"train_config": cfg.to_dict(), "steps": step})
    if mirror is not None:
        for name in ("weights.pt", "preprocessing.json", "meta.json", ):  # meta.json last: it marks the folder whole
            mirror.upload(out / MODEL_DIR / name, f"{MODEL_DIR}/{name}")
        mirror.upload(out / LOSSES_FILE, LOSSES_FILE)
    return {
        "steps": step,
        "epochs_completed": epoch,
        "steps_per_epoch": steps_per_epoch,
        "world_size": world,
        "backend": backend,
        "device": str(device),
        "rows": len(data),
        "global_batch": cfg.batch_size * world,
        "steps_this_attempt": steps_run,
        "train_seconds": elapsed,
        "samples_per_s": steps_run * cfg.batch_size * world / elapsed if elapsed > 0 else 0.0,
        "final_loss": last_loss,
        "restart_count": restart,
        "resumed_from_step": resumed_from,
        "manifests": _manifests(lake, cfg),
        "torch_version": torch.__version__,
    }


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
    out = Path(tempfile.mkdtemp(prefix=f"tenfold-train-r{rank}-")) if mirror else Path(args.out)
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    torch.set_num_threads(cfg.threads or max(1, (os.cpu_count() or 1) // local_world))
    select_device(cfg.backend or "gloo", local_rank)  # refuse nccl without CUDA before joining any group
    init_distributed(cfg.backend or "gloo", rank, world, cfg.collective_timeout_s)
    try:
        result = train(cfg, out, rank, world, local_rank, mirror)
        dist.barrier()
        if result is not None:
            body = json.dumps(result, indent=2, sort_keys=True)
            if mirror is not None:
                mirror.write_bytes(RESULT_FILE, body.encode())
            else:
                tmp = out / f".{RESULT_FILE}.tmp"
                tmp.write_text(body)
                os.replace(tmp, out / RESULT_FILE)
    finally:
        dist.destroy_process_group()
        if mirror is not None:
            shutil.rmtree(out, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
