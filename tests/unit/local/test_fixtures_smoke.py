from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.integration
def test_fixtures_give_provisioned_emulators(local_settings):
    from tenfold.messaging import publisher_client, topic_path
    from tenfold.storage import gcs_client

    buckets = {b.name for b in gcs_client(local_settings).list_buckets()}
    assert local_settings.storage.models_bucket in buckets
    pub = publisher_client(local_settings)
    topics = {t.name for t in pub.list_topics(request={"project": f"projects/{local_settings.project_id}"})}
    assert topic_path(local_settings, local_settings.messaging.requests_topic) in topics


@pytest.mark.integration
def test_airflow_env_resolves_same_settings(airflow_env, local_settings):
    code = "import json; from tenfold.config import get_settings; print(json.dumps(get_settings().model_dump(mode='json')))"
    out = subprocess.run([sys.executable, "-c", code], env=airflow_env, capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == local_settings.model_dump(mode="json")
    # The migrated database is where the environment says, at the installed Airflow's migration head: a schema
    # version of an older Airflow (a database copied from a stale cached template) would fail its components.
    db = airflow_env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].removeprefix("sqlite:///")
    with sqlite3.connect(db) as conn:
        (version,) = conn.execute("select version_num from alembic_version").fetchone()
    assert db.startswith(str(local_settings.local.home))
    # Airflow's own check (the heads of its migration scripts against the database's), run as the fixture runs
    # Airflow's commands (tenfold.local.ensure_airflow_db): the environment's airflow, bounded.
    from tenfold.local.process import run_bounded

    airflow = Path(airflow_env["PATH"].split(os.pathsep)[0]) / "airflow"
    checked = run_bounded([str(airflow) if airflow.exists() else "airflow", "db", "check-migrations", "-t", "0"],
                          env=airflow_env, timeout=300)
    assert checked.returncode == 0, f"the database is at {version}, not Airflow's head:\n{checked.stderr[-3000:]}"
