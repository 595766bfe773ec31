"""Benchmark: one canary check's online accuracy, the window joined from recent log files vs the month rebuilt.

Run::

    .venv/bin/python bench/feedback_window.py                      # 336,000 predictions in 740 files per log
    .venv/bin/python bench/feedback_window.py --predictions 50000 --files 100

A temp lake gets the two landing logs as the feedback sink writes them (``tenfold.feedback.log.write_batch``):
``--predictions`` sampled predictions served over the last ``--hours`` in ``--files`` files, each landing just
after its predictions were served, and a feedback file beside each (an outcome for every prediction). Then, each
``--repeats`` times, one more small file lands (as the sink does between two checks) and a canary check's read
of the last ``--window-min`` minutes is timed both ways, in the same process:

* **month rebuild** (the peer, what every check did before): ``join(settings)`` (the month's inputs changed, so
  it rebuilds and publishes the month from all its files), then ``online_metrics`` over the published table;
* **window**: ``online_metrics(..., refresh=True)`` with the window's start, which joins in memory the files
  landed since then (``tenfold.feedback.upsert.join_window``) and publishes nothing.

Both must give the same groups (exit 1 otherwise). The figures go to ``bench/results/feedback_window.md``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import _siblings
import pyarrow as pa

from tenfold.config import build_settings
from tenfold.data.lake import Lake, Partition

RESULTS = Path(__file__).parent / "results" / "feedback_window.md"
REQUEST = {"carrier": "UA", "dest": "IAH", "flight": 1545, "origin": "EWR", "sched_dep": "2013-01-01T05:15:00"}


def _land(lake: Lake, settings, served: list[tuple[str, str, float, dt.datetime]], at: dt.datetime) -> None:
    """One predictions file and one feedback file, both landed at ``at``: the records as the server publishes
    them, in the logs' rows as the sink writes them (``prediction_row``/``feedback_row`` plus the delivery)."""
    from tenfold.feedback.log import write_batch
    from tenfold.feedback.schema import FEEDBACK_LOG, PREDICTIONS_LOG, feedback_row, prediction_row
    from tenfold.messaging.records import FeedbackRecord, PredictionRecord

    st = settings.storage

    def delivered(row: dict) -> dict:
        return {**row, "message_id": uuid.uuid4().hex, "publish_time": at, "delivery_attempt": 1, "landed_at": at}

    preds = [delivered(prediction_row(PredictionRecord(
        prediction_id=pid, model_version="v2" if arm == "canary" else "v1", arm=arm, user_key=f"u-{pid[:8]}",
        bucket=int(pid[:2], 16) % 100, probability=p, request=REQUEST, latency_ms=3.0, served_at=t)))
        for pid, arm, p, t in served]
    fb = [delivered(feedback_row(FeedbackRecord(prediction_id=pid, outcome=int(p > 0.5) if i % 4 else int(p <= 0.5),
                                                received_at=at)))
          for i, (pid, _arm, p, _t) in enumerate(served)]
    part = Partition.from_date(served[0][3])
    write_batch(lake, st.predictions_table, part, pa.Table.from_pylist(preds, schema=PREDICTIONS_LOG), now=at)
    write_batch(lake, st.feedback_table, Partition.from_date(at), pa.Table.from_pylist(fb, schema=FEEDBACK_LOG), now=at)


