"""Offline inference through the real Pub/Sub emulator and the real client: poison messages, a worker
SIGKILLed before its ack, lease extension for a slow batch, and a task retried after failing halfway.

Each test runs on settings of its own (a fresh lake and registry, and request topics and subscriptions of
its own on the session's emulator, with the shortest ack deadline Pub/Sub allows and no retry backoff), a
small registered flights model, and synthetic features. Waits are on conditions with deadlines.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import psutil
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pydantic import SecretStr

from tenfold.config import Settings
from tenfold.data.lake import Lake, Partition
from tenfold.inference.requests import REQUEST_ID, ROWS, RUN, request_id
from tenfold.inference.runs import expected_ids, partition_rows, publish_requests, wait_accounted
from tenfold.inference.store import RunStore
from tenfold.inference.worker import Worker
from tenfold.messaging.clients import publisher_client, topic_path

pytestmark = pytest.mark.integration

PART = Partition(2013, 3)
MAX_ATTEMPTS = 5
KEYS = ("year", "month", "day", "carrier", "flight", "origin", "time_hour")  # the flights contract's keys


def register_small_model(settings: Settings, directory: Path) -> str:
    """A small, untrained flights network registered in ``settings``' registry; returns its version."""
    import torch

    from tenfold.model import Preprocessor, save_model
    from tenfold.registry import Lineage, ModelRegistry, PartitionRef
    from tenfold.workloads.flights import WORKLOAD
    from tenfold.workloads.flights.contract import CONTRACT
    from tenfold.workloads.flights.model import FlightDelayModel, ModelConfig
    from tenfold.workloads.flights.synthetic import synthetic_features

    pre = Preprocessor.fit(synthetic_features(PART, 300, seed=1), CONTRACT)
    config = ModelConfig(embedding_dim=4, hidden=(8,), dropout=0.0)
    torch.manual_seed(0)
    save_model(directory, FlightDelayModel(config, list(pre.vocab_sizes.values()), pre.num_inputs), config, pre,
               workload=WORKLOAD.name)
    ref = PartitionRef(partition=PART.label, data_dir="data-synthetic", rows=300, schema_hash="synthetic",
                       run_id="inference-tests", manifest_sha256="0" * 64)
    lineage = Lineage(feature_table=settings.storage.features_table, train_partitions=(ref,), holdout_partitions=(),
                      training_config={"seed": 0}, run_id="inference-tests")
    return ModelRegistry(settings).register(directory, lineage, metrics={"auc": 0.6, "log_loss": 0.69}).version


class Setup:
    def __init__(self, settings: Settings, version: str, rows: int) -> None:
        self.settings, self.version, self.rows = settings, version, rows
        self.lake = Lake.from_settings(settings)

    def feature_rows(self) -> pa.Table:
        from tenfold.workloads import get_workload

        return partition_rows(self.lake, self.settings.storage.features_table, PART, get_workload(self.settings).contract)


@pytest.fixture
def make_setup(own_requests: Callable[..., Settings], tmp_path: Path) -> Callable[..., Setup]:
    """Settings of the test's own (see the module docstring) with ``rows`` features rows published."""
    from tenfold.workloads.flights.synthetic import publish_synthetic_features

    def make(rows: int, **inference: Any) -> Setup:
        settings = own_requests(MAX_ATTEMPTS, **inference)
        publish_synthetic_features(Lake.from_settings(settings), [PART], rows, seed=3)
        version = register_small_model(settings, tmp_path / f"model-{uuid.uuid4().hex[:8]}")
        return Setup(settings, version, rows)

    return make


@pytest.fixture
def worker_thread() -> Iterator[Callable[[Settings], Worker]]:
    """Start an in-process :class:`Worker` on its own thread (stopped after the test)."""
    running: list[tuple[threading.Event, threading.Thread]] = []

    def start(settings: Settings) -> Worker:
        worker = Worker(settings)
        stop, ready = threading.Event(), threading.Event()
        thread = threading.Thread(target=worker.run, args=(stop,), kwargs={"ready": ready}, daemon=True)
        thread.start()
        assert ready.wait(30), "the worker did not start pulling"
        running.append((stop, thread))
        return worker

    yield start
    for stop, thread in running:
        stop.set()
        thread.join(timeout=90)


