"""The load balancer's URL map: the sticky bucket rules and the weighted split between stable and canary.

Tenfold's URL map has one host rule (all hosts) and one path matcher (:data:`PATH_MATCHER`) whose route
rules are, in priority order, for a canary share of ``p`` percent:

1. ``p > 0``: a request whose bucket header (``settings.serving.load_balancer.bucket_header``) holds an
   integer in ``[0, p)`` goes to the canary backend service;
2. ``p < 100``: one whose bucket is in ``[p, 100)`` goes to the stable backend service;
3. everything else (no bucket header, or not an integer from 0 to 99) is split by weight, ``p`` to the canary.

The bucket is :func:`tenfold.rollout.split.bucket_of` of the user key, the one HAProxy computes locally and
the server returns with every prediction, so a client that sends it stays on its arm exactly as behind
HAProxy, and raising ``p`` only moves users from stable to canary. The load balancer cannot hash a header
itself, and Compute Engine's weighted split takes precedence over session affinity, so a request without the
header is not sticky (``docs/rollout-cloud.md``).

The infrastructure (``infra/components/load_balancer.py``) synthesizes the path matcher from
:func:`route_rules` with the canary at 0 %; :class:`UrlMapRouter` patches the same rules with another
share. Both come from this one module, so they cannot drift apart::

    router = UrlMapRouter.from_settings(settings)  # Application Default Credentials
    router.set_canary_percent(25)                   # read, patch with the fingerprint, wait, verify
    assert router.canary_percent() == 25
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from tenfold.config import Settings
from tenfold.rollout.cloud import CloudRolloutError, ComputeApi, as_dict, to_message, wait_for_operation
from tenfold.rollout.split import BUCKETS

if TYPE_CHECKING:
    from google.auth.credentials import Credentials

log = logging.getLogger(__name__)

COMPUTE_API = "https://www.googleapis.com/compute/v1"
# The host rule and path matcher every Tenfold URL map has.
PATH_MATCHER = "serving"
ALL_HOSTS = "*"
# Route rules are tried from the lowest number up; the gaps leave room for rules of one's own.
CANARY_BUCKETS_PRIORITY, STABLE_BUCKETS_PRIORITY, ROUTE_PRIORITY = 10, 20, 100
TENFOLD_PRIORITIES = frozenset({CANARY_BUCKETS_PRIORITY, STABLE_BUCKETS_PRIORITY, ROUTE_PRIORITY})
# A concurrent change to the URL map (412 on the fingerprint) is re-read and re-applied this many times.
MAX_PATCH_ATTEMPTS = 5


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


def bucket_rule(priority: int, header: str, start: int, end: int, service: str) -> dict[str, Any]:
    """A route rule sending requests whose ``header`` is an integer in ``[start, end)`` to ``service``."""
    return {
        "priority": priority,
        "matchRules": [{"prefixMatch": "/", "headerMatches": [{"headerName": header,
                                                               "rangeMatch": {"rangeStart": start, "rangeEnd": end}}]}],
        "service": service,
    }


def route_rules(stable_service: str, canary_service: str, canary_percent: int, bucket_header: str) -> list[dict[str, Any]]:
    """The path matcher's route rules (Compute API JSON) for ``canary_percent``: bucket ranges, then weights."""
    _, canary = split(canary_percent)
    rules = []
    if canary > 0:  # an empty range is no rule at all
        rules.append(bucket_rule(CANARY_BUCKETS_PRIORITY, bucket_header, 0, canary, canary_service))
    if canary < BUCKETS:
        rules.append(bucket_rule(STABLE_BUCKETS_PRIORITY, bucket_header, canary, BUCKETS, stable_service))
    rules.append({
        "priority": ROUTE_PRIORITY,
        "matchRules": [{"prefixMatch": "/"}],
        "routeAction": {"weightedBackendServices": weighted_backends(stable_service, canary_service, canary_percent)},
    })
    return rules


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
        "pathMatchers": [{
            "name": PATH_MATCHER,
            "defaultService": stable_url,
            "routeRules": route_rules(stable_url, canary_url, canary_percent, lb.bucket_header),
        }],
    }
    if fingerprint:
        body["fingerprint"] = fingerprint
    return body


