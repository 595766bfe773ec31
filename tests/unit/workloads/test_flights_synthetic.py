"""The synthetic flights partitions (tenfold.workloads.flights.synthetic): their times and their command line."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import pytest

from tenfold.data.lake import Partition
from tenfold.workloads.flights.synthetic import main, synthetic_features, synthetic_lookups


@pytest.mark.parametrize("part", [Partition(2013, 1), Partition(2013, 7), Partition(2013, 3), Partition(2013, 11)])
def test_time_hour_is_the_utc_instant_of_the_new_york_scheduled_hour(part):
    """time_hour was the New York hour read as UTC (hour 5 became 05:00Z, not 10:00Z in winter), so a synthetic row
    joined the weather of another hour and disagreed with what online assembly makes of the same flight. March and
    November hold the daylight-saving changes."""
    table = synthetic_features(part, 500, seed=3)
    new_york = ZoneInfo("America/New_York")
    rows = table.select(["year", "month", "day", "sched_dep_hour", "time_hour"]).to_pylist()
    for row in rows:
        local = row["time_hour"].astimezone(new_york)
        assert (local.year, local.month, local.day, local.hour) == (
            row["year"], row["month"], row["day"], row["sched_dep_hour"]), row
    # Each row's hour has weather in the month's lookups, which are keyed by the same UTC instants.
    weather = synthetic_lookups(part)["weather"]
    observed = set(zip(weather["origin"].to_pylist(), weather["time_hour"].to_pylist(), strict=True))
    keys = zip(table["origin"].to_pylist(), table["time_hour"].to_pylist(), strict=True)
    assert all(key in observed for key in keys)
    assert rows[0]["time_hour"].tzinfo is not None and rows[0]["time_hour"].utcoffset() == dt.timedelta(0)


@pytest.mark.parametrize(("args", "named"), [
    (["2013-13", "2013-12", "100"], "FIRST_MONTH '2013-13' is not a month: use YYYY-MM"),
    (["2013-01", "2013/02", "100"], "LAST_MONTH '2013/02' is not a month: use YYYY-MM"),
    (["2013-01", "2013-02", "ten"], "ROWS_PER_MONTH 'ten' is not a number of rows: use a whole number above 0"),
    (["2013-01", "2013-02", "0"], "ROWS_PER_MONTH '0' is not a number of rows"),
    (["2013-05", "2013-01", "100"], "LAST_MONTH 2013-01 is before FIRST_MONTH 2013-05"),
])
def test_the_command_refuses_a_bad_argument_in_one_line(tmp_path, capsys, args, named):
    """A month of 2013-13 ended in Partition.parse's ValueError traceback, a count of "ten" in int()'s, and months out
    of order published nothing and said so as a success."""
    lake = tmp_path / "lake"
    assert main([lake.as_uri(), *args]) == 2
    out = capsys.readouterr()
    assert out.out == ""
    lines = out.err.splitlines()
    assert len(lines) == 1 and named in lines[0], out.err
    assert "Traceback" not in out.err
    assert not lake.exists()  # nothing was published


def test_the_command_publishes_the_months_it_names(tmp_path, capsys):
    lake = tmp_path / "lake"
    assert main([lake.as_uri(), "2013-01", "2013-02", "50"]) == 0
    assert "published 2 synthetic features partitions" in capsys.readouterr().out
    assert sorted(p.name for p in (lake / "features" / "year=2013").iterdir()) == ["month=1", "month=2"]


def test_the_command_refuses_a_lake_uri_it_cannot_use_in_one_line(capsys):
    """A scheme the lake does not know ended in LakeError's traceback."""
    assert main(["ftp://example.com/lake", "2013-01", "2013-01", "10"]) == 2
    out = capsys.readouterr()
    lines = out.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("synthetic: LAKE_URI 'ftp://example.com/lake': "), out.err
    assert "Traceback" not in out.err and out.out == ""
