"""The offline-inference fleet in the platform stack: what its VMs run, as whom, and what scales them.

Read from the session's one synth (conftest.py): dev, prod, and ``relaid-dev`` (whose settings move the
inference work prefix, so the lake grant is shown to follow settings).
"""

from __future__ import annotations

import pytest

from infra.stacks.synthesized import Synthesized as Synth
from infra.stacks.synthesized import account_lid, by_name, resources, startup_command
from tenfold import fleets
from tenfold.config import Settings, get_settings

ENVS = ("dev", "prod")
BACKLOG_METRIC = "pubsub.googleapis.com/subscription/num_undelivered_messages"


def _grants_of(stack: dict, lid: str) -> set[tuple]:
    """Every grant whose member is that account: (kind, resource, role, condition expression or None)."""
    member = f"${{google_service_account.{lid}.member}}"
    out: set[tuple] = set()
    for rtype, key in (("google_project_iam_member", "project"), ("google_storage_bucket_iam_member", "bucket"),
                       ("google_pubsub_topic_iam_member", "topic"), ("google_pubsub_subscription_iam_member", "subscription"),
                       ("google_secret_manager_secret_iam_member", "secret_id"),
                       ("google_artifact_registry_repository_iam_member", "repository")):
        for g in resources(stack, rtype).values():
            if g["member"] == member:
                out.add((key, g[key], g["role"], (g.get("condition") or {}).get("expression")))
    return out


def _work_condition(s: Settings) -> str:
    return (f'resource.type == "storage.googleapis.com/Object" && resource.name.startsWith('
            f'"projects/_/buckets/{s.storage.lake_bucket}/objects/{s.inference.work_prefix}/")')


@pytest.mark.parametrize("env", ENVS)
def test_the_inference_fleet_runs_the_worker_in_the_image_as_the_inference_account(synth: Synth, env: str) -> None:
    s = get_settings(env)
    stack = synth.stack(s.infra.platform_stack)
    g = s.inference.fleet
    template, script, run = startup_command(stack, g.instance_template)
    assert run.endswith(f"{s.container_image} python -m tenfold.inference.worker --preload {s.inference.model_ref}")
    assert "-d --restart=always --name tenfold-inference" in run, "the worker runs for the VM's life, restarted if it exits"
    assert f"-e TENFOLD_ENV={env}" in run and f"-e TENFOLD_PROJECT_ID={s.project_id}" in run
    assert script == fleets.inference_startup_script(s)
    assert "tenfold.inference.worker" in fleets.LAUNCHED_MODULES  # so tests/unit/test_deployables.py imports it
    lid = account_lid(stack, s.service_accounts.inference)
    assert template["service_account"]["email"] == f"${{google_service_account.{lid}.email}}"
    assert template["machine_type"] == g.machine_type and template["scheduling"]["preemptible"] is g.spot
    assert template["tags"] == [s.network.ssh_tag], "no serving tag: nothing reaches a worker; it only pulls"
    _, group = by_name(stack, "google_compute_region_instance_group_manager")[g.instance_group]
    assert group["version"][0]["instance_template"] == f"${{google_compute_instance_template.{_template_lid(stack, g.instance_template)}.self_link_unique}}"
    assert "named_port" not in group and "auto_healing_policies" not in group


def _template_lid(stack: dict, prefix: str) -> str:
    (lid,) = [lid for lid, t in resources(stack, "google_compute_instance_template").items()
              if t["name_prefix"] == f"{prefix}-"]
    return lid


@pytest.mark.parametrize("env", ENVS)
def test_the_inference_group_scales_on_the_requests_subscriptions_backlog(synth: Synth, env: str) -> None:
    s = get_settings(env)
    stack, data = synth.stack(s.infra.platform_stack), synth.stack(s.infra.data_stack)
    g, sub = s.inference.fleet, s.messaging.subscriptions["requests"]
    group_lid, _ = by_name(stack, "google_compute_region_instance_group_manager")[g.instance_group]
    (scaler,) = [a for a in resources(stack, "google_compute_region_autoscaler").values()
                 if a["target"] == f"${{google_compute_region_instance_group_manager.{group_lid}.id}}"]
    assert scaler["name"] == f"{g.instance_group}-autoscaler" and scaler["region"] == s.region
    policy = scaler["autoscaling_policy"]
    assert policy["metric"] == [{
        "name": BACKLOG_METRIC,
        "filter": f'resource.type = pubsub_subscription AND resource.labels.subscription_id = "{sub.name}"',
        "single_instance_assignment": s.inference.backlog_per_worker,
    }]
    assert (policy["min_replicas"], policy["max_replicas"]) == (g.min_replicas, g.max_replicas)
    assert policy["mode"] == "ON" and "load_balancing_utilization" not in policy
    # the subscription the autoscaler watches is the one the data stack creates, on the requests topic
    _, created = by_name(data, "google_pubsub_subscription")[sub.name]
    topics = {f"${{google_pubsub_topic.{lid}.id}}": t["name"] for lid, t in resources(data, "google_pubsub_topic").items()}
    assert topics[created["topic"]] == s.messaging.requests_topic


@pytest.mark.parametrize("env", ENVS)
def test_the_inference_account_holds_only_what_the_worker_does(synth: Synth, env: str) -> None:
    s = get_settings(env)
    stack = synth.stack(s.infra.platform_stack)
    grants = _grants_of(stack, account_lid(stack, s.service_accounts.inference))
    assert grants == {
        ("project", s.project_id, "roles/logging.logWriter", None),
        ("repository", s.infra.artifact_repository, "roles/artifactregistry.reader", None),  # the image
        ("bucket", s.storage.models_bucket, "roles/storage.objectViewer", None),  # the model versions it scores with
        # results and error records (create-if-absent, get, replace) under the work prefix, no other object of the lake
        ("bucket", s.storage.lake_bucket, "roles/storage.objectUser", _work_condition(s)),
        ("subscription", s.messaging.subscriptions["requests"].name, "roles/pubsub.subscriber", None),
    }
    # Poison messages reach the dead-letter topic as Pub/Sub's service agent, never as the worker.
    assert not any(kind == "topic" for kind, *_ in grants)


def test_the_lake_grant_follows_the_work_prefix_in_settings(synth: Synth, relaid_settings: Settings) -> None:
    s = relaid_settings
    assert s.inference.work_prefix != get_settings("dev").inference.work_prefix
    stack = synth.stack(s.infra.platform_stack)
    conditions = {c for kind, _name, _role, c in _grants_of(stack, account_lid(stack, s.service_accounts.inference))
                  if kind == "bucket" and c}
    assert conditions == {_work_condition(s)}
