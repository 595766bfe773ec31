"""The stateful stack: KMS keys, buckets, Pub/Sub, the image repository, the serving token's secret.

Redeploying compute never touches it.

Construct ids here are fixed (tests/infra/test_stacks.py pins them): changing one makes Terraform
destroy and recreate the resource, i.e. lose data.
"""

from __future__ import annotations

from cdktn import TerraformOutput, TerraformStack
from cdktn_provider_google.artifact_registry_repository import ArtifactRegistryRepository
from cdktn_provider_google.data_google_project import DataGoogleProject
from cdktn_provider_google.data_google_storage_project_service_account import DataGoogleStorageProjectServiceAccount
from cdktn_provider_google.kms_crypto_key_iam_member import KmsCryptoKeyIamMember
from cdktn_provider_google.project_iam_audit_config import ProjectIamAuditConfig
from cdktn_provider_google.secret_manager_secret import (
    SecretManagerSecret,
    SecretManagerSecretReplication,
    SecretManagerSecretReplicationUserManaged,
    SecretManagerSecretReplicationUserManagedReplicas,
    SecretManagerSecretReplicationUserManagedReplicasCustomerManagedEncryption,
)
from constructs import Construct

from infra.components._jsii import structs
from infra.components.kms import Kms, KmsProps
from infra.components.messaging import Messaging, MessagingProps, SubscriptionSpec
from infra.components.storage import BucketSpec, Storage, StorageProps
from infra.stacks.common import configure
from tenfold.config import Settings
from tenfold.messaging.topology import dead_letter_subscription

# Dataproc's own folder in a staging bucket (driver output and batch config, per batch), not a name Tenfold chooses.
DATAPROC_METAINFO_PREFIX = "google-cloud-dataproc-metainfo/"
ENCRYPTER = "roles/cloudkms.cryptoKeyEncrypterDecrypter"


