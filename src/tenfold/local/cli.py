"""``tenfold up``, ``tenfold status`` and ``tenfold down``: the local platform on loopback.

Run ``tenfold up`` (or ``make up``) to start the GCS emulator, the Pub/Sub emulator and Airflow's
components (API server, scheduler, DAG processor, triggerer, task-log server), and the serving fleet
(``tenfold serve up``) once a champion is registered; run it again to restart any component that
died. ``tenfold status`` shows each component by its own liveness and health, their URLs, the Airflow
login and the serving token (it is the one place to read them); ``tenfold down`` (``make down``) stops
them. Ports and paths come from settings; override them with ``TENFOLD_HOME`` and
``TENFOLD_LOCAL__<FIELD>`` (e.g. ``TENFOLD_LOCAL__AIRFLOW_PORT=8081``).
"""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
from typing import Annotated

import typer

from tenfold.clipipe import EXIT_READER_GONE, drop_stdout, stdout_reader_gone
from tenfold.config import Settings, get_settings
from tenfold.fsio import os_error_refusal
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


def _echo(message: str = "", *, err: bool = False) -> None:
    """``typer.echo`` for the commands that change the platform (up, down): a reader of their output that went away
    (``tenfold down | head -1``) must not stop them halfway, as the quiet end of :func:`refusing_os_errors` did (a
    down that stopped none of the services after its first line, an up whose rollback stopped nothing): the rest of
    their output goes nowhere and their work goes on."""
    try:
        typer.echo(message, err=err)
    except BrokenPipeError:
        if err or not stdout_reader_gone():
            raise
        drop_stdout()


@contextlib.contextmanager
def refusing_os_errors(settings: Settings, command: str) -> Iterator[None]:
    """What the system refuses (a TENFOLD_HOME under a file or not writable, a full disk, a command that hangs) ends
    ``tenfold <command>`` with one error line naming the path or command and what to do, never a traceback.

    A service that cannot be reached (a connection refused or reset) is said as such (:func:`tenfold.outages.ending`),
    not as a path to fix; a reader of the output that went away (``| head -1``) ends the command quietly
    (:data:`EXIT_READER_GONE`)."""
    from tenfold.outages import ending, is_unreachable

    try:
        yield
    except subprocess.TimeoutExpired as exc:
        cmd = " ".join(map(str, exc.cmd)) if isinstance(exc.cmd, (list, tuple)) else str(exc.cmd)
        typer.echo(f"error: `{cmd}` did not finish within {exc.timeout:g} s and was stopped: run `tenfold {command}` "
                   "again; if it hangs again, run that command yourself to see what it waits for", err=True)
        raise typer.Exit(1) from exc
    except OSError as exc:
        if isinstance(exc, BrokenPipeError) and stdout_reader_gone():
            drop_stdout()
            raise typer.Exit(EXIT_READER_GONE) from None
        if is_unreachable(exc):  # ConnectionRefusedError and the like are OSErrors, but no path of the user's
            typer.echo(ending(exc, f"tenfold {command}", settings.local.home, debug_hint="with TENFOLD_DEBUG=1"),
                       err=True)
        else:
            typer.echo(os_error_refusal(exc, f"tenfold {command}", settings.local.home), err=True)
        raise typer.Exit(1) from exc


def up(service: _ServiceOpt = None) -> None:
    """Start the local services (or restart a component that died), wait until healthy, create
    buckets/topics/subscriptions; then serve the champion."""
    from tenfold.local.stack import SERVING_NEEDS, describe, exclusive, serving_up
    from tenfold.local.stack import up as _up

    settings = get_settings()
    _local_only(settings, "up")  # before the lock and the run folder: nothing of a local platform is made in dev
    chosen = _services(service)
    if "airflow" in chosen:
        _workload_loads(settings)
    # One lock across the platform and the fleet: a `tenfold down` between the two would leave the fleet running.
    with refusing_os_errors(settings, "up"), exclusive(settings, echo=_echo):
        try:
            statuses = _up(settings, chosen, echo=_echo)
        except (LocalPlatformError, RuntimeError) as exc:  # RuntimeError: provisioning (e.g. a detached subscription)
            _echo(f"error: {exc}", err=True)
            raise typer.Exit(1) from exc
        failed: RuntimeError | None = None
        if set(SERVING_NEEDS) <= set(chosen):
            try:
                serving_up(settings, say=_echo)
            except RuntimeError as exc:  # the platform stays up: it is healthy, only serving is not (or its token file)
                failed = exc
        _echo(describe(settings, statuses))
        _describe_serving(settings)
    if failed is not None:
        _echo(f"error: the platform is up, but serving is not (the fleet or the feedback sink): {failed}", err=True)
        raise typer.Exit(1)


