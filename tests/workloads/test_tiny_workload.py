"""The seam, proven: a second workload through the real build_features and train_model pipelines.

``tiny_workload.py`` (two generated tables, a join for a transform, a logistic-regression model) is
chosen by settings alone. Its months go through the same steps the DAGs run: ingest and the raw gate,
the real Spark job (spark-submit, which learns the workload from its argv), the Great Expectations gate
with the workload's own suites, and the atomic publish; then a real torchrun training job, evaluation
next to the workload's baseline and the platform's, registration in the registry on the GCS emulator,
and the promotion gate.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from tenfold.config import Settings
from tenfold.config.pipelines import DagSettings, PipelineSettings
from tenfold.data.lake import Lake, month_range
from tenfold.features.online import load_online_features
from tenfold.model import load_model
from tenfold.pipelines import build_features as bf
from tenfold.pipelines import train_model as tm
from tenfold.registry import CHAMPION, ModelRegistry
from tenfold.workloads import VERSION_KEY, RequestInvalid, get_workload, lookup_table

HERE = Path(__file__).resolve().parent
TINY = "tiny_workload:WORKLOAD"
MONTHS = ("2020-01", "2020-03")


@pytest.fixture
def tiny_settings(make_settings: Callable[..., Settings], local_settings: Settings,
                  monkeypatch: pytest.MonkeyPatch) -> Settings:
    # The workload's module must import here and in the children (spark-submit, torchrun ranks).
    monkeypatch.syspath_prepend(str(HERE))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(HERE), os.environ.get("PYTHONPATH")])))
    return make_settings(
        on=local_settings,  # the registry on the session's GCS emulator
        workload=TINY,
        storage={"features_table": "tiny_features"},
        pipelines=PipelineSettings(build_features=DagSettings(first_month=MONTHS[0], last_month=MONTHS[1])),
        # No gate setting: the workload's own baseline, "prior" (the positive rate), is what the gate must beat.
    )


@pytest.mark.slow
def test_a_second_workload_runs_through_the_same_pipelines_gate_and_registry(tiny_settings: Settings) -> None:
    s = tiny_settings
    workload = get_workload(s)
    assert workload.name == "tiny"
    lake = Lake.from_settings(s)

    for month in month_range(*MONTHS):
        run = bf.plan(s, dag_id=bf.DAG_ID, run_id=f"tiny-{month.label}", logical_date=None, month=month.label)
        run = bf.validate(s, bf.build(s, bf.ingest(s, run)))
        published = bf.publish(s, run)
        assert published["rows"] == run.rows > 0
    assert [p.label for p in lake.published_partitions("tiny_features")] == ["2020-01", "2020-02", "2020-03"]
    manifest = lake.read_manifest("tiny_features", month_range(*MONTHS)[-1])
    assert manifest.extra[VERSION_KEY] == workload.contract.version and manifest.extra["validated_by"] == "tiny_features"
    assert lake.read_manifest("events", month_range(*MONTHS)[0]).extra["source"] == "tiny-generator"
    table = lake.read_table("tiny_features", month_range(*MONTHS))
    assert table.column_names == list(workload.contract.all_columns)
    assert "unknown" in set(table["segment"].to_pylist())  # devices the reference table lacks
    assert lake.published_partitions("features") == []  # nothing of the flights workload was touched

    # The online half: the lookups the job staged were published beside each month, and assembling the
    # raw events as requests gives exactly the features the Spark job wrote.
    devices = lookup_table(s.storage.lookups_table, "devices")
    assert lake.read_manifest(devices, month_range(*MONTHS)[-1]).extra[VERSION_KEY] == workload.contract.version
    online = load_online_features(s)
    assert online.months == ("2020-01", "2020-02", "2020-03")
    march = month_range(*MONTHS)[-1]
    events = lake.read_table("events", [march]).sort_by("event_id")
    requests = [workload.request_model.model_validate({k: row[k] for k in ("year", "month", "event_id", "device_id",
                                                                            "x1", "x2")})
                for row in events.to_pylist()]
    expected = lake.read_table("tiny_features", [march]).sort_by("event_id").select(list(workload.contract.online_columns))
    assert online.assemble(requests).equals(expected)
    with pytest.raises(RequestInvalid, match="no features are served for 2020-04") as err:
        online.check(requests[0].model_copy(update={"month": 4}))
    assert err.value.field == "month"

    planned = tm.plan(s, "tiny-train", {"epochs": 20, "nproc": 1, "batch_size": 64})
    assert planned.train_months == ("2020-01", "2020-02") and planned.holdout_months == ("2020-03",)
    trained = tm.train(s, planned)
    evaluation = tm.evaluate(s, planned, trained)
    assert set(evaluation.baselines) == {"prior", "hgb"}  # the workload's own, and the platform's
    assert evaluation.challenger["auc"] > 0.75 > evaluation.baselines["prior"]["auc"]
    registered = tm.register(s, planned, trained, evaluation)
    decision = tm.gate(s, planned, evaluation, registered)
    assert decision["promote"] and decision["champion_now"] == registered.version
    assert decision["checks"]["beats_prior"] is True, "the gate did not hold the challenger to the workload's baseline"

    registry = ModelRegistry(s)
    assert registry.resolve(CHAMPION) == registered.version
    assert registry.get(registered.version).lineage.feature_table == "tiny_features"
    champion = load_model(registry.download(registered.version, Path(planned.work_dir) / "champion"))
    assert champion.meta["workload"] == TINY and champion.workload is workload
    assert type(champion.model).__name__ == "TinyModel"
    probabilities = champion.predict_proba(table.slice(0, 10))
    assert probabilities.shape == (10,) and ((probabilities > 0) & (probabilities < 1)).all()


def test_the_bulk_scoring_job_accepts_a_model_of_a_workload_of_its_own(monkeypatch: pytest.MonkeyPatch) -> None:
    """The job gets the settings' spec ("tiny_workload:WORKLOAD") and a loaded model reports its name ("tiny"): it
    refused every model of a workload of its own, and must still refuse another workload's."""
    from tenfold.inference.spark import ScoringJobError, check_workload

    monkeypatch.syspath_prepend(str(HERE))
    check_workload(get_workload(TINY), TINY, "v1")
    with pytest.raises(ScoringJobError, match=r"belongs to workload 'flights'.*with a model of 'tiny'"):
        check_workload(get_workload("flights"), TINY, "v1")
