"""Local-disk primitives: atomic writes (a reader sees the old file or the new one, never a torn one),
an exclusive lock on a lock file (one holder per path across processes), and :func:`make_dirs`, the one way
code that writes through a pyarrow filesystem makes a folder (only where folders exist)."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import os
import stat
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:
    import pyarrow.fs as pafs

# pyarrow filesystems that are object stores: a name is just a key, no folder has to exist above it.
_OBJECT_STORES = frozenset({"gcs", "s3"})


def fsync_dir(path: str | Path) -> None:
    """Flush a folder's entries (a file renamed or linked into it, a folder created in it) to disk; given a file,
    its bytes (it is opened read-only the same way)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_dirs_durable(folder: Path) -> None:
    """``folder`` and any missing folders above it, each one on disk when this returns (the entry in its parent
    fsynced): a file made durable in ``folder`` is then still reachable after a power loss, not only a crash."""
    missing = []
    probe = folder
    while not probe.is_dir():
        missing.append(probe)
        probe = probe.parent
    folder.mkdir(parents=True, exist_ok=True)
    for created in missing:
        fsync_dir(created.parent)


def atomic_write(path: Path, data: bytes, *, durable: bool = True, mode: int = 0o666) -> None:
    """Write ``data`` to a temporary name beside ``path`` and rename it over ``path``.

    ``durable`` (the default) also fsyncs the file and then the folder, so the rename itself is on disk
    before anything that refers to the file is written; state that is rewritten several times a second
    and rebuilt after a crash anyway (a status file) passes ``durable=False``. ``mode`` (less the umask) is
    the file's from its creation: a secret is never readable by others, not even for a moment.
    """
    tmp = path.with_name(tmp_name(path.name))
    try:
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        except OSError as exc:  # a read-only folder, a missing one, a file in its place
            raise error_naming(exc, path.parent) from exc
        with open(fd, "wb") as fh:
            fh.write(data)
            if durable:
                fh.flush()
                os.fsync(fh.fileno())
        try:
            os.replace(tmp, path)
        except OSError as exc:  # a directory where the file should go
            raise error_naming(exc, path) from exc
    finally:
        # A file where the folder should be refuses this too (ENOTDIR): the error raised is the one naming the folder.
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
    if durable:
        fsync_dir(path.parent)


# The longest file name most Linux filesystems take (NAME_MAX, in bytes).
_NAME_MAX = 255


def tmp_name(name: str) -> str:
    """A unique hidden name for the temporary file written beside ``name`` before it is renamed over it.

    ``.<name>.tmp-<8 hex>`` while that fits in a file name; for a name too long to take the 14 characters more (a
    target of 242 to 255 bytes, which is itself a valid name) a hash of it stands in, so such a target is written like
    any other instead of failing with "File name too long". Either way the name starts with a dot and holds ".tmp-",
    which is what the readers that skip an interrupted write look for."""
    suffix = f".tmp-{uuid.uuid4().hex[:8]}"
    if len(os.fsencode(f".{name}{suffix}")) <= _NAME_MAX:
        return f".{name}{suffix}"
    return f".{hashlib.sha256(os.fsencode(name)).hexdigest()[:32]}{suffix}"


def error_naming(exc: OSError, target: Path) -> OSError:
    """``exc`` (met creating or renaming a temporary file) as the same error of ``target``, the file or folder the
    caller named: the temporary name it carried is random, never existed for the user, and
    :func:`os_error_refusal` would quote it. The errno picks the same subclass (PermissionError, IsADirectoryError,
    FileNotFoundError...), so callers that sort errors by class or errno still do."""
    return OSError(exc.errno, exc.strerror, str(target))


def open_lines_for_append(path: Path, *, buffering: int = -1) -> TextIO:
    """``path`` opened to append text lines (a JSON-lines log), made to end with a newline first.

    A write cut short (a full disk, a kill) leaves a torn last line; appended as it is, the next line would be glued
    to it and a reader parsing line by line would lose both. Reading the last byte is cheap: when it is not a newline,
    one is written before anything else, so the torn line stays alone and every later line parses.
    """
    out = open(path, "a", encoding="utf-8", buffering=buffering)  # noqa: SIM115 (the caller closes it)
    try:
        if _ends_torn(path):
            out.write("\n")
            out.flush()
    except BaseException:
        out.close()
        raise
    return out


