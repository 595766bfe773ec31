"""A drift triggers retraining once: the DAG's decide() records each month's trigger (against a version, on the
content measured) in the lake, and another run that finds it neither alerts nor retrains again, while a retry of
the run that recorded it still emits its event (without a second alert). Every features publish of a month, a
re-publish of the same content included, starts monitor_drift, and each run alerted and retrained again."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pytest

from tenfold.config import Settings, build_settings
from tenfold.data.lake import Lake, Partition, month_range
from tenfold.monitoring import alerts
from tenfold.pipelines import monitor_drift as pipeline
from tenfold.registry import CHAMPION, ModelRegistry

SUMMARIES = ({"month": "2013-07", "decision": "ok", "max_psi": 0.12, "triggered": []},
             {"month": "2013-08", "decision": "retrain", "max_psi": 0.41, "triggered": ["distance"]})
REPORTED = {"summaries": SUMMARIES, "json_uris": ("a", "b"), "html_uris": ("a.html", "b.html"), "contents": ("c07", "c08")}


def _run(run_id: str, version: str) -> dict[str, Any]:
    return {"run_key": run_id, "airflow_run_id": run_id, "months": ["2013-07", "2013-08"], "version": version,
            "version_ref": "champion", "work_dir": "/tmp/unused"}


def _measured_on(*contents: str) -> dict[str, Any]:
    return {**REPORTED, "contents": contents}


def _trained(settings: Settings, folder: Path, run_id: str, seed: int, conf: dict[str, Any] | None = None,
             drifted: tuple[str, ...] = ()) -> str:
    """A version registered by train_model's own plan and register steps: the split is the plan's (a run drift started
    holds the newest month alone out), and the lineage, its holdout in ``extra`` included, is the one register writes
    and the drift monitor reads back. The model is a small untrained network on a preprocessor fit on the plan's
    training months (its bytes differ by ``seed``); evaluate is left out, its scores being no matter here, and its
    Evaluation records the plan's holdout as evaluate does."""
    import torch

    from tenfold.model import Preprocessor, save_model
    from tenfold.pipelines import train_model
    from tenfold.workloads.flights import WORKLOAD
    from tenfold.workloads.flights.model import FlightDelayModel, ModelConfig

    planned = train_model.plan(settings, run_id, {"feedback_weight": 0, **(conf or {})}, drifted=drifted)
    pre = Preprocessor.fit(Lake.from_settings(settings).read_table(planned.table, planned.train_parts),
                           WORKLOAD.contract)
    config = ModelConfig(embedding_dim=4, hidden=(8,), dropout=0.0)
    torch.manual_seed(seed)
    save_model(folder, FlightDelayModel(config, list(pre.vocab_sizes.values()), pre.num_inputs), config, pre,
               workload=WORKLOAD.name)
    evaluation = train_model.Evaluation(holdout=asdict(planned.holdout), baselines={},
                                        challenger={"auc": 0.6, "log_loss": 0.6, "brier": 0.2})
    return train_model.register(settings, planned, train_model.Trained(model_ref=str(folder)), evaluation).version


@dataclass(frozen=True)
class Registered:
    """Settings on the session's GCS emulator (a registry of this test's own) and the versions registered there."""

    settings: Settings
    v1: str  # the champion: trained on 2013-05..06, 2013-07 held out, before August was published
    v2: str  # the retrain a drift of August would start: trained up to 2013-07, August held out (not promoted)


@pytest.fixture
def registered(make_settings: Callable[..., Settings], local_settings: Settings, tmp_path: Path) -> Registered:
    """The real registry: v1 trained and promoted champion with the real alias (decide asks whether the version a run
    planned with still serves), then August published and v2 trained as a drift of it starts train_model. A test that
    moves the champion promotes another version itself."""
    from tenfold.workloads.flights.synthetic import publish_synthetic_features

    settings = make_settings(on=local_settings)
    lake = Lake.from_settings(settings)
    publish_synthetic_features(lake, month_range("2013-05", "2013-07"), 50)
    v1 = _trained(settings, tmp_path / "v1", "scheduled__v1", seed=1)
    ModelRegistry(settings).promote(v1, reason="the first model")
    publish_synthetic_features(lake, [Partition(2013, 8)], 50)
    v2 = _trained(settings, tmp_path / "v2", "asset_triggered__v2", seed=2, drifted=("2013-08",))
    return Registered(settings, v1, v2)


