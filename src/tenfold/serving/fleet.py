"""The local serving fleet: model-server replicas in a ``stable`` and a ``canary`` pool behind HAProxy.

Run ``tenfold serve up`` (``make up`` does it when a champion exists), ``tenfold serve status``,
``tenfold serve rollout --model <ref> [--pool stable|canary]``, ``tenfold serve scale --pool <pool>
--min N --max M``, ``tenfold serve split [PERCENT]`` and ``tenfold serve down``; see docs/serving.md.

Shape: a declarative spec and a supervisor that reconciles towards it.

* ``up`` writes the settings (``fleet-settings.json``) and the desired state (``fleet-spec.json``: per
  pool a model version and replica bounds) into ``<settings.local.home>/run`` and starts the
  supervisor, ``python -m tenfold.serving.fleet --settings-file <run>/fleet-settings.json``, as a
  background process with a pid file (:mod:`tenfold.local.process`).
* The supervisor starts HAProxy (:mod:`tenfold.serving.haproxy`) and the replicas, each a process of
  its own (``python -m tenfold.serving --host .. --port .. --arm <pool> --model <version>``, the
  serving image's entry command) with a pid file and a log in the run directory, on ports from
  ``settings.local.replica_base_port`` upward. Several times a second it:

  - replaces a replica whose process died, or that HAProxy has seen DOWN for
    ``replica_down_restart_s`` (hung);
  - sizes each pool with :class:`tenfold.serving.autoscale.Autoscaler` from HAProxy's in-flight
    requests, between the spec's bounds;
  - rolls a pool to a new version one replica at a time: start one of the new version, wait until
    HAProxy's own health check has it UP, then drain one of the old ones (no surge beyond one, never
    fewer serving replicas than the pool needs);
  - restarts HAProxy if it died, and writes what it sees to ``fleet-status.json``.

* A replica enters HAProxy only after HAProxy's health check on its readiness path passed ``rise``
  times; it leaves by ``drain`` (no new requests), then, with nothing in flight, ``maint`` and SIGTERM,
  which the server answers with a graceful drain of its own. Nothing is reloaded: slots are filled and
  emptied through the runtime API.
* ``rollout``/``scale`` change the spec (under a lock) and wait until the status shows it applied;
  ``down`` stops the supervisor, which stops HAProxy and every replica it started, then removes any
  pid file left by a supervisor that died.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable, Collection
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import psutil

from tenfold.config import Settings
from tenfold.config.pipelines import MONTH
from tenfold.fsio import atomic_write, file_lock
from tenfold.local import process
from tenfold.local.env import settings_env, without_alert_hooks
from tenfold.local.process import LocalPlatformError, ProcessRecord
from tenfold.rollout.split import CANARY, STABLE
from tenfold.serving.autoscale import Autoscaler, utilization
from tenfold.serving.faults import Fault
from tenfold.serving.haproxy import (
    POOLS,
    STATS_USER,
    HaproxyError,
    HaproxyPaths,
    HaproxySilent,
    RuntimeApi,
    ServerStat,
    haproxy_argv,
    haproxy_binary,
    read_split_map,
    slot_count,
    slot_name,
    write_config,
)
from tenfold.serving.replica import ENDED_DIR_ENV
from tenfold.serving.requestlog import RequestLog

SUPERVISOR = "fleet"
HAPROXY = "haproxy"
SETTINGS_FILE = "fleet-settings.json"
SPEC_FILE = "fleet-spec.json"
STATUS_FILE = "fleet-status.json"
REPLICA_MODULE = "tenfold.serving"
# How far above replica_base_port replica ports may go.
PORT_SPAN = 1000
# A replica that dies within this long of entering rotation counts as one that failed to come up (its pool backs
# off before the next start); one that served this long resets its pool's back-off.
SETTLED_S = 60.0
# How long a started HAProxy has to answer its runtime API before it is stopped and its start counted as failed.
HAPROXY_START_S = 10.0
# How old the supervisor's status may be before the supervisor counts as not responding. It writes one every tick
# (Supervisor.run: at most 0.2 s apart), but one tick may run long: restarting a hung HAProxy waits on its runtime API
# (5 s), its stop (5 s), the new one's start (HAPROXY_START_S) and, should that fail, its stop again (5 s), some 25 s,
# more on a busy 2-core machine. An older status is from a supervisor stopped by SIGSTOP or hung: its pid lives on, so
# it passed for running, while nothing replaced a replica that died.
STATUS_STALE_S = 60.0
# Less free space than this where the status is written: the disk is full, and that (not a hung supervisor) is why the
# status is old. (The status is a few KiB; a disk with less than this left is full for every purpose.)
FULL_DISK_BYTES = 64 * 1024

# Replica states in the supervisor.
STARTING, SERVING, DRAINING, STOPPING = "starting", "serving", "draining", "stopping"


class FleetError(LocalPlatformError):
    """The fleet could not be started, changed or stopped; the message says what to do."""


class BoundsRefused(FleetError):
    """Replica bounds a pool cannot take (``tenfold serve scale`` exits 2 for it: a refusal, not a failure)."""


class UnknownModel(FleetError):
    """A model reference the registry does not hold (``tenfold serve up``/``rollout``/``fault`` exit 2 for it, as
    ``tenfold models`` does: a refusal of what was asked, not a failure of the fleet)."""


class FleetTimeout(FleetError):
    """What was waited for did not happen in time (the supervisor still running)."""


class PoolRefused(FleetError):
    """A change the pool cannot take as it is set (a rollout of a pool that keeps no replica): the same on every try,
    so a pipeline task fails at once on it (:func:`tenfold.pipelines.common.run_step`), not after its retries."""

    retryable = False


def run_dir(settings: Settings) -> Path:
    return HaproxyPaths.of(settings).run_dir


def ended_dir(settings: Settings) -> Path:
    """Where each replica leaves, as it exits, what it counted that its /metrics took with it
    (:func:`tenfold.serving.replica.record_ended`)."""
    return run_dir(settings) / "ended"


# A replica's exit record is read for the month it served in (make demo): older ones are removed when a supervisor starts.
ENDED_KEPT_S = 7 * 86400


def replica_name(pool: str, slot: int) -> str:
    return f"replica-{pool}-{slot}"


def _kept(exc: process.StillRunning, path: Path, then: str) -> str:
    """What to say of a process of the fleet that outlived SIGKILL (``exc``): its pid file ``path`` is kept, how to see
    what it waits on, and ``then`` (what happens, or what to do, next)."""
    return f"{exc}; its pid file {path} is kept: {process.what_it_waits_on(exc.pids)}; {then}"


def _still_running(stuck: list[tuple[process.StillRunning, Path]]) -> process.StillRunning:
    """One :class:`process.StillRunning`, in one line, for the processes of the fleet a command could not stop (each
    with the pid file kept for it): what to do is the same for all of them."""
    pids = sorted({pid for exc, _path in stuck for pid in exc.pids})
    files = ", ".join(str(path) for _exc, path in stuck)
    kept = f"its pid file {files} is kept" if len(stuck) == 1 else f"their pid files {files} are kept"
    it, waits, has = ("it", "it waits", "it has") if len(pids) == 1 else ("them", "they wait", "they have")
    return process.StillRunning(
        f"{'; '.join(str(exc) for exc, _path in stuck)}; {kept}, so `tenfold serve up` and `tenfold serve down` still "
        f"find {it}: {process.what_it_waits_on(pids, waits)}; once {has} exited (a reboot ends {it}), run the command "
        "again", pids)


def _process(pid: int) -> psutil.Process | None:
    """The process ``pid`` names now, or None when it has exited."""
    try:
        return psutil.Process(pid)
    except psutil.Error:
        return None


def _lives(proc: psutil.Process) -> bool:
    """Whether ``proc`` (the very process: psutil checks its start time) has not exited."""
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _write_atomic(path: Path, text: str) -> None:
    # Rewritten several times a second (the status) and rebuilt after a crash: atomic, not fsynced.
    atomic_write(path, text.encode(), durable=False)


# --- the desired state -------------------------------------------------------------------------


# A replica loads the lookups of the months up to its pool's token's month (serving.server.lookups_through).
LOOKUPS_THROUGH_ENV = "TENFOLD_SERVING__SERVER__LOOKUPS_THROUGH"


def lookups_month(token: str) -> str:
    """The month (YYYY-MM) a lookups token names (``2013-05@20261205T...``, or ``2013-05``), else ""."""
    month = token.split("@", 1)[0]
    return month if MONTH.fullmatch(month) else ""


def lookups_token(settings: Settings, say: Callable[[str], object] = print) -> str:
    """A fresh fleet's token: the newest month served now and the time ("" when none is, or the lake cannot be read:
    the replicas then load what there is when they start, and say what is missing)."""
    from tenfold.features.online import served_months

    try:
        months = served_months(settings)
    except Exception as exc:  # the replicas' own load names the problem; the fleet still starts
        say(f"fleet: the months served could not be listed ({type(exc).__name__}: {exc}); each replica loads every "
            "month published when it starts")
        return ""
    return f"{months[-1].label}@{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}" if months else ""


@dataclass(frozen=True)
class PoolSpec:
    """What one pool should run: a model version, and the bounds the autoscaler keeps it in."""

    version: str
    min: int
    max: int
    # An injected fault (tenfold.serving.faults, canonical text; "" for none): game days and rollout tests.
    fault: str = ""
    # The lookup tables the replicas must have loaded (a token, e.g. the newest served month): a replica
    # loads the published lookups when it starts, so a new token rolls the pool to pick up new months.
    lookups: str = ""

    def wants(self) -> tuple[str, str, str]:
        """What a replica must run to belong to this pool as it is now."""
        return (self.version, self.fault, self.lookups)


@dataclass(frozen=True)
class FleetSpec:
    """The fleet's desired state; each change raises ``generation``."""

    generation: int
    pools: dict[str, PoolSpec]

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str) -> FleetSpec:
        raw = json.loads(text)
        return cls(
            generation=int(raw["generation"]),
            pools={pool: PoolSpec(**spec) for pool, spec in raw["pools"].items()},
        )


