"""No deployable names code that does not exist: every module a startup script, a DAG or a job launches imports.

A stack that deploys a fleet whose startup script runs ``python -m <module>``, a DAG that imports a
pipeline inside its tasks (so a DagBag load would not notice a missing one), torchrun's entry module,
and the Spark job file that spark-submit and Dataproc run: each is checked here.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

from tenfold import fleets
from tenfold.config import ENVIRONMENTS, get_settings
from tenfold.config.settings import project_root

ROOT = project_root()
DAG_FILES = sorted(p for p in (ROOT / "dags").glob("*.py") if not p.name.startswith("_"))


def _imported_in(path: Path) -> set[tuple[str, str | None]]:
    """Every ``tenfold.*`` import of a file, at any depth (DAG tasks import inside their bodies): ``(module, None)``
    for ``import module``, ``(module, name)`` for ``from module import name``."""
    found: set[tuple[str, str | None]] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("tenfold"):
            found |= {(node.module, a.name) for a in node.names}
        elif isinstance(node, ast.Import):
            found |= {(a.name, None) for a in node.names if a.name.startswith("tenfold")}
    return found


def _check_imports(path: Path) -> None:
    """Import what ``path`` imports: ImportError naming a module, or a name in one, that does not exist."""
    for module, name in sorted(_imported_in(path), key=str):
        imported = importlib.import_module(module)
        if name is not None and not hasattr(imported, name):
            importlib.import_module(f"{module}.{name}")  # a submodule not imported by its package; else it raises


def test_every_module_a_fleet_launches_exists() -> None:
    launched = set(fleets.LAUNCHED_MODULES)
    for env in ENVIRONMENTS:
        launched.add(get_settings(env).training.entry_module)  # what torchrun runs on every rank
    for module in sorted(launched):
        importlib.import_module(module)  # raises if a deployable names code that does not exist


@pytest.mark.parametrize("dag_file", DAG_FILES, ids=lambda p: p.stem)
def test_every_dag_has_its_pipeline_and_imports_only_what_exists(dag_file: Path) -> None:
    importlib.import_module(f"tenfold.pipelines.{dag_file.stem}")  # one pipeline module per DAG, same name
    _check_imports(dag_file)


def test_the_spark_job_file_exists_where_both_runners_point() -> None:
    from tenfold.features.dataproc import FEATURES_JOB
    from tenfold.features.submit import JOB_FILE

    assert (ROOT / JOB_FILE).is_file()
    assert (ROOT / "spark_jobs" / FEATURES_JOB).is_file()


def test_the_bulk_scoring_job_file_exists() -> None:
    from tenfold.inference.spark import JOB_FILE

    assert (ROOT / JOB_FILE).is_file()


def test_a_missing_module_would_be_caught(tmp_path: Path) -> None:
    """The control: the same check on a DAG file whose task imports a module, or a name, that does not exist fails
    (the first form of the check dropped a ``from package import missing`` before checking it)."""
    for line, missing in (("from tenfold.pipelines import train_modell as pipeline", "tenfold.pipelines.train_modell"),
                          ("from tenfold.pipelines.train_model import no_such_step", "no_such_step"),
                          ("import tenfold.inference.no_such_worker", "tenfold.inference.no_such_worker")):
        dag = tmp_path / "dag.py"
        dag.write_text(f"def task():\n    {line}\n")
        with pytest.raises(ImportError, match=missing):
            _check_imports(dag)
    (tmp_path / "dag.py").write_text("def task():\n    from tenfold.pipelines import train_model\n")
    _check_imports(tmp_path / "dag.py")
