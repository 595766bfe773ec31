"""Start, identify and stop the background processes of the local platform.

Each service runs in its own session (process group), its output goes to ``<run_dir>/<name>.log`` and
its identity to ``<run_dir>/<name>.pid`` (JSON: pid, start time, command line). ``stop`` acts only on a
process whose pid and start time (``started``) still match the pid file, so a recycled pid or a
process somebody else started is never touched, and it signals the whole group so children (the JVM
behind gcloud, the scheduler's task processes) go too, even after the leader itself died.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import math
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import psutil

if TYPE_CHECKING:
    from tenfold.config import Settings

log = logging.getLogger(__name__)

# How long stop() gives the processes a stopped group left behind (descendants in groups of their own) after
# SIGTERM before SIGKILL: an Airflow task only runs its on_kill on SIGTERM and then carries on.
STRAY_TIMEOUT_S = 5.0


class LocalPlatformError(RuntimeError):
    """A service could not be started, checked or stopped; the message says what to do."""

    local_service = True  # tenfold.outages.ending says it as it is, not as a fault in the code


class StillRunning(LocalPlatformError):
    """Processes that :func:`stop` (``check=True``) signalled outlived SIGKILL: stuck in the kernel (uninterruptible
    I/O on a hung mount or a failing disk), they exit only once that I/O ends. ``pids`` names them."""

    retryable = False  # a refusal to say as it is (tenfold.outages.ending), not a fault in the code

    def __init__(self, message: str, pids: Sequence[int]) -> None:
        super().__init__(message)
        self.pids = list(pids)


def what_it_waits_on(pids: Sequence[int], waits: str = "it waits") -> str:
    """How to see what processes that outlived SIGKILL (:class:`StillRunning`) are stuck in: the command, for the
    message that keeps their pid files."""
    return f"`ps -o pid,stat,wchan:32 -p {','.join(map(str, pids))}` shows what {waits} on"


@dataclass(frozen=True)
class ProcessRecord:
    """What a pid file holds: enough to recognise the very process we started."""

    name: str
    pid: int
    create_time: float  # ``started(process)``: seconds since boot on Linux
    cmdline: list[str]
    port: int
    log: str
    # Which boot of the machine it was started in (a pid file outlives a reboot or a container restart), and the
    # value of MARKER_ENV its process group inherited: what tells its orphans from a stranger's group that took its
    # recycled pid as group id. Empty in records written before either was kept.
    boot_id: str = ""
    marker: str = ""
    # The folder (resolved) its pid file was written in: what tells a pid file copied with its home (``cp -a``) from
    # this home's own (see read_record). Empty in records written before it was kept: this home's, as before.
    run_dir: str = ""

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str) -> ProcessRecord:
        """The record ``text`` holds; ValueError when a field has the wrong type, or the pid could not be one Tenfold
        started (0, 1 or negative: as a process group those are the caller's own group, init, or every process)."""
        record = cls(**json.loads(text))
        if type(record.pid) is not int or record.pid < 2:
            raise ValueError(f"pid {record.pid!r} is not a process Tenfold started")
        if type(record.create_time) not in (int, float) or not math.isfinite(record.create_time):
            raise ValueError(f"create_time {record.create_time!r} is not a time")
        if type(record.port) is not int or not isinstance(record.cmdline, list):
            raise ValueError("port is not an integer, or cmdline not a list")
        return record


def started(proc: psutil.Process) -> float:
    """When ``proc`` started, as what identifies it together with its pid.

    On Linux this is seconds since boot, read from ``/proc/<pid>/stat``, which never changes. psutil's
    ``create_time()`` there is that plus the boot time of ``/proc/stat``, which the kernel derives from
    the wall clock and so moves whenever the clock is stepped (NTP on a CI machine): compared across
    such a step, a live process looked gone, and a service "exited before it became healthy" while it
    was starting. Elsewhere, psutil's create time.
    """
    try:
        stat = Path(f"/proc/{proc.pid}/stat").read_bytes()
    except FileNotFoundError:
        if Path("/proc/self/stat").exists():
            raise psutil.NoSuchProcess(proc.pid) from None
        return float(proc.create_time())
    # The command name (field 2) may hold spaces and parentheses: split after its closing one.
    # The fields after it start at field 3 (state); field 22 is the start time in clock ticks.
    fields = stat[stat.rindex(b")") + 2:].split()
    return int(fields[19]) / os.sysconf("SC_CLK_TCK")


# Every process start() starts, and all it forks, carries a marker of its own in this environment variable.
MARKER_ENV = "TENFOLD_PROCESS_MARKER"
# A job given a marker of its own (a training launch's torchrun, known by its folder's lock) keeps the one it would have
# inherited in this variable: when the task that launched it dies first (the OOM killer) and init adopts the job, the
# parent links to it are gone, and stop() of the platform's process finds it by this marker alone.
PARENT_MARKER_ENV = "TENFOLD_PARENT_MARKER"
START_HEADER = "--- tenfold:"  # the line each start writes to its log first (log_tail shows what follows it)


def boot_id() -> str:
    """This boot of the machine (Linux; empty elsewhere)."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def _other_boot(record: ProcessRecord) -> bool:
    return bool(record.boot_id) and record.boot_id != boot_id()


def pid_file(run_dir: Path, name: str) -> Path:
    return run_dir / f"{name}.pid"


def log_file(run_dir: Path, name: str) -> Path:
    return run_dir / f"{name}.log"


PortState = Literal["free", "in use", "privileged"]


def port_state(host: str, port: int) -> PortState:
    """Whether this process could listen on ``host:port``: ``in use`` when something accepts connections on, or
    holds, it; ``privileged`` when nothing does but binding it needs privileges this process lacks (a port below
    ``net.ipv4.ip_unprivileged_port_start`` as a user); else ``free``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        if sock.connect_ex((host, port)) == 0:
            return "in use"
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # A listener that does not answer us still blocks a bind. SO_REUSEADDR, as the servers set
        # it, so that sockets left in TIME_WAIT by a service just stopped do not count as busy.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except PermissionError:
            return "privileged"
        except OSError:
            return "in use"
    return "free"


def port_in_use(host: str, port: int) -> bool:
    """True when something accepts connections on, or holds, ``host:port``."""
    return port_state(host, port) == "in use"


def port_refusal(host: str, port: int, what: str, how: str) -> str | None:
    """Why ``what`` cannot listen on ``host:port`` (``how``: the setting that moves it), or None when it can."""
    state = port_state(host, port)
    if state == "in use":
        return (f"port {host}:{port} ({what}) is already in use by another program{_named(listener(host, port))}: "
                f"stop that program, or choose another port with {how}")
    if state == "privileged":
        lowest = unprivileged_port_start()
        return (f"port {host}:{port} ({what}) is a privileged port: only root may listen below {lowest} "
                f"(net.ipv4.ip_unprivileged_port_start); choose one of {lowest} or above with {how}")
    return None


def listener(host: str, port: int) -> psutil.Process | None:
    """The process that listens on ``host:port``, when it is one of this user's (whose sockets this user may see);
    None when none is, or the listener is another user's (root's docker-proxy, say)."""
    try:
        # One pass over the system's sockets; on Linux a user sees the pid of their own processes' only.
        for conn in psutil.net_connections(kind="inet"):
            if conn.pid and _listening_at(conn, host, port):
                with contextlib.suppress(psutil.Error):
                    return psutil.Process(conn.pid)
        return None
    except psutil.AccessDenied:  # macOS: that listing needs root; each of this user's processes' own sockets instead
        pass
    for proc in psutil.process_iter():
        with contextlib.suppress(psutil.Error):
            if proc.uids().real == os.getuid() and any(_listening_at(c, host, port)
                                                       for c in proc.net_connections(kind="inet")):
                return proc
    return None


def _listening_at(conn: Any, host: str, port: int) -> bool:
    """Whether ``conn`` (psutil's, system-wide or a process's) listens on ``port`` of ``host`` or of every address."""
    # The wildcard addresses are matched, never bound: a program listening on all addresses (another user's service,
    # not Tenfold's, which listens on loopback only) holds the port on ``host`` too, and the refusal names it.
    return (conn.status == psutil.CONN_LISTEN and bool(conn.laddr) and conn.laddr.port == port
            and conn.laddr.ip in (host, "0.0.0.0", "::", f"::ffff:{host}"))


def _named(proc: psutil.Process | None) -> str:
    """`` (pid N, name)`` for a refusal that names the program holding a port; "" when it is not known."""
    if proc is None:
        return ""
    try:
        return f" (pid {proc.pid}, {proc.name()})"
    except psutil.Error:
        return f" (pid {proc.pid})"


def unprivileged_port_start() -> int:
    """The lowest port a user may listen on (``net.ipv4.ip_unprivileged_port_start``; 1024 when unreadable)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_unprivileged_port_start").read_text())
    except (OSError, ValueError):
        return 1024


def require_local_storage(settings: Settings) -> None:
    """Raise :class:`LocalPlatformError` at once when ``settings`` are local and nothing listens where their GCS
    emulator (the lake's and the model registry's store) should be: the storage client's own retries would wait
    two minutes on a refused connection before failing. Cloud settings pass unchecked.

    Something listening is not enough: a program that is no GCS emulator Tenfold started (another service on the
    default port) is refused, naming it. Another home's GCS emulator passes with a warning naming that home (its
    registry is the one read): the test suite's homes share one emulator on purpose."""
    local = settings.local
    if not (settings.is_local and settings.storage.emulator_host):
        return
    host, port = local.bind_host, local.gcs_port
    if not port_in_use(host, port):
        raise LocalPlatformError(
            f"the local platform is not up: nothing listens on {host}:{port}, where the GCS "
            "emulator (the model registry's store) should be: run `tenfold up`")
    from tenfold.local.services import run_dir

    own = read_record(run_dir(settings), "gcs")
    if own is not None and listens_on(own, [port]):
        return
    holder = listener(host, port)
    home = _gcs_home(holder, port) if holder is not None else None
    if home is None:
        raise LocalPlatformError(
            f"this home's GCS emulator is not running, and another program{_named(holder)} holds {host}:{port}, "
            "where it should listen: stop that program, or give this platform another port (TENFOLD_LOCAL__GCS_PORT), "
            "then run `tenfold up`")
    if (home, port) not in _warned_homes:
        _warned_homes.add((home, port))
        log.warning("warning: the GCS emulator on %s:%d is the platform's in %s, not this home's (%s): the model "
                    "registry read and written is that home's; give this home ports of its own (TENFOLD_LOCAL__*_PORT) "
                    "and run `tenfold up`", host, port, home, local.home)


