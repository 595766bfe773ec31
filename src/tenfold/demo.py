"""``tenfold demo`` (``make demo``): the whole lifecycle on the embedded default, through the real scheduler.

2013 is replayed as if it were live:

1. ``tenfold up``: the GCS and Pub/Sub emulators and Airflow's components on loopback.
2. ``build_features`` is backfilled over the first champion's window (default 2013-01..06): ingest -> Spark
   features -> Great Expectations gate -> atomic publish. Months already published are not rebuilt.
3. The first champion (when there is none yet): ``train_model`` trains on the window but its newest months
   (one; up to a quarter of a window of eight months or more) and holds those out; its gate promotes it by the
   floors alone. The local fleet serves it behind HAProxy.
4. Then the platform runs itself, one later month at a time (``--months``, default 6: July..December):
   ``build_features`` publishes the month; its features event starts ``batch_inference`` (the month scored
   through Pub/Sub by the worker pool) and ``monitor_drift`` (the month against the champion's reference
   profile); the fleet is rolled to load the month's lookup tables and the month's flights are sent through
   it as live traffic, with user keys and each flight's real outcome as feedback. Drift on a feature that
   triggers retraining emits the drift event that starts ``train_model`` (on the newest months plus the
   labelled feedback); a challenger that passes the offline gate starts ``rollout_model``, a canary checked
   against the champion on that live traffic. The weekly retraining schedule is wall-clock time and does not
   come due within a demo: the demo replays it as a scheduled baseline every ``retrain_every`` replayed months
   (skipped, and said, when the champion already learnt the months it would hold out).
5. A closing table: one row per month with the data validated, the drift score, the model serving, the AUC
   of the serving model on that month (from the offline scores) and the AUC the first champion, never
   retrained, would have had on the same month, and whether a retrain or a rollout happened.

Everything runs as Airflow DAG runs, so the same runs are there to inspect (and re-run) in the UI.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from tenfold.config import Settings
from tenfold.data.lake import Lake, LakeError, Partition, month_range
from tenfold.local.airflow import admin_password, airflow_url
from tenfold.local.airflow_api import AirflowApi, AirflowApiError
from tenfold.workloads import VERSION_KEY, get_workload, meta_problem

BUILD, TRAIN, ROLLOUT = "build_features", "train_model", "rollout_model"
INFER, DRIFT = "batch_inference", "monitor_drift"
FEATURE_TIMEOUT_S = 30 * 60  # per month, at worst, on a busy 2-core machine
TRAIN_TIMEOUT_S = 45 * 60
ROLLOUT_TIMEOUT_S = 30 * 60
# The served replay: this many of the newest month's flights, replayed over and over during the rollout.
DEMO_FLIGHTS = 3000
FEEDBACK_TIMEOUT_S = 180
# The month's first pass of flights through the fleet, at worst (then it stops at the next chunk).
FIRST_PASS_TIMEOUT_S = 15 * 60
# A month's offline scoring or drift run, at worst; an asset-triggered run appears within seconds.
MONTH_TIMEOUT_S = 20 * 60
NEW_RUN_TIMEOUT_S = 120


class DemoError(RuntimeError):
    pass


def _api(settings: Settings, say: Callable[[str], object] | None = None) -> AirflowApi:
    """The Airflow API client; with ``say``, the demo's own, which restarts an Airflow component that died while it
    waits (:class:`_WatchedApi`)."""
    password = admin_password(settings)
    if password is None:
        raise DemoError("Airflow has not written its admin password yet; run `tenfold status`")
    if say is None:
        return AirflowApi(airflow_url(settings), settings.airflow.admin_user, password)
    return _WatchedApi(settings, say, airflow_url(settings), settings.airflow.admin_user, password)


WATCH_S = 20.0  # at most this often, before an Airflow request, the demo looks whether an Airflow component died


class _WatchedApi(AirflowApi):
    """The demo's Airflow client: before a request, at most every :data:`WATCH_S`, it looks whether a component of
    the platform's Airflow died (by its pid alone, no health probe), and restarts it as ``tenfold up`` does, said
    with its log. Airflow 3's scheduler exits on an error of its own (on SQLite, a ``StaleDataError`` when the
    demo's backfill and the scheduled run of the DAG it just unpaused are written at once): every run the demo
    followed then stayed queued, and it waited out its timeouts with nothing running."""

    def __init__(self, settings: Settings, say: Callable[[str], object], *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._settings, self._say, self._looked = settings, say, time.monotonic()

    def _send(self, method: str, path: str, body: Any = None, *, auth: bool = True, attempt: int = 0,
              relogged: bool = False) -> Any:
        if attempt == 0 and not relogged and time.monotonic() - self._looked >= WATCH_S:
            self._looked = time.monotonic()
            self._revive()
        return super()._send(method, path, body, auth=auth, attempt=attempt, relogged=relogged)

    def _revive(self) -> None:
        from tenfold.local.stack import died, exclusive, up

        if not died(self._settings, "airflow"):
            return
        # Looked at again under the up/down lock: a `tenfold down` stops the components one by one and removes each
        # pid file once its process is gone, so one stopped on purpose looked dead for a moment (restarted, Airflow
        # ran on after the down, without the emulators it needs).
        with exclusive(self._settings, echo=self._say):
            if not (dead := died(self._settings, "airflow")):
                return
            logs = ", ".join(str(log) for _, log in dead)
            self._say(f"{', '.join(name for name, _ in dead)} died while the demo waited on it (see {logs}); "
                      "restarting it as `tenfold up` does")
            up(self._settings, ["airflow"], echo=self._say)


def _current(settings: Settings, lake: Lake, part: Partition, served: set[Partition]) -> bool:
    """Published by this code's feature definition, and servable (``served``: features and every lookup
    table published, :func:`tenfold.features.online.served_months`)."""
    if part not in served:
        return False
    return lake.read_manifest(settings.storage.features_table, part).extra.get(VERSION_KEY) == \
        get_workload(settings).contract.version


def build_months(settings: Settings, api: AirflowApi, months: list[Partition], say: Callable[[str], object]) -> bool:
    """Backfill ``build_features`` over the months not yet published by this feature definition; returns
    whether anything was built (so its features events went out)."""
    lake = Lake.from_settings(settings)
    from tenfold.features.online import served_months

    served = set(served_months(settings, lake=lake))
    todo = [m for m in months if not _current(settings, lake, m, served)]
    api.set_paused(BUILD, False)
    if not todo:
        say(f"features for {months[0].label}..{months[-1].label} are already published")
        return False
    stretches = _stretches(todo)
    if len(stretches) > 1:
        # Published months between two to build (an earlier demo over another window): one backfill from the first
        # to the last, redoing completed runs, rebuilt and re-published those too. One backfill per stretch, in turn.
        return any([build_months(settings, api, stretch, say) for stretch in stretches])
    # An earlier demo stopped with Ctrl-C left its backfill running: followed, not asked for again (Airflow keeps
    # one open backfill per DAG, so asking again was refused until it ended, and the demo gave up after 150 s).
    earlier = [b for b in api.backfills(BUILD) if not b.get("completed_at") and not b.get("is_paused")
               and b.get("reprocess_behavior") == "completed"  # as the demo asks: it redoes months of older features
               and str(b["from_date"])[:7] <= todo[0].label and str(b["to_date"])[:7] >= todo[-1].label]
    wanted = {m.label for m in todo}
    if earlier and (failed_then := sorted(label for label, run in _newest_runs(api).items()
                                          if label in wanted and str(run["state"]) == "failed")):
        # It failed those months before this demo looked (a timeout on a busy machine, say) and will not run them
        # again: followed, the demo failed at once on the old run, on every try until that backfill ended.
        say(f"{BUILD} backfill {earlier[0]['id']}, which an earlier demo started, failed {', '.join(failed_then)}: "
            "waiting for it to end, to backfill them again")
        _wait_for_backfill(api, earlier[0]["id"], FEATURE_TIMEOUT_S * len(todo), settings)
        return build_months(settings, api, months, say)  # what it published meanwhile is not built again
    if earlier:
        say(f"following {BUILD} backfill {earlier[0]['id']} ({str(earlier[0]['from_date'])[:7]}.."
            f"{str(earlier[0]['to_date'])[:7]}), which an earlier demo started, for {len(todo)} monthly runs")
    else:
        # "completed": a month published by an older feature definition has a successful run to redo.
        say(f"backfilling {BUILD} for {todo[0].label}..{todo[-1].label} ({len(todo)} monthly runs)")
        api.backfill(BUILD, f"{todo[0].label}-01T00:00:00Z", f"{todo[-1].label}-01T00:00:00Z", reprocess="completed")
    deadline = time.monotonic() + FEATURE_TIMEOUT_S * len(todo)
    seen: dict[str, str] = {}
    while True:
        runs = _newest_runs(api)
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
            return True
        if time.monotonic() > deadline:
            raise DemoError(f"{BUILD} did not finish in time; see {airflow_url(settings)}/dags/{BUILD}")
        time.sleep(3)


def _stretches(months: list[Partition]) -> list[list[Partition]]:
    """``months`` (in order) cut into runs of consecutive months."""
    out: list[list[Partition]] = []
    for m in months:
        if out and m == out[-1][-1].next():
            out[-1].append(m)
        else:
            out.append([m])
    return out


def _newest_runs(api: AirflowApi) -> dict[str, dict[str, Any]]:
    """``build_features``' newest run of each month (``YYYY-MM``), by logical date."""
    # Newest run per month last, so it wins (a backfill creates or re-queues them before it returns).
    return {str(r["logical_date"])[:7]: r for r in reversed(api.runs(BUILD, limit=100)) if r.get("logical_date")}


