"""A small client for Airflow 3's REST API (``/api/v2``), authenticated like a person in the UI.

``make demo`` drives the real scheduler through it (unpause, backfill, trigger, watch), so what the
demo runs is exactly what a user sees and can re-run in the Airflow UI. Later stages (rollout,
retraining) use the same client to watch their DAG runs.
"""

from __future__ import annotations

import http.client
import json
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from typing import Any

from tenfold.local import loopback

TERMINAL = {"success", "failed"}
TRANSIENT_HTTP = {502, 503, 504}
# Airflow's answer when SQLite was locked by another writer (the scheduler, a task) while it created something:
# the transaction was rolled back, nothing was created, so even a change is safe to send again.
ROLLED_BACK = "Database is locked"
# Airflow's answer to a backfill while the DAG has one not yet marked complete. Its scheduler marks a backfill
# complete on a 30 s timer after the last run ends, so a backfill asked for right after the previous one finished
# meets this too.
BACKFILL_OPEN = "already a running backfill"
BACKFILL_WAIT_S = 150.0


TOKEN_PATH = "/auth/token"
# Task instances asked for per page: the API server's default cap (``[api] maximum_page_limit``); a smaller cap
# there only means more pages.
TASK_PAGE = 100


class AirflowApiError(RuntimeError):
    """The Airflow API refused a request or a DAG run ended badly; the message says which."""


def _may_not_have_landed(exc: AirflowApiError) -> bool:
    """A change that timed out or met a 5xx (a database error is Airflow's 500): it may or may not have been carried
    out, so an idempotent one is sent again (a trigger after looking its run up)."""
    said = str(exc)
    return "did not answer" in said or any(f"HTTP {code}" in said for code in (500, *TRANSIENT_HTTP))


