"""Alerts: one call, :func:`send_alert`, that every failure path uses.

An alert is always logged (at ERROR, on the ``tenfold.alerts`` logger, one line starting ``ALERT [tenfold <env>]``:
:func:`log_marker`). In the cloud that line is what pages: Composer's task logs reach Cloud Logging, and the platform
stack's log-match alert policy on :func:`log_marker` mails the on-call channel (infra/components/observability.py).
Besides the log, hooks deliver it; none is configured by default:

* ``TENFOLD_ALERT_WEBHOOK`` -> ``settings.monitoring.alert_webhook_url``: POST ``{"text": ...}`` as JSON
  (a Slack incoming webhook, or any chat tool that accepts the same body);
* ``TENFOLD_ALERT_SMTP_HOST`` -> ``settings.monitoring.alert_smtp_host`` (``host`` or ``host:port``):
  an e-mail to ``settings.monitoring.notification_email``;
* ``TENFOLD_ALERT_FILE`` -> ``settings.monitoring.alert_file``: one JSON object per line, appended
  (what the tests read back); a relative path is made absolute against the working directory of the process
  that builds the settings, so Airflow's tasks (which run in ``TENFOLD_HOME``) append to the same file;
* :func:`register_hook`: any callable, for code that embeds Tenfold.

The webhook and the e-mail are tried again when they fail in a way that may pass (refused or timed out before the
request was sent, HTTP 5xx or 429, SMTP 4xx; a webhook or a relay that timed out or dropped the connection after
taking the whole request or message is not sent it again): :data:`RETRY_DELAYS_S` (1 and 2 s) between 3 tries, each bounded by :data:`TIMEOUT_S`. A hook
that still fails is logged and never hides the alert from the other hooks, nor the original error from the caller;
:func:`send_alert` returns which hooks failed (:attr:`Sent.delivered`), so a caller that records "alerted" (a
gate refusal's ``alerted``, monitor_drift's trigger record) records it only when every hook took the alert, and
the task's retry or the failure callback sends it again. In Airflow, :func:`airflow_failure_callback` is the
``on_failure_callback`` of every Tenfold DAG task: it alerts with the DAG, task, run and the exception, and records
that the try alerted. Airflow 3 runs it in the task's own process, so a task killed by a signal (SIGKILL, the OOM
killer) or lost fails without it: :func:`airflow_dag_failure_callback`, every Tenfold DAG's own
``on_failure_callback``, alerts for a failed run whose last failed try has no such record.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import logging
import smtplib
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from email.message import EmailMessage
from typing import TYPE_CHECKING, Any

from tenfold.config import Settings
from tenfold.config.settings import webhook_problem
from tenfold.fsio import open_lines_for_append

if TYPE_CHECKING:
    from tenfold.storage import Objects

LOGGER_NAME = "tenfold.alerts"
LOG_PREFIX = "ALERT"
log = logging.getLogger(LOGGER_NAME)


def env_tag(env: str) -> str:
    """``[tenfold <env>]``: the head of every alert's text (its log line, webhook text and e-mail subject)."""
    return f"[tenfold {env}]"


def log_marker(env: str) -> str:
    """The text every alert's log line in ``env`` starts with, and no other Tenfold line holds: the cloud's
    log-based alert policy matches it (infra/components/observability.py)."""
    return f"{LOG_PREFIX} {env_tag(env)}"


@dataclass(frozen=True)
class Alert:
    title: str
    details: dict[str, Any]
    env: str
    at: str = field(default_factory=lambda: dt.datetime.now(dt.UTC).isoformat(timespec="seconds"))

    def text(self) -> str:
        lines = [f"{env_tag(self.env)} {self.title}"]
        lines += [f"  {key}: {value}" for key, value in self.details.items()]
        return "\n".join(lines)


@dataclass(frozen=True)
class Sent:
    """What :func:`send_alert` sent, and the configured hooks that failed to deliver it (after their retries)."""

    alert: Alert
    failed: tuple[str, ...] = ()

    @property
    def delivered(self) -> bool:
        """Whether every configured hook took the alert (True with none configured: the log line is the alert)."""
        return not self.failed


