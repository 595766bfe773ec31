"""Writes to a ``gs://`` lake, run folder or report need only the object role the stacks grant (no bucket metadata).

pyarrow's ``create_dir(recursive=True)`` on GCS reads the bucket's metadata (``storage.buckets.get``) where no
folder marker exists yet; the platform's service accounts hold ``roles/storage.objectUser`` / ``objectViewer`` on
their folders, which do not include it. These run the real writers against the GCS emulator behind
:class:`ObjectRoleGcs`, which answers a bucket request 403 as GCS does for such a caller.
"""

from __future__ import annotations

import datetime as dt
import importlib.util
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pytest

from tenfold.config import Settings
from tenfold.data.lake import Lake, Partition
from tenfold.data.parquet import write_table
from tenfold.fsio import make_dirs


def _load_stand_in() -> Any:
    name = "tenfold_tests_data_object_role_gcs"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name("object_role_gcs.py"))
        assert spec and spec.loader
        sys.modules[name] = module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    return sys.modules[name]


ObjectRoleGcs = _load_stand_in().ObjectRoleGcs
PART = Partition(2013, 5)
TABLE = pa.table({"id": pa.array([1, 2, 3], pa.int64())})


def test_make_dirs_makes_folders_on_a_local_disk_and_under_a_subtree_of_one(tmp_path: Path) -> None:
    make_dirs(pafs.LocalFileSystem(), str(tmp_path / "a" / "b"))
    make_dirs(pafs.SubTreeFileSystem(str(tmp_path), pafs.LocalFileSystem()), "c/d")
    assert (tmp_path / "a" / "b").is_dir() and (tmp_path / "c" / "d").is_dir()


@pytest.fixture
def gcs(gcs_emulator: str, local_settings: Settings, tmp_path: Path) -> Iterator[Any]:
    with ObjectRoleGcs(gcs_emulator, tmp_path / "requests.log") as proxy:
        yield proxy


def _fs(gcs: Any) -> pafs.GcsFileSystem:
    return pafs.GcsFileSystem(anonymous=True, scheme="http", endpoint_override=gcs.endpoint)


def _folder(settings: Settings) -> str:
    return f"{settings.storage.lake_bucket}/object-role-{uuid.uuid4().hex[:8]}"


pytestmark = pytest.mark.integration


def test_the_stand_in_refuses_the_bucket_read_that_create_dir_makes(gcs: Any, local_settings: Settings) -> None:
    """The control: an object-only caller cannot make a folder with pyarrow (what every writer did before)."""
    with pytest.raises(PermissionError, match=r"storage\.buckets\.get"):
        pafs.GcsFileSystem(anonymous=True, scheme="http", endpoint_override=gcs.endpoint,
                           retry_time_limit=dt.timedelta(seconds=1)).create_dir(
            f"{_folder(local_settings)}/a/b", recursive=True)
    assert gcs.bucket_requests()


def test_a_lake_publish_and_a_quarantine_on_gcs_need_no_bucket_metadata(
    gcs: Any, local_settings: Settings
) -> None:
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    def client() -> storage.Client:
        return storage.Client(project="test", credentials=AnonymousCredentials(),  # type: ignore[no-untyped-call]
                              client_options={"api_endpoint": f"http://{gcs.endpoint}"})

    lake = Lake(f"gs://{_folder(local_settings)}", filesystem=_fs(gcs), gcs_client=client)
    staged = lake.staging_path("events", PART, "r1")
    write_table(TABLE, lake.fs, f"{staged}/part-00000.parquet")
    lake.publish("events", PART, lake.uri_of(staged), run_id="r1")
    assert lake.read_table("events", [PART]).equals(TABLE)

    refused = lake.staging_path("events", PART, "r2")
    write_table(TABLE, lake.fs, f"{refused}/part-00000.parquet")
    where = lake.quarantine("events", PART, refused, "r2", {"why": "a test"})
    assert lake.fs.get_file_info(f"{lake._path(where)}/part-00000.parquet").type == pafs.FileType.File
    # Both went through with every bucket request refused. (No "no bucket request" check here: google-cloud-storage's
    # client, which the publish lock uses, reads the bucket in the background for itself and keeps a default on 403.)
    assert any("/o" in r for r in gcs.requests), "nothing went through the stand-in"


def test_a_training_checkpoint_upload_to_gcs_needs_no_bucket_metadata(
    gcs: Any, local_settings: Settings
) -> None:
    from tenfold.training.remote import RemoteDir

    bucket, _, folder = _folder(local_settings).partition("/")
    remote = RemoteDir(f"gs://anonymous@{bucket}/{folder}/run?scheme=http&endpoint_override={gcs.endpoint}")
    remote.write_bytes("checkpoints/epoch-1.pt", b"weights")
    assert remote.read_bytes("checkpoints/epoch-1.pt") == b"weights"
    assert remote.list("checkpoints") == ["epoch-1.pt"]
    assert gcs.bucket_requests() == []
    assert any("/o" in r for r in gcs.requests), "nothing went through the stand-in"


def test_a_drift_report_written_to_gcs_needs_no_bucket_metadata(gcs: Any, local_settings: Settings) -> None:
    from tenfold.monitoring.drift import _write

    bucket, _, folder = _folder(local_settings).partition("/")
    _write(f"gs://anonymous@{bucket}/{folder}/drift/year=2013/month=5/report.json"
           f"?scheme=http&endpoint_override={gcs.endpoint}", b"{}")
    with _fs(gcs).open_input_stream(f"{bucket}/{folder}/drift/year=2013/month=5/report.json") as stream:
        assert stream.read() == b"{}"
    assert gcs.bucket_requests() == []