def _wait_for_backfill(api: AirflowApi, backfill_id: object, timeout_s: float, settings: Settings) -> None:
    deadline = time.monotonic() + timeout_s
    while any(b.get("id") == backfill_id and not b.get("completed_at") for b in api.backfills(BUILD)):
        if time.monotonic() > deadline:
            raise DemoError(f"{BUILD} backfill {backfill_id}, which an earlier demo started, did not end in time; see "
                            f"{airflow_url(settings)}/dags/{BUILD}")
        time.sleep(3)


def first_champion_run(settings: Settings, api: AirflowApi, initial: list[Partition], say: Callable[[str], object],
                       *, paused: set[str] | None = None) -> str:
    """The ``train_model`` run that makes the first champion, followed to its end; returns its id. ``paused``: the
    DAGs the demo left paused, which train_model leaves once it is unpaused here.

    Unpausing train_model starts its weekly schedule's latest run at once (catchup=False still runs the newest due
    one), on the newest published months: on a fresh platform that run is the first champion's. A run an earlier
    demo left queued or running (stopped with Ctrl-C) is that run: followed, not trained again beside it (a second
    run queued behind it, training the first champion twice and stretching the wait past its bound)."""
    before = run_ids(api, TRAIN)
    going = sorted(str(r["dag_run_id"]) for r in api.runs(TRAIN) if str(r.get("state")) in ("queued", "running"))
    api.set_paused(TRAIN, False)
    if paused is not None:
        paused.discard(TRAIN)
    first_run = going[0] if going else new_run(api, TRAIN, before, timeout_s=60)
    if first_run is None:  # this week's scheduled run happened on an earlier demo: start one by hand, on the
        # window split as that scheduled run splits it on a fresh home (its newest months held out, a quarter at most)
        from tenfold.pipelines.train_model import rolling_split

        trained, held = rolling_split(initial, settings.training.train_window, settings.training.holdout_window)
        say(f"the first champion: trained on {trained[0].label}..{trained[-1].label}, held out "
            f"{held[0].label}..{held[-1].label}")
        return train(settings, api, say, {"train_months": [trained[0].label, trained[-1].label],
                                          "holdout_months": [held[0].label, held[-1].label]}, "first")
    say(f"the first champion: {TRAIN} run {first_run}" + (" (an earlier demo's, still going)" if going else
                                                          " (the weekly schedule's, on the newest published months)"))
    if follow(settings, api, TRAIN, first_run, say, timeout_s=TRAIN_TIMEOUT_S) != "success":
        raise DemoError(f"{TRAIN} run {first_run} failed: open {airflow_url(settings)}/dags/{TRAIN} for its logs")
    return first_run


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


def task_state(api: AirflowApi, dag_id: str, run_id: str, task_id: str) -> str | None:
    """The task's state in that run (None when Airflow cannot say: the caller goes on as if unknown)."""
    try:
        state = api.task_states(dag_id, run_id).get(task_id)
    except AirflowApiError:
        return None
    return str(state) if state is not None else None


def ensure_serving(settings: Settings, say: Callable[[str], object]) -> str | None:
    """The local fleet serves the champion in both pools (started, or rolled one replica at a time); the
    canary gets no traffic until a rollout gives it some. Returns the champion (None: nothing to serve).
    Under the ``up``/``down`` lock, as ``tenfold up`` serves: a ``tenfold down`` meanwhile would stop the platform
    under a fleet this then starts or rolls."""
    from tenfold.local.stack import exclusive, feedback_sink_up, serving_drift, serving_up
    from tenfold.registry import CHAMPION, ModelRegistry
    from tenfold.rollout.haproxy import HaproxyRouter
    from tenfold.serving import fleet

    champion = ModelRegistry(settings).resolve(CHAMPION)
    if champion is None:
        say("serving: no champion yet (the gate promoted nothing), so there is nothing to serve")
        return None
    with exclusive(settings, echo=say):
        if fleet.supervisor_record(settings) is None:
            serving_up(settings, say=say)
        else:  # a fleet from an earlier demo: move both pools to the champion, one replica at a time
            # Not one started on other settings (another workload's, after a switch): it was rolled, then the sink
            # refused, leaving the fleet moved to a champion it was never meant to serve.
            if drift := serving_drift(settings):
                raise DemoError(drift)
            # It keeps the settings it started with, whatever this shell's: a sample rate below 1 (an earlier demo's,
            # refused since) would leave every month waiting for outcomes that never join.
            if (rate := fleet.running_settings(settings).serving.server.prediction_sample_rate) < 1:
                raise DemoError(f"the running serving fleet publishes {rate:g} of its predictions (the settings it "
                                "was started with), and the demo joins every served flight to its outcome: stop it "
                                "(`tenfold serve down`), then run the demo again")
            say(f"serving: rolling the running fleet to champion {champion} ...")
            for pool in ("stable", "canary"):
                fleet.rollout(settings, champion, pool=pool)
            feedback_sink_up(settings, say=say)
        HaproxyRouter.from_settings(settings).set_canary_percent(0)
    return champion


