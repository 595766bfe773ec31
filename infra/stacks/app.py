"""Build every stack of the given environments into one CDK Terrain app (one process, one provider import)."""

from __future__ import annotations

import sys
from collections.abc import Iterable

from cdktn import App

from infra.stacks.data import DataStack
from infra.stacks.platform import PLAIN_HTTP_ENVS, PlatformStack, require_https
from tenfold.config import Settings, get_settings

DEPLOYABLE = ("dev", "prod")


def add_environment(app: App, settings: Settings) -> tuple[DataStack, PlatformStack]:
    if settings.is_local:
        raise ValueError("the local environment has no cloud stacks: synthesize dev or prod")
    data = DataStack(app, settings)
    platform = PlatformStack(app, settings)
    platform.add_dependency(data)  # platform grants on buckets and topics the data stack creates
    return data, platform


def build_app(settings: Iterable[Settings] | None = None, outdir: str | None = None) -> App:
    """An app with a data and a platform stack per environment (default: dev and prod from settings).

    By default an environment other than dev whose load balancer would serve plain HTTP (no
    ``serving.load_balancer.domain``: :func:`~infra.stacks.platform.require_https`) is left out, with one line on
    stderr saying why and what to set: dev stays usable without a domain (both are synthesized from one shell's
    variables), and prod is never synthesized, so never deployed, over plain HTTP. Environments given explicitly are
    refused instead (ValueError)."""
    app = App(outdir=outdir) if outdir else App()
    if settings is None:
        settings = []
        for env in DEPLOYABLE:
            s = get_settings(env)
            try:
                require_https(s)
            except ValueError as exc:
                if env in PLAIN_HTTP_ENVS:
                    raise  # dev behind IAP without a domain: configured so on purpose, and refused
                print(f"warning: {exc}; {env}'s stacks were not synthesized", file=sys.stderr)
                continue
            settings.append(s)
    for s in settings:
        add_environment(app, s)
    return app


def stack_names(settings: Settings) -> tuple[str, str]:
    return settings.infra.data_stack, settings.infra.platform_stack
