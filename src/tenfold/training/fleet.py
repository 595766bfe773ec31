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

There is one training group and the group itself is the lease: its instance metadata names the run it holds
(``tenfold-run-id``), the DAG run that started it (``tenfold-run-key``) and when that run's try started
(``tenfold-train-attempt``, ``<epoch seconds>-<nonce>``). A run refuses a group that another run holds while it is
scaled up, that run has written no marker and its try started less than :func:`lease_s` ago
(:class:`TrainingGroupBusy`); past that the holder is a killed try's leftover and the group is taken over.
:func:`release_group` leaves such a group alone too. A retry of the same run takes its own group over, and so does a
retry of the same DAG run under another run id (a deploy that changed nnodes or nproc_per_node between its tries
gives it a folder, so a run id, of its own: the earlier try's holder is still this DAG run's).
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
# The DAG run (its run key) whose try holds the group: its run id also names the config and the world size, which a
# deploy between two tries of the same task may change; the lease is that DAG run's whatever its run id.
RUN_KEY_KEY = "tenfold-run-key"
# How far past its bounded waits a try's lease on the group reaches: the clocks of the hosts that wrote and read the
# attempt's start may differ, and a try's finally still resizes the group after its last wait.
LEASE_MARGIN_S = 900
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


class TrainingGroupBusy(TrainingFailed):
    """Another run holds the training group (scaled up, no marker, its lease not run out): scaling the group to 0
    would kill that run's nodes. A retry, minutes later, finds the same run there: the task fails at once."""

    retryable = False


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


def run_metadata(run_id: str, args: Sequence[str], attempt: str, run_key: str | None = None) -> dict[str, str]:
    """Instance metadata that tells the nodes which run to do, and which start of it (read by
    :mod:`tenfold.training.node`), and which DAG run holds the group (``run_key``; empty for a run that names none)."""
    return {RUN_ID_KEY: check_run_id(run_id), TRAIN_ARGS_KEY: json.dumps(list(args)), ATTEMPT_KEY: attempt,
            RUN_KEY_KEY: run_key or ""}


def _clear_run_metadata(settings: Settings, client: Any) -> None:
    """Take the run out of the group's instance metadata once it is at 0: a VM the group starts later (scaled up by
    hand, or by an autoscaler) then finds no run id and exits (tenfold.training.node), instead of running the last
    run again and overwriting its marker. A failure is only logged: the next run sets its own metadata."""
    try:
        _done(client.patch(**_group(settings), instance_group_manager_resource=_all_instances_patch(
            {RUN_ID_KEY: "", TRAIN_ARGS_KEY: "", ATTEMPT_KEY: "", RUN_KEY_KEY: ""})),
              settings.training.stable_timeout_s)
    except Exception:
        log.exception("could not clear the run from %s's instance metadata (a VM it starts would run it again)",
                      settings.training.fleet.instance_group)


def nodes_prefix(settings: Settings, run_id: str, attempt: str | None) -> str:
    """Where the nodes of one start of the run register (``nodes/`` alone for nodes booted without an attempt)."""
    return f"{run_folder(settings, run_id)}/nodes/" + (f"{attempt}/" if attempt else "")


def lease_s(settings: Settings) -> float:
    """How long after its try started a run holds the training group at most: a live try resizes it to 0 within its
    bounded waits (five of ``stable_timeout_s``: the scale-down, the group at 0, the metadata patch, the scale-up, the
    group at nnodes; then ``run_timeout_s`` for the marker) plus :data:`LEASE_MARGIN_S`. A holder older than this is a
    try that was killed (SIGKILL, a lost worker) before its ``finally``: its group may be taken over."""
    t = settings.training
    return float(t.run_timeout_s + 5 * t.stable_timeout_s + LEASE_MARGIN_S)


def attempt_started(attempt: str) -> float | None:
    """The epoch seconds an attempt value (``<epoch seconds>-<nonce>``, see :func:`run_training`) starts with; None
    when it names none (empty, cleared, or set by hand)."""
    head = attempt.partition("-")[0]
    return float(head) if head.isdigit() else None


def _group_run(group: Any) -> tuple[str, str, str]:
    """The run id, attempt and run key in the group's all-instances metadata (empty strings when none: the group was
    cleared, never ran a run, or was set before the run key was written)."""
    properties = getattr(getattr(group, "all_instances_config", None), "properties", None)
    metadata = dict(getattr(properties, "metadata", None) or {})
    return (str(metadata.get(RUN_ID_KEY) or ""), str(metadata.get(ATTEMPT_KEY) or ""),
            str(metadata.get(RUN_KEY_KEY) or ""))


