"""Dead-lettered predictions and feedback: what ``tenfold feedback dead-letters`` shows and replays.

The sink never acknowledges a message it cannot parse; after the subscription's ``max_delivery_attempts``
Pub/Sub moves it to the stream's dead-letter topic, whose subscription keeps it (7 days in the cloud; the
local emulator keeps it in memory). A message sent by a newer server whose record has a field this sink does
not know yet is such a message too, and is not lost: once the sink is upgraded, replay it.

* :func:`peek` shows up to ``limit`` dead letters of a stream, each with why the sink refuses it now, and leaves
  them where they are (their leases are given back at once);
* :func:`replay` publishes each to the stream's topic again (its body and attributes), then acknowledges it on
  the dead-letter subscription: a message killed between the two is published twice, which the join's
  deduplication by prediction id makes harmless. One still refused comes back to the dead letters after its
  delivery attempts.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from tenfold.messaging.records import FeedbackRecord, PredictionRecord

if TYPE_CHECKING:
    from tenfold.config import Settings

Stream = Literal["predictions", "feedback"]
STREAMS: tuple[Stream, ...] = ("predictions", "feedback")
_PARSE: dict[str, Callable[[bytes], Any]] = {"predictions": PredictionRecord.from_message,
                                             "feedback": FeedbackRecord.from_message}


@dataclass(frozen=True)
class DeadLetter:
    stream: str
    message_id: str
    published_at: str
    body: bytes
    attributes: dict[str, str] = field(default_factory=dict)
    error: str | None = None  # why the sink refuses it now; None: it parses (the sink was fixed since)

    def to_dict(self) -> dict[str, Any]:
        return {"stream": self.stream, "message_id": self.message_id, "published_at": self.published_at,
                "attributes": self.attributes, "body": self.body.decode("utf-8", "replace"), "error": self.error}


def why_refused(stream: str, body: bytes) -> str | None:
    """The sink's verdict on ``body`` now: the first validation error, or None when it parses."""
    from pydantic import ValidationError

    try:
        _PARSE[stream](body)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ())) or "body"
        return f"{where}: {first.get('msg')}" + (f" ({exc.error_count()} errors)" if exc.error_count() > 1 else "")
    return None


def _subscription(settings: Settings, stream: str) -> Any:
    subs = settings.messaging.subscriptions
    if stream not in STREAMS or stream not in subs:
        raise ValueError(f"unknown stream {stream!r}: use one of {', '.join(STREAMS)}")
    return subs[stream]


@contextmanager
def _leased(settings: Settings, stream: str, limit: int) -> Iterator[tuple[Any, str, list[Any], set[str]]]:
    """Up to ``limit`` distinct dead letters of ``stream``, leased; on exit the leases of those not acknowledged
    are given back (deadline 0), so they stay in the dead-letter subscription."""
    from tenfold.messaging import subscriber_client, subscription_path

    path = subscription_path(settings, _subscription(settings, stream).dead_letter_subscription)
    received: dict[str, Any] = {}
    acked: set[str] = set()  # ack ids the caller acknowledged
    with subscriber_client(settings) as client:
        try:
            while len(received) < limit:
                resp = client.pull(request={"subscription": path, "max_messages": min(100, limit - len(received)),
                                            "return_immediately": True}, timeout=30)
                fresh = [m for m in resp.received_messages if m.message.message_id not in received]
                if not fresh:
                    break
                received.update((m.message.message_id, m) for m in fresh)
            messages = list(received.values())
            yield client, path, messages, acked
        finally:
            left = [m.ack_id for m in received.values() if m.ack_id not in acked]
            if left:
                client.modify_ack_deadline(request={"subscription": path, "ack_ids": left, "ack_deadline_seconds": 0})


def _letter(stream: str, m: Any) -> DeadLetter:
    published = m.message.publish_time
    return DeadLetter(stream=stream, message_id=m.message.message_id,
                      published_at=published.isoformat() if published else "", body=bytes(m.message.data),
                      attributes=dict(m.message.attributes), error=why_refused(stream, bytes(m.message.data)))


def peek(settings: Settings, stream: str, *, limit: int = 100) -> list[DeadLetter]:
    """Up to ``limit`` dead letters of ``stream``, left in place."""
    with _leased(settings, stream, limit) as (_client, _path, messages, _acked):
        return [_letter(stream, m) for m in messages]


def replay(settings: Settings, stream: str, *, limit: int = 100) -> list[DeadLetter]:
    """Publish up to ``limit`` dead letters of ``stream`` to its topic again, acknowledging each once published."""
    from tenfold.messaging import publisher_client, topic_path

    topic = topic_path(settings, _subscription(settings, stream).topic)
    publisher = publisher_client(settings)
    sent: list[DeadLetter] = []
    try:
        with _leased(settings, stream, limit) as (client, path, messages, acked):
            for m in messages:
                attributes = {k: v for k, v in m.message.attributes.items() if not k.startswith("googclient_")}
                publisher.publish(topic, bytes(m.message.data), **attributes).result(timeout=60)
                client.acknowledge(request={"subscription": path, "ack_ids": [m.ack_id]})
                acked.add(m.ack_id)
                sent.append(_letter(stream, m))
    finally:
        publisher.stop()
    return sent
