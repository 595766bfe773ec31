"""The steps of ``dags/build_features.py``: ingest -> build_features -> validate -> publish, for one month.

The DAG file only wires these functions into tasks; each is idempotent, so Airflow may retry any of
them, and a backfill of the same months twice gives the same lake (same manifest content):

* every run gets a :func:`run_key`, a short digest of (DAG, run id, month). The features are staged at
  ``_staging/features/year=/month=/<key>/``: a retried build overwrites its own staging (the job writes
  with mode ``overwrite``), never another run's, and never appends;
* :func:`ingest_step` publishes the month's raw tables (a no-op when they are already there, byte for
  byte), ingests any earlier month of the history window that was never ingested, then gates every
  raw input the Spark job will read: files intact and raw flights through ``expectations/raw_flights.json``.
  A corrupt input (a truncated file, malformed rows) is quarantined and stops the run before Spark;
* :func:`build_step` runs the Spark job locally (``spark-submit``); in dev and prod the DAG submits the
  same job to Dataproc with :func:`dataproc_batch`;
* :func:`validate_step` gates the staged features through ``expectations/features.json``; a refused
  batch is quarantined, alerted and never published;
* :func:`publish_step` publishes the staged batch atomically (content-addressed, ``_SUCCESS`` last)
  and removes the staging folder; a retry after a successful publish finds the manifest and returns it.

Run one month by hand without Airflow: ``python -m tenfold.pipelines.build_features 2013-02``.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import sys
from typing import Any

from tenfold.config import Settings
from tenfold.data.lake import Lake, Partition, month_range
from tenfold.features import schema
from tenfold.monitoring.alerts import send_alert
from tenfold.quality.gate import ValidationFailed, ValidationReport, validate_partition, validate_published

log = logging.getLogger(__name__)

FEATURES_TABLE = schema.TABLE
RAW_FLIGHTS = "flights"
RAW_SUITE = "raw_flights"
FEATURES_SUITE = "features"
# The raw tables the Spark job reads for the month itself (flights also for its history window).
MONTH_INPUTS = ("flights", "weather", "planes", "airports")


class InputsRefused(ValidationFailed):
    """One or more raw inputs failed the gate; each was quarantined. Carries every report."""

    def __init__(self, reports: list[ValidationReport], *, alerted: bool) -> None:
        self.reports = reports
        super().__init__(reports[0], alerted=alerted)
        self.args = ("\n".join(str(ValidationFailed(r)) for r in reports),)


def partition_for(logical_date: dt.datetime | dt.date | None, month: str | None = None) -> Partition:
    """The month a run builds: the ``month`` param (``YYYY-MM``) when given, else the logical date's month.

    The DAG runs on the first of each month, so the run at logical date ``2013-02-01`` (``airflow dags
    test build_features 2013-02-01``, or a backfill from 2013-01-01) builds February.
    """
    if month:
        return Partition.parse(month)
    if logical_date is None:
        raise ValueError("this run has no logical date: trigger it with the param month=YYYY-MM, e.g. 2013-02")
    return Partition.from_date(logical_date)


def run_key(dag_id: str, run_id: str, part: Partition) -> str:
    """12 lowercase hex digits naming a run's staging and quarantine folders (safe in paths and batch ids)."""
    return hashlib.sha256(f"{dag_id}\0{run_id}\0{part.label}".encode()).hexdigest()[:12]


def staging_uri(lake: Lake, part: Partition, key: str) -> str:
    return lake.uri_of(lake.staging_path(FEATURES_TABLE, part, key))


def plan(settings: Settings, *, dag_id: str, run_id: str, logical_date: dt.datetime | None, month: str | None) -> dict[str, Any]:
    """What a run works on (JSON-able, passed between tasks): month, key, staging URI, run id."""
    part = partition_for(logical_date, month)
    key = run_key(dag_id, run_id, part)
    lake = Lake.from_settings(settings)
    return {"month": part.label, "key": key, "staging_uri": staging_uri(lake, part, key), "run_id": run_id}


def history_window(lake: Lake, part: Partition) -> list[Partition]:
    """The published flights months the job aggregates over for ``part`` (the job's own rule)."""
    from tenfold.features.job import DEFAULT_HISTORY_MONTHS, history_parts

    return history_parts(lake, part, DEFAULT_HISTORY_MONTHS)