def _when(epoch: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(epoch))


def _held_by_another(settings: Settings, group: Any, run_id: str | None, markers: Callable[[], MarkerStore],
                     now: Callable[[], float], run_key: str | None = None) -> str | None:
    """Why the group is another live run's (a phrase naming the run and when its try started), or None when
    ``run_id`` may scale it: its metadata names no run, ``run_id`` itself (a retry of the same run), a run of the
    same DAG run ``run_key`` (an earlier try under another run id: a deploy between the tries changed the world size),
    a run that wrote its marker (its nodes are done), or a run whose try started more than :func:`lease_s` ago
    (killed before its scale-down). ``run_id`` None: the caller holds no run, only a free group is its to scale."""
    holder, attempt, holder_key = _group_run(group)
    if not holder or holder == run_id:
        return None
    if run_key and holder_key == run_key:
        log.warning("training group %s names run %s of this DAG run (%s), not %s: an earlier try of it under another "
                    "run id (a deploy changed nnodes or nproc_per_node since); taking the group over",
                    settings.training.fleet.instance_group, holder, run_key, run_id)
        return None
    if _RUN_ID.fullmatch(holder):
        try:
            done = markers().read(settings.storage.artifacts_bucket, marker_name(settings, holder)) is not None
        except TrainingFailed:  # a marker that is not JSON: the nodes wrote it, so they ended
            done = True
        if done:
            return None
    started = attempt_started(attempt)
    lease = lease_s(settings)
    if started is not None and now() - started > lease:
        log.warning("training group %s still names run %s, whose try started at %s, longer ago than its lease "
                    "(%.0fs), with no marker: a try killed before its scale-down; taking the group over",
                    settings.training.fleet.instance_group, holder, _when(started), lease)
        return None
    since = (f"its try started at {_when(started)}, {max(0.0, now() - started) / 60:.0f} min ago" if started is not None
             else f"its try names no start time (attempt {attempt!r})")
    return (f"run {holder} holds the training group {settings.training.fleet.instance_group} ({since}; no "
            f"{MARKER} in gs://{settings.storage.artifacts_bucket}/{run_folder(settings, holder)} yet)")


def _resize_by_hand(settings: Settings) -> str:
    """The command that releases the training group by hand."""
    return (f"gcloud compute instance-groups managed resize {settings.training.fleet.instance_group} --size 0 "
            f"--region {settings.region}")


def _busy_help(settings: Settings) -> str:
    return (f"wait for that run to finish and start again; if you are sure it is dead (its task or process gone), "
            f"release the group with `{_resize_by_hand(settings)}` and start again (a holder is taken over on its "
            f"own {lease_s(settings):.0f}s after its try started)")


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


def _scaled_to_zero(settings: Settings, client: InstanceGroupManagers, group: Any, *, clock: Callable[[], float],
                    sleep: Callable[[float], None],
                    why: str = "an earlier try left it running): scaling it to 0 first") -> bool:
    """Resize the training group (as ``group``, a ``get`` of it, found it) to 0 and wait until it is, unless it is at
    0 already; whether it had to be. ``why`` ends the warning that says so (after "is not at 0 (")."""
    t = settings.training
    if group.target_size == 0:
        return False
    log.warning("training group %s is not at 0 (%s", t.fleet.instance_group, why)
    _done(client.resize(**_group(settings), size=0), t.stable_timeout_s)
    wait_until_stable(settings, client, 0, timeout_s=t.stable_timeout_s, poll_s=t.poll_interval_s, clock=clock,
                      sleep=sleep)
    return True


