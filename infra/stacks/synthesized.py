"""Reading synthesized stacks (``cdktf.out/stacks/<name>/cdk.tf.json``): what the tests and bench use."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tenfold.config import Settings


@dataclass
class Synthesized:
    outdir: Path
    stacks: dict[str, dict[str, Any]]

    def stack(self, name: str) -> dict[str, Any]:
        return self.stacks[name]

    def stack_dir(self, name: str) -> Path:
        return self.outdir / "stacks" / name


def resources(stack: dict[str, Any], rtype: str) -> dict[str, dict[str, Any]]:
    """Resources of one type, by logical id."""
    return dict(stack.get("resource", {}).get(rtype, {}))


def by_name(stack: dict[str, Any], rtype: str) -> dict[str, tuple[str, dict[str, Any]]]:
    """Resources of one type by their ``name``: (logical id, body)."""
    return {r["name"]: (lid, r) for lid, r in resources(stack, rtype).items() if isinstance(r.get("name"), str)}


def account_lid(stack: dict[str, Any], account_id: str) -> str:
    """The logical id of the service account ``account_id``."""
    (lid,) = [lid for lid, a in resources(stack, "google_service_account").items() if a["account_id"] == account_id]
    return lid


def startup_command(stack: dict[str, Any], template_prefix: str) -> tuple[dict[str, Any], str, str]:
    """The instance template named ``<template_prefix>-...``, its startup script and the script's ``docker run`` line."""
    (template,) = [t for t in resources(stack, "google_compute_instance_template").values()
                   if t["name_prefix"] == f"{template_prefix}-"]
    script = template["metadata"]["startup-script"]
    (run,) = [line for line in script.splitlines() if line.startswith("docker run")]
    return template, script, run


def synthesize(outdir: Path, settings: Iterable[Settings], extra: Callable[[Any], None] | None = None) -> Synthesized:
    """Synthesize every environment in ``settings`` (plus ``extra(app)``) in one app; read the results back."""
    from cdktn import App

    from infra.stacks.app import add_environment

    app = App(outdir=str(outdir))
    for s in settings:
        add_environment(app, s)
    if extra is not None:
        extra(app)
    app.synth()
    stacks = {p.parent.name: json.loads(p.read_text()) for p in (outdir / "stacks").glob("*/cdk.tf.json")}
    return Synthesized(outdir, stacks)
