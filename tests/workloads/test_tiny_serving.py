"""What the platform sends and fits for a workload, with the tiny workload (whose request model forbids extra
fields and has no user key): the traffic replay (`make demo`'s and a canary's load) and the gradient-boosting
baseline every evaluation fits beside the model."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pyarrow as pa
import pytest

from tenfold.config import Settings
from tenfold.data.lake import Partition
from tenfold.model.preprocessing import Preprocessor
from tenfold.training.baselines import MAX_CATEGORIES, GradientBoostingBaseline
from tenfold.workloads import get_workload

HERE = Path(__file__).resolve().parent


@pytest.fixture
def tiny(make_settings: Callable[..., Settings], local_settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.syspath_prepend(str(HERE))
    return make_settings(on=local_settings, workload="tiny_workload:WORKLOAD")


def test_the_traffic_replay_serves_a_workload_whose_requests_have_no_user_key(tiny: Settings) -> None:
    """The replay sends the user key in the header (where HAProxy and the replica read it), never as a body field
    the workload's request model may forbid: every request of the tiny workload is answered."""
    import tiny_workload as tw  # type: ignore[import-not-found]
    import torch

    from tenfold.serving import traffic
    from tenfold.serving.app import create_app
    from tenfold.serving.auth import ensure_token
    from tenfold.serving.loading import ServedModel

    workload = get_workload(tiny)
    assert "user_key" not in workload.request_model.model_fields
    features = workload.online_features({"2020-03": {"devices": tw.read("devices")}})

    class Loaded:  # the model's answer does not matter here: what reaches it does
        workload = get_workload(tiny)

        def predict_proba(self, table: pa.Table) -> np.ndarray:
            return np.full(table.num_rows, 0.5)

    class Publisher:
        def publish_sample(self, *args: Any) -> None:
            pass

        def close(self, *args: Any) -> None:
            pass

    app = create_app(tiny, publisher=Publisher(),  # type: ignore[arg-type]
                     loader=lambda s, ref: ServedModel(version="v1", loaded=Loaded(), features=features,  # type: ignore[arg-type]
                                                       device=torch.device("cpu")))
    token = ensure_token(tiny)
    items = workload.replay(Partition(2020, 3))[:20]
    in_process = httpx.AsyncClient.__init__

    def to_the_app(self: httpx.AsyncClient, *args: Any, **kwargs: Any) -> None:
        kwargs.pop("limits", None)
        in_process(self, *args, transport=httpx.ASGITransport(app=app), **kwargs)

    async def replay() -> traffic.TrafficReport:
        async with app.router.lifespan_context(app):
            for _ in range(200):
                if app.state.replica.ready:
                    break
                await asyncio.sleep(0.05)
            report = traffic.TrafficReport()
            await traffic._replay(tiny, items, base_url="http://lb", token=token, concurrency=2, users=10,
                                  send_feedback=False, report=report)
            return report

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(httpx.AsyncClient, "__init__", to_the_app)
        report = asyncio.run(replay())
    assert dict(report.statuses) == {200: len(items)}, report.errors[:3]


def _tiny_app(tiny: Settings, online: Callable[[Any], Any] | None = None) -> Any:
    """A replica of the tiny workload whose model scores 0.1 to 0.9 across a batch; ``online(lookups)`` (the
    workload's ``online_features`` unless given) builds its online assembly."""
    import tiny_workload as tw  # type: ignore[import-not-found]
    import torch

    from tenfold.serving.app import create_app
    from tenfold.serving.loading import ServedModel

    features = (online or get_workload(tiny).online_features)({"2020-03": {"devices": tw.read("devices")}})

    class Loaded:  # its preprocessing refuses a table without the contract's features, as a real model's does
        workload = get_workload(tiny)
        preprocessor = Preprocessor(categorical_columns=("segment",), numeric_columns=("x1", "x2"),
                                    vocabularies={"segment": ["a", "b", "c", "unknown"]},
                                    means={"x1": 0.0, "x2": 0.0}, stds={"x1": 1.0, "x2": 1.0})

        def predict_proba(self, table: pa.Table) -> np.ndarray:
            self.preprocessor.transform(table)
            return np.linspace(0.1, 0.9, table.num_rows)

    class Publisher:
        def publish_sample(self, *args: Any) -> None:
            pass

        def close(self, *args: Any) -> None:
            pass

    return create_app(tiny, publisher=Publisher(),  # type: ignore[arg-type]
                      loader=lambda s, ref: ServedModel(version="v1", loaded=Loaded(), features=features,  # type: ignore[arg-type]
                                                        device=torch.device("cpu")))


