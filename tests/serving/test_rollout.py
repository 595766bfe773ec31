"""Canary rollouts on the local fleet: real HAProxy, real replica processes, real feedback (issue 9, §5).

One fleet (one stable and one canary replica) serves the module; traffic runs through HAProxy all the time
(:class:`Traffic`: the demo's own replay, with feedback), and a feedback sink lands predictions and
outcomes in the lake, so every check sees real requests, real latencies and real online accuracy. Each
test registers a version of its own and rolls it out with the pipeline's steps
(:mod:`tenfold.pipelines.rollout_model`) through the real adapters. A worse canary is made worse for real:
its replica is restarted with an injected fault (late or failing answers, :mod:`tenfold.serving.faults`).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tenfold.config import Settings
from tenfold.local import free_ports, settings_env
from tenfold.pipelines import rollout_model as pipeline
from tenfold.registry import CHALLENGER, CHAMPION, ModelRegistry
from tenfold.rollout.haproxy import HaproxyObserver, HaproxyRouter
from tenfold.rollout.split import CANARY, STABLE, bucket_of
from tenfold.serving import fleet as fleet_mod
from tenfold.serving.faults import Fault
from tenfold.serving.traffic import TrafficReport, replay
from tenfold.workloads import Replayed

pytestmark = pytest.mark.slow

POLICY = {
    # A check waits ("no data") until each arm has min_requests; the worse-canary tests raise it to what
    # their fault needs to show beyond chance.
    "steps": (25, 50, 100), "interval_s": 2.0, "checks_per_step": 1, "max_failed_checks": 2,
    "min_requests": 100, "min_feedback": 10, "max_error_rate_increase": 0.01,
    # A loaded machine serves slowly: a check waits for its data as long as the test's timeout allows.
    "no_data_deadline_s": 600.0,
    # Busy 2-core machines add noise to every latency: the tolerance keeps that from failing a good canary,
    # 200 ms more is far beyond it. Untrained models have coin-toss accuracy on random outcomes, so the
    # accuracy check must see feedback (min_feedback) but may not fail on chance (its failure is unit-tested).
    "latency_tolerance_ms": 60.0, "latency_alpha": 0.001, "max_accuracy_drop": 1.0, "poll_s": 0.3,
}


def _settings(serving_settings: Settings) -> Settings:
    lb, replicas, metrics = free_ports(3)
    local = serving_settings.local.model_copy(update={"lb_port": lb, "replica_base_port": replicas})
    fleet = serving_settings.serving.fleet.model_copy(update={
        "stable_min": 1, "stable_max": 1, "canary_min": 1, "canary_max": 1, "lb_metrics_port": metrics,
        "health_interval_ms": 200, "health_fall": 2, "health_rise": 2, "replica_start_timeout_s": 120.0,
    })
    rollout = serving_settings.serving.rollout.model_copy(update=POLICY)
    serving = serving_settings.serving.model_copy(update={"fleet": fleet, "rollout": rollout})
    return serving_settings.model_copy(update={"local": local, "serving": serving})


def _flight(n: int) -> dict[str, Any]:
    return {"carrier": "UA", "flight": 1000 + n % 500, "origin": "EWR", "dest": "IAH", "sched_dep": "2013-01-01T05:15:00",
            "sched_arr": "2013-01-01T08:19:00", "tailnum": "N0042"}


class Traffic:
    """Predictions (and the feedback of each) through HAProxy in a loop, in a thread, until stopped."""

    def __init__(self, settings: Settings, token: str) -> None:
        self.settings, self.token = settings, token
        self.report = TrafficReport()
        self.keys: list[str] | None = None  # None: many users over every bucket
        self.feedback = True  # off: twice the predictions on two busy cores, where no test needs accuracy
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._batches = threading.Condition()
        self._started = 0  # batches begun, each with the keys and feedback of its start
        rng = random.Random(3)
        self.items = [Replayed(_flight(i), rng.randint(0, 1)) for i in range(40)]

    def _run(self) -> None:
        while not self._stop.is_set():
            with self._batches:
                keys, feedback = self.keys, self.feedback
                self._started += 1
                self._batches.notify_all()
            replay(self.settings, self.items, token=self.token, concurrency=3, keys=keys, report=self.report,
                   send_feedback=feedback)

    def use(self, *, keys: list[str] | None, feedback: bool) -> None:
        """From now on, ``keys`` and ``feedback``: returns once the batch in flight, begun with the old ones, has
        ended (a keyless request of it still being sent after the switch lands in any bucket)."""
        with self._batches:
            self.keys, self.feedback = keys, feedback
            begun = self._started
            if not self._batches.wait_for(lambda: self._started > begun or self._stop.is_set(), timeout=60):
                raise TimeoutError("the traffic's batch in flight did not end within 60 s")

    def start(self) -> Traffic:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(60)


@dataclass
class Rollouts:
    settings: Settings
    traffic: Traffic
    registry: ModelRegistry
    register: Callable[[int], str]

    @property
    def router(self) -> HaproxyRouter:
        return HaproxyRouter.from_settings(self.settings)

    def run(self, version: str, run_id: str, *, settings: Settings | None = None) -> tuple[pipeline.RolloutRun, str]:
        """plan, deploy and every step as the DAG runs them; the last step's result."""
        settings = settings or self.settings
        run = pipeline.plan(settings, run_id, {"version": version})
        run = pipeline.deploy(settings, run)
        result = pipeline.PASS
        for i in range(1, len(run.steps) + 1):
            result = pipeline.step(settings, run, i)
            if result != pipeline.PASS:
                break
        return run, result

    def record(self, run: pipeline.RolloutRun) -> dict[str, dict[str, Any]]:
        from tenfold.rollout.record import ordered

        return ordered(self.registry.rollout_events(run.version, run.rollout_id))

    def canary(self, version: str, fault: Fault = Fault()) -> None:  # noqa: B008 (frozen)
        """The canary pool on ``version`` with ``fault``, in one roll (the pipeline's deploy then finds it done)."""
        fleet_mod.set_fault(self.settings, CANARY, fault, model=version)

    def with_policy(self, **fields: Any) -> Settings:
        s = self.settings
        return s.model_copy(update={"serving": s.serving.model_copy(update={
            "rollout": s.serving.rollout.model_copy(update=fields)})})


