"""The real ``tenfold up`` / ``status`` / ``down`` on a temporary home and free ports.

Airflow's components take a minute or two to start on two busy cores, so the stack is brought up once
for the module and the tests run in order against it (the platform's listeners while a Spark and a
torchrun job run, Airflow's refusals, the generated secrets, a killed component restarted by ``up``);
the last one takes it down.
"""

from __future__ import annotations

import ipaddress
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from tenfold.config import Settings
from tenfold.local import free_ports, port_in_use, settings_env
from tenfold.local import local_settings as make_settings
from tenfold.local.process import ProcessRecord, read_record
from tenfold.local.services import AIRFLOW_COMPONENTS
from tenfold.local.stack import run_dir

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SERVICES = ("gcs", "pubsub", "airflow")
COMPONENTS = ("gcs", "pubsub", *AIRFLOW_COMPONENTS)
TENFOLD = str(Path(sys.prefix) / "bin" / "tenfold")


@dataclass
class Stack:
    settings: Settings
    env: dict[str, str]
    up: subprocess.CompletedProcess[str]


def _env_for(settings: Settings) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    env.update(settings_env(settings))
    return env


def _settings(home: Path, **ports: int) -> Settings:
    names = ("gcs_port", "pubsub_port", "airflow_port", "airflow_log_port", "airflow_trigger_log_port")
    fields = dict(zip(names, free_ports(len(names)), strict=True))
    fields.update(ports)
    return make_settings(home, **fields)


def _tenfold(env: dict[str, str], *args: str, timeout: float = 420) -> subprocess.CompletedProcess[str]:
    return subprocess.run([TENFOLD, *args], env=env, capture_output=True, text=True, timeout=timeout, check=False)


def _get(url: str, data: bytes | None = None, headers: dict[str, str] | None = None) -> tuple[int, object]:
    req = urllib.request.Request(url, data=data, headers=headers or {})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return resp.status, json.loads(resp.read() or b"null")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    settings = _settings(tmp_path_factory.mktemp("platform-home"))
    env = _env_for(settings)
    try:
        # Inside the try: an `up` past its time limit is SIGKILLed, which skips its own rollback, and what it had
        # started (each component in a session of its own) would outlive the tests without this `down`.
        yield Stack(settings, env, _tenfold(env, "up"))
    finally:
        _tenfold(env, "down", timeout=120)  # safety net if a test failed before test_down


