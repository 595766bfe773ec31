"""The sink against a Pub/Sub that times out, throttles or refuses an acknowledgement.

The emulator never does, so :class:`FakeSubscriber` is a real gRPC server on loopback serving
``google.pubsub.v1.Subscriber`` (Pull, Acknowledge, ModifyAckDeadline), as ``test_cloud_metrics`` fakes Cloud
Monitoring: the sink's real client builds, sends and parses the real protobuf messages, and the fake answers
an acknowledgement with the status codes Pub/Sub uses.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from typer.testing import CliRunner

from tenfold.data.lake import Lake, Partition
from tenfold.feedback import cli as feedback_cli
from tenfold.feedback.log import read_log
from tenfold.feedback.schema import PREDICTIONS_LOG

from .conftest import T0, FakeSubscriber, feedback, prediction


@pytest.fixture
def pubsub(settings: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[FakeSubscriber, Any]]:
    fake = FakeSubscriber()
    faked = settings.model_copy(update={"messaging": settings.messaging.model_copy(
        update={"emulator_host": f"127.0.0.1:{fake.port}"})})
    monkeypatch.setattr(feedback_cli, "command_settings", lambda env=None: faked)
    sub = f"projects/{faked.project_id}/subscriptions/{faked.messaging.subscriptions['predictions'].name}"
    fake.publish(sub, prediction("a", at=T0).to_message())
    yield fake, faked
    fake.server.stop(0)


def _sink(*args: str) -> Any:
    return CliRunner().invoke(feedback_cli.app, ["sink", "--once", "--no-join", *args])


def _landed(settings: Any) -> list[str]:
    lake = Lake.from_settings(settings)
    return read_log(lake, settings.storage.predictions_table, [Partition(2026, 5)], PREDICTIONS_LOG)[
        "prediction_id"].to_pylist()


def test_an_acknowledgement_that_times_out_or_is_throttled_is_retried(pubsub):
    """A timed-out acknowledge crashed the sink with a raw DeadlineExceeded (only a pull's timeout meant
    anything), and ResourceExhausted was not retried at all."""
    fake, settings = pubsub
    fake.ack_refusals = [grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.RESOURCE_EXHAUSTED]
    result = _sink("--pubsub-retry-s", "30")
    assert result.exit_code == 0, (result.output, result.exception)
    assert fake.acked == ["ack-1"] and fake.ack_refusals == []
    assert _landed(settings) == ["a"]


def test_an_acknowledgement_that_keeps_timing_out_is_exit_1_naming_it_and_the_batch_is_kept(pubsub):
    fake, settings = pubsub
    fake.ack_always = grpc.StatusCode.DEADLINE_EXCEEDED
    result = _sink("--pubsub-retry-s", "1")
    assert result.exit_code == 1, (result.output, result.exception)
    assert isinstance(result.exception, SystemExit)  # an error line, not a traceback
    assert f"cannot reach 127.0.0.1:{fake.port} for 1 s to acknowledge 1 predictions message(s)" in result.output
    assert "DeadlineExceeded" in result.output
    assert fake.acked == [] and _landed(settings) == ["a"], "written before the ack: redelivered, never lost"


def test_a_pubsub_that_does_not_answer_a_drain_is_exit_1_not_an_empty_subscription(pubsub):
    """A pull asked to return at once that met its deadline was taken for "nothing to pull": against a hung emulator
    `--until-idle` printed "pulled": 0 and exit 0, and the platform's sink idled without a word."""
    fake, _ = pubsub
    fake.hang_s = 2.0
    result = CliRunner().invoke(feedback_cli.app, ["sink", "--until-idle", "--no-join", "--pubsub-retry-s", "1",
                                                   "--pull-wait-s", "0.5"])
    assert result.exit_code == 1, (result.output, result.exception)
    assert isinstance(result.exception, SystemExit)
    assert f"cannot reach 127.0.0.1:{fake.port} for 1 s to pull predictions (DeadlineExceeded" in result.output
    assert fake.acked == []


