from __future__ import annotations

from typing import Any

import pytest

from tenfold.config import get_settings
from tenfold.rollout import urlmap


@pytest.mark.parametrize("percent", [0, 1, 10, 50, 99, 100])
def test_weights_sum_to_100_and_name_both_backends(percent: int) -> None:
    s = get_settings("prod")
    body = urlmap.weighted_route_patch(s, percent)
    weighted = body["pathMatchers"][0]["routeRules"][0]["routeAction"]["weightedBackendServices"]
    assert [w["weight"] for w in weighted] == [100 - percent, percent]
    lb = s.serving.load_balancer
    assert [w["backendService"] for w in weighted] == [urlmap.backend_service_url(s, lb.stable_backend),
                                                      urlmap.backend_service_url(s, lb.canary_backend)]
    assert body["defaultService"].endswith("/" + lb.stable_backend), "unmatched traffic never goes to the canary"
    assert body["name"] == lb.url_map and "fingerprint" not in body
    assert urlmap.canary_percent_of(body, s) == percent


@pytest.mark.parametrize("bad", [-1, 101, 12.5, True, "10", None])
def test_bad_percent_is_refused(bad: Any) -> None:
    with pytest.raises(ValueError, match="canary_percent"):
        urlmap.weighted_route_patch(get_settings("dev"), bad)


def test_foreign_url_map_is_refused() -> None:
    s = get_settings("dev")
    with pytest.raises(ValueError, match="no weighted route"):
        urlmap.canary_percent_of({"name": "x", "pathMatchers": [{"name": urlmap.PATH_MATCHER, "routeRules": []}]}, s)


class _Call:
    def __init__(self, result: dict[str, Any]) -> None:
        self.result = result

    def execute(self) -> dict[str, Any]:
        return self.result


class FakeUrlMaps:
    """googleapiclient's ``compute.urlMaps()`` at the transport boundary: records requests, keeps state."""

    def __init__(self, current: dict[str, Any]) -> None:
        self.current = current
        self.requests: list[tuple[str, dict[str, Any]]] = []

    def get(self, *, project: str, urlMap: str) -> _Call:
        self.requests.append(("get", {"project": project, "urlMap": urlMap}))
        return _Call(self.current)

    def patch(self, *, project: str, urlMap: str, body: dict[str, Any]) -> _Call:
        self.requests.append(("patch", {"project": project, "urlMap": urlMap, "body": body}))
        if body.get("fingerprint") != self.current["fingerprint"]:
            raise RuntimeError("412 conditionNotMet")
        self.current = {**body, "fingerprint": self.current["fingerprint"] + "x"}
        return _Call({"kind": "compute#operation", "status": "DONE"})


def test_patch_url_map_reads_the_fingerprint_then_patches() -> None:
    s = get_settings("dev")
    api = FakeUrlMaps({**urlmap.weighted_route_patch(s, 0), "fingerprint": "abc"})
    op = urlmap.patch_url_map(s, 20, api)
    assert op["status"] == "DONE"
    assert [r[0] for r in api.requests] == ["get", "patch"]
    assert all(r[1]["project"] == s.project_id and r[1]["urlMap"] == s.serving.load_balancer.url_map for r in api.requests)
    assert api.requests[1][1]["body"]["fingerprint"] == "abc"
    assert urlmap.canary_percent_of(api.current, s) == 20
    urlmap.patch_url_map(s, 0, api)  # a second patch uses the new fingerprint
    assert urlmap.canary_percent_of(api.current, s) == 0


def test_url_map_router_is_a_traffic_router_over_the_same_calls() -> None:
    from tenfold.rollout import TrafficRouter
    from tenfold.rollout.urlmap import UrlMapRouter

    s = get_settings("dev")
    api = FakeUrlMaps({**urlmap.weighted_route_patch(s, 0), "fingerprint": "abc"})
    router: TrafficRouter = UrlMapRouter(s, api)
    assert router.canary_percent() == 0
    router.set_canary_percent(25)
    assert router.canary_percent() == 25
