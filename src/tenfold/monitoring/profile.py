"""The reference profile: what the drift monitor compares each new partition with, computed once at training.

:func:`build_profile` summarises the training window of a model, per feature of the workload's contract:

* numeric: the interior cut points of the reference deciles (``settings.monitoring.drift.bins``; ties
  merge bins, so a feature with few values gets fewer), plus a bin below the reference's minimum (empty
  in the reference: values moving below everything seen in training land there, where the lowest decile
  would otherwise absorb them) and, when a tenth of the rows or more sit at the maximum, a bin of the maximum
  alone (a flag mostly 1 would otherwise share one bin with everything below it), the count in each bin and of
  nulls, and a seeded sample of the values
  (``ks_sample_rows``) for the KS test;
* categorical: the count of each category and of nulls;

and the same numeric summary of the model's predictions on (a seeded sample of) that window. The
profile is saved as :data:`~tenfold.model_files.REFERENCE_PROFILE_FILE` in the model folder before it
is registered, so it is one of the version's hash-verified files: monitoring a partition needs only the
version and the partition, never the training data again.

The JSON is deterministic (sorted keys, values rounded to 9 significant digits): registering the same
model twice writes the same bytes, so a retried register finds the same content-addressed version. Numeric values
are binned rounded the same way (the training window's and each month's), so each sits on its own side of the stored
cut points (format 3; older profiles, whose counts were made from raw values, bin raw values).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tenfold.fsio import atomic_write
from tenfold.model_files import REFERENCE_PROFILE_FILE

# 2: numeric profiles have the bin below the reference's minimum (``low``).
# 3: numeric values are binned as stored (rounded to ``_DIGITS``, :func:`round_as_stored`), in the profile and each month.
PROFILE_FORMAT = 3
_READABLE_FORMATS = (1, 2, PROFILE_FORMAT)
_BINNED_AS_STORED = 3  # the first format whose counts were made from rounded values
PREDICTION = "prediction"  # the name the prediction distribution goes by in profiles and reports
_DIGITS = 9


class ProfileError(ValueError):
    """A profile cannot be built or read; the message says what is wrong and what to do."""


def _round(x: float) -> float:
    return float(f"{x:.{_DIGITS}g}")


def round_as_stored(values: np.ndarray) -> np.ndarray:
    """``values`` rounded as a profile stores its numbers (``_DIGITS`` significant digits): compare a month's raw
    values with a profile's KS sample only after this, or a repeated value that 9 digits cannot hold (1/3, a
    per-group rate) sits on one side of its own stored copy and an unchanged distribution reads as drift."""
    if values.size == 0:
        return values.astype(np.float64)
    distinct, inverse = np.unique(values, return_inverse=True)
    return np.array([_round(float(v)) for v in distinct], dtype=np.float64)[inverse.reshape(values.shape)]


def numeric_values(column: Any) -> tuple[np.ndarray, int]:
    """The non-null values of an Arrow column (or array-like) as float64, and how many were null (NaN counts as null)."""
    raw = column.to_numpy(zero_copy_only=False) if hasattr(column, "to_numpy") else column
    arr = np.asarray(raw, dtype=np.float64)  # Arrow nulls come back as NaN
    nan = np.isnan(arr)
    return arr[~nan], int(nan.sum())


def category_values(column: Any) -> tuple[list[str], int]:
    """The non-null values of a column as strings (categories compare as text), and the null count."""
    values = column.to_pylist() if hasattr(column, "to_pylist") else list(column)
    present = [str(v) for v in values if v is not None]
    return present, len(values) - len(present)


@dataclass(frozen=True)
class NumericProfile:
    """A numeric distribution: bins right-closed at ``edges`` (``len(edges) + 1`` bins), their counts, nulls.

    With ``low`` (the reference's minimum), values below it have a bin of their own, first: then ``counts``
    has ``len(edges) + 2`` entries. Profiles of format 1 have no ``low``.

    ``binned_as_stored``: values are rounded as the profile stores its numbers before they are binned (format 3 on).
    The edges and ``low`` are stored rounded, so a raw value that 9 digits cannot hold (1/3, a float32 0.95) sat on
    the wrong side of its own edge: distinct values shared a bin, and the reference's minimum or maximum filled the
    bins kept empty for values beyond them, so a shift between them read as a PSI of 0. Profiles of older formats
    keep binning raw values, as their stored counts were made (rounding only the month would read as drift).
    """

    edges: tuple[float, ...]
    counts: tuple[int, ...]
    nulls: int
    mean: float | None
    std: float | None
    sample: tuple[float, ...] = ()
    low: float | None = None
    binned_as_stored: bool = True

    @property
    def rows(self) -> int:
        return sum(self.counts) + self.nulls

    def bin_counts(self, values: np.ndarray) -> np.ndarray:
        """How many of ``values`` (non-null) fall in each of this profile's bins."""
        if self.binned_as_stored:
            values = round_as_stored(np.asarray(values, dtype=np.float64))
        index = np.searchsorted(np.asarray(self.edges, dtype=np.float64), values, side="left")
        if self.low is None:
            return np.bincount(index, minlength=len(self.edges) + 1)
        return np.bincount(np.where(values < self.low, 0, index + 1), minlength=len(self.edges) + 2)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "numeric", "edges": list(self.edges), "counts": list(self.counts), "nulls": self.nulls,
                "mean": self.mean, "std": self.std, "sample": list(self.sample), "low": self.low}

    @classmethod
    def from_dict(cls, body: Mapping[str, Any], *, profile_format: int = PROFILE_FORMAT) -> NumericProfile:
        """The profile ``to_dict`` wrote, in a reference profile of ``profile_format`` (which says how values are binned)."""
        return cls(edges=tuple(float(e) for e in body["edges"]), counts=tuple(int(c) for c in body["counts"]),
                   nulls=int(body["nulls"]), mean=body.get("mean"), std=body.get("std"),
                   sample=tuple(float(v) for v in body.get("sample", ())),
                   low=None if body.get("low") is None else float(body["low"]),
                   binned_as_stored=profile_format >= _BINNED_AS_STORED)


