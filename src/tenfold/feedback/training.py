"""The feedback join's labelled set as training rows: served flights with their observed outcomes, featurized.

``train_model``'s plan calls :func:`feedback_training_set` and :func:`write_training_input`; the training
worker reads the file beside the features partitions (:func:`tenfold.training.data.read_feedback`) and
weighs each of its rows ``weight`` features rows in the loss. docs/feedback.md ("Retraining with feedback")
says why each rule is what it is:

* **only the training window.** A served request carries no features, so it is assembled with the
  workload's online assembly (:meth:`tenfold.workloads.OnlineFeatures.assemble`, the server's own code)
  over the lookup tables ``build_features`` published *for the training window's months only*. Online
  assembly scores only the months whose lookups it holds (``OnlineFeatures.months``) and refuses any other
  request (``RequestInvalid``), so a flight of a holdout month, or of any month outside the window, can
  never become a training row: no leakage into the gate's holdout, whenever the request was served.
* **one row per flight.** Rows are deduplicated on the contract's key columns (a flight asked about
  twice is one flight); the latest observation wins, as in the join (:func:`tenfold.feedback.upsert.latest_per_key`):
  the latest ``observed_at`` when every row of the flight has one, else the latest ``feedback_received_at``; then the
  later ``served_at``, then the higher prediction id.
* **bounded.** At most ``max_rows`` rows, the latest observed (``observed_at``, else ``feedback_received_at``).
* **deterministic.** The rows are sorted by the key columns and written with fixed Parquet options, so the
  same labelled partitions give the same bytes (and the same SHA-256 the run records).

Try it (the months of the training window)::

    python -m tenfold.feedback.training 2013-01 2013-06
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from tenfold.config import Settings
from tenfold.data.lake import CorruptManifestError, Lake, LakeError, MissingManifestError, Partition, month_range
from tenfold.features.online import LookupsUnavailable, StaleLookups, read_month_lookups
from tenfold.feedback.metrics import labelled_lineage, labelled_rows
from tenfold.feedback.upsert import latest_per_key
from tenfold.fsio import atomic_write
from tenfold.workloads import RequestInvalid, Workload, get_workload, lookup_table

__all__ = ["WEIGHT_COLUMN", "FeedbackError", "FeedbackSet", "LookupsInFlight", "feedback_training_set", "write_training_input"]

log = logging.getLogger(__name__)

# The per-row sample weight column (tenfold.training.data.FEEDBACK_WEIGHT_COLUMN reads it; a test keeps them equal).
WEIGHT_COLUMN = "sample_weight"
# Online assembly in chunks: a batch of requests is built into Arrow at once, a bounded one.
_CHUNK = 20_000


LINEAGE_TRIES = 3


class FeedbackError(ValueError):
    """The feedback cannot be turned into training rows; the message says what to fix."""


class FeedbackRepublished(FeedbackError):
    """A labelled month was re-published (the running sink's join) during each read of it: a later read meets a quiet
    moment, so a pipeline step leaves it to its retries (``retryable``)."""

    retryable = True


class LookupsInFlight(FeedbackError):
    """A month's lookup tables are of another build than its published features, or were published again while they
    were read: build_features publishes the lookups first and the features after, so a read between the two meets
    this, and a later read finds the publish finished (``retryable``); so does a read the lake refused for now (a
    download damaged in transit). A publish that failed between the two says so on every try, with what to run."""

    retryable = True


@dataclass(frozen=True)
class FeedbackSet:
    """The training rows (the contract's online columns, its label and :data:`WEIGHT_COLUMN`) and how they were chosen."""

    table: pa.Table
    summary: dict[str, Any] = field(default_factory=dict)

    @property
    def rows(self) -> int:
        return int(self.table.num_rows)


def _window_lookups(settings: Settings, workload: Workload, lake: Lake, months: Sequence[Partition]) -> dict[str, dict[str, pa.Table]]:
    """The published lookup tables of each of ``months`` that has all of them (version-checked)."""
    contract = workload.contract
    prefix = settings.storage.lookups_table
    out: dict[str, dict[str, pa.Table]] = {}
    for part in months:
        names = [lookup_table(prefix, n) for n in contract.lookup_tables]
        if not all(lake.has_manifest(t, part) for t in names):
            log.warning("feedback of %s cannot be featurized: its lookup tables are not published (rebuild the month "
                        "with build_features)", part.label)
            continue
        try:
            out[part.label] = read_month_lookups(settings, workload, lake, part)
        except LookupsUnavailable as exc:
            # Another feature definition's lookups, or a manifest that fails its checks, are read the same way again;
            # the rest (a publish in flight, a read the lake refused now) are a retry's to mend. Refused at once, a
            # build_features publish that train_model's plan read halfway failed the run (and spent its drift event).
            # A manifest gone since it was listed (withdrawn) is no publish in flight either: lookups go first.
            permanent = (isinstance(exc, StaleLookups)
                         or isinstance(exc.__cause__, (CorruptManifestError, MissingManifestError)))
            raise (FeedbackError if permanent else LookupsInFlight)(f"{exc}; or train with feedback_weight 0") from exc
    return out


def feedback_training_set(settings: Settings, months: Sequence[Partition], *, weight: float, max_rows: int) -> FeedbackSet:
    """The labelled rows whose flights fall in ``months`` (the training window), featurized and weighted.

    Reads every published partition of ``settings.storage.labelled_table`` (partitioned by when the request
    was served, which says nothing about the flight's own month), keeps the rows with an outcome, and
    assembles their requests with the window's lookups only (see the module docstring). ``summary`` says
    how many rows each rule removed and which labelled partitions were read (for the model's lineage).
    """
    workload = get_workload(settings)
    contract = workload.contract
    lake = Lake.from_settings(settings)
    labelled_parts = lake.published_partitions(settings.storage.labelled_table)
    # The lineage must name the versions the rows came from: the running sink re-publishes the current month as
    # feedback lands (a publish deletes the folder it replaces), so each month's manifest is read again after its
    # rows, and that month's read is repeated while it moved (month by month: a read of all history could take
    # longer than the sink's joins are apart, and never see a quiet moment).
    lineage: dict[str, dict[str, Any]] = {}
    parts_rows: list[pa.Table] = []
    for part in labelled_parts:
        for _ in range(LINEAGE_TRIES):
            named = labelled_lineage(settings, [part])
            got = labelled_rows(settings, months=[part])
            if labelled_lineage(settings, [part]) == named:
                break
        else:
            raise FeedbackRepublished(f"{settings.storage.labelled_table} {part.label} was re-published during each of "
                                f"{LINEAGE_TRIES} reads: retry (or train with feedback_weight 0)")
        lineage.update(named)
        parts_rows.append(got)
    rows = pa.concat_tables(parts_rows) if parts_rows else None
    summary: dict[str, Any] = {
        "weight": weight, "train_months": [p.label for p in months], "labelled_table": settings.storage.labelled_table,
        "labelled_partitions": lineage,
    }
    empty = FeedbackSet(_empty(contract), {**summary, "rows": 0})
    if rows is None or rows.num_rows == 0:
        return FeedbackSet(empty.table, {**empty.summary, "labelled_rows": 0, "note": "no labelled feedback yet"})
    lookups = _window_lookups(settings, workload, lake, months)
    summary["labelled_rows"] = rows.num_rows
    summary["lookup_months"] = sorted(lookups)
    if not lookups:
        return FeedbackSet(empty.table, {**empty.summary, **summary, "rows": 0,
                                         "note": "no month of the training window has its lookup tables published"})
    online = workload.online_features(lookups)

    model = workload.request_model
    invalid = 0
    refused: Counter[str] = Counter()
    requests: list[Any] = []
    kept: list[int] = []
    for i, body in enumerate(rows["request"].to_pylist()):
        try:
            request = model.model_validate_json(body)
        except ValueError:  # pydantic's ValidationError: a body the server would have refused with a 422
            invalid += 1
            continue
        try:
            online.check(request)
        except RequestInvalid as exc:
            refused[exc.field] += 1
            continue
        requests.append(request)
        kept.append(i)
    summary["invalid_requests"] = invalid
    summary["outside_window_or_unassemblable"] = dict(sorted(refused.items()))
    if not requests:
        return FeedbackSet(empty.table, {**summary, "rows": 0})
    parts = [online.assemble(requests[s:s + _CHUNK]) for s in range(0, len(requests), _CHUNK)]
    features = pa.concat_tables(parts)
    label_type = contract.arrow_schema().field(contract.label).type
    chosen = rows.take(pa.array(kept))
    features = features.append_column(contract.label, chosen["outcome"].cast(label_type))

    # One row per flight, the latest observation of it; then the max_rows flights observed last.
    ranking = {"_observed": chosen["observed_at"], "_received": chosen["feedback_received_at"],
               "_served": chosen["served_at"], "_pid": chosen["prediction_id"]}
    ranked = features
    for name, column in ranking.items():
        ranked = ranked.append_column(name, column)
    first = latest_per_key(ranked, list(contract.key_columns), observed="_observed", received="_received",
                           then=[("_served", "descending"), ("_pid", "descending")])
    summary["duplicates"] = features.num_rows - first.num_rows
    capped = max(0, first.num_rows - max_rows)
    summary["capped"] = capped
    newest = pc.sort_indices(pa.table({
        "observed": pc.coalesce(first["_observed"], first["_received"]), "served": first["_served"],
        "pid": first["_pid"]}), sort_keys=[("observed", "descending"), ("served", "descending"), ("pid", "descending")])
    features = first.take(newest[:max_rows]).drop_columns(list(ranking))
    features = features.sort_by([(c, "ascending") for c in contract.key_columns])
    features = features.append_column(WEIGHT_COLUMN, pa.array([float(weight)] * features.num_rows, pa.float64()))
    summary["rows"] = features.num_rows
    return FeedbackSet(features, summary)


def _empty(contract: Any) -> pa.Table:
    schema = contract.arrow_schema()
    fields = [schema.field(c) for c in contract.online_columns] + [schema.field(contract.label),
                                                                   pa.field(WEIGHT_COLUMN, pa.float64())]
    return pa.schema(fields).empty_table()


def parquet_bytes(table: pa.Table) -> bytes:
    """``table`` as Parquet with fixed options: the same rows give the same bytes."""
    sink = io.BytesIO()
    pq.write_table(table, sink, compression="zstd", write_statistics=False, use_dictionary=False,
                   store_schema=True, row_group_size=1 << 20)
    return sink.getvalue()


def write_training_input(table: pa.Table, folder: str, *, storage_client: Any = None) -> tuple[str, str]:
    """Write ``table`` under ``folder`` (a local folder or a ``gs://`` prefix) as ``feedback-<sha>.parquet``.

    The name is the content's SHA-256, so a retried plan that selected the same rows finds its file and one
    that selected other rows writes another, never changing a file a training job may be reading. Returns
    ``(uri, sha256)``.
    """
    body = parquet_bytes(table)
    digest = hashlib.sha256(body).hexdigest()
    name = f"feedback-{digest[:16]}.parquet"
    if folder.startswith("gs://"):
        from google.api_core.exceptions import PreconditionFailed

        if storage_client is None:
            raise FeedbackError("writing the feedback training input to gs:// needs a storage client")
        from tenfold.storage import split_gs_uri

        bucket, prefix = split_gs_uri(folder)
        blob_name = f"{prefix}/{name}" if prefix else name
        with contextlib.suppress(PreconditionFailed):  # written by an earlier attempt: same name, same bytes
            storage_client.bucket(bucket).blob(blob_name).upload_from_string(body, if_generation_match=0)
        return f"gs://{bucket}/{blob_name}", digest
    path = Path(folder) / name
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, body)  # a write that failed (a full disk) leaves no tmp behind
    return str(path), digest


def main(argv: Sequence[str] | None = None) -> int:
    """Print what a training run over the months ``FIRST LAST`` would take from the feedback (nothing is written)."""
    import argparse
    import json

    from tenfold.config import get_settings, settings_refusal
    from tenfold.outages import debug_requested, ending

    command = "python -m tenfold.feedback.training"
    parser = argparse.ArgumentParser(prog=command, description=main.__doc__)
    parser.add_argument("first")
    parser.add_argument("last")
    args = parser.parse_args(argv)
    # As common.run_main does for the pipelines' commands (which this package may not import): settings that do not
    # parse (a TENFOLD_* value, an unknown TENFOLD_ENV) are bad usage, one line and exit 2, never pydantic's traceback.
    try:
        settings = get_settings()
    except ValueError as exc:
        print(settings_refusal(exc), file=sys.stderr)
        return 2
    try:
        months = month_range(args.first, args.last)
        got = feedback_training_set(settings, months, weight=settings.training.feedback_weight,
                                    max_rows=settings.training.feedback_max_rows)
    except (ValueError, LakeError) as exc:
        print(f"feedback: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # a lake away, a full disk, no credentials, a fault: tenfold.outages' one line
        if debug_requested():
            raise
        print(ending(exc, command, settings.local.home, debug_hint="with TENFOLD_DEBUG=1"), file=sys.stderr)
        return 1
    print(json.dumps(got.summary, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
