"""bench/serving.py's reading of a py-spy profile: samples go to the first listed component on their stack."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest


def _load() -> ModuleType:
    path = Path(__file__).resolve().parents[3] / "bench" / "serving.py"
    spec = importlib.util.spec_from_file_location("bench_serving", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


serving = _load()

RAW = "\n".join([
    # the model thread: torch under the replica's predict -> model forward
    "thread (1): tenfold-model_0;run (concurrent/futures/thread.py:58);predict (tenfold/serving/loading.py:60);"
    "forward (torch/nn/modules/linear.py:125) 30",
    # pyarrow inside online assembly counts as assembly
    "thread (1): tenfold-model_0;predict (tenfold/serving/loading.py:57);assemble (tenfold/workloads/flights/online.py:240);"
    "array (pyarrow/array.pxi:1) 20",
    # json inside the handler's body reading is JSON, not the handler
    "thread (2): MainThread;run (uvloop/loop.pyx:1);predict (tenfold/serving/app.py:300);"
    "loads (json/__init__.py:346) 25",
    # the event loop alone
    "thread (2): MainThread;run (asyncio/base_events.py:1) 15",
    "thread (2): MainThread;something (elsewhere.py:1) 10",
    "garbage line without a count",
])


def test_components_and_leaves() -> None:
    comps, leaves, total = serving.summarize_profile(RAW)
    assert total == 100
    share = dict(comps)
    assert share == pytest.approx({"model forward (torch)": 0.30, "JSON encode/decode": 0.25,
                                   "online feature assembly": 0.20, "asyncio/uvloop event loop": 0.15, "other": 0.10})
    assert leaves[0] == ("forward (torch/nn/modules/linear.py:125)", pytest.approx(0.30))


def test_empty_profile() -> None:
    assert serving.summarize_profile("") == ([], [], 0)
