"""The promotion gate: it compares the challenger with the champion (never with itself) on one holdout."""

from __future__ import annotations

import math

import pytest

from tenfold.config.settings import build_settings
from tenfold.registry.gate import (
    Decision,
    GateError,
    GatePolicy,
    HoldoutMismatch,
    HoldoutRef,
    Scored,
    SelfComparisonError,
    decide,
)

HOLDOUT = HoldoutRef(partitions=("2013-10", "2013-11"), digest="a" * 64)
OTHER_HOLDOUT = HoldoutRef(partitions=("2013-11", "2013-12"), digest="b" * 64)
POLICY = GatePolicy(margin=0.002, min_auc=0.55, beat_baselines=("rate",))
CHALLENGER_V = "c" * 20
CHAMPION_V = "d" * 20


def score(model: str, auc: float, log_loss: float = 0.45, brier: float = 0.15, holdout: HoldoutRef = HOLDOUT) -> Scored:
    return Scored(model=model, holdout=holdout, auc=auc, log_loss=log_loss, brier=brier, rows=1000)


def baselines(rate_auc: float = 0.62, hgb_auc: float = 0.68) -> dict[str, Scored]:
    return {"rate": score("baseline:rate", rate_auc, 0.5), "hgb": score("baseline:hgb", hgb_auc, 0.47)}


def test_first_model_passing_floors_becomes_champion() -> None:
    d = decide(score(CHALLENGER_V, 0.70), None, baselines(), POLICY)
    assert d.promote
    assert d.champion_version is None and d.challenger_version == CHALLENGER_V
    assert d.checks == {"finite": True, "min_auc": True, "beats_rate": True, "log_loss_vs_rate": True, "brier_vs_rate": True}


def test_first_model_below_the_rate_baseline_is_not_promoted() -> None:
    d = decide(score(CHALLENGER_V, 0.60), None, baselines(rate_auc=0.62), POLICY)
    assert not d.promote
    assert d.checks["beats_rate"] is False
    assert "REJECT" in d.summary


@pytest.mark.parametrize(
    ("champion_auc", "promote"),
    [(0.72, False), (0.699, False), (0.6981, False), (0.6979, True), (0.65, True)],
)
def test_challenger_must_beat_the_champion_by_the_margin(champion_auc: float, promote: bool) -> None:
    # The challenger is the same in every case: only the champion's score changes the outcome, which
    # is what proves the champion's own metrics are what the challenger is compared with.
    challenger = score(CHALLENGER_V, 0.700)
    d = decide(challenger, score(CHAMPION_V, champion_auc), baselines(), POLICY)
    assert d.promote is promote
    assert d.checks["beats_champion"] is promote
    assert d.champion_version == CHAMPION_V and d.challenger_version == CHALLENGER_V
    assert d.champion is not None and d.champion.auc == champion_auc


@pytest.mark.parametrize(("champion_auc", "promote"), [(0.699, True), (0.704, True), (0.7051, False)])
def test_a_negative_margin_is_non_inferiority(champion_auc: float, promote: bool) -> None:
    # With a canary after the gate: a challenger at most 0.005 AUC below the champion goes on to it.
    policy = GatePolicy(margin=-0.005, min_auc=0.55, beat_baselines=("rate",))
    d = decide(score(CHALLENGER_V, 0.700), score(CHAMPION_V, champion_auc), baselines(), policy)
    assert d.promote is promote and d.checks["beats_champion"] is promote
    with pytest.raises(ValueError, match="out of range"):
        GatePolicy(margin=-0.2)


@pytest.mark.parametrize(("champion_auc", "promote"), [(0.700, False), (0.6999, True)])
def test_a_margin_of_zero_asks_for_a_gain_and_says_so(champion_auc: float, promote: bool) -> None:
    """A tie at margin 0 was refused with the reason "gain +0.0000 ... >= margin +0.0000", which reads as met."""
    policy = GatePolicy(margin=0.0, min_auc=0.55, beat_baselines=("rate",))
    d = decide(score(CHALLENGER_V, 0.700), score(CHAMPION_V, champion_auc), baselines(), policy)
    assert d.promote is promote and d.checks["beats_champion"] is promote
    reason = next(r for r in d.reasons if r.startswith(("ok AUC gain", "FAIL AUC gain")))
    assert "> margin +0.0000" in reason and ">= margin" not in reason, reason


