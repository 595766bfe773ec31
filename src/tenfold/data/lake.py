"""The lake: where each table's partitions live, and how they are published atomically.

Layout under ``settings.storage.lake_uri`` (``file://`` on one machine, ``gs://`` in the cloud)::

    <table>/year=2013/month=1/_SUCCESS               manifest: the commit marker readers check
    <table>/year=2013/month=1/data-<digest>/part-*.parquet   content-addressed data the manifest lists
    _staging/<table>/year=2013/month=1/<attempt>/    where a job writes before it is validated
    quarantine/<table>/year=2013/month=1/<attempt>/  a batch that failed validation, kept for triage

(``_staging`` and ``quarantine`` are the defaults of ``settings.storage.lake_layout``, which the
Dataproc batch and the lake bucket's lifecycle rules read too.)

Publishing copies the staged files into a folder named by their content digest, then writes the
manifest to a temporary name and moves it over ``_SUCCESS`` (a rename on a local disk, a single
object write on GCS). A reader sees either the old manifest or the new one, never a mix; a job killed
at any point leaves the visible partition as it was (tests/unit/data/test_lake_faults.py SIGKILLs a
publisher at every step of a publish). Publishing the same content twice gives the same folder and the
same manifest body, so a retried or backfilled task never duplicates rows.

Integrity: every file entry of a manifest carries the file's CRC32C in the form GCS keeps for every
object (base64 of the big-endian value), computed while publishing. On ``gs://`` a file is verified
against the CRC32C that GCS reports for the stored object (no download); on ``file://`` it is computed
over the bytes. :meth:`Lake.files` with ``verify`` refuses a file whose size or checksum differs (the
quality gate then quarantines the partition); :meth:`Lake.read_table` checks the bytes it parses and,
on a mismatch, withdraws the partition to quarantine before it refuses. Manifests written before
CRC32C (version 1) still read: their files are verified by the sha256 every manifest has recorded.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import hashlib
import itertools
import json
import logging
import posixpath
import uuid
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlparse, urlsplit

import google_crc32c
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from tenfold.config.settings import LakeLayout
from tenfold.data.partition import Partition, month_range
from tenfold.fsio import GCS_RETRY_LIMIT_S, file_uri_path, filesystem_from_uri, fsync_dir, make_dirs

if TYPE_CHECKING:
    from tenfold.config import Settings

log = logging.getLogger(__name__)

__all__ = ["CorruptFileError", "Lake", "Manifest", "Partition", "crc32c_of", "gcs_client_of", "month_range", "schema_hash"]

MANIFEST = "_SUCCESS"
# Written into a staged batch before it is moved to quarantine (Lake.quarantine): a remainder left by a move cut
# short says it was refused (Lake.resume_quarantine) instead of looking like a batch to validate.
REFUSING = "_REFUSING.json"
# 2: file entries carry crc32c. Version 1 manifests (sha256 only) are still read.
MANIFEST_VERSION = 2
_READABLE_VERSIONS = (1, 2)
# A partition's writer lock (Lake.exclusive): how long a writer waits for another, and after how long a
# gs:// lock whose holder never released it (killed) is taken over. A publish takes seconds.
PUBLISH_LOCK = "_publish.lock"
PUBLISH_LOCK_TIMEOUT_S = 600.0
PUBLISH_LOCK_STALE_S = 120.0  # a live holder refreshes it every 40 s; a waiter outwaits a killed one's


class LakeError(RuntimeError):
    """A lake operation cannot go on; the message names what is wrong and what to do."""


class MissingManifestError(LakeError):
    """A partition has no ``_SUCCESS`` manifest: it was never published (or is being written)."""


class CorruptManifestError(LakeError):
    """A manifest exists but cannot be read, or does not match the files it lists."""


class CorruptFileError(CorruptManifestError):
    """A data file is missing, or its size or content checksum differs from what its manifest recorded."""


class DamagedInTransit(LakeError):
    """A download did not match its manifest, but the stored object does: the store's copy is intact, and reading
    it again is what to do (a retry), not withdrawing the partition."""


class PartitionLockLost(LakeError):
    """The partition's writer lock was taken over while this writer worked (it stalled past the stale age): another
    writer may have published meanwhile; running it again is safe (publishing is idempotent)."""


class PartitionLocked(LakeError):
    """Another writer held the partition's lock for longer than this one would wait."""


def gcs_client_of(uri: str, project: str | None = None) -> Callable[[], Any] | None:
    """For a ``gs://`` lake URI (None for any other): what makes the ``google.cloud.storage`` client of the store
    pyarrow opens the URI on, for the lake's locks and its objects' stored checksums: the URI's ``endpoint_override``
    and ``scheme``, else Google Cloud; anonymous for a ``gs://anonymous@`` one, else Application Default Credentials
    (on Dataproc or a training VM, its service account's), whose project is the client's unless ``project`` is given.

    A lake built from a bare URI took the client of the settings its process's environment gives: a Dataproc batch,
    given no TENFOLD_ENV, got the local settings' client for the GCS emulator on 127.0.0.1:4443, which is not there,
    and every input's checksum check failed after the client's retries. The credentials are asked for here: with
    ``STORAGE_EMULATOR_HOST`` set (a process of the local stack) the client would otherwise take none, and its
    requests to Google Cloud would be anonymous."""
    parts = urlsplit(uri)
    if parts.scheme != "gs":
        return None

    def client() -> Any:
        import warnings

        import google.auth
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import storage

        query = parse_qs(parts.query)
        host = query.get("endpoint_override", [""])[-1]
        endpoint = f"{query.get('scheme', ['https'])[-1]}://{host}" if host else "https://storage.googleapis.com"
        credentials: Any
        owner = project
        if parts.username == "anonymous":
            credentials = AnonymousCredentials()  # type: ignore[no-untyped-call]
        else:
            with warnings.catch_warnings():  # its warning about user credentials without a quota project
                warnings.simplefilter("ignore")
                credentials, found = google.auth.default()
            owner = project or found
        return storage.Client(project=owner, credentials=credentials, client_options={"api_endpoint": endpoint})

    return client


class _Republished(Exception):  # a signal inside read_table, never raised to its callers
    """The manifest a read started from was replaced by a publish: read the partition again."""


def schema_hash(schema: pa.Schema) -> str:
    """A stable digest of column names and types (not metadata), for readers to check."""
    canon = ";".join(f"{f.name}:{f.type}:{int(f.nullable)}" for f in schema)
    return hashlib.sha256(canon.encode()).hexdigest()[:16]