def ingest_step(settings: Settings, run: dict[str, Any], *, first_month: str, last_month: str | None = None) -> dict[str, Any]:
    """Publish the month's raw tables (and any never-ingested month since ``first_month``), then gate them.

    Raises :class:`InputsRefused` (after quarantining each bad input and one alert listing them all), or
    ``ValueError`` when the month lies outside ``first_month``..``last_month`` (the DAG's range).
    """
    from tenfold.data.ingest import ingest_month

    lake = Lake.from_settings(settings)
    part = Partition.parse(run["month"])
    first = Partition.parse(first_month)
    if part < first or (last_month and part > Partition.parse(last_month)):
        raise ValueError(
            f"{part.label} is outside this pipeline's months ({first.label} to {last_month or 'now'}): "
            "trigger the DAG with a logical date in that range, or with the param month=YYYY-MM"
        )
    start = first
    ingested = []
    for month in month_range(start, part):
        # Earlier months only when not published (never ingested, or withdrawn to quarantine by an
        # earlier run): a published month is left as it is, so the gate below sees what the job reads.
        if month == part or not all(lake.has_manifest(t, month) for t in MONTH_INPUTS):
            ingest_month(lake, month, run_id=run["run_id"])
            ingested.append(month.label)
    refused: list[ValidationReport] = []
    checked = []
    for month in [*history_window(lake, part), part]:
        try:
            report = validate_published(lake, RAW_FLIGHTS, month, RAW_SUITE, settings=settings, key=run["key"], alert=False)
            checked.append(report.summary())
        except ValidationFailed as exc:
            refused.append(exc.report)
    for table in MONTH_INPUTS[1:]:
        try:
            validate_published(lake, table, part, None, settings=settings, key=run["key"], alert=False, docs=False)
        except ValidationFailed as exc:
            refused.append(exc.report)
    if refused:
        send_alert(
            settings,
            f"build_features {part.label}: {len(refused)} raw input(s) refused before Spark",
            {
                f"{r.table} {r.partition}": f"{'; '.join(o.describe() for o in r.failures)} "
                f"(quarantined at {r.quarantine_uri}; Data Docs {r.data_docs})"
                for r in refused
            }
            | {"what_to_do": "re-run the DAG for that month: it re-ingests every input that was quarantined"},
        )
        raise InputsRefused(refused, alerted=True)
    return {**run, "ingested": ingested, "inputs_checked": checked}


def build_step(settings: Settings, run: dict[str, Any]) -> dict[str, Any]:
    """Run the Spark job for the month into this run's staging folder (local: spark-submit)."""
    from tenfold.features.submit import spark_submit_features

    lake = Lake.from_settings(settings)
    # A retry starts from an empty staging folder of its own: nothing half-written is ever validated.
    lake.discard(run["staging_uri"])
    spark_submit_features(settings, Partition.parse(run["month"]), run["staging_uri"], run_id=run["run_id"])
    return run


def dataproc_batch(settings: Settings, run: dict[str, Any]) -> dict[str, Any]:
    """The Dataproc batch body and id stem for the month (dev/prod); the id gets the try number appended."""
    from tenfold.features.dataproc import batch_id, features_batch

    part = Partition.parse(run["month"])
    return {
        "batch": features_batch(settings, part, run["key"], output=run["staging_uri"]),
        "batch_id_stem": batch_id(settings, part, run["key"]),
    }


def validate_step(settings: Settings, run: dict[str, Any]) -> dict[str, Any]:
    """Gate the staged features; raises :class:`ValidationFailed` after quarantine, Data Docs and alert."""
    part = Partition.parse(run["month"])
    report = validate_partition(settings, FEATURES_TABLE, part, run["staging_uri"], FEATURES_SUITE, attempt=run["key"])
    return {**run, "rows": report.rows, "expectations": report.evaluated, "data_docs": report.data_docs}


def publish_step(settings: Settings, run: dict[str, Any]) -> dict[str, Any]:
    """Publish the validated staging folder as the month's features partition, then drop the staging."""
    from tenfold.data.lake import MANIFEST, LakeError

    lake = Lake.from_settings(settings)
    part = Partition.parse(run["month"])
    staged = lake._path(run["staging_uri"])
    if lake.fs.get_file_info(staged).type.name == "NotFound":
        # A retry after a publish that succeeded but whose task died before reporting it.
        if lake.has_manifest(FEATURES_TABLE, part):
            manifest = lake.read_manifest(FEATURES_TABLE, part)
            log.info("staging already published: %s", manifest.content)
            return {"month": part.label, "manifest": lake.uri_of(lake.manifest_path(FEATURES_TABLE, part)), **manifest.content}
        raise LakeError(f"nothing to publish for {part.label}: {run['staging_uri']} is gone and no {MANIFEST} exists; re-run build_features")
    manifest = lake.publish(
        FEATURES_TABLE, part, staged, run_id=run["run_id"], extra=schema.manifest_extra(validated_by=FEATURES_SUITE)
    )
    lake.discard(staged)
    return {"month": part.label, "manifest": lake.uri_of(lake.manifest_path(FEATURES_TABLE, part)), **manifest.content}


def main(argv: list[str] | None = None) -> int:
    """Run the four steps for one month in this process (no Airflow): ``python -m tenfold.pipelines.build_features 2013-02``."""
    from tenfold.config import get_settings

    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m tenfold.pipelines.build_features YYYY-MM", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = get_settings()
    run = plan(settings, dag_id="manual", run_id=f"manual-{args[0]}", logical_date=None, month=args[0])
    try:
        run = ingest_step(settings, run, first_month=args[0])
        build_step(settings, run)
        validate_step(settings, run)
        print(publish_step(settings, run))
    except ValidationFailed as exc:
        print(exc, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
