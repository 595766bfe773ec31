"""The one place that builds a Google Cloud Storage client.

Locally the client talks to the GCS emulator through ``STORAGE_EMULATOR_HOST`` semantics (an
explicit ``api_endpoint`` and anonymous credentials); in the cloud it uses Application Default
Credentials. Callers never branch on the environment themselves.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tenfold.config import Settings

if TYPE_CHECKING:
    from google.cloud import storage


def gcs_client(settings: Settings) -> storage.Client:
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    if settings.storage.emulator_host:
        return storage.Client(
            project=settings.project_id,
            credentials=AnonymousCredentials(),  # type: ignore[no-untyped-call]
            client_options={"api_endpoint": settings.storage.emulator_host},
        )
    return storage.Client(project=settings.project_id)
