"""Units of deployment: the stateful data stack and the stateless platform stack, per environment."""

from __future__ import annotations

from infra.stacks.app import build_app, stack_names

__all__ = ["build_app", "stack_names"]
