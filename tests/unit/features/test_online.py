"""Loading the published lookups for online serving: every served month, the version check, clear refusals."""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import tempfile
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tenfold.config import Settings
from tenfold.data.lake import Lake, Partition
from tenfold.features.online import (
    LOOKUPS_KEY,
    LookupsUnavailable,
    load_online_features,
    read_lookups,
    served_months,
)
from tenfold.workloads import VERSION_KEY, RequestInvalid, lookup_table
from tenfold.workloads.flights import WORKLOAD
from tenfold.workloads.flights.contract import CONTRACT
from tenfold.workloads.flights.synthetic import (
    publish_synthetic_features,
    publish_synthetic_lookups,
    synthetic_features,
    synthetic_lookups,
    synthetic_requests,
)

JAN, FEB, MAR = Partition(2013, 1), Partition(2013, 2), Partition(2013, 3)


def publish_month(settings: Settings, lake: Lake, part: Partition) -> None:
    """Lookups, then features: the order build_features publishes them in."""
    publish_synthetic_lookups(lake, [part], prefix=settings.storage.lookups_table)
    publish_synthetic_features(lake, [part], 50, table=settings.storage.features_table)


def test_every_published_month_is_loaded_and_served(settings: Settings, lake: Lake) -> None:
    for part in (JAN, FEB):
        publish_month(settings, lake, part)
    online = load_online_features(settings)
    assert online.months == ("2013-01", "2013-02")
    requests = [WORKLOAD.request_model.model_validate(b) for b in synthetic_requests(FEB, 64)]
    table = online.assemble(requests)
    assert table.num_rows == 64 and table.column_names == list(CONTRACT.online_columns)
    assert lake.read_manifest(lookup_table(settings.storage.lookups_table, "weather"), FEB).extra[VERSION_KEY] == \
        CONTRACT.version


def test_a_replica_bounded_by_its_pools_token_loads_no_month_published_since(settings: Settings, lake: Lake) -> None:
    """A replica the fleet starts later (a scale-out, a crash's replacement) loaded every month published then,
    newer than its siblings' token: a request for that month was answered by one replica and refused by the others."""
    from tenfold.serving.fleet import lookups_month

    for part in (JAN, FEB, MAR):
        publish_month(settings, lake, part)
    bounded = settings.model_copy(update={"serving": settings.serving.model_copy(update={
        "server": settings.serving.server.model_copy(update={"lookups_through": lookups_month("2013-02@20261205T1")})})})
    assert load_online_features(bounded).months == ("2013-01", "2013-02")
    assert load_online_features(settings).months == ("2013-01", "2013-02", "2013-03")  # unbounded: all of them
    before = bounded.model_copy(update={"serving": bounded.serving.model_copy(update={
        "server": bounded.serving.server.model_copy(update={"lookups_through": "2012-12"})})})
    with pytest.raises(LookupsUnavailable, match=r"no month up to 2012-12 .* \(the first is 2013-01\)"):
        read_lookups(before)
    assert [lookups_month(t) for t in ("2013-02", "2013-02@x", "none@x", "", "2013-13@x")] == ["2013-02", "2013-02",
                                                                                                   "", "", ""]


def test_a_month_is_served_only_once_its_features_are_published(
    settings: Settings, lake: Lake, caplog: pytest.LogCaptureFixture
) -> None:
    publish_month(settings, lake, JAN)
    # February's lookups are published but its features are not (a publish in progress, or one that died
    # in between): the features manifest is the commit marker, so February is not served yet.
    publish_synthetic_lookups(lake, [FEB], prefix=settings.storage.lookups_table)
    # March has features from before lookups were published: left out, with a warning saying what to do.
    publish_synthetic_features(lake, [MAR], 50, table=settings.storage.features_table)
    with caplog.at_level(logging.WARNING, logger="tenfold.features.online"):
        assert served_months(settings) == [JAN]
    assert "2013-03" in caplog.text and "rebuild them with build_features" in caplog.text
    assert list(read_lookups(settings)) == ["2013-01"]


def test_nothing_to_serve_is_a_clear_error(settings: Settings, lake: Lake) -> None:
    with pytest.raises(LookupsUnavailable, match=r"no month of 'features' has its lookup tables \(lookups_\*\) "
                                                 r"published .* run build_features"):
        load_online_features(settings)


