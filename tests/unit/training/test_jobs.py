"""The training jobs' folders and run ids (keyed by the config and the world size), and a rank's refusal reaching the
cloud job's task as one that is not retried. torchrun and the training group are stand-ins here."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest

from tenfold.config import Settings, build_settings
from tenfold.training.config import TrainConfig


def _cloud(nproc_per_node: int, nnodes: int = 2) -> Settings:
    base = build_settings("dev", project_id="tenfold-test-project")
    return base.model_copy(update={"training": base.training.model_copy(
        update={"nproc_per_node": nproc_per_node, "nnodes": nnodes})})


def _unique_run_key() -> str:
    """The emulator outlives a module: a run key of its own keeps an earlier run's staged objects out of the test."""
    return f"manual__{uuid.uuid4().hex[:8]}"


@pytest.fixture
def cloud_storage(storage_client: Any) -> Any:
    """The real storage client on the GCS emulator, with the buckets of :func:`_cloud`'s project: the artifacts bucket
    the job stages in, and the models bucket beside it, so that staging in the wrong one lands there instead of
    failing for a missing bucket."""
    storage = _cloud(1).storage
    for name in (storage.artifacts_bucket, storage.models_bucket):
        if storage_client.lookup_bucket(name) is None:
            storage_client.create_bucket(name)
    return storage_client


