"""The validation slice is cut by time; calibration fitted on it keeps the ranking and lowers held-out ECE."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch

from tenfold.data.lake import Lake, Partition, month_range
from tenfold.model import Preprocessor, load_model, save_model
from tenfold.model.io import predict_logits
from tenfold.training.calibration import calibrate
from tenfold.training.data import FeatureDataset, ShardedBatches, read_features, validation_split
from tenfold.training.evaluate import evaluate_with_baselines
from tenfold.training.metrics import roc_auc
from tenfold.workloads import FeatureContract
from tenfold.workloads.flights import WORKLOAD
from tenfold.workloads.flights.contract import CONTRACT
from tenfold.workloads.flights.model import FlightDelayModel, ModelConfig
from tenfold.workloads.flights.synthetic import publish_synthetic_features, synthetic_features

TRAIN = month_range("2013-01", "2013-02")
HOLDOUT = [Partition(2013, 3)]


def _times(table: pa.Table) -> np.ndarray:
    return table["time_hour"].cast(pa.int64()).to_numpy()


def test_the_validation_slice_is_the_newest_two_weeks_and_never_splits_an_hour() -> None:
    table = pa.concat_tables([synthetic_features(p, 2000, seed=4) for p in TRAIN])
    split = validation_split(table, CONTRACT, 14)
    t = _times(table)
    assert split.has_validation and sorted([*split.train, *split.validation]) == list(range(table.num_rows))
    assert t[split.train].max() < t[split.validation].min()  # by time, not at random
    assert t.max() - t[split.validation].min() < 14 * 86_400 * 10**6 <= t.max() - t[split.train].max()
    assert split.info["rows"] == split.validation.size and 0.2 < split.info["share"] < 0.3  # 14 of February's 28 days
    # The times are time_hour's, in UTC: the last departure, 23:00 on 28 February in New York, is 04:00Z on 1 March.
    assert str(split.info["from"]).startswith("2013-02-1") and str(split.info["to"]).startswith("2013-03-01T04")
    off = validation_split(table, CONTRACT, 0)
    assert not off.has_validation and off.train.size == table.num_rows and "is 0" in str(off.info["skipped"])


def test_no_slice_when_it_would_be_half_the_window_or_rows_have_no_timestamp() -> None:
    month = synthetic_features(Partition(2013, 2), 500, seed=4)
    split = validation_split(month, CONTRACT, 20)  # 20 of 28 days
    assert not split.has_validation and "half or more" in str(split.info["skipped"])
    contract = FeatureContract(key_columns=("year", "month", "id"), label="label", categorical_columns=("c",),
                               numeric_columns=("x",), column_types={"year": "int32", "month": "int32", "id": "int64",
                                                                      "c": "string", "x": "float64", "label": "int32"})
    table = pa.table({"year": [2020] * 4, "month": [1, 1, 2, 2], "id": [1, 2, 3, 4], "c": ["a"] * 4,
                      "x": [0.0] * 4, "label": [0, 1, 0, 1]})
    split = validation_split(table, contract, 14)  # like the tiny test workload: trains on the whole window
    assert not split.has_validation and "no timestamp key column" in str(split.info["skipped"])


@pytest.fixture(scope="module")
def lake(tmp_path_factory: pytest.TempPathFactory) -> Lake:
    lake = Lake(tmp_path_factory.mktemp("lake").as_uri())
    publish_synthetic_features(lake, [*TRAIN, *HOLDOUT], 1500, seed=8)
    return lake


def overconfident_model(lake: Lake, sharpen: float = 4.0) -> tuple[FlightDelayModel, Preprocessor, FeatureDataset,
                                                                   FeatureDataset]:
    """A network trained briefly on the window minus its slice, then made deliberately overconfident:
    its last layer scaled by ``sharpen`` multiplies every logit, which keeps the ranking and ruins the
    probabilities (the same kind of model as issue 11's make-demo champion)."""
    table = read_features(lake, TRAIN)
    pre = Preprocessor.fit(table, CONTRACT)
    split = validation_split(table, CONTRACT, 14)
    train = FeatureDataset.from_table(table.take(split.train), pre, CONTRACT.label)
    val = FeatureDataset.from_table(table.take(split.validation), pre, CONTRACT.label)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # on a shared 2-core machine, one thread is several times faster
    try:
        torch.manual_seed(0)
        model = FlightDelayModel(ModelConfig(embedding_dim=4, hidden=(16,), dropout=0.0),
                                 list(pre.vocab_sizes.values()), pre.num_inputs)
        opt = torch.optim.Adam(model.parameters(), lr=0.01)
        batches = ShardedBatches(train, 128, 1, 0, seed=0)
        for epoch in range(3):
            for _, index in batches.epoch(epoch):
                cat, num, y = train.batch(index)
                opt.zero_grad()
                torch.nn.functional.binary_cross_entropy_with_logits(model(cat, num), y).backward()
                opt.step()
        with torch.no_grad():
            last = model.mlp[-1]
            assert isinstance(last, torch.nn.Linear)
            last.weight.mul_(sharpen)
            last.bias.mul_(sharpen)
    finally:
        torch.set_num_threads(threads)
    return model, pre, train, val


@pytest.mark.parametrize("method", ["temperature", "anchored_temperature"])
def test_calibration_keeps_the_ranking_and_lowers_held_out_ece(lake: Lake, tmp_path: Path, method: str) -> None:
    model, pre, train, val = overconfident_model(lake)
    calibrator = calibrate(
        method, predict_logits(model, val.categorical, val.numeric).double().numpy(), val.labels.double().numpy(),
        train_logits=predict_logits(model, train.categorical, train.numeric).double().numpy(),
        train_labels=train.labels.double().numpy(), slice_info={"rows": len(val)},
    )
    assert calibrator.method == method and calibrator.temperature > 2.5  # it was overconfident: T > 1 softens
    assert calibrator.report["after"]["ece"] < calibrator.report["before"]["ece"]  # on the slice it was fit on
    save_model(tmp_path, model, model.config, pre, workload=WORKLOAD.name, calibration=calibrator)

    # Held out: the month after the window, through the evaluation the gate uses.
    report = evaluate_with_baselines(tmp_path, lake, TRAIN, HOLDOUT, hgb_max_iter=20)
    assert report.uncalibrated is not None and report.calibration is not None
    assert report.calibration["method"] == method
    holdout = read_features(lake, HOLDOUT)
    logits = load_model(tmp_path).predict_logits(holdout)
    y = holdout["label"].to_numpy().astype(np.float64)
    # No ranking changes: the calibrated AUC is the AUC of the raw logits, to the last bit...
    assert report.model.auc == roc_auc(y, 1 / (1 + np.exp(-logits)))
    # ...and the network's own float32 sigmoid agrees up to its ties at the extremes.
    assert report.model.auc == pytest.approx(report.uncalibrated.auc, abs=1e-4)
    assert report.model.ece < 0.6 * report.uncalibrated.ece
    assert report.model.log_loss < report.uncalibrated.log_loss
    assert [m.name for m in report.all][:2] == ["model", "model uncalibrated"]
