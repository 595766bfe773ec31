"""The fleet's autoscaling rule: load-balancer utilisation per replica against the cloud's target, with a stabilisation window."""

from __future__ import annotations

import math

import pytest

from tenfold.serving.autoscale import Autoscaler, recommend, utilization


def test_recommendation_brings_utilisation_to_the_target() -> None:
    # 8 per replica at 0.5 -> 4 requests per replica: 10 in flight need 3 replicas.
    assert recommend(10, capacity=8, target=0.5, low=1, high=10) == 3
    assert recommend(12, capacity=8, target=0.5, low=1, high=10) == 3  # exactly at target: no extra replica
    assert recommend(12.5, capacity=8, target=0.5, low=1, high=10) == 4
    assert recommend(0, capacity=8, target=0.5, low=2, high=10) == 2  # never below the minimum
    assert recommend(1000, capacity=8, target=0.5, low=1, high=4) == 4  # nor above the maximum
    with pytest.raises(ValueError, match="target"):
        recommend(1, capacity=8, target=0, low=1, high=2)


def test_utilisation_is_in_flight_per_ready_replica_over_capacity() -> None:
    assert utilization(6, 2, 4) == 0.75
    assert utilization(0, 0, 4) == 0.0
    assert utilization(3, 0, 4) == math.inf


def _scaler(window: float = 10.0) -> Autoscaler:
    return Autoscaler(low=1, high=4, capacity=2, target=0.5, stabilization_s=window)


def test_scales_out_at_once() -> None:
    scaler = _scaler()
    assert scaler.decide(0.0, 0.0, 1) == 1
    assert scaler.decide(1.0, 3.0, 1) == 3  # 3 in flight at 1 per replica: 3 replicas, right away
    assert scaler.decide(2.0, 9.0, 3) == 4  # capped at the maximum


def test_scales_in_only_after_the_load_stayed_low_for_the_window() -> None:
    scaler = _scaler(window=10.0)
    assert scaler.decide(0.0, 3.0, 1) == 3
    for t in range(1, 11):
        assert scaler.decide(float(t), 0.0, 3) == 3, f"shrank after {t} s of a 10 s window"
    assert scaler.decide(10.5, 0.0, 3) == 1
    # A spike inside the window holds the peak: the pool shrinks to it, not below.
    scaler = _scaler(window=10.0)
    scaler.decide(0.0, 4.0, 1)
    scaler.decide(6.0, 2.0, 4)
    assert scaler.decide(11.0, 0.0, 4) == 2
    assert scaler.decide(16.5, 0.0, 2) == 1


def test_a_new_scaler_keeps_the_current_size_for_one_window() -> None:
    scaler = _scaler(window=5.0)
    assert scaler.decide(100.0, 0.0, 3) == 3
    assert scaler.decide(104.0, 0.0, 3) == 3
    assert scaler.decide(105.5, 0.0, 3) == 1


def test_a_restarted_window_keeps_the_pool_at_its_size_for_one_window() -> None:
    """HAProxy silent for longer than the window (hung, then restarted; nothing observed meanwhile): the window held
    only the first sample after it, 0 in flight while every replica re-entered, and the pool of warm replicas was
    cut to its minimum at once, as the clients came back. The supervisor restarts the window then. Calls as far
    apart as the window itself (scale_interval_s >= stabilization_s) still scale in: no gap counts on its own."""
    scaler = Autoscaler(low=2, high=6, capacity=2, target=0.5, stabilization_s=30.0)
    assert scaler.decide(0.0, 3.0, 2) == 3
    assert scaler.decide(2.0, 4.0, 3) == 4
    assert scaler.decide(4.0, 4.0, 4) == 4
    scaler.restart()  # HAProxy came back
    assert scaler.decide(40.0, 0.0, 4) == 4, "shrank on the first sample after the restart"
    assert scaler.decide(69.0, 0.0, 4) == 4
    assert scaler.decide(70.5, 0.0, 4) == 2  # low for the whole window since: now it shrinks
    for window in (0.0, 30.0):
        sparse = Autoscaler(low=1, high=6, capacity=2, target=0.5, stabilization_s=window)
        sizes = [sparse.decide(t, 0.0 if t else 8.0, 4) for t in (0.0, 30.2, 60.4, 90.6)]
        assert sizes[-1] == 1, f"window {window} s, a call every 30.2 s: {sizes}"


def test_new_bounds_apply_at_once() -> None:
    scaler = _scaler(window=60.0)
    assert scaler.decide(0.0, 8.0, 1) == 4
    scaler.set_bounds(1, 2)
    assert scaler.decide(1.0, 8.0, 4) == 2
    with pytest.raises(ValueError, match="at least its min"):
        scaler.set_bounds(3, 2)


def test_a_max_lowered_then_raised_does_not_scale_out_without_load() -> None:
    """The window still held the old peak: with the max raised again, 'scaling in' to that peak grew an idle pool
    from 2 back to 4."""
    scaler = _scaler(window=60.0)
    assert scaler.decide(0.0, 8.0, 1) == 4
    scaler.set_bounds(1, 2)
    scaler.set_bounds(1, 4)
    assert scaler.decide(2.0, 0.0, 2) == 2  # idle: stays, never more than it is
