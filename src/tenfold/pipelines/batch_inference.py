"""The steps of ``dags/batch_inference.py``: plan -> publish -> score -> publish_results.

Scores one features partition (``month``) with the champion (or the pinned ``version``) and publishes one
partition of the scores table (``settings.storage.scores_table``): the contract's key columns,
``probability`` and ``model_version``, one row per features row, sorted by the keys (byte-identical on a
rerun). See docs/inference.md.

Two paths, chosen by :func:`plan` from the partition's size (:func:`scoring_path`; dev and prod always Pub/Sub):

* up to ``settings.inference.spark_threshold_rows`` rows, **Pub/Sub**: :func:`publish` sends the rows as
  requests of ``inference.rows_per_message`` rows with deterministic request ids; :func:`score` waits until
  each is scored or dead-lettered (locally it runs the worker pool for the wait and stops it whatever
  happens; in the cloud the inference instance group, autoscaled on the backlog, does the work);
  :func:`publish_results` checks "count in = count out + dead-letter count" and publishes the scores;
* above it, **Spark**: :func:`score` runs :func:`tenfold.inference.spark.score_partition`, which publishes
  the same partition with the same schema; :func:`publish_results` checks its row count.

Every step is idempotent: a retried publish sends the same request ids (each result is written once), a
retried wait finds what is already scored, and the same scores publish to the same content-addressed data.

Run every step in one process without Airflow: ``python -m tenfold.pipelines.batch_inference --conf
'{"month": "2013-07"}'`` (locally this starts and stops its own worker pool).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from tenfold.config import Settings
from tenfold.config.names import scoped_key
from tenfold.data.lake import MANIFEST, CorruptManifestError, Lake, MissingManifestError, Partition
from tenfold.pipelines.common import (
    PipelineError,
    PipelineInputError,
    RunState,
    chosen_once,
    conf_ref,
    run_conf,
    run_key,
    run_main,
    split_event_months,
)
from tenfold.workloads import VERSION_KEY

log = logging.getLogger(__name__)

DAG_ID = "batch_inference"
CONF_KEYS = ("month", "version")


@dataclass(frozen=True)
class InferenceRun(RunState):
    """The plan (the ``plan`` task's XCom): what is scored, with which model version, by which path."""

    run_key: str
    airflow_run_id: str
    month: str
    model_version: str
    rows: int
    requests: int
    rows_per_message: int
    path: Literal["pubsub", "spark"]
    features_data_dir: str
    planned_at: str = ""  # ISO UTC to the second, as a manifest's created_at (empty: planned before it was kept)

    @property
    def partition(self) -> Partition:
        return Partition.parse(self.month)


@dataclass(frozen=True)
class Published(RunState):
    requests: int
    rows: int
    seconds: float


@dataclass(frozen=True)
class Scored(RunState):
    scored: int
    dead_lettered: int
    seconds: float
    rows_written: int = 0  # the Spark path: rows it published


def _month(value: Any) -> Partition:
    if not isinstance(value, str):
        raise PipelineInputError(f"run conf month must be a string YYYY-MM, e.g. \"2013-07\"; got {value!r}")
    try:
        return Partition.parse(value)
    except ValueError as exc:
        raise PipelineInputError(f"run conf month={value!r}: {exc}") from exc


def default_month(settings: Settings) -> Partition:
    """The newest published features partition (what an Asset-triggered run scores)."""
    published = Lake.from_settings(settings).published_partitions(settings.storage.features_table)
    if not published:
        raise PipelineError(f"no features partition is published under {settings.storage.table_uri(settings.storage.features_table)}: "
                            "run build_features first")
    return max(published)


@dataclass(frozen=True)
class EventMonths:
    """Which months of a run's features events it scores (ascending) and why it skips the others."""

    score: list[str]
    skipped: dict[str, str]


def months_to_score(settings: Settings, event_months: Sequence[str], airflow_run_id: str | None = None) -> EventMonths:
    """The months an Asset-triggered run scores, from the months its features events name.

    With ``airflow_run_id``, the first choice of the run is kept (``<work>/event-months/<run key>.json``:
    :func:`~tenfold.pipelines.common.chosen_once`) and a re-run of the task (a cleared run) returns it: chosen again, a month whose publish had failed
    was skipped as "not later than" a month the same run had published meanwhile, and the run ended green without it.

    The newest, unless its complete scores are of the features build published now by the model version the run
    resolves (its event came again: a cleared or re-backfilled build_features run). Another month is scored when it is later than the newest month with published scores (so
    it has none): events held back while an earlier run was active
    (``max_active_runs=1`` gives the next run all of them), which come in month order as a replay or live data
    does. The rest are skipped and named with the run conf that scores them: a first run's backlog (nothing
    scored yet: a DAG's first run receives every earlier event), and months at or before the newest scored one
    (rebuilt or backfilled months, which Airflow also hands to the next run when they were published while the
    DAG was paused; rescoring a whole rebuilt history is a choice to make by hand, not a side effect).
    """
    months = sorted({_month(m).label for m in event_months})
    if not months:
        raise PipelineInputError("no features event names a month: trigger with the run conf {\"month\": \"YYYY-MM\"}")
    if airflow_run_id is None:
        return _choose_months(settings, months)
    from tenfold.inference.store import work_objects

    def choose() -> dict[str, Any]:
        chosen = _choose_months(settings, months)
        return {"score": chosen.score, "skipped": chosen.skipped}

    body = chosen_once(work_objects(settings), airflow_run_id, choose)
    return EventMonths(score=list(body["score"]), skipped=dict(body["skipped"]))


def _choose_months(settings: Settings, months: list[str]) -> EventMonths:
    lake = Lake.from_settings(settings)
    features, scores = settings.storage.features_table, settings.storage.scores_table
    scored = lake.published_partitions(scores)
    newest_scored = max(scored) if scored else None
    hint = 'trigger batch_inference with the run conf {"month": "%s"} to score it'

    def left_out(label: str) -> str | None:
        part = Partition.parse(label)
        if newest_scored is not None and part <= newest_scored:
            return (f"it is not later than {newest_scored.label}, the newest month scored (a rebuilt or "
                    f"backfilled month): {hint % label}")
        if not lake.has_manifest(features, part):
            return "its features partition is no longer published: rebuild it with build_features first"
        return None  # later than every scored month, so without scores

    score, skipped = split_event_months(months, nothing_done=None if scored else "nothing is scored yet", hint=hint,
                                        left_out=left_out)
    newest = score[-1]
    if (why := _scored_already(settings, lake, Partition.parse(newest))) is not None:
        score.pop()
        skipped[newest] = f"{why}: {hint % newest}"
    return EventMonths(score=score, skipped=skipped)


def _scored_already(settings: Settings, lake: Lake, part: Partition) -> str | None:
    """Why ``part`` needs no scoring, or None: its scores, complete, are of the features build published now, by the
    model version the run would resolve. A month's features event comes again with the same build (a cleared or
    re-backfilled build_features run publishes identical manifests): scoring it again was a whole Pub/Sub round, and
    its scores were replaced all the same."""
    from tenfold.inference.scoring import ScoringError, resolve

    features, scores = settings.storage.features_table, settings.storage.scores_table
    if not (lake.has_manifest(scores, part) and lake.has_manifest(features, part)):
        return None
    made = lake.read_manifest(scores, part).extra
    try:
        version = resolve(settings, settings.inference.model_ref)
    except ScoringError:  # plan says what is wrong
        return None
    if (made.get("features_data_dir") == lake.read_manifest(features, part).data_dir
            and made.get("model_version") == version and not made.get("dead_lettered_requests")):
        return f"its scores are of the features published now, by {version} (its features event came again)"
    return None


def plan(settings: Settings, airflow_run_id: str, conf: Mapping[str, Any] | None = None) -> InferenceRun:
    """Resolve the model once (so every worker scores with the same version) and pick the path by size."""
    from tenfold.inference.requests import batch_count
    from tenfold.inference.scoring import ScoringError, registered_meta, resolve
    from tenfold.workloads import meta_problem

    conf = run_conf(conf, CONF_KEYS)
    ref = conf_ref(conf, "version", settings.inference.model_ref)
    # A month given is checked whatever it is: {"month": ""} (a script's unset variable) scored the newest month.
    part = _month(conf["month"]) if conf.get("month") is not None else default_month(settings)
    lake = Lake.from_settings(settings)
    table = settings.storage.features_table
    if not lake.has_manifest(table, part):
        published = ", ".join(p.label for p in lake.published_partitions(table)) or "none"
        raise PipelineError(f"features partition {part.label} is not published under {lake.uri}/{table} (published: "
                            f"{published}): run build_features for {part.label} first")
    manifest = lake.read_manifest(table, part)
    built_by, contract = manifest.extra.get(VERSION_KEY), _contract(settings)
    if built_by != contract.version:  # found now, not as a raw error in publish after two retries
        raise PipelineError(f"features partition {part.label} was built by feature definitions version {built_by}, "
                            f"and this code's are version {contract.version}: rebuild it with build_features "
                            f"(conf {{\"month\": \"{part.label}\"}}) first")
    try:
        version = resolve(settings, ref)
    except ScoringError as exc:
        raise PipelineError(f"{exc}: train and register a model first (train_model), or pass an existing version") from exc
    try:
        meta = registered_meta(settings, version)
    except ScoringError as exc:
        raise PipelineError(f"{exc}: pass another version in the run conf") from exc
    # Found now, not as a dead letter per request when every worker's load_model refuses the model.
    if problem := meta_problem(meta, settings.workload, contract):
        raise PipelineError(f"model {version} ({ref}) cannot score features partition {part.label}: {problem}. Pass the "
                            f"version of a model trained for {settings.workload!r} on these features (conf "
                            "{\"version\": ...}), or train one (train_model) and promote it")
    inf = settings.inference
    path = scoring_path(settings, manifest.rows)
    # The run's requests and results are keyed by what they score with and how they are cut: a cleared run that
    # plans another model version, re-published features or another rows_per_message starts afresh instead of
    # taking the first plan's results (or request ids) as its own.
    key = scoped_key(run_key(airflow_run_id), version, manifest.data_dir, str(inf.rows_per_message))
    run = InferenceRun(
        run_key=key, airflow_run_id=airflow_run_id, month=part.label, model_version=version,
        rows=manifest.rows, requests=batch_count(manifest.rows, inf.rows_per_message) if path == "pubsub" else 0,
        rows_per_message=inf.rows_per_message, path=path, features_data_dir=manifest.data_dir,
        planned_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    )
    # The run id too: a run from the command line resumes under it (--run-id), and its default is made up here.
    log.info("batch_inference %s (run id %s): %s (%d rows, %d requests) with model %s (%s) by the %s path", run.run_key,
             airflow_run_id, part.label, run.rows, run.requests, version, ref, path)
    return run


def scoring_path(settings: Settings, rows: int) -> Literal["pubsub", "spark"]:
    """Spark above ``inference.spark_threshold_rows`` rows on this machine; Pub/Sub otherwise, and always in dev
    and prod, where the bulk path has no runtime (Dataproc's images have no torch) and the GPU inference fleet
    scales with the requests' backlog instead."""
    return "spark" if settings.is_local and rows > settings.inference.spark_threshold_rows else "pubsub"


def _check_unchanged(settings: Settings, run: InferenceRun, lake: Lake | None = None) -> Lake:
    from tenfold.inference.spark import republished  # the Spark job's own refusal of the same case (no pyspark)

    lake = lake or Lake.from_settings(settings)
    table = settings.storage.features_table
    try:
        now = lake.read_manifest(table, run.partition)
    except MissingManifestError:
        # Withdrawn since plan (a failed re-validation, a corrupt file a reader met): no retry brings it back.
        raise PipelineError(f"{table} {run.partition.label} was withdrawn since this run planned (its {MANIFEST} is "
                            "gone; see the quality gate's alert): rebuild it with build_features, then trigger "
                            f"batch_inference with {{\"month\": \"{run.partition.label}\"}}") from None
    if now.data_dir != run.features_data_dir:
        raise PipelineError(republished(table, run.partition, run.features_data_dir, now.data_dir))
    return lake


def _contract(settings: Settings) -> Any:
    from tenfold.workloads import get_workload

    return get_workload(settings).contract


def publish(settings: Settings, run: InferenceRun | Mapping[str, Any]) -> Published:
    """Publish the partition's requests (the Spark path publishes none)."""
    from tenfold.inference.runs import partition_rows, publish_requests

    r = InferenceRun.from_xcom(run)
    if r.path == "spark":
        return Published(requests=0, rows=0, seconds=0.0)
    lake = _check_unchanged(settings, r)
    rows = partition_rows(lake, settings.storage.features_table, r.partition, _contract(settings))
    # Checked again after the read, which follows a re-publish that lands while it reads: the requests are cut from
    # the build this run planned (and records), never from one published meanwhile.
    _check_unchanged(settings, r, lake)
    if rows.num_rows != r.rows:
        raise PipelineError(f"features partition {r.month} holds {rows.num_rows} rows, its manifest {r.rows}: re-run build_features")
    report = publish_requests(settings, r.run_key, r.month, r.model_version, rows,
                              rows_per_message=r.rows_per_message)
    log.info("published %d requests (%d rows) in %.1f s", report.requests, report.rows, report.seconds)
    return Published(requests=report.requests, rows=report.rows, seconds=report.seconds)


def score(settings: Settings, run: InferenceRun | Mapping[str, Any], *, pool_env: Mapping[str, str] | None = None,
          say: Callable[[str], None] | None = None) -> Scored:
    """Wait until every request is scored or dead-lettered (the local pool runs meanwhile), or run Spark."""
    import time

    from tenfold.inference.runs import InferenceRunError, expected_ids, wait_accounted

    r = InferenceRun.from_xcom(run)
    started = time.monotonic()
    _check_unchanged(settings, r)  # never score (or wait for scores of) other features than were planned
    if r.path == "spark":
        from tenfold.inference import spark  # H2's bulk path: pyspark only when this path is taken

        # A run cleared long after it planned must not publish its model's scores over a later-planned run's (as
        # publish_results refuses for the Pub/Sub path); the job publishes them itself, so the check comes first.
        _refuse_to_replace_newer_scores(Lake.from_settings(settings), settings.storage.scores_table, r)
        # The run's id names the job's staging folder and record, so a retry stops the job a killed try left running.
        written = spark.score_partition(settings, r.model_version, r.partition, run_id=r.airflow_run_id,
                                        features_data_dir=r.features_data_dir, planned_at=r.planned_at or None)
        return Scored(scored=0, dead_lettered=0, seconds=time.monotonic() - started, rows_written=int(written))
    ids = expected_ids(r.run_key, r.month, r.requests)
    say = say or log.info
    try:
        if settings.is_local:
            from tenfold.inference.pool import WorkerPool

            with WorkerPool(settings, env=dict(pool_env or {}), preload=r.model_version) as pool:
                acc = wait_accounted(settings, r.run_key, ids, alive=pool.alive, say=say)
        else:
            acc = wait_accounted(settings, r.run_key, ids, say=say)
    except InferenceRunError as exc:
        raise WaitIncomplete(str(exc)) from exc
    return Scored(scored=len(acc.scored), dead_lettered=len(acc.dead_lettered), seconds=time.monotonic() - started)


class WaitIncomplete(PipelineError):
    """The wait for a run's results ran out, or the local worker pool is gone: a retry resumes it (it counts what
    the result store holds; request ids are deterministic), so Airflow retries it (failed at once, the month's
    scores were left unpublished while the message itself said to retry)."""

    retryable = True


def publish_results(settings: Settings, run: InferenceRun | Mapping[str, Any],
                    scored: Scored | Mapping[str, Any] | None = None, *, command_line: bool = False) -> dict[str, Any]:
    """Check the invariant and publish the scores partition; returns the run's figures.

    ``command_line``: the run is :func:`run_all`'s (``python -m tenfold.pipelines.batch_inference``), not a DAG
    run's, so a refusal says to run the command again under the run's id, not to clear an Airflow task."""
    from tenfold.inference.runs import (
        InferenceRunError,
        account,
        check_invariant,
        collect,
        dead_rows,
        expected_ids,
        publish_scores,
    )
    from tenfold.inference.scoring import scores_schema
    from tenfold.inference.store import RunStore

    r = InferenceRun.from_xcom(run)
    lake = Lake.from_settings(settings)
    table = settings.storage.scores_table
    if r.path == "spark":
        s = Scored.from_xcom(scored) if scored is not None else None
        manifest = lake.read_manifest(table, r.partition)
        if (made_from := manifest.extra.get("features_data_dir")) != r.features_data_dir:
            raise PipelineError(f"the scores of {r.month} were made from features {made_from}, but this run planned "
                                f"{r.features_data_dir}: trigger a new batch_inference run for the month")
        if (made_by := manifest.extra.get("model_version")) != r.model_version:  # another run's, published since
            raise PipelineError(f"the scores of {r.month} are model {made_by}'s (run {manifest.run_id}), not {r.model_version}'s "
                                "this run planned: another run published over them; trigger a new batch_inference run "
                                "for the month if its scores should be this model's")
        if manifest.rows != r.rows or (s is not None and s.rows_written != r.rows):
            raise PipelineError(f"the Spark path scored {manifest.rows} rows of {r.month}, the partition holds {r.rows}: "
                                "the invariant (count in = count out) does not hold; "
                                + (f"run {_again(r)}" if command_line else "clear this month's publish_results task")
                                + f', or trigger batch_inference with the run conf {{"month": "{r.month}"}}')
        return {"month": r.month, "path": "spark", "rows_in": r.rows, "rows_out": manifest.rows, "requests_dead_lettered": 0,
                "model_version": r.model_version, "scores": lake.uri_of(lake.partition_path(table, r.partition))}
    contract = _contract(settings)
    store = RunStore.of(settings, r.run_key)
    acc = account(store, expected_ids(r.run_key, r.month, r.requests))
    schema = scores_schema(contract)
    # No result at all (a month without rows: no requests) gives no columns either: publish the empty scores table.
    scores = collect(store, acc) if acc.scored else schema.empty_table()
    keys = list(contract.key_columns)
    distinct = scores.group_by(keys).aggregate([]).num_rows if scores.num_rows else 0
    if (pending := acc.requests - acc.accounted) > 0:
        # Requests sent again (`tenfold dlq replay`) are in flight until scored or dead-lettered anew: this task
        # counts, it does not wait; `score` waits for them (locally it runs the workers that score them).
        raise PipelineError(
            f"{pending} of {r.requests} requests of {r.month} are neither scored nor dead-lettered yet (sent again by "
            f"`tenfold dlq replay`, or still in flight): nothing was published. "
            + (f"Run {_again(r)}: it waits for them (locally it runs the workers that score them), then counts them"
               if command_line else f"Clear this run's score_month.score task of {r.month} with its downstream tasks; "
               "it waits for them, then publish_results counts them"))
    try:
        figures = check_invariant(requests_in=r.requests, rows_in=r.rows, acc=acc, rows_out=scores.num_rows,
                                  rows_dead=dead_rows(store, acc), distinct_keys=distinct)
    except InferenceRunError as exc:
        raise PipelineError(str(exc)) from exc
    if scores.num_rows and (others := set(scores["model_version"].unique().to_pylist()) - {r.model_version}):
        raise PipelineError(f"the results of run {r.run_key} hold scores of model {sorted(others)}, not of "
                            f"{r.model_version} this run planned: trigger a new run")
    limit = settings.inference.max_dead_lettered_fraction
    if acc.dead_lettered and (scores.num_rows == 0 or len(acc.dead_lettered) > limit * r.requests):
        # A partial month would replace a complete one (an earlier run's) with fewer rows: publish nothing.
        raise PipelineError(
            f"{len(acc.dead_lettered)} of {r.requests} requests of {r.month} ({figures['rows_dead_lettered']} rows) were "
            f"dead-lettered, above settings.inference.max_dead_lettered_fraction={limit:g}: nothing was published and "
            f"the scores partition keeps what it had. See why with `tenfold dlq inspect --run {r.run_key}`; once fixed, "
            # From the command line the run's own publish sends its dead letters again: a `dlq replay` before it sent
            # each twice (twice the deliveries of a request that kills its worker).
            + (f"run {_again(r)} (its publish sends the dead letters again, then it waits for them and counts them)"
               if command_line else
               f"`tenfold dlq replay --run {r.run_key}` and clear this run's score_month.score task of {r.month} with "
               "its downstream tasks (score waits for the replayed requests, publish_results counts them)")
            + ", or raise the setting to publish the month without them")
    # Re-published since the plan (a cleared, late run): its scores are of a build no longer published, and would
    # replace those a later run made of the new one, with no event left to score the month again.
    _check_unchanged(settings, r, lake)
    _refuse_to_replace_newer_scores(lake, table, r)
    manifest = publish_scores(lake, table, r.partition, scores, schema, keys, run_id=r.airflow_run_id,
                              extra={"model_version": r.model_version, "features_data_dir": r.features_data_dir,
                                     "dead_lettered_requests": len(acc.dead_lettered),
                                     **({"planned_at": r.planned_at} if r.planned_at else {})})
    if acc.dead_lettered:
        log.warning("%d requests (%d rows) of %s were dead-lettered and are not in the scores: `tenfold dlq inspect "
                    "--run %s`", len(acc.dead_lettered), figures["rows_dead_lettered"], r.month, r.run_key)
    return {"month": r.month, "path": "pubsub", **figures, "model_version": r.model_version,
            "scores": lake.uri_of(lake.partition_path(table, r.partition)), "data_dir": manifest.data_dir}


def _again(r: InferenceRun) -> str:
    """The command that runs ``r`` (a :func:`run_all` run) again as the same run: its run id and the month and model
    version it planned give the same run key, so it waits for the requests still out and counts the results kept."""
    import shlex

    conf = json.dumps({"month": r.month, "version": r.model_version})
    return (f"`python -m tenfold.pipelines.batch_inference --conf {shlex.quote(conf)} "
            f"--run-id {shlex.quote(r.airflow_run_id)}` again")


def _refuse_to_replace_newer_scores(lake: Lake, table: str, r: InferenceRun) -> None:
    """A run cleared from ``score`` long after it planned (its dead letters replayed, as its own refusal says to)
    published its model's scores over those another run published since, of the model that serves now: the month was
    left scored by a retired model, and no event comes to score it again. The Spark path refuses the same case, before
    its job runs (the job publishes its own scores)."""
    try:
        now = lake.read_manifest(table, r.partition)
    except (MissingManifestError, CorruptManifestError):
        return  # nothing valid published, nothing to keep: the publish replaces a damaged manifest (repairs the month)
    made_by = now.extra.get("model_version")
    if not r.planned_at or now.run_id == r.airflow_run_id or made_by == r.model_version:
        return
    # Which was planned later, not which published later: a run planned before this one (a backfill's, which
    # max_active_runs does not hold back) that publishes first must not keep this run's newer model out. Scores
    # published before runs kept their plan's time: their publication's.
    theirs = str(now.extra.get("planned_at") or now.created_at)
    if dt.datetime.fromisoformat(theirs) > dt.datetime.fromisoformat(r.planned_at):
        raise PipelineError(
            f"the scores of {r.month} are of a run planned at {theirs} (run {now.run_id}, model {made_by}), after "
            f"this run planned model {r.model_version} ({r.planned_at}): nothing was published over them; trigger a new "
            f"batch_inference run with the run conf {{\"month\": \"{r.month}\"}} if the month's scores should be "
            "remade")


def run_all(settings: Settings, conf: Mapping[str, Any] | None = None, *, run_id: str | None = None) -> dict[str, Any]:
    """Every step in this process (what ``main`` and the demo call); returns :func:`publish_results`' figures."""
    rid = run_id or f"manual__{dt.datetime.now(dt.UTC):%Y-%m-%dT%H:%M:%S.%f}"
    planned = plan(settings, rid, conf)
    try:
        publish(settings, planned)
        scored = score(settings, planned)
    except WaitIncomplete as exc:
        # Its advice is a DAG run's (retry the task, clear publish): run as the same run again, which does both. The
        # same command without --run-id made a new run, and every request was published and scored again.
        raise PipelineError(f"{exc}. From the command line, either is: run {_again(planned)} (its publish sends the "
                            "requests not yet scored again, and it waits for them; the results written are kept)") from exc
    except KeyboardInterrupt:
        print(f"interrupted: run {_again(planned)} to resume this run (the results written are kept)", file=sys.stderr)
        raise
    return publish_results(settings, planned, scored, command_line=True)


def main(argv: list[str] | None = None) -> int:
    """Every step in this process, without Airflow (the run conf as the DAG takes it)."""
    parser = argparse.ArgumentParser(prog="python -m tenfold.pipelines.batch_inference", description=main.__doc__)
    parser.add_argument("--conf", default="{}", help=f"JSON run conf with any of {', '.join(CONF_KEYS)}")
    parser.add_argument("--run-id", default=None, help="default: manual__<UTC time>")

    def body(settings: Settings, args: argparse.Namespace) -> int:
        print(json.dumps(run_all(settings, args.conf, run_id=args.run_id), indent=2))
        return 0

    return run_main(parser, argv, body)


if __name__ == "__main__":
    raise SystemExit(main())
