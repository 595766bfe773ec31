"""A rollout's record in the registry: reading it, describing it, aborting it, and its HTML report.

The ``rollout_model`` pipeline writes the record (create-only events under deterministic keys: ``start``,
``deployed``, ``s01-set``, ``s01-c001``, ..., ``abort``, ``end``, ``promoted_alias``, ``promotion_refused``, ``done``; see
:mod:`tenfold.pipelines.rollout_model`); ``tenfold rollout status`` and ``tenfold rollout abort`` read and
add to it through this module, which needs no pipeline.
"""

from __future__ import annotations

import datetime as dt
import html
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from tenfold.config import Settings
from tenfold.fsio import filesystem_from_uri, make_dirs, write_file_atomically
from tenfold.registry.registry import ModelRegistry
from tenfold.rollout.analysis import Check

# Outcomes of a rollout (its ``end`` event).
PROMOTED, ROLLED_BACK, ABORTED, FAILED = "promoted", "rolled_back", "aborted", "failed"
# The event of a rollout that ended promoted but whose promotion ``conclude`` could not carry out (the champion
# moved under it): its outcome is FAILED, whatever ``end`` says.
PROMOTION_REFUSED = "promotion_refused"
# The event conclude records once it moved the champion to the rollout's version: a retry that finds the champion
# moved away since (a rollback by hand) does not promote again.
PROMOTED_ALIAS = "promoted_alias"
# The event naming the alert hooks that missed conclude's alert (a re-run of conclude names them again), and the one
# saying every hook took it: a re-run that finds ``done`` but neither sends the alert again (the try died sending it).
ALERT_UNDELIVERED = "alert-undelivered"
ALERT_SENT = "alert-sent"
# Recorded before ``done`` when its alert is due: a re-run that finds ``done`` and this, but no outcome, sends the alert
# again. A ``done`` without it was recorded before the outcomes were kept (its alert then went out, untracked): a
# re-run of such a rollout's conclude sent it again, paging for a rollout long over.
ALERT_DUE = "alert-due"

Record = dict[str, dict[str, Any]]


def undelivered_key(record: Mapping[str, Any]) -> tuple[str | None, str]:
    """(the newest ``alert-undelivered`` event's key or None, the key the next one takes): the first send's is
    ``alert-undelivered``, each later one's (a cleared conclude's, to the hooks still missing it)
    ``alert-undelivered-2``, ``-3``... Events are create-only, so each send records its own."""
    if ALERT_UNDELIVERED not in record:
        return None, ALERT_UNDELIVERED
    n = 2
    while f"{ALERT_UNDELIVERED}-{n}" in record:
        n += 1
    return (ALERT_UNDELIVERED if n == 2 else f"{ALERT_UNDELIVERED}-{n - 1}"), f"{ALERT_UNDELIVERED}-{n}"


@dataclass(frozen=True)
class Rollout:
    """Who a rollout is: its id, the version going out, the champion it started from, its steps."""

    rollout_id: str
    version: str
    champion: str
    started_at: str
    steps: tuple[int, ...]

    @classmethod
    def from_start(cls, start: Mapping[str, Any]) -> Rollout:
        run = start["run"]
        return cls(run["rollout_id"], run["version"], run["champion"], run["started_at"], tuple(run["policy"]["steps"]))


def set_key(index: int) -> str:
    return f"s{index:02d}-set"


def check_key(index: int, n: int) -> str:
    return f"s{index:02d}-c{n:03d}"


def is_check(key: str, event: Mapping[str, Any]) -> bool:
    return "-c" in key and "verdict" in event


def ordered(events: Mapping[str, dict[str, Any]]) -> Record:
    """Events in the order they happened (each carries its time, ``at``)."""
    return dict(sorted(events.items(), key=lambda kv: (kv[1].get("at", ""), kv[0])))


def latest(registry: ModelRegistry, version: str | None = None) -> tuple[Rollout, Record] | None:
    """The newest rollout (of ``version``) and its record, or None when there is none."""
    for _, v, rid in reversed(registry.rollouts(version)):
        got = registry.rollout_events(v, rid)
        if "start" in got:
            return Rollout.from_start(got["start"]), ordered(got)
    return None