def test_lookups_of_another_feature_version_are_refused(settings: Settings, lake: Lake) -> None:
    publish_month(settings, lake, JAN)
    weather = lookup_table(settings.storage.lookups_table, "weather")
    with tempfile.TemporaryDirectory() as tmp:
        pq.write_table(synthetic_lookups(JAN)["weather"], Path(tmp) / "part-0.parquet")
        lake.publish(weather, JAN, tmp, run_id="old", extra={VERSION_KEY: CONTRACT.version - 1})
    with pytest.raises(LookupsUnavailable, match=rf"no month can be served: {weather} 2013-01 was built with features version "
                                                 rf"{CONTRACT.version - 1}, but the flights workload now defines "
                                                 rf"version {CONTRACT.version}.*build_features 2013-01"):
        load_online_features(settings)


def test_a_month_built_by_another_feature_version_is_left_out_not_fatal(
    settings: Settings, lake: Lake, caplog: pytest.LogCaptureFixture
) -> None:
    """After a feature definition changes, months are rebuilt one by one: a replica serves the rebuilt ones (a request
    for a stale month is refused as a month not served) instead of refusing to start until all are rebuilt."""
    publish_month(settings, lake, JAN)
    publish_month(settings, lake, FEB)
    weather = lookup_table(settings.storage.lookups_table, "weather")
    with tempfile.TemporaryDirectory() as tmp:
        pq.write_table(synthetic_lookups(JAN)["weather"], Path(tmp) / "part-0.parquet")
        lake.publish(weather, JAN, tmp, run_id="old", extra={VERSION_KEY: CONTRACT.version - 1})
    with caplog.at_level(logging.WARNING, logger="tenfold.features.online"):
        assert load_online_features(settings).months == ("2013-02",)
    assert "months 2013-01 have lookups of another feature definition" in caplog.text


