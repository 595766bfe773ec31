"""The labelled set as training rows (tenfold.feedback.training): the training window's flights only, one row
per flight with its latest outcome, featurized by the server's online assembly, weighted, deterministic."""

from __future__ import annotations

import datetime as dt
import tempfile
import uuid
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from tenfold.config import Settings
from tenfold.data.lake import Lake, Partition
from tenfold.feedback.log import write_batch
from tenfold.feedback.schema import FEEDBACK_LOG, PREDICTIONS_LOG, feedback_row, prediction_row
from tenfold.feedback.training import WEIGHT_COLUMN, feedback_training_set, parquet_bytes, write_training_input
from tenfold.feedback.upsert import join
from tenfold.messaging.records import FeedbackRecord, PredictionRecord
from tenfold.workloads import get_workload
from tenfold.workloads.flights.contract import CONTRACT
from tenfold.workloads.flights.request import FlightRequest
from tenfold.workloads.flights.synthetic import publish_synthetic_lookups, synthetic_lookups, synthetic_requests

JAN, FEB, MAR = Partition(2032, 1), Partition(2032, 2), Partition(2032, 3)
SERVED = dt.datetime(2026, 11, 20, 9, 0, tzinfo=dt.UTC)  # served "now", long after the flights: as make demo replays


def land(settings: Settings, bodies: list[dict[str, Any]], outcomes: list[int], *,
         observed: list[dt.datetime | None] | None = None) -> list[str]:
    """Predictions of ``bodies`` served at SERVED and their outcomes, landed in the logs and joined."""
    lake = Lake.from_settings(settings)
    now = dt.datetime.now(dt.UTC)
    ids = [uuid.uuid4().hex for _ in bodies]
    preds = [prediction_row(PredictionRecord(prediction_id=i, model_version="v1", arm="stable", probability=0.3,
                                             request=b, served_at=SERVED)) for i, b in zip(ids, bodies, strict=True)]
    fbs = [feedback_row(FeedbackRecord(prediction_id=i, outcome=o, observed_at=(observed or [None] * len(ids))[k],
                                       received_at=SERVED + dt.timedelta(hours=1 + k)))
           for k, (i, o) in enumerate(zip(ids, outcomes, strict=True))]
    delivery = {"message_id": "m", "publish_time": now, "delivery_attempt": 1, "landed_at": now}
    part = Partition.from_date(SERVED)
    write_batch(lake, settings.storage.predictions_table, part,
                pa.Table.from_pylist([{**r, **delivery, "message_id": uuid.uuid4().hex} for r in preds], schema=PREDICTIONS_LOG))
    write_batch(lake, settings.storage.feedback_table, Partition.from_date(SERVED + dt.timedelta(hours=1)),
                pa.Table.from_pylist([{**r, **delivery, "message_id": uuid.uuid4().hex} for r in fbs], schema=FEEDBACK_LOG))
    join(settings)
    return ids


@pytest.fixture
def world(settings: Settings) -> dict[str, Any]:
    """Lookups of January-March 2032 published; 30 served flights of each month with outcomes, joined."""
    publish_synthetic_lookups(Lake.from_settings(settings), [JAN, FEB, MAR], prefix=settings.storage.lookups_table)
    bodies = {p: synthetic_requests(p, 30, seed=5) for p in (JAN, FEB, MAR)}
    everything = [b for p in (JAN, FEB, MAR) for b in bodies[p]]
    outcomes = [i % 2 for i in range(len(everything))]
    land(settings, everything, outcomes)
    return {"bodies": bodies, "outcomes": dict(zip((_key(b) for b in everything), outcomes, strict=True))}


def _key(body: dict[str, Any]) -> tuple[Any, ...]:
    r = FlightRequest.model_validate(body)
    return (r.sched_dep.date(), r.sched_dep.hour, r.carrier, r.flight, r.origin)


def _months(table: pa.Table) -> set[tuple[int, int]]:
    return set(zip(table["year"].to_pylist(), table["month"].to_pylist(), strict=True))


