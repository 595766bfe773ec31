"""The Spark bulk path's refusals fail the batch_inference task at once (a retry gets the same answer), while a
job that crashed or ran out of time is left to the task's retries. No Spark here: spark-submit is a stand-in."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from airflow.sdk.exceptions import AirflowFailException

from tenfold.config import Settings, build_settings
from tenfold.data.lake import Lake, Partition
from tenfold.features import submit
from tenfold.inference import spark
from tenfold.pipelines.common import run_step
from tenfold.serving import loading
from tenfold.workloads.flights.synthetic import publish_synthetic_features

PART = Partition(2013, 6)


@pytest.fixture
def scoring(settings: Settings, lake: Lake, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    publish_synthetic_features(lake, [PART], 10)
    monkeypatch.setattr(loading, "resolve_and_download", lambda settings, ref: ("v1", tmp_path / "v1"))
    return settings


@pytest.mark.parametrize(("code", "kind"), [(2, "bad or missing input"), (1, "failed"), (None, "ran past")])
def test_a_job_that_refused_its_input_fails_the_task_at_once_and_a_crash_is_retried(
        scoring: Settings, monkeypatch: pytest.MonkeyPatch, code: int | None, kind: str) -> None:
    def spark_submit(cmd: list[str], what: str, **_: object) -> str:
        text = f"{what} {kind} (exit {code}):\nscore_partition: model v1 belongs to workload 'tiny'"
        raise submit.SparkJobError(text, code, "tail")

    monkeypatch.setattr(submit, "run_submit", spark_submit)
    with pytest.raises(spark.ScoringJobError, match=kind) as raised:
        spark.score_partition(scoring, "v1", PART)
    assert raised.value.retryable is (code != spark.EXIT_BAD_INPUT)
    with pytest.raises(AirflowFailException if code == spark.EXIT_BAD_INPUT else spark.ScoringJobError, match=kind):
        run_step(spark.score_partition, scoring, "v1", PART)


def test_a_features_build_published_again_since_the_run_planned_is_never_scored(
        scoring: Settings, lake: Lake, monkeypatch: pytest.MonkeyPatch) -> None:
    """The job read the manifest again and scored whatever build was published then, and the launcher recorded the
    planned one: scores of other features, labelled as the planned ones. The planned build is passed and pinned."""
    from tenfold.workloads.flights.contract import CONTRACT

    planned = lake.read_manifest(scoring.storage.features_table, PART).data_dir
    sent: list[list[str]] = []

    def spark_submit(cmd: list[str], what: str, **_: object) -> str:  # records the job's command, runs none
        sent.append(cmd)
        raise submit.SparkJobError(f"{what} failed (exit 1)", 1, "")

    monkeypatch.setattr(submit, "run_submit", spark_submit)
    with pytest.raises(spark.ScoringJobError, match="failed"):
        spark.score_partition(scoring, "v1", PART, features_data_dir=planned)
    assert sent[0][sent[0].index("--features-data-dir") + 1] == planned  # the job scores that build or refuses
    uris, read = spark.input_uris(lake, scoring.storage.features_table, PART, CONTRACT, planned)
    assert read.rows == 10 and read.data_dir == planned and all(f"/{planned}/" in uri for uri in uris)

    publish_synthetic_features(lake, [PART], 12)  # the month published again, another build
    with pytest.raises(spark.LakeError, match="re-published since this run planned"):
        spark.input_uris(lake, scoring.storage.features_table, PART, CONTRACT, planned)
    with pytest.raises(spark.ScoringJobError, match="re-published since this run planned") as raised:
        spark.score_partition(scoring, "v1", PART, features_data_dir=planned)
    assert raised.value.retryable is False and len(sent) == 1  # refused before any job ran


def test_an_unpublished_partition_and_the_cloud_are_refused_without_retries(scoring: Settings) -> None:
    with pytest.raises(AirflowFailException, match=r"not published.*run build_features for 2013-07"):
        run_step(spark.score_partition, scoring, "v1", PART.next())
    with pytest.raises(AirflowFailException, match=r"raise settings\.inference\.spark_threshold_rows"):
        run_step(spark.score_partition, build_settings("dev"), "v1", PART)


def test_a_publish_of_the_jobs_own_scores_that_fails_is_not_taken_for_a_bad_input(
        lake: Lake, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """A lake error while publishing (another writer holds the month, a damaged copy, nothing written) was caught with
    the input's lake errors: exit 2, "bad input", which the task fails at once and the user reads as the data's."""
    from types import SimpleNamespace

    from pyspark.sql import SparkSession

    empty = tmp_path / "scores"
    empty.mkdir()
    with pytest.raises(spark.PublishFailed, match=r"2013-06 .* were not published \(nothing to publish.*run it again"):
        spark.publish_scores(lake, "scores", PART, str(empty), None, {})

    session = SimpleNamespace(stop=lambda: None)
    builder = SimpleNamespace(config=lambda *_: builder, appName=lambda _: builder, getOrCreate=lambda: session)
    monkeypatch.setattr(SparkSession, "builder", builder)

    def run(_spark: object, args: object) -> dict[str, object]:
        return {"manifest": spark.publish_scores(lake, "scores", PART, str(empty), None, {})}

    monkeypatch.setattr(spark, "run", run)
    code = spark.main(["--lake-uri", lake.uri, "--month", PART.label, "--model-dir", str(tmp_path),
                       "--model-version", "v1", "--output", str(empty), "--publish"])
    err = capsys.readouterr().err
    assert code == spark.EXIT_FAILED and "publishing failed" in err and "bad input" not in err, err


def test_every_key_type_the_features_job_writes_is_declared_by_bulk_scoring() -> None:
    """Bulk scoring had a type list of its own: a workload keyed by a date (or a large_string, binary or decimal key),
    which the features job writes and the Pub/Sub path scores, was refused for every month over the Spark threshold."""
    import pyarrow as pa

    from tenfold.features.job import spark_type_of

    declared = {t: spark._spark_type(t) for t in (pa.date32(), pa.large_string(), pa.binary(), pa.decimal128(12, 2),
                                                  pa.int64(), pa.string(), pa.timestamp("us", tz="UTC"))}
    assert declared == {pa.date32(): "date", pa.large_string(): "string", pa.binary(): "binary",
                        pa.decimal128(12, 2): "decimal(12,2)", pa.int64(): "bigint", pa.string(): "string",
                        pa.timestamp("us", tz="UTC"): "timestamp"}
    assert spark_type_of(pa.list_(pa.int64())) is None
    with pytest.raises(spark.ScoringJobError, match=r"a key column of type list<item: int64> has no Spark type here"):
        spark._spark_type(pa.list_(pa.int64()))


def test_a_failure_inside_a_scoring_task_is_reported_by_the_workers_own_line(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """The bulk scoring job printed its failure's first line, which for a task's error is only the wrapper's ("An
    error occurred while calling o97.collectToPython."): the worker's own line (a full disk, and what to do) was lost."""
    from types import SimpleNamespace

    from pyspark.errors import PySparkException
    from pyspark.sql import SparkSession

    session = SimpleNamespace(stop=lambda: None)
    builder = SimpleNamespace(config=lambda *_: builder, appName=lambda _: builder, getOrCreate=lambda: session)
    monkeypatch.setattr(SparkSession, "builder", builder)
    worker = "OSError: [Errno 28] No space left on device: '/lake/_staging/scores/part-00000.parquet.tmp-1a2b3c4d'"

    def run(*_: object) -> dict[str, object]:
        raise PySparkException("An error occurred while calling o97.collectToPython.\n: org.apache.spark.SparkException: "
                               "Job aborted: org.apache.spark.api.python.PythonException: Traceback (most recent call "
                               'last):\n  File "spark.py", line 300, in write\n    write_sorted(...)\n'
                               f"{worker}\n\n\tat org.apache.spark.api.python.BasePythonRunner.read(PythonRunner.scala:1)\n")

    monkeypatch.setattr(spark, "run", run)
    code = spark.main(["--lake-uri", "file:///lake", "--month", PART.label, "--output", "file:///lake/_staging/scores",
                       "--model-dir", str(tmp_path), "--model-version", "v1"])
    assert code == spark.EXIT_FAILED
    assert capsys.readouterr().err == (f"score_partition: failed for {PART.label}: {worker} (the disk is full: free space "
                                       "on it, then let the task retry)\n")