def test_the_margin_comes_from_settings() -> None:
    settings = build_settings("local")
    policy = GatePolicy.from_settings(settings, workload_baselines=("rate",))
    assert policy.margin == settings.training.promote_margin
    # Unset, the baselines to beat are the workload's own (the flights workload's "rate"; another's, its own): a
    # workload of its own needs no gate setting naming the flights baseline. () beats none.
    assert settings.training.gate_beat_baselines is None and policy.beat_baselines == ("rate",)
    assert GatePolicy.from_settings(settings, workload_baselines=("prior",)).beat_baselines == ("prior",)
    none = build_settings("local", {"TENFOLD_TRAINING__GATE_BEAT_BASELINES": "()"})
    assert GatePolicy.from_settings(none, workload_baselines=("rate",)).beat_baselines == ()
    wide = GatePolicy(margin=0.05, min_auc=0.55)
    assert not decide(score(CHALLENGER_V, 0.74), score(CHAMPION_V, 0.70), baselines(), wide).promote
    assert decide(score(CHALLENGER_V, 0.76), score(CHAMPION_V, 0.70), baselines(), wide).promote


@pytest.mark.parametrize(("auc", "failed"), [(0.5999, ("min_auc",)), (0.6000, ())])
def test_the_auc_floor_decides_on_its_own(auc: float, failed: tuple[str, ...]) -> None:
    """With no baseline to beat and no champion, only the floor stands between a challenger and promotion: in the
    other tests every challenger under the floor also loses to the rate baseline, which would hide a floor that is
    not the policy's."""
    policy = GatePolicy(margin=0.002, min_auc=0.6, beat_baselines=())
    d = decide(score(CHALLENGER_V, auc), None, {}, policy)
    assert d.failed == failed and d.promote is (not failed)
    assert list(d.checks) == ["finite", "min_auc"]
    if failed:
        assert d.summary.startswith(f"REJECT: challenger {CHALLENGER_V} vs champion (none); FAIL AUC 0.5999 >= floor "
                                    "0.6000;")


def test_the_auc_floor_comes_from_settings() -> None:
    settings = build_settings("local", {"TENFOLD_TRAINING__GATE_MIN_AUC": "0.61"})
    policy = GatePolicy.from_settings(settings, workload_baselines=())
    assert settings.training.gate_min_auc == 0.61 and policy.min_auc == 0.61
    # Above the class default (0.5) and the settings' (0.55): the override is what decides.
    d = decide(score(CHALLENGER_V, 0.60), None, {}, policy)
    assert d.failed == ("min_auc",) and not d.promote
    assert decide(score(CHALLENGER_V, 0.61), None, {}, policy).promote


def test_comparing_the_challenger_with_itself_is_refused() -> None:
    # The reference-pipeline bug: the caller hands the challenger's own score in as the champion's.
    challenger = score(CHALLENGER_V, 0.80)
    with pytest.raises(SelfComparisonError, match="same version"):
        decide(challenger, challenger, baselines(), POLICY)


def test_champion_scored_with_the_challengers_model_is_detected_even_with_zero_margin() -> None:
    # The same bug in disguise: the champion's version id is right, but its metrics are the
    # challenger's (the challenger model was evaluated twice). Bit-identical scores are flagged and
    # never promote, even when the policy would accept a tie.
    challenger = score(CHALLENGER_V, 0.80, 0.40, 0.12)
    fake_champion = Scored(model=CHAMPION_V, holdout=HOLDOUT, auc=challenger.auc, log_loss=challenger.log_loss, brier=challenger.brier)
    d = decide(challenger, fake_champion, baselines(), GatePolicy(margin=0.0, min_auc=0.55))
    assert not d.promote
    assert d.suspect_self_comparison
    assert d.checks["distinct_scores"] is False


def test_scores_from_another_holdout_are_refused() -> None:
    with pytest.raises(HoldoutMismatch, match="re-evaluate the champion"):
        decide(score(CHALLENGER_V, 0.8), score(CHAMPION_V, 0.7, holdout=OTHER_HOLDOUT), baselines(), POLICY)
    other = baselines()
    other["rate"] = score("baseline:rate", 0.6, holdout=OTHER_HOLDOUT)
    with pytest.raises(HoldoutMismatch, match="baseline rate"):
        decide(score(CHALLENGER_V, 0.8), None, other, POLICY)


