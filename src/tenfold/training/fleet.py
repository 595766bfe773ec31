"""Training on the GPU training group: resize it up, wait for torchrun to finish, always resize it to 0.

How completion is reported: each run has a folder ``gs://<artifacts>/<training.runs_prefix>/<run_id>/``.
The nodes (:mod:`tenfold.training.node`) register there, rendezvous, run torchrun, and the rendezvous
node writes ``_COMPLETE`` (JSON: ``status`` ``succeeded`` or ``failed``, ``exit_code``) when torchrun
exits. A marker object was chosen over guest attributes because it outlives the VMs (the group is
scaled to 0 right after), is readable by the DAG with the storage client it already has, and sits
beside the run's checkpoints and logs.

Usage from the training DAG (a ``@task`` in dev/prod)::

    from tenfold.training.fleet import run_training
    result = run_training(settings, run_id, args=["--config", "gs://.../out/train_config.json", "--out", "gs://.../out"])

A retried task reuses its ``run_id``: the nodes resume from the run's checkpoints, a previous
``succeeded`` marker returns at once, and a ``failed`` marker is cleared before the new attempt.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from tenfold.config import Settings
from tenfold.training.errors import TrainingFailed, TrainingTimeout

log = logging.getLogger(__name__)

MARKER = "_COMPLETE"
# Instance metadata this module sets on the training group (all-instances config) before it resizes
# it; the node agent (tenfold.training.node) reads them on every node.
RUN_ID_KEY = "tenfold-run-id"
TRAIN_ARGS_KEY = "tenfold-train-args"
# Which start of the run the nodes belong to: each start registers its nodes apart, so a retry's nodes never take a
# VM of an earlier start (gone, under another name) for a peer or the rendezvous host.
ATTEMPT_KEY = "tenfold-train-attempt"
_RUN_ID = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,62}$")


class InstanceGroupManagers(Protocol):
    """The calls of ``google.cloud.compute_v1.RegionInstanceGroupManagersClient`` that are used."""

    def get(self, *, project: str, region: str, instance_group_manager: str) -> Any: ...

    def resize(self, *, project: str, region: str, instance_group_manager: str, size: int) -> Any: ...

    def patch(
        self, *, project: str, region: str, instance_group_manager: str, instance_group_manager_resource: Any
    ) -> Any: ...


class MarkerStore(Protocol):
    """Reads and deletes a run's completion marker (GCS in the cloud; see :class:`GcsMarkerStore`)."""

    def read(self, bucket: str, name: str) -> dict[str, Any] | None: ...

    def delete(self, bucket: str, name: str) -> None: ...


class GcsMarkerStore:
    """:class:`MarkerStore` over a ``google.cloud.storage.Client``."""

    def __init__(self, client: Any) -> None:
        self.client = client

    def read(self, bucket: str, name: str) -> dict[str, Any] | None:
        from google.api_core.exceptions import NotFound

        try:
            data = self.client.bucket(bucket).blob(name).download_as_bytes()
        except NotFound:
            return None
        try:
            value = json.loads(data)
        except ValueError as exc:
            raise TrainingFailed(f"gs://{bucket}/{name} is not JSON: a node wrote a broken marker; delete it and retry") from exc
        if not isinstance(value, dict):
            raise TrainingFailed(f"gs://{bucket}/{name} is not a JSON object")
        return value

    def delete(self, bucket: str, name: str) -> None:
        from google.api_core.exceptions import NotFound

        with contextlib.suppress(NotFound):
            self.client.bucket(bucket).blob(name).delete()


@dataclass(frozen=True)
class TrainingRun:
    run_id: str
    status: str
    marker: dict[str, Any]
    elapsed_s: float


def check_run_id(run_id: str) -> str:
    if not _RUN_ID.fullmatch(run_id):
        raise ValueError(
            f"run_id {run_id!r}: use 1-63 lowercase letters, digits, '.', '_' or '-' (it names a GCS folder and the rendezvous)"
        )
    return run_id


def run_folder(settings: Settings, run_id: str) -> str:
    """The run's folder (object name prefix) in the artifacts bucket."""
    return f"{settings.training.runs_prefix.strip('/')}/{check_run_id(run_id)}"


def marker_name(settings: Settings, run_id: str) -> str:
    return f"{run_folder(settings, run_id)}/{MARKER}"


def marker_uri(settings: Settings, run_id: str) -> str:
    return f"gs://{settings.storage.artifacts_bucket}/{marker_name(settings, run_id)}"


