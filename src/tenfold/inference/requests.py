"""The scoring request: many feature rows of one partition in one Pub/Sub message.

A request's body is the rows as an Arrow IPC stream (the workload's key and feature columns, as
``build_features`` published them), its buffers compressed with ``settings.inference.request_compression``
(zstd by default: a month of real flights features shrinks about 9x, and bytes are what Pub/Sub moves and
bills, and what the emulator spends the same cores on); its attributes say whose it is and what to score it with:

* ``run``: the run key of the ``batch_inference`` run (where its results go);
* ``request_id``: ``<digest of run and partition>-<batch index>``, the same on every publish of the same
  batch (a retried publish task, ``tenfold dlq replay``), so a result is written once per request id
  whatever Pub/Sub delivers; the publisher's own retries and redeliveries create new message ids, never
  new request ids;
* ``partition``: the features partition (``YYYY-MM``) and ``model_version``: the registry version the run
  resolved once at planning, so every worker scores the run with the same model;
* ``rows``: how many rows the body holds (a body that disagrees is refused).

:func:`plan_batches` cuts a partition's rows (sorted by the contract's keys) into requests of
``settings.inference.rows_per_message`` rows; :func:`decode` refuses a message that is not one, with a
message naming what is wrong (the worker records it and nacks: the dead-letter policy takes it).
"""

from __future__ import annotations

import hashlib
import re
import struct
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pyarrow as pa

RUN = "run"
REQUEST_ID = "request_id"
PARTITION = "partition"
MODEL_VERSION = "model_version"
ROWS = "rows"
REQUIRED_ATTRIBUTES = (RUN, REQUEST_ID, PARTITION, MODEL_VERSION, ROWS)


class RequestError(ValueError):
    """A message that is not a valid scoring request (a poison message); the text says what is wrong."""


def request_id(run_key: str, partition: str, index: int) -> str:
    """The deterministic id of batch ``index`` of ``partition`` in run ``run_key`` (safe as a file name)."""
    digest = hashlib.sha256(f"{run_key}\0{partition}".encode()).hexdigest()[:12]
    return f"{digest}-{index:06d}"


# What a run folder may name a record by: request ids (``request_id``) and ``message-<digest of the message>``.
RECORD_NAME = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,127}$")
# The attributes Pub/Sub adds to a dead-lettered message (its source subscription, its delivery count, ...), and
# the one `tenfold dlq replay` adds (the replay's number): none of them is the publisher's.
_PUBSUB_ADDED = "CloudPubSub"
REPLAY = "replay"


def record_id(attributes: Mapping[str, str], data: bytes) -> str:
    """The name under which a delivery's result, error or dead letter is kept: its request id, or
    ``message-<digest>`` when it has none or one that cannot name a file (too long, ``/``, ``..``): a message is
    often a dead letter *because* its attributes are wrong, and must still be recorded. The digest is of the
    message's body and its publisher's attributes, not its message id: Pub/Sub gives the dead-lettered copy a
    new id, and its record must find the error the worker kept for the original (a replay's copy too)."""
    rid = attributes.get(REQUEST_ID) or ""
    if RECORD_NAME.fullmatch(rid):
        return rid
    digest = hashlib.sha256(bytes(data))
    for key in sorted(k for k in attributes if not k.startswith(_PUBSUB_ADDED) and k != REPLAY):
        digest.update(f"\0{key}\0{attributes[key]}".encode())
    return f"message-{digest.hexdigest()[:16]}"


@dataclass(frozen=True)
class ScoringRequest:
    """One decoded request: its identity and its rows."""

    run: str
    request_id: str
    partition: str
    model_version: str
    rows: pa.Table

    def attributes(self) -> dict[str, str]:
        return {RUN: self.run, REQUEST_ID: self.request_id, PARTITION: self.partition,
                MODEL_VERSION: self.model_version, ROWS: str(self.rows.num_rows)}

    def encode(self, compression: str = "zstd") -> bytes:
        return encode_rows(self.rows, compression)

    def require(self, columns: Sequence[str]) -> None:
        """Refuse rows that lack any of ``columns`` (the model's feature columns)."""
        present = set(self.rows.column_names)
        absent = [c for c in columns if c not in present]
        if absent:
            raise RequestError(f"the rows lack the feature contract's columns {absent}: were they published by another "
                               "version of the workload? re-run batch_inference for the partition")


