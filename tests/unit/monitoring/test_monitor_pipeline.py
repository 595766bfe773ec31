"""The monitor_drift pipeline's steps against the real registry on the emulator, without Airflow.

What a run does when it cannot measure (no model yet, a version registered before reference profiles) and
how it refuses bad input; measuring itself is in test_drift.py and, through Airflow, tests/integration.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from tenfold.config import Settings
from tenfold.data.lake import Lake, month_range
from tenfold.model_files import REFERENCE_PROFILE_FILE
from tenfold.monitoring.drift import read_report
from tenfold.monitoring.profile import PROFILE_FORMAT, ReferenceProfile, ensure_profile
from tenfold.pipelines import monitor_drift as pipeline
from tenfold.registry import ModelRegistry
from tenfold.registry.lineage import Lineage, partition_refs

MONTHS = month_range("2013-01", "2013-03")


@pytest.fixture
def drift_settings(make_settings: Callable[..., Settings], local_settings: Settings) -> Settings:
    from tenfold.workloads.flights.synthetic import publish_synthetic_features

    s = make_settings(on=local_settings)
    publish_synthetic_features(Lake.from_settings(s), MONTHS, 400)
    return s


def save_a_model(settings: Settings, directory: Path) -> None:
    """A small flights model fit on MONTHS[:2], saved in ``directory`` (no profile)."""
    import torch

    from tenfold.model import Preprocessor, save_model
    from tenfold.workloads.flights import WORKLOAD
    from tenfold.workloads.flights.model import FlightDelayModel, ModelConfig

    lake, table = Lake.from_settings(settings), settings.storage.features_table
    pre = Preprocessor.fit(lake.read_table(table, MONTHS[:2]), WORKLOAD.contract)
    config = ModelConfig(embedding_dim=4, hidden=(8,), dropout=0.0)
    torch.manual_seed(1)
    save_model(directory, FlightDelayModel(config, list(pre.vocab_sizes.values()), pre.num_inputs), config, pre,
               workload=WORKLOAD.name)


def register(settings: Settings, directory: Path, *, with_profile: bool) -> str:
    save_a_model(settings, directory)
    lake, table = Lake.from_settings(settings), settings.storage.features_table
    if with_profile:
        ensure_profile(directory, lake, table, MONTHS[:2], settings.monitoring.drift)
    lineage = Lineage(feature_table=table, train_partitions=tuple(partition_refs(lake, table, MONTHS[:2])),
                      holdout_partitions=(), training_config={}, run_id="monitor-tests")
    return ModelRegistry(settings).register(directory, lineage, metrics={"auc": 0.5, "log_loss": 0.69}).version


def test_no_champion_reports_no_model_and_does_not_retrain(drift_settings: Settings) -> None:
    decision = pipeline.monitor(drift_settings, "2013-03")
    assert decision["retrain"] is False and decision["decisions"] == {"2013-03": "no_model"}
    assert "the registry has no champion yet" in read_report(drift_settings, "2013-03").reason


def test_a_version_without_a_profile_says_so_and_measures_nothing(drift_settings: Settings, tmp_path: Path) -> None:
    version = register(drift_settings, tmp_path / "old", with_profile=False)
    decision = pipeline.monitor(drift_settings, "2013-03", version)
    report = read_report(drift_settings, "2013-03")
    assert decision["retrain"] is False and report.decision == "no_profile" and report.features == ()
    assert f"version {version} was registered before reference profiles" in report.reason


def test_a_version_with_a_profile_is_measured_from_its_files(drift_settings: Settings, tmp_path: Path) -> None:
    version = register(drift_settings, tmp_path / "new", with_profile=True)
    stored = {f.path for f in ModelRegistry(drift_settings).get(version).files}
    assert REFERENCE_PROFILE_FILE in stored, "the profile is one of the version's hash-verified files"
    decision = pipeline.monitor(drift_settings, "2013-03", version)
    report = read_report(drift_settings, "2013-03")
    assert report.version == version and report.rows == 400 and decision["retrain"] is False
    from tenfold.workloads import get_workload

    assert {f.name for f in report.features} == {*get_workload("flights").contract.feature_columns, "prediction"}


@pytest.mark.parametrize(("conf", "message"), [
    ({"month": "2013-13"}, "give a month as YYYY-MM"),
    ({"months": "2013-03"}, "unknown run conf keys ['months']"),
    ({"month": "2014-05"}, "not published"),
    ({"month": "2013-03", "version": "nosuchalias"}, "run conf version 'nosuchalias'"),
    # Given empty (a script's unset variable) or not a string, it measured the champion without a word.
    ({"month": "2013-03", "version": ""}, "run conf version='': give a registered version id or an alias"),
    ({"month": "2013-03", "version": 0}, "run conf version=0: give a registered version id or an alias"),
])
def test_plan_refuses_bad_input_naming_it(drift_settings: Settings, conf: dict[str, str], message: str) -> None:
    with pytest.raises(pipeline.PipelineError, match=message.replace("[", r"\[").replace("]", r"\]")):
        pipeline.plan(drift_settings, "manual__x", conf)


def test_plan_takes_the_months_of_the_triggering_events_else_the_newest(drift_settings: Settings,
                                                                       caplog: pytest.LogCaptureFixture) -> None:
    # The first run (no drift report stored) receives every earlier features event: it measures the newest month and
    # names the backlog with the run conf that measures each month, never measuring a whole history in one task.
    with caplog.at_level("WARNING", logger=pipeline.__name__):
        first = pipeline.plan(drift_settings, "asset__0", {}, ["2013-03", "2013-01", "2013-02", "2013-03"])
    assert first.months == ("2013-03",)
    for month in ("2013-01", "2013-02"):
        assert (f"not measuring {month}: no drift report is stored yet, so this is a first run's backlog: trigger "
                f'monitor_drift with the run conf {{"month": "{month}"}}') in caplog.text
    pipeline.monitor(drift_settings, "2013-03")  # a report stored: later runs measure every month their events name
    assert pipeline.plan(drift_settings, "asset__1", {}, ["2013-02", "2013-01", "2013-02"]).months == ("2013-01", "2013-02")
    assert pipeline.plan(drift_settings, "manual__1", {}).months == ("2013-03",)
    assert json.loads(json.dumps(pipeline.plan(drift_settings, "manual__1", {}).to_xcom()))["version"] is None


@pytest.mark.parametrize(("body", "message"), [
    ({"format": 2, "rows": 10, "months": ["2013-01"]}, r"is not a readable reference profile \(KeyError: 'features'\)"),
    ({"format": PROFILE_FORMAT + 1}, rf"reference profile format {PROFILE_FORMAT + 1} is not one of .*upgrade tenfold"),
])
def test_a_profile_that_cannot_be_read_fails_the_run_naming_the_version_and_what_to_do(
    drift_settings: Settings, tmp_path: Path, body: dict[str, object], message: str
) -> None:
    # Stored as the version's own file (its hash matches): every retry would download the same bytes.
    directory = tmp_path / "broken"
    register(drift_settings, directory, with_profile=True)
    (directory / REFERENCE_PROFILE_FILE).write_text(json.dumps(body))
    version = register(drift_settings, directory, with_profile=False)
    with pytest.raises(pipeline.PipelineError, match=f"cannot monitor against version {version}: .*{message}"):
        pipeline.monitor(drift_settings, "2013-03", version)


def test_a_month_built_by_other_feature_definitions_fails_the_run_saying_to_rebuild_it(
    drift_settings: Settings, tmp_path: Path
) -> None:
    import pyarrow.parquet as pq

    from tenfold.data.lake import Partition
    from tenfold.workloads import VERSION_KEY
    from tenfold.workloads.flights import WORKLOAD
    from tenfold.workloads.flights.synthetic import synthetic_features

    version = register(drift_settings, tmp_path / "new", with_profile=True)
    month, staged = Partition(2013, 3), tmp_path / "staged"
    staged.mkdir()
    pq.write_table(synthetic_features(month, 400), staged / "part-00000.parquet")
    Lake.from_settings(drift_settings).publish(drift_settings.storage.features_table, month, str(staged), run_id="old",
                                               extra={VERSION_KEY: WORKLOAD.contract.version - 1})
    with pytest.raises(pipeline.PipelineError, match=r"2013-03: .*rebuild"):
        pipeline.monitor(drift_settings, "2013-03", version)


def test_the_profile_records_the_feature_definitions_and_a_profile_of_others_fails_the_run(
    drift_settings: Settings, tmp_path: Path
) -> None:
    """After a features version bump, the champion's profile (built from the old definitions) was compared with a
    month of the new ones: a column whose meaning changed showed as drift and retrained. A profile written before
    the version was recorded has none, and is measured as before."""
    from tenfold.workloads import VERSION_KEY
    from tenfold.workloads.flights import WORKLOAD

    directory = tmp_path / "model"
    register(drift_settings, directory, with_profile=True)
    body = json.loads((directory / REFERENCE_PROFILE_FILE).read_bytes())
    assert body["extra"][VERSION_KEY] == WORKLOAD.contract.version
    body["extra"][VERSION_KEY] = WORKLOAD.contract.version - 1  # stored as the version's own file, hash and all
    (directory / REFERENCE_PROFILE_FILE).write_text(json.dumps(body))
    version = register(drift_settings, directory, with_profile=False)
    with pytest.raises(pipeline.PipelineError, match=rf"2013-03: version {version} was trained on features version "
                                                     rf"{WORKLOAD.contract.version - 1} .*retrain"):
        pipeline.monitor(drift_settings, "2013-03", version)
    del body["extra"][VERSION_KEY]  # a profile written before the version was recorded
    (directory / REFERENCE_PROFILE_FILE).write_text(json.dumps(body))
    version = register(drift_settings, directory, with_profile=False)
    pipeline.monitor(drift_settings, "2013-03", version)
    report = read_report(drift_settings, "2013-03")
    assert report.version == version and len(report.features) == len(WORKLOAD.contract.feature_columns) + 1


def test_a_month_withdrawn_since_its_event_is_left_with_a_warning_and_the_others_are_measured(
        drift_settings: Settings, caplog: pytest.LogCaptureFixture) -> None:
    """Events name 2013-02 and 2013-03, and 2013-02 failed a re-validation since. The run failed naming 02, and
    03's event was spent with it: 03's drift, and any retrain it called for, was never measured."""
    from tenfold.data.lake import Partition

    pipeline.monitor(drift_settings, "2013-01")  # a report stored: not a first run's backlog
    lake, table = Lake.from_settings(drift_settings), drift_settings.storage.features_table
    lake.withdraw(table, Partition(2013, 2), "revalidation", {"why": "failed its suite"})
    with caplog.at_level("WARNING", logger=pipeline.__name__):
        planned = pipeline.plan(drift_settings, "asset__2", {}, ["2013-02", "2013-03"])
    assert planned.months == ("2013-03",)
    assert ("not measuring 2013-02: its features partition was withdrawn since its event" in caplog.text
            and 'trigger monitor_drift with the run conf {"month": "2013-02"}' in caplog.text)
    lake.withdraw(table, Partition(2013, 3), "revalidation", {"why": "failed its suite"})
    with pytest.raises(pipeline.PipelineError, match=r"\['2013-02', '2013-03'\] are not published"):
        pipeline.plan(drift_settings, "asset__3", {}, ["2013-02", "2013-03"])  # nothing left to measure


def test_a_month_withdrawn_after_plan_fails_measure_without_retries_saying_what_to_do(
        drift_settings: Settings, tmp_path: Path) -> None:
    """A lake error is no PipelineError: every Airflow retry met the same missing manifest, then a raw message."""
    from tenfold.data.lake import Partition

    version = register(drift_settings, tmp_path / "new", with_profile=True)
    planned = pipeline.plan(drift_settings, "manual__w", {"month": "2013-03", "version": version})
    Lake.from_settings(drift_settings).withdraw(drift_settings.storage.features_table, Partition(2013, 3), "w", {})
    with pytest.raises(pipeline.PipelineError, match=r"2013-03 cannot be read .*rebuild it with build_features, then "
                                                     r'trigger monitor_drift with the run conf \{"month": "2013-03"\}'):
        pipeline.measure(drift_settings, planned)


def test_a_cleared_first_run_measures_the_months_it_chose_not_the_backlog_it_left(drift_settings: Settings) -> None:
    """A first run measured only the newest month and wrote its report, then failed in decide; cleared, its plan found
    that report, no longer took the run for a first one, and measured (alerted, retrained on) the whole backlog."""
    first = pipeline.plan(drift_settings, "asset__first", {}, ["2013-01", "2013-02", "2013-03"])
    assert first.months == ("2013-03",)
    pipeline.monitor(drift_settings, "2013-03")  # its report is written; then the run is cleared
    again = pipeline.plan(drift_settings, "asset__first", {}, ["2013-01", "2013-02", "2013-03"])
    assert again.months == ("2013-03",)
    other = pipeline.plan(drift_settings, "asset__next", {}, ["2013-01", "2013-02"])  # another run: its own choice
    assert other.months == ("2013-01", "2013-02")


def test_a_version_of_other_feature_definitions_fails_the_run_without_retries(
        drift_settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A champion trained before a features version bump cannot be loaded (its meta.json names the old version): that
    escaped as a raw ModelLoadError, which Airflow retried and the CLI called a fault in the code."""
    import dataclasses

    from tenfold import workloads
    from tenfold.workloads.flights import WORKLOAD

    version = register(drift_settings, tmp_path / "model", with_profile=True)
    bumped = dataclasses.replace(WORKLOAD, contract=dataclasses.replace(WORKLOAD.contract,
                                                                        version=WORKLOAD.contract.version + 1))
    monkeypatch.setitem(workloads._LOADED, WORKLOAD.name, bumped)
    with pytest.raises(pipeline.PipelineError, match=rf"cannot monitor against version {version}: .*learnt from "
                                                     rf"version {WORKLOAD.contract.version} "):
        pipeline.monitor(drift_settings, "2013-03", version)


