"""The join on real landing logs in a file:// lake: one row per prediction id, whatever arrived twice or late."""

from __future__ import annotations

import contextlib
import datetime as dt
import threading
import uuid

import pyarrow.parquet as pq
import pytest

from tenfold.data.lake import Lake, Partition
from tenfold.feedback.lock import LockTimeout, join_lock
from tenfold.feedback.upsert import JoinOptions, join

from .conftest import T0, feedback, prediction

H = dt.timedelta(hours=1)
MAY, JUNE = Partition(2026, 5), Partition(2026, 6)


def _labelled(settings, *parts):
    lake = Lake.from_settings(settings)
    table = lake.read_table(settings.storage.labelled_table, parts or [MAY])
    return {r["prediction_id"]: r for r in table.to_pylist()}, table


def test_redeliveries_and_duplicate_feedback_leave_one_row_per_prediction(settings, logs):
    preds = [prediction("a", p=0.8), prediction("b", p=0.3), prediction("c", p=0.6)]
    logs.predictions(*preds)
    logs.predictions(*preds)  # the same batch redelivered: new message ids, same records
    logs.feedback(feedback("a", 1), feedback("b", 0, observed=T0 + 2 * H))
    logs.feedback(feedback("a", 1))  # a duplicate of a's record (publisher retry)
    # b is corrected (observed later), then an older observation arrives last: the latest observation wins.
    logs.feedback(feedback("b", 1, observed=T0 + 3 * H), feedback("b", 0, observed=T0 + H, received=T0 + 9 * H))

    report = join(settings)

    rows, table = _labelled(settings)
    assert table.num_rows == 3 and sorted(rows) == ["a", "b", "c"]
    assert (rows["a"]["outcome"], rows["b"]["outcome"], rows["c"]["outcome"]) == (1, 1, None)
    assert rows["b"]["observed_at"] == T0 + 3 * H
    assert (rows["a"]["feedback_records"], rows["b"]["feedback_records"], rows["c"]["feedback_records"]) == (1, 3, 0)
    assert rows["a"]["probability"] == 0.8 and rows["a"]["arm"] == "stable"
    month = report.months[0]
    assert (month.predictions, month.labelled, month.prediction_deliveries) == (3, 2, 6)
    assert (month.feedback_deliveries, month.feedback_records, month.corrected) == (5, 4, 1)


def test_a_clients_retry_received_later_is_one_record_not_a_correction(settings, logs):
    """A replica that timed out waiting for Pub/Sub answers 503 though the publish lands; the client's retry is
    stamped with its own received_at. Counted as two records, every Pub/Sub hiccup showed up as corrections."""
    logs.predictions(prediction("a"), prediction("b"))
    logs.feedback(feedback("a", 1, received=T0 + H), feedback("b", 0, observed=T0, received=T0 + H))
    logs.feedback(feedback("a", 1, received=T0 + H + dt.timedelta(seconds=5)),
                  feedback("b", 0, observed=T0, received=T0 + 2 * H))
    month = join(settings).months[0]
    rows = _labelled(settings)[0]
    assert (rows["a"]["feedback_records"], rows["b"]["feedback_records"]) == (1, 1)
    assert (month.feedback_deliveries, month.feedback_records, month.corrected) == (4, 2, 0)


def test_a_correction_with_observed_at_beats_an_earlier_report_without_one(settings, logs):
    """A report without observed_at (received at 11:00) and its correction observed at 10:30, received at 12:00: ranked
    on observed_at else received_at, the report won, the server's clock compared with the client's, and the month
    still counted a correction. A prediction whose records do not all carry observed_at is ranked on received_at."""
    logs.predictions(prediction("a"))
    logs.feedback(feedback("a", 1, received=T0 + H))
    logs.feedback(feedback("a", 0, observed=T0 + H / 2, received=T0 + 2 * H))
    month = join(settings).months[0]
    row = _labelled(settings)[0]["a"]
    assert (row["outcome"], row["observed_at"], row["feedback_received_at"]) == (0, T0 + H / 2, T0 + 2 * H)
    assert (row["feedback_records"], month.corrected) == (2, 1)


