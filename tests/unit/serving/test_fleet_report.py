"""``tenfold status``'s verdict on the fleet, from what the supervisor and each replica say."""

from __future__ import annotations

from tenfold.serving.fleet import SERVING, FleetReport, ReplicaReport, describe


def _replica(pool: str, slot: int, *, alive: bool = True, state: str = SERVING) -> ReplicaReport:
    return ReplicaReport(pool=pool, slot=slot, version="v1", url=f"http://127.0.0.1:{9000 + slot}", pid=100 + slot,
                         state=state, lb_status="UP", alive=alive, log="replica.log")


def _report(*replicas: ReplicaReport) -> FleetReport:
    return FleetReport(running=True, supervisor_pid=1, haproxy_alive=True, haproxy_pid=2, url="http://127.0.0.1:8080",
                       metrics_url="http://127.0.0.1:8404/metrics", canary_percent=0,
                       versions={"stable": "v1", "canary": "v1"}, replicas=list(replicas), token_path="t", token="x",
                       log="fleet.log", minimums={"stable": 2, "canary": 0})


def test_a_stable_pool_with_no_replica_serving_is_not_healthy_while_the_canary_lives() -> None:
    """Both stable replicas died (dropped from the status, their restarts backing off) and the canary at 0 % lived
    on: status said "serving healthy" and exited 0 while every request got a 503."""
    bare = _report(_replica("canary", 0))
    assert not bare.healthy
    assert "stable  v1  0 serving (min 2)" in describe(bare)
    starting = _report(_replica("canary", 0), _replica("stable", 1, state="starting"))
    assert not starting.healthy  # starting is not serving
    one = _report(_replica("canary", 0), _replica("stable", 1))
    assert one.healthy and "stable  v1  1 serving (min 2)" in describe(one)  # degraded, but serving


def test_a_serving_replica_that_does_not_answer_is_not_healthy() -> None:
    assert not _report(_replica("stable", 0), _replica("stable", 1, alive=False)).healthy
    assert _report(_replica("stable", 0), _replica("stable", 1)).healthy


def test_a_pool_whose_replicas_serve_another_version_than_it_is_set_to_says_so() -> None:
    """After a rollout to a version that never loaded, status printed "stable v2  2 serving" while both replicas
    served v1: the pool's version is what it is set to serve, and each replica's own is shown now."""
    from dataclasses import replace

    report = replace(_report(_replica("stable", 0), _replica("stable", 1)), versions={"stable": "v2", "canary": "v1"})
    text = describe(report)
    assert "stable  v2  2 serving (min 2)  rolling: 0 of its replicas serve it, v1 still serving" in text, text
    assert all(line.rstrip().endswith("v1") for line in text.splitlines() if "replica-stable-" in line), text
    assert "rolling" not in describe(_report(_replica("stable", 0), _replica("stable", 1)))
