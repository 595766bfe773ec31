"""Replay traffic through the serving fleet: predictions with user keys, then the feedback of each.

What ``make demo`` sends (the held-out month's flights as if live, :meth:`Workload.replay`), and what a
rollout test uses to put load on both arms. Every request goes through the load balancer with the bearer
token and the user-key header, so HAProxy's sticky split decides the arm; each answered prediction's
observed outcome is then posted to ``/v1/feedback`` (202 once it is durably on the feedback topic).

The report counts every request by status, so a failure is visible rather than averaged away, and
gives the latency percentiles the client saw, the throughput, and each arm's share.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from tenfold.config import Settings
from tenfold.workloads import Replayed

LATENCIES_KEPT = 100_000
ERRORS_KEPT = 100
# Feedback answered 503 (Pub/Sub away: the API says retry after Retry-After) or lost in transport is posted again,
# this many times in all; the sink upserts by prediction id, so a repeat of one that did get through is harmless.
FEEDBACK_TRIES = 4
FEEDBACK_WAIT_CAP_S = 5.0
FEEDBACK_IN_FLIGHT_PER_WORKER = 8


@dataclass
class TrafficReport:
    sent: int = 0
    seconds: float = 0.0
    statuses: Counter[int] = field(default_factory=Counter)
    arms: Counter[str] = field(default_factory=Counter)
    versions: Counter[str] = field(default_factory=Counter)
    # A uniform sample of the answered requests' latencies (at most LATENCIES_KEPT): the demo's load runs for up to
    # half an hour, and every list here grew with every request.
    latencies_ms: list[float] = field(default_factory=list)
    answered: int = 0  # requests answered 200: what the latency sample is drawn from
    feedback: Counter[int] = field(default_factory=Counter)  # each outcome's final answer, after its retries
    errors: list[str] = field(default_factory=list)  # the first ERRORS_KEPT; statuses and feedback count them all
    _sampler: random.Random = field(default_factory=lambda: random.Random(0), repr=False)

    def latency(self, ms: float) -> None:
        """Record one answered request's latency (reservoir sampling: every answer equally likely to be kept)."""
        self.answered += 1
        if len(self.latencies_ms) < LATENCIES_KEPT:
            self.latencies_ms.append(ms)
        elif (slot := self._sampler.randrange(self.answered)) < LATENCIES_KEPT:
            self.latencies_ms[slot] = ms

    def error(self, text: str) -> None:
        if len(self.errors) < ERRORS_KEPT:
            self.errors.append(text)

    @property
    def ok(self) -> int:
        return self.statuses.get(200, 0)

    @property
    def rate(self) -> float:
        return self.sent / self.seconds if self.seconds else 0.0

    def percentile(self, q: float) -> float:
        """The ``q`` quantile (0..1) of the answered requests' latency, in ms (nearest rank)."""
        if not self.latencies_ms:
            return float("nan")
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]

    def share(self, arm: str) -> float:
        total = sum(self.arms.values())
        return self.arms.get(arm, 0) / total if total else 0.0

    def summary(self) -> str:
        statuses = ", ".join(f"{code}: {n}" for code, n in sorted(self.statuses.items()))
        arms = ", ".join(f"{arm} {self.share(arm):.1%}" for arm in sorted(self.arms))
        feedback = ", ".join(f"{code}: {n}" for code, n in sorted(self.feedback.items())) or "none sent"
        return (f"{self.sent} predictions in {self.seconds:.1f} s ({self.rate:.0f} req/s), statuses {statuses}; "
                f"latency p50 {self.percentile(0.5):.1f} ms, p99 {self.percentile(0.99):.1f} ms; arms: {arms}; "
                f"feedback: {feedback}")


def lb_url(settings: Settings) -> str:
    """The local load balancer's base URL (HAProxy in front of the fleet)."""
    return f"http://{settings.local.bind_host}:{settings.local.lb_port}"


def user_key(i: int, users: int) -> str:
    return f"user-{i % users}"


