"""LoadBalancerLogObserver over the real google-cloud-logging client (HTTP/JSON), answered at its ``requests``
session with the load balancer's recorded log entry shapes (``recorded/logging.entries.list.json``)."""

from __future__ import annotations

import copy
import datetime as dt
import json
import re
import zlib
from pathlib import Path
from typing import Any

import pytest
import requests
from requests.adapters import BaseAdapter

from tenfold.config import get_settings
from tenfold.rollout import ArmTraffic, TrafficObserver
from tenfold.rollout.cloud import LoadBalancerLogObserver

S = get_settings("prod")
LB = S.serving.load_balancer
SINCE = dt.datetime(2026, 12, 1, 11, 0, 0, tzinfo=dt.UTC)
UNTIL = SINCE + dt.timedelta(seconds=30)
RECORDED = json.loads((Path(__file__).with_name("recorded") / "logging.entries.list.json").read_text())["entries"]
OK, BACKEND_502, NO_ANSWER = RECORDED


class FakeLogging(BaseAdapter):
    """Cloud Logging's ``entries:list`` for the entries of each backend service, in pages of at most ``page``."""

    def __init__(self, entries: dict[str, list[dict[str, Any]]], page: int = 1000) -> None:
        super().__init__()
        self.entries, self.page = entries, page
        self.calls: list[dict[str, Any]] = []

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:  # type: ignore[override]
        assert (request.method, request.url) == ("POST", "https://logging.googleapis.com/v2/entries:list?prettyPrint=false")
        body = json.loads(request.body or b"{}")
        self.calls.append(body)
        backend = re.search(r'resource\.labels\.backend_service_name="([^"]+)"', body["filter"])
        lo, hi = (re.search(rf'timestamp{op}"([^"]+)"', body["filter"]) for op in (">=", "<"))
        assert lo and hi, body["filter"]
        sample = re.search(r"sample\(insertId, ([0-9.]+)\)", body["filter"])
        entries = [e for e in (self.entries.get(backend.group(1), []) if backend else [])
                   if _at(lo.group(1)) <= _at(e["timestamp"]) < _at(hi.group(1))
                   and (sample is None or zlib.crc32(e["insertId"].encode()) % 1_000_000 < float(sample.group(1)) * 1e6)]
        start = int(body.get("pageToken") or 0)
        end = start + min(int(body["pageSize"]), self.page)
        payload: dict[str, Any] = {"entries": entries[start:end]}
        if end < len(entries):
            payload["nextPageToken"] = str(end)
        response = requests.Response()
        response.status_code, response._content = 200, json.dumps(payload).encode()
        response.headers["Content-Type"] = "application/json; charset=UTF-8"
        response.request, response.url, response.encoding = request, str(request.url), "utf-8"
        return response

    def close(self) -> None:
        return None


def _at(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))


def _entry(template: dict[str, Any], backend: str, latency_ms: float | None = None,
           at: dt.datetime | None = None) -> dict[str, Any]:
    entry = copy.deepcopy(template)
    entry["resource"]["labels"]["backend_service_name"] = backend
    if at is not None:
        entry["timestamp"] = at.isoformat().replace("+00:00", "Z")
        entry["insertId"] = f"{backend}-{at.timestamp():.6f}"
    if latency_ms is not None:
        entry["httpRequest"]["latency"] = f"{latency_ms / 1000:.6f}s"
    return entry


def _observer(fake: FakeLogging, settings: Any = S, **kw: Any) -> LoadBalancerLogObserver:
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import logging as cloud_logging

    session = requests.Session()
    session.mount("https://", fake)
    client = cloud_logging.Client(project=S.project_id, credentials=AnonymousCredentials(), _http=session, _use_grpc=False)
    return LoadBalancerLogObserver(settings, client, **kw)


def _filter(backend: str) -> str:
    return (f'resource.type="http_load_balancer" AND resource.labels.url_map_name="{LB.url_map}" AND '
            f'resource.labels.backend_service_name="{backend}" AND '
            f'httpRequest.requestUrl:"{S.serving.server.api_prefix}/predict" AND '
            'timestamp>="2026-12-01T11:00:00Z" AND timestamp<"2026-12-01T11:00:30Z"')


