"""Pulling a sparse subscription (a dead-letter one) until it is empty: the calls that ``tenfold feedback
dead-letters`` and the drain of offline inference's dead letters (``tenfold dlq``, a run's wait) share.

* :func:`call`: a call with the client's own retry off, retried a few seconds while Pub/Sub is unavailable;
* :func:`pull`: up to ``n`` messages, the first pull of a drain held (see there); a service that accepts the
  connection and never answers (a SIGSTOPped or wedged emulator) is an error, never "nothing there".

The feedback sink pulls the same way (a pull that returns at once and meets its deadline is Pub/Sub not answering,
only a held pull's may be an empty subscription), with retries of its own (:meth:`tenfold.feedback.sink.FeedbackSink._call`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

# How long a call is retried while Pub/Sub is unavailable before the caller says it cannot reach it. The client's
# own retry (on when a call passes no retry=None) waited a minute on a stopped emulator before saying anything.
RETRY_S = 5.0
# How long a held pull waits for messages before it counts as "nothing there": what a drain of an empty subscription
# costs, on every run's publish (the emulator holds an empty pull about 9 s, so this deadline ends it; real Pub/Sub
# answers a held pull as soon as it has a message, well within it).
HELD_PULL_S = 5.0
# How long a pull that returns at once may take: a live service answers it at once, empty or not, so its deadline means
# Pub/Sub is not answering (a stopped process whose port still accepts connections, a blackholed network).
ANSWER_S = 5.0


def call(method: Callable[..., Any], *, retry_s: float = RETRY_S, clock: Any = time, **kwargs: Any) -> Any:
    """``method(**kwargs)`` with the client's own retry off, retried for ``retry_s`` while Pub/Sub is
    unavailable, then its error raised. DeadlineExceeded is raised at once: for a held pull it means there was
    nothing to pull. ``clock`` (``monotonic`` and ``sleep``) is what it waits on: :mod:`time`, or a caller's."""
    from google.api_core.exceptions import DeadlineExceeded

    from tenfold.outages import outage_types

    started, delay = clock.monotonic(), 0.5
    while True:
        try:
            return method(**kwargs, retry=None)
        except DeadlineExceeded:
            raise
        except outage_types():
            if clock.monotonic() - started + delay > retry_s:
                raise
        clock.sleep(delay)
        delay *= 2


def pull(client: Any, path: str, n: int, *, first: bool, retry_s: float = RETRY_S, clock: Any = time) -> list[Any]:
    """Up to ``n`` messages; [] when there are none. The first pull is held (no ``return_immediately``) until
    messages come or the service says there are none (at most :data:`HELD_PULL_S`): Pub/Sub may answer a pull that
    returns at once with nothing while a sparse subscription, as a dead-letter one is, holds messages, and a drain
    concluded there were none (``tenfold feedback dead-letters`` said "0 dead-lettered", ``tenfold dlq replay`` "no
    dead letters recorded") while they were there. A later pull (after others returned messages) returns at once.
    An outage is retried for ``retry_s`` on ``clock`` (:func:`call`).

    A held pull that runs out its deadline is an empty subscription only once Pub/Sub answers a pull that returns at
    once (:data:`ANSWER_S`; what came meanwhile is returned): the emulator holds an empty pull longer than
    :data:`HELD_PULL_S`, and a hung one (SIGSTOPped: its port accepts connections, nothing answers) let it run out
    alike, so both commands said nothing was dead-lettered while Pub/Sub could not be asked. Its DeadlineExceeded, as
    that of any pull that returns at once, is raised (an outage, :func:`tenfold.outages.is_unreachable`)."""
    from google.api_core.exceptions import DeadlineExceeded

    if first:
        try:
            resp = call(client.pull, retry_s=retry_s, clock=clock,
                        request={"subscription": path, "max_messages": n, "return_immediately": False},
                        timeout=HELD_PULL_S)
            return list(resp.received_messages)
        except DeadlineExceeded:  # an empty subscription the service held, or a service that never answers
            pass
    try:
        resp = call(client.pull, retry_s=retry_s, clock=clock,
                    request={"subscription": path, "max_messages": n, "return_immediately": True}, timeout=ANSWER_S)
    except DeadlineExceeded as exc:
        raise DeadlineExceeded(  # said first: a caller's warning line keeps only the start of a long error
            f"Pub/Sub is not answering (stopped, hung or cut off): no answer to a pull that returns at once within "
            f"{ANSWER_S:.0f} s" + (f", nor to a held one within {HELD_PULL_S:.0f} s" if first else "")) from exc
    return list(resp.received_messages)
