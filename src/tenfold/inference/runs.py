"""One offline inference run over Pub/Sub: publish the requests, account for each, publish the scores.

The steps ``batch_inference`` calls (each idempotent, so a retried task repeats it safely):

* :func:`partition_rows`: the features partition's key and feature columns, in the contract's key order
  (so the batches, and their request ids, are the same on every run of the same data);
* :func:`publish_requests`: every batch as one message with its deterministic request id. A retried
  publish sends the same request ids again, but those whose result exists already; the workers write each result
  once, so nothing doubles;
* :func:`wait_accounted`: waits until every request id is *scored* (its result exists) or *dead-lettered*
  (Pub/Sub moved it to the dead-letter topic after ``max_delivery_attempts``), logging progress. Dead
  letters are pulled from the dead-letter subscription and recorded durably in the run's folder before
  they are acknowledged (:func:`drain_dead_letters`), so ``tenfold dlq`` still shows them later;
* :func:`collect` + :func:`check_invariant`: "count in = count out + dead-letter count", in requests and
  in rows, and one result row per input row; a run that breaks it fails naming the numbers;
* :func:`publish_scores`: the scores partition, sorted by the contract's keys and written with fixed
  Parquet options, published atomically by :meth:`tenfold.data.lake.Lake.publish` (the same rows give
  byte-identical files, so a rerun or retry republishes nothing new).
"""

from __future__ import annotations

import base64
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tenfold.inference import faults
from tenfold.inference.requests import (
    MODEL_VERSION,
    PARTITION,
    REPLAY,
    ROWS,
    ScoringRequest,
    batch_count,
    plan_batches,
    record_id,
    request_id,
)
from tenfold.inference.store import STARTED, UNKNOWN_RUN, RunStore, died_during, message_store, work_objects
from tenfold.outages import is_store_outage

if TYPE_CHECKING:
    import pyarrow as pa

    from tenfold.config import Settings
    from tenfold.data.lake import Lake, Manifest, Partition
    from tenfold.workloads import FeatureContract

log = logging.getLogger(__name__)

# How often a waiting run pulls the dead-letter subscription. A message gets there only after
# max_delivery_attempts deliveries, so a second is soon enough; pulling it every poll_interval_s cost the
# emulator (on the same cores as the workers) a tenth of a core.
DEAD_LETTER_POLL_S = 1.0

# The attribute real Pub/Sub adds to a dead-lettered message: how often it was delivered.
DEAD_LETTER_COUNT = "CloudPubSubDeadLetterSourceDeliveryCount"


# What Pub/Sub accepts in one publish request (the topic's name, the message's body and attributes); the publisher
# client refuses a larger message before sending it (google.cloud.pubsub_v1's MessageTooLargeError).
MAX_PUBLISH_BYTES = 10_000_000


class InferenceRunError(RuntimeError):
    """A run cannot complete (requests unaccounted for, the invariant broken); the text says what to do."""


class RequestTooLargeError(InferenceRunError):
    """A request of ``inference.rows_per_message`` rows is larger than Pub/Sub takes: every try sends the same bytes,
    so a pipeline step fails at once (``retryable = False``) with what to change instead of being retried."""

    retryable = False


def partition_rows(lake: Lake, table: str, part: Partition, contract: FeatureContract) -> pa.Table:
    """The partition's keys and features, sorted by the keys (the run's deterministic order)."""
    from tenfold.training.data import read_features

    columns = list(dict.fromkeys(contract.key_columns + contract.feature_columns))
    rows = read_features(lake, [part], contract=contract, table=table, columns=columns)
    return rows.sort_by([(k, "ascending") for k in contract.key_columns])


def expected_ids(run_key: str, partition: str, requests: int) -> list[str]:
    return [request_id(run_key, partition, i) for i in range(requests)]


@dataclass(frozen=True)
class PublishReport:
    requests: int  # the run's requests, those not sent again (already_scored) included
    rows: int
    seconds: float
    already_scored: int = 0  # requests of a run published before whose result exists: not sent again


