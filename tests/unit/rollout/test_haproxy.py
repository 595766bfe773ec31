"""The fleet's HAProxy configuration and :class:`HaproxyRouter`, against a real HAProxy process (no replicas)."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from typing import Any

import pytest

from tenfold.config import Settings
from tenfold.local import free_port, free_ports, process
from tenfold.rollout import TrafficRouter
from tenfold.rollout.haproxy import HaproxyRouter
from tenfold.rollout.split import BUCKETS
from tenfold.serving.haproxy import (
    HaproxyError,
    HaproxyPaths,
    RuntimeApi,
    haproxy_argv,
    haproxy_binary,
    read_split_map,
    render_config,
    slot_count,
    write_config,
)


@pytest.fixture
def lb_settings(make_settings: Any) -> Settings:
    base = make_settings()
    lb, replicas, metrics = free_ports(3)
    local = base.local.model_copy(update={"lb_port": lb, "replica_base_port": replicas})
    fleet = base.serving.fleet.model_copy(update={"lb_metrics_port": metrics, "canary_percent": 5,
                                                  "health_interval_ms": 300, "health_fall": 3, "health_rise": 4})
    server = base.serving.server.model_copy(update={"user_key_header": "X-Cohort-Key", "ready_path": "/ready-now"})
    return base.model_copy(update={"local": local, "serving": base.serving.model_copy(update={"fleet": fleet, "server": server})})


@pytest.fixture
def haproxy(lb_settings: Settings) -> Iterator[HaproxyPaths]:
    paths = write_config(lb_settings)
    record = process.start("haproxy", haproxy_argv(paths), run_dir=paths.run_dir, port=lb_settings.local.lb_port,
                           tie_to_this_process=True)
    try:
        process.wait_until(RuntimeApi(paths.socket).alive, timeout=10, what="haproxy", record=record)
        yield paths
    finally:
        process.stop(record)


def test_config_comes_from_settings(lb_settings: Settings) -> None:
    text = render_config(lb_settings)
    local, fleet = lb_settings.local, lb_settings.serving.fleet
    assert f"bind 127.0.0.1:{local.lb_port}\n" in text and f"bind 127.0.0.1:{fleet.lb_metrics_port}\n" in text
    assert re.findall(r"^\s*bind (\S+)", text, re.M) == [f"127.0.0.1:{local.lb_port}", f"127.0.0.1:{fleet.lb_metrics_port}"]
    # The bucket as tenfold.rollout.split computes it, on the header the settings name.
    assert f"req.fhdr(X-Cohort-Key),xxh32,mod({BUCKETS})" in text
    assert text.count("option httpchk GET /ready-now") == 2
    assert text.count("default-server inter 300ms fall 3 rise 4") == 2
    assert f"server-template s 1-{slot_count(lb_settings, 'stable')} 127.0.0.1:1 disabled check" in text
    assert f"server-template s 1-{fleet.canary_max + 2} " in text
    assert "option redispatch 1" in text and f"retries {fleet.lb_retries}" in text
    assert f"stats socket '{HaproxyPaths.of(lb_settings).socket}' mode 600 level admin" in text
    assert "prometheus-exporter" in text


@pytest.mark.parametrize("path", ["/stats", "/metrics", "/stats;csv"])
def test_the_stats_page_and_the_exporter_ask_for_the_login(lb_settings: Settings, haproxy: HaproxyPaths, path: str) -> None:
    """HAProxy's stats page is a UI and its exporter an API: user ``tenfold`` with the serving token, nothing less."""
    import base64
    import stat
    import urllib.error
    import urllib.request

    from tenfold.serving.auth import read_token
    from tenfold.serving.haproxy import STATS_USER

    url = f"http://127.0.0.1:{lb_settings.serving.fleet.lb_metrics_port}{path}"

    def get(user: str | None, password: str = "") -> int:
        request = urllib.request.Request(url)
        if user is not None:
            login = base64.b64encode(f"{user}:{password}".encode()).decode()
            request.add_header("Authorization", f"Basic {login}")
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                return int(response.status)
        except urllib.error.HTTPError as exc:
            return exc.code

    token = read_token(lb_settings)
    assert get(None) == 401
    assert get(STATS_USER, token + "x") == 401
    assert get("admin", token) == 401
    assert get(STATS_USER, token) == 200
    # the configuration holds the token: this user's alone
    assert stat.S_IMODE(haproxy.config.stat().st_mode) == 0o600


