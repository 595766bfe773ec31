"""Real SIGKILLs of torchrun workers at exact points: rank 0 halfway through writing a checkpoint, rank 1 in
the middle of a step. Each run resumes from the newest valid checkpoint and ends as the uninterrupted run
(``resume_reference``: dropout, early stopping) does, bit for bit: weights, losses, epoch choice and calibration.

The hook of :mod:`tenfold.training.faults` holds the named rank at its point and writes a ready file with
its pid; a thread here waits for that file (a condition with a deadline), records what is on disk at that
instant, and sends ``os.kill(pid, SIGKILL)``. torchrun sees the worker die, restarts the job once, and the
new workers resume.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import pytest
import torch

from tenfold.config import Settings
from tenfold.training import checkpoint as ckpt
from tenfold.training.config import TrainConfig
from tenfold.training.faults import FAULT_ENV
from tenfold.training.launch import TrainingFailed, TrainResult, run_torchrun

from .conftest import assert_same_run, resume_points

READY_TIMEOUT_S = 300.0  # as long as the run itself may take: the killer never gives up first


def newest_valid_step(folder: Path) -> int | None:
    """The step a resume must pick: the newest checkpoint whose sidecar exists and whose bytes match it."""
    for info in reversed(ckpt.list_checkpoints(folder)):
        try:
            ckpt.verify_checkpoint(info)
        except ckpt.CheckpointError:
            continue
        return info.step
    return None


@dataclass
class Killer:
    """Waits for the fault hook's ready file, looks at the checkpoints, and SIGKILLs the paused worker."""

    ready: Path
    checkpoints: Path
    scratch: Path | None = None  # the workers' TMPDIR: its tenfold-train-* folders are listed at the kill
    seen: dict[str, Any] = field(default_factory=dict)
    error: BaseException | None = None

    def __post_init__(self) -> None:
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            deadline = time.monotonic() + READY_TIMEOUT_S
            while not self.ready.exists():  # written by os.replace: whole once it exists
                if time.monotonic() > deadline:
                    raise AssertionError(f"the fault hook never wrote {self.ready} in {READY_TIMEOUT_S:.0f} s")
                time.sleep(0.02)
            body = json.loads(self.ready.read_text())
            proc = psutil.Process(body["pid"])
            assert "tenfold.training.worker" in " ".join(proc.cmdline()), proc.cmdline()
            assert proc.environ().get("RANK") == str(body["rank"])
            # What the disk holds while the worker is held at its point (it cannot move on until killed).
            self.seen = {**body, "newest_valid": newest_valid_step(self.checkpoints),
                         "files": sorted(p.name for p in self.checkpoints.iterdir())}
            if "partial" in body:
                self.seen["partial_bytes"] = Path(body["partial"]).stat().st_size
            if self.scratch is not None:
                self.seen["scratch"] = sorted(p.name for p in self.scratch.glob("tenfold-train-*"))
            os.kill(body["pid"], signal.SIGKILL)
            # Gone, and by this signal: the hook never returns (it would only exit after PAUSE_LIMIT_S).
            # (torchrun's log is no witness: it may name the other rank, whose collective broke first.)
            proc.wait(timeout=60)
        except BaseException as exc:  # re-raised in the test's thread
            self.error = exc

    def result(self) -> dict[str, Any]:
        self.thread.join(timeout=60)
        if self.error is not None:
            raise self.error
        assert self.seen, "the worker was never killed"
        return self.seen


def test_rank0_killed_while_writing_a_checkpoint_resumes_from_the_newest_valid_one_bit_for_bit(
    resume_reference: TrainResult, train_settings: Settings, resume_config: TrainConfig, tmp_path: Path
) -> None:
    points = resume_points(resume_reference, resume_config)
    # A mid-epoch checkpoint step of the reference (one machine's run: 24, every 8, 15 steps an epoch).
    out, ready, step = tmp_path / "run", tmp_path / "ready.json", points.checkpoint_kill()
    killer = Killer(ready, out / "checkpoints")
    result = run_torchrun(
        train_settings, resume_config, out, nproc=2, timeout_s=300, max_restarts=1,
        env={FAULT_ENV: f"rank=0,step={step},at=checkpoint,mode=pause,ready={ready}"},
    )
    seen = killer.result()
    # Killed mid-write: half of the checkpoint of that step sat in its temporary file, beside the valid ones.
    assert seen["rank"] == 0 and seen["checkpoint"] == f"ckpt-{step:08d}.pt"
    assert 0 < seen["partial_bytes"] == seen["written"] < seen["total"]
    assert Path(seen["partial"]).name in seen["files"] and f"ckpt-{step:08d}.pt" not in seen["files"]
    assert seen["newest_valid"] == points.newest_before(step) and points.mid_epoch(seen["newest_valid"])
    # The restart resumed from the newest valid checkpoint, never from the partial one, and drew the same dropout
    # masks from there as the uninterrupted run (the ranks' RNG streams are restored).
    assert result.restart_count == 1
    assert result.resumed_from_step == seen["newest_valid"]
    assert_same_run(result, resume_reference)
    assert not list((out / "checkpoints").glob(".*.tmp-*")), "the killed writer's temporary file was not cleaned up"


