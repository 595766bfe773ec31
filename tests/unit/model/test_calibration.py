"""The calibrators: fitted as scikit-learn fits them, stored in meta.json, applied inside predict_proba."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch

from tenfold.data.lake import Partition
from tenfold.model import Calibrator, ModelLoadError, Preprocessor, load_model, save_model
from tenfold.model import calibration as cal
from tenfold.training.metrics import roc_auc
from tenfold.workloads.flights import WORKLOAD
from tenfold.workloads.flights.contract import CONTRACT
from tenfold.workloads.flights.model import FlightDelayModel, ModelConfig
from tenfold.workloads.flights.synthetic import synthetic_features


def slice_of(n: int = 5000, temperature: float = 2.5, offset: float = 0.3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Logits of an overconfident model: the truth is sigmoid(z / temperature + offset)."""
    rng = np.random.default_rng(seed)
    z = rng.normal(-1.0, 2.0, n)
    y = (rng.random(n) < cal.sigmoid(z / temperature + offset)).astype(np.float64)
    return z, y


def test_temperature_fits_agree_with_scikit_learn() -> None:
    from sklearn.linear_model import LogisticRegression

    z, y = slice_of()
    t, b = cal.fit_temperature(z, y)
    sk = LogisticRegression(C=1e12, fit_intercept=False, tol=1e-10, max_iter=1000).fit(z[:, None], y)
    assert b == 0.0 and t == pytest.approx(1 / sk.coef_[0, 0], rel=1e-5)
    t, b = cal.fit_temperature(z, y, free_offset=True)
    sk = LogisticRegression(C=1e12, tol=1e-10, max_iter=1000).fit(z[:, None], y)
    assert t == pytest.approx(1 / sk.coef_[0, 0], rel=1e-5) and b == pytest.approx(sk.intercept_[0], abs=1e-5)
    assert t == pytest.approx(2.5, rel=0.1)  # it recovers how overconfident the scores were


def test_anchored_temperature_keeps_the_windows_level_and_the_ranking() -> None:
    z, y = slice_of()
    train_z, _ = slice_of(seed=1)
    fitted = cal.fit("anchored_temperature", z, y, train_logits=train_z, train_rate=0.37, report={"rows": z.size})
    assert fitted.temperature == pytest.approx(2.5, rel=0.1)
    assert fitted.apply(train_z).mean() == pytest.approx(0.37, abs=1e-9)
    assert fitted.report["anchor_rate"] == 0.37 and fitted.report["slice_offset"] == pytest.approx(0.3, abs=0.1)
    assert fitted.preserves_ranking and roc_auc(y, fitted.apply(z)) == roc_auc(y, cal.sigmoid(z))
    with pytest.raises(cal.CalibrationError, match="training rows' logits"):
        cal.fit("anchored_temperature", z, y)


def test_isotonic_steps_are_the_pool_adjacent_violators_solution() -> None:
    from sklearn.isotonic import IsotonicRegression

    z, y = slice_of(n=3000)
    fitted = cal.fit("isotonic", z, y)
    knots, values = np.asarray(fitted.knots), np.asarray(fitted.values)
    assert (np.diff(knots) > 0).all() and (np.diff(values) >= 0).all()
    assert values.min() >= cal.ISOTONIC_EPS and values.max() <= 1 - cal.ISOTONIC_EPS  # never 0 or 1
    # Each step's value is scikit-learn's isotonic fit inside that step (clipped off 0 and 1).
    expected = np.clip(IsotonicRegression().fit(z, y).predict(knots), cal.ISOTONIC_EPS, 1 - cal.ISOTONIC_EPS)
    np.testing.assert_allclose(values, expected, atol=1e-12)
    assert not fitted.preserves_ranking


def test_a_calibrator_round_trips_and_garbage_is_refused() -> None:
    for c in (Calibrator(), Calibrator("temperature", temperature=1.7, report={"rows": 3}),
              Calibrator("anchored_temperature", temperature=0.8, offset=-0.2),
              Calibrator("isotonic", knots=(-1.0, 0.0, 2.0), values=(0.1, 0.2, 0.9))):
        back = Calibrator.from_dict(json.loads(json.dumps(c.to_dict())))
        assert back == c
        np.testing.assert_array_equal(back.apply(np.array([-3.0, 0.5, 4.0])), c.apply(np.array([-3.0, 0.5, 4.0])))
    with pytest.raises(cal.CalibrationError, match="unknown calibration method 'platt'"):
        Calibrator.from_dict({"method": "platt"})
    with pytest.raises(cal.CalibrationError, match="temperature must be finite and > 0"):
        Calibrator("temperature", temperature=0.0)
    with pytest.raises(cal.CalibrationError, match="non-decreasing"):
        Calibrator("isotonic", knots=(0.0, 1.0), values=(0.5, 0.4))
    with pytest.raises(cal.CalibrationError, match="one class only"):
        cal.fit("temperature", np.array([0.1, 0.2]), np.array([1.0, 1.0]))