def wait_for(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"{what} did not happen within {timeout:.0f} s")
        time.sleep(0.1)


def result_rows(store: RunStore, rid: str) -> pa.Table:
    data = store.result(rid)
    assert data is not None, f"request {rid} has no result"
    return pq.read_table(pa.BufferReader(data))


def test_poison_message_is_dead_lettered_after_exactly_the_configured_attempts(make_setup, worker_thread) -> None:
    setup = make_setup(199, rows_per_message=1)
    s = setup.settings
    run = f"poison-{uuid.uuid4().hex[:6]}"
    rows = setup.feature_rows()
    assert publish_requests(s, run, PART.label, setup.version, rows).requests == 199
    poison_id = request_id(run, PART.label, 199)
    publisher = publisher_client(s)
    # Its rows attribute is not a number either: draining the dead letters once failed on it (a raw ValueError,
    # nothing acknowledged, every drain after it failing the same way).
    publisher.publish(topic_path(s, s.messaging.requests_topic), b"this is not an Arrow stream",
                      **{RUN: run, REQUEST_ID: poison_id, "partition": PART.label, "model_version": setup.version,
                         ROWS: "ten"}).result(timeout=30)
    publisher.stop()

    worker_thread(s)
    ids = expected_ids(run, PART.label, 200)
    acc = wait_accounted(s, run, ids)

    assert acc.dead_lettered == (poison_id,)
    assert len(acc.scored) == 199
    store = RunStore.of(s, run)
    # Delivered exactly max_delivery_attempts times, each one recorded by the worker, then dead-lettered.
    error = store.error(poison_id)
    assert error is not None
    assert [a["delivery_attempt"] for a in error["attempts"]] == list(range(1, MAX_ATTEMPTS + 1))
    dead = store.dead_letter(poison_id)
    assert dead is not None and dead["delivery_attempts"] == MAX_ATTEMPTS and "not an Arrow IPC stream" in dead["error"]
    assert dead["rows"] is None and dead["attributes"][ROWS] == "ten"
    # The other 199: exactly one result row each, for their own row.
    keys = list(KEYS)
    for i, rid in enumerate(acc.scored):
        got = result_rows(store, rid)
        assert got.num_rows == 1
        assert got.select(keys).to_pylist() == rows.slice(i, 1).select(keys).to_pylist()

    # `tenfold dlq inspect` shows it with its error; `replay` re-publishes it (same request id), it fails its
    # five deliveries again and comes back to the dead letters, marked as dead-lettered twice.
    from tenfold.inference import dlq
    from tenfold.inference.runs import drain_dead_letters

    (shown,) = dlq.inspect(s, run=run)
    assert shown["request_id"] == poison_id and shown["delivery_attempts"] == MAX_ATTEMPTS and not shown["replayed"]
    # A mistyped run key or request id is refused before anything is sent (it said "0 re-published" and exited 0).
    with pytest.raises(dlq.DlqError, match="has no dead letters recorded"):
        dlq.replay(s, run=run + "-typo")
    with pytest.raises(dlq.DlqError, match=f"no dead letter has request id {poison_id}x in run"):
        dlq.replay(s, run=run, request_ids=[poison_id + "x"])
    assert not (store.dead_letter(poison_id) or {}).get("replayed")
    assert [r["request_id"] for r in dlq.replay(s, run=run)] == [poison_id]
    assert dlq.replay(s, run=run) == []  # marked replayed: not sent twice

    def back_in_dead_letters() -> bool:
        drain_dead_letters(s)
        return (store.dead_letter(poison_id) or {}).get("times_dead_lettered") == 2

    wait_for(back_in_dead_letters, 90, "the replayed poison message's return to the dead letters")
    assert (store.dead_letter(poison_id) or {}).get("times_dead_lettered") == 2
    assert len(store.result_ids()) == 199


