"""Drift between a model's reference profile and a new partition: measures, the decision, the report.

Per feature of the workload's contract, and for the model's predictions (docs/drift.md):

* the population stability index (:func:`psi`) over the reference's bins: the deciles for numerics (plus
  a null bin), the categories for categoricals (plus a null bin), proportions floored at ``1e-4``;
* a two-sample test from ``scipy.stats``: Kolmogorov-Smirnov against the profile's seeded sample of the
  reference (numerics, nulls left out) together with a test of the null share (:func:`chi2_test` of the non-null
  and null counts), the smaller p-value doubled (:func:`either_test`); chi-square of homogeneity over the
  category and null counts (categoricals).

A feature has **drifted** when its PSI is at least ``settings.monitoring.drift.psi_drift`` (0.25) and
its test rejects at ``alpha`` (0.01) divided by the number of tests that can trigger a retrain (Bonferroni:
``alpha`` bounds a month's chance of a false retrain); it is **reported** from ``psi_report`` (0.1). Only features the
:class:`DriftPolicy` says trigger (not the workload's report-only ones, e.g. weather) make the decision
``retrain``; others drifting make it ``report``; nothing over ``psi_report``: ``ok``.

:func:`measure` is pure (a profile and a table in, a :class:`DriftReport` out); :func:`write_report` saves
a report as JSON and HTML (an inline SVG plot, reference against current, per drifted feature) under
``<lake>/<drift.reports_prefix>/year=YYYY/month=M/``, and :func:`read_report` reads the JSON back:
``read_report(settings, "2013-07").summary`` is what ``make demo`` prints.
"""

from __future__ import annotations

import datetime as dt
import html
import itertools
import json
import logging
import math
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from tenfold.data.partition import Partition
from tenfold.fsio import filesystem_from_uri, make_dirs, write_file_atomically
from tenfold.monitoring.profile import (
    PREDICTION,
    CategoricalProfile,
    NumericProfile,
    ReferenceProfile,
    category_values,
    numeric_values,
    round_as_stored,
)
from tenfold.workloads import VERSION_KEY

if TYPE_CHECKING:
    from tenfold.config import Settings
    from tenfold.config.settings import DriftSettings
    from tenfold.workloads import FeatureContract

log = logging.getLogger(__name__)

REPORT_FORMAT = 1
REPORT_JSON = "report.json"
REPORT_HTML = "report.html"
EPS = 1e-4  # proportions are floored here before the PSI's log (an empty bin would be infinite)

Level = Literal["ok", "report", "drift"]
Decision = Literal["ok", "report", "retrain", "no_profile", "no_model", "too_small"]


class DriftError(ValueError):
    """Drift cannot be measured as asked; the message says what is wrong and what to do."""


# --- measures ---------------------------------------------------------------------------------------


def psi(expected: Sequence[float] | np.ndarray, actual: Sequence[float] | np.ndarray, eps: float = EPS) -> float:
    """Population stability index of ``actual`` against ``expected`` (counts or proportions per bin).

    ``sum((a - e) * ln(a / e))`` over the bins, each side normalised to proportions floored at ``eps``.
    """
    e = np.asarray(expected, dtype=np.float64)
    a = np.asarray(actual, dtype=np.float64)
    if e.shape != a.shape:
        raise DriftError(f"psi: {e.shape[0]} reference bins but {a.shape[0]} current ones")
    if e.sum() <= 0 or a.sum() <= 0:
        raise DriftError("psi: a side holds no rows")
    e = np.maximum(e / e.sum(), eps)
    a = np.maximum(a / a.sum(), eps)
    return float(np.sum((a - e) * np.log(a / e)))


def ks_test(reference_sample: Sequence[float] | np.ndarray, current: np.ndarray) -> tuple[float, float]:
    """Two-sample Kolmogorov-Smirnov statistic and p-value (``scipy.stats.ks_2samp``)."""
    from scipy import stats

    ref = np.asarray(reference_sample, dtype=np.float64)
    if ref.size == 0 or current.size == 0:
        return math.nan, math.nan
    result = stats.ks_2samp(ref, current)
    return float(result.statistic), float(result.pvalue)


# Cochran's rule: the chi-square approximation needs an expected count of about 5 in every cell.
MIN_EXPECTED = 5.0


