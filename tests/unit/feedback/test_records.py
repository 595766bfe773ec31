"""What the feedback sink refuses as poison before it writes: records the log's schema cannot hold."""

from __future__ import annotations

import datetime as dt

import pytest
from pydantic import ValidationError

from tenfold.feedback.schema import FEEDBACK_LOG, feedback_row
from tenfold.feedback.sink import _unwritable
from tenfold.messaging.records import FeedbackRecord

RECEIVED = "2013-01-01T00:00:00Z"


@pytest.mark.parametrize("body", [
    # year 1 at +14:00 is before year 1 in UTC: converting it overflowed in the sink, after parsing
    f'{{"prediction_id": "p", "outcome": 1, "observed_at": "0001-01-01T00:00:00+14:00", "received_at": "{RECEIVED}"}}',
    f'{{"prediction_id": "p", "outcome": 1, "observed_at": "9999-12-31T23:59:59-14:00", "received_at": "{RECEIVED}"}}',
    # the log's schema_version column is int16
    f'{{"schema_version": 70000, "prediction_id": "p", "outcome": 1, "received_at": "{RECEIVED}"}}',
    f'{{"schema_version": 0, "prediction_id": "p", "outcome": 1, "received_at": "{RECEIVED}"}}',
])
def test_a_record_the_log_cannot_hold_is_refused_when_parsed(body: str) -> None:
    with pytest.raises(ValidationError):
        FeedbackRecord.from_message(body.encode())


def test_a_record_of_a_newer_schema_is_refused_naming_its_version() -> None:
    """A newer server's record whose fields kept their names but not their meaning parsed as version 1, and its
    labels were mixed into the labelled table and the canary's metrics; it is a dead letter until the sink is
    upgraded (then replayed)."""
    from tenfold.feedback.sink import refusal
    from tenfold.messaging.records import SCHEMA_VERSION

    newer = (f'{{"schema_version": {SCHEMA_VERSION + 1}, "prediction_id": "p", "outcome": 1, '
             f'"received_at": "{RECEIVED}"}}').encode()
    with pytest.raises(ValidationError, match=rf"schema_version {SCHEMA_VERSION + 1} is newer than this reader's "
                                              rf"{SCHEMA_VERSION}: written by a newer server"):
        FeedbackRecord.from_message(newer)
    assert "is newer than this reader's" in (refusal("feedback", newer) or "")
    assert FeedbackRecord.from_message(newer.replace(f'"schema_version": {SCHEMA_VERSION + 1}'.encode(),
                                                     f'"schema_version": {SCHEMA_VERSION}'.encode())).outcome == 1


def test_times_are_held_in_utc_and_a_naive_one_is_taken_as_utc() -> None:
    rec = FeedbackRecord.from_message(
        b'{"prediction_id": "p", "outcome": 1, "observed_at": "2013-01-01T04:02:00-05:00", "received_at": "2013-01-01T09:03:00"}')
    assert rec.observed_at == dt.datetime(2013, 1, 1, 9, 2, tzinfo=dt.UTC) and rec.observed_at.utcoffset() == dt.timedelta(0)
    assert rec.received_at == dt.datetime(2013, 1, 1, 9, 3, tzinfo=dt.UTC)


def test_unwritable_names_exactly_the_rows_arrow_cannot_convert() -> None:
    good = feedback_row(FeedbackRecord(prediction_id="p", outcome=1, received_at=dt.datetime(2013, 1, 1, tzinfo=dt.UTC)))
    rows = [good, {**good, "schema_version": 70000}, good, {**good, "outcome": "yes"}]
    assert [i for i, _ in _unwritable(rows, FEEDBACK_LOG)] == [1, 3]
    assert _unwritable([good, good], FEEDBACK_LOG) == []


def test_the_sinks_verdict_on_a_body_is_the_one_a_batch_gets() -> None:
    """``tenfold feedback dead-letters`` shows why the sink refuses each message: the parse, the row, and the
    log schema, as a batch is checked (a record that validates but that the log cannot hold is refused too)."""
    from tenfold.feedback.sink import refusal

    from .conftest import feedback, prediction

    assert refusal("predictions", prediction("a").model_dump_json().encode()) is None
    assert refusal("feedback", feedback("a", 1).model_dump_json().encode()) is None
    assert "outcome" in (refusal("feedback", b'{"prediction_id": "p9", "outcome": 7}') or "")
    assert refusal("predictions", b"not json at all") is not None
    # A schema version the log's int16 column could not hold either (refused as newer than this reader's first).
    unholdable = b'{"schema_version": 70000, "prediction_id": "p9", "outcome": 1, "received_at": "2013-01-01T00:00:00Z"}'
    assert refusal("feedback", unholdable) is not None