def test_busy_port_is_a_clear_error_and_leaves_nothing_running(tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        busy = sock.getsockname()[1]
        settings = _settings(tmp_path / "home", airflow_port=busy)
        try:
            result = _tenfold(_env_for(settings), "up", timeout=120)
        finally:  # nothing may outlive the test, whatever a regression in `up` left running
            left = {n: r for n in (*COMPONENTS, "airflow") if (r := read_record(run_dir(settings), n)) is not None}
            if left:
                _tenfold(_env_for(settings), "down", timeout=120)
    assert result.returncode == 1
    assert f"127.0.0.1:{busy} (airflow) is already in use" in result.stderr
    assert "TENFOLD_LOCAL__AIRFLOW_PORT" in result.stderr
    assert left == {}, f"a refused `up` left {sorted(left)} running"
    assert not port_in_use("127.0.0.1", settings.local.gcs_port)
    assert not port_in_use("127.0.0.1", settings.local.pubsub_port)


def test_up_brings_every_service_up_healthy(stack):
    assert stack.up.returncode == 0, stack.up.stderr[-3000:] + stack.up.stdout[-3000:]
    s = stack.settings
    status, body = _get(f"{s.storage.emulator_host}/storage/v1/b?project={s.project_id}")
    assert status == 200 and isinstance(body, dict)
    status, body = _get(f"http://{s.messaging.emulator_host}/v1/projects/{s.project_id}/topics")
    assert status == 200 and isinstance(body, dict)
    status, health = _get(f"http://127.0.0.1:{s.local.airflow_port}/api/v2/monitor/health")
    assert isinstance(health, dict)
    for part in ("metadatabase", "scheduler", "dag_processor", "triggerer"):
        assert health[part]["status"] == "healthy", health
    for name in COMPONENTS:  # each component is a process of its own, with its pid file and log
        record = read_record(run_dir(s), name)
        assert record is not None and psutil.pid_exists(record.pid), name
        assert Path(record.log).is_file()
    assert read_record(run_dir(s), "airflow") is None  # no `airflow standalone`
    assert "standalone" not in " ".join(" ".join(psutil.Process(r.pid).cmdline()) for r in _records(s).values())


def test_every_service_listens_on_loopback_only(stack):
    s = stack.settings
    external = [
        a.address
        for addrs in psutil.net_if_addrs().values()
        for a in addrs
        if a.family == socket.AF_INET and not a.address.startswith("127.")
    ]
    if not external:
        pytest.skip("this machine has no non-loopback IPv4 address to probe from")
    for port in (s.local.gcs_port, s.local.pubsub_port, s.local.airflow_port, s.local.airflow_log_port,
                 s.local.airflow_trigger_log_port):
        assert port_in_use("127.0.0.1", port)
        with socket.socket() as sock:
            sock.settimeout(2)
            assert sock.connect_ex((external[0], port)) != 0, f"port {port} answers on {external[0]}"


@dataclass(frozen=True)
class Listener:
    pid: int
    cmd: str
    proto: str
    address: str
    port: int

    @property
    def on_loopback(self) -> bool:
        addr = ipaddress.ip_address(self.address.split("%")[0])
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped  # ::ffff:127.0.0.1 (a v6 socket bound to v4 loopback)
        return str(addr) in ("127.0.0.1", "::1")


def _tenfold_processes(settings: Settings) -> dict[int, psutil.Process]:
    """Every process Tenfold started for ``settings`` (each pid file's process group) and this test's own
    children (the jobs it runs), with all their descendants."""
    roots: list[psutil.Process] = [psutil.Process()]
    groups = {r.pid for f in run_dir(settings).rglob("*.pid") if (r := read_record(f.parent, f.stem)) is not None}
    roots += [p for p in psutil.process_iter() if _pgid(p) in groups]
    found: dict[int, psutil.Process] = {}
    for root in roots:
        try:
            family = [root, *root.children(recursive=True)]
        except psutil.Error:
            continue
        found.update({p.pid: p for p in family})
    found.pop(os.getpid(), None)  # pytest itself is not one of them; its children are
    return found


def _listeners(procs: dict[int, psutil.Process]) -> set[Listener]:
    out = set()
    for p in procs.values():
        try:
            cmd = " ".join(p.cmdline())
            conns = p.net_connections(kind="inet")
        except psutil.Error:
            continue
        for c in conns:
            listening = c.status == psutil.CONN_LISTEN or (c.type == socket.SOCK_DGRAM and not c.raddr)
            if listening and c.laddr:
                out.add(Listener(p.pid, cmd, "tcp" if c.type == socket.SOCK_STREAM else "udp", c.laddr.ip, c.laddr.port))
    return out


class ListenerWatch:
    """Collects the listening sockets of Tenfold's processes in the background while jobs run."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.seen: set[Listener] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.seen |= _listeners(_tenfold_processes(self.settings))
            self._stop.wait(0.2)

    def __enter__(self) -> ListenerWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


def _run_spark_job(settings: Settings, tmp: Path) -> str:
    from tenfold.data.ingest import ingest_month
    from tenfold.data.lake import Lake, Partition
    from tenfold.features.job import FEATURES_TABLE
    from tenfold.features.submit import spark_submit_features
    from tenfold.workloads.flights import WORKLOAD

    lake, jan = Lake((tmp / "lake").as_uri()), Partition(2013, 1)
    ingest_month(lake, jan, run_id="loopback", workload=WORKLOAD)
    staging = lake.uri_of(lake.staging_path(FEATURES_TABLE, jan, "loopback"))
    return spark_submit_features(settings, jan, staging, run_id="loopback", lake_uri=lake.uri, timeout_s=600)


def _run_torchrun_job(settings: Settings, tmp: Path) -> None:
    from tenfold.data.lake import Lake, month_range
    from tenfold.training.config import TrainConfig
    from tenfold.training.launch import run_torchrun
    from tenfold.workloads.flights.model import ModelConfig
    from tenfold.workloads.flights.synthetic import publish_synthetic_features

    lake = Lake((tmp / "train-lake").as_uri())
    publish_synthetic_features(lake, month_range("2013-01", "2013-02"), 300, seed=3)
    cfg = TrainConfig(lake_uri=lake.uri, train_months=("2013-01", "2013-02"), batch_size=32, epochs=1, max_steps=6,
                      checkpoint_every=3, seed=1, model=ModelConfig(embedding_dim=4, hidden=(8,), dropout=0.0),
                      threads=1, patience=None)
    run_torchrun(settings, cfg, tmp / "train", nproc=2, timeout_s=300)


def _beyond_loopback(seen: set[Listener]) -> list[str]:
    return sorted(f"{x.proto} {x.address}:{x.port} pid {x.pid} ({x.cmd[:120]})" for x in seen if not x.on_loopback)


def test_nothing_listens_beyond_loopback_while_a_spark_job_runs(stack, tmp_path):
    """Every listening socket of every process Tenfold started (the platform's components and their children,
    and a real spark-submit job with its JVM) is on 127.0.0.1 or ::1."""
    with ListenerWatch(stack.settings) as watch:
        spark_log = _run_spark_job(stack.settings, tmp_path)
    seen = watch.seen
    # The watch saw the job while it ran: the driver's JVM listens (its RPC and block manager).
    assert any("org.apache.spark.deploy.SparkSubmit" in x.cmd for x in seen), {(x.port, x.cmd[:80]) for x in seen}
    s = stack.settings.local
    assert {s.gcs_port, s.pubsub_port, s.airflow_port, s.airflow_log_port, s.airflow_trigger_log_port} <= {x.port for x in seen}
    beyond = _beyond_loopback(seen)
    assert not beyond, "listening beyond loopback:\n" + "\n".join(beyond)
    assert "resolves to a loopback address" not in spark_log


def test_nothing_listens_beyond_loopback_while_a_torchrun_job_runs(stack, tmp_path):
    """The same for a real two-rank torchrun training job: its elastic agent, the ranks, their store and gloo."""
    with ListenerWatch(stack.settings) as watch:
        _run_torchrun_job(stack.settings, tmp_path)
    seen = watch.seen
    assert any("tenfold.training.worker" in x.cmd for x in seen), {(x.port, x.cmd[:80]) for x in seen}
    beyond = _beyond_loopback(seen)
    assert not beyond, "listening beyond loopback:\n" + "\n".join(beyond)


def test_status_prints_the_airflow_login_that_works(stack):
    s = stack.settings
    result = _tenfold(stack.env, "status", timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    url = f"http://127.0.0.1:{s.local.airflow_port}"
    password = json.loads((s.local.home / "airflow" / "simple_auth_manager_passwords.json.generated").read_text())[
        s.airflow.admin_user
    ]
    assert f"Airflow UI: {url}  user: {s.airflow.admin_user}  password: {password}" in result.stdout
    # `tenfold status` is the one place that prints it: `up`'s output (CI logs, scrollback) never holds it.
    assert password not in stack.up.stdout + stack.up.stderr
    assert "password: `tenfold status` shows it" in stack.up.stdout
    status, token = _get(
        f"{url}/auth/token",
        data=json.dumps({"username": s.airflow.admin_user, "password": password}).encode(),
        headers={"Content-Type": "application/json"},
    )
    assert status == 201 and isinstance(token, dict) and token["access_token"]


def test_generated_secrets_are_private_and_only_status_shows_them(stack):
    from tenfold.serving.auth import token_path

    s = stack.settings
    airflow_home = s.local.home / "airflow"
    password_file = airflow_home / "simple_auth_manager_passwords.json.generated"
    for path in (password_file, airflow_home / "airflow.cfg", token_path(s)):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    password = json.loads(password_file.read_text())[s.airflow.admin_user]
    token = token_path(s).read_text().strip()
    # Generated by Tenfold before the API server started, so Airflow never printed it into a log.
    logs = {p.name: p.read_text(errors="replace") for p in run_dir(s).glob("*.log")}
    assert {f"{c}.log" for c in AIRFLOW_COMPONENTS} <= set(logs)
    assert not [name for name, text in logs.items() if password in text or token in text]
    status = _tenfold(stack.env, "status", timeout=60)
    assert password in status.stdout and token in status.stdout


def test_rest_client_drives_the_dags_as_the_demo_does(stack):
    from tenfold.local import admin_password, airflow_url
    from tenfold.local.airflow_api import AirflowApi, AirflowApiError

    s = stack.settings
    api = AirflowApi(airflow_url(s), s.airflow.admin_user, admin_password(s) or "")
    assert api.wait_for_dag("build_features", timeout_s=240)["dag_id"] == "build_features"
    api.wait_for_dag("train_model", timeout_s=240)
    api.set_paused("train_model", True)
    assert api.dag("train_model")["is_paused"] is True
    # Paused, so the scheduler queues the run but starts nothing: no training inside this test.
    run = api.trigger("train_model", "test__rest_client", {"epochs": 1})
    assert run["dag_run_id"] == "test__rest_client" and run["state"] == "queued"
    again = api.trigger("train_model", "test__rest_client", {"epochs": 2})
    assert again["conf"] == {"epochs": 1}  # idempotent: the existing run, not a second one
    assert [r["dag_run_id"] for r in api.runs("train_model")].count("test__rest_client") == 1
    with pytest.raises(AirflowApiError, match="HTTP 401"):
        AirflowApi(airflow_url(s), s.airflow.admin_user, "wrong-password").dag("train_model")


def _status_of(url: str, *, data: bytes | None = None, headers: dict[str, str] | None = None) -> int:
    req = urllib.request.Request(url, data=data, headers=headers or {})
    try:
        # A deadline, not a margin: the API server builds the execution API on its first request (seconds).
        with urllib.request.urlopen(req, timeout=120) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def _forged_token(audience: str) -> str:
    """A well-formed admin JWT, as Airflow issues them (HS512), signed with a key that is not Airflow's."""
    import jwt

    now = int(time.time())
    claims = {"sub": "admin", "role": "admin", "teams": [], "jti": "forged", "aud": audience,
              "iat": now, "nbf": now, "exp": now + 600, "filename": "x"}
    return jwt.encode(claims, "not-the-platform-key-" * 4, algorithm="HS512", headers={"kid": "not-used"})


def test_airflow_refuses_requests_without_valid_credentials(stack):
    """The API, the UI's API, the execution API and the log servers each refuse no credentials (401, or 403
    where Airflow says forbidden), a wrong password (401) and a forged token (403); the generated login works."""
    from tenfold.local import admin_password

    s = stack.settings
    url = f"http://127.0.0.1:{s.local.airflow_port}"
    logs = [f"http://127.0.0.1:{p}/log/x" for p in (s.local.airflow_log_port, s.local.airflow_trigger_log_port)]
    user = s.airflow.admin_user
    json_body = {"Content-Type": "application/json"}

    def login(password: str) -> int:
        return _status_of(f"{url}/auth/token", data=json.dumps({"username": user, "password": password}).encode(),
                          headers=json_body)

    forged = _forged_token("apache-airflow")
    bearer = {"Authorization": f"Bearer {forged}"}
    refused = {
        "API, no credentials": (_status_of(f"{url}/api/v2/dags"), 401),
        "API, forged token": (_status_of(f"{url}/api/v2/dags", headers=bearer), 403),
        "UI, no credentials": (_status_of(f"{url}/ui/dags"), 401),
        "UI, forged token": (_status_of(f"{url}/ui/dags", headers=bearer), 403),
        "UI, forged token cookie": (_status_of(f"{url}/ui/config", headers={"Cookie": f"_token={forged}"}), 403),
        "login, wrong password": (login("wrong-password"), 401),
        "login, unknown user": (_status_of(f"{url}/auth/token", headers=json_body, data=json.dumps(
            {"username": "intruder", "password": admin_password(s)}).encode()), 401),
        "execution API, no token": (_status_of(f"{url}/execution/variables/x"), 401),
        "execution API, forged token": (_status_of(
            f"{url}/execution/variables/x", headers={"Authorization": f"Bearer {_forged_token('urn:airflow.apache.org:task')}"}), 403),
        **{f"log server {u}, no token": (_status_of(u), 403) for u in logs},
        **{f"log server {u}, forged token": (_status_of(u, headers={"Authorization": _forged_token("task-instance-logs")}), 403)
           for u in logs},
    }
    assert {k: got for k, (got, _want) in refused.items()} == {k: want for k, (_got, want) in refused.items()}

    from tenfold.local.airflow_api import AirflowApi

    api = AirflowApi(url, user, admin_password(s) or "")
    for dag_id in ("build_features", "train_model"):  # parsed by the DAG processor (once, after `up`)
        api.wait_for_dag(dag_id, timeout_s=240)
    status, reply = _get(f"{url}/auth/token", data=json.dumps({"username": user, "password": admin_password(s)}).encode(),
                         headers=json_body)
    assert status == 201 and isinstance(reply, dict)
    auth = {"Authorization": f"Bearer {reply['access_token']}"}
    status, dags = _get(f"{url}/api/v2/dags", headers=auth)
    assert status == 200 and isinstance(dags, dict)
    assert {"build_features", "train_model"} <= {d["dag_id"] for d in dags["dags"]}
    assert _status_of(f"{url}/ui/dags", headers=auth) == 200

    # The log servers serve a log to a token signed with the key the components share (airflow.cfg), as
    # the API server signs its requests for a running task's log.
    import configparser

    import jwt

    cfg = configparser.ConfigParser(interpolation=None)
    cfg.read(s.local.home / "airflow" / "airflow.cfg")
    probe = s.local.home / "airflow" / "logs" / "tenfold-probe.log"
    probe.parent.mkdir(parents=True, exist_ok=True)
    probe.write_text("probe\n")
    now = int(time.time())
    signed = jwt.encode({"filename": probe.name, "aud": "task-instance-logs", "iat": now, "nbf": now, "exp": now + 60},
                        cfg.get("api", "secret_key"), algorithm="HS512")
    for log_url in logs:
        req = urllib.request.Request(log_url.replace("/log/x", f"/log/{probe.name}"), headers={"Authorization": signed})
        with urllib.request.urlopen(req, timeout=60) as resp:
            assert resp.status == 200 and resp.read() == b"probe\n"


def _wait_gone(proc: psutil.Process, timeout: float = 30.0) -> None:
    """Until ``proc`` exited (a zombie counts: nobody may reap a process whose parent already exited)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if proc.status() == psutil.STATUS_ZOMBIE:
                return
        except psutil.NoSuchProcess:
            return
        assert time.monotonic() < deadline, f"pid {proc.pid} still runs {timeout:.0f} s after SIGKILL"
        time.sleep(0.05)


def _component_lines(stdout: str) -> dict[str, str]:
    """``tenfold status`` lines by component: name -> state."""
    states = ("healthy", "running, not healthy", "running, on another port", "dead", "stopped")
    out = {}
    for line in stdout.splitlines():
        name, _, rest = line.partition(" ")
        if name in COMPONENTS:
            out[name] = next(st for st in states if rest.strip().startswith(st))
    return out


def test_a_killed_component_is_reported_dead_and_up_restarts_only_it(stack):
    s = stack.settings
    before = _records(s)
    victim = before["airflow-scheduler"]
    leader = psutil.Process(victim.pid)
    group = [p for p in psutil.process_iter() if _pgid(p) == victim.pid]
    assert len(group) > 1  # the scheduler's executor workers: they outlive it unless `up` clears them

    leader.send_signal(signal.SIGKILL)
    _wait_gone(leader)
    dead = _tenfold(stack.env, "status", timeout=60)
    assert dead.returncode == 3, dead.stdout + dead.stderr
    states = _component_lines(dead.stdout)
    assert states == {**{n: "healthy" for n in COMPONENTS}, "airflow-scheduler": "dead"}, dead.stdout

    again = _tenfold(stack.env, "up", timeout=420)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "airflow-scheduler not running; restarting it" in again.stdout
    after = _records(s)
    assert after["airflow-scheduler"].pid != victim.pid
    assert {n: r for n, r in after.items() if n != "airflow-scheduler"} == {
        n: r for n, r in before.items() if n != "airflow-scheduler"}  # the healthy ones were left alone
    assert not [p for p in group if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]  # no orphans left

    healthy = _tenfold(stack.env, "status", timeout=60)
    assert healthy.returncode == 0, healthy.stdout + healthy.stderr
    assert _component_lines(healthy.stdout) == {n: "healthy" for n in COMPONENTS}


def test_buckets_topics_and_subscriptions_exist(stack):
    from tenfold.messaging import subscriber_client, subscription_path, topic_path
    from tenfold.storage import gcs_client

    s = stack.settings
    buckets = {b.name for b in gcs_client(s).list_buckets()}
    assert {s.storage.lake_bucket, s.storage.models_bucket, s.storage.artifacts_bucket} <= buckets
    with subscriber_client(s) as sub:
        for spec in s.messaging.subscriptions.values():
            got = sub.get_subscription(request={"subscription": subscription_path(s, spec.name)})
            assert got.topic == topic_path(s, spec.topic)
            assert got.dead_letter_policy.dead_letter_topic == topic_path(s, spec.dead_letter_topic)
            assert got.dead_letter_policy.max_delivery_attempts == spec.max_delivery_attempts
            dl = sub.get_subscription(request={"subscription": subscription_path(s, spec.dead_letter_subscription)})
            assert dl.topic == topic_path(s, spec.dead_letter_topic)


def test_second_up_is_idempotent(stack):
    s = stack.settings
    before = _records(s)
    result = _tenfold(stack.env, "up", timeout=120)
    assert result.returncode == 0, result.stderr
    for name in SERVICES:
        assert f"{name}: already running and healthy" in result.stdout
    assert _records(s) == before


def test_up_in_a_shell_with_other_settings_refuses_naming_them(stack, tmp_path):
    """An alert hook (or a workload) set after `make up`: `up` said "already running and healthy", and Airflow's
    tasks kept the settings they were started with."""
    s = stack.settings
    before = _records(s)
    result = _tenfold({**stack.env, "TENFOLD_ALERT_FILE": str(tmp_path / "alerts.jsonl")}, "up", timeout=120)
    assert result.returncode == 1, result.stdout + result.stderr  # a refusal (local/cli.py up), not 2, 3 or a crash
    assert ("airflow: it runs with other settings than these (TENFOLD_ALERT_FILE changed since it started): stop it "
            "(`tenfold down -s airflow`)") in result.stderr, result.stdout + result.stderr
    assert _records(s) == before  # refused before anything stopped or started


def test_down_stops_exactly_what_up_started(stack):
    s = stack.settings
    started: list[psutil.Process] = []
    for record in _records(s).values():
        started += [p for p in psutil.process_iter() if _pgid(p) == record.pid]
    assert len(started) >= len(COMPONENTS)
    bystander = subprocess.Popen(["sleep", "300"], start_new_session=True)  # a process `up` did not start
    try:
        result = _tenfold(stack.env, "down", timeout=120)
        assert result.returncode == 0, result.stderr
        for name in SERVICES:
            assert f"{name}: stopped" in result.stdout
        for name in COMPONENTS:
            assert read_record(run_dir(s), name) is None
        still = [p for p in started if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        assert not still, [p.cmdline() for p in still]
        assert bystander.poll() is None
        for port in (s.local.gcs_port, s.local.pubsub_port, s.local.airflow_port, s.local.airflow_log_port,
                     s.local.airflow_trigger_log_port):
            assert not port_in_use("127.0.0.1", port)
        after = _tenfold(stack.env, "status", timeout=60)
        assert after.returncode == 3 and "stopped" in after.stdout
    finally:
        bystander.kill()
        bystander.wait()


def _records(settings: Settings) -> dict[str, ProcessRecord]:
    """The pid-file record of every component; fails when one is missing."""
    records = {n: read_record(run_dir(settings), n) for n in COMPONENTS}
    missing = [n for n, r in records.items() if r is None]
    assert not missing, f"no pid file for {missing}"
    return {n: r for n, r in records.items() if r is not None}


def _pgid(p: psutil.Process) -> int | None:
    try:
        return os.getpgid(p.pid)
    except (ProcessLookupError, psutil.Error):
        return None
