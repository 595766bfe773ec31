"""bench/search.py refuses an --only label that names no candidate, before it builds anything."""

from __future__ import annotations

import pytest
from _siblings import load, seed  # bench/ is on the path: tests/unit/bench/conftest.py

search = load("search")


class _NoLake:
    seed = staticmethod(seed)  # --seeds' argparse type, as the real module's

    def load(self, name: str) -> object:
        raise AssertionError("the features lake was being built")


def test_an_unknown_only_label_is_refused_before_any_work(monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    """An unknown label dropped its candidate silently; with none left, the run built the lake and ended in an
    IndexError at ranked[0]."""
    monkeypatch.setattr(search, "_siblings", _NoLake())
    with pytest.raises(SystemExit) as refused:
        search.main(["--only", "lr=0.01 dropout=0.1 small", "lr=0.001 dropout=0.1 small"])
    assert refused.value.code == 2
    err = capsys.readouterr().err
    assert "no candidate 'lr=0.01 dropout=0.1 small';" in err and "'lr=0.003 dropout=0.3 large'" in err
    assert "'lr=0.001 dropout=0.1 small';" not in err  # the valid label is not called unknown
