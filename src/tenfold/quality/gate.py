"""The validation gate: a Great Expectations suite over one partition's Parquet, before anyone reads it.

Two entry points, one per kind of batch:

* :func:`validate_partition` checks a **staged** batch (a job's output, not yet published). On failure
  the staged folder moves to ``quarantine/<table>/year=/month=/<attempt>/`` with a
  ``_QUARANTINED.json`` naming the failed expectations, so nothing is published;
* :func:`validate_published` checks a **published** input partition (e.g. raw flights a job is about
  to read): its files must match their manifest (a truncated file fails here) and the rows must pass
  the suite. On failure the partition is unpublished (manifest removed first, so readers stop seeing
  it at once) and its data moved to quarantine; the next ingest of that month publishes it afresh.

Either way the validation results are rendered as Data Docs (:func:`data_docs_location`), an alert is
sent (:func:`tenfold.monitoring.alerts.send_alert`) and :class:`ValidationFailed` is raised, naming the
failing expectations, where the batch went and what to do.

GX runs in an ephemeral context with a pandas datasource: the batch is read with pyarrow through the
lake's filesystem (``file://`` or ``gs://``) and handed over as a DataFrame. GX's Spark extra pins an
older PySpark, and a month is ~30k rows, which pandas validates in about a second.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import itertools
import json
import logging
import math
import os
import posixpath
import re
import urllib.parse
from collections.abc import Collection, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from tenfold.config import Settings
from tenfold.data.lake import DamagedInTransit, Lake, LakeError, Manifest, MissingManifestError, Partition
from tenfold.monitoring.alerts import Sent, send_alert
from tenfold.outages import not_the_data
from tenfold.quality.suites import (
    SuiteError,
    check_not_null_covered,
    load_suite,
    load_suite_dict,
    partition_parameters,
    suite_path,
)
from tenfold.workloads import get_workload

if TYPE_CHECKING:
    import pandas as pd
    from great_expectations.data_context import AbstractDataContext

    from tenfold.quality.datadocs import DocsSite

log = logging.getLogger(__name__)

DOCS_SITE = "tenfold"
READ_CHECK = "parquet_is_readable"  # the pseudo-expectation a batch fails when its files cannot be read
_MAX_EXAMPLES = 5
# A suite's name is the stem of a file in the workload's suite folder: no '/' (nor '..'), so none is read elsewhere.
_SUITE_NAME = re.compile(r"[A-Za-z0-9_.-]+")


class AlreadyRefused(LakeError):
    """A refused batch was validated again: the first verdict stands; its job must stage the batch again."""

    retryable = False
    alerted = False  # True when this refusal sent its own alert, and every alert hook took it
    undelivered: tuple[str, ...] = ()  # the hooks that did not take its own alert


@dataclass(frozen=True)
class ExpectationOutcome:
    """The result of one expectation, reduced to what a person needs to act on it."""

    expectation: str
    column: str | None
    success: bool
    observed: Any = None
    unexpected_count: int | None = None
    unexpected_examples: list[Any] = field(default_factory=list)
    bounds: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    # The columns it names that the batch lacks (GX raised on it for that): the data's failure, not the suite's error.
    missing_columns: list[str] = field(default_factory=list)

    def describe(self) -> str:
        name = f"{self.expectation}({self.column})" if self.column else self.expectation
        if self.missing_columns:
            what = "column" if len(self.missing_columns) == 1 else "columns"
            return f"{name}: {what} {', '.join(self.missing_columns)} missing from the batch"
        if self.error:
            return f"{name}: {self.error}"
        parts = []
        if self.bounds:
            parts.append("expected " + ", ".join(f"{k}={_short(v)}" for k, v in self.bounds.items()))
        if self.observed is not None:
            parts.append(f"observed {_short(self.observed)}")
        if self.unexpected_count:
            parts.append(f"{self.unexpected_count} unexpected values, e.g. {_short(self.unexpected_examples)}")
        return f"{name}: {'; '.join(parts)}" if parts else name


@dataclass(frozen=True)
class ValidationReport:
    table: str
    partition: str  # YYYY-MM
    suite: str
    batch_uri: str
    success: bool
    evaluated: int
    outcomes: tuple[ExpectationOutcome, ...]
    rows: int | None = None
    data_docs: str | None = None
    quarantine_uri: str | None = None
    # A published partition (validate_published) that failed: withdrawn from readers, not a batch never published.
    withdrawn: bool = False

    @property
    def failures(self) -> list[ExpectationOutcome]:
        return [o for o in self.outcomes if not o.success]

    @property
    def errored(self) -> list[ExpectationOutcome]:
        """The failures Great Expectations raised on (a row_condition pandas refuses, a wrong kwarg): the suite's
        fault, where the others are the data's. A batch that cannot be read is neither (READ_CHECK); one that lacks a
        column an expectation names is the data's (GX raises on it: ``missing_columns``)."""
        return [o for o in self.failures if o.error and not o.missing_columns and o.expectation != READ_CHECK]

    @property
    def failed_expectations(self) -> list[str]:
        """Failed expectations as ``type(column)``, e.g. ``expect_column_mean_to_be_between(label)``."""
        return [f"{o.expectation}({o.column})" if o.column else o.expectation for o in self.failures]

    def summary(self) -> str:
        head = f"{self.table} {self.partition} vs suite {self.suite!r}: "
        if self.success:
            return head + f"all {self.evaluated} expectations passed ({self.rows} rows)"
        lines = [head + f"{len(self.failures)} of {self.evaluated} expectations failed"]
        lines += [f"  - {o.describe()}" for o in self.failures]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        body = asdict(self)
        body["failed_expectations"] = self.failed_expectations
        return body