def test_each_arm_is_its_backend_service_with_errors_and_latencies() -> None:
    stable = [_entry(OK, LB.stable_backend, 10 + i) for i in range(40)]
    canary = [_entry(OK, LB.canary_backend, 30.5)] * 7 + [_entry(BACKEND_502, LB.canary_backend),
                                                           _entry(NO_ANSWER, LB.canary_backend)]
    fake = FakeLogging({LB.stable_backend: stable, LB.canary_backend: canary})
    observer: TrafficObserver = _observer(fake)
    seen = observer.traffic(SINCE, UNTIL)
    assert seen["stable"] == ArmTraffic(requests=40, errors=0, latencies_ms=tuple(float(10 + i) for i in range(40)))
    # the 502 is an error; the client that left before any answer is not the canary's (neither request nor error)
    assert seen["canary"].requests == 8 and seen["canary"].errors == 1, seen["canary"]
    assert seen["canary"].latencies_ms == pytest.approx([30.5] * 7 + [4.102])
    assert fake.calls == [
        {"resourceNames": [f"projects/{S.project_id}"], "filter": _filter(LB.stable_backend), "orderBy": "timestamp asc",
         "pageSize": 1000},
        {"resourceNames": [f"projects/{S.project_id}"], "filter": _filter(LB.canary_backend), "orderBy": "timestamp asc",
         "pageSize": 1000},
    ]


def test_pages_are_followed_and_the_read_is_capped_per_arm() -> None:
    stable = [_entry(OK, LB.stable_backend, 12.0) for _ in range(250)]
    fake = FakeLogging({LB.stable_backend: stable}, page=100)  # Logging may answer fewer than asked for
    seen = _observer(fake).traffic(SINCE, UNTIL)
    assert seen["stable"].requests == 250 and seen["canary"] == ArmTraffic(0, 0, ())
    assert [c.get("pageToken") for c in fake.calls] == [None, "100", "200", None]
    capped = FakeLogging({LB.stable_backend: stable})
    assert _observer(capped, max_entries=120).traffic(SINCE, UNTIL)["stable"].requests <= 120
    assert capped.calls[0]["pageSize"] == 120


def test_a_busy_window_is_sampled_across_all_of_it_not_its_first_seconds() -> None:
    """10,000 requests over the 30 s window, the canary's errors all in its last 5 s: read oldest first up to the
    cap, the check saw the first 3 s only (not one error); read again as a sample of the whole window, it sees
    them at their rate (1 in 6)."""
    n = 10_000
    at = [SINCE + dt.timedelta(seconds=30 * i / n) for i in range(n)]
    stable = [_entry(OK, LB.stable_backend, 12.0, t) for t in at]
    canary = [_entry(BACKEND_502 if t >= UNTIL - dt.timedelta(seconds=5) else OK, LB.canary_backend, 12.0, t) for t in at]
    fake = FakeLogging({LB.stable_backend: stable, LB.canary_backend: canary})
    seen = _observer(fake, max_entries=1000).traffic(SINCE, UNTIL)
    for arm in ("stable", "canary"):
        assert 600 <= seen[arm].requests < 1000, seen[arm].requests  # ~80 % of the cap, spread over the window
    assert 0.12 < seen["canary"].errors / seen["canary"].requests < 0.22, (seen["canary"].errors, seen["canary"].requests)
    sampled = [c for c in fake.calls if "sample(insertId, " in c["filter"]]
    assert len(sampled) == 2 and all("sample(insertId, 0.07" in c["filter"] for c in sampled), [c["filter"] for c in sampled]