def read_spec(settings: Settings) -> FleetSpec | None:
    """The desired state; None when the fleet never ran. A file that does not parse (truncated by a full disk, edited
    by hand) is a FleetError naming it and what to do."""
    path = run_dir(settings) / SPEC_FILE
    try:
        return FleetSpec.from_json(path.read_text())
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError, AttributeError) as exc:  # ValueError: JSONDecodeError, UnicodeDecodeError
        raise FleetError(f"{path} is corrupt ({type(exc).__name__}: {exc}): run `tenfold serve down` then "
                         "`tenfold serve up`") from None


def _spec_lock(settings: Settings) -> contextlib.AbstractContextManager[None]:
    """Held while the desired state (the spec file) is read and replaced."""
    return file_lock(run_dir(settings) / ".fleet-spec.lock")


def _exclusive(settings: Settings) -> contextlib.AbstractContextManager[None]:
    """One ``up``/``down`` of the fleet at a time per home: two racing would each start a supervisor."""
    return file_lock(run_dir(settings) / ".fleet.lock")


def update_spec(settings: Settings, change: Callable[[FleetSpec], dict[str, PoolSpec]]) -> FleetSpec:
    """Apply ``change`` (old spec -> new pools) under the spec lock; returns the new spec."""
    with _spec_lock(settings):
        old = read_spec(settings)
        if old is None or supervisor_record(settings) is None:
            raise FleetError("the serving fleet is not up: run `tenfold serve up`")
        new = FleetSpec(generation=old.generation + 1, pools=change(old))
        _write_atomic(run_dir(settings) / SPEC_FILE, new.to_json())
        return new


# --- the observed state ------------------------------------------------------------------------


@dataclass(frozen=True)
class ReplicaStatus:
    pool: str
    slot: int
    version: str
    port: int
    pid: int
    state: str  # starting, serving, draining, stopping
    lb_status: str  # HAProxy's view: UP, DOWN, DRAIN, MAINT, ...
    in_flight: int
    log: str
    fault: str = ""
    lookups: str = ""


@dataclass(frozen=True)
class PoolStatus:
    version: str
    min: int
    max: int
    desired: int
    utilization: float
    replicas: list[ReplicaStatus]
    # The versions whose replicas failed to come up, or died soon after, since the pool's back-off last reset: the
    # supervisor retries them, backing off (empty: written by a supervisor from before it was kept).
    failing: list[str] = field(default_factory=list)

    def serving(self, version: str | None = None) -> list[ReplicaStatus]:
        return [r for r in self.replicas if r.state == SERVING and (version is None or r.version == version)]


@dataclass(frozen=True)
class FleetStatus:
    """What the supervisor saw at ``updated_at`` (written every tick to ``fleet-status.json``)."""

    generation: int
    updated_at: float
    supervisor_pid: int
    haproxy_pid: int | None
    pools: dict[str, PoolStatus]
    events: list[str] = field(default_factory=list)
    # time.monotonic() when it was written: Linux's monotonic clock is the machine's, the same in every process, and
    # neither a wall-clock step (NTP) nor a suspend moves it (0.0: written by a supervisor from before it was kept).
    updated_monotonic: float = 0.0

    @property
    def ready(self) -> bool:
        """Every pool serves at least its minimum of replicas of its version."""
        return self.haproxy_pid is not None and all(len(p.serving(p.version)) >= p.min for p in self.pools.values())

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str) -> FleetStatus:
        raw = json.loads(text)
        pools = {
            name: PoolStatus(**{**p, "replicas": [ReplicaStatus(**r) for r in p["replicas"]]}) for name, p in raw["pools"].items()
        }
        return cls(**{**raw, "pools": pools})


def read_status(settings: Settings) -> FleetStatus | None:
    try:
        return FleetStatus.from_json((run_dir(settings) / STATUS_FILE).read_text())
    except (FileNotFoundError, ValueError, KeyError, TypeError):
        return None


def not_responding(st: FleetStatus | None, record: ProcessRecord) -> str | None:
    """What to say when the running supervisor's last status (``st``) is older than :data:`STATUS_STALE_S`: it is
    stopped or hung, and what the status shows is no longer so. None while it writes (or has yet to write) one."""
    if st is None:
        return None
    # By the monotonic clock: a wall clock stepped forward past STATUS_STALE_S (NTP, a laptop resumed) made every
    # status look old at once, and the first wait on it failed with "not responding".
    age = time.monotonic() - st.updated_monotonic if st.updated_monotonic else time.time() - st.updated_at
    if age <= STATUS_STALE_S:
        return None
    folder = Path(record.log).parent  # the run folder, where the status and the supervisor's log are written
    with contextlib.suppress(OSError):
        disk = os.statvfs(folder)
        if (free := disk.f_bavail * disk.f_frsize) < FULL_DISK_BYTES:
            # The supervisor goes on supervising (it ignores a write that fails); called hung, it was restarted.
            return (f"the fleet supervisor (pid {record.pid}) cannot write its status: the disk holding {folder} is "
                    f"full ({free} bytes free; its last status is {age:.0f} s old): free space there")
    return (f"the fleet supervisor (pid {record.pid}) is not responding: its last status is {age:.0f} s old (it writes "
            f"one several times a second), so nothing replaces a replica that dies; see its log {record.log}, then "
            "run `tenfold serve down && tenfold serve up`")


# --- the supervisor ----------------------------------------------------------------------------


@dataclass
class _Replica:
    pool: str
    slot: int
    version: str
    port: int
    record: ProcessRecord
    fault: str = ""
    lookups: str = ""
    state: str = STARTING
    since: float = field(default_factory=time.monotonic)
    down_since: float | None = None
    stop: Future[bool] | None = None
    lb: ServerStat | None = None
    # When it first entered rotation: an HAProxy restart re-checks it (STARTING again, ``since`` anew), but how long
    # it has served, for telling a crash soon after admission from a replica that had served for long, counts from here.
    admitted_at: float | None = None
    repoint_failed: bool = False  # aiming its slot failed (said once)

    @property
    def model(self) -> tuple[str, str]:
        """What a failure is held against: the version and its injected fault (not the lookups it serves)."""
        return self.version, self.fault

    @property
    def server(self) -> str:
        return slot_name(self.slot)

    def enter(self, state: str) -> None:
        self.state, self.since = state, time.monotonic()


def _lb_up(r: _Replica) -> bool:
    """Whether HAProxy's last look saw the replica UP (None right after a change of its slot: not yet)."""
    return r.lb is not None and r.lb.up


BACKOFF_MAX_S = 30.0  # the longest wait between two tries of a failing replica or HAProxy


def _prune_ended(folder: Path) -> None:
    """Remove the replicas' exit records older than :data:`ENDED_KEPT_S` (one per replica that ever exited)."""
    cutoff = time.time() - ENDED_KEPT_S
    with contextlib.suppress(OSError):
        for path in folder.glob("*.json"):
            with contextlib.suppress(OSError):
                if path.stat().st_mtime < cutoff:
                    path.unlink()


def _backed_off(failures: int) -> tuple[int, float]:
    """The back-off after one more failure: (failures, when to try again), 0.5 s doubling up to BACKOFF_MAX_S."""
    return failures + 1, time.monotonic() + min(BACKOFF_MAX_S, 0.5 * 2**failures)


