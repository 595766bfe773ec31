"""The steps of ``dags/build_features.py``: plan -> ingest -> build -> validate -> publish, for one month.

The DAG file only wires these functions into tasks (through :func:`tenfold.pipelines.common.run_step`);
each is idempotent, so Airflow may retry any of them, and a backfill of the same months twice gives
the same lake (same manifest content):

* :func:`plan` names the run: its :class:`FeaturesRun` carries the month, the run key and a
  ``staging_key`` (a digest of DAG, run and month). The features are staged at
  ``_staging/features/year=/month=/<staging_key>/``: a retried build overwrites its own staging (the
  job writes with mode ``overwrite``), never another run's, and never appends;
* :func:`ingest` publishes the month's raw tables (a no-op when they are already there, byte for
  byte), ingests any earlier month of the DAG's range that was never ingested, then gates every raw
  input the Spark job will read: files intact and each table through its raw suite
  (the workload's ``raw_<table>.json``). A corrupt input (a truncated file, malformed rows) is quarantined
  and stops the run before Spark. So is a source that cannot be read at all (an unparseable or
  truncated file, a missing column, a wrong encoding...): its raw input is quarantined, one alert names
  the file, table, month and where in the file, and the task fails without retries (:class:`SourceRefused`);
* :func:`build` runs the Spark job (:mod:`tenfold.features.runners`: spark-submit locally, a Dataproc
  batch in dev and prod, the same graph everywhere);
* :func:`validate` gates the staged features through the workload's ``features.json``; a refused batch
  is quarantined, alerted and never published; cleared after :func:`publish`, it finds the month published
  and passes without validating anything;
* :func:`publish` publishes the workload's lookup tables the job staged beside the features (as
  ``<settings.storage.lookups_table>_<name>``, the feature definition's version in each manifest), then
  the staged features, each atomically (content-addressed, ``_SUCCESS`` last), and removes the staging
  folders; the features manifest comes last, so a month whose features are visible always has its
  lookups (what online serving loads, :mod:`tenfold.features.online`). A retry after a successful
  publish finds the manifest and returns it; a retry in between republishes identical lookups (a no-op).

The months the DAG covers come from ``settings.pipelines.build_features``. Failures a retry cannot
fix raise :class:`~tenfold.pipelines.common.PipelineError`.

Run one month by hand without Airflow: ``python -m tenfold.pipelines.build_features 2013-02``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import sys
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from tenfold.config import Settings
from tenfold.data.lake import Lake, LakeError, Manifest, MissingManifestError, Partition, month_range
from tenfold.monitoring.alerts import send_alert
from tenfold.pipelines.common import (
    PipelineError,
    PipelineInputError,
    RunState,
    digest_key,
    run_conf,
    run_key,
    run_main,
    task_timeout_s,
)
from tenfold.quality.gate import (
    READ_CHECK,
    AlreadyRefused,
    ValidationFailed,
    ValidationReport,
    validate_partition,
    validate_published,
)
from tenfold.quality.suites import SuiteError
from tenfold.workloads import SourceMissing, Workload, get_workload

log = logging.getLogger(__name__)

DAG_ID = "build_features"
CONF_KEYS = ("month",)  # the run conf the DAG reads (as its param month)


@dataclass(frozen=True)
class FeaturesRun(RunState):
    """What passes between the tasks of one run (as XCom)."""

    run_key: str
    run_id: str
    month: str
    staging_key: str  # 12 hex digits: (DAG, run, month), safe in paths and Dataproc batch ids
    staging_uri: str
    ingested: tuple[str, ...] = ()
    inputs_checked: tuple[str, ...] = ()
    rows: int | None = None
    expectations: int | None = None
    data_docs: str | None = None

    @property
    def partition(self) -> Partition:
        return Partition.parse(self.month)


class InputsRefused(PipelineError):
    """One or more raw inputs failed the gate; each was quarantined and one alert listed them all."""

    def __init__(self, reports: list[ValidationReport], *, alerted: bool, undelivered: tuple[str, ...] = ()) -> None:
        self.reports = reports
        super().__init__("\n".join(str(ValidationFailed(r)) for r in reports), alerted=alerted, undelivered=undelivered)


class SourceRefused(PipelineError):
    """A raw source could not be read (or does not cover the month): nothing of that month was published, its raw
    input (when there was one) was quarantined and one alert was sent. ``error`` is the ingest's own error."""

    def __init__(self, error: Exception, *, alerted: bool, undelivered: tuple[str, ...] = ()) -> None:
        self.error = error
        super().__init__(str(error), alerted=alerted, undelivered=undelivered)


