"""``tenfold dlq``: the dead-lettered scoring requests of offline inference.

Examples::

    tenfold dlq inspect                     # every dead letter: request id, run, attempts, error
    tenfold dlq inspect --run <run> --json
    tenfold dlq replay --run <run>          # re-publish that run's dead letters to the requests topic
    tenfold dlq replay --request-id <id>    # one of them (repeatable)
    tenfold dlq replay --all                # every run's dead letters not replayed yet

The environment is ``--env`` or ``TENFOLD_ENV`` (default ``local``; the local platform must be up:
``tenfold up``). Exit codes: 0 done, 1 Pub/Sub or the lake failed, 2 bad arguments. See docs/inference.md.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Annotated

import typer

from tenfold.config import command_settings
from tenfold.outages import command_exit

app = typer.Typer(help="Dead-lettered scoring requests of offline inference: inspect and replay them.",
                  no_args_is_help=True)

EnvOption = Annotated[str | None, typer.Option("--env", help="local, dev or prod; default TENFOLD_ENV")]
RunOption = Annotated[str | None, typer.Option("--run", help="one run (its run key, as the DAG logs it)")]


def _when(ts: object) -> str:
    return dt.datetime.fromtimestamp(float(ts), dt.UTC).isoformat(timespec="seconds") if isinstance(ts, (int, float)) else "-"


@app.command("inspect")
def inspect_command(run: RunOption = None, as_json: Annotated[bool, typer.Option("--json")] = False,
                    env: EnvOption = None) -> None:
    """Show dead-lettered requests with their run, delivery attempts and the error the worker recorded."""
    from tenfold.inference.dlq import DlqError, inspect

    settings = command_settings(env)
    try:
        records = inspect(settings, run=run)
    except DlqError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    except Exception as exc:
        raise command_exit(exc, "tenfold dlq inspect", settings.local.home) from exc
    if as_json:
        typer.echo(json.dumps(records, indent=2, default=str))
        return
    if not records:
        typer.echo("no dead-lettered requests" + (f" in run {run}" if run else ""))
        return
    for r in records:
        state = f"replayed {len(r.get('replays', []))}x" if r.get("replayed") else "not replayed"
        typer.echo(f"{r.get('request_id')}  run {r.get('run')}  partition {r.get('partition')}  rows {r.get('rows')}  "
                   f"attempts {r.get('delivery_attempts')}/{r.get('max_delivery_attempts')}  "
                   f"dead-lettered {_when(r.get('dead_lettered_at'))}  {state}")
        typer.echo(f"    error: {r.get('error') or '(none recorded)'}")


@app.command("replay")
def replay_command(
    run: RunOption = None,
    request_id: Annotated[list[str] | None, typer.Option("--request-id", help="only these (repeatable)")] = None,
    again: Annotated[bool, typer.Option("--again", help="also those replayed before")] = False,
    every_run: Annotated[bool, typer.Option("--all", help="the dead letters of every run")] = False,
    env: EnvOption = None,
) -> None:
    """Re-publish dead-lettered requests to the requests topic (same request ids; marked replayed)."""
    from tenfold.inference.dlq import DlqError, replay

    if not (run or request_id or every_run):
        typer.echo("error: say what to replay: --run <run>, --request-id <id> or --all (every run's dead letters)",
                   err=True)
        raise typer.Exit(2)
    settings = command_settings(env)
    skipped: list[dict[str, str]] = []
    try:
        sent = replay(settings, run=run, request_ids=request_id or (), include_replayed=again, skipped=skipped)
    except DlqError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    except Exception as exc:
        raise command_exit(exc, "tenfold dlq replay", settings.local.home,
                           note=" (a request re-published before it failed is marked replayed: a re-run sends the "
                                "rest)") from exc
    for s in sent:
        typer.echo(f"replayed {s['request_id']} of run {s['run']} as message {s['message_id']}")
    typer.echo(f"{len(sent)} request(s) re-published")
    if skipped:
        typer.echo(f"{len(skipped)} request(s) replayed before were left out (in flight, or their message was lost: an "
                   "emulator restarted since); --again sends them again")