def _workload_loads(settings: Settings) -> None:
    """Airflow's DAGs run the configured workload: one that cannot be loaded (TENFOLD_WORKLOAD mistyped) is refused in
    one line before anything starts, as the demo refuses it (exit 2, bad settings). `tenfold up` used to report every
    component healthy, every DAG run then failed in its first task, and `up` after fixing the variable was refused as
    drift of the Airflow it had started."""
    from tenfold.workloads import WorkloadError, get_workload

    try:
        get_workload(settings)
    except WorkloadError as exc:
        typer.echo(f"error: {exc}; fix TENFOLD_WORKLOAD (or the workload setting), then run `tenfold up` again. "
                   "Nothing was started", err=True)
        raise typer.Exit(2) from None


def _describe_serving(settings: Settings, *, secrets: bool = False) -> bool:
    """Print the serving fleet's report (its token only with ``secrets``); False when it runs but is not healthy."""
    from tenfold.local.stack import FEEDBACK_SINK, feedback_sink_record
    from tenfold.serving import fleet

    rep = fleet.report(settings)
    typer.echo(fleet.describe(rep, secrets=secrets))
    sink = feedback_sink_record(settings)
    # Not a health condition: without the sink no feedback is lost (Pub/Sub keeps it), it only waits.
    typer.echo(f"{FEEDBACK_SINK}: " + (f"running (pid {sink.pid}, log {sink.log})" if sink
                                       else "not running (`tenfold up` starts it with the fleet)"))
    return rep.healthy or not (rep.running or rep.haproxy_alive)


def _local_only(settings: Settings, command: str) -> None:
    """``tenfold <command>`` manages the local platform: under another TENFOLD_ENV, one line saying so (it used to
    end in a ValueError's traceback from deep in the status of the first service)."""
    if not settings.is_local:
        typer.echo(f"error: `tenfold {command}` manages the local platform; TENFOLD_ENV is {settings.env!r}: unset it "
                   "(or set it to local). The cloud's services are the platform stack's (docs/deploy.md)", err=True)
        raise typer.Exit(2)


def status(service: _ServiceOpt = None) -> None:
    """Show each local component (state, URL, pid, log), the Airflow login, the lake and the serving fleet (its
    token included); exit 3 if any is down or dead (the fleet counts once it was started, and only when what -s chose
    includes what it runs on, as `tenfold up -s` starts it: `status -s gcs` exits on gcs alone)."""
    from tenfold.local.stack import SERVING_NEEDS, describe
    from tenfold.local.stack import status as _status

    settings = get_settings()
    _local_only(settings, "status")
    chosen = _services(service)
    with refusing_os_errors(settings, "status"):
        statuses = _status(settings, chosen)
        typer.echo(describe(settings, statuses, secrets=True))
        serving_ok = _describe_serving(settings, secrets=True)
    if not all(s.healthy for s in statuses) or (set(SERVING_NEEDS) <= set(chosen) and not serving_ok):
        raise typer.Exit(3)


def down(service: _ServiceOpt = None) -> None:
    """Stop the serving fleet and the local services that `tenfold up` started (nothing else)."""
    from tenfold.local.process import StillRunning
    from tenfold.local.stack import SERVING_NEEDS, FleetStillRunning, exclusive, serving_down
    from tenfold.local.stack import down as _down

    settings = get_settings()
    _local_only(settings, "down")
    chosen = _services(service)
    with refusing_os_errors(settings, "down"), exclusive(settings, echo=_echo):  # as `up` holds it
        stuck: FleetStillRunning | None = None
        if set(SERVING_NEEDS) & set(chosen):  # it needs them: it goes first
            try:
                serving_down(settings, say=_echo)
            except FleetStillRunning as exc:  # a stuck replica holds none of the services: they are still stopped
                stuck = exc  # (a stuck sink is not this: the emulator it pulls from stays up, as stack._down says)
        try:
            _down(settings, chosen, echo=_echo)
        except StillRunning as exc:
            if stuck is None:
                raise
            raise StillRunning(f"{stuck}\n{exc}", [*stuck.pids, *exc.pids]) from exc  # both, in one refusal
        if stuck is not None:
            raise stuck
