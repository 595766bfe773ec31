"""The feedback loop against Google's real Pub/Sub emulator: duplicated, late, redelivered and poison messages.

Each test provisions topics and subscriptions of its own through ``ensure_topology`` (the same code as
``tenfold up``), with the smallest ack deadline (10 s) and no retry backoff so redeliveries come quickly;
everything else is as in settings. Messages are published with the real client as the server does.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from tenfold.config import Settings
from tenfold.config.settings import SubscriptionSettings
from tenfold.data.lake import Lake, Partition
from tenfold.feedback import cli as feedback_cli
from tenfold.feedback.log import log_months, read_log
from tenfold.feedback.metrics import labelled_rows, online_metrics
from tenfold.feedback.schema import FEEDBACK_LOG, PREDICTIONS_LOG
from tenfold.feedback.sink import FeedbackSink, SinkOptions
from tenfold.feedback.upsert import join
from tenfold.messaging import ensure_topology, publisher_client, subscriber_client, subscription_path, topic_path
from tenfold.messaging.records import FeedbackRecord, PredictionRecord

pytestmark = pytest.mark.integration

T0 = dt.datetime.now(dt.UTC).replace(microsecond=0) - dt.timedelta(hours=2)
REQUEST = {"carrier": "UA", "flight": 1545, "origin": "EWR", "dest": "IAH", "sched_dep": "2013-01-01T05:15:00"}
FAST = SinkOptions(idle_s=1.0, poll_interval_s=0.1)


@pytest.fixture
def fb_settings(make_settings, local_settings) -> Settings:
    """Settings on a fresh lake with a predictions and a feedback topic and subscription of this test's own."""
    tag = f"fb-{uuid.uuid4().hex[:8]}"

    def sub(kind: str) -> SubscriptionSettings:
        return SubscriptionSettings(name=f"{tag}-{kind}-sink", topic=f"{tag}-{kind}", dead_letter_topic=f"{tag}-{kind}-dl",
                                    dead_letter_subscription=f"{tag}-{kind}-dl-sub", ack_deadline_s=10,
                                    min_retry_backoff_s=0, max_retry_backoff_s=0)

    subs = {"predictions": sub("predictions"), "feedback": sub("feedback")}
    settings = make_settings(on=local_settings, messaging={
        "predictions_topic": subs["predictions"].topic, "feedback_topic": subs["feedback"].topic, "subscriptions": subs})
    ensure_topology(settings)
    return settings


def _prediction(pid: str, p: float, version: str = "v1", arm: str = "stable", at: dt.datetime = T0) -> PredictionRecord:
    return PredictionRecord(prediction_id=pid, model_version=version, arm=arm, probability=p, served_at=at,
                            request={**REQUEST, "user_key": f"u-{pid}"}, user_key=f"u-{pid}", bucket=3, latency_ms=2.5)


def _feedback(pid: str, outcome: int, observed: dt.datetime | None = None, received: dt.datetime | None = None) -> FeedbackRecord:
    return FeedbackRecord(prediction_id=pid, outcome=outcome, observed_at=observed,
                          received_at=received or T0 + dt.timedelta(minutes=30))


def _publish(settings: Settings, topic: str, *messages: PredictionRecord | FeedbackRecord | bytes) -> None:
    pub = publisher_client(settings)
    try:
        futures = [pub.publish(topic_path(settings, topic), m) if isinstance(m, bytes)
                   else pub.publish(topic_path(settings, topic), m.to_message(), **m.attributes()) for m in messages]
        for f in futures:
            f.result(timeout=30)
    finally:
        pub.transport.close()


def _pull_all(settings: Settings, subscription: str) -> list[bytes]:
    """Everything a subscription still holds (acknowledged, so it is gone)."""
    out: list[bytes] = []
    with subscriber_client(settings) as sub:
        path = subscription_path(settings, subscription)
        while True:
            resp = sub.pull(request={"subscription": path, "max_messages": 100, "return_immediately": True}, timeout=10)
            if not resp.received_messages:
                return out
            out += [m.message.data for m in resp.received_messages]
            sub.acknowledge(request={"subscription": path, "ack_ids": [m.ack_id for m in resp.received_messages]})


