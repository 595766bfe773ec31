"""Readers of the labelled table: online accuracy for the canary analysis, labelled rows for retraining.

* :func:`online_metrics` (``tenfold feedback metrics``): per model version and arm, over a window of
  ``served_at``: served predictions, labelled ones, positives, accuracy at 0.5, log loss, Brier score,
  and AUC when both classes are present.
* :func:`labelled_rows`: the served requests with their observed outcomes, for ``train_model`` to
  include; :func:`flatten_requests` turns their ``request`` JSON back into columns, and
  :func:`labelled_lineage` names the published partitions they came from.

Both read what the join published (``Lake.read_table``, manifest-checked); run
:func:`tenfold.feedback.upsert.join` first, or pass ``refresh=True``, to include what the sink landed
since (over a window of ``served_at``, the canary's case, joined from the recent log files alone). No data
is an empty answer, not an error: "no feedback yet" is a state the canary must see.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from tenfold.config import Settings
from tenfold.data.lake import Lake, Partition, month_range
from tenfold.feedback.schema import LABELLED
from tenfold.messaging.records import utc

GROUP_COLUMNS = ("model_version", "arm", "user_key", "bucket")
LOG_LOSS_EPS = 1e-15  # probabilities are clipped to [eps, 1 - eps], as scikit-learn does


@dataclass(frozen=True)
class BinaryMetrics:
    count: int  # labelled predictions
    positives: int
    accuracy: float | None  # at threshold 0.5 (probability >= 0.5 predicts 1)
    log_loss: float | None
    brier: float | None
    auc: float | None  # None unless both classes are present


@dataclass(frozen=True)
class GroupMetrics:
    """Online metrics of one group (e.g. one model version on one arm) over a window."""

    group: dict[str, Any]  # e.g. {"model_version": "v3", "arm": "canary"}
    served: int  # sampled predictions served in the window, with or without feedback
    metrics: BinaryMetrics

    @property
    def coverage(self) -> float | None:
        """The share of served predictions that have an outcome."""
        return self.metrics.count / self.served if self.served else None

    def to_dict(self) -> dict[str, Any]:
        return {**self.group, "served": self.served, "coverage": self.coverage, **asdict(self.metrics)}


def binary_metrics(outcome: np.ndarray, probability: np.ndarray) -> BinaryMetrics:
    """Metrics of probabilities against 0/1 outcomes (arrays of equal length; empty gives Nones)."""
    y = np.asarray(outcome, dtype=np.float64)
    p = np.asarray(probability, dtype=np.float64)
    n = len(y)
    if n == 0:
        return BinaryMetrics(0, 0, None, None, None, None)
    pos = int(y.sum())
    clipped = np.clip(p, LOG_LOSS_EPS, 1 - LOG_LOSS_EPS)
    log_loss = float(-np.mean(y * np.log(clipped) + (1 - y) * np.log(1 - clipped)))
    return BinaryMetrics(
        count=n,
        positives=pos,
        accuracy=float(np.mean((p >= 0.5) == (y == 1))),
        log_loss=log_loss,
        brier=float(np.mean((p - y) ** 2)),
        auc=_auc(y, p) if 0 < pos < n else None,
    )


def _auc(y: np.ndarray, p: np.ndarray) -> float:
    """ROC AUC as the Mann-Whitney statistic, ties counted as one half (average ranks)."""
    _, inverse, counts = np.unique(p, return_inverse=True, return_counts=True)
    starts = np.cumsum(counts) - counts  # ranks are 1-based: a group of ties shares the mean of its ranks
    ranks = (starts + (counts + 1) / 2.0)[inverse]
    n_pos = y.sum()
    n_neg = len(y) - n_pos
    return float((ranks[y == 1].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def _window_months(lake: Lake, table: str, since: dt.datetime | None, until: dt.datetime | None) -> list[Partition]:
    published = lake.published_partitions(table)
    if not published:
        return []
    first = Partition.from_date(since) if since else published[0]
    last = Partition.from_date(until - dt.timedelta(microseconds=1)) if until else published[-1]
    return [p for p in month_range(first, last) if p in set(published)] if first <= last else []


def labelled_rows(
    settings: Settings,
    *,
    since: dt.datetime | None = None,
    until: dt.datetime | None = None,
    months: Sequence[Partition] | None = None,
    include_unlabelled: bool = False,
    refresh: bool = False,
) -> pa.Table:
    """Served predictions with their outcomes, one row per prediction id (schema :data:`LABELLED`).

    Window: ``since <= served_at < until`` (either may be None), or whole ``months``. Only rows with
    an outcome unless ``include_unlabelled``. Empty when there is none.

    ``refresh`` includes what the sink landed since the last join. With ``since`` (the canary analysis,
    every check), the window's rows are joined in memory from the log files landed since then
    (:func:`~tenfold.feedback.upsert.join_window`: the join's rule, at the window's cost, nothing
    published); otherwise the join runs first and publishes.
    """
    lake = Lake.from_settings(settings)
    if refresh and since is not None and months is None:
        from tenfold.feedback.upsert import join_window

        end = until if until is not None else dt.datetime.now(dt.UTC) + dt.timedelta(days=1)
        table = join_window(settings, since, end, lake=lake)
    else:
        if refresh:
            from tenfold.feedback.upsert import join

            join(settings, lake=lake)
        table_name = settings.storage.labelled_table
        if months is not None:
            published = set(lake.published_partitions(table_name))
            parts = sorted(p for p in months if p in published)
        else:
            parts = _window_months(lake, table_name, utc(since), utc(until))
        if not parts:
            return LABELLED.empty_table()
        table = lake.read_table(table_name, parts).select(LABELLED.names).cast(LABELLED)
    mask = pa.array(np.ones(table.num_rows, dtype=bool))
    if since is not None:
        mask = pc.and_(mask, pc.greater_equal(table["served_at"], pa.scalar(utc(since), LABELLED.field("served_at").type)))
    if until is not None:
        mask = pc.and_(mask, pc.less(table["served_at"], pa.scalar(utc(until), LABELLED.field("served_at").type)))
    if not include_unlabelled:
        mask = pc.and_(mask, pc.is_valid(table["outcome"]))
    return table.filter(mask)


def check_grouping(by: Sequence[str]) -> None:
    """ValueError naming the columns of ``by`` that online metrics cannot group by."""
    unknown = [c for c in by if c not in GROUP_COLUMNS]
    if unknown:
        raise ValueError(f"cannot group online metrics by {', '.join(unknown)}: use any of {', '.join(GROUP_COLUMNS)}")


def online_metrics(
    settings: Settings,
    since: dt.datetime | None = None,
    until: dt.datetime | None = None,
    by: Sequence[str] = ("model_version", "arm"),
    *,
    refresh: bool = False,
) -> list[GroupMetrics]:
    """Online accuracy per group of ``by`` over predictions served in ``[since, until)``, sorted by group.

    A group appears once it has a served prediction in the window; its metrics are None until it has
    feedback (``count`` 0). An empty list means nothing was served in the window (or nothing joined yet:
    ``refresh=True`` runs the join first).
    """
    check_grouping(by)
    table = labelled_rows(settings, since=since, until=until, include_unlabelled=True, refresh=refresh)
    keys = [tuple(row[c] for c in by) for row in table.select(list(by)).to_pylist()] if by else [()] * table.num_rows
    outcome = pc.fill_null(table["outcome"].cast(pa.float64()), float("nan")).to_numpy()
    probability = table["probability"].to_numpy()
    groups: dict[tuple[Any, ...], list[int]] = {}
    for i, key in enumerate(keys):
        groups.setdefault(key, []).append(i)
    result = []
    for key in sorted(groups, key=lambda k: tuple("" if v is None else str(v) for v in k)):
        idx = np.asarray(groups[key])
        y = outcome[idx]
        labelled = ~np.isnan(y)
        result.append(GroupMetrics(dict(zip(by, key, strict=True)), len(idx),
                                   binary_metrics(y[labelled], probability[idx][labelled])))
    return result


def flatten_requests(table: pa.Table) -> pa.Table:
    """The ``request`` JSON of labelled rows as a table of the request's fields (one row per row): every field any
    request has, null where one lacks it (``from_pylist`` took the columns of the first row alone, so a field a
    request model gained was dropped whenever an older request sorted first)."""
    rows = [json.loads(r) for r in table["request"].to_pylist()]
    names = list(dict.fromkeys(name for row in rows for name in row))
    return pa.Table.from_pydict({name: [row.get(name) for row in rows] for name in names})


def labelled_lineage(settings: Settings, months: Sequence[Partition]) -> dict[str, dict[str, Any]]:
    """Which published labelled partitions ``months`` resolve to now (for a training run's lineage)."""
    lake = Lake.from_settings(settings)
    table = settings.storage.labelled_table
    published = set(lake.published_partitions(table))
    out = {}
    for part in sorted(p for p in months if p in published):
        manifest = lake.read_manifest(table, part)
        out[part.label] = {"data_dir": manifest.data_dir, "rows": manifest.rows,
                           "labelled": manifest.extra.get("labelled"), "run_id": manifest.run_id}
    return out


def format_metrics(rows: Sequence[GroupMetrics]) -> str:
    """A fixed-width table of :func:`online_metrics` for people."""
    if not rows:
        return "no predictions served in this window have been joined yet"
    cols = [*rows[0].group, "served", "count", "positives", "coverage", "accuracy", "log_loss", "brier", "auc"]
    data = [[_fmt(r.to_dict()[c]) for c in cols] for r in rows]
    widths = [max(len(c), *(len(d[i]) for d in data)) for i, c in enumerate(cols)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(d, widths, strict=True)) for d in data]
    return "\n".join(lines)


def _fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.4f}" if isinstance(value, float) else str(value)
