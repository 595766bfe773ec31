"""The build-features Spark job: read one month's raw partitions, transform, write a fixed set of sorted files.

The job is the platform's; what it reads and how it transforms comes from the workload named by
``--workload`` (default ``flights``; see :func:`tenfold.workloads.get_workload`): its
``sources.month_inputs`` for the month, its ``sources.history_table`` also for the history months
before it, its ``transform``, and its ``contract``, which the written file must match exactly.

``spark_jobs/build_features.py`` is its entry point (``spark-submit`` locally, a Dataproc batch in the
cloud); :func:`tenfold.features.submit.spark_submit_features` launches it. Inputs are read only
through published manifests (each listed file's size is checked first), so a partition that was
never published or was truncated stops the job with exit code 2 and a message before Spark reads a
byte; so does an input time zone that Spark's Java does not know, used by the month's rows (:func:`check_zones`,
before the transform), and ``--output`` or ``--lookups-output`` folders whose emptying would delete lake data
(:func:`published_data_at`, exit 1 as any refused argument). Output goes to ``--output`` (a staging URI);
``--publish`` also publishes it atomically as the ``features`` partition, which standalone runs use (the DAG
validates the staged output first).

The output is ``--output-files`` files (default :data:`OUTPUT_FILES`), ``part-00000.parquet`` to
``part-0000<n-1>.parquet``: a row goes to file ``pmod(hash(key columns), n)`` (Spark's Murmur3 hash,
fixed), and each Spark task sorts its files in the contract's total order (keys first, then every
column) and writes them with pyarrow's fixed options (:func:`tenfold.data.parquet.write_sorted`). So the
same month always gives the same files with the same bytes (a retried or backfilled month publishes an
identical manifest), and the files are written in parallel, by the tasks, instead of one sorted file
by one task plus a rewrite on the driver. The manifest lists the files in order; readers read them in
manifest order, so every reader sees the rows in the same order.

Beside the features the job writes the workload's lookup tables for online assembly (its ``lookups``,
one per ``contract.lookup_tables`` name, from the same frames) to ``--lookups-output`` (default: the
features' staging URI plus ``_lookups``, so they share its staging key), one folder per name, each one
sorted file written by pyarrow. With ``--publish`` they are published as ``<--lookups-table>_<name>``
*before* the features, so a month whose features are visible always has its lookups.

Fault injection for tests: with ``--conf spark.tenfold.failOnceMarker=<path>``, the first attempt of
the first task to scan the history table (for flights, the flights) creates ``<path>`` and raises,
so the test sees Spark retry a real task (``local[N,F]`` with F > 1) and still produce the same output.
"""

from __future__ import annotations

import argparse
import logging
import os
import posixpath
import re
import sys
import time
import uuid
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from tenfold.config.settings import DEFAULT_WORKLOAD, FEATURES_TABLE, LakeLayout, StorageSettings
from tenfold.data.lake import MANIFEST, Lake, LakeError, Partition, schema_hash
from tenfold.data.parquet import write_sorted, write_table
from tenfold.features.online import LOOKUPS_KEY, lookup_table
from tenfold.fsio import filesystem_from_uri, make_dirs
from tenfold.workloads import FeatureContract, Sources, Workload, WorkloadError, ZoneColumn, get_workload

if TYPE_CHECKING:
    import pyarrow as pa
    from pyspark.sql import DataFrame, SparkSession

log = logging.getLogger("tenfold.features.job")

FAIL_ONCE_CONF = "spark.tenfold.failOnceMarker"
EXIT_BAD_INPUT = 2
EXIT_FAILED = 1
# Processes started without settings publish lookups under the settings' default prefix.
LOOKUPS_TABLE: str = StorageSettings.model_fields["lookups_table"].default
LOOKUPS_SUFFIX = "_lookups"

# How many files a month's features are written as. Fixed, because the files' contents (and so their
# bytes and the manifest) depend on it; enough for the tasks of a small cluster to write in parallel.
OUTPUT_FILES = 4
_FILE_COLUMN = "_tenfold_file"

# Session settings the output depends on; set here rather than trusted to the cluster's defaults.
SESSION_CONF = {
    "spark.sql.session.timeZone": "UTC",
    "spark.sql.parquet.outputTimestampType": "TIMESTAMP_MICROS",
    "spark.sql.parquet.compression.codec": "zstd",
    "spark.sql.sources.partitionOverwriteMode": "static",
}


class ContractError(RuntimeError):
    """The job's output does not match the workload's feature contract; nothing is published."""


class InjectedFault(RuntimeError):
    """Raised once by the fault-injection hook; never outside tests."""


class UnknownZones(RuntimeError):
    """An input gives a time zone that Spark's Java does not know, to rows the transform converts times of, or lacks a
    column the workload's zone columns read (its zones could not be checked): bad input (exit 2), refused before the
    transform, which would fail on it with Spark's [INVALID_TIMEZONE] naming no row."""


