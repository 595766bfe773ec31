"""The load balancer's URL map: the weighted split between the stable and canary backend services.

The infrastructure (``infra/components/load_balancer.py``) creates the URL map from
:func:`weighted_route_patch` with the canary at 0 %; the rollout DAG moves traffic by patching the
same body with another weight::

    body = weighted_route_patch(settings, 10)
    ComputeEngineHook(gcp_conn_id=...).get_conn().urlMaps().patch(
        project=settings.project_id, urlMap=settings.serving.load_balancer.url_map, body=body).execute()

or with :func:`patch_url_map`, which adds the fingerprint Compute Engine needs for optimistic locking.
Both the synthesized URL map and the patch come from this one module, so they cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from tenfold.config import Settings

COMPUTE_API = "https://www.googleapis.com/compute/v1"
# The host rule and path matcher every Tenfold URL map has; all paths go to the weighted route.
PATH_MATCHER = "serving"
ALL_HOSTS = "*"
ROUTE_PRIORITY = 1


def backend_service_url(settings: Settings, name: str) -> str:
    return f"{COMPUTE_API}/projects/{settings.project_id}/global/backendServices/{name}"


def split(canary_percent: int) -> tuple[int, int]:
    """``(stable, canary)`` weights for a canary share in whole percent; a clear error otherwise."""
    if isinstance(canary_percent, bool) or not isinstance(canary_percent, int):
        raise ValueError(f"canary_percent must be a whole number from 0 to 100, got {canary_percent!r}")
    if not 0 <= canary_percent <= 100:
        raise ValueError(f"canary_percent must be from 0 to 100, got {canary_percent}: send at most all traffic to the canary")
    stable, canary = 100 - canary_percent, canary_percent
    assert stable + canary == 100
    return stable, canary


def weighted_backends(stable_service: str, canary_service: str, canary_percent: int) -> list[dict[str, Any]]:
    """The ``weightedBackendServices`` list of the route; services are URLs or references."""
    stable, canary = split(canary_percent)
    return [
        {"backendService": stable_service, "weight": stable},
        {"backendService": canary_service, "weight": canary},
    ]


def weighted_route_patch(settings: Settings, canary_percent: int, *, fingerprint: str | None = None) -> dict[str, Any]:
    """The URL map body (Compute API ``urlMaps.patch``) that sends ``canary_percent`` % to the canary.

    The default service stays the stable backend, so a request that matches no route never reaches an
    unproven model.
    """
    lb = settings.serving.load_balancer
    stable_url = backend_service_url(settings, lb.stable_backend)
    canary_url = backend_service_url(settings, lb.canary_backend)
    body: dict[str, Any] = {
        "name": lb.url_map,
        "defaultService": stable_url,
        "hostRules": [{"hosts": [ALL_HOSTS], "pathMatcher": PATH_MATCHER}],
        "pathMatchers": [
            {
                "name": PATH_MATCHER,
                "defaultService": stable_url,
                "routeRules": [
                    {
                        "priority": ROUTE_PRIORITY,
                        "matchRules": [{"prefixMatch": "/"}],
                        "routeAction": {"weightedBackendServices": weighted_backends(stable_url, canary_url, canary_percent)},
                    }
                ],
            }
        ],
    }
    if fingerprint:
        body["fingerprint"] = fingerprint
    return body


def canary_percent_of(url_map: Mapping[str, Any], settings: Settings) -> int:
    """The canary share a URL map (as the Compute API returns it) sends; raises if it is not Tenfold's shape."""
    lb = settings.serving.load_balancer
    weights: dict[str, int] = {}
    for matcher in url_map.get("pathMatchers", []):
        if matcher.get("name") != PATH_MATCHER:
            continue
        for rule in matcher.get("routeRules", []):
            for wb in rule.get("routeAction", {}).get("weightedBackendServices", []):
                weights[str(wb["backendService"]).rsplit("/", 1)[-1]] = int(wb.get("weight", 0))
    if set(weights) != {lb.stable_backend, lb.canary_backend}:
        raise ValueError(
            f"URL map {url_map.get('name')!r} has no weighted route between {lb.stable_backend} and "
            f"{lb.canary_backend} (found {sorted(weights)}): was it changed outside Tenfold?"
        )
    total = weights[lb.stable_backend] + weights[lb.canary_backend]
    if total <= 0:
        raise ValueError(f"URL map {url_map.get('name')!r} sends no traffic to either backend")
    return round(100 * weights[lb.canary_backend] / total)


class UrlMapsApi(Protocol):
    """The two calls of ``googleapiclient``'s ``compute.urlMaps()`` that are used (ComputeEngineHook's conn)."""

    def get(self, *, project: str, urlMap: str) -> Any: ...

    def patch(self, *, project: str, urlMap: str, body: dict[str, Any]) -> Any: ...


def patch_url_map(settings: Settings, canary_percent: int, url_maps: UrlMapsApi) -> dict[str, Any]:
    """Read the URL map's fingerprint, then patch the weights; returns the Compute operation.

    ``url_maps`` is ``ComputeEngineHook(...).get_conn().urlMaps()`` (or ``googleapiclient``'s
    ``build("compute", "v1").urlMaps()``). A concurrent change makes Compute answer 412, which the
    caller's retry turns into a fresh read-and-patch, never a lost update.
    """
    name = settings.serving.load_balancer.url_map
    current = url_maps.get(project=settings.project_id, urlMap=name).execute()
    body = weighted_route_patch(settings, canary_percent, fingerprint=current.get("fingerprint"))
    result: dict[str, Any] = url_maps.patch(project=settings.project_id, urlMap=name, body=body).execute()
    return result


class UrlMapRouter:
    """The cloud :class:`~tenfold.rollout.TrafficRouter`: the URL map's weighted backend services."""

    def __init__(self, settings: Settings, url_maps: UrlMapsApi) -> None:
        self.settings, self.url_maps = settings, url_maps

    def canary_percent(self) -> int:
        name = self.settings.serving.load_balancer.url_map
        return canary_percent_of(self.url_maps.get(project=self.settings.project_id, urlMap=name).execute(), self.settings)

    def set_canary_percent(self, percent: int) -> None:
        patch_url_map(self.settings, percent, self.url_maps)