def test_only_the_training_windows_flights_become_rows_never_the_holdouts(settings: Settings, world: dict[str, Any]) -> None:
    got = feedback_training_set(settings, [JAN, FEB], weight=2.0, max_rows=10_000)
    assert _months(got.table) == {(2032, 1), (2032, 2)}  # March (the holdout) never, though served and labelled
    wanted = {_key(b) for p in (JAN, FEB) for b in world["bodies"][p]}
    assert got.rows == len(wanted) and got.summary["rows"] == got.rows
    assert got.summary["labelled_rows"] == 90
    assert got.summary["outside_window_or_unassemblable"] == {"sched_dep": 30}  # March's, refused by the window's lookups
    assert got.table.column_names == [*CONTRACT.online_columns, CONTRACT.label, WEIGHT_COLUMN]
    assert pc.all(pc.equal(got.table[WEIGHT_COLUMN], 2.0)).as_py()
    served = Partition.from_date(SERVED).label
    assert got.summary["labelled_partitions"][served]["rows"] == 90 and got.summary["labelled_partitions"][served]["data_dir"]
    only_feb = feedback_training_set(settings, [FEB], weight=1.0, max_rows=10_000)
    assert _months(only_feb.table) == {(2032, 2)}


def test_the_rows_are_the_servers_online_features_with_the_observed_outcome(settings: Settings, world: dict[str, Any]) -> None:
    got = feedback_training_set(settings, [JAN], weight=1.0, max_rows=10_000)
    requests = sorted((FlightRequest.model_validate(b) for b in world["bodies"][JAN]),
                      key=lambda r: (r.sched_dep, r.carrier, r.flight, r.origin))
    online = get_workload(settings).online_features({JAN.label: synthetic_lookups(JAN)})
    expected = online.assemble(requests).sort_by([(c, "ascending") for c in CONTRACT.key_columns])
    assert got.table.select(list(CONTRACT.online_columns)).equals(expected)
    labels = dict(zip(zip(got.table["day"].to_pylist(), got.table["sched_dep_hour"].to_pylist(), got.table["carrier"].to_pylist(),
                          got.table["flight"].to_pylist(), got.table["origin"].to_pylist(), strict=True),
                      got.table[CONTRACT.label].to_pylist(), strict=True))
    for key, outcome in world["outcomes"].items():
        if (key[0].year, key[0].month) == (2032, 1):
            assert labels[(key[0].day, *key[1:])] == outcome


def test_one_row_per_flight_the_latest_observation_wins_and_max_rows_keeps_the_latest(settings: Settings) -> None:
    publish_synthetic_lookups(Lake.from_settings(settings), [JAN], prefix=settings.storage.lookups_table)
    a, b = synthetic_requests(JAN, 2, seed=9)
    t = dt.datetime(2032, 1, 28, tzinfo=dt.UTC)
    # The same flight asked twice (other user keys), observed first as on time and later as delayed.
    land(settings, [a, {**a, "user_key": "another"}, b, {"carrier": "??"}],
         [0, 1, 0, 1], observed=[t, t + dt.timedelta(hours=2), t - dt.timedelta(days=1), t])
    got = feedback_training_set(settings, [JAN], weight=1.0, max_rows=10_000)
    assert got.summary["duplicates"] == 1 and got.summary["invalid_requests"] == 1 and got.rows == 2
    by_flight = dict(zip(got.table["flight"].to_pylist(), got.table[CONTRACT.label].to_pylist(), strict=True))
    assert by_flight[a["flight"]] == 1  # the later observation
    capped = feedback_training_set(settings, [JAN], weight=1.0, max_rows=1)
    assert capped.rows == 1 and capped.summary["capped"] == 1 and capped.table["flight"].to_pylist() == [a["flight"]]


def test_no_feedback_or_no_lookups_is_an_empty_set_not_an_error(settings: Settings) -> None:
    none = feedback_training_set(settings, [JAN], weight=1.0, max_rows=10)
    assert none.rows == 0 and none.summary["note"] == "no labelled feedback yet"
    land(settings, synthetic_requests(JAN, 3), [1, 0, 1])  # labelled, but January's lookups never published
    lacking = feedback_training_set(settings, [JAN], weight=1.0, max_rows=10)
    assert lacking.rows == 0 and lacking.summary["labelled_rows"] == 3 and "lookup tables" in lacking.summary["note"]


def test_the_training_input_is_content_addressed_and_deterministic(settings: Settings, world: dict[str, Any], tmp_path: Any) -> None:
    from tenfold.training.data import FEEDBACK_WEIGHT_COLUMN, read_feedback

    assert WEIGHT_COLUMN == FEEDBACK_WEIGHT_COLUMN  # the writer's and the worker's names of one column
    first = feedback_training_set(settings, [JAN, FEB], weight=1.0, max_rows=10_000)
    again = feedback_training_set(settings, [JAN, FEB], weight=1.0, max_rows=10_000)
    assert parquet_bytes(first.table) == parquet_bytes(again.table)
    uri, sha = write_training_input(first.table, str(tmp_path))
    assert write_training_input(again.table, str(tmp_path)) == (uri, sha) and len(list(tmp_path.iterdir())) == 1
    assert read_feedback(uri, sha, CONTRACT).equals(first.table)
    with pytest.raises(Exception, match="replaced after the plan"):
        read_feedback(uri, "0" * 64, CONTRACT)


