"""Feature preprocessing fit once on the training window and shipped with every model.

Categorical columns become integer codes (``0`` is the out-of-vocabulary / null index, so a carrier
or airport first seen at serving time still gets a prediction); numeric columns are standardised with
the training window's mean and standard deviation (clipped at ``CLIP_Z``), nulls are imputed to the mean (``0`` after
scaling) and flagged by an indicator column. A numeric column the training window held no spread of (one value, or
no finite value at all) is encoded at serving exactly as it was in training, whatever value comes (see
``Preprocessor.unlearnt``); so is a null in a column the training window never held a null in: imputed and not
flagged, as the network only ever saw that flag at 0 (see ``Preprocessor.never_missing``). The state is plain JSON so serving rebuilds it without
pandas or Spark, and it is never refit outside training.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

if TYPE_CHECKING:
    from tenfold.workloads import FeatureContract


PREPROCESSING_VERSION = 1
OOV_INDEX = 0
# Standardised values are clipped here: a value far outside the training window's range (a new
# aircraft type, a record storm) must not push an MLP into linear extrapolation.
CLIP_Z = 5.0
# Tables up to this many rows encode categoricals by dict look-ups in Python; larger ones with pc.index_in.
DICT_LOOKUP_MAX_ROWS = 256
# Why a numeric column taught the model nothing (Preprocessor.unlearnt): every value the window held was null or
# non-finite, or every finite one was the same.
NO_FINITE_VALUE = "no finite value"
ONE_VALUE = "one value"


class PreprocessingError(ValueError):
    """Input cannot be preprocessed (missing columns, unreadable state); the message says what to fix."""


def _as_table(data: pa.Table | Mapping[str, Sequence[Any]]) -> pa.Table:
    return data if isinstance(data, pa.Table) else pa.table(dict(data))


@dataclass
class Preprocessor:
    """Vocabularies and scaling statistics; :meth:`fit` on the training window, then :meth:`transform`."""

    categorical_columns: tuple[str, ...]
    numeric_columns: tuple[str, ...]
    vocabularies: dict[str, list[str]] = field(default_factory=dict)
    means: dict[str, float] = field(default_factory=dict)
    stds: dict[str, float] = field(default_factory=dict)
    fit_rows: int = 0
    # Numeric columns with no spread in the training window -> why (NO_FINITE_VALUE, ONE_VALUE). The network saw their
    # scaled value only as 0 (and, with no finite value, their null flag only as 1), so the weights on those inputs
    # never learnt: a real value at serving (a route's first flights, a new sensor) would go through untrained
    # weights and shift every prediction without an error. They are encoded as in training instead.
    unlearnt: dict[str, str] = field(default_factory=dict)
    # Numeric columns every training row held a finite value of. Their null flag was always 0 in training, so its
    # weights never learnt: a null at serving (a route missing from the lookups) would go through them (a shift of up
    # to 0.41 in a probability, measured). Such a null is encoded as the mean with the flag left at 0 instead, the
    # input the network knows. States saved before it was recorded have none, and flag every null as before.
    never_missing: tuple[str, ...] = ()
    # Built on first use from the fitted state above (which never changes after fit or load).
    _code_maps: dict[str, dict[str, int]] = field(default_factory=dict, init=False, repr=False, compare=False)
    # (means, stds, 0 for an unlearnt column else 1, True for a column of no finite value, True for a column never
    # missing in training), per numeric column
    _scale: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None = field(
        default=None, init=False, repr=False, compare=False)

    # --- fitting -------------------------------------------------------------------------------------
    @classmethod
    def fit(
        cls,
        table: pa.Table,
        contract: FeatureContract,
        *,
        min_count: int = 1,
    ) -> Preprocessor:
        """Fit the contract's model inputs on the training window only (holdout values map to OOV).

        The inputs are the feature columns less ``contract.not_model_inputs``; the state records them, so
        a model keeps the inputs it was trained on whatever the contract says later.
        """
        pre = cls(contract.model_categorical_columns, contract.model_numeric_columns)
        pre._require(table)
        if table.num_rows == 0:
            raise PreprocessingError("cannot fit preprocessing on an empty training window")
        for col in pre.categorical_columns:
            counts = pc.value_counts(pc.cast(table[col], pa.string())).to_pylist()
            values = sorted(c["values"] for c in counts if c["values"] is not None and c["counts"] >= min_count)
            pre.vocabularies[col] = values
        for col in pre.numeric_columns:
            arr = pc.cast(table[col], pa.float64()).to_numpy(zero_copy_only=False)
            finite = arr[np.isfinite(arr)]
            mean = float(finite.mean()) if finite.size else 0.0
            std = float(finite.std()) if finite.size else 1.0
            # One value by comparison, not by its std: the mean of a constant non-integer column is rounded, which
            # leaves a std above any absolute cutoff (10,007 rows of 6373.2 have a std of 1.8e-12, above the 1e-12 cutoff).
            one_value = finite.size > 0 and finite.min() == finite.max()
            pre.means[col] = mean
            pre.stds[col] = std if std > 1e-12 and not one_value else 1.0  # a constant column must not divide by zero
            if not finite.size:
                pre.unlearnt[col] = NO_FINITE_VALUE
            elif one_value or std <= 1e-12:
                pre.unlearnt[col] = ONE_VALUE
            if finite.size == arr.size:
                pre.never_missing += (col,)
        pre.fit_rows = table.num_rows
        return pre

    # --- applying ------------------------------------------------------------------------------------
    @property
    def vocab_sizes(self) -> dict[str, int]:
        """Embedding rows per column: the vocabulary plus the OOV index."""
        return {col: len(self.vocabularies[col]) + 1 for col in self.categorical_columns}

    @property
    def num_inputs(self) -> int:
        """Width of the numeric block: one scaled value and one null indicator per numeric column."""
        return 2 * len(self.numeric_columns)

    def _require(self, table: pa.Table) -> None:
        present = set(table.column_names)  # a new list on every access: build the set once (serving's hot path)
        missing = [c for c in (*self.categorical_columns, *self.numeric_columns) if c not in present]
        if missing:
            raise PreprocessingError(
                f"input lacks feature columns {missing}; it must follow the workload's feature contract "
                "(re-run the features job, or send every feature column)"
            )

    def encode_categoricals(self, table: pa.Table) -> np.ndarray:
        """``[rows, n_categorical]`` int64 codes; unseen values and nulls map to the OOV index 0."""
        self._require(table)
        return self._encode_categoricals(table)

    def encode_numerics(self, table: pa.Table) -> np.ndarray:
        """``[rows, 2 * n_numeric]`` float32: scaled values (nulls at the mean), then null indicators."""
        self._require(table)
        return self._encode_numerics(table)

    def transform(self, data: pa.Table | Mapping[str, Sequence[Any]]) -> tuple[np.ndarray, np.ndarray]:
        """Categorical codes and numeric block for a table (or a column -> values mapping)."""
        table = _as_table(data)
        self._require(table)
        return self._encode_categoricals(table), self._encode_numerics(table)

    def _encode_categoricals(self, table: pa.Table) -> np.ndarray:
        """A small table (a serving micro-batch) is looked up in a dict per column: ``pc.index_in`` hashes the
        whole vocabulary on every call (~17 us a column), which would dominate a batch of a few rows. String
        and integer columns only, whose text is the same in Python and in Arrow's cast; both paths give the
        same codes (``tests/unit/model/test_model_io.py``)."""
        out = np.zeros((table.num_rows, len(self.categorical_columns)), dtype=np.int64)
        small = table.num_rows <= DICT_LOOKUP_MAX_ROWS
        for j, col in enumerate(self.categorical_columns):
            column = table.column(col)
            kind = column.type
            text = pa.types.is_string(kind) or pa.types.is_large_string(kind)
            if small and (text or pa.types.is_integer(kind)):
                values = column.to_pylist()
                if not text:  # an integer's decimal text, as Arrow casts it; a null stays None, never a key
                    values = [None if v is None else str(v) for v in values]
                codes = self._codes(col)
                out[:, j] = [codes.get(v, 0) for v in values]
            else:
                vocab = pa.array(self.vocabularies[col], type=pa.string())
                idx = pc.index_in(pc.cast(column, pa.string()), value_set=vocab)
                out[:, j] = pc.fill_null(idx, -1).to_numpy(zero_copy_only=False).astype(np.int64) + 1
        return out

    def _encode_numerics(self, table: pa.Table) -> np.ndarray:
        """All numeric columns as one ``[rows, n]`` float64 block, scaled and clipped in one pass."""
        n = len(self.numeric_columns)
        raw = np.empty((table.num_rows, n), dtype=np.float64)
        for j, col in enumerate(self.numeric_columns):
            column = table.column(col)
            if pa.types.is_integer(column.type) or pa.types.is_floating(column.type):
                # Nulls come out as NaN: the same values as a cast to float64, in a few us instead of ~12.
                raw[:, j] = column.to_numpy()
            else:
                raw[:, j] = pc.cast(column, pa.float64()).to_numpy(zero_copy_only=False)
        scale = self._scale
        if scale is None:
            cols = self.numeric_columns
            scale = self._scale = (np.array([self.means[c] for c in cols], dtype=np.float64),
                                   np.array([self.stds[c] for c in cols], dtype=np.float64),
                                   np.array([0.0 if c in self.unlearnt else 1.0 for c in cols], dtype=np.float64),
                                   np.array([self.unlearnt.get(c) == NO_FINITE_VALUE for c in cols], dtype=bool),
                                   np.array([c in self.never_missing for c in cols], dtype=bool))
        missing = ~np.isfinite(raw)
        with np.errstate(invalid="ignore"):
            scaled = np.clip((raw - scale[0]) / scale[1], -CLIP_Z, CLIP_Z) * scale[2]
        scaled[missing] = 0.0
        missing |= scale[3]  # a column training only ever saw missing is missing here too
        missing &= ~scale[4]  # and one it never saw missing is not: imputed, as above, with the flag it learnt
        out = np.empty((table.num_rows, 2 * n), dtype=np.float32)
        out[:, :n] = scaled
        out[:, n:] = missing
        return out

    def _codes(self, col: str) -> dict[str, int]:
        """``value -> code`` of ``col``'s vocabulary (the first occurrence wins, as ``pc.index_in``), built once."""
        codes = self._code_maps.get(col)
        if codes is None:
            codes = {}
            for i, value in enumerate(self.vocabularies[col]):
                codes.setdefault(value, i + 1)
            self._code_maps[col] = codes
        return codes

    # --- persistence ---------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "version": PREPROCESSING_VERSION,
            "categorical_columns": list(self.categorical_columns),
            "numeric_columns": list(self.numeric_columns),
            "vocabularies": self.vocabularies,
            "means": self.means,
            "stds": self.stds,
            "fit_rows": self.fit_rows,
        }
        if self.unlearnt:  # absent otherwise: the state (and its digest) of every other model is as before
            body["unlearnt"] = dict(self.unlearnt)
        if self.never_missing:  # likewise: a state loaded from before it was recorded keeps its digest
            body["never_missing"] = list(self.never_missing)
        return body

    @classmethod
    def from_dict(cls, body: Mapping[str, Any]) -> Preprocessor:
        try:
            if body.get("version") != PREPROCESSING_VERSION:
                raise ValueError(f"unsupported preprocessing version {body.get('version')!r}")
            pre = cls(
                categorical_columns=tuple(body["categorical_columns"]),
                numeric_columns=tuple(body["numeric_columns"]),
                vocabularies={k: list(v) for k, v in body["vocabularies"].items()},
                means={k: float(v) for k, v in body["means"].items()},
                stds={k: float(v) for k, v in body["stds"].items()},
                fit_rows=int(body.get("fit_rows", 0)),
                # States saved before it was recorded: every column is scaled as it always was.
                unlearnt={str(k): str(v) for k, v in body.get("unlearnt", {}).items()},
                never_missing=tuple(body.get("never_missing", ())),
            )
        except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as exc:
            raise PreprocessingError(f"preprocessing state is unreadable ({exc}); re-train the model") from exc
        for col in pre.categorical_columns:
            if col not in pre.vocabularies:
                raise PreprocessingError(f"preprocessing state has no vocabulary for {col!r}; re-train the model")
        if odd := {c: why for c, why in pre.unlearnt.items()
                   if c not in pre.numeric_columns or why not in (NO_FINITE_VALUE, ONE_VALUE)}:
            raise PreprocessingError(f"preprocessing state's 'unlearnt' entries {odd} name no numeric column or no "
                                     f"reason it knows ({NO_FINITE_VALUE!r}, {ONE_VALUE!r}); re-train the model")
        if odd_cols := [c for c in pre.never_missing
                        if c not in pre.numeric_columns or pre.unlearnt.get(c) == NO_FINITE_VALUE]:
            raise PreprocessingError(f"preprocessing state's 'never_missing' entries {odd_cols} name no numeric column "
                                     "fit saw a value of; re-train the model")
        for col in pre.numeric_columns:
            if col not in pre.means or col not in pre.stds:
                raise PreprocessingError(f"preprocessing state has no statistics for {col!r}; re-train the model")
            # fit never writes these: a NaN mean, or a std of 0 (0/0 on a value at the mean), made every
            # probability NaN without an error, and a negative std flipped the feature's sign.
            if not math.isfinite(pre.means[col]) or not (math.isfinite(pre.stds[col]) and pre.stds[col] > 0):
                raise PreprocessingError(
                    f"preprocessing state's statistics for {col!r} are not usable (mean {pre.means[col]}, std "
                    f"{pre.stds[col]}: a finite mean and a positive std are needed); re-train the model")
        return pre

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Preprocessor:
        try:
            body = json.loads(text)
        except (ValueError, RecursionError) as exc:  # bad JSON, an integer of over 4,300 digits, or nesting too deep
            # for the parser: whoever reads a state (load_model, a training rank) refuses it, never a traceback
            raise PreprocessingError(f"preprocessing state is not JSON ({exc}); re-train the model") from exc
        return cls.from_dict(body)

    @property
    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:16]