AlertHook = Callable[[Settings, Alert], None]
_extra_hooks: list[AlertHook] = []

# The pauses between the tries of the webhook and the e-mail when they fail in a way that may pass: 3 tries, at worst
# 3 * TIMEOUT_S + 3 s. Module attributes, so tests can shorten them.
RETRY_DELAYS_S: tuple[float, ...] = (1.0, 2.0)
TIMEOUT_S = 10.0
_sleep = time.sleep


def register_hook(hook: AlertHook) -> None:
    """Deliver every later alert to ``hook`` too (in this process)."""
    if hook not in _extra_hooks:
        _extra_hooks.append(hook)


def unregister_hook(hook: AlertHook) -> None:
    if hook in _extra_hooks:
        _extra_hooks.remove(hook)


def _file_hook(settings: Settings, alert: Alert) -> None:
    path = settings.monitoring.alert_file
    assert path is not None
    path.parent.mkdir(parents=True, exist_ok=True)
    # One write of one line: appends from concurrent task processes do not interleave. A torn last line (a write cut
    # short by a full disk) is ended first, so this one is not glued to it.
    with open_lines_for_append(path) as out:
        out.write(json.dumps(asdict(alert), default=str, sort_keys=True) + "\n")


def scrubbed(settings: Settings, text: str) -> str:
    """``text`` without the webhook URL's secret part (its path and query), wherever it quotes it."""
    webhook = settings.monitoring.alert_webhook_url
    url = webhook.get_secret_value() if webhook is not None else ""
    if not url:
        return text
    parts = urllib.parse.urlsplit(url)
    secret = url[len(f"{parts.scheme}://{parts.netloc}"):] if parts.scheme and parts.netloc else url
    text = text.replace(url, "<webhook URL>").replace(secret, "/***") if secret else text
    if parts.password:  # user:password@host: the password, however an error quotes it
        for shown in {parts.password, urllib.parse.unquote(parts.password)}:
            text = text.replace(shown, "***")
    return text


def _with_retries(name: str, attempt: Callable[[], None], transient: Callable[[Exception], bool],
                  settings: Settings | None = None) -> None:
    """``attempt()``, tried again after each of :data:`RETRY_DELAYS_S` while it fails with a ``transient`` error."""
    for pause in (*RETRY_DELAYS_S, None):
        try:
            attempt()
            return
        except Exception as exc:
            if pause is None or not transient(exc):
                raise
            said = scrubbed(settings, str(exc)) if settings is not None else str(exc)
            log.warning("alert hook %s failed (%s: %s); trying again in %g s", name, type(exc).__name__, said, pause)
            _sleep(pause)


def _webhook_transient(exc: Exception) -> bool:
    """A 5xx or 429 answer, or a request that never reached the webhook (refused, unresolved, a connect timeout:
    urllib's URLError): worth another try; another 4xx is not. Nor is a timeout or reset while waiting for the
    answer, after the whole request was sent: the webhook may have taken it (a slow chat hook), and each try posted
    it again (three copies, then the caller's retry three more). It fails the hook once instead."""
    if isinstance(exc, urllib.error.HTTPError):
        return exc.code >= 500 or exc.code == 429
    return isinstance(exc, urllib.error.URLError)


class _RefuseRedirects(urllib.request.HTTPRedirectHandler):
    """A redirected POST is refused: urllib follows a 301/302/303 with a GET without the body, and a 2xx answer to
    that GET counted the alert as delivered when nothing was posted (an http:// URL on a host that redirects to
    https://). The new address is not said: it may hold the secret too."""

    def redirect_request(self, req: Any, fp: Any, code: int, msg: str, headers: Any, newurl: str) -> None:
        raise RuntimeError(f"webhook answered HTTP {code} (a redirect): the alert was not posted; set "
                           "TENFOLD_ALERT_WEBHOOK to the address it redirects to (often its https:// form)")


