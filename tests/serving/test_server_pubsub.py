"""Pub/Sub down, for real: the test's own emulator is stopped under a running app and started again.

While it is down predictions keep answering 200 (their samples are dropped and counted) and feedback is
refused with 503 and Retry-After; once it is back feedback is accepted again, and every feedback that was
answered 202 is in the topic.
"""

from __future__ import annotations

import time
from typing import Any

from tenfold.messaging.records import FeedbackRecord

PREDICT, FEEDBACK = "/v1/predict", "/v1/feedback"


def _flight(n: int) -> dict[str, Any]:
    return {"carrier": "UA", "flight": n, "origin": "EWR", "dest": "IAH", "sched_dep": "2013-01-02T07:30:00"}


def _feedback(client: Any, auth: dict[str, str], prediction_id: str) -> Any:
    return client.post(FEEDBACK, json={"prediction_id": prediction_id, "outcome": 1}, headers=auth)


def test_pubsub_down_predictions_answer_feedback_is_refused_then_accepted_and_nothing_acknowledged_is_lost(
        make_client: Any, own_pubsub: Any, auth: dict[str, str], pubsub_tools: Any, waits: Any) -> None:
    settings = own_pubsub.settings
    topic = settings.messaging.feedback_topic
    client = make_client(settings, feedback_publish_timeout_s=1.5, breaker_failures=2, breaker_reset_s=1.0,
                         retry_after_s=2, prediction_sample_rate=1.0, cache_entries=0)
    metrics = client.app.state.metrics

    # Up: feedback is acknowledged and in the topic.
    subscription = pubsub_tools.subscribe(settings, topic)
    before = [client.post(PREDICT, json=_flight(i), headers=auth).json()["prediction_id"] for i in range(1, 4)]
    assert [_feedback(client, auth, p).status_code for p in before] == [202] * 3
    got = [FeedbackRecord.from_message(m).prediction_id for m in pubsub_tools.pull(settings, subscription, 3)]
    assert sorted(got) == sorted(before)
    waits.until(lambda: metrics.value("tenfold_prediction_samples_total", outcome="published") == 3, 20)

    own_pubsub.stop()

    # Down: every prediction still answers, quickly; its sample is dropped and counted.
    for i in range(10, 16):
        started = time.monotonic()
        r = client.post(PREDICT, json=_flight(i), headers=auth)
        assert r.status_code == 200, r.text
        assert time.monotonic() - started < 1.0  # never waits for Pub/Sub
    down = [client.post(PREDICT, json=_flight(i), headers=auth).json()["prediction_id"] for i in range(20, 23)]
    refused = [_feedback(client, auth, p) for p in down]
    assert [r.status_code for r in refused] == [503] * 3
    for r in refused:
        # Never sooner than settings' retry_after_s (2), though the breaker's own 1 s reset would be due sooner.
        assert r.headers["retry-after"] == "2" and r.json()["error"] == "feedback_unavailable"
    waits.until(lambda: metrics.value("tenfold_prediction_samples_total", outcome="dropped") >= 9, 20)
    assert metrics.value("tenfold_dropped_samples_total") == metrics.value("tenfold_prediction_samples_total",
                                                                           outcome="dropped")
    assert metrics.value("tenfold_pubsub_breaker_open", topic="feedback") == 1
    assert metrics.value("tenfold_pubsub_breaker_open", topic="predictions") == 1
    assert metrics.value("tenfold_feedback_total", result="unavailable") == 3

    # Back (the emulator restarts empty: the topology is provisioned again, and a new subscription).
    own_pubsub.start()
    subscription = pubsub_tools.subscribe(settings, topic)
    accepted: list[str] = []
    deadline = time.monotonic() + 30
    for p in down:  # the client retries what was refused, as Retry-After told it to
        while True:
            r = _feedback(client, auth, p)
            if r.status_code == 202:
                accepted.append(p)
                break
            assert r.status_code == 503 and time.monotonic() < deadline, r.text
            time.sleep(min(int(r.headers["retry-after"]), 1))
    after = [client.post(PREDICT, json=_flight(i), headers=auth).json()["prediction_id"] for i in range(30, 33)]
    assert [_feedback(client, auth, p).status_code for p in after] == [202] * 3
    accepted += after
    got = [FeedbackRecord.from_message(m).prediction_id for m in pubsub_tools.pull(settings, subscription, len(accepted))]
    assert sorted(set(got)) == sorted(accepted)  # every 202 is in the topic
    assert metrics.value("tenfold_pubsub_breaker_open") == 0  # both topics
    waits.until(lambda: metrics.value("tenfold_prediction_samples_total", outcome="published") >= 6, 20)
