"""The names and arguments the DAGs' cloud adapters use exist in the synthesized infrastructure."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from infra.stacks.synthesized import account_lid, by_name, resources
from tenfold import fleets as startup
from tenfold.config import get_settings
from tenfold.features import dataproc
from tenfold.rollout import cloud, urlmap
from tenfold.training import fleet as compute

ENVS = ("dev", "prod")


def _stacks(synth: Any, env: str) -> tuple[dict, dict]:
    s = get_settings(env)
    return synth.stack(s.infra.data_stack), synth.stack(s.infra.platform_stack)


def _bucket_grants(platform: Any, account_id: str) -> list[dict[str, Any]]:
    """The bucket grants of the service account ``account_id`` in the synthesized platform stack."""
    sa_lid = next(lid for lid, a in resources(platform, "google_service_account").items() if a["account_id"] == account_id)
    return [g for g in resources(platform, "google_storage_bucket_iam_member").values()
            if f"google_service_account.{sa_lid}." in g["member"]]


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
    # ... and the job runs as it: runtimes 3.0+ default to the submitter's (end-user) credentials
    from google.cloud import dataproc_v1

    auth = dataproc_v1.Batch(batch).environment_config.execution_config.authentication_config
    assert auth.user_workload_authentication_type == dataproc_v1.AuthenticationConfig.AuthenticationType.SERVICE_ACCOUNT
    assert ex["subnetwork_uri"].rsplit("/", 1)[-1] in by_name(platform, "google_compute_subnetwork")
    (subnet,) = resources(platform, "google_compute_subnetwork").values()
    assert subnet["private_ip_google_access"] is True, "Dataproc Serverless needs Private Google Access"
    # the Dataproc service account may write the lake and the staging bucket it is given
    grants = {(g["bucket"], g["role"]) for g in _bucket_grants(platform, s.service_accounts.dataproc)}
    assert (ex["staging_bucket"], "roles/storage.objectAdmin") in grants
    assert (lake.removeprefix("gs://"), "roles/storage.objectUser") in grants


def _camel(key: str) -> str:
    head, *rest = key.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


def _as_api(value: Any, refs: dict[str, str]) -> Any:
    """A synthesized (snake_case) block in the Compute API's JSON names, references replaced by names."""
    if isinstance(value, dict):
        return {_camel(k): _as_api(v, refs) for k, v in value.items()}
    if isinstance(value, list):
        return [_as_api(v, refs) for v in value]
    return refs.get(value, value) if isinstance(value, str) else value


@pytest.mark.parametrize("env", ENVS)
def test_url_map_patch_names_exist_and_match_the_synthesized_route(synth: Any, env: str) -> None:
    s = get_settings(env)
    _, platform = _stacks(synth, env)
    (url_map,) = resources(platform, "google_compute_url_map").values()
    services = by_name(platform, "google_compute_backend_service")
    lb = s.serving.load_balancer
    assert {lb.stable_backend, lb.canary_backend} <= set(services)
    refs = {f"${{google_compute_backend_service.{lid}.id}}": name for name, (lid, _) in services.items()}
    synthesized = _as_api(url_map["path_matcher"], refs)
    # the router's body at 0 %, with backend service names where the stack has references
    body = urlmap.weighted_route_patch(s, 0)
    names = {urlmap.backend_service_url(s, n): n for n in services}
    assert synthesized == _as_api(body["pathMatchers"], names), "the same rules, ranges, priorities and weights"
    assert body["name"] == url_map["name"] and _as_api(url_map["host_rule"], refs) == body["hostRules"]
    assert refs[url_map["default_service"]] == lb.stable_backend
    rules = synthesized[0]["routeRules"]
    assert [r["matchRules"][0]["headerMatches"][0]["headerName"] for r in rules[:-1]] == [lb.bucket_header]
    # what the router patches later reads back from the map the stack made
    assert urlmap.canary_percent_of({"name": url_map["name"], "pathMatchers": _as_api(url_map["path_matcher"], refs)}, s) == 0


