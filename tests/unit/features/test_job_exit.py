"""The build-features job's exit code: 2 ("an input cannot be read; re-ingest the month") only for a failure to read
one of its inputs, never for a failure of its own output that happens to name a Parquet file."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import pytest

from tenfold.config import Settings, get_settings
from tenfold.data.lake import Partition
from tenfold.features import job
from tenfold.workloads.flights import WORKLOAD

FEB = Partition(2013, 2)
JAN = Partition(2013, 1)  # the month published in the lakes of the output guard's tests
LAKE = "file:///srv/lake"
OUTPUT = "file:///srv/lake/_staging/features/year=2013/month=2/run-1"
INPUT = f"{LAKE}/flights/year=2013/month=2/data-0123456789abcdef/part-00000.parquet"


class SparkException(Exception):
    """A stand-in for what pyspark raises from the JVM (its own classes need a running JVM to be built)."""


def _main(monkeypatch: pytest.MonkeyPatch, failure: BaseException) -> int:
    from pyspark.sql import SparkSession

    session = SimpleNamespace(stop=lambda: None)
    builder = SimpleNamespace(config=lambda *_: builder, appName=lambda _: builder, getOrCreate=lambda: session)
    monkeypatch.setattr(SparkSession, "builder", builder)
    monkeypatch.setattr(job, "resolve_inputs", lambda *_: job.Inputs(history=(), tables={"flights": (INPUT,)}))

    def run(*_: object) -> dict[str, object]:
        raise failure

    monkeypatch.setattr(job, "run", run)
    return job.main(["--lake-uri", LAKE, "--month", FEB.label, "--output", OUTPUT])


STAGED = f"{OUTPUT.removeprefix('file://')}/part-00001.parquet.tmp-1a2b3c4d"
# What the writer raises inside a task (tenfold.features.job._file_writer), as the worker's traceback ends with it.
NULLS = ("tenfold.features.job.ContractError: column 'route_flights' holds 1 nulls in part-00001.parquet, but the "
         "contract's required_in_file says the transform makes it non-null: fill it in the transform (e.g. coalesce) "
         "or take it out of required_in_file (docs/workloads.md)")
DISK_FULL = f"OSError: [Errno 28] No space left on device: '{STAGED}'"
WRITTEN = f"{OUTPUT.removeprefix('file://')}/part-00000.parquet"
PYARROW_DISK_FULL = "Error writing bytes to file. Detail: [errno 28] No space left on device"
FREE_SPACE = " (the disk is full: free space on it, then let the task retry)"  # what to do, after what is wrong


def _worker_traceback(last: str) -> str:
    return ("Traceback (most recent call last):\n"
            '  File "/srv/venv/lib/python3.11/site-packages/tenfold/features/job.py", line 331, in write\n'
            "    raise ContractError(\n"
            f"{last}\n")


def _py4j_text(last: str) -> str:
    """py4j's Py4JJavaError of the SparkException that aborted the job (pyspark converts no SparkException): the
    Java call first, then the Java exception's stack, the worker's traceback in its message and in its cause."""
    return ("An error occurred while calling o312.collectToPython.\n"
            ": org.apache.spark.SparkException: Job aborted due to stage failure: Task 1 in stage 7.0 failed 4 times, "
            "most recent failure: Lost task 1.3 in stage 7.0 (TID 23) (127.0.0.1 executor driver): "
            f"org.apache.spark.api.python.PythonException: {_worker_traceback(last)}\n"
            "\tat org.apache.spark.api.python.BasePythonRunner$ReaderIterator.handlePythonException(PythonRunner.scala:581)\n"
            "\tat org.apache.spark.sql.execution.python.PythonArrowOutput$$anon$1.read(PythonArrowOutput.scala:118)\n"
            "\tat java.base/java.lang.Thread.run(Thread.java:840)\n"
            "\nDriver stacktrace:\n"
            "\tat org.apache.spark.scheduler.DAGScheduler.failJobAndIndependentStages(DAGScheduler.scala:2935)\n"
            "Caused by: org.apache.spark.api.python.PythonException: "
            f"{_worker_traceback(last)}\n"
            "\tat org.apache.spark.api.python.BasePythonRunner$ReaderIterator.handlePythonException(PythonRunner.scala:581)\n")


def _converted_text(last: str) -> str:
    """pyspark's PythonException (pyspark.errors.exceptions.captured), as pyspark 4.3's collect() of a failing
    mapInArrow raised it: its message, then the worker's traceback; a chained exception shows both tracebacks."""
    return ("An exception was thrown from the Python worker:\n"
            "Traceback (most recent call last):\n"
            '  File "/srv/venv/lib/python3.11/site-packages/pyarrow/fs.py", line 40, in open_output_stream\n'
            "KeyError: 'part-00001.parquet'\n\n"
            "During handling of the above exception, another exception occurred:\n\n"
            + _worker_traceback(last).rstrip("\n"))


