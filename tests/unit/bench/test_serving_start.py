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