@dataclass(frozen=True)
class CategoricalProfile:
    """A categorical distribution: the count of each category (as text) and of nulls."""

    counts: Mapping[str, int]
    nulls: int

    @property
    def rows(self) -> int:
        return sum(self.counts.values()) + self.nulls

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "categorical", "counts": dict(sorted(self.counts.items())), "nulls": self.nulls}

    @classmethod
    def from_dict(cls, body: Mapping[str, Any]) -> CategoricalProfile:
        return cls(counts={str(k): int(v) for k, v in body["counts"].items()}, nulls=int(body["nulls"]))


FeatureProfile = NumericProfile | CategoricalProfile


def numeric_profile(values: Any, *, bins: int = 10, sample_rows: int = 1000, seed: int = 0) -> NumericProfile:
    """Profile one numeric column: the decile cut points of its non-null values, bin counts, a KS sample."""
    data, nulls = numeric_values(values)
    if data.size == 0:
        return NumericProfile(edges=(), counts=(0,), nulls=nulls, mean=None, std=None)
    # Edges are observed values (not interpolated between them), so a discrete feature gets no empty bins.
    qs = np.quantile(data, np.linspace(0, 1, bins + 1)[1:-1], method="inverted_cdf")
    edges = tuple(dict.fromkeys(_round(q) for q in qs))  # ties (a discrete feature) merge bins
    top = _round(float(data.max()))
    if edges and edges[-1] >= top and (below := data[data < data.max()]).size:
        # A tenth of the rows or more at the maximum (a flag mostly 1, a capped reading, a rating mostly 5) made the
        # top edges the maximum itself: everything from the last lower cut up to it shared one bin, and a shift of
        # the mix inside it (95 % ones becoming 50 %) had a PSI of 0, never drift. The maximum gets a bin of its own.
        cut = _round(float(below.max()))
        if cut < top and (len(edges) < 2 or cut > edges[-2]):
            edges = (*edges[:-1], cut, edges[-1])
    profile = NumericProfile(edges=edges, counts=(), nulls=nulls, mean=_round(float(data.mean())),
                             std=_round(float(data.std())), low=_round(float(data.min())))
    counts = tuple(int(c) for c in profile.bin_counts(data))
    rng = np.random.default_rng(seed)
    sample = data if data.size <= sample_rows else data[np.sort(rng.choice(data.size, sample_rows, replace=False))]
    return NumericProfile(edges=edges, counts=counts, nulls=nulls, mean=profile.mean, std=profile.std,
                          sample=tuple(_round(float(v)) for v in sample), low=profile.low)