def test_when_every_record_carries_observed_at_the_latest_observation_wins_whenever_received(settings, logs):
    logs.predictions(prediction("a"))
    logs.feedback(feedback("a", 1, observed=T0 + 3 * H, received=T0 + H))
    logs.feedback(feedback("a", 0, observed=T0 + 2 * H, received=T0 + 4 * H))  # received later, observed earlier
    join(settings)
    row = _labelled(settings)[0]["a"]
    assert (row["outcome"], row["observed_at"], row["feedback_received_at"]) == (1, T0 + 3 * H, T0 + H)


def test_log_files_deleted_after_the_month_was_published_do_not_shrink_it(settings, logs):
    """docs/feedback.md suggested a lifecycle rule for the logs' retention: it deletes the oldest files first, and
    the next join rebuilt the month from what was left and published it over the whole one (for good, once the
    month's last file went). The month is kept, with why; --force publishes the smaller one."""
    from pathlib import Path

    from tenfold.feedback.log import log_files

    logs.predictions(prediction("a"))
    logs.feedback(feedback("a", 1))
    logs.predictions(prediction("b"))
    logs.feedback(feedback("b", 0))
    assert join(settings).published == ["2026-05"]
    full, _ = _labelled(settings)
    lake = Lake.from_settings(settings)
    for table in (settings.storage.predictions_table, settings.storage.feedback_table):
        Path(log_files(lake, table, MAY)[0].path).unlink()  # the oldest file of each log
    report = join(settings)
    assert report.published == [] and len(report.kept) == 1, report.to_dict()
    assert report.kept[0].startswith("2026-05: the logs now give 1 predictions (1 labelled) where the published month "
                                     "has 2 (2 labelled)")
    assert "tenfold feedback join --month 2026-05 --force" in report.kept[0]
    assert _labelled(settings)[0] == full
    assert join(settings, force=True).published == ["2026-05"]
    assert sorted(_labelled(settings)[0]) == ["b"]


def test_a_month_joined_with_a_longer_horizon_is_rebuilt_with_the_settings_one_though_it_has_fewer_labels(
        settings, logs):
    """`tenfold feedback join --horizon 6` published labels from feedback months after the settings' horizon; the
    sink's next join (horizon 2) has fewer: another rule, not lost files, so it is published, not kept for ever."""
    logs.predictions(prediction("a"), prediction("b"))
    logs.feedback(feedback("a", 1, received=T0 + dt.timedelta(days=150)))  # five months after May
    assert join(settings, options=JoinOptions(feedback_horizon_months=6)).published == ["2026-05"]
    assert _labelled(settings)[0]["a"]["outcome"] == 1
    report = join(settings)
    assert report.published == ["2026-05"] and report.kept == [], report.to_dict()
    assert _labelled(settings)[0]["a"]["outcome"] is None


def test_equal_observations_fall_back_to_the_later_receipt(settings, logs):
    logs.predictions(prediction("a"))
    logs.feedback(feedback("a", 1, received=T0 + 2 * H), feedback("a", 0, received=T0 + 5 * H))  # no observed_at
    join(settings)
    assert _labelled(settings)[0]["a"]["outcome"] == 0


def test_late_feedback_is_joined_when_its_prediction_lands(settings, logs):
    logs.feedback(feedback("late", 1))
    assert join(settings).months == []  # nothing served yet: nothing to publish
    # Served in the last minute of May, its outcome received in June: the window spans the months.
    logs.predictions(prediction("late"), prediction("edge", at=dt.datetime(2026, 5, 31, 23, 59, tzinfo=dt.UTC)))
    logs.feedback(feedback("edge", 0, received=dt.datetime(2026, 6, 1, 1, 0, tzinfo=dt.UTC)))
    join(settings)
    rows, _ = _labelled(settings)
    assert (rows["late"]["outcome"], rows["edge"]["outcome"]) == (1, 0)


