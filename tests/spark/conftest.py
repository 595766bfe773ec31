"""One SparkSession for every test under tests/spark (a JVM start costs ~15 s on 2 cores).

``local[2,4]``: two cores and up to four attempts per task, as the job runs locally; tiny shuffles and
no UI, so a hand-made frame transforms in well under a second. The driver listens on loopback only, as
the job's does (``tenfold.features.submit.loopback_conf``).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator

import pyspark  # make setup installs it: a missing one fails the suite, never skips every Spark test
import pytest


@pytest.fixture(scope="session")
def spark() -> Iterator[pyspark.sql.SparkSession]:
    from pyspark.sql import SparkSession

    from tenfold.features.job import SESSION_CONF
    from tenfold.features.submit import loopback_conf

    # Python workers must be this venv's interpreter (they unpickle functions from tenfold).
    os.environ["PYSPARK_PYTHON"] = sys.executable
    os.environ["SPARK_LOCAL_IP"] = loopback_conf()["spark.driver.host"]  # read by the JVM this session starts

    builder = (
        SparkSession.builder.master("local[2,4]")
        .appName("tenfold-tests")
        .config("spark.sql.shuffle.partitions", "2")
        .config("spark.default.parallelism", "2")
        .config("spark.driver.memory", "1g")
        .config("spark.log.level", "ERROR")
        .config("spark.ui.showConsoleProgress", "false")
        # Hand-made frames of a few rows: interpreting plans beats compiling them (about 35% faster
        # here), and adaptive re-planning only adds jobs. Results are the same either way.
        .config("spark.sql.adaptive.enabled", "false")
        .config("spark.sql.codegen.wholeStage", "false")
        .config("spark.sql.codegen.factoryMode", "NO_CODEGEN")
    )
    for key, value in {**SESSION_CONF, **loopback_conf()}.items():
        builder = builder.config(key, value)
    session = builder.getOrCreate()
    yield session
    session.stop()
