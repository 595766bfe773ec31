"""``tenfold feedback`` without its services: clear errors and exit codes, never a traceback."""

from __future__ import annotations

import datetime as dt
import os

import pytest
from typer.testing import CliRunner

from tenfold.feedback import cli as feedback_cli
from tenfold.local import free_port

from .conftest import feedback, prediction


def _runner(settings, monkeypatch):
    # Pub/Sub at a loopback port where nothing listens: every call is refused, as with a stopped emulator.
    dead = settings.model_copy(update={"messaging": settings.messaging.model_copy(
        update={"emulator_host": f"127.0.0.1:{free_port()}"})})
    monkeypatch.setattr(feedback_cli, "command_settings", lambda env=None: dead)
    runner = CliRunner()
    return lambda *args: runner.invoke(feedback_cli.app, list(args))


@pytest.fixture
def run(settings, monkeypatch):
    return _runner(settings, monkeypatch)


def test_an_unreachable_pubsub_is_exit_1_naming_it_after_the_retry_budget(run):
    result = run("sink", "--until-idle", "--pubsub-retry-s", "1")
    assert result.exit_code == 1
    assert "cannot reach 127.0.0.1:" in result.output and "is the local platform up" in result.output
    assert isinstance(result.exception, SystemExit)  # an error line and exit 1, not an exception escaping


def test_a_sigterm_while_pubsub_is_unreachable_ends_the_sink_at_once_with_exit_0(tmp_path):
    """`tenfold feedback sink` (the platform's, as `tenfold down` stops it) went on retrying Pub/Sub for
    --pubsub-retry-s after a SIGTERM, then exited 1 saying "restart the sink later". A real process on a fresh home,
    Pub/Sub at a loopback port where nothing listens."""
    import json
    import queue
    import signal
    import subprocess
    import sys
    import threading
    import time
    from pathlib import Path

    env = {**os.environ, "TENFOLD_ENV": "local", "TENFOLD_HOME": str(tmp_path / "home"),
           "TENFOLD_LOCAL__PUBSUB_PORT": str(free_port())}
    env.pop("TENFOLD_DEBUG", None)
    tenfold = str(Path(sys.executable).with_name("tenfold"))
    proc = subprocess.Popen([tenfold, "feedback", "sink", "--pubsub-retry-s", "120"], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    lines: queue.Queue[str | None] = queue.Queue()  # its stderr, line by line (None at its end), read with a deadline

    def pump() -> None:
        for line in proc.stderr or ():
            lines.put(line)
        lines.put(None)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    seen: list[str] = []
    try:
        # Two retries of the pull: the signal handlers are in place, and the sink went on retrying after its first
        # pause, so the SIGTERM comes while it waits to retry Pub/Sub (the case), not before the retry loop.
        deadline = time.monotonic() + 60
        while sum(line.startswith("Pub/Sub could not pull") for line in seen) < 2:
            try:
                line = lines.get(timeout=max(deadline - time.monotonic(), 0))
            except queue.Empty:
                raise AssertionError(f"the sink did not retry Pub/Sub twice within 60 s: {''.join(seen)}") from None
            if line is None:
                raise AssertionError(f"the sink ended before retrying twice: {''.join(seen)}")
            seen.append(line)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=10)
        out = proc.stdout.read() if proc.stdout is not None else ""
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    reader.join(timeout=10)
    err = "".join(seen) + "".join(line for line in iter(lines.get_nowait, None))
    assert proc.returncode == 0, err
    assert json.loads(out)["sink"]["predictions"]["acked"] == 0


def test_a_run_stopped_while_pubsub_is_unreachable_returns_at_once_without_landing_what_is_left(settings):
    """The control of the stopped run's last landing (test_sink_faults): with the emulator already stopped, that landing
    ends at its first refused pull, well within the time a stop gives the sink, rather than retrying Pub/Sub."""
    import threading
    import time

    from tenfold.feedback.sink import FeedbackSink, SinkOptions

    dead = settings.model_copy(update={"messaging": settings.messaging.model_copy(
        update={"emulator_host": f"127.0.0.1:{free_port()}"})})
    stop = threading.Event()
    stop.set()
    started = time.monotonic()
    with FeedbackSink(dead, SinkOptions(pubsub_retry_s=60)) as sink:
        stats = sink.run(stop)
    assert time.monotonic() - started < 5, "the stopped run retried an unreachable Pub/Sub"
    assert stats["predictions"].pulled == 0 and stats["feedback"].pulled == 0