def _held(settings: Settings, subscription: str) -> int:
    """How many messages ``subscription`` holds now; each is handed back at once (nothing consumed)."""
    with subscriber_client(settings) as sub:
        path = subscription_path(settings, subscription)
        resp = sub.pull(request={"subscription": path, "max_messages": 100, "return_immediately": True}, timeout=10)
        if resp.received_messages:
            sub.modify_ack_deadline(request={"subscription": path, "ack_deadline_seconds": 0,
                                             "ack_ids": [m.ack_id for m in resp.received_messages]})
        return len(resp.received_messages)


def _log(settings: Settings, which: str):
    lake = Lake.from_settings(settings)
    table = getattr(settings.storage, f"{which}_table")
    return read_log(lake, table, log_months(lake, table), PREDICTIONS_LOG if which == "predictions" else FEEDBACK_LOG)


def _labelled(settings: Settings) -> dict[str, dict]:
    rows = labelled_rows(settings, include_unlabelled=True).to_pylist()
    assert len(rows) == len({r["prediction_id"] for r in rows}), "two labelled rows for one prediction id"
    return {r["prediction_id"]: r for r in rows}


# Feedback bodies the sink must dead-letter, not land: an outcome out of range, a time with no UTC equivalent
# (year 1 at +14:00: converting it overflows) and a schema version the log's int16 column cannot hold. The last
# two crashed the sink once (nothing acknowledged, the batch redelivered to the next crash).
FEEDBACK_POISON = (
    b'{"prediction_id": "p9", "outcome": 7}',
    b'{"prediction_id": "p9", "outcome": 1, "observed_at": "0001-01-01T00:00:00+14:00", "received_at": "2013-01-01T00:00:00Z"}',
    b'{"schema_version": 70000, "prediction_id": "p9", "outcome": 1, "received_at": "2013-01-01T00:00:00Z"}',
)


