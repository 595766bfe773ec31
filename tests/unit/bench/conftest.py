"""The benchmarks' modules, loaded from bench/ (not a package on the path) once per session."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parents[3] / "bench"


@pytest.fixture(scope="session")
def bench_serving() -> ModuleType:
    """bench/serving.py as the module ``bench_serving`` (the name test_serving_profile.py loads it under)."""
    if (loaded := sys.modules.get("bench_serving")) is not None:
        return loaded
    spec = importlib.util.spec_from_file_location("bench_serving", BENCH / "serving.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module
