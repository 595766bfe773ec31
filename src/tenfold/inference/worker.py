"""The offline inference worker: pulls scoring requests, scores them, writes each result once, then acks.

Run it: ``python -m tenfold.inference.worker`` (settings from ``TENFOLD_ENV``, as the cloud instance group's
startup script does), or ``python -m tenfold.inference.worker --settings-file run/inference/settings.json``
(what the local pool of ``batch_inference`` starts). It runs until SIGTERM or SIGINT, finishing the
requests in hand first.

It holds a streaming pull on ``settings.messaging.subscriptions["requests"]`` with flow control
(``inference.max_messages`` / ``max_bytes`` outstanding), and the client extends the lease of every
message in hand for up to ``inference.max_lease_s``, so a slow batch is not redelivered meanwhile. For each
message (one request of many rows, :mod:`tenfold.inference.requests`):

1. a request whose result already exists (a duplicate delivery: a redelivery after a crash, a retried
   publish, a replay) is acknowledged and nothing else;
2. otherwise its rows are scored with the model version the request names and the result is created
   if absent (:mod:`tenfold.inference.store`); only when that write returned, and so is durable, is the
   message acknowledged. A crash anywhere before the ack redelivers the message, and the redelivery
   finds the result;
3. a message that cannot be decoded or scored is recorded in the run's ``errors/`` (keyed by request id,
   with each delivery attempt) and nacked, never acked: after the subscription's
   ``max_delivery_attempts`` Pub/Sub moves it to the dead-letter topic (``tenfold dlq inspect``).

Imports are deferred so ``--help`` answers at once and the module loads cheaply.
"""

from __future__ import annotations

import argparse
import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tenfold.config import Settings
    from tenfold.inference.store import Objects

log = logging.getLogger("tenfold.inference.worker")


@dataclass
class WorkerStats:
    received: int = 0  # deliveries, redeliveries included
    scored: int = 0  # results this worker created
    duplicates: int = 0  # deliveries whose result already existed
    failed: int = 0  # deliveries nacked as unprocessable
    rows: int = 0


class Worker:
    """The request handler and the streaming pull around it; :meth:`run` until ``stop`` is set."""

    def __init__(self, settings: Settings, *, objects: Objects | None = None) -> None:
        from tenfold.inference.scoring import ModelCache
        from tenfold.inference.store import work_objects

        self.settings = settings
        self.objects = objects or work_objects(settings)
        self.models = ModelCache(settings)
        self.stats = WorkerStats()
        self.closed = True  # False when the last run's pull did not close in time
        self._lock = threading.Lock()
        sub = settings.messaging.subscriptions.get("requests")
        if sub is None:
            raise ValueError("settings.messaging.subscriptions has no 'requests' subscription: the inference worker "
                             "pulls scoring requests from it")
        self.subscription = sub

    def _count(self, **deltas: int) -> None:
        with self._lock:
            for k, v in deltas.items():
                setattr(self.stats, k, getattr(self.stats, k) + v)

    def handle(self, message: Any) -> None:
        """One delivery (a ``pubsub_v1`` message): see the module docstring. Acks or nacks, never raises."""
        from tenfold.inference import faults
        from tenfold.inference.requests import REQUEST_ID, RUN, RequestError, decode
        from tenfold.inference.scoring import ScoringError, score_rows
        from tenfold.inference.store import RunStore

        attempt = int(message.delivery_attempt or 1)
        attrs = dict(message.attributes)
        rid = attrs.get(REQUEST_ID) or f"message-{message.message_id}"
        run = attrs.get(RUN) or "unknown-run"
        self._count(received=1)
        try:
            store = RunStore(self.objects, run)
        except ValueError:
            store = RunStore(self.objects, "unknown-run")
        try:
            if attrs.get(REQUEST_ID) and attrs.get(RUN) and store.has_result(rid):
                log.info("request %s of run %s: result already written (delivery %d); acknowledging", rid, run, attempt)
                self._count(duplicates=1)
                message.ack()
                return
            try:
                request = decode(message.data, attrs)
                if faults.stub_scoring():
                    result = _stub_scores(request.rows, request.model_version)
                else:
                    model = self.models.get(request.model_version)
                    request.require(model.workload.contract.feature_columns)
                    faults.fire("score", rid)
                    result = score_rows(model, request.rows, request.model_version)
                data = _parquet_bytes(result)
            except (RequestError, ScoringError, ValueError, TypeError, KeyError) as exc:
                self._fail(store, rid, message, attempt, exc)
                return
            created = store.put_result(rid, data)
            if not created:
                log.info("request %s of run %s: another delivery wrote its result first; acknowledging", rid, run)
                self._count(duplicates=1)
            else:
                self._count(scored=1, rows=request.rows.num_rows)
            faults.fire("before_ack", rid)
            message.ack()  # only now: the result is durable (create returned after fsync / the upload)
        except Exception as exc:  # the store or Pub/Sub: redeliver later rather than lose the request
            log.exception("request %s of run %s: %s; nacking (it will be redelivered)", rid, run, exc)
            message.nack()

    def _fail(self, store: Any, rid: str, message: Any, attempt: int, exc: Exception) -> None:
        sub = self.subscription
        fate = (f"goes to the dead-letter topic {sub.dead_letter_topic}" if attempt >= sub.max_delivery_attempts
                else "will be redelivered")
        log.warning("request %s (message %s) cannot be scored (delivery %d of %d; it %s): %s", rid, message.message_id,
                    attempt, sub.max_delivery_attempts, fate, exc)
        try:
            record = store.error(rid) or {"request_id": rid, "run": store.run, "attempts": []}
            record["attempts"] = [*record.get("attempts", []),
                                  {"delivery_attempt": attempt, "message_id": message.message_id,
                                   "error": f"{type(exc).__name__}: {exc}", "at": time.time()}]
            record.update(error=f"{type(exc).__name__}: {exc}", delivery_attempt=attempt,
                          max_delivery_attempts=sub.max_delivery_attempts)
            store.put_error(rid, record)
        except Exception:
            log.exception("could not record the error of request %s", rid)
        self._count(failed=1)
        message.nack()  # never ack a request that was not scored: the dead-letter policy takes it

    def run(self, stop: threading.Event, *, ready: threading.Event | None = None) -> WorkerStats:
        """Pull and handle until ``stop`` is set; the requests in hand are finished first."""
        from concurrent.futures import ThreadPoolExecutor

        from google.cloud.pubsub_v1.subscriber.scheduler import ThreadScheduler
        from google.cloud.pubsub_v1.types import FlowControl

        from tenfold.messaging.clients import subscriber_client, subscription_path

        inf = self.settings.inference
        flow = FlowControl(max_messages=inf.max_messages, max_bytes=inf.max_bytes, max_lease_duration=inf.max_lease_s,
                           max_duration_per_lease_extension=inf.lease_extension_s)
        path = subscription_path(self.settings, self.subscription.name)
        executor = ThreadPoolExecutor(max_workers=inf.handler_threads, thread_name_prefix="tenfold-infer")
        subscriber = subscriber_client(self.settings)
        future = subscriber.subscribe(path, self.handle, flow_control=flow, scheduler=ThreadScheduler(executor),
                                      await_callbacks_on_shutdown=True)
        log.info("worker pulling %s (max %d messages in hand, leases extended up to %.0f s)", path, inf.max_messages,
                 inf.max_lease_s)
        if ready is not None:
            ready.set()
        try:
            while not stop.wait(0.2):
                if future.done():
                    future.result()  # the stream failed for good: raise its error
        finally:
            self.closed = _close_bounded(future, subscriber, SHUTDOWN_S)
        log.info("worker stopped%s: %s", "" if self.closed else f" (the pull did not close within {SHUTDOWN_S:.0f} s)",
                 self.stats)
        return self.stats