class Traffic:
    """The month's flights replayed through HAProxy as live traffic (user keys, then each outcome as
    feedback), over and over in a thread until the block ends: what the canary analysis sees.

    Every flight is sent at least once: the stop is honoured only after a whole pass (``--flights`` is how many
    flights a month sends). Stopped at the first 500-flight chunk after the month's scoring and drift runs ended, a
    month without a rollout sent 1000 or 1500 of its 3000 flights; during a rollout it keeps going, pass after pass,
    so the canary's checks have traffic. A block that ends on an error (Ctrl-C) stops at the next chunk."""

    def __init__(self, settings: Settings, month: Partition, flights: int) -> None:
        from tenfold.serving.auth import ensure_token
        from tenfold.serving.traffic import TrafficReport

        self.settings, self.token = settings, ensure_token(settings)
        self.items = get_workload(settings).replay(month)[:flights]
        self.report = TrafficReport()
        self._stop = threading.Event()  # stop after the pass under way (at once, when a whole pass is done)
        self._abandon = threading.Event()  # stop at the next chunk, pass or not
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        from tenfold.serving import traffic

        chunk = 500
        if not self.items:  # nothing to send (--flights 0): wait for the stop instead of spinning on an empty list
            self._stop.wait()
            return
        passes = 0
        while not (passes and self._stop.is_set()):
            for start in range(0, len(self.items), chunk):
                if self._abandon.is_set() or (passes and self._stop.is_set()):
                    return
                traffic.replay(self.settings, self.items[start:start + chunk], token=self.token, concurrency=6,
                               report=self.report)
            passes += 1

    def __enter__(self) -> Traffic:
        self._thread.start()
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        self._stop.set()
        if exc_type is not None:
            self._abandon.set()
        # The first pass ends: each request is bounded (30 s), and 3000 flights take about a minute at the 49 req/s a
        # busy 2-core machine served. A fleet far slower than that is left at the next chunk, not waited on for hours.
        self._thread.join(FIRST_PASS_TIMEOUT_S)
        self._abandon.set()
        self._thread.join(120)


def follow_rollout(settings: Settings, api: AirflowApi, before: set[str], version: str,
                   say: Callable[[str], object], *, failed: list[str] | None = None) -> str | None:
    """Follow the ``rollout_model`` run the challenger event started: print each decision as it is recorded,
    then the outcome; returns the outcome (None if no run started). ``failed`` gets the run when it failed or
    never started."""
    from tenfold.registry import ModelRegistry
    from tenfold.rollout.analysis import Check
    from tenfold.rollout.record import PROMOTION_REFUSED, is_check, latest, outcome

    run_id = None
    deadline = time.monotonic() + 120
    while run_id is None:  # the scheduler starts the asset-triggered run within seconds
        new = [r for r in api.runs(ROLLOUT) if str(r["dag_run_id"]) not in before]
        if new:
            run_id = str(new[0]["dag_run_id"])
        elif time.monotonic() > deadline:
            say(f"{ROLLOUT}: no run was started by the challenger event; see {airflow_url(settings)}/dags/{ROLLOUT}")
            if failed is not None:
                failed.append(f"{ROLLOUT}: no run started by the challenger event")
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
                elif key == PROMOTION_REFUSED:
                    say(f"  promotion refused: {'; '.join(e['reasons'])}")
                elif key == "done":
                    say(f"  report: {e['report']}")
        state = str(api.run(ROLLOUT, run_id)["state"])
        if state in ("success", "failed"):
            if state == "failed":
                tasks = api.failed_tasks(ROLLOUT, run_id)
                say(f"{ROLLOUT} run {run_id} failed in {', '.join(tasks) or 'a task'}: "
                    f"see {airflow_url(settings)}/dags/{ROLLOUT}")
                if failed is not None and not _concluded_safely(tasks, found[1] if found else None):
                    failed.append(f"{ROLLOUT} run {run_id} failed")
            if found and (came_to := outcome(found[1])) is not None:
                return came_to
            return "failed" if state == "failed" else "no decision"  # it ran: never "no run" in the table
        if time.monotonic() > deadline:
            raise DemoError(f"{ROLLOUT} did not finish in time; see {airflow_url(settings)}/dags/{ROLLOUT}")
        time.sleep(3)


def _concluded_safely(failed_tasks: list[str], record: dict[str, Any] | None) -> bool:
    """Whether a failed rollout run ended on conclude's own terms: conclude the one task failed (a step that failed
    after its checks had decided leaves no mark in the record), its record done, FAILED for want of data (the
    canary judged neither way, rolled back, alerted) and the run failed on purpose. A run whose conclude never
    finished, or whose deploy or a step task failed, is a failed run."""
    from tenfold.pipelines.rollout_model import DEPLOY_TASK_FAILED, STEP_TASK_FAILED

    if failed_tasks != ["conclude"] or not record or "done" not in record:
        return False
    reasons = record["done"].get("reasons") or []
    return not any(STEP_TASK_FAILED in r or DEPLOY_TASK_FAILED in r for r in reasons)