def _recorded(settings: Settings) -> list[str]:
    """The names of the trigger records in the lake, sorted."""
    return sorted(p.name for p in settings.local.home.rglob("triggered-*.json"))


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


def test_a_drift_triggers_once_and_a_retry_of_its_run_still_emits(registered: Registered, sent: list[Any]) -> None:
    settings, v1, v2 = registered.settings, registered.v1, registered.v2

    # A run outside Airflow (python -m tenfold.pipelines.monitor_drift) emits no event: it alerts, records nothing,
    # and says it would retrain without claiming it does.
    manual = pipeline.decide(settings, _run("manual", v1), REPORTED)
    assert manual["retrain"] is False and manual["would_retrain"] is True and len(sent) == 1
    assert not sent[0][0].startswith("drift: retraining") and "starts no retraining" in sent[0][0]
    assert not _recorded(settings), "a run that started no retraining held it back"
    sent.clear()

    first = pipeline.decide(settings, _run("run-a", v1), REPORTED, emits=True)
    assert first["retrain"] is True and first["months"] == ["2013-08"] and len(sent) == 1
    assert sent[0][1]["months"] == "2013-08"

    # The same run again (a retry after its first attempt died, or a clear): the event again, no second alert.
    retry = pipeline.decide(settings, _run("run-a", v1), REPORTED, emits=True)
    assert retry["retrain"] is True and len(sent) == 1

    # Another run on the same content (a re-publish of the month, a manual rerun): no alert, no retrain.
    other = pipeline.decide(settings, _run("run-b", v1), REPORTED, emits=True)
    assert other["retrain"] is False and len(sent) == 1
    assert other["already_triggered"] == {"2013-08": "run-a"}
    assert other["max_psi"] == 0.0  # nothing triggers: the cloud's drift alert must not page for it

    # Newly published content of the month, or another version, drifting: a new trigger.
    republished = pipeline.decide(settings, _run("run-c", v1), _measured_on("c07", "c08-new"), emits=True)
    assert republished["retrain"] is True and len(sent) == 2
    registry = ModelRegistry(settings)
    registry.promote(v2)  # v2 the champion now (it held August out, but of other content than "c08")
    assert pipeline.decide(settings, _run("run-d", v2), REPORTED, emits=True)["retrain"] is True
    assert len(sent) == 3
    registry.promote(v1)
    # A run measured before the content was recorded (its XCom has none) is neither held back nor recorded.
    legacy = {k: v for k, v in REPORTED.items() if k != "contents"}
    assert pipeline.decide(settings, _run("run-e", v1), legacy, emits=True)["retrain"] is True and len(sent) == 4

    recorded = _recorded(settings)
    assert recorded == sorted([f"triggered-{v1}-c08-new.json", f"triggered-{v1}-c08.json",
                               f"triggered-{v2}-c08.json"]), recorded


