"""``tenfold demo`` (``make demo``): the lifecycle on the embedded default, through the real scheduler.

1. ``tenfold up``: the GCS and Pub/Sub emulators and Airflow standalone on loopback.
2. ``build_features`` is unpaused and backfilled over the demo months (one run per month, one at a
   time): ingest -> Spark features -> Great Expectations gate -> atomic publish. Months already
   published are not rebuilt, so a second ``make demo`` is quick.
3. The first model (when there is no champion yet): ``train_model`` trains on the window up to three
   months before the last, holds out the second-to-last month, and its gate promotes it by the floors
   alone (torchrun training, evaluation against both baselines, registry).
4. It prints where to look: the Airflow UI and its login, the lake, the Data Docs, the registry.
5. Online serving: the champion is served by the local fleet (replicas behind HAProxy; a fleet from an
   earlier demo is rolled to the champion one replica at a time), and the newest month's flights are
   replayed through it as live traffic (user keys, each outcome as feedback) until the end.
6. The second model, trained on a later window (holding out the last month), goes through the offline
   gate; if it passes it becomes the challenger and its event starts ``rollout_model``: a canary through
   5 -> 25 -> 50 -> 100 % of the users, checked against the champion on the live traffic. The demo prints
   each step, each check with its values and the decision, then the final weights and the online
   accuracy per model version and arm.

Everything runs as Airflow DAG runs, so the same runs are there to inspect (and re-run) in the UI.
"""

from __future__ import annotations

import datetime as dt
import json
import threading
import time
from collections.abc import Callable
from typing import Any

from tenfold.config import Settings
from tenfold.data.lake import Lake, Partition, month_range
from tenfold.local.airflow import admin_password, airflow_url
from tenfold.local.airflow_api import AirflowApi, AirflowApiError
from tenfold.workloads import VERSION_KEY, get_workload

BUILD, TRAIN, ROLLOUT = "build_features", "train_model", "rollout_model"
FEATURE_TIMEOUT_S = 30 * 60  # per month, at worst, on a busy 2-core machine
TRAIN_TIMEOUT_S = 45 * 60
ROLLOUT_TIMEOUT_S = 30 * 60
# The served replay: this many of the newest month's flights, replayed over and over during the rollout.
DEMO_FLIGHTS = 3000
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


def train(settings: Settings, api: AirflowApi, say: Callable[[str], object], conf: dict[str, Any], name: str) -> str:
    """Trigger ``train_model`` with ``conf`` and follow the run to its end; returns its run id."""
    run_id = f"demo__{name}__{time.strftime('%Y%m%dT%H%M%S')}"
    api.set_paused(TRAIN, False)
    api.trigger(TRAIN, run_id, conf)
    say(f"{TRAIN}: run {run_id} ({json.dumps(conf)})")
    states = api.wait_for_runs(TRAIN, [run_id], timeout_s=TRAIN_TIMEOUT_S,
                               on_change=lambda r, s: say(f"  {TRAIN} {r}: {s}"))
    if states[run_id] != "success":
        failed = api.failed_tasks(TRAIN, run_id)
        raise DemoError(f"{TRAIN} run {run_id} failed in {', '.join(failed) or 'a task'}: "
                        f"open {airflow_url(settings)}/dags/{TRAIN} for its logs")
    return run_id


def show_training(api: AirflowApi, run_id: str, say: Callable[[str], object]) -> dict[str, Any]:
    """Print the run's comparison table and gate decision; returns the decision."""
    from tenfold.pipelines.train_model import comparison_table

    evaluation = xcom(api, TRAIN, run_id, "evaluate")
    decision: dict[str, Any] = xcom(api, TRAIN, run_id, "gate")
    registered = xcom(api, TRAIN, run_id, "register")
    say("")
    say(comparison_table(evaluation, registered["version"]))
    say(f"gate: {decision['summary']}")
    say("")
    return decision


def xcom(api: AirflowApi, dag_id: str, run_id: str, task_id: str) -> Any:
    import urllib.parse

    path = (f"/api/v2/dags/{dag_id}/dagRuns/{urllib.parse.quote(run_id, safe='')}/taskInstances/{task_id}"
            "/xcomEntries/return_value?deserialize=true")
    return api._send("GET", path)["value"]


