"""Where a run's results, errors and dead letters live: ``<lake>/<inference.work_prefix>/<run>/``.

::

    <run>/results/<request id>.parquet     the scored rows of one request: written once, never replaced
    <run>/errors/<request id>.json          why a request could not be scored, with each delivery attempt (and
                                            which redelivery started last, in which process: see STARTED)
    <run>/dead_letters/<request id>.json    a dead-lettered request (body, attributes, attempts, error, replays)

A result is written *create-if-absent*: on ``gs://`` an upload with ``if_generation_match=0`` (GCS refuses it
when the object exists), on ``file://`` a hard link of a fully written and fsynced temporary file to the final
name (``link`` fails when the name exists, and never replaces it). So the first delivery of a request that
finishes wins; a duplicate delivery finds the result and is only acknowledged, and exactly one result per
request id exists however often Pub/Sub delivers it. Errors and dead letters are plain records, replaced
whole (a rename, or one object write).
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import time
from collections.abc import Hashable, Mapping
from typing import TYPE_CHECKING, Any

from tenfold.inference.requests import RECORD_NAME, RUN
from tenfold.storage import FileObjects, GcsObjects, Objects, lake_objects

if TYPE_CHECKING:
    from tenfold.config import Settings

RESULTS = "results"
ERRORS = "errors"
DEAD_LETTERS = "dead_letters"
PUBLISHING = "publishing.json"  # a publish of the run began (RunStore.mark_publishing)
# Where a delivery whose ``run`` attribute names no usable folder is recorded (see :func:`message_store`).
UNKNOWN_RUN = "unknown-run"
# A file replaced less than this long ago has no trusted stamp (RunStore.dead_letter_stamps): a second write within
# the same tick of the file system's clock may leave its times as they were.
STAMP_SETTLE_S = 2.0
# The key of a request's error record under which a redelivery notes that it started (which delivery, in which
# process), before it scores: removed when that delivery records how it failed. One still there when the request is
# dead-lettered, or when the next delivery starts, is a delivery that ended without a word: its worker died.
STARTED = "started"


class DamagedRecord(ValueError):
    """An error or dead-letter record that is not a JSON document (torn, truncated, not UTF-8, or another tool's
    file): a refusal naming the object, not a fault in the code. A ``ValueError``, as ``json.loads``' own errors were
    (the drain records a dead letter afresh over such a record)."""

    retryable = False  # the stored bytes stay as they are until someone restores or deletes the object


def work_objects(settings: Settings, *, client: Any = None) -> Objects:
    """The objects under ``<lake>/<inference.work_prefix>``: every run's folder."""
    return lake_objects(settings, settings.inference.work_prefix, client=client)