def publish_requests(settings: Settings, run_key: str, partition: str, model_version: str, rows: pa.Table, *,
                     rows_per_message: int | None = None, publisher: Any = None) -> PublishReport:
    """Publish the partition's requests (waiting until Pub/Sub has every one); see the module docstring.

    ``rows_per_message`` is the run's plan (``settings.inference.rows_per_message`` when it planned): the
    request ids the run waits for are counted with it, so a setting changed since must not re-cut them.
    """
    from google.cloud.pubsub_v1.publisher.exceptions import MessageTooLargeError

    from tenfold.messaging.clients import publisher_client, topic_path

    inf = settings.inference
    per_message = rows_per_message or inf.rows_per_message
    topic = topic_path(settings, settings.messaging.requests_topic)

    def batches() -> Iterable[ScoringRequest]:
        return plan_batches(rows, run_key=run_key, partition=partition, model_version=model_version,
                            rows_per_message=per_message)

    # The first request (a full one: only the last is shorter) is weighed before anything is sent or marked sent
    # again: the client refused one too large only at publish, with a ValueError that a task's retries met again.
    if (first := next(iter(batches()), None)) is not None:
        _check_size(settings, topic, first, first.encode(inf.request_compression), per_message)
    client = publisher or publisher_client(settings)
    futures = []
    count = skipped = 0
    # A run published again (its task retried, its DAG run cleared) re-sends requests that were dead-lettered:
    # they are in flight again, not accounted for, until they are scored or dead-lettered anew. Dead letters still
    # waiting on their subscription (dead-lettered while an earlier try of this task failed, nothing draining) are
    # recorded first: recorded by the wait after this resend, as not sent again, each counted as dead-lettered while
    # its new copy was in flight, and the run ended early (failed, or published without it).
    objects = work_objects(settings)
    store = RunStore(objects, run_key)
    # The first pull is held (up to HELD_PULL_S: the emulator's empty one takes all of it) only for a run published
    # before (a retried task, a cleared run), whose own dead letters may wait there; a new run has none, and others'
    # are drained by their runs' waits and `tenfold dlq`.
    drain_dead_letters(settings, objects=objects, held=store.published_before())
    started = time.monotonic()  # the publish itself, not the drain
    # A request whose result exists is not sent again: a worker would only acknowledge it, but a run published again
    # with thousands of them scored filled the subscription with duplicates (in the cloud, the backlog the instance
    # group scales on). Listed once: a result written after it makes its request a duplicate, as before, never lost.
    scored = set(store.result_ids())
    resent = resend_dead_letters(store, [i for i in expected_ids(run_key, partition,
                                                                 batch_count(rows.num_rows, per_message))
                                         if i not in scored], by="publish")
    store.mark_publishing()  # before anything is sent: a retry of this publish holds its drain
    if resent:
        log.info("run %s: %d dead-lettered request(s) sent again with the run's requests", run_key, len(resent))
    try:
        for request in batches():
            if request.request_id in scored:
                skipped += 1
                continue
            faults.fire("publish", request.request_id)
            body = request.encode(inf.request_compression)
            attributes = request.attributes()
            if number := resent.get(request.request_id):
                attributes[REPLAY] = str(number)  # the copy of a dead letter sent again
            try:
                futures.append(client.publish(topic, body, **attributes))
            except MessageTooLargeError:
                # A later request larger than the first (longer strings): those sent before it are harmless, a
                # publish with other settings sends the same request ids again (or, with other rows_per_message,
                # is another run) and the workers write each result once.
                _check_size(settings, topic, request, body, per_message, sent=count)
                raise
            count += 1
        for future in futures:
            future.result(timeout=120)
    finally:
        if publisher is None:
            client.stop()
    assert count + skipped == batch_count(rows.num_rows, per_message)
    if skipped:
        log.info("run %s: %d of its %d requests are scored already (published before): not sent again", run_key,
                 skipped, count + skipped)
    return PublishReport(requests=count + skipped, rows=rows.num_rows, seconds=time.monotonic() - started,
                         already_scored=skipped)