def test_a_running_sink_whose_pubsub_stops_answering_is_exit_1_not_idle_for_ever(pubsub):
    """The running sink's held pulls: one that ran out its wait was taken for an empty subscription, so against a hung
    emulator the platform's sink idled for ever without a word. Stopped by SIGTERM after 20 s if it still idles."""
    import os
    import signal
    import threading

    fake, _ = pubsub
    fake.hang_s = 2.0
    safety = threading.Timer(20, os.kill, (os.getpid(), signal.SIGTERM))  # the sink's own stop: exit 0 with counts
    safety.start()
    try:
        result = CliRunner().invoke(feedback_cli.app, ["sink", "--no-join", "--pubsub-retry-s", "1",
                                                       "--pull-wait-s", "0.5"])
    finally:
        safety.cancel()
    assert result.exit_code == 1, (result.output, result.exception)
    assert isinstance(result.exception, SystemExit)
    assert f"cannot reach 127.0.0.1:{fake.port} for 1 s to pull predictions (DeadlineExceeded" in result.output


def test_an_error_pubsub_gives_that_the_sink_does_not_retry_is_exit_1_with_what_it_said(pubsub):
    fake, _ = pubsub
    fake.ack_always = grpc.StatusCode.INVALID_ARGUMENT
    result = _sink()
    assert result.exit_code == 1, (result.output, result.exception)
    assert isinstance(result.exception, SystemExit)
    assert "Pub/Sub refused the sink (InvalidArgument" in result.output and "acknowledge: INVALID_ARGUMENT" in result.output


def test_a_lake_that_cannot_be_written_is_found_before_anything_is_pulled(pubsub):
    """A sink restarted while the lake stayed away (a full disk, a bucket that refuses it) pulled the batch, held it
    for write_retry_s, gave up and handed it back: every restart spent a delivery attempt of each message, and after
    five, good predictions went to the dead-letter topic (on the emulator, nowhere)."""
    from pathlib import Path

    from tenfold.feedback.sink import FeedbackSink, SinkError, SinkOptions

    fake, settings = pubsub
    blocker = Path(Lake.from_settings(settings).root) / settings.storage.predictions_table
    blocker.parent.mkdir(parents=True, exist_ok=True)
    blocker.write_text("a file where the table's folder must go: every write fails")
    for _ in range(3):  # three restarts
        with FeedbackSink(settings, SinkOptions(write_retry_s=0.5)) as sink, \
                pytest.raises(SinkError, match="nothing was pulled, so no message spent a delivery attempt"):
            sink.poll_once()
    assert sum(len(q) for q in fake.queued.values()) == 1, "the sink pulled while it could not write"
    assert fake.acked == []
    blocker.unlink()
    with FeedbackSink(settings, SinkOptions(write_retry_s=0.5)) as sink:
        assert sink.poll_once() == 1
    assert fake.acked == ["ack-1"] and _landed(settings) == ["a"]
    assert not [p.name for p in blocker.iterdir() if p.name.startswith("_probe-")]  # the probes removed


def test_a_nearly_full_lake_disk_is_found_before_anything_is_pulled(pubsub, small_disk):
    """A disk with a few KiB left took the probe's five bytes, so the sink pulled a batch whose file it could not
    write, held it for write_retry_s and handed it back: each restart spent a delivery attempt of every message, on a
    real full disk as on a folder in the way."""
    from tenfold.feedback.sink import FeedbackSink, SinkError, SinkOptions

    fake, settings = pubsub
    on_small = settings.model_copy(update={"storage": settings.storage.model_copy(
        update={"lake_uri": small_disk.path.as_uri()})})
    small_disk.fill(leave=16 * 1024)
    options = SinkOptions(write_retry_s=0.5, max_messages=100)  # a batch may need 100 KiB
    with FeedbackSink(on_small, options) as sink, pytest.raises(SinkError) as refused:
        sink.poll_once()
    assert "KiB free, under the 100 KiB a batch may take" in str(refused.value)
    assert "nothing was pulled" in str(refused.value)
    assert sum(len(q) for q in fake.queued.values()) == 1 and fake.acked == [], "the sink pulled while it could not write"
    small_disk.free()
    with FeedbackSink(on_small, options) as sink:
        assert sink.poll_once() == 1
    assert fake.acked == ["ack-1"] and _landed(on_small) == ["a"]


