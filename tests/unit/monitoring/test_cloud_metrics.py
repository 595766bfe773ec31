"""The drift score reaches Cloud Monitoring, which the cloud's drift alert policy watches.

There is no Cloud Monitoring emulator, and ``google-cloud-monitoring`` speaks gRPC only, so :class:`FakeMonitoring`
is a real gRPC server on loopback serving ``google.monitoring.v3.MetricService/CreateTimeSeries``: the real client
builds, sends and parses the real protobuf messages, and the fake records each request (or refuses it with the
status codes Cloud Monitoring uses).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc
import pytest
from google.cloud import monitoring_v3
from google.protobuf import empty_pb2

from tenfold.config import build_settings
from tenfold.monitoring.cloud_metrics import MetricWriteError, write_drift_score


class FakeMonitoring:
    def __init__(self) -> None:
        self.requests: list[monitoring_v3.CreateTimeSeriesRequest] = []
        self.refuse: tuple[grpc.StatusCode, str] | None = None
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        handler = grpc.unary_unary_rpc_method_handler(
            self._create, request_deserializer=monitoring_v3.CreateTimeSeriesRequest.deserialize,
            response_serializer=empty_pb2.Empty.SerializeToString)
        self.server.add_generic_rpc_handlers(
            [grpc.method_handlers_generic_handler("google.monitoring.v3.MetricService", {"CreateTimeSeries": handler})])
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()

    def _create(self, request: monitoring_v3.CreateTimeSeriesRequest, context: grpc.ServicerContext) -> empty_pb2.Empty:
        if self.refuse is not None:
            context.abort(*self.refuse)
        self.requests.append(request)
        return empty_pb2.Empty()

    def client(self) -> monitoring_v3.MetricServiceClient:
        from google.cloud.monitoring_v3.services.metric_service.transports import MetricServiceGrpcTransport

        channel = grpc.insecure_channel(f"127.0.0.1:{self.port}")
        return monitoring_v3.MetricServiceClient(transport=MetricServiceGrpcTransport(channel=channel))


@pytest.fixture
def monitoring() -> Iterator[FakeMonitoring]:
    fake = FakeMonitoring()
    yield fake
    fake.server.stop(0)


def test_a_cloud_run_writes_its_drift_score_to_the_environments_metric(monitoring: FakeMonitoring) -> None:
    dev = build_settings("dev")
    at = dt.datetime(2026, 12, 3, 10, 0, 5, 250000, tzinfo=dt.UTC)
    assert write_drift_score(dev, 0.31, client=monitoring.client(), at=at) is True
    (request,) = monitoring.requests
    assert request.name == f"projects/{dev.project_id}"
    (series,) = request.time_series
    assert series.metric.type == dev.monitoring.drift_metric == "custom.googleapis.com/tenfold-dev/feature_psi"
    assert series.resource.type == "global" and dict(series.resource.labels) == {"project_id": dev.project_id}
    (point,) = series.points
    assert point.value.double_value == pytest.approx(0.31)
    assert point.interval.end_time == at
    # prod writes its own metric: the descriptor is one per project, and dev and prod may share a project
    assert build_settings("prod").monitoring.drift_metric != dev.monitoring.drift_metric


def test_nothing_is_written_locally_or_without_a_score(monitoring: FakeMonitoring) -> None:
    assert write_drift_score(build_settings("local"), 0.5, client=monitoring.client()) is False
    assert write_drift_score(build_settings("dev"), None, client=monitoring.client()) is False
    assert write_drift_score(build_settings("dev"), float("nan"), client=monitoring.client()) is False
    assert monitoring.requests == []


def test_a_refusal_is_a_clear_error_without_retries_and_an_outage_is_left_to_the_retries(
    monitoring: FakeMonitoring
) -> None:
    from google.api_core.exceptions import ServiceUnavailable

    dev = build_settings("dev")
    monitoring.refuse = (grpc.StatusCode.PERMISSION_DENIED, "Permission monitoring.timeSeries.create denied")
    with pytest.raises(MetricWriteError, match=r"refused the drift score for custom.googleapis.com/tenfold-dev/"
                                               r"feature_psi.*Permission monitoring.timeSeries.create denied.*"
                                               r"Deploy the platform stack") as refused:
        write_drift_score(dev, 0.4, client=monitoring.client())
    assert refused.value.retryable is False
    monitoring.refuse = (grpc.StatusCode.UNAVAILABLE, "The service is currently unavailable")
    with pytest.raises(ServiceUnavailable):
        write_drift_score(dev, 0.4, client=monitoring.client())


def _dev_decide(monitoring: FakeMonitoring, monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> tuple[Any, Any, list[Any]]:
    """dev's settings, the drift pipeline and the alerts it sends, for ``decide`` on dev: the triggers it records in a
    folder (the dev lake is a bucket this test has no access to), the champion the version measured (decide asks
    whether it still serves; the dev registry is a bucket too), Cloud Monitoring the fake's."""
    import tenfold.storage
    from tenfold.monitoring import alerts
    from tenfold.pipelines import monitor_drift as pipeline

    monkeypatch.setattr(tenfold.storage, "lake_objects", lambda settings, prefix: tenfold.storage.FileObjects(tmp_path))
    monkeypatch.setattr(pipeline, "ModelRegistry", lambda settings: type("R", (), {
        "resolve": staticmethod(lambda alias: "v1")})())
    client = monitoring.client()
    monkeypatch.setattr(monitoring_v3, "MetricServiceClient", lambda: client)
    sent: list[Any] = []
    monkeypatch.setattr(alerts, "send_alert", lambda settings, title, details, only=None, log_line=True: (
        sent.append((title, details)), alerts.Sent(alerts.Alert(title, details, settings.env)))[1])
    return build_settings("dev"), pipeline, sent


