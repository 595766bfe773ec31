"""What a step and conclude do at the edges, on fake adapters (the real ones run in tests/serving/test_rollout.py):
a router call that fails as a rollback sets the weight, no data until the deadline, an abort before deploy,
and a champion that moved while every step passed."""

from __future__ import annotations

import datetime as dt
from types import SimpleNamespace
from typing import Any

import pytest

from tenfold.config.serving import RolloutSettings
from tenfold.pipelines import rollout_model as pipeline
from tenfold.registry.registry import CHAMPION
from tenfold.rollout import ArmTraffic
from tenfold.rollout.analysis import Accuracy

from .test_analyse_windows import T0, Clock, Deployer, Registry


class Router:
    """The split as the rollout sets it; ``fail_on_zero`` calls setting 0 raise first (a socket hiccup, a URL
    map changed under it), as a real router's call can."""

    def __init__(self, fail_on_zero: int = 0) -> None:
        self.percent, self.fail_on_zero, self.calls = 0, fail_on_zero, []

    def set_canary_percent(self, percent: int) -> None:
        self.calls.append(percent)
        if percent == 0 and self.fail_on_zero:
            self.fail_on_zero -= 1
            raise ConnectionError("the router did not answer")
        self.percent = percent

    def canary_percent(self) -> int:
        return self.percent


class Observer:
    def __init__(self, canary_errors: int = 0, canary_requests: int = 400) -> None:
        self.canary_errors, self.canary_requests = canary_errors, canary_requests

    def traffic(self, since: dt.datetime, until: dt.datetime) -> dict[str, ArmTraffic]:
        lat = tuple(float(x % 40 + 10) for x in range(400))
        return {"canary": ArmTraffic(self.canary_requests, self.canary_errors, lat[: self.canary_requests]),
                "stable": ArmTraffic(400, 0, lat)}


class Rolls(Deployer):
    """A deployer that records each roll (pool, version) it is asked for."""

    def __init__(self, serving: str | None = None) -> None:
        super().__init__(*((serving,) if serving else ()))
        self.rolled: list[tuple[str, str]] = []

    def deploy(self, pool: str, version: str) -> None:
        self.rolled.append((pool, version))


class FullRegistry(Registry):
    def __init__(self, champion: str = "v1") -> None:
        super().__init__()
        self.champion, self.decisions, self.promoted = champion, {}, []
        self.history: list[Any] = []  # the champion's moves by promote, as the registry keeps them

    def resolve(self, alias: str) -> str | None:
        assert alias == CHAMPION
        return self.champion

    def record_decision(self, version: str, key: str, body: dict[str, Any]) -> None:
        self.decisions[key] = body

    def promote(self, version: str, **kwargs: Any) -> None:
        self.promoted.append(version)
        self.champion = version
        self.history.append(SimpleNamespace(version=version, details=dict(kwargs.get("details") or {})))

    def alias_history(self, alias: str) -> list[Any]:
        assert alias == CHAMPION
        return list(self.history)

    def rollouts(self, version: str | None = None) -> list[tuple[str, str, str]]:
        return [("1", "v2", "r1"), *((("2", "v3", "r2"),) if self.newer else ())]

    newer: dict[str, Any] | None = None  # the start event of a newer rollout (of v3), if one began since

    def rollout_events(self, version: str, rollout_id: str) -> dict[str, dict[str, Any]]:
        if rollout_id == "r2":
            return {"start": self.newer} if self.newer else {}
        return super().rollout_events(version, rollout_id)


def _setup(router: Router, observer: Observer, registry: FullRegistry | None = None, deployer: Deployer | None = None,
           **policy: Any) -> tuple[Any, Any, Any]:
    clock, registry = Clock(), registry or FullRegistry()
    registry.events["deployed"] = {"at": T0.isoformat()}
    rules = RolloutSettings(**{"min_requests": 50, "min_feedback": 0, "interval_s": 60, "traffic_lag_s": 0,
                               "checks_per_step": 2, "max_failed_checks": 1, "poll_s": 5, **policy})
    run = pipeline.RolloutRun(rollout_id="r1", airflow_run_id="manual__x", version="v2", champion="v1",
                              started_at=T0.isoformat(), policy=rules.model_dump(mode="json"))
    places = pipeline.Places(router=router, deployer=deployer or Deployer(), observer=observer,  # type: ignore[arg-type]
                             registry=registry,  # type: ignore[arg-type]
                             accuracy=lambda a, b, v: (Accuracy(0, None), Accuracy(0, None)), now=clock.now,
                             sleep=clock.sleep)
    return run, places, registry


def _every_step_passed(registry: FullRegistry, run: Any) -> None:
    """Record every step set and passed (two passing checks each, as ``_setup``'s policy asks)."""
    for i in range(1, len(run.steps) + 1):
        registry.events[f"s{i:02d}-set"] = {"at": T0.isoformat(), "step": i, "percent": run.steps[i - 1]}
        for c in (1, 2):
            registry.events[f"s{i:02d}-c{c:03d}"] = {"at": T0.isoformat(), "verdict": "pass", "reasons": [], "values": {}}


def test_a_rollback_whose_weight_could_not_be_set_sets_it_on_the_retry() -> None:
    """The weight goes to 0 before the outcome is recorded: a failed call fails the task with nothing recorded,
    and its retry rolls back again. (Recorded first, the retry found the end and left the canary its 25 %.)"""
    router = Router(fail_on_zero=1)
    run, places, registry = _setup(router, Observer(canary_errors=200))
    with pytest.raises(ConnectionError):
        pipeline.step(None, run, 1, p=places)  # type: ignore[arg-type]
    assert router.percent == 5 and "end" not in registry.events
    assert pipeline.step(None, run, 1, p=places) == pipeline.ROLLED_BACK  # type: ignore[arg-type]
    assert router.percent == 0 and registry.events["end"]["outcome"] == pipeline.ROLLED_BACK


def test_a_retried_step_that_finds_an_ended_rollout_takes_the_canarys_share_away() -> None:
    router = Router()
    run, places, registry = _setup(router, Observer())
    registry.events["s01-set"] = {"at": T0.isoformat(), "step": 1, "percent": 5}
    registry.events["end"] = {"at": T0.isoformat(), "outcome": pipeline.ROLLED_BACK, "reasons": ["errors"]}
    router.percent = 5  # what an earlier attempt, or code before this rule, left behind
    assert pipeline.step(None, run, 2, p=places) == pipeline.ROLLED_BACK  # type: ignore[arg-type]
    assert router.percent == 0


def test_no_data_until_the_deadline_fails_safe_without_rejecting_the_version(monkeypatch: pytest.MonkeyPatch) -> None:
    router = Router()
    run, places, registry = _setup(router, Observer(canary_requests=0), no_data_deadline_s=300)
    assert pipeline.step(None, run, 1, p=places) == pipeline.FAILED  # type: ignore[arg-type]
    assert router.percent == 0
    assert any("no data for" in r and "not rejected" in r for r in registry.events["end"]["reasons"])
    monkeypatch.setattr(pipeline, "write_report", lambda settings, rollout, record: "file:///report.html")
    alerts: list[tuple[str, dict[str, Any]]] = []
    places.alert = lambda title, details: alerts.append((title, details))
    done = pipeline.conclude(None, run, p=places)  # type: ignore[arg-type]
    assert done["outcome"] == pipeline.FAILED and done["canary_percent"] == 0
    assert registry.decisions == {}  # not marked rejected: a later rollout of it needs no retry_rejected
    assert registry.champion == "v1" and registry.promoted == []
    # A canary that got no data said nothing (the run was green): one alert, naming why and the report
    ((title, details),) = alerts
    assert title == "rollout r1 of v2: failed" and "no data for" in details["reasons"]
    assert details["report"] == "file:///report.html"
    assert pipeline.conclude(None, run, p=places) == done and len(alerts) == 1  # a re-run: no second alert