def test_a_stop_while_the_lake_refuses_a_pulled_batch_ends_the_run_with_nothing_acknowledged(pubsub):
    """A SIGTERM while the lake refused a pulled batch was noticed only when the write retry gave up (write_retry_s,
    120 s: past the 90 s a stop gives before SIGKILL), and the sink then exited 1. The month's folder is a file here:
    the probe (in the table's folder) passes, the batch's write fails for real."""
    import threading
    from pathlib import Path

    from tenfold.feedback.sink import FeedbackSink, SinkOptions

    fake, settings = pubsub
    table = Path(Lake.from_settings(settings).table_path(settings.storage.predictions_table))
    table.mkdir(parents=True)
    (table / "year=2026").write_text("a file where the month's folder must go: the batch's write fails")
    import logging

    stop = threading.Event()

    class StopOnRefusedWrite(logging.Handler):  # the stop arrives once the lake has refused the pulled batch
        def emit(self, record: logging.LogRecord) -> None:
            if record.getMessage().startswith("lake write of ") and "probe" not in record.getMessage():
                stop.set()

    handler, sink_log = StopOnRefusedWrite(), logging.getLogger("tenfold.feedback.sink")
    sink_log.addHandler(handler)
    started = time.monotonic()
    try:
        with FeedbackSink(settings, SinkOptions(write_retry_s=30, pull_wait_s=0.5)) as sink:
            stats = sink.run(stop)
    finally:
        sink_log.removeHandler(handler)
    assert stop.is_set(), "the lake never refused the batch: the test did not exercise a stop while retrying"
    assert time.monotonic() - started < 10, "the stop waited for the write retry to give up"
    assert stats["predictions"].pulled == 1 and stats["predictions"].landed == 0
    assert fake.acked == [], "a batch that was never written was acknowledged"


@pytest.mark.parametrize("stopped", ["before it starts", "after its first round"])
def test_a_stopped_run_lands_what_the_subscriptions_still_hold_before_it_returns(own_topology, stopped):
    """`tenfold down` stops the replicas, then the sink, then the Pub/Sub emulator, which keeps messages in memory
    only: run() finished the batch in hand and returned, and every sampled prediction and label still in the
    subscriptions was gone with the emulator. The real emulator, a backlog of several batches on each subscription."""
    import threading

    from tenfold.feedback.schema import FEEDBACK_LOG
    from tenfold.feedback.sink import FeedbackSink, SinkOptions
    from tenfold.messaging import publisher_client, topic_path

    from .conftest import feedback

    settings, msg = own_topology, own_topology.messaging
    pub = publisher_client(settings)
    try:
        sent = [pub.publish(topic_path(settings, msg.predictions_topic), prediction(f"p{i}").to_message())
                for i in range(35)]
        sent += [pub.publish(topic_path(settings, msg.feedback_topic), feedback(f"p{i}", i % 2).to_message())
                 for i in range(12)]
        for future in sent:
            future.result(timeout=30)
    finally:
        pub.transport.close()
    stop = threading.Event()
    if stopped == "before it starts":
        stop.set()
    with FeedbackSink(settings, SinkOptions(max_messages=10, pull_wait_s=1.0)) as sink:
        stats = sink.run(stop, after_round=stop.set)
    lake, may = Lake.from_settings(settings), Partition(2026, 5)
    assert sorted(_landed(settings)) == sorted(f"p{i}" for i in range(35)), "predictions were left in Pub/Sub"
    assert read_log(lake, settings.storage.feedback_table, [may], FEEDBACK_LOG).num_rows == 12, "labels were left"
    assert stats["predictions"].acked == 35 and stats["feedback"].acked == 12