def test_duplicate_late_and_poison_messages_leave_one_labelled_row_per_prediction(fb_settings):
    s, msg = fb_settings, fb_settings.messaging
    later = T0 + dt.timedelta(minutes=50)
    # All the feedback first (late feedback: its predictions are not sampled yet), with duplicates:
    # p0's record twice (a publisher retry), p1 corrected by a later observation, and a poison message.
    outcomes = {"p0": 1, "p1": 0, "p2": 1, "p3": 0, "p4": 1, "p5": 1, "p6": 0, "p7": 1}
    _publish(s, msg.feedback_topic, *(_feedback(pid, y) for pid, y in outcomes.items() if pid != "p1"),
             _feedback("p0", 1), _feedback("p1", 1, observed=T0), _feedback("p1", 0, observed=later),
             *FEEDBACK_POISON)
    _publish(s, msg.predictions_topic, b"not json at all")
    with FeedbackSink(s, FAST) as sink:
        # The poison messages use up their attempts (the emulator redelivers a nacked message after a back-off of
        # its own) and move to the dead-letter topics: drained until they have, not for a guessed idle time.
        # (The emulator forwards a message to its dead-letter topic at the delivery after its last attempt, so the
        # sink pulls on until every one is there.)
        poison = {"predictions": 1, "feedback": len(FEEDBACK_POISON)}
        dead: dict[str, list[bytes]] = {k: [] for k in poison}

        def dead_lettered(_: Any) -> bool:
            for k in dead:
                dead[k] += _pull_all(s, msg.subscriptions[k].dead_letter_subscription)
            return all(len(dead[k]) >= n for k, n in poison.items())

        _drain_until(sink, dead_lettered)
        assert join(s).months == [] and _labelled(s) == {}  # nothing served yet: the feedback waits in its log

        probabilities = {"p0": 0.9, "p1": 0.6, "p2": 0.3, "p3": 0.2, "p4": 0.8, "p5": 0.4, "p6": 0.7, "p7": 0.55,
                         "p8": 0.1, "p9": 0.5}
        _publish(s, msg.predictions_topic,
                 *(_prediction(pid, p, *(("v1", "stable") if pid < "p5" else ("v2", "canary")))
                   for pid, p in probabilities.items()))
        sink.drain()
    stats = sink.stats
    report = join(s)

    rows = _labelled(s)
    assert sorted(rows) == sorted(probabilities)  # every prediction published, exactly once
    assert {pid: rows[pid]["outcome"] for pid in outcomes} == outcomes  # p1: the later observation (0) won
    assert rows["p8"]["outcome"] is None and rows["p9"]["outcome"] is None and rows["p1"]["feedback_records"] == 2
    assert rows["p0"]["feedback_records"] == 1 and rows["p0"]["probability"] == 0.9
    assert report.months[0].labelled == 8

    # The poison messages were delivered max_delivery_attempts times, never acknowledged, and dead-lettered.
    for stream, bodies in (("predictions", [b"not json at all"]), ("feedback", list(FEEDBACK_POISON))):
        spec = msg.subscriptions[stream]
        assert stats[stream].poison_messages == len(bodies)
        assert stats[stream].poison == spec.max_delivery_attempts * len(bodies)
        assert sorted(dead[stream]) == sorted(bodies) and _pull_all(s, spec.dead_letter_subscription) == []
        assert _pull_all(s, spec.name) == []  # nothing else left behind
    assert stats["predictions"].acked == 10 and stats["feedback"].acked == 10

    # Online accuracy by hand. v1 (p0-p4): p .9 .6 .3 .2 .8 for 1 0 1 0 1: right at 0.5: p0 p3 p4 (3/5);
    # v2 (p5-p9): p5 .4->1 wrong, p6 .7->0 wrong, p7 .55->1 right; p8, p9 have no outcome.
    got = {g.group["model_version"]: g for g in online_metrics(s, T0, T0 + dt.timedelta(hours=1))}
    v1, v2 = got["v1"].metrics, got["v2"].metrics
    assert (got["v1"].served, v1.count, v1.positives, v1.accuracy) == (5, 5, 3, 0.6)
    assert v1.brier == pytest.approx((0.01 + 0.36 + 0.49 + 0.04 + 0.04) / 5)
    assert v1.auc == pytest.approx(5 / 6)  # pairs (pos .9 .3 .8) x (neg .6 .2): all but .3 < .6
    assert (got["v2"].served, v2.count, v2.positives, v2.accuracy) == (5, 3, 2, pytest.approx(1 / 3))
    assert got["v2"].group["arm"] == "canary" and got["v2"].coverage == pytest.approx(3 / 5)


# The killed sink: its predictions batch is "acknowledged" by a no-op (so its first delivery is never
# acknowledged), and the first feedback acknowledgement SIGKILLs the process, after the write returned.
CRASHING_SINK = textwrap.dedent("""
    import os, signal, sys
    from tenfold.config import Settings
    from tenfold.feedback.sink import FeedbackSink, SinkOptions

    def ack(self, stream, ack_ids):
        if stream == "feedback":
            os.kill(os.getpid(), signal.SIGKILL)

    FeedbackSink._ack = ack
    settings = Settings.model_validate_json(sys.stdin.read())
    with FeedbackSink(settings, SinkOptions(idle_s=3.0, poll_interval_s=0.1)) as sink:
        sink.drain()
    sys.exit(3)  # never reached: the first feedback batch kills it
""")