def release_group(settings: Settings, run_id: str | None = None, *, run_key: str | None = None,
                  client: InstanceGroupManagers | None = None, markers: MarkerStore | None = None,
                  clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep,
                  now: Callable[[], float] = time.time) -> bool:
    """The training group at 0 with no run in its metadata; whether it had to be scaled down. For after the task of
    run ``run_id`` (:func:`run_training`'s id) has ended for good: :func:`run_training` scales down in its
    ``finally``, which a task whose worker process was killed never reaches (the group's GPUs then ran until the next
    run). The metadata is cleared at 0 too: a try killed between its resize and that left the run there, for a VM
    started later to run again.

    Only a group that is ``run_id``'s or its DAG run ``run_key``'s (an earlier try under another run id), or free (no
    run named, the named run's marker written, or its lease run out), is released: another run's group (a run started
    by hand while this one ran) is left as it is, with a warning saying so, and False. ``run_id`` None releases a free
    group only."""
    if run_id is not None:
        check_run_id(run_id)
    if client is None:
        from google.cloud import compute_v1

        client = _as_igm(compute_v1.RegionInstanceGroupManagersClient())
    store: list[MarkerStore] = [markers] if markers is not None else []

    def marker_store() -> MarkerStore:
        if not store:
            from tenfold.storage import gcs_client

            store.append(GcsMarkerStore(gcs_client(settings)))
        return store[0]

    group = client.get(**_group(settings))
    if (busy := _held_by_another(settings, group, run_id, marker_store, now, run_key)) is not None:
        log.warning("training group %s left as it is (%d instances), not released for %s: %s. If that run is dead, "
                    "release it by hand: `%s`", settings.training.fleet.instance_group, group.target_size,
                    f"run {run_id}" if run_id else "a caller that names no run", busy, _resize_by_hand(settings))
        return False
    released = _scaled_to_zero(settings, client, group, clock=clock, sleep=sleep,
                               why="once the run's train task had ended): scaling it to 0")
    _clear_run_metadata(settings, client)
    return released


def run_training(
    settings: Settings,
    run_id: str,
    *,
    args: Sequence[str] = (),
    run_key: str | None = None,
    client: InstanceGroupManagers | None = None,
    markers: MarkerStore | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    now: Callable[[], float] = time.time,
) -> TrainingRun:
    """Run one training job on ``settings.training.nnodes`` VMs of the training group and wait for it.

    The group is resized back to 0 in every case (success, failure, timeout, interruption), so an
    idle environment never pays for GPUs. Raises :class:`TrainingFailed` when the run reports failure
    and :class:`TrainingTimeout` when a bounded wait runs out. Raises :class:`TrainingGroupBusy`, touching nothing,
    when another live run holds the group (see the module's docstring); ``now`` is the wall clock the attempt's start
    is written and a holder's lease is judged by. ``run_key``: the DAG run this run belongs to, written beside it in
    the group's metadata; a holder of the same DAG run is this run's own (an earlier try under another run id).
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
    store: MarkerStore = markers
    group = client.get(**_group(settings))
    # Whose group it is, before anything is changed: the group has no lease but its metadata, and scaling it to 0
    # killed the nodes of the run that holds it (a run started by hand beside the DAG's), which then waited its whole
    # run_timeout_s for a marker and scaled the group to 0 under this run in turn.
    busy = _held_by_another(settings, group, run_id, lambda: store, now, run_key)
    if previous is not None and previous.get("status") == "succeeded":
        log.info("run %s already succeeded (%s); not starting the group", run_id, marker_uri(settings, run_id))
        if busy is not None:
            log.info("training group %s left as it is: %s", t.fleet.instance_group, busy)
            return TrainingRun(run_id, "succeeded", previous, 0.0)
        # The try that saw it succeed may have failed to scale the group back (its task failed for that): a retry
        # that returned at once left the GPUs running, the DAG green; and the run in the metadata (cleared below).
        _scaled_to_zero(settings, client, group, clock=clock, sleep=sleep)
        _clear_run_metadata(settings, client)
        return TrainingRun(run_id, "succeeded", previous, 0.0)
    # At 0 the holder's nodes are gone (its try ended, or was killed after its scale-down): the group is free.
    if busy is not None and group.target_size > 0:
        raise TrainingGroupBusy(f"run {run_id} cannot start: {busy}, and scaling it to 0 would kill that run's "
                                f"{group.target_size} nodes; {_busy_help(settings)}")
    if previous is not None:
        markers.delete(bucket, name)  # a failed attempt's marker; this attempt resumes from checkpoints

    # Starts with the wall-clock start: another run judges this try's lease on the group by it (_held_by_another).
    attempt = f"{int(now())}-{uuid.uuid4().hex[:6]}"
    marker: dict[str, Any] | None = None
    try:
        # From 0: VMs an earlier try left (its scale-down failed, or it was killed mid-run) keep their old metadata
        # (the group's update policy is opportunistic), so they would never run this attempt, and the wait below
        # would hold them for run_timeout_s for a marker that never comes. This attempt resumes from checkpoints.
        _scaled_to_zero(settings, client, group, clock=clock, sleep=sleep)
        _done(
            client.patch(**_group(settings),
                         instance_group_manager_resource=_all_instances_patch(run_metadata(run_id, args, attempt, run_key))),
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