_warned_homes: set[tuple[Path, int]] = set()


def _gcs_home(proc: psutil.Process, port: int) -> Path | None:
    """The home whose platform runs ``proc`` as its GCS emulator on ``port``, or None when it is no such process.
    A component of the platform runs in its home (``start``'s ``cwd``), its pid file in the home's ``run`` folder
    (``tenfold.local.services.run_dir``)."""
    try:
        home = Path(proc.cwd())
    except psutil.Error:
        return None
    record = read_record(home / "run", "gcs")
    return home if record is not None and listens_on(record, [port]) else None


def free_port(host: str = "127.0.0.1") -> int:
    """A port the kernel says is free now (a later bind can still race; callers check health)."""
    return free_ports(1, host)[0]


def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """``n`` different ports the kernel says are free now: all bound at once, so that no two are the same (two
    calls of :func:`free_port` can be given the same port, once the first one's socket is closed)."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) for _ in range(n)]
        for sock in socks:
            sock.bind((host, 0))
        return [int(sock.getsockname()[1]) for sock in socks]


def read_record(run_dir: Path, name: str) -> ProcessRecord | None:
    """The record of ``name``'s pid file in ``run_dir``; None when there is none, it cannot be parsed, or it is a copy
    of another home's that still names that home's process (see :func:`_copied_from`)."""
    path = pid_file(run_dir, name)
    try:
        record = ProcessRecord.from_json(path.read_text())
    except FileNotFoundError:
        return None
    except (ValueError, TypeError, KeyError):
        # A pid file we cannot parse identifies nothing; treat as absent (and never kill on it).
        return None
    if (origin := _copied_from(record, path)) is not None:
        if path not in _warned_copies:  # once per process: `status` and `up` read each pid file several times
            _warned_copies.add(path)
            log.warning("warning: %s is a copy of %s: its %s (pid %d) is the platform's in %s, which this home leaves "
                        "alone (stop it from there; delete the copy to silence this)", path, origin, record.name,
                        record.pid, origin.parent)
        return None
    return record


_warned_copies: set[Path] = set()


def _copied_from(record: ProcessRecord, path: Path) -> Path | None:
    """The pid file that ``path`` (holding ``record``) was copied from, when that one still names the same process.

    A home copied while its platform ran (``cp -a A B``) holds A's pid files: read as B's own, B's ``status`` said
    running, its ``up`` took A's emulators (A's registry) for its own, and its ``down`` stopped A's platform. None when
    the record was written here, or before records kept their folder (this home's, as before), or when the folder it
    names no longer holds it: the home was moved, or the original deleted, and the process has no other home."""
    if not record.run_dir or Path(record.run_dir) == path.parent.resolve():
        return None
    origin = Path(record.run_dir) / path.name
    try:
        if origin.samefile(path):  # the same folder by another way (a bind mount)
            return None
        other = ProcessRecord.from_json(origin.read_text())
    except (OSError, ValueError, TypeError, KeyError):
        return None
    return origin if (other.pid, other.create_time) == (record.pid, record.create_time) else None


def _process_of(record: ProcessRecord) -> psutil.Process | None:
    """The live process the record describes, or None when it exited or the pid was recycled."""
    if _other_boot(record):
        return None  # its start time counts from another boot: a process of this one may match it by chance
    try:
        proc = psutil.Process(record.pid)
        if abs(started(proc) - record.create_time) > 0.005:
            return None
        if proc.status() == psutil.STATUS_ZOMBIE:
            return None
        # The command line is informative only: wrapper scripts (gcloud) exec into another program,
        # which changes it; pid + start time (ticks since boot) already identify one process.
        return proc
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None


def is_running(record: ProcessRecord) -> bool:
    """Whether the process ``record`` names is alive. One this process started and that has exited is reaped here: a
    supervisor that restarts a dead child without stopping it (the inference pool) left a zombie per crash."""
    if (popen := _popen_of(record)) is not None:
        popen.poll()  # waitpid(WNOHANG): reaps it when it has exited; its exit status stays for _how_it_ended
    return _process_of(record) is not None


def child_environ(env: Mapping[str, str]) -> dict[str, str]:
    """``env`` with its ``PYTHONPATH`` entries made absolute against this process's directory: a child runs in the
    platform's home (``cwd``), where ``PYTHONPATH=.`` (a workload of one's own, docs/workloads.md) names another
    folder, and every task and replica would fail to import the workload that the shell imports."""
    env = dict(env)
    if entries := env.get("PYTHONPATH"):
        # An empty entry is the working folder too, as Python reads it.
        env["PYTHONPATH"] = os.pathsep.join(os.path.abspath(e or os.curdir) for e in entries.split(os.pathsep))
    return env


def start(
    name: str,
    argv: Sequence[str],
    *,
    run_dir: Path,
    port: int,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    tie_to_this_process: bool = False,
) -> ProcessRecord:
    """Start ``argv`` in a new session with output to its log file and write its pid file.

    ``tie_to_this_process`` (test fixtures) also starts a watchdog that stops the service as :func:`stop` does
    if this process dies without cleaning up (killed test run), so no emulator, and nothing it started, outlives it.
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_file(run_dir, name)
    marker = uuid.uuid4().hex
    with open(log_path, "ab") as log:
        # Each start's lines follow a header of its own: a failed start's refusal shows this start's output alone,
        # not an earlier run's crash (the log is appended to across restarts).
        log.write(f"{START_HEADER} {name} starting at {datetime.datetime.now(datetime.UTC):%Y-%m-%dT%H:%M:%SZ} ---\n"
                  .encode())
        log.flush()
        try:
            popen = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**child_environ(os.environ if env is None else env), MARKER_ENV: marker},
                cwd=cwd,
                start_new_session=True,  # its own process group: stop() kills children with it
            )
        except FileNotFoundError as exc:
            raise LocalPlatformError(f"{name}: cannot run {argv[0]!r} ({exc.strerror})") from exc
    try:
        record = record_of(psutil.Process(popen.pid), name, port=port, log=str(log_path), marker=marker,
                           run_dir=str(run_dir.resolve()))
    except psutil.NoSuchProcess as exc:  # zombies included: it exited before we could look at it
        with contextlib.suppress(subprocess.TimeoutExpired):
            popen.wait(timeout=2)
        raise LocalPlatformError(
            f"{name} exited before it became healthy (exit code {popen.returncode}); last log lines:\n{log_tail(log_path)}"
        ) from exc
    except BaseException:
        _abandon(popen)  # Ctrl-C (or anything else) before the pid file: nothing would ever find it again
        raise
    try:
        tmp = pid_file(run_dir, name).with_suffix(".pid.tmp")
        tmp.write_text(record.to_json())
        tmp.replace(pid_file(run_dir, name))
    except BaseException as exc:
        _abandon(popen)
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise LocalPlatformError(
                f"{name}: cannot write its pid file in {run_dir} ({exc.strerror or exc}); it was stopped again: "
                "free the disk or fix the folder's permissions, then run it again"
            ) from exc
        raise
    # Popen's handle is kept, not waited on: the service outlives this process (``tenfold up`` exits). While this
    # process lives, a child that died is reaped by the next is_running() or stop() on it (no lingering zombie).
    _reapers.append(popen)
    if tie_to_this_process:
        _start_watchdog(record)
    return record