def test_write_config_validates_with_haproxy_and_seeds_the_split(lb_settings: Settings) -> None:
    paths = write_config(lb_settings)
    assert paths.config.read_text() == render_config(lb_settings)
    assert read_split_map(paths.split_map) == 5
    # Rewriting the config keeps a split the rollout set, unless asked to reset it.
    paths.split_map.write_text("canary_percent 40\n")
    write_config(lb_settings)
    assert read_split_map(paths.split_map) == 40
    write_config(lb_settings, canary_percent=0)
    assert read_split_map(paths.split_map) == 0


def test_a_socket_path_too_long_is_a_clear_error(make_settings: Any, tmp_path: Any) -> None:
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    settings = make_settings(local={"home": deep})
    with pytest.raises(HaproxyError, match="shorter TENFOLD_HOME"):
        render_config(settings)


def _home_for_socket(tmp_path: Any, length: int, fill: str = "d") -> Any:
    """A home under ``tmp_path`` whose runtime API socket path (<home>/run/haproxy.sock) is ``length`` characters."""
    pad = length - len(str(tmp_path / "h" / "run" / "haproxy.sock"))
    assert pad >= 1, tmp_path
    return tmp_path / ("h" + fill * pad)


@pytest.mark.parametrize(("length", "fill"), [(100, "d"), (96, "d"), (95, "é")], ids=["100-chars", "96-chars", "95-chars-multibyte"])
def test_a_socket_path_too_long_for_haproxys_temporary_name_is_a_clear_error(
        make_settings: Any, tmp_path: Any, length: int, fill: str) -> None:
    """HAProxy binds the socket as "<path>.<pid>.tmp", which must fit sun_path (108 bytes) with pids of up to 7
    digits: 95 bytes. Checked as 100 characters, a path of 96 to 100 characters (or fewer characters, multibyte)
    passed, and HAProxy exited at start with a log tail instead of this one line."""
    home = _home_for_socket(tmp_path, length, fill)
    socket_path = HaproxyPaths(home / "run").socket
    assert len(str(socket_path)) == length and len(os.fsencode(socket_path)) > 95
    settings = make_settings(local={"home": home})
    with pytest.raises(HaproxyError, match="shorter TENFOLD_HOME"):
        render_config(settings)


def test_a_socket_path_of_95_bytes_is_taken(make_settings: Any, tmp_path: Any) -> None:
    home = _home_for_socket(tmp_path, 95)
    settings = make_settings(local={"home": home})
    assert f"stats socket '{home / 'run' / 'haproxy.sock'}'" in render_config(settings)


def test_router_reads_the_split_back_from_haproxy(lb_settings: Settings, haproxy: HaproxyPaths) -> None:
    router: TrafficRouter = HaproxyRouter.from_settings(lb_settings)
    assert router.canary_percent() == 5
    router.set_canary_percent(25)
    assert router.canary_percent() == 25
    assert read_split_map(haproxy.split_map) == 25  # a restarted HAProxy comes back with it
    # Changed behind the router's back, through the runtime API: the router reports HAProxy's value.
    RuntimeApi(haproxy.socket).set_map(haproxy.split_map, "canary_percent", "60")
    assert router.canary_percent() == 60