def _webhook_hook(settings: Settings, alert: Alert) -> None:
    webhook = settings.monitoring.alert_webhook_url
    assert webhook is not None
    url = webhook.get_secret_value()
    # Checked when the settings load too; settings made by model_copy skip that.
    if (problem := webhook_problem(url)) is not None:
        raise ValueError(f"{problem}; alerts still go to the log")
    parts = urllib.parse.urlsplit(url)
    headers = {"Content-Type": "application/json"}
    if "@" in parts.netloc:
        # user:password@host: urllib hands http.client the userinfo as the host, which refused it quoting the
        # password ("nonnumeric port: '<password>@host'") into every task's log. Sent as Basic auth instead.
        try:
            port = parts.port
        except ValueError:
            raise ValueError("TENFOLD_ALERT_WEBHOOK's port is not a number: fix the variable; alerts still go to the "
                             "log") from None
        host = f"[{parts.hostname}]" if ":" in (parts.hostname or "") else parts.hostname
        login = f"{urllib.parse.unquote(parts.username or '')}:{urllib.parse.unquote(parts.password or '')}"
        headers["Authorization"] = "Basic " + base64.b64encode(login.encode()).decode()
        url = urllib.parse.urlunsplit(parts._replace(netloc=f"{host}:{port}" if port else str(host)))
    body = json.dumps({"text": alert.text()}).encode()
    opener = urllib.request.build_opener(_RefuseRedirects)

    def post() -> None:
        request = urllib.request.Request(url, data=body, headers=headers, method="POST")
        with opener.open(request, timeout=TIMEOUT_S) as response:
            if response.status >= 300:
                raise RuntimeError(f"webhook answered HTTP {response.status}")

    _with_retries("webhook", post, _webhook_transient, settings)


class _Relay(smtplib.SMTP):
    """An SMTP session that knows when the message's body went out (the only bytes it sends: its commands are
    text). From then on the relay may have taken the mail whatever happens to its answer."""

    body_sent = False

    def send(self, s: Any) -> None:
        super().send(s)
        if not isinstance(s, str):
            self.body_sent = True


class _MaybeTaken(RuntimeError):
    """The relay dropped the session or did not answer after it had the whole message: not sent again."""


def _smtp_transient(exc: Exception) -> bool:
    """An SMTP 4xx (the relay's "try again later"), a dropped connection, or none at all: worth another try. Not a
    timeout or a dropped connection after the whole message was sent (:class:`_MaybeTaken`): a slow relay that was
    still scanning it would get it again, three copies, and the caller's retry three more."""
    if isinstance(exc, _MaybeTaken):
        return False
    if isinstance(exc, smtplib.SMTPResponseException):
        return 400 <= exc.smtp_code < 500
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        return all(400 <= code < 500 for code, _ in exc.recipients.values())
    if isinstance(exc, smtplib.SMTPServerDisconnected):
        return True
    return isinstance(exc, OSError) and not isinstance(exc, smtplib.SMTPException)  # refused, timed out


def _email_hook(settings: Settings, alert: Alert) -> None:
    relay = settings.monitoring.alert_smtp_host
    assert relay is not None
    host, _, port = relay.partition(":")
    message = EmailMessage()
    message["Subject"] = f"{env_tag(alert.env)} {alert.title}"
    message["From"] = settings.monitoring.notification_email
    message["To"] = settings.monitoring.notification_email
    message.set_content(alert.text())

    def send() -> None:
        smtp = _Relay(host, int(port or 25), timeout=TIMEOUT_S)
        try:
            smtp.send_message(message)
        except (smtplib.SMTPServerDisconnected, OSError) as exc:
            smtp.close()
            if smtp.body_sent and not isinstance(exc, smtplib.SMTPResponseException):
                raise _MaybeTaken(f"the mail relay {relay} had the whole message but did not confirm it "
                                  f"({type(exc).__name__}: {exc}); not sent again, it may have been delivered") from exc
            raise
        except BaseException:
            smtp.close()
            raise
        # Accepted: a relay that then answers QUIT with a 4xx (raised by SMTP's own context manager) had the mail
        # sent again, up to three times, or marked the hook failed and the alert sent again by the caller's retry.
        try:
            smtp.quit()
        except (smtplib.SMTPException, OSError):
            smtp.close()

    _with_retries("email", send, _smtp_transient)


