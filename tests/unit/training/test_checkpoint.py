"""Checkpoint files: atomic write + checksum, fallback past corrupt ones, pruning, RNG round trip."""

from __future__ import annotations

import errno
import json
import logging
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from tenfold.training import checkpoint as ckpt


def _save(folder: Path, step: int, keep: int = 5) -> None:
    ckpt.save_checkpoint(folder, step, {"model": {"w": torch.full((4,), float(step))}, "step": step}, keep=keep)


def test_newest_valid_checkpoint_is_loaded(tmp_path: Path) -> None:
    for step in (10, 20, 30):
        _save(tmp_path, step)
    info, payload = ckpt.latest_valid_checkpoint(tmp_path)  # type: ignore[misc]
    assert info.step == 30 and torch.equal(payload["model"]["w"], torch.full((4,), 30.0))
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]


def test_truncated_newest_falls_back_to_previous(tmp_path: Path) -> None:
    for step in (10, 20, 30):
        _save(tmp_path, step)
    newest = ckpt.checkpoint_path(tmp_path, 30)
    newest.write_bytes(newest.read_bytes()[:100])
    found = ckpt.latest_valid_checkpoint(tmp_path)
    assert found is not None and found[0].step == 20


def test_bit_flip_and_missing_sidecar_are_detected(tmp_path: Path) -> None:
    for step in (10, 20, 30):
        _save(tmp_path, step)
    data = bytearray(ckpt.checkpoint_path(tmp_path, 30).read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, different content
    ckpt.checkpoint_path(tmp_path, 30).write_bytes(bytes(data))
    ckpt.checkpoint_path(tmp_path, 20).with_suffix(".json").unlink()  # a write that never committed
    found = ckpt.latest_valid_checkpoint(tmp_path)
    assert found is not None and found[0].step == 10


def test_all_corrupt_or_none_means_a_fresh_start(tmp_path: Path) -> None:
    assert ckpt.latest_valid_checkpoint(tmp_path / "absent") is None
    _save(tmp_path, 10)
    (tmp_path / "ckpt-00000010.json").write_text(json.dumps({"step": 10, "bytes": 1, "sha256": "0"}))
    assert ckpt.latest_valid_checkpoint(tmp_path) is None


def test_only_the_newest_are_kept(tmp_path: Path) -> None:
    for step in (1, 2, 3, 4, 5):
        _save(tmp_path, step, keep=2)
    assert [c.step for c in ckpt.list_checkpoints(tmp_path)] == [4, 5]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "ckpt-00000004.json", "ckpt-00000004.pt", "ckpt-00000005.json", "ckpt-00000005.pt"]


def test_rng_states_survive_a_checkpoint(tmp_path: Path) -> None:
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    ckpt.save_checkpoint(tmp_path, 1, {"model": {}, "step": 1, "rng": {0: ckpt.rng_state()}})
    expected = (random.random(), np.random.rand(), torch.rand(3), torch.nn.functional.dropout(torch.ones(8), 0.5))
    random.seed(9)
    np.random.seed(9)
    torch.manual_seed(9)
    _, payload = ckpt.latest_valid_checkpoint(tmp_path)  # type: ignore[misc]
    ckpt.set_rng_state(payload["rng"][0])
    got = (random.random(), np.random.rand(), torch.rand(3), torch.nn.functional.dropout(torch.ones(8), 0.5))
    assert got[0] == expected[0] and got[1] == expected[1]
    assert torch.equal(got[2], expected[2]) and torch.equal(got[3], expected[3])


def test_nccl_without_cuda_is_refused_naming_the_fix() -> None:
    import pytest

    from tenfold.training.worker import WorkerError, select_device

    assert select_device("gloo", 0) == torch.device("cpu")
    if torch.version.cuda is None:  # the CPU wheel (this suite's): the fix is the image's CUDA variant, not gloo
        with pytest.raises(WorkerError, match=r"this torch is a CPU build: run the image built with --build-arg "
                                              r"VARIANT=cuda") as refused:
            select_device("nccl", 0)
        assert getattr(refused.value, "retryable", True) is False  # every try meets the same build: refused once
    elif not torch.cuda.is_available():
        with pytest.raises(WorkerError, match=r"backend nccl needs CUDA.*use gloo"):
            select_device("nccl", 0)
    with pytest.raises(WorkerError, match="unknown backend 'mpi'"):
        select_device("mpi", 0)


def _snapshot(step: int) -> ckpt.Snapshot:
    model = torch.nn.Linear(3, 1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=10)
    return ckpt.Snapshot(
        model=model.state_dict(), optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(), step=step,
        epoch=2, batch=5, world_size=2, rng={0: ckpt.rng_state(), 1: ckpt.rng_state()}, trajectory="cfg",
    )


