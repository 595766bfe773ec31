"""Early stopping and the epoch choice on the validation slice, through real torchrun runs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from tenfold.config import Settings
from tenfold.data.lake import Lake
from tenfold.model import load_model
from tenfold.training.checkpoint import Snapshot, list_checkpoints, load_checkpoint
from tenfold.training.config import TrainConfig
from tenfold.training.data import read_features, validation_split
from tenfold.training.launch import TrainResult, run_torchrun
from tenfold.training.metrics import log_loss
from tenfold.workloads.flights.contract import CONTRACT
from tenfold.workloads.flights.model import ModelConfig


def _slice_log_loss(result: TrainResult, lake: Lake, cfg: TrainConfig, *, calibrated: bool) -> float:
    """The saved model's log loss on the validation slice, recomputed from its folder."""
    table = read_features(lake, cfg.partitions)
    val = table.take(validation_split(table, CONTRACT, cfg.validation_days).validation)
    loaded = load_model(result.model_dir)
    return log_loss(val["label"].to_numpy().astype(np.float64), loaded.predict_proba(val, calibrated=calibrated))


def test_the_saved_model_is_the_best_epoch_on_the_slice_and_is_calibrated(
    reference_run: TrainResult, synthetic_lake: Lake, small_config: TrainConfig
) -> None:
    v = reference_run.raw["validation"]
    # The newest 14 days (179 of 1,200 rows) are never trained on: 15 global batches of 64 remain.
    assert v["rows"] == 179 and reference_run.raw["rows"] == 1021 and "2013-03-17T23" < v["from"] < "2013-03-19"
    assert [h["step"] for h in v["history"]] == [15, 30, 45, 50]  # each epoch end, and the last step
    assert v["best_criterion"] == min(h["val_criterion"] for h in v["history"]) and not v["stopped_early"]
    assert _slice_log_loss(reference_run, synthetic_lake, small_config, calibrated=False) == pytest.approx(
        v["best_log_loss"], abs=1e-6)
    loaded = load_model(reference_run.model_dir)
    assert loaded.calibrator.method == "anchored_temperature"
    report = loaded.meta["calibration"]["report"]
    assert report["rows"] == 179 and report["after"]["log_loss"] <= report["before"]["log_loss"]
    assert loaded.meta["extra"]["validation"]["best_epoch"] == v["best_epoch"]


def test_training_stops_after_patience_epochs_without_gain_and_keeps_the_best(
    train_settings: Settings, synthetic_lake: Lake, small_config: TrainConfig, tmp_path: Path
) -> None:
    # A wide network at a high learning rate memorises 1,020 rows within a few epochs.
    cfg = small_config.with_(epochs=30, max_steps=None, patience=2, lr=0.03,
                             model=ModelConfig(embedding_dim=8, hidden=(64, 32), dropout=0.0))
    result = run_torchrun(train_settings, cfg, tmp_path, nproc=2, timeout_s=240)
    v = result.raw["validation"]
    criterion = [h["val_criterion"] for h in v["history"]]
    assert v["stopped_early"] and len(criterion) < 30
    assert v["best_epoch"] == len(criterion) - 3 and min(criterion) == criterion[-3] < min(criterion[-2:])
    assert result.steps == len(criterion) * 15
    # The folder holds the best epoch's weights, not the last ones.
    assert _slice_log_loss(result, synthetic_lake, cfg, calibrated=False) == pytest.approx(
        v["history"][-3]["val_log_loss"], abs=1e-6)


def test_the_kept_weights_are_the_moving_average_updated_every_step(
    train_settings: Settings, small_config: TrainConfig, tmp_path: Path
) -> None:
    """average_epochs=2: after every step the averaged weights move (1 - d) of the way to the trained ones, with
    d = 1 - 1 / (2 * steps_per_epoch), and the saved model (no slice here) is the last average, not the last step."""
    cfg = small_config.with_(max_steps=12, checkpoint_every=1, keep_checkpoints=20, average_epochs=2.0,
                             validation_days=0.0)
    result = run_torchrun(train_settings, cfg, tmp_path, nproc=2, timeout_s=240)
    snaps = {info.step: Snapshot.from_payload(load_checkpoint(info))
             for info in list_checkpoints(Path(result.out_dir) / "checkpoints")}
    assert sorted(snaps) == list(range(1, 13))
    d = 1.0 - 1.0 / (2.0 * result.raw["steps_per_epoch"])
    for k in (1, 6, 11):
        before, after = snaps[k].averaged, snaps[k + 1].averaged
        assert before is not None and after is not None and int(after["n_averaged"]) == k + 1
        for name, trained in snaps[k + 1].model.items():
            expected = d * before[f"module.{name}"] + (1 - d) * trained
            assert torch.allclose(after[f"module.{name}"], expected, atol=1e-6), (k, name)
    saved = load_model(result.model_dir).model.state_dict()
    last = snaps[12]
    assert last.averaged is not None
    assert all(torch.equal(saved[n], last.averaged[f"module.{n}"]) for n in saved)
    assert not all(torch.equal(saved[n], last.model[n]) for n in saved)  # the trained weights moved on