def test_in_the_cloud_the_input_is_staged_create_only_beside_the_config(settings: Settings, world: dict[str, Any],
                                                                        storage_client: Any) -> None:
    from tenfold.config import get_settings
    from tenfold.training.fleet import run_folder

    dev = get_settings("dev")
    chosen = feedback_training_set(settings, [JAN], weight=1.0, max_rows=10_000)
    folder = f"gs://{dev.storage.artifacts_bucket}/{run_folder(dev, 'scheduled-2032-03-01-feedback')}/out"
    uri, sha = write_training_input(chosen.table, folder, storage_client=storage_client)
    assert uri.startswith(folder + "/feedback-") and uri.endswith(".parquet")
    blob = storage_client.bucket(dev.storage.artifacts_bucket).get_blob(uri.split("/", 3)[3])
    assert blob is not None and blob.download_as_bytes() == parquet_bytes(chosen.table)
    generation = blob.generation
    assert write_training_input(chosen.table, folder, storage_client=storage_client) == (uri, sha)  # a retried plan
    assert storage_client.bucket(dev.storage.artifacts_bucket).get_blob(uri.split("/", 3)[3]).generation == generation


def test_train_model_plan_writes_the_windows_feedback_as_the_runs_extra_input(settings: Settings, world: dict[str, Any]) -> None:
    from pathlib import Path

    from tenfold.pipelines.common import PipelineError
    from tenfold.pipelines.train_model import plan
    from tenfold.training.config import TrainConfig
    from tenfold.workloads.flights.synthetic import publish_synthetic_features

    publish_synthetic_features(Lake.from_settings(settings), [JAN, FEB, MAR], 60)
    conf = {"train_months": [JAN.label, FEB.label], "holdout_months": [MAR.label, MAR.label]}
    run = plan(settings, "manual__with_feedback", {**conf, "feedback_weight": 2.5})
    cfg = TrainConfig.from_dict(run.train_config)
    assert run.feedback["rows"] == 60 and cfg.feedback_weight == 2.5 and cfg.feedback_sha256 == run.feedback["sha256"]
    assert cfg.feedback_uri is not None and Path(cfg.feedback_uri).parent == Path(run.work_dir) / "feedback"
    again = plan(settings, "manual__with_feedback", {**conf, "feedback_weight": 2.5})  # a retried plan task
    assert again == run
    off = plan(settings, "manual__without", {**conf, "feedback_weight": 0})
    assert off.feedback == {} and TrainConfig.from_dict(off.train_config).feedback_uri is None
    for bad in ("1", -1, 101, True):
        with pytest.raises(PipelineError, match="feedback_weight"):
            plan(settings, "manual__bad", {**conf, "feedback_weight": bad})


def _publish_features(settings: Settings, part: Partition, seed: int, **extra: Any) -> None:
    """Publish ``part``'s features as build_features does: after its lookups, its manifest naming their folders."""
    from tenfold.features.online import LOOKUPS_KEY
    from tenfold.workloads import lookup_table
    from tenfold.workloads.flights.synthetic import synthetic_features

    lake = Lake.from_settings(settings)
    built = {n: lake.read_manifest(lookup_table(settings.storage.lookups_table, n), part).data_dir
             for n in CONTRACT.lookup_tables}
    with tempfile.TemporaryDirectory() as tmp:
        pq.write_table(synthetic_features(part, 60, seed), Path(tmp) / "part-0.parquet")
        lake.publish(settings.storage.features_table, part, tmp, run_id=f"build-{seed}",
                     extra=CONTRACT.manifest_extra(**{LOOKUPS_KEY: built}, **extra))