def test_a_required_baseline_that_was_not_evaluated_is_an_error() -> None:
    with pytest.raises(GateError, match="rate"):
        decide(score(CHALLENGER_V, 0.8), None, {"hgb": baselines()["hgb"]}, POLICY)


def test_a_baseline_cannot_be_the_challenger() -> None:
    with pytest.raises(GateError, match="registered model version"):
        decide(score("baseline:hgb", 0.8), None, baselines(), POLICY)


def test_calibration_may_not_regress_much_against_the_champion() -> None:
    d = decide(score(CHALLENGER_V, 0.75, log_loss=0.60), score(CHAMPION_V, 0.70, log_loss=0.45), baselines(), POLICY)
    assert not d.promote
    assert d.checks["beats_champion"] and not d.checks["log_loss_vs_champion"]


def test_non_finite_metrics_never_promote() -> None:
    d = decide(score(CHALLENGER_V, 0.9, log_loss=math.nan), None, baselines(), POLICY)
    assert not d.promote and d.checks["finite"] is False


def test_absolute_log_loss_ceiling() -> None:
    policy = GatePolicy(margin=0.002, min_auc=0.55, max_log_loss=0.5)
    assert not decide(score(CHALLENGER_V, 0.9, log_loss=0.51), None, baselines(), policy).promote
    assert decide(score(CHALLENGER_V, 0.9, log_loss=0.49), None, baselines(), policy).promote


def test_decision_round_trips_with_both_version_ids() -> None:
    d = decide(score(CHALLENGER_V, 0.71), score(CHAMPION_V, 0.70), baselines(), POLICY)
    back = Decision.from_dict(d.to_dict())
    assert back == d
    assert d.to_dict()["challenger_version"] == CHALLENGER_V and d.to_dict()["champion_version"] == CHAMPION_V


def test_scored_of_reads_mappings_and_objects() -> None:
    class M:
        def __init__(self) -> None:
            self.auc, self.log_loss, self.brier, self.n = 0.7, 0.4, 0.1, 5

    assert Scored.of(CHALLENGER_V, HOLDOUT, M()).rows == 5
    s = Scored.of(CHALLENGER_V, HOLDOUT, {"auc": 0.7, "log_loss": 0.4, "brier": 0.1, "calibration": [1]})
    assert s.extra == {"calibration": [1]}
    with pytest.raises(GateError, match="auc"):
        Scored.of(CHALLENGER_V, HOLDOUT, {"log_loss": 0.4})


def test_an_overconfident_challenger_is_refused_on_log_loss_despite_a_higher_auc() -> None:
    # Issue 11's make-demo champion in numbers: it ranks better than the champion and the rate baseline,
    # but its probabilities are worse than the baseline's.
    challenger = score(CHALLENGER_V, 0.7560, log_loss=0.6474, brier=0.2000)
    champion = score(CHAMPION_V, 0.7000, log_loss=0.6400, brier=0.2050)
    rate = {"rate": score("baseline:rate", 0.5924, log_loss=0.6119, brier=0.2102)}
    d = decide(challenger, champion, rate, POLICY)
    assert not d.promote
    assert d.checks["beats_champion"] and d.checks["beats_rate"] and d.checks["brier_vs_rate"]
    assert d.failed == ("log_loss_vs_rate",)
    # The summary leads with the reason.
    assert d.summary.startswith(f"KEEP CHAMPION: challenger {CHALLENGER_V} vs champion {CHAMPION_V}; FAIL log loss 0.6474 "
                                "<= baseline rate 0.6119")


@pytest.mark.parametrize(
    ("log_loss", "brier", "failed"),
    [(0.50, 0.20, ()), (0.5001, 0.20, ("log_loss_vs_rate",)), (0.50, 0.2001, ("brier_vs_rate",)),
     (0.51, 0.21, ("log_loss_vs_rate", "brier_vs_rate"))],
)
def test_probabilities_no_worse_than_each_baseline(log_loss: float, brier: float, failed: tuple[str, ...]) -> None:
    rate = {"rate": score("baseline:rate", 0.60, log_loss=0.50, brier=0.20)}
    d = decide(score(CHALLENGER_V, 0.70, log_loss=log_loss, brier=brier), None, rate, POLICY)
    assert d.failed == failed and d.promote is (not failed)


