"""The benchmarks' modules, loaded from bench/ (not a package on the path) once per session, by the scripts' own
loader (bench/_siblings.py: ``load("features")`` is the module ``bench_features``). bench/ is appended to the path for
that loader alone, after everything else, so none of its script names shadows an installed module."""

from __future__ import annotations

import sys
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