@pytest.fixture
def own_signal_handlers() -> Iterator[None]:
    """This process's SIGTERM/SIGINT handlers put back after the test (the sink command installs its own)."""
    import signal

    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)


@pytest.fixture
def stopped_sink(pubsub: tuple[FakeSubscriber, Any], own_signal_handlers: None) -> tuple[FakeSubscriber, Any]:
    """The pubsub fixture, with the labelled table's staging folder a file, so that every join fails with the lake's own
    OSError; and this process's SIGTERM/SIGINT handlers put back after the test."""
    from pathlib import Path

    fake, settings = pubsub
    lake = Lake.from_settings(settings)
    blocked = Path(lake.staging_path(settings.storage.labelled_table, Partition(2026, 5), "x")).parents[2]
    blocked.parent.mkdir(parents=True, exist_ok=True)
    blocked.write_text("a file where the labelled table's staging folder must go: every join fails")
    return fake, settings


def _sigterm_self() -> None:
    """A real SIGTERM to this process, once the sink command's handler is in place (never the default: it would kill
    the test run)."""
    import os
    import signal

    assert signal.getsignal(signal.SIGTERM) not in (signal.SIG_DFL, None), "the sink's SIGTERM handler is not in place"
    os.kill(os.getpid(), signal.SIGTERM)


def _stop_after_a_round(monkeypatch: pytest.MonkeyPatch) -> None:
    """The sink's run stopped by a real SIGTERM (:func:`_sigterm_self`) once its first round, join included, is done."""
    from tenfold.feedback.sink import FeedbackSink

    real_run = FeedbackSink.run

    def run_stopped_after_a_round(self, stop, *, after_round=None):
        def round_then_sigterm() -> None:
            after_round()
            _sigterm_self()

        return real_run(self, stop, after_round=round_then_sigterm)

    monkeypatch.setattr(FeedbackSink, "run", run_stopped_after_a_round)


def test_a_sigterm_while_the_lake_refuses_a_batch_exits_0_with_the_counts_and_no_last_join(stopped_sink):
    """The sink landed a prediction, then the lake refused the feedback batch, and a SIGTERM ended that retry: run()
    returned, but the command still ran its last join against the refusing lake, which raised and made the stop exit 1
    with the sink's counts unprinted (on GCS the join's lock wait could outlast the 90 s before SIGKILL). The feedback
    month's folder and the labelled staging folder are files: the writes fail for real."""
    import json
    import logging
    from pathlib import Path

    fake, settings = stopped_sink
    feedback_sub = f"projects/{settings.project_id}/subscriptions/{settings.messaging.subscriptions['feedback'].name}"
    fake.publish(feedback_sub, feedback("a", 1).to_message())
    table = Path(Lake.from_settings(settings).table_path(settings.storage.feedback_table))
    table.mkdir(parents=True)
    (table / "year=2026").write_text("a file where the month's folder must go: the feedback batch's write fails")

    class StopOnRefusedWrite(logging.Handler):  # the SIGTERM arrives once the lake has refused the pulled feedback
        def emit(self, record: logging.LogRecord) -> None:
            if record.getMessage().startswith("lake write of 1 feedback"):
                _sigterm_self()

    handler, sink_log = StopOnRefusedWrite(), logging.getLogger("tenfold.feedback.sink")
    sink_log.addHandler(handler)
    started = time.monotonic()
    try:
        result = CliRunner().invoke(feedback_cli.app, ["sink", "--pull-wait-s", "0.5", "--join-every-s", "0"])
    finally:
        sink_log.removeHandler(handler)
    assert time.monotonic() - started < 20, "the stop waited for the write retry to give up"
    assert result.exit_code == 0, (result.output, result.exception)
    out = json.loads(result.stdout)["sink"]
    assert out["predictions"]["landed"] == 1 and out["feedback"]["pulled"] == 1 and out["feedback"]["acked"] == 0
    assert "stopped while retrying the lake or Pub/Sub, so no last join" in result.stderr
    assert fake.acked == ["ack-1"], "only the written prediction is acknowledged; the feedback is redelivered"


