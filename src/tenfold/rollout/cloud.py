"""The cloud half of the rollout: Compute Engine through ``google-cloud-compute`` (REST).

* :class:`ComputeApi`: the Compute clients the cloud adapters use, built once (``ComputeApi.connect()``:
  Application Default Credentials, the REST transport). Tests build it over REST transports whose
  ``requests`` session answers with recorded API shapes (``tests/unit/rollout/recorded/``).
* :func:`wait_for_operation`: waits for a global or regional operation with the API's own ``wait`` (a
  server-side long poll, no sleep here), bounded, and turns an operation that ended in error into a
  :class:`CloudRolloutError` that names it.
* :class:`LoadBalancerLogObserver`: the cloud :class:`~tenfold.rollout.TrafficObserver`, the load balancer's
  request logs in Cloud Logging (``resource.type="http_load_balancer"``), one query per arm.
* :class:`InstanceGroupDeployer`: the cloud :class:`~tenfold.rollout.Deployer`. A pool (``stable`` or
  ``canary``) is a regional managed instance group (``settings.serving.<pool>_fleet``) behind one backend
  service; ``deploy(pool, version)`` gives the group a new instance template, derived from the group's
  current one with the model version in the metadata the startup script reads (:data:`tenfold.fleets.MODEL_VERSION_KEY`),
  rolls the group to it with a surge and no unavailable replica, and returns once every VM runs the new
  template and passes the load balancer's readiness check::

      deployer = InstanceGroupDeployer.from_settings(settings)
      deployer.deploy("canary", "0123456789abcdef0123")
      assert deployer.pool_version("canary") == "0123456789abcdef0123"

The URL map router is :class:`tenfold.rollout.urlmap.UrlMapRouter`; how a user stays on one arm in the
cloud is in ``docs/rollout-cloud.md``. ``google.cloud.compute_v1`` takes seconds to import, so it is
imported only where a client is built or a message converted.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tenfold.config import Settings
from tenfold.fleets import MODEL_VERSION_KEY
from tenfold.rollout import ArmTraffic
from tenfold.rollout.split import ARMS, CANARY, STABLE

if TYPE_CHECKING:
    from google.auth.credentials import Credentials

log = logging.getLogger(__name__)

# What the orchestrator's account must be allowed for these adapters (tests/infra/test_adapters_match_stacks.py
# holds the platform stack's custom role to it), besides acting as the serving account, whose identity the
# new templates carry (roles/iam.serviceAccountUser on that one account).
REQUIRED_PERMISSIONS: tuple[str, ...] = (
    "compute.urlMaps.get", "compute.urlMaps.update", "compute.backendServices.use", "compute.globalOperations.get",
    "compute.instanceTemplates.get", "compute.instanceTemplates.create", "compute.instanceTemplates.useReadOnly",
    "compute.instanceGroupManagers.get", "compute.instanceGroupManagers.update", "compute.regionOperations.get",
    "compute.backendServices.get", "compute.subnetworks.use",
    "logging.logEntries.list",
)
# One wait call: Compute answers a `wait` when the operation is done or after about two minutes.
WAIT_CALL_TIMEOUT_S = 180.0
_GCE_NAME = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")
# The name the rolling update gives the group's one version (the synthesized group calls it so too).
VERSION_NAME = "primary"


class CloudRolloutError(RuntimeError):
    """A cloud rollout step that cannot go on: the message names the resource, what happened and what to do."""


class MinRequestsAboveTheSample(CloudRolloutError, ValueError):
    """``serving.rollout.min_requests`` above what a busy window's sample of the load balancer's log holds: a settings
    fix, which no retry makes."""

    retryable = False


@dataclass(frozen=True)
class ComputeApi:
    """The ``google.cloud.compute_v1`` clients the cloud adapters call."""

    url_maps: Any
    global_operations: Any
    region_operations: Any
    instance_templates: Any
    region_instance_group_managers: Any
    backend_services: Any

    @classmethod
    def connect(cls, *, credentials: Credentials | None = None) -> ComputeApi:
        """Clients over the REST transport with ``credentials`` (default: Application Default Credentials)."""
        from google.cloud import compute_v1

        kw: dict[str, Any] = {"credentials": credentials, "transport": "rest"}
        return cls(
            url_maps=compute_v1.UrlMapsClient(**kw),
            global_operations=compute_v1.GlobalOperationsClient(**kw),
            region_operations=compute_v1.RegionOperationsClient(**kw),
            instance_templates=compute_v1.InstanceTemplatesClient(**kw),
            region_instance_group_managers=compute_v1.RegionInstanceGroupManagersClient(**kw),
            backend_services=compute_v1.BackendServicesClient(**kw),
        )


def as_dict(message: Any) -> dict[str, Any]:
    """A compute_v1 message as the REST API's JSON: camelCase keys, int64 as strings."""
    result: dict[str, Any] = json.loads(type(message).to_json(message, use_integers_for_enums=False))
    return result