@pytest.mark.parametrize("env", ENVS)
@pytest.mark.parametrize("pool", ["stable", "canary"])
def test_the_deployers_pools_are_the_stacks_groups_templates_and_backends(synth: Any, env: str, pool: str) -> None:
    s = get_settings(env)
    _, platform = _stacks(synth, env)
    res = cloud.pool_resources(s, pool)
    groups = by_name(platform, "google_compute_region_instance_group_manager")
    assert res.group in groups
    lid, group = groups[res.group]
    assert group["region"] == res.region and res.project == s.project_id
    (version,) = group["version"]
    assert version["name"] == cloud.VERSION_NAME, "the rolling update keeps the group's version name"
    template_lid = version["instance_template"].split(".")[1]
    template = resources(platform, "google_compute_instance_template")[template_lid]
    assert template["name_prefix"] == f"{res.template_prefix}-" and template["region"] == res.region
    assert cloud.PoolResources.template_name(res, "0123456789abcdef0123").startswith(template["name_prefix"])
    # the template the deployer derives from hands the pinned version to the replica
    script = template["metadata"]["startup-script"]
    assert startup.METADATA_MODEL_URL in script and f" -e {startup.SERVING_MODEL_ENV} " in script
    # the backend service the deployer asks about readiness is the one in front of this group
    _, backend = by_name(platform, "google_compute_backend_service")[res.backend_service]
    assert [b["group"] for b in backend["backend"]] == [f"${{google_compute_region_instance_group_manager.{lid}.instance_group}}"]
    # a surge, never an unavailable replica, as the deployer's own rolling updates
    policy = group["update_policy"]
    assert policy["type"] == "PROACTIVE" and policy["max_unavailable_fixed"] == 0
    fleet = s.serving.stable_fleet if pool == "stable" else s.serving.canary_fleet
    assert len(group["distribution_policy_zones"]) == len(fleet.zone_suffixes)
    assert all(z.startswith(f"{res.region}-") for z in group["distribution_policy_zones"])


def test_the_recorded_compute_shapes_are_prods_synthesized_resources(synth: Any) -> None:
    s = get_settings("prod")
    _, platform = _stacks(synth, "prod")
    recorded = Path(__file__).resolve().parents[1] / "unit" / "rollout" / "recorded"

    def load(name: str) -> Any:
        return json.loads((recorded / f"{name}.json").read_text())

    res = cloud.pool_resources(s, "canary")
    assert load("urlMaps.get")["name"] in by_name(platform, "google_compute_url_map")
    group = load("regionInstanceGroupManagers.get")
    _, synthesized = by_name(platform, "google_compute_region_instance_group_manager")[group["name"]]
    assert group["name"] == res.group and group["region"].endswith(f"/regions/{res.region}")
    assert [z["zone"].rsplit("/", 1)[-1] for z in group["distributionPolicy"]["zones"]] == synthesized["distribution_policy_zones"]
    assert group["instanceTemplate"].rsplit("/", 1)[-1].startswith(f"{res.template_prefix}-")
    template = load("instanceTemplates.get")
    assert template["properties"]["serviceAccounts"][0]["email"] == s.service_account_email(s.service_accounts.serving)
    assert template["properties"]["machineType"] == s.serving.canary_fleet.machine_type


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
    grants = {(g["bucket"], g["role"]) for g in _bucket_grants(platform, s.service_accounts.training)}
    assert (bucket, "roles/storage.objectUser") in grants


