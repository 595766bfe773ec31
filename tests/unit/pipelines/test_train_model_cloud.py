"""The dev/prod train step at the Compute Engine client boundary.

Compute Engine has no emulator, so the instance-group client is a fake that records every call and
plays the training nodes (on resize up it writes the run's completion marker, and on success the
model, to the artifacts bucket as the real nodes do). Everything else is real: the settings, the GCS
emulator and storage client, ``tenfold.training.fleet.run_training`` and the pipeline step.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from tenfold.config import Settings
from tenfold.config.settings import build_settings
from tenfold.data.lake import Lake, month_range
from tenfold.pipelines import train_model as pipeline
from tenfold.storage import gcs_client

# A batch two nodes can fill from the window's 600 rows (the default 512 x 2 cannot: refused before the group starts).
CONF = {"train_months": ["2013-01", "2013-02"], "holdout_months": ["2013-03", "2013-03"], "epochs": 1, "batch_size": 64}


class FakeTrainingGroup:
    """``RegionInstanceGroupManagersClient`` stand-in; ``outcome`` is what the nodes report. ``metadata`` is the
    all-instances metadata, which ``patch`` sets key by key and ``get`` returns, as the API does (the run that holds
    the group is read from it)."""

    def __init__(self, settings: Settings, outcome: str, *, fail_get: bool = False) -> None:
        self.settings, self.outcome, self.fail_get = settings, outcome, fail_get
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.size = 0
        self.storage = gcs_client(settings)
        self.metadata: dict[str, str] = {}

    @property
    def run_id(self) -> str | None:
        from tenfold.training.fleet import RUN_ID_KEY

        return self.metadata.get(RUN_ID_KEY)

    def get(self, **kw: Any) -> Any:
        self.calls.append(("get", kw))
        if self.fail_get and self.size > 0:  # the API goes away while the run is waited for
            raise ConnectionError("compute API unavailable")
        return SimpleNamespace(target_size=self.size, status=SimpleNamespace(is_stable=True),
                               all_instances_config=SimpleNamespace(properties=SimpleNamespace(metadata=dict(self.metadata))))

    def patch(self, **kw: Any) -> Any:
        self.calls.append(("patch", kw))
        self.metadata.update(dict(kw["instance_group_manager_resource"].all_instances_config.properties.metadata))
        return None

    def held_by(self, run_id: str, run_key: str, *, size: int, started_ago_s: float = 60.0) -> FakeTrainingGroup:
        """The group as a try of run ``run_id`` (DAG run ``run_key``) left it when it was SIGKILLed with ``size`` VMs
        up, ``started_ago_s`` ago: no marker, its run in the metadata."""
        import time

        from tenfold.training.fleet import ATTEMPT_KEY, RUN_ID_KEY, RUN_KEY_KEY, TRAIN_ARGS_KEY

        self.size = size
        self.metadata = {RUN_ID_KEY: run_id, TRAIN_ARGS_KEY: "[]", RUN_KEY_KEY: run_key,
                         ATTEMPT_KEY: f"{int(time.time() - started_ago_s)}-abc123"}
        return self

    def resize(self, **kw: Any) -> Any:
        self.calls.append(("resize", kw))
        self.size = kw["size"]
        if self.size > 0 and self.outcome != "silent":
            self._nodes_run()
        return None

    def _nodes_run(self) -> None:
        from tenfold.training.fleet import marker_name, run_folder

        bucket = self.storage.bucket(self.settings.storage.artifacts_bucket)
        run_id = self.run_id
        assert run_id is not None, "the group was resized before the run was set in its metadata"
        if self.outcome == "succeeded":
            for name in ("meta.json", "weights.pt", "preprocessing.json"):
                bucket.blob(f"{run_folder(self.settings, run_id)}/out/model/{name}").upload_from_string(f"{name} bytes")
            # what the worker's rank 0 writes beside the model (tenfold.training.worker)
            bucket.blob(f"{run_folder(self.settings, run_id)}/out/train_result.json").upload_from_string(json.dumps(
                {"steps": 12, "best_epoch": 1, "feedback": {"rows": 150, "in_validation_days": 20}}))
        bucket.blob(marker_name(self.settings, run_id)).upload_from_string(
            json.dumps({"status": self.outcome, "exit_code": 0 if self.outcome == "succeeded" else 1}))

    @property
    def resizes(self) -> list[int]:
        return [kw["size"] for name, kw in self.calls if name == "resize"]


@pytest.fixture
def dev_settings(make_settings: Callable[..., Settings], gcs_emulator: str) -> Settings:
    from tenfold.local import ensure_buckets
    from tenfold.workloads.flights.synthetic import publish_synthetic_features

    # dev's names, its storage on the GCS emulator, and a lake of this test's own.
    settings = make_settings(on=build_settings("dev", project_id="tenfold-test-project"), storage={"emulator_host": gcs_emulator})
    ensure_buckets(settings)
    publish_synthetic_features(Lake.from_settings(settings), month_range("2013-01", "2013-03"), 300)
    return settings


def _plan(settings: Settings, name: str, conf: dict[str, Any] = CONF) -> Any:
    return pipeline.plan(settings, f"manual__{name}", conf)


def _job(settings: Settings, planned: Any) -> str:
    """The training run id of a plan: its run key, its config's digest and the group's world size."""
    from tenfold.training.config import TrainConfig
    from tenfold.training.jobs import training_key, world_size

    return training_key(planned.run_key, TrainConfig.from_dict(planned.train_config), world_size(settings))


def test_failed_training_still_resizes_the_group_to_zero(dev_settings: Settings) -> None:
    from tenfold.training.fleet import TrainingFailed

    group = FakeTrainingGroup(dev_settings, "failed")
    planned = _plan(dev_settings, "fails")
    with pytest.raises(TrainingFailed, match="failed on the training group"):
        pipeline.train(dev_settings, planned, igm_client=group)
    assert group.resizes == [dev_settings.training.nnodes, 0]
    last_resize = [c for c in group.calls if c[0] == "resize"][-1]
    assert last_resize[1]["size"] == 0
    assert last_resize[1]["instance_group_manager"] == dev_settings.training.fleet.instance_group
    assert group.calls[-1][0] == "patch"  # then the run is taken out of the instance metadata
    # The step staged the run's inputs: the config and the preprocessing fit here, once.
    bucket = gcs_client(dev_settings).bucket(dev_settings.storage.artifacts_bucket)
    staged = sorted(b.name.rsplit("/", 1)[-1] for b in bucket.list_blobs(prefix=f"{dev_settings.training.runs_prefix}/{_job(dev_settings, planned)}/out/"))
    assert staged == ["preprocessing.json", "train_config.json"]


def test_an_error_while_waiting_still_resizes_to_zero(dev_settings: Settings) -> None:
    group = FakeTrainingGroup(dev_settings, "silent", fail_get=True)
    with pytest.raises(ConnectionError):
        pipeline.train(dev_settings, _plan(dev_settings, "api-down"), igm_client=group)
    assert group.resizes == [dev_settings.training.nnodes, 0]


def test_successful_training_returns_the_model_in_the_artifacts_bucket(dev_settings: Settings, tmp_path: Path) -> None:
    group = FakeTrainingGroup(dev_settings, "succeeded")
    planned = _plan(dev_settings, "ok")
    trained = pipeline.train(dev_settings, planned, igm_client=group)
    assert group.resizes == [dev_settings.training.nnodes, 0]
    assert trained.model_ref == (
        f"gs://{dev_settings.storage.artifacts_bucket}/{dev_settings.training.runs_prefix}/{_job(dev_settings, planned)}/out/model"
    )
    assert trained.train_result["status"] == "succeeded"
    # The worker's report, which the version's lineage records (it recorded none in the cloud).
    assert trained.train_result["steps"] == 12 and trained.train_result["best_epoch"] == 1
    planned_with_feedback = type(planned)(**{**planned.__dict__, "feedback": {"rows": 200, "weight": 10}})
    assert pipeline.feedback_lineage(planned_with_feedback, trained)["trained_rows"] == 150
    local = pipeline.materialize(dev_settings, trained.model_ref, tmp_path / "model")
    assert sorted(p.name for p in local.iterdir()) == ["meta.json", "preprocessing.json", "weights.pt"]
    # A retried task finds the succeeded marker and does not start the group again.
    again = FakeTrainingGroup(dev_settings, "succeeded")
    assert pipeline.train(dev_settings, planned, igm_client=again).model_ref == trained.model_ref
    assert again.resizes == []


def test_a_killed_tries_partial_model_copy_is_removed_by_the_next_once_abandoned(dev_settings: Settings,
                                                                              tmp_path: Path) -> None:
    """evaluate and register copy the trained model from the artifacts bucket into a partial folder, removed in a
    finally: a try SIGKILLed mid-copy never ran it, and each retry took a new name, so every killed try left a model
    copy on the worker for good. An abandoned one is removed by the next copy; a young one (another try's, still
    copying) is left."""
    import os

    from tenfold.registry.registry import ABANDONED_DOWNLOAD_S

    group = FakeTrainingGroup(dev_settings, "succeeded")
    trained = pipeline.train(dev_settings, _plan(dev_settings, "ok"), igm_client=group)
    dead, young = tmp_path / ".model.partial-dead0001", tmp_path / ".model.partial-live0002"
    for left in (dead, young):
        (left / "weights.pt").parent.mkdir(parents=True)
        (left / "weights.pt").write_bytes(b"half a model")
    old = os.stat(dead).st_mtime - ABANDONED_DOWNLOAD_S - 60
    os.utime(dead, (old, old))
    local = pipeline.materialize(dev_settings, trained.model_ref, tmp_path / "model")
    assert (local / "meta.json").is_file() and not dead.exists() and young.exists()


def test_a_plan_run_again_with_another_split_trains_it_instead_of_returning_the_first(dev_settings: Settings) -> None:
    """A cleared DAG run whose plan moved (another training window) trains the new config on the group; it neither
    returns the model of the first plan (its succeeded marker) nor trains the first plan's staged config."""
    first = FakeTrainingGroup(dev_settings, "succeeded")
    planned = _plan(dev_settings, "replanned")
    trained = pipeline.train(dev_settings, planned, igm_client=first)
    again = _plan(dev_settings, "replanned", {**CONF, "train_months": ["2013-01", "2013-01"]})
    assert again.run_key == planned.run_key and again.train_config != planned.train_config
    second = FakeTrainingGroup(dev_settings, "succeeded")
    retrained = pipeline.train(dev_settings, again, igm_client=second)
    assert second.resizes == [dev_settings.training.nnodes, 0], "the new plan was never trained"
    assert retrained.model_ref != trained.model_ref
    bucket = gcs_client(dev_settings).bucket(dev_settings.storage.artifacts_bucket)
    staged = json.loads(bucket.blob(f"{dev_settings.training.runs_prefix}/{_job(dev_settings, again)}/out/train_config.json")
                        .download_as_bytes())
    assert staged["train_months"] == ["2013-01"]