def test_rank1_killed_mid_step_resumes_from_the_newest_valid_checkpoint_bit_for_bit(
    resume_reference: TrainResult, train_settings: Settings, resume_config: TrainConfig, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Output to a URI, as on the cloud training group: the workers train in scratch folders and the
    # restarted ones resume from the checkpoints mirrored there. The scratch folders (TMPDIR of the
    # workers) and the launcher's own go under this test's folder.
    # One step past the checkpoint of the end of the reference's first epoch without gain (one machine's run: 46).
    points = resume_points(resume_reference, resume_config)
    out, ready, step = tmp_path / "killed", tmp_path / "ready.json", points.first_bad_epoch_end + 1
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    (tmp_path / "launch").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "launch"))
    killer = Killer(ready, out / "checkpoints", scratch)
    result = run_torchrun(
        train_settings, resume_config, out.as_uri(), nproc=2, timeout_s=300, max_restarts=1,
        env={FAULT_ENV: f"rank=1,step={step},at=step,mode=pause,ready={ready}", "TMPDIR": str(scratch)},
    )
    seen = killer.result()
    assert seen["rank"] == 1 and seen["step"] == step
    # That epoch end, its first without gain: the restart must count it, and stop after the epoch the
    # uninterrupted run stopped after, with the same best epoch's weights.
    assert seen["newest_valid"] == points.first_bad_epoch_end
    assert result.restart_count == 1
    assert result.resumed_from_step == seen["newest_valid"]
    assert_same_run(result, resume_reference)
    # Each rank trained in a scratch folder of its own (both there at the kill). The SIGKILLed rank 1 never ran its
    # cleanup: the next round's rank 1 removed its folder, and the last round's own went when it finished.
    assert sorted(p.name for p in scratch.glob("tenfold-train-*")) == [], "a round's scratch folder was left behind"
    assert len(seen["scratch"]) == 2 and [n[-3:] for n in seen["scratch"]] == ["-r0", "-r1"], seen["scratch"]


def test_a_killed_rank_is_named_as_the_cause_not_the_rank_whose_all_reduce_it_broke(
    train_settings: Settings, small_config: TrainConfig, tmp_path: Path
) -> None:
    """Rank 1 SIGKILLed mid-step, no restarts: rank 0's all-reduce then fails, in the same second. torchrun's
    summary may name rank 0's broken connection as the first failure; the job's error names rank 1's kill."""
    out, ready = tmp_path / "run", tmp_path / "ready.json"
    killer = Killer(ready, out / "checkpoints")
    with pytest.raises(TrainingFailed) as info:
        run_torchrun(train_settings, small_config, out, nproc=2, timeout_s=300, max_restarts=0,
                     env={FAULT_ENV: f"rank=1,step=10,at=step,mode=pause,ready={ready}"})
    assert killer.result()["rank"] == 1
    assert info.value.rank == 1, str(info.value)
    assert "killed by SIGKILL" in info.value.error and "rank 1" in str(info.value)
    # Rank 0 either recorded its broken collective as a consequence (PeerLost) or was stopped by torchrun.
    log = (out / "torchrun.log").read_text()
    assert "Connection closed by peer" not in log or "PeerLost: rank 0" in log


