"""Binary-classification metrics in numpy: ROC AUC, log loss, Brier score, calibration table.

Own implementations (tested against scikit-learn's) so that evaluation and serving-side monitoring
need neither scikit-learn nor a GPU.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np


class MetricsError(ValueError):
    """The labels or predictions cannot be scored; the message says why."""

    retryable = False  # the same rows score the same way on every try (tenfold.pipelines.common.run_step)


def _check(y_true: np.ndarray, y_prob: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true, dtype=np.float64).ravel()
    p = np.asarray(y_prob, dtype=np.float64).ravel()
    if y.shape != p.shape:
        raise MetricsError(f"{y.size} labels but {p.size} predictions")
    if y.size == 0:
        raise MetricsError("no rows to score")
    if not np.isin(y, (0.0, 1.0)).all():
        raise MetricsError("labels must be 0 or 1")
    if not np.isfinite(p).all() or (p < 0).any() or (p > 1).any():
        raise MetricsError("predictions must be probabilities in [0, 1] (no NaN)")
    return y, p


def _average_ranks(x: np.ndarray) -> np.ndarray:
    order = np.argsort(x, kind="mergesort")
    sorted_x = x[order]
    # Tied scores share the mean of their ranks, as the Mann-Whitney statistic requires.
    boundaries = np.flatnonzero(np.diff(sorted_x)) + 1
    starts = np.concatenate(([0], boundaries))
    ends = np.concatenate((boundaries, [x.size]))
    mean_rank = (starts + ends + 1) / 2.0  # 1-based ranks start+1 .. end
    ranks = np.empty(x.size, dtype=np.float64)
    ranks[order] = np.repeat(mean_rank, ends - starts)
    return ranks


def roc_auc(y_true: np.ndarray, y_prob: np.ndarray) -> float:
    y, p = _check(y_true, y_prob)
    n_pos = float(y.sum())
    n_neg = float(y.size - n_pos)
    if n_pos == 0 or n_neg == 0:
        raise MetricsError(f"ROC AUC needs both classes in the labels, and all {y.size} rows scored are "
                           f"{'positive' if n_neg == 0 else 'negative'}")
    ranks = _average_ranks(p)
    return float((ranks[y == 1].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def log_loss(y_true: np.ndarray, y_prob: np.ndarray) -> float:
    y, p = _check(y_true, y_prob)
    eps = np.finfo(np.float64).eps
    p = np.clip(p, eps, 1 - eps)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def brier_score(y_true: np.ndarray, y_prob: np.ndarray) -> float:
    y, p = _check(y_true, y_prob)
    return float(np.mean((p - y) ** 2))


@dataclass(frozen=True)
class CalibrationBin:
    lower: float
    upper: float
    count: int
    mean_predicted: float
    observed_rate: float


def calibration_table(y_true: np.ndarray, y_prob: np.ndarray, n_bins: int = 10) -> list[CalibrationBin]:
    """Equal-width probability bins (as sklearn's ``calibration_curve(strategy="uniform")``); empty bins omitted."""
    y, p = _check(y_true, y_prob)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    ids = np.searchsorted(edges[1:-1], p)  # right-closed bins, as sklearn: 0.1 falls in 0.0-0.1
    out = []
    for b in range(n_bins):
        mask = ids == b
        n = int(mask.sum())
        if n:
            out.append(CalibrationBin(float(edges[b]), float(edges[b + 1]), n, float(p[mask].mean()), float(y[mask].mean())))
    return out


def expected_calibration_error(table: list[CalibrationBin]) -> float:
    total = sum(b.count for b in table)
    return float(sum(b.count * abs(b.mean_predicted - b.observed_rate) for b in table) / total) if total else 0.0


@dataclass(frozen=True)
class Metrics:
    """How one predictor did on one holdout."""

    name: str
    rows: int
    positive_rate: float
    auc: float
    log_loss: float
    brier: float
    ece: float
    calibration: list[CalibrationBin] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, body: dict[str, Any]) -> Metrics:
        values = dict(body)
        values["calibration"] = [CalibrationBin(**b) for b in values.get("calibration", [])]
        return cls(**values)


def score(name: str, y_true: np.ndarray, y_prob: np.ndarray, n_bins: int = 10) -> Metrics:
    """``name``'s metrics; a :class:`MetricsError` names ``name`` (which model or baseline could not be scored)."""
    try:
        y, p = _check(y_true, y_prob)
        table = calibration_table(y, p, n_bins)
        return Metrics(
            name=name, rows=int(y.size), positive_rate=float(y.mean()), auc=roc_auc(y, p), log_loss=log_loss(y, p),
            brier=brier_score(y, p), ece=expected_calibration_error(table), calibration=table,
        )
    except MetricsError as exc:
        raise MetricsError(f"{name} cannot be scored: {exc}") from exc
