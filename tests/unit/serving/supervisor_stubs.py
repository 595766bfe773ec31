"""What the supervisor tests of this folder share: HAProxy's runtime API answering every pointed slot UP, and a real
Supervisor whose replicas are a stub module. (This folder is put on the path by its conftest.py.)"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tenfold.config import build_settings
from tenfold.serving import fleet
from tenfold.serving.haproxy import ServerStat


class HealthyApi:
    """HAProxy's runtime API as the supervisor uses it, every pointed slot UP."""

    def __init__(self) -> None:
        self.slots: dict[tuple[str, str], str] = {}

    def point(self, pool: str, server: str, host: str, port: int) -> None:
        self.slots[(pool, server)] = "UP"

    def admit(self, pool: str, server: str) -> None:
        pass

    def drain(self, pool: str, server: str) -> None:
        self.slots[(pool, server)] = "DRAIN"

    def maintain(self, pool: str, server: str) -> None:
        self.slots.pop((pool, server), None)

    def alive(self) -> bool:
        return True

    def all_servers(self) -> dict[str, dict[str, ServerStat]]:
        out: dict[str, dict[str, ServerStat]] = {}
        for (pool, server), status in self.slots.items():
            out.setdefault(pool, {})[server] = ServerStat(pool, server, status, "L7OK", 0, 0, 0, None)
        return out


def stub_supervisor(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *, stable: int, module: str, code: str,
                     environ: dict[str, str] | None = None) -> Any:
    """A real Supervisor of a ``stable``-replica pool on v1 whose replicas run the stub ``module`` (``code``), with
    the runtime API :class:`HealthyApi`; its announcements are in ``sup.lines``."""
    settings = build_settings("local", {"TENFOLD_HOME": str(tmp_path / "home"), **(environ or {})})
    rd = fleet.run_dir(settings)
    rd.mkdir(parents=True)
    spec = fleet.FleetSpec(1, {"stable": fleet.PoolSpec("v1", stable, stable), "canary": fleet.PoolSpec("v1", 0, 0)})
    (rd / fleet.SPEC_FILE).write_text(spec.to_json())
    stubs = tmp_path / "stubs"
    stubs.mkdir()
    (stubs / f"{module}.py").write_text(code)
    monkeypatch.setattr(fleet, "REPLICA_MODULE", module)
    lines: list[str] = []
    sup = fleet.Supervisor(settings, say=lines.append)
    sup.api = HealthyApi()
    sup.env["PYTHONPATH"] = str(stubs)
    sup.lines = lines
    return sup
