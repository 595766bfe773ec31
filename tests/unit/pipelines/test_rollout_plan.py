"""rollout_model's plan: what is bad input (refused at once, no retry) and what is an outage (retried)."""

from __future__ import annotations

import re
from typing import Any

import pytest
from google.api_core.exceptions import ServiceUnavailable

from tenfold.config import Settings, build_settings
from tenfold.pipelines import rollout_model as pipeline
from tenfold.pipelines.common import PipelineInputError
from tenfold.registry.errors import UnknownVersion


class Registry:
    def __init__(self, error: Exception) -> None:
        self.error = error

    def find(self, ref: str) -> str:
        raise self.error

    def rollouts(self, version: str | None = None) -> list[tuple[str, str, str]]:
        return []


def _plan(settings: Settings, error: Exception, conf: dict[str, Any] | None = None) -> Any:
    places = pipeline.Places(router=None, deployer=None, observer=None, registry=Registry(error),  # type: ignore[arg-type]
                             accuracy=None)  # type: ignore[arg-type]
    return pipeline.plan(settings, "asset_triggered__x", conf or {}, p=places)


def test_an_unknown_challenger_is_refused_and_an_unreachable_registry_is_retried(tmp_path: Any) -> None:
    settings = build_settings("local", {"TENFOLD_HOME": str(tmp_path)})
    with pytest.raises(PipelineInputError, match="nothing to roll out"):
        _plan(settings, UnknownVersion("challenger is not set"))
    # A 503 from the object store is no verdict on the input: raised as it is, so Airflow retries the task
    # (wrapped as bad input it failed at once, the asset event used up and the challenger never rolled out).
    with pytest.raises(ServiceUnavailable):
        _plan(settings, ServiceUnavailable("GET .../aliases/challenger"))


@pytest.mark.parametrize("value", ["false", "true", 0, 1, None])
def test_retry_rejected_must_be_a_real_boolean(tmp_path: Any, value: Any) -> None:
    settings = build_settings("local", {"TENFOLD_HOME": str(tmp_path)})
    # {"retry_rejected": "false"} read as truthy re-rolled a version a canary had rejected
    with pytest.raises(PipelineInputError, match=r'"retry_rejected" must be the JSON boolean true or false, not '):
        _plan(settings, UnknownVersion("never reached"), {"retry_rejected": value})
    with pytest.raises(PipelineInputError, match="nothing to roll out"):  # a boolean passes on to the registry
        _plan(settings, UnknownVersion("challenger is not set"), {"retry_rejected": False})


def test_a_retried_plan_resumes_its_rollout_after_the_challenger_moved(tmp_path: Any) -> None:
    """The plan recorded a rollout of vA, then its task failed before handing it on; meanwhile a train_model gate
    moved challenger to vB. The retry planned a second rollout, of vB, under the same rollout id: vA's was left
    "in progress" forever, and an abort of vA would have reached vB's canary."""
    from tenfold.pipelines.common import run_key

    settings = build_settings("local", {"TENFOLD_HOME": str(tmp_path)})
    rollout_id = f"r-{run_key('asset_triggered__x')}"
    first = pipeline.RolloutRun(rollout_id=rollout_id, airflow_run_id="asset_triggered__x", version="a" * 20,
                                champion="c" * 20, started_at="2026-12-04T10:00:00+00:00",
                                policy=settings.serving.rollout.model_dump(mode="json"))

    class Moved:
        def find(self, ref: str) -> str:
            return "b" * 20  # the challenger now

        def rollouts(self, version: str | None = None) -> list[tuple[str, str, str]]:
            return [("2026-12-04T10:00:00+00:00", "a" * 20, rollout_id)]

        def rollout_events(self, version: str, rid: str) -> dict[str, Any]:
            return {"start": {"at": first.started_at, "run": first.to_xcom()}} if version == "a" * 20 else {}

    places = pipeline.Places(router=None, deployer=None, observer=None, registry=Moved(),  # type: ignore[arg-type]
                             accuracy=None)  # type: ignore[arg-type]
    again = pipeline.plan(settings, "asset_triggered__x", {}, p=places)
    assert again == first


