"""The model registry: immutable versions on GCS, atomically moved aliases, and the promotion gate.

``ModelRegistry(settings)`` is the API (see :mod:`tenfold.registry.registry`); ``tenfold models`` is
the command-line view; :mod:`tenfold.registry.gate` decides promotions; :mod:`tenfold.pipelines.train_model`
holds the steps the ``train_model`` DAG runs.
"""

from __future__ import annotations

from tenfold.registry.errors import (
    AliasConflict,
    IntegrityError,
    InvalidModelDir,
    PreconditionsNotEnforced,
    RegistryError,
    UnknownVersion,
    VersionConflict,
)
from tenfold.registry.lineage import Lineage, PartitionRef
from tenfold.registry.registry import ANY, CHALLENGER, CHAMPION, AliasPointer, ModelRegistry, ModelVersion

__all__ = [
    "ANY",
    "CHALLENGER",
    "CHAMPION",
    "AliasConflict",
    "AliasPointer",
    "IntegrityError",
    "InvalidModelDir",
    "Lineage",
    "ModelRegistry",
    "ModelVersion",
    "PartitionRef",
    "PreconditionsNotEnforced",
    "RegistryError",
    "UnknownVersion",
    "VersionConflict",
]
