"""A drain of the requests' dead letters that meets a store outage part-way hands back what it did not record.

Everything is real: the dead letters wait on the session's Pub/Sub emulator (a topology of the test's own), the store
is on a small tmpfs that is full (ENOSPC), and Pub/Sub going away is a relay that drops the client's connection."""

from __future__ import annotations

import errno

import pyarrow as pa
import pytest

from tenfold.config import Settings
from tenfold.inference.requests import ScoringRequest, request_id
from tenfold.inference.store import RunStore
from tenfold.storage import FileObjects
from tests.unit.inference.test_requests_and_store import _dead_letters, _waiting


def _give_back_of(subscription: str) -> bytes:
    """The bytes that tell a ModifyAckDeadline request for ``subscription`` (a path) apart, for a relay to the Pub/Sub
    emulator to cut itself on (Pub/Sub gone from this machine's view just when the drain hands its dead letters back):
    a serialized ModifyAckDeadlineRequest is the subscription (field 1) followed by the ack ids (field 4, tag 0x22);
    an AcknowledgeRequest's ack ids are field 2 (tag 0x12) and a PullRequest has none."""
    path = subscription.encode()
    assert len(path) < 128  # its length is one byte of varint
    return b"\x0a" + bytes([len(path)]) + path + b"\x22"


@pytest.mark.parametrize("give_back_fails", [False, True])
def test_a_drain_stopped_by_a_store_outage_hands_back_the_dead_letters_it_did_not_record(
        own_topology: Settings, small_disk, caplog: pytest.LogCaptureFixture, give_back_fails: bool,
        tcp_relay) -> None:
    """They were left leased: invisible for the dead-letter subscription's ack deadline (120 s for the requests'), so
    the wait's next drains, and a retried publish's drain before it resends, could not see them. A give-back that fails
    too (Pub/Sub away as well) is only logged: the store's outage is what the drain raises, and the dead letters come
    back once their lease ends. With room for one record the first dead letter is recorded and acknowledged before
    the disk is full; where the give-back fails the disk is full from the start, as an acknowledgement of a record made
    would fail too (and raise Pub/Sub's error instead)."""
    from tenfold.inference.runs import drain_dead_letters
    from tenfold.messaging.clients import subscriber_client, subscription_path

    settings = own_topology
    requests = [ScoringRequest(run="run-1", request_id=request_id("run-1", "2013-07", n), partition="2013-07",
                               model_version="v", rows=pa.table({"k": [n]})) for n in range(3)]
    ids = {r.request_id: _dead_letters(settings, r.encode(), r.attributes())[0] for r in requests}  # message ids
    root = small_disk.path / "work"
    (root / "run-1" / "dead_letters").mkdir(parents=True)
    store = RunStore(FileObjects(root), "run-1")
    small_disk.fill(leave=0 if give_back_fails else 4096)  # a page: one record of a few hundred bytes

    relay, client = None, None  # the drain's own client, straight to the emulator
    if give_back_fails:  # a client of the relay's, which Pub/Sub goes away from at the give-back
        host, port = (settings.messaging.emulator_host or "").rsplit(":", 1)
        relay = tcp_relay((host, int(port)), cut_on=_give_back_of(subscription_path(
            settings, settings.messaging.subscriptions["requests"].dead_letter_subscription)))
        client = subscriber_client(settings.model_copy(update={"messaging": settings.messaging.model_copy(
            update={"emulator_host": f"127.0.0.1:{relay.port}"})}))
    cut_by_the_give_back = False
    try:
        with pytest.raises(OSError) as raised:
            drain_dead_letters(settings, subscriber=client, objects=store.objects)
    finally:
        if relay is not None and client is not None:
            cut_by_the_give_back = relay.cut_.is_set()  # before the clean-up's own cut
            client.close()
            relay.cut()
    assert raised.value.errno == errno.ENOSPC, raised.value  # the store's outage, whatever Pub/Sub did
    recorded = store.dead_letter_ids()
    left = sorted(mid for rid, mid in ids.items() if rid not in recorded)
    if relay is not None:
        assert cut_by_the_give_back and recorded == [] and "could not hand back 3 dead letter(s)" in caplog.text
        assert _waiting(settings) == []  # still leased: the give-back never reached Pub/Sub
    else:
        assert len(recorded) == 1 and len(left) == 2  # recorded before the outage
        assert _waiting(settings) == left  # handed back: deliverable at once
    assert _waiting(settings, leased=True) == left  # what was recorded was acknowledged, nothing else

    small_disk.free()  # the store is back: the next drain records the rest, in their run
    assert sorted(drain_dead_letters(settings, objects=store.objects)) == sorted(
        ("run-1", rid) for rid, mid in ids.items() if mid in left)
    assert store.dead_letter_ids() == sorted(ids) and _waiting(settings, leased=True) == []
