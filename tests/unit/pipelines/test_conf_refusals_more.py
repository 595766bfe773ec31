"""The rollout and drift pipelines against the real registry on the GCS emulator: an empty --version is refused (never
the challenger rolled out), a rollout a raised step stopped without Airflow is alerted once, and a damaged alias
pointer is blamed on the registry (with its repair), not on a run conf nobody gave nor answered "train a challenger"."""

from __future__ import annotations

import dataclasses
import json
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tenfold.config import Settings, build_settings, get_settings
from tenfold.pipelines import monitor_drift
from tenfold.pipelines import rollout_model as pipeline
from tenfold.pipelines.common import PipelineError, run_key
from tenfold.registry import CHALLENGER, CHAMPION, ModelRegistry


@pytest.fixture
def own(local_settings: Settings, tmp_path_factory: pytest.TempPathFactory,
        monkeypatch: pytest.MonkeyPatch) -> Iterator[Settings]:
    """A home, an alert file and a registry of its own on the session's emulator, and the environment that makes
    ``get_settings()`` (what ``main`` reads) equal them."""
    from tenfold.local.env import settings_env

    home = tmp_path_factory.mktemp("conf-refusals")
    settings = build_settings("local", {**settings_env(local_settings), "TENFOLD_HOME": str(home),
                                        "TENFOLD_ALERT_FILE": str(home / "alerts.jsonl"),
                                        "TENFOLD_STORAGE__REGISTRY_PREFIX": f"registry-cr-{uuid.uuid4().hex[:10]}"})
    for key, value in settings_env(settings).items():
        monkeypatch.setenv(key, value)
    get_settings.cache_clear()
    assert get_settings().storage.registry_prefix == settings.storage.registry_prefix
    assert get_settings().monitoring.alert_file == settings.monitoring.alert_file
    yield settings
    get_settings.cache_clear()


def _alerts(settings: Settings) -> list[dict[str, Any]]:
    path = settings.monitoring.alert_file
    assert path is not None
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def _champion_and_challenger(settings: Settings, where: Path, register: Callable[[Settings, Path, int], str]
                             ) -> tuple[str, str]:
    registry = ModelRegistry(settings)
    champion, challenger = register(settings, where / "a", 1), register(settings, where / "b", 2)
    registry.set_alias(CHAMPION, champion, reason="test")
    registry.set_alias(CHALLENGER, challenger, reason="test")
    return champion, challenger


def _started(settings: Settings) -> list[tuple[str, str]]:
    registry = ModelRegistry(settings)
    return [(v, rid) for _, v, rid in registry.rollouts() if "start" in registry.rollout_events(v, rid)]


