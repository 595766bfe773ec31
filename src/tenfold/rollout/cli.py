"""``tenfold rollout``: watch and stop canary rollouts (the ``rollout_model`` DAG runs them).

Run ``tenfold rollout --help``.
"""

from __future__ import annotations

import typer

app = typer.Typer(help="Canary rollouts: their status, and a safe abort.", no_args_is_help=True)
