"""Load another benchmark script of this folder as a module.

``bench/`` is not a package: each script runs as ``.venv/bin/python bench/NAME.py``. A script that reuses another's
code (the real 2013 features lake of ``training.py``, the DuckDB twin of the features job in ``features.py``) loads
it here, once per process, under the name ``bench_NAME``.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType


def load(name: str) -> ModuleType:
    """``bench/<name>.py`` as a module (the same module object on every call)."""
    key = f"bench_{name}"
    if key in sys.modules:
        return sys.modules[key]
    spec = importlib.util.spec_from_file_location(key, Path(__file__).with_name(f"{name}.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[key] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[key]
        raise
    return module
