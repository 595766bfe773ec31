"""What the benchmark scripts of this folder share: loading one another as modules, their count options, and stopping
a child process with everything it started.

``bench/`` is not a package: each script runs as ``.venv/bin/python bench/NAME.py``. A script that reuses another's
code (the real 2013 features lake of ``training.py``, the DuckDB twin of the features job in ``features.py``) loads
it here, once per process, under the name ``bench_NAME``.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType


def load(name: str) -> ModuleType:
    """``bench/<name>.py`` as a module (the same module object on every call)."""
    key = f"bench_{name}"
    if key in sys.modules:
        return sys.modules[key]
    spec = importlib.util.spec_from_file_location(key, Path(__file__).with_name(f"{name}.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[key] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[key]
        raise
    return module


def _whole(text: str) -> int:
    """``text`` as an int, or argparse's one-line refusal."""
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None


def positive_int(text: str) -> int:
    """An argparse type for a count of runs, files or repeats: a whole number of at least 1. Zero would leave a
    median of nothing (or a division by zero) to fail after the whole run, so argparse refuses it in one line."""
    value = _whole(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not a positive count: give 1 or more")
    return value


def seed(text: str) -> int:
    """An argparse type for a training seed: what ``TrainConfig`` takes (0 to 2**63 - 1), refused by argparse in one
    line: a seed out of range failed in the first run's training, after the lake was read."""
    from tenfold.training.config import MAX_SEED

    value = _whole(text)
    if not 0 <= value <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"{value} is not a seed: give a whole number from 0 to 2**63 - 1")
    return value


def kill_tree(pid: int) -> None:
    """Kill the process ``pid`` and every process under it, and wait for them. Killing the child alone (what
    ``subprocess``'s timeouts do, when they kill at all) leaves its own children running: synth's jsii Node, a
    training run's workers."""
    import psutil

    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]  # listed before the kill: orphans are no longer its children
    except psutil.NoSuchProcess:
        return
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    psutil.wait_procs(procs, timeout=10)