def report_online(settings: Settings, since: dt.datetime, report: Any, say: Callable[[str], object], *,
                  quiet: bool = False) -> None:
    """Wait until the feedback sink has landed and joined the traffic's outcomes; print accuracy per version and
    arm (``quiet``: one line per group, without the closing pointers)."""
    from tenfold.feedback import join, online_metrics
    from tenfold.serving import fleet

    say(f"traffic: {report.summary()}")
    for error in report.errors[:3]:
        say(f"  error: {error}")
    accepted = report.feedback.get(202, 0)
    # An outcome answered 202 was published durably: every one lands, and is waited for. A prediction's sample is
    # fire-and-forget: one the replica dropped (its buffer full, Pub/Sub failing, the breaker open) was answered 200
    # all the same and never lands, nor joins its outcome. What the replicas published is waited for, not more.
    dropped: dict[str, int] = {}
    deadline = time.monotonic() + FEEDBACK_TIMEOUT_S
    while True:  # the platform's feedback sink lands it; each look joins the window from what landed since
        groups = online_metrics(settings, since, by=("model_version", "arm"), refresh=True)
        served = sum(g.served for g in groups)
        # Joined, every outcome has landed; short of that, the feedback log says (an outcome of a dropped sample
        # has no prediction to join).
        landed = accepted if sum(g.metrics.count for g in groups) >= accepted else feedback_landed(settings, since)
        if landed >= accepted:
            if served < report.ok:
                dropped = dropped_samples(settings, since)
            if served >= report.ok - sum(dropped.values()):
                break
        if time.monotonic() > deadline:
            if landed < accepted:
                raise DemoError(f"the feedback sink did not land the demo's {accepted} outcomes within "
                                f"{FEEDBACK_TIMEOUT_S} s ({landed} landed); see its log in `tenfold status`")
            published = report.ok - sum(dropped.values())
            raise DemoError(f"the feedback sink landed the demo's {accepted} outcomes, but only {served} of the "
                            f"{published} predictions the fleet published ({report.ok} answered, "
                            f"{sum(dropped.values())} of their samples dropped) within {FEEDBACK_TIMEOUT_S} s; see its "
                            "log in `tenfold status`")
        time.sleep(2)
    if served < report.ok:
        reasons = ", ".join(f"{reason} {n}" for reason, n in sorted(dropped.items()))
        say(f"  {report.ok - served} of the {report.ok} predictions answered are not in the online metrics: the replicas "
            f"dropped {sum(dropped.values())} prediction sample(s) ({reasons}), which are fire-and-forget (the answer "
            "goes out all the same), so those predictions never reached the feedback sink, nor their outcomes a "
            "prediction to join; `tenfold_dropped_samples_total` on each replica's /metrics (`tenfold serve status`)")
    join(settings)  # publish it now for the next retraining (the sink's idle join would, a little later)
    say("online accuracy by model version and arm (predictions joined to their feedback):")
    for group in groups:
        m = group.metrics
        auc = f"{m.auc:.3f}" if m.auc is not None else "n/a"
        loss = f"{m.log_loss:.4f}" if m.log_loss is not None else "n/a"
        acc = f"{m.accuracy:.3f}" if m.accuracy is not None else "n/a"
        say(f"  {group.group['model_version']} {group.group['arm']:>6}: {group.served} served, {m.count} with outcomes, "
            f"accuracy {acc}, log loss {loss}, AUC {auc}")
    if quiet:
        return
    rep = fleet.report(settings)
    say(f"serving: {rep.url}{settings.serving.server.api_prefix}/predict (token: `tenfold status`); HAProxy metrics "
        f"{rep.metrics_url} (user tenfold, the token as password); each replica's /metrics in `tenfold serve status`; "
        "`tenfold feedback metrics`")


def feedback_landed(settings: Settings, since: dt.datetime) -> int:
    """The outcomes the feedback sink has landed that were received at ``since`` or later: distinct prediction ids in
    the feedback log, whether or not their prediction landed (one whose sample a replica dropped has no row to join)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from tenfold.feedback.log import read_log
    from tenfold.feedback.schema import FEEDBACK_LOG
    from tenfold.feedback.upsert import JoinOptions

    # The log is partitioned by the month received; a file lands after what it holds, up to the clocks' skew.
    months = month_range(Partition.from_date(since), Partition.from_date(dt.datetime.now(dt.UTC)))
    landed_since = since - dt.timedelta(seconds=JoinOptions.of(settings).landing_skew_s)
    log = read_log(Lake.from_settings(settings), settings.storage.feedback_table, months, FEEDBACK_LOG,
                   landed_since=landed_since)
    log = log.filter(pc.greater_equal(log["received_at"], pa.scalar(since, FEEDBACK_LOG.field("received_at").type)))
    return len(pc.unique(log["prediction_id"]))


DROPPED_SAMPLES = "tenfold_dropped_samples_total"


def dropped_samples(settings: Settings, since: dt.datetime) -> dict[str, int]:
    """The prediction samples the fleet's replicas dropped, by reason: ``tenfold_dropped_samples_total`` on each
    running replica's own /metrics, and the counts each replica that exited at ``since`` or later left as it went
    (``fleet.ended_dir``: a rollout that replaced replicas within the month took their /metrics with them). A replica
    counts from its start, and every one restarts when a month's lookups are reloaded, before the month's traffic;
    one that does not answer counts none (until its exit record is there: the caller looks again)."""
    from prometheus_client.parser import text_string_to_metric_families

    from tenfold.local import loopback
    from tenfold.serving import fleet

    running = fleet.running_settings(settings)
    status = fleet.read_status(running)
    host, path = running.local.bind_host, running.serving.server.metrics_path
    by: dict[str, int] = {}
    counted: set[int] = set()
    for replica in (r for pool in (status.pools.values() if status else []) for r in pool.replicas):
        try:
            with loopback.urlopen(f"http://{host}:{replica.port}{path}", timeout=5) as resp:
                families = list(text_string_to_metric_families(resp.read().decode()))
        except (OSError, ValueError):  # gone since (drained, restarted) or not answering: its exit record, below
            continue
        counted.add(replica.pid)
        for sample in (s for family in families for s in family.samples if s.name == DROPPED_SAMPLES):
            reason = sample.labels.get("reason", "unknown")
            by[reason] = by.get(reason, 0) + int(sample.value)
    # After the live ones: a replica read above that exits meanwhile is not counted twice (its pid was).
    for record in sorted(fleet.ended_dir(running).glob("*.json")):
        try:
            ended = json.loads(record.read_text())
            if ended["pid"] in counted or float(ended["ended_at"]) < since.timestamp():
                continue
            for reason, n in dict(ended["dropped"]).items():
                by[str(reason)] = by.get(str(reason), 0) + int(n)
        except (OSError, ValueError, KeyError, TypeError):  # being replaced, or not one: nothing to add
            continue
    return {reason: n for reason, n in by.items() if n}


@dataclass
class MonthRow:
    """One replayed month of the lifecycle, as the demo's closing table shows it."""

    month: str
    validated: str = "no"
    drift: str = "-"
    serving: str = "-"
    auc_serving: float | None = None
    auc_first: float | None = None
    scored: str = "-"
    retrain: str = "-"
    rollout: str = "-"
    first_trained_on_it: bool = False  # the first champion's AUC on this month is in-sample (the table marks it)
    failed_runs: list[str] = field(default_factory=list)  # the month's runs that failed or never started

    def cells(self) -> list[str]:
        def auc(v: float | None) -> str:
            return "n/a" if v is None else f"{v:.4f}"

        first = auc(self.auc_first) + (" (trained on it)" if self.first_trained_on_it and self.auc_first is not None
                                       else "")
        return [self.month, self.validated, self.drift, self.serving, auc(self.auc_serving), first,
                self.scored, self.retrain, self.rollout]


HEADERS = ["month", "validated", "drift (PSI)", "serving", "AUC serving", "AUC first champion", "offline scored",
           "retrain", "rollout"]


def table(rows: list[MonthRow]) -> str:
    """The closing table: one row per replayed month."""
    data = [r.cells() for r in rows]
    widths = [max(len(h), *(len(d[i]) for d in data)) if data else len(h) for i, h in enumerate(HEADERS)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(HEADERS, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(d, widths, strict=True)) for d in data]
    return "\n".join(lines)


