"""Where a run's results, errors and dead letters live: ``<lake>/<inference.work_prefix>/<run>/``.

::

    <run>/results/<request id>.parquet     the scored rows of one request: written once, never replaced
    <run>/errors/<request id>.json          why a request could not be scored, with each delivery attempt
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
import posixpath
from collections.abc import Mapping
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

    def _record(self, kind: str, name: str) -> dict[str, Any] | None:
        """The JSON record ``name``; :class:`DamagedRecord`, naming where it is, when it is not one."""
        data = self.objects.get(name)
        try:
            return _json(data)
        except ValueError as exc:  # json.JSONDecodeError, or UnicodeDecodeError for bytes that are not UTF-8
            where = _where(self.objects, name)
            raise DamagedRecord(f"the {kind} record {where} is damaged and cannot be read ({type(exc).__name__}: "
                                f"{exc}): restore it from a copy, or delete it, then run the command again") from exc


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