class JobArgumentParser(argparse.ArgumentParser):
    """A Spark job's parser: arguments it refuses exit ``EXIT_FAILED`` saying so, not argparse's 2, which a job's
    caller reads as ``EXIT_BAD_INPUT`` (bad data: re-ingest it) when the cause is the job's own code or its
    deployment (a job file older than the DAG that passes it a newer flag)."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_FAILED, f"{self.prog}: bad arguments (the job and its caller disagree, or a bad value): "
                               f"{message}\n")


def month_arg(text: str) -> Partition:
    """A job's ``--month``: argparse said only "invalid parse value" of :meth:`Partition.parse`'s own reason."""
    try:
        return Partition.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = JobArgumentParser(prog="build_features", description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--lake-uri", required=True, help="lake root (file:// or gs://)")
    p.add_argument("--month", required=True, type=month_arg, help="the month to build, YYYY-MM")
    p.add_argument("--output", required=True, help="staging URI to write the Parquet file to (overwritten)")
    p.add_argument("--publish", action="store_true", help="also publish the output as the features partition")
    p.add_argument("--workload", default=DEFAULT_WORKLOAD,
                   help="the workload: a built-in name or package.module:attribute (default %(default)s)")
    p.add_argument("--features-table", default=FEATURES_TABLE, help="the lake table to publish to (default %(default)s)")
    p.add_argument("--lookups-output", default=None,
                   help="staging URI for the lookup tables, one folder per name (default: --output + _lookups)")
    p.add_argument("--lookups-table", default=LOOKUPS_TABLE,
                   help="with --publish: lookups go to <this>_<name> (default %(default)s)")
    p.add_argument("--history-months", type=non_negative, default=None,
                   help="months before --month that feed the historical aggregates (default: the workload's)")
    p.add_argument("--run-id", default=None, help="recorded in the manifest when publishing")
    p.add_argument("--output-files", type=int, default=OUTPUT_FILES,
                   help="how many files the features are written as (default %(default)s; it decides the bytes)")
    add_layout_args(p)
    args = p.parse_args(argv)
    args.layout = layout_of(p, args)
    # A folder given without a scheme is one on this machine, as the Lake takes it (pyarrow refused it with a raw
    # "URI has empty scheme" traceback).
    args.lake_uri, args.output = _as_uri(args.lake_uri), _as_uri(args.output)
    args.lookups_output = lookups_staging_uri(args.output) if args.lookups_output is None else _as_uri(args.lookups_output)
    # Every folder the job empties: the features' output, and under --lookups-output one folder per lookup (named like
    # the raw tables: airports, planes, weather), checked too: --lookups-output <lake>/quarantine emptied the
    # quarantine's weather/ and airports/.
    emptied = [("--output", args.output, args.output), ("--lookups-output", args.lookups_output, args.lookups_output)]
    emptied += [("--lookups-output", args.lookups_output, lookup_staging_uri(args.lookups_output, name))
                for name in _lookup_names(args.workload)]
    for flag, given, uri in emptied:
        try:
            why = published_data_at(uri, args.lake_uri, args.layout)
        except (ValueError, OSError) as exc:  # pyarrow's ArrowInvalid is a ValueError: a scheme it does not know
            p.error(f"{flag} {given} or --lake-uri {args.lake_uri} cannot be opened ({exc}): give a file:// or gs:// "
                    "URI, or a local folder")
        if why is not None:
            where = given if uri == given else f"{given} (its folder {uri.rsplit('/', 1)[-1]}/, which the job empties)"
            p.error(f"{flag} {where} {why}: the job empties its output folder first, which would delete it; give a "
                    f"staging folder of its own (the DAG uses <lake>/{args.layout.staging}/features/year=/month=/<run>)")
    if args.history_months is None:
        # Resolved here (not lazily) so run() and the log see the number actually used.
        args.history_months = _history_months(args.workload)
    return args


def add_layout_args(p: argparse.ArgumentParser) -> None:
    """The lake's own folders (settings.storage.lake_layout), which a job's output guard refuses to empty: the job
    runs without the settings, so the command that starts it passes them (``tenfold.features.dataproc.layout_args``);
    a lake laid out with other names had its staging and quarantine folders checked under the default names only."""
    p.add_argument("--lake-staging", default=LakeLayout().staging,
                   help="the lake's staging folder (default %(default)s; storage.lake_layout.staging)")
    p.add_argument("--lake-quarantine", default=LakeLayout().quarantine,
                   help="the lake's quarantine folder (default %(default)s; storage.lake_layout.quarantine)")


def layout_of(p: argparse.ArgumentParser, args: argparse.Namespace) -> LakeLayout:
    """The :class:`LakeLayout` that ``args`` name (:func:`add_layout_args`), checked as the settings check it; a bad
    one is refused through ``p`` in one line."""
    try:
        return LakeLayout(staging=args.lake_staging, quarantine=args.lake_quarantine)
    except ValueError as exc:  # pydantic's ValidationError is a ValueError
        reason = "; ".join(e["msg"] for e in exc.errors()) if hasattr(exc, "errors") else str(exc)
        p.error(f"--lake-staging {args.lake_staging} / --lake-quarantine {args.lake_quarantine}: {reason}")


def _as_uri(text: str) -> str:
    """``text`` as a URI: a scheme-less path is the local folder it names (relative to the working folder); the
    single-slash ``file:/x`` (as Spark prints it, and a lake so named gives back) is ``file:///x``, not a folder
    named ``file:`` below the working folder."""
    if "://" in text:
        return text
    if text.startswith("file:/"):
        return "file:///" + text[len("file:/"):].lstrip("/")
    return Path(text).expanduser().resolve().as_uri()


def non_negative(text: str) -> int:
    """A count of months: -3 built a month from no history at all (every roll-up 0 or null) and published it."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} is negative: give 0 or more months")
    return value


# How deep below a folder the job would empty a manifest is looked for (<lake>/<table>/year=/month=/_SUCCESS is 4
# below the lake, 5 below a folder holding a lake), and how many folders at most are listed looking for one.
LOOK_BELOW = 5
LOOK_AT_MOST = 500


def _canonical(fs: Any, path: str) -> str:
    """The one name of the folder ``path`` reaches: on a local disk its real path (symlinks, ``.``, ``..`` and ``//``
    resolved), in an object store the key with ``.``, ``..`` and ``//`` collapsed (compared as if they were)."""
    if fs.type_name == "local":
        return os.path.realpath(path)
    return posixpath.normpath(path)


def _within(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip("/") + "/")


