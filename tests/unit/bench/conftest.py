"""The benchmarks' modules, loaded from bench/ (not a package on the path) once per session, by the scripts' own
loader (bench/_siblings.py: ``load("features")`` is the module ``bench_features``). bench/ is appended to the path for
that loader alone, after everything else, so none of its script names shadows an installed module."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parents[3] / "bench"
if str(BENCH) not in sys.path:
    sys.path.append(str(BENCH))

from _siblings import load  # noqa: E402  (bench/ is on the path only from here)


@pytest.fixture(scope="session")
def bench_serving() -> ModuleType:
    """bench/serving.py as the module ``bench_serving`` (the name test_serving_profile.py loads it under)."""
    return load("serving")


class SleepingTree:
    """A stand-in for a benchmark's child that hangs: ``script`` starts ``sleep 30`` under itself, writes both pids
    to a file, then waits; ``pids()`` reads them back and ``running(pid)`` says whether one is still alive."""

    def __init__(self, folder: Path) -> None:
        self.pid_file = folder / "pids"
        self.script = folder / "hang.sh"
        self.script.write_text(f"#!/bin/sh\nsleep 30 &\necho $$ $! > {self.pid_file}\nwait\n")
        self.script.chmod(0o755)

    def pids(self) -> list[int]:
        return [int(p) for p in self.pid_file.read_text().split()]

    @staticmethod
    def running(pid: int) -> bool:
        import psutil

        try:
            return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False

    def kill_left(self) -> None:
        """Whatever a failing test left running (on the code before its fix) is killed, not left behind."""
        import os
        import signal

        if self.pid_file.exists():
            for pid in self.pids():
                if self.running(pid):
                    os.kill(pid, signal.SIGKILL)


@pytest.fixture
def sleeping_tree(tmp_path: Path) -> Iterator[SleepingTree]:
    tree = SleepingTree(tmp_path)
    yield tree
    tree.kill_left()