def scheduled_conf(settings: Settings, part: Partition, say: Callable[[str], object]) -> dict[str, list[str]] | None:
    """The windows the weekly run would take in replay time, at ``part``: the default split over the published months
    up to it, never later ones an earlier demo published (an empty conf trained on months the replay had not
    reached, and the gate judged it on others).

    None (said) when the champion learnt a month that split holds out: a demo run again over a finished one finds a
    champion trained through September at September's replay, the split holds out the newest month all the same (at
    least one), evaluate refuses to score the champion on what it learnt, and the gate, with nothing to compare,
    failed the run and the demo. The schedule stays due, for a month the champion has not learnt."""
    from tenfold.pipelines.train_model import _champion_at_plan, default_split
    from tenfold.registry import ModelRegistry
    from tenfold.registry.errors import RegistryError

    published = Lake.from_settings(settings).published_partitions(settings.storage.features_table)
    champion = _champion_at_plan(settings)  # the one the split is chosen beside, and the one whose months are read
    train, holdout = default_split(settings, [p for p in published if p <= part], champion_at_plan=champion)
    learnt: set[str] = set()
    if (version := champion.get("version")) is not None:
        try:
            lineage = ModelRegistry(settings).get(version).lineage
        except RegistryError:  # a damaged champion: the run's evaluate says so, in the gate's comparison
            lineage = None
        learnt = {r.partition for r in lineage.train_partitions} if lineage else set()
    if held := sorted({p.label for p in holdout} & learnt):
        say(f"{TRAIN}: the champion {version} learnt through {max(learnt)}: scheduled baseline skipped (it would hold "
            f"out {', '.join(held)}, which the champion learnt, so the gate could not compare the two); it stays due")
        return None
    return {"train_months": [train[0].label, train[-1].label], "holdout_months": [holdout[0].label, holdout[-1].label]}


def new_run(api: AirflowApi, dag_id: str, before: set[str], *, timeout_s: float) -> str | None:
    """The id of a run of ``dag_id`` that is not in ``before`` (the scheduler creates asset-triggered runs
    within seconds of the event); None if none appeared within ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        new = sorted(str(r["dag_run_id"]) for r in api.runs(dag_id) if str(r["dag_run_id"]) not in before)
        if new:
            return new[0]
        if time.monotonic() > deadline:
            return None
        time.sleep(2)


def started_by(api: AirflowApi, run_id: str) -> str:
    """What started ``run_id`` of train_model, from its run type: a run found after a month's drift may be the weekly
    cron's (on a demo run again a week later, unpausing the DAG starts the tick it missed), not the drift event's."""
    kind = api.run(TRAIN, run_id).get("run_type")
    return {"asset_triggered": "started by the drift event",
            "scheduled": "started by the weekly schedule (Airflow's cron, on every published month)",
            "manual": "triggered by hand",
            "backfill": "a backfill's"}.get(str(kind), f"a {kind} run")


def run_ids(api: AirflowApi, dag_id: str) -> set[str]:
    return {str(r["dag_run_id"]) for r in api.runs(dag_id)}


def follow(settings: Settings, api: AirflowApi, dag_id: str, run_id: str, say: Callable[[str], object], *,
           timeout_s: float) -> str:
    """Wait for the run to end, saying each state; returns the final state."""
    states = api.wait_for_runs(dag_id, [run_id], timeout_s=timeout_s, poll_s=3,
                               on_change=lambda r, s: say(f"  {dag_id} {r}: {s}"))
    state = states[run_id]
    if state != "success":
        say(f"  {dag_id} {run_id} failed in {', '.join(api.failed_tasks(dag_id, run_id)) or 'a task'}: "
            f"see {airflow_url(settings)}/dags/{dag_id}")
    return state


def month_auc(settings: Settings, part: Partition, scores_of: str | None, model_dir: Any) -> tuple[float | None, float | None]:
    """(AUC of the scores offline inference published for ``part``, AUC of the model in ``model_dir`` on the same
    month), both on the month's published features and their labels."""
    import numpy as np
    import pyarrow.compute as pc

    from tenfold.feedback.metrics import binary_metrics
    from tenfold.training.evaluate import evaluate_model

    lake = Lake.from_settings(settings)
    contract = get_workload(settings).contract
    serving: float | None = None
    if scores_of is not None and part in set(lake.published_partitions(scores_of)):
        keys = list(contract.key_columns)
        features = lake.read_table(settings.storage.features_table, [part], columns=[*keys, contract.label])
        scores = lake.read_table(scores_of, [part], columns=[*keys, "probability"])
        joined = features.join(scores, keys, join_type="inner")
        labels = pc.fill_null(joined[contract.label].cast("float64"), float("nan")).to_numpy()
        known = ~np.isnan(labels)
        serving = binary_metrics(labels[known], joined["probability"].to_numpy()[known]).auc
    # The folder came from the registry: loaded as a model of this workload, its meta.json chooses no module.
    first = (evaluate_model(model_dir, lake, [part], table=settings.storage.features_table,
                            for_workload=settings.workload) if model_dir else None)
    first_auc = getattr(first, "auc", None) if first is not None else None
    return serving, first_auc


def drift_cell(settings: Settings, part: Partition) -> str:
    """The month's drift score as the monitor reported it: the largest PSI over the features that trigger
    retraining, marked DRIFT when the monitor decided to retrain."""
    import math

    from tenfold.monitoring.drift import DriftError, read_report

    try:
        report = read_report(settings, part)
    except DriftError as exc:
        return f"n/a ({exc})"
    if math.isnan(report.score):
        return f"n/a ({report.reason or report.decision})"
    return f"{report.score:.3f}" + (f" DRIFT ({', '.join(report.triggered)})" if report.retrain else "")