# Beside a run's staging folder <key>/ under a staged month: its lookups (<key>_lookups/) and the records the pipeline
# keeps of it (tenfold.pipelines.build_features: <key>.done.json once published, <key>.published.json while dropped).
STAGING_RECORDS = (".done.json", ".published.json")


def _staged_by_other_runs(below: list[str], listed: list[str], staging: str) -> str | None:
    """Why the folder ``<lake>/<staging>/<below...>``, which holds ``listed``, is not one run's staging folder (None:
    it may be): it is a staged table's or partition's folder (named ``year=``/``month=``, or holding such folders),
    where every run of the month stages its batch, its lookups and its records, or it holds other runs' staging
    folders (``<key>/`` beside ``<key>_lookups/``) or records (``<key>.done.json``, ``<key>.published.json``).
    Emptied, it deleted the batches of runs between validate and publish, and a published run's record."""
    paired = {n for n in listed if n + LOOKUPS_SUFFIX in listed}
    theirs = sorted({n for n in listed if n.startswith(("year=", "month=")) or n.endswith(STAGING_RECORDS)}
                    | paired | {n + LOOKUPS_SUFFIX for n in paired})
    partition = below[-1].startswith(("year=", "month=")) or any(n.startswith(("year=", "month=")) for n in listed)
    if partition:
        theirs = theirs or sorted(listed)  # a staged month holds only runs' folders: any of them is another run's
    held = ", ".join(theirs[:3]) + (f" and {len(theirs) - 3} more" if len(theirs) > 3 else "")
    if partition:
        return (f"is a staged table's or partition's folder ({'/'.join([staging, *below])}/), which holds every run's "
                f"staged batches and publish records for it{f' ({held})' if held else ''}")
    if theirs:
        return f"holds other runs' staged batches or publish records ({held}) in the lake's {staging}/ folder"
    return None


def published_data_at(uri: str, lake_uri: str, layout: LakeLayout = LakeLayout()) -> str | None:  # noqa: B008 (frozen)
    """Why emptying the folder ``uri`` would delete published lake data or the lake's own folders (None: it would
    not): it is the lake or a folder above it, the lake's staging folder, in its quarantine, inside a table that holds
    published partitions, a table's or a partition's folder, a folder of a published partition, or a folder that
    holds a published partition (a manifest, :data:`MANIFEST`, up to :data:`LOOK_BELOW` levels below it). Under the
    staging folder, a staged table's or partition's folder, or one holding other runs' staging folders or records,
    is refused too (:func:`_staged_by_other_runs`).

    Both sides are compared as the folders they reach (:func:`_canonical`): a lake named through a symlink, or an
    output spelt ``<lake>/.`` or ``<lake>/x/..``, is the lake. A run's staging folder
    (``<lake>/_staging/<table>/year=/month=/<run>``, :meth:`Lake.staging_path`, or a run by hand's
    ``<lake>/_staging/features/manual``) passes."""
    from pyarrow import fs as pafs

    fs, given = filesystem_from_uri(uri)
    lake_fs, lake_given = filesystem_from_uri(lake_uri)
    root, lake_root = _canonical(fs, given), _canonical(lake_fs, lake_given)
    if fs.type_name != "local" and root != given.rstrip("/"):
        # What the store makes of such a key is its own business: the folder emptied might not be the one checked.
        return "spells '.', '..' or '//' in its path, which an object store keeps as they are"

    def names(folder: str) -> list[str]:
        try:
            return [i.base_name for i in fs.get_file_info(pafs.FileSelector(folder, allow_not_found=True))]
        except OSError:  # not a folder, no permission: the write reports it
            return []

    def is_file(path: str) -> bool:
        try:
            return bool(fs.get_file_info(path).type == pafs.FileType.File)
        except (OSError, ValueError):  # ArrowInvalid is a ValueError: a bucket name the store refuses
            return False

    def published(listed: list[str]) -> bool:
        return MANIFEST in listed or any(n.startswith(("year=", "month=")) for n in listed)

    in_lake: list[str] = []  # its path below the lake, when it is in the lake
    if fs.type_name == lake_fs.type_name:
        if _within(lake_root, root):
            return f"is the lake {lake_uri} or a folder above it"
        if _within(root, lake_root):
            in_lake = posixpath.relpath(root, lake_root).split("/")
            if in_lake[0] == layout.quarantine:
                return f"is in the lake's {layout.quarantine}/ folder, which keeps refused batches for triage"
            if in_lake == [layout.staging]:
                return f"is the lake's {layout.staging}/ folder, which holds every run's staged batches"
            if in_lake[0] == layout.staging and (why := _staged_by_other_runs(in_lake[1:], names(root),
                                                                              layout.staging)):
                return why
    if published(names(root)):
        return "is a published table's or partition's folder"
    folder, level = root, 0
    while (parent := posixpath.dirname(folder)) not in (folder, ""):
        folder, level = parent, level + 1
        if is_file(posixpath.join(folder, MANIFEST)):
            return ("is a data folder of a published partition" if level == 1
                    else f"is inside the published partition {folder}")
    if len(in_lake) > 1 and in_lake[0] != layout.staging and published(names(posixpath.join(lake_root, in_lake[0]))):
        return f"is inside the lake's table {in_lake[0]}, which holds published partitions"
    # Below it: a copy of a lake, a lake's table reached through a symlink, a published partition moved in.
    listed, todo = 0, [(root, 0)]
    while todo:
        folder, depth = todo.pop()
        listed += 1
        if listed > LOOK_AT_MOST:
            return f"holds more than {LOOK_AT_MOST} folders, too many to check for published data"
        try:
            infos = fs.get_file_info(pafs.FileSelector(folder, allow_not_found=True))
        except OSError:
            continue
        if folder != root and any(i.base_name == MANIFEST for i in infos):
            return f"holds a published partition ({posixpath.relpath(folder, root)}/{MANIFEST})"
        if depth < LOOK_BELOW:
            todo += [(i.path, depth + 1) for i in infos if i.type == pafs.FileType.Directory]
    return None


