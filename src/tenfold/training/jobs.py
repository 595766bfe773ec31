"""Where a training job runs: the :class:`TrainingJob` seam, torchrun here and the GPU training group in the cloud.

Both train the same worker (:mod:`tenfold.training.worker`) from the same :class:`TrainConfig`, fit the
preprocessing once on the training window before any rank starts, and return only when the job is over,
so the ``train_model`` DAG's ``train`` task is the same in every environment.
"""

from __future__ import annotations

import contextlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from tenfold.config import Settings
from tenfold.config.names import scoped_key
from tenfold.jsonable import plain_json
from tenfold.training.config import TrainConfig
from tenfold.training.errors import TrainingFailed, refusal

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainedModel:
    """Where the trained model folder is (a local path or a ``gs://`` prefix) and how the job went (JSON)."""

    model_ref: str
    result: dict[str, Any] = field(default_factory=dict)


def training_key(run_key: str, cfg: TrainConfig, world: int | None = None) -> str:
    """The training folder and cloud run id of ``cfg`` trained by ``world`` processes in run ``run_key``: a retried
    task resumes its checkpoints, while a plan run again with another config (a cleared run whose split moved), or a
    run with another number of processes (another nproc, or a deploy that changed nproc_per_node or nnodes), trains
    afresh instead of resuming, or returning, what the first trained: its checkpoints, whose position counts their
    own world's batches, are refused by another world (<= 59 characters, a valid run id).

    The jobs pass ``world`` (:func:`world_size`); None keys ``cfg`` alone."""
    return scoped_key(run_key, cfg.digest) if world is None else scoped_key(run_key, cfg.digest, f"world={world}")


def world_size(settings: Settings, nproc: int | None = None) -> int:
    """The processes a job of ``settings`` trains with: ``nproc`` (None: ``training.nproc_per_node``) on each of
    ``training.nnodes`` machines. The cloud's nodes always run ``nproc_per_node`` each (train_model's plan refuses
    another nproc there): pass None for them."""
    return (nproc or settings.training.nproc_per_node) * settings.training.nnodes


def cloud_run_id(settings: Settings, run_key: str, cfg: TrainConfig) -> str:
    """The cloud training group's run id (and training folder) of ``cfg`` in run ``run_key`` with ``settings``' world
    size (:func:`training_key`): what :class:`FleetTrainingJob` trains under and ``train_model``'s release task
    releases the group for. The one derivation of it: the two must agree, or the release leaves its own run's group
    running."""
    return training_key(run_key, cfg, world_size(settings))


class TrainingJob(Protocol):
    """Trains ``cfg`` for the run ``run_key`` and returns when the model folder is complete."""

    def run(self, cfg: TrainConfig, run_key: str, work_dir: Path, *, nproc: int | None = None) -> TrainedModel: ...