def test_a_sink_killed_after_writing_but_before_acking_loses_nothing_and_duplicates_nothing(fb_settings):
    s, msg = fb_settings, fb_settings.messaging
    ids = [f"k{i:02d}" for i in range(20)]
    outcomes = {pid: i % 2 for i, pid in enumerate(ids)}
    _publish(s, msg.predictions_topic, *(_prediction(pid, 0.25 + 0.5 * (i % 2)) for i, pid in enumerate(ids)))
    _publish(s, msg.feedback_topic, *(_feedback(pid, y) for pid, y in outcomes.items()))

    child = subprocess.run([sys.executable, "-c", CRASHING_SINK], input=s.model_dump_json(), text=True,
                           capture_output=True, timeout=60)
    assert child.returncode == -signal.SIGKILL, child.stderr
    first_predictions, first_feedback = _log(s, "predictions").num_rows, _log(s, "feedback").num_rows
    assert first_predictions > 0 and first_feedback > 0  # written durably before the kill

    # What the dead sink pulled comes back once its 10 s leases expire; a new sink lands it again.
    with FeedbackSink(s, FAST) as sink:
        deadline = time.monotonic() + 45
        while time.monotonic() < deadline and not (
            sink.stats["predictions"].redelivered >= first_predictions and sink.stats["feedback"].redelivered >= first_feedback
        ):
            sink.drain()
        sink.drain()
    assert sink.stats["predictions"].redelivered == first_predictions
    assert sink.stats["feedback"].redelivered == first_feedback
    for stream in ("predictions", "feedback"):
        assert _pull_all(s, msg.subscriptions[stream].name) == []

    # The logs hold the redelivered messages twice; the labelled table holds each prediction once.
    assert _log(s, "predictions").num_rows == len(ids) + first_predictions
    assert _log(s, "feedback").num_rows == len(ids) + first_feedback
    join(s)
    rows = _labelled(s)
    assert sorted(rows) == ids
    assert {pid: r["outcome"] for pid, r in rows.items()} == outcomes
    assert all(r["feedback_records"] == 1 for r in rows.values())


def test_dead_lettered_messages_are_shown_left_in_place_and_replayed_to_their_topic(fb_settings, cli):
    """What the sink refused stays in the dead-letter subscription: `feedback dead-letters` shows each with why,
    twice over (nothing is consumed by looking), and `--replay` puts it back on the stream's topic."""
    s = fb_settings
    spec = s.messaging.subscriptions["feedback"]
    newer = b'{"prediction_id": "n1", "outcome": 1, "received_at": "2013-01-01T00:00:00Z", "confidence": 0.9}'
    _publish(s, s.messaging.feedback_topic, newer)  # a field this sink does not know (a newer server's record)
    with FeedbackSink(s, FAST) as sink:  # every refused delivery, then the dead-letter topic (looking consumes nothing)
        _drain_until(sink, lambda _: _held(s, spec.dead_letter_subscription) > 0)
    assert sink.stats["feedback"].acked == 0 and sink.stats["feedback"].poison == spec.max_delivery_attempts

    for _ in range(2):
        result = cli("dead-letters", "--stream", "feedback", "--json")
        assert result.exit_code == 0, result.output
        (shown,) = json.loads(result.output)
        assert shown["body"] == newer.decode() and "confidence" in shown["error"], shown
    result = cli("dead-letters", "--stream", "feedback", "--replay")
    assert result.exit_code == 0 and "1 feedback message(s) re-published" in result.output, result.output
    assert _pull_all(s, spec.dead_letter_subscription) == []
    assert _pull_all(s, spec.name) == [newer]  # back on the feedback topic, for an upgraded sink
    assert cli("dead-letters", "--stream", "clicks").exit_code == 2


