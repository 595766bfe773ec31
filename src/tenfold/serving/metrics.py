"""The replica's Prometheus metrics, on a registry of its own (never ``prometheus_client``'s global one).

One :class:`ServerMetrics` per app instance, so two apps in one process (tests) never share counters,
and ``GET /metrics`` shows exactly this replica. Every series carries ``model_version`` and ``arm``; the
version is ``loading`` until the model is in memory.
"""

from __future__ import annotations

import threading
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

LOADING = "loading"
_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)


class ServerMetrics:
    """The metrics of one replica; :meth:`exposition` renders them for ``GET /metrics``."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self, arm: str) -> None:
        self.arm = arm
        self.model_version = LOADING
        self.registry = CollectorRegistry(auto_describe=True)
        labels = ("model_version", "arm")
        r = self.registry
        self._latency = Histogram("tenfold_request_latency_seconds", "Request latency by endpoint (server side).",
                                  (*labels, "endpoint"), buckets=_LATENCY_BUCKETS, registry=r)
        self._requests = Counter("tenfold_requests_total", "Responses by endpoint and status code.",
                                 (*labels, "endpoint", "code"), registry=r)
        self._errors = Counter("tenfold_errors_total", "Error responses (4xx and 5xx) by endpoint and status code.",
                               (*labels, "endpoint", "code"), registry=r)
        self._unhandled = Counter("tenfold_unhandled_errors_total",
                                  "Unexpected exceptions answered with a JSON 500.", labels, registry=r)
        self._batch_rows = Histogram("tenfold_batch_size", "Rows per model call (after micro-batching).", labels,
                                     buckets=_BATCH_BUCKETS, registry=r)
        self._model_calls = Counter("tenfold_model_calls_total", "Forward passes of the model.", labels, registry=r)
        self._predictions = Counter("tenfold_predictions_total", "Predictions served (rows).", labels, registry=r)
        self._cache_hits = Counter("tenfold_cache_hits_total", "Prediction cache hits (rows).", labels, registry=r)
        self._cache_misses = Counter("tenfold_cache_misses_total", "Prediction cache misses (rows).", labels, registry=r)
        self._queue_depth = Gauge("tenfold_queue_depth", "Rows waiting for the model.", labels, registry=r)
        self._samples = Counter("tenfold_prediction_samples_total",
                                "Sampled predictions by what became of them (published or dropped).",
                                (*labels, "outcome"), registry=r)
        self._dropped = Counter("tenfold_dropped_samples_total",
                                "Monitoring samples not published, by reason (buffer_full, breaker_open, publish_failed).",
                                (*labels, "reason"), registry=r)
        self._feedback = Counter("tenfold_feedback_total", "Feedback requests by result (accepted, unavailable).",
                                 (*labels, "result"), registry=r)
        self._breaker_open = Gauge("tenfold_pubsub_breaker_open",
                                   "1 while the circuit breaker of a Pub/Sub topic (predictions, feedback) is open.",
                                   (*labels, "topic"), registry=r)
        self._ready = Gauge("tenfold_ready", "1 while the replica is ready to serve.", labels, registry=r)
        # Labelled children, bound once: ``labels()`` sorts and validates its arguments on every call.
        self._children: dict[tuple[Any, ...], Any] = {}
        # The gauges that hold a state (ready, queue depth, breaker open), by (gauge, *extra labels): a version change
        # moves each to the new version's series and removes the old one, which would otherwise keep its last value
        # for ever (a breaker that opened while loading stayed "open" under model_version="loading").
        self._state: dict[tuple[Any, ...], float] = {}
        self._state_lock = threading.Lock()  # the publisher's threads set the breaker while the version changes

    def _l(self) -> dict[str, str]:
        return {"model_version": self.model_version, "arm": self.arm}

    def _child(self, metric: Any, *extra: str) -> Any:
        """``metric.labels(model_version, arm, *extra)``, cached (the version is part of the key)."""
        key = (metric, self.model_version, *extra)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(self.model_version, self.arm, *extra)
        return child

    def set_model_version(self, version: str) -> None:
        with self._state_lock:
            old, self.model_version = self.model_version, version
            if version == old:
                return
            for (gauge, *extra), value in self._state.items():
                gauge.remove(old, self.arm, *extra)
                self._children.pop((gauge, old, *extra), None)
                self._child(gauge, *extra).set(value)

    def _set_state(self, gauge: Any, value: float, *extra: str) -> None:
        with self._state_lock:  # else a value set meanwhile could be overwritten, or land on the old version's series
            self._state[(gauge, *extra)] = value
            self._child(gauge, *extra).set(value)

    def observe_request(self, endpoint: str, code: int, seconds: float) -> None:
        status = str(code)
        self._child(self._latency, endpoint).observe(seconds)
        self._child(self._requests, endpoint, status).inc()
        if code >= 400:
            self._child(self._errors, endpoint, status).inc()

    def unhandled_error(self) -> None:
        self._child(self._unhandled).inc()

    def model_call(self, rows: int) -> None:
        self._child(self._model_calls).inc()
        self._child(self._batch_rows).observe(rows)

    def predictions(self, rows: int) -> None:
        self._child(self._predictions).inc(rows)

    def cache(self, hits: int, misses: int) -> None:
        if hits:
            self._child(self._cache_hits).inc(hits)
        if misses:
            self._child(self._cache_misses).inc(misses)

    def queue_depth(self, rows: int) -> None:
        self._set_state(self._queue_depth, rows)

    def sample_published(self, count: int = 1) -> None:
        self._child(self._samples, "published").inc(count)

    def sample_dropped(self, reason: str, count: int = 1) -> None:
        self._child(self._samples, "dropped").inc(count)
        self._child(self._dropped, reason).inc(count)

    def feedback(self, result: str) -> None:
        self._child(self._feedback, result).inc()

    def breaker(self, topic: str, is_open: bool) -> None:
        self._set_state(self._breaker_open, 1 if is_open else 0, topic)

    def ready(self, is_ready: bool) -> None:
        self._set_state(self._ready, 1 if is_ready else 0)

    def dropped_by_reason(self) -> dict[str, int]:
        """The monitoring samples dropped so far, by reason, over every model version served (none: empty)."""
        by: dict[str, int] = {}
        for metric in self.registry.collect():
            for sample in metric.samples:
                if sample.name == "tenfold_dropped_samples_total" and sample.value:
                    reason = sample.labels["reason"]
                    by[reason] = by.get(reason, 0) + int(sample.value)
        return by

    def value(self, name: str, **labels: str) -> float:
        """One sample's value (0 when absent), e.g. ``value("tenfold_cache_hits_total")``; for tests and status."""
        full = {**self._l(), **labels}
        total = 0.0
        for metric in self.registry.collect():
            for sample in metric.samples:
                if sample.name == name and all(sample.labels.get(k) == v for k, v in full.items()):
                    total += sample.value
        return total

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
