"""Compute Engine at the client's transport boundary, for the cloud rollout tests.

There is no Compute Engine emulator, so :class:`FakeCompute` is a ``requests`` transport adapter mounted on
the session of each real ``google.cloud.compute_v1`` REST transport: the clients build, send and parse real
HTTP requests and responses, and the fake answers with the recorded API shapes in ``recorded/`` (see its
README), keeping just enough state (the URL map and its fingerprint, templates, one instance group, its VMs,
operations) for a rollout to be played through. Every request is recorded (method, path, JSON body) so the
tests assert exactly what the adapters asked Compute to do.

Knobs a test turns: ``fail_next[kind]`` (an operation that ends with an error), ``concurrent_url_map_changes``
(another writer changes the URL map between a read and a patch), ``stuck`` (a rolling update that never
finishes: no GPU capacity), ``unready`` (VMs the backend service does not find ready).
"""

from __future__ import annotations

import copy
import itertools
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import requests
from requests.adapters import BaseAdapter

RECORDED = Path(__file__).with_name("recorded")
API_ROOT = "/compute/v1/"
SELF_LINK_ROOT = "https://www.googleapis.com/compute/v1/"


def recorded(name: str) -> Any:
    return json.loads((RECORDED / f"{name}.json").read_text())


@dataclass(frozen=True)
class Call:
    method: str
    path: str  # below /compute/v1/, e.g. projects/p/global/urlMaps/m
    body: Any

    @property
    def api(self) -> str:
        """The method, in the API's own words (``urlMaps.patch``, ``globalOperations.wait``, ...)."""
        return _route(self.method, self.path)[0]


_ROUTES: list[tuple[str, str, str]] = [
    ("GET", r"projects/[^/]+/global/urlMaps/[^/]+", "urlMaps.get"),
    ("PATCH", r"projects/[^/]+/global/urlMaps/[^/]+", "urlMaps.patch"),
    ("POST", r"projects/[^/]+/global/operations/[^/]+/wait", "globalOperations.wait"),
    ("POST", r"projects/[^/]+/regions/[^/]+/operations/[^/]+/wait", "regionOperations.wait"),
    ("GET", r"projects/[^/]+/global/instanceTemplates/[^/]+", "instanceTemplates.get"),
    ("POST", r"projects/[^/]+/global/instanceTemplates", "instanceTemplates.insert"),
    ("GET", r"projects/[^/]+/regions/[^/]+/instanceGroupManagers/[^/]+", "regionInstanceGroupManagers.get"),
    ("PATCH", r"projects/[^/]+/regions/[^/]+/instanceGroupManagers/[^/]+", "regionInstanceGroupManagers.patch"),
    ("POST", r"projects/[^/]+/regions/[^/]+/instanceGroupManagers/[^/]+/listManagedInstances",
     "regionInstanceGroupManagers.listManagedInstances"),
    ("POST", r"projects/[^/]+/global/backendServices/[^/]+/getHealth", "backendServices.getHealth"),
]


def _route(method: str, path: str) -> tuple[str, list[str]]:
    for m, pattern, name in _ROUTES:
        if m == method and re.fullmatch(pattern, path):
            return name, path.split("/")
    return f"unknown {method} {path}", path.split("/")


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch, which Compute's PATCH methods apply: objects merge, lists are replaced."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def _error(status: int, name: str, resource: str) -> tuple[int, Any]:
    body = json.loads(json.dumps(recorded(name)).replace("projects/tenfold-prod-project/global/instanceTemplates/{name}", resource))
    return status, body


