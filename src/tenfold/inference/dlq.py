"""Dead-lettered scoring requests: what ``tenfold dlq inspect`` shows and ``tenfold dlq replay`` re-publishes.

Pub/Sub moves a request that failed ``max_delivery_attempts`` deliveries to the requests subscription's
dead-letter topic. Both commands first record whatever waits on its dead-letter subscription into the run's
``dead_letters/`` folder (:func:`tenfold.inference.runs.drain_dead_letters`), so a dead letter is kept in
the lake beside its run, with its body, its attributes, how often it was delivered and the error the worker
recorded, and stays inspectable after the message itself is gone. The drain's first pull is held, as real
Pub/Sub may answer one that returns at once with nothing while the dead-letter subscription holds messages.

With Pub/Sub away (the emulator stopped, or hung: a held pull that ran out is empty only once Pub/Sub answers a
pull that returns at once, :func:`tenfold.messaging.pulls.pull`), ``inspect`` warns in one line that it could not drain and lists what is
recorded; ``replay`` refuses (exit 1, nothing sent): what it would re-publish goes to that same Pub/Sub, and one
not yet drained would be left out of a replay that said it was done.

Replay marks each not yet replayed dead letter replayed and then re-publishes it to the requests topic with
its original attributes (so the same request id: a request that was scored meanwhile is only acknowledged).
A send that fails takes its mark back (the dead letter is not in flight), so the next replay sends it again,
which the workers' create-if-absent results make harmless; one killed between the two leaves it marked, and
``--again`` sends it.
"""

from __future__ import annotations

import base64
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from tenfold.inference.requests import RECORD_NAME, REPLAY
from tenfold.inference.runs import drain_dead_letters, mark_replayed, unmark_replayed
from tenfold.inference.store import RunStore, run_keys, work_objects
from tenfold.messaging.clients import subscription_path
from tenfold.outages import is_unreachable

if TYPE_CHECKING:
    from tenfold.config import Settings


def inspect(settings: Settings, *, run: str | None = None,
            warn: Callable[[str], None] = lambda line: print(line, file=sys.stderr)) -> list[dict[str, Any]]:
    """Every recorded dead letter (of ``run`` only, if given), the newest dead-lettered first; bodies left out.

    The drain first is best effort: with Pub/Sub (or the emulator) away, ``warn`` gets one line naming the dead-letter
    subscription that could not be drained, and what the lake has recorded is listed all the same."""
    _check_run(run)
    objects = work_objects(settings)
    try:
        drain_dead_letters(settings, objects=objects)
    except Exception as exc:
        if not is_unreachable(exc):  # a refusal (permissions, no topology, no credentials), the store full: said as is
            raise
        path = subscription_path(settings, settings.messaging.subscriptions["requests"].dead_letter_subscription)
        # Pub/Sub away, or the lake the drain records into (then the listing below, from the lake, says so too).
        warn(f"warning: could not drain the dead-letter subscription {path} into the lake ({type(exc).__name__}: "
             f"{' '.join(str(exc).split())[:200]}): listing only the dead letters recorded in the lake; any still waiting "
             "there are recorded and listed by `tenfold dlq inspect` run again once Pub/Sub and the lake answer "
             "(locally `tenfold status` shows what is down and `tenfold up` starts it)")
    out = []
    for key in [run] if run else run_keys(objects):
        store = RunStore(objects, key)
        for rid in store.dead_letter_ids():
            record = store.dead_letter(rid) or {}
            out.append({k: v for k, v in record.items() if k != "data_base64"})
    # Run folders sort by name (asset_triggered__... before manual__...), not by time: ordered by when each was
    # dead-lettered instead.
    out.sort(key=lambda r: r["dead_lettered_at"] if isinstance(r.get("dead_lettered_at"), int | float) else 0,
             reverse=True)
    return out


class DlqError(ValueError):
    """What to replay names no recorded dead letter (a mistyped run key or request id)."""


def _check_run(run: str | None) -> None:
    """A run key that cannot name a run's folder (a path pasted in) is refused before anything is drained."""
    if run is not None and not RECORD_NAME.fullmatch(run):
        raise DlqError(f"{run[:80]!r} is not a run key (letters, digits, '_', '.' and '-'; no '/'): "
                       "`tenfold dlq inspect` lists the runs")


def replay(settings: Settings, *, run: str | None = None, request_ids: Sequence[str] = (),
           include_replayed: bool = False, skipped: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """Re-publish dead letters (of ``run``, or only ``request_ids``) to the requests topic; returns what was sent.
    Those replayed before are left out unless ``include_replayed``; each is appended to ``skipped``.

    Raises :class:`DlqError` before sending anything when ``run`` has no dead letters recorded or a request id
    is not among them, or was replayed before (without ``include_replayed``): a typo, or a second replay of a
    request whose re-sent message was lost (an emulator restarted), is refused, not answered with "0 re-published".
    """
    from tenfold.messaging.clients import publisher_client, topic_path

    _check_run(run)
    objects = work_objects(settings)
    drain_dead_letters(settings, objects=objects)
    wanted = set(request_ids)
    runs = [run] if run else run_keys(objects)
    recorded = {rid for key in runs for rid in RunStore(objects, key).dead_letter_ids()}
    if run and not recorded:
        raise DlqError(f"run {run!r} has no dead letters recorded: `tenfold dlq inspect` lists the runs that do")
    if unknown := sorted(wanted - recorded):
        raise DlqError(f"no dead letter has request id {', '.join(unknown)}" + (f" in run {run}" if run else "")
                       + ": `tenfold dlq inspect` lists them")
    if wanted and not include_replayed:
        done = sorted(rid for key in runs for rid in RunStore(objects, key).dead_letter_ids()
                      if rid in wanted and (RunStore(objects, key).dead_letter(rid) or {}).get("replayed"))
        if done:
            raise DlqError(f"request {', '.join(done)} was replayed before and is in flight (or its message was lost: "
                           "an emulator restarted since): nothing was sent; --again sends it again")
    topic = topic_path(settings, settings.messaging.requests_topic)
    sent = []
    publisher = publisher_client(settings)
    try:
        for key in runs:
            store = RunStore(objects, key)
            for rid in store.dead_letter_ids():
                record = store.dead_letter(rid)
                if record is None or (wanted and rid not in wanted):
                    continue
                if record.get("replayed") and not include_replayed:
                    if skipped is not None:
                        skipped.append({"run": key, "request_id": rid})
                    continue
                attrs = {k: str(v) for k, v in dict(record.get("attributes", {})).items()
                         if not k.startswith("CloudPubSub")}
                attrs[REPLAY] = str(len(record.get("replays", [])) + 1)
                # Marked before it is sent, with the record as just read (as a run's publish marks what it resends):
                # a drain that records it dead-lettered anew once it is sent then has the last word. Marked after
                # the send, it overwrote such a newer record with this older copy.
                was = bool(record.get("replayed"))
                mark_replayed(store, rid, record, by="replay", replay=int(attrs[REPLAY]))
                try:
                    message_id = publisher.publish(topic, base64.b64decode(record["data_base64"]),
                                                   **attrs).result(timeout=60)
                except BaseException:
                    unmark_replayed(store, rid, record["replays"][-1], replayed=was)  # not sent: not in flight
                    raise
                sent.append({"run": key, "request_id": rid, "message_id": message_id})
    finally:
        publisher.stop()
    return sent
