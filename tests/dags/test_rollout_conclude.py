"""``rollout_model``'s ``conclude`` run by Airflow itself (``dag.test()`` against the GCS emulator's registry, real
steps): when ``plan`` refuses, nothing was deployed and ``conclude`` is skipped (one red task, one alert); when a
rollout was planned and a later task failed, ``conclude`` still runs and records its end (here, with no HAProxy
to take the canary's share away, it then fails, alerted, leaving ``done`` to a re-run)."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from tenfold.config import Settings, build_settings
from tenfold.registry import CHALLENGER, CHAMPION, ModelRegistry

_PROBE = r"""
import importlib.util, json, sys

spec = importlib.util.spec_from_file_location("rollout_model_dag", sys.argv[1])
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
run = module.rollout_model().test(run_conf={})
states = {ti.task_id: str(ti.state) for ti in run.get_task_instances()}
print("PROBE-JSON" + json.dumps({"state": str(run.state), "run_id": run.run_id, "tasks": states}))
"""


@pytest.fixture
def env(local_settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> tuple[Settings, dict[str, str]]:
    """A home and a project of its own on the session's emulator (its Airflow database, its alerts) and a registry of
    its own: the buckets are the session's (local bucket names do not depend on the project), so the registry gets
    a prefix of its own (TENFOLD_STORAGE__REGISTRY_PREFIX, which every task's settings read: an empty registry, no
    challenger, no aliases or alias history the session's registry would keep)."""
    from tenfold.local import airflow_env, ensure_airflow_db, provision
    from tenfold.local.env import settings_env

    home = tmp_path_factory.mktemp("rollout-conclude")
    settings = build_settings("local", {**settings_env(local_settings), "TENFOLD_HOME": str(home),
                                        "TENFOLD_ALERT_FILE": str(home / "alerts.jsonl"),
                                        "TENFOLD_PROJECT_ID": f"tenfold-rc-{uuid.uuid4().hex[:8]}"})
    settings = build_settings("local", {**settings_env(settings),
                                        "TENFOLD_STORAGE__REGISTRY_PREFIX": f"registry-rc-{uuid.uuid4().hex[:10]}"})
    provision(settings, ["gcs"])
    env = {**airflow_env(settings), "TENFOLD_PIPELINES__ROLLOUT_MODEL__RETRIES": "0"}
    assert env["TENFOLD_STORAGE__REGISTRY_PREFIX"] == settings.storage.registry_prefix  # every task's registry
    ensure_airflow_db(env)
    return settings, env


def _run(env: dict[str, str]) -> dict[str, Any]:
    from tenfold.config.settings import project_root

    proc = subprocess.run([sys.executable, "-c", _PROBE, str(project_root() / "dags" / "rollout_model.py")], env=env,
                          capture_output=True, text=True, timeout=400, cwd=project_root())
    out = proc.stdout + proc.stderr
    lines = [x for x in proc.stdout.splitlines() if x.startswith("PROBE-JSON")]
    assert proc.returncode == 0 and len(lines) == 1, out[-6000:]
    return {**json.loads(lines[0].removeprefix("PROBE-JSON")), "log": out}


def _alerts(settings: Settings) -> list[dict[str, Any]]:
    path = settings.monitoring.alert_file
    assert path is not None
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def test_a_refused_plan_skips_conclude_and_a_planned_rollout_is_concluded(env, tmp_path: Path, local_settings: Settings,
                                                                          stable_pool_serves: Any,
                                                                          register_tiny_version: Any) -> None:
    settings, environ = env
    session = ModelRegistry(local_settings)
    session_aliases = {alias: session.resolve(alias) for alias in (CHAMPION, CHALLENGER)}
    registry = ModelRegistry(settings)
    assert registry.resolve(CHALLENGER) is None  # the test's own, empty registry
    refused = _run(environ)  # no challenger: plan refuses
    assert refused["tasks"]["plan"] == "failed", refused["log"][-4000:]
    assert refused["tasks"]["conclude"] == "skipped", refused["log"][-4000:]
    assert refused["tasks"]["deploy"] == "upstream_failed"
    assert refused["state"] == "failed"  # the run stays red: plan refused it
    assert "no rollout was planned" in refused["log"]
    assert [a["title"] for a in _alerts(settings)] == ["Airflow task rollout_model.plan failed"]  # one alert, plan's

    # A planned rollout whose deploy fails (no serving fleet runs here): conclude still runs and ends it. The aliases
    # this sets are in the test's own registry: the session's champion and challenger are never touched.
    _planned_rollout_is_concluded(settings, environ, tmp_path, stable_pool_serves, register_tiny_version)
    assert {alias: session.resolve(alias) for alias in (CHAMPION, CHALLENGER)} == session_aliases


def _planned_rollout_is_concluded(settings: Settings, environ: dict[str, str], tmp_path: Path,
                                  stable_pool_serves: Any, register: Any) -> None:
    registry = ModelRegistry(settings)
    champion, challenger = register(settings, tmp_path / "a", 1), register(settings, tmp_path / "b", 2)
    registry.set_alias(CHAMPION, champion, reason="test")
    registry.set_alias(CHALLENGER, challenger, reason="test")
    stable_pool_serves(settings, champion)  # what plan checks; no HAProxy runs, so deploy's router call fails
    planned = _run(environ)
    assert planned["tasks"]["plan"] == "success", planned["log"][planned["log"].find("Task failed with exception"):][:3000]
    assert planned["tasks"]["deploy"] == "failed", planned["log"][-4000:]
    # conclude ran (all_done), recorded the end, and then could not take the canary's share away: no HAProxy
    # answers here (deploy failed on the same call). It fails, alerted, and leaves "done" to a re-run once the fleet
    # is back, rather than reporting a share it never set.
    assert planned["tasks"]["conclude"] == "failed", planned["log"][-4000:]
    from tenfold.pipelines.common import run_key
    from tenfold.pipelines.rollout_model import DEPLOY_TASK_FAILED

    assert planned["state"] == "failed"
    ended = registry.rollout_events(challenger, f"r-{run_key(planned['run_id'])}")
    assert ended["end"]["outcome"] == "failed" and DEPLOY_TASK_FAILED in ended["end"]["reasons"][0], ended
    assert "done" not in ended, ended
    assert [a["title"] for a in _alerts(settings)][-2:] == ["Airflow task rollout_model.deploy failed",
                                                             "Airflow task rollout_model.conclude failed"]
    assert "HaproxySilent: HAProxy's runtime API at " in planned["log"] and "is the fleet up?" in planned["log"]