def test_feedback_beyond_the_horizon_stays_unjoined(settings, logs):
    logs.predictions(prediction("a"), prediction("b"))
    logs.feedback(feedback("a", 1, received=dt.datetime(2026, 7, 31, tzinfo=dt.UTC)),  # May + 2 months: joins
                  feedback("b", 1, received=dt.datetime(2026, 8, 1, tzinfo=dt.UTC)))  # + 3: too late
    join(settings, options=JoinOptions(feedback_horizon_months=2))
    rows, _ = _labelled(settings)
    assert (rows["a"]["outcome"], rows["b"]["outcome"]) == (1, None)


def test_every_default_join_uses_the_horizon_of_settings_so_a_longer_one_is_not_undone(settings, logs):
    """The sink's join, metrics and the canary window all join with the default options: they take the horizon
    from settings.feedback, so setting it there keeps late feedback joined (a --horizon run alone was undone by
    the sink's next join, which rebuilt every month with 2)."""
    longer = settings.model_copy(update={"feedback": settings.feedback.model_copy(update={"horizon_months": 4})})
    logs.predictions(prediction("a"))
    logs.feedback(feedback("a", 1, received=dt.datetime(2026, 9, 1, tzinfo=dt.UTC)))  # May + 4 months
    join(longer)
    logs.predictions(prediction("b"))  # something new lands: the next default join rebuilds May
    assert join(longer).published == ["2026-05"]
    rows, _ = _labelled(longer)
    assert rows["a"]["outcome"] == 1 and rows["b"]["outcome"] is None
    assert JoinOptions.of(longer).feedback_horizon_months == 4


def test_a_log_file_that_cannot_be_read_is_quarantined_and_the_join_goes_on(settings, logs):
    """A truncated file in a month's log (copied in by hand, another tool) failed every join with ArrowInvalid,
    and with it the running sink and every canary accuracy check."""
    from pathlib import Path

    from tenfold.feedback.log import log_files

    logs.predictions(prediction("a"), prediction("b"))
    logs.feedback(feedback("a", 1))
    lake, table = Lake.from_settings(settings), settings.storage.feedback_table
    good = Path(log_files(lake, table, MAY)[0].path)
    torn = good.with_name("log-20260514T120000000000-torn.parquet")
    torn.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    assert join(settings).published == ["2026-05"]
    rows, _ = _labelled(settings)
    assert (rows["a"]["outcome"], rows["b"]["outcome"]) == (1, None)
    assert not torn.exists() and [Path(i.path).name for i in log_files(lake, table, MAY)] == [good.name]
    kept = Path(lake.root) / "quarantine" / table / "year=2026" / "month=5" / "unreadable-logs" / torn.name
    assert kept.exists(), "the bad file is kept for inspection, out of every join's way, under the lake's quarantine"
    assert "quarantine/" in settings.storage.lake_layout.retention_days, "which the bucket's lifecycle rule expires"
    join(settings)  # the month's inputs changed when the file moved: rebuilt once, with the same rows
    assert _labelled(settings)[0] == rows and join(settings).published == []