def ensure_serving(settings: Settings, say: Callable[[str], object]) -> str | None:
    """The local fleet serves the champion in both pools (started, or rolled one replica at a time); the
    canary gets no traffic until a rollout gives it some. Returns the champion (None: nothing to serve)."""
    from tenfold.local.stack import feedback_sink_up, serving_up
    from tenfold.registry import CHAMPION, ModelRegistry
    from tenfold.rollout.haproxy import HaproxyRouter
    from tenfold.serving import fleet

    champion = ModelRegistry(settings).resolve(CHAMPION)
    if champion is None:
        say("serving: no champion yet (the gate promoted nothing), so there is nothing to serve")
        return None
    if fleet.supervisor_record(settings) is None:
        serving_up(settings, say=say)
    else:  # a fleet from an earlier demo: move both pools to the champion, one replica at a time
        say(f"serving: rolling the running fleet to champion {champion} ...")
        for pool in ("stable", "canary"):
            fleet.rollout(settings, champion, pool=pool)
        feedback_sink_up(settings, say=say)
    HaproxyRouter.from_settings(settings).set_canary_percent(0)
    return champion


class Traffic:
    """The month's flights replayed through HAProxy as live traffic (user keys, then each outcome as
    feedback), over and over in a thread until :meth:`stop`: what the canary analysis sees."""

    def __init__(self, settings: Settings, month: Partition, flights: int) -> None:
        from tenfold.serving.auth import ensure_token
        from tenfold.serving.traffic import TrafficReport

        self.settings, self.token = settings, ensure_token(settings)
        self.items = get_workload(settings).replay(month)[:flights]
        self.report = TrafficReport()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        from tenfold.serving import traffic

        chunk = 500
        while not self._stop.is_set():
            for start in range(0, len(self.items), chunk):
                if self._stop.is_set():
                    return
                traffic.replay(self.settings, self.items[start:start + chunk], token=self.token, concurrency=6,
                               report=self.report)

    def __enter__(self) -> Traffic:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(120)


def follow_rollout(settings: Settings, api: AirflowApi, before: set[str], version: str,
                   say: Callable[[str], object]) -> str | None:
    """Follow the ``rollout_model`` run the challenger event started: print each decision as it is recorded,
    then the outcome; returns the outcome (None if no run started)."""
    from tenfold.registry import ModelRegistry
    from tenfold.rollout.analysis import Check
    from tenfold.rollout.record import is_check, latest

    run_id = None
    deadline = time.monotonic() + 120
    while run_id is None:  # the scheduler starts the asset-triggered run within seconds
        new = [r for r in api.runs(ROLLOUT) if str(r["dag_run_id"]) not in before]
        if new:
            run_id = str(new[0]["dag_run_id"])
        elif time.monotonic() > deadline:
            say(f"{ROLLOUT}: no run was started by the challenger event; see {airflow_url(settings)}/dags/{ROLLOUT}")
            return None
        else:
            time.sleep(3)
    say(f"{ROLLOUT}: following run {run_id} (canary {version}; `tenfold rollout status` shows the same)")
    registry = ModelRegistry(settings)
    shown: set[str] = set()
    deadline = time.monotonic() + ROLLOUT_TIMEOUT_S
    while True:
        found = latest(registry, version)
        if found is not None:
            for key, e in found[1].items():
                if key in shown:
                    continue
                shown.add(key)
                if key.endswith("-set"):
                    say(f"  step {e['step']}: canary at {e['percent']} %")
                elif is_check(key, e):
                    say(f"    check {key}: {Check(e['verdict'], tuple(e['reasons']), e['values']).summary()}")
                elif key == "end":
                    say(f"  decision: {e['outcome'].replace('_', ' ').upper()}" + (f" ({'; '.join(e['reasons'])})" if e["reasons"] else ""))
                elif key == "done":
                    say(f"  report: {e['report']}")
        state = str(api.run(ROLLOUT, run_id)["state"])
        if state in ("success", "failed"):
            if state == "failed":
                say(f"{ROLLOUT} run {run_id} failed in {', '.join(api.failed_tasks(ROLLOUT, run_id)) or 'a task'}: "
                    f"see {airflow_url(settings)}/dags/{ROLLOUT}")
            return str(found[1]["end"]["outcome"]) if found and "end" in found[1] else None
        if time.monotonic() > deadline:
            raise DemoError(f"{ROLLOUT} did not finish in time; see {airflow_url(settings)}/dags/{ROLLOUT}")
        time.sleep(3)


