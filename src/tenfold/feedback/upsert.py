"""The join: outcomes to predictions by prediction id, an upsert published month by month.

Run it with ``tenfold feedback join`` (the running sink also runs it, at most every ``--join-every-s``); in code, ``join(settings)``.

For every month of served predictions, the labelled table's partition is rebuilt from the two landing
logs (:mod:`tenfold.feedback.log`) and published atomically with ``Lake.publish``, so a reader sees the
old partition or the new one, never a mix:

* **one row per prediction id.** Deliveries of the same prediction (Pub/Sub redeliveries, publisher
  retries under a new message id) are one record; if two *different* records share an id (a server
  bug), the earliest ``served_at`` wins and the report counts a conflict;
* **the latest observation wins** among feedback for one prediction (:func:`latest_per_key`): when every record
  of it carries ``observed_at``, the latest ``observed_at``; when any lacks one, the latest ``received_at``; ties
  broken by the later ``received_at``, then by the higher outcome. Duplicates of one record (its outcome and
  ``observed_at``: a redelivery, or a client's retry received later) count once in ``feedback_records``;
* **late feedback joins when its prediction lands.** Feedback that arrived before its prediction (or
  before the prediction's sample was written) waits in the feedback log; the month is rebuilt
  whenever either log gains a file, so the next join picks it up. Feedback is looked for in the
  months from one before the prediction's month (clock skew between replicas) to
  ``feedback_horizon_months`` after it; later feedback stays in the log unjoined;
* **predictions without feedback are kept** with a null outcome, so the canary analysis can tell "no
  feedback yet" from "no traffic".

A month whose inputs (the names and sizes of its log files, the horizon and this module's
``JOIN_VERSION``) are those its published manifest records is skipped without reading a row, so
running the join often is cheap. Re-running it on the same logs publishes identical bytes. A rebuild with
fewer predictions, or fewer labelled ones, than the published month (log files deleted or quarantined since)
is not published unless forced: the month is kept and the report says why (:attr:`MonthJoin.kept`).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import itertools
import json
import logging
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from tenfold.config import Settings
from tenfold.data.lake import Lake, LakeError, MissingManifestError, Partition, month_range
from tenfold.feedback.lock import join_lock
from tenfold.feedback.log import log_files, log_months, read_log
from tenfold.feedback.schema import FEEDBACK_FIELDS, FEEDBACK_LOG, LABELLED, PREDICTION_FIELDS, PREDICTIONS_LOG
from tenfold.fsio import make_dirs
from tenfold.messaging.records import utc

# Bump when the join's rule changes: every month is then rebuilt on the next run.
JOIN_VERSION = 3  # 2: a record is (outcome, observed_at) in feedback_records; a retry received later is no correction
# 3: a prediction's feedback is ranked on one clock: observed_at only when every record of it has one

log = logging.getLogger(__name__)

_PRED_COLS = [f.name for f in PREDICTION_FIELDS]
_FB_COLS = [f.name for f in FEEDBACK_FIELDS]


@dataclass(frozen=True)
class JoinOptions:
    feedback_horizon_months: int = 2  # feedback received up to this many months after the served month joins
    # join_window: how far a log file's landing time (the sink's clock) may trail a served_at (a replica's)
    landing_skew_s: float = 600.0
    lock_timeout_s: float = 60.0

    @classmethod
    def of(cls, settings: Settings) -> JoinOptions:
        """The options every join uses unless told otherwise: the horizon of ``settings.feedback``."""
        return cls(feedback_horizon_months=settings.feedback.horizon_months)


@dataclass
class MonthJoin:
    """What the join did to one served month."""

    month: str
    published: bool  # False: its inputs had not changed (nothing was read or written), or it was kept (``kept``)
    predictions: int = 0  # distinct prediction ids = rows of the labelled partition
    labelled: int = 0  # of which have an outcome
    prediction_deliveries: int = 0  # rows in the predictions log (redeliveries included)
    conflicting_predictions: int = 0  # ids that came with two different records
    feedback_deliveries: int = 0  # rows in the feedback log for these predictions
    feedback_records: int = 0  # distinct feedback records for them
    corrected: int = 0  # predictions with more than one distinct feedback record
    # Not published because the logs now give fewer rows than the published month (files deleted or quarantined
    # since): why, and what to do. Empty otherwise.
    kept: str = ""


@dataclass
class JoinReport:
    months: list[MonthJoin] = field(default_factory=list)

    @property
    def published(self) -> list[str]:
        return [m.month for m in self.months if m.published]

    @property
    def kept(self) -> list[str]:
        """Why each month the join would have shrunk was kept as published, one line each."""
        return [f"{m.month}: {m.kept}" for m in self.months if m.kept]

    def to_dict(self) -> dict[str, Any]:
        return {"published": self.published, "months": [asdict(m) for m in self.months]}


def join(
    settings: Settings,
    months: list[Partition] | None = None,
    *,
    options: JoinOptions | None = None,
    force: bool = False,
    lake: Lake | None = None,
) -> JoinReport:
    """Bring the labelled table up to date with the logs, for ``months`` (default: every served month).

    ``force`` rebuilds months whose inputs did not change. Holds the join lock (:mod:`.lock`).
    """
    options = options or JoinOptions.of(settings)
    lake = lake or Lake.from_settings(settings)
    st = settings.storage
    report = JoinReport()
    with join_lock(settings, lake, timeout_s=options.lock_timeout_s) as still_held:
        served = log_months(lake, st.predictions_table)
        targets = served if months is None else sorted(set(months) & set(served))
        fb_months = set(log_months(lake, st.feedback_table))
        for month in targets:
            window = _feedback_months(month, options, fb_months)
            inputs = _fingerprint(lake, settings, month, window, options)
            before = _published_extra(lake, st.labelled_table, month)
            if not force and before.get("inputs") == inputs:
                report.months.append(MonthJoin(month.label, published=False))
                continue
            predictions = read_log(lake, st.predictions_table, [month], PREDICTIONS_LOG, quarantine=still_held)
            feedback = read_log(lake, st.feedback_table, window, FEEDBACK_LOG, quarantine=still_held)
            table, stats = _join_logs(lake, settings, month, window, predictions, feedback)
            if not force and (shrunk := _shrunk(lake, st.labelled_table, month, before, stats, table, options)):
                # The logs only grow, so a rebuild never has fewer rows, unless log files went away since (a
                # retention rule deleting the oldest files first, a hand, a file found corrupt): publishing it would
                # drop labelled rows retraining and the metrics read, and once the month's last file went, for good.
                why = (f"{shrunk}: log files were deleted or quarantined since it was published, so it is kept as it "
                       f"is; restore them, or publish the smaller month with `tenfold feedback join --month "
                       f"{month.label} --force`")
                log.warning("feedback join %s: %s", month.label, why)
                report.months.append(MonthJoin(month.label, published=False, kept=why))
                continue
            # A join that stalled past the lock's stale age (a paused VM) and was taken over must not publish its
            # rebuild over the newer one of the join that took the lock: it ends here, with LockLost.
            still_held()
            _publish(lake, st.labelled_table, month, table, extra={
                "inputs": inputs, "rows": stats.predictions, "labelled": stats.labelled,
                "horizon": options.feedback_horizon_months, "join_version": JOIN_VERSION})
            stats.month = month.label
            report.months.append(stats)
    return report


def join_window(
    settings: Settings,
    since: dt.datetime,
    until: dt.datetime,
    *,
    options: JoinOptions | None = None,
    lake: Lake | None = None,
) -> pa.Table:
    """Labelled rows (schema ``LABELLED``) that hold every prediction served in ``[since, until)``, joined in
    memory from the log files landed since ``since`` minus ``options.landing_skew_s``: for those predictions,
    the rows the join would publish, at the cost of the window rather than of whole months. The caller
    filters on ``served_at`` (a late redelivery of an older prediction may come along). Publishes nothing.

    A prediction served at ``t`` lands at ``t`` or later, and its feedback (sent after the answer) too, up
    to the clock skew between the replicas, the clients' relay and the sink; older files cannot hold them.
    """
    options = options or JoinOptions.of(settings)
    lake = lake or Lake.from_settings(settings)
    st = settings.storage
    since, until = utc(since) or since, utc(until) or until  # naive: UTC, as the server writes them
    landed_since = since - dt.timedelta(seconds=options.landing_skew_s)
    last = Partition.from_date(until - dt.timedelta(microseconds=1))
    tables = []
    # Only the window's months are listed (a month without a log folder reads empty): listing both logs whole, as
    # the month join does, cost every canary check the time of all history (3.4 s at 192,000 files).
    for month in month_range(Partition.from_date(since), last) if since < until else []:
        predictions = read_log(lake, st.predictions_table, [month], PREDICTIONS_LOG, landed_since=landed_since)
        if not predictions.num_rows:
            continue
        window = _feedback_months(month, options)
        feedback = read_log(lake, st.feedback_table, window, FEEDBACK_LOG, landed_since=landed_since)
        tables.append(_join_logs(lake, settings, month, window, predictions, feedback)[0])
    return pa.concat_tables(tables) if tables else LABELLED.empty_table()


def _feedback_months(month: Partition, options: JoinOptions, fb_months: set[Partition] | None = None) -> list[Partition]:
    """The feedback log months whose feedback may join ``month``'s predictions: one before it (clock skew)
    to ``feedback_horizon_months`` after it (with ``fb_months``, those of them that exist)."""
    window = [month.previous()]
    while len(window) < options.feedback_horizon_months + 2:
        window.append(window[-1].next())
    return [m for m in window if fb_months is None or m in fb_months]


class JoinError(LakeError):
    """A month's logs cannot be joined (rows that passed the log's checks still do not fit the labelled table);
    the message names the month, the log folders and what to do."""


def _join_logs(lake: Lake, settings: Settings, month: Partition, window: list[Partition], predictions: pa.Table,
               feedback: pa.Table) -> tuple[pa.Table, MonthJoin]:
    """:func:`join_month`, its failure a :class:`JoinError` naming where the rows came from: every reader of the
    labelled table (the sink's join, the canary's checks, ``tenfold feedback``) reports it, none dies on it."""
    try:
        return join_month(predictions, feedback)
    except (ValueError, pa.ArrowException) as exc:
        st = settings.storage
        folders = [lake.partition_path(st.predictions_table, month),
                   *(lake.partition_path(st.feedback_table, m) for m in window)]
        raise JoinError(f"cannot join the predictions served in {month.label} ({type(exc).__name__}: {exc}); a log "
                        f"file in {', '.join(folders)} holds rows that do not fit the labelled table: move it out "
                        "(the other files are kept) and run the join again") from exc


def join_month(predictions: pa.Table, feedback: pa.Table) -> tuple[pa.Table, MonthJoin]:
    """The labelled rows of one month's predictions log and the feedback logs around it (a pure function)."""
    stats = MonthJoin("", published=True, prediction_deliveries=predictions.num_rows)
    records = _distinct(predictions.select(_PRED_COLS))
    records = records.sort_by([("prediction_id", "ascending"), ("served_at", "ascending"),
                               ("model_version", "ascending"), ("probability", "ascending"), ("request", "ascending")])
    preds = _first_per_key(records, "prediction_id").drop_columns(["schema_version"])
    stats.predictions = preds.num_rows
    stats.conflicting_predictions = len(set(_conflicts(records)))

    fb = feedback.select(_FB_COLS).drop_columns(["schema_version"])
    fb = fb.filter(pc.is_in(fb["prediction_id"], value_set=preds["prediction_id"]))
    stats.feedback_deliveries = fb.num_rows
    fb = _distinct(fb)
    # A record is what the client said (outcome, observed_at): a client's retry after a 503 whose publish had landed
    # is stamped with a new received_at, and counted as a correction it was not.
    said = _distinct(fb.select(["prediction_id", "outcome", "observed_at"]))
    stats.feedback_records = said.num_rows
    counts = said.group_by("prediction_id", use_threads=False).aggregate([("outcome", "count")])
    counts = counts.rename_columns({"outcome_count": "feedback_records"})
    stats.corrected = int(pc.sum(pc.greater(counts["feedback_records"], 1)).as_py() or 0)
    latest = latest_per_key(fb, ["prediction_id"], observed="observed_at", received="received_at",
                            then=[("received_at", "descending"), ("outcome", "descending")])
    latest = latest.rename_columns({"received_at": "feedback_received_at"})

    joined = preds.join(latest, "prediction_id", join_type="left outer", use_threads=False)
    joined = joined.join(counts, "prediction_id", join_type="left outer", use_threads=False)
    joined = joined.set_column(joined.schema.get_field_index("feedback_records"), "feedback_records",
                               pc.fill_null(joined["feedback_records"], 0))
    table = joined.select(LABELLED.names).cast(LABELLED).sort_by("prediction_id")
    stats.labelled = table.num_rows - table["outcome"].null_count
    return table, stats


