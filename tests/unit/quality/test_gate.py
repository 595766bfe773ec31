"""The gate on hand-made batches: a good month passes; drifted, stale, malformed and truncated ones are refused,
quarantined, documented and alerted, and nothing is published."""

from __future__ import annotations

import json
import posixpath
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from tenfold.data.ingest import publish_table
from tenfold.data.lake import LakeError, Partition
from tenfold.features.job import FEATURES_TABLE
from tenfold.quality.gate import READ_CHECK, ValidationFailed, validate_partition, validate_published
from tenfold.workloads.flights import WORKLOAD
from tenfold.workloads.flights.sources import read as read_source
from tenfold.workloads.flights.synthetic import synthetic_features

from .conftest import with_column

FEATURES_SUITE = WORKLOAD.features_suite
RAW_SUITE = WORKLOAD.raw_suites["flights"]

MARCH = Partition(2013, 3)


def _quarantine_reason(lake, table, part, attempt) -> dict:
    with lake.fs.open_input_stream(posixpath.join(lake.quarantine_path(table, part, attempt), "_QUARANTINED.json")) as f:
        return json.loads(f.read())


def _docs_page(report) -> Path:
    assert report.data_docs and report.data_docs.startswith("file://")
    return Path(report.data_docs.removeprefix("file://"))


def test_a_good_month_passes_and_stays_staged(settings, lake, stage, alerts, monkeypatch):
    from tenfold.quality import gate

    checked, check = [], gate.check_suite
    monkeypatch.setattr(gate, "check_suite", lambda *a: checked.append(a) or check(*a))
    uri = stage(synthetic_features(MARCH, 24_000, seed=7), MARCH)
    report = validate_partition(settings, FEATURES_TABLE, MARCH, uri, FEATURES_SUITE)
    assert report.success, report.summary()
    assert len(checked) == 1  # the suite is loaded and checked once, before the batch is read (it was twice)
    assert report.rows == 24_000 and report.evaluated > 50 and not report.failures
    assert _docs_page(report).is_file()
    assert str(settings.local.home / "data_docs") in report.data_docs
    assert lake.fs.get_file_info(lake._path(uri)).type.name == "Directory"  # left for publish
    assert not lake.has_manifest(FEATURES_TABLE, MARCH)  # validating never publishes
    assert alerts() == []


@pytest.mark.parametrize("column", ["distance", "sched_block_minutes", "plane_age", "dewp", "pressure"])
def test_a_numeric_feature_a_broken_join_left_all_null_is_refused(settings, stage, alerts, column):
    """GX counts a check over no values as passed: a column left all null (a join that matched nothing, e.g. the
    airports' time zones for sched_block_minutes) passed every expectation, and the month was published."""
    table = synthetic_features(MARCH, 24_000, seed=7)
    broken = with_column(table, column, pa.nulls(table.num_rows, pa.float64()))
    with pytest.raises(ValidationFailed) as caught:
        validate_partition(settings, FEATURES_TABLE, MARCH, stage(broken, MARCH, f"null-{column}"), FEATURES_SUITE)
    assert f"expect_column_values_to_not_be_null({column})" in caught.value.report.failed_expectations


HISTORY_PREFIXES = ("route", "carrier", "origin_hour")
HISTORY_RATES = [f"{p}_{kind}" for p in HISTORY_PREFIXES for kind in ("delay_rate", "mean_delay")]


def _history_matched_nothing(table: pa.Table) -> pa.Table:
    """What a history join that matched no row leaves: every rate null, every flights-per-month 0 (coalesced)."""
    for column in HISTORY_RATES:
        table = with_column(table, column, pa.nulls(table.num_rows, pa.float64()))
    for prefix in HISTORY_PREFIXES:
        table = with_column(table, f"{prefix}_flights", np.zeros(table.num_rows))
    return table


def test_a_month_with_history_whose_history_join_matched_nothing_is_refused(settings, lake, stage, alerts):
    """The six history rates all null and the flights per month all 0 passed all 105 expectations (a range over no
    values passes, an all-null float column is of its type): a month built with a broken history join was published."""
    june = Partition(2013, 6)
    flights = read_source("flights")
    may = flights.filter(pc.equal(flights["month"], 5)).slice(0, 1_000)
    publish_table(lake, "flights", Partition(2013, 5), may, run_id="may", source=WORKLOAD.sources.name)  # its history
    broken = _history_matched_nothing(synthetic_features(june, 24_000, seed=6))
    with pytest.raises(ValidationFailed) as caught:
        validate_partition(settings, FEATURES_TABLE, june, stage(broken, june, "no-history"), FEATURES_SUITE,
                           alert=False, docs=False)
    assert sorted(caught.value.report.failed_expectations) == sorted(
        f"expect_column_values_to_not_be_null({c})" for c in HISTORY_RATES)


def test_the_first_month_has_no_history_so_its_history_aggregates_may_all_be_null(settings, stage):
    """January of the first year has no month before it: its rates are null and its flights 0, rightly."""
    jan = Partition(2013, 1)
    first = _history_matched_nothing(synthetic_features(jan, 24_000, seed=1))
    report = validate_partition(settings, FEATURES_TABLE, jan, stage(first, jan), FEATURES_SUITE, alert=False,
                                docs=False)
    assert report.success, report.summary()


# Names a column of the suite's own (so the suite loads), in a zone pandas does not know: it raises in every validation.
BROKEN_CONDITION = 'time_hour.dt.tz_convert("America/New_Yrok").dt.hour == 5'


def _features_suite_with_a_broken_condition(tmp_path: Path, monkeypatch) -> Path:
    """The features suite copied to ``tmp_path``, arr_delay's range given BROKEN_CONDITION, as the workload's suite."""
    import dataclasses

    from tenfold.quality import gate

    body = json.loads((WORKLOAD.expectations_dir / f"{FEATURES_SUITE}.json").read_text())
    (arr_delay,) = [e for e in body["expectations"]
                    if e["type"] == "expect_column_values_to_be_between" and e["kwargs"]["column"] == "arr_delay"]
    arr_delay["kwargs"] |= {"row_condition": BROKEN_CONDITION, "condition_parser": "pandas"}
    path = tmp_path / f"{FEATURES_SUITE}.json"
    path.write_text(json.dumps(body))
    monkeypatch.setattr(gate, "get_workload", lambda settings: dataclasses.replace(WORKLOAD, expectations_dir=tmp_path))
    return path


