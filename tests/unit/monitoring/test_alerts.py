"""Alerts: always logged, delivered to every configured hook (file, a real HTTP webhook, custom), never raising; the
webhook and the e-mail tried again when they fail in a way that may pass, and what was not delivered said."""

from __future__ import annotations

import json
import logging
import os
import re
import socketserver
import threading
import time
from types import SimpleNamespace

import pytest
from pydantic import SecretStr

from tenfold.config import build_settings
from tenfold.monitoring import alerts


def test_an_alert_is_logged_and_delivered_to_every_hook(tmp_path, monkeypatch, flaky_webhook, caplog):
    url, received = flaky_webhook.url, flaky_webhook.received  # it fails no POST unless told to
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
    assert sent.alert.env == "local"
    assert sent.failed == ("broken",) and not sent.delivered
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
    monkeypatch.setenv("TENFOLD_HOME", str(tmp_path / "home"))  # its lake holds the record of each alert
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


def _failed_try(task_id="score", try_number=2, map_index=1):
    """A task instance as the callbacks' contexts hold it (Airflow's RuntimeTaskInstance has these attributes)."""
    return SimpleNamespace(dag_id="batch_inference", task_id=task_id, run_id="manual__2026-01-05T03:00:00+00:00",
                           map_index=map_index, try_number=try_number)


