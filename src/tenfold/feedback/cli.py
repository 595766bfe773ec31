"""``tenfold feedback``: land predictions and feedback, join them, and show online accuracy.

Examples::

    tenfold feedback sink                    # run until SIGTERM/Ctrl-C, joining what landed every --join-every-s
    tenfold feedback sink --until-idle       # drain both subscriptions, join, print what happened, exit
    tenfold feedback sink --once --no-join   # one batch from each subscription
    tenfold feedback join [--month 2026-05] [--force]
    tenfold feedback metrics --last 1h       # per model version and arm; --since/--until ISO times, --json
    tenfold feedback dead-letters --stream feedback [--replay]   # what the sink refused; send it back

The environment is ``--env`` or ``TENFOLD_ENV`` (default ``local``; the local platform must be up:
``tenfold up``). Exit codes: 0 done, 1 the lake or Pub/Sub failed, 2 bad arguments.
"""

from __future__ import annotations

import datetime as dt
import errno
import json
import re
import signal
import threading
import time
from typing import TYPE_CHECKING, Annotated, Any

import typer

from tenfold.config import command_settings
from tenfold.outages import command_exit

if TYPE_CHECKING:
    from tenfold.feedback.upsert import JoinReport

app = typer.Typer(help="The feedback loop: land predictions and feedback, join them, online accuracy.",
                  no_args_is_help=True)

EnvOption = Annotated[str | None, typer.Option("--env", help="local, dev or prod; default TENFOLD_ENV")]


def _fail(message: str, code: int) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


def _echo_json(value: Any) -> None:
    typer.echo(json.dumps(value, indent=2, default=str))


@app.command("sink")
def sink_command(
    once: Annotated[bool, typer.Option("--once", help="pull one batch from each subscription, then exit")] = False,
    until_idle: Annotated[bool, typer.Option("--until-idle", help="drain both subscriptions, then exit")] = False,
    idle_s: Annotated[float, typer.Option(min=0.0, help="--until-idle: seconds with nothing to pull that end it")] = 2.0,
    max_messages: Annotated[int, typer.Option(min=1, max=1000, help="messages per pull and subscription")] = 500,
    do_join: Annotated[bool, typer.Option("--join/--no-join", help="run the join after draining, or while running")] = True,
    join_every_s: Annotated[float, typer.Option(min=0.0, help="run mode: at most one join per this many seconds")] = 30.0,
    pull_wait_s: Annotated[float, typer.Option(min=0.5, help="run mode: how long one pull waits for messages")] = 5.0,
    pubsub_retry_s: Annotated[float, typer.Option(min=0.0, help="give up after Pub/Sub is unreachable this long")] = 60.0,
    env: EnvOption = None,
) -> None:
    """Land sampled predictions and feedback from Pub/Sub in the lake (acknowledged only once written)."""
    from google.api_core.exceptions import GoogleAPICallError
    from google.auth.exceptions import GoogleAuthError

    from tenfold.data.lake import LakeError
    from tenfold.feedback.lock import LockLost, LockTimeout
    from tenfold.feedback.sink import FeedbackSink, SinkError, SinkOptions

    if once and until_idle:
        raise _fail("--once and --until-idle are alternatives: pass one of them (or neither, to run until SIGTERM)", 2)
    settings = command_settings(env)
    out: dict[str, Any] = {}
    try:
        with FeedbackSink(settings, SinkOptions(max_messages=max_messages, idle_s=idle_s, pull_wait_s=pull_wait_s,
                                             pubsub_retry_s=pubsub_retry_s)) as sink:
            if once:
                sink.poll_once()
            elif until_idle:
                sink.drain()
            else:
                _run_forever(sink, settings, do_join, join_every_s)
            out["sink"] = sink.stats.to_dict()
    except (SinkError, LockTimeout, LockLost, LakeError) as exc:
        cause = exc.__cause__
        if isinstance(exc, SinkError) and isinstance(cause, OSError) and cause.errno == errno.ENOSPC:
            # The lake's disk is full: said as a full disk, with where to free space (the sink's own words gave the
            # raw errno only). Nothing was acknowledged, so what it held is redelivered once it runs again.
            raise command_exit(cause, "tenfold feedback sink", settings.local.home,
                               note="; nothing it held was acknowledged, so Pub/Sub redelivers it once the sink runs "
                                    "again") from exc
        raise _fail(str(exc), 1) from exc
    except GoogleAPICallError as exc:  # one the sink does not retry (a bad request, say): what Pub/Sub said
        raise _fail(f"Pub/Sub refused the sink ({type(exc).__name__}: {exc}); unacknowledged messages are "
                    "redelivered, so nothing is lost: fix what it names and start the sink again", 1) from exc
    except (OSError, GoogleAuthError) as exc:  # no credentials (dev), a full disk: what is wrong and what to do
        raise command_exit(exc, "tenfold feedback sink", settings.local.home) from exc
    if not (do_join and (once or until_idle)):
        _echo_json(out)
        return
    # The join after the drain: what landed is written and acknowledged whatever it does, so the counts are printed
    # first in every case (a failed join made them lost). Another join holding the lock is no failure: the join is
    # skipped, said in the JSON, exit 0 (that join, or the next, joins what landed); a lake that fails it is exit 1.
    try:
        out["join"] = _sink_join(settings).to_dict()
    except LockTimeout as exc:
        if not _join_busy(exc):  # the lock's store refused or failed (GCS away, a 403): said as the lake failing
            _echo_json(out)
            raise _fail(str(exc), 1) from exc
        out["join"] = {"skipped": f"another join is running ({exc}); what landed is in the logs, and the next join "
                                  "joins it"}
    except (LockLost, LakeError) as exc:
        _echo_json(out)
        raise _fail(f"landed, but the join failed: {exc}", 1) from exc
    except _lake_faults() as exc:  # a full disk, GCS away or refusing: not Pub/Sub
        _echo_json(out)
        raise command_exit(exc, "tenfold feedback sink", settings.local.home) from exc
    _echo_json(out)


