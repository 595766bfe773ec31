"""Shared fixtures: real local services on temporary homes and free ports.

Session-scoped and lazy: a process starts only when a test first asks for its fixture, and stops at
the end of the session. They never touch a running ``make up`` (other home, other ports).

* ``gcs_emulator`` -> endpoint URL of fake-gcs-server (e.g. ``http://127.0.0.1:40123``)
* ``pubsub_emulator`` -> ``host:port`` of Google's Pub/Sub emulator
* ``local_settings`` -> a local ``Settings`` whose home (and lake) is a temp dir and whose emulator
  endpoints are the two above; buckets and the Pub/Sub topology are provisioned. The lake is shared
  by the whole session: write under partitions/prefixes of your own.
* ``airflow_env`` -> the environment for ``airflow dags test`` subprocesses: temp AIRFLOW_HOME with a
  migrated SQLite DB, the project's dags/, the emulators, and TENFOLD_* variables under which
  ``get_settings()`` in the subprocess equals ``local_settings``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tenfold.config import Settings
from tenfold.local import LocalPlatformError, free_port, start_service, stop_service
from tenfold.local import local_settings as _local_settings
from tenfold.local.services import gcs_endpoint


@pytest.fixture(scope="session")
def tenfold_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The temporary local home (lake, emulator data, logs under run/) of this test session."""
    return tmp_path_factory.mktemp("tenfold-home")


def _start_on_free_port(home: Path, name: str, port_field: str) -> Settings:
    last: Exception | None = None
    for _ in range(3):  # a free port can be taken between choosing and binding it: try another
        settings = _local_settings(home, **{port_field: free_port()})
        try:
            start_service(settings, name, tie_to_this_process=True)  # stopped even if pytest is killed
            return settings
        except LocalPlatformError as exc:
            last = exc
            if "already in use" not in str(exc):
                break
    pytest.fail(f"could not start the {name} emulator for the tests: {last}")


@pytest.fixture(scope="session")
def gcs_emulator(tenfold_home: Path) -> Iterator[str]:
    settings = _start_on_free_port(tenfold_home, "gcs", "gcs_port")
    try:
        yield gcs_endpoint(settings)
    finally:
        stop_service(settings, "gcs")


@pytest.fixture(scope="session")
def pubsub_emulator(tenfold_home: Path) -> Iterator[str]:
    settings = _start_on_free_port(tenfold_home, "pubsub", "pubsub_port")
    try:
        yield settings.messaging.emulator_host or ""
    finally:
        stop_service(settings, "pubsub")


@pytest.fixture(scope="session")
def local_settings(tenfold_home: Path, gcs_emulator: str, pubsub_emulator: str) -> Settings:
    from tenfold.local import provision

    settings = _local_settings(
        tenfold_home,
        gcs_port=int(gcs_emulator.rsplit(":", 1)[1]),
        pubsub_port=int(pubsub_emulator.rsplit(":", 1)[1]),
        # Never bound by the fixtures; a distinct port keeps Airflow URLs in this session apart from `make up`.
        airflow_port=free_port(),
    )
    provision(settings)
    return settings


@pytest.fixture(scope="module")
def storage_client(gcs_emulator: str) -> Any:
    """A real storage client on the GCS emulator, with the dev artifacts bucket (where run markers live)."""
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    from tenfold.config import get_settings

    client = storage.Client(project="test", credentials=AnonymousCredentials(), client_options={"api_endpoint": gcs_emulator})
    bucket = get_settings("dev").storage.artifacts_bucket
    if client.lookup_bucket(bucket) is None:
        client.create_bucket(bucket)
    return client


@pytest.fixture(scope="session")
def airflow_env(local_settings: Settings) -> dict[str, str]:
    from tenfold.local import airflow_env as build_env
    from tenfold.local import ensure_airflow_db

    env = build_env(local_settings)
    ensure_airflow_db(env)
    return env