def partition_for(logical_date: dt.datetime | dt.date | None, month: str | None = None) -> Partition:
    """The month a run builds: the ``month`` param (``YYYY-MM``) when given, else the logical date's month.

    A month's scheduled run has the month's first day as its logical date (its data interval; the run is due once
    the month is over), so the run at logical date ``2013-02-01`` (``airflow dags test build_features
    2013-02-01``, a backfill from 2013-01-01, or a trigger at that logical date) builds February.
    """
    if month:
        try:
            return Partition.parse(month)
        except ValueError as exc:
            raise PipelineInputError(str(exc)) from exc
    if logical_date is None:
        raise PipelineInputError("this run has no logical date: trigger it with the param month=YYYY-MM, e.g. 2013-02")
    return Partition.from_date(logical_date)


def staging_uri(settings: Settings, lake: Lake, part: Partition, key: str) -> str:
    return lake.uri_of(lake.staging_path(settings.storage.features_table, part, key))


def plan(settings: Settings, *, dag_id: str, run_id: str, logical_date: dt.datetime | None, month: str | None,
         conf: Mapping[str, Any] | None = None) -> FeaturesRun:
    """Name the run: the month it builds and where it stages its output. ``conf``: the run conf, whose only key is
    ``month`` (its value comes validated, as the DAG's param ``month``)."""
    run_conf(conf, CONF_KEYS)
    part = partition_for(logical_date, month)
    key = digest_key(dag_id, run_id, part.label)
    return FeaturesRun(run_key=run_key(run_id), run_id=run_id, month=part.label, staging_key=key,
                       staging_uri=staging_uri(settings, Lake.from_settings(settings), part, key))


def history_window(workload: Workload, lake: Lake, part: Partition) -> list[Partition]:
    """The published months of the workload's history table the job aggregates over for ``part``."""
    from tenfold.features.job import history_parts

    sources = workload.sources
    if sources.history_table is None:
        return []
    return history_parts(lake, part, sources.history_months, sources.history_table)


def months(settings: Settings) -> tuple[Partition, Partition | None]:
    """The first and last month the DAG covers (``settings.pipelines.build_features``; last None: now)."""
    dag = settings.pipelines.dag(DAG_ID)
    first = Partition.parse(dag.first_month) if dag.first_month else None
    if first is None:
        raise PipelineError(f"settings.pipelines.{DAG_ID}.first_month is not set: the DAG needs the first month it covers")
    return first, Partition.parse(dag.last_month) if dag.last_month else None


def past_last_month(settings: Settings, logical_date: dt.datetime | None, month: str | None = None) -> str | None:
    """Why a scheduled run has nothing to build (its month is past the DAG's last month), or None.

    The DAG has no ``end_date`` (see :func:`tenfold.pipelines.common.start_date`), so once its months are over the
    scheduler still starts a run each month (and one when the DAG is unpaused): that run is skipped, not failed.
    A run triggered or backfilled for such a month is refused by :func:`ingest` instead.
    """
    _, last = months(settings)
    part = partition_for(logical_date, month)
    if last is None or part <= last:
        return None
    return (f"{part.label} is past this pipeline's last month, {last.label} (settings.pipelines.{DAG_ID}.last_month): "
            "nothing to build; trigger the DAG with the param month=YYYY-MM to build an earlier month")