class ValidationFailed(RuntimeError):
    """A batch failed its suite: it was quarantined, not published; the message says what to do."""

    def __init__(self, report: ValidationReport, *, alerted: bool = False, undelivered: tuple[str, ...] = ()) -> None:
        self.report = report
        self.alerted = alerted  # read by the Airflow failure callback, so one failure alerts once (once delivered)
        self.undelivered = undelivered  # the hooks that did not take the alert: the callback sends to those alone
        if report.withdrawn:
            # It was published: readers used it, and what was built from it before read it as it was then.
            what = ("The published partition was withdrawn (its manifest removed: readers no longer see it)"
                    + (f" and quarantined at {report.quarantine_uri}." if report.quarantine_uri else ".")
                    + " What was built from it before read it as it was then; rebuild that too once the month is "
                      "fixed.")
        else:
            what = "Nothing was published." + (f" The batch was quarantined at {report.quarantine_uri}."
                                                if report.quarantine_uri else "")
        docs = f" Data Docs: {report.data_docs}." if report.data_docs else ""
        # A batch whose files cannot be read, or that lacks a column, failed no bound: the suite is not what to change.
        bound = ("" if all(o.expectation == READ_CHECK or o.missing_columns for o in report.failures) else
                 f"; if a bound is wrong rather than the data, change it in {report.suite}.json in the workload's "
                 "suite folder (its expectations_dir: src/tenfold/workloads/flights/expectations/ for flights)")
        # Failures of the data and errors of the suite at once: the data is refused, and the suite's errors named.
        faulty = (f" The suite is at fault too: Great Expectations could not evaluate "
                  f"{', '.join(_names(report.errored))}; fix {'them' if len(report.errored) > 1 else 'it'} in "
                  f"{report.suite}.json." if report.errored else "")
        super().__init__(f"{report.summary()}\n{what}{docs} Fix the input or the job for {report.partition} and "
                         f"re-run it{bound}.{faulty}")


# --- helpers ---------------------------------------------------------------------------------------


def _names(outcomes: Sequence[ExpectationOutcome]) -> list[str]:
    return [f"{o.expectation}({o.column})" if o.column else o.expectation for o in outcomes]


def _short(value: Any, limit: int = 120) -> str:
    text = json.dumps(value, default=str) if not isinstance(value, str) else value
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _plain(value: Any) -> Any:
    """numpy/pandas scalars and containers to JSON-able Python values."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "item") and callable(value.item):  # numpy scalar
        try:
            value = value.item()
        except (ValueError, TypeError):
            return str(value)
    if isinstance(value, float) and math.isnan(value):
        return None
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def _parquet_files(lake: Lake, folder: str) -> list[str]:
    selector = pafs.FileSelector(folder, allow_not_found=True)
    infos = lake.fs.get_file_info(selector)
    return sorted(i.path for i in infos if i.type == pafs.FileType.File and i.base_name.endswith(".parquet"))


def _is_dir(lake: Lake, path: str) -> bool:
    return bool(lake.fs.get_file_info(path).type == pafs.FileType.Directory)


def read_batch(lake: Lake, paths: list[str]) -> pa.Table:
    """The Parquet files ``paths`` (lake filesystem paths) as one Arrow table; a clear error when there are none."""
    if not paths:
        raise LakeError("the batch holds no .parquet files")
    return pa.concat_tables([pq.read_table(p, filesystem=lake.fs) for p in paths], promote_options="default")


def to_frame(table: pa.Table) -> pd.DataFrame:
    """An Arrow batch as the DataFrame the suites expect."""
    import pandas as pd

    # Nullable pandas dtypes keep an int32 column with nulls int32 (numpy would make it float64), so the
    # suites' type expectations see the types the Parquet carries.
    mapping = {pa.int32(): pd.Int32Dtype(), pa.int64(): pd.Int64Dtype(), pa.string(): pd.StringDtype(),
               pa.large_string(): pd.StringDtype(), pa.bool_(): pd.BooleanDtype()}
    return table.to_pandas(types_mapper=mapping.get)


def data_docs_location(settings: Settings) -> str:
    """Where Data Docs are written: a local folder, or ``gs://<artifacts bucket>/<prefix>`` in the cloud."""
    prefix = settings.monitoring.data_docs_prefix
    if settings.is_local:
        return str(settings.local.home / prefix)
    return f"gs://{settings.storage.artifacts_bucket}/{prefix}"


def _filesystem_backend(settings: Settings, folder: Path) -> dict[str, Any]:
    """The GX store backend of a Data Docs folder: locally one that writes each file whole (a full disk leaves the
    old file, never a torn one: see :class:`tenfold.quality.datadocs.AtomicFilesystemStoreBackend`)."""
    if not settings.is_local:
        # In the cloud the folder is a throwaway working copy, pushed to the bucket only after a build that succeeded
        # (tenfold.quality.datadocs.docs_site): a write cut short there never reaches the site.
        return {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(folder)}
    return {"module_name": "tenfold.quality.datadocs", "class_name": "AtomicFilesystemStoreBackend",
            "base_directory": str(folder)}


