"""A lake opened from its URI alone (``Lake(args.lake_uri, args.layout)`` in the Dataproc batch, ``Lake(cfg.lake_uri)``
in training) checks its inputs' CRC32C and takes its publish lock on the store its URI names.

It took its storage client from the settings of the process's environment: a Dataproc batch is given no TENFOLD_ENV,
so that was the local settings' client for a GCS emulator on 127.0.0.1:4443, where nothing listens, and every cloud
feature build failed before Spark started (a RetryError traceback after the client's two minutes of retries). Here the
settings' emulator is a port nothing listens on, the lake is on the session's GCS emulator as its URI says, and the
storage client's retries give up after 2 s (so that the old behaviour fails in seconds, not minutes).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import google.auth
import pyarrow as pa
import pytest
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage
from google.cloud.storage.retry import DEFAULT_RETRY
from google.oauth2.credentials import Credentials

from tenfold.config import Settings, get_settings
from tenfold.config.settings import LakeLayout
from tenfold.data.lake import Lake, Partition
from tenfold.data.parquet import write_table
from tenfold.features import job
from tenfold.local import free_port
from tenfold.workloads.flights import WORKLOAD

JAN, FEB = Partition(2013, 1), Partition(2013, 2)
SOURCES = WORKLOAD.sources
ROWS = pa.table({"id": pa.array([1, 2, 3], pa.int64())})

pytestmark = pytest.mark.integration


@pytest.fixture
def dataproc_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Settings]:
    """This process's settings as the Dataproc batch gets them (no TENFOLD_ENV: local), with their GCS emulator on a
    loopback port nothing listens on; the storage client's retries run out after 2 s."""
    for name in ("TENFOLD_ENV", "STORAGE_EMULATOR_HOST"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("TENFOLD_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("TENFOLD_LOCAL__GCS_PORT", str(free_port()))
    monkeypatch.setattr(DEFAULT_RETRY, "_timeout", 2.0)
    monkeypatch.setattr(DEFAULT_RETRY, "_deadline", 2.0)
    get_settings.cache_clear()
    settings = get_settings()
    assert settings.env == "local" and settings.storage.emulator_host
    yield settings
    get_settings.cache_clear()


def _client(endpoint: str) -> storage.Client:
    return storage.Client(project="test", credentials=AnonymousCredentials(),  # type: ignore[no-untyped-call]
                          client_options={"api_endpoint": endpoint})


@pytest.fixture
def emulated_lake(gcs_emulator: str) -> str:
    """The URI of a lake on the session's GCS emulator (a bucket of its own), as a job is given it: anonymous, with
    the emulator as ``endpoint_override``. Its flights of January and February and the other month inputs of
    February are published (with a client on the emulator given explicitly, as the fix is not what is tested here)."""
    bucket = f"lake-client-{uuid.uuid4().hex[:10]}"
    _client(gcs_emulator).create_bucket(bucket)
    uri = f"gs://anonymous@{bucket}/lake?scheme=http&endpoint_override={gcs_emulator.removeprefix('http://')}"
    lake = Lake(uri, gcs_client=lambda: _client(gcs_emulator))
    for table, part in [("flights", JAN), *((t, FEB) for t in SOURCES.month_inputs)]:
        staged = lake.staging_path(table, part, "ingest")
        write_table(ROWS, lake.fs, f"{staged}/part-00000.parquet")
        lake.publish(table, part, lake.uri_of(staged), run_id="ingest")
    return uri


def _bucket(uri: str) -> str:
    return uri.removeprefix("gs://anonymous@").split("/", 1)[0]


def test_a_lake_opened_from_its_uri_checks_its_inputs_where_the_uri_says(
        dataproc_env: Settings, emulated_lake: str, gcs_emulator: str) -> None:
    """What the job does before Spark starts: every input of the month resolved, each file's CRC32C checked against
    the one its store keeps (the storage client's), on the emulator the URI names, not the settings' closed port."""
    lake = Lake(emulated_lake, LakeLayout())  # as job.main opens it
    inputs = job.resolve_inputs(lake, FEB, 1, SOURCES)
    assert inputs.history == (JAN,)
    base = f"gs://{_bucket(emulated_lake)}/lake"
    assert set(inputs.tables) == set(SOURCES.month_inputs)
    for table, uris in inputs.tables.items():
        months = ["year=2013/month=1", "year=2013/month=2"] if table == "flights" else ["year=2013/month=2"]
        assert [u.removeprefix(f"{base}/{table}/").split("/data-")[0] for u in uris] == months, uris
        assert all(u.endswith("/part-00000.parquet") for u in uris), uris
    endpoint = lake._storage_client()._connection.API_BASE_URL
    assert endpoint == gcs_emulator, endpoint  # the URI's emulator, not the settings' closed port


def test_a_lake_opened_from_its_uri_takes_its_publish_lock_where_the_uri_says(
        dataproc_env: Settings, emulated_lake: str, gcs_emulator: str) -> None:
    """``--publish``: the partition's writer lock is an object on the lake's own store, as its data is."""
    lake = Lake(emulated_lake, LakeLayout())
    staged = lake.staging_path("features", FEB, "run-1")
    write_table(ROWS, lake.fs, f"{staged}/part-00000.parquet")
    manifest = lake.publish("features", FEB, lake.uri_of(staged), run_id="run-1")
    assert lake.read_manifest("features", FEB).content == manifest.content
    assert Lake(emulated_lake).read_table("features", [FEB]).equals(ROWS)


def test_a_plain_gs_lake_uri_gets_google_cloud_with_application_default_credentials(
        dataproc_env: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    """``gs://bucket/...`` (no endpoint_override), as on Dataproc: Google Cloud's endpoint, with the credentials and
    project Application Default Credentials give (the batch's service account), even where STORAGE_EMULATOR_HOST is
    set. Nothing is sent: only the client is built."""
    found = Credentials(token="stand-in")  # type: ignore[no-untyped-call]
    monkeypatch.setattr(google.auth, "default", lambda *args, **kwargs: (found, "the-adc-project"))
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", str(dataproc_env.storage.emulator_host))
    client = Lake("gs://a-real-bucket/lake")._storage_client()
    assert client._connection.API_BASE_URL == "https://storage.googleapis.com"
    assert client._credentials is found and client.project == "the-adc-project"


def test_a_storage_client_that_cannot_be_reached_ends_the_job_with_one_line_naming_the_lake(
        dataproc_env: Settings, emulated_lake: str, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """A store whose client cannot be reached while the inputs' checksums are checked (a real refused connection: the
    lake's client on a closed port, its retries run out): one line naming the lake and what to do, exit 1 (the task
    is retried), never a RetryError traceback."""
    closed = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setattr(job, "Lake", lambda uri, layout: Lake(uri, layout, gcs_client=lambda: _client(closed)))
    code = job.main(["--lake-uri", emulated_lake, "--month", FEB.label, "--output", "file:///srv/out/features"])
    err = capsys.readouterr().err
    assert code == job.EXIT_FAILED
    assert err.startswith(f"build_features: checking the inputs of 2013-02 failed on the lake {emulated_lake} "
                          "(RetryError: Timeout of 2.0s exceeded"), err
    assert err.endswith("did not answer: check that it is up and reachable from the job, then let the task retry\n")
    assert err.count("\n") == 1 and "Traceback" not in err


def test_no_credentials_for_the_publish_ends_the_job_with_one_line_naming_the_lake(
        dataproc_env: Settings, emulated_lake: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """``--publish`` on a machine with no Google Cloud credentials (no GOOGLE_* variables, no gcloud configuration,
    no metadata server, not a Compute Engine VM): its lock's client cannot be made. The inputs resolve (anonymous,
    on the emulator); the publish ends the job with one line naming the lake and what to do, exit 1, and nothing is
    published."""
    from google.auth.compute_engine import _metadata
    from pyspark.sql import SparkSession

    from tenfold.data.lake import gcs_client_of

    for name in [k for k in os.environ if k.startswith(("GOOGLE_", "CLOUDSDK_", "GCE_"))]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("CLOUDSDK_CONFIG", str(tmp_path))
    monkeypatch.setenv("GCE_METADATA_HOST", f"127.0.0.1:{free_port()}")
    monkeypatch.setenv("GCE_METADATA_IP", f"127.0.0.1:{free_port()}")
    monkeypatch.setattr(_metadata, "_GCE_PRODUCT_NAME_FILE", str(tmp_path / "product_name"))  # not a GCE VM
    session = SimpleNamespace(stop=lambda: None)
    builder = SimpleNamespace(config=lambda *_: builder, appName=lambda _: builder, getOrCreate=lambda: session)
    monkeypatch.setattr(SparkSession, "builder", builder)
    # The Spark part of the job stood in for: its publish, whose lock client is the one of the lake's bucket on
    # Google Cloud (the credentials are what is missing, not the lake).
    credentialed = gcs_client_of(f"gs://{_bucket(emulated_lake)}/lake")

    def run(spark: Any, args: Any, inputs: Any, workload: Any) -> dict[str, object]:
        lake = Lake(args.lake_uri, args.layout, gcs_client=credentialed)
        staged = lake.staging_path("features", FEB, "run-1")
        write_table(ROWS, lake.fs, f"{staged}/part-00000.parquet")
        lake.publish("features", FEB, lake.uri_of(staged), run_id="run-1")
        return {}

    monkeypatch.setattr(job, "run", run)
    code = job.main(["--lake-uri", emulated_lake, "--month", FEB.label, "--output", "file:///srv/out/features",
                     "--publish"])
    err = capsys.readouterr().err
    assert code == job.EXIT_FAILED
    assert err.startswith(f"build_features: publishing 2013-02 failed on the lake {emulated_lake} "
                          "(DefaultCredentialsError: "), err
    assert "give the job Google Cloud credentials (on Dataproc, the batch's service account" in err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not Lake(emulated_lake).has_manifest("features", FEB)