def _skip_backlog(settings: Settings) -> None:
    """Acknowledge what earlier tests of the session left on the sink's subscriptions (thousands of their
    predictions): the sink would land that backlog first, and this module's feedback would arrive late."""
    from tenfold.messaging import subscriber_client, subscription_path

    with subscriber_client(settings) as sub:
        for stream in ("predictions", "feedback"):
            path = subscription_path(settings, settings.messaging.subscriptions[stream].name)
            while True:
                got = sub.pull(request={"subscription": path, "max_messages": 1000}, timeout=30).received_messages
                if not got:
                    break
                sub.acknowledge(request={"subscription": path, "ack_ids": [m.ack_id for m in got]})


@pytest.fixture(scope="module")
def rollouts(serving_settings: Settings, served_versions: Any, serving_token: str,
             register_model: Callable[[int], str]) -> Iterator[Rollouts]:
    from tenfold.feedback.sink import FeedbackSink

    for attempt in range(3):
        settings = _settings(serving_settings)
        try:
            fleet_mod.up(settings, served_versions.champion, tie_to_this_process=True, say=print)
            break
        except fleet_mod.FleetError as exc:  # a free port taken meanwhile by another test: new ports
            if attempt == 2 or not re.search(r"in use|cannot bind|Address already", str(exc)):
                raise
    registry = ModelRegistry(settings)
    registry.promote(served_versions.champion, reason="rollout tests start from a known champion")
    _skip_backlog(settings)
    stop = threading.Event()

    def sink() -> None:
        with FeedbackSink(settings) as running:
            running.run(stop)

    sink_thread = threading.Thread(target=sink, daemon=True)
    sink_thread.start()
    traffic = Traffic(settings, serving_token).start()
    try:
        yield Rollouts(settings, traffic, registry, register_model)
    finally:
        traffic.stop()
        stop.set()
        sink_thread.join(30)
        fleet_mod.down(settings, say=print)
        # The registry is the session's: later tests expect the champion they were given.
        registry.promote(served_versions.champion, reason="rollout tests leave the champion they found")


def _checks(record: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for k, e in record.items() if "-c" in k and "verdict" in e]


