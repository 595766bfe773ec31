"""The model server as a FastAPI app: :func:`create_app` builds one replica (``python -m tenfold.serving`` runs it).

Endpoints (``P`` is ``settings.serving.server.api_prefix``, ``/v1``; the OpenAPI schema is at ``/openapi.json``):

* ``POST P/predict``: one request of the workload's schema, or a batch ``{"<batch key>": [...]}``; answers the
  probability, the model version, the arm, a prediction id and the user key's bucket. Bearer token (or IAP).
* ``POST P/feedback``: ``{"prediction_id", "outcome", "observed_at"?}``; 202 once Pub/Sub acknowledged it,
  503 with ``Retry-After`` when it cannot be recorded now. Bearer token (or IAP).
* ``GET /healthz`` (alive), ``GET /readyz`` (model and lookups in memory, not draining), ``GET /metrics``.

Startup happens in the ``lifespan``: the model is resolved and loaded from the registry and the lookup
tables from the lake on the model thread, in the background, so ``/healthz`` answers at once and
``/readyz`` says 503 until both are in memory. A load that fails marks the replica failed (both health
endpoints 503) and calls ``on_fatal``, which the entry point uses to exit non-zero: a replica never serves
half-loaded. Bad input always gets a 4xx naming the field; anything unexpected gets a JSON 500 without a
traceback (logged, counted in ``tenfold_unhandled_errors_total``).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import functools
import gc
import inspect
import json
import logging
import math
import os
import random
import re
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from pydantic import BaseModel, TypeAdapter, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from tenfold.messaging.records import FeedbackRecord, PredictionRecord
from tenfold.rollout.split import ARMS, BUCKETS, bucket_of
from tenfold.serving.auth import Authenticator, AuthError
from tenfold.serving.batching import BatcherStopped, DaemonThreadExecutor, MicroBatcher
from tenfold.serving.cache import PredictionCache
from tenfold.serving.faults import Fault
from tenfold.serving.loading import AssemblyError, ServedModel, ServingLoadError, load_served_model
from tenfold.serving.metrics import ServerMetrics
from tenfold.serving.publishing import Publisher, PublishUnavailable
from tenfold.serving.schemas import (
    BatchPrediction,
    ErrorBody,
    FeedbackAccepted,
    FeedbackRequest,
    Health,
    Prediction,
    Readiness,
    batch_model,
)
from tenfold.workloads import RequestInvalid, WorkloadError, batch_key, get_workload

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

    from tenfold.config import Settings

log = logging.getLogger(__name__)

# Model calls failing in a row (not a request's own refusal) that take a replica out of the rotation (/readyz 503)
# and have it replaced (/healthz 503): a broken device or model state fails every request, 500s while still ready.
MODEL_FAILURES_OUT = 5

Loader = Callable[["Settings", str], ServedModel]
# What a user key may be, in a header as in a body (the workload's user_key): printable ASCII, no spaces.
_USER_KEY = re.compile(r"[\x21-\x7e]+")


class _DirectRoute(APIRoute):
    """A route whose endpoint reads the request and builds the response itself (every endpoint here): FastAPI
    still documents it from the route's models (the OpenAPI schema is unchanged), but a request goes straight
    to the endpoint, without FastAPI's per-request dependency solving (query, header and cookie parameters
    these endpoints never declare) and response handling (bench/RESULTS.md: the profile of the handler).
    Any other endpoint gets FastAPI's handler."""

    def get_route_handler(self) -> Callable[[Request], Any]:
        endpoint = self.endpoint
        params = list(inspect.signature(endpoint).parameters.values())
        if not inspect.iscoroutinefunction(endpoint) or len(params) > 1 or \
                (params and params[0].annotation not in (Request, "Request")):
            return super().get_route_handler()
        if params:
            return endpoint

        async def handler(_request: Request) -> Response:
            return await endpoint()  # type: ignore[no-any-return]

        return handler


