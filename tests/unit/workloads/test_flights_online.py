"""The flights request model and online assembly, on synthetic lookups (no Spark; the skew test against
the Spark job on a real month is tests/spark/test_online_skew.py)."""

from __future__ import annotations

import datetime as dt
import json
import re
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pytest
from pydantic import ValidationError

from tenfold.data.partition import Partition
from tenfold.workloads import OnlineFeatures, RequestInvalid
from tenfold.workloads.flights import WORKLOAD
from tenfold.workloads.flights.contract import CONTRACT, tailnum_bucket
from tenfold.workloads.flights.synthetic import synthetic_lookups, synthetic_requests

JAN, MAR = Partition(2013, 1), Partition(2013, 3)
BODY = {"carrier": "UA", "flight": 1545, "origin": "EWR", "dest": "LAX", "sched_dep": "2013-01-01T05:15:00",
        "sched_arr": "2013-01-01T08:19:00", "tailnum": "N0007", "user_key": "u-123"}


def request(**change: Any) -> Any:
    body = {k: v for k, v in {**BODY, **change}.items() if v is not None}
    return WORKLOAD.request_model.model_validate(body)


@pytest.fixture(scope="module")
def lookups() -> dict[str, dict[str, pa.Table]]:
    return {JAN.label: synthetic_lookups(JAN), MAR.label: synthetic_lookups(MAR)}


@pytest.fixture(scope="module")
def online(lookups: dict[str, dict[str, pa.Table]]) -> OnlineFeatures:
    return WORKLOAD.online_features(lookups)


def test_an_overnight_flight_on_a_night_the_clocks_change_takes_the_arrivals_offset(online: OnlineFeatures) -> None:
    """As with_block_minutes: an arrival that reads earlier than the departure is the next day's wall clock."""
    spring, dated, ordinary = online.assemble([
        # 2013-03-10 23:00 EDT (03:00 UTC) -> 00:21 EDT (04:21 UTC): 81 min, not 141 (the fall night: test_transforms)
        request(sched_dep="2013-03-10T23:00", sched_arr="2013-03-10T00:21", dest="BOS"),
        # a client that dates the arrival itself gets the same
        request(sched_dep="2013-03-10T23:00", sched_arr="2013-03-11T00:21", dest="BOS"),
        # a night without a change: as before
        request(sched_dep="2013-03-12T23:00", sched_arr="2013-03-12T00:21", dest="BOS"),
    ]).to_pylist()
    assert spring["sched_block_minutes"] == dated["sched_block_minutes"] == 81.0
    assert ordinary["sched_block_minutes"] == 81.0


@pytest.mark.parametrize(("change", "field", "says"), [
    ({"flight": "1545"}, "flight", "valid integer"),
    ({"flight": 15.5}, "flight", "valid integer"),
    ({"flight": True}, "flight", "valid integer"),
    ({"flight": 0}, "flight", "greater than or equal to 1"),
    ({"carrier": "ua"}, "carrier", "pattern"),
    ({"origin": "EWRX"}, "origin", "pattern"),
    ({"sched_dep": "2013-01-01T05:15:00+01:00"}, "sched_dep", "no time-zone offset"),
    ({"sched_dep": 1357016100}, "sched_dep", "naive ISO string"),
    # "$" matched before a final newline: pydantic then refused it for "unexpected extra characters".
    ({"sched_dep": "2013-01-01T05:15\n"}, "sched_dep", "naive ISO string"),
    ({"sched_dep": "2013-02-30T05:15"}, "sched_dep", "valid datetime"),
    ({"sched_dep": "2013-01-01T05:15:30"}, "sched_dep", "whole minutes"),
    ({"sched_arr": "2013-01-02T08:19:00"}, "sched_arr", "within a day"),
    ({"tailnum": ""}, "tailnum", "pattern"),
    ({"tailnum": "n123"}, "tailnum", "pattern"),
    ({"tailnum": "-N1"}, "tailnum", "pattern"),
    ({"tailnum": "N12345678901"}, "tailnum", "pattern"),
    ({"user_key": "has space"}, "user_key", "pattern"),
    ({"seats": 3}, "seats", "Extra inputs are not permitted"),
])
def test_the_request_model_refuses_bad_input_naming_the_field(change: dict[str, Any], field: str, says: str) -> None:
    with pytest.raises(ValidationError) as err:
        request(**change)
    (error,) = err.value.errors()
    assert error["loc"] == (field,) and says in error["msg"], error


@pytest.mark.parametrize(("field", "value", "clock"), [
    ("sched_dep", "2013-01-01T24:00", "24:00"),
    ("sched_dep", "2013-01-01T23:60", "23:60"),
    ("sched_arr", "2013-01-01 23:60:00", "23:60:00"),
])
def test_a_time_of_day_past_23_59_is_refused_naming_the_field_and_the_range(field: str, value: str, clock: str) -> None:
    """24:00 and 23:60 passed the naive-ISO pattern, and pydantic then said "unexpected extra characters at the end
    of the input": nothing about the hour or the minute being out of range."""
    with pytest.raises(ValidationError) as err:
        request(**{field: value})
    (error,) = err.value.errors()
    assert error["loc"] == (field,), error
    assert f"{field} has no such time of day ({clock})" in error["msg"], error
    assert "hour must be 00 to 23, the minute (and second) 00 to 59" in error["msg"], error
    assert "extra characters" not in error["msg"]
    assert request(**{field: value[:11] + "23:59"}).model_dump()[field].time() == dt.time(23, 59)  # the edge is taken


