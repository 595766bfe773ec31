"""Real torchrun runs on gloo: DDP equivalence, corrupt checkpoints, failures (kills: test_fault_training.py)."""

from __future__ import annotations

import contextlib
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from tenfold.config import Settings
from tenfold.model import load_model
from tenfold.training.checkpoint import list_checkpoints
from tenfold.training.config import TrainConfig
from tenfold.training.launch import TrainingFailed, TrainingTimeout, TrainResult, run_torchrun
from tenfold.training.worker import FAULT_ENV

from .conftest import assert_same_run, read_losses, resume_points


def _weights(result: TrainResult) -> dict[str, torch.Tensor]:
    return torch.load(result.model_dir / "weights.pt", weights_only=True)


def _assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), f"{key} differs"


def test_reference_run_trains_and_saves_a_loadable_model(reference_run: TrainResult) -> None:
    assert reference_run.steps == 50 and reference_run.world_size == 2
    assert reference_run.restart_count == 0 and reference_run.resumed_from_step is None
    losses = read_losses(reference_run.out_dir)
    assert sorted(losses) == list(range(1, 51))
    assert sum(list(losses.values())[-10:]) < sum(list(losses.values())[:10])  # it learns
    loaded = load_model(reference_run.model_dir)
    assert set(reference_run.manifests) == {"2013-01", "2013-02", "2013-03"}
    assert loaded.meta["extra"]["steps"] == 50


def test_ddp_two_ranks_match_one_process_with_the_same_global_batch(
    reference_run: TrainResult, train_settings: Settings, small_config: TrainConfig, tmp_path: Path
) -> None:
    single = run_torchrun(train_settings, small_config.with_(batch_size=64), tmp_path, nproc=1, timeout_s=240)
    ddp, one = read_losses(reference_run.out_dir), read_losses(single.out_dir)
    assert sorted(one) == sorted(ddp) == list(range(1, 51))
    worst = max(abs(ddp[s] - one[s]) / abs(one[s]) for s in one)
    assert worst <= 1e-6, f"largest relative loss difference {worst:.2e}"


