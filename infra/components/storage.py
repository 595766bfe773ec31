"""GCS buckets: uniform access, public access prevention, versioning, lifecycle rules, CMEK."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from cdktn_provider_google.storage_bucket import StorageBucket
from constructs import Construct

from infra.components._jsii import structs


@dataclass(frozen=True)
class BucketSpec:
    construct_id: str  # stable: renaming it would make Terraform replace the bucket
    name: str
    noncurrent_versions_kept: int = 3  # older object versions beyond this are deleted
    noncurrent_days: int = 30
    delete_prefixes_after_days: dict[str, int] = field(default_factory=dict)  # e.g. staging areas


@dataclass(frozen=True)
class StorageProps:
    location: str
    kms_key_id: str
    buckets: Sequence[BucketSpec]
    force_destroy: bool = False


class Storage(Construct):
    def __init__(self, scope: Construct, id_: str, props: StorageProps, depends_on: Sequence[object] = ()) -> None:
        super().__init__(scope, id_)
        self.buckets: dict[str, StorageBucket] = {}
        for spec in props.buckets:
            rules: list[dict[str, object]] = [
                {"action": {"type": "Delete"},
                 "condition": {"num_newer_versions": spec.noncurrent_versions_kept, "with_state": "ARCHIVED"}},
                {"action": {"type": "Delete"},
                 "condition": {"days_since_noncurrent_time": spec.noncurrent_days, "with_state": "ARCHIVED"}},
                {"action": {"type": "AbortIncompleteMultipartUpload"}, "condition": {"age": 1}},
            ]
            for prefix, days in sorted(spec.delete_prefixes_after_days.items()):
                rules.append({"action": {"type": "Delete"}, "condition": {"age": days, "matches_prefix": [prefix]}})
            self.buckets[spec.construct_id] = StorageBucket(
                self, spec.construct_id,
                name=spec.name,
                location=props.location,
                storage_class="STANDARD",
                uniform_bucket_level_access=True,
                public_access_prevention="enforced",
                versioning={"enabled": True},
                encryption={"default_kms_key_name": props.kms_key_id},
                lifecycle_rule=structs(rules),
                force_destroy=props.force_destroy,
                depends_on=list(depends_on),  # type: ignore[arg-type]
            )