def test_the_monitor_writes_its_runs_largest_psi_and_a_failed_write_never_holds_back_the_retrain(
    monitoring: FakeMonitoring, monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    """decide(): the score of the run (the largest PSI over the features that trigger retraining, across its months)
    goes to the metric the cloud alert watches. When it cannot be written for good (a refusal), or through the task's
    last try (an outage; earlier tries fail for the retries), the decision (whose drift event starts retraining) and
    the alert, which names the failure, go out all the same."""
    dev, pipeline, sent = _dev_decide(monitoring, monkeypatch, tmp_path)
    run = {"run_key": "r", "airflow_run_id": "r", "months": ["2013-07", "2013-08"], "version": "v1",
           "version_ref": "champion", "work_dir": "/tmp/unused"}
    summaries = ({"month": "2013-07", "decision": "ok", "max_psi": 0.12, "triggered": []},
                 {"month": "2013-08", "decision": "retrain", "max_psi": 0.41, "triggered": ["distance"]})
    reported = {"summaries": summaries, "json_uris": ("a", "b"), "html_uris": ("a.html", "b.html")}
    decision = pipeline.decide(dev, run, reported, emits=True)  # the DAG's task: it emits the event that retrains
    assert decision["retrain"] is True and decision["max_psi"] == 0.41 and len(sent) == 1
    (request,) = monitoring.requests
    assert request.time_series[0].points[0].value.double_value == pytest.approx(0.41)

    for i, status in enumerate((grpc.StatusCode.NOT_FOUND, grpc.StatusCode.UNAVAILABLE)):
        monitoring.refuse = (status, "Project not found" if status == grpc.StatusCode.NOT_FOUND else "unavailable")
        # Another run on newly published content (the same drift triggers once: its own test is in test_monitor_pipeline)
        again = pipeline.decide(dev, {**run, "airflow_run_id": f"r{i}"}, {**reported, "contents": [f"a{i}", f"b{i}"]},
                                emits=True, last_try=status == grpc.StatusCode.UNAVAILABLE)
        assert again["retrain"] is True, "a metric that could not be written held back the retrain"
        assert "cloud_metric_not_written" in sent[-1][1]
    assert len(sent) == 3
    from google.api_core.exceptions import ServiceUnavailable

    with pytest.raises(ServiceUnavailable):  # an outage with tries left: the task's next try writes it, then alerts
        pipeline.decide(dev, {**run, "airflow_run_id": "r9"}, {**reported, "contents": ["a9", "b9"]}, emits=True)
    assert len(sent) == 3


def test_a_run_outside_airflow_which_retrains_nothing_writes_no_drift_score_and_says_it_would_retrain(
    monitoring: FakeMonitoring, monkeypatch: pytest.MonkeyPatch, tmp_path: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    """``python -m tenfold.pipelines.monitor_drift`` (and ``monitor()``) emits no drift event, so nothing retrains on
    it; it wrote the drift score all the same, and the cloud's drift alert paged on-call that the champion was
    retraining (again on each rerun: such a run records no trigger), while it printed ``"retrain": true``. The DAG's
    run of the same drift (it emits) writes the one point."""
    import json

    import tenfold.config

    dev, pipeline, sent = _dev_decide(monitoring, monkeypatch, tmp_path)
    run = {"run_key": "r", "airflow_run_id": "manual__r", "months": ["2013-07"], "version": "v1",
           "version_ref": "champion", "work_dir": "/tmp/unused"}
    reported = {"summaries": ({"month": "2013-07", "decision": "retrain", "max_psi": 0.41, "triggered": ["distance"]},),
                "json_uris": ("a",), "html_uris": ("a.html",), "contents": ["c07"]}

    # The command line, as an operator runs it in dev (with its project set: without one it is refused): its steps'
    # results are the drifted month's.
    operator = dev.model_copy(update={"project_placeholder": False})
    monkeypatch.setattr(tenfold.config, "get_settings", lambda env=None: operator)
    monkeypatch.setattr(pipeline, "plan", lambda settings, run_id, conf: run)
    monkeypatch.setattr(pipeline, "measure", lambda settings, planned: {})
    monkeypatch.setattr(pipeline, "report", lambda settings, planned, measured: reported)
    for _ in range(2):  # a rerun writes nothing either
        assert pipeline.main(["--conf", '{"month": "2013-07"}']) == 0
        printed = json.loads(capsys.readouterr().out)
        assert printed["retrain"] is False and printed["would_retrain"] is True and printed["max_psi"] == 0.41
    assert monitoring.requests == [], "a run that retrains nothing paged that the champion is retraining"
    assert len(sent) == 2 and all("a run outside Airflow starts no retraining" in title for title, _ in sent)
    # monitor() and decide() without emits: the same, and a month that does not drift writes no 0.0 either
    assert pipeline.monitor(dev, "2013-07")["would_retrain"] is True
    calm = {**reported, "summaries": ({"month": "2013-07", "decision": "ok", "max_psi": 0.02, "triggered": []},)}
    quiet = pipeline.decide(dev, run, calm)
    assert quiet["retrain"] is False and quiet["would_retrain"] is False
    assert monitoring.requests == []

    # The DAG's task (it emits the drift event, which retrains): exactly one point, of 0.41, and its decision (the
    # event's extra, which train_model reads) keeps its shape.
    decision = pipeline.decide(dev, {**run, "airflow_run_id": "scheduled__r"}, reported, emits=True)
    assert decision["retrain"] is True and "would_retrain" not in decision
    (request,) = monitoring.requests
    (series,) = request.time_series
    (point,) = series.points
    assert series.metric.type == dev.monitoring.drift_metric and point.value.double_value == pytest.approx(0.41)
