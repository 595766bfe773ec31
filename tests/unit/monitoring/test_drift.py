"""The drift measures (PSI, KS, chi-square), the reference profile, the policy and the report, in memory.

Synthetic flights months (tenfold.workloads.flights.synthetic) are the reference and the current data; a
feature is shifted by several standard deviations to inject drift.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from tenfold.config import Settings
from tenfold.config.settings import DriftSettings
from tenfold.data.partition import Partition
from tenfold.monitoring.drift import (
    DriftError,
    DriftPolicy,
    DriftReport,
    FeatureDrift,
    chi2_test,
    ks_test,
    measure,
    measure_categorical,
    measure_numeric,
    psi,
    read_report,
    reported_months,
    write_report,
)
from tenfold.monitoring.profile import (
    PREDICTION,
    REFERENCE_PROFILE_FILE,
    CategoricalProfile,
    NumericProfile,
    ProfileError,
    ReferenceProfile,
    build_profile,
    categorical_profile,
    numeric_profile,
)
from tenfold.workloads import FeatureContract, WorkloadError, get_workload

CONTRACT = get_workload("flights").contract


def months(*labels: str, rows: int = 4000) -> pa.Table:
    from tenfold.workloads.flights.synthetic import synthetic_features

    return pa.concat_tables([synthetic_features(Partition.parse(m), rows, seed=5) for m in labels])


def shifted(table: pa.Table, column: str, sds: float) -> pa.Table:
    values = table[column].to_numpy(zero_copy_only=False)
    moved = values + sds * float(np.nanstd(values))
    return table.set_column(table.schema.get_field_index(column), table.schema.field(column), pa.array(moved, pa.float64()))


@pytest.fixture(scope="module")
def profile() -> ReferenceProfile:
    data = months("2013-01", "2013-02")
    return build_profile(data, categorical=CONTRACT.categorical_columns, numeric=CONTRACT.numeric_columns,
                         months=["2013-01", "2013-02"], predictions=np.linspace(0, 1, data.num_rows) ** 2)


def run(profile: ReferenceProfile, table: pa.Table, policy: DriftPolicy | None = None,
        predictions: np.ndarray | None = None) -> DriftReport:
    return measure(profile, table, month="2013-03", version="v1", policy=policy or DriftPolicy.of(DriftSettings(), CONTRACT),
                   categorical=CONTRACT.categorical_columns, numeric=CONTRACT.numeric_columns, predictions=predictions)


# --- the measures ---------------------------------------------------------------------------------------


def test_psi_is_zero_for_the_same_distribution_and_the_textbook_value_otherwise() -> None:
    assert psi([10, 20, 30], [1, 2, 3]) == pytest.approx(0.0)
    # (0.9 - 0.5) ln(0.9/0.5) + (0.1 - 0.5) ln(0.1/0.5)
    assert psi([50, 50], [90, 10]) == pytest.approx(0.4 * math.log(1.8) + 0.4 * math.log(5))
    # An empty bin on one side is floored (1e-4), not infinite.
    assert math.isfinite(psi([50, 50], [100, 0])) and psi([50, 50], [100, 0]) > 3


def test_psi_refuses_mismatched_or_empty_bins() -> None:
    with pytest.raises(DriftError, match="3 reference bins but 2"):
        psi([1, 2, 3], [1, 2])
    with pytest.raises(DriftError, match="no rows"):
        psi([0, 0], [1, 1])


def test_ks_and_chi2_accept_the_same_distribution_and_reject_a_shift() -> None:
    rng = np.random.default_rng(0)
    ref = rng.normal(0, 1, 1000)
    same_stat, same_p = ks_test(ref, rng.normal(0, 1, 5000))
    moved_stat, moved_p = ks_test(ref, rng.normal(1, 1, 5000))
    assert same_p > 0.01 and moved_p < 1e-10 and moved_stat > same_stat
    stat, p = chi2_test({"a": 500, "b": 500}, {"a": 250, "b": 250})
    assert stat == pytest.approx(0.0) and p == pytest.approx(1.0)
    _, p = chi2_test({"a": 500, "b": 500}, {"a": 400, "b": 100, "c": 50})
    assert p < 1e-10


# --- the profile ----------------------------------------------------------------------------------------


def test_numeric_profile_has_decile_bins_nulls_and_a_sample() -> None:
    p = numeric_profile(pa.array([float(i) for i in range(1000)] + [None] * 7), bins=4, sample_rows=50)
    # The first bin holds values below the reference's minimum (``low``): none in the reference itself.
    assert p.edges == (249.0, 499.0, 749.0) and p.low == 0.0 and p.counts == (0, 250, 250, 250, 250)
    assert p.nulls == 7 and p.rows == 1007
    assert len(numeric_profile(np.arange(1000.0), bins=10).edges) == 9
    assert len(p.sample) == 50 and set(p.sample) <= {float(i) for i in range(1000)}
    discrete = numeric_profile(np.array([50.0] * 30 + [140.0] * 40 + [180.0] * 30), bins=10)
    # Ties merge bins into one per observed value; the last (empty) bin holds values above the reference's max.
    assert discrete.edges == (50.0, 140.0, 180.0) and discrete.low == 50.0 and discrete.counts == (0, 30, 40, 30, 0)


@pytest.mark.parametrize(("reference", "current"), [
    (np.full(2000, 5.0), np.full(2000, 4.0)),  # a feature constant in training moves down
    # most rows at the minimum (e.g. zero delay): those move below everything seen in training
    (np.concatenate([np.zeros(1200), np.linspace(1, 100, 800)]), np.concatenate([np.full(1200, -30.0), np.linspace(1, 100, 800)])),
])
def test_values_moving_below_the_reference_minimum_are_drift(reference: np.ndarray, current: np.ndarray) -> None:
    policy = DriftPolicy.of(DriftSettings(), CONTRACT)
    ref = numeric_profile(reference)
    moved = measure_numeric("x", ref, pa.array(current), policy)
    assert moved.level == "drift" and moved.psi >= policy.psi_drift and moved.bins[0].startswith("< ")
    assert moved.current[0] == pytest.approx(0.6 if reference[0] == 0 else 1.0) and moved.reference[0] == 0.0
    assert measure_numeric("x", ref, pa.array(reference), policy).psi == 0.0  # the same values: no drift


@pytest.mark.parametrize(("reference", "current"), [
    # a flag that is 1 on 95 % of the training rows, on half of this month's
    (np.concatenate([np.zeros(500), np.ones(9500)]), np.concatenate([np.zeros(2500), np.ones(2500)])),
    # a rating that is 5 on 92 % of the training rows, spread over 1..5 this month
    (np.concatenate([np.repeat([1.0, 2.0, 3.0, 4.0], 200), np.full(9200, 5.0)]), np.repeat([1.0, 2.0, 3.0, 4.0, 5.0], 1000)),
])
def test_a_shift_away_from_a_maximum_that_held_most_rows_is_drift(reference: np.ndarray, current: np.ndarray) -> None:
    """A tenth of the rows or more at the maximum made the top cut the maximum itself: the rows from the last lower cut
    up to it shared one bin, and any change of mix inside it had a PSI of 0, never drift (the minimum had its own bin;
    the maximum had none)."""
    policy = DriftPolicy.of(DriftSettings(), CONTRACT)
    ref = numeric_profile(reference)
    assert ref.edges[-1] == reference.max() and ref.edges[-2] == reference[reference < reference.max()].max()
    moved = measure_numeric("x", ref, pa.array(current), policy)
    assert moved.level == "drift" and moved.psi >= policy.psi_drift
    assert measure_numeric("x", ref, pa.array(reference), policy).psi == 0.0  # the same values: no drift


def test_a_profile_of_format_1_still_reads_and_bins_without_the_low_bin() -> None:
    body = numeric_profile(np.arange(100.0), bins=4).to_dict()
    del body["low"]
    body["counts"] = body["counts"][1:]
    old = NumericProfile.from_dict(body, profile_format=1)
    assert old.low is None and old.bin_counts(np.array([-5.0, 10.0, 99.0])).tolist() == [2, 0, 0, 1]


def _atoms(shares: list[int], rows: int) -> np.ndarray:
    """0.1, 1/3, 2/3 and 0.9 in ``shares`` (percent) of ``rows`` rows: 1/3 and 2/3 are not 9-digit numbers."""
    return np.repeat([0.1, 1 / 3, 2 / 3, 0.9], [rows * s // 100 for s in shares])


def _capped(rows: int, seed: int, cap_to: float = 0.95) -> np.ndarray:
    """A float32 reading capped at 0.95 on 40 % of the rows (as read into float64: 0.949999988079071), the rest
    uniform below it; ``cap_to`` puts the capped rows at another value (the cap lifted)."""
    values = np.random.default_rng(seed).uniform(0.0, 0.95, rows).astype(np.float32)
    values[: rows * 2 // 5] = np.float32(cap_to)
    return values.astype(np.float64)


@pytest.mark.parametrize(("reference", "unchanged", "moved", "ends"), [
    # 1/3 and 2/3 each in 40 % of the rows; the month moves 35 % of all rows from 1/3 to 2/3
    (_atoms([10, 40, 40, 10], 10_000), _atoms([10, 40, 40, 10], 27_000), _atoms([10, 5, 75, 10], 27_000),
     (0, 4000, 1000)),  # below 0.1, (1/3, 2/3], above 2/3: the 0.9s
    # a float32 reading capped at 0.95 on 40 % of the rows; the month's cap lifted to 3.0
    (_capped(10_000, 0), _capped(10_000, 1), _capped(10_000, 1, cap_to=3.0),
     (0, 4000, 0)),  # below the minimum, the maximum's own bin, above the maximum
], ids=["one-third-two-thirds", "float32-cap"])
def test_values_9_digits_cannot_hold_are_binned_as_the_profile_stores_its_edges(
        reference: np.ndarray, unchanged: np.ndarray, moved: np.ndarray, ends: tuple[int, int, int]) -> None:
    """The edges and ``low`` are stored rounded to 9 digits, and the values were binned raw: the raw 1/3 sat above its
    own stored edge 0.333333333, so every 1/3 and 2/3 shared one bin and moving rows between them read as a PSI of 0;
    the raw float32 maximum sat above its own stored edge, filling the bin kept empty for values above the maximum,
    so lifting the cap (those rows moving there) read as a PSI of 0.009, ok, with a KS p of 1e-95."""
    policy = DriftPolicy.of(DriftSettings(), CONTRACT)
    ref = numeric_profile(reference)
    # the bin below the minimum is empty, and so is the one above the maximum where the maximum has a bin of its own
    assert (ref.counts[0], *ref.counts[-2:]) == ends
    assert max(ref.counts) == 4000, "no two distinct values share a bin"
    drifted = measure_numeric("x", ref, pa.array(moved), policy)
    assert drifted.level == "drift" and drifted.psi >= policy.psi_drift, (drifted.psi, drifted.p_value)
    same = measure_numeric("x", ref, pa.array(unchanged), policy)
    assert same.level == "ok" and same.psi < policy.psi_report, (same.psi, same.p_value)
    # and through the saved JSON: a profile read back bins as it was built
    back = ReferenceProfile.from_dict(json.loads(build_profile(
        pa.table({"x": reference}), categorical=[], numeric=["x"], months=["2013-01"]).to_json())).features["x"]
    assert isinstance(back, NumericProfile) and back.counts == ref.counts
    assert measure_numeric("x", back, pa.array(moved), policy).level == "drift"


@pytest.mark.parametrize("old_format", [1, 2])
def test_a_profile_of_an_older_format_still_bins_raw_values_as_its_counts_were_made(old_format: int) -> None:
    """Profiles before format 3 counted the training window's raw values: rounding the month's values against them
    would move rows the stored counts hold in one bin into another, false drift on every stored model."""
    reference = _atoms([10, 40, 40, 10], 10_000)
    built = build_profile(pa.table({"x": reference}), categorical=[], numeric=["x"], months=["2013-01"])
    body = json.loads(built.to_json())
    assert body["features"]["x"]["edges"] == [0.1, 0.333333333, 0.666666667]
    body["format"] = old_format
    # the counts the old code stored: below 0.1, [0.1, 0.1], (0.1, 1/3], (1/3, 2/3], above: every raw 1/3 and 2/3
    # sat above its own stored edge, in one bin
    body["features"]["x"]["counts"] = [0, 1000, 0, 8000, 1000]
    if old_format == 1:  # no bin below the minimum
        del body["features"]["x"]["low"]
        body["features"]["x"]["counts"] = [1000, 0, 8000, 1000]
    old = ReferenceProfile.from_dict(body).features["x"]
    assert isinstance(old, NumericProfile) and not old.binned_as_stored
    assert old.bin_counts(reference).tolist() == list(old.counts)
    policy = DriftPolicy.of(DriftSettings(), CONTRACT)
    same = measure_numeric("x", old, pa.array(_atoms([10, 40, 40, 10], 27_000)), policy)
    assert same.level == "ok" and same.psi == 0.0, (same.psi, same.p_value)
    assert ReferenceProfile.from_dict(json.loads(built.to_json())).features["x"].counts == built.features["x"].counts


def test_categorical_profile_counts_categories_as_text() -> None:
    p = categorical_profile(pa.array([1, 2, 2, None, 3, 3, 3], pa.int32()))
    assert dict(p.counts) == {"1": 1, "2": 2, "3": 3} and p.nulls == 1


def test_the_profile_is_deterministic_and_round_trips(profile: ReferenceProfile) -> None:
    again = build_profile(months("2013-01", "2013-02"), categorical=CONTRACT.categorical_columns,
                          numeric=CONTRACT.numeric_columns, months=["2013-01", "2013-02"],
                          predictions=np.linspace(0, 1, 8000) ** 2)
    assert again.to_json() == profile.to_json(), "a retried register must write the same bytes (same version)"
    assert ReferenceProfile.from_dict(json.loads(profile.to_json())).to_json() == profile.to_json()
    assert set(profile.features) == set(CONTRACT.feature_columns) and profile.prediction is not None


def test_a_model_folder_without_a_profile_loads_none(tmp_path) -> None:
    assert ReferenceProfile.load(tmp_path) is None


@pytest.mark.parametrize("garbage", [b"\xff\xfe\x00", b"{\"rows\": "])
def test_a_profile_that_is_not_json_is_refused_naming_the_file(tmp_path, garbage: bytes) -> None:
    """Bytes that are not UTF-8 made json.loads raise UnicodeDecodeError, which load() let out as a raw traceback."""
    (tmp_path / REFERENCE_PROFILE_FILE).write_bytes(garbage)
    with pytest.raises(ProfileError, match=f"{REFERENCE_PROFILE_FILE} is not valid JSON .*the model folder is corrupt"):
        ReferenceProfile.load(tmp_path)


# --- measure and the policy -----------------------------------------------------------------------------


def test_an_undrifted_month_does_not_retrain(profile: ReferenceProfile) -> None:
    report = run(profile, months("2013-03"))
    assert report.decision == "ok" and report.triggered == []
    distance = next(f for f in report.features if f.name == "distance")
    assert distance.level == "ok" and distance.psi < 0.1 and distance.triggers


def test_a_shifted_triggering_feature_retrains(profile: ReferenceProfile) -> None:
    report = run(profile, shifted(months("2013-03"), "distance", 5.0))
    assert report.decision == "retrain" and report.triggered == ["distance"]
    assert report.summary["max_psi"] >= 0.25 and "distance" in report.summary["drifted"] and report.retrain
    assert report.score == max(f.psi for f in report.features if f.triggers) == next(
        f.psi for f in report.features if f.name == "distance")
    distance = next(f for f in report.features if f.name == "distance")
    assert distance.test == "ks" and distance.p_value < 0.01 and distance.mean_current > distance.mean_reference


def test_a_shifted_report_only_feature_reports_but_does_not_retrain(profile: ReferenceProfile) -> None:
    assert "temp" in CONTRACT.drift_report_only
    report = run(profile, shifted(months("2013-03"), "temp", 5.0))
    assert report.decision == "report" and report.triggered == []
    assert [f.name for f in report.drifted] == ["temp"] and report.summary["max_psi"] < 0.25


def test_settings_override_the_workloads_policy(profile: ReferenceProfile) -> None:
    policy = DriftPolicy.of(DriftSettings(trigger=("temp",)), CONTRACT)
    assert run(profile, shifted(months("2013-03"), "temp", 5.0), policy).triggered == ["temp"]
    policy = DriftPolicy.of(DriftSettings(report_only=("distance",)), CONTRACT)
    assert run(profile, shifted(months("2013-03"), "distance", 5.0), policy).decision == "report"
    with pytest.raises(DriftError, match=r"monitoring.drift.trigger names \['tempo'\]"):
        DriftPolicy.of(DriftSettings(trigger=("tempo",)), CONTRACT)


def test_a_shifted_category_mix_is_caught_by_chi_square(profile: ReferenceProfile) -> None:
    table = months("2013-03")
    carriers = ["AA"] * (table.num_rows // 2) + table["carrier"].to_pylist()[table.num_rows // 2:]
    table = table.set_column(table.schema.get_field_index("carrier"), table.schema.field("carrier"), pa.array(carriers))
    report = run(profile, table)
    carrier = next(f for f in report.features if f.name == "carrier")
    assert carrier.test == "chi2" and carrier.level == "drift" and report.triggered == ["carrier"]


def test_predictions_are_measured_and_report_only_by_default(profile: ReferenceProfile) -> None:
    report = run(profile, months("2013-03"), predictions=np.full(4000, 0.99))
    prediction = next(f for f in report.features if f.name == PREDICTION)
    assert prediction.level == "drift" and not prediction.triggers and report.decision == "report"
    policy = DriftPolicy.of(DriftSettings(predictions_trigger=True), CONTRACT)
    assert run(profile, months("2013-03"), policy, predictions=np.full(4000, 0.99)).triggered == [PREDICTION]


def test_a_small_partition_or_a_psi_without_significance_never_fires(profile: ReferenceProfile) -> None:
    small = shifted(months("2013-03", rows=100), "distance", 5.0)
    assert run(profile, small).decision == "too_small"
    # PSI over the threshold but a test that does not reject (p >= alpha): reported, not drifted.
    assert DriftPolicy().level(0.5, 0.2) == "report" and DriftPolicy().level(0.5, 0.001) == "drift"


def test_chi_square_holds_its_level_on_a_small_month_of_many_sparse_categories() -> None:
    """A destination-like feature (105 Zipf categories): a month drawn from the reference itself. Unpooled, the
    chi-square approximation rejected 2.8% of 200-row months at alpha 0.01 (and PSI always exceeds 0.25 that
    small), so the test alone stood between noise and a retrain; pooled, it holds its level and gains power."""
    rng = np.random.default_rng(7)
    p = 1 / np.arange(1, 106) ** 1.1
    p /= p.sum()
    reference = {str(i): int(c) for i, c in enumerate(np.bincount(rng.choice(105, 300_000, p=p), minlength=105))}

    def rejections(probabilities: np.ndarray, rows: int, trials: int) -> float:
        hits = 0
        for _ in range(trials):
            current = np.bincount(rng.choice(105, rows, p=probabilities), minlength=105)
            hits += chi2_test(reference, {str(i): int(c) for i, c in enumerate(current) if c})[1] < 0.01
        return hits / trials

    assert rejections(p, 200, 600) <= 0.015  # 0.028 unpooled with this seed
    shifted_mix = p.copy()
    shifted_mix[0] /= 2  # the busiest destination's share halved
    # 0.55 unpooled; 0.91 with one pool of every sparse category (fewer cells, but it could swallow a whole feature:
    # test_a_month_all_in_one_of_many_equal_categories_drifts), 0.74 with pools closed at 5 expected rows.
    assert rejections(shifted_mix / shifted_mix.sum(), 500, 300) >= 0.7
    # A category the reference never saw, at 5% of a 300-row month: pooled with the rare ones it would vanish.
    month = {str(i): int(c) for i, c in enumerate(np.bincount(rng.choice(105, 285, p=p), minlength=105)) if c}
    assert chi2_test(reference, {**month, "NEW": 15})[1] < 1e-6


def test_a_month_all_in_one_of_many_equal_categories_drifts() -> None:
    """64 equal tail-number buckets: in a 250-row month none expects 5 rows, and one pool of every sparse category
    made them a single column, "nothing can differ" (p 1), so a month all in one bucket (PSI 9) was only reported."""
    reference = CategoricalProfile(counts={str(i): 1562 for i in range(64)}, nulls=0)
    policy = DriftPolicy.of(DriftSettings(), CONTRACT)
    bucket = measure_categorical("tailnum_bucket", reference, pa.array(["0"] * 250), policy)
    assert bucket.psi > 9 and bucket.p_value < 1e-10 and bucket.level == "drift"
    same = measure_categorical("tailnum_bucket", reference, pa.array([str(i % 64) for i in range(250)]), policy)
    # Spread over every bucket as the reference is (3 or 4 rows each): neither drift nor worth reporting.
    assert same.level == "ok" and same.psi < policy.psi_report and same.p_value > 0.5


def test_a_month_that_pools_to_one_cell_gets_an_exact_test_not_p_1() -> None:
    """One category holds all but a handful of the month's expected rows, so pooling leaves one cell: an exact test
    of the table instead (it used to be p 1, whatever the month)."""
    # A category at 0.001% of the reference holds half the month (two categories: Fisher's exact test).
    stat, p = chi2_test({"A": 300_000, "B": 3}, {"A": 100, "B": 100})
    assert stat > 1000 and p < 1e-100
    # Drawn from the reference: nothing to see.
    assert chi2_test({"A": 300_000, "B": 3}, {"A": 200})[1] == 1.0
    # A new category under the floor is no evidence here either (as when it is pooled).
    assert chi2_test({"A": 300_000}, {"A": 199, "NEW": 1}) == (0.0, 1.0)


@pytest.mark.parametrize("reference", [{"A": 300_000, "B": 3}, {"A": 300_000, "B": 3, "C": 3}])
def test_the_exact_test_can_reject_at_the_level_of_many_tests(reference: dict[str, int]) -> None:
    """The exact test's p-value was a 9,999-table Monte Carlo one, never under 1e-4: with 150 triggering tests
    (alpha / tests = 6.7e-5) a month moving half its rows into categories the reference barely has could not
    drift. Two categories: Fisher's exact p; more: enough tables for the level."""
    policy = DriftPolicy(tests=150)
    rare = sorted(reference)[1:]
    month = ["A"] * 100 + [rare[i % len(rare)] for i in range(100)]
    moved = measure_categorical("tailnum_bucket", CategoricalProfile(counts=reference, nulls=0), pa.array(month), policy)
    assert moved.psi > policy.psi_drift and moved.p_value < policy.alpha / policy.tests and moved.level == "drift"
    same = measure_categorical("tailnum_bucket", CategoricalProfile(counts=reference, nulls=0), pa.array(["A"] * 200),
                               policy)
    assert same.level == "ok"


