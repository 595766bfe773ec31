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
