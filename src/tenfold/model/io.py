"""Saving and loading a model folder: weights, ``meta.json`` and the preprocessing state.

Layout of a model folder (what the registry stores as one immutable version)::

    meta.json            config, feature columns, vocabulary sizes, parameter shapes, torch version,
                         the weights' sha256, the preprocessing state's digest and the calibration
                         (``calibration``: a :class:`~tenfold.model.calibration.Calibrator`)
    weights.pt           the module's state dict (tensors only; loaded with weights_only=True)
    preprocessing.json   the fitted Preprocessor

:func:`load_model` rebuilds the module from ``meta.json`` alone and refuses a folder whose weights
or preprocessing do not match it, so serving never runs a model it cannot vouch for.
:meth:`LoadedModel.predict_proba` applies the stored calibration, so every consumer (evaluation, the
gate, serving, offline inference) gets the same probabilities; a folder saved before calibration
existed has no ``calibration`` entry and predicts uncalibrated, exactly as before.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import torch

from tenfold.fsio import atomic_write
from tenfold.model.calibration import IDENTITY, CalibrationError, Calibrator
from tenfold.model.preprocessing import PreprocessingError, Preprocessor

if TYPE_CHECKING:
    from tenfold.workloads import Workload
from tenfold.model_files import (  # META_VERSION: kept importable from here
    META_FILE,
    META_VERSION,
    PREPROCESSING_FILE,
    WEIGHTS_FILE,
    WRITE_ORDER,
    newer_meta_format,
)


class ModelLoadError(RuntimeError):
    """A model folder is incomplete or inconsistent; the message names the file and what to do."""


def _state_bytes(model: torch.nn.Module) -> bytes:
    buf = io.BytesIO()
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    torch.save(state, buf)
    return buf.getvalue()


def save_model(
    directory: str | Path,
    model: torch.nn.Module,
    config: Any,
    preprocessing: Preprocessor,
    *,
    workload: str,
    extra: Mapping[str, Any] | None = None,
    calibration: Calibrator | None = None,
) -> dict[str, Any]:
    """Write the weights, the preprocessing state and (last, as the commit marker) ``meta.json``, in ``WRITE_ORDER``.

    Returns the meta body. ``config`` is the workload's model config (its ``to_dict`` goes to meta.json);
    ``workload`` names the workload that builds the module again on load (``settings.workload``).
    ``extra`` (training config, lineage hints) is stored under ``meta["extra"]``; ``calibration`` (fitted
    on the validation slice) under ``meta["calibration"]``, which :func:`load_model` applies.
    """
    from tenfold.workloads import VERSION_KEY, get_workload

    shaped: Any = model  # a workload's module keeps vocab_sizes and num_inputs (Workload.build_model)
    if tuple(shaped.vocab_sizes) != tuple(preprocessing.vocab_sizes.values()) or shaped.num_inputs != preprocessing.num_inputs:
        raise ValueError("model input shapes do not match the preprocessing it is saved with")
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    weights = _state_bytes(model)
    pre_json = preprocessing.to_json().encode()
    meta = {
        "version": META_VERSION,
        "workload": workload,
        # The feature definitions it learnt from (training reads only partitions of the code's version): a model
        # of another version is refused on load, never fed features that no longer mean what it learnt.
        VERSION_KEY: get_workload(workload).contract.version,
        "model_class": type(model).__name__,
        "config": config.to_dict(),
        "categorical_columns": list(preprocessing.categorical_columns),
        "numeric_columns": list(preprocessing.numeric_columns),
        "vocab_sizes": dict(preprocessing.vocab_sizes),
        "num_inputs": preprocessing.num_inputs,
        "parameters": {k: list(v.shape) for k, v in model.state_dict().items()},
        "torch_version": torch.__version__,
        "weights_file": WEIGHTS_FILE,
        "weights_sha256": hashlib.sha256(weights).hexdigest(),
        "preprocessing_file": PREPROCESSING_FILE,
        "preprocessing_sha256": hashlib.sha256(pre_json).hexdigest(),
        "extra": dict(extra or {}),
    }
    if calibration is not None and not calibration.is_identity:
        meta["calibration"] = calibration.to_dict()
    # Every file in the one order the registry and the training worker copy them in (model_files.WRITE_ORDER): a
    # folder with meta.json is complete, as meta.json is written last.
    contents = {WEIGHTS_FILE: weights, PREPROCESSING_FILE: pre_json,
                META_FILE: json.dumps(meta, indent=2, sort_keys=True).encode()}
    for name in WRITE_ORDER:
        atomic_write(out / name, contents[name])
    return meta


@contextlib.contextmanager
def _eval_mode(model: torch.nn.Module) -> Iterator[None]:
    """``model`` in eval mode for the block, then each module back in the mode it was in.

    A model already all in eval mode (a served one) is left alone: ``train()``/``eval()`` walk every
    module, which cost more than the forward pass of a serving micro-batch.
    """
    training = [m for m in model.modules() if m.training]
    if not training:
        yield
        return
    model.eval()
    try:
        yield
    finally:
        for m in training:
            m.training = True


@torch.no_grad()
def predict_proba(model: torch.nn.Module, categorical: torch.Tensor, numeric: torch.Tensor,
                  batch_size: int = 65536) -> torch.Tensor:
    """Probabilities (the sigmoid of the logits) in eval mode, in batches so a whole holdout never needs
    one huge activation; the module's training mode is restored."""
    with _eval_mode(model):
        out = [
            torch.sigmoid(model(categorical[i : i + batch_size], numeric[i : i + batch_size]))
            for i in range(0, categorical.shape[0], batch_size)
        ]
    return torch.cat(out) if out else torch.zeros(0)


