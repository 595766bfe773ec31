"""The flight-delay network: embeddings for categorical columns, an MLP over numeric ones.

Hyperparameters live in :class:`ModelConfig`; the input shapes (vocabulary sizes, numeric width)
come from the fitted :class:`~tenfold.model.preprocessing.Preprocessor`, so ``meta.json`` plus the
weights rebuild the exact module. No BatchNorm: per-batch statistics would make a 2-rank DDP run
differ from a single process with the same global batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn


@dataclass(frozen=True)
class ModelConfig:
    """The network's hyperparameters. The defaults were chosen on validation slices only (bench/search.py,
    docs/training.md): of twelve candidates, the least mean regret over two windows and three seeds."""

    # A cap per column: small vocabularies (day of week) get narrower embeddings.
    embedding_dim: int = 8
    hidden: tuple[int, ...] = (128, 64)
    dropout: float = 0.3

    def __post_init__(self) -> None:
        if self.embedding_dim < 1 or not self.hidden or any(h < 1 for h in self.hidden):
            raise ValueError(f"invalid model config {self}: embedding_dim and hidden widths must be >= 1")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")

    def to_dict(self) -> dict[str, Any]:
        body = asdict(self)
        body["hidden"] = list(self.hidden)
        return body

    @classmethod
    def from_dict(cls, body: dict[str, Any]) -> ModelConfig:
        """The config ``to_dict`` wrote; a width written as a whole float (4.0, as YAML or JSON tools may) is read
        as the integer, and one that is not whole (4.5) is a ``ValueError``, not a module torch refuses later."""
        known = {k: v for k, v in body.items() if k in cls.__dataclass_fields__}
        if "hidden" in known:
            known["hidden"] = tuple(_width(h, "hidden") for h in known["hidden"])
        if "embedding_dim" in known:
            known["embedding_dim"] = _width(known["embedding_dim"], "embedding_dim")
        return cls(**known)


def _width(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value):
        raise ValueError(f"{name} must hold whole numbers, got {value!r}")
    return int(value)


@dataclass(frozen=True)
class InputSpec:
    """What the network is fed: one vocabulary size per categorical column and the numeric width."""

    vocab_sizes: tuple[int, ...]
    num_inputs: int
    categorical_columns: tuple[str, ...] = field(default=())
    numeric_columns: tuple[str, ...] = field(default=())


def embedding_width(vocab_size: int, cap: int) -> int:
    return max(1, min(cap, (vocab_size + 1) // 2))


class FlightDelayModel(nn.Module):
    """Logit of P(arrival 15+ min late, cancelled or diverted); :meth:`predict_proba` applies the sigmoid."""

    def __init__(self, config: ModelConfig, vocab_sizes: Sequence[int], num_inputs: int) -> None:
        super().__init__()
        self.config = config
        self.vocab_sizes = tuple(int(v) for v in vocab_sizes)
        self.num_inputs = int(num_inputs)
        widths = [embedding_width(v, config.embedding_dim) for v in self.vocab_sizes]
        self.embeddings = nn.ModuleList(nn.Embedding(v, w) for v, w in zip(self.vocab_sizes, widths, strict=True))
        width = sum(widths) + self.num_inputs
        layers: list[nn.Module] = []
        for h in config.hidden:
            layers += [nn.Linear(width, h), nn.ReLU(), nn.Dropout(config.dropout)]
            width = h
        layers.append(nn.Linear(width, 1))
        self.mlp = nn.Sequential(*layers)

    def forward(self, categorical: torch.Tensor, numeric: torch.Tensor) -> torch.Tensor:
        parts = [emb(categorical[:, j]) for j, emb in enumerate(self.embeddings)]
        parts.append(numeric)
        return self.mlp(torch.cat(parts, dim=1)).squeeze(1)

    def predict_proba(self, categorical: torch.Tensor, numeric: torch.Tensor, batch_size: int = 65536) -> torch.Tensor:
        """Probabilities in eval mode (:func:`tenfold.model.io.predict_proba`, what a loaded model uses)."""
        from tenfold.model.io import predict_proba

        return predict_proba(self, categorical, numeric, batch_size)