def test_join_and_metrics_work_without_pubsub(run, logs):
    logs.predictions(prediction("a", p=0.8))
    logs.feedback(feedback("a", 1))
    assert run("metrics", "--since", "2026-05-14T00:00", "--until", "2026-05-15", "--no-refresh").output.startswith(
        "no predictions served in this window have been joined yet")
    result = run("metrics", "--since", "2026-05-14T00:00", "--until", "2026-05-15")  # refreshes: joins first
    assert result.exit_code == 0, result.output
    header, row = result.output.strip().splitlines()
    assert header.split()[:4] == ["model_version", "arm", "served", "count"]
    assert row.split()[:4] == ["v1", "stable", "1", "1"] and "1.0000" in row


@pytest.mark.parametrize("command", [["sink", "--once"], ["join"], ["metrics", "--last", "1h"]])
def test_an_unknown_env_is_exit_2_naming_it(command):
    """``--env`` is read by each command (the top-level check sees only TENFOLD_ENV): a typo was a traceback."""
    result = CliRunner().invoke(feedback_cli.app, [*command, "--env", "nope"])
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit)
    assert "nope" in result.output


def test_another_tables_log_file_is_set_aside_and_join_and_metrics_go_on(run, logs, settings):
    """A feedback-log file copied into the predictions log's month made `join` a traceback and `metrics` exit 2
    ("bad arguments") on every run, until someone found the file by hand."""
    import shutil
    from pathlib import Path

    from tenfold.data.lake import Lake, Partition
    from tenfold.feedback.log import log_files

    logs.predictions(prediction("a", p=0.8))
    logs.feedback(feedback("a", 1), feedback("z", 0))
    lake, may = Lake.from_settings(settings), Partition(2026, 5)
    stray = Path(lake.partition_path(settings.storage.predictions_table, may)) / "log-20260514T130000000000-x.parquet"
    shutil.copy(log_files(lake, settings.storage.feedback_table, may)[-1].path, stray)
    metrics = run("metrics", "--since", "2026-05-14T00:00", "--until", "2026-05-15")  # a window: reads, moves nothing
    assert metrics.exit_code == 0, metrics.output
    assert metrics.output.strip().splitlines()[1].split()[:4] == ["v1", "stable", "1", "1"]
    joined = run("join")
    assert joined.exit_code == 0, joined.output
    assert '"predictions": 1' in joined.output and '"labelled": 1' in joined.output and not stray.exists()