def _everything(lake: Path) -> dict[str, bytes]:
    return {str(p.relative_to(lake)): p.read_bytes() for p in sorted(lake.rglob("*")) if p.is_file()}


def _job_argv(lake_uri: str, output: str, model_dir: Path, *extra: str) -> list[str]:
    return ["--lake-uri", lake_uri, "--month", PART.label, "--output", output, "--model-dir", str(model_dir),
            "--model-version", "v1", *extra]


@pytest.mark.parametrize(("output", "why"), [
    ("{lake}", "is the lake"),
    ("{lake}/.", "is the lake"),
    ("{lake}/quarantine", "is in the lake's quarantine/ folder"),
    ("{lake}/_staging", "is the lake's _staging/ folder"),
    ("{lake}/scores", "is a published table's or partition's folder"),
    ("{lake}/scores/year=2013/month=6/data-0123456789abcdef", "is a data folder of a published partition"),
])
def test_an_output_whose_emptying_deletes_lake_data_is_refused_before_anything_is_scored(
        tmp_path: Path, published_lake: Callable[..., Path], capsys: pytest.CaptureFixture[str], output: str,
        why: str) -> None:
    """The scoring job empties --output before it writes, and took any folder: --output "$(tenfold config get
    storage.lake_uri)", as a run by hand might give it, deleted the whole lake (every table, manifest and quarantined
    batch). It is refused on one line, as the features job refuses it, and the lake is left as it was."""
    lake = published_lake(("features", "scores"), PART, quarantined="features")
    before = _everything(lake)
    target = output.format(lake=lake.as_uri())
    with pytest.raises(SystemExit) as ended:
        spark.parse_args(_job_argv(lake.as_uri(), target, tmp_path))
    assert ended.value.code == spark.EXIT_FAILED
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert last.startswith("score_partition: bad arguments") and f"--output {target} {why}" in last, err
    assert "the job empties its output folder first, which would delete it; give a staging folder" in last
    assert "<lake>/_staging/scores/year=/month=/<run>" in last and "Traceback" not in err
    assert _everything(lake) == before


