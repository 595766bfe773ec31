"""Train a challenger, score it against the champion and the baselines, register it, gate it.

**Schedule:** every drift Asset event (``monitor_drift`` found drift on a feature that triggers retraining,
docs/drift.md) *and* weekly (``settings.training.retrain_cron``, the baseline), whichever comes first;
``catchup=False``; one run at a time so two runs never race to move the champion. A new features partition
triggers ``monitor_drift``, not this DAG. No backfill: Airflow holds a backfill's runs back apart from the DAG's
others, so they would run beside them, and every run trains on the newest months whatever its date. The DAG does
not allow backfill runs (Airflow 3.2+), and ``plan`` refuses one at once (older Airflow); trigger one run instead.

**Tasks** (logic in ``tenfold.pipelines.train_model``; a bad run conf or an unpublished month fails at once,
anything else is retried as ``settings.pipelines.train_model`` says, the ``train`` task as
``settings.training.task_retries`` says (once: a try can take hours); every failure alerts):

1. ``plan``: the time-based split and the training config. By default the split rolls with the data:
   the newest published months are the holdout and up to ``train_window`` months before them are trained
   on, so a scheduled retrain always learns from the newest data. The holdout is the newest
   ``settings.training.holdout_window`` months, at most a quarter of the unbroken run of published months,
   and no more than the months after the champion's last training month (so the gate scores the champion on
   months it never learnt); a run drift started holds out the newest month alone. Every month must be
   published (``_SUCCESS`` manifest) or the run stops naming them.
2. ``train``: locally ``torchrun --nnodes=1`` with a file rendezvous on loopback (gloo); in dev/prod the job runs on the training GPU
   instance group, which is resized up for the run and back to zero whatever happens.
3. ``evaluate``: the challenger, the current champion (resolved from the registry, downloaded and
   hash-verified) and the baselines, all on the same holdout.
4. ``register``: an immutable, content-addressed registry version with its lineage.
5. ``gate``: the offline gate. A version that passes the floors and is no worse than the champion by more
   than ``settings.training.promote_margin`` allows becomes ``challenger``; ``champion`` moves only through the canary
   rollout. The first model ever (no champion to compare with) is promoted by the floors alone.
6. ``announce_challenger``: emits the ``challenger`` Asset event that triggers ``rollout_model``, only when
   a new challenger awaits its canary (skipped otherwise, so no rollout starts for nothing), once per run: a cleared
   run that announced it already skips, rather than queue a second rollout of the same version.
7. ``release_training_group``: once ``train`` has ended for good (succeeded, failed, or upstream_failed by a
   failed ``plan``), the cloud training group is at 0: ``train`` scales it down itself, but not when the worker process
   running it is killed. Only this run's group, or a free one, is released: a group another run holds (one started by
   hand, ``python -m tenfold.pipelines.train_model``) is left running, with a warning. Locally it does nothing.

**Run conf** (optional, e.g. ``{"train_months": ["2013-01", "2013-02"], "holdout_months": ["2013-03", "2013-03"],
"epochs": 1}`` in the UI's Trigger form): ``train_months``, ``holdout_months``,
``epochs``, ``max_steps``, ``batch_size``, ``nproc``, ``seed``, ``feedback_weight`` (0 to 100: how much the
feedback join's labelled rows weigh; 0 leaves them out).

Run locally: ``make up`` then trigger ``train_model`` in the UI; without Airflow ``python -m tenfold.pipelines.train_model``
(``airflow dags test`` needs the environment Tenfold starts Airflow with, ``tenfold.local.airflow.airflow_env``:
a shell's own ``airflow`` has another home, database and DAGs folder).
"""

from __future__ import annotations

import datetime as dt
import inspect
from typing import Any

from airflow.sdk import DAG, Asset, dag, task

try:  # the Task SDK exports the timetables from Airflow 3.2; Composer images of 3.1 have them in core only
    from airflow.sdk import AssetOrTimeSchedule, CronTriggerTimetable
except ImportError:  # pragma: no cover - Airflow 3.1
    from airflow.timetables.assets import AssetOrTimeSchedule  # type: ignore[assignment]
    from airflow.timetables.trigger import CronTriggerTimetable  # type: ignore[assignment]

from tenfold.config import get_settings
from tenfold.monitoring.alerts import airflow_dag_failure_callback
from tenfold.pipelines.common import default_args, run_step, task_timeout_s

DAG_ID = "train_model"
settings = get_settings()
DRIFT = Asset(settings.assets.drift)
CHALLENGER = Asset(settings.assets.challenger)


