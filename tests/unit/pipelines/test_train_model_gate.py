"""The pipeline's evaluate -> register -> gate wiring against the real registry on the emulator.

The model evaluator is replaced by one that reads a model's quality from its own files (its
``meta.json``), so every score provably comes from the files of the model it is attributed to: the
champion's score can only be right if the pipeline really downloaded and evaluated the champion
version, not the challenger. (The real evaluator runs in tests/integration/test_train_model.py.)
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tenfold.config import Settings
from tenfold.data.lake import Lake, Partition, month_range
from tenfold.model_files import META_VERSION
from tenfold.pipelines import rollout_model
from tenfold.pipelines import train_model as pipeline
from tenfold.pipelines.common import PipelineInputError
from tenfold.registry import CHALLENGER, CHAMPION, AliasConflict, ModelRegistry

# The real champion scorer, which the gate_settings fixture replaces.
_SCORE_CHAMPION = pipeline._evaluate_model
CONF = {"train_months": ["2013-01", "2013-02"], "holdout_months": ["2013-03", "2013-03"], "epochs": 1}


@pytest.fixture
def gate_settings(make_settings: Callable[..., Settings], local_settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Settings:
    from tenfold.workloads.flights.synthetic import publish_synthetic_features

    # A positive margin: these tests show a challenger that must beat the champion (the default tolerates less).
    s = make_settings(on=local_settings, training={"promote_margin": 0.002})
    publish_synthetic_features(Lake.from_settings(s), month_range("2013-01", "2013-03"), 50)

    def evaluate_model(model_dir: Path, lake: Lake, table: str, parts: list[Partition], workload: str) -> dict[str, Any]:
        assert [p.label for p in parts] == ["2013-03"] and table == s.storage.features_table
        assert workload == s.workload  # the champion is loaded as a model of this run's workload
        quality = json.loads((model_dir / "meta.json").read_text())["quality"]
        if quality < 0:
            raise RuntimeError("meta.json does not match the holdout's feature contract")
        return {"auc": quality, "log_loss": 0.6 - quality / 2, "brier": 0.2, "rows": 50}

    def evaluate_challenger(model_dir: Path, lake: Lake, table: str, train: list[Partition], holdout: list[Partition]
                            ) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
        assert [p.label for p in train] == ["2013-01", "2013-02"]
        baselines = {"rate": {"auc": 0.6, "log_loss": 0.5, "brier": 0.2}, "hgb": {"auc": 0.66, "log_loss": 0.45, "brier": 0.19}}
        return evaluate_model(model_dir, lake, table, holdout, s.workload), baselines

    monkeypatch.setattr(pipeline, "_evaluate_model", evaluate_model)
    monkeypatch.setattr(pipeline, "_evaluate_challenger", evaluate_challenger)
    # These folders are not loadable models, so no drift profile can score them (tests/unit/monitoring has it).
    monkeypatch.setattr(pipeline, "ensure_profile", lambda *args, **kwargs: None)
    return s


def model(tmp_path: Path, quality: float, name: str | None = None) -> dict[str, Any]:
    d = tmp_path / (name or f"m-{quality}")
    d.mkdir(exist_ok=True)
    # A meta.json this code reads: a rollout plans only a model it can load.
    (d / "meta.json").write_text(json.dumps({"version": META_VERSION, "quality": quality}))
    (d / "weights.pt").write_bytes(str(quality).encode() * 100)
    (d / "preprocessing.json").write_text("{}")
    return {"model_ref": str(d), "train_result": {"steps": 1}}


def run(settings: Settings, run_id: str, trained: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    planned = pipeline.plan(settings, run_id, CONF)
    evaluation = pipeline.evaluate(settings, planned, trained)
    registered = pipeline.register(settings, planned, trained, evaluation)
    return evaluation, registered, pipeline.gate(settings, planned, evaluation, registered)


def _evaluated(settings: Settings, run_id: str, trained: dict[str, Any]) -> tuple[Any, Any]:
    return _registered(settings, run_id, trained)[1:]


def _registered(settings: Settings, run_id: str, trained: dict[str, Any]) -> tuple[Any, Any, Any]:
    """A run's plan, evaluation and registration, its gate not run yet."""
    planned = pipeline.plan(settings, run_id, CONF)
    evaluation = pipeline.evaluate(settings, planned, trained)
    return planned, evaluation, pipeline.register(settings, planned, trained, evaluation)


def test_champion_is_scored_from_its_own_registered_files(gate_settings: Settings, tmp_path: Path) -> None:
    reg = ModelRegistry(gate_settings)
    ev1, r1, d1 = run(gate_settings, "manual__1", model(tmp_path, 0.70))
    assert ev1.champion is None
    assert d1["promote"] and d1["champion_version"] is None and not d1["canary"]  # the first model: floors alone
    assert reg.resolve(CHAMPION) == r1.version == reg.resolve(CHALLENGER)

    ev2, r2, d2 = run(gate_settings, "manual__2", model(tmp_path, 0.75))
    # The champion's score is 0.70, read from the champion version's own files: had the pipeline scored
    # the challenger twice, it would be 0.75 and the gate would have refused the self-comparison.
    assert ev2.champion == {"version": r1.version, "metrics": {"auc": 0.70, "log_loss": 0.25, "brier": 0.2, "rows": 50}}
    assert d2["champion_version"] == r1.version and d2["challenger_version"] == r2.version
    assert d2["champion"]["auc"] == 0.70 and d2["challenger"]["auc"] == 0.75
    # It passed the offline gate: it is the challenger, and only a canary may make it champion.
    assert d2["promote"] and d2["canary"] and "canary rollout" in d2["summary"]
    assert reg.resolve(CHAMPION) == r1.version and reg.resolve(CHALLENGER) == r2.version
    assert (d2["champion_now"], d2["challenger_now"]) == (r1.version, r2.version)
    reg.promote(r2.version, expected=r1.version, reason="its canary passed (what rollout_model does)")

    ev3, r3, d3 = run(gate_settings, "manual__3", model(tmp_path, 0.751))  # within the margin: kept
    assert ev3.champion["version"] == r2.version and ev3.champion["metrics"]["auc"] == 0.75
    assert not d3["promote"] and not d3["canary"] and d3["checks"]["beats_champion"] is False
    # A version that fails the offline gate moves no alias.
    assert reg.resolve(CHAMPION) == r2.version and reg.resolve(CHALLENGER) == r2.version
    # Each decision is kept with the version it judged.
    assert reg.decisions(r3.version)["manual__3"]["champion_version"] == r2.version
    assert [h.version for h in reg.alias_history(CHAMPION)] == [r1.version, r2.version]


def test_a_champion_moved_after_evaluation_makes_the_gate_fail(gate_settings: Settings, tmp_path: Path) -> None:
    reg = ModelRegistry(gate_settings)
    _, r1, _ = run(gate_settings, "manual__a", model(tmp_path, 0.70))
    planned = pipeline.plan(gate_settings, "manual__b", CONF)
    trained = model(tmp_path, 0.80)
    evaluation = pipeline.evaluate(gate_settings, planned, trained)
    registered = pipeline.register(gate_settings, planned, trained, evaluation)
    other = reg.register(Path(model(tmp_path, 0.72)["model_ref"]), reg.get(r1.version).lineage,  # type: ignore[arg-type]
                         metrics={"auc": 0.72, "log_loss": 0.2, "brier": 0.2})
    reg.promote(other.version, reason="someone else, meanwhile")
    with pytest.raises(AliasConflict, match="comparison is stale"):
        pipeline.gate(gate_settings, planned, evaluation, registered)
    assert reg.resolve(CHAMPION) == other.version


