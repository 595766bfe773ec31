"""A cleared batch_inference run that plans another model (champion moved) or other features (re-published) must
not take its first plan's results as its own: its requests and results are keyed by what they score with."""

from __future__ import annotations

import io
import json
import re
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tenfold.config import Settings
from tenfold.data.lake import Lake, Partition
from tenfold.inference.requests import plan_batches
from tenfold.inference.runs import mark_replayed, partition_rows
from tenfold.inference.scoring import registered_meta as REAL_REGISTERED_META
from tenfold.inference.store import RunStore
from tenfold.pipelines import batch_inference as pipeline
from tenfold.workloads.flights.synthetic import publish_synthetic_features

RUN_ID = "asset_triggered__2026-01-05T00:00:00+00:00"
PART = Partition(2013, 6)


@pytest.fixture(autouse=True)
def _models_trained_on_these_features(monkeypatch: pytest.MonkeyPatch) -> None:
    """These tests stand in made-up version ids for ``resolve``, which no registry holds: each learnt from the
    code's feature definitions. The tests of the check itself put the real reader back and register versions."""
    import tenfold.inference.scoring as scoring
    from tenfold.model_files import META_VERSION
    from tenfold.workloads import VERSION_KEY
    from tenfold.workloads.flights import WORKLOAD

    monkeypatch.setattr(scoring, "registered_meta", lambda settings, version: {
        "version": META_VERSION, "workload": "flights", VERSION_KEY: WORKLOAD.contract.version})


def _score(settings: Settings, run: pipeline.InferenceRun, *, dead: int = 0) -> int:
    """What a worker does per request (tenfold.inference.worker): skip one whose result exists, else score it;
    the first ``dead`` requests are dead-lettered instead (as drain_dead_letters records them). Returns how many
    it scored."""
    store = RunStore.of(settings, run.run_key)
    contract = pipeline._contract(settings)
    rows = partition_rows(Lake.from_settings(settings), settings.storage.features_table, run.partition, contract)
    scored = 0
    for i, req in enumerate(plan_batches(rows, run_key=run.run_key, partition=run.month,
                                         model_version=run.model_version, rows_per_message=run.rows_per_message)):
        if store.has_result(req.request_id):
            continue
        if i < dead:
            store.put_dead_letter(req.request_id, {"request_id": req.request_id, "rows": req.rows.num_rows,
                                                   "replayed": False, "replays": []})
            continue
        keys = req.rows.select(list(contract.key_columns))
        out = keys.append_column("probability", pa.array([0.25] * keys.num_rows, pa.float64())).append_column(
            "model_version", pa.array([req.model_version] * keys.num_rows))
        buf = io.BytesIO()
        pq.write_table(out, buf)
        store.put_result(req.request_id, buf.getvalue())
        scored += 1
    return scored


