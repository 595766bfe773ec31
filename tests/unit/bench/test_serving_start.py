"""bench/serving.py's servers: one whose start does not return leaves nothing running."""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path
from types import ModuleType

import pytest


def test_ctrl_c_while_a_server_comes_up_stops_it(bench_serving: ModuleType, monkeypatch: pytest.MonkeyPatch,
                                                 tmp_path: Path) -> None:
    """A server was kept for the final stop_all only once ready, and started in a session of its own (no terminal
    SIGINT): Ctrl-C in its wait of up to 240 s left it running."""
    srv = bench_serving.Server("sleeper", ["sleep", "30"], dict(os.environ), "http://127.0.0.1:9/predict",
                               "http://127.0.0.1:9/ready", tmp_path / "sleeper.log")
    polls: list[str] = []

    def interrupted(url: str, timeout: float = 2.0) -> tuple[int, bytes]:
        polls.append(url)
        if len(polls) == 2:
            raise KeyboardInterrupt  # as Ctrl-C lands in the readiness poll
        return 0, b""

    monkeypatch.setattr(bench_serving, "_get", interrupted)
    try:
        with pytest.raises(KeyboardInterrupt):
            srv.start()
        assert srv.proc is not None and srv.proc.poll() is not None  # stopped and reaped
    finally:
        if srv.proc is not None and srv.proc.poll() is None:  # the code before the fix: not left behind by the test
            with contextlib.suppress(ProcessLookupError):
                os.killpg(srv.proc.pid, signal.SIGKILL)
            srv.proc.wait()


def test_a_stop_that_fails_after_a_ctrl_c_does_not_hide_the_ctrl_c(bench_serving: ModuleType,
                                                                   monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """The clean-up of a start that did not return may fail itself (the fleet's stop_fn, a group that will not die):
    its error replaced the KeyboardInterrupt, and main, which records a server that "did not start" and goes on to
    the next, went on benchmarking after the user's Ctrl-C."""
    stops: list[str] = []

    def failing_stop() -> None:
        stops.append("stop_fn")
        raise RuntimeError("the fleet would not go down")

    srv = bench_serving.Server("sleeper", ["sleep", "30"], dict(os.environ), "http://127.0.0.1:9/predict",
                               "http://127.0.0.1:9/ready", tmp_path / "sleeper.log", stop_fn=failing_stop)

    def interrupted(url: str, timeout: float = 2.0) -> tuple[int, bytes]:
        raise KeyboardInterrupt

    monkeypatch.setattr(bench_serving, "_get", interrupted)
    try:
        with pytest.raises(KeyboardInterrupt):
            srv.start()
        assert stops == ["stop_fn"]
        assert "sleeper: could not stop it after a failed start: RuntimeError('the fleet would not go down')" in \
            capsys.readouterr().err
    finally:
        if srv.proc is not None and srv.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(srv.proc.pid, signal.SIGKILL)
            srv.proc.wait()
