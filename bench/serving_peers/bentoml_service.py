"""The peer served by BentoML 1.4.40: POST /predict, the same work as Tenfold's server, adaptive batching.

Run by ``bench/serving.py`` in the benchmark's venv (``.tools/bench-serving``), from this folder::

    BENCH_MAX_BATCH_SIZE=64 .tools/bench-serving/bin/bentoml serve bentoml_service:Flights \\
        --host 127.0.0.1 --port 8102 --working-dir bench/serving_peers

with the environment ``common`` documents. A batchable BentoML API takes a *list* and concatenates
the lists of concurrent requests, so its body is ``{"flights": [<one flight>]}`` (the shape of
Tenfold's batch body) rather than the bare flight. ``max_batch_size`` is Tenfold's
``settings.serving.server.max_batch_size``. BentoML has no batch-wait setting: its dispatcher learns
how long to wait from the measured batch cost; its ``max_latency_ms`` is a shedding deadline (a
request queued past it is cancelled with a 503), so it stays at BentoML's default (60 s) rather than
Tenfold's 2 ms wait, which would shed most requests. One worker process, as one Tenfold replica.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import bentoml
from fastapi import HTTPException

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import BadRequest, Scorer

from tenfold.local.env import settings_from_env
from tenfold.workloads import get_workload

# BentoML validates the body against the annotation before the request joins a batch (a 400 naming the
# field), so the workload's own request model is the annotation.
FlightRequest = get_workload(settings_from_env(os.environ)).request_model
MAX_BATCH = int(os.environ.get("BENCH_MAX_BATCH_SIZE", "64"))
MAX_LATENCY_MS = int(os.environ.get("BENCH_BENTOML_MAX_LATENCY_MS", "60000"))


# Access log off, as on Tenfold's replicas and LitServe (log level warning); metrics stay at BentoML's default (on).
@bentoml.service(workers=1, traffic={"timeout": 30}, logging={"access": {"enabled": False}})
class Flights:
    """validated flights (by BentoML, with the workload's model) -> check against the lookups -> assemble + predict_proba per adaptive batch -> one dict per flight."""

    def __init__(self) -> None:
        self.scorer = Scorer()

    @bentoml.api(batchable=True, max_batch_size=MAX_BATCH, max_latency_ms=MAX_LATENCY_MS)
    def predict(self, flights: list[FlightRequest]) -> list[dict[str, Any]]:  # type: ignore[valid-type]
        try:
            for f in flights:
                self.scorer.check(f)
        except BadRequest as exc:
            raise HTTPException(status_code=422, detail=exc.detail) from exc
        return self.scorer.score(flights)