def latest_per_key(table: pa.Table, keys: list[str], *, observed: str, received: str,
                   then: list[tuple[str, str]]) -> pa.Table:
    """The row of each value of ``keys`` whose observation is the latest, sorted by ``keys``: when every row of that
    value has ``observed`` (the client's clock), the latest ``observed``; when any lacks it, the latest ``received``
    (the server's clock); ties broken by ``then`` (column, order) pairs. The join's rule for a prediction's feedback
    and the training set's for a flight's labelled rows.

    One clock per key: ranked on ``observed`` else ``received``, a correction observed at 00:30 and received at 02:00
    lost to a report without ``observed`` received at 01:00, its server time compared with the client's. One clock
    for all the rows of a key also keeps the order total, whatever order the rows come in."""
    if table.num_rows == 0:
        return table
    table = table.sort_by([(k, "ascending") for k in keys])
    starts = _run_starts(table, keys)
    run = np.cumsum(starts) - 1
    has = pc.is_valid(table[observed]).combine_chunks().to_numpy(zero_copy_only=False)
    every = np.logical_and.reduceat(has, np.flatnonzero(starts))[run]
    effective = pc.if_else(pa.array(every), table[observed], table[received])
    ranked = table.append_column("_run", pa.array(run)).append_column("_effective", effective).sort_by(
        [("_run", "ascending"), ("_effective", "descending"), *then])
    return _first_per_key(ranked, "_run").drop_columns(["_run", "_effective"])


