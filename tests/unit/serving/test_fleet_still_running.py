"""A process of the serving fleet that outlives SIGKILL (stuck in uninterruptible I/O: a hung mount) keeps its pid file.

Every stop of the fleet deleted the pid file whatever the stop found: the supervisor gave a stuck replica's slot, and
its pid file, to the next replica it started; `tenfold serve down` said "serving: stopped" and exited 0; and the next
`tenfold serve up` refused the port its own stuck HAProxy still held as another program's. Here no signal reaches the
stand-in process, so it really does outlive the stop (as in tests/unit/local/test_env_and_stack.py's `tenfold down`
test). The supervisor is real, with real replica processes (a stub module that sleeps) and the runtime API replaced as
in test_supervisor_backoff.py.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest
from supervisor_stubs import HealthyApi, stub_supervisor

from tenfold.config import build_settings, get_settings
from tenfold.local import process
from tenfold.local.process import LocalPlatformError
from tenfold.serving import fleet


class Stuck:
    """Makes the processes it is given outlive their stop: no signal of :func:`process.stop` reaches them, and each
    stop waits half a second before SIGKILL (the wait for SIGKILL to take is the real 5 s)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.pids: set[int] = set()
        real_signal, real_stop = process._signal, process.stop

        def all_but_the_stuck(pgid, procs, sig):  # type: ignore[no-untyped-def]
            # The stuck ones neither get the signal nor refuse it: they ignore it, as a process in the kernel does.
            return real_signal(None if pgid in self.pids else pgid, [p for p in procs if p.pid not in self.pids], sig)

        monkeypatch.setattr(process, "_signal", all_but_the_stuck)
        monkeypatch.setattr(process, "stop", lambda record, timeout=20.0, check=False: real_stop(
            record, timeout=min(timeout, 0.5), check=check))


def _tick_until(sup: Any, done: Any, seconds: float, what: str) -> None:
    until = time.monotonic() + seconds
    while not done():
        assert time.monotonic() < until, f"{what}:\n" + "\n".join(sup.lines)
        with contextlib.suppress(LocalPlatformError):  # as the supervisor's loop: a failed tick goes on
            sup.tick()
        time.sleep(0.05)


