"""The server as the process the fleet and the image run: a real SIGTERM drain, a failed load, bad flags,
the image's environment-only command and its HEALTHCHECK, and the thin ASGI entry."""

from __future__ import annotations

import http.client
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from tenfold.config.settings import project_root
from tenfold.local import free_port, settings_env

ROOT = project_root()
IMAGE = ROOT / "serving_image"


def _until_200(proc: subprocess.Popen[str], url: str, timeout_s: float) -> None:
    """Wait (a deadline, the process alive) until ``url`` answers 200."""
    import urllib.request

    deadline = time.monotonic() + timeout_s
    while True:
        assert proc.poll() is None and time.monotonic() < deadline, f"{url} never answered 200"
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.1)


def _refused(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return False
    except OSError:
        return True


@pytest.mark.slow
def test_the_image_command_serves_from_its_environment_and_drains_on_sigterm(
        start_replica: Any, serving_env: dict[str, str], served_versions: Any, auth: dict[str, str],
        tmp_path: Path) -> None:
    """The image's CMD with only its environment (as the cloud fleet runs it), its HEALTHCHECK, and a
    real SIGTERM while a slow client's request is in flight: it is answered, then the process exits 0."""
    cmd = _dockerfile_cmd()
    assert cmd == ["python", "-m", "tenfold.serving"]
    port = free_port()
    env = {**serving_env, "TENFOLD_SERVING_HOST": "127.0.0.1", "TENFOLD_SERVING_PORT": str(port),
           "TENFOLD_SERVING_TRACK": "canary", "TENFOLD_SERVING_MODEL": served_versions.challenger,
           "TENFOLD_SERVING_ENDED_DIR": str(tmp_path / "ended")}  # as the local fleet sets it
    replica = start_replica(port=port, env=env, argv=[sys.executable, *cmd[1:]])
    status, ready = replica.get("/readyz")
    assert status == 200 and (ready["arm"], ready["model_version"]) == ("canary", served_versions.challenger)
    check = [sys.executable, str(IMAGE / "healthcheck.py")]
    assert subprocess.run(check, env=env, capture_output=True, timeout=60).returncode == 0

    # A connection left idle longer than uvicorn's default keep-alive (5 s) is still open: Google's load balancer
    # reuses its backend connections for up to 600 s, and a replica that closed one first had the load balancer's
    # next request on it answered 502.
    idle = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        idle.request("GET", "/healthz")
        first = idle.getresponse()
        first.read()
        sock = idle.sock
        time.sleep(6.0)  # the idle time under test, not a wait for something to happen
        idle.request("GET", "/healthz")
        second = idle.getresponse()
        second.read()
        assert (first.status, second.status, idle.sock) == (200, 200, sock), "the idle connection was not reused"
    finally:
        idle.close()

    body = json.dumps({"carrier": "UA", "flight": 7, "origin": "EWR", "dest": "IAH",
                       "sched_dep": "2013-01-03T10:00:00"}).encode()
    head = (f"POST /v1/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: {auth['Authorization']}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode()
    with socket.create_connection(("127.0.0.1", port), timeout=30) as slow:
        slow.sendall(head + body[:20])  # a slow client: the request is in flight, its body half sent
        # In flight once the replica has accepted this connection: wait for that, not for a guessed time.
        mine = slow.getsockname()
        deadline = time.monotonic() + 30
        while not any(c.raddr and tuple(c.raddr) == mine for c in psutil.Process(replica.pid).net_connections("tcp")):
            assert time.monotonic() < deadline, "the replica never accepted the slow client's connection"
            time.sleep(0.02)
        os.kill(replica.pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while not _refused("127.0.0.1", port):  # no new connections once draining...
            assert time.monotonic() < deadline, "the replica kept accepting connections after SIGTERM"
            time.sleep(0.1)
        assert replica.wait_exit(0.5) is None  # ...but it holds on for the request in flight
        time.sleep(1.0)
        slow.sendall(body[20:])
        raw = b""
        while b"\r\n\r\n" not in raw or not raw.rstrip().endswith(b"}"):
            chunk = slow.recv(65536)
            if not chunk:
                break
            raw += chunk
    status_line, _, rest = raw.partition(b"\r\n")
    assert status_line.startswith(b"HTTP/1.1 200"), raw
    answer = json.loads(rest.split(b"\r\n\r\n", 1)[1])
    assert 0 < answer["probability"] < 1 and answer["arm"] == "canary"
    assert replica.wait_exit(30) == 0
    assert "draining" in replica.log()
    # What it counted that its /metrics took with it, left as it exited (make demo adds the drops of replicas gone).
    (record,) = [json.loads(p.read_text()) for p in (tmp_path / "ended").glob("*.json")]
    assert record["pid"] == replica.pid and isinstance(record["dropped"], dict) and record["ended_at"] <= time.time()
    unhealthy = subprocess.run(check, env=env, capture_output=True, text=True, timeout=60)
    assert unhealthy.returncode == 1 and "unhealthy" in unhealthy.stderr


@pytest.mark.slow
def test_a_model_that_cannot_be_loaded_exits_1_saying_why(serving_env: dict[str, str], served_versions: Any) -> None:
    port = free_port()
    proc = subprocess.run([sys.executable, "-m", "tenfold.serving", "--host", "127.0.0.1", "--port", str(port),
                           "--model", "no-such-model"], env=serving_env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "not serving" in proc.stderr and "'no-such-model'" in proc.stderr and "tenfold models list" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.slow
def test_a_replica_stopped_while_it_loads_exits_at_once(serving_env: dict[str, str], serving_settings: Any,
                                                         served_versions: Any) -> None:
    """SIGTERM while the model is still loading (here: waiting on the model cache's lock, as behind a slow
    download): the replica exits promptly rather than when the load ends (the fleet SIGKILLs it after its
    drain timeout)."""
    import urllib.request

    from tenfold.fsio import file_lock
    from tenfold.serving.loading import model_cache_dir

    version = served_versions.champion
    port = free_port()
    with file_lock(model_cache_dir(serving_settings) / f".{version}.lock"):  # the load cannot finish while held
        proc = subprocess.Popen([sys.executable, "-m", "tenfold.serving", "--host", "127.0.0.1", "--port", str(port),
                                 "--model", version], env=serving_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
        try:
            _until_200(proc, f"http://127.0.0.1:{port}/healthz", 120)  # alive (healthz answers while loading)...
            with pytest.raises(urllib.error.HTTPError) as loading:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2)
            assert loading.value.code == 503
            stopped = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)
            assert time.monotonic() - stopped < 10, "the replica waited for its load to end"
        finally:
            if proc.poll() is None:
                proc.kill()
            _, stderr = proc.communicate(timeout=30)
    # Stopped, not failed: exit 0 as after a drain (1 tells the fleet the load failed), and no traceback.
    assert proc.returncode == 0, stderr[-2000:]
    assert "Traceback" not in stderr, stderr[-2000:]


def test_bad_flags_exit_2(serving_env: dict[str, str]) -> None:
    proc = subprocess.run([sys.executable, "-m", "tenfold.serving", "--arm", "blue"], env=serving_env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "--arm" in proc.stderr, (proc.returncode, proc.stderr[-3000:])


def test_a_port_that_is_taken_exits_1_saying_so(tmp_path: Path) -> None:
    """uvicorn exits 3 by itself when it cannot bind, past the replica's own check: the status was none the docs
    list, and only uvicorn's errno line said why. The bind fails before any model is needed, so an empty home does."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TENFOLD_")}
    env.update(TENFOLD_HOME=str(tmp_path / "home"), PYTHONUNBUFFERED="1")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        proc = subprocess.run([sys.executable, "-m", "tenfold.serving", "--host", "127.0.0.1", "--port", str(port)],
                              env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, (proc.returncode, proc.stderr[-3000:])
    assert f"could not start on 127.0.0.1:{port}" in proc.stderr and "is the port taken?" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr


def test_the_thin_asgi_entry_serves_the_same_app(serving_settings: Any, served_versions: Any, waits: Any,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from fastapi.testclient import TestClient

    from tenfold.config import get_settings

    for key, value in {**settings_env(serving_settings), "TENFOLD_SERVING_TRACK": "canary"}.items():
        monkeypatch.setenv(key, value)
    get_settings.cache_clear()
    try:
        spec = importlib.util.spec_from_file_location("tenfold_serving_asgi", IMAGE / "asgi.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        with TestClient(module.app) as client:
            waits.ready(client)
            ready = client.get("/readyz").json()
    finally:
        get_settings.cache_clear()
    assert (ready["arm"], ready["model_version"]) == ("canary", served_versions.champion)


def test_the_dockerfile_is_multi_stage_non_root_with_a_healthcheck_and_passes_hadolint() -> None:
    text = (IMAGE / "Dockerfile").read_text()
    lines = [line.strip() for line in text.splitlines()]
    assert sum(line.startswith("FROM ") for line in lines) >= 4 and "FROM base-${VARIANT} AS runtime" in lines
    assert any(line.startswith("USER 10001") for line in lines) and any(line.startswith("HEALTHCHECK") for line in lines)
    assert "ARG VARIANT=cpu" in lines and "download.pytorch.org/whl/cpu" in text and "nvidia/cuda" in text
    assert '".[serving]"' in text
    # Every install is pinned by the lock (torch's own dependencies came at whatever the torch index had newest).
    import re

    installs = re.findall(r"pip install [^\n&]*", text)
    assert len(installs) == 2 and all("--constraint /tmp/constraints.txt" in c for c in installs), installs
    hadolint = Path(sys.executable).with_name("hadolint")
    lint = subprocess.run([str(hadolint), str(IMAGE / "Dockerfile")], capture_output=True, text=True, timeout=60)
    assert lint.returncode == 0, lint.stdout + lint.stderr


def _dockerfile_cmd() -> list[str]:
    for line in (IMAGE / "Dockerfile").read_text().splitlines():
        if line.startswith("CMD "):
            return list(json.loads(line[4:]))
    raise AssertionError("serving_image/Dockerfile has no CMD")


_HANGING_REPLICA = """
import signal, sys, threading, tempfile
from pathlib import Path
import uvicorn
from tenfold.config import build_settings
from tenfold.serving import replica
from tenfold.serving.app import create_app

home = Path(tempfile.mkdtemp())
s = build_settings("local", {"TENFOLD_HOME": str(home), "TENFOLD_SERVING__SERVER__DRAIN_TIMEOUT_S": "2",
                             "TENFOLD_SERVING__SERVER__MODEL_CALL_TIMEOUT_S": "1",
                             "TENFOLD_SERVING__SERVER__PREDICTION_SAMPLE_RATE": "0"})

class Served:  # loads at once; its forward pass never returns (a stuck kernel)
    version = "v-hung"
    def check(self, request): pass
    def predict(self, requests): threading.Event().wait()

class Publisher:
    def publish_sample(self, *args): return True
    async def publish_feedback(self, record): return "1"
    def close(self, timeout_s=5.0): return 0

class Open:
    mode = "bearer"
    def check(self, headers): return None
    def not_ready(self): return None
    def allows(self, headers): return True

app = create_app(s, loader=lambda settings, ref: Served(), publisher=Publisher(), authenticator=Open())
server = replica._DrainingServer(uvicorn.Config(app, host="127.0.0.1", port=int(sys.argv[1]), lifespan="on",
                                                timeout_graceful_shutdown=2, log_level="warning"), app.state.replica)
for sig in (signal.SIGTERM, signal.SIGINT):
    signal.signal(sig, replica._ignore)
server.run()
print("drained", flush=True)
"""


def test_a_replica_whose_model_call_hangs_still_exits_after_its_drain() -> None:
    """The model's thread was a ThreadPoolExecutor's, which the interpreter joins at exit whatever shutdown() was
    told: a drained replica with a hung forward pass never exited, and a second SIGTERM did nothing either (the
    fleet and docker had to SIGKILL it; a runner that does not escalate waited for ever)."""
    import urllib.error
    import urllib.request

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-c", _HANGING_REPLICA, str(port)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        _until_200(proc, f"http://127.0.0.1:{port}/readyz", 60)
        body = json.dumps({"carrier": "UA", "flight": 1545, "origin": "EWR", "dest": "IAH",
                           "sched_dep": "2013-01-01T05:15:00"}).encode()
        request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/predict", data=body,
                                         headers={"Content-Type": "application/json"})
        with pytest.raises(urllib.error.HTTPError) as hung:
            urllib.request.urlopen(request, timeout=10)
        assert hung.value.code == 503 and json.loads(hung.value.read())["error"] == "model_timeout"
        stopped = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)
        assert time.monotonic() - stopped < 12 and proc.returncode == 0
        assert "drained" in proc.stdout.read()
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=30)


_SIGNAL_UNDER_A_METRICS_LOCK = """
import asyncio, signal
import uvicorn
from tenfold.serving import replica
from tenfold.serving.app import ReplicaState
from tenfold.serving.metrics import ServerMetrics

metrics = ServerMetrics("stable")
state = ReplicaState("stable", "champion", metrics)
server = replica._DrainingServer(uvicorn.Config(lambda *a: None), state)

async def main():
    metrics.ready(True)
    with metrics._state_lock:  # the loop's thread inside a metrics update (every predict sets the queue depth)...
        server.handle_exit(signal.SIGTERM, None)  # ...when the stop signal's handler runs on it
        print("handler returned", state.status, flush=True)
    await asyncio.sleep(0.05)
    print("gauge", metrics.value("tenfold_ready"), flush=True)

asyncio.run(main())
"""


def test_a_stop_signal_that_lands_during_a_metrics_update_drains_instead_of_hanging() -> None:
    """uvicorn's handler runs on the event loop's thread, between two bytecodes: it set the ready gauge under the
    metrics lock that thread may hold (prometheus_client's locks are not re-entrant either), and the replica hung
    for good, deaf to every later signal: only SIGKILL ended it."""
    proc = subprocess.run([sys.executable, "-c", _SIGNAL_UNDER_A_METRICS_LOCK], capture_output=True, text=True,
                          timeout=20)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["handler returned draining", "gauge 0.0"]
