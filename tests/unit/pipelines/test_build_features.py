"""The DAG's steps without Airflow: month and staging naming, the input gate (refuse, quarantine, heal), and an
idempotent publish. Spark is not run here (tests/integration/test_build_features.py runs the whole DAG)."""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from tenfold.config.settings import FEATURES_TABLE
from tenfold.data.lake import Partition
from tenfold.features.job import lookup_staging_uri, lookups_staging_uri
from tenfold.features.online import served_months
from tenfold.pipelines import build_features as pipeline
from tenfold.workloads import VERSION_KEY, lookup_table
from tenfold.workloads.flights.contract import CONTRACT
from tenfold.workloads.flights.synthetic import synthetic_features, synthetic_lookups

FEB = Partition(2013, 2)


def test_the_month_comes_from_the_logical_date_or_the_param():
    assert pipeline.partition_for(dt.datetime(2013, 2, 1, tzinfo=dt.UTC)) == FEB
    assert pipeline.partition_for(None, "2013-07") == Partition(2013, 7)
    with pytest.raises(ValueError, match="month=YYYY-MM"):
        pipeline.partition_for(None)
    with pytest.raises(ValueError, match="use YYYY-MM"):
        pipeline.partition_for(None, "July")


def test_staging_is_keyed_on_run_and_month(settings):
    a = pipeline.plan(settings, dag_id="build_features", run_id="manual__2013-02-01T00:00:00+00:00", logical_date=None, month="2013-02")
    again = pipeline.plan(settings, dag_id="build_features", run_id="manual__2013-02-01T00:00:00+00:00", logical_date=None, month="2013-02")
    other_run = pipeline.plan(settings, dag_id="build_features", run_id="backfill__2013-02-01T00:00:00+00:00", logical_date=None, month="2013-02")
    other_month = pipeline.plan(settings, dag_id="build_features", run_id="manual__2013-02-01T00:00:00+00:00", logical_date=None, month="2013-03")
    assert a == again  # a retry reuses its own staging
    assert len({a.staging_uri, other_run.staging_uri, other_month.staging_uri}) == 3
    assert a.staging_key.isalnum() and a.staging_key.islower() and len(a.staging_key) == 12
    assert a.staging_uri.endswith(f"/_staging/features/year=2013/month=2/{a.staging_key}")
    assert ":" not in a.staging_uri.removeprefix("file://")  # Hadoop paths reject ':'


def test_a_run_conf_key_other_than_month_is_refused(settings):
    """{"moth": "2013-05"} on a run at logical date 2013-02-01 built February and ended green: the only key read was
    the param month, and Airflow merges unknown conf keys into the params without a word."""
    from tenfold.pipelines.common import PipelineInputError

    with pytest.raises(PipelineInputError, match=r"unknown run conf keys \['moth'\]: use any of \['month'\]"):
        pipeline.plan(settings, dag_id="d", run_id="r", logical_date=dt.datetime(2013, 2, 1, tzinfo=dt.UTC), month=None,
                      conf={"moth": "2013-05"})
    run = pipeline.plan(settings, dag_id="d", run_id="r", logical_date=None, month="2013-05", conf={"month": "2013-05"})
    assert run.month == "2013-05"


def test_a_scheduled_run_past_the_last_month_has_nothing_to_build(settings):
    """The DAG has no end_date, so the scheduler starts a run each month after 2013 too: its ingest skips on this."""
    assert settings.pipelines.dag("build_features").last_month == "2013-12"
    past = pipeline.past_last_month(settings, dt.datetime(2026, 11, 1, tzinfo=dt.UTC))
    assert past is not None and past.startswith("2026-11 is past this pipeline's last month, 2013-12")
    for logical, month in ((dt.datetime(2013, 12, 1, tzinfo=dt.UTC), None), (dt.datetime(2013, 1, 1, tzinfo=dt.UTC), None),
                           (dt.datetime(2026, 11, 1, tzinfo=dt.UTC), "2013-03")):
        assert pipeline.past_last_month(settings, logical, month) is None, (logical, month)
    open_ended = settings.model_copy(update={"pipelines": settings.pipelines.model_copy(update={
        "build_features": settings.pipelines.dag("build_features").model_copy(update={"last_month": None})})})
    assert pipeline.past_last_month(open_ended, dt.datetime(2026, 11, 1, tzinfo=dt.UTC)) is None


def test_the_dag_starts_on_its_first_month_and_never_ends(settings):
    from tenfold.pipelines.common import start_date

    assert start_date(settings, "build_features") == dt.datetime(2013, 1, 1, tzinfo=dt.UTC)


def test_a_month_outside_the_pipeline_is_refused_before_any_work(settings, lake):
    run = pipeline.plan(settings, dag_id="d", run_id="r", logical_date=dt.datetime(2026, 11, 1, tzinfo=dt.UTC), month=None)
    with pytest.raises(ValueError, match=r"2026-11 is outside this pipeline's months \(2013-01 to 2013-12\)"):
        pipeline.ingest(settings, run)
    assert lake.published_partitions("flights") == []


def test_the_input_gate_refuses_a_truncated_history_month_then_heals(settings, lake, alerts):
    first = pipeline.ingest(settings, pipeline.plan(settings, dag_id="d", run_id="r1", logical_date=None, month="2013-02"))
    assert list(first.ingested) == ["2013-01", "2013-02"]  # the history month was missing, so it was ingested
    # the history month and the month through raw_flights, and the month's weather, planes, airlines, airports
    assert len(first.inputs_checked) == 6 and alerts() == []

    (path,) = lake.files("flights", Partition(2013, 1))
    Path(path).write_bytes(Path(path).read_bytes()[:1000])  # a truncated history file
    run = pipeline.plan(settings, dag_id="d", run_id="r2", logical_date=None, month="2013-02")
    with pytest.raises(pipeline.InputsRefused) as caught:
        pipeline.ingest(settings, run)
    assert [(r.table, r.partition) for r in caught.value.reports] == [("flights", "2013-01")]
    assert "flights 2013-01" in str(caught.value) and caught.value.alerted
    assert not lake.has_manifest("flights", Partition(2013, 1))  # withdrawn before any job could read it
    assert lake.fs.get_file_info(lake.quarantine_path("flights", Partition(2013, 1), run.staging_key)).type.name == "Directory"
    (alert,) = alerts()
    assert "raw input(s) refused before Spark" in alert["title"] and "flights 2013-01" in alert["details"]
    # a file changed after it was published: re-running is the cure, and nothing else is said
    assert alert["details"]["what_to_do"].startswith("files changed after they were published: re-run the DAG")
    assert "fix the delivery" not in alert["details"]["what_to_do"]

    healed = pipeline.ingest(settings, pipeline.plan(settings, dag_id="d", run_id="r3", logical_date=None, month="2013-02"))
    assert list(healed.ingested) == ["2013-01", "2013-02"]  # the quarantined month is ingested afresh
    assert lake.has_manifest("flights", Partition(2013, 1))


