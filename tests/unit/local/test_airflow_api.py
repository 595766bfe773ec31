"""The Airflow REST client under a slow or failing API server (a real HTTP server on loopback)."""

from __future__ import annotations

import http.client
import json
import os
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tenfold.local.airflow_api import AirflowApi, AirflowApiError


class _Server:
    """Answers each request with the next planned behaviour: "hang" (longer than the client waits), "cut" (10 bytes
    of the 100 its Content-Length promised, then the connection closed), an HTTP status, a (status, detail) pair, "ok" (200 with a JSON body) or a dict (200 with that body)."""

    def __init__(self, plan: list[object]) -> None:
        self.plan, self.seen = list(plan), []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                server.seen.append((self.command, self.path))
                step = server.plan.pop(0) if server.plan else "ok"
                if step == "hang":
                    time.sleep(1.5)
                    return
                if step == "cut":  # dies mid-answer: promises 100 bytes, sends 10, closes the connection
                    self.send_response(200)
                    self.send_header("Content-Length", "100")
                    self.end_headers()
                    self.wfile.write(b'{"dag_id":')
                    self.wfile.flush()
                    self.close_connection = True
                    return
                if isinstance(step, dict):  # a 200 with this body
                    code, payload = 200, step
                else:
                    code, detail = step if isinstance(step, tuple) else (200 if step == "ok" else int(step), None)  # type: ignore[call-overload]
                    payload = {"answer": len(server.seen)} if detail is None else {"detail": detail}
                body = json.dumps(payload).encode()
                self.send_response(code)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = do_PATCH = _answer

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"


@pytest.fixture
def server() -> Iterator[list[_Server]]:
    made: list[_Server] = []
    yield made
    for s in made:
        s.httpd.shutdown()


def _api(server: list[_Server], plan: list[object]) -> tuple[AirflowApi, _Server]:
    s = _Server(plan)
    server.append(s)
    return AirflowApi(s.url, "admin", "pw", timeout_s=0.5, retry_wait_s=0.01), s


def test_a_read_that_times_out_or_meets_a_503_is_tried_again(server: list[_Server]) -> None:
    api, s = _api(server, ["hang", 503, "ok"])
    assert api._send("GET", "/api/v2/dags/x", auth=False) == {"answer": 3}
    assert len(s.seen) == 3


def test_an_api_server_that_dies_mid_answer_is_a_lost_connection_not_a_fault(server: list[_Server]) -> None:
    """The answer cut short (http.client's IncompleteRead, an HTTPException, not an OSError) escaped the client's
    retry and its AirflowApiError: the demo ended with "a fault in the code". A read is tried again, and a read that
    meets it every time, or a change that meets it once, ends in the client's error naming the API."""
    api, s = _api(server, ["cut", "ok"])
    assert api._send("GET", "/api/v2/dags/x", auth=False) == {"answer": 2}
    assert len(s.seen) == 2

    api, s = _api(server, ["cut"] * 5)
    api._token = "t"
    with pytest.raises(AirflowApiError, match=r"GET /api/v2/dags/x: the Airflow API at .* did not answer") as raised:
        api.dag("x")
    assert isinstance(raised.value.__cause__, http.client.IncompleteRead), repr(raised.value.__cause__)
    assert len(s.seen) == 1 + api.retries

    api, s = _api(server, ["cut"])
    with pytest.raises(AirflowApiError, match="did not answer"):
        api._send("POST", "/api/v2/dags/x/dagRuns", {"dag_run_id": "r"}, auth=False)
    assert s.seen == [("POST", "/api/v2/dags/x/dagRuns")]  # a change is not repeated: it may have landed


def test_a_change_is_never_repeated_and_a_silent_api_is_a_clear_error(server: list[_Server]) -> None:
    api, s = _api(server, ["hang"])
    with pytest.raises(AirflowApiError, match=r"did not answer .*`tenfold status`"):
        api._send("POST", "/api/v2/dags/x/dagRuns", {"dag_run_id": "r"}, auth=False)
    assert s.seen == [("POST", "/api/v2/dags/x/dagRuns")]