def test_a_labelled_table_that_cannot_be_read_is_exit_1_naming_it_not_a_bad_argument(run, settings, logs):
    """A published labelled month holding a null model_version (written by another tool) was reported as exit 2,
    the code for bad arguments, though the arguments were fine."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from tenfold.data.lake import Lake, Partition
    from tenfold.feedback.schema import LABELLED

    lake, may, table = Lake.from_settings(settings), Partition(2026, 5), settings.storage.labelled_table
    loose = pa.schema([f.with_nullable(True) for f in LABELLED])
    row = {"prediction_id": "a", "model_version": None, "arm": "stable", "probability": 0.5, "request": "{}",
           "served_at": dt.datetime(2026, 5, 14, tzinfo=dt.UTC), "outcome": 1, "feedback_records": 1}
    staged = lake.staging_path(table, may, "by-hand")
    lake.fs.create_dir(staged, recursive=True)
    pq.write_table(pa.Table.from_pylist([row], schema=loose), f"{staged}/part-00000.parquet", filesystem=lake.fs)
    lake.publish(table, may, staged, run_id="by-hand")
    logs.predictions(prediction("a"))  # May has a predictions log: the join can rebuild it
    result = run("metrics", "--since", "2026-05-14T00:00", "--until", "2026-05-15", "--no-refresh")
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit)
    assert f"cannot compute online metrics from the {table} table of" in result.output
    # The window's month, not every month: --force of all would publish smaller each month whose logs were trimmed.
    assert "model_version" in result.output and "`tenfold feedback join --month 2026-05 --force`" in result.output


@pytest.mark.parametrize("window", [["--last", "99999999999d"], ["--last", "1000000d"],
                                    ["--last", "3d", "--until", "0001-01-03"]])  # (0001-01-01 itself: at the edge)
def test_a_window_reaching_before_the_year_1_is_exit_2_naming_it(run, window):
    result = run("metrics", *window)
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert f"--last {window[1]!r} reaches before the year 1" in result.output


@pytest.mark.parametrize("folder", ["year=2026/month=x", "year=2026/month=13"])
def test_a_folder_that_is_not_a_month_in_a_log_is_exit_1_naming_it(run, logs, settings, folder):
    """A log file under year=2026/month=x made `join` a ValueError traceback, and `metrics` pointed at `join --force`."""
    import shutil
    from pathlib import Path

    from tenfold.data.lake import Lake, Partition
    from tenfold.feedback.log import log_files

    logs.predictions(prediction("a", p=0.8))
    lake, table = Lake.from_settings(settings), settings.storage.predictions_table
    odd = Path(lake.table_path(table)) / folder
    odd.mkdir(parents=True)
    shutil.copy(log_files(lake, table, Partition(2026, 5))[-1].path, odd / "log-20260514T130000000000-x.parquet")
    result = run("join")
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert f"{lake.uri}/{table}/{folder} is not a month's folder" in result.output
    assert "move that folder out of the table" in result.output


@pytest.mark.parametrize(("error", "says"), [
    ("PermissionDenied", "needs roles/pubsub.subscriber on the feedback dead-letter subscription"),
    ("NotFound", "provision the Pub/Sub topology first"),
])
def test_dead_letters_refused_by_pubsub_names_the_role_or_the_topology_not_tenfold_up(run, monkeypatch, error, says):
    """An operator without subscriber rights (IAM has no emulator: the API's own error, as the client raises it) was
    told "cannot reach Pub/Sub ...; is the platform up (`tenfold up`)?"."""
    from google.api_core import exceptions

    from tenfold.feedback import dead_letters

    def refused(settings, stream, *, limit):
        raise getattr(exceptions, error)("projects/p/subscriptions/feedback-dead-letter")

    monkeypatch.setattr(dead_letters, "peek", refused)
    result = run("dead-letters", "--stream", "feedback")
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
    assert says in result.output and "tenfold up`)?" not in result.output, result.output


@pytest.mark.parametrize("replay", [[], ["--replay"]])
def test_dead_letters_with_pubsub_down_says_it_cannot_reach_it_within_seconds(run, replay):
    """With the emulator stopped, `tenfold feedback dead-letters` waited out the client's own one-minute retry (about
    50 s) before saying anything."""
    import time

    started = time.monotonic()
    result = run("dead-letters", "--stream", "feedback", *replay)
    assert time.monotonic() - started < 15, "waited on the client's own retry"
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
    line, = result.output.strip().splitlines()
    assert line.startswith("error: cannot reach 127.0.0.1:") and line.endswith("is the platform up (`tenfold up`)?"), line


def test_dead_letters_holds_its_first_pull_for_a_sparse_subscription(settings, monkeypatch):
    """Pub/Sub may answer a pull that returns at once with nothing while a dead-letter subscription holds messages:
    every pull returned at once, so `dead-letters` said 0 (and --replay sent none). A client at the transport
    boundary answers as such a service: nothing to a pull that returns at once, the messages to a held one."""
    import contextlib
    from types import SimpleNamespace

    from tenfold.feedback import dead_letters

    def message(n: int) -> SimpleNamespace:
        return SimpleNamespace(ack_id=f"a{n}", message=SimpleNamespace(
            message_id=f"m{n}", data=b"{}", attributes={}, publish_time=None))

    class SparseSubscription:
        def __init__(self) -> None:
            self.waiting = [message(1), message(2)]

        def pull(self, request, timeout, retry):
            if request["return_immediately"]:
                return SimpleNamespace(received_messages=[])
            taken, self.waiting = self.waiting, []
            return SimpleNamespace(received_messages=taken)

        def modify_ack_deadline(self, request, retry):
            pass

    @contextlib.contextmanager
    def client(settings, stream):
        yield SparseSubscription(), "projects/p/subscriptions/feedback-dead-letters"

    monkeypatch.setattr(dead_letters, "_client", client)
    assert [d.message_id for d in dead_letters.peek(settings, "feedback")] == ["m1", "m2"]


def test_a_restarted_sink_joins_what_the_process_before_it_landed(settings, monkeypatch):
    """A sink killed (or ended by a SinkError, which skips its last join) between landing a batch and its next join:
    the restarted one joined only once it landed something itself, so on a quiet night the labelled table missed
    those rows, and train_model's plan with it. The restarted sink lands nothing here."""
    from types import SimpleNamespace

    from tenfold.feedback import cli as feedback_cli
    from tenfold.feedback import upsert

    joins: list[int] = []
    monkeypatch.setattr(upsert, "join", lambda settings, **kw: joins.append(1) or SimpleNamespace(published=[], kept=[]))

    class QuietSink:
        stats = SimpleNamespace(landed=0)

        def run(self, stop, after_round):
            for _ in range(3):
                after_round()

    monkeypatch.setattr(feedback_cli.signal, "signal", lambda *args: None)  # this process's own handlers stay
    feedback_cli._run_forever(QuietSink(), settings, True, 0.0)
    assert joins == [1]  # once, at its first round: nothing landed since, nothing more to join