class Supervisor:
    """Keeps HAProxy and the replicas of both pools at the spec; ``run()`` until SIGTERM, then stops all."""

    def __init__(self, settings: Settings, *, say: Callable[[str], object] = print) -> None:
        self.settings = settings
        self.fleet = settings.serving.fleet
        self.paths = HaproxyPaths.of(settings)
        self.run_dir = self.paths.run_dir
        self.api = RuntimeApi(self.paths.socket)
        self._say = say
        self.spec = self._load_spec()
        self._spec_mtime = 0.0
        self.replicas: list[_Replica] = []
        # Replicas that outlived SIGKILL (stuck in uninterruptible I/O: a hung mount), each with those processes: their
        # pid files are kept and their slots stay taken until they have exited (a replica started in such a slot wrote
        # its pid file over theirs, and nothing knew of them any more).
        self.stuck: list[tuple[_Replica, list[psutil.Process]]] = []
        self.haproxy: ProcessRecord | None = None
        # HAProxy's request lines, from its ring to the rotated request log (read by the rollout's observer).
        self.request_log = RequestLog(self.paths.socket, self.paths.request_log, self.fleet.request_log_max_kb * 1024)
        self.scalers = {
            pool: Autoscaler(
                low=spec.min, high=spec.max, capacity=self.fleet.replica_capacity,
                target=settings.serving.target_utilization, stabilization_s=self.fleet.stabilization_s,
            )
            for pool, spec in self.spec.pools.items()
        }
        self.desired = {pool: spec.min for pool, spec in self.spec.pools.items()}
        self.samples: dict[str, list[int]] = {pool: [] for pool in POOLS}
        self.util: dict[str, float] = {pool: 0.0 for pool in POOLS}
        self.backoff: dict[str, tuple[int, float]] = {pool: (0, 0.0) for pool in POOLS}
        self.failed_at: dict[str, float] = {pool: 0.0 for pool in POOLS}  # the pool's last failure (monotonic)
        # What failed since the pool's back-off last reset (version, fault): a roll holds back only the replicas of
        # what keeps failing, not a new version after a failure of the one it replaces.
        self.failed: dict[str, set[tuple[str, str]]] = {pool: set() for pool in POOLS}
        self.haproxy_backoff: tuple[int, float] = (0, 0.0)
        self.haproxy_started_at = 0.0  # when the HAProxy now running was started (monotonic)
        # Since when HAProxy's runtime API has not answered while its process lives (None: it answers).
        self.haproxy_silent_since: float | None = None
        self._slot_failures: set[tuple[str, str, str]] = set()  # (pool, slot, command) said to have failed
        self._maintained: set[tuple[str, str]] = set()  # slots put in maintenance during this tick
        self.events: list[str] = []
        # Lines its log (stdout: run/fleet.log) did not take (a full disk) since the last one it took, and why.
        self.unsaid: tuple[int, str] = (0, "")
        self._status_unwritten = False  # the last status write failed (said once, until one succeeds)
        self.stopping = threading.Event()
        self.executor = ThreadPoolExecutor(max_workers=8, thread_name_prefix="stop")
        self.env = {**os.environ, **settings_env(settings), ENDED_DIR_ENV: str(ended_dir(settings))}
        _prune_ended(ended_dir(settings))
        self._last_scale = time.monotonic()

    # -- small helpers
    def say(self, message: str) -> None:
        line = f"{time.strftime('%H:%M:%S')} {message}"
        self.events = [*self.events[-19:], line]
        # A log that cannot be written (its disk full) loses the line, not the supervisor: raised, it ended the loop,
        # then the shutdown at its first line, so HAProxy and every replica outlived a supervisor that exited.
        try:
            if self.unsaid[0]:
                self._say(f"{time.strftime('%H:%M:%S')} fleet: {self.unsaid[0]} lines before this one could not be "
                          f"written to this log ({self.unsaid[1]})")
                self.unsaid = (0, "")
            self._say(line)
        except OSError as exc:
            self.unsaid = (self.unsaid[0] + 1, exc.strerror or repr(exc))

    def _load_spec(self) -> FleetSpec:
        spec = read_spec(self.settings)
        if spec is None:
            raise FleetError(f"no fleet spec in {self.run_dir}: start the fleet with `tenfold serve up`")
        return spec

    def _reload_spec(self) -> None:
        try:
            mtime = (self.run_dir / SPEC_FILE).stat().st_mtime
        except FileNotFoundError:
            return
        if mtime == self._spec_mtime:
            return
        self._spec_mtime = mtime
        try:
            spec = self._load_spec()
        except FleetError as exc:  # said once per change of the file; the fleet keeps to the last good spec
            self.say(f"{exc}; keeping the last good spec (generation {self.spec.generation})")
            return
        if spec.generation == self.spec.generation:
            return
        for pool, ps in spec.pools.items():
            old = self.spec.pools[pool]
            if (ps.min, ps.max) != (old.min, old.max):
                self.scalers[pool].set_bounds(ps.min, ps.max)
                self.desired[pool] = max(ps.min, min(ps.max, self.desired[pool]))
                self.say(f"{pool}: bounds {ps.min}..{ps.max}")
            if ps.wants() != old.wants():
                if (ps.version, ps.fault) != (old.version, old.fault):
                    self._settled(pool)  # the back-off was earned by what the pool ran; a new version starts afresh
                self.say(f"{pool}: rolling to {ps.version}" + (f" with injected fault {ps.fault}" if ps.fault else "")
                         + (f" (lookups {ps.lookups})" if ps.lookups != old.lookups else ""))
        self.spec = spec

    def pool_replicas(self, pool: str, *states: str) -> list[_Replica]:
        return [r for r in self.replicas if r.pool == pool and (not states or r.state in states)]

    # -- HAProxy
    def start_haproxy(self) -> None:
        self.haproxy_silent_since = None  # a new process: its silence counts from now
        self.haproxy_started_at = time.monotonic()
        self.haproxy = process.start(HAPROXY, haproxy_argv(self.paths), run_dir=self.run_dir, port=self.settings.local.lb_port)
        process.wait_until(self.api.alive, timeout=HAPROXY_START_S, what="HAProxy", record=self.haproxy, interval=0.05)
        self.say(f"haproxy: pid {self.haproxy.pid} on {self.settings.local.bind_host}:{self.settings.local.lb_port}")

    def _ensure_haproxy(self) -> bool:
        """True when HAProxy runs (restarting it if it died, or if its runtime API has not answered for
        ``HAPROXY_START_S``: hung, or stopped by SIGSTOP, which no liveness check sees); False while a failed restart
        waits out its back-off."""
        silent = self.haproxy_silent_since
        if (self.haproxy is not None and silent is not None and time.monotonic() - silent > HAPROXY_START_S
                and not self.api.alive()):  # one more look: slow under load answers in the end
            self.say(f"haproxy: pid {self.haproxy.pid} has not answered its runtime API for "
                     f"{time.monotonic() - silent:.0f} s: stopping it")
            try:
                process.stop(self.haproxy, timeout=5, check=True)
            except process.StillRunning as exc:  # still running: it stays this fleet's HAProxy, tried again later
                self.say(_kept(exc, process.pid_file(self.run_dir, HAPROXY),
                               "no other HAProxy is started until it has exited (it holds the port)"))
            self.haproxy_silent_since = None
        lived = time.monotonic() - self.haproxy_started_at
        if self.haproxy is not None and process.is_running(self.haproxy):
            if self.haproxy_backoff[0] and lived >= SETTLED_S:  # it has stayed up: the failures are behind it
                self.haproxy_backoff = (0, 0.0)
            return True
        if self.haproxy is not None:
            # It died: reaped (and anything left in its group stopped) whenever it died, not only soon after its
            # start: left unreaped, each HAProxy that died after SETTLED_S stayed a zombie for the supervisor's life.
            dead, self.haproxy = self.haproxy, None
            process.stop(dead, timeout=5)
            process.remove_pid_file(self.run_dir, HAPROXY)
            if lived < SETTLED_S:
                # Soon after it started (as a replica that dies soon after entering rotation): a failed start, backed
                # off. Restarted at once, a HAProxy that crashes a second after each start was restarted every tick,
                # each restart taking every replica out of rotation until its health checks passed again.
                self.haproxy_backoff = _backed_off(self.haproxy_backoff[0])
                self.say(f"haproxy: pid {dead.pid} ended {lived:.1f} s after it started; retrying in "
                         f"{self.haproxy_backoff[1] - time.monotonic():.1f} s")
            else:
                self.say(f"haproxy: pid {dead.pid} ended {lived:.0f} s after it started")
        failures, retry_at = self.haproxy_backoff
        if time.monotonic() < retry_at:
            return False
        self.say("haproxy: not running, restarting it; replicas re-enter after their health checks")
        process.remove_pid_file(self.run_dir, HAPROXY)
        try:
            self.start_haproxy()
        except LocalPlatformError as exc:
            if self.haproxy is not None:  # started but never answered: stopped, not left running unrecorded
                try:
                    process.stop(self.haproxy, timeout=5, check=True)
                except process.StillRunning as stuck:
                    # Kept, as a hung HAProxy is (above): its pid file stays, and no other starts beside it.
                    self.say(_kept(stuck, process.pid_file(self.run_dir, HAPROXY),
                                   "no other HAProxy is started until it has exited (it holds the port)"))
                else:
                    process.remove_pid_file(self.run_dir, HAPROXY)
                    self.haproxy = None
            self.haproxy_backoff = _backed_off(failures)
            self.say(f"haproxy: could not restart ({exc}); retrying in {self.haproxy_backoff[1] - time.monotonic():.1f} s")
            return False
        # The back-off is kept until it has stayed up SETTLED_S (above): one that dies soon after it answered is
        # backed off further.
        for pool, scaler in self.scalers.items():  # nothing was observed while it was away: no window, no samples
            scaler.restart()
            self.samples[pool] = []
        back = [r for r in self.replicas if r.state in (STARTING, SERVING)]
        for r in back:  # all of them first: a slot a failed call leaves in maintenance is aimed again by _observe
            r.enter(STARTING)
        for r in back:
            with contextlib.suppress(HaproxyError):
                self.api.point(r.pool, r.server, self.settings.local.bind_host, r.port)
        return True

    # -- replicas
    def _free_slot(self, pool: str) -> int | None:
        used = {r.slot for r in self.pool_replicas(pool)} | {r.slot for r, _procs in self.stuck if r.pool == pool}
        return next((i for i in range(1, slot_count(self.settings, pool) + 1) if i not in used), None)

    def _free_port(self) -> int:
        local = self.settings.local
        taken = {r.port for r in self.replicas} | {local.lb_port, self.fleet.lb_metrics_port}
        for port in range(local.replica_base_port, min(local.replica_base_port + PORT_SPAN, 65536)):
            if port not in taken and process.port_state(local.bind_host, port) == "free":
                return port
        raise FleetError(f"no free port from {local.replica_base_port} to {local.replica_base_port + PORT_SPAN} (each "
                         f"in use, or below {process.unprivileged_port_start()}, which only root may listen on): set "
                         "TENFOLD_LOCAL__REPLICA_BASE_PORT to a free range")

    def start_replica(self, pool: str, version: str, fault: str = "", lookups: str = "") -> _Replica | None:
        if time.monotonic() < self.backoff[pool][1]:
            return None
        slot = self._free_slot(pool)
        if slot is None:
            return None
        port = self._free_port()
        host = self.settings.local.bind_host
        argv = [sys.executable, "-m", REPLICA_MODULE, "--host", host, "--port", str(port), "--arm", pool, "--model", version]
        if fault:
            argv += ["--fault", fault]
        name = replica_name(pool, slot)
        env = self.env
        if through := lookups_month(lookups):  # the months its pool's token names, whatever was published since
            env = {**env, LOOKUPS_THROUGH_ENV: through}
        try:
            record = process.start(name, argv, run_dir=self.run_dir, port=port, env=env, cwd=self.settings.local.home)
        except LocalPlatformError as exc:
            self._failed(pool, (version, fault), f"{name}: could not start: {exc}")
            return None
        replica = _Replica(pool=pool, slot=slot, version=version, port=port, record=record, fault=fault, lookups=lookups)
        self.replicas.append(replica)
        with contextlib.suppress(HaproxyError):  # the slot stays in maintenance: _observe aims it again
            self.api.point(pool, replica.server, host, port)
        self.say(f"{name}: started {version} on port {port} (pid {record.pid})")
        return replica

    def _failed(self, pool: str, model: tuple[str, str], message: str) -> None:
        """A replica of ``model`` (version, fault) failed to come up, or died (or went DOWN) soon after it did: retry later, waiting longer each
        time (a bad model must not spin). The back-off resets once a replica of the pool that entered rotation
        after the failure has served :data:`SETTLED_S`, or when the pool is set to run something else."""
        self.backoff[pool] = _backed_off(self.backoff[pool][0])
        self.failed_at[pool] = time.monotonic()
        self.failed[pool].add(model)
        self.say(f"{message}; retrying in {self.backoff[pool][1] - time.monotonic():.1f} s")

    def _settled(self, pool: str) -> None:
        self.backoff[pool] = (0, 0.0)
        self.failed[pool].clear()

    def drain(self, replica: _Replica, why: str) -> None:
        name = replica_name(replica.pool, replica.slot)
        if replica.state == STARTING:
            self._stop(replica, f"{why} (it was still starting)")
            return
        with contextlib.suppress(HaproxyError):
            self.api.drain(replica.pool, replica.server)
        replica.enter(DRAINING)
        self.say(f"{name}: draining ({why})")

    def _stop(self, replica: _Replica, why: str) -> None:
        """Out of HAProxy, then SIGTERM (the server drains what it still holds), SIGKILL after the drain timeout."""
        with contextlib.suppress(HaproxyError):
            self.api.maintain(replica.pool, replica.server)
        timeout = self.settings.serving.server.stop_timeout_s
        replica.stop = self.executor.submit(process.stop, replica.record, timeout=timeout, check=True)
        replica.enter(STOPPING)
        self.say(f"{replica_name(replica.pool, replica.slot)}: stopping ({why})")

    def _forget(self, replica: _Replica) -> None:
        with contextlib.suppress(HaproxyError):
            self.api.maintain(replica.pool, replica.server)
            self._maintained.add((replica.pool, replica.server))  # (the sweep's view of HAProxy predates it)
        name = replica_name(replica.pool, replica.slot)
        try:
            if replica.stop is None:
                # It died on its own: reap it (no zombie per crash) and stop anything left in its group.
                process.stop(replica.record, timeout=5, check=True)
            elif isinstance(failed := replica.stop.exception(timeout=0), process.StillRunning):
                raise failed
        except process.StillRunning as exc:
            self.replicas.remove(replica)
            self.stuck.append((replica, [proc for pid in exc.pids if (proc := _process(pid)) is not None]))
            self.say(_kept(exc, process.pid_file(self.run_dir, name),
                           f"{replica.pool}'s slot {replica.slot} stays taken until it has exited"))
            return
        self._drop_pid_file(replica)
        self.replicas.remove(replica)

    def _drop_pid_file(self, replica: _Replica) -> None:
        """Remove the replica's pid file, when it still names that replica."""
        rec = process.read_record(self.run_dir, replica_name(replica.pool, replica.slot))
        if rec is not None and rec.pid == replica.record.pid:
            process.remove_pid_file(self.run_dir, replica_name(replica.pool, replica.slot))

    def _release_stuck(self) -> None:
        """Free the slot, and drop the pid file, of each replica that outlived SIGKILL and has exited since."""
        for replica, procs in list(self.stuck):
            if not any(_lives(proc) for proc in procs) and not process.is_group_running(replica.record):
                self.stuck.remove((replica, procs))
                self._drop_pid_file(replica)
                self.say(f"{replica_name(replica.pool, replica.slot)}: pid {replica.record.pid} has exited at last; "
                         "its slot is free again")

    def _observe(self) -> None:
        """Advance each replica's state from its process and HAProxy's view of it."""
        every = self.api.all_servers()
        servers = {pool: every.get(pool, {}) for pool in POOLS}
        self._maintained = set()
        now = time.monotonic()
        for r in list(self.replicas):
            r.lb = servers[r.pool].get(r.server)
            name = replica_name(r.pool, r.slot)
            if r.state == STOPPING:
                if r.stop is not None and r.stop.done():
                    self._forget(r)
                continue
            if not process.is_running(r.record):
                code = "" if r.state != STARTING else f"; last log lines:\n{process.log_tail(r.record.log, 8)}"
                # Its port was free when it was chosen; another process may have taken it before the replica bound it
                # (the replica exits 1 then). Not the version's failure: the next start picks another port.
                taken = (r.state == STARTING and r.admitted_at is None
                         and process.port_state(self.settings.local.bind_host, r.port) != "free")
                self._forget(r)
                served = now - r.admitted_at if r.admitted_at is not None else None
                if taken:
                    self.say(f"{name}: exited while starting: another process took port {r.port} first; starting it "
                             f"again on another port{code}")
                elif r.state == STARTING and served is None:
                    self._failed(r.pool, r.model, f"{name}: exited while starting{code}")
                elif r.state in (STARTING, SERVING) and served is not None and served < SETTLED_S:
                    self._failed(r.pool, r.model, f"{name}: process {r.record.pid} died {served:.0f} s after it "
                                                  f"entered rotation; last log lines:\n{process.log_tail(r.record.log, 8)}")
                else:
                    self.say(f"{name}: process {r.record.pid} is gone ({r.state}); replacing it")
                continue
            if r.state in (STARTING, SERVING) and r.lb is not None and (
                    r.lb.status == "MAINT" or (r.lb.port is not None and r.lb.port != r.port)):
                # Its slot is not aimed at it: a runtime API call that failed (a timeout, HAProxy restarted meanwhile)
                # left the slot in maintenance or on an older replica's port. HAProxy would never check it, so it
                # would never enter rotation, or stay "serving" here while HAProxy sends it nothing.
                if r.state == SERVING:  # whether or not aiming it works now: not serving, and timed out as a start
                    r.enter(STARTING)
                    self.say(f"{name}: its HAProxy slot was {r.lb.status} on port {r.lb.port}: aiming it again, it "
                             "re-enters rotation after its health checks")
                try:
                    self.api.point(r.pool, r.server, self.settings.local.bind_host, r.port)
                    r.lb, r.repoint_failed = None, False
                except HaproxyError as exc:  # tried again next tick; a start that never gets there times out below
                    if not r.repoint_failed:
                        self.say(f"{name}: could not aim its HAProxy slot at it ({exc}); trying again")
                    r.repoint_failed = True
            if r.state == STARTING:
                if r.lb is not None and r.lb.checked_up:
                    self.api.admit(r.pool, r.server)
                    r.enter(SERVING)
                    r.admitted_at = r.since if r.admitted_at is None else r.admitted_at
                    r.lb = None  # HAProxy's view changed; the next look fills it in
                    self.say(f"{name}: in rotation (HAProxy health check passed)")
                elif now - r.since > self.fleet.replica_start_timeout_s:
                    self._stop(r, f"not healthy within {self.fleet.replica_start_timeout_s:.0f} s")
                    self._failed(r.pool, r.model, f"{name}: did not become ready; see {r.record.log}")
            elif r.state == SERVING:
                admitted = r.admitted_at if r.admitted_at is not None else r.since
                if now - admitted >= SETTLED_S and self.backoff[r.pool][0] and admitted >= self.failed_at[r.pool]:
                    # One that entered rotation after the last failure has served a while: the failures are behind
                    # the pool. (One serving since before them says nothing about what keeps failing.)
                    self._settled(r.pool)
                down = r.lb is not None and r.lb.status.startswith("DOWN")
                r.down_since = (r.down_since or now) if down else None
                if r.down_since is not None and now - r.down_since > self.fleet.replica_down_restart_s:
                    self._stop(r, f"HAProxy saw it DOWN for {self.fleet.replica_down_restart_s:.0f} s")
                    if r.down_since - admitted < SETTLED_S:  # went down soon after it entered rotation: as one
                        # that died then (counted from when it went down: a restart window of SETTLED_S or more
                        # would otherwise never count it)
                        self._failed(r.pool, r.model, f"{name}: went DOWN in HAProxy soon after entering rotation; "
                                                      f"see {r.record.log}")
            elif r.state == DRAINING:
                idle = r.lb is None or r.lb.in_flight == 0
                if idle or now - r.since > self.settings.serving.server.drain_timeout_s:
                    self._stop(r, "drained" if idle else "drain timed out")
                elif r.lb is not None and r.lb.up:  # the drain's command failed (a timeout): still taking requests
                    self._slot_command(self.api.drain, r.pool, r.server, "drain")
        # A slot no replica owns is in maintenance: a `maint` that failed when its replica went (a timeout, a stall
        # short of a restart) left it aimed at a port a replica of the other pool may take next, sending one arm's
        # users to the other's model. Sent again each tick until HAProxy shows it.
        owned = {(r.pool, r.server) for r in self.replicas}
        for pool in POOLS:
            for server, stat in servers[pool].items():
                if (pool, server) not in owned | self._maintained and not stat.status.startswith("MAINT"):
                    self._slot_command(self.api.maintain, pool, server, "maint")
        for pool in POOLS:
            self.samples[pool].append(sum(s.in_flight for s in servers[pool].values()))

    def _slot_command(self, command: Callable[[str, str], None], pool: str, server: str, what: str) -> None:
        """Send a slot's command again; a failure is said once per slot and command (the next tick tries again)."""
        try:
            command(pool, server)
            self._slot_failures.discard((pool, server, what))
            self.say(f"{pool}/{server}: `{what}` sent again (an earlier one did not take)")
        except HaproxyError as exc:
            if (pool, server, what) not in self._slot_failures:
                self._slot_failures.add((pool, server, what))
                self.say(f"{pool}/{server}: `{what}` failed ({exc}); trying again")

    def _autoscale(self) -> None:
        now = time.monotonic()
        if now - self._last_scale < self.fleet.scale_interval_s:
            return
        self._last_scale = now
        for pool in POOLS:
            samples, self.samples[pool] = self.samples[pool], []
            mean = sum(samples) / len(samples) if samples else 0.0
            ready = len(self.pool_replicas(pool, SERVING))
            self.util[pool] = utilization(mean, ready, self.fleet.replica_capacity)
            # The size the pool is set at, not the replicas counted now (a rolling change has one extra).
            wanted = self.scalers[pool].decide(now, mean, self.desired[pool])
            if pool == CANARY and wanted == 0 < self.spec.pools[pool].max and self._canary_share() > 0:
                # Users are routed to the canary: at none, HAProxy sends its buckets to stable, the in-flight signal
                # stays 0, and the pool never scaled out again (the split said 25 %, the canary got nothing).
                wanted = 1
            if wanted != self.desired[pool]:
                self.say(f"{pool}: {wanted} replicas (in flight {mean:.1f} on {ready} ready, utilisation "
                         f"{self.util[pool]:.2f}, target {self.settings.serving.target_utilization})")
            self.desired[pool] = wanted

    def _canary_share(self) -> int:
        """The canary percent the split map file holds (what HAProxy applies, or loads when it restarts)."""
        return read_split_map(HaproxyPaths.of(self.settings).split_map) or 0

    def _reconcile(self, pool: str) -> None:
        ps, n = self.spec.pools[pool], self.desired[pool]
        version, fault, lookups = ps.wants()
        active = self.pool_replicas(pool, STARTING, SERVING)
        # A replica of another version, with another injected fault or older lookups, is replaced like an old version.
        old = [r for r in active if (r.version, r.fault, r.lookups) != ps.wants()]
        current = [r for r in active if (r.version, r.fault, r.lookups) == ps.wants()]
        if old:
            # Rolling: one replica of the new version at a time, and an old one leaves only once the
            # pool holds more ready replicas than it needs. A new replica is ready once it has served
            # min_ready_s, and none is while the pool backs off from one of the same version that died soon after
            # entering rotation: a version that passes its health check and then crashes never drains the old ones.
            for r in old:
                if r.state == STARTING and r.admitted_at is None:  # admitted ones re-check after an HAProxy restart
                    self._stop(r, f"superseded by {version}")
            now = time.monotonic()
            failing = self.failed[pool]
            settled = (version, fault) not in failing  # an old version's failure says nothing of the new one
            # Ready is also UP in HAProxy now: a new version that passed its health check and then went DOWN (every
            # model call failing, readiness 503) while staying alive drained the old replicas one by one for it, until
            # nothing in the pool was UP.
            aged = [r for r in current if r.state == SERVING and now - r.since >= self.fleet.min_ready_s and _lb_up(r)]
            # Nor do replicas of what keeps failing count among the old ones (the version rolled to, on older lookups:
            # a lookups reload during a held roll drained the last replicas of the version that works).
            ready = [r for r in old if r.state == SERVING and not (r.version == version and r.model in failing)
                     and _lb_up(r)]
            ready += aged if settled else []
            old_serving = sorted((r for r in old if r.state == SERVING), key=lambda r: r.record.create_time)
            if old_serving and len(ready) > n:
                self.drain(old_serving[0], f"replaced by {version}")
            # The next new replica once the last one has served min_ready_s (back-off or not: a failure must not
            # stop the roll for good), and never more than one beyond the pool's size.
            live = [r for r in active if r.state in (STARTING, SERVING)]  # not one drained just now
            if len(live) < n:
                # Below its size (scaled out during the roll): the gap is filled at once, as outside a roll ("scale-out
                # is immediate"); one at a time, each after the last served min_ready_s, it took minutes a replica.
                for _ in range(n - len(live)):
                    if self.start_replica(pool, version, fault, lookups) is None:
                        break
            elif len(current) < n and len(aged) == len(current) and len(live) <= n:
                self.start_replica(pool, version, fault, lookups)
            return
        if len(active) < n:
            for _ in range(n - len(active)):
                if self.start_replica(pool, version, fault, lookups) is None:
                    break
        elif len(active) > n:
            # Starting ones first (they serve nobody yet), then those HAProxy has not UP (the youngest went first,
            # whatever HAProxy said: the only replica UP was drained, beside one DOWN), then the youngest.
            surplus = sorted(active, key=lambda r: (r.state != STARTING, _lb_up(r), -r.record.create_time))[
                : len(active) - n]
            for r in surplus:
                self.drain(r, f"scaling in to {n}")

    def tick(self) -> None:
        self._reload_spec()
        try:
            self._release_stuck()
            if self._ensure_haproxy():  # else HAProxy waits out a failed restart's back-off: nothing to observe
                try:
                    self._observe()
                except HaproxySilent:  # not a refusal it answered: only silence says it hangs
                    if self.haproxy_silent_since is None:
                        self.haproxy_silent_since = time.monotonic()
                    raise
                self.haproxy_silent_since = None
                self._autoscale()
                for pool in POOLS:
                    self._reconcile(pool)
        finally:
            self.write_status()  # even then (HAProxy down, or not answering), so `tenfold serve status` shows it

    def status(self) -> FleetStatus:
        pools = {}
        for pool in POOLS:
            spec = self.spec.pools[pool]
            replicas = [
                ReplicaStatus(pool=r.pool, slot=r.slot, version=r.version, port=r.port, pid=r.record.pid, state=r.state,
                              lb_status=r.lb.status if r.lb else "?", in_flight=r.lb.in_flight if r.lb else 0, log=r.record.log,
                              fault=r.fault, lookups=r.lookups)
                for r in sorted(self.pool_replicas(pool), key=lambda r: r.slot)
            ]
            pools[pool] = PoolStatus(version=spec.version, min=spec.min, max=spec.max, desired=self.desired[pool],
                                     utilization=round(self.util[pool], 3), replicas=replicas,
                                     failing=sorted({version for version, _fault in self.failed[pool]}))
        return FleetStatus(generation=self.spec.generation, updated_at=time.time(), supervisor_pid=os.getpid(),
                           haproxy_pid=self.haproxy.pid if self.haproxy else None, pools=pools, events=list(self.events),
                           updated_monotonic=time.monotonic())

    def write_status(self) -> None:
        """Write the status; one that cannot be written (a full disk) is said once, and the fleet goes on being
        supervised: the replicas still need replacing when they die, whatever `tenfold serve status` can show."""
        path = self.run_dir / STATUS_FILE
        try:
            _write_atomic(path, self.status().to_json())
        except OSError as exc:
            if not self._status_unwritten:
                self.say(f"fleet: cannot write its status {path} ({exc.strerror or exc!r}): `tenfold serve status` "
                         "will call this supervisor not responding until it can; free space on that disk")
            self._status_unwritten = True
            return
        if self._status_unwritten:
            self._status_unwritten = False
            self.say("fleet: its status is written again")

    # -- the loop
    def run(self) -> None:
        """Until SIGTERM/SIGINT: keep the fleet at the spec. Then stop HAProxy and every replica."""
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self.stopping.set())
        period = min(0.2, self.fleet.health_interval_ms / 2000)
        try:
            self.request_log.start()
            self.start_haproxy()
            last_error = ""
            while not self.stopping.is_set():
                try:
                    self.tick()
                    last_error = ""
                except HaproxyError as exc:
                    self.say(f"haproxy: {exc}")  # it died mid-tick: the next tick restarts it
                except Exception as exc:  # the fleet keeps serving whatever went wrong in one look
                    if repr(exc) != last_error:
                        self.say(f"error (the fleet keeps running, retrying): {exc!r}")
                        with contextlib.suppress(OSError):  # stderr is the log, which a full disk refuses (as say)
                            traceback.print_exc()
                    last_error = repr(exc)
                self.stopping.wait(period)
        finally:
            self.shutdown()

    def shutdown(self) -> None:
        """Stop HAProxy, the request log and every replica, each step whatever an earlier one raised: one failure (the
        first line said, on a full disk) ended the shutdown before anything was stopped, and HAProxy and the replicas
        outlived the supervisor. The first failure is raised once every step ran."""
        failures: list[Exception] = []

        def kept(exc: process.StillRunning, name: str) -> None:
            """``name``'s process outlived SIGKILL: its pid file is kept, so `tenfold serve down` and `up` still find
            it once this supervisor is gone."""
            failures.append(exc)
            self.say(_kept(exc, process.pid_file(self.run_dir, name), "`tenfold serve up` refuses to start beside it "
                           "until it has exited (a reboot ends it)"))

        def step(action: Callable[[], object], name: str = "") -> bool:
            """Run ``action``; False only when it was the stop of ``name``'s process and that outlived SIGKILL."""
            try:
                action()
            except process.StillRunning as exc:
                kept(exc, name)
                return False
            except Exception as exc:
                failures.append(exc)
                self.say(f"error while stopping the fleet (it goes on stopping the rest): {exc!r}")
            return True

        self.say("stopping the fleet")
        if self.haproxy is not None and step(functools.partial(process.stop, self.haproxy, timeout=5, check=True),
                                             HAPROXY):
            step(functools.partial(process.remove_pid_file, self.run_dir, HAPROXY))
        if self.request_log.is_alive():
            step(self.request_log.stop)
        timeout = self.settings.serving.server.stop_timeout_s
        pending = [(r, r.stop or self.executor.submit(process.stop, r.record, timeout=timeout, check=True))
                   for r in self.replicas]
        # Those stuck since are tried once more (they had their SIGTERM): they may have exited meanwhile.
        pending += [(r, self.executor.submit(process.stop, r.record, timeout=0, check=True)) for r, _procs in self.stuck]
        for r, fut in pending:
            name = replica_name(r.pool, r.slot)
            try:
                fut.result(timeout=timeout + 10)
            except process.StillRunning as exc:
                kept(exc, name)
                continue
            except Exception:  # any other failure of its stop: its pid file goes, as it always did
                pass
            step(functools.partial(process.remove_pid_file, self.run_dir, name))
        self.replicas.clear()
        self.stuck.clear()
        self.executor.shutdown(wait=False)
        step(functools.partial((self.run_dir / STATUS_FILE).unlink, missing_ok=True))
        self.say("fleet stopped")
        if failures:
            raise failures[0]