def test_reads_give_up_after_their_retries_with_the_status(server: list[_Server]) -> None:
    api, s = _api(server, [503] * 10)
    with pytest.raises(AirflowApiError, match="HTTP 503"):
        api._send("GET", "/api/v2/dags/x", auth=False)
    assert len(s.seen) == api.retries + 1


LOCKED = "Database is locked. Backfill creation is not supported on SQLite under concurrent access. Please use PostgreSQL or MySQL."


def test_a_change_refused_because_sqlite_was_locked_is_sent_again(server: list[_Server]) -> None:
    # What Airflow 3 answers POST /backfills when the scheduler holds SQLite's lock: rolled back, safe to repeat.
    api, s = _api(server, [(503, LOCKED), (503, LOCKED), "ok"])
    assert api._send("POST", "/api/v2/backfills", {"dag_id": "x"}, auth=False) == {"answer": 3}
    assert s.seen == [("POST", "/api/v2/backfills")] * 3
    # Any other 503 on a change is reported, not repeated: it may have been carried out.
    api, s = _api(server, [(503, "upstream busy")])
    with pytest.raises(AirflowApiError, match="HTTP 503"):
        api._send("POST", "/api/v2/backfills", {"dag_id": "x"}, auth=False)
    assert len(s.seen) == 1


OPEN = (409, "There is already a running backfill for dag build_features")


def test_a_backfill_refused_while_the_last_one_is_still_open_is_asked_for_again(server: list[_Server]) -> None:
    # Airflow 3's scheduler marks a backfill complete on a 30 s timer after its runs end; one asked for in between
    # is refused (nothing created), which the demo met on CI by backfilling the next month right away.
    api, s = _api(server, [OPEN, OPEN, "ok"])
    api._token = "t"
    assert api.backfill("build_features", "2013-04-01", "2013-04-01", poll_s=0.01) == {"answer": 3}
    assert s.seen == [("POST", "/api/v2/backfills")] * 3
    # A backfill that stays open is named, with what to do, once the wait is over.
    listing = {"backfills": [{"id": 7, "from_date": "2013-01-01T00:00:00Z", "to_date": "2013-03-01T00:00:00Z",
                              "completed_at": None},
                             {"id": 6, "from_date": "2012-12-01T00:00:00Z", "to_date": "2012-12-01T00:00:00Z",
                              "completed_at": "2013-01-02T00:00:00Z"}], "total_entries": 2}
    api, s = _api(server, [OPEN, listing])
    api._token = "t"
    with pytest.raises(AirflowApiError, match=r"open backfill after 0 s: 7 \(2013-01-01\.\.2013-03-01\)\. .*cancel"):
        api.backfill("build_features", "2013-04-01", "2013-04-01", wait_s=0.0, poll_s=0.01)
    assert s.seen[0] == ("POST", "/api/v2/backfills")
    assert s.seen[1][1].startswith("/api/v2/backfills?dag_id=build_features")
    # Any other conflict is reported at once.
    api, s = _api(server, [(409, "a run with this id exists")])
    api._token = "t"
    with pytest.raises(AirflowApiError, match="HTTP 409"):
        api.backfill("build_features", "2013-04-01", "2013-04-01", poll_s=0.01)
    assert len(s.seen) == 1


def test_a_backfill_request_that_timed_out_is_looked_up_and_asked_for_again_only_if_it_is_not_there(
        server: list[_Server]) -> None:
    """The API server waits up to 30 s for SQLite's lock, as long as the client: a backfill request that timed out
    ended the demo with "did not answer ... is it up?" while the backfill it created ran."""
    ours = {"id": 9, "dag_id": "build_features", "from_date": "2013-01-01T00:00:00Z", "to_date": "2013-06-01T00:00:00Z",
            "reprocess_behavior": "completed", "completed_at": None}
    other = {**ours, "id": 8, "to_date": "2013-05-01T00:00:00Z"}
    listing = {"backfills": [other, ours], "total_entries": 2}
    nothing = {"backfills": [other], "total_entries": 1}
    for plan, seen in (
        (["hang", listing], ["POST", "GET"]),  # it landed: returned, not asked for again
        (["hang", nothing, "ok"], ["POST", "GET", "POST"]),  # it did not: asked for again
        (["hang", nothing, OPEN, listing], ["POST", "GET", "POST", "GET"]),  # it landed after the look-up
    ):
        api, s = _api(server, plan)
        api._token = "t"
        got = api.backfill("build_features", "2013-01-01T00:00:00Z", "2013-06-01T00:00:00Z", reprocess="completed",
                           poll_s=0.01)
        assert got == (ours if plan[-1] is listing else {"answer": 3}), plan
        assert [method for method, _ in s.seen] == seen


