"""The model server in process (TestClient over create_app, the real registry, lookups and Pub/Sub):
every endpoint, every bad input with its exact status and field, auth, the cache, readiness and metrics."""

from __future__ import annotations

import datetime as dt
import itertools
import json
import re
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

import pytest

from tenfold.messaging.records import FeedbackRecord, PredictionRecord
from tenfold.rollout.split import bucket_of
from tenfold.serving.cache import PredictionCache
from tenfold.serving.loading import ServedModel, load_served_model

PREDICT, FEEDBACK = "/v1/predict", "/v1/feedback"


def _flight(**changes: Any) -> dict[str, Any]:
    body = {"carrier": "UA", "flight": 1545, "origin": "EWR", "dest": "IAH", "sched_dep": "2013-01-01T05:15:00",
            "sched_arr": "2013-01-01T08:19:00", "tailnum": "N0042", "user_key": "u-123"}
    body.update(changes)
    return {k: v for k, v in body.items() if v is not None}


def _metric(client: Any, name: str, **labels: str) -> float:
    return float(client.app.state.metrics.value(name, **labels))


@pytest.fixture
def client(make_client: Any) -> Any:
    return make_client()


# --- predict ------------------------------------------------------------------------------------------

def test_predict_one_flight(client: Any, auth: dict[str, str], served_versions: Any) -> None:
    r = client.post(PREDICT, json=_flight(), headers=auth)
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {"prediction_id", "probability", "model_version", "arm", "bucket"}
    assert re.fullmatch(r"[0-9a-f]{32}", body["prediction_id"])
    assert 0.0 < body["probability"] < 1.0
    assert body["model_version"] == served_versions.champion and body["arm"] == "stable"
    assert body["bucket"] == bucket_of("u-123")


def test_a_batch_gives_what_single_requests_give(make_client: Any, auth: dict[str, str]) -> None:
    # Without the cache: with it, the singles were the batch's own answers read back (a batch that mixed up its
    # rows' order gave the same mix-up to both sides).
    client = make_client(cache_entries=0)
    flights = [_flight(), _flight(origin="JFK", dest="LAX", carrier="AA", user_key=None),
               _flight(sched_dep="2013-01-20T17:45:00", sched_arr=None, tailnum=None)]
    r = client.post(PREDICT, json={"flights": flights}, headers=auth)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["arm"] == "stable" and len(body["predictions"]) == 3
    singles = [client.post(PREDICT, json=f, headers=auth).json()["probability"] for f in flights]
    assert min(abs(a - b) for a, b in itertools.combinations(singles, 2)) > 1e-3, singles  # a mix-up would show
    # Within float32's precision: a forward pass of three rows may round differently from one of one row.
    assert [p["probability"] for p in body["predictions"]] == pytest.approx(singles, abs=1e-6)
    assert len({p["prediction_id"] for p in body["predictions"]}) == 3
    assert [p["bucket"] for p in body["predictions"]] == [bucket_of("u-123"), None, bucket_of("u-123")]


@pytest.mark.parametrize(("value", "bucket"), [
    (b"7", 7),
    (b"\xb2", None),  # "²" in latin-1: a digit to str.isdigit(), not to int() (it was a 500)
    (b"\xb9\xb2", None),
    (b"100", None),
    (b"-1", None),
    (b"1" * 4301, None),  # more digits than int() converts (a 500 after the model had run)
    (b"0" * 4300 + b"7", 7),  # zero-padded: its number
    (b"00", 0),
])
def test_the_routed_bucket_header_is_read_only_when_it_is_a_bucket(client: Any, auth: dict[str, str],
                                                                    serving_settings: Any, value: bytes,
                                                                    bucket: int | None) -> None:
    """The load balancer's bucket header (any client can send one in the cloud, where the URL map routes on it): a
    bucket number is reported as the routed bucket, anything else as the user key's own."""
    import httpx

    header = serving_settings.serving.load_balancer.bucket_header

    async def raw() -> httpx.Response:
        # httpx's ASGI transport passes the header's bytes as sent (a real server does too; the TestClient re-encodes
        # them as UTF-8, which hid the 500), on the TestClient's own event loop, where the app's batcher runs.
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=client.app), base_url="http://testserver") as c:
            return await c.post(PREDICT, json=_flight(), headers={**auth, header: value})

    r = client.portal.call(raw)
    assert r.status_code == 200, r.text
    assert r.json()["bucket"] == (bucket_of("u-123") if bucket is None else bucket)


def test_the_user_key_header_decides_the_bucket(client: Any, auth: dict[str, str]) -> None:
    r = client.post(PREDICT, json=_flight(), headers={**auth, "X-User-Key": "someone-else"})
    assert r.json()["bucket"] == bucket_of("someone-else") != bucket_of("u-123")


def test_the_user_key_header_is_read_whole_and_last_and_checked(client: Any, auth: dict[str, str]) -> None:
    # As HAProxy's req.fhdr reads it: the last occurrence, commas included.
    headers = [*auth.items(), ("X-User-Key", "decoy"), ("X-User-Key", "team-1,user-1")]
    r = client.post(PREDICT, json=_flight(user_key=None), headers=headers)
    assert r.status_code == 200 and r.json()["bucket"] == bucket_of("team-1,user-1")
    assert client.post(PREDICT, json=_flight(user_key=None), headers={**auth, "X-User-Key": ""}).json()["bucket"] is None
    for bad in ("café".encode(), b"two words", b"k" * 129):  # not what a body's user_key may be either
        r = client.post(PREDICT, json=_flight(), headers={**auth, "X-User-Key": bad})
        assert r.status_code == 422 and r.json()["field"] == "X-User-Key", (bad, r.text)


