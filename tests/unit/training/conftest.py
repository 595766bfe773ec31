"""Fixtures for real torchrun runs: a small synthetic lake and the uninterrupted reference runs (``reference_run``
without dropout or early stopping, ``resume_reference`` with both, for the runs that are killed or resumed)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
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
    # cannot match. No early stopping, so every run takes exactly 50 steps. A killed and resumed run is compared
    # with an uninterrupted one under resume_config, whose dropout and early stopping a resume must restore.
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


@pytest.fixture(scope="session")
def resume_config(small_config: TrainConfig) -> TrainConfig:
    """``small_config`` with dropout and early stopping, for the runs that are killed or resumed: dropout is what
    draws on the RNG during training, so only with it does a resume that loses the ranks' RNG streams end elsewhere;
    and the epoch choice and the count of epochs without gain must carry over a restart. Where it stops depends on
    float rounding (the CPU's vector path, the torch build): one machine stopped after 4 epochs of 15 steps, epoch
    1 best. The tests take their steps from ``resume_reference`` (see :func:`resume_points`), never from that run."""
    return small_config.with_(model=dataclasses.replace(small_config.model, dropout=0.3), patience=2, epochs=8,
                              max_steps=None, lr=0.01)


@pytest.fixture(scope="session")
def resume_reference(
    train_settings: Settings, resume_config: TrainConfig, tmp_path_factory: pytest.TempPathFactory
) -> TrainResult:
    """An uninterrupted 2-rank gloo run of ``resume_config``: what every killed or resumed run must end as."""
    result = run_torchrun(train_settings, resume_config, tmp_path_factory.mktemp("resume-reference"), nproc=2,
                          timeout_s=240)
    chosen = result.raw["validation"]
    # What makes the comparisons worth making: it stopped early at an epoch end, and scored at least one epoch
    # without gain before its last one (so a resume inside its last epoch must carry that count over).
    ends = [h["step"] for h in chosen["history"]]
    assert chosen["stopped_early"] and ends and ends[-1] == result.steps, (
        f"resume_config must make the run stop early (the resume tests need it); it ran {result.steps} steps: {chosen}")
    assert len([s for s in ends if s > chosen["best_step"]]) >= 2, (
        f"resume_config must early-stop after two or more epochs without gain (a patience of 2 or more): {chosen}")
    return result


@dataclass(frozen=True)
class ResumePoints:
    """Steps of ``resume_reference`` the resume tests kill or resume at, read off that run (its length varies
    with the machine's float rounding): ``checkpoints`` every step it checkpointed at (each ``checkpoint_every``
    and each epoch end), of which its folder keeps the newest ``keep_checkpoints``."""

    steps: int
    steps_per_epoch: int
    checkpoints: tuple[int, ...]
    first_bad_epoch_end: int  # the end of its first epoch without gain, before its last epoch

    def newest_before(self, step: int) -> int:
        """The newest checkpoint of a step before ``step``: where a run killed before ``step``'s checkpoint resumes."""
        return max(c for c in self.checkpoints if c < step)

    def mid_epoch(self, step: int) -> bool:
        return step % self.steps_per_epoch != 0

    def checkpoint_kill(self) -> int:
        """A mid-epoch checkpoint step, after the first epoch was scored and before the run ends, whose predecessor
        is mid-epoch too: rank 0 killed writing it resumes in the middle of an epoch with a best epoch to carry."""
        found = [c for c in self.checkpoints if self.steps_per_epoch < c < self.steps and self.mid_epoch(c)
                 and self.mid_epoch(self.newest_before(c))]
        assert found, f"no mid-epoch checkpoint follows a mid-epoch one in the reference run: {self}"
        return found[0]


def resume_points(reference: TrainResult, config: TrainConfig) -> ResumePoints:
    import json

    from tenfold.training.checkpoint import list_checkpoints

    per_epoch = int(reference.raw["steps_per_epoch"])
    chosen = reference.raw["validation"]
    steps = [s for s in range(1, reference.steps + 1)
             if s % per_epoch == 0 or s % config.checkpoint_every == 0 or s == reference.steps]
    # The schedule is the worker's: the newest of them are what its folder holds.
    kept = [c.step for c in list_checkpoints(Path(reference.out_dir) / "checkpoints")]
    assert kept == steps[-config.keep_checkpoints:], (kept, steps)
    # Every step's loss once (no attempt replayed one): what a resumed run's losses.jsonl is counted against.
    assert [json.loads(line)["step"] for line in (Path(reference.out_dir) / "losses.jsonl").read_text().splitlines()] \
        == list(range(1, reference.steps + 1))
    ends = [h["step"] for h in chosen["history"]]
    return ResumePoints(steps=reference.steps, steps_per_epoch=per_epoch, checkpoints=tuple(steps),
                        first_bad_epoch_end=min(s for s in ends if s > chosen["best_step"]))


def assert_same_run(result: TrainResult, reference: TrainResult) -> None:
    """``result`` (a local folder, or a file:// URI's) ended bit for bit where the uninterrupted ``reference`` did:
    its steps, every step's loss, its weights, and its epoch choice and calibration (as the model's meta records)."""
    import json

    import torch

    assert result.steps == reference.steps
    assert read_losses(Path(result.out_dir)) == read_losses(Path(reference.out_dir))
    a = torch.load(Path(result.model_dir) / "weights.pt", weights_only=True)
    b = torch.load(Path(reference.model_dir) / "weights.pt", weights_only=True)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), f"{key} differs from the uninterrupted run"
    assert result.raw["validation"] == reference.raw["validation"]
    assert result.raw["calibration"] == reference.raw["calibration"]
    meta = [json.loads((Path(r.model_dir) / "meta.json").read_text())["extra"]["validation"] for r in (result, reference)]
    assert meta[0] == meta[1]


def read_losses(out: Path) -> dict[int, float]:
    """Loss per step from ``losses.jsonl`` (the last attempt's value where a step was replayed)."""
    import json

    losses: dict[int, float] = {}
    for line in (out / "losses.jsonl").read_text().splitlines():
        row = json.loads(line)
        losses[row["step"]] = row["loss"]
    return losses