def _the_withdrawn_history_month_alerted(settings, alerts):
    """Run 2013-02 again, which withdraws its truncated history month 2013-01: refused naming it, in one alert
    (returned)."""
    run = pipeline.plan(settings, dag_id="d", run_id="r2", logical_date=None, month="2013-02")
    with pytest.raises(pipeline.InputsRefused) as caught:
        pipeline.ingest(settings, run)
    assert [(r.table, r.partition) for r in caught.value.reports] == [("flights", "2013-01")] and caught.value.alerted
    (alert,) = alerts()
    assert "flights 2013-01" in alert["details"] and "quarantined at" in alert["details"]["flights 2013-01"]
    return alert


def test_what_this_run_withdrew_is_alerted_though_another_run_withdrew_a_later_input(settings, lake, alerts, monkeypatch):
    """This run withdrew a corrupt history month (quarantined with alert=False, to be alerted once at the end); then
    another run withdrew a later input. The run ended on "withdrawn by another run" alone: the month this run
    withdrew was quarantined with no alert naming it (the other run's alert names only its own)."""
    pipeline.ingest(settings, pipeline.plan(settings, dag_id="d", run_id="r1", logical_date=None, month="2013-02"))
    (path,) = lake.files("flights", Partition(2013, 1))
    Path(path).write_bytes(Path(path).read_bytes()[:1000])  # a truncated history file: this run withdraws it
    _weather_withdrawn_by_another_run(monkeypatch)
    alert = _the_withdrawn_history_month_alerted(settings, alerts)
    assert alert["details"]["also"].startswith("the checks stopped there: weather 2013-02 was withdrawn by another run")


def test_what_this_run_withdrew_is_alerted_though_a_raw_suite_then_could_not_be_evaluated(settings, lake, alerts,
                                                                                          monkeypatch, tmp_path):
    """This run withdrew a corrupt history month (quarantined with alert=False, to be alerted at the end); then the
    weather suite, edited with a condition pandas refuses, could not be evaluated (a SuiteError): it escaped the
    checks, and the month this run withdrew was quarantined with no alert naming it."""
    import dataclasses

    from tenfold.quality import gate
    from tenfold.workloads import get_workload

    pipeline.ingest(settings, pipeline.plan(settings, dag_id="d", run_id="r1", logical_date=None, month="2013-02"))
    (path,) = lake.files("flights", Partition(2013, 1))
    Path(path).write_bytes(Path(path).read_bytes()[:1000])  # a truncated history file: this run withdraws it
    workload = get_workload(settings)
    suites = tmp_path / "suites"
    suites.mkdir()
    for suite in workload.expectations_dir.glob("*.json"):
        body = json.loads(suite.read_text())
        if suite.stem == "raw_weather":  # names a column of the suite, in a zone pandas does not know
            body["expectations"][-1]["kwargs"] |= {
                "row_condition": 'time_hour.dt.tz_convert("America/New_Yrok").dt.hour == 5', "condition_parser": "pandas"}
        (suites / suite.name).write_text(json.dumps(body))
    monkeypatch.setattr(gate, "get_workload", lambda s: dataclasses.replace(workload, expectations_dir=suites))
    alert = _the_withdrawn_history_month_alerted(settings, alerts)
    assert alert["details"]["also"].startswith(f"the checks stopped there: {suites / 'raw_weather.json'}: Great "
                                               "Expectations could not evaluate"), alert["details"]["also"]
    assert lake.has_manifest("weather", Partition(2013, 2))  # the suite's fault withdraws nothing


def test_a_refused_delivery_of_a_published_month_leaves_the_good_month_published(settings, lake, alerts, monkeypatch):
    """2013-02 is published and passed its checks; the upstream then delivers it again, changed so that it parses
    but fails its suite. The new bytes used to replace the old (whose folder a publish deletes) before the gate
    withdrew them: the month ended unpublished, the good copy nowhere. Now the delivery is validated before it may
    replace the month: refused and quarantined, and the month stays as it was."""
    import pyarrow.compute as pc

    from tenfold.workloads.flights import sources as nycflights13

    good = pipeline.ingest(settings, pipeline.plan(settings, dag_id="d", run_id="r1", logical_date=None, month="2013-02"))
    assert "2013-02" in good.ingested and alerts() == []
    before = lake.read_manifest("flights", FEB)
    real = nycflights13.read

    def changed(table: str) -> pa.Table:
        data = real(table)
        if table != "flights":
            return data
        i = data.schema.get_field_index("arr_delay")
        return data.set_column(i, "arr_delay", pc.multiply(data["arr_delay"], 100.0))  # minutes become nonsense

    monkeypatch.setattr(nycflights13, "read", changed)
    run = pipeline.plan(settings, dag_id="d", run_id="r2", logical_date=None, month="2013-02")
    with pytest.raises(pipeline.InputsRefused) as caught:
        pipeline.ingest(settings, run)
    assert [(r.table, r.partition) for r in caught.value.reports] == [("flights", "2013-02")]
    (alert,) = alerts()
    assert "raw input(s) refused before Spark" in alert["title"]
    # The pager's advice: a re-run alone reads the same delivery and refuses it again (it said just "re-run").
    said = alert["details"]["what_to_do"]
    assert said.startswith("fix the delivery in nycflights13") and "raw_<table>.json" in said
    assert "the published month was kept" in said and "files changed after" not in said
    after = lake.read_manifest("flights", FEB)  # still published, the very same content
    assert (after.data_dir, after.files) == (before.data_dir, before.files)
    assert lake.files("flights", FEB, verify=True)
    quarantined = lake.quarantine_path("flights", FEB, run.staging_key)
    assert any(i.base_name.endswith(".parquet") for i in lake.fs.get_file_info(pafs.FileSelector(quarantined)))


def _weather_withdrawn_by_another_run(monkeypatch):
    """Another run withdraws the weather partition while this one validates it (its manifest removed first)."""
    checked = pipeline.validate_published

    def withdrawn_meanwhile(lake_, table, month, *args, **kwargs):
        if table == "weather":
            lake_.fs.delete_file(lake_.manifest_path(table, month))  # what the other run's withdrawal does first
        return checked(lake_, table, month, *args, **kwargs)

    monkeypatch.setattr(pipeline, "validate_published", withdrawn_meanwhile)


