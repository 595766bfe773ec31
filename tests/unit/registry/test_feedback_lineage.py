"""A version's lineage records the feedback it trained on, and ``tenfold models show`` shows it."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tenfold.cli import app
from tenfold.config import Settings
from tenfold.registry import Lineage, ModelRegistry
from tenfold.registry import cli as models_cli

FEEDBACK = {"weight": 0.5, "rows": 160, "trained_rows": 150, "train_months": ["2033-01", "2033-02"],
            "labelled_partitions": {"2026-12": {"data_dir": "data-1", "rows": 240, "labelled": 240, "run_id": "join-1"}},
            "sha256": "ab" * 32}


def test_lineage_keeps_its_feedback_and_older_lineage_reads_as_none(lineage: Lineage) -> None:
    with_feedback = dataclasses.replace(lineage, feedback=FEEDBACK)
    assert Lineage.from_dict(json.loads(json.dumps(with_feedback.to_dict()))) == with_feedback
    older = with_feedback.to_dict()
    del older["feedback"]  # written before lineage had the field
    assert Lineage.from_dict(older).feedback == {}


def test_models_show_shows_the_feedback_a_version_trained_on(registry_settings: Settings, make_model_dir: Callable[..., Path],
                                                             lineage: Lineage, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(models_cli, "command_settings", lambda env=None: registry_settings)
    reg = ModelRegistry(registry_settings)
    used = reg.register(make_model_dir(1), dataclasses.replace(lineage, feedback=FEEDBACK),
                        metrics={"auc": 0.6, "log_loss": 0.5, "brier": 0.2}).version
    plain = reg.register(make_model_dir(2), lineage, metrics={"auc": 0.6, "log_loss": 0.5, "brier": 0.2}).version
    out = CliRunner().invoke(app, ["models", "show", used])
    assert out.exit_code == 0, out.output
    shown = json.loads(out.output)
    assert shown["lineage"]["feedback"] == FEEDBACK
    assert shown["feedback"] == {"rows": 160, "trained_rows": 150, "weight": 0.5, "train_months": ["2033-01", "2033-02"],
                                 "labelled_partitions": {"2026-12": 240}}
    assert json.loads(CliRunner().invoke(app, ["models", "show", plain]).output)["feedback"] is None
