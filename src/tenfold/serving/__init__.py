"""Online serving: the model server (one replica per process) and, beside it, the local fleet.

The server: :mod:`tenfold.serving.app` (the FastAPI app: predict, feedback, health, readiness, metrics),
:mod:`~tenfold.serving.loading` (the registry's model and the workload's online features, loaded at
startup), :mod:`~tenfold.serving.batching` (adaptive micro-batching on one model thread),
:mod:`~tenfold.serving.cache` (predictions keyed by model version and request hash),
:mod:`~tenfold.serving.publishing` (Pub/Sub behind a bounded buffer and a circuit breaker),
:mod:`~tenfold.serving.auth` (bearer token or IAP), :mod:`~tenfold.serving.metrics` (Prometheus, one
registry per replica) and :mod:`~tenfold.serving.replica`, the process: ``python -m tenfold.serving
--host 127.0.0.1 --port 8101 --arm stable --model champion``. See docs/serving.md.

This package module stays light (no FastAPI, torch or Pub/Sub at import) so the fleet and the CLI can
import their parts of the package cheaply.
"""

from __future__ import annotations