def _supervisor(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """A real Supervisor of a one-replica stable pool whose replicas are a stub that sleeps; what it says is in
    ``sup.lines``."""
    return stub_supervisor(tmp_path, monkeypatch, stable=1, module="sleeping_replica",
                           code="import time\ntime.sleep(300)\n")


@pytest.fixture
def supervisor(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """:func:`_supervisor`, its replica serving."""
    sup = _supervisor(tmp_path, monkeypatch)
    monkeypatch.setattr(sup, "_ensure_haproxy", lambda: True)
    _tick_until(sup, lambda: len(sup.pool_replicas("stable", fleet.SERVING)) == 1, 15, "the replica never served")
    records = [sup.replicas[0].record]
    sup.seen = records  # every replica the test made stuck, to stop for good whatever happens
    yield sup
    monkeypatch.undo()  # signals reach every process again
    with contextlib.suppress(Exception):
        sup.shutdown()
    for record in records:
        process.stop(record, timeout=5)


def _stuck_replica(sup: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    """The pool's replica, stopped (as a drain ends) while stuck: once the stop gave up on it, the supervisor forgot
    it and started another."""
    stuck = Stuck(monkeypatch)
    (replica,) = sup.replicas
    stuck.pids.add(replica.record.pid)
    sup._stop(replica, "drained")
    _tick_until(sup, lambda: replica not in sup.replicas, 30, "the stuck replica's stop never ended")
    return replica


def test_a_replica_that_outlived_sigkill_keeps_its_pid_file_and_its_slot_until_it_exits(
    supervisor: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    sup, rd = supervisor, supervisor.run_dir
    replica = _stuck_replica(sup, monkeypatch)
    name = fleet.replica_name("stable", replica.slot)
    assert process.is_running(replica.record)
    assert process.read_record(rd, name) == replica.record  # kept, not given to the next replica of the slot
    said = [line for line in sup.lines if "did not exit" in line]
    assert len(said) == 1 and f"{name}: pid {replica.record.pid} did not exit" in said[0], sup.lines
    assert str(process.pid_file(rd, name)) in said[0] and f"slot {replica.slot} stays taken" in said[0]
    # The pool is served again, by a replica in another slot.
    _tick_until(sup, lambda: len(sup.pool_replicas("stable", fleet.SERVING)) == 1, 15, "no replacement served")
    (replacement,) = sup.replicas
    sup.seen.append(replacement.record)
    assert replacement.slot != replica.slot
    assert process.read_record(rd, fleet.replica_name("stable", replacement.slot)) == replacement.record
    assert process.read_record(rd, name) == replica.record

    # Once it has exited (here: a SIGKILL that reaches it), its pid file goes and its slot is free again.
    os.kill(replica.record.pid, signal.SIGKILL)
    _tick_until(sup, lambda: not sup.stuck, 15, "the exited replica's slot was never freed")
    assert not process.pid_file(rd, name).exists()
    assert any(f"{name}: pid {replica.record.pid} has exited at last" in line for line in sup.lines), sup.lines
    assert sup._free_slot("stable") == replica.slot


def test_the_shutdown_keeps_the_pid_file_of_a_replica_that_outlived_sigkill_and_stops_the_rest(
    supervisor: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    sup, rd = supervisor, supervisor.run_dir
    replica = _stuck_replica(sup, monkeypatch)
    _tick_until(sup, lambda: len(sup.pool_replicas("stable", fleet.SERVING)) == 1, 15, "no replacement served")
    (replacement,) = sup.replicas
    sup.seen.append(replacement.record)
    sup.lines.clear()
    with pytest.raises(process.StillRunning) as raised:  # the supervisor's process ends with exit 1 naming it
        sup.shutdown()
    assert raised.value.pids == [replica.record.pid]
    name = fleet.replica_name("stable", replica.slot)
    assert process.is_running(replica.record) and process.read_record(rd, name) == replica.record
    said = [line for line in sup.lines if "did not exit" in line]
    assert len(said) == 1 and str(process.pid_file(rd, name)) in said[0], sup.lines
    assert "fleet stopped" in sup.lines[-1]  # it went on: the rest is stopped
    assert not process.is_running(replacement.record)
    assert not process.pid_file(rd, fleet.replica_name("stable", replacement.slot)).exists()


def test_a_haproxy_that_outlived_sigkill_stays_the_fleets_and_no_other_is_started_beside_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A HAProxy that never answered its runtime API (stuck reading its config on a hung mount) is stopped; one that
    outlived SIGKILL lost its pid file and the supervisor's record of it, and the next restart started another beside
    it. Now it keeps both (it is still the fleet's HAProxy, as a hung one is) until it has exited, and says so."""
    sup = _supervisor(tmp_path, monkeypatch)

    class SilentApi(HealthyApi):
        def alive(self) -> bool:
            return False

    sup.api = SilentApi()
    stuck = Stuck(monkeypatch)
    starts: list[process.ProcessRecord] = []
    real_start = process.start

    def start(name: str, argv: list[str], **kwargs: Any) -> process.ProcessRecord:
        record = real_start(name, ["sleep", "300"], **kwargs)  # the stand-in HAProxy, stuck
        stuck.pids.add(record.pid)
        starts.append(record)
        return record

    monkeypatch.setattr(process, "start", start)
    monkeypatch.setattr(fleet, "HAPROXY_START_S", 0.5)
    rd = sup.run_dir
    try:
        assert sup._ensure_haproxy() is False  # its start failed: backed off
        (record,) = starts
        assert process.is_running(record)
        assert sup.haproxy == record and process.read_record(rd, fleet.HAPROXY) == record
        said = [line for line in sup.lines if "did not exit" in line]
        assert len(said) == 1 and f"haproxy: pid {record.pid} did not exit" in said[0], sup.lines
        assert str(process.pid_file(rd, fleet.HAPROXY)) in said[0] and "no other HAProxy is started" in said[0]
        sup.haproxy_backoff = (1, 0.0)  # its back-off over: still none started beside it
        assert sup._ensure_haproxy() is True and len(starts) == 1

        # Silent for longer than a start may take: stopped again, and, still stuck, kept again.
        sup.haproxy_silent_since = time.monotonic() - 10
        sup.lines.clear()
        assert sup._ensure_haproxy() is True and len(starts) == 1
        assert any(f"haproxy: pid {record.pid} did not exit" in line for line in sup.lines), sup.lines
        assert sup.haproxy == record and process.read_record(rd, fleet.HAPROXY) == record
    finally:
        monkeypatch.undo()
        for record in starts:
            process.stop(record, timeout=5)


def test_serve_down_ends_with_one_line_naming_what_outlived_sigkill_and_up_refuses_to_start_beside_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A supervisor that died left HAProxy and a replica behind; the replica is stuck. `tenfold serve down` stops the
    rest, keeps the replica's pid file and ends with exit 1 and one line (it said "serving: stopped", exit 0); the next
    `tenfold serve up` refuses naming it (it dropped the pid file, then started beside it)."""
    from tenfold.cli import app
    from tenfold.outages import ending

    monkeypatch.setenv("TENFOLD_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("TENFOLD_DEBUG", raising=False)
    get_settings.cache_clear()  # the command reads its settings from this environment
    settings = get_settings()
    rd = fleet.run_dir(settings)
    started = {name: process.start(name, ["sleep", "300"], run_dir=rd, port=0, cwd=tmp_path)
               for name in (fleet.SUPERVISOR, fleet.HAPROXY, "replica-stable-1")}
    stuck = started["replica-stable-1"]
    Stuck(monkeypatch).pids.add(stuck.pid)
    try:
        monkeypatch.setattr("sys.argv", ["tenfold", "serve", "down"])
        with pytest.raises(SystemExit) as ended:
            app(["serve", "down"])
        out, err = capsys.readouterr()
        assert ended.value.code == 1, (out, err)
        assert "serving: stopped" not in out and "replica-stable-1: not stopped, a process of it outlived SIGKILL" in out
        assert err.startswith(f"error: `tenfold serve down`: replica-stable-1: pid {stuck.pid} did not exit"), err
        assert err.count("\n") == 1 and str(process.pid_file(rd, "replica-stable-1")) in err, err
        assert "run the command again" in err and "fault in the code" not in err
        # The rest is stopped, and its pid files gone; the stuck one's is kept.
        assert not process.is_running(started[fleet.SUPERVISOR]) and not process.is_running(started[fleet.HAPROXY])
        assert not process.pid_file(rd, fleet.SUPERVISOR).exists() and not process.pid_file(rd, fleet.HAPROXY).exists()
        assert process.is_running(stuck) and process.read_record(rd, "replica-stable-1") == stuck

        # The next `up` refuses before it starts anything, naming it: not a port "in use by another program".
        with pytest.raises(process.StillRunning) as refused:
            fleet.up(settings, "champion", resolve=lambda s, ref: pytest.fail("resolved a model beside a stuck replica"))
        assert refused.value.pids == [stuck.pid] and "\n" not in str(refused.value)
        line = ending(refused.value, "tenfold serve up", settings.local.home, debug_hint="with TENFOLD_DEBUG=1")
        assert line.startswith(f"error: `tenfold serve up`: replica-stable-1: pid {stuck.pid} did not exit"), line
        assert process.read_record(rd, "replica-stable-1") == stuck
        assert fleet.supervisor_record(settings) is None and sorted(p.name for p in rd.glob("*.pid")) == [
            "replica-stable-1.pid"]
    finally:
        monkeypatch.undo()
        get_settings.cache_clear()
        for record in started.values():
            process.stop(record, timeout=5)


def test_a_supervisor_that_outlived_sigkill_keeps_its_pid_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`tenfold serve down` dropped the pid file of a supervisor it could not stop: `tenfold serve status` said stopped
    while it lived on, and the next `up` started a second supervisor beside it."""
    settings = build_settings("local", {"TENFOLD_HOME": str(tmp_path / "home")})
    rd = fleet.run_dir(settings)
    supervisor = process.start(fleet.SUPERVISOR, ["sleep", "300"], run_dir=rd, port=0, cwd=tmp_path)
    Stuck(monkeypatch).pids.add(supervisor.pid)
    said: list[str] = []
    try:
        with pytest.raises(process.StillRunning, match=rf"^fleet: pid {supervisor.pid} did not exit") as refused:
            fleet.down(settings, say=said.append)
        assert refused.value.pids == [supervisor.pid] and str(process.pid_file(rd, fleet.SUPERVISOR)) in str(
            refused.value)
        assert process.read_record(rd, fleet.SUPERVISOR) == supervisor
        assert fleet.supervisor_record(settings) == supervisor  # what `serve status` and `serve up` read
    finally:
        monkeypatch.undo()
        process.stop(supervisor, timeout=5)


def test_serve_status_names_the_fleets_processes_that_still_run_with_no_supervisor(tmp_path: Path) -> None:
    """A replica kept by its pid file (it outlived SIGKILL, or its supervisor died) still runs with no supervisor:
    `tenfold serve status` said "serving  stopped (start it with `tenfold serve up`)", and that `up` refused beside it.
    Status names it, and says stopped plainly once it has exited."""
    settings = build_settings("local", {"TENFOLD_HOME": str(tmp_path / "home")})
    rd = fleet.run_dir(settings)
    left = process.start("replica-stable-1", ["sleep", "300"], run_dir=rd, port=0, cwd=tmp_path)
    try:
        rep = fleet.report(settings)
        assert rep.leftovers == [f"replica-stable-1 (pid {left.pid})"] and not rep.running and not rep.healthy
        first = fleet.describe(rep).splitlines()[0]
        assert first.startswith(f"serving  stopped, but replica-stable-1 (pid {left.pid}) of an earlier fleet still "
                                "runs with no supervisor: `tenfold serve down` stops them"), first
    finally:
        process.stop(left, timeout=5)
    assert process.read_record(rd, "replica-stable-1") is not None  # the pid file is there, its process gone
    rep = fleet.report(settings)
    assert rep.leftovers == [] and fleet.describe(rep).startswith("serving  stopped                 (start it with")


def test_serve_down_does_not_stop_a_replica_again_that_just_outlived_sigkill(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The supervisor's stop takes its replicas too: one that outlived that SIGKILL was then stopped again as a
    leftover (SIGTERM, the stop timeout, SIGKILL, 5 s more), for nothing. Here the replica is a child of a stand-in
    supervisor, and no signal reaches it: `down` sends it one SIGKILL, names it and keeps its pid file."""
    import psutil

    settings = build_settings("local", {"TENFOLD_HOME": str(tmp_path / "home")})
    rd = fleet.run_dir(settings)
    child_file = tmp_path / "child"
    supervisor = process.start(fleet.SUPERVISOR, ["bash", "-c", f"sleep 300 & echo $! > {child_file}; wait"],
                               run_dir=rd, port=0, cwd=tmp_path)
    process.wait_until(lambda: child_file.exists() and child_file.read_text().strip() != "", timeout=10,
                       what="the stand-in supervisor's replica")
    child = psutil.Process(int(child_file.read_text()))
    replica = process.record_of(child, "replica-stable-1", run_dir=str(rd.resolve()))
    process.pid_file(rd, "replica-stable-1").write_text(replica.to_json())
    assert process.read_record(rd, "replica-stable-1") == replica
    kills: list[signal.Signals] = []
    real_signal, real_stop = process._signal, process.stop

    def sparing_the_replica(pgid, procs, sig):  # type: ignore[no-untyped-def]
        kills.extend(sig for p in procs if p.pid == child.pid)
        return real_signal(None, [p for p in procs if p.pid != child.pid], sig)

    monkeypatch.setattr(process, "_signal", sparing_the_replica)
    monkeypatch.setattr(process, "stop", lambda record, timeout=20.0, check=False: real_stop(
        record, timeout=min(timeout, 0.5), check=check))
    said: list[str] = []
    try:
        with pytest.raises(process.StillRunning) as refused:
            fleet.down(settings, say=said.append)
        assert refused.value.pids == [child.pid], refused.value
        assert kills.count(signal.SIGKILL) == 1, kills
        assert "replica-stable-1: not stopped, a process of it outlived SIGKILL" in said, said
        assert process.read_record(rd, "replica-stable-1") == replica and not process.is_running(supervisor)
    finally:
        monkeypatch.undo()
        child.kill()
        process.stop(supervisor, timeout=5)
