"""A workload's online assembly returning a column of another type than its contract's is the workload's fault: a
500 naming the column, never counted against the model; a type that casts exactly (an ``int32`` for an ``int64``) is
cast and scored.

The replica serves the real :class:`ServedModel` with stub online features and a model folder whose preprocessing is
the platform's (it casts the numeric columns to float64, as a real model's does), in process: no lake or registry.
"""

from __future__ import annotations

import dataclasses
import logging
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
import torch
from fastapi.testclient import TestClient
from pydantic import BaseModel, ConfigDict
from workload_stubs import install_workload, until

from tenfold.local import local_settings
from tenfold.model.preprocessing import Preprocessor
from tenfold.serving.app import MODEL_FAILURES_OUT, create_app
from tenfold.serving.auth import ensure_token
from tenfold.serving.loading import AssemblyError, ServedModel
from tenfold.workloads import FeatureContract

PREDICT = "/v1/predict"

CONTRACT = FeatureContract(key_columns=("event_id",), label="y", categorical_columns=("segment",),
                           numeric_columns=("x1", "x2"),
                           column_types={"event_id": "string", "segment": "string", "x1": "float64", "x2": "int64",
                                         "y": "int32"})


class ReadingRequest(BaseModel):
    """A reading whose ``x1`` comes as text (a workload must parse it: the breaching one passes it through)."""

    model_config = ConfigDict(extra="forbid")

    event_id: str
    x1: str
    user_key: str | None = None


def _parsed(requests: list[Any]) -> pa.Table:
    """What the contract asks for: every online column of its type."""
    return pa.table({"event_id": pa.array([r.event_id for r in requests], pa.string()),
                     "segment": pa.array(["a"] * len(requests), pa.string()),
                     "x1": pa.array([float(r.x1) if r.x1.replace(".", "").isdigit() else None for r in requests],
                                    pa.float64()),
                     "x2": pa.array([7] * len(requests), pa.int64())})


def _x1_as_text(table: pa.Table, requests: list[Any]) -> pa.Table:
    """The request's text passed through: a string ``x1`` where the contract says float64."""
    return table.set_column(2, "x1", pa.array([r.x1 for r in requests], pa.string()))


def _x2_as_int32(table: pa.Table, requests: list[Any]) -> pa.Table:
    return table.set_column(3, "x2", table.column("x2").cast(pa.int32()))


def _x2_as_float(table: pa.Table, requests: list[Any]) -> pa.Table:
    """A float64 ``x2`` where the contract says int64: a type-level breach (7.5 is no int64; 7.0 is not cast either)."""
    return table.set_column(3, "x2", pa.array([7.5] * table.num_rows, pa.float64()))


def _x2_beyond_int64(table: pa.Table, requests: list[Any]) -> pa.Table:
    """A uint64 ``x2`` where the contract says int64, of a value an int64 cannot hold."""
    return table.set_column(3, "x2", pa.array([2**63 + 1] * table.num_rows, pa.uint64()))


class Publisher:
    """Drops the monitoring samples (no Pub/Sub)."""

    def publish_sample(self, record: Any) -> bool:
        return True

    def close(self, timeout_s: float = 5.0) -> int:
        return 0


class Features:
    """Online features that accept every request and assemble it through ``breach`` (the contract's table else)."""

    def __init__(self) -> None:
        self.breach: Callable[[pa.Table, list[Any]], pa.Table] | None = None

    def check(self, request: BaseModel) -> None:
        return None

    def assemble(self, requests: list[Any]) -> pa.Table:
        table = _parsed(requests)
        return table if self.breach is None else self.breach(table, requests)


class Folder:
    """A model folder whose preprocessing refuses what a real one refuses; records the tables it was given."""

    workload = types.SimpleNamespace(name="readings", contract=CONTRACT)
    preprocessor = Preprocessor(categorical_columns=("segment",), numeric_columns=("x1", "x2"),
                                vocabularies={"segment": ["a", "b"]}, means={"x1": 0.0, "x2": 0.0},
                                stds={"x1": 1.0, "x2": 1.0})

    def __init__(self) -> None:
        self.tables: list[pa.Table] = []

    def predict_proba(self, table: pa.Table) -> np.ndarray:
        self.tables.append(table)
        self.preprocessor.transform(table)
        return np.full(table.num_rows, 0.25)


