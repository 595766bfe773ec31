"""HAProxy in front of the local fleet: its configuration, its process, and its runtime API.

The configuration is generated from settings into ``<settings.local.home>/run/haproxy.cfg``:

* a frontend on ``settings.local.bind_host:settings.local.lb_port`` that computes the user's bucket
  exactly as :func:`tenfold.rollout.split.bucket_of` does (``req.fhdr(<user key header>),xxh32,mod(100)``)
  and sends buckets below the canary percentage to the ``canary`` backend, everything else to
  ``stable``. The percentage is an entry of a map file (``split.map``) that the runtime API changes
  (``set map``) with no reload; a request without a user key draws a random bucket, so the pools
  share it by weight (percentage : 100 - percentage). When the canary has no usable replica its
  share goes to ``stable`` rather than failing;
* backends ``stable`` and ``canary`` with ``server-template`` slots (``s1``..``sN``) that start in
  maintenance: the fleet points a slot at a replica with ``set server <b>/<s> addr .. port ..`` and
  takes it in and out of rotation with ``set server .. state ready|drain|maint``, never reloading;
* HTTP health checks on the server's readiness path at the fleet's interval, fall and rise; on a
  connection failure a request is retried ``lb_retries`` times and redispatched to another replica;
* a second frontend on ``settings.serving.fleet.lb_metrics_port`` with HAProxy's own Prometheus
  exporter (``/metrics``) and stats page (``/stats``), behind HTTP basic auth: user ``tenfold``
  (:data:`STATS_USER`), the serving token (``tenfold status``) as its password, so the configuration file,
  which holds it, is written for this user only (0600);
* the stats socket ``haproxy.sock`` at ``level admin`` (mode 600), the runtime API :class:`RuntimeApi` talks to.

Only POSTs that never reached a replica are retried: a prediction is not idempotent (a retried one
would publish a second monitoring sample), so a response lost with its replica is an error the client sees.
"""

from __future__ import annotations

import csv
import io
import os
import shutil
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from tenfold.config import Settings
from tenfold.fsio import atomic_write
from tenfold.local.process import LocalPlatformError
from tenfold.rollout.split import BUCKETS, CANARY, STABLE

POOLS = (STABLE, CANARY)
SPLIT_KEY = "canary_percent"
SLOT_PREFIX = "s"
# sun_path is 108 bytes on Linux (104 on macOS): a deep temporary home can exceed it. HAProxy binds its runtime API
# socket under a temporary name, "<path>.<pid>.tmp", and renames it: with pids of up to 7 digits (pid_max is at most
# 4194304) the path may take 95 bytes. A check of 100 characters let a longer one (or one of multibyte characters)
# through, and HAProxy refused it at start ("too long"), or later, once pids grew a digit.
_SUN_PATH = 104 if sys.platform == "darwin" else 108
_MAX_SOCKET_PATH = _SUN_PATH - 1 - len(".4194304.tmp")  # bytes, the name's closing NUL aside


class HaproxyError(LocalPlatformError):
    """HAProxy is missing, refused its configuration, or its runtime API refused a command."""


class HaproxyFault(HaproxyError):
    """HAProxy refused what Tenfold's own code built (its configuration, a runtime command) or answered in a shape it
    cannot read: a fault to report with its traceback, not a local service to start (see ``local_service``)."""

    local_service = False  # tenfold.outages.ending: "a fault in the code", with how to see the traceback


class HaproxySilent(HaproxyError):
    """HAProxy's runtime API did not answer at all (not a refusal it answered): the process may be hung or stopped."""


@dataclass(frozen=True)
class HaproxyPaths:
    """Where HAProxy's files live: all in the local run directory."""

    run_dir: Path

    @property
    def config(self) -> Path:
        return self.run_dir / "haproxy.cfg"

    @property
    def socket(self) -> Path:
        return self.run_dir / "haproxy.sock"

    @property
    def split_map(self) -> Path:
        return self.run_dir / "split.map"

    @property
    def request_log(self) -> Path:
        """The fleet frontend's request log (tenfold.serving.requestlog writes it from HAProxy's ring)."""
        return self.run_dir / "requests.log"

    @classmethod
    def of(cls, settings: Settings) -> HaproxyPaths:
        return cls(settings.local.home / "run")


