"""The one place that builds a Google Cloud Storage client, and named objects under a lake prefix.

Locally the client talks to the GCS emulator through ``STORAGE_EMULATOR_HOST`` semantics (an
explicit ``api_endpoint`` and anonymous credentials); in the cloud it uses Application Default
Credentials. Callers never branch on the environment themselves.

:func:`lake_objects` gives the few operations a record store needs (create if absent, put, get, list) on a
``file://`` or ``gs://`` lake alike. ``create`` is *create-if-absent*: on ``gs://`` an upload with
``if_generation_match=0`` (GCS refuses it when the object exists), on ``file://`` a hard link of a fully written
and fsynced temporary file to the final name (``link`` fails when the name exists, and never replaces it).
``put`` replaces an object whole (a rename, or one object write).
"""

from __future__ import annotations

import errno
import os
import posixpath
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlparse

from tenfold.config import Settings
from tenfold.fsio import atomic_write, error_naming, file_uri_path, fsync_dir, make_dirs_durable, tmp_name

if TYPE_CHECKING:
    from google.cloud import storage


def gcs_client(settings: Settings) -> storage.Client:
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    if settings.storage.emulator_host:
        return storage.Client(
            project=settings.project_id,
            credentials=AnonymousCredentials(),  # type: ignore[no-untyped-call]
            client_options={"api_endpoint": settings.storage.emulator_host},
        )
    return storage.Client(project=settings.project_id)


def split_gs_uri(uri: str) -> tuple[str, str]:
    """``gs://bucket/a/b/`` as ``("bucket", "a/b")``: the bucket and the object prefix, without surrounding slashes."""
    if not uri.startswith("gs://"):
        raise ValueError(f"{uri!r} is not a gs:// URI")
    bucket, _, prefix = uri[len("gs://"):].partition("/")
    return bucket, prefix.strip("/")


class Objects(Protocol):
    """Named blobs under one root: the little a run store needs from a file system or a bucket."""

    # False: it already existed (left as it was). GcsObjects answers True for an object holding exactly ``data``: its
    # own create, landed with its answer lost, met by the client's retry.
    def create(self, name: str, data: bytes) -> bool: ...

    def put(self, name: str, data: bytes) -> None: ...

    def get(self, name: str) -> bytes | None: ...

    def exists(self, name: str) -> bool: ...

    def names(self, prefix: str) -> list[str]: ...  # names under prefix/ (relative to it), sorted


class FileObjects:
    """Objects as files under a local folder."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _tmp(self, path: Path, data: bytes) -> Path:
        # A folder this creates (a run's results/) is on disk too before the message is acknowledged: a result
        # durable in a folder whose own entry was lost to a power cut would be lost with it.
        make_dirs_durable(path.parent)
        tmp = path.with_name(tmp_name(path.name))
        try:
            fh = open(tmp, "wb")  # noqa: SIM115 (closed by the with below)
        except OSError as exc:  # a read-only folder: said of the folder, not of a tmp that was never made
            raise error_naming(exc, path.parent) from exc
        try:
            with fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
        except BaseException:
            tmp.unlink(missing_ok=True)  # a failed write (a full disk) leaves no tmp: each retry would leak another
            raise
        return tmp

    def create(self, name: str, data: bytes) -> bool:
        path = self.root / name
        tmp = self._tmp(path, data)
        try:
            os.link(tmp, path)  # atomic, and refuses an existing name: never overwrites a result
        except FileExistsError as exc:
            if not path.is_file():  # a folder (or else) in the way is no result: "exists" would ack it, lost
                raise error_naming(IsADirectoryError(errno.EISDIR, "a folder is in the way of the result") if
                                   path.is_dir() else exc, path) from exc
            # Another writer's link, perhaps not yet on disk (it was killed before its folder sync): the caller acts on
            # "it exists" (acks the message), so the name is made durable first, as for a create of its own.
            fsync_dir(path.parent)
            return False
        except OSError as exc:  # said of the result's name, not of the tmp linked to it
            raise error_naming(exc, path) from exc
        finally:
            tmp.unlink(missing_ok=True)
        fsync_dir(path.parent)  # the result's name is on disk before the message is acknowledged
        return True

    def put(self, name: str, data: bytes) -> None:
        path = self.root / name
        make_dirs_durable(path.parent)
        atomic_write(path, data)  # fsyncs the file and the folder; a failed write leaves no tmp

    def get(self, name: str) -> bytes | None:
        try:
            return (self.root / name).read_bytes()
        except FileNotFoundError:
            return None

    def exists(self, name: str) -> bool:
        path = self.root / name
        if not path.is_file():
            return False
        # Its name may not be on disk yet (a writer killed between its link and its folder sync): the caller acts on
        # it (a redelivery is acknowledged because its result exists), so a power cut must not take the name after.
        fsync_dir(path.parent)
        return True

    def names(self, prefix: str) -> list[str]:
        folder = self.root / prefix
        try:
            # Files only, as a bucket lists objects: a folder in the way of a result (refused by create) was
            # counted as the result, "scored", by the run's accounting.
            return sorted(p.name for p in folder.iterdir() if not p.name.startswith(".") and p.is_file())
        except FileNotFoundError:
            return []


class GcsObjects:
    """Objects in a bucket under a prefix, through the real storage client."""

    def __init__(self, client: Any, bucket: str, prefix: str) -> None:
        self.bucket = client.bucket(bucket)
        self.prefix = prefix.strip("/")

    def _name(self, name: str) -> str:
        return posixpath.join(self.prefix, name) if self.prefix else name

    def create(self, name: str, data: bytes) -> bool:
        from google.api_core.exceptions import PreconditionFailed

        try:
            self.bucket.blob(self._name(name)).upload_from_string(data, if_generation_match=0)
        except PreconditionFailed:
            # The client retries the upload: a first one that landed with its answer lost meets its own object then.
            # Its own bytes are taken as created (FileObjects.create answers True in that case too).
            return self.get(name) == data
        return True

    def put(self, name: str, data: bytes) -> None:
        self.bucket.blob(self._name(name)).upload_from_string(data)

    def get(self, name: str) -> bytes | None:
        from google.api_core.exceptions import NotFound

        try:
            return bytes(self.bucket.blob(self._name(name)).download_as_bytes())
        except NotFound:
            return None

    def exists(self, name: str) -> bool:
        return bool(self.bucket.blob(self._name(name)).exists())

    def names(self, prefix: str) -> list[str]:
        full = self._name(prefix).rstrip("/") + "/"
        return sorted(b.name[len(full):] for b in self.bucket.client.list_blobs(self.bucket, prefix=full)
                      if "/" not in b.name[len(full):])


def lake_objects(settings: Settings, prefix: str, *, client: Any = None) -> Objects:
    """The objects under ``<lake>/<prefix>`` (``storage.lake_uri``, file:// or gs://)."""
    uri = settings.storage.lake_uri.rstrip("/")
    parsed = urlparse(uri)
    prefix = prefix.strip("/")
    if parsed.scheme == "gs":
        bucket, root = split_gs_uri(uri)
        return GcsObjects(client or gcs_client(settings), bucket, posixpath.join(root, prefix))
    if parsed.scheme not in ("file", ""):
        raise ValueError(f"storage.lake_uri {uri!r}: records are kept on file:// and gs:// lakes only")
    return FileObjects((file_uri_path(uri) if parsed.scheme else Path(uri)) / prefix)