def encode_rows(rows: pa.Table, compression: str = "zstd") -> bytes:
    """Rows as an Arrow IPC stream, its buffers compressed with ``compression`` (``zstd``, ``lz4`` or ``none``);
    a reader needs no option to read any of them."""
    import pyarrow as pa

    # One thread: a worker or a publisher shares its cores with others, and Arrow's thread pool spends more
    # CPU than the compression it parallelises (a 10,000-row request: 4.5 ms of CPU alone, 5.8-7 in the pool).
    options = pa.ipc.IpcWriteOptions(compression=None if compression == "none" else compression, use_threads=False)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, rows.schema, options=options) as writer:
        writer.write_table(rows)
    return bytes(sink.getvalue().to_pybytes())


# What a request may hold once decompressed: rows_per_message is at most 100,000 (settings), a few hundred bytes a
# row. A body's compressed buffers can claim far more (zstd packs 80 MB of zeros into 3 KB): such a body is refused
# from its metadata, before anything is decompressed, instead of running the worker out of memory (the kernel's
# kill records no reason, and each redelivery kills another worker).
MAX_ROWS = 100_000
MAX_DECODED_BYTES = 256 * 2**20


def _claims(data: bytes) -> tuple[int, int]:
    """The rows and the decompressed bytes that the record batches of the IPC stream ``data`` claim, read from each
    message's flatbuffer metadata and each compressed buffer's length prefix (Arrow's IPC format: a compressed
    buffer starts with its uncompressed length, -1 for one left as it is), decompressing nothing."""
    import pyarrow as pa

    def u32(b: bytes, at: int) -> int:
        return int(struct.unpack_from("<I", b, at)[0])

    def field(b: bytes, table: int, index: int) -> int | None:
        """Where field ``index`` of the flatbuffer table at ``table`` lies, or None when absent."""
        vtable = table - int(struct.unpack_from("<i", b, table)[0])
        size = int(struct.unpack_from("<H", b, vtable)[0])
        at = 4 + 2 * index
        offset = int(struct.unpack_from("<H", b, vtable + at)[0]) if at < size else 0
        return table + offset if offset else None

    def target(b: bytes, at: int | None) -> int | None:
        return None if at is None else at + u32(b, at)

    rows = decoded = 0
    schema = False
    for message in pa.ipc.MessageReader.open_stream(pa.py_buffer(data)):
        schema = schema or message.type == "schema"
        if message.type not in ("record batch", "dictionary batch"):
            continue
        meta = message.metadata.to_pybytes()
        header = target(meta, field(meta, u32(meta, 0), 2))  # Message.header
        if header is None:
            raise ValueError("a batch message without its header")
        batch = target(meta, field(meta, header, 1)) if message.type == "dictionary batch" else header
        if batch is None:
            raise ValueError("a dictionary batch without its data")
        length = field(meta, batch, 0)  # RecordBatch.length
        if message.type == "record batch" and length is not None:
            rows += int(struct.unpack_from("<q", meta, length)[0])
        buffers, body = target(meta, field(meta, batch, 2)), message.body  # RecordBatch.buffers: {offset, length}
        if buffers is None:
            continue
        compressed = field(meta, batch, 3) is not None  # RecordBatch.compression
        for i in range(u32(meta, buffers)):
            offset, size = struct.unpack_from("<qq", meta, buffers + 4 + 16 * i)
            if offset < 0 or size < 0:
                raise ValueError(f"buffer {i} of a batch has a negative offset or length")
            if not compressed or size < 8:  # (an empty buffer has no prefix)
                decoded += size
                continue
            claimed = int(struct.unpack_from("<q", body, offset)[0])
            if claimed < -1:
                raise ValueError(f"buffer {i} of a batch claims a negative length")
            decoded += size - 8 if claimed == -1 else claimed
    if not schema:
        raise ValueError("it holds no schema message")
    return rows, decoded