def test_an_input_withdrawn_by_another_run_while_validated_fails_without_retries(settings, lake, monkeypatch):
    """Another run of the month refused (or found corrupt) and withdrew an input between this run's publish and its
    validation: a retry would only publish it again, so the run fails at once, saying so."""
    from tenfold.data.lake import MissingManifestError
    from tenfold.pipelines.common import PipelineError

    _weather_withdrawn_by_another_run(monkeypatch)
    run = pipeline.plan(settings, dag_id="d", run_id="r1", logical_date=None, month="2013-01")
    with pytest.raises(PipelineError, match=r"weather 2013-01 was withdrawn by another run while this one validated it"
                                            r".*then run 2013-01 again") as caught:
        pipeline.ingest(settings, run)
    assert isinstance(caught.value.__cause__, MissingManifestError)


def _weather_refused_and_withdrawn_first_by_another_run(monkeypatch):
    """The month's weather file is damaged after this run published it; the run beside this one validates it at the
    same moment, refuses it too and withdraws it first (under its own key), so this run's withdrawal finds nothing."""
    from tenfold.quality import gate

    checked, withdraw = pipeline.validate_published, gate.unpublish_to_quarantine

    def damaged(lake_, table, month, *args, **kwargs):
        if table == "weather":
            (path,) = lake_.files(table, month)
            Path(path).write_bytes(Path(path).read_bytes()[:1000])
        return checked(lake_, table, month, *args, **kwargs)

    def beaten_to_it(lake_, table, part, key, reason, **kwargs):
        if table == "weather":
            assert withdraw(lake_, table, part, "the-other-run", reason) is not None
        return withdraw(lake_, table, part, key, reason, **kwargs)

    monkeypatch.setattr(pipeline, "validate_published", damaged)
    monkeypatch.setattr(gate, "unpublish_to_quarantine", beaten_to_it)


def test_an_input_refused_here_and_withdrawn_first_by_another_run_fails_once_without_a_second_alert(
        settings, lake, alerts, monkeypatch):
    """Both runs refused the same corrupt input, and the other withdrew (and alerted) it first. This run fails without
    retries (a retry would re-ingest and publish the refused bytes) and alerts nothing itself; when it refused an input
    of its own before that, its alert names that one and says where the checks stopped."""
    from airflow.sdk.exceptions import AirflowFailException

    from tenfold.pipelines.common import run_step

    _weather_refused_and_withdrawn_first_by_another_run(monkeypatch)
    run = pipeline.plan(settings, dag_id="d", run_id="r1", logical_date=None, month="2013-02")
    with pytest.raises(AirflowFailException, match=r"weather 2013-02 failed validation and was withdrawn meanwhile by "
                                                  r"another run .*fix the input and run the month again"):
        run_step(pipeline.ingest, settings, run)
    assert alerts() == []  # the other run alerted it
    assert not lake.has_manifest("weather", FEB)
    assert lake.fs.get_file_info(lake.quarantine_path("weather", FEB, "the-other-run")).type.name == "Directory"
    assert lake.fs.get_file_info(lake.quarantine_path("weather", FEB, run.staging_key)).type.name == "NotFound"

    # again, with a corrupt history month this run withdraws first: that one is alerted here, with where it stopped
    (path,) = lake.files("flights", Partition(2013, 1))
    Path(path).write_bytes(Path(path).read_bytes()[:1000])
    again = pipeline.plan(settings, dag_id="d", run_id="r2", logical_date=None, month="2013-02")
    with pytest.raises(pipeline.InputsRefused) as caught:
        pipeline.ingest(settings, again)
    assert [(r.table, r.partition) for r in caught.value.reports] == [("flights", "2013-01")] and caught.value.alerted
    (alert,) = alerts()
    assert "flights 2013-01" in alert["details"]
    assert alert["details"]["also"].startswith("the checks stopped there: weather 2013-02 failed validation and was "
                                               "withdrawn meanwhile by another run")


def stage_lookups(lake, run, names=CONTRACT.lookup_tables):
    """What the feature job stages beside the features: one folder per lookup table."""
    for name, table in synthetic_lookups(run.partition).items():
        if name in names:
            path = lake._path(lookup_staging_uri(lookups_staging_uri(run.staging_uri), name))
            lake.fs.create_dir(path, recursive=True)
            pq.write_table(table, f"{path}/part-00000.parquet", filesystem=lake.fs)


def test_publish_is_atomic_idempotent_and_survives_a_retry(settings, lake, stage):
    table = synthetic_features(FEB, 2_000, seed=7)
    first = pipeline.plan(settings, dag_id="d", run_id="r1", logical_date=None, month="2013-02")
    stage(table, FEB, first.staging_key)
    stage_lookups(lake, first)
    published = pipeline.publish(settings, first)
    assert published["rows"] == 2_000 and lake.has_manifest(FEATURES_TABLE, FEB)
    assert lake.fs.get_file_info(lake._path(first.staging_uri)).type.name == "NotFound"  # staging dropped
    assert lake.fs.get_file_info(lake._path(lookups_staging_uri(first.staging_uri))).type.name == "NotFound"
    # every lookup table is published for the month, versioned with the feature definition
    for name in CONTRACT.lookup_tables:
        manifest = lake.read_manifest(lookup_table(settings.storage.lookups_table, name), FEB)
        assert manifest.extra == {VERSION_KEY: CONTRACT.version, "features_table": FEATURES_TABLE}
    lookups_before = lake.read_manifest(lookup_table(settings.storage.lookups_table, "weather"), FEB)
    # a retry after the publish (staging already gone) returns the same manifest
    assert pipeline.publish(settings, first) == published
    # a second backfill of the month (another run, same data) gives the same manifest content
    second = pipeline.plan(settings, dag_id="d", run_id="r2", logical_date=None, month="2013-02")
    stage(table, FEB, second.staging_key)
    stage_lookups(lake, second)
    again = pipeline.publish(settings, second)
    assert {k: again[k] for k in ("rows", "schema_hash", "files")} == {k: published[k] for k in ("rows", "schema_hash", "files")}
    # identical lookups: nothing republished (the first run's manifest stays, run id and all)
    assert lake.read_manifest(lookup_table(settings.storage.lookups_table, "weather"), FEB) == lookups_before
    assert lake.read_table(FEATURES_TABLE, [FEB]).num_rows == 2_000  # never duplicated
    # nothing staged and nothing published: a clear error, not an empty partition
    with pytest.raises(Exception, match=r"is gone and the month is not published by this run; clear the whole run"):
        pipeline.publish(settings, pipeline.plan(settings, dag_id="d", run_id="r3", logical_date=None, month="2013-03"))


