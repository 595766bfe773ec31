"""Builders of landing-log rows for the feedback tests (records as the server publishes them)."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import pyarrow as pa
import pytest

from tenfold.data.lake import Lake, Partition
from tenfold.feedback.log import write_batch
from tenfold.feedback.schema import FEEDBACK_LOG, PREDICTIONS_LOG, feedback_row, prediction_row
from tenfold.messaging.records import FeedbackRecord, PredictionRecord

T0 = dt.datetime(2026, 5, 14, 10, 0, tzinfo=dt.UTC)


def prediction(pid: str, *, version: str = "v1", arm: str = "stable", p: float = 0.5,
               at: dt.datetime = T0, **kw: Any) -> PredictionRecord:
    return PredictionRecord(prediction_id=pid, model_version=version, arm=arm, probability=p, served_at=at,
                            request={"carrier": "UA", "flight": 1545, "origin": "EWR", "dest": "IAH",
                                     "sched_dep": "2013-01-01T05:15:00", "user_key": f"u-{pid}"},
                            user_key=f"u-{pid}", bucket=7, **kw)


def feedback(pid: str, outcome: int, *, observed: dt.datetime | None = None,
             received: dt.datetime = T0 + dt.timedelta(hours=3)) -> FeedbackRecord:
    return FeedbackRecord(prediction_id=pid, outcome=outcome, observed_at=observed, received_at=received)


def _rows(records: list[Any], to_row: Any, schema: pa.Schema, attempt: int) -> pa.Table:
    now = dt.datetime.now(dt.UTC)
    rows = [{**to_row(r), "message_id": uuid.uuid4().hex, "publish_time": now, "delivery_attempt": attempt,
             "landed_at": now} for r in records]
    return pa.Table.from_pylist(rows, schema=schema)


def prediction_log(records: list[PredictionRecord], attempt: int = 1) -> pa.Table:
    return _rows(records, prediction_row, PREDICTIONS_LOG, attempt)


def feedback_log(records: list[FeedbackRecord], attempt: int = 1) -> pa.Table:
    return _rows(records, feedback_row, FEEDBACK_LOG, attempt)


class Logs:
    """Lands batches in a lake's logs as the sink would (one file per call and month)."""

    def __init__(self, settings: Any) -> None:
        self.settings = settings
        self.lake = Lake.from_settings(settings)

    def predictions(self, *records: PredictionRecord) -> None:
        by_month: dict[Partition, list[PredictionRecord]] = {}
        for r in records:
            by_month.setdefault(Partition.from_date(r.served_at), []).append(r)
        for part, recs in by_month.items():
            write_batch(self.lake, self.settings.storage.predictions_table, part, prediction_log(recs))

    def feedback(self, *records: FeedbackRecord) -> None:
        by_month: dict[Partition, list[FeedbackRecord]] = {}
        for r in records:
            by_month.setdefault(Partition.from_date(r.received_at), []).append(r)
        for part, recs in by_month.items():
            write_batch(self.lake, self.settings.storage.feedback_table, part, feedback_log(recs))


@pytest.fixture
def logs(settings: Any) -> Logs:
    return Logs(settings)