def record_of(proc: psutil.Process, name: str, *, port: int = 0, log: str = "", marker: str = "",
              run_dir: str = "") -> ProcessRecord:
    """The record that identifies ``proc`` (its pid and start time, in this boot) for :func:`is_running` and
    :func:`stop`; ``marker``, the :data:`MARKER_ENV` its group was started with, tells its orphans from strangers;
    ``run_dir``, the folder its pid file goes to, tells a copy of that file in another home from it."""
    return ProcessRecord(name=name, pid=proc.pid, create_time=started(proc), cmdline=proc.cmdline(), port=port,
                         log=log, boot_id=boot_id(), marker=marker, run_dir=run_dir)


def _abandon(popen: subprocess.Popen[bytes]) -> None:
    """Stop the process group just started, before a pid file names it."""
    with contextlib.suppress(OSError):
        os.killpg(popen.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        popen.wait(timeout=5)


# Runs detached from us; polls our pid and, once we are gone, stops the service as `tenfold down` would: stop() on
# its record (read from stdin), which checks that the processes are still the ones we started (pid, start time, boot,
# marker) and also takes the descendants that left the group (Airflow's tasks, spark-submit, torchrun in sessions of
# their own) and what a dead leader left behind. A bare killpg of the leader's group, while the leader lived, left all
# of those running after a killed test run. While it waits it only looks at two pids a second; once the leader is gone
# it looks for what is left of the service every ten seconds, and ends when nothing is (a service the owner stopped
# itself, or a pool's worker it replaced).
_WATCHDOG = """
import sys, time
import psutil
from tenfold.local.process import ProcessRecord, _marked, is_group_running, is_running, started, stop
owner, owner_ct = int(sys.argv[1]), float(sys.argv[2])
record = ProcessRecord.from_json(sys.stdin.read())
def alive(p, c):
    try:
        q = psutil.Process(p)
        return abs(started(q) - c) < 0.005 and q.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False
looked = time.monotonic()
while alive(owner, owner_ct):
    time.sleep(1)
    if not is_running(record) and time.monotonic() - looked > 10:
        looked = time.monotonic()
        if not is_group_running(record) and not _marked(record.marker):
            sys.exit()
stop(record, timeout=10.0)
"""


def run_bounded(cmd: Sequence[str], *, env: Mapping[str, str], timeout: float) -> subprocess.CompletedProcess[str]:
    """Run ``cmd`` to its end, its output captured; past ``timeout``, stop it with every process it started (its own
    process group: subprocess.run's timeout kills the command alone, and a child it started ran on) and raise
    :class:`subprocess.TimeoutExpired`. Interrupted any other way (Ctrl-C, which its own session does not get; a
    SIGTERM or SIGHUP of the caller, see :func:`_dying_with_caller`), it is stopped the same way before the
    interruption goes on."""
    with _dying_with_caller():
        proc = subprocess.Popen(list(cmd), env=dict(env), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                start_new_session=True, preexec_fn=_parent_death_signal())
        try:
            out, err = proc.communicate(timeout=timeout)
        except BaseException:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.kill()
            proc.wait()
            for pipe in (proc.stdout, proc.stderr):
                if pipe is not None:
                    pipe.close()
            raise
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


@contextlib.contextmanager
def _dying_with_caller() -> Iterator[None]:
    """While it is held, a SIGTERM or SIGHUP of this process raises SystemExit (exit code 128 + the signal, as a shell
    reports a command a signal ended) where it would have ended the process on the spot, so that
    :func:`run_bounded`'s cleanup stops its command's group, and the caller's own cleanup runs, before it exits. Its
    command runs in a session of its own, which the terminal's SIGHUP never reaches: a `tenfold up` killed by a CI
    timeout, a ``kill`` or a closed terminal during `airflow db migrate` left the migration running, in no pid file
    (`tenfold down` could not stop it), and the next `tenfold up` started a second one on the same database.

    Only in the main thread (the one Python runs signal handlers in), and only for a signal whose disposition is the
    default: one the caller ignores (``nohup``) or handles itself is left as it is. Restored on the way out."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stopped(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    previous: dict[signal.Signals, Any] = {}
    try:
        for sig in (signal.SIGTERM, signal.SIGHUP):
            if signal.getsignal(sig) is signal.SIG_DFL:
                previous[sig] = signal.signal(sig, stopped)
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _parent_death_signal() -> Callable[[], None] | None:
    """On Linux, what makes a child of this thread get SIGKILL once the thread's process is gone (PR_SET_PDEATHSIG):
    the backstop of :func:`_dying_with_caller` for a death no handler sees (SIGKILL, the OOM killer). It reaches the
    child alone, not what the child started. None elsewhere, or where libc's prctl cannot be found.

    Called between fork and exec: libc's function is looked up here, beforehand, so the child calls it and nothing
    else (a lock another thread held at the fork would hang a child that took it)."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    parent, sig = os.getpid(), ctypes.c_ulong(signal.SIGKILL)

    def arm() -> None:
        prctl(_PR_SET_PDEATHSIG, sig)
        if os.getppid() != parent:  # the caller died before the signal was armed: it will never come
            os.kill(os.getpid(), signal.SIGKILL)

    return arm


def _start_watchdog(record: ProcessRecord) -> None:
    import sys

    me = psutil.Process()
    watchdog = subprocess.Popen(
        [sys.executable, "-c", _WATCHDOG, str(me.pid), repr(started(me))],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    # The record on stdin, not on the command line: there it would put the service's command line into the
    # watchdog's, for anything that looks for the service by it. A few kilobytes: the pipe's buffer takes them whole.
    assert watchdog.stdin is not None
    with contextlib.suppress(BrokenPipeError), watchdog.stdin:
        watchdog.stdin.write(record.to_json().encode())


_reapers: list[subprocess.Popen[bytes]] = []


def _popen_of(record: ProcessRecord) -> subprocess.Popen[bytes] | None:
    """The handle of the child ``record`` names, when this process started it: the newest with its pid (a child reaped
    by is_running frees its pid, which a later child may get while the old handle is still kept)."""
    return next((p for p in reversed(_reapers) if p.pid == record.pid), None)


def _orphans(record: ProcessRecord) -> tuple[list[psutil.Process], bool]:
    """Live members of the group ``record`` led, once its leader is gone (e.g. Airflow's scheduler after
    the standalone process crashed), and whether they are the whole group.

    The kernel never reuses a pid while a group still carries it as its id; but once our group is empty, the
    pid can be recycled, and a stranger's launcher can make it the id of a group that outlives the launcher
    (``setsid``, then exit). So a member counts as ours only when it carries our marker in its environment
    (records from before markers: any member), and nothing of a record from another boot is ours."""
    if _other_boot(record):
        return [], False
    try:
        leader = psutil.Process(record.pid)
        if abs(started(leader) - record.create_time) > 0.005:
            return [], False  # the pid now names another process: not our group
    except psutil.NoSuchProcess:
        pass
    except psutil.AccessDenied:
        return [], False
    everyone = [p for p in _group_members(record.pid) if p.pid != record.pid and _alive(p)]
    ours = [p for p in everyone if _carries(p, record.marker)]
    return ours, len(ours) == len(everyone)


def _carries(p: psutil.Process, marker: str) -> bool:
    """Whether ``p`` can be ours: it carries ``marker``, or its environment cannot be read. A process that sets its
    title (``setproctitle``: Airflow's scheduler, executor workers and log server do) writes over the memory the
    kernel shows as its environment, which then reads empty: such a member counts as ours, as every member did
    before markers. One whose environment shows another marker or none is a stranger's."""
    if not marker:
        return True
    try:
        environ = p.environ()
    except psutil.AccessDenied:
        return True
    except psutil.Error:
        return False
    return not environ or environ.get(MARKER_ENV) == marker


def _alive(p: psutil.Process) -> bool:
    try:
        return p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def is_group_running(record: ProcessRecord) -> bool:
    """True while the recorded process, or any process left in its group, is alive."""
    return is_running(record) or bool(_orphans(record)[0])


def stop(record: ProcessRecord, *, timeout: float = 20.0, check: bool = False) -> bool:
    """Stop the process group of ``record`` if it is still ours, and every descendant of it that left the
    group; True if anything of it was running (not: that it is gone). With ``check``, raise :class:`StillRunning`,
    naming them, when processes of it outlived SIGKILL, once everything else of it was stopped: a caller that drops the
    pid file on a True loses track of them (``tenfold down`` said "stopped", and the next ``up`` took its own emulator,
    still holding the port, for another program)."""
    proc = _process_of(record)
    if proc is not None:
        try:
            pgid: int | None = os.getpgid(proc.pid)
        except ProcessLookupError:
            pgid = None
        # Only signal the group when the leader is ours: start() made it a session leader (pgid == pid).
        group = pgid if pgid == proc.pid else None
        members = _group_members(proc.pid) if group is not None else [proc]
    else:
        members, whole = _orphans(record)
        group = record.pid if members and whole else None  # a group with a stranger in it gets no killpg
    # Descendants that left the group (Airflow runs each task in a group of its own; spark-submit and torchrun
    # run in sessions of their own) are collected now, while the parent links still lead to them.
    strays = [p for p in _descendants(members) if p.pid not in {m.pid for m in members}]
    survivors: list[psutil.Process] = []
    refused: set[int] = set()
    if members:
        alive = _signal_and_wait(group, members, signal.SIGTERM, timeout, refused)
        if alive:
            survivors += _signal_and_wait(group, alive, signal.SIGKILL, 5.0, refused)
    # And those whose parent link broke before the snapshot above (their parent died, so init adopted them: a task
    # killed by the OOM killer while its spark-submit ran in a session of its own), found by the marker every child
    # inherits. Only a marker read as this record's counts (not an unreadable environment, unlike _carries).
    handled = {p.pid for p in [*members, *strays]}
    strays += [p for p in _marked(record.marker) if p.pid not in handled]
    # The group had its chance to stop them (a supervisor drains its children); what it left is stopped here.
    if (strays := [p for p in strays if _alive(p)]) and (
            alive := _signal_and_wait(None, strays, signal.SIGTERM, STRAY_TIMEOUT_S, refused)):
        survivors += _signal_and_wait(None, alive, signal.SIGKILL, 5.0, refused)
    for popen in list(_reapers):
        if popen.pid == record.pid:
            with contextlib.suppress(Exception):
                popen.wait(timeout=1)
            _reapers.remove(popen)
    if check and survivors:
        if not_ours := [p for p in survivors if p.pid in refused]:
            raise _not_ours(record.name, not_ours, [p.pid for p in survivors])
        raise outlived_sigkill(record.name, [p.pid for p in survivors])
    return bool(members)


def _not_ours(name: str, refused: list[psutil.Process], pids: list[int]) -> StillRunning:
    """What :func:`stop` raises when processes of ``name`` refused its signals (EPERM): they run as another user."""
    def who(p: psutil.Process) -> str:
        try:
            return f"pid {p.pid} (user {p.username()})"
        except psutil.Error:
            return f"pid {p.pid}"

    listed = ", ".join(map(who, refused))
    return StillRunning(f"{name}: {listed} refused its stop signals: it runs as another user (started with sudo, or "
                        f"as a task's run_as_user), which this user may not signal; stop it as that user (`sudo kill "
                        f"{' '.join(str(p.pid) for p in refused)}`), then run the command again", pids)


def outlived_sigkill(name: str, pids: Iterable[int]) -> StillRunning:
    """What :func:`stop` raises when processes of ``name`` outlived SIGKILL: also for a caller that knows a stop just
    failed on them, and does not signal and wait on them again."""
    pids = sorted(pids)
    return StillRunning(f"{name}: pid {', '.join(map(str, pids))} did not exit within 5 s of SIGKILL (stuck in the "
                        "kernel: uninterruptible I/O, a hung mount or a failing disk?)", pids)


def _marked(marker: str) -> list[psutil.Process]:
    """This user's processes whose environment carries ``marker``, as their own or their parent's (see
    :data:`PARENT_MARKER_ENV`); none for an empty one (a record from before markers)."""
    if not marker:
        return []
    found = []
    for p in psutil.process_iter():
        with contextlib.suppress(psutil.Error):
            if p.pid != os.getpid() and p.uids().real == os.getuid() and marker in (
                    (environ := p.environ()).get(MARKER_ENV), environ.get(PARENT_MARKER_ENV)):
                found.append(p)
    return found


def _descendants(procs: list[psutil.Process]) -> list[psutil.Process]:
    found: dict[int, psutil.Process] = {}
    for p in procs:
        with contextlib.suppress(psutil.Error):
            for child in p.children(recursive=True):
                found.setdefault(child.pid, child)
    return list(found.values())


def _signal_and_wait(pgid: int | None, procs: list[psutil.Process], sig: signal.Signals, timeout: float,
                     refused: set[int]) -> list[psutil.Process]:
    """Signal ``procs`` (and the group ``pgid``) and wait up to ``timeout`` for them to exit; those still alive. One
    that refused the signal (EPERM, added to ``refused``) is not waited for: it will not exit for it."""
    refused |= _signal(pgid, procs, sig)
    return [*_wait_gone([p for p in procs if p.pid not in refused], timeout),
            *(p for p in procs if p.pid in refused and _alive(p))]


def _wait_gone(procs: list[psutil.Process], timeout: float) -> list[psutil.Process]:
    """Wait until every process exited; returns those still alive. A zombie counts as gone: its
    parent may be dead and pid 1 in a container does not always reap it."""
    deadline = time.monotonic() + timeout
    while True:
        alive = []
        for p in procs:
            try:
                if p.status() != psutil.STATUS_ZOMBIE:
                    alive.append(p)
            except psutil.NoSuchProcess:
                pass
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.1)


def _group_members(pgid: int) -> list[psutil.Process]:
    members = []
    for p in psutil.process_iter():
        with contextlib.suppress(psutil.Error, ProcessLookupError):
            if os.getpgid(p.pid) == pgid:
                members.append(p)
    return members


def _signal(pgid: int | None, procs: list[psutil.Process], sig: signal.Signals) -> set[int]:
    """Send ``sig`` to the group ``pgid`` and to each of ``procs``; the pids of ``procs`` that refused it (EPERM: a
    process of another user, such as one a task started with sudo)."""
    if pgid is not None and pgid > 1 and pgid != os.getpgrp():  # never this process's own group, init or everyone
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, sig)
    refused: set[int] = set()
    for p in procs:  # and each one directly: those outside the group were collected beforehand (stop)
        try:
            p.send_signal(sig)
        except psutil.AccessDenied:
            refused.add(p.pid)
        except psutil.Error:
            pass
    return refused