def _sink_join(settings: Any) -> JoinReport:
    """The sink's own join (the periodic one, the last one, the one after ``--once``/``--until-idle``): one try at
    the join lock, never a wait. Waiting (60 s, as ``tenfold feedback join`` does) stopped landing for that long each
    round while another join ran, and a stop's last join could outlast the 90 s a stop gives the sink.
    :class:`LockTimeout` at once when another join holds the lock (see :func:`_join_busy`)."""
    import dataclasses

    from tenfold.feedback.upsert import JoinOptions, join

    return join(settings, options=dataclasses.replace(JoinOptions.of(settings), lock_timeout_s=0.0))


def _lake_faults() -> tuple[type[Exception], ...]:
    """What a join or a read of the lake raises, besides the lake's and the join lock's own errors, when the lake is
    away or refuses: an OSError (a full disk, GCS's transport), and Google's errors, which there are the storage
    client's (GCS away or refusing: a 403, its retries run out as a RetryError, a token it cannot refresh), not
    Pub/Sub's. One classification for every join and read of this module (the sink's joins, ``join``, ``metrics``)."""
    from google.api_core.exceptions import GoogleAPIError
    from google.auth.exceptions import GoogleAuthError

    return (OSError, GoogleAuthError, GoogleAPIError)


def _join_failure(exc: BaseException, settings: Any) -> str:
    """What a failed join of the running sink says: the lake's own words, or, for an error of Google's storage client
    (whose words name neither the lake nor GCS: "403 Forbidden"), the lake it came from."""
    from google.api_core.exceptions import GoogleAPIError
    from google.auth.exceptions import GoogleAuthError

    if isinstance(exc, GoogleAPIError | GoogleAuthError):
        return f"the lake at {settings.storage.lake_uri} failed it ({type(exc).__name__}: {exc})"
    return str(exc)


def _join_busy(exc: BaseException) -> bool:
    """Whether a join's failure is another join holding its lock (skip it: the next try joins what landed), rather
    than the lock's store failing (GCS unreachable or refusing: :class:`LockUnavailable`, a LockTimeout too)."""
    from tenfold.data.locks import LockTimeout, LockUnavailable

    return isinstance(exc, LockTimeout) and not isinstance(exc, LockUnavailable)


