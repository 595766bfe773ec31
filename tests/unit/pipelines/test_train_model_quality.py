"""The gate judges probabilities: real models, the real evaluation, the registry on the emulator.

A calibrated champion is promoted first. Then a challenger that ranks *better* than the champion but
was made deliberately overconfident (its logits multiplied by 4: the ranking is unchanged, the
probabilities are ruined) goes through evaluate -> register -> gate and is refused on log loss
against the rate baseline, and the decision leads with that reason. ``tenfold models show`` then
shows both versions' calibration and the gate's checks.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from typer.testing import CliRunner

from tenfold.cli import app
from tenfold.config import Settings
from tenfold.data.lake import Lake, month_range
from tenfold.model import Preprocessor, save_model
from tenfold.model.io import predict_logits
from tenfold.pipelines import train_model as pipeline
from tenfold.registry import CHAMPION, ModelRegistry
from tenfold.registry import cli as models_cli
from tenfold.training.calibration import calibrate
from tenfold.training.data import FeatureDataset, ShardedBatches, read_features, validation_split
from tenfold.workloads.flights import WORKLOAD
from tenfold.workloads.flights.contract import CONTRACT
from tenfold.workloads.flights.model import FlightDelayModel, ModelConfig
from tenfold.workloads.flights.synthetic import publish_synthetic_features

CONF = {"train_months": ["2013-01", "2013-02"], "holdout_months": ["2013-03", "2013-03"]}


@pytest.fixture
def quality_settings(make_settings: Callable[..., Settings], local_settings: Settings) -> Settings:
    s = make_settings(on=local_settings)
    publish_synthetic_features(Lake.from_settings(s), month_range("2013-01", "2013-03"), 1500, seed=8)
    return s


def train_model_folder(settings: Settings, out: Path, *, epochs: int, lr: float, sharpen: float = 1.0,
                       calibration: str | None = None) -> dict[str, Any]:
    """A small network trained in this process on the window minus its validation slice, saved as a model folder.

    ``sharpen`` scales the last layer (every logit), ``calibration`` fits that method on the slice.
    """
    table = read_features(Lake.from_settings(settings), month_range(*CONF["train_months"]))
    pre = Preprocessor.fit(table, CONTRACT)
    split = validation_split(table, CONTRACT, 14)
    train = FeatureDataset.from_table(table.take(split.train), pre, CONTRACT.label)
    val = FeatureDataset.from_table(table.take(split.validation), pre, CONTRACT.label)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # several times faster than two threads on the shared 2-core machine
    try:
        torch.manual_seed(0)
        model = FlightDelayModel(ModelConfig(embedding_dim=4, hidden=(16,), dropout=0.0),
                                 list(pre.vocab_sizes.values()), pre.num_inputs)
        opt = torch.optim.Adam(model.parameters(), lr=lr)
        batches = ShardedBatches(train, 128, 1, 0, seed=0)
        for epoch in range(epochs):
            for _, index in batches.epoch(epoch):
                cat, num, y = train.batch(index)
                opt.zero_grad()
                torch.nn.functional.binary_cross_entropy_with_logits(model(cat, num), y).backward()
                opt.step()
        with torch.no_grad():
            model.mlp[-1].weight.mul_(sharpen)  # type: ignore[operator]
            model.mlp[-1].bias.mul_(sharpen)  # type: ignore[operator]
        calibrator = None
        if calibration:
            calibrator = calibrate(
                calibration, predict_logits(model, val.categorical, val.numeric).double().numpy(),
                val.labels.double().numpy(), train_logits=predict_logits(model, train.categorical, train.numeric).double().numpy(),
                train_labels=train.labels.double().numpy(), slice_info=split.info,
            )
    finally:
        torch.set_num_threads(threads)
    save_model(out, model, model.config, pre, workload=WORKLOAD.name, calibration=calibrator)
    return {"model_ref": str(out), "train_result": {"steps": epochs}}


def run(settings: Settings, run_id: str, trained: dict[str, Any]) -> tuple[Any, Any, dict[str, Any]]:
    planned = pipeline.plan(settings, run_id, CONF)
    evaluation = pipeline.evaluate(settings, planned, trained)
    registered = pipeline.register(settings, planned, trained, evaluation)
    return evaluation, registered, pipeline.gate(settings, planned, evaluation, registered)


def test_an_overconfident_challenger_with_a_higher_auc_is_refused_on_log_loss(
    quality_settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = quality_settings
    reg = ModelRegistry(s)
    champion = train_model_folder(s, tmp_path / "champion", epochs=1, lr=0.003, calibration="anchored_temperature")
    ev1, r1, d1 = run(s, "manual__champion", champion)
    assert d1["promote"], d1["summary"]
    assert d1["checks"]["log_loss_vs_rate"] and d1["checks"]["brier_vs_rate"]
    assert d1["calibration"]["method"].startswith("anchored temperature")
    assert d1["calibration"]["ece"] < d1["calibration"]["ece_uncalibrated"]  # held out: the March holdout
    assert sum(b["count"] for b in d1["calibration"]["table"]) == 1500

    challenger = train_model_folder(s, tmp_path / "challenger", epochs=3, lr=0.01, sharpen=4.0)
    ev2, r2, d2 = run(s, "manual__overconfident", challenger)
    rate = ev2.baselines["rate"]
    # It ranks better than the champion and the baseline: an AUC-only gate would have promoted it.
    assert ev2.challenger["auc"] > ev2.champion["metrics"]["auc"] + s.training.promote_margin > rate["auc"]
    assert ev2.challenger["log_loss"] > rate["log_loss"]
    assert not d2["promote"] and reg.resolve(CHAMPION) == r1.version
    assert d2["checks"]["beats_champion"] and d2["checks"]["beats_rate"]
    assert d2["checks"]["log_loss_vs_rate"] is False
    assert d2["summary"].startswith(f"KEEP CHAMPION: challenger {r2.version} vs champion {r1.version}; FAIL log loss "
                                    f"{ev2.challenger['log_loss']:.4f} <= baseline rate {rate['log_loss']:.4f}")
    assert "uncalibrated" not in ev2.challenger  # nothing was fitted: its raw probabilities were judged

    monkeypatch.setattr(models_cli, "command_settings", lambda env=None: s)
    out = CliRunner().invoke(app, ["models", "show", r2.version])
    assert out.exit_code == 0, out.output
    shown = json.loads(out.output)
    assert shown["calibration"]["method"] == "uncalibrated"
    assert shown["calibration"]["holdout"]["ece"] == pytest.approx(ev2.challenger["ece"])
    assert shown["calibration"]["holdout"]["table"] == ev2.challenger["calibration"]
    assert shown["gate_checks"]["manual__overconfident"]["log_loss_vs_rate"] is False
    assert shown["gate_decisions"]["manual__overconfident"] == d2["summary"]
    shown = json.loads(CliRunner().invoke(app, ["models", "show", "champion"]).output)
    assert shown["version"] == r1.version and shown["calibration"]["method"].startswith("anchored temperature")
    assert shown["calibration"]["holdout"]["ece_uncalibrated"] == pytest.approx(ev1.challenger["uncalibrated"]["ece"])
    assert shown["calibration"]["validation"]["after"]["ece"] < shown["calibration"]["validation"]["before"]["ece"]
