"""The fleet supervisor backs off from what keeps failing: a replica that dies soon after it entered rotation (a
model that loads but crashes on its first requests) and a HAProxy that cannot restart are not retried as fast as
the supervisor ticks.

Real supervisor ticks and real replica processes (a stub module that exits shortly after start); HAProxy's runtime
API is replaced by one that reports every pointed slot healthy, so the stub is admitted at once (the fleet tests
under tests/serving run the real HAProxy).
"""

from __future__ import annotations

import contextlib
import itertools
import re
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from supervisor_stubs import HealthyApi, stub_supervisor

from tenfold.local.process import LocalPlatformError
from tenfold.serving import fleet
from tenfold.serving.haproxy import HaproxyError, ServerStat


@pytest.fixture
def supervisor(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    sup = stub_supervisor(tmp_path, monkeypatch, stable=1, module="short_lived_replica",
                           code="import time\ntime.sleep(0.4)\n")  # loads, serves, dies
    yield sup
    sup.shutdown()


def _tick_for(sup: Any, seconds: float) -> None:
    until = time.monotonic() + seconds
    while time.monotonic() < until:
        with contextlib.suppress(LocalPlatformError):  # what the supervisor's loop does with a failed tick: go on
            sup.tick()
        time.sleep(0.05)


def _tick_until(sup: Any, done: Any, seconds: float, what: str) -> None:
    """Tick (as the supervisor's loop does: a failed tick goes on) until ``done()``; fail naming ``what``."""
    until = time.monotonic() + seconds
    while not done():
        assert time.monotonic() < until, f"{what}:\n" + "\n".join(sup.lines)
        with contextlib.suppress(LocalPlatformError):
            sup.tick()
        time.sleep(0.05)


def _rolled(sup: Any, version: str) -> bool:
    return (all(r.version == version for r in sup.pool_replicas("stable"))
            and len(sup.pool_replicas("stable", fleet.SERVING)) == 2)


def _pool_up(sup: Any) -> None:
    _tick_until(sup, lambda: _old_serving(sup) >= 2, 15, "the v1 pool never came up")


def _delays(lines: list[str], what: str) -> list[float]:
    """The back-off delays the supervisor announced ("...; retrying in 1.0 s") on its lines about ``what``."""
    return [float(m.group(1)) for line in lines if what in line and (m := re.search(r"retrying in ([0-9.]+) s", line))]


def test_a_replica_that_dies_soon_after_admission_is_restarted_with_back_off(supervisor: Any,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(supervisor, "_ensure_haproxy", lambda: True)
    _tick_for(supervisor, 8.0)
    starts = [line for line in supervisor.lines if ": started " in line]
    # Dying 0.4 s after each start, an unthrottled pool starts ~15 replicas in 8 s; backing off 0.5, 1, 2, 4 s: ~5.
    assert 2 <= len(starts) <= 6, supervisor.lines
    # The delays the supervisor announced double from 0.5 s (the count above alone would also hold for an
    # unthrottled pool on a machine slow enough to start a Python process only every 1.5 s).
    delays = _delays(supervisor.lines, "after it entered rotation")
    assert len(delays) >= 2, supervisor.lines
    assert delays[0] == pytest.approx(0.5, abs=0.1), delays
    for before, after in itertools.pairwise(delays):
        assert after == pytest.approx(2 * before, abs=0.1), delays


def test_a_haproxy_that_cannot_restart_is_retried_with_back_off_and_the_status_says_so(
    supervisor: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The real HAProxy, whose port another process holds: it exits at start, and is tried again after 0.5, 1, 2 s."""
    import socket

    from tenfold.serving.haproxy import RuntimeApi, write_config

    settings = supervisor.settings
    write_config(settings, canary_percent=0)
    supervisor.api.alive = RuntimeApi(supervisor.paths.socket).alive  # the real runtime API says whether it came up
    holder = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    holder.bind((settings.local.bind_host, settings.local.lb_port))
    holder.listen()
    try:
        _tick_for(supervisor, 3.0)
    finally:
        holder.close()
    tries = [line for line in supervisor.lines if "haproxy: not running, restarting it" in line]
    assert 2 <= len(tries) <= 4, supervisor.lines  # at 0, 0.5, 1.5 s (then 3.5): not every 50 ms
    delays = _delays(supervisor.lines, "haproxy: could not restart")
    assert delays[:2] == [pytest.approx(0.5, abs=0.1), pytest.approx(1.0, abs=0.1)], supervisor.lines
    # It failed on the port (not, say, on a missing binary, which would fail the same way for another reason).
    assert any("could not restart" in line and "failed to start their listeners" in line for line in supervisor.lines)
    assert supervisor.haproxy is None
    status = fleet.read_status(settings)
    assert status is not None and status.haproxy_pid is None and not status.ready


def test_a_haproxy_that_started_but_never_answered_is_stopped_not_left_running(supervisor: Any,
                                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """A restart whose process starts but never answers its runtime API is stopped before the next try: left
    running, and forgotten, it would hold the port (every later restart failing) and outlive `serve down`. The real
    start (its own wait) over a process that never answers: a sleep in HAProxy's place, a runtime API that is down."""
    import psutil

    from tenfold.local import process

    monkeypatch.setattr(fleet, "haproxy_argv", lambda paths: ["sleep", "60"])
    monkeypatch.setattr(fleet, "HAPROXY_START_S", 0.3)
    supervisor.api.alive = lambda: False
    started: list[int] = []
    real_start = process.start

    def start(name: str, argv: list[str], **kwargs: Any) -> Any:
        record = real_start(name, argv, **kwargs)
        if name == fleet.HAPROXY:
            started.append(record.pid)
        return record

    monkeypatch.setattr(process, "start", start)
    _tick_for(supervisor, 1.0)
    assert started and any("haproxy: could not restart" in line for line in supervisor.lines), supervisor.lines
    for pid in started:
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE, pid
    assert process.read_record(supervisor.run_dir, fleet.HAPROXY) is None


def test_a_haproxy_that_dies_after_serving_long_is_reaped_before_its_restart(supervisor: Any,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """Only a HAProxy that died within SETTLED_S of its start was reaped: one that died after serving longer was
    restarted over, its process left a zombie for the supervisor's life (one more at each such death). A process in
    HAProxy's place (a sleep, the stub's runtime API answering), started "long ago" and SIGKILLed."""
    import os
    import signal

    import psutil

    monkeypatch.setattr(fleet, "haproxy_argv", lambda paths: ["sleep", "60"])
    monkeypatch.setattr(fleet, "HAPROXY_START_S", 0.3)
    supervisor.start_haproxy()
    old = psutil.Process(supervisor.haproxy.pid)
    supervisor.haproxy_started_at = time.monotonic() - fleet.SETTLED_S - 5  # it has served past SETTLED_S
    os.kill(old.pid, signal.SIGKILL)
    until = time.monotonic() + 10
    while old.status() != psutil.STATUS_ZOMBIE:  # dead, and not yet reaped: what the supervisor finds
        assert time.monotonic() < until, old.status()
        time.sleep(0.02)
    assert supervisor._ensure_haproxy() is True, supervisor.lines
    assert supervisor.haproxy is not None and supervisor.haproxy.pid != old.pid, supervisor.lines
    with pytest.raises(psutil.NoSuchProcess):  # reaped: no zombie left behind
        psutil.Process(old.pid).status()
    assert supervisor.haproxy_backoff == (0, 0.0)  # a death after serving long is no failed start
    assert any(f"haproxy: pid {old.pid} ended" in line for line in supervisor.lines), supervisor.lines


def test_a_haproxy_that_dies_soon_after_each_start_is_restarted_with_back_off(supervisor: Any,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """The back-off was reset as soon as a restarted HAProxy answered once: one that crashed a second after each start
    was restarted every tick, each restart sending every replica back through its health checks. Now, as for
    replicas, one that dies within SETTLED_S of its start is a failed start. A process in HAProxy's place (a sleep
    whose runtime API, the stub's, answers) that ends 0.5 s after each start."""
    monkeypatch.setattr(fleet, "haproxy_argv", lambda paths: ["sleep", "0.5"])
    monkeypatch.setattr(supervisor, "_reconcile", lambda pool: None)  # no replica: HAProxy alone
    _tick_for(supervisor, 6.0)
    starts = [line for line in supervisor.lines if "haproxy: not running, restarting it" in line]
    # Unthrottled: a start every ~0.55 s, some 10 in 6 s; backing off 0.5, 1, 2 s: starts at 0, 1, 2.5 and 5 s.
    assert 2 <= len(starts) <= 5, supervisor.lines
    delays = _delays(supervisor.lines, "s after it started")
    assert len(delays) >= 3, supervisor.lines
    assert delays[:3] == [pytest.approx(0.5, abs=0.1), pytest.approx(1.0, abs=0.1), pytest.approx(2.0, abs=0.1)], \
        supervisor.lines
    assert supervisor.haproxy_backoff[0] >= 3


def test_a_haproxy_back_off_resets_only_once_it_has_stayed_up_settled_s(supervisor: Any,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """After failed starts, a HAProxy that comes up keeps the back-off until it has served SETTLED_S (1 s here)."""
    monkeypatch.setattr(fleet, "haproxy_argv", lambda paths: ["sleep", "60"])
    monkeypatch.setattr(fleet, "SETTLED_S", 1.0)
    monkeypatch.setattr(supervisor, "_reconcile", lambda pool: None)
    supervisor.haproxy_backoff = (3, 0.0)  # three failed starts, the last one's wait over
    supervisor.tick()
    assert supervisor.haproxy is not None, supervisor.lines
    assert supervisor.haproxy_backoff[0] == 3  # up, not yet settled: a crash now backs off 4 s
    started = supervisor.haproxy_started_at
    # Checked before every tick: the first look that sees the reset is within a tick of it.
    _tick_until(supervisor, lambda: supervisor.haproxy_backoff == (0, 0.0), fleet.SETTLED_S + 5,
                "the back-off never reset")
    served = time.monotonic() - started
    assert served >= fleet.SETTLED_S, f"the back-off reset after {served:.2f} s up, before SETTLED_S"


@pytest.fixture
def rolling(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """A supervisor of a 2-replica stable pool on v1 (replicas that live), whose v2 replicas die V2_LIFETIME s
    after they start (a version that loads, passes its health check, then crashes under its first requests), or,
    with V2_FAIL_ONCE, whose second v2 replica exits at once (a transient failure) and the others live, or with
    V2_FIRST_DIES, whose first v2 replica dies V2_LIFETIME s after it starts and the others live."""
    code = ("import os, sys, time\n"
            "version = sys.argv[sys.argv.index('--model') + 1]\n"
            "v2 = version == 'v2'\n"
            "if v2 and os.environ.get('V2_FAIL_ONCE'):\n"
            "    count = os.environ['V2_FAIL_ONCE']\n"
            "    n = int(open(count).read()) + 1 if os.path.exists(count) else 1\n"
            "    open(count, 'w').write(str(n))\n"
            "    sys.exit(1 if n == 2 else time.sleep(600))\n"
            "if v2 and os.environ.get('V2_FIRST_DIES'):\n"
            "    count = os.environ['V2_FIRST_DIES']\n"
            "    n = int(open(count).read()) + 1 if os.path.exists(count) else 1\n"
            "    open(count, 'w').write(str(n))\n"
            "    os.environ['V2_LIFETIME'] = os.environ['V2_LIFETIME'] if n == 1 else '600'\n"
            "if version == 'v1' and os.path.exists(os.environ['V1_DIES']):\n"
            "    time.sleep(0.5)\n"
            "    sys.exit(1)\n"
            "time.sleep(float(os.environ['V2_LIFETIME']) if v2 else 600)\n")
    sup = stub_supervisor(tmp_path, monkeypatch, stable=2, module="versioned_replica", code=code,
                           environ={"TENFOLD_SERVING__FLEET__MIN_READY_S": "2.0"})
    assert sup.settings.serving.fleet.min_ready_s == 2.0
    sup.env["V2_LIFETIME"] = "2.0"
    sup.env["V1_DIES"] = str(tmp_path / "v1-dies")  # once this file exists, a v1 replica that starts dies
    monkeypatch.setattr(sup, "_ensure_haproxy", lambda: True)
    yield sup
    sup.shutdown()


def _roll_to(sup: Any, version: str) -> None:
    spec = fleet.FleetSpec(sup.spec.generation + 1, {**sup.spec.pools, "stable": fleet.PoolSpec(version, 2, 2)})
    (sup.run_dir / fleet.SPEC_FILE).write_text(spec.to_json())
    sup._spec_mtime = 0.0  # the next tick reads it (the mtime may not have moved within the same second)


def _old_serving(sup: Any) -> int:
    return len([r for r in sup.pool_replicas("stable", fleet.SERVING) if r.version == "v1"])


def test_a_pool_that_scales_out_during_a_roll_fills_the_gap_at_once(rolling: Any) -> None:
    """During a roll at most one new replica started, and only once every new one had served min_ready_s, even with
    the pool below its size: scaled from 2 to 4 in the middle of a roll, it grew one replica every few seconds
    (minutes with real models), against "scale-out is immediate"."""
    rolling.env["V2_LIFETIME"] = "600"  # a v2 that works
    _pool_up(rolling)
    spec = fleet.FleetSpec(rolling.spec.generation + 1, {**rolling.spec.pools, "stable": fleet.PoolSpec("v2", 4, 4)})
    (rolling.run_dir / fleet.SPEC_FILE).write_text(spec.to_json())
    rolling._spec_mtime = 0.0
    rolling.tick()
    new = [r for r in rolling.pool_replicas("stable") if r.version == "v2"]
    assert len(new) == 2 and _old_serving(rolling) == 2, "\n".join(rolling.lines)  # the gap, not one at a time


@pytest.mark.parametrize(("lifetime", "settled_s"), [
    (1.0, 60.0),  # dies before it has served min_ready_s (2 s)
    # dies after it has (so one old replica goes), before the next one has, and the old replicas have served long
    # enough to count as settled: they must not reset the back-off of what keeps failing (they did, and every
    # old one was drained). A version that dies only after n * min_ready_s is beyond this protection.
    (2.5, 6.0),
])
def test_a_roll_to_a_version_that_crashes_after_admission_keeps_the_old_replicas_serving(
        rolling: Any, monkeypatch: pytest.MonkeyPatch, lifetime: float, settled_s: float) -> None:
    rolling.env["V2_LIFETIME"] = str(lifetime)
    monkeypatch.setattr(fleet, "SETTLED_S", settled_s)
    _pool_up(rolling)
    if settled_s < 60:  # the old ones have served settled_s (the v2 ones die sooner after entering rotation)
        time.sleep(settled_s)
        rolling.tick()
    _roll_to(rolling, "v2")
    fewest, most, until = 2, 0, time.monotonic() + 14
    while time.monotonic() < until:  # v2 replicas start, enter rotation, die, again and again
        with contextlib.suppress(LocalPlatformError):
            rolling.tick()
        fewest = min(fewest, _old_serving(rolling))
        most = max(most, len([r for r in rolling.replicas if r.state in (fleet.STARTING, fleet.SERVING)]))
        time.sleep(0.05)
    assert most <= 3, "more than one extra replica during the roll"
    # The v2 replicas did start, enter rotation and die, again and again (a roll that never began passes the rest).
    assert len(_delays(rolling.lines, "after it entered rotation")) >= 2, "\n".join(rolling.lines)
    # Drained for replicas that then died, the pool ran out of v1 (and of everything): at most the one old
    # replica a new one that served min_ready_s replaced may go; none for one that died sooner.
    assert fewest >= (2 if lifetime < rolling.settings.serving.fleet.min_ready_s else 1), \
        "the roll drained old replicas for new ones that crashed:\n" + "\n".join(rolling.lines)
    assert _old_serving(rolling) >= 1


def test_a_roll_whose_new_replica_fails_once_still_completes(rolling: Any, monkeypatch: pytest.MonkeyPatch,
                                                             tmp_path: Path) -> None:
    """One transient failure of a new replica (a slow load that timed out, an exit) backs the pool off; the roll
    goes on once a replica started after it has served a while (it stopped for good: no new replica was started
    while one that entered rotation before the failure could not count)."""
    monkeypatch.setattr(fleet, "SETTLED_S", 3.0)
    rolling.env["V2_FAIL_ONCE"] = str(tmp_path / "v2-starts")
    _pool_up(rolling)
    _roll_to(rolling, "v2")
    _tick_until(rolling, lambda: _rolled(rolling, "v2"), 30, "the roll never completed")
    # The second v2 replica exited (while starting, or just after the stub API admitted it: either is a failure the
    # pool backs off from), so the roll took a third start.
    assert int((tmp_path / "v2-starts").read_text()) >= 3, "\n".join(rolling.lines)
    assert _delays(rolling.lines, "replica-stable"), "the failure was not backed off:\n" + "\n".join(rolling.lines)


def test_a_crash_looping_replica_beside_a_long_serving_one_backs_off(rolling: Any, monkeypatch: pytest.MonkeyPatch,
                                                                    tmp_path: Path) -> None:
    """A replica serving since before the failures does not reset the pool's back-off: with the old rule the
    healthy replica reset it every tick, and the failing slot was restarted every half second for ever."""
    import os
    import signal

    monkeypatch.setattr(fleet, "SETTLED_S", 1.0)
    _pool_up(rolling)
    time.sleep(1.5)  # both have served SETTLED_S
    rolling.tick()
    (tmp_path / "v1-dies").write_text("")  # from now on a v1 replica that starts dies 0.5 s in
    os.kill(rolling.pool_replicas("stable", fleet.SERVING)[1].record.pid, signal.SIGKILL)
    until = time.monotonic() + 9
    while time.monotonic() < until:
        with contextlib.suppress(LocalPlatformError):
            rolling.tick()
        time.sleep(0.05)
    delays = _delays(rolling.lines, "after it entered rotation")
    assert len(delays) >= 3, "\n".join(rolling.lines)
    assert delays[:3] == [pytest.approx(0.5, abs=0.1), pytest.approx(1.0, abs=0.1), pytest.approx(2.0, abs=0.1)], delays
    assert _old_serving(rolling) == 1  # the long-serving one, all along


def _with_a_real_haproxy_restart(sup: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    """The supervisor's own _ensure_haproxy (the fixture's stand-in says HAProxy always runs) over a stand-in
    HAProxy process (a sleep; the runtime API stays the stub's); returns what kills it, so that the next tick
    restarts it the supervisor's way."""
    from tenfold.local import process

    def start_haproxy() -> None:
        sup.haproxy = process.start(fleet.HAPROXY, ["sleep", "120"], run_dir=sup.run_dir, port=0)

    monkeypatch.setattr(sup, "start_haproxy", start_haproxy)
    monkeypatch.setattr(sup, "_ensure_haproxy", fleet.Supervisor._ensure_haproxy.__get__(sup))
    start_haproxy()

    def kill() -> int:
        pid = sup.haproxy.pid
        process.stop(sup.haproxy, timeout=5)
        return pid
    return kill


def test_an_haproxy_restart_during_a_roll_does_not_stop_the_old_replicas(rolling: Any,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """After HAProxy restarts, every replica re-enters through its health check (STARTING again); the roll
    stopped old ones in that state as if they had never served ("superseded"), all at once."""
    kill_haproxy = _with_a_real_haproxy_restart(rolling, monkeypatch)
    _pool_up(rolling)
    _roll_to(rolling, "v3")  # a version whose replicas live: a normal roll
    rolling.tick()
    dead = kill_haproxy()
    rolling.api.slots.clear()  # a restarted HAProxy has checked none of them yet...
    monkeypatch.setattr(rolling.api, "point", lambda *args: None)  # ...and does not before the next tick
    rolling.tick()
    assert rolling.haproxy.pid != dead and any("haproxy: not running, restarting it" in line for line in rolling.lines)
    assert {r.state for r in rolling.replicas if r.version == "v1"} == {fleet.STARTING}  # re-entering
    stopped = [r for r in rolling.replicas if r.version == "v1" and r.state == fleet.STOPPING]
    assert stopped == [], [(r.version, r.state) for r in rolling.replicas]


def test_a_replica_killed_long_after_admission_is_no_failure_even_after_an_haproxy_restart_rechecked_it(
        rolling: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """An HAProxy restart re-checks every replica (STARTING, then SERVING anew); how long one has served still
    counts from its first admission. It counted from the re-check: a replica of hours killed a second after an
    HAProxy restart was a "crash soon after admission", and the pool's next roll waited SETTLED_S to drain."""
    import os
    import signal

    # 6 s: the kill must come within SETTLED_S / 2 of the re-check to tell the two rules apart, which a loaded CI
    # machine's ticks could miss at 2 s.
    monkeypatch.setattr(fleet, "SETTLED_S", 6.0)
    kill_haproxy = _with_a_real_haproxy_restart(rolling, monkeypatch)
    _pool_up(rolling)
    _tick_until(rolling, lambda: all(r.admitted_at is not None and time.monotonic() - r.admitted_at > fleet.SETTLED_S
                                     for r in rolling.pool_replicas("stable", fleet.SERVING)), 30,
                "the replicas never served SETTLED_S")
    dead = kill_haproxy()
    rolling.tick()  # the supervisor restarts it: every replica re-enters through its check (the stub's: UP)
    assert rolling.haproxy.pid != dead
    restarted = time.monotonic()
    _tick_until(rolling, lambda: _old_serving(rolling) == 2, 10, "the replicas were never re-admitted")
    victim = rolling.pool_replicas("stable", fleet.SERVING)[0]
    # Killed well within SETTLED_S of its re-check: counted from the re-check, its death is a failure.
    assert time.monotonic() - restarted < fleet.SETTLED_S / 2, "re-admitted too late to tell the two rules apart"
    os.kill(victim.record.pid, signal.SIGKILL)
    _tick_until(rolling, lambda: victim not in rolling.replicas, 10, "the killed replica was never noticed")
    assert any("is gone (serving); replacing it" in line for line in rolling.lines), "\n".join(rolling.lines)
    assert not _delays(rolling.lines, "after it entered rotation"), "\n".join(rolling.lines)
    assert rolling.backoff["stable"][0] == 0


def test_a_roll_after_the_old_version_failed_does_not_wait_for_the_failure_to_settle(
        rolling: Any, tmp_path: Path) -> None:
    """A failure of the version being replaced (here a v1 replica that dies 0.5 s after it starts, in rotation as
    the roll begins) backs the pool off, but says nothing about the new version: its replicas count as ready after
    min_ready_s and the roll completes. It waited until a replica admitted after the failure had served SETTLED_S
    (60 s)."""
    import os
    import signal

    _pool_up(rolling)
    (tmp_path / "v1-dies").write_text("")  # from now on a v1 replica that starts dies 0.5 s in
    os.kill(rolling.pool_replicas("stable", fleet.SERVING)[1].record.pid, signal.SIGKILL)
    _tick_until(rolling, lambda: any("after it entered rotation" in line for line in rolling.lines), 10,
                "the v1 replacement never failed")
    # The next doomed v1 replacement is in rotation: roll now.
    _tick_until(rolling, lambda: _old_serving(rolling) >= 2, 10, "the v1 replacement never came back")
    _roll_to(rolling, "v3")  # a version whose replicas live
    _tick_until(rolling, lambda: _rolled(rolling, "v3"), 20, "the roll never completed")


def test_a_lookups_reload_during_a_held_roll_keeps_the_working_version_serving(rolling: Any, tmp_path: Path) -> None:
    """A roll to v2 is held (the first v2 dies 3.5 s after it starts: after min_ready_s, so it replaced one v1
    replica, and then failed); the lookups change (the demo reloads them every month) while v2 replicas on the older
    lookups serve. Those were counted as old replicas ready to serve, the back-off was reset by the change, and the
    last v1 replica was drained at once, for a version that failed."""
    rolling.env["V2_LIFETIME"] = "3.5"
    rolling.env["V2_FIRST_DIES"] = str(tmp_path / "v2-starts")
    _pool_up(rolling)
    _roll_to(rolling, "v2")
    _tick_until(rolling, lambda: any("after it entered rotation" in line for line in rolling.lines), 20,
                "v2 never failed")
    failed_at = time.monotonic()
    _tick_until(rolling, lambda: any(r.version == "v2" and r.admitted_at is not None and r.admitted_at > failed_at
                                     for r in rolling.pool_replicas("stable", fleet.SERVING)), 20,
                "v2 was never admitted again")
    assert _old_serving(rolling) >= 1
    spec = fleet.FleetSpec(rolling.spec.generation + 1,
                           {**rolling.spec.pools, "stable": fleet.PoolSpec("v2", 2, 2, lookups="2013-08")})
    (rolling.run_dir / fleet.SPEC_FILE).write_text(spec.to_json())
    rolling._spec_mtime = 0.0
    fewest, until = 2, time.monotonic() + 12
    while time.monotonic() < until:
        with contextlib.suppress(LocalPlatformError):
            rolling.tick()
        fewest = min(fewest, _old_serving(rolling))
        time.sleep(0.05)
    assert fewest >= 1, "the lookups reload drained every v1 replica:\n" + "\n".join(rolling.lines)


@pytest.mark.parametrize("corrupt", ['{"generation": 2, "pools": {"stable": {"vers', "{}", "[]"])
def test_a_corrupt_spec_is_announced_and_the_last_good_one_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                corrupt: str) -> None:
    """A truncated (or emptied) fleet-spec.json raised JSONDecodeError/KeyError out of the supervisor's tick; now the
    tick says which file is corrupt and what to do, keeps the spec it had, and takes the next good one."""
    import os

    sup = stub_supervisor(tmp_path, monkeypatch, stable=0, module="unused_replica", code="")
    monkeypatch.setattr(sup, "_ensure_haproxy", lambda: False)
    try:
        path = sup.run_dir / fleet.SPEC_FILE
        path.write_text(corrupt)
        os.utime(path, (1, 1))
        sup.tick()
        assert sup.spec.generation == 1
        assert [line for line in sup.lines if f"{path} is corrupt" in line and "`tenfold serve down` then `tenfold serve up`" in line
                and "keeping the last good spec (generation 1)" in line], sup.lines
        good = fleet.FleetSpec(2, {"stable": fleet.PoolSpec("v1", 0, 1), "canary": fleet.PoolSpec("v1", 0, 0)})
        path.write_text(good.to_json())
        os.utime(path, (2, 2))
        sup.tick()
        assert sup.spec.generation == 2
    finally:
        sup.shutdown()


class RestartingApi(HealthyApi):
    """A runtime API whose HAProxy restarts with every slot in maintenance (its configuration's template) and
    reports them MAINT; ``fail_points`` next ``point`` calls time out. A pointed slot is checked healthy (DRAIN) and
    goes UP once admitted, as the real one does."""

    def __init__(self) -> None:
        super().__init__()
        self.fail_points = 0

    def point(self, pool: str, server: str, host: str, port: int) -> None:
        if self.fail_points:
            self.fail_points -= 1
            raise HaproxyError("HAProxy's runtime API did not answer within 5 s")
        self.slots[(pool, server)] = "DRAIN"

    def admit(self, pool: str, server: str) -> None:
        self.slots[(pool, server)] = "UP"

    def maintain(self, pool: str, server: str) -> None:
        self.slots[(pool, server)] = "MAINT"

    def restarted(self) -> None:
        for key in self.slots:
            self.slots[key] = "MAINT"


@pytest.mark.parametrize("failed_points", [1, 2])
def test_replicas_whose_slot_a_failed_call_left_in_maintenance_reenter_rotation(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failed_points: int) -> None:
    """After an HAProxy restart the supervisor aims every slot at its replica again. One runtime API call that
    failed stopped that loop, and nothing ever aimed the rest: they stayed "serving" in the supervisor (and in
    `tenfold serve status`) while HAProxy kept their slots in maintenance, and the pool answered 503."""
    from tenfold.local import process

    sup = stub_supervisor(tmp_path, monkeypatch, stable=2, module="long_replica", code="import time\ntime.sleep(120)\n")
    api = sup.api = RestartingApi()

    def start_haproxy() -> None:
        sup.haproxy = process.start("haproxy", ["sleep", "120"], run_dir=fleet.run_dir(sup.settings), port=0)
        api.restarted()

    monkeypatch.setattr(sup, "start_haproxy", start_haproxy)
    try:
        start_haproxy()
        _tick_until(sup, lambda: len(sup.pool_replicas("stable", fleet.SERVING)) == 2, 15, "the pool never came up")
        first = sup.haproxy
        api.fail_points = failed_points  # aiming the slots fails this many times...
        process.stop(first, timeout=5)  # ...once HAProxy died and the supervisor restarted it
        _tick_until(sup, lambda: sup.haproxy is not None and sup.haproxy.pid != first.pid, 15, "HAProxy not restarted")
        _tick_until(sup, lambda: sorted(api.slots.values()) == ["UP", "UP"]
                    and len(sup.pool_replicas("stable", fleet.SERVING)) == 2, 15,
                    f"slots {api.slots} never all back in rotation")
        assert api.fail_points == 0
    finally:
        sup.shutdown()


def test_a_slot_whose_maint_failed_when_its_replica_died_is_put_in_maintenance_on_a_later_tick(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The `maint` sent when a replica went was suppressed on failure (a timeout in a short HAProxy stall) and never
    sent again: the slot, owned by no replica, stayed ready, aimed at a port the other pool's next replica may take,
    sending this arm's users to that model. A killed replica (SIGKILL), its slot's `maint` failing once: a later
    tick sends it again, and says so."""
    import os
    import signal

    from tenfold.serving.haproxy import HaproxySilent

    sup = stub_supervisor(tmp_path, monkeypatch, stable=1, module="long_replica", code="import time\ntime.sleep(120)\n")
    monkeypatch.setattr(sup, "_ensure_haproxy", lambda: True)
    api, real_maintain, failures = sup.api, sup.api.maintain, [1]

    def maintain(pool: str, server: str) -> None:
        if failures and failures.pop():
            raise HaproxySilent("show stat timed out")
        real_maintain(pool, server)

    api.maintain = maintain
    try:
        _tick_until(sup, lambda: len(sup.pool_replicas("stable", fleet.SERVING)) == 1, 15, "the pool never came up")
        (first,) = sup.pool_replicas("stable", fleet.SERVING)
        sup.spec.pools["stable"] = fleet.PoolSpec("v1", 0, 0)  # nothing replaces it: its slot stays free
        sup.desired["stable"] = 0
        sup.scalers["stable"].set_bounds(0, 0)
        monkeypatch.setattr(sup, "_load_spec", lambda: sup.spec)
        os.kill(first.record.pid, signal.SIGKILL)
        _tick_until(sup, lambda: first not in sup.replicas, 15, "the killed replica was never noticed")
        assert not failures, "the maint of its slot was not tried"
        _tick_until(sup, lambda: ("stable", first.server) not in api.slots, 5,
                    f"slot {first.server}, owned by no replica, left {api.slots.get(('stable', first.server))}")
        assert [line for line in sup.lines if "`maint` sent again" in line] == [
            next(line for line in sup.lines if f"stable/{first.server}: `maint` sent again" in line)], "\n".join(sup.lines)
    finally:
        sup.shutdown()


def test_a_replica_that_dies_with_its_maint_taken_is_not_said_to_need_it_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The sweep read HAProxy's view at the tick's start: the slot of a replica that died that tick, put in maintenance
    by its _forget, still showed UP, and every death was announced as "`maint` sent again (an earlier one did not
    take)"."""
    import os
    import signal

    sup = stub_supervisor(tmp_path, monkeypatch, stable=1, module="long_replica", code="import time\ntime.sleep(120)\n")
    monkeypatch.setattr(sup, "_ensure_haproxy", lambda: True)
    try:
        _tick_until(sup, lambda: len(sup.pool_replicas("stable", fleet.SERVING)) == 1, 15, "the pool never came up")
        (first,) = sup.pool_replicas("stable", fleet.SERVING)
        os.kill(first.record.pid, signal.SIGKILL)
        _tick_until(sup, lambda: first not in sup.replicas, 15, "the killed replica was never noticed")
        _tick_for(sup, 0.5)
        assert not [line for line in sup.lines if "sent again" in line], "\n".join(sup.lines)
    finally:
        sup.shutdown()


def test_a_slot_that_cannot_be_aimed_again_is_said_once_and_its_replica_replaced_after_the_start_timeout(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A re-point that keeps failing while `show stat` answers must not leave the replica "serving" (or starting for
    ever, re-pointed every tick in silence): it is taken out of serving at once and replaced once it times out."""

    sup = stub_supervisor(tmp_path, monkeypatch, stable=1, module="long_replica", code="import time\ntime.sleep(120)\n",
                           environ={"TENFOLD_SERVING__FLEET__REPLICA_START_TIMEOUT_S": "1.5"})
    api = sup.api = RestartingApi()
    monkeypatch.setattr(sup, "_ensure_haproxy", lambda: True)
    try:
        _tick_until(sup, lambda: len(sup.pool_replicas("stable", fleet.SERVING)) == 1, 15, "the pool never came up")
        (first,) = sup.pool_replicas("stable", fleet.SERVING)
        api.restarted()  # the slot is in maintenance...
        api.fail_points = 10**6  # ...and aiming it fails from now on
        sup.tick()
        assert first.state == fleet.STARTING, "a replica whose slot is in maintenance was still reported serving"
        _tick_until(sup, lambda: first.state in (fleet.STOPPING,) or first not in sup.replicas, 15,
                    "the replica whose slot could not be aimed was never replaced")
        said = [line for line in sup.lines if "could not aim its HAProxy slot" in line]
        assert len(said) == 1, "\n".join(sup.lines)
    finally:
        sup.shutdown()


def test_a_roll_to_a_version_that_goes_down_in_haproxy_after_admission_keeps_an_old_replica_up(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """New replicas that pass their health check, enter rotation, then go DOWN in HAProxy (readiness 503: every model
    call failing) while staying alive: readiness was the supervisor's SERVING alone, and the roll drained both old
    replicas for them, leaving nothing UP in the stable backend (every request a 503)."""
    sup = stub_supervisor(tmp_path, monkeypatch, stable=2, module="live_replica", code="import time\ntime.sleep(600)\n",
                           environ={"TENFOLD_SERVING__FLEET__MIN_READY_S": "1.0"})

    class DownAfterAdmission(HealthyApi):
        """HAProxy as the supervisor sees it: a v2 replica's slot reports DOWN 0.5 s after it is admitted. ``admitted``
        forgets a slot put in maintenance; ``admissions`` and ``reported_down`` keep what happened for the test."""

        def __init__(self) -> None:
            super().__init__()
            self.admitted: dict[tuple[str, str], float] = {}
            self.admissions: list[tuple[str, str, str | None]] = []  # pool, server, the version of its replica
            self.reported_down: set[tuple[str, str]] = set()

        def admit(self, pool: str, server: str) -> None:
            self.admitted[(pool, server)] = time.monotonic()
            r = next((r for r in sup.replicas if r.pool == pool and r.server == server), None)
            self.admissions.append((pool, server, r.version if r is not None else None))

        def maintain(self, pool: str, server: str) -> None:
            super().maintain(pool, server)
            self.admitted.pop((pool, server), None)

        def all_servers(self) -> dict[str, dict[str, ServerStat]]:
            out = super().all_servers()
            for (pool, server), at in self.admitted.items():
                r = next((r for r in sup.replicas if r.pool == pool and r.server == server), None)
                if (r is not None and r.version == "v2" and out[pool][server].status == "UP"
                        and time.monotonic() - at > 0.5):
                    out[pool][server] = ServerStat(pool, server, "DOWN", "L7STS", 0, 0, 0, None)
                    self.reported_down.add((pool, server))
            return out

    sup.api = api = DownAfterAdmission()
    monkeypatch.setattr(sup, "_ensure_haproxy", lambda: True)
    try:
        _tick_until(sup, lambda: _old_serving(sup) >= 2, 15, "the v1 pool up")
        _roll_to(sup, "v2")
        fewest_up, until = 2, time.monotonic() + 8
        while time.monotonic() < until:
            with contextlib.suppress(LocalPlatformError):
                sup.tick()
            up = [s for s in sup.api.all_servers().get("stable", {}).values() if s.status == "UP"]
            fewest_up = min(fewest_up, len(up))
            time.sleep(0.05)
        # A v2 replica was admitted and then went DOWN (a roll that never began passes the rest).
        assert [a for a in api.admissions if a[0] == "stable" and a[2] == "v2"], "\n".join(sup.lines)
        assert api.reported_down, "no v2 replica went DOWN after its admission:\n" + "\n".join(sup.lines)
        assert fewest_up >= 1, "no stable replica UP in HAProxy:\n" + "\n".join(sup.lines)
        assert _old_serving(sup) >= 1
    finally:
        sup.shutdown()


@pytest.mark.parametrize("share", [25, 0])
def test_a_canary_pool_with_users_routed_to_it_keeps_a_replica_at_min_0(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                       share: int) -> None:
    """At min 0 and no load the autoscaler took the canary pool to none; HAProxy then sent its buckets to stable, the
    signal stayed 0, and it never scaled out again: the split said 25 %, the canary got nothing, and a rollout saw
    "no data" until its deadline. With no share routed to it, it may go to none."""
    from tenfold.serving.haproxy import HaproxyPaths, write_split_map

    sup = stub_supervisor(tmp_path, monkeypatch, stable=1, module="idle_replica", code="import time\ntime.sleep(600)\n")
    try:
        sup.spec = fleet.FleetSpec(2, {**sup.spec.pools, "canary": fleet.PoolSpec("v1", 0, 2)})
        sup.desired["canary"] = 1
        write_split_map(HaproxyPaths.of(sup.settings).split_map, share)
        monkeypatch.setattr(sup.scalers["canary"], "decide", lambda now, mean, current: 0)  # no load for the window
        sup._last_scale = float("-inf")
        sup._autoscale()
        assert sup.desired["canary"] == (1 if share else 0)
    finally:
        sup.shutdown()


def test_scaling_in_drains_a_replica_haproxy_has_down_before_one_that_serves(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The youngest went first, whatever HAProxy said: with the older replica DOWN (a stalled model call: readiness
    503, still SERVING until its restart is due), scaling in to one drained the only replica UP, and the pool served
    nobody until the DOWN one was restarted and loaded again."""
    sup = stub_supervisor(tmp_path, monkeypatch, stable=2, module="live_replica", code="import time\ntime.sleep(600)\n")
    monkeypatch.setattr(sup, "_ensure_haproxy", lambda: True)
    try:
        _tick_until(sup, lambda: len(sup.pool_replicas("stable", fleet.SERVING)) == 2, 15, "the pool up")
        # The one age alone would drain (the youngest; the first of a tie) serves; the other is DOWN.
        younger, older = sorted(sup.pool_replicas("stable", fleet.SERVING), key=lambda r: -r.record.create_time)
        sup.api.slots[("stable", older.server)] = "DOWN"
        spec = fleet.FleetSpec(sup.spec.generation + 1, {**sup.spec.pools, "stable": fleet.PoolSpec("v1", 1, 1)})
        (sup.run_dir / fleet.SPEC_FILE).write_text(spec.to_json())
        sup._spec_mtime = 0.0
        sup.tick()
        assert younger.state == fleet.SERVING and sup.api.slots[("stable", younger.server)] == "UP"
        assert older.state != fleet.SERVING, "\n".join(sup.lines)
    finally:
        sup.shutdown()


class BusyApi(HealthyApi):
    """HAProxy's runtime API with requests in flight: ``sessions[server]`` requests on a slot (0 unless set), and every
    call on a slot recorded in ``calls`` in order, as (command, server)."""

    def __init__(self) -> None:
        super().__init__()
        self.sessions: dict[str, int] = {}
        self.calls: list[tuple[str, str]] = []

    def point(self, pool: str, server: str, host: str, port: int) -> None:
        self.calls.append(("point", server))
        super().point(pool, server, host, port)

    def drain(self, pool: str, server: str) -> None:
        self.calls.append(("drain", server))
        super().drain(pool, server)

    def maintain(self, pool: str, server: str) -> None:
        self.calls.append(("maint", server))
        super().maintain(pool, server)

    def all_servers(self) -> dict[str, dict[str, ServerStat]]:
        out = super().all_servers()
        for servers in out.values():
            for server, stat in servers.items():
                servers[server] = replace(stat, sessions=self.sessions.get(server, 0))
        return out


def test_scaling_in_stops_a_replica_only_once_its_requests_in_flight_are_done(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Scaling in takes a replica out of HAProxy's rotation (`drain`: no new requests) and stops it only once HAProxy
    counts nothing in flight on it (or the drain times out, 20 s here): stopped at once, or with its requests still
    running, the replica's clients got their connections cut. Three requests in flight on each replica as the pool
    goes from 2 to 1; the victim must wait for them, then go."""
    import psutil

    from tenfold.local import process

    sup = stub_supervisor(tmp_path, monkeypatch, stable=2, module="live_replica", code="import time\ntime.sleep(600)\n")
    sup.api = api = BusyApi()
    monkeypatch.setattr(sup, "_ensure_haproxy", lambda: True)
    stopped = _stops(monkeypatch)
    try:
        _tick_until(sup, lambda: len(sup.pool_replicas("stable", fleet.SERVING)) == 2, 15, "the pool up")
        for r in sup.replicas:
            api.sessions[r.server] = 3
        before = len(api.calls)
        spec = fleet.FleetSpec(sup.spec.generation + 1, {**sup.spec.pools, "stable": fleet.PoolSpec("v1", 1, 1)})
        (sup.run_dir / fleet.SPEC_FILE).write_text(spec.to_json())
        sup._spec_mtime = 0.0
        sup.tick()
        (victim,) = [r for r in sup.replicas if r.state != fleet.SERVING]
        (survivor,) = sup.pool_replicas("stable", fleet.SERVING)
        # HAProxy is told to drain it before anything else is done to its slot.
        assert [c for c in api.calls[before:] if c[1] == victim.server] == [("drain", victim.server)], api.calls
        assert victim.state == fleet.DRAINING, "\n".join(sup.lines)
        _tick_for(sup, 1.5)  # some 30 ticks with its requests still in flight
        assert victim in sup.replicas and victim.state == fleet.DRAINING, "\n".join(sup.lines)
        assert victim.record.pid not in stopped and process.is_running(victim.record), stopped
        assert ("maint", victim.server) not in api.calls[before:], api.calls
        assert api.slots[("stable", victim.server)] == "DRAIN"
        api.sessions[victim.server] = 0  # its last request answered
        _tick_until(sup, lambda: victim not in sup.replicas, 15, "the drained replica was never stopped")
        assert any(f"{fleet.replica_name('stable', victim.slot)}: stopping (drained)" in line for line in sup.lines), \
            "\n".join(sup.lines)
        assert victim.record.pid in stopped and _gone(victim.record.pid)
        assert [c for c in api.calls[before:] if c[1] == victim.server][:2] == [("drain", victim.server),
                                                                               ("maint", victim.server)], api.calls
        assert ("stable", victim.server) not in api.slots  # out of HAProxy
        assert sup.pool_replicas("stable") == [survivor] and survivor.state == fleet.SERVING
        assert survivor.record.pid not in stopped and psutil.pid_exists(survivor.record.pid)
    finally:
        sup.shutdown()


def test_a_haproxy_stopped_by_sigstop_is_replaced_and_the_status_still_written(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A hung (or SIGSTOPped) HAProxy passed the liveness check (its process is there) while its runtime API timed out
    on every tick: it was never restarted, clients hung on the load balancer's port, no replica was reaped, and the
    status file went stale. The real parts: a real HAProxy started the supervisor's way, the real runtime API (a
    short timeout), a real SIGSTOP. The ticks run in a thread of their own, so a tick blocked for ever in the runtime
    API's recv (its socket timeout lost) fails this test by its bound instead of hanging it."""
    import os
    import signal
    import threading

    import psutil

    from tenfold.local import free_ports
    from tenfold.serving.haproxy import RuntimeApi, write_config

    lb, metrics = free_ports(2)
    sup = stub_supervisor(tmp_path, monkeypatch, stable=1, module="lasting_replica",
                          code="import time\ntime.sleep(600)\n",
                          environ={"TENFOLD_LOCAL__LB_PORT": str(lb),
                                   "TENFOLD_SERVING__FLEET__LB_METRICS_PORT": str(metrics)})
    monkeypatch.setattr(sup, "_reconcile", lambda pool: None)  # no replica: HAProxy alone
    monkeypatch.setattr(fleet, "HAPROXY_START_S", 4.0)  # silence that restarts it; a start's wait
    sup.api = RuntimeApi(sup.paths.socket, timeout=0.5)  # the supervisor's own kind, its timeout short
    stop_ticking = threading.Event()
    written: set[float] = set()  # statuses written while the stopped HAProxy was still the fleet's
    crashed: list[BaseException] = []
    ticker: threading.Thread | None = None
    stopped: psutil.Process | None = None

    def tick_on(first: int) -> None:
        try:
            while not stop_ticking.is_set():
                with contextlib.suppress(LocalPlatformError):  # what the supervisor's loop does with a failed tick
                    sup.tick()
                status = fleet.read_status(sup.settings)
                if status is not None and status.haproxy_pid == first:
                    written.add(status.updated_at)
                stop_ticking.wait(0.05)
        except BaseException as exc:  # reported by the test below
            crashed.append(exc)

    def answers_as(pid: int) -> bool:
        """HAProxy's runtime API answers `show info`, and it is the process ``pid`` that answers."""
        info = _show_info(sup.paths.socket, 1.0)
        return info is not None and "Name: HAProxy" in info and f"\nPid: {pid}\n" in info

    try:
        write_config(sup.settings, canary_percent=0)
        sup.start_haproxy()  # the supervisor's own start: the real haproxy_argv, waits on the real alive()
        first = sup.haproxy.pid
        stopped = psutil.Process(first)
        assert answers_as(first), "the real HAProxy did not come up"
        sup.tick()  # a tick against the answering one: nothing silent
        assert sup.haproxy_silent_since is None and sup.haproxy.pid == first, sup.lines
        hung_at = time.monotonic()
        sup.scalers["stable"].decide(hung_at, 8.0, 1)  # a window and samples of before the hang
        sup.samples["stable"] = [8, 8]
        os.kill(first, signal.SIGSTOP)
        until = time.monotonic() + 5  # the signal is delivered asynchronously
        while stopped.status() != psutil.STATUS_STOPPED:
            assert time.monotonic() < until, stopped.status()
            time.sleep(0.01)
        assert _show_info(sup.paths.socket, 0.5) is None, "a stopped HAProxy answered its runtime API"
        ticker = threading.Thread(target=tick_on, args=(first,), daemon=True)
        ticker.start()
        deadline = time.monotonic() + 40  # ~2 s of silence, 0.5 s one more look, 5 s stop, 0.5 s back-off, a start
        while not (sup.haproxy is not None and sup.haproxy.pid != first and answers_as(sup.haproxy.pid)):
            assert time.monotonic() < deadline, "the stopped HAProxy was never replaced:\n" + "\n".join(sup.lines)
            assert ticker.is_alive(), crashed
            time.sleep(0.05)
        assert _gone(first), "the stopped HAProxy was left running beside its replacement"
        assert RuntimeApi(sup.paths.socket, timeout=2.0).alive()  # the product's own look says so too
        assert any(f"haproxy: pid {first} has not answered its runtime API" in line for line in sup.lines), sup.lines
    finally:
        stop_ticking.set()
        if stopped is not None:
            with contextlib.suppress(psutil.Error):  # SIGKILL: also ends a tick stuck reading from it
                stopped.kill()
        if ticker is not None:
            ticker.join(30)
        sup.shutdown()
    assert ticker is not None and not ticker.is_alive(), "a tick never returned"
    assert not crashed, crashed
    assert len(written) >= 1, "the status was not written while HAProxy did not answer"
    # Nothing was observed meanwhile: the autoscaler's window and samples start again from the replacement
    assert all(t > hung_at for t, _ in sup.scalers["stable"]._history), sup.scalers["stable"]._history
    assert sup.samples["stable"][:2] != [8, 8]


def _show_info(path: Path, timeout: float) -> str | None:
    """HAProxy's answer to `show info` on its runtime API socket, read with a timeout of the test's own (not through
    RuntimeApi, whose timeout is under test); None when it does not answer within ``timeout``."""
    import socket

    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(str(path))
            sock.sendall(b"show info\n")
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
    except OSError:
        return None
    return b"".join(chunks).decode(errors="replace")


def _haproxy_answering(supervisor: Any, monkeypatch: pytest.MonkeyPatch, all_servers: Callable[[], Any]) -> int:
    """A stand-in HAProxy process (``sleep``) whose runtime API's ``show stat`` is ``all_servers``; its pid."""
    monkeypatch.setattr(fleet, "haproxy_argv", lambda paths: ["sleep", "60"])
    monkeypatch.setattr(fleet, "HAPROXY_START_S", 0.3)
    supervisor.start_haproxy()
    supervisor.api.all_servers = all_servers
    return int(supervisor.haproxy.pid)


def test_a_haproxy_that_answers_with_a_refusal_is_not_taken_for_a_hung_one(supervisor: Any,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Only silence means hung: a refusal HAProxy answered (a command it rejects, a `show stat` it cannot parse) made
    the supervisor restart it every 10 s, each restart sending every replica back through its health checks."""
    def refuses() -> Any:
        raise HaproxyError("HAProxy refused `show stat`: Unknown command")

    first = _haproxy_answering(supervisor, monkeypatch, refuses)
    supervisor.api.alive = lambda: False  # the one more look would not save it: only the refusal's kind does
    _tick_for(supervisor, 1.5)
    assert supervisor.haproxy.pid == first, supervisor.lines
    assert supervisor.haproxy_silent_since is None, "a refusal started the silence clock"
    assert not any("has not answered its runtime API" in line for line in supervisor.lines)


def test_a_haproxy_slow_to_answer_but_alive_to_one_more_look_is_not_restarted(supervisor: Any,
                                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Silence for longer than HAPROXY_START_S restarts HAProxy only when `show info` confirms it: one busy under load
    answers in the end, and restarting it sent every replica back through its health checks."""
    from tenfold.serving.haproxy import HaproxySilent

    def silent() -> Any:
        raise HaproxySilent("HAProxy's runtime API did not answer `show stat` in 2 s")

    first = _haproxy_answering(supervisor, monkeypatch, silent)
    _tick_for(supervisor, 1.5)  # alive() answers (HealthyApi)
    assert supervisor.haproxy.pid == first and supervisor.haproxy_silent_since is not None, supervisor.lines
    assert not any("has not answered its runtime API" in line for line in supervisor.lines)
    supervisor.api.alive = lambda: False  # and now it does not: stopped (to be started again)
    _tick_for(supervisor, 1.5)
    assert any(f"pid {first} has not answered its runtime API" in line for line in supervisor.lines), supervisor.lines


def _run(sup: Any, tick: Callable[[], None]) -> None:
    """``sup.run()`` here (the main thread, as the supervisor's process runs it) with ``tick`` as its tick; the signal
    handlers it installs are put back after."""
    import signal

    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    sup.tick = tick
    try:
        sup.run()
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)


def _stops(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The pids ``process.stop`` is called on from now (it still stops them)."""
    from tenfold.local import process

    stopped: list[int] = []
    real_stop = process.stop

    def stop(record: Any, **kwargs: Any) -> bool:
        stopped.append(record.pid)
        return bool(real_stop(record, **kwargs))

    monkeypatch.setattr(process, "stop", stop)
    return stopped


def _gone(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _lasting_fleet(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **environ: str) -> Any:
    """A supervisor of two stable replicas that live, a ``sleep`` in HAProxy's place (its runtime API HealthyApi)."""
    sup = stub_supervisor(tmp_path, monkeypatch, stable=2, module="lasting_replica",
                           code="import time\ntime.sleep(600)\n", environ=environ)
    monkeypatch.setattr(fleet, "haproxy_argv", lambda paths: ["sleep", "60"])
    return sup


def test_a_log_and_status_refused_by_a_full_disk_neither_end_the_supervisor_nor_skip_its_shutdown(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The supervisor's stdout is its log, run/fleet.log. On a full disk its tick failed (the status not written),
    the loop's line about it failed too and left the loop, and the shutdown's first line ("stopping the fleet")
    failed before anything was stopped: the supervisor exited with a traceback, HAProxy and every replica running on.
    Here the log and the tick raise ENOSPC once both replicas serve (the real disk: the next test)."""
    import errno
    import os

    sup = _lasting_fleet(tmp_path, monkeypatch)
    stopped = _stops(monkeypatch)
    real_tick, lines = sup.tick, sup.lines
    full: list[str] = []  # one entry per tick since the disk filled
    pids: dict[str, Any] = {}
    deadline = time.monotonic() + 30

    def say(line: str) -> None:
        if full:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        lines.append(line)

    def tick() -> None:
        if time.monotonic() > deadline:  # the pool never came up: stop (failing below)
            sup.stopping.set()
        if not full and len(sup.pool_replicas("stable", fleet.SERVING)) < 2:
            real_tick()
            return
        if not full:
            pids.update(haproxy=sup.haproxy.pid, replicas=[r.record.pid for r in sup.replicas])
        full.append("tick")
        if len(full) >= 5:
            sup.stopping.set()
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(sup.run_dir / fleet.STATUS_FILE))

    sup._say = say
    try:
        _run(sup, tick)  # returns: nothing raised out of the loop or the shutdown
        assert len(full) >= 5 and len(pids["replicas"]) == 2, lines
        assert pids["haproxy"] in stopped, stopped
        assert set(pids["replicas"]) <= set(stopped), (pids, stopped)
        assert all(_gone(pid) for pid in [pids["haproxy"], *pids["replicas"]])
        assert sup.unsaid[0] >= 2 and sup.unsaid[1] == os.strerror(errno.ENOSPC)
        assert any("No space left on device" in line for line in sup.events), sup.events
    finally:
        full.clear()
        sup.shutdown()


def test_a_supervisor_whose_disk_fills_keeps_supervising_and_stops_everything(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, small_disk: Any) -> None:
    """The real fault: the fleet's home and the supervisor's log on a small tmpfs, filled once both replicas serve.
    The status cannot be written, nor a line of the log; the supervisor ticks on, says why in its events (what the
    status shows once there is room), and its shutdown stops HAProxy and both replicas."""
    import os

    sup = _lasting_fleet(tmp_path, monkeypatch, TENFOLD_HOME=str(small_disk.path / "home"))
    stopped = _stops(monkeypatch)
    log_path = small_disk.path / "fleet.log"
    log = open(log_path, "a")  # noqa: SIM115 (closed below)
    lines = sup.lines

    def say(line: str) -> None:  # what the supervisor's main() does with its stdout, the log
        lines.append(line)
        print(line, file=log, flush=True)

    real_tick = sup.tick
    full_ticks = 0
    pids: dict[str, Any] = {}
    deadline = time.monotonic() + 30

    def tick() -> None:
        nonlocal full_ticks
        if time.monotonic() > deadline:
            sup.stopping.set()
        if not pids and len(sup.pool_replicas("stable", fleet.SERVING)) == 2:
            pids.update(haproxy=sup.haproxy.pid, replicas=[r.record.pid for r in sup.replicas])
            small_disk.fill()
            fd = os.open(log_path, os.O_WRONLY | os.O_APPEND)  # and the last page of the log itself
            try:
                with contextlib.suppress(OSError):
                    while True:
                        os.write(fd, b"x" * 512)
            finally:
                os.close(fd)
        real_tick()
        if pids:
            full_ticks += 1
            if full_ticks >= 5:
                sup.stopping.set()

    sup._say = say
    try:
        _run(sup, tick)
        assert full_ticks >= 5 and len(pids["replicas"]) == 2, lines
        assert any("cannot write its status" in line and "No space left on device" in line for line in sup.events), \
            sup.events
        assert pids["haproxy"] in stopped and set(pids["replicas"]) <= set(stopped), (pids, stopped)
        assert all(_gone(pid) for pid in [pids["haproxy"], *pids["replicas"]])
        # Room again (the shutdown's removed pid files may have made some already): the first line the log takes
        # says how many it did not.
        small_disk.free()
        sup.say("after")
        with contextlib.suppress(OSError):
            log.flush()
        assert "lines before this one could not be written to this log (No space left on device)" in \
            log_path.read_text(errors="replace")
    finally:
        small_disk.free()
        with contextlib.suppress(OSError):
            log.close()
        sup._say = lines.append
        sup.shutdown()


def test_a_status_left_old_by_a_full_disk_says_the_disk_not_a_hung_supervisor(small_disk: Any) -> None:
    """`tenfold serve status` called a supervisor whose disk was full not responding ("nothing replaces a replica
    that dies"), sending the user to restart it and to a log it could not write; the disk is what to fix."""
    import os

    from tenfold.local import process

    record = process.ProcessRecord(name=fleet.SUPERVISOR, pid=os.getpid(), create_time=0.0, cmdline=["x"], port=1,
                                   log=str(small_disk.path / "fleet.log"))
    old = fleet.FleetStatus(generation=1, updated_at=time.time() - 120, supervisor_pid=os.getpid(), haproxy_pid=None,
                            pools={}, updated_monotonic=time.monotonic() - 120)
    assert "is not responding" in (fleet.not_responding(old, record) or "")  # room on the disk: hung, as before
    small_disk.fill()
    said = fleet.not_responding(old, record) or ""
    assert f"the disk holding {small_disk.path} is full" in said and "free space there" in said, said
    assert "not responding" not in said


def test_the_supervisor_process_ends_an_os_error_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``python -m tenfold.serving.fleet`` caught only LocalPlatformError: an OSError (its settings file gone with
    the run folder, a full disk) ended it with a traceback in its log; now one line and exit status 1."""
    missing = tmp_path / "run" / fleet.SETTINGS_FILE
    assert fleet.main(["--settings-file", str(missing)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and str(missing) in err and err.count("\n") == 1, err


# A replica stub whose first start finds its port taken: another process (the child it leaves behind, in a session and
# an environment of its own, as an unrelated program would be) binds the port after the supervisor chose it and before the replica
# does, and the replica exits 1, as the real one does when it cannot bind. Later starts stay up.
_PORT_TAKEN_STUB = """\
import os, socket, subprocess, sys, time
port = int(sys.argv[sys.argv.index("--port") + 1])
marker = os.environ["STUB_MARKER"]
if os.path.exists(marker):
    time.sleep(60)
    sys.exit(0)
holder = subprocess.Popen([sys.executable, "-c", (
    "import socket, sys, time; s = socket.socket(); s.bind(('127.0.0.1', %d)); s.listen(); "
    "sys.stdout.write('bound'); sys.stdout.flush(); time.sleep(60)") % port], start_new_session=True,
    stdout=subprocess.PIPE, env={})  # none of the fleet's environment: stopping the replica leaves it be
assert holder.stdout.read(5) == b"bound"
with open(marker, "w") as f:
    f.write(str(holder.pid))
print(f"tenfold serving: could not start on 127.0.0.1:{port} (is the port taken?)", file=sys.stderr)
sys.exit(1)
"""


class _CheckingApi(HealthyApi):
    """Every pointed slot still being checked (never UP): a replica stays starting until it exits or is stopped."""

    def all_servers(self) -> dict[str, dict[str, ServerStat]]:
        out: dict[str, dict[str, ServerStat]] = {}
        for pool, server in self.slots:
            out.setdefault(pool, {})[server] = ServerStat(pool, server, "DOWN", "L4CON", 0, 0, 0, None)
        return out


def test_a_replica_whose_port_another_process_took_is_started_again_elsewhere_without_failing_its_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The port a replica is given was free when the supervisor chose it; a program that binds it before the replica
    does made the replica exit while starting, and that was counted as its version failing: the pool backed off, and
    the version was reported failing (a rollout's timeout named it). It is started again on another port at once."""
    import os
    import signal

    marker = tmp_path / "holder.pid"
    sup = stub_supervisor(tmp_path, monkeypatch, stable=1, module="port_taken_replica", code=_PORT_TAKEN_STUB,
                          environ={})
    sup.env["STUB_MARKER"] = str(marker)
    sup.api = _CheckingApi()
    monkeypatch.setattr(sup, "_ensure_haproxy", lambda: True)
    try:
        _tick_until(sup, lambda: len([line for line in sup.lines if ": started " in line]) >= 2, 15,
                    "no second replica was started")
        first, second = [int(m.group(1)) for line in sup.lines if (m := re.search(r"on port (\d+)", line))][:2]
        assert first != second
        assert any(f"another process took port {first} first" in line for line in sup.lines), sup.lines
        assert sup.failed["stable"] == set() and sup.backoff["stable"][0] == 0, sup.lines
        assert not any("retrying in" in line for line in sup.lines), sup.lines
    finally:
        sup.shutdown()
        if marker.exists():
            os.kill(int(marker.read_text()), signal.SIGKILL)


def test_the_supervisor_asks_its_replicas_to_leave_their_exit_records_where_the_demo_reads_them(
        supervisor: Any) -> None:
    from tenfold.serving.replica import ENDED_DIR_ENV

    assert supervisor.env[ENDED_DIR_ENV] == str(fleet.ended_dir(supervisor.settings))
