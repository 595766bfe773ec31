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


def test_the_ratios_follow_from_the_row(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The row gave one run's wall and CPU (with --repeat 2, the slower of the two) while the ratios divided the
    medians of the walls and of the CPUs: a row of 6.0 s / 5.0 s against 8 s / 8 s said 'wall 0.62, CPU 0.88'."""
    ones = iter([(4.0, 9.0), (6.0, 5.0)])

    def run_child(envs: list[str]) -> dict[str, Any]:
        wall, cpu = next(ones) if len(envs) == 2 else (4.0, 4.0)  # each environment alone: 8 s / 8 s together
        stacks = [f"{e}-{s}" for e in envs for s in ("data", "serving")]
        return {"import_s": 1.0, "synth_s": 2.0, "stacks": stacks, "resources": 50 * len(envs), "wall_s": wall,
                "cpu_s": cpu, "peak_rss_mib": 100.0, "load_avg": 0.5}

    monkeypatch.setattr(synth, "run_child", run_child)
    out = tmp_path / "synth.md"
    assert synth.main(["--out", str(out), "--repeat", "2"]) == 0
    text = out.read_text().splitlines()

    def figures(prefix: str) -> tuple[float, float]:
        cells = next(line for line in text if line.startswith(prefix)).split("|")
        return float(cells[2]), float(cells[3])

    (wall, cpu), (base_wall, base_cpu) = figures("| dev + prod"), figures("| baseline")
    assert f"Ratio one process / baseline: wall {wall / base_wall:.2f}, CPU {cpu / base_cpu:.2f}." in text
    assert (wall, cpu, base_wall, base_cpu) == (5.0, 7.0, 8.0, 8.0)  # the medians, each on its own
    assert any(line.endswith(f"meets it on wall time ({cpu:.1f} s of CPU).") for line in text)


def test_a_synth_past_its_time_is_killed_with_its_children(monkeypatch: pytest.MonkeyPatch, sleeping_tree: Any) -> None:
    """communicate(timeout=600) raised TimeoutExpired and killed nothing: the child and its jsii Node child kept
    running while the temporary folder they wrote in was removed."""
    monkeypatch.setattr(synth, "CHILD_TIMEOUT_S", 1.0, raising=False)
    monkeypatch.setattr(synth.sys, "executable", str(sleeping_tree.script))  # run_child's `python -c CODE`
    with pytest.raises(SystemExit) as stopped:
        synth.run_child(["dev"])
    message = str(stopped.value.code)
    assert "did not finish in 1 s" in message and "\n" not in message
    assert not any(sleeping_tree.running(pid) for pid in sleeping_tree.pids())
