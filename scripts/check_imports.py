"""Import contract for the composition roots that Airflow parses often.

``dags/`` files are parsed by the scheduler's DAG processor every few seconds: a module-level import
of torch or pyspark there costs seconds per parse and memory in every parser process. Heavy imports
belong inside task callables. Run: ``python scripts/check_imports.py`` (``make lint`` does).
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

HEAVY = ("torch", "pyspark", "great_expectations", "sklearn", "pandas", "pyarrow", "duckdb")
CHECKED = ("dags",)


def module_top_imports(tree: ast.Module) -> list[tuple[int, str]]:
    """Imports executed at import time: module level, including inside top-level if/try blocks."""
    found: list[tuple[int, str]] = []
    stack: list[ast.stmt] = list(tree.body)
    while stack:
        node = stack.pop()
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
        elif isinstance(node, (ast.If, ast.Try, ast.With)):
            for field in ("body", "orelse", "finalbody", "handlers"):
                for child in getattr(node, field, []):
                    stack.extend(child.body if isinstance(child, ast.ExceptHandler) else [child])
    return found


def violations(root: Path) -> list[str]:
    out: list[str] = []
    for folder in CHECKED:
        for path in sorted((root / folder).rglob("*.py")):
            tree = ast.parse(path.read_text(), filename=str(path))
            for lineno, name in module_top_imports(tree):
                if name.split(".")[0] in HEAVY:
                    out.append(f"{path.relative_to(root)}:{lineno}: module-level import of {name!r}; import it inside the task")
    return out


def main() -> int:
    root = Path(__file__).resolve().parents[1]
    bad = violations(root)
    for line in bad:
        print(line, file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
