"""The baselines every model is judged next to, fit on the same training window.

:class:`GradientBoostingBaseline` serves every workload: scikit-learn's ``HistGradientBoostingClassifier``
on the columns of the preprocessing it is given (categorical codes from its fitted vocabularies, raw numerics
with their nulls, which it handles natively); ``evaluate_with_baselines`` gives it every numeric feature
column, the ones the network is not fed too. A workload adds its own (``Workload.baselines``; flights:
the historical route/carrier delay rate).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
from threadpoolctl import threadpool_limits

from tenfold.model.preprocessing import Preprocessor

# The most values scikit-learn's HistGradientBoostingClassifier bins as one categorical feature (max_bins).
MAX_CATEGORIES = 255


@dataclass
class GradientBoostingBaseline:
    preprocessor: Preprocessor
    label: str
    name: str = "gradient boosting"
    max_iter: int = 200
    seed: int = 0
    # OpenMP threads; on a shared, oversubscribed machine spinning OpenMP threads slow it down
    # several-fold, so one thread unless asked.
    threads: int = 1

    # Columns with no value at all in the training window (e.g. history roll-ups of a window that starts
    # the data): scikit-learn cannot bin them, so they are a constant 0, which carries the same nothing.
    _empty: np.ndarray | None = None

    def _features(self, table: pa.Table) -> np.ndarray:
        cat = self.preprocessor.encode_categoricals(table).astype(np.float64)
        num = np.empty((table.num_rows, 0)) if not self.preprocessor.numeric_columns else np.column_stack([
            table[c].to_numpy(zero_copy_only=False).astype(np.float64) for c in self.preprocessor.numeric_columns
        ])
        x = np.hstack([cat, num])
        if self._empty is None:
            self._empty = ~np.isfinite(x).any(axis=0)
        x[:, self._empty] = 0.0
        return x

    def fit(self, table: pa.Table) -> GradientBoostingBaseline:
        from sklearn.ensemble import HistGradientBoostingClassifier

        # scikit-learn bins a categorical feature of at most MAX_CATEGORIES values (its codes, OOV 0 included);
        # a wider one (user or product ids) goes in as its code, an ordinal the trees still split on.
        pre = self.preprocessor
        mask = [pre.vocab_sizes[c] <= MAX_CATEGORIES for c in pre.categorical_columns]
        mask += [False] * len(pre.numeric_columns)
        self.model = HistGradientBoostingClassifier(
            max_iter=self.max_iter, learning_rate=0.1, categorical_features=mask, random_state=self.seed
        )
        y = table[self.label].to_numpy(zero_copy_only=False).astype(np.int64)
        self._empty = None  # decided by the training window
        with threadpool_limits(self.threads):
            self.model.fit(self._features(table), y)
        return self

    def predict_proba(self, table: pa.Table) -> np.ndarray:
        with threadpool_limits(self.threads):
            return np.asarray(self.model.predict_proba(self._features(table))[:, 1], dtype=np.float64)
