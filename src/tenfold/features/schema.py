"""Transitional alias of the flights workload's feature contract (``tenfold.workloads.flights.contract``).

Training, model, pipeline and demo code still import the contract from here; it goes away once they
read ``get_workload(settings).contract`` (and the features table name from
``settings.storage.features_table``). New code must not import this module.

It reaches the workload through :func:`tenfold.workloads.get_workload`, as the platform must (an
import-linter contract), and loads the few flights-only constants that ``FeatureContract`` does not
carry (tail-number buckets, the delay threshold) by name.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from tenfold.workloads import VERSION_KEY, get_workload

if TYPE_CHECKING:
    import pyarrow as pa

__all__ = [
    "ALL_COLUMNS",
    "ANALYSIS_COLUMNS",
    "CATEGORICAL_COLUMNS",
    "COLUMN_TYPES",
    "DELAY_THRESHOLD_MIN",
    "FEATURES_VERSION",
    "KEY_COLUMNS",
    "LABEL",
    "NON_NULL_COLUMNS",
    "NUMERIC_COLUMNS",
    "RAW_TABLES",
    "REQUIRED_IN_FILE",
    "TABLE",
    "TAILNUM_BUCKETS",
    "UNKNOWN_TAILNUM_BUCKET",
    "VERSION_KEY",
    "arrow_schema",
    "manifest_extra",
    "tailnum_bucket",
]

_WORKLOAD = get_workload("flights")
_CONTRACT = _WORKLOAD.contract
_FLIGHTS = importlib.import_module("tenfold.workloads.flights.contract")

# The platform's name of the features table (Settings.storage.features_table), not the contract's.
TABLE = "features"
RAW_TABLES: tuple[str, ...] = _WORKLOAD.sources.tables
LABEL: str = _CONTRACT.label
KEY_COLUMNS: tuple[str, ...] = _CONTRACT.key_columns
CATEGORICAL_COLUMNS: tuple[str, ...] = _CONTRACT.categorical_columns
NUMERIC_COLUMNS: tuple[str, ...] = _CONTRACT.numeric_columns
ANALYSIS_COLUMNS: tuple[str, ...] = _CONTRACT.analysis_columns
ALL_COLUMNS: tuple[str, ...] = _CONTRACT.all_columns
COLUMN_TYPES: dict[str, str] = dict(_CONTRACT.column_types)
NON_NULL_COLUMNS: tuple[str, ...] = _CONTRACT.non_null_columns
REQUIRED_IN_FILE: tuple[str, ...] = _CONTRACT.required_in_file
FEATURES_VERSION: int = _CONTRACT.version
DELAY_THRESHOLD_MIN: int = _FLIGHTS.DELAY_THRESHOLD_MIN
TAILNUM_BUCKETS: int = _FLIGHTS.TAILNUM_BUCKETS
UNKNOWN_TAILNUM_BUCKET: int = _FLIGHTS.UNKNOWN_TAILNUM_BUCKET


def tailnum_bucket(tailnum: str | None) -> int:
    bucket: int = _FLIGHTS.tailnum_bucket(tailnum)
    return bucket


def arrow_schema() -> pa.Schema:
    return _CONTRACT.arrow_schema()


def manifest_extra(**extra: object) -> dict[str, object]:
    return _CONTRACT.manifest_extra(**extra)