def chi2_test(reference: Mapping[str, int], current: Mapping[str, int], *,
              level: float | None = None) -> tuple[float, float]:
    """Chi-square test of homogeneity of two category-count tables (``scipy.stats.chi2_contingency``).

    Categories whose expected count in ``current`` is below :data:`MIN_EXPECTED` are pooled, rarest first, each
    pool closed once it reaches it: a hundred sparse destinations in a month of 200 rows made the test reject a
    month drawn from the reference itself 3-4 times as often as its level. ``level`` is the significance the
    p-value will be compared with (``alpha / tests``): the exact test's Monte Carlo resampling is sized for it
    (:func:`exact_resamples`).
    """
    from scipy import stats

    keys = sorted(set(reference) | set(current))
    table = np.array([[reference.get(k, 0) for k in keys], [current.get(k, 0) for k in keys]], dtype=np.float64)
    table = table[:, table.sum(axis=0) > 0]
    if table.shape[1] < 2 or (table.sum(axis=1) == 0).any():
        return 0.0, 1.0  # one category in all: nothing can differ
    # Categories the reference never saw have an expected count of about 0 in the month, so under the chi-square
    # approximation a single row of them is "impossible": one new row in a 200-row month against 300,000 reference
    # rows gave p ~ 0 and, a small month's PSI being over 0.25 by noise alone, a retrain. They get a cell of their
    # own only once they hold MIN_EXPECTED of the month's rows (the floor Cochran's rule sets on every cell), so a
    # new category is not averaged away (mixed in with the rare ones, one at 5% of a 300-row month went unseen:
    # p 0.06 against 7e-269); below that they are sparse cells like any other, pooled with the rarest.
    novel = table[0] == 0
    few_novel = table[1, novel].sum() < MIN_EXPECTED
    if few_novel:
        pooled = _pool_sparse(table)
    else:
        pooled = np.column_stack([_pool_sparse(table[:, ~novel]), table[:, novel].sum(axis=1)])
    if pooled.shape[1] < 2:
        # The sparse categories together expect fewer than MIN_EXPECTED rows and the pool took the one that holds the
        # rest: an exact test instead, without the new categories under the floor (no evidence alone, as above).
        return _exact_test(table[:, ~novel] if few_novel else table, exact_resamples(level))
    result = stats.chi2_contingency(pooled, correction=False)
    return float(result.statistic), float(result.pvalue)


def _pool_sparse(table: np.ndarray) -> np.ndarray:
    """``table`` (reference and current counts per category) with its sparse columns summed into pools.

    Rarest first, each pool is closed once its expected count reaches :data:`MIN_EXPECTED` and the next starts:
    one pool of every sparse column could swallow a whole feature (64 equal tail-number buckets, none of them at 5
    in a 250-row month, made one column, and a month all in one bucket, PSI 9, "could not differ"). The last pool,
    if the columns run out before it reaches the rule, joins the one before it.
    """
    share = table[1].sum() / table.sum()  # the current row's expected count is a column's total times this
    expected = table.sum(axis=0) * share
    order = np.argsort(expected, kind="stable")
    pools: list[np.ndarray] = []
    pool, taken = np.zeros(2), 0
    while taken < len(order) and (expected[order[taken]] < MIN_EXPECTED or pool.sum() > 0):
        pool = pool + table[:, order[taken]]
        taken += 1
        if pool.sum() * share >= MIN_EXPECTED:
            pools.append(pool)
            pool = np.zeros(2)
    if pool.sum() > 0:
        if pools:
            pools[-1] = pools[-1] + pool
        else:
            pools.append(pool)
    if taken <= 1:
        return table  # nothing sparse, or one column alone: nothing to pool it with
    return np.column_stack([table[:, order[taken:]], *pools])


EXACT_RESAMPLES = 9999  # the fewest; more when the level the p-value is read at needs them (exact_resamples)
EXACT_MAX_RESAMPLES = 999_999  # the most: ~10 s for 60 categories; a level under 2e-5 then loses some power


def exact_resamples(level: float | None) -> int:
    """How many Monte Carlo tables the exact test deals to be read at ``level`` (None: :data:`EXACT_RESAMPLES`).

    Its p-value is at least ``1 / (resamples + 1)``: 9,999 tables could never reject at ``alpha / tests`` below
    1e-4 (``alpha`` 0.01 over 100 triggering tests, or 0.001 over 10), whatever the month. Enough for the smallest
    p-value to be a twentieth of ``level``, between :data:`EXACT_RESAMPLES` and :data:`EXACT_MAX_RESAMPLES`.
    """
    if level is None or not level > 0:
        return EXACT_RESAMPLES
    return int(min(EXACT_MAX_RESAMPLES, max(EXACT_RESAMPLES, math.ceil(20 / level) - 1)))


