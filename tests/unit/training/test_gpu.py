"""The NCCL/CUDA path: one rank on a GPU. Skipped cleanly on machines without CUDA."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from tenfold.config import Settings
from tenfold.data.lake import Lake
from tenfold.model import load_model
from tenfold.training.checkpoint import list_checkpoints
from tenfold.training.config import TrainConfig
from tenfold.training.data import read_features
from tenfold.training.launch import run_torchrun

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (the nccl backend)"),
]


def test_nccl_training_on_cuda(train_settings: Settings, small_config: TrainConfig, synthetic_lake: Lake,
                               tmp_path: Path) -> None:
    result = run_torchrun(train_settings, small_config.with_(backend="nccl"), tmp_path, nproc=1, timeout_s=300)
    assert result.raw["device"].startswith("cuda") and result.raw["backend"] == "nccl"
    assert result.steps == 50
    # The model the GPU run saved scores rows: one finite probability strictly between 0 and 1 for each.
    rows = read_features(synthetic_lake, small_config.partitions).slice(0, 8)
    probabilities = load_model(result.model_dir).predict_proba(rows)
    assert probabilities.shape == (8,), probabilities
    assert np.isfinite(probabilities).all() and ((probabilities > 0) & (probabilities < 1)).all(), probabilities


def test_a_run_on_cuda_resumes_from_its_checkpoint_bit_for_bit(train_settings: Settings, resume_config: TrainConfig,
                                                               tmp_path: Path) -> None:
    """Every resume on a GPU used to fail: the snapshot was loaded to cuda, and the RNG states with it. With dropout
    (resume_config), so a resume that lost the RNG states would differ."""
    config = resume_config.with_(backend="nccl")
    clean = run_torchrun(train_settings, config, tmp_path / "clean", nproc=1, timeout_s=300)
    out = tmp_path / "resumed"
    shutil.copytree(clean.out_dir, out)
    shutil.rmtree(out / "model")
    newest = list_checkpoints(out / "checkpoints")[-1]
    newest.path.write_bytes(newest.path.read_bytes()[: newest.path.stat().st_size // 2])  # the newest is torn
    resumed = run_torchrun(train_settings, config, out, nproc=1, timeout_s=300)
    assert resumed.resumed_from_step is not None and resumed.resumed_from_step < clean.steps
    a = torch.load(clean.model_dir / "weights.pt", weights_only=True)
    b = torch.load(resumed.model_dir / "weights.pt", weights_only=True)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