@pytest.mark.parametrize("seed", range(5))
def test_one_new_category_row_in_a_small_month_drawn_from_the_reference_does_not_drift(seed: int) -> None:
    """105 Zipf destinations, 300,000 reference rows; a 200-row month drawn from them plus one row of a destination
    the reference never saw. Kept as a cell of its own (expected count ~0.0007), that one row made chi-square reject
    at p ~ 0 and, a 200-row month's PSI being over 0.25 by noise alone, every such month retrained."""
    rng = np.random.default_rng(seed)
    p = 1 / np.arange(1, 106) ** 1.1
    p /= p.sum()
    reference = CategoricalProfile(counts={str(i): int(c) for i, c in enumerate(
        np.bincount(rng.choice(105, 300_000, p=p), minlength=105))}, nulls=0)
    policy = DriftPolicy(tests=15)
    month = [str(i) for i in rng.choice(105, 200, p=p)] + ["NEW"]
    dest = measure_categorical("dest", reference, pa.array(month), policy)
    assert dest.psi >= policy.psi_drift  # the PSI does not save a month this small
    # Reported (PSI over psi_report), not drift: the test does not reject at alpha / tests.
    assert dest.level == "report" and dest.p_value > policy.alpha / policy.tests


def test_alpha_bounds_a_months_false_retrain_across_the_triggering_features() -> None:
    policy = DriftPolicy.of(DriftSettings(), CONTRACT)
    triggering = [name for name in CONTRACT.feature_columns if policy.triggers(name)]
    assert policy.tests == len(triggering) > 1
    # Each test runs at alpha / tests (Bonferroni): a p-value under alpha but over that is reported, not drift.
    assert policy.level(0.5, policy.alpha / 2) == "report"
    assert policy.level(0.5, policy.alpha / policy.tests / 2) == "drift"
    with_predictions = DriftPolicy.of(DriftSettings(predictions_trigger=True), CONTRACT)
    assert with_predictions.tests == policy.tests + 1


