"""The canary check's rules on numbers of our choosing: each metric can fail it, and "no data" is not a pass."""

from __future__ import annotations

import numpy as np
import pytest

from tenfold.config.serving import RolloutSettings
from tenfold.rollout import ArmTraffic
from tenfold.rollout.analysis import FAIL, NO_DATA, PASS, Accuracy, check

POLICY = RolloutSettings(min_requests=50, min_feedback=20, max_error_rate_increase=0.01, latency_tolerance_ms=25,
                         latency_alpha=0.01, max_accuracy_drop=0.05)
RNG = np.random.default_rng(7)


def arm(n: int = 400, errors: int = 0, shift_ms: float = 0.0) -> ArmTraffic:
    return ArmTraffic(n, errors, tuple(RNG.gamma(4.0, 5.0, n) + shift_ms))


GOOD = Accuracy(200, 0.70, 0.55)


def test_a_canary_like_the_control_passes() -> None:
    got = check(arm(), arm(), GOOD, GOOD, POLICY)
    assert got.verdict == PASS and got.reasons == ()
    assert got.values["latency_p_value"] > POLICY.latency_alpha


def test_latency_is_not_judged_on_a_handful_of_samples() -> None:
    """The cloud's request log has no latency for a request its client gave up on before any answer: 60 requests
    with 2 latencies passed the latency tests (a 2-sample Mann-Whitney cannot reach alpha) as if measured."""
    slow = ArmTraffic(60, 0, (900.0, 950.0))
    got = check(slow, arm(), GOOD, GOOD, POLICY)
    assert got.verdict == NO_DATA and "latency_p_value" not in got.values
    assert "too few latency samples (canary 2, control 400; need 50 each)" in got.reasons
    # Its summary (the step's log, conclude's report, `tenfold rollout status`) reads the p99s without a p-value:
    # it raised KeyError, every time the stored check was read.
    assert "p99 949.5 vs " in got.summary() and "(too few latencies to test)" in got.summary()
    hung = check(ArmTraffic(60, 55, (20.0,) * 5), arm(), GOOD, GOOD, POLICY)  # most requests got no answer
    assert hung.verdict == FAIL and "(too few latencies to test)" in hung.summary()


def test_five_percent_errors_fail_and_name_the_rates() -> None:
    got = check(arm(errors=20), arm(), GOOD, GOOD, POLICY)
    assert got.verdict == FAIL
    assert any("error rate 5.00%" in r and "control's 0.00%" in r for r in got.reasons)


def test_an_error_rate_like_the_controls_rarely_fails_a_small_window() -> None:
    """Both arms at 1 % errors, 50 canary requests a window: a raw difference above 1 point happens in about a
    quarter of windows (one error in 50 is 2 %); the check may fail only about ``error_alpha`` of them."""
    rng = np.random.default_rng(11)
    lat = tuple(RNG.gamma(4.0, 5.0, 50))
    failed = raw = 0
    for _ in range(2000):
        canary = ArmTraffic(50, int(rng.binomial(50, 0.01)), lat)
        control = ArmTraffic(950, int(rng.binomial(950, 0.01)), lat)
        raw += canary.errors / 50 - control.errors / 950 > POLICY.max_error_rate_increase
        failed += check(canary, control, GOOD, GOOD, POLICY).verdict == FAIL
    assert raw > 400  # the old rule (raw difference above the margin) failed these
    assert failed <= 2000 * 2 * POLICY.error_alpha, failed


def test_a_canary_whose_every_request_fails_is_failed_before_it_reaches_min_requests() -> None:
    """Each failing replica leaves HAProxy after a few errors (its readiness), so the canary arm saw 8 requests a
    window, all errors: the check said "too few requests" to the deadline and the version was never rejected."""
    control = ArmTraffic(2000, 2, tuple(RNG.gamma(4.0, 5.0, 2000)))
    for n in (2, 8, 40):
        got = check(ArmTraffic(n, n, tuple(RNG.gamma(4.0, 5.0, n))), control, GOOD, GOOD, POLICY)
        assert got.verdict == FAIL, (n, got.reasons)
        assert any(r.startswith(f"error rate {n}/{n} requests (fewer than the 50") for r in got.reasons), got.reasons
    # One error in one request is not decisive (it may be chance); a healthy small window still waits for data.
    for canary in (ArmTraffic(1, 1, (20.0,)), ArmTraffic(10, 0, tuple(RNG.gamma(4.0, 5.0, 10)))):
        got = check(canary, control, GOOD, GOOD, POLICY)
        assert got.verdict == NO_DATA and any("too few requests" in r for r in got.reasons), got.reasons


