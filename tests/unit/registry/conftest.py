"""Registry tests run against the session's fake-gcs-server (``gcs_emulator`` in tests/conftest.py).

Each test gets its own registry prefix in the shared models bucket (``make_settings(on=...)``), so tests
never see each other's versions or aliases.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from tenfold.config import Settings
from tenfold.registry import Lineage, PartitionRef


@pytest.fixture
def registry_settings(make_settings: Callable[..., Settings], local_settings: Settings) -> Settings:
    """On the session's GCS emulator, with a registry prefix of this test's own."""
    return make_settings(on=local_settings)


ModelDirFactory = Callable[..., Path]


@pytest.fixture
def make_model_dir(tmp_path: Path) -> ModelDirFactory:
    """A saved-model folder (weights, meta.json, preprocessing state) whose bytes depend on ``seed``."""

    def make(seed: int = 0, *, name: str | None = None, metrics: dict[str, float] | None = None) -> Path:
        d = tmp_path / (name or f"model-{seed}-{uuid.uuid4().hex[:6]}")
        d.mkdir()
        (d / "weights.pt").write_bytes(bytes((seed * 7 + i) % 256 for i in range(4096)))
        (d / "meta.json").write_text(json.dumps({"version": 1, "format": 1, "seed": seed, "hidden": [32, 16]}))
        (d / "preprocessing.json").write_text(json.dumps({"vocab": {"carrier": ["AA", "B6"]}, "seed": seed}))
        (d / "checkpoints").mkdir()
        (d / "checkpoints" / "step-10.pt").write_bytes(uuid.uuid4().bytes)  # scratch: never part of a version
        if metrics is not None:
            (d / "metrics.json").write_text(json.dumps(metrics))
        return d

    return make


@pytest.fixture
def lineage() -> Lineage:
    ref = PartitionRef(partition="2013-01", data_dir="data-abc", rows=10, schema_hash="s", run_id="r1", manifest_sha256="m" * 64)
    return Lineage(feature_table="features", train_partitions=(ref,), holdout_partitions=(), training_config={"epochs": 1},
                   run_id="test-run")