class LocalTorchrunJob:
    """torchrun on this machine (one node, file rendezvous, on loopback), in ``<work_dir>/train`` (:func:`tenfold.training.launch.run_torchrun`)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def run(self, cfg: TrainConfig, run_key: str, work_dir: Path, *, nproc: int | None = None) -> TrainedModel:
        from tenfold.training.launch import run_torchrun

        folder = work_dir / training_key("train", cfg, world_size(self.settings, nproc))
        result = run_torchrun(self.settings, cfg, folder, nproc=nproc)
        return TrainedModel(model_ref=str(result.model_dir), result=plain_json(result.to_dict()))


class FleetTrainingJob:
    """The GPU training group (:func:`tenfold.training.fleet.run_training`), staged in the artifacts bucket.

    The config and the preprocessing (fit here, once) are staged in ``gs://<artifacts>/<runs_prefix>/<run>-<digest of the config and world size>/out`` (:func:`training_key`)
    create-only, so a retried task keeps what its first attempt's checkpoints were trained with; the nodes
    write the model to ``.../out/model``. ``igm_client``, ``markers`` and ``storage_client`` are the Google
    clients (tests pass fakes or emulator clients at that boundary).
    """

    def __init__(self, settings: Settings, *, igm_client: Any = None, markers: Any = None, storage_client: Any = None) -> None:
        self.settings, self.igm_client, self.markers, self.storage_client = settings, igm_client, markers, storage_client

    def run(self, cfg: TrainConfig, run_key: str, work_dir: Path, *, nproc: int | None = None) -> TrainedModel:
        from google.api_core.exceptions import NotFound, PreconditionFailed

        from tenfold.storage import gcs_client
        from tenfold.training.fleet import GcsMarkerStore, run_folder, run_training
        from tenfold.training.launch import fit_preprocessing, refuse_a_batch_the_window_cannot_fill
        from tenfold.training.worker import CONFIG_FILE, MODEL_DIR, PREPROCESSING_FILE, REFUSED_FILE, RESULT_FILE

        settings = self.settings
        # Read from settings when the task runs (the plan leaves nproc None here): a deploy that changed nproc_per_node
        # or nnodes trains in a folder of its own, not on checkpoints of another world, which every rank refuses.
        world = world_size(settings)
        # Before the GPU group scales up: every node runs its ranks through torchrun itself, not the local launch.
        refuse_a_batch_the_window_cannot_fill(cfg, world)
        client = self.storage_client or gcs_client(settings)
        bucket = settings.storage.artifacts_bucket
        job_key = cloud_run_id(settings, run_key, cfg)
        out = f"{run_folder(settings, job_key)}/out"
        staged = {CONFIG_FILE: cfg.to_json()}
        if client.bucket(bucket).get_blob(f"{out}/{PREPROCESSING_FILE}") is None:
            staged[PREPROCESSING_FILE] = fit_preprocessing(cfg).to_json()
        for name, body in staged.items():
            with contextlib.suppress(PreconditionFailed):  # staged by an earlier attempt of this run
                client.bucket(bucket).blob(f"{out}/{name}").upload_from_string(body, if_generation_match=0)
        args = ["--config", f"gs://{bucket}/{out}/{CONFIG_FILE}", "--out", f"gs://{bucket}/{out}"]
        refused_blob = f"{out}/{REFUSED_FILE}"
        with contextlib.suppress(NotFound):  # an earlier attempt's: this one's outcome is read from it
            client.bucket(bucket).blob(refused_blob).delete()
        try:
            # The DAG run's key beside the run id in the group's metadata: a retry after a deploy that changed the
            # world size (another run id) still finds an earlier try's group its own, not another run's.
            run = run_training(settings, job_key, args=args, run_key=run_key, client=self.igm_client,
                               markers=self.markers if self.markers is not None else GcsMarkerStore(client))
        except TrainingFailed as exc:
            # A rank refused the run (a batch its rows cannot fill): failed at once, not retried (the group scaled up
            # again for each try, to fail the same way).
            blob = client.bucket(bucket).get_blob(refused_blob)
            refused = refusal(blob.download_as_bytes() if blob is not None else None,
                              where=f"gs://{bucket}/{refused_blob} and the run's marker ({exc})")
            if refused is not None:
                raise refused from exc
            raise
        # The worker's report, as the local launch returns it: steps, the epoch chosen, calibration, the manifests
        # and the feedback rows trained on, which the version's lineage records (it recorded none in the cloud).
        reported = client.bucket(bucket).get_blob(f"{out}/{RESULT_FILE}")
        try:
            report: Any = json.loads(reported.download_as_bytes()) if reported is not None else {}
        except ValueError:
            report = {}
        if not isinstance(report, dict):
            report = {}
        if not report:
            log.warning("the training run %s reported no readable %s in gs://%s/%s: the version's lineage lacks its "
                        "figures", run.run_id, RESULT_FILE, bucket, out)
        return TrainedModel(model_ref=f"gs://{bucket}/{out}/{MODEL_DIR}", result=plain_json({
            **report, "run_id": run.run_id, "status": run.status, "marker": run.marker, "elapsed_s": run.elapsed_s}))


def training_job(settings: Settings, **clients: Any) -> TrainingJob:
    """torchrun locally, the training group in dev and prod."""
    if settings.is_local:
        return LocalTorchrunJob(settings)
    return FleetTrainingJob(settings, **clients)