def slot_count(settings: Settings, pool: str) -> int:
    """Slots a pool's backend has: its maximum, one for the new replica of a rolling change, one draining."""
    fleet = settings.serving.fleet
    return (fleet.stable_max if pool == STABLE else fleet.canary_max) + 2


def slot_name(index: int) -> str:
    return f"{SLOT_PREFIX}{index}"


def haproxy_binary() -> str:
    """The ``haproxy`` executable, or a clear error saying how to install it."""
    found = shutil.which("haproxy") or next((p for p in ("/usr/sbin/haproxy", "/usr/local/sbin/haproxy") if os.access(p, os.X_OK)), None)
    if found is None:
        raise HaproxyError(
            "haproxy is not installed: run `make setup` (it runs `apt-get install haproxy`), "
            "or install HAProxy 2.6+ yourself (`brew install haproxy` on macOS)"
        )
    return found


# The request log's lines: "<marker> <unix time of accept>.<ms> <backend (arm)> <status> <active time ms>
# <total time ms> <request counter> <path>": accept date, arm, status, active time (the latency), total time (the
# end: accept date + %Tt), HAProxy's own count of its requests (one line per request: what a reader that reconnects
# skips) and the path.
REQUEST_LOG_MARKER = "tenfold-request"
REQUEST_LOG_FORMAT = f"{REQUEST_LOG_MARKER} %Ts.%ms %b %ST %Ta %Tt %rt %HP"
_REQUEST_MARKER = REQUEST_LOG_MARKER.encode() + b" "


class RequestLine(NamedTuple):
    """One request line of the request log (REQUEST_LOG_FORMAT), parsed."""

    accepted: float  # unix time the request was accepted
    arm: str  # the backend
    status: int
    active_ms: float  # %Ta: the request's latency
    total_ms: float  # %Tt: from the accept date to the end, idle time on a kept-alive connection included
    counter: int | None  # %rt: HAProxy's count of its requests (None on a line of an older format)
    path: bytes

    @property
    def ended(self) -> float:
        """The unix time the request ended."""
        return self.accepted + max(self.total_ms, self.active_ms, 0.0) / 1000


def parse_request_line(line: bytes) -> RequestLine | None:
    """A request line of the request log, parsed; None for any other line. Lines of the two older formats (6
    fields: no %Tt and no %rt; 7 fields: no %rt) still parse, so a log written before an upgrade is read."""
    if not line.startswith(_REQUEST_MARKER):
        return None
    parts = line.split()
    if len(parts) not in (6, 7, 8):
        return None
    try:
        accepted, arm, status, active_ms = float(parts[1]), parts[2].decode(), int(parts[3]), float(parts[4])
        total_ms = float(parts[5]) if len(parts) >= 7 else active_ms
        counter = int(parts[6]) if len(parts) == 8 else None
    except (ValueError, UnicodeDecodeError):
        return None
    return RequestLine(accepted, arm, status, active_ms, total_ms, counter, parts[-1])
# HAProxy keeps the request lines in this ring buffer, which tenfold.serving.requestlog streams to the request log
# through the runtime API: HAProxy itself writes no file, and a log on its stderr could never be rotated (it drops
# the O_APPEND of its stderr, so a truncated log refills at the old offset behind a hole).
REQUEST_RING = "requests"
# Lines the ring holds while its reader is held up (~20 s of 3,000 req/s).
REQUEST_RING_BYTES = 4 * 1024 * 1024
# The metrics frontend's basic-auth user; its password is the serving token.
STATS_USER = "tenfold"
_STATS_USERLIST = "tenfold_stats"


