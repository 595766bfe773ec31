"""The micro-batcher's rule, with a recording model function: what joins a batch, who waits, who fails."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import pytest

from tenfold.serving.batching import BatcherStopped, MicroBatcher


class Recorder:
    """A model that doubles its inputs, remembers every call, and can be held on a gate."""

    def __init__(self) -> None:
        self.calls: list[list[int]] = []  # the calls that returned
        self.attempts: list[list[int]] = []  # every call, failed ones too
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()  # set once a call is in the model (held there while the gate is closed)

    def __call__(self, items: list[int]) -> list[int]:
        self.entered.set()
        self.gate.wait(10)
        self.attempts.append(list(items))
        if any(i < 0 for i in items):
            raise ValueError(f"negative input in {items}")
        self.calls.append(list(items))
        return [2 * i for i in items]


def _batcher(model: Recorder, *, size: int = 8, wait_s: float = 0.05,
             on_depth: Callable[[int], None] | None = None) -> MicroBatcher[int, int]:
    return MicroBatcher(model, executor=ThreadPoolExecutor(1), max_batch_size=size, max_wait_s=wait_s,
                        on_depth=on_depth)


async def _until(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    """Wait for ``condition`` (a deadline, not a guessed sleep)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"still not true after {timeout_s} s"
        await asyncio.sleep(0.001)


def test_a_lone_request_on_an_idle_batcher_does_not_wait() -> None:
    model = Recorder()

    async def main() -> float:
        b = _batcher(model, wait_s=2.0)
        b.start()
        started = time.perf_counter()
        assert await b.submit([1, 2]) == [2, 4]
        elapsed = time.perf_counter() - started
        await b.stop()
        return elapsed

    assert asyncio.run(main()) < 0.5  # far below the 2 s it could wait
    assert model.calls == [[1, 2]]


def test_requests_on_their_way_are_waited_for_up_to_the_bound() -> None:
    model = Recorder()

    async def main() -> list[list[int]]:
        b = _batcher(model, size=64, wait_s=1.0)
        b.start()

        async def late(value: int, delay: float) -> list[int]:
            with b.arriving():  # being read and validated...
                await asyncio.sleep(delay)
            return await b.submit([value])

        results = await asyncio.gather(b.submit([1]), late(2, 0.05), late(3, 0.1))
        await b.stop()
        return results

    assert asyncio.run(main()) == [[2], [4], [6]]
    assert model.calls == [[1, 2, 3]]  # one call: the first request waited for the two on their way


def test_a_batch_stops_waiting_when_the_request_on_its_way_leaves_without_submitting() -> None:
    model = Recorder()

    async def main() -> float:
        b = _batcher(model, size=64, wait_s=2.0)
        b.start()

        async def refused() -> None:
            with contextlib.suppress(ValueError), b.arriving():  # read, then refused (a 4xx): never submits
                await asyncio.sleep(0.02)
                raise ValueError("invalid request")

        started = time.perf_counter()
        results = await asyncio.gather(b.submit([1]), refused())
        elapsed = time.perf_counter() - started
        assert results[0] == [2]
        await b.stop()
        return elapsed

    assert asyncio.run(main()) < 0.5  # not the 2 s it would wait for a request that is no longer coming
    assert model.calls == [[1]]


def test_requests_the_loop_gets_to_within_a_few_turns_join_the_batch() -> None:
    # Under load, requests whose bytes are already in the sockets (and the next requests of the clients the
    # last batch answered) reach submit() a loop turn or two after the queue ran dry, before anything marks
    # them as on their way: closing the batch at once would give each of them a model call of its own.
    model = Recorder()

    async def main() -> list[list[int]]:
        b = _batcher(model, size=64, wait_s=1.0)
        b.start()

        async def after(value: int, turns: int) -> list[int]:
            for _ in range(turns):
                await asyncio.sleep(0)
            return await b.submit([value])

        results = await asyncio.gather(b.submit([1]), after(2, 1), after(3, 2))
        await b.stop()
        return results

    assert asyncio.run(main()) == [[2], [4], [6]]
    assert model.calls == [[1, 2, 3]]


def test_the_wait_is_bounded_by_max_wait() -> None:
    model = Recorder()

    async def main() -> float:
        b = _batcher(model, size=64, wait_s=0.1)
        b.start()

        async def very_late() -> list[int]:
            with b.arriving():
                await asyncio.sleep(1.0)
            return await b.submit([9])

        task = asyncio.create_task(very_late())
        await asyncio.sleep(0)
        started = time.perf_counter()
        assert await b.submit([1]) == [2]
        elapsed = time.perf_counter() - started
        await task
        await b.stop()
        return elapsed

    elapsed = asyncio.run(main())
    assert 0.08 <= elapsed < 0.6
    assert model.calls == [[1], [9]]