@torch.no_grad()
def predict_logits(model: torch.nn.Module, categorical: torch.Tensor, numeric: torch.Tensor,
                   batch_size: int = 65536) -> torch.Tensor:
    """Raw logits in eval mode, batched like :func:`predict_proba`; the module's training mode is restored."""
    with _eval_mode(model):
        out = [model(categorical[i : i + batch_size], numeric[i : i + batch_size])
               for i in range(0, categorical.shape[0], batch_size)]
    return torch.cat(out) if out else torch.zeros(0)


@dataclass
class LoadedModel:
    """A model rebuilt from its folder, ready to score feature rows."""

    model: torch.nn.Module
    config: Any
    preprocessor: Preprocessor
    meta: dict[str, Any]
    directory: Path
    workload: Workload
    # IDENTITY for folders saved without calibration (they predict exactly as before it existed).
    calibrator: Calibrator = IDENTITY

    def predict_proba(self, data: pa.Table | Mapping[str, Any], *, calibrated: bool = True) -> np.ndarray:
        """P(label) for each row of a features table (or a column -> values mapping), calibrated.

        ``calibrated=False`` gives the network's own sigmoid (what the ECE "before" figures measure).
        """
        cat, num = self.preprocessor.transform(data)
        if self.calibrator.is_identity or not calibrated:
            probs = predict_proba(self.model, torch.from_numpy(cat), torch.from_numpy(num))
            return probs.double().numpy()
        logits = predict_logits(self.model, torch.from_numpy(cat), torch.from_numpy(num))
        return self.calibrator.apply(logits.double().numpy())

    def predict_logits(self, data: pa.Table | Mapping[str, Any]) -> np.ndarray:
        """The network's logits (float64), before the sigmoid and the calibration."""
        cat, num = self.preprocessor.transform(data)
        return predict_logits(self.model, torch.from_numpy(cat), torch.from_numpy(num)).double().numpy()


