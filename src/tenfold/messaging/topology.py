"""Create the Pub/Sub topology named in settings, idempotently.

For every subscription in ``settings.messaging.subscriptions``: its topic, its dead-letter topic, the
subscription itself with a dead-letter policy (``max_delivery_attempts``), a retry policy (min/max
backoff) and its ack deadline, and a plain subscription on the dead-letter topic so dead letters are
retained and can be inspected or replayed. Existing resources are left alone, except that a
subscription whose delivery settings drifted from settings is updated to match.

On real Pub/Sub the service agent also needs publisher rights on each dead-letter topic and
subscriber rights on each source subscription; the infra stacks grant those, the emulator has no IAM.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tenfold.config import Settings
from tenfold.messaging.clients import publisher_client, subscriber_client, subscription_path, topic_path

if TYPE_CHECKING:
    from tenfold.config.settings import SubscriptionSettings


@dataclass
class Topology:
    """What :func:`ensure_topology` found and did (names, not paths)."""

    topics_created: list[str] = field(default_factory=list)
    subscriptions_created: list[str] = field(default_factory=list)
    subscriptions_updated: list[str] = field(default_factory=list)
    topics: list[str] = field(default_factory=list)
    subscriptions: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.topics_created or self.subscriptions_created or self.subscriptions_updated)


def _subscription_spec(settings: Settings, sub: SubscriptionSettings) -> dict[str, Any]:
    from google.protobuf.duration_pb2 import Duration

    return {
        "name": subscription_path(settings, sub.name),
        "topic": topic_path(settings, sub.topic),
        "ack_deadline_seconds": sub.ack_deadline_s,
        "dead_letter_policy": {
            "dead_letter_topic": topic_path(settings, sub.dead_letter_topic),
            "max_delivery_attempts": sub.max_delivery_attempts,
        },
        "retry_policy": {
            "minimum_backoff": Duration(seconds=sub.min_retry_backoff_s),
            "maximum_backoff": Duration(seconds=sub.max_retry_backoff_s),
        },
    }


def dead_letter_subscription(sub: SubscriptionSettings) -> dict[str, Any]:
    """The plain subscription on ``sub``'s dead-letter topic (names, not paths): what :func:`ensure_topology` creates
    locally and the infra stacks declare in the cloud, from this one answer. It has no retry or dead-letter policy of
    its own (a dead letter rests there until someone acks it) and the source subscription's ack deadline: whoever
    drains or replays dead letters gets as long per message as the consumer that gave up on them."""
    return {"name": sub.dead_letter_subscription, "topic": sub.dead_letter_topic, "ack_deadline_seconds": sub.ack_deadline_s}


def _check_attached(current: Any, name: str, topic: str, wanted_path: str) -> None:
    """Refuse an existing subscription that is not on the topic settings name for it: detached from a deleted topic,
    or on another one (a subscription cannot move topics)."""
    if current.topic == "_deleted-topic_":
        raise RuntimeError(
            f"subscription {name} is detached: its topic {topic} was deleted. Delete the subscription "
            "(its backlog is lost) and re-run; it will be recreated on the new topic"
        )
    if current.topic != wanted_path:
        raise RuntimeError(
            f"subscription {name} exists on topic {current.topic}, but settings say {wanted_path}: "
            "a subscription cannot move topics; delete it (messages on it are lost) and re-run"
        )


def ensure_topology(settings: Settings, *, timeout: float = 30.0) -> Topology:
    """Create what is missing; returns what exists and what changed. Safe to run any number of times."""
    result = Topology()
    publisher = publisher_client(settings)
    try:
        _ensure(settings, result, publisher, timeout)
    finally:
        publisher.transport.close()
    return result


def _ensure(settings: Settings, result: Topology, publisher: Any, timeout: float) -> None:
    from google.api_core.exceptions import AlreadyExists, NotFound
    from google.pubsub_v1.types import Subscription

    msg = settings.messaging
    with subscriber_client(settings) as subscriber:
        # msg.topics already lists every topic of the standard settings; a subscription's own topic is
        # added anyway so settings with extra subscriptions (tests, later features) are complete too.
        wanted_topics = dict.fromkeys(
            [*msg.topics, *(s.topic for s in msg.subscriptions.values()), *(s.dead_letter_topic for s in msg.subscriptions.values())]
        )
        for topic in wanted_topics:
            try:
                publisher.create_topic(request={"name": topic_path(settings, topic)}, timeout=timeout)
                result.topics_created.append(topic)
            except AlreadyExists:
                pass
            result.topics.append(topic)

        for sub in msg.subscriptions.values():
            spec = _subscription_spec(settings, sub)
            try:
                subscriber.create_subscription(request=spec, timeout=timeout)
                result.subscriptions_created.append(sub.name)
            except AlreadyExists:
                current = subscriber.get_subscription(request={"subscription": spec["name"]}, timeout=timeout)
                wanted = Subscription(**spec)
                _check_attached(current, sub.name, sub.topic, wanted.topic)
                drift = [
                    f
                    for f in ("ack_deadline_seconds", "dead_letter_policy", "retry_policy")
                    if getattr(current, f) != getattr(wanted, f)
                ]
                if drift:
                    subscriber.update_subscription(
                        request={"subscription": wanted, "update_mask": {"paths": drift}}, timeout=timeout
                    )
                    result.subscriptions_updated.append(sub.name)
            result.subscriptions.append(sub.name)

            # Dead letters need a subscription of their own, or Pub/Sub drops them on arrival.
            dead_letters = dead_letter_subscription(sub)
            try:
                subscriber.create_subscription(
                    request={
                        **dead_letters,
                        "name": subscription_path(settings, dead_letters["name"]),
                        "topic": topic_path(settings, dead_letters["topic"]),
                    },
                    timeout=timeout,
                )
                result.subscriptions_created.append(sub.dead_letter_subscription)
            except AlreadyExists:  # on the dead-letter topic still? Detached (the topic deleted and created again by
                # this run), the policy's dead letters reached a topic without a subscription and were dropped
                dl_path = subscription_path(settings, sub.dead_letter_subscription)
                current = subscriber.get_subscription(request={"subscription": dl_path}, timeout=timeout)
                _check_attached(current, sub.dead_letter_subscription, sub.dead_letter_topic,
                                topic_path(settings, sub.dead_letter_topic))
                # An upgrade that changed the source's deadline changes this one too, as the cloud stacks declare it:
                # a drain holding messages longer than a stale deadline would get them redelivered under it.
                if current.ack_deadline_seconds != dead_letters["ack_deadline_seconds"]:
                    subscriber.update_subscription(
                        request={
                            "subscription": {"name": dl_path, "ack_deadline_seconds": dead_letters["ack_deadline_seconds"]},
                            "update_mask": {"paths": ["ack_deadline_seconds"]},
                        },
                        timeout=timeout,
                    )
                    result.subscriptions_updated.append(sub.dead_letter_subscription)
            except NotFound as exc:  # the topic vanished between the two calls
                raise RuntimeError(f"dead-letter topic {sub.dead_letter_topic} disappeared while provisioning") from exc
            result.subscriptions.append(sub.dead_letter_subscription)