# Every client call the orchestrator's code makes on the platform, (module, call as the source spells it) -> the
# permissions it needs (Compute's, Dataproc's and Logging's IAM reference pages), written here apart from the role:
# the stack builds its custom role from cloud.REQUIRED_PERMISSIONS, so comparing the two proved nothing. A call
# named here must still be in its module's source, so a call the code drops takes its permissions out of the table.
ORCHESTRATOR_CALLS: dict[tuple[str, str], set[str]] = {
    # the rollout's router (tenfold.rollout.urlmap.UrlMapRouter): read, then patch the routes naming both backends
    ("tenfold.rollout.urlmap", "url_maps.get"): {"compute.urlMaps.get"},
    ("tenfold.rollout.urlmap", "url_maps.patch_unary"): {"compute.urlMaps.update", "compute.backendServices.use"},
    # the rollout's deployer (tenfold.rollout.cloud.InstanceGroupDeployer) and its operation waits
    ("tenfold.rollout.cloud", "global_operations.wait"): {"compute.globalOperations.get"},
    ("tenfold.rollout.cloud", "region_operations.wait"): {"compute.regionOperations.get"},
    ("tenfold.rollout.cloud", "instance_templates.get"): {"compute.instanceTemplates.get"},
    # a template on the serving subnet (running as the serving account: roles/iam.serviceAccountUser on it alone)
    ("tenfold.rollout.cloud", "instance_templates.insert_unary"): {"compute.instanceTemplates.create",
                                                                   "compute.subnetworks.use"},
    ("tenfold.rollout.cloud", "region_instance_group_managers.get"): {"compute.instanceGroupManagers.get"},
    # the group moved onto the new template
    ("tenfold.rollout.cloud", "region_instance_group_managers.patch_unary"): {"compute.instanceGroupManagers.update",
                                                                              "compute.instanceTemplates.useReadOnly"},
    ("tenfold.rollout.cloud", "region_instance_group_managers.list_managed_instances"): {
        "compute.instanceGroupManagers.get"},
    ("tenfold.rollout.cloud", "backend_services.get_health"): {"compute.backendServices.get"},
    # the rollout's observer (LoadBalancerLogObserver): the load balancer's request logs
    ("tenfold.rollout.cloud", "client.list_entries"): {"logging.logEntries.list"},
    # the training group (tenfold.training.fleet): read, set the run's metadata, resize, wait on the operation
    ("tenfold.training.fleet", "client.get"): {"compute.instanceGroupManagers.get"},
    ("tenfold.training.fleet", "client.patch"): {"compute.instanceGroupManagers.update"},
    ("tenfold.training.fleet", "client.resize"): {"compute.instanceGroupManagers.update"},
    ("tenfold.training.fleet", "op.result"): {"compute.regionOperations.get"},
    # the features batches (tenfold.features.runners.DataprocBatchJob): create, wait, poll, cancel an earlier try's
    ("tenfold.features.runners", "client.create_batch"): {"dataproc.batches.create"},
    ("tenfold.features.runners", "operation.result"): {"dataproc.operations.get"},
    ("tenfold.features.runners", "client.get_batch"): {"dataproc.batches.get"},
    ("tenfold.features.runners", "client.cancel_operation"): {"dataproc.operations.cancel"},
}


def test_the_orchestrators_calls_are_in_the_code() -> None:
    import importlib.util

    for module, call in ORCHESTRATOR_CALLS:
        spec = importlib.util.find_spec(module)
        assert spec is not None and spec.origin is not None, module
        assert f"{call}(" in Path(spec.origin).read_text(), f"{module} no longer calls {call}: drop it (and what only " \
            "it needs) from ORCHESTRATOR_CALLS and the orchestrator role"


@pytest.mark.parametrize("env", ENVS)
def test_the_orchestrator_role_is_exactly_what_the_adapters_call(synth: Any, env: str) -> None:
    """The custom role holds the permissions of the calls the code makes, no more (it held dataproc.batches.list and
    .cancel, which nothing calls: a batch is cancelled through its operation), and is the composer account's."""
    s = get_settings(env)
    _, platform = _stacks(synth, env)
    ((role_lid, role),) = resources(platform, "google_project_iam_custom_role").items()
    assert set(role["permissions"]) == set().union(*ORCHESTRATOR_CALLS.values())
    assert len(role["permissions"]) == len(set(role["permissions"]))
    # bound to the composer account, and to no other
    composer = f"${{google_service_account.{account_lid(platform, s.service_accounts.composer)}.member}}"
    holders = [g["member"] for g in resources(platform, "google_project_iam_member").values()
               if g["role"] == f"${{google_project_iam_custom_role.{role_lid}.id}}"]
    assert holders == [composer]
    # the templates a rollout derives run as the serving account: the orchestrator may act as it, and as no other
    accounts = {a["account_id"]: lid for lid, a in resources(platform, "google_service_account").items()}
    act_as = {g["service_account_id"] for g in resources(platform, "google_service_account_iam_member").values()
              if g["member"] == composer and g["role"] == "roles/iam.serviceAccountUser"}
    assert f"${{google_service_account.{accounts[s.service_accounts.serving]}.name}}" in act_as


@pytest.mark.parametrize("env", ENVS)
def test_the_orchestrator_only_reads_the_dataproc_staging_bucket(synth: Any, env: str) -> None:
    """No DAG writes the Dataproc staging bucket (operators upload the job's code: docs/deploy.md), and objectUser
    there let any DAG replace the code Dataproc runs as its own account."""
    s = get_settings(env)
    _, platform = _stacks(synth, env)
    roles = [g["role"] for g in _bucket_grants(platform, s.service_accounts.composer)
             if g["bucket"] == s.storage.dataproc_staging_bucket]
    assert roles == ["roles/storage.objectViewer"]


@pytest.mark.parametrize("env", ENVS)
def test_offline_inference_topics_exist(synth: Any, env: str) -> None:
    s = get_settings(env)
    data, _ = _stacks(synth, env)
    topics = by_name(data, "google_pubsub_topic")
    subs = by_name(data, "google_pubsub_subscription")
    assert s.messaging.requests_topic in topics and s.messaging.predictions_topic in topics
    assert s.messaging.subscriptions["requests"].name in subs


