"""`tenfold rollout status` says what a rollout's record says: a decided end not yet carried out is not shown as
done, and the router's canary share is shown only beside the rollout it belongs to (the newest)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from typer.testing import CliRunner

from tenfold.cli import app
from tenfold.local import free_ports, process
from tenfold.rollout import cli as rollout_cli
from tenfold.rollout.haproxy import HaproxyRouter
from tenfold.rollout.record import Rollout, describe
from tenfold.serving.haproxy import RuntimeApi, haproxy_argv, read_split_map, write_config

T = "2026-12-03T12:00:00+00:00"


def _start(rollout_id: str, version: str) -> dict[str, Any]:
    return {"at": T, "run": {"rollout_id": rollout_id, "version": version, "champion": "v1", "started_at": T,
                             "policy": {"steps": [5, 25, 50, 100]}}}


class Registry:
    """Two rollouts: r1 of v2 (older, rolled back), r2 of v3 (the newest, at its second step)."""

    def __init__(self) -> None:
        self.events = {
            ("v2", "r1"): {"start": _start("r1", "v2"),
                           "end": {"at": T, "outcome": "rolled_back", "reasons": ["error rate"]},
                           "done": {"at": T, "outcome": "rolled_back", "reasons": ["error rate"], "report": "file:///r1"}},
            ("v3", "r2"): {"start": _start("r2", "v3"), "s01-set": {"at": T, "step": 1, "percent": 5},
                           "s02-set": {"at": T, "step": 2, "percent": 25}},
        }

    def rollouts(self, version: str | None = None) -> list[tuple[str, str, str]]:
        return [(T, v, r) for (v, r) in self.events if version in (None, v)]

    def find(self, ref: str) -> str:  # the registry's: an alias, an id or an id prefix
        from tenfold.registry.errors import UnknownVersion

        known = {"challenger": "v3", "champion": "v1", "v2": "v2", "v3": "v3"}
        if ref not in known:
            raise UnknownVersion(f"no version or alias {ref!r} in the registry")
        return known[ref]

    def rollout_events(self, version: str, rollout_id: str) -> dict[str, Any]:
        return self.events[(version, rollout_id)]


@pytest.fixture
def fleet_router(make_settings: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[HaproxyRouter]:
    """A real HAProxy as the local fleet's (no replicas), its canary at 25 %, and the CLI given that fleet's settings:
    `tenfold rollout` reads and sets the weight through the real router (:func:`tenfold.rollout.adapters.router`).
    The router returned reads HAProxy itself."""
    base = make_settings()
    lb, replicas, metrics = free_ports(3)
    local = base.local.model_copy(update={"lb_port": lb, "replica_base_port": replicas})
    fleet = base.serving.fleet.model_copy(update={"lb_metrics_port": metrics})
    settings = base.model_copy(update={"local": local, "serving": base.serving.model_copy(update={"fleet": fleet})})
    paths = write_config(settings, canary_percent=25)
    record = process.start("haproxy", haproxy_argv(paths), run_dir=paths.run_dir, port=lb, tie_to_this_process=True)
    try:
        process.wait_until(RuntimeApi(paths.socket).alive, timeout=10, what="haproxy", record=record)
        router = HaproxyRouter.from_settings(settings)
        assert router.canary_percent() == 25
        monkeypatch.setattr(rollout_cli, "get_settings", lambda: settings)
        yield router
    finally:
        process.stop(record)


def test_an_end_not_carried_out_yet_is_not_shown_as_done() -> None:
    """conclude records end=promoted, then moves the alias and rolls the stable pool; a roll that timed out left
    status saying "state: promoted" with the canary carrying 100 % and the stable pool never rolled."""
    rollout = Rollout("r1", "v2", "v1", T, (5, 100))
    record = {"start": _start("r1", "v2"), "end": {"at": T, "outcome": "promoted", "reasons": []}}
    text = describe(rollout, record)
    assert text.splitlines()[-1].startswith("state: promoted (not carried out yet: conclude has not finished")
    done = {**record, "done": {"at": T, "outcome": "promoted", "reasons": [], "report": "file:///x"}}
    assert describe(rollout, done).splitlines()[-1] == "state: promoted"
    # An abort is carried out by `tenfold rollout abort` itself (weight 0 at once), done or not: an older rollout whose
    # conclude failed never records done, and was said to wait for it for ever.
    aborted = {"start": _start("r1", "v2"), "end": {"at": T, "outcome": "aborted", "reasons": ["aborted by ops"]}}
    assert describe(rollout, aborted).splitlines()[-1] == "state: aborted"


@pytest.mark.parametrize(("version", "share"), [("v2", False), ("v3", True), (None, True)])
def test_the_canary_share_is_shown_only_beside_the_newest_rollout(monkeypatch: pytest.MonkeyPatch, version: str | None,
                                                                  share: bool) -> None:
    """--version v2 printed "canary at 25 % now" under r1, which had rolled back: the share was r2's."""
    monkeypatch.setattr(rollout_cli, "registry_of", lambda settings: Registry())
    monkeypatch.setattr(rollout_cli, "_router_percent", lambda settings: 25)
    out = CliRunner().invoke(app, ["rollout", "status", *(["--version", version] if version else [])])
    assert out.exit_code == 0, out.output
    assert ("canary at 25 % now" in out.output) is share, out.output
    assert ("rollout r1:" in out.output) is (version == "v2"), out.output


