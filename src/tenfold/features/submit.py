"""Launch ``spark_jobs/build_features.py`` with the venv's ``spark-submit`` (the local column).

``spark_submit_features(settings, part, output_uri)`` is what the build_features DAG calls when
``settings.env == "local"``; in dev and prod the same job file runs as a Dataproc batch. The child gets
the settings' master (``local[2,4]``: 2 cores, up to 4 attempts per task) and driver memory, a small
JVM heap and quiet logs, the driver and its block manager bound to loopback with no UI
(:func:`loopback_conf`), the settings' workload (``--workload``) and features table, and runs under a
wall-clock limit; a failure raises :class:`SparkJobError` with the exit code and the tail of the job's
output.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path

from tenfold.config import Settings, project_root
from tenfold.data.lake import Partition

JOB_FILE = Path("spark_jobs") / "build_features.py"
LOG_TAIL_LINES = 40


class SparkJobError(RuntimeError):
    """spark-submit exited non-zero or timed out; ``returncode`` 2 means bad or missing input."""

    def __init__(self, message: str, returncode: int | None, log_tail: str) -> None:
        super().__init__(message)
        self.returncode = returncode
        self.log_tail = log_tail


def loopback_conf(host: str = "127.0.0.1") -> dict[str, str]:
    """Spark conf that keeps a local-mode job on ``host`` (``settings.local.bind_host``, loopback).

    Without it, when the machine's host name resolves to a loopback address, Spark picks the first
    interface address instead ("Your hostname resolves to a loopback address ... using <address>") and
    its driver RPC and block manager listen there for the whole job; the UI would listen on all
    interfaces. The block manager binds to the driver's bind address; the UI is off.
    """
    return {"spark.driver.bindAddress": host, "spark.driver.host": host, "spark.ui.enabled": "false"}


def submit_prefix(settings: Settings, extra_conf: Mapping[str, str] | None = None) -> list[str]:
    """``spark-submit`` with the settings' master, driver memory and the local conf, up to the job file
    (every Tenfold job is launched with the same prefix)."""
    conf = {
        **loopback_conf(settings.local.bind_host),
        "spark.sql.shuffle.partitions": str(settings.spark.shuffle_partitions),
        "spark.log.level": "WARN",
        "spark.driver.extraJavaOptions": "-XX:+UseSerialGC -Xss4m",
        **(extra_conf or {}),
    }
    cmd = [str(Path(sys.executable).parent / "spark-submit"), "--master", settings.spark.master,
           "--driver-memory", settings.spark.driver_memory]
    for key, value in conf.items():
        cmd += ["--conf", f"{key}={value}"]
    return cmd


def spark_submit_command(
    settings: Settings,
    part: Partition,
    output_uri: str,
    *,
    publish: bool = False,
    extra_conf: Mapping[str, str] | None = None,
    run_id: str | None = None,
    lake_uri: str | None = None,
) -> list[str]:
    """The spark-submit argv (useful to print, and what :func:`spark_submit_features` runs)."""
    cmd = submit_prefix(settings, extra_conf)
    cmd += [
        str(project_root() / JOB_FILE),
        "--lake-uri", lake_uri or settings.storage.lake_uri,
        "--month", part.label,
        "--output", output_uri,
        # The job runs in a fresh process without the settings: it learns the workload from its argv.
        "--workload", settings.workload,
        "--features-table", settings.storage.features_table, "--lookups-table", settings.storage.lookups_table,
    ]
    if publish:
        cmd.append("--publish")
    if run_id:
        cmd += ["--run-id", run_id]
    return cmd


def spark_env(base: Mapping[str, str] | None = None, *, bind_host: str = "127.0.0.1") -> dict[str, str]:
    """Environment for spark-submit: the venv's Python on both sides, its bin first on PATH, and
    ``SPARK_LOCAL_IP`` (the address Spark resolves for itself before any conf applies) on ``bind_host``."""
    env = dict(os.environ if base is None else base)
    env["SPARK_LOCAL_IP"] = bind_host
    bindir = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join([bindir, env.get("PATH", "")])
    env["PYSPARK_PYTHON"] = sys.executable
    env["PYSPARK_DRIVER_PYTHON"] = sys.executable
    env.pop("SPARK_HOME", None)  # let pyspark's own find-spark-home pick the installed distribution
    return env


def spark_submit_features(
    settings: Settings,
    part: Partition,
    output_uri: str,
    *,
    publish: bool = False,
    extra_conf: Mapping[str, str] | None = None,
    run_id: str | None = None,
    lake_uri: str | None = None,
    timeout_s: float = 900,
) -> str:
    """Run the build-features job for ``part`` into ``output_uri``; returns the job's output.

    Raises :class:`SparkJobError` (with the last lines of the log) on a non-zero exit or a timeout;
    the child and its JVM are killed on timeout, and ``output_uri`` is then not to be trusted.
    """
    cmd = spark_submit_command(
        settings, part, output_uri, publish=publish, extra_conf=extra_conf, run_id=run_id, lake_uri=lake_uri
    )
    return run_submit(cmd, f"build_features for {part.label}", bind_host=settings.local.bind_host, timeout_s=timeout_s)


def run_submit(cmd: list[str], what: str, *, bind_host: str, timeout_s: float) -> str:
    """Run a spark-submit ``cmd`` (``what`` names it in errors) under a wall-clock limit; returns its output.

    Raises :class:`SparkJobError` with the last lines of the log on a non-zero exit (2: bad or missing
    input) or a timeout, after killing the child's whole process group (the JVM is a grandchild).
    """
    with tempfile.TemporaryFile(mode="w+") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=spark_env(bind_host=bind_host),
                                start_new_session=True)
        try:
            code = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)  # the JVM is a grandchild: end the whole group we started
            proc.wait()
            code = None
        log.seek(0)
        text = log.read()
    tail = "\n".join(text.splitlines()[-LOG_TAIL_LINES:])
    if code is None:
        raise SparkJobError(f"{what} ran past {timeout_s:.0f} s and was killed\n{tail}", None, tail)
    if code != 0:
        kind = "bad or missing input" if code == 2 else "failed"
        raise SparkJobError(f"{what} {kind} (exit {code}):\n{tail}", code, tail)
    return text
