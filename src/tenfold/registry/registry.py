"""The model registry on GCS: immutable, content-addressed versions and atomically moved aliases.

Layout under ``gs://<settings.storage.models_bucket>/<settings.storage.registry_prefix>/``::

    versions/<id>/files/<path>        weights, meta.json, preprocessing state, metrics.json
    versions/<id>/lineage.json        data partitions + manifests, validation, code version, config
    versions/<id>/VERSION.json        commit marker: every file's sha256 and the version digest
    aliases/<alias>                   small JSON pointer {version, seq, previous, ...}
    alias-history/<alias>/<seq>.json  append-only record of every move (for audit and rollback)

Immutability. ``<id>`` is the first 20 hex digits of a SHA-256 over the files (path and content
hash of each), so the same content always gets the same id and different content a different id.
Every object is created with ``if_generation_match=0``: the store refuses to overwrite it, so even a
buggy or malicious writer cannot change a version in place. ``VERSION.json`` is written last; a
version without it was never committed and is invisible. Its copy of the metrics is checked against
``metrics.json``'s recorded hash on every read. Registering the same content again finds the committed
version and returns it (idempotent); a crashed register is finished by the next one, and a stored file
found missing is created again from the folder. What is uploaded is the bytes that were hashed: a file
that changes while it is registered is refused.

Aliases. An alias is moved by compare-and-swap: read the pointer and its generation, write the new
pointer with ``if_generation_match=<that generation>`` (0 when creating it). Of any number of
concurrent movers exactly one wins; the others get :class:`AliasConflict` (when they stated what
they expected the alias to be) or re-read and retry (an unconditional set), except those that asked for the
version that won: theirs is the no-op of setting an alias to the version it holds. An alias is moved only to a
version whose stored files are all there at their recorded sizes (a metadata read each, see :meth:`ModelRegistry.
incomplete`): one whose file was deleted (what ``download`` tells an operator to do with a corrupted one) failed every
load after the move; a rollback skips such a version.

Stores that ignore preconditions. GCS and fake-gcs-server enforce generation preconditions;
gcp-storage-emulator silently ignores them, so on it two concurrent moves would both "succeed" and
versions could be overwritten. Before its first write each registry probes the store once (create
the same probe object twice with ``if_generation_match=0``; the second must be refused) and raises
:class:`PreconditionsNotEnforced` if it is not; pass ``allow_unsafe_store=True`` to go on anyway
(a single writer, a demo) with a loud warning.

Run ``tenfold models --help`` for the command-line view of the same API.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import enum
import getpass
import hashlib
import json
import logging
import re
import shutil
import socket
import threading
import uuid
import warnings
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tenfold.model_files import META_FILE, PREPROCESSING_FILE, WEIGHTS_FILE, unsafe_relative_path
from tenfold.registry.errors import (
    AliasConflict,
    IntegrityError,
    InvalidModelDir,
    PreconditionsNotEnforced,
    RegistryError,
    UnknownVersion,
    VersionConflict,
)
from tenfold.registry.lineage import Lineage

if TYPE_CHECKING:
    from tenfold.config import Settings

log = logging.getLogger(__name__)

CHAMPION = "champion"
CHALLENGER = "challenger"
# The key prefix of a rollout's decision about a version (rollout_model records "rollout-<rollout id>").
ROLLOUT_DECISION_PREFIX = "rollout-"
METRICS_FILE = "metrics.json"
VERSION_FILE = "VERSION.json"
LINEAGE_FILE = "lineage.json"
VERSION_ID_LEN = 20
# The fewest digits of an id that ``find`` takes as a prefix (fewer match too many versions to be meant).
MIN_PREFIX_LEN = 4
FORMAT = 1

# Never part of a version: training scratch (checkpoints are resumable state, not the model) and
# registry bookkeeping that a downloaded copy may carry.
_EXCLUDED_DIRS = frozenset({"checkpoints", "__pycache__", "logs"})
_EXCLUDED_FILES = frozenset({VERSION_FILE, LINEAGE_FILE})
_ALIAS_RE = re.compile(r"^[a-z][a-z0-9-]{0,62}$")
# A decision's key names an object, not an alias: it may be as long as the run ids it carries (an asset-triggered
# rollout's id alone is 60 characters).
_DECISION_KEY_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,199}$")
_VERSION_RE = re.compile(rf"^[0-9a-f]{{{VERSION_ID_LEN}}}$")
_SHORT_PREFIX_RE = re.compile(rf"^[0-9a-f]{{1,{MIN_PREFIX_LEN - 1}}}$")


class _Any(enum.Enum):
    ANY = "any"


ANY = _Any.ANY
"""``expected=ANY``: move the alias whatever it points to now (still atomic, retried on contention)."""


@dataclass(frozen=True)
class FileRecord:
    path: str  # relative, POSIX separators
    sha256: str
    bytes: int


# A download's temporary folder untouched for this long was abandoned (its process killed): removed by the next one.
ABANDONED_DOWNLOAD_S = 3600


def _remove_abandoned(dest: Path) -> None:
    """Remove what killed downloads to ``dest`` left beside it (``.<name>.partial-*``, ``.<name>.old-*``), once
    untouched for :data:`ABANDONED_DOWNLOAD_S`: younger ones may be another download's, still running."""
    import time

    for left in [*dest.parent.glob(f".{dest.name}.partial-*"), *dest.parent.glob(f".{dest.name}.old-*")]:
        try:
            if time.time() - left.stat().st_mtime > ABANDONED_DOWNLOAD_S:
                shutil.rmtree(left, ignore_errors=True)
        except FileNotFoundError:
            pass


def content_digest(files: list[FileRecord] | tuple[FileRecord, ...]) -> str:
    """SHA-256 over each file's path and content hash, in path order."""
    canon = "\n".join(f"{f.path}\0{f.sha256}" for f in sorted(files, key=lambda f: f.path))
    return hashlib.sha256(canon.encode()).hexdigest()


@dataclass(frozen=True)
class ModelVersion:
    version: str
    digest: str
    files: tuple[FileRecord, ...]
    metrics: dict[str, Any]
    created_at: str
    uri: str
    lineage: Lineage | None = None

    def summary(self) -> dict[str, Any]:
        return {"version": self.version, "created_at": self.created_at, "metrics": _headline(self.metrics), "uri": self.uri}


def _headline(metrics: Mapping[str, Any]) -> dict[str, Any]:
    return {k: metrics[k] for k in ("auc", "log_loss", "brier") if k in metrics}


class _StoredMetricsMissing(IntegrityError):
    """A committed version's stored ``metrics.json`` is gone, so VERSION.json's copy of its metrics cannot be checked.
    ``register`` of the same folder catches it (``version``: the VERSION.json read) and restores the file."""

    def __init__(self, message: str, version: ModelVersion | None = None) -> None:
        super().__init__(message)
        self.version = version