def patched_url_map(current: Mapping[str, Any], settings: Settings, canary_percent: int) -> dict[str, Any]:
    """The patch of ``current`` (a URL map as the API returns it) to ``canary_percent``, with its fingerprint.

    Only Tenfold's path matcher is rewritten; other path matchers and host rules someone added are kept,
    in their places, and the fingerprint makes Compute refuse the patch if the map changed since it was read.
    """
    if not current.get("fingerprint"):
        raise CloudRolloutError(f"URL map {current.get('name')!r} came without a fingerprint: cannot patch it safely")
    body = weighted_route_patch(settings, canary_percent, fingerprint=str(current["fingerprint"]))
    if current.get("defaultService"):  # the map's own default (hosts no host rule matches) is not Tenfold's to move
        body["defaultService"] = current["defaultService"]
    (ours,) = body["pathMatchers"]
    matchers = [dict(m) for m in current.get("pathMatchers", [])]
    at = next((i for i, m in enumerate(matchers) if m.get("name") == PATH_MATCHER), None)
    if at is None:
        matchers.append(ours)
    else:
        # Only Tenfold's three route rules change: rules of one's own at other priorities (the gaps are for
        # them), and every other field of the matcher, stay.
        theirs = [r for r in matchers[at].get("routeRules", []) if r.get("priority") not in TENFOLD_PRIORITIES]
        matchers[at] = {**matchers[at], **ours,
                        "routeRules": sorted([*ours["routeRules"], *theirs], key=lambda r: int(r.get("priority", 0)))}
    body["pathMatchers"] = matchers
    hosts = [dict(h) for h in current.get("hostRules", [])]
    if not any(h.get("pathMatcher") == PATH_MATCHER for h in hosts):
        hosts += body["hostRules"]
    body["hostRules"] = hosts
    return body


def _name(url: object) -> str:
    return str(url).rsplit("/", 1)[-1]


def _tiles(ranges: list[tuple[int, int, str]], arms: Mapping[str, str]) -> bool:
    """Sorted ``(start, end, service)`` ranges are ``[0, p)`` canary then ``[p, 100)`` stable (either may be absent)."""
    if [arms.get(svc) for _, _, svc in ranges] not in (["canary", "stable"], ["canary"], ["stable"]):
        return False
    bounds = [b for s, e, _ in ranges for b in (s, e)]
    # contiguous, non-empty, from 0 to BUCKETS: starts equal the previous ends
    return bounds[0] == 0 and bounds[-1] == BUCKETS and all(s < e for s, e, _ in ranges) and \
        all(bounds[i] == bounds[i + 1] for i in range(1, len(bounds) - 1, 2))


def canary_percent_of(url_map: Mapping[str, Any], settings: Settings) -> int:
    """The canary share a URL map (as the Compute API returns it) sends.

    Raises :class:`ValueError` when the map is not Tenfold's shape, or when its bucket rules and its weights
    disagree (changed by hand, or by a half-applied tool): ``set_canary_percent`` rewrites both.
    """
    lb = settings.serving.load_balancer
    name, arms = url_map.get("name"), {lb.stable_backend: "stable", lb.canary_backend: "canary"}
    matcher: Mapping[str, Any] = next((m for m in url_map.get("pathMatchers", []) if m.get("name") == PATH_MATCHER), {})
    weights: dict[str, int] = {}
    ranges: list[tuple[int, int, str]] = []
    for rule in matcher.get("routeRules", []):
        if rule.get("priority") not in TENFOLD_PRIORITIES:  # a rule of one's own in the gaps: not the split
            continue
        for wb in rule.get("routeAction", {}).get("weightedBackendServices", []):
            weights[_name(wb["backendService"])] = int(wb.get("weight", 0))
        for match in rule.get("matchRules", []):
            for hm in match.get("headerMatches", []):
                if str(hm.get("headerName", "")).lower() == lb.bucket_header.lower() and "rangeMatch" in hm:
                    rng = hm["rangeMatch"]
                    ranges.append((int(rng.get("rangeStart", 0)), int(rng.get("rangeEnd", 0)), _name(rule.get("service"))))
    if set(weights) != set(arms):
        raise ValueError(
            f"URL map {name!r} has no weighted route between {lb.stable_backend} and {lb.canary_backend} "
            f"(found {sorted(weights)}): was it changed outside Tenfold?"
        )
    total = weights[lb.stable_backend] + weights[lb.canary_backend]
    if total <= 0:
        raise ValueError(f"URL map {name!r} sends no traffic to either backend")
    by_weight = round(100 * weights[lb.canary_backend] / total)
    ranges.sort()
    tiled = _tiles(ranges, arms)
    if not tiled:
        raise ValueError(
            f"URL map {name!r}: its {lb.bucket_header} rules {[(s, e, svc) for s, e, svc in ranges]} do not send buckets "
            f"[0, p) to {lb.canary_backend} and [p, {BUCKETS}) to {lb.stable_backend}: set the percent again "
            "(`set_canary_percent`) to rewrite them"
        )
    by_bucket = ranges[0][1] if arms[ranges[0][2]] == "canary" else 0
    if by_bucket != by_weight:
        raise ValueError(
            f"URL map {name!r} disagrees with itself: its bucket rules send {by_bucket}% of users to the canary and "
            f"its weights {by_weight}% of unbucketed requests; set the percent again (`set_canary_percent`) to rewrite both"
        )
    return by_bucket


