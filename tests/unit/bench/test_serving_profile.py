"""bench/serving.py's reading of a py-spy profile: samples go to the first listed component on their stack."""

from __future__ import annotations

import pytest
from _siblings import load  # bench/ is on the path: tests/unit/bench/conftest.py

serving = load("serving")

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


def _phase(target: str, kind: str, throughput: float, p50: float = 1.0, ok: int = 1000, error: str = "") -> object:
    r = {"throughput": throughput, "p50_ms": p50, "p99_ms": 5.0, "ok": ok, "errors": 0 if ok else 10,
         "first_error": error}
    return serving.Phase(target=target, kind=kind, r=r, server_cpu_s=1.0, wall_s=10.0)


def test_a_floor_or_miss_phase_that_answered_nothing_is_reported_not_a_division_by_zero() -> None:
    """A server that starts but refuses every request has throughput 0: the report divided by it after the whole
    run, and the run's figures were lost with a ZeroDivisionError."""
    get = {("tenfold", "closed"): _phase("tenfold", "closed", 3000.0),
           ("floor", "closed"): _phase("floor", "closed", 0.0, ok=0, error="422: unknown field user_key"),
           ("tenfold", "miss"): _phase("tenfold", "miss", 0.0, p50=0.0, ok=0),
           ("tenfold", "hit"): _phase("tenfold", "hit", 900.0, p50=0.1)}
    floor, cache = serving.targets(get)[1:]
    assert floor == (">= 70% of the no-op floor", "the floor answered no request (422: unknown field user_key)", None)
    assert cache == ("cache-hit p50 <= 0.5x miss p50", "not measured", None)