def replay_month(settings: Settings, api: AirflowApi, part: Partition, first_model: Any, flights: int,
                 say: Callable[[str], object], *, scheduled_due: bool = False, clock: str = "",
                 first_trained_on: frozenset[str] = frozenset(), row: MonthRow | None = None) -> MonthRow:
    """One month as if it were live: features, serving, offline scoring, feedback, drift, retraining, rollout.

    ``scheduled_due``: the baseline retraining schedule comes due this month (in replay time) if drift does not
    start a retrain first. ``row``: the row to fill (what it holds when this raises is what the month reached)."""
    from tenfold.registry import CHAMPION, ModelRegistry

    row = row or MonthRow(part.label, first_trained_on_it=part.label in first_trained_on)
    registry = ModelRegistry(settings)
    say("")
    say(f"=== {part.label} ===" + (f" ({clock})" if clock else ""))
    before = {dag_id: run_ids(api, dag_id) for dag_id in (INFER, DRIFT, TRAIN, ROLLOUT)}
    started: dict[str, str] = {}  # the runs this month's replay started by hand: followed by their ids
    if not build_months(settings, api, [part], say):
        # Published by an earlier demo: no features event this time, so start the month's runs by hand (and follow
        # those: a leftover backfill's asset-triggered run of another month sorts first among the new ones).
        for dag_id in (INFER, DRIFT):
            started[dag_id] = f"demo__{part.label}__{time.strftime('%Y%m%dT%H%M%S')}"
            api.trigger(dag_id, started[dag_id], {"month": part.label})
    row.validated = "yes"
    # The replicas load the lookup tables when they start: restarting them one at a time serves the new month.
    from tenfold.serving import fleet

    champion = registry.resolve(CHAMPION)
    row.serving = champion or "-"
    say(f"serving: every replica reloads the lookup tables, one at a time, to serve {part.label} ...")
    fleet.reload_lookups(settings, part.label)
    since = dt.datetime.now(dt.UTC)
    with Traffic(settings, part, flights) as live:
        say(f"serving {champion}: {len(live.items)} flights of {part.label} replayed as live traffic, with feedback "
            "(each at least once; again and again while a rollout runs)")
        for dag_id in (INFER, DRIFT):
            found = started.get(dag_id) or new_run(api, dag_id, before[dag_id], timeout_s=NEW_RUN_TIMEOUT_S)
            if found is None:
                say(f"  {dag_id}: no run was started by the features event; see {airflow_url(settings)}/dags/{dag_id}")
                row.failed_runs.append(f"{dag_id}: no run started by the features event")
                continue
            state = follow(settings, api, dag_id, found, say, timeout_s=MONTH_TIMEOUT_S)
            if state != "success":
                row.failed_runs.append(f"{dag_id} run {found} {state}")
            if dag_id == INFER:
                row.scored = "yes" if state == "success" else state
            elif state != "success":  # the report read would be an earlier run's (a demo run again): not shown
                row.drift = state
            else:
                row.drift = drift_cell(settings, part)
                if "DRIFT" in row.drift and task_state(api, DRIFT, found, "decide") == "skipped":
                    row.drift += " (retrain triggered before)"  # an earlier demo's run on the same content did
        # Without a drift event: one look (a run the weekly cron started meanwhile is taken too).
        evented = "DRIFT" in row.drift and "before" not in row.drift
        retrain = new_run(api, TRAIN, before[TRAIN], timeout_s=NEW_RUN_TIMEOUT_S if evented else 0)
        why = started_by(api, retrain) if retrain is not None else ""
        if retrain is None and evented:  # said, shown in the table and failed: the row read as a drift handled
            say(f"{TRAIN}: no run started by the drift event within {NEW_RUN_TIMEOUT_S:.0f} s (see {DRIFT}'s decide "
                "task); a run that starts later is not followed")
            row.drift += " (no retrain started)"
            row.failed_runs.append(f"{TRAIN}: no run started by the drift event within {NEW_RUN_TIMEOUT_S:.0f} s "
                                   f"(check that {TRAIN} is not paused, and {DRIFT}'s decide task)")
        if retrain is None and scheduled_due:
            # The weekly baseline in replay time: a month holds four weeks, so the schedule is due; the demo
            # honours it every few months (``retrain_every``) to stay short.
            from tenfold.pipelines.common import PipelineError

            try:
                conf = scheduled_conf(settings, part, say)
            except PipelineError as exc:  # no two consecutive months up to it (one withdrawn): this month's row says so
                say(f"{TRAIN}: the scheduled baseline cannot run: {exc}")
                row.failed_runs.append(f"{TRAIN}: the scheduled baseline cannot run: {exc}")
                conf = None
            if conf is not None:
                retrain = f"demo__scheduled__{part.label}__{time.strftime('%Y%m%dT%H%M%S')}"
                api.trigger(TRAIN, retrain, conf)
            why = "the scheduled baseline, in replay time"
        if retrain is not None:
            say(f"{TRAIN}: run {retrain} ({why})")
            if follow(settings, api, TRAIN, retrain, say, timeout_s=TRAIN_TIMEOUT_S) == "success":
                decision = show_training(api, retrain, say)
                row.retrain = str(xcom(api, TRAIN, retrain, "register")["version"])
                if decision.get("canary"):
                    row.rollout = follow_rollout(settings, api, before[ROLLOUT], row.retrain, say,
                                                 failed=row.failed_runs) or "no run"
                else:
                    row.rollout = "gate: no"
            else:
                row.retrain = "failed"
                row.failed_runs.append(f"{TRAIN} run {retrain} failed")
    report_online(settings, since, live.report, say, quiet=True)
    now = registry.resolve(CHAMPION)
    if now and now != champion:
        row.serving = f"{champion} -> {now}"
    # The serving AUC comes from this month's offline scores only when this demo's scoring run published them.
    scores = getattr(settings.storage, "scores_table", None) if row.scored == "yes" else None
    row.auc_serving, row.auc_first = month_auc(settings, part, scores, first_model)
    return row


def _month_cannot_go_on(exc: BaseException) -> bool:
    """A refusal or an outage that ends a replayed month (its row says why; the table still shows the months before):
    a run followed past its bound (AirflowApiError), the fleet's reload timing out (a LocalPlatformError), the
    registry, the lake or a pipeline refusing, the feedback join's lock held too long, a model or token that cannot be
    read, a service away (a Google outage, or a local one not answering). Not a fault in the code."""
    from tenfold.data.locks import LockLost, LockTimeout
    from tenfold.local.process import LocalPlatformError
    from tenfold.model.io import ModelLoadError
    from tenfold.outages import is_outage, is_unreachable
    from tenfold.pipelines.common import PipelineError
    from tenfold.registry.errors import RegistryError
    from tenfold.serving.auth import TokenMissing

    return isinstance(exc, (DemoError, AirflowApiError, LocalPlatformError, RegistryError, PipelineError, LakeError,
                            LockTimeout, LockLost, ModelLoadError, TokenMissing)) or is_outage(exc) or is_unreachable(exc)


def replay_months(settings: Settings, api: AirflowApi, later: list[Partition], first_model: Any, flights: int,
                  say: Callable[[str], object], *, retrain_every: int, started: float,
                  first_trained_on: frozenset[str]) -> list[MonthRow]:
    """:func:`replay_month` for each of ``later``, the baseline schedule due every ``retrain_every`` months since the
    last retrain. A month that cannot go on (its features run failed, a wait ran out) ends the replay with a row that
    says so: the closing table still shows the months before it, and the demo fails after it."""
    rows: list[MonthRow] = []
    since_training = 0
    for part in later:
        since_training += 1
        due = retrain_every > 0 and since_training >= retrain_every
        clock = f"{(time.monotonic() - started) / 60:.1f} min since the demo started"
        row = MonthRow(part.label, first_trained_on_it=part.label in first_trained_on)
        rows.append(row)
        try:
            replay_month(settings, api, part, first_model, flights, say, scheduled_due=due, clock=clock,
                         first_trained_on=first_trained_on, row=row)
        except Exception as exc:
            if not _month_cannot_go_on(exc):
                raise  # a fault in the code: its own ending (and traceback with TENFOLD_DEBUG), not a month's row
            say(f"{part.label}: {exc}")
            row.failed_runs.append(str(exc))  # the row keeps what the month reached (validated, scored, ...)
            if len(later) > len(rows):
                say(f"the replay stops at {part.label}: {', '.join(p.label for p in later[len(rows):])} not replayed")
            break
        if rows[-1].retrain != "-":
            since_training = 0
    return rows


