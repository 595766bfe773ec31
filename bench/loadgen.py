"""The serving benchmark's HTTP load generator: closed-loop and open-loop load over keep-alive connections.

Run by ``bench/serving.py`` as a process of its own (so its CPU is measured apart from the server's and
it never shares an event loop with the code under test)::

    .venv/bin/python bench/loadgen.py --spec spec.json --bodies bodies.jsonl --out result.json

``spec.json`` is a :class:`Spec` (URL, headers, mode, concurrency or rate, durations); ``bodies.jsonl``
holds one request body per line, sent in order from ``spec.offset`` and wrapping around; the result is a
:class:`PhaseResult` as JSON.

Two modes:

* **closed loop** (``mode="closed"``): ``concurrency`` connections, each sending its next request as soon
  as the previous answer arrives. Reports throughput and the latency of each request from its send. A request
  sent before the window's end whose outcome comes after it, and is not a 2xx answer (a hung connection's
  timeout, a reset), is counted in ``unanswered``: outside the window's figures, yet never silent.
* **open loop** (``mode="open"``): request *i* is due at ``start + i / rate`` whatever happened before;
  its latency is measured from that **scheduled** time, so a stall of the server counts against every
  request that should have been sent during it (no coordinated omission). A request that finds no
  idle connection opens one (up to ``max_connections``), else waits for one, and the wait counts. A request
  that fails counts as an error and, in the percentiles, as +inf (the slowest): once more than 1% fail, p99 is inf.

The client is a minimal HTTP/1.1 keep-alive client on asyncio protocols, with httptools (the C parser
uvicorn uses) parsing responses, on uvloop. Measured when it was written, on the 2-core build VM against
a no-op FastAPI endpoint at 32 keep-alive connections (5 s, same machine): about 30 µs of client CPU per
request, against ~90 µs for aiohttp 3.14's ClientSession and ~3,000 µs for httpx 0.28's AsyncClient,
both with a pool of 32. On two cores the generator's CPU is taken from the server under test, so the
cheapest client is the fairest one; every phase reports the generator's own CPU share.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import resource
import sys
import time
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import TypedDict
from urllib.parse import urlsplit

import httptools

__all__ = ["PhaseResult", "Spec", "latency_summary", "main", "open_loop_latencies", "percentile", "run_phase"]


@dataclass(frozen=True)
class Spec:
    """One load phase against one URL."""

    url: str
    mode: str  # "closed" or "open"
    duration_s: float
    warmup_s: float = 0.0
    concurrency: int = 32  # closed loop: connections, each with one request in flight
    rate: float = 0.0  # open loop: requests per second
    max_connections: int = 512  # open loop: the pool's bound
    headers: dict[str, str] = field(default_factory=dict)
    offset: int = 0  # the first body sent; bodies wrap around after the last
    timeout_s: float = 30.0


@dataclass
class PhaseResult:
    """What one phase measured; latencies in milliseconds, CPU in seconds of this process."""

    mode: str
    url: str
    duration_s: float  # the measured window (warm-up excluded)
    sent: int  # requests completed in the measured window (or scheduled, open loop)
    ok: int
    errors: int
    statuses: dict[str, int]
    throughput: float  # completed 2xx per second of the measured window
    p50_ms: float
    p90_ms: float
    p99_ms: float
    p999_ms: float
    max_ms: float
    mean_ms: float
    cpu_s: float  # client CPU (user + system) during the measured window
    cpu_share: float  # cpu_s / duration_s: cores the generator used
    concurrency: int = 0
    rate: float = 0.0
    connections: int = 0  # connections the phase opened
    send_lag_p99_ms: float = 0.0  # open loop: how late the generator itself sent (its own health)
    bodies_used: int = 0  # bodies consumed, warm-up included (the next phase's offset advances by this)
    first_error: str = ""
    # 2xx answers over the whole run, warm-up and the requests in flight at the window's end included: what the
    # server's CPU over the whole load-generator process (bench/serving.py measures it so) is divided by.
    answered: int = 0
    # Closed loop: requests sent before the window's end that got no 2xx answer, their failure (a timeout, a reset)
    # coming after the window closed (those inside it are errors). Without it a connection the server never answered
    # timed out after the run and showed nowhere. > 0 makes the phase suspect.
    unanswered: int = 0


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of ascending values: the smallest value with at least q% of them at or below it."""
    if not sorted_values:
        return float("nan")
    # Exact arithmetic: 99.9 / 100 * 1000 is 999.0000000000001 in floats, whose ceiling took the maximum for p99.9.
    rank = max(1, math.ceil(Fraction(str(q)) * len(sorted_values) / 100))
    return float(sorted_values[min(rank, len(sorted_values)) - 1])


