"""A request larger than Pub/Sub takes (10 MB) is refused before anything is published, naming the settings to change
(the session's Pub/Sub emulator, through the real publisher client)."""

from __future__ import annotations

import pytest

from tenfold.config import Settings
from tenfold.data.lake import Partition
from tenfold.inference.requests import REPLAY, request_id
from tenfold.inference.runs import RequestTooLargeError, account, publish_requests
from tenfold.inference.store import RunStore, work_objects


def _pull_all(settings: Settings, expect: int = 0) -> list[dict[str, str]]:
    """The attributes of the messages waiting on the requests subscription (acknowledged): pulled until ``expect``
    came, or three times when none is expected."""
    from tenfold.messaging.clients import subscriber_client, subscription_path

    path = subscription_path(settings, settings.messaging.subscriptions["requests"].name)
    client = subscriber_client(settings)
    got: list[dict[str, str]] = []
    try:
        for _ in range(10 if expect else 3):  # the emulator may answer a pull with part of what it holds
            if expect and len(got) >= expect:
                break
            resp = client.pull(request={"subscription": path, "max_messages": 100, "return_immediately": True},
                               timeout=30)
            got += [dict(rm.message.attributes) for rm in resp.received_messages]
            if resp.received_messages:
                client.acknowledge(request={"subscription": path, "ack_ids": [rm.ack_id for rm in resp.received_messages]})
    finally:
        client.close()
    return got


def test_a_request_over_pubsubs_limit_is_refused_before_anything_is_published(own_topology: Settings) -> None:
    """50,000 uncompressed rows a message (both values the settings allow) are an 11.6 MB message: the publisher
    client raised MessageTooLargeError (a ValueError) at publish, which Airflow retried twice and the CLI called "a
    fault in the code", after the run's dead letters had been marked sent again."""
    from airflow.sdk.exceptions import AirflowFailException

    from tenfold.outages import ending
    from tenfold.pipelines.common import run_step
    from tenfold.workloads import get_workload
    from tenfold.workloads.flights.synthetic import synthetic_features

    settings = own_topology.model_copy(update={"inference": own_topology.inference.model_copy(
        update={"rows_per_message": 50_000, "request_compression": "none"})})
    contract = get_workload(settings).contract
    rows = synthetic_features(Partition(2013, 7), 50_000).select(
        list(dict.fromkeys(contract.key_columns + contract.feature_columns)))
    store = RunStore(work_objects(settings), "run-1")
    rid = request_id("run-1", "2013-07", 0)
    store.put_dead_letter(rid, {"request_id": rid, "run": "run-1", "rows": 50_000, "replays": [], "replayed": False})

    with pytest.raises(RequestTooLargeError) as raised:
        publish_requests(settings, "run-1", "2013-07", "v1", rows)
    said = str(raised.value)
    assert "inference.rows_per_message=50,000" in said and "inference.request_compression='none'" in said
    assert "Pub/Sub's limit of 10,000,000 bytes" in said and "nothing was published" in said
    assert "lower inference.rows_per_message to " in said
    size = int(said.split("is a ")[1].split("-byte")[0].replace(",", ""))
    assert size > 10_000_000
    # Not retried: Airflow's task fails at once, and a command ends with the line as it is.
    assert raised.value.retryable is False
    with pytest.raises(AirflowFailException, match=r"inference\.rows_per_message"):
        run_step(publish_requests, settings, "run-1", "2013-07", "v1", rows)
    assert ending(raised.value, "x", settings.local.home, debug_hint="") == f"error: `x`: {said}"
    assert _pull_all(settings) == []
    assert account(store, [rid]).dead_lettered == (rid,)  # its dead letter was not marked sent again

    # The same rows in requests that fit are published: the pull above would have seen them.
    report = publish_requests(settings, "run-1", "2013-07", "v1", rows, rows_per_message=10_000)
    assert report.requests == 5
    pulled = _pull_all(settings, expect=5)
    assert sorted(a["request_id"] for a in pulled) == [request_id("run-1", "2013-07", i) for i in range(5)]
    assert account(store, [rid]).dead_lettered == ()
    # The dead letter's new copy carries its replay number (a late dead letter of the original then tells itself
    # apart); the others are first copies.
    assert {a["request_id"]: a.get(REPLAY) for a in pulled} == {
        request_id("run-1", "2013-07", i): ("1" if i == 0 else None) for i in range(5)}


