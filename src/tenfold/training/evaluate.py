"""Evaluation on a time-based holdout, next to the workload's baselines and the gradient-boosting one.

The split is by month, from ``settings.training`` (train ``train_months``, evaluate on the later
``holdout_months``); a holdout month at or before the last training month is refused, because a
random or overlapping split leaks the future into training.

Entry points: :func:`evaluate_model` (one model folder on a holdout: what the champion/challenger gate
compares) and :func:`evaluate_with_baselines` (the model and the baselines on the same split, the
table ``tenfold evaluate`` and ``make demo`` print). The label and the feature version come from the
workload the model folder names.

A model is scored with the calibration stored in its folder (what it serves); a calibrated model is
also scored without it (``EvaluationReport.uncalibrated``), which gives the held-out expected
calibration error before and after.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tenfold.config import Settings
from tenfold.config.settings import FEATURES_TABLE
from tenfold.data.lake import Lake, Partition, month_range
from tenfold.model.io import load_model
from tenfold.model.preprocessing import Preprocessor
from tenfold.training.baselines import GradientBoostingBaseline
from tenfold.training.data import read_features
from tenfold.training.metrics import Metrics, score
from tenfold.workloads import PLATFORM_BASELINE, own_baselines

MODEL_NAME = "model"
UNCALIBRATED_NAME = "model uncalibrated"


def split_from_settings(settings: Settings) -> tuple[list[Partition], list[Partition]]:
    """(train months, holdout months) of the reference time-based split."""
    t = settings.training
    train, holdout = month_range(*t.train_months), month_range(*t.holdout_months)
    check_time_split(train, holdout)
    return train, holdout


def check_time_split(train: Sequence[Partition], holdout: Sequence[Partition]) -> None:
    if not train or not holdout:
        raise ValueError("both the training window and the holdout need at least one month")
    if min(holdout) <= max(train):
        raise ValueError(
            f"holdout {min(holdout).label}..{max(holdout).label} does not come after the training window "
            f"(ends {max(train).label}): evaluation must be on later months, never overlapping or random"
        )


def _labels(table: Any, label: str) -> np.ndarray:
    return np.asarray(table[label].to_numpy(zero_copy_only=False), dtype=np.float64)


def evaluate_model(model_dir: str | Path, lake: Lake, holdout_parts: Sequence[Partition], *,
                   table: str = FEATURES_TABLE, name: str = MODEL_NAME, for_workload: str | None = None) -> Metrics:
    """Score the model saved in ``model_dir`` on the published holdout partitions.

    ``for_workload``: the workload this process runs, given where the folder came from the registry (the gate's
    champion), so that its ``meta.json`` cannot choose a module to import (see :func:`load_model`)."""
    loaded = load_model(model_dir, for_workload=for_workload)
    contract = loaded.workload.contract
    data = read_features(lake, list(holdout_parts), contract=contract, table=table)
    return score(name, _labels(data, contract.label), loaded.predict_proba(data))


@dataclass(frozen=True)
class EvaluationReport:
    train_months: list[str]
    holdout_months: list[str]
    model: Metrics
    baselines: dict[str, Metrics] = field(default_factory=dict)
    # The same model without its calibration (None when it has none), and the calibration it has.
    uncalibrated: Metrics | None = None
    calibration: dict[str, Any] | None = None

    @property
    def all(self) -> list[Metrics]:
        return [self.model, *([self.uncalibrated] if self.uncalibrated else []), *self.baselines.values()]

    def to_dict(self) -> dict[str, Any]:
        return {
            "train_months": self.train_months,
            "holdout_months": self.holdout_months,
            "model": self.model.to_dict(),
            "baselines": {k: v.to_dict() for k, v in self.baselines.items()},
            "uncalibrated": self.uncalibrated.to_dict() if self.uncalibrated else None,
            "calibration": self.calibration,
        }

    @classmethod
    def from_dict(cls, body: dict[str, Any]) -> EvaluationReport:
        return cls(
            train_months=list(body["train_months"]), holdout_months=list(body["holdout_months"]),
            model=Metrics.from_dict(body["model"]),
            baselines={k: Metrics.from_dict(v) for k, v in body.get("baselines", {}).items()},
            uncalibrated=Metrics.from_dict(body["uncalibrated"]) if body.get("uncalibrated") else None,
            calibration=body.get("calibration"),
        )

    def save(self, path: str | Path) -> None:
        from tenfold.fsio import atomic_write

        out = Path(path)
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(out, json.dumps(self.to_dict(), indent=2, sort_keys=True).encode())

    def table(self, model_months: Sequence[str] = ()) -> str:
        """The metrics side by side, titled with the holdout and the window the baselines were fit on
        (``train_months``), and the model's own (``model_months``) where it is known to differ."""
        fit = f"{self.train_months[0]}..{self.train_months[-1]}"
        trained = f"{model_months[0]}..{model_months[-1]}" if model_months else fit
        window = f"trained on {fit}" if trained == fit else f"model trained on {trained}, baselines fit on {fit}"
        return compare(self.all, title=f"holdout {self.holdout_months[0]}..{self.holdout_months[-1]} ({window})")


