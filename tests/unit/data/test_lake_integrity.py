"""Lake files are verified by content (CRC32C, GCS's own form), not by size: a same-size corruption is refused,
named, and quarantined, on a ``file://`` lake and on a ``gs://`` lake on the GCS emulator."""

from __future__ import annotations

import contextlib
import http.client
import json
import posixpath
import struct
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from tenfold.config import Settings
from tenfold.data.lake import (
    CorruptFileError,
    CorruptManifestError,
    DamagedInTransit,
    Lake,
    LakeError,
    MissingManifestError,
    Partition,
    crc32c_of,
)

PART = Partition(2013, 5)
TABLE = "events"
# An uncompressed, plainly encoded int64 column: the corruption below changes one value in place and
# the file still parses, so neither a size check nor a Parquet reader can notice it.
VALUES = [1_000_000 + i for i in range(500)]
TARGET, REPLACEMENT = struct.pack("<q", 1_000_250), struct.pack("<q", 7_777_777)


def _table(shift: int = 0) -> pa.Table:
    return pa.table({"id": pa.array([v + shift for v in VALUES], pa.int64())})


def _publish(lake: Lake, table: pa.Table, run_id: str = "r1") -> None:
    staged = lake.staging_path(TABLE, PART)
    lake.fs.create_dir(staged, recursive=True)
    with lake.fs.open_output_stream(f"{staged}/part-00000.parquet") as out:
        pq.write_table(table, out, compression="none", use_dictionary=False)
    lake.publish(TABLE, PART, lake.uri_of(staged), run_id=run_id)
    lake.discard(staged)


def _corrupted(data: bytes) -> bytes:
    assert data.count(TARGET) == 1, "the value to corrupt is not stored plainly once"
    bad = data.replace(TARGET, REPLACEMENT)
    assert len(bad) == len(data)
    return bad


def _read_bytes(lake: Lake, path: str) -> bytes:
    with lake.fs.open_input_stream(path) as stream:
        return bytes(stream.read())


def _overwrite(lake: Lake, path: str, data: bytes) -> None:
    with lake.fs.open_output_stream(path) as out:
        out.write(data)


def _check_refused_and_quarantined(lake: Lake, corrupt: Callable[[str, bytes], None]) -> None:
    """Publish, corrupt the data file with ``corrupt(path, bytes)`` (same size), and check every refusal."""
    _publish(lake, _table())
    manifest = lake.read_manifest(TABLE, PART)
    (path,) = lake.files(TABLE, PART)
    (entry,) = manifest.files
    good = _read_bytes(lake, path)
    assert entry.crc32c == crc32c_of(good) == lake.stored_crc32c(path)

    corrupt(path, _corrupted(good))
    assert lake.fs.get_file_info(path).size == entry.bytes  # a size check alone passes
    damaged = pq.read_table(pa.BufferReader(_read_bytes(lake, path)))  # and Parquet parses it: only the checksum can tell
    assert damaged.column("id").to_pylist() != VALUES

    # files(verify=True) refuses, naming the file, the table, the partition, the check and what to do; it moves nothing.
    with pytest.raises(CorruptFileError) as refused:
        lake.files(TABLE, PART, verify=True)
    message = str(refused.value)
    file_uri = lake.uri_of(path)
    for needed in (file_uri, f"{TABLE} partition {PART.label}", "CRC32C", entry.crc32c, "the same size as published",
                   f"re-running the pipeline that builds {TABLE} for {PART.label}"):
        assert needed in message, f"{needed!r} missing from: {message}"
    assert lake.has_manifest(TABLE, PART)

    # read_table refuses too, and withdraws the partition: manifest gone, data and reason in quarantine.
    with pytest.raises(CorruptFileError, match="the partition is withdrawn") as refused:
        lake.read_table(TABLE, [PART])
    assert file_uri in str(refused.value)
    assert not lake.has_manifest(TABLE, PART)
    with pytest.raises(MissingManifestError):
        lake.read_table(TABLE, [PART])
    quarantined = str(refused.value).rsplit("moved to ", 1)[1].rstrip(")")
    qpath = lake._path(quarantined)
    with lake.fs.open_input_stream(f"{qpath}/_QUARANTINED.json") as stream:
        reason = json.loads(stream.read())
    assert reason["file"] == file_uri and reason["check"] == "CRC32C" and reason["expected"] == entry.crc32c
    assert json.loads(reason["manifest"])["run_id"] == "r1"
    assert _read_bytes(lake, f"{qpath}/part-00000.parquet") == _corrupted(good)  # kept for triage

    # Re-publishing the same content heals the partition.
    _publish(lake, _table(), run_id="r2")
    assert lake.read_table(TABLE, [PART]).column("id").to_pylist() == VALUES