def test_a_later_request_over_the_limit_is_refused_saying_what_was_published(own_topology: Settings) -> None:
    """The first request is weighed before anything is sent; a later one that is larger (longer strings) is refused
    by the client at publish, and said the same way, naming the requests published before it."""
    import pyarrow as pa

    rows = pa.table({"k": [1, 2, 3, 4], "s": ["a", "b", "x" * 6_000_000, "y" * 6_000_000]})
    settings = own_topology.model_copy(update={"inference": own_topology.inference.model_copy(
        update={"rows_per_message": 2, "request_compression": "none"})})
    with pytest.raises(RequestTooLargeError) as raised:
        publish_requests(settings, "run-2", "2013-07", "v1", rows)
    said = str(raised.value)
    assert said.startswith("a request of 2 rows (inference.rows_per_message=2, inference.request_compression='none')")
    assert "1 request(s) before it were published" in said and raised.value.retryable is False
    assert [a["request_id"] for a in _pull_all(settings, expect=1)] == [request_id("run-2", "2013-07", 0)]


def test_only_a_run_published_before_holds_the_dead_letter_drain_of_its_publish(own_topology: Settings,
                                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """The drain before a publish held its first pull (5 s on an empty subscription, the emulator's) for every run,
    new ones included, which have no dead letters of their own to find: each batch_inference run paid it. Held only
    for a run published before (a retried task, a cleared run), on the lake's file or bucket alike."""
    import pyarrow as pa

    from tenfold.messaging import pulls

    firsts: list[bool] = []
    real = pulls.pull

    def recording(client, path, n, *, first, **kw):  # type: ignore[no-untyped-def]
        firsts.append(first)
        return real(client, path, n, first=first, **kw)

    monkeypatch.setattr(pulls, "pull", recording)
    rows = pa.table({"k": [1, 2]})
    publish_requests(own_topology, "run-new", "2013-07", "v1", rows, rows_per_message=2)
    assert firsts == [False], firsts
    firsts.clear()  # the same run published again (its task retried): dead letters of it may wait, held for
    publish_requests(own_topology, "run-new", "2013-07", "v1", rows, rows_per_message=2)
    assert firsts == [True], firsts


def test_a_run_published_again_sends_only_what_has_no_result(own_topology: Settings) -> None:
    """A retried or cleared publish sent every request again, those scored included: each a duplicate a worker only
    acknowledges, but thousands of them on the subscription (the backlog the cloud's instance group scales on). The
    requests subscription (no worker pulls it) holds a copy of whatever is sent; a last run's single request, sent
    after the republish returned, shows the pulls reached past anything it sent."""
    import pyarrow as pa

    rows = pa.table({"k": [1, 2, 3, 4, 5, 6]})
    ids = [request_id("run-done", "2013-07", i) for i in range(3)]
    assert publish_requests(own_topology, "run-done", "2013-07", "v1", rows, rows_per_message=2).requests == 3
    assert sorted(a["request_id"] for a in _pull_all(own_topology, expect=3)) == ids
    store = RunStore(work_objects(own_topology), "run-done")
    for rid in ids:  # every request scored: the run is complete
        assert store.put_result(rid, b"scored")

    report = publish_requests(own_topology, "run-done", "2013-07", "v1", rows, rows_per_message=2)
    sentinel = request_id("run-sentinel", "2013-07", 0)
    publish_requests(own_topology, "run-sentinel", "2013-07", "v1", rows.slice(0, 1), rows_per_message=2)
    pulled = _pull_all(own_topology, expect=1) + _pull_all(own_topology)
    assert [a["request_id"] for a in pulled] == [sentinel], "a request with its result was sent again"
    assert (report.requests, report.already_scored) == (3, 3)  # the run's requests, all counted, none sent

    # One request dead-lettered and one never scored (the rest scored): only those two are sent again, the dead
    # letter's copy carrying its replay number.
    rows = pa.table({"k": list(range(8))})
    ids = [request_id("run-part", "2013-07", i) for i in range(4)]
    store = RunStore(work_objects(own_topology), "run-part")
    publish_requests(own_topology, "run-part", "2013-07", "v1", rows, rows_per_message=2)
    assert len(_pull_all(own_topology, expect=4)) == 4
    store.put_result(ids[0], b"scored")
    store.put_result(ids[2], b"scored")
    store.put_dead_letter(ids[1], {"request_id": ids[1], "run": "run-part", "replays": [], "replayed": False})
    report = publish_requests(own_topology, "run-part", "2013-07", "v1", rows, rows_per_message=2)
    pulled = _pull_all(own_topology, expect=2)
    assert {a["request_id"]: a.get(REPLAY) for a in pulled} == {ids[1]: "1", ids[3]: None}
    assert (report.requests, report.already_scored) == (4, 2)
    assert account(store, ids).dead_lettered == ()  # the dead letter is in flight again