def test_a_join_of_a_month_nothing_was_served_in_is_refused_naming_the_served_months(run, logs) -> None:
    """`tenfold feedback join --month 2025-05` (a typo for 2026-05, or a month whose log was deleted whole) printed an
    empty report and exited 0, as if it had rebuilt the month."""
    logs.predictions(prediction("a"))
    result = run("join", "--month", "2025-05", "--month", "2026-05")
    assert result.exit_code == 2 and isinstance(result.exception, SystemExit), result.output
    assert "no predictions were served in 2025-05: nothing to join there (months with predictions: 2026-05)" \
        in result.output
    assert run("join", "--month", "2026-05").exit_code == 0


@pytest.fixture
def no_cloud_credentials(tmp_path, monkeypatch):
    """This process as under TENFOLD_ENV=dev on a machine never logged in: no GOOGLE_* variables, no gcloud
    application-default credentials, no metadata server; pyarrow's GCS client gives up after 2 s."""
    import os

    from tenfold import fsio

    for name in [k for k in os.environ if k.startswith(("GOOGLE_", "CLOUDSDK_", "STORAGE_EMULATOR"))]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("CLOUDSDK_CONFIG", str(tmp_path))
    monkeypatch.setenv("GCE_METADATA_HOST", "127.0.0.1:9")  # google-auth's
    monkeypatch.setenv("GCE_METADATA_IP", "127.0.0.1:9")
    monkeypatch.setenv("GCE_METADATA_ROOT", "127.0.0.1:9")  # pyarrow's GCS client (google-cloud-cpp) reads this one
    monkeypatch.setattr(fsio, "GCS_RETRY_LIMIT_S", 2)


_LOG_IN = ("found no Google Cloud credentials (OSError): run `gcloud auth application-default login` (or set "
           "GOOGLE_APPLICATION_CREDENTIALS), or unset TENFOLD_ENV to work on the local platform")


@pytest.mark.parametrize("command", [["join"], ["metrics", "--last", "1h", "--no-refresh"]])
def test_join_and_metrics_on_a_gs_lake_without_credentials_say_how_to_log_in(run, monkeypatch, no_cloud_credentials,
                                                                              command):
    """`TENFOLD_ENV=dev tenfold feedback join` on a machine with no credentials printed pyarrow's raw
    `error: google::cloud::Status(UNAVAILABLE: ... OAuth2 access token ...)` line, saying nothing of what to do. The
    step reads a gs:// lake as the dev one is opened (tenfold.fsio), meeting the real error of this machine."""
    from tenfold.feedback import metrics, upsert
    from tenfold.fsio import filesystem_from_uri

    def read_a_gs_lake(*args, **kwargs):
        fs, path = filesystem_from_uri("gs://tenfold-no-such-bucket-7f3a/lake/labelled")
        fs.get_file_info(path)
        raise AssertionError("this machine has Google Cloud credentials: the case cannot be shown here")

    monkeypatch.setattr(upsert, "join", read_a_gs_lake)
    monkeypatch.setattr(metrics, "online_metrics", read_a_gs_lake)
    result = run(*command)
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
    assert result.output.strip() == f"error: `tenfold feedback {command[0]}` {_LOG_IN}", result.output
    assert "google::cloud::Status" not in result.output