def test_a_lake_that_cannot_be_written_holds_the_batch_until_it_can(fb_settings):
    s = fb_settings
    _publish(s, s.messaging.predictions_topic, *(_prediction(f"w{i}", 0.5) for i in range(5)))
    lake_root = Path(Lake.from_settings(s).root)
    # The month's folder, not the table's: the table takes the sink's probe, so the batch is pulled, then held.
    blocker = lake_root / s.storage.predictions_table / f"year={T0.year}"
    blocker.parent.mkdir(parents=True, exist_ok=True)
    blocker.write_text("a file where the month's folder must go: every write of the batch fails")

    class LakeComesBack(logging.Handler):
        """Unblocks the lake on the sink's second failed write, having checked nothing was acknowledged yet."""

        def __init__(self) -> None:
            super().__init__(logging.WARNING)
            self.failures: list[str] = []
            self.acked_meanwhile: list[int] = []

        def emit(self, record: logging.LogRecord) -> None:
            if record.getMessage().startswith("lake write of"):
                self.failures.append(record.getMessage())
                self.acked_meanwhile.append(sink.stats["predictions"].acked)
                if len(self.failures) == 2:
                    blocker.unlink()

    watcher = LakeComesBack()
    sink_log = logging.getLogger("tenfold.feedback.sink")
    sink_log.addHandler(watcher)
    try:
        with FeedbackSink(s, SinkOptions(idle_s=1.0, poll_interval_s=0.1, write_retry_s=30)) as sink:
            sink.drain()
    finally:
        sink_log.removeHandler(watcher)
    assert len(watcher.failures) == 2, watcher.failures  # the writes failed, and were retried, before it landed
    assert watcher.acked_meanwhile == [0, 0]  # held, not acknowledged, while the lake was away
    assert sink.stats["predictions"].landed == 5 and sink.stats["predictions"].acked == 5
    assert sorted(_log(s, "predictions")["prediction_id"].to_pylist()) == [f"w{i}" for i in range(5)]
    assert _pull_all(s, s.messaging.subscriptions["predictions"].name) == []


@pytest.fixture
def cli(fb_settings, monkeypatch):
    # The CLI reads settings from the environment; these tests' topics exist only in fb_settings.
    monkeypatch.setattr(feedback_cli, "command_settings", lambda env=None: fb_settings)
    runner = CliRunner()
    return lambda *args: runner.invoke(feedback_cli.app, list(args))


def test_draining_with_no_idle_time_lands_what_is_there(fb_settings, cli):
    """``--until-idle --idle-s 0``: pull until the first empty pull (it stopped before pulling at all, exit 0)."""
    s = fb_settings
    _publish(s, s.messaging.predictions_topic, *(_prediction(f"z{i}", 0.5) for i in range(3)))
    result = cli("sink", "--until-idle", "--idle-s", "0", "--no-join")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["sink"]["predictions"]["acked"] == 3
    assert sorted(_log(s, "predictions")["prediction_id"].to_pylist()) == ["z0", "z1", "z2"]


def test_the_cli_drains_joins_and_prints_metrics(fb_settings, cli):
    s = fb_settings
    _publish(s, s.messaging.predictions_topic, _prediction("a", 0.9), _prediction("b", 0.2, "v2", "canary"))
    _publish(s, s.messaging.feedback_topic, _feedback("a", 1), _feedback("b", 1))

    result = cli("sink", "--until-idle", "--idle-s", "1")
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert out["sink"]["predictions"]["acked"] == 2 and out["sink"]["feedback"]["acked"] == 2
    assert out["join"]["published"] == [Partition.from_date(T0).label]

    result = cli("join")
    assert result.exit_code == 0 and json.loads(result.output)["published"] == []  # nothing new

    since, until = T0.isoformat(), (T0 + dt.timedelta(hours=1)).isoformat()
    result = cli("metrics", "--since", since, "--until", until, "--json")
    assert result.exit_code == 0, result.output
    groups = {g["model_version"]: g for g in json.loads(result.output)["groups"]}
    assert (groups["v1"]["accuracy"], groups["v1"]["count"], groups["v2"]["accuracy"]) == (1.0, 1, 0.0)
    table = cli("metrics", "--last", "1d")
    assert table.exit_code == 0 and "canary" in table.output and "accuracy" in table.output


