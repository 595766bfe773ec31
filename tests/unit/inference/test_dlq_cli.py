"""``tenfold dlq replay`` says what it will replay: with no run, request id or ``--all`` it refuses (it replayed
every run's dead letters ever recorded)."""

from __future__ import annotations

from typer.testing import CliRunner

from tenfold.inference import cli


def test_replay_without_a_run_a_request_id_or_all_is_refused_before_reading_anything(monkeypatch) -> None:
    monkeypatch.setattr(cli, "get_settings", lambda env=None: (_ for _ in ()).throw(AssertionError("read settings")))
    result = CliRunner().invoke(cli.app, ["replay"])
    assert result.exit_code == 2, result.output
    assert result.exception is not None and isinstance(result.exception, SystemExit)
    assert "--run <run>, --request-id <id> or --all" in result.output
