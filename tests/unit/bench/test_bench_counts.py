"""The benchmarks' counts of runs, files and repeats: zero (or fewer predictions than files) is refused by argparse
in one line, before any work, where it crashed at the end (a median of nothing, a division by zero, an IndexError)."""

from __future__ import annotations

from typing import Any

import pytest
from _siblings import load  # bench/ is on the path: tests/unit/bench/conftest.py

# (script, argv, the first step of its work: replaced by one that fails the test should the run start)
CASES = [
    ("synth", ["--repeat", "0"], "run_child"),
    ("features", ["--repeat", "0"], "prepare"),
    ("training", ["--throughput-repeats", "0"], "build_settings"),
    ("feedback_window", ["--files", "0"], "build_settings"),
    ("feedback_window", ["--repeats", "0"], "build_settings"),
    ("feedback_window", ["--predictions", "0"], "build_settings"),
    ("drift", ["--repeats", "0"], "scratch"),
    ("training_step", ["--steps", "0"], "measure"),
    ("training_step", ["--rounds", "0"], "measure"),
    # Refused by parse_args, the first line of their main (their work's imports come after it): nothing to replace.
    ("spark_start", ["--repeat", "0"], None),
    ("offline", ["--repeat", "0"], None),
    ("offline", ["--rows", "0"], None),
    ("serving", ["--rounds", "0"], None),
    ("serving", ["--concurrency", "0"], None),
    ("training", ["--epochs", "0"], "build_settings"),
    ("training", ["--throughput-steps", "0"], "build_settings"),
]


def _no_work(*args: Any, **kwargs: Any) -> Any:
    raise AssertionError("the run started")


@pytest.mark.parametrize(("script", "argv", "work"), CASES, ids=[f"{s} {' '.join(a)}" for s, a, _ in CASES])
def test_a_zero_count_is_refused(script: str, argv: list[str], work: str | None, monkeypatch: pytest.MonkeyPatch,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    module = load(script)
    if work is not None:
        monkeypatch.setattr(module, work, _no_work)
    with pytest.raises(SystemExit) as refused:
        module.main(argv)
    assert refused.value.code == 2
    assert "0 is not a positive count: give 1 or more" in capsys.readouterr().err


def test_fewer_predictions_than_files_is_refused(monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """Files of no prediction: _land read served[0] of an empty batch (IndexError) after the temp lake was set up."""
    feedback_window = load("feedback_window")
    monkeypatch.setattr(feedback_window, "build_settings", _no_work)
    with pytest.raises(SystemExit) as refused:
        feedback_window.main(["--predictions", "5", "--files", "10"])
    assert refused.value.code == 2
    assert "--predictions 5 is fewer than --files 10" in capsys.readouterr().err


@pytest.mark.parametrize("script", ["oov", "quality", "search"])
@pytest.mark.parametrize("seed", ["-1", str(2**63)])
def test_a_seed_training_would_refuse_is_refused_before_any_work(script: str, seed: str,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """`--seeds` took any whole number: one out of TrainConfig's range failed in the first run's training, after the
    lake was read. parse_args is the first line of their main (their work's imports come after it)."""
    with pytest.raises(SystemExit) as refused:
        load(script).main(["--seeds", "0", seed])
    assert refused.value.code == 2
    assert f"{seed} is not a seed: give a whole number from 0 to 2**63 - 1" in capsys.readouterr().err
