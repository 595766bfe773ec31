"""Global external Application Load Balancer with stable and canary backend services split by weight."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from cdktn import Annotations
from cdktn_provider_google.compute_backend_service import ComputeBackendService
from cdktn_provider_google.compute_global_address import ComputeGlobalAddress
from cdktn_provider_google.compute_global_forwarding_rule import ComputeGlobalForwardingRule
from cdktn_provider_google.compute_health_check import ComputeHealthCheck
from cdktn_provider_google.compute_managed_ssl_certificate import ComputeManagedSslCertificate
from cdktn_provider_google.compute_security_policy import ComputeSecurityPolicy
from cdktn_provider_google.compute_ssl_policy import ComputeSslPolicy
from cdktn_provider_google.compute_target_http_proxy import ComputeTargetHttpProxy
from cdktn_provider_google.compute_target_https_proxy import ComputeTargetHttpsProxy
from cdktn_provider_google.compute_url_map import ComputeUrlMap
from constructs import Construct

from infra.components._jsii import structs
from tenfold.rollout.urlmap import ALL_HOSTS, PATH_MATCHER, route_rules

HTTP_PORT, HTTPS_PORT = 80, 443
PLAIN_HTTP_WARNING = (
    "serving.load_balancer.domain is not set: the load balancer serves plain HTTP on port 80, and the bearer token "
    "of every request crosses the internet unencrypted. Set TENFOLD_SERVING__LOAD_BALANCER__DOMAIN=<your domain> "
    "before anything but test traffic uses it: the stack then serves HTTPS only (docs/deploy.md)"
)
LB_SCHEME = "EXTERNAL_MANAGED"  # the global external ALB: weighted routes need it (classic has none)


@dataclass(frozen=True)
class Probe:
    """How often a health check asks and how many answers in a row change its verdict."""

    interval_s: int
    timeout_s: int
    healthy_threshold: int
    unhealthy_threshold: int


# Readiness (the backend services): quick to take a replica out, so one that starts draining or is still
# loading gets no new requests within ~10 s; two passes in a row bring it back.
READINESS_PROBE = Probe(interval_s=5, timeout_s=4, healthy_threshold=2, unhealthy_threshold=2)
# Liveness (autohealing): slower to condemn, since failing it recreates the VM (driver, image, model again).
LIVENESS_PROBE = Probe(interval_s=10, timeout_s=5, healthy_threshold=2, unhealthy_threshold=3)


class ServingHealthCheck(Construct):
    """An HTTP health check on the replicas' port: readiness for the load balancer, or liveness for autohealing."""

    def __init__(self, scope: Construct, id_: str, *, name: str, port: int, path: str, probe: Probe) -> None:
        super().__init__(scope, id_)
        self.check = ComputeHealthCheck(
            self, "check", name=name,
            check_interval_sec=probe.interval_s, timeout_sec=probe.timeout_s,
            healthy_threshold=probe.healthy_threshold, unhealthy_threshold=probe.unhealthy_threshold,
            http_health_check={"port": port, "request_path": path},
            log_config={"enable": True},
        )


@dataclass(frozen=True)
class HttpLoadBalancerProps:
    address_name: str
    health_check_id: str  # readiness: the backend services send requests only to replicas passing it
    port_name: str
    stable_backend_name: str
    canary_backend_name: str
    stable_group: str  # instance group URL of the stable fleet
    canary_group: str
    # Requests per second per VM: the RATE capacity the autoscaler's load-balancing utilisation is a share of.
    max_rate_per_instance: float
    url_map_name: str
    proxy_name: str
    forwarding_rule_name: str
    # The header a client puts its sticky bucket in (tenfold.rollout.split.bucket_of); docs/rollout-cloud.md.
    bucket_header: str
    canary_percent: int = 0
    domain: str | None = None
    armor_policy_name: str | None = None
    rate_limit_per_ip_per_minute: int = 0  # with the policy: 429 past this many requests a minute from one address
    draining_timeout_s: int = 60
    log_sample_rate: float = 1.0
    # Identity-Aware Proxy on both backend services (Google-managed OAuth client): the replicas then check
    # IAP's signed header instead of a bearer token (serving.server.auth_mode "iap").
    iap: bool = False


def throttle_rule(per_minute: int) -> dict[str, object]:
    """Cloud Armor's per-client rate limit: an address past ``per_minute`` requests in a minute (on each backend
    service) gets 429 until its rate falls back. After the deny rules (priority 1100): the first rule a request
    matches decides, and a request under the limit matches this one with "allow", so a WAF rule placed after it
    would never be evaluated. Before the default allow: a flood is cut before it reaches the autoscaler's signal."""
    return {"action": "throttle", "priority": 1100, "description": f"at most {per_minute} requests a minute per client",
            "match": {"versioned_expr": "SRC_IPS_V1", "config": {"src_ip_ranges": ["*"]}},
            "rate_limit_options": {"conform_action": "allow", "exceed_action": "deny(429)", "enforce_on_key": "IP",
                                   "rate_limit_threshold": {"count": per_minute, "interval_sec": 60}}}


