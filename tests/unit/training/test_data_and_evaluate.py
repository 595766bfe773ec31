"""Reading features (manifests enforced), sharding, the time split, and evaluation with baselines."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
import torch

from tenfold.config.settings import FEATURES_TABLE
from tenfold.data.lake import Lake, Partition, month_range
from tenfold.model import Preprocessor, load_model, save_model
from tenfold.training.data import (
    FeatureDataset,
    MissingFeaturesError,
    ShardedBatches,
    StaleFeaturesError,
    read_features,
)
from tenfold.training.evaluate import (
    check_time_split,
    compare,
    evaluate_model,
    evaluate_with_baselines,
    split_from_settings,
)
from tenfold.workloads import VERSION_KEY
from tenfold.workloads.flights import WORKLOAD
from tenfold.workloads.flights.contract import CONTRACT
from tenfold.workloads.flights.model import FlightDelayModel, ModelConfig
from tenfold.workloads.flights.synthetic import publish_synthetic_features, synthetic_features

TRAIN = month_range("2013-01", "2013-02")
HOLDOUT = [Partition(2013, 3)]


@pytest.fixture(scope="module")
def lake(tmp_path_factory: pytest.TempPathFactory) -> Lake:
    lake = Lake(tmp_path_factory.mktemp("lake").as_uri())
    publish_synthetic_features(lake, [*TRAIN, *HOLDOUT], 1500, seed=5)
    return lake


def test_a_partition_without_manifest_is_refused(lake: Lake, tmp_path: Path) -> None:
    # Data files present but never published (a job that died before writing _SUCCESS).
    folder = Path(lake.partition_path(FEATURES_TABLE, Partition(2013, 5))) / "data-unpublished"
    folder.mkdir(parents=True)
    pq.write_table(synthetic_features(Partition(2013, 5), 10), folder / "part-00000.parquet")
    with pytest.raises(MissingFeaturesError, match=r"2013-05 have no _SUCCESS manifest.*run build_features"):
        read_features(lake, [Partition(2013, 1), Partition(2013, 5)])


def test_a_partition_of_another_feature_definition_is_refused(tmp_path: Path) -> None:
    # Same columns and types, other meaning: only the recorded definition version can tell them apart.
    lake = Lake(tmp_path.as_uri())
    current, old = Partition(2013, 1), Partition(2013, 2)
    publish_synthetic_features(lake, [current], 50, seed=1)
    staged = tmp_path / "staged"
    staged.mkdir()
    pq.write_table(synthetic_features(old, 50), staged / "part-00000.parquet")
    lake.publish(FEATURES_TABLE, old, str(staged), run_id="old", extra={VERSION_KEY: CONTRACT.version - 1})
    assert read_features(lake, [current], contract=CONTRACT).num_rows == 50
    with pytest.raises(StaleFeaturesError, match=rf"2013-02 \(version {CONTRACT.version - 1}\).*rebuild"):
        read_features(lake, [current, old], contract=CONTRACT)


def test_ranks_together_see_the_single_process_batch(lake: Lake) -> None:
    table = read_features(lake, TRAIN)
    data = FeatureDataset.from_table(table, Preprocessor.fit(table, CONTRACT), CONTRACT.label)
    one = ShardedBatches(data, 64, world_size=1, rank=0, seed=4)
    two = [ShardedBatches(data, 32, world_size=2, rank=r, seed=4) for r in (0, 1)]
    assert one.steps_per_epoch == two[0].steps_per_epoch == two[1].steps_per_epoch
    for epoch in (0, 3):
        single = list(one.epoch(epoch))
        split = [list(s.epoch(epoch)) for s in two]
        for (_, whole), (_, a), (_, b) in zip(single, *split, strict=True):
            assert sorted(whole.tolist()) == sorted(a.tolist() + b.tolist())
    # Resuming at a batch offset yields the rest of the same epoch.
    assert [i.tolist() for _, i in two[1].epoch(2, start_batch=5)] == [i.tolist() for _, i in list(two[1].epoch(2))[5:]]


def test_an_epochs_batches_are_on_the_datas_device(lake: Lake) -> None:
    """A batch is a slice of the epoch's indices on the data's device: no host-to-device copy per step, which
    on a GPU waits for the device (bench/RESULTS.md, the GPU row). The meta device stands in for CUDA here."""
    table = read_features(lake, TRAIN)
    data = FeatureDataset.from_table(table, Preprocessor.fit(table, CONTRACT), CONTRACT.label)
    on_meta = ShardedBatches(data.to("meta"), 64, world_size=1, rank=0, seed=4)
    on_cpu = ShardedBatches(data, 64, world_size=1, rank=0, seed=4)
    batches = list(on_meta.epoch(1))
    assert batches and all(index.device.type == "meta" for _, index in batches)
    assert [(b, i.shape) for b, i in batches] == [(b, i.shape) for b, i in on_cpu.epoch(1)]

def test_the_split_is_by_time() -> None:
    from tenfold.config import build_settings

    train, holdout = split_from_settings(build_settings("local"))
    assert max(train) < min(holdout)
    with pytest.raises(ValueError, match="does not come after the training window"):
        check_time_split(month_range("2013-01", "2013-06"), month_range("2013-06", "2013-07"))


def _train_in_process(lake: Lake, out: Path) -> Path:
    table = read_features(lake, TRAIN)
    pre = Preprocessor.fit(table, CONTRACT)
    data = FeatureDataset.from_table(table, pre, CONTRACT.label)
    config = ModelConfig(embedding_dim=4, hidden=(16,), dropout=0.0)
    torch.manual_seed(0)
    model = FlightDelayModel(config, list(pre.vocab_sizes.values()), pre.num_inputs)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    batches = ShardedBatches(data, 128, 1, 0, seed=0)
    for epoch in range(3):
        for _, index in batches.epoch(epoch):
            cat, num, y = data.batch(index)
            opt.zero_grad()
            torch.nn.functional.binary_cross_entropy_with_logits(model(cat, num), y).backward()
            opt.step()
    save_model(out, model, config, pre, workload=WORKLOAD.name)
    return out


def test_model_and_both_baselines_on_the_same_holdout(
    lake: Lake, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tenfold.training.baselines import GradientBoostingBaseline

    model_dir = _train_in_process(lake, tmp_path / "model")
    fitted_on: list[tuple[str, ...]] = []
    real_fit = GradientBoostingBaseline.fit

    def recording_fit(self: GradientBoostingBaseline, table: Any) -> GradientBoostingBaseline:
        fitted_on.append(self.preprocessor.numeric_columns)
        return real_fit(self, table)

    monkeypatch.setattr(GradientBoostingBaseline, "fit", recording_fit)
    report = evaluate_with_baselines(model_dir, lake, TRAIN, HOLDOUT, hgb_max_iter=30)
    # The peer sees every numeric feature, the temperature and dew point the network is not fed too.
    assert fitted_on == [CONTRACT.numeric_columns] and "temp" not in load_model(model_dir).preprocessor.numeric_columns
    names = [m.name for m in report.all]
    assert names == ["model", "rate baseline", "gradient boosting"]
    assert {m.rows for m in report.all} == {1500}
    # The synthetic label depends on carrier and route: the rate baseline must find signal, and the
    # network (which also sees hour and weather) must beat it.
    assert report.baselines["rate_baseline"].auc > 0.55
    assert report.model.auc > report.baselines["rate_baseline"].auc
    assert report.model == evaluate_model(model_dir, lake, HOLDOUT)
    text = report.table()
    assert "gradient boosting" in text and f"{report.model.auc:.4f}" in text
    assert compare(report.all).count("\n") == 4
    report.save(tmp_path / "report.json")
    assert (tmp_path / "report.json").read_text().count('"auc"') == 3


def test_the_gradient_boosting_baseline_fits_a_window_where_a_column_has_no_value(lake: Lake) -> None:
    """A window that starts the data (January: no history before it) has all-null roll-ups; the baseline
    must still fit and score, not fail in scikit-learn's binning."""
    import pyarrow as pa

    from tenfold.training.baselines import GradientBoostingBaseline

    table = lake.read_table(FEATURES_TABLE, TRAIN)
    empty = CONTRACT.numeric_columns[0]
    index = table.schema.get_field_index(empty)
    table = table.set_column(index, empty, pa.nulls(table.num_rows, pa.float64()))
    preprocessor = Preprocessor.fit(table, CONTRACT)
    baseline = GradientBoostingBaseline(preprocessor, CONTRACT.label, max_iter=10).fit(table)
    scores = baseline.predict_proba(table)
    assert scores.shape == (table.num_rows,) and ((scores > 0) & (scores < 1)).all()