def test_another_tables_log_file_in_a_month_is_quarantined_naming_its_missing_columns(settings, logs, caplog):
    """A feedback-log file copied into the predictions log's month was read with the missing columns as nulls:
    nothing was quarantined and every join (the CLI's, the running sink's, the canary's window) failed casting
    a null model_version. Now the file is checked against its own schema, left out and moved aside."""
    import logging
    import shutil
    from pathlib import Path

    from tenfold.feedback.log import log_files
    from tenfold.feedback.upsert import join_window

    logs.predictions(prediction("a", p=0.8))
    logs.feedback(feedback("a", 1))
    logs.feedback(feedback("z", 0))  # feedback for a prediction this log does not hold
    lake, table = Lake.from_settings(settings), settings.storage.predictions_table
    stray = Path(lake.partition_path(table, MAY)) / "log-20260514T130000000000-copied.parquet"
    shutil.copy(log_files(lake, settings.storage.feedback_table, MAY)[-1].path, stray)

    caplog.set_level(logging.WARNING, logger="tenfold.feedback.log")
    window = join_window(settings, T0 - H, T0 + H)  # the canary's refresh: reads, never moves
    assert window["prediction_id"].to_pylist() == ["a"] and window["outcome"].to_pylist() == [1]
    assert stray.exists()
    assert join(settings).published == ["2026-05"]
    rows, _ = _labelled(settings)
    assert list(rows) == ["a"] and rows["a"]["model_version"] == "v1" and rows["a"]["outcome"] == 1
    assert not stray.exists()
    assert (Path(lake.root) / "quarantine" / table / "year=2026" / "month=5" / "unreadable-logs" / stray.name).exists()
    moved = [r.getMessage() for r in caplog.records if "moved to" in r.getMessage()]
    assert len(moved) == 1 and stray.name in moved[0]
    assert "lacks the required column(s) model_version, arm, probability, request, served_at" in moved[0]


def test_a_log_file_whose_column_does_not_convert_or_holds_nulls_is_left_out(settings, logs):
    """Another tool's file with every column, but an outcome that is text or a required id that is null."""
    import pyarrow as pa

    from tenfold.feedback.log import log_files, read_log
    from tenfold.feedback.schema import FEEDBACK_LOG

    from .conftest import feedback_log

    logs.feedback(feedback("a", 1))
    lake, table = Lake.from_settings(settings), settings.storage.feedback_table
    good = feedback_log([feedback("b", 0)])
    text = good.set_column(good.schema.get_field_index("outcome"), "outcome", pa.array(["yes"]))
    nulls = good.set_column(0, pa.field("prediction_id", pa.string()), pa.array([None], pa.string()))
    for i, bad in enumerate([text, nulls]):
        pq.write_table(bad, f"{lake.partition_path(table, MAY)}/log-20260514T13000{i}000000-other.parquet")
    assert read_log(lake, table, [MAY], FEEDBACK_LOG)["prediction_id"].to_pylist() == ["a"]
    assert len(log_files(lake, table, MAY)) == 3, "read without quarantine: left in place"
    assert read_log(lake, table, [MAY], FEEDBACK_LOG, quarantine=lambda: None)["prediction_id"].to_pylist() == ["a"]
    assert len(log_files(lake, table, MAY)) == 1


def test_a_read_that_fails_once_in_the_store_quarantines_nothing(settings, logs, monkeypatch):
    """An I/O error of the store (a GCS hiccup is an OSError too) is no proof the file is bad: its bytes are read
    again and parsed in memory; a good file is used, never moved."""
    import tenfold.feedback.log as log_mod

    logs.predictions(prediction("a"))
    logs.feedback(feedback("a", 1))
    real, failed = log_mod.pq.read_table, []

    def flaky(source, *args, **kwargs):
        if isinstance(source, str) and not failed:
            failed.append(source)
            raise OSError("GCS 503: backend error")
        return real(source, *args, **kwargs)

    monkeypatch.setattr(log_mod.pq, "read_table", flaky)
    assert join(settings).published == ["2026-05"] and failed
    rows, _ = _labelled(settings)
    assert rows["a"]["outcome"] == 1
    lake = Lake.from_settings(settings)
    from pathlib import Path

    assert not (Path(lake.root) / "quarantine").exists(), "an error of the store is not the file's: nothing moved"