def test_a_run_cleared_from_evaluate_after_the_champion_moved_decides_again_against_the_new_champion(
        gate_settings: Settings, tmp_path: Path, stable_pool_serves: Callable[..., None]) -> None:
    """The run passed against champion A and was announced for a canary; the champion then moved to B and the run was
    cleared from evaluate. Its gate returned the old PROMOTE against A (and announced a canary again) instead of
    comparing with B, which the challenger does not beat."""
    reg = ModelRegistry(gate_settings)
    _, r_a, _ = run(gate_settings, "manual__a", model(tmp_path, 0.70))
    planned = pipeline.plan(gate_settings, "manual__c", CONF)
    trained = model(tmp_path, 0.75)
    ev1 = pipeline.evaluate(gate_settings, planned, trained)
    registered = pipeline.register(gate_settings, planned, trained, ev1)
    d1 = pipeline.gate(gate_settings, planned, ev1, registered)
    assert d1["promote"] and d1["canary"] and d1["champion_version"] == r_a.version
    b = reg.register(Path(model(tmp_path, 0.80)["model_ref"]), reg.get(r_a.version).lineage,  # type: ignore[arg-type]
                     metrics={"auc": 0.80, "log_loss": 0.2, "brier": 0.2})
    reg.promote(b.version, reason="a manual promotion, meanwhile")

    ev2 = pipeline.evaluate(gate_settings, planned, trained)  # the run cleared from evaluate
    assert ev2.champion["version"] == b.version
    for _attempt in range(2):  # and its gate retried: the same decision
        d2 = pipeline.gate(gate_settings, planned, ev2, pipeline.register(gate_settings, planned, trained, ev2))
        assert d2["champion_version"] == b.version and d2["champion"]["auc"] == 0.80
        assert not d2["promote"] and not d2["canary"] and d2["summary"].startswith("KEEP CHAMPION")
    assert reg.resolve(CHAMPION) == b.version
    kept = reg.decisions(registered.version)
    assert {d["champion_version"] for d in kept.values()} == {r_a.version, b.version} and len(kept) == 2
    # The alias still names it (no alias moves on a KEEP), but the rollout that takes the challenger by default
    # refuses it: it was scored below the champion it would go live against. Named in the conf, it is the
    # operator's choice.
    assert reg.resolve(CHALLENGER) == registered.version
    stable_pool_serves(gate_settings, b.version)  # the champion's control, as a rollout's plan requires
    with pytest.raises(PipelineInputError, match=f"kept out .*KEEP CHAMPION.*\"version\": \"{registered.version}\""):
        rollout_model.plan(gate_settings, "manual__rollout", {})
    assert rollout_model.plan(gate_settings, "manual__rollout", {"version": registered.version}).champion == b.version


def test_gate_is_idempotent_and_an_identical_retrain_changes_nothing(gate_settings: Settings, tmp_path: Path) -> None:
    reg = ModelRegistry(gate_settings)
    planned = pipeline.plan(gate_settings, "manual__x", CONF)
    trained = model(tmp_path, 0.7, name="same")
    evaluation = pipeline.evaluate(gate_settings, planned, trained)
    registered = pipeline.register(gate_settings, planned, trained, evaluation)
    first = pipeline.gate(gate_settings, planned, evaluation, registered)
    again = pipeline.gate(gate_settings, planned, evaluation, registered)  # a retried task
    assert first["promote"] and again["promote"] and again["summary"] == first["summary"]
    assert len(reg.alias_history(CHAMPION)) == 1

    # The same content trained again is the same version: the gate refuses to compare it with itself
    # and reports it unchanged instead.
    _, r2, d2 = run(gate_settings, "manual__y", model(tmp_path, 0.7, name="same"))
    assert r2.version == registered.version
    assert d2["promote"] is False and d2["summary"].startswith("UNCHANGED")
    assert len(reg.alias_history(CHAMPION)) == 1


def test_plan_refuses_unpublished_months_and_random_splits(gate_settings: Settings) -> None:
    with pytest.raises(pipeline.PipelineError, match=r"2013-04 have no _SUCCESS manifest.*2013-01, 2013-02, 2013-03"):
        pipeline.plan(gate_settings, "r", {**CONF, "holdout_months": ["2013-04", "2013-04"]})
    with pytest.raises(pipeline.PipelineError, match="must come after"):
        pipeline.plan(gate_settings, "r", {**CONF, "holdout_months": ["2013-02", "2013-02"]})
    with pytest.raises(pipeline.PipelineError, match="unknown run conf"):
        pipeline.plan(gate_settings, "r", {"epoch": 1})
    with pytest.raises(pipeline.PipelineError, match="epochs='3'"):
        pipeline.plan(gate_settings, "r", {**CONF, "epochs": "3"})
    # The ranks' sampler seeds epoch e with seed + e, past 2**64 an overflow in every rank after a whole epoch.
    for seed in (2**64, 2**63):
        with pytest.raises(pipeline.PipelineError, match=rf"seed={seed}: give a whole number from 0 to 2\*\*63 - 1"):
            pipeline.plan(gate_settings, "r", {**CONF, "seed": seed})
    assert pipeline.plan(gate_settings, "r", {**CONF, "seed": 2**63 - 1}).train_config["seed"] == 2**63 - 1
    with pytest.raises(pipeline.PipelineError, match=r"train_months must be \[first, last\]"):
        pipeline.plan(gate_settings, "r", {**CONF, "train_months": "2013-01"})
    assert pipeline.run_key("scheduled__2026-11-23T03:00:00+00:00").startswith("scheduled__2026-11-23t03-00-00-00-00-")


def test_a_champion_that_cannot_be_scored_is_never_replaced_automatically(gate_settings: Settings, tmp_path: Path) -> None:
    reg = ModelRegistry(gate_settings)
    _, r1, _ = run(gate_settings, "manual__old", model(tmp_path, 0.70))
    # The champion becomes unreadable for the evaluator (e.g. an old feature contract).
    broken = reg.register(Path(model(tmp_path, -1.0)["model_ref"]), reg.get(r1.version).lineage,  # type: ignore[arg-type]
                          metrics={"auc": 0.9, "log_loss": 0.2, "brier": 0.1})
    reg.promote(broken.version)
    planned = pipeline.plan(gate_settings, "manual__new", CONF)
    trained = model(tmp_path, 0.95)
    evaluation = pipeline.evaluate(gate_settings, planned, trained)
    assert evaluation.champion["metrics"] is None and "feature contract" in evaluation.champion["error"]
    registered = pipeline.register(gate_settings, planned, trained, evaluation)
    for _attempt in range(2):  # a retried task fails the same way: no silent success
        with pytest.raises(pipeline.PipelineError, match=f"tenfold models promote {registered.version}"):
            pipeline.gate(gate_settings, planned, evaluation, registered)
    assert reg.resolve(CHAMPION) == broken.version and reg.resolve(CHALLENGER) == registered.version
    assert "champion" not in pipeline.comparison_table(evaluation)
    # The cause fixed, the run is cleared from evaluate and the champion scores, better than the challenger: the
    # "NO COMPARISON" record is no decision (taken as one, the run went green and kept the worse challenger marked).
    import dataclasses

    better = {**evaluation.challenger, "auc": 0.99, "log_loss": 0.05, "brier": 0.01}
    scored = dataclasses.replace(evaluation, champion={"version": broken.version, "metrics": better})
    for _attempt in range(2):  # and a retry of that gate finds the decision it recorded
        decided = pipeline.gate(gate_settings, planned, scored, registered)
        assert decided["summary"].startswith("KEEP CHAMPION") and decided["canary"] is False, decided["summary"]
    assert any(isinstance(d.get("champion"), dict) and d["champion_version"] == broken.version
               for d in reg.decisions(registered.version).values())
    # It stays marked challenger (the gate never takes the alias back), but a default rollout now refuses it: the
    # decision it reads compared it with this champion and kept it out (the NO COMPARISON record could not).
    from tenfold.pipelines import rollout_model
    from tenfold.pipelines.common import PipelineInputError

    assert reg.resolve(CHALLENGER) == registered.version
    with pytest.raises(PipelineInputError, match="since it passed the offline gate"):
        rollout_model._refuse_a_challenger_the_gate_kept_out(reg, registered.version, broken.version)

    # A challenger that fails the floors on its own is not marked challenger (rollout_model takes that alias
    # by default): the champion could not be compared, but the floors and baselines still could.
    planned = pipeline.plan(gate_settings, "manual__bad", CONF)
    trained = model(tmp_path, 0.45)
    evaluation = pipeline.evaluate(gate_settings, planned, trained)
    bad = pipeline.register(gate_settings, planned, trained, evaluation)
    with pytest.raises(pipeline.PipelineError, match="fails the gate on its own"):
        pipeline.gate(gate_settings, planned, evaluation, bad)
    assert reg.resolve(CHALLENGER) == registered.version and reg.resolve(CHAMPION) == broken.version