def _history_months(spec: str) -> int:
    try:
        return get_workload(spec).sources.history_months
    except WorkloadError:
        return 0  # main() reports the unknown workload with the right exit code


def _lookup_names(spec: str) -> tuple[str, ...]:
    """The lookups the workload writes, one folder each under --lookups-output (none for a workload that cannot be
    loaded: main() reports it before anything is written)."""
    try:
        return tuple(get_workload(spec).contract.lookup_tables)
    except WorkloadError:
        return ()


def lookups_staging_uri(features_output: str) -> str:
    """Where the job stages the lookup tables of a features staging URI: beside it, same staging key."""
    return features_output.rstrip("/") + LOOKUPS_SUFFIX


def lookup_staging_uri(lookups_output: str, name: str) -> str:
    """The staging folder of lookup ``name`` under ``lookups_output``."""
    return f"{lookups_output.rstrip('/')}/{name}"


def write_lookups(frames: Mapping[str, DataFrame], lookups_output: str, contract: FeatureContract) -> dict[str, int]:
    """Write each lookup frame as one sorted, reproducible Parquet file; returns rows per name.

    Lookups are small (a month's weather, the planes, roll-ups by group), so each is collected to the
    driver as Arrow and written by pyarrow in a total order: the same month always gives the same
    bytes, so a retried or backfilled month republishes nothing.
    """
    if tuple(frames) != tuple(contract.lookup_tables):
        raise ContractError(
            f"the workload's lookups returned {tuple(frames)}, but its contract names {contract.lookup_tables}: "
            "make lookups() return exactly contract.lookup_tables, in that order"
        )

    rows = {}
    for name, frame in frames.items():
        table = frame.toArrow()
        table = table.sort_by([(c, "ascending") for c in table.column_names])
        fs, root = filesystem_from_uri(lookup_staging_uri(lookups_output, name))
        fs.delete_dir_contents(root, missing_dir_ok=True)  # a retry starts from an empty folder
        write_table(table, fs, posixpath.join(root, "part-00000.parquet"))
        rows[name] = table.num_rows
    return rows


def publish_lookups(lake: Lake, prefix: str, part: Partition, lookups_output: str, contract: FeatureContract,
                    *, run_id: str, extra: Mapping[str, object] | None = None) -> dict[str, str]:
    """Publish each staged lookup as ``<prefix>_<name>``'s ``part`` (idempotent), with the feature definition's
    version in its manifest; call it before publishing the features. Returns each lookup's published data folder
    (content-addressed), which the features manifest records under ``LOOKUPS_KEY``: the build it belongs to."""
    published = {}
    for name in contract.lookup_tables:
        manifest = lake.publish(lookup_table(prefix, name), part, lookup_staging_uri(lookups_output, name),
                                run_id=run_id, extra=contract.manifest_extra(**(extra or {})))
        published[name] = manifest.data_dir
    return published


def input_uris(lake: Lake, table: str, parts: Sequence[Partition]) -> list[str]:
    """URIs of the published files of ``parts``; sizes are checked against each manifest."""
    return [lake.uri_of(path) for part in parts for path in lake.files(table, part, verify=True)]


def history_parts(lake: Lake, part: Partition, months: int, table: str | None) -> list[Partition]:
    """Published ``table`` partitions among the ``months`` months strictly before ``part`` (none without a table)."""
    if table is None:
        return []
    earliest = part
    for _ in range(months):
        earliest = earliest.previous()
    return [p for p in lake.published_partitions(table) if earliest <= p < part]


# A workload's time zone columns are its own (``Sources.zone_columns``, the flights workload's airports.tzone); a check
# whose table or columns the month's inputs lack is skipped.
_NAMED_AT_MOST = 10


def jvm_zone_ids(spark: SparkSession) -> frozenset[str] | None:
    """The region IDs Spark's Java knows (``java.time.ZoneId.getAvailableZoneIds``): its own tzdata, which may be older
    than the ``zoneinfo`` the quality gate checks names against (a zone added since is unknown to it). None where the
    session has no JVM in this process (Spark Connect)."""
    jvm = spark._jvm
    if jvm is None:
        return None
    return frozenset(str(z) for z in jvm.java.time.ZoneId.getAvailableZoneIds())


def unknown_zones(frames: Mapping[str, DataFrame], known: Collection[str],
                  columns: Sequence[ZoneColumn]) -> list[tuple[ZoneColumn, str, str]]:
    """Each (column, key, zone) of the inputs ``frames`` whose zone is not one of ``known`` and that rows of
    ``column.used_in`` use, sorted by key. The zones are collected first (a table of airports: tiny); only an unknown
    one costs a scan of the rows that might use it."""
    from pyspark.sql import functions as F

    if missing := missing_zone_inputs(frames, columns):
        raise UnknownZones(missing_zones_message(missing, None))
    found: list[tuple[ZoneColumn, str, str]] = []
    for col in columns:
        zones, users = frames[col.table], frames[col.used_in]
        bad = sorted(z for (z,) in zones.select(col.zone).distinct().collect() if z is not None and z not in known)
        if not bad:
            continue
        used = None
        for name in col.used_as:
            keys = users.select(F.col(name).alias("_tenfold_key"))
            used = keys if used is None else used.unionByName(keys)
        assert used is not None  # used_as names one column at least
        rows = (zones.where(F.col(col.zone).isin(bad)).select(col.key, col.zone).distinct()
                .join(used.distinct(), F.col(col.key) == F.col("_tenfold_key"), "left_semi")
                .orderBy(col.key, col.zone).collect())
        found += [(col, str(r[0]), str(r[1])) for r in rows]
    return found


