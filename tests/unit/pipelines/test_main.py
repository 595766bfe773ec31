"""``python -m tenfold.pipelines.<dag_id>``: every way a run can end is one line saying what is wrong and what to do,
never a traceback (tenfold.pipelines.common.run_main)."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from tenfold.config import Settings, build_settings
from tenfold.local import free_ports
from tenfold.pipelines.common import PipelineError, run_conf, run_main

PIPELINES = ("build_features", "train_model", "batch_inference", "monitor_drift", "rollout_model")


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TENFOLD_")}
    return {**env, "TENFOLD_HOME": str(tmp_path / "home"), **extra}


def _args(name: str) -> list[str]:
    return ["2013-02"] if name == "build_features" else []


@pytest.mark.parametrize("name", PIPELINES)
def test_invalid_settings_end_every_pipeline_with_one_line_naming_the_variable(tmp_path: Path, name: str) -> None:
    """A TENFOLD_* variable that names no setting used to end each of them in pydantic's traceback."""
    done = subprocess.run([sys.executable, "-m", f"tenfold.pipelines.{name}", *_args(name)], capture_output=True,
                          text=True, timeout=180, env=_env(tmp_path, TENFOLD_TRAINING__EPOCHS="abc"))
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("error: invalid settings: ") and "TENFOLD_TRAINING__EPOCHS names no training setting" in last
    assert "TENFOLD_TRAINING__MAX_EPOCHS" in last  # what to use instead


def test_a_conf_that_is_not_an_object_is_refused_before_any_step(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "tenfold.pipelines.monitor_drift", "--conf", '["2013-07"]'],
                          capture_output=True, text=True, timeout=180, env=_env(tmp_path))
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert "--conf must be a JSON object of run conf keys, not list" in done.stderr


def test_ctrl_c_while_waiting_on_a_stopped_storage_service_ends_with_one_line(tmp_path: Path) -> None:
    """A real SIGINT while the rollout waits on a GCS emulator that is not running (its client retries for 2 min):
    exit 130 and one line, not a KeyboardInterrupt traceback from deep in the retry loop."""
    (port,) = free_ports(1)  # nothing listens there
    proc = subprocess.Popen([sys.executable, "-m", "tenfold.pipelines.rollout_model", "--debug"],
                            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
                            env=_env(tmp_path, TENFOLD_LOCAL__GCS_PORT=str(port)))
    lines: list[str] = []
    connecting = threading.Event()

    def read() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.append(line)
            if f"127.0.0.1:{port}" in line or "Retrying due to" in line:
                connecting.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert connecting.wait(120), "".join(lines)[-3000:]
        proc.send_signal(signal.SIGINT)
        assert proc.wait(60) == 130, "".join(lines)[-3000:]
    finally:
        proc.kill()
        proc.wait()
    reader.join(10)
    text = "".join(lines)
    assert "Traceback" not in text and "KeyboardInterrupt" not in text
    assert text.strip().splitlines()[-1] == ("error: `python -m tenfold.pipelines.rollout_model`: interrupted. Every "
                                             "step is idempotent: run the command again to start a new run")


def _main(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, body: object, *argv: str) -> int:
    monkeypatch.setenv("TENFOLD_HOME", str(tmp_path / "home"))
    from tenfold.config import get_settings

    get_settings.cache_clear()
    try:
        return run_main(argparse.ArgumentParser(prog="python -m tenfold.pipelines.demo_dag"), list(argv),
                        body)  # type: ignore[arg-type]
    finally:
        get_settings.cache_clear()


def test_a_storage_service_that_cannot_be_reached_is_named_with_what_to_do(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """The error the real GCS client raises when nothing listens (its retries run out) is an outage: one line that
    says to check `tenfold status` / `tenfold up`, not a fault in the code."""
    from google.api_core.retry import Retry

    from tenfold.storage import gcs_client

    (port,) = free_ports(1)

    def body(settings: Settings, args: argparse.Namespace) -> int:
        local = build_settings("local", {"TENFOLD_HOME": str(tmp_path), "TENFOLD_LOCAL__GCS_PORT": str(port)})
        gcs_client(local).bucket("b").blob("o").download_as_bytes(retry=Retry(initial=0.1, timeout=1.0))
        return 0

    assert _main(tmp_path, monkeypatch, body) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: `python -m tenfold.pipelines.demo_dag` cannot reach a service it needs "
                              "(RetryError: ")
    assert "`tenfold status` shows what is down and `tenfold up` starts it" in err[-1]
    assert not any("Traceback" in line for line in err)