def _docs_site(settings: Settings, root: Path) -> dict[str, Any]:
    # tenfold.quality.datadocs: the index lists every validation of the site, and locally the pages load their
    # scripts and styles from the site itself, so they work offline (in the cloud they keep GX's CDN URLs).
    from tenfold.quality.datadocs import vendor_assets_dir

    return {
        "module_name": "tenfold.quality.datadocs",
        "class_name": "OfflineSiteBuilder",
        "store_backend": _filesystem_backend(settings, root),
        "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
        "vendor_assets": str(vendor_assets_dir()) if settings.is_local else None,
    }


def _context(settings: Settings, *, docs_root: Path | None) -> AbstractDataContext:
    """An ephemeral GX context; with ``docs_root``, one whose Data Docs site is built in that folder."""
    # No usage statistics from a data pipeline (and no network from the test machines).
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
    import great_expectations as gx
    from great_expectations.data_context.types.base import (
        DataContextConfig,
        InMemoryStoreBackendDefaults,
        ProgressBarsConfig,
    )

    from tenfold.quality.datadocs import RESULTS_FOLDER

    # In-memory stores; the only docs site is ours (the default one writes to a temp folder nobody reads).
    stores = InMemoryStoreBackendDefaults(init_temp_docs_sites=False)
    if docs_root is not None:
        # The site's index is built from the results store: kept beside the pages, every earlier validation
        # stays listed (an in-memory store would list this one alone).
        stores.stores[stores.validation_results_store_name]["store_backend"] = _filesystem_backend(
            settings, docs_root / RESULTS_FOLDER)
    config = DataContextConfig(
        store_backend_defaults=stores,
        data_docs_sites={DOCS_SITE: _docs_site(settings, docs_root)} if docs_root is not None else {},
        analytics_enabled=False,
        progress_bars=ProgressBarsConfig(globally=False),
    )
    return gx.get_context(mode="ephemeral", project_config=config)


def _named_columns(kwargs: Mapping[str, Any]) -> list[str]:
    """The batch columns an expectation's kwargs name (``column``, ``column_A``/``column_B``, ``column_list``)."""
    named = [kwargs.get(k) for k in ("column", "column_A", "column_B")]
    listed = kwargs.get("column_list")
    named += listed if isinstance(listed, list) else []
    return [c for c in named if isinstance(c, str)]


def _outcomes(results: Any, columns: Collection[str]) -> list[ExpectationOutcome]:
    """The outcomes of a validation of a batch with ``columns``."""
    out = []
    for r in results:
        config = r.expectation_config
        kwargs = dict(config.kwargs)
        result = r.result or {}
        info = r.exception_info or {}
        # GX reports an exception either flat or keyed by metric; take the first message either way.
        if "raised_exception" not in info and info:
            info = next(iter(info.values()))
        error = info.get("exception_message") if info.get("raised_exception") else None
        # GX raises on an expectation of a column the batch lacks: the batch's failure (a job that stopped writing
        # it), not the suite's error (which refused it as "the suite is at fault", or, with no column-list
        # expectation to fail beside it, left the batch staged as the suite's fault alone).
        missing = list(dict.fromkeys(c for c in _named_columns(kwargs) if c not in columns)) if error else []
        bounds = {k: kwargs[k] for k in ("min_value", "max_value", "value_set", "regex", "mostly", "type_", "column_list")
                  if kwargs.get(k) is not None}
        if isinstance(bounds.get("value_set"), list) and len(bounds["value_set"]) > 10:
            bounds["value_set"] = f"{len(bounds['value_set'])} values"
        if "column_list" in bounds:
            bounds["column_list"] = f"{len(bounds['column_list'])} columns"
        out.append(
            ExpectationOutcome(
                expectation=config.type,
                column=kwargs.get("column"),
                success=bool(r.success),
                observed=_plain(result.get("observed_value")),
                unexpected_count=_plain(result.get("unexpected_count")),
                unexpected_examples=_plain(list(result.get("partial_unexpected_list") or [])[:_MAX_EXAMPLES]),
                bounds=_plain(bounds),
                error=None if missing else error,
                missing_columns=missing,
            )
        )
    return out


def run_suite(
    settings: Settings,
    frame: pd.DataFrame,
    *,
    table: str,
    part: Partition,
    suite_name: str,
    batch_uri: str,
    docs: bool = True,
    run_name: str | None = None,
    lake: Lake | None = None,
    parameters: dict[str, Any] | None = None,
    suite_checked: bool = False,
) -> ValidationReport:
    """Validate a DataFrame with ``suite_name`` for ``part``; writes Data Docs when ``docs``. No side effects else.

    Data Docs are best effort: when they cannot be written (their bucket refuses or is away) the suite runs again
    without them (``data_docs`` None), so the verdict, and with it a refusal's quarantine and alert, never depends on
    them: a Data Docs error used to escape as the task's error, the refused batch left staged and unalerted.

    Raises :class:`~tenfold.quality.suites.SuiteError` when every expectation that failed raised inside GX (a
    row_condition pandas refuses, a wrong kwarg): the suite is at fault, not the batch, which must then be neither
    quarantined nor withdrawn. ``lake``: where the features suite's month finds its history months (default: the
    settings' lake; see :func:`suite_parameters`); ``parameters``: those already worked out (a verdict's digest
    covers them, so the run must use the very same); ``suite_checked``: the caller ran :func:`check_suite` already
    (before it read the batch), which is not done twice.
    """
    from tenfold.quality.datadocs import docs_site

    # A suite that cannot run is refused once, here: met inside the Data Docs attempt, it was logged as a Data Docs
    # failure first (a misleading line before the real one).
    if not suite_checked:
        check_suite(settings, suite_name)
    if parameters is None:
        parameters = suite_parameters(settings, lake, part, suite_name)
    report = None
    if docs:
        try:
            # Locally the site itself; in the cloud a working copy of the bucket's, pushed back when the block ends.
            with docs_site(settings) as site:
                report = _run_suite(settings, frame, table=table, part=part, suite_name=suite_name,
                                    batch_uri=batch_uri, site=site, run_name=run_name, parameters=parameters)
        except Exception as exc:  # a fault of the suite itself meets the run below again, and is raised there
            log.warning("validating %s %s with Data Docs failed (%s: %s): validating it again without them (a fault "
                        "of the suite itself is raised then)", table, part.label, type(exc).__name__, str(exc)[:300])
    if report is None:
        report = _run_suite(settings, frame, table=table, part=part, suite_name=suite_name, batch_uri=batch_uri,
                            site=None, run_name=run_name, parameters=parameters)
    if report.failures and len(report.errored) == len(report.failures):
        # Refused as bad data, a good published month (and the history months read with it) was withdrawn and
        # quarantined for a typo in the suite, and the refusal said to fix the input.
        path = suite_path(suite_name, get_workload(settings).expectations_dir)
        docs_note = f" (Data Docs: {report.data_docs})" if report.data_docs else ""
        raise SuiteError(f"{path}: Great Expectations could not evaluate "
                         f"{'; '.join(_short(o.describe().replace(chr(10), ' '), 300) for o in report.errored)}, on "
                         f"{table} {part.label}{docs_note}; the batch was neither quarantined nor withdrawn, as the "
                         "suite is at fault, not the data: fix the expectation (its row_condition or an argument), "
                         "then run again")
    return report