def _exact_test(table: np.ndarray, resamples: int = EXACT_RESAMPLES, seed: int = 0) -> tuple[float, float]:
    """The chi-square statistic of ``table`` (unpooled) and its exact p-value.

    For when pooling leaves fewer than two cells (one category holds all but a handful of the month's expected
    rows): the approximation cannot be used, but "nothing can differ" (p 1) is false, e.g. a category the month
    moves into from almost nothing. Two categories: Fisher's exact test (``scipy.stats.fisher_exact``), whose
    p-value is exact however small. More: ``scipy.stats.chi2_contingency`` with a ``MonteCarloMethod`` deals
    ``resamples`` random tables with the margins kept (the null of homogeneity); seeded, so a month's report is the
    same on a retry. That p-value is at least ``1 / (resamples + 1)``.
    """
    from scipy import stats

    table = table[:, table.sum(axis=0) > 0]
    if table.shape[1] < 2 or (table.sum(axis=1) == 0).any():
        return 0.0, 1.0  # one category in all: nothing can differ
    if table.shape[1] == 2:
        return float(stats.chi2_contingency(table, correction=False).statistic), float(stats.fisher_exact(table).pvalue)
    result = stats.chi2_contingency(table, correction=False, method=stats.MonteCarloMethod(
        n_resamples=resamples, rng=np.random.default_rng(seed)))
    return float(result.statistic), float(result.pvalue)


@dataclass(frozen=True)
class FeatureDrift:
    """How one feature (or the predictions) moved: its PSI, its test, its level and whether it triggers."""

    name: str
    kind: Literal["numeric", "categorical"]
    psi: float
    test: Literal["ks", "chi2"]
    statistic: float
    p_value: float
    level: Level
    triggers: bool
    rows: int
    null_share_reference: float
    null_share_current: float
    mean_reference: float | None = None
    mean_current: float | None = None
    # What the plot draws: the bin (or category) labels and both sides' proportions.
    bins: tuple[str, ...] = ()
    reference: tuple[float, ...] = ()
    current: tuple[float, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        body = {k: getattr(self, k) for k in self.__dataclass_fields__}
        body.update(bins=list(self.bins), reference=list(self.reference), current=list(self.current))
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in body.items()}

    @classmethod
    def from_dict(cls, body: Mapping[str, Any]) -> FeatureDrift:
        nan = math.nan
        return cls(**{**body, "statistic": nan if body["statistic"] is None else body["statistic"],
                      "p_value": nan if body["p_value"] is None else body["p_value"],
                      "bins": tuple(body["bins"]), "reference": tuple(body["reference"]),
                      "current": tuple(body["current"])})


@dataclass(frozen=True)
class DriftPolicy:
    """Which features trigger retraining, and the thresholds (from settings and the workload's contract)."""

    psi_report: float = 0.1
    psi_drift: float = 0.25
    alpha: float = 0.01
    min_rows: int = 200
    report_only: frozenset[str] = frozenset()
    predictions_trigger: bool = False
    # How many tests can trigger a retrain each month (the triggering features, the predictions if they trigger):
    # each is run at alpha / tests (Bonferroni), so alpha bounds a month's false retrain, not each feature's.
    tests: int = 1

    def triggers(self, name: str) -> bool:
        if name == PREDICTION:
            return self.predictions_trigger
        return name not in self.report_only

    @property
    def significance(self) -> float:
        """What each test's p-value must be under: ``alpha / tests`` (Bonferroni)."""
        return self.alpha / max(1, self.tests)

    def level(self, psi_value: float, p_value: float) -> Level:
        significant = not math.isfinite(p_value) or p_value < self.significance
        if psi_value >= self.psi_drift and significant:
            return "drift"
        return "report" if psi_value >= self.psi_report else "ok"

    @classmethod
    def of(cls, drift: DriftSettings, contract: FeatureContract) -> DriftPolicy:
        """Settings' thresholds; report-only = the contract's ``drift_report_only`` (or ``drift.report_only``
        when set), minus ``drift.trigger``. Names that are no feature of the contract are refused."""
        features = set(contract.feature_columns)
        report_only = set(contract.drift_report_only if drift.report_only is None else drift.report_only)
        for what, names in (("monitoring.drift.report_only", report_only), ("monitoring.drift.trigger", drift.trigger)):
            unknown = sorted(set(names) - features)
            if unknown:
                raise DriftError(f"{what} names {unknown}, which are not features of the workload's contract "
                                 f"(features: {', '.join(sorted(features))})")
        report_only -= set(drift.trigger)
        tests = len(features - report_only) + (1 if drift.predictions_trigger else 0)
        return cls(psi_report=drift.psi_report, psi_drift=drift.psi_drift, alpha=drift.alpha, min_rows=drift.min_rows,
                   report_only=frozenset(report_only), predictions_trigger=drift.predictions_trigger, tests=tests)


