"""Settings per environment (``local``, ``dev``, ``prod``); see :mod:`tenfold.config.settings`."""

from __future__ import annotations

from tenfold.config.settings import (
    ENVIRONMENTS,
    Env,
    Settings,
    build_settings,
    command_settings,
    get_settings,
    project_refusal,
    project_root,
    settings_refusal,
)

__all__ = ["ENVIRONMENTS", "Env", "Settings", "build_settings", "command_settings", "get_settings", "project_refusal",
           "project_root", "settings_refusal"]