def test_training_keys_of_two_runs_never_meet() -> None:
    """Long run ids that share their first 46 characters still get their own training folders and run ids."""
    from tenfold.pipelines.common import run_key
    from tenfold.training.config import TrainConfig
    from tenfold.training.fleet import check_run_id
    from tenfold.training.jobs import training_key

    cfg = TrainConfig(lake_uri="file:///lake", train_months=("2013-01",))
    a, b = (run_key(f"asset_triggered__2026-12-03T05:00:19.111719+00:00_{s}") for s in ("K0hzZOpC", "Zq81Lm2x"))
    assert a[:46] == b[:46]
    assert training_key(a, cfg) != training_key(b, cfg)
    assert check_run_id(training_key(a, cfg)) and training_key(a, cfg) == training_key(a, cfg)


def test_a_run_conf_nproc_the_training_group_cannot_run_is_refused_not_ignored(dev_settings: Settings) -> None:
    """Each node of the group runs settings.training.nproc_per_node processes whatever the run conf said: a run that
    asked for 4 trained with another world size (so another global batch) than asked, with no word of it."""
    per_node = dev_settings.training.nproc_per_node
    with pytest.raises(pipeline.PipelineError, match=rf"run conf nproc={per_node + 3}: in dev every node of the "
                                                     rf"training group runs settings.training.nproc_per_node \({per_node}\)"):
        _plan(dev_settings, "nproc", {**CONF, "nproc": per_node + 3})
    assert _plan(dev_settings, "nproc-same", {**CONF, "nproc": per_node}).nproc == per_node