def missing_zone_inputs(frames: Mapping[str, DataFrame], columns: Sequence[ZoneColumn]) -> list[str]:
    """What the zone ``columns`` read that the inputs ``frames`` lack, as ``table`` or ``table.column``, in order. Such a
    column was skipped without a word: its time zones were never checked."""
    missing: list[str] = []
    for col in columns:
        for table, wanted in ((col.table, (col.key, col.zone)), (col.used_in, col.used_as)):
            frame = frames.get(table)
            gone = [table] if frame is None else [f"{table}.{c}" for c in wanted if c not in frame.columns]
            missing += [m for m in gone if m not in missing]
    return missing


def missing_zones_message(missing: Sequence[str], month: str | None) -> str:
    """Why the time zones of ``month`` (None: the month's, unnamed) cannot be checked (:func:`missing_zone_inputs`), as
    one line."""
    return (f"the inputs of {month or 'the month'} lack {', '.join(missing)}, which the workload's zone_columns "
            "(Sources.zone_columns) read: the time zones its rows use cannot be checked, and the transform would fail "
            f"on them; re-ingest the month with those columns (tenfold ingest --month {month or 'YYYY-MM'}), or correct "
            "the workload's zone_columns")


def zones_message(found: Sequence[tuple[ZoneColumn, str, str]], month: str) -> str:
    """What to do about the unknown zones ``found`` (:func:`unknown_zones`), as one line."""
    col = found[0][0]
    named = ", ".join(f"{key} ({zone})" for _, key, zone in found[:_NAMED_AT_MOST])
    more = f" and {len(found) - _NAMED_AT_MOST} more" if len(found) > _NAMED_AT_MOST else ""
    return (f"the {col.table} table of {month} gives {col.zone} values that Spark's Java does not know as time zones, "
            f"to {col.used_in} of the month: {named}{more}; correct them in the {col.table} table (IANA Area/Location "
            f"names, e.g. America/New_York) and re-ingest the month (tenfold ingest --month {month}); a zone newer "
            "than the cluster's Java needs a newer Spark runtime")


def check_zones(spark: SparkSession, frames: Mapping[str, DataFrame], month: str,
                columns: Sequence[ZoneColumn]) -> None:
    """Refuse (:class:`UnknownZones`) inputs whose rows use a time zone Spark's Java does not know, before the transform
    fails on it with [INVALID_TIMEZONE], retried as any failure and naming neither the row nor the table. ``columns``:
    the workload's time zone columns (``Sources.zone_columns``); none, nothing is checked."""
    if not columns:
        return
    if missing := missing_zone_inputs(frames, columns):  # a schema's columns: no JVM needed, nothing scanned
        raise UnknownZones(missing_zones_message(missing, month))
    known = jvm_zone_ids(spark)
    if known is None:
        log.warning("cannot ask Spark's Java which time zones it knows (no JVM in this process): zones not checked")
    elif found := unknown_zones(frames, known, columns):
        raise UnknownZones(zones_message(found, month))


def fail_once(df: DataFrame, marker: str) -> DataFrame:
    """Make the first attempt of one task that scans ``df`` raise, once per ``marker`` file."""
    from pyspark import TaskContext
    from pyspark.sql import functions as F

    def check(_):  # type: ignore[no-untyped-def]  # no hints: Spark would try to infer a pandas UDF from them
        ctx = TaskContext.get()
        if ctx is not None and ctx.attemptNumber() == 0:
            try:
                with open(marker, "x") as fh:  # exclusive: exactly one task of all ever fails
                    fh.write(f"stage {ctx.stageId()} partition {ctx.partitionId()}\n")
            except FileExistsError:
                return True
            raise InjectedFault(f"injected failure (first attempt, marker {marker})")
        return True

    flag = F.udf(check, "boolean").asNondeterministic()
    return df.where(flag(F.lit(0)))


@dataclass(frozen=True)
class Inputs:
    """The published files the job reads, resolved (and size-checked) before Spark starts."""

    history: tuple[Partition, ...]
    # Table -> its files: the history table's cover ``history`` and the month, the others the month.
    tables: Mapping[str, tuple[str, ...]]


def resolve_inputs(lake: Lake, part: Partition, history_months: int, sources: Sources) -> Inputs:
    """Every input file of the workload's ``sources`` for ``part``; raises :class:`LakeError` naming what
    was never published."""
    history = history_parts(lake, part, history_months, sources.history_table)
    tables = {
        table: tuple(input_uris(lake, table, [*history, part] if table == sources.history_table else [part]))
        for table in dict.fromkeys((*sources.month_inputs, *filter(None, [sources.history_table])))
    }
    return Inputs(history=tuple(history), tables=tables)


def total_order(contract: FeatureContract) -> list[str]:
    """Every column, keys first: the order rows are written in, total even when keys repeat."""
    return list(contract.key_columns) + [c for c in contract.all_columns if c not in contract.key_columns]


def sorted_single_file(features: DataFrame, contract: FeatureContract) -> DataFrame:
    """One partition in a total order (every column, keys first), for a single file written by Spark's writer."""
    return features.repartition(1).sortWithinPartitions(*total_order(contract))


