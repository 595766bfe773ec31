"""A model served on a GPU sits behind a wrapper that must be in eval mode like the model it wraps."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
import torch

from tenfold.model import io
from tenfold.serving.loading import _on_device


class _Net(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.dropout = torch.nn.Dropout(0.5)
        self.linear = torch.nn.Linear(2, 1)

    def forward(self, categorical: torch.Tensor, numeric: torch.Tensor) -> torch.Tensor:
        return self.linear(self.dropout(numeric)).squeeze(-1)


def test_the_on_device_wrapper_is_in_eval_mode_so_predicting_leaves_it_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    """The wrapper was left in training mode (a new module's), so predict_proba took every micro-batch's model for one
    in training and walked every module twice, to set eval mode and to restore it: the fast path for a served model
    never applied on a GPU."""
    wrapped = _on_device(_Net().eval(), torch.device("cpu"))
    assert not any(m.training for m in wrapped.modules())
    walks: list[bool] = []
    monkeypatch.setattr(torch.nn.Module, "train", lambda self, mode=True: walks.append(mode) or self)
    out = io.predict_proba(wrapped, torch.zeros((3, 0), dtype=torch.int64), torch.ones((3, 2)))
    assert walks == [] and out.shape == (3,)
    assert torch.equal(out, io.predict_proba(wrapped, torch.zeros((3, 0), dtype=torch.int64), torch.ones((3, 2))))


def test_a_model_cache_that_cannot_be_made_is_a_transient_load_error_naming_it(
        make_settings: Any) -> None:
    """Taking the download's lock creates <home>/serving/models and the lock file outside the download's refusals: an
    unwritable home (here serving/ is a file; a full disk the same) raised a raw NotADirectoryError, which the replica
    logged as a traceback and offline inference's workers redelivered, instead of the transient refusal naming the
    folder that a failed download gets."""
    from tenfold.serving.loading import ServingLoadError, model_cache_dir, resolve_and_download

    settings = make_settings()
    model_cache_dir(settings).parent.parent.mkdir(parents=True, exist_ok=True)
    model_cache_dir(settings).parent.write_text("not a folder")
    downloads: list[str] = []
    registry = SimpleNamespace(find=lambda ref: "v7", download=lambda version, dest: downloads.append(version))
    with pytest.raises(ServingLoadError, match=r"model version v7 cannot be downloaded into .*serving/models .*"
                                               r"NotADirectoryError.*free disk space") as caught:
        resolve_and_download(settings, "champion", registry=registry)
    assert caught.value.transient is True and downloads == []