def test_a_good_canary_is_promoted_with_no_failed_request(rollouts: Rollouts) -> None:
    version = rollouts.register(21)
    champion = rollouts.registry.resolve(CHAMPION)
    rollouts.canary(version)
    before = dict(rollouts.traffic.report.statuses)
    run, result = rollouts.run(version, "manual__good")
    assert result == pipeline.PASS
    done = pipeline.conclude(rollouts.settings, run)

    assert done["outcome"] == pipeline.PROMOTED and done["champion"] == version
    assert rollouts.registry.resolve(CHAMPION) == version and champion != version
    assert rollouts.router.canary_percent() == 0
    st = fleet_mod.read_status(rollouts.settings)
    assert st is not None and {r.version for r in st.pools[STABLE].serving()} == {version}
    record = rollouts.record(run)
    # Each step applied once, in order, and passed on real traffic and feedback in both arms.
    assert [e["percent"] for k, e in record.items() if k.endswith("-set")] == [25, 50, 100]
    checks = _checks(record)
    assert [c["verdict"] for c in checks if c["verdict"] != "no_data"] == ["pass", "pass", "pass"]
    passed = [c for c in checks if c["verdict"] == "pass"]
    assert all(c["values"]["canary_requests"] >= 100 and c["values"]["canary_labelled"] >= 10 for c in passed)
    assert passed[-1]["values"]["control_window"] == "before this step"  # at 100 % the control is the earlier stable arm
    # Zero failed requests across the whole rollout (canary deploy, every step, the stable pool's roll).
    after = rollouts.traffic.report.statuses
    assert {c: after[c] - before.get(c, 0) for c in after if c != 200 and after[c] != before.get(c, 0)} == {}
    assert after[200] > before.get(200, 0)
    report = Path(done["report"].removeprefix("file://"))
    text = report.read_text()
    assert "promoted" in text and text.count("<svg") == 4


@pytest.mark.parametrize(("fault", "why", "policy"), [
    # 15 % errors against 0.5 point allowed, beyond chance: a window of 200 canary requests (and an error-free
    # control) fails from 5 errors; 30 are expected, and 4 or fewer have p ~ 1e-9.
    (Fault(error_rate=0.15), "error rate", {"min_requests": 200, "max_error_rate_increase": 0.005}),
    # 200 ms more is a p-value near 1e-15 in 40 samples already.
    (Fault(delay_ms=200), "Mann-Whitney", {"min_requests": 40}),
])
def test_a_worse_canary_is_rolled_back_and_the_control_is_untouched(rollouts: Rollouts, fault: Fault, why: str,
                                                                    policy: dict[str, Any]) -> None:
    settings = rollouts.with_policy(**policy)
    version = rollouts.register(30 + int(fault.delay_ms))
    champion = rollouts.registry.resolve(CHAMPION)
    rollouts.canary(version, fault)
    rollouts.traffic.use(keys=None, feedback=False)  # a failing metric fails a check while accuracy has no data yet
    try:
        started = dt.datetime.now(dt.UTC)
        # The id Airflow gives the run a challenger's event starts: its decision key is 69 characters long.
        run_id = f"asset_triggered__2026-12-02T11:41:56.622020+00:00_bad{int(fault.delay_ms):05d}"
        run, result = rollouts.run(version, run_id, settings=settings)
        done = pipeline.conclude(settings, run)
    finally:
        rollouts.traffic.use(keys=None, feedback=True)
    assert result == pipeline.ROLLED_BACK and done["outcome"] == pipeline.ROLLED_BACK
    record = rollouts.record(run)
    verdicts = [c["verdict"] for c in _checks(record) if c["verdict"] != "no_data"]
    assert verdicts == ["fail", "fail"], verdicts  # rolled back at the configured number of failed checks
    assert [k for k in record if k.endswith("-set")] == ["s01-set"]  # at the first step: users saw 25 % at most
    assert all(any(why in r for r in c["reasons"]) for c in _checks(record) if c["verdict"] == "fail")
    assert any(why in r for r in record["end"]["reasons"])
    assert rollouts.router.canary_percent() == 0
    assert rollouts.registry.resolve(CHAMPION) == champion
    decision = rollouts.registry.decisions(version)[f"rollout-{run.rollout_id}"]
    assert decision["rejected"] is True and why in decision["summary"]
    # The control never failed a request while the canary did.
    seen = HaproxyObserver.from_settings(rollouts.settings).traffic(started, dt.datetime.now(dt.UTC))
    assert seen[STABLE].requests > 0 and seen[STABLE].errors == 0
    # A rejected version is not rolled out again by accident.
    with pytest.raises(pipeline.PipelineError, match="already rejected"):
        pipeline.plan(rollouts.settings, "manual__again", {"version": version})


