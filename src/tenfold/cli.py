"""The ``tenfold`` command: the one entry point for people and the Makefile.

Run ``tenfold --help``. Sub-commands live beside the code they drive (``tenfold.<area>.cli``) and are
mounted here; this file only composes them.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import typer
from pydantic import SecretStr
from typer.core import TyperGroup

from tenfold.clipipe import EXIT_READER_GONE, drop_stdout, stdout_reader_gone
from tenfold.config import Settings, command_settings, get_settings


class _LostPipe(Exception):
    """A BrokenPipeError that is not stdout's reader going away (a connection to a service, lost), carried past
    typer to :class:`_Guarded`: typer takes every broken pipe for a closed stdout, and ended the command on it with
    exit 1 and not a word."""

    def __init__(self, lost: BrokenPipeError) -> None:
        super().__init__(str(lost))
        self.lost = lost


@contextlib.contextmanager
def _broken_pipes_told_apart() -> Iterator[None]:
    """A reader of the output that went away (``tenfold config show | head -1``) ends the command quietly with
    :data:`tenfold.clipipe.EXIT_READER_GONE`, as SIGPIPE would; any other broken pipe goes on to :class:`_Guarded`,
    which says what it was. Around every sub-command's run, inside typer's own catch of a broken pipe (a quiet exit
    1, whatever the pipe). Help is rich's, which ends a closed stdout itself (exit 1, quietly)."""
    try:
        yield
    except BrokenPipeError as exc:
        if stdout_reader_gone():
            drop_stdout()
            raise typer.Exit(EXIT_READER_GONE) from None
        raise _LostPipe(exc) from exc


_INVOKED = "tenfold.invoked"  # ctx.meta's key: the sub-command resolved and the arguments it gets


class _GuardedGroup(TyperGroup):
    """The root command's click group: every sub-command runs under :func:`_broken_pipes_told_apart`."""

    def invoke(self, ctx: Any) -> Any:  # typer's own click Context
        with _broken_pipes_told_apart():
            return super().invoke(ctx)

    def resolve_command(self, ctx: Any, args: list[str]) -> Any:
        # Kept for the root callback (:func:`_invoked`), which click runs before the sub-command parses its arguments.
        name, cmd, rest = super().resolve_command(ctx, args)
        ctx.meta[_INVOKED] = (cmd, list(rest))
        return name, cmd, rest


