"""What every Tenfold stack shares: the provider and the GCS state backend, both from settings."""

from __future__ import annotations

from cdktn import GcsBackend, TerraformStack
from cdktn_provider_google.provider import GoogleProvider

from tenfold.config import Settings


def configure(stack: TerraformStack, settings: Settings, stack_name: str) -> None:
    GoogleProvider(stack, "google", project=settings.project_id, region=settings.region,
                   default_labels={"app": "tenfold", "env": settings.env})
    # One state object per stack under the environment's prefix; the bucket is made once by hand
    # (docs/deploy.md), since Terraform cannot keep its own state in a bucket it creates.
    GcsBackend(stack, bucket=settings.storage.tf_state_bucket, prefix=f"{settings.infra.state_prefix}/{stack_name}")