def configured_hooks(settings: Settings) -> list[tuple[str, AlertHook]]:
    """The hooks an alert goes to under ``settings`` (besides the log), by name: each name names one hook.

    A re-send goes to the hooks of the names an earlier send recorded as failed (``send_alert(only=...)``, in this
    process or a later try's), so two hooks of one name (two closures of one factory, two lambdas, a function called
    ``webhook``) would both get it again, the one that took it too. A registered hook is named by its ``__name__``
    (its class's for a callable object: a ``repr`` would hold an address another process does not share), and the
    second of a name taken (the built-ins' first) by ``<name>#2``, then ``#3``: in registration order, which every try
    of the same code repeats."""
    hooks: list[tuple[str, AlertHook]] = []
    if settings.monitoring.alert_file:
        hooks.append(("file", _file_hook))
    webhook = settings.monitoring.alert_webhook_url
    if webhook is not None and webhook.get_secret_value():
        hooks.append(("webhook", _webhook_hook))
    if settings.monitoring.alert_smtp_host:
        hooks.append(("email", _email_hook))
    taken = {name for name, _ in hooks}
    for hook in _extra_hooks:
        name = base = str(getattr(hook, "__name__", None) or type(hook).__name__)
        count = 1
        while name in taken:
            count += 1
            name = f"{base}#{count}"
        taken.add(name)
        hooks.append((name, hook))
    return hooks


def send_alert(settings: Settings, title: str, details: Mapping[str, Any] | None = None, *,
               only: Collection[str] | None = None, log_line: bool = True) -> Sent:
    """Log an alert and deliver it to every configured hook (``only``: to those of these names, the ones that
    failed an earlier send of the same alert, so that the hooks that took it are not sent it again); returns what
    was sent and the hooks that failed.

    Never raises because of a hook: an alert is sent from failure paths, where a second error would
    hide the first. A caller that records the alert as sent checks :attr:`Sent.delivered` first.
    """
    alert = Alert(title=title, details=dict(details or {}), env=settings.env)
    if log_line:  # (the cloud's alert policy pages on this line: a re-send to the hooks that failed it says less)
        log.error("%s %s", LOG_PREFIX, alert.text())  # starts with log_marker(settings.env)
    else:
        log.warning("sending the alert %r again, to %s", title, ", ".join(sorted(only or ())) or "every hook")
    failed = []
    for name, hook in configured_hooks(settings):
        if only is not None and name not in only:
            continue
        try:
            hook(settings, alert)
        except Exception as exc:  # no traceback: its frames and messages may quote a secret (the webhook's URL)
            log.error("alert hook %s failed (%s: %s); the alert above was still logged", name, type(exc).__name__,
                      scrubbed(settings, str(exc)))
            failed.append(name)
    return Sent(alert, tuple(failed))


def _raised_from(exc: BaseException | None) -> Iterator[BaseException]:
    """``exc`` and the exceptions it was raised from (causes, then contexts), at most ten."""
    seen = 0
    while exc is not None and seen < 10:
        yield exc
        exc = exc.__cause__ or exc.__context__
        seen += 1


def undelivered(exc: BaseException | None) -> tuple[str, ...]:
    """The hooks that did not take the alert ``exc`` (or an exception it was raised from) sent itself: ``()`` when
    it sent none, or every hook took it."""
    return next((failed for e in _raised_from(exc) if (failed := tuple(getattr(e, "undelivered", ()) or ()))), ())


def already_alerted(exc: BaseException | None) -> bool:
    """Whether ``exc`` (or an exception it was raised from) already sent its own, richer alert."""
    return any(getattr(e, "alerted", False) for e in _raised_from(exc))