@pytest.mark.parametrize(("args", "message"), [
    (["sink", "--once", "--until-idle"], "--once and --until-idle are alternatives"),
    (["metrics", "--last", "yesterday"], "is not a duration: use a number and s, m, h or d"),
    (["metrics", "--since", "May 5"], "is not an ISO time"),
    (["metrics", "--since", "0001-01-01T00:00"], "at the very edge of the calendar"),  # a raw OverflowError
    (["metrics", "--until", "0001-01-01T00:00"], "at the very edge of the calendar"),
    (["metrics", "--since", "9999-12-31T23:00-05:00"], "at the very edge of the calendar"),  # "rebuild the table"
    (["metrics", "--by", "color"], "cannot group online metrics by color"),
    (["join", "--month", "2026/05"], "is not a month: use YYYY-MM"),
    (["metrics", "--since", "2026-05-01", "--until", "2026-04-01"], "the window is empty"),  # was 0 rows, exit 0
])
def test_bad_arguments_exit_2_with_a_message(cli, args, message):
    result = cli(*args)
    assert result.exit_code == 2 and message in result.output
    assert isinstance(result.exception, SystemExit)  # an error line, not an exception escaping the command


def _drain_until(sink: FeedbackSink, done: Callable[[Any], bool], deadline_s: float = 90.0) -> None:
    """Drain ``sink`` until ``done(sink.stats)``: the emulator's redelivery back-off is its own."""
    deadline = time.monotonic() + deadline_s
    while not done(sink.drain(idle_s=1.0)):
        assert time.monotonic() < deadline, sink.stats


RUNNING_SINK = textwrap.dedent("""
    import pathlib, sys
    from tenfold.config import Settings
    from tenfold.feedback import cli

    settings = Settings.model_validate_json(pathlib.Path(sys.argv[1]).read_text())
    cli.command_settings = lambda env=None: settings
    cli.app(["sink", "--join-every-s", sys.argv[2] if len(sys.argv) > 2 else "0", "--pull-wait-s", "1"])
""")