def check_suite(settings: Settings, suite_name: str) -> None:
    """Refuse a suite that cannot run, before any batch is read: a name that is no file of the workload's suite folder
    (one with a '/' or '..' was looked up outside it), a suite missing there, or one GX or the contract rejects.

    Raises :class:`~tenfold.quality.suites.SuiteError`, one line naming the suite and what to do. Checked only when
    the suite was to run, such an error surfaced first as a Data Docs failure (validated again without them), then
    as the error itself, and ``tenfold quality check`` read the whole partition before saying the suite was unknown.
    """
    workload = get_workload(settings)
    root = workload.expectations_dir
    malformed = not _SUITE_NAME.fullmatch(suite_name) or ".." in suite_name
    if malformed or not suite_path(suite_name, root).is_file():
        available = ", ".join(sorted(p.stem for p in root.glob("*.json"))) or "none"
        what = ("is not a suite name (letters, digits, '_', '.' and '-' only: a suite is a file of the suite folder)"
                if malformed else "does not exist")
        raise SuiteError(f"suite {suite_name!r} {what}: the suites in {root} are {available}; name one of them, or "
                         f"add <name>.json there")
    if suite_name == workload.features_suite:
        check_not_null_covered(suite_name, root, workload.contract.non_null_columns)
    load_suite(suite_name, root)


def suite_parameters(settings: Settings, lake: Lake | None, part: Partition, suite_name: str) -> dict[str, Any]:
    """The ``$PARAMETER`` values of ``suite_name`` for ``part`` (:func:`~tenfold.quality.suites.partition_parameters`).

    For the workload's features suite, whether the month has history: history-table months published in the window
    before it, as the feature job finds them (:func:`tenfold.features.job.history_parts`). With none (the first
    month), its history aggregates are rightly all null; with some, a join that left them all null is refused.
    ``lake``: the lake to look in (default: the settings')."""
    workload = get_workload(settings)
    if suite_name != workload.features_suite:
        return partition_parameters(part)
    from tenfold.features.job import history_parts

    sources = workload.sources
    history = history_parts(lake or Lake.from_settings(settings), part, sources.history_months, sources.history_table)
    return partition_parameters(part, history=bool(history))


def _run_suite(settings: Settings, frame: pd.DataFrame, *, table: str, part: Partition, suite_name: str,
               batch_uri: str, site: DocsSite | None, run_name: str | None,
               parameters: dict[str, Any]) -> ValidationReport:
    import great_expectations as gx

    workload = get_workload(settings)
    if suite_name == workload.features_suite:
        check_not_null_covered(suite_name, workload.expectations_dir, workload.contract.non_null_columns)
    context = _context(settings, docs_root=site.root if site else None)
    suite = context.suites.add(load_suite(suite_name, workload.expectations_dir))
    asset = context.data_sources.add_pandas("lake").add_dataframe_asset(f"{table}_{part.label}")
    definition = context.validation_definitions.add(
        gx.ValidationDefinition(name=f"{table}_{part.label}_{suite_name}", data=asset.add_batch_definition_whole_dataframe("month"), suite=suite)
    )
    actions: list[Any] = [gx.checkpoint.UpdateDataDocsAction(name="data_docs", site_names=[DOCS_SITE])] if site else []
    checkpoint = context.checkpoints.add(
        gx.Checkpoint(name=f"gate_{table}_{part.label}", validation_definitions=[definition], actions=actions, result_format="SUMMARY")
    )
    from great_expectations.core.run_identifier import RunIdentifier

    result = checkpoint.run(
        batch_parameters={"dataframe": frame},
        expectation_parameters=parameters,
        run_id=RunIdentifier(run_name=run_name or part.label),
    )
    ((identifier, validation),) = result.run_results.items()
    outcomes = _outcomes(validation.results, set(frame.columns))
    docs_url = None
    if site is not None:
        # The page of this very validation; the site's index lists every one.
        urls = [str(u["site_url"]) for u in context.get_docs_sites_urls(resource_identifier=identifier, site_name=DOCS_SITE)
                if str(u.get("site_url") or "").startswith("file://")]
        if urls:
            docs_url = site.url(Path(urllib.parse.unquote(urls[0].removeprefix("file://"))))
        else:
            # GX logs a page that fails to render and goes on: the site then lacks this validation, and a refusal
            # pointing at the site's folder sent whoever read it to look for a page that is not there.
            log.warning("Data Docs of %s %s: the page of this validation was not written (Great Expectations logged "
                        "why, above); the report names no Data Docs", table, part.label)
    return ValidationReport(
        table=table,
        partition=part.label,
        suite=suite_name,
        batch_uri=batch_uri,
        success=bool(result.success) and all(o.success for o in outcomes),
        evaluated=len(outcomes),
        outcomes=tuple(outcomes),
        rows=len(frame),
        data_docs=docs_url,
    )