def test_a_dead_letter_still_on_its_subscription_when_the_run_is_published_again_is_not_counted_dead(
        make_setup) -> None:
    """A request dead-lettered while a try of the publish task failed waits on the dead-letter subscription (no
    wait drains it yet); the retry sends it again. The wait then drained its old copy and recorded it as dead and
    not sent again: counted dead while its new copy was in flight, the run ended early. The publish now drains
    first, then marks what it sends again. (Pub/Sub's dead-lettering is stood for by publishing the old copy to the
    dead-letter topic with the attributes Pub/Sub adds; no worker runs, so the new copies stay in flight.)"""
    from tenfold.inference.runs import account, drain_dead_letters

    setup = make_setup(20, rows_per_message=10)
    s = setup.settings
    run = f"retried-{uuid.uuid4().hex[:6]}"
    dead_id = request_id(run, PART.label, 1)
    publisher = publisher_client(s)
    publisher.publish(topic_path(s, s.messaging.subscriptions["requests"].dead_letter_topic), b"the first copy",
                      **{RUN: run, REQUEST_ID: dead_id, "partition": PART.label, "model_version": setup.version,
                         ROWS: "10", "CloudPubSubDeadLetterSourceDeliveryCount": str(MAX_ATTEMPTS)}).result(timeout=30)
    publisher.stop()
    assert publish_requests(s, run, PART.label, setup.version, setup.feature_rows()).requests == 2  # the retry
    drain_dead_letters(s)  # what the run's wait does first
    store = RunStore.of(s, run)
    acc = account(store, expected_ids(run, PART.label, 2))
    assert acc.dead_lettered == () and acc.scored == (), "a request in flight again was counted dead"
    record = store.dead_letter(dead_id)
    assert record is not None and record["replayed"] and [r["by"] for r in record["replays"]] == ["publish"]


def test_a_dead_letter_without_a_request_id_says_why_it_was_refused(make_setup, worker_thread) -> None:
    """Pub/Sub gives a dead-lettered message a new message id: the dead letter of a message without a request id,
    once named by that id, missed the error the worker had recorded under the first one (`tenfold dlq inspect`:
    "(none recorded)"), and every replay of it that failed again left another record."""
    from tenfold.inference.runs import drain_dead_letters

    setup = make_setup(1, rows_per_message=1)
    s = setup.settings
    run = f"noid-{uuid.uuid4().hex[:6]}"
    publisher = publisher_client(s)
    publisher.publish(topic_path(s, s.messaging.requests_topic), b"garbage", **{RUN: run}).result(timeout=30)
    publisher.stop()
    worker_thread(s)
    store = RunStore.of(s, run)

    def drained() -> bool:
        drain_dead_letters(s)
        return bool(store.dead_letter_ids())

    wait_for(drained, 180, "the dead letter")
    (rid,) = store.dead_letter_ids()
    dead, error = store.dead_letter(rid), store.error(rid)
    assert dead is not None and dead["error"] is not None, f"the dead letter has no reason: {dead}"
    assert error is not None and dead["error"] == error["error"] and "are missing" in dead["error"]
    assert [a["delivery_attempt"] for a in error["attempts"]] == list(range(1, MAX_ATTEMPTS + 1))

    # Replayed (`tenfold dlq replay` adds its own attribute) and refused again: the same record, dead-lettered twice.
    from tenfold.inference.dlq import replay

    assert [sent["request_id"] for sent in replay(s, run=run)] == [rid]

    def again() -> bool:
        drain_dead_letters(s)
        record = store.dead_letter(rid)
        return record is not None and record.get("times_dead_lettered") == 2

    wait_for(again, 180, "the replay's dead letter")
    assert store.dead_letter_ids() == [rid]
    error = store.error(rid)
    assert error is not None and len(error["attempts"]) == 2 * MAX_ATTEMPTS


def test_worker_killed_after_scoring_before_ack_is_redelivered_without_duplicates(make_setup, tmp_path) -> None:
    from tenfold.inference.pool import WorkerPool, worker_name
    from tenfold.local import process

    setup = make_setup(300, rows_per_message=15, workers=1)
    s = setup.settings
    run = f"crash-{uuid.uuid4().hex[:6]}"
    rows = setup.feature_rows()
    report = publish_requests(s, run, PART.label, setup.version, rows)
    ready = tmp_path / "killed.json"
    store = RunStore.of(s, run)
    with WorkerPool(s, env={"TENFOLD_INFER_FAULT": f"at=before_ack,mode=kill,ready={ready}"}) as pool:
        wait_for(ready.exists, 120, "the worker's kill after its write")
        killed = json.loads(ready.read_text())
        wait_for(lambda: not process.is_running(pool.records[0]) or pool.records[0].pid != killed["pid"], 30,
                 "the SIGKILLed worker's exit")
        # Its result was written before the kill, and is what the redelivery must find, not replace.
        before = store.result(killed["what"])
        assert before is not None
        acc = wait_accounted(s, run, expected_ids(run, PART.label, report.requests), alive=pool.alive)
        assert pool.restarts >= 1
    assert len(acc.scored) == report.requests and not acc.dead_lettered
    assert store.result(killed["what"]) == before
    log = (s.local.home / "run" / f"{worker_name(0)}.log").read_text()
    assert f"request {killed['what']} of run {run}: result already written" in log  # redelivered, found, acked
    from tenfold.inference.runs import collect

    scored = collect(store, acc)
    assert scored.num_rows == rows.num_rows
    assert scored.group_by(list(KEYS)).aggregate([]).num_rows == rows.num_rows  # no row scored twice


