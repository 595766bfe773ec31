"""The replica's flags and their defaults from the environment: a bad $TENFOLD_SERVING_PORT is one line, exit 2."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tenfold.config.settings import project_root
from tenfold.local import local_settings
from tenfold.serving.replica import PORT_ENV, parse_args


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
