"""Carry a local :class:`Settings` across a process boundary as environment variables.

``settings_env(s)`` gives the variables under which ``get_settings()`` in a child process (an Airflow
task, spark-submit, torchrun) rebuilds the same local settings as ``s``: ``TENFOLD_ENV``,
``TENFOLD_HOME``, ``TENFOLD_PROJECT_ID``, ``TENFOLD_WORKLOAD``, the ``TENFOLD_ALERT_*`` hooks and
``TENFOLD_LOCAL__<FIELD>`` for every local field (see :class:`tenfold.config.settings.EnvironSettings`),
plus the official emulator variables (``STORAGE_EMULATOR_HOST``, ``PUBSUB_EMULATOR_HOST``) that the
Google clients read. ``settings_from_env(env)`` is what such a child gets, and ``local_settings(home,
**fields)`` is what tests use: a Settings for a temporary home and non-default ports. Both build
from an explicit mapping; neither reads nor changes this process's environment.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tenfold.config import Settings, build_settings
from tenfold.config.settings import (
    LOCAL_ENV_PREFIX,
    LocalSettings,
    tables_and_pipelines_env,
    training_and_serving_env,
)

# The alert hooks' variables (the webhook URL, the mail relay, the alert file), as alert_hook_env sets them.
ALERT_HOOK_VARIABLES = ("TENFOLD_ALERT_WEBHOOK", "TENFOLD_ALERT_SMTP_HOST", "TENFOLD_ALERT_FILE")


def alert_hook_env(settings: Settings) -> dict[str, str]:
    """The alert hooks' variables for ``settings`` (part of :func:`settings_env`). Empty means unset (build_settings
    ignores empty values): set over a parent's environment, an outer hook never leaks into the child."""
    mo = settings.monitoring
    # The webhook's real URL (a SecretStr in the settings): the child rebuilds its settings from this variable.
    webhook = mo.alert_webhook_url.get_secret_value() if mo.alert_webhook_url is not None else ""
    values = (webhook, mo.alert_smtp_host or "", str(mo.alert_file) if mo.alert_file else "")
    return dict(zip(ALERT_HOOK_VARIABLES, values, strict=True))


def without_alert_hook_variables(env: Mapping[str, str]) -> dict[str, str]:
    """``env`` less the alert hooks' variables: for a child that never alerts (spark-submit and its Python workers,
    torchrun and its ranks, which run a workload's code), started from a task whose environment holds them."""
    return {k: v for k, v in env.items() if k not in ALERT_HOOK_VARIABLES}


def without_alert_hooks(settings: Settings) -> Settings:
    """``settings`` with no alert hook (webhook, SMTP relay, alert file): for the processes that never alert (the
    serving fleet, the feedback sink, the inference workers), so that a webhook URL, which is a secret, is neither in their environment
    (``settings_env`` then blanks the hooks, overriding the parent's variables) nor in a file they read."""
    mo = settings.monitoring.model_copy(update={"alert_webhook_url": None, "alert_smtp_host": None, "alert_file": None})
    return settings.model_copy(update={"monitoring": mo})


def settings_env(settings: Settings) -> dict[str, str]:
    """Environment variables that make ``get_settings()`` in a subprocess equal ``settings``."""
    if not settings.is_local:
        raise ValueError(f"settings_env is for the local environment, not {settings.env!r}")
    env = {
        "TENFOLD_ENV": settings.env,
        "TENFOLD_HOME": str(settings.local.home),
        "TENFOLD_PROJECT_ID": settings.project_id,
        "GOOGLE_CLOUD_PROJECT": settings.project_id,
        "TENFOLD_WORKLOAD": settings.workload,
        "TENFOLD_ALERT_EMAIL": settings.monitoring.notification_email,
        **alert_hook_env(settings),
    }
    for field in LocalSettings.model_fields:
        if field != "home":
            env[LOCAL_ENV_PREFIX + field.upper()] = str(getattr(settings.local, field))
    env.update(training_and_serving_env(settings))
    env.update(tables_and_pipelines_env(settings))
    if settings.storage.emulator_host:
        env["STORAGE_EMULATOR_HOST"] = settings.storage.emulator_host
    if settings.messaging.emulator_host:
        env["PUBSUB_EMULATOR_HOST"] = settings.messaging.emulator_host
    return env


def settings_from_env(env: Mapping[str, str]) -> Settings:
    """The local Settings a process with environment ``env`` would get from ``get_settings()``."""
    return build_settings("local", env)


def local_settings(
    home: Path, *, project_id: str | None = None, environ: Mapping[str, str] | None = None, **local_fields: Any
) -> Settings:
    """Local settings rooted at ``home`` with some local fields replaced, e.g. ``gcs_port=14443``.

    ``environ`` (default: none) supplies other ``TENFOLD_*`` variables, as a child process's environment would.
    """
    values = dict(environ or {})
    values["TENFOLD_HOME"] = str(Path(home).resolve())
    if project_id:
        values["TENFOLD_PROJECT_ID"] = project_id
    values.update({LOCAL_ENV_PREFIX + k.upper(): str(v) for k, v in local_fields.items()})
    return settings_from_env(values)
