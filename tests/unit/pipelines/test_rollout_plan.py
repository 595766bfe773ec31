"""rollout_model's plan: what is bad input (refused at once, no retry) and what is an outage (retried)."""

from __future__ import annotations

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
