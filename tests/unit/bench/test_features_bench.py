"""bench/features.py's bookkeeping: the profile's best run, and what its reproducibility line may claim."""

from __future__ import annotations

from _siblings import load  # bench/ is on the path: tests/unit/bench/conftest.py

features = load("features")


def test_the_profile_keeps_the_wall_and_cpu_of_one_run() -> None:
    """The least wall and the least CPU were taken apart: (10 s, 15 CPU s) and (12 s, 9 CPU s) made 10 s / 9 CPU s."""
    best = None
    for wall, cpu in [(12.0, 9.0), (10.0, 15.0), (11.0, 8.0)]:
        best = features.keep_best(best, wall, cpu)
    assert best == (10.0, 15.0)


def test_one_run_is_not_called_byte_identical() -> None:
    assert features.reproducibility([["a", "b"]]).startswith("not checked (one run")
    assert features.reproducibility([]).startswith("not checked")
    assert features.reproducibility([["a", "b"], ["a", "b"]]) == "byte-identical"
    assert features.reproducibility([["a", "b"], ["a", "c"]]) == "DIFFERENT"
