"""The torchrun command line per topology, and naming the failing rank from torchrun's summary."""

from __future__ import annotations

import pytest

from tenfold.config import build_settings
from tenfold.training.launch import parse_failure, torchrun_command


def test_local_runs_are_one_node_on_loopback_with_restarts_from_settings() -> None:
    settings = build_settings("local")
    cmd = torchrun_command(settings, "/tmp/out", nproc=2, job_id="j", max_restarts=settings.training.max_restarts)
    # Not --standalone: its TCP stores listen on every interface; a file rendezvous and stores on loopback.
    assert "--standalone" not in cmd and "--nnodes=1" in cmd and "--nproc-per-node=2" in cmd
    assert "--rdzv-conf=store_type=file" in cmd and f"--local-addr={settings.local.bind_host}" in cmd
    assert f"--max-restarts={settings.training.max_restarts}" in cmd
    assert cmd[cmd.index("-m", 3):] == ["-m", "tenfold.training.worker", "--config", "/tmp/out/train_config.json",
                                        "--out", "/tmp/out"]


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
