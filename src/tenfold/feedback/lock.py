"""One join at a time per lake: two concurrent publishes of the same partition could each remove the
other's data folder (``Lake.publish`` collects the folders its manifest does not name).

On a local lake the lock is an ``flock`` on ``<lake>/<labelled table>/_join.lock`` (released by the
kernel if the holder dies); on GCS it is a create-only object at the same name (a generation-0
precondition), taken over when older than ``stale_s`` so a killed holder cannot block joins forever.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import posixpath
import socket
import time
from collections.abc import Iterator
from urllib.parse import urlparse

import pyarrow.fs as pafs

from tenfold.config import Settings
from tenfold.data.lake import Lake

LOCK_NAME = "_join.lock"


class LockTimeout(RuntimeError):
    """Another join held the lock for longer than the caller was willing to wait."""


@contextlib.contextmanager
def join_lock(settings: Settings, lake: Lake, *, timeout_s: float = 60.0, stale_s: float = 600.0) -> Iterator[None]:
    """Hold the feedback join's lock of ``lake``; raises :class:`LockTimeout` after ``timeout_s``."""
    path = posixpath.join(lake.table_path(settings.storage.labelled_table), LOCK_NAME)
    if isinstance(lake.fs, pafs.LocalFileSystem):
        with _flock(path, timeout_s):
            yield
    else:
        with _gcs_lock(settings, lake.uri_of(path), timeout_s, stale_s):
            yield


@contextlib.contextmanager
def _flock(path: str, timeout_s: float) -> Iterator[None]:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "a+") as handle:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise LockTimeout(f"another feedback join holds {path} (waited {timeout_s:.0f} s); "
                                      "let it finish and run again") from None
                time.sleep(0.1)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


@contextlib.contextmanager
def _gcs_lock(settings: Settings, uri: str, timeout_s: float, stale_s: float) -> Iterator[None]:
    from google.api_core.exceptions import NotFound, PreconditionFailed

    from tenfold.storage import gcs_client

    parsed = urlparse(uri)
    blob = gcs_client(settings).bucket(parsed.netloc).blob(parsed.path.lstrip("/"))
    owner = f"{socket.gethostname()}:{os.getpid()}"
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            blob.upload_from_string(owner, if_generation_match=0)
            break
        except PreconditionFailed:
            with contextlib.suppress(NotFound, PreconditionFailed):
                blob.reload()
                age = time.time() - blob.updated.timestamp() if blob.updated else 0.0
                if age > stale_s:  # its holder died without releasing: take it over, once
                    blob.delete(if_generation_match=blob.generation)
                    continue
            if time.monotonic() > deadline:
                raise LockTimeout(f"another feedback join holds {uri} (waited {timeout_s:.0f} s); let it finish "
                                  f"and run again, or delete the object if no join is running") from None
            time.sleep(0.5)
    generation = blob.generation
    try:
        yield
    finally:
        with contextlib.suppress(NotFound, PreconditionFailed):
            blob.delete(if_generation_match=generation)
