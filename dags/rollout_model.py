"""Roll a challenger out through the load balancer as a canary; promote it or roll it back on its own.

**Schedule:** every ``challenger`` Asset event (``train_model``'s ``announce_challenger``: a version passed
the offline gate); ``catchup=False``; one rollout at a time. Run it by hand for a given version with the
run conf ``{"version": "<id or alias>"}`` (``"retry_rejected": true`` to retry one a canary rejected).

**Tasks** (logic in ``tenfold.pipelines.rollout_model``; every decision is logged with the values that
drove it, and recorded in the registry: ``tenfold rollout status``):

1. ``plan``: which version goes out against which champion, with the analysis settings of
   ``settings.serving.rollout``. Refuses a run with nothing to roll out.
2. ``deploy``: the canary pool serves the version, with 0 % of the traffic.
3. ``step_<n>``: one per step of ``settings.serving.rollout.steps`` (5 -> 25 -> 50 -> 100 %): set the canary's
   share, then every ``interval_s`` compare canary and control over the same window (error rate; latency:
   the whole distribution by a Mann-Whitney U test, and the tail, the share of requests slower than the
   control's p99 plus a tolerance, by a Fisher exact test; online accuracy from the feedback join). "No data" waits, up to a
   deadline, then fails safe (at 100 %, a control too thin to judge, which can no longer grow, fails at once). ``max_failed_checks`` failed checks roll back.
4. ``conclude`` (runs whatever happened after ``plan`` planned a rollout; skipped when ``plan`` refused): promotion (the
   canary takes 100 %, ``champion`` moves by compare-and-swap, the stable pool rolls to the version, then the canary
   weight goes to 0; a champion moved back by hand during the roll sends the stable pool back to it and ends the
   rollout failed, alerted), or rollback (weight 0, the version rejected with its
   reasons, ``champion`` untouched), or abort (weight 0, no alias moves). Saves an HTML report with both
   arms' metrics over the steps in the lake and logs its address.
5. ``steps_done`` does nothing; it keeps the run failed when ``plan``, ``deploy`` or a step failed (``conclude``
   alone, skipped or successful, would mark the run successful).

``tenfold rollout abort`` stops a rollout at any step: the canary weight goes to 0 at once and the running
step ends at its next poll; no alias moves. A retried task or a restarted scheduler resumes from the
recorded step, without applying a step twice or skipping a check.

Run locally: ``make up``, then trigger ``rollout_model`` in the UI; without Airflow
``python -m tenfold.pipelines.rollout_model`` (``airflow dags test`` needs the environment Tenfold starts Airflow with, ``tenfold.local.airflow.airflow_env``:
a shell's own ``airflow`` has another home, database and DAGs folder).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from airflow.sdk import Asset, dag, task

from tenfold.config import get_settings
from tenfold.monitoring.alerts import airflow_dag_failure_callback
from tenfold.pipelines.common import default_args, run_step

DAG_ID = "rollout_model"
settings = get_settings()
CHALLENGER = Asset(settings.assets.challenger)


@dag(
    dag_id=DAG_ID,
    schedule=CHALLENGER,
    start_date=dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
    catchup=False,
    max_active_runs=1,
    default_args=default_args(settings, DAG_ID),
    # A task killed on its last try (SIGKILL, the OOM killer) runs no failure callback of its own: this one alerts.
    on_failure_callback=airflow_dag_failure_callback,
    tags=["tenfold", "rollout", "serving"],
    doc_md=__doc__,
)
def rollout_model() -> None:
    # Each task imports its pipeline itself: the module pulls in the registry and scipy, too heavy for parsing.
    @task
    def plan(**context: Any) -> dict[str, Any]:
        from tenfold.pipelines import rollout_model as pipeline

        dag_run = context["dag_run"]
        return run_step(pipeline.plan, get_settings(), dag_run.run_id, dag_run.conf or {}).to_xcom()

    @task
    def deploy(run: dict[str, Any]) -> dict[str, Any]:
        from tenfold.pipelines import rollout_model as pipeline

        return run_step(pipeline.deploy, get_settings(), run).to_xcom()

    def step_task(index: int, percent: int) -> Any:
        @task(task_id=f"step_{index}", doc_md=f"Step {index}: the canary at {percent} %.")
        def step(run: dict[str, Any]) -> str:
            from tenfold.pipelines import rollout_model as pipeline

            return run_step(pipeline.step, get_settings(), run, index)

        return step

    @task(trigger_rule="all_done")
    def conclude(**context: Any) -> dict[str, Any]:
        from tenfold.pipelines import rollout_model as pipeline

        run = context["ti"].xcom_pull(task_ids="deploy") or context["ti"].xcom_pull(task_ids="plan")
        if run is None:
            # plan refused the run (or failed): nothing was deployed and no weight moved, so there is nothing to
            # undo, and plan's own failure already said why (failing here too alerted a second time).
            from airflow.sdk.exceptions import AirflowSkipException

            raise AirflowSkipException("no rollout was planned (see the plan task's error): nothing to conclude")
        done = run_step(pipeline.conclude, get_settings(), run)
        print(f"rollout {done['outcome']}: champion {done['champion']}, canary at {done['canary_percent']} %; "
              f"report: {done['report']}")
        # No verdict, or an alert that missed a hook: the run is not green (pipeline.settled says why).
        return run_step(pipeline.settled, done)

    @task(doc_md="Does nothing: a leaf that is upstream_failed when plan, deploy or a step failed, so the DAG run "
                 "is failed then (conclude, skipped when nothing was planned, would leave it green).")
    def steps_done() -> None:
        return None

    planned = plan()
    last: Any = deploy(planned)
    for index, percent in enumerate(settings.serving.rollout.steps, start=1):
        current = step_task(index, percent)(planned)
        last >> current
        last = current
    last >> conclude()
    last >> steps_done()


rollout_model()