def test_a_rerun_skips_unchanged_months_and_a_redelivery_publishes_the_same_bytes(settings, logs):
    # May and July: July looks for feedback from June on, so May's feedback is not one of its inputs.
    logs.predictions(prediction("a"), prediction("x", at=T0 + dt.timedelta(days=60)))
    logs.feedback(feedback("a", 1))
    first = join(settings)
    assert first.published == ["2026-05", "2026-07"]
    lake = Lake.from_settings(settings)
    before = lake.read_manifest(settings.storage.labelled_table, MAY)

    assert join(settings).published == []  # nothing landed since: nothing read or written
    logs.feedback(feedback("a", 1))  # redelivered: the May month's inputs changed, its content did not
    again = join(settings)
    assert again.published == ["2026-05"]
    after = lake.read_manifest(settings.storage.labelled_table, MAY)
    assert after.data_dir == before.data_dir and after.files == before.files
    assert join(settings, force=True).published == ["2026-05", "2026-07"]


def test_two_different_records_under_one_id_keep_the_earliest_and_are_counted(settings, logs):
    logs.predictions(prediction("dup", p=0.9, at=T0 + H), prediction("dup", p=0.1, at=T0))
    report = join(settings)
    rows, _ = _labelled(settings)
    assert rows["dup"]["probability"] == 0.1
    assert report.months[0].conflicting_predictions == 1


def test_the_published_partition_is_a_checked_lake_table(settings, logs):
    logs.predictions(prediction("a"))
    join(settings)
    lake = Lake.from_settings(settings)
    [path] = lake.files(settings.storage.labelled_table, MAY, verify=True)
    assert pq.read_metadata(path, filesystem=lake.fs).num_rows == 1
    assert lake.read_manifest(settings.storage.labelled_table, MAY).extra["labelled"] == 0


def test_a_second_join_waits_for_the_first_and_times_out_clearly(settings):
    lake = Lake.from_settings(settings)
    held, release = threading.Event(), threading.Event()

    def holder():
        with join_lock(settings, lake):
            held.set()
            release.wait(10)

    t = threading.Thread(target=holder)
    t.start()
    try:
        assert held.wait(10)
        with pytest.raises(LockTimeout, match="the lock of the feedback join"):
            join(settings, options=JoinOptions(lock_timeout_s=0.3))
    finally:
        release.set()
        t.join()
    join(settings, options=JoinOptions(lock_timeout_s=0.3))  # free again


@pytest.mark.integration
def test_the_lock_on_a_gcs_lake_is_exclusive_and_a_dead_holders_lock_is_taken_over(local_settings):
    # A gs:// lake's lock is a create-only object: exercised on the GCS emulator, which enforces preconditions.
    from tenfold.data.locks import LockLost, gcs_lock
    from tenfold.storage import gcs_client

    client = gcs_client(local_settings)
    bucket, name = local_settings.storage.lake_bucket, f"locktest-{uuid.uuid4().hex[:8]}/_join.lock"

    def lock(timeout_s: float, stale_s: float = 600):
        return gcs_lock(client, bucket, name, timeout_s=timeout_s, stale_s=stale_s, what="the feedback join")

    # The first holder's lock is taken over by a third that saw it stale: it fails when it ends, not reports done.
    with pytest.raises(LockLost, match="taken over"), lock(5):
        with pytest.raises(LockTimeout, match="the lock of the feedback join"), lock(0.5):
            pass
        with lock(5, stale_s=0):  # the holder looks dead: taken over
            pass
    with lock(0.5):  # released: free at once
        pass
    assert client.bucket(bucket).get_blob(name) is None


@pytest.mark.integration
def test_a_gcs_lock_that_gcs_refuses_is_a_clear_lock_error_not_a_raw_api_error(local_settings):
    """GCS answering the lock's create with an error (here a 404: no such bucket; a 403 alike) is LockUnavailable,
    a LockTimeout, which the sink's join and every CLI handle: it was a raw GoogleAPICallError that killed the sink."""
    from tenfold.data.locks import LockUnavailable, gcs_lock
    from tenfold.storage import gcs_client

    client = gcs_client(local_settings)
    with pytest.raises(LockUnavailable, match=r"cannot take gs://no-such-bucket-.*GCS answered 404"),\
            gcs_lock(client, f"no-such-bucket-{uuid.uuid4().hex[:8]}", "t/_join.lock", timeout_s=5, stale_s=60,
                     what="the feedback join"):
        pytest.fail("the lock was taken in a bucket that does not exist")
    assert issubclass(LockUnavailable, LockTimeout)


