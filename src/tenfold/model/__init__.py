"""The model folder format (meta.json, weights, preprocessing state) and the preprocessing itself.

A workload's network is its own (``Workload.build_model``; flights: ``tenfold.workloads.flights.model``).
"""

from __future__ import annotations

from tenfold.model.calibration import Calibrator
from tenfold.model.io import LoadedModel, ModelLoadError, load_model, predict_proba, read_meta, save_model
from tenfold.model.preprocessing import PreprocessingError, Preprocessor

__all__ = [
    "Calibrator",
    "LoadedModel",
    "ModelLoadError",
    "PreprocessingError",
    "Preprocessor",
    "load_model",
    "predict_proba",
    "read_meta",
    "save_model",
]