def test_a_min_requests_the_busy_windows_sample_cannot_hold_is_refused_and_one_it_can_is_met() -> None:
    """A busy window is read as a sample of about 80 % of the cap: with min_requests above it (4,500 of a 5,000 cap),
    6,000 requests per arm were read as ~4,000 and every busy window was "no data" until each rollout failed at its
    deadline. Refused at once, in one line; a min_requests at the limit is met by the same busy window's sample."""
    from tenfold.rollout.cloud import MAX_ENTRIES_PER_ARM

    n = 6_000
    at = [SINCE + dt.timedelta(seconds=30 * i / n) for i in range(n)]
    fake = FakeLogging({LB.stable_backend: [_entry(OK, LB.stable_backend, 12.0, t) for t in at],
                        LB.canary_backend: [_entry(OK, LB.canary_backend, 12.0, t) for t in at]})
    with pytest.raises(ValueError) as refused:
        _observer(fake, settings=_min_requests(4500))
    message = str(refused.value)
    assert "\n" not in message and "serving.rollout.min_requests is 4500" in message, message
    assert f"set serving.rollout.min_requests to {MAX_ENTRIES_PER_ARM // 2} or fewer" in message, message
    assert getattr(refused.value, "retryable", True) is False  # a settings fix: Airflow does not retry it
    assert fake.calls == []  # nothing read
    limit = MAX_ENTRIES_PER_ARM // 2
    seen = _observer(fake, settings=_min_requests(limit)).traffic(SINCE, UNTIL)
    for arm in ("stable", "canary"):
        assert limit <= seen[arm].requests < n, seen[arm].requests  # sampled, and still enough for a check


def _min_requests(n: int) -> Any:
    return S.model_copy(update={"serving": S.serving.model_copy(
        update={"rollout": S.serving.rollout.model_copy(update={"min_requests": n})})})


def test_bad_windows_are_refused() -> None:
    observer = _observer(FakeLogging({}))
    with pytest.raises(ValueError, match="no time zone"):
        observer.traffic(SINCE.replace(tzinfo=None), UNTIL)
    with pytest.raises(ValueError, match="is empty"):
        observer.traffic(UNTIL, SINCE)


def _refused(backend: str, status: int, details: str = "response_sent_by_backend") -> dict[str, Any]:
    """The recorded answered entry, as ``status`` (the replica's own answer unless ``details`` says otherwise)."""
    entry = _entry(OK, backend, 3.0)
    entry["httpRequest"]["status"] = status
    entry["jsonPayload"]["statusDetails"] = details
    return entry


def _no_status(backend: str, details: str) -> dict[str, Any]:
    """The recorded entry of a request with no answer, its ``statusDetails`` saying why."""
    entry = _entry(NO_ANSWER, backend)
    entry["jsonPayload"]["statusDetails"] = details
    return entry


def _auth_mode(mode: str) -> Any:
    server = S.serving.server.model_copy(update={"auth_mode": mode, "iap_audience": "/projects/1/global/backendServices/2"
                                                 if mode == "iap" else None})
    return S.model_copy(update={"serving": S.serving.model_copy(update={"server": server})})


IAP = _auth_mode("iap")


def test_a_canary_refusing_authenticated_requests_counts_errors_on_both_arms_alike() -> None:
    """Under IAP both pools check one audience while IAP signs the canary's requests with its own backend's
    (docs/deploy.md): the canary answered 401 to everyone and, counted on 5xx only, passed as a fast success.
    Under IAP a 401 or 403 the replica sent is an error, on the control arm too."""
    assert IAP.serving.server.auth_mode == "iap"
    stable = [_entry(OK, LB.stable_backend, 12.0)] * 18 + [_refused(LB.stable_backend, 403)] * 2
    canary = [_refused(LB.canary_backend, 401)] * 9 + [_entry(OK, LB.canary_backend, 12.0)]
    seen = _observer(FakeLogging({LB.stable_backend: stable, LB.canary_backend: canary}), settings=IAP).traffic(SINCE, UNTIL)
    assert (seen["canary"].requests, seen["canary"].errors) == (10, 9)
    assert (seen["stable"].requests, seen["stable"].errors) == (20, 2)
    # an entry with no statusDetails (an older log format) is counted as the replica's answer, not left out
    bare = [_refused(LB.canary_backend, 401) for _ in range(3)]
    for entry in bare:
        del entry["jsonPayload"]["statusDetails"]
    seen = _observer(FakeLogging({LB.canary_backend: bare}), settings=IAP).traffic(SINCE, UNTIL)
    assert (seen["canary"].requests, seen["canary"].errors) == (3, 3)
    # other answers a client caused stay successes of the replica
    client_errors = [_refused(LB.canary_backend, status) for status in (400, 404, 422, 429)]
    seen = _observer(FakeLogging({LB.canary_backend: client_errors}), settings=IAP).traffic(SINCE, UNTIL)
    assert (seen["canary"].requests, seen["canary"].errors) == (4, 0)


