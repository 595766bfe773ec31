"""The offline inference worker: pulls scoring requests, scores them, writes each result once, then acks.

Run it: ``python -m tenfold.inference.worker`` (settings from ``TENFOLD_ENV``, as the cloud instance group's
startup script does), or ``python -m tenfold.inference.worker --settings-file <home>/run/inference-settings.json``
(what the local pool of ``batch_inference`` starts). It runs until SIGTERM or SIGINT, finishing the
requests in hand first.

It pulls ``settings.messaging.subscriptions["requests"]`` with flow control (at most
``inference.max_messages`` messages and ``max_bytes`` bytes in hand) and extends the lease of every message
in hand for up to ``inference.max_lease_s``, so a slow batch is not redelivered meanwhile (:class:`_Puller`
says why these are unary pulls and not a streaming pull). For each message (one request of many rows,
:mod:`tenfold.inference.requests`):

1. a request whose result already exists (a duplicate delivery: a redelivery after a crash, a retried
   publish, a replay) is acknowledged and nothing else;
2. otherwise its rows are scored with the model version the request names and the result is created
   if absent (:mod:`tenfold.inference.store`); only when that write returned, and so is durable, is the
   message acknowledged. A crash anywhere before the ack redelivers the message, and the redelivery
   finds the result;
3. a message that cannot be decoded or scored is recorded in the run's ``errors/`` (keyed by request id,
   with each delivery attempt) and nacked, never acked: after the subscription's
   ``max_delivery_attempts`` Pub/Sub moves it to the dead-letter topic (``tenfold dlq inspect``);
4. a redelivery first notes in that record that it starts, in which process (:meth:`Worker._mark_started`): a
   delivery that kills its worker (out of memory) records nothing itself, and the note left behind is what its
   dead letter gives as the reason.

Imports are deferred so ``--help`` answers at once and the module loads cheaply.
"""

from __future__ import annotations

import argparse
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from tenfold.outages import is_store_outage

if TYPE_CHECKING:
    from concurrent.futures import Future

    from tenfold.config import Settings
    from tenfold.storage import Objects

log = logging.getLogger("tenfold.inference.worker")
T = TypeVar("T")


@dataclass
class WorkerStats:
    received: int = 0  # deliveries, redeliveries included
    scored: int = 0  # results this worker created
    duplicates: int = 0  # deliveries whose result already existed
    failed: int = 0  # deliveries nacked as unprocessable
    rows: int = 0


