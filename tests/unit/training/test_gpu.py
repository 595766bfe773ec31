"""The NCCL/CUDA path: one rank on a GPU. Skipped cleanly on machines without CUDA."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tenfold.config import Settings
from tenfold.model import load_model
from tenfold.training.config import TrainConfig
from tenfold.training.launch import run_torchrun

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (the nccl backend)"),
]


def test_nccl_training_on_cuda(train_settings: Settings, small_config: TrainConfig, tmp_path: Path) -> None:
    result = run_torchrun(train_settings, small_config.with_(backend="nccl"), tmp_path, nproc=1, timeout_s=300)
    assert result.raw["device"].startswith("cuda") and result.raw["backend"] == "nccl"
    assert result.steps == 50
    assert load_model(result.model_dir).predict_proba is not None