def test_a_month_drawn_from_the_reference_with_repeated_unrepresentable_values_passes_ks() -> None:
    """The profile stores its KS sample to 9 significant digits; the month's raw 1/3 sat above the stored
    0.333333333, so every repeated value landed on the other side of its own copy and an unchanged month gave
    KS p ~ 1e-31 (a false retrain). The month is now rounded the same way before the test."""
    rng = np.random.default_rng(1)
    atoms, weights = np.array([1 / 3, 2 / 3, 1 / 7, 0.1, 0.9]), [0.3, 0.3, 0.2, 0.1, 0.1]
    ref = numeric_profile(rng.choice(atoms, 300_000, p=weights), sample_rows=1000)
    assert 1 / 3 not in ref.sample  # the stored copy differs from the value itself
    policy = DriftPolicy(tests=1)
    months = [measure_numeric("rate", ref, pa.array(rng.choice(atoms, 400, p=weights)), policy) for _ in range(20)]
    significant = [m.p_value for m in months if m.p_value < policy.alpha]
    assert len(significant) <= 2, significant  # about alpha of them by chance, not every month
    assert all(m.level != "drift" for m in months)
    shifted = measure_numeric("rate", ref, pa.array(rng.choice(atoms, 400, p=weights[::-1])), policy)
    assert shifted.p_value < 1e-6  # still catches a real change of the mix