def test_a_canary_replica_says_so(make_client: Any, auth: dict[str, str], served_versions: Any) -> None:
    client = make_client(arm="canary", model=served_versions.challenger)
    body = client.post(PREDICT, json=_flight(), headers=auth).json()
    assert (body["arm"], body["model_version"]) == ("canary", served_versions.challenger)


# --- bad input: exact status and field ----------------------------------------------------------------

@pytest.mark.parametrize(("body", "field"), [
    (_flight(carrier=None), "carrier"),                      # missing
    (_flight(flight="1545"), "flight"),                      # a string where a number belongs
    (_flight(flight=True), "flight"),
    ({**_flight(), "gate": "B12"}, "gate"),                  # unknown field
    (_flight(sched_dep="2013-01-01T05:15:00Z"), "sched_dep"),  # an offset makes local time ambiguous
    (_flight(origin="ewr"), "origin"),
    (_flight(origin="ZZZ"), "origin"),                       # unknown airport (the lookups say so)
    (_flight(dest="QQQ"), "dest"),
    (_flight(carrier="ZZ"), "carrier"),                      # unknown carrier
    (_flight(sched_dep="2013-06-01T05:15:00", sched_arr=None), "sched_dep"),  # a month without lookups
    ({"flights": [_flight(), _flight(origin="ZZZ")]}, "flights[1].origin"),
    ({"flights": [_flight(), _flight(), _flight(flight=-3)]}, "flights[2].flight"),
    ({"flights": [_flight(carrier="ZZ"), _flight(origin="ZZZ")]}, "flights[0].carrier"),
    ({"flights": []}, "flights"),
    ({"flights": "UA1545"}, "flights"),
    ({"flights": [_flight()], "extra": 1}, "extra"),
    ([_flight()], "body"),
    ("a string", "body"),
])
def test_invalid_requests_get_422_naming_the_field(client: Any, auth: dict[str, str], body: Any, field: str) -> None:
    r = client.post(PREDICT, json=body, headers=auth)
    assert r.status_code == 422, r.text
    got = r.json()
    assert got["field"] == field and got["error"] == "invalid_request"
    assert field in got["message"] and "Traceback" not in r.text
    assert got["errors"] and got["errors"][0]["field"] == field


@pytest.mark.parametrize("sched_dep", ["2013-01-01T24:00", "2013-01-01T23:60"])
def test_a_time_of_day_out_of_range_is_a_422_naming_the_field_and_the_range(client: Any, auth: dict[str, str],
                                                                            sched_dep: str) -> None:
    """It passed the naive-ISO pattern, and the 422 said "unexpected extra characters at the end of the input"."""
    r = client.post(PREDICT, json=_flight(sched_dep=sched_dep), headers=auth)
    assert r.status_code == 422, r.text
    got = r.json()
    assert got["field"] == "sched_dep" and got["errors"][0]["field"] == "sched_dep"
    assert got["message"].startswith("sched_dep: ") and "hour must be 00 to 23, the minute" in got["message"], got
    assert "extra characters" not in got["message"]


@pytest.mark.parametrize(("raw", "field"), [
    ('{"carrier": "UA", "flight": NaN, "origin": "EWR", "dest": "IAH", "sched_dep": "2013-01-01T05:15:00"}', "flight"),
    ('{"carrier": "UA", "flight": Infinity, "origin": "EWR", "dest": "IAH", "sched_dep": "2013-01-01T05:15:00"}', "flight"),
    ('{"carrier": "UA", "flight": 1e999, "origin": "EWR", "dest": "IAH", "sched_dep": "2013-01-01T05:15:00"}', "flight"),
    ('{"flights": [{"carrier": "UA", "flight": -Infinity, "origin": "EWR", "dest": "IAH", '
     '"sched_dep": "2013-01-01T05:15:00"}]}', "flights[0].flight"),
    ('{"carrier": "UA", "flight": 1545', "body"),  # malformed JSON
    ('{"carrier": "UA",, }', "body"),
    ("", "body"),
    ("[" * 100_000 + "]" * 100_000, "body"),  # nested deeper than any parser should follow
    ('{"carrier": "UA", "flight": ' + "9" * 5000 + "}", "body"),  # an integer of 5000 digits
])
def test_non_finite_numbers_and_malformed_json_get_422(client: Any, auth: dict[str, str], raw: str, field: str) -> None:
    r = client.post(PREDICT, content=raw.encode(), headers={**auth, "Content-Type": "application/json"})
    assert r.status_code == 422, r.text
    assert r.json()["field"] == field


def test_a_number_that_overflows_to_infinity_is_refused_as_non_finite(client: Any, auth: dict[str, str]) -> None:
    """1e999 parses to inf without passing through the NaN/Infinity hook: it is still named a non-finite number
    (it was refused only because the flight number is a strict integer; a float field would have taken it)."""
    for raw in ('{"carrier": "UA", "flight": 1e999, "origin": "EWR", "dest": "IAH", "sched_dep": "2013-01-01T05:15:00"}',
                '{"flights": [{"carrier": "UA", "flight": -1e400, "origin": "EWR", "dest": "IAH", '
                '"sched_dep": "2013-01-01T05:15:00"}]}'):
        r = client.post(PREDICT, content=raw.encode(), headers={**auth, "Content-Type": "application/json"})
        assert r.status_code == 422, r.text
        assert "not numbers this API accepts" in r.json()["message"], r.text


