"""Pub/Sub clients and topology, identical locally (emulator) and in the cloud.

``publisher_client(settings)`` / ``subscriber_client(settings)`` are the real google-cloud-pubsub
clients: against ``settings.messaging.emulator_host`` over an insecure loopback channel when set,
with Application Default Credentials otherwise. ``ensure_topology(settings)`` creates every topic,
subscription (with its dead-letter policy, retry policy and ack deadline) and dead-letter topic with
its own subscription, idempotently.
"""

from __future__ import annotations

from tenfold.messaging.clients import publisher_client, subscriber_client, subscription_path, topic_path
from tenfold.messaging.topology import Topology, ensure_topology

__all__ = ["Topology", "ensure_topology", "publisher_client", "subscriber_client", "subscription_path", "topic_path"]
