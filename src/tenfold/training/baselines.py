"""The two baselines every model is judged next to, fit on the same training window.

1. :class:`RateBaseline`: the historical delay rate of the flight's route and carrier, smoothed
   towards coarser groups (route, carrier, overall) so rare routes do not get 0 or 1.
2. :class:`GradientBoostingBaseline`: scikit-learn's ``HistGradientBoostingClassifier`` on the same
   features as the network (categorical codes from the same fitted vocabularies, raw numerics with
   their nulls, which it handles natively).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pyarrow as pa
from threadpoolctl import threadpool_limits

from tenfold.features import schema
from tenfold.model.preprocessing import Preprocessor

# Finest first: a row's rate is its (origin, dest, carrier) rate shrunk towards its route's rate, which
# is shrunk towards the carrier's, then the overall rate.
RATE_LEVELS: tuple[tuple[str, ...], ...] = (("carrier",), ("origin", "dest"), ("origin", "dest", "carrier"))


@dataclass
class RateBaseline:
    name: str = "rate baseline"
    prior_strength: float = 20.0
    overall: float = 0.0
    tables: list[pd.DataFrame] = field(default_factory=list)

    def fit(self, table: pa.Table) -> RateBaseline:
        df = table.select([*{c for lv in RATE_LEVELS for c in lv}, schema.LABEL]).to_pandas()
        self.overall = float(df[schema.LABEL].mean())
        self.tables = [
            df.groupby(list(level), observed=True)[schema.LABEL].agg(["sum", "count"]).reset_index()
            for level in RATE_LEVELS
        ]
        return self

    def predict_proba(self, table: pa.Table) -> np.ndarray:
        df = table.select(list({c for lv in RATE_LEVELS for c in lv})).to_pandas()
        rate = np.full(len(df), self.overall)
        m = self.prior_strength
        for level, stats in zip(RATE_LEVELS, self.tables, strict=True):
            joined = df[list(level)].merge(stats, on=list(level), how="left")
            s = joined["sum"].fillna(0).to_numpy(dtype=np.float64)
            n = joined["count"].fillna(0).to_numpy(dtype=np.float64)
            rate = (s + m * rate) / (n + m)
        return rate


@dataclass
class GradientBoostingBaseline:
    preprocessor: Preprocessor
    name: str = "gradient boosting"
    max_iter: int = 200
    seed: int = 0
    # OpenMP threads; on a shared, oversubscribed machine spinning OpenMP threads slow it down
    # several-fold, so one thread unless asked.
    threads: int = 1

    def _features(self, table: pa.Table) -> np.ndarray:
        cat = self.preprocessor.encode_categoricals(table).astype(np.float64)
        num = np.column_stack([
            table[c].to_numpy(zero_copy_only=False).astype(np.float64) for c in self.preprocessor.numeric_columns
        ])
        return np.hstack([cat, num])

    def fit(self, table: pa.Table) -> GradientBoostingBaseline:
        from sklearn.ensemble import HistGradientBoostingClassifier

        n_cat = len(self.preprocessor.categorical_columns)
        mask = [True] * n_cat + [False] * len(self.preprocessor.numeric_columns)
        self.model = HistGradientBoostingClassifier(
            max_iter=self.max_iter, learning_rate=0.1, categorical_features=mask, random_state=self.seed
        )
        y = table[schema.LABEL].to_numpy(zero_copy_only=False).astype(np.int64)
        with threadpool_limits(self.threads):
            self.model.fit(self._features(table), y)
        return self

    def predict_proba(self, table: pa.Table) -> np.ndarray:
        with threadpool_limits(self.threads):
            return np.asarray(self.model.predict_proba(self._features(table))[:, 1], dtype=np.float64)
