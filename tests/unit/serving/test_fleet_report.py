"""``tenfold status``'s verdict on the fleet, from what the supervisor and each replica say."""

from __future__ import annotations

import http.server
import re
import threading
import time
from pathlib import Path

import pytest

from tenfold.config import build_settings
from tenfold.local import free_ports, process
from tenfold.serving import fleet
from tenfold.serving.fleet import SERVING, FleetReport, ReplicaReport, describe
from tenfold.serving.haproxy import HaproxyPaths, RuntimeApi, haproxy_argv, write_config


def _replica(pool: str, slot: int, *, alive: bool = True, state: str = SERVING) -> ReplicaReport:
    return ReplicaReport(pool=pool, slot=slot, version="v1", url=f"http://127.0.0.1:{9000 + slot}", pid=100 + slot,
                         state=state, lb_status="UP", alive=alive, log="replica.log")


def _report(*replicas: ReplicaReport) -> FleetReport:
    return FleetReport(running=True, supervisor_pid=1, haproxy_alive=True, haproxy_pid=2, url="http://127.0.0.1:8080",
                       metrics_url="http://127.0.0.1:8404/metrics", canary_percent=0,
                       versions={"stable": "v1", "canary": "v1"}, replicas=list(replicas), token_path="t", token="x",
                       log="fleet.log", minimums={"stable": 2, "canary": 0})


def test_a_stable_pool_with_no_replica_serving_is_not_healthy_while_the_canary_lives() -> None:
    """Both stable replicas died (dropped from the status, their restarts backing off) and the canary at 0 % lived
    on: status said "serving healthy" and exited 0 while every request got a 503."""
    bare = _report(_replica("canary", 0))
    assert not bare.healthy
    assert "stable  v1  0 serving (min 2)" in describe(bare)
    starting = _report(_replica("canary", 0), _replica("stable", 1, state="starting"))
    assert not starting.healthy  # starting is not serving
    one = _report(_replica("canary", 0), _replica("stable", 1))
    assert one.healthy and "stable  v1  1 serving (min 2)" in describe(one)  # degraded, but serving


def test_a_serving_replica_that_does_not_answer_is_not_healthy() -> None:
    assert not _report(_replica("stable", 0), _replica("stable", 1, alive=False)).healthy
    assert _report(_replica("stable", 0), _replica("stable", 1)).healthy


def test_a_pool_whose_replicas_serve_another_version_than_it_is_set_to_says_so() -> None:
    """After a rollout to a version that never loaded, status printed "stable v2  2 serving" while both replicas
    served v1: the pool's version is what it is set to serve, and each replica's own is shown now."""
    from dataclasses import replace

    report = replace(_report(_replica("stable", 0), _replica("stable", 1)), versions={"stable": "v2", "canary": "v1"})
    text = describe(report)
    assert "stable  v2  2 serving (min 2)  rolling: 0 of its replicas serve it, v1 still serving" in text, text
    assert all(line.rstrip().endswith("v1") for line in text.splitlines() if "replica-stable-" in line), text
    assert "rolling" not in describe(_report(_replica("stable", 0), _replica("stable", 1)))


def test_a_fleet_whose_supervisor_died_while_haproxy_serves_says_it_has_none_and_what_to_run() -> None:
    """The supervisor SIGKILLed, HAProxy and a replica serving on with nothing to replace them when they die: status
    said "running, not healthy ... (supervisor pid None ...)" and "haproxy up", with no next step (what is left was
    said only once HAProxy was down too)."""
    from dataclasses import replace

    left = ["haproxy (pid 201)", "replica-stable-1 (pid 202)"]
    report = replace(_report(), running=False, supervisor_pid=None, haproxy_alive=True, haproxy_pid=201, versions={},
                     minimums={}, leftovers=left)
    text = describe(report)
    first, second, *_ = text.splitlines()
    assert first.startswith("serving  NOT SUPERVISED") and "(no supervisor, log fleet.log)" in first, text
    assert "running" not in first and "pid None" not in text, text
    assert second.startswith("  no supervisor: haproxy (pid 201), replica-stable-1 (pid 202) of an earlier fleet "
                             "still run with no supervisor: `tenfold serve down` stops them"), text
    assert "then `tenfold serve up`" in second, text
    assert "  haproxy up (pid 201)" in text, text
    assert not report.healthy
    # HAProxy down as well: the one line it always was.
    gone = describe(replace(report, haproxy_alive=False, haproxy_pid=None))
    assert gone.startswith("serving  stopped, but haproxy (pid 201), replica-stable-1 (pid 202) of an earlier fleet "
                           "still run with no supervisor: `tenfold serve down` stops them"), gone


