"""The google provider's hooks, configured only by ``airflow_env``, reach the emulators."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytestmark = pytest.mark.integration

PROBE = """
import sys
from airflow.providers.google.cloud.hooks.gcs import GCSHook
from airflow.providers.google.cloud.hooks.pubsub import PubSubHook
from tenfold.config import get_settings

s = get_settings()
gcs = GCSHook(gcp_conn_id=s.airflow.gcp_conn_id)
gcs.upload(bucket_name=s.storage.artifacts_bucket, object_name="probe/hello.txt", data=b"hi from airflow")
print("gcs", gcs.download(bucket_name=s.storage.artifacts_bucket, object_name="probe/hello.txt").decode())
ps = PubSubHook(gcp_conn_id=s.airflow.gcp_conn_id)
# A probe topic of its own: the session's real subscriptions are left for the tests that own them.
ps.create_topic(project_id=s.project_id, topic="airflow-probe")
ps.create_subscription(project_id=s.project_id, topic="airflow-probe", subscription="airflow-probe-sub")
ps.publish(project_id=s.project_id, topic="airflow-probe", messages=[{"data": b"probe"}])
print("pubsub published")
"""


def test_google_provider_hooks_use_the_emulators(airflow_env, local_settings):
    from tenfold.messaging import subscriber_client, subscription_path
    from tenfold.storage import gcs_client

    out = subprocess.run([sys.executable, "-c", PROBE], env=airflow_env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "gcs hi from airflow" in out.stdout and "pubsub published" in out.stdout
    # Seen from outside, through our own client: it really landed in this session's emulator.
    blob = gcs_client(local_settings).bucket(local_settings.storage.artifacts_bucket).blob("probe/hello.txt")
    assert blob.download_as_bytes() == b"hi from airflow"
    with subscriber_client(local_settings) as sub:
        path = subscription_path(local_settings, "airflow-probe-sub")
        got = sub.pull(request={"subscription": path, "max_messages": 1}, timeout=10).received_messages
        assert [m.message.data for m in got] == [b"probe"]
        sub.acknowledge(request={"subscription": path, "ack_ids": [got[0].ack_id]})