def _unreadable(table: str, part: Partition, suite_name: str, batch_uri: str, exc: Exception) -> ValidationReport:
    outcome = ExpectationOutcome(expectation=READ_CHECK, column=None, success=False, error=f"{type(exc).__name__}: {exc}")
    return ValidationReport(table, part.label, suite_name, batch_uri, success=False, evaluated=1, outcomes=(outcome,))


def _resolve(settings_or_lake: Settings | Lake, settings: Settings | None) -> tuple[Settings, Lake]:
    if isinstance(settings_or_lake, Lake):
        if settings is None:
            from tenfold.config import get_settings

            settings = get_settings()
        return settings, settings_or_lake
    return settings_or_lake, Lake.from_settings(settings_or_lake)


def _send_refusal(settings: Settings, table: str, label: str, **fields: Any) -> Sent:
    """The one alert of a refused batch, whether the try that refused it sends it or a later one owes it."""
    return send_alert(settings, f"Quality gate refused {table} {label}", fields)


def _fail(settings: Settings, report: ValidationReport, *, alert: bool) -> ValidationFailed:
    log.error("%s", report.summary())
    if not alert:
        return ValidationFailed(report)
    sent = _send_refusal(settings, report.table, report.partition, suite=report.suite,
                         failed="; ".join(o.describe() for o in report.failures), batch=report.batch_uri,
                         quarantined_at=report.quarantine_uri, data_docs=report.data_docs)
    # Not delivered (a hook failed after its retries): the task's failure callback sends it to that hook alone.
    return ValidationFailed(report, alerted=sent.delivered, undelivered=sent.failed)


# --- the two gates ---------------------------------------------------------------------------------


def validate_partition(
    settings_or_lake: Settings | Lake,
    table: str,
    part: Partition,
    staged_uri: str,
    suite_name: str,
    *,
    settings: Settings | None = None,
    attempt: str | None = None,
    alert: bool = True,
    docs: bool = True,
) -> ValidationReport:
    """Validate the staged batch at ``staged_uri`` (a folder of Parquet) as ``table``'s ``part``.

    Returns the report when every expectation passes. Otherwise quarantines the staged folder (under
    ``attempt``, default the staged folder's name), writes Data Docs, alerts (unless ``alert=False``)
    and raises :class:`ValidationFailed`. A batch whose files cannot be read fails the same way. A suite at fault
    (:func:`run_suite`) raises :class:`~tenfold.quality.suites.SuiteError` and leaves the batch staged.
    ``settings`` is needed only when a bare :class:`Lake` is passed (default: ``get_settings()``).
    """
    settings, lake = _resolve(settings_or_lake, settings)
    check_suite(settings, suite_name)  # before the batch is read: an unreadable one is not refused for the suite
    staged = lake._path(staged_uri)
    batch_uri = lake.uri_of(staged)
    attempt = attempt or posixpath.basename(staged.rstrip("/"))
    earlier = lake.quarantine_path(table, part, attempt)
    # Every refusal under this attempt so far (attempt, attempt-2...: a cleared run refused again): the one whose
    # move was cut short may be any of them.
    taken = list(itertools.takewhile(lake.exists,
                                     lake.quarantine_paths(table, part, attempt)))
    if (resumed := lake.resume_quarantine(staged, taken)) is not None:
        # A refusal whose move to quarantine was cut short (the task killed meanwhile, before it alerted): what
        # was left is the refused batch's, never a batch of its own to validate and publish. Finish it, alert once.
        where, reason = resumed
        failed = ", ".join(map(str, reason.get("failed_expectations", []))) or "see the reason file"
        refused = AlreadyRefused(
            f"{table} {part.label}: the batch {batch_uri} was refused ({failed}); its move to quarantine was cut short "
            f"and is now finished at {where} (see its _QUARANTINED.json); fix the input and re-run the job that stages it"
        )
        if alert:
            _alert_refusal(settings, lake, table, part, batch_uri, lake._path(where), reason, refused,
                           note="the move to quarantine was cut short and finished by a retry")
        raise refused
    if not _is_dir(lake, staged) and _is_dir(lake, earlier):
        # A re-run of a refused validation: keep the verdict rather than quarantine "nothing" (the newest of the
        # attempt's: a cleared run refused again has its own at attempt-2...).
        again = AlreadyRefused(
            f"{table} {part.label}: the batch {batch_uri} was already refused and quarantined at "
            f"{lake.uri_of(taken[-1])} (see its _QUARANTINED.json); re-run the job that stages it"
        )
        if (then := _alert_sent(lake, taken[-1])) is not None:
            # Its alert went out then (or the hooks it missed are named, for the failure callback to send to).
            again.alerted, again.undelivered = bool(then.get("delivered")), tuple(then.get("failed") or ())
        elif alert and (refusal := _reason(lake, taken[-1])) is not None and refusal.get("alert") == "due":
            # The try that refused it ended before its alert was recorded (killed while a hook retried): the alert
            # may never have gone out. Sent now, once: the record stops a later clear from sending it again.
            _alert_refusal(settings, lake, table, part, batch_uri, taken[-1], refusal, again,
                           note="the run that refused it ended before its alert was recorded")
        else:
            again.alerted = True  # refused without alerts (alert=False), or by a version that kept no record of them
        raise again
    try:
        frame = to_frame(read_batch(lake, _parquet_files(lake, staged)))
    except (OSError, pa.ArrowException, LakeError) as exc:
        if _not_the_batch(exc):
            raise
        report = _unreadable(table, part, suite_name, batch_uri, exc)
    else:
        report = run_suite(settings, frame, table=table, part=part, suite_name=suite_name, batch_uri=batch_uri,
                           docs=docs, run_name=f"{part.label}-{attempt}", lake=lake, suite_checked=True)
    if report.success:
        log.info("%s", report.summary())
        return report
    # "alert": "due" marks a refusal whose alert this try owes (its outcome goes to _ALERTED.json): a retry that finds
    # the mark without the outcome sends it. Refusals without the mark (alert=False, or older) are never re-sent.
    where = lake.quarantine(table, part, staged, attempt, {**report.to_dict(), **({"alert": "due"} if alert else {})})
    report = _with(report, quarantine_uri=where)
    failure = _fail(settings, report, alert=alert)
    if alert:
        _record_alert(lake, lake._path(where), failure.alerted, failure.undelivered)
    raise failure


