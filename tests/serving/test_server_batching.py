"""Adaptive micro-batching in the real app: concurrent requests share model calls and get exactly what
they would get alone."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from tenfold.serving.app import create_app

N = 48


def _flights() -> list[dict[str, Any]]:
    origins, carriers = ("EWR", "JFK", "LGA"), ("UA", "AA", "DL", "B6")
    return [{"carrier": carriers[i % 4], "flight": 100 + i, "origin": origins[i % 3], "dest": "ATL",
             "sched_dep": f"2013-01-{1 + i % 28:02d}T{6 + i % 15:02d}:{(7 * i) % 60:02d}:00", "tailnum": f"N{i:04d}"}
            for i in range(N)]


async def _serve(app: Any, bodies: list[Any], headers: dict[str, str], concurrent: bool) -> list[Any]:
    async with app.router.lifespan_context(app):
        for _ in range(600):
            if app.state.replica.ready:
                break
            assert app.state.replica.status != "failed", app.state.replica.detail
            await asyncio.sleep(0.05)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://replica") as client:
            if concurrent:
                responses = await asyncio.gather(*(client.post("/v1/predict", json=b, headers=headers) for b in bodies))
            else:
                responses = [await client.post("/v1/predict", json=b, headers=headers) for b in bodies]
    assert [r.status_code for r in responses] == [200] * len(bodies), [r.text for r in responses if r.status_code != 200]
    return [r.json() for r in responses]


def test_concurrent_requests_share_model_calls_and_match_unbatched(
        serving_settings: Any, served_versions: Any, server_fields: Any, auth: dict[str, str]) -> None:
    flights = _flights()
    batched_settings = server_fields(serving_settings, max_batch_size=64, max_batch_wait_ms=250, cache_entries=0,
                                     prediction_sample_rate=0.0)
    batched = create_app(batched_settings)
    together = asyncio.run(_serve(batched, flights, auth, concurrent=True))
    calls = batched.state.metrics.value("tenfold_model_calls_total")
    rows = batched.state.metrics.value("tenfold_batch_size_sum")
    assert rows == N
    assert calls <= N / 8, f"{N} concurrent requests took {calls} model calls"

    alone_settings = server_fields(serving_settings, max_batch_size=1, cache_entries=0, prediction_sample_rate=0.0)
    alone = create_app(alone_settings)
    one_by_one = asyncio.run(_serve(alone, flights, auth, concurrent=False))
    assert alone.state.metrics.value("tenfold_model_calls_total") == N
    assert [r["probability"] for r in together] == pytest.approx([r["probability"] for r in one_by_one], abs=1e-6)


def test_a_batch_request_larger_than_the_batch_size_runs_alone(
        serving_settings: Any, served_versions: Any, server_fields: Any, auth: dict[str, str]) -> None:
    app = create_app(server_fields(serving_settings, max_batch_size=4, cache_entries=0, prediction_sample_rate=0.0))
    [body] = asyncio.run(_serve(app, [{"flights": _flights()[:10]}], auth, concurrent=True))
    assert len(body["predictions"]) == 10
    assert app.state.metrics.value("tenfold_model_calls_total") == 1
