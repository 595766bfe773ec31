"""Fixtures for real torchrun runs: a small synthetic lake and the uninterrupted reference run."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tenfold.config import Settings
from tenfold.data.lake import Lake, month_range
from tenfold.training.config import TrainConfig
from tenfold.training.launch import TrainResult, run_torchrun
from tenfold.workloads.flights.model import ModelConfig
from tenfold.workloads.flights.synthetic import publish_synthetic_features

TRAIN_MONTHS = ("2013-01", "2013-02", "2013-03")
HOLDOUT_MONTHS = ("2013-04",)
ROWS_PER_MONTH = 400  # 1200 rows, 1021 besides the validation slice (the newest 14 days): 15 global batches of 64 per epoch


@pytest.fixture(scope="session")
def synthetic_lake(tmp_path_factory: pytest.TempPathFactory) -> Lake:
    lake = Lake(tmp_path_factory.mktemp("lake").as_uri())
    publish_synthetic_features(lake, month_range(TRAIN_MONTHS[0], HOLDOUT_MONTHS[-1]), ROWS_PER_MONTH, seed=3)
    return lake


@pytest.fixture(scope="session")
def train_settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings()


@pytest.fixture(scope="session")
def small_config(synthetic_lake: Lake) -> TrainConfig:
    # dropout 0: the reference run also serves the DDP-vs-one-process equivalence, where dropout masks
    # cannot match; the RNG restore that dropout needs is tested in tests/unit/training/test_checkpoint.py.
    # No early stopping, so every run takes exactly 50 steps; the best epoch is still chosen on the slice
    # (the newest 14 days), which the resume tests cover.
    return TrainConfig(
        lake_uri=synthetic_lake.uri, train_months=TRAIN_MONTHS, batch_size=32, epochs=5, max_steps=50,
        checkpoint_every=8, seed=11, model=ModelConfig(embedding_dim=4, hidden=(16, 8), dropout=0.0), threads=1,
        patience=None,
    )


@pytest.fixture(scope="session")
def reference_run(
    train_settings: Settings, small_config: TrainConfig, tmp_path_factory: pytest.TempPathFactory
) -> TrainResult:
    """An uninterrupted 2-rank gloo run of ``small_config``."""
    return run_torchrun(train_settings, small_config, tmp_path_factory.mktemp("reference"), nproc=2, timeout_s=240)


def read_losses(out: Path) -> dict[int, float]:
    """Loss per step from ``losses.jsonl`` (the last attempt's value where a step was replayed)."""
    import json

    losses: dict[int, float] = {}
    for line in (out / "losses.jsonl").read_text().splitlines():
        row = json.loads(line)
        losses[row["step"]] = row["loss"]
    return losses
