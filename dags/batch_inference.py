"""Score a features partition offline through Pub/Sub (or Spark for a big one) and publish its scores.

**Schedule:** every features Asset event (``build_features`` published a month): the run scores the month
the event names (its ``extra["month"]``), or the newest published one; ``catchup=False``; one run at a time.

**Tasks** (logic in ``tenfold.pipelines.batch_inference``; a bad run conf or an unpublished month fails at
once, anything else is retried as ``settings.pipelines.batch_inference`` says; every failure alerts):

1. ``plan``: resolves the model (``champion``, or the run conf's ``version``) to one registry version and
   picks the path: above ``settings.inference.spark_threshold_rows`` rows the Spark bulk path (locally only).
2. ``publish``: the partition's rows as requests of ``inference.rows_per_message`` rows, each with a
   deterministic request id (a retry republishes the same ids; results are written once per id).
3. ``score``: waits until every request is scored or dead-lettered, logging progress. Locally it runs the
   worker pool (``inference.workers`` processes) for the wait and stops it whatever happens; in the cloud
   the inference instance group, autoscaled on the backlog, scores. The Spark path scores here.
4. ``publish_results``: checks "count in = count out + dead-letter count" (the run fails when it does not
   hold) and publishes the scores partition atomically. Dead letters: ``tenfold dlq inspect``.

**Run conf** (optional): ``month`` (``YYYY-MM``), ``version`` (a registry version or alias), e.g.
``airflow dags test batch_inference -c '{"month": "2013-07"}'``.

Run locally: ``make up`` then trigger ``batch_inference`` in the UI, or
``python -m tenfold.pipelines.batch_inference --conf '{"month": "2013-07"}'`` without Airflow.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from airflow.sdk import Asset, dag, task

from tenfold.config import get_settings
from tenfold.pipelines.common import default_args, event_months, run_step, task_timeout_s

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
    tags=["tenfold", "inference", "pubsub"],
    doc_md=__doc__,
)
def batch_inference() -> None:
    # Each task imports its pipeline itself: the module pulls in pyarrow, too heavy for DAG parsing.
    @task
    def plan(**context: Any) -> dict[str, Any]:
        from tenfold.pipelines import batch_inference as pipeline

        dag_run = context["dag_run"]
        conf = dict(dag_run.conf or {})
        if "month" not in conf and (months := event_months(context, FEATURES.uri)):
            # An Asset-triggered run scores the month that build_features just published: the newest one, since
            # a DAG's first run also receives the events published before it was unpaused. Events held back while
            # a run was active (max_active_runs=1) come to one run too: name the months it does not score.
            conf["month"] = months[-1]
            if len(months) > 1:
                print(f"WARNING: this run received the features events of {', '.join(months)} and scores only the "
                      f"newest, {months[-1]}; to score another month trigger batch_inference with the run conf "
                      '{"month": "YYYY-MM"}')
        return run_step(pipeline.plan, get_settings(), dag_run.run_id, conf).to_xcom()

    @task
    def publish(planned: dict[str, Any]) -> dict[str, Any]:
        from tenfold.pipelines import batch_inference as pipeline

        return run_step(pipeline.publish, get_settings(), planned).to_xcom()

    @task(execution_timeout=dt.timedelta(seconds=task_timeout_s(settings, DAG_ID)))
    def score(planned: dict[str, Any], published: dict[str, Any]) -> dict[str, Any]:
        from tenfold.pipelines import batch_inference as pipeline

        return run_step(pipeline.score, get_settings(), planned, say=print).to_xcom()

    @task
    def publish_results(planned: dict[str, Any], scored: dict[str, Any]) -> dict[str, Any]:
        from tenfold.pipelines import batch_inference as pipeline

        figures = run_step(pipeline.publish_results, get_settings(), planned, scored)
        print(figures)
        return figures

    planned = plan()
    publish_results(planned, score(planned, publish(planned)))


batch_inference()
