"""Traffic between the stable and canary fleets: the :class:`TrafficRouter` seam and its adapters.

In the cloud, :class:`tenfold.rollout.urlmap.UrlMapRouter` moves the URL map's weighted backend services;
locally :class:`tenfold.rollout.haproxy.HaproxyRouter` sets the canary percentage of the serving fleet's
HAProxy (the sticky split of :mod:`tenfold.rollout.split`) through its runtime API.
"""

from __future__ import annotations

from typing import Protocol


class TrafficRouter(Protocol):
    """Moves a percentage of traffic between the stable and the canary backends."""

    def canary_percent(self) -> int:
        """The share of traffic (0-100) the canary backend receives now."""
        ...

    def set_canary_percent(self, percent: int) -> None:
        """Send ``percent`` (0-100) of traffic to the canary and the rest to the stable backend."""
        ...