def test_lookups_are_published_before_the_features_and_never_without_them(settings, lake, stage):
    run = pipeline.plan(settings, dag_id="d", run_id="r1", logical_date=None, month="2013-02")
    stage(synthetic_features(FEB, 500, seed=7), FEB, run.staging_key)
    # a build that staged only some lookups: refused before anything is published
    stage_lookups(lake, run, names=("airports", "planes"))
    with pytest.raises(pipeline.PipelineError, match=r"staged no lookup tables \['carriers', 'routes'.*re-run build_features"):
        pipeline.publish(settings, run)
    assert lake.published_partitions(lookup_table(settings.storage.lookups_table, "airports")) == []
    assert not lake.has_manifest(FEATURES_TABLE, FEB)
    # a features batch that cannot be published (two files disagreeing on the schema): the lookups went
    # first and are published, the features are not, so the month is not served (the features manifest
    # is its commit marker); the retry with a good batch publishes it
    stage_lookups(lake, run)
    staged = lake._path(run.staging_uri)
    pq.write_table(synthetic_features(FEB, 10).select(["year"]), f"{staged}/part-00001.parquet", filesystem=lake.fs)
    with pytest.raises(Exception, match="files disagree on the schema"):
        pipeline.publish(settings, run)
    assert lake.published_partitions(lookup_table(settings.storage.lookups_table, "origin_hour_history")) == [FEB]
    assert not lake.has_manifest(FEATURES_TABLE, FEB) and served_months(settings) == []
    lake.fs.delete_file(f"{staged}/part-00001.parquet")
    pipeline.publish(settings, run)
    assert served_months(settings) == [FEB]



def test_a_local_retry_stops_the_job_a_killed_try_left_running_before_it_empties_the_staging(
        make_settings, monkeypatch: pytest.MonkeyPatch):
    """The staging folders were emptied while the killed try's spark-submit still wrote there (it was stopped only
    later, as the retry's own job started): a file it made mid-delete failed the delete with "directory not empty".
    It is stopped before anything is discarded."""
    import psutil

    from tenfold.data.lake import Lake
    from tenfold.features import submit
    from tenfold.local.process import is_running, record_of

    settings = make_settings(spark={"class_sharing": False})
    run = pipeline.plan(settings, dag_id="build_features", run_id="r", logical_date=None, month="2013-02")
    earlier_job = subprocess.Popen(["sleep", "300"], start_new_session=True)  # as spark-submit runs: its own session
    try:
        earlier = record_of(psutil.Process(earlier_job.pid), "spark-submit")
        record = submit.job_record(settings, run.staging_uri)
        record.parent.mkdir(parents=True)
        record.write_text(earlier.to_json())
        alive_when_discarded: list[bool] = []
        discard = Lake.discard

        def recording(self: Lake, staged_dir: str) -> None:
            alive_when_discarded.append(is_running(earlier))
            discard(self, staged_dir)

        monkeypatch.setattr(Lake, "discard", recording)
        monkeypatch.setattr(submit, "spark_submit_command", lambda *a, **k: ["true"])
        pipeline.build(settings, run, attempt=2)
        assert alive_when_discarded == [False, False], "the staging was emptied while the killed try's job still ran"
        assert earlier_job.poll() is not None and not record.exists()
    finally:
        earlier_job.kill()
        earlier_job.wait()

class FakeBatches:
    """google.cloud.dataproc_v1.BatchControllerClient at its transport boundary: records each request and keeps each
    batch's state (``hang``: a batch runs until cancelled, and waiting for it times out; ``wait_error``: waiting on
    the operation raises it, and without ``hang`` the batch ends once ``get_batch`` has found it RUNNING
    ``running_polls`` times; ``failed_polls``: the first so many ``get_batch`` calls fail with ServiceUnavailable, as
    the service does when it is away, and without ``hang`` the batch ends once polled; ``poll_timeouts``: each
    ``get_batch``'s ``timeout``)."""

    def __init__(self, final_state: str = "SUCCEEDED", *, hang: bool = False, wait_error: BaseException | None = None,
                 running_polls: int = 0, failed_polls: int = 0) -> None:
        self.requests: list[dict] = []
        self.final_state, self.hang, self.wait_error, self.running_polls = final_state, hang, wait_error, running_polls
        self.failed_polls = failed_polls
        self.ends_when_polled = not hang and (wait_error is not None or failed_polls > 0)
        self.states: dict[str, str] = {}
        self.cancelled: list[str] = []
        self.poll_timeouts: list[float | None] = []

    def create_batch(self, request: dict):
        from types import SimpleNamespace

        self.requests.append(request)
        name = f"{request['parent']}/batches/{request['batch_id']}"
        self.states[name] = "RUNNING" if self.hang or self.ends_when_polled else self.final_state
        batch = SimpleNamespace(state=SimpleNamespace(name=self.final_state), state_message="driver exited 1")

        def result(timeout: float):
            if self.wait_error is not None:
                raise self.wait_error
            if self.hang:  # google-api-core's own exception and message (api_core/future/polling.py)
                import concurrent.futures

                raise concurrent.futures.TimeoutError("Operation did not complete within the designated timeout.")
            return batch
        return SimpleNamespace(result=result)

    def get_batch(self, name: str, timeout: float | None = None):
        from types import SimpleNamespace

        from google.api_core.exceptions import NotFound, ServiceUnavailable

        self.poll_timeouts.append(timeout)
        if self.failed_polls > 0:
            self.failed_polls -= 1
            raise ServiceUnavailable("the service is unavailable")
        if name not in self.states:
            raise NotFound(name)
        if self.ends_when_polled and self.states[name] == "RUNNING":
            if self.running_polls == 0:
                self.states[name] = self.final_state
            self.running_polls -= 1
        return SimpleNamespace(state=SimpleNamespace(name=self.states[name]), operation=f"operations/{name}")

    def cancel_operation(self, request: dict) -> None:
        name = request["name"].removeprefix("operations/")
        self.cancelled.append(name)
        self.states[name] = "CANCELLED"


def test_the_cloud_build_writes_to_the_same_staging_the_gate_reads():
    import re

    from tenfold.config import get_settings

    dev = get_settings("dev")
    run = pipeline.FeaturesRun(run_key="r", run_id="r", month="2013-02", staging_key="0123456789ab",
                               staging_uri=f"{dev.storage.lake_uri}/_staging/features/year=2013/month=2/0123456789ab")
    for try_number in (1, 2, 10):  # each try is a new batch: a failed batch cannot be re-run under its id
        batches = FakeBatches()
        assert pipeline.build(dev, run, attempt=try_number, client=batches) == run
        (request,) = batches.requests
        args = request["batch"]["pyspark_batch"]["args"]
        assert args[args.index("--output") + 1] == run.staging_uri
        assert args[args.index("--month") + 1] == "2013-02"
        assert request["parent"] == f"projects/{dev.project_id}/locations/{dev.region}"
        assert re.fullmatch(r"[a-z][a-z0-9-]{2,61}[a-z0-9]", request["batch_id"]) and request["batch_id"].endswith(f"-{try_number}")
    # A long prefix: the try was added after the id was cut to 63, so every create_batch was an InvalidArgument.
    long = dev.model_copy(update={"spark": dev.spark.model_copy(update={"dataproc_batch_prefix": "acme-" + "x" * 50})})
    batches = FakeBatches()
    pipeline.build(long, run, attempt=12, client=batches)
    (request,) = batches.requests
    assert len(request["batch_id"]) <= 63 and request["batch_id"].endswith("-2013-02-a0123456789ab-12")