def _edge_labels(edges: Sequence[float], low: float | None = None) -> list[str]:
    below = [] if low is None else [f"< {low:.4g}"]
    if not edges:
        return [*below, "all" if low is None else f">= {low:.4g}"]
    cuts = [f"{e:.4g}" for e in edges]
    first = f"<= {cuts[0]}" if low is None else f"[{low:.4g}, {cuts[0]}]"
    return [*below, first, *[f"({a}, {b}]" for a, b in itertools.pairwise(cuts)], f"> {cuts[-1]}"]


def _share(part: int, whole: int) -> float:
    return part / whole if whole else 0.0


def either_test(*p_values: float) -> float:
    """One p-value for a feature measured by several tests: the smallest, times how many (Bonferroni; at most 1).

    Under the null every test's ``P(p <= t / k) <= t / k``, so ``P(k * min(p) <= t) <= t``: the feature stays one
    test of ``alpha / tests`` and the family-wise ``alpha`` holds without counting its tests apart. A test that
    could not run (NaN: KS without a value on a side) counts, but does not decide; all NaN: NaN.
    """
    ran = [p for p in p_values if math.isfinite(p)]
    return min(1.0, len(p_values) * min(ran)) if ran else math.nan


def measure_numeric(name: str, ref: NumericProfile, column: Any, policy: DriftPolicy) -> FeatureDrift:
    values, nulls = numeric_values(column)
    rows = int(values.size) + nulls
    ref_counts = [*ref.counts, ref.nulls]
    cur_counts = [*ref.bin_counts(values).tolist(), nulls]  # rounded as the profile's edges are stored (format 3 on)
    labels = [*_edge_labels(ref.edges, ref.low), "null"]
    if ref.nulls == 0 and nulls == 0:  # no null bin on either side: leave it out of the PSI and the plot
        ref_counts, cur_counts, labels = ref_counts[:-1], cur_counts[:-1], labels[:-1]
    value = psi(ref_counts, cur_counts)
    stat, p_ks = ks_test(ref.sample, round_as_stored(values))  # the sample is stored rounded: compare like with like
    # KS sees the values only, and the PSI the null bin too: a month whose null share jumped (0% to 50%) had a PSI of
    # 4.6 and a KS p of 0.4, so it was only reported, while 100% nulls (KS p NaN) drifted. The null share gets a
    # test of its own, non-null against null counts, each at half the feature's level (Bonferroni).
    _, p_nulls = chi2_test({"value": ref.rows - ref.nulls, "\0null": ref.nulls},
                           {"value": int(values.size), "\0null": nulls}, level=policy.significance / 2)
    p = either_test(p_ks, p_nulls)
    ref_total, cur_total = sum(ref_counts), sum(cur_counts)
    return FeatureDrift(
        name=name, kind="numeric", psi=value, test="ks", statistic=stat, p_value=p, level=policy.level(value, p),
        triggers=policy.triggers(name), rows=rows, null_share_reference=_share(ref.nulls, ref.rows),
        null_share_current=_share(nulls, rows), mean_reference=ref.mean,
        mean_current=float(values.mean()) if values.size else None, bins=tuple(labels),
        reference=tuple(c / ref_total for c in ref_counts), current=tuple(c / cur_total for c in cur_counts),
    )


