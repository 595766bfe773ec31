"""``tenfold up``, ``tenfold status`` and ``tenfold down``: the local platform on loopback.

Run ``tenfold up`` (or ``make up``) to start the GCS emulator, the Pub/Sub emulator and Airflow
standalone, ``tenfold status`` for their URLs and the Airflow login, ``tenfold down`` (``make down``)
to stop them. Ports and paths come from settings; override them with ``TENFOLD_HOME`` and
``TENFOLD_LOCAL__<FIELD>`` (e.g. ``TENFOLD_LOCAL__AIRFLOW_PORT=8081``).
"""

from __future__ import annotations

from typing import Annotated

import typer

from tenfold.config import get_settings
from tenfold.local.process import LocalPlatformError
from tenfold.local.services import SERVICE_ORDER

_ServiceOpt = Annotated[
    list[str] | None,
    typer.Option("--service", "-s", help=f"services to act on (default all): {', '.join(SERVICE_ORDER)}"),
]


def _services(names: list[str] | None) -> list[str]:
    chosen = names or list(SERVICE_ORDER)
    unknown = [n for n in chosen if n not in SERVICE_ORDER]
    if unknown:
        typer.echo(f"error: unknown service(s) {', '.join(unknown)}: choose from {', '.join(SERVICE_ORDER)}", err=True)
        raise typer.Exit(2)
    return chosen


def up(service: _ServiceOpt = None) -> None:
    """Start the local services, wait until healthy, create buckets/topics/subscriptions."""
    from tenfold.local.stack import describe
    from tenfold.local.stack import up as _up

    settings = get_settings()
    try:
        statuses = _up(settings, _services(service), echo=typer.echo)
    except (LocalPlatformError, RuntimeError) as exc:  # RuntimeError: provisioning (e.g. a detached subscription)
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    typer.echo(describe(settings, statuses))


def status(service: _ServiceOpt = None) -> None:
    """Show each local service (URL, pid, log), the Airflow login and the lake; exit 3 if any is down."""
    from tenfold.local.stack import describe
    from tenfold.local.stack import status as _status

    settings = get_settings()
    statuses = _status(settings, _services(service))
    typer.echo(describe(settings, statuses))
    if not all(s.healthy for s in statuses):
        raise typer.Exit(3)


def down(service: _ServiceOpt = None) -> None:
    """Stop the local services that `tenfold up` started (nothing else)."""
    from tenfold.local.stack import down as _down

    _down(get_settings(), _services(service), echo=typer.echo)
