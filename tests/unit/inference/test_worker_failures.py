"""How the inference worker sorts what goes wrong: a store outage while loading the model is waited out
(the request is not spent toward the dead-letter topic), a bad model or request is a failed delivery, and a
crash is redelivered with its reason recorded, so that a dead letter always says why."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from tenfold.config import Settings
from tenfold.inference import worker as worker_mod
from tenfold.inference.requests import ScoringRequest
from tenfold.inference.scoring import ScoringError, load_version
from tenfold.inference.store import RunStore
from tenfold.inference.worker import Worker


class Message:
    def __init__(self, request: ScoringRequest, attempt: int = 1) -> None:
        self.data, self.attributes = request.encode(), request.attributes()
        self.delivery_attempt, self.message_id = attempt, "m-1"
        self.fate: list[str] = []

    def ack(self) -> None:
        self.fate.append("ack")

    def nack(self) -> None:
        self.fate.append("nack")


def _request() -> ScoringRequest:
    return ScoringRequest(run="r1", request_id="r1-000000", partition="2013-01", model_version="v1",
                          rows=pa.table({"k": [1, 2]}))


def test_a_store_that_cannot_be_reached_makes_a_transient_load_error_and_a_bad_ref_does_not(
        settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    import requests
    from google.api_core.exceptions import RetryError

    from tenfold.registry import ModelRegistry, RegistryError

    def unreachable(self: Any, ref: str) -> str:
        # What the GCS client raises with nothing on the store's port, once its own retries ran out (two minutes: a
        # real stopped store, checked by hand); neither is a built-in ConnectionError.
        cause = requests.exceptions.ConnectionError("HTTPConnectionPool(host='127.0.0.1', port=4443): Max retries")
        raise RetryError("Timeout of 120.0s exceeded", cause)

    monkeypatch.setattr(ModelRegistry, "find", unreachable)
    with pytest.raises(ScoringError) as err:
        load_version(settings, "v1")
    assert err.value.transient and "is the object store up" in str(err.value)

    def unknown(self: Any, ref: str) -> str:
        raise RegistryError(f"no version {ref}")

    monkeypatch.setattr(ModelRegistry, "find", unknown)
    with pytest.raises(ScoringError) as err:
        load_version(settings, "v1")
    assert not err.value.transient


def test_a_store_outage_while_loading_is_waited_out_then_a_real_failure_is_recorded(
        make_settings: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = make_settings(inference={"transient_retry_s": 5.0})
    monkeypatch.setattr(worker_mod, "FIRST_RETRY_S", 0.01)
    w = Worker(settings)
    calls: list[str] = []

    def get(version: str) -> Any:
        calls.append(version)
        if len(calls) < 3:
            raise ScoringError("the registry cannot be read (ConnectionError)", transient=True)
        raise ScoringError("model version v1 cannot be loaded: its weights do not match meta.json")

    monkeypatch.setattr(w.models, "get", get)
    message = Message(_request())
    w.handle(message)
    assert calls == ["v1"] * 3  # two outages waited out within the same delivery, then the model itself failed
    assert message.fate == ["nack"] and w.stats.failed == 1
    error = RunStore(w.objects, "r1").error("r1-000000")
    assert error is not None and [a["delivery_attempt"] for a in error["attempts"]] == [1]
    assert "weights do not match" in error["error"]


def test_an_outage_longer_than_the_retry_is_a_failed_delivery(make_settings: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = make_settings(inference={"transient_retry_s": 0.0})
    w = Worker(settings)
    monkeypatch.setattr(w.models, "get", lambda version: (_ for _ in ()).throw(
        ScoringError("the registry cannot be read", transient=True)))
    message = Message(_request())
    w.handle(message)
    assert message.fate == ["nack"] and w.stats.failed == 1


def test_a_crash_while_scoring_is_redelivered_with_its_reason_recorded(settings: Settings,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    w = Worker(settings)

    def oom(version: str) -> Any:
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(w.models, "get", oom)
    message = Message(_request(), attempt=5)
    w.handle(message)
    assert message.fate == ["nack"] and w.stats.failed == 0  # not the request's fault: redelivered
    error = RunStore(w.objects, "r1").error("r1-000000")
    assert error is not None and "CUDA out of memory" in error["error"] and error["delivery_attempt"] == 5


def test_a_result_write_that_fails_for_a_while_is_retried_within_the_delivery_and_then_acked(
        make_settings: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A nack counts as a delivery attempt: a store away for a few minutes dead-lettered requests already scored.
    The write is retried with the lease kept; a store away longer than transient_retry_s is still a nack."""
    settings = make_settings(inference={"transient_retry_s": 5.0})
    monkeypatch.setattr(worker_mod, "FIRST_RETRY_S", 0.01)
    w = Worker(settings)
    monkeypatch.setattr(w.models, "get", lambda version: (_ for _ in ()).throw(AssertionError("not loaded")))
    from tenfold.inference import faults

    monkeypatch.setattr(faults, "stub_scoring", lambda: True)
    real = RunStore.put_result
    failures = {"left": 3}

    def flaky(self: RunStore, rid: str, data: bytes) -> bool:
        if failures["left"]:
            failures["left"] -= 1
            raise OSError(5, "Input/output error (the lake's disk went away)")
        return real(self, rid, data)

    monkeypatch.setattr(RunStore, "put_result", flaky)
    message = Message(_request())
    w.handle(message)
    assert message.fate == ["ack"] and failures["left"] == 0 and w.stats.scored == 1
    assert RunStore(w.objects, "r1").has_result("r1-000000")

    failures["left"] = 10_000  # longer than the retry: given back, with its reason recorded
    short = Worker(make_settings(inference={"transient_retry_s": 0.05}))
    again = Message(ScoringRequest(run="r2", request_id="r2-000000", partition="2013-01", model_version="v1",
                                   rows=pa.table({"k": [1]})))
    short.handle(again)
    assert again.fate == ["nack"]
    error = RunStore(short.objects, "r2").error("r2-000000")
    assert error is not None and "Input/output error" in error["error"]


