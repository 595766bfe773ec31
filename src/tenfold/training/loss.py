"""The training loss: binary cross-entropy on logits, with optional per-row sample weights.

A weight says how many features rows a row counts as: the batch loss is ``sum(w_i * l_i) / n`` over the
batch's ``n`` rows (not ``/ sum(w_i)``), so a row of weight 2 pulls exactly as hard as the same row
twice, a row of weight 0 not at all, and a batch of weight-1 rows gives the plain mean. Dividing by the
row count rather than the weight sum also keeps DDP exact: every rank's batch has the same ``n``, so the
all-reduced gradient (the mean over ranks) is the gradient of ``sum(w_i * l_i) / (n * world)`` over the
global batch, as one process with the whole batch would compute it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def weighted_bce(logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Mean binary cross-entropy of ``logits`` against 0/1 ``labels``, each row's term times its weight.

    ``weights`` None is the unweighted mean (the exact computation of ``torch.nn.BCEWithLogitsLoss()``).
    """
    if weights is None:
        return F.binary_cross_entropy_with_logits(logits, labels)
    if weights.shape != labels.shape:
        raise ValueError(f"weights of shape {tuple(weights.shape)} for labels of shape {tuple(labels.shape)}: give one per row")
    per_row = F.binary_cross_entropy_with_logits(logits, labels, reduction="none")
    return (per_row * weights).sum() / per_row.numel()