def test_under_iap_what_iap_or_cloud_armor_turned_away_is_not_the_arms() -> None:
    """IAP turns away callers without credentials before the backend (a 401, or a 302 to its sign-in), Cloud Armor
    denies (403) and throttles (429) in front of it too: none is the arm's, so a flood of them aimed at the canary
    by its bucket neither fails it nor dilutes the 5xx it really returns."""
    turned_away = ([_refused(LB.canary_backend, 401, "handled_by_identity_aware_proxy")] * 30
                   + [_refused(LB.canary_backend, 302, "handled_by_identity_aware_proxy")] * 30
                   + [_refused(LB.canary_backend, 403, "denied_by_security_policy")] * 30
                   + [_refused(LB.canary_backend, 429, "throttled_by_security_policy")] * 30
                   + [_refused(LB.canary_backend, 502, "denied_by_security_policy")] * 30)  # a rule's deny-502
    canary = turned_away + [_entry(BACKEND_502, LB.canary_backend)] * 2 + [_entry(OK, LB.canary_backend, 12.0)] * 2
    seen = _observer(FakeLogging({LB.canary_backend: canary}), settings=IAP).traffic(SINCE, UNTIL)
    assert (seen["canary"].requests, seen["canary"].errors) == (4, 2), seen["canary"]
    assert seen["canary"].latencies_ms == pytest.approx([4.102, 4.102, 12.0, 12.0])


def test_under_bearer_auth_requests_without_a_token_are_not_the_arms() -> None:
    """Under bearer auth the load balancer checks no token and the URL map routes by the bucket the client sends:
    anyone can aim token-less requests at the canary (bucket 0) and get the replica's 401 logged under it. They
    are the client's fault: not an error of the arm (it failed a good canary) nor a request of it (a flood of them
    diluted the errors of a bad one, aimed the other way hid it), and their fast answers are not its latencies."""
    assert S.serving.server.auth_mode == "bearer"
    canary = [_refused(LB.canary_backend, 401)] * 9 + [_entry(OK, LB.canary_backend, 12.0)]
    stable = [_refused(LB.stable_backend, 401)] * 60 + [_refused(LB.stable_backend, 403)] * 5 + [
        _entry(BACKEND_502, LB.stable_backend)] + [_entry(OK, LB.stable_backend, 12.0)] * 3
    seen = _observer(FakeLogging({LB.stable_backend: stable, LB.canary_backend: canary})).traffic(SINCE, UNTIL)
    assert seen["canary"] == ArmTraffic(requests=1, errors=0, latencies_ms=(12.0,))
    assert (seen["stable"].requests, seen["stable"].errors) == (4, 1), seen["stable"]


def test_a_request_with_no_answer_is_an_error_when_the_backend_failed_not_when_the_client_left() -> None:
    """A client that hangs up right after sending is logged with no status, under the arm it chose: in any auth
    mode that failed a good canary. No status counts as an error only when ``statusDetails`` says the backend
    failed; one with no detail still does (no answer, cause unknown)."""
    for settings in (S, IAP):
        left = [_no_status(LB.canary_backend, d) for d in ("client_disconnected_before_any_response", "client_timed_out")]
        seen = _observer(FakeLogging({LB.canary_backend: left * 30 + [_entry(OK, LB.canary_backend, 12.0)]}),
                         settings=settings).traffic(SINCE, UNTIL)
        assert seen["canary"] == ArmTraffic(requests=1, errors=0, latencies_ms=(12.0,)), settings.serving.server.auth_mode
        failed = [_no_status(LB.canary_backend, d) for d in (
            "backend_connection_closed_before_data_sent_to_client", "backend_timeout", "failed_to_connect_to_backend")]
        unknown = _entry(NO_ANSWER, LB.canary_backend)
        del unknown["jsonPayload"]["statusDetails"]
        seen = _observer(FakeLogging({LB.canary_backend: [*failed, unknown, _entry(OK, LB.canary_backend, 12.0)]}),
                         settings=settings).traffic(SINCE, UNTIL)
        assert (seen["canary"].requests, seen["canary"].errors) == (5, 4), settings.serving.server.auth_mode
