"""bench/synth.py's baseline must synthesize what the one process does, and the report gives its real counts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from _siblings import load  # bench/ is on the path: tests/unit/bench/conftest.py

synth = load("synth")


def _fake_children(monkeypatch: pytest.MonkeyPatch, prod_resources: int) -> None:
    counts = {("dev", "prod"): (["dev-data", "dev-serving", "prod-data", "prod-serving"], 100),
              ("dev",): (["dev-data", "dev-serving"], 40), ("prod",): (["prod-data", "prod-serving"], prod_resources)}

    def run_child(envs: list[str]) -> dict[str, Any]:
        stacks, resources = counts[tuple(envs)]
        return {"import_s": 1.0, "synth_s": 2.0, "stacks": stacks, "resources": resources, "wall_s": 3.0,
                "cpu_s": 3.5, "peak_rss_mib": 100.0, "load_avg": 0.5}

    monkeypatch.setattr(synth, "run_child", run_child)


def test_a_baseline_that_synthesized_less_is_refused(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The per-environment runs' counts were thrown away and the baseline row said 4 stacks whatever they built."""
    _fake_children(monkeypatch, prod_resources=50)  # 40 + 50 resources against the one process's 100
    out = tmp_path / "synth.md"
    with pytest.raises(SystemExit, match="did not synthesize what the one process did"):
        synth.main(["--out", str(out), "--repeat", "1"])
    assert not out.exists()


def test_the_baseline_row_gives_the_counts_it_synthesized(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _fake_children(monkeypatch, prod_resources=60)
    out = tmp_path / "synth.md"
    assert synth.main(["--out", str(out), "--repeat", "1"]) == 0
    row = next(line for line in out.read_text().splitlines() if line.startswith("| baseline"))
    assert row.endswith("| 4 | 100 |")