class _Stable:
    def __init__(self, serving: str | None) -> None:
        self.serving = serving

    def pool_version(self, pool: str) -> str | None:
        assert pool == "stable"
        return self.serving


def _loadable_meta(**changed: Any) -> dict[str, Any]:
    """The meta.json of a flights model this code loads (its format, workload and feature definitions), with
    ``changed``."""
    from tenfold.model_files import META_VERSION
    from tenfold.workloads import VERSION_KEY, get_workload

    contract = get_workload("flights").contract
    return {"version": META_VERSION, "workload": "flights", VERSION_KEY: contract.version,
            "categorical_columns": list(contract.categorical_columns),
            "numeric_columns": list(contract.numeric_columns), **changed}


class _Registry:
    """A challenger vB against the champion vA, no rollout yet; vB's meta.json is ``meta`` (None: a loadable one)."""

    def __init__(self, meta: dict[str, Any] | None = None) -> None:
        self.started: list[str] = []
        self.meta_json = meta

    def find(self, ref: str) -> str:
        return "b" * 20

    def meta(self, version: str) -> dict[str, Any]:
        assert version == "b" * 20
        return self.meta_json or _loadable_meta()

    def rollouts(self, version: str | None = None) -> list[tuple[str, str, str]]:
        return []

    def rollout_events(self, version: str, rid: str) -> dict[str, Any]:
        return {}

    def resolve(self, alias: str) -> str:
        return "a" * 20

    def canary_rejections(self, version: str) -> list[dict[str, Any]]:
        return []

    def record_rollout_event(self, version: str, rid: str, key: str, body: dict[str, Any]) -> bool:
        self.started.append(version)
        return True


@pytest.mark.parametrize(("serving", "refused"), [
    ("d" * 20, True),  # a promotion's stable roll failed for good: the pool is on the version before the champion
    ("a" * 20, False),  # the champion
    (None, True),  # between versions (a stuck roll, or no fleet): nothing would wait for it
    ("template tenfold-prod-serve-stable-tmpl (no pinned model version)", False),  # the cloud's alias template
])
def test_a_rollout_is_refused_while_the_stable_pool_serves_another_version_than_the_champion(
        tmp_path: Any, serving: str | None, refused: bool) -> None:
    """The stable pool is the champion's control, and a canary deploy moves the canary pool off whatever it serves:
    after a promotion whose stable roll failed (users on the champion through the canary pool at 100 %), a new
    rollout set the canary to 0 %, sending everyone to the old version, and judged the challenger against it."""
    settings = build_settings("local", {"TENFOLD_HOME": str(tmp_path)})
    registry = _Registry()
    places = pipeline.Places(router=None, deployer=_Stable(serving), observer=None,  # type: ignore[arg-type]
                             registry=registry, accuracy=None)  # type: ignore[arg-type]
    conf = {"version": "b" * 20}
    if refused:
        why = (rf"serves {'d' * 20}, not the champion {'a' * 20}" if serving else
               rf"serves no one version now: a roll of it has not finished .*the champion {'a' * 20}")
        with pytest.raises(PipelineInputError, match=rf"the stable pool {why}"
                                                     r".*tenfold serve rollout --model champion --pool stable"):
            pipeline.plan(settings, "manual__x", conf, p=places)
        assert registry.started == []  # nothing recorded: no rollout left in progress
    else:
        assert pipeline.plan(settings, "manual__x", conf, p=places).version == "b" * 20
        assert registry.started == ["b" * 20]