def test_a_failed_cloud_build_names_the_batch():
    from tenfold.config import get_settings
    from tenfold.features.runners import DataprocJobFailed

    dev = get_settings("dev")
    run = pipeline.plan(dev, dag_id="d", run_id="r", logical_date=None, month="2013-02")
    with pytest.raises(DataprocJobFailed, match=r"batch .*-3 for 2013-02 ended FAILED"):
        pipeline.build(dev, run, attempt=3, client=FakeBatches("FAILED"))


def test_a_cloud_try_never_leaves_its_batch_running_beside_the_next(monkeypatch: pytest.MonkeyPatch):
    """A batch that outlives its try (the wait timed out, or Airflow killed the task) is cancelled, by the try
    itself or by the next one before it starts its own: two batches never write one staging folder."""
    from tenfold.config import get_settings
    from tenfold.features import runners

    dev = get_settings("dev")
    run = pipeline.plan(dev, dag_id="d", run_id="r", logical_date=None, month="2013-02")
    waits: list[float] = []
    make_job = runners.feature_job

    def recording(settings, *, timeout_s, client=None):  # type: ignore[no-untyped-def]
        waits.append(timeout_s)
        return make_job(settings, timeout_s=timeout_s, client=client)

    monkeypatch.setattr(runners, "feature_job", recording)
    hung = FakeBatches(hang=True)
    with pytest.raises(TimeoutError) as timed_out:
        pipeline.build(dev, run, attempt=1, client=hung)
    (first,) = hung.states
    # It names the batch and the month (it said only "Operation did not complete within the designated timeout.").
    assert f"Dataproc batch {first} for {run.partition.label} still running after" in str(timed_out.value)
    assert hung.cancelled == [first] and hung.states[first] == "CANCELLED"
    # The job's wait ends before Airflow's execution_timeout would kill the task (and leave the batch running).
    assert pipeline.task_timeout_s(dev, "build_features") - waits[0] >= 60

    # A try killed by Airflow cancels nothing itself: its batch still runs when the retry starts.
    killed = FakeBatches()
    killed.states[first] = "RUNNING"
    runners.DataprocBatchJob(dev, killed, timeout_s=60, poll_s=0).run(run.partition, run.staging_uri,
                                                                      key=run.staging_key, attempt=2)
    assert killed.cancelled == [first]
    assert [r["batch_id"] for r in killed.requests] == [first.rsplit("/", 1)[-1].removesuffix("-1") + "-2"]



@pytest.mark.parametrize("interrupt", ["ctrl-c", "airflow-timeout"])
@pytest.mark.parametrize("waiting_on", ["operation", "existing-batch"])
def test_a_cloud_try_interrupted_while_it_waits_cancels_its_batch(monkeypatch: pytest.MonkeyPatch, interrupt: str,
                                                                   waiting_on: str):
    """Ctrl-C and Airflow's execution_timeout (AirflowTaskTimeout, raised in the task) are BaseExceptions: the wait's
    handler caught only Exception, and the batch was left RUNNING (a manual run's next try, another staging key, never
    cancels it). It is cancelled, and the interruption goes on up."""
    from airflow.sdk.exceptions import AirflowTaskTimeout
    from google.api_core.exceptions import AlreadyExists

    from tenfold.config import get_settings
    from tenfold.features import runners

    dev = get_settings("dev")
    run = pipeline.plan(dev, dag_id="d", run_id="r", logical_date=None, month="2013-02")
    error = KeyboardInterrupt() if interrupt == "ctrl-c" else AirflowTaskTimeout("Timeout, PID: 1")
    batches = FakeBatches(hang=True, wait_error=error)
    if waiting_on == "existing-batch":  # this attempt's batch was created by a try before (it waits on get_batch)
        create = batches.create_batch

        def exists(request: dict):
            create(request)
            raise AlreadyExists(request["batch_id"])

        def sleep(_: float) -> None:
            raise error

        monkeypatch.setattr(batches, "create_batch", exists)
        # Only the runner's clock (a SimpleNamespace in its module): patching time.sleep itself would interrupt any
        # other thread that sleeps meanwhile.
        monkeypatch.setattr(runners, "time", SimpleNamespace(monotonic=time.monotonic, sleep=sleep))
    with pytest.raises(type(error)):
        runners.DataprocBatchJob(dev, batches, timeout_s=60, poll_s=1).run(run.partition, run.staging_uri,
                                                                          key=run.staging_key, attempt=1)
    (name,) = batches.states
    assert batches.cancelled == [name] and batches.states[name] == "CANCELLED"


def test_a_cloud_wait_that_fails_while_its_batch_runs_polls_the_batch_instead_of_cancelling_it():
    """A transient error polling the operation (ServiceUnavailable, after the client's own retries) is not the batch's:
    it was cancelled and the try failed, and the retry began the month again. The batch is polled until it ends."""
    from google.api_core.exceptions import ServiceUnavailable

    from tenfold.config import get_settings
    from tenfold.features import runners

    dev = get_settings("dev")
    run = pipeline.plan(dev, dag_id="d", run_id="r", logical_date=None, month="2013-02")
    batches = FakeBatches(wait_error=ServiceUnavailable("the service is unavailable"), running_polls=2)
    runners.DataprocBatchJob(dev, batches, timeout_s=60, poll_s=0).run(run.partition, run.staging_uri,
                                                                      key=run.staging_key, attempt=1)
    (name,) = batches.states
    assert batches.cancelled == [] and batches.states[name] == "SUCCEEDED" and batches.running_polls < 0

    failed = FakeBatches("FAILED", wait_error=ServiceUnavailable("the service is unavailable"), running_polls=1)
    with pytest.raises(runners.DataprocJobFailed, match=r"batch .*-1 for 2013-02 ended FAILED"):
        runners.DataprocBatchJob(dev, failed, timeout_s=60, poll_s=0).run(run.partition, run.staging_uri,
                                                                          key=run.staging_key, attempt=1)
    assert failed.cancelled == []


