"""Publishing to Pub/Sub from a replica: a bounded buffer and a circuit breaker in front of the real client.

Two kinds of message, two promises:

* **Monitoring samples** (:class:`~tenfold.messaging.records.PredictionRecord` on the predictions
  topic) are fire-and-forget: a prediction only queues its sample, and a thread of the publisher builds
  the samples that arrive within ``SAMPLE_LINGER_S`` of the first and publishes them, one message each,
  in one request, so a prediction never waits for Pub/Sub. At most ``publish_buffer`` samples are
  queued or in flight; beyond that, or while the breaker is open, a sample is dropped and counted
  (``tenfold_dropped_samples_total{reason}``), so a Pub/Sub outage costs monitoring data, never
  prediction latency or memory.
* **Feedback** (:class:`~tenfold.messaging.records.FeedbackRecord` on the feedback topic) is answered
  202 only after Pub/Sub acknowledged the publish (the future resolved with a message id). While the
  breaker is open, or when the publish fails or outlasts ``feedback_publish_timeout_s``, the caller gets
  :class:`PublishUnavailable` (the server answers 503 with ``Retry-After``) and must retry. A publish
  that Pub/Sub accepts after we gave up can reach the topic although the client saw 503; the client's
  retry then publishes it again, and the feedback sink's upsert on ``prediction_id`` makes that harmless.
  So feedback is delivered at least once and never acknowledged and then lost.

Each topic has its own circuit breaker: it opens after ``breaker_failures`` consecutive failed publishes to
that topic and lets one trial publish through after ``breaker_reset_s``; the trial's success closes it. So
a predictions topic that fails alone (deleted, or its permission revoked) costs monitoring samples, never
feedback, whose own topic may be healthy.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from tenfold.messaging.records import FeedbackRecord, PredictionRecord

if TYPE_CHECKING:
    from tenfold.config import Settings
    from tenfold.serving.metrics import ServerMetrics

log = logging.getLogger(__name__)

# Monitoring samples per publish request (Pub/Sub takes up to 1,000 messages and 10 MB in one).
SAMPLE_CHUNK = 100
# How long the first sample of a request waits for others (the client library's own batching waits 10 ms).
SAMPLE_LINGER_S = 0.01


class PublishUnavailable(RuntimeError):
    """Pub/Sub cannot take the message now; ``retry_after_s`` says when to try again."""

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class CircuitBreaker:
    """Closed -> open after ``failures`` consecutive failures -> one trial after ``reset_s`` -> closed on success.

    Thread-safe: publish callbacks report from the Pub/Sub client's threads.
    """

    def __init__(self, failures: int, reset_s: float, *, clock: Callable[[], float] = time.monotonic,
                 on_change: Callable[[bool], None] | None = None, name: str = "Pub/Sub") -> None:
        self.failures, self.reset_s, self.name = failures, reset_s, name
        self._clock = clock
        self._on_change = on_change or (lambda is_open: None)
        self._lock = threading.Lock()
        self._consecutive = 0
        self._opened_at: float | None = None
        self._trial_since: float | None = None

    @property
    def is_open(self) -> bool:
        """True while calls are refused (open, or half-open with its one trial out)."""
        with self._lock:
            return self._opened_at is not None

    def retry_after_s(self) -> float:
        """Seconds until the breaker lets a trial through (0 when closed)."""
        with self._lock:
            if self._opened_at is None:
                return 0.0
            return max(0.0, self._opened_at + self.reset_s - self._clock())

    def allow(self) -> bool:
        """May a call go out now? While open, one trial every ``reset_s``; its outcome must be reported."""
        with self._lock:
            if self._opened_at is None:
                return True
            now = self._clock()
            if now < self._opened_at + self.reset_s:
                return False
            # Half-open: one trial at a time; a trial that never reported counts as lost after reset_s.
            if self._trial_since is not None and now < self._trial_since + self.reset_s:
                return False
            self._trial_since = now
            return True

    def success(self) -> None:
        with self._lock:
            was_open = self._opened_at is not None
            self._consecutive, self._opened_at, self._trial_since = 0, None, None
            if was_open:  # reported under the lock: else a failure that opened it just before could report last
                self._on_change(False)
        if was_open:
            log.warning("circuit breaker of %s closed: publishing again", self.name)

    def failure(self, count: int = 1) -> None:
        """``count`` failed calls (a publish request of several messages fails for each of them)."""
        with self._lock:
            self._consecutive += count
            now = self._clock()
            opening = self._opened_at is None and self._consecutive >= self.failures
            if self._opened_at is not None:
                self._opened_at, self._trial_since = now, None  # a failed trial: stay open another reset_s
            elif opening:
                self._opened_at = now
                self._on_change(True)  # under the lock, as in success(): the gauge is the breaker's state
        if opening:
            log.warning("circuit breaker of %s open after %d failed publishes: nothing is published to it (samples "
                        "are dropped, feedback is refused with 503) for %.1f s", self.name, self.failures, self.reset_s)


class Publisher:
    """The replica's Pub/Sub publisher (see the module docstring). ``client`` defaults to the real one."""

    def __init__(self, settings: Settings, metrics: ServerMetrics, *, client: Any = None) -> None:
        from tenfold.messaging.clients import topic_path

        server = settings.serving.server
        self._settings = settings
        self._metrics = metrics
        self._client = client
        self.timeout_s = server.feedback_publish_timeout_s
        self.retry_after_s = server.retry_after_s
        self.buffer = server.publish_buffer
        self.breakers = {
            kind: CircuitBreaker(server.breaker_failures, server.breaker_reset_s, name=f"the {kind} topic",
                                 on_change=functools.partial(metrics.breaker, kind))
            for kind in ("predictions", "feedback")
        }
        self._predictions_topic = topic_path(settings, settings.messaging.predictions_topic)
        self._feedback_topic = topic_path(settings, settings.messaging.feedback_topic)
        self._lock = threading.Lock()
        self._client_lock = threading.Lock()
        self._in_flight = 0
        self._idle = threading.Condition(self._lock)
        self._closed = False
        self._samples: queue.SimpleQueue[Callable[[], PredictionRecord] | None] = queue.SimpleQueue()
        self._sampler: threading.Thread | None = None
        from google.api_core import retry as retries

        from tenfold.outages import outage_types

        # Bounded: a publish to an unreachable Pub/Sub fails within timeout_s instead of retrying for
        # the client library's default minute, so the breaker learns of an outage quickly.
        self._retry = retries.Retry(
            initial=0.1, maximum=1.0, multiplier=2.0, timeout=self.timeout_s,
            predicate=retries.if_exception_type(*outage_types()),
        )

    @property
    def client(self) -> Any:
        """The Pub/Sub publisher, made on first use, once: the sampler thread and the first feedback may both
        get here first (two clients would each hold batches and threads, one never closed)."""
        if self._client is None:
            with self._client_lock:
                if self._client is None:
                    from tenfold.messaging.clients import publisher_client

                    self._client = publisher_client(self._settings)
        return self._client

    @property
    def in_flight(self) -> int:
        with self._lock:
            return self._in_flight

    def _publish(self, topic: str, data: bytes, attributes: dict[str, str]) -> Any:
        return self.client.publish(topic, data, retry=self._retry, timeout=self.timeout_s, **attributes)

    def _track(self, future: Any, breaker: CircuitBreaker, on_done: Callable[[BaseException | None], None]) -> None:
        def done(f: Any) -> None:
            try:
                exc = f.exception()
            except BaseException as cancelled:  # cancelled futures raise here
                exc = cancelled
            if exc is None:
                breaker.success()
            else:
                breaker.failure()
            try:
                on_done(exc)
            finally:
                with self._lock:
                    self._in_flight -= 1
                    self._idle.notify_all()

        future.add_done_callback(done)

    # --- monitoring samples -------------------------------------------------------------------------
    def publish_sample(self, record: PredictionRecord | Callable[[], PredictionRecord]) -> bool:
        """Queue one sample for Pub/Sub and return at once; False (and counted) when the buffer is full.

        ``record`` may be a function that builds it: the sampler thread calls it, so neither building the
        message nor handing it to the client costs the request path (the event loop) anything.
        """
        with self._lock:
            full = self._closed or self._in_flight >= self.buffer
            if not full:
                self._in_flight += 1
        if full:
            self._metrics.sample_dropped("buffer_full")
            return False
        self._ensure_sampler()
        self._samples.put(record if callable(record) else (lambda: record))
        return True

    def _ensure_sampler(self) -> None:
        if self._sampler is None:
            with self._lock:
                if self._sampler is None:
                    self._sampler = threading.Thread(target=self._sample_loop, name="tenfold-samples", daemon=True)
                    self._sampler.start()

    def _sample_loop(self) -> None:
        """Publish the samples that arrive within ``SAMPLE_LINGER_S`` of the first (at most ``SAMPLE_CHUNK``) in
        one request, until close(): under load a request carries tens of samples, which is what makes it cheap."""
        stopping = False
        while not stopping:
            build = self._samples.get()
            if build is None:
                return
            chunk = [build]
            linger_until = time.monotonic() + SAMPLE_LINGER_S
            while len(chunk) < SAMPLE_CHUNK:
                try:
                    nxt = self._samples.get(timeout=max(0.0, linger_until - time.monotonic()))
                except queue.Empty:
                    break
                if nxt is None:
                    stopping = True
                    break
                chunk.append(nxt)
            try:
                self._send_samples(chunk)
            except Exception:  # never let one chunk stop the thread
                log.exception("publishing %d prediction samples failed", len(chunk))
                self._metrics.sample_dropped("publish_failed", len(chunk))
            finally:
                self._release(len(chunk))

    def _send_samples(self, chunk: list[Callable[[], PredictionRecord]]) -> None:
        """One publish request for ``chunk`` (on the sampler thread; counts every sample's fate)."""
        breaker = self.breakers["predictions"]
        if not breaker.allow():
            self._metrics.sample_dropped("breaker_open", len(chunk))
            return
        from google.pubsub_v1.types import PublishRequest, PubsubMessage

        message = PubsubMessage.pb()
        messages = []
        for build in chunk:
            try:
                record = build()
                messages.append(message(data=record.to_message(), attributes=record.attributes()))
            except Exception:
                log.exception("could not build a prediction sample")
                self._metrics.sample_dropped("publish_failed")
        if not messages:
            return
        try:
            self._publish_request(PublishRequest.pb()(topic=self._predictions_topic, messages=messages))
        except Exception as exc:
            log.debug("%d prediction samples not published: %s", len(messages), exc)
            breaker.failure(len(messages))
            self._metrics.sample_dropped("publish_failed", len(messages))
            return
        breaker.success()
        self._metrics.sample_published(len(messages))

    def _publish_request(self, request: Any) -> None:
        """One Publish RPC of the client's generated API (the base class's ``publish``, which the batching
        ``PublisherClient.publish()`` overrides): ~20 us of this process's CPU per message where ``publish()``
        costs ~100 (a future, batch bookkeeping and a commit thread per batch; bench/serving.py)."""
        from google.pubsub_v1.services.publisher.client import PublisherClient as Generated

        Generated.publish(self.client, request=request, retry=self._retry, timeout=self.timeout_s)

    def _release(self, count: int = 1) -> None:
        with self._lock:
            self._in_flight -= count
            self._idle.notify_all()

    # --- feedback -----------------------------------------------------------------------------------
    async def publish_feedback(self, record: FeedbackRecord) -> str:
        """Publish and wait for Pub/Sub's acknowledgement; the message id, or :class:`PublishUnavailable`."""
        breaker = self.breakers["feedback"]
        if not breaker.allow():
            wait = max(self.retry_after_s, round(breaker.retry_after_s() + 0.5))
            raise PublishUnavailable("Pub/Sub is unavailable (circuit breaker open): the feedback was not recorded; "
                                     f"retry in {wait} s", wait)
        with self._lock:
            self._in_flight += 1
        try:
            future = self._publish(self._feedback_topic, record.to_message(), record.attributes())
        except Exception as exc:
            breaker.failure()
            self._release()
            raise PublishUnavailable(f"Pub/Sub refused the feedback ({exc}); retry in {self.retry_after_s} s",
                                     self.retry_after_s) from exc
        self._track(future, breaker, lambda exc: None)
        try:
            # The publish's own retry gives up after timeout_s; the margin covers the batch's latency.
            message_id = await asyncio.wait_for(asyncio.wrap_future(future), self.timeout_s + 1.0)
        except Exception as exc:
            raise PublishUnavailable(f"Pub/Sub did not acknowledge the feedback ({type(exc).__name__}: {exc}); "
                                     f"it was not recorded: retry in {self.retry_after_s} s", self.retry_after_s) from exc
        return str(message_id)

    # --- shutdown -----------------------------------------------------------------------------------
    def close(self, timeout_s: float = 5.0) -> int:
        """Stop taking samples, wait up to ``timeout_s`` for those in flight, close the client.

        Returns how many publishes were still in flight when it gave up (0 after a clean flush).
        """
        with self._lock:
            self._closed = True
        if self._sampler is not None:
            self._samples.put(None)  # after the samples already queued
            self._sampler.join(timeout_s)
        if self._client is None:
            return 0
        try:
            self._client.stop()  # sends what is batched now; later publish() calls raise
        except Exception:
            log.debug("Pub/Sub publisher stop failed", exc_info=True)
        deadline = time.monotonic() + timeout_s
        with self._lock:
            while self._in_flight and time.monotonic() < deadline:
                self._idle.wait(timeout=max(0.0, deadline - time.monotonic()))
            left = self._in_flight
        try:
            self._client.transport.close()
        except Exception:
            log.debug("Pub/Sub transport close failed", exc_info=True)
        if left:
            log.warning("%d Pub/Sub publishes were still in flight at shutdown", left)
        return left
