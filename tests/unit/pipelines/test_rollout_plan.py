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


class _Registry:
    """A challenger vB against the champion vA, no rollout yet."""

    def __init__(self) -> None:
        self.started: list[str] = []

    def find(self, ref: str) -> str:
        return "b" * 20

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