def test_an_expectation_the_suite_gets_wrong_withdraws_nothing_and_names_the_suite(settings, lake, stage, alerts,
                                                                                    tmp_path, monkeypatch):
    """GX catches what pandas raises on a row_condition and reports the expectation failed: the gate took that for bad
    data, withdrew a good published month to quarantine (and, in ingest, its history months) and said to fix the
    input. The suite is at fault: it is named, and nothing moves."""
    from tenfold.quality.suites import SuiteError

    path = _features_suite_with_a_broken_condition(tmp_path, monkeypatch)
    good = synthetic_features(MARCH, 24_000, seed=7)
    publish_table(lake, FEATURES_TABLE, MARCH, good, run_id="good", source=WORKLOAD.sources.name)
    with pytest.raises(SuiteError) as caught:
        validate_published(lake, FEATURES_TABLE, MARCH, FEATURES_SUITE, settings=settings, key="k1")
    message = str(caught.value)
    assert message.startswith(f"{path}: ") and "\n" not in message
    assert "expect_column_values_to_be_between(arr_delay)" in message and "New_Yrok" in message
    assert caught.value.retryable is False
    assert lake.has_manifest(FEATURES_TABLE, MARCH)  # still published
    assert not lake.exists(lake.quarantine_path(FEATURES_TABLE, MARCH, "k1"))
    assert alerts() == []  # the task's failure callback alerts the error, once
    # A staged batch stays staged, for a run once the suite is fixed.
    uri = stage(good, MARCH, "suite-at-fault")
    with pytest.raises(SuiteError):
        validate_partition(settings, FEATURES_TABLE, MARCH, uri, FEATURES_SUITE, docs=False)
    assert lake.exists(lake._path(uri))
    assert not lake.exists(lake.quarantine_path(FEATURES_TABLE, MARCH, "suite-at-fault"))
    # Bad data as well: refused as ever, and the suite's error is named beside the data's failures.
    distance = good["distance"].to_numpy().copy()
    distance[:40] = -500.0
    uri = stage(with_column(good, "distance", distance), MARCH, "both-at-fault")
    with pytest.raises(ValidationFailed) as refused:
        validate_partition(settings, FEATURES_TABLE, MARCH, uri, FEATURES_SUITE, alert=False, docs=False)
    assert sorted(refused.value.report.failed_expectations) == ["expect_column_values_to_be_between(arr_delay)",
                                                                "expect_column_values_to_be_between(distance)"]
    assert ("The suite is at fault too: Great Expectations could not evaluate "
            f"expect_column_values_to_be_between(arr_delay); fix it in {FEATURES_SUITE}.json.") in str(refused.value)


def test_an_unknown_suite_is_refused_once_not_first_as_a_data_docs_failure(settings, lake, stage, alerts, caplog):
    """A suite that cannot be loaded failed first inside the Data Docs attempt: a warning said validating with Data
    Docs failed and that it would validate again without them, before the real error. It is one refusal now, naming
    the suites there, and the batch stays staged."""
    import logging

    from tenfold.quality.suites import SuiteError

    uri = stage(synthetic_features(MARCH, 2_000, seed=7), MARCH, "unknown-suite")
    with caplog.at_level(logging.WARNING), pytest.raises(SuiteError) as caught:
        validate_partition(settings, FEATURES_TABLE, MARCH, uri, "nosuch")
    message = str(caught.value)
    assert message.startswith("suite 'nosuch' does not exist: ") and "\n" not in message
    assert FEATURES_SUITE in message and RAW_SUITE in message  # the suites that exist
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
    assert lake.exists(lake._path(uri)) and alerts() == []


def test_an_unreadable_batch_validated_with_an_unknown_suite_is_refused_for_the_suite_not_quarantined(
        settings, lake, stage, alerts):
    """The suite was checked only once the batch had been read: an unreadable batch named with a suite that does not
    exist was quarantined and alerted as unreadable, for what was a mistake in the suite's name."""
    from tenfold.quality.suites import SuiteError

    uri = stage(synthetic_features(MARCH, 2_000, seed=7), MARCH, "unknown-suite-unreadable")
    folder = lake._path(uri)
    for info in lake.fs.get_file_info(pafs.FileSelector(folder)):
        with lake.fs.open_output_stream(info.path) as out:
            out.write(b"not parquet")
    with pytest.raises(SuiteError, match=r"^suite 'nosuch' does not exist: "):
        validate_partition(settings, FEATURES_TABLE, MARCH, uri, "nosuch")
    assert lake.exists(folder) and alerts() == []
    assert not lake.exists(lake.quarantine_path(FEATURES_TABLE, MARCH, "unknown-suite-unreadable"))


def test_a_wind_glitch_the_raw_suite_let_through_at_a_busy_hour_passes_the_features_suite(settings, stage, alerts):
    """raw_weather tolerates 0.1% of a month's station-hours out of range (a known 1,048 mph sensor error); every
    flight of that origin and hour copies it. Two such hours at the busiest origin-hour of 2013 were 76 flights, over
    the features suite's 0.1% of a month: the month was refused after Spark had built it, for weather that passed."""
    import pyarrow.compute as pc

    from tenfold.quality.suites import load_suite_dict
    from tenfold.workloads.flights import WORKLOAD
    from tenfold.workloads.flights.sources import read

    raw = next(e["kwargs"] for e in load_suite_dict("raw_weather", WORKLOAD.expectations_dir)["expectations"]
               if e["type"] == "expect_column_values_to_be_between" and e["kwargs"]["column"] == "wind_speed")
    weather = read("weather")
    hours = max(pc.sum(pc.equal(weather["month"], m)).as_py() for m in range(1, 13)) * (1 - raw["mostly"])
    flights = read("flights").group_by(["origin", "time_hour"]).aggregate([([], "count_all")])
    glitched = int(hours) * pc.max(flights["count_all"]).as_py()
    assert glitched >= 60  # 2 station-hours x 38 flights on the 2013 data
    table = synthetic_features(MARCH, 24_000, seed=7)
    wind = table["wind_speed"].to_numpy(zero_copy_only=False).copy()
    wind[:glitched] = 1048.0
    report = validate_partition(settings, FEATURES_TABLE, MARCH,
                                stage(with_column(table, "wind_speed", wind), MARCH, "glitch"), FEATURES_SUITE)
    assert report.success, report.summary()
    wind[:1_000] = 1048.0  # not a glitch: a wrong unit or a broken join on 4% of the month
    with pytest.raises(ValidationFailed) as caught:
        validate_partition(settings, FEATURES_TABLE, MARCH, stage(with_column(table, "wind_speed", wind), MARCH,
                                                                  "wrong-wind"), FEATURES_SUITE)
    assert "expect_column_values_to_be_between(wind_speed)" in caught.value.report.failed_expectations