def test_the_running_sink_joins_when_idle_and_stops_on_sigterm(fb_settings, tmp_path):
    s = fb_settings
    (tmp_path / "settings.json").write_text(s.model_dump_json())
    proc = subprocess.Popen([sys.executable, "-c", RUNNING_SINK, str(tmp_path / "settings.json")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    said: list[str] = []
    pulling = threading.Event()

    def read_stderr() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            said.append(line)
            if line.startswith("feedback sink: pulling "):
                pulling.set()

    reader = threading.Thread(target=read_stderr, daemon=True)
    reader.start()
    try:
        # Once it pulls (its imports and lake probe take a while): published before, the trickle was a backlog that
        # one pull drained, whether or not the sink fills a batch.
        assert pulling.wait(60), "".join(said)
        for i in range(6):  # a trickle: the sink fills a batch for up to a second rather than writing one file each
            _publish(s, s.messaging.predictions_topic, _prediction(f"r{i}", 0.7))
            time.sleep(0.1)
        _publish(s, s.messaging.feedback_topic, _feedback("r0", 1))
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and _labelled(s).get("r0", {}).get("outcome") != 1 and proc.poll() is None:
            time.sleep(0.3)
        assert proc.poll() is None, "".join(said)
        assert _labelled(s)["r0"]["outcome"] == 1
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=15)
        assert proc.stdout is not None
        stdout = proc.stdout.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    reader.join(5)
    stderr = "".join(said)
    assert proc.returncode == 0, stderr
    landed = json.loads(stdout)["sink"]["predictions"]
    assert landed["acked"] == 6 and landed["files"] <= 2, landed


def test_the_running_sink_joins_a_steady_stream_that_is_never_idle(fb_settings, tmp_path):
    """A prediction every 0.1 s from one publisher (the pull waits up to 1 s): hardly a round of pulls comes back
    empty, yet the sink joins what landed every --join-every-s, so feedback reaches the labelled table mid-stream.
    s0's feedback is published only after the sink's first join (which every sink runs after its first round, busy
    or not), and while the stream goes on: a sink that joined only on its first round, or only on a quiet round,
    never labelled it."""
    s = fb_settings
    (tmp_path / "settings.json").write_text(s.model_dump_json())
    stop, sent = threading.Event(), []

    def stream() -> None:
        pub = publisher_client(s)
        try:
            while not stop.is_set():
                record = _prediction(f"s{len(sent) + 1}", 0.4)
                pub.publish(topic_path(s, s.messaging.predictions_topic), record.to_message(),
                            **record.attributes()).result(timeout=30)
                sent.append(record.prediction_id)
                stop.wait(0.1)
        finally:
            pub.transport.close()

    _publish(s, s.messaging.predictions_topic, _prediction("s0", 0.7))
    streamer = threading.Thread(target=stream, daemon=True)
    streamer.start()
    proc = subprocess.Popen([sys.executable, "-c", RUNNING_SINK, str(tmp_path / "settings.json"), "2"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    said: list[str] = []
    joined = threading.Event()

    def read_stderr() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            said.append(line)
            if line.startswith('{"join": '):  # what _run_forever prints after each join
                joined.set()

    reader = threading.Thread(target=read_stderr, daemon=True)
    reader.start()
    try:
        assert joined.wait(60), "".join(said)  # the first round's join (its imports and lake probe take a while)
        assert streamer.is_alive() and proc.poll() is None, "".join(said)
        _publish(s, s.messaging.feedback_topic, _feedback("s0", 1))
        deadline = time.monotonic() + 40  # a hang guard: at --join-every-s 2 it takes a few seconds
        while time.monotonic() < deadline and _labelled(s).get("s0", {}).get("outcome") != 1 and proc.poll() is None:
            time.sleep(0.3)
        assert streamer.is_alive(), "the stream stopped early"
        assert proc.poll() is None, "".join(said)
        assert _labelled(s).get("s0", {}).get("outcome") == 1, \
            f"no join after the first in 40 s of a steady stream ({len(sent)} sent): {''.join(said)}"
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=15)
    finally:
        stop.set()
        streamer.join(timeout=30)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    reader.join(5)
    joins = [line for line in said if line.startswith('{"join": ')]
    assert len(joins) >= 2, "".join(said)


def test_the_running_sink_keeps_up_with_a_backlog_while_the_feedback_subscription_is_quiet(fb_settings):
    """Every round held a pull on each subscription: the empty feedback one held for pull_wait_s (5 s) while the
    predictions one landed one batch of 500, about 100 messages a second, far below what one replica publishes
    (a backlog that grew without bound, and a canary's join that saw no data). Guarded by what the sink asks Pub/Sub:
    while the predictions backlog lasts, no pull of the quiet feedback subscription is held (one that returns at once
    does not wait), but for the first round's, made before anything was known to be waiting. How fast it lands is
    for a benchmark; the deadline below only keeps a hung sink from hanging the test."""
    s, n = fb_settings, 3000
    _publish(s, s.messaging.predictions_topic, *(_prediction(f"b{i}", 0.5) for i in range(n)))
    stop, landed_all = threading.Event(), threading.Event()
    held_while_backlogged: list[int] = []  # predictions acknowledged when a held pull of feedback was made
    with FeedbackSink(s, SinkOptions(pull_wait_s=5.0, poll_interval_s=0.1)) as sink:
        pull, feedback = sink.client.pull, sink.path("feedback")

        def watched_pull(*, request: dict[str, Any], **kwargs: Any) -> Any:  # the real pull, recorded
            acked = sink.stats["predictions"].acked
            if request["subscription"] == feedback and not request.get("return_immediately") and acked < n:
                held_while_backlogged.append(acked)
            return pull(request=request, **kwargs)

        sink.client.pull = watched_pull  # type: ignore[method-assign]

        def after_round() -> None:
            if sink.stats["predictions"].acked >= n:
                landed_all.set()

        runner = threading.Thread(target=sink.run, args=(stop,), kwargs={"after_round": after_round}, daemon=True)
        runner.start()
        landed_all.wait(120)
        landed = sink.stats["predictions"].acked
        stop.set()
        runner.join(timeout=30)
    assert landed == n, f"the running sink landed {landed} of {n} backlogged predictions"
    assert len(held_while_backlogged) <= 1, \
        f"held pulls of the quiet feedback subscription with a predictions backlog (acked then): {held_while_backlogged}"
