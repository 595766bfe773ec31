"""``tenfold up`` and ``tenfold demo`` report what the platform refuses as one clear error line and exit 1, never a
traceback: the same refusals through both commands."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from tenfold.cli import app
from tenfold.local import cli as local_cli
from tenfold.local import local_settings, stack

runner = CliRunner()


def test_up_with_an_empty_token_file_names_the_file_and_what_to_do(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = local_settings(tmp_path)
    token = settings.local.home / "run" / "serving.token"
    token.parent.mkdir(parents=True)
    token.write_text("")
    monkeypatch.setattr(local_cli, "get_settings", lambda env=None: settings)
    monkeypatch.setattr(stack, "up", lambda settings, services, echo: [])  # the platform itself is up and healthy
    out = runner.invoke(app, ["up"])
    assert out.exit_code == 1, out.output
    assert out.exception is None or isinstance(out.exception, SystemExit), repr(out.exception)
    assert f"the serving token file {token} is empty: delete it and run `tenfold up`" in out.output


def test_demo_reports_a_platform_refusal_like_up_does(monkeypatch: pytest.MonkeyPatch) -> None:
    from tenfold import demo

    def refuse(*args: object, **kwargs: object) -> None:
        raise RuntimeError("`airflow db migrate` failed (AIRFLOW_HOME=/x): disk full")

    monkeypatch.setattr(demo, "run", refuse)
    out = runner.invoke(app, ["demo"])
    assert out.exit_code == 1 and isinstance(out.exception, SystemExit), repr(out.exception)
    assert "error: `airflow db migrate` failed (AIRFLOW_HOME=/x): disk full" in out.output