def _file_writer(output: str, order: list[str], schema: pa.Schema):  # type: ignore[no-untyped-def]
    """The function each Spark task runs (``mapInArrow``): sort its rows of each output file and write them.

    A task holds every row of the files it writes (rows are partitioned by the same hash that names
    the file), so each file is complete when its task writes it; a retried task writes it again, the
    same bytes. Yields one row per file written: its name and row count.
    """

    def write(batches):  # type: ignore[no-untyped-def]  # no hints: Spark must not infer a UDF type from them
        import pyarrow as pa
        import pyarrow.compute as pc
        from pyspark import TaskContext

        fs, root = filesystem_from_uri(output)
        collected = list(batches)
        names, rows = [], []
        if collected:
            table = pa.Table.from_batches(collected)
            ids = sorted(pc.unique(table[_FILE_COLUMN]).to_pylist())
            task = TaskContext.get()
            if task is not None and ids != [task.partitionId()]:
                # Two tasks must never write one file: the file id must be the partition the rows went to.
                raise ContractError(f"task {task.partitionId()} received rows of files {ids}: the output's "
                                    "partitioning no longer matches the hash that names the files")
            for file_id in ids:
                rows_of = table.filter(pc.equal(table[_FILE_COLUMN], file_id)).drop_columns([_FILE_COLUMN])
                name = f"part-{file_id:05d}.parquet"
                for field in schema:  # the cast to the contract refuses these with no column named
                    if not field.nullable and (nulls := rows_of[field.name].null_count):
                        raise ContractError(
                            f"column {field.name!r} holds {nulls} nulls in {name}, but the contract's "
                            "required_in_file says the transform makes it non-null: fill it in the transform "
                            "(e.g. coalesce) or take it out of required_in_file (docs/workloads.md)")
                rows.append(write_sorted(rows_of, order, schema, fs, posixpath.join(root, name)))
                names.append(name)
        yield pa.RecordBatch.from_pydict({"file": names, "rows": rows}, schema=pa.schema([("file", pa.string()), ("rows", pa.int64())]))

    return write


def spark_type_of(arrow_type: pa.DataType) -> Any:
    """The Spark SQL type a contract's Arrow type is written from (None for one this check does not know); bulk
    scoring declares its key columns with it too (:mod:`tenfold.inference.spark`)."""
    import pyarrow as pa
    from pyspark.sql import types as T

    if pa.types.is_timestamp(arrow_type):
        # An instant: Spark's TimestampType. A TimestampNTZType (wall-clock, no zone) would be cast as if it were UTC.
        return T.TimestampType() if arrow_type.tz else T.TimestampNTZType()
    if pa.types.is_decimal(arrow_type):
        return T.DecimalType(arrow_type.precision, arrow_type.scale)
    simple = {pa.int8(): T.ByteType(), pa.int16(): T.ShortType(), pa.int32(): T.IntegerType(),
              pa.int64(): T.LongType(), pa.float32(): T.FloatType(), pa.float64(): T.DoubleType(),
              pa.string(): T.StringType(), pa.large_string(): T.StringType(), pa.bool_(): T.BooleanType(),
              pa.date32(): T.DateType(), pa.binary(): T.BinaryType()}
    return simple.get(arrow_type)


def check_schema(features: DataFrame, contract: FeatureContract, workload: str) -> None:
    """Refuse, before a row is written, a transform whose columns are not the contract's: one missing or not in the
    contract, or of another type. The writer casts each file to the contract, which would turn a string ``x1`` or
    a ``bigint`` into the contract's type, or drop an extra column, without a word. Spark's own types are compared
    (no Arrow conversion of the schema, whose signature differs between Spark versions: Dataproc runs its own).
    Nullability is checked per file as it is written (:func:`_file_writer`): Spark calls a column read from a file
    nullable whatever it holds."""
    actual = [(f.name, f.dataType) for f in features.schema.fields]
    names = [name for name, _ in actual]
    expected = contract.arrow_schema()
    problems = []
    if doubled := sorted({n for n in names if names.count(n) > 1}):
        problems.append(f"named twice: {', '.join(doubled)}")
    if missing := [n for n in expected.names if n not in names]:
        problems.append(f"missing: {', '.join(missing)}")
    if extra := [n for n in names if n not in expected.names]:
        problems.append(f"not in the contract: {', '.join(extra)}")
    got = dict(actual)
    for field in expected:
        want = spark_type_of(field.type)
        if want is None:  # no Spark type gives it (uint32, float16, time64): no transform can produce the column
            problems.append(f"the contract's {field.name} is {field.type}, which Spark has no type for")
        elif field.name in got and field.name not in doubled and got[field.name] != want:
            problems.append(f"{field.name} is {got[field.name].simpleString()}, the contract says {field.type} "
                            f"({want.simpleString()})")
    if problems:
        raise ContractError(f"the {workload} workload's transform and its contract disagree on the features' "
                            f"columns ({'; '.join(problems)}): fix the transform (a cast, a select) or the "
                            "contract's column_types before building the month (docs/workloads.md)")


def write_features(features: DataFrame, contract: FeatureContract, output: str, *, files: int = OUTPUT_FILES) -> dict[str, int]:
    """Write ``features`` to the folder ``output`` (emptied first) as up to ``files`` sorted, reproducible files.

    Returns each file's name and rows. A month without rows is written as one empty file, so its schema
    is still checked and published.
    """
    from pyspark.sql import functions as F

    if files < 1:
        raise ValueError(f"--output-files must be at least 1, not {files}")
    fs, root = filesystem_from_uri(output)
    fs.delete_dir_contents(root, missing_dir_ok=True)  # a retry starts from an empty folder
    make_dirs(fs, root)
    schema = contract.arrow_schema()
    keys = list(contract.key_columns)
    tagged = features.withColumn(_FILE_COLUMN, F.pmod(F.hash(*keys), F.lit(files)))
    # repartition(n, keys) is Spark's HashPartitioning: partition pmod(Murmur3Hash(keys, 42), n), the very
    # expression of F.hash above, so task i holds exactly the rows of file i (the writer checks it).
    # mapInArrow hands them to Python as Arrow, where pyarrow sorts and writes them: no parquet-mr copy.
    written = (tagged.repartition(files, *keys)
               .mapInArrow(_file_writer(output, total_order(contract), schema), "file string, rows long")
               .collect())
    if not written:
        write_sorted(schema.empty_table(), [], schema, fs, posixpath.join(root, "part-00000.parquet"))
        return {"part-00000.parquet": 0}
    return {r["file"]: int(r["rows"]) for r in sorted(written, key=lambda r: r["file"])}


