"""What the in-process server tests of this folder share: the flights workload under a request model of a test's own
(a workload of one's own, as docs/workloads.md has users bring), put where ``TENFOLD_WORKLOAD`` names it for one
test, and a wait on a condition. (This folder is put on the path by its conftest.py.)"""

from __future__ import annotations

import dataclasses
import sys
import time
import types
from collections.abc import Callable

import pytest
from pydantic import BaseModel

from tenfold import workloads
from tenfold.workloads.flights import FlightsWorkload


@dataclasses.dataclass(frozen=True)
class RequestWorkload(FlightsWorkload):
    """The flights workload, but for its request (``request``) and its batch key (``requests``)."""

    name: str = "own"
    batch_key: str = "requests"
    request: type[BaseModel] | None = None

    @property
    def request_model(self) -> type[BaseModel]:
        assert self.request is not None
        return self.request


def install_workload(monkeypatch: pytest.MonkeyPatch, name: str, request: type[BaseModel]) -> dict[str, str]:
    """Put the workload ``name`` (flights', but for ``request``) in a module of its own, for this test only; the
    environment that names it."""
    module_name = f"tenfold_unit_{name}_workload"
    module = types.ModuleType(module_name)
    module.WORKLOAD = RequestWorkload(name=name, request=request)  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, module_name, module)
    monkeypatch.setattr(workloads, "_LOADED", dict(workloads._LOADED))  # resolved for this test only
    return {"TENFOLD_WORKLOAD": f"{module_name}:WORKLOAD"}


def until(check: Callable[[], bool], timeout: float) -> None:
    """Wait until ``check()``; AssertionError after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(0.02)
