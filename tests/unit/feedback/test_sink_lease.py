"""The sink keeps the leases of the batch it holds alive while one lake write is slow, not only after a failed one.

A write to GCS retries for up to a minute, and a local write on a slow disk can take as long: the leases from the
pull (the subscription's ack deadline) ran out during the write, the late acknowledgement named expired ack ids, and
every message came back, a delivery attempt spent on good messages and the batch landed twice. The real Pub/Sub
emulator with a 10 s ack deadline, and a lake write that really takes 25 s; and a Pub/Sub (a real gRPC server on
loopback, as in ``test_sink_faults``) that refuses every lease extension, which must not fail the batch.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from google.protobuf import empty_pb2
from google.pubsub_v1 import types

from tenfold.data.lake import Lake, Partition
from tenfold.feedback import log as landing
from tenfold.feedback.log import read_log
from tenfold.feedback.schema import PREDICTIONS_LOG

from .conftest import T0, FakeSubscriber, prediction

DEADLINE_S = 10  # the shortest ack deadline Pub/Sub (and settings) allow


@pytest.fixture
def short_leases(make_settings: Any, local_settings: Any) -> Any:
    """The session's topology under names of this test's own, every subscription with a 10 s ack deadline."""
    from tenfold.messaging import ensure_topology, subscriber_client, subscription_path

    tag = f"lease-{uuid.uuid4().hex[:8]}"
    msg = local_settings.messaging
    subs = {kind: spec.model_copy(update={"ack_deadline_s": DEADLINE_S, **{
        f: f"{tag}-{getattr(spec, f)}" for f in ("name", "topic", "dead_letter_topic", "dead_letter_subscription")}})
        for kind, spec in msg.subscriptions.items()}
    settings = make_settings(on=local_settings, messaging={
        "requests_topic": f"{tag}-{msg.requests_topic}", "predictions_topic": f"{tag}-{msg.predictions_topic}",
        "feedback_topic": f"{tag}-{msg.feedback_topic}", "subscriptions": subs})
    ensure_topology(settings)
    with subscriber_client(settings) as client:
        got = client.get_subscription(request={"subscription": subscription_path(
            settings, settings.messaging.subscriptions["predictions"].name)}).ack_deadline_seconds
    assert got == DEADLINE_S, f"the emulator kept an ack deadline of {got} s, not {DEADLINE_S} s"
    return settings


def _publish(settings: Any, pids: list[str]) -> None:
    from tenfold.messaging import publisher_client, topic_path

    pub = publisher_client(settings)
    try:
        for future in [pub.publish(topic_path(settings, settings.messaging.predictions_topic), prediction(p).to_message())
                       for p in pids]:
            future.result(timeout=30)
    finally:
        pub.transport.close()


def _pull_held(settings: Any, wait_s: float) -> list[Any]:
    """What a held pull of the predictions subscription gets within ``wait_s`` (nothing: an empty list)."""
    from google.api_core.exceptions import DeadlineExceeded

    from tenfold.messaging import subscriber_client, subscription_path

    path = subscription_path(settings, settings.messaging.subscriptions["predictions"].name)
    with subscriber_client(settings) as client:
        try:
            resp = client.pull(request={"subscription": path, "max_messages": 100}, timeout=wait_s, retry=None)
        except DeadlineExceeded:
            return []
        return list(resp.received_messages)


def test_a_lake_write_slower_than_the_ack_deadline_keeps_the_batch_leased(short_leases, monkeypatch):
    from tenfold.feedback.sink import FeedbackSink, SinkOptions

    settings = short_leases
    pids = [f"slow-{i}" for i in range(3)]
    _publish(settings, pids)

    real_write = landing.write_batch
    writes: list[float] = []
    meanwhile: list[Any] = []

    def slow_write(*args: Any, **kwargs: Any) -> Any:  # a lake write that takes 1.8 ack deadlines, then lands
        started = time.monotonic()
        # Past the first lease's expiry (1 deadline after the pull) by 4 s: without the keeper, redelivered by now.
        time.sleep(1.4 * DEADLINE_S)
        # Another consumer (a second sink, or this one's next pull) asks for what the subscription would deliver now:
        # the batch in hand, were its leases gone.
        meanwhile.extend(_pull_held(settings, wait_s=0.3 * DEADLINE_S))
        time.sleep(max(0.0, 1.8 * DEADLINE_S - (time.monotonic() - started)))
        try:
            return real_write(*args, **kwargs)
        finally:
            writes.append(time.monotonic() - started)

    monkeypatch.setattr(landing, "write_batch", slow_write)
    with FeedbackSink(settings, SinkOptions(max_messages=10, pull_wait_s=5.0)) as sink:
        assert sink.poll_once(wait=True) == len(pids)
        assert _keepers() == [], "the lease keeper outlived the batch"
    assert writes and min(writes) >= 1.8 * DEADLINE_S, "the write was not slower than the ack deadline"
    assert [(m.message.message_id, m.delivery_attempt) for m in meanwhile] == [], (
        "the batch in hand was delivered again during the slow write: its leases ran out")
    assert sink.stats["predictions"].landed == len(pids) and sink.stats["predictions"].acked == len(pids)

    # Longer than the ack deadline: a message whose acknowledgement was not taken would be deliverable again by then.
    back = _pull_held(settings, wait_s=DEADLINE_S + 2)
    assert [(m.message.message_id, m.delivery_attempt) for m in back] == [], "messages came back after the batch landed"
    landed = read_log(Lake.from_settings(settings), settings.storage.predictions_table, [Partition(2026, 5)],
                      PREDICTIONS_LOG)["prediction_id"].to_pylist()
    assert sorted(landed) == pids, "the lake does not hold each message once"


def test_a_batch_topped_up_for_longer_than_the_ack_deadline_stays_leased(short_leases):
    """A running sink tops a batch up for ``batch_wait_s`` after its first pull (each top-up pull retried while
    Pub/Sub is unavailable): the keeper started only at the write, so the first messages' leases ran out while the
    batch was still filling, and the sink's own top-up pulls got them again (a delivery attempt spent, each landed
    twice). The real emulator, a 10 s ack deadline, and a fill 1.6 ack deadlines long."""
    from tenfold.feedback.sink import FeedbackSink, SinkOptions

    settings = short_leases
    pids = [f"fill-{i}" for i in range(3)]
    _publish(settings, pids)
    options = SinkOptions(max_messages=10, pull_wait_s=5.0, batch_wait_s=1.6 * DEADLINE_S, poll_interval_s=0.5)
    with FeedbackSink(settings, options) as sink:
        started = time.monotonic()
        pulled = sink.poll_once(wait=True, fill=True)
        assert time.monotonic() - started >= 1.6 * DEADLINE_S, "the batch was not filled for longer than a lease"
        assert _keepers() == [], "the lease keeper outlived the batch"
    st = sink.stats["predictions"]
    assert (pulled, st.redelivered, st.landed, st.acked) == (len(pids), 0, len(pids), len(pids)), (
        "the batch's first messages came back while it filled: their leases ran out")
    landed = read_log(Lake.from_settings(settings), settings.storage.predictions_table, [Partition(2026, 5)],
                      PREDICTIONS_LOG)["prediction_id"].to_pylist()
    assert sorted(landed) == pids, "the lake does not hold each message once"


def _keepers() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("tenfold-sink-lease")]


class RefusingLeases(FakeSubscriber):
    """A Pub/Sub Subscriber on loopback (:class:`FakeSubscriber`) that delivers one prediction, takes its
    acknowledgement, and answers every ModifyAckDeadline with UNAVAILABLE (Pub/Sub away a moment), recording when
    each came."""

    def __init__(self, subscription: str) -> None:
        super().__init__()
        self.extensions: list[tuple[float, list[str], int]] = []
        self.publish(subscription, prediction("a", at=T0).to_message())

    def _modify(self, request: types.ModifyAckDeadlineRequest, context: grpc.ServicerContext) -> empty_pb2.Empty:
        self.extensions.append((time.monotonic(), list(request.ack_ids), request.ack_deadline_seconds))
        context.abort(grpc.StatusCode.UNAVAILABLE, "modify_ack_deadline: UNAVAILABLE")


@pytest.fixture
def refusing_leases(settings: Any) -> Iterator[tuple[RefusingLeases, Any]]:
    subs = {kind: spec.model_copy(update={"ack_deadline_s": DEADLINE_S})
            for kind, spec in settings.messaging.subscriptions.items()}
    fake = RefusingLeases(f"projects/{settings.project_id}/subscriptions/{subs['predictions'].name}")
    faked = settings.model_copy(update={"messaging": settings.messaging.model_copy(
        update={"emulator_host": f"127.0.0.1:{fake.port}", "subscriptions": subs})})
    yield fake, faked
    fake.server.stop(0)


def test_a_lease_extension_pubsub_refuses_is_logged_once_and_the_batch_still_lands(refusing_leases, monkeypatch,
                                                                                     caplog):
    """The keeper's failed extensions are the keeper's: the slow write goes on, the batch lands and is acknowledged,
    one warning says so (not one a tick), and the keeper is gone once the batch is, without waiting out its period."""
    from tenfold.feedback.sink import FeedbackSink, SinkOptions

    fake, settings = refusing_leases
    real_write = landing.write_batch
    wrote_at: list[float] = []

    def slow_write(*args: Any, **kwargs: Any) -> Any:  # long enough for the keeper's extensions at 1/3 and 2/3
        time.sleep(1.0 * DEADLINE_S)
        try:
            return real_write(*args, **kwargs)
        finally:
            wrote_at.append(time.monotonic())

    monkeypatch.setattr(landing, "write_batch", slow_write)
    caplog.set_level(logging.WARNING, logger="tenfold.feedback.sink")
    with FeedbackSink(settings, SinkOptions(max_messages=10, pull_wait_s=1.0)) as sink:
        assert sink.poll_once() == 1
        returned_at = time.monotonic()
        assert _keepers() == [], "the lease keeper outlived the batch"
    assert returned_at - wrote_at[0] < DEADLINE_S / 3 - 1, "the end of the batch waited out the keeper's period"
    assert len(fake.extensions) >= 2, f"the keeper tried {len(fake.extensions)} extension(s) during a 10 s write"
    assert {(tuple(ids), s) for _, ids, s in fake.extensions} == {(("ack-1",), DEADLINE_S)}
    assert fake.acked == ["ack-1"] and sink.stats["predictions"].landed == 1
    warned = [r.getMessage() for r in caplog.records if "could not extend the lease" in r.getMessage()]
    assert len(warned) == 1, warned
    assert "1 predictions message(s) in hand (ServiceUnavailable" in warned[0]
    landed = read_log(Lake.from_settings(settings), settings.storage.predictions_table, [Partition(2026, 5)],
                      PREDICTIONS_LOG)["prediction_id"].to_pylist()
    assert landed == ["a"]
