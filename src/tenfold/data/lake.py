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
at any point leaves the visible partition as it was. Publishing the same content twice gives the
same folder and the same manifest body, so a retried or backfilled task never duplicates rows.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import posixpath
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from tenfold.config.settings import LakeLayout
from tenfold.data.partition import Partition, month_range

if TYPE_CHECKING:
    from tenfold.config import Settings

__all__ = ["Lake", "Manifest", "Partition", "month_range", "schema_hash"]

MANIFEST = "_SUCCESS"
MANIFEST_VERSION = 1


class LakeError(RuntimeError):
    """A lake operation cannot go on; the message names what is wrong and what to do."""


class MissingManifestError(LakeError):
    """A partition has no ``_SUCCESS`` manifest: it was never published (or is being written)."""


class CorruptManifestError(LakeError):
    """A manifest exists but cannot be read, or does not match the files it lists."""


def schema_hash(schema: pa.Schema) -> str:
    """A stable digest of column names and types (not metadata), for readers to check."""
    canon = ";".join(f"{f.name}:{f.type}:{int(f.nullable)}" for f in schema)
    return hashlib.sha256(canon.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class FileEntry:
    name: str
    rows: int
    bytes: int
    sha256: str


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
            "files": [f.__dict__ for f in self.files],
            "run_id": self.run_id,
            "created_at": self.created_at,
            "extra": self.extra,
        }
        return json.dumps(body, indent=2, sort_keys=True, default=str)

    @classmethod
    def from_json(cls, text: str, where: str) -> Manifest:
        try:
            body = json.loads(text)
            if body.get("version") != MANIFEST_VERSION:
                raise ValueError(f"unsupported manifest version {body.get('version')!r}")
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
        except (ValueError, KeyError, TypeError) as exc:
            raise CorruptManifestError(f"manifest {where} is unreadable ({exc}); re-publish the partition") from exc

    @property
    def content(self) -> dict[str, Any]:
        """What two publishes of the same data agree on (no run id or timestamp)."""
        return {"rows": self.rows, "schema_hash": self.schema_hash, "files": [f.__dict__ for f in self.files]}


def _sha256(fs: pafs.FileSystem, path: str) -> str:
    digest = hashlib.sha256()
    with fs.open_input_stream(path) as stream:
        while chunk := stream.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