@pytest.mark.parametrize("waiting_on", ["operation", "existing-batch"])
def test_a_status_check_that_fails_while_the_batch_runs_is_polled_again_not_cancelled(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, waiting_on: str):
    """The batch's own status check failed once (ServiceUnavailable, the case that made the try poll the batch, or
    waiting on a batch an earlier try created): it went up raw, and the try cancelled a batch that was still running
    fine. It is polled again, each check bounded, until the batch ends."""
    import logging

    from google.api_core.exceptions import AlreadyExists, ServiceUnavailable

    from tenfold.config import get_settings
    from tenfold.features import runners

    dev = get_settings("dev")
    run = pipeline.plan(dev, dag_id="d", run_id="r", logical_date=None, month="2013-02")
    batches = FakeBatches(wait_error=ServiceUnavailable("the service is unavailable"), failed_polls=1, running_polls=1)
    if waiting_on == "existing-batch":
        create = batches.create_batch

        def exists(request: dict):
            create(request)
            raise AlreadyExists(request["batch_id"])

        monkeypatch.setattr(batches, "create_batch", exists)
    with caplog.at_level(logging.WARNING, logger=runners.__name__):
        runners.DataprocBatchJob(dev, batches, timeout_s=60, poll_s=0).run(run.partition, run.staging_uri,
                                                                          key=run.staging_key, attempt=1)
    (name,) = batches.states
    assert batches.cancelled == [] and batches.states[name] == "SUCCEEDED"
    assert batches.failed_polls == 0 and batches.running_polls < 0  # it failed once, then found it RUNNING, then ended
    assert len(batches.poll_timeouts) == 3
    assert all(t is not None and 0 < t <= runners.GET_BATCH_TIMEOUT_S for t in batches.poll_timeouts)
    (warned,) = [r.getMessage() for r in caplog.records if "checking Dataproc batch" in r.getMessage()]
    assert name in warned and "ServiceUnavailable" in warned


def test_a_status_check_that_fails_until_the_deadline_ends_the_try_with_one_clear_timeout(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture):
    """Dataproc never answers the batch's status until the try's deadline: the try ends with a TimeoutError that names
    the batch, the month and the service's error and says the cancellation could not be made (not the raw google
    error, and not "cancelled" when it was not); the warning is logged once, not at every poll."""
    import logging

    from google.api_core.exceptions import ServiceUnavailable

    from tenfold.config import get_settings
    from tenfold.features import runners

    dev = get_settings("dev")
    run = pipeline.plan(dev, dag_id="d", run_id="r", logical_date=None, month="2013-02")
    batches = FakeBatches(wait_error=ServiceUnavailable("the service is unavailable"), failed_polls=10**6)
    clock = [0.0]

    def sleep(seconds: float) -> None:
        clock[0] += seconds

    monkeypatch.setattr(runners, "time", SimpleNamespace(monotonic=lambda: clock[0], sleep=sleep))
    with caplog.at_level(logging.WARNING, logger=runners.__name__), pytest.raises(TimeoutError) as ended:
        runners.DataprocBatchJob(dev, batches, timeout_s=60, poll_s=15).run(run.partition, run.staging_uri,
                                                                           key=run.staging_key, attempt=1)
    (name,) = batches.states
    assert type(ended.value) is TimeoutError
    message = str(ended.value)
    assert f"Dataproc did not answer for batch {name} for {run.partition.label}" in message
    assert "ServiceUnavailable" in message and "not cancelled" in message and "retry" in message
    assert batches.cancelled == [] and batches.states[name] == "RUNNING"
    assert clock[0] >= 60  # it polled until the deadline, not one failure
    assert len([r for r in caplog.records if "checking Dataproc batch" in r.getMessage()]) == 1


_KILLED_WHILE_DROPPING = r"""
import os, signal, sys
import pyarrow.fs as pafs
from tenfold.config import get_settings
from tenfold.data.lake import Lake
from tenfold.pipelines import build_features as pipeline

deleted = []


def delete_tree(self, path):
    # As on GCS, the staging goes object by object: SIGKILLed after two of them.
    for info in sorted(self.fs.get_file_info(pafs.FileSelector(path, recursive=True)), key=lambda i: i.path):
        if info.type.name == "File":
            self.fs.delete_file(info.path)
            deleted.append(info.path)
            if len(deleted) == 2:
                os.kill(os.getpid(), signal.SIGKILL)


Lake._delete_tree = delete_tree
run = pipeline.plan(get_settings(), dag_id="d", run_id="r1", logical_date=None, month=sys.argv[1])
pipeline.publish(get_settings(), run)
"""


def _publish_killed_while_dropping(settings, lake, stage) -> pipeline.FeaturesRun:
    """Run r1 stages February's 2,000 rows in four files with its lookups, and a real process publishes them and is
    SIGKILLed after deleting two staged files (the rest is left, with the publish's marker)."""
    from tenfold.local.env import settings_env

    table = synthetic_features(FEB, 2_000, seed=7)
    run = pipeline.plan(settings, dag_id="d", run_id="r1", logical_date=None, month=FEB.label)
    stage(table.slice(0, 500), FEB, run.staging_key)
    for i in (1, 2, 3):
        pq.write_table(table.slice(500 * i, 500), f"{lake._path(run.staging_uri)}/part-{i:05d}.parquet",
                       filesystem=lake.fs)
    stage_lookups(lake, run)
    child = subprocess.run([sys.executable, "-c", _KILLED_WHILE_DROPPING, FEB.label], capture_output=True, text=True,
                           env={**os.environ, **settings_env(settings)}, timeout=120)
    assert child.returncode == -signal.SIGKILL, child.stderr[-3000:]
    return run


@pytest.mark.parametrize("before_an_upgrade", [False, True], ids=["same-version", "retried-after-an-upgrade"])
def test_a_publish_killed_while_it_drops_its_staging_is_retried_without_losing_rows(settings, lake, stage, tmp_path,
                                                                                   alerts, before_an_upgrade):
    """The publish succeeded and was SIGKILLed while it dropped the staging folder, file by file: its retry must
    not take the files left there for a month to publish (that replaced the month with part of itself). Also when
    the kill was before an upgrade whose manifests name their lookups: the retry's extra then differs."""
    from tenfold.features.online import LOOKUPS_KEY

    run = _publish_killed_while_dropping(settings, lake, stage)
    staged = lake._path(run.staging_uri)
    assert lake.read_table(FEATURES_TABLE, [FEB]).num_rows == 2_000
    left = [i for i in lake.fs.get_file_info(pafs.FileSelector(staged)) if i.type.name == "File"]
    assert len(left) == 2, "the kill did not leave part of the staging behind"
    if before_an_upgrade:  # the manifest as the version before LOOKUPS_KEY wrote it
        path = Path(lake.manifest_path(FEATURES_TABLE, FEB))
        body = json.loads(path.read_text())
        assert body["extra"].pop(LOOKUPS_KEY)
        path.write_text(json.dumps(body))

    from dataclasses import replace

    if not before_an_upgrade:
        # Cleared from validate, which took what was left for the run's batch: 1,000 rows validated, then published
        # over the month (or, under the suite's row minimum, refused and paged as a bad build).
        assert pipeline.validate(settings, run) == run
        assert lake.fs.get_file_info(staged).type.name == "NotFound" and alerts() == []
        assert lake.read_table(FEATURES_TABLE, [FEB]).num_rows == 2_000
    retried = pipeline.publish(settings, replace(run, rows=2_000))  # what validate recorded before the first try
    assert retried["rows"] == 2_000 and len(retried["files"]) == 4
    assert lake.read_table(FEATURES_TABLE, [FEB]).num_rows == 2_000, "the retry published part of the month"
    assert lake.fs.get_file_info(staged).type.name == "NotFound"


