"""online_metrics and labelled_rows over a joined lake: windows, groups and values worked out by hand."""

from __future__ import annotations

import datetime as dt
import math

import pytest

from tenfold.data.lake import Partition
from tenfold.feedback.metrics import flatten_requests, labelled_lineage, labelled_rows, online_metrics
from tenfold.feedback.upsert import join

from .conftest import T0, feedback, prediction

H = dt.timedelta(hours=1)


@pytest.fixture
def served(settings, logs):
    """v1 on stable and v2 on canary inside [T0, T0+2h); one v1 row outside the window."""
    logs.predictions(
        prediction("s1", version="v1", p=0.9), prediction("s2", version="v1", p=0.6, at=T0 + H),
        prediction("s3", version="v1", p=0.3, at=T0 + H), prediction("s4", version="v1", p=0.2, at=T0 + H),
        prediction("c1", version="v2", arm="canary", p=0.7), prediction("c2", version="v2", arm="canary", p=0.4),
        prediction("c3", version="v2", arm="canary", p=0.8),  # no feedback: served, not labelled
        prediction("old", version="v1", p=0.99, at=T0 - dt.timedelta(days=40)),  # April, outside the window
    )
    logs.feedback(feedback("s1", 1), feedback("s2", 0), feedback("s3", 1), feedback("s4", 0),
                  feedback("c1", 1), feedback("c2", 1), feedback("old", 0))
    join(settings)
    return settings


def test_online_metrics_per_version_and_arm_by_hand(served):
    got = {(g.group["model_version"], g.group["arm"]): g for g in online_metrics(served, T0, T0 + 2 * H)}
    assert sorted(got) == [("v1", "stable"), ("v2", "canary")]
    v1 = got["v1", "stable"]
    # The same four as test_metrics' worked example: p .9 .6 .3 .2 for 1 0 1 0.
    assert (v1.served, v1.metrics.count, v1.metrics.positives, v1.coverage) == (4, 4, 2, 1.0)
    assert v1.metrics.accuracy == 0.5 and v1.metrics.brier == pytest.approx(0.225) and v1.metrics.auc == 0.75
    v2 = got["v2", "canary"]
    # c1 .7 -> 1 right, c2 .4 -> 1 wrong; c3 has no outcome yet. One class only: no AUC.
    assert (v2.served, v2.metrics.count, v2.metrics.positives) == (3, 2, 2)
    assert v2.coverage == pytest.approx(2 / 3) and v2.metrics.accuracy == 0.5 and v2.metrics.auc is None
    assert v2.metrics.log_loss == pytest.approx(-(math.log(0.7) + math.log(0.4)) / 2)
    assert v2.metrics.brier == pytest.approx((0.3**2 + 0.6**2) / 2)


def test_the_window_is_half_open_on_served_at(served):
    [v1] = [g for g in online_metrics(served, T0 + H, T0 + 2 * H) if g.group["arm"] == "stable"]
    assert v1.served == 3  # s1 (served at T0) is before the window
    assert [g.served for g in online_metrics(served, T0, T0 + H, by=["arm"])] == [3, 1]  # canary c1-c3, stable s1
    assert online_metrics(served, T0 + 3 * H, T0 + 4 * H) == []  # nothing served then: no data, not an error


def test_unknown_grouping_is_a_clear_error(served):
    with pytest.raises(ValueError, match="cannot group online metrics by color: use any of model_version"):
        online_metrics(served, by=["color"])


def test_labelled_rows_for_retraining(served):
    everything = labelled_rows(served)
    assert sorted(everything["prediction_id"].to_pylist()) == ["c1", "c2", "old", "s1", "s2", "s3", "s4"]
    may = labelled_rows(served, months=[Partition(2026, 5)], include_unlabelled=True)
    assert may.num_rows == 7 and may["outcome"].null_count == 1
    requests = flatten_requests(may)
    assert requests.num_rows == 7 and requests["origin"].to_pylist() == ["EWR"] * 7
    lineage = labelled_lineage(served, [Partition(2026, 4), Partition(2026, 5), Partition(2026, 9)])
    assert sorted(lineage) == ["2026-04", "2026-05"] and lineage["2026-05"]["rows"] == 7
    assert lineage["2026-05"]["data_dir"].startswith("data-")


def test_flattened_requests_keep_a_field_only_later_requests_have() -> None:
    """Columns came from the first row alone: a field a request model gained vanished from every row whenever an
    older request sorted first (by its random prediction id)."""
    import pyarrow as pa

    rows = pa.table({"request": ['{"origin": "EWR"}', '{"origin": "JFK", "gate": "B2"}']})
    flat = flatten_requests(rows)
    assert flat.column_names == ["origin", "gate"]
    assert flat.to_pylist() == [{"origin": "EWR", "gate": None}, {"origin": "JFK", "gate": "B2"}]


def test_nothing_joined_yet_reads_as_empty(settings):
    assert labelled_rows(settings).num_rows == 0
    assert online_metrics(settings, T0, T0 + H) == []


