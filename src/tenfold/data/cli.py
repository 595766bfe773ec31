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
    from tenfold.data.ingest import IngestError, ingest_month
    from tenfold.data.lake import Lake, LakeError, month_range
    from tenfold.workloads import SourceMissing, get_workload

    settings = get_settings()
    try:
        months = month_range(month, to or month)
        if not months:
            raise ValueError(f"--month {month} is after --to {to}: give the first month first")
        workload = get_workload(settings)
        # The settings' layout (staging and quarantine folders) whichever lake: where the DAG path and the
        # bucket's lifecycle rules expect them.
        lake = Lake(lake_uri, settings.storage.lake_layout) if lake_uri else Lake.from_settings(settings)
        rid = run_id or f"cli-{uuid.uuid4().hex[:12]}"
        for part in months:
            manifests = ingest_month(lake, part, run_id=rid, workload=workload,
                                     check_staged=None if replace else _not_over_published(lake, part))
            rows = ", ".join(f"{t}={m.rows}" for t, m in manifests.items())
            typer.echo(f"{part.label}: {rows} -> {lake.uri}")
    except (ValueError, IngestError, LakeError, SourceMissing) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    except OSError as exc:  # what the system refuses (a local lake under TENFOLD_HOME), a lake that cannot be reached
        from tenfold.outages import ending

        typer.echo(ending(exc, "tenfold ingest", settings.local.home, debug_hint="with TENFOLD_DEBUG=1"), err=True)
        raise typer.Exit(1) from exc


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