def read_meta(directory: str | Path) -> dict[str, Any]:
    path = Path(directory) / META_FILE
    try:
        meta = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise ModelLoadError(f"{path} is missing: {directory} is not a saved model (save it with save_model)") from exc
    except (ValueError, RecursionError) as exc:  # bad JSON; a flipped high bit (not UTF-8); an integer of over 4,300
        # digits; arrays or objects nested deeper than the interpreter's recursion limit
        raise ModelLoadError(f"{path} is not valid JSON ({exc}); the model folder is corrupt") from exc
    except OSError as exc:  # a file given for the folder, a folder named meta.json, no permission to read it
        raise ModelLoadError(f"{path} cannot be read ({exc.strerror or exc}): {directory} must be a saved model's folder "
                             "(save_model writes one) whose files this user can read") from exc
    if isinstance(meta, dict) and (newer := newer_meta_format(meta)):
        raise ModelLoadError(f"{path}: unsupported meta version: {newer}")
    if not isinstance(meta, dict) or meta.get("version") != META_VERSION:
        raise ModelLoadError(f"{path}: unsupported meta version {meta.get('version') if isinstance(meta, dict) else meta!r}")
    return meta


def _file_field(where: Path, meta: Mapping[str, Any], field: str, default: str) -> str:
    """The file name ``meta[field]`` gives, which must be a plain name of a file in the folder (no path)."""
    name = meta.get(field, default)
    if not isinstance(name, str) or name in ("", ".", "..") or "/" in name or "\\" in name:
        raise ModelLoadError(f"{where / META_FILE}: its field {field!r} is {name!r}, not a file name in the model "
                             f"folder (e.g. {default!r}); re-save the model or restore the folder from the registry")
    return name