def test_an_empty_version_is_refused_not_the_challenger_rolled_out(
        own: Settings, tmp_path: Path, register_tiny_version: Any, stable_pool_serves: Any,
        capsys: pytest.CaptureFixture[str]) -> None:
    """`--version ""` (a script's unset variable) was dropped as falsy: plan took the challenger default and started
    its rollout without a word."""
    champion, _ = _champion_and_challenger(own, tmp_path, register_tiny_version)
    stable_pool_serves(own, champion)  # what plan checks: everything a rollout of the challenger needs is there
    assert pipeline.main(["--version", "", "--run-id", "manual__empty"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: `python -m tenfold.pipelines.rollout_model`: run conf version='': give a "
                              "registered version id or an alias"), err
    assert _started(own) == []  # no rollout started (no start event of any version)


class _Router:
    """The split as conclude sets it (no HAProxy runs here)."""

    def __init__(self) -> None:
        self.calls: list[int] = []

    def set_canary_percent(self, percent: int) -> None:
        self.calls.append(percent)

    def canary_percent(self) -> int:
        return self.calls[-1] if self.calls else 0


class _Deployer:
    def __init__(self, champion: str) -> None:
        self.champion, self.rolled = champion, []

    def pool_version(self, pool: str) -> str | None:
        return self.champion

    def deploy(self, pool: str, version: str) -> None:
        self.rolled.append((pool, version))


def test_a_rollout_a_raised_step_stopped_without_airflow_is_alerted_once(
        own: Settings, tmp_path: Path, register_tiny_version: Any, stable_pool_serves: Any,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """`python -m tenfold.pipelines.rollout_model`: a step that raised ended the rollout failed ("a step task
    failed"), and conclude skipped the alert for it, as if Airflow's failure callback had sent one: nothing had, and
    done was recorded without alert-due, so nothing ever told anyone. The DAG's conclude still does not alert it twice."""
    from tenfold.rollout.haproxy import HaproxyRouter
    from tenfold.serving.haproxy import HaproxyError

    champion, challenger = _champion_and_challenger(own, tmp_path, register_tiny_version)
    stable_pool_serves(own, champion)
    real_places = pipeline.places
    router = _Router()
    # The real registry and the real alert (to the alert file); the router and the pools of a fleet that is not running
    # here stand in for deploy and conclude.
    monkeypatch.setattr(pipeline, "places", lambda settings: dataclasses.replace(
        real_places(settings), router=router, deployer=_Deployer(champion)))

    def step(settings: Settings, run: Any, index: int) -> str:
        # A step's first act, on the real router: HAProxy is not running, so its runtime API does not answer.
        HaproxyRouter.from_settings(settings).set_canary_percent(run.steps[index - 1])
        raise AssertionError("HAProxy answered: no outage to test")

    monkeypatch.setattr(pipeline, "step", step)
    with pytest.raises(HaproxyError):
        step(own, pipeline.RolloutRun(rollout_id="r", airflow_run_id="x", version=challenger, champion=champion,
                                      started_at="2026-01-01T00:00:00+00:00",
                                      policy=own.serving.rollout.model_dump(mode="json")), 1)  # the outage is real
    assert pipeline.main(["--run-id", "manual__raised"]) == 1
    record = ModelRegistry(own).rollout_events(challenger, f"r-{run_key('manual__raised')}")
    assert record["end"]["outcome"] == pipeline.FAILED and pipeline.STEP_TASK_FAILED in record["end"]["reasons"][0]
    assert "done" in record and "alert-due" in record and "alert-sent" in record, sorted(record)
    assert [a["title"] for a in _alerts(own)] == [f"rollout r-{run_key('manual__raised')} of {challenger}: failed"]
    assert router.calls[-1] == 0  # conclude took the canary's share away

    # The DAG's conclude (called as dags/rollout_model.py calls it), for a rollout whose step task gave up: Airflow's
    # failure callback alerted that task, so conclude sends nothing more.
    p = real_places(own)
    p = dataclasses.replace(p, router=_Router(), deployer=_Deployer(champion))
    run = pipeline.deploy(own, pipeline.plan(own, "manual__dag", {}, p=p), p=p)
    done = pipeline.conclude(own, run)
    assert done["outcome"] == pipeline.FAILED and pipeline.STEP_TASK_FAILED in done["reasons"][0]
    assert len(_alerts(own)) == 1, _alerts(own)


def _damage(settings: Settings, alias: str) -> str:
    """Write a pointer that is not JSON over ``alias`` (a torn write, a hand edit); returns its address."""
    registry = ModelRegistry(settings)
    registry.bucket.blob(registry._name("aliases", alias)).upload_from_string(b"{not json")
    return registry.alias_uri(alias)


def test_a_damaged_challenger_pointer_is_the_registrys_message_not_train_a_challenger(
        own: Settings, tmp_path: Path, register_tiny_version: Any) -> None:
    with pytest.raises(PipelineError, match="nothing to roll out: no challenger yet"):  # unset: train one
        pipeline.plan(own, "asset_triggered__x", {})
    _champion_and_challenger(own, tmp_path, register_tiny_version)
    where = _damage(own, CHALLENGER)
    with pytest.raises(PipelineError) as refused:
        pipeline.plan(own, "asset_triggered__x", {})
    message = str(refused.value)
    assert f"alias pointer {where} is unreadable" in message and "delete that object" in message, message
    assert "nothing to roll out" not in message and "Train a challenger" not in message, message
    assert refused.value.retryable is False
    assert _started(own) == []


def test_a_damaged_champion_pointer_is_not_blamed_on_a_run_conf_nobody_gave(own: Settings, tmp_path: Path,
                                                                             register_tiny_version: Any) -> None:
    """An Asset-triggered run (empty run conf) met a torn champion pointer and said "run conf version 'champion'"."""
    from tenfold.data.lake import Lake
    from tenfold.data.partition import Partition
    from tenfold.workloads.flights.synthetic import publish_synthetic_features

    publish_synthetic_features(Lake.from_settings(own), [Partition.parse("2013-07")], 50)
    _champion_and_challenger(own, tmp_path, register_tiny_version)
    where = _damage(own, CHAMPION)
    with pytest.raises(PipelineError) as refused:
        monitor_drift.plan(own, "asset_triggered__x", {}, ["2013-07"])
    message = str(refused.value)
    assert f"alias pointer {where} is unreadable" in message and "delete that object" in message, message
    assert "run conf" not in message, message
    assert refused.value.retryable is False  # a refusal: a retry reads the same bytes
    # Named in the run conf, the conf's value is what the message starts from.
    with pytest.raises(PipelineError, match=r"run conf version 'champion': alias pointer .* is unreadable"):
        monitor_drift.plan(own, "manual__x", {"version": CHAMPION}, ["2013-07"])
