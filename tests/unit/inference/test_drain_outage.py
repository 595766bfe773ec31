"""A drain of the requests' dead letters that meets a store outage part-way hands back what it did not record."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pyarrow as pa
import pytest

from tenfold.inference.requests import ScoringRequest, request_id
from tenfold.storage import FileObjects


class _Subscriber:
    """One batch of three dead letters of run-1 (ack ids ack-0..ack-2), then none; records acks and give-backs."""

    def __init__(self, requests: list[ScoringRequest], *, give_back_fails: bool = False) -> None:
        self.batches = [[SimpleNamespace(ack_id=f"ack-{n}", message=SimpleNamespace(
            attributes=r.attributes(), data=r.encode(), message_id=f"m-{n}")) for n, r in enumerate(requests)]]
        self.acked: list[str] = []
        self.given_back: list[tuple[list[str], int]] = []
        self.give_back_fails = give_back_fails

    def pull(self, request: dict[str, object], **_: object) -> SimpleNamespace:
        return SimpleNamespace(received_messages=self.batches.pop(0) if self.batches else [])

    def acknowledge(self, request: dict[str, list[str]], **_: object) -> None:
        self.acked += request["ack_ids"]

    def modify_ack_deadline(self, request: dict[str, object], **_: object) -> None:
        from google.api_core.exceptions import ServiceUnavailable

        if self.give_back_fails:
            raise ServiceUnavailable("Pub/Sub is away too")
        self.given_back.append((list(request["ack_ids"]), request["ack_deadline_seconds"]))  # type: ignore[call-overload]


@pytest.mark.parametrize("give_back_fails", [False, True])
def test_a_drain_stopped_by_a_store_outage_hands_back_the_dead_letters_it_did_not_record(
        tmp_path: Path, give_back_fails: bool) -> None:
    """They were left leased: invisible for the dead-letter subscription's ack deadline (600 s in the cloud), so the
    wait's next drains, and a retried publish's drain before it resends, could not see them. A give-back that fails
    too is only logged: the store's outage is what the drain raises."""
    from google.api_core.exceptions import ServiceUnavailable

    from tenfold.config import build_settings
    from tenfold.inference.runs import drain_dead_letters

    requests = [ScoringRequest(run="run-1", request_id=request_id("run-1", "2013-07", n), partition="2013-07",
                               model_version="v", rows=pa.table({"k": [n]})) for n in range(3)]
    objects = FileObjects(tmp_path)
    real_put = objects.put

    def outage_on_the_second(name: str, data: bytes) -> None:
        if requests[1].request_id in name:
            raise ServiceUnavailable("the store is away")
        real_put(name, data)

    objects.put = outage_on_the_second  # type: ignore[method-assign]
    subscriber = _Subscriber(requests, give_back_fails=give_back_fails)
    with pytest.raises(ServiceUnavailable, match="the store is away"):
        drain_dead_letters(build_settings("local"), subscriber=subscriber, objects=objects)
    assert subscriber.acked == ["ack-0"]  # recorded before the outage
    assert subscriber.given_back == ([] if give_back_fails else [(["ack-1", "ack-2"], 0)])