def measure_categorical(name: str, ref: CategoricalProfile, column: Any, policy: DriftPolicy) -> FeatureDrift:
    present, nulls = category_values(column)
    current = dict(Counter(present))
    labels = sorted(set(ref.counts) | set(current))
    ref_counts = [ref.counts.get(k, 0) for k in labels] + [ref.nulls]
    cur_counts = [current.get(k, 0) for k in labels] + [nulls]
    labels = [*labels, "null"]
    if ref.nulls == 0 and nulls == 0:
        ref_counts, cur_counts, labels = ref_counts[:-1], cur_counts[:-1], labels[:-1]
    value = psi(ref_counts, cur_counts)
    stat, p = chi2_test({**ref.counts, "\0null": ref.nulls}, {**current, "\0null": nulls}, level=policy.significance)
    ref_total, cur_total = sum(ref_counts), sum(cur_counts)
    return FeatureDrift(
        name=name, kind="categorical", psi=value, test="chi2", statistic=stat, p_value=p, level=policy.level(value, p),
        triggers=policy.triggers(name), rows=len(present) + nulls, null_share_reference=_share(ref.nulls, ref.rows),
        null_share_current=_share(nulls, len(present) + nulls), bins=tuple(labels),
        reference=tuple(c / ref_total for c in ref_counts), current=tuple(c / cur_total for c in cur_counts),
    )


# --- the report ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DriftReport:
    """One partition measured against one model version's reference profile.

    ``summary`` is what the demo and the alert read: the decision, the largest PSI over the triggering
    features (and over all), the drifted features (triggering and report-only).
    """

    month: str
    version: str | None
    decision: Decision
    rows: int
    features: tuple[FeatureDrift, ...] = ()
    reason: str = ""
    reference_months: tuple[str, ...] = ()
    thresholds: Mapping[str, float] = field(default_factory=dict)
    created_at: str = field(default_factory=lambda: dt.datetime.now(dt.UTC).isoformat(timespec="seconds"))
    format: int = REPORT_FORMAT

    @property
    def drifted(self) -> list[FeatureDrift]:
        return [f for f in self.features if f.level == "drift"]

    @property
    def triggered(self) -> list[str]:
        """The drifted features that trigger retraining."""
        return [f.name for f in self.drifted if f.triggers]

    @property
    def retrain(self) -> bool:
        """Whether a feature that triggers retraining drifted: this measurement's decision. Whether a retrain starts
        is ``monitor_drift``'s ``decide``'s (not for a version that is not the champion, nor a month already
        retrained for)."""
        return self.decision == "retrain"

    @property
    def score(self) -> float:
        """The drift score: the largest PSI over the features that trigger retraining (NaN: nothing measured)."""
        triggering = [f.psi for f in self.features if f.triggers]
        return max(triggering) if triggering else math.nan

    @property
    def summary(self) -> dict[str, Any]:
        triggering = [f.psi for f in self.features if f.triggers]
        return {
            "month": self.month, "version": self.version, "decision": self.decision, "rows": self.rows,
            # Unrounded: the drift score decide() writes to the metric the cloud alert compares with psi_drift, and
            # rounded, a PSI of 0.250004 that retrains was written as 0.25, which a threshold of 0.25 does not page.
            "max_psi": max(triggering) if triggering else None,
            "max_psi_all": round(max(f.psi for f in self.features), 4) if self.features else None,
            "triggered": self.triggered,
            "drifted": [f.name for f in self.drifted],
            "reported": [f.name for f in self.features if f.level == "report"],
            "reason": self.reason,
        }

    def to_dict(self) -> dict[str, Any]:
        return {"format": self.format, "month": self.month, "version": self.version, "decision": self.decision,
                "rows": self.rows, "reason": self.reason, "reference_months": list(self.reference_months),
                "thresholds": dict(self.thresholds), "created_at": self.created_at, "summary": self.summary,
                "features": [f.to_dict() for f in self.features]}

    @classmethod
    def from_dict(cls, body: Mapping[str, Any]) -> DriftReport:
        return cls(month=body["month"], version=body.get("version"), decision=body["decision"], rows=int(body["rows"]),
                   features=tuple(FeatureDrift.from_dict(f) for f in body.get("features", ())),
                   reason=body.get("reason", ""), reference_months=tuple(body.get("reference_months", ())),
                   thresholds=dict(body.get("thresholds", {})), created_at=body.get("created_at", ""),
                   format=int(body.get("format", REPORT_FORMAT)))