def ingest(settings: Settings, run: FeaturesRun) -> FeaturesRun:
    """Publish the month's raw tables (and any never-ingested month of the DAG's range), then gate them.

    Raises :class:`SourceRefused` when a source cannot be read (its raw input quarantined, one alert),
    :class:`InputsRefused` (after quarantining each bad input and one alert listing them all), or
    :class:`PipelineError` when the month lies outside the DAG's months.
    """
    from tenfold.data.ingest import IngestError, ingest_month

    lake = Lake.from_settings(settings)
    workload = get_workload(settings)
    inputs = workload.sources.month_inputs
    part = run.partition
    first, last = months(settings)
    if part < first or (last and part > last):
        raise PipelineInputError(
            f"{part.label} is outside this pipeline's months ({first.label} to {last.label if last else 'now'}): "
            "trigger the DAG with a logical date in that range, or with the param month=YYYY-MM"
        )
    ingested = []
    refused: list[ValidationReport] = []

    def before_replacing(month: Partition) -> Callable[[str, str], None]:
        def check(table: str, staged: str) -> None:
            # A delivery that differs from the month already published is validated before it replaces it: a
            # publish removes the replaced data, and a refused delivery must leave the good month as it was.
            suite = workload.raw_suites.get(table)
            if suite is not None and lake.would_replace(table, month, staged):
                validate_partition(lake, table, month, staged, suite, settings=settings, attempt=run.staging_key,
                                   alert=False)
        return check

    for month in month_range(first, part):
        # Earlier months only when not published (never ingested, or withdrawn to quarantine by an
        # earlier run): a published month is left as it is, so the gate below sees what the job reads.
        if month == part or not all(lake.has_manifest(t, month) for t in inputs):
            try:
                ingest_month(lake, month, run_id=run.run_id, workload=workload, quarantine_key=run.staging_key,
                             check_staged=before_replacing(month))
            except (IngestError, SourceMissing) as exc:
                # Reading the same bytes again gives the same error: refuse now, once, like a failed suite.
                raise _refuse_source(settings, part, month, exc) from exc
            except ValidationFailed as exc:  # the published month stays; the delivery is quarantined
                refused.append(exc.report)
                break
            ingested.append(month.label)
    checked = []
    # Every file the job will read is checked intact; tables with a raw suite are validated too, over
    # the history window as well as the month (a corrupt history month would poison the aggregates).
    history = history_window(workload, lake, part)
    to_check = [(t, m) for t in inputs for m in ([*history, part] if t == workload.sources.history_table else [part])]
    elsewhere: Exception | None = None  # another run withdrew an input meanwhile: it quarantined and alerted that one
    for table, month in [] if refused else to_check:
        suite = workload.raw_suites.get(table)
        try:
            report = validate_published(lake, table, month, suite, settings=settings, key=run.staging_key, alert=False,
                                        docs=suite is not None)
            if suite is not None:
                checked.append(report.summary())
        except ValidationFailed as exc:
            refused.append(exc.report)
        except MissingManifestError as exc:
            # Published when this run looked (ingested above, or listed in the history window): another run withdrew
            # it meanwhile (refused or found corrupt, and quarantined). A retry would only publish it again.
            elsewhere = PipelineError(f"{table} {month.label} was withdrawn by another run while this one validated it "
                                      f"(see its quarantine): {exc}; fix the input, then run {part.label} again")
            elsewhere.__cause__ = exc
            break
        except (AlreadyRefused, SuiteError) as exc:  # refused here too, and withdrawn first by the run beside this one;
            elsewhere = exc  # or a raw suite Great Expectations cannot evaluate (it left this input published)
            break
    if refused:
        # What this run withdrew is alerted here (each was quarantined with alert=False), whatever stopped the checks:
        # the other run's alert names only its own.
        also = {"also": f"the checks stopped there: {elsewhere}"} if elsewhere is not None else {}
        sent = send_alert(
            settings,
            f"build_features {part.label}: {len(refused)} raw input(s) refused before Spark",
            {
                f"{r.table} {r.partition}": f"{'; '.join(o.describe() for o in r.failures)} "
                f"(quarantined at {r.quarantine_uri}; Data Docs {r.data_docs or 'not written (see the task log)'})"
                for r in refused
            }
            | also | {"what_to_do": _what_to_do(refused, workload.sources.name)},
        )
        raise InputsRefused(refused, alerted=sent.delivered, undelivered=sent.failed)  # the callback sends to those
    if elsewhere is not None:
        raise elsewhere
    return replace(run, ingested=tuple(ingested), inputs_checked=tuple(checked))


def _what_to_do(refused: Sequence[ValidationReport], source: str) -> str:
    """The alert's advice, per kind of refusal. Re-running alone fixes only files changed after they were published
    (the DAG re-ingests what it quarantined); a delivery or a published month that failed its suite is read again as
    it is, refused again, and alerted again, until the source or the suite's bound is fixed."""
    said = []
    if any(READ_CHECK not in r.failed_expectations for r in refused):
        said.append(f"fix the delivery in {source} (or, if a bound is wrong rather than the data, the table's "
                    "raw_<table>.json suite), then re-run the DAG for that month: the same input is refused again")
    if any(READ_CHECK in r.failed_expectations for r in refused):
        said.append("files changed after they were published: re-run the DAG for that month, which re-ingests every "
                    "input that was quarantined")
    if any(not r.withdrawn for r in refused):
        said.append("a redelivery refused before it replaced its month: the published month was kept")
    return "; ".join(said)


