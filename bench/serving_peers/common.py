"""What every peer server does per request, with Tenfold's own code: validate, assemble online, score.

The peers (LitServe, BentoML) run in the benchmark's own venv (``.tools/bench-serving``, made by
``bench/serving.py``) with ``tenfold`` installed there without dependencies, so they call the SAME
``workload.request_model``, ``tenfold.features.online.load_online_features`` and
``tenfold.model.io.load_model`` as Tenfold's server; only the HTTP, batching and process model differ.

Configuration comes from the environment, set by ``bench/serving.py``: the ``TENFOLD_*`` variables of the
benchmark's settings (``tenfold.local.settings_env``), ``BENCH_MODEL_DIR`` (the model folder, downloaded
once from the registry), ``BENCH_MODEL_VERSION`` and ``BENCH_TORCH_THREADS``.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from pydantic import ValidationError

from tenfold.features.online import load_online_features
from tenfold.local.env import settings_from_env
from tenfold.model.io import load_model
from tenfold.workloads import RequestInvalid, get_workload

__all__ = ["BadRequest", "Scorer"]


class BadRequest(ValueError):
    """A request the workload refuses; ``detail`` is what a 422 body carries."""

    def __init__(self, detail: Any) -> None:
        super().__init__(str(detail))
        self.detail = detail


class Scorer:
    """The loaded model, lookups and request schema; ``validate`` one body, ``score`` a batch."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        torch.set_num_threads(int(env.get("BENCH_TORCH_THREADS", "1")))
        settings = settings_from_env(env)
        self.request_model = get_workload(settings).request_model
        self.online = load_online_features(settings)
        self.model = load_model(env["BENCH_MODEL_DIR"])
        self.version = env.get("BENCH_MODEL_VERSION", "unknown")

    def validate(self, body: Any) -> Any:
        """The request model of one body, checked against the lookups (as Tenfold's server does before a
        request joins a micro-batch, so one bad request never fails a batch)."""
        try:
            request = self.request_model.model_validate(body)
        except ValidationError as exc:
            raise BadRequest(exc.errors(include_url=False, include_context=False, include_input=False)) from exc
        self.check(request)
        return request

    def check(self, request: Any) -> None:
        """Refuse a request the lookups cannot score (unknown airport, month without lookups)."""
        try:
            self.online.check(request)
        except RequestInvalid as exc:
            raise BadRequest({"field": exc.field, "message": exc.message}) from exc

    def score(self, requests: Sequence[Any]) -> list[dict[str, Any]]:
        table = self.online.assemble(requests)
        with torch.inference_mode():
            probs = self.model.predict_proba(table)
        return [{"prediction_id": uuid.uuid4().hex, "probability": float(p), "model_version": self.version}
                for p in probs]