def _ends_torn(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):  # /dev/stdout, a pipe, a FIFO: nothing to mend
                return False
            if fh.seek(0, os.SEEK_END) == 0:
                return False
            fh.seek(-1, os.SEEK_END)
            return fh.read(1) != b"\n"
    except (OSError, io.UnsupportedOperation):
        return False


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (created, with its folder, if missing), waiting for it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def make_dirs(fs: pafs.FileSystem, path: str) -> None:
    """Make the folder ``path`` (and its parents) on ``fs`` where the filesystem has folders; on an object store
    (GCS, S3, or a sub-tree of one) do nothing: an object can be written under any name.

    pyarrow's ``create_dir(recursive=True)`` on GCS writes folder-marker objects and, where no marker exists above
    ``path``, reads the bucket's metadata first (``storage.buckets.get``): a permission that the object roles the
    platform's service accounts hold (``roles/storage.objectUser`` / ``objectViewer`` on a folder) do not include,
    so on a fresh project it failed with PERMISSION_DENIED before anything was written. Any other filesystem (the
    local disk, a wrapper of one) gets its folders made as before.
    """
    base = fs
    while base.type_name == "subtree":
        base = base.base_fs  # type: ignore[attr-defined]
    if base.type_name in _OBJECT_STORES:
        return
    fs.create_dir(path, recursive=True)


def write_file_atomically(fs: pafs.FileSystem, path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` on a pyarrow filesystem so a reader sees the old file or the new one, never a torn one.

    On an object store one object write is atomic. Elsewhere the bytes go to a unique hidden name beside ``path``,
    moved over it once whole; a write that failed (a full disk) removes that tmp, so retries leave no litter.
    """
    base = fs
    while base.type_name == "subtree":
        base = base.base_fs  # type: ignore[attr-defined]
    if base.type_name in _OBJECT_STORES:
        with fs.open_output_stream(path) as out:
            out.write(data)
        return
    folder, _, name = path.rpartition("/")
    tmp = f"{folder}/{tmp_name(name)}" if folder else tmp_name(name)
    try:
        with fs.open_output_stream(tmp) as out:
            out.write(data)
        fs.move(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            fs.delete_file(tmp)
        raise


def os_error_refusal(exc: OSError, command: str, home: Path) -> str:
    """The one line ``command`` (``tenfold up``, ``python -m tenfold.pipelines.train_model``) ends with when the
    system refuses it ``exc`` (a TENFOLD_HOME under a file or not writable, a full disk): what was refused, on which
    path, and what to do."""
    import errno

    path = exc.filename
    if path is None and exc.errno == errno.ENOSPC:
        # pyarrow's writer names no file ("[Errno 28] Error writing bytes to file. Detail: [errno 28] No space left
        # on device"): the raw line was all a full disk said.
        return (f"error: `{command}` cannot go on: the disk it was writing to is full ({exc.strerror or exc}); free "
                f"space there (`df -h {home}` shows TENFOLD_HOME's disk), then run the command again")
    what = f"{exc.strerror or exc}: {path}" if path else str(exc)
    # pyarrow's errors name the path in their text only.
    if Path(str(path)).is_relative_to(home) if path is not None else str(home) in str(exc):
        todo = (f"TENFOLD_HOME ({home}) must be a directory this user can write: fix that path (or its permissions, "
                "or free space), or choose another TENFOLD_HOME")
    else:
        todo = "fix that (its permissions, or free space), then run the command again"
    return f"error: `{command}` cannot go on: {what}; {todo}"


# How long pyarrow's GCS client retries a failing call (an outage, no credentials, no network) before it raises: its
# own default is 15 minutes, so a command run without cloud credentials hung silently for that long. A task that
# meets a longer outage fails and is retried by Airflow.
GCS_RETRY_LIMIT_S = 60


def file_uri_path(uri: str) -> Path:
    """The local path a ``file://`` URI names, its percent-escapes decoded: ``Path.as_uri()`` (which builds the
    local lake's URI) writes a space or a non-ASCII letter of the folder's name escaped."""
    from urllib.parse import urlsplit
    from urllib.request import url2pathname

    return Path(url2pathname(urlsplit(uri).path))


def filesystem_from_uri(uri: str) -> tuple[pafs.FileSystem, str]:
    """``pyarrow.fs.FileSystem.from_uri``, the one way Tenfold opens a ``file://`` or ``gs://`` URI with pyarrow: a
    ``gs://`` one retries for :data:`GCS_RETRY_LIMIT_S` at most (unless its query sets ``retry_limit_seconds``)."""
    from urllib.parse import parse_qs, urlsplit

    import pyarrow.fs as pafs

    parts = urlsplit(uri)
    if parts.scheme in ("gs", "gcs") and "retry_limit_seconds" not in parse_qs(parts.query):
        uri = f"{uri}{'&' if parts.query else '?'}retry_limit_seconds={GCS_RETRY_LIMIT_S}"
    fs, path = pafs.FileSystem.from_uri(uri)
    return fs, path