def test_a_plan_that_reads_a_months_lookups_between_their_publish_and_the_features_is_left_to_its_retries(
        settings: Settings, world: dict[str, Any]) -> None:
    """build_features publishes a month's lookups first and its features after. A train_model plan that read the
    month in between met lookups of another build than the features, and failed at once, without its retries (a
    drift-started run's event spent), telling people to rebuild a month whose build was still publishing. Lookups
    of another feature definition are still refused at once."""
    from airflow.sdk.exceptions import AirflowFailException

    from tenfold.feedback.training import LookupsInFlight
    from tenfold.pipelines.common import PipelineError, run_step
    from tenfold.pipelines.train_model import plan
    from tenfold.workloads import VERSION_KEY, lookup_table

    lake = Lake.from_settings(settings)
    for part in (JAN, FEB, MAR):
        _publish_features(settings, part, seed=0)
    conf = {"train_months": [JAN.label, FEB.label], "holdout_months": [MAR.label, MAR.label], "feedback_weight": 1}
    assert run_step(plan, settings, "asset_triggered__before", conf).feedback["rows"] == 60

    publish_synthetic_lookups(lake, [JAN], seed=1, prefix=settings.storage.lookups_table)  # a rebuild, halfway
    with pytest.raises(PipelineError, match=r"2032-01 is of another build .* its publish did not finish") as raised:
        run_step(plan, settings, "asset_triggered__drift", conf)
    # A PipelineError: run by hand (python -m tenfold.pipelines.train_model, run_main) a refusal in one line, not
    # "a fault in the code"; retryable, so Airflow retries it.
    assert raised.value.retryable and isinstance(raised.value.__cause__, LookupsInFlight)
    _publish_features(settings, JAN, seed=1)  # the rebuild's features: its publish finished, and the retry plans
    assert run_step(plan, settings, "asset_triggered__drift", conf).feedback["rows"] == 60

    # February rebuilt whole by an older feature definition: every try reads it the same way.
    name = CONTRACT.lookup_tables[0]
    with tempfile.TemporaryDirectory() as tmp:
        pq.write_table(synthetic_lookups(FEB, seed=2)[name], Path(tmp) / "part-0.parquet")
        lake.publish(lookup_table(settings.storage.lookups_table, name), FEB, tmp, run_id="old",
                     extra={VERSION_KEY: "0-older"})
    _publish_features(settings, FEB, seed=2)
    with pytest.raises(AirflowFailException, match=r"2032-02 was built with features version 0-older.*rebuild the month"):
        run_step(plan, settings, "asset_triggered__stale", conf)


