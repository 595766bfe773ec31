"""Monitoring samples against the real Pub/Sub emulator: a burst of them shares publish requests, and every
sample queued arrives exactly once with its body and attributes."""

from __future__ import annotations

import datetime as dt
from typing import Any

from tenfold.config import Settings
from tenfold.messaging.records import PredictionRecord
from tenfold.serving.metrics import ServerMetrics
from tenfold.serving.publishing import SAMPLE_CHUNK, Publisher


def _record(i: int) -> PredictionRecord:
    return PredictionRecord(prediction_id=f"p{i:04d}", model_version="v1", arm="canary" if i % 3 == 0 else "stable",
                            probability=0.5, request={"flight": i}, served_at=dt.datetime(2026, 12, 2, tzinfo=dt.UTC))


def test_a_burst_of_samples_shares_publish_requests_and_every_one_arrives_once(
        serving_settings: Settings, pubsub_tools: Any, waits: Any) -> None:
    settings = serving_settings
    subscription = pubsub_tools.subscribe(settings, settings.messaging.predictions_topic)
    metrics = ServerMetrics("stable")
    metrics.set_model_version("v1")
    pub = Publisher(settings, metrics)
    sizes: list[int] = []
    publish_request = pub._publish_request

    def counted(request: Any) -> None:
        sizes.append(len(request.messages))
        publish_request(request)

    pub._publish_request = counted  # type: ignore[method-assign]
    n = 450
    try:
        assert all(pub.publish_sample(lambda i=i: _record(i)) for i in range(n))  # type: ignore[misc]
        waits.until(lambda: pub.in_flight == 0, 30)
    finally:
        pub.close()
    assert sum(sizes) == n and max(sizes) <= SAMPLE_CHUNK
    assert len(sizes) < n / 10, sizes  # queued together, sent together (the old path: one publish per sample)
    assert metrics.value("tenfold_prediction_samples_total", outcome="published") == n
    assert metrics.value("tenfold_dropped_samples_total") == 0
    # Pulled until the subscription stays quiet, past n: a sample published twice shows as one message too many.
    messages = pubsub_tools.pull_messages(settings, subscription, n, timeout=60, quiet_s=3.0)
    records = {PredictionRecord.from_message(m.data).prediction_id: m for m in messages}
    assert len(messages) == n, f"{len(messages)} messages for {n} samples"
    assert sorted(records) == [f"p{i:04d}" for i in range(n)]  # n distinct ones, each sample's
    for pid, m in records.items():
        want = _record(int(pid[1:]))
        assert m.data == want.to_message() and dict(m.attributes) == want.attributes()