def test_the_lookups_table_names_come_from_settings(make_settings, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    renamed = make_settings(storage={"lookups_table": "serving_lookups", "features_table": "feats"})
    lake = Lake.from_settings(renamed)
    publish_month(renamed, lake, JAN)
    assert lake.published_partitions("serving_lookups_planes") == [JAN]
    assert load_online_features(renamed).months == ("2013-01",)


def test_a_month_with_a_corrupt_lookups_file_is_left_out_and_the_others_served_on_the_first_load(
    settings: Settings, lake: Lake, caplog: pytest.LogCaptureFixture
) -> None:
    """One byte flipped in January's planes lookups: the first load (the one that withdraws it, or cannot when serving
    may only read the lake) serves February, and a request for January is refused as a month not served."""
    publish_month(settings, lake, JAN)
    publish_month(settings, lake, FEB)
    planes = lookup_table(settings.storage.lookups_table, "planes")
    (path,) = lake.files(planes, JAN)
    with lake.fs.open_input_stream(path) as stream:
        data = bytearray(stream.read())
    data[len(data) // 2] ^= 0xFF
    with lake.fs.open_output_stream(path) as out:
        out.write(bytes(data))

    with caplog.at_level(logging.WARNING, logger="tenfold.features.online"):
        online = load_online_features(settings)
    assert online.months == ("2013-02",)
    assert "months 2013-01 have lookup tables that cannot be read" in caplog.text
    assert f"{lake.uri_of(path)} is corrupt: its CRC32C is" in caplog.text
    [feb] = synthetic_requests(FEB, 1)
    online.check(WORKLOAD.request_model.model_validate(feb))
    [jan] = synthetic_requests(JAN, 1)
    with pytest.raises(RequestInvalid, match=r"no features are served for 2013-01: this server's lookups cover 2013-02"):
        online.check(WORKLOAD.request_model.model_validate(jan))


def test_a_month_published_again_while_its_lookups_are_read_fails_the_load_not_a_mix_of_builds(
        settings: Settings, lake: Lake, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each table's read followed a publish that landed meanwhile: a replica starting then served one table of the
    new build beside another of the old, features matching neither, for its whole life."""
    from tenfold.features import online

    publish_month(settings, lake, JAN)
    real_read = Lake.read_table
    republished: list[str] = []

    def read_during_a_publish(self: Lake, table: str, parts: list[Partition], **kwargs: object):  # type: ignore[no-untyped-def]
        if not republished and table.endswith("_weather"):  # published again as the weather table is read
            republished.append(table)
            publish_synthetic_lookups(lake, [JAN], seed=7, prefix=settings.storage.lookups_table)
        return real_read(self, table, parts, **kwargs)

    monkeypatch.setattr(Lake, "read_table", read_during_a_publish)
    with pytest.raises(LookupsUnavailable, match="2013-01 was published again while its lookup tables were read"):
        online.read_month_lookups(settings, WORKLOAD, lake, JAN)
    monkeypatch.setattr(Lake, "read_table", real_read)
    again = online.read_month_lookups(settings, WORKLOAD, lake, JAN)  # tried again: one build, the new one
    assert set(again) == set(CONTRACT.lookup_tables)
    for name, table in again.items():
        assert table.equals(real_read(lake, lookup_table(settings.storage.lookups_table, name), [JAN]))


def publish_built_month(settings: Settings, lake: Lake, part: Partition, seed: int = 0) -> None:
    """Lookups, then features naming their folders (``LOOKUPS_KEY``): what build_features publishes."""
    prefix = settings.storage.lookups_table
    publish_synthetic_lookups(lake, [part], seed=seed, prefix=prefix)
    built = {n: lake.read_manifest(lookup_table(prefix, n), part).data_dir for n in CONTRACT.lookup_tables}
    with tempfile.TemporaryDirectory() as tmp:
        pq.write_table(synthetic_features(part, 50, seed), Path(tmp) / "part-0.parquet")
        lake.publish(settings.storage.features_table, part, tmp, run_id=f"build-{seed}",
                     extra=CONTRACT.manifest_extra(**{LOOKUPS_KEY: built}))


def test_a_replica_starting_while_a_month_is_published_again_waits_for_its_features_not_without_the_month(
        settings: Settings, lake: Lake, monkeypatch: pytest.MonkeyPatch) -> None:
    """A rebuild publishes the month's new lookups, then its features: a replica that started in between (a
    scale-out, a crash's replacement) took the month for a failed publish, left it out and refused its requests for
    its whole life, while its siblings served it. The load reads the month again until its features follow."""
    from tenfold.features import online

    publish_built_month(settings, lake, JAN)
    publish_built_month(settings, lake, FEB)
    publish_synthetic_lookups(lake, [FEB], seed=1, prefix=settings.storage.lookups_table)  # the rebuild, halfway
    monkeypatch.setattr(online, "PUBLISH_POLL_S", 0.05)
    polls: list[float] = []
    real_sleep = online.time.sleep

    def sleep(seconds: float) -> None:  # the rebuild's features land while the load waits
        polls.append(seconds)
        if len(polls) == 3:
            publish_built_month(settings, lake, FEB, seed=1)
        real_sleep(seconds)

    monkeypatch.setattr(online.time, "sleep", sleep)
    served = read_lookups(settings)
    assert list(served) == ["2013-01", "2013-02"] and len(polls) >= 3
    weather = lookup_table(settings.storage.lookups_table, "weather")
    assert served["2013-02"]["weather"].equals(lake.read_table(weather, [FEB]))


def test_a_month_whose_features_do_not_follow_within_the_wait_is_left_out_and_the_others_served(
        settings: Settings, lake: Lake, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """A publish that died between the lookups and the features: the load does not fail whole (every replica of the
    fleet then failed to start, for every month, until the publish task's bound had passed); after the wait the
    month is left out, with the warning, and the others are served."""
    from tenfold.features import online

    publish_built_month(settings, lake, JAN)
    publish_built_month(settings, lake, FEB)
    publish_synthetic_lookups(lake, [FEB], seed=1, prefix=settings.storage.lookups_table)
    monkeypatch.setattr(online, "PUBLISH_WAIT_S", 0.3)
    monkeypatch.setattr(online, "PUBLISH_POLL_S", 0.05)
    with caplog.at_level(logging.WARNING, logger="tenfold.features.online"):
        assert list(read_lookups(settings)) == ["2013-01"]
    assert "months 2013-02 have lookups of another feature definition or build" in caplog.text
    assert "its publish did not finish yet" in caplog.text


def test_lookups_of_a_publish_whose_features_never_followed_leave_their_month_out(
        settings: Settings, lake: Lake, caplog: pytest.LogCaptureFixture) -> None:
    """Once a publish task's bound (settings.pipelines.build_features.task_timeout_s) has passed since the lookups,
    the features are not coming: the month is left out with a warning to rebuild it, the others are served."""
    publish_built_month(settings, lake, JAN)
    publish_built_month(settings, lake, FEB)
    publish_synthetic_lookups(lake, [FEB], seed=1, prefix=settings.storage.lookups_table)
    bound = settings.pipelines.build_features.task_timeout_s
    now = dt.datetime.now(dt.UTC)
    rewritten = [(settings.storage.features_table, now - dt.timedelta(seconds=3 * bound))]
    rewritten += [(lookup_table(settings.storage.lookups_table, n), now - dt.timedelta(seconds=bound + 60))
                  for n in CONTRACT.lookup_tables]
    for table, when in rewritten:  # the failed publish wrote them that long ago, after the features it left
        manifest = dataclasses.replace(lake.read_manifest(table, FEB), created_at=when.isoformat(timespec="seconds"))
        with lake.fs.open_output_stream(lake.manifest_path(table, FEB)) as out:
            out.write(manifest.to_json().encode())
    with caplog.at_level(logging.WARNING, logger="tenfold.features.online"):
        assert list(read_lookups(settings)) == ["2013-01"]
    assert "months 2013-02 have lookups of another feature definition or build" in caplog.text
    assert "its publish did not finish; run build_features for the month again" in caplog.text


@pytest.mark.parametrize("then", ["stale", "mismatched", "corrupt"])
def test_a_month_waited_for_whose_next_read_decides_it_is_left_out_at_once_for_that_reason(
        settings: Settings, lake: Lake, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
        then: str) -> None:
    """A month whose lookups were of a publish still on its way, read again and then found of another feature
    version, of a publish that failed or corrupt, stayed among the months waited for: read again every poll until
    the wait ran out, then left out as "its publish did not finish yet", hiding what to rebuild and why."""
    from tenfold.data.lake import CorruptManifestError
    from tenfold.features import online

    publish_built_month(settings, lake, JAN)
    publish_built_month(settings, lake, FEB)
    monkeypatch.setattr(online, "PUBLISH_WAIT_S", 2.0)  # the old code read FEB every poll for this long
    monkeypatch.setattr(online, "PUBLISH_POLL_S", 0.01)
    reason = {"stale": "was built with features version 0, but the flights workload now defines version 9",
              "mismatched": "is of another build than the month's published features: its publish did not finish; "
                            "run build_features for the month again",
              "corrupt": "cannot read lookups_weather 2013-02: its manifest is corrupt"}[then]
    real_read = online.read_month_lookups
    reads: list[str] = []

    def read_month_lookups(settings: Settings, workload: object, lake: Lake, part: Partition) -> object:
        reads.append(part.label)
        if part != FEB:
            return real_read(settings, workload, lake, part)  # type: ignore[arg-type]
        if reads.count(FEB.label) == 1:
            raise online.LookupsPublishing("lookups_weather 2013-02 ...: its publish did not finish yet")
        if then == "stale":
            raise online.StaleLookups(f"lookups_weather 2013-02 {reason}")
        if then == "mismatched":
            raise online.MismatchedLookups(f"lookups_weather 2013-02 {reason}")
        raise LookupsUnavailable(reason) from CorruptManifestError("bad json")

    monkeypatch.setattr(online, "read_month_lookups", read_month_lookups)
    with caplog.at_level(logging.WARNING, logger="tenfold.features.online"):
        assert list(read_lookups(settings)) == ["2013-01"]
    assert reads.count(FEB.label) == 2, reads  # waited for once, then decided: never read again
    assert reads.count(JAN.label) == 1, reads
    assert reason in caplog.text
    assert "did not finish yet" not in caplog.text, caplog.text