class Latency(TypedDict):
    p50_ms: float
    p90_ms: float
    p99_ms: float
    p999_ms: float
    max_ms: float
    mean_ms: float


def latency_summary(latencies_ms: Sequence[float]) -> Latency:
    """p50/p90/p99/p99.9/max/mean of latencies in ms (nearest rank); NaN when there are none."""
    s = sorted(latencies_ms)
    mean = sum(s) / len(s) if s else float("nan")
    return Latency(p50_ms=percentile(s, 50), p90_ms=percentile(s, 90), p99_ms=percentile(s, 99),
                   p999_ms=percentile(s, 99.9), max_ms=float(s[-1]) if s else float("nan"), mean_ms=mean)


def open_loop_latencies(start: float, rate: float, done: Sequence[float]) -> list[float]:
    """Latencies (ms) of an open-loop run: request i was due at ``start + i / rate``, answered at ``done[i]``.

    Measuring from the due time rather than from the moment the request was actually written is the
    whole point: a client that waited for a slow server before sending would otherwise hide the wait.
    """
    return [(t - (start + i / rate)) * 1000.0 for i, t in enumerate(done)]


class _Conn(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection with at most one request in flight."""

    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.waiter: asyncio.Future[tuple[int, bytes]] | None = None
        self.body: list[bytes] = []
        self.closed = False
        self.keep_alive = True

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(ConnectionError(f"bad HTTP response: {exc}"))

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        self.keep_alive = self.parser.should_keep_alive()
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result((self.parser.get_status_code(), b"".join(self.body)))
        self.body = []

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._fail(ConnectionError(f"connection closed by the server{f': {exc}' if exc else ''}"))

    def _fail(self, exc: Exception) -> None:
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)
        if self.transport is not None:
            self.transport.close()
        self.closed = True

    def send(self, data: bytes) -> asyncio.Future[tuple[int, bytes]]:
        assert self.transport is not None and self.waiter is None
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(data)
        return self.waiter

    @property
    def usable(self) -> bool:
        return not self.closed and self.keep_alive


class _Client:
    """Pre-encoded requests and a pool of connections to one host."""

    def __init__(self, spec: Spec, bodies: Sequence[bytes]) -> None:
        url = urlsplit(spec.url)
        self.host, self.port = url.hostname or "127.0.0.1", url.port or 80
        path = (url.path or "/") + (f"?{url.query}" if url.query else "")
        head = f"POST {path} HTTP/1.1\r\nHost: {url.netloc}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in spec.headers.items())
        if not any(k.lower() == "content-type" for k in spec.headers):
            head += "Content-Type: application/json\r\n"
        # Encoded once: the per-request cost of the generator is a write and a parse, nothing else.
        self.requests = [(head + f"Content-Length: {len(b)}\r\n\r\n").encode() + b for b in bodies]
        self.spec = spec
        self.idle: deque[_Conn] = deque()
        self.opened = 0
        self.live = 0
        self.freed: asyncio.Event | None = None

    def request(self, i: int) -> bytes:
        return self.requests[(self.spec.offset + i) % len(self.requests)]

    async def connect(self) -> _Conn:
        loop = asyncio.get_running_loop()
        _, conn = await loop.create_connection(_Conn, self.host, self.port)
        self.opened += 1
        return conn

    async def exchange(self, conn: _Conn, data: bytes) -> tuple[int, bytes]:
        return await asyncio.wait_for(conn.send(data), self.spec.timeout_s)

    async def acquire(self) -> _Conn:
        while True:
            while self.idle:
                conn = self.idle.pop()
                if conn.usable:
                    return conn
                self.live -= 1
            if self.live < self.spec.max_connections:
                self.live += 1
                try:
                    return await self.connect()
                except BaseException:
                    self.live -= 1
                    raise
            if self.freed is None:
                self.freed = asyncio.Event()
            self.freed.clear()
            await self.freed.wait()

    def release(self, conn: _Conn) -> None:
        if conn.usable:
            self.idle.append(conn)
        else:
            conn._fail(ConnectionError("discarded"))
            self.live -= 1
        if self.freed is not None:
            self.freed.set()


class _Tally:
    def __init__(self) -> None:
        self.statuses: Counter[str] = Counter()
        self.first_error = ""

    def record(self, status: int | None, body: bytes | None = None, error: BaseException | None = None) -> bool:
        if error is not None:
            key = type(error).__name__
            if not self.first_error:
                self.first_error = f"{key}: {error}"
        else:
            key = str(status)
            if status is not None and not 200 <= status < 300 and not self.first_error:
                self.first_error = f"HTTP {status}: {(body or b'')[:300].decode(errors='replace')}"
        self.statuses[key] += 1
        return error is None and status is not None and 200 <= status < 300


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


async def _closed(spec: Spec, client: _Client) -> PhaseResult:
    now = time.perf_counter  # uvloop's loop.time() ticks in whole milliseconds
    t0 = now()
    measure_from, end = t0 + spec.warmup_s, t0 + spec.warmup_s + spec.duration_s
    latencies: list[float] = []
    tally = _Tally()
    counter = iter(range(sys.maxsize))
    ok = answered = unanswered = 0
    late_error = ""
    cpu_mark: list[float] = []

    async def worker() -> None:
        nonlocal ok, answered, unanswered, late_error
        conn = await client.connect()
        while True:
            sent = now()
            if sent >= end:
                break
            data = client.request(next(counter))
            status: int | None = None
            body: bytes | None = None
            err: BaseException | None = None
            try:
                if not conn.usable:
                    conn = await client.connect()
                status, body = await client.exchange(conn, data)
            except (TimeoutError, OSError) as exc:
                err = exc
                conn._fail(ConnectionError("given up"))  # closes its socket: a hung one is not left open
            done = now()
            answered_ok = err is None and status is not None and 200 <= status < 300
            answered += answered_ok
            # Completions inside the window count (whenever they were sent): the throughput of the
            # window, with no edge effect of the warm-up or of the requests still in flight at its end.
            if measure_from <= done <= end:
                good = tally.record(status, body, err)
                ok += good
                if good:
                    latencies.append((done - sent) * 1000.0)
            elif done > end and err is not None:
                # Sent before the end (the loop sends nothing after it), failed after it: most often a connection
                # the server never answered, whose timeout fired after the window (send + timeout_s).
                # (An answer after the end, 2xx or not, is no hang: left out of the window, as a late success is.)
                unanswered += 1
                late_error = late_error or f"unanswered at the window's end, then {type(err).__name__}: {err}"
            if err is not None:
                await asyncio.sleep(0.01)  # a refused connection would otherwise spin
        if conn.transport is not None:
            conn.transport.close()

    async def mark_cpu() -> None:
        await asyncio.sleep(max(0.0, measure_from - now()))
        cpu_mark.append(_cpu())

    marker = asyncio.ensure_future(mark_cpu())
    await asyncio.gather(*(worker() for _ in range(spec.concurrency)))
    await marker
    cpu = _cpu() - cpu_mark[0]
    window = spec.duration_s
    return PhaseResult(
        mode="closed", url=spec.url, duration_s=window, sent=sum(tally.statuses.values()), ok=ok,
        errors=sum(tally.statuses.values()) - ok, statuses=dict(tally.statuses), throughput=ok / window,
        **latency_summary(latencies), cpu_s=cpu, cpu_share=cpu / window, concurrency=spec.concurrency,
        connections=client.opened, bodies_used=next(counter), first_error=tally.first_error or late_error,
        answered=answered, unanswered=unanswered,
    )


async def _open(spec: Spec, client: _Client) -> PhaseResult:
    now = time.perf_counter  # uvloop's loop.time() ticks in whole milliseconds
    n = max(1, int(spec.rate * spec.duration_s))
    start = now() + 0.05
    done = [math.inf] * n  # a request never answered keeps +inf: it counts as the slowest
    lag: list[float] = []
    tally = _Tally()
    ok = 0

    async def one(i: int) -> None:
        nonlocal ok
        status: int | None = None
        body: bytes | None = None
        err: BaseException | None = None
        conn: _Conn | None = None
        # How late the generator itself started the request: its own health, not the server's.
        lag.append(now() - (start + i / spec.rate))
        try:
            conn = await client.acquire()
            status, body = await client.exchange(conn, client.request(i))
        except (TimeoutError, OSError) as exc:
            err = exc
            if conn is not None:
                conn.closed = True
        finally:
            if conn is not None:
                client.release(conn)
        finished = now()
        if tally.record(status, body, err):
            ok += 1
            done[i] = finished

    cpu0 = _cpu()
    tasks = []
    for i in range(n):
        due = start + i / spec.rate
        delay = due - now()
        if delay > 0.0005:
            await asyncio.sleep(delay)
        tasks.append(asyncio.ensure_future(one(i)))
    await asyncio.gather(*tasks)
    cpu = _cpu() - cpu0
    for conn in client.idle:
        if conn.transport is not None:
            conn.transport.close()
    # A failed request is an error and, in the percentiles, +inf (the slowest): excluded, a server failing its
    # slowest requests would look faster the more it failed.
    latencies = open_loop_latencies(start, spec.rate, done)
    window = n / spec.rate
    lag.sort()
    return PhaseResult(
        mode="open", url=spec.url, duration_s=window, sent=n, ok=ok, errors=n - ok, statuses=dict(tally.statuses),
        throughput=ok / window, **latency_summary(latencies), cpu_s=cpu, cpu_share=cpu / window, rate=spec.rate,
        connections=client.opened, send_lag_p99_ms=percentile(lag, 99) * 1000.0, bodies_used=n,
        first_error=tally.first_error, answered=ok,
    )


async def run_phase(spec: Spec, bodies: Sequence[bytes]) -> PhaseResult:
    """Run one phase in the current event loop (the bench runs it in a process of its own: see main)."""
    if not bodies:
        raise ValueError("no request bodies to send")
    if spec.mode not in ("closed", "open"):
        raise ValueError(f"mode must be 'closed' or 'open', got {spec.mode!r}")
    if spec.mode == "open" and spec.rate <= 0:
        raise ValueError("an open-loop phase needs a rate > 0 (requests per second)")
    client = _Client(spec, bodies)
    return await (_closed(spec, client) if spec.mode == "closed" else _open(spec, client))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--spec", type=Path, required=True, help="a JSON Spec")
    parser.add_argument("--bodies", type=Path, required=True, help="request bodies, one JSON document per line")
    parser.add_argument("--out", type=Path, required=True, help="where the PhaseResult JSON goes")
    args = parser.parse_args(argv)
    spec = Spec(**json.loads(args.spec.read_text()))
    bodies = [line.encode() for line in args.bodies.read_text().splitlines() if line.strip()]
    import uvloop  # comes with uvicorn[standard]

    result = uvloop.run(run_phase(spec, bodies))
    args.out.write_text(json.dumps(asdict(result)))
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