@dataclass(frozen=True)
class _FailedTry:
    """The try of a task instance that an Airflow callback's context names."""

    dag_id: str
    run_id: str
    task_id: str
    map_index: int
    try_number: Any

    @classmethod
    def of(cls, context: Mapping[str, Any], ti: Any) -> _FailedTry:
        map_index = getattr(ti, "map_index", None)
        return cls(dag_id=str(getattr(ti, "dag_id", None) or getattr(context.get("dag"), "dag_id", "?")),
                   run_id=str(context.get("run_id") or getattr(ti, "run_id", "?")),
                   task_id=str(getattr(ti, "task_id", "?")),
                   map_index=map_index if isinstance(map_index, int) else -1,
                   try_number=getattr(ti, "try_number", "?"))

    @property
    def task(self) -> str:
        """The task id, with the map index of a mapped task's instance."""
        return f"{self.task_id}[{self.map_index}]" if self.map_index >= 0 else self.task_id

    @property
    def record(self) -> str:
        """The name of the object that records this try's alert: a digest of what names the try (the sanitising of
        run keys), so that any run id (``manual__2026-01-05T03:00:00+00:00``) gives a safe object name."""
        from tenfold.config.names import scoped_key

        return scoped_key("alerted", self.dag_id, self.run_id, self.task_id, str(self.map_index),
                          str(self.try_number)) + ".json"


def _alert_records(settings: Settings) -> Objects:
    from tenfold.storage import lake_objects

    return lake_objects(settings, settings.monitoring.alert_records_prefix)


# How long a failure callback waits on the alert records (the lake): a store retrying for minutes must not outlast
# Airflow's grace for a task's process (task_success_overtime, 20 s) nor the DAG processor's for a callback
# (dag_file_processor_timeout, 50 s), which would kill the callback before its alert.
RECORD_WAIT_S = 5.0


def _bounded(what: str, call: Callable[[], Any]) -> Any:
    """``call()`` on a daemon thread, waited for :data:`RECORD_WAIT_S`; its error, or TimeoutError when it runs on."""
    import concurrent.futures
    import threading

    done: concurrent.futures.Future[Any] = concurrent.futures.Future()

    def run() -> None:
        try:
            done.set_result(call())
        except BaseException as exc:  # handed to the caller
            done.set_exception(exc)

    threading.Thread(target=run, name=f"tenfold-{what}", daemon=True).start()
    try:
        return done.result(timeout=RECORD_WAIT_S)
    except concurrent.futures.TimeoutError:
        if done.done():  # the store's own timeout (the same class since Python 3.11): its message as it is
            raise
        raise TimeoutError(f"no answer from the alert records' store in {RECORD_WAIT_S:g} s") from None


def _record_alerted(failed: _FailedTry, settings: Settings | None = None) -> None:
    """Record that ``failed`` alerted, so that the DAG's failure callback does not alert for it again. Best effort and
    bounded: a record not written costs a second alert at worst, and an error here must not hide the task's own."""
    try:
        from tenfold.config import get_settings

        settings = get_settings() if settings is None else settings
        records = _alert_records(settings)
        _bounded("alert-record", lambda: records.create(failed.record, json.dumps(asdict(failed), default=str).encode()))
    except Exception as exc:  # no traceback: as for a hook, its messages may quote a secret
        log.warning("could not record that %s.%s alerted (%s: %s); the DAG's failure callback may alert for it again",
                    failed.dag_id, failed.task, type(exc).__name__, exc)


