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

from tenfold.config import get_settings
from tenfold.serving.app import create_app
from tenfold.serving.replica import ARM_ENV, MODEL_ENV

app = create_app(get_settings(), arm=os.environ.get(ARM_ENV) or "stable", model_ref=os.environ.get(MODEL_ENV) or None)