# --- what the CLI and `tenfold up` call ----------------------------------------------------------


def supervisor_record(settings: Settings) -> ProcessRecord | None:
    """The supervisor's pid-file record while it runs, else None."""
    record = process.read_record(run_dir(settings), SUPERVISOR)
    return record if record is not None and process.is_running(record) else None


def _leftovers(settings: Settings) -> list[str]:
    rd = run_dir(settings)
    return sorted(p.stem for p in rd.glob("*.pid") if p.stem == HAPROXY or p.stem.startswith("replica-"))


def _stop_leftovers(settings: Settings, say: Callable[[str], object],
                    outlived: Collection[int] = ()) -> list[tuple[process.StillRunning, Path]]:
    """Stop what a supervisor that died left running (only processes our pid files still identify); returns those that
    outlived SIGKILL (stuck in uninterruptible I/O: a hung mount), each with its pid file, which is kept: dropped, the
    next `tenfold serve up` refused the port its own HAProxy still held as another program's. A process in ``outlived``
    has just outlived a SIGKILL of the supervisor's stop: it is named as stuck, not signalled and waited on again
    (`tenfold serve down` stopped a stuck replica a third time, after the supervisor's shutdown and its own stop)."""
    stuck = []
    for name in _leftovers(settings):
        record = process.read_record(run_dir(settings), name)
        try:
            if record is not None and record.pid in outlived and process.is_running(record):
                raise process.outlived_sigkill(name, [record.pid])
            if record is not None and process.stop(record, timeout=settings.serving.server.stop_timeout_s, check=True):
                say(f"{name}: stopped (left by a fleet supervisor that is gone)")
        except process.StillRunning as exc:  # the others are still stopped; the caller reports it once they are
            say(f"{name}: not stopped, a process of it outlived SIGKILL")
            stuck.append((exc, process.pid_file(run_dir(settings), name)))
            continue
        process.remove_pid_file(run_dir(settings), name)
    return stuck