def _no_backfill() -> dict[str, Any]:
    """``allowed_run_types``: every run type but backfill, so Airflow refuses a backfill before it starts any run
    (Airflow counts a backfill's active runs apart: max_active_runs=1 would not hold its runs back). Airflow 3.2 added
    the argument; an older DAG refuses it, and there ``plan`` alone refuses a backfill's runs."""
    if "allowed_run_types" not in inspect.signature(DAG).parameters:  # pragma: no cover - Airflow 3.1
        return {}
    try:  # the type the argument's values are made into: the Task SDK's own list, which grows between versions
        from airflow.sdk.api.datamodels._generated import DagRunType
    except ImportError:  # pragma: no cover - a private module moved: plan still refuses a backfill's runs
        return {}
    return {"allowed_run_types": [t for t in DagRunType if t.value != "backfill"]}


@dag(
    dag_id=DAG_ID,
    schedule=AssetOrTimeSchedule(
        timetable=CronTriggerTimetable(settings.training.retrain_cron, timezone="UTC"), assets=DRIFT
    ),
    start_date=dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
    catchup=False,
    max_active_runs=1,
    **_no_backfill(),
    default_args=default_args(settings, DAG_ID),
    # A task killed on its last try (SIGKILL, the OOM killer) runs no failure callback of its own: this one alerts.
    on_failure_callback=airflow_dag_failure_callback,
    tags=["tenfold", "training", "registry"],
    doc_md=__doc__,
)
def train_model() -> None:
    # Each task imports its pipeline itself: the module pulls in pyarrow, too heavy for DAG parsing.
    @task
    def plan(**context: Any) -> dict[str, Any]:
        from tenfold.pipelines import train_model as pipeline

        dag_run = context["dag_run"]
        return run_step(pipeline.plan, get_settings(), dag_run.run_id, dag_run.conf or {},
                        drifted=pipeline.drifted_months(context, DRIFT.uri), run_type=dag_run.run_type).to_xcom()

    @task(execution_timeout=dt.timedelta(seconds=task_timeout_s(settings, DAG_ID)), retries=settings.training.task_retries)
    def train(planned: dict[str, Any]) -> dict[str, Any]:
        from tenfold.pipelines import train_model as pipeline

        return run_step(pipeline.train, get_settings(), planned).to_xcom()

    @task
    def evaluate(planned: dict[str, Any], trained: dict[str, Any]) -> dict[str, Any]:
        from tenfold.pipelines import train_model as pipeline

        evaluation = run_step(pipeline.evaluate, get_settings(), planned, trained)
        print(pipeline.comparison_table(evaluation))
        return evaluation.to_xcom()

    @task
    def register(planned: dict[str, Any], trained: dict[str, Any], evaluation: dict[str, Any]) -> dict[str, Any]:
        from tenfold.pipelines import train_model as pipeline

        return run_step(pipeline.register, get_settings(), planned, trained, evaluation).to_xcom()

    @task
    def gate(planned: dict[str, Any], evaluation: dict[str, Any], registered: dict[str, Any]) -> dict[str, Any]:
        from tenfold.pipelines import train_model as pipeline

        decision = run_step(pipeline.gate, get_settings(), planned, evaluation, registered)
        print(decision["summary"])
        return decision

    @task(inlets=[CHALLENGER], outlets=[CHALLENGER])  # inlet: to read back this run's own event (a cleared run)
    def announce_challenger(decision: dict[str, Any], **context: Any) -> None:
        from airflow.sdk.exceptions import AirflowSkipException

        from tenfold.pipelines import train_model as pipeline

        if not decision["canary"]:
            raise AirflowSkipException(f"no canary to run: {decision['summary']}")
        version = decision["challenger_version"]
        events = context["inlet_events"][CHALLENGER]
        if hasattr(events, "ascending"):  # newest first; Task SDKs before Airflow 3.1's filters list them all
            events = events.ascending(False).limit(1000)
        if (prior := pipeline.announced_already(events, context["dag_run"].run_id, version)) is not None:
            raise AirflowSkipException(
                f"this run announced challenger {version} already (at {prior.timestamp}): a second rollout is not "
                f"queued. To run its canary again, trigger rollout_model with {{\"version\": \"{version}\"}}")
        context["outlet_events"][CHALLENGER].extra = {
            "version": decision["challenger_version"],
            "champion": decision["champion_now"],
        }

    @task(trigger_rule="all_done")
    def release_training_group(**context: Any) -> bool:
        from tenfold.pipelines import train_model as pipeline

        # The plan names the run whose group this is (its train task's cloud run id): that group, or a free one, is
        # released, never one another run holds. A plan that failed pushed none: only a free group is released.
        planned = context["ti"].xcom_pull(task_ids="plan")
        return bool(run_step(pipeline.release_training_group, get_settings(), planned))

    planned = plan()
    trained = train(planned)
    trained >> release_training_group()
    evaluation = evaluate(planned, trained)
    registered = register(planned, trained, evaluation)
    announce_challenger(gate(planned, evaluation, registered))


train_model()
