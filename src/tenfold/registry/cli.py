"""``tenfold models``: the registry for people.

Run ``tenfold models list``, ``tenfold models show champion``, ``tenfold models promote <version>``,
``tenfold models rollback`` (``--help`` on each). Versions may be named by a full id, a unique id
prefix (4+ digits) or an alias. The environment is ``--env`` or ``TENFOLD_ENV`` (default ``local``;
the local platform must be up: ``make up``).

Exit codes: 0 done; 1 the registry's store cannot be reached (the local platform down, no cloud credentials, an
outage): run it again once it is back; 2 a refusal (bad arguments or settings, an unknown version or alias, an
alias that moved meanwhile, a damaged record, a models bucket that does not exist or that these credentials may not
read).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, TypeVar

import typer

from tenfold.config import Settings, command_settings
from tenfold.local.process import LocalPlatformError, require_local_storage
from tenfold.registry.errors import AliasConflict, RegistryError
from tenfold.registry.registry import CHAMPION, ModelRegistry, is_alias_name

app = typer.Typer(help="Model registry: list, inspect, promote and roll back versions.", no_args_is_help=True)

T = TypeVar("T")
EnvOption = typer.Option(None, "--env", help="local, dev or prod; default TENFOLD_ENV")


def _registry(env: str | None) -> ModelRegistry:
    settings = command_settings(env)  # --env's settings refused in one line (the root checked TENFOLD_ENV's only)
    return run_guarded(lambda: registry_of(settings))


def registry_of(settings: Settings) -> ModelRegistry:
    """The registry of ``settings``; locally, a clear error at once when the platform is not up (not after the
    storage client's two minutes of retries)."""
    require_local_storage(settings)
    return ModelRegistry(settings)


def run_guarded(fn: Callable[[], T]) -> T:
    """Turn registry errors into a message and exit code 2, a store that cannot be reached into one and exit code 1
    (the module's exit codes), never a traceback."""
    try:
        return fn()
    except LocalPlatformError as exc:  # the platform is down: an outage, not a refusal
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    except (RegistryError, ValueError, KeyError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    except Exception as exc:
        from google.api_core import exceptions as gexc

        if isinstance(exc, (gexc.Forbidden, gexc.NotFound, gexc.BadRequest)):  # another try meets the same answer
            typer.echo(f"error: the model registry's store refused the request ({type(exc).__name__}: {exc}); check "
                       "that the models bucket exists (the cloud stacks deployed, storage.models_bucket in `tenfold "
                       "config show`) and that these credentials may read it (and, to promote or roll back, write "
                       "its aliases)", err=True)
            raise typer.Exit(2) from exc
        if type(exc).__module__.startswith(("google", "requests", "urllib3")):
            typer.echo(f"error: cannot reach the model registry ({type(exc).__name__}: {exc}); is the local "
                       "platform up (`tenfold up`) or are your cloud credentials set?", err=True)
            raise typer.Exit(1) from exc
        raise


# Why a version cannot be served, scored or compared by this code (None: it can), given the registry: a model of
# another workload, or of another version of its feature definitions (what tenfold.model.load_model refuses). The
# fleet, batch scoring and the gate all load the champion: moved to such a version, each failed after the move had
# been reported done. Set by tenfold.cli, which may import the workloads (the registry may not: serving imports it
# without torch or Spark); None: not checked.
unusable_here: Callable[[ModelRegistry], Callable[[str], str | None]] | None = None


def _unusable(reg: ModelRegistry) -> Callable[[str], str | None] | None:
    return unusable_here(reg) if unusable_here is not None else None


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else ("-" if value is None else str(value))


@app.command("list")
def list_versions(env: str | None = EnvOption, as_json: bool = typer.Option(False, "--json", help="print JSON")) -> None:
    """Every committed version, oldest first, with its headline metrics and the aliases pointing at it."""
    reg = _registry(env)
    versions, aliases = run_guarded(lambda: (reg.list_versions(), reg.aliases()))
    by_version: dict[str, list[str]] = {}
    for name, pointer in sorted(aliases.items()):
        by_version.setdefault(pointer.version, []).append(name)
    rows = [{**v.summary(), "aliases": by_version.get(v.version, [])} for v in versions]
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        typer.echo(f"no versions in {reg.version_uri('')}")
        return
    typer.echo(f"{'version':<22}{'created':<26}{'auc':>8}{'log_loss':>10}{'brier':>8}  aliases")
    for r in rows:
        m = r["metrics"]
        typer.echo(f"{r['version']:<22}{r['created_at'][:23]:<26}{_fmt(m.get('auc')):>8}{_fmt(m.get('log_loss')):>10}"
                   f"{_fmt(m.get('brier')):>8}  {', '.join(r['aliases'])}")


def calibration_view(metrics: dict[str, Any] | None) -> dict[str, Any] | None:
    """How calibrated a version's probabilities are: the method, the holdout's ECE before and after, the table.

    Read from the metrics the train_model pipeline registered (None for versions registered without them).
    """
    if not metrics or "ece" not in metrics:
        return None
    calibrator = metrics.get("calibrator") or {}
    uncalibrated = metrics.get("uncalibrated") or {}
    return {
        "method": calibrator.get("description", "uncalibrated"),
        "holdout": {
            "ece": metrics["ece"], "ece_uncalibrated": uncalibrated.get("ece"),
            "log_loss": metrics.get("log_loss"), "log_loss_uncalibrated": uncalibrated.get("log_loss"),
            "table": metrics.get("calibration", []),
        },
        "validation": calibrator.get("validation"),
    }


def feedback_view(feedback: dict[str, Any]) -> dict[str, Any] | None:
    """The feedback a version trained on, in brief: rows, weight, and rows per labelled partition read."""
    if not feedback:
        return None
    return {"rows": feedback.get("rows"), "trained_rows": feedback.get("trained_rows"), "weight": feedback.get("weight"),
            "train_months": feedback.get("train_months"),
            "labelled_partitions": {m: ref.get("rows") for m, ref in (feedback.get("labelled_partitions") or {}).items()}}


@app.command("show")
def show(ref: str = typer.Argument(CHAMPION, help="version id, unique prefix or alias"), env: str | None = EnvOption) -> None:
    """One version as JSON: files, metrics, calibration, lineage, gate decisions; for an alias also its history."""
    reg = _registry(env)

    def gather() -> dict[str, Any]:
        version = reg.find(ref)
        mv = reg.get(version)
        decisions = reg.decisions(mv.version)
        body: dict[str, Any] = {
            "version": mv.version, "digest": mv.digest, "created_at": mv.created_at, "uri": mv.uri,
            "metrics": mv.metrics, "calibration": calibration_view(mv.metrics), "files": [f.__dict__ for f in mv.files],
            "lineage": mv.lineage.to_dict() if mv.lineage else None,
            # In brief (the whole record is lineage.feedback): what the run took from the feedback join.
            "feedback": feedback_view(mv.lineage.feedback) if mv.lineage else None,
            "aliases": sorted(a for a, p in reg.aliases().items() if p.version == mv.version),
            "gate_decisions": {run: d.get("summary") for run, d in decisions.items()},
            "gate_checks": {run: d["checks"] for run, d in decisions.items() if isinstance(d.get("checks"), dict)},
        }
        if ref != version and is_alias_name(ref) and reg.alias(ref) is not None:  # not a prefix (may start with a digit)
            body["alias_history"] = [json.loads(h.to_json()) for h in reg.alias_history(ref)]
        return body

    typer.echo(json.dumps(run_guarded(gather), indent=2, default=str))


@app.command("promote")
def promote(
    ref: str = typer.Argument(..., help="version id, unique prefix or alias (e.g. challenger)"),
    reason: str = typer.Option("", help="why, recorded in the alias history"),
    expect: str | None = typer.Option(None, help="fail unless the champion is this version now (default: what it is when read)"),
    force: bool = typer.Option(False, "--force", help="promote a version this code cannot load (another workload, or "
                               "another version of the feature definitions), one a canary rejected, or one the "
                               "offline gate kept out against the champion"),
    env: str | None = EnvOption,
) -> None:
    """Make a version the champion, by compare-and-swap: a concurrent change makes this fail, not overwrite."""
    reg = _registry(env)

    def act() -> str:
        version = reg.find(ref)
        if not force and (check := _unusable(reg)) is not None and (why := check(version)):
            raise RegistryError(f"{version} cannot be the champion here: {why}; promote a model of the rebuilt "
                                "features (train_model), or --force")
        before = reg.alias(CHAMPION)
        if not force and (before is None or before.version != version):
            # What a rollout refuses by default, refused here too: a manual promote went round both.
            if rejected := reg.canary_rejections(version):
                raise RegistryError(f"a canary rejected {version} ({rejected[-1].get('summary')}): train a better model, "
                                    "or --force to promote it all the same")
            if before is not None and (kept := reg.kept_out_by_the_gate(version, before.version)) is not None:
                raise RegistryError(f"the offline gate kept {version} out against the champion {before.version} "
                                    f"({kept.get('summary')}): train a better model, or --force to promote it all the same")
        expected = reg.find(expect) if expect else (before.version if before else None)
        if before is not None and before.version == version:
            # Already there. With --expect naming another version, this is this command's own earlier try that
            # landed (its answer lost) only if the champion moved there from the expected one: otherwise someone
            # else moved it, and "fail unless the champion is this version now" holds.
            if expect and expected != version and before.previous != expected:
                raise AliasConflict(
                    f"the champion already is {version}, moved there from {before.previous or 'nothing'} by "
                    f"{before.actor} at {before.updated_at}, not from {expected} as --expect says: nothing moved")
            return f"champion already is {version} (seq {before.seq}): nothing moved"
        said = reason or "manual promotion"
        pointer = reg.promote(version, expected=expected, reason=said)
        if before is not None and pointer.seq == before.seq:  # pragma: no cover - set to it meanwhile
            return f"champion already is {version} (seq {pointer.seq}): nothing moved"
        if pointer.reason != said:
            # Another mover took it to this version at the same moment (a rollout's conclude, a second promote): the
            # registry hands back the winner's pointer, whose move is the one recorded, this command's reason not.
            return (f"champion: {pointer.previous or '(none)'} -> {pointer.version} (seq {pointer.seq}), moved at the "
                    f"same moment by {pointer.actor} ({pointer.reason!r}); this command's move was not needed and its "
                    "reason is not recorded")
        return f"champion: {pointer.previous or '(none)'} -> {pointer.version} (seq {pointer.seq})"

    typer.echo(run_guarded(act))


@app.command("rollback")
def rollback(
    alias: str = typer.Argument(CHAMPION, help="the alias to move back"),
    to: str | None = typer.Option(None, help="a version it held before (default: the one before the current)"),
    from_: str | None = typer.Option(None, "--from", help="the version to roll back from (default: the current); "
                                     "run again with it after an error, it moves nothing more if the rollback landed"),
    reason: str = typer.Option("", help="why, recorded in the alias history"),
    force: bool = typer.Option(False, "--force", help="go back to a version this code cannot load (another "
                               "workload, or another version of the feature definitions)"),
    env: str | None = EnvOption,
) -> None:
    """Move an alias back to an earlier version from its history (by default the newest one this code can load)."""
    reg = _registry(env)

    def act() -> str:
        target = reg.find(to) if to else None
        now = reg.resolve(alias)
        origin = reg.find(from_) if from_ else now
        try:
            pointer = reg.rollback(alias, to=target, from_version=origin, reason=reason or "manual rollback",
                                   unusable=None if force else _unusable(reg))
        except Exception as exc:
            if origin and not isinstance(exc, (RegistryError, ValueError, KeyError)):
                # Without --from, running it again would roll back one version further if this one had landed.
                again = f"tenfold models rollback {alias} --from {origin}" + (f" --to {target}" if target else "")
                typer.echo(f"note: the rollback from {origin} may have landed before this error; once the registry "
                           f"is back, run `{again}`: it moves nothing more if it did", err=True)
            raise
        if now != origin:  # --from names a version it was already rolled back from
            return f"{alias} was already rolled back from {origin} to {pointer.version} (seq {pointer.seq}): nothing moved"
        if pointer.version == now:  # --to names the version it holds
            return f"{alias} already is {now} (seq {pointer.seq}): nothing moved"
        return f"{alias}: {pointer.previous or '(none)'} -> {pointer.version} (seq {pointer.seq})"

    typer.echo(run_guarded(act))
