from __future__ import annotations

import pytest

from tenfold.data.lake import Partition, month_range
from tenfold.pipelines.train_model import PipelineError, rolling_split


def labels(parts):
    return [p.label for p in parts]


def test_full_year_gives_the_reference_split():
    train, holdout = rolling_split(month_range("2013-01", "2013-12"), train_window=9, holdout_window=3)
    assert labels(train) == labels(month_range("2013-01", "2013-09"))
    assert labels(holdout) == ["2013-10", "2013-11", "2013-12"]


def test_few_months_hold_out_the_newest_one():
    train, holdout = rolling_split(month_range("2013-01", "2013-04"), train_window=9, holdout_window=3)
    assert labels(train) == ["2013-01", "2013-02", "2013-03"]
    assert labels(holdout) == ["2013-04"]


def test_training_window_is_capped_and_rolls_forward():
    train, holdout = rolling_split(month_range("2013-01", "2014-06"), train_window=9, holdout_window=3)
    assert labels(holdout) == ["2014-04", "2014-05", "2014-06"]
    assert labels(train) == labels(month_range("2013-07", "2014-03"))
    assert max(train) < min(holdout)


def test_only_the_newest_unbroken_run_is_used():
    published = [*month_range("2013-01", "2013-03"), *month_range("2013-06", "2013-09")]
    train, holdout = rolling_split(published, train_window=9, holdout_window=3)
    assert labels(train) + labels(holdout) == labels(month_range("2013-06", "2013-09"))


@pytest.mark.parametrize("published", [[], [Partition(2013, 5)]])
def test_too_little_data_is_a_clear_error(published):
    with pytest.raises(PipelineError, match="at least two consecutive published"):
        rolling_split(published, train_window=9, holdout_window=3)


def test_a_run_started_by_drift_trains_up_to_the_month_before_the_newest_and_holds_out_only_that(
        make_settings, local_settings):
    """With the default holdout (3 months), a retrain started by drift in the newest month trained on nothing of
    the two months before it nor of the drifted one, so its reference profile had not seen the change either
    and the next months drifted again against it."""
    from tenfold.data.lake import Lake
    from tenfold.pipelines import train_model as tm
    from tenfold.workloads.flights.synthetic import publish_synthetic_features

    s = make_settings(on=local_settings)
    publish_synthetic_features(Lake.from_settings(s), month_range("2013-01", "2013-08"), 50)
    scheduled = tm.plan(s, "scheduled__1", {"feedback_weight": 0})
    assert scheduled.holdout_months == ("2013-07", "2013-08")  # a quarter of the 8 months
    drifted = tm.plan(s, "asset_triggered__1", {"feedback_weight": 0}, drifted=["2013-08"])
    assert drifted.train_months == tuple(labels(month_range("2013-01", "2013-07")))
    assert drifted.holdout_months == ("2013-08",)
    explicit = tm.plan(s, "asset_triggered__2", {"feedback_weight": 0, "train_months": ["2013-01", "2013-03"],
                                                 "holdout_months": ["2013-04", "2013-05"]}, drifted=["2013-08"])
    assert explicit.holdout_months == ("2013-04", "2013-05")  # the run conf's windows win


def test_the_drifted_months_are_read_from_the_retraining_events_of_the_drift_asset():
    from dataclasses import dataclass
    from types import SimpleNamespace

    from tenfold.pipelines.train_model import drifted_months

    @dataclass(frozen=True)
    class Asset:  # what Airflow keys the triggering events by
        uri: str

    drift, other = Asset("file:///lake/reports/drift"), Asset("file:///lake/features")
    events = {drift: [SimpleNamespace(extra={"retrain": True, "months": ["2013-08", "2013-07"]}),
                      SimpleNamespace(extra={"retrain": False, "months": ["2013-06"]}),
                      SimpleNamespace(extra=None)],
              other: [SimpleNamespace(extra={"retrain": True, "months": ["2013-01"]})]}
    assert drifted_months({"triggering_asset_events": events}, drift.uri) == ["2013-07", "2013-08"]
    assert drifted_months({}, drift.uri) == []  # a scheduled or manual run