@pytest.mark.parametrize("method", ["temperature", "anchored_temperature", "isotonic"])
@pytest.mark.parametrize("score", [-3.0, 3.0])
def test_constant_scores_are_refused_as_uninformative(method: str, score: float) -> None:
    """A model that scores every row of the slice alike has no sharpness to measure: -3 fitted a temperature of
    5.873, and +3 was refused as "anti-informative (slope -0.255)". Training leaves such a model uncalibrated, with
    this reason in its report."""
    from tenfold.training.calibration import calibrate

    z, y = np.full(8, score), np.array([0, 1, 0, 0, 1, 0, 0, 0], dtype=np.float64)
    with pytest.raises(cal.CalibrationError, match="scores are constant on the calibration slice"):
        cal.fit(method, z, y, train_logits=z, train_rate=0.25)
    kept = calibrate(method, z, y, train_logits=z, train_labels=y)
    assert kept.is_identity and "constant" in kept.report["skipped"]


def test_an_anchor_far_outside_fifty_is_found() -> None:
    """A sharp temperature puts z / T far from 0: logits -1 + 0.01 s fitted T=0.01, so z / T is near -100 and the
    offset that keeps the window's rate near +99. The search stopped at +50: every probability near 3e-22 against a
    rate of 0.25, a log loss of 9.1 after calibration, and no warning."""
    from tenfold.training.calibration import calibrate

    rng = np.random.default_rng(0)
    s = rng.normal(size=20_000)
    y = (rng.random(s.size) < cal.sigmoid(-1.3 + s)).astype(np.float64)
    z = -1 + 0.01 * s
    kept = calibrate("anchored_temperature", z, y, train_logits=z, train_labels=y)
    assert kept.method == "anchored_temperature" and kept.temperature == pytest.approx(0.01, rel=0.1)
    assert kept.offset > 50 and kept.apply(z).mean() == pytest.approx(y.mean(), abs=1e-9)
    assert kept.report["after"]["log_loss"] < kept.report["before"]["log_loss"]
    # An offset that no float can give (z / T of 0 and 1e19, whose sum with c moves in steps of 2048) is refused.
    with pytest.raises(cal.CalibrationError, match=r"no offset brings .* rate 0\.3 .*nearest gives 0\.25"):
        cal.anchor_offset(np.array([0.0, 1.0]), 1e-19, 0.3)


@pytest.mark.parametrize("method", ["temperature", "anchored_temperature", "isotonic"])
def test_nearly_constant_scores_are_refused_as_constant(method: str) -> None:
    """56 distinct logits within 1e-6 of -1 passed the exact min == max check: the anchored temperature fitted
    T=1e-8 or so and made every probability exactly 0.0."""
    from tenfold.training.calibration import calibrate

    rng = np.random.default_rng(0)
    z = -1 + 1e-8 * rng.integers(0, 56, 20_000)
    y = (rng.random(z.size) < 0.25).astype(np.float64)
    assert np.unique(z).size == 56
    with pytest.raises(cal.CalibrationError, match=r"scores are constant on the calibration slice \(every logit -1 "
                                                   r"give or take 5e-07\)"):
        cal.fit(method, z, y, train_logits=z, train_rate=0.25)
    kept = calibrate(method, z, y, train_logits=z, train_labels=y)
    assert kept.is_identity and "constant" in kept.report["skipped"]
    assert (kept.apply(z) > 0.26).all() and (kept.apply(z) < 0.27).all()  # sigmoid(-1), never 0.0


@pytest.mark.parametrize("method", ["temperature", "anchored_temperature"])
def test_a_slice_its_scores_separate_is_refused_not_fitted_to_0_and_1(method: str) -> None:
    """Scores that separate the slice's classes have no best temperature: the fit runs towards 0 and stopped at
    T=0.022 on ten rows, a probability of exactly 1.0 and another of 4e-51."""
    from tenfold.training.calibration import calibrate

    z = np.sort(np.random.default_rng(1).normal(0, 2, 10))
    y = (z > 0).astype(np.float64)
    assert 0 < y.sum() < y.size
    with pytest.raises(cal.CalibrationError, match="the model's scores separate the calibration slice's classes"):
        cal.fit(method, z, y, train_logits=z, train_rate=float(y.mean()))
    kept = calibrate(method, z, y, train_logits=z, train_labels=y)
    assert kept.is_identity and "separate" in kept.report["skipped"]
    p = kept.apply(z)
    assert ((p > 0) & (p < 1)).all()


