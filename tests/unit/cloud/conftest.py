"""Fixtures shared by the cloud-adapter tests."""

from __future__ import annotations

from typing import Any

import pytest

from tenfold.config import get_settings


@pytest.fixture(scope="module")
def storage_client(gcs_emulator: str) -> Any:
    """A real storage client on the GCS emulator, with the dev artifacts bucket (where run markers live)."""
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    client = storage.Client(project="test", credentials=AnonymousCredentials(), client_options={"api_endpoint": gcs_emulator})
    bucket = get_settings("dev").storage.artifacts_bucket
    if client.lookup_bucket(bucket) is None:
        client.create_bucket(bucket)
    return client