class FakeCompute(BaseAdapter):
    """The Compute REST API of one project, as far as the rollout's adapters use it."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[Call] = []
        self.url_map: dict[str, Any] = recorded("urlMaps.get")
        base = recorded("instanceTemplates.get")
        self.templates: dict[str, dict[str, Any]] = {base["name"]: base}
        self.group: dict[str, Any] = recorded("regionInstanceGroupManagers.get")
        self.instances: list[dict[str, Any]] = recorded("regionInstanceGroupManagers.listManagedInstances")["managedInstances"]
        self.health: dict[str, Any] = recorded("backendServices.getHealth")
        self.operations: dict[str, dict[str, Any]] = {}
        self._effects: dict[str, Callable[[], None]] = {}
        self._ids = itertools.count(1)
        self.fail_next: dict[str, dict[str, Any]] = {}  # API method -> the error its next operation ends with
        self.concurrent_url_map_changes: list[Callable[[dict[str, Any]], None]] = []  # one per urlMaps.patch
        self.stuck = False
        self.unready: set[str] = set()
        self.rolling: list[str] = []  # instances still on the old template during a rolling update

    # -- what the tests read -----------------------------------------------------------------------------

    def apis(self) -> list[str]:
        return [c.api for c in self.calls]

    def of(self, api: str) -> list[Call]:
        return [c for c in self.calls if c.api == api]

    # -- requests' adapter interface ---------------------------------------------------------------------

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:  # type: ignore[override]
        url = urlparse(request.url or "")
        assert url.netloc == "compute.googleapis.com" and url.path.startswith(API_ROOT), request.url
        path = url.path[len(API_ROOT):]
        body = json.loads(request.body) if request.body else None
        call = Call(str(request.method), path, body)
        self.calls.append(call)
        name, parts = _route(call.method, path)
        handler = getattr(self, "_" + name.replace(".", "_"), None)
        status, payload = handler(parts, body) if handler else (404, {"error": {"code": 404, "message": name}})
        response = requests.Response()
        response.status_code = status
        response._content = json.dumps(payload, indent=2).encode()
        response.headers["Content-Type"] = "application/json; charset=UTF-8"
        response.encoding = "utf-8"
        response.request, response.url = request, str(request.url)
        return response

    def close(self) -> None:
        return None

    # -- operations ----------------------------------------------------------------------------------------

    def _operation(self, kind: str, target: str, region: str | None, effect: Callable[[], None]) -> dict[str, Any]:
        op = recorded("regionOperations.running" if region else "globalOperations.running")
        n = next(self._ids)
        op["name"] = f"operation-17645191641{n:02d}-5f2a8c1e0b3d1-9b1e4c7a-{n:08x}"
        op["id"] = str(6264914733264190210 + n)
        op["operationType"] = kind.rsplit(".", 1)[-1]
        op["targetLink"] = target
        op["selfLink"] = op["selfLink"].rsplit("/", 1)[0] + "/" + op["name"]
        self.operations[op["name"]] = op
        error = self.fail_next.pop(kind, None)
        if error is None:
            self._effects[op["name"]] = effect
        else:
            self._effects[op["name"]] = lambda: op.update({**recorded("operation.error"),
                                                           "error": {"errors": [error]}})
        return copy.deepcopy(op)

    def _wait(self, name: str) -> tuple[int, Any]:
        op = self.operations[name]
        if op["status"] != "DONE":
            op.update(status="DONE", progress=100, endTime="2026-12-01T03:12:47.902-08:00")
            self._effects.pop(name)()
        return 200, copy.deepcopy(op)

    def _globalOperations_wait(self, parts: list[str], body: Any) -> tuple[int, Any]:
        return self._wait(parts[4])

    def _regionOperations_wait(self, parts: list[str], body: Any) -> tuple[int, Any]:
        return self._wait(parts[5])

    # -- URL map -------------------------------------------------------------------------------------------

    def _urlMaps_get(self, parts: list[str], body: Any) -> tuple[int, Any]:
        if parts[4] != self.url_map["name"]:
            return 404, {"error": {"code": 404, "message": f"The resource '{'/'.join(parts)}' was not found"}}
        return 200, copy.deepcopy(self.url_map)

    def _urlMaps_patch(self, parts: list[str], body: Any) -> tuple[int, Any]:
        if self.concurrent_url_map_changes:  # someone else's change lands between our read and our patch
            self.concurrent_url_map_changes.pop(0)(self.url_map)
            self.url_map["fingerprint"] = f"other{next(self._ids)}="
        if body.get("fingerprint") != self.url_map["fingerprint"]:
            return recorded("error.412")["error"]["code"], recorded("error.412")

        def apply() -> None:
            self.url_map = merge_patch(self.url_map, {k: v for k, v in body.items() if k != "fingerprint"})
            self.url_map["fingerprint"] = f"fp{next(self._ids)}="

        return 200, self._operation("urlMaps.patch", self.url_map["selfLink"], None, apply)

    # -- instance templates --------------------------------------------------------------------------------

    def _instanceTemplates_get(self, parts: list[str], body: Any) -> tuple[int, Any]:
        if parts[4] not in self.templates:
            return _error(404, "error.404", "/".join(parts))
        return 200, copy.deepcopy(self.templates[parts[4]])

    def _instanceTemplates_insert(self, parts: list[str], body: Any) -> tuple[int, Any]:
        name = body["name"]
        link = f"{SELF_LINK_ROOT}{'/'.join(parts)}/{name}"
        if name in self.templates:
            return _error(409, "error.409", f"{'/'.join(parts)}/{name}")

        def create() -> None:
            template = {"kind": "compute#instanceTemplate", "id": str(2236512284510983011 + next(self._ids)),
                        "creationTimestamp": "2026-12-01T03:12:45.001-08:00", **copy.deepcopy(body), "selfLink": link}
            template["properties"]["metadata"].update(kind="compute#metadata", fingerprint="n3wMd4t4Fp0=")
            self.templates[name] = template

        return 200, self._operation("instanceTemplates.insert", link, None, create)

    # -- the instance group --------------------------------------------------------------------------------

    def _group_ok(self, parts: list[str]) -> bool:
        return parts[5] == self.group["name"] and self.group["region"].endswith("/" + parts[3])

    def _regionInstanceGroupManagers_get(self, parts: list[str], body: Any) -> tuple[int, Any]:
        if not self._group_ok(parts):
            return 404, {"error": {"code": 404, "message": f"The resource '{'/'.join(parts)}' was not found"}}
        self._advance()
        return 200, copy.deepcopy(self.group)

    def _regionInstanceGroupManagers_patch(self, parts: list[str], body: Any) -> tuple[int, Any]:
        assert self._group_ok(parts)

        def start_update() -> None:
            self.group = merge_patch(self.group, body)
            template = self.group["versions"][0]["instanceTemplate"]
            self.group["instanceTemplate"] = template
            self.rolling = [i["instance"] for i in self.instances if i["version"]["instanceTemplate"] != template]
            reached = not self.rolling
            self.group["status"].update(isStable=reached, versionTarget={"isReached": reached})

        return 200, self._operation("regionInstanceGroupManagers.patch", self.group["selfLink"],
                                    self.group["region"], start_update)

    def _advance(self) -> None:
        """One step of the rolling update per look at the group: a VM on the new template replaces an old one."""
        if not self.rolling:
            return
        template = self.group["versions"][0]["instanceTemplate"]
        old = self.rolling[0]
        zone_url = old.rsplit("/instances/", 1)[0]
        new = f"{zone_url}/instances/{self.group['baseInstanceName']}-n{next(self._ids):03d}"
        if self.stuck:  # no capacity: the surge VM never gets past provisioning
            if not any(i["instanceStatus"] == "PROVISIONING" for i in self.instances):
                self.instances.append(self._instance(new, template, "PROVISIONING", "CREATING"))
            return
        self.rolling.pop(0)
        self.instances = [i for i in self.instances if i["instance"] != old] + [self._instance(new, template, "RUNNING", "NONE")]
        if not self.rolling:
            self.group["status"].update(isStable=True, versionTarget={"isReached": True})

    def _instance(self, url: str, template: str, status: str, action: str) -> dict[str, Any]:
        inst = copy.deepcopy(self.instances[0]) if self.instances else {}
        inst.update(instance=url, id=str(5120938475610293847 + next(self._ids)), instanceStatus=status, currentAction=action,
                    version={"name": self.group["versions"][0].get("name", "primary"), "instanceTemplate": template})
        return inst

    def _regionInstanceGroupManagers_listManagedInstances(self, parts: list[str], body: Any) -> tuple[int, Any]:
        assert self._group_ok(parts)
        return 200, {"managedInstances": copy.deepcopy(self.instances)}

    def _backendServices_getHealth(self, parts: list[str], body: Any) -> tuple[int, Any]:
        assert body == {"group": self.group["instanceGroup"]}, body
        sample = self.health["healthStatus"][0]
        statuses = [{**sample, "instance": i["instance"], "ipAddress": f"10.10.0.{k + 2}",
                     "healthState": "UNHEALTHY" if i["instance"].rsplit("/", 1)[-1] in self.unready else "HEALTHY"}
                    for k, i in enumerate(self.instances) if i["instanceStatus"] == "RUNNING"]
        return 200, {"kind": self.health["kind"], "healthStatus": statuses}


def compute_api(fake: FakeCompute) -> Any:
    """A :class:`tenfold.rollout.cloud.ComputeApi` of real REST clients whose HTTP goes to ``fake``."""
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import compute_v1

    from tenfold.rollout.cloud import ComputeApi

    def client(cls: Any) -> Any:
        transport = cls.get_transport_class("rest")(credentials=AnonymousCredentials())
        # The REST transport's requests session is the boundary: everything above it is the real client.
        transport._session.mount("https://", fake)
        return cls(transport=transport)

    return ComputeApi(
        url_maps=client(compute_v1.UrlMapsClient),
        global_operations=client(compute_v1.GlobalOperationsClient),
        region_operations=client(compute_v1.RegionOperationsClient),
        instance_templates=client(compute_v1.InstanceTemplatesClient),
        region_instance_group_managers=client(compute_v1.RegionInstanceGroupManagersClient),
        backend_services=client(compute_v1.BackendServicesClient),
    )


class FakeClock:
    """A monotonic clock that moves only when the code under test sleeps: waits end by count, not by time."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