def test_the_probability_margins_and_the_ece_ceiling_come_from_settings() -> None:
    base = build_settings("local")
    training = base.training.model_validate({**base.training.model_dump(), "gate_baseline_log_loss_margin": 0.02,
                                             "gate_baseline_brier_margin": 0.005, "gate_max_ece": 0.05})
    settings = base.model_copy(update={"training": training})
    policy = GatePolicy.from_settings(settings, workload_baselines=("rate",))
    assert (policy.baseline_log_loss_margin, policy.baseline_brier_margin, policy.max_ece) == (0.02, 0.005, 0.05)
    defaults = GatePolicy.from_settings(build_settings("local"), workload_baselines=("rate",))
    assert (defaults.baseline_log_loss_margin, defaults.baseline_brier_margin, defaults.max_ece) == (0.0, 0.0, None)
    rate = {"rate": score("baseline:rate", 0.60, log_loss=0.50, brier=0.20)}
    slightly_worse = Scored(model=CHALLENGER_V, holdout=HOLDOUT, auc=0.7, log_loss=0.515, brier=0.204, rows=1000,
                            extra={"ece": 0.04})
    assert decide(slightly_worse, None, rate, policy).promote
    assert not decide(slightly_worse, None, rate, defaults).promote
    badly_calibrated = Scored(model=CHALLENGER_V, holdout=HOLDOUT, auc=0.7, log_loss=0.50, brier=0.2, extra={"ece": 0.06})
    d = decide(badly_calibrated, None, rate, policy)
    assert d.failed == ("max_ece",) and "holdout ECE 0.0600 <= 0.0500" in d.summary
    no_ece = decide(score(CHALLENGER_V, 0.7, 0.5, 0.2), None, rate, policy)
    assert no_ece.failed == ("max_ece",)  # a ceiling that cannot be checked is not passed


def test_the_decision_records_the_calibration_and_reads_records_written_before_it() -> None:
    table = [{"lower": 0.0, "upper": 0.1, "count": 10, "mean_predicted": 0.05, "observed_rate": 0.1}]
    challenger = Scored.of(CHALLENGER_V, HOLDOUT, {
        "auc": 0.71, "log_loss": 0.44, "brier": 0.14, "ece": 0.012, "calibration": table,
        "uncalibrated": {"auc": 0.71, "log_loss": 0.47, "brier": 0.15, "ece": 0.081},
        "calibrator": {"method": "temperature", "description": "temperature T=1.300"},
    })
    d = decide(challenger, score(CHAMPION_V, 0.70), baselines(), POLICY)
    assert d.calibration == {"ece": 0.012, "ece_uncalibrated": 0.081, "log_loss_uncalibrated": 0.47,
                             "auc_uncalibrated": 0.71, "method": "temperature T=1.300", "table": table}
    assert "calibration (temperature T=1.300): holdout ECE 0.0120 (uncalibrated 0.0810)" in d.summary
    assert Decision.from_dict(d.to_dict()) == d
    old = d.to_dict()
    del old["calibration"]
    for key in ("baseline_log_loss_margin", "baseline_brier_margin", "max_ece"):
        del old["policy"][key]
    assert Decision.from_dict(old).calibration == {} and Decision.from_dict(old).policy.baseline_log_loss_margin == 0.0


def test_a_baseline_to_beat_that_no_run_evaluates_is_refused_before_training(tmp_path) -> None:
    """`TENFOLD_TRAINING__GATE_BEAT_BASELINES='["hgb_baseline"]'` (the evaluation report's key) failed only at the
    gate, after the whole training run, saying to "evaluate them in the same run": the fix is the setting."""
    from tenfold.pipelines import train_model
    from tenfold.pipelines.common import PipelineError

    settings = build_settings("local", {"TENFOLD_HOME": str(tmp_path),
                                        "TENFOLD_TRAINING__GATE_BEAT_BASELINES": '["hgb_baseline", "rate"]'})
    with pytest.raises(ValueError, match=r"GATE_BEAT_BASELINES .* names 'hgb_baseline', which no run evaluates: give "
                                         r"some of 'rate', 'hgb'"):
        GatePolicy.from_settings(settings, ("rate",), evaluated=("rate", "hgb"))
    with pytest.raises(PipelineError, match="names 'hgb_baseline', which no run evaluates"):
        train_model.plan(settings, "manual__1")  # before anything is read or trained
    fine = build_settings("local", {"TENFOLD_HOME": str(tmp_path), "TENFOLD_TRAINING__GATE_BEAT_BASELINES": '["hgb"]'})
    assert train_model.gate_policy(fine).beat_baselines == ("hgb",)
