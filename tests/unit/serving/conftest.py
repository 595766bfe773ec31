"""supervisor_stubs.py, beside this file, is importable by the tests of this folder (not a package)."""

from __future__ import annotations

import sys
from pathlib import Path

HERE = str(Path(__file__).resolve().parent)
if HERE not in sys.path:
    sys.path.append(HERE)
