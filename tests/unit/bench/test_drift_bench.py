"""bench/drift.py's refusals (a lake of older features, options it would ignore) and its check of what the monitor
read, over every run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from _siblings import load  # bench/ is on the path: tests/unit/bench/conftest.py

from tenfold.config.settings import FEATURES_TABLE
from tenfold.data.lake import Lake, Partition, month_range
from tenfold.workloads import VERSION_KEY
from tenfold.workloads.flights.contract import CONTRACT
from tenfold.workloads.flights.synthetic import synthetic_features

drift = load("drift")


@pytest.fixture
def small(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Small synthetic months, and the report written under tmp_path (returned), not into bench/results."""
    monkeypatch.setattr(drift, "SYNTHETIC_ROWS", 2000)
    monkeypatch.setattr(drift, "RESULTS", tmp_path / "drift.md")
    return tmp_path / "drift.md"


def _older_lake(root: Path, staging: Path) -> Lake:
    """2013-01 and 2013-02 published by an older version of the features (a lake built before features v3)."""
    lake = Lake(root.as_uri())
    for part in month_range("2013-01", "2013-02"):
        staged = staging / f"staged-{part.label}"
        staged.mkdir()
        pq.write_table(synthetic_features(part, 50), staged / "part-00000.parquet")
        lake.publish(FEATURES_TABLE, part, str(staged), run_id="old", extra={VERSION_KEY: CONTRACT.version - 1})
    return lake


def test_a_lake_of_older_features_is_refused_in_one_line(small: Path, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    """read_features' StaleFeaturesError ended the run in a raw traceback."""
    lake = _older_lake(tmp_path / "lake", tmp_path)
    assert drift.main(["--lake", lake.uri]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("bench/drift.py: ") and f"(version {CONTRACT.version - 1})" in err and "\n" not in err
    assert not small.exists()


def test_make_bench_falls_back_to_synthetic_months_on_a_lake_of_older_features(
        small: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """`make bench` runs it with neither --lake nor --month, on the project's lake: one built before features v3
    crashed it, where a lake without months falls back to synthetic ones."""
    _older_lake(tmp_path / "project" / ".tenfold" / "lake", tmp_path)
    monkeypatch.setattr(drift, "project_root", lambda: tmp_path / "project")
    assert drift.main(["--repeats", "1"]) == 0
    assert "synthetic months instead" in capsys.readouterr().err
    assert "synthetic months of 2,000 rows" in small.read_text()


@pytest.mark.parametrize("extra", [["--month", "2013-06"], ["--lake", "file:///elsewhere"]])
def test_synthetic_with_a_month_or_a_lake_is_refused(extra: list[str], monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """--synthetic ignored them, and the report's command line named a month or a lake it did not measure."""

    def no_run(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the bench started")

    monkeypatch.setattr(drift, "scratch", no_run)
    with pytest.raises(SystemExit) as refused:
        drift.main(["--synthetic", *extra])
    assert refused.value.code == 2
    assert "--synthetic measures synthetic months in a temp lake" in capsys.readouterr().err


def test_another_month_read_in_any_run_fails_the_bench(small: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The reads were cleared before every run: only the last run's counted, so a first run that read another
    month passed."""
    import tenfold.monitoring.drift as monitoring

    real, calls = monitoring.measure_partition, []

    def reads_january_first(loaded: Any, profile: Any, lake: Lake, table: str, *args: Any) -> Any:
        if not calls:
            lake.read_table(table, [Partition(2013, 1)])
        calls.append(1)
        return real(loaded, profile, lake, table, *args)

    monkeypatch.setattr(monitoring, "measure_partition", reads_january_first)
    assert drift.main(["--synthetic", "--repeats", "2"]) == 1
    assert len(calls) == 2
    assert "lake partitions the monitor read: ['2013-01', '2013-06'] (the month only: False)" in small.read_text()
