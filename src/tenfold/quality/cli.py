"""``tenfold quality``: check a published partition against its suite, and find the Data Docs.

* ``tenfold quality check <table> --month 2013-01``: the table's suite comes from the workload
  (``settings.workload``: for flights, table ``flights`` uses suite ``raw_flights``; the features table uses
  ``features``); runs it on the published partition and writes its Data Docs page. Read-only: unlike the
  DAG's gate it never quarantines or alerts. Exit code 1 when an expectation fails.
* ``tenfold quality docs``: where the Data Docs of this environment are (open ``index.html``); exit 2 where a
  local environment has none yet.
"""

from __future__ import annotations

import typer

from tenfold.config import Settings, get_settings

app = typer.Typer(help="Great Expectations suites and Data Docs of the lake.", no_args_is_help=True)


def default_suites(settings: Settings) -> dict[str, str]:
    """Suite per table: the workload's raw suites, and its features suite for the features table."""
    from tenfold.workloads import get_workload

    workload = get_workload(settings)
    return {**workload.raw_suites, settings.storage.features_table: workload.features_suite}


@app.command("check")
def check(
    table: str = typer.Argument(..., help="a table the workload checks: one of its raw tables (flights for the flights "
                                          "workload) or the features table"),
    month: str = typer.Option(..., help="the partition, YYYY-MM"),
    suite: str | None = typer.Option(None, help="suite name in the workload's suite folder; default: the table's suite"),
) -> None:
    """Validate a published partition without side effects (no quarantine, no alert); writes Data Docs.

    Exit 0: the suite passed; 1: it failed, or the check could not run (the last line says which); 2: bad usage."""
    from tenfold.data.lake import CorruptManifestError, Lake, LakeError, Partition
    from tenfold.quality.gate import check_suite, read_batch, run_suite, to_frame
    from tenfold.quality.suites import SuiteError

    settings = get_settings()
    suites: dict[str, str] = {}
    try:
        suites = default_suites(settings)
        name = suite or suites[table]
        check_suite(settings, name)  # an unknown or malformed --suite is refused before the partition is read
        part = Partition.parse(month)
        lake = Lake.from_settings(settings)
        frame = to_frame(read_batch(lake, lake.files(table, part, verify=True)))
        report = run_suite(settings, frame, table=table, part=part, suite_name=name,
                           batch_uri=lake.uri_of(lake.partition_path(table, part)), run_name=f"{part.label}-cli",
                           suite_checked=True)
    except KeyError as exc:
        typer.echo(f"error: no default suite for {table!r}: pass --suite (tables with one: {', '.join(suites)})", err=True)
        raise typer.Exit(2) from exc
    except CorruptManifestError as exc:  # the data, not the usage: a file changed or gone since it was published
        typer.echo(f"{table} {month}: the published partition is not intact, so the suite was not run: {exc}. The "
                   "DAG's gate withdraws such a month to quarantine; rebuild it (run the month again)", err=True)
        raise typer.Exit(1) from exc
    except (ValueError, LakeError, SuiteError) as exc:  # bad usage, or a partition that is not there
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    # An OSError (a TENFOLD_HOME under a file, a full disk, no permission) is no usage error: it ends as every
    # command's does (exit 1, one line naming what the system refused and what to do).
    typer.echo(report.summary())
    typer.echo(f"Data Docs: {report.data_docs}" if report.data_docs else
               "Data Docs: not written (they could not be; the log above says why)")
    if not report.success:
        raise typer.Exit(1)


@app.command("docs")
def docs() -> None:
    """Print where this environment's Data Docs are.

    Exit 2 where a local site has no index yet: the path printed (exit 0) before any validation had written it led
    to a file that did not exist."""
    from pathlib import Path

    from tenfold.quality.gate import data_docs_location

    settings = get_settings()
    location = data_docs_location(settings)
    if settings.is_local and not (Path(location) / "index.html").is_file():
        typer.echo(f"error: no Data Docs yet in {location}: every validation writes them (the build_features DAG's "
                   "gate on each month it builds, or `tenfold quality check <table> --month YYYY-MM`)", err=True)
        raise typer.Exit(2)
    typer.echo(f"{location}/index.html")
