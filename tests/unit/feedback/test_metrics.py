"""Online metrics: the arithmetic against values worked out by hand, and against scikit-learn."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tenfold.feedback.metrics import binary_metrics


def test_a_small_example_worked_by_hand():
    # p = .9 .6 .3 .2 for outcomes 1 0 1 0: predictions at 0.5 are 1 1 0 0, so two of four are right;
    # squared errors .01 .36 .49 .04; of the four positive/negative pairs, (.9,.6) (.9,.2) (.3,.2) rank right.
    m = binary_metrics(np.array([1, 0, 1, 0]), np.array([0.9, 0.6, 0.3, 0.2]))
    assert (m.count, m.positives) == (4, 2)
    assert m.accuracy == 0.5
    assert m.brier == pytest.approx(0.9 / 4)
    assert m.log_loss == pytest.approx(-(math.log(0.9) + math.log(0.4) + math.log(0.3) + math.log(0.8)) / 4)
    assert m.auc == pytest.approx(3 / 4)


def test_ties_count_half_and_one_class_has_no_auc():
    assert binary_metrics(np.array([1, 0]), np.array([0.5, 0.5])).auc == 0.5
    one_class = binary_metrics(np.array([1, 1, 1]), np.array([0.2, 0.7, 0.9]))
    assert one_class.auc is None and one_class.accuracy == pytest.approx(2 / 3)
    empty = binary_metrics(np.array([]), np.array([]))
    assert empty.count == 0 and empty.accuracy is None and empty.auc is None


def test_extreme_probabilities_give_a_finite_log_loss():
    m = binary_metrics(np.array([1, 0]), np.array([0.0, 1.0]))
    assert math.isfinite(m.log_loss) and m.log_loss == pytest.approx(-math.log(1e-15), rel=1e-3)


def test_agrees_with_scikit_learn_on_random_data():
    from sklearn import metrics as sk

    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 500)
    p = np.clip(np.round(rng.random(500), 2), 0.01, 0.99)  # rounding makes ties, which the ranks must average
    m = binary_metrics(y, p)
    assert m.auc == pytest.approx(sk.roc_auc_score(y, p))
    assert m.log_loss == pytest.approx(sk.log_loss(y, p))
    assert m.brier == pytest.approx(sk.brier_score_loss(y, p))
    assert m.accuracy == pytest.approx(sk.accuracy_score(y, p >= 0.5))