def _run_forever(sink: Any, settings: Any, do_join: bool, join_every_s: float) -> None:
    from tenfold.data.lake import LakeError
    from tenfold.feedback.lock import LockLost, LockTimeout

    # The lake failing a join (GCS away or refusing included: not Pub/Sub) fails nothing that landed: warned, and the
    # join tried again later. Out of run(), such an error was taken for Pub/Sub's (or for missing credentials), exit 1.
    join_failures: tuple[type[Exception], ...] = (LakeError, LockTimeout, LockLost, *_lake_faults())
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    # landed -1: the first round joins (cheap when nothing changed: unchanged months are skipped). What the last
    # process landed before it died (SIGKILL, or a SinkError out of run, which skips the last join) was joined by no
    # one until new traffic landed, and a quiet night kept it out of the labelled table.
    state = {"landed": -1, "at": 0.0}

    def maybe_join() -> None:
        # Join when something landed since the last join, at most once per join_every_s, busy or quiet.
        if do_join and sink.stats.landed > state["landed"] and time.monotonic() - state["at"] >= join_every_s:
            state["at"] = time.monotonic()
            landed = sink.stats.landed
            try:
                report = _sink_join(settings)
            except join_failures as exc:
                # Landing goes on; the logs keep everything and the next try joins it.
                if _join_busy(exc):  # another join holds the lock (one try, no wait): not an error
                    typer.echo(f"feedback join skipped: another join is running; trying again in {join_every_s:.0f} s",
                               err=True)
                    return
                typer.echo(f"warning: join failed, trying again in {join_every_s:.0f} s: {_join_failure(exc, settings)}",
                           err=True)
                return
            state["landed"] = landed
            if not landed:  # the first round's join of what an earlier process landed: the next landing joins at once
                state["at"] = 0.0
            typer.echo(json.dumps({"join": report.published}), err=True)
            for line in report.kept:
                typer.echo(f"warning: feedback join kept {line}", err=True)

    subs = settings.messaging.subscriptions
    typer.echo(f"feedback sink: pulling {subs['predictions'].name} and {subs['feedback'].name} until SIGTERM", err=True)
    sink.run(stop, after_round=maybe_join)
    if not do_join or sink.stats.landed <= max(state["landed"], 0):  # nothing landed by this process since its last join
        return
    # The last join fails nothing that landed (the logs keep it, and the next sink joins at its start): failing it made
    # a stopped sink exit 1 with its counts unprinted. Stopped while the lake or Pub/Sub was being retried, it is not
    # even tried: it would meet the same lake, and on GCS could wait for the join lock past the 90 s a stop gives.
    if sink.stopped_while_retrying:
        typer.echo("warning: stopped while retrying the lake or Pub/Sub, so no last join: the next sink joins what "
                   "landed when it starts", err=True)
        return
    try:
        _sink_join(settings)  # one try at the lock: a wait for it could outlast the 90 s a stop gives the sink
    except join_failures as exc:
        if _join_busy(exc):
            typer.echo("feedback join skipped: another join is running; what landed is in the logs, and the next "
                       "join joins it", err=True)
            return
        typer.echo(f"warning: the last join failed ({_join_failure(exc, settings)}); the next sink joins what landed "
                   "when it starts", err=True)


@app.command("join")
def join_command(
    month: Annotated[list[str] | None, typer.Option(help="served month YYYY-MM to rebuild (repeatable); default all")] = None,
    force: Annotated[bool, typer.Option(help="rebuild months whose logs did not change, and publish a month whose "
                                           "rebuild lost published rows or labels (log files deleted)")] = False,
    horizon: Annotated[int | None, typer.Option(min=0, max=24, help="months after the served month to look for "
                       "feedback (default: settings.feedback.horizon_months, which every other join uses too)")] = None,
    env: EnvOption = None,
) -> None:
    """Join outcomes to predictions by prediction id and publish the labelled table (an upsert)."""
    from tenfold.data.lake import Lake, LakeError, Partition
    from tenfold.feedback.lock import LockLost, LockTimeout
    from tenfold.feedback.log import log_months
    from tenfold.feedback.upsert import JoinOptions, join

    try:
        months = [Partition.parse(m) for m in month] if month else None
    except ValueError as exc:
        raise _fail(str(exc), 2) from exc
    settings = command_settings(env)
    try:
        options = JoinOptions.of(settings) if horizon is None else JoinOptions(feedback_horizon_months=horizon)
        if months:
            # A month with no predictions log (a typo, or a log deleted whole) was joined as nothing, exit 0.
            served = log_months(Lake.from_settings(settings), settings.storage.predictions_table)
            if missing := sorted({m.label for m in months} - {m.label for m in served}):
                raise _fail(f"no predictions were served in {', '.join(missing)}: nothing to join there (months with "
                            f"predictions: {', '.join(m.label for m in served) or 'none'})", 2)
        report = join(settings, months, options=options, force=force)
    except (LakeError, LockTimeout, LockLost) as exc:
        raise _fail(str(exc), 1) from exc
    except _lake_faults() as exc:  # no credentials (dev), a full disk, GCS away or refusing
        raise command_exit(exc, "tenfold feedback join", settings.local.home) from exc
    _echo_json(report.to_dict())