def categorical_profile(values: Any) -> CategoricalProfile:
    """Profile one categorical column: each category's count and the null count."""
    present, nulls = category_values(values)
    return CategoricalProfile(counts=dict(Counter(present)), nulls=nulls)


@dataclass(frozen=True)
class ReferenceProfile:
    """The reference distributions of one model version's training window (see the module docstring)."""

    rows: int
    months: tuple[str, ...]
    features: Mapping[str, FeatureProfile]
    prediction: NumericProfile | None = None
    # The rows of the training window the prediction profile was scored on (a seeded sample).
    prediction_rows: int = 0
    bins: int = 10
    format: int = PROFILE_FORMAT
    extra: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": self.format, "rows": self.rows, "months": list(self.months), "bins": self.bins,
            "features": {name: p.to_dict() for name, p in self.features.items()},
            "prediction": self.prediction.to_dict() if self.prediction else None,
            "prediction_rows": self.prediction_rows, "extra": dict(self.extra),
        }

    def to_json(self) -> bytes:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def from_dict(cls, body: Mapping[str, Any]) -> ReferenceProfile:
        if body.get("format") not in _READABLE_FORMATS:
            raise ProfileError(f"reference profile format {body.get('format')!r} is not one of {_READABLE_FORMATS}: "
                               "this code cannot read it; upgrade tenfold or retrain the model")
        fmt = int(body["format"])
        features: dict[str, FeatureProfile] = {}
        for name, f in body["features"].items():
            features[name] = (NumericProfile.from_dict(f, profile_format=fmt) if f["kind"] == "numeric"
                              else CategoricalProfile.from_dict(f))
        prediction = NumericProfile.from_dict(body["prediction"], profile_format=fmt) if body.get("prediction") else None
        return cls(rows=int(body["rows"]), months=tuple(body["months"]), features=features, prediction=prediction,
                   prediction_rows=int(body.get("prediction_rows", 0)), bins=int(body.get("bins", 10)),
                   format=fmt, extra=dict(body.get("extra", {})))

    def save(self, model_dir: str | Path) -> Path:
        """Write the profile into a model folder (atomically) as :data:`REFERENCE_PROFILE_FILE`."""
        path = Path(model_dir) / REFERENCE_PROFILE_FILE
        atomic_write(path, self.to_json())
        return path

    @classmethod
    def load(cls, model_dir: str | Path) -> ReferenceProfile | None:
        """The profile saved in a model folder, or None when the folder has none (a version registered
        before profiles existed)."""
        path = Path(model_dir) / REFERENCE_PROFILE_FILE
        if not path.is_file():
            return None
        try:
            body = json.loads(path.read_bytes())
        except ValueError as exc:  # JSONDecodeError, and UnicodeDecodeError for bytes that are not UTF-8 at all
            raise ProfileError(f"{path} is not valid JSON ({exc}): the model folder is corrupt") from exc
        try:
            return cls.from_dict(body)
        except ProfileError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError) as exc:  # a field missing or of the wrong type
            raise ProfileError(
                f"{path} is not a readable reference profile ({type(exc).__name__}: {exc}): the model folder is "
                "corrupt; register a retrained model, or monitor another version (the run conf's version)"
            ) from exc