@dataclass(frozen=True)
class AliasPointer:
    alias: str
    version: str
    seq: int
    previous: str | None
    action: str  # set | promote | rollback
    updated_at: str
    actor: str
    reason: str = ""
    details: dict[str, Any] = field(default_factory=dict)
    nonce: str = ""
    generation: int = 0  # of the pointer object when read; not stored in the body

    def to_json(self) -> str:
        body = asdict(self)
        body.pop("generation")
        return json.dumps(body, indent=2, sort_keys=True, default=str)

    @classmethod
    def from_json(cls, text: str | bytes, generation: int, where: str, *, history: bool = False) -> AliasPointer:
        try:
            body = json.loads(text)
            if not isinstance(body, dict):
                raise TypeError(f"it holds a JSON {type(body).__name__}, not an object")
            pointer = cls(**{k: v for k, v in body.items() if k in cls.__dataclass_fields__}, generation=generation)
            # What readers make a cache path and a lock file of: a version id, never a path ("../../x").
            for name, value in (("version", pointer.version), ("previous", pointer.previous)):
                if (value is not None or name == "version") and not (isinstance(value, str) and is_version_id(value)):
                    raise ValueError(f"its {name} {value!r} is not a version id")
            # What movers and readers compute with: a seq that is not a number failed the next move at ``seq + 1``
            # and every history read at sorting, and details that are not an object failed ``details.get``, each a
            # traceback. Every writer of this format stored these types (reason, details and nonce may be absent,
            # and then take their defaults, which pass).
            if type(pointer.seq) is not int or pointer.seq < 1:
                raise ValueError(f"its seq {pointer.seq!r} is not a positive integer")
            if not isinstance(pointer.alias, str) or not is_alias_name(pointer.alias):
                raise ValueError(f"its alias {pointer.alias!r} is not an alias name")
            for name in ("action", "updated_at", "actor", "nonce"):
                if not isinstance(value := getattr(pointer, name), str):
                    raise ValueError(f"its {name} {value!r} is not text")
            if not isinstance(pointer.details, dict):
                raise ValueError(f"its details {pointer.details!r} are not a JSON object")
            return pointer
        except (ValueError, TypeError) as exc:
            if history:
                raise RegistryError(f"alias history entry {where} is unreadable ({exc}): restore it from a backup of "
                                    "the registry; until then a rollback names its version (--to)") from exc
            raise RegistryError(
                f"alias pointer {where} is unreadable ({exc}): delete that object (in the cloud: `gcloud storage rm "
                f"{where}`; locally, from the GCS emulator's bucket), then set the alias again (champion: `tenfold "
                "models promote <version>`; challenger: the next train_model run sets it); its history is kept") from exc


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def utc_stamp() -> str:
    """Now, as the registry stamps what it records (``created_at``, ``AliasPointer.updated_at``): ISO UTC to the
    millisecond, so stamps compare as text."""
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")


