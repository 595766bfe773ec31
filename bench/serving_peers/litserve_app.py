"""The peer served by LitServe 0.2.19: POST /predict with one flight, the same work as Tenfold's server.

Run by ``bench/serving.py`` in the benchmark's venv (``.tools/bench-serving``)::

    .tools/bench-serving/bin/python bench/serving_peers/litserve_app.py --port 8101 \\
        --max-batch-size 64 --batch-timeout-ms 2

with the environment ``bench_serving_peers.common`` documents. LitServe's defaults do not batch
(``max_batch_size=1``): the batch size and wait are set to Tenfold's ``settings.serving.server``
``max_batch_size`` / ``max_batch_wait_ms``. LitServe runs the HTTP server (uvicorn) and the inference
loop in separate processes joined by queues; one of each, as one Tenfold replica is one process.
Bound to 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

import litserve as ls
from fastapi import HTTPException

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import BadRequest, Scorer


class FlightsAPI(ls.LitAPI):
    """validate (decode_request) -> assemble + predict_proba per batch -> one dict per flight."""

    def setup(self, device: str) -> None:
        self.scorer = Scorer()

    # LitServe reads the annotations of decode_request's ``request`` and encode_response's return to type
    # its endpoint; unannotated means "parse the JSON body" and "answer JSON", which is what we want.
    def decode_request(self, request):  # type: ignore[no-untyped-def]
        try:
            return self.scorer.validate(request)
        except BadRequest as exc:
            raise HTTPException(status_code=422, detail=exc.detail) from exc

    def predict(self, x: Any) -> Any:
        # With max_batch_size > 1 LitServe hands a list of decoded requests (its default batch()).
        return self.scorer.score(list(x) if isinstance(x, list | tuple) else [x])

    def unbatch(self, output: Any) -> Any:
        return output

    def encode_response(self, output):  # type: ignore[no-untyped-def]
        return output


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--max-batch-size", type=int, required=True)
    parser.add_argument("--batch-timeout-ms", type=float, required=True)
    args = parser.parse_args(argv)
    api = FlightsAPI(max_batch_size=args.max_batch_size, batch_timeout=args.batch_timeout_ms / 1000.0)
    # fast_queue (ZeroMQ between the HTTP and inference processes) is off by default; BENCH_LITSERVE_FAST_QUEUE=1
    # turns it on.
    server = ls.LitServer(api, accelerator="cpu", workers_per_device=1, timeout=30,
                          fast_queue=os.environ.get("BENCH_LITSERVE_FAST_QUEUE") == "1")
    server.run(host="127.0.0.1", port=args.port, num_api_servers=1, log_level="warning", generate_client_file=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