@pytest.mark.parametrize(("command", "said"), [
    (["join"], "Error writing bytes to file. Detail: [errno 28] No space left on device"),
    # No window: the join runs (and publishes) first. With one (--last 1h) it joins in memory and writes nothing.
    (["metrics"], "Error writing bytes to file. Detail: [errno 28] No space left on device"),
    # The sink gives up after write_retry_s with a SinkError made of its probe's ENOSPC: said as a full disk too.
    (["sink", "--once"], None),
], ids=["join", "metrics", "sink"])
def test_a_full_disk_says_so_and_to_free_space(monkeypatch, small_disk, command, said):
    """A full disk ended `join`, `metrics` and `sink` with `error: [Errno 28] Error writing bytes to file. Detail:
    [errno 28] No space left on device` (pyarrow's writer names no file) and no word of what to do. A real full disk
    and the real commands: TENFOLD_HOME (the lake under it) on a small tmpfs, a month landed in its logs, then the
    disk filled."""
    import functools

    from tenfold.config import build_settings
    from tenfold.feedback import sink

    from .conftest import Logs

    on_disk = build_settings("local", {"TENFOLD_HOME": str(small_disk.path)})
    run = _runner(on_disk, monkeypatch)
    # The sink retries a refused lake write for write_retry_s (120 s), which no option of the command nor setting sets.
    monkeypatch.setattr(sink, "SinkOptions", functools.partial(sink.SinkOptions, write_retry_s=0.5))
    logs = Logs(on_disk)
    logs.predictions(prediction("a", p=0.8))
    logs.feedback(feedback("a", 1))
    small_disk.fill()
    result = run(*command)
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
    head = f"error: `tenfold feedback {command[0]}` cannot go on: the disk it was writing to is full ("
    tail = f"); free space there (`df -h {small_disk.path}` shows TENFOLD_HOME's disk), then run the command again"
    if command[0] == "sink":  # and that what it pulled is not lost
        tail += "; nothing it held was acknowledged, so Pub/Sub redelivers it once the sink runs again"
    tail += "\n"
    assert result.output.startswith(head) and result.output.endswith(tail), result.output
    what = result.output[len(head):-len(tail)]  # what the system said: one line, ENOSPC
    assert "No space left on device" in what and "\n" not in what, result.output
    if said is not None:
        assert what == said, result.output


def test_dead_letters_without_credentials_says_how_to_log_in_not_check_the_network(settings, monkeypatch,
                                                                                  no_cloud_credentials):
    """`TENFOLD_ENV=dev tenfold feedback dead-letters` on a machine never logged in said "cannot reach Pub/Sub
    (DefaultCredentialsError: ...); check the network and Pub/Sub's status": google-auth's error is a google module's
    too. The real client, as the cloud builds it (no emulator), raising what it raises here."""
    cloud = settings.model_copy(update={"messaging": settings.messaging.model_copy(update={"emulator_host": None})})
    monkeypatch.setattr(feedback_cli, "command_settings", lambda env=None: cloud)
    result = CliRunner().invoke(feedback_cli.app, ["dead-letters", "--stream", "feedback"])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
    assert result.output.strip() == ("error: `tenfold feedback dead-letters` "
                                     + _LOG_IN.replace("(OSError)", "(DefaultCredentialsError)")), result.output
    assert "check the network" not in result.output


def test_a_replay_whose_acknowledgement_meets_a_short_outage_waits_it_out_and_sends_nothing_twice(settings, monkeypatch):
    """The acknowledgement of messages already re-published was retried for the 5 s a command waits on a Pub/Sub
    that is down before saying so: an outage a little longer left them dead letters, and the next replay published
    them again. Pub/Sub here is a client at the transport boundary, unavailable for 8 s (on a clock of its own)."""
    import contextlib
    from types import SimpleNamespace

    from google.api_core.exceptions import ServiceUnavailable

    import tenfold.messaging as messaging
    from tenfold.feedback import dead_letters

    clock = [0.0]
    monkeypatch.setattr(dead_letters, "time", SimpleNamespace(monotonic=lambda: clock[0],
                                                              sleep=lambda s: clock.__setitem__(0, clock[0] + s)))

    class DeadLetterSubscription:
        def __init__(self) -> None:
            self.waiting = [SimpleNamespace(ack_id=f"a{n}", message=SimpleNamespace(
                message_id=f"m{n}", data=b"{}", attributes={}, publish_time=None)) for n in (1, 2)]
            self.acked: list[str] = []

        def pull(self, request, timeout, retry):
            taken, self.waiting = self.waiting, []
            return SimpleNamespace(received_messages=taken)

        def acknowledge(self, request, retry):
            if clock[0] < 8.0:
                raise ServiceUnavailable("the emulator is restarting")
            self.acked += request["ack_ids"]

        def modify_ack_deadline(self, request, retry):
            pass

    subscription = DeadLetterSubscription()
    published: list[bytes] = []

    @contextlib.contextmanager
    def client(settings, stream):
        yield subscription, "projects/p/subscriptions/feedback-dead-letters"

    class Publisher:
        def publish(self, topic, data, **attributes):
            published.append(data)
            return SimpleNamespace(result=lambda timeout: "id")

        def stop(self) -> None:
            pass

    monkeypatch.setattr(dead_letters, "_client", client)
    monkeypatch.setattr(messaging, "publisher_client", lambda settings: Publisher())
    sent = dead_letters.replay(settings, "feedback")
    assert [d.message_id for d in sent] == ["m1", "m2"] and subscription.acked == ["a1", "a2"]
    assert len(published) == 2


