"""A writer of a ``gs://`` lake whose partition lock was taken over (it stalled past the stale age, and another
writer took the lock) learned it only from its heartbeat, a third of the stale age later: a publish of a few
seconds committed its manifest and removed the folders "of earlier publishes" (the other writer's among them),
and its release swallowed the failed delete. It now checks the lock right before each such step, and a lock
found taken over at release fails the work. On the GCS emulator, which enforces generation preconditions."""

from __future__ import annotations

import contextlib
import posixpath
import uuid
from collections.abc import Callable
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tenfold.config import Settings
from tenfold.data.lake import PUBLISH_LOCK, Lake, Partition, PartitionLockLost
from tenfold.data.locks import LockLost, gcs_lock

PART = Partition(2013, 5)
TABLE = "events"

pytestmark = pytest.mark.integration


@pytest.fixture
def lake(make_settings: Callable[..., Settings], local_settings: Settings) -> Lake:
    bucket = local_settings.storage.lake_bucket
    return Lake.from_settings(make_settings(on=local_settings,
                                            storage={"lake_uri": f"gs://{bucket}/lake-{uuid.uuid4().hex[:8]}"}))


@pytest.fixture
def client(local_settings: Settings) -> Any:
    from tenfold.storage import gcs_client

    return gcs_client(local_settings)


def _stage(lake: Lake, values: list[int]) -> str:
    staged = lake.staging_path(TABLE, PART)
    lake.fs.create_dir(staged, recursive=True)
    pq.write_table(pa.table({"id": pa.array(values, pa.int64())}), f"{staged}/part-00000.parquet", filesystem=lake.fs)
    return staged


def _lock_object(lake: Lake) -> tuple[str, str]:
    bucket, _, name = posixpath.join(lake.partition_path(TABLE, PART), PUBLISH_LOCK).partition("/")
    return bucket, name


def _take_over(lake: Lake, client: Any) -> contextlib.AbstractContextManager[Callable[[], None]]:
    """Another writer takes the partition's lock, as one does from a holder that stopped beating (stale_s=0)."""
    bucket, name = _lock_object(lake)
    return gcs_lock(client, bucket, name, timeout_s=10, stale_s=0, what="the other writer")


def test_a_publish_whose_lock_was_taken_over_commits_nothing_and_removes_nothing(lake: Lake, client: Any) -> None:
    lake.publish(TABLE, PART, _stage(lake, [1, 2, 3]), run_id="first")
    before = lake.read_manifest(TABLE, PART)
    with contextlib.ExitStack() as other:
        real_land = lake._land

        def land_after_a_stall(source: str, dest: str, entry: object) -> None:
            if not other._exit_callbacks:  # the writer stalls here, past the stale age: the other takes the lock
                other.enter_context(_take_over(lake, client))
            real_land(source, dest, entry)  # type: ignore[arg-type]

        lake._land = land_after_a_stall  # type: ignore[method-assign]
        with pytest.raises(PartitionLockLost, match="taken over"):
            lake.publish(TABLE, PART, _stage(lake, [4, 5, 6, 7]), run_id="second")
    assert lake.read_manifest(TABLE, PART) == before  # not committed: the first publish is what readers see
    assert lake.read_table(TABLE, [PART]).column("id").to_pylist() == [1, 2, 3]  # and its data is still there


def test_a_holder_that_finds_its_lock_taken_over_at_release_fails(lake: Lake, client: Any) -> None:
    """No heartbeat came round (a long stale age): the release's failed conditional delete is the only sign."""
    bucket, name = _lock_object(lake)
    with contextlib.ExitStack() as other, pytest.raises(LockLost, match="taken over"), \
                gcs_lock(client, bucket, name, timeout_s=10, stale_s=600, what="a partition"):
        other.enter_context(_take_over(lake, client))  # holds it when the first holder releases
    assert client.bucket(bucket).get_blob(name) is None  # the other writer released its own