def test_an_expired_token_is_renewed_once_and_a_refused_new_one_is_a_clear_error(server: list[_Server]) -> None:
    """A 401 logged in again and resent; a server that refused every token it had just issued made that recurse
    (977 logins, then RecursionError) instead of saying so."""
    token = {"access_token": "t"}
    api, _ = _api(server, [token, 401, token, "ok"])  # the token expired once: renewed, then the read goes through
    assert api._send("GET", "/api/v2/dags/x") == {"answer": 4}
    api2, s2 = _api(server, [token, 401, token, 401, token, 401])
    with pytest.raises(AirflowApiError, match="HTTP 401"):
        api2._send("GET", "/api/v2/dags/x")
    assert [path for _, path in s2.seen].count("/auth/token") == 2  # the first login and one renewal


@pytest.mark.parametrize("miss", ["hang", 503])
def test_a_login_that_times_out_or_meets_a_503_is_tried_again(server: list[_Server], miss: object) -> None:
    """The first request logs in while the API server is busiest (parsing every DAG on two cores): a login that
    missed its deadline ended the demo, though asking for a token changes nothing and the read itself retries."""
    api, s = _api(server, [miss, {"access_token": "t"}, "ok"])
    assert api._send("GET", "/api/v2/dags/x") == {"answer": 3}
    assert s.seen == [("POST", "/auth/token"), ("POST", "/auth/token"), ("GET", "/api/v2/dags/x")]


RUN = {"dag_run_id": "r", "state": "queued"}


@pytest.mark.parametrize(("plan", "posts"), [
    ([404, "hang", RUN], 1),  # the POST landed but its answer came after the client gave up: found, not sent again
    ([404, 500, 404, RUN], 2),  # Airflow's 500 for a database error (SQLite busy): not created, so sent again
    ([404, (409, "exists"), RUN], 1),  # created meanwhile (another trigger of the same id): that run
])
def test_a_trigger_whose_post_failed_on_the_way_is_looked_up_and_sent_again_only_if_it_did_not_land(
        server: list[_Server], plan: list[object], posts: int) -> None:
    """The run id is the client's own and Airflow refuses a second run of it: a trigger that timed out (the API
    server waits 30 s for SQLite's lock, as long as the client) or met a 500 ended the demo with "did not answer
    ... is it up?", though the API was up and the run often created."""
    api, s = _api(server, plan)
    api._token = "t"
    assert api.trigger("d", "r") == RUN
    assert [m for m, _ in s.seen].count("POST") == posts


def test_pausing_is_sent_again_when_it_met_a_server_error(server: list[_Server]) -> None:
    api, s = _api(server, [500, "hang", "ok"])
    api._token = "t"
    api.set_paused("d", False)
    assert [m for m, _ in s.seen] == ["PATCH", "PATCH", "PATCH"]