def test_a_canary_that_gets_no_traffic_is_never_promoted(rollouts: Rollouts) -> None:
    settings = rollouts.with_policy(no_data_deadline_s=10.0)
    version = rollouts.register(41)
    champion = rollouts.registry.resolve(CHAMPION)
    rollouts.canary(version)
    # Only users whose bucket is 60 or more: a canary at 25 % (buckets 0-24) receives nothing.
    rollouts.traffic.use(keys=[k for k in (f"late-{i}" for i in range(400)) if bucket_of(k) >= 60][:50], feedback=True)
    try:
        run, result = rollouts.run(version, "manual__nodata", settings=settings)
        done = pipeline.conclude(settings, run)
    finally:
        rollouts.traffic.use(keys=None, feedback=True)
    assert result == pipeline.FAILED and done["outcome"] == pipeline.FAILED and done["canary_percent"] == 0
    checks = _checks(rollouts.record(run))
    assert checks[-1]["values"]["canary_requests"] == 0
    assert any("failing safe" in r and "no data" in r for r in checks[-1]["reasons"])
    assert rollouts.registry.resolve(CHAMPION) == champion
    # Nothing was measured against it: not rejected, so it may be rolled out again without retry_rejected.
    assert not any(k.startswith("rollout-") for k in rollouts.registry.decisions(version))
    assert [k for k in rollouts.record(run) if k.endswith("-set")] == ["s01-set"]  # never went past step 1


