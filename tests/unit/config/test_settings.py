from __future__ import annotations

import subprocess
import sys

import pytest

from tenfold.config import ENVIRONMENTS, build_settings, get_settings
from tenfold.config.names import check_bucket_name, check_pubsub_name, check_resource_name, check_service_account_id


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_every_environment_validates(env):
    s = get_settings(env)
    assert s.env == env
    # names are unique per role: two resources never share a name
    buckets = [s.storage.lake_bucket, s.storage.models_bucket, s.storage.artifacts_bucket,
               s.storage.dataproc_staging_bucket, s.storage.tf_state_bucket]
    assert len(set(buckets)) == len(buckets)
    assert len(set(s.messaging.topics)) == len(s.messaging.topics)
    for sub in s.messaging.subscriptions.values():
        assert sub.dead_letter_topic in s.messaging.topics
        assert sub.topic in s.messaging.topics


def test_environments_do_not_share_names():
    dev, prod = get_settings("dev"), get_settings("prod")
    assert dev.storage.lake_bucket != prod.storage.lake_bucket
    assert dev.infra.platform_stack != prod.infra.platform_stack


def test_local_uses_emulators_and_loopback():
    s = get_settings("local")
    assert s.storage.lake_uri.startswith("file://")
    assert s.storage.emulator_host and "127.0.0.1" in s.storage.emulator_host
    assert s.messaging.emulator_host == f"127.0.0.1:{s.local.pubsub_port}"
    assert get_settings("dev").storage.emulator_host is None
    assert get_settings("dev").storage.lake_uri.startswith("gs://")


def test_unknown_env_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("TENFOLD_ENV", "staging")
    get_settings.cache_clear()
    with pytest.raises(ValueError, match="choose one of local, dev, prod"):
        get_settings()
    get_settings.cache_clear()


@pytest.mark.parametrize(
    ("check", "bad"),
    [
        (check_bucket_name, "Has_Upper"),
        (check_bucket_name, "goog-bucket"),
        (check_bucket_name, "ab"),
        (check_pubsub_name, "goog-topic"),
        (check_pubsub_name, "1starts-with-digit"),
        (check_resource_name, "ends-with-dash-"),
        (check_resource_name, "x" * 64),
        (check_service_account_id, "short"),
    ],
)
def test_naming_rules_reject(check, bad):
    with pytest.raises(ValueError):
        check(bad)


def test_bad_prefix_is_rejected_at_build_time():
    with pytest.raises(ValueError, match="not a valid"):
        build_settings("dev", prefix="Tenfold_Dev")


def test_changing_prefix_changes_every_derived_name():
    a, b = build_settings("dev"), build_settings("dev", prefix="acme-dev")
    assert b.storage.lake_bucket != a.storage.lake_bucket and "acme-dev" in b.storage.lake_bucket
    assert b.serving.load_balancer.url_map.startswith("acme-dev")


def test_get_dotted_key():
    s = get_settings("local")
    assert s.get("local.airflow_port") == s.local.airflow_port
    assert s.get("messaging.subscriptions.requests.name") == s.messaging.subscriptions["requests"].name
    with pytest.raises(KeyError):
        s.get("storage.nope")


def test_cli_config_get():
    out = subprocess.run([sys.executable, "-m", "tenfold.cli", "config", "get", "storage.models_bucket", "--env", "dev"],
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip() == get_settings("dev").storage.models_bucket
    bad = subprocess.run([sys.executable, "-m", "tenfold.cli", "config", "get", "nope"], capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown settings key" in bad.stderr


def test_config_package_is_light():
    code = "import sys, tenfold.config; heavy={'torch','pyspark','pandas','airflow','google.cloud.storage'}; print(sorted(heavy & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