def _refuse_source(settings: Settings, part: Partition, month: Partition, exc: Exception) -> SourceRefused:
    """One alert for a source ingest could not read, and the non-retryable error that fails the task."""
    from tenfold.data.ingest import SourceUnreadable

    if isinstance(exc, SourceUnreadable):
        title = f"build_features {part.label}: source {exc.table} of {month.label} cannot be read; refused before Spark"
        details = exc.details()
    else:
        title = f"build_features {part.label}: the source has no usable data for {month.label}; refused before Spark"
        details = {"month": month.label, "error": str(exc),
                   "what_to_do": "install or fix the source (see the error), then re-run the DAG for that month"}
    log.error("%s: %s", title, exc)
    sent = send_alert(settings, title, details)
    return SourceRefused(exc, alerted=sent.delivered, undelivered=sent.failed)  # the failure callback sends to those


JOB_WAIT_MARGIN_S = 120.0


def build(settings: Settings, run: FeaturesRun, *, attempt: int = 1, client: Any = None) -> FeaturesRun:
    """Run the Spark job for the month into this run's staging folder (spark-submit here, Dataproc in the cloud)."""
    from tenfold.features.runners import feature_job

    if settings.is_local:
        from tenfold.features.job import lookups_staging_uri
        from tenfold.features.submit import job_record, stop_earlier_job

        # A try killed outright left its spark-submit writing into these folders: it is stopped before they are
        # emptied (a file it made while they were deleted failed the delete, and the job went on writing).
        stop_earlier_job(job_record(settings, run.staging_uri))
        # A retry starts from empty staging folders of its own: nothing half-written is ever validated.
        lake = Lake.from_settings(settings)
        lake.discard(run.staging_uri)
        lake.discard(lookups_staging_uri(run.staging_uri))
    # The job's own wait ends before Airflow's execution_timeout kills the task, so a batch that overruns is
    # cancelled by the task rather than left running.
    job = feature_job(settings, timeout_s=max(60.0, task_timeout_s(settings, DAG_ID) - JOB_WAIT_MARGIN_S), client=client)
    job.run(run.partition, run.staging_uri, key=run.staging_key, attempt=attempt)
    return run


def _published_earlier(lake: Lake, table: str, run: FeaturesRun) -> Manifest | None:
    """The month's manifest when this run's staging folder is gone because this run published it: what
    :func:`publish` leaves (the staging dropped once the manifest is in place, then its record). None otherwise:
    a staging folder gone without that record (deleted by the bucket's lifecycle rule while the run waited to be
    cleared, or by hand) says nothing of whether this run's build was ever validated, whatever the month holds."""
    if lake.exists(lake._path(run.staging_uri)):
        return None
    if not lake.has_manifest(table, run.partition):
        return None
    # Only the record says it: the manifest's run id does not (a run cleared from plan rebuilds under the same id, and
    # its old manifest names it while the rebuild was never validated).
    if not lake.exists(_published_record(lake, run)):
        return None
    return lake.read_manifest(table, run.partition)


def _gone_why(settings: Settings) -> str:
    """Why a staging folder may be gone, where the lake's bucket deletes it (the cloud's lifecycle rule)."""
    if settings.is_local:
        return ""
    return (f" (the lake bucket deletes a staging folder after {settings.storage.lake_layout.staging_retention_days} "
            "days)")


def _published_record(lake: Lake, run: FeaturesRun) -> str:
    """Beside this run's staging folder: written by :func:`publish` once it has dropped the staging, removed when the
    run validates a batch it built again. Under the staging folders' prefix, so the bucket's lifecycle rule expires it
    with them (a run cleared after that is told to start from plan)."""
    return lake._path(run.staging_uri).rstrip("/") + ".done.json"


def _published_marker(lake: Lake, run: FeaturesRun) -> str:
    """Beside this run's staging folder: written by :func:`publish` once the month is published and before it drops
    the staging (file by file on GCS), removed once both staging folders are gone."""
    return lake._path(run.staging_uri).rstrip("/") + ".published.json"