def run_metadata(run_id: str, args: Sequence[str], attempt: str) -> dict[str, str]:
    """Instance metadata that tells the nodes which run to do, and which start of it (read by
    :mod:`tenfold.training.node`)."""
    return {RUN_ID_KEY: check_run_id(run_id), TRAIN_ARGS_KEY: json.dumps(list(args)), ATTEMPT_KEY: attempt}


def _clear_run_metadata(settings: Settings, client: Any) -> None:
    """Take the run out of the group's instance metadata once it is at 0: a VM the group starts later (scaled up by
    hand, or by an autoscaler) then finds no run id and exits (tenfold.training.node), instead of running the last
    run again and overwriting its marker. A failure is only logged: the next run sets its own metadata."""
    try:
        _done(client.patch(**_group(settings), instance_group_manager_resource=_all_instances_patch(
            {RUN_ID_KEY: "", TRAIN_ARGS_KEY: "", ATTEMPT_KEY: ""})), settings.training.stable_timeout_s)
    except Exception:
        log.exception("could not clear the run from %s's instance metadata (a VM it starts would run it again)",
                      settings.training.fleet.instance_group)


def nodes_prefix(settings: Settings, run_id: str, attempt: str | None) -> str:
    """Where the nodes of one start of the run register (``nodes/`` alone for nodes booted without an attempt)."""
    return f"{run_folder(settings, run_id)}/nodes/" + (f"{attempt}/" if attempt else "")


def _done(op: Any, timeout: float) -> None:
    # compute_v1 returns an ExtendedOperation; result() waits and raises on an operation error.
    if hasattr(op, "result"):
        op.result(timeout=timeout)


def _as_igm(client: Any) -> InstanceGroupManagers:
    return client  # type: ignore[no-any-return]


def _group(settings: Settings) -> dict[str, str]:
    return {
        "project": settings.project_id,
        "region": settings.region,
        "instance_group_manager": settings.training.fleet.instance_group,
    }


def _all_instances_patch(metadata: dict[str, str]) -> Any:
    from google.cloud import compute_v1

    return compute_v1.InstanceGroupManager(
        all_instances_config=compute_v1.InstanceGroupManagerAllInstancesConfig(
            properties=compute_v1.InstancePropertiesPatch(metadata=metadata)
        )
    )