def render_config(settings: Settings) -> str:
    """The HAProxy configuration of the local fleet, from settings alone."""
    paths = HaproxyPaths.of(settings)
    if len(os.fsencode(paths.socket)) > _MAX_SOCKET_PATH:
        raise HaproxyError(
            f"the runtime API socket path {paths.socket} is longer than a unix socket allows "
            f"({_MAX_SOCKET_PATH} bytes, with room for HAProxy's temporary name for it): use a shorter TENFOLD_HOME"
        )
    # Single-quoted in the configuration (a checkout under "My Projects" put a space in them: HAProxy refused the
    # configuration), and spaces escaped on the runtime API; these it cannot hold either way.
    if any(c in str(paths.run_dir) for c in "'\"\\;,()\t\n\r"):
        raise HaproxyError(f"the fleet's run folder {paths.run_dir} holds a quote, backslash, ';', ',', '(', ')', tab or "
                           "line break, which HAProxy's configuration or runtime API cannot hold: use a TENFOLD_HOME "
                           "without them")
    from tenfold.serving.auth import ensure_token

    token = ensure_token(settings)
    if not token or any(c in token for c in ' \t\n"\'\\#$'):  # HAProxy expands $NAME inside double quotes
        raise HaproxyError(f"the serving token in {paths.run_dir} has a space, quote, backslash, '#' or '$', which HAProxy's "
                           "configuration cannot hold: delete the token file and run `tenfold serve up` for a new one")
    fleet, server, local = settings.serving.fleet, settings.serving.server, settings.local
    host = local.bind_host
    header = server.user_key_header
    timeout_ms = int(fleet.lb_timeout_s * 1000)
    lines = [
        "# Generated by tenfold.serving.haproxy from settings: edit the settings, not this file.",
        "global",
        f"    stats socket '{paths.socket}' mode 600 level admin",
        "    stats timeout 10s",
        "    log stderr format raw local0 info",
        "    nbthread 2",
        "",
        f"ring {REQUEST_RING}",
        "    format raw",
        "    maxlen 1024",
        f"    size {REQUEST_RING_BYTES}",
        "",
        "defaults",
        "    mode http",
        "    log global",
        "    option httplog",
        # Only abnormal requests (errors, retries, redispatches) reach the log.
        "    option dontlog-normal",
        f"    timeout connect {fleet.lb_connect_timeout_ms}ms",
        f"    timeout client {timeout_ms}ms",
        f"    timeout server {timeout_ms}ms",
        f"    timeout queue {timeout_ms}ms",
        "    timeout http-request 10s",
        "    timeout http-keep-alive 10s",
        f"    timeout check {max(fleet.health_interval_ms, 1000)}ms",
        f"    retries {fleet.lb_retries}",
        "    retry-on conn-failure",
        "    option redispatch 1",
        "",
        "frontend fleet",
        f"    bind {host}:{local.lb_port}",
        # Every request, one line each, for the canary analysis (tenfold.rollout.haproxy.HaproxyObserver), into the
        # ring that the supervisor streams to the request log.
        "    no log",
        f"    log ring@{REQUEST_RING} local0 info",
        "    no option dontlog-normal",
        f'    log-format "{REQUEST_LOG_FORMAT}"',
        f"    http-request set-var(txn.pct) str({SPLIT_KEY}),map_str_int('{paths.split_map}',0)",
        # req.fhdr: the last occurrence, whole (req.hdr would split it at commas); the replica reads it the same way.
        f"    acl user_key req.fhdr({header}),length gt 0",
        f"    http-request set-var(txn.bucket) req.fhdr({header}),xxh32,mod({BUCKETS}) if user_key",
        f"    http-request set-var(txn.bucket) rand({BUCKETS}) unless user_key",
        # The bucket routed by, to the replica (which reports it with each prediction), whatever the client sent.
        f"    http-request set-header {settings.serving.load_balancer.bucket_header} %[var(txn.bucket)]",
        f"    use_backend {CANARY} if {{ var(txn.bucket),sub(txn.pct) -m int lt 0 }} {{ nbsrv({CANARY}) gt 0 }}",
        f"    default_backend {STABLE}",
        "",
        f"userlist {_STATS_USERLIST}",
        f'    user {STATS_USER} insecure-password "{token}"',
        "",
        "frontend lb_metrics",
        f"    bind {host}:{fleet.lb_metrics_port}",
        "    no log",
        # The stats page and the exporter show the fleet's replicas and traffic to whoever asks: a login first.
        f"    http-request auth realm tenfold unless {{ http_auth({_STATS_USERLIST}) }}",
        "    http-request use-service prometheus-exporter if { path /metrics }",
        "    stats enable",
        "    stats uri /stats",
        "    stats refresh 5s",
    ]
    for pool in POOLS:
        lines += [
            "",
            f"backend {pool}",
            # Least in-flight first: the replicas batch, so the emptiest one answers soonest.
            "    balance leastconn",
            f"    option httpchk GET {server.ready_path}",
            "    http-check expect status 200",
            f"    default-server inter {fleet.health_interval_ms}ms fall {fleet.health_fall} rise {fleet.health_rise}",
            # Slots start in maintenance on a placeholder port; the fleet fills them at run time.
            f"    server-template {SLOT_PREFIX} 1-{slot_count(settings, pool)} {host}:1 disabled check",
        ]
    return "\n".join(lines) + "\n"


