"""Pub/Sub topics and subscriptions with retry and dead-letter policies, CMEK, and the DLQ forwarding grants."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from cdktn_provider_google.pubsub_subscription import PubsubSubscription
from cdktn_provider_google.pubsub_subscription_iam_member import PubsubSubscriptionIamMember
from cdktn_provider_google.pubsub_topic import PubsubTopic
from cdktn_provider_google.pubsub_topic_iam_member import PubsubTopicIamMember
from constructs import Construct


@dataclass(frozen=True)
class SubscriptionSpec:
    construct_id: str
    name: str
    topic: str
    dead_letter_topic: str
    dead_letter_subscription: str
    ack_deadline_s: int
    # The dead-letter subscription's, as tenfold.messaging.topology.dead_letter_subscription gives it locally.
    dead_letter_ack_deadline_s: int
    max_delivery_attempts: int
    min_retry_backoff_s: int
    max_retry_backoff_s: int


@dataclass(frozen=True)
class MessagingProps:
    topics: dict[str, str]  # stable construct id -> topic name; dead-letter topics included
    subscriptions: Sequence[SubscriptionSpec]
    kms_key_id: str
    pubsub_service_agent: str  # service-<number>@gcp-sa-pubsub.iam.gserviceaccount.com
    region: str  # where messages are stored: the region of the (regional) KMS key that encrypts them
    message_retention: str = "604800s"  # 7 days: time to replay after an incident


class Messaging(Construct):
    def __init__(self, scope: Construct, id_: str, props: MessagingProps, depends_on: Sequence[object] = ()) -> None:
        super().__init__(scope, id_)
        agent = f"serviceAccount:{props.pubsub_service_agent}"
        # Construct ids name the role, not the resource: a rename replaces the topic, never reshuffles ids.
        # Messages are stored in the region of the regional key that encrypts them, and only there: without a
        # storage policy Pub/Sub keeps a message in the region nearest its publisher (an operator's workstation
        # abroad, say), outside the key's region.
        self.topics: dict[str, PubsubTopic] = {
            name: PubsubTopic(self, f"topic-{cid}", name=name, kms_key_name=props.kms_key_id,
                              message_retention_duration=props.message_retention,
                              message_storage_policy={"allowed_persistence_regions": [props.region]},
                              depends_on=list(depends_on))  # type: ignore[arg-type]
            for cid, name in props.topics.items()
        }
        cid_of = {name: cid for cid, name in props.topics.items()}
        self.subscriptions: dict[str, PubsubSubscription] = {}
        dead_letter_subs: dict[str, SubscriptionSpec] = {}
        for spec in props.subscriptions:
            sub = PubsubSubscription(
                self, f"sub-{spec.construct_id}",
                name=spec.name,
                topic=self.topics[spec.topic].id,
                ack_deadline_seconds=spec.ack_deadline_s,
                message_retention_duration=props.message_retention,
                retry_policy={"minimum_backoff": f"{spec.min_retry_backoff_s}s", "maximum_backoff": f"{spec.max_retry_backoff_s}s"},
                dead_letter_policy={"dead_letter_topic": self.topics[spec.dead_letter_topic].id,
                                    "max_delivery_attempts": spec.max_delivery_attempts},
                expiration_policy={"ttl": ""},  # never expire an idle subscription (dev sits idle)
            )
            self.subscriptions[spec.name] = sub
            # Pub/Sub forwards undeliverable messages as its own service agent: it must be able to
            # publish to the dead-letter topic and to ack on the source subscription.
            PubsubTopicIamMember(self, f"dlq-publisher-{spec.construct_id}", topic=self.topics[spec.dead_letter_topic].name,
                                 role="roles/pubsub.publisher", member=agent)
            PubsubSubscriptionIamMember(self, f"dlq-subscriber-{spec.construct_id}", subscription=sub.name,
                                        role="roles/pubsub.subscriber", member=agent)
            dead_letter_subs[spec.dead_letter_topic] = spec
        # Every dead-letter topic gets its own subscription: a topic without one drops what it receives.
        for topic, spec in dead_letter_subs.items():
            self.subscriptions[spec.dead_letter_subscription] = PubsubSubscription(
                self, f"dlq-sub-{cid_of[topic]}",
                name=spec.dead_letter_subscription,
                topic=self.topics[topic].id,
                ack_deadline_seconds=spec.dead_letter_ack_deadline_s,
                message_retention_duration=props.message_retention,
                expiration_policy={"ttl": ""},
            )
