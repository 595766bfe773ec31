"""Helpers every DAG's tasks share (tenfold.pipelines.common)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from airflow.sdk import Asset

from tenfold.pipelines.common import event_months


def _event(**extra: object) -> SimpleNamespace:
    return SimpleNamespace(extra=extra)


def test_event_months_are_the_features_events_months_ascending_once_each() -> None:
    """A first run after unpausing receives every earlier event, newest first: the months come back sorted, each
    once, and only from the named Asset."""
    features, other = Asset("file:///lake/features"), Asset("gs://models/registry/aliases/challenger")
    context = {"triggering_asset_events": {
        features: [_event(month="2013-03"), _event(month="2013-01"), _event(month="2013-03"), _event(rows=5)],
        other: [_event(month="2099-01")],
    }}
    assert event_months(context, features.uri) == ["2013-01", "2013-03"]
    assert event_months({}, features.uri) == []


def test_run_step_fails_at_once_on_what_a_retry_cannot_fix_and_leaves_the_rest_to_retries() -> None:
    from airflow.sdk.exceptions import AirflowFailException

    from tenfold.pipelines.common import PipelineError, run_step
    from tenfold.quality.gate import AlreadyRefused
    from tenfold.quality.suites import SuiteError
    from tenfold.registry.errors import AliasConflict
    from tenfold.registry.gate import SelfComparisonError

    def raising(exc: Exception) -> None:
        raise exc

    for final in (PipelineError("bad conf"), SuiteError("suite x.json is malformed"),
                  AliasConflict("champion moved: trigger a new run"), SelfComparisonError("same model"),
                  AlreadyRefused("already refused and quarantined")):
        with pytest.raises(AirflowFailException, match=str(final)):
            run_step(raising, final)
    for passing in (ConnectionError("reset by peer"), OSError("disk full"), ValueError("boom")):
        with pytest.raises(type(passing)):
            run_step(raising, passing)


def test_a_run_scores_every_month_whose_event_came_since_the_last_success_and_a_first_run_the_newest() -> None:
    """Events held back while a run was active (max_active_runs=1) all come to the next run: each month is
    scored, none silently dropped. A first run also receives every event from before the DAG was unpaused:
    only the newest month is taken then, not the whole history."""
    import datetime as dt

    from tenfold.pipelines.common import months_to_score

    features = Asset("file:///lake/features")
    t0 = dt.datetime(2026, 12, 3, 8, tzinfo=dt.UTC)

    def at(month: str, minutes: int) -> SimpleNamespace:
        return SimpleNamespace(extra={"month": month}, timestamp=t0 + dt.timedelta(minutes=minutes))

    held_back = {"triggering_asset_events": {features: [at("2013-07", -30), at("2013-08", 5), at("2013-09", 6)]},
                 "prev_start_date_success": t0}
    assert months_to_score(held_back, features.uri) == ["2013-08", "2013-09"]
    first = {"triggering_asset_events": {features: [at("2013-01", -90), at("2013-06", -60), at("2013-07", -1)]},
             "prev_start_date_success": None}
    assert months_to_score(first, features.uri) == ["2013-07"]
    assert months_to_score({"prev_start_date_success": t0}, features.uri) == []  # a manual run: plan's default


def test_each_runs_every_item_and_then_raises_the_first_failure() -> None:
    from tenfold.pipelines.common import each

    done: list[int] = []

    def step(i: int) -> int:
        if i == 2:
            raise ValueError("month 2 failed")
        done.append(i)
        return i * 10

    assert each([1, 3], step) == [10, 30]
    with pytest.raises(ValueError, match="month 2 failed"):
        each([1, 2, 3], step)
    assert done == [1, 3, 1, 3], "the months after the failing one still ran"
