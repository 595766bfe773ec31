"""``tenfold quality``: a read-only check of a published partition, and where the Data Docs are."""

from __future__ import annotations

import pyarrow as pa
from typer.testing import CliRunner

from tenfold.cli import app
from tenfold.data.lake import Partition
from tenfold.features.job import FEATURES_TABLE
from tenfold.workloads.flights.synthetic import synthetic_features

from .conftest import with_column


def test_check_reports_without_side_effects(settings, lake, stage, alerts, monkeypatch):
    monkeypatch.setattr("tenfold.quality.cli.get_settings", lambda env=None: settings)
    part = Partition(2013, 4)
    table = synthetic_features(part, 21_000, seed=7)
    lake.publish(FEATURES_TABLE, part, stage(table, part, "ok"), run_id="r")
    runner = CliRunner()
    ok = runner.invoke(app, ["quality", "check", "features", "--month", "2013-04"])
    assert ok.exit_code == 0, ok.output
    assert "expectations passed (21000 rows)" in ok.output
    assert "Data Docs: file://" in ok.output

    bad = with_column(table, "origin", pa.array(["ZZZ"] * table.num_rows))
    lake.publish(FEATURES_TABLE, part, stage(bad, part, "bad"), run_id="r2")
    refused = runner.invoke(app, ["quality", "check", "features", "--month", "2013-04"])
    assert refused.exit_code == 1
    assert "expect_column_values_to_be_in_set(origin)" in refused.output
    assert lake.has_manifest(FEATURES_TABLE, part) and alerts() == []  # read-only: no quarantine, no alert

    missing = runner.invoke(app, ["quality", "check", "features", "--month", "2013-09"])
    assert missing.exit_code == 2 and "never" in missing.output

    docs = runner.invoke(app, ["quality", "docs"])  # the check wrote them
    assert docs.exit_code == 0, docs.output
    assert docs.output.strip() == f"{settings.local.home / 'data_docs'}/index.html"


def test_docs_before_any_validation_says_none_exist_yet_and_what_writes_them(settings, monkeypatch):
    """`tenfold quality docs` printed <home>/data_docs/index.html, exit 0, on a home where no validation had run:
    the path led to nothing."""
    monkeypatch.setattr("tenfold.quality.cli.get_settings", lambda env=None: settings)
    out = CliRunner().invoke(app, ["quality", "docs"])
    assert out.exit_code == 2, out.output
    assert out.output.strip().splitlines() == [
        f"error: no Data Docs yet in {settings.local.home / 'data_docs'}: every validation writes them (the "
        "build_features DAG's gate on each month it builds, or `tenfold quality check <table> --month YYYY-MM`)"]


def test_check_of_a_corrupt_partition_is_a_failed_check_not_bad_usage(settings, lake, stage, alerts, monkeypatch):
    """A file changed since it was published was reported with exit 2, which the command documents as bad usage;
    the DAG's gate refuses the same partition."""
    from pathlib import Path

    monkeypatch.setattr("tenfold.quality.cli.get_settings", lambda env=None: settings)
    part = Partition(2013, 4)
    lake.publish(FEATURES_TABLE, part, stage(synthetic_features(part, 2_000, seed=7), part, "ok"), run_id="r")
    path = Path(lake.files(FEATURES_TABLE, part)[0])
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size: only the checksum sees it
    path.write_bytes(bytes(data))
    out = CliRunner().invoke(app, ["quality", "check", "features", "--month", "2013-04"])
    assert out.exit_code == 1, out.output
    assert out.output.startswith("features 2013-04: the published partition is not intact, so the suite was not run: ")
    assert "CRC32C" in out.output and str(path) in out.output
    assert lake.has_manifest(FEATURES_TABLE, part) and alerts() == []  # read-only: nothing withdrawn


def test_check_whose_data_docs_cannot_be_written_says_so(settings, lake, stage, monkeypatch):
    """The report's Data Docs are None when they could not be written: the command printed "Data Docs: None"."""
    from tenfold.quality import datadocs

    monkeypatch.setattr("tenfold.quality.cli.get_settings", lambda env=None: settings)

    def no_site(settings):
        raise PermissionError(13, "Permission denied", str(settings.local.home / "data_docs"))

    monkeypatch.setattr(datadocs, "docs_site", no_site)
    part = Partition(2013, 4)
    lake.publish(FEATURES_TABLE, part, stage(synthetic_features(part, 21_000, seed=7), part, "ok"), run_id="r")
    out = CliRunner().invoke(app, ["quality", "check", "features", "--month", "2013-04"])
    assert out.exit_code == 0, out.output
    assert "Data Docs: not written (they could not be; the log above says why)" in out.output
    assert "None" not in out.output



def test_check_refuses_an_unknown_or_path_escaping_suite_before_reading_the_partition(settings, monkeypatch, caplog):
    """--suite nosuch read the partition first, then printed a Data Docs warning before the real refusal; and a name
    with '..' was looked up outside the suite folder ("suites here: none"). Each is one line now, naming the suite and
    the suites there, and no partition needs to exist (none does here)."""
    import logging

    monkeypatch.setattr("tenfold.quality.cli.get_settings", lambda env=None: settings)
    runner = CliRunner()
    for suite, what in (("nosuch", "does not exist"), ("../../../etc/passwd", "is not a suite name")):
        with caplog.at_level(logging.WARNING):
            out = runner.invoke(app, ["quality", "check", "flights", "--month", "2013-01", "--suite", suite])
        assert out.exit_code == 2, out.output
        assert out.stdout == "" and len(out.stderr.splitlines()) == 1, out.stderr
        assert out.stderr.startswith(f"error: suite {suite!r} {what}"), out.stderr
        assert "raw_flights" in out.stderr and "name one of them" in out.stderr
        assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []


def test_a_home_that_cannot_be_read_is_not_bad_usage(tmp_path):
    """TENFOLD_HOME under a regular file: exit 2 ("bad usage") with the raw OSError text, where every other command
    says what the system refused and to choose another TENFOLD_HOME (exit 1)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    (tmp_path / "file").write_text("x")
    env = {**os.environ, "TENFOLD_HOME": str(tmp_path / "file" / "home"), "TENFOLD_ENV": "local"}
    env.pop("TENFOLD_DEBUG", None)
    tenfold = str(Path(sys.executable).with_name("tenfold"))
    proc = subprocess.run([tenfold, "quality", "check", "flights", "--month", "2013-01"], env=env,
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "TENFOLD_HOME" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
