"""The feedback sink: pulls sampled predictions and feedback from Pub/Sub and lands them in the lake.

Run it with ``tenfold feedback sink`` (until SIGTERM), ``tenfold feedback sink --until-idle`` (drain
what is there and exit) or ``--once`` (one batch from each subscription); in code,
``FeedbackSink(settings).drain()``.

For each of the two subscriptions (``settings.messaging.subscriptions["predictions"]`` and
``["feedback"]``) the sink pulls a batch synchronously, parses every message as its record
(:mod:`tenfold.messaging.records`), writes the good ones as one durable Parquet file per month
(:mod:`tenfold.feedback.log`) and acknowledges them only after that write returned. So:

* a crash between the write and the acknowledgement redelivers the batch, which lands twice; the
  join deduplicates by prediction id, so the labelled table never shows it;
* a message that is not a valid record (a poison message) is counted, logged and nacked at once, never
  acknowledged: after the subscription's ``max_delivery_attempts`` Pub/Sub moves it to the
  subscription's dead-letter topic, where ``tenfold feedback dead-letters`` shows and replays it
  (:mod:`tenfold.feedback.dead_letters`);
* while the sink holds a batch (from its pull until its acknowledgement) a lease keeper thread extends the batch's
  leases every third of the ack deadline: one lake write can outlast the lease from the pull (GCS retries for a
  minute, a slow disk stalls), and an expired lease would redeliver the batch, spending a delivery attempt of every
  good message and landing it twice;
* when the lake cannot be written, the batch is retried in place with backoff while its leases are kept (a nack
  would spend delivery attempts and dead-letter good messages); after ``write_retry_s`` the sink gives up with
  :class:`SinkError` and the unacknowledged batch comes back;
* before its first pull of a subscription the sink writes a small probe file to the log's folder, and on a local
  disk checks that a whole batch would fit (retried likewise): while the lake refuses, nothing is pulled. A sink restarted while the lake stays away would
  otherwise pull the batch, hold it and hand it back on every restart, each time spending a delivery
  attempt, until good messages were dead-lettered.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import pyarrow as pa
from pydantic import ValidationError

from tenfold.config import Settings
from tenfold.data.lake import Lake, Partition
from tenfold.feedback import log as landing
from tenfold.feedback.schema import FEEDBACK_LOG, PREDICTIONS_LOG, feedback_row, prediction_row
from tenfold.messaging.clients import subscriber_client, subscription_path
from tenfold.messaging.records import FeedbackRecord, PredictionRecord, utc

if TYPE_CHECKING:
    from google.cloud.pubsub_v1 import SubscriberClient

log = logging.getLogger(__name__)

Stream = Literal["predictions", "feedback"]
STREAMS: tuple[Stream, ...] = ("predictions", "feedback")


class SinkError(RuntimeError):
    """The sink cannot go on (the lake or Pub/Sub stayed unreachable); the message says what to check."""


class _Stopped(Exception):
    """Raised out of a retry's wait once run()'s stop event is set; run() returns its stats."""


@dataclass(frozen=True)
class SinkOptions:
    """How the sink pulls and retries (the resource names come from settings)."""

    max_messages: int = 500  # per pull and per subscription: one lake file per month per batch
    idle_s: float = 2.0  # drain(): stop after this long with nothing to pull from either subscription
    poll_interval_s: float = 0.2  # pause between empty polls (drain(), and filling a batch in run())
    # run(): how long one held pull waits for messages. It bounds how late a SIGTERM is noticed; a pull
    # cut short may strand a message until its lease expires, which only delays it (at-least-once).
    pull_wait_s: float = 5.0
    batch_wait_s: float = 1.0  # run(): after a first message, keep pulling this long to fill the batch
    write_retry_s: float = 120.0  # how long a failing lake write is retried before giving up
    pubsub_retry_s: float = 60.0  # how long Pub/Sub may stay unreachable before giving up


# How long a stop gives the running sink before SIGKILL: a held pull cut short (5 s), the batch in hand, what is left to
# pull (STOP_DRAIN_S), a last join of the months it touched (which may first wait for the join lock). Shorter, the kill
# came mid-join and left the join's locks behind until they went stale (docker's default 10 s in the cloud, 20 s for
# `tenfold down`).
STOP_TIMEOUT_S = 90

# run(), once stopped: how long it goes on landing what the subscriptions still hold before it returns. `tenfold down`
# stops the replicas first (nothing more is published), then the sink, then the Pub/Sub emulator, which keeps messages
# in memory only: what the sink left there was lost. Bounded well below STOP_TIMEOUT_S, which must still cover the
# batch in hand and the last join.
STOP_DRAIN_S = 20.0

# The longest one lease extension of the lease keeper may take (the keeper's call has no retries): a stop, or the end
# of a batch, waits at most this long for an extension in flight against a hung Pub/Sub.
LEASE_CALL_TIMEOUT_S = 10.0


@dataclass
class StreamStats:
    pulled: int = 0  # deliveries received, redeliveries included
    landed: int = 0  # records written to the lake
    acked: int = 0
    redelivered: int = 0  # deliveries with delivery_attempt > 1
    poison: int = 0  # deliveries that were not a valid record (each was nacked)
    files: int = 0
    # Distinct poison messages: those still to be redelivered, by id, and a count of those at their last delivery
    # (dead-lettered). A set of every id ever seen grew for the life of the process (gigabytes a day under a
    # steady stream of refused samples, ending in an out-of-memory kill).
    _poison_open: set[str] = field(default_factory=set, repr=False)
    _poison_done: int = 0

    @property
    def poison_messages(self) -> int:
        return len(self._poison_open) + self._poison_done

    def saw_poison(self, message_id: str, *, last: bool) -> None:
        self.poison += 1
        if not last:
            self._poison_open.add(message_id)
            return
        self._poison_open.discard(message_id)
        self._poison_done += 1


@dataclass
class SinkStats:
    """What a sink run did, per stream; ``to_dict()`` is what the CLI prints."""

    streams: dict[str, StreamStats] = field(default_factory=lambda: {s: StreamStats() for s in STREAMS})
    batches: int = 0

    def __getitem__(self, stream: str) -> StreamStats:
        return self.streams[stream]

    @property
    def landed(self) -> int:
        return sum(s.landed for s in self.streams.values())

    @property
    def poison(self) -> int:
        return sum(s.poison for s in self.streams.values())

    def to_dict(self) -> dict[str, Any]:
        return {
            "batches": self.batches,
            **{name: {**{k: v for k, v in asdict(s).items() if not k.startswith("_")}, "poison_messages": s.poison_messages}
               for name, s in self.streams.items()},
        }


_PARSERS: dict[Stream, tuple[Callable[[bytes], Any], Callable[[Any], dict[str, Any]], pa.Schema, str]] = {
    "predictions": (PredictionRecord.from_message, prediction_row, PREDICTIONS_LOG, "served_at"),
    "feedback": (FeedbackRecord.from_message, feedback_row, FEEDBACK_LOG, "received_at"),
}


class FeedbackSink:
    """Pulls both subscriptions of ``settings`` into the lake; see the module docstring."""

    def __init__(self, settings: Settings, options: SinkOptions | None = None, *, lake: Lake | None = None) -> None:
        self.settings = settings
        self.options = options or SinkOptions()
        self.lake = lake or Lake.from_settings(settings)
        self.stats = SinkStats()
        subs = settings.messaging.subscriptions
        missing = [s for s in STREAMS if s not in subs]
        if missing:
            raise SinkError(f"settings.messaging.subscriptions has no {', '.join(missing)} subscription; "
                            "the feedback sink needs both 'predictions' and 'feedback'")
        self._subs = {s: subs[s] for s in STREAMS}
        self._tables = {"predictions": settings.storage.predictions_table, "feedback": settings.storage.feedback_table}
        self._client: SubscriberClient | None = None
        self._writable: set[str] = set()  # the streams whose log folder took a probe since the last failed write
        # run()'s stop event while it runs: the retries wait on it. They slept, so a SIGTERM while Pub/Sub or the lake
        # was away was noticed only when the retry gave up (a minute, or two for the lake: past the 90 s a stop gives
        # the sink before SIGKILL), and the sink then exited 1.
        self._stop = threading.Event()
        # Whether the last run() ended through its stop while it retried Pub/Sub or the lake: the CLI then skips its
        # last join, which would meet the same lake (or wait on its lock past the time a stop gives the sink).
        self.stopped_while_retrying = False

    # --- lifecycle -------------------------------------------------------------------------------
    def __enter__(self) -> FeedbackSink:
        self._client = subscriber_client(self.settings)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    @property
    def client(self) -> SubscriberClient:
        if self._client is None:
            raise RuntimeError("use FeedbackSink as a context manager: `with FeedbackSink(settings) as sink: ...`")
        return self._client

    def path(self, stream: Stream) -> str:
        return subscription_path(self.settings, self._subs[stream].name)

    # --- the three ways to run -----------------------------------------------------------------------
    def poll_once(self, *, wait: bool = False, fill: bool = False, stop: threading.Event | None = None) -> int:
        """Pull, land and acknowledge at most one batch per subscription; returns the deliveries pulled.

        ``wait``: hold each first pull up to ``pull_wait_s`` for a message; ``fill``: top a batch up for
        ``batch_wait_s`` (else only while a backlog lasts); ``stop``: no further subscription once it is set."""
        pulled = 0
        for stream in STREAMS:
            if stop is not None and stop.is_set():
                break
            pulled += self._step(stream, wait=wait, fill=fill)
        return pulled

    def drain(self, *, idle_s: float | None = None) -> SinkStats:
        """Land everything there is, until neither subscription yields a message for ``idle_s``."""
        idle_s = self.options.idle_s if idle_s is None else idle_s
        quiet_since = time.monotonic()
        while True:  # polls at least once: idle_s=0 drains what is there and stops at the first empty pull
            if self.poll_once():
                quiet_since = time.monotonic()
            elif time.monotonic() - quiet_since >= idle_s:
                return self.stats
            else:
                time.sleep(self.options.poll_interval_s)

    def run(self, stop: threading.Event, *, after_round: Callable[[], object] | None = None) -> SinkStats:
        """Land messages until ``stop`` is set (the CLI sets it on SIGTERM/SIGINT); the batch in hand is
        finished first, then what the subscriptions still hold (see :data:`STOP_DRAIN_S`), unless Pub/Sub or the lake
        is being retried: then the retry ends at once and what it held is left unacknowledged, for Pub/Sub to
        redeliver. ``after_round`` runs after every round of pulls, busy or quiet (the CLI's join, which
        paces itself): a steady stream is never quiet, so work kept for quiet moments would never run."""
        busy = False
        self._stop = stop
        self.stopped_while_retrying = False
        try:
            while not stop.is_set():
                # A held pull only after a quiet round: held on every round, the quiet subscription's pull (feedback
                # is sparse) held each round for pull_wait_s while the busy one landed one batch, about 100 messages
                # a second in all, far below what one replica publishes.
                busy = self.poll_once(wait=not busy, fill=True, stop=stop) > 0
                if after_round is not None:
                    after_round()
            self._land_backlog()
        except _Stopped:  # stopped while retrying: nothing unwritten was acknowledged (see _pause)
            self.stopped_while_retrying = True
        finally:
            self._stop = threading.Event()
        return self.stats

    def _land_backlog(self) -> None:
        """Once stopped: land what the subscriptions still hold, in rounds of pulls that return at once, until a round
        pulls nothing or :data:`STOP_DRAIN_S` passed. The stop is set, so a retry of Pub/Sub or the lake raises
        :class:`_Stopped` at once: an unreachable emulator ends this at its first refused pull."""
        deadline = time.monotonic() + STOP_DRAIN_S
        while time.monotonic() < deadline and self.poll_once():
            pass

    def _pause(self, seconds: float, what: str) -> None:
        """Wait ``seconds`` before retrying ``what``; :class:`_Stopped` at once when run()'s stop is set. Nothing is
        lost: a batch not yet written, or written but not acknowledged, is unacknowledged, so Pub/Sub redelivers it
        (the join drops a duplicate)."""
        if self._stop.wait(seconds):
            log.warning("stopping while retrying to %s; what was pulled and not acknowledged will be redelivered", what)
            raise _Stopped

    # --- one batch --------------------------------------------------------------------------------
    def _step(self, stream: Stream, *, wait: bool, fill: bool) -> int:
        if stream not in self._writable:
            self._probe(stream)
        leased_at = time.monotonic()  # no later than the leases of the batch began (at its first pull's answer)
        # Leased from the first pull until the ack, whatever stops it: top-up pulls for batch_wait_s (each retried while
        # Pub/Sub is unavailable), a slow write, a retried one, a retried ack. The keeper extends what is in hand now.
        in_hand: list[str] = []
        with self._keep_leased(stream, in_hand, leased_at):
            return self._batch(stream, in_hand, wait=wait, fill=fill)

    def _batch(self, stream: Stream, in_hand: list[str], *, wait: bool, fill: bool) -> int:
        """Gather one batch into ``in_hand`` (its ack ids, kept leased by the caller), land its good records,
        acknowledge them and nack the poison; how many messages it held."""
        received = self._gather(stream, in_hand, wait=wait, fill=fill)
        if not received:
            return 0
        parse, to_row, schema, time_field = _PARSERS[stream]
        st = self.stats[stream]
        st.pulled += len(received)
        good: list[dict[str, Any]] = []
        good_rms: list[Any] = []
        poison: list[tuple[Any, Exception]] = []
        landed_at = dt.datetime.now(dt.UTC)
        for rm in received:
            msg = rm.message
            if rm.delivery_attempt > 1:
                st.redelivered += 1
            try:
                row = to_row(parse(msg.data))
            except (ValidationError, ValueError, UnicodeDecodeError) as exc:
                poison.append((rm, exc))
                continue
            row.update(message_id=msg.message_id, publish_time=utc(msg.publish_time), delivery_attempt=rm.delivery_attempt,
                       landed_at=landed_at)
            good.append(row)
            good_rms.append(rm)
        # A record that validated but that the log's schema cannot hold (should the two ever disagree) is
        # poison too: found here, by itself, rather than failing the batch's write every time it is redelivered.
        for i, error in reversed(_unwritable(good, schema)):
            poison.append((good_rms[i], error))
            del good[i], good_rms[i]
        good_ids = [rm.ack_id for rm in good_rms]
        poison_ids: list[str] = []
        for rm, why in poison:
            sub = self._subs[stream]
            last = rm.delivery_attempt >= sub.max_delivery_attempts
            st.saw_poison(rm.message.message_id, last=last)
            poison_ids.append(rm.ack_id)
            fate = "goes to the dead-letter topic " + sub.dead_letter_topic if last else "will be redelivered"
            log.warning("%s: message %s is not a valid record (delivery %d of %d; it %s): %s; body starts %r",
                        sub.name, rm.message.message_id, rm.delivery_attempt, sub.max_delivery_attempts, fate,
                        _first_error(why), bytes(rm.message.data[:120]))
        in_hand[:] = good_ids  # the poison is nacked, no longer extended
        if poison_ids:
            # Nack now so the delivery attempts are spent quickly and the dead-letter policy takes it.
            self._lease(stream, poison_ids, 0)
        if good:
            files = self._land(stream, good, schema, time_field)
            st.files += files
            st.landed += len(good)
            self._ack(stream, good_ids)
            st.acked += len(good_ids)
        self.stats.batches += 1
        return len(received)

    def _land(self, stream: Stream, rows: list[dict[str, Any]], schema: pa.Schema, time_field: str) -> int:
        """Write ``rows`` to ``stream``'s log, one file per month, retrying a failed write for ``write_retry_s``;
        the caller keeps the batch leased meanwhile (:meth:`_keep_leased`)."""
        by_month: dict[Partition, list[dict[str, Any]]] = defaultdict(list)
        for row in rows:
            by_month[Partition.from_date(row[time_field])].append(row)
        started = time.monotonic()
        delay = 0.5
        pending = dict(sorted(by_month.items()))
        while pending:
            part, month_rows = next(iter(pending.items()))
            try:
                landing.write_batch(self.lake, self._tables[stream], part, pa.Table.from_pylist(month_rows, schema=schema))
                del pending[part]
                continue
            except OSError as exc:
                if time.monotonic() - started > self.options.write_retry_s:
                    self._writable.discard(stream)
                    raise SinkError(
                        f"cannot write the {stream} log to the lake at {self.lake.uri} for "
                        f"{self.options.write_retry_s:.0f} s ({exc}); the batch was not acknowledged and will be "
                        "redelivered; check the lake's disk or bucket and restart the sink") from exc
                log.warning("lake write of %d %s failed (%s); retrying in %.1f s", len(month_rows), stream, exc, delay)
            self._pause(delay, f"write {len(month_rows)} {stream} to the lake")
            delay = min(delay * 2, 10.0)
        return len(by_month)

    def _probe(self, stream: Stream) -> None:
        """Wait, pulling nothing, until the lake takes a file in ``stream``'s log folder; SinkError after
        ``write_retry_s`` (no message was leased, so none spent a delivery attempt)."""
        started, delay = time.monotonic(), 0.5
        while True:
            try:
                landing.probe(self.lake, self._tables[stream], reserve=self.options.max_messages * landing.LOG_ROW_BYTES)
            except OSError as exc:
                if time.monotonic() - started > self.options.write_retry_s:
                    raise SinkError(
                        f"cannot write the {stream} log to the lake at {self.lake.uri} for "
                        f"{self.options.write_retry_s:.0f} s ({exc}); nothing was pulled, so no message spent a "
                        "delivery attempt; check the lake's disk or bucket and restart the sink") from exc
                log.warning("lake write of a probe file to the %s log failed (%s); nothing pulled; retrying in %.1f s",
                            stream, exc, delay)
            else:
                self._writable.add(stream)
                return
            self._pause(delay, f"write a probe file to the {stream} log")
            delay = min(delay * 2, 10.0)

    def _lease(self, stream: Stream, ack_ids: list[str], seconds: int, *, once: bool = False) -> None:
        """Extend the lease of ``ack_ids`` by ``seconds`` (0: nack, redeliver now). ``once``: one try, bounded by
        :data:`LEASE_CALL_TIMEOUT_S`, its error raised to the caller (the lease keeper's thread, which must neither
        retry for ``pubsub_retry_s`` nor wait on run()'s stop); else retried like every call (:meth:`_call`)."""
        request = {"subscription": self.path(stream), "ack_ids": ack_ids, "ack_deadline_seconds": seconds}
        if once:
            self.client.modify_ack_deadline(request=request, retry=None, timeout=LEASE_CALL_TIMEOUT_S)
            return
        self._call(lambda: self.client.modify_ack_deadline(request=request, retry=None),
                   f"{'nack' if seconds == 0 else 'extend the lease of'} {len(ack_ids)} {stream} message(s)")

    @contextlib.contextmanager
    def _keep_leased(self, stream: Stream, ack_ids: list[str], leased_at: float) -> Iterator[None]:
        """Keep the leases of ``ack_ids`` (pulled no earlier than ``leased_at``, a monotonic time) alive while the
        block runs: a thread extends them by the ack deadline every third of it, those the list holds at each
        extension (the block adds what it pulls, and takes out what it nacks). The SubscriberClient is thread-safe
        for unary calls. A failed extension (Pub/Sub away) is logged once and tried again at the next tick, never
        raised into the block; the block's own calls meet the same Pub/Sub and say so. The thread is stopped and
        joined when the block ends, at once (at most :data:`LEASE_CALL_TIMEOUT_S` for an extension in flight)."""
        deadline_s = self._subs[stream].ack_deadline_s
        period = deadline_s / 3
        done = threading.Event()

        def keep() -> None:
            failed = False
            # The first extension a third of the deadline after the pull, then every third: two may fail in a row.
            wait = max(0.0, leased_at + period - time.monotonic())
            while not done.wait(wait):
                wait = period
                if not (held := list(ack_ids)):
                    continue
                try:
                    self._lease(stream, held, deadline_s, once=True)
                except Exception as exc:  # Pub/Sub away, or an ack id it no longer knows: the next tick tries again
                    if not failed:
                        log.warning("could not extend the lease of %d %s message(s) in hand (%s: %s); trying again "
                                    "every %.0f s; should their leases run out they are redelivered and land twice "
                                    "(the join drops the duplicates)", len(held), stream, type(exc).__name__,
                                    exc, period)
                    failed = True

        keeper = threading.Thread(target=keep, name=f"tenfold-sink-lease-{stream}", daemon=True)
        keeper.start()
        try:
            yield
        finally:
            done.set()
            keeper.join()

    def _ack(self, stream: Stream, ack_ids: list[str]) -> None:
        """Acknowledge a batch whose rows are durably in the lake (the one place acks happen)."""
        self._call(lambda: self.client.acknowledge(
            request={"subscription": self.path(stream), "ack_ids": ack_ids}, retry=None),
            f"acknowledge {len(ack_ids)} {stream} message(s) already written to the lake (they will be redelivered "
            "and the join drops the duplicates)")

    def _gather(self, stream: Stream, in_hand: list[str], *, wait: bool, fill: bool) -> list[Any]:
        """One batch: the first pull (held with ``wait``), topped up for ``batch_wait_s`` (``fill``: run) or while
        a backlog lasts (drain), so that a trickle of messages still makes files of many rows, not one file per
        message. Each pull's ack ids join ``in_hand`` as it answers."""
        received = self._pull(stream, wait=wait)
        in_hand += [rm.ack_id for rm in received]
        if not received:
            return received
        started = time.monotonic()
        while len(received) < self.options.max_messages and time.monotonic() - started < self.options.batch_wait_s:
            more = self._pull(stream, wait=False, limit=self.options.max_messages - len(received))
            in_hand += [rm.ack_id for rm in more]
            if more:
                received += more
            elif not fill:
                break  # draining: the backlog is empty for now
            else:
                time.sleep(self.options.poll_interval_s)
        return received

    def _pull(self, stream: Stream, *, wait: bool, limit: int | None = None) -> list[Any]:
        from google.api_core.exceptions import DeadlineExceeded

        request = {"subscription": self.path(stream), "max_messages": limit or self.options.max_messages}
        if not wait:
            # Draining wants an answer now rather than a held pull; Pub/Sub discourages this flag for
            # throughput, which drain() does not need (run() uses held pulls).
            request["return_immediately"] = True
        try:
            # Only a held pull's deadline means "nothing to pull": one asked to return at once (drain, --until-idle,
            # run() after a busy round) that meets its deadline found Pub/Sub not answering (a hung or blackholed
            # emulator), and is retried, then refused, like an unavailable one; taken for empty, the sink reported
            # "pulled: 0" and exit 0, or idled forever without a word.
            resp = self._call(lambda: self.client.pull(request=request, timeout=self.options.pull_wait_s, retry=None),
                              f"pull {stream}", empty_on_deadline=wait)
        except DeadlineExceeded:
            # A held pull that ran out its wait: nothing to pull, once Pub/Sub answers a pull that returns at once (what
            # came meanwhile is returned). A hung emulator lets the held pull run out alike: taken for empty, the
            # running sink idled on it for ever without a word; asked at once, it is retried, then refused (_call).
            return self._pull(stream, wait=False, limit=limit)
        return list(resp.received_messages)

    def _call(self, fn: Callable[[], Any], what: str, *, empty_on_deadline: bool = False) -> Any:
        """``fn`` (which does ``what``) against Pub/Sub, retried while the service is unavailable, timed out or
        out of quota, up to ``pubsub_retry_s``; then :class:`SinkError`. ``empty_on_deadline``: a pull's
        DeadlineExceeded is raised at once (its wait ran out with nothing to pull); on an acknowledgement or a
        lease it is a failed call like any other.

        The client's own retries are off (``retry=None`` on every call): they would wait a minute
        before failing, whatever this sink's options say.
        """
        from google.api_core.exceptions import DeadlineExceeded, NotFound, PermissionDenied, Unauthenticated

        from tenfold.outages import outage_types

        started = time.monotonic()
        delay = 0.5
        while True:
            try:
                return fn()
            except DeadlineExceeded as exc:
                if empty_on_deadline:
                    raise
                error: Exception = exc
            except NotFound as exc:
                raise SinkError(f"{exc.message}: provision the Pub/Sub topology first (`tenfold up` locally, the "
                                "platform stack in the cloud)") from exc
            except (PermissionDenied, Unauthenticated) as exc:
                raise SinkError(f"Pub/Sub refused the sink ({exc.message}): its credentials need roles/pubsub.subscriber "
                                "on the predictions and feedback subscriptions (the platform stack grants them to the "
                                "feedback service account)") from exc
            except outage_types() as exc:
                error = exc
            if time.monotonic() - started > self.options.pubsub_retry_s:
                where = self.settings.messaging.emulator_host or "Pub/Sub"
                raise SinkError(f"cannot reach {where} for {self.options.pubsub_retry_s:.0f} s to {what} "
                                f"({type(error).__name__}: {error}); is the local platform up (`tenfold up`) or are "
                                "your cloud credentials set? (If so, Pub/Sub is overloaded or out of quota: restart "
                                "the sink later)") from error
            log.warning("Pub/Sub could not %s (%s: %s); retrying in %.1f s", what, type(error).__name__, error, delay)
            self._pause(delay, what)
            delay = min(delay * 2, 5.0)


_ARROW_ERRORS = (pa.ArrowException, ValueError, TypeError, OverflowError, UnicodeError)


def refusal(stream: Stream, data: bytes) -> str | None:
    """Why the sink refuses a message body now (the same parse, row and log-schema checks a batch gets), or
    None when it would land it."""
    parse, to_row, schema, _ = _PARSERS[stream]
    try:
        row = to_row(parse(data))
    except (ValidationError, ValueError, UnicodeDecodeError) as exc:
        return _first_error(exc)
    now = dt.datetime.now(dt.UTC)
    row.update(message_id="-", publish_time=now, delivery_attempt=1, landed_at=now)
    bad = _unwritable([row], schema)
    return _first_error(bad[0][1]) if bad else None


def _unwritable(rows: list[dict[str, Any]], schema: pa.Schema) -> list[tuple[int, Exception]]:
    """The rows (index, error) that Arrow cannot convert to ``schema``: one conversion of the batch, and
    one per row only when that fails."""
    try:
        pa.Table.from_pylist(rows, schema=schema)
        return []
    except _ARROW_ERRORS:
        pass
    bad: list[tuple[int, Exception]] = []
    for i, row in enumerate(rows):
        try:
            pa.Table.from_pylist([row], schema=schema)
        except _ARROW_ERRORS as exc:
            bad.append((i, exc))
    return bad


def _first_error(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        err = exc.errors()[0]
        return f"{'.'.join(str(p) for p in err['loc']) or 'body'}: {err['msg']} ({exc.error_count()} error(s))"
    return str(exc)