def measure(profile: ReferenceProfile, table: Any, *, month: str, version: str | None, policy: DriftPolicy,
            categorical: Sequence[str], numeric: Sequence[str], predictions: np.ndarray | None = None,
            features_version: int | None = None) -> DriftReport:
    """Measure ``table`` (the partition's rows, an Arrow table) and the model's ``predictions`` on it
    against ``profile``, for every feature of the contract the profile holds.

    ``features_version`` is the feature definitions' version the month was built by: a profile that records
    another (its training window's) is refused, since a column whose meaning changed would show as drift.
    Profiles written before they recorded it are measured.
    """
    thresholds = {"psi_report": policy.psi_report, "psi_drift": policy.psi_drift, "alpha": policy.alpha}
    common = dict(month=month, version=version, rows=int(table.num_rows), reference_months=profile.months,
                  thresholds=thresholds)
    if table.num_rows < policy.min_rows:
        return DriftReport(decision="too_small", reason=f"{table.num_rows} rows, fewer than monitoring.drift.min_rows "
                           f"({policy.min_rows}): too few to judge", **common)  # type: ignore[arg-type]
    trained_on = profile.extra.get(VERSION_KEY)
    if trained_on is not None and features_version is not None and trained_on != features_version:
        raise DriftError(f"version {version} was trained on features version {trained_on} and {month} was built by "
                         f"version {features_version}: the month cannot be compared with its reference profile (a "
                         "column whose meaning changed would show as drift); retrain (train_model) on features of "
                         f"version {features_version}, or monitor a version trained on them (the run conf's version)")
    missing = [c for c in (*categorical, *numeric) if c not in profile.features]
    if missing:
        raise DriftError(f"the reference profile of {version} has no {missing}: the model was trained on another "
                         "feature contract; monitor with a model of this contract (retrain one)")
    # A column whose kind changed (numeric in the profile, categorical in the contract, or back) cannot be measured
    # against it: without this, a raw AttributeError from deep in the measure.
    changed = [f"{c} is {kind} in the contract but not in the profile"
               for kind, names, want in (("categorical", categorical, CategoricalProfile), ("numeric", numeric, NumericProfile))
               for c in names if not isinstance(profile.features[c], want)]
    if changed:
        raise DriftError(f"the reference profile of {version} does not fit: {'; '.join(changed)}. The model was trained "
                         "on another feature contract; monitor with a model of this contract (retrain one)")
    results = [measure_categorical(c, profile.features[c], table[c], policy) for c in categorical]  # type: ignore[arg-type]
    results += [measure_numeric(c, profile.features[c], table[c], policy) for c in numeric]  # type: ignore[arg-type]
    if predictions is not None and profile.prediction is not None:
        results.append(measure_numeric(PREDICTION, profile.prediction, predictions, policy))
    drifted = [f for f in results if f.level == "drift"]
    triggered = [f.name for f in drifted if f.triggers]
    if triggered:
        decision: Decision = "retrain"
        reason = (f"drift on {', '.join(triggered)} (PSI >= {policy.psi_drift}, p < {policy.alpha:g} / "
                  f"{policy.tests} tests)")
    elif any(f.level != "ok" for f in results):
        decision = "report"
        names = [f.name for f in results if f.level != "ok"]
        reason = f"reported only: {', '.join(names)}" + (" (drifted report-only features do not trigger)" if drifted else "")
    else:
        decision, reason = "ok", f"every PSI below {policy.psi_report}"
    return DriftReport(decision=decision, features=tuple(results), reason=reason, **common)  # type: ignore[arg-type]


def measure_partition(loaded: Any, profile: ReferenceProfile, lake: Any, table: str, month: str, version: str | None,
                      policy: DriftPolicy, *, digest: str | None = None) -> DriftReport:
    """One published month of ``table`` against ``profile``, with the predictions of ``loaded`` (a
    :class:`tenfold.model.io.LoadedModel`) on it. Reads that month's feature columns and nothing else; with
    ``digest`` (:meth:`Lake.content_digest`), only that content (a month re-published since is refused)."""
    from tenfold.training.data import read_features

    contract = loaded.workload.contract
    data = read_features(lake, [Partition.parse(month)], contract=contract, table=table, columns=contract.feature_columns,
                         digest=digest, pinned_by="this measurement read its manifest",
                         rerun="the task's retry measures the new content (nothing to do)")
    predictions = loaded.predict_proba(data) if data.num_rows else None
    return measure(profile, data, month=month, version=version, policy=policy, categorical=contract.categorical_columns,
                   numeric=contract.numeric_columns, predictions=predictions,
                   features_version=contract.version)  # read_features refused a month of another version