@pytest.mark.parametrize(("raw", "field"), [
    (b'{"\\ud800": NaN}', "\ud800"),
    (b'{"flights": [{"\\udc80": 1e999}]}', "flights[0].\udc80"),
])
def test_a_key_of_lone_surrogates_beside_a_non_finite_number_is_named_in_a_422(
        client: Any, auth: dict[str, str], raw: bytes, field: str) -> None:
    """Valid JSON text whose key is a lone surrogate: the 422 quoting that key could not be encoded as UTF-8, so the
    refusal itself failed and the client got a 500, counted as an unhandled error of the replica."""
    r = client.post(PREDICT, content=raw, headers={**auth, "Content-Type": "application/json"})
    assert r.status_code == 422, r.text
    assert r.json()["field"] == field  # the key, escaped in the JSON text
    assert r.content.isascii() and "not numbers this API accepts" in r.json()["message"]
    assert _metric(client, "tenfold_unhandled_errors_total") == 0


def test_bad_utf8_is_422(client: Any, auth: dict[str, str]) -> None:
    r = client.post(PREDICT, content=b'{"carrier": "\xff\xfe"}', headers={**auth, "Content-Type": "application/json"})
    assert (r.status_code, r.json()["field"]) == (422, "body")


def test_a_compressed_body_is_415_naming_the_encoding_not_a_json_error(client: Any, auth: dict[str, str]) -> None:
    import gzip

    body = gzip.compress(json.dumps(_flight()).encode())
    r = client.post(PREDICT, content=body, headers={**auth, "Content-Type": "application/json", "Content-Encoding": "gzip"})
    assert r.status_code == 415, r.text
    assert r.json()["field"] == "content-encoding" and "send it uncompressed" in r.json()["message"]
    plain = {**auth, "Content-Type": "application/json", "Content-Encoding": "identity"}
    assert client.post(PREDICT, content=json.dumps(_flight()).encode(), headers=plain).status_code == 200


@pytest.mark.parametrize("fields", [["identity", "gzip"], ["identity, gzip"], ["", "GZIP"]])
def test_a_compressed_body_is_415_whichever_content_encoding_field_names_it(client: Any, auth: dict[str, str],
                                                                             fields: list[str]) -> None:
    """Repeated fields are one list to HTTP: only the first Content-Encoding field was read, so a gzip body behind
    'Content-Encoding: identity' was read as JSON and got a misleading 422 invalid_json."""
    import gzip

    headers = [*auth.items(), ("Content-Type", "application/json"), *(("Content-Encoding", f) for f in fields)]
    for path, body in ((PREDICT, _flight()), (FEEDBACK, {"prediction_id": "abc", "outcome": 1})):
        r = client.post(path, content=gzip.compress(json.dumps(body).encode()), headers=headers)
        assert r.status_code == 415, (path, r.text)
        assert r.json()["field"] == "content-encoding" and "gzip" in r.json()["message"].lower(), r.text
    plain = [*auth.items(), ("Content-Type", "application/json"), ("Content-Encoding", "identity"),
             ("Content-Encoding", "identity, ")]
    assert client.post(PREDICT, content=json.dumps(_flight()).encode(), headers=plain).status_code == 200


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", "application/xml", None])
def test_a_body_that_is_not_json_is_415(client: Any, auth: dict[str, str], content_type: str | None) -> None:
    headers = dict(auth)
    if content_type:
        headers["Content-Type"] = content_type
    r = client.post(PREDICT, content=json.dumps(_flight()).encode(), headers=headers)
    assert r.status_code == 415, r.text
    assert r.json()["error"] == "unsupported_media_type" and r.json()["field"] == "content-type"
    assert client.post(FEEDBACK, content=b"prediction_id=x", headers={**auth, "Content-Type": "text/plain"}).status_code == 415


def test_json_with_a_charset_is_accepted(client: Any, auth: dict[str, str]) -> None:
    r = client.post(PREDICT, content=json.dumps(_flight()).encode(),
                    headers={**auth, "Content-Type": "application/json; charset=utf-8"})
    assert r.status_code == 200, r.text


def test_oversized_bodies_and_batches_are_413(make_client: Any, auth: dict[str, str], serving_token: str) -> None:
    client = make_client(max_body_bytes=2_000, max_batch_rows=3)
    big = {"flights": [_flight()] * 20}
    answer = _refused_unread(client, serving_token, PREDICT, json.dumps(big).encode())
    assert answer["error"] == "body_too_large" and "send fewer requests per batch" in answer["message"]

    def chunks() -> Iterator[bytes]:  # no Content-Length: refused while reading, once past the bound
        raw = json.dumps(big).encode()
        for i in range(0, len(raw), 500):
            yield raw[i:i + 500]

    r = client.post(PREDICT, content=chunks(), headers={**auth, "Content-Type": "application/json"})
    assert r.status_code == 413 and r.json()["error"] == "body_too_large"
    assert "send fewer requests per batch" in r.json()["message"]
    r = client.post(PREDICT, json={"flights": [_flight()] * 4}, headers=auth)
    assert r.status_code == 413 and (r.json()["error"], r.json()["field"]) == ("batch_too_large", "flights")
    # Named in errors too, as every other refusal that names a field does (it was an empty list).
    assert r.json()["errors"] == [{"field": "flights", "message": "holds 4 requests; at most 3 per request: split it"}]
    assert client.post(PREDICT, json={"flights": [_flight()] * 3}, headers=auth).status_code == 200


def test_an_oversized_feedback_body_is_413_saying_what_to_do_for_feedback(make_client: Any, auth: dict[str, str],
                                                                          serving_token: str) -> None:
    """Predict and feedback share the body reader, whose 413 told a feedback client to "send fewer requests per
    batch": feedback has no batches."""
    client = make_client(max_body_bytes=2_000)
    raw = json.dumps({"prediction_id": "abc", "outcome": 1, "note": "x" * 5_000}).encode()

    def chunks() -> Iterator[bytes]:  # no Content-Length: refused while reading, once past the bound
        for i in range(0, len(raw), 500):
            yield raw[i:i + 500]

    r = client.post(FEEDBACK, content=chunks(), headers={**auth, "Content-Type": "application/json"})
    assert r.status_code == 413 and r.json()["error"] == "body_too_large", r.text
    for message in (r.json()["message"], _refused_unread(client, serving_token, FEEDBACK, raw)["message"]):
        assert "batch" not in message and "send one outcome per request" in message, message