def test_the_request_model_takes_every_tail_number_the_raw_suite_does() -> None:
    """A delivered month with a hyphenated registration is trained on (the raw suite allows it), so its replayed
    requests must be scored, not refused with a 422; the tail number is checked by the suite's own pattern."""
    suite = json.loads((WORKLOAD.expectations_dir / "raw_flights.json").read_text())
    (allowed,) = [e["kwargs"]["regex"] for e in suite["expectations"]
                  if e["type"] == "expect_column_values_to_match_regex" and e["kwargs"]["column"] == "tailnum"]
    for tailnum in ("N-123", "N14228", "D942DN", "N1"):
        assert re.match(allowed, tailnum), tailnum
        assert request(tailnum=tailnum).tailnum == tailnum
    # The pattern is written twice (the suite's JSON, the request model): the two must be one.
    field = WORKLOAD.request_model.model_json_schema()["properties"]["tailnum"]
    assert [a["pattern"] for a in field["anyOf"] if "pattern" in a] == [allowed]


def test_the_request_model_refuses_non_finite_numbers_in_json() -> None:
    with pytest.raises(ValidationError) as err:
        WORKLOAD.request_model.model_validate_json(
            '{"carrier": "UA", "flight": NaN, "origin": "EWR", "dest": "LAX", "sched_dep": "2013-01-01T05:15"}')
    assert err.value.errors()[0]["loc"] == ("flight",)


def test_one_request_assembles_to_the_contracts_columns(online: OnlineFeatures,
                                                        lookups: dict[str, dict[str, pa.Table]]) -> None:
    table = online.assemble([request()])
    assert table.schema.names == list(CONTRACT.online_columns)
    assert table.schema.equals(pa.schema([CONTRACT.arrow_schema().field(c) for c in CONTRACT.online_columns]))
    row = table.to_pylist()[0]
    # 05:15 EST is 10:15 UTC; 08:19 PST is 16:19 UTC: six hours and four minutes in the air.
    assert row["time_hour"] == dt.datetime(2013, 1, 1, 10, tzinfo=dt.UTC)
    assert row["sched_block_minutes"] == 364.0
    assert (row["year"], row["month"], row["day"], row["sched_dep_hour"], row["sched_dep_minute_of_day"]) == (
        2013, 1, 1, 5, 315.0)
    assert row["day_of_week"] == 2 and row["tailnum_bucket"] == tailnum_bucket("N0007")  # 2013-01-01: a Tuesday
    jan = lookups[JAN.label]
    plane = jan["planes"].filter(pc.equal(jan["planes"]["tailnum"], "N0007")).to_pylist()[0]
    assert row["plane_seats"] == plane["plane_seats"]
    assert row["plane_age"] == (None if plane["year_built"] is None else 2013.0 - plane["year_built"])
    weather = jan["weather"].filter(pc.and_(pc.equal(jan["weather"]["origin"], "EWR"),
                                            pc.equal(jan["weather"]["time_hour"], row["time_hour"]))).to_pylist()[0]
    assert row["temp"] == weather["temp"] and row["visib"] == weather["visib"]
    route = jan["route_history"].filter(pc.and_(pc.equal(jan["route_history"]["origin"], "EWR"),
                                                pc.equal(jan["route_history"]["dest"], "LAX"))).to_pylist()[0]
    assert row["route_delay_rate"] == route["route_delay_rate"] and row["route_flights"] == route["route_flights"]
    assert row["distance"] == 200.0 + 80.0 * 12  # LAX is the 13th synthetic destination


def test_a_group_without_history_gets_no_flights_and_null_rates(lookups: dict[str, dict[str, pa.Table]]) -> None:
    jan = dict(lookups[JAN.label])
    history = jan["carrier_history"]
    jan["carrier_history"] = history.filter(pc.not_equal(history["carrier"], "UA"))
    row = WORKLOAD.online_features({JAN.label: jan}).assemble([request(sched_arr=None, tailnum=None)]).to_pylist()[0]
    assert row["carrier_flights"] == 0.0 and row["carrier_delay_rate"] is None and row["carrier_mean_delay"] is None
    assert row["sched_block_minutes"] is None and row["plane_age"] is None and row["plane_seats"] is None
    assert row["tailnum_bucket"] == -1  # no tail number: the unknown bucket, as in Spark


