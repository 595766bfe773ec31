"""Dataproc Serverless batches for the Spark feature job (what ``dags/build_features.py`` submits in the cloud).

The DAG's task does not use the provider's operator: :class:`tenfold.features.runners.DataprocBatchJob` creates
the batch with :func:`features_batch` (``output`` = the run's staging folder, which validate and publish read) under
:func:`batch_id` with the task's try number, cancels an earlier try's batch first, and waits within the try's budget.

The job file and the zipped ``tenfold`` package are staged in the Dataproc staging bucket under
``settings.spark.dataproc_code_prefix`` (``docs/deploy.md`` shows the upload); the batch runs as the
Dataproc service account on the platform subnet, which has Private Google Access and no external IPs.
"""

from __future__ import annotations

import re
from typing import Any

from tenfold.config import Settings
from tenfold.data.partition import Partition  # not tenfold.data.lake: DAG files import this module

FEATURES_JOB = "build_features.py"
PACKAGE_ARCHIVE = "tenfold.zip"

# Dataproc batch ids: 4-63 characters, lowercase letters, digits and '-', starting with a letter and
# ending with a letter or digit (https://cloud.google.com/dataproc-serverless/docs/reference/rest/v1/projects.locations.batches/create).
_BATCH_ID = re.compile(r"^[a-z][a-z0-9-]{2,61}[a-z0-9]$")
_LABEL_VALUE = re.compile(r"[^a-z0-9_-]")


def layout_args(settings: Settings) -> list[str]:
    """The job's arguments naming the lake's own folders (``storage.lake_layout``), which its output guard refuses to
    empty: the job runs without the settings, so a lake laid out with other names is told them here."""
    layout = settings.storage.lake_layout
    return ["--lake-staging", layout.staging, "--lake-quarantine", layout.quarantine]


def subnetwork_uri(settings: Settings) -> str:
    return f"projects/{settings.project_id}/regions/{settings.region}/subnetworks/{settings.network.subnet}"


def staged_uri(settings: Settings, name: str) -> str:
    """Where a job file or archive is staged for Dataproc, e.g. ``gs://<staging>/code/build_features.py``."""
    return f"gs://{settings.storage.dataproc_staging_bucket}/{settings.spark.dataproc_code_prefix}/{name}"


def _part(part: Partition | str) -> Partition:
    return Partition.parse(part.strip()) if isinstance(part, str) else part


def _attempt(attempt: int | str) -> str:
    text = str(attempt).strip().lower()
    if not text or not re.fullmatch(r"[a-z0-9][a-z0-9-]{0,19}", text):
        raise ValueError(f"attempt {attempt!r}: use a try number or a short lowercase id (letters, digits, '-')")
    return text


def features_staging_uri(settings: Settings, part: Partition | str, attempt: int | str) -> str:
    """The lake staging folder the job writes one month to, before the quality gate publishes it.

    Mirrors :meth:`tenfold.data.lake.Lake.staging_path` without building a filesystem (the DAG calls
    this while rendering the batch, where no GCS credentials are needed): the same layout
    (``settings.storage.lake_layout``) and table (``settings.storage.features_table``).
    """
    st = settings.storage
    rel = st.lake_layout.staging_dir(st.features_table, _part(part).path, f"a{_attempt(attempt)}")
    return f"{st.lake_uri.rstrip('/')}/{rel}"


def batch_id(settings: Settings, part: Partition | str, attempt: int | str, try_number: int | None = None) -> str:
    """A Dataproc batch id unique per month and attempt, e.g. ``tenfold-dev-features-2013-01-a1``, and per try of
    it with ``try_number`` (``...-a<attempt>-<try>``).

    A retried task gets a new id (a failed batch cannot be rerun under its id); the same try gets the same id, so
    :class:`tenfold.features.runners.DataprocBatchJob` re-attaches (``AlreadyExists``) to a batch already running.
    """
    tail = f"-{_part(part).label}-a{_attempt(attempt)}" + (f"-{int(try_number)}" if try_number is not None else "")
    # Keep the distinguishing tail (month, attempt, try) within Dataproc's 63: the prefix is what can grow. (The
    # try used to be added after this cut, so a long prefix made every create_batch an InvalidArgument.)
    value = settings.spark.dataproc_batch_prefix[: 63 - len(tail)].rstrip("-") + tail
    if not _BATCH_ID.match(value):
        raise ValueError(
            f"batch id {value!r} breaks Dataproc's rules (4-63 of a-z, 0-9, '-', starting with a letter): "
            "fix spark.dataproc_batch_prefix in the settings"
        )
    return value


def features_batch(
    settings: Settings, part: Partition | str, attempt: int | str, *, output: str | None = None
) -> dict[str, Any]:
    """The ``Batch`` body (as a dict) for one month of ``spark_jobs/build_features.py`` on Dataproc Serverless.

    ``output`` defaults to :func:`features_staging_uri` (a batch submitted by hand); the DAG passes its run's
    staging folder, which its validate and publish tasks read.
    """
    if settings.is_local:
        raise ValueError("Dataproc batches are for dev and prod: locally the DAG runs spark-submit (TENFOLD_ENV=local)")
    month = _part(part)
    out = output or features_staging_uri(settings, part, attempt)
    labels = {
        "app": _LABEL_VALUE.sub("-", settings.prefix.lower())[:63],
        "env": settings.env,
        "month": month.label,
        "attempt": _attempt(attempt),
    }
    return {
        "pyspark_batch": {
            "main_python_file_uri": staged_uri(settings, FEATURES_JOB),
            "python_file_uris": [staged_uri(settings, PACKAGE_ARCHIVE)],
            "args": ["--lake-uri", settings.storage.lake_uri, "--month", month.label,
                     "--workload", settings.workload, "--features-table", settings.storage.features_table,
                     "--lookups-table", settings.storage.lookups_table, *layout_args(settings),
                     "--output", out],
        },
        "runtime_config": {
            "version": settings.spark.dataproc_runtime_version,
            "properties": {"spark.sql.shuffle.partitions": str(settings.spark.shuffle_partitions)},
        },
        "environment_config": {
            "execution_config": {
                "service_account": settings.service_account_email(settings.service_accounts.dataproc),
                "subnetwork_uri": subnetwork_uri(settings),
                # The firewall admits the batch's VMs to each other by this tag only (infra: allow-<dataproc tag>).
                "network_tags": [settings.network.dataproc_tag],
                "staging_bucket": settings.storage.dataproc_staging_bucket,
                # Runtimes 3.0 and later run a batch with the submitter's credentials unless told otherwise: the job
                # reached the lake as the orchestrator's account, and the Dataproc account's narrower grants went unused.
                "authentication_config": {"user_workload_authentication_type": "SERVICE_ACCOUNT"},
            },
        },
        "labels": labels,
    }