def test_a_run_trained_by_another_number_of_processes_trains_in_a_folder_of_its_own(
        train_settings: Settings, small_config: TrainConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The folder was keyed by the config alone: a run that checkpointed with 2 processes, cleared from its plan with
    nproc 4, trained in the same folder, where every rank refused the checkpoints of 2 processes, on every try."""
    from tenfold.training import launch
    from tenfold.training.jobs import LocalTorchrunJob

    folders: list[Path] = []

    def torchrun(settings: Settings, cfg: TrainConfig, out: Path, *, nproc: int | None = None) -> launch.TrainResult:
        folders.append(out)
        return launch.TrainResult(out_dir=out, model_dir=out / "model", steps=1, world_size=nproc or 0,
                                  samples_per_s=1.0, train_seconds=1.0, wall_seconds=1.0, final_loss=0.5,
                                  restart_count=0, resumed_from_step=None, manifests={}, config=cfg.to_dict())

    monkeypatch.setattr(launch, "run_torchrun", torchrun)
    job = LocalTorchrunJob(train_settings)
    for nproc in (2, 4, 2, None):  # None: settings.training.nproc_per_node (2 locally)
        job.run(small_config, "manual__a", tmp_path, nproc=nproc)
    two, four, two_again, default = folders
    assert two != four and two.parent == four.parent == tmp_path
    assert two_again == two == default  # a retry with the same world resumes its checkpoints


def test_a_deploy_that_changes_the_cloud_world_size_trains_in_a_run_of_its_own(
        small_config: TrainConfig, cloud_storage: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """In the cloud the plan leaves nproc None and the nodes run nproc_per_node x nnodes processes: a deploy that
    changed either put a cleared or retried run on the first world's checkpoints (same run id), refused by every rank.

    The inputs are staged in the artifacts bucket the nodes are pointed at, create-only: a retry that rewrote the
    config would train the first attempt's checkpoints on another one."""
    from tenfold.training import fleet
    from tenfold.training.jobs import FleetTrainingJob

    runs: list[tuple[str, list[str]]] = []
    generations: list[int] = []

    def run_training(settings: Settings, run_id: str, *, args: list[str], **_: Any) -> fleet.TrainingRun:
        runs.append((run_id, list(args)))
        # What a node reads first: the config its --config names (tenfold.training.worker).
        bucket, name = args[args.index("--config") + 1].removeprefix("gs://").split("/", 1)
        staged = cloud_storage.bucket(bucket).get_blob(name)
        assert staged is not None, f"the nodes' --config {args} names no staged object"
        assert staged.download_as_bytes() == small_config.to_json().encode()
        generations.append(staged.generation)
        return fleet.TrainingRun(run_id, "succeeded", {"status": "succeeded"}, 1.0)

    monkeypatch.setattr(fleet, "run_training", run_training)
    run_key = _unique_run_key()
    refs = [FleetTrainingJob(_cloud(per_node, nodes), storage_client=cloud_storage).run(small_config, run_key, Path("."))
            .model_ref for per_node, nodes in ((1, 2), (2, 2), (1, 4), (1, 2))]
    ids = [run_id for run_id, _ in runs]
    # 2 processes, then 4 (two per node), 4 again (one per node on 4 nodes: the worker resumes any checkpoint of its
    # world size), and 2 again: the first run's id, whose checkpoints a retry resumes.
    assert ids[0] != ids[1] and ids[1] == ids[2] and ids[3] == ids[0]
    assert refs[0] != refs[1] and refs[3] == refs[0] and ids[1] in refs[1]
    assert all(fleet.check_run_id(run_id) for run_id in ids)
    s = _cloud(1)
    artifacts = s.storage.artifacts_bucket
    for run_id, args in runs:  # the nodes read and write the artifacts bucket, in the run's folder
        out = f"gs://{artifacts}/{fleet.run_folder(s, run_id)}/out"
        assert args == ["--config", f"{out}/train_config.json", "--out", out]
    # Create-only: the retry of the first run (the same id) staged nothing over the config the first staged.
    assert generations[3] == generations[0] and generations[1] == generations[2]
    # Each run's inputs are staged in its own folder: the config and the preprocessing.
    names = [blob.name for blob in cloud_storage.list_blobs(artifacts, prefix=f"{s.training.runs_prefix}/{run_key}")]
    staged = sorted(name.rsplit("/", 3)[-3] for name in names if name.endswith("/out/preprocessing.json"))
    assert staged == sorted({ids[0], ids[1]})


def test_a_refusal_raised_in_a_cloud_rank_fails_the_task_without_retries(
        small_config: TrainConfig, cloud_storage: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The nodes' ranks refused the run (a batch the rows with feedback cannot fill), the marker said failed and the
    task retried, scaling the GPU group up again for each try to fail the same way. A refusal an earlier try left is
    no refusal of this one."""
    from airflow.sdk.exceptions import AirflowFailException

    from tenfold.pipelines.common import run_step
    from tenfold.training import fleet
    from tenfold.training.errors import TrainingRefused
    from tenfold.training.jobs import FleetTrainingJob

    settings, run_key = _cloud(1), _unique_run_key()
    outcome = {"refuse": True}

    def run_training(settings: Settings, run_id: str, *, args: list[str], **_: Any) -> fleet.TrainingRun:
        bucket, out = args[args.index("--out") + 1].removeprefix("gs://").split("/", 1)
        if outcome["refuse"]:  # what a rank writes through its mirror (tenfold.training.worker._record_refusal)
            cloud_storage.bucket(bucket).blob(f"{out}/refused.json").upload_from_string(json.dumps(
                {"rank": 1, "error": "BatchTooBig: 1021 rows cannot fill one global batch of 600 x 2"}))
            raise fleet.TrainingFailed(f"run {run_id} failed on the training group (marker ...: {{'status': 'failed'}})")
        return fleet.TrainingRun(run_id, "succeeded", {"status": "succeeded"}, 1.0)

    monkeypatch.setattr(fleet, "run_training", run_training)
    job = FleetTrainingJob(settings, storage_client=cloud_storage)
    with pytest.raises(AirflowFailException) as failed:
        run_step(job.run, small_config, run_key, Path("."))
    refused = failed.value.__cause__
    assert isinstance(refused, TrainingRefused) and refused.retryable is False and refused.rank == 1
    assert "training was refused by rank 1: BatchTooBig: 1021 rows cannot fill one global batch of 600 x 2" in str(refused)
    outcome["refuse"] = False  # the same run, tried again (a task cleared): the old refusal is cleared first
    assert job.run(small_config, run_key, Path(".")).result["status"] == "succeeded"
    names = [blob.name for blob in cloud_storage.list_blobs(settings.storage.artifacts_bucket,
                                                             prefix=f"{settings.training.runs_prefix}/{run_key}")]
    assert any(name.endswith("/out/train_config.json") for name in names)  # the run's folder, where the refusal was
    assert not any(name.endswith("/refused.json") for name in names)