def _refused_unread(client: Any, token: str, path: str, raw: bytes) -> dict[str, Any]:
    """``raw`` (over the bound) POSTed in 500-byte chunks with its Content-Length: a 413 refused before reading, which
    the one refused while reading cannot pass for: no chunk was received, and the answer names the declared size.
    The 413's body."""
    messages = [{"type": "http.request", "body": raw[i:i + 500], "more_body": i + 500 < len(raw)}
                for i in range(0, len(raw), 500)]
    unread = len(messages)
    sent = _raw_asgi(client, token, messages, [(b"content-length", str(len(raw)).encode())], path=path)
    assert sent[0]["status"] == 413 and len(messages) == unread, (sent, len(messages), unread)
    answer: dict[str, Any] = json.loads(sent[1]["body"])
    assert answer["error"] == "body_too_large" and f"the body is {len(raw)} bytes" in answer["message"], answer
    return answer


@pytest.mark.parametrize(("body", "field"), [
    ({"outcome": 1}, "prediction_id"),
    ({"prediction_id": "abc", "outcome": 2}, "outcome"),
    ({"prediction_id": "abc", "outcome": "yes"}, "outcome"),
    ({"prediction_id": "abc", "outcome": True}, "outcome"),  # lax mode read these as 1
    ({"prediction_id": "abc", "outcome": 1.0}, "outcome"),
    ({"prediction_id": "abc", "outcome": "1"}, "outcome"),
    ({"prediction_id": "abc", "outcome": 1, "observed_at": "yesterday"}, "observed_at"),
    # Times the feedback log could not hold (before year 1 in UTC) or no outcome was observed at, and a number
    # (which pydantic would otherwise read as seconds or milliseconds since 1970).
    ({"prediction_id": "abc", "outcome": 1, "observed_at": "0001-01-01T00:00:00+14:00"}, "observed_at"),
    ({"prediction_id": "abc", "outcome": 1, "observed_at": "9999-12-31T23:59:59-14:00"}, "observed_at"),
    ({"prediction_id": "abc", "outcome": 1, "observed_at": "1969-12-31T23:59:59Z"}, "observed_at"),
    ({"prediction_id": "abc", "outcome": 1, "observed_at": "2999-01-01T00:00:00Z"}, "observed_at"),
    ({"prediction_id": "abc", "outcome": 1, "observed_at": 253402300800}, "observed_at"),
    # Digits as text were read as seconds (milliseconds when large) since 1970: 1970-08-23, 2023-11-14.
    ({"prediction_id": "abc", "outcome": 1, "observed_at": "20240315"}, "observed_at"),
    ({"prediction_id": "abc", "outcome": 1, "observed_at": "1700000000"}, "observed_at"),
    ({"prediction_id": "abc", "outcome": 1, "observed_at": "1700000000000"}, "observed_at"),
    ({"prediction_id": "a b", "outcome": 1}, "prediction_id"),
    ({"prediction_id": "abc", "outcome": 1, "note": "x"}, "note"),
    (["abc", 1], "body"),
])
def test_invalid_feedback_gets_422_naming_the_field(client: Any, auth: dict[str, str], body: Any, field: str) -> None:
    r = client.post(FEEDBACK, json=body, headers=auth)
    assert r.status_code == 422, r.text
    assert r.json()["field"] == field


def test_unknown_paths_and_methods_answer_json(client: Any) -> None:
    r = client.get("/v2/predict")
    assert r.status_code == 404 and r.json()["error"] == "not_found" and "/v1" in r.json()["message"]
    r = client.get(PREDICT)
    assert r.status_code == 405 and r.json()["error"] == "method_not_allowed"


def test_a_trailing_slash_is_a_json_404_naming_the_path_not_a_redirect(client: Any, auth: dict[str, str]) -> None:
    """Starlette answered an empty 307 to http://<host>/v1/predict, before auth; behind the cloud's https-only load
    balancer that address has nothing listening."""
    r = client.post(PREDICT + "/", json={}, headers=auth, follow_redirects=False)
    assert r.status_code == 404 and r.json()["error"] == "not_found", (r.status_code, r.headers)
    assert r.json()["message"].endswith(f"drop the trailing slash: {PREDICT}")


# --- auth -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("header", [None, "Bearer wrong-token", "Basic dXNlcjpwYXNz", "Bearer", "bearer  "])
def test_predict_and_feedback_need_the_token(client: Any, header: str | None) -> None:
    headers = {"Authorization": header} if header is not None else {}
    for path, body in ((PREDICT, _flight()), (FEEDBACK, {"prediction_id": "abc", "outcome": 1})):
        r = client.post(path, json=body, headers=headers)
        assert r.status_code == 401, r.text
        assert r.json()["error"] == "unauthorized" and r.headers["www-authenticate"] == "Bearer"


def test_the_right_token_in_any_scheme_case_is_accepted_and_health_is_open(client: Any, serving_token: str) -> None:
    assert client.post(PREDICT, json=_flight(), headers={"Authorization": f"bearer {serving_token}"}).status_code == 200
    for path in ("/healthz", "/readyz", "/metrics"):
        assert client.get(path).status_code == 200, path