def demo_months(first: str, champion_until: str, months: int,
                settings: Settings | None = None) -> tuple[list[Partition], list[Partition]]:
    """The first champion's window (``first..champion_until``) and the ``months`` replayed after it. Raises
    ValueError for a month that is not ``YYYY-MM``, :class:`DemoError` for a window shorter than two months or,
    given ``settings``, one reaching outside the months ``build_features`` covers (its ingest refuses such a
    month: the demo failed there, after replaying every month before it), and WorkloadError (a ValueError) for a
    workload that cannot be loaded (TENFOLD_WORKLOAD=nope: the platform started, and the first features run failed)."""
    initial = month_range(first, champion_until)
    if len(initial) < 2:
        raise DemoError("the first champion needs at least two months: it trains on the older ones and holds the "
                        f"newest out (got {first}..{champion_until})")
    later: list[Partition] = []
    for _ in range(months):
        later.append((later[-1] if later else initial[-1]).next())
    if settings is not None:
        from tenfold.pipelines.build_features import months as dag_months

        get_workload(settings)
        lo, hi = dag_months(settings)
        end = (later or initial)[-1]
        if initial[0] < lo or (hi is not None and end > hi):
            raise DemoError(f"the demo's months {initial[0].label}..{end.label} reach outside the months {BUILD} "
                            f"covers ({lo.label}..{hi.label if hi else 'now'}): choose --first, --champion-until "
                            "and --months within them")
        if (rate := settings.serving.server.prediction_sample_rate) < 1:
            # Each month waits until every flight it served has come back joined to its outcome: with a sample of
            # the predictions published, the rest never join, and the wait ran out at the first replayed month.
            raise DemoError(f"the demo joins the outcome of every flight it serves to its prediction, but "
                            f"settings.serving.server.prediction_sample_rate is {rate:g}, so only that share is "
                            "published: run the demo with the rate at 1 (unset "
                            "TENFOLD_SERVING__SERVER__PREDICTION_SAMPLE_RATE)")
    return initial, later


def refuse_a_champion_this_code_cannot_load(settings: Settings, registry: Any) -> None:
    """Refuse (:class:`DemoError`) a home whose champion this code cannot load (:func:`tenfold.workloads.meta_problem`),
    typically a home of an older Tenfold, whose champion learnt from another version of the feature definitions: every
    month is rebuilt at the new version, but the demo trains a first champion only when there is none, so the old one
    was kept, and every replica, offline scoring and the month's AUC refused it, after minutes of rebuilding, on every
    run of the demo."""
    from tenfold.registry import CHAMPION

    champion = registry.resolve(CHAMPION)
    if champion is None:
        return
    if problem := meta_problem(registry.meta(champion), settings.workload, get_workload(settings).contract):
        raise DemoError(
            f"the champion {champion} can be neither served nor scored here: {problem}. Start the demo on a fresh "
            f"platform home (`tenfold down`, then remove {settings.local.home}, or set TENFOLD_HOME to a new folder), "
            "or rebuild the features (a build_features backfill that reprocesses completed runs), train a model on "
            "them (train_model) and promote it (`tenfold models promote <version>`)")


def failures(rows: list[MonthRow]) -> list[str]:
    """The DAG runs of the replayed months that failed or never started, one ``<month>: <run>`` each (empty: every
    run the demo followed succeeded). A rollout that rolled back or ended FAILED for want of data, or a gate that
    said no, is an outcome its run reached, not a failure of the run."""
    return [f"{row.month}: {what}" for row in rows for what in row.failed_runs]


def run(settings: Settings, first: str = "2013-01", champion_until: str = "2013-06", *, months: int = 6,
        flights: int = DEMO_FLIGHTS, retrain_every: int = 3, say: Callable[[str], object] = print) -> list[MonthRow]:
    """The whole lifecycle: the first champion on ``first..champion_until``, then ``months`` later months replayed
    one at a time as if they were live. Retraining starts on drift, or when ``retrain_every`` replayed months
    have passed since the last one (the weekly baseline schedule, honoured less often to keep the demo short;
    0 = drift only). Returns the closing table's rows. One demo at a time per home (:func:`one_demo_at_a_time`)."""
    started = time.monotonic()
    initial, later = demo_months(first, champion_until, months, settings)
    with one_demo_at_a_time(settings):
        return _lifecycle(settings, initial, later, flights=flights, retrain_every=retrain_every, say=say,
                          started=started)


