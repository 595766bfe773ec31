"""A store that ignores generation preconditions (gcp-storage-emulator) is detected, not trusted."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tenfold.config import Settings
from tenfold.local import free_port, local_settings
from tenfold.registry import Lineage, ModelRegistry, PreconditionsNotEnforced


@pytest.fixture
def unsafe_settings(tmp_path: Path) -> Iterator[Settings]:
    from gcp_storage_emulator.server import create_server

    port = free_port()
    server = create_server("127.0.0.1", port, in_memory=True)
    server.start()
    try:
        settings = local_settings(tmp_path / "home", gcs_port=port, gcs_emulator="gcp-storage-emulator")
        ModelRegistry(settings).client.create_bucket(settings.storage.models_bucket)
        yield settings
    finally:
        server.stop()


def _model(d: Path) -> Path:
    d.mkdir(parents=True)
    (d / "weights.pt").write_bytes(b"w" * 64)
    (d / "meta.json").write_text("{}")
    (d / "preprocessing.json").write_text("{}")
    return d


def test_registry_refuses_a_store_that_ignores_preconditions(unsafe_settings: Settings, tmp_path: Path) -> None:
    reg = ModelRegistry(unsafe_settings)
    lineage = Lineage(feature_table="features", train_partitions=(), holdout_partitions=(), training_config={})
    with pytest.raises(PreconditionsNotEnforced, match="fake-gcs-server"):
        reg.register(_model(tmp_path / "a"), lineage, metrics={"auc": 0.7})
    assert reg.list_versions() == []  # refused before anything was written

    # Opting in (a single writer) works, but says loudly what is at stake.
    unsafe = ModelRegistry(unsafe_settings, allow_unsafe_store=True)
    with pytest.warns(RuntimeWarning, match="ignores generation preconditions"):
        mv = unsafe.register(_model(tmp_path / "b"), lineage, metrics={"auc": 0.7})
    with pytest.warns(RuntimeWarning):
        unsafe.promote(mv.version, expected=None)
    assert json.loads(unsafe.bucket.blob(unsafe._name("aliases", "champion")).download_as_bytes())["version"] == mv.version


def test_audit_records_are_refused_on_a_store_that_ignores_preconditions(unsafe_settings: Settings) -> None:
    """A gate decision and a rollout event are create-only (a retried rollout step finds its own earlier event and
    does not act twice): on such a store the second write replaced the first and both returned True."""
    reg = ModelRegistry(unsafe_settings)
    version = "0" * 20  # a version id (nothing is read about it)
    with pytest.raises(PreconditionsNotEnforced):
        reg.record_decision(version, "run-1", {"promote": True})
    with pytest.raises(PreconditionsNotEnforced):
        reg.record_rollout_event(version, "r-run1", "start", {"percent": 10})
    assert list(reg.client.list_blobs(reg.bucket_name, prefix=reg._name("decisions"))) == []
    assert list(reg.client.list_blobs(reg.bucket_name, prefix=reg._name("rollouts"))) == []