def test_refresh_runs_the_join_first(settings, logs):
    """Without a window (what `tenfold feedback metrics` with no --since runs): the join publishes the month first.
    The test asked for a window, which joins in memory and publishes nothing: the join itself went untested."""
    logs.predictions(prediction("r", p=0.8))
    logs.feedback(feedback("r", 1))
    assert online_metrics(settings) == []
    [g] = online_metrics(settings, refresh=True)
    assert g.metrics.count == 1 and g.metrics.accuracy == 1.0
    assert labelled_rows(settings).num_rows == 1  # published by that refresh: read back without one


def test_refresh_over_a_window_joins_the_recent_log_files_as_the_published_join_does(settings, logs):
    # What the canary analysis reads every check: the window's rows, joined in memory from the files landed
    # since the window opened, the same as the join publishes them (duplicates, corrections, late feedback).
    logs.predictions(prediction("a", p=0.9), prediction("b", p=0.2, at=T0 + H), prediction("c", arm="canary", p=0.7),
                     prediction("edge", p=0.6, at=T0 + 2 * H))  # served at `until`: outside the half-open window
    logs.predictions(prediction("a", p=0.9))  # a redelivery, in a second file
    logs.feedback(feedback("a", 0), feedback("b", 0), feedback("edge", 1))
    logs.feedback(feedback("a", 1, observed=T0 + 4 * H), feedback("b", 0))  # a correction and a duplicate
    logs.predictions(prediction("late", p=0.4, at=T0 + H))
    logs.feedback(feedback("late", 1))
    window = {"since": T0, "until": T0 + 2 * H, "include_unlabelled": True}
    fresh = labelled_rows(settings, **window, refresh=True)
    assert labelled_rows(settings, **window).num_rows == 0  # nothing was published by it
    join(settings)
    published = labelled_rows(settings, **window)
    assert fresh.sort_by("prediction_id").equals(published.sort_by("prediction_id"))
    assert fresh.sort_by("prediction_id")["prediction_id"].to_pylist() == ["a", "b", "c", "late"]
    assert dict(zip(fresh["prediction_id"].to_pylist(), fresh["outcome"].to_pylist(), strict=True)) == \
        {"a": 1, "b": 0, "c": None, "late": 1}


def test_refresh_over_a_window_skips_files_that_landed_before_it(settings, logs):
    from tenfold.feedback.log import landed_at, write_batch

    from .conftest import prediction_log

    logs.predictions(prediction("new", p=0.8))
    logs.feedback(feedback("new", 1))
    # A file whose name says it landed a day before the window (a probe: no real prediction served in the
    # window lands before it) is not read by the window's join, and is by the full one.
    lake = logs.lake
    path = write_batch(lake, settings.storage.predictions_table, Partition(2026, 5),
                       prediction_log([prediction("probe", p=0.1)]), now=T0 - dt.timedelta(days=1))
    assert landed_at(path.rsplit("/", 1)[1]) == T0 - dt.timedelta(days=1)
    assert landed_at("log-notatime-1234.parquet") is None
    window = {"since": T0, "until": T0 + H, "include_unlabelled": True}
    assert labelled_rows(settings, **window, refresh=True)["prediction_id"].to_pylist() == ["new"]
    join(settings)
    assert sorted(labelled_rows(settings, **window)["prediction_id"].to_pylist()) == ["new", "probe"]


def test_the_training_set_ranks_a_flights_rows_on_one_clock(settings, logs):
    """feedback_training_set keeps one row per flight, ranked as the join ranks a prediction's feedback: a flight asked
    twice, reported delayed without observed_at (received 11:00) and then on time, observed at 10:30 and received at
    12:00, trained as delayed, the server's receipt clock compared with the client's observation. Another flight, all
    of whose rows carry observed_at, keeps the latest observation though it was received first."""
    from tenfold.data.lake import Lake
    from tenfold.feedback.training import feedback_training_set
    from tenfold.messaging.records import PredictionRecord
    from tenfold.workloads.flights.synthetic import publish_synthetic_lookups, synthetic_requests

    jan = Partition(2032, 1)
    publish_synthetic_lookups(Lake.from_settings(settings), [jan], prefix=settings.storage.lookups_table)
    a, b = synthetic_requests(jan, 2, seed=9)
    asked = {"a1": a, "a2": {**a, "user_key": "another"}, "b1": b, "b2": {**b, "user_key": "another"}}
    logs.predictions(*(PredictionRecord(prediction_id=pid, model_version="v1", arm="stable", probability=0.5,
                                        request=body, served_at=T0) for pid, body in asked.items()))
    logs.feedback(feedback("a1", 1, received=T0 + H), feedback("a2", 0, observed=T0 + H / 2, received=T0 + 2 * H),
                  feedback("b1", 1, observed=T0 + 3 * H, received=T0 + H),
                  feedback("b2", 0, observed=T0 + 2 * H, received=T0 + 4 * H))
    join(settings)
    got = feedback_training_set(settings, [jan], weight=1.0, max_rows=10)
    assert got.rows == 2 and got.summary["duplicates"] == 2
    by_flight = dict(zip(got.table["flight"].to_pylist(), got.table["label"].to_pylist(), strict=True))
    assert (by_flight[a["flight"]], by_flight[b["flight"]]) == (0, 1)
