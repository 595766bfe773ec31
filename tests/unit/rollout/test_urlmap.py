"""The URL map's bucket rules and weights (one builder for the stack and the router), and UrlMapRouter over the
real google-cloud-compute REST clients answered at their transport boundary with recorded API shapes
(``fake_compute.py``, ``recorded/``)."""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path
from typing import Any

import pytest

from tenfold.config import get_settings
from tenfold.rollout import TrafficRouter, urlmap
from tenfold.rollout.cloud import CloudRolloutError
from tenfold.rollout.split import BUCKETS, CANARY, STABLE, arm_of, bucket_of
from tenfold.rollout.urlmap import UrlMapRouter


def _load_fake() -> Any:
    name = "tenfold_tests_rollout_fake_compute"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name("fake_compute.py"))
        assert spec and spec.loader
        sys.modules[name] = module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    return sys.modules[name]


fc = _load_fake()
S = get_settings("prod")  # the recorded shapes are prod's resources
LB = S.serving.load_balancer


def route(url_map: dict[str, Any], headers: dict[str, str], draw: float) -> str:
    """The backend service (name) a request to ``/`` gets, as the URL map reference documents it: route rules in
    ascending priority, the first match wins; a rangeMatch matches an integer header value in [rangeStart,
    rangeEnd) and fails on a missing or non-integer value; a weighted route picks weight / sum(weights)
    (``draw`` in [0, 1) stands for the load balancer's choice)."""
    lower = {k.lower(): v for k, v in headers.items()}
    matcher = next(m for m in url_map["pathMatchers"] if m["name"] == urlmap.PATH_MATCHER)
    for rule in sorted(matcher["routeRules"], key=lambda r: int(r["priority"])):
        for match in rule["matchRules"]:
            ok = match.get("prefixMatch") == "/"
            for hm in match.get("headerMatches", []):
                value = lower.get(hm["headerName"].lower())
                rng = hm["rangeMatch"]
                ok = ok and value is not None and re.fullmatch(r"-?\d+", value) is not None \
                    and int(rng["rangeStart"]) <= int(value) < int(rng["rangeEnd"])
            if ok:
                if "service" in rule:
                    return str(rule["service"]).rsplit("/", 1)[-1]
                wbs = rule["routeAction"]["weightedBackendServices"]
                total, acc = sum(int(w["weight"]) for w in wbs), 0.0
                for w in wbs:
                    acc += int(w["weight"]) / total
                    if draw < acc:
                        return str(w["backendService"]).rsplit("/", 1)[-1]
    return str(matcher["defaultService"]).rsplit("/", 1)[-1]


ARM_OF_SERVICE = {LB.stable_backend: STABLE, LB.canary_backend: CANARY}


# -- the body: one builder for the synthesized stack and the router ---------------------------------------------

@pytest.mark.parametrize("percent", [0, 1, 10, 50, 99, 100])
def test_rules_and_weights_name_both_backends_and_read_back(percent: int) -> None:
    body = urlmap.weighted_route_patch(S, percent)
    rules = body["pathMatchers"][0]["routeRules"]
    weighted = rules[-1]["routeAction"]["weightedBackendServices"]
    assert [w["weight"] for w in weighted] == [100 - percent, percent]
    assert [w["backendService"] for w in weighted] == [urlmap.backend_service_url(S, LB.stable_backend),
                                                      urlmap.backend_service_url(S, LB.canary_backend)]
    ranges = [(r["matchRules"][0]["headerMatches"][0]["rangeMatch"], r["service"].rsplit("/", 1)[-1]) for r in rules[:-1]]
    expected = ([({"rangeStart": 0, "rangeEnd": percent}, LB.canary_backend)] if percent else []) + \
        ([({"rangeStart": percent, "rangeEnd": 100}, LB.stable_backend)] if percent < 100 else [])
    assert ranges == expected, "buckets [0, p) to the canary, [p, 100) to stable; an empty range is no rule"
    assert all(r["matchRules"][0]["headerMatches"][0]["headerName"] == LB.bucket_header for r in rules[:-1])
    assert [r["priority"] for r in rules] == sorted(r["priority"] for r in rules), "bucket rules before the weights"
    assert body["defaultService"].endswith("/" + LB.stable_backend), "unmatched traffic never goes to the canary"
    assert body["name"] == LB.url_map and "fingerprint" not in body
    assert urlmap.canary_percent_of(body, S) == percent


