"""What a replica serves: a registered model version and the workload's online features, both in memory.

:func:`load_served_model` resolves a registry reference (alias or version), downloads that version into
a local cache folder (verified; several replicas on one machine share one copy under a file lock),
rebuilds it with :func:`tenfold.model.load_model` from its ``meta.json`` and preprocessing state, and
loads the lookup tables with :func:`tenfold.features.online.load_online_features`. Any failure raises
:class:`ServingLoadError` with what to do: the replica then exits instead of serving half-loaded.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from tenfold.fsio import file_lock

if TYPE_CHECKING:
    import pyarrow as pa
    import torch

    from tenfold.config import Settings
    from tenfold.model import LoadedModel
    from tenfold.workloads import OnlineFeatures

log = logging.getLogger(__name__)


class ServingLoadError(RuntimeError):
    """The replica cannot load what it should serve; the message names the cause and what to do.

    ``transient``: the object store or the local disk failed, not the model (asking again later may work).
    """

    def __init__(self, message: str, *, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient


def model_cache_dir(settings: Settings) -> Path:
    """Where replicas keep downloaded model versions: ``<local.home>/serving/models/<version>``."""
    return settings.local.home / "serving" / "models"


@dataclass
class ServedModel:
    """A model version and the online features, ready to score validated requests."""

    version: str
    loaded: LoadedModel
    features: OnlineFeatures
    device: torch.device
    # The last assembled schema that needed no cast: the next table of that schema is checked by one comparison.
    _passed: pa.Schema | None = dataclasses.field(default=None, init=False, repr=False, compare=False)

    @property
    def workload(self) -> str:
        return str(self.loaded.workload.name)

    def check(self, request: BaseModel) -> None:
        """Raise what scoring ``request`` would (``RequestInvalid``), cheaply, before it joins a batch."""
        self.features.check(request)

    def predict(self, requests: Sequence[BaseModel]) -> list[float]:
        """P(positive) per request, in order: online features, then the model folder's own ``predict_proba``
        (preprocessing, forward pass and whatever the folder adds, e.g. calibration), so the server's
        probabilities are exactly evaluation's and offline inference's.

        Blocking (torch): the server runs it on its single model thread. A failure of the workload's assembly other
        than its refusal of a request (:class:`~tenfold.workloads.RequestInvalid`) is :class:`AssemblyError`: the
        request's or the workload code's, never the model's. So is a table that breaks the assembly's contract (not a
        ``pyarrow.Table``, a row count other than the requests', a column of ``contract.online_columns`` missing or of
        a type that does not cast exactly to the contract's):
        the model, given it, failed as a broken model would (503 "retry", the replica out of the rotation after five).
        An output that is not a probability (NaN, an infinity, outside [0, 1]) is :class:`ModelOutputError`, the model's.
        """
        from tenfold.workloads import RequestInvalid

        try:
            table = self.features.assemble(list(requests))
        except (RequestInvalid, MemoryError):  # a request's refusal; the replica's own state
            raise
        except Exception as exc:
            raise AssemblyError(f"the workload's online assembly failed ({type(exc).__name__}: {exc})") from exc
        table = self._check_assembled(table, len(requests))
        return self._check_output([float(p) for p in self.loaded.predict_proba(table)])

    def _check_output(self, probabilities: list[float]) -> list[float]:
        """``probabilities``, where each is one (finite, in [0, 1]); else :class:`ModelOutputError`. NaN, an infinity
        or 1.7 is a broken model (its weights, its calibration): a JSON 500 counted as the server's bug (NaN), or a 200
        contradicting the ``Prediction`` schema (1.7), cached and sampled, with the replica left in the rotation."""
        bad = [p for p in probabilities if not 0.0 <= p <= 1.0]  # NaN fails every comparison
        if bad:
            raise ModelOutputError(
                f"model version {self.version} returned {len(bad)} of {len(probabilities)} values that are not "
                f"probabilities (finite, in [0, 1]), the first {bad[0]!r}: its model folder's predict_proba is broken "
                "(weights, calibration); roll back to a good version or retrain")
        return probabilities

    def _check_assembled(self, table: object, rows: int) -> pa.Table:
        """``table`` as ``OnlineFeatures.assemble`` promises it for ``rows`` requests (docs/workloads.md): a
        ``pyarrow.Table`` of one row per request with every online column of the contract's type. A column of a type
        that casts to the contract's without changing a value (an ``int32`` for an ``int64``, an ``int64`` for a
        ``float64``, all nulls) is cast; anything else raises :class:`AssemblyError` naming the column, its type and
        the contract's. A string ``x1`` where the contract says ``float64`` broke the preprocessing's cast after it
        (an ``ArrowInvalid``): a model failure, 503 "retry", and five such requests took every replica out."""
        import pyarrow as pa

        where = f"the workload {self.workload!r}'s OnlineFeatures.assemble ({type(self.features).__name__}.assemble)"
        fix = "fix it to return contract.online_columns, one row per request in request order (docs/workloads.md)"
        if not isinstance(table, pa.Table):
            raise AssemblyError(f"{where} returned a {type(table).__name__}, not a pyarrow.Table: {fix}")
        return self._check_table(table, rows, where, fix)

    def _check_table(self, table: pa.Table, rows: int, where: str, fix: str) -> pa.Table:
        """:meth:`_check_assembled` past its ``pyarrow.Table`` check: the rows, the columns and their types."""
        import pyarrow as pa
        import pyarrow.compute as pc

        if table.num_rows != rows:
            raise AssemblyError(f"{where} returned {table.num_rows} rows for {rows} requests: {fix}")
        schema = table.schema  # built anew on every access: read once
        if self._passed is not None and schema.equals(self._passed):
            return table  # the schema that passed last time, needing no cast: one comparison, not ~150 us of checks
        present = set(table.column_names)
        missing = [c for c in self.loaded.workload.contract.online_columns if c not in present]
        if missing:
            raise AssemblyError(f"{where} returned a table without the feature columns {missing}: {fix}")
        types_fix = ("fix it to return each column with the contract's type (contract.column_types), as the feature "
                     "job writes it (docs/workloads.md)")
        casts = 0
        for column, wanted in self._online_types.items():
            index = schema.get_field_index(column)
            if index < 0:  # present, so more than once
                raise AssemblyError(f"{where} returned the column {column!r} more than once: {fix}")
            field = schema.field(index)
            if field.type == wanted:
                continue
            if not _casts_exactly(field.type, wanted):
                raise AssemblyError(f"{where} returned the column {column!r} as {field.type}, not the contract's "
                                    f"{wanted}: {types_fix}")
            try:
                cast = pc.cast(table.column(index), wanted, safe=True)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:  # a value the contract's type cannot hold
                raise AssemblyError(f"{where} returned the column {column!r} as {field.type} with values the "
                                    f"contract's {wanted} cannot hold ({exc}): {types_fix}") from exc
            table = table.set_column(index, field.with_type(wanted), cast)
            casts += 1
        if not casts:
            self._passed = schema
        return table

    @functools.cached_property
    def _online_types(self) -> dict[str, pa.DataType]:
        """The contract's Arrow type of each online column (its model's contract never changes: computed once)."""
        contract = self.loaded.workload.contract
        schema = contract.arrow_schema()
        return {c: schema.field(c).type for c in contract.online_columns}


def _casts_exactly(got: pa.DataType, wanted: pa.DataType) -> bool:
    """Whether a column of ``got`` may be cast to ``wanted`` (the cast, safe, refusing a value it would change): a
    wider or narrower integer, an integer or float to a float, one string type to another, a timestamp to another
    unit, a dictionary of such values, all nulls. Never text to a number or a number to text: a type-level breach
    of the contract, refused whatever the values (a string "1.5" as a float64 scored, "n/a" failed)."""
    import pyarrow as pa

    t = pa.types
    if t.is_null(got):
        return True
    if t.is_dictionary(got):
        return _casts_exactly(got.value_type, wanted)
    if t.is_integer(got):
        return t.is_integer(wanted) or t.is_floating(wanted)
    if t.is_floating(got):
        return t.is_floating(wanted)
    if t.is_string(got) or t.is_large_string(got):
        return t.is_string(wanted) or t.is_large_string(wanted)
    return bool(t.is_timestamp(got) and t.is_timestamp(wanted) and got.tz == wanted.tz)


class ModelOutputError(RuntimeError):
    """The model folder's ``predict_proba`` returned a value that is not a probability (NaN, an infinity, outside
    [0, 1]): the model's failure like any other (503 ``model_error`` with Retry-After, never cached nor sampled,
    counted towards the failures in a row that take the replica out of the rotation)."""


class AssemblyError(RuntimeError):
    """The workload's online feature assembly failed on a request it had accepted (an integer beyond its contract's
    type, a bug in the workload): the same request fails the same way on every replica, so it is neither retried nor
    counted against the model (taken for the model's failure, five such requests took a healthy replica out of the
    rotation, each answered 503 "retry")."""


def _on_device(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """``model`` on ``device`` behind a module that takes and returns CPU tensors, so the model folder's
    ``predict_proba`` (which builds its inputs on the CPU) runs the forward pass on the GPU unchanged."""
    import torch

    class OnDevice(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner = inner.to(device)
            # The checks a model folder makes (vocab_sizes, num_inputs) still see the network's shape.
            self.vocab_sizes = getattr(inner, "vocab_sizes", None)
            self.num_inputs = getattr(inner, "num_inputs", None)

        def forward(self, categorical: torch.Tensor, numeric: torch.Tensor) -> torch.Tensor:
            return self.inner(categorical.to(device), numeric.to(device)).cpu()

    # In eval mode, as the model it wraps: a new module is in training mode, so every micro-batch's predict_proba
    # took the wrapper for a model in training and walked every module twice, to set eval mode and to restore it.
    return OnDevice(model).eval()


def _device(choice: str) -> torch.device:
    import torch

    if choice == "cuda" and not torch.cuda.is_available():
        raise ServingLoadError("serving.server.device is 'cuda' but torch sees no CUDA device: use 'auto' or 'cpu', "
                               "or run the CUDA image on a GPU machine")
    if choice == "auto":
        choice = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(choice)


def configure_torch(threads: int) -> None:
    """Intra-op threads for the forward pass (set before the first one); inter-op stays at one."""
    import torch

    torch.set_num_threads(threads)
    with contextlib.suppress(RuntimeError):  # only settable before torch's first parallel work
        torch.set_num_interop_threads(1)


def resolve_and_download(settings: Settings, ref: str, *, registry: Any = None) -> tuple[str, Path]:
    """The version ``ref`` names and a verified local copy of it (reused when already there)."""
    from tenfold.registry import ModelRegistry, RegistryError

    try:
        reg = registry or ModelRegistry(settings)
        version = reg.find(ref)
    except RegistryError as exc:
        raise ServingLoadError(f"model {ref!r} cannot be resolved in the registry: {exc}") from exc
    except Exception as exc:  # the store itself: unreachable emulator, missing bucket, credentials
        raise ServingLoadError(f"the model registry at {settings.storage.models_bucket} cannot be read to resolve "
                               f"{ref!r} ({type(exc).__name__}: {exc}); is the object store up (`tenfold status`)?",
                               transient=True) from exc
    root = model_cache_dir(settings)

    def unwritable(exc: BaseException) -> ServingLoadError:
        return ServingLoadError(f"model version {version} cannot be downloaded into {root} "
                                f"({type(exc).__name__}: {exc}); check the object store and free disk space",
                                transient=True)

    # Replicas on one machine start together: the lock makes the second one reuse the first one's copy
    # instead of replacing the folder the first one is loading from. Taking it creates the cache folder and the
    # lock file, which a full disk or an unwritable home refuses as the download would (a raw OSError before).
    with contextlib.ExitStack() as held:
        try:
            held.enter_context(file_lock(root / f".{version}.lock"))
        except OSError as exc:
            raise unwritable(exc) from exc
        try:
            path = reg.download(version, root / version)
        except RegistryError as exc:
            raise ServingLoadError(f"model version {version} cannot be downloaded: {exc}") from exc
        except Exception as exc:  # the store or the local disk
            raise unwritable(exc) from exc
    return version, path


def load_on_device(path: Path, choice: str, workload: str) -> tuple[LoadedModel, torch.device]:
    """The model folder at ``path`` of ``workload`` (settings.workload; a model of another is refused before anything
    it names is imported) on ``choice`` ("auto": CUDA when torch sees it, else the CPU), taking and returning CPU
    tensors either way; what serving and offline inference both load. Raises ModelLoadError."""
    from tenfold.model import load_model

    device = _device(choice)
    loaded = load_model(path, map_location=device, for_workload=workload)
    if device.type != "cpu":
        loaded = dataclasses.replace(loaded, model=_on_device(loaded.model, device))
    return loaded, device


def load_served_model(settings: Settings, ref: str) -> ServedModel:
    """Resolve ``ref`` in the registry, load that version and the online features (see the module docstring)."""
    from tenfold.features.online import load_online_features
    from tenfold.model import ModelLoadError

    server = settings.serving.server
    configure_torch(server.torch_threads)
    version, path = resolve_and_download(settings, ref)
    try:
        loaded, device = load_on_device(path, server.device, settings.workload)
    except ModelLoadError as exc:
        raise ServingLoadError(f"model version {version} ({ref!r}) cannot be loaded: {exc}") from exc
    try:
        features = load_online_features(settings)
    except Exception as exc:
        raise ServingLoadError(f"the online features (lookup tables in {settings.storage.table_uri(settings.storage.lookups_table)}_*) "
                               f"cannot be loaded: {type(exc).__name__}: {exc}; run build_features for the months to "
                               "serve") from exc
    log.info("loaded model %s (%s) on %s with lookups for %s", version, ref, device,
             ", ".join(getattr(features, "months", ())) or "no months")
    return ServedModel(version=version, loaded=loaded, features=features, device=device)