def _lifecycle(settings: Settings, initial: list[Partition], later: list[Partition], *, flights: int,
               retrain_every: int, say: Callable[[str], object], started: float) -> list[MonthRow]:
    """:func:`run`'s lifecycle, under its lock."""
    from tenfold.local.stack import describe, serving_drift, up
    from tenfold.quality.gate import data_docs_location
    from tenfold.registry import CHAMPION, ModelRegistry
    from tenfold.serving import fleet
    from tenfold.serving.haproxy import HaproxyError, haproxy_binary
    from tenfold.serving.loading import resolve_and_download

    # The fleet starts after the first window's features and champion (minutes of Spark and training): a port another
    # program holds is said now, before anything starts (and before Airflow runs with settings a new port would change).
    if busy := fleet.port_refusals(settings):
        raise DemoError("the serving fleet could not start:\n  - " + "\n  - ".join(busy))
    # A fleet or sink left running on other settings (another workload's) is refused now too, not after the features
    # and the first champion were built (ensure_serving checks it again before it rolls).
    if drift := serving_drift(settings):
        raise DemoError(drift)
    try:  # and a missing HAProxy too (`tenfold demo` run without `make setup`): found there, minutes of work later
        haproxy_binary()
    except HaproxyError as exc:
        raise DemoError(f"the serving fleet could not start: {exc}") from None
    statuses = up(settings, echo=say)
    api = _api(settings, say)
    for dag_id in (BUILD, TRAIN, ROLLOUT, INFER, DRIFT):
        api.wait_for_dag(dag_id)
    # The DAGs paused for the first window are unpaused again however the demo ends before it serves the champion
    # (Ctrl-C, a refusal): left paused, nothing ran on a drift event or the weekly schedule until the next demo.
    # Nothing reacts to the features events of the first window: there is no champion to score or compare with.
    # Airflow still hands those events to the first run of batch_inference and monitor_drift once they are unpaused;
    # each takes only that run's newest month and logs the backlog (with the run conf that does each month).
    paused: set[str] = set()  # what the demo has left paused, so that an ending names those and only those
    registry = ModelRegistry(settings)
    try:
        for dag_id in (TRAIN, ROLLOUT, INFER, DRIFT):
            api.set_paused(dag_id, True)
            paused.add(dag_id)
    except BaseException:
        _unpause_after_the_first_window(settings, api, say, paused)
        raise
    # Before minutes of Spark that could not help it, and outside the unpausing below: a champion this code refuses
    # leaves the DAGs paused, as each of them would only fail on it (said, with how to unpause them once one serves).
    try:
        refuse_a_champion_this_code_cannot_load(settings, registry)
    except DemoError:
        others = ", ".join(_in_order(paused - {TRAIN}))
        say(f"{_left_paused(paused)}, as each would only fail on a champion this code cannot load: "
            + (f"unpause {TRAIN} in the Airflow UI, {airflow_url(settings)}, before training a model there (a paused "
               "DAG's runs only queue)" + (f", and {others} once that model is promoted, or run the demo again then"
                                           if others else "")
               if TRAIN in paused else f"once a champion it can load is promoted, {_unpause_them(settings, paused)}"))
        raise
    except BaseException:
        _unpause_after_the_first_window(settings, api, say, paused)
        raise
    try:
        build_months(settings, api, initial, say)
        if registry.resolve(CHAMPION) is None:
            show_training(api, first_champion_run(settings, api, initial, say, paused=paused), say)
            api.set_paused(TRAIN, True)
            paused.add(TRAIN)
        say(describe(settings, statuses))
        say(f"features: {settings.storage.lake_uri}/{settings.storage.features_table}/year=*/month=*/_SUCCESS")
        say(f"Data Docs: {data_docs_location(settings)}/index.html")
        say(f"registry: gs://{settings.storage.models_bucket}/{settings.storage.registry_prefix} "
            "(`tenfold models list`)")
        first_version = registry.resolve(CHAMPION)
        if first_version is None:
            raise DemoError(f"no champion: the gate promoted no model of the first window (its comparison is above), "
                            f"so there is nothing to serve or to monitor; see {airflow_url(settings)}/dags/{TRAIN}")
        _, first_model = resolve_and_download(settings, first_version)
        lineage = registry.get(first_version).lineage
        trained_on = frozenset(r.partition for r in lineage.train_partitions) if lineage else frozenset()
        ensure_serving(settings, say)
        # From here on the platform runs itself: each features event starts offline scoring and drift monitoring,
        # drift starts a retrain (as does the weekly schedule), and a new challenger starts a canary rollout.
        for dag_id in (INFER, DRIFT, TRAIN, ROLLOUT):
            api.set_paused(dag_id, False)
            paused.discard(dag_id)
    except BaseException:
        _unpause_after_the_first_window(settings, api, say, paused)
        raise
    rows = replay_months(settings, api, later, first_model, flights, say, retrain_every=retrain_every,
                         started=started, first_trained_on=trained_on)
    say("")
    # What that model was really trained on, from its lineage: on a demo run again over an earlier one's home, the
    # champion found is a later model, trained on later months than this run's first window.
    window = f"{min(trained_on)}..{max(trained_on)}" if trained_on else "months its lineage does not name"
    say(f"the lifecycle, month by month (first champion {first_version}, trained on {window}):")
    say(table(rows))
    say(f"the demo took {(time.monotonic() - started) / 60:.1f} min")
    say(f"every run is in the Airflow UI: {airflow_url(settings)} (login: `tenfold status`)")
    if failed := failures(rows):
        raise DemoError(f"{len(failed)} step(s) of the replayed months failed ({'; '.join(failed)}): their runs' logs "
                        f"are in the Airflow UI, {airflow_url(settings)}")
    return rows


def _in_order(dags: set[str]) -> list[str]:
    return [d for d in (INFER, DRIFT, TRAIN, ROLLOUT) if d in dags]


def _left_paused(dags: set[str]) -> str:
    """``"<dag>, <dag> are left paused"`` (``is`` for one)."""
    return f"{', '.join(_in_order(dags))} {'is' if len(dags) == 1 else 'are'} left paused"


def _unpause_them(settings: Settings, dags: set[str]) -> str:
    return f"unpause {'it' if len(dags) == 1 else 'them'} in the Airflow UI, {airflow_url(settings)}, or run the demo again"


def _unpause_after_the_first_window(settings: Settings, api: AirflowApi, say: Callable[[str], object],
                                    paused: set[str]) -> None:
    """The demo ended before the champion served (Ctrl-C, a refusal): unpause the DAGs it paused for the first window
    and left paused (``paused``: train_model is unpaused while the first champion trains), as it would have, so the
    platform runs itself again (best effort: what stays paused is named, with the way to unpause it). With no
    champion they stay paused (said), as the demo leaves them when the first window promotes none: there is nothing
    to score, monitor or compare with."""
    from tenfold.registry import CHAMPION, ModelRegistry

    if not paused:
        return
    them = "it" if len(paused) == 1 else "them"
    try:
        champion = ModelRegistry(settings).resolve(CHAMPION)
    except Exception as exc:  # the registry away too: nothing is unpaused that might score against no champion
        say(f"{_left_paused(paused)} (the demo pauses {them} until the fleet serves the champion, and the registry "
            f"could not say whether there is one: {exc}): {_unpause_them(settings, paused)}")
        return
    if champion is None:
        say(f"{_left_paused(paused)}: there is no champion yet to score, monitor or compare with; the demo unpauses "
            f"{them} once one serves (run it again), or unpause {them} in the Airflow UI, {airflow_url(settings)}")
        return
    dags = _in_order(paused)
    try:
        for dag_id in dags:
            api.set_paused(dag_id, False)
            paused.discard(dag_id)
    except Exception as exc:  # Airflow away: one line, not a second traceback
        them = "it" if len(paused) == 1 else "them"
        say(f"{_left_paused(paused)} (the demo pauses {them} until the fleet serves the champion, and Airflow did not "
            f"answer: {exc}): {_unpause_them(settings, paused)}")
        return
    say(f"{', '.join(dags)} unpaused again (the demo pauses {'it' if len(dags) == 1 else 'them'} until the fleet "
        "serves the champion)")


@contextlib.contextmanager
def one_demo_at_a_time(settings: Settings) -> Iterator[None]:
    """Hold the home's demo lock (``<home>/run/.demo.lock``, an ``flock``, with the holder's pid in it) for the whole
    demo; a second is refused at once (:class:`DemoError`), before it starts anything: it paused the first one's DAGs
    and rolled its canary pool back to the champion at 0 %, failing the first one's rollout."""
    import fcntl
    import os

    from tenfold.local.services import run_dir

    run_dir(settings).mkdir(parents=True, exist_ok=True)
    path = run_dir(settings) / ".demo.lock"
    with open(path, "a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            holder = lock.read().strip()  # empty for the instant between its lock and its pid
            who, kill = (f"pid {holder}", f"`kill {holder}`") if holder else ("its pid not written yet", "`kill` it")
            raise DemoError(f"another demo is running on {settings.local.home} ({who}): wait for it to end, or stop "
                            f"it (Ctrl-C in its terminal, or {kill}), then run the demo again") from None
        try:
            lock.truncate(0)
            lock.write(f"{os.getpid()}\n")
            lock.flush()
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


__all__ = ["AirflowApiError", "DemoError", "run"]
