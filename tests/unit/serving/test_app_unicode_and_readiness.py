"""The app's answers that need no registry: a string that is not Unicode is the client's 422 (never a 500 counted as a
bug), and ``tenfold_ready`` says what ``/readyz`` says, also while a model call hangs or the model keeps failing.

The replica serves a workload of this file's own (the flights workload with a request of one free-text field) and a
stub model, so the app runs in process with no lake, registry or Pub/Sub.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from pydantic import BaseModel, ConfigDict
from workload_stubs import install_workload, until

from tenfold.local import local_settings
from tenfold.serving.app import MODEL_FAILURES_OUT, create_app
from tenfold.serving.auth import ensure_token
from tenfold.serving.loading import ServedModel

PREDICT = "/v1/predict"


class FreeTextRequest(BaseModel):
    """A request with a plain, unconstrained ``str`` field, as any workload of one's own may declare."""

    model_config = ConfigDict(extra="forbid")

    note: str
    user_key: str | None = None


class StubModel(ServedModel):
    """Scores every request 0.25; ``gate`` (when set) holds each forward pass until it is set, ``broken`` fails it."""

    gate: threading.Event | None = None
    entered: threading.Event | None = None
    broken: threading.Event | None = None

    def check(self, request: BaseModel) -> None:
        return None

    def predict(self, requests: Sequence[BaseModel]) -> list[float]:
        if self.entered is not None:
            self.entered.set()
        if self.gate is not None:
            self.gate.wait(60)
        if self.broken is not None and self.broken.is_set():
            raise RuntimeError("the device is gone")
        return [0.25] * len(requests)


@pytest.fixture
def serve(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., tuple[TestClient, dict[str, str]]]]:
    """``serve(model, **server_env)`` -> a ready TestClient on ``create_app`` serving ``model`` for the free-text
    workload, and its Authorization header."""
    named = install_workload(monkeypatch, "freetext", FreeTextRequest)
    opened: list[TestClient] = []

    def make(model: StubModel, **server: str) -> tuple[TestClient, dict[str, str]]:
        environ = {**named, "TENFOLD_SERVING__SERVER__PREDICTION_SAMPLE_RATE": "0",
                   **{f"TENFOLD_SERVING__SERVER__{k.upper()}": v for k, v in server.items()}}
        settings = local_settings(tmp_path, environ=environ)
        token = ensure_token(settings)
        app = create_app(settings, loader=lambda _settings, _ref: model)
        client = TestClient(app)
        client.__enter__()
        opened.append(client)
        until(lambda: client.get("/readyz").status_code == 200, 30)
        return client, {"Authorization": f"Bearer {token}"}

    yield make
    for client in opened:
        client.__exit__(None, None, None)


def _stub(**events: threading.Event) -> StubModel:
    model = StubModel("v1", None, None, None)  # type: ignore[arg-type]
    for name, event in events.items():
        setattr(model, name, event)
    return model


def _metric(client: TestClient, name: str) -> float:
    """The one sample ``name`` of the replica's /metrics (0 when it has none)."""
    text = client.get("/metrics").text
    values = [s.value for family in text_string_to_metric_families(text) for s in family.samples if s.name == name]
    assert len(values) <= 1, values
    return values[0] if values else 0.0


@pytest.mark.parametrize(("body", "field"), [
    ('{"note": "a\\ud800b"}', "note"),                               # a high surrogate alone
    ('{"note": "\\udc00", "user_key": "u-1"}', "note"),              # a low one
    ('{"requests": [{"note": "ok"}, {"note": "\\uDBFF"}]}', "requests[1].note"),  # in a batch, upper-case hex
    ('{"note": "x", "\\ud800": 1}', "\ud800"),                       # a key, quoted as it was sent
])
def test_an_unpaired_surrogate_is_a_422_naming_the_field_not_a_counted_500(
        serve: Callable[..., tuple[TestClient, dict[str, str]]], body: str, field: str) -> None:
    """json.loads takes "\\ud800" and pydantic takes it into a plain str; the prediction cache's key could not serialise
    it, outside every try: a 500 "internal" counted in tenfold_unhandled_errors_total."""
    client, auth = serve(_stub())
    r = client.post(PREDICT, content=body.encode(), headers={**auth, "Content-Type": "application/json"})
    assert r.status_code == 422, r.text
    answer = r.json()
    assert answer["error"] == "invalid_request" and answer["field"] == field, answer
    assert answer["errors"] == [{"field": field, "message": answer["errors"][0]["message"]}], answer
    assert "not valid Unicode: an unpaired surrogate" in answer["errors"][0]["message"], answer
    assert answer["message"].startswith(f"{field}: not valid Unicode"), answer
    assert _metric(client, "tenfold_unhandled_errors_total") == 0


