"""The CDK Terrain app: synthesizes the data and platform stacks of dev and prod in one process.

Run from infra/:  ``../.venv/bin/python main.py``  (what ``make synth``, ``cdktn synth`` and
``cdktf synth`` run, via cdktf.json); deploy one stack with ``cdktn deploy tenfold-dev-data``.
Names come from tenfold settings; set ``TENFOLD_PROJECT_ID`` to your project before deploying.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# infra/ must not be on sys.path: infra/constructs would shadow the `constructs` library.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "infra"]
sys.path.insert(0, str(ROOT))

from infra.stacks import build_app  # noqa: E402

if __name__ == "__main__":
    build_app().synth()