class _Guarded(typer.Typer):
    """The root command. A sub-command turns what it expects into its own message; anything else that escapes one
    (a corrupt file it did not foresee, a service away, a fault in the code) ends with one line
    (:func:`tenfold.outages.ending`), never a traceback. ``TENFOLD_DEBUG=1`` shows the traceback instead. A reader of
    the output that went away ends it quietly (:class:`_GuardedGroup`)."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("cls", _GuardedGroup)
        super().__init__(**kwargs)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().__call__(*args, **kwargs)
        except Exception as exc:  # click's own exits (usage errors, typer.Exit) are SystemExit: not caught here
            from tenfold.outages import debug_requested, ending

            if debug_requested():
                if isinstance(exc, _LostPipe):
                    raise exc.lost from None
                raise
            if isinstance(exc, _LostPipe):
                exc = exc.lost

            words = list(itertools.takewhile(lambda a: a.isidentifier() or ("-" in a and a[0] != "-"),
                                             sys.argv[1:3]))
            try:
                home = get_settings().local.home
            except Exception:  # the settings are what failed (a TENFOLD_* value; a working folder deleted under it)
                home = Path(".tenfold")
            typer.echo(ending(exc, " ".join(["tenfold", *words]), home, debug_hint="with TENFOLD_DEBUG=1"),
                       err=True)
            sys.exit(1)


app = _Guarded(help="Tenfold: the ML lifecycle on one machine or on Google Cloud.", no_args_is_help=True)
config_app = typer.Typer(help="Read the settings of the current environment (TENFOLD_ENV).", no_args_is_help=True)
app.add_typer(config_app, name="config")


_LOCAL_PLATFORM_COMMANDS = ("up", "down", "status", "demo", "serve")


def _invoked(ctx: typer.Context) -> tuple[Any, list[str]]:
    """The command this invocation runs and the arguments it gets: a group's command resolved (``models list``), or
    the group itself where none of its commands is named (``tenfold models``: its help, or click's usage error)."""
    cmd, args = ctx.meta.get(_INVOKED, (None, []))
    while isinstance(cmd, TyperGroup) and args and (sub := cmd.get_command(ctx, args[0])) is not None:
        cmd, args = sub, args[1:]
    return cmd, args


@app.callback()
def _check_settings(ctx: typer.Context) -> None:
    """Every command reads the settings: invalid ones (a TENFOLD_* variable that does not parse) are one clear
    error naming the field and the value, not a validation traceback from the first command that reads them.
    ``tenfold config`` reads the environment its --env names instead, and reports on its own."""
    import os

    from tenfold.local.loopback import not_proxied

    # This machine's services (the emulators, Airflow, the fleet) never through a proxy the shell names: here, and in
    # every process a command starts.
    os.environ.update(not_proxied(os.environ))
    if ctx.invoked_subcommand == "config":
        return
    command, args = _invoked(ctx)
    if ctx.resilient_parsing or isinstance(command, TyperGroup) or any(a in ("--help", "-h") for a in args):
        # Help (a group with none of its commands named shows its own) reads no resource and no setting: never
        # refused, whatever the environment (settings that parse still give their bind host, below).
        try:
            settings = get_settings()
        except ValueError:
            return
    else:
        # The settings the command works on: those its own --env names (`tenfold models list --env local` in a shell
        # with TENFOLD_ENV=dev or staging), TENFOLD_ENV's otherwise. Dev or prod without a project is refused (a
        # placeholder's buckets), but not for the local platform's commands, which refuse any environment but local
        # themselves.
        env = None
        if command is not None and any(p.name == "env" for p in command.params):
            env = command.make_context(command.name, list(args), parent=ctx, resilient_parsing=True).params.get("env")
        settings = command_settings(env, placeholder_ok=ctx.invoked_subcommand in _LOCAL_PLATFORM_COMMANDS)
    # The services listen on the settings' bind host, any 127.x.x.x address: one other than 127.0.0.1 is in no fixed
    # no_proxy entry, and the storage client, the emulators' clients and the traffic replay's bearer token went to
    # the proxy.
    os.environ.update(not_proxied(os.environ, (settings.local.bind_host,)))


# Settings that are secrets: ``tenfold config`` shows where they point, never the secret part (``tenfold status``
# is the one place that prints secrets).
_SECRET_KEYS = ("monitoring.alert_webhook_url",)


def _masked_url(url: str) -> str:
    """``https://hooks.slack.com/***``: the scheme and host of a secret URL, the rest (its secret) masked."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    host = parts.hostname or ""
    return f"{parts.scheme}://{host}/***" if parts.scheme and host else "***"


def _shown_secret(settings: Settings, secret: str) -> object:
    """What ``tenfold config`` shows of the secret setting ``secret``: its URL's scheme and host (the settings hold
    a SecretStr, whose dump is pydantic's ``**********``, which says nothing of where it points)."""
    value = settings.get(secret)
    if isinstance(value, SecretStr):
        value = value.get_secret_value()
    return _masked_url(value) if isinstance(value, str) else value


def _mask_secrets(settings: Settings, key: str, value: object) -> object:
    """``value`` of settings key ``key`` (a section's ``model_dump(mode="json")`` or a plain value) with every
    secret in it masked, showing where it points."""
    for secret in _SECRET_KEYS:
        if key == secret:
            return _shown_secret(settings, secret)
        if not key or secret.startswith(f"{key}."):
            rest = secret[len(key) + 1:] if key else secret
            node = value
            *path, last = rest.split(".")
            for part in path:
                node = node.get(part) if isinstance(node, dict) else None
            if isinstance(node, dict) and node.get(last) is not None:
                node[last] = _shown_secret(settings, secret)
    return value


@config_app.command("get")
def config_get(key: str, env: str | None = typer.Option(None, help="local, dev or prod; default TENFOLD_ENV")) -> None:
    """Print one settings value, e.g. ``tenfold config get storage.lake_uri``."""
    settings = command_settings(env, placeholder_ok=True)  # names only: what they are before a project is chosen
    try:
        value = settings.get(key)
    except (KeyError, ValueError) as exc:
        typer.echo(f"error: {exc.args[0] if isinstance(exc, KeyError) and exc.args else exc}", err=True)
        raise typer.Exit(2) from None
    if hasattr(value, "model_dump"):
        typer.echo(json.dumps(_mask_secrets(settings, key, value.model_dump(mode="json")), indent=2))
    elif isinstance(value, (dict, list, tuple)):
        from pydantic_core import to_jsonable_python  # a dict of sections (messaging.subscriptions): objects, not reprs

        typer.echo(json.dumps(to_jsonable_python(value), default=str))
    else:
        typer.echo("" if value is None else str(_mask_secrets(settings, key, value)))


@config_app.command("show")
def config_show(env: str | None = typer.Option(None, help="local, dev or prod; default TENFOLD_ENV")) -> None:
    """Print every settings value as JSON."""
    settings = command_settings(env, placeholder_ok=True)
    typer.echo(json.dumps(_mask_secrets(settings, "", settings.model_dump(mode="json")), indent=2))


@config_app.command("env")
def config_env(env: str | None = typer.Option(None, help="dev or prod; default TENFOLD_ENV")) -> None:
    """Print the ``TENFOLD_*`` variables the cloud's own processes run with, as ``export`` lines: what Composer gets
    from the stacks, for an Airflow of your own (``eval "$(tenfold config env --env dev)"`` in its environment).

    Run it in the shell the stacks were synthesized from: a setting the stacks were built with (a runs prefix, the
    registry's folder, the workload) that that Airflow lacked had it stage where the training nodes, granted the
    synthesized folder only, never looked."""
    import shlex

    from tenfold.config.settings import composer_env

    settings = command_settings(env)
    if settings.is_local:
        typer.echo("error: the local platform's processes read this shell's TENFOLD_* variables themselves: "
                   "`tenfold config env` is for dev or prod (pass --env dev or --env prod)", err=True)
        raise typer.Exit(2)
    for name, value in composer_env(settings).items():
        typer.echo(f"export {name}={shlex.quote(value)}")


# --- sub-commands of each area (keep this list sorted; each module defines ``app`` or commands) ---
from tenfold.data.cli import ingest as _ingest  # noqa: E402

app.command("ingest")(_ingest)
from tenfold.feedback.cli import app as _feedback  # noqa: E402

app.add_typer(_feedback, name="feedback")
from tenfold.inference.cli import app as _dlq  # noqa: E402

app.add_typer(_dlq, name="dlq")
from tenfold.local import cli as _local  # noqa: E402

app.command("up")(_local.up)
app.command("down")(_local.down)
app.command("status")(_local.status)

from tenfold.quality.cli import app as _quality  # noqa: E402

app.add_typer(_quality, name="quality")
from tenfold.registry import cli as _models_cli  # noqa: E402


def _unusable_here(reg: Any) -> Callable[[str], str | None]:
    """Why a registered version cannot be loaded by this code (``tenfold.registry.cli.unusable_here``): its
    ``meta.json`` cannot be read, or :func:`tenfold.workloads.meta_problem` says why load_model would refuse it."""
    from tenfold.registry.errors import RegistryError
    from tenfold.workloads import WorkloadError, get_workload, meta_problem

    try:
        ours = get_workload(reg.settings)
    except WorkloadError as exc:
        raise RegistryError(f"cannot check that the version can be served here: {exc}; install the workload's package "
                            "where you run this, or --force (moved without the check)") from exc

    def why(version: str) -> str | None:
        try:
            meta = reg.meta(version)
        except RegistryError as exc:  # its meta.json missing or damaged: not one to move the alias to
            return f"its meta.json cannot be read ({exc})"
        return meta_problem(meta, reg.settings.workload, ours.contract)  # what load_model refuses (no import of it)

    return why


_models_cli.unusable_here = _unusable_here
app.add_typer(_models_cli.app, name="models")
from tenfold.rollout.cli import app as _rollout  # noqa: E402

app.add_typer(_rollout, name="rollout")
from tenfold.serving.cli import app as _serve  # noqa: E402

app.add_typer(_serve, name="serve")
from tenfold.training.cli import register as _register_training  # noqa: E402

_register_training(app)


@app.command("demo")
def demo(
    first: str = typer.Option("2013-01", help="first month of the first champion's window (YYYY-MM)"),
    champion_until: str = typer.Option("2013-06", help="last month of the first champion's window: its newest "
                                                       "months (one, up to a quarter of a longer window) are held out, "
                                                       "the months before them trained on"),
    months: int = typer.Option(6, min=1, max=60, help="later months to replay one at a time, as if live"),
    flights: int = typer.Option(3000, min=0, help="flights of each replayed month sent through the serving fleet"),
    retrain_every: int = typer.Option(3, min=0, help="replayed months after which the baseline schedule retrains "
                                                    "without drift (0: only drift retrains)"),
) -> None:
    """Bring the local platform up and run the lifecycle through Airflow (what `make demo` runs)."""
    from tenfold import demo as _demo
    from tenfold.local.cli import refusing_os_errors
    from tenfold.local.process import LocalPlatformError
    from tenfold.pipelines.common import PipelineError

    try:
        settings = get_settings()
    except ValueError as exc:  # a setting an environment variable gives that is not valid
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    _local._local_only(settings, "demo")  # before the lock and the run folder, as `tenfold up`
    try:  # bad usage (exit 2), said before anything starts: months that are not YYYY-MM, or outside the DAGs' months
        _demo.demo_months(first, champion_until, months, settings)
    except (_demo.DemoError, PipelineError, ValueError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    try:
        with refusing_os_errors(settings, "demo"):  # a TENFOLD_HOME under a file or not writable, a full disk
            _demo.run(settings, first, champion_until, months=months, flights=flights,
                      retrain_every=retrain_every, say=typer.echo)
    except typer.Exit:  # already said (refusing_os_errors): typer.Exit is a RuntimeError too
        raise
    except (_demo.DemoError, _demo.AirflowApiError, LocalPlatformError, ValueError, RuntimeError) as exc:
        # RuntimeError: what `tenfold up` reports the same way (a failed migration, provisioning, a bad token file)
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc


def main() -> None:
    app()


if __name__ == "__main__":
    main()
