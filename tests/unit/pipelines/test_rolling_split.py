from __future__ import annotations

import pytest

from tenfold.data.lake import Partition, month_range
from tenfold.pipelines.train_model import PipelineError, rolling_split


def labels(parts):
    return [p.label for p in parts]


def test_full_year_gives_the_reference_split():
    train, holdout = rolling_split(month_range("2013-01", "2013-12"), train_window=9, holdout_window=3)
    assert labels(train) == labels(month_range("2013-01", "2013-09"))
    assert labels(holdout) == ["2013-10", "2013-11", "2013-12"]


def test_few_months_hold_out_the_newest_one():
    train, holdout = rolling_split(month_range("2013-01", "2013-04"), train_window=9, holdout_window=3)
    assert labels(train) == ["2013-01", "2013-02", "2013-03"]
    assert labels(holdout) == ["2013-04"]


def test_training_window_is_capped_and_rolls_forward():
    train, holdout = rolling_split(month_range("2013-01", "2014-06"), train_window=9, holdout_window=3)
    assert labels(holdout) == ["2014-04", "2014-05", "2014-06"]
    assert labels(train) == labels(month_range("2013-07", "2014-03"))
    assert max(train) < min(holdout)


def test_only_the_newest_unbroken_run_is_used():
    published = [*month_range("2013-01", "2013-03"), *month_range("2013-06", "2013-09")]
    train, holdout = rolling_split(published, train_window=9, holdout_window=3)
    assert labels(train) + labels(holdout) == labels(month_range("2013-06", "2013-09"))


@pytest.mark.parametrize("published", [[], [Partition(2013, 5)]])
def test_too_little_data_is_a_clear_error(published):
    with pytest.raises(PipelineError, match="at least two consecutive published"):
        rolling_split(published, train_window=9, holdout_window=3)