@pytest.mark.parametrize("bad", [-1, 101, 2.5, "10", True, None])
def test_router_refuses_a_percent_outside_0_to_100(lb_settings: Settings, haproxy: HaproxyPaths, bad: Any) -> None:
    router = HaproxyRouter.from_settings(lb_settings)
    with pytest.raises(ValueError, match="canary percent"):
        router.set_canary_percent(bad)
    assert router.canary_percent() == 5


def test_slots_start_in_maintenance_and_checks_gate_entry(lb_settings: Settings, haproxy: HaproxyPaths) -> None:
    api = RuntimeApi(haproxy.socket)
    servers = api.servers("stable")
    assert sorted(servers) == sorted(f"s{i}" for i in range(1, slot_count(lb_settings, "stable") + 1))
    assert {s.status for s in servers.values()} == {"MAINT"}
    # Pointed at a port where nothing listens: HAProxy's own check keeps it out of rotation.
    api.point("stable", "s1", "127.0.0.1", free_port())
    s1 = api.servers("stable")["s1"]
    assert s1.status.startswith("DOWN") and not s1.checked_up and not s1.up


def test_runtime_api_errors_are_clear(lb_settings: Settings, haproxy: HaproxyPaths, tmp_path: Any) -> None:
    with pytest.raises(HaproxyError, match="refused"):
        RuntimeApi(haproxy.socket).command("set server stable/nope state ready")
    with pytest.raises(HaproxyError, match="did not answer"):
        RuntimeApi(tmp_path / "absent.sock").execute("show info")
    router = HaproxyRouter.from_settings(lb_settings.model_copy(update={"local": lb_settings.local.model_copy(update={"home": tmp_path})}))
    with pytest.raises(HaproxyError, match="is the fleet up"):
        router.canary_percent()


def test_the_observer_counts_a_request_in_the_window_it_ended_in(tmp_path: Any) -> None:
    """HAProxy logs a request when it ends, stamped with when it arrived: a slow request or a timeout (504) still
    running when a window is read must count in the next window, not fall between the two."""
    import datetime as dt

    from tenfold.rollout.haproxy import HaproxyObserver
    from tenfold.serving.haproxy import REQUEST_LOG_MARKER

    t0 = dt.datetime(2026, 12, 3, 12, 0, tzinfo=dt.UTC)
    at = t0.timestamp()
    log = tmp_path / "haproxy.log"
    log.write_text("".join(f"{REQUEST_LOG_MARKER} {a:.3f} {arm} {status} {ms} {total} /v1/predict\n"
                           for a, arm, status, ms, total in [
        (at + 1, "canary", 200, 12, 12),           # window 1
        (at + 25, "canary", 504, 30000, 30000),    # arrived in window 1, timed out in window 2
        (at + 29.9, "stable", 200, 500, 500),      # arrived in window 1, answered in window 2
        (at + 31, "stable", 200, 8, 8),            # window 2
        # kept alive: its accept date is the previous request's end, and it waited idle 5 s before it came
        (at + 27, "stable", 200, 10, 5010),
    ]))
    observer = HaproxyObserver(log)
    w1 = observer.traffic(t0, t0 + dt.timedelta(seconds=30))
    w2 = observer.traffic(t0 + dt.timedelta(seconds=30), t0 + dt.timedelta(seconds=60))
    assert (w1["canary"].requests, w1["canary"].errors, w1["stable"].requests) == (1, 0, 0)
    assert (w2["canary"].requests, w2["canary"].errors, w2["stable"].requests) == (1, 1, 3)
    assert w2["canary"].latencies_ms == (30000.0,)


def test_a_split_set_while_haproxy_is_down_holds_when_it_comes_back(tmp_path: Any) -> None:
    """A rollback sets the canary to 0 % while HAProxy restarts: the runtime API refuses, but the map file HAProxy
    loads at start already says 0, so the rejected canary does not get its share back."""
    from tenfold.rollout.haproxy import HaproxyRouter
    from tenfold.serving.haproxy import HaproxyError, read_split_map, write_split_map

    run = tmp_path / "run"
    run.mkdir()
    write_split_map(run / "split.map", 50)
    router = HaproxyRouter(run / "haproxy.sock", run / "split.map")
    with pytest.raises(HaproxyError):
        router.set_canary_percent(0)
    assert read_split_map(run / "split.map") == 0
    with pytest.raises(HaproxyError, match="is the fleet up"):  # no fleet ever ran: nothing written
        HaproxyRouter(tmp_path / "none" / "haproxy.sock", tmp_path / "none" / "split.map").set_canary_percent(5)
    assert not (tmp_path / "none").exists()