def test_a_numeric_feature_whose_null_share_jumps_drifts_and_one_whose_share_holds_does_not() -> None:
    """KS compares the values only, and the PSI counts the null bin: 0% -> 50% nulls had a PSI of 4.6 but KS p 0.4,
    so it was only reported (90%, 99% alike), while 100% nulls (KS p NaN) drifted. The null share is tested too."""
    rng = np.random.default_rng(1)
    policy = DriftPolicy(tests=10)

    def month(share: float, rows: int = 27_000) -> pa.Array:
        nulls = int(rows * share)
        return pa.array([*rng.normal(0, 1, rows - nulls), *[None] * nulls], pa.float64())

    ref = numeric_profile(pa.array(rng.normal(0, 1, 30_000)))
    for share in (0.5, 0.9, 0.99, 1.0):
        moved = measure_numeric("x", ref, month(share), policy)
        assert moved.level == "drift" and moved.p_value < policy.significance, (share, moved)
    assert measure_numeric("x", ref, month(0.0), policy).level == "ok"
    # A reference half null, and a month with the same share: nothing moved.
    half = numeric_profile(month(0.5, 30_000))
    same = measure_numeric("x", half, month(0.5), policy)
    assert same.level == "ok" and same.p_value > policy.significance and same.null_share_current == 0.5


