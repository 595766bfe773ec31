"""The torchrun command line per topology, and naming the failing rank from torchrun's summary."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest

from tenfold.config import Settings, build_settings
from tenfold.training.config import TrainConfig
from tenfold.training.launch import parse_failure, rendezvous_dir, run_torchrun, torchrun_command


def test_local_runs_are_one_node_on_loopback_with_restarts_from_settings() -> None:
    settings = build_settings("local")
    with pytest.raises(ValueError, match="rendezvous through a file"):
        torchrun_command(settings, "/tmp/out", nproc=2, job_id="j", max_restarts=1)
    rendezvous = rendezvous_dir()
    try:
        # torch's agent unpickles the rendezvous file: it lives in a folder only this user may enter, at a name no
        # one else can create first (not /tmp/tenfold-rdzv-<job id>, guessable from the job's command line).
        assert stat.S_IMODE(rendezvous.stat().st_mode) == 0o700 and rendezvous.stat().st_uid == os.getuid()
        cmd = torchrun_command(settings, "/tmp/out", nproc=2, job_id="j", max_restarts=settings.training.max_restarts,
                               rendezvous=rendezvous)
    finally:
        rendezvous.rmdir()
    assert f"--rdzv-endpoint={rendezvous}/rendezvous" in cmd
    # Not --standalone: its TCP stores listen on every interface; a file rendezvous and stores on loopback.
    assert "--standalone" not in cmd and "--nnodes=1" in cmd and "--nproc-per-node=2" in cmd
    assert "--rdzv-conf=store_type=file" in cmd and f"--local-addr={settings.local.bind_host}" in cmd
    assert f"--max-restarts={settings.training.max_restarts}" in cmd
    assert cmd[cmd.index("-m", 3):] == ["-m", "tenfold.training.worker", "--config", "/tmp/out/train_config.json",
                                        "--out", "/tmp/out"]


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2"])
def test_gloo_stays_on_the_loopback_interface_for_any_loopback_bind_host(host: str, tmp_path: Path) -> None:
    """Only an interface listing bind_host itself was chosen: lo lists 127.0.0.1, so with 127.0.0.2 (a valid setting)
    GLOO_SOCKET_IFNAME was left unset and the ranks listened where the host name resolves, beyond loopback."""
    from tenfold.training.launch import loopback_env

    settings = build_settings("local", {"TENFOLD_HOME": str(tmp_path), "TENFOLD_LOCAL__BIND_HOST": host})
    assert loopback_env(settings)["GLOO_SOCKET_IFNAME"] == "lo"


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2"])
def test_nccl_stays_on_the_same_loopback_interface_as_gloo(host: str, tmp_path: Path) -> None:
    """Only gloo was pinned: NCCL skips ``lo`` when another interface exists, so a one-machine job on backend nccl
    opened its bootstrap and proxy listeners on the machine's real address. ``=`` names that interface exactly."""
    from tenfold.training.launch import loopback_env

    settings = build_settings("local", {"TENFOLD_HOME": str(tmp_path), "TENFOLD_LOCAL__BIND_HOST": host})
    env = loopback_env(settings)
    assert env["NCCL_SOCKET_IFNAME"] == "=" + env["GLOO_SOCKET_IFNAME"] == "=lo"


def test_multi_node_uses_c10d_at_the_endpoint_from_settings() -> None:
    base = build_settings("dev")
    with pytest.raises(ValueError, match=r"needs settings\.training\.rdzv_host"):
        torchrun_command(base, "gs://b/run", nproc=1, job_id="j", max_restarts=1)
    settings = build_settings("dev", training=base.training.model_copy(update={"rdzv_host": "train-0"}))
    cmd = torchrun_command(settings, "gs://b/run", nproc=1, job_id="run-7", max_restarts=1)
    assert f"--nnodes={settings.training.nnodes}" in cmd and "--rdzv-backend=c10d" in cmd
    assert f"--rdzv-endpoint=train-0:{settings.training.rdzv_port}" in cmd and "--rdzv-id=run-7" in cmd
    assert "--standalone" not in cmd and "gs://b/run/train_config.json" in cmd


SUMMARY = """
torch.distributed.elastic.multiprocessing.errors.ChildFailedError:
============================================================
tenfold.training.worker FAILED
------------------------------------------------------------
Failures:
[1]:
  time      : 2026-11-21_12:30:31
  host      : box
  rank      : 0 (local_rank: 0)
  exitcode  : 1 (pid: 20964)
  error_file: <N/A>
  traceback : To enable traceback see: https://pytorch.org/docs/stable/elastic/errors.html
------------------------------------------------------------
Root Cause (first observed failure):
[0]:
  time      : 2026-11-21_12:30:31
  host      : box
  rank      : {rank} (local_rank: {rank})
  exitcode  : {code} (pid: 20965)
  error_file: /tmp/x/error.json
  traceback : {traceback}
============================================================
"""