def test_an_abort_before_the_canary_was_deployed_ends_the_rollout_aborted() -> None:
    router = Router()
    run, places, registry = _setup(router, Observer())
    del registry.events["deployed"]
    registry.events["abort"] = {"at": T0.isoformat(), "by": "ana"}
    assert pipeline.step(None, run, 1, p=places) == pipeline.ABORTED  # type: ignore[arg-type]
    assert registry.events["end"]["outcome"] == pipeline.ABORTED and router.percent == 0


def test_every_step_passed_but_the_champion_moved_ends_failed_with_a_report(monkeypatch: pytest.MonkeyPatch) -> None:
    """Recorded as promoted and then refused, the rollout said "promoted" forever and never wrote its report."""
    router = Router()
    run, places, registry = _setup(router, Observer(), FullRegistry(champion="v9"))
    _every_step_passed(registry, run)
    monkeypatch.setattr(pipeline, "write_report", lambda settings, rollout, record: "file:///report.html")
    done = pipeline.conclude(None, run, p=places)  # type: ignore[arg-type]
    assert done["outcome"] == pipeline.FAILED and done["report"] == "file:///report.html"
    assert any("the champion moved to v9" in r for r in done["reasons"])
    assert registry.promoted == [] and registry.champion == "v9" and router.percent == 0
    assert registry.decisions == {}


@pytest.mark.parametrize("what", ["another version", "another share"])
def test_a_canary_no_longer_under_test_ends_failed_not_judged(what: str) -> None:
    """A fleet restarted under the rollout serves the champion in the canary pool at the settings' split: checks
    would compare champion with champion (and pass). The step ends failed, the version not judged either way."""
    router, deployer = Router(), Deployer()
    run, places, registry = _setup(router, Observer(), deployer=deployer)
    registry.events["s01-set"] = {"at": T0.isoformat(), "step": 1, "percent": 5}
    router.percent = 5
    if what == "another version":
        deployer.version = "v1"
    else:
        router.percent = 0
    assert pipeline.step(None, run, 1, p=places) == pipeline.FAILED  # type: ignore[arg-type]
    assert router.percent == 0
    (reason,) = registry.events["end"]["reasons"]
    assert ("serves v1, not v2" if what == "another version" else "share is 0 %, not this step's 5 %") in reason
    assert not any(k.startswith("s01-c") for k in registry.events)  # no check was judged on it


def test_a_pool_between_versions_is_not_judged_until_it_serves_the_version() -> None:
    class Rolling(Deployer):
        """Between versions for the first two looks, then serving the version under test."""

        def __init__(self) -> None:
            super().__init__(None)
            self.looks = 0

        def pool_version(self, pool: str) -> str | None:
            self.looks += 1
            return "v2" if self.looks > 2 else None

    router = Router()
    run, places, registry = _setup(router, Observer(), deployer=Rolling())
    assert pipeline.step(None, run, 1, p=places) == pipeline.PASS  # type: ignore[arg-type]
    verdicts = [(e["verdict"], e["reasons"]) for k, e in registry.events.items() if k.startswith("s01-c")]
    assert [v for v, _ in verdicts] == ["no_data", "no_data", "pass", "pass"]
    assert all("between versions" in r[0] for v, r in verdicts if v == "no_data")


def test_a_cleared_step_of_an_ended_rollout_leaves_a_newer_rollouts_weight_alone() -> None:
    router = Router()
    run, places, registry = _setup(router, Observer())
    registry.events["end"] = {"at": T0.isoformat(), "outcome": pipeline.FAILED, "reasons": ["no data"]}
    newer = pipeline.RolloutRun(rollout_id="r2", airflow_run_id="manual__y", version="v3", champion="v1",
                                started_at=T0.isoformat(), policy=run.policy)
    registry.newer = {"at": T0.isoformat(), "run": newer.to_xcom()}
    router.percent = 25  # the newer rollout's canary, at its step 2
    assert pipeline.step(None, run, 1, p=places) == pipeline.FAILED  # type: ignore[arg-type]
    assert router.percent == 25


def test_a_no_data_deadline_whose_weight_call_fails_is_still_failed_on_the_retry() -> None:
    """The end is recorded before the weight: a failing router call leaves the end, and the retry sets the
    weight. (Recorded after it, the retry took the deadline check for an ordinary failed check: it carried on
    toward promotion, or with max_failed_checks 1 rejected the version.)"""
    router = Router(fail_on_zero=1)
    run, places, registry = _setup(router, Observer(canary_requests=0), no_data_deadline_s=300, max_failed_checks=2)
    with pytest.raises(ConnectionError):
        pipeline.step(None, run, 1, p=places)  # type: ignore[arg-type]
    assert registry.events["end"]["outcome"] == pipeline.FAILED
    assert pipeline.step(None, run, 1, p=places) == pipeline.FAILED  # type: ignore[arg-type]
    assert router.percent == 0


def test_an_abort_that_lands_before_the_share_is_read_ends_aborted_not_failed() -> None:
    class AbortingRouter(Router):
        """The CLI's abort: recorded, then the weight set to 0, between the step's abort check and its read."""

        def canary_percent(self) -> int:
            registry.events.setdefault("abort", {"at": T0.isoformat(), "by": "ana"})
            self.percent = 0
            return 0

    router = AbortingRouter()
    run, places, registry = _setup(router, Observer())
    assert pipeline.step(None, run, 1, p=places) == pipeline.ABORTED  # type: ignore[arg-type]
    assert registry.events["end"]["outcome"] == pipeline.ABORTED


def test_a_rollback_whose_weight_call_failed_on_every_try_still_rejects_the_version(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The failed check is recorded, but each try of the step fails to take the canary's share away (HAProxy
    restarting, a URL map operation timing out), so no end is recorded. conclude used to end it FAILED "without a
    verdict", and the version, never marked rejected, could be rolled out again without retry_rejected."""
    router = Router(fail_on_zero=3)
    run, places, registry = _setup(router, Observer(canary_errors=200))
    for _ in range(3):
        with pytest.raises(ConnectionError):
            pipeline.step(None, run, 1, p=places)  # type: ignore[arg-type]
    assert "end" not in registry.events
    monkeypatch.setattr(pipeline, "write_report", lambda settings, rollout, record: "file:///report.html")
    done = pipeline.conclude(None, run, p=places)  # type: ignore[arg-type]
    assert done["outcome"] == pipeline.ROLLED_BACK and router.percent == 0
    (decision,) = registry.decisions.values()
    assert decision["rejected"] and decision["reasons"] == done["reasons"] and done["reasons"]