def test_an_error_rate_like_the_controls_rarely_fails_a_window_below_min_requests() -> None:
    """Both arms at 5 % errors: the exact binomial test holds false failures of a small canary to error_alpha at
    every size, 1 to 49 (the score interval of full windows would fail about 74 of these 4,000, twice too many)."""
    rng = np.random.default_rng(13)
    failed = 0
    for i in range(4000):
        n = 1 + i % 49
        canary = ArmTraffic(n, int(rng.binomial(n, 0.05)), ())
        control = ArmTraffic(950, int(rng.binomial(950, 0.05)), ())
        failed += check(canary, control, GOOD, GOOD, POLICY).verdict == FAIL
    assert failed <= 4000 * POLICY.error_alpha, failed


def test_two_hundred_ms_more_fails_the_mann_whitney_test_but_a_shift_within_tolerance_does_not() -> None:
    slow = check(arm(shift_ms=200), arm(), GOOD, GOOD, POLICY)
    assert slow.verdict == FAIL and slow.values["latency_p_value"] < 1e-6
    assert any("Mann-Whitney" in r for r in slow.reasons)
    assert slow.values["canary_p99_ms"] > slow.values["control_p99_ms"] + 150
    within = check(arm(shift_ms=10), arm(), GOOD, GOOD, POLICY)
    assert within.verdict == PASS, within.reasons


def test_a_slow_share_of_requests_fails_the_tail_check_though_the_median_holds() -> None:
    """A fifth of the canary's requests 2 s slower: the Mann-Whitney test of the whole distribution (less the
    tolerance) does not see it, the tail check does."""
    base = arm()
    slow = ArmTraffic(base.requests, 0, tuple(x + (2000.0 if i % 5 == 0 else 0.0) for i, x in enumerate(base.latencies_ms)))
    got = check(slow, arm(), GOOD, GOOD, POLICY)
    assert got.values["latency_p_value"] > POLICY.latency_alpha  # the location test alone passes it
    assert got.verdict == FAIL and any(r.startswith("latency tail: 20.0% of the canary's") for r in got.reasons), got.reasons
    assert got.values["latency_tail_p_value"] < 1e-10


def test_an_identical_canary_rarely_fails_the_tail_check() -> None:
    rng = np.random.default_rng(5)
    failed = sum(
        check(ArmTraffic(60, 0, tuple(rng.gamma(4.0, 5.0, 60))), ArmTraffic(300, 0, tuple(rng.gamma(4.0, 5.0, 300))),
              GOOD, GOOD, POLICY.model_copy(update={"latency_tail_tolerance_ms": 0.0})).verdict == FAIL
        for _ in range(500))
    assert failed <= 500 * 2 * POLICY.latency_alpha, failed


def test_one_slow_outlier_does_not_fail_a_canary() -> None:
    base = arm()
    outlier = ArmTraffic(base.requests, 0, (*base.latencies_ms[:-1], 5000.0))
    assert check(outlier, arm(), GOOD, GOOD, POLICY).verdict == PASS


def test_lower_online_accuracy_fails_when_the_sample_shows_it_beyond_chance() -> None:
    control = Accuracy(2000, 0.70, 0.55)
    got = check(arm(), arm(), Accuracy(2000, 0.60, 0.7), control, POLICY)
    assert got.verdict == FAIL and any("online accuracy 0.600 is 0.100 below" in r for r in got.reasons)
    assert got.values["accuracy_p_value"] < 1e-3
    # The same dip in 30 labelled predictions is within chance, and a drop within the margin never fails.
    assert check(arm(), arm(), Accuracy(30, 0.60), Accuracy(30, 0.70), POLICY).verdict == PASS
    assert check(arm(), arm(), Accuracy(20000, 0.69), Accuracy(20000, 0.70), POLICY).verdict == PASS


