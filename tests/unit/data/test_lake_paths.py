"""Where a lake's files are: a lake given as a bare folder opens that folder whatever its name, and a stray folder in a
table (a backup copy, a mistyped month) is not listed as a partition."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tenfold.data.lake import Lake, Partition

TABLE = "events"
PART = Partition(2013, 1)


def _publish(lake: Lake, part: Partition, ids: list[int]) -> None:
    staged = lake.staging_path(TABLE, part)
    lake.fs.create_dir(staged, recursive=True)
    with lake.fs.open_output_stream(f"{staged}/part-00000.parquet") as out:
        pq.write_table(pa.table({"id": pa.array(ids, pa.int64())}), out)
    lake.publish(TABLE, part, staged, run_id="r1")
    lake.discard(staged)


@pytest.mark.parametrize("name", ["a#1 b%20c", "rv#1", "x%20y", "lake with spaces"])
def test_a_lake_given_as_a_bare_folder_opens_that_folder_whatever_its_name(tmp_path: Path, name: str) -> None:
    """The folder was pasted into a file:// URI unescaped: '/tmp/rv#1/lake' opened /tmp/rv (the rest read as a
    fragment), '%20' opened a folder with a space instead, and a space itself raised a raw ArrowInvalid."""
    folder = tmp_path / name
    lake = Lake(str(folder))
    assert lake.root == str(folder)
    _publish(lake, PART, [1, 2, 3])
    assert Lake(str(folder)).read_table(TABLE, [PART]).column("id").to_pylist() == [1, 2, 3]
    assert (folder / TABLE / PART.path / "_SUCCESS").is_file()  # inside the folder given, nowhere else
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]


def test_a_stray_folder_in_a_table_is_skipped_with_a_warning_not_listed_or_raised(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A backup copy (month=1.bak) made published_partitions raise "invalid literal for int()", and month=13 "month
    must be 1-12", naming neither folder: training, drift, batch inference and feedback all list a table through it."""
    lake = Lake(tmp_path.as_uri())
    _publish(lake, PART, [1, 2, 3])
    real = Path(lake.partition_path(TABLE, PART))
    strays = ["year=2013/month=1.bak", "year=2013/month=13", "year=2013/month=01", "year=x/month=2"]
    for stray in strays:
        shutil.copytree(real, real.parent.parent / stray)
    with caplog.at_level(logging.WARNING, logger="tenfold.data.lake"):
        assert lake.published_partitions(TABLE) == [PART]
    for stray in strays:  # each named, so that it can be removed
        assert any(stray in r.getMessage() and "not a partition folder" in r.getMessage() for r in caplog.records), stray


@pytest.mark.parametrize("uri", ["/", "file:///"])
def test_a_lake_at_the_root_folder_is_the_root_not_the_working_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                      uri: str) -> None:
    """Lake("/") stripped its trailing slash to "" and resolved that to the working folder; Lake("file:///") stripped
    to "file:" and ended in pyarrow's raw "File URI cannot be relative". Both name the root folder (nothing here
    writes there)."""
    monkeypatch.chdir(tmp_path)
    lake = Lake(uri)
    assert lake.root == "/"
    assert lake._path(lake.uri_of(lake.table_path(TABLE))) == f"/{TABLE}"  # not //events, nor a host


@pytest.mark.parametrize("uri", ["file://", "file:", "file:relative/lake", "file://host/lake"])
def test_a_file_uri_naming_no_folder_is_refused_naming_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          uri: str) -> None:
    from tenfold.data.lake import LakeError

    monkeypatch.chdir(tmp_path)
    with pytest.raises(LakeError) as caught:
        Lake(uri)
    assert f"lake URI {uri!r}" in str(caught.value) and "file:///" in str(caught.value)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("uri", ["gs:", "gs:/", "gs://", "gs:///", "gs://anonymous@", "gs://anonymous@/"])
@pytest.mark.parametrize("emulated", [False, True])
def test_a_gs_uri_naming_no_bucket_is_refused_naming_it(uri: str, emulated: bool) -> None:
    """Stripped of its slashes, "gs://" became "gs:", which pyarrow reads as the root of GCS: the lake was accepted
    with root "" and its tables were buckets ('flights'). The refusal comes before any GCS filesystem is built (the
    emulated one points at a closed loopback port, in case one were asked anything)."""
    import pyarrow.fs as pafs

    from tenfold.data.lake import LakeError

    filesystem = pafs.GcsFileSystem(anonymous=True, scheme="http", endpoint_override="127.0.0.1:9") if emulated else None
    with pytest.raises(LakeError) as caught:
        Lake(uri, filesystem=filesystem)
    assert str(caught.value) == f"lake URI {uri!r} names no bucket: give gs://bucket/..."
    # A bucket, with or without the anonymous user pyarrow accepts, is still a lake.
    assert Lake("gs://bucket/lake", filesystem=filesystem).table_path(TABLE) == f"bucket/lake/{TABLE}"
    if not emulated:
        assert Lake("gs://anonymous@bucket").table_path(TABLE) == f"bucket/{TABLE}"


@pytest.mark.parametrize("uri", [
    "gs://b/x?endpoint_override=127.0.0.1:9&scheme=http",
    "gs://anonymous@b/x",
    "gs://anonymous@b/x/?scheme=http&endpoint_override=127.0.0.1:9",
])
@pytest.mark.parametrize("emulated", [False, True])
def test_a_gs_lake_uri_with_a_user_or_a_query_names_its_files_without_them(uri: str, emulated: bool) -> None:
    """uri_of appended the path to the whole lake URI: after its query (``...&scheme=http/t/year=2013/month=1``, a
    path no store has, printed by refusals as "quarantined at ..."), and with the user (``gs://anonymous@b/...``). A
    user or a query says how to open the store, not where a file is. No GCS filesystem is asked anything (the emulated
    one points at a closed loopback port)."""
    import pyarrow.fs as pafs

    filesystem = pafs.GcsFileSystem(anonymous=True, scheme="http", endpoint_override="127.0.0.1:9") if emulated else None
    lake = Lake(uri, filesystem=filesystem)
    assert lake.root == "b/x"
    partition = lake.partition_path(TABLE, PART)
    assert lake.uri_of(partition) == f"gs://b/x/{TABLE}/year=2013/month=1"
    assert lake.uri_of(lake.root) == "gs://b/x"
    assert lake._path(lake.uri_of(partition)) == partition  # and back to where it is
