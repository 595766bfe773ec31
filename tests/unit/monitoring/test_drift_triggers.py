"""A drift triggers retraining once: the DAG's decide() records each month's trigger (against a version, on the
content measured) in the lake, and another run that finds it neither alerts nor retrains again, while a retry of
the run that recorded it still emits its event (without a second alert). Every features publish of a month, a
re-publish of the same content included, starts monitor_drift, and each run alerted and retrained again."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from tenfold.config import build_settings
from tenfold.monitoring import alerts
from tenfold.pipelines import monitor_drift as pipeline

SUMMARIES = ({"month": "2013-07", "decision": "ok", "max_psi": 0.12, "triggered": []},
             {"month": "2013-08", "decision": "retrain", "max_psi": 0.41, "triggered": ["distance"]})
REPORTED = {"summaries": SUMMARIES, "json_uris": ("a", "b"), "html_uris": ("a.html", "b.html"), "contents": ("c07", "c08")}


def _run(run_id: str, version: str = "v1") -> dict[str, Any]:
    return {"run_key": run_id, "airflow_run_id": run_id, "months": ["2013-07", "2013-08"], "version": version,
            "version_ref": "champion", "work_dir": "/tmp/unused"}


def _measured_on(*contents: str) -> dict[str, Any]:
    return {**REPORTED, "contents": contents}


def _registry(champion: Callable[[], str | None], holdouts: Mapping[str, Any] | None = None) -> Callable[[Any], Any]:
    """A registry whose champion is ``champion()``, and whose versions' lineage holds out ``holdouts[version]`` (what
    train_model records; a version not named has no lineage). decide reads a lineage only when the month's content
    drifted against another version before (whether the version measured is the retrain that started)."""
    from types import SimpleNamespace

    from tenfold.registry.lineage import Lineage

    def get(version: str) -> Any:
        holdout = (holdouts or {}).get(version)
        return SimpleNamespace(version=version, lineage=None if holdout is None else Lineage(
            feature_table="features", train_partitions=(), holdout_partitions=(), training_config={},
            run_id=f"train-{version}", extra={"holdout": holdout}))

    return lambda settings: SimpleNamespace(resolve=lambda alias: champion(), get=get)


@pytest.fixture(autouse=True)
def champion_v1(monkeypatch: pytest.MonkeyPatch) -> None:
    """The registry's champion is v1, the version these runs planned with (decide asks whether it still serves);
    a test that moves the champion sets its own."""
    monkeypatch.setattr(pipeline, "ModelRegistry", _registry(lambda: "v1"))


@pytest.fixture
def taken() -> Iterator[list[str]]:
    """A second alert hook beside the webhook, registered for the test: the titles of the alerts it took."""
    titles: list[str] = []

    def recording(settings: Any, alert: alerts.Alert) -> None:
        titles.append(alert.title)

    alerts.register_hook(recording)
    try:
        yield titles
    finally:
        alerts.unregister_hook(recording)


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, dict[str, Any]]]:
    out: list[tuple[str, dict[str, Any]]] = []
    monkeypatch.setattr(alerts, "send_alert", lambda settings, title, details, only=None, log_line=True: (
        out.append((title, details)), alerts.Sent(alerts.Alert(title, details, settings.env)))[1])
    return out


def test_a_drift_triggers_once_and_a_retry_of_its_run_still_emits(tmp_path: Path, sent: list[Any],
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    settings = build_settings("local", {"TENFOLD_HOME": str(tmp_path / "home")})

    # A run outside Airflow (python -m tenfold.pipelines.monitor_drift) emits no event: it alerts, records nothing.
    manual = pipeline.decide(settings, _run("manual"), REPORTED)
    assert manual["retrain"] is True and len(sent) == 1
    assert not sent[0][0].startswith("drift: retraining") and "starts no retraining" in sent[0][0]
    assert not list((tmp_path / "home").rglob("triggered-*.json")), "a run that started no retraining held it back"
    sent.clear()

    first = pipeline.decide(settings, _run("run-a"), REPORTED, emits=True)
    assert first["retrain"] is True and first["months"] == ["2013-08"] and len(sent) == 1
    assert sent[0][1]["months"] == "2013-08"

    # The same run again (a retry after its first attempt died, or a clear): the event again, no second alert.
    retry = pipeline.decide(settings, _run("run-a"), REPORTED, emits=True)
    assert retry["retrain"] is True and len(sent) == 1

    # Another run on the same content (a re-publish of the month, a manual rerun): no alert, no retrain.
    other = pipeline.decide(settings, _run("run-b"), REPORTED, emits=True)
    assert other["retrain"] is False and len(sent) == 1
    assert other["already_triggered"] == {"2013-08": "run-a"}
    assert other["max_psi"] == 0.0  # nothing triggers: the cloud's drift alert must not page for it

    # Newly published content of the month, or another version, drifting: a new trigger.
    republished = pipeline.decide(settings, _run("run-c"), _measured_on("c07", "c08-new"), emits=True)
    assert republished["retrain"] is True and len(sent) == 2
    monkeypatch.setattr(pipeline, "ModelRegistry", _registry(lambda: "v2"))  # v2 the champion now
    assert pipeline.decide(settings, _run("run-d", version="v2"), REPORTED, emits=True)["retrain"] is True
    assert len(sent) == 3
    monkeypatch.setattr(pipeline, "ModelRegistry", _registry(lambda: "v1"))
    # A run measured before the content was recorded (its XCom has none) is neither held back nor recorded.
    legacy = {k: v for k, v in REPORTED.items() if k != "contents"}
    assert pipeline.decide(settings, _run("run-e"), legacy, emits=True)["retrain"] is True and len(sent) == 4

    recorded = sorted(p.name for p in (tmp_path / "home").rglob("triggered-*.json"))
    assert recorded == ["triggered-v1-c08-new.json", "triggered-v1-c08.json", "triggered-v2-c08.json"], recorded


def test_the_score_written_is_that_of_what_triggers(tmp_path: Path, sent: list[Any],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """A month whose PSI is high by chance but which the test does not call drift (decision "report") does not
    page: the score the cloud alert watches is that of the months that trigger retraining, else 0."""
    from tenfold.monitoring import cloud_metrics

    written: list[float | None] = []
    monkeypatch.setattr(cloud_metrics, "write_drift_score", lambda settings, score: written.append(score))
    settings = build_settings("local", {"TENFOLD_HOME": str(tmp_path / "home")})
    noisy = ({"month": "2013-07", "decision": "report", "max_psi": 0.9, "triggered": []},
             {"month": "2013-08", "decision": "ok", "max_psi": 0.05, "triggered": []})
    decision = pipeline.decide(settings, _run("run-a"), {**REPORTED, "summaries": noisy})
    assert decision["retrain"] is False and written == [0.0] and not sent
    pipeline.decide(settings, _run("run-b"), {**REPORTED, "summaries": (noisy[0], SUMMARIES[1])}, emits=True)
    assert written[-1] == 0.41


def test_of_two_runs_recording_the_same_drift_at_once_only_one_retrains(tmp_path: Path, sent: list[Any],
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Both looked and found no record; the one whose create-if-absent loses does not retrain (it alerted)."""
    import tenfold.storage

    settings = build_settings("local", {"TENFOLD_HOME": str(tmp_path / "home")})
    real = tenfold.storage.lake_objects

    class RacedBy:
        """The lake's objects, where run-a records the same trigger right after this run looked."""

        def __init__(self, objects: Any) -> None:
            self.objects, self.looked = objects, False

        def get(self, name: str) -> bytes | None:
            found = self.objects.get(name)
            if not self.looked:
                self.looked = True
                self.objects.create(name, b'{"run": "run-a"}')
            return found

        def create(self, name: str, data: bytes) -> bool:
            return bool(self.objects.create(name, data))

        def names(self, prefix: str) -> list[str]:
            return self.objects.names(prefix)

    monkeypatch.setattr(tenfold.storage, "lake_objects", lambda s, prefix: RacedBy(real(s, prefix)))
    decision = pipeline.decide(settings, _run("run-b"), REPORTED, emits=True)
    assert decision["retrain"] is False and decision["already_triggered"] == {"2013-08": "run-a"}