class Worker:
    """The request handler and the pulls around it (:class:`_Puller`); :meth:`run` until ``stop`` is set."""

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
        from tenfold.inference.requests import REQUEST_ID, RUN, RequestError, decode, record_id
        from tenfold.inference.scoring import ScoringError, score_rows
        from tenfold.inference.store import message_store

        attempt = int(message.delivery_attempt or 1)
        attrs = dict(message.attributes)
        rid = record_id(attrs, message.data)
        self._count(received=1)
        store = message_store(self.objects, attrs)  # unknown-run's folder when attribute run cannot name one
        run = store.run
        try:
            if attrs.get(REQUEST_ID) and attrs.get(RUN) and self._retried(
                    rid, "checking for its result", lambda: store.has_result(rid), is_store_outage):
                log.info("request %s of run %s: result already written (delivery %d); acknowledging", rid, run, attempt)
                self._count(duplicates=1)
                message.ack()
                return
            if attempt >= 2:  # a redelivery: the delivery before it may have died with its worker, and so may this one
                self._mark_started(store, rid, message, attempt)
            try:
                request = decode(message.data, attrs)
                if faults.stub_scoring():
                    faults.fire("score", rid)
                    result = _stub_scores(request.rows, request.model_version)
                else:
                    model = self._model(request.model_version, rid)
                    request.require(model.workload.contract.feature_columns)
                    faults.fire("score", rid)
                    result = score_rows(model, request.rows, request.model_version)
                data = _parquet_bytes(result)
            except (RequestError, ScoringError, ValueError, TypeError, KeyError) as exc:
                self._fail(store, rid, message, attempt, exc)
                return
            created = self._write(store, rid, data)
            if not created:
                log.info("request %s of run %s: another delivery wrote its result first; acknowledging", rid, run)
                self._count(duplicates=1)
            else:
                self._count(scored=1, rows=request.rows.num_rows)
            faults.fire("before_ack", rid)
            message.ack()  # only now: the result is durable (create returned after fsync / the upload)
        except Exception as exc:  # the store, Pub/Sub, or a crash of the scoring: redeliver later, never lose it
            log.exception("request %s of run %s: %s; nacking (it will be redelivered)", rid, run, exc)
            self._record(store, rid, message, attempt, exc)  # so a dead letter says why, should it become one
            message.nack()

    def _write(self, store: Any, rid: str, data: bytes) -> bool:
        """Create the result, retried while the store is away (:meth:`_retried`): a nack counts as a delivery
        attempt, so a storage blip of a few minutes dead-lettered requests already scored. What the store refuses
        for good (permissions, a bad name) is raised at once."""
        return bool(self._retried(rid, "writing its result", lambda: store.put_result(rid, data), is_store_outage))

    def _model(self, version: str, rid: str) -> Any:
        """The model ``version``, retried while the store or the disk fails (:meth:`_retried`)."""
        from tenfold.inference.scoring import ScoringError

        return self._retried(rid, f"loading model {version}", lambda: self.models.get(version),
                             lambda exc: isinstance(exc, ScoringError) and exc.transient)

    def _retried(self, rid: str, what: str, call: Callable[[], T], transient: Callable[[Exception], bool]) -> T:
        """``call()``, tried again for ``inference.transient_retry_s`` (waits doubling from :data:`FIRST_RETRY_S` to
        15 s) while it fails with an error ``transient`` accepts; the delivery's lease is kept meanwhile, so an
        outage does not spend the request's delivery attempts. Any other error, or one past the time, is raised."""
        deadline = time.monotonic() + self.settings.inference.transient_retry_s
        delay = FIRST_RETRY_S
        while True:
            try:
                return call()
            except Exception as exc:
                if not transient(exc) or time.monotonic() + delay > deadline:
                    raise
                log.warning("request %s: %s failed (%s); trying again in %.1f s (its lease is kept)", rid, what, exc,
                            delay)
                time.sleep(delay)
                delay = min(delay * 2, 15.0)

    def _fail(self, store: Any, rid: str, message: Any, attempt: int, exc: Exception) -> None:
        sub = self.subscription
        fate = (f"goes to the dead-letter topic {sub.dead_letter_topic}" if attempt >= sub.max_delivery_attempts
                else "will be redelivered")
        log.warning("request %s (message %s) cannot be scored (delivery %d of %d; it %s): %s", rid, message.message_id,
                    attempt, sub.max_delivery_attempts, fate, exc)
        self._record(store, rid, message, attempt, exc)
        self._count(failed=1)
        try:
            message.nack()  # never ack a request that was not scored: the dead-letter policy takes it
        except Exception as nack_exc:  # Pub/Sub away a moment: the delivery comes back once its lease ends all the
            # same. Raised, handle's own except recorded this Pub/Sub error as the reason over the request's own.
            log.warning("request %s: the nack failed (%s: %s); it is redelivered once its lease ends", rid,
                        type(nack_exc).__name__, nack_exc)

    def _mark_started(self, store: Any, rid: str, message: Any, attempt: int) -> None:
        """Note in the request's error record that this redelivery starts, in this process, before anything is scored:
        a delivery that kills its worker (the out-of-memory killer's SIGKILL, a crash in native code) records
        nothing, and its dead letter said "(none recorded)". The note is taken back when this delivery records an
        error (:meth:`_record`); one left is a delivery that died (:func:`~tenfold.inference.store.died_during`),
        what the next delivery adds to the attempts, or the dead letter gives as its reason. First deliveries are not
        noted (most requests never need it; a dead letter's last delivery is a redelivery). Best effort: a store
        that cannot take it leaves the request to be scored all the same."""
        import socket

        from tenfold.inference.store import STARTED

        try:
            record = store.error(rid) or {"request_id": rid, "run": store.run, "attempts": []}
            _settle_started(record, store.run, rid, message.message_id, attempt)
            record[STARTED] = {"delivery_attempt": attempt, "message_id": message.message_id, "pid": os.getpid(),
                               "host": socket.gethostname(), "at": time.time()}
            store.put_error(rid, record)
        except Exception as exc:
            log.warning("request %s: could not note that delivery %d starts (%s: %s); scoring it all the same", rid,
                        attempt, type(exc).__name__, exc)

    def _record(self, store: Any, rid: str, message: Any, attempt: int, exc: Exception) -> None:
        """Add this delivery's error to the request's record in the run's ``errors/`` (best effort)."""
        from google.api_core.exceptions import GoogleAPIError

        sub = self.subscription
        try:
            record = store.error(rid) or {"request_id": rid, "run": store.run, "attempts": []}
            _settle_started(record, store.run, rid, message.message_id, attempt)
            if isinstance(exc, GoogleAPIError) and any(
                    isinstance(a, dict) and a.get("message_id") == message.message_id
                    and a.get("delivery_attempt") == attempt for a in record.get("attempts", [])):
                # This delivery's reason is recorded already (it was refused, then settling it with Pub/Sub failed):
                # the dead letter must say why the request was refused, not that Pub/Sub was away a moment.
                log.warning("request %s: %s after its delivery %d was recorded; its recorded reason is kept", rid,
                            exc, attempt)
                return
            record["attempts"] = [*record.get("attempts", []),
                                  {"delivery_attempt": attempt, "message_id": message.message_id,
                                   "error": f"{type(exc).__name__}: {exc}", "at": time.time()}]
            record.update(error=f"{type(exc).__name__}: {exc}", delivery_attempt=attempt,
                          max_delivery_attempts=sub.max_delivery_attempts)
            store.put_error(rid, record)
        except Exception:
            log.exception("could not record the error of request %s", rid)

    def run(self, stop: threading.Event, *, ready: threading.Event | None = None,
            ready_file: Path | None = None) -> WorkerStats:
        """Pull and handle until ``stop`` is set; the requests in hand are finished (or left to be redelivered)."""
        from tenfold.messaging.clients import subscriber_client, subscription_path

        inf = self.settings.inference
        path = subscription_path(self.settings, self.subscription.name)
        client = subscriber_client(self.settings)
        puller = _Puller(client, path, self, lease_s=inf.lease_extension_s or self.subscription.ack_deadline_s,
                         deadline_s=self.subscription.ack_deadline_s)
        log.info("worker pulling %s (at most %d messages / %d bytes in hand, leases extended up to %.0f s)", path,
                 inf.max_messages, inf.max_bytes, inf.max_lease_s)
        if ready is not None:
            ready.set()
        if ready_file is not None:  # what the local pool waits on: the model is loaded and pulling starts now
            ready_file.parent.mkdir(parents=True, exist_ok=True)
            ready_file.touch()
        try:
            puller.run(stop)
        finally:
            self.closed = puller.close(SHUTDOWN_S)
            client.close()
        log.info("worker stopped%s: %s", "" if self.closed else f" (handlers still busy after {SHUTDOWN_S:.0f} s)",
                 self.stats)
        return self.stats