def test_a_same_size_corruption_on_a_file_lake_is_refused_named_and_quarantined(lake: Lake) -> None:
    _check_refused_and_quarantined(lake, lambda path, bad: _overwrite(lake, path, bad))


@pytest.mark.integration
def test_a_same_size_corruption_on_a_gcs_lake_is_caught_by_the_crc32c_gcs_keeps(
    make_settings: Callable[..., Settings], local_settings: Settings
) -> None:
    from tenfold.storage import gcs_client

    bucket_name = local_settings.storage.lake_bucket
    settings = make_settings(on=local_settings, storage={"lake_uri": f"gs://{bucket_name}/lake-{uuid.uuid4().hex[:8]}"})
    lake = Lake.from_settings(settings)
    bucket = gcs_client(settings).bucket(bucket_name)

    def corrupt(path: str, bad: bytes) -> None:
        name = path.split("/", 1)[1]
        before = bucket.get_blob(name)
        # fake-gcs-server keeps a CRC32C per object, as GCS does, and it is the one the manifest recorded.
        assert before.crc32c == lake.read_manifest(TABLE, PART).files[0].crc32c
        bucket.blob(name).upload_from_string(bad)  # replaced with a same-size object: GCS computes its new CRC32C
        assert bucket.get_blob(name).crc32c == crc32c_of(bad) != before.crc32c

    _check_refused_and_quarantined(lake, corrupt)


class _LoggingGcs:
    """``with _LoggingGcs(emulator, folder) as gcs:`` -> a loopback HTTP proxy in front of the GCS emulator, at
    ``gcs.endpoint`` (``http://host:port``). Every request line is logged (:attr:`requests`). While :meth:`damaging`
    an object, each media download (``alt=media``) of it comes back with one byte flipped, as a download damaged on
    the way reaches the client: its headers as the emulator sent them, or (``strip_hash``) without ``x-goog-hash``,
    the header by which google-cloud-cpp checks a whole download itself.

    It runs in a process of its own (this file, run as a script): pyarrow holds the GIL while it reads an object's
    metadata, so an in-process server thread would never get to answer."""

    def __init__(self, upstream: str, folder: Path) -> None:
        self.upstream, self.log, self.fault = upstream, folder / "requests.log", folder / "damage.json"
        self.endpoint = ""
        self._process: subprocess.Popen[str] | None = None

    @property
    def requests(self) -> list[str]:
        return self.log.read_text().splitlines() if self.log.exists() else []

    @contextlib.contextmanager
    def damaging(self, name: str, *, strip_hash: bool) -> Iterator[None]:
        self.fault.write_text(json.dumps({"name": quote(name, safe=""), "strip_hash": strip_hash}))
        try:
            yield
        finally:
            self.fault.unlink()

    def __enter__(self) -> _LoggingGcs:
        self._process = subprocess.Popen([sys.executable, __file__, self.upstream, str(self.log), str(self.fault)],
                                         stdout=subprocess.PIPE, text=True)
        assert self._process.stdout is not None
        self.endpoint = self._process.stdout.readline().strip()
        assert self.endpoint, "the proxy did not start"
        return self

    def __exit__(self, *exc: object) -> None:
        if self._process is not None:
            self._process.terminate()
            self._process.wait(timeout=10)