def test_a_champion_trained_on_the_holdout_is_not_compared_on_it(gate_settings: Settings, tmp_path: Path) -> None:
    """Scored on months it learnt from, a champion looks better than it is and a fair challenger is kept out: the
    gate records no comparison instead, and says why."""
    import dataclasses

    reg = ModelRegistry(gate_settings)
    _, r1, _ = run(gate_settings, "manual__old", model(tmp_path, 0.70))
    lineage = reg.get(r1.version).lineage
    assert lineage is not None
    wide = dataclasses.replace(lineage, train_partitions=lineage.train_partitions + lineage.holdout_partitions[:1])
    trained_on_march = reg.register(Path(model(tmp_path, 0.99, "wide")["model_ref"]), wide,
                                    metrics={"auc": 0.99, "log_loss": 0.1, "brier": 0.1})
    reg.promote(trained_on_march.version)
    planned = pipeline.plan(gate_settings, "manual__new", CONF)
    evaluation = pipeline.evaluate(gate_settings, planned, model(tmp_path, 0.8))
    assert evaluation.champion["metrics"] is None, "the champion was scored on a month it was trained on"
    assert "trained on the holdout month(s) 2013-03" in evaluation.champion["error"]


# How a stored champion can be damaged, and a word its error must name.
CHAMPION_DAMAGE: dict[str, tuple[Callable[[ModelRegistry, str], None], str]] = {
    "changed-weights": (lambda reg, v: reg.bucket.blob(reg._name("versions", v, "files", "weights.pt")).upload_from_string(
        b"bit rot"), "weights.pt"),
    "deleted-weights": (lambda reg, v: reg.bucket.blob(reg._name("versions", v, "files", "weights.pt")).delete(),
                        "weights.pt"),
    "garbled-version-file": (lambda reg, v: reg.bucket.blob(reg._name("versions", v, "VERSION.json")).upload_from_string(
        b"\x00 not json"), "VERSION.json"),
    "garbled-lineage": (lambda reg, v: reg.bucket.blob(reg._name("versions", v, "lineage.json")).upload_from_string(
        b"{ truncated"), "lineage.json"),
    "empty-lineage": (lambda reg, v: reg.bucket.blob(reg._name("versions", v, "lineage.json")).upload_from_string(
        b"{}"), "lineage.json"),
}


@pytest.mark.parametrize("damage", list(CHAMPION_DAMAGE))
def test_a_champion_whose_stored_files_are_corrupt_does_not_block_every_training_run(gate_settings: Settings,
                                                                                    tmp_path: Path, damage: str) -> None:
    """Its stored files are changed, missing or unreadable on every read: the run registers the challenger and records
    no comparison (the gate then fails loudly), instead of failing evaluate on every run so no replacement is ever
    registered."""
    reg = ModelRegistry(gate_settings)
    _, r1, _ = run(gate_settings, "manual__old", model(tmp_path, 0.70))
    harm, named = CHAMPION_DAMAGE[damage]
    harm(reg, r1.version)
    planned = pipeline.plan(gate_settings, "manual__new", CONF)
    trained = model(tmp_path, 0.8)
    evaluation = pipeline.evaluate(gate_settings, planned, trained)
    assert evaluation.champion["version"] == r1.version and evaluation.champion["metrics"] is None
    assert "IntegrityError" in evaluation.champion["error"] and named in evaluation.champion["error"]
    assert pipeline.register(gate_settings, planned, trained, evaluation).version != r1.version