class _Healthy(http.server.BaseHTTPRequestHandler):
    """A replica's own health check: 200 to every GET."""

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


def test_a_supervisor_that_no_longer_writes_its_status_is_not_responding(tmp_path: Path) -> None:
    """A supervisor stopped by SIGSTOP (or hung) keeps its pid: `tenfold serve status` printed its last status as
    healthy, `serve up` found the fleet "already running" and `rollout` waited out n x 200 s on a status that never
    changed, while nothing replaced a replica that died. The real parts: a live process under the supervisor's pid
    file (a sleep that never writes a status), a real HAProxy, and a replica's health check that answers."""
    lb, metrics, replica_port = free_ports(3)
    settings = build_settings("local", {"TENFOLD_HOME": str(tmp_path / "home"), "TENFOLD_LOCAL__LB_PORT": str(lb),
                                        "TENFOLD_SERVING__FLEET__LB_METRICS_PORT": str(metrics)})
    rd = fleet.run_dir(settings)
    paths = write_config(settings, canary_percent=0)
    server = http.server.ThreadingHTTPServer((settings.local.bind_host, replica_port), _Healthy)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    launched: list[process.ProcessRecord] = []  # stopped whatever fails after them
    try:
        haproxy = process.start(fleet.HAPROXY, haproxy_argv(paths), run_dir=rd, port=lb)
        launched.append(haproxy)
        supervisor = process.start(fleet.SUPERVISOR, ["sleep", "60"], run_dir=rd, port=lb)
        launched.append(supervisor)
        process.wait_until(RuntimeApi(HaproxyPaths.of(settings).socket).alive, timeout=10, what="HAProxy",
                           record=haproxy)

        def status(age: float, *, wall_age: float | None = None) -> None:
            replica = fleet.ReplicaStatus(pool=fleet.STABLE, slot=1, version="v1", port=replica_port,
                                          pid=supervisor.pid, state=SERVING, lb_status="UP", in_flight=0, log="r.log")
            pools = {pool: fleet.PoolStatus(version="v1", min=1 if pool == fleet.STABLE else 0, max=2, desired=1,
                                            utilization=0.0, replicas=[replica] if pool == fleet.STABLE else [])
                     for pool in fleet.POOLS}
            st = fleet.FleetStatus(generation=1, updated_at=time.time() - (age if wall_age is None else wall_age),
                                   supervisor_pid=supervisor.pid, haproxy_pid=haproxy.pid, pools=pools,
                                   updated_monotonic=time.monotonic() - age)
            (rd / fleet.STATUS_FILE).write_text(st.to_json())

        status(0.0)  # written just now: the fleet is as it says
        fresh = fleet.report(settings)
        assert fresh.healthy, describe(fresh)
        status(0.0, wall_age=3600.0)  # written just now, and the wall clock stepped an hour forward since (NTP)
        assert fleet.report(settings).healthy, "a wall-clock step is no stale status"
        assert fleet.wait_for(settings, lambda st: st.ready, what="the fleet", timeout=5).supervisor_pid == supervisor.pid

        status(600.0)  # the supervisor stopped writing ten minutes ago, every replica still serving in what it wrote
        stale = fleet.report(settings)
        assert not stale.healthy, describe(stale)
        assert fresh.supervisor_error is None and stale.supervisor_error is not None
        for part in (f"the fleet supervisor (pid {supervisor.pid}) is not responding", supervisor.log,
                     "`tenfold serve down && tenfold serve up`"):
            assert part in stale.supervisor_error, stale.supervisor_error
        assert re.search(r"its last status is 60\d s old", stale.supervisor_error), stale.supervisor_error
        text = describe(stale)
        assert text.startswith("serving  running, not healthy") and stale.supervisor_error in text, text
        # `serve up` (already running), `rollout`, `scale` and the rest wait on it: they say so at once, not after
        # their timeout, and never take its old status for the one they wait for.
        started = time.monotonic()
        with pytest.raises(fleet.FleetError, match=r"is not responding: its last status is 60\d s old"):
            fleet.wait_for(settings, lambda st: st.ready, what="the fleet", timeout=30)
        assert time.monotonic() - started < 5
    finally:
        for record in reversed(launched):
            process.stop(record, timeout=5)
        server.shutdown()
        server.server_close()