def test_what_queues_while_the_model_is_busy_goes_in_the_next_call_within_the_size() -> None:
    model = Recorder()

    async def main() -> list[list[int]]:
        depths: list[int] = []
        b = _batcher(model, size=4, wait_s=0.0, on_depth=depths.append)
        b.start()
        model.gate.clear()
        first = asyncio.create_task(b.submit([0]))
        await _until(model.entered.is_set)  # the first call is running (held on the gate)
        rest = [asyncio.create_task(b.submit([i, i])) for i in range(1, 4)]  # 6 rows queue up meanwhile
        await _until(lambda: depths[-1] == 6)
        model.gate.set()
        out = [await first, *[await t for t in rest]]
        await b.stop()
        return out

    assert asyncio.run(main()) == [[0], [2, 2], [4, 4], [6, 6]]
    # whole requests only, never more than 4 rows per call: [1,1,2,2] together, [3,3] next
    assert model.calls == [[0], [1, 1, 2, 2], [3, 3]]


def test_requests_given_up_while_the_model_hung_are_not_run_when_it_recovers() -> None:
    """A client that timed out (the server's model_call_timeout_s) cancelled its future: once the hung call
    returns, its rows are dropped, not scored for nobody while live requests wait behind them."""
    model = Recorder()

    async def main() -> list[int]:
        depths: list[int] = []
        b = _batcher(model, size=4, wait_s=0.0, on_depth=depths.append)
        b.start()
        model.gate.clear()
        first = asyncio.create_task(b.submit([0]))
        await _until(model.entered.is_set)  # hung
        for i in (1, 2, 3):  # three clients give up while it hangs
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(b.submit([i]), 0.01)
        live = asyncio.create_task(b.submit([9]))
        await _until(lambda: depths[-1] == 4)
        model.gate.set()
        out = [*(await first), *(await live)]
        await _until(lambda: depths[-1] == 0)
        await b.stop()
        return out

    assert asyncio.run(main()) == [0, 18]
    assert model.calls == [[0], [9]], "the requests given up were run through the model"


def test_requests_given_up_while_a_batch_waits_do_not_stretch_its_wait() -> None:
    """A batch waits at most max_wait_s for requests on their way. Requests whose clients gave up are skipped
    while it waits, and each used to restart the wait: a stream of them held a live request for as long as the
    stream lasted."""
    model = Recorder()

    async def main() -> tuple[float, float]:
        loop = asyncio.get_running_loop()
        b = _batcher(model, size=64, wait_s=0.3)
        b.start()
        with b.arriving():  # a request on its way: the batch of `live` waits for it, up to wait_s
            started = loop.time()
            live = asyncio.create_task(b.submit([1]))
            answered: list[float] = []
            live.add_done_callback(lambda _: answered.append(loop.time() - started))
            for _ in range(20):  # 2 s of clients that submit and give up at once, every 0.1 s
                await asyncio.sleep(0.1)
                gone = asyncio.create_task(b.submit([0]))
                await asyncio.sleep(0)
                gone.cancel()
            stream_s = loop.time() - started
        await live
        await b.stop()
        return answered[0], stream_s

    waited, stream_s = asyncio.run(main())
    assert stream_s >= 2.0
    assert waited < 1.2, f"the live request waited {waited:.2f} s behind a 0.3 s batch wait"
    assert model.calls == [[1]]


def test_a_request_larger_than_the_batch_runs_alone() -> None:
    model = Recorder()

    async def main() -> None:
        b = _batcher(model, size=2)
        b.start()
        assert await b.submit([1, 2, 3, 4, 5]) == [2, 4, 6, 8, 10]
        await b.stop()

    asyncio.run(main())
    assert model.calls == [[1, 2, 3, 4, 5]]


def test_one_bad_request_fails_alone() -> None:
    model = Recorder()

    async def main() -> list[object]:
        depths: list[int] = []
        b = _batcher(model, size=64, wait_s=0.0, on_depth=depths.append)
        b.start()
        model.gate.clear()
        blocker = asyncio.create_task(b.submit([100]))
        await _until(model.entered.is_set)  # the blocker is in the model, held on the gate
        tasks = [asyncio.create_task(b.submit(items)) for items in ([1], [-1], [3])]
        await _until(lambda: depths[-1] == 3)  # all three queued behind it
        model.gate.set()
        await blocker
        out = await asyncio.gather(*tasks, return_exceptions=True)
        await b.stop()
        return out

    good, bad, also_good = asyncio.run(main())
    assert good == [2] and also_good == [6]
    assert isinstance(bad, ValueError) and "negative" in str(bad)
    assert model.attempts[-4:] == [[1, -1, 3], [1], [-1], [3]]  # together first, then retried one by one


