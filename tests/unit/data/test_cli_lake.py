"""``tenfold ingest --lake-uri gs://...`` takes its publish lock where the lake's data goes.

Locally the settings name the GCS emulator, and a lake built from a bare URI took its lock client from them: a run
against a real bucket wrote its data there and took its lock on the emulator. No network here: the command runs with
ingest_month and the lock replaced by stand-ins that record which client the lock would have been taken with.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import google.auth
import pytest
from google.oauth2.credentials import Credentials

from tenfold.config import get_settings
from tenfold.data import cli
from tenfold.data.lake import Partition

CREDENTIALS = Credentials(token="stand-in")  # what google.auth.default finds on this machine


@pytest.fixture
def local_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """TENFOLD_ENV=local on a fresh home, as in a process of the local stack (STORAGE_EMULATOR_HOST set)."""
    monkeypatch.setenv("TENFOLD_ENV", "local")
    monkeypatch.setenv("TENFOLD_HOME", str(tmp_path / "home"))
    get_settings.cache_clear()
    settings = get_settings()
    assert settings.storage.emulator_host and not settings.storage.lake_uri.startswith("gs://")
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", settings.storage.emulator_host)
    monkeypatch.setattr(google.auth, "default", lambda *args, **kwargs: (CREDENTIALS, None))
    yield settings
    get_settings.cache_clear()


def _lock_clients(monkeypatch: pytest.MonkeyPatch, lake_uri: str) -> list[Any]:
    """Run `tenfold ingest --month 2013-01 --lake-uri <lake_uri>`; the clients its publish lock was taken with."""
    from tenfold.data import ingest, locks

    clients: list[Any] = []

    @contextlib.contextmanager
    def gcs_lock(client: Any, bucket: str, name: str, **_: Any) -> Iterator[Any]:
        clients.append(client)
        yield lambda: None

    def ingest_month(lake: Any, part: Partition, **_: Any) -> dict[str, Any]:
        with lake.exclusive("flights", part):
            return {}

    monkeypatch.setattr(locks, "gcs_lock", gcs_lock)
    monkeypatch.setattr(ingest, "ingest_month", ingest_month)
    cli.ingest(month="2013-01", to=None, lake_uri=lake_uri, run_id="r", replace=False)
    return clients


def test_a_gs_lake_uri_takes_its_publish_lock_on_google_cloud_not_the_emulator(local_env, monkeypatch) -> None:
    [client] = _lock_clients(monkeypatch, "gs://a-real-bucket/lake")
    assert local_env.storage.emulator_host not in client._connection.API_BASE_URL
    assert client._connection.API_BASE_URL == "https://storage.googleapis.com"
    assert client._credentials is CREDENTIALS  # this machine's, not anonymous (STORAGE_EMULATOR_HOST is set)
    assert client.project == local_env.project_id


def test_a_gs_lake_uri_naming_an_endpoint_takes_its_lock_there(local_env, monkeypatch) -> None:
    """Where the URI points pyarrow elsewhere (``endpoint_override``), the lock goes there too."""
    [client] = _lock_clients(monkeypatch, "gs://bucket/lake?scheme=http&endpoint_override=127.0.0.1:1")
    assert client._connection.API_BASE_URL == "http://127.0.0.1:1"


@pytest.mark.parametrize(("uri", "needs"), [
    ("gs://anonymous@bucket/lake?scheme=http&endpoint_override=127.0.0.1:4443", False),  # pyarrow's anonymous form
    ("gs://bucket/lake", True),
])
def test_an_anonymous_gs_lake_uri_asks_for_no_credentials(local_env: Any, uri: str, needs: bool) -> None:
    """The lock's client read gs://anonymous@... as anonymous, but the credentials check looked only for an
    ?anonymous=true query (which pyarrow refuses), so an anonymous run was refused on a machine without credentials."""
    assert cli._uses_credentials(local_env, uri) is needs