@pytest.mark.parametrize("bad", [-1, 101, 12.5, True, "10", None])
def test_bad_percent_is_refused(bad: Any) -> None:
    with pytest.raises(ValueError, match="canary_percent"):
        urlmap.weighted_route_patch(S, bad)


def test_foreign_url_map_is_refused() -> None:
    with pytest.raises(ValueError, match="no weighted route"):
        urlmap.canary_percent_of({"name": "x", "pathMatchers": [{"name": urlmap.PATH_MATCHER, "routeRules": []}]}, S)


def test_rules_and_weights_that_disagree_are_refused() -> None:
    body = urlmap.weighted_route_patch(S, 25)
    rules = body["pathMatchers"][0]["routeRules"]
    rules[-1]["routeAction"]["weightedBackendServices"][1]["weight"] = 50
    rules[-1]["routeAction"]["weightedBackendServices"][0]["weight"] = 50
    with pytest.raises(ValueError, match=r"disagrees with itself: its bucket rules send 25% .* its weights 50%"):
        urlmap.canary_percent_of(body, S)
    gap = urlmap.weighted_route_patch(S, 25)
    gap["pathMatchers"][0]["routeRules"][0]["matchRules"][0]["headerMatches"][0]["rangeMatch"]["rangeEnd"] = 20
    with pytest.raises(ValueError, match=r"do not send buckets \[0, p\)"):
        urlmap.canary_percent_of(gap, S)
    none = urlmap.weighted_route_patch(S, 25)
    del none["pathMatchers"][0]["routeRules"][:2]
    with pytest.raises(ValueError, match="do not send buckets"):
        urlmap.canary_percent_of(none, S)


def test_a_user_with_a_bucket_gets_the_arm_haproxy_gives_it_and_only_moves_to_the_canary() -> None:
    users = [f"user-{i}" for i in range(2000)]
    previous: dict[str, str] = {}
    for percent in (0, *S.serving.rollout.steps):
        body = urlmap.weighted_route_patch(S, percent)
        arms = {}
        for user in users:
            b = bucket_of(user)
            # the draw must not matter for a request with a bucket: try both extremes of the weighted choice
            got = {ARM_OF_SERVICE[route(body, {LB.bucket_header.lower(): str(b)}, draw)] for draw in (0.0, 0.999)}
            assert got == {arm_of(b, percent)}, (user, b, percent)
            arms[user] = got.pop()
        assert not [u for u in users if previous.get(u) == CANARY and arms[u] == STABLE], "never back from canary"
        previous = arms


@pytest.mark.parametrize("percent", [0, 5, 25, 100])
def test_a_request_without_a_valid_bucket_gets_the_weighted_split(percent: int) -> None:
    body = urlmap.weighted_route_patch(S, percent)
    draws = [i / 1000 for i in range(1000)]
    for headers in ({}, {LB.bucket_header: "abc"}, {LB.bucket_header: str(BUCKETS)}, {LB.bucket_header: "-1"},
                    {LB.bucket_header: ""}):
        arms = [ARM_OF_SERVICE[route(body, headers, d)] for d in draws]
        assert arms.count(CANARY) == 10 * percent, headers


