"""The replica's flags and their defaults from the environment: a bad $TENFOLD_SERVING_PORT is one line, exit 2."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tenfold.config.settings import project_root
from tenfold.local import local_settings
from tenfold.serving.replica import ARM_ENV, HOST_ENV, PORT_ENV, parse_args


@pytest.mark.parametrize("value", ["81o1", "0", "70000", "-5"])
def test_a_port_variable_that_is_no_port_is_refused_naming_it(tmp_path: Path, value: str,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    """int('81o1') ran while argparse's defaults were built: a traceback, exit 1, even under a valid --port."""
    settings = local_settings(tmp_path)
    with pytest.raises(SystemExit) as exit_:
        parse_args([], settings, {PORT_ENV: value})
    assert exit_.value.code == 2
    assert f"${PORT_ENV}={value!r} is not a TCP port (1-65535)" in capsys.readouterr().err
    assert parse_args(["--port", "9299"], settings, {PORT_ENV: value}).port == 9299  # the flag wins, unread
    assert parse_args([], settings, {PORT_ENV: "9301"}).port == 9301
    assert parse_args([], settings, {}).port == settings.local.replica_base_port


def test_the_image_healthcheck_says_unhealthy_in_one_line_for_a_bad_port_variable(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TENFOLD_")}
    env.update(TENFOLD_HOME=str(tmp_path), **{PORT_ENV: "81o1"})
    proc = subprocess.run([sys.executable, str(project_root() / "serving_image" / "healthcheck.py")], env=env,
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.strip() == f"unhealthy: ${PORT_ENV}='81o1' is not a TCP port (1-65535): fix or unset it"


@pytest.mark.parametrize(("argv", "environ", "named"), [
    ([], {HOST_ENV: "0.0.0.0"}, f"${HOST_ENV} '0.0.0.0'"),
    (["--host", "192.0.2.1"], {}, "--host '192.0.2.1'"),
    (["--host", "0.0.0.0"], {HOST_ENV: "127.0.0.1"}, "--host '0.0.0.0'"),  # the flag wins, and is what is named
    (["--host", "localhost"], {}, "--host 'localhost'"),  # a name may resolve anywhere: the settings refuse it too
])
def test_a_local_replica_refuses_to_listen_beyond_loopback(tmp_path: Path, argv: list[str], environ: dict[str, str],
                                                           named: str, capsys: pytest.CaptureFixture[str]) -> None:
    """Locally /metrics, /docs, /openapi.json and the detailed /readyz need no login: a replica on 0.0.0.0 opened them
    to the whole network."""
    with pytest.raises(SystemExit) as exit_:
        parse_args(argv, local_settings(tmp_path), environ)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert f"{named} is not an IPv4 loopback address" in err and "TENFOLD_ENV=dev or prod" in err, err


def test_loopback_is_accepted_locally_and_any_address_in_the_cloud(tmp_path: Path) -> None:
    from tenfold.config import build_settings

    settings = local_settings(tmp_path, bind_host="127.0.0.2")
    assert parse_args([], settings, {}).host == "127.0.0.2"
    assert parse_args([], settings, {HOST_ENV: "127.0.0.1"}).host == "127.0.0.1"
    assert parse_args(["--host", "127.0.0.3"], settings, {HOST_ENV: "127.0.0.1"}).host == "127.0.0.3"
    # The cloud fleet's startup script sets the VM's internal address; the load balancer asks for the login there.
    dev = build_settings("dev", {"TENFOLD_HOME": str(tmp_path)})
    assert parse_args([], dev, {HOST_ENV: "10.128.0.7"}).host == "10.128.0.7"
    assert parse_args(["--host", "0.0.0.0"], dev, {}).host == "0.0.0.0"


@pytest.mark.parametrize(("environ", "code", "said"), [
    # dev: a replica never generates a token, and `tenfold up` is no help there.
    ({"TENFOLD_ENV": "dev"}, 1, "Secret Manager secret 'tenfold-dev-serving-token'"),
    ({"TENFOLD_LOCAL__GCS_PORT": "abc"}, 2, "gcs_port"),
    # A workload that cannot be imported, and a track that is no arm: create_app's raw WorkloadError and ValueError.
    ({"TENFOLD_WORKLOAD": "nosuch.mod:x"}, 2, "tenfold serving: workload 'nosuch.mod:x': cannot import nosuch.mod"),
    ({ARM_ENV: "canry"}, 2, f"tenfold serving: ${ARM_ENV}='canry' is not an A/B arm (one of stable, canary)"),
])
def test_the_image_asgi_entry_ends_in_one_line_not_a_traceback(tmp_path: Path, environ: dict[str, str], code: int,
                                                               said: str) -> None:
    """``import asgi`` (what an ASGI server does) ended in a TokenMissing or validation traceback."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TENFOLD_")}
    env.update(TENFOLD_HOME=str(tmp_path / "empty"), **environ)
    proc = subprocess.run([sys.executable, "-c", "import asgi"], cwd=project_root() / "serving_image", env=env,
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == code and "Traceback" not in proc.stderr, proc.stderr
    assert said in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    if code == 1:
        assert "no serving token at" in proc.stderr and "tenfold up" not in proc.stderr


@pytest.mark.parametrize(("environ", "said"), [
    ({"TENFOLD_WORKLOAD": "nosuch.mod:x"}, "tenfold serving: workload 'nosuch.mod:x': cannot import nosuch.mod"),
    ({ARM_ENV: "canry"}, f"${ARM_ENV}='canry' is not an A/B arm (one of stable, canary)"),
])
def test_the_replica_refuses_a_workload_or_track_it_cannot_use_in_one_line_exit_2(tmp_path: Path,
                                                                                environ: dict[str, str],
                                                                                said: str) -> None:
    """`TENFOLD_WORKLOAD=nosuch.mod:x python -m tenfold.serving` died of create_app's WorkloadError traceback, exit 1;
    docs/serving.md promises exit 2 and one line for a bad TENFOLD_* variable."""
    from tenfold.local import free_port

    env = {k: v for k, v in os.environ.items() if not k.startswith("TENFOLD_")}
    env.update(TENFOLD_HOME=str(tmp_path), **environ)
    proc = subprocess.run([sys.executable, "-m", "tenfold.serving", "--port", str(free_port())], env=env,
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert said in proc.stderr.strip().splitlines()[-1], proc.stderr


def test_serve_refuses_an_arm_that_is_none_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """create_app's ValueError for the arm escaped serve() as a traceback."""
    from tenfold.serving.replica import serve

    assert serve(local_settings(tmp_path), host="127.0.0.1", port=9, arm="canry", model_ref="champion") == 2
    err = capsys.readouterr().err
    assert err == "tenfold serving: arm 'canry' is not one of stable, canary\n", err


def test_a_replica_whose_token_path_is_a_folder_ends_in_one_line(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """run/serving.token a folder: create_app raised IsADirectoryError, and `python -m tenfold.serving` died of its
    traceback (a supervisor's replica log held only that). Now exit 1 and one line naming the path and what to do."""
    from tenfold.serving.auth import token_path
    from tenfold.serving.replica import serve

    settings = local_settings(tmp_path)
    token_path(settings).mkdir(parents=True)
    assert serve(settings, host="127.0.0.1", port=9, arm="stable", model_ref="champion") == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith(f"tenfold serving: the serving token file {token_path(settings)} cannot be read"), err
    assert "delete it and run `tenfold up`" in err


def _load_asgi(monkeypatch: pytest.MonkeyPatch, home: Path, **environ: str) -> Any:
    """``serving_image/asgi.py`` imported as an ASGI server imports it, under ``environ`` alone of TENFOLD_*."""
    import importlib.util

    from tenfold.config import get_settings

    for key in [k for k in os.environ if k.startswith("TENFOLD_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("TENFOLD_HOME", str(home))
    for key, value in environ.items():
        monkeypatch.setenv(key, value)
    get_settings.cache_clear()
    try:
        spec = importlib.util.spec_from_file_location("tenfold_serving_asgi_test", project_root() / "serving_image"
                                                      / "asgi.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        get_settings.cache_clear()
    return module


def _get(app: Any, path: str, server: tuple[Any, ...] | None) -> tuple[int, bytes]:
    """One GET through ``app`` as a TCP server passes it: ``server`` is the address the request arrived on."""
    import asyncio

    sent: list[dict[str, Any]] = []
    scope: dict[str, Any] = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET",
                             "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"",
                             "root_path": "", "headers": [(b"host", b"x")], "client": ("203.0.113.9", 50000)}
    if server is not None:
        scope["server"] = server

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    return status, b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")


def test_the_image_asgi_entry_serves_a_local_app_on_loopback_only(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """`uvicorn --app-dir serving_image asgi:app --host 0.0.0.0` never met parse_args' host check: a local app's
    /metrics, /docs, /openapi.json and detailed /readyz (no login locally) were open to the network."""
    import json

    app = _load_asgi(monkeypatch, tmp_path).app
    for path in ("/metrics", "/docs", "/openapi.json", "/readyz"):
        status, body = _get(app, path, ("192.0.2.1", 8101))
        assert status == 403, (path, status)
        said = json.loads(body)
        assert said["error"] == "forbidden" and "serves loopback only" in said["message"]
        assert "connect through 127.0.0.1" in said["message"] and "\n" not in said["message"]
    assert _get(app, "/metrics", ("127.0.0.1", 8101))[0] == 200
    assert _get(app, "/metrics", ("::1", 8101, 0, 0))[0] == 200
    assert _get(app, "/metrics", ("::ffff:127.0.0.1", 8101))[0] == 200  # a dual-stack socket's loopback
    assert _get(app, "/metrics", ("10.0.0.5", 8101))[0] == 403
    assert _get(app, "/metrics", ("example.org", 8101))[0] == 403  # a TCP server names an address, never a name
    # No TCP socket: a Unix socket (uvicorn --uds passes no server) or an in-process test client.
    assert _get(app, "/metrics", None)[0] == 200
    assert _get(app, "/metrics", ("testserver", 80))[0] == 200


def test_the_image_asgi_entry_wraps_the_app_locally_and_leaves_the_clouds_as_it_is(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """In dev and prod the load balancer asks for the login on every path, and a VM's replica serves its internal
    address: the app is create_app's, unwrapped."""
    import tenfold.serving.app as app_module

    async def plain(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    made: list[str] = []

    def factory(settings: Any, **_: Any) -> Any:
        made.append(settings.env)
        return plain

    monkeypatch.setattr(app_module, "create_app", factory)
    assert _load_asgi(monkeypatch, tmp_path, TENFOLD_ENV="dev").app is plain
    local = _load_asgi(monkeypatch, tmp_path).app
    assert made == ["dev", "local"] and local is not plain and local.app is plain
    assert _get(local, "/anything", ("192.0.2.1", 8101))[0] == 403
    assert _get(local, "/anything", ("127.0.0.2", 8101)) == (200, b"ok")


def test_a_replica_leaves_what_it_dropped_as_it_exits(tmp_path) -> None:
    """The monitoring samples a replica dropped are on its /metrics, which go with it: replaced by a rollout within a
    month, its drops were lost to `make demo`, which then waited for predictions that were never published."""
    import json
    import os

    from tenfold.serving.metrics import ServerMetrics
    from tenfold.serving.replica import record_ended

    metrics = ServerMetrics("canary")
    metrics.set_model_version("v1")
    metrics.sample_dropped("buffer_full", 2)
    metrics.set_model_version("v2")  # a reload: the counts of both versions are its own
    metrics.sample_dropped("breaker_open")
    metrics.sample_dropped("buffer_full")
    path = record_ended(str(tmp_path / "ended"), metrics)
    assert path is not None and path.parent == tmp_path / "ended"
    body = json.loads(path.read_text())
    assert (body["pid"], body["dropped"]) == (os.getpid(), {"buffer_full": 3, "breaker_open": 1})