def test_the_psi_thresholds_must_be_ordered() -> None:
    with pytest.raises(ValueError, match="psi_report"):
        DriftSettings(psi_report=0.3, psi_drift=0.25)


def test_the_contract_refuses_report_only_names_that_are_not_features() -> None:
    with pytest.raises(WorkloadError, match="drift_report_only names"):
        FeatureContract(key_columns=("k",), label="y", categorical_columns=("c",), numeric_columns=("n",),
                        column_types={"k": "int32", "c": "string", "n": "float64", "y": "int32"},
                        drift_report_only=("m",))


# --- the report in the lake -----------------------------------------------------------------------------


def test_the_drift_score_in_the_summary_is_the_monitors_own_unrounded() -> None:
    """decide() writes the summary's max_psi to the metric the cloud alert compares with psi_drift: rounded to 4
    places, a PSI of 0.250004 that retrains was written as 0.25, which the alert's strict comparison let pass."""
    drifted = FeatureDrift(name="distance", kind="numeric", psi=0.250004, test="ks", statistic=0.2, p_value=1e-9,
                           level="drift", triggers=True, rows=1000, null_share_reference=0.0, null_share_current=0.0)
    report = DriftReport(month="2013-07", version="v1", decision="retrain", rows=1000, features=(drifted,))
    assert report.summary["max_psi"] == report.score == 0.250004
    assert DriftReport.from_dict(json.loads(json.dumps(report.to_dict()))).summary["max_psi"] == 0.250004


