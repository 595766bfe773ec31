"""The steps of ``dags/rollout_model.py``: plan -> deploy -> step_1 .. step_N -> conclude.

A canary rollout of the ``challenger`` (or of a version given by hand) against the ``champion``, in the
style of Flagger: traffic moves to the canary in ``settings.serving.rollout.steps``; at each step, every
``interval_s``, :func:`tenfold.rollout.analysis.check` compares the canary with the control over the same
window (error rate and latency from the load balancer, online accuracy from the feedback join). After
``max_failed_checks`` failed checks the rollout rolls back: canary weight 0, the challenger rejected with
its reasons, ``champion`` untouched. A step that saw no data for ``no_data_deadline_s`` fails safe (weight
0, outcome ``failed``, the version not rejected: nothing was measured against it). After the
last step it promotes: ``champion`` moves (compare-and-swap on the champion the rollout started from), the
stable pool rolls to the new version, then the canary weight goes to 0.

**The record is the state.** Every action and every check is an event in the registry
(:meth:`~tenfold.registry.registry.ModelRegistry.record_rollout_event`, create-only, under a deterministic
key: ``start``, ``deployed``, ``s01-set``, ``s01-c001``, ..., ``end``, ``promoted_alias``, ``promotion_refused``, ``done``).
A step first looks at
the record: a retried task or a restarted scheduler continues from the recorded step, never applies a
step twice (the weight is set, then ``sNN-set`` is created once) and never skips a check. An ``abort``
event (``tenfold rollout abort``) stops the rollout at the next poll: weight 0, no alias moves.

The places it runs differ only by adapters (:mod:`tenfold.rollout.adapters`): locally the serving
fleet (HAProxy split, replica pools, HAProxy's request log); in the cloud the URL map, the instance
groups and the load balancer's logs.

Run every step in one process without Airflow: ``python -m tenfold.pipelines.rollout_model [--version V]``.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from tenfold.config import Settings
from tenfold.config.serving import RolloutSettings
from tenfold.pipelines.common import PipelineError, PipelineInputError, RunState, conf_ref, run_conf, run_key, run_main
from tenfold.registry.errors import AliasConflict, RegistryError, UnknownVersion
from tenfold.registry.registry import CHALLENGER, CHAMPION, ROLLOUT_DECISION_PREFIX, ModelRegistry, is_version_id
from tenfold.rollout import ArmTraffic, Deployer, TrafficObserver, TrafficRouter
from tenfold.rollout.analysis import FAIL, NO_DATA, PASS, Accuracy, Check, check
from tenfold.rollout.record import (
    ABORTED,
    ALERT_DUE,
    ALERT_SENT,
    FAILED,
    PROMOTED,
    PROMOTED_ALIAS,
    PROMOTION_REFUSED,
    ROLLED_BACK,
    Rollout,
    check_key,
    is_check,
    ordered,
    set_key,
    undelivered_key,
    write_report,
)
from tenfold.rollout.split import CANARY, STABLE

log = logging.getLogger(__name__)

DAG_ID = "rollout_model"
CONF_KEYS = ("version", "retry_rejected")


@dataclass(frozen=True)
class RolloutRun(RunState):
    """One rollout (the ``plan`` task's XCom): which version goes out against which champion, and how."""

    rollout_id: str
    airflow_run_id: str
    version: str
    champion: str
    started_at: str  # ISO UTC
    policy: dict[str, Any] = field(default_factory=dict)

    @property
    def steps(self) -> tuple[int, ...]:
        return tuple(self.rollout_policy.steps)

    @property
    def rollout_policy(self) -> RolloutSettings:
        return RolloutSettings.model_validate(self.policy)

    @property
    def rollout(self) -> Rollout:
        return Rollout(self.rollout_id, self.version, self.champion, self.started_at, self.steps)


# --- the adapters and the record ------------------------------------------------------------------


@dataclass
class Places:
    """Where the rollout acts and what it reads: the router, the deployer, the observer, the registry,
    the online accuracy source and the clock (tests pass their own)."""

    router: TrafficRouter
    deployer: Deployer
    observer: TrafficObserver
    registry: ModelRegistry
    accuracy: Callable[[dt.datetime, dt.datetime, str], tuple[Accuracy, Accuracy]]
    now: Callable[[], dt.datetime] = field(default=lambda: dt.datetime.now(dt.UTC))
    sleep: Callable[[float], None] = time.sleep
    # How an outcome that needs a person (failed: no verdict; rolled back: the version was rejected) is announced.
    alert: Callable[[str, dict[str, Any]], object] = field(default=lambda title, details: None)
    # The same alert again, to the named hooks only (those that missed it): what a cleared conclude sends.
    alert_again: Callable[[str, dict[str, Any], Sequence[str]], object] = field(
        default=lambda title, details, hooks: None)


class _ObserverOnFirstRead:
    """The observer, built when traffic is first read: deploy and conclude never read it, and building it may refuse
    (the cloud's :class:`~tenfold.rollout.cloud.MinRequestsAboveTheSample`): built with the rest, it failed every
    task of the rollout, conclude included, which then never took the canary's share away nor recorded an end."""

    def __init__(self, make: Callable[[], TrafficObserver]) -> None:
        self._make = make
        self._built: TrafficObserver | None = None

    def traffic(self, since: dt.datetime, until: dt.datetime) -> dict[str, ArmTraffic]:
        if self._built is None:
            self._built = self._make()
        return self._built.traffic(since, until)


def places(settings: Settings) -> Places:
    """The real adapters for ``settings`` (local fleet or cloud); the observer is built at its first read."""
    from tenfold.monitoring.alerts import send_alert
    from tenfold.rollout.adapters import deployer, observer, router

    return Places(router=router(settings), deployer=deployer(settings),
                  observer=_ObserverOnFirstRead(lambda: observer(settings)),
                  registry=ModelRegistry(settings), accuracy=lambda since, until, version: online_accuracy(settings, since, until, version),
                  alert=lambda title, details: send_alert(settings, title, details),
                  alert_again=lambda title, details, hooks: send_alert(settings, title, details, only=hooks,
                                                                       log_line=False))


def online_accuracy(settings: Settings, since: dt.datetime, until: dt.datetime, version: str) -> tuple[Accuracy, Accuracy]:
    """(canary, control) accuracy over predictions served in ``[since, until)``: the canary is ``version``
    on the canary arm, the control whatever the stable arm served. Joins the window from the log files landed since it
    opened (``refresh``: what the sink landed since the last published join counts; nothing is published)."""
    from tenfold.feedback.metrics import online_metrics

    rows = online_metrics(settings, since, until, by=("model_version", "arm"), refresh=True)

    def of(match: Callable[[dict[str, Any]], bool]) -> Accuracy:
        return _summed([Accuracy(r.metrics.count, r.metrics.accuracy, r.metrics.log_loss)
                        for r in rows if match(r.group)])

    return (of(lambda g: g["arm"] == CANARY and g["model_version"] == version), of(lambda g: g["arm"] == STABLE))


def _summed(arms: Sequence[Accuracy]) -> Accuracy:
    """One arm's accuracy over several groups or spans, as one (weighted by their labelled predictions)."""
    n = sum(a.labelled or 0 for a in arms)
    if not n:
        return Accuracy(0, None, None)
    acc = sum((a.accuracy or 0.0) * (a.labelled or 0) for a in arms) / n
    ll = sum((a.log_loss or 0.0) * (a.labelled or 0) for a in arms) / n
    return Accuracy(n, acc, ll)


def _iso(t: dt.datetime) -> str:
    return t.astimezone(dt.UTC).isoformat()


def _parse(t: str) -> dt.datetime:
    return dt.datetime.fromisoformat(t)


def events(p: Places, run: RolloutRun) -> dict[str, dict[str, Any]]:
    """The rollout's record, ordered by when each event happened."""
    return ordered(p.registry.rollout_events(run.version, run.rollout_id))


def _record(p: Places, run: RolloutRun, key: str, body: Mapping[str, Any]) -> dict[str, Any]:
    """Create event ``key`` (with its time) unless it exists; returns the recorded one either way."""
    full = {"at": _iso(p.now()), **body}
    if p.registry.record_rollout_event(run.version, run.rollout_id, key, full):
        return full
    return p.registry.rollout_events(run.version, run.rollout_id)[key]


# --- plan and deploy ---------------------------------------------------------------------------------


def plan(settings: Settings, run_id: str, conf: Mapping[str, Any] | None = None, *, p: Places | None = None) -> RolloutRun:
    """Choose the version (``conf["version"]``, else the ``challenger`` alias) and the champion it goes against.

    Refuses (no retry): an unknown conf key, no challenger, a version this code cannot load (its meta.json), in the
    cloud a ``min_requests`` the load balancer log observer cannot meet, no champion (the first model is promoted by
    ``train_model``'s offline gate), a challenger that is the champion, the default challenger when the offline gate
    compared it only with other champions than the current one, or a gate run since compared it with the current
    champion and kept it out, or one a rollout already rejected
    (unless ``conf["retry_rejected"]`` is ``true``; any non-boolean is refused). A retried plan returns the rollout it recorded.
    """
    conf = run_conf(conf, CONF_KEYS, '{"version": "<id>"}')
    retry_rejected = conf.get("retry_rejected", False)
    if not isinstance(retry_rejected, bool):  # "false" (a string) would read as true and re-roll a rejected version
        raise PipelineInputError(f"run conf key \"retry_rejected\" must be the JSON boolean true or false, not "
                                 f"{retry_rejected!r}")
    ref = conf_ref(conf, "version", CHALLENGER)  # {"version": ""} is refused, not the challenger rolled out
    reg = p.registry if p else ModelRegistry(settings)
    rollout_id = f"r-{run_key(run_id)}"
    # A retried plan resumes the rollout this run planned, whichever version that was: the challenger may have moved
    # since (a train_model gate), and a second rollout under the same id would leave the first in progress forever.
    for _, planned_version, rid in reg.rollouts():
        if rid == rollout_id and (recorded := reg.rollout_events(planned_version, rollout_id).get("start")):
            log.info("rollout %s of %s already planned at %s: resuming it", rollout_id, planned_version, recorded["at"])
            return RolloutRun.from_xcom(recorded["run"])
    try:
        version = reg.find(str(ref))
    except (UnknownVersion, ValueError) as exc:  # an unknown alias or version (an alias not set), or not a version id; a
        # registry the storage cannot reach now is raised as it is, and Airflow retries
        raise PipelineInputError(f"nothing to roll out: {exc}. Train a challenger (train_model) or pass "
                                 "{\"version\": \"<id>\"} in the run conf") from None
    except RegistryError as exc:  # set, but unreadable (a damaged alias pointer, a tampered version record): training
        # a challenger would not mend it, the registry's message says what does; a retry reads the same bytes
        raise PipelineError(f"cannot roll out {ref}: {exc}") from exc
    recorded = reg.rollout_events(version, rollout_id).get("start")
    if recorded is not None:
        log.info("rollout %s of %s already planned at %s: resuming it", rollout_id, version, recorded["at"])
        return RolloutRun.from_xcom(recorded["run"])
    _refuse_a_model_this_code_cannot_load(settings, reg, version, ref)
    champion = reg.resolve(CHAMPION)
    if champion is None:
        raise PipelineInputError(f"there is no champion to compare {version} with: the first model is promoted by "
                                 "train_model's offline gate, not by a canary")
    if champion == version:
        raise PipelineInputError(f"{version} is already the champion: nothing to roll out")
    if ref == CHALLENGER:
        _refuse_a_challenger_compared_with_another_champion(reg, version, champion)
        _refuse_a_challenger_the_gate_kept_out(reg, version, champion)
    _refuse_while_stable_is_not_the_champion(p.deployer if p else _deployer(settings), champion)
    if not retry_rejected:
        rejected = reg.canary_rejections(version)
        if rejected:
            raise PipelineInputError(f"a canary already rejected {version} ({rejected[-1].get('summary')}); "
                                     "pass {\"retry_rejected\": true} in the run conf to roll it out again")
    _refuse_a_min_requests_the_cloud_cannot_meet(settings)
    started = p.now() if p else dt.datetime.now(dt.UTC)
    run = RolloutRun(rollout_id=rollout_id, airflow_run_id=run_id, version=version, champion=champion,
                     started_at=_iso(started), policy=settings.serving.rollout.model_dump(mode="json"))
    if not reg.record_rollout_event(version, rollout_id, "start", {"at": run.started_at, "run": run.to_xcom()}):
        return RolloutRun.from_xcom(reg.rollout_events(version, rollout_id)["start"]["run"])
    log.info("rollout %s: %s against champion %s through steps %s %%", rollout_id, version, champion, list(run.steps))
    return run


def _refuse_a_model_this_code_cannot_load(settings: Settings, reg: ModelRegistry, version: str, ref: str) -> None:
    """Refuse a version whose ``meta.json`` says this code cannot load it (:func:`tenfold.workloads.meta_problem`, as
    ``tenfold models promote`` and batch inference's plan check): planned, its deploy waited for replicas that each
    refused the model, and was retried for minutes before a timeout that did not say why."""
    from tenfold.workloads import WorkloadError, get_workload, meta_problem

    try:
        contract = get_workload(settings).contract
    except WorkloadError as exc:
        raise PipelineError(f"cannot check that {version} can be served here: {exc}") from exc
    try:
        meta = reg.meta(version)
    except RegistryError as exc:  # missing or damaged: a retry reads the same bytes (an outage is raised as it is)
        raise PipelineError(f"cannot roll out {version} ({ref}): its meta.json cannot be read ({exc})") from exc
    if problem := meta_problem(meta, settings.workload, contract):
        raise PipelineInputError(f"{version} ({ref}) cannot be rolled out here: {problem}. Roll out a model trained "
                                 f"for {settings.workload!r} on this code's features (run conf {{\"version\": \"<id>\"}}), "
                                 "or train one (train_model)")


def _refuse_a_min_requests_the_cloud_cannot_meet(settings: Settings) -> None:
    """In the cloud, refuse the policy the rollout would freeze when the load balancer log observer cannot meet its
    ``min_requests`` (:func:`tenfold.rollout.cloud.min_requests_problem`): planned, every step found "no data" or
    failed building the observer."""
    if settings.is_local:  # the local observer (HAProxy's log) reads every request: no cap (as adapters.observer)
        return
    from tenfold.rollout.cloud import min_requests_problem

    if problem := min_requests_problem(settings.serving.rollout.min_requests):
        raise PipelineInputError(problem)


def _deployer(settings: Settings) -> Deployer:
    from tenfold.rollout.adapters import deployer

    return deployer(settings)


def _refuse_while_stable_is_not_the_champion(deployer: Deployer, champion: str) -> None:
    """The canary is judged against the stable pool as the champion's control. A promotion whose stable roll failed
    for good (or a pool rolled by hand) leaves the stable pool on another version: a rollout then would compare the
    canary with a model that is not the champion, and its deploy would move the canary pool, which was serving the
    champion to every user, off it. A pool between versions (None: a roll of it unfinished or stuck, such as a cloud
    group that cannot create its new VMs, or no fleet running: never started, or stopped) is refused too: the deploy moves only the canary pool,
    so nothing would wait for the stable one, whose replicas may still serve the version before the champion. A pool
    serving an alias (the cloud's unpinned template) is not refused."""
    serving = deployer.pool_version(STABLE)
    if serving is None:
        raise PipelineInputError(
            f"the {STABLE} pool serves no one version now: a roll of it has not finished (or is stuck), or no fleet is "
            f"running (never started, or stopped). A canary needs the champion {champion} in the {STABLE} pool as its control. Check the pool "
            f"(`tenfold serve status` locally; in the cloud the {STABLE} instance group's update), let the roll finish "
            f"or roll it to the champion (`tenfold serve rollout --model champion --pool {STABLE}` locally; in the cloud "
            "clear the promoting rollout's conclude task), then trigger this rollout again")
    if is_version_id(serving) and serving != champion:
        raise PipelineInputError(
            f"the {STABLE} pool serves {serving}, not the champion {champion} (a promotion whose {STABLE} roll did not "
            f"finish, or a pool rolled by hand): a canary would be judged against the wrong control. Roll the {STABLE} "
            f"pool to the champion first (`tenfold serve rollout --model champion --pool {STABLE}` locally; in the cloud "
            "clear the promoting rollout's conclude task), then trigger this rollout again")


def _refuse_a_challenger_compared_with_another_champion(reg: ModelRegistry, version: str, champion: str) -> None:
    """The gate marks ``challenger`` against the champion of its day. A rollout that promoted another version since
    (one queued before this run) left it marked: rolled out by default, it went live against a champion it was never
    compared with. Refused when the gate's decisions about it name other champions only; a version no gate decided
    (an alias set by hand) and one named in the run conf are the operator's choice."""
    against = {d.get("champion_version") for key, d in reg.decisions(version).items()
               if not key.startswith(ROLLOUT_DECISION_PREFIX)}
    if against and champion not in against:
        named = ", ".join(sorted(v or "none (it was the first model)" for v in against))
        raise PipelineInputError(
            f"the offline gate compared the challenger {version} with the champion of its day ({named}), never with "
            f"the champion {champion} promoted since: train a new challenger (train_model), or pass "
            f'{{"version": "{version}"}} in the run conf to roll it out anyway')


def _refuse_a_challenger_the_gate_kept_out(reg: ModelRegistry, version: str, champion: str) -> None:
    """The ``challenger`` alias names the version that last passed the offline gate, against the champion of
    its day. A run cleared after the champion moved decides again against the new one (``train_model.gate``)
    and may keep it out, but moves no alias: rolled out by default, that version would go live against a
    champion it was scored below. A version named in the run conf is the operator's choice and is not refused."""
    if (kept := reg.kept_out_by_the_gate(version, champion)) is not None:
        raise PipelineInputError(
            f"the challenger {version} was compared with the champion {champion} since it passed the offline gate, "
            f"and kept out ({kept.get('summary')}): train a new challenger, or pass "
            f'{{"version": "{version}"}} in the run conf to roll it out anyway')


def _under_policy(settings: Settings, run: RolloutRun) -> Settings:
    """``settings`` with the rollout policy ``run`` froze at its plan: what its analysis uses, so what the observer
    checks it can meet (a ``min_requests`` changed in the settings since does not stop the rollout)."""
    return settings.model_copy(update={"serving": settings.serving.model_copy(update={"rollout": run.rollout_policy})})


def deploy(settings: Settings, run: RolloutRun | Mapping[str, Any], *, p: Places | None = None) -> RolloutRun:
    """The canary pool serves the version, with no traffic yet (idempotent)."""
    run = RolloutRun.from_xcom(run)
    p = p or places(settings)
    record = events(p, run)
    if "deployed" in record:
        return run
    if "end" in record:  # a deploy cleared after its rollout ended (conclude ran): its steps would not run
        log.warning("rollout %s has ended (%s): its canary is not deployed; trigger the rollout again", run.rollout_id,
                    record["end"]["outcome"])
        return run
    if _aborted(p, run):
        return run
    if _superseded(p, run):
        return run
    p.router.set_canary_percent(0)  # nothing reaches the canary pool while its replicas change
    p.deployer.deploy(CANARY, run.version)
    _record(p, run, "deployed", {"pool": CANARY, "version": run.version})
    log.info("rollout %s: the canary pool serves %s (0 %% of traffic)", run.rollout_id, run.version)
    return run


# --- the steps -----------------------------------------------------------------------------------------


def _aborted(p: Places, run: RolloutRun) -> bool:
    return p.registry.rollout_events(run.version, run.rollout_id).get("abort") is not None


def _abort_now(p: Places, run: RolloutRun, why: str) -> str:
    """An abort wins: canary weight 0, then the end recorded as aborted; returns the outcome."""
    _no_canary_traffic(p, run)
    _end(p, run, ABORTED, [why])
    return ABORTED


def _no_canary_traffic(p: Places, run: RolloutRun) -> None:
    """Canary weight 0, unless a newer rollout has started since: the weight is that rollout's canary's then."""
    if _newest(p, run):
        p.router.set_canary_percent(0)


def _superseded(p: Places, run: RolloutRun) -> bool:
    """Whether a newer rollout has started since this one (which never ended: its run failed, and a task of it was
    cleared). The canary pool and the weight are the newer one's: this one ends failed, and touches neither."""
    from tenfold.rollout.record import newer_rollout

    newer = newer_rollout(p.registry, run.rollout_id)
    if newer is None:
        return False
    _end(p, run, FAILED, [f"rollout {newer} started after this one, which had not ended: the canary pool and its "
                          "weight are that rollout's, and this one stopped without a verdict (trigger it again once "
                          "that rollout has ended)"])
    return True


def _end(p: Places, run: RolloutRun, outcome: str, reasons: list[str]) -> str:
    """Record the end (create-only); returns the outcome recorded, this one's or an earlier end's (an abort's)."""
    body = _record(p, run, "end", {"outcome": outcome, "reasons": reasons})
    log.warning("rollout %s: %s (%s)", run.rollout_id, body["outcome"].upper().replace("_", " "), "; ".join(body["reasons"]) or "all checks passed")
    return str(body["outcome"])


def step(settings: Settings, run: RolloutRun | Mapping[str, Any], index: int, *, p: Places | None = None) -> str:
    """Step ``index`` (1-based): set the canary's share, then check every interval until the step passes,
    the rollout fails, or it is aborted. Returns what the step ended with (``pass``, or the outcome)."""
    run = RolloutRun.from_xcom(run)
    p = p or places(_under_policy(settings, run))
    policy = run.rollout_policy
    if not 1 <= index <= len(run.steps):
        raise PipelineError(f"step {index} does not exist: this rollout has steps 1..{len(run.steps)}")
    percent = run.steps[index - 1]
    record = events(p, run)
    if "end" in record:
        outcome = str(record["end"]["outcome"])
        # A retry after the weight could not be set: the ended canary gets no traffic (unless a newer rollout,
        # whose canary the weight is now, has started since: a cleared task of an old run must not touch it).
        if outcome != PROMOTED:
            _no_canary_traffic(p, run)
        return outcome
    if "abort" in record:
        return _abort_now(p, run, f"aborted by {record['abort'].get('by', 'an operator')} before step {index}")
    if _superseded(p, run):  # a cleared step of an older run must not set the newer rollout's canary weight
        return str(events(p, run)["end"]["outcome"])
    if "deployed" not in record:
        raise PipelineError(f"rollout {run.rollout_id}: step {index} before the canary was deployed")
    if _step_passed(record, index, policy):  # cleared or re-run after it passed: the later steps may have started
        return PASS
    prev = [k for k in record if k.endswith("-set") and k != set_key(index)]
    if len(prev) != index - 1:
        raise PipelineError(f"rollout {run.rollout_id}: step {index} cannot start, steps applied so far: {prev}")

    key = set_key(index)
    if key not in record:
        p.router.set_canary_percent(percent)
        if _aborted(p, run):  # an abort that landed while we set the weight must win
            return _abort_now(p, run, f"aborted during step {index}")
        record[key] = _record(p, run, key, {"step": index, "percent": percent})
        log.info("rollout %s: step %d/%d, canary at %d %%", run.rollout_id, index, len(run.steps), percent)
    step_start = _parse(record[key]["at"])

    while True:
        record = events(p, run)
        mine = [(k, e) for k, e in record.items() if k.startswith(f"s{index:02d}-c")]
        failed_total = sum(1 for k, e in record.items() if is_check(k, e) and e["verdict"] == FAIL)
        passed_here = sum(1 for _, e in mine if e["verdict"] == PASS)
        if passed_here >= policy.checks_per_step:
            return PASS
        if failed_total >= policy.max_failed_checks:
            reasons = [r for _, e in record.items() if e.get("verdict") == FAIL for r in e["reasons"]]
            _no_canary_traffic(p, run)  # first: an end recorded before a weight that failed to move stays served
            _end(p, run, ROLLED_BACK, reasons)
            return ROLLED_BACK
        decisive = [e for _, e in mine if e["verdict"] != NO_DATA]
        # A decisive check closes its window; "no data" keeps it open and looks again an interval later. Each
        # window is read traffic_lag_s after it ends (the load balancer's log arrives late in the cloud), so the
        # windows stay the step's own and contiguous, and none of its requests is read before it is logged.
        since = _parse(decisive[-1]["until"]) if decisive else step_start
        last = _parse(mine[-1][1]["until"]) if mine else step_start
        lag = dt.timedelta(seconds=policy.traffic_lag_s)
        due = max(since, last) + dt.timedelta(seconds=policy.interval_s) + lag
        while p.now() < due and not _aborted(p, run):
            p.sleep(min(policy.poll_s, max(0.0, (due - p.now()).total_seconds())))
        if _aborted(p, run):
            return _abort_now(p, run, f"aborted during step {index} at {percent} %")
        changed, between = _not_under_test(p, run, percent)
        if changed is not None:
            # Judged now, the check would compare whatever serves with the control: never a verdict on the version.
            if _aborted(p, run):  # the abort that just set the share to 0 is what changed it
                return _abort_now(p, run, f"aborted during step {index} at {percent} %")
            _end(p, run, FAILED, [changed])  # first: a retry that finds the end sets the weight again
            _no_canary_traffic(p, run)
            return FAILED
        until = p.now() - lag
        # Replicas of several versions, or none serving: this window is not judged (no data; looked at again).
        # When the canary first served (the weight of step 1); a rollout whose one step is 100 % has no control after
        # it, only before: its window reaches back to the plan.
        first = record.get(set_key(1)) if run.steps[0] < 100 else None
        result = Check(NO_DATA, (between,), {}) if between is not None else analyse(
            p, run, percent, since, until, served_from=_parse(first["at"]) if first else None,
            spans=_split_spans(run, record, index, until))
        n = len(mine) + 1
        waited = (until - since).total_seconds()
        # At 100 % the control is the stable arm before the step, a window that no longer grows: one too thin to judge
        # now stays so, and the step waited out the whole deadline, every user on an unjudged version meanwhile.
        # Its latency samples count too: enough requests, of which too many got no answer to time (the cloud logs
        # none for a request its client gave up on), is as thin for the latency test, and as frozen.
        control_requests = int(result.values.get("control_requests") or 0)
        control_timed = int(result.values.get("control_latency_samples", control_requests) or 0)
        thin = (percent >= 100 and result.verdict == NO_DATA and between is None
                and min(control_requests, control_timed) < policy.min_requests)
        if result.verdict == NO_DATA and (waited >= policy.no_data_deadline_s or thin):
            # Failing safe, a rollout never promotes blind; but nothing was measured against the version (no
            # traffic reached the canary, or its labels had not come in), so it ends FAILED, not rolled back:
            # the version is not marked rejected, and a new rollout of it needs no retry_rejected.
            served = (f"served {control_requests} requests" if control_requests < policy.min_requests else
                      f"served {control_requests} requests but only {control_timed} latency samples (the others got "
                      "no answer to time)")
            why = (f"the control (the stable arm before this {percent} % step) {served}, fewer than the "
                   f"{policy.min_requests} a check needs, and no more come at {percent} %: "
                   "failing safe, a rollout never promotes blind; the version is not rejected (roll it out with a step "
                   "below 100 %, or after the stable arm has served more)") if thin else (
                f"no data for {waited:.0f} s (deadline {policy.no_data_deadline_s:g} s): failing safe, a rollout never "
                "promotes blind; the version is not rejected")
            result = Check(FAIL, (*result.reasons, why), result.values)
            # The end first: killed or failing after it, a retry finds the end (and sets the weight again); a
            # deadline check recorded without its end would count as an ordinary failed check on the retry.
            ended = _end(p, run, FAILED, list(result.reasons))
            # An abort that landed first ended it instead: the deadline's "fail" is then no check (counted as one
            # beside the abort, conclude would reject a version nothing was measured against).
            if ended == FAILED:
                _record(p, run, check_key(index, n), {"step": index, "percent": percent, "since": _iso(since),
                                                      "until": _iso(until), **result.to_dict()})
                log.warning("rollout %s: step %d check %d: %s", run.rollout_id, index, n, result.summary())
            _no_canary_traffic(p, run)
            return ended
        _record(p, run, check_key(index, n), {"step": index, "percent": percent, "since": _iso(since),
                                              "until": _iso(until), **result.to_dict()})
        say = log.warning if result.verdict == FAIL else log.info
        say("rollout %s: step %d (%d %%) check %d over %.0f s: %s", run.rollout_id, index, percent, n, waited, result.summary())


def _split_spans(run: RolloutRun, record: Mapping[str, dict[str, Any]], index: int,
                 until: dt.datetime) -> list[tuple[dt.datetime, dt.datetime]] | None:
    """The spans over which both arms served at one split, up to ``until``: each step's time below 100 % (the
    current step's until ``until``), from the end of the newest window whose accuracy failed (the next accuracy test
    reads labels that one did not: summed over all, one chance dip failed two checks in a row, a rollback). None for
    a rollout with no step below 100 % so far (no span at one split: :func:`analyse` compares it with the control
    before it). When a failed accuracy check leaves no span after it (it failed inside the 100 % step, whose time has
    no control), the spans whole: the same labels tested again, step by step, rather than the version passing on
    latency and errors alone after its accuracy failed."""
    if not any(0 < percent < 100 for percent in run.steps[:index]):
        return None
    starts = [(_parse(e["at"]), run.steps[j - 1]) for j in range(1, index + 1) if (e := record.get(set_key(j)))]
    after = max((_parse(e["until"]) for k, e in record.items()
                 if is_check(k, e) and e["verdict"] == FAIL and e.get("values", {}).get("accuracy_failed")), default=None)
    whole, spans = [], []
    for i, (begin, percent) in enumerate(starts):
        end = starts[i + 1][0] if i + 1 < len(starts) else until
        if 0 < percent < 100 and begin < end:
            whole.append((begin, end))
            clipped = begin if after is None else max(begin, after)
            if clipped < end:
                spans.append((clipped, end))
    return spans or whole


def _not_under_test(p: Places, run: RolloutRun, percent: int) -> tuple[str | None, str | None]:
    """``(changed, between)``: why the traffic is no longer the test's (a fleet restarted or redeployed under the
    rollout, a split set by hand), and why this window cannot be judged yet (the canary pool between versions:
    replicas of several, or none serving; it is looked at again an interval later)."""
    serving = p.deployer.pool_version(CANARY)
    if serving is not None and serving != run.version:
        return (f"the canary pool serves {serving}, not {run.version} under test (the fleet was restarted or redeployed "
                "during the rollout): no verdict on the version; trigger the rollout again"), None
    share = p.router.canary_percent()
    if share != percent:
        return (f"the canary's share is {share} %, not this step's {percent} % (set outside the rollout: a restarted "
                "fleet, or `tenfold serve split`): no verdict on the version; trigger the rollout again"), None
    if serving is None:
        return None, f"the canary pool is between versions (replicas of several, or none serving): {run.version} not judged"
    return None, None


def _newest(p: Places, run: RolloutRun) -> bool:
    """Whether ``run`` is the newest rollout of any version (whose canary the router's weight is)."""
    from tenfold.rollout.record import newer_rollout

    return newer_rollout(p.registry, run.rollout_id) is None


def analyse(p: Places, run: RolloutRun, percent: int, since: dt.datetime, until: dt.datetime, *,
            served_from: dt.datetime | None = None, spans: Sequence[tuple[dt.datetime, dt.datetime]] | None = None) -> Check:
    """One check of the canary against the control over ``[since, until)``.

    At 100 % the stable arm gets no traffic, so the control is what the stable arm served from the first step
    until this step began (the same replicas, the same load balancer, just earlier).

    ``spans``: the spans at one split whose labels the accuracy test compares, span by span (:func:`_split_spans`);
    without them (a rollout whose one step is 100 %), both arms' accuracy is summed over the rollout.
    ``served_from``: when the canary first got traffic (its first step set the weight); both arms' accuracy, and
    the control at 100 %, count from then (a rollout whose one step is 100 % passes none: its control is what the
    stable arm served from the plan until that step). From the plan's time instead, the control's labels included those of the
    canary's deploy (minutes on GPUs), when the canary served nobody: a drift in accuracy over time was charged to
    the canary."""
    policy = run.rollout_policy
    strata: list[tuple[Accuracy, Accuracy]] | None = None
    seen = p.observer.traffic(since, until)
    canary, control = seen.get(CANARY, ArmTraffic(0, 0, ())), seen.get(STABLE, ArmTraffic(0, 0, ()))
    start = served_from or _parse(run.started_at)
    if percent >= 100:
        control = p.observer.traffic(start, since).get(STABLE, ArmTraffic(0, 0, ()))
    if min(canary.requests, control.requests) < policy.min_requests:
        # Too few requests is "no data" whatever the feedback says: skip the (costly) feedback join, and say nothing
        # of feedback (a made-up "0 labelled" sent operators to the feedback pipeline when traffic was the cause).
        canary_acc = control_acc = Accuracy(None, None, None)
    else:
        # Accuracy over every labelled prediction since the canary first served, not this window's alone: the version
        # is the same throughout, so its labels add up and each check can see a smaller drop than the last
        # (a window's 20 labels could not tell 0.6 from 0.8).
        if spans:
            # Span by span (each step's time at one split, both arms serving), compared within each span: see
            # tenfold.rollout.analysis.check. At 100 % the spans are the steps before it (their labels still come in).
            strata = [p.accuracy(begin, end, run.version) for begin, end in spans]
            canary_acc, control_acc = _summed([can for can, _ in strata]), _summed([ctl for _, ctl in strata])
        else:  # no span at one split (a rollout whose one step is 100 %): the control is what stable served before
            canary_acc, control_acc = p.accuracy(start, until, run.version)
            if percent >= 100:
                _, control_acc = p.accuracy(start, since, run.version)
    result = check(canary, control, canary_acc, control_acc, policy, accuracy_strata=strata)
    result.values["control_window"] = "before this step" if percent >= 100 else "same window"
    result.values["accuracy_since"] = _iso(spans[0][0] if spans else start)
    return result


# --- conclude ------------------------------------------------------------------------------------------


def _back_to_the_champion(p: Places, run: RolloutRun, current: str | None) -> dict[str, Any]:
    """The champion was moved away by hand after this rollout promoted the version: the stable pool, which may serve
    the version already, goes back to the champion first (no later rollout could: it is refused while stable does not
    serve the champion); then the refusal (the rollout ends failed)."""
    if current is not None:
        p.deployer.deploy(STABLE, current)
    return _refuse_promotion(p, run, current, after_promoting=True)


def conclude(settings: Settings, run: RolloutRun | Mapping[str, Any] | None, *, p: Places | None = None,
             failure_alerted: bool = True) -> dict[str, Any]:
    """Carry out the outcome (idempotent; runs whatever happened to the steps).

    * every step passed: the canary takes 100 %, ``champion`` moves (compare-and-swap on the champion the rollout
      started from), the stable pool rolls to the version, then canary weight 0. A champion moved away from the
      version by hand during the stable pool's roll (or before a retry) sends the stable pool back to the champion,
      and the rollout ends failed (``promotion_refused``), alerted;
    * rolled back: canary weight 0, the version is marked rejected with the reasons, ``champion`` untouched;
    * aborted: canary weight 0, no alias moves; the version is rejected all the same when the recorded failed checks
      had reached ``max_failed_checks`` (a rejection is recorded before the router is called, so a router that keeps
      failing cannot leave it out);
    * failed (no data by the deadline, the champion moved meanwhile, or a step task's retries exhausted):
      canary weight 0, no alias moves, the version not rejected. A promotion the champion moved under (after the
      end was recorded, before the compare-and-swap) is recorded as ``promotion_refused`` and ends the same way.

    A rollout that a newer one has superseded never touches the canary weight (it is the newer one's).

    ``failure_alerted``: whether a deploy or step task that gave up was alerted already (the DAG's: Airflow's failure
    callback), so a rollout it stopped is not alerted twice; the one-process run (:func:`main`) passes False, as
    nothing else alerts it there.

    Writes the HTML report to the lake and returns the ``done`` event.
    """
    if run is None:
        raise PipelineError("no rollout was planned (the plan task failed): nothing to conclude")
    run = RolloutRun.from_xcom(run)
    p = p or places(settings)
    record = events(p, run)
    if "done" in record:  # a re-run: what it ended with, and the alert hooks that still miss its alert
        done_then = record["done"]
        # alert-due is recorded only when an alert was due (whichever way the run was started)
        if (ALERT_SENT in record or not (ALERT_DUE in record or _alert_due(done_then["outcome"], done_then["reasons"],
                                                                          failure_alerted))
                or (ALERT_DUE not in record and undelivered_key(record)[0] is None)):
            # Sent, not due, or recorded before the alert's outcome was kept (sent then, untracked). A record of that
            # age that does name hooks which missed it kept outcomes already: those are sent it below.
            missed_then = []
        elif (newest := undelivered_key(record)[0]) is not None:
            # Sent again to the hooks that still miss it (a clear once the webhook is mended goes green; until then
            # the run stays red, and Airflow's failure callback tries them too).
            missed_then = list(_alert(p, run, done_then, only=list(record[newest].get("hooks") or [])))
        else:  # the try that recorded done died before its alert's outcome was recorded: the alert may be lost
            missed_then = list(_alert(p, run, done_then))
        return {**done_then, "undelivered": list(missed_then)} if missed_then else done_then
    if "end" not in record:
        applied = [k for k in record if k.endswith("-set")]
        passed = len(applied) == len(run.steps) and all(_step_passed(record, i, run.rollout_policy)
                                                        for i in range(1, len(run.steps) + 1))
        current = p.registry.resolve(CHAMPION)
        failed = [e for k, e in record.items() if is_check(k, e) and e["verdict"] == FAIL]
        if "abort" in record:
            _end(p, run, ABORTED, [f"aborted by {record['abort'].get('by', 'an operator')}"])
        elif len(failed) >= run.rollout_policy.max_failed_checks:
            # The verdict was reached, but the step could not take the canary's share away (its router call failed
            # on every try) and so never recorded its end: it is a rollback all the same, and the version is rejected.
            _end(p, run, ROLLED_BACK, [r for e in failed for r in e["reasons"]])
        elif _superseded(p, run):  # ends it failed: a newer rollout started while this one had not ended (recorded
            pass  # promoted, it raised on every try: "promoted" for ever, with no report)
        elif passed and current not in (run.champion, run.version):
            # Another promotion landed during this rollout: the verdict compared the canary with a control that
            # is no longer the champion. It ends failed (not rejected: it may be rolled out against the new one).
            _end(p, run, FAILED, [f"every step passed, but the champion moved to {current} during the rollout (it was "
                                  f"{run.champion} when it started): {run.version} is not promoted; to compare it with the new champion, "
                                  f"trigger a rollout naming it (run conf {{\"version\": \"{run.version}\"}}: no gate compared "
                                  "the two), or train a new challenger"])
        elif passed:
            _end(p, run, PROMOTED, [])
        elif "deployed" not in record:
            _end(p, run, FAILED, [f"the canary pool was never deployed ({DEPLOY_TASK_FAILED}): no step ran; trigger the "
                                  "rollout again once the deploy's cause is fixed"])
        else:
            _end(p, run, FAILED, [f"the rollout stopped after {len(applied)} of {len(run.steps)} steps without a verdict "
                                  f"({STEP_TASK_FAILED}): failing safe"])
        record = events(p, run)
    outcome, reasons = record["end"]["outcome"], list(record["end"]["reasons"])
    reg = p.registry
    # The rejection before any router call: a router that keeps failing (the fleet down, HAProxy restarting, a URL
    # map timing out) raised on every try before it was written, and the version, rolled back, could be rolled out
    # or promoted again as if never judged.
    _reject(p, run, record, outcome, reasons)
    # A promotion refused once stays refused: a champion moved back since would not make the verdict current.
    refused = record.get(PROMOTION_REFUSED)
    if outcome == PROMOTED and refused is None:
        if not _newest(p, run):
            # The canary pool and the weight are a newer rollout's now: carrying this promotion out would send
            # everyone to that rollout's canary while the stable pool rolls.
            todo = (f"{run.version} is the champion already, but the stable pool may not serve it yet: once that "
                    "rollout has ended, roll the stable pool to the champion (`tenfold serve rollout --model champion`"
                    " locally)" if reg.resolve(CHAMPION) == run.version else
                    f"promote {run.version} by hand (`tenfold models promote {run.version}`, with --force if an "
                    "earlier canary rejected it) once that rollout has ended, if it should be")
            raise PipelineError(f"rollout {run.rollout_id} ended promoted but a newer rollout has started since: its "
                                f"promotion is not carried out over the newer one; {todo}")
        current = reg.resolve(CHAMPION)
        if current != run.version and (PROMOTED_ALIAS in record or _promoted_by(reg, run)):
            # This rollout promoted it, then the champion was moved away by hand (`tenfold models rollback`, which
            # `tenfold rollout abort` points to) before the promotion was carried out: a retry must not promote
            # again.
            refused = _back_to_the_champion(p, run, current)
        elif current not in (run.champion, run.version):
            # Another promotion landed during this rollout: the verdict compared the canary with a control that
            # is no longer the champion. Serving stays on stable and no alias moves (promote would refuse anyway,
            # but only after the stable pool had been rolled to this version).
            refused = _refuse_promotion(p, run, current)
        if refused is None:
            p.router.set_canary_percent(100)  # whatever a retry finds, users stay on the new version while stable rolls
            if current != run.version:
                # The alias first, by compare-and-swap from the champion the rollout was judged against: a promotion
                # or rollback by hand during the stable pool's roll (minutes) made the swap fail after the pool had
                # been rolled, leaving it on a version that was never promoted. Moved now, a retry finds it and
                # rolls the pool.
                try:
                    reg.promote(run.version, expected=run.champion, reason=f"canary rollout {run.rollout_id} passed "
                                "every step", details={"rollout": run.rollout_id, "steps": list(run.steps)})
                except AliasConflict:
                    refused = _refuse_promotion(p, run, reg.resolve(CHAMPION))
            if refused is None:
                _record(p, run, PROMOTED_ALIAS, {"champion": run.version})  # a retry tells a rollback by hand by it
        if refused is None:
            p.deployer.deploy(STABLE, run.version)
            # The roll takes minutes: a rollback by hand during it (`tenfold models rollback`, which `tenfold rollout
            # abort` points to for a promoted rollout) moved the champion away from the version. Setting the weight
            # to 0 now would leave everyone on the version in the stable pool while the champion is another, with
            # "promoted" recorded: the stable pool goes back to the champion and the rollout ends failed, as a retry's.
            current = reg.resolve(CHAMPION)
            if current != run.version:
                refused = _back_to_the_champion(p, run, current)
            else:
                p.router.set_canary_percent(0)
    if refused is not None:
        # Carried out like any failed rollout: weight 0, a report, an alert, and a ``done`` that says failed (the
        # ``end`` alone said "promoted" for ever, with no report).
        outcome, reasons = FAILED, list(refused["reasons"])
        _no_canary_traffic(p, run)
    elif outcome != PROMOTED:
        _no_canary_traffic(p, run)  # else the weight is a newer rollout's canary's: a re-run of this conclude leaves it
    report = write_report(settings, run.rollout, events(p, run))
    due = _alert_due(outcome, reasons, failure_alerted)
    if due:
        _record(p, run, ALERT_DUE, {})  # before done: a try killed after done finds it, and its re-run alerts
    done = _record(p, run, "done", {"outcome": outcome, "reasons": reasons, "report": report,
                                    "champion": reg.resolve(CHAMPION), "canary_percent": p.router.canary_percent()})
    missed = _alert(p, run, done) if due else ()
    log.info("rollout %s: %s; champion %s; canary at %s %%; report %s", run.rollout_id, outcome, done["champion"],
             done["canary_percent"], report)
    return {**done, "undelivered": list(missed)} if missed else done


def _reject(p: Places, run: RolloutRun, record: Mapping[str, Mapping[str, Any]], outcome: str, reasons: list[str]
            ) -> None:
    """Mark the version rejected (create-only: a retry writes nothing twice) when the rollout rolled back, or was
    aborted after its failed checks had reached ``max_failed_checks``: a step that recorded the deciding check and
    died before its end, then `tenfold rollout abort`, ended the rollout aborted with the verdict reached and the
    version free to be rolled out or promoted again."""
    if outcome == ABORTED:
        failed = [e for k, e in record.items() if is_check(k, e) and e["verdict"] == FAIL]
        if len(failed) < run.rollout_policy.max_failed_checks:
            return
        reasons = [r for e in failed for r in e["reasons"]]
    elif outcome != ROLLED_BACK:
        return
    summary = f"REJECTED by canary rollout {run.rollout_id}: " + "; ".join(reasons)
    p.registry.record_decision(run.version, f"{ROLLOUT_DECISION_PREFIX}{run.rollout_id}",
                               {"rejected": True, "rollout": run.rollout_id, "reasons": reasons, "summary": summary[:2000]})


def settled(done: Mapping[str, Any]) -> dict[str, Any]:
    """:func:`conclude`'s event, as the DAG's conclude task ends on it. A run is not green (a :class:`PipelineError`)
    without a verdict (FAILED: nothing promoted or rejected), nor when its alert missed a hook: a rejected version is
    what a person must hear of, and Airflow's failure callback sends the error to those hooks only (as
    monitor_drift's undelivered alert does). A green run returns ``done``."""
    missed = tuple(done.get("undelivered") or ())
    if done["outcome"] == FAILED:
        why = (f"rollout failed without a verdict ({'; '.join(done['reasons'])}); nothing was promoted or rejected; "
               f"see {done['report']}")
        # conclude alerted: the failure callback sends it again only to the hooks that missed it
        raise PipelineError(why, alerted=not missed, undelivered=missed)
    if missed:
        reasons = "; ".join(done["reasons"]) or "every step passed"
        raise PipelineError(f"rollout {done['outcome']} ({reasons}); see {done['report']}. Its alert did not reach "
                            f"{', '.join(missed)}: this failure sends it there", alerted=False, undelivered=missed)
    return dict(done)


STEP_TASK_FAILED = "a step task failed"
DEPLOY_TASK_FAILED = "the deploy task failed"


def _alert_due(outcome: str, reasons: list[str], failure_alerted: bool = True) -> bool:
    """Whether conclude alerts: a green run said nothing of a canary that got no data or a rejected version. (A step
    or deploy task that failed was alerted by Airflow's failure callback already, when ``failure_alerted``: in the
    DAG. Without Airflow nothing did, and a rollout a raised step stopped was never told to anyone.)"""
    return outcome == ROLLED_BACK or (outcome == FAILED and not (failure_alerted and any(
        STEP_TASK_FAILED in r or DEPLOY_TASK_FAILED in r for r in reasons)))


def _alert(p: Places, run: RolloutRun, done: Mapping[str, Any], *, only: Sequence[str] | None = None
           ) -> tuple[str, ...]:
    """Send the rollout's alert (to the hooks ``only`` names, when given: those that missed it) and record how it
    went (``alert-sent``, or ``alert-undelivered`` naming the hooks that did not take it after their own retries);
    returns those hooks. ``done`` is recorded first, so a try killed in between finds neither event and a re-run
    sends it again: at least once, never lost."""
    title = f"rollout {run.rollout_id} of {run.version}: {done['outcome']}"
    details = {"version": run.version, "champion": done["champion"], "reasons": "; ".join(done["reasons"])[:2000],
               "report": done["report"], "run": run.airflow_run_id}
    sent = p.alert(title, details) if only is None else p.alert_again(title, details, only)
    missed = tuple(getattr(sent, "failed", ()) or ())
    if missed:
        log.warning("the alert of rollout %s was not delivered by %s (its log line went out)", run.rollout_id,
                    ", ".join(missed))
        # A cleared conclude sends to these alone; each send's own event (create-only: a hook that took it since
        # is never sent it again).
        _record(p, run, undelivered_key(events(p, run))[1], {"hooks": list(missed)})
    else:
        _record(p, run, ALERT_SENT, {})
    return missed


def _promoted_by(reg: Any, run: RolloutRun) -> bool:
    """Whether the champion's history holds this rollout's promotion (``promote`` records the rollout's id): what
    tells a retry that it promoted when the ``promoted_alias`` event was never recorded (the try died between)."""
    return any(h.version == run.version and h.details.get("rollout") == run.rollout_id
               for h in reg.alias_history(CHAMPION))


def _refuse_promotion(p: Places, run: RolloutRun, champion: str | None, *, after_promoting: bool = False
                      ) -> dict[str, Any]:
    """Record that the promotion the rollout ended with is not carried out: the champion is no longer the one the
    canary was judged against, or (``after_promoting``) it was moved away from this version after this rollout
    promoted it. Returns the recorded event (a retry finds it and does not promote)."""
    if after_promoting:
        why = (f"rollout {run.rollout_id} promoted {run.version}, then the champion was moved to {champion} by hand "
               f"before the promotion was carried out: it is not promoted again, the stable pool was rolled back to "
               f"{champion}, and the canary's share goes to it")
    else:
        why = (f"every step passed, but the champion moved to {champion} during rollout {run.rollout_id} (it was "
               f"{run.champion} when it started): {run.version} is not promoted and the stable pool keeps serving; to "
               f"compare it with the new champion, trigger a rollout naming it (run conf {{\"version\": \"{run.version}\"}}: "
               "no gate compared the two), or train a new challenger")
    return _record(p, run, PROMOTION_REFUSED, {"outcome": FAILED, "reasons": [why]})


def _step_passed(record: Mapping[str, Mapping[str, Any]], index: int, policy: RolloutSettings) -> bool:
    return sum(1 for k, e in record.items() if k.startswith(f"s{index:02d}-c") and e["verdict"] == PASS) >= policy.checks_per_step


def main(argv: list[str] | None = None) -> int:
    """Every step in this process, without Airflow (``--version`` as the run conf's ``version``)."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m tenfold.pipelines.rollout_model", description=main.__doc__)
    parser.add_argument("--version", default=None, help="version or alias to roll out (default: the challenger)")
    parser.add_argument("--run-id", default=None, help="default: manual__<UTC time>")

    def body(settings: Settings, args: argparse.Namespace) -> int:
        run_id = args.run_id or f"manual__{dt.datetime.now(dt.UTC):%Y-%m-%dT%H:%M:%S}"
        # --version "" (a script's unset variable) is the run conf's {"version": ""}: refused, never the challenger
        run = plan(settings, run_id, {"version": args.version} if args.version is not None else {})
        try:
            run = deploy(settings, run)
            for i in range(1, len(run.steps) + 1):
                if step(settings, run, i) != PASS:
                    break
        except BaseException:
            # As the DAG's conclude runs when a step task failed: the canary's share is taken away and the rollout
            # ends FAILED with its report, where it kept its share with nobody watching (a rerun starts a new one).
            # No failure callback alerted the step that raised (there is no Airflow here): conclude alerts it.
            with contextlib.suppress(Exception):
                conclude(settings, run, failure_alerted=False)
            raise
        done = conclude(settings, run, failure_alerted=False)
        print(f"rollout {run.rollout_id}: {done['outcome']}; champion {done['champion']}; report {done['report']}")
        return 0 if done["outcome"] == PROMOTED else 3

    return run_main(parser, argv, body)


if __name__ == "__main__":
    raise SystemExit(main())