def test_a_higher_split_haproxy_did_not_take_is_not_left_in_the_file(tmp_path: Any) -> None:
    """Raising the canary's share while HAProxy does not answer fails, and the map file keeps the share it had: it
    kept the new, higher one, which the next restart of HAProxy sent to the canary unannounced. A lower one set while
    HAProxy is down stays in the file (test above), so a rollback holds once it is back."""
    from tenfold.serving.haproxy import write_split_map

    run = tmp_path / "run"
    run.mkdir()
    split = run / "split.map"
    write_split_map(split, 0)
    router = HaproxyRouter(run / "haproxy.sock", split)  # no HAProxy: nothing listens there
    with pytest.raises(HaproxyError, match="is the fleet up"):
        router.set_canary_percent(50)
    assert read_split_map(split) == 0
    split.unlink()  # none in the file (no fleet set one yet): none after a failed raise either
    with pytest.raises(HaproxyError, match="is the fleet up"):
        router.set_canary_percent(50)
    assert not split.exists()
    write_split_map(split, 50)  # lowering keeps today's behaviour: the file holds the lower share
    with pytest.raises(HaproxyError, match="is the fleet up"):
        router.set_canary_percent(10)
    assert read_split_map(split) == 10
    split.unlink()  # a rollback to 0 with none in the file: the 0 stays (removed, a restart took no share from it)
    with pytest.raises(HaproxyError, match="is the fleet up"):
        router.set_canary_percent(0)
    assert read_split_map(split) == 0