def test_the_report_is_saved_as_json_and_html_and_read_back(settings: Settings, profile: ReferenceProfile) -> None:
    report = run(profile, shifted(months("2013-03"), "distance", 5.0))
    json_uri, html_uri = write_report(settings, report)
    assert json_uri.endswith("reports/drift/year=2013/month=3/report.json") and html_uri.endswith("report.html")
    back = read_report(settings, "2013-03")
    assert back.summary == report.summary and back.decision == "retrain"
    page = (settings.storage.lake_uri.removeprefix("file://") + "/reports/drift/year=2013/month=3/report.html")
    text = Path(page).read_text()
    assert text.count("<svg") == len(report.drifted) >= 1 and 'id="decision">retrain' in text
    with pytest.raises(DriftError, match="run monitor_drift for 2013-04 first"):
        read_report(settings, "2013-04")
    # Given a Partition (the demo's table does), said as the run conf takes it, not as Partition(year=2013, month=4)
    with pytest.raises(DriftError, match=r'run monitor_drift for 2013-04 first .*"month": "2013-04"'):
        read_report(settings, Partition(2013, 4))


def test_the_page_an_alert_links_survives_a_later_measurement_of_the_month(settings: Settings,
                                                                          profile: ReferenceProfile) -> None:
    """The alert linked <month>/report.html, which the next run on the month (another champion, a re-publish)
    rewrote: the drift the alert was about was gone from the page it names. The pipeline's report step pins the
    page to the version and the content measured; the month's latest report is still what read_report reads."""
    from dataclasses import replace

    from tenfold.pipelines import monitor_drift as pipeline

    drifted = run(profile, shifted(months("2013-03"), "distance", 5.0))
    calm = replace(run(profile, months("2013-03")), version="v2")
    assert drifted.decision == "retrain" and calm.decision != "retrain"

    def report(r, content: str):
        return pipeline.report(settings, {"run_key": "k", "airflow_run_id": "r", "months": ["2013-03"],
                                          "version": r.version, "version_ref": "champion", "work_dir": "/tmp/unused"},
                               {"reports": [r.to_dict()], "contents": [content]})

    first = report(drifted, "c" * 64)
    later = report(calm, "d" * 64)
    (alerted,) = first.html_uris
    assert alerted.endswith(f"month=3/report-{drifted.version}-{'c' * 16}.html") and alerted != later.html_uris[0]
    assert 'id="decision">retrain' in Path(alerted.removeprefix("file://")).read_text()
    assert read_report(settings, "2013-03").version == "v2"  # the latest
    with pytest.raises(ValueError, match="pinned report's name"):
        write_report(settings, drifted, pinned="../escape")