def build_profile(table: Any, *, categorical: Sequence[str], numeric: Sequence[str], months: Iterable[str],
                  predictions: np.ndarray | None = None, bins: int = 10, sample_rows: int = 1000,
                  extra: Mapping[str, Any] | None = None) -> ReferenceProfile:
    """The reference profile of ``table`` (an Arrow table holding the named columns) and the model's
    ``predictions`` on (a sample of) it."""
    missing = [c for c in (*categorical, *numeric) if c not in table.column_names]
    if missing:
        raise ProfileError(f"the training window lacks the contract's columns {missing}: rebuild its features")
    features: dict[str, FeatureProfile] = {}
    for name in categorical:
        features[name] = categorical_profile(table[name])
    for i, name in enumerate(numeric):
        features[name] = numeric_profile(table[name], bins=bins, sample_rows=sample_rows, seed=i)
    prediction = None
    if predictions is not None:
        prediction = numeric_profile(np.asarray(predictions, dtype=np.float64), bins=bins, sample_rows=sample_rows,
                                     seed=len(numeric))
    return ReferenceProfile(rows=int(table.num_rows), months=tuple(months), features=features, prediction=prediction,
                            prediction_rows=0 if predictions is None else len(predictions), bins=bins,
                            extra=dict(extra or {}))


def sample_indices(rows: int, limit: int, seed: int = 0) -> np.ndarray:
    """A seeded, sorted choice of at most ``limit`` of ``rows`` row indices (all of them when fewer)."""
    if rows <= limit:
        return np.arange(rows)
    return np.sort(np.random.default_rng(seed).choice(rows, limit, replace=False))



def profile_training_window(model_dir: str | Path, lake: Any, table: str, parts: Sequence[Any], *, bins: int = 10,
                            sample_rows: int = 1000, prediction_rows: int = 50_000,
                            digest: str | None = None) -> ReferenceProfile:
    """The reference profile of the model in ``model_dir`` over its training window ``parts`` of ``table``.

    Reads the window's feature columns once and scores a seeded sample of at most ``prediction_rows`` of
    its rows with the model (the reference prediction distribution); with ``digest`` (the content the model was
    trained on, ``Lake.content_digest``) a window re-published since is refused, not profiled. Called at training
    time only. The
    ``extra`` records the feature definitions' version (``features_version``, which ``read_features`` checked
    the window was built by): after a bump, a month of the new definition is not compared with this profile.
    """
    from tenfold.model.io import load_model
    from tenfold.training.data import read_features
    from tenfold.workloads import VERSION_KEY

    loaded = load_model(model_dir)
    contract = loaded.workload.contract
    data = read_features(lake, list(parts), contract=contract, table=table, columns=contract.feature_columns,
                         digest=digest)
    scored = data.take(sample_indices(data.num_rows, prediction_rows)) if data.num_rows > prediction_rows else data
    predictions = loaded.predict_proba(scored)
    return build_profile(data, categorical=contract.categorical_columns, numeric=contract.numeric_columns,
                         months=[p.label for p in parts], predictions=predictions, bins=bins, sample_rows=sample_rows,
                         extra={"table": table, "workload": loaded.workload.name, VERSION_KEY: contract.version})


def ensure_profile(model_dir: str | Path, lake: Any, table: str, parts: Sequence[Any], drift: Any, *,
                   digest: str | None = None) -> ReferenceProfile:
    """The profile in ``model_dir``, computed and saved there first when it has none (train_model's register).

    A retried register finds the file its first attempt wrote and keeps those exact bytes, so the version's
    content (and so its id) is the same whatever the retry. ``drift`` is ``settings.monitoring.drift``.
    """
    existing = ReferenceProfile.load(model_dir)
    if existing is not None:
        return existing
    profile = profile_training_window(model_dir, lake, table, parts, bins=drift.bins, sample_rows=drift.ks_sample_rows,
                                      prediction_rows=drift.prediction_rows, digest=digest)
    profile.save(model_dir)
    return profile