def test_the_patch_keeps_what_others_added_to_the_url_map() -> None:
    current = fc.recorded("urlMaps.get")
    current["hostRules"].append({"hosts": ["admin.example.com"], "pathMatcher": "admin"})
    current["pathMatchers"].insert(0, {"name": "admin", "defaultService": "backendServices/admin"})
    body = urlmap.patched_url_map(current, S, 25)
    assert body["fingerprint"] == current["fingerprint"]
    assert [m["name"] for m in body["pathMatchers"]] == ["admin", urlmap.PATH_MATCHER], "theirs kept, in place"
    assert body["hostRules"] == current["hostRules"]
    assert body["pathMatchers"][1] == urlmap.weighted_route_patch(S, 25)["pathMatchers"][0]


def test_the_patch_keeps_route_rules_of_ones_own_in_tenfolds_matcher() -> None:
    """The priority gaps are "room for rules of one's own": a rule there, and the map's own default service,
    survive every patch (the whole matcher was replaced, deleting them)."""
    current = fc.recorded("urlMaps.get")
    current["defaultService"] = "https://www.googleapis.com/compute/v1/projects/p/global/backendServices/maintenance"
    (matcher,) = [m for m in current["pathMatchers"] if m["name"] == urlmap.PATH_MATCHER]
    mine = {"priority": 50, "matchRules": [{"prefixMatch": "/v1/admin"}],
            "service": "https://www.googleapis.com/compute/v1/projects/p/global/backendServices/admin"}
    matcher["routeRules"].append(mine)
    body = urlmap.patched_url_map(current, S, 25)
    (patched,) = [m for m in body["pathMatchers"] if m["name"] == urlmap.PATH_MATCHER]
    assert [r["priority"] for r in patched["routeRules"]] == [10, 20, 50, 100]
    assert patched["routeRules"][2] == mine
    ours = urlmap.weighted_route_patch(S, 25)["pathMatchers"][0]["routeRules"]
    assert [r for r in patched["routeRules"] if r["priority"] != 50] == ours
    assert body["defaultService"] == current["defaultService"]
    # Read back, the split is Tenfold's rules' alone, whatever a rule of one's own routes.
    mine["routeAction"] = {"weightedBackendServices": [{"backendService": "backendServices/admin", "weight": 100}]}
    assert urlmap.canary_percent_of(body, S) == 25


# -- the router over the real REST clients ----------------------------------------------------------------

@pytest.fixture
def fake() -> Any:
    return fc.FakeCompute()


@pytest.fixture
def router(fake: Any) -> UrlMapRouter:
    return UrlMapRouter.from_settings(S, api=fc.compute_api(fake))


MAP_PATH = f"projects/{S.project_id}/global/urlMaps/{LB.url_map}"


def test_set_reads_patches_with_the_fingerprint_waits_and_verifies(fake: Any, router: UrlMapRouter) -> None:
    typed: TrafficRouter = router
    assert typed.canary_percent() == 0
    fake.calls.clear()
    router.set_canary_percent(25)
    assert fake.apis() == ["urlMaps.get", "urlMaps.patch", "globalOperations.wait", "urlMaps.get"]
    get, patch, wait, verify = fake.calls
    assert (get.method, get.path) == ("GET", MAP_PATH) and (verify.method, verify.path) == ("GET", MAP_PATH)
    assert (patch.method, patch.path) == ("PATCH", MAP_PATH)
    assert patch.body == fc.recorded("urlMaps.patch.request-25"), "the exact body Compute receives"
    op = next(iter(fake.operations))
    assert (wait.method, wait.path) == ("POST", f"projects/{S.project_id}/global/operations/{op}/wait")
    assert router.canary_percent() == 25
    fake.calls.clear()
    router.set_canary_percent(5)  # the next patch carries the fingerprint the first one produced
    assert fake.of("urlMaps.patch")[0].body["fingerprint"] != fc.recorded("urlMaps.get")["fingerprint"]
    assert router.canary_percent() == 5


def test_setting_the_percent_it_already_has_patches_nothing(fake: Any, router: UrlMapRouter) -> None:
    router.set_canary_percent(0)
    assert fake.apis() == ["urlMaps.get"]


