"""The thin ASGI entry of the serving image, for ASGI servers other than the image's own CMD.

The image runs ``python -m tenfold.serving`` (uvicorn, one worker, graceful drain, exit 1 on a failed
load). This module exposes the same app for a server of your choice, configured by the same variables
(``TENFOLD_ENV`` and the settings' ``TENFOLD_*``, ``TENFOLD_SERVING_TRACK``, ``TENFOLD_SERVING_MODEL``)::

    uvicorn --app-dir serving_image asgi:app --host 127.0.0.1 --port 8101

A model that cannot be loaded leaves this app failed (``/healthz`` and ``/readyz`` answer 503, nothing is
served), so the container's HEALTHCHECK or the platform's liveness probe replaces it.

Locally (no ``TENFOLD_ENV``) the app's /metrics, /docs, /openapi.json and detailed /readyz need no login, and the ASGI
server's ``--host`` is not this module's to check: the app answers 403 to any request that did not arrive on a
loopback address (:class:`LoopbackOnly`), as ``python -m tenfold.serving`` refuses such a host outright.
"""

from __future__ import annotations

import ipaddress
import json
import os
import sys
from typing import Any

from tenfold.config import get_settings, settings_refusal
from tenfold.serving.app import UnknownArm, create_app
from tenfold.serving.auth import TokenMissing
from tenfold.serving.replica import ARM_ENV, MODEL_ENV, track_refusal
from tenfold.workloads import WorkloadError

# Starlette's TestClient runs the app in this process, with no socket, and names its server "testserver".
_IN_PROCESS_SERVER = "testserver"


class LoopbackOnly:
    """ASGI middleware: a request that reached the server on an address other than loopback gets a 403 and one line
    saying what to do; the app never sees it.

    ``scope["server"]`` is the address of the socket the request came in on (uvicorn, hypercorn and daphne read it
    from the socket, never from the request's headers), so a server on 0.0.0.0 still serves this machine through
    127.0.0.1 and refuses everyone else. It is missing or None where no TCP socket is involved: a Unix socket (which
    only the local users its file mode lets in can reach) or an in-process test transport; those are allowed, and so
    is Starlette's TestClient's "testserver". Any other name is refused: a TCP server always names an address.
    """

    def __init__(self, app: Any) -> None:
        self.app = app

    @staticmethod
    def allows(server: Any) -> bool:
        if not server:
            return True
        host = str(server[0])
        if host == _IN_PROCESS_SERVER:
            return True
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return False
        mapped = getattr(address, "ipv4_mapped", None)  # ::ffff:127.0.0.1 on a dual-stack socket
        return bool(address.is_loopback or (mapped is not None and mapped.is_loopback))

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] not in ("http", "websocket") or self.allows(scope.get("server")):
            await self.app(scope, receive, send)
            return
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        body = json.dumps({"error": "forbidden", "message": REFUSAL, "field": None, "errors": []}).encode()
        await send({"type": "http.response.start", "status": 403,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


REFUSAL = ("the local model server serves loopback only (its /metrics, /docs and detailed /readyz have no login): "
           "connect through 127.0.0.1, or run with TENFOLD_ENV=dev or prod behind the load balancer")

# As ``python -m tenfold.serving`` does: settings that do not parse, an arm that is none, a workload that cannot be
# used, or no serving token, end the server that imports this module with one line saying what to do (exit 2, 2, 2 and
# 1, as the replica's), never a traceback.
try:
    _settings = get_settings()
except ValueError as exc:  # a TENFOLD_* variable that does not parse or names no setting
    print(settings_refusal(exc), file=sys.stderr)
    raise SystemExit(2) from None
_arm = os.environ.get(ARM_ENV) or "stable"
if (_refusal := track_refusal(_arm)) is not None:
    print(f"tenfold serving: {_refusal}", file=sys.stderr)
    raise SystemExit(2)
try:
    app = create_app(_settings, arm=_arm, model_ref=os.environ.get(MODEL_ENV) or None)
except TokenMissing as exc:
    print(f"tenfold serving: {exc}", file=sys.stderr)
    raise SystemExit(1) from None
except (WorkloadError, UnknownArm) as exc:  # settings.workload ($TENFOLD_WORKLOAD)
    print(f"tenfold serving: {' '.join(str(exc).split())}", file=sys.stderr)
    raise SystemExit(2) from None
if _settings.is_local:  # in the cloud the load balancer asks for the login (IAP or the token) on every path
    app = LoopbackOnly(app)
