"""The real ``tenfold up`` / ``status`` / ``down`` on a temporary home and free ports.

Airflow standalone takes a minute or two to start on two busy cores, so the stack is brought up once
for the module and the tests run in order against it; the last one takes it down.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from tenfold.config import Settings
from tenfold.local import free_port, port_in_use, settings_env
from tenfold.local import local_settings as make_settings
from tenfold.local.process import read_record
from tenfold.local.stack import run_dir

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SERVICES = ("gcs", "pubsub", "airflow")
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
    fields = {f: free_port() for f in ("gcs_port", "pubsub_port", "airflow_port", "airflow_log_port", "airflow_trigger_log_port")}
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
    result = _tenfold(env, "up")
    try:
        yield Stack(settings, env, result)
    finally:
        _tenfold(env, "down", timeout=120)  # safety net if a test failed before test_down


def test_busy_port_is_a_clear_error_and_leaves_nothing_running(tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        busy = sock.getsockname()[1]
        settings = _settings(tmp_path / "home", airflow_port=busy)
        result = _tenfold(_env_for(settings), "up", timeout=120)
    assert result.returncode == 1
    assert f"127.0.0.1:{busy} (airflow) is already in use" in result.stderr
    assert "TENFOLD_LOCAL__AIRFLOW_PORT" in result.stderr
    for name in SERVICES:
        assert read_record(run_dir(settings), name) is None
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
    assert health["metadatabase"]["status"] == "healthy" and health["scheduler"]["status"] == "healthy"
    for name in SERVICES:
        record = read_record(run_dir(s), name)
        assert record is not None and psutil.pid_exists(record.pid)
        assert Path(record.log).is_file()


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
    for port in (s.local.gcs_port, s.local.pubsub_port, s.local.airflow_port):
        assert port_in_use("127.0.0.1", port)
        with socket.socket() as sock:
            sock.settimeout(2)
            assert sock.connect_ex((external[0], port)) != 0, f"port {port} answers on {external[0]}"


def test_status_prints_the_airflow_login_that_works(stack):
    s = stack.settings
    result = _tenfold(stack.env, "status", timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    url = f"http://127.0.0.1:{s.local.airflow_port}"
    password = json.loads((s.local.home / "airflow" / "simple_auth_manager_passwords.json.generated").read_text())[
        s.airflow.admin_user
    ]
    assert f"Airflow UI: {url}  user: {s.airflow.admin_user}  password: {password}" in result.stdout
    status, token = _get(
        f"{url}/auth/token",
        data=json.dumps({"username": s.airflow.admin_user, "password": password}).encode(),
        headers={"Content-Type": "application/json"},
    )
    assert status in (200, 201) and isinstance(token, dict) and token["access_token"]


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
    with pytest.raises(AirflowApiError, match="HTTP 40"):
        AirflowApi(airflow_url(s), s.airflow.admin_user, "wrong-password").dag("train_model")


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
    before = {n: read_record(run_dir(s), n) for n in SERVICES}
    result = _tenfold(stack.env, "up", timeout=120)
    assert result.returncode == 0, result.stderr
    for name in SERVICES:
        assert f"{name}: already running and healthy" in result.stdout
    assert {n: read_record(run_dir(s), n) for n in SERVICES} == before


def test_down_stops_exactly_what_up_started(stack):
    s = stack.settings
    started: list[psutil.Process] = []
    for name in SERVICES:
        record = read_record(run_dir(s), name)
        assert record is not None
        started += [p for p in psutil.process_iter() if _pgid(p) == record.pid]
    assert len(started) >= 3
    bystander = subprocess.Popen(["sleep", "300"], start_new_session=True)  # a process `up` did not start
    try:
        result = _tenfold(stack.env, "down", timeout=120)
        assert result.returncode == 0, result.stderr
        for name in SERVICES:
            assert f"{name}: stopped" in result.stdout
            assert read_record(run_dir(s), name) is None
        still = [p for p in started if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        assert not still, [p.cmdline() for p in still]
        assert bystander.poll() is None
        for port in (s.local.gcs_port, s.local.pubsub_port, s.local.airflow_port):
            assert not port_in_use("127.0.0.1", port)
        after = _tenfold(stack.env, "status", timeout=60)
        assert after.returncode == 3 and "stopped" in after.stdout
    finally:
        bystander.kill()
        bystander.wait()


def _pgid(p: psutil.Process) -> int | None:
    try:
        return os.getpgid(p.pid)
    except (ProcessLookupError, psutil.Error):
        return None
