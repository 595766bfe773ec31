"""Bring the local platform up, report on it, and take it down: what ``tenfold up/status/down`` run.

``up`` checks every prerequisite and port first, starts the services that are not already running
(GCS emulator, Pub/Sub emulator, and Airflow as five components: API server, scheduler, DAG
processor, triggerer, task-log server), waits for each component to pass its own health check, then
provisions buckets, topics and subscriptions from settings. Every component is supervised on its own
(pid file, log, liveness): ``status`` reports each one, and ``up`` restarts one that died, after
stopping whatever its process group left behind, and leaves the healthy ones alone. If anything
fails, ``up`` stops exactly the processes this call started, so no half-started stack is left.
Running it again while all is healthy changes nothing. ``down`` stops only processes whose pid files
this module wrote and that are still the same processes. Test fixtures use :func:`start_service` /
:func:`stop_service`, the same code path, on temporary homes and free ports.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from tenfold.config import Settings
from tenfold.local import process
from tenfold.local.airflow import admin_password, ensure_admin_password, ensure_airflow_config, ensure_airflow_db
from tenfold.local.process import LocalPlatformError, ProcessRecord
from tenfold.local.services import SERVICE_ORDER, Component, Service, run_dir, service

# The pid file of `airflow standalone`, which Tenfold ran before it ran Airflow's components itself:
# `down` still stops one that an older version left running, and `up` asks for that first.
LEGACY_AIRFLOW = "airflow"


@dataclass(frozen=True)
class ServiceStatus:
    """One component as ``tenfold status`` reports it (``name`` is the component's, e.g. ``airflow-scheduler``)."""

    name: str
    url: str
    running: bool
    healthy: bool
    pid: int | None
    log: Path
    service: str = ""
    label: str = ""
    dead: bool = False  # its pid file names a process that is gone: it died, `tenfold up` restarts it
    moved: str = ""  # it runs on another port than these settings name (started with an override): what to do
    drift: str = ""  # it runs with other settings than these (a variable changed since it started): which, what to do

    @property
    def state(self) -> str:
        if self.healthy:
            return "healthy"
        if self.moved:
            return "running, on another port"
        if self.running:
            return "running, not healthy"
        return "dead" if self.dead else "stopped"


def _moved(comp: Component, record: ProcessRecord | None, service_name: str) -> str:
    """Why ``comp`` cannot be checked where these settings say (it was started on another port, by a shell with a
    ``TENFOLD_LOCAL__*_PORT`` override this one lacks), with what to do; "" when it runs where they say."""
    if record is None or not record.port or not comp.port or record.port == comp.port:
        return ""
    variable = f"TENFOLD_LOCAL__{next(iter(comp.ports)).upper()}"
    return (f"{comp.name} runs on port {record.port}, where these settings say {comp.port}: set {variable}="
            f"{record.port} as when it was started, or stop it (`tenfold down -s {service_name}`) and start it again")


def _other_emulator(settings: Settings, comp: Component, record: ProcessRecord | None) -> str:
    """Why the running GCS emulator is not the one these settings choose (``local.gcs_emulator``, changed since it
    started: the registry's refusal of gcp-storage-emulator says to), with what to do; "" when it is. The emulators
    read no settings, so a change went unseen: `up` said "already running and healthy", and the registry refused
    again with the same advice."""
    if comp.name != "gcs" or record is None:
        return ""
    running = "gcp-storage-emulator" if any("gcp_storage_emulator" in part for part in record.cmdline) else "fake-gcs-server"
    if running == settings.local.gcs_emulator:
        return ""
    return (f"gcs: {running} is running, where these settings choose {settings.local.gcs_emulator} "
            "(TENFOLD_LOCAL__GCS_EMULATOR): stop it (`tenfold down -s gcs`) and run `tenfold up` again (the two keep "
            "their buckets in separate folders)")


_PLACING = ("GOOGLE_CLOUD_PROJECT", "STORAGE_EMULATOR_HOST", "PUBSUB_EMULATOR_HOST")
# Read by the command line alone (tenfold.cli: TENFOLD_DEBUG) or by the browser tests and `make setup` alone
# (TENFOLD_CHROMIUM, docs/ui.md), never by a task, a replica or the sink: set in the shell, they change nothing that runs.
_NO_DRIFT = ("TENFOLD_DEBUG", "TENFOLD_CHROMIUM")


def _changed_settings(want: Mapping[str, str], record: ProcessRecord | None) -> list[str]:
    """The settings variables (``TENFOLD_*``, the project, the emulator hosts and ``PYTHONPATH``) whose values differ
    between the environment ``want`` a process would be started with now and the one the running ``record`` was
    started with, sorted; none when its environment cannot be read. ``PYTHONPATH`` is compared as
    :func:`process.child_environ` hands it to the child, each entry made absolute: a workload's folder put on it after
    `tenfold up` reached no task (each kept failing "cannot import ... is it on PYTHONPATH?"), while the same folder
    named relatively from the same place is no change."""
    if record is None:
        return []
    import psutil

    try:
        running = psutil.Process(record.pid).environ()
    except psutil.Error:
        return []

    def settings_of(env: Mapping[str, str]) -> dict[str, str]:
        return {k: v for k, v in env.items()
                if (k.startswith("TENFOLD_") and k not in (process.MARKER_ENV, process.PARENT_MARKER_ENV))
                or k in _PLACING or (k == "PYTHONPATH" and v)}  # an empty PYTHONPATH is none, to Python

    if not running:  # a kernel thread's, or unreadable
        return []
    want, have = settings_of(process.child_environ(want)), settings_of(running)
    # TENFOLD_DEBUG (which a command's fault advises setting) changes no task: no drift. Every other TENFOLD_* does,
    # a setting's or a hook a task reads from its environment (TENFOLD_INFER_FAULT, TENFOLD_INFER_STUB_SCORING, ...).
    return sorted(k for k in want.keys() | have.keys() if want.get(k) != have.get(k) and k not in _NO_DRIFT)


def _drift(svc: Service, record: ProcessRecord | None, service_name: str) -> str:
    """Which settings variables the running ``record`` was started with differ from those ``svc`` would start it with
    now (see :func:`_changed_settings`; values never shown: a webhook URL is a secret), with what to do; "" when none
    do, or when the service reads no settings (the emulators) or the process's environment cannot be read. A running
    service keeps the settings it started with: a workload, a month range or an alert hook set after `tenfold up`
    reached no task, while `up` said "already running and healthy"."""
    if not svc.carries_settings or svc.env is None:
        return ""
    if not (changed := _changed_settings(svc.env, record)):
        return ""
    return (f"it runs with other settings than these ({', '.join(changed)} changed since it started): stop it "
            f"(`tenfold down -s {service_name}`), then `tenfold up` starts it with these")


def _healthy(check: Callable[[], bool]) -> bool:
    try:
        return bool(check())
    except Exception:
        return False


def running_record(settings: Settings, name: str) -> ProcessRecord | None:
    """The pid-file record of ``name`` if its process, or anything left in its group, is alive, else None."""
    record = process.read_record(run_dir(settings), name)
    return record if record is not None and process.is_group_running(record) else None


def _live_record(settings: Settings, name: str) -> ProcessRecord | None:
    """The pid-file record of component ``name`` if that very process is alive (its own liveness)."""
    record = process.read_record(run_dir(settings), name)
    return record if record is not None and process.is_running(record) else None


def _clear(settings: Settings, name: str, timeout: float = 20.0) -> bool:
    """Stop whatever is left of component ``name`` (a dead leader's children included; SIGKILL after ``timeout``),
    drop its pid file.

    What outlives SIGKILL (a process stuck in uninterruptible I/O: a hung mount) keeps its pid file, and raises
    :class:`process.StillRunning` naming it and what to do. Dropped, `tenfold down` said "stopped" and lost track of
    it: `status` said stopped, and the next `up` refused the port its own emulator still held as another program's."""
    record = process.read_record(run_dir(settings), name)
    try:
        stopped = process.stop(record, timeout=timeout, check=True) if record is not None else False
    except process.StillRunning as exc:
        raise process.StillRunning(
            f"{exc}; its pid file {process.pid_file(run_dir(settings), name)} is kept, so `tenfold status` and "
            f"`tenfold down` still find it: {process.what_it_waits_on(exc.pids)}; once it has exited (a reboot ends it), "
            "run the command again", exc.pids) from exc
    process.remove_pid_file(run_dir(settings), name)
    return stopped


def _prepare(settings: Settings, svc: Service) -> None:
    for sub in ("gcs", "pubsub", "airflow"):
        (settings.local.home / sub).mkdir(parents=True, exist_ok=True)
    if svc.name == "airflow" and svc.env is not None:
        ensure_airflow_config(settings)  # before anything imports Airflow: its keys are shared
        ensure_admin_password(settings)
        ensure_airflow_db(svc.env)


def _start_components(
    settings: Settings, svc: Service, components: list[Component], *, tie_to_this_process: bool = False
) -> list[ProcessRecord]:
    """Start ``components`` of ``svc`` and wait until each is healthy; stop them all again on failure."""
    records: list[ProcessRecord] = []
    try:
        for comp in components:
            records.append(process.start(
                comp.name, comp.argv, run_dir=run_dir(settings), port=comp.port, env=svc.env, cwd=settings.local.home,
                tie_to_this_process=tie_to_this_process,
            ))
        _wait_healthy(svc, components, records)
    except BaseException:
        for comp in reversed(components):
            # One that outlives SIGKILL keeps its pid file (`status` and `down` still find it); the error that rolled
            # this start back is the one to report.
            with contextlib.suppress(process.StillRunning):
                _clear(settings, comp.name)
        raise
    return records


def _wait_healthy(svc: Service, components: list[Component], records: list[ProcessRecord]) -> None:
    """Wait until every component is healthy; fail at once, with its log, when one of them exits."""
    pending = list(zip(components, records, strict=True))
    for comp, record in pending:
        what = f"{svc.name} {comp.name}" if comp.name != svc.name else svc.name
        where = comp.url or svc.url
        process.wait_until(comp.healthy, timeout=svc.start_timeout, what=f"{what} on {where}" if where else what,
                           record=record, watch=[r for _c, r in pending], ports=comp.ports.values())


def start_service(settings: Settings, name: str, *, tie_to_this_process: bool = False) -> list[ProcessRecord]:
    """Start every component of one service, wait until each is healthy, and return their records; stop
    them again on failure.

    ``tie_to_this_process=True`` (test fixtures) stops them too should the calling process die uncleanly.
    """
    svc = service(settings, name)
    if svc.prerequisites:
        raise LocalPlatformError(f"cannot start {name}:\n  - " + "\n  - ".join(svc.prerequisites))
    if busy := _busy_ports(settings, svc, svc.components):
        raise LocalPlatformError("\n".join(busy))
    _prepare(settings, svc)
    return _start_components(settings, svc, svc.components, tie_to_this_process=tie_to_this_process)


def stop_service(settings: Settings, name: str) -> bool:
    """Stop every component of service ``name`` (or the one process of that name the platform started, e.g.
    the feedback sink) whose pid file names a live process; True when something was stopped. Raises
    :class:`process.StillRunning`, once every component was tried, naming those that outlived SIGKILL (see
    :func:`_clear`)."""
    if name not in SERVICE_ORDER:
        if name == FEEDBACK_SINK:  # it lands the batch in hand and runs a last join: 20 s killed it mid-join
            from tenfold.feedback.sink import STOP_TIMEOUT_S

            return _clear(settings, name, timeout=STOP_TIMEOUT_S)
        return _clear(settings, name)
    names = [c.name for c in service(settings, name).components]
    if name == "airflow":
        names.append(LEGACY_AIRFLOW)
    # Reversed: the scheduler and the rest before the API server they report to.
    stopped = False
    stuck: list[process.StillRunning] = []
    for n in reversed(names):
        try:
            stopped = _clear(settings, n) or stopped
        except process.StillRunning as exc:
            stuck.append(exc)
    if stuck:
        raise process.StillRunning("\n".join(map(str, stuck)), [pid for exc in stuck for pid in exc.pids])
    return stopped


def _busy_ports(settings: Settings, svc: Service, components: Iterable[Component]) -> list[str]:
    """One clear message per port of ``components`` that another program already holds, or that only root may
    listen on."""
    host = settings.local.bind_host
    return [refusal for comp in components for field, port in comp.ports.items()
            if (refusal := process.port_refusal(host, port, svc.name, f"TENFOLD_LOCAL__{field.upper()}=<port>"))]


# The locks this process holds, each with the thread holding it: taken again in that thread, one is held already.
_held: set[tuple[Path, int]] = set()


@contextlib.contextmanager
def _exclusive(settings: Settings, say: Callable[[str], object], what: str = "") -> Iterator[None]:
    """One ``up``/``down`` at a time per home (``what``: one start or stop of that process instead): two racing
    would both see a service missing and both start it. Reentrant in one thread (see :func:`exclusive`)."""
    import fcntl
    import threading

    path = run_dir(settings) / (f".{what}.lock" if what else ".lock")
    key = (path, threading.get_ident())
    if key in _held:
        yield
        return
    run_dir(settings).mkdir(parents=True, exist_ok=True)
    with open(path, "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            say(f"waiting for another `tenfold up/down` on {settings.local.home} to finish {what} ...")
            fcntl.flock(lock, fcntl.LOCK_EX)
        _held.add(key)
        try:
            yield
        finally:
            _held.discard(key)
            fcntl.flock(lock, fcntl.LOCK_UN)


def exclusive(settings: Settings, *, echo: Callable[[str], object] = print) -> contextlib.AbstractContextManager[None]:
    """The lock :func:`up` and :func:`down` take, held across more than one step: ``tenfold up`` holds it while it
    brings the platform and then the serving fleet up, ``tenfold down`` while it stops both, so neither runs in
    between the other's steps (a fleet left running on a stopped platform). ``up``/``down`` inside take it again."""
    return _exclusive(settings, echo)


def up(settings: Settings, services: Iterable[str] = SERVICE_ORDER, *, echo: Callable[[str], object] = print,
       tie_to_this_process: bool = False) -> list[ServiceStatus]:
    """Start what is not running (or restart the components that died), wait for health, provision; all or
    nothing. Returns the statuses. ``tie_to_this_process=True`` (test fixtures) stops what it starts should the
    calling process die uncleanly (a killed test run)."""
    with _exclusive(settings, echo):
        return _up(settings, services, echo, tie_to_this_process=tie_to_this_process)


@dataclass
class _Plan:
    svc: Service
    start: list[Component]  # not running: start (after clearing what a dead one left)
    restart: bool  # some components of the service run: only the dead ones start
    left: list[Component]  # of ``start``, those whose dead leader left processes behind (on its ports, likely)


def _up(settings: Settings, services: Iterable[str], say: Callable[[str], object], *,
        tie_to_this_process: bool = False) -> list[ServiceStatus]:
    if not settings.is_local:
        raise LocalPlatformError(f"`tenfold up` runs the local platform; TENFOLD_ENV is {settings.env!r} (use local)")
    names = [n for n in SERVICE_ORDER if n in set(services)]
    plans: list[_Plan] = []
    problems: list[str] = []
    for name in names:
        svc = service(settings, name)
        if name == "airflow" and running_record(settings, LEGACY_AIRFLOW) is not None:
            problems.append(
                "airflow: `airflow standalone` started by an earlier Tenfold is still running: run `tenfold down`, "
                "then `tenfold up` (Tenfold now runs Airflow's components itself)"
            )
            continue
        alive = [c for c in svc.components if _live_record(settings, c.name) is not None]
        dead = [c for c in svc.components if c not in alive]
        if moved := [m for c in alive if (m := _moved(c, _live_record(settings, c.name), name))]:
            problems += moved  # its health probed on the settings' port would fail (or ask whatever listens there)
            continue
        if other := [m for c in alive if (m := _other_emulator(settings, c, _live_record(settings, c.name)))]:
            problems += other
            continue
        if drifted := sorted({d for c in alive if (d := _drift(svc, _live_record(settings, c.name), name))}):
            problems += [f"{name}: {d}" for d in drifted]
            continue
        if not dead:
            if all(_healthy(c.healthy) for c in svc.components):
                say(f"{name}: already running and healthy on {svc.url}")
            else:  # still starting from an earlier, interrupted `up` (an emulator's JVM takes its time), or one health
                # probe slow on a busy machine: waited for below, and named with `tenfold down -s <name>` if it hangs
                unhealthy = [c.name for c in svc.components if not _healthy(c.healthy)]
                say(f"{name}: {', '.join(unhealthy)} running but not healthy yet; waiting up to "
                    f"{svc.start_timeout:.0f} s")
            continue
        if alive:
            say(f"{name}: {', '.join(c.name for c in dead)} not running; restarting "
                f"{'it' if len(dead) == 1 else 'them'} (the rest are left alone)")
        # A dead leader's children still hold its ports and its work: they are stopped only once nothing else
        # refuses (a refused `up` stops nothing), and their component's ports are checked after that.
        left = [c for c in dead if running_record(settings, c.name) is not None]
        problems += [f"{name}: {p}" for p in svc.prerequisites]
        problems += _busy_ports(settings, svc, [c for c in dead if c not in left])
        plans.append(_Plan(svc, dead, restart=bool(alive), left=left))
    if not problems:
        for plan in plans:
            for comp in plan.start:
                try:
                    _clear(settings, comp.name)
                except process.StillRunning as exc:  # it would hold the port, or the work, of the one to start
                    problems.append(str(exc))
        problems += [p for plan in plans for p in _busy_ports(settings, plan.svc, plan.left)]
    if problems:
        # Checked before anything starts, so a missing prerequisite never leaves a partial stack.
        raise LocalPlatformError("cannot bring the local platform up:\n  - " + "\n  - ".join(problems))

    started: list[str] = []  # component names, in start order
    try:
        for plan in plans:
            svc = plan.svc
            slow = " (Airflow takes a minute or two)" if svc.name == "airflow" else ""
            what = ", ".join(c.name for c in plan.start) if plan.restart else svc.name
            say(f"{what}: starting on {svc.url} ...{slow}" if not plan.restart else f"{what}: restarting ...{slow}")
            _prepare(settings, svc)
            _start_components(settings, svc, plan.start, tie_to_this_process=tie_to_this_process)
            started += [c.name for c in plan.start]
            say(f"{what}: healthy")
        for name in names:  # includes components that an earlier `up` left still starting
            svc = service(settings, name)
            records = [_live_record(settings, c.name) for c in svc.components]
            gone = [c.name for c, r in zip(svc.components, records, strict=True) if r is None]
            if gone:
                raise LocalPlatformError(
                    f"{', '.join(gone)} stopped while the platform was coming up; see "
                    + ", ".join(str(process.log_file(run_dir(settings), g)) for g in gone)
                )
            try:
                _wait_healthy(svc, svc.components, [r for r in records if r is not None])
            except LocalPlatformError as exc:  # running and never healthy: hung, not starting
                raise LocalPlatformError(f"{exc}\nRestart it: `tenfold down -s {name}`, then `tenfold up`") from exc
        provision(settings, services=names)
    except BaseException:
        for comp_name in reversed(started):
            say(f"{comp_name}: stopping (rolling back this `up`)")
            try:
                _clear(settings, comp_name)
            except process.StillRunning as exc:  # said, and the rollback goes on: the error that caused it goes up
                say(f"warning: {exc}")
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
    chosen = set(services)
    if set(SERVING_NEEDS) & chosen:
        # The feedback sink before the emulators, with the time it takes to land what the subscriptions still hold:
        # the Pub/Sub emulator keeps messages in memory only. `tenfold down` stopped it with the fleet already; a
        # caller that stops the platform alone left it pulling from a stopped emulator, and its backlog was lost.
        # A sink that outlives SIGKILL (StillRunning) ends this here for the same reason: the emulator stays up.
        with _exclusive(settings, say, FEEDBACK_SINK):
            if stop_service(settings, FEEDBACK_SINK):
                say(f"{FEEDBACK_SINK}: stopped")
    stuck: list[process.StillRunning] = []
    for name in reversed([n for n in SERVICE_ORDER if n in chosen]):
        try:
            running = stop_service(settings, name)
        except process.StillRunning as exc:  # the other services are still stopped; it is reported once they are
            say(f"{name}: not stopped, a process of it outlived SIGKILL")
            stuck.append(exc)
            continue
        if running:
            say(f"{name}: stopped")
            stopped.append(name)
        else:
            say(f"{name}: not running")
    if stuck:
        raise process.StillRunning("\n".join(map(str, stuck)), [pid for exc in stuck for pid in exc.pids])
    return stopped


def status(settings: Settings, services: Iterable[str] = SERVICE_ORDER) -> list[ServiceStatus]:
    """Every component of ``services``, each by its own liveness (pid and start time) and health check."""
    out = []
    for name in [n for n in SERVICE_ORDER if n in set(services)]:
        svc = service(settings, name)
        for comp in svc.components:
            record = process.read_record(run_dir(settings), comp.name)
            live = record is not None and process.is_running(record)
            moved = _moved(comp, record, name) if live else ""
            drift = _drift(svc, record, name) if live and not moved else ""
            out.append(
                ServiceStatus(
                    name=comp.name,
                    url=comp.url,
                    running=live,
                    healthy=live and not moved and _healthy(comp.healthy),
                    moved=moved,
                    drift=drift,
                    pid=record.pid if record else None,
                    log=process.log_file(run_dir(settings), comp.name),
                    service=name,
                    label=comp.label,
                    dead=record is not None and not live,
                )
            )
    return out


def died(settings: Settings, name: str) -> list[tuple[str, Path]]:
    """(component, log) of each component of service ``name`` whose pid file names a process that is gone: it died
    (``up`` restarts it). By liveness alone, with no health probe: cheap enough to ask while waiting on the platform."""
    gone = []
    for comp in service(settings, name).components:
        record = process.read_record(run_dir(settings), comp.name)
        if record is not None and not process.is_running(record):
            gone.append((comp.name, process.log_file(run_dir(settings), comp.name)))
    return gone


def describe(settings: Settings, statuses: list[ServiceStatus], *, secrets: bool = False) -> str:
    """Human-readable status: each component, where it is, and the Airflow login (its password only with
    ``secrets``: ``tenfold status`` is the one place that prints it, so `up` and `demo` logs never hold it)."""
    width = max([len(st.name) for st in statuses] + [8])
    lines = []
    for st in statuses:
        where = f"  {st.url}" if st.url else ""
        if st.moved:
            where += f"  (pid {st.pid}: {st.moved})"
        elif st.drift:
            where += f"  (pid {st.pid}: {st.drift})"
        elif st.running:
            where += f"  (pid {st.pid}, log {st.log})"
        elif st.dead:
            where += f"  (pid {st.pid} exited: `tenfold up` restarts it; log {st.log})"
        lines.append(f"{st.name:{width}} {st.state:22}{where}".rstrip())
        if st.name == "airflow-api-server" and st.running:
            password = admin_password(settings) if secrets else "`tenfold status` shows it"
            lines.append(f"{'':{width}} Airflow UI: {st.url}  user: {settings.airflow.admin_user}  "
                         f"password: {password or '(not generated yet)'}")
    lines.append(f"{'lake:':{width}} {settings.storage.lake_uri}")
    return "\n".join(lines)


# --- the serving fleet (``tenfold serve``), started with the platform once a model is registered -------

SERVING_NEEDS = ("gcs", "pubsub")  # the registry and lake reads, and the predictions/feedback topics


def serving_up(settings: Settings, *, say: Callable[[str], object] = print) -> bool:
    """Start the serving fleet on the champion (``settings.serving.server.model_ref``) if there is one.

    With no model registered yet it says so and returns False: a fresh platform has nothing to serve.
    Already running: nothing changes, unless it or the feedback sink runs with other settings than these (see
    :func:`_serving_drift`): refused, naming what changed. Raises :class:`LocalPlatformError` when the fleet cannot
    start. Under the ``up``/``down`` lock (see :func:`exclusive`): a ``tenfold down`` meanwhile would leave the fleet
    running on a stopped platform.
    """
    from tenfold.registry import ModelRegistry, UnknownVersion
    from tenfold.serving import fleet
    from tenfold.serving.auth import ensure_token

    with _exclusive(settings, say):
        ensure_token(settings)  # generated with the platform, so clients can be set up before the first model
        ref = settings.serving.server.model_ref
        try:
            ModelRegistry(settings).find(ref)
        except UnknownVersion:
            say(f"serving: skipped, no model is registered as {ref!r} yet (run `make demo` to train one, "
                "then `tenfold serve up`)")
            return False
        # Both before either starts: a fleet started beside a sink then refused would be half of serving on new settings.
        if drift := serving_drift(settings):
            raise LocalPlatformError(drift)
        fleet.up(settings, ref, say=say)
        feedback_sink_up(settings, say=say)
        return True


# The feedback sink (``tenfold feedback sink``) runs beside the fleet: it lands the sampled predictions and
# the feedback from Pub/Sub in the lake and joins them whenever it is idle.
FEEDBACK_SINK = "feedback-sink"
PUBSUB_PROBE_S = 10.0  # how long feedback_sink_up asks the local Pub/Sub emulator before it refuses to start a sink


def feedback_sink_record(settings: Settings) -> ProcessRecord | None:
    return running_record(settings, FEEDBACK_SINK)


def _serving_env(settings: Settings) -> dict[str, str]:
    """The environment the feedback sink is started with, and the serving fleet's supervisor too (as
    tenfold.serving.fleet's ``up`` builds it, whose replicas inherit it): this shell's, with the settings' variables and
    no alert hook (neither alerts, and a webhook URL is a secret)."""
    import os

    from tenfold.local.env import settings_env, without_alert_hooks

    return {**os.environ, **settings_env(without_alert_hooks(settings))}


def _serving_drift(settings: Settings, record: ProcessRecord | None, name: str) -> str:
    """Why the running fleet's supervisor or feedback sink (``record``) is not serving these settings, naming the
    variables that changed since it started, with what to do; "" when none did. The fleet answered "already running"
    and the sink was reused as it was: after a switch of workload (docs/workloads.md) both kept the old one, as Airflow
    would without :func:`_drift`, and `tenfold down -s airflow` stops neither."""
    if not (changed := _changed_settings(_serving_env(settings), record)):
        return ""
    return (f"{name}: it runs with other settings than these ({', '.join(changed)} changed since it started): stop "
            "the serving fleet and the feedback sink (`tenfold serve down`), then `tenfold up` starts them with these")


def serving_drift(settings: Settings) -> str:
    """Why the running serving fleet or feedback sink does not serve these settings (one line each, see
    :func:`_serving_drift`); "" when neither runs on others. Checked before either is started, or rolled (the demo)."""
    from tenfold.serving import fleet

    return "\n".join(d for name, record in (("serving", fleet.supervisor_record(settings)),
                                            (FEEDBACK_SINK, feedback_sink_record(settings)))
                     if (d := _serving_drift(settings, record, name)))


def feedback_sink_up(settings: Settings, *, say: Callable[[str], object] = print,
                     tie_to_this_process: bool = False) -> ProcessRecord:
    """Start ``tenfold feedback sink`` as a process of the platform unless it runs; returns its record. One running
    with other settings than these (another workload's) is refused, naming what changed (:func:`_serving_drift`)."""
    import sys

    # Under its own lock: `up` and the demo's ensure_serving reach this at the same moment, and both would start
    # a sink, one of them untracked (it would outlive `tenfold down`, pulling the subscriptions).
    with _exclusive(settings, say, FEEDBACK_SINK):
        if (record := feedback_sink_record(settings)) is not None:
            if drift := _serving_drift(settings, record, FEEDBACK_SINK):
                raise LocalPlatformError(drift)
            return record
        # Started without the local Pub/Sub emulator, the sink retried it for a minute and died: `tenfold serve up`
        # said it was up, exit 0, while no sink ran and predictions and feedback stayed on Pub/Sub.
        # Asked for a few seconds: the emulator's JVM, busy on two cores, may miss one health check.
        if settings.is_local and settings.messaging.emulator_host:
            pubsub = service(settings, "pubsub")
            deadline = time.monotonic() + PUBSUB_PROBE_S
            while not _healthy(pubsub.healthy):
                if time.monotonic() >= deadline:
                    raise LocalPlatformError(f"{FEEDBACK_SINK}: the Pub/Sub emulator does not answer on {pubsub.url}, "
                                             "where the sink pulls the predictions and feedback: run `tenfold up`")
                time.sleep(0.5)
        process.remove_pid_file(run_dir(settings), FEEDBACK_SINK)  # a dead one's stale pid file
        record = process.start(
            FEEDBACK_SINK, [sys.executable, "-m", "tenfold.cli", "feedback", "sink"], run_dir=run_dir(settings),
            port=0, env=_serving_env(settings), cwd=settings.local.home,
            tie_to_this_process=tie_to_this_process,
        )
    say(f"{FEEDBACK_SINK}: landing predictions and feedback in the lake (pid {record.pid}, log {record.log})")
    return record


class FleetStillRunning(process.StillRunning):
    """:func:`serving_down`'s: a process of the serving fleet outlived SIGKILL (the feedback sink was still stopped).
    The platform's services are no use of it: ``tenfold down`` stops them and then raises it."""


def serving_down(settings: Settings, *, say: Callable[[str], object] = print) -> bool:
    """Stop the serving fleet if it runs; True when something was stopped."""
    from tenfold.serving import fleet

    stuck: process.StillRunning | None = None
    try:
        stopped = fleet.down(settings, say=say)
    except process.StillRunning as exc:  # the rest of the fleet is stopped; the sink still goes, then it is raised
        stuck, stopped = exc, True
        say("serving: not stopped, a process of it outlived SIGKILL")
    else:
        say("serving: stopped" if stopped else "serving: not running")
    with _exclusive(settings, say, FEEDBACK_SINK):  # never beside a start of it
        # After the replicas and before the Pub/Sub emulator (_down): it lands all the subscriptions still hold,
        # what the replicas published last included (tenfold.feedback.sink.STOP_DRAIN_S).
        try:
            if stop_service(settings, FEEDBACK_SINK):
                say(f"{FEEDBACK_SINK}: stopped")
        except process.StillRunning as sink_stuck:  # the emulator it pulls from stays up: a plain StillRunning
            if stuck is None:
                raise
            raise process.StillRunning(f"{stuck}\n{sink_stuck}", [*stuck.pids, *sink_stuck.pids]) from sink_stuck
    if stuck is not None:
        raise FleetStillRunning(str(stuck), stuck.pids) from stuck
    return stopped