def _check_size(settings: Settings, topic: str, request: ScoringRequest, body: bytes, per_message: int, *,
                sent: int = 0) -> None:
    """Raise :class:`RequestTooLargeError` when ``request`` (its ``body`` encoded) is more than Pub/Sub takes."""
    from google.pubsub_v1 import types

    # Weighed as the publisher client weighs it: the publish request that would carry the message alone.
    message = types.PubsubMessage(data=body, attributes=request.attributes())
    size = types.PublishRequest.pb(types.PublishRequest(topic=topic, messages=[message])).ByteSize()
    if size <= MAX_PUBLISH_BYTES:
        return
    inf = settings.inference
    fits = max(1, int(per_message * MAX_PUBLISH_BYTES * 0.9 / size) // 100 * 100)
    raise RequestTooLargeError(
        f"a request of {request.rows.num_rows:,} rows (inference.rows_per_message={per_message:,}, "
        f"inference.request_compression={inf.request_compression!r}) is a {size:,}-byte Pub/Sub message, more than "
        f"Pub/Sub's limit of {MAX_PUBLISH_BYTES:,} bytes (10 MB): "
        + (f"{sent} request(s) before it were published (harmless: a new publish sends the same request ids); "
           if sent else "nothing was published; ")
        + f"lower inference.rows_per_message to {fits:,} or less"
        + (" (or set inference.request_compression to 'zstd', the smallest)" if inf.request_compression != "zstd"
           else "")
        + ", then trigger batch_inference for the month again (a new plan cuts the requests anew)")


def drain_dead_letters(settings: Settings, *, subscriber: Any = None, objects: Any = None,
                       polled: bool = False, held: bool = True) -> list[tuple[str, str]]:
    """Record every message waiting on the requests' dead-letter subscription, then acknowledge it.

    Returns ``(run, request id)`` of each recorded. The record (body, attributes, delivery attempts, the last error
    the worker recorded) is written before the ack, so a crash in between records it twice, never loses it. A dead
    letter of a copy older than the one last sent again is acknowledged without being recorded (see
    :func:`_record_dead_letter`).

    Its first pull is held (:func:`tenfold.messaging.pulls.pull`, at most ``HELD_PULL_S``): Pub/Sub may answer a pull
    that returns at once with nothing while the sparse dead-letter subscription holds messages, and a one-shot drain
    (``tenfold dlq``, a publish before it resends) took that for "none"; a held pull that runs out is "none" only
    once Pub/Sub answers a pull that returns at once (a hung Pub/Sub is raised as not answering, DeadlineExceeded).
    Pub/Sub unavailable is retried a few seconds, then raised. ``polled``: the caller drains again in a moment (a run's wait, every
    :data:`DEAD_LETTER_POLL_S`) and never concludes from an empty drain: every pull returns at once and an outage is
    raised at once, the next round being the retry. ``held``: False for a caller that knows no dead letter of its
    own can wait there (a new run's publish): every pull returns at once, an outage still retried.
    """
    from tenfold.messaging.clients import subscriber_client, subscription_path
    from tenfold.messaging.pulls import RETRY_S, pull

    sub = settings.messaging.subscriptions["requests"]
    path = subscription_path(settings, sub.dead_letter_subscription)
    objects = objects or work_objects(settings)
    client = subscriber or subscriber_client(settings)
    seen: list[tuple[str, str]] = []
    first = held and not polled
    try:
        while True:
            received = pull(client, path, 500, first=first, retry_s=0.0 if polled else RETRY_S)
            first = False
            if not received:
                break
            acks = []
            try:
                for n, rm in enumerate(received):
                    msg = rm.message
                    attrs = dict(msg.attributes)
                    rid = record_id(attrs, msg.data)
                    store = message_store(objects, attrs)  # unknown-run's folder when attribute run cannot name one
                    try:
                        recorded = _record_dead_letter(store, rid, msg, attrs, sub.max_delivery_attempts)
                    except Exception as exc:
                        if is_store_outage(exc):  # the store is away: this message and the rest of the batch are
                            # left unacked for a later drain, which files them in their runs (under unknown-run,
                            # acked, the run never counted it). The drain ends here: each further record would
                            # wait out the client's own retries, past the batch's ack deadline, without end.
                            log.warning("could not record dead letter %s of run %s now (%s: %s); it and the rest of "
                                        "the batch are left on the dead-letter subscription for the next drain", rid,
                                        store.run, type(exc).__name__, exc)
                            # Handed back at once: left leased, they stayed invisible for the subscription's ack
                            # deadline (the source subscription's: 120 s for requests), so the drains of the wait's next rounds, and of a retried
                            # publish before it resends, could not see them while their requests counted as pending.
                            _give_back(client, path, [r.ack_id for r in received[n:]])
                            raise
                        # this message's record only: kept under a name that is always safe
                        log.exception("could not record dead letter %s of run %s; recording it as message-%s of %s",
                                      rid, store.run, msg.message_id, UNKNOWN_RUN)
                        store, rid = RunStore(objects, UNKNOWN_RUN), f"message-{msg.message_id}"
                        recorded = _record_dead_letter(store, rid, msg, attrs, sub.max_delivery_attempts,
                                                       recording_error=f"{type(exc).__name__}: {exc}")
                    if recorded:
                        seen.append((store.run, rid))
                    acks.append(rm.ack_id)
            finally:  # what was recorded is acknowledged, even when a later message could not be (it comes again)
                if acks:
                    client.acknowledge(request={"subscription": path, "ack_ids": acks}, retry=None)
    finally:
        if subscriber is None:
            client.close()
    for run, rid in seen:
        log.warning("request %s of run %s was dead-lettered after %d deliveries: see `tenfold dlq inspect --run %s`",
                    rid, run, sub.max_delivery_attempts, run)
    return seen


def _give_back(client: Any, path: str, ack_ids: list[str]) -> None:
    """Return the leases of ``ack_ids`` at once (deadline 0): the messages are deliverable again now. Best effort: a
    give-back that fails (Pub/Sub away too) is only logged, the messages come back once their lease ends, and the
    error the caller is raising stays the one it raises."""
    try:
        client.modify_ack_deadline(request={"subscription": path, "ack_ids": ack_ids, "ack_deadline_seconds": 0},
                                   retry=None, timeout=10)
    except Exception as exc:
        log.warning("could not hand back %d dead letter(s) not recorded (%s: %s); they come back once their lease "
                    "ends", len(ack_ids), type(exc).__name__, exc)


def _record_dead_letter(store: RunStore, rid: str, msg: Any, attrs: dict[str, str], max_delivery_attempts: int,
                        **extra: Any) -> bool:
    """Write the dead-letter record of ``msg`` (see :func:`drain_dead_letters`) as ``rid`` of ``store``'s run; False
    when ``msg`` is a stale copy of a request sent again since (the record is left as it is)."""
    # A record that cannot be read (a torn or foreign file) is not a reason to file the dead letter outside its run,
    # where the run never counts it: it is recorded without what that file said.
    try:
        error = store.error(rid) or {}
    except ValueError as exc:
        error = {"error": f"(the worker's error record of this request could not be read: {exc})"}
    try:
        before = store.dead_letter(rid) or {}
    except ValueError:
        before = {}
    # Pub/Sub may dead-letter one message more than once, and a copy sent before a replay may still be redelivered
    # while the replay's copy is in flight: recorded afresh (unmarked), the request counted as dead-lettered and the
    # run ended without it. A copy's `replay` attribute says which send it is of (none: the original publication; a
    # copy sent again, by `tenfold dlq replay` or a run's publish, carries its number): a dead letter of an older copy
    # than the record's latest send changes nothing.
    copy, latest = _whole(attrs.get(REPLAY)) or 0, _latest_replay(before)
    if before.get("replayed") and copy < latest:
        log.warning("dead letter of request %s of run %s is of an older copy (replay %d) than the one sent last "
                    "(replay %d), which is in flight: its record is kept as it is", rid, store.run, copy, latest)
        return False
    # Attributes are whatever the publisher set: a dead letter is often one *because* they are wrong.
    attempts = max(_whole(attrs.get(DEAD_LETTER_COUNT)) or 0, _whole(error.get("delivery_attempt")) or 0)
    reason = error.get("error")
    # Its last delivery started and never said how it ended: the worker died there (killed, out of memory?), and
    # nothing else could have recorded why. Unless its result is written: that delivery scored it, and only its ack
    # was lost or late (the note is not taken back on success), which is no death.
    if isinstance(mark := error.get(STARTED), dict) and not store.has_result(rid):
        reason = died_during(mark, store.run, rid) + (f"; the error recorded before it: {reason}" if reason else "")
        attempts = max(attempts, _whole(mark.get("delivery_attempt")) or 0)
    store.put_dead_letter(rid, {
        "request_id": rid, "run": store.run, "partition": attrs.get(PARTITION),
        "model_version": attrs.get(MODEL_VERSION), "rows": _whole(attrs.get(ROWS)),
        "message_id": msg.message_id, "attributes": attrs,
        "data_base64": base64.b64encode(bytes(msg.data)).decode(),
        "delivery_attempts": attempts, "max_delivery_attempts": max_delivery_attempts,
        "error": reason, "dead_lettered_at": time.time(),
        "times_dead_lettered": (_whole(before.get("times_dead_lettered")) or 0) + 1,
        "replays": before.get("replays", []), "replayed": False, **extra,
    })
    return True


def _latest_replay(record: dict[str, Any]) -> int:
    """The ``replay`` number of the copy a dead-letter record's latest send carried (:func:`mark_replayed` keeps it);
    0 when the record predates the number."""
    replays = record.get("replays")
    last = replays[-1] if isinstance(replays, list) and replays else None
    return (_whole(last.get(REPLAY)) or 0) if isinstance(last, dict) else 0


@dataclass(frozen=True)
class Accounting:
    requests: int
    scored: tuple[str, ...]
    dead_lettered: tuple[str, ...]

    @property
    def accounted(self) -> int:
        return len(self.scored) + len(self.dead_lettered)


def _whole(value: Any) -> int | None:
    """``value`` as a whole number, or None when it is missing or is not one (an attribute of a malformed message)."""
    try:
        return int(value) if value is not None and not isinstance(value, bool) else None
    except (TypeError, ValueError):
        return None


# What account() read of each dead letter: its record's stamp (RunStore.dead_letter_stamps) and whether it was
# marked replayed then.
DeadLetterStates = dict[str, tuple[Any, bool]]


def account(store: RunStore, ids: Iterable[str], *, known: DeadLetterStates | None = None) -> Accounting:
    """Which of ``ids`` are scored, and which dead-lettered and not sent again since.

    A dead letter marked ``replayed`` (by ``tenfold dlq replay``, or by a new publication of the run's
    requests) is in flight again: it is accounted once it is scored, or once the copy sent last is dead-lettered
    (which records it afresh, unmarked); a copy sent before it, dead-lettered again, leaves it in flight.

    ``known``: what earlier calls read (a wait passes the same dict to each of its polls). A dead-letter record holds
    the whole request (its body): read on every poll, thousands of them were downloaded again every half second. One
    whose stamp is unchanged since it was read is not read again; one replaced since (marked replayed, recorded afresh)
    is.
    """
    wanted = list(ids)
    results = set(store.result_ids())
    stamps = store.dead_letter_stamps()
    known = {} if known is None else known
    scored = tuple(i for i in wanted if i in results)
    dl = tuple(i for i in wanted if i in stamps and i not in results and not _replayed(store, i, stamps[i], known))
    return Accounting(requests=len(wanted), scored=scored, dead_lettered=dl)


def _replayed(store: RunStore, rid: str, stamp: Any, known: DeadLetterStates) -> bool:
    """Whether dead letter ``rid`` is marked replayed: as read before under the same ``stamp``, else read now."""
    if stamp is not None and (seen := known.get(rid)) is not None and seen[0] == stamp:
        return seen[1]
    # Read after its stamp was listed: a record replaced in between is kept under the older stamp, and read again next
    # time (its listing then shows the newer one); never the other way round.
    replayed = bool((store.dead_letter(rid) or {}).get("replayed"))
    if stamp is not None:
        known[rid] = (stamp, replayed)
    return replayed


def mark_replayed(store: RunStore, rid: str, record: dict[str, Any], **how: Any) -> None:
    """Record that dead letter ``rid`` was sent again (``how``: by whom, and ``replay``, the number of the copy's
    ``replay`` attribute when it has one): it is in flight. A dead letter of an older copy leaves it so."""
    record["replays"] = [*record.get("replays", []), {"at": time.time(), **how}]
    record["replayed"] = True
    store.put_dead_letter(rid, record)


def unmark_replayed(store: RunStore, rid: str, mark: dict[str, Any], *, replayed: bool = False) -> bool:
    """Take back ``mark`` (the replay :func:`mark_replayed` added) when the send it announced failed, ``replayed``
    as it was before; False when the record has changed since (a drain recorded it afresh: that one stands)."""
    record = store.dead_letter(rid)
    if record is None or not record.get("replayed") or not record.get("replays") or record["replays"][-1] != mark:
        return False
    record["replays"] = record["replays"][:-1]
    record["replayed"] = replayed
    store.put_dead_letter(rid, record)
    return True


def resend_dead_letters(store: RunStore, ids: Iterable[str], *, by: str) -> dict[str, int]:
    """Mark the dead letters among ``ids`` as replayed (sent again ``by`` whom), before they are re-published; returns
    each one's replay number, which its new copy carries as its ``replay`` attribute (as ``tenfold dlq replay``'s
    copies do): a late dead letter of an older copy then tells itself apart (:func:`_record_dead_letter`)."""
    dead = set(store.dead_letter_ids())
    marked: dict[str, int] = {}
    for rid in ids:
        record = store.dead_letter(rid) if rid in dead else None
        if record is None:
            continue
        # Marked afresh even when an earlier try (or `tenfold dlq replay`) marked it: this copy gets a number of its
        # own, the newest, so a dead letter of any copy sent before it, sent or not, reads as an older copy's. Under
        # no number it read as older than the mark and was set aside, in flight for ever; under the earlier number,
        # an earlier copy's dead letter counted it dead while this one was in flight.
        number = len(record.get("replays", [])) + 1
        mark_replayed(store, rid, record, by=by, replay=number)
        marked[rid] = number
    return marked


def wait_accounted(settings: Settings, run_key: str, ids: list[str], *, alive: Callable[[], int] | None = None,
                   say: Callable[[str], None] = log.info) -> Accounting:
    """Wait until every request id is scored or dead-lettered; progress every ``inference.progress_s``.

    ``alive`` (the local pool's live worker count) turns a pool that is gone into an error at once.
    """
    inf = settings.inference
    objects = work_objects(settings)
    store = RunStore(objects, run_key)
    started = last_log = time.monotonic()
    deadline = started + inf.wait_timeout_s
    drained = -DEAD_LETTER_POLL_S
    known: DeadLetterStates = {}  # the dead letters read so far: each poll reads only those replaced since
    while True:
        if time.monotonic() - drained >= DEAD_LETTER_POLL_S:
            drained = time.monotonic()
            try:
                drain_dead_letters(settings, objects=objects, polled=True)
            except Exception as exc:  # Pub/Sub or the store away for a moment: drained on a later round (the deadline
                # bounds the wait); raised, it failed the whole score try and restarted the pool
                if not is_store_outage(exc):  # a Google service's outage, Pub/Sub's included, or the store's
                    raise
                log.warning("could not drain the dead letters now (%s); trying again in %.0f s", exc, DEAD_LETTER_POLL_S)
        acc = account(store, ids, known=known)
        now = time.monotonic()
        if acc.accounted >= acc.requests:
            say(f"all {acc.requests} requests accounted for in {now - started:.1f} s: {len(acc.scored)} scored, "
                f"{len(acc.dead_lettered)} dead-lettered")
            return acc
        if now - last_log >= inf.progress_s:
            last_log = now
            say(f"{len(acc.scored)}/{acc.requests} requests scored, {len(acc.dead_lettered)} dead-lettered, "
                f"{acc.requests - acc.accounted} pending ({now - started:.0f} s)")
        if alive is not None and alive() == 0:
            raise InferenceRunError(f"every inference worker has exited: see "
                                    f"{settings.local.home / 'run'}/inference-worker-*.log")
        if now > deadline:
            raise InferenceRunError(
                f"{acc.requests - acc.accounted} of {acc.requests} requests of run {run_key} were neither scored nor "
                f"dead-lettered within {inf.wait_timeout_s} s: are workers running (the local pool, or the inference "
                "instance group in the cloud)? Retry the task to keep waiting; nothing is published twice. If the "
                "Pub/Sub emulator was restarted since the requests were published (it keeps messages in memory only), "
                "they are gone: clear this run's publish task with its downstream tasks (score, publish_results): it "
                "sends again the request ids not yet scored (results already written are kept)")
        time.sleep(inf.poll_interval_s)


def collect(store: RunStore, acc: Accounting) -> pa.Table:
    """The scored rows of the run (every result), concatenated (not yet sorted)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    tables = []
    for rid in acc.scored:
        data = store.result(rid)
        if data is None:
            raise InferenceRunError(f"the result of request {rid} disappeared from run {store.run}'s folder")
        tables.append(pq.read_table(pa.BufferReader(data)))
    if not tables:
        return pa.table({})
    return pa.concat_tables(tables)


def dead_rows(store: RunStore, acc: Accounting) -> int:
    return sum(_whole((store.dead_letter(rid) or {}).get("rows")) or 0 for rid in acc.dead_lettered)


def check_invariant(*, requests_in: int, rows_in: int, acc: Accounting, rows_out: int, rows_dead: int,
                    distinct_keys: int) -> dict[str, int]:
    """``count in = count out + dead-letter count`` in requests and in rows, and no key scored twice."""
    figures = {"requests_in": requests_in, "requests_scored": len(acc.scored), "requests_dead_lettered": len(acc.dead_lettered),
               "rows_in": rows_in, "rows_out": rows_out, "rows_dead_lettered": rows_dead}
    problems = []
    if requests_in != len(acc.scored) + len(acc.dead_lettered):
        problems.append(f"requests: {requests_in} in != {len(acc.scored)} scored + {len(acc.dead_lettered)} dead-lettered")
    if rows_in != rows_out + rows_dead:
        problems.append(f"rows: {rows_in} in != {rows_out} out + {rows_dead} dead-lettered")
    if distinct_keys != rows_out:
        problems.append(f"{rows_out - distinct_keys} rows are scored more than once")
    if problems:
        raise InferenceRunError("the run's invariant (count in = count out + dead-letter count) does not hold: "
                                + "; ".join(problems) + ". Nothing was published; inspect the run's folder "
                                "and `tenfold dlq inspect`, then clear the month's tasks from score on (or trigger batch_inference with the "
                                "run conf {\"month\": \"YYYY-MM\"})")
    return figures


def publish_scores(lake: Lake, table: str, part: Partition, scores: pa.Table, schema: pa.Schema, order: list[str], *,
                   run_id: str, extra: dict[str, Any]) -> Manifest:
    """Publish ``scores`` as ``table``'s ``part``: sorted by ``order``, fixed Parquet options, atomic."""
    from tenfold.data.parquet import write_sorted

    faults.fire("publish_results", part.label)
    staged = lake.staging_path(table, part)
    write_sorted(scores, order, schema, lake.fs, f"{staged}/part-00000.parquet")
    try:
        return lake.publish(table, part, staged, run_id=run_id, extra=extra)
    finally:
        lake.discard(staged)