def test_root_cause_rank_and_error_are_extracted() -> None:
    text = SUMMARY.format(rank=1, code=1, traceback="Traceback (most recent call last):\n    File \"w.py\", line 3\n  RuntimeError: disk full")
    assert parse_failure(text) == (1, "RuntimeError: disk full")
    killed = SUMMARY.format(rank=3, code=17, traceback="To enable traceback see: https://pytorch.org/docs/stable/elastic/errors.html")
    rank, error = parse_failure(killed)
    assert rank == 3 and "exit code 17" in error and "killed" in error


def test_unparseable_logs_still_give_an_answer() -> None:
    assert parse_failure("torchrun: error: unrecognized arguments") == (None, "unknown error")


# A failing job as torchrun 2.13 sums it up: both failures stamped in the same second, and the root cause
# (the earliest stamp, ties broken by rank) is the rank whose all-reduce broke when its peer stopped.
PEER_SUMMARY = """
============================================================
tenfold.training.worker FAILED
------------------------------------------------------------
Failures:
[1]:
  time      : 2026-12-03_07:23:42
  host      : localhost
  rank      : 1 (local_rank: 1)
  exitcode  : {code} (pid: 29207){signal}
  error_file: {error_file}
  traceback : {traceback}
------------------------------------------------------------
Root Cause (first observed failure):
[0]:
  time      : 2026-12-03_07:23:42
  host      : localhost
  rank      : 0 (local_rank: 0)
  exitcode  : 1 (pid: 29206)
  error_file: /tmp/torchelastic_x/attempt_0/0/error.json
  traceback : Traceback (most recent call last):
    File "/work/main/src/tenfold/training/worker.py", line 355, in _run_batch
      dist.all_reduce(reduced)
  RuntimeError: [gloo/transport/tcp/pair.cc:553] Connection closed by peer [127.0.0.1]:14734.

  The above exception was the direct cause of the following exception:

  Traceback (most recent call last):
    File "/work/main/src/tenfold/training/worker.py", line 530, in main
      raise PeerLost(
  tenfold.training.errors.PeerLost: rank 0: a collective failed because another process of the job stopped
============================================================
"""
NO_TRACEBACK = "To enable traceback see: https://pytorch.org/docs/stable/elastic/errors.html"


def test_a_rank_whose_collective_broke_because_its_peer_stopped_is_not_named_as_the_cause() -> None:
    raised = PEER_SUMMARY.format(code=1, signal="", error_file="/tmp/torchelastic_x/attempt_0/1/error.json",
                                 traceback="Traceback (most recent call last):\n    File \"w.py\", line 3\n"
                                           "  RuntimeError: injected fault on rank 1")
    assert parse_failure(raised) == (1, "RuntimeError: injected fault on rank 1")
    killed = PEER_SUMMARY.format(code=-9, signal="  (SIGKILL)", error_file="<N/A>",
                                 traceback="Signal 9 (SIGKILL) received by PID 29207")
    assert parse_failure(killed) == (1, "killed by SIGKILL (exit code -9), no Python error recorded")
    exited = PEER_SUMMARY.format(code=3, signal="", error_file="<N/A>", traceback=NO_TRACEBACK)
    rank, error = parse_failure(exited)
    assert rank == 1 and "exit code 3" in error
    # Stopped by torchrun itself (SIGTERM, nothing recorded) is no cause either: the peer's error stays named.
    stopped = PEER_SUMMARY.format(code=-15, signal="  (SIGTERM)", error_file="<N/A>",
                                  traceback="Signal 15 (SIGTERM) received by PID 29207")
    rank, error = parse_failure(stopped)
    assert rank == 0 and "PeerLost" in error


