"""Spark entry point: build one month's features table from the lake's raw partitions.

Locally (what ``tenfold.features.submit`` runs)::

    .venv/bin/spark-submit --master 'local[2,4]' spark_jobs/build_features.py \
        --lake-uri "$(tenfold config get storage.lake_uri)" --month 2013-02 \
        --output "$(tenfold config get storage.lake_uri)/_staging/features/manual" --publish \
        --workload flights

``--workload`` (default ``flights``) names the workload whose sources, transform and contract the
job uses: a built-in name or ``package.module:attribute``, importable on the driver and executors.
On Dataproc the same file is the batch's main Python file, with ``tenfold`` installed on the
workers. All logic is in :mod:`tenfold.features.job`; exit codes: 0 ok, 2 bad or missing input, 1 other.
"""

from __future__ import annotations

import sys

from tenfold.features.job import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