def test_the_default_challenger_is_refused_when_the_gate_compared_it_only_with_a_champion_replaced_since(
        make_settings: Any, local_settings: Settings, tmp_path: Any, register_tiny_version: Any) -> None:
    """Train run S's gate marked Y against the champion C; then rollout R1 (of X, queued before) promoted X. The next
    rollout took Y by default against X, a champion it was never compared with: the only refusal covered a gate that
    had compared Y with X and kept it out. Named in the run conf, Y is the operator's choice."""
    from tenfold.registry import CHALLENGER, CHAMPION, ModelRegistry

    settings = make_settings(on=local_settings)
    reg = ModelRegistry(settings)

    def version(seed: int) -> str:
        return register_tiny_version(settings, tmp_path / f"m{seed}", seed)

    def passed(challenger: str, champion: str, key: str) -> None:  # what train_model's gate records and marks
        reg.record_decision(challenger, key, {"promote": True, "challenger_version": challenger,
                                              "champion_version": champion, "champion": {"auc": 0.7},
                                              "summary": f"PROMOTE: challenger {challenger} vs champion {champion}"})

    c, x, y = version(1), version(2), version(3)
    reg.promote(c)
    passed(y, c, "scheduled-s")
    reg.set_alias(CHALLENGER, y, reason="run scheduled__s: passed the offline gate")
    reg.promote(x, expected=c, reason="rollout R1's canary passed")
    places = pipeline.Places(router=None, deployer=_Stable(x), observer=None, registry=reg,  # type: ignore[arg-type]
                             accuracy=None)  # type: ignore[arg-type]
    with pytest.raises(PipelineInputError, match=(
            rf"compared the challenger {y} with the champion of its day \({c}\), never with the champion {x} "
            rf'promoted since: train a new challenger .*"version": "{y}"')):
        pipeline.plan(settings, "asset_triggered__r2", {}, p=places)
    assert reg.rollouts() == []  # nothing recorded: no rollout left in progress
    assert pipeline.plan(settings, "manual__named", {"version": y}, p=places).champion == x

    passed(y, x, "scheduled-s.vs-" + x)  # a gate compared it with X since, and let it through: taken by default
    assert pipeline.plan(settings, "asset_triggered__r3", {}, p=places).version == y
    z = version(4)  # a challenger no gate decided (an alias set by hand) is the operator's choice, as before
    reg.set_alias(CHALLENGER, z, reason="by hand")
    assert pipeline.plan(settings, "asset_triggered__r4", {}, p=places).version == z
    assert reg.resolve(CHAMPION) == x


@pytest.mark.parametrize("version", ["", " ", 0, False, []])
def test_a_version_given_empty_or_not_a_string_is_refused_not_the_challenger_rolled_out(tmp_path: Any,
                                                                                        version: Any) -> None:
    """{"version": ""} (a script whose $VERSION was unset) rolled out the challenger: a falsy version was taken for
    no version at all."""
    settings = build_settings("local", {"TENFOLD_HOME": str(tmp_path)})
    with pytest.raises(PipelineInputError, match=rf"^run conf version={re.escape(repr(version))}: give a registered version id or "
                                                 r"an alias, e.g. \"challenger\", or leave version out for challenger$"):
        _plan(settings, AssertionError("the registry was asked for the challenger"), {"version": version})
    with pytest.raises(PipelineInputError, match="nothing to roll out"):  # null is no version: the challenger's
        _plan(settings, UnknownVersion("challenger is not set"), {"version": None})