def crc32c_of(data: bytes) -> str:
    """CRC32C as GCS reports it for an object: base64 of the 4-byte big-endian value."""
    return base64.b64encode(google_crc32c.value(data).to_bytes(4, "big")).decode()


@dataclass(frozen=True)
class FileEntry:
    """One data file of a partition.

    ``crc32c`` is GCS's form of the file's CRC32C (:func:`crc32c_of`); ``None`` in a manifest written
    before version 2, whose files are then verified by ``sha256``.
    """

    name: str
    rows: int
    bytes: int
    sha256: str
    crc32c: str | None = None

    def to_dict(self) -> dict[str, Any]:
        # Without a crc32c key when there is none, so a version 1 manifest's content (and every digest
        # over it, e.g. the training holdout's) is unchanged by reading it with this code.
        body: dict[str, Any] = {"name": self.name, "rows": self.rows, "bytes": self.bytes, "sha256": self.sha256}
        if self.crc32c is not None:
            body["crc32c"] = self.crc32c
        return body


@dataclass(frozen=True)
class Manifest:
    table: str
    partition: Partition
    data_dir: str  # relative to the partition folder
    rows: int
    schema_hash: str
    files: tuple[FileEntry, ...]
    run_id: str
    created_at: str
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        body = {
            "version": MANIFEST_VERSION,
            "table": self.table,
            "partition": {"year": self.partition.year, "month": self.partition.month},
            "data_dir": self.data_dir,
            "rows": self.rows,
            "schema_hash": self.schema_hash,
            "files": [f.to_dict() for f in self.files],
            "run_id": self.run_id,
            "created_at": self.created_at,
            "extra": self.extra,
        }
        return json.dumps(body, indent=2, sort_keys=True, default=str)

    @classmethod
    def from_json(cls, text: str | bytes, where: str) -> Manifest:
        try:
            body = json.loads(text.decode() if isinstance(text, bytes) else text)  # not UTF-8: a ValueError too
            if body.get("version") not in _READABLE_VERSIONS:
                raise ValueError(f"unsupported manifest version {body.get('version')!r} (this code reads "
                                 f"{', '.join(map(str, _READABLE_VERSIONS))}; upgrade tenfold)")
            return cls(
                table=body["table"],
                partition=Partition(**body["partition"]),
                data_dir=body["data_dir"],
                rows=int(body["rows"]),
                schema_hash=body["schema_hash"],
                files=tuple(FileEntry(**f) for f in body["files"]),
                run_id=body["run_id"],
                created_at=body["created_at"],
                extra=body.get("extra", {}),
            )
        except (ValueError, KeyError, TypeError, AttributeError) as exc:  # AttributeError: JSON but not an object
            raise CorruptManifestError(f"manifest {where} is unreadable ({exc}); re-publish the partition") from exc

    @property
    def content(self) -> dict[str, Any]:
        """What two publishes of the same data agree on (no run id or timestamp)."""
        return {"rows": self.rows, "schema_hash": self.schema_hash, "files": [f.to_dict() for f in self.files]}


def _digests(fs: pafs.FileSystem, path: str) -> tuple[str, str]:
    """(sha256 hex, crc32c) of a file, in one pass over its bytes."""
    sha, crc = hashlib.sha256(), google_crc32c.Checksum()  # type: ignore[no-untyped-call]
    with fs.open_input_stream(path) as stream:
        while chunk := stream.read(1 << 20):
            sha.update(chunk)
            crc.update(chunk)
    return sha.hexdigest(), base64.b64encode(crc.digest()).decode()


def _without_user_or_query(uri: str) -> str:
    """``gs://[user@]bucket/path[?query][#fragment]`` as ``gs://bucket/path``: where it is, not how to open it."""
    parts = urlsplit(uri)
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}{parts.path}".rstrip("/")