def test_a_group_a_killed_train_task_left_running_is_released_after_it(dev_settings: Settings) -> None:
    """train scales the group down in its finally, which a killed worker process never reaches: the GPUs ran until
    the next run (a week, on the weekly schedule). The DAG's release task, run once train has ended however, does:
    the group is its plan's run's (within its lease, no marker)."""
    planned = _plan(dev_settings, "killed")
    group = FakeTrainingGroup(dev_settings, "silent").held_by(_job(dev_settings, planned), planned.run_key,
                                                             size=dev_settings.training.nnodes)
    assert pipeline.release_training_group(dev_settings, planned, igm_client=group) is True
    assert group.resizes == [0] and group.size == 0
    assert group.run_id == "" and group.calls[-1][0] == "patch"  # its run out of the metadata
    calls = len(group.calls)
    # a try killed between its resize to 0 and clearing the metadata
    group.held_by(_job(dev_settings, planned), planned.run_key, size=0)
    assert pipeline.release_training_group(dev_settings, planned, igm_client=group) is False  # at 0: no resize
    assert [c[0] for c in group.calls[calls:]] == ["get", "patch"] and group.run_id == ""
    local = build_settings("local")
    assert pipeline.release_training_group(local, planned, igm_client=group) is False and len(group.calls) == calls + 2