class RunStore:
    """One run's folder (see the module docstring)."""

    def __init__(self, objects: Objects, run: str) -> None:
        if not run or "/" in run or run in (".", ".."):
            raise ValueError(f"run key {run!r} cannot name a folder")
        self.objects = objects
        self.run = run

    @classmethod
    def of(cls, settings: Settings, run: str, *, client: Any = None) -> RunStore:
        return cls(work_objects(settings, client=client), run)

    def _n(self, kind: str, name: str = "") -> str:
        if name and not RECORD_NAME.fullmatch(name.rsplit(".", 1)[0]):  # never a path out of the run's folder
            raise ValueError(f"{name[:80]!r} cannot name a record of run {self.run} (see requests.record_id)")
        return posixpath.join(self.run, kind, name) if name else posixpath.join(self.run, kind)

    # publishing
    def published_before(self) -> bool:
        """Whether a publish of this run began before (:meth:`mark_publishing`): a retried task, a cleared run."""
        return self.objects.exists(posixpath.join(self.run, PUBLISHING))

    def mark_publishing(self) -> None:
        """Recorded before a publish sends anything, so its retry knows dead letters of it may wait."""
        self.objects.put(posixpath.join(self.run, PUBLISHING), b"{}")

    # results
    def has_result(self, request_id: str) -> bool:
        return self.objects.exists(self._n(RESULTS, f"{request_id}.parquet"))

    def put_result(self, request_id: str, data: bytes) -> bool:
        """Create the result of ``request_id``; False when one was already there (left unchanged)."""
        return self.objects.create(self._n(RESULTS, f"{request_id}.parquet"), data)

    def result(self, request_id: str) -> bytes | None:
        return self.objects.get(self._n(RESULTS, f"{request_id}.parquet"))

    def result_ids(self) -> list[str]:
        return [n.removesuffix(".parquet") for n in self.objects.names(self._n(RESULTS)) if n.endswith(".parquet")]

    # errors and dead letters (JSON records)
    def error(self, request_id: str) -> dict[str, Any] | None:
        return self._record("error", self._n(ERRORS, f"{request_id}.json"))

    def put_error(self, request_id: str, record: dict[str, Any]) -> None:
        self.objects.put(self._n(ERRORS, f"{request_id}.json"), _dumps(record))

    def dead_letter(self, request_id: str) -> dict[str, Any] | None:
        return self._record("dead-letter", self._n(DEAD_LETTERS, f"{request_id}.json"))

    def put_dead_letter(self, request_id: str, record: dict[str, Any]) -> None:
        self.objects.put(self._n(DEAD_LETTERS, f"{request_id}.json"), _dumps(record))

    def dead_letter_ids(self) -> list[str]:
        return [n.removesuffix(".json") for n in self.objects.names(self._n(DEAD_LETTERS)) if n.endswith(".json")]

    def dead_letter_stamps(self) -> dict[str, Hashable | None]:
        """Each dead letter's id with a stamp that changes whenever its record is replaced, read from the folder's
        listing alone, no record downloaded: a GCS object's generation, a file's inode, size and times. A record is
        not written once: a replay marks it, a drain records it afresh; a reader that keeps what it read under its
        stamp (:func:`tenfold.inference.runs.account`) reads it again only once it changed. None where no stamp can be
        trusted (an ``Objects`` of another kind; a file replaced within the last :data:`STAMP_SETTLE_S`, whose times
        may not have moved since the write before it): such a record is read each time."""
        folder = self._n(DEAD_LETTERS)
        if isinstance(self.objects, FileObjects):
            stamps: dict[str, Hashable | None] = {}
            settled = time.time_ns() - int(STAMP_SETTLE_S * 1e9)
            try:
                entries = list(os.scandir(self.objects.root / folder))
            except FileNotFoundError:
                return {}
            for entry in entries:
                if entry.name.startswith(".") or not entry.name.endswith(".json"):
                    continue
                try:
                    if not entry.is_file():
                        continue
                    st = entry.stat()
                except FileNotFoundError:
                    continue
                # A put renames a new file over the old one: a new inode, whose number the old one's may be reused for;
                # the times and size then tell the two apart, unless both writes fell in one tick of the file system's
                # clock (hence None for a file this recent).
                stamp = (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
                stamps[entry.name.removesuffix(".json")] = stamp if max(st.st_mtime_ns, st.st_ctime_ns) < settled else None
            return stamps
        if isinstance(self.objects, GcsObjects):
            full = self.objects._name(folder).rstrip("/") + "/"
            return {b.name[len(full):].removesuffix(".json"): (b.generation, b.metageneration)
                    for b in self.objects.bucket.client.list_blobs(self.objects.bucket, prefix=full)
                    if "/" not in b.name[len(full):] and b.name.endswith(".json")}
        return dict.fromkeys(self.dead_letter_ids())

    def _record(self, kind: str, name: str) -> dict[str, Any] | None:
        """The JSON record ``name``; :class:`DamagedRecord`, naming where it is, when it is not one."""
        data = self.objects.get(name)
        try:
            return _json(data)
        except ValueError as exc:  # json.JSONDecodeError, or UnicodeDecodeError for bytes that are not UTF-8
            where = _where(self.objects, name)
            raise DamagedRecord(f"the {kind} record {where} is damaged and cannot be read ({type(exc).__name__}: "
                                f"{exc}): restore it from a copy, or delete it, then run the command again") from exc


def died_during(mark: Mapping[str, Any], run: str, rid: str) -> str:
    """The reason a request's error record gives for a delivery that started (its :data:`STARTED` mark) and never
    recorded how it ended: its worker died (a SIGKILL, most often the kernel's out-of-memory killer, or a crash in
    native code), with what to do."""
    where = f"pid {mark.get('pid')}" + (f" on {mark['host']}" if mark.get("host") else "")
    return (f"the worker died during delivery {mark.get('delivery_attempt')} of this request ({where}) without "
            "recording an error: it was likely killed (out of memory? look for the kernel's OOM killer in `dmesg` or "
            "the instance's serial console, and at the end of that worker's log). A request that kills its worker on "
            "every delivery needs more memory than a worker has: give the workers more memory (or fewer "
            "inference.handler_threads), then `tenfold dlq replay --run "
            f"{run} --request-id {rid}`; or lower inference.rows_per_message and trigger batch_inference for the month "
            "again (a new plan cuts smaller requests)")


def message_store(objects: Objects, attributes: Mapping[str, str]) -> RunStore:
    """The folder of the run a delivery's ``run`` attribute names, or :data:`UNKNOWN_RUN`'s when it names none or
    one that cannot name a folder (too long, ``/``, ``..``, characters a file or object name cannot hold), as
    :func:`~tenfold.inference.requests.record_id` does for request ids: a message is often a dead letter *because*
    its attributes are wrong, and must still be recorded (its attributes are kept in the record)."""
    run = attributes.get(RUN) or ""
    return RunStore(objects, run if RECORD_NAME.fullmatch(run) else UNKNOWN_RUN)


def run_keys(objects: Objects) -> list[str]:
    """Every run that has a folder (for ``tenfold dlq``)."""
    if isinstance(objects, FileObjects):
        with contextlib.suppress(FileNotFoundError):
            return sorted(p.name for p in objects.root.iterdir() if p.is_dir() and not p.name.startswith("."))
        return []
    assert isinstance(objects, GcsObjects)
    prefix = objects.prefix + "/" if objects.prefix else ""
    blobs = objects.bucket.client.list_blobs(objects.bucket, prefix=prefix, delimiter="/")
    list(blobs)  # the prefixes are known only once the pages are read
    return sorted(p[len(prefix):].rstrip("/") for p in blobs.prefixes)


def _where(objects: Objects, name: str) -> str:
    """Where the object ``name`` of ``objects`` is: a local path, or a ``gs://`` URI."""
    if isinstance(objects, FileObjects):
        return str(objects.root / name)
    if isinstance(objects, GcsObjects):
        return f"gs://{objects.bucket.name}/{objects._name(name)}"
    return name


def _dumps(record: dict[str, Any]) -> bytes:
    import json

    return json.dumps(record, indent=1, sort_keys=True).encode()


def _json(data: bytes | None) -> dict[str, Any] | None:
    import json

    if data is None:
        return None
    body = json.loads(data)
    return body if isinstance(body, dict) else None