def test_any_run_conf_seed_seeds_every_stream_and_a_small_one_is_used_as_it_is() -> None:
    """The workers seed with ``seed * 1000 + rank + 1`` (and more, per step): a run conf seed of 10**17 passed the
    plan and then failed every rank in torch's manual_seed (an overflow past 64 bits)."""
    from tenfold.training.data import seed_everything

    for big in (10**17 * 1000 + 1, 2**64 + 5):
        seed_everything(big)
        assert torch.initial_seed() == big % 2**63
    seed_everything(11 * 1000 + 2)
    assert torch.initial_seed() == 11_002
    first = torch.rand(3)
    seed_everything(11_002)
    assert torch.equal(torch.rand(3), first)


@pytest.mark.parametrize("seed", [2**64 - 1, 2**63, 2**64, -1, True])
def test_a_seed_the_ranks_sampler_cannot_take_is_refused_by_the_config_naming_the_seed(seed: int) -> None:
    """The sampler seeds epoch e with seed + e, and torch refuses that from 2**64 on: a seed of 2**64 - 1 passed every
    check, shuffled epoch 0 and failed every rank at epoch 1 with a bare "Overflow when unpacking long long", after
    checkpointing, so torchrun restarted it and the task retried it."""
    from tenfold.training.config import TrainConfig

    with pytest.raises(ValueError, match=rf"^seed must be a whole number from 0 to 2\*\*63 - 1 .*got {seed!r}$"):
        TrainConfig(lake_uri="file:///lake", train_months=("2013-01",), seed=seed)


