"""``tenfold serve rollout`` to a version no replica of which ever serves: the pool is set back to the version its
replicas still serve, so the supervisor replaces them and scales them again (the real supervisor's roll runs in
tests/serving/test_fleet.py)."""

from __future__ import annotations

from typing import Any

import pytest

from tenfold.serving import fleet
from tenfold.serving.fleet import FleetSpec, PoolSpec


def _status(settings: Any, version: str) -> None:
    replica = fleet.ReplicaStatus(pool=fleet.STABLE, slot=0, version=version, port=1, pid=0, state=fleet.SERVING,
                                  lb_status="UP", in_flight=0, log="")
    pools = {pool: fleet.PoolStatus(version=version, min=1, max=2, desired=1, utilization=0.0,
                                    replicas=[replica] if pool == fleet.STABLE else []) for pool in fleet.POOLS}
    status = fleet.FleetStatus(generation=2, updated_at=0.0, supervisor_pid=0, haproxy_pid=None, pools=pools)
    (fleet.run_dir(settings) / fleet.STATUS_FILE).write_text(status.to_json())


@pytest.fixture
def up(settings: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    fleet.run_dir(settings).mkdir(parents=True, exist_ok=True)
    spec = FleetSpec(generation=1, pools={pool: PoolSpec(version="v-old", min=1, max=2) for pool in fleet.POOLS})
    (fleet.run_dir(settings) / fleet.SPEC_FILE).write_text(spec.to_json())
    monkeypatch.setattr(fleet, "supervisor_record", lambda s: object())
    monkeypatch.setattr(fleet, "running_settings", lambda s: s)
    return settings


def _rollout_meeting(up: Any, monkeypatch: pytest.MonkeyPatch, serving: str, error: Exception,
                     meanwhile: Any = None) -> tuple[str, FleetSpec | None]:
    """`rollout(v-new)` whose wait ends in ``error`` with the stable replicas serving ``serving`` (after
    ``meanwhile(settings)``, if given); the error it raised, and the spec it left."""
    def waited(settings: Any, done: Any, **kwargs: Any) -> Any:
        _status(settings, serving)
        if meanwhile is not None:
            meanwhile(settings)
        raise error

    monkeypatch.setattr(fleet, "wait_for", waited)
    with pytest.raises(fleet.FleetError) as raised:
        fleet.rollout(up, "v-new", resolve=lambda s, ref: ref)
    return str(raised.value), fleet.read_spec(up)


def test_a_rollout_whose_version_never_served_sets_the_pool_back(up: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    # The old replicas still serve; no replica of v-new ever did.
    said, spec = _rollout_meeting(up, monkeypatch, "v-old",
                                  fleet.FleetTimeout("timed out after 1 s waiting for stable to serve v-new"))
    assert "no replica of v-new served: the stable pool is set back to v-old" in said
    assert spec is not None and spec.pools[fleet.STABLE].version == "v-old" and spec.generation == 3


def test_a_rollout_that_timed_out_with_the_new_version_serving_is_left_to_finish(
        up: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    said, spec = _rollout_meeting(up, monkeypatch, "v-new", fleet.FleetTimeout("timed out"))  # slowly rolling
    assert said == "timed out"
    assert spec is not None and spec.pools[fleet.STABLE].version == "v-new"


def test_a_rollout_whose_supervisor_died_is_not_set_back_and_keeps_the_crash_in_its_error(
        up: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The set-back ran on any FleetError: after a supervisor crash its update_spec raised "the serving fleet is not
    up", which replaced the error carrying the crash's log lines."""
    crash = "the fleet supervisor exited while waiting for stable to serve v-new; last log lines: X"
    said, _ = _rollout_meeting(up, monkeypatch, "v-old", fleet.FleetError(crash))
    assert said == crash


def test_a_rollout_superseded_by_a_newer_one_leaves_the_newer_version_alone(up: Any,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    def newer(settings: Any) -> None:
        fleet.update_spec(settings, lambda old: {**old.pools, fleet.STABLE: fleet.replace(old.pools[fleet.STABLE],
                                                                                            version="v-newer")})

    said, spec = _rollout_meeting(up, monkeypatch, "v-old", fleet.FleetTimeout("timed out"), meanwhile=newer)
    assert said == "timed out"
    assert spec is not None and spec.pools[fleet.STABLE].version == "v-newer"
