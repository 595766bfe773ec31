"""Lineage: what a version records about its data, code and config."""

from __future__ import annotations

from pathlib import Path

import pytest

from tenfold.config.settings import project_root
from tenfold.data.lake import Lake, MissingManifestError, Partition
from tenfold.registry.lineage import Lineage, PartitionRef, code_version, partition_refs
from tenfold.workloads.flights.contract import CONTRACT


def test_code_version_in_and_out_of_a_checkout(tmp_path: Path) -> None:
    inside = code_version(project_root())
    assert inside["package_version"] and len(inside["git_commit"] or "") == 40 and isinstance(inside["git_dirty"], bool)
    outside = code_version(tmp_path)  # an installed wheel / a container image: no git
    assert outside["git_commit"] is None and outside["package_version"] == inside["package_version"]


def test_partition_refs_read_manifests_and_refuse_unpublished(tmp_path: Path) -> None:
    from tenfold.workloads.flights.synthetic import publish_synthetic_features

    lake = Lake((tmp_path / "lake").as_uri())
    publish_synthetic_features(lake, [Partition(2013, 1)], 20)
    (ref,) = partition_refs(lake, "features", [Partition(2013, 1)])
    manifest = lake.read_manifest("features", Partition(2013, 1))
    assert (ref.partition, ref.rows, ref.data_dir, ref.run_id) == ("2013-01", 20, manifest.data_dir, manifest.run_id)
    assert ref.validation == CONTRACT.manifest_extra(synthetic=True) and len(ref.manifest_sha256) == 64
    with pytest.raises(MissingManifestError, match="2013-02"):
        partition_refs(lake, "features", [Partition(2013, 2)])


def test_lineage_round_trips() -> None:
    ref = PartitionRef("2013-01", "data-x", 5, "h", "run", "m" * 64, {"validated_by": "features"})
    lineage = Lineage(feature_table="features", train_partitions=(ref,), holdout_partitions=(ref,),
                      training_config={"epochs": 2}, code={"git_commit": None}, run_id="r")
    assert Lineage.from_dict(lineage.to_dict()) == lineage
