"""``airflow dags test monitor_drift`` on the local platform: injected drift fires, an unchanged month does not.

A small flights model is registered with the reference profile of its two synthetic training months (the
real ``ensure_profile`` that train_model's register calls). An undrifted third month reports and emits no
drift Asset event; a fourth month whose ``distance`` (a feature that triggers retraining) is shifted by
five standard deviations makes the run alert and emit the drift event, which Airflow's metadata database
shows ``train_model`` is scheduled on. Months of their own in the session lake (2032), far from real data.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import tempfile
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tenfold.config import Settings
from tenfold.data.lake import Lake, Partition, month_range
from tenfold.monitoring.drift import read_report, report_dir
from tenfold.monitoring.profile import ensure_profile
from tenfold.registry import ModelRegistry
from tenfold.registry.lineage import Lineage, partition_refs

pytestmark = pytest.mark.integration

REFERENCE = month_range("2032-01", "2032-02")
SAME, DRIFTED = Partition.parse("2032-03"), Partition.parse("2032-04")
ROWS = 3000


def _publish(lake: Lake, part: Partition, table: str, shift_distance_sd: float = 0.0) -> None:
    from tenfold.workloads.flights.contract import CONTRACT
    from tenfold.workloads.flights.synthetic import synthetic_features

    data = synthetic_features(part, ROWS, seed=7)
    if shift_distance_sd:
        distance = data["distance"].to_numpy(zero_copy_only=False)
        shifted = distance + shift_distance_sd * float(np.std(distance))
        data = data.set_column(data.schema.get_field_index("distance"), data.schema.field("distance"),
                               pa.array(shifted, type=pa.float64()))
    with tempfile.TemporaryDirectory(prefix="tenfold-drift-") as tmp:
        pq.write_table(data, Path(tmp) / "part-0.parquet")
        lake.publish(table, part, tmp, run_id="drift-test", extra=CONTRACT.manifest_extra(synthetic=True))


def _register_model(settings: Settings, lake: Lake, directory: Path) -> str:
    """A small (untrained) flights network, its preprocessing fit on the reference months, with its profile."""
    import torch

    from tenfold.model import Preprocessor, save_model
    from tenfold.workloads.flights import WORKLOAD
    from tenfold.workloads.flights.model import FlightDelayModel, ModelConfig

    table = settings.storage.features_table
    pre = Preprocessor.fit(lake.read_table(table, REFERENCE), WORKLOAD.contract)
    config = ModelConfig(embedding_dim=4, hidden=(8,), dropout=0.0)
    torch.manual_seed(3)
    save_model(directory, FlightDelayModel(config, list(pre.vocab_sizes.values()), pre.num_inputs), config, pre,
               workload=WORKLOAD.name)
    ensure_profile(directory, lake, table, REFERENCE, settings.monitoring.drift)
    lineage = Lineage(feature_table=table, train_partitions=tuple(partition_refs(lake, table, REFERENCE)),
                      holdout_partitions=(), training_config={"seed": 3}, run_id="drift-test")
    return ModelRegistry(settings).register(directory, lineage, metrics={"auc": 0.5, "log_loss": 0.69}).version


def _dags_test(env: dict[str, str], conf: dict[str, str], logical_date: str, tmp: Path) -> str:
    proc = subprocess.run(["airflow", "dags", "test", "monitor_drift", logical_date, "-c", json.dumps(conf)],
                          env=env, capture_output=True, text=True, timeout=300, check=False)
    out = proc.stdout + proc.stderr
    (tmp / f"dags-test-{logical_date[:10]}.log").write_text(out)
    assert proc.returncode == 0, out[-6000:]
    assert "state=failed" not in out.replace("'", ""), out[-6000:]
    return out


_SAME_RUN = r"""
import datetime as dt, importlib.util, json, sys

spec = importlib.util.spec_from_file_location("monitor_drift_dag", sys.argv[1])
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
when = dt.datetime.fromisoformat(sys.argv[2])
run = module.monitor_drift().test(run_after=when, logical_date=when, run_conf=json.loads(sys.argv[3]))
print("RUN", run.run_id, run.state)
"""


def _run_as(env: dict[str, str], conf: dict[str, str], when: str, tmp: Path, name: str) -> str:
    """The DAG run of ``when`` (``dag.test`` with the run id ``manual__<when>``): run again, it replaces the run of
    that id, as a clear resets it, and the run's tasks run again under the same run id."""
    import sys

    from tenfold.config.settings import project_root

    proc = subprocess.run([sys.executable, "-c", _SAME_RUN, str(project_root() / "dags" / "monitor_drift.py"), when,
                           json.dumps(conf)], env=env, capture_output=True, text=True, timeout=300, check=False)
    out = proc.stdout + proc.stderr
    (tmp / f"dag-test-{name}.log").write_text(out)
    assert proc.returncode == 0 and f"RUN manual__{when} success" in out, out[-6000:]
    return out