def test_the_lineage_names_the_labelled_version_the_rows_were_read_from(settings: Settings, world: dict[str, Any],
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """The running sink re-published the month between the lineage's read of the manifests and the rows' read: the
    model's lineage named a version (a data folder since deleted) it never trained on."""
    from tenfold.feedback import training

    real = training.labelled_rows
    republished: list[bool] = []

    def rows_after_a_republish(*args: Any, **kwargs: Any) -> Any:
        if not republished:  # the sink lands more feedback and joins, once
            republished.append(True)
            land(settings, synthetic_requests(JAN, 3, seed=9), [1, 0, 1])
        return real(*args, **kwargs)

    monkeypatch.setattr(training, "labelled_rows", rows_after_a_republish)
    chosen = feedback_training_set(settings, [JAN, FEB, MAR], weight=1.0, max_rows=10_000)
    lake = Lake.from_settings(settings)
    table = settings.storage.labelled_table
    for label, named in chosen.summary["labelled_partitions"].items():
        assert named["data_dir"] == lake.read_manifest(table, Partition.parse(label)).data_dir
    assert chosen.summary["labelled_rows"] == sum(n["labelled"] for n in chosen.summary["labelled_partitions"].values())


def test_a_plan_meeting_what_a_retry_mends_is_left_to_its_retries(settings: Settings, world: dict[str, Any],
                                                                  monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    """train_model's plan failed at once, without its retries, on every lake or feedback error, a re-publish by the
    running sink at each read included (its message said "retry"), or a download damaged in transit (its advice was
    to rebuild the join). A manifest that fails its checks is still refused at once, saying what to do."""
    from airflow.sdk.exceptions import AirflowFailException

    from tenfold.data.lake import DamagedInTransit
    from tenfold.feedback import training
    from tenfold.feedback.training import FeedbackRepublished
    from tenfold.pipelines import train_model
    from tenfold.pipelines.common import run_step

    real, seeds = training.labelled_rows, iter(range(100, 200))

    def the_sink_joins_at_every_read(*args: Any, **kwargs: Any) -> Any:
        land(settings, synthetic_requests(JAN, 1, seed=next(seeds)), [1])
        return real(*args, **kwargs)

    monkeypatch.setattr(training, "labelled_rows", the_sink_joins_at_every_read)
    with pytest.raises(train_model.FeedbackInFlight, match="re-published during each of 3 reads") as raised:
        run_step(train_model._plan_feedback, settings, "k", tmp_path, [JAN], 1.0)
    assert raised.value.retryable and isinstance(raised.value.__cause__, FeedbackRepublished)
    monkeypatch.setattr(training, "labelled_rows", real)

    # A download damaged on its way from GCS (its stored CRC32C matches the manifest; this lake is file://, so the
    # lake's own error, as it words it, stands in for it): a retry reads it again.
    damaged = DamagedInTransit(f"{settings.storage.labelled_table} partition 2026-11: the download of gs://lake/x/"
                               "part-00000.parquet was damaged in transit (its stored CRC32C matches the manifest); "
                               "retry the read")

    def read_damaged(*args: Any, **kwargs: Any) -> Any:
        raise damaged

    monkeypatch.setattr(training, "feedback_training_set", read_damaged)
    with pytest.raises(DamagedInTransit):
        run_step(train_model._plan_feedback, settings, "k", tmp_path, [JAN], 1.0)
    monkeypatch.undo()

    # A labelled file changed after it was published (a real truncation): read the same way again, refused at once.
    lake = Lake.from_settings(settings)
    (month,) = lake.published_partitions(settings.storage.labelled_table)
    (path,) = lake.files(settings.storage.labelled_table, month)
    Path(path).write_bytes(Path(path).read_bytes()[:200])
    with pytest.raises(AirflowFailException, match=r"labelled table cannot be read \(.*\): rebuild it"):
        run_step(train_model._plan_feedback, settings, "k", tmp_path, [JAN], 1.0)


@pytest.fixture
def fresh_settings() -> Any:
    """get_settings' cache cleared before and after: the test's TENFOLD_* variables are read, and not kept."""
    from tenfold.config import get_settings

    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


@pytest.mark.parametrize(("variable", "value", "said"), [
    ("TENFOLD_LOCAL__AIRFLOW_PORT", "abc",
     "error: invalid settings: LocalSettings.airflow_port: Input should be a valid integer"),
    ("TENFOLD_ENV", "bogus", "error: TENFOLD_ENV='bogus' is not an environment: choose one of local, dev, prod"),
])
def test_the_command_given_bad_settings_says_so_in_one_line_and_exits_2(
        fresh_settings: None, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        variable: str, value: str, said: str) -> None:
    """`python -m tenfold.feedback.training` (docs/feedback.md) read the settings outside its error handling: a
    TENFOLD_* value that does not parse ended in pydantic's traceback (an unknown TENFOLD_ENV in a bare ValueError's),
    where every other entry point says one line and exits 2."""
    from tenfold.feedback import training

    monkeypatch.setenv(variable, value)
    assert training.main(["2013-01", "2013-06"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(said) and err.count("\n") == 1, err
    assert "Traceback" not in err and value in err


def test_the_command_prints_what_a_training_run_would_take(fresh_settings: None, settings: Settings,
                                                           world: dict[str, Any], monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    """The command on the settings of this process's environment: the summary of the window's feedback rows."""
    import json

    from tenfold.feedback import training

    monkeypatch.setenv("TENFOLD_HOME", str(settings.local.home))
    monkeypatch.delenv("TENFOLD_ENV", raising=False)
    assert training.main(["2032-01", "2032-02"]) == 0
    printed = json.loads(capsys.readouterr().out)
    expected = feedback_training_set(settings, [JAN, FEB], weight=settings.training.feedback_weight,
                                     max_rows=settings.training.feedback_max_rows)
    assert printed["rows"] == expected.summary["rows"] > 0, printed


def test_a_lake_file_that_cannot_be_read_ends_the_command_in_one_line(fresh_settings: None, settings: Settings,
                                                                       world: dict[str, Any],
                                                                       monkeypatch: pytest.MonkeyPatch,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    """What the system refuses (here a labelled data file that is a folder: pyarrow's OSError) ended in a traceback;
    it is tenfold.outages' line naming the path and what to do, exit 1."""
    from tenfold.feedback import training

    files = sorted((settings.local.home / "lake" / settings.storage.labelled_table).rglob("*.parquet"))
    assert files
    for file in files:
        file.unlink()
        file.mkdir()
    monkeypatch.setenv("TENFOLD_HOME", str(settings.local.home))
    monkeypatch.delenv("TENFOLD_ENV", raising=False)
    monkeypatch.delenv("TENFOLD_DEBUG", raising=False)
    assert training.main(["2032-01", "2032-02"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: `python -m tenfold.feedback.training` cannot go on: ") and err.count("\n") == 1, err
    assert any(str(file) in err for file in files) and "Traceback" not in err
