"""Our metrics against scikit-learn's own implementations on known inputs."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.calibration import calibration_curve
from sklearn.metrics import brier_score_loss, roc_auc_score
from sklearn.metrics import log_loss as sk_log_loss

from tenfold.training.metrics import MetricsError, brier_score, calibration_table, log_loss, roc_auc, score


@pytest.fixture(params=[0, 1, 2])
def inputs(request: pytest.FixtureRequest) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(request.param)
    n = 2000
    p = rng.random(n)
    if request.param == 1:
        p = np.round(p, 1)  # many ties
    y = (rng.random(n) < p).astype(int)
    return y, p


def test_against_sklearn(inputs: tuple[np.ndarray, np.ndarray]) -> None:
    y, p = inputs
    assert roc_auc(y, p) == pytest.approx(roc_auc_score(y, p), abs=1e-12)
    assert log_loss(y, p) == pytest.approx(sk_log_loss(y, p), rel=1e-9)
    assert brier_score(y, p) == pytest.approx(brier_score_loss(y, p), abs=1e-12)
    prob_true, prob_pred = calibration_curve(y, p, n_bins=10, strategy="uniform")
    table = calibration_table(y, p, n_bins=10)
    np.testing.assert_allclose([b.observed_rate for b in table], prob_true, atol=1e-12)
    np.testing.assert_allclose([b.mean_predicted for b in table], prob_pred, atol=1e-12)
    assert sum(b.count for b in table) == y.size


def test_known_values() -> None:
    y = np.array([0, 0, 1, 1])
    p = np.array([0.1, 0.4, 0.35, 0.8])
    assert roc_auc(y, p) == pytest.approx(0.75)
    assert brier_score(y, p) == pytest.approx((0.01 + 0.16 + 0.4225 + 0.04) / 4)
    m = score("x", y, p)
    assert m.rows == 4 and m.positive_rate == 0.5 and m.auc == pytest.approx(0.75)
    # By hand, not from the functions under test (sklearn's agreement does not cover what score() puts where).
    # Log loss: -(ln 0.9 + ln 0.6 + ln 0.35 + ln 0.8) / 4.
    assert m.log_loss == pytest.approx(-(math.log(0.9) + math.log(0.6) + math.log(0.35) + math.log(0.8)) / 4, rel=1e-12)
    assert m.log_loss == pytest.approx(0.47228795380917615, rel=1e-12)
    assert m.brier == pytest.approx(0.158125, rel=1e-12)  # (0.01 + 0.16 + 0.4225 + 0.04) / 4
    # ECE, ten right-closed bins: 0.0-0.1 holds 0.1 (observed 0), 0.3-0.4 holds 0.35 and 0.4 (mean 0.375, observed
    # 0.5), 0.7-0.8 holds 0.8 (observed 1): (1 * 0.1 + 2 * 0.125 + 1 * 0.2) / 4 rows.
    assert [(b.lower, b.upper, b.count) for b in m.calibration] == [
        (0.0, pytest.approx(0.1), 1), (pytest.approx(0.3), pytest.approx(0.4), 2), (pytest.approx(0.7), pytest.approx(0.8), 1)]
    assert m.ece == pytest.approx((0.1 + 2 * 0.125 + 0.2) / 4, abs=1e-12)
    assert m.ece == pytest.approx(0.1375, abs=1e-12)


def test_ece_weights_each_bin_by_its_rows() -> None:
    """Bins of unequal counts: an unweighted mean of the bins' gaps (0.4722 here) or a sum not divided by the rows
    (2.1) reads as a different calibration; the ECE is the row-weighted mean gap."""
    y = np.array([0, 1, 0, 1, 1, 0])
    p = np.array([0.1, 0.2, 0.2, 0.6, 0.7, 0.9])
    m = score("x", y, p, n_bins=4)
    # Quarters: 0.0-0.25 holds 0.1, 0.2, 0.2 (mean 0.5/3, observed 1/3: gap 1/6), 0.25-0.5 is empty,
    # 0.5-0.75 holds 0.6, 0.7 (mean 0.65, observed 1: gap 0.35), 0.75-1.0 holds 0.9 (observed 0: gap 0.9).
    assert [(b.lower, b.upper, b.count) for b in m.calibration] == [(0.0, 0.25, 3), (0.5, 0.75, 2), (0.75, 1.0, 1)]
    assert m.ece == pytest.approx((3 * (1 / 6) + 2 * 0.35 + 1 * 0.9) / 6, abs=1e-12)
    assert m.ece == pytest.approx(0.35, abs=1e-12)


def test_bad_inputs_are_refused() -> None:
    with pytest.raises(MetricsError, match="both classes"):
        roc_auc(np.zeros(3), np.array([0.1, 0.2, 0.3]))
    with pytest.raises(MetricsError, match="probabilities"):
        log_loss(np.array([0, 1]), np.array([0.5, np.nan]))
    with pytest.raises(MetricsError, match="2 labels but 3"):
        brier_score(np.array([0, 1]), np.array([0.5, 0.5, 0.5]))


def test_a_refusal_names_what_could_not_be_scored_and_is_not_retried() -> None:
    """A one-class slice was reported as "the holdout has only one" class (calibration scores the validation slice,
    never the holdout), a NaN prediction named no model, and the evaluate task retried what fails the same way."""
    with pytest.raises(MetricsError) as caught:
        score("challenger v7", np.zeros(3), np.array([0.1, 0.2, 0.3]))
    assert str(caught.value) == ("challenger v7 cannot be scored: ROC AUC needs both classes in the labels, and all 3 "
                                 "rows scored are negative")
    assert "holdout" not in str(caught.value)
    with pytest.raises(MetricsError, match=r"^champion cannot be scored: .*probabilities"):
        score("champion", np.array([0, 1]), np.array([0.5, np.nan]))
    assert MetricsError.retryable is False