def _finish_cut_drop(lake: Lake, table: str, run: FeaturesRun) -> None:
    """Finish the drop of this run's staging that a publish began and did not end (killed while it deleted the
    files one by one): what is left of it is part of the published month, never a batch to validate or publish.
    Validated again, the remainder was taken for the run's batch, and published over the whole month.

    Only a remainder of what that publish published (the marker lists its files: every file left is one of them,
    fewer than it held), whatever the month holds now (another run may have published since), is dropped: a batch
    the run built again since (cleared from its start: the same staging) is validated as ever."""
    from tenfold.features.job import lookups_staging_uri

    marker = _published_marker(lake, run)
    try:
        with lake.fs.open_input_stream(marker) as stream:
            body = json.loads(stream.read())
    except FileNotFoundError:
        return
    except ValueError:  # torn (a write is atomic, so by hand): judged against the month as it stands, below
        body = {}
    body = body if isinstance(body, dict) else {}
    published = body.get("files")
    if isinstance(published, list):
        remainder = lake.remainder_of(run.staging_uri, set(published), len(published))
    else:  # a marker without the list (torn by hand): what is left is a remainder of the month as it stands, if any
        current = lake.read_manifest(table, run.partition) if lake.has_manifest(table, run.partition) else None
        remainder = current is not None and lake.remainder_of(
            run.staging_uri, {f.sha256 for f in current.files}, len(current.files))
    if remainder:
        log.info("finishing the drop of %s, which the publish of this run began (%s published it)", run.staging_uri,
                 body.get("data_dir"))
        lake.discard(run.staging_uri)
        lake.discard(lookups_staging_uri(run.staging_uri))
    # The marker is written once the month is published: this run published it (its record, as publish ends).
    lake.write_json(_published_record(lake, run), {"run_id": run.run_id, "data_dir": body.get("data_dir")})
    lake.fs.delete_file(marker)


def validate(settings: Settings, run: FeaturesRun) -> FeaturesRun:
    """Gate the staged features; a refusal is quarantined, documented and alerted, then fails the run.

    Run again (cleared) after :func:`publish` dropped the staging folder, it finds the month published and
    returns the run as it is (even when an earlier build of this run was refused and quarantined); a staging folder that is gone without a publish (nor a quarantine) fails
    without retries: only the run's build stages it again.
    """
    lake = Lake.from_settings(settings)
    table = settings.storage.features_table
    _finish_cut_drop(lake, table, run)
    staged = lake._path(run.staging_uri)
    quarantined = lake.quarantine_path(table, run.partition, run.staging_key)
    if not lake.exists(staged):
        # Published by this run: so whatever the quarantine holds (a batch of this key refused before the cause was
        # mended and the run cleared from plan) is an earlier verdict, not this one.
        if (manifest := _published_earlier(lake, table, run)) is not None:
            log.info("%s %s was already validated and published by this run's publish (its staging %s is gone): "
                     "nothing to validate; %s", table, run.month, run.staging_uri, manifest.content)
            return run
        if not lake.exists(quarantined):  # a refused batch (quarantined) keeps its verdict in validate_partition below
            raise PipelineError(f"{table} {run.month}: this run's staging {run.staging_uri} is gone and the month "
                                f"is not published by this run{_gone_why(settings)}; clear the whole run from its "
                                "first task (plan) so that build stages it again")
    elif lake.exists(done := _published_record(lake, run)):
        lake.fs.delete_file(done)  # this run built again since it published (cleared from its start): a new batch
    try:
        report = validate_partition(settings, settings.storage.features_table, run.partition, run.staging_uri,
                                    get_workload(settings).features_suite, attempt=run.staging_key)
    except ValidationFailed as exc:
        from tenfold.features.job import lookups_staging_uri

        lake.discard(lookups_staging_uri(run.staging_uri))  # the refused build's lookups: never published
        raise PipelineError(str(exc), alerted=exc.alerted) from exc
    return replace(run, rows=report.rows, expectations=report.evaluated, data_docs=report.data_docs)


