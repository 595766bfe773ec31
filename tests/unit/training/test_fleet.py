"""run_training against a fake instance-group client (no emulator exists for Compute Engine) and the
real GCS emulator for the completion markers: the group always goes back to 0."""

from __future__ import annotations

import json
import uuid
from types import SimpleNamespace
from typing import Any

import pytest

from tenfold.config import get_settings
from tenfold.training import fleet as compute
from tenfold.training.fleet import ATTEMPT_KEY, RUN_ID_KEY, RUN_KEY_KEY, TRAIN_ARGS_KEY

# The patch that takes the run out of the group's metadata once it is at 0.
CLEARED = {RUN_ID_KEY: "", TRAIN_ARGS_KEY: "", ATTEMPT_KEY: "", RUN_KEY_KEY: ""}


class FakeOp:
    """compute_v1's ExtendedOperation as the module uses it: ``result(timeout=)`` waits for the operation and raises
    its error. The wait goes in the group's log beside the API calls, so a test sees what it came before."""

    def __init__(self, log: list[str], call: str, error: Exception | None = None) -> None:
        self.log, self.call, self.error = log, call, error
        self.timeouts: list[float | None] = []

    def result(self, timeout: float | None = None) -> None:
        self.timeouts.append(timeout)
        self.log.append(f"wait {self.call}")
        if self.error:
            raise self.error


class FakeInstanceGroupManagers:
    """RegionInstanceGroupManagersClient at its method boundary: records every call, models the size.

    ``calls`` holds each call with what it was given; ``log`` the calls and the waits on their operations, in order
    (``get``, ``patch``, ``resize <size>``, ``wait <call>``). ``metadata`` is the all-instances metadata, which
    ``patch`` sets key by key and ``get`` returns, as the API does. ``get_error`` fails every get, or with
    ``get_error_at_size`` only those once the group was resized to that size; ``resize_up_error`` fails the operation
    of a resize above 0 (the request accepted, the group's target size changed)."""

    def __init__(self, *, stable_after_polls: int = 2, get_error: Exception | None = None,
                 get_error_at_size: int | None = None, resize_up_error: Exception | None = None,
                 resize_zero_error: Exception | None = None) -> None:
        self.size = 0
        self.metadata: dict[str, str] = {}
        self.calls: list[tuple[str, Any]] = []
        self.log: list[str] = []
        self.ops: list[FakeOp] = []
        self.polls = 0
        self.stable_after_polls = stable_after_polls
        self.get_error = get_error
        self.get_error_at_size = get_error_at_size
        self.resize_up_error = resize_up_error
        self.resize_zero_error = resize_zero_error

    def _op(self, call: str, error: Exception | None = None) -> FakeOp:
        self.log.append(call)
        self.ops.append(FakeOp(self.log, call, error))
        return self.ops[-1]

    def get(self, *, project: str, region: str, instance_group_manager: str) -> Any:
        self.calls.append(("get", (project, region, instance_group_manager)))
        self.log.append("get")
        if self.get_error and self.get_error_at_size in (None, self.size):
            raise self.get_error
        self.polls += 1
        return SimpleNamespace(target_size=self.size, status=SimpleNamespace(is_stable=self.polls >= self.stable_after_polls),
                               all_instances_config=SimpleNamespace(properties=SimpleNamespace(metadata=dict(self.metadata))))

    def resize(self, *, project: str, region: str, instance_group_manager: str, size: int) -> FakeOp:
        self.calls.append(("resize", size))
        self.size = size
        return self._op(f"resize {size}", self.resize_zero_error if size == 0 else self.resize_up_error)

    def patch(self, *, project: str, region: str, instance_group_manager: str, instance_group_manager_resource: Any) -> FakeOp:
        metadata = dict(instance_group_manager_resource.all_instances_config.properties.metadata)
        self.calls.append(("patch", metadata))
        self.metadata.update(metadata)
        return self._op("patch")


