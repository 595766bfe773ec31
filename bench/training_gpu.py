"""Benchmark: training samples/s on a CUDA GPU (nccl) against the same machine's CPU (gloo), in one run.

Run (on a machine with CUDA; elsewhere it says so and exits 0)::

    .venv/bin/python bench/training_gpu.py

Synthetic flights feature rows (9 months of 27,000, about the real Jan-Sep window's size) in a temporary lake, the
default flights network, no validation slice, no early stopping and no periodic checkpoint, so each timed loop is
training steps only (an epoch's end and the last step take a snapshot). Peers in the same run, 200 steps each: one
CPU process with every core's threads at the GPU's batch (8192), and 2 gloo processes of one thread at the CPU
default (512 a rank). The GPU runs 25, 200 (the peers' length: the ratio) and 1,000 steps (enough nvidia-smi
samples, every 200 ms, for its utilisation); bench/training.py's gpu_run. The temporary folder (lake, home, runs) is
removed at the end, whatever happened, unless ``--keep``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (lake, home, runs)")
    args = parser.parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        print("bench/training_gpu.py: no CUDA device on this machine: nothing measured")
        return 0
    root = Path(tempfile.mkdtemp(prefix="tenfold-bench-gpu-"))
    try:
        return measure(root)
    finally:
        if args.keep:
            print(f"bench/training_gpu.py: kept {root}", file=sys.stderr)
        else:
            shutil.rmtree(root, ignore_errors=True)


def measure(root: Path) -> int:
    """The benchmark itself, with its files under ``root``."""
    import torch
    from training import gpu_run  # bench/training.py

    from tenfold.config import build_settings
    from tenfold.data.lake import Lake, month_range
    from tenfold.training.config import TrainConfig
    from tenfold.training.launch import run_torchrun
    from tenfold.workloads.flights.synthetic import publish_synthetic_features

    settings = build_settings("local", {"TENFOLD_HOME": str(root / "home")})
    lake = Lake((root / "lake").as_uri())
    months = month_range("2013-01", "2013-09")
    t0 = time.time()
    publish_synthetic_features(lake, months, 27_000, seed=1)
    print(f"lake {time.time() - t0:.0f} s", flush=True)
    base = TrainConfig.from_settings(settings, lake_uri=lake.uri, train_months=tuple(p.label for p in months))
    base = base.with_(validation_days=0.0, patience=None, checkpoint_every=10**6, epochs=50)
    cores = os.cpu_count() or 1
    cpu: dict[str, float] = {}
    peer_steps = 200  # the CPU peers' run length: a rate includes its run's first steps, so only equal runs compare
    for label, cfg, n in [
        ("cpu gloo 2 x 1 thread, batch 512 a rank", base.with_(batch_size=512, max_steps=peer_steps, threads=1), 2),
        (f"cpu 1 process x {cores} threads, batch 8192", base.with_(batch_size=8192, max_steps=peer_steps, threads=cores), 1),
    ]:
        r = run_torchrun(settings, cfg, root / f"cpu{n}", nproc=n)
        cpu[label] = r.samples_per_s
        print(f"{label}: {r.samples_per_s:,.0f} samples/s ({r.steps} steps, device {r.raw['device']})", flush=True)
    best = max(cpu, key=lambda k: cpu[k])
    for steps in (25, 200, 1000):  # 200: as long as the CPU peers; 1000: enough nvidia-smi samples
        rate, util, busy = gpu_run(settings, base.with_(max_steps=steps), root / f"gpu{steps}")
        ratio = (f"{rate / cpu[best]:.2f}x the best CPU peer ({best})" if steps == peer_steps
                 else f"no ratio: the CPU peers ran {peer_steps} steps")
        print(f"GPU ({torch.cuda.get_device_name(0)}), batch 8192, {steps} steps: {rate:,.0f} samples/s, "
              f"{ratio}, mean utilisation {util:.0f}% over {busy} busy samples", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
