"""Bring the local platform up, report on it, and take it down: what ``tenfold up/status/down`` run.

``up`` checks every prerequisite and port first, starts the services that are not already running
(GCS emulator, Pub/Sub emulator, Airflow standalone), waits for each to pass a real health check,
then provisions buckets, topics and subscriptions from settings. If anything fails, it stops exactly
the processes this call started, so no half-started stack is left. Running it again while all is
healthy changes nothing. ``down`` stops only processes whose pid files this module wrote and that are
still the same processes. Test fixtures use :func:`start_service` / :func:`stop_service`, the same
code path, on temporary homes and free ports.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from tenfold.config import Settings
from tenfold.local import process
from tenfold.local.airflow import admin_password, ensure_airflow_db
from tenfold.local.process import LocalPlatformError, ProcessRecord
from tenfold.local.services import SERVICE_ORDER, Service, service


def run_dir(settings: Settings) -> Path:
    """Where pid files and logs live."""
    return settings.local.home / "run"


@dataclass(frozen=True)
class ServiceStatus:
    name: str
    url: str
    running: bool
    healthy: bool
    pid: int | None
    log: Path


def _healthy(svc: Service) -> bool:
    try:
        return bool(svc.healthy())
    except Exception:
        return False


def running_record(settings: Settings, name: str) -> ProcessRecord | None:
    """The pid-file record of ``name`` if that process is still alive, else None."""
    record = process.read_record(run_dir(settings), name)
    return record if record is not None and process.is_group_running(record) else None


def start_service(settings: Settings, name: str, *, tie_to_this_process: bool = False) -> ProcessRecord:
    """Start one service, wait until it is healthy, and return its record; stop it again on failure.

    ``tie_to_this_process=True`` (test fixtures) stops it too should the calling process die uncleanly.
    """
    svc = service(settings, name)
    if svc.prerequisites:
        raise LocalPlatformError(f"cannot start {name}:\n  - " + "\n  - ".join(svc.prerequisites))
    if busy := _busy_ports(settings, svc):
        raise LocalPlatformError("\n".join(busy))
    for sub in ("gcs", "pubsub", "airflow"):
        (settings.local.home / sub).mkdir(parents=True, exist_ok=True)
    if name == "airflow" and svc.env is not None:
        ensure_airflow_db(svc.env)  # standalone would migrate too, but this reuses a migrated template
    record = process.start(
        name, svc.argv, run_dir=run_dir(settings), port=svc.port, env=svc.env, cwd=settings.local.home,
        tie_to_this_process=tie_to_this_process,
    )
    try:
        process.wait_until(svc.healthy, timeout=svc.start_timeout, what=f"{name} on {svc.url}", record=record)
    except BaseException:
        process.stop(record)
        process.remove_pid_file(run_dir(settings), name)
        raise
    return record


def stop_service(settings: Settings, name: str) -> bool:
    """Stop ``name`` if our pid file names a live process; True when something was stopped."""
    record = process.read_record(run_dir(settings), name)
    stopped = process.stop(record) if record is not None else False
    process.remove_pid_file(run_dir(settings), name)
    return stopped


def _busy_ports(settings: Settings, svc: Service) -> list[str]:
    """One clear message per port of ``svc`` that another program already holds."""
    return [
        f"port {settings.local.bind_host}:{port} ({svc.name}) is already in use by another program: "
        f"stop that program, or choose another port with TENFOLD_LOCAL__{field.upper()}=<port>"
        for field, port in svc.ports.items()
        if process.port_in_use(settings.local.bind_host, port)
    ]


@contextlib.contextmanager
def _exclusive(settings: Settings, say: Callable[[str], object]) -> Iterator[None]:
    """One ``up``/``down`` at a time per home: two racing would both see a service missing and both start it."""
    import fcntl

    run_dir(settings).mkdir(parents=True, exist_ok=True)
    with open(run_dir(settings) / ".lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            say(f"waiting for another `tenfold up/down` on {settings.local.home} to finish ...")
            fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def up(settings: Settings, services: Iterable[str] = SERVICE_ORDER, *, echo: Callable[[str], object] = print) -> list[ServiceStatus]:
    """Start what is not running, wait for health, provision; all or nothing. Returns the statuses."""
    with _exclusive(settings, echo):
        return _up(settings, services, echo)


def _up(settings: Settings, services: Iterable[str], say: Callable[[str], object]) -> list[ServiceStatus]:
    if not settings.is_local:
        raise LocalPlatformError(f"`tenfold up` runs the local platform; TENFOLD_ENV is {settings.env!r} (use local)")
    names = [n for n in SERVICE_ORDER if n in set(services)]
    todo: list[Service] = []
    problems: list[str] = []
    for name in names:
        svc = service(settings, name)
        if (record := running_record(settings, name)) is not None:
            if _healthy(svc):
                say(f"{name}: already running and healthy on {svc.url}")
                continue
            # Airflow may still be starting from an earlier, interrupted `up`: wait for it below.
            if name != "airflow" or not process.is_running(record):
                problems.append(
                    f"{name} is running (pid file {process.pid_file(run_dir(settings), name)}) but not healthy: "
                    f"run `tenfold down`, then `tenfold up`; log: {process.log_file(run_dir(settings), name)}"
                )
            continue
        problems += [f"{name}: {p}" for p in svc.prerequisites]
        problems += _busy_ports(settings, svc)
        todo.append(svc)
    if problems:
        # Checked before anything starts, so a missing prerequisite never leaves a partial stack.
        raise LocalPlatformError("cannot bring the local platform up:\n  - " + "\n  - ".join(problems))

    started: list[str] = []
    try:
        for svc in todo:
            slow = " (Airflow takes a minute or two)" if svc.name == "airflow" else ""
            say(f"{svc.name}: starting on {svc.url} ...{slow}")
            start_service(settings, svc.name)
            started.append(svc.name)
            say(f"{svc.name}: healthy")
        for name in names:  # includes one that an earlier `up` left still starting
            svc = service(settings, name)
            record = running_record(settings, name)
            if record is None:
                raise LocalPlatformError(f"{name} stopped while the platform was coming up; see {process.log_file(run_dir(settings), name)}")
            process.wait_until(svc.healthy, timeout=svc.start_timeout, what=f"{name} on {svc.url}", record=record)
        provision(settings, services=names)
    except BaseException:
        for name in reversed(started):
            say(f"{name}: stopping (rolling back this `up`)")
            stop_service(settings, name)
        raise
    return status(settings, names)


def provision(settings: Settings, services: Iterable[str] = SERVICE_ORDER) -> None:
    """Create the buckets and the Pub/Sub topology named in settings (idempotent)."""
    names = set(services)
    if "gcs" in names:
        ensure_buckets(settings)
    if "pubsub" in names:
        from tenfold.messaging import ensure_topology

        ensure_topology(settings)


def ensure_buckets(settings: Settings) -> list[str]:
    """Create the lake, models and artifacts buckets if missing; returns their names."""
    from google.api_core.exceptions import Conflict

    from tenfold.storage import gcs_client

    client = gcs_client(settings)
    wanted = [settings.storage.lake_bucket, settings.storage.models_bucket, settings.storage.artifacts_bucket]
    existing = {b.name for b in client.list_buckets()}
    for name in wanted:
        if name not in existing:
            with contextlib.suppress(Conflict):  # created concurrently: the goal is met
                client.create_bucket(name)
    return wanted


def down(settings: Settings, services: Iterable[str] = SERVICE_ORDER, *, echo: Callable[[str], object] = print) -> list[str]:
    """Stop the services ``up`` started (Airflow first); returns the names that were running."""
    with _exclusive(settings, echo):
        return _down(settings, services, echo)


def _down(settings: Settings, services: Iterable[str], say: Callable[[str], object]) -> list[str]:
    stopped = []
    for name in reversed([n for n in SERVICE_ORDER if n in set(services)]):
        if stop_service(settings, name):
            say(f"{name}: stopped")
            stopped.append(name)
        else:
            say(f"{name}: not running")
    return stopped


def status(settings: Settings, services: Iterable[str] = SERVICE_ORDER) -> list[ServiceStatus]:
    out = []
    for name in [n for n in SERVICE_ORDER if n in set(services)]:
        svc = service(settings, name)
        record = running_record(settings, name)
        out.append(
            ServiceStatus(
                name=name,
                url=svc.url,
                running=record is not None,
                healthy=record is not None and _healthy(svc),
                pid=record.pid if record else None,
                log=process.log_file(run_dir(settings), name),
            )
        )
    return out


def describe(settings: Settings, statuses: list[ServiceStatus]) -> str:
    """Human-readable status: where each service is, and the Airflow login."""
    lines = []
    for st in statuses:
        state = "healthy" if st.healthy else ("running, not healthy" if st.running else "stopped")
        lines.append(f"{st.name:8} {state:22} {st.url}" + (f"  (pid {st.pid}, log {st.log})" if st.running else ""))
        if st.name == "airflow" and st.running:
            password = admin_password(settings)
            lines.append(f"         Airflow UI: {st.url}  user: {settings.airflow.admin_user}  password: {password or '(not generated yet)'}")
    lines.append(f"lake:    {settings.storage.lake_uri}")
    return "\n".join(lines)


# --- the serving fleet (``tenfold serve``), started with the platform once a model is registered -------

SERVING_NEEDS = ("gcs", "pubsub")  # the registry and lake reads, and the predictions/feedback topics


def serving_up(settings: Settings, *, say: Callable[[str], object] = print) -> bool:
    """Start the serving fleet on the champion (``settings.serving.server.model_ref``) if there is one.

    With no model registered yet it says so and returns False: a fresh platform has nothing to serve.
    Already running: nothing changes. Raises :class:`LocalPlatformError` when the fleet cannot start.
    """
    from tenfold.registry import ModelRegistry, UnknownVersion
    from tenfold.serving import fleet
    from tenfold.serving.auth import ensure_token

    ensure_token(settings)  # generated with the platform, so clients can be set up before the first model
    ref = settings.serving.server.model_ref
    try:
        ModelRegistry(settings).find(ref)
    except UnknownVersion:
        say(f"serving: skipped, no model is registered as {ref!r} yet (run `make demo` to train one, then `tenfold serve up`)")
        return False
    fleet.up(settings, ref, say=say)
    feedback_sink_up(settings, say=say)
    return True


# The feedback sink (``tenfold feedback sink``) runs beside the fleet: it lands the sampled predictions and
# the feedback from Pub/Sub in the lake and joins them whenever it is idle.
FEEDBACK_SINK = "feedback-sink"


def feedback_sink_record(settings: Settings) -> ProcessRecord | None:
    return running_record(settings, FEEDBACK_SINK)


def feedback_sink_up(settings: Settings, *, say: Callable[[str], object] = print,
                     tie_to_this_process: bool = False) -> ProcessRecord:
    """Start ``tenfold feedback sink`` as a process of the platform unless it runs; returns its record."""
    import os
    import sys

    from tenfold.local.env import settings_env

    if (record := feedback_sink_record(settings)) is not None:
        return record
    process.remove_pid_file(run_dir(settings), FEEDBACK_SINK)  # a dead one's stale pid file
    record = process.start(
        FEEDBACK_SINK, [sys.executable, "-m", "tenfold.cli", "feedback", "sink"], run_dir=run_dir(settings), port=0,
        env={**os.environ, **settings_env(settings)}, cwd=settings.local.home, tie_to_this_process=tie_to_this_process,
    )
    say(f"{FEEDBACK_SINK}: landing predictions and feedback in the lake (pid {record.pid}, log {record.log})")
    return record


def serving_down(settings: Settings, *, say: Callable[[str], object] = print) -> bool:
    """Stop the serving fleet if it runs; True when something was stopped."""
    from tenfold.serving import fleet

    stopped = fleet.down(settings, say=say)
    say("serving: stopped" if stopped else "serving: not running")
    if stop_service(settings, FEEDBACK_SINK):  # after the replicas: it lands what they published last
        say(f"{FEEDBACK_SINK}: stopped")
    return stopped