# How long a stopping worker waits for the handlers in progress. Whatever it leaves unacknowledged is
# redelivered (nothing is lost), so a stuck handler is abandoned rather than waited for.
SHUTDOWN_S = 10.0
FIRST_RETRY_S = 1.0  # the first wait before loading a model again after the store or the disk failed (doubling)
PULL_TIMEOUT_S = 5.0
# A stop gives up after SHUTDOWN_S + PULL_TIMEOUT_S + 2 s (main's exit timer); docker stop waits this long before
# SIGKILL (its default 10 s killed a worker in its shutdown, its cancelled handlers' messages waiting out their lease).
STOP_TIMEOUT_S = int(SHUTDOWN_S + PULL_TIMEOUT_S) + 10
# What one pull asks for after a response was refused as too large (a channel with gRPC's 4 MiB limit).
PULL_BYTES = 3 * 1024 * 1024


class _Delivery:
    """One pulled message, with the ``ack``/``nack`` a handler calls (each settles its lease once)."""

    def __init__(self, puller: _Puller, received: Any) -> None:
        self._puller = puller
        self.ack_id: str = received.ack_id
        self.message_id: str = received.message.message_id
        self.data: bytes = received.message.data
        self.attributes = received.message.attributes
        self.delivery_attempt: int = received.delivery_attempt
        self.size = len(self.data)
        self.received_at = time.monotonic()
        self.future: Future[None] | None = None  # its handler's, once submitted

    def ack(self) -> None:
        self._puller.settle(self, 0, ack=True)

    def nack(self) -> None:
        self._puller.settle(self, 0, ack=False)