def write_split_map(path: Path, percent: int) -> None:
    """Write the map file HAProxy loads at start (atomically): the split survives a restart of HAProxy."""
    atomic_write(path, f"{SPLIT_KEY} {int(percent)}\n".encode(), durable=False)


def read_split_map(path: Path) -> int | None:
    """The percentage in the map file, or None if it has none."""
    try:
        for line in path.read_text().splitlines():
            key, _, value = line.partition(" ")
            if key == SPLIT_KEY:
                return int(value.strip())
    except (FileNotFoundError, ValueError):
        return None
    return None


def write_config(settings: Settings, *, canary_percent: int | None = None) -> HaproxyPaths:
    """Write ``haproxy.cfg`` (and the split map, when ``canary_percent`` is given or it is missing); validate it."""
    paths = HaproxyPaths.of(settings)
    paths.run_dir.mkdir(parents=True, exist_ok=True)
    if canary_percent is not None or read_split_map(paths.split_map) is None:
        write_split_map(paths.split_map, settings.serving.fleet.canary_percent if canary_percent is None else canary_percent)
    tmp = paths.config.with_name(paths.config.name + ".tmp")
    tmp.unlink(missing_ok=True)
    with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as fh:  # it holds the serving token
        fh.write(render_config(settings))
    # Not -q, which kept HAProxy's own reason out of the refusal.
    check = subprocess.run([haproxy_binary(), "-c", "-f", str(tmp)], capture_output=True, text=True, check=False)
    if check.returncode != 0:
        raise HaproxyFault(f"HAProxy refused the generated configuration {tmp}:\n{check.stdout}{check.stderr}")
    tmp.replace(paths.config)
    return paths


def haproxy_argv(paths: HaproxyPaths) -> list[str]:
    """HAProxy in the foreground (``-db``), so the fleet's supervisor owns its process."""
    return [haproxy_binary(), "-db", "-f", str(paths.config)]


# --- the runtime API ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ServerStat:
    """One row of ``show stat`` for a server slot."""

    backend: str
    name: str
    status: str  # UP, DOWN, DRAIN, MAINT, "DOWN 1/2" (rising), "UP 1/2" (falling), NOLB
    check_status: str
    sessions: int  # scur: requests on this server now
    queued: int  # qcur: requests waiting for it
    total: int  # stot
    port: int | None

    @property
    def up(self) -> bool:
        """Serving traffic now (UP, or UP and about to fall)."""
        return self.status == "UP" or self.status.startswith("UP ")

    @property
    def checked_up(self) -> bool:
        """HAProxy's health check passes (``rise`` times in a row), whether or not it takes traffic."""
        return self.up or self.status == "DRAIN"

    @property
    def in_flight(self) -> int:
        return self.sessions + self.queued


