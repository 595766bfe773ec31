"""The prediction cache's key and bounds, and the Pub/Sub circuit breaker's states (on a fake clock)."""

from __future__ import annotations

import datetime as dt

import pytest
from pydantic import BaseModel, ConfigDict

from tenfold.serving.cache import PredictionCache, request_digest
from tenfold.serving.publishing import CircuitBreaker


class Req(BaseModel):
    model_config = ConfigDict(extra="forbid")
    carrier: str
    flight: int
    sched_dep: dt.datetime
    user_key: str | None = None


def test_the_digest_ignores_the_user_key_and_the_spelling_but_not_the_content() -> None:
    a = Req.model_validate({"carrier": "UA", "flight": 1, "sched_dep": "2013-01-01T05:15:00", "user_key": "x"})
    b = Req.model_validate_json('{"sched_dep": "2013-01-01 05:15", "flight": 1, "carrier": "UA"}')
    c = Req.model_validate({"carrier": "UA", "flight": 2, "sched_dep": "2013-01-01T05:15:00"})
    assert request_digest(a) == request_digest(b) != request_digest(c)


def test_keys_carry_the_model_version() -> None:
    r = Req(carrier="UA", flight=1, sched_dep=dt.datetime(2013, 1, 1, 5, 15))
    cache = PredictionCache(10)
    cache.put(PredictionCache.key("v1", r), 0.25)
    assert cache.get(PredictionCache.key("v1", r)) == 0.25
    assert cache.get(PredictionCache.key("v2", r)) is None


def test_least_recently_used_goes_first_and_zero_disables() -> None:
    cache = PredictionCache(2)
    cache.put(("v", "a"), 0.1)
    cache.put(("v", "b"), 0.2)
    assert cache.get(("v", "a")) == 0.1  # a is now the most recent
    cache.put(("v", "c"), 0.3)
    assert (cache.get(("v", "b")), cache.get(("v", "a")), len(cache)) == (None, 0.1, 2)
    off = PredictionCache(0)
    off.put(("v", "a"), 0.1)
    assert off.get(("v", "a")) is None and len(off) == 0


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_breaker_opens_after_consecutive_failures_and_closes_after_a_good_trial() -> None:
    clock, changes = Clock(), []
    b = CircuitBreaker(3, 5.0, clock=clock, on_change=changes.append)
    b.failure()
    b.failure()
    b.success()  # not consecutive: starts over
    b.failure()
    b.failure()
    assert b.allow() and not b.is_open
    b.failure()
    assert b.is_open and not b.allow() and changes == [True]
    assert b.retry_after_s() == 5.0
    clock.now += 5.0
    assert b.allow()  # the one trial
    assert not b.allow()  # nobody else while it is out
    b.success()
    assert not b.is_open and b.allow() and changes == [True, False]


def test_the_breaker_gauge_ends_as_the_breaker_is_when_a_close_races_an_open() -> None:
    """Pub/Sub flapping: one callback thread opens the breaker and is preempted before it reports; another's
    success closes it and reports 0; the first then reported 1. The gauge said "open" while publishing was healthy
    (a false alert) until the next cycle."""
    import threading

    from tenfold.serving.metrics import ServerMetrics

    metrics, reporting, go = ServerMetrics("stable"), threading.Event(), threading.Event()

    def on_change(is_open: bool) -> None:
        if is_open:
            reporting.set()
            go.wait(5)  # the opening thread, preempted between deciding and reporting
        metrics.breaker("feedback", is_open)

    b = CircuitBreaker(1, 60.0, on_change=on_change)
    opener = threading.Thread(target=b.failure)
    opener.start()
    assert reporting.wait(5)
    closer = threading.Thread(target=b.success)
    closer.start()
    closer.join(0.5)  # reported under the breaker's lock, the close waits for the open's report
    go.set()
    opener.join(5)
    closer.join(5)
    assert not b.is_open
    assert metrics.value("tenfold_pubsub_breaker_open", topic="feedback") == 0.0


def test_a_failed_trial_keeps_it_open_another_period() -> None:
    clock = Clock()
    b = CircuitBreaker(1, 2.0, clock=clock)
    b.failure()
    clock.now += 2.0
    assert b.allow()
    b.failure()
    assert not b.allow() and b.retry_after_s() == 2.0
    clock.now += 1.0
    assert not b.allow()
    clock.now += 1.0
    assert b.allow()


def test_a_trial_that_never_reports_is_replaced_after_the_reset_period() -> None:
    clock = Clock()
    b = CircuitBreaker(1, 2.0, clock=clock)
    b.failure()
    clock.now += 2.0
    assert b.allow() and not b.allow()
    clock.now += 2.0
    assert b.allow()