def decode(data: bytes, attributes: Mapping[str, str], columns: Sequence[str] = ()) -> ScoringRequest:
    """The request a message carries, or :class:`RequestError` naming what is wrong with it.

    ``columns``: the feature contract's columns the rows must hold (the scorer's model needs them).
    """
    import pyarrow as pa

    missing = [a for a in REQUIRED_ATTRIBUTES if not attributes.get(a)]
    if missing:
        raise RequestError(f"attributes {missing} are missing: a scoring request carries {list(REQUIRED_ATTRIBUTES)} "
                           "(publish requests with tenfold.inference.publish, not by hand)")
    def not_a_stream(exc: Exception) -> RequestError:
        return RequestError(f"the body is not an Arrow IPC stream of feature rows ({len(data)} bytes, starts "
                            f"{bytes(data[:16])!r}): {exc}")

    try:
        claimed_rows, claimed_bytes = _claims(data)
    except (pa.ArrowException, OSError, ValueError, struct.error) as exc:
        raise not_a_stream(exc) from exc
    try:
        expected = int(attributes[ROWS])
    except ValueError:
        raise RequestError(f"attribute rows={attributes[ROWS]!r} is not a whole number") from None
    if not 0 <= expected <= MAX_ROWS:
        raise RequestError(f"attribute rows={expected} is outside 0..{MAX_ROWS:,} (rows_per_message's bounds): "
                           "publish requests with tenfold.inference.publish")
    if claimed_bytes > MAX_DECODED_BYTES:
        raise RequestError(f"the body is {len(data):,} bytes that would decompress to {claimed_bytes:,} (more than "
                           f"{MAX_DECODED_BYTES:,}): too large for one request; not decompressed")
    if claimed_rows != expected:
        raise RequestError(f"the body holds {claimed_rows} rows but attribute rows says {expected}: a truncated message")
    try:
        with pa.ipc.open_stream(pa.py_buffer(data), options=pa.ipc.IpcReadOptions(use_threads=False)) as reader:
            rows = reader.read_all()
    except (pa.ArrowException, OSError) as exc:
        raise not_a_stream(exc) from exc
    if rows.num_rows != expected:
        raise RequestError(f"the body holds {rows.num_rows} rows but attribute rows says {expected}: a truncated message")
    if not RECORD_NAME.fullmatch(attributes[REQUEST_ID]):
        raise RequestError(f"attribute request_id={attributes[REQUEST_ID][:80]!r} is not a request id (letters, digits, "
                           "'_', '-', '.', at most 128): publish requests with tenfold.inference.publish")
    if not RECORD_NAME.fullmatch(attributes[RUN]):
        raise RequestError(f"attribute run={attributes[RUN][:80]!r} is not a run key (letters, digits, '_', '-', '.', "
                           "at most 128): publish requests with tenfold.inference.publish")
    request = ScoringRequest(run=attributes[RUN], request_id=attributes[REQUEST_ID], partition=attributes[PARTITION],
                             model_version=attributes[MODEL_VERSION], rows=rows)
    request.require(columns)
    return request


def plan_batches(rows: pa.Table, *, run_key: str, partition: str, model_version: str,
                 rows_per_message: int) -> Iterator[ScoringRequest]:
    """The requests of one partition, in order: ``rows`` must already be in the contract's total order."""
    for index, start in enumerate(range(0, rows.num_rows, rows_per_message)):
        yield ScoringRequest(run=run_key, request_id=request_id(run_key, partition, index), partition=partition,
                             model_version=model_version, rows=rows.slice(start, rows_per_message))


def batch_count(num_rows: int, rows_per_message: int) -> int:
    return -(-num_rows // rows_per_message)
