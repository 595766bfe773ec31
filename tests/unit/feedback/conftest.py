"""Builders of landing-log rows for the feedback tests (records as the server publishes them)."""

from __future__ import annotations

import datetime as dt
import time
import uuid
from concurrent import futures
from typing import Any

import grpc
import pyarrow as pa
import pytest
from google.protobuf import empty_pb2
from google.pubsub_v1 import types

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


class FakeSubscriber:
    """A Pub/Sub Subscriber on loopback (a real gRPC server: the sink's real client builds, sends and parses the real
    protobuf messages) for what the emulator never does: time out, throttle or refuse a call. ``_modify`` (lease
    extensions) answers OK; a subclass overrides it."""

    def __init__(self) -> None:
        self.queued: dict[str, list[types.ReceivedMessage]] = {}
        self.ack_refusals: list[grpc.StatusCode] = []  # the next acknowledgements' answers, then OK
        self.ack_always: grpc.StatusCode | None = None
        self.acked: list[str] = []
        self.hang_s = 0.0
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        handlers = {
            "Pull": grpc.unary_unary_rpc_method_handler(
                self._pull, request_deserializer=types.PullRequest.deserialize,
                response_serializer=types.PullResponse.serialize),
            "Acknowledge": grpc.unary_unary_rpc_method_handler(
                self._ack, request_deserializer=types.AcknowledgeRequest.deserialize,
                response_serializer=empty_pb2.Empty.SerializeToString),
            "ModifyAckDeadline": grpc.unary_unary_rpc_method_handler(
                self._modify, request_deserializer=types.ModifyAckDeadlineRequest.deserialize,
                response_serializer=empty_pb2.Empty.SerializeToString),
        }
        self.server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("google.pubsub.v1.Subscriber", handlers)])
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()

    def publish(self, subscription: str, data: bytes) -> None:
        n = sum(len(q) for q in self.queued.values()) + 1
        message = types.PubsubMessage(data=data, message_id=f"m{n}", publish_time=dt.datetime.now(dt.UTC))
        self.queued.setdefault(subscription, []).append(
            types.ReceivedMessage(ack_id=f"ack-{n}", message=message, delivery_attempt=1))

    def _pull(self, request: types.PullRequest, context: grpc.ServicerContext) -> types.PullResponse:
        if self.hang_s:
            time.sleep(self.hang_s)  # a hung service: the call meets its deadline with no answer
        batch = self.queued.pop(request.subscription, [])
        return types.PullResponse(received_messages=batch)

    def _ack(self, request: types.AcknowledgeRequest, context: grpc.ServicerContext) -> empty_pb2.Empty:
        refusal = self.ack_always or (self.ack_refusals.pop(0) if self.ack_refusals else None)
        if refusal is not None:
            context.abort(refusal, f"acknowledge: {refusal.name}")
        self.acked += request.ack_ids
        return empty_pb2.Empty()

    def _modify(self, request: types.ModifyAckDeadlineRequest, context: grpc.ServicerContext) -> empty_pb2.Empty:
        return empty_pb2.Empty()