@pytest.mark.parametrize("lease_s", [10, 60], ids=["lease-the-deadline", "lease-longer-than-the-deadline"])
def test_a_handler_slower_than_the_ack_deadline_keeps_its_lease(make_setup, worker_thread, tmp_path, monkeypatch,
                                                                lease_s) -> None:
    """Extended leases longer than the deadline (60 s against 10) still reach the message within its first 10 s:
    paced by the lease, the first extension came 20 s after the keeper's start, and the message came back."""
    setup = make_setup(10, rows_per_message=10, lease_extension_s=lease_s)
    s = setup.settings
    assert s.inference.lease_extension_s == lease_s
    assert s.messaging.subscriptions["requests"].ack_deadline_s == 10
    run = f"lease-{uuid.uuid4().hex[:6]}"
    # 20 s in the handler: twice the 10 s deadline, so only extended leases keep the message from coming back.
    monkeypatch.setenv("TENFOLD_INFER_FAULT", f"at=score,mode=slow,seconds=20,ready={tmp_path / 'slow.json'}")
    publish_requests(s, run, PART.label, setup.version, setup.feature_rows())
    worker = worker_thread(s)
    acc = wait_accounted(s, run, expected_ids(run, PART.label, 1))
    assert (tmp_path / "slow.json").exists()  # the slow handler did run
    wait_for(lambda: worker.stats.scored + worker.stats.duplicates >= 1, 30, "the handler's end")
    assert len(acc.scored) == 1
    assert worker.stats.received == 1, f"the message was redelivered while its handler ran: {worker.stats}"
    assert worker.stats.duplicates == 0


def _probe_subscription(settings) -> str:
    """A subscription of its own on the requests topic: a copy of every request published from now on."""
    import uuid

    from tenfold.messaging import subscriber_client, subscription_path, topic_path

    path = subscription_path(settings, f"probe-{uuid.uuid4().hex[:12]}")
    with subscriber_client(settings) as sub:
        sub.create_subscription(request={"name": path, "topic": topic_path(settings, settings.messaging.requests_topic)},
                                timeout=30)
    return path


def _pulled_ids(settings, subscription: str, quiet_s: float = 3.0) -> set[str]:
    """The request ids on ``subscription`` (acknowledged), pulled until none came for ``quiet_s`` seconds."""
    from tenfold.inference.requests import REQUEST_ID
    from tenfold.messaging import subscriber_client

    ids: set[str] = set()
    last = time.monotonic()
    with subscriber_client(settings) as sub:
        while time.monotonic() - last < quiet_s:
            resp = sub.pull(request={"subscription": subscription, "max_messages": 100}, timeout=10)
            if resp.received_messages:
                last = time.monotonic()
                ids |= {m.message.attributes[REQUEST_ID] for m in resp.received_messages}
                sub.acknowledge(request={"subscription": subscription,
                                         "ack_ids": [m.ack_id for m in resp.received_messages]})
            else:
                time.sleep(0.2)
    return ids


