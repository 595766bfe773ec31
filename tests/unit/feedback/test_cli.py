"""``tenfold feedback`` without its services: clear errors and exit codes, never a traceback."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from tenfold.feedback import cli as feedback_cli
from tenfold.local import free_port

from .conftest import feedback, prediction


@pytest.fixture
def run(settings, monkeypatch):
    # Pub/Sub at a loopback port where nothing listens: every call is refused, as with a stopped emulator.
    dead = settings.model_copy(update={"messaging": settings.messaging.model_copy(
        update={"emulator_host": f"127.0.0.1:{free_port()}"})})
    monkeypatch.setattr(feedback_cli, "get_settings", lambda env=None: dead)
    runner = CliRunner()
    return lambda *args: runner.invoke(feedback_cli.app, list(args))


def test_an_unreachable_pubsub_is_exit_1_naming_it_after_the_retry_budget(run):
    result = run("sink", "--until-idle", "--pubsub-retry-s", "1")
    assert result.exit_code == 1
    assert "cannot reach 127.0.0.1:" in result.output and "is the local platform up" in result.output
    assert isinstance(result.exception, SystemExit)  # an error line and exit 1, not an exception escaping


def test_join_and_metrics_work_without_pubsub(run, logs):
    logs.predictions(prediction("a", p=0.8))
    logs.feedback(feedback("a", 1))
    assert run("metrics", "--since", "2026-05-14T00:00", "--until", "2026-05-15", "--no-refresh").output.startswith(
        "no predictions served in this window have been joined yet")
    result = run("metrics", "--since", "2026-05-14T00:00", "--until", "2026-05-15")  # refreshes: joins first
    assert result.exit_code == 0, result.output
    header, row = result.output.strip().splitlines()
    assert header.split()[:4] == ["model_version", "arm", "served", "count"]
    assert row.split()[:4] == ["v1", "stable", "1", "1"] and "1.0000" in row


@pytest.mark.parametrize("command", [["sink", "--once"], ["join"], ["metrics", "--last", "1h"]])
def test_an_unknown_env_is_exit_2_naming_it(command):
    """``--env`` is read by each command (the top-level check sees only TENFOLD_ENV): a typo was a traceback."""
    result = CliRunner().invoke(feedback_cli.app, [*command, "--env", "nope"])
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit)
    assert "nope" in result.output