def run(
    spark: SparkSession, args: argparse.Namespace, inputs: Inputs, workload: Workload | None = None
) -> dict[str, object]:
    """Build the month's features into ``args.output``; returns facts for the log and the manifest.

    ``workload`` defaults to the one ``args.workload`` names.
    """
    workload = workload or get_workload(args.workload)
    contract = workload.contract
    table_name = args.features_table
    part: Partition = args.month
    lake = Lake(args.lake_uri, args.layout)
    history = list(inputs.history)

    frames = {table: spark.read.parquet(*uris) for table, uris in inputs.tables.items()}
    check_zones(spark, frames, part.label, workload.sources.zone_columns)
    marker = spark.conf.get(FAIL_ONCE_CONF, None)
    if marker:
        # The history table is the large one, scanned by several tasks: the retry is a real one.
        target = workload.sources.history_table or next(iter(frames))
        frames[target] = fail_once(frames[target], marker)
    features = workload.transform(frames, part, args.history_months)
    check_schema(features, contract, workload.name)
    files = write_features(features, contract, args.output, files=args.output_files)
    rows, digest = staged_summary(args.output)
    lookups = write_lookups(workload.lookups(frames, part, args.history_months), args.lookups_output, contract)
    facts: dict[str, object] = {
        "month": part.label,
        "rows": rows,
        "files": len(files),
        "history_months": [p.label for p in history],
        "inputs": {t: len(u) for t, u in inputs.tables.items()},
        "lookups": lookups,
    }
    expected = schema_hash(contract.arrow_schema())
    if digest != expected:
        raise ContractError(
            f"the job wrote schema {digest}, but the {workload.name} workload's contract describes {expected}: "
            "the transform and the contract disagree; fix one of them before publishing"
        )
    if args.publish:
        run_id = args.run_id or f"spark-{uuid.uuid4().hex[:12]}"
        # Lookups first: the features manifest is the month's commit marker for online serving.
        built = publish_lookups(lake, args.lookups_table, part, args.lookups_output, contract, run_id=run_id,
                                extra={"features_table": table_name})
        lake.publish(
            table_name, part, args.output, run_id=run_id,
            extra=contract.manifest_extra(history_months=facts["history_months"], **{LOOKUPS_KEY: built}),
        )
        facts["manifest"] = lake.uri_of(lake.manifest_path(table_name, part))
    return facts


def staged_summary(output: str) -> tuple[int, str]:
    """Rows and schema hash of the Parquet files the job wrote to ``output`` (read from footers only)."""
    import pyarrow.fs as pafs
    import pyarrow.parquet as pq

    fs, root = filesystem_from_uri(output)
    files = sorted(
        i.path for i in fs.get_file_info(pafs.FileSelector(root))
        if i.type == pafs.FileType.File and i.base_name.endswith(".parquet")
    )
    if not files:
        raise ContractError(f"the job wrote no Parquet file under {output}")
    metas = [pq.read_metadata(f, filesystem=fs) for f in files]
    digests = {schema_hash(m.schema.to_arrow_schema()) for m in metas}
    if len(digests) != 1:
        raise ContractError(f"the files under {output} disagree on the schema ({sorted(digests)})")
    return sum(m.num_rows for m in metas), digests.pop()


# Spark's error classes of a file it could not read (CANNOT_READ_FILE_FOOTER too): the job reads only its inputs.
_READ_ERRORS = ("FAILED_READ_FILE", "CANNOT_READ_FILE", "PATH_NOT_FOUND")


def _is_bad_input(exc: BaseException, inputs: Inputs) -> bool:
    """Whether ``exc`` is Spark failing to read one of ``inputs`` (exit 2: re-ingest the month). The job's own output
    (a :class:`ContractError`, an OSError or Arrow error writing or reading back what it wrote) never is, whatever
    file it names: the inputs are read by Spark only, the output written and read back by pyarrow."""
    import pyarrow as pa

    if isinstance(exc, ContractError | OSError | pa.ArrowException):
        return False
    text = str(exc)
    return any(s in text for s in _READ_ERRORS) or _named_input(text, inputs) is not None


def _named_input(text: str, inputs: Inputs) -> tuple[str, str] | None:
    """The table and month (``YYYY-MM``) of the input file ``text`` names, if it names one (Spark writes file:/x for
    file:///x, so the path is compared without scheme)."""
    for table, uris in inputs.tables.items():
        for uri in uris:
            if uri.split("://", 1)[-1].lstrip("/") in text:
                found = re.search(r"year=(\d{4})/month=(\d{1,2})/", uri)
                return table, (Partition(int(found[1]), int(found[2])).label if found else "")
    return None


def _bad_input_message(exc: BaseException, inputs: Inputs, args: argparse.Namespace) -> str:
    """What to do about an input Spark could not read: the month of the file it names (a history month, often, not
    the one built), and for a file that is gone, a build run again (a publish replaced it while the job read it: a
    retry reads the new one)."""
    text = str(exc).strip()
    first = text.splitlines()[0] if text else type(exc).__name__
    table, month = _named_input(text, inputs) or ("", "")
    month = month or args.month.label
    what = f"an input file of {f'{table} ' if table else ''}{month} under {args.lake_uri} cannot be read ({first[:500]})"
    if any(gone in text for gone in ("FILE_NOT_EXIST", "PATH_NOT_FOUND", "FileNotFoundException")):
        return (f"{what}; it is gone: a publish of {month} replaced it while the job read it, so run the build of "
                f"{args.month.label} again (if it persists, re-ingest {month}: tenfold ingest --month {month})")
    return f"{what}; re-ingest that month (tenfold ingest --month {month})"


