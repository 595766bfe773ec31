"""A model whose output is not a probability (NaN, an infinity, 1.7) is a broken model: 503 ``model_error`` with
Retry-After, nothing cached or sampled, and the replica out of the rotation after the failures in a row.

The replica serves the real :class:`ServedModel` (its ``predict`` is under test) with stub online features and a stub
model folder, for a workload of this file's own (a request of one free-text field), in process: no lake, registry or
Pub/Sub.
"""

from __future__ import annotations

import dataclasses
import math
import types
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
import torch
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from pydantic import BaseModel, ConfigDict
from workload_stubs import install_workload, until

from tenfold.local import local_settings
from tenfold.serving.app import MODEL_FAILURES_OUT, create_app
from tenfold.serving.auth import ensure_token
from tenfold.serving.cache import PredictionCache
from tenfold.serving.loading import ModelOutputError, ServedModel

PREDICT = "/v1/predict"


class NoteRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    note: str
    user_key: str | None = None


class Features:
    """Online features that accept every request and assemble one row per request (no feature columns)."""

    def check(self, request: BaseModel) -> None:
        return None

    def assemble(self, requests: list[BaseModel]) -> pa.Table:
        return pa.table({"note": [getattr(r, "note", "") for r in requests]})


class Folder:
    """A model folder whose ``predict_proba`` answers ``value`` for every row (0.25 when ``value`` is None)."""

    workload = types.SimpleNamespace(name="notes", contract=types.SimpleNamespace(online_columns=(),
                                                                         arrow_schema=lambda: pa.schema([])))

    def __init__(self) -> None:
        self.value: float | None = None
        self.calls = 0

    def predict_proba(self, table: pa.Table) -> np.ndarray:
        self.calls += 1
        return np.full(table.num_rows, 0.25 if self.value is None else self.value)


class Publisher:
    """Records the monitoring samples queued (what ``Publisher.publish_sample`` would send to Pub/Sub)."""

    def __init__(self) -> None:
        self.samples: list[Any] = []

    def publish_sample(self, record: Any) -> bool:
        self.samples.append(record)
        return True

    def close(self, timeout_s: float = 5.0) -> int:
        return 0


@dataclasses.dataclass
class Replica:
    client: TestClient
    auth: dict[str, str]
    folder: Folder
    cache: PredictionCache
    publisher: Publisher

    def predict(self, body: dict[str, Any]) -> Any:
        return self.client.post(PREDICT, json=body, headers=self.auth)


def _metric(client: TestClient, name: str) -> float:
    text = client.get("/metrics").text
    values = [s.value for family in text_string_to_metric_families(text) for s in family.samples if s.name == name]
    assert len(values) <= 1, values
    return values[0] if values else 0.0


@pytest.fixture
def replica(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Replica]:
    """A ready replica serving the real ServedModel over ``Folder``, sampling every prediction, with its own cache."""
    named = install_workload(monkeypatch, "notes", NoteRequest)
    settings = local_settings(tmp_path, environ={**named,
                                                 "TENFOLD_SERVING__SERVER__PREDICTION_SAMPLE_RATE": "1"})
    folder, cache, publisher = Folder(), PredictionCache(1000), Publisher()
    served = ServedModel(version="v9", loaded=folder, features=Features(),  # type: ignore[arg-type]
                         device=torch.device("cpu"))
    app = create_app(settings, loader=lambda _settings, _ref: served, cache=cache,
                     publisher=publisher)  # type: ignore[arg-type]
    with TestClient(app) as client:
        until(lambda: client.get("/readyz").status_code == 200, 30)
        yield Replica(client, {"Authorization": f"Bearer {ensure_token(settings)}"}, folder, cache, publisher)


def _assert_model_error(r: Any) -> None:
    assert r.status_code == 503, r.text
    assert r.json()["error"] == "model_error", r.text
    assert "ModelOutputError" in r.json()["message"], r.text
    assert r.headers.get("Retry-After", "").isdigit(), r.headers


def test_a_nan_output_is_a_503_model_error_never_cached_nor_sampled_and_takes_the_replica_out(
        replica: Replica) -> None:
    """NaN went into the cache and the monitoring sample, then JSONResponse refused it: a 500 counted as the server's
    bug, the batcher took the call for a success (so /readyz stayed 200), and every repeat was a cache hit and
    another 500."""
    assert replica.predict({"note": "warm"}).status_code == 200  # a good call first: its sample and cache entry
    cached, sampled = len(replica.cache), len(replica.publisher.samples)
    assert (cached, sampled) == (1, 1)
    replica.folder.value = math.nan
    for i in range(MODEL_FAILURES_OUT):
        _assert_model_error(replica.predict({"note": "same"}))  # the same request: a repeat is no cache hit
        assert replica.folder.calls == 2 + i  # each reached the model
        if i < MODEL_FAILURES_OUT - 1:
            assert replica.client.get("/readyz").status_code == 200
    assert len(replica.cache) == cached and len(replica.publisher.samples) == sampled
    assert _metric(replica.client, "tenfold_unhandled_errors_total") == 0
    r = replica.client.get("/readyz")
    assert r.status_code == 503 and r.json()["status"] == "failing", r.text
    assert _metric(replica.client, "tenfold_ready") == 0


@pytest.mark.parametrize("value", [1.7, -0.1, math.inf])
def test_an_output_outside_0_1_is_a_503_model_error_not_a_200(replica: Replica, value: float) -> None:
    """1.7 was answered 200 with probability 1.7, contradicting the Prediction schema (ge=0, le=1)."""
    replica.folder.value = value
    _assert_model_error(replica.predict({"note": "one"}))
    _assert_model_error(replica.predict({"requests": [{"note": "a"}, {"note": "b"}]}))
    assert len(replica.cache) == 0 and replica.publisher.samples == []
    assert _metric(replica.client, "tenfold_unhandled_errors_total") == 0
    replica.folder.value = None  # a model answering probabilities again is served
    r = replica.predict({"note": "one"})
    assert r.status_code == 200 and r.json()["probability"] == 0.25, r.text


def test_the_refusal_names_the_version_how_many_values_and_the_first_bad_one() -> None:
    folder = Folder()
    served = ServedModel(version="v9", loaded=folder, features=Features(),  # type: ignore[arg-type]
                         device=torch.device("cpu"))

    class Mixed(Folder):
        def predict_proba(self, table: pa.Table) -> np.ndarray:
            return np.array([0.5, 1.7, math.nan, 0.1])

    served.loaded = Mixed()  # type: ignore[assignment]
    requests: Sequence[BaseModel] = [NoteRequest(note=str(i)) for i in range(4)]
    with pytest.raises(ModelOutputError, match=r"model version v9 returned 2 of 4 values that are not probabilities "
                                               r".*the first 1\.7"):
        served.predict(requests)
    served.loaded = folder  # type: ignore[assignment]
    assert served.predict(requests) == [0.25] * 4
