"""Both GCS emulators through the same start/stop code, and the one behaviour that tells them apart."""

from __future__ import annotations

import pytest

from tenfold.local import ensure_buckets, free_port, local_settings, start_service, stop_service

pytestmark = pytest.mark.integration


@pytest.fixture(params=["fake-gcs-server", "gcp-storage-emulator"])
def gcs(request, tmp_path):
    settings = local_settings(tmp_path / "home", gcs_port=free_port(), gcs_emulator=request.param)
    start_service(settings, "gcs")
    try:
        yield settings
    finally:
        stop_service(settings, "gcs")


def test_buckets_are_created_idempotently_and_persist_across_restarts(gcs):
    from tenfold.storage import gcs_client

    wanted = ensure_buckets(gcs)
    listed = sorted(b.name for b in gcs_client(gcs).list_buckets())
    assert set(wanted) <= set(listed)
    gcs_client(gcs).bucket(gcs.storage.models_bucket).blob("k/v.txt").upload_from_string(b"kept")
    ensure_buckets(gcs)  # again: no bucket made twice or made anew (emptied)
    assert sorted(b.name for b in gcs_client(gcs).list_buckets()) == listed
    assert gcs_client(gcs).bucket(gcs.storage.models_bucket).blob("k/v.txt").download_as_bytes() == b"kept"

    stop_service(gcs, "gcs")
    start_service(gcs, "gcs")
    client = gcs_client(gcs)
    assert set(wanted) <= {b.name for b in client.list_buckets()}
    assert client.bucket(gcs.storage.models_bucket).blob("k/v.txt").download_as_bytes() == b"kept"


def test_generation_preconditions(gcs):
    """fake-gcs-server enforces if_generation_match (the registry's atomic alias moves need it);
    gcp-storage-emulator ignores it, which is why it is not the default."""
    from google.api_core.exceptions import PreconditionFailed

    from tenfold.storage import gcs_client

    ensure_buckets(gcs)
    blob = gcs_client(gcs).bucket(gcs.storage.models_bucket).blob("aliases/champion")
    blob.upload_from_string(b"v1", if_generation_match=0)  # create only if absent
    if gcs.local.gcs_emulator == "fake-gcs-server":
        with pytest.raises(PreconditionFailed):
            blob.upload_from_string(b"v2", if_generation_match=0)
        assert blob.download_as_bytes() == b"v1"
    else:
        blob.upload_from_string(b"v2", if_generation_match=0)  # silently accepted
        assert blob.download_as_bytes() == b"v2"