class RuntimeApi:
    """HAProxy's runtime API on its admin stats socket: one connection per command.

    ``RuntimeApi(HaproxyPaths.of(settings).socket).execute("show info")``.
    """

    def __init__(self, socket_path: Path, *, timeout: float = 5.0) -> None:
        self.socket_path, self.timeout = Path(socket_path), timeout

    def execute(self, command: str) -> str:
        """Send one command line; return HAProxy's answer. Raises :class:`HaproxyError` if it cannot be reached."""
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(self.timeout)
                sock.connect(str(self.socket_path))
                sock.sendall(command.encode() + b"\n")
                chunks = []
                while chunk := sock.recv(65536):
                    chunks.append(chunk)
        except OSError as exc:
            raise HaproxySilent(f"HAProxy's runtime API at {self.socket_path} did not answer ({exc}): is the fleet up?") from exc
        return b"".join(chunks).decode(errors="replace")

    def command(self, command: str) -> str:
        """Like :meth:`execute`, but an answer that reports a failure raises."""
        answer = self.execute(command)
        low = answer.lower()
        if any(marker in low for marker in ("unknown command", "no such", "require", "invalid", "not found", "cannot", "error")):
            raise HaproxyFault(f"HAProxy refused `{command}`: {answer.strip()}")
        return answer

    def alive(self) -> bool:
        try:
            return "Name: HAProxy" in self.execute("show info")
        except HaproxyError:
            return False

    def stats(self) -> list[dict[str, str]]:
        """``show stat`` as rows keyed by column name (frontends, backends and servers)."""
        text = self.execute("show stat")
        if not text.startswith("# "):
            raise HaproxyFault(f"HAProxy answered `show stat` with {text[:200]!r}")
        return list(csv.DictReader(io.StringIO(text[2:])))

    def servers(self, backend: str) -> dict[str, ServerStat]:
        """The server slots of ``backend`` by name."""
        return self.all_servers().get(backend, {})

    def all_servers(self) -> dict[str, dict[str, ServerStat]]:
        """Every backend's server slots by name, from one ``show stat``."""
        out: dict[str, dict[str, ServerStat]] = {}
        for row in self.stats():
            if row["svname"] in ("FRONTEND", "BACKEND"):
                continue
            addr = row.get("addr") or ""
            port = addr.rsplit(":", 1)[1] if ":" in addr else ""
            out.setdefault(row["pxname"], {})[row["svname"]] = ServerStat(
                backend=row["pxname"],
                name=row["svname"],
                status=row["status"],
                check_status=row.get("check_status", ""),
                sessions=int(row["scur"] or 0),
                queued=int(row["qcur"] or 0),
                total=int(row["stot"] or 0),
                port=int(port) if port.isdigit() else None,
            )
        return out

    def backend_in_flight(self, backend: str) -> int:
        """Requests the backend holds now: on its servers plus in its queue."""
        for row in self.stats():
            if row["pxname"] == backend and row["svname"] == "BACKEND":
                return int(row["scur"] or 0) + int(row["qcur"] or 0)
        raise HaproxyFault(f"HAProxy has no backend {backend!r}")

    def point(self, backend: str, server: str, host: str, port: int) -> None:
        """Aim a slot at a replica and let it in only once HAProxy's own health check has passed ``rise`` times.

        A slot leaving maintenance counts as UP before any check ran; entering ``drain`` with its health
        forced down instead keeps it out of rotation until the checks bring it up (status ``DRAIN``),
        and :meth:`admit` then puts it in.
        """
        self.command(f"set server {backend}/{server} addr {host} port {port}")
        # One line: no request can be dispatched to the slot between the two commands.
        self.command(f"set server {backend}/{server} state drain; set server {backend}/{server} health down")

    def admit(self, backend: str, server: str) -> None:
        self.command(f"set server {backend}/{server} state ready")

    def drain(self, backend: str, server: str) -> None:
        """No new requests (there is no persistence to honour); those in flight finish."""
        self.command(f"set server {backend}/{server} state drain")

    def maintain(self, backend: str, server: str) -> None:
        """Out of rotation and no health checks: the slot is free."""
        self.command(f"set server {backend}/{server} state maint")

    def get_map(self, map_file: Path, key: str) -> str | None:
        answer = self.execute(f"get map {_runtime_name(map_file)} {key}")
        if "found=yes" not in answer:
            if "found=no" in answer:
                return None
            raise HaproxyError(f"HAProxy has no map {map_file}: {answer.strip()}")
        for part in answer.split(", "):
            if part.startswith("value="):
                return part.split("=", 1)[1].strip().strip('"')
        raise HaproxyFault(f"cannot read the value of {key} in HAProxy's answer {answer.strip()!r}")

    def set_map(self, map_file: Path, key: str, value: str) -> None:
        self.command(f"set map {_runtime_name(map_file)} {key} {value}")


def _runtime_name(path: Path) -> str:
    """A file as the runtime API names it: spaces escaped (unescaped, it read a map "/tmp/My" and an argument)."""
    return str(path).replace(" ", "\\ ")