def test_a_task_that_fails_halfway_and_is_retried_publishes_what_a_clean_run_does(make_setup, tmp_path) -> None:
    from tenfold.pipelines import batch_inference as pipeline

    setup = make_setup(400, rows_per_message=20, workers=2)
    s = setup.settings
    lake = setup.lake
    conf = {"month": PART.label, "version": setup.version}

    def published_bytes() -> list[bytes]:
        return [lake.fs.open_input_file(p).readall() for p in lake.files(s.storage.scores_table, PART)]

    clean = pipeline.run_all(s, conf, run_id="clean")
    clean_bytes = published_bytes()
    assert clean["rows_out"] == 400 and clean["requests_dead_lettered"] == 0

    # The retried run: its publish task is SIGKILLed after 10 of its 20 requests (no cleanup runs, so what
    # the client had batched but not sent is lost), and is retried.
    planned = pipeline.plan(s, "retried", conf)
    (tmp_path / "settings.json").write_text(s.model_dump_json())
    (tmp_path / "run.json").write_text(json.dumps(planned.to_xcom()))
    killed = tmp_path / "killed.json"
    probe = _probe_subscription(s)
    child = subprocess.run(
        [sys.executable, "-c", textwrap.dedent("""
            import json, sys
            from tenfold.config import Settings
            from tenfold.pipelines import batch_inference as pipeline
            settings = Settings.model_validate_json(open(sys.argv[1]).read())
            pipeline.publish(settings, json.load(open(sys.argv[2])))
        """), str(tmp_path / "settings.json"), str(tmp_path / "run.json")],
        env={**os.environ, "TENFOLD_INFER_FAULT": f"at=publish,mode=kill,after=10,settle=2,ready={killed}"},
        capture_output=True, text=True, timeout=120)
    assert child.returncode == -signal.SIGKILL, child.stderr
    assert json.loads(killed.read_text())["at"] == "publish"
    # The fault landed mid-publish, after requests had left: the client batches (10 ms), and a kill on the 11th
    # publish without `settle` came before its first send (the probe held none), so the "retry" below was a clean
    # first run. A probe subscription, created before the killed attempt, holds a copy of what reached Pub/Sub.
    sent_before_the_kill = _pulled_ids(s, probe)
    assert len(sent_before_the_kill) == 10, sorted(sent_before_the_kill)  # killed at its 11th request
    pipeline.publish(s, planned)  # the retry: the same 20 request ids again
    resent = _pulled_ids(s, probe)
    assert len(resent) == 20 and sent_before_the_kill < resent  # the same ids again, the 10 sent before among them
    scored = pipeline.score(s, planned)
    retried = pipeline.publish_results(s, planned, scored)

    assert retried["rows_out"] == 400 and retried["requests_scored"] == 20
    assert published_bytes() == clean_bytes
    table = lake.read_table(s.storage.scores_table, [PART])
    assert table.num_rows == 400 and set(table.column("model_version").to_pylist()) == {setup.version}


def test_the_pool_preloads_the_run_model_and_reports_ready(make_setup) -> None:
    """batch_inference's pool loads the run's version before the first pull; a version that cannot be
    loaded is only logged (each request naming it is refused as before), and the worker still pulls."""
    from tenfold.inference.pool import WorkerPool, worker_name
    from tenfold.local import process

    setup = make_setup(30, rows_per_message=15, workers=1)
    hook = "http://127.0.0.1:9/hooks/tenfold-pool-test-secret"
    # The task's settings and environment name an alert webhook, which a worker (it never alerts) must not get.
    s = setup.settings.model_copy(update={"monitoring": setup.settings.monitoring.model_copy(
        update={"alert_webhook_url": SecretStr(hook)})})
    log_path = s.local.home / "run" / f"{worker_name(0)}.log"
    for ref, expected in ((setup.version, f"model {setup.version} loaded in"),
                          ("no-such-version", "could not preload model no-such-version")):
        log_path.unlink(missing_ok=True)
        with mock.patch.dict(os.environ, {"TENFOLD_ALERT_WEBHOOK": hook}), WorkerPool(s, workers=1, preload=ref) as pool:
            assert pool.wait_ready(120), "the worker never reported ready"
            assert pool.ready() == 1
            environ = psutil.Process(pool.records[0].pid).environ()
            assert process.MARKER_ENV in environ and not [k for k, v in environ.items() if hook in v], sorted(environ)
            assert hook not in pool.settings_path.read_text()
            log = log_path.read_text()
            assert expected in log, log[-2000:]
            assert log.index(expected) < log.index("worker pulling"), "the model loads before the first pull"
        assert pool.ready() == 0  # stopped: the ready marker is gone with the worker
