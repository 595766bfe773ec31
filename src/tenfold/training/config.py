"""The training run's configuration: one JSON-serialisable dataclass handed to every worker."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Literal

from tenfold.config import Settings
from tenfold.config.settings import DEFAULT_WORKLOAD, FEATURES_TABLE
from tenfold.data.lake import Partition, month_range
from tenfold.workloads import get_workload

# The largest seed. The ranks' sampler seeds epoch e's shuffle with seed + e, which torch refuses from 2**64 on
# ("Overflow when unpacking long long"): a seed near that failed every rank after a whole epoch, once checkpointed, and
# was restarted and retried. Up to this bound seed + e stays below 2**64 for any epoch below 2**63, which no run reaches.
MAX_SEED = 2**63 - 1


@dataclass(frozen=True)
class TrainConfig:
    """What to train on and how. ``batch_size`` is per rank: the global batch is ``batch_size * world``.

    ``workload`` names the workload (``settings.workload``) whose contract and model the ranks use;
    ``model`` is that workload's model config (its ``model_config_type``; None: its defaults).

    Model quality (docs/training.md): the newest ``validation_days`` of the window's rows, by time, are
    the validation slice. The ranks never train on it; after every epoch it is scored, the best epoch's
    weights are kept (the ``epochs`` are a ceiling) and training stops after ``patience`` epochs without
    improvement (None: never stop early); rank 0 then fits ``calibration`` on it. ``0`` turns the
    slice off: the last epoch is kept, uncalibrated. With ``average_epochs`` the weights scored, kept and
    saved are the moving average of the trained ones (docs/training.md). The defaults of ``lr``, ``weight_decay``,
    ``batch_size`` and the model config were chosen on validation slices only (bench/search.py).
    """

    lake_uri: str
    train_months: tuple[str, ...]
    table: str = FEATURES_TABLE
    workload: str = DEFAULT_WORKLOAD
    model: Any = None
    batch_size: int = 512
    epochs: int = 10
    max_steps: int | None = None
    lr: float = 3e-3
    weight_decay: float = 1e-4
    seed: int = 0
    validation_days: float = 14.0
    patience: int | None = 2
    calibration: str = "anchored_temperature"  # a tenfold.model.calibration method
    # Categorical values in fewer training rows (the window less its validation slice) than this are fit as the
    # OOV value, which trains its row.
    vocabulary_min_count: int = 20
    # The weights scored, chosen and saved are an exponential moving average of the trained ones, over about
    # this many epochs (decay 1 - 1 / (average_epochs * steps_per_epoch) a step); 0 uses the raw weights.
    average_epochs: float = 1.0
    checkpoint_every: int = 50
    keep_checkpoints: int = 3
    # None: settings.training.backend; "nccl" needs CUDA (the worker refuses it otherwise).
    backend: Literal["gloo", "nccl"] | None = None
    collective_timeout_s: int = 120
    # Intra-op threads per worker; None: the machine's cores divided among the local workers.
    threads: int | None = None
    # Extra training rows from the feedback join (train_model's plan writes them; docs/feedback.md): a Parquet
    # file (path or URI) of the contract's online columns, the label and FEEDBACK_WEIGHT_COLUMN, its SHA-256
    # (the worker refuses another file) and the weight it was written with. None: features rows only.
    feedback_uri: str | None = None
    feedback_sha256: str | None = None
    feedback_weight: float = 0.0
    # The content of the training window as planned (Lake.content_digest of train_months): the ranks and the
    # preprocessing fit refuse the window if a month was re-published since. None (the CLI): whatever is published.
    data_digest: str | None = None

    def __post_init__(self) -> None:
        if self.model is None:
            object.__setattr__(self, "model", get_workload(self.workload).model_config_type())
        if not self.train_months:
            raise ValueError("train_months is empty: give the months of the training window")
        for m in self.train_months:
            Partition.parse(m)
        if self.batch_size < 1 or self.epochs < 1 or (self.max_steps is not None and self.max_steps < 1):
            raise ValueError("batch_size, epochs and max_steps must be >= 1")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed <= MAX_SEED:
            raise ValueError(f"seed must be a whole number from 0 to 2**63 - 1 ({MAX_SEED}), got {self.seed!r}")
        if self.checkpoint_every < 1:
            raise ValueError("checkpoint_every must be >= 1")
        if self.validation_days < 0:
            raise ValueError(f"validation_days must be >= 0 (0: no validation slice), got {self.validation_days}")
        if self.patience is not None and self.patience < 1:
            raise ValueError("patience must be >= 1 (or None: no early stopping)")
        if self.vocabulary_min_count < 1:
            raise ValueError(f"vocabulary_min_count must be >= 1 (1: every value seen), got {self.vocabulary_min_count}")
        if self.average_epochs < 0:
            raise ValueError(f"average_epochs must be >= 0 (0: the raw weights), got {self.average_epochs}")
        from tenfold.model.calibration import METHODS

        if (self.feedback_uri is None) != (self.feedback_sha256 is None):
            raise ValueError("feedback_uri and feedback_sha256 go together: give both or neither")
        if self.feedback_weight < 0:
            raise ValueError(f"feedback_weight must be >= 0, got {self.feedback_weight}")
        if self.calibration not in METHODS:
            raise ValueError(f"unknown calibration {self.calibration!r}: use one of {', '.join(METHODS)}")

    @property
    def partitions(self) -> list[Partition]:
        return [Partition.parse(m) for m in self.train_months]

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> TrainConfig:
        """The reference run: settings' training window, checkpoint cadence, backend and timeouts."""
        t = settings.training
        values: dict[str, Any] = dict(
            lake_uri=settings.storage.lake_uri,
            table=settings.storage.features_table,
            workload=settings.workload,
            train_months=tuple(p.label for p in month_range(*t.train_months)),
            epochs=t.max_epochs,
            validation_days=t.validation_days,
            patience=t.early_stopping_patience,
            calibration=t.calibration,
            average_epochs=t.average_epochs,
            vocabulary_min_count=t.vocabulary_min_count,
            checkpoint_every=t.checkpoint_every,
            keep_checkpoints=t.keep_checkpoints,
            backend=t.backend,
            collective_timeout_s=t.collective_timeout_s,
        )
        values.update(overrides)
        return cls(**values)

    def with_(self, **changes: Any) -> TrainConfig:
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        body = asdict(self)
        body["train_months"] = list(self.train_months)
        body["model"] = self.model.to_dict()
        return body

    @classmethod
    def from_dict(cls, body: dict[str, Any]) -> TrainConfig:
        values = dict(body)
        values["train_months"] = tuple(values["train_months"])
        workload = get_workload(values.get("workload", DEFAULT_WORKLOAD))
        values["model"] = workload.model_config_type.from_dict(values.get("model", {}))
        return cls(**values)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def load(cls, path: str | Path) -> TrainConfig:
        return cls.from_dict(json.loads(Path(path).read_text()))

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.to_json().encode()).hexdigest()[:16]