@pytest.mark.parametrize("command", ["status", "abort"])
def test_a_version_given_as_an_alias_finds_its_rollouts(monkeypatch: pytest.MonkeyPatch, fleet_router: HaproxyRouter,
                                                        command: str) -> None:
    """`tenfold rollout abort --version challenger` said "no rollout recorded for challenger: nothing to abort" (exit 3)
    while the challenger's canary kept its share: rollouts are recorded under version ids. Found, the abort takes
    the canary's share to 0 in HAProxy itself (and in the split map a restart of HAProxy loads); status, and an
    abort that finds no rollout or no version, leave it at 25 %."""
    from tenfold.rollout import record

    registry = Registry()
    aborted: list[str] = []
    monkeypatch.setattr(rollout_cli, "registry_of", lambda settings: registry)

    def record_abort(reg: Any, rollout: Rollout, by: str) -> tuple[bool, str]:
        aborted.append(rollout.rollout_id)
        return True, "aborted"

    monkeypatch.setattr(record, "record_abort", record_abort)
    out = CliRunner().invoke(app, ["rollout", command, "--version", "challenger"])
    assert out.exit_code == 0 and "rollout r2" in out.output, out.output
    assert aborted == (["r2"] if command == "abort" else []), out.output
    expected = 0 if command == "abort" else 25
    assert (fleet_router.canary_percent(), read_split_map(fleet_router.split_map)) == (expected, expected), out.output
    if command == "status":
        assert "canary at 25 % now" in out.output, out.output  # read from HAProxy
    else:
        assert "canary at 0 %" in out.output, out.output
        fleet_router.set_canary_percent(25)  # the canary's share again: the refusals below must leave it alone
    none = CliRunner().invoke(app, ["rollout", command, "--version", "champion"])  # an alias naming another version
    assert none.exit_code == 3 and "no rollout recorded for champion (now v1)" in none.output, none.output
    unknown = CliRunner().invoke(app, ["rollout", command, "--version", "nope"])
    assert unknown.exit_code == 2 and "no version or alias 'nope'" in unknown.output, unknown.output
    assert fleet_router.canary_percent() == 25 and read_split_map(fleet_router.split_map) == 25
    assert aborted == (["r2"] if command == "abort" else [])  # nothing more recorded