@pytest.mark.parametrize(
    ("failure", "said"),
    [
        (job.ContractError(f"the job wrote no Parquet file under {OUTPUT}"), f"the job wrote no Parquet file under {OUTPUT}"),
        # What write_sorted raises when pyarrow meets a full disk on the driver (the empty output's one file): pyarrow
        # names no file, write_sorted adds the one it was writing (tests/unit/data/test_parquet.py, on a real full disk).
        (OSError(28, PYARROW_DISK_FULL, WRITTEN), f"[Errno 28] {PYARROW_DISK_FULL}: '{WRITTEN}'{FREE_SPACE}"),
        (SparkException(_py4j_text(DISK_FULL)), DISK_FULL + FREE_SPACE),
        (SparkException(_py4j_text(NULLS)), NULLS),
        (SparkException(_converted_text(DISK_FULL)), DISK_FULL + FREE_SPACE),
        (SparkException(_converted_text(NULLS)), NULLS),
        # A task that died without a Python traceback (its worker crashed): the Java exception's message, not py4j's
        # "An error occurred while calling".
        (SparkException("An error occurred while calling o312.collectToPython.\n: org.apache.spark.SparkException: Job "
                        "aborted due to stage failure: Python worker exited unexpectedly (crashed)\n\tat org.apache."
                        "spark.api.python.BasePythonRunner$ReaderIterator.read(PythonRunner.scala:620)\n"),
         "org.apache.spark.SparkException: Job aborted due to stage failure: Python worker exited unexpectedly (crashed)"),
    ],
    ids=["no-output-contract", "disk-full-driver", "disk-full-task", "nulls-task", "disk-full-task-converted",
         "nulls-task-converted", "worker-crashed"],
)
def test_a_failure_of_the_jobs_own_output_is_not_taken_for_a_bad_input(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], failure: BaseException, said: str
) -> None:
    """A failure inside a Spark task was reported by its wrapper's first line ("An error occurred while calling
    o312.collectToPython."): the worker's own error line, which says what is wrong and what to do, was lost."""
    assert _main(monkeypatch, failure) == job.EXIT_FAILED
    err = capsys.readouterr().err
    assert err == f"build_features: failed for 2013-02: {said}\n"  # one line, the worker's own
    assert "cannot be read" not in err and "re-ingest" not in err


def test_a_spark_read_of_an_input_file_that_fails_is_a_bad_input(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    failure = SparkException("[FAILED_READ_FILE.NO_HINT] Encountered error while reading file "
                             f"file:/{INPUT.removeprefix('file:///')}. SQLSTATE: KD001")
    assert _main(monkeypatch, failure) == job.EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert f"an input file of flights 2013-02 under {LAKE} cannot be read" in err and "tenfold ingest --month 2013-02" in err
    # Any failure naming an input file is one too (Spark writes file:/x for file:///x), without a read error class.
    assert job._is_bad_input(SparkException(f"Could not read footer for file file:/{INPUT.removeprefix('file:///')}"),
                             job.Inputs(history=(), tables={"flights": (INPUT,)}))


HISTORY = f"{LAKE}/flights/year=2013/month=1/data-fedcba9876543210/part-00000.parquet"


@pytest.mark.parametrize(("error", "gone"), [("[FAILED_READ_FILE.NO_HINT] Encountered error while reading file", False),
                                             ("[FAILED_READ_FILE.FILE_NOT_EXIST] File does not exist", True),
                                             ("[PATH_NOT_FOUND] Path does not exist:", True)])
def test_an_unreadable_history_month_is_named_not_the_month_built(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], error: str, gone: bool
) -> None:
    """The message named the month built (re-ingest 2013-02) for any input file: re-ingesting February changes
    nothing when January's file is the one that cannot be read. A file that is gone (a publish of January replaced
    it while the job read it) is told to run the build again: the task's retry reads the new one."""
    failure = SparkException(f"{error} file:/{HISTORY.removeprefix('file:///')}. SQLSTATE: KD001")
    from pyspark.sql import SparkSession

    session = SimpleNamespace(stop=lambda: None)
    builder = SimpleNamespace(config=lambda *_: builder, appName=lambda _: builder, getOrCreate=lambda: session)
    monkeypatch.setattr(SparkSession, "builder", builder)
    monkeypatch.setattr(job, "resolve_inputs", lambda *_: job.Inputs(history=(Partition(2013, 1),),
                                                                     tables={"flights": (HISTORY, INPUT)}))

    def run(*_: object) -> dict[str, object]:
        raise failure

    monkeypatch.setattr(job, "run", run)
    code = job.main(["--lake-uri", LAKE, "--month", FEB.label, "--output", OUTPUT])
    err = capsys.readouterr().err
    assert "an input file of flights 2013-01" in err and "--month 2013-02" not in err, err
    assert code == job.EXIT_BAD_INPUT  # not 1: the class archive's failure (see tenfold.features.submit.class_sharing)
    if gone:
        assert "run the build of 2013-02 again" in err and "re-ingest that month" not in err
    else:
        assert "re-ingest that month (tenfold ingest --month 2013-01)" in err