def test_an_undelivered_drift_alert_fails_the_try_and_the_next_one_sends_it_once(tmp_path: Path, flaky_webhook: Any) -> None:
    """decide() recorded the trigger right after send_alert, which swallowed a webhook that failed: the record made
    every retry skip the alert, so one webhook outage lost the page for good. Now the record says whether the
    alert was delivered, and an undelivered one fails the try (the task's next one alerts again, then emits), except
    on the last try, which emits regardless: the alert never holds back the retrain."""
    settings = flaky_webhook.on(build_settings("local", {"TENFOLD_HOME": str(tmp_path / "home")}))
    flaky_webhook.failures = 3  # the webhook's three tries of this try
    with pytest.raises(RuntimeError, match="not delivered by webhook") as undelivered:
        pipeline.decide(settings, _run("run-a"), REPORTED, emits=True)
    assert isinstance(undelivered.value, pipeline.AlertNotDelivered)  # retryable: the task's next try runs
    assert flaky_webhook.tries == 3 and not flaky_webhook.received
    # Recorded: another run on the same content leaves the drift to run-a (no alert, no retrain).
    other = pipeline.decide(settings, _run("run-b"), REPORTED, emits=True)
    assert other["retrain"] is False and other["already_triggered"] == {"2013-08": "run-a"} and flaky_webhook.tries == 3

    retry = pipeline.decide(settings, _run("run-a"), REPORTED, emits=True)  # the task's next try: the webhook is back
    assert retry["retrain"] is True
    (page,) = flaky_webhook.received
    assert "drift: retraining v1" in page["text"]
    # The month the first try recorded is still the drift's: its score (it said 0.0, the month left out as owed).
    assert retry["max_psi"] == 0.41 and "max_psi: 0.41" in page["text"]
    again = pipeline.decide(settings, _run("run-a"), REPORTED, emits=True)  # delivered and recorded: not twice
    assert again["retrain"] is True and len(flaky_webhook.received) == 1

    flaky_webhook.failures = 3  # new content, and the webhook down through the task's last try
    last = pipeline.decide(settings, _run("run-c"), _measured_on("c07", "c08-new"), emits=True, last_try=True)
    assert last["retrain"] is True and len(flaky_webhook.received) == 1


