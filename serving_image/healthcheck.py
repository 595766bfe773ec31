"""The image's HEALTHCHECK: exit 0 when this container's replica answers its liveness path, else 1.

Run (what the Dockerfile's HEALTHCHECK runs): ``python /opt/tenfold/healthcheck.py``. It asks the port the
replica listens on (``TENFOLD_SERVING_PORT``, else the settings' default, as ``python -m tenfold.serving``
chooses it) on the address it binds (``TENFOLD_SERVING_HOST``, else loopback), at ``settings.serving.health_path``.
"""

from __future__ import annotations

import os
import sys
import urllib.request


def main() -> int:
    from tenfold.config import get_settings
    from tenfold.serving.replica import default_port

    settings = get_settings()
    host = os.environ.get("TENFOLD_SERVING_HOST") or settings.local.bind_host  # where the replica listens
    try:
        port = default_port(settings, os.environ)
    except ValueError as exc:  # the replica refused the same variable at its start
        print(f"unhealthy: {exc}", file=sys.stderr)
        return 1
    url = f"http://{host}:{port}{settings.serving.health_path}"
    try:
        with urllib.request.urlopen(url, timeout=3) as resp:
            return 0 if resp.status == 200 else 1
    except OSError as exc:  # refused, timed out, or an HTTP error status (HTTPError is an OSError)
        print(f"unhealthy: {url}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