@pytest.mark.parametrize("held", ["", "canary_percent lots\n"], ids=["empty", "garbage"])
def test_a_failed_raise_over_a_map_with_no_share_leaves_a_map_haproxy_starts_on(lb_settings: Settings, held: str) -> None:
    """The map file was there with no valid share in it; raising the share while HAProxy did not answer put the file
    "back" by removing it, and HAProxy refuses to start without the map its configuration names (the fleet's
    supervisor restarts it on the configuration as it is): every restart failed."""
    import subprocess

    paths = HaproxyPaths.of(lb_settings)
    paths.run_dir.mkdir(parents=True, exist_ok=True)
    paths.split_map.write_text(held)
    router = HaproxyRouter(paths.socket, paths.split_map)  # no HAProxy: nothing listens there
    with pytest.raises(HaproxyError, match="is the fleet up"):
        router.set_canary_percent(5)
    assert paths.split_map.exists(), "the map file HAProxy's configuration names was removed"
    assert read_split_map(paths.split_map) is None  # no share, as before the call: HAProxy starts at 0 %
    try:
        binary = haproxy_binary()
    except HaproxyError:
        pytest.skip("haproxy is not installed: the map was checked, HAProxy's own check of the configuration was not")
    config = paths.run_dir / "check.cfg"
    config.write_text(render_config(lb_settings))
    checked = subprocess.run([binary, "-c", "-f", str(config)], capture_output=True, text=True, check=False)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_the_observer_reads_near_the_window_of_a_long_log_and_counts_what_a_whole_read_counts(
        tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The log holds every request of the fleet's life (hours of traffic, GBs at production rates); each check of a
    rollout read it whole. It now bisects to the window (the lines are in order of end time, up to the threads'
    interleaving) and reads on only to a little past it: the same counts, a small part of the lines."""
    import datetime as dt
    import random

    from tenfold.rollout import haproxy as observer_mod
    from tenfold.rollout.haproxy import HaproxyObserver
    from tenfold.serving.haproxy import REQUEST_LOG_MARKER

    rng = random.Random(7)
    t0 = dt.datetime(2026, 12, 3, 0, 0, tzinfo=dt.UTC).timestamp()
    lines, ends = [], []
    for i in range(60_000):  # 5 requests a second for 3 h 20 min, some slow, with HAProxy's own lines between
        at = t0 + i / 5 + rng.uniform(0, 0.2)
        total = rng.choice([5, 12, 40, 900, 30_000]) if i % 97 else 5_010
        lines.append((at + total / 1000,
                      f"{REQUEST_LOG_MARKER} {at:.3f} {rng.choice(['stable', 'canary'])} "
                      f"{rng.choice([200, 200, 200, 503])} {min(total, 900)} {total} "
                      f"{rng.choice(['/v1/predict', '/v1/feedback'])}\n"))
        if i % 5000 == 0:
            lines.append((at, "[WARNING] (1) : Server stable/replica-1 is DOWN.\n"))
    jitter = {id(e): rng.uniform(0, 2.0) for e in lines}
    lines.sort(key=lambda e: e[0] + jitter[id(e)])  # written as each request ends, threads interleaving by up to 2 s
    log = tmp_path / "haproxy.log"
    log.write_text("".join(text for _, text in lines))
    ends = [e for e, text in lines if text.startswith(REQUEST_LOG_MARKER)]

    parsed = 0
    entry = observer_mod._entry

    def counted(line: bytes) -> Any:
        nonlocal parsed
        parsed += 1
        return entry(line)

    monkeypatch.setattr(observer_mod, "_entry", counted)
    observer = HaproxyObserver(log)
    for start in (t0 - 100, t0 + 30, t0 + 5_000.5, t0 + 11_990, t0 + 12_100):
        since, until = dt.datetime.fromtimestamp(start, dt.UTC), dt.datetime.fromtimestamp(start + 30, dt.UTC)
        parsed = 0
        got = observer.traffic(since, until)
        assert parsed < 3_000, f"read {parsed} of {len(lines)} lines for a 30 s window"
        whole = {"stable": 0, "canary": 0}
        for e, text in lines:
            parts = text.split()
            if text.startswith(REQUEST_LOG_MARKER) and parts[-1] == "/v1/predict" and start <= e < start + 30:
                whole[parts[2]] += 1
        assert {arm: got[arm].requests for arm in whole} == whole, (start - t0, whole)
    assert sum(1 for e in ends if t0 + 5_000.5 <= e < t0 + 5_030.5) > 100  # the windows held traffic to count


def test_the_observer_reads_a_window_across_the_rotation_of_the_request_log_even_one_between_its_two_opens(
        tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The request log starts a new file past its size (tenfold.serving.requestlog): a window counts the lines of
    the older file and of the log, and lines that move to the older file while the observer opens the two are
    counted once, not lost."""
    import builtins
    import datetime as dt
    import os

    from tenfold.rollout import haproxy as observer_mod
    from tenfold.rollout.haproxy import HaproxyObserver
    from tenfold.serving.haproxy import REQUEST_LOG_MARKER
    from tenfold.serving.requestlog import rotated

    t0 = dt.datetime(2026, 12, 3, 12, 0, tzinfo=dt.UTC)
    log = tmp_path / "requests.log"

    def lines(seconds: range, arm: str) -> str:
        return "".join(f"{REQUEST_LOG_MARKER} {t0.timestamp() + s:.3f} {arm} 200 5 5 {s} /v1/predict\n" for s in seconds)

    rotated(log).write_text(lines(range(0, 20), "stable"))
    log.write_text(lines(range(20, 50), "canary"))
    window = (t0 + dt.timedelta(seconds=10), t0 + dt.timedelta(seconds=60))
    got = HaproxyObserver(log).traffic(*window)
    assert (got["stable"].requests, got["canary"].requests) == (10, 30)

    real_open, rotations = builtins.open, []

    def open_then_rotate(path: Any, *args: Any, **kwargs: Any) -> Any:
        f = real_open(path, *args, **kwargs)
        if str(path) == str(log) and not rotations:  # the log rotates right after the observer opened it
            os.replace(log, rotated(log))
            log.write_text(lines(range(50, 55), "stable"))
            rotations.append(1)
        return f

    monkeypatch.setattr(observer_mod, "open", open_then_rotate, raising=False)
    got = HaproxyObserver(log).traffic(*window)
    assert rotations and (got["stable"].requests, got["canary"].requests) == (5, 30)


def test_a_home_with_a_space_runs_haproxy_and_its_split_changes_at_run_time(lb_settings: Settings) -> None:
    """A checkout under "My Projects": HAProxy refused the configuration (the socket and map paths unquoted), and the
    refusal said nothing (its check ran with -q); the runtime API read the map's path as two arguments."""
    import shutil
    import tempfile
    from pathlib import Path

    # Under the system's temporary folder, not pytest's deeper tmp_path: the socket path must leave room for
    # HAProxy's temporary name for it (95 bytes in all).
    top = Path(tempfile.mkdtemp(prefix="My Projects "))
    home = top / "home"
    settings = lb_settings.model_copy(update={"local": lb_settings.local.model_copy(update={"home": home})})
    try:
        paths = write_config(settings)
        assert " " in str(paths.socket)
        record = process.start("haproxy", haproxy_argv(paths), run_dir=paths.run_dir, port=settings.local.lb_port,
                               tie_to_this_process=True)
        try:
            process.wait_until(RuntimeApi(paths.socket).alive, timeout=10, what="haproxy", record=record)
            router = HaproxyRouter(paths.socket, paths.split_map)
            assert router.canary_percent() == 5
            router.set_canary_percent(25)
            assert router.canary_percent() == 25 and read_split_map(paths.split_map) == 25
        finally:
            process.stop(record)
    finally:
        shutil.rmtree(top, ignore_errors=True)


def test_a_configuration_haproxy_refuses_says_why(lb_settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    """The check ran with -q, which kept HAProxy's reason out of the refusal: it named the file and nothing else."""
    from tenfold.serving import haproxy as module

    rendered = module.render_config
    monkeypatch.setattr(module, "render_config", lambda settings: rendered(settings) + "    frobnicate yes\n")
    with pytest.raises(HaproxyError, match=r"(?s)HAProxy refused the generated configuration .*frobnicate"):
        write_config(lb_settings)


def test_two_split_changes_at_once_leave_haproxy_and_the_map_file_agreeing(tmp_path: Any) -> None:
    """`tenfold serve split 0` while a rollout step sets 25: the operator's runtime call, slower, landed after the
    step's whole call. Both succeeded; HAProxy served 0 % and the map file said 25 %, which HAProxy's next restart
    brought back to the canary."""
    import threading

    live = {"value": "5"}
    operator_sending, step_done = threading.Event(), threading.Event()

    class Api:
        def set_map(self, map_file: Any, key: str, value: str) -> None:
            if value == "0":
                operator_sending.set()
                step_done.wait(1.0)  # the operator's `set map` is slower than the step's whole call
            live["value"] = value

        def get_map(self, map_file: Any, key: str) -> str:
            return live["value"]

    (tmp_path / "run").mkdir()

    def router() -> HaproxyRouter:
        r = HaproxyRouter(tmp_path / "run" / "haproxy.sock", tmp_path / "run" / "split.map")
        r.api = Api()  # type: ignore[assignment]
        return r

    operator = threading.Thread(target=lambda: router().set_canary_percent(0))
    operator.start()

    assert operator_sending.wait(5)
    step = threading.Thread(target=lambda: (router().set_canary_percent(25), step_done.set()))
    step.start()
    operator.join(10)
    step.join(10)
    assert read_split_map(tmp_path / "run" / "split.map") == int(live["value"])


@pytest.fixture
def haproxy_on_a_small_disk(lb_settings: Settings, small_disk: Any) -> Iterator[tuple[Settings, HaproxyPaths, Any]]:
    """A real HAProxy whose run directory (its split map among the files) is on a 256 KiB tmpfs, the canary at 50 %."""
    settings = lb_settings.model_copy(update={"local": lb_settings.local.model_copy(update={"home": small_disk.path / "h"})})
    paths = write_config(settings, canary_percent=50)
    record = process.start("haproxy", haproxy_argv(paths), run_dir=paths.run_dir, port=settings.local.lb_port,
                           tie_to_this_process=True)
    try:
        process.wait_until(RuntimeApi(paths.socket).alive, timeout=10, what="haproxy", record=record)
        yield settings, paths, small_disk
    finally:
        process.stop(record)


def test_a_full_disk_still_takes_the_canarys_share_away_and_says_the_file_is_behind(
        haproxy_on_a_small_disk: tuple[Settings, HaproxyPaths, Any]) -> None:
    """A full disk failed the map file's write before HAProxy was told: every rollback (a failing step, conclude,
    `tenfold rollout abort`) raised ENOSPC and the failing canary kept its share of users. A lower share now reaches
    HAProxy, and the error says the file (what a restart loads) still holds the old one; a higher share is refused
    with nothing changed."""
    settings, paths, disk = haproxy_on_a_small_disk
    router = HaproxyRouter.from_settings(settings)
    router.set_canary_percent(30)  # the lock file exists, as after any earlier split
    disk.fill()
    with pytest.raises(HaproxyError) as raised:
        router.set_canary_percent(0)
    message = str(raised.value)
    assert "is 0 in HAProxy now" in message and "a restart of HAProxy would bring back the 30 % of the file" in message
    assert f"free disk space under {paths.run_dir}" in message and getattr(raised.value, "applied", None) == 0
    assert router.canary_percent() == 0 and RuntimeApi(paths.socket).get_map(paths.split_map, "canary_percent") == "0"
    assert read_split_map(paths.split_map) == 30  # nothing half-written: the old file whole
    with pytest.raises(HaproxyError, match=r"stays 0 \(not raised to 60\); free disk space under "):
        router.set_canary_percent(60)
    assert router.canary_percent() == 0 and read_split_map(paths.split_map) == 30
    # Once there is space, the same call saves it.
    disk.free()
    router.set_canary_percent(0)
    assert router.canary_percent() == 0 and read_split_map(paths.split_map) == 0


def test_an_abort_on_a_full_disk_says_the_canary_gets_nothing_and_the_disk_is_the_cause(
        haproxy_on_a_small_disk: tuple[Settings, HaproxyPaths, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """`tenfold rollout abort` on a full disk said "run again once the serving fleet answers" (the fleet answered)
    and left the canary its share."""
    from typer.testing import CliRunner

    from tenfold.cli import app
    from tenfold.rollout import adapters, record
    from tenfold.rollout import cli as rollout_cli

    from .test_status_cli import Registry

    settings, paths, disk = haproxy_on_a_small_disk
    monkeypatch.setattr(rollout_cli, "registry_of", lambda s: Registry())
    monkeypatch.setattr(adapters, "router", lambda s: HaproxyRouter.from_settings(settings))
    monkeypatch.setattr(record, "record_abort", lambda reg, rollout, by: (True, "aborted"))
    HaproxyRouter.from_settings(settings).set_canary_percent(50)
    disk.fill()
    out = CliRunner().invoke(app, ["rollout", "abort"])
    assert out.exit_code == 1, out.output
    assert "the abort is recorded and the canary gets no traffic now" in out.output, out.output
    assert f"free disk space under {paths.run_dir}" in out.output and "answers" not in out.output, out.output
    assert HaproxyRouter.from_settings(settings).canary_percent() == 0
