"""bench/features.py's bookkeeping: the profile's best run, what its reproducibility line may claim, and its refusal
of a DuckDB peer that computes something else."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
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


def test_a_duckdb_output_unlike_sparks_is_refused_before_timing(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The run went on: it timed every size and overwrote the report with ratios against a peer that computes
    something else (and only then exited 1)."""
    runs: list[str] = []

    class Spark:
        stopped = False

        def stop(self) -> None:
            Spark.stopped = True

    def timed(name: str) -> Any:
        def run(*args: Any) -> float:
            runs.append(name)
            return 1.0
        return run

    monkeypatch.setattr(features, "prepare", lambda root, sizes: {k: {"rows": "100"} for k in sizes})
    monkeypatch.setattr(features, "spark_session", lambda conf: Spark())
    for name in ("run_spark", "run_spark_single", "run_duckdb"):
        monkeypatch.setattr(features, name, timed(name))
    monkeypatch.setattr(features, "same_content", lambda spark_out, duck_out: (False, "column dep_delay differs"))
    monkeypatch.setattr(features, "digests", lambda folder: ["a"])
    out = tmp_path / "features.md"
    with pytest.raises(SystemExit, match=r"not Spark's at 1x \(column dep_delay differs\).*nothing written"):
        features.main(["--sizes", "1,4", "--out", str(out)])
    assert runs == ["run_spark", "run_spark_single", "run_duckdb"]  # the warm-up alone
    assert not out.exists()
    assert Spark.stopped
