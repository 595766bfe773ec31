"""VPC, regional subnet, Cloud Router + NAT, and firewall rules that never open anything to the internet."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from cdktn_provider_google.compute_firewall import ComputeFirewall
from cdktn_provider_google.compute_network import ComputeNetwork
from cdktn_provider_google.compute_router import ComputeRouter
from cdktn_provider_google.compute_router_nat import ComputeRouterNat
from cdktn_provider_google.compute_subnetwork import ComputeSubnetwork
from constructs import Construct

from infra.components._jsii import structs

# Source ranges Google publishes for its load balancers' proxies and health checkers
# (https://cloud.google.com/load-balancing/docs/health-check-concepts#ip-ranges), and for IAP TCP
# forwarding (https://cloud.google.com/iap/docs/using-tcp-forwarding#create-firewall-rule).
GOOGLE_LB_AND_HEALTH_CHECK_RANGES = ("35.191.0.0/16", "130.211.0.0/22")
IAP_TCP_FORWARDING_RANGES = ("35.235.240.0/20",)
SSH_PORT = 22


@dataclass(frozen=True)
class NetworkProps:
    network_name: str
    subnet_name: str
    subnet_cidr: str
    region: str
    router_name: str
    nat_name: str
    serving_port: int
    serving_tag: str  # VMs with this network tag receive load-balancer traffic on serving_port
    ssh_tag: str  # VMs with this tag accept SSH through IAP only
    # Each of these accepts any port from VMs of its own tag only: training nodes, and Dataproc's batch VMs.
    peer_tags: Sequence[str]


class Network(Construct):
    def __init__(self, scope: Construct, id_: str, props: NetworkProps) -> None:
        super().__init__(scope, id_)
        self.network = ComputeNetwork(self, "vpc", name=props.network_name, auto_create_subnetworks=False,
                                      routing_mode="REGIONAL")
        self.subnet = ComputeSubnetwork(
            self, "subnet",
            name=props.subnet_name,
            network=self.network.id,
            region=props.region,
            ip_cidr_range=props.subnet_cidr,
            # VMs have no external IPs: Google APIs (GCS, Pub/Sub, Artifact Registry) over Private Google Access.
            private_ip_google_access=True,
            log_config={"aggregation_interval": "INTERVAL_5_SEC", "flow_sampling": 0.5, "metadata": "INCLUDE_ALL_METADATA"},
        )
        self.router = ComputeRouter(self, "router", name=props.router_name, network=self.network.id, region=props.region)
        ComputeRouterNat(
            self, "nat",
            name=props.nat_name,
            router=self.router.name,
            region=props.region,
            nat_ip_allocate_option="AUTO_ONLY",
            source_subnetwork_ip_ranges_to_nat="LIST_OF_SUBNETWORKS",
            subnetwork=structs([{"name": self.subnet.id, "source_ip_ranges_to_nat": ["ALL_IP_RANGES"]}]),
            log_config={"enable": True, "filter": "ERRORS_ONLY"},
        )
        log = {"metadata": "INCLUDE_ALL_METADATA"}
        self.allow_lb = ComputeFirewall(
            self, "allow-lb",
            name=f"{props.network_name}-allow-lb",
            network=self.network.id,
            direction="INGRESS",
            source_ranges=list(GOOGLE_LB_AND_HEALTH_CHECK_RANGES),
            target_tags=[props.serving_tag],
            allow=structs([{"protocol": "tcp", "ports": [str(props.serving_port)]}]),
            log_config=log,
        )
        self.allow_iap_ssh = ComputeFirewall(
            self, "allow-iap-ssh",
            name=f"{props.network_name}-allow-iap-ssh",
            network=self.network.id,
            direction="INGRESS",
            source_ranges=list(IAP_TCP_FORWARDING_RANGES),
            target_tags=[props.ssh_tag],
            allow=structs([{"protocol": "tcp", "ports": [str(SSH_PORT)]}]),
            log_config=log,
        )
        # Peers only: torchrun's rendezvous and NCCL between training nodes, and Dataproc Serverless's driver and
        # executors, which must reach each other on all ports; each kind only from VMs of its own tag. No rule
        # admits the subnet as a whole: a serving replica (internet-facing) reaches no training node, and no VM of
        # the subnet reaches a replica except through the load balancer (allow-lb).
        self.allow_peers = [
            ComputeFirewall(
                self, f"allow-peers-{i}",
                name=f"{props.network_name}-allow-{tag}",
                network=self.network.id,
                direction="INGRESS",
                source_tags=[tag],
                target_tags=[tag],
                allow=structs([{"protocol": "tcp"}, {"protocol": "udp"}, {"protocol": "icmp"}]),
                log_config=log,
            )
            for i, tag in enumerate(props.peer_tags)
        ]
