"""Scoring feature rows with a registered model: the same loading and ``predict_proba`` serving uses.

A model version is resolved and downloaded by :func:`tenfold.serving.loading.resolve_and_download` (a
verified copy in the local model cache, shared under a file lock by the processes of one machine) and
rebuilt by :func:`tenfold.model.load_model`; its calibrated ``predict_proba`` gives the probabilities, so
an offline score equals the one the server returns for the same features. The result of a batch is the
contract's key columns, ``probability`` (float64) and ``model_version`` (string), in the rows' order.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pyarrow as pa

    from tenfold.config import Settings
    from tenfold.model import LoadedModel
    from tenfold.workloads import FeatureContract

PROBABILITY = "probability"
MODEL_VERSION = "model_version"


class ScoringError(RuntimeError):
    """A batch cannot be scored (the model cannot be loaded, the rows do not fit it); the text says why.

    ``transient``: the object store or the disk failed while loading the model, not the request.
    """

    def __init__(self, message: str, *, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient


def scores_schema(contract: FeatureContract) -> pa.Schema:
    """The scores table: the contract's keys (their published types), the probability and the model version."""
    import pyarrow as pa

    features = contract.arrow_schema()
    keys = [features.field(k).with_nullable(True) for k in contract.key_columns]
    return pa.schema([*keys, pa.field(PROBABILITY, pa.float64()), pa.field(MODEL_VERSION, pa.string())])


def score_rows(loaded: LoadedModel, rows: pa.Table, version: str) -> pa.Table:
    """The scores of ``rows`` (feature rows of the model's contract) by ``loaded``, one per row, in order."""
    import pyarrow as pa

    contract = loaded.workload.contract
    probs = loaded.predict_proba(rows)
    schema = scores_schema(contract)
    columns: list[Any] = [rows.column(k).cast(schema.field(k).type) for k in contract.key_columns]
    columns += [pa.array(probs, pa.float64()), pa.repeat(pa.scalar(version, pa.string()), rows.num_rows)]
    return pa.Table.from_arrays(columns, schema=schema)


class ModelCache:
    """Loaded models by version, each loaded once per process (workers of a run share one version)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._models: dict[str, LoadedModel] = {}
        self._lock = threading.Lock()

    def get(self, version: str) -> LoadedModel:
        with self._lock:
            if version not in self._models:
                self._models[version] = load_version(self.settings, version)
            return self._models[version]


def resolve(settings: Settings, ref: str) -> str:
    """The registry version ``ref`` (an alias such as ``champion``, or a version id) names now."""
    from tenfold.registry import ModelRegistry, RegistryError

    try:
        return ModelRegistry(settings).find(ref)
    except RegistryError as exc:
        raise ScoringError(f"model {ref!r} cannot be resolved in the registry: {exc}") from exc


def registered_meta(settings: Settings, version: str) -> dict[str, Any]:
    """A registered model's ``meta.json`` (its workload, the feature definitions' version it learnt from), read
    without downloading the weights."""
    from tenfold.registry import ModelRegistry, RegistryError

    try:
        return dict(ModelRegistry(settings).meta(version))
    except RegistryError as exc:
        raise ScoringError(f"model version {version} cannot be read from the registry: {exc}") from exc


def load_version(settings: Settings, version: str) -> LoadedModel:
    """A registered version, downloaded (verified) into the model cache and rebuilt on
    ``settings.inference.device`` (a GPU when the worker's VM has one, as serving does)."""
    from tenfold.model import ModelLoadError
    from tenfold.serving.loading import ServingLoadError, configure_torch, load_on_device, resolve_and_download

    configure_torch(settings.inference.torch_threads)
    try:
        _, path = resolve_and_download(settings, version)
        return load_on_device(path, settings.inference.device, settings.workload)[0]
    except (ServingLoadError, ModelLoadError) as exc:
        raise ScoringError(f"model version {version} cannot be loaded: {exc}",
                           transient=getattr(exc, "transient", False)) from exc