class DataStack(TerraformStack):
    def __init__(self, scope: Construct, settings: Settings) -> None:
        name = settings.infra.data_stack
        super().__init__(scope, name)
        configure(self, settings, name)
        s, st, m = settings, settings.storage, settings.messaging
        project = DataGoogleProject(self, "project", project_id=s.project_id)
        gcs_agent = DataGoogleStorageProjectServiceAccount(self, "gcs-agent", project=s.project_id)
        pubsub_agent = f"service-{project.number}@gcp-sa-pubsub.iam.gserviceaccount.com"
        registry_agent = f"service-{project.number}@gcp-sa-artifactregistry.iam.gserviceaccount.com"
        secrets_agent = f"service-{project.number}@gcp-sa-secretmanager.iam.gserviceaccount.com"

        kms = Kms(self, "kms", KmsProps(
            key_ring_name=st.kms.key_ring, location=s.region, rotation_period=st.kms.rotation_period,
            key_names={"storage": st.kms.storage_key, "pubsub": st.kms.pubsub_key, "secrets": st.kms.secrets_key},
        ))
        # Service agents encrypt on our behalf; each may use only the key of its own service.
        grants = [
            KmsCryptoKeyIamMember(self, "gcs-agent-key", crypto_key_id=kms.keys["storage"].id, role=ENCRYPTER,
                                  member=f"serviceAccount:{gcs_agent.email_address}"),
            KmsCryptoKeyIamMember(self, "registry-agent-key", crypto_key_id=kms.keys["storage"].id, role=ENCRYPTER,
                                  member=f"serviceAccount:{registry_agent}"),
        ]
        pubsub_grant = KmsCryptoKeyIamMember(self, "pubsub-agent-key", crypto_key_id=kms.keys["pubsub"].id, role=ENCRYPTER,
                                             member=f"serviceAccount:{pubsub_agent}")

        self.storage = Storage(self, "storage", StorageProps(
            location=s.region,
            kms_key_id=kms.keys["storage"].id,
            buckets=[
                # Staged job outputs and quarantined batches are for triage, not for keeping (settings.storage.lake_layout).
                BucketSpec("lake", st.lake_bucket, delete_prefixes_after_days=st.lake_layout.retention_days),
                BucketSpec("models", st.models_bucket, noncurrent_versions_kept=10, noncurrent_days=90),
                BucketSpec("artifacts", st.artifacts_bucket),
                # Dataproc writes each batch's driver output and config under this fixed folder of the staging bucket;
                # the staged code (settings.spark.dataproc_code_prefix) is kept.
                BucketSpec("dataproc-staging", st.dataproc_staging_bucket,
                           delete_prefixes_after_days={DATAPROC_METAINFO_PREFIX: 7}),
            ],
        ), depends_on=grants[:1])

        topics = {"requests": m.requests_topic, "predictions": m.predictions_topic, "feedback": m.feedback_topic}
        topics.update({f"{key}-dead-letter": sub.dead_letter_topic for key, sub in m.subscriptions.items()})
        self.messaging = Messaging(self, "messaging", MessagingProps(
            topics=topics,
            subscriptions=[
                SubscriptionSpec(construct_id=key, name=sub.name, topic=sub.topic, dead_letter_topic=sub.dead_letter_topic,
                                 dead_letter_subscription=sub.dead_letter_subscription, ack_deadline_s=sub.ack_deadline_s,
                                 max_delivery_attempts=sub.max_delivery_attempts, min_retry_backoff_s=sub.min_retry_backoff_s,
                                 max_retry_backoff_s=sub.max_retry_backoff_s,
                                 dead_letter_ack_deadline_s=dead_letter_subscription(sub)["ack_deadline_seconds"])
                for key, sub in m.subscriptions.items()
            ],
            kms_key_id=kms.keys["pubsub"].id,
            pubsub_service_agent=pubsub_agent,
            region=s.region,
        ), depends_on=[pubsub_grant])

        self.registry = ArtifactRegistryRepository(
            self, "image-repository", repository_id=s.infra.artifact_repository, location=s.region, format="DOCKER",
            kms_key_name=kms.keys["storage"].id, depends_on=grants[1:],
            cleanup_policies=structs([{"id": "drop-untagged", "action": "DELETE",
                               "condition": {"tag_state": "UNTAGGED", "older_than": "1209600s"}}]),
        )
        # The serving replicas' bearer token. Only the secret is declared: its versions (the token itself)
        # are added by an operator (docs/deploy.md), so no key ever sits in this repository or in the
        # Terraform state. One CMEK replica in the region: a key ring is regional, and automatic
        # replication would need a global key.
        secrets_grant = KmsCryptoKeyIamMember(self, "secrets-agent-key", crypto_key_id=kms.keys["secrets"].id, role=ENCRYPTER,
                                              member=f"serviceAccount:{secrets_agent}")
        self.serving_token = SecretManagerSecret(
            self, "serving-token", secret_id=s.serving.token_secret, project=s.project_id,
            labels={"role": "serving-token"},
            # Its id and replication force a replacement, which would delete every token version: each serving VM's
            # startup then stops before its container starts. Terraform refuses that, as it does for the KMS keys.
            deletion_protection=True,
            replication=SecretManagerSecretReplication(user_managed=SecretManagerSecretReplicationUserManaged(replicas=[
                SecretManagerSecretReplicationUserManagedReplicas(
                    location=s.region,
                    customer_managed_encryption=SecretManagerSecretReplicationUserManagedReplicasCustomerManagedEncryption(
                        kms_key_name=kms.keys["secrets"].id),
                ),
            ])),
            depends_on=[secrets_grant],
        )
        # Object reads and writes are recorded in Cloud Audit Logs (instead of legacy bucket usage logs).
        ProjectIamAuditConfig(self, "storage-audit", project=s.project_id, service="storage.googleapis.com",
                              audit_log_config=structs([{"log_type": "DATA_READ"}, {"log_type": "DATA_WRITE"}]))

        for cid, bucket in self.storage.buckets.items():
            TerraformOutput(self, f"bucket-{cid}", value=bucket.name)
        TerraformOutput(self, "serving-token-secret", value=self.serving_token.secret_id)
        TerraformOutput(self, "image-repository-url",
                        value=f"{s.region}-docker.pkg.dev/{s.project_id}/{s.infra.artifact_repository}")
