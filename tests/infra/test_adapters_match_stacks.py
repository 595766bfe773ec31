"""The names and arguments the DAGs' cloud adapters use exist in the synthesized infrastructure."""

from __future__ import annotations

from typing import Any

import pytest

from infra.stacks.synthesized import by_name, resources
from tenfold import fleets as startup
from tenfold.config import get_settings
from tenfold.features import dataproc
from tenfold.rollout import urlmap
from tenfold.training import fleet as compute

ENVS = ("dev", "prod")


def _stacks(synth: Any, env: str) -> tuple[dict, dict]:
    s = get_settings(env)
    return synth.stack(s.infra.data_stack), synth.stack(s.infra.platform_stack)


@pytest.mark.parametrize("env", ENVS)
def test_dataproc_batch_names_exist(synth: Any, env: str) -> None:
    s = get_settings(env)
    data, platform = _stacks(synth, env)
    batch = dataproc.features_batch(s, "2013-05", 2)
    ex = batch["environment_config"]["execution_config"]
    buckets = by_name(data, "google_storage_bucket")
    assert ex["staging_bucket"] in buckets
    assert batch["pyspark_batch"]["main_python_file_uri"].startswith(f"gs://{ex['staging_bucket']}/")
    lake = batch["pyspark_batch"]["args"][batch["pyspark_batch"]["args"].index("--lake-uri") + 1]
    assert lake.removeprefix("gs://") in buckets
    accounts = {a["account_id"] for a in resources(platform, "google_service_account").values()}
    assert ex["service_account"].split("@")[0] in accounts
    assert ex["subnetwork_uri"].rsplit("/", 1)[-1] in by_name(platform, "google_compute_subnetwork")
    (subnet,) = resources(platform, "google_compute_subnetwork").values()
    assert subnet["private_ip_google_access"] is True, "Dataproc Serverless needs Private Google Access"
    # the Dataproc service account may write the lake and the staging bucket it is given
    sa_lid = next(lid for lid, a in resources(platform, "google_service_account").items()
                  if a["account_id"] == s.service_accounts.dataproc)
    grants = {(g["bucket"], g["role"]) for g in resources(platform, "google_storage_bucket_iam_member").values()
              if f"google_service_account.{sa_lid}." in g["member"]}
    assert (ex["staging_bucket"], "roles/storage.objectAdmin") in grants
    assert (lake.removeprefix("gs://"), "roles/storage.objectUser") in grants


@pytest.mark.parametrize("env", ENVS)
def test_url_map_patch_names_exist_and_match_the_synthesized_route(synth: Any, env: str) -> None:
    s = get_settings(env)
    _, platform = _stacks(synth, env)
    body = urlmap.weighted_route_patch(s, 25)
    (url_map,) = resources(platform, "google_compute_url_map").values()
    assert body["name"] == url_map["name"]
    services = by_name(platform, "google_compute_backend_service")
    synthesized = url_map["path_matcher"][0]
    patched = body["pathMatchers"][0]
    assert patched["name"] == synthesized["name"] and body["hostRules"][0]["pathMatcher"] == url_map["host_rule"][0]["path_matcher"]
    id_to_name = {f"${{google_compute_backend_service.{lid}.id}}": name for name, (lid, _) in services.items()}
    synth_route = [(id_to_name[w["backend_service"]], w["weight"])
                   for w in synthesized["route_rules"][0]["route_action"]["weighted_backend_services"]]
    patch_route = [(w["backendService"].rsplit("/", 1)[-1], w["weight"])
                   for w in patched["routeRules"][0]["routeAction"]["weightedBackendServices"]]
    assert [n for n, _ in synth_route] == [n for n, _ in patch_route], "same backends, same order"
    assert [w for _, w in patch_route] == [75, 25] and [w for _, w in synth_route] == [100, 0]
    assert synthesized["route_rules"][0]["priority"] == patched["routeRules"][0]["priority"]
    assert synthesized["route_rules"][0]["match_rules"][0]["prefix_match"] == patched["routeRules"][0]["matchRules"][0]["prefixMatch"]


@pytest.mark.parametrize("env", ENVS)
def test_training_group_and_markers_exist(synth: Any, env: str) -> None:
    s = get_settings(env)
    data, platform = _stacks(synth, env)
    groups = by_name(platform, "google_compute_region_instance_group_manager")
    assert s.training.fleet.instance_group in groups
    _, group = groups[s.training.fleet.instance_group]
    assert group["region"] == s.region and group["target_size"] == 0
    assert set(group["lifecycle"]["ignore_changes"]) >= {"target_size", "all_instances_config"}
    bucket = compute.marker_uri(s, "run-1").removeprefix("gs://").split("/")[0]
    assert bucket in by_name(data, "google_storage_bucket")
    # the training nodes run the worker that writes that marker, with the environment's settings
    tmpl = next(t for t in resources(platform, "google_compute_instance_template").values()
                if t["name_prefix"].startswith(s.training.fleet.instance_template))
    script = tmpl["metadata"]["startup-script"]
    assert " ".join(startup.TRAINING_COMMAND) in script
    assert f"TENFOLD_ENV={env}" in script and s.container_image in script
    # the training SA can write markers and checkpoints to that bucket
    sa_lid = next(lid for lid, a in resources(platform, "google_service_account").items()
                  if a["account_id"] == s.service_accounts.training)
    grants = {(g["bucket"], g["role"]) for g in resources(platform, "google_storage_bucket_iam_member").values()
              if f"google_service_account.{sa_lid}." in g["member"]}
    assert (bucket, "roles/storage.objectUser") in grants


@pytest.mark.parametrize("env", ENVS)
def test_orchestrator_may_do_what_the_adapters_do(synth: Any, env: str) -> None:
    _, platform = _stacks(synth, env)
    (role,) = resources(platform, "google_project_iam_custom_role").values()
    perms = set(role["permissions"])
    assert {"dataproc.batches.create", "compute.instanceGroupManagers.update", "compute.urlMaps.update",
            "compute.urlMaps.get", "compute.backendServices.use"} <= perms


@pytest.mark.parametrize("env", ENVS)
def test_offline_inference_topics_exist(synth: Any, env: str) -> None:
    s = get_settings(env)
    data, _ = _stacks(synth, env)
    topics = by_name(data, "google_pubsub_topic")
    subs = by_name(data, "google_pubsub_subscription")
    assert s.messaging.requests_topic in topics and s.messaging.predictions_topic in topics
    assert s.messaging.subscriptions["requests"].name in subs
