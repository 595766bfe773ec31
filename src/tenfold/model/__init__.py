"""The flight-delay model: network, preprocessing state, and the model folder format (meta.json)."""

from __future__ import annotations

from tenfold.model.io import LoadedModel, ModelLoadError, load_model, read_meta, save_model
from tenfold.model.network import FlightDelayModel, ModelConfig
from tenfold.model.preprocessing import PreprocessingError, Preprocessor

__all__ = [
    "FlightDelayModel",
    "LoadedModel",
    "ModelConfig",
    "ModelLoadError",
    "PreprocessingError",
    "Preprocessor",
    "load_model",
    "read_meta",
    "save_model",
]
