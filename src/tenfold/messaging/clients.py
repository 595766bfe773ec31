"""The one place that builds Pub/Sub clients (see :mod:`tenfold.messaging`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from tenfold.config import Settings

if TYPE_CHECKING:
    from google.cloud.pubsub_v1 import PublisherClient, SubscriberClient


def topic_path(settings: Settings, topic: str) -> str:
    return f"projects/{settings.project_id}/topics/{topic}"


def subscription_path(settings: Settings, subscription: str) -> str:
    return f"projects/{settings.project_id}/subscriptions/{subscription}"


def publisher_client(settings: Settings) -> PublisherClient:
    """A publisher for ``settings``; its emulator, if any, wins over ``PUBSUB_EMULATOR_HOST``."""
    from google.cloud.pubsub_v1 import PublisherClient
    from google.pubsub_v1.services.publisher.transports import PublisherGrpcTransport

    host = settings.messaging.emulator_host
    if not host:
        return PublisherClient()
    import grpc

    # An explicit transport on an insecure channel: the emulator speaks plaintext gRPC, and the
    # address comes from settings rather than from whatever PUBSUB_EMULATOR_HOST the process has.
    transport = PublisherGrpcTransport(channel=grpc.insecure_channel(host), host=host)
    return PublisherClient(transport=transport)


def subscriber_client(settings: Settings) -> SubscriberClient:
    """A subscriber for ``settings`` (use it as a context manager, or call ``close()``)."""
    from google.cloud.pubsub_v1 import SubscriberClient
    from google.pubsub_v1.services.subscriber.transports import SubscriberGrpcTransport

    host = settings.messaging.emulator_host
    if not host:
        return SubscriberClient()
    import grpc

    # No 4 MiB cap on responses (the cloud client's own channel has none): a pull of several large
    # messages would otherwise be refused after the emulator had handed them out, stranding them.
    channel = grpc.insecure_channel(host, options=[("grpc.max_receive_message_length", -1)])
    transport = SubscriberGrpcTransport(channel=channel, host=host)
    return SubscriberClient(transport=transport)