@pytest.mark.parametrize("unloadable", ["other features", "other workload", "newer format"])
def test_a_version_this_code_cannot_load_is_refused_before_the_rollout_starts(tmp_path: Any, unloadable: str) -> None:
    """A model of other feature definitions (or another workload, or a newer format) was planned like any other: its
    deploy then waited for canary replicas that each refused the model, retried for ten minutes, and timed out
    without saying why. Refused at plan, as `tenfold models promote` and batch inference's plan refuse it."""
    from tenfold.workloads import VERSION_KEY, get_workload

    settings = build_settings("local", {"TENFOLD_HOME": str(tmp_path)})
    v = get_workload(settings).contract.version
    changed, why = {
        "other features": ({VERSION_KEY: v + 1}, f"it learnt from version {v + 1} of the feature definitions, and "
                                                 f"this code builds version {v}"),
        "other workload": ({"workload": "taxis"}, "it is a model of workload 'taxis', and this platform runs 'flights'"),
        "newer format": ({"version": 2}, "its meta.json is format 2; this Tenfold reads format 1: upgrade tenfold"),
    }[unloadable]
    registry = _Registry(_loadable_meta(**changed))
    places = pipeline.Places(router=None, deployer=_Stable("a" * 20), observer=None,  # type: ignore[arg-type]
                             registry=registry, accuracy=None)  # type: ignore[arg-type]
    with pytest.raises(PipelineInputError, match=rf"^{'b' * 20} \({'b' * 20}\) cannot be rolled out here: "
                                                 rf"{re.escape(why)}.*train_model"):
        pipeline.plan(settings, "manual__x", {"version": "b" * 20}, p=places)
    assert registry.started == []  # no start recorded: no rollout left in progress


def _cloud(tmp_path: Any, min_requests: int) -> Settings:
    """dev's settings (the cloud adapters), its lake in ``tmp_path``, with ``serving.rollout.min_requests``."""
    dev = build_settings("dev")
    return dev.model_copy(update={
        "storage": dev.storage.model_copy(update={"lake_uri": (tmp_path / "lake").as_uri()}),
        "serving": dev.serving.model_copy(update={
            "rollout": dev.serving.rollout.model_copy(update={"min_requests": min_requests})})})


def test_a_min_requests_the_cloud_observer_cannot_meet_is_refused_before_the_rollout_starts(tmp_path: Any) -> None:
    """Above half the load balancer log observer's cap, every cloud step found "no data" (or the observer refused):
    the plan recorded start, then deploy and conclude failed building the observer, and the rollout never ended.
    Locally HAProxy's log holds every request: no such limit."""
    from tenfold.rollout.cloud import MAX_ENTRIES_PER_ARM

    registry = _Registry()
    places = pipeline.Places(router=None, deployer=_Stable("a" * 20), observer=None,  # type: ignore[arg-type]
                             registry=registry, accuracy=None)  # type: ignore[arg-type]
    most = MAX_ENTRIES_PER_ARM // 2
    with pytest.raises(PipelineInputError, match=rf"^serving.rollout.min_requests is {most + 1}, but the cloud rollout "
                                                 rf".*set serving.rollout.min_requests to {most} or fewer$"):
        pipeline.plan(_cloud(tmp_path, most + 1), "manual__x", {"version": "b" * 20}, p=places)
    assert registry.started == []  # no start recorded
    assert pipeline.plan(_cloud(tmp_path, most), "manual__x", {"version": "b" * 20}, p=places).version == "b" * 20
    local = build_settings("local", {"TENFOLD_HOME": str(tmp_path)})
    local = local.model_copy(update={"serving": local.serving.model_copy(update={
        "rollout": local.serving.rollout.model_copy(update={"min_requests": most + 1})})})
    assert pipeline.plan(local, "manual__y", {"version": "b" * 20}, p=places).version == "b" * 20
    assert registry.started == ["b" * 20, "b" * 20]


class _Record:
    """A registry's rollout record, in memory: one rollout of vB against vA."""

    def __init__(self) -> None:
        self.events: dict[str, dict[str, Any]] = {}

    def rollouts(self, version: str | None = None) -> list[tuple[str, str, str]]:
        return [("2026-12-04T10:00:00+00:00", "b" * 20, "r-planned")]

    def rollout_events(self, version: str, rid: str) -> dict[str, dict[str, Any]]:
        return dict(self.events)

    def record_rollout_event(self, version: str, rid: str, key: str, body: dict[str, Any]) -> bool:
        return self.events.setdefault(key, body) is body

    def resolve(self, alias: str) -> str:
        return "a" * 20


