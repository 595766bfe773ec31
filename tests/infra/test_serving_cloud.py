"""The cloud serving fleet can start and serve: its bearer token comes from Secret Manager, the load
balancer routes on readiness, autohealing acts on liveness (one synth per session: see conftest.py)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from infra.stacks.synthesized import Synthesized as Synth
from infra.stacks.synthesized import by_name, resources
from tenfold import fleets
from tenfold.config import get_settings
from tenfold.workloads import get_workload, lookup_table

ENVS = ("dev", "prod")
ACCESSOR = "roles/secretmanager.secretAccessor"
# Where Google's load balancers and health checkers connect from
# (https://cloud.google.com/load-balancing/docs/health-check-concepts#ip-ranges), spelled here on purpose.
GOOGLE_PROBER_RANGES = {"35.191.0.0/16", "130.211.0.0/22"}
# The readiness check keeps the logical id the single check had before there were two: Terraform
# updates it in place instead of replacing a check both backend services reference.
READINESS_CHECK_ID = "health-check_7B64A200"


def _stacks(synth: Synth, env: str) -> tuple[dict, dict]:
    s = get_settings(env)
    return synth.stack(s.infra.data_stack), synth.stack(s.infra.platform_stack)


def _ref(rtype: str, lid: str, attr: str = "id") -> str:
    return f"${{{rtype}.{lid}.{attr}}}"


def _serving_account(platform: dict, env: str) -> str:
    (lid,) = [lid for lid, a in resources(platform, "google_service_account").items()
              if a["account_id"] == get_settings(env).service_accounts.serving]
    return lid


@pytest.mark.parametrize("env", ENVS)
def test_the_token_secret_is_declared_with_cmek_and_no_version(synth: Synth, env: str) -> None:
    s = get_settings(env)
    data, _ = _stacks(synth, env)
    secrets = {r["secret_id"]: (lid, r) for lid, r in resources(data, "google_secret_manager_secret").items()}
    assert set(secrets) == {s.serving.token_secret}
    lid, secret = secrets[s.serving.token_secret]
    (replica,) = secret["replication"]["user_managed"]["replicas"]
    assert replica["location"] == s.region
    keys = by_name(data, "google_kms_crypto_key")
    key_ref = _ref("google_kms_crypto_key", keys[s.storage.kms.secrets_key][0])
    assert replica["customer_managed_encryption"]["kms_key_name"] == key_ref
    # Secret Manager's agent may use that key (and only that one), before the secret is created
    grants = [(glid, g) for glid, g in resources(data, "google_kms_crypto_key_iam_member").items()
              if "gcp-sa-secretmanager" in g["member"]]
    assert [g["crypto_key_id"] for _, g in grants] == [key_ref]
    assert secret["depends_on"] == [f"google_kms_crypto_key_iam_member.{grants[0][0]}"]
    assert data["output"]["serving-token-secret"]["value"] == _ref("google_secret_manager_secret", lid, "secret_id")
    # the token itself is never in code or state: no version resource, no secret data, in any stack
    for name, stack in synth.stacks.items():
        text = json.dumps(stack)
        assert "google_secret_manager_secret_version" not in text and "secret_data" not in text, name


@pytest.mark.parametrize("env", ENVS)
def test_only_the_serving_account_may_read_the_token_and_only_that_secret(synth: Synth, env: str) -> None:
    s = get_settings(env)
    data, platform = _stacks(synth, env)
    serving = _ref("google_service_account", _serving_account(platform, env), "member")
    secret_grants = [g for stack in (data, platform) for rtype, items in stack["resource"].items()
                     if rtype.startswith("google_secret_manager_secret_iam") for g in items.values()]
    assert [(g["secret_id"], g["role"], g["member"]) for g in secret_grants] == [(s.serving.token_secret, ACCESSOR, serving)]
    assert secret_grants[0]["project"] == s.project_id
    # nothing grants Secret Manager at project level, where it would open every secret of the project
    for rtype in ("google_project_iam_member", "google_project_iam_binding", "google_project_iam_policy"):
        for g in resources(platform, rtype).values():
            assert "secretmanager" not in json.dumps(g), g
    for role in resources(platform, "google_project_iam_custom_role").values():
        assert not [p for p in role["permissions"] if p.startswith("secretmanager.")]


@pytest.mark.parametrize("env", ENVS)
def test_serving_vms_fetch_the_token_as_themselves_and_mount_it_read_only(synth: Synth, env: str) -> None:
    s = get_settings(env)
    _, platform = _stacks(synth, env)
    serving = _ref("google_service_account", _serving_account(platform, env), "email")
    templates = {t["name_prefix"].rstrip("-"): t for t in resources(platform, "google_compute_instance_template").values()}
    token = str(fleets.image_token_file(s))
    url = fleets.secret_version_url(s.project_id, s.serving.token_secret)
    for fleet in (s.serving.stable_fleet, s.serving.canary_fleet):
        t = templates[fleet.instance_template]
        assert t["service_account"]["email"] == serving, "the identity holding the grant is the VM's own"
        script = t["metadata"]["startup-script"].splitlines()
        fetch = script.index(f"fetch_serving_token {fleets.METADATA_TOKEN_URL} {url} {token} {fleets.IMAGE_UID}")
        (run,) = [i for i, line in enumerate(script) if line.startswith("docker run")]
        assert fetch < run and f"--volume {token}:{token}:ro" in script[run]
    training = templates[s.training.fleet.instance_template]["metadata"]["startup-script"]
    assert "fetch_serving_token" not in training and s.serving.token_secret not in training


@pytest.mark.parametrize("env", ENVS)
def test_the_load_balancer_routes_on_readiness_and_autohealing_acts_on_liveness(synth: Synth, env: str) -> None:
    s = get_settings(env)
    lb, sv = s.serving.load_balancer, s.serving
    _, platform = _stacks(synth, env)
    checks = by_name(platform, "google_compute_health_check")
    assert set(checks) == {lb.health_check, lb.autohealing_check}
    ready_lid, ready = checks[lb.health_check]
    live_lid, live = checks[lb.autohealing_check]
    assert ready_lid == READINESS_CHECK_ID
    assert ready["http_health_check"] == {"port": sv.port, "request_path": sv.server.ready_path}
    assert live["http_health_check"] == {"port": sv.port, "request_path": sv.health_path}
    assert sv.server.ready_path != sv.health_path
    # a draining replica leaves the load balancer sooner than a dead one is replaced
    assert ready["check_interval_sec"] * ready["unhealthy_threshold"] < live["check_interval_sec"] * live["unhealthy_threshold"]

    backends = by_name(platform, "google_compute_backend_service")
    assert {name: b["health_checks"] for name, (_, b) in backends.items()} == {
        lb.stable_backend: [_ref("google_compute_health_check", ready_lid)],
        lb.canary_backend: [_ref("google_compute_health_check", ready_lid)],
    }
    groups = by_name(platform, "google_compute_region_instance_group_manager")
    for fleet in (sv.stable_fleet, sv.canary_fleet):
        g = groups[fleet.instance_group][1]
        assert g["auto_healing_policies"] == {"health_check": _ref("google_compute_health_check", live_lid),
                                              "initial_delay_sec": sv.autohealing_initial_delay_s}
        assert g["named_port"] == [{"name": backends[lb.stable_backend][1]["port_name"], "port": sv.port}]
    assert "auto_healing_policies" not in groups[s.training.fleet.instance_group][1]


@pytest.mark.parametrize("env", ENVS)
def test_google_probers_reach_both_checks_on_the_serving_vms(synth: Synth, env: str) -> None:
    s = get_settings(env)
    _, platform = _stacks(synth, env)
    serving_rules = [r for r in resources(platform, "google_compute_firewall").values()
                     if s.network.serving_tag in r.get("target_tags", [])]
    for _lid, check in by_name(platform, "google_compute_health_check").values():
        port = str(check["http_health_check"]["port"])
        admitted = {src for r in serving_rules if r["direction"] == "INGRESS"
                    for allow in r["allow"] if allow["protocol"] == "tcp" and port in allow.get("ports", [])
                    for src in r["source_ranges"]}
        assert admitted >= GOOGLE_PROBER_RANGES, f"{check['name']}: probes on port {port} would be dropped"
    templates = {t["name_prefix"].rstrip("-"): t for t in resources(platform, "google_compute_instance_template").values()}
    for fleet in (s.serving.stable_fleet, s.serving.canary_fleet):
        assert s.network.serving_tag in templates[fleet.instance_template]["tags"]


def test_iap_mode_puts_iap_on_both_backends_and_tells_the_replicas(synth: Synth, iap_settings) -> None:
    s = iap_settings
    platform = synth.stack(s.infra.platform_stack)
    backends = resources(platform, "google_compute_backend_service").values()
    assert [b["iap"] for b in backends] == [{"enabled": True}] * 2
    templates = {t["name_prefix"].rstrip("-"): t for t in resources(platform, "google_compute_instance_template").values()}
    for fleet in (s.serving.stable_fleet, s.serving.canary_fleet):
        script = templates[fleet.instance_template]["metadata"]["startup-script"]
        assert "-e TENFOLD_SERVING__SERVER__AUTH_MODE=iap" in script
        assert f"-e TENFOLD_SERVING__SERVER__IAP_AUDIENCE={s.serving.server.iap_audience}" in script
        assert "fetch_serving_token" not in script, "no bearer token to fetch"
    # ... and so no account may read the token secret: the serving account's grant is the bearer mode's alone
    assert not [g for rtype, items in platform["resource"].items() if rtype.startswith("google_secret_manager_secret_iam")
                for g in items.values()]
    for env in ENVS:  # bearer, the default: no IAP in front
        _, bearer = _stacks(synth, env)
        assert all("iap" not in b for b in resources(bearer, "google_compute_backend_service").values())


@pytest.mark.parametrize("env", ENVS)
def test_the_serving_account_reads_the_served_tables_of_the_lake_and_nothing_else(synth: Synth, env: str,
                                                                                  condition_allows: Any) -> None:
    """A replica lists and reads the features and lookup tables (tenfold.features.online) at start: without a lake
    grant it never becomes ready in the cloud. Nothing else of the lake (raw data, feedback logs) is readable."""
    s = get_settings(env)
    platform = synth.stack(s.infra.platform_stack)
    member = _ref("google_service_account", _serving_account(platform, env), "member")
    lake = [g for g in resources(platform, "google_storage_bucket_iam_member").values()
            if g["member"] == member and g["bucket"] == s.storage.lake_bucket]
    tables = [s.storage.features_table,
              *(lookup_table(s.storage.lookups_table, n) for n in get_workload(s).contract.lookup_tables)]
    assert len(tables) > 1
    # One binding per table (IAM's 12 logical operators per condition): allowed if any binding allows it.
    assert [g["role"] for g in lake] == ["roles/storage.objectViewer"] * len(tables)
    expression = " || ".join(f"({g['condition']['expression']})" for g in lake)
    objects = f"projects/_/buckets/{s.storage.lake_bucket}/objects/"
    for table in tables:
        assert condition_allows(expression, obj=f"{objects}{table}/year=2013/month=02/_SUCCESS"), table
        assert condition_allows(expression, list_prefix=f"{table}/"), table
        # a client's probe of the folder itself answers "not found", not 403; a sibling that shares the prefix is no
        # part of it
        assert condition_allows(expression, obj=f"{objects}{table}") and condition_allows(expression, list_prefix=table)
        assert not condition_allows(expression, obj=f"{objects}{table}_old/x.parquet")
        assert not condition_allows(expression, list_prefix=f"{table}_old/")
    for other in (s.storage.predictions_table, s.storage.feedback_table, "raw_flights", s.inference.work_prefix):
        assert not condition_allows(expression, obj=f"{objects}{other}/year=2013/month=02/x.parquet"), other
        assert not condition_allows(expression, list_prefix=f"{other}/"), other
    assert not condition_allows(expression, list_prefix=""), "listing the whole lake"