def test_a_trigger_recorded_as_undelivered_before_the_hooks_owed_were_kept_is_alerted_again_by_the_retry(
        tmp_path: Path, flaky_webhook: Any, taken: list[str]) -> None:
    """A record written before the hooks owed were kept said only "alerted": false; read as delivered after an
    upgrade, the retry of its run never sent the alert again (the older reader did). It cannot tell which hooks
    missed it, so every hook gets it."""
    import json

    settings = flaky_webhook.on(build_settings("local", {"TENFOLD_HOME": str(tmp_path / "home")}))
    flaky_webhook.failures = 3
    with pytest.raises(pipeline.AlertNotDelivered):
        pipeline.decide(settings, _run("run-a"), REPORTED, emits=True)
    assert len(taken) == 1  # the other hook took it; the webhook did not
    (record,) = (tmp_path / "home").rglob("triggered-v1-c08*.json")
    body = json.loads(record.read_text())
    assert body.pop("undelivered") == ["webhook"]
    record.write_text(json.dumps(body))  # as that version wrote it: {"run": "run-a", ..., "alerted": false}
    assert body["alerted"] is False and not flaky_webhook.received

    retry = pipeline.decide(settings, _run("run-a"), REPORTED, emits=True)
    assert retry["retrain"] is True
    (page,) = flaky_webhook.received
    assert "drift: retraining v1" in page["text"]
    assert len(taken) == 2, "the record names no hook: every hook is sent it again"
    assert json.loads(record.read_text())["undelivered"] == []