def _run_starts(table: pa.Table, keys: list[str]) -> np.ndarray:
    """Where each run of equal ``keys`` begins in ``table`` (sorted by them): a null equals a null, as in a group."""
    starts = np.zeros(table.num_rows, dtype=bool)
    starts[0] = True
    for key in keys:
        col = table[key].combine_chunks()
        now, before = col[1:], col[:-1]
        differ = pc.and_not(pc.fill_null(pc.not_equal(now, before), True),
                            pc.and_(pc.is_null(now), pc.is_null(before)))
        starts[1:] |= differ.to_numpy(zero_copy_only=False)
    return starts


def _distinct(table: pa.Table) -> pa.Table:
    return table.group_by(table.column_names, use_threads=False).aggregate([]).select(table.column_names)


def _first_per_key(table: pa.Table, key: str) -> pa.Table:
    """The first row of each run of equal ``key`` values (``table`` sorted by ``key`` first)."""
    if table.num_rows == 0:
        return table
    keys = table[key].combine_chunks()
    mask = np.ones(table.num_rows, dtype=bool)
    mask[1:] = pc.not_equal(keys[1:], keys[:-1]).to_numpy(zero_copy_only=False)
    return table.filter(pa.array(mask))


def _conflicts(records: pa.Table) -> list[str]:
    ids = records["prediction_id"].to_pylist()
    return [a for a, b in itertools.pairwise(ids) if a == b]


