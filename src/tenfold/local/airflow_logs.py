"""Airflow's task-log server on loopback: one process serving the worker and the triggerer log ports.

``tenfold up`` runs it as the ``airflow-log-server`` component (``python -m tenfold.local.airflow_logs``,
in :func:`tenfold.local.airflow.airflow_env`). Airflow 3.3's scheduler and triggerer would each start
this server themselves, on all interfaces: ``airflow.utils.serve_logs`` hard-codes the host and no
setting changes it. Tenfold starts both with ``--skip-serve-logs`` and serves Airflow's own log app
(it checks the JWT the API server signs with ``[api] secret_key`` and reads ``[logging] base_log_folder``)
on ``settings.local.bind_host`` at ``airflow_log_port`` and ``airflow_trigger_log_port``, so the UI still
shows the log of a task while it runs or is deferred.
"""

from __future__ import annotations

import socket
import sys


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (SO_REUSEADDR, as uvicorn sets it)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def main() -> int:
    import uvicorn

    from tenfold.config import get_settings

    local = get_settings().local
    try:
        sockets = [bind(local.bind_host, port) for port in (local.airflow_log_port, local.airflow_trigger_log_port)]
    except OSError as exc:
        print(
            f"airflow-log-server: cannot listen on {local.bind_host} ports {local.airflow_log_port} and "
            f"{local.airflow_trigger_log_port} ({exc.strerror}): free them or choose others with "
            "TENFOLD_LOCAL__AIRFLOW_LOG_PORT / TENFOLD_LOCAL__AIRFLOW_TRIGGER_LOG_PORT",
            file=sys.stderr,
        )
        return 1
    from airflow.utils.serve_logs.log_server import get_app

    # log_config=None keeps Airflow's own logging set-up; no access log (it would only log polling).
    config = uvicorn.Config(get_app(), log_level="warning", log_config=None, access_log=False)
    uvicorn.Server(config).run(sockets=sockets)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