class Lake:
    """Tables of Parquet partitions under one root URI, published atomically with manifests."""

    def __init__(self, uri: str, layout: LakeLayout = LakeLayout()) -> None:  # noqa: B008 (frozen, shared default)
        self.uri = uri.rstrip("/")
        self.layout = layout
        parsed = urlparse(self.uri)
        if parsed.scheme not in ("file", "gs", ""):
            raise LakeError(f"lake URI {uri!r}: use file:// or gs://")
        self.fs, self.root = pafs.FileSystem.from_uri(self.uri if parsed.scheme else f"file://{self.uri}")

    @classmethod
    def from_settings(cls, settings: Settings) -> Lake:
        """The lake of an environment (its URI and layout come from settings)."""
        return cls(settings.storage.lake_uri, settings.storage.lake_layout)

    # --- layout -------------------------------------------------------------------------------------
    def _join(self, *parts: str) -> str:
        return posixpath.join(self.root, *parts)

    def uri_of(self, path: str) -> str:
        """A filesystem path under the lake back to a URI that Spark and pyarrow both accept."""
        rel = posixpath.relpath(path, self.root)
        return f"{self.uri}/{rel}" if rel != "." else self.uri

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

    # --- reading ------------------------------------------------------------------------------------
    def read_manifest(self, table: str, part: Partition) -> Manifest:
        path = self.manifest_path(table, part)
        try:
            with self.fs.open_input_stream(path) as stream:
                text = stream.read().decode()
        except FileNotFoundError as exc:
            raise MissingManifestError(
                f"{table} partition {part.label} has no {MANIFEST} manifest at {self.uri_of(path)}: it was never "
                "published or its job did not finish; run the pipeline for that month first"
            ) from exc
        manifest = Manifest.from_json(text, self.uri_of(path))
        if manifest.table != table or manifest.partition != part:
            raise CorruptManifestError(f"manifest {self.uri_of(path)} describes {manifest.table} {manifest.partition}")
        return manifest

    def has_manifest(self, table: str, part: Partition) -> bool:
        return self.fs.get_file_info(self.manifest_path(table, part)).type == pafs.FileType.File

    def published_partitions(self, table: str) -> list[Partition]:
        """Partitions of ``table`` that carry a manifest, in time order."""
        selector = pafs.FileSelector(self.table_path(table), recursive=True, allow_not_found=True)
        found = []
        for info in self.fs.get_file_info(selector):
            if info.base_name != MANIFEST:
                continue
            rel = posixpath.relpath(posixpath.dirname(info.path), self.table_path(table)).split("/")
            if len(rel) == 2 and rel[0].startswith("year=") and rel[1].startswith("month="):
                found.append(Partition(int(rel[0][5:]), int(rel[1][6:])))
        return sorted(found)

    def files(self, table: str, part: Partition, *, verify: bool = False) -> list[str]:
        """The data files a partition's manifest lists, as filesystem paths; ``verify`` checks sizes."""
        manifest = self.read_manifest(table, part)
        base = self._join(table, part.path, manifest.data_dir)
        paths = [posixpath.join(base, f.name) for f in manifest.files]
        if verify:
            for entry, path in zip(manifest.files, paths, strict=True):
                info = self.fs.get_file_info(path)
                if info.type != pafs.FileType.File or info.size != entry.bytes:
                    raise CorruptManifestError(
                        f"{table} {part.label}: {self.uri_of(path)} is missing or has the wrong size; re-publish"
                    )
        return paths

    def read_table(self, table: str, parts: Iterable[Partition], columns: list[str] | None = None) -> pa.Table:
        """Read published partitions only (each must have a manifest), checking the schema hash."""
        tables = []
        for part in parts:
            manifest = self.read_manifest(table, part)
            for path in self.files(table, part):
                t = pq.read_table(path, filesystem=self.fs, columns=columns)
                tables.append(t)
            if columns is None and tables and schema_hash(tables[-1].schema) != manifest.schema_hash:
                raise CorruptManifestError(f"{table} {part.label}: data schema does not match its manifest")
        if not tables:
            raise MissingManifestError(f"no published partitions of {table} were asked for")
        return pa.concat_tables(tables, promote_options="default")

    # --- writing ------------------------------------------------------------------------------------
    def _write_atomic(self, path: str, data: bytes) -> None:
        tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
        self.fs.create_dir(posixpath.dirname(path), recursive=True)
        with self.fs.open_output_stream(tmp) as out:
            out.write(data)
        self.fs.move(tmp, path)

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
        """
        staged = self._path(staged_dir)
        infos = sorted(
            (i for i in self.fs.get_file_info(pafs.FileSelector(staged, allow_not_found=True))
             if i.type == pafs.FileType.File and i.base_name.endswith(".parquet")),
            key=lambda i: i.base_name,
        )
        if not infos:
            raise LakeError(f"nothing to publish: {self.uri_of(staged)} holds no .parquet files")
        entries, schemas = [], set()
        for n, info in enumerate(infos):
            meta = pq.read_metadata(info.path, filesystem=self.fs)
            schemas.add(schema_hash(meta.schema.to_arrow_schema()))
            entries.append(FileEntry(f"part-{n:05d}.parquet", meta.num_rows, info.size, _sha256(self.fs, info.path)))
        if len(schemas) != 1:
            raise LakeError(f"{self.uri_of(staged)}: files disagree on the schema; refusing to publish a mix")
        digest = hashlib.sha256("".join(e.sha256 for e in entries).encode()).hexdigest()[:16]
        data_dir = f"data-{digest}"
        current = self._current_manifest(table, part)
        if current is not None and current.data_dir == data_dir and current.files == tuple(entries) \
                and current.extra == (extra or {}):
            return current  # same content already visible: leave the manifest (and its run id) as it is
        target = self._join(table, part.path, data_dir)
        for entry, info in zip(entries, infos, strict=True):
            dest = posixpath.join(target, entry.name)
            existing = self.fs.get_file_info(dest)
            if existing.type == pafs.FileType.File and existing.size == entry.bytes:
                continue  # a retry after a partial publish: this file already landed whole
            self.fs.create_dir(target, recursive=True)
            tmp = f"{dest}.tmp-{uuid.uuid4().hex[:8]}"
            self.fs.copy_file(info.path, tmp)
            self.fs.move(tmp, dest)
        manifest = Manifest(
            table=table,
            partition=part,
            data_dir=data_dir,
            rows=sum(e.rows for e in entries),
            schema_hash=schemas.pop(),
            files=tuple(entries),
            run_id=run_id,
            created_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            extra=extra or {},
        )
        self._write_atomic(self.manifest_path(table, part), manifest.to_json().encode())
        self._collect_garbage(table, part, keep=data_dir)
        return manifest

    def _current_manifest(self, table: str, part: Partition) -> Manifest | None:
        try:
            manifest = self.read_manifest(table, part)
            self.files(table, part, verify=True)
        except LakeError:
            return None  # nothing valid published yet: publish normally, which repairs it
        return manifest

    def _collect_garbage(self, table: str, part: Partition, keep: str) -> None:
        """Remove data folders of earlier publishes; only the manifest's folder is ever read."""
        selector = pafs.FileSelector(self.partition_path(table, part), allow_not_found=True)
        for info in self.fs.get_file_info(selector):
            if info.type == pafs.FileType.Directory and info.base_name.startswith("data-") and info.base_name != keep:
                self.fs.delete_dir(info.path)

    def quarantine(self, table: str, part: Partition, staged_dir: str, attempt: str, reason: dict[str, Any]) -> str:
        """Move a staged batch aside with the reason it was refused; returns the quarantine URI."""
        staged = self._path(staged_dir)
        dest = self.quarantine_path(table, part, attempt)
        self.fs.create_dir(posixpath.dirname(dest), recursive=True)
        if self.fs.get_file_info(staged).type == pafs.FileType.Directory:
            self.fs.move(staged, dest)
        self._write_atomic(posixpath.join(dest, "_QUARANTINED.json"), json.dumps(reason, indent=2, default=str).encode())
        return self.uri_of(dest)

    def discard(self, staged_dir: str) -> None:
        path = self._path(staged_dir)
        if self.fs.get_file_info(path).type == pafs.FileType.Directory:
            self.fs.delete_dir(path)

    def _path(self, path_or_uri: str) -> str:
        if "://" in path_or_uri:
            _, path = pafs.FileSystem.from_uri(path_or_uri)
            return path
        return path_or_uri