def test_in_the_cloud_the_schema_docs_and_metrics_ask_for_the_login_too(make_client: Any, serving_settings: Any,
                                                                        auth: dict[str, str]) -> None:
    """Behind the cloud's public load balancer every path reaches a replica: only the health checks stay open."""
    cloud = make_client(serving_settings.model_copy(update={"env": "dev"}))
    for path in ("/metrics", "/openapi.json"):
        r = cloud.get(path)
        assert r.status_code == 401 and r.json()["error"] == "unauthorized", path
        assert cloud.get(path, headers=auth).status_code == 200, path
    assert cloud.get("/openapi.json", headers=auth).json()["paths"].keys() >= {PREDICT, FEEDBACK}
    assert cloud.get("/docs", headers=auth).status_code == 404 and cloud.get("/redoc").status_code == 404
    assert "see /openapi.json" in cloud.get("/v2/predict").json()["message"]
    for path in ("/healthz", "/readyz"):
        assert cloud.get(path).status_code == 200, path
    # Open to the probes, and so to anyone behind the public load balancer: the served version and a failed load's
    # error (bucket URIs, account names) only with the login.
    assert cloud.get("/readyz").json() == {"ready": True, "status": "ready"}
    full = cloud.get("/readyz", headers=auth).json()
    assert full["ready"] is True and full["model_version"] and full["arm"] and full["model_ref"]
    local = make_client()
    assert local.get("/readyz").json()["model_version"] == full["model_version"]  # loopback only: all of it
    for path in ("/metrics", "/openapi.json", "/docs"):  # on loopback, for `tenfold serve status` and a browser
        assert local.get(path).status_code == 200, path


def test_auth_is_checked_before_the_body_is_read(client: Any) -> None:
    """A wrong token is refused before any of the body is received: a server that read (or buffered) an
    unauthenticated body first would let anyone make it hold up to max_body_bytes per request."""
    r = client.post(PREDICT, content=b"not json", headers={"Content-Type": "text/plain"})
    assert r.status_code == 401 and r.json()["error"] == "unauthorized", r.text  # not the body's 415
    # Raw ASGI, a valid JSON body in 100-byte chunks (each taken off the list only as the app receives it): the
    # 401 comes with every chunk still unreceived.
    for path, body in ((PREDICT, {"flights": [_flight()] * 3}), (FEEDBACK, {"prediction_id": "abc", "outcome": 1})):
        raw = json.dumps(body).encode()
        messages = [{"type": "http.request", "body": raw[i:i + 100], "more_body": i + 100 < len(raw)}
                    for i in range(0, len(raw), 100)]
        unread = len(messages)
        sent = _raw_asgi(client, "wrong-token", messages, [(b"content-length", str(len(raw)).encode())], path=path)
        assert sent[0]["status"] == 401, (path, sent)
        assert json.loads(sent[1]["body"])["error"] == "unauthorized", (path, sent)
        assert len(messages) == unread, f"{path}: {unread - len(messages)} of {unread} body chunks read before the 401"


# --- the cache ------------------------------------------------------------------------------------------

def test_a_repeated_request_is_a_cache_hit_whoever_asks(client: Any, auth: dict[str, str]) -> None:
    first = client.post(PREDICT, json=_flight(), headers=auth).json()
    assert (_metric(client, "tenfold_cache_misses_total"), _metric(client, "tenfold_cache_hits_total")) == (1, 0)
    calls = _metric(client, "tenfold_model_calls_total")
    second = client.post(PREDICT, json=_flight(user_key="another-user"), headers=auth).json()
    assert _metric(client, "tenfold_cache_hits_total") == 1
    assert _metric(client, "tenfold_model_calls_total") == calls  # the model was not asked again
    assert second["probability"] == first["probability"]
    assert second["prediction_id"] != first["prediction_id"] and second["bucket"] == bucket_of("another-user")
    client.post(PREDICT, json=_flight(flight=99), headers=auth)
    assert _metric(client, "tenfold_cache_misses_total") == 2


def test_a_new_model_version_never_gets_the_old_versions_entries(make_client: Any, auth: dict[str, str],
                                                                 served_versions: Any) -> None:
    shared = PredictionCache(100)
    old = make_client(model=served_versions.champion, app_kwargs={"cache": shared})
    old_p = old.post(PREDICT, json=_flight(), headers=auth).json()["probability"]
    assert len(shared) == 1
    new = make_client(model=served_versions.challenger, app_kwargs={"cache": shared})
    body = new.post(PREDICT, json=_flight(), headers=auth).json()
    assert body["model_version"] == served_versions.challenger
    assert (_metric(new, "tenfold_cache_hits_total"), _metric(new, "tenfold_cache_misses_total")) == (0, 1)
    fresh = make_client(model=served_versions.challenger, cache_entries=0)  # no cache at all: the truth
    truth = fresh.post(PREDICT, json=_flight(), headers=auth).json()["probability"]
    assert body["probability"] == pytest.approx(truth, abs=1e-12) and abs(truth - old_p) > 1e-6
    assert len(shared) == 2


# --- feedback and samples on Pub/Sub --------------------------------------------------------------------

def test_feedback_is_202_once_published_and_samples_reach_the_predictions_topic(
        client: Any, auth: dict[str, str], serving_settings: Any, pubsub_tools: Any) -> None:
    msg = serving_settings.messaging
    feedback_sub = pubsub_tools.subscribe(serving_settings, msg.feedback_topic)
    samples_sub = pubsub_tools.subscribe(serving_settings, msg.predictions_topic)
    served = client.post(PREDICT, json=_flight(), headers=auth).json()
    r = client.post(FEEDBACK, json={"prediction_id": served["prediction_id"], "outcome": 1,
                                    "observed_at": "2013-01-01T04:02:00-05:00"}, headers=auth)
    assert r.status_code == 202, r.text
    assert r.json()["status"] == "accepted" and r.json()["message_id"]
    [raw] = pubsub_tools.pull(serving_settings, feedback_sub, 1)
    record = FeedbackRecord.from_message(raw)
    assert (record.prediction_id, record.outcome) == (served["prediction_id"], 1)
    assert record.observed_at == dt.datetime(2013, 1, 1, 9, 2, tzinfo=dt.UTC) and record.observed_at.utcoffset() == dt.timedelta(0)
    samples = [PredictionRecord.from_message(m) for m in pubsub_tools.pull(serving_settings, samples_sub, 1)]
    assert [s.prediction_id for s in samples] == [served["prediction_id"]]
    sample = samples[0]
    assert (sample.model_version, sample.arm, sample.bucket, sample.user_key) == (
        served["model_version"], "stable", served["bucket"], "u-123")
    assert sample.probability == served["probability"] and sample.request["origin"] == "EWR"


