"""InstanceGroupDeployer over the real google-cloud-compute REST clients, answered at their transport boundary
with recorded API shapes (``fake_compute.py``, ``recorded/``): a new template per version, a surge-only rolling
update, a wait bounded by settings, and idempotent retries. The clock moves only when the deployer sleeps."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path
from typing import Any

import pytest

from tenfold.config import get_settings
from tenfold.fleets import MODEL_VERSION_KEY
from tenfold.registry.registry import UnknownVersion
from tenfold.rollout import Deployer
from tenfold.rollout.cloud import CloudRolloutError, InstanceGroupDeployer, pool_resources


def _load_fake() -> Any:
    name = "tenfold_tests_rollout_fake_compute"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name("fake_compute.py"))
        assert spec and spec.loader
        sys.modules[name] = module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    return sys.modules[name]


fc = _load_fake()
S = get_settings("prod")  # the recorded shapes are prod's canary group
V1, V2 = "0123456789abcdef0123", "fedcba98765432100000"
RES = pool_resources(S, "canary")
GROUP = f"projects/{S.project_id}/regions/{S.region}/instanceGroupManagers/{RES.group}"
TEMPLATES = f"projects/{S.project_id}/global/instanceTemplates"
BASE = fc.recorded("instanceTemplates.get")["name"]


@pytest.fixture
def fake() -> Any:
    return fc.FakeCompute()


@pytest.fixture
def clock() -> Any:
    return fc.FakeClock()


@pytest.fixture
def deployer(fake: Any, clock: Any) -> InstanceGroupDeployer:
    return InstanceGroupDeployer(S, fc.compute_api(fake), clock=clock, sleep=clock.sleep)


# A shorter bound than the hour prod waits: the same code path in 15 polls instead of 180.
SHORT = S.model_copy(update={"serving": S.serving.model_copy(update={"deploy_timeout_s": 300})})


@pytest.fixture
def impatient(fake: Any, clock: Any) -> InstanceGroupDeployer:
    return InstanceGroupDeployer(SHORT, fc.compute_api(fake), clock=clock, sleep=clock.sleep)


def _paths(fake: Any) -> list[tuple[str, str]]:
    return [(c.method, c.path.replace(GROUP, "<group>").replace(TEMPLATES, "<templates>")) for c in fake.calls]


def test_deploy_creates_the_versions_template_rolls_with_surge_and_waits_until_every_vm_serves(
        fake: Any, clock: Any, deployer: InstanceGroupDeployer) -> None:
    typed: Deployer = deployer
    # The synthesized template pins no version: named as such (not None, "between templates"), so a rollout
    # sees at once that a group put back on it by a platform apply no longer serves the version under test.
    assert typed.pool_version("canary") == "template tenfold-prod-serve-canary-tmpl-20261130161002476800000001 (no pinned model version)"
    fake.calls.clear()
    typed.deploy("canary", V1)
    new = RES.template_name(V1)
    assert new == f"{S.serving.canary_fleet.instance_template}-v{V1}"
    ops = list(fake.operations)
    assert _paths(fake) == [
        ("GET", "<group>"),
        ("GET", f"<templates>/{new}"),  # 404: not made yet
        ("GET", f"<templates>/{BASE}"),  # the group's current template, to derive from
        ("POST", "<templates>"),
        ("POST", f"projects/{S.project_id}/global/operations/{ops[0]}/wait"),
        ("GET", f"<templates>/{new}"),
        ("PATCH", "<group>"),
        ("POST", f"projects/{S.project_id}/regions/{S.region}/operations/{ops[1]}/wait"),
        ("GET", "<group>"), ("POST", "<group>/listManagedInstances"),  # one of two VMs replaced: not yet
        ("GET", "<group>"), ("POST", "<group>/listManagedInstances"),  # both replaced, the group stable
        ("POST", f"projects/{S.project_id}/global/backendServices/{RES.backend_service}/getHealth"),
    ]
    insert, patch = fake.of("instanceTemplates.insert")[0], fake.of("regionInstanceGroupManagers.patch")[0]
    assert insert.body == fc.recorded("instanceTemplates.insert.request")
    base = fc.recorded("instanceTemplates.get")["properties"]
    sent = insert.body["properties"]
    assert {k: v for k, v in sent.items() if k != "metadata"} == {k: v for k, v in base.items() if k != "metadata"}, \
        "the new template differs from the group's only in its metadata"
    assert sent["metadata"]["items"] == [*base["metadata"]["items"], {"key": MODEL_VERSION_KEY, "value": V1}]
    assert patch.body == fc.recorded("regionInstanceGroupManagers.patch.request")
    assert patch.body["updatePolicy"]["maxUnavailable"] == {"fixed": 0} and patch.body["updatePolicy"]["type"] == "PROACTIVE"
    assert patch.body["updatePolicy"]["maxSurge"] == {"fixed": len(S.serving.canary_fleet.zone_suffixes)}
    assert clock.sleeps == [S.serving.deploy_poll_s]
    assert {i["version"]["instanceTemplate"].rsplit("/", 1)[-1] for i in fake.instances} == {new}
    assert typed.pool_version("canary") == V1


def test_a_second_deploy_of_the_same_version_changes_nothing(fake: Any, clock: Any, deployer: InstanceGroupDeployer) -> None:
    deployer.deploy("canary", V1)
    fake.calls.clear()
    deployer.deploy("canary", V1)
    assert fake.apis() == ["regionInstanceGroupManagers.get", "instanceTemplates.get",
                           "regionInstanceGroupManagers.get", "regionInstanceGroupManagers.listManagedInstances",
                           "backendServices.getHealth"], "it finds the template and the group on it: no insert, no patch"
    assert deployer.pool_version("canary") == V1


def test_the_next_version_derives_from_the_current_template_and_replaces_the_pinned_version(
        fake: Any, deployer: InstanceGroupDeployer) -> None:
    deployer.deploy("canary", V1)
    deployer.deploy("canary", V2)
    insert = fake.of("instanceTemplates.insert")[-1]
    items = insert.body["properties"]["metadata"]["items"]
    assert [i for i in items if i["key"] == MODEL_VERSION_KEY] == [{"key": MODEL_VERSION_KEY, "value": V2}]
    assert f"from {RES.template_name(V1)}" in insert.body["description"]
    assert deployer.pool_version("canary") == V2


def test_a_deploy_that_stopped_after_the_template_resumes_with_the_rolling_update(
        fake: Any, deployer: InstanceGroupDeployer) -> None:
    fake.fail_next["regionInstanceGroupManagers.patch"] = {"code": "RESOURCE_NOT_READY", "message": "try again"}
    with pytest.raises(CloudRolloutError, match=f"starting the rolling update of {RES.group} failed"):
        deployer.deploy("canary", V1)
    assert deployer.pool_version("canary") == "template tenfold-prod-serve-canary-tmpl-20261130161002476800000001 (no pinned model version)"  # not rolled yet
    fake.calls.clear()
    deployer.deploy("canary", V1)
    assert "instanceTemplates.insert" not in fake.apis() and fake.apis().count("regionInstanceGroupManagers.patch") == 1
    assert deployer.pool_version("canary") == V1


def test_a_template_created_by_a_concurrent_deploy_is_used(fake: Any, deployer: InstanceGroupDeployer) -> None:
    original = fake._instanceTemplates_get
    seen: list[str] = []

    def get_racing(parts: list[str], body: Any) -> Any:
        seen.append(parts[-1])
        if seen.count(RES.template_name(V1)) == 1 and parts[-1] == RES.template_name(V1):
            other = InstanceGroupDeployer(S, fc.compute_api(fake))  # another worker creates it meanwhile
            fake._instanceTemplates_get = original
            other._ensure_template(RES, other._group(RES), RES.template_name(V1), V1)
            fake._instanceTemplates_get = get_racing
            return fc._error(404, "error.404", "x")
        return original(parts, body)

    fake._instanceTemplates_get = get_racing
    deployer.deploy("canary", V1)
    assert fake.apis().count("instanceTemplates.insert") == 2, "ours got 409 alreadyExists"
    assert len(fake.of("globalOperations.wait")) == 1 and deployer.pool_version("canary") == V1


def test_a_template_operation_that_fails_stops_before_the_group_is_touched(fake: Any, deployer: InstanceGroupDeployer) -> None:
    error = fc.recorded("operation.error")["error"]["errors"][0]
    fake.fail_next["instanceTemplates.insert"] = error
    with pytest.raises(CloudRolloutError, match=rf"creating instance template {RES.template_name(V1)} failed: operation "
                                                r"\S+ on \S+ ended with QUOTA_EXCEEDED: Quota 'NVIDIA_L4_GPUS' exceeded"):
        deployer.deploy("canary", V1)
    assert "regionInstanceGroupManagers.patch" not in fake.apis()


def test_a_group_that_never_becomes_stable_times_out_naming_it_and_what_to_do(
        fake: Any, clock: Any, impatient: InstanceGroupDeployer) -> None:
    fake.stuck = True  # no GPU capacity: the surge VM stays in provisioning
    sv = SHORT.serving
    with pytest.raises(CloudRolloutError) as err:
        impatient.deploy("canary", V1)
    message = str(err.value)
    assert f"the canary pool's instance group {RES.group} ({S.project_id}/{S.region}) does not serve template " \
           f"{RES.template_name(V1)} after {sv.deploy_timeout_s}s" in message
    assert "VMs: 1 new template PROVISIONING (CREATING), 2 old template RUNNING" in message
    assert f"gcloud compute instance-groups managed list-instances {RES.group} --region {S.region}" in message
    assert "run the deploy task again while the rollout has not ended" in message
    assert "trigger the rollout again" in message
    # The stable pool rolls in conclude, after the promotion: a new rollout (of the champion) and an abort (of an
    # ended rollout) are both refused, so its remedy is conclude cleared.
    from tenfold.rollout.cloud import after_a_timeout

    assert "clear this rollout's conclude task" in after_a_timeout("stable")
    assert "trigger the rollout again" not in after_a_timeout("stable")
    assert clock.now >= sv.deploy_timeout_s and len(clock.sleeps) == math.ceil(sv.deploy_timeout_s / sv.deploy_poll_s)
    assert "backendServices.getHealth" not in fake.apis()


def test_vms_the_backend_service_does_not_find_ready_are_waited_for_and_named(
        fake: Any, clock: Any, impatient: InstanceGroupDeployer) -> None:
    impatient.deploy("canary", V1)
    fake.unready = {fake.instances[0]["instance"].rsplit("/", 1)[-1]}
    fake.calls.clear()
    with pytest.raises(CloudRolloutError, match=rf"not ready behind {RES.backend_service}: {next(iter(fake.unready))}"):
        impatient.deploy("canary", V1)
    assert fake.apis().count("backendServices.getHealth") == len(clock.sleeps) and len(clock.sleeps) > 1, \
        "it waited for readiness, asking the backend service each time"


def test_a_name_taken_by_another_template_is_refused(fake: Any, deployer: InstanceGroupDeployer) -> None:
    taken = fc.recorded("instanceTemplates.get")
    taken["name"] = RES.template_name(V1)
    fake.templates[taken["name"]] = taken  # same name, no pinned version
    with pytest.raises(CloudRolloutError, match=rf"{taken['name']} exists but makes its VMs serve no pinned version, "
                                                rf"not {V1}: .*gcloud compute instance-templates delete"):
        deployer.deploy("canary", V1)
    assert "regionInstanceGroupManagers.patch" not in fake.apis()


def test_a_group_without_vms_is_refused_at_once(fake: Any, clock: Any, deployer: InstanceGroupDeployer) -> None:
    fake.group["targetSize"] = 0
    fake.instances.clear()
    with pytest.raises(CloudRolloutError, match=r"has no VM \(target size 0.* serving.canary_fleet.min_replicas"):
        deployer.deploy("canary", V1)
    assert fake.apis() == ["regionInstanceGroupManagers.get"] and clock.sleeps == []


def test_pool_version_is_none_while_the_group_is_between_templates(fake: Any, impatient: InstanceGroupDeployer) -> None:
    impatient.deploy("canary", V1)
    fake.stuck = True
    with pytest.raises(CloudRolloutError, match="does not serve template"):
        impatient.deploy("canary", V2)
    assert impatient.pool_version("canary") is None, "replicas disagree"


def test_bad_pools_versions_and_missing_groups_are_refused(fake: Any, deployer: InstanceGroupDeployer) -> None:
    with pytest.raises(ValueError, match="pool must be one of stable, canary"):
        deployer.deploy("blue", V1)
    with pytest.raises(UnknownVersion, match="is not a version id"):
        deployer.deploy("canary", "champion")
    assert fake.calls == []
    # the fake holds the canary group only: the stable one is missing
    with pytest.raises(CloudRolloutError, match=f"instance group {S.serving.stable_fleet.instance_group} does not exist"):
        deployer.deploy("stable", V1)