def test_abort_at_25_percent_leaves_0_100_and_moves_no_alias(rollouts: Rollouts, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from tenfold.config import get_settings
    from tenfold.rollout.cli import app

    settings = rollouts.with_policy(interval_s=30.0)
    version = rollouts.register(51)
    champion, challenger = rollouts.registry.resolve(CHAMPION), rollouts.registry.resolve(CHALLENGER)
    run = pipeline.deploy(settings, pipeline.plan(settings, "manual__abort", {"version": version}))
    outcome: list[str] = []
    stepping = threading.Thread(target=lambda: outcome.append(pipeline.step(settings, run, 1)))
    stepping.start()
    deadline = time.monotonic() + 60
    while "s01-set" not in rollouts.record(run):
        assert time.monotonic() < deadline and stepping.is_alive(), "step 1 never set its weight"
        time.sleep(0.2)
    assert rollouts.router.canary_percent() == 25

    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(app, ["abort"], env=settings_env(settings))
    finally:
        get_settings.cache_clear()
    # An exception inside the CLI is exit 1 with no output of its own: show its traceback (it failed once so).
    assert result.exit_code == 0, result.output + "".join(traceback.format_exception(*result.exc_info or (None, None, None)))
    assert "abort requested" in result.output
    assert rollouts.router.canary_percent() == 0  # at once, not at the DAG's next poll
    stepping.join(30)
    assert outcome == [pipeline.ABORTED]
    done = pipeline.conclude(settings, run)
    assert done["outcome"] == pipeline.ABORTED and done["canary_percent"] == 0
    get_settings.cache_clear()
    try:
        status = CliRunner().invoke(app, ["status", "--version", version], env=settings_env(settings))
    finally:
        get_settings.cache_clear()
    assert status.exit_code == 0, status.output
    assert "step 1: canary at 25 %" in status.output and "state: aborted; canary at 0 % now" in status.output
    assert f"report: {done['report']}" in status.output
    assert (rollouts.registry.resolve(CHAMPION), rollouts.registry.resolve(CHALLENGER)) == (champion, challenger)
    assert not any(k.startswith("rollout-") for k in rollouts.registry.decisions(version))


def test_a_rollout_whose_champion_moved_meanwhile_promotes_nothing_and_leaves_stable_serving(rollouts: Rollouts) -> None:
    settings = rollouts.settings
    version, other = rollouts.register(61), rollouts.register(62)
    before = rollouts.registry.resolve(CHAMPION)
    run = pipeline.deploy(settings, pipeline.plan(settings, "manual__moved", {"version": version}))
    stable_before = {r.version for r in fleet_mod.read_status(settings).pools[STABLE].serving()}  # type: ignore[union-attr]
    pipeline._end(pipeline.places(settings), run, pipeline.PROMOTED, [])  # every step passed...
    rollouts.registry.promote(other, reason="another rollout promoted its version meanwhile")  # ...but this landed
    try:
        done = pipeline.conclude(settings, run)  # recorded promoted before the champion moved: refused, and failed
        assert done["outcome"] == pipeline.FAILED and f"the champion moved to {other} during rollout" in done["reasons"][0]
        assert "Outcome: <b id=\"outcome\">failed</b>" in Path(done["report"].removeprefix("file://")).read_text()
        assert rollouts.registry.resolve(CHAMPION) == other and rollouts.router.canary_percent() == 0
        st = fleet_mod.read_status(settings)
        assert st is not None and {r.version for r in st.pools[STABLE].serving()} == stable_before != {version}
    finally:
        rollouts.registry.promote(before, reason="the tests after this one expect the champion they had")


_CHILD = """
import json, sys
from tenfold.config import get_settings
from tenfold.pipelines import rollout_model as pipeline
run = json.loads(sys.argv[1])
print(pipeline.step(get_settings(), run, 1), flush=True)
"""


def test_a_step_killed_mid_way_resumes_from_its_record_without_repeating_or_skipping(rollouts: Rollouts) -> None:
    settings = rollouts.with_policy(interval_s=8.0, min_requests=40)
    version = rollouts.register(61)
    run = pipeline.deploy(settings, pipeline.plan(settings, "manual__retry", {"version": version}))
    env = {**os.environ, **settings_env(settings)}
    child = subprocess.Popen([sys.executable, "-c", _CHILD, json.dumps(run.to_xcom())], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 90
        while "s01-set" not in rollouts.record(run):
            assert time.monotonic() < deadline and child.poll() is None, child.stdout.read() if child.stdout else ""
            time.sleep(0.1)
        applied = rollouts.record(run)["s01-set"]
        os.kill(child.pid, signal.SIGKILL)  # the task's process dies in the middle of the step's first interval
        assert child.wait(10) == -signal.SIGKILL
    finally:
        if child.poll() is None:
            child.kill()
    assert not any("-c" in k for k in rollouts.record(run)), "the step was killed before its first check"

    # The retry (what Airflow's task retry runs) continues the recorded step.
    assert pipeline.step(settings, run, 1) == pipeline.PASS
    record = rollouts.record(run)
    assert record["s01-set"] == applied  # not applied again
    checks = [(k, e) for k, e in record.items() if k.startswith("s01-c")]
    assert [k for k, _ in checks] == [f"s01-c{n:03d}" for n in range(1, len(checks) + 1)]  # none skipped or repeated
    assert checks[0][1]["since"] == applied["at"]  # the first window starts where the step began, before the kill
    with pytest.raises(pipeline.PipelineError, match="step 3 cannot start"):
        pipeline.step(settings, run, 3)
    pipeline.conclude(settings, pipeline.RolloutRun.from_xcom(run.to_xcom()))  # stop short: steps left undone
    assert rollouts.registry.rollout_events(version, run.rollout_id)["end"]["outcome"] == pipeline.FAILED
    assert rollouts.router.canary_percent() == 0


def _dags_test(env: dict[str, str], conf: dict[str, Any], logical_date: str, log: Path) -> str:
    proc = subprocess.run(["airflow", "dags", "test", "rollout_model", logical_date, "-c", json.dumps(conf)],
                          env=env, capture_output=True, text=True, timeout=600, check=False)
    out = proc.stdout + proc.stderr
    log.write_text(out)
    assert proc.returncode == 0, out[-6000:]
    return out


def test_the_dag_promotes_a_good_challenger_and_rolls_back_a_bad_one(rollouts: Rollouts, tmp_path: Path) -> None:
    """``airflow dags test rollout_model`` against this fleet: real Airflow tasks, real HAProxy and replicas."""
    from tenfold.local import airflow_env, ensure_airflow_db

    good = rollouts.register(71)
    rollouts.canary(good)
    env = airflow_env(rollouts.settings)
    ensure_airflow_db(env)
    out = _dags_test(env, {"version": good}, "2031-05-01T00:00:00+00:00", tmp_path / "good.log")
    assert "rollout promoted" in out and rollouts.registry.resolve(CHAMPION) == good
    assert rollouts.router.canary_percent() == 0

    bad = rollouts.register(72)
    rollouts.canary(bad, Fault(delay_ms=200))
    env = airflow_env(rollouts.with_policy(min_requests=40))
    rollouts.traffic.use(keys=None, feedback=False)
    try:
        out = _dags_test(env, {"version": bad}, "2031-05-02T00:00:00+00:00", tmp_path / "bad.log")
    finally:
        rollouts.traffic.use(keys=None, feedback=True)
    assert "rollout rolled_back" in out and "Mann-Whitney" in out
    assert rollouts.registry.resolve(CHAMPION) == good and rollouts.router.canary_percent() == 0
    from tenfold.rollout.record import latest

    found = latest(rollouts.registry, bad)
    assert found is not None and found[1]["end"]["outcome"] == pipeline.ROLLED_BACK
