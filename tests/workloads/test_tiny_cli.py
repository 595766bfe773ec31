"""The CLI follows the settings a workload sets (docs/workloads.md): its features table and the lake's layout."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from tenfold.cli import app
from tenfold.config import Settings
from tenfold.config.settings import LakeLayout
from tenfold.data.lake import Partition

HERE = Path(__file__).resolve().parent


@pytest.fixture
def tiny(make_settings: Callable[..., Settings], local_settings: Settings, monkeypatch: pytest.MonkeyPatch,
         tmp_path: Path) -> Settings:
    monkeypatch.syspath_prepend(str(HERE))
    return make_settings(on=local_settings, workload="tiny_workload:WORKLOAD", storage={
        "features_table": "tiny_features", "lake_uri": (tmp_path / "lake").as_uri(),
        "lake_layout": LakeLayout(staging="tmp_staging", quarantine="held")})


def _features_of(tw: Any, part: Partition) -> pa.Table:
    """The tiny workload's features of ``part``, computed as its transform does (pure pyarrow)."""
    ev = tw.read("events")
    ev = ev.filter(pc.and_(pc.equal(ev["year"], part.year), pc.equal(ev["month"], part.month)))
    devices = tw.read("devices")
    segment = dict(zip(devices["device_id"].to_pylist(), devices["segment"].to_pylist(), strict=True))
    schema = tw.CONTRACT.arrow_schema()
    cols = {"segment": pa.array([segment.get(d, "unknown") for d in ev["device_id"].to_pylist()])}
    return pa.table({c: (cols[c] if c in cols else ev[c]).cast(schema.field(c).type) for c in schema.names},
                    schema=schema)


def test_evaluate_reads_the_settings_features_table(tiny: Settings, monkeypatch: pytest.MonkeyPatch,
                                                    tmp_path: Path) -> None:
    """docs/workloads.md has a workload of one's own set ``storage.features_table``: ``tenfold evaluate`` scores
    on that table (it read ``features``, absent here, and refused)."""
    import tiny_workload as tw  # type: ignore[import-not-found]
    import torch

    import tenfold.training.cli as cli
    from tenfold.data.lake import Lake
    from tenfold.model import Preprocessor, save_model

    lake = Lake.from_settings(tiny)
    for label in ("2020-01", "2020-02", "2020-03"):
        staged = tmp_path / f"staged-{label}"
        staged.mkdir()
        pq.write_table(_features_of(tw, Partition.parse(label)), staged / "part-00000.parquet")
        lake.publish("tiny_features", Partition.parse(label), str(staged), run_id="t", extra=tw.CONTRACT.manifest_extra())
    train = pa.concat_tables([_features_of(tw, Partition.parse(m)) for m in ("2020-01", "2020-02")])
    pre = Preprocessor.fit(train, tw.CONTRACT)
    torch.manual_seed(0)
    model = tw.build_model(tw.TinyConfig(), list(pre.vocab_sizes.values()), pre.num_inputs)
    save_model(tmp_path / "model", model, tw.TinyConfig(), pre, workload="tiny_workload:WORKLOAD")
    monkeypatch.setattr(cli, "command_settings", lambda env=None: tiny)
    for extra in ([], ["--no-baselines"]):
        out = CliRunner().invoke(app, ["evaluate", "--model", str(tmp_path / "model"), "--train-months",
                                       "2020-01:2020-02", "--holdout-months", "2020-03:2020-03", *extra])
        assert out.exit_code == 0, out.output
        assert "auc" in out.output.lower()


def test_ingest_quarantines_under_the_settings_layout(tiny: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    """A source that cannot be read is quarantined where the layout says (the DAG's lake and the bucket's lifecycle
    rules look there), not in the default folders."""
    import tiny_workload as tw  # type: ignore[import-not-found]

    import tenfold.data.cli as cli
    from tenfold.workloads import get_workload

    def without_year(table: str) -> pa.Table:
        t = tw.read(table)
        return t.drop_columns(["year"]) if table == "events" else t

    broken = dataclasses.replace(get_workload(tiny), sources=dataclasses.replace(tw.SOURCES, read=without_year))
    monkeypatch.setattr(cli, "get_settings", lambda env=None: tiny)
    monkeypatch.setattr("tenfold.workloads.get_workload", lambda spec: broken)
    out = CliRunner().invoke(app, ["ingest", "--month", "2020-02", "--run-id", "cli1"])
    assert out.exit_code == 2 and "no 'year' column" in out.output, out.output
    root = Path(urlparse(tiny.storage.lake_uri).path)
    assert (root / "held").is_dir() and not (root / "quarantine").exists() and not (root / "_staging").exists()


def test_a_workload_without_lookup_tables_serves_the_months_whose_features_are_published(
        tiny: Settings, tmp_path: Path) -> None:
    """Requests that carry every feature need no lookup table: such a workload built and trained, then its replicas
    refused to start ("names no lookup_tables: it cannot be served online"), which docs/workloads.md never said."""
    import dataclasses

    import tiny_workload as tw  # type: ignore[import-not-found]

    from tenfold.data.lake import Lake
    from tenfold.features.online import read_lookups
    from tenfold.workloads import get_workload

    workload = get_workload(tiny)
    bare = dataclasses.replace(workload, contract=dataclasses.replace(workload.contract, lookup_tables=()))
    lake = Lake.from_settings(tiny)
    staged = tmp_path / "staged"
    staged.mkdir()
    pq.write_table(_features_of(tw, Partition.parse("2020-01")), staged / "part-00000.parquet")
    lake.publish("tiny_features", Partition.parse("2020-01"), str(staged), run_id="t", extra=tw.CONTRACT.manifest_extra())
    assert read_lookups(tiny, bare) == {"2020-01": {}}
