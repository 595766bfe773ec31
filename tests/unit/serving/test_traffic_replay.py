"""The traffic replay (`make demo`'s and a canary's load) as a client: feedback that the API asks to retry is
retried, and what it keeps of a long run is bounded. The server side of each request is a transport-level stand-in
(httpx's MockTransport); the replay's own requests go through the real app in tests/workloads/test_tiny_serving.py
and the real fleet in tests/serving."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest

from tenfold.config import Settings, build_settings
from tenfold.serving import traffic
from tenfold.workloads import Replayed


def _run(settings: Settings, items: list[Replayed], handler: Any, report: traffic.TrafficReport) -> None:
    init = httpx.AsyncClient.__init__

    def mocked(self: httpx.AsyncClient, *args: Any, **kwargs: Any) -> None:
        kwargs.pop("limits", None)
        init(self, *args, transport=httpx.MockTransport(handler), **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(httpx.AsyncClient, "__init__", mocked)
        asyncio.run(traffic._replay(settings, items, base_url="http://lb", token="t", concurrency=2, users=10,
                                    send_feedback=True, report=report))


def _predicted(request: httpx.Request, n: list[int]) -> httpx.Response:
    n[0] += 1
    return httpx.Response(200, json={"prediction_id": f"p{n[0]}", "arm": "stable", "model_version": "v1",
                                     "probability": 0.5})


def test_feedback_answered_503_or_lost_in_transport_is_posted_again(tmp_path: Any,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Posted once, an outcome was lost whenever Pub/Sub blinked (the API's 503 says retry after Retry-After):
    the rollout and the demo saw fewer labels than predictions."""
    monkeypatch.setattr(traffic, "FEEDBACK_WAIT_CAP_S", 0.01)
    settings = build_settings("local", {"TENFOLD_HOME": str(tmp_path)})
    tries: dict[str, int] = {}
    n = [0]

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/predict"):
            return _predicted(request, n)
        pid = json.loads(request.content)["prediction_id"]
        tries[pid] = tries.get(pid, 0) + 1
        if pid == "p1" and tries[pid] == 1:
            return httpx.Response(503, headers={"Retry-After": "1"}, json={"error": "feedback_unavailable"})
        if pid == "p2" and tries[pid] <= 2:
            raise httpx.ConnectError("connection reset")
        if pid == "p3":
            return httpx.Response(503, headers={"Retry-After": "1"}, json={"error": "feedback_unavailable"})
        return httpx.Response(202, json={"status": "accepted"})

    items = [Replayed(request={"x": i}, outcome=i % 2) for i in range(5)]
    report = traffic.TrafficReport()
    _run(settings, items, handler, report)
    assert dict(report.statuses) == {200: 5}
    assert tries == {"p1": 2, "p2": 3, "p3": traffic.FEEDBACK_TRIES, "p4": 1, "p5": 1}
    assert dict(report.feedback) == {202: 4, 503: 1}  # the one that never got through is counted as such


def test_a_long_replay_keeps_a_bounded_latency_sample_and_error_list(monkeypatch: pytest.MonkeyPatch) -> None:
    """The demo's load runs for up to half an hour: every request appended to the report's lists."""
    monkeypatch.setattr(traffic, "LATENCIES_KEPT", 50)
    monkeypatch.setattr(traffic, "ERRORS_KEPT", 5)
    report = traffic.TrafficReport()
    for i in range(1000):
        report.latency(float(i))
        report.error(f"e{i}")
    assert len(report.latencies_ms) == 50 and report.answered == 1000
    assert max(report.latencies_ms) > 500  # a sample of the whole run, not its first 50
    assert report.errors == [f"e{i}" for i in range(5)]


def test_feedback_retries_do_not_hold_up_the_predictions(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The worker that sent a prediction waited out its outcome's retries: during a Pub/Sub outage the load on both
    arms nearly stopped, and a canary analysis window could see no traffic at all."""
    monkeypatch.setattr(traffic, "FEEDBACK_WAIT_CAP_S", 0.2)
    settings = build_settings("local", {"TENFOLD_HOME": str(tmp_path)})
    events: list[str] = []
    n = [0]

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/predict"):
            events.append("predict")
            return _predicted(request, n)
        if json.loads(request.content)["prediction_id"] == "p1":
            events.append("p1 feedback")
            return httpx.Response(503, headers={"Retry-After": "1"}, json={"error": "feedback_unavailable"})
        return httpx.Response(202, json={"status": "accepted"})

    init = httpx.AsyncClient.__init__

    def mocked(self: httpx.AsyncClient, *args: Any, **kwargs: Any) -> None:
        kwargs.pop("limits", None)
        init(self, *args, transport=httpx.MockTransport(handler), **kwargs)

    items = [Replayed(request={"x": i}, outcome=1) for i in range(30)]
    report = traffic.TrafficReport()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(httpx.AsyncClient, "__init__", mocked)
        asyncio.run(traffic._replay(settings, items, base_url="http://lb", token="t", concurrency=1, users=10,
                                    send_feedback=True, report=report))
    last_predict = max(i for i, e in enumerate(events) if e == "predict")
    last_p1 = max(i for i, e in enumerate(events) if e == "p1 feedback")
    assert last_predict < last_p1, "the predictions waited for p1's feedback retries"
    assert events.count("p1 feedback") == traffic.FEEDBACK_TRIES and report.feedback == {202: 29, 503: 1}
