"""The data quality gate: Great Expectations 1.x suites (the workload's ``expectations_dir``: ``*.json``) run on every partition.

* :mod:`tenfold.quality.suites` loads the suites and computes each partition's parameters;
* :mod:`tenfold.quality.gate` validates a staged or published batch, writes Data Docs, quarantines
  and alerts on failure (:func:`validate_partition`, :func:`validate_published`);
* :mod:`tenfold.pipelines.build_features` holds the steps of ``dags/build_features.py``.

Importing this package is cheap; Great Expectations is imported on first validation.
"""

from __future__ import annotations

from tenfold.quality.gate import (
    ExpectationOutcome,
    ValidationFailed,
    ValidationReport,
    validate_partition,
    validate_published,
)
from tenfold.quality.suites import load_suite, partition_parameters, suite_path

__all__ = [
    "ExpectationOutcome",
    "ValidationFailed",
    "ValidationReport",
    "load_suite",
    "partition_parameters",
    "suite_path",
    "validate_partition",
    "validate_published",
]