def airflow_failure_callback(context: Mapping[str, Any]) -> None:
    """``on_failure_callback`` for Tenfold tasks: alert with the DAG, task, run and error.

    A failure that already alerted with its details (a quality gate refusal) is not alerted twice.
    Settings are resolved here, in the task process, from ``TENFOLD_ENV``. Either way the try's alert is recorded
    (:func:`_record_alerted`): the DAG's failure callback, :func:`airflow_dag_failure_callback`, then leaves it be.
    """
    from tenfold.config import get_settings

    exc = context.get("exception")
    ti = context.get("task_instance") or context.get("ti")
    failed = _FailedTry.of(context, ti)
    dag_id, task_id, run_id = failed.dag_id, failed.task_id, failed.run_id
    if already_alerted(exc):
        log.info("%s.%s failed after its own alert; not alerting twice", dag_id, task_id)
        _record_alerted(failed)
        return
    missed = undelivered(exc)  # its own alert reached the log and the other hooks: those are not sent it twice
    settings = get_settings()
    # Recorded first, then sent: hooks that cannot be reached take half a minute (three tries of each), longer than
    # Airflow lets a task's process run on after its failure, and a process killed there had written no record (the
    # DAG's callback then alerted again, as if the task had been killed). The alert's log line, which pages in the
    # cloud, follows at once.
    _record_alerted(failed, settings)
    send_alert(
        settings,
        f"Airflow task {dag_id}.{task_id} failed",
        {
            "dag_id": dag_id,
            "task_id": task_id,
            "run_id": run_id,
            "try_number": getattr(ti, "try_number", "?"),
            "error": f"{type(exc).__name__}: {exc}" if exc is not None else "unknown (no exception in the context)",
        },
        only=missed or None, log_line=not missed,
    )


def airflow_dag_failure_callback(context: Mapping[str, Any]) -> None:
    """``on_failure_callback`` for Tenfold DAGs: alert for a failed run whose failure did not alert.

    Airflow 3 runs a task's failure callback in the task's own process: a task killed by a signal (SIGKILL, the OOM
    killer) or lost on its last try fails without it, and nothing else alerts. The DAG processor runs this callback
    when a run fails. A run that failed by a task (reason ``task_failure``) comes with the failed task instance that
    ended last (``task_instance``): this alerts unless that try's alert is on record (:func:`airflow_failure_callback`
    records it). A run Airflow ended otherwise (``timed_out``, ``all_tasks_deadlocked``: it names a task that had not
    finished, or none) is alerted for the run, with its reason. Settings are resolved here, in the DAG processor, from
    ``TENFOLD_ENV``. Never raises.
    """
    ti = context.get("task_instance") or context.get("ti")
    failed = _FailedTry.of(context, ti)
    reason = context.get("reason") or "unknown"
    try:
        from tenfold.config import get_settings

        settings = get_settings()
        if ti is None or reason != "task_failure":
            # Airflow ended the run (timed out, deadlocked: a task it names had not finished), or it names no task
            # of a run that failed by one (a task removed since, only upstream failures): alerted for the run.
            ended = reason != "task_failure"
            send_alert(settings, f"Airflow DAG run {failed.dag_id} {failed.run_id} failed ({reason})",
                       {"dag_id": failed.dag_id, "run_id": failed.run_id, "reason": reason,
                        **({"unfinished_task" if ended else "task": failed.task} if ti is not None else {}),
                        "what_to_do": "see the run in the Airflow UI: "
                                      + ("Airflow ended it, not a task's error" if ended else "its failed tasks' logs")})
            return
        try:
            records = _alert_records(settings)
            recorded = _bounded("alert-record", lambda: records.exists(failed.record))
        except Exception as exc:  # alerting twice is better than not at all
            log.warning("could not read whether %s.%s alerted (%s: %s); alerting for it", failed.dag_id, failed.task,
                        type(exc).__name__, exc)
            recorded = False
        if recorded:
            log.info("%s.%s (try %s) failed after its own alert; not alerting twice", failed.dag_id, failed.task,
                     failed.try_number)
            return
        send_alert(
            settings,
            f"Airflow task {failed.dag_id}.{failed.task} failed without its own alert",
            {
                "dag_id": failed.dag_id,
                "run_id": failed.run_id,
                "task": failed.task,
                "try_number": failed.try_number,
                "reason": reason,
                "error": "the task's process ended without running its failure callback: killed by a signal (SIGKILL, "
                         "such as the OOM killer's) or lost; see the task's log",
            },
        )
    except Exception as exc:  # (settings that do not build): Airflow would log it too, less plainly
        log.error("the failure callback of the DAG run %s %s could not alert (%s: %s)", failed.dag_id, failed.run_id,
                  type(exc).__name__, exc)