def wait_until_stable(
    settings: Settings,
    client: InstanceGroupManagers,
    size: int,
    *,
    timeout_s: float,
    poll_s: float,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> None:
    """Wait until the group is stable at ``size`` instances (created, running, no pending actions)."""
    deadline = clock() + timeout_s
    while True:
        group = client.get(**_group(settings))
        if group.target_size == size and group.status.is_stable:
            return
        if clock() >= deadline:
            raise TrainingTimeout(
                f"training group {settings.training.fleet.instance_group} not stable at {size} instances after "
                f"{timeout_s:.0f}s (target {group.target_size}); check GPU quota and `gcloud compute instance-groups "
                f"managed list-errors {settings.training.fleet.instance_group} --region {settings.region}`"
            )
        sleep(poll_s)


def _scaled_to_zero(settings: Settings, client: InstanceGroupManagers, *, clock: Callable[[], float],
                    sleep: Callable[[float], None],
                    why: str = "an earlier try left it running): scaling it to 0 first") -> bool:
    """Resize the training group to 0 and wait until it is, unless it is at 0 already; whether it had to be.
    ``why`` ends the warning that says so (after "is not at 0 (")."""
    t = settings.training
    if client.get(**_group(settings)).target_size == 0:
        return False
    log.warning("training group %s is not at 0 (%s", t.fleet.instance_group, why)
    _done(client.resize(**_group(settings), size=0), t.stable_timeout_s)
    wait_until_stable(settings, client, 0, timeout_s=t.stable_timeout_s, poll_s=t.poll_interval_s, clock=clock,
                      sleep=sleep)
    return True


def release_group(settings: Settings, *, client: InstanceGroupManagers | None = None,
                  clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep) -> bool:
    """The training group at 0 with no run in its metadata; whether it had to be scaled down. For after a run's task
    has ended for good: :func:`run_training` scales down in its ``finally``, which a task whose worker process was
    killed never reaches (the group's GPUs then ran until the next run). The metadata is cleared at 0 too: a try
    killed between its resize and that left the run there, for a VM started later to run again."""
    if client is None:
        from google.cloud import compute_v1

        client = _as_igm(compute_v1.RegionInstanceGroupManagersClient())
    released = _scaled_to_zero(settings, client, clock=clock, sleep=sleep,
                               why="once the run's train task had ended): scaling it to 0")
    _clear_run_metadata(settings, client)
    return released


def run_training(
    settings: Settings,
    run_id: str,
    *,
    args: Sequence[str] = (),
    client: InstanceGroupManagers | None = None,
    markers: MarkerStore | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> TrainingRun:
    """Run one training job on ``settings.training.nnodes`` VMs of the training group and wait for it.

    The group is resized back to 0 in every case (success, failure, timeout, interruption), so an
    idle environment never pays for GPUs. Raises :class:`TrainingFailed` when the run reports failure
    and :class:`TrainingTimeout` when a bounded wait runs out.
    """
    if settings.is_local:
        raise ValueError("run_training drives the cloud training group: locally the DAG runs torchrun (TENFOLD_ENV=local)")
    t = settings.training
    bucket, name = settings.storage.artifacts_bucket, marker_name(settings, run_id)
    if client is None:
        from google.cloud import compute_v1

        client = _as_igm(compute_v1.RegionInstanceGroupManagersClient())
    if markers is None:
        from tenfold.storage import gcs_client

        markers = GcsMarkerStore(gcs_client(settings))

    start = clock()
    previous = markers.read(bucket, name)
    if previous is not None and previous.get("status") == "succeeded":
        log.info("run %s already succeeded (%s); not starting the group", run_id, marker_uri(settings, run_id))
        # The try that saw it succeed may have failed to scale the group back (its task failed for that): a retry
        # that returned at once left the GPUs running, the DAG green; and the run in the metadata (cleared below).
        _scaled_to_zero(settings, client, clock=clock, sleep=sleep)
        _clear_run_metadata(settings, client)
        return TrainingRun(run_id, "succeeded", previous, 0.0)
    if previous is not None:
        markers.delete(bucket, name)  # a failed attempt's marker; this attempt resumes from checkpoints

    attempt = f"{int(time.time())}-{uuid.uuid4().hex[:6]}"
    marker: dict[str, Any] | None = None
    try:
        # From 0: VMs an earlier try left (its scale-down failed, or it was killed mid-run) keep their old metadata
        # (the group's update policy is opportunistic), so they would never run this attempt, and the wait below
        # would hold them for run_timeout_s for a marker that never comes. This attempt resumes from checkpoints.
        _scaled_to_zero(settings, client, clock=clock, sleep=sleep)
        _done(
            client.patch(**_group(settings),
                         instance_group_manager_resource=_all_instances_patch(run_metadata(run_id, args, attempt))),
            t.stable_timeout_s,
        )
        _done(client.resize(**_group(settings), size=t.nnodes), t.stable_timeout_s)
        wait_until_stable(settings, client, t.nnodes, timeout_s=t.stable_timeout_s, poll_s=t.poll_interval_s,
                          clock=clock, sleep=sleep)
        deadline = clock() + t.run_timeout_s
        while (marker := markers.read(bucket, name)) is None:
            if clock() >= deadline:
                raise TrainingTimeout(
                    f"run {run_id} wrote no {marker_uri(settings, run_id)} within {t.run_timeout_s}s: "
                    "read the nodes' serial output / Cloud Logging for torchrun errors"
                )
            sleep(t.poll_interval_s)
    finally:
        # Always scale back to zero; a failure here must not hide the run's own error.
        try:
            _done(client.resize(**_group(settings), size=0), t.stable_timeout_s)
        except Exception as exc:
            log.exception("could not resize %s to 0: resize it by hand to stop paying for GPUs", t.fleet.instance_group)
            if marker is not None and marker.get("status") == "succeeded":
                raise  # the run's own outcome is a success: the scale-down is what failed (a retry scales it down)
            if marker is not None:  # the run's failure is what the task says, the scale-down beside it
                raise TrainingFailed(
                    f"run {run_id} failed on the training group (marker {marker_uri(settings, run_id)}: {marker}); "
                    f"scaling {t.fleet.instance_group} back to 0 failed too ({type(exc).__name__}: {exc}): resize it "
                    "by hand to stop paying for GPUs") from exc
        else:
            _clear_run_metadata(settings, client)
    status = str(marker.get("status"))
    if status != "succeeded":
        raise TrainingFailed(f"run {run_id} failed on the training group (marker {marker_uri(settings, run_id)}: {marker})")
    return TrainingRun(run_id, status, marker, clock() - start)