def test_the_largest_seed_allowed_shuffles_every_epoch_the_ranks_reach(lake: Lake) -> None:
    from tenfold.training.config import MAX_SEED, TrainConfig

    assert TrainConfig(lake_uri=lake.uri, train_months=("2013-01",), seed=MAX_SEED).seed == MAX_SEED
    table = read_features(lake, TRAIN[:1])
    data = FeatureDataset.from_table(table, Preprocessor.fit(table, CONTRACT), CONTRACT.label)
    batches = ShardedBatches(data, 64, world_size=2, rank=1, seed=MAX_SEED)
    for epoch in (0, 1, 1000):
        assert len(list(batches.epoch(epoch))) == batches.steps_per_epoch > 0


def test_a_month_re_published_while_the_pinned_window_is_read_is_refused(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """The pinned digest was checked before the read, which follows a publish that lands meanwhile: ranks trained on
    other rows than pinned (or other rows each), and the model's meta claimed the pinned digest."""
    from tenfold.training.data import RepublishedFeaturesError

    lake = Lake(tmp_path.as_uri())
    publish_synthetic_features(lake, TRAIN, 100, seed=1)
    pinned = lake.content_digest(FEATURES_TABLE, TRAIN)
    real = Lake.read_table

    def republished_meanwhile(self: Lake, *args: Any, **kwargs: Any) -> Any:
        publish_synthetic_features(lake, [TRAIN[0]], 120, seed=2)  # a backfill lands while the ranks read
        monkeypatch.setattr(Lake, "read_table", real)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Lake, "read_table", republished_meanwhile)
    with pytest.raises(RepublishedFeaturesError, match="were re-published since"):
        read_features(lake, TRAIN, digest=pinned)


def test_the_evaluation_table_names_the_models_window_apart_from_the_baselines() -> None:
    """`tenfold evaluate --train-months` moves the baselines' window only: the title said the model was "trained on"
    that window, whatever its meta.json said."""
    import numpy as np

    from tenfold.training.evaluate import EvaluationReport
    from tenfold.training.metrics import score

    y, p = np.array([0, 1, 0, 1, 1]), np.array([0.2, 0.7, 0.4, 0.6, 0.9])
    report = EvaluationReport(["2013-03", "2013-04", "2013-05"], ["2013-06"], score("model", y, p))
    title = report.table(["2013-01", "2013-05"]).splitlines()[0]
    assert title == "holdout 2013-06..2013-06 (model trained on 2013-01..2013-05, baselines fit on 2013-03..2013-05)"
    assert report.table(["2013-03", "2013-05"]).splitlines()[0] == "holdout 2013-06..2013-06 (trained on 2013-03..2013-05)"
    assert report.table().splitlines()[0] == "holdout 2013-06..2013-06 (trained on 2013-03..2013-05)"