def running_settings(settings: Settings) -> Settings:
    """The settings the running fleet was started with, read from ``fleet-settings.json``: a later
    ``tenfold serve ...`` acts on the running fleet, whatever ``TENFOLD_SERVING__*`` its own environment sets."""
    try:
        return read_settings_file(run_dir(settings) / SETTINGS_FILE)
    except (FileNotFoundError, ValueError):
        return settings


def write_settings_file(settings: Settings) -> Path:
    """``fleet-settings.json``: the settings whole, for the supervisor and later ``tenfold serve`` commands."""
    path = run_dir(settings) / SETTINGS_FILE
    # Readable by this user only, as the token is: the fleet's settings carry no alert hook (_up), but a workload's
    # own settings may hold what its owner keeps private.
    atomic_write(path, settings.model_dump_json().encode(), durable=False, mode=0o600)
    return path


def read_settings_file(path: Path) -> Settings:
    """What :func:`write_settings_file` wrote."""
    return Settings.model_validate_json(path.read_text())


def resolve_version(settings: Settings, ref: str) -> str:
    """A model version id from an alias or a version (prefix), via the registry; a clear error if none, or if the
    registry's store cannot be read (at once when the local GCS emulator is not running: the client's own retries
    would wait two minutes on a refused connection)."""
    from tenfold.registry import ModelRegistry, RegistryError
    from tenfold.registry.errors import UnknownVersion

    try:
        process.require_local_storage(settings)
    except process.LocalPlatformError as exc:
        raise FleetError(f"cannot resolve {ref!r}: {exc}") from None
    try:
        return ModelRegistry(settings).find(ref)
    except UnknownVersion as exc:
        raise UnknownModel(f"cannot serve {ref!r}: {exc}") from exc
    except RegistryError as exc:
        raise FleetError(f"cannot serve {ref!r}: {exc}") from exc
    except Exception as exc:
        if type(exc).__module__.startswith(("google", "requests", "urllib3")):
            raise FleetError(f"cannot read the model registry in {settings.storage.models_bucket} to resolve {ref!r} "
                             f"({type(exc).__name__}: {exc}); is the platform up (`tenfold status`)?") from exc
        raise