@pytest.mark.parametrize("replay", [[], ["--replay"]])
def test_dead_letters_with_a_hung_pubsub_says_it_cannot_reach_it_not_that_none_are_dead_lettered(hung_pubsub, monkeypatch,
                                                                                                 replay):
    """A SIGSTOPped or wedged emulator (its port accepts connections, nothing answers) let the held first pull run out
    its 5 s deadline, as the emulator does on an empty subscription (it holds such a pull about 9 s): `dead-letters`
    said "0 feedback message(s) dead-lettered" (and --replay "re-published"), exit 0, while Pub/Sub could not be asked.
    The fault is real at the transport: a loopback port that is listened on and never served, so the kernel accepts
    the real client's connection and nothing ever answers it."""
    import time

    from tenfold.messaging.pulls import ANSWER_S, HELD_PULL_S

    host = hung_pubsub.messaging.emulator_host
    monkeypatch.setattr(feedback_cli, "command_settings", lambda env=None: hung_pubsub)
    started = time.monotonic()
    result = CliRunner().invoke(feedback_cli.app, ["dead-letters", "--stream", "feedback", *replay])
    took = time.monotonic() - started
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
    line, = result.output.strip().splitlines()
    assert line.startswith(f"error: cannot reach {host} (DeadlineExceeded: "), line
    assert "not answering" in line and line.endswith("is the platform up (`tenfold up`)?"), line
    assert took < HELD_PULL_S + ANSWER_S + 15, f"took {took:.0f} s: waited on more than its two pulls' deadlines"


def test_a_replay_whose_pubsub_stops_answering_after_a_batch_says_how_many_it_re_published(settings, monkeypatch):
    """A later pull that meets its deadline is Pub/Sub not answering (it was "nothing more"); after a batch was
    re-published and acknowledged, the refusal was the generic "cannot reach", which did not say that those were sent
    and are no dead letters any more. Pub/Sub here is a client at the transport boundary: its second pull hangs."""
    import contextlib
    from types import SimpleNamespace

    from google.api_core.exceptions import DeadlineExceeded

    import tenfold.messaging as messaging
    from tenfold.feedback import dead_letters

    class DeadLetterSubscription:
        def __init__(self) -> None:
            self.pulls = 0
            self.acked: list[str] = []

        def pull(self, request, timeout, retry):
            self.pulls += 1
            if self.pulls > 1:
                raise DeadlineExceeded("no answer")
            return SimpleNamespace(received_messages=[SimpleNamespace(ack_id=f"a{n}", message=SimpleNamespace(
                message_id=f"m{n}", data=b"{}", attributes={}, publish_time=None)) for n in (1, 2)])

        def acknowledge(self, request, retry):
            self.acked += request["ack_ids"]

        def modify_ack_deadline(self, request, retry):
            pass

    subscription = DeadLetterSubscription()

    @contextlib.contextmanager
    def client(settings, stream):
        yield subscription, "projects/p/subscriptions/feedback-dead-letters"

    class Publisher:
        def publish(self, topic, data, **attributes):
            return SimpleNamespace(result=lambda timeout: "id")

        def stop(self) -> None:
            pass

    monkeypatch.setattr(dead_letters, "_client", client)
    monkeypatch.setattr(messaging, "publisher_client", lambda settings: Publisher())
    with pytest.raises(dead_letters.ReplayError, match=r"^2 feedback message\(s\) were re-published; then pulling more "
                                                       r"of the dead letters failed \(DeadlineExceeded: .*not answering"):
        dead_letters.replay(settings, "feedback")
    assert subscription.acked == ["a1", "a2"]
