"""One join at a time per lake: the join publishes several partitions of the labelled table (and reads
them back), so two joins would interleave their months; each partition's publish is exclusive on its own
(:meth:`tenfold.data.lake.Lake.exclusive`).

On a local lake the lock is an ``flock`` on ``<lake>/<labelled table>/_join.lock``; on GCS a create-only
object at the same name, taken over when older than ``stale_s`` (:mod:`tenfold.data.locks`).
"""

from __future__ import annotations

import contextlib
import posixpath
from collections.abc import Iterator
from urllib.parse import urlparse

import pyarrow.fs as pafs

from tenfold.config import Settings
from tenfold.data.lake import Lake
from tenfold.data.locks import LockTimeout, file_lock, gcs_lock

LOCK_NAME = "_join.lock"
__all__ = ["LOCK_NAME", "LockTimeout", "join_lock"]


@contextlib.contextmanager
def join_lock(settings: Settings, lake: Lake, *, timeout_s: float = 60.0, stale_s: float = 600.0) -> Iterator[None]:
    """Hold the feedback join's lock of ``lake``; raises :class:`LockTimeout` after ``timeout_s``."""
    path = posixpath.join(lake.table_path(settings.storage.labelled_table), LOCK_NAME)
    what = "the feedback join"
    if isinstance(lake.fs, pafs.LocalFileSystem):
        with file_lock(path, timeout_s=timeout_s, what=what):
            yield
    else:
        from tenfold.storage import gcs_client

        parsed = urlparse(lake.uri_of(path))
        with gcs_lock(gcs_client(settings), parsed.netloc, parsed.path.lstrip("/"), timeout_s=timeout_s,
                      stale_s=stale_s, what=what):
            yield