# Beside a refused batch's _QUARANTINED.json: whether its alert went out, and which hooks missed it.
ALERTED = "_ALERTED.json"


def _record_alert(lake: Lake, quarantined: str, delivered: bool, failed: Sequence[str]) -> None:
    lake.write_json(posixpath.join(quarantined, ALERTED), {"delivered": delivered, "failed": list(failed)})


def _read_json(lake: Lake, path: str) -> dict[str, Any] | None:
    try:
        with lake.fs.open_input_stream(path) as stream:
            body = json.loads(stream.read().decode())
    except (FileNotFoundError, ValueError):  # absent, or torn by hand: as good as absent
        return None
    return body if isinstance(body, dict) else None


def _alert_sent(lake: Lake, quarantined: str) -> dict[str, Any] | None:
    return _read_json(lake, posixpath.join(quarantined, ALERTED))


def _reason(lake: Lake, quarantined: str) -> dict[str, Any] | None:
    return _read_json(lake, posixpath.join(quarantined, "_QUARANTINED.json"))


def _alert_refusal(settings: Settings, lake: Lake, table: str, part: Partition, batch_uri: str, quarantined: str,
                   reason: Mapping[str, Any], refused: AlreadyRefused, *, note: str) -> None:
    """Alert a refusal whose own try did not (record that) it alerted, record the outcome beside its reason, and
    say on ``refused`` how it went: the task's failure callback then sends only to the hooks that missed it."""
    sent = _send_refusal(settings, table, part.label, suite=reason.get("suite"),
                         failed=", ".join(map(str, reason.get("failed_expectations", []))) or "see the reason file",
                         batch=batch_uri, quarantined_at=lake.uri_of(quarantined), data_docs=reason.get("data_docs"),
                         note=note)
    _record_alert(lake, quarantined, sent.delivered, sent.failed)
    refused.alerted, refused.undelivered = sent.delivered, sent.failed


def validate_published(
    settings_or_lake: Settings | Lake,
    table: str,
    part: Partition,
    suite_name: str | None,
    *,
    key: str,
    settings: Settings | None = None,
    alert: bool = True,
    docs: bool = True,
) -> ValidationReport:
    """Check a published partition: files intact (sizes and checksums match the manifest) and, with ``suite_name``,
    the suite. A content that passed the same suite before is not validated again (see :data:`VERDICT_VERSION`).

    On failure the partition is unpublished and moved to quarantine under ``key``, then Data Docs,
    alert and :class:`ValidationFailed` as in :func:`validate_partition`. A partition that was never
    published raises :class:`~tenfold.data.lake.MissingManifestError` (nothing to quarantine); a suite at fault
    (:func:`run_suite`) raises :class:`~tenfold.quality.suites.SuiteError` and leaves it published.
    """
    settings, lake = _resolve(settings_or_lake, settings)
    for round_ in range(3):
        # What the manifest named when this validation started: a failure withdraws that content only. A publish
        # that lands meanwhile removes the folder being read; its own content is then validated instead.
        try:
            started_from: str | None = lake.read_manifest(table, part).data_dir
        except MissingManifestError:
            if round_ == 0:
                raise  # never published: nothing to validate or withdraw
            # This validation refused it too, and another one (the same month's run beside it) withdrew it first:
            # that one quarantined and alerted; re-ingesting would only publish the refused bytes again.
            withdrawn = AlreadyRefused(
                f"{table} {part.label} failed validation and was withdrawn meanwhile by another run (a validation of the "
                f"same month, or a reader that found a file corrupt), which quarantined it (under "
                f"{lake.uri_of(lake.quarantine_path(table, part, ''))}); fix the input and run the month again")
            withdrawn.alerted = True  # that run alerted it
            raise withdrawn from None
        except LakeError:
            started_from = None  # an unreadable manifest: _check_published refuses it, and it is withdrawn
        report = _check_published(settings, lake, table, part, suite_name, key=key, docs=docs)
        if report.success:
            return report
        where = unpublish_to_quarantine(lake, table, part, key, report.to_dict(), data_dir=started_from)
        if where is not None:
            raise _fail(settings, _with(report, quarantine_uri=where, withdrawn=True), alert=alert)
        log.info("%s %s was re-published while it was validated: validating the new content", table, part.label)
    raise LakeError(f"{table} {part.label} was re-published during each of 3 validations; run the validation again "
                    "once its writers are done")