def skipped(month: str, version: str | None, decision: Decision, reason: str) -> DriftReport:
    """A report that measured nothing (no model, no profile): it says why."""
    return DriftReport(month=month, version=version, decision=decision, rows=0, reason=reason)


# --- where reports live ------------------------------------------------------------------------------


def report_dir(settings: Settings, part: Partition | str) -> str:
    """``<lake>/<drift.reports_prefix>/year=YYYY/month=M``: where a partition's drift report lives."""
    p = Partition.parse(part) if isinstance(part, str) else part
    prefix = settings.monitoring.drift.reports_prefix.strip("/")
    return f"{settings.storage.lake_uri.rstrip('/')}/{prefix}/year={p.year}/month={p.month}"


def reported_months(settings: Settings) -> list[str]:
    """The months (``"2013-07"``, ascending) that have a drift report saved (:func:`write_report`).

    A folder not spelled as :func:`report_dir` writes a month's (``month=13``, ``month=07``, a copy) holds no report
    :func:`read_report` finds: it is skipped with a warning, as ``Lake.published_partitions`` skips one, since every
    Asset-triggered run's plan lists these months and one stray folder failed them all with a bare ValueError."""
    import pyarrow.fs as pafs

    prefix = settings.monitoring.drift.reports_prefix.strip("/")
    fs, root = filesystem_from_uri(f"{settings.storage.lake_uri.rstrip('/')}/{prefix}")
    found = set()
    for info in fs.get_file_info(pafs.FileSelector(root, recursive=True, allow_not_found=True)):
        parts = info.path.rstrip("/").split("/")
        if info.type == pafs.FileType.File and parts[-1] == REPORT_JSON and len(parts) >= 3:
            folder = "/".join(parts[-3:-1])
            if not (parts[-3].startswith("year=") and parts[-2].startswith("month=")):
                continue  # not under a month's folder at all
            try:
                part: Partition | None = Partition(int(parts[-3][5:]), int(parts[-2][6:]))
            except ValueError:
                part = None
            if part is None or part.path != folder:
                log.warning("%s holds a %s but is not a month's folder (year=YYYY/month=M, as monitor_drift writes "
                            "them); skipped, remove or rename it", info.path.rsplit("/", 1)[0], REPORT_JSON)
                continue
            found.add(part)
    return [p.label for p in sorted(found)]


def _write(uri: str, data: bytes) -> None:
    fs, path = filesystem_from_uri(uri)
    make_dirs(fs, path.rsplit("/", 1)[0])
    write_file_atomically(fs, path, data)  # a unique tmp, removed if the write fails (a full disk)


def write_report(settings: Settings, report: DriftReport, *, pinned: str | None = None) -> tuple[str, str]:
    """Save the report as JSON and HTML (HTML first, so the JSON a reader finds always has its page): the month's
    latest report, which :func:`read_report` reads. Returns their URIs.

    With ``pinned`` (what was measured: the version and the content), also a copy named by it,
    ``report-<pinned>.{html,json}``, whose URIs are returned instead: the page an alert links, which a later
    measurement of the month (against another version, or of re-published content) does not overwrite."""
    base = report_dir(settings, report.month)
    page, body = render_html(report).encode(), json.dumps(report.to_dict(), indent=1, sort_keys=True).encode()
    names = [(REPORT_HTML, REPORT_JSON)]
    if pinned:
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", pinned):
            raise ValueError(f"a pinned report's name {pinned!r} is not letters, digits, '_', '.' or '-'")
        names.append((f"report-{pinned}.html", f"report-{pinned}.json"))
    for html_name, json_name in names:
        _write(f"{base}/{html_name}", page)
        _write(f"{base}/{json_name}", body)
    html_name, json_name = names[-1]
    return f"{base}/{json_name}", f"{base}/{html_name}"


def read_report(settings: Settings, part: Partition | str) -> DriftReport:
    """The drift report saved for ``part`` (``"2013-07"``); its ``summary`` has the decision and max PSI."""
    uri = f"{report_dir(settings, part)}/{REPORT_JSON}"
    fs, path = filesystem_from_uri(uri)
    part = part if isinstance(part, str) else part.label  # said as the run conf takes it: "2013-07"
    trigger = f"the Airflow UI's Trigger button, with the run conf {{\"month\": \"{part}\"}}"
    try:
        with fs.open_input_stream(path) as src:
            body = json.loads(src.read())
        return DriftReport.from_dict(body)
    except FileNotFoundError:
        raise DriftError(f"no drift report at {uri}: run monitor_drift for {part} first ({trigger})") from None
    except (ValueError, KeyError, TypeError, AttributeError) as exc:  # truncated or corrupt JSON, a field missing
        raise DriftError(f"{uri} is not a readable drift report ({type(exc).__name__}: {exc}): it is truncated or "
                         f"corrupt; run monitor_drift for {part} again, which rewrites it ({trigger})") from exc


