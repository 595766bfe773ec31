"""The per-row sample weights in the training loss (tenfold.training.loss), and the dataset that carries them."""

from __future__ import annotations

import pytest
import torch

from tenfold.training.data import FeatureDataset
from tenfold.training.loss import weighted_bce


def _batch(n: int = 6, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, generator=g, dtype=torch.float64), (torch.rand(n, generator=g) < 0.5).double()


def test_unit_weights_are_the_plain_mean_and_none_is_bce_with_logits_exactly() -> None:
    logits, y = _batch()
    plain = torch.nn.BCEWithLogitsLoss()(logits, y)
    assert torch.equal(weighted_bce(logits, y), plain)  # bit for bit: a run without feedback is unchanged
    assert torch.allclose(weighted_bce(logits, y, torch.ones_like(y)), plain, rtol=0, atol=1e-15)


def test_a_row_of_weight_k_counts_as_k_copies_of_itself_over_the_batch_rows() -> None:
    logits, y = _batch()
    per_row = torch.nn.functional.binary_cross_entropy_with_logits(logits, y, reduction="none")
    w = torch.tensor([1.0, 1.0, 3.0, 1.0, 0.0, 0.5], dtype=torch.float64)
    # sum(w_i * l_i) / n: divided by the batch's row count, not by the weights' sum.
    expected = (per_row[0] + per_row[1] + 3 * per_row[2] + per_row[3] + 0.5 * per_row[5]) / 6
    assert torch.allclose(weighted_bce(logits, y, w), expected, rtol=0, atol=1e-15)
    assert not torch.allclose(weighted_bce(logits, y, w), (per_row * w).sum() / w.sum())


def test_a_weight_zero_row_has_no_gradient_and_weight_two_doubles_it() -> None:
    logits, y = _batch()
    logits = logits.clone().requires_grad_(True)
    w = torch.tensor([1.0, 0.0, 2.0, 1.0, 1.0, 1.0], dtype=torch.float64)
    weighted_bce(logits, y, w).backward()
    weighted_grad = logits.grad.clone()
    logits.grad = None
    weighted_bce(logits, y).backward()
    plain_grad = logits.grad
    assert weighted_grad[1].item() == 0.0 and plain_grad[1].item() != 0.0
    assert torch.allclose(weighted_grad[2], 2 * plain_grad[2], rtol=0, atol=1e-15)
    assert torch.allclose(weighted_grad[0], plain_grad[0], rtol=0, atol=1e-15)


def test_weights_must_match_the_rows() -> None:
    logits, y = _batch()
    with pytest.raises(ValueError, match="one per row"):
        weighted_bce(logits, y, torch.ones(3, dtype=torch.float64))


def test_concat_gives_features_rows_weight_one_beside_weighted_rows() -> None:
    a = FeatureDataset(torch.zeros(3, 2, dtype=torch.long), torch.zeros(3, 4), torch.ones(3))
    b = FeatureDataset(torch.ones(2, 2, dtype=torch.long), torch.ones(2, 4), torch.zeros(2), torch.full((2,), 2.5))
    both = FeatureDataset.concat(a, b)
    assert len(both) == 5 and both.weights is not None
    assert both.weights.tolist() == [1.0, 1.0, 1.0, 2.5, 2.5]
    assert both.batch_weights(torch.tensor([4, 0])).tolist() == [2.5, 1.0]
    assert FeatureDataset.concat(a, a).weights is None and a.batch_weights(torch.tensor([0])) is None