class AirflowApi:
    def __init__(self, base_url: str, username: str, password: str, *, timeout_s: float = 30.0, retries: int = 4,
                 retry_wait_s: float = 2.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s
        # GETs that time out or meet a 502/503/504 are tried again this many times (waiting 2, 4, 6... s), and so is
        # any request refused because SQLite was locked (ROLLED_BACK).
        self.retries, self.retry_wait_s = retries, retry_wait_s
        self._credentials = {"username": username, "password": password}
        self._token: str | None = None

    # --- transport ------------------------------------------------------------------------------
    def _send(self, method: str, path: str, body: Any = None, *, auth: bool = True, attempt: int = 0,
              relogged: bool = False) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(f"{self.base_url}{path}", data=data, method=method)
        req.add_header("Content-Type", "application/json")
        if auth:
            req.add_header("Authorization", f"Bearer {self._login()}")
        try:
            with loopback.urlopen(req, timeout=self.timeout_s) as resp:  # never through a proxy: it carries the password
                raw = resp.read()
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")[:500]
            if exc.code == 401 and auth and self._token is not None and not relogged:
                self._token = None  # expired: log in again, once (a server refusing every token recursed for ever)
                return self._send(method, path, body, auth=auth, attempt=attempt, relogged=True)
            if exc.code in TRANSIENT_HTTP and (self._repeatable(method, path) or ROLLED_BACK in detail) \
                    and attempt < self.retries:
                return self._retry(method, path, body, auth, attempt)
            raise AirflowApiError(f"{method} {path}: HTTP {exc.code}: {detail}") from exc
        except (urllib.error.URLError, TimeoutError, ConnectionError, http.client.HTTPException) as exc:
            # A busy API server (the scheduler, Spark and torchrun share two cores) can miss a deadline; reading
            # is safe to repeat, a change is not: it is reported for the caller to look before trying again.
            # HTTPException: a server that died mid-answer (IncompleteRead, RemoteDisconnected, a garbled status
            # line) is a lost connection too; it escaped as "a fault in the code".
            if self._repeatable(method, path) and attempt < self.retries:
                return self._retry(method, path, body, auth, attempt)
            raise AirflowApiError(f"{method} {path}: the Airflow API at {self.base_url} did not answer ({exc}); "
                                  "is it up? `tenfold status` shows it") from exc
        return json.loads(raw) if raw else None

    @staticmethod
    def _repeatable(method: str, path: str) -> bool:
        """A read, or the login: asking for a token changes nothing on the server. (The login is sent at the first
        request, when the API server is busiest parsing the DAGs: a timeout there ended the demo, the read that
        asked for it never retried.)"""
        return method == "GET" or path == TOKEN_PATH

    def _retry(self, method: str, path: str, body: Any, auth: bool, attempt: int) -> Any:
        time.sleep(self.retry_wait_s * (attempt + 1))
        return self._send(method, path, body, auth=auth, attempt=attempt + 1)

    def _login(self) -> str:
        if self._token is None:
            reply = self._send("POST", TOKEN_PATH, self._credentials, auth=False)
            self._token = str(reply["access_token"])
        return self._token

    # --- DAGs -----------------------------------------------------------------------------------
    def dag(self, dag_id: str) -> dict[str, Any]:
        return dict(self._send("GET", f"/api/v2/dags/{dag_id}"))

    def wait_for_dag(self, dag_id: str, *, timeout_s: float = 300.0, poll_s: float = 3.0) -> dict[str, Any]:
        """Wait until the DAG processor has parsed ``dag_id`` and the scheduler will run it; import errors are
        reported by name.

        A DAG whose file parsed before and now fails to import (or whose file the processor has not parsed lately)
        is still answered, marked ``has_import_errors``/``is_stale``, and Airflow still accepts its backfills and
        triggers, but its scheduler never starts a run of a stale DAG: the demo waited out its whole timeout
        ("did not finish in time") without showing the import error. Such a DAG is not ready."""
        deadline = time.monotonic() + timeout_s
        while True:
            found: dict[str, Any] | None = None
            try:
                found = self.dag(dag_id)
            except AirflowApiError as exc:
                if "HTTP 404" not in str(exc):
                    raise
            if found is not None and not found.get("has_import_errors") and not found.get("is_stale"):
                return found
            relative = str(found.get("relative_fileloc") or "") if found else ""
            errors = self._send("GET", "/api/v2/importErrors").get("import_errors", [])
            mine = [e for e in errors
                    if dag_id in str(e.get("filename", "")) or (relative and e.get("filename") == relative)]
            if mine:
                raise AirflowApiError(f"{dag_id} does not import: {mine[0].get('stack_trace', '')[-1500:]}")
            if time.monotonic() > deadline:
                if found is not None:
                    why = "still has import errors" if found.get("has_import_errors") else "is still stale"
                    raise AirflowApiError(
                        f"{dag_id} {why} in Airflow after {timeout_s:.0f} s, and its scheduler starts no run of it: "
                        f"the DAG processor has not parsed {relative or 'its file'} cleanly since; see the "
                        "dag-processor log")
                raise AirflowApiError(f"Airflow has not parsed {dag_id} after {timeout_s:.0f} s; see the dag-processor log")
            time.sleep(poll_s)

    # --- runs -----------------------------------------------------------------------------------
    def runs(self, dag_id: str, *, limit: int = 100) -> list[dict[str, Any]]:
        query = urllib.parse.urlencode({"limit": limit, "order_by": "-run_after"})
        return list(self._send("GET", f"/api/v2/dags/{dag_id}/dagRuns?{query}")["dag_runs"])

    def run(self, dag_id: str, run_id: str) -> dict[str, Any]:
        return dict(self._send("GET", f"/api/v2/dags/{dag_id}/dagRuns/{urllib.parse.quote(run_id, safe='')}"))

    def trigger(self, dag_id: str, run_id: str, conf: dict[str, Any] | None = None) -> dict[str, Any]:
        """Trigger a run with ``run_id``; an existing run of that id is returned instead (idempotent)."""
        try:
            return self.run(dag_id, run_id)
        except AirflowApiError as exc:
            if "HTTP 404" not in str(exc):
                raise
        body = {"dag_run_id": run_id, "logical_date": None, "conf": conf or {}}
        # The id is ours and Airflow refuses a second run of it (409): a POST that timed out or met a 5xx (the API
        # server waits up to 30 s for SQLite's lock, and maps most database errors to 500) is looked up, and sent
        # again only if it did not land.
        for attempt in range(self.retries + 1):
            try:
                return dict(self._send("POST", f"/api/v2/dags/{dag_id}/dagRuns", body))
            except AirflowApiError as exc:
                if attempt == self.retries or not (_may_not_have_landed(exc) or "HTTP 409" in str(exc)):
                    raise
                try:
                    return self.run(dag_id, run_id)
                except AirflowApiError as missing:
                    if "HTTP 404" not in str(missing):
                        raise
                time.sleep(self.retry_wait_s * (attempt + 1))
        raise AssertionError("unreachable")  # pragma: no cover

    def set_paused(self, dag_id: str, paused: bool) -> None:
        """Pause or unpause (idempotent: sent again when it timed out or met a 5xx)."""
        for attempt in range(self.retries + 1):
            try:
                self._send("PATCH", f"/api/v2/dags/{dag_id}", {"is_paused": paused})
                return
            except AirflowApiError as exc:
                if attempt == self.retries or not _may_not_have_landed(exc):
                    raise
                time.sleep(self.retry_wait_s * (attempt + 1))

    def backfill(self, dag_id: str, from_date: str, to_date: str, *, max_active_runs: int = 1,
                 reprocess: str = "failed", wait_s: float = BACKFILL_WAIT_S, poll_s: float = 5.0) -> dict[str, Any]:
        """Create a backfill. Airflow keeps one open backfill per DAG and marks one complete up to 30 s after its
        last run ends; while the DAG has one open, this asks again every ``poll_s`` for up to ``wait_s`` (nothing
        was created by the refusal), then names the open backfill and how to end it."""
        body = {"dag_id": dag_id, "from_date": from_date, "to_date": to_date, "run_backwards": False,
                "dag_run_conf": {}, "reprocess_behavior": reprocess, "max_active_runs": max_active_runs}
        deadline = time.monotonic() + wait_s
        unanswered = 0  # requests that timed out or met a 5xx: each may have created it
        while True:
            try:
                return dict(self._send("POST", "/api/v2/backfills", body))
            except AirflowApiError as exc:
                if _may_not_have_landed(exc) and unanswered < self.retries:
                    # The API server waits up to 30 s for SQLite's lock, as long as this client, and may create the
                    # backfill after the client gave up (the demo ended on "did not answer ... is it up?" with it
                    # running): looked up, and asked for again only if it is not there.
                    unanswered += 1
                    if (ours := self._open_backfill_like(body)) is not None:
                        return ours
                    time.sleep(self.retry_wait_s * unanswered)
                    continue
                if "HTTP 409" not in str(exc) or BACKFILL_OPEN not in str(exc):
                    raise
                if unanswered and (ours := self._open_backfill_like(body)) is not None:
                    return ours  # an unanswered request of ours created it after all
                if time.monotonic() > deadline:
                    open_ = [b for b in self.backfills(dag_id) if not b.get("completed_at")]
                    named = ", ".join(f"{b['id']} ({str(b['from_date'])[:10]}..{str(b['to_date'])[:10]})"
                                      for b in open_) or "one"
                    raise AirflowApiError(
                        f"{dag_id} still has an open backfill after {wait_s:.0f} s: {named}. Wait for its runs to "
                        f"end, or cancel it (the Airflow UI's Backfills, or POST /api/v2/backfills/<id>/cancel), "
                        "then run this again") from exc
            time.sleep(poll_s)

    def _open_backfill_like(self, body: dict[str, Any]) -> dict[str, Any] | None:
        """An open backfill of ``body``'s DAG over the same months, asked for the same way (one of ours), or None."""
        for b in self.backfills(body["dag_id"]):
            if (not b.get("completed_at") and str(b.get("from_date"))[:10] == body["from_date"][:10]
                    and str(b.get("to_date"))[:10] == body["to_date"][:10]
                    and b.get("reprocess_behavior", body["reprocess_behavior"]) == body["reprocess_behavior"]):
                return dict(b)
        return None

    def backfills(self, dag_id: str) -> list[dict[str, Any]]:
        query = urllib.parse.urlencode({"dag_id": dag_id, "limit": 100, "order_by": "-id"})
        return list(self._send("GET", f"/api/v2/backfills?{query}")["backfills"])

    def task_states(self, dag_id: str, run_id: str) -> dict[str, str | None]:
        """Each task instance's state in a run (None: not scheduled yet), by task id; a mapped task's instances as
        ``task_id[map_index]`` (an unmapped one, map index -1, by its plain task id).

        Keyed by task id alone, a mapped task's last instance overwrote the others (batch_inference's
        ``score_month.*`` with month [0] failed and [1] succeeded named no failed task), and the endpoint answers
        one page at a time (50 by default, at most the API's ``maximum_page_limit``): every page is read."""
        path = f"/api/v2/dags/{dag_id}/dagRuns/{urllib.parse.quote(run_id, safe='')}/taskInstances"
        states: dict[str, str | None] = {}
        offset = 0
        while True:
            query = urllib.parse.urlencode({"limit": TASK_PAGE, "offset": offset})
            page = self._send("GET", f"{path}?{query}")
            instances = list(page.get("task_instances", []))
            for t in instances:
                index = t.get("map_index", -1)
                key = str(t["task_id"]) if index is None or int(index) < 0 else f"{t['task_id']}[{index}]"
                states[key] = t.get("state")
            offset += len(instances)
            # An empty page ends it too: a total that grew while reading must not loop for ever.
            if not instances or offset >= int(page.get("total_entries") or 0):
                return states

    def failed_tasks(self, dag_id: str, run_id: str) -> list[str]:
        return [task for task, state in self.task_states(dag_id, run_id).items() if state in ("failed", "upstream_failed")]

    def wait_for_runs(self, dag_id: str, run_ids: list[str], *, timeout_s: float, poll_s: float = 10.0,
                      on_change: Callable[[str, str], object] | None = None) -> dict[str, str]:
        """Wait until every run is terminal; return their states. Raises on timeout."""
        deadline = time.monotonic() + timeout_s
        states: dict[str, str] = {}
        while True:
            for run_id in run_ids:
                if states.get(run_id) in TERMINAL:
                    continue
                state = str(self.run(dag_id, run_id)["state"])
                if state != states.get(run_id) and on_change:
                    on_change(run_id, state)
                states[run_id] = state
            if all(s in TERMINAL for s in states.values()):
                return states
            if time.monotonic() > deadline:
                pending = [r for r, s in states.items() if s not in TERMINAL]
                raise AirflowApiError(f"{dag_id} runs still not finished after {timeout_s:.0f} s: {pending}")
            time.sleep(poll_s)