@pytest.mark.parametrize("env", ENVS)
def test_the_training_account_reads_the_features_and_writes_only_the_runs_folder(synth: Any, env: str,
                                                                                condition_allows: Any) -> None:
    """The nodes read the features table and write under the runs' folder of the artifacts bucket (node
    registration, checkpoints, the model, the result, the marker); not the rest of the lake (the prediction and
    feedback logs), not the artifacts bucket's Data Docs (which the quality gate pulls and builds), not the registry."""
    s = get_settings(env)
    st = s.storage
    _, platform = _stacks(synth, env)
    grants = _bucket_grants(platform, s.service_accounts.training)
    assert sorted((g["bucket"], g["role"]) for g in grants) == sorted(
        [(st.lake_bucket, "roles/storage.objectViewer"), (st.artifacts_bucket, "roles/storage.objectUser")])
    condition = {g["bucket"]: g["condition"]["expression"] for g in grants}
    lake, artifacts = (f"projects/_/buckets/{b}/objects/" for b in (st.lake_bucket, st.artifacts_bucket))
    run = compute.marker_uri(s, "run-1").split("/", 3)[3]
    assert condition_allows(condition[st.lake_bucket], obj=f"{lake}{st.features_table}/year=2013/month=01/_SUCCESS")
    assert condition_allows(condition[st.lake_bucket], list_prefix=f"{st.features_table}/year=2013/")
    for name in (run, f"{s.training.runs_prefix}/run-1/nodes/a/host-0", f"{s.training.runs_prefix}/run-1/out/model/weights.pt"):
        assert condition_allows(condition[st.artifacts_bucket], obj=artifacts + name), name
    assert condition_allows(condition[st.artifacts_bucket], list_prefix=f"{s.training.runs_prefix}/run-1/nodes/")
    for other in (st.predictions_table, st.feedback_table, st.labelled_table, "raw_flights"):
        assert not condition_allows(condition[st.lake_bucket], obj=f"{lake}{other}/year=2013/month=01/x.parquet"), other
    assert not condition_allows(condition[st.artifacts_bucket], obj=f"{artifacts}{s.monitoring.data_docs_prefix}/index.html")


@pytest.mark.parametrize("env", ENVS)
def test_the_dataproc_account_reads_the_sources_and_writes_only_the_features_staging(synth: Any, env: str,
                                                                                    condition_allows: Any) -> None:
    """The features job reads the month's source tables and writes the features' staging folder (lookups beside
    it); the DAG publishes as the orchestrator. It held objectUser on the whole lake: it could overwrite or delete
    the published features, the scores, the prediction and feedback logs and the labelled table."""
    from tenfold.features.dataproc import features_staging_uri
    from tenfold.features.job import lookups_staging_uri

    s = get_settings(env)
    st = s.storage
    _, platform = _stacks(synth, env)
    grants = [g for g in _bucket_grants(platform, s.service_accounts.dataproc) if g["bucket"] == st.lake_bucket]
    assert grants and all("condition" in g for g in grants), "an unconditional grant on the lake"
    lake = f"projects/_/buckets/{st.lake_bucket}/objects/"

    def allowed(role: str, **kw: str) -> bool:
        return any(condition_allows(g["condition"]["expression"], **kw) for g in grants if g["role"] == role)

    staged = features_staging_uri(s, "2013-01", 1).split("/", 3)[3]
    for name in (f"{staged}/part-00000.parquet", f"{lookups_staging_uri(staged)}/weather/part-00000.parquet"):
        assert allowed("roles/storage.objectUser", obj=lake + name), name
    for table in ("flights", "weather", "planes", "airports", "airlines"):
        assert allowed("roles/storage.objectViewer", obj=f"{lake}{table}/year=2013/month=1/_SUCCESS"), table
        assert allowed("roles/storage.objectViewer", list_prefix=f"{table}/year=2013/"), table
        assert not allowed("roles/storage.objectUser", obj=f"{lake}{table}/year=2013/month=1/_SUCCESS"), table
    for other in (st.features_table, st.predictions_table, st.feedback_table, st.labelled_table, st.scores_table):
        for role in ("roles/storage.objectViewer", "roles/storage.objectUser"):
            assert not allowed(role, obj=f"{lake}{other}/year=2013/month=1/x.parquet"), (other, role)
