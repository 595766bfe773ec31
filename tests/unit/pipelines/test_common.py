"""Helpers every DAG's tasks share (tenfold.pipelines.common)."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import pytest
from airflow.sdk import Asset

from tenfold.pipelines.common import RunState, event_months, run_step
from tenfold.registry.gate import HoldoutRef


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
    from tenfold.registry.errors import AliasConflict, IntegrityError, PreconditionsNotEnforced, VersionConflict
    from tenfold.registry.gate import SelfComparisonError

    def raising(exc: Exception) -> None:
        raise exc

    # The registry's refusals too: a store that ignores preconditions (gcp-storage-emulator), a version's object
    # already there with other bytes, a stored version that fails its hashes. Each was retried, failing the same way,
    # and then said as "a fault in the code ... report it".
    for final in (PipelineError("bad conf"), SuiteError("suite x.json is malformed"),
                  AliasConflict("champion moved: trigger a new run"), SelfComparisonError("same model"),
                  AlreadyRefused("already refused and quarantined"), PreconditionsNotEnforced("store ignores them"),
                  VersionConflict("v3 exists with other content"), IntegrityError("v3's weights fail their hash")):
        with pytest.raises(AirflowFailException, match=str(final)):
            run_step(raising, final)
    for passing in (ConnectionError("reset by peer"), OSError("disk full"), ValueError("boom")):
        with pytest.raises(type(passing)):
            run_step(raising, passing)


@dataclasses.dataclass(frozen=True)
class Trained(RunState):
    """A state holding a nested one that has its own from_dict (as TrainRun holds a HoldoutRef)."""

    holdout: HoldoutRef


@pytest.mark.parametrize("change", ["extra", "missing", "nested missing"])
def test_an_xcom_of_another_version_fails_the_task_at_once(change: str) -> None:
    """build_features' tasks read the upstream XCom outside run_step, and a missing field was a TypeError: either way
    Airflow retried twice (30 s apart) what no retry can mend, then failed with a traceback. A nested state's own
    from_dict missing a key (train_model's HoldoutRef without its digest) was a KeyError, retried the same way."""
    from airflow.sdk.exceptions import AirflowFailException

    from tenfold.config import build_settings
    from tenfold.pipelines.build_features import FeaturesRun, plan

    if change == "nested missing":
        with pytest.raises(AirflowFailException, match="the DAG and tenfold are of different versions"):
            run_step(lambda: Trained.from_xcom({"holdout": {"partitions": ["2013-01"]}}))
        assert Trained.from_xcom({"holdout": {"partitions": ["2013-01"], "digest": "d"}}).holdout.digest == "d"
        return
    body = plan(build_settings("local"), dag_id="d", run_id="r1", logical_date=None, month="2013-02").to_xcom()
    if change == "extra":
        body["bogus"] = 1
    else:
        body.pop("staging_key")
    with pytest.raises(AirflowFailException, match="the DAG and tenfold are of different versions"):
        run_step(lambda: FeaturesRun.from_xcom(body))
