from __future__ import annotations

import json
import sqlite3
import subprocess
import sys

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
    # The migrated database is where the environment says, with Airflow's schema version stamped in it.
    db = airflow_env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].removeprefix("sqlite:///")
    with sqlite3.connect(db) as conn:
        (version,) = conn.execute("select version_num from alembic_version").fetchone()
    assert version
    assert db.startswith(str(local_settings.local.home))