@dataclasses.dataclass
class Replica:
    client: TestClient
    auth: dict[str, str]
    features: Features
    folder: Folder

    def predict(self, body: dict[str, Any]) -> Any:
        return self.client.post(PREDICT, json=body, headers=self.auth)


@pytest.fixture
def replica(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Replica]:
    named = install_workload(monkeypatch, "readings", ReadingRequest)
    settings = local_settings(tmp_path, environ=named)
    features, folder = Features(), Folder()
    served = ServedModel(version="v3", loaded=folder, features=features,  # type: ignore[arg-type]
                         device=torch.device("cpu"))
    app = create_app(settings, loader=lambda _settings, _ref: served, publisher=Publisher())  # type: ignore[arg-type]
    with TestClient(app) as client:
        until(lambda: client.get("/readyz").status_code == 200, 30)
        yield Replica(client, {"Authorization": f"Bearer {ensure_token(settings)}"}, features, folder)


@pytest.mark.parametrize("x1", ["n/a", "1.5"])
def test_a_column_of_another_type_than_the_contracts_is_a_500_and_the_replica_stays_in_the_rotation(
        replica: Replica, caplog: pytest.LogCaptureFixture, x1: str) -> None:
    """A string ``x1`` where the contract says float64 broke the preprocessing's cast ("n/a": an ArrowInvalid),
    taken for the model's failure: 503 "model_error ... retry", and after five such requests every replica running
    the workload left the rotation. Or ("1.5") it was scored: refused by the type, not by whether a value parses."""
    assert replica.predict({"event_id": "e0", "x1": "2"}).status_code == 200  # the contract's table is scored
    replica.features.breach = _x1_as_text
    with caplog.at_level(logging.ERROR):
        answers = [replica.predict({"event_id": f"e{i + 1}", "x1": x1}) for i in range(MODEL_FAILURES_OUT + 1)]
    assert [r.status_code for r in answers] == [500] * (MODEL_FAILURES_OUT + 1), [r.text for r in answers]
    assert all("Retry-After" not in r.headers and "model_error" not in r.text for r in answers), answers[0].text
    assert len(replica.folder.tables) == 1  # the model was never given the breaching table
    assert replica.client.get("/readyz").status_code == 200
    logged = [str(r.exc_info[1]) for r in caplog.records if r.exc_info and isinstance(r.exc_info[1], AssemblyError)]
    assert len(logged) == MODEL_FAILURES_OUT + 1, [r.getMessage() for r in caplog.records]
    assert "(Features.assemble) returned the column 'x1' as string, not the contract's double" in logged[0], logged[0]
    replica.features.breach = None  # the workload fixed: served again
    assert replica.predict({"event_id": "e9", "x1": "3"}).status_code == 200


def test_a_column_that_casts_exactly_to_the_contracts_type_is_cast_and_scored(replica: Replica) -> None:
    """An int32 ``x2`` where the contract says int64 holds the same values: cast, the model given the contract's
    types, not refused."""
    replica.features.breach = _x2_as_int32
    r = replica.predict({"requests": [{"event_id": "a", "x1": "1"}, {"event_id": "b", "x1": "2"}]})
    assert r.status_code == 200, r.text
    (table,) = replica.folder.tables
    assert table.schema.field("x2").type == pa.int64() and table.column("x2").to_pylist() == [7, 7]


@pytest.mark.parametrize(("breach", "named"), [
    (_x2_as_float, r"returned the column 'x2' as double, not the contract's int64: fix it to return each column "
                   r"with the contract's type \(contract.column_types\)"),
    (_x2_beyond_int64, r"returned the column 'x2' as uint64 with values the contract's int64 cannot hold "
                       r"\(.*9223372036854775809.*\): fix it to return each column with the contract's type")])
def test_a_column_no_cast_keeps_the_values_of_is_refused_naming_it(
        breach: Callable[[pa.Table, list[Any]], pa.Table], named: str) -> None:
    """Never truncated (7.5 to 7) nor wrapped around: the model is not called."""
    features, folder = Features(), Folder()
    served = ServedModel(version="v3", loaded=folder, features=features,  # type: ignore[arg-type]
                         device=torch.device("cpu"))
    features.breach = breach
    request = ReadingRequest(event_id="a", x1="1")
    with pytest.raises(AssemblyError, match=named):
        served.predict([request])
    assert folder.tables == []
    features.breach = None
    assert served.predict([request]) == [0.25]