def publish(settings: Settings, run: FeaturesRun) -> dict[str, Any]:
    """Publish the staged lookups, then the validated features as the month's partition; drop the staging.

    Returns the manifest's content with the month and the manifest's URI (the Asset event's extra).
    """
    from tenfold.features.job import lookup_staging_uri, lookups_staging_uri, publish_lookups
    from tenfold.features.online import LOOKUPS_KEY

    lake = Lake.from_settings(settings)
    workload = get_workload(settings)
    table = settings.storage.features_table
    part = run.partition
    _finish_cut_drop(lake, table, run)
    staged = lake._path(run.staging_uri)
    manifest_uri = lake.uri_of(lake.manifest_path(table, part))
    if not lake.exists(staged):
        # A retry after a publish that succeeded but whose task died before reporting it.
        if (manifest := _published_earlier(lake, table, run)) is not None:
            lake.discard(lookups_staging_uri(run.staging_uri))  # a publish killed before dropping it
            log.info("staging already published: %s", manifest.content)
            return {"month": part.label, "manifest": manifest_uri, **manifest.content}
        raise PipelineError(f"nothing to publish for {part.label}: {run.staging_uri} is gone and the month is not "
                            f"published by this run{_gone_why(settings)}; clear the whole run from its first task (plan) "
                            "so that build stages it again")
    lookups = lookups_staging_uri(run.staging_uri)
    absent = [n for n in workload.contract.lookup_tables
              if not lake.exists(lake._path(lookup_staging_uri(lookups, n)))]
    if absent:
        raise PipelineError(f"the build of {part.label} staged no lookup tables {absent} beside {run.staging_uri}; "
                            "re-run build_features (the job writes them with the features)")
    built = publish_lookups(lake, settings.storage.lookups_table, part, lookups, workload.contract, run_id=run.run_id,
                            extra={"features_table": table})
    # The lookups' folders name the build they belong to: until this manifest is replaced, a month whose lookups
    # are of another build (this publish failed after them) is not served (features.online.read_month_lookups).
    extra = workload.contract.manifest_extra(validated_by=workload.features_suite, **{LOOKUPS_KEY: built})
    # A month published before manifests named their lookups lacks the key: its remainder is still recognised
    # (a retry across an upgrade would publish what was left of the staging as the month).
    published = _published_extra(lake, table, part, extra)
    if lake.published_already(table, part, staged, published, staged_rows=run.rows):
        # A retry after a publish that succeeded but was killed while it dropped the staging (file by file):
        # what is left is part of the published month, not a month to publish.
        manifest = lake.read_manifest(table, part)
        log.info("staging already published (its drop was cut short): %s", manifest.content)
    else:
        manifest = lake.publish(table, part, staged, run_id=run.run_id, extra=extra)
    marker = _published_marker(lake, run)
    lake.write_json(marker, {"run_id": run.run_id, "data_dir": manifest.data_dir,
                             "files": [f.sha256 for f in manifest.files]})
    lake.discard(staged)
    lake.discard(lookups)
    lake.write_json(_published_record(lake, run), {"run_id": run.run_id, "data_dir": manifest.data_dir})
    lake.fs.delete_file(marker)
    return {"month": part.label, "manifest": manifest_uri, **manifest.content}


def _published_extra(lake: Lake, table: str, part: Partition, extra: dict[str, Any]) -> dict[str, Any]:
    """``extra`` as the month's current manifest would hold it: without the lookups' folders when it does not name
    them (published before they were recorded); as it is otherwise, or when there is no readable manifest."""
    from tenfold.features.online import LOOKUPS_KEY

    try:
        current = lake.read_manifest(table, part) if lake.has_manifest(table, part) else None
    except LakeError:
        current = None
    if current is not None and LOOKUPS_KEY not in current.extra:
        return {k: v for k, v in extra.items() if k != LOOKUPS_KEY}
    return extra


def main(argv: list[str] | None = None) -> int:
    """Every step for one month in this process, without Airflow."""
    parser = argparse.ArgumentParser(prog="python -m tenfold.pipelines.build_features", description=main.__doc__)
    parser.add_argument("month", help="the month to build, YYYY-MM (within settings.pipelines.build_features)")

    def body(settings: Settings, args: argparse.Namespace) -> int:
        # A run id of its own (so a staging folder of its own): two runs of one month at once never share one.
        stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S")
        run = plan(settings, dag_id=DAG_ID, run_id=f"manual-{args.month}-{stamp}-{uuid.uuid4().hex[:6]}",
                   logical_date=None, month=args.month)
        run = ingest(settings, run)
        run = validate(settings, build(settings, run))
        print(json.dumps(publish(settings, run), indent=1))
        return 0

    return run_main(parser, argv, body)


if __name__ == "__main__":
    sys.exit(main())