def test_release_leaves_a_group_another_live_run_holds_running(dev_settings: Settings) -> None:
    """A run started by hand (`python -m tenfold.pipelines.train_model`) holds the group while this DAG run's release
    task runs: scaling it to 0 killed that run's nodes."""
    planned, other = _plan(dev_settings, "released"), _plan(dev_settings, "by-hand")
    group = FakeTrainingGroup(dev_settings, "silent").held_by(_job(dev_settings, other), other.run_key,
                                                             size=dev_settings.training.nnodes)
    held = dict(group.metadata)
    assert pipeline.release_training_group(dev_settings, planned, igm_client=group) is False
    assert group.resizes == [] and group.size == dev_settings.training.nnodes and group.metadata == held
    assert [c[0] for c in group.calls] == ["get"]


def test_a_retry_after_a_deploy_changed_nnodes_takes_its_own_killed_tries_group(dev_settings: Settings) -> None:
    """Try 1 of train was SIGKILLed with the group up; a deploy then changed nnodes, which gives the run a folder (so
    a cloud run id) of its own. Try 2 found try 1's run in the metadata and refused it as another run's
    (TrainingGroupBusy, not retried: the task failed for good), and the release task left its GPUs running."""
    from tenfold.training.config import TrainConfig
    from tenfold.training.fleet import RUN_ID_KEY, RUN_KEY_KEY
    from tenfold.training.jobs import cloud_run_id

    n = dev_settings.training.nnodes
    before = dev_settings.model_copy(update={"training": dev_settings.training.model_copy(update={"nnodes": n + 1})})
    planned = _plan(dev_settings, "redeployed")
    killed = cloud_run_id(before, planned.run_key, TrainConfig.from_dict(planned.train_config))
    assert killed != _job(dev_settings, planned)  # the deploy gave the run another run id

    group = FakeTrainingGroup(dev_settings, "silent").held_by(killed, planned.run_key, size=n + 1)
    assert pipeline.release_training_group(dev_settings, planned, igm_client=group) is True
    assert group.resizes == [0] and group.size == 0 and group.run_id == ""

    group = FakeTrainingGroup(dev_settings, "succeeded").held_by(killed, planned.run_key, size=n + 1)
    trained = pipeline.train(dev_settings, planned, igm_client=group)
    assert group.resizes == [0, n, 0] and trained.train_result["status"] == "succeeded"
    patched = next(dict(kw["instance_group_manager_resource"].all_instances_config.properties.metadata)
                   for name, kw in group.calls if name == "patch")
    assert (patched[RUN_ID_KEY], patched[RUN_KEY_KEY]) == (_job(dev_settings, planned), planned.run_key)
    assert group.run_id == ""  # ended at 0, its run cleared


def test_a_batch_the_window_cannot_fill_is_refused_before_the_training_group_scales_up(dev_settings: Settings) -> None:
    """Every node runs its ranks through torchrun itself: a batch too big for the window failed in every rank after
    the GPU group scaled up, and the task retried and scaled it up again."""
    from tenfold.training.launch import BatchTooBig

    group = FakeTrainingGroup(dev_settings, "succeeded")
    planned = _plan(dev_settings, "too-big", {**CONF, "batch_size": 512})
    with pytest.raises(BatchTooBig, match=r"batch_size 512 x 2 processes is a global batch of 1,024 rows"):
        pipeline.train(dev_settings, planned, igm_client=group)
    assert group.resizes == []