def test_a_run_rebuilt_after_its_publish_was_killed_while_dropping_validates_and_publishes_its_new_batch(
        settings, lake, stage, alerts):
    """The marker a killed drop leaves makes validate finish that drop; a batch the run built again since (cleared
    from its start: the same staging folder) is not that remainder and must not be dropped as one."""
    run = _publish_killed_while_dropping(settings, lake, stage)
    lake.discard(run.staging_uri)  # what the local build does first
    stage(synthetic_features(FEB, 24_000, seed=9), FEB, run.staging_key)
    stage_lookups(lake, run)
    validated = pipeline.validate(settings, run)
    assert validated.rows == 24_000 and alerts() == []
    pipeline.publish(settings, validated)
    assert lake.read_table(FEATURES_TABLE, [FEB]).num_rows == 24_000


def test_a_killed_drop_whose_month_another_run_published_since_is_not_published_over_it(settings, lake, stage, alerts):
    """The marker was read against the month's current manifest: once another run had published the month, what the
    killed drop left matched none of its files, so the retry published that remainder over the other run's month."""
    from dataclasses import replace

    run = _publish_killed_while_dropping(settings, lake, stage)
    other = pipeline.plan(settings, dag_id="d", run_id="r2", logical_date=None, month=FEB.label)
    stage(synthetic_features(FEB, 3_000, seed=11), FEB, other.staging_key)
    stage_lookups(lake, other)
    pipeline.publish(settings, replace(other, rows=3_000))
    assert lake.read_table(FEATURES_TABLE, [FEB]).num_rows == 3_000

    pipeline.publish(settings, replace(run, rows=2_000))  # the killed publish's retry
    assert lake.read_table(FEATURES_TABLE, [FEB]).num_rows == 3_000, "the remainder was published over the month"
    assert lake.fs.get_file_info(lake._path(run.staging_uri)).type.name == "NotFound" and alerts() == []


def test_a_smaller_rebuild_whose_files_were_all_published_before_is_published(settings, lake, stage):
    """A whole new batch (all the rows it was validated with) is published even when each of its files is one the
    month already holds: only a remainder with fewer rows than validated is taken for a cut-short drop."""
    from dataclasses import replace

    table = synthetic_features(FEB, 2_000, seed=7)
    first = pipeline.plan(settings, dag_id="d", run_id="r1", logical_date=None, month=FEB.label)
    stage(table.slice(0, 500), FEB, first.staging_key)
    for i in (1, 2, 3):
        pq.write_table(table.slice(500 * i, 500), f"{lake._path(first.staging_uri)}/part-{i:05d}.parquet",
                       filesystem=lake.fs)
    stage_lookups(lake, first)
    assert pipeline.publish(settings, replace(first, rows=2_000))["rows"] == 2_000
    second = pipeline.plan(settings, dag_id="d", run_id="r2", logical_date=None, month=FEB.label)
    stage(table.slice(0, 500), FEB, second.staging_key)  # the same bytes as the first file, and only them
    for i in (1, 2):
        pq.write_table(table.slice(500 * i, 500), f"{lake._path(second.staging_uri)}/part-{i:05d}.parquet",
                       filesystem=lake.fs)
    stage_lookups(lake, second)
    assert pipeline.publish(settings, replace(second, rows=1_500))["rows"] == 1_500
    assert lake.read_table(FEATURES_TABLE, [FEB]).num_rows == 1_500


def test_validate_cleared_after_publish_passes_without_refusing_the_published_month(settings, lake, stage, alerts):
    from tenfold.pipelines.common import PipelineError

    run = pipeline.plan(settings, dag_id="d", run_id="r1", logical_date=None, month="2013-02")
    stage(synthetic_features(FEB, 24_000, seed=7), FEB, run.staging_key)
    stage_lookups(lake, run)
    validated = pipeline.validate(settings, run)
    published = pipeline.publish(settings, validated)
    # the user clears validate (and publish after it): the staging folder is gone, the month is published
    assert pipeline.validate(settings, validated) == validated
    assert pipeline.publish(settings, validated) == published
    assert alerts() == []  # no "Quality gate refused"
    quarantine = lake.quarantine_path(FEATURES_TABLE, FEB, run.staging_key)
    assert lake.fs.get_file_info(quarantine).type == pafs.FileType.NotFound
    assert lake.read_manifest(FEATURES_TABLE, FEB).content == {k: published[k] for k in published
                                                                 if k not in ("month", "manifest")}
    # another run of the month whose batch is refused, then cleared: the month is published (by r1), but this
    # run's verdict stands (its batch is in quarantine), never a green validate
    from tenfold.quality.gate import AlreadyRefused

    refused = pipeline.plan(settings, dag_id="d", run_id="r3", logical_date=None, month="2013-02")
    bad = synthetic_features(FEB, 24_000, seed=7)
    bad = bad.set_column(bad.schema.get_field_index("distance"), "distance",
                         pa.array([-500.0] * bad.num_rows, bad.schema.field("distance").type))
    stage(bad, FEB, refused.staging_key)
    stage_lookups(lake, refused)
    with pytest.raises(PipelineError, match="Nothing was published"):
        pipeline.validate(settings, refused)
    assert len(alerts()) == 1
    # the refused build's staged lookups go too (they were left for good: nothing publishes a refused build)
    assert lake.fs.get_file_info(lake._path(lookups_staging_uri(refused.staging_uri))).type == pafs.FileType.NotFound
    with pytest.raises(AlreadyRefused, match="already refused"):
        pipeline.validate(settings, refused)
    assert len(alerts()) == 1
    # its cause mended, r3 is cleared from plan (the same staging key), built again, validated and published; then
    # validate is cleared again: r3 published the month, so it passes, and its publish record stays (it was deleted,
    # with "already refused" from the old quarantine and a red cleared publish after it)
    stage(synthetic_features(FEB, 24_000, seed=8), FEB, refused.staging_key)
    stage_lookups(lake, refused)
    again = pipeline.publish(settings, pipeline.validate(settings, refused))
    assert pipeline.validate(settings, refused) == refused
    assert pipeline.publish(settings, refused) == again and len(alerts()) == 1
    # a staging folder gone without a publish: one line saying to clear the whole run, nothing quarantined
    lost = pipeline.plan(settings, dag_id="d", run_id="r2", logical_date=None, month="2013-03")
    with pytest.raises(PipelineError, match=r"staging .* is gone and the month is not published by this run; clear the "
                                            r"whole run"):
        pipeline.validate(settings, lost)
    assert len(alerts()) == 1
    assert lake.fs.get_file_info(lake.quarantine_path(FEATURES_TABLE, lost.partition, lost.staging_key)).type \
        == pafs.FileType.NotFound


