"""The Pub/Sub topology against Google's real emulator (started once per session by the fixtures)."""

from __future__ import annotations

import time

import pytest

from tenfold.config.settings import SubscriptionSettings
from tenfold.messaging import ensure_topology, publisher_client, subscriber_client, subscription_path, topic_path

pytestmark = pytest.mark.integration


def _topic_names(settings) -> set[str]:
    pub = publisher_client(settings)
    try:
        return {t.name.rsplit("/", 1)[1] for t in pub.list_topics(request={"project": f"projects/{settings.project_id}"})}
    finally:
        pub.transport.close()


def test_topology_matches_settings_and_is_idempotent(local_settings):
    msg = local_settings.messaging
    again = ensure_topology(local_settings)  # the fixture already provisioned once
    assert not again.changed
    assert set(msg.topics) <= _topic_names(local_settings)
    with subscriber_client(local_settings) as sub:
        for spec in msg.subscriptions.values():
            got = sub.get_subscription(request={"subscription": subscription_path(local_settings, spec.name)})
            assert got.topic == topic_path(local_settings, spec.topic)
            assert got.ack_deadline_seconds == spec.ack_deadline_s
            assert got.dead_letter_policy.dead_letter_topic == topic_path(local_settings, spec.dead_letter_topic)
            assert got.dead_letter_policy.max_delivery_attempts == spec.max_delivery_attempts
            assert got.retry_policy.minimum_backoff.total_seconds() == spec.min_retry_backoff_s
            dl = sub.get_subscription(request={"subscription": subscription_path(local_settings, spec.dead_letter_subscription)})
            assert dl.topic == topic_path(local_settings, spec.dead_letter_topic)
            # the source's deadline, as the infra stacks declare it too (tests/infra/test_stacks.py)
            assert dl.ack_deadline_seconds == spec.ack_deadline_s


def test_missing_pieces_are_recreated_and_drift_is_repaired(own_topology):
    settings = own_topology
    feedback = settings.messaging.subscriptions["feedback"]
    predictions = settings.messaging.subscriptions["predictions"]
    with subscriber_client(settings) as sub:
        sub.delete_subscription(request={"subscription": subscription_path(settings, feedback.dead_letter_subscription)})
        sub.delete_subscription(request={"subscription": subscription_path(settings, predictions.name)})
        sub.update_subscription(
            request={
                "subscription": {"name": subscription_path(settings, feedback.name), "ack_deadline_seconds": 42},
                "update_mask": {"paths": ["ack_deadline_seconds"]},
            }
        )
        result = ensure_topology(settings)
        assert sorted(result.subscriptions_created) == sorted([feedback.dead_letter_subscription, predictions.name])
        assert result.subscriptions_updated == [feedback.name]
        assert not result.topics_created
        got = sub.get_subscription(request={"subscription": subscription_path(settings, feedback.name)})
        assert got.ack_deadline_seconds == feedback.ack_deadline_s
        got = sub.get_subscription(request={"subscription": subscription_path(settings, predictions.name)})
        assert got.dead_letter_policy.max_delivery_attempts == predictions.max_delivery_attempts
    assert not ensure_topology(settings).changed


def test_a_dead_letter_subscription_keeps_the_source_deadline_after_an_upgrade(own_topology):
    """An upgrade that changes a subscription's ack deadline changes its dead-letter subscription's too, as the cloud
    stacks declare it: a stale deadline shorter than a drain's hold gets the dead letters redelivered mid-drain."""
    settings = own_topology
    feedback = settings.messaging.subscriptions["feedback"]
    dl_path = subscription_path(settings, feedback.dead_letter_subscription)
    with subscriber_client(settings) as sub:
        sub.update_subscription(
            request={
                "subscription": {"name": dl_path, "ack_deadline_seconds": 42},
                "update_mask": {"paths": ["ack_deadline_seconds"]},
            }
        )
        assert sub.get_subscription(request={"subscription": dl_path}).ack_deadline_seconds == 42
        result = ensure_topology(settings)
        assert result.subscriptions_updated == [feedback.dead_letter_subscription]
        assert not result.subscriptions_created
        got = sub.get_subscription(request={"subscription": dl_path})
        assert got.ack_deadline_seconds == feedback.ack_deadline_s != 42
    assert not ensure_topology(settings).changed


