"""One canary check: the canary against the control over the same window, in the style of Kayenta.

:func:`check` takes what the load balancer saw of each arm (:class:`~tenfold.rollout.ArmTraffic`) and the
online accuracy of each arm (feedback joined to predictions, :mod:`tenfold.feedback.metrics`) and answers
``pass``, ``fail`` (with the reasons) or ``no_data``. Every value that drove the verdict is in
:attr:`Check.values`, so the decision can be logged, recorded and plotted as it was made.

* **Error rate:** the check fails when the canary's share of 5xx (and unanswered) requests exceeds the
  control's by more than ``max_error_rate_increase`` beyond chance: the one-sided lower confidence bound
  (at ``error_alpha``; Newcombe's hybrid score interval, sound with zero errors and small windows) of the
  difference is above the margin. One error in a window of 50 is not a failure; 5 % errors in 400 is.
  A canary with fewer than ``min_requests`` requests (and a control with enough) is judged too, by an
  exact one-sided binomial test of its errors against the control's upper bound plus the margin: a canary
  whose every request fails leaves the load balancer after a few (its replica's readiness) and never
  reaches ``min_requests``, and 2 errors in 2 requests are already decisive. A thin control (a step above
  50 %, or little traffic) is the mirror: the canary's errors are tested the same way against the control's
  upper bound, wide on a few requests, so only a canary clearly worse than any rate the control may have fails.
* **Latency:** a one-sided Mann-Whitney U test (``scipy.stats.mannwhitneyu``) of the canary's latency
  samples, less ``latency_tolerance_ms``, against the control's: the check fails when the canary is
  slower beyond the tolerance at significance ``latency_alpha``. Rank-based, so one slow outlier does not
  fail a canary and a shift of the whole distribution does; the p99 of both is reported beside it.
* **Latency tail:** a shift of the whole distribution is not the only way to be slower: a canary whose
  requests are slow now and then (a lock, a cold path, a share of them timing out) keeps its median. The
  check also fails when more of the canary's requests than of the control's take longer than the
  control's p99 plus ``latency_tail_tolerance_ms``, by a one-sided Fisher exact test at ``latency_alpha``.
* **Online accuracy:** accuracy at 0.5 of the predictions that have feedback; the check fails when a
  one-sided two-proportion z-test says the canary trails the control by more than ``max_accuracy_drop``
  at significance ``accuracy_alpha`` (a small sample's chance dip is not a failure). Given the arms' accuracy
  span by span (``accuracy_strata``: each step's time, when both arms served at one split), the difference is
  taken within each span and the spans' differences combined (Mantel-Haenszel weights ``n1 n2 / (n1 + n2)``,
  the variance to match): summed over a rollout whose split moved, the canary's labels came mostly from late
  in it and the control's from early, so a drift of accuracy over time was charged to the canary.
* **No data is not a pass:** fewer than ``min_requests`` requests of either arm, or fewer than
  ``min_feedback`` labelled predictions, make the check ``no_data``. The caller waits for more, up to a
  deadline, and then fails safe. A failing metric fails the check even when another has no data yet.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal

import numpy as np

from tenfold.config.serving import RolloutSettings
from tenfold.rollout import ArmTraffic

Verdict = Literal["pass", "fail", "no_data"]
PASS: Final = "pass"
FAIL: Final = "fail"
NO_DATA: Final = "no_data"


@dataclass(frozen=True)
class Accuracy:
    """Online accuracy of one arm over the window: labelled predictions and the share right at 0.5. ``labelled``
    None: not read (a window with too few requests is no data whatever its feedback, so the join is skipped)."""

    labelled: int | None
    accuracy: float | None
    log_loss: float | None = None


@dataclass(frozen=True)
class Check:
    verdict: Verdict
    reasons: tuple[str, ...]
    values: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"verdict": self.verdict, "reasons": list(self.reasons), "values": self.values}

    def summary(self) -> str:
        v = self.values
        parts = [f"{self.verdict.upper()}"]
        if "canary_requests" in v:
            parts.append(f"requests canary {v['canary_requests']} / control {v['control_requests']}")
        if v.get("canary_error_rate") is not None and v.get("control_error_rate") is not None:
            parts.append(f"errors {v['canary_error_rate']:.2%} vs {v['control_error_rate']:.2%}")
        if v.get("canary_p99_ms") is not None and v.get("control_p99_ms") is not None:
            # The U test runs only on enough latencies in both arms: a canary whose requests mostly got no answer (no
            # latency in the load balancer's log) has p99s and no p-value, and reading one crashed the step, its
            # conclude, its report and `tenfold rollout status`, every time the stored check was read.
            tested = v.get("latency_p_value")
            parts.append(f"p99 {v['canary_p99_ms']:.1f} vs {v['control_p99_ms']:.1f} ms"
                         + (f" (U test p={tested:.3g})" if tested is not None else " (too few latencies to test)"))
        if v.get("canary_accuracy") is not None and v.get("control_accuracy") is not None:
            parts.append(f"accuracy {v['canary_accuracy']:.3f} vs {v['control_accuracy']:.3f} "
                         f"({v['canary_labelled']}/{v['control_labelled']} labelled)")
        text = "; ".join(parts)
        return text + (": " + "; ".join(self.reasons) if self.reasons else "")


def _wilson(errors: int, n: int, z: float) -> tuple[float, float]:
    """Wilson score bounds of the proportion ``errors / n`` at normal quantile ``z``."""
    p = errors / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * float(np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def error_increase_lower_bound(canary: ArmTraffic, control: ArmTraffic, alpha: float) -> float:
    """The one-sided ``1 - alpha`` lower confidence bound of the canary's error rate less the control's
    (Newcombe's hybrid score interval from each arm's Wilson bounds)."""
    from scipy.stats import norm

    z = float(norm.isf(alpha))
    p1, p2 = canary.errors / canary.requests, control.errors / control.requests
    low1, _ = _wilson(canary.errors, canary.requests, z)
    _, high2 = _wilson(control.errors, control.requests, z)
    return p1 - p2 - float(np.sqrt((p1 - low1) ** 2 + (high2 - p2) ** 2))


def _few_requests_errors(canary: ArmTraffic, control: ArmTraffic, values: dict[str, Any],
                         policy: RolloutSettings) -> list[str]:
    """The error check of a canary or a control with fewer than ``min_requests`` requests: an exact one-sided binomial
    test of the canary's errors against the highest rate it may have (the control's upper bound plus the margin),
    which holds its false failures to ``error_alpha`` at any size (the score interval does not below a few dozen).
    A thin control's upper bound is wide, so it fails a canary clearly worse than any rate the control may have (900
    errors in 900 requests against a control's 40 went unjudged to the deadline) and no other. Records its values;
    returns its failure, if any."""
    from scipy.stats import binomtest, norm

    _, control_high = _wilson(control.errors, control.requests, float(norm.isf(policy.error_alpha)))
    allowed = min(1.0, control_high + policy.max_error_rate_increase)
    p_value = float(binomtest(canary.errors, canary.requests, allowed, alternative="greater").pvalue)
    values["error_rate_allowed"], values["error_rate_p_value"] = allowed, p_value
    if p_value >= policy.error_alpha:
        return []
    if canary.requests < policy.min_requests:
        which = (f"error rate {canary.errors}/{canary.requests} requests (fewer than the {policy.min_requests} a full "
                 f"check needs) against the control's {control.error_rate:.2%}")
    else:
        which = (f"error rate {canary.errors}/{canary.requests} requests against the control's {control.error_rate:.2%} "
                 f"of {control.requests} requests (fewer than the {policy.min_requests} a full check needs)")
    return [f"{which}: above the {allowed:.2%} allowed beyond chance (exact binomial p={p_value:.3g} < "
            f"{policy.error_alpha:g})"]


def _p99(samples: np.ndarray) -> float | None:
    return float(np.percentile(samples, 99)) if samples.size else None


def _tail(can: np.ndarray, ctl: np.ndarray, values: dict[str, Any], policy: RolloutSettings) -> list[str]:
    """The latency-tail check: more canary than control requests above the control's p99 plus the tail
    tolerance, beyond chance (one-sided Fisher exact test). Records its values; returns its failure, if any."""
    from scipy.stats import fisher_exact

    slow_at = float(np.percentile(ctl, 99)) + policy.latency_tail_tolerance_ms
    slow_canary, slow_control = int((can > slow_at).sum()), int((ctl > slow_at).sum())
    table = [[slow_canary, can.size - slow_canary], [slow_control, ctl.size - slow_control]]
    p_value = float(fisher_exact(table, alternative="greater").pvalue)
    values.update(latency_tail_ms=slow_at, canary_tail_share=slow_canary / can.size,
                  control_tail_share=slow_control / ctl.size, latency_tail_p_value=p_value)
    if p_value >= policy.latency_alpha:
        return []
    return [f"latency tail: {slow_canary / can.size:.1%} of the canary's requests took longer than {slow_at:.0f} ms "
            f"(the control's p99 + {policy.latency_tail_tolerance_ms:g} ms), against {slow_control / ctl.size:.1%} of "
            f"the control's (Fisher exact p={p_value:.3g} < {policy.latency_alpha:g})"]


def _stratified_drop(strata: Sequence[tuple[Accuracy, Accuracy]], margin: float) -> tuple[float, float] | None:
    """``(drop, p_value)`` of the canary's accuracy against the control's, compared within each ``(canary, control)``
    span and combined (Mantel-Haenszel weights; over one span, the one-sided z-test of two proportions): the
    control's less the canary's, and the one-sided p-value of "the canary is at
    least the control's less ``margin``". None when no span has labels of both arms."""
    from scipy.stats import norm

    used = [(can, ctl) for can, ctl in strata
            if can.labelled and ctl.labelled and can.accuracy is not None and ctl.accuracy is not None]
    if not used:
        return None
    # Each span's variance with the Agresti-Caffo adjustment (one right and one wrong label added to each arm, for the
    # variance only): a span of one or two labels (the newest step's first check) is right or wrong in all, and its
    # own accuracy (0 or 1) gave it no variance, so one wrong label there failed the check with p ~ 1e-5 (19 of 20
    # right against the control's 99 %). A large span's variance is all but unchanged.
    def variance(arm: Accuracy) -> float:
        n = arm.labelled or 0
        adjusted = ((arm.accuracy or 0.0) * n + 1) / (n + 2)
        return adjusted * (1 - adjusted) / (n + 2)

    weights, drops, variances = [], [], []
    for can, ctl in used:
        n_can, n_ctl = can.labelled or 0, ctl.labelled or 0  # (both set and positive: the filter above)
        weights.append(n_can * n_ctl / (n_can + n_ctl))
        drops.append((ctl.accuracy or 0.0) - (can.accuracy or 0.0))
        variances.append(variance(can) + variance(ctl))
    w = np.asarray(weights)
    drop = float(np.dot(w, drops) / w.sum())
    se = float(np.sqrt(np.dot(w * w, variances)) / w.sum())
    gap = drop - margin
    if se == 0:
        return drop, 0.0 if gap > 0 else 1.0
    return drop, float(norm.sf(gap / se))