def test_after_a_failed_shared_call_only_the_requests_still_awaited_are_retried_alone() -> None:
    """The shared call hung past the clients' time limit (they gave up: their futures cancelled), then failed: each
    request was still re-run alone, for nobody, while the live requests queued behind waited on those calls."""

    class HeldTwice(Recorder):
        """Its first two calls (the blocker, then the shared call) each wait on a gate of their own."""

        def __init__(self) -> None:
            super().__init__()
            self.gates = [threading.Event(), threading.Event()]
            self.inside = [threading.Event(), threading.Event()]

        def __call__(self, items: list[int]) -> list[int]:
            n = len(self.attempts)
            if n < 2:
                self.inside[n].set()
                self.gates[n].wait(10)
            return super().__call__(items)

    model = HeldTwice()

    async def main() -> object:
        depths: list[int] = []
        b = _batcher(model, size=64, wait_s=0.0, on_depth=depths.append)
        b.start()
        blocker = asyncio.create_task(b.submit([100]))
        await _until(model.inside[0].is_set)
        tasks = [asyncio.create_task(b.submit(items)) for items in ([1], [-1], [3])]
        await _until(lambda: depths[-1] == 3)
        model.gates[0].set()
        await blocker
        await _until(model.inside[1].is_set)  # the shared call, [1, -1, 3], held
        tasks[0].cancel()
        tasks[2].cancel()
        await asyncio.sleep(0)
        model.gates[1].set()
        out = await asyncio.gather(*tasks, return_exceptions=True)
        failed = b.failed_in_a_row
        await b.stop()
        return (*out, failed)

    gave_up, bad, also_gave_up, failed_in_a_row = asyncio.run(main())  # type: ignore[misc]
    assert isinstance(gave_up, asyncio.CancelledError) and isinstance(also_gave_up, asyncio.CancelledError)
    assert isinstance(bad, ValueError)
    assert model.attempts == [[100], [1, -1, 3], [-1]]
    # No call of that batch returned: it counts toward taking the replica out of rotation (the requests of the
    # clients that gave up were taken for successes, and a model failing slowly was never taken out).
    assert failed_in_a_row == 1


def test_submit_needs_a_running_batcher() -> None:
    async def main() -> None:
        b = _batcher(Recorder())
        with pytest.raises(RuntimeError, match="not running"):
            await b.submit([1])

    asyncio.run(main())


def test_stop_fails_the_requests_of_a_batch_still_forming() -> None:
    model = Recorder()

    async def main() -> None:
        b = _batcher(model, size=64, wait_s=30.0)
        b.start()
        on_its_way = b.arriving()
        on_its_way.__enter__()  # a request being read: the batch waits for it (up to 30 s)
        waiting = asyncio.ensure_future(b.submit([1]))
        await _until(lambda: b._waiting_for_arrivals)
        await b.stop()  # the server's shutdown
        with pytest.raises(BatcherStopped, match="shutting down"):
            await asyncio.wait_for(waiting, 5)  # answered at once, not left waiting for ever
        on_its_way.__exit__(None, None, None)

    asyncio.run(main())
    assert model.calls == []


def test_queue_depth_and_batch_sizes_are_reported() -> None:
    model, depths, sizes = Recorder(), [], []

    async def main() -> None:
        b = MicroBatcher(model, executor=ThreadPoolExecutor(1), max_batch_size=8, max_wait_s=0.0,
                         on_batch=sizes.append, on_depth=depths.append)
        b.start()
        model.gate.clear()
        first = asyncio.create_task(b.submit([1]))
        await _until(model.entered.is_set)  # the first call is in the model, held on the gate
        second = asyncio.create_task(b.submit([2, 3]))
        await _until(lambda: depths[-1] == 2)
        model.gate.set()
        await first
        await second
        await b.stop()

    asyncio.run(main())
    assert sizes == [1, 2]
    assert max(depths) == 2 and depths[-1] == 0


def test_a_failed_batch_counts_once_toward_the_replicas_failures_and_a_success_clears_them() -> None:
    """Every model call counted, the isolation retries of one failed batch included: one batch of 4 bad requests
    took the replica out of rotation at once (5 calls)."""

    async def scenario() -> None:
        model = Recorder()
        batcher = _batcher(model, size=8, wait_s=0.05)
        batcher.start()
        model.gate.clear()
        first = asyncio.ensure_future(batcher.submit([1]))
        await _until(model.entered.is_set)  # the model is busy: the next four queue into one batch
        bad = [asyncio.ensure_future(batcher.submit([-i])) for i in range(1, 5)]
        await asyncio.sleep(0.1)
        model.gate.set()
        assert await first == [2]
        for f in bad:
            with pytest.raises(ValueError):
                await f
        assert batcher.failed_in_a_row == 1, "one failed batch (and its four retries alone) is one failure"
        assert await batcher.submit([3]) == [6] and batcher.failed_in_a_row == 0
        await batcher.stop()

    asyncio.run(scenario())
