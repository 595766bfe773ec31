"""``tenfold serve``: the local serving fleet (model-server replicas in two pools behind HAProxy).

Run ``tenfold serve --help``. The commands:

* ``tenfold serve up [--model champion] [--canary-model REF]``: HAProxy on ``settings.local.lb_port``
  and each pool's minimum of replicas, supervised (dead ones replaced, pools autoscaled);
* ``tenfold serve status [--json]``: the supervisor, HAProxy and each replica by its own health check,
  the split and where the bearer token is (`tenfold status` prints it); exit 3 when something is not healthy;
* ``tenfold serve rollout --model REF [--pool stable|canary]``: restart a pool's replicas one at a
  time on another version, with no failed request;
* ``tenfold serve scale --pool stable|canary (--replicas N | --min N --max M)``: the autoscaler's bounds;
* ``tenfold serve split [PERCENT]``: print or set the canary's share (sticky by user key, no reload);
* ``tenfold serve fault --pool canary --delay-ms 200 | --error-rate 0.05 | --clear``: game day, inject a
  fault into a pool (:mod:`tenfold.serving.faults`) to see the canary analysis roll it back;
* ``tenfold serve down``: stop the fleet and the feedback sink (only the processes ``serve up`` started).

``make up`` (``tenfold up``) starts the fleet too once a champion is registered; ``make down`` stops it.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from tenfold.config import get_settings
from tenfold.local.process import LocalPlatformError
from tenfold.rollout.split import ARMS, STABLE


class _ServeGroup(TyperGroup):
    """Every ``tenfold serve`` command manages the local fleet and keeps its state under TENFOLD_HOME: under another
    TENFOLD_ENV it is refused (``serve split 0`` in a dev shell set the local fleet's share, or wrote a map file
    for none, while the operator took the cloud's canary for stopped); what the system refuses there (a home under
    a regular file, not writable, a full disk) is one error line naming the path and what to do."""

    def invoke(self, ctx: Any) -> Any:  # typer's own click Context
        from tenfold.local.cli import refusing_os_errors

        with refusing_os_errors(get_settings(), "serve"):
            return super().invoke(ctx)

    def resolve_command(self, ctx: Any, args: list[str]) -> Any:
        # Resolved before anything of the command runs (click's group callback included); its --help still works.
        name, command, rest = super().resolve_command(ctx, args)
        if not ctx.resilient_parsing and "--help" not in rest:
            from tenfold.local.cli import _local_only

            _local_only(get_settings(), f"serve {name}")
        return name, command, rest


app = typer.Typer(help="The local serving fleet: replicas in a stable and a canary pool behind HAProxy.",
                  no_args_is_help=True, cls=_ServeGroup)

_Pool = Annotated[str, typer.Option("--pool", help=f"the pool: {' or '.join(ARMS)}")]


def _code(exc: Exception) -> int:
    """2 for a refusal of what was asked (a model the registry does not hold, bounds a pool cannot take, a rollout of a
    pool that keeps no replica), else 1."""
    from tenfold.serving import fleet

    return 2 if isinstance(exc, (fleet.UnknownModel, fleet.BoundsRefused, fleet.PoolRefused)) else 1


def _fail(exc: Exception, code: int = 1) -> typer.Exit:
    typer.echo(f"error: {exc}", err=True)
    return typer.Exit(code)


def _check_pool(pool: str) -> str:
    if pool not in ARMS:
        raise _fail(ValueError(f"unknown pool {pool!r}: choose {' or '.join(ARMS)}"), 2)
    return pool


@app.command()
def up(
    model: Annotated[str | None, typer.Option(help="alias or version for both pools (default: settings.serving.server.model_ref, the champion)")] = None,
    canary_model: Annotated[str | None, typer.Option(help="alias or version for the canary pool (default: the same as --model)")] = None,
) -> None:
    """Start HAProxy and the replicas, and wait until every pool serves its minimum; then the feedback sink beside
    them (as `tenfold up` does), unless it runs."""
    from tenfold.local.stack import exclusive, feedback_sink_up, serving_drift
    from tenfold.serving import fleet

    settings = get_settings()
    # Under the lock `tenfold up` and `tenfold down` hold across the platform and serving (as the demo's
    # ensure_serving does): a `tenfold down` meanwhile left the fleet and the sink started on a stopped platform.
    with exclusive(settings, echo=typer.echo):
        # Before either starts (as `tenfold up` checks): a fleet started beside a sink of another workload, or a sink
        # started beside such a fleet, left serving half on these settings.
        if drift := serving_drift(settings):
            raise _fail(LocalPlatformError(drift), 1)
        try:
            fleet.up(settings, model, canary_model=canary_model, say=typer.echo)
        except LocalPlatformError as exc:
            raise _fail(exc, _code(exc)) from exc
        typer.echo(fleet.describe(fleet.report(settings)))
        # Without it, predictions and feedback stayed on Pub/Sub: no online accuracy, and a rollout's canary checks
        # found no feedback until their deadline ended the rollout FAILED.
        try:
            feedback_sink_up(settings, say=typer.echo)
        except (LocalPlatformError, RuntimeError) as exc:
            raise _fail(RuntimeError(f"the fleet is up, but the feedback sink did not start ({exc}): predictions and "
                                     "feedback reach the lake only once it runs (`tenfold up` starts it)")) from exc


@app.command()
def down() -> None:
    """Stop the supervisor, HAProxy and every replica the fleet started, then the feedback sink `serve up` started
    beside them (it lands what they published last); nothing else."""
    from tenfold.local.stack import serving_down

    serving_down(get_settings(), say=typer.echo)


@app.command()
def status(as_json: Annotated[bool, typer.Option("--json", help="print the report as JSON")] = False) -> None:
    """Each part of the fleet by its own health check, the split, and where the token is; exit 3 unless healthy.

    The token itself is not printed: `tenfold status` is the one command that shows the secrets."""
    from tenfold.serving import fleet

    rep = fleet.report(get_settings())
    body = asdict(rep)
    body.pop("token")  # only whether it is usable (token_error) and where it is (token_path)
    typer.echo(json.dumps(body, indent=2) if as_json else fleet.describe(rep))
    if not rep.healthy:
        raise typer.Exit(3)


@app.command()
def rollout(
    model: Annotated[str, typer.Option(help="alias or version to roll the pool to")],
    pool: _Pool = STABLE,
) -> None:
    """Restart the pool's replicas on another version one at a time (each new one UP before an old one drains)."""
    from tenfold.serving import fleet

    settings = get_settings()
    try:
        st = fleet.rollout(settings, model, pool=_check_pool(pool))
    except LocalPlatformError as exc:
        raise _fail(exc, _code(exc)) from exc
    typer.echo(f"{pool}: {len(st.pools[pool].serving())} replicas serve {st.pools[pool].version}")