class _Router:
    def __init__(self, percent: int) -> None:
        self.percent = percent

    def canary_percent(self) -> int:
        return self.percent

    def set_canary_percent(self, percent: int) -> None:
        self.percent = percent


def test_a_cloud_rollout_planned_under_an_unmeetable_min_requests_still_concludes(
        tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A rollout planned with a min_requests above what the cloud observer can meet (before plan refused one): the
    real places built the observer with the router, so deploy and conclude raised MinRequestsAboveTheSample, and
    nothing recorded its end nor took the canary's share away. Conclude never reads traffic: it ends the rollout."""
    import datetime as dt

    from tenfold.rollout import adapters, cloud

    settings = _cloud(tmp_path, cloud.MAX_ENTRIES_PER_ARM)
    record, router = _Record(), _Router(5)
    # The real observer (and its refusal), on a Logging client that is never called; the URL map, the instance groups
    # and the registry stand in for Compute and GCS.
    monkeypatch.setattr(cloud.LoadBalancerLogObserver, "from_settings",
                        classmethod(lambda cls, s, **kw: cls(s, client=None)))
    monkeypatch.setattr(adapters, "router", lambda s: router)
    monkeypatch.setattr(adapters, "deployer", lambda s: _Stable("a" * 20))
    monkeypatch.setattr(pipeline, "ModelRegistry", lambda s: record)
    run = pipeline.RolloutRun(rollout_id="r-planned", airflow_run_id="manual__x", version="b" * 20,
                              champion="a" * 20, started_at="2026-12-04T10:00:00+00:00",
                              policy=settings.serving.rollout.model_dump(mode="json"))
    record.record_rollout_event(run.version, run.rollout_id, "start", {"at": run.started_at, "run": run.to_xcom()})

    done = pipeline.conclude(settings, run)
    assert done["outcome"] == pipeline.FAILED and pipeline.DEPLOY_TASK_FAILED in done["reasons"][0]
    assert list(record.events) == ["start", "end", "done"] and router.percent == 0  # ended, the canary's share gone
    # The observer is still the cloud's, and still refuses: when a step first reads traffic.
    with pytest.raises(cloud.MinRequestsAboveTheSample, match=re.escape("set serving.rollout.min_requests to 2500 or fewer")):
        pipeline.places(settings).observer.traffic(dt.datetime(2026, 12, 4, 10, tzinfo=dt.UTC),
                                                   dt.datetime(2026, 12, 4, 10, 1, tzinfo=dt.UTC))


def test_a_step_builds_its_observer_under_the_policy_its_rollout_froze(tmp_path: Any,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """The analysis judges by the policy frozen at plan; the observer checked the live settings, so a min_requests
    raised above the cloud's limit after a rollout started stopped its steps, though the analysis never used it."""
    from tenfold.rollout import cloud

    live = _cloud(tmp_path, cloud.MAX_ENTRIES_PER_ARM)  # changed since the rollout was planned
    frozen = live.serving.rollout.model_copy(update={"min_requests": 50})
    run = pipeline.RolloutRun(rollout_id="r-planned", airflow_run_id="manual__x", version="b" * 20,
                              champion="a" * 20, started_at="2026-12-04T10:00:00+00:00",
                              policy=frozen.model_dump(mode="json"))
    seen: list[Settings] = []

    class Built(Exception):
        pass

    def places(settings: Settings) -> Any:
        seen.append(settings)
        raise Built

    monkeypatch.setattr(pipeline, "places", places)
    with pytest.raises(Built):
        pipeline.step(live, run, 1)
    assert seen[0].serving.rollout == frozen and seen[0].serving.load_balancer == live.serving.load_balancer
    assert cloud.LoadBalancerLogObserver(seen[0], client=None).max_entries == cloud.MAX_ENTRIES_PER_ARM  # not refused
