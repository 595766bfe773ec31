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


def test_a_rollout_whose_version_never_served_sets_the_pool_back(up: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    def timed_out(settings: Any, done: Any, **kwargs: Any) -> Any:
        _status(settings, "v-old")  # the old replicas still serve; no replica of v-new ever did
        raise fleet.FleetTimeout("timed out after 1 s waiting for stable to serve v-new")

    monkeypatch.setattr(fleet, "wait_for", timed_out)
    with pytest.raises(fleet.FleetError, match=r"no replica of v-new served: the stable pool is set back to v-old"):
        fleet.rollout(up, "v-new", resolve=lambda s, ref: ref)
    spec = fleet.read_spec(up)
    assert spec is not None and spec.pools[fleet.STABLE].version == "v-old" and spec.generation == 3


def test_a_rollout_that_timed_out_with_the_new_version_serving_is_left_to_finish(
        up: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    def timed_out(settings: Any, done: Any, **kwargs: Any) -> Any:
        _status(settings, "v-new")  # it serves (slowly rolling): not set back
        raise fleet.FleetTimeout("timed out")

    monkeypatch.setattr(fleet, "wait_for", timed_out)
    with pytest.raises(fleet.FleetError, match=r"^timed out$"):
        fleet.rollout(up, "v-new", resolve=lambda s, ref: ref)
    spec = fleet.read_spec(up)
    assert spec is not None and spec.pools[fleet.STABLE].version == "v-new"



def test_a_rollout_whose_supervisor_died_is_not_set_back_and_keeps_the_crash_in_its_error(
        up: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The set-back ran on any FleetError: after a supervisor crash its update_spec raised "the serving fleet is not
    up", which replaced the error carrying the crash's log lines."""
    def crashed(settings: Any, done: Any, **kwargs: Any) -> Any:
        _status(settings, "v-old")
        raise fleet.FleetError("the fleet supervisor exited while waiting for stable to serve v-new; last log lines: X")

    monkeypatch.setattr(fleet, "wait_for", crashed)
    with pytest.raises(fleet.FleetError, match=r"the fleet supervisor exited .* last log lines: X$"):
        fleet.rollout(up, "v-new", resolve=lambda s, ref: ref)


def test_a_rollout_superseded_by_a_newer_one_leaves_the_newer_version_alone(up: Any,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    def newer_meanwhile(settings: Any, done: Any, **kwargs: Any) -> Any:
        _status(settings, "v-old")
        fleet.update_spec(settings, lambda old: {**old.pools, fleet.STABLE: fleet.replace(old.pools[fleet.STABLE],
                                                                                            version="v-newer")})
        raise fleet.FleetTimeout("timed out")

    monkeypatch.setattr(fleet, "wait_for", newer_meanwhile)
    with pytest.raises(fleet.FleetError, match=r"^timed out$"):
        fleet.rollout(up, "v-new", resolve=lambda s, ref: ref)
    spec = fleet.read_spec(up)
    assert spec is not None and spec.pools[fleet.STABLE].version == "v-newer"
