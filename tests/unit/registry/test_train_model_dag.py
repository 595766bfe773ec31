"""dags/train_model.py loads in a real DagBag and is wired as documented (schedule, tasks, outlets)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tenfold.config import get_settings
from tenfold.config.settings import project_root

DAG_FILE = project_root() / "dags" / "train_model.py"


@pytest.fixture(scope="module")
def dag(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    home = tmp_path_factory.mktemp("airflow-home")
    saved = dict(os.environ)
    os.environ.update({"AIRFLOW_HOME": str(home), "AIRFLOW__CORE__LOAD_EXAMPLES": "False"})
    try:
        from airflow.dag_processing.dagbag import DagBag

        bag = DagBag(dag_folder=str(DAG_FILE))
        assert bag.import_errors == {}
        yield bag.dags["train_model"]
    finally:
        os.environ.clear()
        os.environ.update(saved)


def test_schedule_is_the_features_asset_or_weekly(dag) -> None:  # type: ignore[no-untyped-def]
    from airflow.sdk import AssetOrTimeSchedule

    settings = get_settings()
    assert isinstance(dag.timetable, AssetOrTimeSchedule)
    assert dag.timetable.asset_condition.uri == settings.airflow.features_asset
    assert dag.timetable.timetable.expression == settings.training.retrain_cron
    assert dag.catchup is False and dag.max_active_runs == 1
    assert dag.doc_md and "champion" in dag.doc_md


def test_tasks_and_the_challenger_asset(dag) -> None:  # type: ignore[no-untyped-def]
    settings = get_settings()
    assert [t.task_id for t in dag.topological_sort()] == ["plan", "train", "evaluate", "register", "gate"]
    gate = dag.get_task("gate")
    assert [o.uri for o in gate.outlets] == [settings.airflow.challenger_asset]
    assert set(gate.upstream_task_ids) == {"plan", "evaluate", "register"}
    assert all(t.retries >= 1 for t in dag.tasks)
    assert dag.get_task("train").execution_timeout is not None


def test_no_literals_owned_by_settings() -> None:
    text = Path(DAG_FILE).read_text()
    settings = get_settings()
    for owned in (settings.storage.models_bucket, settings.storage.lake_bucket, settings.training.fleet.instance_group,
                  settings.training.retrain_cron, "gs://", "file://"):
        assert owned not in text