class HttpLoadBalancer(Construct):
    def __init__(self, scope: Construct, id_: str, props: HttpLoadBalancerProps) -> None:
        super().__init__(scope, id_)
        self.address = ComputeGlobalAddress(self, "address", name=props.address_name)
        self.armor: ComputeSecurityPolicy | None = None
        if props.armor_policy_name:
            self.armor = ComputeSecurityPolicy(
                self, "armor",
                name=props.armor_policy_name,
                rule=structs([
                    # Google's preconfigured WAF rule for CVE-2021-44228 (Log4Shell) and its variants.
                    {"action": "deny(403)", "priority": 1000, "description": "block Log4j exploit attempts",
                     "match": {"expr": {"expression": "evaluatePreconfiguredWaf('cve-canary', {'sensitivity': 1})"}}},
                    *([throttle_rule(props.rate_limit_per_ip_per_minute)] if props.rate_limit_per_ip_per_minute else []),
                    {"action": "allow", "priority": 2147483647, "description": "default allow",
                     "match": {"versioned_expr": "SRC_IPS_V1", "config": {"src_ip_ranges": ["*"]}}},
                ]),
            )

        def backend(cid: str, name: str, group: str) -> ComputeBackendService:
            return ComputeBackendService(
                self, cid,
                name=name,
                protocol="HTTP",
                port_name=props.port_name,
                load_balancing_scheme=LB_SCHEME,
                timeout_sec=30,
                health_checks=[props.health_check_id],
                connection_draining_timeout_sec=props.draining_timeout_s,
                log_config={"enable": True, "sample_rate": props.log_sample_rate},
                security_policy=self.armor.id if self.armor else None,
                iap={"enabled": True} if props.iap else None,
                # RATE, not UTILIZATION: UTILIZATION measures the VMs' CPU, which a GPU replica barely uses, so its
                # group never looked full and never scaled out under load.
                backend=structs([{"group": group, "balancing_mode": "RATE",
                                  "max_rate_per_instance": props.max_rate_per_instance, "capacity_scaler": 1.0}]),
            )

        self.stable = backend("stable-backend", props.stable_backend_name, props.stable_group)
        self.canary = backend("canary-backend", props.canary_backend_name, props.canary_group)
        # The same route rules the rollout patches (tenfold.rollout.urlmap), here with references: the bucket
        # ranges (sticky for clients that send their bucket), then the weighted split for everyone else.
        self.url_map = ComputeUrlMap(
            self, "url-map",
            name=props.url_map_name,
            default_service=self.stable.id,
            host_rule=structs([{"hosts": [ALL_HOSTS], "path_matcher": PATH_MATCHER}]),
            path_matcher=structs([{
                "name": PATH_MATCHER,
                "default_service": self.stable.id,
                # The Compute API's JSON names are the jsii (camelCase) names of the Terraform blocks.
                "route_rules": route_rules(self.stable.id, self.canary.id, props.canary_percent, props.bucket_header),
            }]),
            # The rollout owns the rules and weights after the first deploy.
            lifecycle={"ignore_changes": ["path_matcher"]},
        )
        if props.domain:
            # Every field of a managed certificate is immutable: a new domain is a new certificate. Named after its
            # domain and created before the old one is destroyed, the proxy moves to it in place (a fixed name
            # failed the apply: the old one deleted while the proxy used it, or a 409 on the name).
            digest = hashlib.sha256(props.domain.encode()).hexdigest()[:8]
            cert = ComputeManagedSslCertificate(self, "certificate", name=f"{props.proxy_name}-cert-{digest}",
                                                managed={"domains": [props.domain]},
                                                lifecycle={"create_before_destroy": True})
            # TLS 1.2+ with the MODERN cipher profile only.
            tls = ComputeSslPolicy(self, "ssl-policy", name=f"{props.proxy_name}-tls", profile="MODERN", min_tls_version="TLS_1_2")
            proxy_id = ComputeTargetHttpsProxy(self, "https-proxy", name=props.proxy_name, url_map=self.url_map.id,
                                               ssl_certificates=[cert.id], ssl_policy=tls.id).id
            port = HTTPS_PORT
        else:
            proxy_id = ComputeTargetHttpProxy(self, "http-proxy", name=props.proxy_name, url_map=self.url_map.id).id
            port = HTTP_PORT
            # Shown by `cdktn synth`/`deploy` and kept in the manifest (tests/infra/test_stacks.py reads it there).
            Annotations.of(self).add_warning(PLAIN_HTTP_WARNING)
        self.forwarding_rule = ComputeGlobalForwardingRule(
            self, "forwarding-rule",
            name=props.forwarding_rule_name,
            target=proxy_id,
            ip_address=self.address.id,
            port_range=str(port),
            load_balancing_scheme=LB_SCHEME,
        )
