"""Arrow schemas of the feedback loop's three lake tables, and records to rows.

* ``settings.storage.predictions_table``: the sampled predictions as they arrived (an append-only log,
  partitioned by the month of ``served_at``);
* ``settings.storage.feedback_table``: the observed outcomes as they arrived (an append-only log,
  partitioned by the month of ``received_at``);
* ``settings.storage.labelled_table``: their join, one row per prediction id (a published lake table,
  partitioned by the month of ``served_at``).

The two logs are at-least-once (a redelivered message lands twice) and carry the Pub/Sub message id,
publish time and delivery attempt for tracing; the labelled table is exact (see :mod:`tenfold.feedback.upsert`).
"""

from __future__ import annotations

import json
from typing import Any

import pyarrow as pa

from tenfold.messaging.records import FeedbackRecord, PredictionRecord

TS = pa.timestamp("us", tz="UTC")

# Columns that describe how a message reached the lake, not what it says: dropped before deduplication.
DELIVERY_FIELDS = [
    pa.field("message_id", pa.string(), nullable=False),
    pa.field("publish_time", TS),
    pa.field("delivery_attempt", pa.int32()),
    pa.field("landed_at", TS, nullable=False),
]

PREDICTION_FIELDS = [
    pa.field("prediction_id", pa.string(), nullable=False),
    pa.field("model_version", pa.string(), nullable=False),
    pa.field("arm", pa.string(), nullable=False),
    pa.field("user_key", pa.string()),
    pa.field("bucket", pa.int16()),
    pa.field("probability", pa.float64(), nullable=False),
    # The request exactly as the client sent it, as canonical JSON (sorted keys): the workload owns its
    # schema, so the platform keeps it opaque; flatten_requests() turns it back into columns.
    pa.field("request", pa.string(), nullable=False),
    pa.field("latency_ms", pa.float64()),
    pa.field("served_at", TS, nullable=False),
    pa.field("schema_version", pa.int16(), nullable=False),
]

FEEDBACK_FIELDS = [
    pa.field("prediction_id", pa.string(), nullable=False),
    pa.field("outcome", pa.int8(), nullable=False),
    pa.field("observed_at", TS),
    pa.field("received_at", TS, nullable=False),
    pa.field("schema_version", pa.int16(), nullable=False),
]

PREDICTIONS_LOG = pa.schema(PREDICTION_FIELDS + DELIVERY_FIELDS)
FEEDBACK_LOG = pa.schema(FEEDBACK_FIELDS + DELIVERY_FIELDS)

LABELLED = pa.schema(
    [f for f in PREDICTION_FIELDS if f.name != "schema_version"]
    + [
        pa.field("outcome", pa.int8()),  # null: no feedback yet
        pa.field("observed_at", TS),
        pa.field("feedback_received_at", TS),
        # Distinct feedback records seen for this prediction, a record being its outcome and observed_at
        # (redeliveries and a client's retries of one record count once): more than one means the client sent
        # corrections, and the latest observation won.
        pa.field("feedback_records", pa.int32(), nullable=False),
    ]
)


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


# A record's times are aware UTC already (messaging.records converts them when it is built or parsed).
def prediction_row(rec: PredictionRecord) -> dict[str, Any]:
    return {
        "prediction_id": rec.prediction_id,
        "model_version": rec.model_version,
        "arm": rec.arm,
        "user_key": rec.user_key,
        "bucket": rec.bucket,
        "probability": rec.probability,
        "request": canonical_json(rec.request),
        "latency_ms": rec.latency_ms,
        "served_at": rec.served_at,
        "schema_version": rec.schema_version,
    }


def feedback_row(rec: FeedbackRecord) -> dict[str, Any]:
    return {
        "prediction_id": rec.prediction_id,
        "outcome": rec.outcome,
        "observed_at": rec.observed_at,
        "received_at": rec.received_at,
        "schema_version": rec.schema_version,
    }
