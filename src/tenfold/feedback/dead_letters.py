"""Dead-lettered predictions and feedback: what ``tenfold feedback dead-letters`` shows and replays.

The sink never acknowledges a message it cannot parse; after the subscription's ``max_delivery_attempts``
Pub/Sub moves it to the stream's dead-letter topic, whose subscription keeps it (7 days in the cloud; the
local emulator keeps it in memory). A message sent by a newer server (a record of a newer ``schema_version``, or
with a field this sink does not know yet) is such a message too, and is not lost: once the sink is upgraded,
replay it.

* :func:`peek` shows up to ``limit`` dead letters of a stream, each with why the sink refuses it now, and leaves
  them where they are (their leases are given back at once);
* :func:`replay` publishes each to the stream's topic again (its body and attributes), then acknowledges it on
  the dead-letter subscription: a message killed between the two is published twice, which the join's
  deduplication by prediction id makes harmless. One still refused comes back to the dead letters after its
  delivery attempts.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from tenfold.messaging import pulls

if TYPE_CHECKING:
    from tenfold.config import Settings

Stream = Literal["predictions", "feedback"]
STREAMS: tuple[Stream, ...] = ("predictions", "feedback")
# A replay publishes and acknowledges this many at a time, well within the dead-letter subscription's lease.
REPLAY_BATCH = 100
# How long the acknowledgement of messages already re-published is retried: given up on, they stay dead letters and
# the next replay sends them again (a short outage is worth waiting out here, unlike before anything was sent).
ACK_RETRY_S = 60.0


class ReplayError(RuntimeError):
    """Some dead letters could not be published again; the message says how many were."""


@dataclass(frozen=True)
class DeadLetter:
    stream: str
    message_id: str
    published_at: str
    body: bytes
    attributes: dict[str, str] = field(default_factory=dict)
    error: str | None = None  # why the sink refuses it now; None: it would land (the sink was fixed since)

    def to_dict(self) -> dict[str, Any]:
        return {"stream": self.stream, "message_id": self.message_id, "published_at": self.published_at,
                "attributes": self.attributes, "body": self.body.decode("utf-8", "replace"), "error": self.error}


def _subscription(settings: Settings, stream: str) -> Any:
    subs = settings.messaging.subscriptions
    if stream not in STREAMS or stream not in subs:
        raise ValueError(f"unknown stream {stream!r}: use one of {', '.join(STREAMS)}")
    return subs[stream]


def _call(method: Callable[..., Any], *, retry_s: float = pulls.RETRY_S, **kwargs: Any) -> Any:
    """:func:`tenfold.messaging.pulls.call` (a few seconds' retry while Pub/Sub is unavailable), waiting on this
    module's clock."""
    return pulls.call(method, retry_s=retry_s, clock=time, **kwargs)


def _pull(client: Any, path: str, n: int, *, first: bool) -> list[Any]:
    """:func:`tenfold.messaging.pulls.pull` (the first pull held; the drain of offline inference's dead letters
    pulls the same way; a Pub/Sub that answers nothing is raised as DeadlineExceeded, never taken for no dead
    letters), waiting on this module's clock."""
    return pulls.pull(client, path, n, first=first, clock=time)


def _give_back(client: Any, path: str, ack_ids: list[str]) -> None:
    """Leases returned at once (deadline 0): the messages stay, deliverable again; a page per request."""
    for i in range(0, len(ack_ids), REPLAY_BATCH):
        _call(client.modify_ack_deadline, request={"subscription": path, "ack_deadline_seconds": 0,
                                                   "ack_ids": ack_ids[i:i + REPLAY_BATCH]})


@contextmanager
def _client(settings: Settings, stream: str) -> Iterator[tuple[Any, str]]:
    from tenfold.messaging import subscriber_client, subscription_path

    path = subscription_path(settings, _subscription(settings, stream).dead_letter_subscription)
    with subscriber_client(settings) as client:
        yield client, path


def _letter(stream: Stream, m: Any) -> DeadLetter:
    from tenfold.feedback.sink import refusal

    published = m.message.publish_time
    data = bytes(m.message.data)
    return DeadLetter(stream=stream, message_id=m.message.message_id, published_at=published.isoformat() if published else "",
                      body=data, attributes=dict(m.message.attributes), error=refusal(stream, data))


def peek(settings: Settings, stream: Stream, *, limit: int = 100) -> list[DeadLetter]:
    """Up to ``limit`` dead letters of ``stream``, left in place (their leases given back at once)."""
    received: dict[str, Any] = {}
    with _client(settings, stream) as (client, path):
        try:
            while len(received) < limit:
                fresh = [m for m in _pull(client, path, min(100, limit - len(received)), first=not received)
                         if m.message.message_id not in received]
                if not fresh:
                    break
                received.update((m.message.message_id, m) for m in fresh)
        finally:
            _give_back(client, path, [m.ack_id for m in received.values()])
    return [_letter(stream, m) for m in received.values()]


def replay(settings: Settings, stream: Stream, *, limit: int = 100) -> list[DeadLetter]:
    """Publish up to ``limit`` dead letters of ``stream`` to its topic again, in batches of :data:`REPLAY_BATCH`:
    each message is acknowledged once it is published; one whose publish failed is given back (it stays), and
    the error, raised after the batch, says how many were sent before it."""
    from tenfold.messaging import publisher_client, topic_path

    topic = topic_path(settings, _subscription(settings, stream).topic)
    publisher = publisher_client(settings)
    sent: list[DeadLetter] = []
    try:
        with _client(settings, stream) as (client, path):
            while len(sent) < limit:
                try:
                    batch = _pull(client, path, min(REPLAY_BATCH, limit - len(sent)), first=not sent)
                except Exception as exc:
                    if not sent:  # nothing done yet: the caller says Pub/Sub cannot be reached
                        raise
                    raise ReplayError(f"{len(sent)} {stream} message(s) were re-published; then pulling more of the "
                                      f"dead letters failed ({type(exc).__name__}: {exc}): the rest stay dead letters, "
                                      "replay again once Pub/Sub answers") from exc
                if not batch:
                    break
                futures = [publisher.publish(topic, bytes(m.message.data), **{
                    k: v for k, v in m.message.attributes.items() if not k.startswith("googclient_")}) for m in batch]
                done, failed, error = [], [], None
                for m, future in zip(batch, futures, strict=True):
                    try:
                        future.result(timeout=60)
                        done.append(m)
                    except Exception as exc:  # this one stays a dead letter; the others are sent
                        failed.append(m)
                        error = error or exc
                if done:
                    try:
                        _call(client.acknowledge, retry_s=ACK_RETRY_S,
                              request={"subscription": path, "ack_ids": [m.ack_id for m in done]})
                    except Exception as exc:
                        raise ReplayError(
                            f"{len(sent) + len(done)} {stream} message(s) were re-published, but acknowledging the "
                            f"last {len(done)} on the dead-letter subscription failed ({type(exc).__name__}: {exc}): "
                            "they are still dead letters too, and a replay sends them again (harmless: the join drops "
                            "the duplicates); run it once Pub/Sub answers") from exc
                    sent += [_letter(stream, m) for m in done]
                if failed:
                    _give_back(client, path, [m.ack_id for m in failed])
                    raise ReplayError(f"{len(sent)} {stream} message(s) were re-published; publishing {len(failed)} "
                                      f"more failed ({type(error).__name__}: {error}): they stay dead letters, "
                                      "replay again") from error
    finally:
        publisher.stop()
    return sent