def test_a_last_join_the_lake_refuses_warns_and_the_stop_still_exits_0(stopped_sink, monkeypatch):
    """Stopped between rounds (no retry under way), the sink's last join met a lake that refused it: the join's OSError
    made the stop exit 1 with the counts unprinted, though everything landed is in the logs for the next sink to join.
    A real sink and a real SIGTERM after its first round; the labelled staging folder is a file."""
    import json

    fake, _ = stopped_sink
    _stop_after_a_round(monkeypatch)
    result = CliRunner().invoke(feedback_cli.app, ["sink", "--pull-wait-s", "0.5", "--join-every-s", "0"])
    assert result.exit_code == 0, (result.output, result.exception)
    assert json.loads(result.stdout)["sink"]["predictions"]["landed"] == 1
    assert "warning: join failed" in result.stderr  # the round's join met the same lake
    assert "warning: the last join failed (" in result.stderr and "the next sink joins what landed" in result.stderr
    assert fake.acked == ["ack-1"]


def _gcs_forbidden() -> Exception:
    from google.api_core.exceptions import Forbidden

    return Forbidden("GET https://storage.googleapis.com/storage/v1/b/lake/o/x: caller does not have "
                     "storage.objects.get access")


def _gcs_retries_ran_out() -> Exception:
    from google.api_core.exceptions import RetryError, ServiceUnavailable

    return RetryError("Timeout of 120.0s exceeded", ServiceUnavailable("503 Backend Error"))


def _token_refresh_refused() -> Exception:
    from google.auth.exceptions import RefreshError

    return RefreshError("invalid_grant: Token has been expired or revoked.")


@pytest.mark.parametrize("fault", [_gcs_forbidden, _gcs_retries_ran_out, _token_refresh_refused])
def test_a_join_gcs_refuses_warns_naming_the_lake_and_the_stop_still_exits_0(pubsub, own_signal_handlers, monkeypatch,
                                                                              fault):
    """On gs:// every join reads the published month's checksums through the storage client (``Lake.files(verify=
    True)``), which raises Google's own errors, not the lake's: a 403 Forbidden, its retries run out (RetryError), a
    token it cannot refresh. The running sink's join let them out of run(): the command said "Pub/Sub refused the sink"
    (or that credentials were missing, or a traceback for a RetryError), exit 1, its counts unprinted. The lake's
    checksum read raises what the storage client raises; a real sink and a real SIGTERM after its first round, whose
    join fails, then the last join fails too."""
    import json

    fake, settings = pubsub
    real_files = Lake.files
    checksum_reads: list[str] = []

    def files_gcs_refuses(self, table, part, *, verify=False, manifest=None):
        if verify:
            checksum_reads.append(table)
            raise fault()
        return real_files(self, table, part, verify=verify, manifest=manifest)

    monkeypatch.setattr(Lake, "files", files_gcs_refuses)
    _stop_after_a_round(monkeypatch)
    result = CliRunner().invoke(feedback_cli.app, ["sink", "--pull-wait-s", "0.5", "--join-every-s", "0"])
    assert result.exit_code == 0, (result.output, result.exception)
    assert json.loads(result.stdout)["sink"]["predictions"]["landed"] == 1
    name = type(fault()).__name__
    lake = f"the lake at {settings.storage.lake_uri} failed it ({name}: "
    assert f"warning: join failed, trying again in 0 s: {lake}" in result.stderr, result.stderr
    assert f"warning: the last join failed ({lake}" in result.stderr, result.stderr
    assert "the next sink joins what landed" in result.stderr
    assert "Pub/Sub" not in result.stderr, result.stderr
    assert checksum_reads == [settings.storage.labelled_table] * 2  # the round's join and the last one
    assert fake.acked == ["ack-1"]