def _batch(n: int, at: dt.datetime, seed: int) -> list[tuple[str, str, float, dt.datetime]]:
    ids = [uuid.UUID(int=(seed << 64) + i).hex for i in range(n)]
    return [(pid, "canary" if i % 10 == 0 else "stable", (i * 7919 % 1000) / 1000.0, at - dt.timedelta(seconds=1))
            for i, pid in enumerate(ids)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--predictions", type=_siblings.positive_int, default=336_000)
    parser.add_argument("--files", type=_siblings.positive_int, default=740, help="files per log")
    parser.add_argument("--hours", type=float, default=6.0, help="how long the logged serving lasted")
    parser.add_argument("--window-min", type=float, default=5.0, help="the check's window")
    parser.add_argument("--repeats", type=_siblings.positive_int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.predictions < args.files:  # a file of no prediction: nothing to land, and no month to land it in
        parser.error(f"--predictions {args.predictions} is fewer than --files {args.files}: every file holds at least "
                     "one prediction; give more predictions or fewer files")

    from tenfold.feedback.metrics import online_metrics
    from tenfold.feedback.upsert import join

    with tempfile.TemporaryDirectory() as tmp:
        settings = build_settings("local", {"TENFOLD_HOME": str(Path(tmp) / "home")})
        lake = Lake.from_settings(settings)
        end = dt.datetime.now(dt.UTC).replace(microsecond=0)
        # The whole serving span stays in one month, so the month rebuilt is all of it (as in a long canary).
        start = max(end - dt.timedelta(hours=args.hours), end.replace(day=1, hour=0, minute=0, second=0))
        per_file = args.predictions // args.files
        step = (end - start - dt.timedelta(minutes=args.window_min + 1)) / args.files
        span_h = (end - start).total_seconds() / 3600
        if step <= dt.timedelta(0):  # minutes into a month: the files would land in the month before
            parser.error(f"it is {end:%Y-%m-%d %H:%M} UTC, {span_h * 60:.0f} minutes into the month: too little of it for "
                         f"{args.files} files and a {args.window_min:g}-minute window; run it later")
        if span_h < args.hours:
            print(f"[bench/feedback_window] the month began {span_h:.1f} h ago: the log spans {span_h:.1f} h, "
                  f"not {args.hours:g} h", flush=True)
        t0 = time.perf_counter()
        for f in range(args.files):
            _land(lake, settings, _batch(per_file, start + f * step, f), start + f * step + dt.timedelta(seconds=1))
        build_s = time.perf_counter() - t0
        join(settings)  # the published table is current before the first check, as the sink's idle join keeps it

        rebuild, window, rows = [], [], 0
        for r in range(args.repeats):
            now = dt.datetime.now(dt.UTC)
            _land(lake, settings, _batch(50, now - dt.timedelta(seconds=2), 10**6 + r), now - dt.timedelta(seconds=1))
            since, until = now - dt.timedelta(minutes=args.window_min), now + dt.timedelta(seconds=1)
            a = time.perf_counter()
            fresh = online_metrics(settings, since, until, refresh=True)
            window.append(time.perf_counter() - a)
            a = time.perf_counter()
            join(settings)
            published = online_metrics(settings, since, until)
            rebuild.append(time.perf_counter() - a)
            if [g.to_dict() for g in fresh] != [g.to_dict() for g in published]:
                print(f"the window's groups differ from the published join's:\n{fresh}\n{published}", file=sys.stderr)
                return 1
            rows = sum(g.served for g in fresh)

    med_rebuild, med_window = statistics.median(rebuild), statistics.median(window)
    lines = [
        "# One canary check's online accuracy: the window's log files vs the month rebuilt",
        "",
        f"Command: `.venv/bin/python bench/feedback_window.py --predictions {args.predictions} --files {args.files} "
        f"--hours {args.hours:g} --window-min {args.window_min:g} --repeats {args.repeats}` "
        f"({dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC)",
        "",
        f"Logs: {per_file * args.files:,} predictions with their feedback in {args.files} files per log over "
        f"{span_h:.3g} h of one month (written in {build_s:.1f} s); each check: one new file of 50 landed first, "
        f"then the last {args.window_min:g} min read ({rows} predictions served in it). Same groups both ways.",
        "",
        "| check | median s | runs (s) |",
        "|---|---:|---|",
        f"| month rebuild (join, then the published table) | {med_rebuild:.3f} | {', '.join(f'{x:.3f}' for x in rebuild)} |",
        f"| window (join_window over the files landed since it opened) | {med_window:.3f} | "
        f"{', '.join(f'{x:.3f}' for x in window)} |",
        "",
        f"Ratio: the window costs {med_window / med_rebuild:.3f}x the month rebuild "
        f"({med_rebuild / med_window:.0f}x faster).",
        "",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