def test_corrupt_newest_checkpoint_is_skipped_on_resume(
    resume_reference: TrainResult, train_settings: Settings, resume_config: TrainConfig, tmp_path: Path
) -> None:
    """The run stopped early at an epoch end, its last checkpoint; that checkpoint torn, it resumes from the one
    before, in the middle of its last epoch with an epoch without gain counted, and must draw the same dropout masks
    and stop where it did."""
    from tenfold.training.checkpoint import Snapshot, load_checkpoint

    points = resume_points(resume_reference, resume_config)
    out = tmp_path / "run"
    shutil.copytree(resume_reference.out_dir, out)
    shutil.rmtree(out / "model")
    newest = list_checkpoints(out / "checkpoints")[-1]
    assert newest.step == resume_reference.steps
    previous = points.newest_before(newest.step)
    before = Snapshot.from_payload(load_checkpoint(list_checkpoints(out / "checkpoints")[-2]))
    assert before.step == previous and points.mid_epoch(previous) and before.selection["bad_epochs"] >= 1, before.selection
    newest.path.write_bytes(newest.path.read_bytes()[: newest.path.stat().st_size // 2])  # truncated
    resumed = run_torchrun(train_settings, resume_config, out, nproc=2, timeout_s=240)
    assert resumed.resumed_from_step == previous
    assert "skipping checkpoint" in (out / "torchrun.log").read_text()
    # The steps after it trained again (their rows appended after the reference's, and read in their stead).
    assert len((out / "losses.jsonl").read_text().splitlines()) == points.steps + (points.steps - previous)
    assert_same_run(resumed, resume_reference)


def test_a_job_relaunched_after_it_finished_reports_the_last_steps_loss_not_nan(
    reference_run: TrainResult, train_settings: Settings, small_config: TrainConfig, tmp_path: Path
) -> None:
    """A train task cleared after its job completed resumes from the final checkpoint and runs no step: its result
    said final_loss NaN (no step set it), and register copied that into the version's lineage."""
    out = tmp_path / "run"
    shutil.copytree(reference_run.out_dir, out)
    again = run_torchrun(train_settings, small_config, out, nproc=2, timeout_s=240)
    assert again.resumed_from_step == 50 and again.steps == 50
    assert again.final_loss == reference_run.final_loss == read_losses(reference_run.out_dir)[50]
    _assert_same_weights(_weights(again), _weights(reference_run))


def test_a_run_resumes_under_another_collective_timeout_but_not_under_another_learning_rate(
    reference_run: TrainResult, train_settings: Settings, small_config: TrainConfig, tmp_path: Path
) -> None:
    """The ranks resume under another collective timeout, thread count or checkpoint cadence, but the launcher
    refused them ("a different config (changed: ['collective_timeout_s']); use a fresh output folder"), throwing
    away the checkpoints of a run that had failed on collective timeouts."""
    out = tmp_path / "run"
    shutil.copytree(reference_run.out_dir, out)
    longer = small_config.with_(collective_timeout_s=small_config.collective_timeout_s + 60)
    again = run_torchrun(train_settings, longer, out, nproc=2, timeout_s=240)
    assert again.resumed_from_step == 50 and again.config["collective_timeout_s"] == longer.collective_timeout_s
    _assert_same_weights(_weights(again), _weights(reference_run))
    with pytest.raises(ValueError, match=r"different config \(changed: \['lr'\]\)"):
        run_torchrun(train_settings, longer.with_(lr=longer.lr * 2), out, nproc=2, timeout_s=240)


def test_resuming_under_another_number_of_processes_is_refused(
    reference_run: TrainResult, train_settings: Settings, small_config: TrainConfig, tmp_path: Path
) -> None:
    """A snapshot's position counts batches of its own world and its schedule spans that world's steps: resumed
    by one process where two wrote it, rows would be trained twice and the learning rate restart its cosine."""
    out = tmp_path / "run"
    shutil.copytree(reference_run.out_dir, out)
    shutil.rmtree(out / "model")
    with pytest.raises(TrainingFailed, match=r"written by 2 training processes and this run has 1.*--nproc 2"):
        run_torchrun(train_settings, small_config, out, nproc=1, timeout_s=240)
    assert not (out / "model").exists()


def test_a_worker_that_always_fails_ends_the_job_naming_rank_and_error(
    train_settings: Settings, small_config: TrainConfig, tmp_path: Path
) -> None:
    from .test_launch import SUMMARY

    # An earlier launch into the same folder failed otherwise: its summary stays in the log, which is appended to.
    earlier = SUMMARY.format(rank=0, code=1, traceback="Traceback (most recent call last):\n  RuntimeError: CUDA out of memory")
    (tmp_path / "torchrun.log").write_text(earlier)
    started = time.monotonic()
    with pytest.raises(TrainingFailed) as info:
        run_torchrun(
            train_settings, small_config, tmp_path, nproc=2, timeout_s=180, max_restarts=1,
            env={FAULT_ENV: "rank=1,step=2,mode=raise"},
        )
    assert time.monotonic() - started < 180
    assert info.value.rank == 1, f"named the earlier launch's failure: {info.value.error}"
    assert "injected fault on rank 1" in info.value.error
    assert "rank 1" in str(info.value) and info.value.exitcode != 0
    assert not (tmp_path / "model").exists()



def _assert_no_process_left(tmp_path: Path, within_s: float = 30) -> None:
    import psutil

    def leftovers() -> list[int]:
        found = []
        for proc in psutil.process_iter(["cmdline", "status"]):
            try:
                if proc.info["status"] != psutil.STATUS_ZOMBIE and any(
                        str(tmp_path) in part for part in proc.info["cmdline"] or []):
                    found.append(proc.pid)
            except psutil.Error:
                continue
        return found

    # Killed workers take a moment to be gone: wait for that (a deadline, not a guessed sleep).
    deadline = time.monotonic() + within_s
    while (left := leftovers()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert left == [], f"processes of the killed job still run {within_s:.0f} s after it was killed: {left}"


@contextlib.contextmanager
def _interrupted_once(ready: Path, within_s: float = 120) -> Iterator[None]:
    """The block's wait is interrupted, as Airflow's task timeout or termination interrupts a waiting task (an
    exception raised in the main thread, by SIGALRM), once a worker held by the fault hook wrote ``ready``; the block
    fails unless that exception came through it. Not after a guessed delay: torchrun and its workers take seconds to
    start (``import torch`` alone), so an early interrupt finds no worker to stop and proves nothing."""
    import os
    import signal
    import threading

    class Interrupted(Exception):
        pass

    def interrupt(signum: int, frame: object) -> None:
        raise Interrupted

    done = threading.Event()

    def watch() -> None:  # the task is interrupted once the worker is in place (or, never there, at the deadline)
        deadline = time.monotonic() + within_s
        while not ready.exists() and time.monotonic() < deadline:
            if done.wait(0.05):
                return  # the block ended otherwise: no signal after the handler is gone (it would end pytest)
        os.kill(os.getpid(), signal.SIGALRM)

    previous = signal.signal(signal.SIGALRM, interrupt)
    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        with pytest.raises(Interrupted):
            yield
    finally:
        done.set()
        watcher.join()
        signal.signal(signal.SIGALRM, previous)


def test_a_job_past_its_bound_is_killed_with_all_its_processes(
    train_settings: Settings, small_config: TrainConfig, tmp_path: Path
) -> None:
    """Rank 1 is held at step 2 (the fault hook), so the job cannot end within its bound, and the bound leaves the
    ranks time to start: the kill must find torchrun's workers (in sessions of their own) running, and stop them."""
    ready = tmp_path / "ready.json"
    started = time.monotonic()
    with pytest.raises(TrainingTimeout, match="ran past its 30 s bound"):
        run_torchrun(train_settings, small_config, tmp_path / "out", nproc=2, timeout_s=30,
                     env={FAULT_ENV: f"rank=1,step=2,mode=pause,ready={ready}"})
    assert ready.exists(), "the held worker never reached its step within the bound: nothing was there to kill"
    assert time.monotonic() - started < 30 + 15  # the bound, the grace torchrun's SIGTERM gets, and a margin
    _assert_no_process_left(tmp_path)


def test_a_launch_interrupted_while_it_waits_kills_the_job(
    train_settings: Settings, small_config: TrainConfig, tmp_path: Path
) -> None:
    """Airflow's task timeout (and a termination) is an exception raised in the waiting task: the job, in a session
    of its own, must not go on training into the run's folders behind the retry. Interrupted once rank 1 is held
    at step 2 (the fault hook): both ranks are running then."""
    ready = tmp_path / "ready.json"
    with _interrupted_once(ready):
        run_torchrun(train_settings, small_config, tmp_path / "out", nproc=2, timeout_s=300,
                     env={FAULT_ENV: f"rank=1,step=2,mode=pause,ready={ready}"})
    assert ready.exists(), "the held worker never reached its step"
    _assert_no_process_left(tmp_path, within_s=12)  # the grace torchrun's SIGTERM gets, and a margin
    assert not (tmp_path / "out" / "model").exists()


def test_an_interrupted_launch_kills_a_worker_that_ignores_sigterm(
    train_settings: Settings, small_config: TrainConfig, tmp_path: Path
) -> None:
    """A worker deaf to SIGTERM outlives torchrun's shutdown (torchrun waits 30 s for it, the launch only 10 s before
    it SIGKILLs torchrun's group): the workers run in sessions of their own, so what the group kill misses must be
    stopped by the launch itself, or it goes on holding the folder's lock and writing its checkpoints."""
    ready = tmp_path / "deaf.json"
    with _interrupted_once(ready):
        run_torchrun(train_settings, small_config, tmp_path / "out", nproc=2, timeout_s=300,
                     env={FAULT_ENV: f"rank=1,step=2,mode=deaf,ready={ready}"})
    assert ready.exists(), "the deaf worker never reached its step"
    _assert_no_process_left(tmp_path, within_s=5)


def test_a_run_into_a_uri_leaves_no_local_folder_behind(
    train_settings: Settings, small_config: TrainConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run whose output is a URI (as on the cloud training group) trains in local scratch folders: the launcher's
    (torchrun.log) was never removed, one more in the temporary folder for every run. (Its launch folder under the
    platform home stays, holding its lock alone.)"""
    import tempfile

    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setenv("TMPDIR", str(scratch))  # the launcher's and its workers' temporary folders
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    out = (tmp_path / "bucket").as_uri() + "/run"
    result = run_torchrun(train_settings, small_config.with_(max_steps=8), out, nproc=1, timeout_s=240)
    assert result.steps == 8 and (tmp_path / "bucket" / "run" / "model").is_dir()
    assert sorted(p.name for p in scratch.iterdir() if p.name.startswith("tenfold-")) == []
    # The URI's launch folder keeps only its lock (removed, a launch that took it meanwhile lost it)
    from tenfold.training.launch import launch_folder

    assert sorted(p.name for p in launch_folder(train_settings, out).iterdir()) == [".job.lock"]


def test_a_uri_runs_scratch_folder_is_its_ranks_own_and_the_next_round_empties_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each round took a fresh mkdtemp, removed only in a ``finally`` a kill skips: every restart round and task retry
    left another copy of the run's checkpoints on the training VM's disk. The folder is now named after the run and
    the rank, so a round finds the one a killed round left (killed for real in test_fault_training.py)."""
    import os
    import stat
    import tempfile

    from tenfold.training.worker import scratch_folder

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    uri = "gs://bucket/runs/a"
    first = scratch_folder(uri, 0)
    assert first.parent == tmp_path and first.name.startswith("tenfold-train-") and first.name.endswith("-r0")
    assert stat.S_IMODE(first.stat().st_mode) == 0o700 and first.stat().st_uid == os.getuid()
    (first / "checkpoints").mkdir()
    (first / "checkpoints" / "ckpt-00000008.pt").write_bytes(b"a killed round's download")
    again = scratch_folder(uri + "/", 0)  # the next round (the same URI, however it ends)
    assert again == first and list(again.iterdir()) == []
    assert stat.S_IMODE(again.stat().st_mode) == 0o700
    # Two ranks on one machine, and two runs, never share one.
    others = {scratch_folder(uri, 1), scratch_folder("gs://bucket/runs/b", 0), scratch_folder("file:///runs/a", 0)}
    assert first not in others and len(others) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in (first, *others))


@pytest.mark.parametrize("squatter", ["link", "file", "other user's folder"])
def test_a_uri_runs_scratch_name_held_by_anything_but_this_users_folder_is_refused_and_left_alone(
    squatter: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The name is predictable (the run's URI is on the command line): in a shared /tmp another user may create it
    first. A link is never followed (removing or filling its target), nor another user's folder used."""
    import os
    import tempfile

    from tenfold.training.worker import WorkerError, scratch_folder

    uri = "gs://bucket/runs/a"
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    path = scratch_folder(uri, 0)
    path.rmdir()
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep").write_text("not the worker's")
    if squatter == "link":
        path.symlink_to(victim, target_is_directory=True)
    elif squatter == "file":
        path.write_text("someone's")
    else:
        if os.getuid() != 0:
            pytest.skip("making a folder another user's takes root")
        path.mkdir()
        (path / "keep").write_text("not the worker's")
        os.chown(path, 65534, 65534)
    with pytest.raises(WorkerError, match=rf"{path} exists and is not a folder of this user's"):
        scratch_folder(uri, 0)
    assert (victim / "keep").read_text() == "not the worker's"
    assert path.is_symlink() if squatter == "link" else path.is_file() if squatter == "file" else \
        (path / "keep").read_text() == "not the worker's"


@pytest.mark.parametrize("failure", ["removal refused", "name taken after removal", "temp dir a file", "temp dir gone"])
def test_a_uri_runs_scratch_folder_that_cannot_be_made_is_a_one_line_refusal_naming_it(
    failure: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An OSError emptying or creating the folder surfaced raw (a FileExistsError traceback where another process
    created the name between the removal and the mkdir): it is a WorkerError naming the folder and what to do."""
    import tempfile

    from tenfold.training import worker
    from tenfold.training.worker import WorkerError, scratch_folder

    uri = "gs://bucket/runs/a"
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    path = scratch_folder(uri, 0)  # an earlier round's, to be emptied
    (path / "checkpoints").mkdir()
    real_rmtree = shutil.rmtree

    def refuse(target: Any, *args: Any, **kwargs: Any) -> None:  # message formatting, not a fault: root removes all
        raise PermissionError(13, "Permission denied", str(Path(target) / "checkpoints"))

    def race(target: Any, *args: Any, **kwargs: Any) -> None:  # another process takes the name once it is free
        real_rmtree(target, *args, **kwargs)
        Path(target).mkdir()

    if failure == "removal refused":
        monkeypatch.setattr(worker.shutil, "rmtree", refuse)
        expected = (rf"{re.escape(str(path))} an earlier round left cannot be removed "
                    rf"\(\[Errno 13\] Permission denied: '{re.escape(str(path / 'checkpoints'))}'\)")
    elif failure == "name taken after removal":
        monkeypatch.setattr(worker.shutil, "rmtree", race)
        expected = rf"{re.escape(str(path))} was created by another process while this rank emptied it"
    else:
        parent = tmp_path / "tmp"
        if failure == "temp dir a file":
            parent.write_text("not a folder")
        monkeypatch.setattr(tempfile, "tempdir", str(parent))
        path = parent / path.name
        expected = rf"{re.escape(str(path))} cannot be {'looked at' if parent.exists() else 'created'} \(\w"
    with pytest.raises(WorkerError) as info:
        scratch_folder(uri, 0)
    message = str(info.value)
    assert re.match(rf"the scratch folder {expected}", message), message
    assert "\n" not in message and message.endswith("set TMPDIR to a folder only this user may write"), message


_JOIN = """
import sys
import torch.distributed as dist
from tenfold.training.worker import init_distributed
init_distributed("gloo", int(sys.argv[1]), 2, 15)
dist.barrier()
print("joined", flush=True)
dist.destroy_process_group()
"""


def test_two_nodes_whose_agents_counted_different_restarts_still_join_one_group(tmp_path: Path) -> None:
    """After a rank on one node dies, its agent counts a restart and the other node's agent (restarting for the
    membership change) does not: TORCHELASTIC_RESTART_COUNT is 1 on one node and 0 on the other. The ranks joined
    through the prefix attempt_<count>, so they waited on different keys until the collective timeout, every round,
    until the restarts ran out. The nodes' ranks host a fresh store each round (training.node.OWN_STORE_ENV): no prefix."""
    import os
    import socket
    import subprocess
    import sys

    from tenfold.training.node import OWN_STORE_ENV

    assert OWN_STORE_ENV == {"TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1"}  # the agents share no store: the ranks host it
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "TORCHELASTIC_USE_AGENT_STORE": "False",
           "GLOO_SOCKET_IFNAME": "lo"}
    ranks = [subprocess.Popen([sys.executable, "-c", _JOIN, str(rank)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env={**env, "TORCHELASTIC_RESTART_COUNT": str(count)})
             for rank, count in ((0, 0), (1, 1))]
    try:
        outputs = [r.communicate(timeout=60) for r in ranks]
    finally:
        for r in ranks:
            if r.poll() is None:
                r.kill()
    assert [r.returncode for r in ranks] == [0, 0], [err[-2000:] for _out, err in outputs]
    assert [out.strip() for out, _err in outputs] == ["joined", "joined"]