def load_model(directory: str | Path, *, map_location: str | torch.device = "cpu",
               for_workload: str | None = None) -> LoadedModel:
    """Rebuild a model from ``meta.json`` and refuse weights or preprocessing that do not match it.

    ``for_workload``: the workload this process runs (``settings.workload``). A model of another is refused before its
    workload's module is imported: ``meta.json`` names a module, and whoever can write a model folder (a registry
    bucket) must not choose what a replica or worker imports. Give it wherever the folder came from the registry."""
    where = Path(directory)
    meta = read_meta(where)
    from tenfold.config.settings import DEFAULT_WORKLOAD
    from tenfold.workloads import WorkloadError, get_workload, meta_problem

    # Folders saved before workloads were named hold the reference workload's model.
    name = meta.get("workload", DEFAULT_WORKLOAD)
    if not isinstance(name, str):
        raise ModelLoadError(f"{where / META_FILE}: its field 'workload' is {name!r}, not a workload name; re-save the model")
    # With for_workload, only this process's own workload is imported: a model of another is refused by meta_problem.
    runs = name if for_workload is None else for_workload
    try:
        workload = get_workload(runs)
    except WorkloadError as exc:
        raise ModelLoadError(f"{where / META_FILE}: workload {runs!r} cannot be loaded here: {exc}") from exc
    if problem := meta_problem(meta, runs, workload.contract):
        raise ModelLoadError(f"{where / META_FILE}: {problem}. Load a model trained for {runs!r} on the current feature "
                             "definitions, or train one (train_model) and promote it")
    try:
        config = workload.model_config_type.from_dict(meta["config"])
        vocab_sizes = [int(meta["vocab_sizes"][c]) for c in meta["categorical_columns"]]
        num_inputs = int(meta["num_inputs"])
        expected_sha = meta["weights_sha256"]
    except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as exc:
        # AttributeError: a section that is not a mapping; OverflowError: an infinite number (1e999)
        raise ModelLoadError(f"{where / META_FILE} lacks or garbles {exc}; re-save the model") from exc
    if not isinstance(expected_sha, str) or len(expected_sha) != 64:
        raise ModelLoadError(f"{where / META_FILE}: its field 'weights_sha256' is {expected_sha!r:.80}, not a sha256 in "
                             "hex; re-save the model or restore the folder from the registry")

    weights_path = where / _file_field(where, meta, "weights_file", WEIGHTS_FILE)
    try:
        weights = weights_path.read_bytes()
    except FileNotFoundError as exc:
        raise ModelLoadError(f"{weights_path} is missing; the model folder is incomplete") from exc
    except OSError as exc:  # a folder of that name, a file it may not read
        raise ModelLoadError(f"{weights_path} cannot be read ({exc}); restore the folder from the registry") from exc
    actual_sha = hashlib.sha256(weights).hexdigest()
    if actual_sha != expected_sha:
        raise ModelLoadError(
            f"{weights_path} does not match {META_FILE}: sha256 {actual_sha[:12]} != {expected_sha[:12]}; "
            "the weights were replaced or corrupted — restore the folder from the registry"
        )

    pre_path = where / _file_field(where, meta, "preprocessing_file", PREPROCESSING_FILE)
    try:
        pre_bytes = pre_path.read_bytes()
    except FileNotFoundError as exc:
        raise ModelLoadError(f"{pre_path} is missing; the model folder is incomplete") from exc
    except OSError as exc:
        raise ModelLoadError(f"{pre_path} cannot be read ({exc}); restore the folder from the registry") from exc
    # The checksum first: corrupt bytes are named as corrupt, not as whatever their parse trips on.
    if "preprocessing_sha256" in meta and hashlib.sha256(pre_bytes).hexdigest() != meta["preprocessing_sha256"]:
        raise ModelLoadError(f"{pre_path} does not match {META_FILE} (checksum); restore the folder from the registry")
    try:
        preprocessor = Preprocessor.from_json(pre_bytes.decode())
    except (PreprocessingError, UnicodeDecodeError) as exc:
        raise ModelLoadError(f"{pre_path}: {exc}") from exc
    if [preprocessor.vocab_sizes.get(c) for c in meta["categorical_columns"]] != vocab_sizes \
            or preprocessor.num_inputs != num_inputs:
        raise ModelLoadError(f"{pre_path} disagrees with {META_FILE} on vocabulary sizes or numeric width")

    try:  # the config parsed, but the module refuses it (a vocabulary size of 0 or less, a width it cannot take)
        model = workload.build_model(config, vocab_sizes, num_inputs)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise ModelLoadError(f"{where / META_FILE}: workload {name}'s module cannot be built from its config, "
                             f"vocabulary sizes and widths ({type(exc).__name__}: {exc}); re-save the model") from exc
    try:
        state = torch.load(io.BytesIO(weights), map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises several types for a bad pickle stream
        raise ModelLoadError(f"{weights_path} cannot be read by torch ({exc}); restore the folder") from exc
    if isinstance(state, dict) and not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        odd = next(k for k, v in state.items() if not (isinstance(k, str) and isinstance(v, torch.Tensor)))
        raise ModelLoadError(f"{weights_path} is not a state dict of tensors (its entry {odd!r:.60} is not a tensor: a "
                             "training checkpoint?); save the model with save_model")
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in state.items()} if isinstance(state, dict) else {}
    try:
        declared = {str(k): tuple(int(d) for d in v) for k, v in meta.get("parameters", {}).items()}
    except (AttributeError, TypeError, ValueError, OverflowError) as exc:
        raise ModelLoadError(f"{where / META_FILE}: its field 'parameters' is not a mapping of parameter name to shape "
                             f"({exc}); re-save the model") from exc
    if got != expected or (declared and declared != expected):
        missing = sorted(set(expected) - set(got))
        unexpected = sorted(set(got) - set(expected))
        wrong = sorted(k for k in set(expected) & set(got) if expected[k] != got[k])
        raise ModelLoadError(
            f"{weights_path} does not fit the model {META_FILE} describes: missing {missing}, unexpected "
            f"{unexpected}, wrong shape {wrong}; the weights belong to another model version"
        )
    model.load_state_dict(state)
    model.eval()
    calibrator = IDENTITY
    if meta.get("calibration") is not None:  # absent in folders saved before calibration existed
        try:
            calibrator = Calibrator.from_dict(meta["calibration"])
        except (CalibrationError, AttributeError) as exc:
            raise ModelLoadError(f"{where / META_FILE}: its calibration entry is unusable ({exc}); "
                                 "restore the folder from the registry or re-train") from exc
    return LoadedModel(model=model, config=config, preprocessor=preprocessor, meta=meta, directory=where,
                       workload=workload, calibrator=calibrator)
