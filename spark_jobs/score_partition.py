"""Spark entry point: score one published features partition with a registered model (bulk offline inference).

Locally, :func:`tenfold.inference.spark.score_partition` resolves the model and runs this file::

    .venv/bin/spark-submit --master 'local[2,4]' spark_jobs/score_partition.py \
        --lake-uri "$(tenfold config get storage.lake_uri)" --month 2013-02 \
        --model-dir .tenfold/serving/models/<version> --model-version <version> \
        --output "$(tenfold config get storage.lake_uri)/_staging/scores/manual" --publish

All logic is in :mod:`tenfold.inference.spark`; exit codes: 0 ok, 2 bad or missing input, 1 other.
"""

from __future__ import annotations

import sys

from tenfold.inference.spark import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