def outcome(record: Mapping[str, Mapping[str, Any]]) -> str | None:
    """What the rollout came to: the ``end`` event's outcome, FAILED where the promotion it decided was refused,
    None while it is in progress."""
    if PROMOTION_REFUSED in record:
        return FAILED
    return str(record["end"]["outcome"]) if "end" in record else None


def newer_rollout(registry: ModelRegistry, rollout_id: str) -> str | None:
    """The id of the newest rollout of any version when it is not ``rollout_id`` (the router's canary weight is
    that rollout's), else None."""
    found = latest(registry)
    return found[0].rollout_id if found is not None and found[0].rollout_id != rollout_id else None


def record_abort(registry: ModelRegistry, rollout: Rollout, *, by: str) -> tuple[bool, str]:
    """Record an abort (the running step stops at its next poll), and the rollout's end as aborted unless it ended
    first. The end is the one create-only event the DAG's ``conclude`` records too: whichever is first decides, so
    an abort that lands while ``conclude`` decides is never carried out as a promotion. Returns (whether this is the
    first abort, the outcome the end records); the caller takes the canary's traffic away unless it is promoted."""
    at = dt.datetime.now(dt.UTC).isoformat()
    first = registry.record_rollout_event(rollout.version, rollout.rollout_id, "abort", {"at": at, "by": by})
    registry.record_rollout_event(rollout.version, rollout.rollout_id, "end",
                                  {"at": at, "outcome": ABORTED, "reasons": [f"aborted by {by}"]})
    return first, str(outcome(registry.rollout_events(rollout.version, rollout.rollout_id)))


def describe(rollout: Rollout, record: Mapping[str, Mapping[str, Any]], canary_percent: int | None = None) -> str:
    """The rollout for people: each step, each check with the values that drove it, the outcome."""
    lines = [f"rollout {rollout.rollout_id}: {rollout.version} against champion {rollout.champion}, "
             f"steps {list(rollout.steps)} %, started {rollout.started_at}"]
    for key, e in record.items():
        if key.endswith("-set"):
            lines.append(f"  {e['at']}  step {e['step']}: canary at {e['percent']} %")
        elif is_check(key, e):
            lines.append(f"  {e['at']}    {key}: {Check(e['verdict'], tuple(e['reasons']), e['values']).summary()}")
        elif key in ("deployed", "abort", "end", PROMOTED_ALIAS, PROMOTION_REFUSED, "done", ALERT_SENT) or \
                key.startswith(ALERT_UNDELIVERED):
            detail = {k: v for k, v in e.items() if k not in ("at", "run")}
            lines.append(f"  {e['at']}  {key}: {json.dumps(detail, default=str)}")
    state = outcome(record) or "in progress"
    if "end" in record and "done" not in record and PROMOTION_REFUSED not in record and state != ABORTED:
        # (An abort is carried out by `tenfold rollout abort` itself, weight 0 at once: an older rollout's conclude,
        # which failed, may never record done.)
        # The end is decided; conclude carries it out (the alias, the stable pool's roll, the weight) and records done.
        state += " (not carried out yet: conclude has not finished; see the rollout_model run's conclude task)"
    lines.append(f"state: {state}" + (f"; canary at {canary_percent} % now" if canary_percent is not None else ""))
    return "\n".join(lines)


def report_uri(settings: Settings, rollout: Rollout) -> str:
    prefix = settings.serving.rollout.reports_prefix.strip("/")
    return f"{settings.storage.lake_uri.rstrip('/')}/{prefix}/{rollout.version}/{rollout.rollout_id}.html"


def write_report(settings: Settings, rollout: Rollout, record: Mapping[str, Mapping[str, Any]]) -> str:
    """Save the HTML report (:func:`render_report`) in the lake, atomically; returns its URI."""
    uri = report_uri(settings, rollout)
    fs, path = filesystem_from_uri(uri)
    make_dirs(fs, path.rsplit("/", 1)[0])
    write_file_atomically(fs, path, render_report(rollout, record).encode())  # a unique tmp, removed on failure
    return uri