def to_message(cls: Any, body: Mapping[str, Any]) -> Any:
    """The compute_v1 message ``cls`` of a REST JSON body; an unknown field is an error, not dropped."""
    return cls.from_json(json.dumps(body))


def resource_path(url: str) -> str:
    """``projects/<p>/...`` of a Compute resource URL or partial URL, so full and partial URLs compare equal."""
    i = url.find("projects/")
    return url[i:] if i >= 0 else url


def _done(op: Any) -> bool:
    return bool(op.status == type(op).Status.DONE)


def _op_error(op: Any) -> str | None:
    errors = [f"{e.code}: {e.message}" for e in op.error.errors] if op.error else []
    if errors:
        return "; ".join(errors)
    if op.http_error_status_code and op.http_error_status_code >= 400:
        return f"HTTP {op.http_error_status_code} {op.http_error_message}"
    return None


def wait_for_operation(
    api: ComputeApi,
    project: str,
    op: Any,
    *,
    what: str,
    timeout_s: float,
    clock: Callable[[], float] = time.monotonic,
) -> Any:
    """Wait for ``op`` (global, or regional when it names a region) to finish; raise if it ended in error.

    ``what`` says what the operation does, for the messages. Each ``wait`` call returns when the operation
    is done or after about two minutes, so the whole wait ends within ``timeout_s`` plus one call.
    """
    deadline = clock() + timeout_s
    region = op.region.rsplit("/", 1)[-1] if op.region else None
    while not _done(op):
        if clock() >= deadline:
            where = f"--region {region}" if region else "--global"
            raise CloudRolloutError(
                f"{what}: operation {op.name} is still {type(op).Status(op.status).name} after {timeout_s:.0f}s; "
                f"see `gcloud compute operations describe {op.name} {where} --project {project}`, "
                "and run the step again once it is done (it resumes)"
            )
        if region:
            op = api.region_operations.wait(project=project, region=region, operation=op.name, timeout=WAIT_CALL_TIMEOUT_S)
        else:
            op = api.global_operations.wait(project=project, operation=op.name, timeout=WAIT_CALL_TIMEOUT_S)
    error = _op_error(op)
    if error:
        raise CloudRolloutError(f"{what} failed: operation {op.name} on {op.target_link or '?'} ended with {error}")
    return op


@dataclass(frozen=True)
class PoolResources:
    """The cloud resources of one serving pool, all named by settings."""

    pool: str
    project: str
    region: str
    group: str  # regional managed instance group
    template_prefix: str  # every template of the pool is named <prefix>-...
    backend_service: str  # the global backend service the group serves behind

    def template_name(self, version: str) -> str:
        """The pool's instance template for model ``version``: one name per version, so a retry finds it."""
        name = f"{self.template_prefix}-v{version}"
        if not _GCE_NAME.fullmatch(name):
            raise ValueError(
                f"instance template name {name!r} (from serving.{self.pool}_fleet.instance_template and version "
                f"{version!r}) is not a valid Compute Engine name (lowercase letters, digits and '-', at most 63): "
                "shorten the instance_template setting"
            )
        return name