def test_a_champion_the_lake_cannot_serve_now_is_retried_not_judged(
    gate_settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A lake error while scoring the champion (a lock, an outage) fails the task for a retry; it is not a verdict
    that the champion cannot be scored (which would let the gate mark the challenger without comparing)."""
    from tenfold.data.lake import PartitionLocked

    run(gate_settings, "manual__old", model(tmp_path, 0.70))
    scored_challenger = pipeline._evaluate_challenger

    def locked(*args: Any) -> dict[str, Any]:
        raise PartitionLocked("features 2013-03 is being published by another writer")

    monkeypatch.setattr(pipeline, "_evaluate_model", locked)
    monkeypatch.setattr(pipeline, "_evaluate_challenger", scored_challenger)
    planned = pipeline.plan(gate_settings, "manual__new", CONF)
    with pytest.raises(PartitionLocked):
        pipeline.evaluate(gate_settings, planned, model(tmp_path, 0.8))


def test_a_training_month_republished_after_the_plan_is_refused_before_lineage_names_it(
    gate_settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The plan pins the training window's content (as the holdout's): evaluate refuses a window re-published
    since, so no registered version's lineage names data its model never saw; the ranks refuse it too."""
    from tenfold.training.config import TrainConfig
    from tenfold.training.data import RepublishedFeaturesError, read_features
    from tenfold.workloads.flights.synthetic import publish_synthetic_features

    lake = Lake.from_settings(gate_settings)
    planned = pipeline.plan(gate_settings, "manual__republished", CONF)
    cfg = TrainConfig.from_dict(planned.train_config)
    assert cfg.data_digest == lake.content_digest(gate_settings.storage.features_table, cfg.partitions)
    read_features(lake, cfg.partitions, table=cfg.table, digest=cfg.data_digest)  # what it planned: read
    publish_synthetic_features(lake, [Partition.parse("2013-01")], 80, seed=7)  # build_features ran again
    with pytest.raises(RepublishedFeaturesError, match="re-published since this training run was planned"):
        read_features(lake, cfg.partitions, table=cfg.table, digest=cfg.data_digest)
    # The train step refuses (no retry) before it launches anything: the ranks refused it, after the group scaled
    # up, on every restart and task retry.
    import tenfold.training.jobs

    launched: list[object] = []
    monkeypatch.setattr(tenfold.training.jobs, "training_job", lambda *a, **k: launched.append(a) or pytest.fail("launched"))
    with pytest.raises(pipeline.PipelineError, match=r"training partitions \['2013-01', '2013-02'\] were re-published"):
        pipeline.train(gate_settings, planned)
    assert launched == []
    with pytest.raises(pipeline.PipelineError, match=r"training partitions \['2013-01', '2013-02'\] were re-published"):
        pipeline.evaluate(gate_settings, planned, model(tmp_path, 0.8))
    with pytest.raises(pipeline.PipelineError, match="training partitions"):
        pipeline.register(gate_settings, planned, model(tmp_path, 0.8), {
            "holdout": {}, "challenger": {}, "baselines": {}})
    assert ModelRegistry(gate_settings).resolve(CHALLENGER) is None


def test_a_cleared_run_neither_takes_the_challenger_back_nor_announces_a_version_again(
    gate_settings: Settings, tmp_path: Path
) -> None:
    """Clearing a train_model run re-runs its gate: a retry may still have to move the alias it recorded, but a
    newer challenger stays, and a version whose canary already ran (rejected here) is not announced again."""
    reg = ModelRegistry(gate_settings)
    run(gate_settings, "manual__champion", model(tmp_path, 0.70))
    planned_a, ev_a, r_a = _registered(gate_settings, "manual__a", model(tmp_path, 0.75))
    assert pipeline.gate(gate_settings, planned_a, ev_a, r_a)["canary"]
    _, r_b, d_b = run(gate_settings, "manual__b", model(tmp_path, 0.76))  # a newer challenger
    assert d_b["canary"] and reg.resolve(CHALLENGER) == r_b.version

    again = pipeline.gate(gate_settings, planned_a, ev_a, r_a)  # run a cleared
    assert reg.resolve(CHALLENGER) == r_b.version and not again["canary"]

    reg.record_decision(r_b.version, "rollout-r-1", {"rejected": True, "summary": "REJECTED by its canary"})
    reg.set_alias(CHALLENGER, r_b.version, reason="as it was")
    cleared = pipeline.gate(gate_settings, pipeline.plan(gate_settings, "manual__b", CONF), *_evaluated(
        gate_settings, "manual__b", model(tmp_path, 0.76)))
    assert not cleared["canary"], "a version whose canary already ran was announced again"


def test_a_retrain_that_reproduced_the_champions_weights_is_unchanged_not_a_failed_comparison(
    gate_settings: Settings, tmp_path: Path
) -> None:
    """The same data and seed give the same weights; the run's own config in meta.json gives another version id.
    Its scores equal the champion's, which the gate would read as "the champion scored with the challenger's
    model": it is reported unchanged instead, and no alias moves."""
    reg = ModelRegistry(gate_settings)
    _, r1, _ = run(gate_settings, "manual__first", model(tmp_path, 0.70, name="first"))
    again = tmp_path / "again"
    again.mkdir()
    for name in ("weights.pt", "preprocessing.json"):
        (again / name).write_bytes((tmp_path / "first" / name).read_bytes())
    (again / "meta.json").write_text(json.dumps({"quality": 0.70, "run": "manual__again"}))
    _, r2, decision = run(gate_settings, "manual__again", {"model_ref": str(again), "train_result": {"steps": 1}})
    assert r2.version != r1.version
    assert decision["summary"].startswith("UNCHANGED") and not decision["promote"] and not decision["canary"]
    assert reg.resolve(CHAMPION) == r1.version == reg.resolve(CHALLENGER)

    # The same weights and preprocessing under another calibration (fitted after training, it changes no weight): not
    # the champion reproduced, so it is compared, not recorded UNCHANGED.
    recalibrated = tmp_path / "recalibrated"
    recalibrated.mkdir()
    for name in ("weights.pt", "preprocessing.json"):
        (recalibrated / name).write_bytes((tmp_path / "first" / name).read_bytes())
    (recalibrated / "meta.json").write_text(json.dumps({"quality": 0.70, "run": "manual__recalibrated", "calibration": {
        "method": "temperature", "temperature": 1.3, "offset": 0.0, "report": {"ece": 0.01}}}))
    _, r3, decision = run(gate_settings, "manual__recalibrated",
                          {"model_ref": str(recalibrated), "train_result": {"steps": 1}})
    assert r3.version not in (r1.version, r2.version)
    assert not decision["summary"].startswith("UNCHANGED") and "checks" in decision, decision["summary"]


def test_of_two_first_runs_the_one_that_loses_the_champion_race_is_not_left_challenger(
        gate_settings: Settings, tmp_path: Path) -> None:
    """Both evaluated with no champion, and both gates read "no champion"; the second to move aliases loses the
    compare-and-set on champion. It set the challenger first, so its version, never compared with the winner,
    stayed the challenger a rollout takes."""
    planned_a, planned_b = (pipeline.plan(gate_settings, f"manual__{r}", CONF) for r in ("a", "b"))
    trained_a, trained_b = model(tmp_path, 0.70), model(tmp_path, 0.75)
    ev_a = pipeline.evaluate(gate_settings, planned_a, trained_a)
    ev_b = pipeline.evaluate(gate_settings, planned_b, trained_b)
    reg_a = pipeline.register(gate_settings, planned_a, trained_a, ev_a)
    reg_b = pipeline.register(gate_settings, planned_b, trained_b, ev_b)

    class Racing(ModelRegistry):
        """B's gate reads the champion (none yet); run A's whole gate completes right after that read."""
        raced = False

        def resolve(self, alias: str) -> str | None:
            value = super().resolve(alias)
            if alias == CHAMPION and not self.raced:
                self.raced = True
                assert pipeline.gate(gate_settings, planned_a, ev_a, reg_a)["promote"]
            return value

    racing = Racing(gate_settings)
    with pytest.raises(AliasConflict):
        pipeline.gate(gate_settings, planned_b, ev_b, reg_b, registry=racing)
    assert racing.raced
    reg = ModelRegistry(gate_settings)
    assert reg.resolve(CHAMPION) == reg_a.version
    assert reg.resolve(CHALLENGER) == reg_a.version, "the loser of the race was left challenger"


def test_a_retried_register_of_a_model_in_a_bucket_keeps_the_first_attempts_profile(
        gate_settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """In dev and prod the trained model is a gs:// prefix, and each register attempt materializes it afresh; the
    profile the first attempt computed was in its work folder only, so a retry (on another worker) computed it
    again, and a profile that differs in a last digit is another content id: the same model registered twice."""
    import uuid

    from tenfold.model_files import REFERENCE_PROFILE_FILE
    from tenfold.storage import gcs_client

    pinned: list[str | None] = []

    def computed_again(model_dir: Path, *args: Any, digest: str | None = None) -> None:  # a recompute: other bytes
        pinned.append(digest)
        if not (model_dir / REFERENCE_PROFILE_FILE).exists():
            (model_dir / REFERENCE_PROFILE_FILE).write_text(json.dumps({"computed": uuid.uuid4().hex}))

    monkeypatch.setattr(pipeline, "ensure_profile", computed_again)
    reg = ModelRegistry(gate_settings)
    local = Path(model(tmp_path, 0.7)["model_ref"])
    bucket = gcs_client(gate_settings).bucket(reg.bucket_name)
    for f in local.iterdir():
        bucket.blob(f"trained/run-x/{f.name}").upload_from_filename(str(f))
    trained = {"model_ref": f"gs://{reg.bucket_name}/trained/run-x", "train_result": {"steps": 1}}
    planned = pipeline.plan(gate_settings, "manual__bucket", CONF)
    evaluation = pipeline.evaluate(gate_settings, planned, trained)
    first = pipeline.register(gate_settings, planned, trained, evaluation)
    retried = pipeline.register(gate_settings, planned, trained, evaluation)  # the task retried, its work folder gone
    assert retried.version == first.version
    assert len(reg.list_versions()) == 1
    # The profile is read pinned to the content the model was trained on (a month re-published since is refused).
    assert pinned and set(pinned) == {planned.train_config["data_digest"]} and pinned[0] is not None
    assert bucket.blob(f"trained/run-x/{REFERENCE_PROFILE_FILE}").exists()


def test_a_holdout_republished_while_the_models_are_scored_or_before_register_is_refused(
        gate_settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The holdout digest was checked once, before scoring: a re-publish while the champion was being scored gave
    the two models' scores on different data under one holdout identity, and register named the new manifests in
    lineage beside metrics measured on the old ones."""
    from tenfold.workloads.flights.synthetic import publish_synthetic_features

    lake = Lake.from_settings(gate_settings)
    run(gate_settings, "manual__first", model(tmp_path, 0.70))  # a champion to score
    planned = pipeline.plan(gate_settings, "manual__moving", CONF)
    scored = pipeline._evaluate_model

    def republished_meanwhile(model_dir: Path, *args: Any) -> dict[str, Any]:
        metrics = scored(model_dir, *args)
        publish_synthetic_features(lake, [Partition.parse("2013-03")], 70, seed=11)  # build_features ran again
        return metrics

    monkeypatch.setattr(pipeline, "_evaluate_model", republished_meanwhile)
    with pytest.raises(pipeline.PipelineError, match=r"holdout partitions \['2013-03'\] were re-published"):
        pipeline.evaluate(gate_settings, planned, model(tmp_path, 0.8))

    monkeypatch.setattr(pipeline, "_evaluate_model", scored)
    planned = pipeline.plan(gate_settings, "manual__later", CONF)
    trained = model(tmp_path, 0.8)
    evaluation = pipeline.evaluate(gate_settings, planned, trained)
    publish_synthetic_features(lake, [Partition.parse("2013-03")], 60, seed=12)
    with pytest.raises(pipeline.PipelineError, match="holdout partitions"):
        pipeline.register(gate_settings, planned, trained, evaluation)
    assert len(ModelRegistry(gate_settings).list_versions()) == 1  # the first run's only


def _gate_dies_before_the_challenger(settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                     quality: float) -> tuple[Any, Any, Any]:
    """Run A trains, evaluates and registers; its gate records its decision and dies before moving challenger.
    Returns A's plan, evaluation and registration, for its gate's retry."""
    planned, evaluation, registered = _registered(settings, "manual__a", model(tmp_path, quality))
    real = ModelRegistry.set_alias

    def dies_before_challenger(self: ModelRegistry, alias: str, version: str, **kwargs: Any) -> Any:
        if alias == CHALLENGER:
            raise RuntimeError("the worker died")
        return real(self, alias, version, **kwargs)

    monkeypatch.setattr(ModelRegistry, "set_alias", dies_before_challenger)
    with pytest.raises(RuntimeError, match="died"):
        pipeline.gate(settings, planned, evaluation, registered)
    monkeypatch.setattr(ModelRegistry, "set_alias", real)
    return planned, evaluation, registered


def test_a_first_run_retried_after_dying_between_promote_and_challenger_leaves_a_later_challenger_alone(
        gate_settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run A promotes the first model and dies before marking it challenger; run B then evaluates against it,
    passes and becomes challenger; A's gate is retried. It must not take the challenger back from B (its version
    is the champion already)."""
    planned_a, ev_a, reg_a = _gate_dies_before_the_challenger(gate_settings, tmp_path, monkeypatch, 0.70)
    reg = ModelRegistry(gate_settings)
    assert reg.resolve(CHAMPION) == reg_a.version and reg.resolve(CHALLENGER) is None

    _, reg_b, decision_b = run(gate_settings, "manual__b", model(tmp_path, 0.80))
    assert decision_b["promote"] and reg.resolve(CHALLENGER) == reg_b.version
    pipeline.gate(gate_settings, planned_a, ev_a, reg_a)  # A's task retried
    assert reg.resolve(CHALLENGER) == reg_b.version, "the retry took the challenger back from a later run"
    assert reg.resolve(CHAMPION) == reg_a.version


class _ListsAnEscapingName:
    """The storage client with one more listed object whose name leads out of the prefix. Real GCS stores such names
    ("a/../../x", "a//x"); the emulator normalizes them on upload, so the listing is where a test can add one."""

    def __init__(self, real: Any, extra: str) -> None:
        self.real, self.extra = real, extra

    def list_blobs(self, bucket: str, prefix: str) -> list[Any]:
        from types import SimpleNamespace

        def download_to_filename(path: str) -> None:
            Path(path).write_bytes(b"not part of the model")

        return [*self.real.list_blobs(bucket, prefix=prefix),
                SimpleNamespace(name=f"{prefix}{self.extra}", size=21, download_to_filename=download_to_filename)]


@pytest.mark.parametrize("extra", ["../../escaped.txt", "/ABS/escaped.txt"])
def test_a_trained_model_object_named_outside_its_folder_is_refused_not_written_there(
        local_settings: Settings, tmp_path: Path, extra: str) -> None:
    """materialize joined each object's name under the model's gs:// prefix to the local folder as given: an object
    named "<prefix>/../../x" (or "<prefix>//abs/x") was written outside the folder."""
    import uuid

    from tenfold.storage import gcs_client

    bucket_name = local_settings.storage.models_bucket
    prefix = f"trained/run-{uuid.uuid4().hex[:8]}"
    bucket = gcs_client(local_settings).bucket(bucket_name)
    for f in Path(model(tmp_path, 0.7)["model_ref"]).iterdir():
        bucket.blob(f"{prefix}/{f.name}").upload_from_filename(str(f))
    client = _ListsAnEscapingName(gcs_client(local_settings), extra.replace("/ABS", str(tmp_path)))
    (tmp_path / "w" / "a").mkdir(parents=True)
    with pytest.raises(pipeline.PipelineError, match=r"escaped\.txt whose name leads outside the model folder"):
        pipeline.materialize(local_settings, f"gs://{bucket_name}/{prefix}", tmp_path / "w" / "a" / "model",
                             storage_client=client)
    assert not (tmp_path / "escaped.txt").exists() and not (tmp_path / "w" / "escaped.txt").exists()
    assert list((tmp_path / "w" / "a").iterdir()) == []  # nothing half-written
    # The same listing without the extra object materializes the model.
    assert (pipeline.materialize(local_settings, f"gs://{bucket_name}/{prefix}", tmp_path / "w" / "a" / "model")
            / "meta.json").is_file()


def test_a_new_run_that_reproduces_a_version_its_canary_rejected_does_not_mark_or_announce_it(
        gate_settings: Settings, tmp_path: Path) -> None:
    """Same data, same seed: a weekly run registers the very version a canary rejected. Its fresh decision passes the
    offline gate, but the version is not marked challenger again and no rollout is announced for it (the rollout
    would refuse it)."""
    reg = ModelRegistry(gate_settings)
    _, r_champion, _ = run(gate_settings, "manual__champion", model(tmp_path, 0.70))
    _, r_a, d_a = run(gate_settings, "manual__a", model(tmp_path, 0.75, name="a"))
    assert d_a["canary"] and reg.resolve(CHALLENGER) == r_a.version
    reg.record_decision(r_a.version, "rollout-r-1", {"rejected": True, "summary": "REJECTED by its canary"})
    reg.set_alias(CHALLENGER, r_champion.version, action="rollback", reason="its canary rejected it")

    _, r_again, d_again = run(gate_settings, "manual__weekly", model(tmp_path, 0.75, name="a"))
    assert r_again.version == r_a.version  # the same content, the same version
    assert d_again["promote"] and not d_again["canary"]
    assert "a canary rollout already rejected" in d_again["summary"]
    assert reg.resolve(CHALLENGER) == r_champion.version


def test_a_champion_whose_pointer_was_deleted_is_missing_not_the_first_model(gate_settings: Settings,
                                                                              tmp_path: Path) -> None:
    """The refusal of a damaged champion pointer says to delete it, then promote. A run between the two found no
    pointer and took itself for the first model ever: promoted by the floors alone, never compared with the real
    champion nor canaried, and marked challenger."""
    reg = ModelRegistry(gate_settings)
    _, r1, d1 = run(gate_settings, "manual__1", model(tmp_path, 0.70))
    assert d1["promote"] and d1["champion_version"] is None  # the first model ever: the floors alone promote it
    assert reg.resolve(CHAMPION) == r1.version == reg.resolve(CHALLENGER)
    reg.bucket.blob(reg._name("aliases", CHAMPION)).delete()  # the damaged pointer's repair, half done
    assert reg.resolve(CHAMPION) is None

    planned, evaluation, registered = _registered(gate_settings, "manual__2", model(tmp_path, 0.71))
    assert evaluation.champion is None
    with pytest.raises(pipeline.PipelineError, match=rf"the champion alias is missing \(gs://.*/aliases/champion holds "
                                                     rf"no pointer\) but its history shows it was set \(last to "
                                                     rf"{r1.version}\).*{registered.version} was neither promoted.*no "
                                                     r"alias moved\. Set the champion again with `tenfold models "
                                                     r"promote <version>` \(or `tenfold models rollback --to "
                                                     rf"<version>`, e\.g\. --to {r1.version}\), then run"):
        pipeline.gate(gate_settings, planned, evaluation, registered)
    assert reg.resolve(CHAMPION) is None and reg.resolve(CHALLENGER) == r1.version  # no alias moved
    assert [h.version for h in reg.alias_history(CHAMPION)] == [r1.version]
    assert reg.exists(registered.version) and reg.decisions(registered.version) == {}  # registered, nothing decided

    # Set again as the refusal says, a new run is compared with the champion and waits for its canary.
    reg.rollback(to=r1.version, reason="pointer repaired")
    _, r3, d3 = run(gate_settings, "manual__3", model(tmp_path, 0.75))
    assert d3["champion_version"] == r1.version and d3["promote"] and d3["canary"]
    assert reg.resolve(CHAMPION) == r1.version and reg.resolve(CHALLENGER) == r3.version


def test_a_gate_retried_after_dying_before_the_alias_leaves_a_challenger_set_since_alone(
        gate_settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run A's gate records PROMOTE and dies before moving challenger; run B then passes and becomes challenger; A's
    gate is retried. The newer challenger stays, and A announces no rollout."""
    reg = ModelRegistry(gate_settings)
    run(gate_settings, "manual__champion", model(tmp_path, 0.70))
    planned_a, ev_a, r_a = _gate_dies_before_the_challenger(gate_settings, tmp_path, monkeypatch, 0.75)
    _, r_b, d_b = run(gate_settings, "manual__b", model(tmp_path, 0.76))
    assert d_b["canary"] and reg.resolve(CHALLENGER) == r_b.version

    again = pipeline.gate(gate_settings, planned_a, ev_a, r_a)  # A's task retried
    assert reg.resolve(CHALLENGER) == r_b.version, "the retry took the challenger back from a later run"
    assert not again["canary"]


def _b_gates_while_a_records(monkeypatch: pytest.MonkeyPatch, settings: Settings, b: tuple[Any, Any, Any],
                             a_version: str) -> None:
    """Run B's gate (which passes and moves the challenger) right after A's gate records its decision."""
    real = ModelRegistry.record_decision
    moved: list[str] = []

    def b_moves_meanwhile(self: ModelRegistry, version: str, key: str, body: Any) -> bool:
        recorded = real(self, version, key, body)
        if version == a_version and not moved:
            moved.append(key)
            assert pipeline.gate(settings, *b)["canary"]
        return recorded

    monkeypatch.setattr(ModelRegistry, "record_decision", b_moves_meanwhile)


def test_of_two_gates_deciding_at_once_the_second_to_move_the_challenger_does_not_take_it(
        gate_settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Both runs read the same challenger; B moves it while A decides. A's move is a compare-and-swap from what it
    read: it loses, leaves B's challenger, and announces no rollout."""
    reg = ModelRegistry(gate_settings)
    run(gate_settings, "manual__champion", model(tmp_path, 0.70))
    planned_a, ev_a, r_a = _registered(gate_settings, "manual__a", model(tmp_path, 0.75))
    planned_b, ev_b, r_b = _registered(gate_settings, "manual__b", model(tmp_path, 0.76))
    _b_gates_while_a_records(monkeypatch, gate_settings, (planned_b, ev_b, r_b), r_a.version)
    decided = pipeline.gate(gate_settings, planned_a, ev_a, r_a)
    assert reg.resolve(CHALLENGER) == r_b.version and decided["promote"] and not decided["canary"]
    # What `tenfold models show` prints for A does not stop at "-> challenger", which promised a canary: it says A
    # was not marked, and by whom.
    summaries = {key: d["summary"] for key, d in reg.decisions(r_a.version).items()}
    (decision_key,) = (k for k in summaries if not k.endswith(".not-marked"))
    assert "-> challenger" in summaries[decision_key]
    assert summaries[f"{decision_key}.not-marked"].startswith(
        f"not marked challenger after all: the challenger is {r_b.version}, moved by another run's gate")
    assert "not marked challenger after all" in decided["summary"]


def test_a_gate_retried_after_losing_the_challenger_to_another_gate_keeps_to_its_not_marked_record(
        gate_settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """B moves the challenger before A stamps its decision; A's move loses and A records that no rollout follows. A's
    gate retried (cleared, or the task retried) took the alias from B, whose rollout was announced, and returned
    canary: its record said both "-> challenger" and "no rollout follows"."""
    reg = ModelRegistry(gate_settings)
    run(gate_settings, "manual__champion", model(tmp_path, 0.70))
    planned_a, ev_a, r_a = _registered(gate_settings, "manual__a", model(tmp_path, 0.75))
    planned_b, ev_b, r_b = _registered(gate_settings, "manual__b", model(tmp_path, 0.76))
    real_same = pipeline._same_model
    moved: list[bool] = []

    def b_gates_first(registry: ModelRegistry, a: str, b: str) -> bool:  # before A's decision is stamped
        if a == r_a.version and not moved:
            moved.append(True)
            assert pipeline.gate(gate_settings, planned_b, ev_b, r_b)["canary"]
        return real_same(registry, a, b)

    monkeypatch.setattr(pipeline, "_same_model", b_gates_first)
    first = pipeline.gate(gate_settings, planned_a, ev_a, r_a)
    assert moved and not first["canary"] and reg.resolve(CHALLENGER) == r_b.version
    again = pipeline.gate(gate_settings, planned_a, ev_a, r_a)
    assert reg.resolve(CHALLENGER) == r_b.version, "the retried gate took the challenger from B"
    assert not again["canary"] and "not marked challenger after all" in again["summary"]


def test_a_gate_that_could_not_score_the_champion_does_not_take_the_challenger_another_gate_moved_meanwhile(
        gate_settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A's evaluate could not score the champion (NO COMPARISON); B compared, passed and moved the challenger while A
    decided. A set the alias unconditionally: B's announced rollout then took A's uncompared version by default."""
    import dataclasses

    reg = ModelRegistry(gate_settings)
    _, first, _ = run(gate_settings, "manual__champion", model(tmp_path, 0.70))
    planned_a, ev_a, r_a = _registered(gate_settings, "manual__a", model(tmp_path, 0.75))
    planned_b, ev_b, r_b = _registered(gate_settings, "manual__b", model(tmp_path, 0.76))
    unscored = dataclasses.replace(ev_a, champion={"version": first.version, "metrics": None, "error": "unreadable"})
    real = ModelRegistry.record_decision
    _b_gates_while_a_records(monkeypatch, gate_settings, (planned_b, ev_b, r_b), r_a.version)
    with pytest.raises(pipeline.PipelineError, match=f"{r_a.version} passes the floors and baselines, is registered "
                                                     "and left unmarked"):
        pipeline.gate(gate_settings, planned_a, unscored, r_a)
    assert reg.resolve(CHALLENGER) == r_b.version
    monkeypatch.setattr(ModelRegistry, "record_decision", real)
    # With nobody moving it meanwhile, such a gate still marks its version (as before).
    planned_c, ev_c, r_c = _registered(gate_settings, "manual__c", model(tmp_path, 0.77))
    with pytest.raises(pipeline.PipelineError, match="is registered and marked challenger but was not promoted"):
        pipeline.gate(gate_settings, planned_c, dataclasses.replace(ev_c, champion=unscored.champion), r_c)
    assert reg.resolve(CHALLENGER) == r_c.version
    # The alias's history says what it passed: no comparison with the champion, not "the offline gate".
    assert reg.alias_history(CHALLENGER)[-1].reason.endswith("the champion could not be scored (NO COMPARISON)")


def test_folder_placeholders_in_a_trained_models_prefix_are_skipped_the_models_own_included(
        local_settings: Settings, tmp_path: Path) -> None:
    """A console's "create folder" leaves an empty object named like the folder: the model folder's own
    ("<prefix>/", whose name under the prefix is empty) was refused as an escaping name."""
    import uuid
    from types import SimpleNamespace

    from tenfold.storage import gcs_client

    bucket_name = local_settings.storage.models_bucket
    prefix = f"trained/run-{uuid.uuid4().hex[:8]}"
    bucket = gcs_client(local_settings).bucket(bucket_name)
    for f in Path(model(tmp_path, 0.7)["model_ref"]).iterdir():
        bucket.blob(f"{prefix}/{f.name}").upload_from_filename(str(f))
    real = gcs_client(local_settings)

    class WithPlaceholders:
        def list_blobs(self, bucket: str, prefix: str) -> list[Any]:
            return [SimpleNamespace(name=prefix, size=0), SimpleNamespace(name=f"{prefix}sub/", size=0),
                    *real.list_blobs(bucket, prefix=prefix)]

    got = pipeline.materialize(local_settings, f"gs://{bucket_name}/{prefix}", tmp_path / "out" / "model",
                               storage_client=WithPlaceholders())
    assert sorted(p.name for p in got.iterdir()) == ["meta.json", "preprocessing.json", "weights.pt"]


def test_the_scheduled_run_after_a_drift_started_champion_holds_out_only_what_the_champion_never_learnt(
        make_settings: Callable[..., Settings], local_settings: Settings, monkeypatch: pytest.MonkeyPatch,
        tmp_path: Path) -> None:
    """A drift-started run holds out only the newest month, and its version became champion. The next scheduled run
    held out the three newest months, two of which the champion had learnt: it could not be scored, and every weekly
    run failed its gate (moving the challenger to an uncompared version) until newer months were published."""
    from tenfold.workloads.flights.synthetic import publish_synthetic_features

    s = make_settings(on=local_settings)
    publish_synthetic_features(Lake.from_settings(s), month_range("2013-01", "2013-12"), 30)

    def evaluate_model(model_dir: Path, lake: Lake, table: str, parts: list[Partition], workload: str) -> dict[str, Any]:
        quality = json.loads((model_dir / "meta.json").read_text())["quality"]
        return {"auc": quality, "log_loss": 0.6 - quality / 2, "brier": 0.2, "rows": 50}

    monkeypatch.setattr(pipeline, "_evaluate_model", evaluate_model)
    monkeypatch.setattr(pipeline, "_evaluate_challenger", lambda model_dir, lake, table, train, holdout: (
        evaluate_model(model_dir, lake, table, holdout, s.workload), {"rate": {"auc": 0.6, "log_loss": 0.5, "brier": 0.2}}))
    monkeypatch.setattr(pipeline, "ensure_profile", lambda *args, **kwargs: None)
    drift = pipeline.plan(s, "asset_triggered__drift", {}, drifted=["2013-12"])
    assert drift.holdout_months == ("2013-12",) and drift.train_months[-1] == "2013-11"
    trained = model(tmp_path, 0.8, "drift")
    registered = pipeline.register(s, drift, trained, pipeline.evaluate(s, drift, trained))
    ModelRegistry(s).promote(registered.version)  # as its canary would

    weekly = pipeline.plan(s, "scheduled__monday", {})
    assert weekly.holdout_months == ("2013-12",)  # not 2013-10..12, two of which the champion learnt
    evaluation = pipeline.evaluate(s, weekly, model(tmp_path, 0.81, "weekly"))
    assert evaluation.champion["metrics"] is not None, evaluation.champion


def test_a_champion_promoted_after_the_plan_that_learnt_the_holdout_fails_the_run_and_moves_no_alias(
        gate_settings: Settings, tmp_path: Path) -> None:
    """A drift-started run D trained while the weekly run S waited; S's plan held out beside the champion C, then D's
    rollout promoted D, which had learnt S's holdout. S's evaluate recorded the champion as unscorable ("NO
    COMPARISON"), its gate marked S challenger against a champion it was never compared with, and the default
    rollout took it. The run now fails at evaluate, naming both champions, and no alias moves."""
    import dataclasses

    from airflow.sdk.exceptions import AirflowFailException

    from tenfold.pipelines.common import run_step

    reg = ModelRegistry(gate_settings)
    _, c, _ = run(gate_settings, "manual__c", model(tmp_path, 0.70))  # learnt 2013-01..02
    weekly = pipeline.plan(gate_settings, "scheduled__weekly", {"feedback_weight": 0, "epochs": 1})
    assert weekly.holdout_months == ("2013-03",) and weekly.champion_at_plan == {"version": c.version}
    lineage = reg.get(c.version).lineage
    assert lineage is not None
    through_march = dataclasses.replace(lineage, train_partitions=lineage.train_partitions + lineage.holdout_partitions)
    d = reg.register(Path(model(tmp_path, 0.8, "drift")["model_ref"]), through_march,
                     metrics={"auc": 0.8, "log_loss": 0.2, "brier": 0.2})
    reg.promote(d.version, expected=c.version, reason="D's canary passed (what rollout_model does)")

    trained = model(tmp_path, 0.75, "weekly")
    for _attempt in range(2):  # a retried evaluate holds out the same month: the same refusal
        with pytest.raises(AirflowFailException, match=(
                f"the champion moved from {c.version} to {d.version} after this run planned its holdout \\(2013-03\\), "
                f"and {d.version} was trained on 2013-03 of it.*no alias moved; run train_model again")):
            run_step(pipeline.evaluate, gate_settings, weekly.to_xcom(), trained)
    assert reg.resolve(CHAMPION) == d.version and reg.resolve(CHALLENGER) == c.version
    assert sorted(m.version for m in reg.list_versions()) == sorted((c.version, d.version))  # nothing registered

    # A plan from before the champion was recorded still loads, and evaluates as it did (no comparison).
    older = {k: v for k, v in weekly.to_xcom().items() if k != "champion_at_plan"}
    evaluation = pipeline.evaluate(gate_settings, older, trained)
    assert evaluation.champion["metrics"] is None and "trained on the holdout month(s) 2013-03" in evaluation.champion["error"]


def test_a_gate_with_no_comparison_against_a_champion_replaced_since_marks_nothing(
        gate_settings: Settings, tmp_path: Path) -> None:
    """Evaluate could not score the champion C; D was promoted before the gate. The gate's NO COMPARISON branch ran
    before its check of the champion and marked the run's version challenger, which the default rollout then took
    against D, a champion it was never compared with."""
    import dataclasses

    reg = ModelRegistry(gate_settings)
    _, c, _ = run(gate_settings, "manual__c", model(tmp_path, 0.70))
    planned, evaluation, registered = _registered(gate_settings, "manual__s", model(tmp_path, 0.75))
    unscored = dataclasses.replace(evaluation, champion={"version": c.version, "metrics": None, "error": "unreadable"})
    d = reg.register(Path(model(tmp_path, 0.8, "d")["model_ref"]), reg.get(c.version).lineage,  # type: ignore[arg-type]
                     metrics={"auc": 0.8, "log_loss": 0.2, "brier": 0.2})
    reg.promote(d.version, reason="meanwhile")
    with pytest.raises(AliasConflict, match=f"the champion moved from {c.version} to {d.version}.*comparison is stale"):
        pipeline.gate(gate_settings, planned, unscored, registered)
    assert reg.resolve(CHALLENGER) == c.version and reg.decisions(registered.version) == {}


def test_a_champion_of_another_workload_is_refused_before_any_alias_moves(
        gate_settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two workloads on one registry (docs/workloads.md's step 7 did not name the prefix): the other's champion
    could not be scored, so evaluate recorded NO COMPARISON and the gate marked this run's model `challenger` (which
    the other workload's rollout then takes), advising to rebuild features, which cannot help. Refused in evaluate,
    the run fails before register and gate. The same workload under another of its names is no other workload."""
    monkeypatch.syspath_prepend(str(Path(__file__).parents[2] / "workloads"))  # tests/workloads/tiny_workload.py
    reg = ModelRegistry(gate_settings)
    _, first, _ = run(gate_settings, "manual__first", model(tmp_path, 0.70))

    def champion_of(workload: str, quality: float) -> str:
        folder = Path(model(tmp_path, quality, name=f"champion-{quality}")["model_ref"])
        (folder / "meta.json").write_text(json.dumps({"quality": quality, "workload": workload}))
        version = reg.register(folder, reg.get(first.version).lineage,  # type: ignore[arg-type]
                               metrics={"auc": quality, "log_loss": 0.4, "brier": 0.1}).version
        reg.promote(version)
        return version

    champion_of("tiny_workload:WORKLOAD", 0.80)
    planned = pipeline.plan(gate_settings, "manual__second", CONF)
    with pytest.raises(pipeline.ForeignChampion) as refused:
        pipeline.evaluate(gate_settings, planned, model(tmp_path, 0.95))
    said = str(refused.value)
    assert "workload 'tiny_workload:WORKLOAD'" in said and "workload 'flights'" in said
    assert "TENFOLD_STORAGE__REGISTRY_PREFIX" in said and not refused.value.retryable

    ours = champion_of("tenfold.workloads.flights:WORKLOAD", 0.81)  # flights, by its module path
    evaluation = pipeline.evaluate(gate_settings, pipeline.plan(gate_settings, "manual__third", CONF),
                                   model(tmp_path, 0.95))
    assert evaluation.champion["version"] == ours and evaluation.champion["metrics"]["auc"] == 0.81  # scored


def _promote_a_champion_of(settings: Settings, tmp_path: Path, workload: Any) -> str:
    """A champion whose meta.json names ``workload``, promoted over a first run's version."""
    reg = ModelRegistry(settings)
    _, first, _ = run(settings, "manual__first", model(tmp_path, 0.70))
    folder = Path(model(tmp_path, 0.80, name="champion")["model_ref"])
    (folder / "meta.json").write_text(json.dumps({"quality": 0.80, "workload": workload}))
    version = reg.register(folder, reg.get(first.version).lineage,  # type: ignore[arg-type]
                           metrics={"auc": 0.80, "log_loss": 0.4, "brier": 0.1}).version
    reg.promote(version)
    return version


@pytest.mark.parametrize("theirs", ["nosuch_mod:WORKLOAD", "other", 7])
def test_a_champion_of_a_workload_not_installed_here_is_refused_before_any_alias_moves(
        gate_settings: Settings, tmp_path: Path, theirs: Any) -> None:
    """Two deployments share a registry, and the other's workload module is not installed in this one (the usual
    case): telling the workloads apart by importing the champion's failed, the refusal was skipped, the champion
    could not be loaded (NO COMPARISON) and the gate marked this run's model challenger in the shared registry."""
    reg = ModelRegistry(gate_settings)
    champion = _promote_a_champion_of(gate_settings, tmp_path, theirs)
    before = (reg.resolve(CHALLENGER), sorted(m.version for m in reg.list_versions()))
    planned = pipeline.plan(gate_settings, "manual__second", CONF)
    with pytest.raises(pipeline.ForeignChampion, match=f"champion {champion} .* is a model of workload {theirs!r}"):
        pipeline.evaluate(gate_settings, planned, model(tmp_path, 0.95))
    assert reg.resolve(CHAMPION) == champion
    assert (reg.resolve(CHALLENGER), sorted(m.version for m in reg.list_versions())) == before  # nothing moved


def test_the_workload_a_champion_names_is_never_imported(
        gate_settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Comparing the workloads imported the module the champion's meta.json names (docs/architecture.md: a meta.json
    never chooses a module to import): whoever could write the registry chose what the training worker ran."""
    import sys

    monkeypatch.delitem(sys.modules, "this", raising=False)
    champion = _promote_a_champion_of(gate_settings, tmp_path, "this:x")
    with pytest.raises(pipeline.ForeignChampion, match=f"champion {champion} .* is a model of workload 'this:x'"):
        pipeline.evaluate(gate_settings, pipeline.plan(gate_settings, "manual__second", CONF), model(tmp_path, 0.95))
    assert "this" not in sys.modules


def test_the_champion_is_scored_as_a_model_of_this_runs_workload(
        local_settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The champion's folder came from the registry: loaded without this run's workload, its meta.json chose the
    module to import. Loaded with it, a model of another workload is refused before anything is imported."""
    import sys

    from tenfold.model.io import META_VERSION, ModelLoadError

    monkeypatch.delitem(sys.modules, "this", raising=False)
    folder = tmp_path / "champion"
    folder.mkdir()
    (folder / "meta.json").write_text(json.dumps({"version": META_VERSION, "workload": "this:x"}))
    lake = Lake.from_settings(local_settings)
    with pytest.raises(ModelLoadError, match="it is a model of workload 'this:x', and this platform runs 'flights'"):
        _SCORE_CHAMPION(folder, lake, local_settings.storage.features_table, [Partition.parse("2013-03")],
                        local_settings.workload)
    assert "this" not in sys.modules


def test_a_local_plan_records_the_number_of_ranks_so_every_try_uses_it(gate_settings: Settings) -> None:
    """Planned without nproc, each try took settings.training.nproc_per_node when it ran: changed between two tries,
    the retry's ranks met checkpoints of another world size in the same folder, refused on every try and clear."""
    assert pipeline.plan(gate_settings, "manual__ranks", CONF).nproc == gate_settings.training.nproc_per_node
    assert pipeline.plan(gate_settings, "manual__ranks-conf", {**CONF, "nproc": 1}).nproc == 1
