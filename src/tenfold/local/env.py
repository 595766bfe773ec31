"""Carry a local :class:`Settings` across a process boundary as environment variables.

``settings_env(s)`` gives the variables under which ``get_settings()`` in a child process (an Airflow
task, spark-submit, torchrun) rebuilds the same local settings as ``s``: ``TENFOLD_ENV``,
``TENFOLD_HOME``, ``TENFOLD_PROJECT_ID``, ``TENFOLD_ALERT_EMAIL`` and ``TENFOLD_LOCAL__<FIELD>`` for every local field (see
:func:`tenfold.config.settings.local_env_overrides`), plus the official emulator variables
(``STORAGE_EMULATOR_HOST``, ``PUBSUB_EMULATOR_HOST``) that the Google clients read.
``local_settings(home, **fields)`` is the inverse used by tests: a Settings for a temporary home and
non-default ports.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tenfold.config import Settings, build_settings
from tenfold.config.settings import LOCAL_ENV_PREFIX, LocalSettings

_ENV_LOCK = threading.Lock()


def settings_env(settings: Settings) -> dict[str, str]:
    """Environment variables that make ``get_settings()`` in a subprocess equal ``settings``."""
    if not settings.is_local:
        raise ValueError(f"settings_env is for the local environment, not {settings.env!r}")
    env = {
        "TENFOLD_ENV": settings.env,
        "TENFOLD_HOME": str(settings.local.home),
        "TENFOLD_PROJECT_ID": settings.project_id,
        "GOOGLE_CLOUD_PROJECT": settings.project_id,
        "TENFOLD_ALERT_EMAIL": settings.monitoring.notification_email,
    }
    for field in LocalSettings.model_fields:
        if field != "home":
            env[LOCAL_ENV_PREFIX + field.upper()] = str(getattr(settings.local, field))
    if settings.storage.emulator_host:
        env["STORAGE_EMULATOR_HOST"] = settings.storage.emulator_host
    if settings.messaging.emulator_host:
        env["PUBSUB_EMULATOR_HOST"] = settings.messaging.emulator_host
    return env


def _is_settings_var(key: str) -> bool:
    # Every TENFOLD_* variable may feed build_settings (home, project, ports, alert hooks...).
    return key.startswith("TENFOLD_")


@contextmanager
def _environ(values: Mapping[str, str]) -> Iterator[None]:
    """Temporarily replace the variables build_settings reads with those in ``values``."""
    with _ENV_LOCK:
        saved = {k: v for k, v in os.environ.items() if _is_settings_var(k)}
        for key in saved:
            del os.environ[key]
        os.environ.update({k: v for k, v in values.items() if _is_settings_var(k)})
        try:
            yield
        finally:
            for key in [k for k in os.environ if _is_settings_var(k)]:
                del os.environ[key]
            os.environ.update(saved)


def settings_from_env(env: Mapping[str, str]) -> Settings:
    """The local Settings a process with environment ``env`` would get from ``get_settings()``."""
    with _environ(env):
        return build_settings("local")


def local_settings(home: Path, *, project_id: str | None = None, **local_fields: Any) -> Settings:
    """Local settings rooted at ``home`` with some local fields replaced, e.g. ``gcs_port=14443``.

    Other ``TENFOLD_*`` variables of this process still apply, as they would in a child process.
    """
    values = {k: v for k, v in os.environ.items() if _is_settings_var(k)}
    values["TENFOLD_HOME"] = str(Path(home).resolve())
    if project_id:
        values["TENFOLD_PROJECT_ID"] = project_id
    values.update({LOCAL_ENV_PREFIX + k.upper(): str(v) for k, v in local_fields.items()})
    return settings_from_env(values)
