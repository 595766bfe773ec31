"""A request that kills its worker on every delivery (the out-of-memory killer's SIGKILL) still has a dead letter
that says why: the worker records nothing as it dies, and the dead letter said "(none recorded)". Each redelivery
now notes, before it scores, which delivery starts in which process; the note left behind names the crash.

Real worker processes (the local pool, restarting each killed one) on the session's Pub/Sub emulator, a topology of
the test's own with the shortest lease and retry backoff Pub/Sub allows; the fault hook SIGKILLs the worker at
scoring whenever it handles the one poisoned request (``TENFOLD_INFER_FAULT``'s ``request=``), and another request
of the same run is scored as usual.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import pyarrow as pa

from tenfold.inference.faults import FAULT_ENV, STUB_SCORING_ENV
from tenfold.inference.runs import expected_ids, publish_requests, wait_accounted
from tenfold.inference.store import STARTED, RunStore

ATTEMPTS = 5  # the fewest Pub/Sub allows


def test_a_request_that_kills_its_worker_on_every_delivery_is_dead_lettered_naming_the_crash(
        own_requests: Any, tmp_path: Any) -> None:
    from tenfold.inference.pool import WorkerPool

    # One message in hand a worker, so the request scored is never held by a worker that the other one kills.
    settings = own_requests(ATTEMPTS, max_messages=1, handler_threads=1, rows_per_message=2)
    run = f"oom-{uuid.uuid4().hex[:6]}"
    good, poison = expected_ids(run, "2013-03", 2)
    trail = tmp_path / "kills.jsonl"
    report = publish_requests(settings, run, "2013-03", "v-stub", pa.table({"k": [1, 2, 3, 4]}))
    assert report.requests == 2
    env = {FAULT_ENV: f"at=score,mode=kill,request={poison},trail={trail}", STUB_SCORING_ENV: "1"}
    with WorkerPool(settings, workers=2, env=env) as pool:
        acc = wait_accounted(settings, run, [good, poison], alive=pool.alive)
    assert acc.scored == (good,) and acc.dead_lettered == (poison,)

    kills = [json.loads(line) for line in trail.read_text().splitlines()]
    assert [k["what"] for k in kills] == [poison] * ATTEMPTS  # SIGKILLed on each of its deliveries...
    assert len({k["pid"] for k in kills}) == ATTEMPTS  # ...each in a worker of its own
    dead = RunStore.of(settings, run).dead_letter(poison)
    assert dead is not None and dead["error"] is not None, f"the dead letter has no reason: {dead}"
    assert dead["error"].startswith(f"the worker died during delivery {ATTEMPTS} of this request "
                                    f"(pid {kills[-1]['pid']} on "), dead["error"]
    assert "out of memory?" in dead["error"] and f"tenfold dlq replay --run {run} --request-id {poison}" in dead["error"]
    assert dead["delivery_attempts"] == ATTEMPTS

    # The worker's own record: each redelivery that died before the last one is an attempt with its pid (the first
    # delivery is not noted), and the last one's note is still there.
    error = RunStore.of(settings, run).error(poison)
    assert error is not None
    assert [(a["delivery_attempt"], a["pid"]) for a in error["attempts"]] == [
        (n + 1, k["pid"]) for n, k in enumerate(kills[1:-1], start=1)]
    assert all(a["died"] and "died during delivery" in a["error"] for a in error["attempts"])
    assert (error[STARTED]["delivery_attempt"], error[STARTED]["pid"]) == (ATTEMPTS, kills[-1]["pid"])
    assert RunStore.of(settings, run).error(good) is None  # scored on its first delivery: nothing noted