def _count_samples(client: Any, monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Every sample the app hands its publisher, recorded as it is queued (the queue is drained and counted on
    a background thread later, so the metric alone cannot tell "none queued" from "not counted yet")."""
    publisher = client.app.state.publisher
    queued: list[Any] = []
    real = publisher.publish_sample

    def spy(record: Any) -> bool:
        queued.append(record)
        return bool(real(record))

    monkeypatch.setattr(publisher, "publish_sample", spy)
    return queued


def test_no_samples_at_rate_zero(make_client: Any, auth: dict[str, str], monkeypatch: pytest.MonkeyPatch,
                                 waits: Any) -> None:
    client = make_client(prediction_sample_rate=0.0)
    queued = _count_samples(client, monkeypatch)
    assert client.post(PREDICT, json=_flight(), headers=auth).status_code == 200
    assert queued == []
    assert _metric(client, "tenfold_prediction_samples_total") == 0
    # the control: the same request at rate 1 queues one sample, which the sampler thread then counts
    control = make_client(prediction_sample_rate=1.0)
    control_queued = _count_samples(control, monkeypatch)
    assert control.post(PREDICT, json=_flight(), headers=auth).status_code == 200
    assert len(control_queued) == 1
    waits.until(lambda: _metric(control, "tenfold_prediction_samples_total") == 1, 30)


# --- readiness, loading, failure, drain -------------------------------------------------------------------

def test_readiness_is_false_while_loading_and_predict_waits_with_503(make_client: Any, auth: dict[str, str],
                                                                    waits: Any) -> None:
    release = threading.Event()

    def slow_loader(settings: Any, ref: str) -> ServedModel:
        release.wait(30)
        return load_served_model(settings, ref)

    client = make_client(ready=False, app_kwargs={"loader": slow_loader})
    try:
        assert client.get("/healthz").status_code == 200
        r = client.get("/readyz")
        assert r.status_code == 503 and r.json()["status"] == "loading" and r.json()["ready"] is False
        r = client.post(PREDICT, json=_flight(), headers=auth)
        assert r.status_code == 503 and r.headers["retry-after"] == "5"
    finally:
        release.set()
    waits.ready(client)
    assert client.post(PREDICT, json=_flight(), headers=auth).status_code == 200


def test_a_model_that_cannot_be_loaded_is_never_served(make_client: Any, auth: dict[str, str], waits: Any) -> None:
    fatal: list[str] = []
    client = make_client(model="no-such-alias", ready=False, app_kwargs={"on_fatal": fatal.append})
    waits.until(lambda: bool(fatal), 60)
    assert "no-such-alias" in fatal[0] and "tenfold models list" in fatal[0]
    r = client.get("/readyz")
    assert r.status_code == 503 and r.json()["status"] == "failed" and "no-such-alias" in r.json()["detail"]
    assert client.get("/healthz").status_code == 503
    r = client.post(PREDICT, json=_flight(), headers=auth)
    assert r.status_code == 503 and "failed to load" in r.json()["message"]


def test_a_model_that_fails_every_call_answers_503_and_leaves_the_rotation(make_client: Any, auth: dict[str, str]) -> None:
    """A broken device or model state fails every call: each request got a 500 ("a bug") while /readyz and /healthz
    kept answering 200, so the replica kept its whole share of traffic and failed all of it."""
    from tenfold.serving.app import MODEL_FAILURES_OUT

    broken = threading.Event()

    class Breaking(ServedModel):
        def predict(self, requests: Any) -> list[float]:
            if broken.is_set():
                raise RuntimeError("CUDA error: an illegal memory access was encountered")
            return super().predict(requests)

    def loader(settings: Any, ref: str) -> ServedModel:
        good = load_served_model(settings, ref)
        return Breaking(good.version, good.loaded, good.features, good.device)

    client = make_client(app_kwargs={"loader": loader})
    assert client.post(PREDICT, json=_flight(flight=1), headers=auth).status_code == 200
    broken.set()
    for i in range(MODEL_FAILURES_OUT):
        r = client.post(PREDICT, json=_flight(flight=100 + i), headers=auth)
        assert r.status_code == 503 and r.json()["error"] == "model_error" and r.headers["retry-after"] == "5", r.text
        assert "RuntimeError" in r.json()["message"]
    r = client.get("/readyz")
    assert r.status_code == 503 and r.json()["status"] == "failing", r.json()
    assert client.get("/healthz").status_code == 503  # out of rotation nothing clears it: replaced
    broken.clear()  # (a request that still reaches it and succeeds puts it back)
    assert client.post(PREDICT, json=_flight(flight=200), headers=auth).status_code == 200
    assert client.get("/readyz").status_code == 200 and client.get("/healthz").status_code == 200


def test_a_hung_model_call_answers_503_and_takes_the_replica_out_of_rotation_until_it_returns(
    make_client: Any, auth: dict[str, str], waits: Any
) -> None:
    """A forward pass that never returns (a stuck kernel): its request gets 503 after model_call_timeout_s instead
    of hanging, readiness fails while the call runs (HAProxy sends traffic elsewhere) and liveness after 3x."""
    release, entered = threading.Event(), threading.Event()

    class Hanging(ServedModel):
        def predict(self, requests: Any) -> list[float]:
            if not release.is_set():
                entered.set()
                release.wait(60)
            return super().predict(requests)

    def loader(settings: Any, ref: str) -> ServedModel:
        good = load_served_model(settings, ref)
        return Hanging(good.version, good.loaded, good.features, good.device)

    client = make_client(app_kwargs={"loader": loader}, model_call_timeout_s=0.5)
    try:
        started = time.monotonic()
        r = client.post(PREDICT, json=_flight(), headers=auth)
        assert entered.is_set() and r.status_code == 503, r.text
        assert r.json()["error"] == "model_timeout" and r.headers["retry-after"] == "5"
        assert time.monotonic() - started < 5
        r = client.get("/readyz")
        assert r.status_code == 503 and r.json()["status"] == "stalled", r.json()
        waits.until(lambda: client.get("/healthz").status_code == 503, 10)
        assert client.get("/healthz").json() == {"status": "stalled"}
    finally:
        release.set()
    waits.until(lambda: client.get("/readyz").status_code == 200, 10)
    assert client.get("/healthz").status_code == 200
    assert client.post(PREDICT, json=_flight(flight=99), headers=auth).status_code == 200


def test_an_iap_replica_is_not_ready_until_it_holds_googles_keys(make_client: Any, serving_settings: Any,
                                                                 waits: Any) -> None:
    """No request could be authorised before the keys are fetched: the replica stays out of rotation meanwhile."""
    import json as json_

    from tenfold.serving.auth import Authenticator

    release = threading.Event()

    def google(url: str, method: str = "GET", **kwargs: Any) -> Any:
        from types import SimpleNamespace

        if not release.wait(10):
            raise RuntimeError("unreachable")
        return SimpleNamespace(status=200, data=json_.dumps({}).encode(), headers={})

    audience = "/projects/1/global/backendServices/2"
    iap = serving_settings.model_copy(update={"serving": serving_settings.serving.model_copy(update={
        "server": serving_settings.serving.server.model_copy(update={"auth_mode": "iap", "iap_audience": audience})})})
    client = make_client(iap, ready=False, app_kwargs={"authenticator": Authenticator(iap, http_request=google)})
    try:
        waits.until(lambda: client.get("/readyz").json().get("detail") is not None, 60)  # the model is loaded
        r = client.get("/readyz")
        assert r.status_code == 503 and "IAP keys are not fetched yet" in r.json()["detail"], r.json()
    finally:
        release.set()
    waits.until(lambda: client.get("/readyz").status_code == 200, 20)


def test_an_iap_assertion_signed_with_a_key_published_since_the_fetch_is_a_503_to_retry_then_served(
        make_client: Any, serving_settings: Any, waits: Any) -> None:
    """Refused 401 until the held keys were an hour old; now the replica fetches Google's keys again and says retry."""
    import json as json_
    from types import SimpleNamespace

    import jwt
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    from tenfold.serving.auth import IAP_ISSUER, Authenticator

    private = ec.generate_private_key(ec.SECP256R1())
    public = private.public_key().public_bytes(serialization.Encoding.PEM,
                                               serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    published = {"k1": public}
    fetches: list[str] = []

    def google(url: str, method: str = "GET", **kwargs: Any) -> Any:
        fetches.append(url)
        return SimpleNamespace(status=200, data=json_.dumps(published).encode(), headers={})

    audience = "/projects/1/global/backendServices/2"
    iap = serving_settings.model_copy(update={"serving": serving_settings.serving.model_copy(update={
        "server": serving_settings.serving.server.model_copy(update={"auth_mode": "iap", "iap_audience": audience})})})
    authenticator = Authenticator(iap, http_request=google)
    client = make_client(iap, app_kwargs={"authenticator": authenticator})
    assert authenticator._keys is not None and len(fetches) == 1
    published["k2"] = public  # Google publishes k2 (IAP signs with it at once); the replica's keys are a minute old
    authenticator._keys._cached = (authenticator._keys._cached[0] - 60, *authenticator._keys._cached[1:])
    now = int(time.time())
    assertion = jwt.encode({"iss": IAP_ISSUER, "aud": audience, "email": "ana@example.com", "iat": now,
                            "exp": now + 600}, private, algorithm="ES256", headers={"kid": "k2"})
    headers = {"x-goog-iap-jwt-assertion": assertion}
    r = client.post(PREDICT, json=_flight(), headers=headers)
    assert r.status_code == 503 and r.json()["error"] == "unavailable" and r.headers["retry-after"] == "5", r.text
    assert "key id 'k2'" in r.json()["message"]
    waits.until(lambda: len(fetches) == 2 and not authenticator._keys._refreshing, 10)  # type: ignore[union-attr]
    r = client.post(PREDICT, json=_flight(), headers=headers)
    assert r.status_code == 200, r.text


def test_draining_turns_readiness_false_but_still_answers(client: Any, auth: dict[str, str]) -> None:
    client.app.state.replica.begin_drain()
    r = client.get("/readyz")
    assert r.status_code == 503 and r.json()["status"] == "draining"
    assert client.post(PREDICT, json=_flight(), headers=auth).status_code == 200


# --- unexpected errors and metrics ------------------------------------------------------------------------

def test_an_unexpected_error_is_a_json_500_without_traceback_and_counted(make_client: Any, auth: dict[str, str]) -> None:
    class Broken(ServedModel):  # a bug in the handler's own path (the model's failures are 503s, tested above)
        def check(self, request: Any) -> None:
            raise RuntimeError("secret internals /etc/passwd")

    def loader(settings: Any, ref: str) -> ServedModel:
        good = load_served_model(settings, ref)
        return Broken(good.version, good.loaded, good.features, good.device)

    client = make_client(raise_server_exceptions=False, app_kwargs={"loader": loader})
    r = client.post(PREDICT, json=_flight(), headers=auth)
    assert r.status_code == 500
    assert r.json()["error"] == "internal" and "Traceback" not in r.text and "passwd" not in r.text
    assert _metric(client, "tenfold_unhandled_errors_total") == 1
    assert _metric(client, "tenfold_errors_total", endpoint="predict", code="500") == 1


def test_metrics_are_labelled_with_version_and_arm(client: Any, auth: dict[str, str], served_versions: Any) -> None:
    client.post(PREDICT, json=_flight(), headers=auth)
    client.post(PREDICT, json={"flights": [_flight(flight=7), _flight(flight=8)]}, headers=auth)
    client.post(PREDICT, json=_flight(origin="ZZZ"), headers=auth)
    text = client.get("/metrics").text
    labels = f'model_version="{served_versions.champion}"'
    for line in (
        f'tenfold_request_latency_seconds_count{{arm="stable",endpoint="predict",{labels}}} 3.0',
        f'tenfold_requests_total{{arm="stable",code="422",endpoint="predict",{labels}}} 1.0',
        f'tenfold_errors_total{{arm="stable",code="422",endpoint="predict",{labels}}} 1.0',
        f'tenfold_batch_size_sum{{arm="stable",{labels}}} 3.0',
        f'tenfold_cache_misses_total{{arm="stable",{labels}}} 3.0',
        f'tenfold_queue_depth{{arm="stable",{labels}}} 0.0',
        f'tenfold_ready{{arm="stable",{labels}}} 1.0',
    ):
        assert line in text, line
    assert "tenfold_dropped_samples_total" in text and "tenfold_cache_hits_total" in text


def test_each_app_has_its_own_metrics_registry(make_client: Any, auth: dict[str, str]) -> None:
    a, b = make_client(), make_client()
    a.post(PREDICT, json=_flight(), headers=auth)
    assert _metric(a, "tenfold_predictions_total") == 1 and _metric(b, "tenfold_predictions_total") == 0


# --- the schema -------------------------------------------------------------------------------------------

def test_the_openapi_schema_describes_both_bodies_and_the_refusals(client: Any) -> None:
    schema = client.get("/openapi.json").json()
    predict = schema["paths"][PREDICT]["post"]
    refs = [s["$ref"] for s in predict["requestBody"]["content"]["application/json"]["schema"]["oneOf"]]
    assert refs == ["#/components/schemas/FlightRequest", "#/components/schemas/BatchPredictRequest"]
    components = schema["components"]["schemas"]
    assert set(components["FlightRequest"]["required"]) == {"carrier", "flight", "origin", "dest", "sched_dep"}
    assert components["BatchPredictRequest"]["properties"]["flights"]["maxItems"] == 1000
    assert {"401", "413", "415", "422", "503"} <= set(predict["responses"])
    assert schema["paths"][FEEDBACK]["post"]["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/FeedbackRequest"}
    assert {"/healthz", "/readyz", "/metrics"} <= set(schema["paths"])
    # What the server reports (the routed bucket; behind HAProxy a keyless request has one), not "null without a key"
    bucket = components["Prediction"]["properties"]["bucket"]["description"]
    assert "routed by" in bucket and "null without a user key" not in bucket, bucket


def _raw_asgi(client: Any, token: str, messages: list[dict[str, Any]],
              headers: Sequence[tuple[bytes, bytes]] = (), path: str = PREDICT) -> list[dict[str, Any]]:
    """A POST to ``path`` through the app's ASGI callable itself: ``messages`` as the client's (each taken off the
    list as the app receives it), then a disconnect; what the app sent back."""
    import asyncio

    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
             "headers": [(b"authorization", f"Bearer {token}".encode()), (b"content-type", b"application/json"),
                         *headers],
             "client": ("127.0.0.1", 5000), "server": ("127.0.0.1", 80)}
    asyncio.run(client.app(scope, receive, send))
    return sent


def test_a_client_that_goes_away_mid_body_is_not_a_server_error(client: Any, serving_token: str) -> None:
    """Raw ASGI: half a body, then the disconnect a vanished client produces; 499, never a 5xx."""
    messages = [{"type": "http.request", "body": b'{"carrier": "UA", ', "more_body": True}, {"type": "http.disconnect"}]
    sent = _raw_asgi(client, serving_token, messages)
    assert sent[0]["status"] == 499
    assert _metric(client, "tenfold_unhandled_errors_total") == 0
    assert _metric(client, "tenfold_errors_total", endpoint="predict", code="499") == 1


@pytest.mark.parametrize(("length", "status"), [("zero-padded", 422), ("huge", 413)])
def test_a_content_length_of_thousands_of_digits_is_read_as_its_number_not_a_server_error(
        client: Any, serving_token: str, length: str, status: int) -> None:
    """Raw ASGI (uvicorn's parser lets such a header through): int() refuses text of more than 4,300 digits, so a
    zero-padded Content-Length ended in a 500 counted as a server bug, which any client could set off at will."""
    import json as jsonlib

    # A flight whose carrier is refused by validation (422, before any model call): the body was read whole.
    body = jsonlib.dumps(_flight(carrier="Z!")).encode()
    header = b"0" * 5000 + str(len(body)).encode() if length == "zero-padded" else b"9" * 5000
    sent = _raw_asgi(client, serving_token, [{"type": "http.request", "body": body, "more_body": False}],
                     [(b"content-length", header)])
    assert sent[0]["status"] == status, sent
    assert _metric(client, "tenfold_unhandled_errors_total") == 0
