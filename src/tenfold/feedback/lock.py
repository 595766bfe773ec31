"""One join at a time per lake: the join publishes several partitions of the labelled table (and reads
them back), so two joins would interleave their months; each partition's publish is exclusive on its own
(:meth:`tenfold.data.lake.Lake.exclusive`).

The lock is ``<lake>/<labelled table>/_join.lock`` (:meth:`tenfold.data.lake.Lake.lock`: an ``flock`` locally,
a create-only object on GCS, refreshed while held and taken over when older than ``stale_s``).
"""

from __future__ import annotations

import contextlib
import posixpath
from collections.abc import Callable, Iterator

from tenfold.config import Settings
from tenfold.data.lake import Lake
from tenfold.data.locks import LockLost, LockTimeout

LOCK_NAME = "_join.lock"
__all__ = ["LOCK_NAME", "LockLost", "LockTimeout", "join_lock"]


@contextlib.contextmanager
def join_lock(settings: Settings, lake: Lake, *, timeout_s: float = 60.0,
              stale_s: float = 120.0) -> Iterator[Callable[[], None]]:
    """Hold the feedback join's lock of ``lake``; raises :class:`LockTimeout` after ``timeout_s``. Yields the check
    to call right before each step that must not happen once another join may work (a publish, a quarantine move):
    it raises :class:`LockLost` when the lock was taken over (a holder stalled past ``stale_s`` on GCS)."""
    path = posixpath.join(lake.table_path(settings.storage.labelled_table), LOCK_NAME)
    with lake.lock(path, what="the feedback join", timeout_s=timeout_s, stale_s=stale_s) as still_held:
        yield still_held
