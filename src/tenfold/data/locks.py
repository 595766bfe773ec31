"""Exclusive locks on a lake's objects, between processes and machines: one writer of a thing at a time.

* On a local lake, an ``flock`` on a lock file (released by the kernel when its holder dies).
* On GCS, a create-only object (an upload with a generation-0 precondition, which GCS grants to one
  caller), deleted on release and taken over once a waiter has seen it unchanged for ``stale_s``, so that a
  killed holder cannot block the others forever. A live holder rewrites it every ``stale_s / 3`` (a heartbeat,
  conditional on its own generation), so however long the work takes, only a holder that stopped beating loses it; one
  that finds it was taken over (it stalled for longer than ``stale_s``) raises :class:`LockLost` when
  its work ends, so its task fails and is retried rather than reported done.

Each lock yields ``still_held``, a check a holder calls right before a step that must not happen once another
writer may work (committing a manifest, deleting what the old one named): on GCS it reads the lock object and
raises :class:`LockLost` when it is no longer this holder's (taken over between two heartbeats, say after the
process stalled); a local ``flock`` cannot be lost, so there it does nothing. A lock found taken over when it
is released raises :class:`LockLost` too.

Neither is re-entrant: a holder that asks again waits for itself (and times out).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

log = logging.getLogger(__name__)


class LockTimeout(RuntimeError):
    """Another holder kept the lock for longer than the caller was willing to wait."""


class LockLost(RuntimeError):
    """The lock was taken over while its holder worked (it stopped refreshing it for longer than ``stale_s``)."""


class LockUnavailable(LockTimeout):
    """The lock could not be taken because its store refused or failed the request (GCS: a 403, a 5xx
    past the client's own retries): like a timeout, the work did not start and may be tried again."""


def _held_for_good() -> None:
    """``still_held`` of a lock that cannot be lost (an ``flock`` lasts as long as its holder)."""


@contextlib.contextmanager
def file_lock(path: str, *, timeout_s: float, what: str) -> Iterator[Callable[[], None]]:
    """Hold an ``flock`` on ``path`` (created, with its folder); :class:`LockTimeout` after ``timeout_s``."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "a+") as handle:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise LockTimeout(f"another process holds {path}, the lock of {what} (waited "
                                      f"{timeout_s:.0f} s); let it finish and run again") from None
                time.sleep(0.05)
        try:
            yield _held_for_good
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


# A GCS lock object older than its stale age by more than this, by GCS's clock against this machine's, is a dead
# holder's even unwatched: a clock further off than this is no clock NTP leaves.
CLOCK_SKEW_S = 300.0
# Per lock URI: the generation this process last saw and since when (monotonic), across its waits.
_SEEN: dict[str, tuple[Any, float]] = {}
_SEEN_GUARD = threading.Lock()


@contextlib.contextmanager
def gcs_lock(client: Any, bucket: str, name: str, *, timeout_s: float, stale_s: float,
             what: str) -> Iterator[Callable[[], None]]:
    """Hold the create-only object ``gs://bucket/name``; :class:`LockTimeout` after ``timeout_s``."""
    # GoogleAPIError, not GoogleAPICallError alone: once the client's retries of a dropped connection run out it
    # raises RetryError, which is no call error, and a long outage ended the feedback sink with a traceback.
    from google.api_core.exceptions import GoogleAPICallError, GoogleAPIError, NotFound, PreconditionFailed

    uri = f"gs://{bucket}/{name}"
    blob = client.bucket(bucket).blob(name)
    # Who holds it, unique to this acquisition: a heartbeat whose write landed though its answer was lost (its
    # retry then fails the generation check) recognises the object as still its own.
    owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"
    deadline = time.monotonic() + timeout_s
    # The generation this waiter last saw (its holder read once), and since when on the waiter's own monotonic clock:
    # a heartbeat makes a new generation, so one unchanged for stale_s is a dead holder's. Not the object's time
    # against this machine's wall clock: a waiter whose clock ran 80 s ahead took a live holder's lock at once, and one
    # 480 s behind never took a dead one's before its timeout.
    # Kept across this process's waits for the lock (a caller that retries with short waits, such as the feedback
    # sink's join every 30 s, whose 60 s wait alone never watched a dead holder's lock for the 120 s stale age).
    with _SEEN_GUARD:
        seen: tuple[Any, float] = _SEEN.get(uri, (None, 0.0))
    try:
        while True:
            try:
                blob.upload_from_string(owner, if_generation_match=0)
                break
            except PreconditionFailed:
                with contextlib.suppress(NotFound, PreconditionFailed):
                    blob.reload()
                    if blob.generation != seen[0]:
                        seen = (blob.generation, time.monotonic())
                        with _SEEN_GUARD:
                            _SEEN[uri] = seen
                        # Our own create, landed with its answer lost (the client's retry then met it): held, not
                        # waited on until it looks stale (2 minutes, and a join lock's 60 s wait failed meanwhile).
                        if blob.download_as_text(if_generation_match=blob.generation) == owner:
                            break
                    # Its holder died without releasing: take it over, once. Watched unchanged for stale_s here, or
                    # older than that by GCS's time with room for any sane clock skew (a waiter that first looks at
                    # a lock dead for an hour takes it at once, as before, whatever the wait it was given).
                    updated = getattr(blob, "updated", None)
                    aged = updated is not None and time.time() - updated.timestamp() > stale_s + CLOCK_SKEW_S
                    if time.monotonic() - seen[1] >= stale_s or aged:
                        blob.delete(if_generation_match=blob.generation)
                        continue
                if time.monotonic() > deadline:
                    raise LockTimeout(f"another process holds {uri}, the lock of {what} (waited {timeout_s:.0f} s); "
                                      "let it finish and run again, or delete the object if nothing holds it") from None
                time.sleep(0.5)
    except GoogleAPICallError as exc:  # a 403, or a 5xx the client's retries did not get past: nothing started
        raise LockUnavailable(f"cannot take {uri}, the lock of {what}: GCS answered {exc.code} ({exc.message}); "
                              "check that this service account may create and delete objects there, then run "
                              "again") from exc
    except GoogleAPIError as exc:  # GCS unreachable past the client's retries (RetryError): no work started
        # (A create that landed with its answer lost leaves this lock's object behind: taken over after stale_s.)
        raise LockUnavailable(f"cannot take {uri}, the lock of {what}: GCS did not answer ({exc}); run again once it "
                              f"is reachable (an object left there by this try is taken over after {stale_s:.0f} s)"
                              ) from exc
    held = {"generation": blob.generation, "lost": ""}
    stop = threading.Event()

    def still_mine(beat: Any) -> bool:
        """After a failed conditional write: is the object still this acquisition's (and at which generation)?"""
        try:
            beat.reload()
            if beat.download_as_text(if_generation_match=beat.generation) == owner:
                held["generation"] = beat.generation
                return True
        except (PreconditionFailed, NotFound):
            pass
        return False

    def heartbeat() -> None:
        beat = client.bucket(bucket).blob(name)
        period = max(0.5, stale_s / 3)
        while not stop.wait(period):
            try:
                # One quick try per beat (no library retry that could outlast the stale age): the next beat,
                # a third of the stale age later, is the retry.
                beat.upload_from_string(owner, if_generation_match=held["generation"], timeout=period, retry=None)
                held["generation"] = beat.generation
            except (PreconditionFailed, NotFound):
                try:
                    mine = still_mine(beat)
                except Exception as exc:  # GCS away while it looked (RetryError): the next beat asks again
                    log.warning("could not tell whether %s is still held (%s); retrying", uri, exc)
                    continue
                if mine:
                    continue
                held["lost"] = f"{uri} was taken over (or removed) while {owner} held it for {what}"
                log.error("%s", held["lost"])
                return
            except Exception as exc:  # a transient failure: the next beat tries again
                log.warning("could not refresh the lock %s (%s); retrying", uri, exc)

    def still_held() -> None:
        """Raise :class:`LockLost` unless the lock object is still this acquisition's."""
        if not held["lost"]:
            probe = client.bucket(bucket).blob(name)
            try:
                probe.reload()
                mine = probe.generation == held["generation"] or still_mine(probe)
            except NotFound:
                mine = False
            except GoogleAPIError as exc:  # unknown whether it is still ours: the step it guards must not happen
                raise LockLost(f"cannot tell whether {uri} is still held for {what}: GCS did not answer ({exc}); "
                               "nothing more was done, run it again") from exc
            if not mine:
                held["lost"] = f"{uri} was taken over (or removed) while {owner} held it for {what}"
        if held["lost"]:
            raise LockLost(f"{held['lost']}: another writer may be working; nothing more was done, run it again")

    beating = threading.Thread(target=heartbeat, name=f"lock heartbeat {name}", daemon=True)
    beating.start()
    try:
        yield still_held
    finally:
        stop.set()
        beating.join()
        # Whose it is now, first: a holder taken over between two beats learns it here (a store that ignores the
        # delete's generation precondition, as fake-gcs-server does, would otherwise delete the other's lock).
        with contextlib.suppress(LockLost):
            still_held()
        try:
            if not held["lost"]:
                blob.delete(if_generation_match=held["generation"])
        except NotFound:
            pass
        except PreconditionFailed:  # taken over between the check and the delete
            held["lost"] = f"{uri} was taken over while {owner} held it for {what}"
        except GoogleAPIError as exc:  # left behind, it goes stale and the next holder takes it over
            log.warning("could not release the lock %s (%s); it is taken over once older than %.0f s", uri, exc, stale_s)
    if held["lost"]:
        raise LockLost(f"{held['lost']}: another writer may have worked meanwhile; run it again")
