"""``tenfold rollout``: watch and stop canary rollouts (the ``rollout_model`` DAG runs them).

* ``tenfold rollout status [--version V] [--json]``: the newest rollout (of ``V``, an id, id prefix or alias): each step, each check
  with the values that drove it, the outcome, the canary's share now, and the report's address;
* ``tenfold rollout abort [--version V]``: the newest rollout (of ``V``), whether or not it has ended. In progress, it
  stops: the canary weight goes to 0 at once, the DAG's running step stops at its next poll and no alias moves.
  Ended without a promotion, and still the newest of any version, it sets the canary weight to 0 again; promoted,
  or ended with a newer rollout started since, there is nothing to abort. An older rollout that has not ended is
  reached only with ``--version`` naming its version.

Exit codes as ``tenfold models`` (:mod:`tenfold.registry.cli`): 1 the registry cannot be reached, 2 a refusal;
and 3 when no rollout is recorded (of ``V``).
"""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from tenfold.config import Settings, get_settings
from tenfold.registry.cli import registry_of, run_guarded

app = typer.Typer(help="Canary rollouts: their status, and a safe abort.", no_args_is_help=True)

_Version = Annotated[str | None, typer.Option("--version", help="a version id, id prefix or alias (default: the newest rollout of any version)")]


def _fail(message: str, code: int = 1) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


def _router_percent(settings: Settings) -> int | None:
    from tenfold.rollout.adapters import router

    try:
        return router(settings).canary_percent()
    except Exception:  # the fleet (or the URL map) is not reachable: the record still tells the story
        return None


def _given(version: str | None) -> None:
    """Refuse ``--version ""`` (a script's unset variable): read as "no version", it aborted the newest rollout, a
    healthy canary of another version perhaps, setting its weight to 0."""
    if version is not None and not version.strip():
        raise _fail(f"--version {version!r} is empty: give a version id, id prefix or alias (e.g. challenger), or leave "
                    "--version out for the newest rollout of any version", 2)


def _version_id(registry: Any, version: str | None) -> str | None:
    """--version as the id rollouts are recorded under: an alias (`challenger`) or an id prefix, as `tenfold models`
    takes them, found "no rollout recorded" while the challenger's canary kept its share. Unknown: the registry's
    refusal."""
    return registry.find(version) if version is not None else None


def _named(version: str | None, vid: str | None) -> str:
    """" for challenger (v3)": the alias as given and the id it names now (an alias moved by a newer run names
    another version than the one whose canary runs)."""
    if not version:
        return ""
    return f" for {version}" + (f" (now {vid})" if vid and vid != version else "")


@app.command()
def status(version: _Version = None, as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False) -> None:
    """The newest rollout: steps, checks with their values, the outcome and the canary's share now."""
    run_guarded(lambda: _status(version, as_json))


def _status(version: str | None, as_json: bool) -> None:
    from tenfold.rollout.record import describe, latest, newer_rollout, report_uri

    _given(version)
    settings = get_settings()
    registry = registry_of(settings)
    found = latest(registry, vid := _version_id(registry, version))
    if found is None:
        raise _fail("no rollout recorded" + _named(version, vid) +
                    ": the rollout_model DAG starts one for each new challenger", 3)
    rollout, record = found
    # The router's canary share is the newest rollout's: shown beside an older one, it read as that one's.
    percent = _router_percent(settings) if newer_rollout(registry, rollout.rollout_id) is None else None
    if as_json:
        typer.echo(json.dumps({"rollout": rollout.__dict__, "canary_percent": percent, "events": record}, indent=2, default=str))
        return
    typer.echo(describe(rollout, record, percent))
    if "done" in record:
        typer.echo(f"report: {record['done'].get('report') or report_uri(settings, rollout)}")


@app.command()
def abort(version: _Version = None) -> None:
    """Abort the newest rollout (of --version), ended or not: in progress, canary weight 0 now and no alias moves;
    ended without a promotion, canary weight 0 again; promoted, nothing to abort."""
    run_guarded(lambda: _abort(version))


