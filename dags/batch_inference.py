"""Score features partitions offline through Pub/Sub (or Spark for a big one) and publish their scores.

**Schedule:** every features Asset event (``build_features`` published a month); ``catchup=False``; one run
at a time.

**Tasks** (logic in ``tenfold.pipelines.batch_inference``; a bad run conf or an unpublished month fails at
once, anything else is retried as ``settings.pipelines.batch_inference`` says; every failure alerts):

1. ``months``: the months to score. The run conf's ``month``; else the months the triggering events name
   (``months_to_score``): the newest, and every other one later than the newest month already scored. Events
   that arrived while a run was active all come to the next run, and it scores each of them. A first run's
   backlog (nothing scored yet), rebuilt or backfilled older months, and a month whose event came again with
   the build its scores were made from by the same model version are not scored: the log names them with the
   run conf that does.
2. ``score_month``, a task group mapped over those months, one month after another locally:

   1. ``plan``: resolves the model (``champion``, or the run conf's ``version``) to one registry version and
      picks the path: above ``settings.inference.spark_threshold_rows`` rows the Spark bulk path (locally only).
   2. ``publish``: the partition's rows as requests of ``inference.rows_per_message`` rows, each with a
      deterministic request id (a retry republishes the same ids; results are written once per id).
   3. ``score``: waits until every request is scored or dead-lettered, logging progress. Locally it runs the
      worker pool (``inference.workers`` processes) for the wait and stops it whatever happens; in the cloud
      the inference instance group, autoscaled on the backlog, scores. The Spark path scores here.
   4. ``publish_results``: checks "count in = count out + dead-letter count" (the month fails when it does
      not hold) and publishes the scores partition atomically. Dead letters: ``tenfold dlq inspect``.

**Run conf** (optional): ``month`` (``YYYY-MM``), ``version`` (a registry version or alias), e.g.
``{"month": "2013-07"}`` in the UI's Trigger form.

Run locally: ``make up`` then trigger ``batch_inference`` in the UI, or
``python -m tenfold.pipelines.batch_inference --conf '{"month": "2013-07"}'`` without Airflow
(``airflow dags test`` needs the environment Tenfold starts Airflow with, ``tenfold.local.airflow.airflow_env``:
a shell's own ``airflow`` has another home, database and DAGs folder).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from airflow.sdk import Asset, dag, task, task_group

from tenfold.config import get_settings
from tenfold.monitoring.alerts import airflow_dag_failure_callback
from tenfold.pipelines.common import default_args, event_months, run_step

DAG_ID = "batch_inference"
settings = get_settings()
FEATURES = Asset(settings.assets.features)


@dag(
    dag_id=DAG_ID,
    schedule=FEATURES,
    start_date=dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
    catchup=False,
    max_active_runs=1,
    default_args=default_args(settings, DAG_ID),
    # A task killed on its last try (SIGKILL, the OOM killer) runs no failure callback of its own: this one alerts.
    on_failure_callback=airflow_dag_failure_callback,
    tags=["tenfold", "inference", "pubsub"],
    doc_md=__doc__,
)
def batch_inference() -> None:
    # Each task imports its pipeline itself: the module pulls in pyarrow, too heavy for DAG parsing.
    @task
    def months(**context: Any) -> list[dict[str, Any]]:
        """One run conf per month to score: the run conf's month, else the months of the triggering events."""
        conf = dict(context["dag_run"].conf or {})
        if "month" in conf or not (events := event_months(context, FEATURES.uri)):
            return [conf]  # plan checks it (and without a month scores the newest published)
        from tenfold.pipelines import batch_inference as pipeline

        chosen = run_step(pipeline.months_to_score, get_settings(), events, context["dag_run"].run_id)
        for month, why in chosen.skipped.items():
            print(f"WARNING: not scoring {month}, whose features event this run received: {why}")
        return [{**conf, "month": month} for month in chosen.score]

    @task
    def plan(run_conf: dict[str, Any], **context: Any) -> dict[str, Any]:
        from tenfold.pipelines import batch_inference as pipeline

        return run_step(pipeline.plan, get_settings(), context["dag_run"].run_id, run_conf).to_xcom()

    @task
    def publish(planned: dict[str, Any]) -> dict[str, Any]:
        from tenfold.pipelines import batch_inference as pipeline

        return run_step(pipeline.publish, get_settings(), planned).to_xcom()

    # Locally each score task runs its own worker pool: one month at a time, so two pools never share the cores.
    @task(max_active_tis_per_dagrun=1 if settings.is_local else None)
    def score(planned: dict[str, Any], published: dict[str, Any]) -> dict[str, Any]:
        from tenfold.pipelines import batch_inference as pipeline

        return run_step(pipeline.score, get_settings(), planned, say=print).to_xcom()

    @task
    def publish_results(planned: dict[str, Any], scored: dict[str, Any]) -> dict[str, Any]:
        from tenfold.pipelines import batch_inference as pipeline

        figures = run_step(pipeline.publish_results, get_settings(), planned, scored)
        print(figures)
        return figures

    @task_group
    def score_month(run_conf: dict[str, Any]) -> None:
        """plan -> publish -> score -> publish_results for one month (one mapped instance per month)."""
        planned = plan(run_conf)
        publish_results(planned, score(planned, publish(planned)))

    score_month.expand(run_conf=months())


batch_inference()
