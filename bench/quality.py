"""Benchmark: the model's probabilities on the demo window and the full-year split, next to the baselines.

Run::

    .venv/bin/python bench/quality.py                              # builds the 2013 features, writes bench/results/quality.md
    .venv/bin/python bench/quality.py --lake file:///path --seeds 0 1 2

For each window (the demo's Jan-Mar -> Apr, and the reference Jan-Sep -> Oct-Dec) the torch model trains
through the path the ``train_model`` DAG takes (``TrainConfig.from_settings`` and ``run_torchrun``: 2 gloo
workers, the validation slice, early stopping, the calibration stored with the model) once per seed, and is
evaluated on the holdout with and without its calibration, next to the rate and HistGradientBoosting
baselines fit on the same window. ``before`` is the model as it was before issue 11 (3 epochs on the whole
window, the previous network size, no slice, no calibration), trained here the same way.

Issue 11's targets, checked per window on the seed-0 model (the one the DAG trains) and on the seeds' mean:
within 0.01 AUC of HistGradientBoosting, no worse than it on log loss, better than the rate baseline on AUC,
log loss and Brier score.
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import _siblings

from tenfold.config import build_settings
from tenfold.data.lake import month_range
from tenfold.training.config import TrainConfig
from tenfold.training.evaluate import EvaluationReport, evaluate_with_baselines
from tenfold.training.launch import run_torchrun
from tenfold.training.metrics import Metrics
from tenfold.workloads.flights.model import ModelConfig

RESULTS = Path(__file__).parent / "results" / "quality.md"
WINDOWS = {"demo window": (("2013-01", "2013-03"), ("2013-04", "2013-04")),
           "full-year split": (("2013-01", "2013-09"), ("2013-10", "2013-12"))}
# The reference model before issue 11: 3 epochs on the whole window, the last epoch kept, uncalibrated.
BEFORE = dict(epochs=3, validation_days=0.0, patience=None, calibration="none", average_epochs=0.0,
              model=ModelConfig(embedding_dim=8, hidden=(64, 32), dropout=0.1))


def targets(model: Metrics, hgbs: list[Metrics], rate: Metrics) -> dict[str, bool]:
    """Against the stronger HistGradientBoosting of each measure (on every feature, or on the network's inputs)."""
    return {
        "AUC within 0.01 of HGB": model.auc >= max(h.auc for h in hgbs) - 0.01,
        "log loss <= HGB": model.log_loss <= min(h.log_loss for h in hgbs),
        "beats rate on AUC": model.auc > rate.auc,
        "beats rate on log loss": model.log_loss < rate.log_loss,
        "beats rate on Brier": model.brier < rate.brier,
    }


def row(name: str, m: Metrics) -> str:
    return f"| {name} | {m.auc:.4f} | {m.log_loss:.4f} | {m.brier:.4f} | {m.ece:.4f} |"


def mean_metrics(name: str, ms: list[Metrics]) -> Metrics:
    return Metrics(name=name, rows=ms[0].rows, positive_rate=ms[0].positive_rate,
                   auc=statistics.fmean(m.auc for m in ms), log_loss=statistics.fmean(m.log_loss for m in ms),
                   brier=statistics.fmean(m.brier for m in ms), ece=statistics.fmean(m.ece for m in ms))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--lake", help="a lake URI with published 2013 features (default: build them here)")
    parser.add_argument("--seeds", nargs="+", type=_siblings.seed, default=[0, 1, 2])
    parser.add_argument("--windows", nargs="+", default=list(WINDOWS), choices=list(WINDOWS))
    parser.add_argument("--no-before", action="store_true", help="skip the pre-issue-11 model")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    settings = build_settings("local")
    started = time.perf_counter()
    command = ".venv/bin/python bench/quality.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    sections: list[str] = []
    with tempfile.TemporaryDirectory(prefix="bench-quality-") as tmp:
        root = Path(tmp)
        lake = _siblings.load("training").real_features_lake(args.lake, root)
        for window in args.windows:
            (first, last), (h_first, h_last) = WINDOWS[window]
            train, holdout = month_range(first, last), month_range(h_first, h_last)
            base = TrainConfig.from_settings(settings, lake_uri=lake.uri, train_months=tuple(p.label for p in train))
            reports: dict[int, tuple[EvaluationReport, dict[str, Any]]] = {}
            for seed in args.seeds:
                result = run_torchrun(settings, base.with_(seed=seed), root / f"{window}-{seed}")
                report = evaluate_with_baselines(result.model_dir, lake, train, holdout, hgb_threads=2)
                reports[seed] = (report, result.raw)
                if seed == args.seeds[0]:
                    first_model_dir = result.model_dir
                print(f"{window} seed {seed}\n{report.table()}", flush=True)
            hgb_inputs = hgb_on_model_inputs(first_model_dir, lake, train, holdout)
            before = None
            if not args.no_before:
                result = run_torchrun(settings, base.with_(**BEFORE), root / f"{window}-before")
                before = evaluate_with_baselines(result.model_dir, lake, train, holdout, hgb_threads=2).model
            sections.append(render(window, train, holdout, base, reports, before, hgb_inputs))
            print(sections[-1], flush=True)
    load = os.getloadavg()[0]
    text = "\n".join([
        "# Model quality: the demo window and the full-year split",
        "",
        f"Command: `{command.strip()}` (total wall {time.perf_counter() - started:.0f} s; load average at the end {load:.1f}).",
        "Every torch model: `TrainConfig.from_settings` + `run_torchrun` (2 gloo workers), as the train_model DAG trains it; "
        "the baselines are fit on the same training window; all scored on the same holdout. ECE: expected calibration "
        "error over 10 equal-width bins.",
        "",
        *sections,
    ])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    return 0


def hgb_on_model_inputs(model_dir: Path | str, lake: Any, train: list[Any], holdout: list[Any]) -> Metrics:
    """HistGradientBoosting on exactly the network's inputs (its preprocessing's columns), beside the peer on every
    feature column that ``evaluate_with_baselines`` reports: leaving the temperature out helps it on a short window."""
    from tenfold.model import load_model
    from tenfold.training.baselines import GradientBoostingBaseline
    from tenfold.training.data import read_features
    from tenfold.training.metrics import score

    loaded = load_model(model_dir)
    label = loaded.workload.contract.label
    baseline = GradientBoostingBaseline(loaded.preprocessor, label, threads=2).fit(read_features(lake, train))
    held = read_features(lake, holdout)
    return score("hgb, network inputs", held[label].to_numpy().astype("float64"), baseline.predict_proba(held))


def render(window: str, train: list[Any], holdout: list[Any], base: TrainConfig,
           reports: dict[int, tuple[EvaluationReport, dict[str, Any]]], before: Metrics | None,
           hgb_inputs: Metrics) -> str:
    seeds = sorted(reports)
    first_report = reports[seeds[0]][0]
    rate, hgb = first_report.baselines["rate_baseline"], first_report.baselines["hgb_baseline"]
    lines = [
        f"## {window}: train {train[0].label}..{train[-1].label}, holdout {holdout[0].label}..{holdout[-1].label} "
        f"({first_report.model.rows:,} rows, positive rate {first_report.model.positive_rate:.3f})",
        "",
        f"Config: {base.model.to_dict()}, lr {base.lr:g}, weight decay {base.weight_decay:g}, batch {base.batch_size} x 2, "
        f"at most {base.epochs} epochs, patience {base.patience}, validation slice: the newest {base.validation_days:g} days, "
        f"calibration {base.calibration}, weights averaged over {base.average_epochs:g} epochs.",
        "",
        "| model | AUC | log loss | Brier | ECE |",
        "|---|---|---|---|---|",
    ]
    if before is not None:
        lines.append(row("torch before issue 11 (3 epochs, whole window, uncalibrated, raw weights; today's inputs)", before))
    for seed in seeds:
        report, raw = reports[seed]
        v, cal = raw["validation"], raw.get("calibration") or {}
        desc = cal.get("method", "none")
        if cal.get("temperature") is not None:
            desc += f" T={cal['temperature']:.3f}" + (f" c={cal['offset']:+.3f}" if cal.get("offset") else "")
        assert report.uncalibrated is not None or desc.startswith("none")
        if report.uncalibrated is not None:
            lines.append(row(f"torch seed {seed}, uncalibrated (best epoch {v['best_epoch']})", report.uncalibrated))
        lines.append(row(f"**torch seed {seed}, calibrated** ({desc})", report.model))
    if len(seeds) > 1:
        lines.append(row(f"torch calibrated, mean of seeds {seeds}", mean_metrics("mean", [reports[s][0].model for s in seeds])))
    lines += [row("route/carrier rate baseline", rate), row("HistGradientBoosting, every feature column", hgb),
              row("HistGradientBoosting, the network's inputs", hgb_inputs), ""]
    for label, model in [(f"seed {seeds[0]}", first_report.model)] + (
            [("mean of seeds", mean_metrics("mean", [reports[s][0].model for s in seeds]))] if len(seeds) > 1 else []):
        checks = targets(model, [hgb, hgb_inputs], rate)
        met = ", ".join(f"{k}: {'yes' if ok else '**no**'}" for k, ok in checks.items())
        lines.append(f"Targets ({label}): {met}.")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