@app.command()
def reload() -> None:
    """Restart every replica one at a time so each loads the lookup tables published now (a month that
    build_features published after the fleet started is served afterwards)."""
    from tenfold.features.online import served_months
    from tenfold.serving import fleet

    settings = get_settings()
    import datetime as dt

    # The months of the running fleet's settings (its tables, its workload), not this shell's: the token's month
    # bounds what every replica loads.
    months = served_months(fleet.running_settings(settings))
    # Always a new token: a month re-published under the same label is reloaded too.
    token = f"{months[-1].label if months else 'none'}@{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%S}"
    try:
        st = fleet.reload_lookups(settings, token)
    except LocalPlatformError as exc:
        raise _fail(exc) from exc
    typer.echo(f"every replica reloaded the lookups ({token}): "
               + ", ".join(f"{pool} {len(p.serving())}" for pool, p in st.pools.items()))


@app.command()
def scale(
    pool: _Pool = STABLE,
    replicas: Annotated[int | None, typer.Option(min=0, help="a fixed count (sets both --min and --max)")] = None,
    low: Annotated[int | None, typer.Option("--min", min=0, help="fewest replicas the autoscaler keeps")] = None,
    high: Annotated[int | None, typer.Option("--max", min=0, help="most replicas the autoscaler starts")] = None,
) -> None:
    """Set a pool's replica bounds; the autoscaler moves within them. Waits until the pool is within."""
    from tenfold.serving import fleet

    if replicas is not None:
        if low is not None or high is not None:
            raise _fail(ValueError("give either --replicas or --min/--max, not both"), 2)
        low = high = replicas
    if low is None and high is None:
        raise _fail(ValueError("nothing to change: give --replicas N, or --min and/or --max"), 2)
    if low is not None and high is not None and low > high:  # refused before the fleet is asked (up or not)
        raise _fail(ValueError(f"--min {low} is above --max {high}: give min <= max"), 2)
    pool = _check_pool(pool)
    if pool == STABLE and (low == 0 or high == 0):
        raise _fail(ValueError("the stable pool keeps at least one replica (it serves every user outside the canary): "
                               "give it 1 or more"), 2)
    settings = get_settings()
    try:
        st = fleet.scale(settings, pool, low=low, high=high)
    except LocalPlatformError as exc:
        raise _fail(exc, _code(exc)) from exc
    p = st.pools[pool]
    typer.echo(f"{pool}: {len(p.serving())} replicas serving (bounds {p.min}..{p.max})")


@app.command()
def fault(
    pool: _Pool = "canary",
    delay_ms: Annotated[float, typer.Option(help="extra wait before each prediction, in ms")] = 0.0,
    error_rate: Annotated[float, typer.Option(help="share of predictions answered with 500, 0-1")] = 0.0,
    clear: Annotated[bool, typer.Option("--clear", help="take the injected fault away")] = False,
) -> None:
    """Game day: restart a pool's replicas with an injected fault (late or failing answers), or clear it."""
    from tenfold.serving import fleet
    from tenfold.serving.faults import Fault

    try:
        chosen = Fault() if clear else Fault(delay_ms=delay_ms, error_rate=error_rate)
    except ValueError as exc:
        raise _fail(exc, 2) from exc
    if not clear and not chosen.active:
        raise _fail(ValueError("nothing to inject: give --delay-ms and/or --error-rate, or --clear"), 2)
    try:
        st = fleet.set_fault(get_settings(), _check_pool(pool), chosen)
    except LocalPlatformError as exc:
        raise _fail(exc) from exc
    typer.echo(f"{pool}: {len(st.pools[pool].serving())} replicas serving, fault: {chosen or 'none'}")


@app.command()
def split(percent: Annotated[int | None, typer.Argument(help="the canary's share, 0-100 (omit to print it)")] = None) -> None:
    """Print or set the share of users (by bucket of their user key) the canary pool serves."""
    from tenfold.rollout.haproxy import HaproxyRouter

    router = HaproxyRouter.from_settings(get_settings())
    try:
        if percent is not None:
            router.set_canary_percent(percent)
        typer.echo(f"canary: {router.canary_percent()} %")
    except ValueError as exc:
        raise _fail(exc, 2) from exc
    except LocalPlatformError as exc:
        raise _fail(exc) from exc
