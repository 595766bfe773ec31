"""The pipelines' unit tests use the quality gate's fixtures (a local settings/lake on a temp home,
staged and hand-made monthly batches): loaded from that conftest rather than copied."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

_NAME = "tenfold_tests_quality_fixtures"
if _NAME not in sys.modules:
    _spec = importlib.util.spec_from_file_location(_NAME, Path(__file__).parents[1] / "quality" / "conftest.py")
    assert _spec and _spec.loader
    sys.modules[_NAME] = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(sys.modules[_NAME])
_q = sys.modules[_NAME]

settings, lake, alerts, stage, features_table = _q.settings, _q.lake, _q.alerts, _q.stage, _q.features_table