def remove_pid_file(run_dir: Path, name: str) -> None:
    pid_file(run_dir, name).unlink(missing_ok=True)


def listens_on(record: ProcessRecord, ports: Iterable[int]) -> bool:
    """Whether ``record``'s process (its process group, or a descendant) holds a listening socket on every one of
    ``ports``: what tells its own answer from another program's on the same port."""
    wanted = set(ports)
    if not wanted:
        return True
    proc = _process_of(record)
    if proc is None:
        return False
    try:
        procs = {p.pid: p for p in [proc, *_group_members(os.getpgid(record.pid)), *_descendants([proc])]}
    except ProcessLookupError:
        return False
    held: set[int] = set()
    for p in procs.values():  # each process's own sockets: no system-wide listing (which needs root on macOS)
        with contextlib.suppress(psutil.Error):
            held |= {c.laddr.port for c in p.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN and c.laddr}
    return wanted <= held


def wait_until(
    check: Callable[[], bool],
    *,
    timeout: float,
    what: str,
    record: ProcessRecord | None = None,
    interval: float = 0.25,
    watch: Sequence[ProcessRecord] = (),
    ports: Iterable[int] = (),
) -> None:
    """Poll ``check`` until it is true; fail early (with the log's tail) if ``record``'s process, or any
    process in ``watch`` (the other components starting with it), dies. With ``ports`` (what ``record``'s process
    listens on), an answer counts only from that process: a check answered by another program on the port (a second
    home's platform started at the same time on the same ports, past the port check) is refused at once; it passed,
    and the buckets and topics were made in the other platform's emulators."""
    deadline = time.monotonic() + timeout
    watched = ([record] if record is not None else []) + [r for r in watch if r != record]
    ports = tuple(ports)
    while True:
        try:
            answered = check()
        except Exception:
            answered = False  # not ready yet: connection refused, 503, half-written file...
        if answered:
            if record is None or listens_on(record, ports):
                return
            if is_running(record):
                raise LocalPlatformError(
                    f"{what} answers, but not from the process Tenfold started (pid {record.pid}): another program "
                    f"holds port {', '.join(map(str, ports))} (another TENFOLD_HOME's platform?); stop it, or give this "
                    f"platform other ports (TENFOLD_LOCAL__*_PORT); last log lines:\n{log_tail(record.log)}")
        for rec in watched:
            if not is_running(rec):
                name = what if rec == record else f"{rec.name} (starting with {what})"
                raise LocalPlatformError(f"{name} exited before it became healthy{_how_it_ended(rec)}; last log "
                                         f"lines:\n{log_tail(rec.log)}")
        if time.monotonic() > deadline:
            tail = f"; last log lines:\n{log_tail(record.log)}" if record else ""
            raise LocalPlatformError(f"{what} was not healthy within {timeout:.0f} s{tail}")
        time.sleep(interval)