def test_a_batch_keeps_request_order_across_months(online: OnlineFeatures) -> None:
    bodies = synthetic_requests(MAR, 40, seed=1) + synthetic_requests(JAN, 40, seed=2)
    requests = [WORKLOAD.request_model.model_validate(b) for b in bodies]
    batch = online.assemble(requests)
    singles = pa.concat_tables([online.assemble([r]) for r in requests])
    assert batch.equals(singles)
    assert batch["month"].to_pylist() == [3] * 40 + [1] * 40
    assert batch["flight"].to_pylist() == [b["flight"] for b in bodies]
    assert batch["temp"].null_count == 0 and batch["route_flights"].null_count == 0


def test_the_spring_forward_day_is_placed_in_real_time(online: OnlineFeatures) -> None:
    # 2013-03-10: New York skips 02:00-03:00. 01:30 EST is 06:30 UTC; 03:30 EDT is 07:30 UTC: one real hour.
    before, after = online.assemble([request(sched_dep="2013-03-10T01:30", sched_arr="2013-03-10T01:30", dest="BOS"),
                                     request(sched_dep="2013-03-10T03:30", sched_arr="2013-03-10T03:30", dest="BOS")
                                     ]).to_pylist()
    assert after["time_hour"] - before["time_hour"] == dt.timedelta(hours=1)
    assert before["sched_block_minutes"] == after["sched_block_minutes"] == 0.0


@pytest.mark.parametrize(("change", "field", "says"), [
    ({"origin": "XXX"}, "origin", "unknown airport 'XXX'"),
    # In the airports table with a time zone, but no flight leaves from it: the model never learnt it.
    ({"origin": "ATL"}, "origin", "no weather or history for ATL in 2013-01: this model scores departures from "
                                  "EWR, JFK, LGA"),
    ({"dest": "ZZZ"}, "dest", "unknown airport 'ZZZ'"),
    ({"carrier": "ZZ"}, "carrier", "unknown carrier 'ZZ'"),
    ({"sched_dep": "2013-02-01T05:15", "sched_arr": None}, "sched_dep",
     "no features are served for 2013-02: this server's lookups cover 2013-01, 2013-03"),
])
def test_what_the_lookups_do_not_know_is_refused_naming_the_field(
    online: OnlineFeatures, change: dict[str, Any], field: str, says: str
) -> None:
    bad = request(**change)
    with pytest.raises(RequestInvalid, match=says) as checked:
        online.check(bad)
    assert checked.value.field == field and checked.value.index is None
    with pytest.raises(RequestInvalid, match=says) as assembled:
        online.assemble([request(), request(), bad])
    assert assembled.value.field == field and assembled.value.index == 2
    assert assembled.value.within("flights[2]").field == f"flights[2].{field}"
    assert isinstance(assembled.value, ValueError)


def test_a_contiguous_range_of_months_is_named_as_a_range() -> None:
    online = WORKLOAD.online_features({m.label: synthetic_lookups(m) for m in (JAN, Partition(2013, 2), MAR)})
    with pytest.raises(RequestInvalid, match="cover 2013-01 to 2013-03; send a flight of those months"):
        online.check(request(sched_dep="2013-04-01T05:15", sched_arr=None))
    assert online.months == ("2013-01", "2013-02", "2013-03")


def test_an_origin_known_by_its_history_alone_is_served_and_one_known_by_neither_is_refused(
    lookups: dict[str, dict[str, pa.Table]]
) -> None:
    """The origins served are those with weather or history: a month missing a station's weather still serves its
    flights (the weather null, as in the Spark job); one with neither is the embedding row training never reached."""
    jan = dict(lookups[JAN.label])
    jan["weather"] = jan["weather"].filter(pc.not_equal(jan["weather"]["origin"], "EWR"))
    row = WORKLOAD.online_features({JAN.label: jan}).assemble([request()]).to_pylist()[0]
    assert row["origin"] == "EWR" and row["temp"] is None and row["route_flights"] is not None
    for name in ("route_history", "origin_hour_history"):
        jan[name] = jan[name].filter(pc.not_equal(jan[name]["origin"], "EWR"))
    with pytest.raises(RequestInvalid, match="no weather or history for EWR in 2013-01: this model scores departures "
                                             "from JFK, LGA") as err:
        WORKLOAD.online_features({JAN.label: jan}).check(request())
    assert err.value.field == "origin"


@pytest.mark.parametrize("zone", ["localtime", "Factory", "ROC"])
def test_an_airport_zone_the_gate_refuses_is_no_zone_online(lookups: dict[str, dict[str, pa.Table]], zone: str) -> None:
    """_zone took any name zoneinfo knows: `localtime` placed EWR's departures in the serving machine's own zone, and
    `Factory` or `ROC`, which the Spark job cannot convert with, were served. Online takes the gate's names only."""
    jan = dict(lookups[JAN.label])
    airports = jan["airports"]
    tzone = [zone if faa == "EWR" else z for faa, z in zip(airports["faa"].to_pylist(), airports["tzone"].to_pylist(),
                                                            strict=True)]
    jan["airports"] = airports.set_column(airports.column_names.index("tzone"), "tzone", pa.array(tzone, pa.string()))
    with pytest.raises(RequestInvalid, match="airport 'EWR' has no time zone in the airports table") as err:
        WORKLOAD.online_features({JAN.label: jan}).check(request())
    assert err.value.field == "origin"