def evaluate_with_baselines(
    model_dir: str | Path,
    lake: Lake,
    train_parts: Sequence[Partition],
    holdout_parts: Sequence[Partition],
    *,
    table: str = FEATURES_TABLE,
    hgb_max_iter: int = 200,
    hgb_threads: int = 1,
) -> EvaluationReport:
    """The model and the baselines (fit here on ``train_parts``) on the same holdout.

    Baselines are reported as ``<name>_baseline``: the workload's own, then gradient boosting (``hgb``).
    """
    check_time_split(train_parts, holdout_parts)
    loaded = load_model(model_dir)
    contract = loaded.workload.contract
    holdout = read_features(lake, list(holdout_parts), contract=contract, table=table)
    train = read_features(lake, list(train_parts), contract=contract, table=table)
    y = _labels(holdout, contract.label)
    uncalibrated = None
    if not loaded.calibrator.is_identity:
        uncalibrated = score(UNCALIBRATED_NAME, y, loaded.predict_proba(holdout, calibrated=False))
    pre = loaded.preprocessor
    baselines = {name: make(pre, contract) for name, make in own_baselines(loaded.workload).items()}
    # The peer sees every numeric feature column of the table, the ones the network is not fed too
    # (contract.not_model_inputs): what an off-the-shelf learner makes of the features, whatever the network
    # was given. Its categorical codes are the network's own vocabularies.
    every = Preprocessor(pre.categorical_columns, contract.numeric_columns, vocabularies=pre.vocabularies)
    baselines[PLATFORM_BASELINE] = GradientBoostingBaseline(every, contract.label, max_iter=hgb_max_iter, threads=hgb_threads)
    scores = {}
    for name, baseline in baselines.items():
        baseline.fit(train)
        scores[f"{name}_baseline"] = score(baseline.name, y, baseline.predict_proba(holdout))
    return EvaluationReport(
        train_months=[p.label for p in train_parts],
        holdout_months=[p.label for p in holdout_parts],
        model=score(MODEL_NAME, y, loaded.predict_proba(holdout)),
        baselines=scores,
        uncalibrated=uncalibrated,
        calibration=calibration_summary(loaded.meta),
    )


def calibration_summary(meta: dict[str, Any]) -> dict[str, Any] | None:
    """What a model folder's calibration is and how it did on its validation slice (without its knots)."""
    body = meta.get("calibration")
    if not body:
        return None
    from tenfold.model.calibration import Calibrator

    cal = Calibrator.from_dict(body)
    report = dict(cal.report)
    return {"method": cal.method, "description": cal.describe(), "temperature": cal.temperature, "offset": cal.offset,
            "validation": {k: report.get(k) for k in ("slice", "rows", "before", "after") if k in report}}


def compare(metrics: Sequence[Metrics], title: str | None = None) -> str:
    """A fixed-width table of several predictors' metrics on the same holdout."""
    header = f"{'predictor':<22} {'ROC AUC':>8} {'log loss':>9} {'Brier':>7} {'ECE':>7} {'rows':>9} {'pos rate':>9}"
    lines = [title] if title else []
    lines += [header, "-" * len(header)]
    for m in metrics:
        lines.append(f"{m.name:<22} {m.auc:>8.4f} {m.log_loss:>9.4f} {m.brier:>7.4f} {m.ece:>7.4f} {m.rows:>9,d} {m.positive_rate:>9.3f}")
    return "\n".join(lines)


def calibration_text(m: Metrics) -> str:
    lines = [f"calibration of {m.name}:", f"{'bin':>11} {'rows':>8} {'predicted':>10} {'observed':>9}"]
    for b in m.calibration:
        lines.append(f"{b.lower:>5.1f}-{b.upper:<5.1f} {b.count:>8,d} {b.mean_predicted:>10.3f} {b.observed_rate:>9.3f}")
    return "\n".join(lines)
