"""One module per DAG: the steps of that DAG, the frozen run state passed between its tasks, one error.

Every pipeline has the same shape (see :mod:`tenfold.pipelines.common`): a frozen dataclass for what
passes between tasks (``to_xcom``/``from_xcom``), step functions named after the tasks, and
:class:`~tenfold.pipelines.common.PipelineError` for failures a retry cannot fix, which the DAG files
turn into ``AirflowFailException`` with :func:`~tenfold.pipelines.common.run_step`. Each module
runs on its own too: ``python -m tenfold.pipelines.<dag_id> --help``.

Only the CLI and the DAG files import this package; it imports the capability packages, never the
other way round (an import-linter contract in pyproject.toml).
"""
