"""The skew test's table comparison (tests/spark/test_online_skew.py) fails on a NaN or inf that the other side lacks.

It compared floats by ``|expected - actual| > atol``, which is False wherever a NaN is involved: online assembly
serving NaN where Spark wrote a value (in some rows, or a whole column such as ``temp``, which no model reads, so the
probability comparison does not catch it) passed, and so did inf against -inf.
"""

from __future__ import annotations

import math

import pyarrow as pa
import pytest

from tests.spark.test_online_skew import assert_tables_equal

NAN, INF = math.nan, math.inf


def table(*values: float | None) -> pa.Table:
    return pa.table({"temp": pa.array(values, pa.float64()), "origin": pa.array(["EWR"] * len(values))})


@pytest.mark.parametrize(("expected", "actual"), [
    ((1.0, 0.0, 2.0), (1.0, NAN, 2.0)),  # one row served as NaN where Spark wrote a value
    ((1.0, 0.0, 2.0), (NAN, NAN, NAN)),  # a whole column of NaN
    ((NAN, 0.0), (1.0, 0.0)),  # NaN on Spark's side only
    ((INF, 1.0), (-INF, 1.0)),
    ((INF, 1.0), (1.0, 1.0)),
    ((1.0, 2.0), (1.0, 2.0 + 1e-6)),  # beyond the tolerance
], ids=["one-nan", "all-nan", "nan-expected", "inf-vs-minus-inf", "inf-vs-number", "beyond-atol"])
def test_a_value_on_one_side_only_fails_naming_the_column_and_row(expected, actual):
    with pytest.raises(AssertionError) as caught:
        assert_tables_equal(table(*expected), table(*actual))
    message = str(caught.value)
    assert "'temp'" in message and "rows differ by more than" in message and "origin" not in message
    first_bad = next(i for i, (e, a) in enumerate(zip(expected, actual, strict=True)) if e != a or math.isnan(e))
    assert f"row {first_bad} " in message


@pytest.mark.parametrize("values", [(1.0, 0.0, 2.0), (NAN, NAN), (1.0, NAN, None), (INF, -INF, 3.0)],
                         ids=["equal", "nan-vs-nan", "nan-and-null", "same-infs"])
def test_the_same_values_pass(values):
    assert_tables_equal(table(*values), table(*values))
    assert_tables_equal(table(*values), table(*(v + 1e-12 if v is not None and math.isfinite(v) else v
                                                for v in values)))  # within the tolerance