_TRACEBACK = "Traceback (most recent call last):"


def failure_line(exc: BaseException) -> str:
    """What a Spark job's failure ``exc`` says, as one line (this job's and the bulk scoring job's last words), with
    what to do when the disk is full."""
    line = _what_failed(exc)
    if "No space left on device" in line:
        line += " (the disk is full: free space on it, then let the task retry)"
    return line


def _what_failed(exc: BaseException) -> str:
    """What ``exc`` says, as one line. A failure inside a Spark task (the writer's ContractError, a full disk) reaches
    the driver wrapped: pyspark's PythonException starts "An exception was thrown from the Python worker:", py4j's
    error of the SparkException that aborted the job "An error occurred while calling o312.collectToPython.", and the
    worker's own exception line is in the Python traceback inside either text, before the Java stack. That line is
    what is wrong; for any other failure, its first line."""
    text = str(exc).strip()
    if not text:
        return type(exc).__name__
    if (start := text.find(_TRACEBACK)) != -1:
        # The traceback ends where the Java stack begins (py4j's text goes on with "\n\tat org.apache.spark..."); of
        # chained exceptions, the last traceback's is the one raised. Its exception line is the first line after the
        # header that is not indented (frames and source lines are), whatever the exception's name.
        block = re.split(r"\n\tat |\n\s*JVM stacktrace:", text[start:], maxsplit=1)[0]
        last = block[block.rfind(_TRACEBACK) + len(_TRACEBACK):]
        if line := next((ln for ln in last.splitlines() if ln.strip() and not ln[0].isspace()), None):
            return line.strip()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if lines[0].startswith("An error occurred while calling") and len(lines) > 1:
        # py4j's own first line names only the Java call; the Java exception's message follows it (": org...").
        return lines[1].removeprefix(":").strip()
    return lines[0]


def _store_types() -> tuple[type[Exception], ...]:
    """What Google's client libraries raise where the lake's storage client (its checksums, its publish lock) fails:
    an error of the API (an outage, a refusal, its retries run out: ``RetryError``), or google-auth's (no
    credentials, a login refused)."""
    from google.api_core.exceptions import GoogleAPIError
    from google.auth.exceptions import GoogleAuthError

    return GoogleAPIError, GoogleAuthError


def _store_failure(exc: BaseException, lake_uri: str, doing: str) -> str:
    """The one line the job ends with when the lake's storage client failed ``doing`` (exit 1, retried): what failed,
    on which lake, and what to do."""
    from tenfold.outages import is_unreachable, no_credentials

    said = (str(exc).strip().splitlines() or [""])[0][:500]
    what = f"{type(exc).__name__}: {said}" if said else type(exc).__name__
    if no_credentials(exc):
        todo = ("give the job Google Cloud credentials (on Dataproc, the batch's service account; elsewhere "
                "GOOGLE_APPLICATION_CREDENTIALS), or open the lake as gs://anonymous@... for an anonymous store")
    elif is_unreachable(exc):
        todo = ("the store the lake URI names (Google Cloud, or its endpoint_override) did not answer: check that it "
                "is up and reachable from the job, then let the task retry")
    else:
        todo = ("the store refused it: check that the lake's bucket exists and that the job's service account may "
                "read and create objects in it (roles/storage.objectUser), then run the task again")
    return f"build_features: {doing} failed on the lake {lake_uri} ({what}): {todo}"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the job; returns the process exit code (0 ok, 2 bad or missing input, 1 any other failure)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    try:
        workload = get_workload(args.workload)
    except WorkloadError as exc:
        print(f"build_features: {exc}", file=sys.stderr)
        return EXIT_FAILED
    try:
        inputs = resolve_inputs(Lake(args.lake_uri, args.layout), args.month, args.history_months, workload.sources)
    except LakeError as exc:
        print(f"build_features: bad input for {args.month.label}: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except OSError as exc:  # the lake itself cannot be read (not a folder, no permission, no credentials)
        print(f"build_features: cannot read the lake {args.lake_uri}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except _store_types() as exc:  # the storage client checking the inputs' checksums on gs:// (an outage, a refusal)
        print(_store_failure(exc, args.lake_uri, f"checking the inputs of {args.month.label}"), file=sys.stderr)
        return EXIT_FAILED

    from pyspark.sql import SparkSession

    builder = SparkSession.builder.appName(f"tenfold-build-features-{args.month.label}")
    for key, value in SESSION_CONF.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    started = time.monotonic()
    try:
        facts = run(spark, args, inputs, workload)
    except LakeError as exc:  # in run, only publishing uses the lake (the inputs were resolved above): retryable
        print(f"build_features: publishing {args.month.label} failed: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except UnknownZones as exc:
        print(f"build_features: bad input for {args.month.label}: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except _store_types() as exc:  # the storage client of the publish (its lock, on gs://): retryable
        print(_store_failure(exc, args.lake_uri, f"publishing {args.month.label}"), file=sys.stderr)
        return EXIT_FAILED
    except Exception as exc:
        first = failure_line(exc)  # while the JVM is up: py4j asks it for the text of its exception
        if _is_bad_input(exc, inputs):
            # Exit 2 for a file gone too: 1 is what a JVM that cannot write the class archive exits with, which
            # turns the archive off for an hour (tenfold.features.submit.class_sharing); the task retries either.
            print(f"build_features: {_bad_input_message(exc, inputs, args)}", file=sys.stderr)
            return EXIT_BAD_INPUT
        print(f"build_features: failed for {args.month.label}: {first[:1000]}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        spark.stop()
    log.info("built features %s in %.1f s", facts, time.monotonic() - started)
    print(f"build_features: ok {facts}")
    return 0