async def _replay(settings: Settings, items: Sequence[Replayed], *, base_url: str, token: str, concurrency: int,
                  users: int, send_feedback: bool, report: TrafficReport, keys: Sequence[str] | None = None) -> None:
    import httpx

    server = settings.serving.server
    predict_url = f"{base_url}{server.api_prefix}/predict"
    feedback_url = f"{base_url}{server.api_prefix}/feedback"
    auth = {"Authorization": f"Bearer {token}"}
    queue: asyncio.Queue[tuple[int, Replayed]] = asyncio.Queue()
    for i, item in enumerate(items):
        queue.put_nowait((i, item))
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    # Feedback is posted beside the predictions, not in their way: its retries (a Pub/Sub outage: seconds each) held
    # the worker that sent the prediction, and the load on both arms nearly stopped (a canary window with no data).
    # At most this many outcomes are in flight; past it, a worker waits (the load slows rather than piling up).
    feedback_slots = asyncio.Semaphore(concurrency * FEEDBACK_IN_FLIGHT_PER_WORKER)
    posting: set[asyncio.Task[None]] = set()

    async def feedback(client: httpx.AsyncClient, prediction_id: str, outcome: Any) -> None:
        try:
            report.feedback[await _post_feedback(client, feedback_url, auth, prediction_id, outcome, report)] += 1
        finally:
            feedback_slots.release()

    async def worker(client: httpx.AsyncClient) -> None:
        while True:
            try:
                i, item = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            key = keys[i % len(keys)] if keys else user_key(i, users)
            # The key goes in the header, where HAProxy routes by it and the replica reads it: a workload's request
            # model need not have a user_key field (one that forbids extra fields would refuse it).
            body: dict[str, Any] = dict(item.request)
            started = time.perf_counter()
            try:
                response = await client.post(predict_url, json=body, headers={**auth, server.user_key_header: key})
            except httpx.HTTPError as exc:
                report.statuses[0] += 1
                report.error(f"predict: {type(exc).__name__}: {exc}")
                continue
            report.statuses[response.status_code] += 1
            if response.status_code != 200:
                report.error(f"predict {response.status_code}: {response.text[:200]}")
                continue
            report.latency((time.perf_counter() - started) * 1000)
            answer = response.json()
            report.arms[answer["arm"]] += 1
            report.versions[answer["model_version"]] += 1
            if send_feedback:
                await feedback_slots.acquire()
                task = asyncio.create_task(feedback(client, answer["prediction_id"], item.outcome))
                posting.add(task)
                task.add_done_callback(posting.discard)

    started = time.perf_counter()
    async with httpx.AsyncClient(limits=limits, timeout=httpx.Timeout(30.0)) as client:
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
        await asyncio.gather(*list(posting))
    report.seconds = time.perf_counter() - started
    report.sent += len(items)


async def _post_feedback(client: Any, url: str, auth: dict[str, str], prediction_id: str, outcome: Any,
                         report: TrafficReport) -> int:
    """Post one outcome, again after a 503 (waiting its ``Retry-After``) or a transport error; the final status
    (0: no answer). Posted once, an outcome was lost whenever Pub/Sub blinked, and the rollout saw fewer labels."""
    import httpx

    status = 0
    for attempt in range(1, FEEDBACK_TRIES + 1):
        wait = 0.5 * attempt
        try:
            fb = await client.post(url, headers=auth, json={"prediction_id": prediction_id, "outcome": outcome})
            status = fb.status_code
            if status != 503:
                return status
            with contextlib.suppress(ValueError):
                wait = float(fb.headers.get("retry-after", wait))
        except httpx.HTTPError as exc:
            status = 0
            report.error(f"feedback (try {attempt}): {type(exc).__name__}: {exc}")
        if attempt < FEEDBACK_TRIES:
            await asyncio.sleep(min(max(wait, 0.0), FEEDBACK_WAIT_CAP_S))
    return status


def replay(settings: Settings, items: Sequence[Replayed], *, token: str, base_url: str | None = None,
           concurrency: int = 8, users: int = 2000, send_feedback: bool = True, keys: Sequence[str] | None = None,
           report: TrafficReport | None = None) -> TrafficReport:
    """Send ``items`` as predictions through the load balancer (``concurrency`` at a time), each with a user
    key out of ``users`` (or taken in turn from ``keys``), then post each answered prediction's outcome as
    feedback; returns the report (``report``, when given, is added to)."""
    report = report if report is not None else TrafficReport()
    seconds = report.seconds
    asyncio.run(_replay(settings, items, base_url=base_url or lb_url(settings), token=token, concurrency=concurrency,
                        users=users, send_feedback=send_feedback, report=report, keys=keys))
    report.seconds += seconds
    return report
