"""Benchmark: the training step alone, in one process (world 1): milliseconds per step, and on a GPU how much of
that time the device runs kernels. It answers what bench/training_gpu.py's utilisation line cannot: where a step's
time goes.

Run::

    .venv/bin/python bench/training_step.py                          # CPU (gloo), batch 512
    python3 bench/training_step.py --backend nccl --batch 512 8192 65536
    # before/after in one run: a tree of another revision's src/ as the baseline peer
    mkdir -p /tmp/old && git archive REV src | tar -x -C /tmp/old
    python3 bench/training_step.py --backend nccl --batch 8192 --baseline-src /tmp/old --rounds 2

Each measurement is a fresh process: the reference run's model and optimizer (``Trainer``, built from settings) on
synthetic flights rows (3 months of 27,000), 20 warm-up steps, then ``--steps`` steps of ``Trainer._run_batch`` in
the worker's order (each step's loss read after the next step is queued, as ``Trainer._run_epoch`` does; a
baseline whose ``_run_batch`` reads it at once keeps doing so). On CUDA, 100 more steps run under
``torch.profiler`` (CUDA activity only) and the sum of the kernels' device time over the wall time is the busy
share. With ``--baseline-src`` every (tree, batch) pair runs in each of ``--rounds`` interleaved rounds and the
ratio of the medians is printed. No lake, no torchrun: the launcher's and the data's costs are bench/training.py's.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _siblings

ROOT = Path(__file__).resolve().parent.parent
CHILD_TIMEOUT_S = 600.0  # a measurement takes seconds to a minute: far past that, it is stuck


def child(backend: str, batch: int, steps: int, port: int) -> dict[str, float]:
    """One measurement in this process, its synthetic lake and home in a temporary folder removed after."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    with tempfile.TemporaryDirectory(prefix="bench-training-step-") as tmp:
        return _measure_in(Path(tmp), backend, batch, steps)


def _measure_in(root: Path, backend: str, batch: int, steps: int) -> dict[str, float]:
    import torch
    import torch.distributed as dist

    from tenfold.config import build_settings
    from tenfold.data.lake import Lake, month_range
    from tenfold.model_files import PREPROCESSING_FILE
    from tenfold.training.config import TrainConfig
    from tenfold.training.launch import fit_preprocessing
    from tenfold.training.worker import Trainer, init_distributed
    from tenfold.workloads.flights.synthetic import publish_synthetic_features

    settings = build_settings("local", {"TENFOLD_HOME": str(root / "home")})
    lake = Lake((root / "lake").as_uri())
    months = month_range("2013-01", "2013-03")
    publish_synthetic_features(lake, months, 27_000, seed=1)
    cfg = TrainConfig.from_settings(settings, lake_uri=lake.uri, train_months=tuple(p.label for p in months))
    cfg = cfg.with_(validation_days=0.0, patience=None, checkpoint_every=10**6, epochs=10**4, batch_size=batch,
                    max_steps=10**6, backend=backend, threads=1 if backend == "gloo" else cfg.threads)
    out = root / "out"
    out.mkdir()
    (out / PREPROCESSING_FILE).write_text(fit_preprocessing(cfg).to_json())
    init_distributed(backend, 0, 1, 60)
    trainer = Trainer(cfg, out, 0, 1, 0)
    index: list[torch.Tensor] = []
    epoch = 0
    while len(index) < steps + 120:
        index += [i for _, i in trainer.batches.epoch(epoch, 0)]
        epoch += 1

    def run(batches: list[torch.Tensor]) -> None:
        pending = None
        for i in batches:
            loss = trainer._run_batch(i)
            if torch.is_tensor(pending):
                pending.item()
            pending = loss
        if torch.is_tensor(pending):
            pending.item()
        if trainer.device.type == "cuda":
            torch.cuda.synchronize()

    run(index[:20])
    t0 = time.perf_counter()
    run(index[20 : 20 + steps])
    result = {"ms_per_step": (time.perf_counter() - t0) / steps * 1e3}
    if trainer.device.type == "cuda":
        from torch.autograd import DeviceType
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            t0 = time.perf_counter()
            run(index[20 + steps : 120 + steps])
            wall = time.perf_counter() - t0
        kernels = sum(getattr(e, "device_time", 0.0) for e in prof.events() if e.device_type == DeviceType.CUDA) / 1e6
        result |= {"kernel_ms_per_step": kernels / 100 * 1e3, "busy": kernels / wall}
    dist.destroy_process_group()
    return result


def measure(src: Path, backend: str, batch: int, steps: int, port: int) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(src), *filter(None, [os.environ.get("PYTHONPATH")])])}
    proc = subprocess.Popen([sys.executable, __file__, "--child", backend, str(batch), str(steps), str(port)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        stdout, stderr = proc.communicate(timeout=CHILD_TIMEOUT_S)
    except BaseException as exc:
        # Past its time (or Ctrl-C): subprocess.run's timeout kills the child alone and ends in a raw TimeoutExpired.
        # The child and whatever it started are killed and waited for; a timeout is said in one line.
        _siblings.kill_tree(proc.pid)
        proc.communicate()
        if isinstance(exc, subprocess.TimeoutExpired):
            raise SystemExit(f"bench/training_step.py: the run at batch {batch} from {src} did not finish in "
                             f"{CHILD_TIMEOUT_S:.0f} s: stopped it; give fewer --steps or a smaller --batch") from None
        raise
    lines = [line for line in stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise SystemExit(f"bench/training_step.py: the run at batch {batch} from {src} failed:\n{stderr[-3000:]}")
    return json.loads(lines[-1])


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--child":
        print(json.dumps(child(argv[1], int(argv[2]), int(argv[3]), int(argv[4]))), flush=True)
        return 0
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--backend", choices=("gloo", "nccl"), default="gloo")
    parser.add_argument("--batch", type=int, nargs="+", default=[512])
    parser.add_argument("--steps", type=_siblings.positive_int, default=300)
    parser.add_argument("--rounds", type=_siblings.positive_int, default=1)
    parser.add_argument("--baseline-src", type=Path, help="a folder holding another revision's src/ (the peer)")
    args = parser.parse_args(argv)
    trees = {"this tree": ROOT / "src"}
    if args.baseline_src is not None:
        if not (args.baseline_src / "src" / "tenfold").is_dir():
            parser.error(f"--baseline-src {args.baseline_src}: no src/tenfold there (git archive REV src | tar -x -C DIR)")
        trees["baseline"] = args.baseline_src / "src"
    from tenfold.local import free_ports

    runs: dict[tuple[str, int], list[dict[str, float]]] = {}
    for r in range(args.rounds):
        for batch in args.batch:
            for name, src in trees.items():
                res = measure(src, args.backend, batch, args.steps, free_ports(1)[0])
                runs.setdefault((name, batch), []).append(res)
                busy = f", kernels {res['kernel_ms_per_step']:.2f} ms/step, device busy {res['busy']:.0%}" if "busy" in res else ""
                print(f"round {r + 1} {name:9} batch {batch:6}: {res['ms_per_step']:.3f} ms/step, "
                      f"{batch / res['ms_per_step'] * 1e3:,.0f} samples/s{busy}", flush=True)
    for batch in args.batch:
        mine = statistics.median(x["ms_per_step"] for x in runs[("this tree", batch)])
        line = f"batch {batch}: median {mine:.3f} ms/step over {args.rounds} round(s)"
        if ("baseline", batch) in runs:
            base = statistics.median(x["ms_per_step"] for x in runs[("baseline", batch)])
            line += f"; baseline {base:.3f} ms/step: {base / mine:.2f}x"
        print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
