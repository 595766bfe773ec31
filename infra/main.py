"""The CDK Terrain app: synthesizes the data and platform stacks of dev and prod in one process.

Run from the repository root: ``.venv/bin/python -m infra.main`` (what ``make synth`` runs, and what
``cdktn synth`` and ``cdktf synth`` run from infra/ via cdktf.json); deploy one stack with
``cdktn deploy tenfold-dev-data`` from infra/. Names come from tenfold settings; set
``TENFOLD_PROJECT_ID`` to your project before deploying. The reusable pieces live in
``infra/components`` (a name that does not shadow the ``constructs`` library), so no path editing is needed.
"""

from __future__ import annotations

import os
from pathlib import Path

from infra.stacks import build_app

if __name__ == "__main__":
    # The CLIs pass their output folder in CDKTF_OUTDIR; run by hand, write where they would.
    build_app(outdir=None if os.environ.get("CDKTF_OUTDIR") else str(Path(__file__).parent / "cdktf.out")).synth()
