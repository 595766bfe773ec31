"""One model-server replica process: uvicorn with one worker around :func:`tenfold.serving.app.create_app`.

Run::

    python -m tenfold.serving --host 127.0.0.1 --port 9200 --arm stable --model champion

Every flag has a default: ``--host`` is ``TENFOLD_SERVING_HOST`` or ``settings.local.bind_host``
(loopback; the cloud fleet's startup script sets ``TENFOLD_SERVING_HOST`` to the VM's internal address, where
the load balancer reaches it; in the local environment only an IPv4 loopback address is accepted), ``--port``
is ``TENFOLD_SERVING_PORT`` or the first replica port locally (``settings.local.replica_base_port``) and
``settings.serving.port`` in the cloud, ``--arm`` is ``TENFOLD_SERVING_TRACK`` (what the cloud fleet's
startup script sets) or ``stable``, ``--model`` is an alias or version id, ``TENFOLD_SERVING_MODEL`` or
``settings.serving.server.model_ref``. Settings come from ``get_settings()`` (``TENFOLD_ENV`` and the
``TENFOLD_*`` variables). The local fleet (``tenfold serve``) and the image's CMD run exactly this command.

Exit status: 0 after a graceful drain (SIGTERM or SIGINT: readiness goes false at once, requests in flight
get ``serving.server.drain_timeout_s`` to finish), 1 when the model or its lookups cannot be loaded (the
message says why; the replica never serves) or the address cannot be bound (the port is taken), 2 for bad arguments,
settings or a workload that cannot be used (one line naming it).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

import uvicorn

from tenfold.rollout.split import ARMS, STABLE
from tenfold.serving.faults import Fault

if TYPE_CHECKING:
    from tenfold.config import Settings
    from tenfold.serving.app import ReplicaState
    from tenfold.serving.metrics import ServerMetrics

log = logging.getLogger("tenfold.serving")

HOST_ENV, PORT_ENV, ARM_ENV, MODEL_ENV = "TENFOLD_SERVING_HOST", "TENFOLD_SERVING_PORT", "TENFOLD_SERVING_TRACK", "TENFOLD_SERVING_MODEL"
# Where the local fleet asks each replica to leave, as it exits, what it counted that its /metrics took with it.
ENDED_DIR_ENV = "TENFOLD_SERVING_ENDED_DIR"


def track_refusal(value: str) -> str | None:
    """The one line refusing ``$TENFOLD_SERVING_TRACK`` when it names no A/B arm; None when it names one. (The
    replica's, and the image's ASGI entry's.)"""
    if value in ARMS:
        return None
    return f"${ARM_ENV}={value!r} is not an A/B arm (one of {', '.join(ARMS)}): fix it, or unset it to serve {STABLE}"


def _settings_port(settings: Settings) -> int:
    """The port settings give a replica: the first replica port locally, ``settings.serving.port`` in the cloud."""
    return settings.local.replica_base_port if settings.is_local else settings.serving.port


def default_port(settings: Settings, environ: Mapping[str, str]) -> int:
    """``TENFOLD_SERVING_PORT``, else :func:`_settings_port`. ValueError naming the variable when it is not a TCP
    port."""
    if value := environ.get(PORT_ENV):
        try:
            port = int(value)
        except ValueError:
            port = 0
        if not 0 < port < 65536:
            raise ValueError(f"${PORT_ENV}={value!r} is not a TCP port (1-65535): fix or unset it")
        return port
    return _settings_port(settings)


def parse_args(argv: Sequence[str] | None, settings: Settings, environ: Mapping[str, str]) -> argparse.Namespace:
    """The flags (see the module docstring), defaults from ``environ`` and ``settings``."""
    fallback = _settings_port(settings)
    parser = argparse.ArgumentParser(prog="python -m tenfold.serving", description=(__doc__ or "").split("\n\n")[0])
    # Its default is read after parsing too, so that a refused address names where it came from.
    parser.add_argument("--host", default=None,
                        help=f"address to bind (default ${HOST_ENV} or settings.local.bind_host, loopback)")
    # Its default is read after parsing: a bad $TENFOLD_SERVING_PORT is refused in one line, and not at all under --port.
    parser.add_argument("--port", type=int, default=None, help=f"port to bind (default ${PORT_ENV} or {fallback})")
    parser.add_argument("--arm", choices=ARMS, default=environ.get(ARM_ENV) or STABLE,
                        help=f"the A/B arm this replica serves (default ${ARM_ENV} or {STABLE})")
    parser.add_argument("--model", default=environ.get(MODEL_ENV) or settings.serving.server.model_ref,
                        help=f"registry alias or version id to serve (default ${MODEL_ENV} or "
                             "settings.serving.server.model_ref)")
    parser.add_argument("--fault", default="", help="inject a fault (tenfold.serving.faults): "
                        "delay_ms=<ms> and/or error_rate=<0..1>, comma-separated; default none")
    parser.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    args = parser.parse_args(argv)
    if args.port is None:
        try:
            args.port = default_port(settings, environ)
        except ValueError as exc:
            parser.error(str(exc))
    try:
        args.fault = Fault.parse(args.fault)
    except ValueError as exc:
        parser.error(str(exc))
    if (refusal := track_refusal(args.arm)) is not None:  # from the variable: argparse checked the flag's choices
        parser.error(refusal)
    if not 0 < args.port < 65536:
        parser.error(f"--port {args.port} is not a TCP port")
    source = "--host"
    if args.host is None:  # the settings' bind host is loopback already: a refusal names the variable
        source, args.host = f"${HOST_ENV}", environ.get(HOST_ENV) or settings.local.bind_host
    if settings.is_local:
        _refuse_open_host(parser, args.host, source)
    return args


def _refuse_open_host(parser: argparse.ArgumentParser, host: str, source: str) -> None:
    """Locally a replica serves /metrics, /docs, /openapi.json and the detailed /readyz without a login (they are
    for ``tenfold serve status`` on this machine): on any address but loopback they were open to the whole network.
    The test is the settings' own for ``local.bind_host``; in the cloud the load balancer asks for the login, and
    the VM's internal address is what the startup script sets."""
    from tenfold.config.settings import LocalSettings

    try:
        LocalSettings._loopback(host)
    except ValueError:
        parser.error(f"{source} {host!r} is not an IPv4 loopback address (127.x.x.x): a local replica's /metrics, /docs and "
                     "detailed /readyz have no login, so it listens on loopback only; use a loopback address such as "
                     "127.0.0.1, or run with TENFOLD_ENV=dev or prod behind the load balancer")


def main(argv: Sequence[str] | None = None) -> int:
    from tenfold.config import get_settings, settings_refusal

    try:
        settings = get_settings()
    except ValueError as exc:  # a TENFOLD_* variable that does not parse or names no setting: one line, exit 2
        print(settings_refusal(exc), file=sys.stderr)
        return 2
    args = parse_args(argv, settings, os.environ)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return serve(settings, host=args.host, port=args.port, arm=args.arm, model_ref=args.model, log_level=args.log_level,
                 fault=args.fault, ended_dir=os.environ.get(ENDED_DIR_ENV) or None)


def serve(settings: Settings, *, host: str, port: int, arm: str, model_ref: str, log_level: str = "info",
          fault: Fault | None = None, ended_dir: str | None = None) -> int:
    """Run one replica until SIGTERM/SIGINT (exit 0 after draining), a failed load or a failed bind (exit 1); a
    workload that cannot be used or an arm that is none (exit 2) ends it before it starts, in one line. ``ended_dir``:
    where a replica that served leaves :func:`record_ended` as it exits."""
    from tenfold.serving.app import UnknownArm, create_app
    from tenfold.serving.auth import TokenMissing
    from tenfold.workloads import WorkloadError

    fatal: list[str] = []
    server_box: list[uvicorn.Server] = []

    def on_fatal(message: str) -> None:
        fatal.append(message)
        if server_box:
            server_box[0].should_exit = True

    try:
        app = create_app(settings, arm=arm, model_ref=model_ref, on_fatal=on_fatal, fault=fault)
    except TokenMissing as exc:
        print(f"tenfold serving: {exc}", file=sys.stderr)
        return 1
    except (WorkloadError, UnknownArm) as exc:  # settings.workload ($TENFOLD_WORKLOAD), or the arm asked for
        print(f"tenfold serving: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    state: ReplicaState = app.state.replica
    config = uvicorn.Config(
        app, host=host, port=port, workers=1, lifespan="on", log_level=log_level, access_log=False,
        timeout_graceful_shutdown=int(max(1, round(settings.serving.server.drain_timeout_s))),
        timeout_keep_alive=int(settings.serving.server.keep_alive_s),
        server_header=False,
    )
    server = _DrainingServer(config, state)
    server_box.append(server)
    # uvicorn re-raises the signal it drained for once it is done; with these no-op handlers in place
    # that ends in a normal return, so a drained replica exits 0 instead of dying by its own signal.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _ignore)
    log.info("replica starting: arm %s, model %s, http://%s:%d%s", arm, model_ref, host, port,
             f", INJECTED FAULT {fault}" if fault is not None and fault.active else "")
    try:
        server.run()
    except SystemExit:
        # uvicorn exits with its own status (3) when it cannot bind, which is none of the documented ones and says
        # nothing of the port: a server that never started gets the line below and exit 1 instead.
        if server.started:
            raise
    if not server.started:  # before a failed load's message: the load may fail too while startup unwinds (logged)
        print(f"tenfold serving: could not start on {host}:{port} (see the log above; is the port taken?)", file=sys.stderr)
        return 1
    if ended_dir:
        record_ended(ended_dir, app.state.metrics)
    if fatal:
        print(f"tenfold serving: not serving: {fatal[0]}", file=sys.stderr)
        return 1
    log.info("replica stopped after draining")
    return 0


def record_ended(directory: str, metrics: ServerMetrics) -> Path | None:
    """Leave in ``directory`` what this replica counted that its /metrics takes with it as it exits: the monitoring
    samples it dropped, by reason, as ``<pid>-<ns>.json`` ({"pid", "ended_at" (epoch s), "dropped"}), written
    atomically after the drain and the publisher's close (whose flush may drop more). ``make demo`` adds them to the
    live replicas' counts: a rollout that replaced replicas within a month took their counts with it, and the demo
    then waited for predictions that were never published. A failed write is logged; the replica still exits."""
    from tenfold.fsio import atomic_write

    ended = time.time()
    path = Path(directory) / f"{os.getpid()}-{time.time_ns()}.json"
    body = {"pid": os.getpid(), "ended_at": ended, "dropped": metrics.dropped_by_reason()}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, json.dumps(body, sort_keys=True).encode())
    except OSError as exc:
        log.warning("could not leave what this replica dropped in %s (%s)", directory, exc)
        return None
    return path


def _ignore(sig: int, frame: FrameType | None) -> None:
    return None


class _DrainingServer(uvicorn.Server):
    """uvicorn, with readiness going false the moment a stop signal arrives."""

    def __init__(self, config: uvicorn.Config, state: ReplicaState) -> None:
        super().__init__(config)
        self._state = state

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if not self.should_exit:
            log.info("signal %d: draining (readiness false, finishing requests in flight)", sig)
        # The handler runs between two bytecodes of the event loop's thread, which may be inside a metrics update
        # holding its lock (every predict sets the queue depth): setting the ready gauge here waited for that lock
        # for ever, and the replica hung. Readiness goes false now; the loop sets the gauge.
        self._state.mark_draining()
        try:
            asyncio.get_running_loop().call_soon_threadsafe(self._state.begin_drain)
        except RuntimeError:  # no loop runs yet (nothing holds a metrics lock)
            self._state.begin_drain()
        super().handle_exit(sig, frame)