@pytest.mark.integration
def test_a_gcs_lock_held_past_its_stale_age_by_a_live_holder_is_not_taken_over(local_settings):
    """A live holder refreshes its lock: however long its work takes (a join of a large log, a slow publish),
    a waiter takes it over only from a holder that stopped refreshing it (killed), never from one working."""
    import threading
    import time

    from tenfold.data.locks import gcs_lock
    from tenfold.storage import gcs_client

    client = gcs_client(local_settings)
    bucket, name = local_settings.storage.lake_bucket, f"locktest-{uuid.uuid4().hex[:8]}/_publish.lock"
    released_at: list[float] = []
    acquired_at: list[float] = []

    def waiter() -> None:
        with gcs_lock(client, bucket, name, timeout_s=20, stale_s=2, what="a partition"):
            acquired_at.append(time.monotonic())

    with gcs_lock(client, bucket, name, timeout_s=5, stale_s=2, what="a partition"):
        second = threading.Thread(target=waiter)
        second.start()
        time.sleep(6)  # three times the stale age, working
        released_at.append(time.monotonic())
    second.join(timeout=30)
    assert acquired_at and acquired_at[0] >= released_at[0], "taken over from a live holder"


@pytest.mark.integration
def test_a_holder_whose_gcs_lock_was_taken_over_fails_instead_of_reporting_done(local_settings):
    """A holder that stalled past the stale age lost its lock to another writer: its heartbeat finds the object
    is no longer its own, and the holder raises LockLost when its work ends (its task fails and is retried)."""
    import time

    from tenfold.data.locks import LockLost, gcs_lock
    from tenfold.storage import gcs_client

    client = gcs_client(local_settings)
    bucket, name = local_settings.storage.lake_bucket, f"locktest-{uuid.uuid4().hex[:8]}/_publish.lock"
    first = gcs_lock(client, bucket, name, timeout_s=5, stale_s=1.5, what="a partition")
    second = gcs_lock(client, bucket, name, timeout_s=5, stale_s=0, what="a partition")  # sees it stale: takes it
    seen: list[str] = []
    with pytest.raises(LockLost, match="was taken over"), first:
        with second:
            seen.append(client.bucket(bucket).blob(name).download_as_text())  # the taker's
            time.sleep(1.5)  # while the first holder's heartbeat comes round
            seen.append(client.bucket(bucket).blob(name).download_as_text())
        seen.append("second released")  # the taker's own exit raised nothing
    # Checked here, not in the blocks: the first holder's LockLost would have hidden a failed assertion.
    assert seen[1] == seen[0], "the stalled holder's heartbeat overwrote the lock that was taken from it"
    assert seen[2] == "second released"
    assert client.bucket(bucket).get_blob(name) is None  # the taker released its own lock


@pytest.mark.integration
def test_a_heartbeat_whose_write_landed_unanswered_keeps_its_lock(local_settings):
    """A heartbeat write that landed though its answer was lost looks, to the retry, like a taken-over lock (the
    generation moved): the holder checks the object is still its own and keeps it instead of failing its work."""
    import time

    from tenfold.data.locks import gcs_lock
    from tenfold.storage import gcs_client

    client = gcs_client(local_settings)
    bucket, name = local_settings.storage.lake_bucket, f"locktest-{uuid.uuid4().hex[:8]}/_publish.lock"
    with gcs_lock(client, bucket, name, timeout_s=5, stale_s=1.5, what="a partition"):
        blob = client.bucket(bucket).blob(name)
        blob.upload_from_string(blob.download_as_bytes())  # the same content, a new generation
        rewritten = blob.generation
        # A heartbeat comes round (every 0.5 s at this stale age), finds the generation moved and the object its own,
        # and the next one beats again: a new generation within a few beats; ten seconds is room for a slow machine.
        deadline = time.monotonic() + 10
        while client.bucket(bucket).get_blob(name).generation == rewritten:
            assert time.monotonic() < deadline, "no heartbeat refreshed it after the rewrite"
            time.sleep(0.1)
    assert client.bucket(bucket).get_blob(name) is None  # released: it deleted its own object