def pool_resources(settings: Settings, pool: str) -> PoolResources:
    """The group, template prefix and backend service of ``pool`` (``stable`` or ``canary``)."""
    if pool not in ARMS:
        raise ValueError(f"pool must be one of {', '.join(ARMS)}, got {pool!r}")
    sv, lb = settings.serving, settings.serving.load_balancer
    fleet = sv.stable_fleet if pool == STABLE else sv.canary_fleet
    backend = lb.stable_backend if pool == STABLE else lb.canary_backend
    return PoolResources(pool=pool, project=settings.project_id, region=settings.region, group=fleet.instance_group,
                         template_prefix=fleet.instance_template, backend_service=backend)


def check_version(version: str) -> str:
    """``version`` if it is a registry version id, else the registry's error saying what one looks like."""
    from tenfold.registry.registry import check_version_id

    return check_version_id(version)


def template_version(template: Mapping[str, Any]) -> str | None:
    """The model version an instance template (REST JSON) makes its replicas serve, if it names one."""
    for item in template.get("properties", {}).get("metadata", {}).get("items", []):
        if item.get("key") == MODEL_VERSION_KEY:
            return str(item.get("value") or "") or None
    return None


def derived_template(base: Mapping[str, Any], name: str, version: str, pool: str) -> dict[str, Any]:
    """The insert body of template ``name``: ``base`` (REST JSON of the group's template) serving ``version``.

    Everything else of the base is kept (machine, GPU, disk, network, service account, startup script),
    so the new VMs differ only in the model they load.
    """
    properties = json.loads(json.dumps(base.get("properties", {})))  # a deep copy
    metadata = properties.setdefault("metadata", {})
    metadata.pop("fingerprint", None)  # the base's; a new template gets its own
    metadata.pop("kind", None)
    items = [i for i in metadata.get("items", []) if i.get("key") != MODEL_VERSION_KEY]
    metadata["items"] = [*items, {"key": MODEL_VERSION_KEY, "value": version}]
    return {
        "name": name,
        "description": f"Tenfold {pool} pool serving model {version} (from {base.get('name')}, tenfold.rollout.cloud)",
        "properties": properties,
    }


def _group_templates(group: Any) -> list[str]:
    templates = [v.instance_template for v in group.versions if v.instance_template]
    return templates or ([group.instance_template] if group.instance_template else [])


def _count(items: Mapping[str, int]) -> str:
    return ", ".join(f"{n} {k}" for k, n in sorted(items.items())) or "none"


def after_a_timeout(pool: str) -> str:
    """What to do once a pool's roll timed out and its cause is fixed. The stable pool rolls in ``conclude``, after the
    promotion: clearing ``conclude`` resumes it (the rollout has ended promoted, so neither a new rollout nor an abort
    would); the canary's rolls in ``deploy``."""
    if pool == "stable":
        return "then clear this rollout's conclude task: it resumes the promotion's roll of the stable pool"
    return ("then run the deploy task again while the rollout has not ended (it resumes; `tenfold rollout status`), or "
            "trigger the rollout again once it has; or roll back (`tenfold rollout abort`)")


