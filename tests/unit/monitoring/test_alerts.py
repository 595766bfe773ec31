"""Alerts: always logged, delivered to every configured hook (file, a real HTTP webhook, custom), never raising."""

from __future__ import annotations

import http.server
import json
import logging
import os
import threading
from types import SimpleNamespace

import pytest

from tenfold.config import build_settings
from tenfold.monitoring import alerts


@pytest.fixture
def webhook():
    received: list[dict] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/hook", received
    server.shutdown()


def test_an_alert_is_logged_and_delivered_to_every_hook(tmp_path, monkeypatch, webhook, caplog):
    url, received = webhook
    monkeypatch.setenv("TENFOLD_ALERT_FILE", str(tmp_path / "alerts.jsonl"))
    monkeypatch.setenv("TENFOLD_ALERT_WEBHOOK", url)
    settings = build_settings("local", os.environ)
    seen = []

    def custom(s, alert):
        seen.append(alert.title)

    def broken(s, alert):
        raise RuntimeError("pager down")

    alerts.register_hook(broken)
    alerts.register_hook(custom)
    try:
        with caplog.at_level(logging.ERROR, logger="tenfold.alerts"):
            sent = alerts.send_alert(settings, "gate refused features 2013-02", {"failed": "expect_x(label)"})
    finally:
        alerts.unregister_hook(broken)
        alerts.unregister_hook(custom)
    assert sent.env == "local"
    assert "ALERT [tenfold local] gate refused features 2013-02" in caplog.text
    assert "alert hook broken failed" in caplog.text  # logged, not raised, and later hooks still ran
    (line,) = (tmp_path / "alerts.jsonl").read_text().splitlines()
    assert json.loads(line)["details"] == {"failed": "expect_x(label)"}
    assert received and "gate refused features 2013-02" in received[0]["text"] and "expect_x(label)" in received[0]["text"]
    assert seen == ["gate refused features 2013-02"]


def test_no_hooks_by_default(monkeypatch):
    for var in ("TENFOLD_ALERT_FILE", "TENFOLD_ALERT_WEBHOOK", "TENFOLD_ALERT_SMTP_HOST"):
        monkeypatch.delenv(var, raising=False)
    assert alerts.configured_hooks(build_settings("local", os.environ)) == []


def test_the_airflow_callback_alerts_once_per_failure(tmp_path, monkeypatch):
    monkeypatch.setenv("TENFOLD_ALERT_FILE", str(tmp_path / "alerts.jsonl"))
    monkeypatch.setattr("tenfold.config.get_settings", lambda env=None: build_settings("local", os.environ))
    ti = SimpleNamespace(dag_id="build_features", task_id="build_features", run_id="manual__1", try_number=3)
    alerts.airflow_failure_callback({"task_instance": ti, "run_id": "manual__1", "exception": RuntimeError("spark exit 1")})
    (alert,) = [json.loads(x) for x in (tmp_path / "alerts.jsonl").read_text().splitlines()]
    assert alert["title"] == "Airflow task build_features.build_features failed"
    assert alert["details"]["error"] == "RuntimeError: spark exit 1" and alert["details"]["try_number"] == 3

    # a gate refusal already sent its detailed alert: the callback does not repeat it
    refused = RuntimeError("gate")
    refused.alerted = True  # type: ignore[attr-defined]
    try:
        raise ValueError("wrapped") from refused
    except ValueError as wrapped:
        alerts.airflow_failure_callback({"task_instance": ti, "exception": wrapped})
    assert len((tmp_path / "alerts.jsonl").read_text().splitlines()) == 1