def test_the_window_join_lists_only_the_window_s_months_not_all_history(settings, logs, monkeypatch):
    """Every canary check listed both logs whole (log_months, recursive over every file ever landed): its cost grew
    with all history (3.4 s at 192,000 files) instead of the window's."""
    from tenfold.feedback import upsert

    logs.predictions(prediction("a", p=0.8))
    logs.feedback(feedback("a", 1))

    def whole_history(*args, **kwargs):
        raise AssertionError("the window join listed every month of a log")

    monkeypatch.setattr(upsert, "log_months", whole_history)
    window = upsert.join_window(settings, T0 - H, T0 + H)
    assert window["prediction_id"].to_pylist() == ["a"] and window["outcome"].to_pylist() == [1]
    assert upsert.join_window(settings, T0 + 2000 * H, T0 + 2001 * H).num_rows == 0  # a month with no log folder


def test_a_published_label_lost_with_its_log_file_is_kept_though_new_traffic_makes_up_the_count(settings, logs,
                                                                                              monkeypatch):
    """The guard counted rows: a month whose oldest feedback file went (retention) while a new prediction with feedback
    landed had as many labelled rows as before, was published, and "a"'s label was gone for good. And a JOIN_VERSION
    bump switched the guard off, so an upgrade published every trimmed month smaller."""
    from pathlib import Path

    from tenfold.feedback import upsert
    from tenfold.feedback.log import log_files

    logs.predictions(prediction("a"), prediction("b"))
    logs.feedback(feedback("a", 1), feedback("b", 0))
    assert join(settings).published == ["2026-05"]
    full = _labelled(settings)[0]
    lake = Lake.from_settings(settings)
    Path(log_files(lake, settings.storage.feedback_table, MAY)[0].path).unlink()  # both labels' file
    logs.predictions(prediction("c"))
    logs.feedback(feedback("c", 1), feedback("b", 0))  # b's label again, c new: 3 predictions, 2 labelled
    report = join(settings)
    assert report.published == [] and report.kept[0].startswith(
        "2026-05: 1 of its published predictions lost their label in the logs (the first: a)"), report.to_dict()
    assert _labelled(settings)[0] == full
    for table in (settings.storage.predictions_table,):
        for f in log_files(lake, table, MAY)[:1]:
            Path(f.path).unlink()  # the file of a and b's predictions
    monkeypatch.setattr(upsert, "JOIN_VERSION", upsert.JOIN_VERSION + 1)  # another rule: labels may differ, ids may not
    report = join(settings)
    assert report.published == [] and "2 of its published predictions are not in the logs any more" in report.kept[0]
    assert _labelled(settings)[0] == full