def test_a_stray_report_folder_that_is_no_month_is_skipped_with_a_warning_naming_it(
        settings: Settings, profile: ReferenceProfile, caplog: pytest.LogCaptureFixture) -> None:
    """reported_months checked only that the folder's year and month were digits: a stray year=2013/month=13 raised a
    bare ValueError from Partition, failing every Asset-triggered run's plan; month=07 (a copy; the report is written
    as month=7) was listed as a month read_report could not find. Both are skipped with a warning, as
    Lake.published_partitions skips such a folder."""
    from dataclasses import replace

    report = run(profile, months("2013-03"))
    write_report(settings, report)
    write_report(settings, replace(report, month="2013-11"))
    root = Path(settings.storage.lake_uri.removeprefix("file://")) / "reports/drift"
    for stray in ("year=2013/month=13", "year=2013/month=0", "year=2013/month=07"):
        (root / stray).mkdir(parents=True)
        (root / stray / "report.json").write_text((root / "year=2013/month=3/report.json").read_text())
    with caplog.at_level("WARNING", logger="tenfold.monitoring.drift"):
        assert reported_months(settings) == ["2013-03", "2013-11"]
    warned = "\n".join(r.getMessage() for r in caplog.records)
    for stray in ("year=2013/month=13", "year=2013/month=0", "year=2013/month=07"):
        assert f"{stray} holds a report.json but is not a month's folder" in warned and "remove or rename it" in warned


