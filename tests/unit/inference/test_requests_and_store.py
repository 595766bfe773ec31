"""Request ids, the request codec, the run store's create-if-absent results (file:// and gs:// on the
session's GCS emulator through the real storage client), and the drain of the requests' dead letters (real ones on the
session's Pub/Sub emulator, under a topology of the test's own, pulled and acknowledged by the real client)."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from tenfold.config import Settings
from tenfold.inference.requests import RequestError, ScoringRequest, decode, plan_batches, record_id, request_id
from tenfold.inference.runs import Accounting, InferenceRunError, check_invariant
from tenfold.inference.store import RunStore
from tenfold.storage import FileObjects, GcsObjects


def test_request_ids_are_deterministic_and_distinct() -> None:
    assert request_id("run-a", "2013-07", 3) == request_id("run-a", "2013-07", 3)
    ids = {request_id(r, p, i) for r in ("run-a", "run-b") for p in ("2013-07", "2013-08") for i in range(50)}
    assert len(ids) == 200
    assert all("/" not in i for i in ids)


def test_a_request_id_or_run_key_ending_in_a_newline_names_no_file_or_folder(tmp_path: Path) -> None:
    """re's "$" matches before a final newline: record_id({'request_id': 'r-1\\n'}, ...) was 'r-1\\n', a file name
    with a newline in it, and a run key 'r\\n' a folder of its own."""
    from tenfold.inference.store import UNKNOWN_RUN, message_store

    assert record_id({"request_id": "r-1"}, b"x") == "r-1"
    named = record_id({"request_id": "r-1\n"}, b"x")
    assert named.startswith("message-") and named == record_id({"request_id": "r-1\n"}, b"x")
    objects = FileObjects(tmp_path)
    assert message_store(objects, {"run": "r\n"}).run == UNKNOWN_RUN
    assert message_store(objects, {"run": "r"}).run == "r"
    with pytest.raises(ValueError, match="cannot name a record"):
        RunStore(objects, "r").has_result("r-1\n")
    from tenfold.config import build_settings
    from tenfold.inference.dlq import DlqError, inspect

    with pytest.raises(DlqError, match="is not a run key"):  # refused before any store is read
        inspect(build_settings("local", {"TENFOLD_HOME": str(tmp_path)}), run="r\n")


def test_batches_cover_every_row_once_and_round_trip() -> None:
    rows = pa.table({"k": list(range(23)), "x": [float(i) for i in range(23)]})
    batches = list(plan_batches(rows, run_key="r", partition="2013-07", model_version="v1", rows_per_message=5))
    assert [b.rows.num_rows for b in batches] == [5, 5, 5, 5, 3]
    again = [decode(b.encode(), b.attributes(), ["k", "x"]) for b in batches]
    assert pa.concat_tables([b.rows for b in again]).equals(rows)
    assert [b.request_id for b in again] == [request_id("r", "2013-07", i) for i in range(5)]


@pytest.mark.parametrize("compression", ["zstd", "lz4", "none"])
def test_a_compressed_body_decodes_to_the_same_rows_without_options(compression: str) -> None:
    # Repetitive columns, as a month of features is (a route's roll-ups repeat on every flight of it).
    rows = pa.table({"k": list(range(5000)), "route": ["EWR-ORD", "JFK-LAX"] * 2500, "x": [0.25, 1.5] * 2500})
    request = ScoringRequest(run="r", request_id="id-1", partition="2013-07", model_version="v", rows=rows)
    body = request.encode(compression)
    assert decode(body, request.attributes(), ["k", "route", "x"]).rows.equals(rows)
    plain = request.encode("none")
    if compression == "none":
        assert body == plain
    else:  # compressed buffers really are smaller: the bytes Pub/Sub carries
        assert len(body) < len(plain) / 2, (compression, len(body), len(plain))


@pytest.mark.parametrize(("body", "attributes", "message"), [
    (b"junk", {}, "not an Arrow IPC stream"),
    (None, {"run": ""}, r"attributes \['run'\] are missing"),
    (None, {"rows": "7"}, "truncated"),
    (None, {"rows": "x"}, "not a whole number"),
    (None, {"request_id": "../../escape"}, "is not a request id"),
    (None, {"request_id": "x" * 300}, "is not a request id"),
    (None, {"run": "x" * 300}, "is not a run key"),
    (None, {"run": "../escape"}, "is not a run key"),
    # re's "$" matches before a final newline: "id-1\n" and "r\n" passed the name check and named files and folders
    (None, {"request_id": "id-1\n"}, "is not a request id"),
    (None, {"run": "r\n"}, "is not a run key"),
])
def test_a_bad_message_is_refused_naming_what_is_wrong(body, attributes, message) -> None:
    good = ScoringRequest(run="r", request_id="id-1", partition="2013-07", model_version="v", rows=pa.table({"k": [1, 2]}))
    with pytest.raises(RequestError, match=message):
        decode(good.encode() if body is None else body, {**good.attributes(), **attributes})
    with pytest.raises(RequestError, match="lack the feature contract's columns"):
        decode(good.encode(), good.attributes(), ["k", "missing"])


def test_a_body_that_would_decompress_beyond_the_cap_is_refused_before_anything_is_decompressed(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """zstd packs 80 MB of zeros into 3 KB: decode decompressed the whole body before any check, so a small message
    could run a worker out of memory (the kernel's kill records no reason; each redelivery kills another worker).
    The claims come from the IPC metadata and the compressed buffers' length prefixes. (The cap is lowered here so
    that the bomb stays small; the real one is 256 MiB.)"""
    import numpy as np

    import tenfold.inference.requests as requests

    monkeypatch.setattr(requests, "MAX_DECODED_BYTES", 2**20, raising=False)
    real_open = pa.ipc.open_stream
    decompressed: list[int] = []

    def open_stream(source: object, *args: object, **kwargs: object) -> object:
        decompressed.append(1)  # the only reader of the batches (the claims come from MessageReader)
        return real_open(source, *args, **kwargs)

    monkeypatch.setattr(pa.ipc, "open_stream", open_stream)
    rows = pa.table({"k": pa.array(np.zeros(200_000))})  # 1.6 MB of zeros, about 1 KB once compressed
    bomb = ScoringRequest(run="r", request_id="id-1", partition="2013-07", model_version="v", rows=rows)
    body = bomb.encode("zstd")
    assert len(body) < 4_000
    with pytest.raises(RequestError, match=rf"the body is {len(body):,} bytes that would decompress to 1,600,000 "
                                           r"\(more than 1,048,576\): too large for one request; not decompressed"):
        decode(body, {**bomb.attributes(), "rows": "2000"})
    assert decompressed == [], "the body's batches were read before it was refused"
    with pytest.raises(RequestError, match=r"attribute rows=100001 is outside 0..100,000"):
        decode(body, {**bomb.attributes(), "rows": "100001"})
    small = ScoringRequest(run="r", request_id="id-1", partition="2013-07", model_version="v", rows=rows.slice(0, 1000))
    assert decode(small.encode("zstd"), small.attributes()).rows.equals(small.rows)  # 8 KB once decompressed: taken


_RACE = """
import json, sys
from pathlib import Path
from tenfold.storage import FileObjects
objects = FileObjects(Path(sys.argv[1]))
print("ready", flush=True)
sys.stdin.read(1)  # every writer imported: they start together
print(json.dumps([objects.create(f"run/results/{n}.parquet", f"writer {sys.argv[2]}".encode()) for n in range(50)]))
"""


def test_file_results_are_created_once_and_never_overwritten(tmp_path: Path) -> None:
    """Four processes create the same 50 results at once: each result has exactly one creator. A check-then-write
    create (exists, then a rename) passed this when the writers started a whole import apart, so they wait for one
    another first."""
    procs = [subprocess.Popen([sys.executable, "-c", _RACE, str(tmp_path), str(n)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True) for n in range(4)]
    for p in procs:
        assert p.stdout is not None and p.stdout.readline().strip() == "ready"
    for p in procs:
        assert p.stdin is not None
        p.stdin.write("g")
        p.stdin.close()
    wins = [json.loads(p.stdout.read()) for p in procs if p.stdout is not None]
    assert [p.wait(timeout=60) for p in procs] == [0] * 4
    assert [sum(created) for created in zip(*wins, strict=True)] == [1] * 50
    content = (tmp_path / "run/results/0.parquet").read_bytes()
    assert [content] == [f"writer {n}".encode() for n, created in enumerate(wins) if created[0]]  # the creator's
    store = RunStore(FileObjects(tmp_path), "run")
    assert store.put_result("0", b"later") is False and store.result("0") == content
    assert sorted(store.result_ids()) == sorted(str(n) for n in range(50)) and not list((tmp_path / "run/results").glob(".*"))


def test_gcs_results_are_created_once(gcs_emulator: str) -> None:
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    client = storage.Client(project="test", credentials=AnonymousCredentials(), client_options={"api_endpoint": gcs_emulator})
    bucket = f"inference-{uuid.uuid4().hex[:8]}"
    client.create_bucket(bucket)
    store = RunStore(GcsObjects(client, bucket, "lake/_inference"), "run-1")
    assert store.put_result("a", b"first") is True
    assert store.put_result("a", b"second") is False  # if_generation_match=0 refused: the first stays
    assert store.result("a") == b"first" and store.has_result("a") and not store.has_result("b")
    store.put_error("b", {"attempts": [1]})
    assert store.result_ids() == ["a"] and store.error("b") == {"attempts": [1]}


def test_the_invariant_fails_the_run_naming_the_numbers() -> None:
    acc = Accounting(requests=3, scored=("a", "b"), dead_lettered=("c",))
    figures = check_invariant(requests_in=3, rows_in=30, acc=acc, rows_out=20, rows_dead=10, distinct_keys=20)
    assert figures["rows_out"] == 20
    with pytest.raises(InferenceRunError, match=r"rows: 30 in != 19 out \+ 10 dead-lettered"):
        check_invariant(requests_in=3, rows_in=30, acc=acc, rows_out=19, rows_dead=10, distinct_keys=19)
    with pytest.raises(InferenceRunError, match="requests: 4 in"):
        check_invariant(requests_in=4, rows_in=30, acc=acc, rows_out=20, rows_dead=10, distinct_keys=20)
    with pytest.raises(InferenceRunError, match="1 rows are scored more than once"):
        check_invariant(requests_in=3, rows_in=30, acc=acc, rows_out=20, rows_dead=10, distinct_keys=19)


def test_the_worker_module_answers_help_without_heavy_imports() -> None:
    code = ("import sys, runpy; sys.argv=['w', '--help']\n"
            "try:\n    runpy.run_module('tenfold.inference.worker', run_name='__main__')\nexcept SystemExit as e:\n"
            "    assert e.code == 0\n"
            "heavy = [m for m in ('torch', 'pyarrow', 'google.cloud.pubsub_v1') if m in sys.modules]\n"
            "print('HEAVY', heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True).stdout
    assert "--settings-file" in out and "HEAVY []" in out


def test_a_dead_letter_sent_again_is_not_accounted_until_it_is_scored_or_dead_lettered_anew(tmp_path: Path) -> None:
    from tenfold.inference.runs import account, resend_dead_letters

    store = RunStore(FileObjects(tmp_path), "run")
    store.put_result("a", b"scored")
    for rid in ("b", "c"):
        store.put_dead_letter(rid, {"request_id": rid, "replayed": False, "replays": []})
    assert account(store, ["a", "b", "c"]).dead_lettered == ("b", "c")

    # A new publication of the run re-sends b (and a, which has its result: nothing to mark).
    assert resend_dead_letters(store, ["a", "b"], by="publish") == {"b": 1}  # its new copy's replay number
    # A retry of that publish (its try died, before or after it sent b): b's new copy gets a number of its own, so a
    # dead letter of either earlier copy reads as older (under none, b stayed in flight for ever; under the same one,
    # the first try's copy dead-lettered counted b dead while the retry's was in flight).
    assert resend_dead_letters(store, ["b"], by="publish") == {"b": 2}
    assert len((store.dead_letter("b") or {})["replays"]) == 2
    acc = account(store, ["a", "b", "c"])
    assert (acc.scored, acc.dead_lettered, acc.accounted) == (("a",), ("c",), 2)  # b is in flight again
    assert (store.dead_letter("b") or {})["replays"][0]["by"] == "publish"

    store.put_dead_letter("b", {"request_id": "b", "replayed": False, "replays": []})  # dead-lettered again
    assert account(store, ["a", "b", "c"]).dead_lettered == ("b", "c")


def test_no_record_name_leaves_the_run_folder(tmp_path: Path) -> None:
    store = RunStore(FileObjects(tmp_path / "work"), "run")
    for bad in ("../../escape", "x" * 300, "a/b", ".."):
        with pytest.raises(ValueError, match="cannot name a record of run run"):
            store.put_dead_letter(bad, {"request_id": bad})
    assert not (tmp_path / "escape.json").exists() and not (tmp_path / "work").exists()


def _dead_letters(settings: Settings, data: bytes, *attributes: dict[str, str]) -> list[str]:
    """Put one dead letter per ``attributes`` (body ``data``) on the requests' dead-letter subscription of the session's
    Pub/Sub emulator, as Pub/Sub's dead-lettering leaves it: published to the dead-letter topic with the attributes it
    adds (the delivery count, which the drain records, and the subscription the message came from). Returns their
    message ids, in order (Pub/Sub gives a dead letter an id of its own)."""
    from tenfold.inference.runs import DEAD_LETTER_COUNT
    from tenfold.messaging.clients import publisher_client, topic_path

    sub = settings.messaging.subscriptions["requests"]
    added = {DEAD_LETTER_COUNT: str(sub.max_delivery_attempts), "CloudPubSubDeadLetterSourceSubscription": sub.name,
             "CloudPubSubDeadLetterSourceSubscriptionProject": settings.project_id}
    publisher = publisher_client(settings)
    try:
        futures = [publisher.publish(topic_path(settings, sub.dead_letter_topic), data, **{**added, **attrs})
                   for attrs in attributes]
        return [future.result(timeout=30) for future in futures]
    finally:
        publisher.stop()


def _waiting(settings: Settings, *, leased: bool = False) -> list[str]:
    """The message ids (sorted) of the dead letters a pull of the requests' dead-letter subscription gets now; with
    ``leased``, of every one not acknowledged, those a drain pulled and left leased included: the subscription is sought
    to a snapshot of itself, which keeps exactly the unacknowledged ones and makes them deliverable at once (a leased
    message otherwise stays invisible for the subscription's 120 s ack deadline, as an acknowledged one does). Each is
    handed back after (deadline 0), so a drain after this sees it."""
    from tenfold.messaging.clients import subscriber_client, subscription_path

    path = subscription_path(settings, settings.messaging.subscriptions["requests"].dead_letter_subscription)
    client = subscriber_client(settings)
    try:
        if leased:
            snapshot = f"projects/{settings.project_id}/snapshots/left-{uuid.uuid4().hex[:8]}"
            client.create_snapshot(request={"name": snapshot, "subscription": path})
            client.seek(request={"subscription": path, "snapshot": snapshot})
            client.delete_snapshot(request={"snapshot": snapshot})
        pulled: list[Any] = []
        # the emulator may answer a pull with part of what it holds: pulled until it answers with none
        while got := client.pull(request={"subscription": path, "max_messages": 100, "return_immediately": True},
                                 timeout=30).received_messages:
            pulled += got
        if pulled:
            client.modify_ack_deadline(request={"subscription": path, "ack_ids": [r.ack_id for r in pulled],
                                                "ack_deadline_seconds": 0})
        return sorted(r.message.message_id for r in pulled)
    finally:
        client.close()


def test_a_dead_letter_whose_request_id_cannot_name_a_file_is_recorded_and_acked_with_the_rest(
        own_topology: Settings, tmp_path: Path) -> None:
    """Attributes are whatever the publisher set: a 300-character request id (OSError: File name too long) used
    to fail every drain, with the good dead letter pulled beside it never acknowledged. (Real dead letters on the
    session's Pub/Sub emulator, drained by the real client: what the drain acknowledged is gone from the
    subscription.)"""
    from tenfold.inference.runs import DEAD_LETTER_COUNT, drain_dead_letters

    good = ScoringRequest(run="run-1", request_id=request_id("run-1", "2013-07", 0), partition="2013-07",
                          model_version="v", rows=pa.table({"k": [1]}))
    odd = {**good.attributes(), "request_id": "x" * 300}
    _dead_letters(own_topology, good.encode(), good.attributes(), odd)
    objects = FileObjects(tmp_path)
    seen = drain_dead_letters(own_topology, objects=objects)
    named = record_id(odd, good.encode())
    assert named.startswith("message-") and named == record_id({**odd, DEAD_LETTER_COUNT: "5"},
                                                                good.encode())  # what Pub/Sub adds changes nothing
    assert set(seen) == {("run-1", named), ("run-1", good.request_id)}
    assert _waiting(own_topology, leased=True) == []  # both acknowledged
    record = RunStore(objects, "run-1").dead_letter(named)
    assert record is not None and record["attributes"]["request_id"] == "x" * 300  # what it said is kept
    assert record["delivery_attempts"] == 5  # Pub/Sub's count, the worker having recorded none


@pytest.mark.parametrize("run", ["x" * 300, "run\x00nul"])
def test_a_dead_letter_whose_run_cannot_name_a_folder_is_recorded_as_unknown_run_and_acked_with_the_rest(
        own_topology: Settings, tmp_path: Path, run: str) -> None:
    """A 300-character run (OSError: File name too long) or one no file can be named by failed every drain before
    its ack, and so every later one (each run's score task drains first): the good dead letter beside it was never
    acknowledged."""
    from tenfold.inference.runs import drain_dead_letters

    good = ScoringRequest(run="run-1", request_id=request_id("run-1", "2013-07", 0), partition="2013-07",
                          model_version="v", rows=pa.table({"k": [1]}))
    odd = {**good.attributes(), "run": run, "request_id": request_id("other", "2013-07", 0)}
    _dead_letters(own_topology, good.encode(), good.attributes(), odd)
    objects = FileObjects(tmp_path)
    seen = drain_dead_letters(own_topology, objects=objects)
    assert set(seen) == {("run-1", good.request_id), ("unknown-run", odd["request_id"])}
    assert _waiting(own_topology, leased=True) == []  # both acknowledged
    record = RunStore(objects, "unknown-run").dead_letter(odd["request_id"])
    assert record is not None and record["run"] == "unknown-run" and record["attributes"]["run"] == run
    assert RunStore(objects, "run-1").dead_letter(good.request_id) is not None


def test_a_second_dead_letter_of_a_copy_sent_before_a_replay_leaves_the_replay_in_flight(
        own_topology: Settings, tmp_path: Path) -> None:
    """Pub/Sub may dead-letter one message more than once: the original copy, dead-lettered again after `tenfold dlq
    replay` had sent copy 1, was recorded afresh as not replayed, so the run counted the request dead-lettered while
    copy 1 was in flight (score ended early, publish_results refused the month or left its rows out). A dead letter
    of copy 1 itself is still counted."""
    from tenfold.inference.runs import account, drain_dead_letters, mark_replayed

    settings, objects = own_topology, FileObjects(tmp_path)
    good = ScoringRequest(run="run-1", request_id=request_id("run-1", "2013-07", 0), partition="2013-07",
                          model_version="v", rows=pa.table({"k": [1]}))
    rid, store = good.request_id, RunStore(objects, "run-1")
    original = good.attributes()  # no replay attribute

    def drain(attrs: dict[str, str]) -> list[tuple[str, str]]:
        _dead_letters(settings, good.encode(), attrs)
        seen = drain_dead_letters(settings, objects=objects)
        assert _waiting(settings, leased=True) == []  # acknowledged, recorded or not
        return seen

    assert drain(original) == [("run-1", rid)]
    assert account(store, [rid]).dead_lettered == (rid,)
    mark_replayed(store, rid, store.dead_letter(rid) or {}, by="replay", replay=1)  # what `tenfold dlq replay` marks
    assert account(store, [rid]).dead_lettered == ()

    stale = drain(original)  # the original copy, dead-lettered a second time
    assert account(store, [rid]).dead_lettered == ()  # copy 1 is still in flight
    record = store.dead_letter(rid) or {}
    assert (record["replayed"], record["times_dead_lettered"], stale) == (True, 1, [])

    assert drain({**original, "replay": "1"}) == [("run-1", rid)]  # copy 1 itself dead-lettered
    record = store.dead_letter(rid) or {}
    assert (record["replayed"], record["times_dead_lettered"]) == (False, 2)
    assert account(store, [rid]).dead_lettered == (rid,)


def test_a_dead_letter_of_the_copy_a_run_publishes_again_counts_and_one_of_the_original_does_not(
        own_topology: Settings, tmp_path: Path) -> None:
    """A run's publish sent the original request again without a replay number: a second dead letter of the original
    copy (Pub/Sub may dead-letter a message twice) then counted the request dead while the new copy was in flight, and
    the run ended without it. The copy a publish sends again carries its number, as `tenfold dlq replay`'s does."""
    from tenfold.inference.requests import REPLAY
    from tenfold.inference.runs import account, drain_dead_letters, resend_dead_letters

    settings, objects = own_topology, FileObjects(tmp_path)
    good = ScoringRequest(run="run-1", request_id=request_id("run-1", "2013-07", 0), partition="2013-07",
                          model_version="v", rows=pa.table({"k": [1]}))
    rid, store = good.request_id, RunStore(objects, "run-1")
    _dead_letters(settings, good.encode(), good.attributes())
    assert drain_dead_letters(settings, objects=objects) == [("run-1", rid)]
    assert resend_dead_letters(store, [rid], by="publish") == {rid: 1}
    _dead_letters(settings, good.encode(), good.attributes())  # the original, dead-lettered twice
    assert drain_dead_letters(settings, objects=objects) == []
    assert account(store, [rid]).dead_lettered == ()  # the new copy is in flight
    _dead_letters(settings, good.encode(), {**good.attributes(), REPLAY: "1"})
    assert drain_dead_letters(settings, objects=objects) == [("run-1", rid)]
    assert account(store, [rid]).dead_lettered == (rid,)
    assert (store.dead_letter(rid) or {})["times_dead_lettered"] == 2
    assert _waiting(settings, leased=True) == []  # all three acknowledged


def _two_dead_letters(settings: Settings) -> tuple[ScoringRequest, dict[str, str], dict[str, str]]:
    """A dead letter of request 1 of run-1 (``bad``'s attributes) and one of request 0 (``good``), put on the
    dead-letter subscription in that order; returns ``good``, ``bad`` and the message id of each request id."""
    good = ScoringRequest(run="run-1", request_id=request_id("run-1", "2013-07", 0), partition="2013-07",
                          model_version="v", rows=pa.table({"k": [1]}))
    bad = {**good.attributes(), "request_id": request_id("run-1", "2013-07", 1)}
    ids = _dead_letters(settings, good.encode(), bad, good.attributes())
    return good, bad, dict(zip([bad["request_id"], good.request_id], ids, strict=True))


def test_a_dead_letter_whose_error_record_is_unreadable_is_still_filed_in_its_run_and_counted(
        own_topology: Settings, tmp_path: Path) -> None:
    """A corrupt error record sent the dead letter to unknown-run, acked: its run never counted the request, and
    waited out its hour on every retry."""
    from tenfold.inference.runs import account, drain_dead_letters

    good, bad, _ = _two_dead_letters(own_topology)
    objects = FileObjects(tmp_path)
    objects.put(f"run-1/errors/{bad['request_id']}.json", b"{not json")
    objects.put(f"run-1/dead_letters/{good.request_id}.json", b"\xff torn")  # an earlier record, unreadable
    seen = drain_dead_letters(own_topology, objects=objects)
    assert set(seen) == {("run-1", bad["request_id"]), ("run-1", good.request_id)}
    assert _waiting(own_topology, leased=True) == []  # both acknowledged
    store = RunStore(objects, "run-1")
    assert account(store, [bad["request_id"], good.request_id]).dead_lettered == (bad["request_id"], good.request_id)
    record = store.dead_letter(bad["request_id"])
    assert record is not None and "error record of this request could not be read" in record["error"]
    assert RunStore(objects, "unknown-run").dead_letter_ids() == []


def test_a_dead_letter_the_store_cannot_take_now_is_left_for_the_next_drain(own_topology: Settings, small_disk) -> None:
    """A GCS blip on one record filed it under unknown-run and acked it: gone from the subscription, and never
    counted by its run. The drain ends at the outage (each further record would wait out the client's retries),
    acknowledging what it recorded, and the next one files the rest in their run. The outage is a real full disk (a
    small tmpfs with room for one record): whichever dead letter the emulator hands out first is recorded, the other
    one is not."""
    import errno

    from tenfold.inference.runs import account, drain_dead_letters

    good, bad, ids = _two_dead_letters(own_topology)
    root = small_disk.path / "work"
    (root / "run-1" / "dead_letters").mkdir(parents=True)
    objects, store = FileObjects(root), RunStore(FileObjects(root), "run-1")
    small_disk.fill(leave=4096)  # one page: one record of a few hundred bytes
    with pytest.raises(OSError) as raised:
        drain_dead_letters(own_topology, objects=objects)
    assert raised.value.errno == errno.ENOSPC, raised.value
    (recorded,) = store.dead_letter_ids()  # recorded before the disk was full
    (rest,) = set(ids) - {recorded}
    # The recorded one acknowledged; the other back on the subscription (handed back, not left leased).
    assert _waiting(own_topology) == _waiting(own_topology, leased=True) == [ids[rest]]
    assert RunStore(objects, "unknown-run").dead_letter_ids() == []
    small_disk.free()
    assert drain_dead_letters(own_topology, objects=objects) == [("run-1", rest)]
    assert _waiting(own_topology, leased=True) == []
    assert account(store, [bad["request_id"], good.request_id]).accounted == 2


def test_a_dead_letter_that_cannot_be_recorded_in_its_run_is_kept_under_unknown_run_and_the_batch_acked(
        own_topology: Settings, tmp_path: Path, unwritable) -> None:
    """One message's record failing for good (here its run's folder refuses it for real: run-2's folder is read-only)
    must not keep the batch unacknowledged: it is kept under unknown-run, with the reason."""
    from tenfold.inference.runs import drain_dead_letters

    good = ScoringRequest(run="run-1", request_id=request_id("run-1", "2013-07", 0), partition="2013-07",
                          model_version="v", rows=pa.table({"k": [1]}))
    bad = {**good.attributes(), "run": "run-2", "request_id": request_id("run-2", "2013-07", 0)}
    bad_id, _ = _dead_letters(own_topology, good.encode(), bad, good.attributes())
    objects = FileObjects(tmp_path)
    (tmp_path / "run-2").mkdir()
    with unwritable(tmp_path / "run-2"):
        seen = drain_dead_letters(own_topology, objects=objects)
    assert set(seen) == {("unknown-run", f"message-{bad_id}"), ("run-1", good.request_id)}
    assert _waiting(own_topology, leased=True) == []  # both acknowledged
    record = RunStore(objects, "unknown-run").dead_letter(f"message-{bad_id}")
    assert record is not None and record["attributes"]["request_id"] == bad["request_id"]
    assert record["recording_error"].startswith("PermissionError"), record["recording_error"]
    assert RunStore(objects, "run-2").dead_letter_ids() == []


def _fsynced_paths(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """The paths ``os.fsync`` is called on from now (this test's record of what reached the disk)."""
    import os

    synced: list[Path] = []
    real = os.fsync

    def spy(fd: int) -> None:
        synced.append(Path(os.readlink(f"/proc/self/fd/{fd}")))
        real(fd)

    monkeypatch.setattr(os, "fsync", spy)
    return synced


def test_a_result_and_a_dead_letter_are_durable_with_every_folder_they_created(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A run's first result creates its folders; the message is acked once the result is durable, so each new
    folder's entry must be on disk too (a power cut could otherwise lose the acked result with its folder). Only
    the result's own folder was synced."""
    from tenfold.feedback.log import _write_local

    synced = _fsynced_paths(monkeypatch)
    root = tmp_path / "work"
    assert FileObjects(root).create("run1/results/r.parquet", b"x")
    assert {tmp_path, root, root / "run1", root / "run1" / "results"} <= set(synced), synced
    synced.clear()
    FileObjects(root).put("run2/dead_letters/m.json", b"{}")
    assert {root, root / "run2", root / "run2" / "dead_letters"} <= set(synced), synced
    synced.clear()
    _write_local(str(tmp_path / "lake" / "feedback" / "year=2013" / "f.parquet"), b"x")  # the sink's logs, the same
    assert {tmp_path, tmp_path / "lake", tmp_path / "lake" / "feedback"} <= set(synced), synced


@pytest.mark.parametrize("how", ["create", "exists"])
def test_a_result_another_writer_linked_is_made_durable_before_it_is_reported(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str) -> None:
    """A writer killed between its link and its folder sync left a name not yet on disk: a redelivery that met it
    (create refused, or exists) was acknowledged, and a power cut then lost the result with its message acked."""
    import os

    from tenfold import storage

    synced: list[Path] = []
    monkeypatch.setattr(storage, "fsync_dir", lambda path: synced.append(Path(path)))
    results = tmp_path / "run" / "results"
    results.mkdir(parents=True)
    (tmp_path / "tmp").write_bytes(b"first")
    os.link(tmp_path / "tmp", results / "r.parquet")  # the killed writer's link, its folder sync never run
    objects = FileObjects(tmp_path)
    if how == "create":
        assert objects.create("run/results/r.parquet", b"second") is False
    else:
        assert objects.exists("run/results/r.parquet") is True
    assert results in synced, synced
    assert (results / "r.parquet").read_bytes() == b"first"


class _CountingObjects(FileObjects):
    """Files, counting the dead-letter records read (each holds a whole request's body)."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.dead_letters_read: list[str] = []

    def get(self, name: str) -> bytes | None:
        if "/dead_letters/" in name:
            self.dead_letters_read.append(name.rsplit("/", 1)[1].removesuffix(".json"))
        return super().get(name)


def test_accounting_reads_a_dead_letter_again_only_once_its_record_changed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every poll of a run's wait read every dead-letter record (the request's body in base64 in each): thousands of
    dead letters were downloaded again every half second. A record is not written once (a replay marks it, a drain
    records it afresh): one replaced since it was read is read again, and its replay counted."""
    from tenfold.inference import store as store_mod
    from tenfold.inference.runs import account, mark_replayed

    objects = _CountingObjects(tmp_path)
    store = RunStore(objects, "run")
    for rid in ("b", "c"):
        store.put_dead_letter(rid, {"request_id": rid, "replayed": False, "replays": [], "data_base64": "QUJD" * 1000})
    # Just written, the records' times may not move on a second write within the file system's clock tick: read
    # every time until they settle.
    assert account(store, ["a", "b", "c"], known=(fresh := {})).dead_lettered == ("b", "c")
    assert account(store, ["a", "b", "c"], known=fresh).dead_lettered == ("b", "c")
    assert objects.dead_letters_read == ["b", "c", "b", "c"]

    monkeypatch.setattr(store_mod, "STAMP_SETTLE_S", -1.0)  # as if written well before (their times are what they are)
    objects.dead_letters_read.clear()
    known: dict[str, Any] = {}
    assert account(store, ["a", "b", "c"], known=known).dead_lettered == ("b", "c")
    assert sorted(objects.dead_letters_read) == ["b", "c"]
    objects.dead_letters_read.clear()
    assert account(store, ["a", "b", "c"], known=known).dead_lettered == ("b", "c")
    assert objects.dead_letters_read == [], "the second accounting read dead-letter records again"

    # `tenfold dlq replay` (or a run published again) marks b sent again: read again, and in flight.
    mark_replayed(store, "b", store.dead_letter("b") or {}, by="replay", replay=1)
    objects.dead_letters_read.clear()
    assert account(store, ["a", "b", "c"], known=known).dead_lettered == ("c",)
    assert objects.dead_letters_read == ["b"]
    # b's new copy dead-lettered: recorded afresh (a drain's write): read again, dead again.
    store.put_dead_letter("b", {"request_id": "b", "replayed": False, "replays": [], "data_base64": "QUJD" * 1000})
    objects.dead_letters_read.clear()
    assert account(store, ["a", "b", "c"], known=known).dead_lettered == ("b", "c")
    assert objects.dead_letters_read == ["b"]


def test_a_runs_wait_reads_each_dead_letter_once_across_its_polls(
        settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    from tenfold.inference import runs
    from tenfold.inference import store as store_mod

    objects = _CountingObjects(Path(runs.work_objects(settings).root))  # type: ignore[attr-defined]
    monkeypatch.setattr(runs, "work_objects", lambda settings: objects)
    monkeypatch.setattr(runs, "drain_dead_letters", lambda settings, **kwargs: [])
    monkeypatch.setattr(store_mod, "STAMP_SETTLE_S", -1.0)
    settings = settings.model_copy(update={"inference": settings.inference.model_copy(update={"poll_interval_s": 0.01})})
    store = RunStore(objects, "k1")
    for rid in ("d1", "d2"):
        store.put_dead_letter(rid, {"request_id": rid, "replayed": False, "replays": [], "data_base64": "QUJD"})
    polls: list[int] = []

    def alive() -> int:  # asked on each poll that finds a request pending: its result comes on the 5th
        polls.append(1)
        if len(polls) == 5:
            store.put_result("a", b"scored")
        return 1

    acc = runs.wait_accounted(settings, "k1", ["a", "d1", "d2"], alive=alive)
    assert (acc.scored, acc.dead_lettered) == (("a",), ("d1", "d2")) and len(polls) == 5
    assert sorted(objects.dead_letters_read) == ["d1", "d2"], f"{len(objects.dead_letters_read)} reads over 6 polls"
