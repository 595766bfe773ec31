"""``tenfold models`` against the emulator: what people see and the exit codes they get."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tenfold.cli import app
from tenfold.config import Settings
from tenfold.registry import Lineage, ModelRegistry
from tenfold.registry import cli as models_cli

runner = CliRunner()


def test_models_commands(registry_settings: Settings, make_model_dir: Callable[..., Path], lineage: Lineage,
                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(models_cli, "command_settings", lambda env=None: registry_settings)
    reg = ModelRegistry(registry_settings)
    a = reg.register(make_model_dir(1), lineage, metrics={"auc": 0.61, "log_loss": 0.5, "brier": 0.2}).version
    b = reg.register(make_model_dir(2), lineage, metrics={"auc": 0.66, "log_loss": 0.45, "brier": 0.18}).version

    out = runner.invoke(app, ["models", "list"])
    assert out.exit_code == 0, out.output
    assert a in out.output and b in out.output and "0.6600" in out.output

    out = runner.invoke(app, ["models", "promote", a[:8], "--reason", "first"])
    assert out.exit_code == 0, out.output
    assert f"(none) -> {a}" in out.output
    out = runner.invoke(app, ["models", "promote", b, "--expect", b])  # the champion is a, not b: refused
    assert out.exit_code == 2 and "expected" in out.output
    assert reg.resolve("champion") == a
    assert runner.invoke(app, ["models", "promote", b]).exit_code == 0

    listed = json.loads(runner.invoke(app, ["models", "list", "--json"]).output)
    assert {r["version"]: r["aliases"] for r in listed} == {a: [], b: ["champion"]}

    reg.record_decision(b, "run-1", {"promote": True, "summary": "PROMOTE: b beats a"})
    shown = json.loads(runner.invoke(app, ["models", "show", "champion"]).output)
    assert shown["gate_decisions"] == {"run-1": "PROMOTE: b beats a"}
    assert shown["version"] == b and shown["lineage"]["run_id"] == "test-run"
    assert [h["version"] for h in shown["alias_history"]] == [a, b]

    out = runner.invoke(app, ["models", "rollback", "--reason", "bad canary"])
    assert out.exit_code == 0 and f"{b} -> {a}" in out.output
    assert reg.resolve("champion") == a

    out = runner.invoke(app, ["models", "show", "deadbeef"])
    assert out.exit_code == 2 and "tenfold models list" in out.output


def test_models_show_takes_a_prefix_that_starts_with_a_digit(registry_settings: Settings,
                                                            make_model_dir: Callable[..., Path], lineage: Lineage,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """A prefix was also looked up as an alias, whose names start with a letter: `models show 957fd2` ended
    "'957fd2' is not an alias name" (exit 2) for 10 versions in 16."""
    monkeypatch.setattr(models_cli, "command_settings", lambda env=None: registry_settings)
    reg = ModelRegistry(registry_settings)
    seed, version = 0, "x"
    while not version[0].isdigit():  # the id is the content's digest: register until one starts with a digit
        seed += 1
        version = reg.register(make_model_dir(seed), lineage, metrics={"auc": 0.6}).version
    out = runner.invoke(app, ["models", "show", version[:6]])
    assert out.exit_code == 0, out.output
    assert json.loads(out.output)["version"] == version


@pytest.mark.parametrize("damage", ["pointer", "decision"])
def test_a_damaged_alias_pointer_or_decision_is_a_one_line_error_naming_the_object(
        registry_settings: Settings, make_model_dir: Callable[..., Path], lineage: Lineage,
        monkeypatch: pytest.MonkeyPatch, damage: str) -> None:
    """A pointer holding valid JSON that is not an object ('[]') ended `tenfold models show` in an AttributeError
    traceback; a damaged decision object gave "Expecting value: line 1 column 1", naming neither."""
    monkeypatch.setattr(models_cli, "command_settings", lambda env=None: registry_settings)
    reg = ModelRegistry(registry_settings)
    version = reg.register(make_model_dir(5), lineage, metrics={"auc": 0.6, "log_loss": 0.5, "brier": 0.2}).version
    reg.promote(version)
    reg.record_decision(version, "manual__1", {"promote": True, "summary": "PROMOTE"})
    if damage == "pointer":
        name = reg._name("aliases", "champion")
        reg.bucket.blob(name).upload_from_string(b"[]")
    else:
        name = reg._name("decisions", version, "manual__1.json")
        reg.bucket.blob(name).upload_from_string(b'{"promote": tr')
    out = runner.invoke(app, ["models", "show", version if damage == "decision" else "champion"])
    assert out.exit_code == 2, out.output
    assert out.output.startswith("error: ") and f"gs://{reg.bucket_name}/{name}" in out.output, out.output
    assert ("tenfold models promote" if damage == "pointer" else "restore it") in out.output
    assert "Traceback" not in out.output


@pytest.mark.parametrize("field,value", [("seq", None), ("seq", "2"), ("seq", True), ("details", [1]),
                                         ("updated_at", 5), ("actor", None), ("action", ["promote"]), ("nonce", 7),
                                         ("alias", "../x")])
def test_a_pointer_with_a_field_of_the_wrong_type_is_a_one_line_error_naming_the_object(
        registry_settings: Settings, make_model_dir: Callable[..., Path], lineage: Lineage,
        monkeypatch: pytest.MonkeyPatch, field: str, value: object) -> None:
    """Only the pointer's version and previous were checked: a seq of null ended `models show champion` in a
    TypeError from sorting the history and `models promote` in one from ``seq + 1`` (or the history's object name),
    and details that are not an object were accepted, then failed ``details.get`` in train_model."""
    monkeypatch.setattr(models_cli, "command_settings", lambda env=None: registry_settings)
    reg = ModelRegistry(registry_settings)
    a, b = (reg.register(make_model_dir(n), lineage, metrics={"auc": 0.6}).version for n in (41, 42))
    reg.promote(a)
    name = reg._name("aliases", "champion")
    blob = reg.bucket.blob(name)
    blob.upload_from_string(json.dumps({**json.loads(blob.download_as_bytes()), field: value}))
    for args in (["models", "show", "champion"], ["models", "promote", b]):
        out = runner.invoke(app, args)
        assert out.exit_code == 2, (args, out.output, out.exception)
        assert out.output.startswith("error: ") and f"gs://{reg.bucket_name}/{name} is unreadable" in out.output, out.output
        assert f"its {field} {value!r}" in out.output and "Traceback" not in out.output, out.output
    blob.delete()  # what the message says to do: the champion can be set again, and its history goes on
    out = runner.invoke(app, ["models", "promote", b])
    assert out.exit_code == 0 and reg.resolve("champion") == b, out.output
    assert [(h.seq, h.version) for h in reg.alias_history("champion")] == [(1, a), (2, b)]


def test_a_pointer_written_without_its_optional_fields_is_still_read(
        registry_settings: Settings, make_model_dir: Callable[..., Path], lineage: Lineage,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """reason, details and nonce have defaults: a pointer without them is not damaged, and the checks refuse none."""
    monkeypatch.setattr(models_cli, "command_settings", lambda env=None: registry_settings)
    reg = ModelRegistry(registry_settings)
    a, b = (reg.register(make_model_dir(n), lineage, metrics={"auc": 0.6}).version for n in (43, 44))
    reg.promote(a)
    blob = reg.bucket.blob(reg._name("aliases", "champion"))
    body = json.loads(blob.download_as_bytes())
    blob.upload_from_string(json.dumps({k: v for k, v in body.items() if k not in ("reason", "details", "nonce")}))
    out = runner.invoke(app, ["models", "show", "champion"])
    assert out.exit_code == 0 and json.loads(out.output)["version"] == a, out.output
    out = runner.invoke(app, ["models", "promote", b])
    assert out.exit_code == 0 and f"{a} -> {b} (seq 2)" in out.output, out.output


def test_a_rollback_run_again_after_an_error_that_came_once_it_landed_moves_nothing_more(
    registry_settings: Settings, make_model_dir: Callable[..., Path], lineage: Lineage, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pointer moved, then recording its history failed (an outage): exit 1, "run it again once it is back".
    Run again, the rollback went one version further back (C -> B, then B -> A). With --from, which the error now
    names, the second run finds the rollback landed and moves nothing; the history gets the entry it missed."""
    from google.api_core.exceptions import ServiceUnavailable

    monkeypatch.setattr(models_cli, "command_settings", lambda env=None: registry_settings)
    reg = ModelRegistry(registry_settings)
    a, b, c = (reg.register(make_model_dir(n), lineage, metrics={"auc": 0.6 + n / 100}).version for n in (11, 12, 13))
    for v in (a, b, c):
        reg.promote(v)
    real = ModelRegistry._append_history
    failures = [ServiceUnavailable("the store went away after the pointer landed")]

    def flaky(self: ModelRegistry, pointer: object) -> None:
        if getattr(pointer, "action", None) == "rollback" and failures:
            raise failures.pop()
        real(self, pointer)  # type: ignore[arg-type]

    monkeypatch.setattr(ModelRegistry, "_append_history", flaky)
    out = runner.invoke(app, ["models", "rollback"])
    assert out.exit_code == 1 and reg.resolve("champion") == b, out.output
    assert f"tenfold models rollback champion --from {c}" in out.output

    out = runner.invoke(app, ["models", "rollback", "--from", c])
    assert out.exit_code == 0, out.output
    assert reg.resolve("champion") == b, "the rerun rolled back one version further"
    assert f"already rolled back from {c} to {b}" in out.output and "nothing moved" in out.output
    assert [(h.version, h.action) for h in reg.alias_history("champion")][-1] == (b, "rollback")

    out = runner.invoke(app, ["models", "rollback", "--from", a])  # the alias is not a, and was never rolled back from it
    assert out.exit_code == 2 and f"champion is {b}, not {a}" in out.output
    assert reg.resolve("champion") == b

    out = runner.invoke(app, ["models", "promote", b])
    assert out.exit_code == 0 and f"champion already is {b}" in out.output and "nothing moved" in out.output


def test_moves_that_move_nothing_say_so_and_an_unset_champion_is_named_as_such(
        registry_settings: Settings, make_model_dir: Callable[..., Path], lineage: Lineage,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """`promote b --expect c` with b already champion (moved there from a by someone else) exited 0 printing
    "champion: a -> b", a move that never happened; `rollback --to <the champion>` printed one too; and `models show
    champion` on a fresh platform said "'champion' names no alias ... use a full id", steering the operator to serve
    a version no gate passed."""
    monkeypatch.setattr(models_cli, "command_settings", lambda env=None: registry_settings)
    reg = ModelRegistry(registry_settings)
    a, b, c = (reg.register(make_model_dir(i), lineage, metrics={"auc": 0.6, "log_loss": 0.5, "brier": 0.2}).version
               for i in (1, 2, 3))
    out = runner.invoke(app, ["models", "show", "champion"])
    assert out.exit_code == 2 and "no champion yet" in out.output and "names no alias" not in out.output, out.output

    reg.promote(a, expected=None)
    reg.promote(b, expected=a)
    out = runner.invoke(app, ["models", "promote", b, "--expect", c])  # someone else moved it there, from a
    assert out.exit_code == 2 and f"already is {b}, moved there from {a}" in out.output and "nothing moved" in out.output
    out = runner.invoke(app, ["models", "promote", b, "--expect", a])  # this command's own try, landed: no error
    assert out.exit_code == 0 and f"champion already is {b}" in out.output and "->" not in out.output, out.output
    out = runner.invoke(app, ["models", "rollback", "--to", b])
    assert out.exit_code == 0 and f"champion already is {b}" in out.output and "->" not in out.output, out.output
    assert reg.resolve("champion") == b and [h.version for h in reg.alias_history("champion")] == [a, b]


def test_a_rollback_that_sets_a_deleted_pointer_again_names_no_previous_as_promote_does(
        registry_settings: Settings, make_model_dir: Callable[..., Path], lineage: Lineage,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """`models rollback --to a` over a deleted pointer (a damaged one is repaired so) printed "champion: None -> a";
    promote says "(none)" there."""
    monkeypatch.setattr(models_cli, "command_settings", lambda env=None: registry_settings)
    reg = ModelRegistry(registry_settings)
    a, b = (reg.register(make_model_dir(i), lineage, metrics={"auc": 0.6, "log_loss": 0.5, "brier": 0.2}).version
            for i in (1, 2))
    reg.promote(a, expected=None)
    reg.promote(b, expected=a)
    reg.bucket.blob(reg._name("aliases", "champion")).delete()
    out = runner.invoke(app, ["models", "rollback"])  # nothing to go back from: refused, naming the way out
    assert out.exit_code == 2 and f"--to {b}" in out.output and reg.resolve("champion") is None, out.output
    out = runner.invoke(app, ["models", "rollback", "--to", a, "--reason", "pointer repaired"])
    assert out.exit_code == 0, out.output
    assert out.output.strip() == f"champion: (none) -> {a} (seq 3)"
    assert reg.resolve("champion") == a


def test_a_bucket_that_is_missing_or_forbidden_is_a_refusal_and_a_store_away_is_an_outage(
        capsys: pytest.CaptureFixture[str]) -> None:
    """Exit 1 means "run it again once it is back": a 403 (no read on the models bucket) or a 404 (the bucket
    misnamed, the stack not deployed) had it too, with "is the local platform up?", so a wrapper retried for ever."""
    import typer
    from google.api_core import exceptions as gexc

    def raising(exc: Exception) -> Callable[[], None]:
        def fn() -> None:
            raise exc
        return fn

    for refused in (gexc.Forbidden("caller lacks storage.objects.list on tenfold-models-dev"),
                    gexc.NotFound("bucket tenfold-models-dev does not exist")):
        with pytest.raises(typer.Exit) as ended:
            models_cli.run_guarded(raising(refused))
        said = capsys.readouterr().err
        assert ended.value.exit_code == 2 and "models bucket exists" in said and "tenfold up" not in said, said
    with pytest.raises(typer.Exit) as ended:
        models_cli.run_guarded(raising(gexc.ServiceUnavailable("503")))
    assert ended.value.exit_code == 1 and "cannot reach the model registry" in capsys.readouterr().err


def test_promote_and_rollback_refuse_a_version_this_code_cannot_load(
        registry_settings: Settings, make_model_dir: Callable[..., Path], lineage: Lineage,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The feature definitions moved to a new version, the retrained champion went bad, and `models rollback` went
    back to the champion before it, trained on the old features, printing "champion: C -> B" (exit 0): the fleet,
    batch scoring and every train_model run then failed to load it."""
    from tenfold.workloads import VERSION_KEY, get_workload

    monkeypatch.setattr(models_cli, "command_settings", lambda env=None: registry_settings)
    builds = get_workload(registry_settings).contract.version
    reg = ModelRegistry(registry_settings)

    def model(seed: int, **meta: object) -> str:
        folder = make_model_dir(seed)
        (folder / "meta.json").write_text(json.dumps({**json.loads((folder / "meta.json").read_text()), **meta}))
        return reg.register(folder, lineage, metrics={"auc": 0.6}).version

    old, other, new = model(21, **{VERSION_KEY: builds - 1}), model(22, workload="no.such:WORKLOAD"), model(23)
    out = runner.invoke(app, ["models", "promote", old])
    assert out.exit_code == 2 and reg.resolve("champion") is None, out.output
    assert f"learnt from version {builds - 1} of the feature definitions, and this code builds version {builds}" \
        in out.output and "--force" in out.output
    out = runner.invoke(app, ["models", "promote", other])
    assert out.exit_code == 2 and "a model of workload 'no.such:WORKLOAD'" in out.output, out.output
    for v in (old, new):
        assert runner.invoke(app, ["models", "promote", v, "--force"]).exit_code == 0
    out = runner.invoke(app, ["models", "rollback"])
    assert out.exit_code == 2 and reg.resolve("champion") == new, out.output
    assert f"skipped {old}: it learnt from version {builds - 1}" in out.output
    out = runner.invoke(app, ["models", "rollback", "--to", old])
    assert out.exit_code == 2 and f"champion cannot go back to {old}" in out.output and reg.resolve("champion") == new
    out = runner.invoke(app, ["models", "rollback", "--force"])
    assert out.exit_code == 0 and reg.resolve("champion") == old, out.output

def test_promote_refuses_a_version_whose_meta_json_is_a_newer_format(
        registry_settings: Settings, make_model_dir: Callable[..., Path], lineage: Lineage,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A model a newer Tenfold saved (meta.json format 2), of this workload and its feature definitions, became the
    champion (exit 0); every load then refused it with "unsupported meta version 2", which says nothing of what to do."""
    from tenfold.model.io import ModelLoadError, read_meta
    from tenfold.workloads import VERSION_KEY, get_workload

    monkeypatch.setattr(models_cli, "command_settings", lambda env=None: registry_settings)
    contract = get_workload(registry_settings).contract
    folder = make_model_dir(31)
    (folder / "meta.json").write_text(json.dumps({
        "version": 2, "workload": registry_settings.workload, VERSION_KEY: contract.version,
        "categorical_columns": list(contract.categorical_columns), "numeric_columns": list(contract.numeric_columns)}))
    reg = ModelRegistry(registry_settings)
    newer = reg.register(folder, lineage, metrics={"auc": 0.6}).version
    out = runner.invoke(app, ["models", "promote", newer])
    assert out.exit_code == 2 and reg.resolve("champion") is None, out.output
    assert "its meta.json is format 2; this Tenfold reads format 1: upgrade tenfold" in out.output
    with pytest.raises(ModelLoadError, match=r"format 2; this Tenfold reads format 1: upgrade tenfold"):
        read_meta(folder)



def test_a_version_whose_meta_cannot_be_read_is_skipped_not_fatal_and_a_missing_workload_names_force(
        registry_settings: Settings) -> None:
    from types import SimpleNamespace

    from tenfold import cli as root
    from tenfold.registry.errors import IntegrityError, RegistryError

    def meta(version: str) -> dict[str, object]:
        raise IntegrityError(f"version {version} has no meta.json in the store")

    why = root._unusable_here(SimpleNamespace(settings=registry_settings, meta=meta))
    assert why("v1") == "its meta.json cannot be read (version v1 has no meta.json in the store)"
    # A model taking a column the features no longer hold (renamed without a version bump): load_model refuses it,
    # so promote and rollback skip it too.
    from tenfold.workloads.flights.contract import CONTRACT

    renamed = {"version": 1, "workload": "flights", "features_version": CONTRACT.version,
               "categorical_columns": ["carrier_v0"],
               "numeric_columns": list(CONTRACT.model_numeric_columns)}
    lost = root._unusable_here(SimpleNamespace(settings=registry_settings, meta=lambda _: renamed))("v2")
    assert lost is not None and lost.startswith("it takes the column(s) carrier_v0 (categorical), which")
    # The workload by load_model's rule, from the names alone (nothing a meta.json names is imported to decide).
    fine = {**renamed, "categorical_columns": list(CONTRACT.model_categorical_columns)}
    for spelled, usable in (("tenfold.workloads.flights:WORKLOAD", True), ("planted_module:W", False)):
        meta_of = {**fine, "workload": spelled}
        why = root._unusable_here(SimpleNamespace(settings=registry_settings, meta=lambda _, m=meta_of: m))
        assert (why("v3") is None) is usable, why("v3")
    assert "planted_module" not in sys.modules
    elsewhere = registry_settings.model_copy(update={"workload": "no_such_package.module:WORKLOAD"})
    with pytest.raises(RegistryError, match=r"cannot check that the version can be served here: .*--force"):
        root._unusable_here(SimpleNamespace(settings=elsewhere, meta=meta))


@pytest.mark.parametrize("verdict", ["canary", "gate", "none"])
def test_promote_refuses_a_version_a_canary_rejected_or_the_gate_kept_out_unless_forced(
        registry_settings: Settings, make_model_dir: Callable[..., Path], lineage: Lineage,
        monkeypatch: pytest.MonkeyPatch, verdict: str) -> None:
    """A rollout refuses both by default; `models promote` made such a version champion without a word, exit 0.
    A gate record that scored no champion ("NO COMPARISON", which tells people to promote by hand) decides nothing."""
    monkeypatch.setattr(models_cli, "command_settings", lambda env=None: registry_settings)
    reg = ModelRegistry(registry_settings)
    champion = reg.register(make_model_dir(31), lineage, metrics={"auc": 0.66}).version
    challenger = reg.register(make_model_dir(32), lineage, metrics={"auc": 0.61}).version
    assert runner.invoke(app, ["models", "promote", champion]).exit_code == 0
    reg.record_decision(challenger, "run-1", {"promote": False, "champion_version": champion,
                                              "summary": "NO COMPARISON: champion could not be scored"})
    if verdict == "none":  # a record that scored no champion decides nothing: its refusal says to promote by hand
        out = runner.invoke(app, ["models", "promote", challenger])
        assert out.exit_code == 0 and reg.resolve("champion") == challenger, out.output
        return
    if verdict == "canary":
        reg.record_decision(challenger, "rollout-r1", {"rejected": True, "summary": "ROLLED BACK: error rate 4 %"})
        said = f"a canary rejected {challenger} (ROLLED BACK: error rate 4 %)"
    else:
        reg.record_decision(challenger, "run-2", {"promote": False, "champion_version": champion,
                                                  "champion": {"auc": 0.66}, "summary": "KEEP: AUC 0.61 < 0.66"})
        said = f"the offline gate kept {challenger} out against the champion {champion} (KEEP: AUC 0.61 < 0.66)"
    out = runner.invoke(app, ["models", "promote", challenger])
    assert out.exit_code == 2 and said in out.output and "--force" in out.output, out.output
    assert reg.resolve("champion") == champion
    out = runner.invoke(app, ["models", "promote", challenger, "--force"])
    assert out.exit_code == 0 and reg.resolve("champion") == challenger, out.output


def test_a_promote_that_another_mover_beat_to_the_same_version_says_it_moved_nothing(
        registry_settings: Settings, make_model_dir: Callable[..., Path], lineage: Lineage,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A rollout's conclude moved the champion to the same version while the command ran: the registry hands back the
    winner's pointer, and the command printed "champion: a -> b" as its own move, its --reason never recorded."""
    monkeypatch.setattr(models_cli, "command_settings", lambda env=None: registry_settings)
    reg = ModelRegistry(registry_settings)
    a = reg.register(make_model_dir(11), lineage, metrics={"auc": 0.61, "log_loss": 0.5, "brier": 0.2}).version
    b = reg.register(make_model_dir(12), lineage, metrics={"auc": 0.66, "log_loss": 0.45, "brier": 0.18}).version
    reg.promote(a, expected=None)
    real = ModelRegistry.promote

    def the_rollout_first(self: ModelRegistry, version: str, **kwargs: object) -> object:
        real(ModelRegistry(registry_settings), version, expected=a, reason="rollout r-1: canary passed")
        return real(self, version, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(ModelRegistry, "promote", the_rollout_first)
    out = runner.invoke(app, ["models", "promote", b, "--reason", "mine"])
    assert out.exit_code == 0, out.output
    assert f"champion: {a} -> {b} (seq 2), moved at the same moment by " in out.output
    assert "('rollout r-1: canary passed'); this command's move was not needed and its reason is not recorded" in out.output
    assert [h.reason for h in reg.alias_history("champion")][-1] == "rollout r-1: canary passed"