def _require_up(settings: Settings) -> None:
    if supervisor_record(settings) is None:
        raise FleetError("the serving fleet is not up: run `tenfold serve up`")


def _busy_ports(settings: Settings) -> list[str]:
    host = settings.local.bind_host
    checks = [("lb_port", settings.local.lb_port, "TENFOLD_LOCAL__LB_PORT"),
              ("lb_metrics_port", settings.serving.fleet.lb_metrics_port, "TENFOLD_SERVING__FLEET__LB_METRICS_PORT")]
    return [refusal for name, port, how in checks if (refusal := process.port_refusal(host, port, name, how))]


def port_refusals(settings: Settings) -> list[str]:
    """Why :func:`up` would refuse its ports now (another program on them), said before work that needs the fleet
    later; none while a fleet of ours runs or left processes behind (``up`` stops those, then checks)."""
    if supervisor_record(settings) is not None or _leftovers(settings):
        return []
    return _busy_ports(settings)


def up(
    settings: Settings,
    model: str | None = None,
    *,
    canary_model: str | None = None,
    resolve: Callable[[Settings, str], str] = resolve_version,
    timeout: float | None = None,
    tie_to_this_process: bool = False,
    say: Callable[[str], object] = print,
) -> FleetStatus:
    """Start the fleet (HAProxy, then each pool's minimum of replicas) and wait until it serves.

    ``model`` (default ``settings.serving.server.model_ref``, the champion) is resolved to a version
    once, so every replica serves the same one even if the alias moves meanwhile; ``canary_model``
    defaults to the same. Already running: returns its status unchanged. On failure, everything this
    call started is stopped. ``tie_to_this_process`` (tests) stops the fleet should the caller die.
    """
    with _exclusive(settings):
        return _up(settings, model, canary_model=canary_model, resolve=resolve,
                   timeout=timeout, tie_to_this_process=tie_to_this_process, say=say)


def _up(
    settings: Settings,
    model: str | None,
    *,
    canary_model: str | None,
    resolve: Callable[[Settings, str], str],
    timeout: float | None,
    tie_to_this_process: bool,
    say: Callable[[str], object],
) -> FleetStatus:
    if not settings.is_local:
        raise FleetError(f"the local fleet runs in the local environment; TENFOLD_ENV is {settings.env!r}")
    if settings.serving.server.auth_mode == "iap":
        # IAP vouches for callers at the cloud load balancer; HAProxy sends no IAP header, so every request got 401
        # (and offline no replica became ready, fetching Google's keys). Refused here, not in the settings: the same
        # shell synthesizes and operates dev and prod with it (docs/deploy.md).
        raise FleetError("serving.server.auth_mode 'iap' works behind the cloud load balancer only; the local fleet "
                         "takes the bearer token: unset TENFOLD_SERVING__SERVER__AUTH_MODE (and its audience) for "
                         "`tenfold serve` and `make up`, and set it when you synthesize dev or prod")
    # No process of the fleet alerts: none of them gets the hooks (a webhook URL is a secret).
    settings = without_alert_hooks(settings)
    if (running := supervisor_record(settings)) is not None:
        say(f"fleet: already running (supervisor pid {running.pid}); `tenfold serve down` to stop it")
        return wait_for(settings, lambda st: st.ready, what="the serving fleet to serve", record=running,
                        timeout=timeout or settings.serving.fleet.replica_start_timeout_s + 30)
    haproxy_binary()  # fails with how to install it
    if stuck := _stop_leftovers(settings, say):  # it holds its port, or its slot's pid file: refused, saying which
        raise _still_running(stuck)
    if busy := _busy_ports(settings):
        raise FleetError("cannot start the serving fleet:\n  - " + "\n  - ".join(busy))
    from tenfold.serving.auth import ensure_token

    fleet = settings.serving.fleet
    stable_version = resolve(settings, model or settings.serving.server.model_ref)
    canary_version = resolve(settings, canary_model) if canary_model else stable_version
    rd = run_dir(settings)
    rd.mkdir(parents=True, exist_ok=True)
    ensure_token(settings)  # before any replica starts: they all read the one token
    token = lookups_token(settings, say)  # every replica, the later ones included, serves the months served now
    spec = FleetSpec(
        generation=1,
        pools={STABLE: PoolSpec(stable_version, fleet.stable_min, fleet.stable_max, lookups=token),
               CANARY: PoolSpec(canary_version, fleet.canary_min, fleet.canary_max, lookups=token)},
    )
    with _spec_lock(settings):
        _write_atomic(rd / SPEC_FILE, spec.to_json())
    settings_file = write_settings_file(settings)
    (rd / STATUS_FILE).unlink(missing_ok=True)
    write_config(settings, canary_percent=fleet.canary_percent)  # a fresh fleet starts at the settings' split
    argv = [sys.executable, "-m", "tenfold.serving.fleet", "--settings-file", str(settings_file)]
    env = {**os.environ, **settings_env(settings)}
    say(f"fleet: starting HAProxy on {settings.local.bind_host}:{settings.local.lb_port} and replicas of "
        f"{stable_version} (stable) and {canary_version} (canary) ...")
    record = process.start(SUPERVISOR, argv, run_dir=rd, port=settings.local.lb_port, env=env, cwd=settings.local.home,
                           tie_to_this_process=tie_to_this_process)
    try:
        return wait_for(settings, lambda st: st.ready, what="the serving fleet to serve",
                        timeout=timeout or fleet.replica_start_timeout_s + 30, record=record)
    except BaseException:
        # What outlives SIGKILL keeps its pid file (and is said); the error that ended this start is the one raised.
        with contextlib.suppress(process.StillRunning):
            _down(settings, say=say)
        raise