def _plot(title: str, checks: list[Mapping[str, Any]], metric: str, scale: float = 1.0, unit: str = "") -> str:
    """An inline SVG line plot of ``<arm>_<metric>`` for both arms over the checks."""
    width, height, pad = 560, 160, 30
    series = {arm: [(i, c["values"].get(f"{arm}_{metric}")) for i, c in enumerate(checks)] for arm in ("canary", "control")}
    ys = [v * scale for pts in series.values() for _, v in pts if isinstance(v, (int, float))]
    if not ys:
        return f"<h3>{html.escape(title)}</h3><p>no data</p>"
    lo, hi = min(0.0, min(ys)), max(ys) or 1.0
    n = max(1, len(checks) - 1)

    def xy(i: int, v: float) -> tuple[float, float]:
        return pad + i * (width - 2 * pad) / n, height - pad - (v * scale - lo) / ((hi - lo) or 1) * (height - 2 * pad)

    colours = {"canary": "#d9480f", "control": "#1c7ed6"}
    shapes = []
    for arm, pts in series.items():
        good = [xy(i, v) for i, v in pts if isinstance(v, (int, float))]
        if good:
            shapes.append(f'<polyline fill="none" stroke="{colours[arm]}" stroke-width="2" '
                          f'points="{" ".join(f"{x:.1f},{y:.1f}" for x, y in good)}"/>')
            shapes += [f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" fill="{colours[arm]}"/>' for x, y in good]
    return (f"<h3>{html.escape(title)}</h3><svg width='{width}' height='{height}' role='img' aria-label='{html.escape(title)}'>"
            f"<text x='2' y='12' font-size='10'>{hi:.3g}{unit}</text>"
            f"<text x='2' y='{height - pad}' font-size='10'>{lo:.3g}{unit}</text>" + "".join(shapes) + "</svg>")


def render_report(rollout: Rollout, record: Mapping[str, Mapping[str, Any]]) -> str:
    """A small self-contained HTML page: the outcome, both arms' metrics over the checks as plots, every check."""
    checks = [e for k, e in record.items() if is_check(k, e)]
    end = record.get(PROMOTION_REFUSED) or record.get("end", {})
    rows = "".join(
        f"<tr><td>{html.escape(c['at'])}</td><td>{c['step']}</td><td>{c['percent']} %</td>"
        f"<td class='{c['verdict']}'>{c['verdict']}</td>"
        f"<td>{html.escape(Check(c['verdict'], tuple(c['reasons']), c['values']).summary())}</td></tr>" for c in checks)
    came_to = html.escape(outcome(record) or "in progress")
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>Rollout {html.escape(rollout.rollout_id)}</title>
<style>body{{font-family:sans-serif;margin:2em}} td,th{{padding:4px 8px;border-bottom:1px solid #ddd;font-size:13px}}
.pass{{color:#2b8a3e}} .fail{{color:#c92a2a}} .no_data{{color:#868e96}}</style></head><body>
<h1>Rollout {html.escape(rollout.rollout_id)}</h1>
<p>Version <b>{html.escape(rollout.version)}</b> against champion <b>{html.escape(rollout.champion)}</b>,
steps {list(rollout.steps)} %, started {html.escape(rollout.started_at)}. Outcome: <b id="outcome">{came_to}</b>
{html.escape('; '.join(end.get('reasons', [])))}</p>
<p><span style="color:#d9480f">canary</span> and <span style="color:#1c7ed6">control</span>, one point per check.</p>
{_plot("error rate (%)", checks, "error_rate", 100.0, "%")}
{_plot("p99 latency (ms)", checks, "p99_ms", 1.0, " ms")}
{_plot("online accuracy", checks, "accuracy")}
{_plot("requests per window", checks, "requests")}
<h2>Checks</h2><table><tr><th>at</th><th>step</th><th>canary</th><th>verdict</th><th>values</th></tr>{rows}</table>
</body></html>
"""
