"""The training jobs' folders and run ids (keyed by the config and the world size), and a rank's refusal reaching the
cloud job's task as one that is not retried. torchrun and the training group are stand-ins here."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tenfold.config import Settings, build_settings
from tenfold.training.config import TrainConfig


class FakeBlob:
    def __init__(self, store: dict[str, bytes], name: str) -> None:
        self.store, self.name = store, name

    def upload_from_string(self, body: str | bytes, *, if_generation_match: int | None = None, **_: Any) -> None:
        from google.api_core.exceptions import PreconditionFailed

        if if_generation_match == 0 and self.name in self.store:
            raise PreconditionFailed(f"{self.name} exists")
        self.store[self.name] = body.encode() if isinstance(body, str) else body

    def download_as_bytes(self) -> bytes:
        from google.api_core.exceptions import NotFound

        if self.name not in self.store:
            raise NotFound(self.name)
        return self.store[self.name]

    def delete(self) -> None:
        from google.api_core.exceptions import NotFound

        if self.store.pop(self.name, None) is None:
            raise NotFound(self.name)


class FakeStorage:
    """The calls of a ``google.cloud.storage.Client`` that the cloud job makes, on one dict."""

    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}

    def bucket(self, name: str) -> FakeStorage:
        return self

    def blob(self, name: str) -> FakeBlob:
        return FakeBlob(self.objects, name)

    def get_blob(self, name: str) -> FakeBlob | None:
        return FakeBlob(self.objects, name) if name in self.objects else None


def _cloud(nproc_per_node: int, nnodes: int = 2) -> Settings:
    base = build_settings("dev", project_id="tenfold-test-project")
    return base.model_copy(update={"training": base.training.model_copy(
        update={"nproc_per_node": nproc_per_node, "nnodes": nnodes})})


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
        small_config: TrainConfig, monkeypatch: pytest.MonkeyPatch) -> None:
    """In the cloud the plan leaves nproc None and the nodes run nproc_per_node x nnodes processes: a deploy that
    changed either put a cleared or retried run on the first world's checkpoints (same run id), refused by every rank."""
    from tenfold.training import fleet
    from tenfold.training.jobs import FleetTrainingJob

    runs: list[tuple[str, list[str]]] = []

    def run_training(settings: Settings, run_id: str, *, args: list[str], **_: Any) -> fleet.TrainingRun:
        runs.append((run_id, list(args)))
        return fleet.TrainingRun(run_id, "succeeded", {"status": "succeeded"}, 1.0)

    monkeypatch.setattr(fleet, "run_training", run_training)
    storage = FakeStorage()
    refs = [FleetTrainingJob(_cloud(per_node, nodes), storage_client=storage).run(small_config, "manual__a", Path("."))
            .model_ref for per_node, nodes in ((1, 2), (2, 2), (1, 4), (1, 2))]
    ids = [run_id for run_id, _ in runs]
    # 2 processes, then 4 (two per node), 4 again (one per node on 4 nodes: the worker resumes any checkpoint of its
    # world size), and 2 again: the first run's id, whose checkpoints a retry resumes.
    assert ids[0] != ids[1] and ids[1] == ids[2] and ids[3] == ids[0]
    assert refs[0] != refs[1] and refs[3] == refs[0] and ids[1] in refs[1]
    assert all(fleet.check_run_id(run_id) for run_id in ids)
    # Each run's inputs are staged in its own folder: the config and the preprocessing.
    staged = sorted(name.rsplit("/", 3)[-3] for name in storage.objects if name.endswith("/out/preprocessing.json"))
    assert staged == sorted({ids[0], ids[1]})


def test_a_refusal_raised_in_a_cloud_rank_fails_the_task_without_retries(
        small_config: TrainConfig, monkeypatch: pytest.MonkeyPatch) -> None:
    """The nodes' ranks refused the run (a batch the rows with feedback cannot fill), the marker said failed and the
    task retried, scaling the GPU group up again for each try to fail the same way. A refusal an earlier try left is
    no refusal of this one."""
    from airflow.sdk.exceptions import AirflowFailException

    from tenfold.pipelines.common import run_step
    from tenfold.training import fleet
    from tenfold.training.errors import TrainingRefused
    from tenfold.training.jobs import FleetTrainingJob

    settings, storage = _cloud(1), FakeStorage()
    outcome = {"refuse": True}

    def run_training(settings: Settings, run_id: str, *, args: list[str], **_: Any) -> fleet.TrainingRun:
        out = args[args.index("--out") + 1].split("/", 3)[3]  # gs://<bucket>/<folder>
        if outcome["refuse"]:  # what a rank writes through its mirror (tenfold.training.worker._record_refusal)
            storage.blob(f"{out}/refused.json").upload_from_string(json.dumps(
                {"rank": 1, "error": "BatchTooBig: 1021 rows cannot fill one global batch of 600 x 2"}))
            raise fleet.TrainingFailed(f"run {run_id} failed on the training group (marker ...: {{'status': 'failed'}})")
        return fleet.TrainingRun(run_id, "succeeded", {"status": "succeeded"}, 1.0)

    monkeypatch.setattr(fleet, "run_training", run_training)
    job = FleetTrainingJob(settings, storage_client=storage)
    with pytest.raises(AirflowFailException) as failed:
        run_step(job.run, small_config, "manual__refused", Path("."))
    refused = failed.value.__cause__
    assert isinstance(refused, TrainingRefused) and refused.retryable is False and refused.rank == 1
    assert "training was refused by rank 1: BatchTooBig: 1021 rows cannot fill one global batch of 600 x 2" in str(refused)
    outcome["refuse"] = False  # the same run, tried again (a task cleared): the old refusal is cleared first
    assert job.run(small_config, "manual__refused", Path(".")).result["status"] == "succeeded"
    assert not any(name.endswith("/refused.json") for name in storage.objects)
