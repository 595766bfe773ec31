"""The published lookup tables, loaded for online feature assembly (what the model server calls).

``build_features`` publishes, beside each month's features, the workload's lookup tables
(``contract.lookup_tables``) as lake tables named ``<settings.storage.lookups_table>_<name>``, one
partition per month, each manifest recording the feature definition's version. It publishes them
*before* the month's features manifest, so the features manifest is the month's commit marker: a month
whose features are visible has all its lookups. The features manifest names its lookups' data folders
(``LOOKUPS_KEY``): lookups of a later build whose publish did not finish are not served with them.

:func:`load_online_features` reads every such month with pyarrow (no Spark, no JVM) and hands them to
the workload's ``online_features``; it refuses lookups of another feature definition version, since a
model trained on one definition must never be served features of another. Try it::

    python -c "from tenfold.config import get_settings; from tenfold.features.online import \\
        load_online_features; print(load_online_features(get_settings()).months)"
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from typing import TYPE_CHECKING

import pyarrow as pa

from tenfold.data.lake import CorruptManifestError, Lake, LakeError, Manifest, Partition
from tenfold.workloads import VERSION_KEY, OnlineFeatures, Workload, get_workload, lookup_table

if TYPE_CHECKING:
    from tenfold.config import Settings

__all__ = ["LOOKUPS_KEY", "LookupsUnavailable", "MismatchedLookups", "load_online_features", "lookup_table", "read_lookups", "read_month_lookups",
           "served_months"]

log = logging.getLogger(__name__)


class LookupsUnavailable(RuntimeError):
    """No month can be served, or a lookup table was built by another feature definition; the message
    says which and how to rebuild it."""


class StaleLookups(LookupsUnavailable):
    """A month's lookup table was built by another feature definition version than the workload's."""


class MismatchedLookups(LookupsUnavailable):
    """A month's lookup table is of another build than its published features (a publish that failed after the
    lookups, before the features): features assembled from it would differ from the ones batch scoring reads."""


class LookupsPublishing(MismatchedLookups):
    """A month's lookup table is of another build than its published features, and newer than them by less than a
    publish task's bound (``settings.pipelines.build_features.task_timeout_s``): the publish may still be on its way
    to the features manifest, so the month is not yet known to be left to rebuild."""


# How long a load reads a month again whose lookups' publish has not reached its features yet (build_features copies
# the features right after the lookups: seconds), and how often.
PUBLISH_WAIT_S = 30.0
PUBLISH_POLL_S = 1.0

# In a features manifest's extra: each lookup table's published data folder (content-addressed), so a reader can
# tell the lookups of the build the features belong to from those of a later build whose publish did not finish.
LOOKUPS_KEY = "lookups"


def served_months(settings: Settings, workload: Workload | None = None, lake: Lake | None = None) -> list[Partition]:
    """The months whose features and every lookup table are published (ascending).

    A month with features but not all its lookups (built before lookups were published) is left out
    with a warning that says how to add it.
    """
    workload = workload or get_workload(settings)
    lake = lake or Lake.from_settings(settings)
    names = workload.contract.lookup_tables
    features = lake.published_partitions(settings.storage.features_table)
    complete = set(features)
    for name in names:
        complete &= set(lake.published_partitions(lookup_table(settings.storage.lookups_table, name)))
    lacking = [p.label for p in features if p not in complete]
    if lacking:
        log.warning("features of %s have no (complete) lookups and cannot be served: rebuild them with "
                    "build_features (python -m tenfold.pipelines.build_features YYYY-MM)", ", ".join(lacking))
    return sorted(complete)


def read_lookups(settings: Settings, workload: Workload | None = None) -> dict[str, dict[str, pa.Table]]:
    """Every served month's lookup tables: ``{"2013-02": {"weather": <table>, ...}, ...}``.

    A month whose tables were built by another feature definition version than the workload's contract, or by
    another build than its published features (:class:`MismatchedLookups`, a publish that failed), or are corrupt (a file or manifest: the read withdraws the month to quarantine when it may), is left out with a warning
    (its requests are refused as a month not served, saying to rebuild it), as a month without its lookups is: one
    stale or corrupt month does not take the others offline. A month whose lookups are of a build still being
    published (:class:`LookupsPublishing`) is read again for up to :data:`PUBLISH_WAIT_S` before it is left out.
    Raises :class:`LookupsUnavailable` when no month can be served.
    """
    workload = workload or get_workload(settings)
    lake = Lake.from_settings(settings)
    prefix = settings.storage.lookups_table
    # A contract with no lookup_tables (its requests carry every feature) serves each month whose features are
    # published: served_months then needs nothing beside them, and each month's lookups are {}.
    months = served_months(settings, workload, lake)
    through = settings.serving.server.lookups_through
    if through and months and months[0].label > through:
        raise LookupsUnavailable(
            f"no month up to {through} (serving.server.lookups_through, the fleet's lookups token) has its lookup "
            f"tables published under {lake.uri} (the first is {months[0].label}): reload the fleet's lookups "
            "(tenfold serve reload)")
    if through:  # the months the pool's other replicas loaded: one published since waits for a reload
        months = [m for m in months if m.label <= through]
    if not months:
        raise LookupsUnavailable(
            f"no month of {settings.storage.features_table!r} has its lookup tables ({prefix}_*) published under "
            f"{lake.uri}: run build_features for the months to serve (python -m tenfold.pipelines.build_features "
            "YYYY-MM, or the build_features DAG)"
        )
    served: dict[str, dict[str, pa.Table]] = {}
    stale: dict[str, str] = {}
    unreadable: dict[str, str] = {}
    publishing: dict[str, str] = {}
    waited_until = time.monotonic() + PUBLISH_WAIT_S
    todo = list(months)
    while todo:
        for part in todo:
            try:
                served[part.label] = read_month_lookups(settings, workload, lake, part)
                publishing.pop(part.label, None)
            except LookupsPublishing as exc:
                publishing[part.label] = str(exc)
            except (StaleLookups, MismatchedLookups) as exc:  # a month left to rebuild is left out, not fatal
                # Decided: no longer waited for. Kept among the publishing months, it was read again every poll until
                # the wait ran out, then left out as "its publish did not finish yet" instead of for this reason.
                publishing.pop(part.label, None)
                stale[part.label] = str(exc)
            except LookupsUnavailable as exc:
                # A corrupt file or manifest takes its month offline, not the others. Anything else (the month being
                # re-published, a lock) fails the load, as before: tried again whole, not served without the month.
                if not isinstance(exc.__cause__, CorruptManifestError):
                    raise
                publishing.pop(part.label, None)
                unreadable[part.label] = str(exc)
        # A month caught between its lookups' publish and its features' (build_features publishes the lookups first)
        # is read again for a while: left out at once, the replica refused it for its whole life while its siblings
        # served it; failing the whole load instead kept every replica from starting, for every month, until the
        # publish task's bound had passed when the publish had died. Still unfinished after the wait, it is left out.
        todo = [p for p in months if p.label in publishing]
        if todo and time.monotonic() >= waited_until:
            stale |= publishing
            break
        if todo:
            time.sleep(PUBLISH_POLL_S)
    if not served:
        left_out = {**stale, **unreadable}
        raise LookupsUnavailable(f"no month can be served: {next(iter(left_out.values()))}"
                                 + (f" (and {len(left_out) - 1} more months alike)" if len(left_out) > 1 else ""))
    if stale:
        log.warning("months %s have lookups of another feature definition or build and are not served until rebuilt "
                    "(python -m tenfold.pipelines.build_features YYYY-MM): %s", ", ".join(stale),
                    next(iter(stale.values())))
    if unreadable:
        log.warning("months %s have lookup tables that cannot be read and are not served until rebuilt (python -m "
                    "tenfold.pipelines.build_features YYYY-MM): %s", ", ".join(unreadable),
                    next(iter(unreadable.values())))
    return served



def read_month_lookups(settings: Settings, workload: Workload, lake: Lake, part: Partition) -> dict[str, pa.Table]:
    """One month's lookup tables by name, each built by the workload's feature definition version.

    Raises :class:`LookupsUnavailable` when a table cannot be read or was built by another version (features
    assembled from it would be ones the model never saw), :class:`MismatchedLookups` when it is of another build
    than the month's published features (recorded in their manifest since the lookups were; older ones are not
    checked): :class:`LookupsPublishing` when that build is newer than the features by less than a publish task's
    bound (its publish may be on its way to the features)."""
    contract = workload.contract
    features = settings.storage.features_table
    try:
        published = lake.read_manifest(features, part) if lake.has_manifest(features, part) else None
    except LakeError as exc:
        raise LookupsUnavailable(f"cannot read {features} {part.label}: {exc}") from exc
    built = published.extra.get(LOOKUPS_KEY) if published is not None else None
    tables = {}
    checked: dict[str, str] = {}  # each table's build, as checked against the features' record
    for name in contract.lookup_tables:
        table = lookup_table(settings.storage.lookups_table, name)
        try:
            manifest = lake.read_manifest(table, part)
            checked[table] = manifest.data_dir
            if isinstance(built, dict) and built.get(name) != manifest.data_dir:
                mismatch = (f"{table} {part.label} is of another build ({manifest.data_dir}) than the month's "
                            f"published {features} (built with {built.get(name)})")
                bound = settings.pipelines.build_features.task_timeout_s
                if (age := _publishing_for(manifest, published, bound)) is not None:
                    raise LookupsPublishing(
                        f"{mismatch}, published {age:.0f} s ago: its publish did not finish yet (its features follow "
                        f"within settings.pipelines.build_features.task_timeout_s, {bound} s; if they do not, run "
                        f"build_features for the month again: python -m tenfold.pipelines.build_features {part.label})"
                    )
                raise MismatchedLookups(
                    f"{mismatch}: its publish did not finish; run build_features for the month again (python -m "
                    f"tenfold.pipelines.build_features {part.label})"
                )
            version = manifest.extra.get(VERSION_KEY)
            if version != contract.version:
                raise StaleLookups(
                    f"{table} {part.label} was built with features version {version}, but the {workload.name} "
                    f"workload now defines version {contract.version}: serving it would assemble features the "
                    f"model never saw; rebuild the month (python -m tenfold.pipelines.build_features {part.label})"
                )
            tables[name] = lake.read_table(table, [part])
        except LakeError as exc:
            raise LookupsUnavailable(f"cannot read {table} {part.label}: {exc}") from exc
    # Each read follows a publish that lands meanwhile (it reads the manifest again): a month being published read
    # one table of the new build beside another of the old one, features matching neither build, for the replica's
    # life. Read again, every build must be the one checked; if not, the load fails and is tried again whole.
    try:
        moved = [table for table, data_dir in checked.items() if lake.read_manifest(table, part).data_dir != data_dir]
        again = lake.read_manifest(features, part).extra.get(LOOKUPS_KEY) if lake.has_manifest(features, part) else None
    except LakeError as exc:
        raise LookupsUnavailable(f"cannot read {part.label}'s manifests again: {exc}") from exc
    if moved or again != built:
        raise LookupsUnavailable(f"{part.label} was published again while its lookup tables were read "
                                 f"({', '.join(moved) or features}): the load is tried again")
    return tables


def _publishing_for(lookups: Manifest, features: Manifest | None, bound_s: float) -> float | None:
    """Seconds since ``lookups`` (of another build than ``features``) was published when its publish may still be
    on its way to the features: build_features publishes the lookups first, so that publish wrote them later than
    the features it replaces (to the second, as manifests record it), and its task ends within ``bound_s``, killed at
    the latest. None when not: an older build, or one whose features never followed (a publish that failed), whose
    month is left out until it is built again. A time that does not parse is no publish known to be in progress."""
    if features is None:
        return None
    try:
        written, replaced = (dt.datetime.fromisoformat(m.created_at) for m in (lookups, features))
        age = (dt.datetime.now(dt.UTC) - written).total_seconds()
        newer = written >= replaced
    except (TypeError, ValueError):  # unparseable, or one without a zone beside one with
        return None
    return max(age, 0.0) if newer and age < bound_s else None


def load_online_features(settings: Settings) -> OnlineFeatures:
    """The settings' workload's online assembly over every served month's published lookups."""
    workload = get_workload(settings)
    online = workload.online_features(read_lookups(settings, workload))
    log.info("online features of %s loaded for %s", workload.name, ", ".join(online.months))
    return online