class UrlMapRouter:
    """The cloud :class:`~tenfold.rollout.TrafficRouter`: the URL map's bucket rules and weighted backend services."""

    def __init__(self, settings: Settings, api: ComputeApi, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.settings, self.api, self.clock = settings, api, clock

    @classmethod
    def from_settings(
        cls, settings: Settings, *, credentials: Credentials | None = None, api: ComputeApi | None = None
    ) -> UrlMapRouter:
        return cls(settings, api or ComputeApi.connect(credentials=credentials))

    def _read(self) -> dict[str, Any]:
        from google.api_core.exceptions import NotFound

        name = self.settings.serving.load_balancer.url_map
        try:
            return as_dict(self.api.url_maps.get(project=self.settings.project_id, url_map=name))
        except NotFound as exc:
            raise CloudRolloutError(
                f"URL map {name} does not exist in {self.settings.project_id}: deploy the platform stack first"
            ) from exc

    def canary_percent(self) -> int:
        """The share the URL map sends to the canary now, read from Compute Engine (rules and weights agreeing)."""
        return canary_percent_of(self._read(), self.settings)

    def set_canary_percent(self, percent: int) -> None:
        """Send ``percent`` of the buckets, and of the requests without one, to the canary; returns once applied.

        Read-modify-write: the patch carries the fingerprint read with the map, so a concurrent change makes
        Compute answer 412 and the map is read again and the change re-applied to what is there now (never
        a lost update). Nothing is patched when the map already sends ``percent``. The map is read back after
        the operation and must send exactly ``percent``.
        """
        from google.api_core.exceptions import PreconditionFailed
        from google.cloud import compute_v1

        split(percent)
        lb, project = self.settings.serving.load_balancer, self.settings.project_id
        for attempt in range(1, MAX_PATCH_ATTEMPTS + 1):
            current = self._read()
            try:
                if canary_percent_of(current, self.settings) == percent:
                    log.info("URL map %s already sends %d%% to the canary", lb.url_map, percent)
                    return
            except ValueError as exc:
                log.warning("URL map %s: %s; rewriting it", lb.url_map, exc)
            body = patched_url_map(current, self.settings, percent)
            try:
                op = self.api.url_maps.patch_unary(project=project, url_map=lb.url_map,
                                                   url_map_resource=to_message(compute_v1.UrlMap, body))
            except PreconditionFailed:
                log.info("URL map %s changed since it was read (attempt %d): reading it again", lb.url_map, attempt)
                continue
            wait_for_operation(self.api, project, op, what=f"setting URL map {lb.url_map} to {percent}% canary",
                               timeout_s=lb.operation_timeout_s, clock=self.clock)
            break
        else:
            raise CloudRolloutError(
                f"URL map {lb.url_map} changed {MAX_PATCH_ATTEMPTS} times while Tenfold was patching it: someone else "
                "is changing it now; stop them, then set the percent again"
            )
        now = self.canary_percent()
        if now != percent:
            raise CloudRolloutError(f"URL map {lb.url_map} sends {now}% to the canary after being set to {percent}%")
        log.info("URL map %s sends %d%% to the canary", lb.url_map, percent)
