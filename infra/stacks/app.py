"""Build every stack of the given environments into one CDK Terrain app (one process, one provider import)."""

from __future__ import annotations

from collections.abc import Iterable

from cdktn import App

from infra.stacks.data import DataStack
from infra.stacks.platform import PlatformStack
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
    """An app with a data and a platform stack per environment (default: dev and prod from settings)."""
    app = App(outdir=outdir) if outdir else App()
    for s in settings if settings is not None else [get_settings(env) for env in DEPLOYABLE]:
        add_environment(app, s)
    return app


def stack_names(settings: Settings) -> tuple[str, str]:
    return settings.infra.data_stack, settings.infra.platform_stack