class InstanceGroupDeployer:
    """The cloud :class:`~tenfold.rollout.Deployer`: a new instance template on the pool's instance group."""

    def __init__(
        self,
        settings: Settings,
        api: ComputeApi,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.settings, self.api, self.clock, self.sleep = settings, api, clock, sleep

    @classmethod
    def from_settings(
        cls, settings: Settings, *, credentials: Credentials | None = None, api: ComputeApi | None = None
    ) -> InstanceGroupDeployer:
        return cls(settings, api or ComputeApi.connect(credentials=credentials))

    # -- the Deployer protocol -------------------------------------------------------------------------

    def deploy(self, pool: str, version: str) -> None:
        """Make every replica of ``pool`` serve ``version``; returns when they all do (idempotent).

        Raises :class:`CloudRolloutError` when an operation fails or the group does not get there within
        ``settings.serving.deploy_timeout_s``; running it again resumes where it stopped.
        """
        res = pool_resources(self.settings, pool)
        version = check_version(version)
        name = res.template_name(version)
        group = self._group(res)
        if group.target_size == 0:
            raise CloudRolloutError(
                f"the {res.pool} pool's instance group {res.group} has no VM (target size 0, its autoscaler's minimum is "
                f"serving.{res.pool}_fleet.min_replicas): nothing could serve {version}. Raise min_replicas to at least 1 "
                "and deploy the platform stack, then deploy again"
            )
        url = self._ensure_template(res, group, name, version)
        if [resource_path(t) for t in _group_templates(group)] != [resource_path(url)]:
            self._roll(res, group, url)
        else:
            log.info("group %s already targets %s: waiting for it to serve", res.group, name)
        self._wait_until_serving(res, url)
        log.info("pool %s serves model %s: every VM of %s runs %s and passes readiness", pool, version, res.group, name)

    def pool_version(self, pool: str) -> str | None:
        """The version the pool's template names, or None while the group is between templates. A template that
        names none (the synthesized one, whose VMs resolve an alias: what a platform apply puts back) is named as
        such, so a rollout sees at once that its canary group no longer serves the version under test."""
        res = pool_resources(self.settings, pool)
        group = self._group(res)
        templates = {resource_path(t) for t in _group_templates(group)}
        if len(templates) != 1 or not group.status.version_target.is_reached:
            return None
        name = templates.pop().rsplit("/", 1)[-1]
        return template_version(self._template(res.project, name) or {}) or f"template {name} (no pinned model version)"

    # -- steps -----------------------------------------------------------------------------------------

    def _group(self, res: PoolResources) -> Any:
        from google.api_core.exceptions import NotFound

        try:
            return self.api.region_instance_group_managers.get(
                project=res.project, region=res.region, instance_group_manager=res.group)
        except NotFound as exc:
            raise CloudRolloutError(
                f"the {res.pool} pool's instance group {res.group} does not exist in {res.project}/{res.region}: "
                "deploy the platform stack first (`make synth`, then `cdktn deploy`)"
            ) from exc

    def _template(self, project: str, name: str) -> dict[str, Any] | None:
        from google.api_core.exceptions import NotFound

        try:
            return as_dict(self.api.instance_templates.get(project=project, instance_template=name))
        except NotFound:
            return None

    def _ensure_template(self, res: PoolResources, group: Any, name: str, version: str) -> str:
        """The URL of the pool's template for ``version``, created from the group's template if it is missing."""
        from google.api_core.exceptions import Conflict
        from google.cloud import compute_v1

        existing = self._template(res.project, name)
        if existing is None:
            current = _group_templates(group)
            if not current:
                raise CloudRolloutError(f"instance group {res.group} has no instance template to derive {name} from")
            base_name = current[0].rsplit("/", 1)[-1]
            base = self._template(res.project, base_name)
            if base is None:
                raise CloudRolloutError(f"instance group {res.group}'s template {base_name} cannot be read (deleted?)")
            body = derived_template(base, name, version, res.pool)
            log.info("creating instance template %s from %s (model %s)", name, base_name, version)
            try:
                op = self.api.instance_templates.insert_unary(
                    project=res.project, instance_template_resource=to_message(compute_v1.InstanceTemplate, body))
                wait_for_operation(self.api, res.project, op, what=f"creating instance template {name}",
                                   timeout_s=self.settings.serving.load_balancer.operation_timeout_s, clock=self.clock)
            except Conflict:
                log.info("instance template %s was created meanwhile (a concurrent deploy): using it", name)
            existing = self._template(res.project, name)
            if existing is None:
                raise CloudRolloutError(f"instance template {name} is missing right after it was created: run the deploy again")
        found = template_version(existing)
        if found != version:
            raise CloudRolloutError(
                f"instance template {name} exists but makes its VMs serve {found or 'no pinned version'}, not {version}: "
                f"it is not the one Tenfold made; delete it (`gcloud compute instance-templates delete {name} "
                f"--project {res.project}`) and deploy again"
            )
        return str(existing["selfLink"])

    def _roll(self, res: PoolResources, group: Any, url: str) -> None:
        """Start a proactive rolling update of the group to ``url``: surge, never an unavailable replica."""
        from google.cloud import compute_v1

        zones = len(group.distribution_policy.zones) if group.distribution_policy else 0
        # A regional group takes a fixed surge of 0 or at least its number of zones; 0 unavailable keeps
        # every serving replica until its replacement is up.
        surge = max(1, zones)
        version_name = next((v.name for v in group.versions if v.name), VERSION_NAME)
        body = {
            "versions": [{"name": version_name, "instanceTemplate": url}],
            "updatePolicy": {
                "type": "PROACTIVE", "minimalAction": "REPLACE", "mostDisruptiveAllowedAction": "REPLACE",
                "replacementMethod": "SUBSTITUTE", "maxSurge": {"fixed": surge}, "maxUnavailable": {"fixed": 0},
            },
        }
        log.info("rolling %s to %s (surge %d, none unavailable)", res.group, url.rsplit("/", 1)[-1], surge)
        op = self.api.region_instance_group_managers.patch_unary(
            project=res.project, region=res.region, instance_group_manager=res.group,
            instance_group_manager_resource=to_message(compute_v1.InstanceGroupManager, body))
        wait_for_operation(self.api, res.project, op, what=f"starting the rolling update of {res.group}",
                           timeout_s=self.settings.serving.load_balancer.operation_timeout_s, clock=self.clock)

    def _serving_state(self, res: PoolResources, url: str) -> str | None:
        """None when every VM runs ``url`` and is ready behind the backend service, else what is still missing."""
        group = self._group(res)
        instances = list(self.api.region_instance_group_managers.list_managed_instances(
            project=res.project, region=res.region, instance_group_manager=res.group))
        want = resource_path(url)
        states: dict[str, int] = {}
        for inst in instances:
            on = "new" if resource_path(inst.version.instance_template) == want else "old"
            key = f"{on} template {inst.instance_status or '?'}" + (
                f" ({inst.current_action})" if inst.current_action and inst.current_action != "NONE" else "")
            states[key] = states.get(key, 0) + 1
        st = group.status
        if not (st.is_stable and st.version_target.is_reached and instances and set(states) == {"new template RUNNING"}):
            return (f"the group is {'' if st.is_stable else 'not '}stable and has "
                    f"{'' if st.version_target.is_reached else 'not '}reached its template; VMs: {_count(states)}")
        health = self.api.backend_services.get_health(
            project=res.project, backend_service=res.backend_service,
            resource_group_reference_resource={"group": group.instance_group})
        healthy = {resource_path(h.instance) for h in health.health_status if h.health_state == "HEALTHY"}
        unready = sorted(i.instance.rsplit("/", 1)[-1] for i in instances if resource_path(i.instance) not in healthy)
        if unready:
            return f"not ready behind {res.backend_service}: {', '.join(unready)}"
        return None

    def _wait_until_serving(self, res: PoolResources, url: str) -> None:
        sv = self.settings.serving
        deadline = self.clock() + sv.deploy_timeout_s
        while (missing := self._serving_state(res, url)) is not None:
            if self.clock() >= deadline:
                name = url.rsplit("/", 1)[-1]
                then = after_a_timeout(res.pool)
                raise CloudRolloutError(
                    f"the {res.pool} pool's instance group {res.group} ({res.project}/{res.region}) does not serve "
                    f"template {name} after {sv.deploy_timeout_s}s: {missing}. Look at `gcloud compute instance-groups "
                    f"managed list-instances {res.group} --region {res.region}` and `... list-errors` (GPU quota or "
                    f"capacity, a startup script that stops: the VMs' serial port output), fix it, {then}"
                )
            log.info("waiting for %s to serve %s: %s", res.group, url.rsplit("/", 1)[-1], missing)
            self.sleep(sv.deploy_poll_s)


# The load balancer's request log entries (https://cloud.google.com/load-balancing/docs/https/https-logging-monitoring).
LB_LOG_RESOURCE = "http_load_balancer"
# At most this many entries are read per arm and window: Cloud Logging pages 1000 entries a call and limits reads
# per minute, and a few thousand requests are plenty for the error rate and a rank test. An arm with more in the
# window is read again as a sample spread over all of it (Logging's ``sample(insertId, fraction)``, the fraction
# from how soon the first read reached the cap): the oldest 5,000 of a busy window are its first seconds only.
MAX_ENTRIES_PER_ARM = 5000
# The sample's expected size, as a share of the cap (the rest is room for the rate estimate's error).
SAMPLE_SHARE = 0.8
# Which log entries are the arm's, and which of those are errors. The URL map routes by the ``X-Tenfold-Bucket``
# header the client sends (urlmap.py), so anyone can aim requests at either arm: an entry counts only when it says
# something about the replicas, never only about the client, or a client could fail a good canary (a flood of
# requests that hang up, or without a token) or hide a bad one (a flood of answers that are not the arm's, diluting
# its errors). The load balancer's ``jsonPayload.statusDetails`` says who answered
# (https://cloud.google.com/load-balancing/docs/https/https-logging-monitoring):
#
# - a 5xx is an error, whether the replica or the load balancer (for a backend it could not use) sent it;
# - these say the backend failed, with or without a status: an error;
BACKEND_FAILED = frozenset({
    "failed_to_connect_to_backend", "failed_to_pick_backend", "backend_timeout",
    "backend_connection_closed_before_data_sent_to_client", "backend_connection_closed_after_partial_response_sent",
})
# - no status, and the client hung up or timed out: not the arm's (neither a request nor an error). A missing or
#   other detail with no status still counts as an error (no answer, cause unknown: the check errs toward failing);
CLIENT_LEFT = frozenset({"client_disconnected_before_any_response", "client_timed_out"})
# - answered in front of the backend (Cloud Armor's denial or rate limit, IAP turning away a caller without
#   credentials): not the arm's, whatever the status;
NOT_FROM_BACKEND = frozenset({
    "denied_by_security_policy", "throttled_by_security_policy", "redirected_by_security_policy",
    "handled_by_identity_aware_proxy",
})
# - a 401 or 403 the replica sent: an error only under IAP (``serving.server.auth_mode = "iap"``), where IAP has
#   already turned away callers without credentials, so a replica refusing one is refusing authenticated traffic
#   (one checking another backend's audience: docs/deploy.md), and counting only 5xx passed such a canary as a fast
#   success. Under "bearer" the load balancer checks no token and the replica's 401 is the client's own fault
#   (no or a wrong token): not the arm's, so a flood of them neither fails the arm nor dilutes its error rate;
REFUSED_STATUSES = frozenset({401, 403})
SENT_BY_BACKEND = "response_sent_by_backend"
# - any other answer is a success of the arm.


def min_requests_problem(min_requests: int, max_entries: int = MAX_ENTRIES_PER_ARM) -> str | None:
    """Why the load balancer log observer cannot meet ``min_requests`` (None when it can): what it refuses
    (:class:`MinRequestsAboveTheSample`) and what the rollout's plan refuses before a rollout starts.

    A busy window is read as a sample of about SAMPLE_SHARE of the cap (fewer when its requests came early in it, the
    rate then overestimated): a min_requests above that made every busy window "no data" for good, and each rollout
    ended failed at its deadline. Half the cap leaves the sample room."""
    most = max_entries // 2
    if min_requests <= most:
        return None
    return (f"serving.rollout.min_requests is {min_requests}, but the cloud rollout reads at most {max_entries} load "
            f"balancer log entries per arm and window (a busier window as a sample of about "
            f"{SAMPLE_SHARE * max_entries:.0f}, fewer when its requests bunch early), so a busy window would never "
            f"have enough: set serving.rollout.min_requests to {most} or fewer")


def _outcome(status: int, details: str, iap: bool) -> bool | None:
    """True: an error of the arm; False: a success; None: not the arm's (see :data:`BACKEND_FAILED` and after)."""
    if details in NOT_FROM_BACKEND:  # first: a Cloud Armor rule may deny with a 502
        return None
    if status >= 500 or details in BACKEND_FAILED:
        return True
    if status < 100:
        return None if details in CLIENT_LEFT else True
    if status in REFUSED_STATUSES:
        # (no details at all, an entry of an older log format: counted, as the rest of an unknown cause errs toward
        # failing)
        return True if iap and details in (SENT_BY_BACKEND, "") else None
    return False


_DURATION = re.compile(r"^(\d+(?:\.\d+)?)s$")


def _latency_ms(value: object) -> float | None:
    """A log entry's ``httpRequest.latency`` (JSON Duration ``"0.012345s"``) in milliseconds."""
    if isinstance(value, dt.timedelta):
        return value.total_seconds() * 1000.0
    m = _DURATION.match(str(value or ""))
    return float(m.group(1)) * 1000.0 if m else None


def _utc(at: dt.datetime, name: str) -> str:
    if at.tzinfo is None:
        raise ValueError(f"{name} {at} has no time zone: give an aware UTC datetime")
    return at.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


class LoadBalancerLogObserver:
    """The cloud :class:`~tenfold.rollout.TrafficObserver`: the load balancer's request logs.

    Each arm is its backend service: one Cloud Logging query per arm for the predict endpoint's requests in
    ``[since, until)``. A request counts as an error when the load balancer logged a 5xx or a backend failure
    (:data:`BACKEND_FAILED`, no status included), and under IAP a 401 or 403 the replica sent; entries that say
    nothing about the replicas (the client left, Cloud Armor or IAP answered, a 401/403 under bearer auth) are
    left out of the arm's requests. Its latency is the load balancer's total ``httpRequest.latency``, as HAProxy's
    is locally.
    The load balancer writes its logs with a delay of seconds to a minute: the rollout reads each window
    ``rollout.traffic_lag_s`` after it ends, so no request falls between two checks. At most ``max_entries``
    requests are read per arm: a busier window is read as a sample spread over all of it.
    """

    def __init__(self, settings: Settings, client: Any, *, max_entries: int = MAX_ENTRIES_PER_ARM) -> None:
        if problem := min_requests_problem(settings.serving.rollout.min_requests, max_entries):
            raise MinRequestsAboveTheSample(problem)
        self.settings, self.client, self.max_entries = settings, client, max_entries

    @classmethod
    def from_settings(
        cls, settings: Settings, *, credentials: Credentials | None = None, client: Any = None
    ) -> LoadBalancerLogObserver:
        if client is None:
            from google.cloud import logging as cloud_logging

            # The HTTP/JSON transport, as in the tests (tests/unit/rollout/test_cloud_observer.py).
            client = cloud_logging.Client(project=settings.project_id, credentials=credentials, _use_grpc=False)
        return cls(settings, client)

    def log_filter(self, backend_service: str, since: dt.datetime, until: dt.datetime) -> str:
        """The Logging query for one arm's predict requests in ``[since, until)``."""
        lb, server = self.settings.serving.load_balancer, self.settings.serving.server
        return " AND ".join([
            f'resource.type="{LB_LOG_RESOURCE}"',
            f'resource.labels.url_map_name="{lb.url_map}"',
            f'resource.labels.backend_service_name="{backend_service}"',
            f'httpRequest.requestUrl:"{server.api_prefix}/predict"',
            f'timestamp>="{_utc(since, "since")}"',
            f'timestamp<"{_utc(until, "until")}"',
        ])

    def traffic(self, since: dt.datetime, until: dt.datetime) -> dict[str, ArmTraffic]:
        for at, name in ((since, "since"), (until, "until")):
            _utc(at, name)  # a naive datetime is refused before it is compared
        if until <= since:
            raise ValueError(f"the window [{since}, {until}) is empty: until must be after since")
        lb = self.settings.serving.load_balancer
        result: dict[str, ArmTraffic] = {}
        for arm, backend in ((STABLE, lb.stable_backend), (CANARY, lb.canary_backend)):
            read, outcomes, latencies, last = self._read(backend, since, until, self.max_entries)
            if read >= self.max_entries and last is not None and last > since:
                # The cap was reached at ``last``: at that rate the window holds ~expected; read a sample of
                # 80 % of the cap's worth, spread evenly over the whole window.
                expected = read * (until - since) / (last - since)
                fraction = min(1.0, SAMPLE_SHARE * self.max_entries / expected)
                read, outcomes, latencies, _ = self._read(backend, since, until, self.max_entries, sample=fraction)
                log.info("%s: about %.0f requests in [%s, %s): read a sample of %.4f of them (%d)", backend, expected,
                         since, until, fraction, read)
            if (left_out := read - len(outcomes)) > 0:
                log.info("%s: %d of %d requests in [%s, %s) left out, not the arm's (the client left, Cloud Armor or "
                         "IAP answered, or a 401/403 under bearer auth)", backend, left_out, read, since, until)
            result[arm] = ArmTraffic(requests=len(outcomes), errors=sum(outcomes), latencies_ms=tuple(latencies))
        return result

    def _read(self, backend: str, since: dt.datetime, until: dt.datetime, cap: int, *,
              sample: float | None = None) -> tuple[int, list[bool], list[float], dt.datetime | None]:
        """How many of the arm's requests in ``[since, until)`` were read (at most ``cap``, the oldest first; of a
        ``sample`` fraction of them, if given), whether each one that is the arm's was an error (:func:`_outcome`),
        their latencies, and the time of the last one read."""
        from google.cloud.logging import ASCENDING

        query = self.log_filter(backend, since, until)
        if sample is not None:
            query += f" AND sample(insertId, {sample:.6f})"
        iap = self.settings.serving.server.auth_mode == "iap"
        read = 0
        outcomes: list[bool] = []
        latencies: list[float] = []
        last: dt.datetime | None = None
        entries = self.client.list_entries(resource_names=[f"projects/{self.settings.project_id}"], filter_=query,
                                           order_by=ASCENDING, page_size=min(1000, cap), max_results=cap)
        for entry in entries:
            read += 1
            last = entry.timestamp if isinstance(entry.timestamp, dt.datetime) else last
            http = entry.http_request or {}
            try:
                status = int(http.get("status") or 0)
            except (TypeError, ValueError):
                status = 0
            payload = entry.payload if isinstance(entry.payload, Mapping) else {}
            error = _outcome(status, str(payload.get("statusDetails") or ""), iap)
            if error is None:
                continue
            outcomes.append(error)
            if (ms := _latency_ms(http.get("latency"))) is not None:
                latencies.append(ms)
        if sample is not None and read >= cap:
            log.warning("%s: the sample of [%s, %s) reached %d requests too (a burst late in the window): it is the "
                        "oldest of the sample", backend, since, until, cap)
        return read, outcomes, latencies, last
