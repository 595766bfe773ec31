"""The replica's flags and their defaults from the environment: a bad $TENFOLD_SERVING_PORT is one line, exit 2."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tenfold.config.settings import project_root
from tenfold.local import local_settings
from tenfold.serving.replica import HOST_ENV, PORT_ENV, parse_args


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