_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _parse_time(value: str | None, name: str) -> dt.datetime | None:
    if value is None:
        return None
    try:
        parsed = dt.datetime.fromisoformat(value)
    except ValueError as exc:
        raise _fail(f"--{name} {value!r} is not an ISO time: use e.g. 2026-05-14T10:00 (UTC unless it has an offset)",
                    2) from exc
    try:  # in UTC, with a day to spare: the window is widened by the landing skew and read up to 1 µs before its end
        at = parsed.replace(tzinfo=dt.UTC) if parsed.tzinfo is None else parsed.astimezone(dt.UTC)
        _ = (at - dt.timedelta(days=1), at + dt.timedelta(days=1))  # only whether they overflow
    except OverflowError:  # 0001-01-01, or 9999-12-31T23:00-05:00 (no UTC time): it was a raw OverflowError
        raise _fail(f"--{name} {value!r} is at the very edge of the calendar (year 1 or 9999): give a time within it",
                    2) from None
    return at


@app.command("metrics")
def metrics_command(
    since: Annotated[str | None, typer.Option(help="window start (served_at, ISO; UTC unless an offset is given)")] = None,
    until: Annotated[str | None, typer.Option(help="window end, exclusive; default now")] = None,
    last: Annotated[str | None, typer.Option(help="window of this length up to --until, e.g. 30m, 1h, 7d")] = None,
    by: Annotated[list[str] | None, typer.Option(help="group column (repeatable); default model_version and arm")] = None,
    refresh: Annotated[bool, typer.Option("--refresh/--no-refresh", help="include what the sink landed since the last join (with a window start: joined from the recent log files, nothing published; without: the join runs first)")] = True,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
    env: EnvOption = None,
) -> None:
    """Online accuracy per model version and arm: count, positives, accuracy, log loss, Brier, AUC."""
    import pyarrow as pa

    from tenfold.data.lake import Lake, LakeError, Partition
    from tenfold.feedback.lock import LockLost, LockTimeout
    from tenfold.feedback.log import log_months
    from tenfold.feedback.metrics import check_grouping, format_metrics, online_metrics

    try:
        check_grouping(by or ())
    except ValueError as exc:
        raise _fail(str(exc), 2) from exc
    start, end = _parse_time(since, "since"), _parse_time(until, "until")
    if last is not None:
        if since is not None:
            raise _fail("--last and --since both set the window's start: pass one of them", 2)
        match = _DURATION.match(last)
        if not match:
            raise _fail(f"--last {last!r} is not a duration: use a number and s, m, h or d, e.g. 1h", 2)
        end = end or dt.datetime.now(dt.UTC)
        try:
            start = end - dt.timedelta(seconds=float(match[1]) * _UNITS[match[2]])
        except OverflowError:
            raise _fail(f"--last {last!r} reaches before the year 1 (the window ends {end:%Y-%m-%d}): give a shorter "
                        "duration, or --since", 2) from None
    if start is not None and end is not None and start >= end:
        raise _fail(f"the window is empty: its start {start.isoformat()} is not before its end {end.isoformat()} "
                    "(--until is exclusive); give a start before the end", 2)
    settings = command_settings(env)
    try:
        rows = online_metrics(settings, start, end, by=tuple(by or ("model_version", "arm")), refresh=refresh)
    except (LakeError, LockTimeout, LockLost) as exc:
        raise _fail(str(exc), 1) from exc
    except _lake_faults() as exc:  # no credentials (dev), a full disk, GCS away or refusing
        raise command_exit(exc, "tenfold feedback metrics", settings.local.home) from exc
    except (ValueError, pa.ArrowException) as exc:  # the arguments were checked above: this is the lake's data
        # The window's months, one by one: a --force of every month would also publish smaller each month whose log
        # files were trimmed since (what the join's guard keeps), losing their labels for good.
        try:
            served = [p.label for p in log_months(Lake.from_settings(settings), settings.storage.predictions_table)]
        except (LakeError, OSError):
            served = []
        first = Partition.from_date(start).label if start is not None else ""
        last = Partition.from_date(end - dt.timedelta(microseconds=1)).label if end is not None else "9999-12"
        months = [m for m in served if first <= m <= last]  # the window's months the join can rebuild
        which = (f"for the window's months with predictions ({', '.join(months)}), one at a time: `tenfold feedback "
                 f"join --month {months[0]} --force`" if months else
                 "with `tenfold feedback join --month YYYY-MM --force` for the months it holds (no month of the window "
                 "has a predictions log: a month published by hand is removed by hand)")
        raise _fail(f"cannot compute online metrics from the {settings.storage.labelled_table} table of "
                    f"{settings.storage.lake_uri} ({type(exc).__name__}: {exc}); rebuild it {which}", 1) from exc
    if as_json:
        _echo_json({"since": start, "until": end, "groups": [r.to_dict() for r in rows]})
    else:
        typer.echo(format_metrics(rows))


