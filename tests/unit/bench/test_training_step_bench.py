"""bench/training_step.py's measurement in a child process: one past its time is stopped, with what it started."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from _siblings import load  # bench/ is on the path: tests/unit/bench/conftest.py

training_step = load("training_step")


def test_a_run_past_its_time_is_killed_and_said_in_one_line(monkeypatch: pytest.MonkeyPatch, sleeping_tree: Any) -> None:
    """subprocess.run(timeout=600) ended the bench in a raw TimeoutExpired."""
    monkeypatch.setattr(training_step, "CHILD_TIMEOUT_S", 1.0, raising=False)
    monkeypatch.setattr(training_step.sys, "executable", str(sleeping_tree.script))  # `python FILE --child ...`
    with pytest.raises(SystemExit) as stopped:
        training_step.measure(Path("src"), "gloo", 512, 10, 29500)
    message = str(stopped.value.code)
    assert message.startswith("bench/training_step.py: the run at batch 512") and "\n" not in message
    assert not any(sleeping_tree.running(pid) for pid in sleeping_tree.pids())
