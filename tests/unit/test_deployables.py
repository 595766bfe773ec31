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


def _modules_named_in(path: Path) -> set[str]:
    """Every ``tenfold.*`` module a file imports, at any depth (DAG tasks import inside their bodies)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("tenfold"):
            names.add(node.module)
            names |= {f"{node.module}.{a.name}" for a in node.names if importlib.util.find_spec(node.module) and
                      _is_module(f"{node.module}.{a.name}")}
        elif isinstance(node, ast.Import):
            names |= {a.name for a in node.names if a.name.startswith("tenfold")}
    return names


def _is_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:
        return False


def test_every_module_a_fleet_launches_exists() -> None:
    launched = set(fleets.LAUNCHED_MODULES)
    for env in ENVIRONMENTS:
        launched.add(get_settings(env).training.entry_module)  # what torchrun runs on every rank
    for module in sorted(launched):
        importlib.import_module(module)  # raises if a deployable names code that does not exist


@pytest.mark.parametrize("dag_file", DAG_FILES, ids=lambda p: p.stem)
def test_every_dag_has_its_pipeline_and_imports_only_what_exists(dag_file: Path) -> None:
    importlib.import_module(f"tenfold.pipelines.{dag_file.stem}")  # one pipeline module per DAG, same name
    for module in sorted(_modules_named_in(dag_file)):
        importlib.import_module(module)


def test_the_spark_job_file_exists_where_both_runners_point() -> None:
    from tenfold.features.dataproc import FEATURES_JOB
    from tenfold.features.submit import JOB_FILE

    assert (ROOT / JOB_FILE).is_file()
    assert (ROOT / "spark_jobs" / FEATURES_JOB).is_file()


def test_the_bulk_scoring_job_file_exists() -> None:
    from tenfold.inference.spark import JOB_FILE

    assert (ROOT / JOB_FILE).is_file()


def test_a_missing_module_would_be_caught() -> None:
    """The control: the same check on a name that does not exist fails."""
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("tenfold.inference.no_such_worker")
