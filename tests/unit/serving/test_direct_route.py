"""The replica's route class: endpoints that take the request and return a response skip FastAPI's handler;
any other endpoint keeps it (its parameters parsed and validated as usual)."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient

from tenfold.serving.app import _DirectRoute


def test_request_only_endpoints_are_called_directly_and_others_keep_fastapi() -> None:
    app = FastAPI()
    app.router.route_class = _DirectRoute

    @app.post("/direct", response_model=dict)
    async def direct(request: Request) -> Response:
        return JSONResponse({"body": (await request.body()).decode()})

    @app.get("/bare")
    async def bare() -> Response:
        return JSONResponse({"ok": True})

    @app.get("/param")
    async def param(q: int) -> dict[str, int]:
        return {"q": q}

    routes = {r.path: r for r in app.routes if isinstance(r, APIRoute)}
    assert all(isinstance(r, _DirectRoute) for r in routes.values())
    assert routes["/direct"].get_route_handler() is direct  # no FastAPI handler between the request and it
    assert routes["/param"].get_route_handler() is not param
    client = TestClient(app)
    assert client.post("/direct", content=b"abc").json() == {"body": "abc"}
    assert client.get("/bare").json() == {"ok": True}
    assert client.get("/param", params={"q": "7"}).json() == {"q": 7}
    assert client.get("/param", params={"q": "x"}).status_code == 422  # FastAPI still validates it
    assert "/direct" in app.openapi()["paths"]  # documented as before
