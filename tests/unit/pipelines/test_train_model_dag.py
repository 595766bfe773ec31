"""dags/train_model.py loads in a real DagBag and is wired as documented (schedule, tasks, outlets).

The DagBag runs in a subprocess with its own AIRFLOW_HOME: Airflow reads its configuration at import
time, and this test must not leave one behind in the pytest process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tenfold.config import get_settings
from tenfold.config.settings import project_root

DAG_FILE = project_root() / "dags" / "train_model.py"

_PROBE = r"""
import json, sys
from airflow.dag_processing.dagbag import DagBag
from airflow.sdk import AssetOrTimeSchedule
from types import SimpleNamespace
from airflow.sdk.exceptions import AirflowSkipException
bag = DagBag(dag_folder=sys.argv[1])


def announce(dag):
    # What announce_challenger's own code does with the challenger Asset's recorded events (run r1, version v1).
    task = dag.get_task("announce_challenger")
    asset = task.outlets[0]
    decision = {"canary": True, "challenger_version": "v1", "champion_now": "v0", "summary": "s"}

    def event(run, version, dag_id="train_model"):
        return SimpleNamespace(source_dag_id=dag_id, source_run_id=run, extra={"version": version}, timestamp="T")

    def once(events):
        outlets = {asset: SimpleNamespace(extra=None)}
        try:
            task.python_callable(decision, inlet_events={asset: events}, outlet_events=outlets,
                                 dag_run=SimpleNamespace(run_id="r1"))
        except AirflowSkipException as exc:
            return "skipped: " + str(exc)
        return outlets[asset].extra

    class Accessor:
        # Airflow 3.1+'s inlet events accessor (oldest first until told otherwise), recording how it is asked.
        def __init__(self, events):
            self.events, self.calls, self.newest_first, self.n = events, [], False, None

        def ascending(self, flag):
            self.calls.append(["ascending", flag])
            self.newest_first = not flag
            return self

        def limit(self, n):
            self.calls.append(["limit", n])
            self.n = n
            return self

        def __iter__(self):
            ordered = list(reversed(self.events)) if self.newest_first else list(self.events)
            return iter(ordered[: self.n])

    # Its own event behind 999 newer ones and before 1500 older: only newest first, 1000 of them, finds it.
    accessor = Accessor([*(event(f"old{i}", "v1") for i in range(1500)), event("r1", "v1"),
                         *(event(f"new{i}", "v1") for i in range(999))])
    return {"first": once([]), "another run's": once([event("r0", "v1")]), "another version": once([event("r1", "v0")]),
            "another dag's": once([event("r1", "v1", "rollout_model")]), "its own": once([event("r1", "v1")]),
            "its own, of many": once(accessor), "asked": accessor.calls}


def plan_a_backfill_run(dag):
    # What the plan task does with a backfill's run (the Task SDK gives its run type as this enum), on an empty home
    # of its own: a plan that went on would find no lake and no registry, never the developer's.
    import os
    from airflow.sdk.api.datamodels._generated import DagRunType
    from tenfold.config import get_settings

    os.environ["TENFOLD_HOME"] = sys.argv[2]
    get_settings.cache_clear()
    run = SimpleNamespace(run_id="backfill__2026-01-05T00:00:00+00:00", run_type=DagRunType.BACKFILL, conf={})
    try:
        dag.get_task("plan").python_callable(dag_run=run)
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return "planned"


dag = bag.dags.get("train_model")
out = {"errors": {k: str(v) for k, v in bag.import_errors.items()}}
if dag is not None:
    tt = dag.timetable
    out.update(
        asset_or_time=isinstance(tt, AssetOrTimeSchedule),
        asset=getattr(getattr(tt, "asset_condition", None), "uri", None),
        cron=getattr(getattr(tt, "timetable", None), "expression", None),
        catchup=dag.catchup, max_active_runs=dag.max_active_runs, doc_md=dag.doc_md or "",
        order=[t.task_id for t in dag.topological_sort()],
        gate_outlets=[o.uri for o in dag.get_task("gate").outlets],
        announce_outlets=[o.uri for o in dag.get_task("announce_challenger").outlets],
        announce_inlets=[o.uri for o in dag.get_task("announce_challenger").inlets],
        announce=announce(dag),
        plan_backfill=plan_a_backfill_run(dag),
        announce_upstream=sorted(dag.get_task("announce_challenger").upstream_task_ids),
        gate_upstream=sorted(dag.get_task("gate").upstream_task_ids),
        retries={t.task_id: t.retries for t in dag.tasks},
        train_timeout=dag.get_task("train").execution_timeout.total_seconds(),
        release_upstream=sorted(dag.get_task("release_training_group").upstream_task_ids),
        release_rule=str(dag.get_task("release_training_group").trigger_rule),
    )