def wait_for(
    settings: Settings,
    done: Callable[[FleetStatus], bool],
    *,
    what: str,
    timeout: float,
    record: ProcessRecord | None = None,
    generation: int = 0,
) -> FleetStatus:
    """Poll the supervisor's status until ``done`` holds for a status of at least ``generation``."""
    record = record or supervisor_record(settings)
    if record is None:
        raise FleetError("the serving fleet is not running: run `tenfold serve up`")
    deadline = time.monotonic() + timeout
    while True:
        st = read_status(settings)
        if stale := not_responding(st, record):  # its status is no longer what runs: neither done nor worth a wait
            raise FleetError(stale)
        if st is not None and st.generation >= generation and done(st):
            return st
        if not process.is_running(record):
            raise FleetError(f"the fleet supervisor exited while waiting for {what}; last log lines:\n{process.log_tail(record.log)}")
        if time.monotonic() > deadline:
            events = "\n".join(st.events[-10:]) if st else process.log_tail(record.log)
            raise FleetTimeout(f"timed out after {timeout:.0f} s waiting for {what}; recent fleet events:\n{events}")
        time.sleep(0.2)


def rollout(
    settings: Settings,
    model: str,
    *,
    pool: str = STABLE,
    resolve: Callable[[Settings, str], str] = resolve_version,
    timeout: float | None = None,
) -> FleetStatus:
    """Roll ``pool`` to ``model`` one replica at a time; returns once no replica of another version is left."""
    if pool not in POOLS:
        raise FleetError(f"unknown pool {pool!r}: choose {' or '.join(POOLS)}")
    settings = running_settings(settings)
    _require_up(settings)  # before resolving: a stopped platform's registry answers only after minutes of retries
    if (spec_now := read_spec(settings)) is not None and spec_now.pools[pool].min == 0:
        # Its users go to the stable pool while it has no replica, so the autoscaler never sees load to start one.
        raise PoolRefused(f"the {pool} pool keeps no replica (min 0): nothing would serve {model}; keep one first "
                         f"(`tenfold serve scale --pool {pool} --min 1`)")
    version = resolve(settings, model)
    spec = update_spec(settings, lambda old: {**old.pools, pool: replace(old.pools[pool], version=version)})

    def rolled(st: FleetStatus) -> bool:
        p = st.pools[pool]
        # At least one: a pool autoscaled to 0 serves nothing, which is not "serving the version".
        return all(r.version == version for r in p.replicas) and len(p.serving(version)) >= max(p.desired, p.min, 1)

    n = max(1, len(st.pools[pool].replicas)) if (st := read_status(settings)) else 1
    try:
        return wait_for(settings, rolled, what=f"{pool} to serve {version}", generation=spec.generation,
                        timeout=timeout or n * (settings.serving.fleet.replica_start_timeout_s
                                                + settings.serving.server.drain_timeout_s))
    except FleetTimeout as exc:
        # No replica of the version ever served (it does not load): the pool is set back to the version its replicas
        # still serve. Left at the new one, the supervisor tried only it, so an old replica that died was never
        # replaced and a rise in load was never met, while `tenfold status` called the pool healthy on the new one.
        now = read_status(settings)
        serving = {r.version for r in now.pools[pool].serving()} if now is not None else set()
        if now is not None and version in serving and len(serving) > 1 and version in now.pools[pool].failing:
            raise FleetTimeout(f"{exc}\n{_mixed(now.pools[pool], pool, version)}") from exc
        if now is None or version in serving or len(serving) != 1 or supervisor_record(settings) is None:
            raise
        (back,) = serving
        moved: list[int] = []

        def set_back(old: FleetSpec) -> dict[str, PoolSpec]:
            if old.pools[pool].version != version:  # a newer rollout changed it meanwhile: its own
                return old.pools
            moved.append(old.generation + 1)
            return {**old.pools, pool: replace(old.pools[pool], version=back)}

        update_spec(settings, set_back)
        if not moved:
            raise
        raise FleetError(f"{exc}\nno replica of {version} served: the {pool} pool is set back to {back} (generation "
                         f"{moved[0]}), which its replicas serve") from exc


def _mixed(p: PoolStatus, pool: str, version: str) -> str:
    """What to say of ``pool`` (status ``p``) left serving ``version`` beside older ones by a rollout to ``version``
    that keeps failing: which replica serves which version, that the supervisor retries it, and how to go back."""
    serving = p.serving()
    olds = sorted({r.version for r in serving} - {version})
    by_version = "; ".join(f"{', '.join(replica_name(r.pool, r.slot) for r in serving if r.version == v)} "
                           f"{'serves' if sum(r.version == v for r in serving) == 1 else 'serve'} {v}"
                           for v in [version, *olds])
    back = " or ".join(f"`tenfold serve rollout --pool {pool} --model {v}`" for v in olds)
    return (f"the {pool} pool is left mixed: {by_version}. {version} is failing (its replicas did not come up, or "
            f"died soon after: see the events above and their logs), and the supervisor keeps retrying it, backing "
            f"off up to {BACKOFF_MAX_S:.0f} s, while the older replicas go on serving; to go back, run {back}")


def reload_lookups(settings: Settings, token: str, *, timeout: float | None = None) -> FleetStatus:
    """Restart every replica, one at a time per pool (no request is lost), so each loads the lookup tables
    published now; ``token`` names them (e.g. the newest month served). Already loaded: returns at once."""
    settings = running_settings(settings)
    spec = update_spec(settings, lambda old: {pool: replace(ps, lookups=token) for pool, ps in old.pools.items()})

    def reloaded(st: FleetStatus) -> bool:
        return all(all(r.lookups == token for r in p.replicas) and len(p.serving(p.version)) >= max(p.desired, p.min)
                   for p in st.pools.values())

    n = max(1, max(len(p.replicas) for p in st.pools.values())) if (st := read_status(settings)) else 1
    return wait_for(settings, reloaded, what=f"every replica to load the lookups of {token}", generation=spec.generation,
                    timeout=timeout or n * (settings.serving.fleet.replica_start_timeout_s + settings.serving.server.drain_timeout_s))


def set_fault(settings: Settings, pool: str, fault: Fault, *, model: str | None = None, timeout: float | None = None,
              resolve: Callable[[Settings, str], str] = resolve_version) -> FleetStatus:
    """Restart ``pool``'s replicas one at a time with ``fault`` injected (``Fault()`` clears it), on ``model``
    (alias or version; default the pool's own) in the same roll; waits until done."""
    if pool not in POOLS:
        raise FleetError(f"unknown pool {pool!r}: choose {' or '.join(POOLS)}")
    settings = running_settings(settings)
    _require_up(settings)
    text = str(fault)
    chosen = resolve(settings, model) if model else None
    spec = update_spec(settings, lambda old: {**old.pools, pool: replace(
        old.pools[pool], fault=text, version=chosen or old.pools[pool].version)})
    version = spec.pools[pool].version

    def applied(st: FleetStatus) -> bool:
        p = st.pools[pool]
        return (all((r.version, r.fault) == (version, text) for r in p.replicas)
                and len(p.serving(version)) >= max(p.desired, p.min))

    n = max(1, len(st.pools[pool].replicas)) if (st := read_status(settings)) else 1
    return wait_for(settings, applied, what=f"{pool} to serve with fault {text or 'none'}", generation=spec.generation,
                    timeout=timeout or n * (settings.serving.fleet.replica_start_timeout_s + settings.serving.server.drain_timeout_s))


def scale(
    settings: Settings, pool: str, *, low: int | None = None, high: int | None = None, timeout: float | None = None
) -> FleetStatus:
    """Set ``pool``'s replica bounds (the autoscaler moves within them); waits until its count is within."""
    if pool not in POOLS:
        raise FleetError(f"unknown pool {pool!r}: choose {' or '.join(POOLS)}")
    settings = running_settings(settings)

    def change(old: FleetSpec) -> dict[str, PoolSpec]:
        cur = old.pools[pool]
        lo, hi = cur.min if low is None else low, cur.max if high is None else high
        limit = slot_count(settings, pool) - 2
        if not 0 <= lo <= hi or hi > limit or (pool == STABLE and lo < 1):
            raise BoundsRefused(
                f"{pool} bounds {lo}..{hi} are not valid: need {1 if pool == STABLE else 0} <= min <= max <= {limit} "
                f"(the {pool} maximum in settings.serving.fleet; raise it there and restart the fleet for more)"
            )
        return {**old.pools, pool: replace(cur, min=lo, max=hi)}

    spec = update_spec(settings, change)

    def settled(st: FleetStatus) -> bool:
        p = st.pools[pool]
        live = [r for r in p.replicas if r.state in (STARTING, SERVING)]
        return p.min <= len(p.serving()) == len(live) <= p.max

    return wait_for(settings, settled, what=f"{pool} to scale within its bounds", generation=spec.generation,
                    timeout=timeout or settings.serving.fleet.replica_start_timeout_s + settings.serving.server.drain_timeout_s + 10)


def down(settings: Settings, *, say: Callable[[str], object] = print) -> bool:
    """Stop the supervisor (it stops HAProxy and the replicas), then anything a dead supervisor left; True if anything ran.
    Raises :class:`process.StillRunning`, once everything else was stopped, naming the processes that outlived SIGKILL:
    their pid files are kept (see :func:`_stop_leftovers`)."""
    with _exclusive(settings):
        return _down(settings, say=say)