def test_requests_to_the_api_never_go_through_a_proxy_the_shell_names(server: list[_Server],
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """A shell with http_proxy and no no_proxy entry for 127.0.0.1 (on Linux, urllib then proxies loopback too): the
    login, the admin password in its body, and every bearer token went to the proxy."""
    from tenfold.local.loopback import not_proxied

    proxy = _Server([])
    server.append(proxy)
    monkeypatch.setenv("http_proxy", proxy.url)
    for name in ("no_proxy", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
    api, airflow = _api(server, [{"access_token": "t"}, {"dag_id": "x"}])
    assert api.dag("x") == {"dag_id": "x"}
    assert proxy.seen == [] and airflow.seen == [("POST", "/auth/token"), ("GET", "/api/v2/dags/x")]
    # What Tenfold does not open itself (the emulators' Google clients, Airflow's components): no_proxy lists loopback,
    # keeping what it listed; nothing is added where no proxy is named.
    assert not_proxied({"HTTPS_PROXY": "http://p:3128", "no_proxy": "corp.example"}) == dict.fromkeys(
        ("no_proxy", "NO_PROXY"), "corp.example,127.0.0.1,localhost,::1")
    assert not_proxied({"no_proxy": "corp.example"}) == {}
    assert not_proxied({"http_proxy": "http://p:3128", "no_proxy": "*"}) == {}  # "*,127.0.0.1" would proxy everything


def test_a_star_within_no_proxy_still_keeps_loopback_off_the_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    """urllib and requests read "*" as "no proxy at all" only as the whole value: with no_proxy="*,example.com" they
    proxy 127.0.0.1, and not_proxied added nothing because "*" was among the entries."""
    import requests.utils

    from tenfold.local.loopback import not_proxied

    env = {"http_proxy": "http://p:3128", "no_proxy": "*,example.com"}
    added = not_proxied(env, ("127.0.0.1",))
    assert "127.0.0.1" in added["no_proxy"].split(","), added
    assert added["NO_PROXY"] == added["no_proxy"] and "example.com" in added["no_proxy"].split(","), added
    for name in ("http_proxy", "HTTP_PROXY", "no_proxy", "NO_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    url = "http://127.0.0.1:8080/api/v2/dags"
    monkeypatch.setenv("http_proxy", env["http_proxy"])
    monkeypatch.setenv("no_proxy", env["no_proxy"])
    assert not requests.utils.should_bypass_proxies(url, no_proxy=None)  # what the reviewer saw: it goes to the proxy
    monkeypatch.setenv("no_proxy", added["no_proxy"])
    assert requests.utils.should_bypass_proxies(url, no_proxy=None)
    # A whole "*" is left alone; beside a list in the other variable, only the list gets the loopback hosts.
    assert not_proxied({"http_proxy": "http://p:3128", "no_proxy": "*", "NO_PROXY": "*"}) == {}
    assert not_proxied({"http_proxy": "http://p:3128", "no_proxy": "*", "NO_PROXY": "corp.example"}) == {
        "NO_PROXY": "corp.example,127.0.0.1,localhost,::1"}


def test_the_configured_bind_host_is_kept_off_the_proxy_too(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Any 127.x.x.x is a valid local.bind_host: with 127.0.0.2, no_proxy listed only 127.0.0.1, localhost and ::1,
    and Airflow's log fetch (its JWT), the emulators' clients, the CLI's storage client and the traffic replay's
    bearer token went through the shell's proxy."""
    import urllib.request

    from typer.testing import CliRunner

    from tenfold.cli import app
    from tenfold.config import get_settings
    from tenfold.local import local_settings
    from tenfold.local.airflow import airflow_env
    from tenfold.local.loopback import not_proxied

    assert not_proxied({"http_proxy": "http://p:3128", "no_proxy": "corp.example"}, ("127.0.0.2",)) == dict.fromkeys(
        ("no_proxy", "NO_PROXY"), "corp.example,127.0.0.1,localhost,::1,127.0.0.2")
    assert not_proxied({"http_proxy": "http://p:3128", "no_proxy": "*"}, ("127.0.0.2",)) == {}
    assert not_proxied({"no_proxy": "corp.example"}, ("127.0.0.2",)) == {}

    settings = local_settings(tmp_path, bind_host="127.0.0.2")
    env = airflow_env(settings, base={"PATH": "/usr/bin", "http_proxy": "http://p:3128"})
    assert "127.0.0.2" in env["no_proxy"].split(",") and env["NO_PROXY"] == env["no_proxy"]
    # What urllib (Airflow's log fetch goes through requests, which asks the same) decides for the log server.
    log_server = f"127.0.0.2:{settings.local.airflow_log_port}"
    assert urllib.request.proxy_bypass_environment(log_server, {"no": env["no_proxy"]})

    # The tenfold command: its own clients, and every process it starts, see the bind host in no_proxy.
    monkeypatch.setenv("TENFOLD_ENV", "local")
    monkeypatch.setenv("TENFOLD_HOME", str(tmp_path))
    monkeypatch.setenv("TENFOLD_LOCAL__BIND_HOST", "127.0.0.2")
    monkeypatch.setenv("http_proxy", "http://p:3128")
    monkeypatch.setenv("no_proxy", "corp.example")  # restored after the test, as the callback changes os.environ
    monkeypatch.setenv("NO_PROXY", "corp.example")
    get_settings.cache_clear()
    try:
        out = CliRunner().invoke(app, ["quality", "--help"])  # the root callback runs before the sub-command's help
    finally:
        get_settings.cache_clear()
    assert out.exit_code == 0, out.output
    assert os.environ["no_proxy"] == os.environ["NO_PROXY"] == "corp.example,127.0.0.1,localhost,::1,127.0.0.2"
    assert urllib.request.proxy_bypass_environment(log_server)


TOKEN = {"access_token": "t"}
HEALTHY = {"dag_id": "build_features", "is_stale": False, "has_import_errors": False,
           "relative_fileloc": "build_features.py"}


def test_a_dag_whose_file_stopped_importing_is_reported_not_waited_on(server: list[_Server]) -> None:
    """A DAG file that parsed before and now fails to import keeps its DAG (200), marked stale with import errors:
    Airflow accepts its backfills and its scheduler never runs them, so the demo waited out its timeout ("did not
    finish in time") and never showed the import error."""
    broken = {**HEALTHY, "is_stale": True, "has_import_errors": True}
    errors = {"import_errors": [{"filename": "dags/build_features.py", "stack_trace": "Traceback ...\nSyntaxError: x"}],
              "total_entries": 1}
    api, s = _api(server, [TOKEN, broken, errors])
    with pytest.raises(AirflowApiError, match=r"(?s)build_features does not import: .*SyntaxError: x"):
        api.wait_for_dag("build_features", timeout_s=5, poll_s=0.01)
    assert [path for _, path in s.seen] == ["/auth/token", "/api/v2/dags/build_features", "/api/v2/importErrors"]
    # Stale without an import error (the processor has not parsed its file again): waited on, then named as stale.
    nothing = {"import_errors": [], "total_entries": 0}
    api, s = _api(server, [TOKEN, {**HEALTHY, "is_stale": True}, nothing, {**HEALTHY, "is_stale": True}, nothing])
    with pytest.raises(AirflowApiError, match=r"build_features is still stale in Airflow after 0 s.*build_features.py.*dag-processor log"):
        api.wait_for_dag("build_features", timeout_s=0.05, poll_s=0.1)
    # ... and returned once parsed again.
    api, s = _api(server, [TOKEN, {**HEALTHY, "is_stale": True}, nothing, HEALTHY])
    assert api.wait_for_dag("build_features", timeout_s=30, poll_s=0.01) == HEALTHY
    assert len(s.seen) == 4
    # A healthy DAG is returned at once, with no look at the import errors.
    api, s = _api(server, [TOKEN, HEALTHY])
    assert api.wait_for_dag("build_features", timeout_s=5, poll_s=0.01) == HEALTHY
    assert len(s.seen) == 2


def test_task_states_read_every_page_and_keep_mapped_instances_apart(server: list[_Server]) -> None:
    """Keyed by task id alone, a mapped task's last instance overwrote the others (month [0] failed, [1] succeeded:
    no failed task named), and only the endpoint's first page was read."""
    def ti(task_id: str, map_index: int, state: str | None) -> dict[str, object]:
        return {"task_id": task_id, "map_index": map_index, "state": state}

    first = {"task_instances": [ti("months", -1, "success"), ti("score_month.score", 0, "failed")],
             "total_entries": 3}
    second = {"task_instances": [ti("score_month.score", 1, "success")], "total_entries": 3}
    api, s = _api(server, [TOKEN, first, second])
    assert api.task_states("batch_inference", "r 1") == {
        "months": "success", "score_month.score[0]": "failed", "score_month.score[1]": "success"}
    base = "/api/v2/dags/batch_inference/dagRuns/r%201/taskInstances"
    assert [path for _, path in s.seen[1:]] == [f"{base}?limit=100&offset=0", f"{base}?limit=100&offset=2"]
    api, _ = _api(server, [TOKEN, first, second])
    assert api.failed_tasks("batch_inference", "r 1") == ["score_month.score[0]"]