def login_name() -> str | None:
    """This process's login name; None where its uid has none (a container's user without a passwd entry)."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return None


def _actor() -> str:
    return f"{login_name() or 'unknown'}@{socket.gethostname()}"


def check_alias(alias: str) -> str:
    if not _ALIAS_RE.fullmatch(alias):
        raise ValueError(f"{alias!r} is not an alias name: use lowercase letters, digits and '-', e.g. champion")
    return alias


def is_alias_name(text: str) -> bool:
    return bool(_ALIAS_RE.fullmatch(text))


def is_version_id(text: str) -> bool:
    return bool(_VERSION_RE.fullmatch(text))


def check_version_id(version: str) -> str:
    if not is_version_id(version):
        raise UnknownVersion(f"{version!r} is not a version id ({VERSION_ID_LEN} hex digits); list them with `tenfold models list`")
    return version


class ModelRegistry:
    """Versions and aliases in ``settings.storage.models_bucket`` under ``registry_prefix``."""

    # Probe results per (endpoint, bucket), shared by every registry in the process.
    _probed: dict[tuple[str, str], bool] = {}  # noqa: RUF012 (deliberately class-level)
    _probe_lock = threading.Lock()

    def __init__(self, settings: Settings, *, client: Any = None, allow_unsafe_store: bool = False,
                 cas_retries: int = 8) -> None:
        from tenfold.storage import gcs_client

        self.settings = settings
        self.client = client or gcs_client(settings)
        self.bucket_name = settings.storage.models_bucket
        self.bucket = self.client.bucket(self.bucket_name)
        self.prefix = settings.storage.registry_prefix.strip("/")
        self.allow_unsafe_store = allow_unsafe_store
        self.cas_retries = cas_retries

    # --- names --------------------------------------------------------------------------------------
    def _name(self, *parts: str) -> str:
        return self.settings.storage.registry_object(*parts)

    def version_uri(self, version: str) -> str:
        return f"gs://{self.bucket_name}/{self._name('versions', version)}"

    def alias_uri(self, alias: str) -> str:
        """The pointer object's URI: the same string as the Airflow Asset for that alias (one function builds both)."""
        return self.settings.storage.alias_uri(alias)

    # --- the precondition probe ---------------------------------------------------------------------
    def _endpoint(self) -> str:
        return self.settings.storage.emulator_host or "https://storage.googleapis.com"

    def ensure_preconditions_enforced(self) -> bool:
        """Probe once per process whether the store refuses a create over an existing object."""
        from google.api_core.exceptions import PreconditionFailed

        key = (self._endpoint(), self.bucket_name)
        with self._probe_lock:
            enforced = self._probed.get(key)
            if enforced is None:
                blob = self.bucket.blob(self._name("_probe", uuid.uuid4().hex))
                blob.upload_from_string(b"1", if_generation_match=0)
                try:
                    blob.upload_from_string(b"2", if_generation_match=0)
                    enforced = False
                except PreconditionFailed:
                    enforced = True
                try:
                    blob.delete()
                except Exception:
                    log.debug("could not delete probe object %s", blob.name)
                self._probed[key] = enforced
        if not enforced:
            message = (
                f"the object store at {self._endpoint()} (bucket {self.bucket_name}) ignores generation preconditions "
                "(gcp-storage-emulator does): concurrent alias moves could silently lose a race and versions could be "
                "overwritten. Use fake-gcs-server (TENFOLD_LOCAL__GCS_EMULATOR=fake-gcs-server, the default) or real GCS "
                "(code that embeds the registry with a single writer may pass ModelRegistry(..., "
                "allow_unsafe_store=True))."
            )
            if not self.allow_unsafe_store:
                raise PreconditionsNotEnforced(message)
            warnings.warn(message, RuntimeWarning, stacklevel=2)
            log.error("UNSAFE REGISTRY STORE: %s", message)
        return bool(enforced)

    # --- immutable objects --------------------------------------------------------------------------
    def _create(self, name: str, *, data: bytes, sha256: str, content_type: str = "application/octet-stream") -> bool:
        """Create ``name`` once; returns False if it already held the same content, raises if different."""
        from google.api_core.exceptions import PreconditionFailed

        blob = self.bucket.blob(name)
        try:
            blob.upload_from_string(data, content_type=content_type, if_generation_match=0)
            return True
        except PreconditionFailed:
            existing = hashlib.sha256(self.bucket.blob(name).download_as_bytes()).hexdigest()
            if existing != sha256:
                raise VersionConflict(
                    f"gs://{self.bucket_name}/{name} already exists with different content (sha256 {existing[:12]}, "
                    f"this register has {sha256[:12]}): registry versions are immutable"
                ) from None
            return False

    # --- registering --------------------------------------------------------------------------------
    def _scan(self, model_dir: Path, metrics: Mapping[str, Any] | None) -> tuple[list[tuple[FileRecord, Path | bytes]], dict[str, Any]]:
        if not model_dir.is_dir():
            raise InvalidModelDir(f"model directory {model_dir} does not exist; train a model first")
        entries: list[tuple[FileRecord, Path | bytes]] = []
        for path in sorted(model_dir.rglob("*")):
            rel = path.relative_to(model_dir)
            if not path.is_file() or set(rel.parts[:-1]) & _EXCLUDED_DIRS or rel.name in _EXCLUDED_FILES:
                continue
            if ".tmp" in rel.name or rel.name.startswith("."):
                continue  # an interrupted atomic write, or editor/OS litter
            if rel.as_posix() == METRICS_FILE and metrics is not None:
                continue  # the metrics passed in are the ones registered
            if (why := unsafe_relative_path(rel.as_posix())) is not None:
                # A name Linux allows (a backslash, "a:b") that readers refuse as a way out of the folder: committed,
                # the version could never be read back, and registering it again would meet it every time.
                raise InvalidModelDir(f"{path} cannot go into the registry: its name is read as a path outside the "
                                      f"model folder ({why}); rename or remove it, then register again")
            entries.append((FileRecord(rel.as_posix(), _sha256_file(path), path.stat().st_size), path))
        names = {e[0].path for e in entries}
        if META_FILE not in names:
            raise InvalidModelDir(f"{model_dir} has no {META_FILE}: it is not a saved model (save it with tenfold.model)")
        if metrics is None:
            if METRICS_FILE not in names:
                raise InvalidModelDir(f"{model_dir} has no {METRICS_FILE} and no metrics were given: evaluate the model first")
            # Committed as it is, it must be what every reader takes it for: "{bad" raised a parse error naming no
            # file, and "5" was committed, after which `tenfold models list` died of it for every version.
            try:
                metrics_body = json.loads((model_dir / METRICS_FILE).read_bytes())
            except (ValueError, RecursionError) as exc:
                raise InvalidModelDir(f"{model_dir / METRICS_FILE} is not JSON ({exc}): write the model's evaluation "
                                      "there as a JSON object (e.g. {\"auc\": 0.7}), or pass metrics=") from exc
            if not isinstance(metrics_body, dict):
                raise InvalidModelDir(f"{model_dir / METRICS_FILE} holds a JSON {type(metrics_body).__name__}, not an "
                                      "object: write the model's evaluation there as a JSON object (e.g. "
                                      "{\"auc\": 0.7}), or pass metrics=")
        else:
            metrics_body = json.loads(json.dumps(dict(metrics), default=float))
            blob = json.dumps(metrics_body, indent=2, sort_keys=True).encode()
            entries.append((FileRecord(METRICS_FILE, hashlib.sha256(blob).hexdigest(), len(blob)), blob))
        self._check_model_files(model_dir, {e[0].path: e[0] for e in entries})
        return sorted(entries, key=lambda e: e[0].path), metrics_body

    @staticmethod
    def _hashed_bytes(record: FileRecord, source: Path | bytes) -> bytes:
        """The bytes of ``source`` as scanned: what is uploaded is what was hashed. A file rewritten since the
        scan (a trainer still writing, a copy in progress) is refused, or VERSION.json would record a hash its
        stored object does not have and the committed version would fail every download."""
        if isinstance(source, bytes):
            return source
        data = source.read_bytes()
        now = hashlib.sha256(data).hexdigest()
        if now != record.sha256:
            raise InvalidModelDir(f"{source} changed while it was being registered (sha256 {record.sha256[:12]} when "
                                  f"scanned, {now[:12]} now): register the folder again once nothing writes to it")
        return data

    @staticmethod
    def _check_model_files(model_dir: Path, records: Mapping[str, FileRecord]) -> None:
        """Refuse a folder that could never load: its weights or preprocessing state missing, or not the bytes its
        ``meta.json`` records (a copy in progress, a mixed-up folder). The same names and hashes the loader
        (``tenfold.model.io``) checks, read here without importing torch."""
        try:
            meta = json.loads((model_dir / META_FILE).read_bytes())
        except ValueError as exc:
            raise InvalidModelDir(f"{model_dir / META_FILE} is not JSON ({exc}): it is not a saved model") from exc
        if not isinstance(meta, dict):
            raise InvalidModelDir(f"{model_dir / META_FILE} is not a JSON object: it is not a saved model")
        for what, name_key, sha_key, default in (("weights", "weights_file", "weights_sha256", WEIGHTS_FILE),
                                                 ("preprocessing state", "preprocessing_file", "preprocessing_sha256",
                                                  PREPROCESSING_FILE)):
            name = str(meta.get(name_key, default))
            record = records.get(name)
            if record is None:
                raise InvalidModelDir(f"{model_dir} has no {name} (the model's {what}): a model needs its weights and "
                                      "its preprocessing state; save it with tenfold.model")
            if sha_key in meta and meta[sha_key] != record.sha256:
                raise InvalidModelDir(f"{model_dir / name} does not match {META_FILE} (sha256 {record.sha256[:12]}, "
                                      f"recorded {str(meta[sha_key])[:12]}): the folder is mixed up or still being "
                                      "written; save the model again")

    def register(self, model_dir: str | Path, lineage: Lineage, *, metrics: Mapping[str, Any] | None = None) -> ModelVersion:
        """Store the model in ``model_dir`` as an immutable version; the same content gives the same version.

        ``metrics`` (the challenger's evaluation) become the version's ``metrics.json``; without them the
        directory must hold one.
        """
        model_dir = Path(model_dir)
        entries, metrics_body = self._scan(model_dir, metrics)
        files = tuple(e[0] for e in entries)
        digest = content_digest(files)
        version = digest[:VERSION_ID_LEN]
        try:
            existing = self._read_version(version, with_lineage=False)
        except _StoredMetricsMissing as exc:
            # Only the stored metrics.json is gone (VERSION.json matched its id): this folder's copy, whose hash the
            # checks below compare, is restored with the other missing files, and ``get`` then checks the metrics.
            existing = exc.version
        if existing is not None:
            if existing.digest != digest or sorted(existing.files, key=lambda f: f.path) != list(files):
                raise VersionConflict(
                    f"version {version} exists with other content ({existing.digest[:16]}...): versions are immutable"
                )
            self._restore_missing(version, entries)
            log.info("version %s is already registered (same content): nothing to do", version)
            return self.get(version)
        self.ensure_preconditions_enforced()
        for record, source in entries:
            self._create(self._name("versions", version, "files", record.path), data=self._hashed_bytes(record, source),
                         sha256=record.sha256)
        lineage_body = json.dumps(lineage.to_dict(), indent=2, sort_keys=True, default=str).encode()
        from google.api_core.exceptions import PreconditionFailed

        try:  # the first register's lineage is kept: a retry never rewrites history
            self.bucket.blob(self._name("versions", version, LINEAGE_FILE)).upload_from_string(
                lineage_body, content_type="application/json", if_generation_match=0)
        except PreconditionFailed:
            log.info("version %s already has lineage from an earlier attempt; keeping it", version)
        body = {
            "format": FORMAT,
            "version": version,
            "digest": digest,
            "created_at": utc_stamp(),
            "files": [asdict(f) for f in files],
            "metrics": metrics_body,
        }
        data = json.dumps(body, indent=2, sort_keys=True).encode()
        try:
            self.bucket.blob(self._name("versions", version, VERSION_FILE)).upload_from_string(
                data, content_type="application/json", if_generation_match=0)
        except PreconditionFailed:
            committed = self._read_version(version, with_lineage=False)
            if committed is None or committed.digest != digest:
                raise VersionConflict(f"version {version} was committed concurrently with different content") from None
        log.info("registered version %s (%d files) at %s", version, len(files), self.version_uri(version))
        return self.get(version)

    def _restore_missing(self, version: str, entries: list[tuple[FileRecord, Path | bytes]]) -> None:
        """Registering a committed version's content again confirms its stored files exist (a metadata read each)
        and creates any missing one again from this folder, whose bytes match the recorded hashes: what
        ``download``'s "file ... is missing" asks for. Objects are still created only where none exists."""
        missing = [(record, source) for record, source in entries
                   if not self.bucket.blob(self._name("versions", version, "files", record.path)).exists()]
        if missing:
            self.ensure_preconditions_enforced()
        for record, source in missing:
            log.warning("version %s had lost its stored %s: restoring it from the folder being registered", version,
                        record.path)
            self._create(self._name("versions", version, "files", record.path), data=self._hashed_bytes(record, source),
                         sha256=record.sha256)

    # --- reading versions ---------------------------------------------------------------------------
    def _read_version(self, version: str, *, with_lineage: bool) -> ModelVersion | None:
        from google.api_core.exceptions import NotFound

        try:
            raw = self.bucket.blob(self._name("versions", version, VERSION_FILE)).download_as_bytes()
        except NotFound:
            return None
        try:
            body = json.loads(raw)
            # A newer writer's marker may differ in any way: checked first, or it read as tampered with (and an
            # operator would delete a valid version) or was taken as this format. Not damage: upgrading reads it.
            written = body.get("format", 1) if isinstance(body, dict) else 1
            if type(written) is int and written > FORMAT:
                raise IntegrityError(f"version {version} was written by a newer Tenfold (format {written}, this one "
                                     f"reads {FORMAT}): upgrade tenfold to read it; the version is not damaged, do not "
                                     "delete it")
            files = tuple(FileRecord(**f) for f in body["files"])
            if not all(isinstance(f.path, str) and isinstance(f.sha256, str) and type(f.bytes) is int for f in files):
                raise TypeError("a file record's path and sha256 are not text, or its bytes not an integer")
            if not isinstance(body.get("metrics", {}), dict):  # what list, show and the gate read as a mapping
                raise TypeError(f"its metrics are a JSON {type(body['metrics']).__name__}, not an object")
            mv = ModelVersion(version=body["version"], digest=body["digest"], files=files, metrics=body.get("metrics", {}),
                              created_at=body["created_at"], uri=self.version_uri(version))
        except (ValueError, KeyError, TypeError) as exc:
            raise IntegrityError(f"{self.version_uri(version)}/{VERSION_FILE} is unreadable ({exc})") from exc
        for record in files:
            if (why := unsafe_relative_path(record.path)) is not None:
                raise IntegrityError(f"{self.version_uri(version)}/{VERSION_FILE} names a file {record.path!r} outside "
                                     f"the version's folder ({why}): the registry was tampered with; delete the version "
                                     "and register the model again")
        if mv.version != version or content_digest(files) != mv.digest or not mv.digest.startswith(version):
            raise IntegrityError(f"{self.version_uri(version)}/{VERSION_FILE} does not match its own id: the registry was tampered with")
        if not self._metrics_match(mv):
            raise IntegrityError(f"{self.version_uri(version)}/{VERSION_FILE} holds metrics that do not match the "
                                 f"version's {METRICS_FILE}: the registry was tampered with")
        if with_lineage:
            try:
                lineage_raw = self.bucket.blob(self._name("versions", version, LINEAGE_FILE)).download_as_bytes()
            except NotFound:
                return mv
            # Lineage is outside the digest, but a version whose lineage cannot be read is as damaged as one whose
            # marker cannot: a registry error naming the file, not a parse error from deep inside a caller.
            try:
                mv = ModelVersion(**{**mv.__dict__, "lineage": Lineage.from_dict(json.loads(lineage_raw))})
            except (ValueError, KeyError, TypeError) as exc:
                raise IntegrityError(f"{self.version_uri(version)}/{LINEAGE_FILE} is unreadable ({type(exc).__name__}: "
                                     f"{exc}); restore it from a backup of the registry") from exc
        return mv

    def _metrics_match(self, mv: ModelVersion) -> bool:
        """Whether VERSION.json's ``metrics`` (what the gate and ``tenfold models`` read) are the version's
        ``metrics.json``, which the digest covers; the copy in VERSION.json is not covered by it.

        ``register`` writes given metrics as canonical JSON, so their recorded sha256 is checked without a
        download; a ``metrics.json`` taken as written in the model folder is downloaded and compared. When that stored
        copy is missing nothing can be compared, which is not tampering: :class:`_StoredMetricsMissing`, which
        ``register`` of the folder repairs."""
        from google.api_core.exceptions import NotFound

        record = next((f for f in mv.files if f.path == METRICS_FILE), None)
        if record is None:
            return not mv.metrics
        canonical = json.dumps(mv.metrics, indent=2, sort_keys=True).encode()
        if hashlib.sha256(canonical).hexdigest() == record.sha256:
            return True
        try:
            stored = self.bucket.blob(name := self._name("versions", mv.version, "files", METRICS_FILE)).download_as_bytes()
        except NotFound:
            raise _StoredMetricsMissing(
                f"file {METRICS_FILE} of committed version {mv.version} is missing from the store "
                f"(gs://{self.bucket_name}/{name}), so its metrics cannot be checked: register the model again from "
                "its folder (it restores a missing file), or restore it from a backup", mv) from None
        if hashlib.sha256(stored).hexdigest() != record.sha256:
            return False
        try:
            return json.dumps(json.loads(stored), sort_keys=True) == json.dumps(mv.metrics, sort_keys=True)
        except ValueError:
            return False

    def get(self, version: str, *, with_lineage: bool = True) -> ModelVersion:
        """A committed version; :class:`UnknownVersion` if there is none with that id."""
        check_version_id(version)
        mv = self._read_version(version, with_lineage=with_lineage)
        if mv is None:
            raise UnknownVersion(f"no version {version} in {self.version_uri('')}: list them with `tenfold models list`")
        return mv

    def exists(self, version: str) -> bool:
        return bool(_VERSION_RE.fullmatch(version)) and self._read_version(version, with_lineage=False) is not None

    def incomplete(self, version: str | ModelVersion) -> str | None:
        """Why a committed version's stored files cannot all be downloaded (None: each is there at its recorded size).

        Metadata only, one read per file and nothing downloaded: a file deleted from the store (what ``download``
        tells an operator to do with a corrupted one, until the model is registered again) or cut short. Hashes are
        ``download``'s to check. The answer is a clause naming the file, which reads after the version's id."""
        mv = version if isinstance(version, ModelVersion) else self.get(version, with_lineage=False)
        for record in mv.files:
            name = self._name("versions", mv.version, "files", record.path)
            blob = self.bucket.get_blob(name)
            if blob is None:
                return f"its stored {record.path} is missing (gs://{self.bucket_name}/{name})"
            if blob.size is not None and int(blob.size) != record.bytes:
                return (f"its stored {record.path} holds {int(blob.size)} bytes, not the {record.bytes} recorded "
                        f"(gs://{self.bucket_name}/{name})")
        return None

    def list_versions(self) -> list[ModelVersion]:
        """Committed versions, oldest first; one whose VERSION.json fails verification is left out with a warning
        (``get`` of it raises the IntegrityError that says what is wrong)."""
        out = []
        for blob in self.client.list_blobs(self.bucket_name, prefix=self._name("versions") + "/"):
            parts = blob.name[len(self.prefix) + 1:].split("/")
            if len(parts) == 3 and parts[2] == VERSION_FILE:
                try:
                    mv = self._read_version(parts[1], with_lineage=False)
                except IntegrityError as exc:  # one damaged version must not hide every other one
                    log.warning("version %s is left out of the list: %s", parts[1], exc)
                    continue
                if mv is not None:
                    out.append(mv)
        return sorted(out, key=lambda v: (v.created_at, v.version))

    def find(self, ref: str) -> str:
        """A version id from an alias name, a full id, or a unique id prefix (for people)."""
        if _ALIAS_RE.fullmatch(ref) and (pointer := self.alias(ref)) is not None:
            return pointer.version
        if ref in (CHAMPION, CHALLENGER):  # the platform's own aliases, not set yet (a fresh platform)
            raise UnknownVersion(
                f"no {ref} yet: train_model sets the challenger when a version passes its gate, and promotes the "
                f"first one champion; or set it by hand (`tenfold models promote <version>`, ids from "
                "`tenfold models list`)")
        if _VERSION_RE.fullmatch(ref):
            return self.get(ref, with_lineage=False).version
        if not ref.strip():  # every id starts with "": a registry of one version was found by it
            raise UnknownVersion(f"{ref!r} names no version: give an alias or at least {MIN_PREFIX_LEN} digits of an id "
                                 "(ids in `tenfold models list`)")
        if _SHORT_PREFIX_RE.fullmatch(ref):
            # Refused as too short, not as matching nothing: `show 9` said "names no version" of the 9... in the list.
            starting = sum(v.version.startswith(ref) for v in self.list_versions())
            raise UnknownVersion(
                f"{ref!r} is too short a version prefix: give at least {MIN_PREFIX_LEN} of its digits ("
                f"{starting} version{'' if starting == 1 else 's'} start{'s' if starting == 1 else ''} with it"
                + (", and it names no alias" if _ALIAS_RE.fullmatch(ref) else "")
                + "; ids in `tenfold models list`)")
        matches = [v.version for v in self.list_versions() if v.version.startswith(ref)]
        if len(matches) == 1:
            return matches[0]
        raise UnknownVersion(
            f"{ref!r} names no alias and {'several' if matches else 'no'} versions; use a full id from `tenfold models list`"
        )

    def meta(self, version: str) -> dict[str, Any]:
        """The version's ``meta.json`` (what it learnt from, how to rebuild it), verified against its recorded
        sha256, without downloading the weights."""
        from google.api_core.exceptions import NotFound

        mv = self.get(version, with_lineage=False)
        record = next((f for f in mv.files if f.path == META_FILE), None)
        name = self._name("versions", version, "files", META_FILE)
        missing = IntegrityError(f"version {version} has no {META_FILE} in the store (gs://{self.bucket_name}/{name}); "
                                 "restore it or register the model again")
        if record is None:
            raise missing
        try:
            raw = self.bucket.blob(name).download_as_bytes()
        except NotFound:
            raise missing from None
        if hashlib.sha256(raw).hexdigest() != record.sha256:
            raise IntegrityError(f"{META_FILE} of version {version} does not match its recorded sha256 "
                                 f"{record.sha256[:12]}: the stored copy was tampered with or corrupted. Stored files "
                                 f"are never overwritten: delete gs://{self.bucket_name}/{name}, then register the "
                                 "model again (it restores a missing file), or restore it from a backup")
        try:
            body = json.loads(raw)
        except ValueError as exc:  # registered only after the same check, so never without tampering
            raise IntegrityError(f"{META_FILE} of version {version} is not JSON ({exc})") from exc
        if not isinstance(body, dict):
            raise IntegrityError(f"{META_FILE} of version {version} is not a JSON object")
        return body

    # --- downloading --------------------------------------------------------------------------------
    def download(self, version: str, dest: str | Path) -> Path:
        """Copy a version's files to ``dest``, verifying every file and the version digest.

        The copy is assembled beside ``dest`` and renamed into place, so ``dest`` is either a complete,
        verified copy or untouched. An existing verified copy of the same version is reused. Downloads to one
        ``dest`` take turns (``.download-<name>.lock`` beside it): two processes fetching one version (the drift
        monitor's DAG task and its CLI) both found it absent, and the second rename met the first's folder, ENOTEMPTY.
        """
        from tenfold.fsio import file_lock

        mv = self.get(version, with_lineage=False)
        dest = Path(dest)
        with file_lock(dest.parent / f".download-{dest.name}.lock"):
            return self._download(mv, version, dest)

    def _download(self, mv: ModelVersion, version: str, dest: Path) -> Path:
        marker = dest / VERSION_FILE
        if marker.is_file():
            try:
                body = json.loads(marker.read_text())
                if isinstance(body, dict) and body.get("digest") == mv.digest and self._verify_local(dest, mv) is None:
                    return dest
            except ValueError:  # a marker that is not JSON (or not an object, above): no verified copy, fetch it
                pass
        dest.parent.mkdir(parents=True, exist_ok=True)
        _remove_abandoned(dest)
        tmp = dest.parent / f".{dest.name}.partial-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        from google.api_core.exceptions import NotFound

        try:
            for record in mv.files:
                target = tmp / record.path
                if unsafe_relative_path(record.path) is not None or not target.resolve().is_relative_to(tmp.resolve()):
                    raise IntegrityError(f"version {version} names a file {record.path!r} outside its folder: the "
                                         "registry was tampered with; delete the version and register the model again")
                target.parent.mkdir(parents=True, exist_ok=True)
                name = self._name("versions", version, "files", record.path)
                try:
                    self.bucket.blob(name).download_to_filename(str(target))
                except NotFound:
                    # A committed version's object is gone: as permanent as a changed one (every read finds it
                    # missing), so the same IntegrityError, which callers treat as a verdict and never retry.
                    raise IntegrityError(f"file {record.path} of committed version {version} is missing from the store "
                                         f"(gs://{self.bucket_name}/{name}); restore it or register the model again"
                                         ) from None
            problem = self._verify_local(tmp, mv)
            if problem:
                raise IntegrityError(f"version {version} failed verification on download: {problem}; the stored copy "
                                     "was tampered with or corrupted. Stored files are never overwritten: delete that "
                                     f"file under gs://{self.bucket_name}/{self._name('versions', version, 'files')}/, "
                                     "then register the model again (it restores a missing file), or restore it from "
                                     "a backup")
            (tmp / VERSION_FILE).write_text(json.dumps({"version": mv.version, "digest": mv.digest}))
            if dest.exists():
                old = dest.parent / f".{dest.name}.old-{uuid.uuid4().hex[:8]}"
                dest.rename(old)
                shutil.rmtree(old, ignore_errors=True)
            tmp.rename(dest)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        return dest

    @staticmethod
    def _verify_local(root: Path, mv: ModelVersion) -> str | None:
        for record in mv.files:
            path = root / record.path
            if not path.is_file():
                return f"{record.path} is missing"
            if path.stat().st_size != record.bytes or _sha256_file(path) != record.sha256:
                return f"{record.path} does not match its recorded sha256 {record.sha256[:12]}"
        if content_digest(mv.files) != mv.digest:
            return "the file list does not match the version digest"
        return None

    # --- aliases ------------------------------------------------------------------------------------
    def _read_pointer(self, alias: str) -> AliasPointer | None:
        from google.api_core.exceptions import NotFound

        blob = self.bucket.get_blob(self._name("aliases", alias))
        if blob is None:
            return None
        try:
            raw = blob.download_as_bytes(if_generation_match=blob.generation)
        except NotFound:
            return None
        except Exception as exc:  # the pointer moved between metadata and body: read again
            from google.api_core.exceptions import PreconditionFailed

            if isinstance(exc, PreconditionFailed):
                return self._read_pointer(alias)
            raise
        return AliasPointer.from_json(raw, int(blob.generation or 0), self.alias_uri(alias))

    def alias(self, alias: str) -> AliasPointer | None:
        """The pointer an alias holds now (with its generation), or None if it was never set."""
        return self._read_pointer(check_alias(alias))

    def resolve(self, alias: str) -> str | None:
        """The version an alias points to, or None if it was never set."""
        pointer = self.alias(alias)
        return pointer.version if pointer else None

    def aliases(self) -> dict[str, AliasPointer]:
        out = {}
        for blob in self.client.list_blobs(self.bucket_name, prefix=self._name("aliases") + "/"):
            name = blob.name.rsplit("/", 1)[-1]
            if _ALIAS_RE.fullmatch(name) and (pointer := self._read_pointer(name)) is not None:
                out[name] = pointer
        return out

    def _history_name(self, alias: str, seq: int) -> str:
        return self._name("alias-history", alias, f"{seq:010d}.json")

    def _append_history(self, pointer: AliasPointer) -> None:
        from google.api_core.exceptions import PreconditionFailed

        # Already recorded (by us on a retried request, or backfilled by the next mover) is fine.
        with contextlib.suppress(PreconditionFailed):
            self.bucket.blob(self._history_name(pointer.alias, pointer.seq)).upload_from_string(
                pointer.to_json(), content_type="application/json", if_generation_match=0)

    def _last_history_seq(self, alias: str) -> int:
        """The highest seq in ``alias``'s history (0: none)."""
        prefix = self._name("alias-history", alias) + "/"
        names = (b.name[len(prefix):].removesuffix(".json") for b in self.client.list_blobs(self.bucket_name, prefix=prefix))
        return max((int(n) for n in names if n.isdigit()), default=0)

    def alias_had_history(self, alias: str) -> bool:
        """Whether ``alias`` was ever set (its history holds a move), whether or not its pointer is there now: a
        pointer deleted (a damaged one is repaired so) leaves its history, and the alias is then missing, not new."""
        return self._last_history_seq(check_alias(alias)) > 0

    def alias_history(self, alias: str) -> list[AliasPointer]:
        """Every move of ``alias``, oldest first (the current pointer included even if its entry is pending); an
        entry that cannot be read is left out, with a warning (one damaged entry must not hide the others)."""
        return self._history(alias)[0]

    def _history(self, alias: str) -> tuple[list[AliasPointer], list[str]]:
        """:meth:`alias_history`, and the refusals of the entries left out."""
        check_alias(alias)
        entries: dict[int, AliasPointer] = {}
        damaged: list[str] = []
        for blob in self.client.list_blobs(self.bucket_name, prefix=self._name("alias-history", alias) + "/"):
            try:
                pointer = AliasPointer.from_json(blob.download_as_bytes(), 0, f"gs://{self.bucket_name}/{blob.name}",
                                                 history=True)
            except RegistryError as exc:
                log.warning("left out of %s's history: %s", alias, exc)
                damaged.append(str(exc))
                continue
            entries[pointer.seq] = pointer
        current = self._read_pointer(alias)
        if current is not None:
            entries.setdefault(current.seq, current)
        return [entries[k] for k in sorted(entries)], damaged

    def set_alias(self, alias: str, version: str, *, expected: str | _Any | None = ANY, action: str = "set",
                  reason: str = "", actor: str | None = None, details: Mapping[str, Any] | None = None) -> AliasPointer:
        """Point ``alias`` at ``version`` atomically (compare-and-swap on the pointer's generation).

        ``expected`` is the version the caller believes the alias points to now (None: not set yet). If it
        points elsewhere, or another mover wins the race, :class:`AliasConflict` is raised and nothing
        changes. With ``expected=ANY`` a lost race is retried against the new pointer. Setting an alias to
        the version it already holds is a no-op (idempotent).
        """
        from google.api_core.exceptions import PreconditionFailed

        check_alias(alias)
        mv = self.get(version, with_lineage=False)  # only committed versions can be pointed at
        # ... and only whole ones: moved to a version whose weights were deleted, every replica failed to load it.
        if problem := self.incomplete(mv):
            raise IntegrityError(
                f"{alias} was not moved: version {version} is incomplete in the store ({problem}). Register the "
                "model's folder again (it restores a missing file; a cut-short one must first be deleted) or restore "
                f"the file from a backup, then move {alias} again; or move it to another version")
        self.ensure_preconditions_enforced()
        for _attempt in range(self.cas_retries):
            current = self._read_pointer(alias)
            current_version = current.version if current else None
            # Already there is checked before ``expected``: a retried move whose first request landed finds the
            # alias where it asked, and must get the no-op, not a conflict with its own earlier success.
            if current is not None and current.version == version:
                self._append_history(current)
                return current
            if expected is not ANY and current_version != expected:
                raise AliasConflict(
                    f"{alias} points to {current_version or 'nothing'}, not {expected or 'nothing'} as expected"
                    + (f" (moved by {current.actor} at {current.updated_at}: {current.action} {current.reason!r})" if current else "")
                    + "; re-read it and decide again"
                )
            if current is not None:
                self._append_history(current)  # backfill if its mover died before recording it
            # A pointer set again after it was deleted (a damaged one is repaired so) goes on after its history:
            # starting at 1 again, each move landed on a seq the history held, and was never recorded.
            seq = (current.seq if current else self._last_history_seq(alias)) + 1
            new = AliasPointer(
                alias=alias, version=version, seq=seq, previous=current_version,
                action=action, updated_at=utc_stamp(), actor=actor or _actor(), reason=reason,
                details=dict(details or {}), nonce=uuid.uuid4().hex,
            )
            blob = self.bucket.blob(self._name("aliases", alias))
            try:
                blob.upload_from_string(new.to_json(), content_type="application/json",
                                        if_generation_match=current.generation if current else 0)
            except PreconditionFailed:
                now = self._read_pointer(alias)
                if now is not None and now.nonce == new.nonce:
                    new = AliasPointer(**{**new.__dict__, "generation": now.generation})  # a retried request that had landed
                elif now is not None and now.version == version:
                    # Another mover with the same target won (a manual promote racing a rollout's, or a zombie try of
                    # this one): the alias holds what was asked, the no-op above, not a lost race. The winner's
                    # pointer is the move; its history entry is the winner's (create-only, so a backfill if it died).
                    self._append_history(now)
                    return now
                elif expected is not ANY:
                    raise AliasConflict(
                        f"lost the race to move {alias} to {version}: it moved to {now.version if now else 'nothing'}"
                        + (f" (by {now.actor})" if now else "") + " after it was read; re-read it and decide again"
                    ) from None
                else:
                    continue
            else:
                new = AliasPointer(**{**new.__dict__, "generation": int(blob.generation or 0)})
            self._append_history(new)
            log.info("%s: %s -> %s (%s)", alias, current_version, version, action)
            return new
        raise AliasConflict(f"could not move {alias} after {self.cas_retries} attempts: too many concurrent movers; retry")

    def promote(self, version: str, *, expected: str | _Any | None = ANY, reason: str = "",
                details: Mapping[str, Any] | None = None, actor: str | None = None) -> AliasPointer:
        """Make ``version`` the champion (see :meth:`set_alias` for ``expected``)."""
        return self.set_alias(CHAMPION, version, expected=expected, action="promote", reason=reason, details=details, actor=actor)

    def rollback(self, alias: str = CHAMPION, *, to: str | None = None, from_version: str | None = None,
                 reason: str = "", actor: str | None = None,
                 unusable: Callable[[str], str | None] | None = None) -> AliasPointer:
        """Move ``alias`` back to an earlier version from its history.

        Without ``to``: the newest version it held before the current one, skipping versions it was
        rolled back from since they last held it, so repeated rollbacks walk further back (A, B, C:
        C -> B -> A), and those a rollback jumped over (A, B, C, then back to A: B is not the next), while a
        version promoted again after a rollback is a candidate again.

        ``unusable``: why a version cannot be the alias's now (None: it can); such a candidate is skipped, and a
        ``to`` it refuses is a :class:`RegistryError` saying why. A version whose stored files are not all there
        (:meth:`incomplete`) is treated so whatever ``unusable`` says: ``set_alias`` would refuse it.

        ``from_version``: the version to roll back from. When the alias was already rolled back from it (the last
        move is that rollback: a rerun after an error that came once the move had landed), that move is returned
        and nothing moves again; when it points elsewhere, :class:`AliasConflict`.

        A pointer that is missing while the history holds moves (deleted, as a damaged one is repaired) is set again
        by ``to`` alone (a version it held); without it (or with ``from_version``) a :class:`RegistryError` names the
        version the history shows it pointed to last.
        """
        history, damaged = self._history(alias)
        current = self._read_pointer(alias)
        if current is None:
            if not history and not damaged:
                raise RegistryError(f"{alias} was never set: there is nothing to roll back")
            # Its pointer was deleted (a damaged one is repaired so) and its history kept: missing, not never set.
            # Only a named target sets it again; "the one before the current" means nothing without a current.
            if to is None or from_version is not None:
                last = (f"the last version its history shows it pointed to is {history[-1].version}" if history
                        else f"its history cannot be read ({damaged[0]})")
                raise RegistryError(
                    f"{alias}'s pointer ({self.alias_uri(alias)}) is missing, but the alias was set before: {last}. "
                    f"Nothing was moved{f' (it does not point to {from_version})' if from_version else ''}; set it "
                    f"with `tenfold models rollback {alias} --to <version>` (a version it held"
                    + (f", e.g. --to {history[-1].version}" if history else "") + ")"
                    + (" or `tenfold models promote <version>`" if alias == CHAMPION else ""))
        now = current.version if current else None  # None only with ``to`` named: it sets the alias again

        def why_not(version: str) -> str | None:
            try:
                if problem := self.incomplete(version):
                    return (f"{problem}: register the model's folder again, or restore the file from a backup, to "
                            "make it a candidate again")
            except RegistryError as exc:  # its VERSION.json gone or damaged since it was held
                return str(exc)
            return unusable(version) if unusable is not None else None

        if current is not None and from_version is not None and now != from_version:
            if current.action == "rollback" and current.previous == from_version and to in (None, current.version):
                self._append_history(current)  # the entry its first run may not have recorded
                return current
            raise AliasConflict(f"{alias} is {current.version}, not {from_version} (moved by {current.actor} at "
                                f"{current.updated_at}: {current.action} {current.reason!r}); re-read it and decide again")
        if to is not None:
            # What a readable entry records it held: its version, and the one it moved from (an unreadable entry's
            # version is its successor's ``previous``: the target the refusal over damaged history points to).
            held = {h.version for h in history} | {h.previous for h in (*history, current) if h and h.previous}
            if to not in held:
                raise RegistryError(f"{to} was never {alias}; roll back only to a version it held (see `tenfold models show {alias}`)")
            if why := why_not(to):
                raise RegistryError(f"{alias} cannot go back to {to}: {why}")
        else:
            if damaged:  # a rollback left out might have ruled a candidate out: never guess the target
                again = f" --from {from_version}" if from_version else ""
                raise RegistryError(f"{alias}'s history cannot be read whole ({damaged[0]}): the version to roll back "
                                    f"to cannot be chosen; name it (`tenfold models rollback {alias}{again} --to "
                                    "<version>`)")
            rolled_away: set[str] = set()
            held_in_order: list[str] = []
            for h in history:  # oldest first: a version set again after it was rolled back from is good again
                if h.action == "rollback":
                    # Every version held since the target last was (a rollback --to jumps over some), and the one left.
                    back = max((i for i, v in enumerate(held_in_order) if v == h.version), default=None)
                    rolled_away.update(held_in_order[back + 1:] if back is not None else ())
                    if h.previous:
                        rolled_away.add(h.previous)
                rolled_away.discard(h.version)
                held_in_order.append(h.version)
            candidates = list(dict.fromkeys(h.version for h in reversed(history)
                                            if h.version != now and h.version not in rolled_away))
            skipped: dict[str, str] = {}  # read newest first, only as far as the first usable one
            for candidate in candidates:
                if not (why := why_not(candidate)):
                    to = candidate
                    break
                skipped[candidate] = why
            if to is None:
                said = "; ".join(f"{v}: {why}" for v, why in skipped.items())
                raise RegistryError(f"{alias} has no earlier version to roll back to (history: "
                                    f"{[h.version for h in history]})" + (f"; skipped {said}" if said else ""))
            if skipped:
                log.warning("%s: rolling back past %s", alias, "; ".join(f"{v} ({why})" for v, why in skipped.items()))
        return self.set_alias(alias, to, expected=now, action="rollback", reason=reason or "rollback", actor=actor)

    # --- decisions (audit) ---------------------------------------------------------------------------
    def record_decision(self, version: str, key: str, body: Mapping[str, Any]) -> bool:
        """Keep a gate decision about ``version`` (create-only; False if ``key`` was already recorded)."""
        from google.api_core.exceptions import PreconditionFailed

        check_version_id(version)
        if not _DECISION_KEY_RE.fullmatch(key):
            raise ValueError(f"{key!r}: a decision key is 1 to 200 lowercase letters, digits, '-', '_' or '.', "
                             "starting with a letter or digit")
        self.ensure_preconditions_enforced()  # create-only: a store that ignores it would overwrite the decision
        try:
            self.bucket.blob(self._name("decisions", version, f"{key}.json")).upload_from_string(
                json.dumps(dict(body), indent=2, sort_keys=True, default=str), content_type="application/json",
                if_generation_match=0)
            return True
        except PreconditionFailed:
            return False

    def decisions(self, version: str) -> dict[str, dict[str, Any]]:
        """Every gate decision recorded about ``version``, by key."""
        out = {}
        for blob in self.client.list_blobs(self.bucket_name, prefix=self._name("decisions", version) + "/"):
            try:
                body = json.loads(blob.download_as_bytes())
            except ValueError as exc:
                body = exc
            if not isinstance(body, dict):
                why = body if isinstance(body, ValueError) else f"a JSON {type(body).__name__}, not an object"
                raise IntegrityError(f"gate decision gs://{self.bucket_name}/{blob.name} is unreadable ({why}): "
                                     "restore it from a backup of the registry (deleting it loses that decision)")
            out[blob.name.rsplit("/", 1)[-1].removesuffix(".json")] = body
        return out

    def kept_out_by_the_gate(self, version: str, champion: str) -> dict[str, Any] | None:
        """The last of the offline gate's decisions that compared ``version`` with ``champion`` when every one of them
        kept it out; None when one let it through or none compared them (a "NO COMPARISON" record scored no
        champion: it carries no ``champion`` metrics and decides nothing)."""
        against = [d for key, d in self.decisions(version).items()
                   if not key.startswith(ROLLOUT_DECISION_PREFIX) and d.get("champion_version") == champion
                   and isinstance(d.get("champion"), Mapping)]
        return against[-1] if against and not any(d.get("promote") for d in against) else None

    def canary_rejections(self, version: str) -> list[dict[str, Any]]:
        """The decisions of canary rollouts that rejected ``version`` (recorded as ``rollout-<rollout id>``)."""
        return [d for key, d in self.decisions(version).items()
                if key.startswith(ROLLOUT_DECISION_PREFIX) and d.get("rejected")]

    # --- rollouts (audit, and the state a resumed rollout continues from) -----------------------------
    def record_rollout_event(self, version: str, rollout_id: str, key: str, body: Mapping[str, Any]) -> bool:
        """Append event ``key`` to rollout ``rollout_id`` of ``version``; create-only, so False when ``key``
        was already recorded (a retried step finds its own earlier event and does not act twice)."""
        from google.api_core.exceptions import PreconditionFailed

        check_version_id(version)
        for part, what in ((rollout_id, "rollout id"), (key, "rollout event key")):
            if not _ALIAS_RE.fullmatch(part.replace("_", "-").replace(".", "-")):
                raise ValueError(f"{part!r}: a {what} is lowercase letters, digits, '-', '_' or '.'")
        self.ensure_preconditions_enforced()  # create-only: a retried step must find its own event, not replace it
        try:
            self.bucket.blob(self._name("rollouts", version, rollout_id, f"{key}.json")).upload_from_string(
                json.dumps(dict(body), indent=2, sort_keys=True, default=str), content_type="application/json",
                if_generation_match=0)
            return True
        except PreconditionFailed:
            return False

    def rollout_events(self, version: str, rollout_id: str) -> dict[str, dict[str, Any]]:
        """The events of one rollout, by key, in the order they were created."""
        prefix = self._name("rollouts", version, rollout_id) + "/"
        blobs = sorted(self.client.list_blobs(self.bucket_name, prefix=prefix), key=lambda b: (b.time_created, b.name))
        events = {}
        for blob in blobs:
            body = self._read_event(blob)
            if body is not None:
                events[blob.name.rsplit("/", 1)[-1].removesuffix(".json")] = body
        return events

    def _read_event(self, blob: Any) -> dict[str, Any] | None:
        """One event object; None when it is still being written (a local store can list an object before its
        bytes are complete): a watcher sees it on its next read. Events are written whole, once."""
        import time

        from google.api_core.exceptions import NotFound

        for attempt in range(3):
            try:
                body = json.loads(blob.download_as_bytes())
            except (ValueError, NotFound) as exc:
                if attempt == 2:
                    log.warning("rollout event %s is not readable yet (%s); it is skipped in this read", blob.name, exc)
                    return None
                time.sleep(0.2 * (attempt + 1))
                continue
            # Written whole as an object, so no part of one parses as anything else: other JSON ('null', '5', '[]')
            # is damage, which another read meets again. ``dict()`` of it raised TypeError out of every reader of
            # the rollout, or turned '[]' into an empty event.
            if not isinstance(body, dict):
                raise IntegrityError(f"rollout event gs://{self.bucket_name}/{blob.name} is unreadable (a JSON "
                                     f"{type(body).__name__}, not an object): restore it from a backup of the registry "
                                     "(deleting it loses that event)")
            return body
        return None

    def rollouts(self, version: str | None = None) -> list[tuple[str, str, str]]:
        """``(started, version, rollout_id)`` of every rollout (of ``version``), oldest first.

        ``started`` is the time its first event was created (ISO, UTC)."""
        prefix = self._name("rollouts") + "/" + (f"{version}/" if version else "")
        first: dict[tuple[str, str], str] = {}
        for blob in self.client.list_blobs(self.bucket_name, prefix=prefix):
            rest = blob.name[len(self._name("rollouts")) + 1:].split("/")
            if len(rest) != 3:
                continue
            key = (rest[0], rest[1])
            created = blob.time_created.isoformat() if blob.time_created else ""
            if key not in first or created < first[key]:
                first[key] = created
        return sorted((started, v, r) for (v, r), started in first.items())