def test_a_failure_to_publish_is_not_taken_for_a_bad_input(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """In the job, the lake is used only to resolve the inputs (before Spark) and to publish: a publish that fails
    (another writer holds the partition's lock) is worth a retry, and no reason to re-ingest the month."""
    from tenfold.data.lake import PartitionLocked

    failure = PartitionLocked("features partition 2013-02 is being published by another run (lock held)")
    assert _main(monkeypatch, failure) == job.EXIT_FAILED
    err = capsys.readouterr().err
    assert err.startswith("build_features: publishing 2013-02 failed: features partition 2013-02 is being published")
    assert "bad input" not in err and "re-ingest" not in err


@pytest.mark.parametrize("argv", [["--lake-uri", LAKE, "--month", "2013-13", "--output", OUTPUT],
                                  ["--lake-uri", LAKE, "--month", FEB.label, "--output", OUTPUT, "--newer-flag", "x"]])
def test_arguments_the_job_refuses_are_not_taken_for_a_bad_input(argv: list[str],
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """argparse exits 2, the job's EXIT_BAD_INPUT: a job file older than the DAG that passes it a newer flag was
    reported as "bad or missing input", pointing the operator at the data instead of the deployment."""
    from tenfold.inference import spark as scoring

    with pytest.raises(SystemExit) as ended:
        job.main(argv)
    assert ended.value.code == job.EXIT_FAILED
    assert "build_features: bad arguments" in capsys.readouterr().err
    with pytest.raises(SystemExit) as ended:
        scoring.parse_args(["--lake-uri", LAKE, "--month", "2013-13"])
    assert ended.value.code == scoring.EXIT_FAILED


def test_a_bad_month_argument_says_why(capsys: pytest.CaptureFixture[str]) -> None:
    """argparse put "invalid parse value: '2013-13'" in place of Partition.parse's own reason."""
    with pytest.raises(SystemExit):
        job.main(["--lake-uri", LAKE, "--month", "2013-13", "--output", OUTPUT])
    assert "'2013-13' is not a month: use YYYY-MM" in capsys.readouterr().err


def test_a_lake_that_cannot_be_read_is_one_line_not_a_traceback(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A lake URI under a regular file (or without permission, or credentials) raised NotADirectoryError through
    main: a raw traceback, where only LakeError was caught."""
    (tmp_path / "file").write_text("x")
    code = job.main(["--lake-uri", str(tmp_path / "file"), "--month", FEB.label, "--output", OUTPUT])
    err = capsys.readouterr().err
    assert code == job.EXIT_FAILED and f"build_features: cannot read the lake {(tmp_path / 'file').as_uri()}" in err
    assert "Traceback" not in err


@pytest.mark.parametrize(("output", "why"), [
    ("{lake}/features", "is a published table's or partition's folder"),
    ("{lake}/features/year=2013/month=1", "is a published table's or partition's folder"),
    ("{lake}/features/year=2013/month=1/data-0123456789abcdef", "is a data folder of a published partition"),
    ("{lake}", "is the lake"),
    ("{root}", "is the lake"),
])
def test_an_output_folder_holding_published_data_is_refused_before_anything_is_emptied(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], output: str, why: str) -> None:
    """The job empties --output (and --lookups-output) first: `--output <lake>/features`, a plausible guess for
    where features go, deleted every published month; `--lookups-output <lake>` replaced the raw tables' data."""
    lake, month = tmp_path / "lake", tmp_path / "lake" / "features" / "year=2013" / "month=1"
    (month / "data-0123456789abcdef").mkdir(parents=True)
    (month / "_SUCCESS").write_text("{}")
    (month / "data-0123456789abcdef" / "part-00000.parquet").write_bytes(b"published")
    target = output.format(lake=lake.as_uri(), root=tmp_path.as_uri())
    for flag in ("--output", "--lookups-output"):
        argv = ["--lake-uri", lake.as_uri(), "--month", FEB.label, "--output", f"{lake.as_uri()}/_staging/x", flag, target]
        with pytest.raises(SystemExit) as ended:
            job.main(argv)
        assert ended.value.code == job.EXIT_FAILED
        assert f"{flag} {target} {why}" in capsys.readouterr().err
    assert (month / "_SUCCESS").is_file() and (month / "data-0123456789abcdef" / "part-00000.parquet").is_file()


def test_negative_history_months_are_refused(capsys: pytest.CaptureFixture[str]) -> None:
    """-3 built a month from no history at all (every roll-up 0 or null) and published it as valid."""
    with pytest.raises(SystemExit) as ended:
        job.main(["--lake-uri", LAKE, "--month", FEB.label, "--output", OUTPUT, "--history-months", "-3"])
    assert ended.value.code == job.EXIT_FAILED and "-3 is negative: give 0 or more months" in capsys.readouterr().err


def test_folders_given_without_a_scheme_are_local_folders_as_the_lake_takes_them(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """`--lake-uri lake --output out` ended in pyarrow's raw "URI has empty scheme" traceback, though the Lake itself
    takes a relative folder; and a scheme pyarrow does not know is an error line, not a traceback."""
    monkeypatch.chdir(tmp_path)
    args = job.parse_args(["--lake-uri", "lake", "--month", FEB.label, "--output", "out", "--history-months", "1"])
    assert (args.lake_uri, args.output) == ((tmp_path / "lake").as_uri(), (tmp_path / "out").as_uri())
    assert args.lookups_output == job.lookups_staging_uri((tmp_path / "out").as_uri())
    # A folder of a published partition is still found when named relatively (the guard compares URIs).
    (tmp_path / "lake" / "features").mkdir(parents=True)
    with pytest.raises(SystemExit) as ended:
        job.parse_args(["--lake-uri", "lake", "--month", FEB.label, "--output", "lake", "--history-months", "1"])
    assert ended.value.code == job.EXIT_FAILED and "is the lake" in capsys.readouterr().err
    with pytest.raises(SystemExit) as ended:
        job.parse_args(["--lake-uri", "lake", "--month", FEB.label, "--output", "nosuch://x", "--history-months", "1"])
    assert ended.value.code == job.EXIT_FAILED and "cannot be opened" in capsys.readouterr().err


def _everything(lake: Path) -> dict[str, bytes]:
    return {str(p.relative_to(lake)): p.read_bytes() for p in sorted(lake.rglob("*")) if p.is_file()}


def _refused(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as ended:
        job.parse_args([*argv, "--month", FEB.label, "--history-months", "1"])
    assert ended.value.code == job.EXIT_FAILED
    err = capsys.readouterr().err
    assert "the job empties its output folder first, which would delete it" in err and "Traceback" not in err
    return err


@pytest.mark.parametrize("output", ["{link}", "{link_uri}", "{lake_uri}/.", "{lake_uri}/", "{real_uri}//lake",
                                    "{real_uri}/x/../lake", "{link_uri}/features/..", "{real}/./lake"])
@pytest.mark.parametrize("lake_as", ["{link_uri}", "{lake_uri}", "{link}"])
def test_the_lake_is_refused_as_output_however_it_is_spelt(
        tmp_path: Path, published_lake: Callable[..., Path], capsys: pytest.CaptureFixture[str], output: str,
        lake_as: str) -> None:
    """The guard compared the URIs as strings: a lake named through a symlink (--lake-uri file:///lakelink, --output
    the link as a plain path, which resolved to the real folder), or an output spelt <lake>/. or <lake>/x/../, was not
    the lake, and the job emptied the whole lake, every table's published months."""
    lake = published_lake(("features", "weather"), JAN, quarantined="weather")
    link = tmp_path / "lakelink"
    link.symlink_to(lake)
    names = {"link": str(link), "link_uri": link.as_uri(), "lake_uri": lake.as_uri(),
             "real_uri": lake.parent.as_uri(), "real": str(lake.parent)}
    before = _everything(lake)
    err = _refused(["--lake-uri", lake_as.format(**names), "--output", output.format(**names)], capsys)
    assert "is the lake" in err
    assert _everything(lake) == before


@pytest.mark.parametrize(("lookups", "why"), [
    ("{lake}/quarantine", "is in the lake's quarantine/ folder"),
    ("{lake}/quarantine/weather", "is in the lake's quarantine/ folder"),
    ("{lake}/_staging", "is the lake's _staging/ folder"),
    ("{lake}/features/year=2013/month=1/data-0123456789abcdef/x", "is inside the published partition "),
    ("{lake}/features/_tmp", "is inside the lake's table features, which holds published partitions"),
    ("{elsewhere}", "(its folder weather/, which the job empties) is in the lake's quarantine/ folder"),
    ("{copy}", "holds a published partition (lake/weather/year=2013/month=1/_SUCCESS)"),
])
def test_a_lookups_output_whose_folders_hold_lake_data_is_refused(
        tmp_path: Path, published_lake: Callable[..., Path], capsys: pytest.CaptureFixture[str], lookups: str,
        why: str) -> None:
    """--lookups-output X was checked at X, but the job empties X/<name> for each lookup, named like the raw tables
    (airports, planes, weather): --lookups-output <lake>/quarantine emptied the quarantine's weather/ (the evidence of
    refused batches), as did a folder whose weather/ is a link to the quarantine's."""
    lake = published_lake(("features", "weather"), JAN, quarantined="weather")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "weather").symlink_to(lake / "quarantine" / "weather")  # no manifest below: only its name tells
    copy = tmp_path / "copy"
    copy.mkdir()
    (copy / "lake").symlink_to(lake)
    before = _everything(lake)
    target = lookups.format(lake=lake.as_uri(), elsewhere=elsewhere.as_uri(), copy=copy.as_uri())
    err = _refused(["--lake-uri", lake.as_uri(), "--output", f"{lake.as_uri()}/_staging/features/x",
                    "--lookups-output", target], capsys)
    assert f"--lookups-output {target}" in err and why in err, err
    assert _everything(lake) == before


def test_a_runs_staging_folder_in_the_lake_is_still_accepted(
        tmp_path: Path, published_lake: Callable[..., Path]) -> None:
    """The guard refuses the lake's folders, not the staging folder of a run inside it, as the pipeline names it
    (Lake.staging_path), nor its lookups beside it; nor a folder of its own outside the lake."""
    from tenfold.data.lake import Lake

    lake_dir = published_lake(("features", "weather"), JAN, quarantined="weather")
    lake = Lake(lake_dir.as_uri())
    staging = lake.uri_of(lake.staging_path(job.FEATURES_TABLE, FEB, "run-1"))
    # A retry finds its own earlier output there, and other runs' staged months beside it.
    Path(staging.removeprefix("file://")).mkdir(parents=True)
    (Path(staging.removeprefix("file://")) / "part-00000.parquet").write_bytes(b"staged")
    (lake_dir / "_staging" / "weather" / "year=2013" / "month=2" / "ingest").mkdir(parents=True)
    args = job.parse_args(["--lake-uri", lake.uri, "--month", FEB.label, "--output", staging])
    assert (args.output, args.lookups_output) == (staging, job.lookups_staging_uri(staging))
    link = tmp_path / "lakelink"
    link.symlink_to(lake_dir)
    assert job.parse_args(["--lake-uri", link.as_uri(), "--month", FEB.label, "--output",
                           f"{link}/_staging/features/x"]).output == f"{lake_dir.as_uri()}/_staging/features/x"
    assert job.parse_args(["--lake-uri", lake.uri, "--month", FEB.label,
                           "--output", (tmp_path / "mine").as_uri()]).output == (tmp_path / "mine").as_uri()


@pytest.mark.parametrize(("output", "why"), [
    (f"_staging/features/{FEB.path}", f"is a staged table's or partition's folder (_staging/features/{FEB.path}/), "
     "which holds every run's staged batches and publish records for it (0123456789ab, 0123456789ab.done.json, "
     "0123456789ab_lookups)"),
    ("_staging/features/year=2013", "is a staged table's or partition's folder (_staging/features/year=2013/), "
     "which holds every run's staged batches and publish records for it (month=2)"),
    ("_staging/features/year=2013/month=02", "is a staged table's or partition's folder "
     "(_staging/features/year=2013/month=02/), which holds every run's staged batches and publish records for it"),
    ("_staging/features/mine", "holds other runs' staged batches or publish records (a1, a1_lookups) in the lake's "
     "_staging/ folder"),
    ("_staging/features", "is a staged table's or partition's folder (_staging/features/), which holds every run's "
     "staged batches and publish records for it (year=2013)"),
], ids=["month", "year", "month-spelt-02", "folder-of-runs", "table"])
def test_a_staged_months_folder_holding_other_runs_is_refused_and_a_runs_own_folder_still_accepted(
        published_lake: Callable[..., Path], capsys: pytest.CaptureFixture[str], output: str, why: str) -> None:
    """The guard refused <lake>/_staging itself but not a staged month below it, which holds only run folders:
    --output <lake>/_staging/features/year=2013/month=2 passed, and the job emptied it, deleting every other run's
    staged batch for the month (a run between validate and publish then failed), their lookups and a published run's
    .done.json record. The month, its year, a month however spelt, and any folder holding other runs' folders or
    records are refused; a run's own folder, as the DAG and the documented run by hand name it, is still accepted."""
    lake = published_lake(("features", "weather"), JAN, quarantined="weather")
    month = lake / "_staging" / "features" / FEB.path  # as the lake spells it: year=2013/month=2
    assert FEB.path == "year=2013/month=2"
    (month / "0123456789ab").mkdir(parents=True)
    (month / "0123456789ab" / "part-00000.parquet").write_bytes(b"staged by another run")
    (month / "0123456789ab_lookups" / "weather").mkdir(parents=True)
    (month / "0123456789ab.done.json").write_text("{}")
    (lake / "_staging" / "features" / "mine" / "a1_lookups").mkdir(parents=True)
    (lake / "_staging" / "features" / "mine" / "a1").mkdir()
    (lake / "_staging" / "features" / "mine" / "a1" / "part-00000.parquet").write_bytes(b"staged by run a1")
    manual = lake / "_staging" / "features" / "manual"  # spark_jobs/build_features.py's run by hand, run before
    manual.mkdir()
    (manual / "part-00000.parquet").write_bytes(b"this run's own earlier try")
    before = _everything(lake)
    target = f"{lake.as_uri()}/{output}"
    err = _refused(["--lake-uri", lake.as_uri(), "--output", target], capsys)
    assert f"--output {target} {why}: the job empties its output folder first" in err, err
    assert "give a staging folder of its own (the DAG uses <lake>/_staging/features/year=/month=/<run>)" in err, err
    assert _everything(lake) == before
    assert (month / "0123456789ab" / "part-00000.parquet").read_bytes() == b"staged by another run"
    for own in (manual, month / "0123456789ab"):  # a run's own folder, and a retry of the run staged in the month
        args = job.parse_args(["--lake-uri", lake.as_uri(), "--month", FEB.label, "--output", own.as_uri()])
        assert (args.output, args.lookups_output) == (own.as_uri(), job.lookups_staging_uri(own.as_uri()))


def test_an_object_store_output_spelling_dot_segments_is_refused() -> None:
    """A gs:// key is not resolved: gs://bucket/x/../lake may be the lake or a folder named '..'; either way the folder
    checked might not be the one emptied."""
    why = job.published_data_at("gs://bucket/x/../lake", "gs://bucket/lake")
    assert why is not None and "'.', '..' or '//'" in why


def test_unknown_time_zones_are_a_bad_input_naming_the_airport(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """Spark's to_utc_timestamp failed on a zone its Java does not know ([INVALID_TIMEZONE]): exit 1, retried until
    the retries ran out, naming neither the airport nor the table. The job now refuses the month (exit 2), saying."""
    (check,) = WORKLOAD.sources.zone_columns
    message = job.zones_message([(check, "LAX", "localtime"), (check, "SCL", "America/Coyhaique")], FEB.label)
    assert _main(monkeypatch, job.UnknownZones(message)) == job.EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert err.startswith("build_features: bad input for 2013-02: the airports table of 2013-02 gives tzone values")
    assert "LAX (localtime), SCL (America/Coyhaique)" in err and "tenfold ingest --month 2013-02" in err
    assert len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("started_by", ["spark-submit", "dataproc"])
@pytest.mark.parametrize(("output", "why"), [
    ("held/weather", "is in the lake's held/ folder, which keeps refused batches for triage"),
    ("tmp_staging", "is the lake's tmp_staging/ folder, which holds every run's staged batches"),
])
def test_a_lake_laid_out_with_other_folder_names_has_those_folders_refused(
        make_settings: Callable[..., Settings], published_lake: Callable[..., Path], capsys: pytest.CaptureFixture[str],
        started_by: str, output: str, why: str) -> None:
    """The guard knew the lake's staging and quarantine folders by their default names only: with
    storage.lake_layout naming them tmp_staging and held, --output <lake>/held/weather emptied the refused batches
    kept for triage. The command that starts the job (spark-submit here, a Dataproc batch in the cloud) tells it the
    names, and the job refuses them."""
    from tenfold.config.settings import LakeLayout
    from tenfold.features import dataproc
    from tenfold.features.submit import spark_submit_command

    lake = published_lake(("features", "weather"), JAN, quarantined="weather")
    (lake / "quarantine").rename(lake / "held")
    (lake / "tmp_staging").mkdir()
    layout = LakeLayout(staging="tmp_staging", quarantine="held")
    settings = make_settings(storage={"lake_uri": lake.as_uri(), "lake_layout": layout})
    target = f"{lake.as_uri()}/{output}"
    if started_by == "spark-submit":
        cmd = spark_submit_command(settings, FEB, target)
        argv = cmd[cmd.index("--lake-uri"):]
    else:  # dev's batch, with the layout; its gs:// lake swapped for this one
        dev = get_settings("dev")
        dev = dev.model_copy(update={"storage": dev.storage.model_copy(update={"lake_layout": layout})})
        argv = list(dataproc.features_batch(dev, FEB, 1, output=target)["pyspark_batch"]["args"])
        argv[argv.index("--lake-uri") + 1] = lake.as_uri()
    before = _everything(lake)
    err = _refused(argv, capsys)
    assert f"--output {target} {why}" in err and "<lake>/tmp_staging/features/year=/month=/<run>" in err, err
    assert _everything(lake) == before


def test_a_lake_layout_given_to_the_job_is_checked_like_the_settings_check_it(
        capsys: pytest.CaptureFixture[str]) -> None:
    """The folder names come from argv, so the job checks them as the settings do: one path segment each, and two
    different folders."""
    for names, reason in ((["--lake-staging", "a/b"], "use one non-empty path segment"),
                          (["--lake-staging", "x", "--lake-quarantine", "x"], "must be different folders")):
        with pytest.raises(SystemExit) as ended:
            job.parse_args(["--lake-uri", LAKE, "--month", FEB.label, "--output", OUTPUT, *names])
        assert ended.value.code == job.EXIT_FAILED
        err = capsys.readouterr().err
        last = err.strip().splitlines()[-1]  # argparse's usage, then the refusal on one line
        assert last.startswith("build_features: bad arguments") and reason in last and "Traceback" not in err, err


def test_a_single_slash_file_uri_is_the_folder_it_names_not_one_below_the_working_folder() -> None:
    """The lake accepts file:/x (as Spark prints it, and uri_of of such a lake gives it back), but the job took any
    text without :// for a path relative to its working folder: file:/tmp/lk became file:///<cwd>/file%3A/tmp/lk, and
    the job read its inputs from a folder that does not exist (exit 2, bad input, never retried)."""
    args = job.parse_args(["--lake-uri", "file:/srv/lake", "--month", FEB.label,
                           "--output", "file:/srv/lake/_staging/features/year=2013/month=2/run-1"])
    assert (args.lake_uri, args.output) == (LAKE, OUTPUT)