def test_a_month_withdrawn_after_plan_is_left_with_a_warning_and_the_others_are_measured(
        drift_settings: Settings, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Events name 2013-02 and 2013-03, and 2013-02 is withdrawn between plan and measure (a file found corrupt): the
    run failed naming 2013-02 alone, and 2013-03's event was spent with it, its drift never measured."""
    from tenfold.data.lake import Partition

    version = register(drift_settings, tmp_path / "new", with_profile=True)
    pipeline.monitor(drift_settings, "2013-01", version)  # a report stored: not a first run's backlog
    planned = pipeline.plan(drift_settings, "asset__w", {"version": version}, ["2013-02", "2013-03"])
    assert planned.months == ("2013-02", "2013-03")
    Lake.from_settings(drift_settings).withdraw(drift_settings.storage.features_table, Partition(2013, 2), "w", {})
    with caplog.at_level("WARNING", logger=pipeline.__name__):
        measured = pipeline.measure(drift_settings, planned)
    assert [r["month"] for r in measured.reports] == ["2013-03"] and len(measured.contents) == 1
    assert ("not measuring " in caplog.text and "2013-02 cannot be read" in caplog.text
            and 'trigger monitor_drift with the run conf {"month": "2013-02"}' in caplog.text)


def test_a_reference_profile_of_a_window_re_published_since_training_is_refused(
        drift_settings: Settings, tmp_path: Path) -> None:
    """register checks the training window's content, then reads it again for the profile: a month re-published in
    between was profiled as the model's reference, though the model never saw it and its lineage does not name it."""
    from tenfold.training.data import RepublishedFeaturesError
    from tenfold.workloads.flights.synthetic import publish_synthetic_features

    lake, table = Lake.from_settings(drift_settings), drift_settings.storage.features_table
    save_a_model(drift_settings, tmp_path)
    trained_on = lake.content_digest(table, MONTHS[:2])
    publish_synthetic_features(lake, MONTHS[1:2], 399)  # a re-publish with other content
    with pytest.raises(RepublishedFeaturesError):
        ensure_profile(tmp_path, lake, table, MONTHS[:2], drift_settings.monitoring.drift, digest=trained_on)
    assert ReferenceProfile.load(tmp_path) is None
    ensure_profile(tmp_path, lake, table, MONTHS[:2], drift_settings.monitoring.drift,
                   digest=lake.content_digest(table, MONTHS[:2]))
    assert ReferenceProfile.load(tmp_path) is not None


def test_a_month_re_published_while_measured_says_the_retry_measures_the_new_content(
        drift_settings: Settings, tmp_path: Path) -> None:
    """The refusal of a month whose content changed after measure pinned it told the operator to trigger train_model
    again (the read is training's), then to trigger monitor_drift again; the task's own retry measures the new one."""
    from tenfold.model import load_model
    from tenfold.monitoring.drift import measure_partition
    from tenfold.training.data import RepublishedFeaturesError
    from tenfold.workloads.flights.synthetic import publish_synthetic_features

    lake, table, policy = Lake.from_settings(drift_settings), drift_settings.storage.features_table, \
        drift_settings.monitoring.drift
    save_a_model(drift_settings, tmp_path)
    ensure_profile(tmp_path, lake, table, MONTHS[:2], policy)
    profile = ReferenceProfile.load(tmp_path)
    assert profile is not None
    planned = lake.content_digest(table, MONTHS[2:])
    publish_synthetic_features(lake, MONTHS[2:], 399)  # re-published with other content after the plan
    with pytest.raises(RepublishedFeaturesError) as caught:
        measure_partition(load_model(tmp_path), profile, lake, table, MONTHS[2].label, None, policy, digest=planned)
    # measure pins the content when it reads the manifest, on every try: Airflow's retry measures the new content,
    # so the refusal says so (it sent the operator to trigger a run the retry made needless, and said "its plan pinned")
    assert str(caught.value).endswith("were re-published since this measurement read its manifest: they no longer hold "
                                      "the data it pinned; the task's retry measures the new content (nothing to do)")
    from tenfold.pipelines.monitor_drift import policy as rules

    again = measure_partition(load_model(tmp_path), profile, lake, table, MONTHS[2].label, None, rules(drift_settings),
                              digest=lake.content_digest(table, MONTHS[2:3]))
    assert again.month == MONTHS[2].label