def report_online(settings: Settings, since: dt.datetime, report: Any, say: Callable[[str], object]) -> None:
    """Wait until the feedback sink has landed and joined the traffic's outcomes; print accuracy per version and arm."""
    from tenfold.feedback import online_metrics
    from tenfold.serving import fleet

    say(f"traffic: {report.summary()}")
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
        acc = f"{m.accuracy:.3f}" if m.accuracy is not None else "n/a"
        say(f"  {group.group['model_version']} {group.group['arm']:>6}: {group.served} served, {m.count} with outcomes, "
            f"accuracy {acc}, log loss {loss}, AUC {auc}")
    rep = fleet.report(settings)
    say(f"serving: {rep.url}{settings.serving.server.api_prefix}/predict (token: `tenfold status`); HAProxy metrics "
        f"{rep.metrics_url}; each replica's /metrics in `tenfold serve status`; `tenfold feedback metrics`")


def run(settings: Settings, first: str, last: str, *, flights: int = DEMO_FLIGHTS,
        say: Callable[[str], object] = print) -> None:
    from tenfold.local.stack import describe, up
    from tenfold.quality.gate import data_docs_location
    from tenfold.registry import CHAMPION, ModelRegistry
    from tenfold.rollout.haproxy import HaproxyRouter

    months = month_range(first, last)
    if len(months) < 3:
        raise DemoError("the demo needs at least three months: the first model holds out the second-to-last, "
                        "the second model (trained on a later window) the last")
    statuses = up(settings, echo=say)
    api = _api(settings)
    for dag_id in (BUILD, TRAIN, ROLLOUT):
        api.wait_for_dag(dag_id)
    api.set_paused(TRAIN, True)  # no training on the features events of a half-built window
    api.set_paused(ROLLOUT, True)
    build_months(settings, api, months, say)
    registry = ModelRegistry(settings)
    window = [months[0].label, months[-3].label]
    if registry.resolve(CHAMPION) is None:
        say(f"the first model: trained on {window[0]}..{window[1]}, held out {months[-2].label}")
        first_run = train(settings, api, say, {"train_months": window, "holdout_months": [months[-2].label] * 2}, "first")
        show_training(api, first_run, say)
    say(describe(settings, statuses))
    say(f"features: {settings.storage.lake_uri}/{settings.storage.features_table}/year=*/month=*/_SUCCESS")
    say(f"Data Docs: {data_docs_location(settings)}/index.html")
    say(f"registry: gs://{settings.storage.models_bucket}/{settings.storage.registry_prefix} (`tenfold models list`)")
    say("")
    champion = ensure_serving(settings, say)
    if champion is None:
        return
    router = HaproxyRouter.from_settings(settings)
    since = dt.datetime.now(dt.UTC)
    with Traffic(settings, months[-1], flights) as live:
        say(f"serving: champion {champion}; replaying {len(live.items)} flights of {months[-1].label} through HAProxy "
            "as live traffic (with each outcome as feedback) until the rollout ends")
        api.set_paused(ROLLOUT, False)
        before = {str(r["dag_run_id"]) for r in api.runs(ROLLOUT)}
        later = [months[0].label, months[-2].label]
        say(f"the second model: trained on the later window {later[0]}..{later[1]}, held out {months[-1].label}")
        second = train(settings, api, say, {"train_months": later, "holdout_months": [months[-1].label] * 2,
                                            "seed": int(time.time()) % 10_000}, "second")
        decision = show_training(api, second, say)
        if decision.get("canary"):
            follow_rollout(settings, api, before, str(decision["challenger_version"]), say)
        else:
            say("no canary: the second model did not pass the offline gate, so the champion keeps serving")
    percent = router.canary_percent()
    say(f"final weights: stable {100 - percent} % / canary {percent} %; champion {registry.resolve(CHAMPION)}")
    report_online(settings, since, live.report, say)


__all__ = ["AirflowApiError", "DemoError", "run"]
