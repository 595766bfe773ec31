"""Training data: published feature partitions as tensors, sharded across DDP ranks.

Only partitions with a ``_SUCCESS`` manifest are read (:meth:`tenfold.data.lake.Lake.read_table`
enforces it); a missing one is refused with :class:`MissingFeaturesError` naming the month and what to
run. The whole window is preprocessed once into three tensors: at ~300k rows x 50 columns it is tens
of megabytes, and batches are gathered by index instead of a per-row ``__getitem__`` + collate, which
keeps a GPU fed without DataLoader workers (and keeps batches bit-identical across restarts).

Sharding follows :class:`torch.utils.data.DistributedSampler` (``drop_last=True``): for an epoch the
same permutation (``seed + epoch``) is drawn on every rank and rank ``r`` takes every ``world``-th
index. Batch ``s`` of rank ``r`` is therefore positions ``[s*B*W, (s+1)*B*W)`` of that permutation
taken together over ranks, exactly the batch one process with ``B*W`` rows would see; that is what
makes the DDP-vs-single-process equivalence hold, and resuming only needs ``(epoch, batch)``.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import torch
from torch.utils.data import Dataset, DistributedSampler

from tenfold.config.settings import FEATURES_TABLE
from tenfold.data.lake import Lake, LakeError, MissingManifestError, Partition
from tenfold.fsio import filesystem_from_uri
from tenfold.model.preprocessing import PreprocessingError, Preprocessor
from tenfold.workloads import VERSION_KEY, FeatureContract

__all__ = [
    "FEEDBACK_WEIGHT_COLUMN",
    "BatchTooBig",
    "FeatureDataset",
    "MissingFeaturesError",
    "PreprocessingError",
    "Preprocessor",
    "ShardedBatches",
    "StaleFeaturesError",
    "ValidationSplit",
    "read_features",
    "read_feedback",
    "row_times_us",
    "seed_everything",
    "time_column",
    "validation_split",
]



# The per-row sample weight of the feedback training input (features rows weigh 1).
FEEDBACK_WEIGHT_COLUMN = "sample_weight"


class BatchTooBig(ValueError):
    """The training rows cannot fill one global batch: every rank would fail the same way, on every try."""

    retryable = False  # tenfold.pipelines.common.run_step: the task fails at once, not after its retries


class MissingFeaturesError(LakeError):
    """A feature partition the run needs is not published."""

    retryable = False  # a task retry reads the same lake (tenfold.pipelines.common.run_step)


class StaleFeaturesError(LakeError):
    """A feature partition was built by another version of the feature definitions."""

    retryable = False


class RepublishedFeaturesError(LakeError):
    """The feature partitions hold other content than the run pinned (a month was re-published since).

    Retryable as a class: a reader that pinned the content a moment before (monitor_drift's measure) reads the new
    one on a retry; a run that pinned it in its plan refuses it first, as a PipelineError (train_model)."""


def require_published(lake: Lake, table: str, parts: Sequence[Partition]) -> None:
    """:class:`MissingFeaturesError` naming every one of ``parts`` that has no manifest."""
    missing = [p.label for p in parts if not lake.has_manifest(table, p)]
    if missing:
        raise MissingFeaturesError(
            f"{table} partitions {', '.join(missing)} have no _SUCCESS manifest under {lake.uri}/{table}: "
            "they were never published, their job did not finish, or they were withdrawn (a file found changed); run "
            f"build_features for those months (published: {', '.join(p.label for p in lake.published_partitions(table)) or 'none'})"
        )


def read_features(
    lake: Lake,
    parts: Sequence[Partition],
    *,
    contract: FeatureContract | None = None,
    table: str = FEATURES_TABLE,
    columns: Sequence[str] | None = None,
    digest: str | None = None,
    pinned_by: str = "this training run was planned",
    rerun: str = "start a new run (trigger train_model again)",
) -> pa.Table:
    """Read published partitions of the features table, refusing any without a manifest.

    With the workload's ``contract``, partitions built by another version of its feature definitions
    are refused too (their manifests record the version); with ``digest`` (:meth:`Lake.content_digest`),
    partitions that hold other content than that.
    """
    if not parts:
        raise MissingFeaturesError(f"no {table} partitions were asked for: give at least one month")
    require_published(lake, table, parts)
    if contract is not None:
        stale = {p.label: lake.read_manifest(table, p).extra.get(VERSION_KEY) for p in parts}
        stale = {label: v for label, v in stale.items() if v != contract.version}
        if stale:
            raise StaleFeaturesError(
                f"{table} partitions {', '.join(f'{m} (version {v})' for m, v in stale.items())} were built by "
                f"another feature definition than this code's version {contract.version}: rebuild them with "
                "build_features (a backfill of it with 'reprocess completed runs', in the Airflow UI or its REST API: README)"
            )
    def republished() -> RepublishedFeaturesError:
        return RepublishedFeaturesError(
            f"{table} partitions {', '.join(p.label for p in parts)} were re-published since {pinned_by}: they no "
            f"longer hold the data it pinned; {rerun}"
        )

    if digest is not None and lake.content_digest(table, parts) != digest:
        raise republished()
    try:
        read = lake.read_table(table, parts, columns=list(columns) if columns else None)
    except MissingManifestError as exc:  # published between the check and the read, then removed
        raise MissingFeaturesError(str(exc)) from exc
    # Checked again after the read, which follows a publish that lands meanwhile: a month re-published while the ranks
    # read gave them other rows than pinned, or other rows each (other step counts: a collective that hangs).
    try:
        if digest is not None and lake.content_digest(table, parts) != digest:
            raise republished()
    except MissingManifestError as exc:
        raise MissingFeaturesError(str(exc)) from exc
    return read


class FeatureDataset(Dataset[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]):
    """Preprocessed features in memory: categorical codes, numeric block, labels, and optional per-row
    sample weights (None: every row weighs 1, the plain mean loss; see :mod:`tenfold.training.loss`)."""

    def __init__(self, categorical: torch.Tensor, numeric: torch.Tensor, labels: torch.Tensor,
                 weights: torch.Tensor | None = None) -> None:
        if not categorical.shape[0] == numeric.shape[0] == labels.shape[0]:
            raise ValueError("categorical, numeric and labels must have the same number of rows")
        if weights is not None and weights.shape != labels.shape:
            raise ValueError("weights must hold one value per row")
        self.categorical, self.numeric, self.labels, self.weights = categorical, numeric, labels, weights

    @classmethod
    def from_table(cls, table: pa.Table, pre: Preprocessor, label: str, dtype: torch.dtype = torch.float32,
                   weight: str | None = None) -> FeatureDataset:
        """``weight``: the column of per-row sample weights (None: no weights)."""
        if label not in table.column_names:
            raise PreprocessingError(f"features table has no {label!r} column; it cannot be trained on")
        labels = table[label]
        if labels.null_count:
            raise PreprocessingError(f"{labels.null_count} rows have a null {label}; fix the features job")
        cat, num = pre.transform(table)
        y = labels.to_numpy(zero_copy_only=False).astype(np.float64)
        w = None
        if weight is not None:
            if weight not in table.column_names or table[weight].null_count:
                raise PreprocessingError(f"the table has no complete {weight!r} column of sample weights")
            w = torch.from_numpy(table[weight].to_numpy(zero_copy_only=False).astype(np.float64)).to(dtype)
        return cls(torch.from_numpy(cat), torch.from_numpy(num).to(dtype), torch.from_numpy(y).to(dtype), w)

    @classmethod
    def concat(cls, first: FeatureDataset, second: FeatureDataset) -> FeatureDataset:
        """``first``'s rows then ``second``'s; a side without weights weighs 1 per row (when the other has some)."""
        if first.weights is None and second.weights is None:
            weights = None
        else:
            weights = torch.cat([d.weights if d.weights is not None else torch.ones_like(d.labels) for d in (first, second)])
        return cls(torch.cat([first.categorical, second.categorical]), torch.cat([first.numeric, second.numeric]),
                   torch.cat([first.labels, second.labels]), weights)

    def to(self, device: torch.device | str) -> FeatureDataset:
        return FeatureDataset(self.categorical.to(device), self.numeric.to(device), self.labels.to(device),
                              None if self.weights is None else self.weights.to(device))

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.categorical[i], self.numeric[i], self.labels[i]

    def batch(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        index = index.to(self.labels.device)
        return self.categorical[index], self.numeric[index], self.labels[index]

    def batch_weights(self, index: torch.Tensor) -> torch.Tensor | None:
        """The sample weights of rows ``index`` (None when the dataset has none: every row weighs 1)."""
        return None if self.weights is None else self.weights[index.to(self.weights.device)]


@dataclass
class ShardedBatches:
    """This rank's batches of one epoch, resumable at a batch offset (the sampler position)."""

    dataset: FeatureDataset
    batch_size: int
    world_size: int
    rank: int
    seed: int

    def __post_init__(self) -> None:
        self.sampler: DistributedSampler[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = DistributedSampler(
            self.dataset, num_replicas=self.world_size, rank=self.rank, shuffle=True, seed=self.seed, drop_last=True
        )
        if self.steps_per_epoch == 0:  # a refusal: the worker records it, and the launch fails without retries
            raise BatchTooBig(
                f"{len(self.dataset)} rows cannot fill one global batch of {self.batch_size} x {self.world_size}; "
                "use a smaller batch or more data"
            )

    @property
    def steps_per_epoch(self) -> int:
        return len(self.sampler) // self.batch_size

    def epoch(self, epoch: int, start_batch: int = 0) -> Iterator[tuple[int, torch.Tensor]]:
        """``(batch_index, row indices)`` for ``epoch`` from ``start_batch`` on."""
        self.sampler.set_epoch(epoch)
        # On the data's device once per epoch: a batch is then a slice there, with no host-to-device copy per step
        # (a copy from pageable memory waits for the device: a GPU would idle between steps).
        indices = torch.tensor(list(iter(self.sampler)), dtype=torch.long).to(self.dataset.labels.device)
        for b in range(start_batch, self.steps_per_epoch):
            yield b, indices[b * self.batch_size : (b + 1) * self.batch_size]


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (CPU and CUDA); ranks pass ``base_seed + rank`` where streams must differ.

    Any whole number >= 0 (a run conf's seed, times 1000 plus a step's offset): numpy takes it modulo 2**32 and torch
    modulo 2**63, past which ``manual_seed`` overflows (every rank failed on a seed of 10**17); a smaller seed is
    passed as it is."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed % 2**63)


def time_column(contract: FeatureContract) -> str | None:
    """The key column that orders a contract's rows in time: its first timestamp key column, if any."""
    stamps = [c for c in contract.key_columns if contract.column_types[c].startswith("timestamp")]
    return stamps[0] if stamps else None


@dataclass(frozen=True)
class ValidationSplit:
    """Row indices of the training rows and of the validation slice (the newest rows), and how it was cut."""

    train: np.ndarray
    validation: np.ndarray
    info: dict[str, object]
    # Rows later than this (microseconds since the epoch, UTC) are the slice's; None without a slice.
    cutoff_us: int | None = None

    @property
    def has_validation(self) -> bool:
        return self.validation.size > 0


MICROS_PER_DAY = 86_400 * 10**6


def validation_split(table: pa.Table, contract: FeatureContract, days: float) -> ValidationSplit:
    """Cut the newest ``days`` of ``table``'s rows off as the validation slice, by time and never at random.

    Rows are ordered by the contract's :func:`time_column`: every row later than the newest time minus
    ``days`` is validation, so rows sharing a timestamp (an hour's flights) are never split between the two
    sides. The slice is left empty, with the reason in ``info["skipped"]``, when ``days`` is 0, when the
    contract has no timestamp key column, or when it would hold half the window or more (too short a window:
    train on more months or lower ``validation_days``).
    """
    n = table.num_rows
    everything = np.arange(n, dtype=np.int64)

    def skipped(why: str) -> ValidationSplit:
        return ValidationSplit(everything, np.zeros(0, dtype=np.int64), {"rows": 0, "skipped": why})

    if days <= 0:
        return skipped("validation_days is 0")
    column = time_column(contract)
    if column is None:
        return skipped("the feature contract has no timestamp key column to order rows by")
    col = table[column]
    if col.null_count:
        raise PreprocessingError(f"{col.null_count} rows have a null {column}; they cannot be ordered in time")
    times = np.asarray(col.cast(pa.timestamp("us", tz="UTC")).cast(pa.int64()).to_numpy(zero_copy_only=False))
    if n == 0:
        return skipped("the window has no rows")
    newest = int(times.max())
    is_val = times > newest - int(days * MICROS_PER_DAY)
    n_val = int(is_val.sum())
    if n_val * 2 >= n:
        return skipped(f"the newest {days:g} days hold {n_val} of the window's {n} rows (half or more): train on "
                       "more months or lower settings.training.validation_days")
    stamps = np.array([times[is_val].min(), newest]).astype("datetime64[us]")
    info: dict[str, object] = {"rows": n_val, "share": n_val / n, "days": days, "time_column": column,
                               "from": str(stamps[0]), "to": str(stamps[1])}
    return ValidationSplit(np.flatnonzero(~is_val), np.flatnonzero(is_val), info, newest - int(days * MICROS_PER_DAY))


def row_times_us(table: pa.Table, column: str) -> np.ndarray:
    """``column`` (a timestamp) of every row as microseconds since the epoch, UTC."""
    col = table[column]
    if col.null_count:
        raise PreprocessingError(f"{col.null_count} rows have a null {column}; they cannot be ordered in time")
    return np.asarray(col.cast(pa.timestamp("us", tz="UTC")).cast(pa.int64()).to_numpy(zero_copy_only=False))


def read_feedback(location: str, sha256: str, contract: FeatureContract) -> pa.Table:
    """The feedback training input at ``location`` (a path or URI), refused unless its SHA-256 is ``sha256``
    (what ``train_model``'s plan wrote and recorded) and it has the contract's label and the weight column."""
    import hashlib
    import io

    import pyarrow.parquet as pq

    from tenfold.training.remote import is_remote

    if is_remote(location):
        fs, path = filesystem_from_uri(location)
        try:
            with fs.open_input_stream(path) as stream:
                body = bytes(stream.read())
        except FileNotFoundError as exc:
            raise LakeError(f"the feedback training input {location} is gone: re-run the train_model run's plan") from exc
    else:
        from pathlib import Path

        try:
            body = Path(location).read_bytes()
        except FileNotFoundError as exc:
            raise LakeError(f"the feedback training input {location} is gone: re-run the train_model run's plan") from exc
    digest = hashlib.sha256(body).hexdigest()
    if digest != sha256:
        raise LakeError(f"the feedback training input {location} has SHA-256 {digest[:12]}..., not the planned "
                        f"{sha256[:12]}...: it was replaced after the plan; trigger a new run")
    table = pq.read_table(io.BytesIO(body))
    missing = [c for c in (contract.label, FEEDBACK_WEIGHT_COLUMN) if c not in table.column_names]
    if missing:
        raise LakeError(f"the feedback training input {location} lacks {missing}: it was written by another version")
    return table