# A CUDA error's message ends with hint lines, NCCL's with detail lines (one of them shaped like an exception line):
# the last line of the traceback was named as the rank's error ("rank 1 failed with Compile with `TORCH_USE_CUDA_DSA`").
CUDA_TRACEBACK = """Traceback (most recent call last):
    File "/work/main/src/tenfold/training/worker.py", line 166, in select_device
      torch.cuda.set_device(local_rank)
    File "/opt/venv/lib/python3.11/site-packages/torch/cuda/__init__.py", line 567, in set_device
      torch._C._cuda_setDevice(device)
  torch.AcceleratorError: CUDA error: invalid device ordinal
  GPU device may be out of range, do you have enough GPUs?
  CUDA kernel errors might be asynchronously reported at some other API call, so the stacktrace below might be incorrect.
  For debugging consider passing CUDA_LAUNCH_BLOCKING=1
  Compile with `TORCH_USE_CUDA_DSA` to enable device-side assertions.
"""
NCCL_TRACEBACK = """Traceback (most recent call last):
    File "/work/main/src/tenfold/training/worker.py", line 130, in init_distributed
      dist.init_process_group(backend, store=store, rank=rank, world_size=world_size, timeout=timeout)
    File "/opt/venv/lib/python3.11/site-packages/torch/distributed/distributed_c10d.py", line 1710, in init_process_group
      default_pg, _ = _new_process_group_helper(
                      ^^^^^^^^^^^^^^^^^^^^^^^^^^
  torch.distributed.DistBackendError: NCCL error in: /pytorch/torch/csrc/distributed/c10d/ProcessGroupNCCL.cpp:3356, \
unhandled cuda error (run with NCCL_DEBUG=INFO for details), NCCL version 2.27.3
  ncclUnhandledCudaError: Call to CUDA function failed.
  Last error:
  Cuda failure 'invalid device ordinal'
"""


def test_a_cuda_or_nccl_error_is_named_by_its_exception_line_not_its_trailing_hints(tmp_path: Path) -> None:
    rank, error = parse_failure(SUMMARY.format(rank=1, code=1, traceback=CUDA_TRACEBACK))
    assert rank == 1 and error == "torch.AcceleratorError: CUDA error: invalid device ordinal"
    rank, error = parse_failure(SUMMARY.format(rank=1, code=1, traceback=NCCL_TRACEBACK))
    assert rank == 1 and error.startswith("torch.distributed.DistBackendError: NCCL error in: ")
    assert error.endswith("unhandled cuda error (run with NCCL_DEBUG=INFO for details), NCCL version 2.27.3")
    # The rank's error file, where the summary names it and it is still there, names the exception first.
    error_file = tmp_path / "error.json"
    error_file.write_text(json.dumps({"message": {
        "message": "AcceleratorError: CUDA error: invalid device ordinal\nCompile with `TORCH_USE_CUDA_DSA` to enable "
                   "device-side assertions.\n", "extraInfo": {"py_callstack": CUDA_TRACEBACK, "timestamp": "1"}}}))
    recorded = SUMMARY.format(rank=1, code=1, traceback="Compile with `TORCH_USE_CUDA_DSA`")
    assert parse_failure(recorded.replace("/tmp/x/error.json", str(error_file))) == (
        1, "AcceleratorError: CUDA error: invalid device ordinal")
    error_file.write_text("{not json")  # unreadable: the summary's traceback is read instead
    cuda = SUMMARY.format(rank=1, code=1, traceback=CUDA_TRACEBACK)
    assert parse_failure(cuda.replace("/tmp/x/error.json", str(error_file))) == (
        1, "torch.AcceleratorError: CUDA error: invalid device ordinal")