def _proxy_handler(upstream: str, log: Path, fault: Path) -> type[BaseHTTPRequestHandler]:
    hop_by_hop = {"connection", "keep-alive", "transfer-encoding", "content-length", "proxy-connection"}

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as libcurl uses it
        disable_nagle_algorithm = True  # headers and body are two writes: Nagle held each answer 40 ms

        def log_message(self, *args: object) -> None:
            pass

        def _any(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            with log.open("a") as fh:
                fh.write(f"{self.command} {self.path}\n")
            damage = json.loads(fault.read_text()) if fault.exists() else None
            if damage and not ("alt=media" in self.path and f"/o/{damage['name']}?" in self.path):
                damage = None
            conn = http.client.HTTPConnection(upstream, timeout=30)
            try:
                headers = {k: v for k, v in self.headers.items() if k.lower() not in hop_by_hop | {"expect"}}
                conn.request(self.command, self.path, body=body, headers=headers)
                response = conn.getresponse()
                data = response.read()
                if damage and data:
                    middle = len(data) // 2
                    data = data[:middle] + bytes([data[middle] ^ 0x01]) + data[middle + 1:]
                self.send_response(response.status)
                for name, value in response.getheaders():
                    if name.lower() not in hop_by_hop and not (damage and damage["strip_hash"]
                                                               and name.lower() == "x-goog-hash"):
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
            finally:
                conn.close()

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _any

    return Handler


@pytest.fixture
def proxied_gcs_lake(make_settings: Callable[..., Settings], local_settings: Settings, gcs_emulator: str,
                     tmp_path: Path) -> Iterator[tuple[Lake, _LoggingGcs, Any]]:
    """A ``gs://`` lake of its own on the emulator, made from settings whose emulator is :class:`_LoggingGcs` in front
    of it (pyarrow's client and the storage client both go through it); the proxy; the lake's bucket in the real
    storage client."""
    from tenfold.storage import gcs_client

    with _LoggingGcs(gcs_emulator, tmp_path) as proxy:
        bucket_name = local_settings.storage.lake_bucket
        settings = make_settings(on=local_settings, storage={
            "lake_uri": f"gs://{bucket_name}/lake-{uuid.uuid4().hex[:8]}", "emulator_host": proxy.endpoint})
        yield Lake.from_settings(settings), proxy, gcs_client(settings).bucket(bucket_name)


@pytest.mark.integration
def test_verifying_a_gcs_lake_reads_the_crc32c_gcs_keeps_and_downloads_no_data(
        proxied_gcs_lake: tuple[Lake, _LoggingGcs, Any]) -> None:
    """The issue: a ``gs://`` file is verified by the CRC32C GCS keeps with the object. A verification that downloads
    each file and hashes it gives the same verdicts (the tests above all pass), and costs every file's bytes on
    every verification: only the requests made tell them apart."""
    lake, proxy, bucket = proxied_gcs_lake
    _publish(lake, _table())
    (path,) = lake.files(TABLE, PART)
    name = path.split("/", 1)[1]
    blob = bucket.get_blob(name)
    # The manifest recorded the CRC32C the real client reports for the stored object, which is GCS's own.
    assert lake.read_manifest(TABLE, PART).files[0].crc32c == blob.crc32c == crc32c_of(blob.download_as_bytes())

    before = len(proxy.requests)
    assert lake.files(TABLE, PART, verify=True) == [path]
    made = [r for r in proxy.requests[before:] if f"/o/{quote(name, safe='')}" in r]
    assert made, "verification sent nothing about the file through the proxy: the test sees nothing"
    assert not [r for r in made if "alt=media" in r], f"verification downloaded the file: {made}"


@pytest.mark.integration
@pytest.mark.parametrize("strip_hash", [False, True], ids=["hash-header-sent", "hash-header-lost"])
def test_a_download_damaged_in_transit_is_said_so_and_the_intact_partition_stays_published(
        proxied_gcs_lake: tuple[Lake, _LoggingGcs, Any], strip_hash: bool) -> None:
    """One byte of the file's download flipped on the way; the stored object is intact. The read is refused as
    :class:`DamagedInTransit` (what callers retry, the quality gate included), and nothing is withdrawn: withdrawn,
    a good month was quarantined for a network fault. With ``x-goog-hash`` sent, google-cloud-cpp notices the damage
    first (it checks a whole download against the header); without it, the lake's own check over the bytes does."""
    lake, proxy, bucket = proxied_gcs_lake
    _publish(lake, _table())
    manifest = lake.read_manifest(TABLE, PART)
    (path,) = lake.files(TABLE, PART)
    name = path.split("/", 1)[1]
    quarantine = posixpath.dirname(lake.quarantine_path(TABLE, PART, "any"))

    before = len(proxy.requests)
    with proxy.damaging(name, strip_hash=strip_hash), pytest.raises(DamagedInTransit) as refused:
        lake.read_table(TABLE, [PART])
    assert [r for r in proxy.requests[before:] if f"/o/{quote(name, safe='')}?" in r and "alt=media" in r]
    for needed in (lake.uri_of(path), "damaged in transit", "retry the read"):
        assert needed in str(refused.value), f"{needed!r} missing from: {refused.value}"
    assert bucket.get_blob(name).crc32c == manifest.files[0].crc32c  # the stored object was intact all along
    assert lake.read_manifest(TABLE, PART) == manifest  # still published, as it was
    assert not lake.fs.get_file_info(pafs.FileSelector(quarantine, recursive=True, allow_not_found=True))
    # The transit mended, the same read returns the month.
    assert lake.read_table(TABLE, [PART]).column("id").to_pylist() == VALUES


def test_a_republish_replaces_a_same_size_corrupted_file_instead_of_keeping_it(lake: Lake) -> None:
    # A retry after a partial publish keeps the files that already landed whole: "whole" must mean the
    # right content, not the right size.
    _publish(lake, _table())
    (path,) = lake.files(TABLE, PART)
    _overwrite(lake, path, _corrupted(_read_bytes(lake, path)))
    _publish(lake, _table(), run_id="retry")
    assert lake.files(TABLE, PART, verify=True) == [path]
    assert lake.read_table(TABLE, [PART]).column("id").to_pylist() == VALUES


def test_a_reader_that_met_a_corrupt_file_does_not_withdraw_it_once_a_republish_mended_it(
        lake: Lake, monkeypatch: pytest.MonkeyPatch) -> None:
    """The operator re-runs the pipeline, as the refusal advises; identical content keeps its data folder's name. A
    reader that had read the bad bytes just before, and waited for the lock to withdraw, found the manifest still
    naming that folder and moved the mended month to quarantine: the repair was undone."""
    _publish(lake, _table())
    (path,) = lake.files(TABLE, PART)
    _overwrite(lake, path, _corrupted(_read_bytes(lake, path)))
    withdraw = Lake.withdraw

    def repaired_while_waiting(self: Lake, *args: object, **kwargs: object) -> object:
        _publish(lake, _table(), run_id="repair")  # lands while the reader waits for the writer lock
        return withdraw(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Lake, "withdraw", repaired_while_waiting)
    assert lake.read_table(TABLE, [PART]).column("id").to_pylist() == VALUES  # read again, not refused
    assert lake.has_manifest(TABLE, PART) and lake.files(TABLE, PART, verify=True) == [path]


def test_a_manifest_from_before_crc32c_still_reads_and_is_verified_by_its_sha256(lake: Lake) -> None:
    _publish(lake, _table())
    path = lake.manifest_path(TABLE, PART)
    body = json.loads(_read_bytes(lake, path))
    body["version"] = 1
    for f in body["files"]:
        del f["crc32c"]
    _overwrite(lake, path, json.dumps(body).encode())  # exactly what version 1 wrote

    old = lake.read_manifest(TABLE, PART)
    assert old.files[0].crc32c is None and "crc32c" not in old.content["files"][0]
    assert lake.read_table(TABLE, [PART]).column("id").to_pylist() == VALUES
    (data,) = lake.files(TABLE, PART, verify=True)

    _overwrite(lake, data, _corrupted(_read_bytes(lake, data)))
    with pytest.raises(CorruptFileError, match=r"its sha256 is .*\(the same size as published"):
        lake.files(TABLE, PART, verify=True)
    with pytest.raises(CorruptFileError, match="the partition is withdrawn"):
        lake.read_table(TABLE, [PART])
    # Re-publishing writes a current manifest, with CRC32C.
    _publish(lake, _table(), run_id="r2")
    assert lake.read_manifest(TABLE, PART).files[0].crc32c is not None


def test_a_manifest_of_a_newer_version_is_refused_naming_the_fix(lake: Lake) -> None:
    _publish(lake, _table())
    path = lake.manifest_path(TABLE, PART)
    _overwrite(lake, path, _read_bytes(lake, path).replace(b'"version": 2', b'"version": 3'))
    with pytest.raises(CorruptManifestError, match=r"unsupported manifest version 3 .*upgrade tenfold"):
        lake.read_manifest(TABLE, PART)


def test_a_corrupt_file_whose_withdrawal_is_refused_the_lock_is_still_refused_as_corrupt(
    lake: Lake, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Serving reads the lake with objectViewer only: it cannot take the partition's writer lock (GCS answers 403,
    LockUnavailable, raised as PartitionLocked). The refusal is still the checksum's, saying the quarantine failed."""
    from tenfold.data.locks import LockUnavailable

    _publish(lake, _table())
    (path,) = lake.files(TABLE, PART)
    _overwrite(lake, path, _corrupted(_read_bytes(lake, path)))

    @contextlib.contextmanager
    def forbidden(lock_path: str, *, what: str, timeout_s: float, stale_s: float) -> Iterator[None]:
        raise LockUnavailable(f"cannot take {lock_path}, the lock of {what}: GCS answered 403 (Forbidden)")
        yield

    monkeypatch.setattr(lake, "lock", forbidden)
    with pytest.raises(CorruptFileError) as refused:
        lake.read_table(TABLE, [PART])
    message = str(refused.value)
    entry = lake.read_manifest(TABLE, PART).files[0]
    for needed in (lake.uri_of(path), "is corrupt: its CRC32C is", entry.crc32c, "quarantining it failed",
                   "GCS answered 403", f"delete {lake.uri_of(lake.manifest_path(TABLE, PART))}"):
        assert needed in message, f"{needed!r} missing from: {message}"
    assert lake.has_manifest(TABLE, PART)  # nothing was moved


def test_a_manifest_that_is_not_utf8_is_refused_as_corrupt_and_a_republish_heals_it(lake: Lake) -> None:
    _publish(lake, _table())
    path = lake.manifest_path(TABLE, PART)
    good = _read_bytes(lake, path)
    _overwrite(lake, path, b"\xff\xfe" + good[2:])  # bit rot in the first bytes: not UTF-8 any more
    with pytest.raises(CorruptManifestError, match=rf"manifest {lake.uri_of(path)} is unreadable .*utf-8.*re-publish"):
        lake.read_table(TABLE, [PART])
    with pytest.raises(CorruptManifestError):
        lake.content_digest(TABLE, [PART])
    _publish(lake, _table(), run_id="r2")  # the damaged manifest is not taken for a valid one: this publish replaces it
    assert lake.read_manifest(TABLE, PART).run_id == "r2"
    assert lake.read_table(TABLE, [PART]).column("id").to_pylist() == VALUES


@pytest.mark.parametrize("body", [b"[]", b'"a string"', b"42"], ids=["list", "string", "number"])
def test_a_manifest_that_is_json_but_not_an_object_is_refused_as_corrupt(lake: Lake, body: bytes) -> None:
    _publish(lake, _table())
    path = lake.manifest_path(TABLE, PART)
    _overwrite(lake, path, body)
    with pytest.raises(CorruptManifestError, match=rf"manifest {lake.uri_of(path)} is unreadable"):
        lake.read_table(TABLE, [PART])
    _publish(lake, _table(), run_id="r2")
    assert lake.read_manifest(TABLE, PART).run_id == "r2"


def test_a_reader_that_met_a_corrupt_file_reads_the_content_published_while_it_waited(
        lake: Lake, monkeypatch: pytest.MonkeyPatch) -> None:
    """Re-published with other content while the reader waited for the lock (the old folder removed), or withdrawn
    by another reader: the month is read again (the new content, or "not published"), not refused with advice to
    delete a good month's manifest."""
    _publish(lake, _table())
    (path,) = lake.files(TABLE, PART)
    _overwrite(lake, path, _corrupted(_read_bytes(lake, path)))
    withdraw = Lake.withdraw

    def replaced_while_waiting(self: Lake, *args: object, **kwargs: object) -> object:
        _publish(lake, _table(shift=1), run_id="newer")
        return withdraw(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Lake, "withdraw", replaced_while_waiting)
    assert lake.read_table(TABLE, [PART]).column("id").to_pylist() == [v + 1 for v in VALUES]


def test_a_reader_that_met_a_corrupt_file_withdrawn_by_another_meanwhile_says_the_month_is_not_published(
        lake: Lake, monkeypatch: pytest.MonkeyPatch) -> None:
    """The other half of the test above: another reader withdrew the month first. The month is read again and is
    not published: said so, not refused with advice about a manifest that is already gone."""
    from tenfold.data.lake import MissingManifestError

    _publish(lake, _table())
    (path,) = lake.files(TABLE, PART)
    _overwrite(lake, path, _corrupted(_read_bytes(lake, path)))
    withdraw = Lake.withdraw

    def withdrawn_while_waiting(self: Lake, *args: object, **kwargs: object) -> object:
        withdraw(self, TABLE, PART, "another-reader", {"error": "the same corrupt file"})
        return withdraw(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Lake, "withdraw", withdrawn_while_waiting)
    with pytest.raises(MissingManifestError) as refused:
        lake.read_table(TABLE, [PART])
    assert "delete" not in str(refused.value), str(refused.value)
    assert lake.fs.get_file_info(lake.quarantine_path(TABLE, PART, "another-reader")).type.name == "Directory"


def test_a_reader_whose_month_is_withdrawn_between_its_manifest_and_its_files_says_it_is_not_published(
        lake: Lake, monkeypatch: pytest.MonkeyPatch) -> None:
    """The reader read the manifest, another process withdrew the month (manifest removed, its folder moved to
    quarantine), and the reader's file open failed: it said the file "listed by its manifest is missing; re-publish",
    where the month is simply not published (as a reader that met a corrupt file withdrawn meanwhile says)."""
    _publish(lake, _table())
    current = lake.read_manifest(TABLE, PART).data_dir
    read_verified = Lake._read_verified
    withdrawn: list[str] = []

    def withdrawn_meanwhile(self: Lake, *args: object, **kwargs: object) -> bytes:
        if not withdrawn:
            withdrawn.append(str(Lake(lake.uri).withdraw(TABLE, PART, "another", {"error": "refused"},
                                                         data_dir=current)))
        return read_verified(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Lake, "_read_verified", withdrawn_meanwhile)
    with pytest.raises(MissingManifestError):
        lake.read_table(TABLE, [PART])
    assert withdrawn and lake.fs.get_file_info(lake.quarantine_path(TABLE, PART, "another")).type.name == "Directory"


def test_garbage_collection_never_removes_the_folder_the_manifest_names_now(lake: Lake) -> None:
    """A writer that committed, then stalled past its lock check while another took the lock and published, removed
    every data folder but its own: the live manifest's among them, and every reader failed on missing files."""
    _publish(lake, _table(), run_id="a")
    stalled = lake.read_manifest(TABLE, PART).data_dir
    _publish(lake, _table(shift=1), run_id="b")  # the other writer's publish: the manifest names its folder now
    live = lake.read_manifest(TABLE, PART).data_dir
    assert live != stalled
    lake._collect_garbage(TABLE, PART, keep=stalled)  # what the stalled writer's garbage collection then ran
    assert lake.read_table(TABLE, [PART]).column("id").to_pylist() == [v + 1 for v in VALUES]


def test_a_withdrawal_without_a_data_folder_named_quarantines_the_folder_the_manifest_named(lake: Lake) -> None:
    """withdraw() says it moves the data folder to quarantine; without data_dir it wrote only the reason there, and
    the folder stayed in the partition until the next publish deleted it, the evidence with it."""
    _publish(lake, _table())
    where = lake.withdraw(TABLE, PART, "k", {"error": "refused"})
    assert where is not None and not lake.has_manifest(TABLE, PART)
    quarantined = lake.quarantine_path(TABLE, PART, "k")
    names = {i.base_name for i in lake.fs.get_file_info(pafs.FileSelector(quarantined))}
    assert names == {"part-00000.parquet", "_QUARANTINED.json"}, names
    assert not [i for i in lake.fs.get_file_info(pafs.FileSelector(lake.partition_path(TABLE, PART)))
                if i.base_name.startswith("data-")]


@pytest.mark.parametrize("content", [b"not parquet at all", b"PAR1 cut short"])
def test_a_staged_file_that_is_not_parquet_is_refused_naming_it_and_nothing_is_published(
        lake: Lake, content: bytes) -> None:
    """publish raised pyarrow's "ArrowInvalid: Parquet magic bytes not found in footer", naming no file of the batch."""
    _publish(lake, _table())
    before = lake.read_manifest(TABLE, PART)
    staged = lake.staging_path(TABLE, PART)
    lake.fs.create_dir(staged, recursive=True)
    with lake.fs.open_output_stream(f"{staged}/part-00000.parquet") as out:
        pq.write_table(_table(shift=1), out)
    _overwrite(lake, f"{staged}/part-00001.parquet", content)
    with pytest.raises(LakeError, match=r"part-00001\.parquet is not a readable Parquet file .*stage the batch again") \
            as refused:
        lake.publish(TABLE, PART, lake.uri_of(staged), run_id="r2")
    assert lake.uri_of(f"{staged}/part-00001.parquet") in str(refused.value)
    assert lake.read_manifest(TABLE, PART) == before  # nothing published: the month as it was
    assert lake.read_table(TABLE, [PART]).column("id").to_pylist() == VALUES
    data_dirs = [i for i in lake.fs.get_file_info(pafs.FileSelector(lake.partition_path(TABLE, PART)))
                 if i.base_name.startswith("data-")]
    assert [i.base_name for i in data_dirs] == [before.data_dir]


if __name__ == "__main__":  # the process of _LoggingGcs
    server = ThreadingHTTPServer(("127.0.0.1", 0), _proxy_handler(sys.argv[1].split("://", 1)[-1], Path(sys.argv[2]),
                                                                  Path(sys.argv[3])))
    print(f"http://127.0.0.1:{server.server_address[1]}", flush=True)
    server.serve_forever()
