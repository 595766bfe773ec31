"""Adaptive micro-batching: concurrent requests share one model call, off the event loop.

Each request submits its rows (one flight, or a batch) and awaits its own results. One consumer task
forms batches and runs them, one at a time, on a single worker thread (the forward pass never blocks
the event loop, and one thread keeps torch's own threading predictable). The rule:

1. Wait for the first request; then take every request already queued, whole, while the batch stays
   within ``max_batch_size`` rows (a request larger than that runs alone; a request that would overflow
   the batch starts the next one).
2. If the batch is still below ``max_batch_size`` *and* other requests are on their way (accepted by the
   server, still being read or validated), wait for them, at most ``max_batch_wait_ms`` after the batch
   started, and stop waiting as soon as none are on their way (a request that leaves without
   submitting, refused or answered from the cache, wakes the batch at once). Before closing a batch that nothing is
   on its way to, give the event loop ``SETTLE_TURNS`` turns (within the same bound): requests already
   in the sockets' buffers, and the answers of the last batch (whose clients send the next requests),
   are handled in those turns and join this batch instead of each costing a model call of its own
   (closed loop, 32 connections: +25% throughput, a fifth less CPU per request; ``bench/RESULTS.md``).
   A lone request on an idle replica therefore waits only those few turns (microseconds), and under
   load batches form by themselves: requests that arrive while the model is busy are all taken by the
   next call.
3. A model call that fails for a batch of several requests is retried request by request, so one bad
   request fails alone and never takes the others down with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor, Future
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")

# Event-loop turns a batch that nothing is on its way to gives the loop before it closes (rule 2).
SETTLE_TURNS = 4


class BatcherStopped(RuntimeError):
    """The batcher is not running (not started, or stopped for the server's shutdown): no model call was made."""


@dataclass
class _Pending(Generic[T, R]):
    items: list[T]
    future: asyncio.Future[list[R]] = field(repr=False)


class MicroBatcher(Generic[T, R]):
    """Coalesces concurrent :meth:`submit` calls into calls of ``run(items) -> results`` (same length, same order).

    ``run`` executes on ``executor`` (give it one worker thread). ``on_batch(rows)`` is called for every
    model call and ``on_depth(rows)`` whenever the number of queued rows changes (metrics).
    """

    def __init__(
        self,
        run: Callable[[list[T]], Sequence[R]],
        *,
        executor: Executor,
        max_batch_size: int,
        max_wait_s: float,
        on_batch: Callable[[int], None] | None = None,
        on_depth: Callable[[int], None] | None = None,
        is_model_failure: Callable[[BaseException], bool] = lambda exc: True,
    ) -> None:
        self._run = run
        # Model calls that failed in a row, for a watchdog (readiness); ``is_model_failure`` tells the model's own
        # failures from a request's (one bad request alone must not count against the replica).
        self.failed_in_a_row = 0
        self._is_model_failure = is_model_failure
        self._executor = executor
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_s
        self._on_batch = on_batch or (lambda rows: None)
        self._on_depth = on_depth or (lambda rows: None)
        # None in the queue is a wake-up: the last request on its way left without submitting (see arriving).
        self._queue: asyncio.Queue[_Pending[T, R] | None] = asyncio.Queue()
        self._waiting_for_arrivals = False
        self._carry: deque[_Pending[T, R]] = deque()
        self._queued_rows = 0
        self._arriving = 0
        self._task: asyncio.Task[None] | None = None
        self._call_started: float | None = None  # time.monotonic() when the running model call began

    def call_running_s(self) -> float:
        """How long the model call now running has taken (0 when none runs): a watchdog's reading."""
        started = self._call_started
        return 0.0 if started is None else time.monotonic() - started

    # --- the request side ---------------------------------------------------------------------------
    @contextlib.contextmanager
    def arriving(self) -> Iterator[None]:
        """Mark a request that will submit soon (while it is read and validated): a forming batch waits for it."""
        self._arriving += 1
        try:
            yield
        finally:
            self._arriving -= 1
            if self._arriving == 0 and self._waiting_for_arrivals:
                # A forming batch waits for requests on their way: stop waiting now if this one does not submit
                # (refused, or served from the cache). One that does submits before the batcher runs again.
                self._waiting_for_arrivals = False
                self._queue.put_nowait(None)

    async def submit(self, items: list[T]) -> list[R]:
        """The results for ``items``, computed in whatever batch they join."""
        if not items:
            return []
        if self._task is None or self._task.done():
            raise BatcherStopped("the micro-batcher is not running (start() it in the app's lifespan)")
        future: asyncio.Future[list[R]] = asyncio.get_running_loop().create_future()
        self._queued_rows += len(items)
        self._on_depth(self._queued_rows)
        self._queue.put_nowait(_Pending(items, future))
        return await future

    # --- the consumer -------------------------------------------------------------------------------
    def start(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._loop(), name="tenfold-micro-batcher")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for pending in [*self._carry, *(p for p in _drain(self._queue) if p is not None)]:
            if not pending.future.done():
                pending.future.set_exception(BatcherStopped("the server is shutting down"))
        self._carry.clear()

    async def _next(self, timeout: float | None) -> _Pending[T, R] | None:
        """The next request still waited for (a client that timed out or went away cancelled its future: it is
        dropped here instead of being run through the model, e.g. the retries piled up behind a hung call).
        ``timeout`` bounds the whole call, however many dropped requests it skips on the way."""
        loop = asyncio.get_running_loop()
        until = None if timeout is None else loop.time() + timeout
        while True:
            pending = await self._next_queued(None if until is None else max(0.0, until - loop.time()))
            if pending is None or not pending.future.done():
                return pending
            self._queued_rows -= len(pending.items)
            self._on_depth(self._queued_rows)

    async def _next_queued(self, timeout: float | None) -> _Pending[T, R] | None:
        if self._carry:
            return self._carry.popleft()
        if timeout is None:
            while (first := await self._queue.get()) is None:
                pass
            return first
        if timeout <= 0:
            try:
                return self._queue.get_nowait()
            except asyncio.QueueEmpty:
                return None
        try:
            return await asyncio.wait_for(self._queue.get(), timeout)
        except TimeoutError:
            return None

    async def _form_batch(self) -> list[_Pending[T, R]]:
        first = await self._next(None)
        assert first is not None
        batch: list[_Pending[T, R]] = [first]
        try:
            return await self._grow(batch)
        except asyncio.CancelledError:  # stop() while the batch waited: back in line, so stop() fails them
            self._carry.extendleft(reversed(batch))
            raise

    async def _grow(self, batch: list[_Pending[T, R]]) -> list[_Pending[T, R]]:
        """Add to ``batch`` (its first request taken) what rule 2 lets join it."""
        rows = len(batch[0].items)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.max_wait_s
        turns = 0
        while rows < self.max_batch_size:
            queued = bool(self._carry) or not self._queue.empty()
            if not queued and self._arriving == 0 and turns < SETTLE_TURNS and loop.time() < deadline:
                turns += 1
                await asyncio.sleep(0)  # one turn of the loop: read what the sockets hold, send what is answered
                continue
            if not queued and (self._arriving == 0 or loop.time() >= deadline):
                break
            self._waiting_for_arrivals = not queued
            try:
                nxt = await self._next(0 if queued else deadline - loop.time())
            finally:
                self._waiting_for_arrivals = False
            if nxt is None:
                continue  # the deadline, or nothing on its way any more: the loop condition ends the batch
            if rows + len(nxt.items) > self.max_batch_size:
                self._carry.appendleft(nxt)  # first in the next batch
                break
            batch.append(nxt)
            rows += len(nxt.items)
        return batch

    async def _loop(self) -> None:
        while True:
            batch = await self._form_batch()
            rows = sum(len(p.items) for p in batch)
            self._queued_rows -= rows
            self._on_depth(self._queued_rows)
            try:
                await self._execute(batch)
            except asyncio.CancelledError:
                for p in batch:
                    if not p.future.done():
                        p.future.set_exception(BatcherStopped("the server is shutting down"))
                raise
            except Exception as exc:  # never let one batch stop the consumer: fail it, go on
                log.exception("micro-batch of %d rows failed", rows)
                for p in batch:
                    if not p.future.done():
                        p.future.set_exception(exc)

    async def _call(self, items: list[T]) -> Sequence[R]:
        self._on_batch(len(items))
        self._call_started = time.monotonic()
        try:
            results = await asyncio.get_running_loop().run_in_executor(self._executor, self._run, items)
        finally:
            self._call_started = None
        if len(results) != len(items):
            raise RuntimeError(f"the model returned {len(results)} results for {len(items)} rows")
        return results

    async def _execute(self, batch: list[_Pending[T, R]]) -> None:
        """One batch: its model call, or on failure each request alone. ``failed_in_a_row`` counts the batch once:
        one failure when no call of it succeeded (its requests' own refusals aside), zero again when one did."""
        items = [item for p in batch for item in p.items]
        try:
            results = await self._call(items)
        except Exception as exc:
            if len(batch) == 1:
                if not batch[0].future.done():
                    batch[0].future.set_exception(exc)
                self._count([exc], succeeded=False)
                return
            failures: list[BaseException] = [exc]  # the shared call's own failure counts, whoever is left to retry
            succeeded = False
            for p in batch:  # isolate the request that failed: each alone
                if p.future.done():  # its client gave up (timed out) during the shared call: scored for nobody
                    continue
                try:
                    mine = await self._call(p.items)
                except Exception as own:
                    failures.append(own)
                    if not p.future.done():
                        p.future.set_exception(own)
                else:
                    succeeded = True
                    if not p.future.done():
                        p.future.set_result(list(mine))
            # A success only when a call of it returned: comparing the failures with the batch's size took the requests
            # of clients who gave up for successes, and a model failing slowly never took its replica out of rotation.
            self._count(failures, succeeded=succeeded)
            return
        self.failed_in_a_row = 0
        start = 0
        for p in batch:
            end = start + len(p.items)
            if not p.future.done():  # a client that went away cancelled its future
                p.future.set_result(list(results[start:end]))
            start = end

    def _count(self, failures: list[BaseException], *, succeeded: bool) -> None:
        if succeeded:
            self.failed_in_a_row = 0
        elif any(self._is_model_failure(exc) for exc in failures):
            self.failed_in_a_row += 1


class DaemonThreadExecutor(Executor):
    """One worker thread, a daemon: the model's calls run on it. A ``ThreadPoolExecutor``'s threads are joined at
    interpreter exit whatever ``shutdown(wait=False)`` was told, so a model call that hung for good (a stuck kernel)
    kept a drained replica from ever exiting, and a second SIGTERM did nothing: only SIGKILL ended it."""

    def __init__(self, name: str) -> None:
        self._calls: queue.SimpleQueue[tuple[Future[Any], Callable[..., Any], tuple[Any, ...]] | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._closed = False
        self._thread = threading.Thread(target=self._work, name=name, daemon=True)
        self._thread.start()

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        with self._lock:
            if self._closed:
                raise RuntimeError("cannot schedule new calls after shutdown")
            future: Future[Any] = Future()
            self._calls.put((future, functools.partial(fn, **kwargs) if kwargs else fn, args))
            return future

    def _work(self) -> None:
        while (call := self._calls.get()) is not None:
            future, fn, args = call
            if not future.set_running_or_notify_cancel():
                continue
            try:
                result = fn(*args)
            except BaseException as exc:  # handed to the caller, whatever it is
                future.set_exception(exc)
            else:
                future.set_result(result)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._lock:
            self._closed = True
        if cancel_futures:
            with contextlib.suppress(queue.Empty):
                while (call := self._calls.get_nowait()) is not None:
                    call[0].cancel()
        self._calls.put(None)
        if wait:
            self._thread.join()


def _drain(queue: asyncio.Queue[Any]) -> list[Any]:
    out = []
    while True:
        try:
            out.append(queue.get_nowait())
        except asyncio.QueueEmpty:
            return out