def _scheduled_on(env: dict[str, str], uri: str) -> list[str]:
    """The DAGs Airflow's metadata database says an Asset event of ``uri`` triggers."""
    db = env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].removeprefix("sqlite:///")
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT r.dag_id FROM dag_schedule_asset_reference r JOIN asset a ON a.id = r.asset_id "
                            "WHERE a.uri = ? ORDER BY r.dag_id", (uri,)).fetchall()
    return [r[0] for r in rows]


def test_injected_drift_fires_the_detector_and_triggers_train_model_an_unchanged_month_does_not(
    asset_events, local_settings: Settings, airflow_env: dict[str, str], tmp_path: Path
) -> None:
    lake = Lake.from_settings(local_settings)
    table = local_settings.storage.features_table
    for part in REFERENCE:
        _publish(lake, part, table)
    _publish(lake, SAME, table)
    _publish(lake, DRIFTED, table, shift_distance_sd=5.0)
    version = _register_model(local_settings, lake, tmp_path / "model")
    alerts = tmp_path / "alerts.jsonl"
    env = {**airflow_env, "TENFOLD_ALERT_FILE": str(alerts)}
    drift_uri = local_settings.assets.drift

    before = len(asset_events(airflow_env, drift_uri))
    out = _dags_test(env, {"month": SAME.label, "version": version}, "2032-05-01T00:00:00+00:00", tmp_path)
    same = read_report(local_settings, SAME)
    assert same.version == version and same.rows == ROWS
    # The same generator and seed as the reference months: every PSI is below psi_report (the largest about 0.03), so
    # "ok", not merely no retrain ("report" would be a feature judged shifted, "too_small" a month not measured).
    assert same.decision == "ok" and same.triggered == [], same.summary
    assert next(f for f in same.features if f.name == "distance").level == "ok"
    assert len(asset_events(airflow_env, drift_uri)) == before, "an undrifted month emits no drift event"
    assert not alerts.exists() or "drift:" not in alerts.read_text()
    assert f"{local_settings.monitoring.drift.reports_prefix}/year=2032/month=3/report.html" in out, "the log links the report"

    _run_as(env, {"month": DRIFTED.label, "version": version}, "2032-05-02T00:00:00+00:00", tmp_path, "drifted")
    drifted = read_report(local_settings, DRIFTED)
    assert drifted.decision == "retrain" and "distance" in drifted.triggered, drifted.summary
    assert drifted.summary["max_psi"] >= local_settings.monitoring.drift.psi_drift
    events = asset_events(airflow_env, drift_uri)
    assert len(events) == before + 1
    assert events[-1]["retrain"] is True and events[-1]["months"] == [DRIFTED.label] and "distance" in events[-1]["triggered"]
    assert events[-1]["version"] == version
    # The event is what train_model runs on (with the weekly baseline), as Airflow itself records it.
    assert "train_model" in _scheduled_on(airflow_env, drift_uri)
    (alert,) = [json.loads(line) for line in alerts.read_text().splitlines() if "drift:" in line]
    assert "distance" in alert["details"]["features"]
    # The alert links the page pinned to what was measured (a later run on the month rewrites report.html only).
    assert alert["details"]["report"].startswith(f"{report_dir(local_settings, DRIFTED)}/report-{version}-")
    page = Path(urlparse(alert["details"]["report"]).path).read_text()
    assert page == (Path(urlparse(report_dir(local_settings, DRIFTED)).path) / "report.html").read_text()
    assert "<svg" in page and "distance: PSI" in page

    # Another run on the same content (a re-publish of the month starts one): the drift has triggered already.
    out = _dags_test(env, {"month": DRIFTED.label, "version": version}, "2032-05-03T00:00:00+00:00", tmp_path)
    assert len(asset_events(airflow_env, drift_uri)) == before + 1, "the same drift triggered retraining twice"
    assert len([line for line in alerts.read_text().splitlines() if "drift:" in line]) == 1
    assert "already triggered by" in out, out[-3000:]

    # The drifted month's run cleared, after it finished: its trigger record is its own, so it decides to retrain
    # again, and finds that Airflow recorded its event already.
    out = _run_as(env, {"month": DRIFTED.label, "version": version}, "2032-05-02T00:00:00+00:00", tmp_path, "cleared")
    assert len(asset_events(airflow_env, drift_uri)) == before + 1, "a cleared run started retraining twice"
    assert "emitted the drift event of ['2032-04'] already" in out, out[-3000:]
    assert len([line for line in alerts.read_text().splitlines() if "drift:" in line]) == 1
