"""With the local platform down (nothing on the GCS emulator's port), ``tenfold models`` and ``tenfold rollout``
say so in one line at once, instead of a traceback (rollout) or an error (models) after two minutes of retries."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tenfold.cli import app
from tenfold.config import get_settings
from tenfold.local import free_port

runner = CliRunner()


@pytest.mark.parametrize("command", [["models", "list"], ["models", "show"], ["rollout", "status"], ["rollout", "abort"]])
def test_a_stopped_platform_is_one_line_naming_the_port_and_tenfold_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, command: list[str]
) -> None:
    port = free_port()  # nothing listens there: the platform is down
    monkeypatch.setenv("TENFOLD_ENV", "local")
    monkeypatch.setenv("TENFOLD_HOME", str(tmp_path))
    monkeypatch.setenv("TENFOLD_LOCAL__GCS_PORT", str(port))
    get_settings.cache_clear()  # the settings of this environment, not those an earlier test cached
    started = time.monotonic()
    out = runner.invoke(app, command)
    took = time.monotonic() - started
    get_settings.cache_clear()
    assert out.exit_code == 1 and isinstance(out.exception, SystemExit), (repr(out.exception), out.output)
    assert out.output.strip() == (f"error: the local platform is not up: nothing listens on 127.0.0.1:{port}, where "
                                  "the GCS emulator (the model registry's store) should be: run `tenfold up`")
    assert took < 5, f"took {took:.1f} s"
