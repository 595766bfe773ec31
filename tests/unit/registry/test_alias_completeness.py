"""Aliases move only to versions whose stored files are all there, and a short id prefix is refused as too short.

Against the session's fake-gcs-server: a stored file is deleted (or cut short) through a storage client of its own,
as an operator following ``download``'s "delete that file ... then register the model again" would."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from tenfold.cli import app
from tenfold.config import Settings
from tenfold.registry import Lineage, ModelRegistry
from tenfold.registry import cli as models_cli
from tenfold.registry import registry as registry_module
from tenfold.registry.errors import IntegrityError, RegistryError

runner = CliRunner()


@pytest.fixture
def cli_on(registry_settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """``tenfold models`` on this test's registry."""
    monkeypatch.setattr(models_cli, "command_settings", lambda env=None: registry_settings)
    return registry_settings


@pytest.fixture
def new_version(registry_settings: Settings, make_model_dir: Callable[..., Path], lineage: Lineage) -> Callable[[int], str]:
    """``new_version(seed)``: a saved-model folder of its own bytes, registered; its version."""
    return lambda seed: ModelRegistry(registry_settings).register(make_model_dir(seed), lineage,
                                                                    metrics={"auc": 0.6}).version


def _stored(settings: Settings, storage_client: Any, version: str, path: str) -> Any:
    """The stored object of ``path`` in ``version``, through the test's own client (not the registry's)."""
    return storage_client.bucket(settings.storage.models_bucket).blob(
        settings.storage.registry_object("versions", version, "files", path))


def _history(reg: ModelRegistry, alias: str = "champion") -> list[tuple[int, str]]:
    return [(h.seq, h.version) for h in reg.alias_history(alias)]


@pytest.mark.parametrize("damage", ["deleted", "cut short"])
def test_an_alias_is_not_moved_to_a_version_whose_weights_are_gone(
        cli_on: Settings, new_version: Callable[[int], str], storage_client: Any, damage: str) -> None:
    """`tenfold models promote B` with B's weights.pt deleted printed "champion: A -> B" (exit 0); every replica then
    failed to load the champion ("weights.pt ... is missing")."""
    reg = ModelRegistry(cli_on)
    a, b = (new_version(seed) for seed in (51, 52))
    out = runner.invoke(app, ["models", "promote", a])
    assert out.exit_code == 0, out.output
    weights = _stored(cli_on, storage_client, b, "weights.pt")
    weights.delete()
    if damage == "cut short":
        weights.upload_from_string(b"\0" * 100)
    said = "is missing" if damage == "deleted" else "holds 100 bytes, not the 4096 recorded"

    out = runner.invoke(app, ["models", "promote", b])
    assert out.exit_code == 2, out.output
    assert f"champion was not moved: version {b} is incomplete in the store (its stored weights.pt {said}" \
        in out.output and "Register the model's folder again" in out.output and "Traceback" not in out.output
    assert reg.resolve("champion") == a and _history(reg) == [(1, a)]

    with pytest.raises(IntegrityError, match=rf"challenger was not moved: version {b} .*weights\.pt {said}"):
        reg.set_alias("challenger", b, expected=None)
    assert reg.alias("challenger") is None and _history(reg, "challenger") == []
    assert reg.incomplete(a) is None  # the whole version still moves
    assert reg.set_alias("challenger", a, expected=None).version == a


def test_a_rollback_skips_a_version_whose_stored_file_is_gone_and_refuses_it_by_name(
        cli_on: Settings, new_version: Callable[[int], str], storage_client: Any,
        caplog: pytest.LogCaptureFixture) -> None:
    """The default rollback took the newest version the champion held before, whole or not: moved to one whose
    preprocessing.json was deleted, the fleet could not load it. Skipped like a version this code cannot load, but
    whatever --force says: no code loads a version with a file missing."""
    reg = ModelRegistry(cli_on)
    a, b, c = (new_version(seed) for seed in (61, 62, 63))
    for v in (a, b, c):
        out = runner.invoke(app, ["models", "promote", v])
        assert out.exit_code == 0, out.output
    _stored(cli_on, storage_client, b, "preprocessing.json").delete()

    for forced in ([], ["--force"]):
        out = runner.invoke(app, ["models", "rollback", "--to", b, *forced])
        assert out.exit_code == 2, out.output
        assert f"champion cannot go back to {b}: its stored preprocessing.json is missing" in out.output
        assert "register the model's folder again, or restore the file from a backup" in out.output
        assert reg.resolve("champion") == c

    with caplog.at_level(logging.WARNING, logger=registry_module.__name__):
        out = runner.invoke(app, ["models", "rollback"])
    assert out.exit_code == 0 and f"champion: {c} -> {a}" in out.output, out.output
    assert reg.resolve("champion") == a
    assert any(f"rolling back past {b} (its stored preprocessing.json is missing" in r.getMessage()
               for r in caplog.records), [r.getMessage() for r in caplog.records]


def test_a_rollback_whose_only_candidate_lacks_a_file_is_refused_naming_it(
        cli_on: Settings, new_version: Callable[[int], str], storage_client: Any) -> None:
    reg = ModelRegistry(cli_on)
    a, b = (new_version(seed) for seed in (71, 72))
    for v in (a, b):
        out = runner.invoke(app, ["models", "promote", v])
        assert out.exit_code == 0, out.output
    _stored(cli_on, storage_client, a, "weights.pt").delete()
    out = runner.invoke(app, ["models", "rollback"])
    assert out.exit_code == 2, out.output
    assert "champion has no earlier version to roll back to" in out.output
    assert f"skipped {a}: its stored weights.pt is missing" in out.output
    assert reg.resolve("champion") == b and _history(reg) == [(1, a), (2, b)]
    with pytest.raises(RegistryError, match=rf"skipped {a}: its stored weights\.pt is missing"):
        reg.rollback()  # the registry's own rollback, with no check of loadability given


def test_a_prefix_shorter_than_four_digits_is_refused_as_too_short(
        cli_on: Settings, new_version: Callable[[int], str]) -> None:
    """`tenfold models show 9` said "'9' names no alias and no versions" while `tenfold models list` listed 9...."""
    reg = ModelRegistry(cli_on)
    ids = [new_version(seed) for seed in (81, 82)]
    short = ids[0][:3]
    starting = sum(v.startswith(short) for v in ids)
    out = runner.invoke(app, ["models", "show", short])
    assert out.exit_code == 2, out.output
    assert f"'{short}' is too short a version prefix: give at least 4 of its digits ({starting} version" in out.output
    assert "names no alias and no versions" not in out.output

    unused = next(d for d in "0123456789abcdef" if not any(v.startswith(d) for v in ids))
    with pytest.raises(RegistryError, match=rf"'{unused}' is too short a version prefix: .*\(0 versions start with it"):
        reg.find(unused)
    with pytest.raises(RegistryError, match=r"'abc' is too short a version prefix: .*, and it names no alias"):
        reg.find("abc")  # alias-shaped and hex: neither is found
    out = runner.invoke(app, ["models", "show", ids[0][:4]])  # four digits are a prefix, as before
    assert out.exit_code == 0, out.output


def test_an_empty_reference_names_no_version_even_in_a_registry_of_one(registry_settings: Settings,
                                                                      new_version: Callable[[int], str]) -> None:
    """Every id starts with "": `tenfold models promote ""` (a script's unset variable) found the only version."""
    from tenfold.registry.errors import UnknownVersion

    new_version(1)
    for ref in ("", "  "):
        with pytest.raises(UnknownVersion, match="names no version"):
            ModelRegistry(registry_settings).find(ref)
