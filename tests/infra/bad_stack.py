"""Known-bad infrastructure: each resource breaks one rule, and checkov must FAIL it with the given id.

If checkov ever passes one of these, the policy scan of the real stacks proves nothing.
"""

from __future__ import annotations

from cdktn import TerraformStack
from cdktn_provider_google.compute_firewall import ComputeFirewall
from cdktn_provider_google.compute_instance_template import ComputeInstanceTemplate
from cdktn_provider_google.project_iam_member import ProjectIamMember
from cdktn_provider_google.provider import GoogleProvider
from cdktn_provider_google.pubsub_topic import PubsubTopic
from cdktn_provider_google.storage_bucket import StorageBucket
from cdktn_provider_google.storage_bucket_iam_member import StorageBucketIamMember
from constructs import Construct

from infra.components._jsii import structs

# logical id (construct id) -> the checkov check that must fail on it
EXPECTED_FAILURES = {
    ("google_compute_firewall", "ssh-from-world"): "CKV_GCP_2",
    ("google_storage_bucket_iam_member", "public-reader"): "CKV_GCP_28",
    ("google_storage_bucket", "public-bucket"): "CKV_GCP_114",
    ("google_compute_instance_template", "default-sa"): "CKV_GCP_30",
    ("google_compute_instance_template", "oslogin-off"): "CKV_GCP_34",
    ("google_compute_instance_template", "no-shielded-vm"): "CKV_GCP_39",
    ("google_pubsub_topic", "topic-without-cmek"): "CKV_GCP_83",
    # infra/checkov.yaml skips CKV_GCP_49 in the platform stacks only: everywhere else it still fails this
    ("google_project_iam_member", "act-as-any-account"): "CKV_GCP_49",
}


class BadStack(TerraformStack):
    def __init__(self, scope: Construct, id_: str) -> None:
        super().__init__(scope, id_)
        GoogleProvider(self, "google", project="bad-example-project", region="us-central1")
        ComputeFirewall(self, "ssh-from-world", name="ssh-from-world", network="default",
                        source_ranges=["0.0.0.0/0"], allow=structs([{"protocol": "tcp", "ports": ["22"]}]))
        bucket = StorageBucket(self, "public-bucket", name="bad-public-bucket", location="US",
                               uniform_bucket_level_access=True, public_access_prevention="inherited")
        StorageBucketIamMember(self, "public-reader", bucket=bucket.name, role="roles/storage.objectViewer", member="allUsers")
        PubsubTopic(self, "topic-without-cmek", name="bad-topic")
        ProjectIamMember(self, "act-as-any-account", project="bad-example-project", role="roles/iam.serviceAccountUser",
                         member="serviceAccount:vm@bad-example-project.iam.gserviceaccount.com")

        def template(cid: str, *, sa: str, metadata: dict[str, str], shielded: bool) -> None:
            ComputeInstanceTemplate(
                self, cid, name=cid, machine_type="e2-small",
                disk=structs([{"source_image": "debian-cloud/debian-12", "boot": True}]),
                network_interface=structs([{"network": "default"}]),
                service_account={"email": sa, "scopes": ["cloud-platform"]},
                metadata=metadata,
                shielded_instance_config=(
                    {"enable_secure_boot": True, "enable_vtpm": True, "enable_integrity_monitoring": True} if shielded else None
                ),
            )

        good_md = {"enable-oslogin": "TRUE", "block-project-ssh-keys": "true"}
        dedicated = "vm@bad-example-project.iam.gserviceaccount.com"
        template("default-sa", sa="123456789012-compute@developer.gserviceaccount.com", metadata=good_md, shielded=True)
        template("oslogin-off", sa=dedicated, metadata={**good_md, "enable-oslogin": "FALSE"}, shielded=True)
        template("no-shielded-vm", sa=dedicated, metadata=good_md, shielded=False)