def _down(settings: Settings, *, say: Callable[[str], object]) -> bool:
    rd = run_dir(settings)
    record = process.read_record(rd, SUPERVISOR)
    stopped = False
    outlived: process.StillRunning | None = None
    if record is not None:
        # The supervisor drains and stops its replicas before it exits: give it their stop timeout, and a margin.
        try:
            stopped = process.stop(record, timeout=settings.serving.server.stop_timeout_s + 20, check=True)
        except process.StillRunning as exc:  # it, or what it started (HAProxy, a replica): the latter are named below
            stopped, outlived = True, exc
    left = _leftovers(settings)
    stuck = _stop_leftovers(settings, say, outlived.pids if outlived is not None else ())
    named = {pid for exc, _path in stuck for pid in exc.pids}
    if outlived is not None and not set(outlived.pids) <= named:
        # The supervisor itself (or a process of it that no pid file of the fleet names): its pid file is kept.
        stuck.insert(0, (outlived, process.pid_file(rd, SUPERVISOR)))
    elif record is not None:
        process.remove_pid_file(rd, SUPERVISOR)
    with _spec_lock(settings):  # a stopped fleet has no desired state: `rollout`/`scale` say it is not up
        (rd / SPEC_FILE).unlink(missing_ok=True)
    (rd / STATUS_FILE).unlink(missing_ok=True)
    if stuck:
        raise _still_running(stuck)
    return stopped or bool(left)


# --- reporting ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReplicaReport:
    pool: str
    slot: int
    version: str
    url: str
    pid: int
    state: str
    lb_status: str
    alive: bool  # its own /healthz answered 200
    log: str


@dataclass(frozen=True)
class FleetReport:
    """What ``tenfold status`` and ``tenfold serve status`` print: each part checked on its own."""

    running: bool  # the supervisor
    supervisor_pid: int | None
    haproxy_alive: bool  # its runtime API answered
    haproxy_pid: int | None
    url: str
    metrics_url: str
    canary_percent: int | None
    versions: dict[str, str]
    replicas: list[ReplicaReport]
    token_path: str
    token: str | None
    log: str
    token_error: str | None = None  # the token file is there but empty or unreadable: what to do
    # The supervisor's pid lives, but its status is old (stopped or hung: nothing supervises): what to do.
    supervisor_error: str | None = None
    predict_path: str = "/v1/predict"  # settings.serving.server.api_prefix + /predict
    minimums: dict[str, int] = field(default_factory=dict)  # each pool's minimum of replicas
    # With no supervisor: the fleet's processes whose pid files are kept and that still run (one that outlived
    # SIGKILL, or what a supervisor that died left), each as "<name> (pid N)": `tenfold serve up` refuses beside them.
    leftovers: list[str] = field(default_factory=list)

    def serving(self, pool: str) -> int:
        """The pool's replicas that serve and answer their own health check."""
        return sum(1 for r in self.replicas if r.pool == pool and r.state == SERVING and r.alive)

    @property
    def healthy(self) -> bool:
        """The supervisor (writing its status) and HAProxy are up, every serving replica answers, and every pool
        with a minimum has one serving: a stable pool whose replicas died (forgotten, their restarts backing off)
        while a canary at 0 % lived on was "healthy" while every request got a 503."""
        return self.running and not self.supervisor_error and self.haproxy_alive and bool(self.replicas) and all(
            r.alive for r in self.replicas if r.state == SERVING) and all(
            self.serving(pool) > 0 for pool, least in self.minimums.items() if least > 0)


def _alive(url: str) -> bool:
    from tenfold.local import loopback

    try:
        with loopback.urlopen(url, timeout=2) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False


def report(settings: Settings) -> FleetReport:
    """Check the supervisor (pid file, and how old its status is), HAProxy (runtime API) and each replica (its own
    ``/healthz``)."""
    from tenfold.rollout.haproxy import HaproxyRouter
    from tenfold.serving.auth import TokenMissing, accepted_tokens, token_path

    record = supervisor_record(settings)
    if record is not None:
        settings = running_settings(settings)
    host, rd = settings.local.bind_host, run_dir(settings)
    st = read_status(settings) if record is not None else None
    stale = not_responding(st, record) if record is not None else None
    haproxy = process.read_record(rd, HAPROXY)
    api = RuntimeApi(HaproxyPaths.of(settings).socket, timeout=2)
    haproxy_alive = haproxy is not None and process.is_running(haproxy) and api.alive()
    percent = None
    if haproxy_alive:
        with contextlib.suppress(HaproxyError):
            percent = HaproxyRouter.from_settings(settings).canary_percent()
    health = settings.serving.health_path
    replicas = [
        ReplicaReport(pool=r.pool, slot=r.slot, version=r.version, url=f"http://{host}:{r.port}", pid=r.pid, state=r.state,
                      lb_status=r.lb_status, alive=_alive(f"http://{host}:{r.port}{health}"), log=r.log)
        for p in (st.pools.values() if st else []) for r in p.replicas
    ]
    leftovers = [] if record is not None else [
        f"{name} (pid {left.pid})" for name in _leftovers(settings)
        if (left := process.read_record(rd, name)) is not None and process.is_running(left)]
    tpath = token_path(settings)
    token: str | None = None
    token_error: str | None = None
    try:
        token = "\n".join(accepted_tokens(settings))
    except TokenMissing as exc:  # none yet is no error; an empty or corrupt file is
        token_error = str(exc) if tpath.exists() else None
    return FleetReport(
        running=record is not None, supervisor_pid=record.pid if record else None, haproxy_alive=haproxy_alive,
        haproxy_pid=haproxy.pid if haproxy is not None and haproxy_alive else None,
        url=f"http://{host}:{settings.local.lb_port}", metrics_url=f"http://{host}:{settings.serving.fleet.lb_metrics_port}/metrics",
        canary_percent=percent, versions={k: v.version for k, v in st.pools.items()} if st else {},
        replicas=replicas, token_path=str(tpath), token=token, token_error=token_error, log=str(process.log_file(rd, SUPERVISOR)),
        supervisor_error=stale,
        predict_path=f"{settings.serving.server.api_prefix}/predict",
        minimums={k: v.min for k, v in st.pools.items()} if st else {}, leftovers=leftovers,
    )


def describe(rep: FleetReport, *, secrets: bool = False) -> str:
    """Human-readable lines for ``tenfold status`` / ``tenfold serve status`` (the token only with ``secrets``)."""
    if rep.token_error:  # not a secret: what is wrong with the file
        token = f"(unusable: {rep.token_error})"
    else:
        # The current token alone (the file's first line); tokens still accepted during a rotation are counted, not
        # shown beside it: two lines read as "the token" made a header clients refuse.
        current, *older = (rep.token or "").splitlines() or [""]
        shown = (current + (f"  ({len(older)} older still accepted)" if older else "")) if current else ""
        token = (shown or "(not generated yet)") if secrets else "`tenfold status` shows it"
    token_line = f"  token   {token}  (file {rep.token_path}; send 'Authorization: Bearer <token>')"
    # Processes of the fleet that still run with no supervisor (what a SIGKILLed one left, or one that outlived
    # SIGKILL): "stopped" alone sent users to `serve up`, which refuses beside them.
    unsupervised = (f"{', '.join(rep.leftovers)} of an earlier fleet still {'runs' if len(rep.leftovers) == 1 else 'run'} "
                    "with no supervisor: `tenfold serve down` stops them (it says so if one outlived SIGKILL), then "
                    "`tenfold serve up`" if not rep.running and rep.leftovers else "")
    if not rep.running and not rep.haproxy_alive:
        stopped = (f"serving  stopped, but {unsupervised}" if unsupervised
                   else "serving  stopped                 (start it with `tenfold serve up`)")
        return stopped + ("\n" + token_line if rep.token or rep.token_error else "")
    state = "healthy" if rep.healthy else "running, not healthy" if rep.running else "NOT SUPERVISED"
    supervisor = f"supervisor pid {rep.supervisor_pid}" if rep.running else "no supervisor"
    lines = [f"serving  {state:22} {rep.url}{rep.predict_path}  ({supervisor}, log {rep.log})"]
    if unsupervised:
        # HAProxy still answers (and its replicas serve): nothing replaces a replica that dies, nor HAProxy.
        lines.append(f"  no supervisor: {unsupervised}; meanwhile nothing replaces a replica, or HAProxy, that dies")
    if rep.supervisor_error:
        lines.append(f"  {rep.supervisor_error}")
    lines.append(f"  haproxy {'up' if rep.haproxy_alive else 'DOWN'}" + (f" (pid {rep.haproxy_pid})" if rep.haproxy_pid else "")
                 + f"  metrics {rep.metrics_url} (login {STATS_USER} / the token)  canary "
                 + f"{rep.canary_percent if rep.canary_percent is not None else '?'} %")
    for pool, version in rep.versions.items():
        least = rep.minimums.get(pool, 0)
        mine = [r for r in rep.replicas if r.pool == pool]
        # The pool's version is what it is set to serve: while replicas of another serve (a roll under way, or one
        # whose new version never loads), say so, not only "N serving" under the new version's name.
        others = sorted({r.version for r in mine if r.version != version})
        rolling = (f"  rolling: {sum(1 for r in mine if r.version == version and r.state == SERVING)} of its replicas "
                   f"serve it, {', '.join(others)} still serving" if others else "")
        lines.append(f"  {pool:7} {version}" + (f"  {rep.serving(pool)} serving (min {least})" if least else "") + rolling)
        for r in mine:
            alive = "alive" if r.alive else "NOT ANSWERING"
            lines.append(f"    {replica_name(r.pool, r.slot):18} {r.state:9} haproxy {r.lb_status:9} {alive:13} {r.url} "
                         f"pid {r.pid}  {r.version}")
    lines.append(token_line)
    return "\n".join(lines)


# --- the supervisor's entry point --------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """``python -m tenfold.serving.fleet --settings-file <run>/fleet-settings.json`` (started by ``tenfold serve up``)."""
    parser = argparse.ArgumentParser(prog="python -m tenfold.serving.fleet", description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--settings-file", required=True, type=Path, help="the settings `tenfold serve up` wrote")
    args = parser.parse_args(argv)
    try:
        settings = read_settings_file(args.settings_file)
        Supervisor(settings, say=lambda line: print(line, flush=True)).run()
    except (LocalPlatformError, OSError) as exc:  # OSError: a full disk, a settings file gone
        with contextlib.suppress(OSError):  # stderr is its log, maybe on that full disk
            print(f"error: {exc}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
