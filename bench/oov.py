"""Benchmark: what a model predicts for a categorical value it never saw, with and without a trained OOV row.

Run::

    .venv/bin/python bench/oov.py                          # builds the 2013 features, writes bench/results/oov.md
    .venv/bin/python bench/oov.py --lake file:///path --seeds 0 1

A value first seen after the training window (a new destination, a carrier that starts flying) is encoded as its
column's out-of-vocabulary index, 0 (``tenfold.model.preprocessing``). The flights workload's categoricals are never
null, so with every value of the window in the vocabulary (``vocabulary_min_count`` 1) nothing trains that
embedding row: it keeps its random initial vector. With ``settings.training.vocabulary_min_count`` (20) the window's
rare values are fit as OOV, and the row learns what they have in common.

For each minimum the torch model trains as the ``train_model`` DAG trains it (``TrainConfig.from_settings`` and
``run_torchrun``, 2 gloo workers) on the demo window (2013-01..03) and is scored on April: as it is, then with every
holdout flight's ``dest`` (then ``carrier``) replaced by a value no window holds, the case of a route or airline new
since training, and on the April flights whose destination or carrier the window never held at all.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import tempfile
import time
from pathlib import Path

import _siblings
import numpy as np
import pyarrow as pa

from tenfold.config import build_settings
from tenfold.data.lake import month_range
from tenfold.model import load_model
from tenfold.training.config import TrainConfig
from tenfold.training.data import read_features
from tenfold.training.launch import run_torchrun
from tenfold.training.metrics import Metrics, score
from tenfold.workloads import get_workload

RESULTS = Path(__file__).parent / "results" / "oov.md"
TRAIN, HOLDOUT = ("2013-01", "2013-03"), ("2013-04", "2013-04")
UNSEEN = "__never_seen__"
COLUMNS = ("dest", "carrier")


def scores(model_dir: Path, holdout: pa.Table, label: str, window_values: dict[str, set[str]]) -> dict[str, Metrics]:
    loaded = load_model(model_dir)
    y = holdout[label].to_numpy().astype("float64")
    out = {"as it is": score("as it is", y, loaded.predict_proba(holdout))}
    for col in COLUMNS:
        forced = holdout.set_column(holdout.schema.get_field_index(col), col,
                                    pa.array([UNSEEN] * holdout.num_rows, holdout.schema.field(col).type))
        out[f"every {col} unseen"] = score(f"every {col} unseen", y, loaded.predict_proba(forced))
    new = np.zeros(holdout.num_rows, dtype=bool)
    for col in COLUMNS:
        new |= ~np.isin(np.asarray(holdout[col].to_pylist(), dtype=object), list(window_values[col]))
    if new.any() and 0 < y[new].mean() < 1:
        rows = holdout.filter(pa.array(new))
        out[f"the {int(new.sum())} flights new since the window"] = score("new", y[new], loaded.predict_proba(rows))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--lake", help="a lake URI with published 2013 features (default: build them here)")
    parser.add_argument("--seeds", nargs="+", type=_siblings.seed, default=[0, 1])
    parser.add_argument("--min-counts", nargs="+", type=int, default=[1, 20])
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    settings = build_settings("local")
    started = time.perf_counter()
    command = ".venv/bin/python bench/oov.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    train, holdout_months = month_range(*TRAIN), month_range(*HOLDOUT)
    rows: list[str] = []
    with tempfile.TemporaryDirectory(prefix="bench-oov-") as tmp:
        root = Path(tmp)
        lake = _siblings.load("training").real_features_lake(args.lake, root)
        window = read_features(lake, train, columns=list(COLUMNS))
        window_values = {c: set(window[c].to_pylist()) for c in COLUMNS}
        holdout = read_features(lake, holdout_months)
        base = TrainConfig.from_settings(settings, lake_uri=lake.uri, train_months=tuple(p.label for p in train))
        label = get_workload(settings.workload).contract.label
        for min_count in args.min_counts:
            for seed in args.seeds:
                result = run_torchrun(settings, base.with_(seed=seed, vocabulary_min_count=min_count),
                                      root / f"min{min_count}-{seed}")
                for what, m in scores(result.model_dir, holdout, label, window_values).items():
                    rows.append(f"| {min_count} | {seed} | {what} | {m.rows:,} | {m.auc:.4f} | {m.log_loss:.4f} | "
                                f"{m.brier:.4f} | {m.ece:.4f} |")
                    print(rows[-1], flush=True)
    text = "\n".join([
        "# What a model predicts for values it never saw: the OOV row untrained (min count 1) and trained (20)",
        "",
        f"Command: `{command.strip()}` (total wall {time.perf_counter() - started:.0f} s). Train 2013-01..03 as the "
        "`train_model` DAG trains (`TrainConfig.from_settings` + `run_torchrun`, 2 gloo workers), score April 2013: as "
        "it is; with every flight's destination, then carrier, replaced by a value no window holds; and the flights "
        "whose destination or carrier the window never held.",
        "",
        "| vocabulary_min_count | seed | April 2013 | rows | AUC | log loss | Brier | ECE |",
        "|---:|---:|---|---:|---:|---:|---:|---:|",
        *rows,
        "",
    ])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