@app.command("dead-letters")
def dead_letters_command(
    stream: Annotated[str, typer.Option(help="predictions or feedback")],
    do_replay: Annotated[bool, typer.Option("--replay", help="publish them to the stream's topic again")] = False,
    limit: Annotated[int, typer.Option(min=1, max=10_000, help="at most this many")] = 100,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
    env: EnvOption = None,
) -> None:
    """The stream's dead-lettered messages, with why the sink refuses each now; --replay sends them back."""
    from tenfold.feedback.dead_letters import STREAMS, ReplayError, peek, replay

    if stream not in STREAMS:
        raise _fail(f"unknown stream {stream!r}: use one of {', '.join(STREAMS)}", 2)
    settings = command_settings(env)
    try:
        letters = (replay if do_replay else peek)(settings, stream, limit=limit)
    except ReplayError as exc:
        raise _fail(str(exc), 1) from exc
    except Exception as exc:
        from google.api_core.exceptions import NotFound, PermissionDenied, Unauthenticated

        from tenfold.outages import no_credentials

        if no_credentials(exc):  # google.auth's: not the network, and `tenfold up` does not log anyone in
            raise command_exit(exc, "tenfold feedback dead-letters", settings.local.home) from exc
        if isinstance(exc, NotFound):
            raise _fail(f"Pub/Sub has no such subscription or topic ({exc.message}): provision the Pub/Sub topology "
                        "first (`tenfold up` locally, the platform stack in the cloud)", 1) from exc
        if isinstance(exc, PermissionDenied | Unauthenticated):
            raise _fail(f"Pub/Sub refused these credentials ({exc.message}): reading dead letters needs "
                        f"roles/pubsub.subscriber on the {stream} dead-letter subscription (and --replay "
                        f"roles/pubsub.publisher on the {stream} topic)", 1) from exc
        if type(exc).__module__.startswith(("google", "grpc")):
            where = settings.messaging.emulator_host
            advice = "is the platform up (`tenfold up`)?" if where else "check the network and Pub/Sub's status"
            raise _fail(f"cannot reach {where or 'Pub/Sub'} ({type(exc).__name__}: {exc}); {advice}", 1) from exc
        raise
    if as_json:
        _echo_json([letter.to_dict() for letter in letters])
        return
    for letter in letters:
        body = letter.body.decode("utf-8", "replace")
        typer.echo(f"{letter.message_id}  published {letter.published_at}  "
                   f"{'parses now' if letter.error is None else 'refused: ' + letter.error}")
        typer.echo(f"    {body[:200]}{'...' if len(body) > 200 else ''}")
    verb = "re-published to the stream's topic" if do_replay else "dead-lettered (left in place)"
    typer.echo(f"{len(letters)} {stream} message(s) {verb}")