def test_a_snapshot_round_trips_through_its_checkpoint(tmp_path: Path) -> None:
    saved = _snapshot(12)
    ckpt.save_snapshot(tmp_path, saved, keep=2)
    info, got = ckpt.latest_valid_snapshot(tmp_path)  # type: ignore[misc]
    assert info.step == 12 and info.path == ckpt.checkpoint_path(tmp_path, 12)
    assert (got.step, got.epoch, got.batch, got.world_size, got.trajectory) == (12, 2, 5, 2, "cfg")
    assert got.model.keys() == saved.model.keys()
    assert all(torch.equal(got.model[k], saved.model[k]) for k in saved.model)
    assert got.scheduler == saved.scheduler and sorted(got.rng) == [0, 1]


def test_a_checkpoint_that_is_no_snapshot_is_skipped_for_an_older_one(tmp_path: Path) -> None:
    ckpt.save_snapshot(tmp_path, _snapshot(10))
    _save(tmp_path, 20)  # verifies, but lacks the optimizer, the RNGs, ...
    found = ckpt.latest_valid_snapshot(tmp_path)
    assert found is not None and found[0].step == 10


def test_the_worker_builds_its_model_in_one_function() -> None:
    from tenfold.model import Preprocessor
    from tenfold.training.config import TrainConfig
    from tenfold.training.worker import build_model
    from tenfold.workloads.flights.model import FlightDelayModel, ModelConfig

    pre = Preprocessor(categorical_columns=("a",), numeric_columns=("x", "y"), vocabularies={"a": ["p", "q"]},
                       means={"x": 0.0, "y": 0.0}, stds={"x": 1.0, "y": 1.0})
    cfg = TrainConfig(lake_uri="file:///nowhere", train_months=("2013-01",), model=ModelConfig(embedding_dim=2, hidden=(4,)))
    model = build_model(cfg, pre)
    assert isinstance(model, FlightDelayModel)
    assert list(model.vocab_sizes) == list(pre.vocab_sizes.values()) and model.num_inputs == pre.num_inputs


def test_a_workload_model_without_its_input_sizes_is_refused_before_training(monkeypatch: pytest.MonkeyPatch) -> None:
    """A user's build_model returning a plain module trained through every epoch, then failed saving it with an
    AttributeError ('Net' object has no attribute 'vocab_sizes'), again on every restart from its checkpoint."""
    from types import SimpleNamespace

    from tenfold import workloads
    from tenfold.model import Preprocessor
    from tenfold.training.config import TrainConfig
    from tenfold.training.worker import WorkerError, build_model
    from tenfold.workloads.flights.model import ModelConfig

    own = SimpleNamespace(name="flights", build_model=lambda config, vocab_sizes, num_inputs: torch.nn.Linear(num_inputs, 1))
    monkeypatch.setitem(workloads._LOADED, "flights", own)
    pre = Preprocessor(categorical_columns=("a",), numeric_columns=("x", "y"), vocabularies={"a": ["p", "q"]},
                       means={"x": 0.0, "y": 0.0}, stds={"x": 1.0, "y": 1.0})
    cfg = TrainConfig(lake_uri="file:///nowhere", train_months=("2013-01",), model=ModelConfig(embedding_dim=2, hidden=(4,)))
    with pytest.raises(WorkerError, match=r"flights's build_model returned Linear with vocab_sizes=None .* "
                                          rf"vocab_sizes=\[3\] and num_inputs={pre.num_inputs}"):
        build_model(cfg, pre)

    class Sized(torch.nn.Linear):  # its sizes as a numpy array: as good as a tuple
        def __init__(self, num_inputs: int, vocab_sizes: list[int]) -> None:
            super().__init__(num_inputs, 1)
            self.num_inputs, self.vocab_sizes = num_inputs, np.array(vocab_sizes)

        def forward(self, categorical: torch.Tensor, numeric: torch.Tensor) -> torch.Tensor:  # one logit per row
            return super().forward(numeric).squeeze(1)

    monkeypatch.setitem(workloads._LOADED, "flights", SimpleNamespace(
        name="flights", build_model=lambda config, vocab_sizes, num_inputs: Sized(num_inputs, vocab_sizes)))
    assert isinstance(build_model(cfg, pre), Sized)


def test_a_corrupt_later_checkpoint_never_pushes_out_the_one_just_written(tmp_path: Path) -> None:
    # A run resumed from step 10 because step 30 was corrupt (or of other settings), with keep=1.
    for step in (10, 30):
        _save(tmp_path, step)
    newest = ckpt.checkpoint_path(tmp_path, 30)
    newest.write_bytes(newest.read_bytes()[:100])
    assert ckpt.latest_valid_checkpoint(tmp_path)[0].step == 10  # type: ignore[index]
    _save(tmp_path, 20, keep=1)
    assert [c.step for c in ckpt.list_checkpoints(tmp_path)] == [20]
    found = ckpt.latest_valid_checkpoint(tmp_path)
    assert found is not None and found[0].step == 20