def _not_the_batch(exc: BaseException) -> bool:
    """Whether an error met reading a batch is the store's, not the batch's: a service away or no credentials
    (:func:`tenfold.outages.not_the_data`), or a download damaged in transit. Raised as it is, so the task's retry
    reads it again; refused, it withdrew a good published month, or quarantined a good staged batch for good (its
    retry then met AlreadyRefused)."""
    return isinstance(exc, DamagedInTransit) or not_the_data(exc)


def _read_published(lake: Lake, table: str, part: Partition, manifest: Manifest) -> pa.Table:
    """The files ``manifest`` lists as one table, each downloaded whole, checked against the manifest and parsed from
    those very bytes (:meth:`~tenfold.data.lake.Lake.verified_files`): a second read of the store, unchecked, took a
    download damaged in transit for a corrupt month. Bytes that match their checksum but are no Parquet (or files of
    schemas that do not combine) are the data's fault: a :class:`LakeError`. Running out of memory is not: raised as
    it is, as are the lake's DamagedInTransit and an ``OSError`` of a download."""
    tables = []
    for path, data in lake.verified_files(table, part, manifest):
        try:
            tables.append(pq.read_table(pa.BufferReader(data)))
        except pa.ArrowMemoryError:
            raise
        except (OSError, pa.ArrowException) as exc:
            raise LakeError(f"{lake.uri_of(path)} matches the checksum its manifest recorded but is not readable "
                            f"Parquet ({type(exc).__name__}: {exc}): it was published so; re-publish the partition by "
                            f"re-running the pipeline that builds {table} for {part.label}") from exc
    if not tables:
        raise LakeError("the batch holds no .parquet files")
    try:
        return pa.concat_tables(tables, promote_options="default")
    except pa.ArrowMemoryError:
        raise
    except pa.ArrowException as exc:
        raise LakeError(f"the files of {table} {part.label} do not combine into one table ({type(exc).__name__}: "
                        f"{exc}); re-publish the partition by re-running the pipeline that builds {table} for "
                        f"{part.label}") from exc


def _check_published(settings: Settings, lake: Lake, table: str, part: Partition, suite_name: str | None, *,
                     key: str, docs: bool) -> ValidationReport:
    batch_uri = lake.uri_of(lake.partition_path(table, part))
    verdict: tuple[str, str] | None = None
    # Once, outside the batch's own reads: a history table that cannot be listed is not this batch unreadable (it
    # was quarantined for it), and the verdict's digest and the run must cover the same parameters (worked out twice,
    # a history month withdrawn in between had a lenient pass recorded under the strict digest).
    if suite_name is not None:
        check_suite(settings, suite_name)  # before the files are checksummed: a bad suite is not this batch's fault
    parameters = suite_parameters(settings, lake, part, suite_name) if suite_name is not None else {}
    checked = False  # every file matched its manifest's size and stored checksum
    try:
        # One manifest read: the files validated and the content a pass is recorded for are of the same build (read
        # twice, a publish in between had the old rows' pass saved for the new content, trusted after, never run).
        manifest = lake.read_manifest(table, part)
        lake.files(table, part, verify=True, manifest=manifest)
        if suite_name is not None:
            # Every file matched its checksum: the same bytes under the same suite get the verdict they got before.
            verdict = _verdict_place(lake, settings, table, part, suite_name, manifest, parameters)
            passed = _passed_before(lake, verdict, table, part, suite_name, batch_uri)
            if passed is not None:
                log.info("%s (this content passed this suite before: %s)", passed.summary(), lake.uri_of(verdict[0]))
                return passed
        checked = True
        arrow = _read_published(lake, table, part, manifest)
    except MissingManifestError:
        raise
    except (OSError, pa.ArrowException, LakeError) as exc:
        # Once the files matched their manifest, what the data did wrong comes as a LakeError (_read_published); an
        # OSError of the download (a permission, a store away) or running out of memory is not the data's: raised as
        # it is for the task's retry. Taken for an unreadable batch, it withdrew a good month and alerted.
        if _not_the_batch(exc) or (checked and not isinstance(exc, LakeError)):
            raise
        report = _unreadable(table, part, suite_name or "integrity", batch_uri, exc)
    else:
        if suite_name is None:
            return ValidationReport(table, part.label, "integrity", batch_uri, success=True, evaluated=0, outcomes=(), rows=arrow.num_rows)
        report = run_suite(settings, to_frame(arrow), table=table, part=part, suite_name=suite_name,
                           batch_uri=batch_uri, docs=docs, run_name=f"{part.label}-{key}", lake=lake,
                           parameters=parameters, suite_checked=True)
    if report.success:
        log.info("%s", report.summary())
        if verdict is not None:
            _record_pass(lake, verdict, report)
    return report