def test_a_run_whose_staging_expired_before_it_was_cleared_is_refused_not_taken_for_published(
        settings, lake, stage, alerts, monkeypatch):
    """A staging folder gone and the month published was taken for "this run published it": a rebuild whose validate
    failed on an outage, cleared after the bucket's lifecycle rule had deleted its staging (7 days), went green
    without validating or publishing anything, and its publish re-emitted the features event for the old month."""
    from tenfold.pipelines.common import PipelineError

    first = pipeline.plan(settings, dag_id="d", run_id="r1", logical_date=None, month="2013-02")
    stage(synthetic_features(FEB, 24_000, seed=7), FEB, first.staging_key)
    stage_lookups(lake, first)
    published = pipeline.publish(settings, pipeline.validate(settings, first))
    rebuild = pipeline.plan(settings, dag_id="d", run_id="r2", logical_date=None, month="2013-02")
    stage(synthetic_features(FEB, 24_000, seed=8), FEB, rebuild.staging_key)
    stage_lookups(lake, rebuild)
    lake.discard(rebuild.staging_uri)  # the lifecycle rule, while the run waited for its outage to end
    lake.discard(lookups_staging_uri(rebuild.staging_uri))
    for step in (pipeline.validate, pipeline.publish):
        with pytest.raises(PipelineError, match=r"is gone and the month is not published by this run"):
            step(settings, rebuild)
    assert lake.read_manifest(FEATURES_TABLE, FEB).run_id == "r1" and alerts() == []
    # The run that did publish it, cleared: still green, the month as it published it.
    assert pipeline.validate(settings, first) == first and pipeline.publish(settings, first) == published
    # The same run cleared from plan and built again (same run id, same staging): validate takes its new batch (the
    # record goes), then fails; its staging expires; cleared again, the old manifest (naming this run) is not
    # taken for the rebuild's publish.
    stage(synthetic_features(FEB, 24_000, seed=9), FEB, first.staging_key)
    stage_lookups(lake, first)
    monkeypatch.setattr(pipeline, "validate_partition", lambda *a, **k: (_ for _ in ()).throw(OSError("GCS 503")))
    with pytest.raises(OSError, match="GCS 503"):
        pipeline.validate(settings, first)
    lake.discard(first.staging_uri)
    lake.discard(lookups_staging_uri(first.staging_uri))
    for step in (pipeline.validate, pipeline.publish):
        with pytest.raises(PipelineError, match=r"is gone and the month is not published by this run"):
            step(settings, first)


def test_a_month_whose_publish_failed_after_its_lookups_is_not_served_with_them(settings, lake, stage):
    """A rebuild publishes the month's lookups, then its features: a publish that failed in between left the new
    build's lookups beside the old build's features, and the server assembled features from them that batch scoring
    and drift (reading the published features) never saw. The features manifest names its lookups' folders."""
    from tenfold.features.online import LookupsUnavailable, MismatchedLookups, read_lookups, read_month_lookups
    from tenfold.workloads import get_workload

    first = pipeline.plan(settings, dag_id="d", run_id="r1", logical_date=None, month="2013-02")
    stage(synthetic_features(FEB, 500, seed=7), FEB, first.staging_key)
    stage_lookups(lake, first)
    pipeline.publish(settings, first)
    assert list(read_lookups(settings)) == ["2013-02"]

    rebuild = pipeline.plan(settings, dag_id="d", run_id="r2", logical_date=None, month="2013-02")
    stage(synthetic_features(FEB, 400, seed=8), FEB, rebuild.staging_key)
    stage_lookups(lake, rebuild)
    weather = lake._path(lookup_staging_uri(lookups_staging_uri(rebuild.staging_uri), "weather"))
    staged = pq.read_table(f"{weather}/part-00000.parquet", filesystem=lake.fs)
    pq.write_table(staged.slice(1), f"{weather}/part-00000.parquet", filesystem=lake.fs)  # another build's weather
    broken = lake._path(rebuild.staging_uri)
    pq.write_table(synthetic_features(FEB, 10).select(["year"]), f"{broken}/part-00001.parquet", filesystem=lake.fs)
    with pytest.raises(Exception, match="files disagree on the schema"):
        pipeline.publish(settings, rebuild)  # the lookups went first; the features did not follow
    assert lake.read_table(FEATURES_TABLE, [FEB]).num_rows == 500  # the first build's features are still published

    with pytest.raises(MismatchedLookups, match=r"weather 2013-02 is of another build.*build_features 2013-02"):
        read_month_lookups(settings, get_workload(settings), lake, FEB)
    with pytest.raises(LookupsUnavailable, match=r"no month can be served.*another build"):
        read_lookups(settings)  # its only month: not served with the other build's lookups

    lake.fs.delete_file(f"{broken}/part-00001.parquet")
    pipeline.publish(settings, rebuild)  # the retry completes the rebuild: served again, with its own lookups
    served = read_lookups(settings)
    assert served["2013-02"]["weather"].num_rows == staged.num_rows - 1


@pytest.mark.parametrize("marker", [b"{not json", b"[]", b'{"run_id": "r1"}'])
def test_a_killed_drop_whose_marker_lost_its_file_list_is_judged_against_the_month(settings, lake, stage, alerts,
                                                                                  marker):
    """A marker without the list of the published files (torn by hand) dropped nothing and was deleted: validate then
    took what was left for the run's batch and publish put it over the month (rows lost)."""
    from dataclasses import replace

    run = _publish_killed_while_dropping(settings, lake, stage)
    Path(lake._path(run.staging_uri).rstrip("/") + ".published.json").write_bytes(marker)
    assert pipeline.validate(settings, run) == run and alerts() == []
    pipeline.publish(settings, replace(run, rows=1_000))
    assert lake.read_table(FEATURES_TABLE, [FEB]).num_rows == 2_000