print("PROBE" + json.dumps(out))
"""


@pytest.fixture(scope="module")
def dag(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    home = tmp_path_factory.mktemp("airflow-home")
    env = {**os.environ, "AIRFLOW_HOME": str(home), "AIRFLOW__CORE__LOAD_EXAMPLES": "False"}
    proc = subprocess.run([sys.executable, "-c", _PROBE, str(DAG_FILE), str(home / "tenfold")], env=env, capture_output=True, text=True,
                          timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (line,) = [x for x in proc.stdout.splitlines() if x.startswith("PROBE")]
    body: dict[str, Any] = json.loads(line.removeprefix("PROBE"))
    assert body["errors"] == {}
    return body


def test_schedule_is_the_drift_asset_or_weekly(dag: dict[str, Any]) -> None:
    settings = get_settings()
    assert dag["asset_or_time"] is True
    assert dag["asset"] == settings.assets.drift  # monitor_drift's event, not every features event
    assert dag["cron"] == settings.training.retrain_cron
    assert dag["catchup"] is False and dag["max_active_runs"] == 1
    assert "champion" in dag["doc_md"]


def test_tasks_and_the_challenger_asset(dag: dict[str, Any]) -> None:
    settings = get_settings()
    order = dag["order"]
    assert [t for t in order if t != "release_training_group"] == [
        "plan", "train", "evaluate", "register", "gate", "announce_challenger"]
    # Once train has ended for good, however: its own scale-down does not run when its worker process is killed.
    assert dag["release_upstream"] == ["train"] and dag["release_rule"] in ("all_done", "TriggerRule.ALL_DONE")
    # Only the announcing task emits the challenger event (it skips, so emits none, when no canary is due).
    assert dag["gate_outlets"] == []
    assert dag["announce_outlets"] == [settings.assets.challenger]
    assert dag["gate_upstream"] == ["evaluate", "plan", "register"]
    assert dag["announce_upstream"] == ["gate"]
    assert all(r >= 1 for r in dag["retries"].values())
    assert dag["train_timeout"] >= settings.training.job_timeout_s


def test_a_cleared_run_that_announced_its_challenger_does_not_announce_it_again(dag: dict[str, Any]) -> None:
    """A finished run cleared (whole, or from gate): gate finds its own decision and the challenger alias still on the
    version, so it decides canary again, and announce_challenger sent a second event, queueing a second rollout of
    the version behind the first (refused once that one promoted or rejected it, or a canary nobody asked for)."""
    settings = get_settings()
    assert dag["announce_inlets"] == [settings.assets.challenger]  # how it reads back its own events
    announced = {"version": "v1", "champion": "v0"}
    assert dag["announce"]["first"] == announced
    # another run's event, another version's, another DAG's: not this run's announcement
    for other in ("another run's", "another version", "another dag's"):
        assert dag["announce"][other] == announced, other
    assert dag["announce"]["its own"] == ("skipped: this run announced challenger v1 already (at T): a second rollout "
                                          'is not queued. To run its canary again, trigger rollout_model with '
                                          '{"version": "v1"}')
    # Through Airflow's accessor (what this Airflow hands the task): newest first, the last 1000.
    assert dag["announce"]["its own, of many"] == dag["announce"]["its own"]
    assert dag["announce"]["asked"] == [["ascending", False], ["limit", 1000]]


def test_a_backfill_run_is_refused_at_once(dag: dict[str, Any]) -> None:
    """A backfill's runs are held back apart from the DAG's others (max_active_runs=1 did not stop them), and every
    one of them trained the same newest months: on an Airflow without allowed_run_types, plan is what refuses them."""
    assert dag["plan_backfill"].startswith("AirflowFailException: train_model does not run as a backfill: ")
    assert dag["plan_backfill"].endswith("trigger one run instead (a run conf with train_months and holdout_months "
                                         "chooses other months)")


def test_the_plan_of_a_backfill_run_names_backfill_and_what_to_do(make_settings: Any) -> None:
    from tenfold.pipelines import train_model as pipeline
    from tenfold.pipelines.common import PipelineInputError

    settings = make_settings()
    with pytest.raises(PipelineInputError, match=r"^train_model does not run as a backfill: .*trigger one run "):
        pipeline.plan(settings, "backfill__2026-01-05T00:00:00+00:00", {}, run_type="backfill")
    assert not any(settings.local.home.iterdir())  # refused before it read or wrote anything


def test_no_literals_owned_by_settings() -> None:
    text = Path(DAG_FILE).read_text()
    settings = get_settings()
    for owned in (settings.storage.models_bucket, settings.storage.lake_bucket, settings.training.fleet.instance_group,
                  settings.training.retrain_cron, "gs://", "file://"):
        assert owned not in text
