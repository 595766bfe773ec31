"""Post-hoc calibration of a model's probabilities, stored in its ``meta.json`` and applied on load.

A :class:`Calibrator` maps the network's logits to probabilities. It is fitted once, at the end of
training, on the validation slice (the newest rows of the training window, never the gate's holdout;
see :mod:`tenfold.training.calibration`), saved in the model folder's ``meta.json`` under
``calibration``, and applied inside :meth:`tenfold.model.io.LoadedModel.predict_proba`, so the
evaluation, the gate, the serving replicas and offline inference all return the same probability.
A folder saved before calibration existed has no such entry and loads uncalibrated (:data:`IDENTITY`).

Methods (``method``):

``temperature``
    ``p = sigmoid(z / T)``: the classic one-parameter temperature scaling, ``T`` fitted on the slice.
``anchored_temperature``
    ``p = sigmoid(z / T + c)``. ``T`` is fitted on the slice *together with a free offset that is then
    discarded*, and ``c`` keeps the model's mean probability over the training window equal to that
    window's positive rate. The slice is a few recent weeks whose base rate drifts from month to month
    (2013's monthly delay rates range from 0.15 to 0.36), so it tells the model's sharpness well but its
    level badly: plain temperature scaling on a low-delay September sharpened every prediction and made
    the next quarter's log loss worse. This is the default (docs/training.md has the numbers).
``isotonic``
    A monotone step function of the logit (pool-adjacent-violators), interpolated between steps and
    kept inside ``[ISOTONIC_EPS, 1 - ISOTONIC_EPS]`` so that no prediction is ever 0 or 1. It may merge
    distinct scores into ties, so unlike the other two it can change the ranking (and the AUC).
``none``
    The identity: ``p = sigmoid(z)``.

Both temperature methods are strictly increasing maps of the logit: they never change a ranking.
numpy only, so the serving path needs nothing else.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

CalibrationMethod = Literal["none", "temperature", "anchored_temperature", "isotonic"]
METHODS: tuple[str, ...] = ("none", "temperature", "anchored_temperature", "isotonic")
ISOTONIC_EPS = 1e-4
# Logits that spread less than this (relative to their size, at least 1) are one score: the network computes in float32,
# whose rounding at a logit of 1 is about 1e-7, so such differences are its arithmetic, not its judgement. Fitted on
# 56 distinct logits within 1e-6 of -1, the anchored temperature made every probability exactly 0.0.
CONSTANT_SPREAD = 1e-6


class CalibrationError(ValueError):
    """A calibration cannot be fitted or read; the message says why and what to do."""


def sigmoid(z: np.ndarray) -> np.ndarray:
    """The logistic function in float64, without overflow warnings for large ``|z|``."""
    z = np.asarray(z, dtype=np.float64)
    out = np.empty_like(z)
    pos = z >= 0
    out[pos] = 1.0 / (1.0 + np.exp(-z[pos]))
    ez = np.exp(z[~pos])
    out[~pos] = ez / (1.0 + ez)
    return out


@dataclass(frozen=True)
class Calibrator:
    """A fitted map from logits to probabilities; ``report`` records how and on what it was fitted."""

    method: CalibrationMethod = "none"
    temperature: float = 1.0
    offset: float = 0.0
    # isotonic: the step function's knots (logits, increasing) and their probabilities (non-decreasing)
    knots: tuple[float, ...] = ()
    values: tuple[float, ...] = ()
    # Free-form provenance (the slice, its size, ECE and log loss before and after); never used to predict.
    report: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise CalibrationError(f"unknown calibration method {self.method!r}: use one of {', '.join(METHODS)}")
        if not (math.isfinite(self.temperature) and self.temperature > 0) or not math.isfinite(self.offset):
            raise CalibrationError(f"temperature must be finite and > 0 and offset finite, got {self.temperature}, {self.offset}")
        if self.method == "isotonic":
            k, v = np.asarray(self.knots, dtype=np.float64), np.asarray(self.values, dtype=np.float64)
            if k.size == 0 or k.size != v.size or np.any(np.diff(k) < 0) or np.any(np.diff(v) < 0):
                raise CalibrationError("isotonic calibration needs as many knots as values, both non-decreasing")
            if not (np.isfinite(k).all() and ((v > 0) & (v < 1)).all()):
                raise CalibrationError("isotonic knots must be finite and its values strictly inside (0, 1)")

    @property
    def is_identity(self) -> bool:
        return self.method == "none"

    @property
    def preserves_ranking(self) -> bool:
        """Whether this map is strictly increasing (so AUC is unchanged)."""
        return self.method != "isotonic"

    def apply(self, logits: np.ndarray) -> np.ndarray:
        """Calibrated probabilities (float64) for raw logits."""
        z = np.asarray(logits, dtype=np.float64)
        if self.method == "isotonic":
            return np.interp(z, np.asarray(self.knots), np.asarray(self.values))
        if self.method == "none":
            return sigmoid(z)
        return sigmoid(z / self.temperature + self.offset)

    def describe(self) -> str:
        if self.method == "none":
            return "uncalibrated"
        if self.method == "isotonic":
            return f"isotonic ({len(self.knots)} steps)"
        if self.method == "temperature":
            return f"temperature T={self.temperature:.3f}"
        return f"anchored temperature T={self.temperature:.3f}, offset {self.offset:+.3f}"

    def to_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {"method": self.method}
        if self.method in ("temperature", "anchored_temperature"):
            body.update(temperature=self.temperature, offset=self.offset)
        if self.method == "isotonic":
            body.update(knots=list(self.knots), values=list(self.values))
        body["report"] = dict(self.report)
        return body

    @classmethod
    def from_dict(cls, body: Mapping[str, Any]) -> Calibrator:
        try:
            return cls(
                method=body["method"],
                temperature=float(body.get("temperature", 1.0)),
                offset=float(body.get("offset", 0.0)),
                knots=tuple(float(x) for x in body.get("knots", ())),
                values=tuple(float(x) for x in body.get("values", ())),
                report=dict(body.get("report", {})),
            )
        except (KeyError, TypeError, ValueError, OverflowError) as exc:  # OverflowError: a 400-digit integer
            raise CalibrationError(f"calibration entry is unreadable ({exc}); re-train the model") from exc


IDENTITY = Calibrator()


# --- fitting (numpy; the training side adds the metrics report) ------------------------------------


def _check(z: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    z, y = np.asarray(z, dtype=np.float64).ravel(), np.asarray(y, dtype=np.float64).ravel()
    if z.shape != y.shape or z.size == 0:
        raise CalibrationError(f"calibration needs as many labels as logits, and some: got {z.size} and {y.size}")
    if not np.isfinite(z).all() or not np.isin(y, (0.0, 1.0)).all():
        raise CalibrationError("calibration needs finite logits and 0/1 labels")
    if y.min() == y.max():
        raise CalibrationError("the calibration slice holds one class only; it cannot tell how sharp the model is")
    spread = float(z.max() - z.min())
    if spread <= CONSTANT_SPREAD * max(1.0, float(np.abs(z).max())):
        # A temperature of one score is meaningless (z=-3 fitted T=5.873; z=+3 read as "anti-informative").
        within = f" give or take {spread:.1g}" if spread else ""
        raise CalibrationError(f"the model's scores are constant on the calibration slice (every logit {z[0]:.6g}{within}): "
                               "they are uninformative, so there is no sharpness to calibrate; check the training "
                               "data and the model's inputs, and re-train")
    return z, y


def _newton(grad_hess: Any, x0: np.ndarray, iters: int = 100) -> np.ndarray:
    """Minimise a smooth convex function from its gradient and Hessian, halving steps that go uphill."""
    x = np.array(x0, dtype=np.float64)
    loss, g, h = grad_hess(x)
    for _ in range(iters):
        try:
            step = np.linalg.solve(h + 1e-12 * np.eye(len(x)), g)
        except np.linalg.LinAlgError:
            step = g
        t = 1.0
        while t > 1e-8:
            candidate = x - t * step
            new_loss, new_g, new_h = grad_hess(candidate)
            if np.isfinite(new_loss) and new_loss <= loss + 1e-15:
                break
            t /= 2
        else:
            break
        converged = abs(loss - new_loss) < 1e-13 and np.max(np.abs(new_g)) < 1e-9
        x, loss, g, h = candidate, new_loss, new_g, new_h
        if converged:
            break
    return x


def _logistic_fit(features: np.ndarray, y: np.ndarray, x0: np.ndarray) -> np.ndarray:
    """Weights ``w`` minimising the mean log loss of ``sigmoid(features @ w)`` (a convex problem)."""

    def grad_hess(w: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
        s = features @ w
        # log(1 + exp(-s)) for y=1 and log(1 + exp(s)) for y=0, computed stably
        loss = float(np.mean(np.logaddexp(0.0, np.where(y == 1, -s, s))))
        p = sigmoid(s)
        g = features.T @ (p - y) / y.size
        h = (features * (p * (1 - p))[:, None]).T @ features / y.size
        return loss, g, h

    return _newton(grad_hess, x0)


def fit_temperature(logits: np.ndarray, labels: np.ndarray, *, free_offset: bool = False) -> tuple[float, float]:
    """``(T, b)`` minimising the log loss of ``sigmoid(z / T + b)`` on the slice (``b = 0`` unless ``free_offset``)."""
    z, y = _check(logits, labels)
    features = np.column_stack([z, np.ones_like(z)]) if free_offset else z[:, None]
    w = _logistic_fit(features, y, np.array([1.0, 0.0][: features.shape[1]]))
    slope = float(w[0])
    if not math.isfinite(slope) or slope <= 1e-6:
        raise CalibrationError(
            f"the calibration slice says the model's scores are anti-informative (slope {slope:.3g}): it is not "
            "worth calibrating; check the training data and the validation slice"
        )
    return 1.0 / slope, float(w[1]) if free_offset else 0.0


def anchor_offset(logits: np.ndarray, temperature: float, rate: float) -> float:
    """The offset ``c`` for which the mean of ``sigmoid(z / T + c)`` over ``logits`` equals ``rate``."""
    z = np.asarray(logits, dtype=np.float64).ravel() / temperature
    if not 0.0 < rate < 1.0:
        raise CalibrationError(f"the training window's positive rate is {rate}: calibration needs both classes")
    # The mean is increasing in c: bisect between an offset that puts every row below sigmoid(-50) (a mean under
    # any window's rate) and one that puts every row above sigmoid(50). A fixed [-50, 50] missed the root of a sharp
    # temperature (logits -1 +- 0.01 fitted T=0.01, so z / T is near -100) and returned +50: a mean of 3e-22.
    lo, hi = -float(z.max()) - 50.0, -float(z.min()) + 50.0
    for _ in range(200):
        mid = (lo + hi) / 2
        if float(sigmoid(z + mid).mean()) < rate:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-12:
            break
    offset = (lo + hi) / 2
    mean = float(sigmoid(z + offset).mean())
    if not abs(mean - rate) <= 1e-6 * min(rate, 1.0 - rate):  # not: a NaN mean is refused too
        raise CalibrationError(f"no offset brings the training window's mean probability to its positive rate {rate:.4g} "
                               f"at temperature {temperature:.3g} (the nearest gives {mean:.4g}): the scores are too "
                               "sharp or too nearly constant to anchor; use calibration 'temperature' or 'isotonic', or "
                               "check the training data")
    return offset


def fit_isotonic(logits: np.ndarray, labels: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Pool adjacent violators on the slice sorted by logit: knots at each block's mean logit."""
    z, y = _check(logits, labels)
    order = np.argsort(z, kind="mergesort")
    z, y = z[order], y[order]
    # Equal logits must share one value: start from one block per distinct logit.
    starts = np.concatenate(([0], np.flatnonzero(np.diff(z)) + 1))
    sums = list(np.add.reduceat(y, starts))
    zsums = list(np.add.reduceat(z, starts))
    counts = list(np.diff(np.concatenate((starts, [z.size]))).astype(np.float64))
    blocks: list[list[float]] = []  # [sum_y, sum_z, count]
    for s, zs, n in zip(sums, zsums, counts, strict=True):
        blocks.append([s, zs, n])
        while len(blocks) > 1 and blocks[-2][0] / blocks[-2][2] >= blocks[-1][0] / blocks[-1][2]:
            s2, z2, n2 = blocks.pop()
            blocks[-1][0] += s2
            blocks[-1][1] += z2
            blocks[-1][2] += n2
    if len(blocks) == 1:
        # One step gives every row the slice's rate: an AUC of 0.5, the model's ranking thrown away. The temperature
        # methods refuse scores that rank the slice backwards; so does this. The AUC from the distinct logits' groups:
        # a positive beats the negatives below its logit and ties half of those at it.
        pos = np.asarray(sums)
        neg = np.asarray(counts) - pos
        auc = float((pos * (np.cumsum(neg) - neg / 2)).sum() / (pos.sum() * neg.sum()))
        if auc <= 0.5:
            raise CalibrationError(
                f"the calibration slice says the model's scores are anti-informative (AUC {auc:.3g}): isotonic "
                "calibration would give every row the same probability; check the training data and the validation slice"
            )
    knots = tuple(float(b[1] / b[2]) for b in blocks)
    values = tuple(float(np.clip(b[0] / b[2], ISOTONIC_EPS, 1 - ISOTONIC_EPS)) for b in blocks)
    return knots, values


