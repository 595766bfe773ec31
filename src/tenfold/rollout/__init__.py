"""Canary rollouts: the seams between the rollout pipeline and the place it runs, and their adapters.

* :class:`TrafficRouter` moves a percentage of traffic between the stable and the canary backends. In the
  cloud :class:`tenfold.rollout.urlmap.UrlMapRouter` moves the URL map's weighted backend services; locally
  :class:`tenfold.rollout.haproxy.HaproxyRouter` sets the canary percentage of the serving fleet's HAProxy
  (the sticky split of :mod:`tenfold.rollout.split`) through its runtime API.
* :class:`Deployer` makes a pool (``stable`` or ``canary``) serve a model version: locally the serving
  fleet's one-replica-at-a-time rollout, in the cloud a new instance template on the pool's instance group.
* :class:`TrafficObserver` reports what the load balancer saw of each arm over a window (requests, errors,
  latency samples): locally HAProxy's request log, in the cloud the load balancer's request logs.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol


class TrafficRouter(Protocol):
    """Moves a percentage of traffic between the stable and the canary backends."""

    def canary_percent(self) -> int:
        """The share of traffic (0-100) the canary backend receives now."""
        ...

    def set_canary_percent(self, percent: int) -> None:
        """Send ``percent`` (0-100) of traffic to the canary and the rest to the stable backend."""
        ...


class Deployer(Protocol):
    """Makes a pool serve a model version."""

    def deploy(self, pool: str, version: str) -> None:
        """Serve ``version`` (a registry version id) in ``pool`` (``stable`` or ``canary``).

        Returns once every serving replica of the pool serves it (idempotent: nothing happens when it
        already does). The pool keeps serving throughout: replicas are replaced one at a time.
        """
        ...

    def pool_version(self, pool: str) -> str | None:
        """The version ``pool`` serves now, or None when it serves none (or replicas disagree)."""
        ...


@dataclass(frozen=True)
class ArmTraffic:
    """What the load balancer saw of one arm over a window."""

    # The arm's requests, answered or failed (the cloud's leaves out those that say nothing of the replicas: a client
    # that left, Cloud Armor's or IAP's answers, a 401/403 under bearer auth; docs/rollout-cloud.md)
    requests: int
    errors: int  # of those: 5xx answers and requests that got no answer (the cloud's: and under IAP, 401 and 403)
    latencies_ms: Sequence[float]  # one per request, total time at the load balancer

    @property
    def error_rate(self) -> float | None:
        return self.errors / self.requests if self.requests else None


class TrafficObserver(Protocol):
    """What the load balancer saw of each arm (``stable``, ``canary``) over ``[since, until)`` (UTC)."""

    def traffic(self, since: dt.datetime, until: dt.datetime) -> dict[str, ArmTraffic]:
        """Both arms' traffic in the window; an arm with no request has ``requests == 0``."""
        ...