@pytest.mark.parametrize(("canary", "control", "canary_acc", "why"), [
    (arm(n=10), arm(), GOOD, "too few requests (canary 10"),
    (arm(), arm(n=0), GOOD, "too few requests (canary 400, control 0"),
    (arm(), arm(), Accuracy(3, 1.0), "too little feedback (canary 3"),
])
def test_too_little_traffic_or_feedback_is_no_data_not_a_pass(canary: ArmTraffic, control: ArmTraffic,
                                                              canary_acc: Accuracy, why: str) -> None:
    got = check(canary, control, canary_acc, GOOD, POLICY)
    assert got.verdict == NO_DATA and any(why in r for r in got.reasons), got.reasons


def test_a_failing_metric_fails_even_while_feedback_is_missing() -> None:
    got = check(arm(errors=40), arm(), Accuracy(0, None), Accuracy(0, None), POLICY)
    assert got.verdict == FAIL


def test_accuracy_check_off_when_min_feedback_is_zero() -> None:
    """With labelled feedback that shows the canary clearly worse: failed while the check is on, passed with it off
    (with no feedback at all, as this test had, the check could not run whatever the setting said)."""
    worse, control = Accuracy(2000, 0.5), Accuracy(2000, 0.7)
    assert check(arm(), arm(), worse, control, POLICY).verdict == FAIL  # on (POLICY's min_feedback)
    off = check(arm(), arm(), worse, control, POLICY.model_copy(update={"min_feedback": 0}))
    assert off.verdict == PASS and "accuracy_p_value" not in off.values, off


def test_rollout_steps_must_climb_to_100() -> None:
    assert RolloutSettings(steps="10, 50, 100").steps == (10, 50, 100)  # type: ignore[arg-type]
    for bad in ((5, 25, 50), (50, 25, 100), (0, 100), ()):
        with pytest.raises(ValueError, match="rising percentages"):
            RolloutSettings(steps=bad)


def test_the_accuracy_test_over_one_span_is_the_two_proportion_test_and_spans_are_compared_within() -> None:
    from scipy.stats import norm

    from tenfold.rollout.analysis import _stratified_drop

    canary, control = Accuracy(300, 0.74), Accuracy(2000, 0.80)
    drop, p_value = _stratified_drop([(canary, control)], 0.02)  # type: ignore[misc]
    # Its variance with the Agresti-Caffo adjustment (a right and a wrong label more per arm): at these sizes all
    # but the plain two-proportion test's.
    adjusted = [((0.74 * 300 + 1) / 302, 302), ((0.8 * 2000 + 1) / 2002, 2002)]
    agresti_caffo = norm.sf((0.06 - 0.02) / np.sqrt(sum(p * (1 - p) / n for p, n in adjusted)))
    two_proportions = norm.sf((0.06 - 0.02) / np.sqrt(0.74 * 0.26 / 300 + 0.8 * 0.2 / 2000))
    assert drop == pytest.approx(0.06) and p_value == pytest.approx(agresti_caffo)
    assert p_value == pytest.approx(two_proportions, rel=0.01)
    # Two spans, equal within each, different between: no drop, whatever the arms' shares of each span.
    spans = [(Accuracy(50, 0.9), Accuracy(950, 0.9)), (Accuracy(900, 0.7), Accuracy(100, 0.7))]
    drop, p_value = _stratified_drop(spans, 0.02)  # type: ignore[misc]
    assert drop == pytest.approx(0.0, abs=1e-12) and p_value > 0.5
    _, pooled = _stratified_drop([(Accuracy(950, (45 + 630) / 950), Accuracy(1050, (855 + 70) / 1050))], 0.02)  # type: ignore[misc]
    assert pooled < 1e-6  # the same labels summed: a drop of 0.17 that neither span has
    assert _stratified_drop([(Accuracy(0, None), Accuracy(10, 0.5))], 0.02) is None


