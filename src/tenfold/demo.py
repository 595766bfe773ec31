"""``tenfold demo`` (``make demo``): the lifecycle on the embedded default, through the real scheduler.

1. ``tenfold up``: the GCS and Pub/Sub emulators and Airflow standalone on loopback.
2. ``build_features`` is unpaused and backfilled over the demo months (one run per month, one at a
   time): ingest -> Spark features -> Great Expectations gate -> atomic publish. Months already
   published are not rebuilt, so a second ``make demo`` is quick.
3. ``train_model`` is unpaused once the features are in (it stays paused meanwhile, so the features
   Asset events of a half-built year do not start training). Its scheduled run trains with torchrun,
   evaluates the challenger against the champion and both baselines on the time-based holdout,
   registers it and gates it; the first model that passes the floors becomes champion.
4. It prints where to look: the Airflow UI and its login, the lake, the Data Docs, the registry and
   the metrics table.
5. Online serving: the champion is served by the local fleet (replicas behind HAProxy; a fleet from an
   earlier demo is rolled to the new champion one replica at a time), the held-out month's flights are
   replayed through it with user keys and a 10% canary split, each outcome is posted as feedback, the
   feedback is landed and joined, and it prints req/s, p99, the arms' shares and the online accuracy.

Everything runs as Airflow DAG runs, so the same runs are there to inspect (and re-run) in the UI.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from tenfold.config import Settings
from tenfold.data.lake import Lake, Partition, month_range
from tenfold.local.airflow import admin_password, airflow_url
from tenfold.local.airflow_api import AirflowApi, AirflowApiError
from tenfold.workloads import VERSION_KEY, get_workload

BUILD, TRAIN = "build_features", "train_model"
FEATURE_TIMEOUT_S = 30 * 60  # per month, at worst, on a busy 2-core machine
TRAIN_TIMEOUT_S = 45 * 60
# The served replay: this many of the held-out month's flights, a tenth of the users on the canary pool.
DEMO_FLIGHTS = 3000
DEMO_CANARY_PERCENT = 10
FEEDBACK_TIMEOUT_S = 180


class DemoError(RuntimeError):
    pass


def _api(settings: Settings) -> AirflowApi:
    password = admin_password(settings)
    if password is None:
        raise DemoError("Airflow has not written its admin password yet; run `tenfold status`")
    return AirflowApi(airflow_url(settings), settings.airflow.admin_user, password)


def _current(settings: Settings, lake: Lake, part: Partition, served: set[Partition]) -> bool:
    """Published by this code's feature definition, and servable (``served``: features and every lookup
    table published, :func:`tenfold.features.online.served_months`)."""
    if part not in served:
        return False
    return lake.read_manifest(settings.storage.features_table, part).extra.get(VERSION_KEY) == \
        get_workload(settings).contract.version


def build_months(settings: Settings, api: AirflowApi, months: list[Partition], say: Callable[[str], object]) -> None:
    lake = Lake.from_settings(settings)
    from tenfold.features.online import served_months

    served = set(served_months(settings, lake=lake))
    todo = [m for m in months if not _current(settings, lake, m, served)]
    api.set_paused(BUILD, False)
    if not todo:
        say(f"features for {months[0].label}..{months[-1].label} are already published")
        return
    # "completed": a month published by an older feature definition has a successful run to redo.
    say(f"backfilling {BUILD} for {todo[0].label}..{todo[-1].label} ({len(todo)} monthly runs)")
    api.backfill(BUILD, f"{todo[0].label}-01T00:00:00Z", f"{todo[-1].label}-01T00:00:00Z", reprocess="completed")
    wanted = {m.label for m in todo}
    deadline = time.monotonic() + FEATURE_TIMEOUT_S * len(todo)
    seen: dict[str, str] = {}
    while True:
        # Newest run per month last, so it wins (the backfill creates or re-queues them before it returns).
        runs = {str(r["logical_date"])[:7]: r for r in reversed(api.runs(BUILD, limit=100)) if r.get("logical_date")}
        for label in sorted(wanted):
            run = runs.get(label)
            state = str(run["state"]) if run else "not created"
            if seen.get(label) != state:
                say(f"  {BUILD} {label}: {state}")
                seen[label] = state
            if state == "failed":
                failed = api.failed_tasks(BUILD, str(run["dag_run_id"])) if run else []
                raise DemoError(f"{BUILD} for {label} failed in {', '.join(failed) or 'a task'}: "
                                f"open {airflow_url(settings)}/dags/{BUILD} for its logs")
        if all(seen.get(label) == "success" for label in wanted):
            return
        if time.monotonic() > deadline:
            raise DemoError(f"{BUILD} did not finish in time; see {airflow_url(settings)}/dags/{BUILD}")
        time.sleep(10)


def train(settings: Settings, api: AirflowApi, say: Callable[[str], object]) -> str:
    """Unpause ``train_model`` and follow its scheduled run; trigger one if the schedule made none."""
    before = {str(r["dag_run_id"]) for r in api.runs(TRAIN)}
    api.set_paused(TRAIN, False)
    run_id = None
    for _ in range(12):  # the scheduler creates the weekly run on unpause (catchup=False: only the latest)
        new = [r for r in api.runs(TRAIN) if str(r["dag_run_id"]) not in before]
        if new:
            run_id = str(new[0]["dag_run_id"])
            break
        time.sleep(5)
    if run_id is None:  # this week's scheduled run already happened: retrain now on the published months
        run_id = f"demo__{time.strftime('%Y%m%dT%H%M%S')}"
        api.trigger(TRAIN, run_id)
    say(f"{TRAIN}: following run {run_id}")
    states = api.wait_for_runs(TRAIN, [run_id], timeout_s=TRAIN_TIMEOUT_S,
                               on_change=lambda r, s: say(f"  {TRAIN} {r}: {s}"))
    if states[run_id] != "success":
        failed = api.failed_tasks(TRAIN, run_id)
        raise DemoError(f"{TRAIN} run {run_id} failed in {', '.join(failed) or 'a task'}: "
                        f"open {airflow_url(settings)}/dags/{TRAIN} for its logs")
    return run_id


def xcom(api: AirflowApi, dag_id: str, run_id: str, task_id: str) -> Any:
    import urllib.parse

    path = (f"/api/v2/dags/{dag_id}/dagRuns/{urllib.parse.quote(run_id, safe='')}/taskInstances/{task_id}"
            "/xcomEntries/return_value?deserialize=true")
    return api._send("GET", path)["value"]


def serve(settings: Settings, month: Partition, flights: int, say: Callable[[str], object]) -> None:
    """Serve the champion on the local fleet and replay ``flights`` flights of ``month`` through it as live
    traffic (user keys, a 10% canary split, then each outcome as feedback); wait until the feedback sink
    has landed and joined all of it, and print the online accuracy per model version and arm."""
    import datetime as dt

    from tenfold.feedback import online_metrics
    from tenfold.local.stack import feedback_sink_up, serving_up
    from tenfold.registry import CHAMPION, ModelRegistry
    from tenfold.rollout.haproxy import HaproxyRouter
    from tenfold.serving import fleet, traffic
    from tenfold.serving.auth import ensure_token

    champion = ModelRegistry(settings).resolve(CHAMPION)
    if champion is None:
        say("serving: no champion yet (the gate promoted nothing), so there is nothing to serve")
        return
    if fleet.supervisor_record(settings) is None:
        serving_up(settings, say=say)
    else:  # a fleet from an earlier demo: move both pools to the new champion, one replica at a time
        say(f"serving: rolling the running fleet to champion {champion} ...")
        for pool in ("stable", "canary"):
            fleet.rollout(settings, champion, pool=pool)
        feedback_sink_up(settings, say=say)
    router = HaproxyRouter.from_settings(settings)
    before = router.canary_percent()
    router.set_canary_percent(DEMO_CANARY_PERCENT)
    items = get_workload(settings).replay(month)[:flights]
    say(f"serving: replaying {len(items)} flights of {month.label} through HAProxy "
        f"({DEMO_CANARY_PERCENT}% of users on the canary pool), then their outcomes as feedback ...")
    since = dt.datetime.now(dt.UTC)
    try:
        report = traffic.replay(settings, items, token=ensure_token(settings))
    finally:
        router.set_canary_percent(before)
    say(f"  {report.summary()}")
    for error in report.errors[:3]:
        say(f"  error: {error}")
    accepted = report.feedback.get(202, 0)
    deadline = time.monotonic() + FEEDBACK_TIMEOUT_S
    while True:  # the platform's feedback sink lands it; the join is refreshed on each look
        groups = online_metrics(settings, since, by=("model_version", "arm"), refresh=True)
        if sum(g.metrics.count for g in groups) >= accepted and sum(g.served for g in groups) >= report.ok:
            break
        if time.monotonic() > deadline:
            raise DemoError(f"the feedback sink did not land the demo's {accepted} outcomes within {FEEDBACK_TIMEOUT_S} s; "
                            "see its log in `tenfold status`")
        time.sleep(2)
    say("online accuracy by model version and arm (predictions joined to their feedback):")
    for group in groups:
        m = group.metrics
        auc = f"{m.auc:.3f}" if m.auc is not None else "n/a"
        loss = f"{m.log_loss:.4f}" if m.log_loss is not None else "n/a"
        say(f"  {group.group['model_version']} {group.group['arm']:>6}: {group.served} served, {m.count} with outcomes, "
            f"log loss {loss}, AUC {auc}")
    rep = fleet.report(settings)
    say(f"serving: {rep.url}{settings.serving.server.api_prefix}/predict (token: `tenfold status`); HAProxy metrics "
        f"{rep.metrics_url}; each replica's /metrics in `tenfold serve status`; `tenfold feedback metrics`")


def run(settings: Settings, first: str, last: str, *, flights: int = DEMO_FLIGHTS,
        say: Callable[[str], object] = print) -> None:
    from tenfold.local.stack import describe, up

    months = month_range(first, last)
    if len(months) < 2:
        raise DemoError("the demo needs at least two months: one to train on and a later one to hold out")
    statuses = up(settings, echo=say)
    api = _api(settings)
    for dag_id in (BUILD, TRAIN):
        api.wait_for_dag(dag_id)
    api.set_paused(TRAIN, True)
    build_months(settings, api, months, say)
    run_id = train(settings, api, say)

    from tenfold.pipelines.train_model import comparison_table
    from tenfold.quality.gate import data_docs_location

    evaluation = xcom(api, TRAIN, run_id, "evaluate")
    decision = xcom(api, TRAIN, run_id, "gate")
    registered = xcom(api, TRAIN, run_id, "register")
    say("")
    say(comparison_table(evaluation, registered["version"]))
    say(f"gate: {decision['summary']}")
    say("")
    say(describe(settings, statuses))
    say(f"features: {settings.storage.lake_uri}/{settings.storage.features_table}/year=*/month=*/_SUCCESS")
    say(f"Data Docs: {data_docs_location(settings)}/index.html")
    say(f"registry: gs://{settings.storage.models_bucket}/{settings.storage.registry_prefix} "
        f"(champion {decision.get('champion_now')}; `tenfold models list`)")
    say("")
    serve(settings, months[-1], flights, say)


__all__ = ["AirflowApiError", "DemoError", "run"]
