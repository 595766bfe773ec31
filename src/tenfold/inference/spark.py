"""Bulk re-scoring of a whole features partition with Spark: the offline-inference path for big partitions.

:func:`score_partition` is what ``batch_inference`` calls when a partition holds more than
``settings.inference.spark_threshold_rows`` rows (smaller ones go through Pub/Sub and the worker pool).
It resolves the model reference (an alias such as ``champion``, or a version id) once, in the calling
process, to a version and a verified local copy (:func:`tenfold.serving.loading.resolve_and_download`,
the serving replicas' own cache), then launches ``spark_jobs/score_partition.py`` with ``spark-submit``
exactly as the features job is launched (the settings' master, driver and block manager on
``settings.local.bind_host``, no UI: :mod:`tenfold.features.submit`) and publishes what the job staged.

The job (:func:`run`) reads the partition's published files (sizes checked against the manifest first,
the feature definition's version checked against the model's workload), ships the model folder to the
executors (``addFile``) and scores with ``mapInPandas``: each Python worker loads the folder once
(:func:`tenfold.model.load_model`, cached per process for the worker's life) and calls the folder's own
``LoadedModel.predict_proba`` through :func:`tenfold.inference.scoring.score_rows`, exactly as the Pub/Sub
workers score (the preprocessing, network and calibration that evaluation and serving use too). The
scores (narrow: the keys and two columns) come back to the driver as Arrow and are written as one file in
a total order (keys, then probability and version) by pyarrow with the lake's fixed options, so a rerun
writes the same bytes and :meth:`tenfold.data.lake.Lake.publish` leaves the visible partition untouched.

The scores table (``settings.storage.scores_table``) is the Pub/Sub path's too
(:func:`tenfold.inference.scoring.scores_schema`): the contract's key columns, ``probability`` (float64)
and ``model_version`` (string), one row per features row, sorted by the keys; its manifest records the
model version and the features partition scored (``extra``).

Run the job by hand (``score_partition`` builds this argv)::

    .venv/bin/spark-submit --master 'local[2,4]' spark_jobs/score_partition.py \\
        --lake-uri "$(tenfold config get storage.lake_uri)" --month 2013-02 \\
        --model-dir .tenfold/serving/models/<version> --model-version <version> \\
        --output "$(tenfold config get storage.lake_uri)/_staging/scores/manual" --publish

Exit codes: 0 ok, 2 bad or missing input (no published partition, another feature version, a model
folder that does not load), 1 any other failure.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import posixpath
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tenfold.config.settings import DEFAULT_WORKLOAD, FEATURES_TABLE, StorageSettings
from tenfold.data.lake import Lake, LakeError, Manifest, Partition
from tenfold.fsio import filesystem_from_uri
from tenfold.inference.scoring import MODEL_VERSION, PROBABILITY, score_rows, scores_schema

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa
    from pyspark.sql import DataFrame, SparkSession

    from tenfold.config import Settings
    from tenfold.model import LoadedModel
    from tenfold.workloads import FeatureContract, Workload

log = logging.getLogger("tenfold.inference.spark")

JOB_FILE = Path("spark_jobs") / "score_partition.py"
# Processes started without settings (the job) default to the settings' table names.
SCORES_TABLE: str = StorageSettings.model_fields["scores_table"].default
SCORES_FILE = "part-00000.parquet"
# Test hook: each Python worker appends "<pid> <model dir>" to this file when it loads a model folder.
LOAD_LOG_CONF = "spark.tenfold.modelLoadLog"
EXIT_BAD_INPUT = 2
EXIT_FAILED = 1


class ScoringJobError(RuntimeError):
    """The Spark scoring job cannot score the partition; the message names the cause and what to do.

    ``retryable`` is False for a refusal of the input (a retry gets the same answer, so the task fails at once:
    :func:`tenfold.pipelines.common.run_step`), True for a job that crashed or ran out of time.
    """

    def __init__(self, message: str, *, retryable: bool = False) -> None:
        super().__init__(message)
        self.retryable = retryable


def score_order(contract: FeatureContract) -> list[str]:
    """The order scores are written in: the keys, then the score and the version (total even if keys repeat)."""
    return [*contract.key_columns, PROBABILITY, MODEL_VERSION]


# --- the launcher (runs in the calling process: the batch_inference task) -----------------------------

def score_partition(
    settings: Settings,
    model_ref: str,
    part: Partition,
    *,
    run_id: str | None = None,
    timeout_s: float | None = None,
    features_data_dir: str | None = None,
    planned_at: str | None = None,
) -> int:
    """Score ``part`` of ``settings.storage.features_table`` with ``model_ref`` on Spark and publish the scores
    partition (``settings.storage.scores_table``) atomically; returns the rows published.

    Idempotent: a rerun with the same model version on the same features writes the same file, and the
    publish then changes nothing. ``timeout_s`` bounds the job (default: ``settings.inference.wait_timeout_s``); on any
    failure :class:`ScoringJobError` (or :class:`tenfold.serving.loading.ServingLoadError` for a model
    that cannot be resolved) is raised and the visible scores partition is left as it was. Local only: in dev
    and prod it refuses, naming the setting that sends the partition through Pub/Sub instead.

    ``features_data_dir``: the features build the run planned (its content-addressed folder); the job scores that
    build or refuses, never a build published again meanwhile (scored, and recorded as the planned one).

    ``run_id`` (the same for every try of a run) also names the staging folder, and the job is recorded while it runs
    (:func:`tenfold.features.submit.job_record`, keyed by that folder): a try killed outright (its task SIGKILLed)
    left its spark-submit running in a session of its own, and the next try stops it before its own job starts, then
    empties and discards the same folder. Without ``run_id`` every call is a run of its own.

    ``planned_at`` (the batch_inference run's plan time) is recorded in the manifest, as the Pub/Sub path records it,
    so that a later run tells which run's scores are newer by their plans, not by this publication's time.
    """
    from tenfold.features.submit import SparkJobError, job_record, run_submit, stop_earlier_job, submit_prefix
    from tenfold.serving.loading import resolve_and_download

    if not settings.is_local:
        # Dataproc's runtimes have no torch: the batch would need a custom container image, not built yet.
        raise ScoringJobError(
            f"the Spark bulk path runs on this machine's Spark only; in {settings.env} a Dataproc batch would need a "
            f"runtime image with torch, which Tenfold does not build yet. Score {part.label} through Pub/Sub and the "
            "inference fleet: raise settings.inference.spark_threshold_rows above its row count")
    version, model_dir = resolve_and_download(settings, model_ref)
    st = settings.storage
    lake = Lake.from_settings(settings)
    if not lake.has_manifest(st.features_table, part):
        raise ScoringJobError(f"{st.features_table} {part.label} is not published under {lake.uri}: run build_features "
                              f"for {part.label} before scoring it")
    run_id = run_id or f"spark-{uuid.uuid4().hex[:12]}"
    extra = manifest_extra(lake, st.features_table, part, version)  # the features as the job will read them
    if planned_at:
        extra["planned_at"] = planned_at
    if features_data_dir is not None and extra["features_data_dir"] != features_data_dir:
        raise ScoringJobError(republished(st.features_table, part, features_data_dir, str(extra["features_data_dir"])),
                              retryable=False)
    staged = lake.uri_of(lake.staging_path(st.scores_table, part, staging_key(run_id)))
    cmd = [
        *submit_prefix(settings),
        str(_project_root() / JOB_FILE),
        *job_args(settings, part, staged, model_dir=model_dir, version=version),
        *(["--features-data-dir", features_data_dir] if features_data_dir is not None else []),
    ]
    # The same bound as the Pub/Sub path's wait for its results.
    limit = float(settings.inference.wait_timeout_s) if timeout_s is None else timeout_s
    started = time.monotonic()
    record = job_record(settings, staged)
    try:
        # Before this try's job starts, and before the staging folder is touched: an earlier try's job writes there.
        stop_earlier_job(record)
    except SparkJobError as exc:  # it did not stop: its folder is left alone, and a retry tries again
        raise ScoringJobError(str(exc), retryable=True) from exc
    try:
        run_submit(cmd, f"scoring {st.features_table} {part.label} with {version}", settings=settings, timeout_s=limit,
                   record=record)
        manifest = lake.publish(st.scores_table, part, staged, run_id=run_id, extra=extra)
    except SparkJobError as exc:  # exit 2: the job refused its input (see main); anything else may pass on a retry
        raise ScoringJobError(str(exc), retryable=exc.returncode != EXIT_BAD_INPUT) from exc
    finally:
        lake.discard(staged)
    log.info("scored %s %s with %s on Spark: %d rows in %.1f s -> %s", st.features_table, part.label, version,
             manifest.rows, time.monotonic() - started, lake.uri_of(lake.manifest_path(st.scores_table, part)))
    return manifest.rows


def staging_key(run_id: str) -> str:
    """The staging folder's name for ``run_id``: the same for every try of a run, so that a retry finds (and stops)
    what a killed try left writing there; hashed, as a run id holds characters a path must not (``:``, ``+``)."""
    return f"spark-{hashlib.sha256(run_id.encode()).hexdigest()[:12]}"


def _project_root() -> Path:
    from tenfold.config import project_root

    return project_root()


def job_args(settings: Settings, part: Partition, output: str, *, model_dir: Path, version: str) -> list[str]:
    """The job's own arguments: every input and output explicit (the job runs without settings), the lake's own folder
    names too, which its output guard refuses to empty."""
    from tenfold.features.dataproc import layout_args

    st = settings.storage
    return ["--lake-uri", st.lake_uri, "--month", part.label, "--output", output,
            "--model-dir", str(model_dir), "--model-version", version, "--workload", settings.workload,
            "--features-table", st.features_table, "--scores-table", st.scores_table, *layout_args(settings)]


def manifest_extra(lake: Lake, features_table: str, part: Partition, version: str,
                   features: Manifest | None = None) -> dict[str, object]:
    """What a scores manifest records: the model version and the features partition it scored (by its
    content-addressed folder: ``features``, the manifest the scores were read by, else the one published now),
    so a rerun on the same inputs publishes the same manifest."""
    features = features or lake.read_manifest(features_table, part)
    return {MODEL_VERSION: version, "features_table": features_table, "features_data_dir": features.data_dir,
            "scored_by": "spark"}


# --- the job (runs in the spark-submit driver, and its functions in the executors' Python workers) ---------

def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    from tenfold.features.job import (
        JobArgumentParser,
        _as_uri,
        add_layout_args,
        layout_of,
        month_arg,
        published_data_at,
    )

    p = JobArgumentParser(prog="score_partition", description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--lake-uri", required=True, help="lake root (file:// or gs://)")
    p.add_argument("--month", required=True, type=month_arg, help="the features partition to score, YYYY-MM")
    p.add_argument("--output", required=True, help="staging URI the scores file is written to (emptied first)")
    p.add_argument("--model-dir", required=True, type=Path, help="a model folder (a registry version, downloaded)")
    p.add_argument("--model-version", required=True, help="the registry version of --model-dir (written in every row)")
    p.add_argument("--workload", default=DEFAULT_WORKLOAD,
                   help="the workload the model must belong to (default %(default)s)")
    p.add_argument("--features-table", default=FEATURES_TABLE, help="the table to score (default %(default)s)")
    p.add_argument("--scores-table", default=SCORES_TABLE, help="with --publish: the table (default %(default)s)")
    p.add_argument("--publish", action="store_true", help="also publish the output as the scores partition")
    p.add_argument("--run-id", default=None, help="recorded in the manifest when publishing")
    p.add_argument("--features-data-dir", default=None,
                   help="score this build of the partition (its manifest's data folder) or refuse (exit 2)")
    add_layout_args(p)  # the lake's own folders, which the output guard refuses to empty, as the features job's does
    args = p.parse_args(argv)
    args.layout = layout_of(p, args)
    # A folder given without a scheme is one on this machine, as the Lake takes it: pyarrow refused it with a raw
    # "URI has empty scheme" traceback, and only after every row was scored.
    args.lake_uri, args.output = _as_uri(args.lake_uri), _as_uri(args.output)
    # The job empties --output before writing: --output <the lake> deleted every table, manifest and quarantined batch.
    try:
        why = published_data_at(args.output, args.lake_uri, args.layout)
    except (ValueError, OSError) as exc:  # pyarrow's ArrowInvalid is a ValueError: a scheme it does not know
        p.error(f"--output {args.output} or --lake-uri {args.lake_uri} cannot be opened ({exc}): give a file:// or "
                "gs:// URI, or a local folder")
    if why is not None:
        p.error(f"--output {args.output} {why}: the job empties its output folder first, which would delete it; give a "
                f"staging folder of its own (the launcher uses <lake>/{args.layout.staging}/{args.scores_table}/"
                "year=/month=/<run>)")
    return args


_MODELS: dict[str, LoadedModel] = {}


def cached_model(model_dir: str, load_log: str | None = None, *, threads: int = 1) -> LoadedModel:
    """The model folder at ``model_dir``, loaded once per process (a Spark Python worker lives for many tasks).

    ``threads``: torch's intra-op threads, the cores Spark gives a task (``spark.task.cpus``); more would have
    the workers of concurrent tasks fight over the same cores.
    """
    loaded = _MODELS.get(model_dir)
    if loaded is None:
        from tenfold.model import load_model
        from tenfold.serving.loading import configure_torch

        configure_torch(threads)
        loaded = _MODELS[model_dir] = load_model(model_dir)
        if load_log:
            with open(load_log, "a") as fh:  # one short line per write: appends from processes do not interleave
                fh.write(f"{os.getpid()} {model_dir}\n")
    return loaded


def _scorer(model_file: str, version: str, columns: list[str], input_schema: pa.Schema,
            load_log: str | None) -> Callable[[Iterator[pd.DataFrame]], Iterator[pd.DataFrame]]:
    """The function each task runs (``mapInPandas``): score each batch with the worker's cached model."""

    def score(batches):  # type: ignore[no-untyped-def]  # no hints: Spark must not infer a UDF type from them
        import pyarrow as pa
        from pyspark import SparkFiles, TaskContext

        # Resolved through the imported module, not this closure's globals: cloudpickle ships a closure's
        # globals with every task, and the cache must outlive the task.
        from tenfold.inference import spark as this

        task = TaskContext.get()
        model = this.cached_model(SparkFiles.get(model_file), load_log, threads=task.cpus() if task else 1)
        for frame in batches:
            # The contract's Arrow types again (pandas turned nullable ints into floats): the model sees the
            # same table a reader of the lake hands it in-process, and scores it as the Pub/Sub workers do.
            table = pa.Table.from_pandas(frame[columns], schema=input_schema, preserve_index=False)
            # The version is one constant: the driver adds it, so it never crosses to the driver row by row.
            yield score_rows(model, table, version).drop_columns([MODEL_VERSION]).to_pandas()

    return score


def republished(table: str, part: Partition, planned: str, now: str) -> str:
    """The refusal of a run whose features were published again since it planned (the launcher's, the job's and
    batch_inference's publish and score steps)."""
    return (f"{table} {part.label} was re-published since this run planned (data {planned} -> {now}): trigger a new "
            "batch_inference run for the month")


def input_uris(lake: Lake, table: str, part: Partition, contract: FeatureContract,
               data_dir: str | None = None) -> tuple[list[str], Manifest]:
    """The partition's published files (checked) and the one manifest they are of, read once; refuses another
    feature definition, and a build other than ``data_dir`` when given (the one the run planned)."""
    from tenfold.workloads import VERSION_KEY

    manifest = lake.read_manifest(table, part)
    built_with = manifest.extra.get(VERSION_KEY)
    if built_with != contract.version:
        raise LakeError(f"{table} {part.label} was built by feature definition version {built_with}, but the model's "
                        f"workload reads version {contract.version}: rebuild {part.label} with build_features")
    if data_dir is not None and manifest.data_dir != data_dir:
        raise LakeError(republished(table, part, data_dir, manifest.data_dir))
    paths = lake.files(table, part, verify=True, manifest=manifest)  # that build's files, not a newer one's
    return [lake.uri_of(path) for path in paths], manifest


def check_workload(workload: Workload, spec: str, model_version: str) -> None:
    """Refuse a model of another workload than ``spec``, the settings' workload (``flights``, or a user's
    ``package.module:attribute``, whose ``name`` is what a loaded model reports)."""
    from tenfold.workloads import get_workload

    expected = get_workload(spec).name
    if workload.name != expected:
        raise ScoringJobError(f"model {model_version} belongs to workload {workload.name!r}, but the lake's "
                              f"features are {expected!r}'s: score them with a model of {expected!r}")


def run(spark: SparkSession, args: argparse.Namespace) -> dict[str, object]:
    """Score ``args.month`` into ``args.output`` (and publish it with ``args.publish``); returns facts for the log."""
    import pyarrow as pa

    from tenfold.data.parquet import write_sorted
    from tenfold.model import load_model

    part: Partition = args.month
    model_dir = args.model_dir.resolve()
    # On the driver too: refuse a bad folder, or one of another workload, before any task starts (and before what
    # its meta.json names is imported).
    loaded = load_model(model_dir, for_workload=args.workload)
    workload = loaded.workload
    check_workload(workload, args.workload, args.model_version)
    contract = workload.contract
    lake = Lake(args.lake_uri, args.layout)
    uris, read = input_uris(lake, args.features_table, part, contract, args.features_data_dir)
    expected_rows = read.rows
    # The build the files are of (read again, a build published meanwhile would be recorded for these scores).
    extra = manifest_extra(lake, args.features_table, part, args.model_version, read)

    keys = list(contract.key_columns)
    pre = loaded.preprocessor
    columns = list(dict.fromkeys([*keys, *pre.categorical_columns, *pre.numeric_columns]))
    features = contract.arrow_schema()
    input_schema = _schema_of(features, columns)
    schema = scores_schema(contract)

    spark.sparkContext.addFile(str(model_dir), recursive=True)
    frame: DataFrame = spark.read.parquet(*uris).select(*columns)
    ddl = ", ".join(f"`{f.name}` {_spark_type(f.type)}" for f in schema if f.name != MODEL_VERSION)
    scorer = _scorer(model_dir.name, args.model_version, columns, input_schema,
                     spark.conf.get(LOAD_LOG_CONF, None))
    # Scores are narrow (the keys and one float): the driver holds a partition's (about 45 bytes a row for the
    # flights keys, 5 million rows ~225 MB, under spark.driver.maxResultSize) and writes the one sorted file
    # the Pub/Sub path writes too; a rerun's file is byte-identical, which a sampled range layout is not.
    scores = frame.mapInPandas(scorer, ddl).toArrow()
    scores = scores.append_column(MODEL_VERSION, pa.array([args.model_version] * scores.num_rows, pa.string()))
    if scores.num_rows != expected_rows:
        raise ScoringJobError(f"scored {scores.num_rows} rows, but {args.features_table} {part.label} holds "
                              f"{expected_rows}: nothing was written")

    fs, root = filesystem_from_uri(args.output)
    fs.delete_dir_contents(root, missing_dir_ok=True)  # a retry starts from an empty folder
    rows = write_sorted(scores, score_order(contract), schema, fs, posixpath.join(root, SCORES_FILE))
    facts: dict[str, object] = {"month": part.label, "rows": rows, "model_version": args.model_version,
                                "input_files": len(uris)}
    if args.publish:
        manifest = publish_scores(lake, args.scores_table, part, args.output, args.run_id, extra)
        facts["manifest"] = lake.uri_of(lake.manifest_path(args.scores_table, manifest.partition))
    return facts


class PublishFailed(RuntimeError):
    """The scores were written, their publish failed (a lock held, a damaged copy): a retry may succeed."""


def publish_scores(lake: Lake, table: str, part: Partition, output: str, run_id: str | None,
                   extra: dict[str, Any]) -> Manifest:
    """Publish the written scores; a lake error here is the job's own (another writer holds the month, the copy was
    damaged, nothing was written), never the input's: :class:`PublishFailed`, exit 1, not 2 ("bad input")."""
    try:
        return lake.publish(table, part, output, run_id=run_id or f"spark-{uuid.uuid4().hex[:12]}", extra=extra)
    except LakeError as exc:
        raise PublishFailed(f"the scores of {part.label} in {output} were not published ({exc}); run it "
                            "again") from exc


def _schema_of(schema: pa.Schema, columns: Sequence[str]) -> pa.Schema:
    import pyarrow as pa

    return pa.schema([schema.field(c) for c in columns])


def _spark_type(arrow_type: pa.DataType) -> str:
    """The Spark SQL type of an Arrow type of the contract: the features job's (every key type it writes is scored
    here too; this path had a list of its own, and a month over the Spark threshold of a workload keyed by a date
    was refused while smaller months scored)."""
    from tenfold.features.job import spark_type_of

    spark_type = spark_type_of(arrow_type)
    if spark_type is None:
        raise ScoringJobError(f"a key column of type {arrow_type} has no Spark type here: declare it in the contract "
                              "as a type the features job writes (tenfold.features.job.spark_type_of)")
    return str(spark_type.simpleString())


def main(argv: Sequence[str] | None = None) -> int:
    """Run the job; returns the process exit code (0 ok, 2 bad or missing input, 1 any other failure)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    from pyspark.sql import SparkSession

    from tenfold.features.job import SESSION_CONF
    from tenfold.model import ModelLoadError

    builder = SparkSession.builder.appName(f"tenfold-score-{args.month.label}")
    for key, value in SESSION_CONF.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    started = time.monotonic()
    try:
        facts = run(spark, args)
    except PublishFailed as exc:
        print(f"score_partition: publishing failed: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except (LakeError, ModelLoadError) as exc:
        print(f"score_partition: bad input for {args.month.label}: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except ScoringJobError as exc:
        print(f"score_partition: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except Exception as exc:
        from tenfold.features.job import failure_line

        # The worker's own exception line (a task's full disk, a model that failed in a task), not the first line
        # of pyspark's or py4j's wrapper, which names only the call that failed.
        first = failure_line(exc)
        print(f"score_partition: failed for {args.month.label}: {first[:1000]}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        spark.stop()
    log.info("scored %s in %.1f s", facts, time.monotonic() - started)
    print(f"score_partition: ok {facts}")
    return 0