@pytest.fixture
def one_gpu(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """A CUDA build of torch on a machine with one GPU, at the torch API that select_device reads; set_device of any
    other ordinal raises as CUDA does. Returns the ordinals set."""
    import torch

    chosen: list[int] = []

    def set_device(device: int) -> None:
        if device >= 1:
            raise RuntimeError("CUDA error: invalid device ordinal")
        chosen.append(device)

    monkeypatch.setattr(torch.version, "cuda", "12.8")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_device", set_device)
    return chosen


def test_more_ranks_than_gpus_is_refused_naming_nproc(one_gpu: list[int]) -> None:
    """nccl with nproc 2 on a one-GPU machine: rank 1's set_device raised a bare CUDA error, which torchrun restarted
    and the task retried (in the cloud scaling the GPU group up for each try)."""
    import torch

    from tenfold.training.worker import TooFewGpus, select_device

    with pytest.raises(TooFewGpus, match=r"backend nccl: local rank 1 needs GPU 1, and this machine has 1 GPU: set "
                                         r"--nproc \(settings.training.nproc_per_node\) to at most 1, or use the gloo "
                                         r"backend") as refused:
        select_device("nccl", 1)
    assert refused.value.retryable is False
    assert select_device("nccl", 0) == torch.device("cuda", 0) and one_gpu == [0]


def test_a_rank_without_a_gpu_of_its_own_records_its_refusal_so_the_launch_fails_without_retries(
        one_gpu: list[int], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The worker checks the device before anything else, outside the part that records refusals: the launch found no
    refused.json and raised a retryable TrainingFailed."""
    import torch

    from tenfold.training import worker
    from tenfold.training.errors import TrainingRefused, refusal

    config = tmp_path / "train_config.json"
    config.write_text(TrainConfig(lake_uri=tmp_path.as_uri(), train_months=("2013-01",), backend="nccl",
                                  threads=1).to_json())
    for name, value in {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(torch, "set_num_threads", lambda n: None)  # this test process keeps its threads
    with pytest.raises(worker.TooFewGpus):
        worker.main.__wrapped__(["--config", str(config), "--out", str(tmp_path)])  # without @record's fault handler
    refused = refusal((tmp_path / "refused.json").read_text(), where="torchrun.log")
    assert isinstance(refused, TrainingRefused) and refused.retryable is False and refused.rank == 1
    assert "refused by rank 1: TooFewGpus: backend nccl: local rank 1 needs GPU 1" in str(refused)


def test_an_unreadable_train_config_in_the_output_folder_is_named_with_what_to_do(
        train_settings: Settings, small_config: TrainConfig, tmp_path: Path) -> None:
    """An empty train_config.json (a crash mid-write) gave "Expecting value: line 1 column 1", naming no file."""
    (tmp_path / "train_config.json").write_text("")
    with pytest.raises(ValueError, match=rf"{tmp_path}/train_config\.json is unreadable .*delete the output folder "
                                         rf"{tmp_path} or use a fresh one"):
        run_torchrun(train_settings, small_config, tmp_path, nproc=1, timeout_s=60)
    assert not (tmp_path / "preprocessing.json").exists() and (tmp_path / "train_config.json").read_text() == ""


def _flipped(text: str) -> bytes:
    """``text`` with the high bit of its 11th byte flipped: bytes that are not UTF-8 before they are bad JSON."""
    data = bytearray(text.encode())
    data[10] ^= 0x80
    return bytes(data)


@pytest.mark.parametrize("state", ["unreadable", "not UTF-8", "missing"])
def test_an_unreadable_preprocessing_state_with_checkpoints_trained_on_it_is_refused_naming_the_folder(
        train_settings: Settings, small_config: TrainConfig, tmp_path: Path, state: str) -> None:
    """The workers said "re-train the model" on every retry, which reused the same folder and failed the same way.
    Its data not pinned, the state cannot be fitted again to what the checkpoints were trained against. A deleted
    state was fitted again on whatever the window held now, and the checkpoints resumed against it. A flipped high
    bit raised a bare UnicodeDecodeError naming no file."""
    from tenfold.training.launch import fit_preprocessing

    assert small_config.data_digest is None
    body = {"unreadable": b"", "not UTF-8": _flipped(fit_preprocessing(small_config).to_json())}.get(state)
    if body is not None:
        (tmp_path / "preprocessing.json").write_bytes(body)
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "step-00000008.pt").write_bytes(b"a snapshot")
    says = "missing" if state == "missing" else "unreadable"
    with pytest.raises(ValueError, match=rf"{tmp_path}/preprocessing\.json is {says} .*delete the output folder "
                                         rf"{tmp_path} or use a fresh one"):
        run_torchrun(train_settings, small_config, tmp_path, nproc=1, timeout_s=60)
    # left as it was: the refusal changes nothing
    assert (tmp_path / "preprocessing.json").read_bytes() == body if body is not None else \
        not (tmp_path / "preprocessing.json").exists()


def test_a_preprocessing_state_or_config_that_is_not_utf8_is_unreadable_not_a_decode_error(
        small_config: TrainConfig, tmp_path: Path, train_settings: Settings) -> None:
    """A flipped high bit made the launcher and the worker raise a bare UnicodeDecodeError naming no file, before the
    checks that refit an unreadable state where nothing was trained on it, or refuse it naming the folder."""
    from tenfold.training.launch import _needs_preprocessing, fit_preprocessing
    from tenfold.training.worker import Trainer, WorkerError

    state = _flipped(fit_preprocessing(small_config).to_json())
    assert _needs_preprocessing(state, small_config, str(tmp_path), has_checkpoints=False)  # fitted again
    (tmp_path / "preprocessing.json").write_bytes(state)
    with pytest.raises(WorkerError, match=rf"{tmp_path}/preprocessing\.json is unreadable \(.*utf-8.*\): launch again"):
        Trainer(small_config, tmp_path, rank=0, world=1, local_rank=0)
    (tmp_path / "train_config.json").write_bytes(_flipped(small_config.to_json()))
    with pytest.raises(ValueError, match=rf"{tmp_path}/train_config\.json is unreadable \(UnicodeDecodeError: "):
        run_torchrun(train_settings, small_config, tmp_path, nproc=1, timeout_s=60)


def test_an_unreadable_preprocessing_state_nothing_was_trained_on_is_fitted_again(
        train_settings: Settings, small_config: TrainConfig, tmp_path: Path) -> None:
    """It is derived state: with no checkpoint trained against it, the launcher fits it again and the run trains."""
    import dataclasses

    from tenfold.model.preprocessing import Preprocessor

    (tmp_path / "preprocessing.json").write_text("")
    result = run_torchrun(train_settings, dataclasses.replace(small_config, max_steps=2), tmp_path, nproc=1,
                          timeout_s=180)
    assert result.steps == 2 and (result.model_dir / "meta.json").is_file()
    assert Preprocessor.from_json((tmp_path / "preprocessing.json").read_text()).fit_rows > 0


def test_a_preprocessing_state_left_without_its_config_is_fitted_again_for_the_config_launched(
        train_settings: Settings, small_config: TrainConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A launch killed between writing preprocessing.json and train_config.json left config A's state and no config:
    the next launch with config B compared nothing, found a readable state and no checkpoint, and B trained with A's
    vocabularies and scalers, silently. (`true` stands in for torchrun: what matters is the state it was given.)"""
    from tenfold.training import launch
    from tenfold.training.launch import fit_preprocessing

    month_a, month_b = small_config.with_(train_months=("2013-01",)), small_config.with_(train_months=("2013-03",))
    fit_a, fit_b = fit_preprocessing(month_a).to_json(), fit_preprocessing(month_b).to_json()
    assert fit_a != fit_b
    (tmp_path / "preprocessing.json").write_text(fit_a)
    monkeypatch.setattr(launch, "torchrun_command", lambda *args, **kwargs: ["true"])
    with pytest.raises(launch.TrainingFailed, match=r"wrote no train_result\.json"):
        run_torchrun(train_settings, month_b, tmp_path, nproc=1, timeout_s=60)
    assert (tmp_path / "preprocessing.json").read_text() == fit_b
    assert TrainConfig.from_dict(json.loads((tmp_path / "train_config.json").read_text())) == month_b


def test_a_launch_the_disk_filled_under_between_its_two_writes_leaves_nothing_the_next_config_trains_on(
        train_settings: Settings, small_config: TrainConfig, small_disk: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same, from a real fault: the disk fills once preprocessing.json is written, and train_config.json meets
    ENOSPC."""
    from tenfold.training import launch
    from tenfold.training.launch import fit_preprocessing

    out = small_disk.path / "run"
    month_a, month_b = small_config.with_(train_months=("2013-01",)), small_config.with_(train_months=("2013-03",))
    real = launch.atomic_write

    def disk_fills_after_the_state(path: Path, data: bytes, **kwargs: Any) -> None:
        real(path, data, **kwargs)
        if path.name == "preprocessing.json":
            small_disk.fill()

    monkeypatch.setattr(launch, "atomic_write", disk_fills_after_the_state)
    with pytest.raises(OSError, match="No space left"):
        run_torchrun(train_settings, month_a, out, nproc=1, timeout_s=60)
    assert (out / "preprocessing.json").read_text() == fit_preprocessing(month_a).to_json()
    assert not (out / "train_config.json").exists()
    small_disk.free()
    monkeypatch.setattr(launch, "atomic_write", real)
    monkeypatch.setattr(launch, "torchrun_command", lambda *args, **kwargs: ["true"])
    with pytest.raises(launch.TrainingFailed, match=r"wrote no train_result\.json"):
        run_torchrun(train_settings, month_b, out, nproc=1, timeout_s=60)
    assert (out / "preprocessing.json").read_text() == fit_preprocessing(month_b).to_json()


def test_a_launch_that_fails_right_after_starting_its_job_stops_the_job_and_frees_the_folder(
        train_settings: Settings, small_config: TrainConfig, small_disk: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Recording the job's process group (a write to the folder) can fail, on a full disk. It ran outside the wait's
    guard: the job kept running in a session of its own, holding the folder's lock, and every later launch into the
    folder was refused. The folder is on a small tmpfs, filled the moment the job has started: the record's write
    meets a real ENOSPC. (A `sleep` stands in for torchrun: what matters is the process, not what it runs.)"""
    import psutil

    from tenfold.training import launch

    out = small_disk.path / "run"
    monkeypatch.setattr(launch, "torchrun_command", lambda *args, **kwargs: ["sleep", "60"])
    real, started = launch._JobLock.record, []

    def disk_fills_now(self: launch._JobLock, *, job_pgid: int | None) -> None:
        if job_pgid is not None:
            started.append(job_pgid)
            small_disk.fill()
        real(self, job_pgid=job_pgid)

    monkeypatch.setattr(launch._JobLock, "record", disk_fills_now)
    with pytest.raises(OSError, match="No space left"):
        run_torchrun(train_settings, small_config, out, nproc=1, timeout_s=60)
    (pid,) = started
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE, "the job still runs"
    small_disk.free()
    monkeypatch.setattr(launch._JobLock, "record", real)
    monkeypatch.setattr(launch, "torchrun_command", lambda *args, **kwargs: ["true"])
    with pytest.raises(launch.TrainingFailed, match=r"wrote no train_result\.json"):  # the folder is free again
        run_torchrun(train_settings, small_config, out, nproc=1, timeout_s=60)
    assert not (out / launch.JOB_HOLDER).exists()  # a launch that ended leaves no holder behind


def test_categorical_values_rarer_than_the_settings_minimum_are_fit_as_the_oov_value(
        small_config: TrainConfig) -> None:
    """With every value seen in the window given a row of its own, the OOV row (index 0) was never trained on the
    flights workload, whose categoricals are never null: a destination or carrier first seen after the window got
    that row's random initial embedding. The rarest values now train it."""
    import dataclasses
    from collections import Counter

    import pyarrow.compute as pc

    from tenfold.data.lake import Lake
    from tenfold.training.data import read_features
    from tenfold.training.launch import fit_preprocessing

    base = build_settings("local")
    settings = base.model_copy(update={"training": base.training.model_copy(update={"vocabulary_min_count": 7})})
    assert TrainConfig.from_settings(settings, lake_uri="file:///lake").vocabulary_min_count == 7
    assert TrainConfig(lake_uri="file:///lake", train_months=("2013-01",)).vocabulary_min_count \
        == base.training.vocabulary_min_count > 1
    with pytest.raises(ValueError, match="vocabulary_min_count must be >= 1"):
        dataclasses.replace(small_config, vocabulary_min_count=0)

    from tenfold.training.data import time_column, validation_split
    from tenfold.workloads.flights.contract import CONTRACT

    cfg = dataclasses.replace(small_config, vocabulary_min_count=7)
    pre = fit_preprocessing(cfg)
    table = read_features(Lake(cfg.lake_uri), cfg.partitions, contract=None, table=cfg.table,
                          columns=[*pre.categorical_columns, time_column(CONTRACT)])
    split = validation_split(table, CONTRACT, cfg.validation_days)
    assert split.has_validation
    table = table.take(split.train)  # counted over the rows the ranks train on, not the validation slice
    rare_somewhere = False
    for col in pre.categorical_columns:
        counts = Counter(pc.cast(table[col], "string").to_pylist())
        assert pre.vocabularies[col] == sorted(v for v, n in counts.items() if n >= 7), col
        rare_somewhere |= any(n < 7 for n in counts.values())
    assert rare_somewhere  # the synthetic window has values under the minimum, so the check above can fail
    every_value = fit_preprocessing(dataclasses.replace(cfg, vocabulary_min_count=1))
    assert sum(every_value.vocab_sizes.values()) > sum(pre.vocab_sizes.values())


def test_a_value_first_seen_in_the_validation_slice_is_out_of_vocabulary(small_config: TrainConfig, tmp_path: Path) -> None:
    """The vocabulary was fit on the whole window, the slice included, but no rank trains on the slice: a route that
    began in the window's last days got an embedding row of its own that no step trained (its random initial
    vector), where the OOV row, trained on rare values, is what a value new to training should get."""
    import dataclasses

    import pyarrow as pa
    import pyarrow.compute as pc

    from tenfold.data.lake import Lake, Partition
    from tenfold.training.launch import fit_preprocessing
    from tenfold.workloads.flights.synthetic import publish_synthetic_features

    lake = Lake((tmp_path / "lake").as_uri())
    publish_synthetic_features(lake, [Partition(2013, 1), Partition(2013, 2)], 4_000, seed=3)
    feb = lake.read_table("features", [Partition(2013, 2)])
    late = pc.greater(feb["time_hour"], pa.scalar(pd_timestamp("2013-02-25"), feb["time_hour"].type))
    new_dest = pc.if_else(late, pa.scalar("NEW"), feb["dest"])  # a destination flown only in the last days
    assert pc.sum(late).as_py() >= 50
    staged = lake.uri_of(lake.staging_path("features", Partition(2013, 2), "new-dest"))
    import pyarrow.parquet as pq

    Lake(staged).fs.create_dir(lake._path(staged), recursive=True)
    pq.write_table(feb.set_column(feb.schema.get_field_index("dest"), feb.schema.field("dest"), new_dest),
                   f"{lake._path(staged)}/part-00000.parquet", filesystem=lake.fs)
    lake.publish("features", Partition(2013, 2), staged, run_id="new-dest",
                 extra=lake.read_manifest("features", Partition(2013, 2)).extra)
    cfg = dataclasses.replace(small_config, lake_uri=lake.uri, train_months=("2013-01", "2013-02"), validation_days=14,
                              vocabulary_min_count=20)
    pre = fit_preprocessing(cfg)
    assert "NEW" not in pre.vocabularies["dest"]
    assert pre.transform(feb.slice(0, 1).set_column(feb.schema.get_field_index("dest"), feb.schema.field("dest"),
                                                    pa.array(["NEW"])))[0][0, pre.categorical_columns.index("dest")] == 0


def pd_timestamp(day: str) -> object:
    import datetime as dt

    return dt.datetime.fromisoformat(day).replace(tzinfo=dt.UTC)


def test_a_batch_the_window_cannot_fill_is_refused_before_the_job_starts_without_retries(
        train_settings: Settings, small_config: TrainConfig, tmp_path: Path) -> None:
    """Every rank failed ("cannot fill one global batch"), torchrun restarted them and the task retried: in the cloud
    the GPU group scaled up for each try of a run that could never train."""
    from tenfold.training.launch import BatchTooBig

    with pytest.raises(BatchTooBig, match=r"batch_size 1000 x 2 processes is a global batch of 2,000 rows, and the "
                                          r"training window 2013-01..2013-03 holds 1,200") as refused:
        run_torchrun(train_settings, small_config.with_(batch_size=1000), tmp_path, nproc=2, timeout_s=60)
    assert refused.value.retryable is False  # run_step fails the Airflow task at once
    assert not (tmp_path / "torchrun.log").exists() and not (tmp_path / "preprocessing.json").exists()
    # With the feedback join's rows (added in the ranks, not counted here) the ranks decide.
    from tenfold.training.launch import refuse_a_batch_the_window_cannot_fill

    refuse_a_batch_the_window_cannot_fill(small_config.with_(batch_size=1000, feedback_uri="file:///f.parquet",
                                                             feedback_sha256="0" * 64, feedback_weight=1.0), 2)


def test_a_batch_only_the_validation_slice_leaves_unfilled_is_refused_before_the_job_starts_on_every_try(
        train_settings: Settings, small_config: TrainConfig, tmp_path: Path) -> None:
    """1,200 rows hold 2 x 550, but the ranks train on the 1,021 besides the validation slice: the check passed, every
    rank raised "cannot fill one global batch", torchrun restarted them and the task retried (TrainingFailed). A retry
    whose preprocessing is already staged (no fit, so no split computed) is refused the same way."""
    from tenfold.training.launch import BatchTooBig, fit_preprocessing

    cfg = small_config.with_(batch_size=550)
    refused = (r"batch_size 550 x 2 processes is a global batch of 1,100 rows, and the training window 2013-01..2013-03 "
               r"holds 1,200, 1,021 of them besides its validation slice \(its newest 14 days, which no rank trains "
               r"on\): give a smaller batch_size")
    first = tmp_path / "first"
    with pytest.raises(BatchTooBig, match=refused) as no:
        run_torchrun(train_settings, cfg, first, nproc=2, timeout_s=120, max_restarts=0)
    assert no.value.retryable is False  # run_step fails the Airflow task at once
    assert not (first / "torchrun.log").exists() and not (first / "preprocessing.json").exists()
    staged = tmp_path / "staged"  # a retry: its first try staged the preprocessing (as the cloud job stages it)
    staged.mkdir()
    (staged / "preprocessing.json").write_text(fit_preprocessing(small_config).to_json())
    with pytest.raises(BatchTooBig, match=refused):
        run_torchrun(train_settings, cfg, staged, nproc=2, timeout_s=120, max_restarts=0)
    assert not (staged / "torchrun.log").exists()
    from tenfold.training.launch import refuse_a_batch_the_window_cannot_fill

    refuse_a_batch_the_window_cannot_fill(small_config.with_(batch_size=510), 2)  # 2 x 510 <= 1,021: one batch fills


def test_a_refusal_raised_in_a_rank_fails_the_task_without_retries(
        train_settings: Settings, small_config: TrainConfig, tmp_path: Path) -> None:
    """With feedback rows joining the window the launch cannot count the rows: the ranks refused a batch too big for
    them (BatchTooBig), and the launch raised a retryable TrainingFailed, tried again and again by Airflow. The rank
    records its refusal; the launch raises TrainingRefused, which run_step fails at once."""
    import hashlib

    import pyarrow as pa
    import pyarrow.parquet as pq
    from airflow.sdk.exceptions import AirflowFailException

    from tenfold.pipelines.common import run_step
    from tenfold.training.errors import TrainingRefused

    feedback = tmp_path / "feedback.parquet"  # no labelled rows: the ranks train on the features' 1,021
    pq.write_table(pa.table({"label": pa.array([], pa.int8()), "sample_weight": pa.array([], pa.float64())}), feedback)
    cfg = small_config.with_(batch_size=1100, feedback_uri=str(feedback), feedback_weight=1.0,
                             feedback_sha256=hashlib.sha256(feedback.read_bytes()).hexdigest())
    out = tmp_path / "run"
    with pytest.raises(AirflowFailException) as failed:
        run_step(run_torchrun, train_settings, cfg, out, nproc=1, timeout_s=240, max_restarts=0)
    refused = failed.value.__cause__
    assert isinstance(refused, TrainingRefused) and refused.retryable is False and refused.rank == 0
    assert "training was refused by rank 0: BatchTooBig: 1021 rows cannot fill one global batch of 1100 x 1" in str(refused)
    assert (out / "refused.json").exists()


def test_the_job_gets_no_alert_hook_of_the_task_that_launched_it(
        train_settings: Settings, small_config: TrainConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A train_model task's environment holds the alert hooks (its failure callback alerts); torchrun and its ranks,
    which run the workload's code and never alert, inherited the webhook URL, a secret. A real child stands in for
    torchrun and writes the environment it was given."""
    from tenfold.features.submit import spark_env
    from tenfold.training import launch

    secret = "https://hooks.example.com/services/T0/B0/SECRETTOKEN"
    monkeypatch.setenv("TENFOLD_ALERT_WEBHOOK", secret)
    monkeypatch.setenv("TENFOLD_ALERT_SMTP_HOST", "relay.internal:25")
    seen = tmp_path / "env.txt"
    monkeypatch.setattr(launch, "torchrun_command", lambda *args, **kwargs: ["sh", "-c", f"env > {seen}"])
    with pytest.raises(launch.TrainingFailed, match=r"wrote no train_result\.json"):
        run_torchrun(train_settings, small_config, tmp_path / "run", nproc=1, timeout_s=60)
    given = seen.read_text()
    assert "OMP_NUM_THREADS=" in given  # the job's environment, read back
    assert "SECRETTOKEN" not in given and "TENFOLD_ALERT_SMTP_HOST" not in given
    # spark-submit's too (the features job and Spark scoring, launched by build_features and batch_inference)
    env = spark_env()
    assert "TENFOLD_ALERT_WEBHOOK" not in env and "TENFOLD_ALERT_SMTP_HOST" not in env and env["SPARK_LOCAL_IP"]


def test_a_window_whose_labels_are_all_one_class_is_refused_before_the_job_starts_without_retries(
        train_settings: Settings, small_config: TrainConfig, tmp_path: Path) -> None:
    """Every label 0 (an upstream that sent every flight as on time): the ranks trained every epoch, calibration only
    warned, and a version was registered that the gate then failed on its AUC floor without naming why."""
    import tempfile

    import pyarrow as pa
    import pyarrow.parquet as pq

    from tenfold.config.settings import FEATURES_TABLE
    from tenfold.data.lake import Lake, Partition
    from tenfold.training.launch import OneClassWindow
    from tenfold.workloads.flights.contract import CONTRACT
    from tenfold.workloads.flights.synthetic import synthetic_features

    lake = Lake((tmp_path / "lake").as_uri())
    for label in small_config.train_months:
        part = Partition.parse(label)
        rows = synthetic_features(part, 400, 3)
        rows = rows.set_column(rows.schema.get_field_index(CONTRACT.label), rows.schema.field(CONTRACT.label),
                               pa.array([0] * rows.num_rows, rows.schema.field(CONTRACT.label).type))
        with tempfile.TemporaryDirectory() as folder:
            pq.write_table(rows, Path(folder) / "part-0.parquet")
            lake.publish(FEATURES_TABLE, part, folder, run_id="one-class",
                         extra=CONTRACT.manifest_extra(synthetic=True))
    out = tmp_path / "run"
    with pytest.raises(OneClassWindow, match=r"the training window 2013-01..2013-03 \([0-9,]+ rows less its validation "
                                             r"slice\) holds only the label 0: a classifier needs both outcomes") as no:
        run_torchrun(train_settings, small_config.with_(lake_uri=lake.uri), out, nproc=1, timeout_s=60)
    assert no.value.retryable is False  # run_step fails the Airflow task at once
    assert not (out / "torchrun.log").exists() and not (out / "preprocessing.json").exists()