def test_a_partly_written_newer_checkpoint_is_never_the_newest_valid(tmp_path: Path) -> None:
    # The three states a killed writer can leave, each newer than a good checkpoint.
    good = ckpt.save_checkpoint(tmp_path, 8, {"model": {"w": torch.ones(3)}, "step": 8})
    data = good.path.read_bytes()
    truncated = ckpt.save_checkpoint(tmp_path, 16, {"model": {"w": torch.zeros(3)}, "step": 16})
    truncated.path.write_bytes(truncated.path.read_bytes()[:100])  # torn after its sidecar was written
    ckpt.checkpoint_path(tmp_path, 24).write_bytes(data)  # renamed, no sidecar yet
    (tmp_path / ".ckpt-00000032.pt.tmp-0badc0de").write_bytes(data[: len(data) // 2])  # mid-write
    found = ckpt.latest_valid_checkpoint(tmp_path)
    assert found is not None and found[0].step == 8 and torch.equal(found[1]["model"]["w"], torch.ones(3))


def test_a_fault_spec_that_cannot_work_is_refused() -> None:
    from tenfold.training.faults import Fault

    with pytest.raises(ValueError, match="mode=pause needs ready"):
        Fault.parse("rank=0,step=3,at=checkpoint")
    with pytest.raises(ValueError, match="at must be one of"):
        Fault.parse("rank=0,step=3,at=epoch,mode=raise")


_LAUNCHER = """
import pickle, sys
from tenfold.training.launch import run_torchrun
settings, config, out, env = pickle.load(open(sys.argv[1], "rb"))
run_torchrun(settings, config, out, nproc=2, timeout_s=300, max_restarts=0, env=env)
"""


def test_a_launch_into_a_folder_stops_the_job_a_killed_launcher_left_and_refuses_while_that_launcher_lives(
    resume_reference: TrainResult, train_settings: Settings, resume_config: TrainConfig, tmp_path: Path
) -> None:
    """An Airflow task SIGKILLed mid-training leaves its torchrun job running (a session of its own), and the retry
    launches into the same folder: two jobs would write one folder's checkpoints (a snapshot of the second deletes
    the first's newer ones as abandoned). Launcher A is a real process whose job is held mid-step; a launch while A
    lives is refused; once A is SIGKILLed, the next launch stops A's orphaned job first, resumes from the folder's
    checkpoints, and ends with the uninterrupted run's weights."""
    import pickle
    import subprocess
    import sys

    out, ready, step = tmp_path / "run", tmp_path / "ready.json", 20
    points = resume_points(resume_reference, resume_config)
    assert step < points.steps
    args = tmp_path / "args.pkl"
    args.write_bytes(pickle.dumps((train_settings, resume_config, out,
                                   {FAULT_ENV: f"rank=1,step={step},at=step,mode=pause,ready={ready}"})))
    launcher = subprocess.Popen([sys.executable, "-c", _LAUNCHER, str(args)], start_new_session=True)
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not ready.exists():
            assert launcher.poll() is None, f"launcher A exited {launcher.returncode} before its job reached step {step}"
            assert time.monotonic() < deadline, f"A's job never reached step {step}"
            time.sleep(0.05)
        paused = psutil.Process(json.loads(ready.read_text())["pid"])

        with pytest.raises(TrainingFailed, match=rf"another launch \(pid {launcher.pid}\) is training into"):
            run_torchrun(train_settings, resume_config, out, nproc=2, timeout_s=300, max_restarts=0)
        assert paused.is_running(), "the refused launch stopped the live launcher's job"

        job = psutil.Process(json.loads((out / ".job.json").read_text())["job"]["pid"])
        assert "torch.distributed.run" in " ".join(job.cmdline())
        os.kill(launcher.pid, signal.SIGKILL)  # the launcher dies; its job does not
        launcher.wait(30)
        assert job.is_running() and paused.is_running()

        result = run_torchrun(train_settings, resume_config, out, nproc=2, timeout_s=300, max_restarts=0)
        assert not job.is_running() and not paused.is_running(), "the orphaned job was left running"
        assert result.resumed_from_step == points.newest_before(step)
        assert_same_run(result, resume_reference)
    finally:  # nothing of A outlives the test, whatever failed
        holder = json.loads((out / ".job.json").read_text()) if (out / ".job.json").exists() else {}
        for pgid in (launcher.pid, (holder.get("job") or {}).get("pid")):
            with contextlib.suppress(ProcessLookupError, TypeError):
                os.killpg(pgid, signal.SIGKILL)
        if ready.exists():
            with contextlib.suppress(ProcessLookupError):
                os.kill(json.loads(ready.read_text())["pid"], signal.SIGKILL)
        launcher.wait(30)


_HOLDER = """
import pickle, sys, time
from tenfold.training.launch import _sole_launch, launch_folder
settings = pickle.load(open(sys.argv[1], "rb"))
with _sole_launch(launch_folder(settings, sys.argv[2])):
    print("held", flush=True)
    time.sleep(120)
"""


def test_a_launch_into_a_uri_another_launch_trains_into_is_refused(
    train_settings: Settings, small_config: TrainConfig, tmp_path: Path
) -> None:
    """A launch into a URI took its lock in a new temporary folder each time: a second launch never saw the first
    (or the job a killed launcher left), and two jobs wrote the URI's checkpoints and model."""
    import pickle
    import subprocess
    import sys

    uri = (tmp_path / "bucket").as_uri() + "/run"
    args = tmp_path / "settings.pkl"
    args.write_bytes(pickle.dumps(train_settings))
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(args), uri], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(TrainingFailed, match=rf"another launch \(pid {holder.pid}\) is training into {uri}:"):
            run_torchrun(train_settings, small_config, uri, nproc=2, timeout_s=300, max_restarts=0)
        from tenfold.training.launch import launch_folder

        assert launch_folder(train_settings, uri) == launch_folder(train_settings, uri + "/")
        assert launch_folder(train_settings, uri) != launch_folder(train_settings, uri + "-other")
    finally:
        holder.kill()
        holder.wait(30)