def test_a_cleared_run_with_a_new_champion_scores_again_and_publishes_its_own_scores(
    make_settings: Callable[..., Settings], local_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tenfold.inference.scoring as scoring

    s = make_settings(on=local_settings)
    publish_synthetic_features(Lake.from_settings(s), [PART], 50)
    monkeypatch.setattr(scoring, "resolve", lambda settings, ref: "v-old")
    first = pipeline.plan(s, RUN_ID, {"month": PART.label})
    assert _score(s, first) == first.requests
    assert pipeline.publish_results(s, first)["model_version"] == "v-old"
    assert pipeline.plan(s, RUN_ID, {"month": PART.label}).run_key == first.run_key  # a retry: the same work

    monkeypatch.setattr(scoring, "resolve", lambda settings, ref: "v-new")  # champion moved; the run is cleared
    again = pipeline.plan(s, RUN_ID, {"month": PART.label})
    assert again.run_key != first.run_key and len(again.run_key) <= 59
    assert _score(s, again) == again.requests, "the first plan's results were taken as this plan's"
    pipeline.publish_results(s, again)
    lake = Lake.from_settings(s)
    scores = lake.read_table(s.storage.scores_table, [PART], columns=["model_version"])
    assert set(scores["model_version"].to_pylist()) == {"v-new"}
    assert lake.read_manifest(s.storage.scores_table, PART).extra.get("model_version") == "v-new"


def test_a_cleared_run_after_rows_per_message_changed_plans_its_own_requests(
    make_settings: Callable[..., Settings], local_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Results are kept per request id, and ids count batches: a run re-planned under another rows_per_message
    must not take the first cut's results (50 rows in, 30 out), nor wait for ids nobody publishes."""
    import tenfold.inference.scoring as scoring

    s = make_settings(on=local_settings, inference={"rows_per_message": 10})
    publish_synthetic_features(Lake.from_settings(s), [PART], 50)
    monkeypatch.setattr(scoring, "resolve", lambda settings, ref: "v1")
    first = pipeline.plan(s, RUN_ID, {"month": PART.label})
    assert first.requests == 5 and _score(s, first) == 5
    wider = s.model_copy(update={"inference": s.inference.model_copy(update={"rows_per_message": 20})})  # same lake
    again = pipeline.plan(wider, RUN_ID, {"month": PART.label})
    assert again.run_key != first.run_key and again.requests == 3
    assert _score(wider, again) == 3
    published = pipeline.publish_results(wider, again)
    assert published["rows_in"] == published["rows_out"] == 50


def test_the_bulk_spark_path_is_chosen_on_this_machine_only() -> None:
    from tenfold.config import build_settings

    local, dev = build_settings("local"), build_settings("dev")
    big = local.inference.spark_threshold_rows + 1
    assert pipeline.scoring_path(local, big) == "spark" and pipeline.scoring_path(local, big - 1) == "pubsub"
    # dev and prod have no Spark runtime with torch: a big month goes to the inference fleet, never to a refusal.
    assert pipeline.scoring_path(dev, dev.inference.spark_threshold_rows * 10) == "pubsub"


def test_a_late_run_whose_features_were_re_published_meanwhile_publishes_nothing_over_a_newer_runs_scores(
    make_settings: Callable[..., Settings], local_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Run A scored the month's first build; before its (cleared, late) publish_results ran, the month was re-published
    and run B scored and published the new build. A's publish put the old build's scores back over B's, and no event
    was left to score the month again."""
    import tenfold.inference.scoring as scoring

    s = make_settings(on=local_settings)
    lake, table = Lake.from_settings(s), s.storage.scores_table
    publish_synthetic_features(lake, [PART], 50)
    monkeypatch.setattr(scoring, "resolve", lambda settings, ref: "v1")
    late = pipeline.plan(s, "run-a", {"month": PART.label})
    _score(s, late)
    publish_synthetic_features(lake, [PART], 60, seed=7)  # the month re-published
    newer = pipeline.plan(s, "run-b", {"month": PART.label})
    _score(s, newer)
    pipeline.publish_results(s, newer)
    published = lake.read_manifest(table, PART)
    with pytest.raises(pipeline.PipelineError, match="was re-published since this run planned"):
        pipeline.publish_results(s, late)
    assert lake.read_manifest(table, PART).content == published.content  # run B's scores stay
    with pytest.raises(pipeline.PipelineError, match="was re-published since this run planned"):
        pipeline.score(s, late)  # nor does its score wait for scores of a build no longer published


def test_a_late_run_of_a_retired_model_publishes_nothing_over_scores_published_since_it_planned(
    make_settings: Callable[..., Settings], local_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Run A planned the month with v-old and was refused (too many dead letters); a rollout promoted v-new, and run B
    scored and published the month with it. Days later A's dead letters were replayed and its score task cleared, as
    its refusal says to: its publish put v-old's scores back over B's, and no event came to score the month again."""
    import dataclasses

    import tenfold.inference.scoring as scoring

    s = make_settings(on=local_settings)
    lake, table = Lake.from_settings(s), s.storage.scores_table
    publish_synthetic_features(lake, [PART], 50)
    monkeypatch.setattr(scoring, "resolve", lambda settings, ref: "v-old")
    late = pipeline.plan(s, "run-a", {"month": PART.label})
    assert late.planned_at  # kept with the plan
    late = dataclasses.replace(late, planned_at="2013-08-01T00:00:00+00:00")  # planned before B published
    _score(s, late)
    monkeypatch.setattr(scoring, "resolve", lambda settings, ref: "v-new")
    newer = dataclasses.replace(pipeline.plan(s, "run-b", {"month": PART.label}), planned_at="2026-01-01T00:00:00+00:00")
    _score(s, newer)
    pipeline.publish_results(s, newer)
    published = lake.read_manifest(table, PART)
    with pytest.raises(pipeline.PipelineError, match=r"are of a run planned at .* \(run run-b, model v-new\), after this "
                                                     r"run planned model v-old .*trigger a new batch_inference run"):
        pipeline.publish_results(s, late)
    assert lake.read_manifest(table, PART).content == published.content  # run B's scores stay
    # A run planned after them replaces them (the monthly rescore with a new champion), whichever published first: a
    # run planned earlier that published since (a backfill beside it) must not keep the newer model out.
    monkeypatch.setattr(scoring, "resolve", lambda settings, ref: "v-third")
    again = dataclasses.replace(pipeline.plan(s, "run-c", {"month": PART.label}), planned_at="2026-01-03T00:00:00+00:00")
    _score(s, again)
    monkeypatch.setattr(scoring, "resolve", lambda settings, ref: "v-backfill")
    backfill = dataclasses.replace(pipeline.plan(s, "backfill-d", {"month": PART.label}),
                                   planned_at="2026-01-02T00:00:00+00:00")  # planned before run-c, published first
    _score(s, backfill)
    assert pipeline.publish_results(s, backfill)["model_version"] == "v-backfill"
    assert pipeline.publish_results(s, again)["model_version"] == "v-third"
    assert lake.read_manifest(table, PART).extra["planned_at"] == again.planned_at


def test_a_run_whose_features_were_withdrawn_meanwhile_fails_at_once_saying_what_to_do(
    make_settings: Callable[..., Settings], local_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A month's features withdrawn after plan (a failed re-validation): the lake's MissingManifestError was retried
    twice by Airflow, each try meeting the same missing manifest, and failed with the lake's raw message."""
    import tenfold.inference.scoring as scoring
    from tenfold.pipelines.common import run_step

    s = make_settings(on=local_settings)
    lake = Lake.from_settings(s)
    publish_synthetic_features(lake, [PART], 50)
    monkeypatch.setattr(scoring, "resolve", lambda settings, ref: "v1")
    run = pipeline.plan(s, "run-a", {"month": PART.label})
    lake.fs.delete_file(lake.manifest_path(s.storage.features_table, PART))  # withdrawn
    with pytest.raises(Exception, match=rf"was withdrawn since this run planned .* rebuild it with build_features, then "
                                        rf"trigger batch_inference with {{\"month\": \"{PART.label}\"}}") as failed:
        run_step(pipeline.score, s, run)
    assert type(failed.value).__name__ == "AirflowFailException", "retried what no retry can mend"


def test_the_spark_paths_figures_are_refused_when_another_model_published_over_its_scores(
    make_settings: Callable[..., Settings], local_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A CLI run with another version published the month's scores after this Spark run: its publish_results
    compared the build and the row count only, and reported this model's figures for the other model's scores."""
    import dataclasses

    import tenfold.inference.scoring as scoring

    s = make_settings(on=local_settings)
    publish_synthetic_features(Lake.from_settings(s), [PART], 50)
    monkeypatch.setattr(scoring, "resolve", lambda settings, ref: "v-other")
    other = pipeline.plan(s, "cli-run", {"month": PART.label})
    _score(s, other)
    pipeline.publish_results(s, other)  # what the other run left: the same build, the same rows, another model
    monkeypatch.setattr(scoring, "resolve", lambda settings, ref: "v1")
    spark_run = dataclasses.replace(pipeline.plan(s, "dag-run", {"month": PART.label}), path="spark")
    with pytest.raises(pipeline.PipelineError, match="are model v-other's"):
        pipeline.publish_results(s, spark_run)


def test_a_month_with_dead_letters_publishes_nothing_over_a_complete_one_unless_a_share_is_allowed(
    make_settings: Callable[..., Settings], local_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tenfold.inference.scoring as scoring

    s = make_settings(on=local_settings, inference={"rows_per_message": 10})
    lake, table = Lake.from_settings(s), s.storage.scores_table
    publish_synthetic_features(lake, [PART], 50)
    monkeypatch.setattr(scoring, "resolve", lambda settings, ref: "v1")
    complete = pipeline.plan(s, "first", {"month": PART.label})
    _score(s, complete)
    pipeline.publish_results(s, complete)
    before = lake.read_manifest(table, PART)

    partial = pipeline.plan(s, "second", {"month": PART.label})
    assert _score(s, partial, dead=1) == 4
    with pytest.raises(pipeline.PipelineError, match=r"1 of 5 requests of 2013-06 \(10 rows\) were dead-lettered.*"
                                                     r"nothing was published.*tenfold dlq replay --run"):
        pipeline.publish_results(s, partial)
    assert lake.read_manifest(table, PART) == before and lake.read_table(table, [PART]).num_rows == 50

    allowed = s.model_copy(update={"inference": s.inference.model_copy(update={"max_dead_lettered_fraction": 0.2})})
    figures = pipeline.publish_results(allowed, partial)
    assert (figures["rows_out"], figures["rows_dead_lettered"]) == (40, 10)
    assert lake.read_manifest(table, PART).extra["dead_lettered_requests"] == 1

    # `tenfold dlq replay` sends the dead letter again: until it is scored, publish_results names it in flight
    # and what to clear (it counted it as a broken invariant, and the docs said to clear publish_results itself).
    store = RunStore.of(s, partial.run_key)
    (rid,) = store.dead_letter_ids()
    mark_replayed(store, rid, store.dead_letter(rid) or {}, message_id="m1")
    after_partial = lake.read_manifest(table, PART)
    with pytest.raises(pipeline.PipelineError, match=r"1 of 5 requests of 2013-06 are neither scored nor "
                                                     r"dead-lettered yet.*Clear this run's score_month.score task"):
        pipeline.publish_results(s, partial)
    assert lake.read_manifest(table, PART) == after_partial
    assert _score(s, partial) == 1  # the replayed request is scored (what `score` waits for)
    assert pipeline.publish_results(s, partial)["rows_out"] == 50


def test_a_command_line_run_refused_for_its_dead_letters_says_how_to_resume_it_under_its_run_id(
    make_settings: Callable[..., Settings], local_settings: Settings, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    """`python -m tenfold.pipelines.batch_inference` makes up its run id (manual__<time>), and its refusals said to clear
    "this run's score_month.score task", which only an Airflow run has: the run could not be resumed, for its id was
    nowhere to be seen. The refusal now names the command that runs it again under its id, and that command resumes it.
    (The Pub/Sub round is stood in for: no request reaches the session's topic and no worker pool starts.)"""
    import shlex

    import tenfold.config
    import tenfold.inference.scoring as scoring

    s = make_settings(on=local_settings, inference={"rows_per_message": 10})
    publish_synthetic_features(Lake.from_settings(s), [PART], 50)
    monkeypatch.setattr(scoring, "resolve", lambda settings, ref: "v1")
    monkeypatch.setattr(tenfold.config, "get_settings", lambda: s)  # what main reads
    planned: list[pipeline.InferenceRun] = []
    real_plan = pipeline.plan
    monkeypatch.setattr(pipeline, "plan", lambda *args: planned.append(real_plan(*args)) or planned[-1])
    monkeypatch.setattr(pipeline, "publish", lambda settings, run: pipeline.Published(run.requests, run.rows, 0.0))
    dead = [1]  # the first try dead-letters one request (a poison request); the run again scores what is left

    def score(settings: Settings, run: pipeline.InferenceRun) -> pipeline.Scored:
        return pipeline.Scored(scored=_score(settings, run, dead=dead.pop() if dead else 0), dead_lettered=0, seconds=0.0)

    monkeypatch.setattr(pipeline, "score", score)
    with caplog.at_level("INFO", logger=pipeline.__name__):
        assert pipeline.main(["--conf", f'{{"month": "{PART.label}"}}']) == 1
    (run,) = planned
    assert run.airflow_run_id.startswith("manual__")
    assert any(f"(run id {run.airflow_run_id})" in r.getMessage() for r in caplog.records), caplog.text  # logged at plan
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: `python -m tenfold.pipelines.batch_inference`: 1 of 5 requests of 2013-06 (10 rows) "
                          "were dead-lettered"), err
    # Not `tenfold dlq replay` first: the run's own publish sends its dead letters again, and both sent each twice.
    assert "score_month" not in err and "dlq replay" not in err and "; once fixed, run `" in err, err
    again = re.search(r"run `python -m tenfold\.pipelines\.batch_inference (.+?)` again", err)
    assert again is not None, err
    args = shlex.split(again.group(1))
    assert args[args.index("--run-id") + 1] == run.airflow_run_id, err

    # `tenfold dlq replay`: until the replayed request is scored, the count refuses naming the same command.
    store = RunStore.of(s, run.run_key)
    (rid,) = store.dead_letter_ids()
    mark_replayed(store, rid, store.dead_letter(rid) or {}, message_id="m1")
    with pytest.raises(pipeline.PipelineError, match=r"1 of 5 requests of 2013-06 are neither scored nor dead-lettered "
                                                     r"yet.*Run `python -m tenfold\.pipelines\.batch_inference "
                                                     rf"--conf .+ --run-id {re.escape(run.airflow_run_id)}` again"):
        pipeline.publish_results(s, run, command_line=True)

    # The command as said resumes the run: the same run key (its results kept), the replayed request scored, published.
    assert pipeline.main(args) == 0
    assert planned[-1].run_key == run.run_key
    assert json.loads(capsys.readouterr().out)["rows_out"] == 50


def test_a_command_line_run_whose_wait_ran_out_says_to_run_it_again_under_its_run_id(
    make_settings: Callable[..., Settings], local_settings: Settings, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str]
) -> None:
    """The wait's refusal (workers slow or gone) said to retry the task or clear the publish task: the same command
    again, its natural reading from the command line, made a new run, and every request was published and scored
    again. It now names the command with the run's id. (The wait itself is stood in for: it runs out at once.)"""
    import shlex

    import tenfold.config
    import tenfold.inference.runs as runs
    import tenfold.inference.scoring as scoring

    s = make_settings(on=local_settings, inference={"rows_per_message": 10})
    publish_synthetic_features(Lake.from_settings(s), [PART], 50)
    monkeypatch.setattr(scoring, "resolve", lambda settings, ref: "v1")
    monkeypatch.setattr(tenfold.config, "get_settings", lambda: s)
    planned: list[pipeline.InferenceRun] = []
    real_plan = pipeline.plan
    monkeypatch.setattr(pipeline, "plan", lambda *args: planned.append(real_plan(*args)) or planned[-1])
    monkeypatch.setattr(pipeline, "publish", lambda settings, run: pipeline.Published(run.requests, run.rows, 0.0))

    def runs_out(*args: object, **kwargs: object) -> None:
        raise runs.InferenceRunError("5 of 5 requests of run r were neither scored nor dead-lettered within 1 s: "
                                     "Retry the task to keep waiting")

    monkeypatch.setattr(runs, "wait_accounted", runs_out)
    monkeypatch.setattr(s.__class__, "is_local", property(lambda self: False))  # no worker pool: the cloud's wait
    assert pipeline.main(["--conf", f'{{"month": "{PART.label}"}}']) == 1
    (run,) = planned
    err = capsys.readouterr().err.strip().splitlines()[-1]
    again = re.search(r"From the command line, either is: run `python -m tenfold\.pipelines\.batch_inference (.+?)` "
                      r"again", err)
    assert again is not None, err
    args = shlex.split(again.group(1))
    assert args[args.index("--run-id") + 1] == run.airflow_run_id, err


def test_a_month_without_rows_publishes_an_empty_scores_partition(
    make_settings: Callable[..., Settings], local_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No request, so no result: the scores had no columns and write_sorted raised a raw ArrowInvalid (retried)."""
    import tenfold.inference.scoring as scoring

    s = make_settings(on=local_settings)
    lake, table = Lake.from_settings(s), s.storage.scores_table
    publish_synthetic_features(lake, [PART], 0)
    monkeypatch.setattr(scoring, "resolve", lambda settings, ref: "v1")
    run = pipeline.plan(s, RUN_ID, {"month": PART.label})
    assert (run.rows, run.requests, run.path) == (0, 0, "pubsub")
    figures = pipeline.publish_results(s, run)
    assert (figures["rows_in"], figures["rows_out"], figures["requests_in"]) == (0, 0, 0)
    assert lake.read_manifest(table, PART).rows == 0
    scores, expected = lake.read_table(table, [PART]), scoring.scores_schema(pipeline._contract(s))
    assert scores.num_rows == 0 and scores.schema.names == expected.names
    assert [f.type for f in scores.schema] == [f.type for f in expected]


def test_a_month_built_by_other_feature_definitions_is_refused_at_plan(
    make_settings: Callable[..., Settings], local_settings: Settings, tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tenfold.inference.scoring as scoring
    from tenfold.workloads import VERSION_KEY
    from tenfold.workloads.flights import WORKLOAD
    from tenfold.workloads.flights.synthetic import synthetic_features

    s = make_settings(on=local_settings)
    monkeypatch.setattr(scoring, "resolve", lambda settings, ref: "v1")
    staged = tmp_path / "staged"
    staged.mkdir()
    pq.write_table(synthetic_features(PART, 50), staged / "part-00000.parquet")
    Lake.from_settings(s).publish(s.storage.features_table, PART, str(staged), run_id="old",
                                  extra={VERSION_KEY: WORKLOAD.contract.version - 1})
    with pytest.raises(pipeline.PipelineError, match=rf"2013-06 was built by feature definitions version "
                                                     rf"{WORKLOAD.contract.version - 1}.*rebuild it with build_features"):
        pipeline.plan(s, RUN_ID, {"month": PART.label})


def test_an_event_triggered_run_scores_every_held_back_month_but_not_a_first_runs_backlog(
    make_settings: Callable[..., Settings], local_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Events that arrive while a run is active all come to the next run: it scores each later month without scores
    from its current features. A DAG's first run receives every earlier event too (nothing scored yet: a backlog),
    and Airflow hands a run the events of months rebuilt while the DAG was paused: only the newest is scored then."""
    import tenfold.inference.scoring as scoring

    s = make_settings(on=local_settings, inference={"rows_per_message": 25})
    lake = Lake.from_settings(s)
    publish_synthetic_features(lake, [Partition(2013, m) for m in (5, 6, 7, 8, 9)], 50)
    monkeypatch.setattr(scoring, "resolve", lambda settings, ref: "v1")

    first = pipeline.months_to_score(s, ["2013-07", "2013-05", "2013-06", "2013-07"])  # in no promised order
    assert first.score == ["2013-07"]
    assert sorted(first.skipped) == ["2013-05", "2013-06"]
    assert 'first run\'s backlog: trigger batch_inference with the run conf {"month": "2013-05"}' in first.skipped["2013-05"]

    run = pipeline.plan(s, "first", {"month": "2013-07"})
    _score(s, run)
    pipeline.publish_results(s, run)
    held = pipeline.months_to_score(s, ["2013-09", "2013-06", "2013-08", "2013-07"])
    assert held.score == ["2013-08", "2013-09"], "a held-back month without scores was not scored"
    assert "not later than 2013-07, the newest month scored (a rebuilt or backfilled month)" in held.skipped["2013-06"]
    assert "not later than 2013-07" in held.skipped["2013-07"]

    run = pipeline.plan(s, "second", {"month": "2013-08"})
    _score(s, run)
    pipeline.publish_results(s, run)
    publish_synthetic_features(lake, [Partition(2013, 9)], 50, seed=3)
    run = pipeline.plan(s, "third", {"month": "2013-09"})
    _score(s, run)
    pipeline.publish_results(s, run)
    # 2013-08 re-published after 09 was scored: a rebuild, not a held-back month; 09's event again (the same build,
    # scored by the same model version: a cleared or re-backfilled build_features run) is not scored again
    publish_synthetic_features(lake, [Partition(2013, 8)], 60, seed=1)
    again = pipeline.months_to_score(s, ["2013-08", "2013-09"])
    assert again.score == [] and "its scores are of the features published now, by v1" in again.skipped["2013-09"]
    monkeypatch.setattr(scoring, "resolve", lambda settings, ref: "v2")  # a new champion: scored again
    assert pipeline.months_to_score(s, ["2013-08", "2013-09"]).score == ["2013-09"]
    publish_synthetic_features(lake, [Partition(2013, 9)], 40, seed=4)  # or a new build of the month
    monkeypatch.setattr(scoring, "resolve", lambda settings, ref: "v1")
    assert pipeline.months_to_score(s, ["2013-09"]).score == ["2013-09"]
    with pytest.raises(pipeline.PipelineInputError, match="YYYY-MM"):
        pipeline.months_to_score(s, ["2013-13", "2013-08"])


def test_a_cleared_run_scores_the_months_it_chose_first_even_after_publishing_a_later_one(
    make_settings: Callable[..., Settings], local_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run chose 07 and 08; 08 published, 07's publish failed; the operator cleared the run. Chosen again, 07 was
    "not later than 2013-08, the newest month scored" and skipped: the run ended green without it."""
    import tenfold.inference.scoring as scoring

    s = make_settings(on=local_settings, inference={"rows_per_message": 25})
    lake = Lake.from_settings(s)
    publish_synthetic_features(lake, [Partition(2013, m) for m in (6, 7, 8)], 50)
    monkeypatch.setattr(scoring, "resolve", lambda settings, ref: "v1")
    run = pipeline.plan(s, "before", {"month": "2013-06"})  # something scored: not a first run's backlog
    _score(s, run)
    pipeline.publish_results(s, run)

    first = pipeline.months_to_score(s, ["2013-08", "2013-07"], "asset_triggered__x")
    assert first.score == ["2013-07", "2013-08"]
    run = pipeline.plan(s, "asset_triggered__x", {"month": "2013-08"})
    _score(s, run)
    pipeline.publish_results(s, run)  # 08 is published; 07's publish failed
    afresh = pipeline.months_to_score(s, ["2013-08", "2013-07"])  # chosen afresh: 07 is left, 08 scored already
    assert afresh.score == [] and "not later than 2013-08" in afresh.skipped["2013-07"]
    again = pipeline.months_to_score(s, ["2013-08", "2013-07"], "asset_triggered__x")  # the cleared run
    assert again.score == ["2013-07", "2013-08"] and again.skipped == first.skipped


def test_a_wait_that_ran_out_is_retried_by_airflow_not_failed_at_once(
    make_settings: Callable[..., Settings], local_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """score turned every InferenceRunError into a PipelineError, which run_step fails without retries: a wait that
    ran past its bound (whose message says "retry the task to keep waiting") left the month unscored for good."""
    from airflow.sdk.exceptions import AirflowFailException

    import tenfold.inference.scoring as scoring
    from tenfold.inference import runs
    from tenfold.pipelines.common import run_step

    s = make_settings(on=local_settings, inference={"rows_per_message": 25})
    publish_synthetic_features(Lake.from_settings(s), [Partition(2013, 5)], 50)
    monkeypatch.setattr(scoring, "resolve", lambda settings, ref: "v1")
    run = pipeline.plan(s, "waits", {"month": "2013-05"})

    def ran_out(*args: object, **kwargs: object) -> None:
        raise runs.InferenceRunError("2 of 2 requests of run x were neither scored nor dead-lettered within 60 s: "
                                     "Retry the task to keep waiting")

    monkeypatch.setattr(runs, "wait_accounted", ran_out)
    assert run.path == "pubsub"
    cloud = s.model_copy(update={"env": "dev"})  # the wait alone (locally score also runs the worker pool)
    assert not cloud.is_local
    with pytest.raises(pipeline.WaitIncomplete, match="Retry the task"):
        run_step(pipeline.score, cloud, run)
    with pytest.raises(AirflowFailException):  # a refusal still fails at once
        run_step(pipeline.plan, s, "waits", {"month": "2013-13"})


def _register(s: Settings, folder: Path, meta: dict[str, object]) -> str:
    import json

    from tenfold.registry import Lineage, ModelRegistry, PartitionRef

    folder.mkdir()
    (folder / "weights.pt").write_bytes(b"w" * 64)
    (folder / "preprocessing.json").write_text("{}")
    (folder / "meta.json").write_text(json.dumps(meta))
    ref = PartitionRef(partition="2013-01", data_dir="d", rows=1, schema_hash="s", run_id="r", manifest_sha256="m" * 64)
    lineage = Lineage(feature_table="features", train_partitions=(ref,), holdout_partitions=(), training_config={},
                      run_id="r")
    return ModelRegistry(s).register(folder, lineage, metrics={"auc": 0.7}).version


@pytest.mark.parametrize("trained_on", ["other", "same", "unrecorded"])
def test_a_model_trained_on_other_feature_definitions_is_refused_at_plan(
    make_settings: Callable[..., Settings], local_settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    trained_on: str,
) -> None:
    """Every worker's load_model refuses such a model, so each request was dead-lettered one by one and the run
    failed at the end; plan refuses it first, naming it. A model saved before the version was recorded is scored,
    as load_model loads it."""
    import tenfold.inference.scoring as scoring
    from tenfold.workloads import VERSION_KEY
    from tenfold.workloads.flights import WORKLOAD

    monkeypatch.setattr(scoring, "registered_meta", REAL_REGISTERED_META)
    s = make_settings(on=local_settings)
    publish_synthetic_features(Lake.from_settings(s), [PART], 50)
    meta: dict[str, object] = {"version": 1, "workload": "flights"}
    if trained_on != "unrecorded":
        meta[VERSION_KEY] = WORKLOAD.contract.version + (1 if trained_on == "other" else 0)
    version = _register(s, tmp_path / "model", meta)
    if trained_on != "other":
        run = pipeline.plan(s, RUN_ID, {"month": PART.label, "version": version})
        assert run.model_version == version and run.requests > 0
        return
    with pytest.raises(pipeline.PipelineError, match=rf"model {version} \({version}\) cannot score features partition "
                                                     rf"{PART.label}: it learnt from version "
                                                     rf"{WORKLOAD.contract.version + 1} of the feature definitions.*"
                                                     r"train one \(train_model\) and promote it"):
        pipeline.plan(s, RUN_ID, {"month": PART.label, "version": version})


def test_a_model_of_another_workload_is_refused_at_plan_though_its_feature_version_matches(
    make_settings: Callable[..., Settings], local_settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Feature definitions' versions are small numbers: plan compared only them, so a model of another workload
    that carried this one's number passed, and every worker then refused it once per request (each a dead letter)."""
    import tenfold.inference.scoring as scoring
    from tenfold.workloads import VERSION_KEY
    from tenfold.workloads.flights import WORKLOAD

    monkeypatch.setattr(scoring, "registered_meta", REAL_REGISTERED_META)
    s = make_settings(on=local_settings)
    publish_synthetic_features(Lake.from_settings(s), [PART], 50)
    version = _register(s, tmp_path / "model", {"version": 1, "workload": "tiny", VERSION_KEY: WORKLOAD.contract.version})
    with pytest.raises(pipeline.PipelineError, match=rf"model {version} \({version}\) cannot score features partition "
                                                     rf"{PART.label}: it is a model of workload 'tiny', and this "
                                                     r"platform runs 'flights' \(settings.workload\)"):
        pipeline.plan(s, RUN_ID, {"month": PART.label, "version": version})


def test_a_model_taking_a_column_the_features_no_longer_hold_is_refused_at_plan(
    make_settings: Callable[..., Settings], local_settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A column renamed with no version bump: load_model refuses such a model, so plan (which compared only the
    workload and the version) let every request become a dead letter; it now refuses what load_model would."""
    import tenfold.inference.scoring as scoring
    from tenfold.workloads import VERSION_KEY
    from tenfold.workloads.flights import WORKLOAD

    monkeypatch.setattr(scoring, "registered_meta", REAL_REGISTERED_META)
    s = make_settings(on=local_settings)
    publish_synthetic_features(Lake.from_settings(s), [PART], 50)
    contract = WORKLOAD.contract
    meta = {"version": 1, "workload": "flights", VERSION_KEY: contract.version,
            "categorical_columns": list(contract.categorical_columns),
            "numeric_columns": [*contract.numeric_columns, "dep_delay_forecast"]}
    version = _register(s, tmp_path / "model", meta)
    with pytest.raises(pipeline.PipelineError, match=rf"model {version} \({version}\) cannot score features partition "
                                                     rf"{PART.label}: it takes the column\(s\) dep_delay_forecast "
                                                     r"\(numeric\), which version"):
        pipeline.plan(s, RUN_ID, {"month": PART.label, "version": version})


def test_a_tampered_meta_json_is_refused_at_plan_naming_the_version(
    make_settings: Callable[..., Settings], local_settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tenfold.inference.scoring as scoring
    from tenfold.registry import ModelRegistry

    monkeypatch.setattr(scoring, "registered_meta", REAL_REGISTERED_META)
    s = make_settings(on=local_settings)
    publish_synthetic_features(Lake.from_settings(s), [PART], 50)
    version = _register(s, tmp_path / "model", {"version": 1, "workload": "flights"})
    registry = ModelRegistry(s)
    registry.bucket.blob(registry._name("versions", version, "files", "meta.json")).upload_from_string(b'{"version": 2}')
    with pytest.raises(pipeline.PipelineError, match=rf"model version {version} cannot be read from the registry: "
                                                     r"meta.json of version .* does not match its recorded sha256"):
        pipeline.plan(s, RUN_ID, {"month": PART.label, "version": version})


def test_requests_are_cut_from_the_build_the_run_planned_not_one_published_while_they_are_read(
    make_settings: Callable[..., Settings], local_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The manifest was checked, then read again by the read itself, which follows a re-publish landing meanwhile:
    a same-row-count rebuild's rows were sent, and the scores' manifest recorded the build planned."""
    import tenfold.inference.runs as runs
    import tenfold.inference.scoring as scoring

    s = make_settings(on=local_settings)
    publish_synthetic_features(Lake.from_settings(s), [PART], 50)
    monkeypatch.setattr(scoring, "resolve", lambda settings, ref: "v1")
    planned = pipeline.plan(s, RUN_ID, {"month": PART.label})
    assert planned.path == "pubsub"
    real_rows, sent = runs.partition_rows, []

    def rebuilt_while_read(*args: object, **kwargs: object) -> object:
        publish_synthetic_features(Lake.from_settings(s), [PART], 50, seed=9)  # same rows, other content
        return real_rows(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(runs, "partition_rows", rebuilt_while_read)
    monkeypatch.setattr(runs, "publish_requests", lambda *args, **kwargs: sent.append(args))
    with pytest.raises(pipeline.PipelineError, match="re-published"):
        pipeline.publish(s, planned)
    assert sent == []


def test_a_late_spark_run_of_a_retired_model_runs_no_job_over_scores_planned_after_it(
    make_settings: Callable[..., Settings], local_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The Spark path's job publishes its own scores: a run planned with v-old, cleared after a later-planned run
    published v-new's, replaced them (publish_results only compares the model it published itself). It is refused
    before the job runs; and the Spark job records its plan's time, so later runs order by plans, not publication."""
    import dataclasses

    import tenfold.inference.scoring as scoring
    from tenfold.inference import spark

    s = make_settings(on=local_settings)
    lake, table = Lake.from_settings(s), s.storage.scores_table
    publish_synthetic_features(lake, [PART], 50)
    monkeypatch.setattr(scoring, "resolve", lambda settings, ref: "v-old")
    late = dataclasses.replace(pipeline.plan(s, "run-a", {"month": PART.label}), path="spark",
                               planned_at="2013-08-01T00:00:00+00:00")
    monkeypatch.setattr(scoring, "resolve", lambda settings, ref: "v-new")
    newer = dataclasses.replace(pipeline.plan(s, "run-b", {"month": PART.label}), planned_at="2026-01-01T00:00:00+00:00")
    _score(s, newer)
    published = pipeline.publish_results(s, newer)
    jobs: list[dict[str, object]] = []
    monkeypatch.setattr(spark, "score_partition", lambda *a, **kw: jobs.append(kw) or 50)
    with pytest.raises(pipeline.PipelineError, match=r"\(run run-b, model v-new\), after this run planned model v-old"):
        pipeline.score(s, late)
    assert jobs == [], "the job ran (and would have published v-old's scores over v-new's)"
    assert lake.read_manifest(table, PART).data_dir == published["data_dir"]
    # A run planned after them goes ahead, its plan's time handed to the job's manifest.
    later = dataclasses.replace(late, airflow_run_id="run-c", planned_at="2026-02-01T00:00:00+00:00")
    assert pipeline.score(s, later).rows_written == 50
    assert jobs == [{"run_id": "run-c", "features_data_dir": later.features_data_dir,
                     "planned_at": "2026-02-01T00:00:00+00:00"}]


def test_a_spark_run_over_a_damaged_scores_manifest_runs_its_job_which_repairs_the_month(
    make_settings: Callable[..., Settings], local_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The check that a later-planned run's scores are not replaced read the month's scores manifest: a garbled one
    refused every try, though the job's publish is what repairs it (nothing valid is there to keep)."""
    import dataclasses

    import tenfold.inference.scoring as scoring
    from tenfold.inference import spark

    s = make_settings(on=local_settings)
    lake, table = Lake.from_settings(s), s.storage.scores_table
    publish_synthetic_features(lake, [PART], 50)
    monkeypatch.setattr(scoring, "resolve", lambda settings, ref: "v1")
    first = pipeline.plan(s, "run-a", {"month": PART.label})
    _score(s, first)
    pipeline.publish_results(s, first)
    with lake.fs.open_output_stream(lake.manifest_path(table, PART)) as out:
        out.write(b"{garbage")
    jobs: list[str] = []
    monkeypatch.setattr(spark, "score_partition", lambda *a, **kw: jobs.append(str(kw["run_id"])) or 50)
    run = dataclasses.replace(pipeline.plan(s, "run-b", {"month": PART.label}), path="spark")
    assert pipeline.score(s, run).rows_written == 50
    assert jobs == ["run-b"]


@pytest.mark.parametrize("month", ["", 0, False, []])
def test_a_month_given_empty_or_not_a_string_is_refused_not_the_newest_month_scored(
    make_settings: Callable[..., Settings], local_settings: Settings, monkeypatch: pytest.MonkeyPatch, month: object
) -> None:
    """{"month": ""} (a script whose $MONTH was unset) scored the newest published month and published over its
    scores: a falsy month was taken for no month at all."""
    import tenfold.inference.scoring as scoring

    s = make_settings(on=local_settings)
    publish_synthetic_features(Lake.from_settings(s), [PART], 20)
    monkeypatch.setattr(scoring, "resolve", lambda settings, ref: "v1")
    with pytest.raises(pipeline.PipelineInputError, match=rf"^run conf month.*{re.escape(repr(month))}"):
        pipeline.plan(s, RUN_ID, {"month": month})
    assert pipeline.plan(s, RUN_ID, {"month": None}).month == PART.label  # null is no month: the newest published


@pytest.mark.parametrize("version", ["", "  ", 0, False])
def test_a_version_given_empty_or_not_a_string_is_refused_not_the_champion_scored(
    make_settings: Callable[..., Settings], local_settings: Settings, monkeypatch: pytest.MonkeyPatch, version: object
) -> None:
    import tenfold.inference.scoring as scoring

    s = make_settings(on=local_settings)
    publish_synthetic_features(Lake.from_settings(s), [PART], 20)
    asked: list[str] = []
    monkeypatch.setattr(scoring, "resolve", lambda settings, ref: asked.append(ref) or "v1")
    with pytest.raises(pipeline.PipelineInputError, match=rf"^run conf version={re.escape(repr(version))}: give a registered "):
        pipeline.plan(s, RUN_ID, {"month": PART.label, "version": version})
    assert asked == []
    pipeline.plan(s, RUN_ID, {"month": PART.label, "version": None})  # null is no version: the model_ref's
    assert asked == [s.inference.model_ref]