# How long a stopping worker waits for the handlers in progress and the stream to close. Whatever it leaves
# unacknowledged is redelivered (nothing is lost), so a stuck close is abandoned rather than waited for.
SHUTDOWN_S = 15.0


def _close_bounded(future: Any, subscriber: Any, timeout: float) -> bool:
    def close() -> None:
        future.cancel()  # with await_callbacks_on_shutdown: the handlers in progress finish (and ack) first
        try:
            future.result(timeout=timeout)
        except Exception as exc:  # a cancelled stream ends with an error on some versions
            if "cancel" not in type(exc).__name__.lower():
                log.warning("pull ended: %s", exc)
        subscriber.close()

    closer = threading.Thread(target=close, name="tenfold-infer-close", daemon=True)
    closer.start()
    closer.join(timeout)
    return not closer.is_alive()


def _stub_scores(rows: Any, version: str) -> Any:
    """The benchmark's stub: the shape of a result (the first column as the key), no model."""
    import pyarrow as pa

    n = rows.num_rows
    return pa.table({rows.column_names[0]: rows.column(0), "probability": pa.array([0.5] * n, pa.float64()),
                     "model_version": pa.array([version] * n, pa.string())})


def _parquet_bytes(table: Any) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd")
    return bytes(sink.getvalue().to_pybytes())


def main(argv: list[str] | None = None) -> int:
    """Score requests until SIGTERM/SIGINT (see the module docstring)."""
    import signal
    import sys

    parser = argparse.ArgumentParser(prog="python -m tenfold.inference.worker", description=main.__doc__,
                                     epilog="Settings: --settings-file, else TENFOLD_ENV (local, dev or prod).")
    parser.add_argument("--settings-file", type=Path, default=None,
                        help="settings as JSON (the local pool writes them); default: get_settings()")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    from tenfold.config import Settings, get_settings

    try:
        settings = Settings.model_validate_json(args.settings_file.read_text()) if args.settings_file else get_settings()
        worker = Worker(settings)
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    try:
        worker.run(stop)
    except Exception as exc:
        print(f"error: the pull failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    if not worker.closed:
        # The client's threads would hold the interpreter's exit; what they hold is redelivered anyway.
        logging.shutdown()
        os._exit(0)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