def check(canary: ArmTraffic, control: ArmTraffic, canary_acc: Accuracy, control_acc: Accuracy,
          policy: RolloutSettings, *, accuracy_strata: Sequence[tuple[Accuracy, Accuracy]] | None = None) -> Check:
    """Compare the canary with the control over one window (see the module docstring). ``canary_acc`` and
    ``control_acc`` are the arms' accuracy in all; ``accuracy_strata``, when given, the same labels span by span,
    which the accuracy test compares within each span."""
    from scipy.stats import mannwhitneyu

    values: dict[str, Any] = {
        "canary_requests": canary.requests, "control_requests": control.requests,
        # Fewer than the requests where clients gave up before any answer (the cloud's log has no latency for them):
        # the caller reads the control's count to tell a frozen control too thin to test latency on.
        "canary_latency_samples": len(canary.latencies_ms), "control_latency_samples": len(control.latencies_ms),
        "canary_errors": canary.errors, "control_errors": control.errors,
        "canary_error_rate": canary.error_rate, "control_error_rate": control.error_rate,
        "canary_labelled": canary_acc.labelled, "control_labelled": control_acc.labelled,
        "canary_accuracy": canary_acc.accuracy, "control_accuracy": control_acc.accuracy,
        "canary_log_loss": canary_acc.log_loss, "control_log_loss": control_acc.log_loss,
    }
    failed: list[str] = []
    missing: list[str] = []

    if (control.requests >= policy.min_requests and 0 < canary.requests < policy.min_requests) or (
            canary.requests >= policy.min_requests and 0 < control.requests < policy.min_requests):
        # A canary whose every request fails leaves the load balancer after a few (its replica's readiness) and
        # never reaches min_requests: it waited for data to the deadline and failed without rejecting the version.
        # A thin control (a step above 50 %, little traffic) hid such a canary the same way.
        failed.extend(_few_requests_errors(canary, control, values, policy))
    elif canary.requests >= policy.min_requests and control.requests >= policy.min_requests:
        assert canary.error_rate is not None and control.error_rate is not None
        increase = canary.error_rate - control.error_rate
        bound = error_increase_lower_bound(canary, control, policy.error_alpha)
        values["error_rate_increase"], values["error_rate_increase_low"] = increase, bound
        if bound > policy.max_error_rate_increase:
            failed.append(f"error rate {canary.error_rate:.2%} is {increase:.2%} above the control's "
                          f"{control.error_rate:.2%}, at least {bound:.2%} beyond chance (at most "
                          f"{policy.max_error_rate_increase:.2%} allowed; {1 - policy.error_alpha:.0%} lower bound)")
    if canary.requests < policy.min_requests or control.requests < policy.min_requests:
        missing.append(f"too few requests (canary {canary.requests}, control {control.requests}; "
                       f"need {policy.min_requests} each)")
    else:
        can = np.asarray(canary.latencies_ms, dtype=np.float64)
        ctl = np.asarray(control.latencies_ms, dtype=np.float64)
        values["canary_p99_ms"], values["control_p99_ms"] = _p99(can), _p99(ctl)
        # As many latencies as requests are needed (the cloud's log has none for a request its client gave up on
        # before any answer, which HAProxy's records at its time): latency is not judged on a handful of samples.
        if can.size >= policy.min_requests and ctl.size >= policy.min_requests:
            p_value = float(mannwhitneyu(can - policy.latency_tolerance_ms, ctl, alternative="greater").pvalue)
            values["latency_p_value"] = p_value
            if p_value < policy.latency_alpha:
                failed.append(f"latency: the canary is slower than the control by more than {policy.latency_tolerance_ms:g} ms "
                              f"(Mann-Whitney U p={p_value:.3g} < {policy.latency_alpha:g}; p99 "
                              f"{values['canary_p99_ms']:.1f} vs {values['control_p99_ms']:.1f} ms)")
            failed.extend(_tail(can, ctl, values, policy))
        else:
            missing.append(f"too few latency samples (canary {can.size}, control {ctl.size}; need "
                           f"{policy.min_requests} each)")

    if policy.min_feedback > 0 and canary_acc.labelled is not None and control_acc.labelled is not None:
        if canary_acc.labelled < policy.min_feedback or control_acc.labelled < policy.min_feedback:
            missing.append(f"too little feedback (canary {canary_acc.labelled}, control {control_acc.labelled} "
                           f"labelled predictions; need {policy.min_feedback} each)")
        elif canary_acc.accuracy is not None and control_acc.accuracy is not None:
            stratified = _stratified_drop(accuracy_strata, policy.max_accuracy_drop) if accuracy_strata else None
            if stratified is not None:
                values["accuracy_spans"] = sum(1 for can, ctl in accuracy_strata or () if can.labelled and ctl.labelled)
            else:  # the arms' labels in all, as one span (both have labels here)
                stratified = _stratified_drop([(canary_acc, control_acc)], policy.max_accuracy_drop)
                assert stratified is not None
            drop, p_value = stratified
            values["accuracy_drop"], values["accuracy_p_value"] = drop, p_value
            if p_value < policy.accuracy_alpha:
                values["accuracy_failed"] = True
                within = (f" (compared within each of {values['accuracy_spans']} spans of one split)"
                          if values.get("accuracy_spans", 1) > 1 else "")
                failed.append(f"online accuracy {canary_acc.accuracy:.3f} is {drop:.3f} below the control's "
                              f"{control_acc.accuracy:.3f}{within}, more than the {policy.max_accuracy_drop:g} allowed "
                              f"(z-test p={p_value:.3g} < {policy.accuracy_alpha:g})")

    if failed:
        return Check(FAIL, tuple(failed), values)
    if missing:
        return Check(NO_DATA, tuple(missing), values)
    return Check(PASS, (), values)
