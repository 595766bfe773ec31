"""The alert webhook URL is a secret: ``tenfold config`` never prints it, and the inference pool's settings file
(which holds it) is readable by this user only, as the serving fleet's is."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from tenfold.cli import app
from tenfold.config import command_settings
from tenfold.config.settings import build_settings, get_settings

SECRET = "https://hooks.slack.com/services/T000/B000/SECRETXYZ"
runner = CliRunner()


@pytest.fixture
def webhook_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("TENFOLD_ENV", "local")
    monkeypatch.setenv("TENFOLD_HOME", str(tmp_path))
    monkeypatch.setenv("TENFOLD_ALERT_WEBHOOK", SECRET)
    get_settings.cache_clear()  # the settings of this environment, not those an earlier test cached
    yield
    get_settings.cache_clear()


@pytest.mark.parametrize("command", [["config", "show"], ["config", "get", "monitoring"],
                                     ["config", "get", "monitoring.alert_webhook_url"]])
def test_config_masks_the_alert_webhook(webhook_env: None, command: list[str]) -> None:
    out = runner.invoke(app, command)
    assert out.exit_code == 0, out.output
    assert "SECRETXYZ" not in out.output and "/services/" not in out.output
    assert "https://hooks.slack.com/***" in out.output


def test_the_inference_pool_writes_its_settings_for_this_user_only(tmp_path: Path) -> None:
    from tenfold.inference.pool import WorkerPool

    settings = build_settings("local", {"TENFOLD_HOME": str(tmp_path), "TENFOLD_ALERT_WEBHOOK": SECRET})
    pool = WorkerPool(settings, workers=1, restart=False)
    try:
        pool.start()
        path = pool.settings_path
        # The workers never alert, so the webhook is not in it; a workload's own settings may still hold what its
        # owner keeps private, so no one else may read it.
        assert "alert_webhook_url" in path.read_text() and "SECRETXYZ" not in path.read_text()
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    finally:
        pool.stop()


@pytest.mark.parametrize("command", [["config", "show"], ["config", "get", "storage.lake_uri"]])
def test_config_under_an_invalid_variable_is_one_line_naming_it(monkeypatch: pytest.MonkeyPatch,
                                                                command: list[str]) -> None:
    """`tenfold config` reads the environment itself: it printed pydantic's multi-line error, not the one line every
    other command gives."""
    monkeypatch.setenv("TENFOLD_TRAINING__EPOCHS", "x")
    get_settings.cache_clear()
    try:
        out = runner.invoke(app, command)
    finally:
        get_settings.cache_clear()
    assert out.exit_code == 2 and isinstance(out.exception, SystemExit), repr(out.exception)
    (line,) = out.output.strip().splitlines()
    assert line.startswith("error: invalid settings: ") and "TENFOLD_TRAINING__EPOCHS names no training setting" in line


def test_config_get_prints_a_dict_of_sections_as_json_objects() -> None:
    """`tenfold config get messaging.subscriptions` printed each subscription as its Python repr inside a JSON
    string (`"requests": "name='...' topic='...'"`), which `jq .requests.name` cannot read."""
    out = CliRunner().invoke(app, ["config", "get", "messaging.subscriptions", "--env", "local"])
    assert out.exit_code == 0, out.output
    subscriptions = command_settings("local").messaging.subscriptions
    assert json.loads(out.output)["requests"]["name"] == subscriptions["requests"].name
    assert json.loads(out.output)["requests"]["ack_deadline_s"] == subscriptions["requests"].ack_deadline_s


def test_the_settings_themselves_never_show_the_alert_webhook(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                               flaky_webhook: Any) -> None:
    """The webhook URL was a plain str in the settings: repr(settings), str(settings.monitoring) and model_dump_json()
    held it whole, hidden only where each caller hid it. A SecretStr now: none of them holds it, while the webhook
    hook still posts to the real URL and a child's TENFOLD_ALERT_WEBHOOK (settings_env) still carries it."""
    from contextlib import nullcontext
    from types import SimpleNamespace

    from tenfold.local import settings_env
    from tenfold.monitoring import alerts

    url = "https://hooks.example.com/services/T0/B0/SECRETXYZ"
    local = f"{flaky_webhook.url}/services/T0/B0/SECRETXYZ"  # the same secret path, on the tests' local webhook
    posted: list[str] = []

    def post(self: object, request: Any, *args: object, **kwargs: object) -> Any:
        posted.append(request.full_url)
        return nullcontext(SimpleNamespace(status=200))

    for hook in (url, local):
        settings = build_settings("local", {"TENFOLD_HOME": str(tmp_path), "TENFOLD_ALERT_WEBHOOK": hook})
        shown = {"repr(settings)": repr(settings), "str(settings)": str(settings),
                 "str(settings.monitoring)": str(settings.monitoring), "model_dump_json": settings.model_dump_json(),
                 "model_dump(mode=json)": json.dumps(settings.model_dump(mode="json")),
                 "model_dump()": str(settings.model_dump())}
        assert not [name for name, text in shown.items() if "SECRETXYZ" in text]
        assert settings_env(settings)["TENFOLD_ALERT_WEBHOOK"] == hook
        assert alerts.scrubbed(settings, f"failed posting to {hook}") == "failed posting to <webhook URL>"
        if hook == local:  # posted for real, to the local webhook
            assert alerts.send_alert(settings, "gate refused", {}).delivered
            (body,) = flaky_webhook.received
            assert "gate refused" in body["text"]
        else:  # what it would post to, without the network
            with monkeypatch.context() as patched:
                patched.setattr(alerts.urllib.request.OpenerDirector, "open", post)
                assert alerts.send_alert(settings, "gate refused", {}).delivered
            assert posted == [url]
