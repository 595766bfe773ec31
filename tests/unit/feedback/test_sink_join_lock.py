"""The sink's joins while another join holds the join lock (a `tenfold feedback join --force` over many months, or
`tenfold feedback metrics` with no window): the sink tries the lock once and skips, it never waits for it.

Each of them waited up to 60 s for the lock inside the sink's round, so the running sink landed one batch a minute
while the other join ran, and its last join on a stop could outlast the 90 s a stop gives it; after `--once` or
`--until-idle`, a join that could not run ended the command with exit 1 and the counts of what it landed unprinted.

Real services: the session's Pub/Sub emulator (a topology of the test's own), a local lake, and the real join lock
(an ``flock``) held by another thread through its own open file, as another process's join holds it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from tenfold.data.lake import Lake, Partition
from tenfold.feedback import cli as feedback_cli
from tenfold.feedback.lock import join_lock
from tenfold.feedback.log import log_files, read_log
from tenfold.feedback.schema import PREDICTIONS_LOG
from tenfold.feedback.sink import FeedbackSink, SinkOptions
from tenfold.feedback.upsert import join
from tenfold.messaging import publisher_client, topic_path

from .conftest import prediction

MAY = Partition(2026, 5)
# A round of the running sink is a pull held up to 1 s, a second to fill a batch, and a join that skips at once: one
# that waited for the lock took 60 s.
PROMPT_S = 15.0


@contextlib.contextmanager
def join_lock_held(settings: Any) -> Iterator[None]:
    """The join lock of ``settings``' lake, taken (and held until the block ends) by another thread: its own open file
    and ``flock``, which this process's other opens conflict with as another process's would."""
    taken, release = threading.Event(), threading.Event()
    failed: list[BaseException] = []

    def hold() -> None:
        try:
            with join_lock(settings, Lake.from_settings(settings), timeout_s=10):
                taken.set()
                release.wait()
        except BaseException as exc:  # handed to the test below, which fails naming it
            failed.append(exc)
            taken.set()

    holder = threading.Thread(target=hold, name="other join", daemon=True)
    holder.start()
    assert taken.wait(30) and not failed, f"could not take the join lock: {failed}"
    try:
        yield
    finally:
        release.set()
        holder.join(30)


def _publish(settings: Any, *pids: str) -> None:
    pub = publisher_client(settings)
    try:
        topic = topic_path(settings, settings.messaging.predictions_topic)
        for future in [pub.publish(topic, r.to_message(), **r.attributes()) for r in map(prediction, pids)]:
            future.result(timeout=30)
    finally:
        pub.transport.close()


def _landed(settings: Any) -> list[str]:
    lake = Lake.from_settings(settings)
    return sorted(read_log(lake, settings.storage.predictions_table, [MAY], PREDICTIONS_LOG)["prediction_id"].to_pylist())


def _published(settings: Any) -> bool:
    return Lake.from_settings(settings).has_manifest(settings.storage.labelled_table, MAY)


@pytest.fixture
def sink_settings(own_topology: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setattr(feedback_cli, "command_settings", lambda env=None: own_topology)
    return own_topology


def test_the_running_sink_goes_on_landing_while_another_join_holds_the_lock(sink_settings, capsys):
    """Three rounds of `tenfold feedback sink` (run mode, a join every round) while another join holds the lock:
    each round's join is skipped at once, what is published meanwhile lands, and a SIGTERM ends the run (its last
    join skipped too) well within the 90 s a stop gives the sink. Then the lock's holder is done, and the next join
    publishes what the sink landed."""
    settings, pids = sink_settings, ["r1", "r2", "r3"]
    rounds: list[float] = []  # seconds each round's join took
    published, stopping = [pids[0]], {}
    _publish(settings, pids[0])

    class TimedSink(FeedbackSink):
        """The real sink, its rounds timed: the next message published once the last one landed, and a real SIGTERM
        to this process once the three landed over at least three rounds (or once a round was slow: the test fails)."""

        def run(self, stop: threading.Event, *, after_round: Any = None) -> Any:
            started = time.monotonic()

            def timed_round() -> None:
                began = time.monotonic()
                after_round()
                rounds.append(time.monotonic() - began)
                if stopping:
                    return
                landed = self.stats["predictions"].landed
                slow = rounds[-1] >= PROMPT_S or time.monotonic() - started > 4 * PROMPT_S
                if slow or (landed == len(pids) and len(rounds) >= 3):
                    stopping["at"] = time.monotonic()
                    os.kill(os.getpid(), signal.SIGTERM)  # the handler _run_forever installed: the sink's own stop
                elif landed == len(published) < len(pids):
                    published.append(pids[landed])
                    _publish(settings, pids[landed])

            return super().run(stop, after_round=timed_round)

    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        with join_lock_held(settings):
            with TimedSink(settings, SinkOptions(pull_wait_s=1.0, idle_s=1.0)) as sink:
                feedback_cli._run_forever(sink, settings, True, 0.0)  # join every round that follows a landing
            stopped_in = time.monotonic() - stopping["at"]
            # Still held: nothing was joined, nothing was waited for.
            assert not _published(settings)
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    err = capsys.readouterr().err
    assert len(rounds) >= 3, err
    assert max(rounds) < PROMPT_S, f"a round waited {max(rounds):.0f} s for the join lock: {err}"
    assert stopped_in < PROMPT_S, f"the stop took {stopped_in:.0f} s (the last join waited for the lock): {err}"
    assert _landed(settings) == pids, err
    assert sink.stats["predictions"].acked == len(pids)
    assert "feedback join skipped: another join is running" in err and "warning" not in err, err
    # Nothing lost by skipping: the lock's holder done, the next join publishes the month the sink landed.
    assert join(settings).published == [MAY.label]


def test_sink_until_idle_with_the_lock_held_prints_its_counts_and_a_skipped_join_exit_0(sink_settings):
    settings = sink_settings
    _publish(settings, "a")
    started = time.monotonic()
    with join_lock_held(settings):
        result = CliRunner().invoke(feedback_cli.app, ["sink", "--until-idle", "--idle-s", "2"])
        assert not _published(settings)
    took = time.monotonic() - started
    assert result.exit_code == 0, (result.output, result.exception)
    out = json.loads(result.stdout)
    assert out["sink"]["predictions"]["landed"] == 1 and out["sink"]["predictions"]["acked"] == 1, out
    assert out["join"]["skipped"].startswith("another join is running"), out
    assert "the next join joins it" in out["join"]["skipped"]
    assert took < PROMPT_S, f"the join waited {took:.0f} s for the lock"
    assert _landed(settings) == ["a"]


@pytest.mark.parametrize("mode", ["--once", "--until-idle"])
def test_sink_whose_join_fails_prints_its_counts_then_the_error_exit_1(sink_settings, mode):
    """A log folder the join cannot read (a LakeError: not a month's folder) fails the join after the sink landed and
    acknowledged its batch: the counts of that work are printed, then the error, exit 1."""
    settings = sink_settings
    lake, table = Lake.from_settings(settings), settings.storage.predictions_table
    # A log file of a month the join lists, under a folder that is not a month: the sink lands beside it unhindered.
    _publish(settings, "seed")
    assert CliRunner().invoke(feedback_cli.app, ["sink", "--until-idle", "--no-join"]).exit_code == 0
    odd = Path(lake.table_path(table)) / "year=2026" / "month=x"
    odd.mkdir(parents=True)
    shutil.copy(log_files(lake, table, MAY)[-1].path, odd / "log-20260514T130000000000-x.parquet")
    _publish(settings, "a")
    result = CliRunner().invoke(feedback_cli.app, ["sink", mode, "--idle-s", "2"] if mode == "--until-idle" else
                                ["sink", mode])
    assert result.exit_code == 1, (result.output, result.exception)
    assert isinstance(result.exception, SystemExit), repr(result.exception)  # an error line, not a traceback
    out = json.loads(result.stdout)  # the counts, whatever the join did
    assert set(out) == {"sink"} and set(out["sink"]["predictions"]) >= {"pulled", "landed", "acked"}, out
    assert out["sink"]["predictions"]["landed"] == out["sink"]["predictions"]["acked"]
    if mode == "--until-idle":
        assert out["sink"]["predictions"]["landed"] == 1, out
    assert f"{lake.uri}/{table}/year=2026/month=x is not a month's folder" in result.stderr
    assert result.stderr.startswith("error: landed, but the join failed:"), result.stderr