def test_a_negative_block_time_is_refused(settings, stage, alerts):
    """Arrival minus departure, an overnight arrival wrapped to the next day, is never negative: a transform that
    lost the wrap passed the range of -1440..1440."""
    table = synthetic_features(MARCH, 24_000, seed=7)
    block = table["sched_block_minutes"].to_numpy(zero_copy_only=False).copy()
    block[:30] = -block[:30] - 1
    with pytest.raises(ValidationFailed) as caught:
        validate_partition(settings, FEATURES_TABLE, MARCH, stage(with_column(table, "sched_block_minutes", block),
                                                                  MARCH, "negative-block"), FEATURES_SUITE)
    assert "expect_column_values_to_be_between(sched_block_minutes)" in caught.value.report.failed_expectations


def test_a_drifted_batch_is_refused_naming_the_expectations(settings, lake, stage, alerts, monkeypatch):
    table = synthetic_features(MARCH, 24_000, seed=7)
    rng = np.random.default_rng(1)
    late = (rng.random(table.num_rows) < 0.9).astype(np.int32)
    drifted = with_column(table, "label", np.maximum(table["label"].to_numpy(), late))  # label rate ~90%
    distance = table["distance"].to_numpy().copy()
    distance[:40] = -500.0  # out of range
    humid = table["humid"].to_numpy().copy()
    humid[100:103] = 250.0
    drifted = with_column(with_column(drifted, "distance", distance), "humid", humid)
    uri = stage(drifted, MARCH, "drift1")

    with pytest.raises(ValidationFailed) as caught:
        validate_partition(settings, FEATURES_TABLE, MARCH, uri, FEATURES_SUITE)

    report = caught.value.report
    assert sorted(report.failed_expectations) == [
        "expect_column_mean_to_be_between(label)",
        "expect_column_values_to_be_between(distance)",
        "expect_column_values_to_be_between(humid)",
    ]
    message = str(caught.value)
    assert "expect_column_mean_to_be_between(label)" in message and "Nothing was published" in message
    label = next(o for o in report.failures if o.column == "label")
    assert label.observed > 0.8
    assert next(o for o in report.failures if o.column == "distance").unexpected_count == 40
    # quarantined with the reason, staging gone, nothing published, docs written, one alert
    reason = _quarantine_reason(lake, FEATURES_TABLE, MARCH, "drift1")
    assert sorted(reason["failed_expectations"]) == sorted(report.failed_expectations)
    assert report.quarantine_uri.endswith("quarantine/features/year=2013/month=3/drift1")
    assert lake.fs.get_file_info(lake._path(uri)).type.name == "NotFound"
    assert lake.fs.get_file_info(lake.quarantine_path(FEATURES_TABLE, MARCH, "drift1") + "/part-00000.parquet").size > 0
    assert not lake.has_manifest(FEATURES_TABLE, MARCH)
    assert _docs_page(report).is_file()
    (alert,) = alerts()
    assert "features 2013-03" in alert["title"] and "expect_column_mean_to_be_between(label)" in alert["details"]["failed"]
    assert caught.value.alerted
    # validating the refused batch again keeps the first verdict instead of quarantining "nothing"
    with pytest.raises(LakeError, match="already refused") as again:
        validate_partition(settings, FEATURES_TABLE, MARCH, uri, FEATURES_SUITE)
    # ... and the cleared task's failure is not alerted a second time (its first verdict was)
    from types import SimpleNamespace

    from tenfold.monitoring.alerts import airflow_failure_callback

    ti = SimpleNamespace(dag_id="build_features", task_id="validate", run_id="r", try_number=2)
    monkeypatch.setattr("tenfold.config.get_settings", lambda env=None: settings)
    airflow_failure_callback({"task_instance": ti, "exception": again.value})
    assert len(alerts()) == 1
    assert sorted(_quarantine_reason(lake, FEATURES_TABLE, MARCH, "drift1")["failed_expectations"]) == sorted(report.failed_expectations)


def test_a_refusal_whose_data_docs_cannot_be_written_is_still_quarantined_and_alerted(settings, lake, stage, alerts):
    """A Data Docs error (its folder unwritable here; in the cloud its bucket refusing or away) escaped as the task's
    error: the refused batch stayed staged, nothing was alerted, and the retry met the same error."""
    from tenfold.quality.gate import data_docs_location

    docs = Path(data_docs_location(settings))
    docs.parent.mkdir(parents=True, exist_ok=True)
    docs.write_text("a file where the Data Docs folder goes")  # a real fault: mkdir and every write fail
    bad = synthetic_features(MARCH, 24_000, seed=7)
    distance = bad["distance"].to_numpy().copy()
    distance[:40] = -500.0
    uri = stage(with_column(bad, "distance", distance), MARCH, "nodocs")
    with pytest.raises(ValidationFailed) as caught:
        validate_partition(settings, FEATURES_TABLE, MARCH, uri, FEATURES_SUITE)
    assert caught.value.report.failed_expectations == ["expect_column_values_to_be_between(distance)"]
    assert caught.value.report.data_docs is None
    assert lake.fs.get_file_info(lake._path(uri)).type.name == "NotFound"  # quarantined
    assert _quarantine_reason(lake, FEATURES_TABLE, MARCH, "nodocs")["failed_expectations"] == [
        "expect_column_values_to_be_between(distance)"]
    (alert,) = alerts()
    assert caught.value.alerted and "features 2013-03" in alert["title"]


def test_a_stale_or_short_month_fails_freshness(settings, stage):
    table = synthetic_features(MARCH, 24_000, seed=7)
    # the batch stops on the 28th, and a few rows are stamped a month late
    short = table.filter(pc.less_equal(table["day"], 28))
    late = short["time_hour"].to_pylist()
    late[:5] = [t.replace(month=4) for t in late[:5]]
    stale = with_column(short, "time_hour", pa.array(late, pa.timestamp("us", tz="UTC")))
    uri = stage(stale, MARCH, "stale1")
    with pytest.raises(ValidationFailed) as caught:
        validate_partition(settings, FEATURES_TABLE, MARCH, uri, FEATURES_SUITE, alert=False, docs=False)
    assert sorted(caught.value.report.failed_expectations) == [
        "expect_column_distinct_values_to_equal_set(day)",
        "expect_column_values_to_be_between(time_hour)",
    ]
    assert not caught.value.alerted


def test_duplicated_rows_and_a_broken_label_contract_fail(settings, stage):
    table = synthetic_features(MARCH, 24_000, seed=7)
    twice = pa.concat_tables([table, table.slice(0, 300)])  # a retry that appended instead of overwriting
    cancelled = twice["cancelled"].to_numpy(zero_copy_only=False).copy()
    label = twice["label"].to_numpy().copy()
    cancelled[1000:1010], label[1000:1010] = True, 0  # cancelled yet labelled on time
    broken = with_column(with_column(twice, "cancelled", cancelled), "label", label)
    uri = stage(broken, MARCH, "dup1")
    with pytest.raises(ValidationFailed) as caught:
        validate_partition(settings, FEATURES_TABLE, MARCH, uri, FEATURES_SUITE, alert=False, docs=False)
    assert sorted(caught.value.report.failed_expectations) == [
        "expect_column_pair_values_to_be_in_set",
        "expect_compound_columns_to_be_unique",
    ]
    dup = next(o for o in caught.value.report.failures if o.expectation == "expect_compound_columns_to_be_unique")
    assert dup.unexpected_count == 600  # both copies of each of the 300 duplicated rows