def test_an_intact_checkpoint_torch_cannot_load_stops_the_resume_naming_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Step 100 matched its checksum but torch.load failed on it once (out of memory): the resume fell back to step 50,
    and the next save deleted step 100 as abandoned, losing 50 steps of an intact checkpoint."""
    for step in (50, 100):
        _save(tmp_path, step)
    real_load = torch.load

    def load(f: Any, *args: Any, **kwargs: Any) -> Any:
        payload = real_load(f, *args, **kwargs)
        if payload["step"] == 100:  # the fault is inside torch, on step 100's bytes only
            raise MemoryError("cannot allocate 2 GiB")
        return payload

    monkeypatch.setattr(torch, "load", load)
    newest = ckpt.checkpoint_path(tmp_path, 100)
    with pytest.raises(ckpt.CheckpointUnloadable, match=rf"{re.escape(str(newest))} matches its checksum .*MemoryError: cannot "
                                                        r"allocate 2 GiB.*delete ckpt-00000100\.pt and "
                                                        r"ckpt-00000100\.json") as refused:
        ckpt.latest_valid_checkpoint(tmp_path)
    assert "\n" not in str(refused.value)  # a launch shows an error's first line
    with pytest.raises(ckpt.CheckpointUnloadable, match=r"ckpt-00000100\.pt"):
        ckpt.latest_valid_snapshot(tmp_path)
    assert newest.exists() and newest.with_suffix(".json").exists()
    monkeypatch.setattr(torch, "load", real_load)  # memory again: the resume takes step 100
    found = ckpt.latest_valid_checkpoint(tmp_path)
    assert found is not None and found[0].step == 100


def test_a_save_after_a_fallback_never_deletes_a_checksum_valid_later_checkpoint(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ckpt.save_snapshot(tmp_path, _snapshot(50))
    _save(tmp_path, 100)  # verifies, but the resume cannot use it: it falls back to step 50
    _save(tmp_path, 90)
    ckpt.checkpoint_path(tmp_path, 90).write_bytes(b"torn")  # corrupt: fails its checksum
    found = ckpt.latest_valid_snapshot(tmp_path)
    assert found is not None and found[0].step == 50
    with caplog.at_level(logging.WARNING, logger=ckpt.log.name):
        ckpt.save_snapshot(tmp_path, _snapshot(60), keep=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "ckpt-00000060.json", "ckpt-00000060.pt", "ckpt-00000100.json", "ckpt-00000100.pt"]
    assert "keeping ckpt-00000100.pt, later than the checkpoint of step 60 just written: its checksum matches" \
        in caplog.text
    assert "deleting ckpt-00000090.pt, later than the checkpoint of step 60 just written: ckpt-00000090.pt: 4 bytes, " \
        "sidecar says" in caplog.text


@pytest.mark.parametrize("unreadable", [".pt", ".json"])
def test_an_unreadable_newest_checkpoint_falls_back_and_is_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, unreadable: str
) -> None:
    """An I/O error reading step 100 escaped every resume (only a missing sidecar fell back), though step 50 was
    valid; once it falls back, step 100 (unread, not proven corrupt) must survive the next save."""
    for step in (50, 100):
        _save(tmp_path, step)
    bad = ckpt.checkpoint_path(tmp_path, 100).with_suffix(unreadable)
    real_open = Path.open

    def open_(self: Path, *args: Any, **kwargs: Any) -> Any:  # read_bytes and read_text open through it
        if self == bad:
            raise OSError(errno.EIO, "Input/output error", str(self))
        return real_open(self, *args, **kwargs)

    monkeypatch.setattr(Path, "open", open_)
    with caplog.at_level(logging.WARNING, logger=ckpt.log.name):
        found = ckpt.latest_valid_checkpoint(tmp_path)
        assert found is not None and found[0].step == 50
        assert f"{bad}: unreadable (OSError: [Errno 5] Input/output error" in caplog.text
        _save(tmp_path, 60, keep=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "ckpt-00000060.json", "ckpt-00000060.pt", "ckpt-00000100.json", "ckpt-00000100.pt"]
    assert "keeping ckpt-00000100.pt, later than the checkpoint of step 60 just written: it could not be read" \
        in caplog.text
    monkeypatch.setattr(Path, "open", real_open)  # the disk recovers: nothing was lost
    found = ckpt.latest_valid_checkpoint(tmp_path)
    assert found is not None and found[0].step == 100 and torch.equal(found[1]["model"]["w"], torch.full((4,), 100.0))