def test_a_retry_sends_the_drift_alert_only_to_the_hook_that_failed(tmp_path: Path, flaky_webhook: Any,
                                                                   caplog: pytest.LogCaptureFixture,
                                                                   taken: list[str]) -> None:
    """Two hooks, the webhook down for the first try: the retry sent the alert to every hook again, so the one that
    had taken it got it twice (and once more per try while the webhook stayed down); it also logged the ALERT line
    again, which pages in the cloud."""
    settings = flaky_webhook.on(build_settings("local", {"TENFOLD_HOME": str(tmp_path / "home")}))
    flaky_webhook.failures = 3  # the webhook's three tries of the first try
    with pytest.raises(pipeline.AlertNotDelivered):
        pipeline.decide(settings, _run("run-a"), REPORTED, emits=True)
    assert len(taken) == 1 and not flaky_webhook.received
    retry = pipeline.decide(settings, _run("run-a"), REPORTED, emits=True)
    assert retry["retrain"] is True
    assert len(flaky_webhook.received) == 1 and len(taken) == 1  # the webhook got it; the other hook not again
    assert caplog.text.count("ALERT [tenfold local] drift: retraining v1") == 1


def test_an_outage_of_cloud_monitoring_fails_the_try_and_its_retry_alerts_once(tmp_path: Path, sent: list[Any],
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """decide() caught every error writing the drift score, an outage included, so the point the cloud's drift alert
    watches was lost on a blip; write_drift_score leaves transient errors to the task's retries. Now they fail the try
    before any alert or record, and the retry (whose trigger record says it alerted) does not alert twice; a refusal
    (MetricWriteError), or an outage on the last try, never holds back the retrain."""
    from google.api_core.exceptions import ServiceUnavailable

    from tenfold.monitoring import cloud_metrics

    failing: list[Exception] = []
    written: list[float | None] = []

    def write(settings: Any, score: float | None) -> bool:
        if failing:
            raise failing.pop(0)
        written.append(score)
        return True

    monkeypatch.setattr(cloud_metrics, "write_drift_score", write)
    settings = build_settings("local", {"TENFOLD_HOME": str(tmp_path / "home")})
    failing.append(ServiceUnavailable("The service is currently unavailable"))
    with pytest.raises(ServiceUnavailable):
        pipeline.decide(settings, _run("run-a"), REPORTED, emits=True)
    assert not sent and not list((tmp_path / "home").rglob("triggered-*.json"))  # nothing alerted nor recorded yet

    first = pipeline.decide(settings, _run("run-a"), REPORTED, emits=True)  # the retry: written, alerted, recorded
    assert first["retrain"] is True and written == [0.41] and len(sent) == 1
    # A later try of the same run (it died before emitting), or a clear of it: the score its first try wrote is not
    # written again (a new point above the threshold opened a new incident, paging for a drift already handled).
    assert pipeline.decide(settings, _run("run-a"), REPORTED, emits=True)["retrain"] is True
    assert pipeline.decide(settings, _run("run-a"), REPORTED, emits=True)["retrain"] is True
    assert len(sent) == 1 and written == [0.41]  # no second alert, no second point

    from google.api_core.exceptions import Unauthenticated

    refused = cloud_metrics.MetricWriteError("Cloud Monitoring refused the drift score: Permission denied")
    # Not outages: a retry would meet them again, so they are named in the alert at once (not held to the last try).
    unauthenticated, fault = Unauthenticated("no credentials"), ImportError("No module named 'google.cloud.monitoring'")
    for conf, error, last_try in (("c08-refused", refused, False), ("c08-last", ServiceUnavailable("down"), True),
                                  ("c08-unauth", unauthenticated, False), ("c08-fault", fault, False)):
        failing.append(error)
        decision = pipeline.decide(settings, _run(f"run-{conf}"), _measured_on("c07", conf), emits=True,
                                   last_try=last_try)
        assert decision["retrain"] is True and type(error).__name__ in sent[-1][1]["cloud_metric_not_written"]
    assert len(sent) == 5


def test_a_cleared_run_finds_its_own_recorded_event_but_not_another_runs_or_one_of_other_content(
    tmp_path: Path, sent: list[Any]
) -> None:
    """The DAG's decide skips the emit when Airflow holds this run's event of the same decision (a cleared run that
    finished): its trigger record is its own, so decide() says retrain again."""
    from types import SimpleNamespace

    settings = build_settings("local", {"TENFOLD_HOME": str(tmp_path / "home")})
    decision = pipeline.decide(settings, _run("run-a"), REPORTED, emits=True)
    assert decision["contents"] == {"2013-08": "c08"}

    def event(run_id: str, extra: dict[str, Any], dag_id: str = pipeline.DAG_ID) -> SimpleNamespace:
        return SimpleNamespace(source_dag_id=dag_id, source_run_id=run_id, extra=extra, timestamp="t")

    recorded = event("run-a", decision)
    assert pipeline.emitted_already([event("run-b", decision), recorded], pipeline.DAG_ID, "run-a", decision) is recorded
    again = pipeline.decide(settings, _run("run-a"), REPORTED, emits=True)  # the clear decides the same
    assert again["retrain"] is True and pipeline.emitted_already([recorded], pipeline.DAG_ID, "run-a", again) is recorded

    # Not this run's, another DAG's, or one of before the month was re-published (other content): emit.
    assert pipeline.emitted_already([event("run-b", decision)], pipeline.DAG_ID, "run-a", decision) is None
    assert pipeline.emitted_already([event("run-a", decision, "other_dag")], pipeline.DAG_ID, "run-a", decision) is None
    republished = pipeline.decide(settings, _run("run-a"), _measured_on("c07", "c08-new"), emits=True)
    assert republished["retrain"] is True
    assert pipeline.emitted_already([recorded], pipeline.DAG_ID, "run-a", republished) is None
    assert pipeline.emitted_already([event("run-a", {**decision, "version": "v2"})], pipeline.DAG_ID, "run-a",
                                    decision) is None


def test_a_trigger_recorded_by_a_run_that_emitted_nothing_is_taken_over_by_the_next_run(
    tmp_path: Path, sent: list[Any]
) -> None:
    """run-a recorded the month's trigger and failed before Airflow recorded its event (its last try: a store error
    after the record): every later run on that content said "already triggered by run-a", so the drift never
    retrained. The DAG tells decide() which runs Airflow holds a drift event of."""
    settings = build_settings("local", {"TENFOLD_HOME": str(tmp_path / "home")})
    pipeline.decide(settings, _run("run-a"), REPORTED, emits=True)  # recorded, alerted; its event never went out
    assert len(sent) == 1

    held_back = pipeline.decide(settings, _run("run-b"), REPORTED, emits=True, emitted_by=lambda run_id: True)
    assert held_back["retrain"] is False and held_back["already_triggered"] == {"2013-08": "run-a"}
    assert len(sent) == 1

    taken = pipeline.decide(settings, _run("run-c"), REPORTED, emits=True,
                            emitted_by=lambda run_id: run_id != "run-a")
    assert taken["retrain"] is True and taken["months"] == ["2013-08"] and taken["already_triggered"] == {}
    assert len(sent) == 2  # the retrain it now starts is alerted
    # run-c's record now: a later run (run-c emitted) is held back by it, and run-c's own retry owes nothing
    later = pipeline.decide(settings, _run("run-d"), REPORTED, emits=True, emitted_by=lambda run_id: run_id == "run-c")
    assert later["retrain"] is False and later["already_triggered"] == {"2013-08": "run-c"}
    assert pipeline.decide(settings, _run("run-c"), REPORTED, emits=True)["retrain"] is True and len(sent) == 2


def test_drift_of_a_version_that_is_not_the_champion_alerts_but_neither_retrains_nor_holds_the_champions_back(
        tmp_path: Path, sent: list[Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """A run conf naming another version (several refusals advise "monitor another version with the conf's version")
    paged "drift: retraining <version>", recorded a trigger under it and emitted the drift event: train_model retrained
    and rolled out a replacement for the serving model, which was not the one measured."""
    settings = build_settings("local", {"TENFOLD_HOME": str(tmp_path / "home")})
    champion: dict[str, str | None] = {"now": "v1"}
    monkeypatch.setattr(pipeline, "ModelRegistry", _registry(lambda: champion["now"]))
    from tenfold.monitoring import cloud_metrics

    scores: list[Any] = []
    monkeypatch.setattr(cloud_metrics, "write_drift_score", lambda settings, score: scores.append(score))
    old = {**_run("run-old", version="v0"), "version_ref": "v0"}
    decision = pipeline.decide(settings, old, REPORTED, emits=True)
    assert decision["retrain"] is False and len(sent) == 1
    assert "v0 is not the champion (v1): no retraining" in sent[0][0] and not sent[0][0].startswith("drift: retraining")
    assert not list((tmp_path / "home").rglob("triggered-*.json")), "a trigger of a version not serving was recorded"
    assert scores == []  # the cloud's drift alert (one series per project) pages on this score: not for v0
    outside = pipeline.decide(settings, {**old, "airflow_run_id": "manual"}, REPORTED)  # python -m ..., no event
    assert scores == [] and "v0 is not the champion (v1)" in sent[-1][0] and outside["retrain"] is False
    # The champion named by its id is the champion: it retrains.
    assert pipeline.decide(settings, {**_run("run-v1"), "version_ref": "v1"}, REPORTED, emits=True)["retrain"] is True
    assert scores == [0.41]
    # With no champion yet (a fresh platform) nothing serves that a retrain would replace: the version named retrains.
    champion["now"] = None
    assert pipeline.decide(settings, {**_run("run-first", version="v0"), "version_ref": "v0"}, REPORTED,
                           emits=True)["retrain"] is True


def test_a_run_cleared_after_a_rollout_moved_the_champion_measures_the_same_version_and_retrains_nothing_again(
        tmp_path: Path, sent: list[Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """run-a measured the champion v1, found drift and emitted; the retrain's canary then made v2 the champion, and
    run-a was cleared from plan: it resolved the champion again (v2), its own event (of v1) no longer matched, so it
    alerted "drift: retraining v2" and emitted a second drift event, starting a second retraining. And a run whose
    champion a rollout replaced while it measured retrained the model that no longer served."""
    from tenfold.data.lake import Lake, Partition
    from tenfold.workloads.flights.synthetic import publish_synthetic_features

    settings = build_settings("local", {"TENFOLD_HOME": str(tmp_path / "home")})
    publish_synthetic_features(Lake.from_settings(settings), [Partition(2013, 8)], 50)
    champion = {"now": "v1"}
    monkeypatch.setattr(pipeline, "ModelRegistry", lambda settings: type("R", (), {
        "resolve": staticmethod(lambda alias: champion["now"])})())
    first = pipeline.plan(settings, "run-a", {"month": "2013-08"})
    assert first.version == "v1"
    champion["now"] = "v2"  # the retrain's canary promoted v2
    assert pipeline.plan(settings, "run-a", {"month": "2013-08"}).version == "v1"  # the clear measures v1 again
    assert pipeline.plan(settings, "run-b", {"month": "2013-08"}).version == "v2"  # a new run, the new champion
    # decide on the cleared run (or on a run whose champion a rollout replaced meanwhile): v1 no longer serves
    decision = pipeline.decide(settings, _run("run-a"), REPORTED, emits=True)
    assert decision["retrain"] is False and "v1 is not the champion (v2): no retraining" in sent[-1][0]
    assert not list((tmp_path / "home").rglob("triggered-*.json")), "a trigger of a version not serving was recorded"
    # with no champion when a run first plans, nothing is kept: cleared once there is one, it measures that one
    champion["now"] = None
    assert pipeline.plan(settings, "run-c", {"month": "2013-08"}).version is None
    champion["now"] = "v3"
    assert pipeline.plan(settings, "run-c", {"month": "2013-08"}).version == "v3"


def test_a_run_conf_naming_the_champion_keeps_it_pinned_when_a_rollout_moved_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The run conf {"version": "champion"} (the CLI help's own example) resolved the alias again on every plan: run-a
    cleared after the retrain's canary made v2 champion measured v2, which learnt only up to the month before, so the
    month drifted again, no record of v2 held it back, and it alerted and retrained a second time."""
    from tenfold.data.lake import Lake, Partition
    from tenfold.workloads.flights.synthetic import publish_synthetic_features

    settings = build_settings("local", {"TENFOLD_HOME": str(tmp_path / "home")})
    publish_synthetic_features(Lake.from_settings(settings), [Partition(2013, 8)], 50)
    champion = {"now": "v1"}
    monkeypatch.setattr(pipeline, "ModelRegistry", lambda settings: type("R", (), {
        "resolve": staticmethod(lambda alias: champion["now"]),
        "find": staticmethod(lambda ref: champion["now"] if ref == "champion" else ref)})())
    conf = {"month": "2013-08", "version": "champion"}
    first = pipeline.plan(settings, "run-a", conf)
    assert (first.version, first.version_ref) == ("v1", "champion")
    champion["now"] = "v2"  # the retrain's canary promoted v2
    assert pipeline.plan(settings, "run-a", conf).version == "v1"  # the clear measures v1 again
    assert pipeline.plan(settings, "run-b", conf).version == "v2"  # a new run, the new champion
    assert pipeline.plan(settings, "run-a", {**conf, "version": "v7"}).version == "v7"  # an id is taken as named


def _drifted_august(tmp_path: Path) -> tuple[Any, dict[str, Any], dict[str, Any]]:
    """Settings with 2013-06..08 published; the report of August drifting, on its content as measure() pins it; and
    the holdout a drift-started train_model run records for it (its rolling split holds August alone out)."""
    from dataclasses import asdict

    from tenfold.data.lake import Lake, Partition
    from tenfold.pipelines.train_model import holdout_ref
    from tenfold.workloads.flights.synthetic import publish_synthetic_features

    settings = build_settings("local", {"TENFOLD_HOME": str(tmp_path / "home")})
    lake, table = Lake.from_settings(settings), settings.storage.features_table
    publish_synthetic_features(lake, [Partition(2013, 6), Partition(2013, 7), Partition(2013, 8)], 50)
    content = lake.content_digest(table, [Partition(2013, 8)])
    return settings, _measured_on("c07", content), asdict(holdout_ref(lake, table, [Partition(2013, 8)]))


def test_the_retrain_a_drift_started_is_not_retrained_again_for_the_month_it_held_out(
        tmp_path: Path, sent: list[Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """The retrain that August's drift against v1 started holds August out to judge it, so v2 never learnt it. The same
    content measured against v2 (a re-publish of it, a manual rerun) drifted again, found no triggered-v2-... record,
    and paged and retrained a second time for the drift v2 was made for."""
    settings, reported, holdout = _drifted_august(tmp_path)
    first = pipeline.decide(settings, _run("run-a"), reported, emits=True)
    assert first["retrain"] is True and len(sent) == 1
    monkeypatch.setattr(pipeline, "ModelRegistry", _registry(lambda: "v2", {"v2": holdout}))  # its canary promoted v2
    for run_id, emits in (("run-b", True), ("manual", False)):
        again = pipeline.decide(settings, _run(run_id, version="v2"), reported, emits=emits,
                                emitted_by=lambda run_id: True)
        assert again["retrain"] is False and again["already_triggered"] == {"2013-08": "run-a"}
        assert again["max_psi"] == 0.0  # nothing triggers: the cloud's drift alert must not page for it
    assert len(sent) == 1, "the drift v2 was retrained for paged again"
    assert [p.name for p in (tmp_path / "home").rglob("triggered-*.json")] == [
        f"triggered-v1-{reported['contents'][1][:16]}.json"]


@pytest.mark.parametrize("case", ["a scheduled run's", "other content", "no lineage", "its trigger emitted nothing",
                                  "no earlier trigger"])
def test_drift_of_a_champion_that_is_not_the_retrain_of_that_drift_still_retrains(
        tmp_path: Path, sent: list[Any], monkeypatch: pytest.MonkeyPatch, case: str) -> None:
    """Only the retrain that the month's trigger started is spared: a champion that held out other months (a scheduled
    run's three), another content of the month, or none it can tell, is new drift, and so is one whose trigger's run
    started no retraining (Airflow holds no event of it), or a month no run triggered on."""
    from dataclasses import asdict

    from tenfold.data.lake import Lake, Partition
    from tenfold.pipelines.train_model import holdout_ref

    settings, reported, holdout = _drifted_august(tmp_path)
    if case != "no earlier trigger":
        assert pipeline.decide(settings, _run("run-a"), reported, emits=True)["retrain"] is True
    if case == "a scheduled run's":
        lake = Lake.from_settings(settings)
        holdout = asdict(holdout_ref(lake, settings.storage.features_table,
                                     [Partition(2013, 6), Partition(2013, 7), Partition(2013, 8)]))
    elif case == "other content":
        holdout = {**holdout, "digest": "an earlier publish of 2013-08"}
    monkeypatch.setattr(pipeline, "ModelRegistry",
                        _registry(lambda: "v2", {} if case == "no lineage" else {"v2": holdout}))
    decision = pipeline.decide(settings, _run("run-b", version="v2"), reported, emits=True,
                               emitted_by=lambda run_id: case != "its trigger emitted nothing")
    assert decision["retrain"] is True and decision["months"] == ["2013-08"] and decision["already_triggered"] == {}
    assert sent[-1][0].startswith("drift: retraining v2")


def test_a_registry_outage_reading_the_champions_lineage_fails_the_try_but_the_last_try_still_retrains(
        tmp_path: Path, sent: list[Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """Whether the champion is the retrain of the month's drift is read from its lineage: a registry away fails a try
    before any alert (the next asks again); the last try decides as for new drift, which never holds back a retrain."""
    from google.api_core.exceptions import ServiceUnavailable

    settings, reported, _ = _drifted_august(tmp_path)
    pipeline.decide(settings, _run("run-a"), reported, emits=True)

    def away(version: str) -> Any:
        raise ServiceUnavailable("the registry's bucket is away")

    monkeypatch.setattr(pipeline, "ModelRegistry", lambda settings: type("R", (), {
        "resolve": staticmethod(lambda alias: "v2"), "get": staticmethod(away)})())
    with pytest.raises(ServiceUnavailable):
        pipeline.decide(settings, _run("run-b", version="v2"), reported, emits=True)
    assert len(sent) == 1
    last = pipeline.decide(settings, _run("run-b", version="v2"), reported, emits=True, last_try=True)
    assert last["retrain"] is True and len(sent) == 2 and sent[-1][0].startswith("drift: retraining v2")


def test_a_registry_outage_when_asking_for_the_champion_fails_the_try_but_the_last_try_still_retrains(
        tmp_path: Path, sent: list[Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """decide asks whether the champion it planned with still serves: a registry away fails a try (the next asks again),
    but on the task's last try the decision goes out regardless, as its docstring promises."""
    from google.api_core.exceptions import ServiceUnavailable

    def away(alias: str) -> str:
        raise ServiceUnavailable("the registry's bucket is away")

    monkeypatch.setattr(pipeline, "ModelRegistry", lambda settings: type("R", (), {"resolve": staticmethod(away)})())
    settings = build_settings("local", {"TENFOLD_HOME": str(tmp_path / "home")})
    with pytest.raises(ServiceUnavailable):
        pipeline.decide(settings, _run("run-a"), REPORTED, emits=True)
    assert sent == [] and not list((tmp_path / "home").rglob("triggered-*.json"))
    last = pipeline.decide(settings, _run("run-a"), REPORTED, emits=True, last_try=True)
    assert last["retrain"] is True and len(sent) == 1 and sent[0][0].startswith("drift: retraining v1")
    with pytest.raises(ServiceUnavailable):  # a version the run conf named: nothing decided on a guess
        pipeline.decide(settings, {**_run("run-b", version="v0"), "version_ref": "v0"}, REPORTED, emits=True,
                        last_try=True)