def test_a_store_away_while_a_redelivery_checks_for_its_result_keeps_the_delivery(
        make_settings: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every delivery first asks whether its result exists (a redelivery after a SIGKILL acks at once); that
    check, like the write, is retried with the lease kept: it was nacked, so a store away for a few minutes spent
    the delivery attempts of every request in flight and dead-lettered whole runs."""
    settings = make_settings(inference={"transient_retry_s": 5.0})
    monkeypatch.setattr(worker_mod, "FIRST_RETRY_S", 0.01)
    w = Worker(settings)
    from tenfold.inference import faults

    monkeypatch.setattr(faults, "stub_scoring", lambda: True)
    real = RunStore.has_result
    failures = {"left": 3}

    def flaky(self: RunStore, rid: str) -> bool:
        if failures["left"]:
            failures["left"] -= 1
            raise OSError(5, "Input/output error (the lake's disk went away)")
        return real(self, rid)

    monkeypatch.setattr(RunStore, "has_result", flaky)
    message = Message(_request())
    w.handle(message)
    assert message.fate == ["ack"] and failures["left"] == 0 and w.stats.scored == 1
    assert real(RunStore(w.objects, "r1"), "r1-000000")


@pytest.mark.parametrize("run", ["x" * 300, "run\x00nul"])
def test_a_request_whose_run_cannot_name_a_folder_is_refused_and_recorded_under_unknown_run(
        settings: Settings, run: str) -> None:
    """Its error used to go nowhere (File name too long) and it was nacked as a crash, with no reason to show."""
    w = Worker(settings)
    message = Message(_request(), attempt=2)
    message.attributes = {**message.attributes, "run": run}
    w.handle(message)
    assert message.fate == ["nack"] and w.stats.failed == 1
    error = RunStore(w.objects, "unknown-run").error("r1-000000")
    assert error is not None and "is not a run key" in error["error"] and error["delivery_attempt"] == 2


@pytest.mark.parametrize("error", ["InternalServerError", "Unknown", "Aborted", "ServiceUnavailable"])
def test_a_pull_that_meets_a_pubsub_outage_pulls_again_instead_of_crashing_the_worker(
        settings: Settings, error: str) -> None:
    """Only ServiceUnavailable was waited out: a 500, an Unknown or an Aborted pull crashed the worker, handing back
    the messages in hand (a delivery attempt each, toward the dead-letter topic), and the local pool gives up
    restarting crashed workers after a few."""
    import threading

    from google.api_core import exceptions as gexc

    stop = threading.Event()

    class Client:
        pulls = 0

        def pull(self, request: dict[str, Any], timeout: float, retry: Any) -> Any:
            self.pulls += 1
            if self.pulls <= 2:
                raise getattr(gexc, error)("the service did not answer")
            stop.set()
            return type("Response", (), {"received_messages": []})()

    client = Client()
    puller = worker_mod._Puller(client, "projects/p/subscriptions/s", Worker(settings), lease_s=10, deadline_s=10)
    try:
        puller.run(stop)
    finally:
        puller.close(timeout=1)
    assert client.pulls == 3


@pytest.mark.parametrize("refused", [None, 3])
def test_a_pull_refused_as_resource_exhausted_asks_for_fewer_and_backs_off(settings: Settings,
                                                                           refused: int | None) -> None:
    """A response over the limit (or a quota exceeded) was answered by "pulling fewer", but the next pull asked for
    as many (the bound was max_bytes, 64 MiB, not the response limit) and came at once: hundreds of thousands of
    pulls a second, forever, against the quota that was exhausted."""
    import threading
    import time

    from google.api_core.exceptions import ResourceExhausted

    stop, fourth = threading.Event(), threading.Event()
    asked: list[int] = []

    class Client:
        def pull(self, request: dict[str, Any], timeout: float, retry: Any) -> Any:
            asked.append(request["max_messages"])
            if len(asked) >= 4:
                fourth.set()
            if refused is None or len(asked) <= refused:
                raise ResourceExhausted("Received message larger than max")
            if len(asked) >= 8:
                stop.set()
            return type("Response", (), {"received_messages": []})()

    puller = worker_mod._Puller(Client(), "projects/p/subscriptions/s", Worker(settings), lease_s=10, deadline_s=10)
    puller.largest = 1  # small messages seen already: the cap alone bounds a pull (the first asks for one otherwise)
    runner = threading.Thread(target=puller.run, args=(stop,))
    started = time.monotonic()
    runner.start()
    try:
        if refused is None:  # always refused: backing off 0.1, 0.2 and 0.4 s, it pulls a 4th time after 0.7 s, and
            # waits 5 s before a 5th. Awaited with a deadline (a busy machine stalls the puller's thread), then a
            # second more, in which a puller that does not wait pulls again.
            fourth.wait(5.0)
            stop.wait(1.0)
        else:
            stop.wait(10.0)  # until its 8th pull
    finally:
        stop.set()
        runner.join(10)
        puller.close(timeout=1)
    assert not runner.is_alive() and time.monotonic() - started < 8
    assert settings.inference.max_messages == 8
    if refused is None:
        assert asked == [8, 4, 2, 1], f"{len(asked)} pulls, asking for {sorted(set(asked))} messages"
    else:  # the refusals passed (a quota hit): it asks for as many as before again, not one at a time for good
        assert asked == [8, 4, 2, 1, 2, 4, 8, 8]


def test_a_dead_letter_drain_that_meets_an_outage_keeps_the_run_waiting(
        settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    """The drain runs inside the wait for a run's results: an outage there failed the whole score try."""
    from google.api_core.exceptions import InternalServerError

    from tenfold.inference import runs

    calls: list[int] = []

    def drain(settings: Settings, **kwargs: Any) -> list[tuple[str, str]]:
        calls.append(1)
        if len(calls) == 1:
            raise InternalServerError("Pub/Sub answered 500")
        return []

    monkeypatch.setattr(runs, "drain_dead_letters", drain)
    monkeypatch.setattr(runs, "DEAD_LETTER_POLL_S", 0.0)
    RunStore(runs.work_objects(settings), "k1").put_result("r1-000000", b"scored")
    acc = runs.wait_accounted(settings, "k1", ["r1-000000"])
    assert acc.accounted == 1 and calls == [1]


def test_a_worker_started_by_hand_without_google_credentials_says_so_in_one_line(tmp_path: Any) -> None:
    """`TENFOLD_ENV=dev python -m tenfold.inference.worker` on a laptop with no application-default credentials ended
    in DefaultCredentialsError's traceback (only OSError and ValueError were caught)."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith(("TENFOLD_", "GOOGLE_", "CLOUDSDK_"))}
    env.update(TENFOLD_ENV="dev", TENFOLD_HOME=str(tmp_path), GOOGLE_APPLICATION_CREDENTIALS=str(tmp_path / "none.json"),
               CLOUDSDK_CONFIG=str(tmp_path / "gcloud"), NO_GCE_CHECK="True", GCE_METADATA_HOST="127.0.0.1:9")
    done = subprocess.run([sys.executable, "-m", "tenfold.inference.worker"], env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 2, (done.returncode, done.stderr[-2000:])
    assert "Traceback" not in done.stderr and "gcloud auth application-default login" in done.stderr, done.stderr[-2000:]


def test_a_stopping_worker_hands_back_the_messages_it_pulled_but_never_started(make_settings: Any) -> None:
    """The handlers queued behind a slow one were cancelled at shutdown with their messages still leased: each waited
    out its lease (up to minutes) before another worker could have it, a delivery attempt spent either way."""
    import threading

    from google.pubsub_v1 import types

    settings = make_settings(inference={"handler_threads": 1})
    release, started = threading.Event(), threading.Event()
    stop = threading.Event()
    nacked: list[tuple[list[str], int]] = []

    class Client:
        def pull(self, request: dict[str, Any], timeout: float, retry: Any) -> Any:
            stop.set()  # one pull, of three messages
            return types.PullResponse(received_messages=[types.ReceivedMessage(
                ack_id=f"ack-{n}", delivery_attempt=1, message=types.PubsubMessage(data=b"x", message_id=f"m-{n}"))
                for n in range(3)])

        def modify_ack_deadline(self, request: dict[str, Any], retry: Any, timeout: float | None = None) -> None:
            nacked.append((list(request["ack_ids"]), request["ack_deadline_seconds"]))

    worker = Worker(settings)

    def slow(delivery: Any) -> None:
        started.set()
        release.wait(10)

    worker.handle = slow  # type: ignore[method-assign]
    puller = worker_mod._Puller(Client(), "projects/p/subscriptions/s", worker, lease_s=60, deadline_s=60)
    puller.run(stop)
    assert started.wait(10)
    try:
        assert puller.close(timeout=0.2) is False  # the first still runs
    finally:
        release.set()
    assert nacked == [(["ack-1", "ack-2"], 0)]


def test_a_nack_while_its_lease_is_being_extended_is_not_undone_by_the_extension(settings: Settings) -> None:
    """The keeper chose the messages to extend, let go of its lock and sent the extension: a handler's nack in
    between (deadline 0: redeliver now) was overwritten by the extension landing after it, and the message came back
    only after lease_s (120 s in the cloud), slowing poison messages to their dead letter. A nack of a message the
    extension does not carry does not wait for it."""
    import threading

    extending, release = threading.Event(), threading.Event()
    applied: list[tuple[str, int]] = []  # each deadline as Pub/Sub applies it, in order

    class Client:
        def modify_ack_deadline(self, request: dict[str, Any], retry: Any, timeout: float | None = None) -> None:
            if request["ack_deadline_seconds"] > 0:  # the keeper's extension: held in flight
                extending.set()
                assert release.wait(10)
            applied.extend((ack_id, request["ack_deadline_seconds"]) for ack_id in request["ack_ids"])

    puller = worker_mod._Puller(Client(), "projects/p/subscriptions/s", Worker(settings), lease_s=10, deadline_s=10)
    puller.tick_s = 0.01
    waiting = threading.Event()  # set when a nack waits on the puller's condition for the extension to return

    class Noted(threading.Condition):
        def wait(self, timeout: float | None = None) -> bool:
            if threading.current_thread().name == "nack-a1":
                waiting.set()
            return super().wait(timeout)

    puller.cond = Noted()

    def delivery(ack_id: str) -> Any:
        message = type("Message", (), {"message_id": ack_id, "data": b"x", "attributes": {}})()
        d = worker_mod._Delivery(puller, type("Received", (), {"ack_id": ack_id, "message": message,
                                                              "delivery_attempt": 1})())
        puller.in_hand[d.ack_id] = d
        return d

    carried = delivery("a1")
    puller.leaser.start()
    try:
        assert extending.wait(10)
        other = delivery("a2")  # pulled after the keeper chose: not in the extension on its way
        not_waiting = threading.Thread(target=other.nack)
        not_waiting.start()
        not_waiting.join(10)  # the extension is still held meanwhile: only a nack that waits for it stays here
        assert not not_waiting.is_alive() and applied == [("a2", 0)], \
            "a nack of a message the extension does not carry waited for it"
        nacking = threading.Thread(target=carried.nack, name="nack-a1")
        nacking.start()
        assert waiting.wait(10), "the nack of a message the extension carries did not wait for it"
        assert ("a1", 0) not in applied  # not sent while the extension is on its way
        release.set()
        nacking.join(10)
    finally:
        release.set()
        puller._stop_leases.set()
        puller.leaser.join(10)
        puller.close(timeout=1)
    assert [a for a in applied if a[0] == "a1"][-1] == ("a1", 0), applied  # the nack is what holds


def test_a_refused_request_whose_nack_fails_keeps_its_reason(settings: Settings) -> None:
    """The nack of a poison delivery failed (Pub/Sub away a moment) inside handle's own except, which recorded the
    delivery again: a second attempt entry, and the reason overwritten with "ServiceUnavailable: 503 ...", which the
    drain copies into the dead letter, where it must say why the request was refused."""
    from google.api_core.exceptions import ServiceUnavailable

    class Unsettled(Message):
        def nack(self) -> None:
            self.fate.append("nack")
            if self.fate.count("nack") == 1:
                raise ServiceUnavailable("Pub/Sub is away a moment")

    w = Worker(settings)
    message = Unsettled(_request(), attempt=3)
    message.data = b"not arrow"
    w.handle(message)
    error = RunStore(w.objects, "r1").error("r1-000000")
    assert error is not None and error["error"].startswith("RequestError"), error
    assert [(a["message_id"], a["delivery_attempt"]) for a in error["attempts"]] == [("m-1", 3)], error["attempts"]
    assert w.stats.failed == 1 and message.fate == ["nack"]  # not sent again by hand: its lease ends by itself


def test_a_pubsub_error_after_a_delivery_was_recorded_does_not_replace_its_reason(settings: Settings) -> None:
    """Whatever settles a recorded delivery: a Pub/Sub error of the same delivery is not the request's reason."""
    from google.api_core.exceptions import ServiceUnavailable

    from tenfold.inference.requests import RequestError

    w = Worker(settings)
    message, store = Message(_request(), attempt=2), RunStore(w.objects, "r1")
    w._record(store, "r1-000000", message, 2, RequestError("the body is not Arrow IPC"))
    w._record(store, "r1-000000", message, 2, ServiceUnavailable("503 the service is unavailable"))
    error = store.error("r1-000000")
    assert error is not None and error["error"] == "RequestError: the body is not Arrow IPC"
    assert len(error["attempts"]) == 1
    w._record(store, "r1-000000", message, 3, RuntimeError("CUDA out of memory"))  # the next delivery: recorded
    error = store.error("r1-000000")
    assert error is not None and error["error"].startswith("RuntimeError") and len(error["attempts"]) == 2


def test_a_duplicate_delivery_is_acked_only_once_its_result_is_on_disk(
        settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker killed between its result's link and its folder sync: the redelivery found the result and acked at
    once, and a power cut then lost the result with its message acknowledged."""
    import os

    from tenfold import storage

    events: list[Any] = []
    monkeypatch.setattr(storage, "fsync_dir", lambda path: events.append(("sync", Path(path))))
    w = Worker(settings)
    assert isinstance(w.objects, storage.FileObjects)
    results = w.objects.root / "r1" / "results"
    results.mkdir(parents=True)
    (results / ".killed-writer.tmp").write_bytes(b"scored")
    os.link(results / ".killed-writer.tmp", results / "r1-000000.parquet")  # linked, never synced

    class Duplicate(Message):
        def ack(self) -> None:
            events.append("ack")

    w.handle(Duplicate(_request(), attempt=2))
    assert w.stats.duplicates == 1 and "ack" in events
    assert ("sync", results) in events[:events.index("ack")], events


def test_a_worker_holds_no_more_bytes_than_max_bytes_and_one_message(make_settings: Any) -> None:
    """Each pull asked for min(max_bytes, PULL_BYTES) // largest messages without the bytes in hand, and ``largest``
    started at 1 byte: the first pull asked for max_messages whatever their size (here 8 of 600 bytes, 4,800 bytes
    against max_bytes 1,024)."""
    import threading
    import time

    settings = make_settings(inference={"max_bytes": 1024, "handler_threads": 1})
    stop, release = threading.Event(), threading.Event()
    asked: list[int] = []
    pulled = threading.Condition()

    class Client:
        def pull(self, request: dict[str, Any], timeout: float, retry: Any) -> Any:
            with pulled:
                asked.append(request["max_messages"])
                pulled.notify_all()
            received = [type("Received", (), {"ack_id": f"a{len(asked)}-{n}", "delivery_attempt": 1, "message": type(
                "Message", (), {"message_id": f"m{len(asked)}-{n}", "data": b"x" * 600, "attributes": {}})()})()
                for n in range(request["max_messages"])]
            return type("Response", (), {"received_messages": received})()

        def modify_ack_deadline(self, request: dict[str, Any], retry: Any, timeout: float | None = None) -> None:
            pass

    worker = Worker(settings)
    worker.handle = lambda delivery: release.wait(10)  # type: ignore[method-assign,assignment,return-value]
    puller = worker_mod._Puller(Client(), "projects/p/subscriptions/s", worker, lease_s=60, deadline_s=60)

    def held() -> int:
        with puller.cond:
            return sum(d.size for d in puller.in_hand.values())

    runner = threading.Thread(target=puller.run, args=(stop,))
    runner.start()
    try:
        deadline = time.monotonic() + 10
        while held() < settings.inference.max_bytes and time.monotonic() < deadline:
            time.sleep(0.01)
        # Full: the pull loop wakes every poll_s to look again, so a pull it should not make comes within one of
        # them; five rounds without one show that it stopped pulling.
        with pulled:
            pulls = len(asked)
            assert not pulled.wait_for(lambda: len(asked) > pulls, timeout=5 * puller.poll_s), asked
        in_hand = held()
    finally:
        stop.set()
        runner.join(10)
        release.set()
        puller.close(timeout=1)
    assert settings.inference.max_messages == 8
    assert 1024 <= in_hand <= 1024 + 600, (in_hand, asked)
    assert asked == [1, 1]


@pytest.mark.parametrize("how", ["environment", "settings file"])
def test_a_worker_with_invalid_settings_says_what_is_wrong_in_one_line(settings: Settings, tmp_path: Path,
                                                                       how: str) -> None:
    """It printed pydantic's whole dump, four to fifty lines ending in a link to pydantic's docs, where the pipelines
    print one line; a bad settings file is named, not the TENFOLD_* variables (it is not read from them)."""
    import json
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("TENFOLD_")}
    env.update(TENFOLD_ENV="local", TENFOLD_HOME=str(tmp_path))
    argv = [sys.executable, "-m", "tenfold.inference.worker"]
    if how == "environment":
        env["TENFOLD_LOCAL__PUBSUB_PORT"] = "abc"
    else:
        written = json.loads(settings.model_dump_json())
        written["local"]["pubsub_port"] = "abc"
        del written["inference"]
        (path := tmp_path / "inference-settings.json").write_text(json.dumps(written))
        argv += ["--settings-file", str(path)]
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)
    lines = done.stderr.splitlines()
    assert done.returncode == 2 and len(lines) == 1, (done.returncode, done.stderr[-3000:])
    assert "errors.pydantic.dev" not in done.stderr and "pubsub_port" in lines[0], lines
    if how == "environment":
        assert "TENFOLD_" in lines[0], lines
    else:
        assert str(path) in lines[0] and "Settings.inference: Field required" in lines[0], lines
        assert "TENFOLD_" not in lines[0], lines


def test_a_redelivery_that_records_its_error_takes_back_its_note_and_a_note_left_is_a_death(
        settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    """A redelivery notes that it starts (so a dead letter of a request that kills its worker names the crash); one
    that then records its error takes the note back, and its error stays the reason. A note found by the next
    delivery is a delivery that died: one of the attempts, with its pid."""
    import os

    from tenfold.inference.store import STARTED

    w = Worker(settings)
    monkeypatch.setattr(w.models, "get", lambda version: (_ for _ in ()).throw(
        ScoringError("model version v1 cannot be loaded: its weights do not match meta.json")))
    store = RunStore(w.objects, "r1")
    noted: list[Any] = []
    real_put = RunStore.put_error
    monkeypatch.setattr(RunStore, "put_error", lambda self, rid, record: (noted.append(dict(record)),
                                                                          real_put(self, rid, record))[1])
    w.handle(Message(_request(), attempt=2))
    assert noted[0][STARTED]["delivery_attempt"] == 2 and noted[0][STARTED]["pid"] == os.getpid()  # before scoring
    error = store.error("r1-000000")
    assert error is not None and STARTED not in error and "weights do not match" in error["error"]

    # Delivery 3 started (in a worker that then died: its note is left), delivery 4 refuses it.
    store.put_error("r1-000000", {**error, STARTED: {"delivery_attempt": 3, "message_id": "m-1", "pid": 4242,
                                                     "host": "h", "at": 1.0}})
    w.handle(Message(_request(), attempt=4))
    error = store.error("r1-000000")
    assert error is not None and STARTED not in error
    assert [(a["delivery_attempt"], a.get("died", False)) for a in error["attempts"]] == [(2, False), (3, True), (4, False)]
    assert "died during delivery 3 of this request (pid 4242 on h)" in error["attempts"][1]["error"]
    assert "weights do not match" in error["error"] and error["delivery_attempt"] == 4


def test_a_dead_letter_of_a_request_scored_by_its_last_delivery_is_no_death(settings: Settings) -> None:
    """A redelivery's note is not taken back when it scores: a last delivery that wrote its result and whose ack was
    lost (or came after its lease) is dead-lettered by Pub/Sub all the same, and its note read as "the worker died
    ... out of memory?". Without the result, the note left is the death it says."""
    from types import SimpleNamespace

    from tenfold.inference.runs import _record_dead_letter
    from tenfold.inference.store import STARTED

    store = RunStore(Worker(settings).objects, "r1")
    note = {STARTED: {"delivery_attempt": 5, "message_id": "m-1", "pid": 4242, "host": "h", "at": 1.0}}
    msg = SimpleNamespace(message_id="m-1", data=b"{}")
    for rid, scored in (("r1-000001", True), ("r1-000002", False)):
        store.put_error(rid, {"request_id": rid, "run": "r1", "attempts": [], **note})
        if scored:
            store.put_result(rid, b"result")
        assert _record_dead_letter(store, rid, msg, {}, 5)
    assert not str((store.dead_letter("r1-000001") or {}).get("error")).startswith("the worker died")
    assert str((store.dead_letter("r1-000002") or {}).get("error")).startswith("the worker died during delivery 5")
