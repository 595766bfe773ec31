"""A (GPU) VM fleet: hardened instance template, regional managed instance group, optional autoscaler."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from cdktn_provider_google.compute_instance_template import ComputeInstanceTemplate
from cdktn_provider_google.compute_region_autoscaler import ComputeRegionAutoscaler
from cdktn_provider_google.compute_region_instance_group_manager import ComputeRegionInstanceGroupManager
from constructs import Construct

from infra.components._jsii import structs


@dataclass(frozen=True)
class LbUtilizationScaling:
    """Serving: scale on the share of the backend's capacity the load balancer uses."""

    target: float
    kind: Literal["lb"] = "lb"


@dataclass(frozen=True)
class PubsubBacklogScaling:
    """Workers: scale on undelivered messages of a subscription, ``per_instance`` messages per VM."""

    subscription: str
    per_instance: int
    kind: Literal["pubsub"] = "pubsub"


@dataclass(frozen=True)
class GpuFleetProps:
    template_name_prefix: str
    group_name: str
    region: str
    machine_type: str
    source_image: str
    disk_size_gb: int
    subnetwork: str
    service_account_email: str
    startup_script: str
    tags: Sequence[str]
    accelerator_type: str | None = None
    accelerator_count: int = 0
    spot: bool = False
    min_replicas: int = 0
    max_replicas: int = 1
    named_port: tuple[str, int] | None = None
    health_check_id: str | None = None  # autohealing: liveness, never readiness (a loading replica is alive)
    autoscaling: LbUtilizationScaling | PubsubBacklogScaling | None = None
    target_size: int | None = None  # fixed size when there is no autoscaler (training: 0)
    externally_resized: bool = False  # a DAG resizes it: deploys must not undo a running job
    initial_delay_s: int = 600  # boot (GPU driver install, image pull) before autohealing's check counts
    labels: dict[str, str] | None = None
    zones: Sequence[str] = ()  # zones offering the GPU; empty lets GCP choose
    target_shape: str = "EVEN"  # EVEN / BALANCED spread; ANY / ANY_SINGLE_ZONE follow capacity


# The target distribution shapes Compute Engine lets an autoscaler drive on a regional group.
AUTOSCALED_SHAPES = ("EVEN", "BALANCED")


class GpuFleet(Construct):
    def __init__(self, scope: Construct, id_: str, props: GpuFleetProps) -> None:
        super().__init__(scope, id_)
        if (props.autoscaling is None) == (props.target_size is None):
            raise ValueError(f"{props.group_name}: give either an autoscaler or a fixed target_size")
        if props.autoscaling is not None and props.target_shape not in AUTOSCALED_SHAPES:
            # Compute Engine refuses an autoscaler on a regional group of another shape: found at deploy otherwise.
            raise ValueError(f"{props.group_name}: an autoscaled regional group's target shape must be one of "
                             f"{', '.join(AUTOSCALED_SHAPES)}, not {props.target_shape}")
        scheduling: dict[str, object] = {
            # GPUs cannot live-migrate, nor can spot VMs: they must stop for host maintenance. A CPU-only VM (the
            # feedback sink, always on) migrates live instead of pausing its ingestion and expiring its messages' leases.
            "on_host_maintenance": "TERMINATE" if props.accelerator_type or props.spot else "MIGRATE",
            "automatic_restart": not props.spot,
            "preemptible": props.spot,
        }
        if props.spot:
            scheduling.update(provisioning_model="SPOT", instance_termination_action="DELETE")
        self.template = ComputeInstanceTemplate(
            self, "template",
            name_prefix=f"{props.template_name_prefix}-",
            machine_type=props.machine_type,
            region=props.region,
            tags=list(props.tags),
            labels=props.labels,
            disk=structs([{"source_image": props.source_image, "auto_delete": True, "boot": True,
                   "disk_size_gb": props.disk_size_gb, "disk_type": "pd-balanced"}]),
            # No access_config: no external IP; egress goes through Cloud NAT.
            network_interface=structs([{"subnetwork": props.subnetwork}]),
            guest_accelerator=(
                [{"type": props.accelerator_type, "count": props.accelerator_count}] if props.accelerator_type else None
            ),
            scheduling=scheduling,
            shielded_instance_config={"enable_secure_boot": True, "enable_vtpm": True, "enable_integrity_monitoring": True},
            service_account={"email": props.service_account_email, "scopes": ["cloud-platform"]},
            metadata={
                "enable-oslogin": "TRUE",
                "block-project-ssh-keys": "true",
                "serial-port-enable": "false",
                "google-logging-enabled": "true",
                "startup-script": props.startup_script,
            },
            can_ip_forward=False,
            # Templates are immutable: a change makes a new one before the group moves off the old.
            lifecycle={"create_before_destroy": True},
        )
        ignore = ["target_size", "all_instances_config"] if props.externally_resized else []
        self.group = ComputeRegionInstanceGroupManager(
            self, "group",
            name=props.group_name,
            base_instance_name=props.group_name,
            region=props.region,
            version=structs([{"instance_template": self.template.self_link_unique, "name": "primary"}]),
            target_size=props.target_size,
            distribution_policy_zones=list(props.zones) or None,
            distribution_policy_target_shape=props.target_shape,
            named_port=structs([{"name": props.named_port[0], "port": props.named_port[1]}]) if props.named_port else None,
            auto_healing_policies=(
                {"health_check": props.health_check_id, "initial_delay_sec": props.initial_delay_s}
                if props.health_check_id else None
            ),
            update_policy={
                # A group a DAG resizes runs a job (training): a deploy that changes its template must not replace
                # its VMs mid-run, nor move them between zones; the new template applies to the next job's VMs.
                "type": "OPPORTUNISTIC" if props.externally_resized else "PROACTIVE",
                "minimal_action": "REPLACE",
                "most_disruptive_allowed_action": "REPLACE",
                # Only an EVEN group may move instances between zones; the other shapes require NONE.
                "instance_redistribution_type": ("PROACTIVE" if props.target_shape == "EVEN" and not props.externally_resized
                                                 else "NONE"),
                "max_surge_fixed": max(len(props.zones), 3),  # fixed surge: 0 or at least one per zone
                "max_unavailable_fixed": 0,
                "replacement_method": "SUBSTITUTE",
            },
            wait_for_instances=False,
            lifecycle={"ignore_changes": ignore} if ignore else None,
        )
        self.autoscaler: ComputeRegionAutoscaler | None = None
        if props.autoscaling is not None:
            policy: dict[str, object] = {
                "min_replicas": props.min_replicas,
                "max_replicas": props.max_replicas,
                "cooldown_period": props.initial_delay_s,
                "mode": "ON",
            }
            if isinstance(props.autoscaling, LbUtilizationScaling):
                policy["load_balancing_utilization"] = {"target": props.autoscaling.target}
            else:
                policy["metric"] = structs([{
                    "name": "pubsub.googleapis.com/subscription/num_undelivered_messages",
                    "filter": f'resource.type = pubsub_subscription AND resource.labels.subscription_id = "{props.autoscaling.subscription}"',
                    "single_instance_assignment": props.autoscaling.per_instance,
                }])
            self.autoscaler = ComputeRegionAutoscaler(
                self, "autoscaler", name=f"{props.group_name}-autoscaler", region=props.region,
                target=self.group.id, autoscaling_policy=policy,
            )
