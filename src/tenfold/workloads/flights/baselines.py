"""The flights workload's own baseline: the historical delay rate of the flight's route and carrier.

:class:`RateBaseline` smooths each (origin, dest, carrier) rate towards coarser groups (route, carrier,
overall) so rare routes do not get 0 or 1. The platform adds its generic gradient-boosting baseline.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pyarrow as pa

from tenfold.workloads.flights.contract import CONTRACT

# Finest first: a row's rate is its (origin, dest, carrier) rate shrunk towards its route's rate, which
# is shrunk towards the carrier's, then the overall rate.
RATE_LEVELS: tuple[tuple[str, ...], ...] = (("carrier",), ("origin", "dest"), ("origin", "dest", "carrier"))


@dataclass
class RateBaseline:
    label: str = CONTRACT.label
    name: str = "rate baseline"
    prior_strength: float = 20.0
    overall: float = 0.0
    tables: list[pd.DataFrame] = field(default_factory=list)

    def fit(self, table: pa.Table) -> RateBaseline:
        df = table.select([*{c for lv in RATE_LEVELS for c in lv}, self.label]).to_pandas()
        self.overall = float(df[self.label].mean())
        self.tables = [
            df.groupby(list(level), observed=True)[self.label].agg(["sum", "count"]).reset_index()
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
