"""Lineage of a model version: which data, which validation, which code and which config made it.

Lineage is stored beside a version but is not part of its content hash: two runs that produce
byte-identical weights, preprocessing and metrics are the same version, and the first run's lineage
is kept (a retried task never rewrites history).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import importlib.metadata
import subprocess
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tenfold.data.lake import Lake, Partition


@dataclass(frozen=True)
class PartitionRef:
    """One published feature partition as it was when the model read it."""

    partition: str  # YYYY-MM
    data_dir: str
    rows: int
    schema_hash: str
    run_id: str
    manifest_sha256: str
    validation: Any = None  # what the quality gate recorded in the manifest, if anything

    @classmethod
    def from_dict(cls, body: Mapping[str, Any]) -> PartitionRef:
        return cls(**{k: body[k] for k in cls.__dataclass_fields__ if k in body})


def partition_refs(lake: Lake, table: str, parts: Iterable[Partition]) -> list[PartitionRef]:
    """Read each partition's manifest; a partition with no manifest is refused by ``Lake``."""
    refs = []
    for part in parts:
        manifest = lake.read_manifest(table, part)
        refs.append(
            PartitionRef(
                partition=part.label,
                data_dir=manifest.data_dir,
                rows=manifest.rows,
                schema_hash=manifest.schema_hash,
                run_id=manifest.run_id,
                manifest_sha256=hashlib.sha256(manifest.to_json().encode()).hexdigest(),
                validation=manifest.extra.get("validation", manifest.extra or None),
            )
        )
    return refs


def code_version(root: Path | None = None) -> dict[str, Any]:
    """The package version and, when run from a git checkout, the commit and whether it was dirty."""
    try:
        package = importlib.metadata.version("tenfold")
    except importlib.metadata.PackageNotFoundError:
        package = "unknown"
    out: dict[str, Any] = {"package_version": package, "git_commit": None, "git_dirty": None}
    if root is None:
        from tenfold.config.settings import project_root

        root = project_root()
    try:
        commit = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()
        out.update(git_commit=commit or None, git_dirty=bool(dirty))
    except (OSError, subprocess.SubprocessError):
        pass  # not a checkout (an installed wheel, a container image): the package version must do
    return out


@dataclass(frozen=True)
class Lineage:
    feature_table: str
    train_partitions: tuple[PartitionRef, ...]
    holdout_partitions: tuple[PartitionRef, ...]
    training_config: dict[str, Any]
    code: dict[str, Any] = field(default_factory=code_version)
    validation: dict[str, Any] = field(default_factory=dict)
    run_id: str | None = None
    created_at: str = field(default_factory=lambda: dt.datetime.now(dt.UTC).isoformat(timespec="seconds"))
    extra: dict[str, Any] = field(default_factory=dict)
    # The feedback the run trained on (docs/feedback.md, "Retraining with feedback"): the weight, the labelled
    # partitions read (data dir, rows, run id), the rows selected and why others were not, the training
    # input's SHA-256 and the rows the ranks trained on; empty when the run used none.
    feedback: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, body: Mapping[str, Any]) -> Lineage:
        return cls(
            feature_table=body["feature_table"],
            train_partitions=tuple(PartitionRef.from_dict(p) for p in body.get("train_partitions", ())),
            holdout_partitions=tuple(PartitionRef.from_dict(p) for p in body.get("holdout_partitions", ())),
            training_config=dict(body.get("training_config", {})),
            code=dict(body.get("code", {})),
            validation=dict(body.get("validation", {})),
            run_id=body.get("run_id"),
            created_at=body.get("created_at", ""),
            extra=dict(body.get("extra", {})),
            feedback=dict(body.get("feedback", {})),
        )