class Clock:
    def __init__(self) -> None:
        self.t = 0.0
        self.on_sleep: list[Any] = []

    def __call__(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        self.t += seconds
        for hook in self.on_sleep:
            hook()


def _node_writes_marker(igm: FakeInstanceGroupManagers, client: Any, run_id: str, status: str, after_sleeps: int) -> Any:
    s = get_settings("dev")
    state = {"sleeps": 0}

    def hook() -> None:
        if igm.size == s.training.nnodes:
            state["sleeps"] += 1
            if state["sleeps"] == after_sleeps:
                client.bucket(s.storage.artifacts_bucket).blob(compute.marker_name(s, run_id)).upload_from_string(
                    json.dumps({"status": status, "exit_code": 0 if status == "succeeded" else 1}))
    return hook


def _ended_at_zero_and_cleared(igm: FakeInstanceGroupManagers) -> bool:
    """Scaled to 0, then the run taken out of the instance metadata: a VM the group starts later (by hand, an
    autoscaler) found the last run id and ran that run again, overwriting its marker."""
    return igm.calls[-2:] == [("resize", 0), ("patch", CLEARED)]


def _not_waited_on(igm: FakeInstanceGroupManagers) -> list[str]:
    """The patches and resizes whose operation was not waited on (result(), with the stable timeout) before the next
    API call: a resize right after a patch not yet done boots the VMs on the group's old metadata (the last run, run
    again, or none), and a patch right after a resize races the VMs it starts."""
    timeout = get_settings("dev").training.stable_timeout_s
    return [f"{op.call} (waits {op.timeouts})" for op in igm.ops if op.timeouts != [timeout]] + [
        f"{call} then {after}" for call, after in zip(igm.log, [*igm.log[1:], "the end"], strict=True)
        if call.startswith(("patch", "resize")) and after != f"wait {call}"]


def _run_id() -> str:
    return f"run-{uuid.uuid4().hex[:8]}"


def test_success_resizes_up_waits_for_the_marker_and_back_to_zero(storage_client: Any) -> None:
    s, run_id, igm, clock = get_settings("dev"), _run_id(), FakeInstanceGroupManagers(), Clock()
    clock.on_sleep.append(_node_writes_marker(igm, storage_client, run_id, "succeeded", after_sleeps=3))
    run = compute.run_training(s, run_id, args=["--config", "c.json"], client=igm,
                               markers=compute.GcsMarkerStore(storage_client), clock=clock, sleep=clock.sleep)
    assert run.status == "succeeded" and run.marker["exit_code"] == 0
    kinds = [c[0] for c in igm.calls]
    assert kinds[:2] == ["get", "patch"]  # the group is at 0: nothing to scale down first
    metadata = dict(igm.calls[1][1])
    attempt = metadata.pop(ATTEMPT_KEY)
    assert metadata == {RUN_ID_KEY: run_id, TRAIN_ARGS_KEY: json.dumps(["--config", "c.json"]), RUN_KEY_KEY: ""}
    assert attempt  # a run that names no DAG run (run_key) writes an empty one
    assert igm.calls[2] == ("resize", s.training.nnodes)
    # The metadata patch is done before the resize boots the VMs that read it.
    assert igm.log[1:5] == ["patch", "wait patch", f"resize {s.training.nnodes}", f"wait resize {s.training.nnodes}"]
    assert _not_waited_on(igm) == []
    assert _ended_at_zero_and_cleared(igm) and igm.size == 0
    assert all(c[1] == (s.project_id, s.region, s.training.fleet.instance_group) for c in igm.calls if c[0] == "get")


def test_failed_run_raises_and_still_resizes_to_zero(storage_client: Any) -> None:
    s, run_id, igm, clock = get_settings("dev"), _run_id(), FakeInstanceGroupManagers(), Clock()
    clock.on_sleep.append(_node_writes_marker(igm, storage_client, run_id, "failed", after_sleeps=1))
    with pytest.raises(compute.TrainingFailed, match="failed"):
        compute.run_training(s, run_id, client=igm, markers=compute.GcsMarkerStore(storage_client), clock=clock, sleep=clock.sleep)
    assert _ended_at_zero_and_cleared(igm) and igm.size == 0


def test_group_never_stable_times_out_bounded_and_resizes_to_zero(storage_client: Any) -> None:
    s, igm, clock = get_settings("dev"), FakeInstanceGroupManagers(stable_after_polls=10**9), Clock()
    with pytest.raises(compute.TrainingTimeout, match="not stable"):
        compute.run_training(s, _run_id(), client=igm, markers=compute.GcsMarkerStore(storage_client), clock=clock, sleep=clock.sleep)
    assert clock.t <= s.training.stable_timeout_s + s.training.poll_interval_s
    assert _ended_at_zero_and_cleared(igm)


def test_no_marker_times_out_bounded_and_resizes_to_zero(storage_client: Any) -> None:
    s, igm, clock = get_settings("dev"), FakeInstanceGroupManagers(), Clock()
    with pytest.raises(compute.TrainingTimeout, match="_COMPLETE"):
        compute.run_training(s, _run_id(), client=igm, markers=compute.GcsMarkerStore(storage_client), clock=clock, sleep=clock.sleep)
    assert clock.t <= s.training.stable_timeout_s + s.training.run_timeout_s + 2 * s.training.poll_interval_s
    assert _ended_at_zero_and_cleared(igm)


@pytest.mark.parametrize("where", ["the scale-up's operation", "a get once scaled up"])
def test_api_error_mid_run_still_resizes_to_zero(storage_client: Any, where: str) -> None:
    """An API error once the group was resized to nnodes (its GPUs started): the scale-down still follows it."""
    s, clock, n = get_settings("dev"), Clock(), get_settings("dev").training.nnodes
    error = RuntimeError("503 backend error")
    igm = (FakeInstanceGroupManagers(resize_up_error=error) if where == "the scale-up's operation" else
           FakeInstanceGroupManagers(get_error=error, get_error_at_size=n))
    with pytest.raises(RuntimeError, match="503"):
        compute.run_training(s, _run_id(), client=igm, markers=compute.GcsMarkerStore(storage_client), clock=clock, sleep=clock.sleep)
    failed_at = [f"resize {n}", f"wait resize {n}"] + (["get"] if where == "a get once scaled up" else [])
    assert igm.log[igm.log.index(f"resize {n}"):] == [*failed_at, "resize 0", "wait resize 0", "patch", "wait patch"]
    assert _ended_at_zero_and_cleared(igm) and igm.size == 0 and _not_waited_on(igm) == []


def test_resize_to_zero_failure_after_success_is_not_hidden(storage_client: Any) -> None:
    s, run_id, clock = get_settings("dev"), _run_id(), Clock()
    igm = FakeInstanceGroupManagers(resize_zero_error=RuntimeError("quota"))
    clock.on_sleep.append(_node_writes_marker(igm, storage_client, run_id, "succeeded", after_sleeps=1))
    with pytest.raises(RuntimeError, match="quota"):
        compute.run_training(s, run_id, client=igm, markers=compute.GcsMarkerStore(storage_client), clock=clock, sleep=clock.sleep)


def test_a_failed_run_whose_scale_down_fails_too_is_said_as_the_runs_failure(storage_client: Any) -> None:
    """The scale-down's error replaced the run's: the task's error and alert named a compute API error, never the
    marker saying why training failed."""
    s, run_id, clock = get_settings("dev"), _run_id(), Clock()
    igm = FakeInstanceGroupManagers(resize_zero_error=RuntimeError("compute API 503"))
    clock.on_sleep.append(_node_writes_marker(igm, storage_client, run_id, "failed", after_sleeps=1))
    with pytest.raises(compute.TrainingFailed, match=f"run {run_id} failed on the training group") as failed:
        compute.run_training(s, run_id, client=igm, markers=compute.GcsMarkerStore(storage_client), clock=clock, sleep=clock.sleep)
    assert "compute API 503" in str(failed.value) and "resize it by hand" in str(failed.value)


def test_retry_after_success_does_not_start_the_group_and_failed_marker_is_cleared(storage_client: Any) -> None:
    s, run_id = get_settings("dev"), _run_id()
    blob = storage_client.bucket(s.storage.artifacts_bucket).blob(compute.marker_name(s, run_id))
    blob.upload_from_string(json.dumps({"status": "succeeded", "exit_code": 0}))
    igm = FakeInstanceGroupManagers()
    run = compute.run_training(s, run_id, client=igm, markers=compute.GcsMarkerStore(storage_client))
    assert run.status == "succeeded" and [c[0] for c in igm.calls] == ["get", "patch"]  # at 0 already: nothing started
    # ... and the run is out of the metadata (the try that saw it succeed may have failed before it cleared it)
    assert igm.calls[-1] == ("patch", CLEARED)

    run_id2, clock = _run_id(), Clock()
    storage_client.bucket(s.storage.artifacts_bucket).blob(compute.marker_name(s, run_id2)).upload_from_string(
        json.dumps({"status": "failed", "exit_code": 1}))
    igm2 = FakeInstanceGroupManagers()
    clock.on_sleep.append(_node_writes_marker(igm2, storage_client, run_id2, "succeeded", after_sleeps=2))
    assert compute.run_training(s, run_id2, client=igm2, markers=compute.GcsMarkerStore(storage_client),
                                clock=clock, sleep=clock.sleep).status == "succeeded"
    assert ("resize", s.training.nnodes) in igm2.calls and _ended_at_zero_and_cleared(igm2)


@pytest.mark.parametrize("bad", ["", "Upper", "has space", "x" * 64, "../escape"])
def test_bad_run_id_is_refused_before_any_call(bad: str) -> None:
    igm = FakeInstanceGroupManagers()
    with pytest.raises(ValueError, match="run_id"):
        compute.run_training(get_settings("dev"), bad, client=igm, markers=compute.GcsMarkerStore(None))
    assert igm.calls == []


def test_local_env_is_refused() -> None:
    with pytest.raises(ValueError, match="locally"):
        compute.run_training(get_settings("local"), "run-1", client=FakeInstanceGroupManagers())


def test_broken_marker_names_the_object(storage_client: Any) -> None:
    s, run_id = get_settings("dev"), _run_id()
    storage_client.bucket(s.storage.artifacts_bucket).blob(compute.marker_name(s, run_id)).upload_from_string(b"{not json")
    with pytest.raises(compute.TrainingFailed, match=compute.MARKER):
        compute.GcsMarkerStore(storage_client).read(s.storage.artifacts_bucket, compute.marker_name(s, run_id))


def test_a_retry_after_a_success_whose_scale_down_failed_scales_the_group_down(storage_client: Any) -> None:
    """The try that saw the run succeed failed to resize the group to 0 (its task failed for it); the retry found
    the succeeded marker and returned at once, leaving the GPU VMs running with the DAG green."""
    s, run_id = get_settings("dev"), _run_id()
    storage_client.bucket(s.storage.artifacts_bucket).blob(compute.marker_name(s, run_id)).upload_from_string(
        json.dumps({"status": "succeeded", "exit_code": 0}))
    igm, clock = FakeInstanceGroupManagers(), Clock()
    igm.size = s.training.nnodes  # what the first try left
    run = compute.run_training(s, run_id, client=igm, markers=compute.GcsMarkerStore(storage_client), clock=clock,
                               sleep=clock.sleep)
    assert run.status == "succeeded" and igm.size == 0
    assert ("resize", 0) in igm.calls and ("resize", s.training.nnodes) not in igm.calls


def test_a_retry_starts_from_an_empty_group_so_that_every_node_runs_this_attempt(storage_client: Any) -> None:
    """An earlier try's VMs (its scale-down failed, or it was killed mid-run) keep their old metadata under the
    group's opportunistic update policy: resized to nnodes they are already there, the new attempt never runs on
    them, and the wait held them for run_timeout_s. The group goes to 0 before the metadata patch."""
    s, run_id, clock = get_settings("dev"), _run_id(), Clock()
    storage_client.bucket(s.storage.artifacts_bucket).blob(compute.marker_name(s, run_id)).upload_from_string(
        json.dumps({"status": "failed", "exit_code": 1}))
    igm = FakeInstanceGroupManagers()
    igm.size = s.training.nnodes
    clock.on_sleep.append(_node_writes_marker(igm, storage_client, run_id, "succeeded", after_sleeps=2))
    assert compute.run_training(s, run_id, client=igm, markers=compute.GcsMarkerStore(storage_client), clock=clock,
                                sleep=clock.sleep).status == "succeeded"
    sizing = [c for c in igm.calls if c[0] in ("resize", "patch")]
    assert [c[0] if c[0] == "patch" else c for c in sizing] == [("resize", 0), "patch", ("resize", s.training.nnodes),
                                                                ("resize", 0), "patch"]  # the last: run cleared
    assert _not_waited_on(igm) == []  # at 0 before the patch, the patch done before the scale-up


# --- the group's lease: its metadata names the run that holds it -------------------------------------------------

T0 = 1_700_000_000.0  # the wall-clock second run "a"'s try started at


def _held_by(run_id: str, *, size: int = 1, started: float = T0, run_key: str | None = None) -> FakeInstanceGroupManagers:
    """The group as run ``run_id``'s try left it when it scaled the group up (its metadata, ``size`` VMs); with
    ``run_key``, the DAG run it wrote beside it (without, metadata as written before the run key was)."""
    igm = FakeInstanceGroupManagers()
    igm.size = size
    igm.metadata = {RUN_ID_KEY: run_id, TRAIN_ARGS_KEY: "[]", ATTEMPT_KEY: f"{int(started)}-abc123"}
    if run_key is not None:
        igm.metadata[RUN_KEY_KEY] = run_key
    return igm


def test_a_run_refuses_the_group_another_live_run_holds_and_touches_nothing(storage_client: Any) -> None:
    """A second runner (the CLI beside the DAG's run) scaled the group to 0: the first run's nodes were killed, it
    waited its run_timeout_s for a marker, then its finally scaled the group to 0 under the second run."""
    s, a, b, clock = get_settings("dev"), _run_id(), _run_id(), Clock()
    igm = _held_by(a)
    with pytest.raises(compute.TrainingGroupBusy) as refused:
        compute.run_training(s, b, client=igm, markers=compute.GcsMarkerStore(storage_client), clock=clock,
                             sleep=clock.sleep, now=lambda: T0 + 1800)
    message = str(refused.value)
    assert f"run {a} holds the training group {s.training.fleet.instance_group}" in message
    assert "2023-11-14 22:13:20 UTC, 30 min ago" in message  # when a's try started (T0)
    assert f"gcloud compute instance-groups managed resize {s.training.fleet.instance_group} --size 0" in message
    assert refused.value.retryable is False  # a retry minutes later finds the same run: the task fails at once
    assert [c[0] for c in igm.calls] == ["get"] and igm.size == 1  # no resize, no patch
    assert igm.metadata[RUN_ID_KEY] == a


@pytest.mark.parametrize("why", ["its lease ran out", "it wrote its marker"])
def test_a_group_whose_holder_is_over_is_taken_over(storage_client: Any, why: str) -> None:
    """A try killed (SIGKILL) before its scale-down left its run in the metadata and its VMs up: past its lease, or
    once its nodes wrote the marker, the group is free, or no run ever started again."""
    s, a, b, clock = get_settings("dev"), _run_id(), _run_id(), Clock()
    igm = _held_by(a)
    now = T0 + 60.0
    if why == "its lease ran out":
        now = T0 + compute.lease_s(s) + 1
    else:
        storage_client.bucket(s.storage.artifacts_bucket).blob(compute.marker_name(s, a)).upload_from_string(
            json.dumps({"status": "failed", "exit_code": 1}))
    clock.on_sleep.append(_node_writes_marker(igm, storage_client, b, "succeeded", after_sleeps=2))
    assert compute.run_training(s, b, client=igm, markers=compute.GcsMarkerStore(storage_client), clock=clock,
                                sleep=clock.sleep, now=lambda: now).status == "succeeded"
    sizing = [c for c in igm.calls if c[0] in ("resize", "patch")]
    assert sizing[0] == ("resize", 0) and sizing[1][1][RUN_ID_KEY] == b
    assert sizing[1][1][ATTEMPT_KEY].startswith(f"{int(now)}-")  # this try's lease starts now
    assert sizing[2] == ("resize", s.training.nnodes) and _ended_at_zero_and_cleared(igm)


def test_a_retry_of_the_same_run_takes_its_own_group_over(storage_client: Any) -> None:
    """The run's earlier try (killed, no marker, well within its lease) still holds the group: it is this run's."""
    s, a, clock = get_settings("dev"), _run_id(), Clock()
    igm = _held_by(a, size=s.training.nnodes)
    clock.on_sleep.append(_node_writes_marker(igm, storage_client, a, "succeeded", after_sleeps=2))
    assert compute.run_training(s, a, client=igm, markers=compute.GcsMarkerStore(storage_client), clock=clock,
                                sleep=clock.sleep, now=lambda: T0 + 600).status == "succeeded"
    patched = [c[1] for c in igm.calls if c[0] == "patch"]
    assert [c for c in igm.calls if c[0] == "resize"] == [("resize", 0), ("resize", s.training.nnodes), ("resize", 0)]
    assert patched[0][RUN_ID_KEY] == a and patched[0][ATTEMPT_KEY] == f"{int(T0) + 600}-{patched[0][ATTEMPT_KEY][-6:]}"
    assert patched[0][ATTEMPT_KEY] != f"{int(T0)}-abc123"  # a new start: the earlier try's nodes are not its peers
    assert _ended_at_zero_and_cleared(igm)


def test_a_run_that_succeeded_leaves_another_runs_group_alone(storage_client: Any) -> None:
    """A retry that finds its run succeeded scales a leftover group down: not one another run holds now."""
    s, a, b = get_settings("dev"), _run_id(), _run_id()
    storage_client.bucket(s.storage.artifacts_bucket).blob(compute.marker_name(s, b)).upload_from_string(
        json.dumps({"status": "succeeded", "exit_code": 0}))
    igm = _held_by(a)
    run = compute.run_training(s, b, client=igm, markers=compute.GcsMarkerStore(storage_client), now=lambda: T0 + 60)
    assert run.status == "succeeded" and [c[0] for c in igm.calls] == ["get"] and igm.size == 1


def test_release_leaves_another_runs_group_alone_and_says_so(storage_client: Any,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    """The DAG's release task, run once its train task ended, scaled down whatever run held the group."""
    s, a, b = get_settings("dev"), _run_id(), _run_id()
    igm = _held_by(a)
    markers = compute.GcsMarkerStore(storage_client)
    with caplog.at_level("WARNING", logger=compute.__name__):
        assert compute.release_group(s, b, client=igm, markers=markers, now=lambda: T0 + 60) is False
        assert compute.release_group(s, client=igm, markers=markers, now=lambda: T0 + 60) is False  # no run named
    assert [c[0] for c in igm.calls] == ["get", "get"] and igm.size == 1 and igm.metadata[RUN_ID_KEY] == a
    left = [r.getMessage() for r in caplog.records if "left as it is" in r.getMessage()]
    assert len(left) == 2 and f"not released for run {b}: run {a} holds the training group" in left[0]
    # its own run's release scales it down and clears it (a killed train task's group)
    clock = Clock()
    assert compute.release_group(s, a, client=igm, markers=markers, clock=clock, sleep=clock.sleep,
                                 now=lambda: T0 + 60) is True
    assert [c for c in igm.calls if c[0] == "resize"] == [("resize", 0)] and igm.size == 0 and _not_waited_on(igm) == []
    assert igm.calls[-1] == ("patch", CLEARED)  # its run cleared


def test_release_takes_a_group_whose_lease_ran_out(storage_client: Any) -> None:
    s, a, b, clock = get_settings("dev"), _run_id(), _run_id(), Clock()
    igm = _held_by(a)
    assert compute.release_group(s, b, client=igm, markers=compute.GcsMarkerStore(storage_client), clock=clock,
                                 sleep=clock.sleep, now=lambda: T0 + compute.lease_s(s) + 1) is True
    assert [c for c in igm.calls if c[0] == "resize"] == [("resize", 0)] and igm.size == 0
    assert igm.calls[-1] == ("patch", CLEARED)


# --- the lease is the DAG run's: a retry under another run id (a deploy changed the world size) is still its own ------


def test_a_retry_of_the_same_dag_run_under_another_run_id_takes_its_group_over(storage_client: Any) -> None:
    """Try 1 of a train task was SIGKILLed with the group up; a deploy then changed nnodes, which gives the run a
    folder, so a run id, of its own. Try 2 (run id b) found run a in the metadata, within its lease and with no marker:
    TrainingGroupBusy, not retryable, the task failed for good; and the release task left the GPUs running."""
    s, a, b, clock = get_settings("dev"), _run_id(), _run_id(), Clock()
    key = "scheduled__2026-12-07t05-00-00"
    igm = _held_by(a, size=s.training.nnodes + 1, run_key=key)  # the try before the deploy, on one node more
    clock.on_sleep.append(_node_writes_marker(igm, storage_client, b, "succeeded", after_sleeps=2))
    run = compute.run_training(s, b, run_key=key, client=igm, markers=compute.GcsMarkerStore(storage_client),
                               clock=clock, sleep=clock.sleep, now=lambda: T0 + 600)
    assert run.status == "succeeded"
    assert [c for c in igm.calls if c[0] == "resize"] == [("resize", 0), ("resize", s.training.nnodes), ("resize", 0)]
    patched = next(c[1] for c in igm.calls if c[0] == "patch")
    assert (patched[RUN_ID_KEY], patched[RUN_KEY_KEY]) == (b, key)  # the DAG run written beside the run id
    assert _ended_at_zero_and_cleared(igm) and _not_waited_on(igm) == []

    # The release task after a last try killed the same way releases it too: it is this DAG run's group.
    igm = _held_by(a, size=s.training.nnodes + 1, run_key=key)
    assert compute.release_group(s, b, run_key=key, client=igm, markers=compute.GcsMarkerStore(storage_client),
                                 clock=clock, sleep=clock.sleep, now=lambda: T0 + 600) is True
    assert [c for c in igm.calls if c[0] == "resize"] == [("resize", 0)] and igm.size == 0
    assert igm.calls[-1] == ("patch", CLEARED)


@pytest.mark.parametrize("holder_key", ["manual__2026-12-07t09-12-00", ""], ids=["another-dag-run", "none-written"])
def test_a_holder_of_another_dag_run_is_still_refused_with_a_run_key(storage_client: Any, holder_key: str) -> None:
    """The run key makes an earlier try of this DAG run its own, not any run: another DAG run's live try (or one whose
    metadata names no DAG run) keeps the group."""
    s, a, b, clock = get_settings("dev"), _run_id(), _run_id(), Clock()
    key = "scheduled__2026-12-07t05-00-00"
    igm = _held_by(a, run_key=holder_key)
    markers = compute.GcsMarkerStore(storage_client)
    with pytest.raises(compute.TrainingGroupBusy, match=f"run {b} cannot start: run {a} holds the training group"):
        compute.run_training(s, b, run_key=key, client=igm, markers=markers, clock=clock, sleep=clock.sleep,
                             now=lambda: T0 + 600)
    assert compute.release_group(s, b, run_key=key, client=igm, markers=markers, clock=clock, sleep=clock.sleep,
                                 now=lambda: T0 + 600) is False
    assert [c[0] for c in igm.calls] == ["get", "get"] and igm.size == 1 and igm.metadata[RUN_ID_KEY] == a