def test_isotonic_refuses_scores_that_rank_the_slice_backwards() -> None:
    """The temperature methods refused them ("slope ..."); isotonic pooled them into one step: every prediction
    the slice's rate, an AUC of 0.5, and no warning."""
    from tenfold.training.calibration import calibrate

    rng = np.random.default_rng(3)
    z = rng.normal(-1.0, 2.0, 5000)
    y = (rng.random(z.size) < cal.sigmoid(-z / 2.5)).astype(np.float64)
    auc = roc_auc(y, cal.sigmoid(z))
    assert auc < 0.5
    with pytest.raises(cal.CalibrationError, match=rf"anti-informative \(AUC {auc:.3g}\): isotonic calibration would "
                                                   "give every row the same probability"):
        cal.fit("isotonic", z, y)
    kept = calibrate("isotonic", z, y, train_logits=z, train_labels=y)
    assert kept.is_identity and "anti-informative" in kept.report["skipped"]
    # Ties count half, as roc_auc counts them: scores rounded to a few values are refused with the same AUC.
    tied = np.round(z)
    with pytest.raises(cal.CalibrationError, match=rf"\(AUC {roc_auc(y, cal.sigmoid(tied)):.3g}\)"):
        cal.fit("isotonic", tied, y)


@pytest.fixture(scope="module")
def table() -> pa.Table:
    return synthetic_features(Partition(2013, 1), 300, seed=2)


def _saved(directory: Path, table: pa.Table, calibration: Calibrator | None) -> FlightDelayModel:
    pre = Preprocessor.fit(table, CONTRACT)
    config = ModelConfig(embedding_dim=4, hidden=(8,))
    torch.manual_seed(0)
    model = FlightDelayModel(config, list(pre.vocab_sizes.values()), pre.num_inputs)
    save_model(directory, model, config, pre, workload=WORKLOAD.name, calibration=calibration)
    return model


def test_predict_proba_applies_the_stored_calibration(tmp_path: Path, table: pa.Table) -> None:
    calibrator = Calibrator("temperature", temperature=2.0, report={"rows": 10})
    _saved(tmp_path, table, calibrator)
    loaded = load_model(tmp_path)
    assert loaded.calibrator == calibrator
    logits = loaded.predict_logits(table)
    np.testing.assert_allclose(loaded.predict_proba(table), cal.sigmoid(logits / 2.0), rtol=0, atol=1e-15)
    np.testing.assert_allclose(loaded.predict_proba(table, calibrated=False), cal.sigmoid(logits), atol=1e-7)
    assert json.loads((tmp_path / "meta.json").read_text())["calibration"]["temperature"] == 2.0


def test_a_folder_saved_before_calibration_existed_loads_uncalibrated(tmp_path: Path, table: pa.Table) -> None:
    model = _saved(tmp_path, table, None)
    meta = json.loads((tmp_path / "meta.json").read_text())
    assert "calibration" not in meta  # exactly the meta.json of a folder saved before calibration existed
    loaded = load_model(tmp_path)
    assert loaded.calibrator.is_identity
    cat, num = loaded.preprocessor.transform(table)
    expected = model.predict_proba(torch.from_numpy(cat), torch.from_numpy(num)).double().numpy()
    np.testing.assert_array_equal(loaded.predict_proba(table), expected)


def test_a_garbled_calibration_entry_is_refused_on_load(tmp_path: Path, table: pa.Table) -> None:
    _saved(tmp_path, table, Calibrator("temperature", temperature=2.0))
    meta = json.loads((tmp_path / "meta.json").read_text())
    meta["calibration"]["temperature"] = -1
    (tmp_path / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(ModelLoadError, match=r"meta\.json: its calibration entry is unusable.*temperature"):
        load_model(tmp_path)


def test_settings_offer_exactly_these_methods() -> None:
    from typing import get_args

    from tenfold.config.settings import TrainingSettings

    assert get_args(TrainingSettings.model_fields["calibration"].annotation) == cal.METHODS


@pytest.mark.parametrize("method", ["temperature", "anchored_temperature"])
def test_one_confidently_right_row_does_not_cost_a_sound_slice_its_calibration(method: str) -> None:
    """A probability that rounds to exactly 1.0 in float64 (any row past a logit of ~37) is not separation: refusing
    it shipped the model uncalibrated, and as sure of that row. 5,000 mixed rows and one at logit 40 still fit."""
    rng = np.random.default_rng(3)
    z = rng.normal(-1.0, 1.0, 5000)
    y = (rng.random(5000) < 1 / (1 + np.exp(-z))).astype(np.float64)
    z, y = np.append(z, 40.0), np.append(y, 1.0)
    fitted = cal.fit(method, z, y, train_logits=z, train_rate=float(y.mean()))
    assert fitted.method == method and 0.8 < fitted.temperature < 1.25, fitted.temperature