def _abort(version: str | None) -> None:
    from tenfold.registry.registry import CHAMPION
    from tenfold.rollout.adapters import router
    from tenfold.rollout.record import PROMOTED, PROMOTED_ALIAS, latest, newer_rollout, outcome, record_abort

    _given(version)
    settings = get_settings()
    registry = registry_of(settings)
    found = latest(registry, vid := _version_id(registry, version))
    if found is None:
        raise _fail("no rollout recorded" + _named(version, vid) + ": nothing to abort"
                    + ("; without --version it aborts the newest rollout" if version else ""), 3)
    rollout, record = found
    newer = newer_rollout(registry, rollout.rollout_id)  # a newer rollout's canary is what the router's weight is
    ended = outcome(record)
    if ended is not None:
        if ended == PROMOTED or newer:
            # Promoted, or a newer rollout started since: the canary's weight is not this rollout's to set.
            raise _fail(f"rollout {rollout.rollout_id} of {rollout.version} already ended ({ended}): nothing to abort"
                        + (f" (the canary is rollout {newer}'s now)" if newer and ended != PROMOTED else ""), 2)
        # Ended without a promotion: its canary must get nothing. Set it again (the DAG sets it too, but a
        # router call that kept failing, or a conclude that never ran, could have left the share behind).
        try:
            router(settings).set_canary_percent(0)
        except Exception as exc:
            if _zero_but_not_saved(exc):
                raise _fail(f"rollout {rollout.rollout_id} of {rollout.version} ended ({ended}); the canary gets no "
                            f"traffic now, but {exc}") from exc
            raise _fail(f"rollout {rollout.rollout_id} of {rollout.version} ended ({ended}), and setting the canary "
                        f"weight to 0 failed ({exc}): is the serving fleet (or the URL map) reachable?") from exc
        typer.echo(f"rollout {rollout.rollout_id} of {rollout.version} already ended ({ended}); canary set to 0 %")
        return
    # Recorded first (a registry error is the registry's message, never "recorded"): the router is reached after.
    first, ended = record_abort(registry, rollout, by=_operator())
    if ended == PROMOTED:  # conclude recorded the promotion before this abort landed
        # Decided is not carried out: until conclude has moved the champion, `tenfold models rollback` would demote
        # the champion the rollout was judged against (and conclude's compare-and-swap would then fail).
        moved = (PROMOTED_ALIAS in registry.rollout_events(rollout.version, rollout.rollout_id)
                 or registry.resolve(CHAMPION) == rollout.version)
        if moved:
            raise _fail(f"rollout {rollout.rollout_id} of {rollout.version} was promoted before the abort landed: "
                        "nothing to abort; `tenfold models rollback` moves the champion back", 2)
        raise _fail(f"rollout {rollout.rollout_id} of {rollout.version} decided its promotion before the abort landed, "
                    "but it is not carried out yet (the champion has not moved): nothing to abort; wait for the "
                    "rollout_model run's conclude task to carry it out (or clear it if it failed), then see "
                    "`tenfold rollout status`", 2)
    if newer:
        # An older rollout that never ended (its conclude failed): the canary's weight is the newer rollout's now.
        typer.echo(f"rollout {rollout.rollout_id} of {rollout.version}: abort recorded; the canary weight is rollout "
                   f"{newer}'s now and was left alone")
        return
    try:
        router(settings).set_canary_percent(0)
    except Exception as exc:
        if _zero_but_not_saved(exc):
            raise _fail(f"the abort is recorded and the canary gets no traffic now, but {exc}") from exc
        # Run again, the ended rollout's branch above sets the weight to 0 through the same router, local or cloud
        # (`tenfold serve split 0` reaches the local fleet only).
        raise _fail(f"the abort is recorded, but the canary weight could not be set to 0 ({exc}): run `tenfold "
                    "rollout abort` again once the serving fleet (or the URL map) answers") from exc
    typer.echo(f"rollout {rollout.rollout_id} of {rollout.version}: {'abort requested' if first else 'already aborted'}; "
               "canary at 0 %; the DAG stops at its next poll and moves no alias")


def _zero_but_not_saved(exc: Exception) -> bool:
    """Whether the local router set the weight to 0 in HAProxy but could not save it to the split map (a full disk):
    the fleet answered, so "run again once it answers" would send the operator after the wrong cause."""
    from tenfold.rollout.haproxy import SplitNotSaved

    return isinstance(exc, SplitNotSaved) and exc.applied == 0


def _operator() -> str:
    """Who aborts, for the record: the login name, or the uid where it has none (a container's user)."""
    import os

    from tenfold.registry.registry import login_name

    return login_name() or f"uid {os.getuid()}"