def _first_create_answer_lost(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The first create-only upload lands, and its answer is lost: the client's retry meets 412 on its own object.
    Returns the names it happened to (one)."""
    from google.api_core.exceptions import PreconditionFailed
    from google.cloud.storage import Blob

    real_upload = Blob.upload_from_string
    lost: list[str] = []

    def answer_lost_once(self: Blob, data: Any, *args: Any, **kwargs: Any) -> None:
        real_upload(self, data, *args, **kwargs)
        if not lost and kwargs.get("if_generation_match") == 0:
            lost.append(self.name)
            raise PreconditionFailed("the retry of a create that landed: 412")

    monkeypatch.setattr(Blob, "upload_from_string", answer_lost_once)
    return lost


def test_a_lock_whose_create_landed_with_its_answer_lost_is_held_not_waited_on(
        lake: Lake, client: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The create succeeded, its response was lost, and the client's retry got 412: the lock took its own object for
    another holder's and waited until it looked stale (2 minutes; the feedback join's 60 s wait failed "another
    process holds it" while nothing else did)."""
    import time


    bucket, name = _lock_object(lake)
    lost = _first_create_answer_lost(monkeypatch)
    started = time.monotonic()
    with gcs_lock(client, bucket, name, timeout_s=10, stale_s=600, what="a partition") as still_held:
        still_held()
    assert lost == [name] and time.monotonic() - started < 5
    assert client.bucket(bucket).get_blob(name) is None  # released: it was this acquisition's own


def test_an_object_whose_create_landed_with_its_answer_lost_counts_as_created(
        lake: Lake, client: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """GcsObjects.create: the upload landed, its answer was lost, and the client's retry met 412 on its own object:
    "already existed" (an inference result counted as another delivery's duplicate), where FileObjects says created.
    Another writer's bytes still count as theirs."""

    from tenfold.storage import GcsObjects

    bucket, _ = _lock_object(lake)
    objects = GcsObjects(client, bucket, f"objects-{uuid.uuid4().hex[:8]}")
    lost = _first_create_answer_lost(monkeypatch)
    assert objects.create("r/result.json", b'{"rows": 3}') is True and lost
    assert objects.create("r/result.json", b'{"rows": 4}') is False  # another delivery's: left as it was
    assert objects.get("r/result.json") == b'{"rows": 3}'


def test_a_heartbeat_that_cannot_tell_whether_it_still_holds_the_lock_beats_again(
        lake: Lake, client: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A beat met 412, and GCS was away while the heartbeat looked whether the object was still its own: the error
    escaped the handler and ended the heartbeat thread, with nothing recorded, so the lock was never refreshed again
    and any waiter took it over mid-publish."""
    import time

    from google.api_core.exceptions import PreconditionFailed, ServiceUnavailable
    from google.cloud.storage import Blob

    bucket, name = _lock_object(lake)
    real_upload, real_reload = Blob.upload_from_string, Blob.reload
    failed = {"beat": 0, "look": 0}

    def beat_refused_once(self: Blob, data: Any, *args: Any, **kwargs: Any) -> None:
        if self.name == name and kwargs.get("if_generation_match") not in (None, 0) and not failed["beat"]:
            failed["beat"] += 1
            raise PreconditionFailed("412: the answer to an earlier beat was lost")
        real_upload(self, data, *args, **kwargs)

    def look_fails_once(self: Blob, *args: Any, **kwargs: Any) -> None:
        if self.name == name and failed["beat"] and not failed["look"]:
            failed["look"] += 1
            raise ServiceUnavailable("GCS is away")
        real_reload(self, *args, **kwargs)

    monkeypatch.setattr(Blob, "upload_from_string", beat_refused_once)
    monkeypatch.setattr(Blob, "reload", look_fails_once)
    with gcs_lock(client, bucket, name, timeout_s=10, stale_s=1.5, what="a partition") as still_held:
        deadline = time.monotonic() + 10
        while not failed["look"]:
            assert time.monotonic() < deadline, "the heartbeat never met the failures"
            time.sleep(0.05)
        after = client.bucket(bucket).get_blob(name).generation
        while client.bucket(bucket).get_blob(name).generation == after:  # the next beats refresh it again
            assert time.monotonic() < deadline, "the heartbeat stopped: the lock was never refreshed again"
            time.sleep(0.05)
        still_held()


def _waiter_clock(monkeypatch: pytest.MonkeyPatch, skew_s: float) -> None:
    """The waiter's wall clock set ``skew_s`` off the store's (NTP not yet synced on a fresh VM): only the lock
    module's ``time.time``; its monotonic clock and sleeps are the real ones."""
    import time
    import types

    from tenfold.data import locks

    monkeypatch.setattr(locks, "time", types.SimpleNamespace(time=lambda: time.time() + skew_s,
                                                             monotonic=time.monotonic, sleep=time.sleep))


def test_a_waiter_whose_clock_runs_ahead_does_not_take_a_beating_holders_lock(
        lake: Lake, client: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The waiter measured the lock's age as its own wall clock minus the object's update time: 150 s ahead, it saw a
    lock refreshed half a second ago as 150 s old and took it from its live holder at once (which then failed with
    PartitionLockLost, and again on every retry)."""
    from tenfold.data.locks import LockTimeout

    bucket, name = _lock_object(lake)
    _waiter_clock(monkeypatch, +150)
    # A stale age of 3 s against beats every second: a slow beat or two on a busy emulator is not a dead holder.
    with gcs_lock(client, bucket, name, timeout_s=10, stale_s=3, what="a partition") as still_held:
        with pytest.raises(LockTimeout, match="another process holds"), \
                gcs_lock(client, bucket, name, timeout_s=4, stale_s=3, what="a partition"):
            pytest.fail("the waiter took the lock of a holder that beats every second")
        still_held()  # still the first holder's


def test_a_waiter_whose_clock_runs_behind_takes_a_dead_holders_lock_after_the_stale_age(
        lake: Lake, client: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A holder killed without releasing leaves its object, never refreshed again. A waiter 600 s behind saw it as
    ever younger than its stale age and waited out its whole timeout; it now takes it over once it has seen it
    unchanged for the stale age, by its own monotonic clock."""
    import time

    bucket, name = _lock_object(lake)
    client.bucket(bucket).blob(name).upload_from_string("a killed holder", if_generation_match=0)
    _waiter_clock(monkeypatch, -600)
    started = time.monotonic()
    with gcs_lock(client, bucket, name, timeout_s=10, stale_s=1, what="a partition") as still_held:
        took = time.monotonic() - started
        still_held()
        assert client.bucket(bucket).blob(name).download_as_text() != "a killed holder"
    assert 1 <= took < 5, took  # not at first sight: after it stayed unchanged for the stale age
    assert client.bucket(bucket).get_blob(name) is None  # released


def test_a_dead_holders_lock_is_taken_over_by_a_waiter_whose_waits_are_each_shorter_than_the_stale_age(
        lake: Lake, client: Any) -> None:
    """The feedback join waits 60 s for a lock whose stale age is 120 s, and the sink retries the join every 30 s:
    watched afresh by each wait, a killed holder's lock outlived every one, and the joins stopped for good. What
    this process saw of the lock is kept across its waits."""
    from tenfold.data.locks import LockTimeout

    bucket, name = _lock_object(lake)
    client.bucket(bucket).blob(name).upload_from_string("a killed holder", if_generation_match=0)
    with pytest.raises(LockTimeout), gcs_lock(client, bucket, name, timeout_s=1.2, stale_s=2, what="a join"):
        pytest.fail("took a lock watched for less than its stale age")
    with gcs_lock(client, bucket, name, timeout_s=1.2, stale_s=2, what="a join") as still_held:
        still_held()  # the second wait, 2.4 s after the first look: taken over
        assert client.bucket(bucket).blob(name).download_as_text() != "a killed holder"


def test_a_lock_older_than_its_stale_age_by_more_than_any_clock_skew_is_taken_at_first_sight(
        lake: Lake, client: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A waiter that first looks at a lock its holder left long ago (an hour, by GCS's clock) need not watch it for
    the stale age first: with a wait shorter than that (the join's 60 s against 120 s) it would never take it."""
    import time

    bucket, name = _lock_object(lake)
    client.bucket(bucket).blob(name).upload_from_string("a holder killed an hour ago", if_generation_match=0)
    _waiter_clock(monkeypatch, +3600)  # the emulator keeps the real time: the object looks an hour old
    started = time.monotonic()
    with gcs_lock(client, bucket, name, timeout_s=5, stale_s=60, what="a join"):
        assert time.monotonic() - started < 3