@pytest.mark.integration
def test_a_gcs_lock_whose_storage_stops_answering_is_a_lock_error_not_a_traceback(local_settings, monkeypatch, tcp_relay):
    """Past the storage client's retries a connection that is refused is RetryError, which is no GoogleAPICallError:
    taking the lock, or checking it before a publish, let it through, and a GCS outage of a couple of minutes ended
    the running feedback sink with a traceback (its join handles lock errors and goes on landing). The client's
    retry deadline is cut from 120 s to 2 s so that the test does not wait two minutes; the refusals are real."""
    import urllib.parse

    import google.cloud.storage.retry as storage_retry
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    from tenfold.data.locks import LockLost, LockUnavailable, gcs_lock

    monkeypatch.setattr(storage_retry.DEFAULT_RETRY, "_timeout", 2.0)
    emulator = urllib.parse.urlsplit(local_settings.storage.emulator_host)
    relay = tcp_relay((emulator.hostname, emulator.port))

    def client(port: int) -> storage.Client:
        return storage.Client(project=local_settings.project_id, credentials=AnonymousCredentials(),
                              client_options={"api_endpoint": f"http://127.0.0.1:{port}"})

    bucket, name = local_settings.storage.lake_bucket, f"locktest-{uuid.uuid4().hex[:8]}/_join.lock"
    try:
        with gcs_lock(client(relay.port), bucket, name, timeout_s=5, stale_s=600, what="the feedback join") as held:
            held()  # reachable: still ours
            relay.cut()
            with pytest.raises(LockLost, match=rf"cannot tell whether gs://{bucket}/{name} is still held for the "
                                               r"feedback join: GCS did not answer .*nothing more was done"):
                held()
        with pytest.raises(LockUnavailable, match=rf"cannot take gs://{bucket}/{name}, the lock of the feedback join: "
                                                  r"GCS did not answer"), \
                gcs_lock(client(relay.port), bucket, name, timeout_s=5, stale_s=600, what="the feedback join"):
            pytest.fail("the lock was taken through a relay that is cut")
    finally:
        relay.cut()
        gcs = client(emulator.port)
        with contextlib.suppress(Exception):
            gcs.bucket(bucket).blob(name).delete()  # the lock its holder could not release


@pytest.mark.integration
@pytest.mark.parametrize("stall", ["before_the_reads", "before_the_publish"])
def test_a_join_whose_lock_was_taken_over_publishes_nothing_and_quarantines_nothing(
        make_settings, local_settings, monkeypatch, stall):
    """On a gs:// lake a join that stalled past the lock's stale age (a paused VM) and was taken over learned it
    only at its release: meanwhile it published its older rebuild of the month over the newer one of the join that
    took the lock, and moved log files to quarantine under it. It now checks the lock right before each such step.
    (The other join here takes the lock as one does from a holder that stopped beating: stale_s=0.)"""
    import posixpath

    from tenfold.data.lake import MissingManifestError
    from tenfold.data.locks import LockLost, gcs_lock
    from tenfold.feedback import upsert
    from tenfold.feedback.lock import LOCK_NAME
    from tenfold.feedback.log import log_files
    from tenfold.storage import gcs_client

    from .conftest import Logs

    bucket = local_settings.storage.lake_bucket
    settings = make_settings(on=local_settings, storage={"lake_uri": f"gs://{bucket}/lake-{uuid.uuid4().hex[:8]}"})
    logs = Logs(settings)
    logs.predictions(prediction("a"), prediction("b"))
    logs.feedback(feedback("a", 1))
    lake, st = logs.lake, settings.storage
    if stall == "before_the_reads":  # a file the join would move to quarantine
        pq.write_table(pq.read_table(log_files(lake, st.feedback_table, MAY)[0].path, filesystem=lake.fs)
                       .drop_columns(["prediction_id"]),
                       f"{lake.partition_path(st.feedback_table, MAY)}/log-20260514T130000000000-other.parquet",
                       filesystem=lake.fs)
    lock_bucket, _, lock_name = posixpath.join(lake.table_path(st.labelled_table), LOCK_NAME).partition("/")
    with contextlib.ExitStack() as other:
        def taken_over(real):
            def stalled(*args, **kwargs):
                if not other._exit_callbacks:  # the join stalls here: another takes its lock
                    other.enter_context(gcs_lock(gcs_client(settings), lock_bucket, lock_name, timeout_s=10,
                                                 stale_s=0, what="the other join"))
                return real(*args, **kwargs)
            return stalled

        where = "_fingerprint" if stall == "before_the_reads" else "_join_logs"
        monkeypatch.setattr(upsert, where, taken_over(getattr(upsert, where)))
        with pytest.raises(LockLost, match="taken over"):
            join(settings, lake=lake)
    with pytest.raises(MissingManifestError):
        lake.read_manifest(st.labelled_table, MAY)  # nothing published
    assert len(log_files(lake, st.feedback_table, MAY)) == (2 if stall == "before_the_reads" else 1)  # none moved