def test_a_champion_moved_just_before_the_promotion_leaves_the_stable_pool_alone(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Every step passed. The alias moves by compare-and-swap before the stable pool rolls: a champion moved by hand
    meanwhile makes the swap fail, and the pool (which took minutes to roll) was never touched. It used to roll the
    pool first and fail the swap after, leaving it on a version that was never promoted. The refusal is recorded
    and the rollout ends failed, with its report and an alert: it used to raise, and the record said "promoted"
    for ever with no report."""
    from tenfold.registry.errors import AliasConflict
    from tenfold.rollout.record import describe, outcome

    class Swapping(FullRegistry):
        def promote(self, version: str, **kwargs: Any) -> None:
            if kwargs.get("expected") != self.champion:
                raise AliasConflict(f"champion is {self.champion}, not {kwargs.get('expected')}")
            super().promote(version, **kwargs)

    class MovesChampion(Router):
        moved = False

        def set_canary_percent(self, percent: int) -> None:
            super().set_canary_percent(percent)
            if percent == 100 and not self.moved:  # an operator's `tenfold models promote v7`, between the check
                registry.champion, self.moved = "v7", True  # and the swap

    router, deployer = MovesChampion(), Rolls()
    run, places, registry = _setup(router, Observer(), Swapping(), deployer)
    _every_step_passed(registry, run)
    reports: list[str | None] = []
    monkeypatch.setattr(pipeline, "write_report",
                        lambda settings, rollout, record: reports.append(outcome(record)) or "file:///report.html")
    alerts: list[str] = []
    places.alert = lambda title, details: alerts.append(title)
    done = pipeline.conclude(None, run, p=places)  # type: ignore[arg-type]
    assert done["outcome"] == pipeline.FAILED and done["report"] == "file:///report.html"
    assert any("the champion moved to v7 during rollout r1" in r for r in done["reasons"])
    assert deployer.rolled == [], "the stable pool was rolled to a version that was never promoted"
    assert registry.champion == "v7" and registry.promoted == [] and router.percent == 0
    assert registry.events["end"]["outcome"] == pipeline.PROMOTED  # decided before the swap failed
    assert outcome(registry.events) == pipeline.FAILED and reports == [pipeline.FAILED]
    assert describe(run.rollout, registry.events).endswith("state: failed")
    assert alerts == ["rollout r1 of v2: failed"]

    registry.champion = "v1"  # moved back: the verdict is still not current, and a re-run does not promote
    assert pipeline.conclude(None, run, p=places) == done  # type: ignore[arg-type]
    assert registry.promoted == [] and deployer.rolled == [] and len(alerts) == 1


def test_a_refused_promotion_is_not_carried_out_by_a_retry_after_the_champion_moved_back(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """conclude recorded the refusal and died before its ``done`` (the report's write failed); the champion was
    moved back meanwhile. The retry must not promote on a verdict against a control that was not the champion."""
    router = Router()
    run, places, registry = _setup(router, Observer(), FullRegistry(champion="v9"))
    _every_step_passed(registry, run)
    registry.events["end"] = {"at": T0.isoformat(), "outcome": pipeline.PROMOTED, "reasons": []}

    def lost(settings: Any, rollout: Any, record: Any) -> str:
        raise OSError("the lake did not answer")

    monkeypatch.setattr(pipeline, "write_report", lost)
    with pytest.raises(OSError):
        pipeline.conclude(None, run, p=places)  # type: ignore[arg-type]
    assert "promotion_refused" in registry.events and "done" not in registry.events
    registry.champion = "v1"
    monkeypatch.setattr(pipeline, "write_report", lambda settings, rollout, record: "file:///report.html")
    done = pipeline.conclude(None, run, p=places)  # type: ignore[arg-type]
    assert done["outcome"] == pipeline.FAILED and registry.promoted == [] and router.percent == 0
    assert 100 not in router.calls


def _superseded_by_a_newer_rollout(registry: FullRegistry, run: Any) -> None:
    newer = pipeline.RolloutRun(rollout_id="r2", airflow_run_id="manual__y", version="v3", champion="v1",
                                started_at=T0.isoformat(), policy=run.policy)
    registry.newer = {"at": T0.isoformat(), "run": newer.to_xcom()}


def test_a_cleared_step_of_an_older_rollout_that_never_ended_leaves_a_newer_rollouts_weight_alone() -> None:
    """An older run failed without its end (conclude never ran); a newer rollout began. A step of the old run
    cleared now used to set its step's share on the newer rollout's canary pool (serving another version)."""
    router = Router()
    run, places, registry = _setup(router, Observer())
    _superseded_by_a_newer_rollout(registry, run)
    router.percent = 25  # the newer rollout's canary, at its step 2
    assert pipeline.step(None, run, 1, p=places) == pipeline.FAILED  # type: ignore[arg-type]
    assert router.calls == [] and router.percent == 25
    (reason,) = registry.events["end"]["reasons"]
    assert "rollout r2 started after this one" in reason
    assert not any(k.startswith("s01-") for k in registry.events)


def test_a_cleared_deploy_of_an_older_rollout_leaves_the_newer_rollouts_canary_pool_alone() -> None:
    router, deployer = Router(), Rolls("v3")
    run, places, registry = _setup(router, Observer(), deployer=deployer)
    del registry.events["deployed"]
    _superseded_by_a_newer_rollout(registry, run)
    router.percent = 25
    pipeline.deploy(None, run, p=places)  # type: ignore[arg-type]
    assert deployer.rolled == [] and router.calls == []
    assert registry.events["end"]["outcome"] == pipeline.FAILED and "deployed" not in registry.events


def test_a_cleared_conclude_of_an_older_rollout_that_never_ended_ends_it_failed_with_a_report(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Every step passed, but its conclude gave up before recording the end; a newer rollout began. Cleared now, the
    conclude recorded "promoted" and then refused to carry it out over the newer rollout, on every try: the record
    said promoted for ever, with no report, and `tenfold rollout abort` refused it as promoted."""
    from tenfold.rollout.record import outcome

    router = Router()
    run, places, registry = _setup(router, Observer())
    _every_step_passed(registry, run)
    _superseded_by_a_newer_rollout(registry, run)
    router.percent = 25
    monkeypatch.setattr(pipeline, "write_report", lambda settings, rollout, record: "file:///report.html")
    done = pipeline.conclude(None, run, p=places)  # type: ignore[arg-type]
    assert done["outcome"] == pipeline.FAILED and "rollout r2 started after this one" in done["reasons"][0]
    assert outcome(registry.events) == pipeline.FAILED and done["report"] == "file:///report.html"
    assert registry.promoted == [] and router.calls == [] and router.percent == 25


def test_an_aborted_older_rollout_leaves_a_newer_rollouts_weight_alone() -> None:
    router = Router()
    run, places, registry = _setup(router, Observer())
    registry.events["abort"] = {"at": T0.isoformat(), "by": "ana"}
    _superseded_by_a_newer_rollout(registry, run)
    router.percent = 25
    assert pipeline.step(None, run, 1, p=places) == pipeline.ABORTED  # type: ignore[arg-type]
    assert router.calls == [] and router.percent == 25


@pytest.mark.parametrize("outcome", [pipeline.ROLLED_BACK, pipeline.PROMOTED])
def test_a_rerun_conclude_of_an_older_rollout_leaves_a_newer_rollouts_split_alone(
        monkeypatch: pytest.MonkeyPatch, outcome: str) -> None:
    """`step` had this guard and `conclude` did not: a re-run of an old run's conclude set the weight to 0 (or to
    100, then 0, while the stable pool rolled) under a newer rollout whose canary the weight now is."""
    router = Router()
    run, places, registry = _setup(router, Observer())
    registry.events["end"] = {"at": T0.isoformat(), "outcome": outcome, "reasons": ["errors"]}
    newer = pipeline.RolloutRun(rollout_id="r2", airflow_run_id="manual__y", version="v3", champion="v1",
                                started_at=T0.isoformat(), policy=run.policy)
    registry.newer = {"at": T0.isoformat(), "run": newer.to_xcom()}
    router.percent = 25  # the newer rollout's canary, at its step 2
    monkeypatch.setattr(pipeline, "write_report", lambda settings, rollout, record: "file:///report.html")
    if outcome == pipeline.PROMOTED:
        with pytest.raises(pipeline.PipelineError, match="a newer rollout has started since"):
            pipeline.conclude(None, run, p=places)  # type: ignore[arg-type]
        assert registry.promoted == []
    else:
        assert pipeline.conclude(None, run, p=places)["outcome"] == outcome  # type: ignore[arg-type]
    assert router.calls == [] and router.percent == 25


def test_a_rollout_stopped_by_a_failed_step_task_is_not_alerted_twice(monkeypatch: pytest.MonkeyPatch) -> None:
    """Airflow's failure callback alerted the step task that gave up; conclude then alerted the same failure again."""
    run, places, _ = _setup(Router(), Observer())
    monkeypatch.setattr(pipeline, "write_report", lambda settings, rollout, record: "file:///report.html")
    alerts: list[str] = []
    places.alert = lambda title, details: alerts.append(title)
    done = pipeline.conclude(None, run, p=places)  # type: ignore[arg-type]
    assert done["outcome"] == pipeline.FAILED and pipeline.STEP_TASK_FAILED in done["reasons"][0]
    assert alerts == []


def test_an_abort_that_lands_while_conclude_decides_wins_over_the_promotion(monkeypatch: pytest.MonkeyPatch) -> None:
    """conclude read the record (no abort), then `tenfold rollout abort` recorded its abort and set the weight to 0,
    then conclude recorded promoted: the canary went back to 100 % and the champion moved, though the CLI had said
    "moves no alias". The end is the one create-only event both record: the first decides."""
    from tenfold.rollout.record import record_abort

    class AbortedMidway(FullRegistry):
        landed = False

        def resolve(self, alias: str) -> str | None:
            if not self.landed:  # the CLI's abort, between conclude's read of the record and its decision
                self.landed = True
                assert record_abort(self, run.rollout, by="oncall") == (True, pipeline.ABORTED)
            return super().resolve(alias)

    router = Router()
    run, places, registry = _setup(router, Observer(), AbortedMidway())
    _every_step_passed(registry, run)
    monkeypatch.setattr(pipeline, "write_report", lambda settings, rollout, record: "file:///report.html")
    done = pipeline.conclude(None, run, p=places)  # type: ignore[arg-type]
    assert done["outcome"] == pipeline.ABORTED and registry.events["end"]["reasons"] == ["aborted by oncall"]
    assert registry.promoted == [] and registry.champion == "v1"
    assert 100 not in router.calls and router.percent == 0


def test_an_abort_after_the_promotion_was_recorded_says_so_and_changes_nothing() -> None:
    from tenfold.rollout.record import record_abort

    run, _places, registry = _setup(Router(), Observer())
    registry.events["end"] = {"at": T0.isoformat(), "outcome": pipeline.PROMOTED, "reasons": []}
    assert record_abort(registry, run.rollout, by="oncall") == (True, pipeline.PROMOTED)
    assert registry.events["end"]["outcome"] == pipeline.PROMOTED


@pytest.mark.parametrize("fault", ["no-login-name", "router-unreachable"])
def test_the_abort_command_says_recorded_only_when_it_is(monkeypatch: pytest.MonkeyPatch, fault: str) -> None:
    """The router was built and the user looked up before the abort was recorded, under one `except`: a container
    user with no passwd entry (getpass's KeyError) or a router that could not be built printed "the abort is
    recorded" when nothing was, and the DAG went on stepping."""
    import getpass
    import os

    from typer.testing import CliRunner

    from tenfold.rollout import adapters, record
    from tenfold.rollout import cli as rollout_cli

    router = Router()
    run, _places, registry = _setup(router, Observer())
    router.percent = 25
    monkeypatch.setattr(rollout_cli, "get_settings", lambda: None)
    monkeypatch.setattr(rollout_cli, "registry_of", lambda settings: registry)
    monkeypatch.setattr(record, "latest", lambda reg, version: (run.rollout, dict(registry.events)))
    monkeypatch.setattr(record, "newer_rollout", lambda reg, rollout_id: None)
    if fault == "no-login-name":
        monkeypatch.setattr(getpass, "getuser", lambda: (_ for _ in ()).throw(KeyError("getpwuid(): uid not found")))
        monkeypatch.setattr(adapters, "router", lambda settings: router)
    else:
        monkeypatch.setattr(adapters, "router", lambda settings: (_ for _ in ()).throw(RuntimeError("no credentials")))
    result = CliRunner().invoke(rollout_cli.app, ["abort"])
    assert "abort" in registry.events and registry.events["end"]["outcome"] == pipeline.ABORTED
    if fault == "no-login-name":
        assert result.exit_code == 0, result.output
        assert registry.events["abort"]["by"] == f"uid {os.getuid()}" and router.percent == 0
    else:
        assert result.exit_code == 1 and "the abort is recorded, but the canary weight could not be set" in result.output
        # What to do works in the cloud too: run the abort again (`tenfold serve split` reaches the local fleet only).
        assert "run `tenfold rollout abort` again" in result.output and "serve split" not in result.output


def test_a_retried_conclude_does_not_promote_again_over_a_rollback_by_hand(monkeypatch: pytest.MonkeyPatch) -> None:
    """conclude promoted v2 and the stable pool's roll failed; the operator rolled the champion back to v1 (what
    `tenfold rollout abort` points to). The retry found the champion where the rollout started, promoted v2 again,
    rolled the stable pool to it and recorded "promoted"."""
    class FailsOnce(Rolls):
        def deploy(self, pool: str, version: str) -> None:
            if not self.rolled:
                self.rolled.append(("failed", version))
                raise TimeoutError("the stable group did not become healthy")
            super().deploy(pool, version)

    router, deployer = Router(), FailsOnce()
    run, places, registry = _setup(router, Observer(), FullRegistry(), deployer)
    _every_step_passed(registry, run)
    monkeypatch.setattr(pipeline, "write_report", lambda settings, rollout, record: "file:///report.html")
    places.alert = lambda title, details: None
    with pytest.raises(TimeoutError):
        pipeline.conclude(None, run, p=places)  # type: ignore[arg-type]
    assert registry.promoted == ["v2"] and registry.champion == "v2" and "promoted_alias" in registry.events

    registry.champion = "v1"  # `tenfold models rollback`
    done = pipeline.conclude(None, run, p=places)  # type: ignore[arg-type]
    assert registry.promoted == ["v2"] and registry.champion == "v1", "the retry promoted again over the rollback"
    # The stable pool (which may serve v2 already) goes back to the champion before the canary's share goes to it
    assert deployer.rolled == [("failed", "v2"), ("stable", "v1")] and router.percent == 0
    assert done["outcome"] == pipeline.FAILED and "moved to v1 by hand" in done["reasons"][0]

    # Without the rollback, the retry carries the promotion out: the stable pool rolls to v2.
    run2, places2, registry2 = _setup(Router(), Observer(), FullRegistry(), FailsOnce())
    _every_step_passed(registry2, run2)
    places2.alert = lambda title, details: None
    with pytest.raises(TimeoutError):
        pipeline.conclude(None, run2, p=places2)  # type: ignore[arg-type]
    assert pipeline.conclude(None, run2, p=places2)["outcome"] == pipeline.PROMOTED  # type: ignore[arg-type]
    assert places2.deployer.rolled[-1] == ("stable", "v2") and places2.router.percent == 0


def test_a_rollback_by_hand_during_the_stable_pools_roll_is_not_undone(monkeypatch: pytest.MonkeyPatch) -> None:
    """conclude moved the champion to v2 and rolled the stable pool (minutes); during the roll the operator ran
    `tenfold models rollback` (champion back to v1, what `tenfold rollout abort` points to for a promoted rollout).
    conclude finished the roll and set the canary to 0: everyone on v2 in the stable pool while the champion was v1,
    recorded "promoted", no alert. Read again after the roll, the champion sends the pool back and the rollout fails."""
    class RolledBackDuringRoll(Rolls):
        def deploy(self, pool: str, version: str) -> None:
            super().deploy(pool, version)
            if (pool, version) == ("stable", "v2"):
                registry.champion = "v1"  # `tenfold models rollback` while the stable group rolled

    router, deployer = Router(), RolledBackDuringRoll()
    run, places, registry = _setup(router, Observer(), FullRegistry(), deployer)
    _every_step_passed(registry, run)
    monkeypatch.setattr(pipeline, "write_report", lambda settings, rollout, record: "file:///report.html")
    alerts: list[tuple[str, dict[str, Any]]] = []
    places.alert = lambda title, details: alerts.append((title, details))
    done = pipeline.conclude(None, run, p=places)  # type: ignore[arg-type]
    assert registry.promoted == ["v2"] and registry.champion == "v1", "the rollback by hand was undone"
    assert deployer.rolled == [("stable", "v2"), ("stable", "v1")] and router.percent == 0
    assert done["outcome"] == pipeline.FAILED and done["champion"] == "v1" and done["canary_percent"] == 0
    assert "moved to v1 by hand" in done["reasons"][0] and "promotion_refused" in registry.events
    assert len(alerts) == 1 and alerts[0][0] == "rollout r1 of v2: failed"
    # A retry changes nothing and alerts no more.
    assert pipeline.conclude(None, run, p=places)["outcome"] == pipeline.FAILED  # type: ignore[arg-type]
    assert len(alerts) == 1 and deployer.rolled[-1] == ("stable", "v1") and registry.promoted == ["v2"]


@pytest.mark.parametrize("carried_out", [False, True])
def test_an_abort_that_finds_a_promotion_not_carried_out_does_not_advise_a_rollback(
        monkeypatch: pytest.MonkeyPatch, carried_out: bool) -> None:
    """The abort found conclude's end "promoted" recorded first, but conclude had not moved the champion yet (v1,
    no promoted_alias): the CLI said "was promoted ... `tenfold models rollback` moves the champion back", and
    following it demoted v1, the champion the canary was judged against, to its predecessor."""
    from typer.testing import CliRunner

    from tenfold.rollout import adapters, record
    from tenfold.rollout import cli as rollout_cli

    router = Router()
    run, _places, registry = _setup(router, Observer())
    _every_step_passed(registry, run)
    router.percent = 100
    before = dict(registry.events)  # what the CLI read: in progress
    registry.events["end"] = {"at": T0.isoformat(), "outcome": pipeline.PROMOTED, "reasons": []}  # conclude, meanwhile
    if carried_out:
        registry.promote("v2")
        registry.events["promoted_alias"] = {"at": T0.isoformat(), "champion": "v2"}
    monkeypatch.setattr(rollout_cli, "get_settings", lambda: None)
    monkeypatch.setattr(rollout_cli, "registry_of", lambda settings: registry)
    monkeypatch.setattr(record, "latest", lambda reg, version: (run.rollout, before))
    monkeypatch.setattr(record, "newer_rollout", lambda reg, rollout_id: None)
    monkeypatch.setattr(adapters, "router", lambda settings: router)
    result = CliRunner().invoke(rollout_cli.app, ["abort"])
    assert result.exit_code == 2, result.output
    assert router.percent == 100 and registry.events["end"]["outcome"] == pipeline.PROMOTED
    if carried_out:
        assert "was promoted before the abort landed" in result.output and "tenfold models rollback" in result.output
    else:
        assert registry.champion == "v1"
        assert "models rollback" not in result.output and "was promoted" not in result.output
        assert "not carried out yet" in result.output and "conclude" in result.output


def test_both_arms_accuracy_counts_from_when_the_canary_first_served() -> None:
    """It counted from the plan's time, before the canary's deploy (minutes on GPUs), when only the stable arm
    served: the control's accuracy then held labels of a time the canary never saw, and a drift over time was
    charged to the canary, check after check (the counts are cumulative), until it was rolled back."""
    import dataclasses

    router = Router()
    run, places, registry = _setup(router, Observer())
    served = T0 + dt.timedelta(minutes=15)
    registry.events["s01-set"] = {"at": served.isoformat(), "step": 1, "percent": 5}
    asked: list[dt.datetime] = []

    def accuracy(since: dt.datetime, until: dt.datetime, version: str) -> tuple[Accuracy, Accuracy]:
        asked.append(since)
        return Accuracy(0, None), Accuracy(0, None)

    router.percent = 5  # what step 1 set
    clock = [served]

    def now() -> dt.datetime:
        return clock[0]

    def sleep(seconds: float) -> None:
        clock[0] += dt.timedelta(seconds=max(seconds, 0.001))

    places = dataclasses.replace(places, accuracy=accuracy, now=now, sleep=sleep)
    assert pipeline.step(None, run, 1, p=places) == pipeline.PASS  # type: ignore[arg-type]
    assert asked and set(asked) == {served}
    check = next(e for k, e in registry.events.items() if k.startswith("s01-c"))
    assert check["values"]["accuracy_since"] == served.isoformat()


def test_a_deploy_cleared_after_its_rollout_ended_deploys_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    """The canary's deploy gave up; conclude (all_done) ended the rollout failed, saying "a step task failed". The
    operator, told to run the deploy again, cleared it: it rolled the canary group (GPU VMs, minutes) for a rollout
    whose steps return at once."""
    deployer = Rolls()
    run, places, registry = _setup(Router(), Observer(), deployer=deployer)
    del registry.events["deployed"]  # the deploy never finished
    monkeypatch.setattr(pipeline, "write_report", lambda settings, rollout, record: "file:///report.html")
    alerts: list[str] = []
    places.alert = lambda title, details: alerts.append(title)
    done = pipeline.conclude(None, run, p=places)  # type: ignore[arg-type]
    assert done["outcome"] == pipeline.FAILED and pipeline.DEPLOY_TASK_FAILED in done["reasons"][0]
    assert alerts == []  # the deploy task's own failure was alerted by Airflow's callback
    assert pipeline.deploy(None, run, p=places) == run  # type: ignore[arg-type]
    assert deployer.rolled == [] and "deployed" not in registry.events


def test_a_rollout_of_one_step_at_100_percent_has_a_control_before_it() -> None:
    """With the windows counted from the first step, a lone 100 % step had a control window [start, start): empty, so
    every check was "no data" and the rollout failed at the deadline, whatever the canary did."""
    import dataclasses

    router = Router()
    run, places, registry = _setup(router, Observer(), steps=(100,))
    served = T0 + dt.timedelta(minutes=15)
    registry.events["s01-set"] = {"at": served.isoformat(), "step": 1, "percent": 100}
    router.percent = 100
    asked: list[tuple[dt.datetime, dt.datetime]] = []

    class Seen(Observer):
        def traffic(self, since: dt.datetime, until: dt.datetime) -> dict[str, ArmTraffic]:
            asked.append((since, until))
            return super().traffic(since, until)

    clock = [served]

    def sleep(seconds: float) -> None:
        clock[0] += dt.timedelta(seconds=max(seconds, 0.001))

    places = dataclasses.replace(places, observer=Seen(), now=lambda: clock[0], sleep=sleep)
    assert pipeline.step(None, run, 1, p=places) == pipeline.PASS  # type: ignore[arg-type]
    assert (T0, served) in asked  # the control: what stable served from the plan until the step began


@pytest.mark.parametrize(("control", "said"), [
    (ArmTraffic(10, 0, tuple(20.0 for _ in range(10))), "served 10 requests, fewer than the"),
    # In the cloud a request its client gave up on is logged without a latency: enough requests, too few timed.
    (ArmTraffic(80, 0, tuple(20.0 for _ in range(49))), "served 80 requests but only 49 latency samples"),
], ids=["too-few-requests", "too-few-latencies"])
def test_a_lone_100_percent_step_whose_control_is_too_thin_fails_at_once_not_at_the_deadline(
        control: ArmTraffic, said: str) -> None:
    """The stable arm served too little between the plan and a lone 100 % step (10 requests; or 80, only 49 of them
    timed, so the latency test had too few samples): that window never grows at 100 %, so every check was "no data"
    on the same frozen control and every user stayed on the unjudged version until the no-data deadline."""
    import dataclasses

    router = Router()
    run, places, registry = _setup(router, Observer(), steps=(100,))
    served = T0 + dt.timedelta(minutes=15)
    registry.events["s01-set"] = {"at": served.isoformat(), "step": 1, "percent": 100}
    router.percent = 100

    class Thin(Observer):
        def traffic(self, since: dt.datetime, until: dt.datetime) -> dict[str, ArmTraffic]:
            seen = super().traffic(since, until)
            if until <= served:  # the control: what stable served before the step
                seen["stable"] = control
            return seen

    clock = [served]

    def sleep(seconds: float) -> None:
        clock[0] += dt.timedelta(seconds=max(seconds, 0.001))

    places = dataclasses.replace(places, observer=Thin(), now=lambda: clock[0], sleep=sleep)
    assert pipeline.step(None, run, 1, p=places) == pipeline.FAILED  # type: ignore[arg-type]
    waited = (clock[0] - served).total_seconds()
    assert waited < run.rollout_policy.no_data_deadline_s / 2, waited  # the first check, not the deadline
    assert [k for k in registry.events if k.startswith("s01-c")] == ["s01-c001"]
    done = registry.events["end"]
    assert done["outcome"] == pipeline.FAILED and "the version is not rejected" in done["reasons"][-1]
    assert said in done["reasons"][-1] and "a step below 100 %" in done["reasons"][-1], done["reasons"]


def test_a_retry_that_finds_no_promoted_event_still_knows_its_promotion_from_the_champions_history(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """promote landed, then recording ``promoted_alias`` failed (the try died between); the operator rolled the
    champion back. The retry found no event and the champion where the rollout started: it promoted again."""
    router = Router()
    run, places, registry = _setup(router, Observer(), FullRegistry(), Rolls())
    _every_step_passed(registry, run)
    monkeypatch.setattr(pipeline, "write_report", lambda settings, rollout, record: "file:///report.html")
    places.alert = lambda title, details: None
    real = pipeline._record

    def dies_after_promoting(p: Any, r: Any, key: str, body: Any) -> Any:
        if key == "promoted_alias":
            raise ConnectionError("the store went away")
        return real(p, r, key, body)

    monkeypatch.setattr(pipeline, "_record", dies_after_promoting)
    with pytest.raises(ConnectionError):
        pipeline.conclude(None, run, p=places)  # type: ignore[arg-type]
    monkeypatch.setattr(pipeline, "_record", real)
    assert registry.promoted == ["v2"] and "promoted_alias" not in registry.events
    registry.champion = "v1"  # `tenfold models rollback`
    done = pipeline.conclude(None, run, p=places)  # type: ignore[arg-type]
    assert registry.promoted == ["v2"] and registry.champion == "v1" and done["outcome"] == pipeline.FAILED
    assert places.deployer.rolled == [("stable", "v1")] and router.percent == 0


def test_a_passed_step_run_again_after_the_next_step_started_passes_and_leaves_the_split_alone() -> None:
    """A DAG run cleared after step 3 and conclude failed (the registry down): step 1, which had passed, found the
    later steps' weights recorded and refused ("step 1 cannot start"), and conclude then ended a healthy rollout
    FAILED with the canary at 0 %."""
    router = Router()
    run, places, registry = _setup(router, Observer())
    _every_step_passed(registry, run)
    del registry.events[f"s{len(run.steps):02d}-c001"], registry.events[f"s{len(run.steps):02d}-c002"]
    router.percent = run.steps[-1]  # the last step's share, set before its checks
    for i in range(1, len(run.steps)):
        assert pipeline.step(None, run, i, p=places) == pipeline.PASS  # type: ignore[arg-type]
    assert router.calls == [] and router.percent == run.steps[-1] and "end" not in registry.events


def test_a_conclude_that_died_after_recording_done_sends_its_alert_on_the_re_run(monkeypatch: pytest.MonkeyPatch) -> None:
    """done is recorded before the alert goes out: a try killed while a webhook retried (or whose alert-undelivered
    write failed) left done alone, and the re-run returned it without alerting; a rolled-back run is green, so
    nothing else ever told anyone. The re-run sends it; one that finds alert-sent does not send it twice."""
    from tenfold.monitoring import alerts as alerting

    run, places, registry = _setup(Router(), Observer())
    monkeypatch.setattr(pipeline, "write_report", lambda settings, rollout, record: "file:///report.html")
    registry.events["end"] = {"at": T0.isoformat(), "outcome": pipeline.ROLLED_BACK, "reasons": ["error rate 9/9"]}
    registry.events["alert-due"] = {"at": T0.isoformat()}  # what conclude records before done, when an alert is due
    registry.events["done"] = {"at": T0.isoformat(), "outcome": pipeline.ROLLED_BACK, "reasons": ["error rate 9/9"],
                               "report": "file:///report.html", "champion": run.champion, "canary_percent": 0}
    sent: list[str] = []
    places.alert = lambda title, details: sent.append(title) or alerting.Sent(alerting.Alert(title, details, "local"))
    done = pipeline.conclude(None, run, p=places)  # type: ignore[arg-type]
    assert done["outcome"] == pipeline.ROLLED_BACK and "undelivered" not in done
    assert sent == [f"rollout {run.rollout_id} of {run.version}: rolled_back"] and "alert-sent" in registry.events
    pipeline.conclude(None, run, p=places)  # type: ignore[arg-type]
    assert len(sent) == 1, "alerted twice"


def test_a_conclude_recorded_before_alert_outcomes_were_kept_is_not_alerted_again_by_a_re_run(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A done recorded by a version that kept no alert outcome (its alert went out, untracked): read as "died before
    the outcome", a clear of that rollout's conclude paged again for a rollout long over."""
    from tenfold.monitoring import alerts as alerting

    run, places, registry = _setup(Router(), Observer())
    monkeypatch.setattr(pipeline, "write_report", lambda settings, rollout, record: "file:///report.html")
    registry.events["end"] = {"at": T0.isoformat(), "outcome": pipeline.ROLLED_BACK, "reasons": ["error rate 9/9"]}
    registry.events["done"] = {"at": T0.isoformat(), "outcome": pipeline.ROLLED_BACK, "reasons": ["error rate 9/9"],
                               "report": "file:///report.html", "champion": run.champion, "canary_percent": 0}
    sent: list[str] = []
    places.alert = lambda title, details: sent.append(title) or alerting.Sent(alerting.Alert(title, details, "local"))
    assert pipeline.conclude(None, run, p=places)["outcome"] == pipeline.ROLLED_BACK  # type: ignore[arg-type]
    assert sent == [], "an old rollout's alert sent again"


def test_a_conclude_recorded_before_alert_due_with_a_hook_that_missed_its_alert_sends_it_to_that_hook(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A record from before alert-due was kept that names the hooks its alert missed: outcomes were kept then, so a
    clear of conclude once the webhook is mended sends it there; taken for a record too old to tell, it sent nothing."""
    from tenfold.monitoring import alerts as alerting

    run, places, registry = _setup(Router(), Observer())
    monkeypatch.setattr(pipeline, "write_report", lambda settings, rollout, record: "file:///report.html")
    registry.events["end"] = {"at": T0.isoformat(), "outcome": pipeline.ROLLED_BACK, "reasons": ["error rate 9/9"]}
    registry.events["done"] = {"at": T0.isoformat(), "outcome": pipeline.ROLLED_BACK, "reasons": ["error rate 9/9"],
                               "report": "file:///report.html", "champion": run.champion, "canary_percent": 0}
    registry.events["alert-undelivered"] = {"at": T0.isoformat(), "hooks": ["webhook"]}
    again: list[list[str]] = []
    places.alert = lambda title, details: pytest.fail("sent to every hook again")
    places.alert_again = lambda title, details, hooks: again.append(list(hooks)) or alerting.Sent(
        alerting.Alert(title, details, "local"))
    pipeline.conclude(None, run, p=places)  # type: ignore[arg-type]
    assert again == [["webhook"]]


def test_a_conclude_records_its_alert_due_before_done(monkeypatch: pytest.MonkeyPatch) -> None:
    """The mark a re-run needs to tell a lost alert from an old record: written before done, so a try killed after
    done finds it."""
    from tenfold.monitoring import alerts as alerting

    run, places, registry = _setup(Router(), Observer())
    monkeypatch.setattr(pipeline, "write_report", lambda settings, rollout, record: "file:///report.html")
    registry.events["end"] = {"at": T0.isoformat(), "outcome": pipeline.ROLLED_BACK, "reasons": ["error rate 9/9"]}
    order: list[str] = []
    places.alert = lambda title, details: order.append("alert") or alerting.Sent(alerting.Alert(title, details, "local"))
    real = pipeline._record

    def recording(p: Any, run: Any, key: str, body: Any) -> Any:
        order.append(key)
        return real(p, run, key, body)

    monkeypatch.setattr(pipeline, "_record", recording)
    pipeline.conclude(None, run, p=places)  # type: ignore[arg-type]
    assert order.index("alert-due") < order.index("done") < order.index("alert") < order.index("alert-sent"), order


def _ended_with_a_missed_alert(monkeypatch: pytest.MonkeyPatch, outcome: str, reason: str,
                               missed: tuple[str, ...]) -> Any:
    """A rollout whose end is recorded (``outcome``, for ``reason``), whose report writes nowhere, and whose alert
    the ``missed`` hooks do not take: (run, places, registry)."""
    from tenfold.monitoring import alerts as alerting

    run, places, registry = _setup(Router(), Observer())
    registry.events["end"] = {"at": T0.isoformat(), "outcome": outcome, "reasons": [reason]}
    monkeypatch.setattr(pipeline, "write_report", lambda settings, rollout, record: "file:///report.html")
    places.alert = lambda title, details: alerting.Sent(alerting.Alert(title, details, "local"), failed=missed)
    return run, places, registry


def test_a_rollout_alert_a_hook_missed_is_named_so_the_failure_callback_sends_it_to_that_hook(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """conclude's alert (a canary ended FAILED for want of data) went unseen by a webhook that answered 503 through
    its tries: the DAG raised the failure as alerted, and Airflow's callback, which sends to the hooks that missed
    an alert, sent nothing."""
    from tenfold.monitoring import alerts as alerting

    run, places, registry = _ended_with_a_missed_alert(monkeypatch, pipeline.FAILED, "no data by the deadline",
                                                       ("webhook",))
    done = pipeline.conclude(None, run, p=places)  # type: ignore[arg-type]
    assert done["outcome"] == pipeline.FAILED and done["undelivered"] == ["webhook"]
    # What the DAG's task ends on: the callback sends to the webhook alone.
    with pytest.raises(pipeline.PipelineError, match="rollout failed without a verdict") as raised:
        pipeline.settled(done)
    assert not alerting.already_alerted(raised.value) and alerting.undelivered(raised.value) == ("webhook",)
    # conclude cleared and run again: what it ended with, its alert sent again to the webhook alone, still missed
    again: list[tuple[str, ...]] = []
    places.alert = lambda title, details: pytest.fail("alerted every hook twice")
    places.alert_again = lambda title, details, hooks: again.append(tuple(hooks)) or alerting.Sent(
        alerting.Alert(title, details, "local"), failed=tuple(hooks))
    assert pipeline.conclude(None, run, p=places)["undelivered"] == ["webhook"]  # type: ignore[arg-type]
    assert again == [("webhook",)]
    from tenfold.rollout.record import describe

    assert 'alert-undelivered: {"hooks": ["webhook"]}' in describe(run.rollout, registry.events)  # rollout status


def test_a_rolled_back_rollout_whose_alert_a_hook_missed_fails_so_that_hook_gets_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The DAG acted on conclude's undelivered hooks only when the outcome was FAILED: a version rejected by its canary
    whose alert a webhook missed left the run green, and the re-run of conclude returns without sending: the webhook
    never heard of the rejection."""
    from tenfold.monitoring import alerts as alerting

    run, places, _ = _ended_with_a_missed_alert(monkeypatch, pipeline.ROLLED_BACK, "error rate 9/9", ("webhook",))
    done = pipeline.conclude(None, run, p=places)  # type: ignore[arg-type]
    assert done["outcome"] == pipeline.ROLLED_BACK and done["undelivered"] == ["webhook"]
    with pytest.raises(pipeline.PipelineError, match=r"rollout rolled_back \(error rate 9/9\); see file:///report.html\. "
                                                     r"Its alert did not reach webhook") as raised:
        pipeline.settled(done)
    assert not alerting.already_alerted(raised.value) and alerting.undelivered(raised.value) == ("webhook",)
    # The webhook mended, conclude cleared: sent to the webhook alone, and the run is green; a later clear sends nothing.
    again: list[tuple[str, ...]] = []
    places.alert = lambda title, details: pytest.fail("alerted every hook twice")
    places.alert_again = lambda title, details, hooks: again.append(tuple(hooks)) or alerting.Sent(
        alerting.Alert(title, details, "local"))
    delivered = pipeline.conclude(None, run, p=places)  # type: ignore[arg-type]
    assert again == [("webhook",)] and pipeline.settled(delivered) == delivered, "a rollback whose alert went out: green"
    assert pipeline.settled(pipeline.conclude(None, run, p=places)) and again == [("webhook",)]  # type: ignore[arg-type]


def test_a_cleared_conclude_sends_only_to_the_hooks_still_missing_its_alert(monkeypatch: pytest.MonkeyPatch) -> None:
    """Events are create-only: the first alert-undelivered named the webhook and the e-mail for ever, so once the
    webhook was mended and took it, every later clear sent it the alert again."""
    from tenfold.monitoring import alerts as alerting

    run, places, _ = _ended_with_a_missed_alert(monkeypatch, pipeline.ROLLED_BACK, "error rate 9/9", ("email", "webhook"))
    assert pipeline.conclude(None, run, p=places)["undelivered"] == ["email", "webhook"]  # type: ignore[arg-type]
    mended = {"webhook"}
    sent_to: list[tuple[str, ...]] = []

    def again(title: str, details: dict[str, Any], hooks: Any) -> Any:
        sent_to.append(tuple(hooks))
        return alerting.Sent(alerting.Alert(title, details, "local"), failed=tuple(h for h in hooks if h not in mended))

    places.alert_again = again
    assert pipeline.conclude(None, run, p=places)["undelivered"] == ["email"]  # type: ignore[arg-type]
    assert pipeline.conclude(None, run, p=places)["undelivered"] == ["email"]  # type: ignore[arg-type]
    assert sent_to == [("email", "webhook"), ("email",)], "the webhook, which took it, was sent it again"
    mended.add("email")
    done = pipeline.conclude(None, run, p=places)  # type: ignore[arg-type]
    assert "undelivered" not in done and sent_to[-1] == ("email",) and pipeline.settled(done) == done
    assert pipeline.conclude(None, run, p=places) and len(sent_to) == 3  # type: ignore[arg-type]


def _labels_over_time(share_at: Any, accuracy_at: Any, per_minute: int = 400) -> Any:
    """A feedback source whose labels follow the clock: each minute ``per_minute`` labelled predictions, split between
    the arms by that minute's canary share, right ``accuracy_at(minute)`` of the time on both arms alike."""
    def accuracy(since: dt.datetime, until: dt.datetime, version: str) -> tuple[Accuracy, Accuracy]:
        arms = [[0.0, 0.0], [0.0, 0.0]]  # (labelled, right) of canary, control
        minute = since
        while minute < until:
            share, acc = share_at(minute), accuracy_at(minute)
            for arm, n in ((0, per_minute * share), (1, per_minute * (1 - share))):
                arms[arm][0] += n
                arms[arm][1] += n * acc
            minute += dt.timedelta(minutes=1)
        return tuple(Accuracy(round(n), right / n if n else None) for n, right in arms)  # type: ignore[return-value]
    return accuracy


def test_accuracy_that_drifts_over_the_rollout_is_not_charged_to_the_canary() -> None:
    """Both arms equally accurate at every moment, accuracy falling over time (0.85, 0.81, 0.77 over the steps at 5,
    25 and 50 %, 0.73 at 100 %): summed over the rollout, the canary's labels came mostly from late in it and the
    control's from early, so at 100 % the canary trailed by 0.037 and was rolled back. Compared step by step it
    passes."""
    import dataclasses

    router = Router()
    run, places, registry = _setup(router, Observer(), min_feedback=20, checks_per_step=1, max_failed_checks=1)
    starts = [T0 + dt.timedelta(minutes=10 * i) for i in range(4)]
    for i, (at, percent) in enumerate(zip(starts, run.steps, strict=True), start=1):
        registry.events[f"s{i:02d}-set"] = {"at": at.isoformat(), "step": i, "percent": percent}

    def share_at(t: dt.datetime) -> float:
        return next(percent for at, percent in zip(reversed(starts), reversed(run.steps), strict=True) if t >= at) / 100

    def accuracy_at(t: dt.datetime) -> float:
        return 0.85 - 0.04 * min(3, int((t - T0).total_seconds() // 600))

    router.percent = 100
    clock = [starts[3]]

    def sleep(seconds: float) -> None:
        clock[0] += dt.timedelta(seconds=max(seconds, 0.001))

    places = dataclasses.replace(places, accuracy=_labels_over_time(share_at, accuracy_at, 4000), now=lambda: clock[0],
                                 sleep=sleep)
    assert pipeline.step(None, run, 4, p=places) == pipeline.PASS  # type: ignore[arg-type]
    (check,) = [e for k, e in registry.events.items() if k.startswith("s04-c")]
    assert check["values"]["accuracy_spans"] == 3 and abs(check["values"]["accuracy_drop"]) < 1e-9


def test_one_chance_dip_in_accuracy_is_one_failed_check_not_two() -> None:
    """The accuracy test read every label since the canary first served, so the check after a failing one re-tested
    nearly the same labels: 12 of 24 right against the control's 0.8 failed (p=0.003), and with 2 more right labels
    failed again, a rollback from one bad stretch. The next test reads the labels the failing one did not."""
    import dataclasses

    router = Router()
    run, places, registry = _setup(router, Observer(), min_feedback=20, checks_per_step=1, max_failed_checks=2)
    registry.events["s01-set"] = {"at": T0.isoformat(), "step": 1, "percent": 5}
    router.percent = 5
    clock = [T0]
    bad_until = T0 + dt.timedelta(seconds=60)  # the first window: the canary right 12 of 24 times

    def accuracy(since: dt.datetime, until: dt.datetime, version: str) -> tuple[Accuracy, Accuracy]:
        bad = since < bad_until
        minutes = max(1, round((until - since).total_seconds() / 60))
        canary = Accuracy(24 + 2 * (minutes - 1), (12 + 2 * (minutes - 1)) / (24 + 2 * (minutes - 1))) if bad \
            else Accuracy(24 * minutes, 0.8)
        return canary, Accuracy(1000 * minutes, 0.8)

    def sleep(seconds: float) -> None:
        clock[0] += dt.timedelta(seconds=max(seconds, 0.001))

    places = dataclasses.replace(places, accuracy=accuracy, now=lambda: clock[0], sleep=sleep)
    assert pipeline.step(None, run, 1, p=places) == pipeline.PASS  # type: ignore[arg-type]
    verdicts = [e["verdict"] for k, e in sorted(registry.events.items()) if k.startswith("s01-c")]
    assert verdicts == ["fail", "pass"], verdicts


def test_after_an_accuracy_failure_at_100_percent_the_steps_labels_are_tested_again_step_by_step() -> None:
    """Every step's span ends where 100 % began, so a failure inside the 100 % step clips them all away: the empty
    list read as "no spans" and fell back to the summed test against the control before the step (the drift-biased
    comparison), and accuracy left untested would have let the version pass on latency and errors alone. The steps'
    spans are tested again whole; a rollout that never had a step below 100 % still has its control before it."""
    run, _, _ = _setup(Router(), Observer(), min_feedback=20)
    starts = [T0 + dt.timedelta(minutes=10 * i) for i in range(4)]
    record = {f"s{i:02d}-set": {"at": at.isoformat(), "step": i, "percent": p}
              for i, (at, p) in enumerate(zip(starts, run.steps, strict=True), start=1)}
    whole = [(starts[0], starts[1]), (starts[1], starts[2]), (starts[2], starts[3])]
    until = starts[3] + dt.timedelta(minutes=4)
    assert pipeline._split_spans(run, record, 4, until) == whole
    failed_at = starts[3] + dt.timedelta(minutes=2)
    record["s04-c001"] = {"at": failed_at.isoformat(), "verdict": "fail", "until": failed_at.isoformat(),
                          "values": {"accuracy_failed": True}, "reasons": ["online accuracy ..."]}
    assert pipeline._split_spans(run, record, 4, until) == whole
    # Inside step 3 (50 %): the next checks read step 3 from the failure on.
    in_three = starts[2] + dt.timedelta(minutes=5)
    record["s04-c001"].update(until=in_three.isoformat())
    assert pipeline._split_spans(run, record, 4, until) == [(in_three, starts[3])]
    one_step, _, _ = _setup(Router(), Observer(), steps=(100,))
    assert pipeline._split_spans(one_step, {"s01-set": record["s01-set"]}, 1, until) is None


def test_a_rollback_whose_router_fails_on_every_conclude_still_rejects_the_version(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The router failed on every try (the fleet down, HAProxy restarting, a full disk): conclude took the canary's
    share away before it wrote the rejection, so every try raised first. The record said rolled back, but `plan`
    accepted the version again without retry_rejected and `tenfold models promote` without --force."""
    router = Router(fail_on_zero=100)
    run, places, registry = _setup(router, Observer(canary_errors=200))
    with pytest.raises(ConnectionError):
        pipeline.step(None, run, 1, p=places)  # type: ignore[arg-type]
    monkeypatch.setattr(pipeline, "write_report", lambda settings, rollout, record: "file:///report.html")
    for _ in range(2):
        with pytest.raises(ConnectionError):
            pipeline.conclude(None, run, p=places)  # type: ignore[arg-type]
    assert registry.events["end"]["outcome"] == pipeline.ROLLED_BACK and "done" not in registry.events
    (decision,) = registry.decisions.values()
    assert decision["rejected"] and decision["reasons"] == registry.events["end"]["reasons"] and decision["reasons"]
    router.fail_on_zero = 0  # the router answers again: the retry carries it out, and rejects nothing twice
    assert pipeline.conclude(None, run, p=places)["outcome"] == pipeline.ROLLED_BACK  # type: ignore[arg-type]
    assert router.percent == 0 and len(registry.decisions) == 1


def test_an_abort_after_the_failed_checks_reached_the_limit_still_rejects_the_version(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The step recorded the check that reached max_failed_checks and died before its end (its router call failed);
    the operator then aborted. conclude took the abort first: ended aborted, the verdict reached but the version
    never marked rejected."""
    from tenfold.rollout.record import record_abort

    router = Router(fail_on_zero=1)
    run, places, registry = _setup(router, Observer(canary_errors=200))
    with pytest.raises(ConnectionError):
        pipeline.step(None, run, 1, p=places)  # type: ignore[arg-type]
    assert "end" not in registry.events and any(e.get("verdict") == "fail" for e in registry.events.values())
    assert record_abort(registry, run.rollout, by="ana") == (True, pipeline.ABORTED)  # type: ignore[arg-type]
    monkeypatch.setattr(pipeline, "write_report", lambda settings, rollout, record: "file:///report.html")
    done = pipeline.conclude(None, run, p=places)  # type: ignore[arg-type]
    assert done["outcome"] == pipeline.ABORTED and router.percent == 0
    (decision,) = registry.decisions.values()
    assert decision["rejected"] and any("error rate" in r for r in decision["reasons"]), decision


def test_an_abort_without_enough_failed_checks_rejects_nothing_even_one_landing_at_the_no_data_deadline(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """An abort is no verdict: the version is rejected only when the failed checks had reached the limit. An abort
    that lands while the deadline's window is read ends the rollout first; the deadline's fail safe, recorded beside
    it as a failed check, would have counted toward the limit and rejected a version nothing was measured against."""
    from tenfold.rollout.record import record_abort

    class AbortsAtTheDeadline(Observer):
        def traffic(self, since: dt.datetime, until: dt.datetime) -> dict[str, Any]:
            if (until - since).total_seconds() >= 300:
                record_abort(registry, run.rollout, by="ana")  # type: ignore[arg-type]
            return super().traffic(since, until)

    router = Router()
    run, places, registry = _setup(router, AbortsAtTheDeadline(canary_requests=0), no_data_deadline_s=300)
    assert pipeline.step(None, run, 1, p=places) == pipeline.ABORTED  # type: ignore[arg-type]
    assert not any(e.get("verdict") == "fail" for e in registry.events.values())
    monkeypatch.setattr(pipeline, "write_report", lambda settings, rollout, record: "file:///report.html")
    assert pipeline.conclude(None, run, p=places)["outcome"] == pipeline.ABORTED  # type: ignore[arg-type]
    assert registry.decisions == {} and router.percent == 0