def _how_it_ended(record: ProcessRecord) -> str:
    """`` (killed by SIGKILL)`` or `` (exit code 1)`` when this process started it (and holds its exit status)."""
    popen = _popen_of(record)
    code = popen.poll() if popen is not None else None
    if code is None:
        return ""
    if code < 0:
        with contextlib.suppress(ValueError):
            return f" (killed by {signal.Signals(-code).name})"
    return f" (exit code {code})"


def log_tail(path: str | Path, lines: int = 20) -> str:
    """The last ``lines`` lines of a log (read backwards from its end, a block at a time: a log can be large), of the
    newest start only: what follows its :data:`START_HEADER` line, when that is among them."""
    try:
        with open(path, "rb") as log:
            start = log.seek(0, os.SEEK_END)
            tail = b""
            while start > 0 and tail.count(b"\n") <= lines:
                block = min(start, 64 * 1024)
                start -= block
                log.seek(start)
                tail = log.read(block) + tail
    except FileNotFoundError:
        return "(no log)"
    last = tail.decode(errors="replace").splitlines()[-lines:]
    starts = [i for i, line in enumerate(last) if line.startswith(START_HEADER)]
    if starts:
        last = last[starts[-1] + 1:]
    return "\n".join(last) if last else "(nothing logged since it started)"