def _fingerprint(lake: Lake, settings: Settings, month: Partition, window: list[Partition], options: JoinOptions) -> str:
    st = settings.storage
    files = [(st.predictions_table, month.label, i.base_name, i.size) for i in log_files(lake, st.predictions_table, month)]
    for part in window:
        files += [(st.feedback_table, part.label, i.base_name, i.size) for i in log_files(lake, st.feedback_table, part)]
    body = json.dumps({"v": JOIN_VERSION, "horizon": options.feedback_horizon_months, "files": files})
    return hashlib.sha256(body.encode()).hexdigest()[:32]


def _published_extra(lake: Lake, table: str, month: Partition) -> dict[str, Any]:
    """The published month's manifest extra (its ``inputs`` fingerprint, ``rows`` and ``labelled``); empty when it
    was never published or is damaged (rebuild it)."""
    try:
        lake.files(table, month, verify=True)
        return dict(lake.read_manifest(table, month).extra)
    except LakeError:
        return {}


def _shrunk(lake: Lake, table: str, month: Partition, before: dict[str, Any], stats: MonthJoin, rebuilt: pa.Table,
            options: JoinOptions) -> str:
    """How a rebuild lost what the published month holds (empty: it lost nothing): fewer predictions or labelled ones,
    or, whatever the counts (new traffic can make up for what went), a published prediction missing from it, or a
    published label it does not have. Labels only under the same rule: a month joined with another horizon (as
    ``tenfold feedback join --horizon`` or a change of ``settings.feedback.horizon_months`` gives) or another
    ``JOIN_VERSION`` may rightly have fewer; no rule drops a prediction."""
    same_rule = before.get("horizon") == options.feedback_horizon_months and before.get("join_version") == JOIN_VERSION
    rows, labelled = int(before.get("rows", 0)), int(before.get("labelled", 0))
    if same_rule and (stats.predictions < rows or stats.labelled < labelled):
        return (f"the logs now give {stats.predictions} predictions ({stats.labelled} labelled) where the published "
                f"month has {rows} ({labelled} labelled)")
    if not before:
        return ""
    try:
        published = lake.read_table(table, [month], columns=["prediction_id", "outcome"])
    except MissingManifestError:  # gone meanwhile: nothing published to keep
        return ""
    except LakeError as exc:  # unreadable now (damaged in transit, re-published meanwhile): not judged, so kept
        return f"the published month cannot be read to compare with the rebuild ({exc})"
    now = dict(zip(rebuilt.column("prediction_id").to_pylist(),
                   (o is not None for o in rebuilt.column("outcome").to_pylist()), strict=True))
    gone, unlabelled = [], []
    for pid, outcome in zip(published.column("prediction_id").to_pylist(), published.column("outcome").to_pylist(),
                            strict=True):
        if pid not in now:
            gone.append(pid)
        elif same_rule and outcome is not None and not now[pid]:
            unlabelled.append(pid)
    if gone:
        return f"{len(gone)} of its published predictions are not in the logs any more (the first: {gone[0]})"
    if unlabelled:
        return (f"{len(unlabelled)} of its published predictions lost their label in the logs (the first: "
                f"{unlabelled[0]})")
    return ""


def _publish(lake: Lake, table: str, month: Partition, rows: pa.Table, *, extra: dict[str, Any]) -> None:
    run_id = f"feedback-join-{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}"
    staged = lake.staging_path(table, month, run_id)
    make_dirs(lake.fs, staged)
    try:
        pq.write_table(rows, f"{staged}/part-00000.parquet", filesystem=lake.fs)
        lake.publish(table, month, staged, run_id=run_id, extra=extra)
    finally:
        lake.discard(staged)