@pytest.fixture
def alert_file(tmp_path, monkeypatch):
    """The alerts the file hook took, under settings resolved the way the callbacks resolve them; the lake (and the
    alert records in it) under ``tmp_path``."""
    path = tmp_path / "alerts.jsonl"
    monkeypatch.setenv("TENFOLD_ALERT_FILE", str(path))
    monkeypatch.setenv("TENFOLD_HOME", str(tmp_path / "home"))
    for var in ("TENFOLD_ALERT_WEBHOOK", "TENFOLD_ALERT_SMTP_HOST"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr("tenfold.config.get_settings", lambda env=None: build_settings("local", os.environ))
    return lambda: [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def test_a_failure_its_task_callback_alerted_is_not_alerted_again_by_the_dag_callback(alert_file, tmp_path):
    ti = _failed_try()
    alerts.airflow_failure_callback({"task_instance": ti, "run_id": ti.run_id, "exception": RuntimeError("boom")})
    (alert,) = alert_file()
    assert alert["title"] == "Airflow task batch_inference.score failed"
    assert len(list((tmp_path / "home" / "lake" / "_alerts").iterdir())) == 1  # its record, in the lake

    alerts.airflow_dag_failure_callback({"task_instance": ti, "ti": ti, "run_id": ti.run_id, "reason": "task_failure"})
    assert alert_file() == [alert]


@pytest.mark.parametrize("other", [{"try_number": 3}, {"task_id": "publish"}, {"map_index": 0}],
                         ids=["another try", "another task", "another map index"])
def test_a_task_killed_on_its_last_try_is_alerted_by_the_dag_callback(alert_file, other):
    """Airflow 3 runs a task's failure callback in its own process: one SIGKILLed (the OOM killer) on its last try
    failed with no alert at all, and no DAG had a failure callback."""
    alerts.airflow_failure_callback({"task_instance": _failed_try(), "exception": RuntimeError("boom")})
    killed = _failed_try(**other)
    alerts.airflow_dag_failure_callback({"task_instance": killed, "ti": killed, "run_id": killed.run_id,
                                         "reason": "task_failure"})
    (_, alert) = alert_file()
    task = f"{killed.task_id}[{killed.map_index}]"
    assert alert["title"] == f"Airflow task batch_inference.{task} failed without its own alert"
    details = alert["details"]
    assert details["run_id"] == "manual__2026-01-05T03:00:00+00:00" and details["task"] == task
    assert details["try_number"] == killed.try_number and details["reason"] == "task_failure"
    assert "killed by a signal (SIGKILL" in details["error"] and "or lost" in details["error"]


def test_a_run_that_failed_without_a_failed_task_is_alerted_by_the_dag_callback(alert_file):
    dag = SimpleNamespace(dag_id="train_model")
    alerts.airflow_dag_failure_callback({"dag": dag, "run_id": "scheduled__2026-01-05", "reason": "timed_out"})
    (alert,) = alert_file()
    assert alert["title"] == "Airflow DAG run train_model scheduled__2026-01-05 failed (timed_out)"
    assert alert["details"] == {"dag_id": "train_model", "run_id": "scheduled__2026-01-05", "reason": "timed_out",
                                "what_to_do": "see the run in the Airflow UI: Airflow ended it, not a task's error"}
    # A run that failed by a task Airflow does not name (removed since, or only upstream failures): not "ended by it".
    alerts.airflow_dag_failure_callback({"dag": dag, "run_id": "scheduled__2026-01-12", "reason": "task_failure"})
    assert alert_file()[1]["details"]["what_to_do"] == "see the run in the Airflow UI: its failed tasks' logs"


def test_a_run_airflow_ended_naming_an_unfinished_task_is_not_said_to_be_a_killed_task(alert_file):
    """Airflow 3.3 hands a timed-out or deadlocked run's callback the task that had not finished: it was alerted as
    "failed without its own alert ... killed by a signal (SIGKILL, the OOM killer)", sending people after a kill."""
    ti = _failed_try(try_number=1)
    alerts.airflow_dag_failure_callback({"task_instance": ti, "run_id": ti.run_id, "reason": "all_tasks_deadlocked"})
    (alert,) = alert_file()
    assert alert["title"] == f"Airflow DAG run {ti.dag_id} {ti.run_id} failed (all_tasks_deadlocked)"
    assert alert["details"]["unfinished_task"] == f"{ti.task_id}[1]" and "killed" not in json.dumps(alert)


def test_the_alert_records_are_waited_on_for_seconds_not_minutes(alert_file, monkeypatch):
    """The records live in the lake: a store retrying for minutes (GCS answering 5xx) outlasted the DAG processor's
    grace for a callback, which was killed before its alert; and the task's record, written after hooks that could
    not be reached, outlasted Airflow's grace for the task's process, so the run's failure alerted a second time."""
    import time

    class Hung:
        def exists(self, name: str) -> bool:
            time.sleep(30)
            return True

    real_records = alerts._alert_records
    monkeypatch.setattr(alerts, "RECORD_WAIT_S", 0.5)
    monkeypatch.setattr(alerts, "_alert_records", lambda settings: Hung())
    ti = _failed_try()
    started = time.monotonic()
    alerts.airflow_dag_failure_callback({"task_instance": ti, "run_id": ti.run_id, "reason": "task_failure"})
    assert time.monotonic() - started < 5
    (alert,) = alert_file()
    assert alert["title"].endswith("failed without its own alert")  # not known to have alerted: alerted

    # The task's own record is written before its hooks are tried (a hook sees it there already).
    monkeypatch.setattr(alerts, "_alert_records", real_records)
    seen: list[bool] = []

    def hook(settings: object, alert: object) -> None:
        seen.append(alerts._alert_records(settings).exists(alerts._FailedTry.of({}, ti).record))

    alerts.register_hook(hook)
    try:
        alerts.airflow_failure_callback({"task_instance": ti, "run_id": ti.run_id, "exception": RuntimeError("boom")})
    finally:
        alerts.unregister_hook(hook)
    assert seen == [True]


def test_a_failure_that_alerted_itself_is_recorded_so_the_dag_callback_stays_silent(alert_file):
    ti = _failed_try(task_id="validate", map_index=-1)
    refused = RuntimeError("gate refused features 2013-02")
    refused.alerted = True  # type: ignore[attr-defined]
    alerts.airflow_failure_callback({"task_instance": ti, "exception": refused})
    alerts.airflow_dag_failure_callback({"task_instance": ti, "run_id": ti.run_id, "reason": "task_failure"})
    assert alert_file() == []


def test_the_dag_callback_alerts_when_it_cannot_read_the_records_and_never_raises(alert_file, monkeypatch, caplog):
    ti = _failed_try()
    alerts.airflow_failure_callback({"task_instance": ti, "exception": RuntimeError("boom")})

    def unreadable(settings):
        raise OSError("bucket unreachable")

    monkeypatch.setattr(alerts, "_alert_records", unreadable)
    alerts.airflow_dag_failure_callback({"task_instance": ti, "run_id": ti.run_id, "reason": "task_failure"})
    assert [a["title"] for a in alert_file()][1:] == ["Airflow task batch_inference.score[1] failed without its own alert"]

    def unknown(env=None):
        raise ValueError("TENFOLD_ENV='nowhere' is not an environment")

    monkeypatch.setattr("tenfold.config.get_settings", unknown)
    with caplog.at_level(logging.ERROR, logger="tenfold.alerts"):
        alerts.airflow_dag_failure_callback({"task_instance": ti, "run_id": ti.run_id, "reason": "task_failure"})
    assert "could not alert (ValueError: TENFOLD_ENV='nowhere' is not an environment)" in caplog.text


def test_a_webhook_that_answers_503_is_tried_again_and_what_it_never_took_is_said(make_settings, flaky_webhook, caplog):
    """One POST with no retry: a webhook that answered 503 once lost the page for good, and send_alert said nothing
    of it, so the callers recorded it as alerted (the gate's refusal, monitor_drift's trigger)."""
    settings = flaky_webhook.on(make_settings())
    flaky_webhook.failures = 2
    sent = alerts.send_alert(settings, "drift: retraining v1", {"months": "2013-08"})
    assert flaky_webhook.tries == 3 and flaky_webhook.pauses == [1.0, 2.0]
    (body,) = flaky_webhook.received
    assert "drift: retraining v1" in body["text"] and sent.delivered

    flaky_webhook.failures, flaky_webhook.tries, flaky_webhook.pauses[:] = 3, 0, []
    with caplog.at_level(logging.ERROR, logger="tenfold.alerts"):
        sent = alerts.send_alert(settings, "drift: retraining v2", {})
    assert not sent.delivered and sent.failed == ("webhook",) and flaky_webhook.tries == 3  # 3 tries in all
    assert "ALERT [tenfold local] drift: retraining v2" in caplog.text  # logged all the same
    assert [json.loads(x)["title"] for x in settings.monitoring.alert_file.read_text().splitlines()] == [
        "drift: retraining v1", "drift: retraining v2"]  # and in the file, once each

    for status, tries in ((429, 2), (400, 1)):  # too many requests is worth another try; a bad request is not
        flaky_webhook.failures, flaky_webhook.status, flaky_webhook.tries = 1, status, 0
        assert alerts.send_alert(settings, "again", {}).delivered is (status == 429) and flaky_webhook.tries == tries

    flaky_webhook.server.shutdown()
    flaky_webhook.server.server_close()
    flaky_webhook.pauses[:] = []
    assert alerts.send_alert(settings, "nobody listens", {}).failed == ("webhook",)
    assert flaky_webhook.pauses == [1.0, 2.0]  # refused: tried again too


class FlakySmtp(socketserver.ThreadingTCPServer):
    """A mail relay on 127.0.0.1 that greets the first ``busy`` connections with 421 ("try again later")."""

    daemon_threads = allow_reuse_address = True

    def __init__(self, busy: int, quit_reply: str = "221 bye", answer_after_s: float = 0.0) -> None:
        self.busy, self.messages, self.answer_after_s = busy, [], answer_after_s

        class Handler(socketserver.StreamRequestHandler):
            def handle(handler) -> None:
                def say(line: str) -> None:
                    handler.wfile.write(line.encode() + b"\r\n")

                if self.busy > 0:
                    self.busy -= 1
                    return say("421 busy, try again later")
                say("220 relay")
                while line := handler.rfile.readline().decode().strip():
                    verb = line.split()[0].upper()
                    if verb == "DATA":
                        say("354 go on")
                        self.messages.append(b"".join(iter(lambda: handler.rfile.readline(), b".\r\n")).decode())
                        time.sleep(self.answer_after_s)  # a relay scanning the mail before it answers
                        say("250 queued")
                    elif verb == "QUIT":
                        return say(quit_reply)
                    else:
                        say("250 ok")

        super().__init__(("127.0.0.1", 0), Handler)


def test_an_email_relay_that_says_try_again_later_is_tried_again(make_settings, monkeypatch):
    pauses: list[float] = []
    monkeypatch.setattr(alerts, "_sleep", pauses.append, raising=False)
    relay = FlakySmtp(busy=2)
    threading.Thread(target=relay.serve_forever, daemon=True).start()
    try:
        settings = make_settings(monitoring={"alert_smtp_host": f"127.0.0.1:{relay.server_address[1]}"})
        sent = alerts.send_alert(settings, "gate refused features 2013-02", {})
        (message,) = relay.messages
        assert "gate refused features 2013-02" in message and pauses == [1.0, 2.0] and sent.delivered
        relay.busy = 3
        assert alerts.send_alert(settings, "again", {}).failed == ("email",) and len(relay.messages) == 1
    finally:
        relay.shutdown()
        relay.server_close()


def test_a_relay_that_had_the_whole_mail_but_answered_too_late_is_not_sent_it_again(make_settings, monkeypatch):
    """A timeout waiting for the relay's answer to the message's final dot: the relay may have taken it (a slow
    content scan). It was sent again, three copies, and the hook still failed, so the caller's retry sent three
    more."""
    monkeypatch.setattr(alerts, "_sleep", lambda s: None, raising=False)
    monkeypatch.setattr(alerts, "TIMEOUT_S", 0.3)
    relay = FlakySmtp(busy=0, answer_after_s=1.0)
    threading.Thread(target=relay.serve_forever, daemon=True).start()
    try:
        settings = make_settings(monitoring={"alert_smtp_host": f"127.0.0.1:{relay.server_address[1]}"})
        sent = alerts.send_alert(settings, "gate refused features 2013-02", {})
        assert sent.failed == ("email",) and len(relay.messages) == 1
        relay.busy = 1  # refused before any message: still tried again
        relay.answer_after_s = 0.0
        assert alerts.send_alert(settings, "again", {}).delivered and len(relay.messages) == 2
    finally:
        relay.shutdown()
        relay.server_close()


def test_a_malformed_webhook_url_never_reaches_the_log(make_settings, caplog):
    """A webhook URL is a secret: pasted without its scheme, urllib's "unknown url type: '<the URL>'" went to the
    log with its traceback on every alert."""
    secret = "/services/T0/B0/SECRETTOKEN"
    # A control character: http.client refused it quoting the path escaped, which the scrubbing could not find.
    for url in (f"hooks.example.com{secret}", f"https://hooks.example.com{secret} ",
                f"https://hooks.example.com{secret}\x7f", f"https://hooks.example.com{secret}\x01"):
        settings = make_settings(monitoring={"alert_webhook_url": SecretStr(url)})
        with caplog.at_level(logging.DEBUG):
            sent = alerts.send_alert(settings, "gate refused", {})
        assert sent.failed == ("webhook",)
        assert "not an http(s) URL" in caplog.text and "SECRETTOKEN" not in caplog.text
        caplog.clear()


def test_a_webhook_with_a_login_in_its_url_is_posted_with_basic_auth_and_never_logs_it(make_settings, flaky_webhook,
                                                                                         caplog):
    """https://bot:S3cr3tPw@host/...: urllib handed http.client "bot:S3cr3tPw@host" as the host, which failed with
    "nonnumeric port: 'S3cr3tPw@host'" into the log on every alert, the password with it."""
    import base64

    url = flaky_webhook.url.replace("http://", "http://bot:S3cr3t%40Pw@")
    settings = make_settings(monitoring={"alert_webhook_url": SecretStr(url)})
    with caplog.at_level(logging.DEBUG):
        sent = alerts.send_alert(settings, "gate refused", {})
    assert sent.delivered and sent.failed == (), caplog.text
    assert flaky_webhook.authorization == ["Basic " + base64.b64encode(b"bot:S3cr3t@Pw").decode()]
    assert "S3cr3t" not in caplog.text
    # an error that quotes the login is scrubbed too
    assert "S3cr3t" not in alerts.scrubbed(settings, "nonnumeric port: 'S3cr3t%40Pw@127.0.0.1' (S3cr3t@Pw)")


def test_an_error_quoting_the_webhook_url_is_logged_without_its_secret(make_settings, caplog):
    def quoting(settings, alert):  # as urllib's InvalidURL and ValueError do
        raise ValueError(f"unknown url type: {settings.monitoring.alert_webhook_url.get_secret_value()!r}")

    settings = make_settings(monitoring={"alert_webhook_url": SecretStr("https://hooks.example.com/services/SECRETTOKEN")})
    alerts.register_hook(quoting)
    try:
        with caplog.at_level(logging.DEBUG):
            assert alerts.send_alert(settings, "gate refused", {}).failed[-1] == "quoting"
    finally:
        alerts.unregister_hook(quoting)
    assert "alert hook quoting failed (ValueError: unknown url type: '<webhook URL>')" in caplog.text
    assert "SECRETTOKEN" not in caplog.text


def test_a_mail_the_relay_accepted_is_not_sent_again_when_it_answers_quit_badly(make_settings, monkeypatch):
    """SMTP's context manager raises when QUIT's answer is not 221: a 421 there had the accepted mail sent three
    times, and a 5xx marked the hook failed (so the caller's retry sent it again)."""
    monkeypatch.setattr(alerts, "_sleep", lambda pause: None, raising=False)
    for reply in ("421 closing", "554 no"):
        relay = FlakySmtp(busy=0, quit_reply=reply)
        threading.Thread(target=relay.serve_forever, daemon=True).start()
        try:
            settings = make_settings(monitoring={"alert_smtp_host": f"127.0.0.1:{relay.server_address[1]}"})
            sent = alerts.send_alert(settings, "gate refused features 2013-03", {})
            assert len(relay.messages) == 1 and sent.delivered and sent.failed == (), (reply, sent)
        finally:
            relay.shutdown()
            relay.server_close()


def test_a_webhook_that_redirects_is_not_counted_as_delivered(make_settings):
    """urllib follows a 301 with a GET without the body: a 200 to it counted the alert delivered, nothing posted."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    seen: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            seen.append("POST")
            self.send_response(301)
            self.send_header("Location", f"http://127.0.0.1:{self.server.server_address[1]}/moved/SECRETTOKEN")
            self.end_headers()

        def do_GET(self) -> None:
            seen.append("GET")
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        settings = make_settings(monitoring={"alert_webhook_url": SecretStr(f"http://127.0.0.1:{server.server_address[1]}/hook")})
        sent = alerts.send_alert(settings, "drift: retraining v3", {})
    finally:
        server.shutdown()
        server.server_close()
    assert not sent.delivered and sent.failed == ("webhook",)
    assert seen == ["POST"]  # not followed (and not tried again: a redirect is not an outage)


def test_a_webhook_that_took_the_alert_but_answers_late_is_not_posted_it_again(make_settings, monkeypatch):
    """A timeout while reading the answer, after the whole request was sent, was retried like a refused connection:
    a slow chat webhook got the alert three times (then the caller's retry three more)."""
    import http.server
    import threading

    from tenfold.monitoring import alerts

    posts: list[bytes] = []
    answered = threading.Event()

    class Slow(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            posts.append(self.rfile.read(int(self.headers["Content-Length"])))
            answered.wait(5)  # answers only after the client gave up
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Slow)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setattr(alerts, "TIMEOUT_S", 0.3)
    monkeypatch.setattr(alerts, "_sleep", lambda seconds: None)
    settings = make_settings(monitoring={"alert_webhook_url": SecretStr(f"http://127.0.0.1:{server.server_port}/hook")})
    try:
        sent = alerts.send_alert(settings, "drift: retraining v1", {})
    finally:
        answered.set()
        server.shutdown()
        server.server_close()
    assert len(posts) == 1, f"posted {len(posts)} times"
    assert sent.failed == ("webhook",)  # not known to be delivered: the caller may send it again, once


def test_a_plain_http_webhook_beyond_this_machine_is_refused_without_posting(make_settings, caplog, monkeypatch):
    """A webhook's secret is its path: an http:// URL to another host sent it over the network in clear text on every
    alert. Refused (and named, without the secret); http:// to loopback (as the tests' hooks use) or a private address
    (an internal Alertmanager) still posts."""
    posted = []
    monkeypatch.setattr(alerts.urllib.request.OpenerDirector, "open", lambda self, *a, **k: posted.append(a))
    for url in ("http://hooks.example.com/services/T0/SECRETTOKEN", "http://8.8.8.8:8080/SECRETTOKEN"):
        with caplog.at_level(logging.DEBUG):
            sent = alerts.send_alert(make_settings(monitoring={"alert_webhook_url": SecretStr(url)}), "gate refused", {})
        assert sent.failed == ("webhook",) and not posted
        assert "plain http:// URL to " in caplog.text and "use its https:// form" in caplog.text
        assert "SECRETTOKEN" not in caplog.text
        caplog.clear()
    from tenfold.config.settings import private_host

    for host in ("127.0.0.1", "localhost", "[::1]", "10.1.2.3", "192.168.0.7", "172.20.0.1", "100.100.1.2", "fd00::5"):
        assert private_host(host.strip("[]")), host  # an internal hook too (a Tailscale address among them)
    for host in ("127.example.com", "8.8.8.8", "169.254.169.254", "2001::1", "203.0.113.9"):  # 2001::/32: Teredo
        assert not private_host(host), host


@pytest.mark.parametrize(("variable", "value", "message"), [
    ("TENFOLD_ALERT_WEBHOOK", "http://hooks.example.com/services/T0/SECRETTOKEN", "plain http:// URL to hooks.example.com"),
    ("TENFOLD_ALERT_WEBHOOK", "hooks.example.com/services/T0/SECRETTOKEN", "not an http(s) URL with a host"),
    ("TENFOLD_ALERT_WEBHOOK", "https://[hooks.example.com/SECRETTOKEN", "not an http(s) URL with a host"),
    # Each failed every post (InvalidURL, UnicodeEncodeError): a hook down for good, found at the first alert.
    ("TENFOLD_ALERT_WEBHOOK", "https://hooks.example.com:abc/T0/SECRETTOKEN", "a port that is not a number from 1"),
    ("TENFOLD_ALERT_WEBHOOK", "https://hooks.example.com:99999/T0/SECRETTOKEN", "a port that is not a number from 1"),
    ("TENFOLD_ALERT_WEBHOOK", "https://hooks.example.com:0/T0/SECRETTOKEN", "a port that is not a number from 1"),
    ("TENFOLD_ALERT_WEBHOOK", "https://hooks.example.com/T0/SECRÉTTOKEN", "a character outside ASCII"),
    ("TENFOLD_ALERT_EMAIL", "on-call team", "is not one e-mail address"),
    ("TENFOLD_ALERT_EMAIL", "a@example.com, b@example.com", "is not one e-mail address"),
])
def test_an_alert_hook_that_cannot_work_is_refused_when_the_settings_load(variable, value, message):
    """Accepted at load, a plain-http or malformed webhook failed the first alert (perhaps months later), into the
    log only, and the drift monitor's task for an alert not delivered; an address that is not one, the e-mail or
    `cdktn deploy`. Refused by name, never quoting the webhook (a secret)."""
    with pytest.raises(ValueError, match=re.escape(message)) as refused:
        build_settings("local", {variable: value})
    assert "SECRETTOKEN" not in str(refused.value) and "SECRÉTTOKEN" not in str(refused.value)
    assert build_settings("local", {"TENFOLD_ALERT_WEBHOOK": "https://hooks.example.com:8443/T0/SECRETTOKEN"})
    assert build_settings("local", {"TENFOLD_ALERT_WEBHOOK": "https://hooks.bücher.example/T0/SECRETTOKEN"})  # IDNA
    assert build_settings("local", {"TENFOLD_ALERT_WEBHOOK": "https://hooks.example.com/services/T0/SECRETTOKEN",
                                    "TENFOLD_ALERT_EMAIL": "ml-oncall@example.com"}).monitoring.alert_webhook_url
    assert build_settings("local", {"TENFOLD_ALERT_EMAIL": "root@localhost"}).monitoring.notification_email  # a local box


@pytest.mark.parametrize("address", ["root@localhost", "ops@acme.", "ops@.acme"])
def test_the_cloud_refuses_an_on_call_address_without_an_internet_domain(address):
    """root@localhost suits a local relay; in dev and prod the address is a Cloud Monitoring e-mail channel's, mailed
    from Google's servers, and was deployed as one that could never deliver an alert."""
    assert build_settings("local", {"TENFOLD_ALERT_EMAIL": address}).monitoring.notification_email == address
    for env in ("dev", "prod"):
        with pytest.raises(ValueError, match=re.escape(f"TENFOLD_ALERT_EMAIL {address!r} has no internet domain")):
            build_settings(env, {"TENFOLD_ALERT_EMAIL": address})
    assert build_settings("prod", {"TENFOLD_ALERT_EMAIL": "oncall@acme.test"}).monitoring.notification_email


def test_a_resend_reaches_only_the_hook_that_failed_when_two_hooks_share_a_name(tmp_path, monkeypatch):
    """Hooks were named by __name__ alone: two closures of one factory were both "hook", so the re-send to the one
    that failed reached the one that had taken the alert as well, once more on every retry."""
    for var in ("TENFOLD_ALERT_FILE", "TENFOLD_ALERT_WEBHOOK", "TENFOLD_ALERT_SMTP_HOST"):
        monkeypatch.delenv(var, raising=False)
    settings = build_settings("local", os.environ)
    calls = {"pager": 0, "chat": 0}

    def factory(channel, *, down):
        def hook(s, alert):
            calls[channel] += 1
            if down:
                raise RuntimeError(f"{channel} down")
        return hook

    chat, pager = factory("chat", down=False), factory("pager", down=True)
    alerts.register_hook(chat)
    alerts.register_hook(pager)
    try:
        names = [name for name, _ in alerts.configured_hooks(settings)]
        sent = alerts.send_alert(settings, "drift on 2013-03")
        again = alerts.send_alert(settings, "drift on 2013-03", only=set(sent.failed), log_line=False)
    finally:
        alerts.unregister_hook(chat)
        alerts.unregister_hook(pager)
    assert calls == {"chat": 1, "pager": 2}  # the chat took it once, and was not sent it again
    assert names == ["hook", "hook#2"]
    assert sent.failed == ("hook#2",) and again.failed == ("hook#2",)


def test_a_registered_hook_never_takes_a_built_in_hooks_name(tmp_path, monkeypatch):
    """A function called ``file`` beside the file hook: the file hook failing (its folder is a regular file), the
    re-send to "file" reached the registered one too."""
    (tmp_path / "not-a-folder").write_text("")
    monkeypatch.setenv("TENFOLD_ALERT_FILE", str(tmp_path / "not-a-folder" / "alerts.jsonl"))
    monkeypatch.delenv("TENFOLD_ALERT_WEBHOOK", raising=False)
    monkeypatch.delenv("TENFOLD_ALERT_SMTP_HOST", raising=False)
    settings = build_settings("local", os.environ)
    seen = []

    def file(s, alert):
        seen.append(alert.title)

    alerts.register_hook(file)
    try:
        sent = alerts.send_alert(settings, "gate refused 2013-04")
        again = alerts.send_alert(settings, "gate refused 2013-04", only=set(sent.failed), log_line=False)
    finally:
        alerts.unregister_hook(file)
    assert seen == ["gate refused 2013-04"]
    assert sent.failed == ("file",) and again.failed == ("file",)  # the built-in one, by its own name


def test_a_callable_hook_is_named_by_its_class_not_by_an_address(monkeypatch):
    """Named by repr, a callable object's name held its address: a later try (another process) never matched the
    name an earlier one recorded as failed, so the hook that missed the alert was never sent it again."""
    for var in ("TENFOLD_ALERT_FILE", "TENFOLD_ALERT_WEBHOOK", "TENFOLD_ALERT_SMTP_HOST"):
        monkeypatch.delenv(var, raising=False)

    class Pager:
        def __call__(self, s, alert):
            pass

    first, second = Pager(), Pager()
    alerts.register_hook(first)
    alerts.register_hook(second)
    try:
        names = [name for name, _ in alerts.configured_hooks(build_settings("local", os.environ))]
    finally:
        alerts.unregister_hook(first)
        alerts.unregister_hook(second)
    assert names == ["Pager", "Pager#2"]