class Lake:
    """Tables of Parquet partitions under one root URI, published atomically with manifests."""

    def __init__(
        self,
        uri: str,
        layout: LakeLayout = LakeLayout(),  # noqa: B008 (frozen, shared default)
        *,
        filesystem: pafs.FileSystem | None = None,
        gcs_client: Callable[[], Any] | None = None,
    ) -> None:
        """``filesystem`` replaces the one the URI implies (a ``gs://`` lake on the GCS emulator);
        ``gcs_client`` makes the ``google.cloud.storage`` client that a ``gs://`` lake's locks (:meth:`exclusive`)
        and checksum checks need, by default the one of the store the URI names (:func:`gcs_client_of`): a lake
        opened from its URI alone (a Dataproc batch, a training run) works where that URI says, whatever the settings
        of the process's environment (:meth:`from_settings` gives the settings' client)."""
        if not uri.strip():
            raise LakeError("the lake URI is empty: give a file:// or gs:// URI, or a folder")
        # "/" and "file:///" are the root folder: stripped whole, "/" named the working folder ("") and "file:///"
        # no path at all ("file:").
        self.uri = uri.rstrip("/") or "/"
        if self.uri == "file:" and urlparse(uri).path:
            self.uri = "file:///"
        if not urlparse(self.uri).scheme and not self.uri.startswith("/"):  # a folder: ~ and relative ones resolved
            self.uri = str(Path(self.uri).expanduser().resolve())
        self._gcs_client_factory = gcs_client or gcs_client_of(self.uri)
        self._gcs_client: Any = None
        self.layout = layout
        parsed = urlparse(self.uri)
        if parsed.scheme not in ("file", "gs", ""):
            raise LakeError(f"lake URI {uri!r}: use file:// or gs://")
        # Stripped, "gs://" is "gs:", which pyarrow reads as the root of GCS: the tables would be buckets.
        if parsed.scheme == "gs" and not parsed.hostname:
            raise LakeError(f"lake URI {uri!r} names no bucket: give gs://bucket/...")
        if filesystem is not None:
            self.fs, self.root = filesystem, self._path(self.uri)
        else:
            # A bare folder escaped into its URI: pasted in as it is, a '#' cut the path there, and '%20' read as a space.
            try:
                self.fs, self.root = filesystem_from_uri(self.uri if parsed.scheme else Path(self.uri).as_uri())
            except ValueError as exc:  # pyarrow's ArrowInvalid: "File URI cannot be relative: 'file:'", a host
                first = (str(exc).strip().splitlines() or [""])[0]
                raise LakeError(f"lake URI {uri!r} names no folder pyarrow can open ({first}): give a file:// URI "
                                "with an absolute path (file:///...), a gs://bucket/... URI, or a folder") from None
        self._gcs = self.fs.type_name == "gcs"
        # What uri_of builds on: the lake's URI without a user (gs://anonymous@...) or a query (?endpoint_override=...),
        # which only say how to open the store; appended to, a query swallowed the path ("...&scheme=http/t/...").
        self._base_uri = _without_user_or_query(self.uri) if parsed.scheme == "gs" else self.uri

    @classmethod
    def from_settings(cls, settings: Settings) -> Lake:
        """The lake of an environment (its URI and layout come from settings).

        A ``gs://`` lake with ``settings.storage.emulator_host`` set talks to that emulator anonymously
        (pyarrow's default GCS client would look for cloud credentials).
        """
        uri, emulator = settings.storage.lake_uri, settings.storage.emulator_host
        filesystem = None
        if uri.startswith("gs://") and emulator:
            scheme, _, host = emulator.partition("://")
            filesystem = pafs.GcsFileSystem(anonymous=True, scheme=scheme, endpoint_override=host,
                                            retry_time_limit=dt.timedelta(seconds=GCS_RETRY_LIMIT_S))

        def client() -> Any:
            from tenfold.storage import gcs_client

            return gcs_client(settings)

        return cls(uri, settings.storage.lake_layout, filesystem=filesystem, gcs_client=client)

    @contextlib.contextmanager
    def lock(self, path: str, *, what: str, timeout_s: float, stale_s: float) -> Iterator[Callable[[], None]]:
        """Hold the exclusive lock at ``path`` (a filesystem path in this lake) for ``what``: an ``flock`` on a
        local lake, a create-only object on GCS taken over after ``stale_s`` (:mod:`tenfold.data.locks`).
        Raises :class:`~tenfold.data.locks.LockTimeout` after ``timeout_s``. Yields ``still_held`` (see
        :mod:`tenfold.data.locks`): call it right before a step another writer must never overlap."""
        from tenfold.data.locks import file_lock, gcs_lock

        if not self._gcs:
            with file_lock(path, timeout_s=timeout_s, what=what) as still_held:
                yield still_held
            return
        bucket, _, name = path.partition("/")
        with gcs_lock(self._storage_client(), bucket, name, timeout_s=timeout_s, stale_s=stale_s,
                      what=what) as still_held:
            yield still_held

    def _storage_client(self) -> Any:
        """The google-cloud-storage client of a gs:// lake (its locks, its objects' stored checksums), built once."""
        if self._gcs_client is None:
            if self._gcs_client_factory is None:  # a GCS filesystem given for a lake whose URI is not gs://
                raise LakeError(f"lake {self.uri} is on GCS but its URI is not gs://: open it as gs://bucket/..., or "
                                "pass the storage client to use (gcs_client)")
            self._gcs_client = self._gcs_client_factory()
        return self._gcs_client

    @contextlib.contextmanager
    def exclusive(self, table: str, part: Partition, *,
                  timeout_s: float = PUBLISH_LOCK_TIMEOUT_S) -> Iterator[Callable[[], None]]:
        """Hold the partition's writer lock (``<partition>/_publish.lock``): what publishes, withdraws and
        quarantines it takes first, so that two writers never remove each other's data folder or temporary
        files. Raises :class:`PartitionLocked` after ``timeout_s``."""
        from tenfold.data.locks import LockLost, LockTimeout

        path = posixpath.join(self.partition_path(table, part), PUBLISH_LOCK)
        try:
            with self.lock(path, what=f"{table} partition {part.label} (one writer at a time)", timeout_s=timeout_s,
                           stale_s=PUBLISH_LOCK_STALE_S) as still_held:
                yield still_held
        except LockTimeout as exc:
            raise PartitionLocked(str(exc)) from None
        except LockLost as exc:
            raise PartitionLockLost(str(exc)) from None

    # --- layout -------------------------------------------------------------------------------------
    def _join(self, *parts: str) -> str:
        return posixpath.join(self.root, *parts)

    def exists(self, path: str) -> bool:
        """Whether anything is at ``path`` (a filesystem path in this lake): a file, or a folder (on GCS, a prefix
        that holds objects)."""
        return bool(self.fs.get_file_info(path).type != pafs.FileType.NotFound)

    def uri_of(self, path: str) -> str:
        """A filesystem path under the lake back to a URI that Spark and pyarrow both accept."""
        rel = posixpath.relpath(path, self.root)
        base = self._base_uri
        return f"{base.rstrip('/')}/{rel}" if rel != "." else base  # a lake at "/": "/t", not "//t"

    def table_path(self, table: str) -> str:
        return self._join(table)

    def partition_path(self, table: str, part: Partition) -> str:
        return self._join(table, part.path)

    def manifest_path(self, table: str, part: Partition) -> str:
        return self._join(table, part.path, MANIFEST)

    def staging_path(self, table: str, part: Partition, attempt: str | None = None) -> str:
        return self._join(self.layout.staging_dir(table, part.path, attempt or uuid.uuid4().hex[:12]))

    def quarantine_path(self, table: str, part: Partition, attempt: str) -> str:
        return self._join(self.layout.quarantine_dir(table, part.path, attempt))

    def quarantine_paths(self, table: str, part: Partition, attempt: str) -> Iterator[str]:
        """The quarantine folders of ``attempt`` in the order :meth:`quarantine` takes them (``attempt``, then
        ``attempt-2``, ``-3``...; endless)."""
        yield self.quarantine_path(table, part, attempt)
        for n in itertools.count(2):
            yield self.quarantine_path(table, part, f"{attempt}-{n}")

    # --- reading ------------------------------------------------------------------------------------
    def read_manifest(self, table: str, part: Partition) -> Manifest:
        path = self.manifest_path(table, part)
        try:
            with self.fs.open_input_stream(path) as stream:
                text = bytes(stream.read())  # decoded by from_json, which refuses bytes that are not UTF-8
        except FileNotFoundError as exc:
            raise MissingManifestError(
                f"{table} partition {part.label} has no {MANIFEST} manifest at {self.uri_of(path)}: it was never "
                "published or its job did not finish; run the pipeline for that month first"
            ) from exc
        manifest = Manifest.from_json(text, self.uri_of(path))
        if manifest.table != table or manifest.partition != part:
            raise CorruptManifestError(f"manifest {self.uri_of(path)} describes {manifest.table} {manifest.partition}")
        return manifest

    def content_digest(self, table: str, parts: Iterable[Partition]) -> str:
        """The identity of what ``parts`` of ``table`` hold now: a digest of each one's manifest content (rows,
        schema, each file's checksums), not of the run that published it, so the same data republished keeps it."""
        body = [[p.label, self.read_manifest(table, p).content] for p in parts]
        return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()

    def has_manifest(self, table: str, part: Partition) -> bool:
        return self.fs.get_file_info(self.manifest_path(table, part)).type == pafs.FileType.File

    def published_partitions(self, table: str) -> list[Partition]:
        """Partitions of ``table`` that carry a manifest, in time order."""
        selector = pafs.FileSelector(self.table_path(table), recursive=True, allow_not_found=True)
        found = []
        for info in self.fs.get_file_info(selector):
            if info.base_name != MANIFEST:
                continue
            folder = posixpath.relpath(posixpath.dirname(info.path), self.table_path(table))
            rel = folder.split("/")
            if len(rel) == 2 and rel[0].startswith("year=") and rel[1].startswith("month="):
                try:
                    part = Partition(int(rel[0][5:]), int(rel[1][6:]))
                except ValueError:
                    part = None
                # Only a folder spelled as the month's own (a copy such as month=1.bak, or month=13, is none): every
                # reader of the table lists it here, and one stray folder refused them all with a bare ValueError.
                if part is None or part.path != folder:
                    log.warning("%s: %s is not a partition folder (year=YYYY/month=M); skipped, remove or rename it",
                                table, self.uri_of(posixpath.dirname(info.path)))
                    continue
                found.append(part)
        return sorted(found)

    def files(self, table: str, part: Partition, *, verify: bool = False, manifest: Manifest | None = None) -> list[str]:
        """The data files a partition's manifest lists (``manifest``: one read already, so the files are of the build
        it names, not of one published since), as filesystem paths.

        ``verify`` checks each file's size and content checksum against the manifest (CRC32C: GCS's own
        value for the stored object on ``gs://``, computed over the bytes on ``file://``) and raises
        :class:`CorruptFileError` naming the file; it moves nothing (the quality gate, which owns the
        alert, quarantines the partition).
        """
        manifest = manifest or self.read_manifest(table, part)
        paths = self._data_paths(table, part, manifest)
        if verify:
            for entry, path in zip(manifest.files, paths, strict=True):
                info = self.fs.get_file_info(path)
                if info.type != pafs.FileType.File or info.size != entry.bytes:
                    what = (
                        f"is missing (its manifest lists it with {entry.bytes} bytes: removed after it was published)"
                        if info.type != pafs.FileType.File else
                        f"has {info.size} bytes, its manifest says {entry.bytes} (wrong size: truncated or replaced "
                        "after it was published)"
                    )
                    raise CorruptFileError(
                        f"{table} partition {part.label}: {self.uri_of(path)} {what}; re-publish the partition by "
                        f"re-running the pipeline that builds {table} for {part.label}"
                    )
                kind, expected = ("CRC32C", entry.crc32c) if entry.crc32c is not None else ("sha256", entry.sha256)
                actual = self.stored_crc32c(path) if entry.crc32c is not None else _digests(self.fs, path)[0]
                if actual != expected:
                    raise CorruptFileError(self._mismatch(table, part, path, kind, actual, expected, size=entry.bytes,
                                                          expected_size=entry.bytes))
        return paths

    def stored_crc32c(self, path: str) -> str:
        """A file's CRC32C as stored: the value GCS keeps for the object on ``gs://`` (no download), else
        computed over the file's bytes."""
        if self._gcs:
            # The object's metadata, by the storage client: pyarrow's metadata() keys are str (a bytes key found
            # nothing, so every check downloaded and hashed the whole file), and opening the file to read them
            # starts a download of its data too.
            bucket, _, name = path.partition("/")
            blob = self._storage_client().bucket(bucket).get_blob(name)
            if blob is None:
                raise FileNotFoundError(path)
            if blob.crc32c:
                return str(blob.crc32c)
        return _digests(self.fs, path)[1]

    def read_table(self, table: str, parts: Iterable[Partition], columns: list[str] | None = None) -> pa.Table:
        """Read published partitions only (each must have a manifest), checking the schema hash.

        Every file's bytes are checked against the manifest's checksum before they are parsed; a file that
        differs is refused with :class:`CorruptFileError` after its partition is withdrawn to quarantine
        (:meth:`withdraw`), so no reader sees it again and the pipeline that builds the month rebuilds it.
        """
        tables = []
        for part in parts:
            tables += self._read_partition(table, part, columns)
        if not tables:
            raise MissingManifestError(f"no published partitions of {table} were asked for")
        return pa.concat_tables(tables, promote_options="default")

    def _read_partition(self, table: str, part: Partition, columns: list[str] | None) -> list[pa.Table]:
        # A publish that lands while we read removes the folder of the manifest we started from; its own
        # manifest is whole by then, so read that one instead (publishes of one month are minutes apart).
        for _ in range(3):
            manifest = self.read_manifest(table, part)
            try:
                tables = [pq.read_table(pa.BufferReader(self._read_verified(table, part, manifest, entry, path)),
                                        columns=columns)
                          for entry, path in zip(manifest.files, self._data_paths(table, part, manifest), strict=True)]
            except _Republished:
                continue
            if columns is None and tables and schema_hash(tables[-1].schema) != manifest.schema_hash:
                raise CorruptManifestError(f"{table} {part.label}: data schema does not match its manifest")
            return tables
        raise LakeError(f"{table} partition {part.label} was republished three times while it was read; read it again")

    def _republished(self, table: str, part: Partition, manifest: Manifest) -> bool:
        """Whether the partition's manifest changed since ``manifest`` was read: another publish, or a withdrawal (no
        manifest now), which the retry then reports as not published rather than as a file gone missing."""
        try:
            return self.read_manifest(table, part).data_dir != manifest.data_dir
        except MissingManifestError:
            return True
        except LakeError:
            return False

    def _data_paths(self, table: str, part: Partition, manifest: Manifest) -> list[str]:
        base = self._join(table, part.path, manifest.data_dir)
        return [posixpath.join(base, f.name) for f in manifest.files]

    def verified_files(self, table: str, part: Partition, manifest: Manifest) -> Iterator[tuple[str, bytes]]:
        """Each data file ``manifest`` (the partition's, read already) lists, as (filesystem path, bytes): downloaded
        whole and checked against the manifest's checksum, as :meth:`read_table` reads them, for a caller that parses
        them itself (the quality gate). A download damaged in transit raises :class:`DamagedInTransit`; a stored file
        that differs from its manifest withdraws the partition and raises :class:`CorruptFileError`; a partition
        published again (or withdrawn) while it was read raises :class:`LakeError`. An ``OSError`` of the download
        itself (no file is missing: that is a CorruptFileError) is raised as it is."""
        for entry, path in zip(manifest.files, self._data_paths(table, part, manifest), strict=True):
            try:
                data = self._read_verified(table, part, manifest, entry, path)
            except _Republished:
                raise LakeError(f"{table} partition {part.label} was published again or withdrawn while it was read; "
                                "read it again") from None
            yield path, data

    def _read_verified(self, table: str, part: Partition, manifest: Manifest, entry: FileEntry, path: str) -> bytes:
        try:
            with self.fs.open_input_stream(path) as stream:
                data = bytes(stream.read())
        except OSError as exc:
            if not isinstance(exc, FileNotFoundError):
                # GCS's client checks a download against the object's hashes itself and refuses a damaged one with
                # DATA_LOSS: with the stored object intact it is this download's fault, not the data's (the gate
                # took it for an unreadable batch).
                if (self._gcs and "DATA_LOSS" in str(exc) and entry.crc32c is not None
                        and self.stored_crc32c(path) == entry.crc32c):
                    raise DamagedInTransit(
                        f"{table} partition {part.label}: the download of {self.uri_of(path)} was damaged in transit "
                        "(its stored CRC32C matches the manifest); retry the read") from exc
                raise
            if self._republished(table, part, manifest):
                raise _Republished from exc
            raise CorruptFileError(
                f"{table} partition {part.label}: {self.uri_of(path)}, listed by its manifest, is missing; re-publish "
                f"the partition by re-running the pipeline that builds {table} for {part.label}"
            ) from exc
        if entry.crc32c is not None:
            kind, expected, actual = "CRC32C", entry.crc32c, crc32c_of(data)
        else:  # a version 1 manifest
            kind, expected, actual = "sha256", entry.sha256, hashlib.sha256(data).hexdigest()
        if actual == expected and len(data) == entry.bytes:
            return data
        if self._gcs and entry.crc32c is not None and self.stored_crc32c(path) == entry.crc32c:
            # The stored object is intact; only this download was damaged. Nothing to quarantine.
            raise DamagedInTransit(f"{table} partition {part.label}: the download of {self.uri_of(path)} was damaged in "
                            "transit (its stored CRC32C matches the manifest); retry the read")
        what = self._mismatch(table, part, path, kind, actual, expected, size=len(data), expected_size=entry.bytes)
        reason = {"reason": "checksum mismatch", "table": table, "partition": part.label, "file": self.uri_of(path),
                  "check": kind, "expected": expected, "actual": actual, "bytes": len(data),
                  "expected_bytes": entry.bytes}

        def mended() -> bool:
            """The operator's repair (the pipeline run again) publishes identical content under the same folder name:
            re-checked under the lock, a mended file is read again, not withdrawn with the month."""
            try:
                return self.stored_crc32c(path) == entry.crc32c
            except FileNotFoundError:  # gone under a manifest that still names it: not mended
                return False

        try:
            where = self.withdraw(table, part, f"corrupt-{uuid.uuid4().hex[:12]}", reason, data_dir=manifest.data_dir,
                                  repaired=mended if entry.crc32c is not None else None)
        except (OSError, pa.ArrowException, LakeError) as exc:
            # e.g. a reader allowed to read but not to move objects, or to take the partition's writer lock (GCS
            # answers 403: PartitionLocked): the checksum refusal stands, with the withdrawal that did not happen.
            raise CorruptFileError(
                f"{what}; quarantining it failed ({exc}): delete {self.uri_of(self.manifest_path(table, part))} if it "
                "is still there, so that no reader uses the partition until it is re-published") from exc
        if where is None:  # republished while we read: the file we read is no longer the partition's
            raise _Republished
        raise CorruptFileError(f"{what}; the partition is withdrawn (its manifest and data moved to {where})")

    def _mismatch(self, table: str, part: Partition, path: str, kind: str, actual: str, expected: str,
                  *, size: int, expected_size: int) -> str:
        sizes = "the same size as published" if size == expected_size else f"{size} bytes, published as {expected_size}"
        return (f"{table} partition {part.label}: {self.uri_of(path)} is corrupt: its {kind} is {actual}, its manifest "
                f"says {expected} ({sizes}: its content changed after it was published); re-publish the partition "
                f"by re-running the pipeline that builds {table} for {part.label}")

    # --- writing ------------------------------------------------------------------------------------
    def write_json(self, path: str, body: dict[str, Any]) -> None:
        """Write a small JSON document under the lake atomically (readers see the old one or the new one)."""
        self._write_atomic(path, json.dumps(body, indent=2, default=str).encode())

    def _write_atomic(self, path: str, data: bytes, *, durable: bool = False) -> None:
        tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
        make_dirs(self.fs, posixpath.dirname(path))
        with self._removed_on_failure(tmp):
            with self.fs.open_output_stream(tmp) as out:
                out.write(data)
            if durable:
                self._on_disk(tmp)
            self.fs.move(tmp, path)
        if durable:
            self._on_disk(posixpath.dirname(path))

    @contextlib.contextmanager
    def _removed_on_failure(self, tmp: str) -> Iterator[None]:
        """A write through ``tmp`` that fails (a full disk: ENOSPC, EFBIG) removes what it left there, so each retry
        does not leave another partial copy, holding the space freed since, until a publish of the month succeeds."""
        try:
            yield
        except BaseException:
            with contextlib.suppress(OSError):
                if self.fs.get_file_info(tmp).type == pafs.FileType.File:
                    self.fs.delete_file(tmp)
            raise

    def _on_disk(self, path: str) -> None:
        """On a local lake, flush a file's bytes, or a folder's entries, to disk (GCS commits each object whole).

        A publish flushes every data file and its folder before the manifest names them, and the manifest's rename
        after: a power loss (not only a crash) then never leaves a manifest naming files that never reached the
        disk, with the month they replaced already removed."""
        if not self._gcs and isinstance(self.fs, pafs.LocalFileSystem):
            fsync_dir(path)

    def _staged_metadata(self, path: str) -> pq.FileMetaData:
        """A staged file's Parquet footer; a file that has none (truncated, or not Parquet) refused naming it."""
        try:
            return pq.read_metadata(path, filesystem=self.fs)
        except pa.ArrowInvalid as exc:
            raise LakeError(f"{self.uri_of(path)} is not a readable Parquet file ({exc}); nothing was published: "
                            "stage the batch again (re-run the job that writes it)") from exc

    def _staged_files(self, staged: str) -> list[pafs.FileInfo]:
        return sorted(
            (i for i in self.fs.get_file_info(pafs.FileSelector(staged, allow_not_found=True))
             if i.type == pafs.FileType.File and i.base_name.endswith(".parquet")),
            key=lambda i: i.base_name,
        )

    def remainder_of(self, staged_dir: str, published: Collection[str], files: int, *,
                     staged_rows: int | None = None) -> bool:
        """Whether ``staged_dir`` holds only part of a batch that was published as ``files`` files with the sha256
        digests ``published`` (a publish cut short while it dropped its staging, file by file): fewer files (with
        ``staged_rows``, the rows the batch was validated with: fewer rows), each one of them by content. None left
        counts too; any other file makes it a batch of its own."""
        left = self._staged_files(self._path(staged_dir))
        # A whole batch first, from the files' metadata: a full staging (the usual case) is never read through here,
        # since publish reads and hashes it next anyway.
        whole = (len(left) >= files if staged_rows is None
                 else sum(self._staged_metadata(i.path).num_rows for i in left) >= staged_rows)
        return not whole and all(_digests(self.fs, i.path)[0] in published for i in left)

    def published_already(self, table: str, part: Partition, staged_dir: str, extra: dict[str, Any], *,
                          staged_rows: int | None = None) -> bool:
        """True when ``staged_dir`` is what a publish leaves when it is cut short while it drops its staging folder
        (file by file): the partition's manifest carries ``extra``, every data file left (none counts too) is one
        of its files by content, and they hold fewer than ``staged_rows`` (the rows the batch was validated with),
        or fewer files than published. Publishing that remainder again would replace the month with part of
        itself; a staging folder with any other file, or all the rows it was validated with, is a batch."""
        current = self._current_manifest(table, part)
        if current is None or current.extra != extra:
            return False
        return self.remainder_of(staged_dir, {f.sha256 for f in current.files}, len(current.files),
                                 staged_rows=staged_rows)

    def publish(
        self,
        table: str,
        part: Partition,
        staged_dir: str,
        *,
        run_id: str,
        extra: dict[str, Any] | None = None,
    ) -> Manifest:
        """Publish the Parquet files in ``staged_dir`` (a path or URI) as ``table``'s ``part``.

        Idempotent: the same files give the same data folder and the same manifest content; when the
        visible partition already holds exactly these files (and ``extra``), nothing is written at all.
        Order is what makes it atomic: every data file lands whole (and verified) in a new folder first,
        the manifest is replaced last, and only then are older folders removed. All of it holds the
        partition's writer lock (:meth:`exclusive`): a second writer (a zombie task beside its retry, a CLI
        run beside the DAG's) waits rather than removing this one's folder before its manifest names it.
        """
        entries, infos, schema = self._staged_entries(staged_dir)
        data_dir = self._data_dir_name(table, part, entries)
        with self.exclusive(table, part) as still_held:
            return self._publish_locked(table, part, data_dir, entries, infos, schema, run_id, extra, still_held)

    def would_replace(self, table: str, part: Partition, staged_dir: str) -> bool:
        """Whether publishing ``staged_dir`` would replace a valid published ``part`` with other content (a publish
        removes the replaced data: a caller that must not lose a good month checks the new content first)."""
        current = self._current_manifest(table, part)
        if current is None:
            return False
        entries, _, _ = self._staged_entries(staged_dir)
        return current.data_dir != self._data_dir_name(table, part, entries) or current.files != tuple(entries)

    def would_replace_rows(self, table: str, part: Partition, staged_dir: str) -> bool:
        """Whether publishing ``staged_dir`` would replace a valid published ``part`` with other rows: other bytes
        (:meth:`would_replace`) holding other rows. The same rows written by another pyarrow (its version is in every
        file, and its compressor's output may change) are other bytes, not other content."""
        if not self.would_replace(table, part, staged_dir):
            return False
        try:
            published = self.read_table(table, [part])
        except LakeError:  # corrupt (and now withdrawn) or gone meanwhile: nothing good to keep
            return True
        staged = pa.concat_tables([pq.read_table(i.path, filesystem=self.fs)
                                   for i in self._staged_files(self._path(staged_dir))])
        return not published.equals(staged)

    def _staged_entries(self, staged_dir: str) -> tuple[list[FileEntry], list[pafs.FileInfo], str]:
        """The manifest entries, files and schema hash of a staged batch (its files read and hashed)."""
        staged = self._path(staged_dir)
        infos = self._staged_files(staged)
        if not infos:
            raise LakeError(f"nothing to publish: {self.uri_of(staged)} holds no .parquet files")
        entries, schemas = [], set()
        for n, info in enumerate(infos):
            meta = self._staged_metadata(info.path)
            schemas.add(schema_hash(meta.schema.to_arrow_schema()))
            sha, crc = _digests(self.fs, info.path)
            entries.append(FileEntry(f"part-{n:05d}.parquet", meta.num_rows, info.size, sha, crc))
        if len(schemas) != 1:
            raise LakeError(f"{self.uri_of(staged)}: files disagree on the schema; refusing to publish a mix")
        return entries, infos, schemas.pop()

    def _publish_locked(self, table: str, part: Partition, data_dir: str, entries: list[FileEntry],
                        infos: list[pafs.FileInfo], schema: str, run_id: str, extra: dict[str, Any] | None,
                        still_held: Callable[[], None]) -> Manifest:
        current = self._current_manifest(table, part)
        if current is not None and current.data_dir == data_dir and current.files == tuple(entries) \
                and current.extra == (extra or {}):
            # Same content already visible: leave the manifest (and its run id) as it is. A publish killed after
            # its commit left the replaced folder behind: this retry removes it, as that publish would have.
            still_held()
            self._collect_garbage(table, part, keep=data_dir)
            return current
        target = self._join(table, part.path, data_dir)
        for entry, info in zip(entries, infos, strict=True):
            self._land(info.path, posixpath.join(target, entry.name), entry)
        manifest = Manifest(
            table=table,
            partition=part,
            data_dir=data_dir,
            rows=sum(e.rows for e in entries),
            schema_hash=schema,
            files=tuple(entries),
            run_id=run_id,
            created_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            extra=extra or {},
        )
        still_held()  # a writer whose lock was taken over must not commit: the other's cleanup removes its folder
        self._commit(manifest)
        still_held()  # nor remove folders: the other writer's data may be among them
        self._collect_garbage(table, part, keep=data_dir)
        return manifest

    def _data_dir_name(self, table: str, part: Partition, entries: list[FileEntry]) -> str:
        """The data folder is named by its content, so new data never lands in the folder readers use."""
        return f"data-{hashlib.sha256(''.join(e.sha256 for e in entries).encode()).hexdigest()[:16]}"

    def _land(self, source: str, dest: str, entry: FileEntry) -> None:
        """Copy one data file to its final name through a temporary one, and check what was stored."""
        existing = self.fs.get_file_info(dest)
        if existing.type == pafs.FileType.File and existing.size == entry.bytes \
                and self.stored_crc32c(dest) == entry.crc32c:
            return  # a retry after a partial publish: this file already landed whole
        folder = posixpath.dirname(dest)
        created = not self.exists(folder)
        make_dirs(self.fs, folder)
        if created:
            self._on_disk(posixpath.dirname(folder))  # the data folder's own entry in the partition's folder
        tmp = f"{dest}.tmp-{uuid.uuid4().hex[:8]}"
        with self._removed_on_failure(tmp):
            self.fs.copy_file(source, tmp)
            self._on_disk(tmp)
            self.fs.move(tmp, dest)
        self._on_disk(folder)
        if (stored := self.stored_crc32c(dest)) != entry.crc32c:
            raise LakeError(f"{self.uri_of(dest)}: stored CRC32C {stored} differs from the staged file's "
                            f"{entry.crc32c} (the copy was damaged); nothing was published: retry the task")

    def _commit(self, manifest: Manifest) -> None:
        """Replace the partition's manifest: the single step that makes the new data visible (on disk when it
        returns, after the data it names)."""
        self._write_atomic(self.manifest_path(manifest.table, manifest.partition), manifest.to_json().encode(),
                           durable=True)

    def _current_manifest(self, table: str, part: Partition) -> Manifest | None:
        try:
            manifest = self.read_manifest(table, part)
            self.files(table, part, verify=True)
        except LakeError:
            return None  # nothing valid published yet: publish normally, which repairs it
        return manifest

    def _collect_garbage(self, table: str, part: Partition, keep: str) -> None:
        """Remove data folders of earlier publishes, and temporary files a killed publish left behind;
        only the manifest's folder is ever read."""
        # And never the folder the manifest names now: a writer whose lock was taken over while it stalled past its
        # check would otherwise delete the data of the publish that replaced its own.
        try:
            live = self.read_manifest(table, part).data_dir
        except LakeError:
            live = keep
        selector = pafs.FileSelector(self.partition_path(table, part), allow_not_found=True)
        for info in self.fs.get_file_info(selector):
            if info.type == pafs.FileType.Directory and info.base_name.startswith("data-") \
                    and info.base_name not in (keep, live):
                # A folder carrying a refusal is a withdrawal killed before it moved it (withdraw writes the verdict
                # into it first): it goes to quarantine, as that withdrawal meant, never deleted with its evidence.
                # A move this writer may not make (the withdrawal was another account's, with another quarantine
                # folder to write) is left to a later clean-up: raised, it failed a publish that has already
                # committed, and every publish of the month after it, before the rest of this clean-up.
                try:
                    resumed = self.resume_quarantine(info.path)
                except (OSError, pa.ArrowException) as exc:
                    log.warning("could not move %s to the quarantine its refusal marker (%s) names (%s): left where "
                                "it is, unpublished; give this writer write access to that quarantine folder, and "
                                "its next publish of the partition finishes the move",
                                self.uri_of(info.path), REFUSING, exc)
                    continue
                if resumed is None:
                    self._delete_tree(info.path)
            elif info.type == pafs.FileType.File and info.base_name.startswith(f"{MANIFEST}.tmp-"):
                self.fs.delete_file(info.path)
        kept = pafs.FileSelector(self._join(table, part.path, keep), allow_not_found=True)
        for info in self.fs.get_file_info(kept):
            if info.type == pafs.FileType.File and ".tmp-" in info.base_name:
                self.fs.delete_file(info.path)

    def withdraw(
        self, table: str, part: Partition, key: str, reason: dict[str, Any], *, data_dir: str | None = None,
        repaired: Callable[[], bool] | None = None,
    ) -> str | None:
        """Unpublish a partition: remove its manifest, then move its data folder to quarantine under ``key``.

        The manifest goes first, so from that instant no reader sees the data; what it said is kept in the
        quarantine reason, written into the data folder before the manifest goes (a withdrawal killed after that is
        finished by its retry, or by the next publish's clean-up). With ``data_dir``, only a manifest that still
        names that folder is withdrawn (``None`` is returned when a publish replaced it meanwhile); with
        ``repaired``, nothing is withdrawn (None) when it returns True under the lock: a publish of the same content,
        which keeps the folder's name, mended the file while the caller waited for the lock. Returns the quarantine
        URI.
        """
        with self.exclusive(table, part) as still_held:
            return self._withdraw_locked(table, part, key, reason, data_dir, still_held, repaired)

    def _withdraw_locked(self, table: str, part: Partition, key: str, reason: dict[str, Any],
                         data_dir: str | None, still_held: Callable[[], None],
                         repaired: Callable[[], bool] | None = None) -> str | None:
        path = self.manifest_path(table, part)
        try:
            with self.fs.open_input_stream(path) as stream:
                text = stream.read().decode(errors="replace")
        except FileNotFoundError:
            text = ""
        if not text and (resumed := self._resume_withdrawal(table, part, key, data_dir)) is not None:
            return resumed  # a withdrawal killed after it removed the manifest (this one's first try): finished now
        if data_dir is not None:
            try:
                if Manifest.from_json(text, self.uri_of(path)).data_dir != data_dir:
                    return None
            except CorruptManifestError:
                return None
        elif text:  # the folder the manifest names goes to quarantine too (it stayed, and the next publish deleted it)
            with contextlib.suppress(CorruptManifestError):
                data_dir = Manifest.from_json(text, self.uri_of(path)).data_dir
        if repaired is not None and repaired():  # the same folder, mended meanwhile
            return None
        still_held()
        source = self._join(table, part.path, data_dir) if data_dir else self.partition_path(table, part) + "/.none"
        reason = {**reason, "manifest": text}
        # The verdict, with the manifest's text (the only record of what was withdrawn), goes into the data folder
        # before the manifest is removed: a withdrawal killed in between leaves a folder that says where it goes
        # (finished by the next publish's clean-up, or this withdrawal's retry), not unnamed data the next publish
        # deletes.
        dest = self.mark_refused(table, part, source, key, reason, best_effort=True)
        if text:
            self.fs.delete_file(path)
        return self._move_refused(source, dest, reason)

    def _resume_withdrawal(self, table: str, part: Partition, key: str, data_dir: str | None) -> str | None:
        """Finish a withdrawal of ``part`` killed after it removed the manifest: the data folder (``data_dir``, or any)
        that still carries its verdict goes where the verdict says, or the quarantine folder under ``key`` that the
        whole folder reached gets its reason file. Returns that quarantine's URI, or None when there is none."""
        taken = list(itertools.takewhile(self.exists, self.quarantine_paths(table, part, key)))
        selector = pafs.FileSelector(self.partition_path(table, part), allow_not_found=True)
        folders = [i.path for i in self.fs.get_file_info(selector) if i.type == pafs.FileType.Directory
                   and i.base_name.startswith("data-") and data_dir in (None, i.base_name)]
        for folder in folders or [self.partition_path(table, part) + "/.none"]:
            if (resumed := self.resume_quarantine(folder, taken)) is not None:
                return resumed[0]
        return None

    def quarantine(self, table: str, part: Partition, staged_dir: str, attempt: str, reason: dict[str, Any]) -> str:
        """Move a staged batch aside with the reason it was refused; returns the quarantine URI.

        Under ``attempt``, or ``attempt-2``, ``-3``... when that is taken (the same run refused again after
        its DAG run was cleared): an earlier batch and its reason are kept, never merged with or moved into.
        """
        staged = self._path(staged_dir)
        return self._move_refused(staged, self.mark_refused(table, part, staged, attempt, reason), reason)

    def mark_refused(self, table: str, part: Partition, staged_dir: str, attempt: str, reason: dict[str, Any], *,
                     best_effort: bool = False) -> str:
        """Pick the quarantine folder of a refused batch (see :meth:`quarantine`) and write the verdict into the batch
        itself, naming that folder; returns it. On GCS the move goes object by object: a move cut short then leaves a
        remainder that says it was refused (resume_quarantine), never one that looks staged.

        Public for withdrawals outside the lake (the quality gate's): a published data folder marked before its
        manifest is removed is moved to quarantine by the next publish's clean-up if the withdrawal is killed in
        between, never deleted. The folder picked is not created, so a :meth:`quarantine` of the same batch under the
        same ``attempt`` right after picks it again.

        ``best_effort`` (a withdrawal, before it removes the manifest): a marker that cannot be written (a full disk,
        no permission) is logged and the withdrawal goes on. Raised, it kept the refused or corrupt month published,
        which removing the manifest needs no space for."""
        staged = self._path(staged_dir)
        dest = next(d for d in self.quarantine_paths(table, part, attempt)
                    if not self.exists(d))
        try:
            make_dirs(self.fs, posixpath.dirname(dest))
            if self.fs.get_file_info(staged).type == pafs.FileType.Directory:
                self.write_json(posixpath.join(staged, REFUSING), {"quarantine": dest, "reason": reason})
        except (OSError, pa.ArrowException) as exc:
            if not best_effort:
                raise
            log.warning("could not mark %s as refused before withdrawing it (%s); withdrawing it all the same",
                        self.uri_of(staged), exc)
        return dest

    def _move_refused(self, staged: str, dest: str, reason: dict[str, Any]) -> str:
        if self.fs.get_file_info(staged).type == pafs.FileType.Directory:
            self._move_tree(staged, dest)
        return self._quarantined(dest, reason)

    def _quarantined(self, dest: str, reason: dict[str, Any]) -> str:
        self.write_json(posixpath.join(dest, "_QUARANTINED.json"), reason)
        with contextlib.suppress(FileNotFoundError):  # moved along with the batch: the reason file says it all now
            self.fs.delete_file(posixpath.join(dest, REFUSING))
        return self.uri_of(dest)

    def resume_quarantine(self, staged_dir: str, quarantined: str | Sequence[str] | None = None
                          ) -> tuple[str, dict[str, Any]] | None:
        """Finish a :meth:`quarantine` that was cut short (the process killed while it moved the batch): what is
        left of the batch goes where the rest went, with its reason; a batch moved whole whose reason file was not
        written yet (its marker, moved last, is in one of ``quarantined``: ``attempt``, ``attempt-2``...) gets it.
        Returns (the quarantine's URI, the reason), or None when none holds a refusal left unfinished."""
        staged = self._path(staged_dir)
        folders = [quarantined] if isinstance(quarantined, str) else list(quarantined or ())
        for folder in (staged, *(self._path(f) for f in folders)):
            marker = posixpath.join(folder, REFUSING)
            if self.fs.get_file_info(marker).type == pafs.FileType.File:
                break
        else:
            return None
        with self.fs.open_input_stream(marker) as stream:
            body = json.loads(stream.read().decode())
        dest, reason = str(body["quarantine"]), dict(body["reason"])
        if folder == staged:
            self._move_tree(staged, dest)
        return self._quarantined(dest, reason), reason

    def _move_tree(self, source: str, dest: str) -> None:
        if not self._gcs and not self.exists(dest):
            self.fs.move(source, dest)
            return
        # GCS has no folders to rename (pyarrow refuses to move one): move each object under the prefix, the
        # refusal marker last (so whatever is left is still marked). Locally: the rest of a move cut short.
        infos = [i for i in self.fs.get_file_info(pafs.FileSelector(source, recursive=True))
                 if i.type == pafs.FileType.File]
        for info in sorted(infos, key=lambda i: i.base_name == REFUSING):
            target = posixpath.join(dest, posixpath.relpath(info.path, source))
            make_dirs(self.fs, posixpath.dirname(target))
            self.fs.move(info.path, target)
        if not self._gcs:
            self.fs.delete_dir(source)

    def _delete_tree(self, path: str) -> None:
        if not self._gcs:
            self.fs.delete_dir(path)
            return
        # A GCS "folder" is a name prefix, usually without a marker object for pyarrow's delete_dir to remove.
        self.fs.delete_dir_contents(path, missing_dir_ok=True)
        if self.fs.get_file_info(path).type == pafs.FileType.Directory:
            self.fs.delete_dir(path)

    def discard(self, staged_dir: str) -> None:
        path = self._path(staged_dir)
        if self.fs.get_file_info(path).type == pafs.FileType.Directory:
            self._delete_tree(path)

    def _path(self, path_or_uri: str) -> str:
        if path_or_uri.startswith("gs://"):
            # Parsed by hand: pyarrow's from_uri would build a GCS client (and look for credentials) just to do it.
            # The bucket and path only: a user (anonymous@) or a query names no folder.
            return _without_user_or_query(path_or_uri)[len("gs://"):].rstrip("/")
        if urlparse(path_or_uri).scheme == "file":
            # Also the single-slash form (file:/tmp/lake, as Spark prints it, and uri_of of such a lake), which
            # pyarrow's filesystem took for a path and refused as a URI.
            return str(file_uri_path(path_or_uri))
        if "://" in path_or_uri:
            _, path = filesystem_from_uri(path_or_uri)
            return path
        return path_or_uri
