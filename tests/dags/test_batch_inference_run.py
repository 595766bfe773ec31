"""``batch_inference`` run by Airflow itself (``dag.test()`` on a migrated SQLite database): features events that
name several months give one mapped ``score_month`` group per month to score, and each month's steps receive
that month's plan and results, not another month's.

The DAG's own code runs (the ``months`` task, the mapped group, XCom between the tasks); the pipeline's steps
record their calls instead of scoring, since tests/unit/pipelines/test_batch_inference_plan.py and
tests/integration/test_inference.py run them for real, and the lifecycle test runs this DAG under the scheduler.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tenfold.config.settings import project_root

ROOT = project_root()

_PROBE = r"""
import importlib.util, json, sys
from types import SimpleNamespace
from unittest import mock

import tenfold.pipelines.batch_inference as pipeline

calls = []


class Step(dict):
    def to_xcom(self):
        return dict(self)


def months_to_score(settings, events, run_id):
    calls.append(["months_to_score", sorted(events)])
    return SimpleNamespace(score=json.loads(sys.argv[4]), skipped={"2013-07": "scored already"})


def plan(settings, run_id, conf):
    calls.append(["plan", conf])
    return Step(month=conf["month"])


def publish(settings, planned):
    calls.append(["publish", planned["month"]])
    return Step(month=planned["month"])


def score(settings, planned, say=None):
    calls.append(["score", planned["month"]])
    return Step(month=planned["month"], scored=planned["month"])


def publish_results(settings, planned, scored):
    calls.append(["publish_results", planned["month"], scored["scored"]])
    return {}


# autospec: each stub stands in for a step that exists under that name, and every call the DAG makes is checked
# against the real step's signature (a renamed step or parameter fails the run instead of reaching the stub).
for stub in (months_to_score, plan, publish, score, publish_results):
    mock.patch.object(pipeline, stub.__name__, autospec=True, side_effect=stub).start()

spec = importlib.util.spec_from_file_location("batch_inference_dag", sys.argv[1])
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
events = json.loads(sys.argv[2])
# what the triggering features events name
mock.patch.object(module, "event_months", autospec=True, side_effect=lambda context, uri: events).start()
run = module.batch_inference().test(run_conf=json.loads(sys.argv[3]))
print("PROBE-JSON" + json.dumps({"state": str(run.state), "calls": calls}))
"""


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    tmp = tmp_path_factory.mktemp("batch-inference-dag")
    env = {**os.environ, "AIRFLOW_HOME": str(tmp / "airflow"), "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
           "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"), "TENFOLD_HOME": str(tmp / "tenfold"),
           "TENFOLD_ENV": "local"}
    airflow = str(Path(sys.executable).with_name("airflow"))
    migrate = subprocess.run([airflow, "db", "migrate"], env=env, capture_output=True, text=True, timeout=300)
    assert migrate.returncode == 0, migrate.stderr[-3000:]
    return env


def _run(env: dict[str, str], events: list[str], conf: dict[str, str],
         score: tuple[str, ...] = ("2013-06", "2013-08")) -> dict:
    """The DAG run on ``events`` with run conf ``conf``, where months_to_score chooses ``score``."""
    proc = subprocess.run([sys.executable, "-c", _PROBE, str(ROOT / "dags" / "batch_inference.py"),
                           json.dumps(events), json.dumps(conf), json.dumps(list(score))], env=env,
                          capture_output=True, text=True,
                          timeout=300, cwd=ROOT)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    (line,) = [x for x in proc.stdout.splitlines() if x.startswith("PROBE-JSON")]
    result = json.loads(line.removeprefix("PROBE-JSON"))
    result["log"] = out
    return result


def test_held_back_features_events_score_each_chosen_month_through_its_own_steps(env: dict[str, str]) -> None:
    run = _run(env, ["2013-06", "2013-07", "2013-08"], {})
    assert run["state"] == "success", run["log"][-6000:]
    calls = run["calls"]
    assert calls[0] == ["months_to_score", ["2013-06", "2013-07", "2013-08"]]
    assert sorted(c[1]["month"] for c in calls if c[0] == "plan") == ["2013-06", "2013-08"]
    for step in ("publish", "score"):
        assert sorted(c[1] for c in calls if c[0] == step) == ["2013-06", "2013-08"], f"{step}: {calls}"
    # Each month's publish_results gets its own month's score, not the other mapped instance's.
    assert sorted((c[1], c[2]) for c in calls if c[0] == "publish_results") == [("2013-06", "2013-06"),
                                                                                ("2013-08", "2013-08")]
    assert "WARNING: not scoring 2013-07, whose features event this run received: scored already" in run["log"]


def test_a_run_conf_month_is_the_one_month_scored_whatever_the_events(env: dict[str, str]) -> None:
    conf = {"month": "2013-05", "version": "v3"}
    run = _run(env, ["2013-06", "2013-08"], conf)
    assert run["state"] == "success", run["log"][-6000:]
    assert [c for c in run["calls"] if c[0] in ("months_to_score", "plan")] == [["plan", conf]]
    assert [c[1:] for c in run["calls"] if c[0] == "publish_results"] == [["2013-05", "2013-05"]]


def test_a_run_whose_events_name_only_months_scored_already_ends_green_scoring_nothing(env: dict[str, str]) -> None:
    """A features event that came again with a build scored already: no month to score, and the run is not a
    failure (its mapped group has nothing to map over)."""
    run = _run(env, ["2013-07"], {}, score=())
    assert run["state"] == "success", run["log"][-6000:]
    assert [c[0] for c in run["calls"]] == ["months_to_score"]
    assert "WARNING: not scoring 2013-07, whose features event this run received: scored already" in run["log"]