def _refuse_separated(logits: np.ndarray, labels: np.ndarray) -> None:
    """Refuse a slice whose scores separate its classes (every positive's logit above every negative's): it has no
    best temperature, the fit runs towards 0 and stops wherever its steps do (T=0.022 on ten rows, a probability of
    exactly 1.0 and another of 4e-51), and a probability of 0 or 1 costs an infinite log loss the day it is wrong.
    Separation itself, not a probability rounding to 1 (any row past a logit of ~37 does, in a slice of sound
    scores, and refusing those shipped the model uncalibrated and as sure)."""
    z, y = _check(logits, labels)
    if float(z[y == 0].max()) < float(z[y == 1].min()):
        raise CalibrationError(
            "the model's scores separate the calibration slice's classes (every positive above every negative), so "
            "it cannot tell how sharp the model is: a fit would give them probabilities of exactly 0 and 1 (too few "
            "rows, or a label leaked into the features); check the validation slice and the training data"
        )


def fit(method: CalibrationMethod | str, logits: np.ndarray, labels: np.ndarray, *,
        train_logits: np.ndarray | None = None, train_rate: float | None = None,
        report: Mapping[str, Any] | None = None) -> Calibrator:
    """Fit ``method`` on a slice's logits and labels.

    ``anchored_temperature`` also needs the training rows' logits and the window's positive rate, which
    set its offset. ``report`` is recorded with the calibrator.
    """
    extra = dict(report or {})
    if method == "none":
        return Calibrator(report=extra)
    if method == "temperature":
        _refuse_separated(logits, labels)
        t, _ = fit_temperature(logits, labels)
        return Calibrator("temperature", temperature=t, report=extra)
    if method == "anchored_temperature":
        if train_logits is None or train_rate is None:
            raise CalibrationError("anchored_temperature needs the training rows' logits and positive rate")
        _refuse_separated(logits, labels)
        t, slice_offset = fit_temperature(logits, labels, free_offset=True)
        offset = anchor_offset(train_logits, t, train_rate)
        extra.update(slice_offset=slice_offset, anchor_rate=float(train_rate))  # the slice's own level, set aside
        return Calibrator("anchored_temperature", temperature=t, offset=offset, report=extra)
    if method == "isotonic":
        knots, values = fit_isotonic(logits, labels)
        return Calibrator("isotonic", knots=knots, values=values, report=extra)
    raise CalibrationError(f"unknown calibration method {method!r}: use one of {', '.join(METHODS)}")