def test_a_truncated_staged_file_is_refused(settings, lake, stage, alerts):
    uri = stage(synthetic_features(MARCH, 21_000, seed=7), MARCH, "trunc1")
    path = lake._path(uri) + "/part-00000.parquet"
    data = Path(path).read_bytes()
    Path(path).write_bytes(data[: len(data) // 2])
    with pytest.raises(ValidationFailed) as caught:
        validate_partition(settings, FEATURES_TABLE, MARCH, uri, FEATURES_SUITE)
    report = caught.value.report
    assert report.failed_expectations == [READ_CHECK]
    assert "Parquet" in report.failures[0].error or "parquet" in report.failures[0].error
    assert _quarantine_reason(lake, FEATURES_TABLE, MARCH, "trunc1")["failed_expectations"] == [READ_CHECK]
    assert not lake.has_manifest(FEATURES_TABLE, MARCH)
    assert len(alerts()) == 1


def test_a_refusal_whose_alert_was_not_delivered_is_alerted_by_the_failure_callback(
    settings, lake, stage, alerts, flaky_webhook, monkeypatch
):
    """The refusal said alerted=True whatever its webhook did, so the task's failure callback stayed quiet and a
    webhook down for the gate's three tries lost the page."""
    from types import SimpleNamespace

    from tenfold.monitoring.alerts import airflow_failure_callback

    paged = flaky_webhook.on(settings)
    uri = stage(synthetic_features(MARCH, 2_000, seed=7), MARCH, "undelivered")
    path = lake._path(uri) + "/part-00000.parquet"
    Path(path).write_bytes(Path(path).read_bytes()[:100])
    flaky_webhook.failures = 3
    with pytest.raises(ValidationFailed) as caught:
        validate_partition(paged, FEATURES_TABLE, MARCH, uri, FEATURES_SUITE)
    assert flaky_webhook.tries == 3 and not flaky_webhook.received and len(alerts()) == 1
    assert not caught.value.alerted
    monkeypatch.setattr("tenfold.config.get_settings", lambda env=None: paged)
    ti = SimpleNamespace(dag_id="build_features", task_id="validate", run_id="r", try_number=1)
    airflow_failure_callback({"task_instance": ti, "exception": caught.value})
    (page,) = flaky_webhook.received
    assert "build_features.validate failed" in page["text"] and READ_CHECK in page["text"]
    # Only the hook that missed it: the file (and the log, which pages in the cloud) took the refusal's own alert,
    # and the callback sent it to every hook again.
    assert caught.value.undelivered == ("webhook",) and len(alerts()) == 1


@pytest.fixture(scope="module")
def january_flights() -> pa.Table:
    flights = read_source("flights")
    return flights.filter(pc.equal(flights["month"], 1))


def _publish_without_carriers(lake, part, flights, rows):
    """Publish ``flights`` as run "bad" with the carrier (a key column) missing from its first ``rows`` rows."""
    bad = flights.to_pylist()
    for row in bad[:rows]:
        row["carrier"] = None
    publish_table(lake, "flights", part, pa.Table.from_pylist(bad, schema=flights.schema), run_id="bad",
                  source=WORKLOAD.sources.name)


def test_real_raw_flights_pass_and_malformed_rows_are_unpublished(settings, lake, alerts, january_flights):
    jan = Partition(2013, 1)
    publish_table(lake, "flights", jan, january_flights, run_id="good", source=WORKLOAD.sources.name)
    assert validate_published(lake, "flights", jan, RAW_SUITE, settings=settings, key="k0", docs=False).success

    bad = january_flights.to_pylist()
    for row in bad[:25]:
        row["carrier"] = None  # a key column missing
    for row in bad[25:50]:
        row["origin"], row["dep_time"] = "XXX", 9999  # not a New York airport, not a clock time
    publish_table(lake, "flights", jan, pa.Table.from_pylist(bad, schema=january_flights.schema), run_id="bad", source=WORKLOAD.sources.name)
    assert lake.has_manifest("flights", jan)

    with pytest.raises(ValidationFailed) as caught:
        validate_published(lake, "flights", jan, RAW_SUITE, settings=settings, key="k1")
    assert sorted(caught.value.report.failed_expectations) == [
        "expect_column_values_to_be_in_set(dep_time)",
        "expect_column_values_to_be_in_set(origin)",
        "expect_column_values_to_not_be_null(carrier)",
    ]
    # The month was published (readers used it): the refusal says it was withdrawn, not "Nothing was published".
    message = str(caught.value)
    assert "Nothing was published" not in message
    assert ("The published partition was withdrawn (its manifest removed: readers no longer see it) and quarantined "
            f"at {lake.uri_of(lake.quarantine_path('flights', jan, 'k1'))}. What was built from it before read it as "
            "it was then; rebuild that too once the month is fixed.") in message
    assert "change it in raw_flights.json" in message  # a bound may be what is wrong
    # unpublished: no reader can see the bad rows; the data and the old manifest are kept for triage
    assert not lake.has_manifest("flights", jan)
    reason = _quarantine_reason(lake, "flights", jan, "k1")
    assert json.loads(reason["manifest"])["run_id"] == "bad"
    quarantined = lake.quarantine_path("flights", jan, "k1")
    assert any(i.base_name.endswith(".parquet") for i in lake.fs.get_file_info(pa.fs.FileSelector(quarantined)))
    assert "flights 2013-01" in alerts()[0]["title"]


def test_a_truncated_published_file_is_caught_before_reading(settings, lake, january_flights):
    jan = Partition(2013, 1)
    publish_table(lake, "flights", jan, january_flights.slice(0, 1000), run_id="r", source=WORKLOAD.sources.name)
    (path,) = lake.files("flights", jan)
    with lake.fs.open_output_stream(path) as out:
        out.write(b"PAR1")
    with pytest.raises(ValidationFailed, match="wrong size") as caught:
        validate_published(lake, "flights", jan, RAW_SUITE, settings=settings, key="k2", alert=False)
    assert caught.value.report.failed_expectations == [READ_CHECK]
    assert not lake.has_manifest("flights", jan)
    # files that cannot be read failed no bound: the suite is not what to change
    assert "The published partition was withdrawn" in str(caught.value)
    assert "if a bound is wrong" not in str(caught.value)


def test_a_pass_is_trusted_only_for_the_same_bytes_and_suite(settings, lake, alerts, january_flights, monkeypatch):
    """A month that passed is not validated again (it is read as history by every later month's job), but only
    while its files match their checksums and the suite and GX are those of the pass."""
    from tenfold.quality import gate

    jan = Partition(2013, 1)
    publish_table(lake, "flights", jan, january_flights, run_id="r", source=WORKLOAD.sources.name)
    first = validate_published(lake, "flights", jan, RAW_SUITE, settings=settings, key="v0", docs=False)
    assert first.success and first.evaluated > 0 and first.rows == january_flights.num_rows

    suites_run = []
    real_run_suite = gate.run_suite

    def counting(*args, **kwargs):
        suites_run.append(kwargs["part"].label)
        return real_run_suite(*args, **kwargs)

    monkeypatch.setattr(gate, "run_suite", counting)
    again = validate_published(lake, "flights", jan, RAW_SUITE, settings=settings, key="v1", docs=False)
    assert suites_run == [] and (again.success, again.evaluated, again.rows) == (True, first.evaluated, first.rows)

    # An edited suite is a different verdict: it runs again.
    real_load = gate.load_suite_dict

    def edited(name, root):
        body = real_load(name, root)
        return {**body, "meta": {**body.get("meta", {}), "edited": True}}

    monkeypatch.setattr(gate, "load_suite_dict", edited)
    assert validate_published(lake, "flights", jan, RAW_SUITE, settings=settings, key="v2", docs=False).success
    assert suites_run == ["2013-01"]
    monkeypatch.setattr(gate, "load_suite_dict", real_load)

    # Bytes changed in place at the same size: the checksum refuses them; the recorded pass is never consulted.
    (path,) = lake.files("flights", jan)
    data = bytearray(Path(path).read_bytes())
    data[len(data) // 2] ^= 0xFF
    Path(path).write_bytes(bytes(data))
    with pytest.raises(ValidationFailed, match="CRC32C") as caught:
        validate_published(lake, "flights", jan, RAW_SUITE, settings=settings, key="v3", alert=False)
    assert caught.value.report.failed_expectations == [READ_CHECK] and not lake.has_manifest("flights", jan)

    # New content republished under the month: a verdict of its own, so the suite runs and refuses the bad rows.
    _publish_without_carriers(lake, jan, january_flights, 10)
    with pytest.raises(ValidationFailed) as caught:
        validate_published(lake, "flights", jan, RAW_SUITE, settings=settings, key="v4", alert=False)
    assert caught.value.report.failed_expectations == ["expect_column_values_to_not_be_null(carrier)"]
    assert suites_run == ["2013-01", "2013-01"]


_KILLED_WHILE_QUARANTINING = r"""
import os, posixpath, signal, sys
import pyarrow.fs as pafs
from tenfold.config import get_settings
from tenfold.data.lake import Lake, Partition
from tenfold.quality.gate import validate_partition

moved = []


def move_tree(self, source, dest):
    # As on GCS, a refused batch moves object by object: SIGKILLed after the first file.
    for info in sorted(self.fs.get_file_info(pafs.FileSelector(source)), key=lambda i: i.path):
        if info.base_name.endswith(".parquet"):
            self.fs.create_dir(dest, recursive=True)
            self.fs.move(info.path, posixpath.join(dest, info.base_name))
            os.kill(os.getpid(), signal.SIGKILL)


Lake._move_tree = move_tree
table, month, uri, suite = sys.argv[1:5]
validate_partition(get_settings(), table, Partition.parse(month), uri, suite)
"""


def test_a_refusal_killed_while_it_quarantines_is_finished_by_the_retry_never_validated_again(
    settings, lake, stage, alerts
):
    """On GCS a refused batch moves to quarantine file by file. A task killed midway left the rest staged, and the
    retry validated that remainder (the bad rows had gone with the first file) and passed it on to publish."""
    import os
    import signal
    import subprocess
    import sys

    from tenfold.local.env import settings_env
    from tenfold.quality.gate import AlreadyRefused

    table = synthetic_features(MARCH, 28_000, seed=7)
    distance = table["distance"].to_numpy().copy()
    distance[:40] = -500.0  # out of range, all in the first file
    bad = with_column(table, "distance", distance)
    uri = stage(bad.slice(0, 7_000), MARCH, "killed1")
    for i in (1, 2, 3):
        pq.write_table(bad.slice(7_000 * i, 7_000), f"{lake._path(uri)}/part-{i:05d}.parquet", filesystem=lake.fs)
    child = subprocess.run([sys.executable, "-c", _KILLED_WHILE_QUARANTINING, FEATURES_TABLE, MARCH.label, uri,
                            FEATURES_SUITE], capture_output=True, text=True, timeout=300,
                           env={**os.environ, **settings_env(settings)})
    assert child.returncode == -signal.SIGKILL, child.stderr[-3000:]
    left = sorted(i.base_name for i in lake.fs.get_file_info(pafs.FileSelector(lake._path(uri))))
    assert "part-00000.parquet" not in left and len([n for n in left if n.endswith(".parquet")]) == 3
    assert alerts() == []  # killed before it alerted

    with pytest.raises(AlreadyRefused, match=r"expect_column_values_to_be_between\(distance\).*cut short and is now "
                                             r"finished at") as caught:
        validate_partition(settings, FEATURES_TABLE, MARCH, uri, FEATURES_SUITE)
    assert caught.value.alerted, "the task's failure callback would alert a second time"
    quarantine = lake.quarantine_path(FEATURES_TABLE, MARCH, "killed1")
    held = sorted(i.base_name for i in lake.fs.get_file_info(pafs.FileSelector(quarantine)))
    assert held == ["_ALERTED.json", "_QUARANTINED.json", "part-00000.parquet", "part-00001.parquet",
                    "part-00002.parquet", "part-00003.parquet"]
    assert "expect_column_values_to_be_between(distance)" in _quarantine_reason(lake, FEATURES_TABLE, MARCH,
                                                                                 "killed1")["failed_expectations"]
    assert lake.fs.get_file_info(lake._path(uri)).type.name == "NotFound"
    assert [a["title"] for a in alerts()] == [f"Quality gate refused {FEATURES_TABLE} {MARCH.label}"]
    with pytest.raises(AlreadyRefused, match="already refused") as again:  # cleared once more: not alerted again
        validate_partition(settings, FEATURES_TABLE, MARCH, uri, FEATURES_SUITE)
    assert again.value.alerted and len(alerts()) == 1


_KILLED_WHILE_ALERTING = r"""
import os, signal, sys
from tenfold.config import get_settings
from tenfold.data.lake import Partition
from tenfold.quality import gate


def send_alert(*args, **kwargs):
    # The batch is in quarantine with its reason: SIGKILLed while the alert hooks retried (an eviction, a timeout).
    os.kill(os.getpid(), signal.SIGKILL)


gate.send_alert = send_alert
table, month, uri, suite = sys.argv[1:5]
gate.validate_partition(get_settings(), table, Partition.parse(month), uri, suite)
"""


def test_a_refusal_killed_while_it_alerts_is_alerted_by_the_retry_once(settings, lake, stage, alerts):
    """The batch was quarantined, then the task was killed while its alert hooks retried: the retry found the
    verdict in quarantine and raised AlreadyRefused as alerted, so the failure callback stayed silent and nobody
    heard of the refused batch."""
    import os
    import signal
    import subprocess
    import sys

    from tenfold.local.env import settings_env
    from tenfold.quality.gate import AlreadyRefused

    distance = synthetic_features(MARCH, 7_000, seed=7)["distance"].to_numpy().copy()
    distance[:40] = -500.0
    uri = stage(with_column(synthetic_features(MARCH, 7_000, seed=7), "distance", distance), MARCH, "killed2")
    child = subprocess.run([sys.executable, "-c", _KILLED_WHILE_ALERTING, FEATURES_TABLE, MARCH.label, uri,
                            FEATURES_SUITE], capture_output=True, text=True, timeout=300,
                           env={**os.environ, **settings_env(settings)})
    assert child.returncode == -signal.SIGKILL, child.stderr[-3000:]
    assert alerts() == [] and "_QUARANTINED.json" in _quarantine_files(lake, "killed2")
    assert _quarantine_reason(lake, FEATURES_TABLE, MARCH, "killed2")["alert"] == "due"

    with pytest.raises(AlreadyRefused, match="already refused") as retried:
        validate_partition(settings, FEATURES_TABLE, MARCH, uri, FEATURES_SUITE)
    assert retried.value.alerted and retried.value.undelivered == ()
    sent = alerts()
    assert [a["title"] for a in sent] == [f"Quality gate refused {FEATURES_TABLE} {MARCH.label}"]
    assert "expect_column_values_to_be_between(distance)" in sent[0]["details"]["failed"]
    with pytest.raises(AlreadyRefused):  # cleared again: the record says it went out
        validate_partition(settings, FEATURES_TABLE, MARCH, uri, FEATURES_SUITE)
    assert len(alerts()) == 1


def test_a_refusal_that_owed_no_alert_is_not_alerted_by_a_clear(settings, lake, stage, alerts):
    """A batch refused without alerts (alert=False: `tenfold quality`-style checks), or by a version that kept no
    record of its alert, was alerted by the first clear after this change, with a note that its run had been killed."""
    from tenfold.quality.gate import ALERTED, AlreadyRefused, ValidationFailed

    distance = synthetic_features(MARCH, 7_000, seed=7)["distance"].to_numpy().copy()
    distance[:40] = -500.0
    uri = stage(with_column(synthetic_features(MARCH, 7_000, seed=7), "distance", distance), MARCH, "quiet1")
    with pytest.raises(ValidationFailed):
        validate_partition(settings, FEATURES_TABLE, MARCH, uri, FEATURES_SUITE, alert=False)
    assert "alert" not in _quarantine_reason(lake, FEATURES_TABLE, MARCH, "quiet1")
    assert ALERTED not in _quarantine_files(lake, "quiet1")
    with pytest.raises(AlreadyRefused):
        validate_partition(settings, FEATURES_TABLE, MARCH, uri, FEATURES_SUITE)
    assert alerts() == []


def _quarantine_files(lake, attempt: str) -> list[str]:
    folder = lake.quarantine_path(FEATURES_TABLE, MARCH, attempt)
    return sorted(i.base_name for i in lake.fs.get_file_info(pafs.FileSelector(folder)))


def test_a_month_refused_by_two_validations_at_once_is_withdrawn_once_and_alerted_once(
    settings, lake, alerts, january_flights, monkeypatch
):
    """Two runs of the same month refuse it together: the first withdraws it; the second used to fail with 'never
    published, run the pipeline first' (retryable), and its retry re-ingested and re-published the refused bytes."""
    from tenfold.quality import gate
    from tenfold.quality.gate import AlreadyRefused, unpublish_to_quarantine

    jan = Partition(2013, 1)
    _publish_without_carriers(lake, jan, january_flights, 25)
    checked = gate._check_published

    def and_the_other_run_withdraws_it(*args, **kwargs):
        report = checked(*args, **kwargs)
        unpublish_to_quarantine(lake, "flights", jan, "other-run", report.to_dict())  # the other run got there first
        return report

    monkeypatch.setattr(gate, "_check_published", and_the_other_run_withdraws_it)
    with pytest.raises(AlreadyRefused, match="withdrawn meanwhile by another run \\(a validation of the same month"):
        validate_published(lake, "flights", jan, RAW_SUITE, settings=settings, key="this-run", docs=False)
    assert not lake.has_manifest("flights", jan) and alerts() == []  # the other run alerts for it


def test_a_second_refusal_under_the_same_attempt_killed_before_its_reason_is_finished_by_the_retry(
    settings, lake, stage, alerts
):
    """A cleared run refused again goes to <attempt>-2. Killed after the move and before the reason was written, the
    retry looked for the unfinished refusal in <attempt> only: it said "already refused" there (the first verdict,
    not alerted again), and the second refusal was never finished nor alerted."""
    from tenfold.data.lake import REFUSING
    from tenfold.quality.gate import AlreadyRefused

    first = stage(synthetic_features(MARCH, 100, seed=1), MARCH, "twice")
    lake.quarantine(FEATURES_TABLE, MARCH, first, "twice", {"failed_expectations": ["first verdict"]})
    second = stage(synthetic_features(MARCH, 100, seed=2), MARCH, "twice")
    dest = lake.quarantine_path(FEATURES_TABLE, MARCH, "twice-2")
    lake.write_json(f"{lake._path(second)}/{REFUSING}",
                    {"quarantine": dest, "reason": {"failed_expectations": ["second verdict"], "suite": "features"}})
    lake._move_tree(lake._path(second), dest)  # moved whole, the task killed before the reason file
    assert alerts() == []

    with pytest.raises(AlreadyRefused, match=r"\(second verdict\).*cut short and is now finished at .*twice-2"):
        validate_partition(settings, FEATURES_TABLE, MARCH, second, FEATURES_SUITE)
    assert _quarantine_reason(lake, FEATURES_TABLE, MARCH, "twice-2")["failed_expectations"] == ["second verdict"]
    assert [a["title"] for a in alerts()] == [f"Quality gate refused {FEATURES_TABLE} {MARCH.label}"]
    # Cleared again: "already refused", pointing at that second verdict, not the first
    with pytest.raises(AlreadyRefused, match=r"already refused and quarantined at .*/twice-2 \(see"):
        validate_partition(settings, FEATURES_TABLE, MARCH, second, FEATURES_SUITE)


_KILLED_AFTER_THE_MANIFEST = r"""
import os, signal, sys
import pyarrow.fs as pafs
from tenfold.config import get_settings
from tenfold.data.lake import MANIFEST, Lake, Partition
from tenfold.quality.gate import validate_published


class KilledAfterTheManifest(pafs.LocalFileSystem):
    def delete_file(self, path):
        super().delete_file(path)
        if path.endswith("/" + MANIFEST):
            # The refused month's manifest is gone: SIGKILLed before its folder moves (an eviction, the OOM killer).
            os.kill(os.getpid(), signal.SIGKILL)


settings = get_settings()
lake = Lake.from_settings(settings)
lake.fs = KilledAfterTheManifest()
table, month, suite, key = sys.argv[1:5]
validate_published(lake, table, Partition.parse(month), suite, key=key, settings=settings, docs=False)
"""


def test_a_withdrawal_killed_after_it_removed_the_manifest_leaves_the_refused_batch_to_quarantine(
        settings, lake, alerts, january_flights):
    """The gate removed a refused month's manifest, then moved its data folder to quarantine. Killed in between (an
    eviction, the OOM killer), the folder said nothing of its refusal: the month's next publish (a backfill, an ingest
    re-run) deleted it as an earlier publish's leftover, and the refused rows and the reason (the manifest's text was
    only in memory) were lost."""
    import os
    import signal
    import subprocess
    import sys

    from tenfold.data.lake import REFUSING
    from tenfold.local.env import settings_env

    jan = Partition(2013, 1)
    _publish_without_carriers(lake, jan, january_flights, 25)
    refused = posixpath.join(lake.partition_path("flights", jan), lake.read_manifest("flights", jan).data_dir)
    # An earlier refusal under the same key (a cleared run): this one goes to k-killed-2, where the mark must point.
    lake.write_json(posixpath.join(lake.quarantine_path("flights", jan, "k-killed"), "_QUARANTINED.json"),
                    {"why": "an earlier refusal"})
    child = subprocess.run([sys.executable, "-c", _KILLED_AFTER_THE_MANIFEST, "flights", jan.label, RAW_SUITE,
                            "k-killed"], capture_output=True, text=True, timeout=300,
                           env={**os.environ, **settings_env(settings)})
    assert child.returncode == -signal.SIGKILL, child.stderr[-3000:]
    assert not lake.has_manifest("flights", jan) and alerts() == []
    rows = sorted(i.base_name for i in lake.fs.get_file_info(pafs.FileSelector(refused)) if i.base_name != REFUSING)
    assert any(n.endswith(".parquet") for n in rows)  # killed before the folder moved

    publish_table(lake, "flights", jan, january_flights, run_id="fixed", source=WORKLOAD.sources.name)
    assert lake.read_manifest("flights", jan).run_id == "fixed"
    assert lake.fs.get_file_info(refused).type == pafs.FileType.NotFound
    quarantined = lake.quarantine_path("flights", jan, "k-killed-2")
    held = sorted(i.base_name for i in lake.fs.get_file_info(pafs.FileSelector(quarantined, allow_not_found=True)))
    assert held == sorted([*rows, "_QUARANTINED.json"]), "the refused rows were deleted by the next publish"
    reason = _quarantine_reason(lake, "flights", jan, "k-killed-2")
    assert json.loads(reason["manifest"])["run_id"] == "bad"
    assert reason["failed_expectations"] == ["expect_column_values_to_not_be_null(carrier)"]
    assert _quarantine_reason(lake, "flights", jan, "k-killed") == {"why": "an earlier refusal"}  # kept apart


def test_a_pass_is_recorded_for_the_content_validated_not_one_published_meanwhile(
        settings, lake, alerts, january_flights, monkeypatch):
    """The files were read by one manifest read and the pass recorded by another: a publish in between had the old
    rows' pass saved under the new content, which the next validation then trusted: the new rows were never
    checked."""
    from tenfold.data.lake import Lake
    from tenfold.quality import gate

    jan = Partition(2013, 1)
    old, new = january_flights, january_flights.slice(1)  # both a whole month; other bytes
    publish_table(lake, "flights", jan, old, run_id="old", source=WORKLOAD.sources.name)
    real_files = Lake.files
    published: list[str] = []

    def files_then_a_publish(self, table, part, **kwargs):  # type: ignore[no-untyped-def]
        paths = real_files(self, table, part, **kwargs)
        if not published:
            published.append("new")
            publish_table(lake, "flights", jan, new, run_id="new", source=WORKLOAD.sources.name)
        return paths

    monkeypatch.setattr(Lake, "files", files_then_a_publish)
    # The replaced folder stays readable a while (on GCS, until its objects are deleted one by one): kept here.
    monkeypatch.setattr(Lake, "_collect_garbage", lambda self, table, part, keep: None)
    rows_checked: list[int] = []
    real_run_suite = gate.run_suite

    def counting(settings, frame, **kwargs):  # type: ignore[no-untyped-def]
        rows_checked.append(len(frame))
        return real_run_suite(settings, frame, **kwargs)

    monkeypatch.setattr(gate, "run_suite", counting)
    assert validate_published(lake, "flights", jan, RAW_SUITE, settings=settings, key="v0", docs=False).success
    assert rows_checked == [old.num_rows]  # the content it read
    monkeypatch.setattr(Lake, "files", real_files)
    validate_published(lake, "flights", jan, RAW_SUITE, settings=settings, key="v1", docs=False)
    assert rows_checked == [old.num_rows, new.num_rows], "the new rows were trusted on the old rows' pass"


def _gcs_away() -> OSError:
    """What pyarrow's GCS client really raises reading an object of a store nothing answers for (a closed port)."""
    import datetime as dt

    closed = pafs.GcsFileSystem(anonymous=True, scheme="http", endpoint_override="127.0.0.1:9",
                                retry_time_limit=dt.timedelta(seconds=1))
    try:
        closed.open_input_file("lake/flights/year=2013/month=1/data-x/part-00000.parquet")
    except OSError as exc:
        return exc
    raise AssertionError("a GCS store on a closed port answered")


@pytest.mark.parametrize("away", [_gcs_away, lambda: ConnectionRefusedError(111, "Connection refused")],
                         ids=["gcs-closed-port", "connection-refused"])
def test_a_store_away_while_a_batch_is_read_is_raised_for_the_retry_not_a_refusal_of_the_batch(
        settings, lake, stage, alerts, january_flights, monkeypatch, away):
    """pyarrow's GCS client ends its retries on a store away with an OSError: the gate took it for an unreadable
    batch, so a store outage withdrew a good published month, or quarantined a good staged batch for good (its retry
    then met AlreadyRefused), and failed the task without retries. The error is the one pyarrow's GCS client raises
    against a closed port (the lake here is local: its batch read is where the store goes away)."""
    import tenfold.quality.gate as gate
    from tenfold.data.lake import Lake

    away = away()

    jan = Partition(2013, 1)
    publish_table(lake, "flights", jan, january_flights, run_id="good", source=WORKLOAD.sources.name)
    staged = stage(synthetic_features(MARCH, 21_000, seed=3), MARCH, "away1")

    def unreachable(*args, **kwargs):
        raise away

    monkeypatch.setattr(gate, "read_batch", unreachable)  # a staged batch's read
    # A published month's files are downloaded (and checked) by the lake, once they matched their stored checksums.
    monkeypatch.setattr(Lake, "verified_files", unreachable)
    with pytest.raises(type(away)):
        validate_published(lake, "flights", jan, RAW_SUITE, settings=settings, key="k-away", docs=False)
    assert lake.has_manifest("flights", jan)  # not withdrawn
    assert lake.fs.get_file_info(lake.quarantine_path("flights", jan, "k-away")).type == pafs.FileType.NotFound
    with pytest.raises(type(away)):
        validate_partition(settings, FEATURES_TABLE, MARCH, staged, FEATURES_SUITE)
    assert lake.fs.get_file_info(lake._path(staged)).type == pafs.FileType.Directory  # still staged
    assert not alerts()
    monkeypatch.undo()  # the store back: the retry reads both and passes them
    assert validate_published(lake, "flights", jan, RAW_SUITE, settings=settings, key="k-away", docs=False).success
    assert validate_partition(settings, FEATURES_TABLE, MARCH, staged, FEATURES_SUITE).success


def test_running_out_of_memory_reading_a_checked_month_is_raised_for_the_retry_not_a_withdrawal(
        settings, lake, alerts, january_flights, monkeypatch):
    """validate_published checked every file against its manifest, then read the files again from the store,
    unchecked, and any error of that read made the month unreadable: a read that ran out of memory (or a download
    damaged on the way) withdrew a good published month to quarantine and alerted. The files are now downloaded whole,
    checked against the manifest and parsed from those bytes; a fault left once they matched is not the data's, and
    is raised for the task's retry."""
    jan = Partition(2013, 1)
    publish_table(lake, "flights", jan, january_flights, run_id="good", source=WORKLOAD.sources.name)
    manifest = lake.read_manifest("flights", jan)
    parsed: list[object] = []

    def out_of_memory(source, *args, **kwargs):  # type: ignore[no-untyped-def]
        parsed.append(source)
        raise pa.ArrowMemoryError("malloc of size 4194304 failed")

    with monkeypatch.context() as patched:
        patched.setattr(pq, "read_table", out_of_memory)
        with pytest.raises(pa.ArrowMemoryError):
            validate_published(lake, "flights", jan, RAW_SUITE, settings=settings, key="k-oom", docs=False)
    # What was parsed is the bytes checked against the manifest, in memory: not a second, unchecked read of the store.
    assert parsed and all(isinstance(source, pa.BufferReader) for source in parsed), parsed
    assert lake.read_manifest("flights", jan) == manifest  # still published, as it was
    assert lake.fs.get_file_info(lake.quarantine_path("flights", jan, "k-oom")).type == pafs.FileType.NotFound
    assert not alerts()
    # The retry, with the memory back, reads the month and passes it.
    assert validate_published(lake, "flights", jan, RAW_SUITE, settings=settings, key="k-oom", docs=False).success


MISSING = "sched_dep_hour"  # a feature column the suite checks several ways (type, not null, range)


def _refusal_of_a_batch_without(settings, lake, stage, column: str, attempt: str) -> ValidationFailed:
    batch = synthetic_features(MARCH, 24_000, seed=7).drop_columns([column])
    uri = stage(batch, MARCH, attempt)
    with pytest.raises(ValidationFailed) as caught:
        validate_partition(settings, FEATURES_TABLE, MARCH, uri, FEATURES_SUITE, alert=False, docs=False)
    assert not lake.exists(lake._path(uri))  # refused: quarantined, not left staged
    assert caught.value.report.quarantine_uri == lake.uri_of(lake.quarantine_path(FEATURES_TABLE, MARCH, attempt))
    return caught.value


def test_a_batch_missing_a_column_is_refused_naming_the_column_not_the_suite(settings, lake, stage):
    """GX raises on each expectation of a column the batch lacks (it cannot read it): the gate counted those as the
    suite's errors, so a features job that stopped writing a column was refused with "The suite is at fault too ...
    fix them in features.json", for what is the job's fault alone."""
    refused = _refusal_of_a_batch_without(settings, lake, stage, MISSING, "no-column")
    message = str(refused)
    assert f"expect_column_values_to_not_be_null({MISSING}): column {MISSING} missing from the batch" in message
    assert "suite is at fault" not in message and refused.report.errored == []
    assert "expect_table_columns_to_match_ordered_list" in refused.report.failed_expectations
    of_the_column = [o for o in refused.report.failures if o.column == MISSING]
    assert len(of_the_column) >= 3 and all(o.missing_columns == [MISSING] for o in of_the_column)


def test_a_suite_without_the_column_list_refuses_a_batch_missing_a_column_as_the_data(
        settings, lake, stage, tmp_path, monkeypatch):
    """Without expect_table_columns_to_match_ordered_list, every failure of a batch lacking a column was an exception
    GX raised: run_suite took the suite for at fault (SuiteError) and left the batch staged, for a retry to meet
    again. The data is refused, naming the column."""
    import dataclasses

    from tenfold.quality import gate

    body = json.loads((WORKLOAD.expectations_dir / f"{FEATURES_SUITE}.json").read_text())
    body["expectations"] = [e for e in body["expectations"] if e["type"] != "expect_table_columns_to_match_ordered_list"]
    (tmp_path / f"{FEATURES_SUITE}.json").write_text(json.dumps(body))
    monkeypatch.setattr(gate, "get_workload", lambda settings: dataclasses.replace(WORKLOAD, expectations_dir=tmp_path))

    refused = _refusal_of_a_batch_without(settings, lake, stage, MISSING, "no-column-list")
    assert refused.report.failures and all(o.missing_columns == [MISSING] for o in refused.report.failures)
    assert f"column {MISSING} missing from the batch" in str(refused)
    assert "suite is at fault" not in str(refused)