def test_a_refusal_an_unwritable_path_and_a_fault_each_end_with_their_own_line(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    def refused(settings: Settings, args: argparse.Namespace) -> int:
        raise PipelineError("features partition 2013-07 is not published: run build_features first")

    assert _main(tmp_path, monkeypatch, refused) == 1
    assert capsys.readouterr().err.strip() == ("error: `python -m tenfold.pipelines.demo_dag`: features partition "
                                               "2013-07 is not published: run build_features first")

    def asked_wrongly(settings: Settings, args: argparse.Namespace) -> int:  # a conf key or month the DAG refuses
        run_conf({"moth": "2013-07"}, ("month",))
        return 0

    assert _main(tmp_path, monkeypatch, asked_wrongly) == 1  # a refusal, as a triggered run's (2: not JSON at all)
    assert capsys.readouterr().err.strip().endswith("unknown run conf keys ['moth']: use any of ['month']")

    def unwritable(settings: Settings, args: argparse.Namespace) -> int:
        (tmp_path / "file").write_text("x")
        (tmp_path / "file" / "child").write_text("y")  # a real NotADirectoryError from the system
        return 0

    assert _main(tmp_path, monkeypatch, unwritable) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: `python -m tenfold.pipelines.demo_dag` cannot go on: Not a directory: ")
    assert "cannot reach" not in err

    def fault(settings: Settings, args: argparse.Namespace) -> int:
        return {}["missing"]  # type: ignore[no-any-return]

    assert _main(tmp_path, monkeypatch, fault) == 1
    err = capsys.readouterr().err.strip()
    assert err == ("error: `python -m tenfold.pipelines.demo_dag` failed on a fault in the code (KeyError: 'missing');"
                   " run it again with --debug for the traceback, and report it")


def test_a_full_disk_ends_with_its_own_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture[str], small_disk: Any) -> None:
    def full(settings: Settings, args: argparse.Namespace) -> int:
        small_disk.fill()
        with open(small_disk.path / "out.bin", "wb") as out:  # a real ENOSPC from the system
            out.write(b"x" * 65536)
            out.flush()
            os.fsync(out.fileno())
        return 0

    assert _main(tmp_path, monkeypatch, full) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: `python -m tenfold.pipelines.demo_dag` cannot go on: the disk it was writing to is "
                          "full (No space left on device); free space there (`df -h "), err
    assert "free space" in err and "cannot reach" not in err and "fault in the code" not in err


@pytest.mark.parametrize("kind", ["timeout", "failed", "config"])
def test_a_training_that_failed_is_said_as_it_is_not_as_an_outage_or_a_code_fault(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], kind: str
) -> None:
    """A timeout (a TimeoutError) ended "cannot reach a service it needs ... tenfold status shows what is down"; a
    rank's failure, or an output folder holding a run of another config, "failed on a fault in the code"."""
    from tenfold.pipelines import train_model as pipeline
    from tenfold.training.errors import TrainingFailed, TrainingTimeout

    monkeypatch.setenv("TENFOLD_HOME", str(tmp_path / "home"))
    error = {"timeout": TrainingTimeout("training ran past its 3600 s bound; its log: /x/train.log"),
             "failed": TrainingFailed("rank 1 failed: a null label in flights 2013-03; its log: /x/train.log"),
             "config": ValueError("/x/run holds a run with a different config (changed: ['data_digest'])")}[kind]

    def train(settings: Settings, planned: object) -> object:
        raise error

    from tenfold.config import get_settings

    monkeypatch.setattr(pipeline, "plan", lambda settings, run_id, conf: object())
    monkeypatch.setattr(pipeline, "train", train)
    get_settings.cache_clear()  # settings of this test's home, never left cached for the next test
    try:
        assert pipeline.main([]) != 0
    finally:
        get_settings.cache_clear()
    err = capsys.readouterr().err
    assert str(error) in err and "cannot reach" not in err and "fault in the code" not in err, err


@pytest.mark.parametrize("fault", [ConnectionError("the HAProxy runtime socket did not answer"), KeyboardInterrupt()])
def test_the_one_process_rollout_concludes_a_rollout_whose_step_raised(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fault: BaseException
) -> None:
    """Without Airflow, a step that raised (a router hiccup, Ctrl-C) left the canary its share with nobody watching:
    nothing ran conclude, and running the command again started a new rollout, so the old one never ended."""
    from tenfold.config import get_settings
    from tenfold.pipelines import rollout_model as pipeline

    monkeypatch.setenv("TENFOLD_HOME", str(tmp_path / "home"))
    concluded: list[object] = []

    def step(settings: Settings, run: object, index: int) -> str:
        if index == 2:
            raise fault
        return pipeline.PASS

    from types import SimpleNamespace

    planned = SimpleNamespace(steps=(5, 25, 100))
    monkeypatch.setattr(pipeline, "plan", lambda settings, run_id, conf: planned)
    monkeypatch.setattr(pipeline, "deploy", lambda settings, run: run)
    monkeypatch.setattr(pipeline, "step", step)
    # told that no failure callback alerted the step (there is no Airflow here): conclude alerts it
    monkeypatch.setattr(pipeline, "conclude", lambda settings, run, **kw: concluded.append((run, kw)) or {})
    get_settings.cache_clear()
    try:
        assert pipeline.main([]) == (130 if isinstance(fault, KeyboardInterrupt) else 1)
    finally:
        get_settings.cache_clear()
    assert concluded == [(planned, {"failure_alerted": False})]
