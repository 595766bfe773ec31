"""The thin ASGI entry of the serving image, for ASGI servers other than the image's own CMD.

The image runs ``python -m tenfold.serving`` (uvicorn, one worker, graceful drain, exit 1 on a failed
load). This module exposes the same app for a server of your choice, configured by the same variables
(``TENFOLD_ENV`` and the settings' ``TENFOLD_*``, ``TENFOLD_SERVING_TRACK``, ``TENFOLD_SERVING_MODEL``)::

    uvicorn --app-dir serving_image asgi:app --host 127.0.0.1 --port 8101

A model that cannot be loaded leaves this app failed (``/healthz`` and ``/readyz`` answer 503, nothing is
served), so the container's HEALTHCHECK or the platform's liveness probe replaces it.
"""

from __future__ import annotations

import os
import sys

from tenfold.config import get_settings, settings_refusal
from tenfold.serving.app import create_app
from tenfold.serving.auth import TokenMissing
from tenfold.serving.replica import ARM_ENV, MODEL_ENV

# As ``python -m tenfold.serving`` does: settings that do not parse, or no serving token, end the server that imports
# this module with one line saying what to do (exit 2 and 1, as the replica's), never a traceback.
try:
    _settings = get_settings()
except ValueError as exc:  # a TENFOLD_* variable that does not parse or names no setting
    print(settings_refusal(exc), file=sys.stderr)
    raise SystemExit(2) from None
try:
    app = create_app(_settings, arm=os.environ.get(ARM_ENV) or "stable", model_ref=os.environ.get(MODEL_ENV) or None)
except TokenMissing as exc:
    print(f"tenfold serving: {exc}", file=sys.stderr)
    raise SystemExit(1) from None
