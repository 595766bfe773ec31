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


def test_a_rollout_that_timed_out_with_the_pool_mixed_and_the_new_version_failing_says_so_and_how_to_go_back(
        up: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Half way: one replica of v-new admitted and one of v-old drained, then every next v-new replica failed to load.
    The pool stays mixed (the last v-old one keeps serving) while the supervisor retries v-new; the error said only
    "timed out ... recent fleet events", not that the pool is mixed, that v-new fails, nor how to go back."""
    def mixed(settings: Any) -> None:
        replicas = [fleet.ReplicaStatus(pool=fleet.STABLE, slot=slot, version=version, port=slot, pid=0,
                                        state=fleet.SERVING, lb_status="UP", in_flight=0, log="")
                    for slot, version in ((1, "v-old"), (2, "v-new"))]
        pools = {pool: fleet.PoolStatus(version="v-new" if pool == fleet.STABLE else "v-old", min=1, max=2, desired=2,
                                        utilization=0.0, replicas=replicas if pool == fleet.STABLE else [],
                                        failing=["v-new"] if pool == fleet.STABLE else [])
                 for pool in fleet.POOLS}
        status = fleet.FleetStatus(generation=2, updated_at=0.0, supervisor_pid=0, haproxy_pid=1, pools=pools)
        (fleet.run_dir(settings) / fleet.STATUS_FILE).write_text(status.to_json())

    def waited(settings: Any, done: Any, **kwargs: Any) -> Any:
        mixed(settings)
        raise fleet.FleetTimeout("timed out after 1 s waiting for stable to serve v-new; recent fleet events:\nX")

    monkeypatch.setattr(fleet, "wait_for", waited)
    with pytest.raises(fleet.FleetTimeout) as raised:
        fleet.rollout(up, "v-new", resolve=lambda s, ref: ref)
    said = str(raised.value)
    assert said.startswith("timed out after 1 s waiting for stable to serve v-new; recent fleet events:\nX\n"), said
    assert "the stable pool is left mixed: replica-stable-2 serves v-new; replica-stable-1 serves v-old" in said, said
    assert "v-new is failing" in said and "the supervisor keeps retrying it" in said, said
    assert "to go back, run `tenfold serve rollout --pool stable --model v-old`" in said, said
    spec = fleet.read_spec(up)  # not set back: a replica of v-new serves, and the user chooses
    assert spec is not None and spec.pools[fleet.STABLE].version == "v-new"


def test_the_supervisors_status_names_the_versions_failing_in_each_pool(tmp_path: Any,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """What the rollout's error above reads: the supervisor's status carries the versions it retries per pool."""
    from supervisor_stubs import stub_supervisor

    sup = stub_supervisor(tmp_path, monkeypatch, stable=1, module="unused_replica", code="")
    try:
        assert sup.status().pools[fleet.STABLE].failing == []
        sup._failed(fleet.STABLE, ("v2", ""), "replica-stable-2: did not become ready")
        sup._failed(fleet.STABLE, ("v2", "delay=200ms"), "replica-stable-2: did not become ready")
        st = fleet.FleetStatus.from_json(sup.status().to_json())
        assert st.pools[fleet.STABLE].failing == ["v2"] and st.pools[fleet.CANARY].failing == []
    finally:
        sup.shutdown()


def test_a_rollout_of_a_pool_that_keeps_no_replica_is_refused_without_retries(up: Any) -> None:
    """The refusal is the same on every try: the rollout DAG's deploy (retries=2) retried it twice, minutes apart."""
    from airflow.sdk.exceptions import AirflowFailException

    from tenfold.pipelines.common import run_step

    fleet.update_spec(up, lambda old: {**old.pools, fleet.CANARY: fleet.replace(old.pools[fleet.CANARY], min=0)})
    with pytest.raises(fleet.FleetError, match=r"the canary pool keeps no replica \(min 0\)") as raised:
        fleet.rollout(up, "v-new", pool=fleet.CANARY, resolve=lambda s, ref: ref)
    assert getattr(raised.value, "retryable", True) is False
    from tenfold.serving import cli as serving_cli

    assert serving_cli._code(raised.value) == 2  # `tenfold serve rollout` exits 2 for it, as for other refusals
    with pytest.raises(AirflowFailException, match=r"keeps no replica \(min 0\)"):
        run_step(fleet.rollout, up, "v-new", pool=fleet.CANARY, resolve=lambda s, ref: ref)
    # A timeout is still left to the retries (the supervisor may get there on the next try).
    assert getattr(fleet.FleetTimeout("timed out"), "retryable", True) is not False