def test_the_score_written_is_that_of_what_triggers(registered: Registered, sent: list[Any],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """A month whose PSI is high by chance but which the test does not call drift (decision "report") does not
    page: the score the cloud alert watches is that of the months that trigger retraining, else 0."""
    from tenfold.monitoring import cloud_metrics

    written: list[float | None] = []
    monkeypatch.setattr(cloud_metrics, "write_drift_score", lambda settings, score: written.append(score))
    settings, v1 = registered.settings, registered.v1
    noisy = ({"month": "2013-07", "decision": "report", "max_psi": 0.9, "triggered": []},
             {"month": "2013-08", "decision": "ok", "max_psi": 0.05, "triggered": []})
    decision = pipeline.decide(settings, _run("run-a", v1), {**REPORTED, "summaries": noisy}, emits=True)
    assert decision["retrain"] is False and written == [0.0] and not sent
    pipeline.decide(settings, _run("run-b", v1), {**REPORTED, "summaries": (noisy[0], SUMMARIES[1])}, emits=True)
    assert written[-1] == 0.41


def test_of_two_runs_recording_the_same_drift_at_once_only_one_retrains(registered: Registered, sent: list[Any],
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Both looked and found no record; the one whose create-if-absent loses does not retrain (it alerted)."""
    import tenfold.storage

    settings, v1 = registered.settings, registered.v1
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
    decision = pipeline.decide(settings, _run("run-b", v1), REPORTED, emits=True)
    assert decision["retrain"] is False and decision["already_triggered"] == {"2013-08": "run-a"}


def test_an_undelivered_drift_alert_fails_the_try_and_the_next_one_sends_it_once(registered: Registered, flaky_webhook: Any) -> None:
    """decide() recorded the trigger right after send_alert, which swallowed a webhook that failed: the record made
    every retry skip the alert, so one webhook outage lost the page for good. Now the record says whether the
    alert was delivered, and an undelivered one fails the try (the task's next one alerts again, then emits), except
    on the last try, which emits regardless: the alert never holds back the retrain."""
    settings, v1 = flaky_webhook.on(registered.settings), registered.v1
    flaky_webhook.failures = 3  # the webhook's three tries of this try
    with pytest.raises(RuntimeError, match="not delivered by webhook") as undelivered:
        pipeline.decide(settings, _run("run-a", v1), REPORTED, emits=True)
    assert isinstance(undelivered.value, pipeline.AlertNotDelivered)  # retryable: the task's next try runs
    assert flaky_webhook.tries == 3 and not flaky_webhook.received
    # Recorded: another run on the same content leaves the drift to run-a (no alert, no retrain).
    other = pipeline.decide(settings, _run("run-b", v1), REPORTED, emits=True)
    assert other["retrain"] is False and other["already_triggered"] == {"2013-08": "run-a"} and flaky_webhook.tries == 3

    retry = pipeline.decide(settings, _run("run-a", v1), REPORTED, emits=True)  # the task's next try: the webhook is back
    assert retry["retrain"] is True
    (page,) = flaky_webhook.received
    assert f"drift: retraining {v1}" in page["text"]
    # The month the first try recorded is still the drift's: its score (it said 0.0, the month left out as owed).
    assert retry["max_psi"] == 0.41 and "max_psi: 0.41" in page["text"]
    again = pipeline.decide(settings, _run("run-a", v1), REPORTED, emits=True)  # delivered and recorded: not twice
    assert again["retrain"] is True and len(flaky_webhook.received) == 1

    flaky_webhook.failures = 3  # new content, and the webhook down through the task's last try
    last = pipeline.decide(settings, _run("run-c", v1), _measured_on("c07", "c08-new"), emits=True, last_try=True)
    assert last["retrain"] is True and len(flaky_webhook.received) == 1


def test_a_trigger_recorded_as_undelivered_before_the_hooks_owed_were_kept_is_alerted_again_by_the_retry(
        registered: Registered, flaky_webhook: Any, taken: list[str]) -> None:
    """A record written before the hooks owed were kept said only "alerted": false; read as delivered after an
    upgrade, the retry of its run never sent the alert again (the older reader did). It cannot tell which hooks
    missed it, so every hook gets it."""
    import json

    settings, v1 = flaky_webhook.on(registered.settings), registered.v1
    flaky_webhook.failures = 3
    with pytest.raises(pipeline.AlertNotDelivered):
        pipeline.decide(settings, _run("run-a", v1), REPORTED, emits=True)
    assert len(taken) == 1  # the other hook took it; the webhook did not
    (record,) = settings.local.home.rglob(f"triggered-{v1}-c08*.json")
    body = json.loads(record.read_text())
    assert body.pop("undelivered") == ["webhook"]
    record.write_text(json.dumps(body))  # as that version wrote it: {"run": "run-a", ..., "alerted": false}
    assert body["alerted"] is False and not flaky_webhook.received

    retry = pipeline.decide(settings, _run("run-a", v1), REPORTED, emits=True)
    assert retry["retrain"] is True
    (page,) = flaky_webhook.received
    assert f"drift: retraining {v1}" in page["text"]
    assert len(taken) == 2, "the record names no hook: every hook is sent it again"
    assert json.loads(record.read_text())["undelivered"] == []


def test_a_retry_sends_the_drift_alert_only_to_the_hook_that_failed(registered: Registered, flaky_webhook: Any,
                                                                   caplog: pytest.LogCaptureFixture,
                                                                   taken: list[str]) -> None:
    """Two hooks, the webhook down for the first try: the retry sent the alert to every hook again, so the one that
    had taken it got it twice (and once more per try while the webhook stayed down); it also logged the ALERT line
    again, which pages in the cloud."""
    settings, v1 = flaky_webhook.on(registered.settings), registered.v1
    flaky_webhook.failures = 3  # the webhook's three tries of the first try
    with pytest.raises(pipeline.AlertNotDelivered):
        pipeline.decide(settings, _run("run-a", v1), REPORTED, emits=True)
    assert len(taken) == 1 and not flaky_webhook.received
    retry = pipeline.decide(settings, _run("run-a", v1), REPORTED, emits=True)
    assert retry["retrain"] is True
    assert len(flaky_webhook.received) == 1 and len(taken) == 1  # the webhook got it; the other hook not again
    assert caplog.text.count(f"ALERT [tenfold local] drift: retraining {v1}") == 1


def test_an_outage_of_cloud_monitoring_fails_the_try_and_its_retry_alerts_once(registered: Registered, sent: list[Any],
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
    settings, v1 = registered.settings, registered.v1
    failing.append(ServiceUnavailable("The service is currently unavailable"))
    with pytest.raises(ServiceUnavailable):
        pipeline.decide(settings, _run("run-a", v1), REPORTED, emits=True)
    assert not sent and not list(settings.local.home.rglob("triggered-*.json"))  # nothing alerted nor recorded yet

    first = pipeline.decide(settings, _run("run-a", v1), REPORTED, emits=True)  # the retry: written, alerted, recorded
    assert first["retrain"] is True and written == [0.41] and len(sent) == 1
    # A later try of the same run (it died before emitting), or a clear of it: the score its first try wrote is not
    # written again (a new point above the threshold opened a new incident, paging for a drift already handled).
    assert pipeline.decide(settings, _run("run-a", v1), REPORTED, emits=True)["retrain"] is True
    assert pipeline.decide(settings, _run("run-a", v1), REPORTED, emits=True)["retrain"] is True
    assert len(sent) == 1 and written == [0.41]  # no second alert, no second point

    from google.api_core.exceptions import Unauthenticated

    refused = cloud_metrics.MetricWriteError("Cloud Monitoring refused the drift score: Permission denied")
    # Not outages: a retry would meet them again, so they are named in the alert at once (not held to the last try).
    unauthenticated, fault = Unauthenticated("no credentials"), ImportError("No module named 'google.cloud.monitoring'")
    for conf, error, last_try in (("c08-refused", refused, False), ("c08-last", ServiceUnavailable("down"), True),
                                  ("c08-unauth", unauthenticated, False), ("c08-fault", fault, False)):
        failing.append(error)
        decision = pipeline.decide(settings, _run(f"run-{conf}", v1), _measured_on("c07", conf), emits=True,
                                   last_try=last_try)
        assert decision["retrain"] is True and type(error).__name__ in sent[-1][1]["cloud_metric_not_written"]
    assert len(sent) == 5


def test_a_cleared_run_finds_its_own_recorded_event_but_not_another_runs_or_one_of_other_content(
    registered: Registered, sent: list[Any]
) -> None:
    """The DAG's decide skips the emit when Airflow holds this run's event of the same decision (a cleared run that
    finished): its trigger record is its own, so decide() says retrain again."""
    from types import SimpleNamespace

    settings, v1 = registered.settings, registered.v1
    decision = pipeline.decide(settings, _run("run-a", v1), REPORTED, emits=True)
    assert decision["contents"] == {"2013-08": "c08"}

    def event(run_id: str, extra: dict[str, Any], dag_id: str = pipeline.DAG_ID) -> SimpleNamespace:
        return SimpleNamespace(source_dag_id=dag_id, source_run_id=run_id, extra=extra, timestamp="t")

    recorded = event("run-a", decision)
    assert pipeline.emitted_already([event("run-b", decision), recorded], pipeline.DAG_ID, "run-a", decision) is recorded
    again = pipeline.decide(settings, _run("run-a", v1), REPORTED, emits=True)  # the clear decides the same
    assert again["retrain"] is True and pipeline.emitted_already([recorded], pipeline.DAG_ID, "run-a", again) is recorded

    # Not this run's, another DAG's, or one of before the month was re-published (other content): emit.
    assert pipeline.emitted_already([event("run-b", decision)], pipeline.DAG_ID, "run-a", decision) is None
    assert pipeline.emitted_already([event("run-a", decision, "other_dag")], pipeline.DAG_ID, "run-a", decision) is None
    republished = pipeline.decide(settings, _run("run-a", v1), _measured_on("c07", "c08-new"), emits=True)
    assert republished["retrain"] is True
    assert pipeline.emitted_already([recorded], pipeline.DAG_ID, "run-a", republished) is None
    assert pipeline.emitted_already([event("run-a", {**decision, "version": "v2"})], pipeline.DAG_ID, "run-a",
                                    decision) is None


def test_a_trigger_recorded_by_a_run_that_emitted_nothing_is_taken_over_by_the_next_run(
    registered: Registered, sent: list[Any]
) -> None:
    """run-a recorded the month's trigger and failed before Airflow recorded its event (its last try: a store error
    after the record): every later run on that content said "already triggered by run-a", so the drift never
    retrained. The DAG tells decide() which runs Airflow holds a drift event of."""
    settings, v1 = registered.settings, registered.v1
    pipeline.decide(settings, _run("run-a", v1), REPORTED, emits=True)  # recorded, alerted; its event never went out
    assert len(sent) == 1

    held_back = pipeline.decide(settings, _run("run-b", v1), REPORTED, emits=True, emitted_by=lambda run_id: True)
    assert held_back["retrain"] is False and held_back["already_triggered"] == {"2013-08": "run-a"}
    assert len(sent) == 1

    taken = pipeline.decide(settings, _run("run-c", v1), REPORTED, emits=True,
                            emitted_by=lambda run_id: run_id != "run-a")
    assert taken["retrain"] is True and taken["months"] == ["2013-08"] and taken["already_triggered"] == {}
    assert len(sent) == 2  # the retrain it now starts is alerted
    # run-c's record now: a later run (run-c emitted) is held back by it, and run-c's own retry owes nothing
    later = pipeline.decide(settings, _run("run-d", v1), REPORTED, emits=True, emitted_by=lambda run_id: run_id == "run-c")
    assert later["retrain"] is False and later["already_triggered"] == {"2013-08": "run-c"}
    assert pipeline.decide(settings, _run("run-c", v1), REPORTED, emits=True)["retrain"] is True and len(sent) == 2


def test_drift_of_a_version_that_is_not_the_champion_alerts_but_neither_retrains_nor_holds_the_champions_back(
        registered: Registered, sent: list[Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """A run conf naming another version (several refusals advise "monitor another version with the conf's version")
    paged "drift: retraining <version>", recorded a trigger under it and emitted the drift event: train_model retrained
    and rolled out a replacement for the serving model, which was not the one measured."""
    settings, v1, v0 = registered.settings, registered.v1, registered.v2  # v2 registered, never promoted
    from tenfold.monitoring import cloud_metrics

    scores: list[Any] = []
    monkeypatch.setattr(cloud_metrics, "write_drift_score", lambda settings, score: scores.append(score))
    old = {**_run("run-old", v0), "version_ref": v0}
    decision = pipeline.decide(settings, old, REPORTED, emits=True)
    assert decision["retrain"] is False and len(sent) == 1
    assert f"{v0} is not the champion ({v1}): no retraining" in sent[0][0]
    assert not sent[0][0].startswith("drift: retraining")
    assert not _recorded(settings), "a trigger of a version not serving was recorded"
    assert scores == []  # the cloud's drift alert (one series per project) pages on this score: not for v0
    outside = pipeline.decide(settings, {**old, "airflow_run_id": "manual"}, REPORTED)  # python -m ..., no event
    assert scores == [] and f"{v0} is not the champion ({v1})" in sent[-1][0] and outside["retrain"] is False
    # The champion named by its id is the champion: it retrains.
    assert pipeline.decide(settings, {**_run("run-v1", v1), "version_ref": v1}, REPORTED, emits=True)["retrain"] is True
    assert scores == [0.41]
    # With no champion yet (a fresh platform: a registry of its own, no alias set) nothing serves that a retrain would
    # replace: the version named retrains.
    fresh = settings.model_copy(update={"storage": settings.storage.model_copy(
        update={"registry_prefix": f"{settings.storage.registry_prefix}-fresh"})})
    assert ModelRegistry(fresh).resolve(CHAMPION) is None
    assert pipeline.decide(fresh, {**_run("run-first", v0), "version_ref": v0}, REPORTED, emits=True)["retrain"] is True


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
    decision = pipeline.decide(settings, _run("run-a", "v1"), REPORTED, emits=True)
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


def _drifted_august(settings: Settings) -> dict[str, Any]:
    """The report of August drifting, on its content as measure() pins it (what the fixture's v2 held out)."""
    lake, table = Lake.from_settings(settings), settings.storage.features_table
    return _measured_on("c07", lake.content_digest(table, [Partition(2013, 8)]))


def test_the_retrain_a_drift_started_is_not_retrained_again_for_the_month_it_held_out(
        registered: Registered, sent: list[Any]) -> None:
    """The retrain that August's drift against v1 started holds August out to judge it, so v2 never learnt it. The same
    content measured against v2 (a re-publish of it, a manual rerun) drifted again, found no triggered-v2-... record,
    and paged and retrained a second time for the drift v2 was made for."""
    settings, v1, v2 = registered.settings, registered.v1, registered.v2
    reported = _drifted_august(settings)
    first = pipeline.decide(settings, _run("run-a", v1), reported, emits=True)
    assert first["retrain"] is True and len(sent) == 1
    ModelRegistry(settings).promote(v2)  # its canary promoted v2
    for run_id, emits in (("run-b", True), ("manual", False)):
        again = pipeline.decide(settings, _run(run_id, v2), reported, emits=emits, emitted_by=lambda run_id: True)
        assert again["retrain"] is False and again["already_triggered"] == {"2013-08": "run-a"}
        assert again["max_psi"] == 0.0  # nothing triggers: the cloud's drift alert must not page for it
    assert len(sent) == 1, "the drift v2 was retrained for paged again"
    assert _recorded(settings) == [f"triggered-{v1}-{reported['contents'][1][:16]}.json"]


@pytest.mark.parametrize("case", ["a scheduled run's", "other content", "no lineage", "no holdout in its lineage",
                                  "its trigger emitted nothing", "no earlier trigger"])
def test_drift_of_a_champion_that_is_not_the_retrain_of_that_drift_still_retrains(
        registered: Registered, sent: list[Any], tmp_path: Path, case: str,
        register_tiny_version: Callable[[Settings, Path, int], str]) -> None:
    """Only the retrain that the month's trigger started is spared: a champion that held out other months (a scheduled
    run's three), another content of the month, or none it can tell (its lineage gone from the store, or one that
    records no holdout: a version registered by hand), is new drift, and so is one whose trigger's run started no
    retraining (Airflow holds no event of it), or a month no run triggered on."""
    from tenfold.registry.registry import LINEAGE_FILE
    from tenfold.storage import split_gs_uri
    from tenfold.workloads.flights.synthetic import publish_synthetic_features

    settings, champion = registered.settings, registered.v2
    registry = ModelRegistry(settings)
    if case == "a scheduled run's":
        champion = _trained(settings, tmp_path / "scheduled", "scheduled__v3", seed=3,
                            conf={"train_months": ["2013-05", "2013-05"], "holdout_months": ["2013-06", "2013-08"]})
    elif case == "other content":  # v2 held out the August published then; it was re-published since
        publish_synthetic_features(Lake.from_settings(settings), [Partition(2013, 8)], 60)
    elif case == "no lineage":
        _, name = split_gs_uri(registry.version_uri(champion))
        registry.bucket.blob(f"{name}/{LINEAGE_FILE}").delete()
        assert registry.get(champion).lineage is None
    elif case == "no holdout in its lineage":
        champion = register_tiny_version(settings, tmp_path / "by-hand", 4)
    reported = _drifted_august(settings)
    if case != "no earlier trigger":
        assert pipeline.decide(settings, _run("run-a", registered.v1), reported, emits=True)["retrain"] is True
    registry.promote(champion)
    decision = pipeline.decide(settings, _run("run-b", champion), reported, emits=True,
                               emitted_by=lambda run_id: case != "its trigger emitted nothing")
    assert decision["retrain"] is True and decision["months"] == ["2013-08"] and decision["already_triggered"] == {}
    assert sent[-1][0].startswith(f"drift: retraining {champion}")


def test_a_champion_the_registry_no_longer_holds_is_taken_as_new_drift_at_once(
        registered: Registered, sent: list[Any], caplog: pytest.LogCaptureFixture) -> None:
    """Whether the champion is the retrain of the month's drift is read from its lineage. A version the alias still
    names but the registry no longer holds (its VERSION.json deleted, as a damaged version's error advises) raises
    UnknownVersion: no outage, so a retry would meet it again. It is decided on this try as new drift, which never
    holds back a retrain, with a warning naming the version."""
    from tenfold.registry.registry import VERSION_FILE
    from tenfold.storage import split_gs_uri

    settings, v1, v2 = registered.settings, registered.v1, registered.v2
    reported = _drifted_august(settings)
    assert pipeline.decide(settings, _run("run-a", v1), reported, emits=True)["retrain"] is True
    registry = ModelRegistry(settings)
    registry.promote(v2)
    _, name = split_gs_uri(registry.version_uri(v2))
    registry.bucket.blob(f"{name}/{VERSION_FILE}").delete()
    assert registry.resolve(CHAMPION) == v2 and not registry.exists(v2)
    with caplog.at_level("WARNING", logger=pipeline.__name__):
        decision = pipeline.decide(settings, _run("run-b", v2), reported, emits=True, emitted_by=lambda run_id: True)
    assert decision["retrain"] is True and decision["months"] == ["2013-08"] and decision["already_triggered"] == {}
    assert len(sent) == 2 and sent[-1][0].startswith(f"drift: retraining {v2}")
    assert f"cannot read the lineage of {v2} (UnknownVersion: no version {v2} in " in caplog.text
    assert _recorded(settings) == sorted(f"triggered-{v}-{reported['contents'][1][:16]}.json" for v in (v1, v2))


def test_a_registry_outage_reading_the_champions_lineage_fails_the_try_but_the_last_try_still_retrains(
        registered: Registered, sent: list[Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """Whether the champion is the retrain of the month's drift is read from its lineage: a registry away fails a try
    before any alert (the next asks again); the last try decides as for new drift, which never holds back a retrain."""
    from google.api_core.exceptions import ServiceUnavailable

    settings, v1, v2 = registered.settings, registered.v1, registered.v2
    reported = _drifted_august(settings)
    pipeline.decide(settings, _run("run-a", v1), reported, emits=True)

    def away(version: str) -> Any:
        raise ServiceUnavailable("the registry's bucket is away")

    monkeypatch.setattr(pipeline, "ModelRegistry", lambda settings: type("R", (), {
        "resolve": staticmethod(lambda alias: v2), "get": staticmethod(away)})())
    with pytest.raises(ServiceUnavailable):
        pipeline.decide(settings, _run("run-b", v2), reported, emits=True)
    assert len(sent) == 1
    last = pipeline.decide(settings, _run("run-b", v2), reported, emits=True, last_try=True)
    assert last["retrain"] is True and len(sent) == 2 and sent[-1][0].startswith(f"drift: retraining {v2}")


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
        pipeline.decide(settings, _run("run-a", "v1"), REPORTED, emits=True)
    assert sent == [] and not list((tmp_path / "home").rglob("triggered-*.json"))
    last = pipeline.decide(settings, _run("run-a", "v1"), REPORTED, emits=True, last_try=True)
    assert last["retrain"] is True and len(sent) == 1 and sent[0][0].startswith("drift: retraining v1")
    with pytest.raises(ServiceUnavailable):  # a version the run conf named: nothing decided on a guess
        pipeline.decide(settings, {**_run("run-b", "v0"), "version_ref": "v0"}, REPORTED, emits=True,
                        last_try=True)