def test_a_subscription_whose_topic_was_deleted_is_a_clear_error(local_settings):
    spec = SubscriptionSettings(
        name="orphan-sub", topic="orphan", dead_letter_topic="orphan-dl", dead_letter_subscription="orphan-dl-sub"
    )
    settings = local_settings.model_copy(
        update={"messaging": local_settings.messaging.model_copy(update={"subscriptions": {"o": spec}})}
    )
    assert sorted(ensure_topology(settings).topics_created) == ["orphan", "orphan-dl"]
    pub = publisher_client(settings)
    pub.delete_topic(request={"topic": topic_path(settings, "orphan")})
    pub.transport.close()
    with pytest.raises(RuntimeError, match="orphan-sub is detached: its topic orphan was deleted"):
        ensure_topology(settings)


def test_a_dead_letter_subscription_whose_topic_was_deleted_is_a_clear_error(local_settings):
    """Its topic deleted (to empty the dead letters), the next provisioning created the topic again and passed the
    old subscription over, still detached: the dead letters reached a topic without a subscription and were
    dropped, and every drain reported none."""
    spec = SubscriptionSettings(
        name="orphan2-sub", topic="orphan2", dead_letter_topic="orphan2-dl", dead_letter_subscription="orphan2-dl-sub"
    )
    settings = local_settings.model_copy(
        update={"messaging": local_settings.messaging.model_copy(update={"subscriptions": {"o": spec}})}
    )
    ensure_topology(settings)
    assert not ensure_topology(settings).changed  # provisioned: idempotent
    pub = publisher_client(settings)
    pub.delete_topic(request={"topic": topic_path(settings, "orphan2-dl")})
    pub.transport.close()
    with pytest.raises(RuntimeError, match="orphan2-dl-sub is detached: its topic orphan2-dl was deleted"):
        ensure_topology(settings)


def test_a_message_nacked_max_delivery_attempts_times_is_dead_lettered(local_settings):
    # A subscription of its own (zero backoff keeps the test fast); everything else as in settings.
    base = local_settings.messaging.subscriptions["requests"]
    spec = SubscriptionSettings(
        name="dlq-test-sub",
        topic="dlq-test",
        dead_letter_topic="dlq-test-dead-letter",
        dead_letter_subscription="dlq-test-dead-letter-sub",
        ack_deadline_s=10,
        max_delivery_attempts=5,
        min_retry_backoff_s=0,
        max_retry_backoff_s=0,
    )
    messaging = local_settings.messaging.model_copy(update={"subscriptions": {"dlq": spec}})
    settings = local_settings.model_copy(update={"messaging": messaging})
    assert base.max_delivery_attempts == spec.max_delivery_attempts
    ensure_topology(settings)

    pub = publisher_client(settings)
    pub.publish(topic_path(settings, spec.topic), b"poison", kind="test").result(timeout=30)
    pub.transport.close()
    attempts = []
    with subscriber_client(settings) as sub:
        path = subscription_path(settings, spec.name)
        deadline = time.monotonic() + 60
        while len(attempts) < spec.max_delivery_attempts and time.monotonic() < deadline:
            resp = sub.pull(request={"subscription": path, "max_messages": 1}, timeout=10)
            for m in resp.received_messages:
                assert m.message.data == b"poison"
                attempts.append(m.delivery_attempt)
                # nack: make it immediately available again
                sub.modify_ack_deadline(request={"subscription": path, "ack_ids": [m.ack_id], "ack_deadline_seconds": 0})
        assert attempts == list(range(1, spec.max_delivery_attempts + 1))

        dead = []
        dl_path = subscription_path(settings, spec.dead_letter_subscription)
        redelivered = []
        while not dead and time.monotonic() < deadline:
            # The emulator forwards an exhausted message when it would deliver it next: keep pulling the
            # source (which must not hand it out a sixth time) and watch the dead-letter subscription.
            redelivered += _pull(sub, path)
            dead = _pull(sub, dl_path)
        assert not redelivered, "delivered again after max_delivery_attempts"
        assert dead, "the message never reached the dead-letter subscription"
        assert dead[0].message.data == b"poison" and dead[0].message.attributes["kind"] == "test"
        sub.acknowledge(request={"subscription": dl_path, "ack_ids": [dead[0].ack_id]})
        assert not _pull(sub, path)


def _pull(sub, path):
    from google.api_core.exceptions import DeadlineExceeded

    try:
        return list(sub.pull(request={"subscription": path, "max_messages": 1}, timeout=3).received_messages)
    except DeadlineExceeded:
        return []
