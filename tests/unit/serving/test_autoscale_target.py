"""The local fleet's supervisor sizes its pools at the target utilisation its settings give
(``serving.target_utilization``, the number the cloud's autoscaler is given too), not at the default 0.7.

The supervisor is real (:func:`supervisor_stubs.stub_supervisor`: replicas a stub module that sleeps), the load is
what HAProxy's runtime API reports for the stable pool's slots, and the supervisor's loop (``tick``) observes it and
decides the pool's size.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from pathlib import Path
from typing import Any

import pytest
import supervisor_stubs
from supervisor_stubs import HealthyApi, stub_supervisor

from tenfold.config import Settings
from tenfold.local.process import LocalPlatformError
from tenfold.serving import fleet
from tenfold.serving.autoscale import recommend
from tenfold.serving.haproxy import ServerStat

TARGET = 0.35
LOAD = 10  # requests HAProxy holds for the stable pool, whatever its size
LOW, HIGH = 1, 8


class LoadedApi(HealthyApi):
    """:class:`HealthyApi` whose stable pool holds ``LOAD`` requests in all (on one of its slots, as HAProxy's
    ``show stat`` would count them), from the first slot pointed on."""

    def all_servers(self) -> dict[str, dict[str, ServerStat]]:
        out = super().all_servers()
        if stable := out.get("stable"):
            first = sorted(stable)[0]
            stable[first] = dataclasses.replace(stable[first], sessions=LOAD)
        return out


def _targeting(target: float) -> Any:
    """``build_settings`` as stub_supervisor calls it, with ``serving.target_utilization`` at ``target``: no
    environment variable sets it (TENFOLD_SERVING__TARGET_UTILIZATION is refused by name), the supervisor is given
    whole settings (`tenfold serve up` writes them to the fleet's settings file)."""
    real = supervisor_stubs.build_settings

    def build(env: str, environ: dict[str, str]) -> Settings:
        settings = real(env, environ)
        return settings.model_copy(update={"serving": settings.serving.model_copy(update={"target_utilization": target})})

    return build


def test_the_supervisor_sizes_a_pool_at_the_target_its_settings_give(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(supervisor_stubs, "build_settings", _targeting(TARGET))
    sup = stub_supervisor(tmp_path, monkeypatch, stable=1, module="sleeping_replica",
                          code="import time\ntime.sleep(300)\n",
                          environ={"TENFOLD_SERVING__FLEET__STABLE_MAX": str(HIGH),
                                   "TENFOLD_SERVING__FLEET__SCALE_INTERVAL_S": "0.2"})
    try:
        capacity = sup.settings.serving.fleet.replica_capacity
        assert sup.settings.serving.target_utilization == TARGET
        expected = recommend(LOAD, capacity=capacity, target=TARGET, low=LOW, high=HIGH)
        at_default = recommend(LOAD, capacity=capacity, target=0.7, low=LOW, high=HIGH)
        assert LOW < expected < HIGH and expected != at_default, (expected, at_default)  # the load tells them apart

        # The pool may grow to HIGH (the next tick takes the new spec, as `tenfold serve scale` writes it).
        spec = fleet.FleetSpec(2, {"stable": fleet.PoolSpec("v1", LOW, HIGH), "canary": fleet.PoolSpec("v1", 0, 0)})
        (sup.run_dir / fleet.SPEC_FILE).write_text(spec.to_json())
        sup.api = LoadedApi()
        monkeypatch.setattr(sup, "_ensure_haproxy", lambda: True)
        # Every decision of the stable pool's own autoscaler, as the supervisor asks for it (the call goes through).
        decisions: list[tuple[float, int]] = []
        scaler = sup.scalers["stable"]
        decide = scaler.decide

        def recorded(now: float, in_flight: float, current: int) -> int:
            wanted = decide(now, in_flight, current)
            decisions.append((in_flight, wanted))
            return wanted

        monkeypatch.setattr(scaler, "decide", recorded)
        # Until a scaling interval saw the load on every sample (the first samples, before a slot was pointed, see 0).
        until = time.monotonic() + 20
        while not any(in_flight == LOAD for in_flight, _ in decisions):
            assert time.monotonic() < until, f"no decision on {LOAD} in flight: {decisions}\n" + "\n".join(sup.lines)
            with contextlib.suppress(LocalPlatformError):  # as the supervisor's loop: a failed tick goes on
                sup.tick()
            time.sleep(0.05)
        wanted = next(w for in_flight, w in decisions if in_flight == LOAD)
        assert wanted == expected, (f"{LOAD} in flight at capacity {capacity}: {wanted} replicas, not the {expected} of "
                                    f"target {TARGET} (target 0.7 gives {at_default})", decisions)
        assert sup.desired["stable"] == expected, (sup.desired, decisions)
    finally:
        sup.shutdown()