def test_aborting_a_promoted_rollout_is_a_refusal_not_no_rollout(monkeypatch: pytest.MonkeyPatch) -> None:
    """Exit 3 is "no rollout recorded"; a promoted rollout (or one a newer rollout superseded) is refused: exit 2,
    as the module's codes say, and the canary's weight is left alone."""
    from tenfold.rollout import adapters

    registry = Registry()
    registry.events[("v3", "r2")].update({"end": {"at": T, "outcome": "promoted", "reasons": []},
                                          "done": {"at": T, "outcome": "promoted", "reasons": [], "report": "x"}})
    monkeypatch.setattr(rollout_cli, "registry_of", lambda settings: registry)
    monkeypatch.setattr(adapters, "router", lambda settings: pytest.fail("the weight is not this abort's to set"))
    out = CliRunner().invoke(app, ["rollout", "abort"])
    assert out.exit_code == 2 and "rollout r2 of v3 already ended (promoted): nothing to abort" in out.output, out.output


def test_abort_and_its_help_take_the_newest_rollout_whether_or_not_it_has_ended(monkeypatch: pytest.MonkeyPatch) -> None:
    """The help said abort stops "the newest rollout that has not ended"; it takes the newest, ended or not: with an
    older rollout still in progress and a newer one ended, it sets the ended one's canary weight to 0 again and leaves
    the older one running (reached with --version)."""
    from tenfold.rollout import adapters, record

    registry = Registry()
    del registry.events[("v2", "r1")]["end"], registry.events[("v2", "r1")]["done"]  # r1 never ended
    registry.events[("v3", "r2")]["end"] = {"at": T, "outcome": "rolled_back", "reasons": ["error rate"]}
    set_to: list[int] = []
    monkeypatch.setattr(rollout_cli, "registry_of", lambda settings: registry)
    monkeypatch.setattr(adapters, "router",
                        lambda settings: type("R", (), {"set_canary_percent": lambda self, p: set_to.append(p)})())
    monkeypatch.setattr(record, "record_abort", lambda *a, **k: pytest.fail("r1 is not the newest: not aborted"))
    out = CliRunner().invoke(app, ["rollout", "abort"])
    assert out.exit_code == 0 and "rollout r2 of v3 already ended (rolled_back); canary set to 0 %" in out.output, out.output
    assert set_to == [0]
    helped = CliRunner().invoke(app, ["rollout", "abort", "--help"])
    text = " ".join(helped.output.split())
    assert helped.exit_code == 0 and "has not ended" not in text, text
    assert "Abort the newest rollout (of --version), ended or not" in text, text
    assert "whether or not it has ended" in " ".join((rollout_cli.__doc__ or "").split())


@pytest.mark.parametrize("given", ["", "  "])
def test_an_empty_version_is_refused_not_read_as_the_newest_rollout(monkeypatch: pytest.MonkeyPatch, given: str) -> None:
    """`tenfold rollout abort --version "$V"` with V unset read "" as "no version": it aborted the newest rollout (r2,
    a canary at its second step, perhaps healthy) and set its weight to 0."""
    from tenfold.rollout import adapters, record

    registry = Registry()
    aborted: list[str] = []
    set_to: list[int] = []
    monkeypatch.setattr(rollout_cli, "registry_of", lambda settings: registry)
    monkeypatch.setattr(rollout_cli, "_router_percent", lambda settings: 25)
    monkeypatch.setattr(adapters, "router",
                        lambda settings: type("R", (), {"set_canary_percent": lambda self, p: set_to.append(p)})())
    monkeypatch.setattr(record, "record_abort",
                        lambda reg, rollout, by: aborted.append(rollout.rollout_id) or (True, "aborted"))
    for command in ("abort", "status"):
        out = CliRunner().invoke(app, ["rollout", command, "--version", given])
        lines = out.output.strip().splitlines()
        assert out.exit_code == 2 and len(lines) == 1, out.output
        assert lines[0].startswith(f"error: --version {given!r} is empty: give a version id, id prefix or alias"), lines
        assert "leave --version out for the newest rollout" in lines[0], lines
    assert aborted == [] and set_to == []  # nothing recorded, the canary's weight untouched