def test_a_concurrent_change_is_reread_and_kept_never_lost(fake: Any, router: UrlMapRouter) -> None:
    def someone_adds_a_matcher(url_map: dict[str, Any]) -> None:
        url_map["hostRules"].append({"hosts": ["admin.example.com"], "pathMatcher": "admin"})
        url_map["pathMatchers"].append({"name": "admin", "defaultService": url_map["defaultService"]})

    fake.concurrent_url_map_changes.append(someone_adds_a_matcher)
    router.set_canary_percent(25)
    assert fake.apis() == ["urlMaps.get", "urlMaps.patch", "urlMaps.get", "urlMaps.patch", "globalOperations.wait",
                           "urlMaps.get"], "412 on the stale fingerprint, then a fresh read and patch"
    first, second = fake.of("urlMaps.patch")
    assert first.body["fingerprint"] == fc.recorded("urlMaps.get")["fingerprint"]
    assert second.body["fingerprint"] != first.body["fingerprint"]
    assert [m["name"] for m in second.body["pathMatchers"]] == [urlmap.PATH_MATCHER, "admin"]
    assert [m["name"] for m in fake.url_map["pathMatchers"]] == [urlmap.PATH_MATCHER, "admin"], "their change survived"
    assert router.canary_percent() == 25


def test_a_url_map_that_keeps_changing_is_refused_by_name(fake: Any, router: UrlMapRouter) -> None:
    fake.concurrent_url_map_changes.extend([lambda m: None] * urlmap.MAX_PATCH_ATTEMPTS)
    with pytest.raises(CloudRolloutError, match=f"URL map {LB.url_map} changed {urlmap.MAX_PATCH_ATTEMPTS} times"):
        router.set_canary_percent(25)
    assert fake.apis().count("urlMaps.patch") == urlmap.MAX_PATCH_ATTEMPTS
    assert router.canary_percent() == 0


def test_an_operation_that_ends_in_error_is_a_clear_refusal(fake: Any, router: UrlMapRouter) -> None:
    fake.fail_next["urlMaps.patch"] = {"code": "RESOURCE_NOT_READY",
                                       "message": "The resource 'backendServices/x' is not ready"}
    with pytest.raises(CloudRolloutError, match=r"setting URL map .* to 25% canary failed: operation operation-\S+ on "
                                                r"\S+urlMaps/tenfold-prod-url-map ended with RESOURCE_NOT_READY"):
        router.set_canary_percent(25)
    assert fake.apis()[-1] == "globalOperations.wait", "no claim of success after a failed operation"
    assert router.canary_percent() == 0


def test_a_url_map_changed_by_hand_is_refused_then_rewritten(fake: Any, router: UrlMapRouter) -> None:
    weighted = fake.url_map["pathMatchers"][0]["routeRules"][-1]["routeAction"]["weightedBackendServices"]
    weighted[0]["weight"], weighted[1]["weight"] = 50, 50  # someone moved the weights in the console
    with pytest.raises(ValueError, match="disagrees with itself"):
        router.canary_percent()
    router.set_canary_percent(50)  # even to the percent the weights claim: the rules are rewritten too
    assert "urlMaps.patch" in fake.apis() and router.canary_percent() == 50


def test_a_missing_url_map_says_to_deploy_the_stack(fake: Any) -> None:
    other = S.model_copy(update={"serving": S.serving.model_copy(update={
        "load_balancer": LB.model_copy(update={"url_map": "nope"})})})
    with pytest.raises(CloudRolloutError, match=r"URL map nope does not exist .* deploy the platform stack"):
        UrlMapRouter.from_settings(other, api=fc.compute_api(fake)).canary_percent()


def test_recorded_shapes_are_json_of_this_environment() -> None:
    for path in sorted(fc.RECORDED.glob("*.json")):
        text = path.read_text()
        json.loads(text)
        assert "tenfold-dev" not in text, path.name
