"""The local platform: Airflow's components, the Pub/Sub emulator and a GCS emulator, all on loopback.

Run ``tenfold up`` / ``tenfold status`` / ``tenfold down`` (or ``make up`` / ``make down``). The same
process code starts the emulators for the test fixtures in ``tests/conftest.py``.
"""

from __future__ import annotations

from tenfold.local.airflow import admin_password, airflow_env, airflow_url, ensure_admin_password, ensure_airflow_db
from tenfold.local.env import local_settings, settings_env, settings_from_env
from tenfold.local.process import LocalPlatformError, free_port, free_ports, port_in_use
from tenfold.local.stack import down, ensure_buckets, provision, start_service, status, stop_service, up

__all__ = [
    "LocalPlatformError",
    "admin_password",
    "airflow_env",
    "airflow_url",
    "down",
    "ensure_admin_password",
    "ensure_airflow_db",
    "ensure_buckets",
    "free_port",
    "free_ports",
    "local_settings",
    "port_in_use",
    "provision",
    "settings_env",
    "settings_from_env",
    "start_service",
    "status",
    "stop_service",
    "up",
]
