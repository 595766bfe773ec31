"""The rollout's adapters for an environment: :func:`router`, :func:`deployer`, :func:`observer`.

Locally they act on the serving fleet (``tenfold serve``): :class:`~tenfold.rollout.haproxy.HaproxyRouter`,
:class:`FleetDeployer` and :class:`~tenfold.rollout.haproxy.HaproxyObserver`. In the cloud: the URL map
(:class:`tenfold.rollout.urlmap.UrlMapRouter`), the serving instance groups and the load balancer's logs
(:mod:`tenfold.rollout.cloud`). The rollout pipeline only ever sees the protocols of :mod:`tenfold.rollout`.
"""

from __future__ import annotations

from tenfold.config import Settings
from tenfold.rollout import Deployer, TrafficObserver, TrafficRouter


class FleetDeployer:
    """The local :class:`~tenfold.rollout.Deployer`: the serving fleet's one-replica-at-a-time rollout of a pool."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def deploy(self, pool: str, version: str) -> None:
        from tenfold.serving import fleet

        fleet.rollout(self.settings, version, pool=pool)

    def pool_version(self, pool: str) -> str | None:
        from tenfold.serving import fleet

        st = fleet.read_status(fleet.running_settings(self.settings))
        if st is None or pool not in st.pools:
            return None
        versions = {r.version for r in st.pools[pool].serving()}
        if not versions:  # nothing serving this moment (a replica replaced): what the pool is set to serve
            return st.pools[pool].version
        return versions.pop() if len(versions) == 1 else None


def router(settings: Settings) -> TrafficRouter:
    if settings.is_local:
        from tenfold.rollout.haproxy import HaproxyRouter

        return HaproxyRouter.from_settings(settings)
    from tenfold.rollout.urlmap import UrlMapRouter

    return UrlMapRouter.from_settings(settings)


def deployer(settings: Settings) -> Deployer:
    if settings.is_local:
        return FleetDeployer(settings)
    from tenfold.rollout.cloud import InstanceGroupDeployer

    return InstanceGroupDeployer.from_settings(settings)


def observer(settings: Settings) -> TrafficObserver:
    if settings.is_local:
        from tenfold.rollout.haproxy import HaproxyObserver

        return HaproxyObserver.from_settings(settings)
    from tenfold.rollout import cloud

    make = getattr(cloud, "LoadBalancerLogObserver", None)
    if make is None:
        raise NotImplementedError(
            "the cloud canary analysis reads the load balancer's request logs, and this Tenfold has no reader for "
            "them yet: run the canary by hand with `tenfold serve`-style checks, or promote with `tenfold models promote`")
    observer: TrafficObserver = make.from_settings(settings)
    return observer
