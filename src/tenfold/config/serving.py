"""Settings of the model server (``tenfold.serving``) and of the local serving fleet (``tenfold serve``).

Kept apart from :mod:`tenfold.config.settings` so the server and the fleet each own one class; both
are nested under ``settings.serving`` (``settings.serving.server``, ``settings.serving.fleet``).
Light: pydantic only.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ServerSettings(_Frozen):
    """One replica of the model server: what it loads, how it batches, caches, publishes and refuses."""

    # The registry reference a replica loads when started without one: an alias or a version id.
    model_ref: str = "champion"
    api_prefix: str = "/v1"
    ready_path: str = "/readyz"
    metrics_path: str = "/metrics"
    # The header that carries the A/B user key (HAProxy hashes the same header); the body may carry it too.
    user_key_header: str = "X-User-Key"
    # Adaptive micro-batching of concurrent requests.
    max_batch_size: int = Field(default=64, ge=1, le=4096)
    max_batch_wait_ms: float = Field(default=2.0, ge=0, le=1000)
    # Bounded prediction cache keyed by (model version, canonical hash of the input); 0 turns it off.
    cache_entries: int = Field(default=50_000, ge=0)
    # Refusals: 413 above either bound.
    max_body_bytes: int = Field(default=1_000_000, gt=0)
    max_batch_rows: int = Field(default=1_000, ge=1)
    # Share of predictions published to the predictions topic (monitoring and the feedback join).
    prediction_sample_rate: float = Field(default=1.0, ge=0, le=1)
    # Pub/Sub publishing: a bounded buffer and a circuit breaker in front of the publisher.
    publish_buffer: int = Field(default=10_000, ge=1)
    breaker_failures: int = Field(default=3, ge=1)
    breaker_reset_s: float = Field(default=5.0, gt=0)
    feedback_publish_timeout_s: float = Field(default=5.0, gt=0)
    retry_after_s: int = Field(default=5, ge=1)
    # Graceful drain on SIGTERM: readiness goes false, in-flight requests get this long to finish.
    drain_timeout_s: float = Field(default=20.0, gt=0)


class FleetSettings(_Frozen):
    """The local fleet: replica processes in a stable and a canary pool behind HAProxy (``tenfold serve``).

    The cloud fleet's sizes are ``serving.stable_fleet``/``canary_fleet``; the autoscaling signal and
    target are the same in both places (load-balancer utilisation per replica, ``serving.target_utilization``).
    """

    stable_min: int = Field(default=2, ge=1)
    stable_max: int = Field(default=4, ge=1)
    canary_min: int = Field(default=1, ge=0)
    canary_max: int = Field(default=2, ge=0)
    # Concurrent requests one replica is sized for: utilisation = in-flight sessions / this.
    replica_capacity: int = Field(default=8, ge=1)
    scale_interval_s: float = Field(default=2.0, gt=0)
    # Scale in only after utilisation stayed below target for this long (the cloud autoscaler's window).
    stabilization_s: float = Field(default=30.0, ge=0)
    # HAProxy health checks on the readiness path.
    health_interval_ms: int = Field(default=500, ge=100)
    health_fall: int = Field(default=2, ge=1)
    health_rise: int = Field(default=2, ge=1)
    # The canary's share when the fleet starts; the rollout then moves it through the TrafficRouter.
    canary_percent: int = Field(default=0, ge=0, le=100)
    # HAProxy's own Prometheus exporter (``/metrics``) and stats page (``/stats``), loopback only.
    lb_metrics_port: int = Field(default=8404, ge=1, le=65535)
    # HAProxy: connect timeout, then redispatch to another replica up to ``lb_retries`` times; the
    # client/server timeout bounds a request (keep it above the server's drain_timeout_s).
    lb_connect_timeout_ms: int = Field(default=1000, ge=10)
    lb_retries: int = Field(default=3, ge=0)
    lb_timeout_s: float = Field(default=30.0, gt=0)
    # A replica must pass HAProxy's health check within this long of starting (model + lookups load).
    replica_start_timeout_s: float = Field(default=180.0, gt=0)
    # A replica HAProxy has seen DOWN this long while its process lives is hung: it gets replaced.
    replica_down_restart_s: float = Field(default=30.0, gt=0)

    @model_validator(mode="after")
    def _bounds(self) -> FleetSettings:
        if self.stable_max < self.stable_min or self.canary_max < self.canary_min:
            raise ValueError("serving fleet: each pool's max replicas must be at least its min")
        if self.stable_max + self.canary_max > 64:
            raise ValueError("serving fleet: at most 64 replicas in all (stable_max + canary_max)")
        return self