def test_a_workload_without_a_batch_key_of_its_own_takes_batches_under_requests(tiny: Settings) -> None:
    """The batch envelope is the workload's (flights: {"flights": [...]}), "requests" where it names none: a tiny
    workload's batch under "requests" is answered request by request, and under "flights" it is a 422."""
    from tenfold.serving.auth import ensure_token

    app, token = _tiny_app(tiny), ensure_token(tiny)
    bodies = [item.request for item in get_workload(tiny).replay(Partition(2020, 3))[:3]]
    predict = f"{tiny.serving.server.api_prefix}/predict"

    async def post(*bodies: Any) -> list[httpx.Response]:
        async with app.router.lifespan_context(app):
            for _ in range(200):
                if app.state.replica.ready:
                    break
                await asyncio.sleep(0.05)
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://replica") as client:
                return [await client.post(predict, json=body, headers={"Authorization": f"Bearer {token}"})
                        for body in bodies]

    answer, refused = asyncio.run(post({"requests": bodies}, {"flights": bodies}))
    assert answer.status_code == 200, answer.text
    assert [round(p["probability"], 3) for p in answer.json()["predictions"]] == [0.1, 0.5, 0.9]
    # Read as one request of the tiny model, which has no such field.
    assert refused.status_code == 422, refused.text
    assert {"field": "flights", "message": "Extra inputs are not permitted"} in refused.json()["errors"], refused.text
    schema = app.openapi()["components"]["schemas"]["BatchPredictRequest"]
    assert list(schema["properties"]) == ["requests"]


def test_a_request_the_workloads_assembly_fails_on_is_no_model_failure_and_no_retry(tiny: Settings) -> None:
    """An event_id past int64 passes the tiny request model (no upper bound) and fails the workload's assembly: each
    was answered 503 "model_error ... retry", and after five the replica left the rotation (/readyz and /healthz 503),
    though its model was fine: the same request fails the same way everywhere."""
    from tenfold.serving.app import MODEL_FAILURES_OUT
    from tenfold.serving.auth import ensure_token

    app, token = _tiny_app(tiny), ensure_token(tiny)
    bad = {"year": 2020, "month": 3, "event_id": 2**63, "device_id": "d01", "x1": 0.3, "x2": -1.2}
    good = get_workload(tiny).replay(Partition(2020, 3))[0].request
    answers, ready, alive = _predict_once_loaded(tiny, app, token, [bad] * (MODEL_FAILURES_OUT + 1) + [good])
    refused, answered = answers[:-1], answers[-1]
    assert [r.status_code for r in refused] == [500] * (MODEL_FAILURES_OUT + 1), [r.text for r in refused]
    assert all("Retry-After" not in r.headers and "model_error" not in r.text for r in refused)
    assert answered.status_code == 200 and ready == 200 and alive == 200


def _predict_once_loaded(tiny: Settings, app: Any, token: str,
                         bodies: list[dict[str, Any]]) -> tuple[list[httpx.Response], int, int]:
    """Each body POSTed to ``app``'s predict, in order, once its model is loaded; then its readiness and liveness
    codes."""
    predict = f"{tiny.serving.server.api_prefix}/predict"

    async def post() -> tuple[list[httpx.Response], int, int]:
        async with app.router.lifespan_context(app):
            for _ in range(600):
                if app.state.replica.ready:
                    break
                await asyncio.sleep(0.05)
            assert app.state.replica.ready, "the tiny model did not load within 30 s"
            transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
            async with httpx.AsyncClient(transport=transport, base_url="http://replica") as client:
                auth = {"Authorization": f"Bearer {token}"}
                answers = [await client.post(predict, json=body, headers=auth) for body in bodies]
                ready = (await client.get(tiny.serving.server.ready_path)).status_code
                alive = (await client.get("/healthz")).status_code
                return answers, ready, alive

    return asyncio.run(post())


def _drops_x2(table: pa.Table) -> pa.Table:
    return table.select([c for c in table.column_names if c != "x2"])


def _one_row_short(table: pa.Table) -> pa.Table:
    return table.slice(0, table.num_rows - 1)


@pytest.mark.parametrize(("breach", "named"), [(_drops_x2, "without the feature columns ['x2']"),
                                               (_one_row_short, "returned 0 rows for 1 requests")])
def test_an_assembly_returning_a_table_outside_its_contract_is_no_model_failure_and_no_retry(
        tiny: Settings, breach: Callable[[pa.Table], pa.Table], named: str, caplog: pytest.LogCaptureFixture) -> None:
    """A workload's assemble that drops a feature column or returns fewer rows than requests broke the model call
    after it (a PreprocessingError, "the model returned N results for M rows"): each request was answered 503
    "model_error ... retry" and after five the replica left the rotation, as would every replica running the same
    workload code. It is the workload's failure: a 500 without Retry-After, logged naming what is wrong, the
    replica kept in the rotation."""
    import tiny_workload as tw

    from tenfold.serving.app import MODEL_FAILURES_OUT
    from tenfold.serving.auth import ensure_token
    from tenfold.serving.loading import AssemblyError

    class Breaching(tw.TinyOnline):  # type: ignore[misc]
        def assemble(self, requests: Any) -> pa.Table:
            return breach(super().assemble(requests))

    app, token = _tiny_app(tiny, Breaching), ensure_token(tiny)
    good = get_workload(tiny).replay(Partition(2020, 3))[0].request
    refused, ready, alive = _predict_once_loaded(tiny, app, token, [good] * (MODEL_FAILURES_OUT + 1))
    assert [r.status_code for r in refused] == [500] * (MODEL_FAILURES_OUT + 1), [r.text for r in refused]
    assert all("Retry-After" not in r.headers and "model_error" not in r.text for r in refused)
    assert ready == 200 and alive == 200
    logged = [str(r.exc_info[1]) for r in caplog.records if r.exc_info and isinstance(r.exc_info[1], AssemblyError)]
    assert len(logged) == MODEL_FAILURES_OUT + 1, [r.getMessage() for r in caplog.records]
    assert all("OnlineFeatures.assemble (Breaching.assemble)" in m and named in m for m in logged), logged[0]


