"""Hyperparameter search on the validation slices only: the grid, and the choice it made.

Run::

    .venv/bin/python bench/search.py                              # builds the 2013 features, writes bench/results/search.md
    .venv/bin/python bench/search.py --lake file:///path --seeds 0 1   # published features, two seeds
    # a second stage: the leaders again with more seeds, merged with the first stage's runs
    .venv/bin/python bench/search.py --lake file:///path --seeds 1 2 --only "lr=0.003 dropout=0.3 small" ... \
        --previous stage1.log

Each candidate trains through the real path (``run_torchrun``, 2 gloo workers, ``TrainConfig.from_settings``
plus the candidate's values) on each window, and is judged only by the best validation log loss its
run recorded on its validation slice (the newest 14 days of the window, which no rank trains on;
``train_result.json``): the slice's log loss once its own temperature and level are fitted, the same
criterion early stopping uses (:func:`tenfold.training.calibration.selection_loss`).
The holdout months after each window are never read here: they belong to the gate and to
bench/quality.py. The winner is the candidate with the least mean *regret* (its criterion minus the best candidate's,
per window and seed, over the candidates run on every seed), so one window cannot dominate by its scale.

The grid is small and fixed before any run (docs/training.md says why): two learning rates, two
dropout rates, three network sizes; weight decay, batch size, the epoch ceiling and early-stopping
patience stay at their defaults (the epoch itself is chosen by early stopping on the slice).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shlex
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import _siblings

from tenfold.config import build_settings
from tenfold.data.lake import Lake, month_range
from tenfold.training.config import TrainConfig
from tenfold.training.launch import run_torchrun
from tenfold.workloads.flights.model import ModelConfig

RESULTS = Path(__file__).parent / "results" / "search.md"
WINDOWS = ("2013-01:2013-03", "2013-01:2013-09")
SIZES = {"small": dict(embedding_dim=4, hidden=(32,)), "medium": dict(embedding_dim=8, hidden=(64, 32)),
         "large": dict(embedding_dim=8, hidden=(128, 64))}
GRID = [
    {"lr": lr, "dropout": dropout, "size": size}
    for lr, dropout, size in itertools.product((1e-3, 3e-3), (0.1, 0.3), SIZES)
]


def label(c: dict[str, Any]) -> str:
    return f"lr={c['lr']:g} dropout={c['dropout']:g} {c['size']}"


def run_candidate(settings: Any, lake: Lake, window: str, cand: dict[str, Any], seed: int, root: Path) -> dict[str, Any]:
    first, last = window.split(":")
    cfg = TrainConfig.from_settings(
        settings, lake_uri=lake.uri, train_months=tuple(p.label for p in month_range(first, last)), lr=cand["lr"],
        seed=seed, model=ModelConfig(dropout=cand["dropout"], **SIZES[cand["size"]]),  # type: ignore[arg-type]
    )
    out = root / f"{window.replace(':', '_')}-{label(cand).replace(' ', '_')}-s{seed}"
    t0 = time.perf_counter()
    result = run_torchrun(settings, cfg, out)
    v = result.raw["validation"]
    return {"window": window, "candidate": label(cand), "seed": seed, "val_criterion": v["best_criterion"],
            "best_epoch": v["best_epoch"], "epochs_run": len(v["history"]), "wall_s": time.perf_counter() - t0}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--lake", help="a lake URI with published 2013 features (default: build them here)")
    parser.add_argument("--windows", nargs="+", default=list(WINDOWS), help="training windows FIRST:LAST")
    parser.add_argument("--seeds", nargs="+", type=_siblings.seed, default=[0])
    parser.add_argument("--only", nargs="+", help="run only these candidates (labels as printed)")
    parser.add_argument("--previous", type=Path, nargs="+", default=[],
                        help="logs of earlier runs of this script: their JSON rows are reused, not re-run")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    labels = [label(c) for c in GRID]
    if unknown := [name for name in args.only or [] if name not in labels]:
        # Refused before the lake is built: an unknown label would drop its candidate silently (and all of them,
        # a run that ranks nothing).
        parser.error(f"--only: no candidate {', '.join(map(repr, unknown))}; the candidates are "
                     f"{', '.join(map(repr, labels))}")
    settings = build_settings("local")
    started = time.perf_counter()
    rows: list[dict[str, Any]] = [json.loads(line) for path in args.previous for line in path.read_text().splitlines()
                                  if line.startswith("{")]
    done = {(r["window"], r["candidate"], r["seed"]) for r in rows}
    grid = [c for c in GRID if not args.only or label(c) in args.only]
    with tempfile.TemporaryDirectory(prefix="bench-search-") as tmp:
        root = Path(tmp)
        lake = _siblings.load("training").real_features_lake(args.lake, root)
        for window in args.windows:
            for cand in grid:
                for seed in args.seeds:
                    if (window, label(cand), seed) in done:
                        continue
                    row = run_candidate(settings, lake, window, cand, seed, root)
                    rows.append(row)
                    print(json.dumps(row), flush=True)

    by = {(r["window"], r["candidate"], r["seed"]): r for r in rows}
    seeds = sorted({r["seed"] for r in rows})
    # Rank the candidates run on every seed and window; the others (dropped after an earlier stage) follow.
    full = [c for c in dict.fromkeys(r["candidate"] for r in rows)
            if all((w, c, s) in by for w in args.windows for s in seeds)]
    best = {(w, s): min(by[(w, c, s)]["val_criterion"] for c in full) for w in args.windows for s in seeds}
    regret: dict[str, list[float]] = defaultdict(list)
    for c in full:
        for w in args.windows:
            for s in seeds:
                regret[c].append(by[(w, c, s)]["val_criterion"] - best[(w, s)])
    ranked = sorted(regret, key=lambda c: sum(regret[c]) / len(regret[c]))
    rest = [c for c in dict.fromkeys(r["candidate"] for r in rows) if c not in regret]

    command = ".venv/bin/python bench/search.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    header = "| candidate | " + " | ".join(f"{w} validation criterion per seed (best epoch)" for w in args.windows) + " | mean regret |"
    lines = [
        "# Hyperparameter search on the validation slices",
        "",
        f"Command: `{command.strip()}` (total wall {time.perf_counter() - started:.0f} s; load average at the end "
        f"{os.getloadavg()[0]:.1f}). Seeds {seeds}; every run: `run_torchrun`, 2 gloo workers, settings defaults "
        "otherwise (batch 512 per worker, weight decay 1e-4, at most 10 epochs, patience 2, validation slice: the newest 14 days).",
        "Judged by the validation criterion only (the slice's log loss after fitting its own temperature and level); "
        "no holdout month was read.",
        "",
        header,
        "|" + "---|" * (len(args.windows) + 2),
    ]
    for name in [*ranked, *rest]:
        cells = []
        for w in args.windows:
            runs = [by[(w, name, s)] for s in seeds if (w, name, s) in by]
            cells.append(", ".join(f"{r['val_criterion']:.4f} ({r['best_epoch']})" for r in runs))
        mean = f"{sum(regret[name]) / len(regret[name]):.4f}" if name in regret else "(not in the last stage)"
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {mean} |")
    lines += ["", f"Chosen: **{ranked[0]}**."]
    text = "\n".join(lines) + "\n"
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
