"""The demo's closing table tells only what happened (the whole demo runs in tests/integration/test_lifecycle.py)."""

from __future__ import annotations

import time
from collections.abc import Callable
from types import SimpleNamespace

import psutil
import pytest

from tenfold import demo
from tenfold.config import Settings
from tenfold.data.lake import Partition


def test_the_first_champions_auc_on_a_month_it_was_trained_on_is_marked_in_sample() -> None:
    trained = demo.MonthRow("2013-08", auc_first=0.71, first_trained_on_it=True)
    later = demo.MonthRow("2013-11", auc_first=0.66)
    assert trained.cells()[5] == "0.7100 (trained on it)" and later.cells()[5] == "0.6600"
    assert demo.MonthRow("2013-08", first_trained_on_it=True).cells()[5] == "n/a"


def test_a_rollout_run_that_failed_is_not_shown_as_no_run(make_settings: Callable[..., Settings],
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """It moved the canary to 10 % and failed before deciding: the table said "no run"."""
    import tenfold.registry
    import tenfold.rollout.record

    monkeypatch.setattr(tenfold.registry, "ModelRegistry", lambda settings: object())
    monkeypatch.setattr(tenfold.rollout.record, "latest",
                        lambda registry, version: ("r1", {"1-set": {"step": 1, "percent": 10}}))
    api = SimpleNamespace(runs=lambda dag_id: [{"dag_run_id": "r1"}], run=lambda dag_id, run_id: {"state": "failed"},
                          failed_tasks=lambda dag_id, run_id: ["step_1"])
    said: list[str] = []
    outcome = demo.follow_rollout(make_settings(), api, set(), "v2", said.append)  # type: ignore[arg-type]
    assert outcome == "failed"
    assert "  step 1: canary at 10 %" in said and any("failed in step_1" in line for line in said)


def test_no_flights_to_send_leaves_the_traffic_thread_idle(make_settings: Callable[..., Settings],
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """`tenfold demo --flights 0`: the sender used to spin on its empty list, a core at 100 % per replayed month."""
    import tenfold.demo as module

    monkeypatch.setattr(module, "get_workload", lambda settings: SimpleNamespace(replay=lambda month: []))
    me = psutil.Process()
    with demo.Traffic(make_settings(), Partition(2013, 7), 0) as live:
        before = sum(me.cpu_times()[:2])
        time.sleep(1.0)
        used = sum(me.cpu_times()[:2]) - before
    assert live.items == [] and used < 0.5, f"{used:.2f} CPU s in 1 s with nothing to send"