@pytest.mark.parametrize("body", [b'{"month": "2013-05", "decis', b"[1, 2]", b'{"month": "2013-05"}', b"\xff\xfe"])
def test_a_corrupt_report_is_refused_naming_the_file_and_what_to_do(settings: Settings, body: bytes) -> None:
    """A truncated or corrupt report.json raised a raw JSONDecodeError, TypeError or KeyError."""
    path = Path(settings.storage.lake_uri.removeprefix("file://") + "/reports/drift/year=2013/month=5/report.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(body)
    with pytest.raises(DriftError, match=r"month=5/report.json is not a readable drift report .*run monitor_drift for "
                                         r"2013-05 again"):
        read_report(settings, "2013-05")


def test_a_column_whose_kind_changed_since_the_profile_is_refused_naming_it(profile: ReferenceProfile) -> None:
    """A column numeric in the profile and categorical in the contract (or back) reached the measure of the other
    kind and raised a raw TypeError or AttributeError."""
    numeric = CONTRACT.numeric_columns[0]
    swapped = ReferenceProfile(rows=profile.rows, months=profile.months, features={
        **profile.features, numeric: categorical_profile(pa.array(["a", "b"])),
        "carrier": numeric_profile(np.arange(100.0))})
    with pytest.raises(DriftError, match=rf"carrier is categorical in the contract but not in the profile; {numeric} is "
                                         r"numeric in the contract .*retrain one"):
        run(swapped, months("2013-03"))


def test_a_profile_of_other_feature_definitions_is_refused_and_one_without_a_version_is_measured(
    profile: ReferenceProfile,
) -> None:
    """After a features version bump the champion's profile (old definitions) was compared with a month of the new
    ones, so a column whose meaning changed showed as drift. Profiles written before the version was recorded
    have none: they are measured as before."""
    from dataclasses import replace

    from tenfold.workloads import VERSION_KEY

    old = replace(profile, extra={VERSION_KEY: CONTRACT.version - 1})
    with pytest.raises(DriftError, match=rf"v1 was trained on features version {CONTRACT.version - 1} and 2013-03 was "
                                         rf"built by version {CONTRACT.version}: .*retrain"):
        measure(old, months("2013-03"), month="2013-03", version="v1", policy=DriftPolicy.of(DriftSettings(), CONTRACT),
                categorical=CONTRACT.categorical_columns, numeric=CONTRACT.numeric_columns,
                features_version=CONTRACT.version)
    for fitting in (profile, replace(profile, extra={VERSION_KEY: CONTRACT.version})):
        report = measure(fitting, months("2013-03"), month="2013-03", version="v1",
                         policy=DriftPolicy.of(DriftSettings(), CONTRACT), categorical=CONTRACT.categorical_columns,
                         numeric=CONTRACT.numeric_columns, features_version=CONTRACT.version)
        assert report.decision == "ok" and len(report.features) == len(CONTRACT.feature_columns)