def test_a_surrogate_sent_as_raw_bytes_is_refused_too(serve: Callable[..., tuple[TestClient, dict[str, str]]]) -> None:
    """json.loads decodes bytes with surrogatepass: ED A0 80 (a surrogate's UTF-8-like bytes) reads as "\\ud800"."""
    client, auth = serve(_stub())
    r = client.post(PREDICT, content=b'{"note": "\xed\xa0\x80"}', headers={**auth, "Content-Type": "application/json"})
    assert r.status_code == 422 and r.json()["field"] == "note", r.text
    assert _metric(client, "tenfold_unhandled_errors_total") == 0


@pytest.mark.parametrize(("body", "field"), [
    ('{"prediction_id": "p\\ud800", "outcome": 1}', "prediction_id"),
    ('{"prediction_id": "p-1", "outcome": 1, "observed_at": "\\udfff"}', "observed_at"),
])
def test_feedback_holding_an_unpaired_surrogate_is_a_422_too(
        serve: Callable[..., tuple[TestClient, dict[str, str]]], body: str, field: str) -> None:
    """Feedback's fields all have a pattern, a type or a set of values: its own validation refuses the surrogate."""
    client, auth = serve(_stub())
    r = client.post("/v1/feedback", content=body.encode(), headers={**auth, "Content-Type": "application/json"})
    assert r.status_code == 422 and r.json()["field"] == field, r.text
    assert _metric(client, "tenfold_unhandled_errors_total") == 0


def test_a_paired_surrogate_escape_is_one_character_and_is_served(
        serve: Callable[..., tuple[TestClient, dict[str, str]]]) -> None:
    client, auth = serve(_stub())
    for body in ('{"note": "smile \\ud83d\\ude00"}', '{"note": "smile \\uD83D\\uDE00", "user_key": "u-1"}',
                 json.dumps({"note": "smile \U0001f600"}, ensure_ascii=False)):
        r = client.post(PREDICT, content=body.encode(), headers={**auth, "Content-Type": "application/json"})
        assert r.status_code == 200 and r.json()["probability"] == 0.25, (body, r.text)
    assert _metric(client, "tenfold_unhandled_errors_total") == 0


def test_tenfold_ready_is_0_while_a_hung_model_call_keeps_the_replica_out_of_rotation(
        serve: Callable[..., tuple[TestClient, dict[str, str]]]) -> None:
    """/readyz worked out "stalled" on the fly and never set the gauge: tenfold_ready said 1 while /readyz said 503."""
    gate, entered = threading.Event(), threading.Event()
    client, auth = serve(_stub(gate=gate, entered=entered), model_call_timeout_s="0.5")
    gate.set()  # ready, and one call answered: the gauge says 1
    assert client.post(PREDICT, json={"note": "a"}, headers=auth).status_code == 200
    assert _metric(client, "tenfold_ready") == 1
    gate.clear()
    entered.clear()
    try:
        r = client.post(PREDICT, json={"note": "b"}, headers=auth)
        assert entered.is_set() and r.status_code == 503 and r.json()["error"] == "model_timeout", r.text
        assert _metric(client, "tenfold_ready") == 0  # a scrape alone works it out: no /readyz asked yet
        r = client.get("/readyz")
        assert r.status_code == 503 and r.json()["status"] == "stalled", r.json()
        assert _metric(client, "tenfold_ready") == 0
    finally:
        gate.set()
    until(lambda: client.get("/readyz").status_code == 200, 10)
    assert _metric(client, "tenfold_ready") == 1


def test_tenfold_ready_is_0_while_failing_model_calls_keep_the_replica_out_of_rotation(
        serve: Callable[..., tuple[TestClient, dict[str, str]]]) -> None:
    broken = threading.Event()
    client, auth = serve(_stub(broken=broken))
    broken.set()
    for i in range(MODEL_FAILURES_OUT):
        r = client.post(PREDICT, json={"note": f"n{i}"}, headers=auth)
        assert r.status_code == 503 and r.json()["error"] == "model_error", r.text
    assert _metric(client, "tenfold_ready") == 0
    r = client.get("/readyz")
    assert r.status_code == 503 and r.json()["status"] == "failing", r.json()
    broken.clear()  # a request that still reaches it and succeeds puts it back
    assert client.post(PREDICT, json={"note": "fine"}, headers=auth).status_code == 200
    assert _metric(client, "tenfold_ready") == 1
    assert client.get("/readyz").status_code == 200