class _Puller:
    """Flow-controlled pulls, a lease keeper and the handler threads of one worker.

    Pulls are unary ``Pull`` calls that return at once (``return_immediately``) rather than a streaming pull:
    the Pub/Sub emulator fails on a cancelled stream (``NoSuchMethodError`` in ``onRstStreamRead``) and keeps
    delivering to it, so the messages a stopped worker's stream would get stay invisible until their deadline
    and then wait out the retry backoff (up to ``max_retry_backoff_s``); a cut-short held pull strands its
    messages the same way. Flow control is ours: no pull while ``inference.max_messages`` messages or
    ``max_bytes`` bytes are in hand. The lease keeper extends every message in hand by ``lease_s`` each third of
    the shorter of that and the ack deadline, for at most ``inference.max_lease_s``, so a batch slower than the ack
    deadline is not redelivered.
    """

    def __init__(self, client: Any, path: str, worker: Worker, *, lease_s: int, deadline_s: int) -> None:
        from concurrent.futures import ThreadPoolExecutor

        inf = worker.settings.inference
        self.client, self.path, self.worker = client, path, worker
        self.lease_s = max(10, lease_s)
        # A message comes with the subscription's ack deadline (deadline_s), not our lease: the keeper must reach a
        # new one within that, however long the extensions it gives. Paced by the lease alone (60 s against a 10 s
        # deadline), a message pulled just after a round expired before the next and was delivered twice.
        self.tick_s = min(self.lease_s, max(1, deadline_s)) / 3
        self.max_messages, self.max_bytes, self.max_lease_s = inf.max_messages, inf.max_bytes, inf.max_lease_s
        self.poll_s = min(0.2, inf.poll_interval_s)
        self.in_hand: dict[str, _Delivery] = {}
        # The largest message body seen (bytes): bounds how many one pull asks for. Until a pull has shown the sizes,
        # a message is taken to fill a pull's whole budget (so the first pull asks for one): taken as 1 byte, the
        # first pull asked for max_messages whatever their size, far past max_bytes.
        self.largest = 0
        self.pull_cap = self.max_messages  # halved by each refused pull, doubled back by each answered one
        self.cond = threading.Condition()
        self.executor = ThreadPoolExecutor(max_workers=inf.handler_threads, thread_name_prefix="tenfold-infer")
        self._stop_leases = threading.Event()
        # The ack ids the keeper's extension call is carrying now (under ``cond``): a nack of one of them waits for the
        # call to return (a nack sent while an extension of its message was on the way was undone by it, and the
        # message came back only after lease_s, 120 s in the cloud, instead of at once). Other nacks do not wait.
        self._extending: set[str] = set()
        self.leaser = threading.Thread(target=self._keep_leases, name="tenfold-infer-lease", daemon=True)

    def run(self, stop: threading.Event) -> None:
        from google.api_core.exceptions import DeadlineExceeded, ResourceExhausted

        from tenfold.outages import outage_types

        self.leaser.start()
        exhausted = 0  # ResourceExhausted refusals in a row
        while not stop.is_set():
            with self.cond:
                room = self.max_messages - len(self.in_hand)
                held = sum(d.size for d in self.in_hand.values())
                if room <= 0 or held >= self.max_bytes:
                    self.cond.wait(self.poll_s)
                    continue
            # Flow control in bytes too: ask for as many messages as fit in what is left of max_bytes (the bytes in
            # hand counted), and in one response (PULL_BYTES), at the sizes seen so far; at least one, so a message
            # larger than what is left is still pulled (max_bytes is then passed by that message).
            budget = min(self.max_bytes - held, PULL_BYTES)
            room = max(1, min(room, self.pull_cap, int(budget // (self.largest or budget))))
            try:
                # A short bound: the emulator sometimes holds even a return_immediately pull, and a stopping
                # worker must not wait long on one (the pool SIGKILLs a worker that takes too long to stop).
                resp = self.client.pull(request={"subscription": self.path, "max_messages": room,
                                                 "return_immediately": True}, timeout=PULL_TIMEOUT_S, retry=None)
            except ResourceExhausted as exc:
                # A response over the limit: pull half as many next time; a single message over it cannot be pulled
                # at all (keep rows_per_message well below it) and is retried slowly rather than crashing the worker.
                # A quota exceeded reads the same: each try waits twice as long as the last (it pulled in a tight
                # loop, hundreds of calls a second, against the quota it had exhausted).
                self.pull_cap = max(1, room // 2)
                exhausted += 1
                log.warning("a pull of %d messages was refused as too large or over quota (%s); pulling fewer, "
                            "more slowly", room, exc)
                stop.wait(5.0 if room == 1 else min(5.0, 0.1 * 2 ** (exhausted - 1)))
                continue
            except DeadlineExceeded:
                continue  # held and cut short: pull again (or stop)
            except outage_types() as exc:  # Pub/Sub away for a moment (a 500, an abort, ...): a crash would hand back
                # the messages in hand, each delivery spent, and the pool stops restarting crashed workers after a few
                log.warning("pull failed (%s); retrying", exc)
                stop.wait(1.0)
                continue
            # Answered: the cap grows back (a quota hit passes; messages too large for more keep ``largest`` high).
            exhausted, self.pull_cap = 0, min(self.max_messages, self.pull_cap * 2)
            if not resp.received_messages:
                stop.wait(self.poll_s)
                continue
            self.largest = max(self.largest, *(len(r.message.data) for r in resp.received_messages))
            for received in resp.received_messages:
                delivery = _Delivery(self, received)
                with self.cond:
                    self.in_hand[delivery.ack_id] = delivery
                delivery.future = self.executor.submit(self.worker.handle, delivery)

    def settle(self, delivery: _Delivery, _: int, *, ack: bool) -> None:
        with self.cond:
            if self.in_hand.pop(delivery.ack_id, None) is None:
                return  # settled already
            self.cond.notify_all()
            while not ack and delivery.ack_id in self._extending:  # (no longer in hand: no later extension takes it)
                self.cond.wait(1.0)
        if ack:
            self.client.acknowledge(request={"subscription": self.path, "ack_ids": [delivery.ack_id]}, retry=None)
        else:  # redeliver now: the delivery attempts are spent quickly and the dead-letter policy takes it
            self.client.modify_ack_deadline(request={"subscription": self.path, "ack_ids": [delivery.ack_id],
                                                     "ack_deadline_seconds": 0}, retry=None)

    def _keep_leases(self) -> None:
        while not self._stop_leases.wait(self.tick_s):
            now = time.monotonic()
            with self.cond:
                due = [d.ack_id for d in self.in_hand.values() if now - d.received_at < self.max_lease_s]
                self._extending = set(due)
            if due:
                try:  # bounded: a nack of one of these waits for it
                    self.client.modify_ack_deadline(request={"subscription": self.path, "ack_ids": due,
                                                             "ack_deadline_seconds": self.lease_s}, retry=None,
                                                    timeout=PULL_TIMEOUT_S)
                except Exception as exc:  # an expired ack id, or Pub/Sub away for a moment: next round
                    log.warning("lease extension of %d messages failed: %s", len(due), exc)
                finally:
                    with self.cond:
                        self._extending = set()
                        self.cond.notify_all()

    def close(self, timeout: float) -> bool:
        """Let the handlers in progress finish (up to ``timeout``); True when they all did."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while self.in_hand and time.monotonic() < deadline:
                self.cond.wait(0.2)
            done = not self.in_hand
        self._stop_leases.set()
        if self.leaser.is_alive():  # its extension in flight would undo the hand-back below
            self.leaser.join(PULL_TIMEOUT_S + 1)
        self.executor.shutdown(wait=done, cancel_futures=True)
        with self.cond:  # pulled but never started: handed back now, not left to wait out their lease
            queued = [d.ack_id for d in self.in_hand.values() if d.future is not None and d.future.cancelled()]
        if queued:
            try:
                self.client.modify_ack_deadline(request={"subscription": self.path, "ack_ids": queued,
                                                         "ack_deadline_seconds": 0}, retry=None, timeout=PULL_TIMEOUT_S)
            except Exception as exc:  # they come back once their lease ends
                log.warning("could not hand back %d messages not started (%s); redelivered once their lease ends",
                            len(queued), exc)
        return done


def preload(worker: Worker, ref: str) -> None:
    """Load ``ref``'s model into the worker's cache now (importing torch and loading take seconds, which the
    first request would otherwise wait for while its lease runs). A model that cannot be loaded is only
    logged: the requests that name it are refused one by one, with the reason, as they would be anyway."""
    from tenfold.inference import faults
    from tenfold.inference.scoring import ScoringError, resolve

    if faults.stub_scoring():
        return
    started = time.monotonic()
    try:
        version = resolve(worker.settings, ref)
        worker.models.get(version)
    except Exception as exc:  # ScoringError, or the registry out of reach: a preload never stops the worker
        reason = str(exc) if isinstance(exc, ScoringError) else f"{type(exc).__name__}: {exc}"
        log.warning("could not preload model %s (requests naming it are refused until it loads): %s", ref, reason)
        return
    log.info("model %s loaded in %.1f s", version, time.monotonic() - started)


def _settle_started(record: dict[str, Any], run: str, rid: str, message_id: str, attempt: int) -> None:
    """Take the :data:`~tenfold.inference.store.STARTED` mark out of ``record`` as delivery ``attempt`` of message
    ``message_id`` records how it went: its own mark goes (this delivery says how it ended); another delivery's mark
    is a delivery that ended without a word, its worker dead, and becomes one of the attempts with that reason (and
    the record's error, the latest). A later delivery of the same message (one redelivered while this one still ran,
    its lease lost) keeps its mark."""
    from tenfold.inference.store import STARTED, died_during

    mark = record.get(STARTED)
    if not isinstance(mark, dict):
        record.pop(STARTED, None)
        return
    n = mark.get("delivery_attempt")
    if mark.get("message_id") == message_id and isinstance(n, int) and n > attempt:
        return
    del record[STARTED]
    if mark.get("message_id") == message_id and n == attempt:
        return
    reason = died_during(mark, run, rid)
    record["attempts"] = [*record.get("attempts", []),
                          {"delivery_attempt": n, "message_id": mark.get("message_id"), "pid": mark.get("pid"),
                           "host": mark.get("host"), "error": reason, "at": mark.get("at"), "died": True}]
    record.update(error=reason, delivery_attempt=n)


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


def _settings_refusal(exc: ValueError, settings_file: Path | None) -> str:
    """The one line the worker ends with when its settings are refused: :func:`~tenfold.config.settings_refusal`'s
    for the environment's TENFOLD_* variables. A ``--settings-file`` is not read from them (that line's advice to fix
    a variable would mislead), and a field missing from it would show the whole section it is missing from, the
    whole file at the top: its fields are named without the values they got."""
    from pydantic import ValidationError

    from tenfold.config import settings_refusal

    if settings_file is None:
        return settings_refusal(exc)
    if isinstance(exc, ValidationError):
        errors = exc.errors()
        what = "; ".join(".".join(map(str, (exc.title, *e["loc"]))) + f": {e['msg']}" for e in errors[:5])
        what += f"; and {len(errors) - 5} more" if len(errors) > 5 else ""
    else:  # not UTF-8, say
        what = f"{type(exc).__name__}: {exc}"
    return (f"error: the settings file {settings_file} is not valid settings ({what}): the local pool writes it from "
            "the run's settings; start the run again to have it written anew, or fix the file")


def main(argv: list[str] | None = None) -> int:
    """Score requests until SIGTERM/SIGINT (see the module docstring)."""
    import faulthandler
    import signal
    import sys

    parser = argparse.ArgumentParser(prog="python -m tenfold.inference.worker", description=main.__doc__,
                                     epilog="Settings: --settings-file, else TENFOLD_ENV (local, dev or prod).")
    parser.add_argument("--settings-file", type=Path, default=None,
                        help="settings as JSON (the local pool writes them); default: get_settings()")
    parser.add_argument("--preload", metavar="MODEL", default=None,
                        help="load this model (a version, or an alias such as champion) before the first pull, so the "
                             "first request does not wait for it (the local pool passes the run's version)")
    parser.add_argument("--ready-file", type=Path, default=None,
                        help="touch this file once the model is loaded and pulling starts (the local pool waits on it)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    from tenfold.config import Settings, get_settings

    try:
        settings = Settings.model_validate_json(args.settings_file.read_text()) if args.settings_file else get_settings()
    except OSError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except ValueError as exc:  # pydantic's dump was dozens of lines, ending in a link to its docs: one line instead
        print(_settings_refusal(exc, args.settings_file), file=sys.stderr)
        return 2
    try:
        worker = Worker(settings)
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # no Google credentials (dev/prod by hand), a store that refuses: one line, no traceback
        from tenfold.outages import debug_requested, ending, no_credentials

        if debug_requested():
            raise
        print(ending(exc, "python -m tenfold.inference.worker", settings.local.home, debug_hint="with TENFOLD_DEBUG=1"),
              file=sys.stderr)
        return 2 if no_credentials(exc) else 1
    if args.preload:
        preload(worker, args.preload)
    stop = threading.Event()

    def on_signal(*_: object) -> None:
        stop.set()
        # A stop is bounded whatever hangs: the threads' stacks go to the log, then the process exits (what
        # it held unacknowledged is redelivered), before the pool would have to SIGKILL it.
        faulthandler.dump_traceback_later(SHUTDOWN_S + PULL_TIMEOUT_S, exit=False)
        timer = threading.Timer(SHUTDOWN_S + PULL_TIMEOUT_S + 2, lambda: os._exit(0))
        timer.daemon = True
        timer.start()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    try:
        worker.run(stop, ready_file=args.ready_file)
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
