"""Fitting the calibration at the end of training, with its before/after report.

The worker (:mod:`tenfold.training.worker`) calls :func:`calibrate` on rank 0 with the chosen epoch's
logits on the validation slice (and on the training rows, which anchor the level of
``anchored_temperature``). The :class:`~tenfold.model.calibration.Calibrator` it returns is saved in
the model folder and applied by every consumer; its ``report`` holds the slice's log loss, Brier
score and expected calibration error before and after. Those "after" figures are in-sample for the
calibration; the held-out ones come from the evaluation on the gate's holdout
(:func:`tenfold.training.evaluate.evaluate_with_baselines`, the ``uncalibrated`` figures next to the
calibrated ones).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from typing import Any

import numpy as np

from tenfold.model import calibration
from tenfold.model.calibration import CalibrationError, Calibrator, fit_temperature, sigmoid
from tenfold.training.metrics import score

log = logging.getLogger(__name__)


def _figures(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    m = score("slice", y, p)
    return {"log_loss": m.log_loss, "brier": m.brier, "ece": m.ece, "auc": m.auc}


def calibrate(method: str, val_logits: np.ndarray, val_labels: np.ndarray, *, train_logits: np.ndarray,
              train_labels: np.ndarray, slice_info: Mapping[str, Any] | None = None) -> Calibrator:
    """Fit ``method`` on the validation slice and report the slice's figures before and after.

    A slice that cannot be calibrated (one class only, anti-informative scores) leaves the model
    uncalibrated, with the reason in the report, rather than failing a finished training run.
    """
    y = np.asarray(val_labels, dtype=np.float64)
    z = np.asarray(val_logits, dtype=np.float64)
    report: dict[str, Any] = {"slice": dict(slice_info or {}), "rows": int(y.size), "requested": method}
    try:
        before = _figures(y, sigmoid(z))
    except ValueError as exc:  # e.g. a slice of one class: no AUC, nothing to calibrate against
        log.warning("validation slice cannot be scored (%s): the model stays uncalibrated", exc)
        return Calibrator(report={**report, "skipped": str(exc)})
    report["before"] = before
    try:
        fitted = calibration.fit(method, z, y, train_logits=train_logits, train_rate=float(np.mean(train_labels)),
                                 report=report)
    except CalibrationError as exc:
        log.warning("calibration %s not fitted (%s): the model stays uncalibrated", method, exc)
        return Calibrator(report={**report, "skipped": str(exc)})
    after = _figures(y, fitted.apply(z))
    log.info("calibration %s on %d validation rows: ECE %.4f -> %.4f, log loss %.4f -> %.4f", fitted.describe(), y.size,
             before["ece"], after["ece"], before["log_loss"], after["log_loss"])
    return dataclasses.replace(fitted, report={**fitted.report, "after": after})


def plain_log_loss(logits: np.ndarray, labels: np.ndarray) -> float:
    """Mean log loss of ``sigmoid(logits)``, computed from the logits (no clipping needed)."""
    z, y = np.asarray(logits, dtype=np.float64), np.asarray(labels, dtype=np.float64)
    return float(np.mean(np.logaddexp(0.0, np.where(y == 1, -z, z))))


def selection_loss(logits: np.ndarray, labels: np.ndarray) -> float:
    """What early stopping, the epoch choice and the hyperparameter search minimise on the validation slice.

    The slice's log loss after fitting the slice's own temperature *and* offset: how well the scores, once
    calibrated, explain the slice, with the slice's level set aside. The slice is two weeks whose delay
    rate drifts from month to month; its raw log loss swings by 0.02 between epochs as the model's mean
    prediction moves against that level, which chooses epochs by noise. A slice that cannot be fitted (one
    class only) falls back to the plain log loss.
    """
    try:
        t, b = fit_temperature(logits, labels, free_offset=True)
    except CalibrationError:
        return plain_log_loss(logits, labels)
    return plain_log_loss(np.asarray(logits, dtype=np.float64) / t + b, labels)