def test_a_span_of_one_label_does_not_fail_the_accuracy_test_on_its_own() -> None:
    """The newest step's first check has a span of a label or two: right or wrong in all, its own accuracy (0 or 1)
    gave it no variance, and one wrong label there failed the check (p ~ 1e-5) for a canary 19 of 20 right against
    a control 99 % right. A seeded null simulation with such spans stays within alpha; a real drop still fails."""
    from tenfold.rollout.analysis import _stratified_drop

    one_wrong = [(Accuracy(19, 1.0), Accuracy(400, 0.99)), (Accuracy(1, 0.0), Accuracy(20, 1.0))]
    drop, p_value = _stratified_drop(one_wrong, 0.01)  # type: ignore[misc]
    assert drop > 0.01 and p_value > 0.1, p_value
    # A real drop in a large span of high accuracy still fails: the variance of such a span is not inflated (an
    # arm's accuracy over every span, 0.70 here, made it pass at 0.015)
    real = [(Accuracy(500, 0.90), Accuracy(2000, 0.99)), (Accuracy(500, 0.5), Accuracy(500, 0.5))]
    _, p_value = _stratified_drop(real, 0.02)  # type: ignore[misc]
    assert p_value < 0.01, p_value
    rng, alpha, failed = np.random.default_rng(7), 0.01, 0
    for _ in range(4000):  # identical arms at 99 %: a short span and two of a single canary label (with a long
        # first span the one-label spans weigh too little to matter: each span's own accuracy failed 1.45 % here)
        spans = [(Accuracy(n, rng.binomial(n, 0.99) / n), Accuracy(m, rng.binomial(m, 0.99) / m))
                 for n, m in ((20, 400), (1, 20), (1, 20))]
        result = _stratified_drop(spans, 0.01)
        failed += result is not None and result[1] < alpha
    assert failed / 4000 <= alpha, failed


def test_a_canary_whose_every_request_fails_is_failed_beside_a_thin_control() -> None:
    """At a step above 50 % (or on little traffic) the control has fewer than min_requests: the error test did not
    run, so a canary failing all of its 900 requests was "no data" and kept its share until the deadline. The mirror
    of a thin canary: tested against the thin control's (wide) upper bound, it fails."""
    for n in (1, 10, 40):
        got = check(ArmTraffic(900, 900, tuple(RNG.gamma(4.0, 5.0, 900))), ArmTraffic(n, 0, tuple(RNG.gamma(4.0, 5.0, n))),
                    GOOD, GOOD, POLICY)
        assert got.verdict == FAIL, (n, got.reasons)
        assert any(r.startswith(f"error rate 900/900 requests against the control's 0.00% of {n} requests (fewer than "
                                "the 50") for r in got.reasons), got.reasons
    # A canary no worse than what a thin control may have still waits for data, as does one with no control at all.
    for control in (ArmTraffic(40, 4, tuple(RNG.gamma(4.0, 5.0, 40))), ArmTraffic(0, 0, ())):
        got = check(ArmTraffic(900, 90, tuple(RNG.gamma(4.0, 5.0, 900))), control, GOOD, GOOD, POLICY)
        assert got.verdict == NO_DATA and any("too few requests" in r for r in got.reasons), got.reasons


def test_an_error_rate_like_a_thin_controls_rarely_fails() -> None:
    """Both arms at the same error rate, the control with 1 to 49 requests: false failures stay within error_alpha."""
    rng = np.random.default_rng(17)
    for rate in (0.01, 0.05, 0.2):
        failed = 0
        for i in range(2000):
            n = 1 + i % 49
            canary = ArmTraffic(950, int(rng.binomial(950, rate)), ())
            control = ArmTraffic(n, int(rng.binomial(n, rate)), ())
            failed += check(canary, control, GOOD, GOOD, POLICY).verdict == FAIL
        assert failed <= 2000 * POLICY.error_alpha, (rate, failed)