def test_a_scheme_less_output_and_lake_are_the_local_folders_they_name(
        tmp_path: Path, published_lake: Callable[..., Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """A folder given without a scheme reached pyarrow as it was and failed only after every row was scored, with a
    raw "ArrowInvalid: URI has empty scheme"; it is the local folder it names, as the features job takes it."""
    lake = published_lake(("features", "scores"), PART, quarantined="features")
    monkeypatch.chdir(tmp_path)
    args = spark.parse_args(_job_argv("real/lake", "mine/scores", tmp_path))
    assert (args.lake_uri, args.output) == (lake.as_uri(), (tmp_path / "mine" / "scores").as_uri())
    from tenfold.fsio import filesystem_from_uri

    assert filesystem_from_uri(args.output)[1] == str(tmp_path / "mine" / "scores")  # what the job empties and writes
    with pytest.raises(SystemExit):  # and the guard sees the lake however it is spelt
        spark.parse_args(_job_argv(lake.as_uri(), "real/lake/.", tmp_path))


def test_the_launcher_tells_the_job_the_lakes_folder_names_and_the_job_refuses_them(
        make_settings: Callable[..., Settings], published_lake: Callable[..., Path], tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    """The job runs without settings: with storage.lake_layout naming the quarantine held, the guard knew only the
    default name, and --output <lake>/held (the refused batches kept for triage) was emptied. The launcher's arguments
    carry the names; its own staging folder is still accepted, and a bad name is refused on one line."""
    from tenfold.config.settings import LakeLayout

    lake_dir = published_lake(("features", "scores"), PART, quarantined="features")
    (lake_dir / "quarantine").rename(lake_dir / "held")
    settings = make_settings(storage={"lake_uri": lake_dir.as_uri(),
                                      "lake_layout": LakeLayout(staging="tmp_staging", quarantine="held")})
    argv = spark.job_args(settings, PART, f"{lake_dir.as_uri()}/held", model_dir=tmp_path, version="v1")
    assert argv[argv.index("--lake-staging") + 1] == "tmp_staging" and argv[argv.index("--lake-quarantine") + 1] == "held"
    before = _everything(lake_dir)
    with pytest.raises(SystemExit) as ended:
        spark.parse_args(argv)
    assert ended.value.code == spark.EXIT_FAILED
    err = capsys.readouterr().err
    assert "is in the lake's held/ folder" in err and "<lake>/tmp_staging/scores/year=/month=/<run>" in err, err
    assert _everything(lake_dir) == before

    lake = Lake.from_settings(settings)
    staged = lake.uri_of(lake.staging_path(settings.storage.scores_table, PART, spark.staging_key("run-1")))
    args = spark.parse_args(spark.job_args(settings, PART, staged, model_dir=tmp_path, version="v1"))
    assert args.output == staged and args.layout == settings.storage.lake_layout

    with pytest.raises(SystemExit) as ended:
        spark.parse_args(_job_argv(lake.uri, staged, tmp_path, "--lake-staging", "a/b"))
    assert ended.value.code == spark.EXIT_FAILED
    assert "use one non-empty path segment" in capsys.readouterr().err.strip().splitlines()[-1]