# --- HTML ---------------------------------------------------------------------------------------------


def _bars(f: FeatureDrift) -> str:
    """An inline SVG bar chart: reference (blue) against current (orange) share per bin."""
    n = len(f.bins)
    width, height, pad, label_h = max(320, min(900, 26 * n + 60)), 180, 30, 60
    top = max([*f.reference, *f.current, 1e-9])
    slot = (width - 2 * pad) / max(n, 1)
    bar = slot * 0.4
    shapes = []
    for i, (label, r, c) in enumerate(zip(f.bins, f.reference, f.current, strict=True)):
        x = pad + i * slot
        for offset, value, colour in ((0.1, r, "#1c7ed6"), (0.5, c, "#d9480f")):
            h = value / top * (height - 2 * pad)
            shapes.append(f'<rect x="{x + offset * slot:.1f}" y="{height - pad - h:.1f}" width="{bar:.1f}" '
                          f'height="{h:.1f}" fill="{colour}"><title>{html.escape(label)}: {value:.3%}</title></rect>')
        shapes.append(f'<text x="{x + slot / 2:.1f}" y="{height - pad + 10}" font-size="9" text-anchor="end" '
                      f'transform="rotate(-45 {x + slot / 2:.1f} {height - pad + 10})">{html.escape(label[:18])}</text>')
    return (f"<svg width='{width}' height='{height + label_h}' role='img' aria-label='{html.escape(f.name)}'>"
            f"<text x='2' y='12' font-size='10'>{top:.1%}</text>" + "".join(shapes) + "</svg>")


def render_html(report: DriftReport) -> str:
    """A self-contained page: the decision, a plot per drifted feature, and every feature's measures."""
    s = report.summary
    rows = "".join(
        f"<tr class='{f.level}'><td>{html.escape(f.name)}</td><td>{f.kind}</td><td>{f.psi:.4f}</td><td>{f.test}</td>"
        f"<td>{'' if math.isnan(f.statistic) else f'{f.statistic:.4g}'}</td>"
        f"<td>{'' if math.isnan(f.p_value) else f'{f.p_value:.3g}'}</td><td>{f.level}</td>"
        f"<td>{'yes' if f.triggers else 'report only'}</td><td>{f.null_share_reference:.1%} / {f.null_share_current:.1%}</td></tr>"
        for f in sorted(report.features, key=lambda f: -f.psi))
    plots = "".join(f"<h3>{html.escape(f.name)}: PSI {f.psi:.3f} ({'triggers' if f.triggers else 'report only'})</h3>{_bars(f)}"
                    for f in sorted(report.drifted, key=lambda f: -f.psi))
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>Drift {html.escape(report.month)}</title>
<style>body{{font-family:sans-serif;margin:2em}} td,th{{padding:3px 8px;border-bottom:1px solid #ddd;font-size:13px}}
.drift{{color:#c92a2a;font-weight:bold}} .report{{color:#e67700}} .ok{{color:#2b8a3e}}</style></head><body>
<h1>Drift of {html.escape(report.month)} against version {html.escape(str(report.version))}</h1>
<p>Decision: <b id="decision">{html.escape(report.decision)}</b>: {html.escape(report.reason)}.
{report.rows} rows; reference: {html.escape(', '.join(report.reference_months))}; max PSI over triggering features:
<b id="max-psi">{s['max_psi']}</b>. Thresholds {html.escape(json.dumps(dict(report.thresholds)))}.</p>
<p><span style="color:#1c7ed6">reference</span> against <span style="color:#d9480f">current</span>, share of rows per bin.</p>
{plots or '<p>No feature drifted.</p>'}
<h2>Every feature</h2><table><tr><th>feature</th><th>kind</th><th>PSI</th><th>test</th><th>statistic</th><th>p</th>
<th>level</th><th>retrain</th><th>nulls ref / now</th></tr>{rows}</table>
<p>Generated {html.escape(report.created_at)}.</p></body></html>
"""