class _AsciiJSON(JSONResponse):
    """JSON with every non-ASCII character escaped: a refusal quotes what the client sent (a key of its body), and a
    lone surrogate (``"\\ud800"``, valid JSON text) cannot be encoded as UTF-8, so the refusal itself became a 500."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode("ascii")


class UnknownArm(ValueError):
    """``create_app`` was asked to serve an arm that is not an A/B arm (``tenfold.rollout.split.ARMS``)."""


class ApiError(Exception):
    """An answer other than success: status, a short code, what is wrong and what to do, the field."""

    def __init__(self, status: int, error: str, message: str, *, field: str | None = None,
                 errors: Sequence[tuple[str, str]] = (), headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.error, self.message, self.field = status, error, message, field
        self.errors = list(errors)
        self.headers = headers or {}

    def response(self) -> JSONResponse:
        body = {"error": self.error, "message": self.message, "field": self.field,
                "errors": [{"field": f, "message": m} for f, m in self.errors]}
        return _AsciiJSON(body, status_code=self.status, headers=self.headers)


class ReplicaState:
    """Where the replica is in its life: loading -> ready -> draining (or failed), and what it serves."""

    def __init__(self, arm: str, model_ref: str, metrics: ServerMetrics) -> None:
        self.arm, self.model_ref, self._metrics = arm, model_ref, metrics
        self.status = "loading"
        self.served: ServedModel | None = None
        self.detail: str | None = None

    @property
    def ready(self) -> bool:
        return self.status == "ready"

    def loaded(self, served: ServedModel) -> None:
        self.served = served
        self._metrics.set_model_version(served.version)
        if self.status == "loading":
            self.status = "ready"
        self._metrics.ready(self.ready)

    def fail(self, detail: str) -> None:
        self.status, self.detail = "failed", detail
        self._metrics.ready(False)

    def mark_draining(self) -> None:
        """Readiness goes false (``/readyz`` reads it); the gauge is not touched. Safe in a signal handler, which
        may run while its thread holds a metrics lock (prometheus_client's are not re-entrant)."""
        if self.status != "failed":
            self.status = "draining"

    def begin_drain(self) -> None:
        """Readiness goes false at once; requests already accepted still complete."""
        self.mark_draining()
        self._metrics.ready(False)

    def readiness(self) -> Readiness:
        return Readiness(ready=self.ready, status=self.status, arm=self.arm,  # type: ignore[arg-type]
                         model_ref=self.model_ref, model_version=self.served.version if self.served else None,
                         detail=self.detail)


# --- reading and validating bodies -----------------------------------------------------------------

def _is_json(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


async def read_json(request: Request, max_bytes: int, too_large: str) -> tuple[Any, bool, bool]:
    """The request's JSON body, whether it holds ``NaN`` or an infinity (which Python's parser accepts), and whether it
    may hold an unpaired surrogate (which it accepts too: :func:`_lone_surrogate` finds it): 415 for another content
    type, 413 past ``max_bytes`` (checked while reading, so an oversized body is refused without holding it in
    memory), 422 when it is not JSON.

    ``too_large`` is what the 413 tells the client to do: the endpoint's own fix (predict and feedback share this
    reader, and a feedback body over the bound was told to "send fewer requests per batch").
    """
    content_type = request.headers.get("content-type", "")
    if not _is_json(content_type):
        raise ApiError(415, "unsupported_media_type",
                       f"send the body as JSON with 'Content-Type: application/json' (got {content_type or 'none'!r})",
                       field="content-type")
    # Every field and every coding in it: repeated fields are one comma-separated list to HTTP, and a gzip body sent
    # with 'identity' in the first field got a misleading 422 invalid_json when only that field was read.
    codings = [c.strip().lower() for value in request.headers.getlist("content-encoding") for c in value.split(",")]
    if any(c not in ("", "identity") for c in codings):
        encoding = ", ".join(c for c in codings if c)
        raise ApiError(415, "unsupported_media_type", f"the body is sent with 'Content-Encoding: {encoding}', which "
                       "this API does not decode: send it uncompressed (at most max_body_bytes)",
                       field="content-encoding")
    declared = request.headers.get("content-length")
    # Read as the number it is without int() on the raw text: 4,301 digits or more (zero-padding the parser lets
    # through) raise ValueError there, a 500 counted as a server bug.
    digits = (declared or "").strip().lstrip("0") or "0"
    if declared is not None and digits.isascii() and digits.isdigit() and (
            len(digits) > len(str(max_bytes)) or int(digits) > max_bytes):
        size_said = digits if len(digits) <= 20 else f"a {len(digits)}-digit number of"
        raise ApiError(413, "body_too_large", f"the body is {size_said} bytes; at most {max_bytes} are accepted: "
                       f"{too_large}")
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > max_bytes:
                raise ApiError(413, "body_too_large", f"the body exceeds {max_bytes} bytes: {too_large}")
            chunks.append(chunk)
    except ClientDisconnect:
        # Nobody will read the answer; 499 (nginx's "client closed request") keeps it out of the 5xx counts.
        raise ApiError(499, "client_disconnected", "the client closed the connection before sending the whole body") from None
    raw = b"".join(chunks)
    if not raw.strip():
        raise ApiError(422, "invalid_json", "the body is empty: send a JSON object", field="body")
    non_finite = False

    def constant(name: str) -> float:
        nonlocal non_finite
        non_finite = True
        return float(name)  # "NaN", "Infinity", "-Infinity"

    def number(text: str) -> float:
        nonlocal non_finite
        value = float(text)
        non_finite = non_finite or not math.isfinite(value)  # 1e999 overflows to inf
        return value

    try:
        body = json.loads(raw, parse_constant=constant, parse_float=number)
    except json.JSONDecodeError as exc:
        raise ApiError(422, "invalid_json", f"the body is not valid JSON: {exc.msg} at line {exc.lineno} column "
                       f"{exc.colno}", field="body") from None
    except (ValueError, RecursionError) as exc:  # bad UTF-8, an integer of thousands of digits, deep nesting
        raise ApiError(422, "invalid_json", f"the body cannot be read as JSON: {exc}", field="body") from None
    # Without such an escape or bytes (in UTF-8, what every client sends) a body cannot hold a surrogate.
    return body, non_finite, json.detect_encoding(raw) != "utf-8" or _SURROGATE_BYTES.search(raw) is not None


# json.loads accepts a lone surrogate, escaped ("\ud800") or as its UTF-8-like bytes (it decodes with surrogatepass): a
# string that is not Unicode, which pydantic takes into a plain str field and then cannot serialise (the prediction
# cache's key, the monitoring sample): a 500 counted as a bug. A pair (an emoji's "\ud83d\ude00") is one character
# once parsed.
_SURROGATE_BYTES = re.compile(rb"\\u[dD][89a-fA-F]|\xed[\xa0-\xbf]")
_SURROGATE = re.compile(r"[\ud800-\udfff]")
_NOT_UNICODE = "not valid Unicode: an unpaired surrogate (send each character whole: a pair of \\uXXXX escapes " \
               "for one outside the BMP, or UTF-8)"


def _lone_surrogate(body: Any, loc: tuple[Any, ...]) -> tuple[Any, ...] | None:
    """Where in a parsed body the first string (a value, or an object's key) holding an unpaired surrogate is; None if
    nowhere. A loop, not recursion: the parser takes nesting close to the interpreter's recursion limit."""

    def bad(text: str) -> bool:
        return not text.isascii() and _SURROGATE.search(text) is not None

    stack: list[tuple[Any, tuple[Any, ...]]] = [(body, loc)]
    while stack:
        value, where = stack.pop()
        if isinstance(value, str):
            if bad(value):
                return where
        elif isinstance(value, dict):
            for key in value:
                if bad(key):
                    return (*where, key)  # quoted as it was sent: an error body escapes it (_AsciiJSON)
            stack.extend((item, (*where, key)) for key, item in reversed(value.items()))
        elif isinstance(value, list):
            stack.extend((value[i], (*where, i)) for i in range(len(value) - 1, -1, -1))
    return None


def field_path(loc: Sequence[Any]) -> str:
    """``("flights", 3, "origin")`` -> ``flights[3].origin`` (a batch's key, the index, the field); the empty location is the whole ``body``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "body"


def _validation_error(exc: ValidationError, prefix: Sequence[Any] = ()) -> ApiError:
    errors: list[tuple[str, str]] = []
    for err in exc.errors(include_url=False):
        loc = (*prefix, *err.get("loc", ()))
        cause = (err.get("ctx") or {}).get("error")
        if isinstance(cause, RequestInvalid):  # a workload validator named its own field and what to do
            where = field_path(loc[:-1] if loc and loc[-1] == cause.field else loc)
            errors.append((f"{where}.{cause.field}" if where != "body" else cause.field, cause.message))
            continue
        errors.append((field_path(loc), str(err.get("msg", "invalid value"))))
    first_field, first_message = errors[0] if errors else ("body", "invalid request")
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return ApiError(422, "invalid_request", f"{first_field}: {first_message}{more}; fix the request and retry",
                    field=first_field, errors=errors)


def _non_finite(value: Any, loc: tuple[Any, ...]) -> tuple[Any, ...] | None:
    if isinstance(value, float) and not math.isfinite(value):
        return loc
    if isinstance(value, dict):
        for key, item in value.items():
            if (found := _non_finite(item, (*loc, key))) is not None:
                return found
    if isinstance(value, list):
        for i, item in enumerate(value):
            if (found := _non_finite(item, (*loc, i))) is not None:
                return found
    return None


def _sample(prediction_id: str, version: str, arm: str, user_key: str | None, bucket: int | None,
            probability: float, request: BaseModel, latency_ms: float, served_at: dt.datetime) -> PredictionRecord:
    """The monitoring record of one prediction (built on the publisher's thread, not the event loop)."""
    return PredictionRecord(prediction_id=prediction_id, model_version=version, arm=arm,  # type: ignore[arg-type]
                            user_key=user_key, bucket=bucket, probability=probability,
                            request=request.model_dump(mode="json", by_alias=True), latency_ms=latency_ms, served_at=served_at)


class _RandomIds:
    """Random 128-bit ids as 32 hex digits (a version-4 UUID's strength), from the OS's CSPRNG in blocks.

    ``uuid.uuid4()`` makes one ``getrandom`` call per id; a syscall releases the GIL, and under load the
    event loop then waits for the model or publisher thread to give it back (tens of us a prediction).
    One read of 4 KiB serves 256 ids. A forked child starts a pool of its own.
    """

    _BLOCK = 256

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._reset()
        os.register_at_fork(after_in_child=self._reset)

    def _reset(self) -> None:
        self._pool, self._at = b"", 0

    def __call__(self) -> str:
        with self._lock:
            if self._at >= len(self._pool):
                self._pool, self._at = os.urandom(16 * self._BLOCK), 0
            at = self._at
            self._at = at + 16
            return self._pool[at:at + 16].hex()


new_id = _RandomIds()


async def _in_daemon_thread(fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)`` on a daemon thread of its own: a replica told to stop while it is still loading (a slow
    download, a wait on the model cache's lock) exits at once instead of waiting for the load at interpreter exit,
    which joins an executor's threads (and the fleet would SIGKILL it after its drain timeout)."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[Any] = loop.create_future()

    def settle(ok: bool, value: Any) -> None:
        if not done.done():
            (done.set_result if ok else done.set_exception)(value)

    def work() -> None:
        try:
            result = fn(*args)
        except BaseException as exc:  # handed to the awaiting task, whatever it is
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody awaits any more
                loop.call_soon_threadsafe(settle, False, exc)
        else:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(settle, True, result)

    threading.Thread(target=work, name="tenfold-load-model", daemon=True).start()
    return await done


def _refuse_invalid(exc: RequestInvalid, index: int | None, batch: str | None) -> ApiError:
    """A workload's refusal of one request; ``batch``: the batch key when the request came in a batch."""
    where = exc.within(f"{batch}[{index}]") if batch and index is not None else exc
    return ApiError(422, "invalid_request", f"{where.field}: {where.message}", field=where.field,
                    errors=[(where.field, where.message)])


# --- the app ---------------------------------------------------------------------------------------

def create_app(
    settings: Settings,
    *,
    arm: str = "stable",
    model_ref: str | None = None,
    loader: Loader = load_served_model,
    authenticator: Authenticator | None = None,
    publisher: Publisher | None = None,
    cache: PredictionCache | None = None,
    on_fatal: Callable[[str], None] | None = None,
    fault: Fault | None = None,
) -> FastAPI:
    """One replica of the model server for ``settings``, serving ``model_ref`` (alias or version) as ``arm``.

    ``loader``, ``publisher`` and ``cache`` default to the real ones (tests pass their own cache to share
    it between two apps). ``on_fatal(message)`` is called when the model cannot be loaded. ``fault``
    (:mod:`tenfold.serving.faults`) makes predictions late or failing on purpose.
    """
    if arm not in ARMS:
        raise UnknownArm(f"arm {arm!r} is not one of {', '.join(ARMS)}")
    server = settings.serving.server
    ref = model_ref or server.model_ref
    workload = get_workload(settings)
    request_model: type[BaseModel] = _forbidding_extras(workload.name, workload.request_model)
    batch_key_ = batch_key(workload)  # {"flights": [...]} for the flights workload
    batch_request = batch_model(request_model, server.max_batch_rows, batch_key_)
    metrics = ServerMetrics(arm)
    state = ReplicaState(arm, ref, metrics)
    auth = authenticator or Authenticator(settings)
    pub = publisher or Publisher(settings, metrics)
    predictions_cache = cache if cache is not None else PredictionCache(server.cache_entries)
    executor = DaemonThreadExecutor("tenfold-model")  # a hung call must not hold the process at exit

    def run_model(requests: list[BaseModel]) -> list[float]:
        assert state.served is not None
        return state.served.predict(requests)

    batcher: MicroBatcher[BaseModel, float] = MicroBatcher(
        run_model, executor=executor, max_batch_size=server.max_batch_size,
        max_wait_s=server.max_batch_wait_ms / 1000.0, on_batch=metrics.model_call, on_depth=metrics.queue_depth,
        is_model_failure=lambda exc: not isinstance(exc, (RequestInvalid, AssemblyError)),
    )

    async def load() -> None:
        try:
            served = await _in_daemon_thread(loader, settings, ref)
        except asyncio.CancelledError:
            raise
        except ServingLoadError as exc:
            message = str(exc)
        except Exception as exc:  # a loader bug must not leave the replica "loading" forever
            log.exception("loading model %r failed", ref)
            message = f"loading model {ref!r} failed: {type(exc).__name__}: {exc}"
        else:
            # The model and lookups are ~250,000 long-lived objects: a full collection walking them stopped the
            # replica for ~150 ms (its p99, bench/serving.py). Freeze them out of the collector's generations.
            gc.collect()
            gc.freeze()
            state.loaded(served)
            log.info("replica ready: model %s (%s), arm %s", served.version, ref, arm)
            return
        state.fail(message)
        log.critical("cannot serve: %s", message)
        if on_fatal is not None:
            on_fatal(message)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        metrics.ready(False)
        batcher.start()
        loading = asyncio.get_running_loop().create_task(load(), name="tenfold-load-model")
        try:
            yield
        finally:
            state.begin_drain()
            loading.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await loading
            await batcher.stop()
            await asyncio.get_running_loop().run_in_executor(None, pub.close)
            executor.shutdown(wait=False, cancel_futures=True)

    # In the cloud every path reaches the replicas through the public load balancer: the schema, the docs page and
    # the metrics ask for the API's login there (locally they stay open on loopback, for `tenfold serve status`).
    open_extras = settings.is_local
    app = FastAPI(
        title="Tenfold model server",
        version="1",
        description=("Predictions from the registry's model with online features, and the feedback that labels them. "
                     "Predict and feedback need 'Authorization: Bearer <token>' (`tenfold status` prints it) or, in the "
                     "cloud, the load balancer's IAP identity."),
        lifespan=lifespan,
        # A trailing slash got an empty, unauthenticated 307 to an http:// URL (the load balancer's https:// scheme
        # is not passed on), which nothing listens on behind a domain: a JSON 404 naming the path instead.
        redirect_slashes=False,
        docs_url="/docs" if open_extras else None, redoc_url="/redoc" if open_extras else None,
        openapi_url="/openapi.json" if open_extras else None,
    )
    app.router.route_class = _DirectRoute  # the routes declared below (and the bench floor's)
    app.state.replica = state
    app.state.metrics = metrics
    app.state.cache = predictions_cache
    app.state.batcher = batcher
    app.state.publisher = pub

    prefix = server.api_prefix.rstrip("/")
    predict_path, feedback_path = f"{prefix}/predict", f"{prefix}/feedback"
    health_path, ready_path, metrics_path = settings.serving.health_path, server.ready_path, server.metrics_path
    endpoints = {predict_path: "predict", feedback_path: "feedback", health_path: "healthz", ready_path: "readyz",
                 metrics_path: "metrics"}
    user_key_header = server.user_key_header.lower()
    bucket_header = settings.serving.load_balancer.bucket_header.lower()

    def routed_bucket(request: Request) -> int | None:
        """The bucket the request was routed by: HAProxy sets it from its hash of the user key header (a random one
        without), and the cloud's URL map routes on the same header. None without one (a client calling the replica
        directly): the user key's own bucket is reported then."""
        values = request.headers.getlist(bucket_header)
        value = values[-1].strip() if values else ""
        # isascii: "²" is a digit to isdigit() but not to int() (a 500 for a header any client may send)
        # Zero-padded reads as its number (as the URL map's range match does); int() refuses more than 4,300
        # digits (a 500, after the model had run), so a longer number is none.
        digits = value.lstrip("0") or ("0" if value else "")
        return int(digits) if digits.isascii() and digits.isdigit() and len(digits) <= 2 and int(digits) < BUCKETS else None

    def user_key_of(request: Request) -> str | None:
        """The user key of the header, read as HAProxy hashes it (``req.fhdr``: the last occurrence, whole,
        commas included), so the bucket reported is the one the request was routed by. None when absent or
        empty; 422 unless it is what a body's ``user_key`` may be (printable ASCII, no spaces, 1-128)."""
        values = request.headers.getlist(user_key_header)
        if not values or not values[-1]:
            return None
        key = values[-1]
        if len(key) > 128 or not _USER_KEY.fullmatch(key):
            message = "must be 1 to 128 printable ASCII characters without spaces (the A/B assignment key)"
            raise ApiError(422, "invalid_request", f"header {server.user_key_header}: {message}",
                           field=server.user_key_header, errors=[(server.user_key_header, message)])
        return key

    def authorise(request: Request) -> None:
        try:
            auth.check(request.headers)
        except AuthError as exc:
            headers = ({"WWW-Authenticate": "Bearer"} if exc.status == 401 and auth.mode == "bearer"
                       else {"Retry-After": str(server.retry_after_s)} if exc.status == 503 else {})
            raise ApiError(exc.status, "unauthorized" if exc.status == 401 else "unavailable", exc.message,
                           headers=headers) from None

    def parse_predict(body: Any, non_finite: bool, surrogates: bool) -> tuple[list[BaseModel], bool]:
        if isinstance(body, dict) and batch_key_ in body:
            items = body[batch_key_]
            if isinstance(items, list) and len(items) > server.max_batch_rows:
                too_many = f"holds {len(items)} requests; at most {server.max_batch_rows} per request: split it"
                raise ApiError(413, "batch_too_large", f"the batch {too_many}", field=batch_key_,
                               errors=[(batch_key_, too_many)])
            model: type[BaseModel] = batch_request
            batch = True
        elif isinstance(body, dict):
            model, batch = request_model, False
        else:
            raise ApiError(422, "invalid_request", f"the body must be a JSON object (one request, or {{\"{batch_key_}\": "
                           f"[...]}}), not {type(body).__name__}", field="body", errors=[("body", "not an object")])
        if non_finite and (bad := _non_finite(body, ())) is not None:  # only then: the walk costs every request
            where = field_path(bad)
            raise ApiError(422, "invalid_request", f"{where}: NaN and infinities are not numbers this API accepts",
                           field=where, errors=[(where, "not a finite number")])
        if surrogates and (bad := _lone_surrogate(body, ())) is not None:  # only then, as above
            where = field_path(bad)
            raise ApiError(422, "invalid_request", f"{where}: {_NOT_UNICODE}; fix the request and retry", field=where,
                           errors=[(where, _NOT_UNICODE)])
        try:
            parsed = model.model_validate(body)
        except ValidationError as exc:
            raise _validation_error(exc) from None
        requests = list(getattr(parsed, batch_key_)) if batch else [parsed]
        return requests, batch

    def not_ready() -> ApiError:
        retry = str(server.retry_after_s)
        if state.status == "failed":
            return ApiError(503, "not_ready", f"this replica failed to load its model: {state.detail}", headers={"Retry-After": retry})
        return ApiError(503, "not_ready", f"this replica is {state.status}; retry shortly", headers={"Retry-After": retry})

    # --- endpoints ----------------------------------------------------------------------------------
    errors_4xx: dict[int | str, dict[str, Any]] = {
        401: {"model": ErrorBody, "description": "Missing or wrong credentials."},
        413: {"model": ErrorBody, "description": "Body or batch too large."},
        415: {"model": ErrorBody, "description": "Not JSON."},
        422: {"model": ErrorBody, "description": "Invalid request; `field` names what to fix."},
        503: {"model": ErrorBody, "description": "Not ready, or Pub/Sub unavailable; see Retry-After."},
    }

    @app.post(predict_path, response_model=Prediction | BatchPrediction, responses=errors_4xx,  # type: ignore[arg-type]
              openapi_extra={"requestBody": {"required": True, "content": {"application/json": {"schema": {"oneOf": [
                  {"$ref": f"#/components/schemas/{request_model.__name__}"},
                  {"$ref": "#/components/schemas/BatchPredictRequest"}]}}}}},
              summary="Predict for one flight or a batch")
    async def predict(request: Request) -> Response:
        started = time.perf_counter()
        authorise(request)
        if state.served is None:
            raise not_ready()
        served = state.served
        if fault is not None and fault.active and await fault.strikes():
            raise ApiError(500, "injected_fault", f"this replica fails on purpose ({fault}): clear it with "
                           "`tenfold serve fault --pool <pool> --clear`")
        header_key = user_key_of(request)
        with batcher.arriving():
            body, non_finite, surrogates = await read_json(request, server.max_body_bytes, "send fewer requests per batch")
            requests, batch = parse_predict(body, non_finite, surrogates)
            for i, item in enumerate(requests):
                try:
                    served.check(item)
                except RequestInvalid as exc:
                    raise _refuse_invalid(exc, i, batch_key_ if batch else None) from None
        probabilities = await _score(served, requests, batch)
        now = dt.datetime.now(dt.UTC)
        latency_ms = (time.perf_counter() - started) * 1000.0
        rows = []
        rate = server.prediction_sample_rate
        routed = routed_bucket(request)
        for item, probability in zip(requests, probabilities, strict=True):
            user_key = header_key or getattr(item, "user_key", None)
            bucket = routed if routed is not None else bucket_of(user_key) if user_key else None
            prediction_id = new_id()
            rows.append({"prediction_id": prediction_id, "probability": probability, "model_version": served.version,
                         "arm": arm, "bucket": bucket})
            if rate > 0 and (rate >= 1 or random.random() < rate):
                pub.publish_sample(functools.partial(
                    _sample, prediction_id, served.version, arm, user_key, bucket, probability, item, latency_ms, now))
        metrics.predictions(len(rows))
        if batch:
            return JSONResponse({"predictions": rows, "model_version": served.version, "arm": arm})
        return JSONResponse(rows[0])

    async def _score(served: ServedModel, requests: list[BaseModel], batch: bool) -> list[float]:
        keys = [predictions_cache.key(served.version, r) for r in requests]
        out: list[float | None] = [predictions_cache.get(k) for k in keys]
        missing = [i for i, p in enumerate(out) if p is None]
        metrics.cache(len(requests) - len(missing), len(missing))
        if missing:
            try:
                fresh = await asyncio.wait_for(batcher.submit([requests[i] for i in missing]), server.model_call_timeout_s)
            except TimeoutError:
                raise ApiError(503, "model_timeout", f"no prediction within {server.model_call_timeout_s:g} s (queued and "
                               "scored; a replica whose model call hangs leaves the rotation); retry",
                               headers={"Retry-After": str(server.retry_after_s)}) from None
            except RequestInvalid as exc:  # check() let it through but assembly refused it
                index = missing[exc.index] if exc.index is not None and exc.index < len(missing) else None
                raise _refuse_invalid(exc, index, batch_key_ if batch else None) from None
            except BatcherStopped:  # shutting down (or not started): no model call was made
                raise not_ready() from None
            except AssemblyError:  # the request's or the workload's, on every replica alike: a JSON 500, counted
                raise
            except Exception as exc:  # the model failed (a broken device, memory): the replica's state, not the request's
                log.error("model call failed (%d in a row): %s: %s", batcher.failed_in_a_row, type(exc).__name__, exc)
                raise ApiError(503, "model_error", f"the model failed on this request ({type(exc).__name__}); retry: "
                               f"a replica whose model fails {MODEL_FAILURES_OUT} times in a row leaves the rotation",
                               headers={"Retry-After": str(server.retry_after_s)}) from None
            for i, p in zip(missing, fresh, strict=True):
                out[i] = p
                predictions_cache.put(keys[i], p)
        return [float(p) for p in out]  # type: ignore[arg-type]

    @app.post(feedback_path, status_code=202, response_model=FeedbackAccepted, responses=errors_4xx,
              openapi_extra={"requestBody": {"required": True, "content": {"application/json": {"schema": {
                  "$ref": "#/components/schemas/FeedbackRequest"}}}}},
              summary="Record the observed outcome of a prediction")
    async def feedback(request: Request) -> Response:
        authorise(request)
        # NaN or an infinity, or a lone surrogate, fails validation below (every field has a type, pattern or value).
        body, _, _ = await read_json(request, server.max_body_bytes, "send one outcome per request: a JSON object with "
                                  "prediction_id, outcome and (optionally) observed_at, nothing else")
        if not isinstance(body, dict):
            raise ApiError(422, "invalid_request", "the body must be a JSON object with prediction_id and outcome",
                           field="body", errors=[("body", "not an object")])
        try:
            parsed = FeedbackRequest.model_validate(body)
        except ValidationError as exc:
            raise _validation_error(exc) from None
        record = FeedbackRecord(prediction_id=parsed.prediction_id, outcome=parsed.outcome,
                                observed_at=parsed.observed_at, received_at=dt.datetime.now(dt.UTC))
        try:
            message_id = await pub.publish_feedback(record)
        except PublishUnavailable as exc:
            metrics.feedback("unavailable")
            raise ApiError(503, "feedback_unavailable", str(exc), headers={"Retry-After": str(exc.retry_after_s)}) from None
        metrics.feedback("accepted")
        return JSONResponse({"status": "accepted", "prediction_id": parsed.prediction_id, "message_id": message_id},
                            status_code=202)

    @app.get(health_path, response_model=Health, responses={503: {"model": Health}}, summary="Liveness")
    async def healthz() -> Response:
        if state.status == "failed":
            return JSONResponse({"status": "failed"}, status_code=503)
        if batcher.failed_in_a_row >= MODEL_FAILURES_OUT:  # out of rotation, so nothing would clear it: replace it
            return JSONResponse({"status": "failing"}, status_code=503)
        if batcher.call_running_s() > 3 * server.model_call_timeout_s:  # hung for good: have it replaced
            return JSONResponse({"status": "stalled"}, status_code=503)
        return JSONResponse({"status": "ok"})

    def readiness() -> Readiness:
        """Whether this replica is in the rotation, and why not: the one decision of ``/readyz`` and of the
        ``tenfold_ready`` gauge, which it sets (a hung or failing model, or IAP keys not held yet, are worked out
        here, when asked: the gauge said 1 while /readyz answered 503)."""
        body = state.readiness()
        running = batcher.call_running_s()
        if body.ready and running > server.model_call_timeout_s:
            body = body.model_copy(update={"ready": False, "status": "stalled",
                                           "detail": f"a model call has run for {running:.0f} s"})
        elif body.ready and batcher.failed_in_a_row >= MODEL_FAILURES_OUT:
            body = body.model_copy(update={"ready": False, "status": "failing",
                                           "detail": f"the last {batcher.failed_in_a_row} model calls failed"})
        elif body.ready and (why := auth.not_ready()):  # no request could be authorised: not in rotation yet
            body = body.model_copy(update={"ready": False, "status": "loading", "detail": why})
        metrics.ready(body.ready)
        return body

    @app.get(ready_path, response_model=Readiness, responses={503: {"model": Readiness}}, summary="Readiness")
    async def readyz(request: Request) -> Response:
        body = readiness()
        shown = body.model_dump(mode="json")
        if not open_extras and not auth.allows(request.headers):
            # Open for the load balancer's probes, which read only the code. Behind a public load balancer anyone
            # reaches it: the version served, and a failed load's error (bucket URIs, account names), are for callers
            # with the login.
            shown = {k: shown[k] for k in ("ready", "status")}
        return JSONResponse(shown, status_code=200 if body.ready else 503)

    @app.get(metrics_path, summary="Prometheus metrics", response_class=Response,
             responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text exposition."}})
    async def prometheus_metrics(request: Request) -> Response:
        if not open_extras:
            authorise(request)
        readiness()  # tenfold_ready as /readyz would answer now
        return Response(metrics.exposition(), media_type=metrics.content_type)

    if not open_extras:
        @app.get("/openapi.json", include_in_schema=False)
        async def openapi_schema(request: Request) -> Response:
            authorise(request)
            return JSONResponse(app.openapi())

    # --- errors -------------------------------------------------------------------------------------
    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> Response:
        return exc.response()

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        what = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        path = request.url.path
        if exc.status_code == 404 and len(path) > 1 and path.endswith("/") and path.rstrip("/") in endpoints:
            hint = f"; drop the trailing slash: {path.rstrip('/')}"
        elif exc.status_code in (404, 405):
            hint = f"; the API is under {prefix}/ (see /{'docs' if open_extras else 'openapi.json'})"
        else:
            hint = ""
        return ApiError(exc.status_code, what, f"{exc.detail}{hint}", headers=dict(exc.headers or {})).response()

    app.add_middleware(_Observe, metrics=metrics, endpoints=endpoints)  # type: ignore[arg-type]
    _describe_request_bodies(app, request_model, batch_request)
    return app


class _Observe:
    """Outermost middleware: latency and status per endpoint, and a JSON 500 (counted, logged, no
    traceback to the client) for any exception that escapes a handler."""

    def __init__(self, app: ASGIApp, metrics: ServerMetrics, endpoints: dict[str, str]) -> None:
        self.app, self.metrics, self.endpoints = app, metrics, endpoints

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = {"code": 500, "sent": False}

        async def observed_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"], status["sent"] = message["status"], True
            await send(message)

        try:
            await self.app(scope, receive, observed_send)
        except asyncio.CancelledError:
            # Cancelled by the drain's timeout (uvicorn cancels what is left): no answer was sent and nothing failed,
            # so it is counted as 499 (the client got no response), not as a 500 of the version being served.
            if not status["sent"]:
                status["code"] = 499
            raise
        except Exception:
            incident = uuid.uuid4().hex[:12]
            log.exception("unhandled error %s on %s %s", incident, scope.get("method"), scope.get("path"))
            self.metrics.unhandled_error()
            status["code"] = 500
            if not status["sent"]:
                await JSONResponse({"error": "internal", "message": f"internal error {incident}: the replica logged it; "
                                    "retry, and report the id if it persists", "field": None, "errors": []},
                                   status_code=500)(scope, receive, send)
        finally:
            endpoint = self.endpoints.get(scope.get("path", ""), "other")
            self.metrics.observe_request(endpoint, int(status["code"]), time.perf_counter() - started)


def _forbidding_extras(workload: str, request_model: type[BaseModel]) -> type[BaseModel]:
    """``request_model``, refused (:class:`WorkloadError`) unless it forbids unknown fields: with pydantic's default
    (extra fields ignored) a misspelt field (``"tail_num"`` for ``tailnum``) was dropped and the request scored with a
    null in its place, never the 422 docs/serving.md promises."""
    config = getattr(request_model, "model_config", None)
    extra = config.get("extra") if isinstance(config, dict) else None
    if extra != "forbid":
        name = getattr(request_model, "__qualname__", repr(request_model))
        raise WorkloadError(f"workload {workload!r}: its request_model {name} does not forbid unknown fields (extra is "
                            f"{extra!r}), so a misspelt field would be dropped and the request scored without it: "
                            'set model_config = ConfigDict(extra="forbid") on it (docs/workloads.md)')
    return request_model


def _describe_request_bodies(app: FastAPI, request_model: type[BaseModel], batch_request: type[BaseModel]) -> None:
    """Put the bodies the handlers validate themselves into the OpenAPI components they reference."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        for model in (request_model, batch_request, FeedbackRequest):
            body = TypeAdapter(model).json_schema(ref_template="#/components/schemas/{model}")
            for name, sub in body.pop("$defs", {}).items():
                components.setdefault(name, sub)
            components[model.__name__] = body
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]