# A published partition never changes in place (a new publish is a new content-addressed folder and manifest), and
# a suite's verdict depends only on the rows, the suite and its parameters for the month. So a pass is recorded
# beside the partition under a digest of all of them, and validate_published, after verifying every file's
# checksum, trusts it instead of running the suite again: a month read as history by each later month's job is
# validated once, not once per later month. Any change (new data, an edited suite, new parameters, another GX or
# this version) is a different digest, so the suite runs again. Bump when what a verdict covers changes.
VERDICT_VERSION = 1
VERDICTS_DIR = "_verdicts"


def _verdict_place(lake: Lake, settings: Settings, table: str, part: Partition, suite_name: str,
                   manifest: Manifest, parameters: dict[str, Any]) -> tuple[str, str]:
    """(path, digest) of the pass record of ``suite_name`` over the content ``manifest`` (the partition's) names."""
    from importlib.metadata import version

    body = {
        "verdict_version": VERDICT_VERSION,
        "great_expectations": version("great_expectations"),
        "content": {**manifest.content, "data_dir": manifest.data_dir},
        "suite": load_suite_dict(suite_name, get_workload(settings).expectations_dir),
        "parameters": parameters,
    }
    digest = hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()
    return posixpath.join(lake.partition_path(table, part), VERDICTS_DIR, f"{suite_name}-{digest[:32]}.json"), digest


def _passed_before(lake: Lake, verdict: tuple[str, str], table: str, part: Partition, suite_name: str,
                   batch_uri: str) -> ValidationReport | None:
    path, digest = verdict
    try:
        with lake.fs.open_input_stream(path) as stream:
            body = json.loads(stream.read())
    except (FileNotFoundError, ValueError):  # none yet, or unreadable: the suite runs (and records afresh)
        return None
    if not isinstance(body, dict) or body.get("digest") != digest or not isinstance(body.get("evaluated"), int):
        return None
    return ValidationReport(table, part.label, suite_name, batch_uri, success=True, evaluated=body["evaluated"],
                            outcomes=(), rows=body.get("rows"), data_docs=body.get("data_docs"))


def _record_pass(lake: Lake, verdict: tuple[str, str], report: ValidationReport) -> None:
    path, digest = verdict
    lake.write_json(path, {"digest": digest, "suite": report.suite, "evaluated": report.evaluated, "rows": report.rows,
                           "data_docs": report.data_docs, "validated_at": dt.datetime.now(dt.UTC).isoformat()})


def unpublish_to_quarantine(lake: Lake, table: str, part: Partition, key: str, reason: dict[str, Any], *,
                            data_dir: str | None = None) -> str | None:
    """Withdraw a published partition: remove its manifest, then move its data folders to quarantine.

    The manifest goes first, so from that instant no reader sees the batch; what it said is kept in
    the quarantine reason, written into the refused data folder before the manifest goes (killed after that, the
    next publish's clean-up moves the folder to quarantine instead of deleting it). Returns the quarantine URI.
    With ``data_dir``, only a partition whose manifest still names that folder is withdrawn: None when a publish
    replaced it meanwhile (nothing is moved).
    Holds the partition's writer lock throughout.
    """
    with lake.exclusive(table, part) as still_held:
        if data_dir is not None:
            try:
                if lake.read_manifest(table, part).data_dir != data_dir:
                    return None
            except LakeError:  # withdrawn, or replaced by an unreadable manifest: not the content checked
                return None
        still_held()  # a writer that lost the lock meanwhile must not remove what another published
        return _unpublish(lake, table, part, key, reason)


def _unpublish(lake: Lake, table: str, part: Partition, key: str, reason: dict[str, Any]) -> str:
    manifest_path = lake.manifest_path(table, part)
    named = None  # the data folder the withdrawn manifest named: the refused content
    selector = pafs.FileSelector(lake.partition_path(table, part), allow_not_found=True)
    data_dirs = [i.path for i in lake.fs.get_file_info(selector) if i.type == pafs.FileType.Directory and i.base_name.startswith("data-")]
    try:
        with lake.fs.open_input_stream(manifest_path) as stream:
            text = stream.read().decode(errors="replace")
        reason = {**reason, "manifest": text}
        with contextlib.suppress(ValueError, AttributeError):
            named = json.loads(text).get("data_dir")
        # The verdict, with the manifest's text (the only record of what was withdrawn), goes into the refused folder
        # before the manifest is removed (as Lake.withdraw does): killed in between, the folder says where it goes and
        # the next publish's clean-up moves it there, instead of deleting unnamed data as an earlier publish's. The
        # quarantine below, under the same key and reason, picks the same folder (the mark does not create it).
        for data_dir in data_dirs:
            if posixpath.basename(data_dir) == named:
                lake.mark_refused(table, part, data_dir, key, reason, best_effort=True)
        lake.fs.delete_file(manifest_path)
    except FileNotFoundError:
        pass
    if not data_dirs:
        return lake.quarantine(table, part, lake.partition_path(table, part) + "/.none", key, reason)
    refused = [d for d in data_dirs if posixpath.basename(d) == named] or sorted(data_dirs)
    where = ""
    for data_dir in refused:
        where = lake.quarantine(table, part, data_dir, key, reason)  # key, then key-2, ... (see Lake.quarantine)
    # A folder an earlier publish left behind (killed before its cleanup): not the refused content, and said so.
    left = {**reason, "left_behind": "a data folder of an earlier publish of this partition, not the one refused "
                                     f"(that one is at {where})"}
    for data_dir in sorted(set(data_dirs) - set(refused)):
        lake.quarantine(table, part, data_dir, key, left)
    return where


def _with(report: ValidationReport, **changes: Any) -> ValidationReport:
    from dataclasses import replace

    return replace(report, **changes)
