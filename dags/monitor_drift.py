"""Measure each new features partition against the serving model's reference profile; retrain on drift.

**Schedule:** every features Asset event (``build_features`` published a month); ``catchup=False``. Run
it by hand for a month with the run conf ``{"month": "2013-07"}``, optionally ``"version"`` (an id or an
alias; default the ``champion``).

**Tasks** (logic in ``tenfold.pipelines.monitor_drift``; docs/drift.md):

1. ``plan``: the months (the conf's, else the triggering events', else the newest published) and the version.
   A first run (no drift report stored yet) measures only the newest event month and logs the backlog.
2. ``measure``: per feature of the workload's contract and for the model's predictions, the PSI over the
   reference deciles or categories and a KS or chi-square test, against the reference profile stored
   with the version at training time. Only the month and the version are read, never the training data.
3. ``report``: each month's report in the lake as JSON and HTML (a plot per drifted feature); the task
   log names both addresses.
4. ``decide``: when a feature that triggers retraining drifted (PSI >= ``monitoring.drift.psi_drift`` and
   its test significant), an alert (log line and the webhook hook) and the drift Asset event, which
   triggers ``train_model``; skipped otherwise, and when this run emitted the same event before (a cleared run
   that finished). Weather, history aggregates and the weekday only report.

Run locally: ``make up`` then trigger ``monitor_drift`` in the UI (run conf ``{"month": "2013-07"}``); without Airflow
``python -m tenfold.pipelines.monitor_drift --conf '{"month": "2013-07"}'`` (``airflow dags test`` needs the environment Tenfold starts Airflow with, ``tenfold.local.airflow.airflow_env``:
a shell's own ``airflow`` has another home, database and DAGs folder).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from airflow.sdk import Asset, dag, task

from tenfold.config import get_settings
from tenfold.monitoring.alerts import airflow_dag_failure_callback
from tenfold.pipelines.common import default_args, event_months, run_step

DAG_ID = "monitor_drift"
settings = get_settings()
FEATURES = Asset(settings.assets.features)
DRIFT = Asset(settings.assets.drift)


@dag(
    dag_id=DAG_ID,
    schedule=FEATURES,
    start_date=dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
    catchup=False,
    max_active_runs=1,
    default_args=default_args(settings, DAG_ID),
    # A task killed on its last try (SIGKILL, the OOM killer) runs no failure callback of its own: this one alerts.
    on_failure_callback=airflow_dag_failure_callback,
    tags=["tenfold", "monitoring", "drift"],
    doc_md=__doc__,
)
def monitor_drift() -> None:
    # Each task imports its pipeline itself: the module pulls in pyarrow, too heavy for DAG parsing.
    @task
    def plan(**context: Any) -> dict[str, Any]:
        from tenfold.pipelines import monitor_drift as pipeline

        dag_run = context["dag_run"]
        months = event_months(context, FEATURES.uri)
        return run_step(pipeline.plan, get_settings(), dag_run.run_id, dag_run.conf or {}, months).to_xcom()

    @task
    def measure(planned: dict[str, Any]) -> dict[str, Any]:
        from tenfold.pipelines import monitor_drift as pipeline

        return run_step(pipeline.measure, get_settings(), planned).to_xcom()

    @task
    def report(planned: dict[str, Any], measured: dict[str, Any]) -> dict[str, Any]:
        from tenfold.pipelines import monitor_drift as pipeline

        return run_step(pipeline.report, get_settings(), planned, measured).to_xcom()

    @task(inlets=[DRIFT], outlets=[DRIFT])  # inlet: to read back this run's own drift event (a cleared run)
    def decide(planned: dict[str, Any], reported: dict[str, Any], **context: Any) -> dict[str, Any]:
        from airflow.sdk.exceptions import AirflowSkipException

        from tenfold.pipelines import monitor_drift as pipeline

        ti = context["ti"]
        # The drift Asset's recent events (newest first; drift is rare, so 1000 reach back a long way): whether a
        # run that recorded a trigger emitted it, and whether this run did (a clear of a run that finished).
        events = context["inlet_events"][DRIFT]
        if hasattr(events, "ascending"):  # Task SDKs before Airflow 3.1's filters list them all (order is not relied on)
            events = events.ascending(False).limit(1000)
        recent = list(events)

        def emitted_by(run_id: str) -> bool:
            """False only when Airflow holds no drift event of that run and knows it failed: a run it no longer
            knows (the metadata database's cleanup deletes old runs and events) is taken to have emitted."""
            if next(pipeline.events_of(recent, DAG_ID, run_id), None) is not None:
                return True
            return ti.get_dr_count(dag_id=DAG_ID, run_ids=[run_id], states=["failed"]) == 0

        # While tries are left, an alert a hook did not deliver, or an outage of Cloud Monitoring writing the drift
        # score, fails the try (the next one sends or writes it again); the last try emits regardless.
        last_try = ti.try_number > getattr(ti, "max_tries", 0)
        decision = run_step(pipeline.decide, get_settings(), planned, reported, emits=True, last_try=last_try,
                            emitted_by=emitted_by)
        if not decision["retrain"]:
            earlier = decision.get("already_triggered")
            raise AirflowSkipException(f"no retraining: {decision['decisions']}"
                                       + (f"; already triggered by {earlier}" if earlier else ""))
        # A cleared run that finished decides the same: its trigger record is its own, so nothing held it back.
        if (prior := pipeline.emitted_already(recent, DAG_ID, context["dag_run"].run_id, decision)) is not None:
            raise AirflowSkipException(f"this run emitted the drift event of {decision['months']} already (at "
                                       f"{prior.timestamp}): retraining is not started twice")
        context["outlet_events"][DRIFT].extra = decision
        return decision

    planned = plan()
    decide(planned, report(planned, measure(planned)))


monitor_drift()