@pytest.mark.integration
def test_a_failing_predictions_topic_does_not_stop_feedback(own_topology) -> None:  # type: ignore[no-untyped-def]
    """Each topic has its own breaker: samples that cannot be published (their topic deleted, on the real emulator)
    open the predictions breaker only, and feedback to its healthy topic is still accepted."""
    import asyncio

    from tenfold.messaging import publisher_client, topic_path
    from tenfold.messaging.records import FeedbackRecord, PredictionRecord
    from tenfold.serving.metrics import ServerMetrics
    from tenfold.serving.publishing import Publisher

    settings = own_topology
    admin = publisher_client(settings)
    try:
        admin.delete_topic(request={"topic": topic_path(settings, settings.messaging.predictions_topic)})
    finally:
        admin.transport.close()
    metrics = ServerMetrics("stable")
    publisher = Publisher(settings, metrics)
    try:
        sample = PredictionRecord(prediction_id="p", model_version="v", arm="stable", probability=0.5, request={},
                                  served_at=dt.datetime(2013, 1, 1, tzinfo=dt.UTC))
        for _ in range(settings.serving.server.breaker_failures):
            assert not publisher.breakers["predictions"].is_open
            publisher._send_samples([lambda: sample])
        assert publisher.breakers["predictions"].is_open
        assert metrics.value("tenfold_pubsub_breaker_open", topic="predictions") == 1

        feedback = FeedbackRecord(prediction_id="p", outcome=1, received_at=dt.datetime(2013, 1, 1, tzinfo=dt.UTC))
        assert asyncio.run(publisher.publish_feedback(feedback)).isdigit()  # the emulator's message id
        assert not publisher.breakers["feedback"].is_open
        assert metrics.value("tenfold_pubsub_breaker_open", topic="feedback") == 0
    finally:
        publisher.close()


def test_the_publisher_client_is_made_once_when_the_sampler_and_a_feedback_race_for_it(settings, monkeypatch) -> None:
    import threading
    import time

    import tenfold.messaging.clients as clients
    from tenfold.serving.metrics import ServerMetrics
    from tenfold.serving.publishing import Publisher

    made: list[object] = []

    def slow_client(settings: object) -> object:
        time.sleep(0.05)  # a credential lookup
        made.append(object())
        return made[-1]

    monkeypatch.setattr(clients, "publisher_client", slow_client)
    publisher = Publisher(settings, ServerMetrics("stable"))
    start = threading.Barrier(8)
    seen: list[object] = []

    def use() -> None:
        start.wait()
        seen.append(publisher.client)

    threads = [threading.Thread(target=use) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert len(made) == 1 and all(c is made[0] for c in seen), f"{len(made)} clients made"


def test_a_state_set_while_loading_moves_to_the_model_version_and_leaves_no_stale_series() -> None:
    """Gauges that hold a state (breaker open, ready, queue depth) set before the model loaded: after the version
    change the state is under the model's version, and no ``model_version="loading"`` series is left behind. (A
    feedback breaker that opened while loading and closed after kept ``{model_version="loading"} 1`` for ever: an
    alert on ``max(tenfold_pubsub_breaker_open) > 0`` would never clear.)"""
    from prometheus_client.parser import text_string_to_metric_families

    from tenfold.serving.metrics import LOADING, ServerMetrics

    metrics = ServerMetrics("stable")
    metrics.breaker("feedback", True)
    metrics.queue_depth(3)
    metrics.ready(False)
    metrics.set_model_version("v1")
    assert metrics.value("tenfold_pubsub_breaker_open", topic="feedback") == 1  # still open, now under v1
    metrics.breaker("feedback", False)
    metrics.ready(True)

    def series(name: str) -> dict[str, float]:
        return {s.labels["model_version"]: s.value
                for family in text_string_to_metric_families(metrics.exposition().decode())
                for s in family.samples if s.name == name}

    assert series("tenfold_pubsub_breaker_open") == {"v1": 0}
    assert series("tenfold_ready") == {"v1": 1}
    assert series("tenfold_queue_depth") == {"v1": 3}
    assert LOADING not in metrics.exposition().decode()


def test_a_request_the_drain_cancels_is_counted_as_unanswered_not_as_a_500() -> None:
    """uvicorn cancels the requests still running when the drain's timeout ends: CancelledError is no Exception, so
    the middleware's status stayed at its initial 500, and the version being rolled out showed server errors that
    no client was ever sent."""
    import asyncio

    from tenfold.serving.app import _Observe
    from tenfold.serving.metrics import ServerMetrics

    async def held_until_cancelled(scope: object, receive: object, send: object) -> None:
        await asyncio.Event().wait()

    metrics = ServerMetrics("stable")
    observe = _Observe(held_until_cancelled, metrics, {"/v1/predict": "predict"})

    async def drain() -> None:
        task = asyncio.ensure_future(observe({"type": "http", "path": "/v1/predict"}, None, None))
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(drain())
    assert metrics.value("tenfold_requests_total", endpoint="predict", code="499") == 1
    assert metrics.value("tenfold_requests_total", code="500") == metrics.value("tenfold_errors_total", code="500") == 0
    assert metrics.value("tenfold_unhandled_errors_total") == 0