def test_a_request_model_ignoring_unknown_fields_is_refused_when_the_server_starts(tiny: Settings) -> None:
    """docs/serving.md promises a 422 for an unknown field, but the server validates with the workload's model as it
    is: one with pydantic's default (extra fields ignored) scored a misspelt field as a null. Refused before anything
    is served, naming the model and the fix."""
    import dataclasses

    from pydantic import BaseModel, ConfigDict

    from tenfold import workloads
    from tenfold.serving.app import create_app
    from tenfold.workloads import WorkloadError

    workload = get_workload(tiny)

    class Lenient(workload.request_model):  # type: ignore[name-defined,misc]
        model_config = ConfigDict(extra="ignore")

    class Plain(BaseModel):
        tailnum: str

    for model, extra in ((Lenient, "'ignore'"), (Plain, "None")):
        lenient = dataclasses.replace(workload, request_model=model)  # type: ignore[type-var]
        with pytest.MonkeyPatch.context() as mp:  # the lenient workload is the one the settings name
            mp.setitem(workloads._LOADED, tiny.workload, lenient)
            with pytest.raises(WorkloadError, match=rf"workload 'tiny': its request_model .*{model.__name__} does not "
                                                    rf"forbid unknown fields \(extra is {extra}\).* "
                                                    r'model_config = ConfigDict\(extra="forbid"\)'):
                create_app(tiny)
    # The tiny workload's own model forbids them, and is served.
    assert workload.request_model.model_config.get("extra") == "forbid"
    create_app(tiny)


def test_a_request_field_named_like_the_batch_key_is_refused_when_the_server_starts(tiny: Settings) -> None:
    """A single request with a "requests" field would read as a batch: the workload is refused, naming the field
    and the way out, before anything is served."""
    import dataclasses
    import types

    from pydantic import BaseModel, ConfigDict

    from tenfold.serving.app import create_app
    from tenfold.workloads import WorkloadError, batch_key

    workload = get_workload(tiny)

    class Clashing(BaseModel):
        model_config = ConfigDict(extra="forbid")
        requests: int

    clashing = dataclasses.replace(workload, request_model=Clashing)  # type: ignore[type-var]
    with pytest.raises(WorkloadError, match=r"has a field 'requests', the key a batch .* set the workload's batch_key"):
        batch_key(clashing)
    renamed = types.SimpleNamespace(name=workload.name, request_model=Clashing, batch_key="items")
    assert batch_key(renamed) == "items"  # type: ignore[arg-type]
    from tenfold import workloads

    with pytest.MonkeyPatch.context() as mp:  # the clashing workload is the one the settings name
        mp.setitem(workloads._LOADED, tiny.workload, clashing)
        with pytest.raises(WorkloadError, match="has a field 'requests'"):
            create_app(tiny)


def _table(n: int, categories: int, numeric: bool) -> pa.Table:
    rng = np.random.default_rng(0)
    cols: dict[str, Any] = {"segment": [f"s{i % categories}" for i in range(n)],
                            "label": rng.integers(0, 2, n).astype(np.int32)}
    if numeric:
        cols["x1"] = rng.normal(size=n)
    return pa.table(cols)


@pytest.mark.parametrize(("categories", "numeric"), [(MAX_CATEGORIES + 45, True), (6, False)])
def test_the_gradient_boosting_baseline_fits_wide_categoricals_and_no_numeric_columns(categories: int,
                                                                                     numeric: bool) -> None:
    """scikit-learn bins at most 255 values of a categorical (a user or product id has thousands), and a contract
    may have no numeric column: neither may stop every evaluation of the workload."""
    table = _table(2000, categories, numeric)
    pre = Preprocessor(categorical_columns=("segment",), numeric_columns=("x1",) if numeric else (),
                       vocabularies={"segment": sorted({f"s{i}" for i in range(categories)})},
                       means={"x1": 0.0} if numeric else {}, stds={"x1": 1.0} if numeric else {})
    baseline = GradientBoostingBaseline(preprocessor=pre, label="label", max_iter=5).fit(table)
    p = baseline.predict_proba(table)
    assert p.shape == (2000,) and np.isfinite(p).all() and ((p > 0) & (p < 1)).all()
