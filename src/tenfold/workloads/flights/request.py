"""One flights prediction request: a flight as it is known at scheduling time.

The server validates every request body with :class:`FlightRequest` (``Workload.request_model``)::

    {"carrier": "UA", "flight": 1545, "origin": "EWR", "dest": "IAH",
     "sched_dep": "2013-01-01T05:15:00",   # local time at the origin, naive ISO, whole minutes
     "sched_arr": "2013-01-01T08:19:00",   # optional: local time at the destination
     "tailnum": "N14228",                  # optional
     "user_key": "u-123"}                  # optional: the A/B assignment key

Validation is strict, so a bad request gets a 422 naming the field rather than a guess: unknown
fields are refused, codes must be upper-case (IATA carrier, FAA airport), the flight number an integer
(not a string, a float or a boolean), times naive ISO strings (an offset or a Unix timestamp would make
"local time" ambiguous). Whether an airport or carrier *exists* is the lookups' business
(:mod:`.online`), which raises :class:`~tenfold.workloads.RequestInvalid` naming the field.

Light: pydantic only (the server and DAG-parsing processes import it).
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, Strict, ValidationInfo, field_validator

__all__ = ["FlightRequest"]

# YYYY-MM-DDTHH:MM[:SS[.ffffff]], nothing after: no offset, no "Z".
_NAIVE_ISO = re.compile(r"^\d{4}-\d{2}-\d{2}[T ](\d{2}):(\d{2})(:(\d{2})(\.\d{1,6})?)?$")


def _naive_minute(value: Any, name: str) -> Any:
    match = _NAIVE_ISO.fullmatch(value) if isinstance(value, str) else None
    if match is None:
        raise ValueError(
            f"{name} must be a local date and time as a naive ISO string, e.g. 2013-01-01T05:15:00 "
            "(no time-zone offset, no Unix timestamp)"
        )
    # The pattern lets 24:00 or 23:60 through, and pydantic's refusal of them ("unexpected extra characters at the
    # end of the input") pointed at the wrong thing: say which clock reading is out of range.
    hour, minute, second = int(match[1]), int(match[2]), int(match[4] or 0)
    if hour > 23 or minute > 59 or second > 59:
        raise ValueError(
            f"{name} has no such time of day ({match[1]}:{match[2]}{':' + match[4] if match[4] else ''}): the hour "
            "must be 00 to 23, the minute (and second) 00 to 59; midnight is 00:00 of the next day"
        )
    return value


class FlightRequest(BaseModel):
    """One flight to score; see the module docstring for the JSON shape."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False, str_strip_whitespace=False)

    carrier: str = Field(pattern=r"^[A-Z0-9]{2}$", description="IATA carrier code, e.g. UA")
    flight: Annotated[int, Strict()] = Field(ge=1, le=9999, description="flight number")
    origin: str = Field(pattern=r"^[A-Z0-9]{3}$", description="FAA code of the departure airport, e.g. EWR")
    dest: str = Field(pattern=r"^[A-Z0-9]{3}$", description="FAA code of the arrival airport, e.g. IAH")
    sched_dep: dt.datetime = Field(description="scheduled departure, local time at the origin (naive ISO)")
    sched_arr: dt.datetime | None = Field(
        default=None, description="scheduled arrival, local time at the destination (naive ISO); optional"
    )
    # The raw suite's pattern (flights/expectations/raw_flights.json): every tail number a delivered month trains on is served,
    # hyphenated registrations (N-123) included.
    tailnum: str | None = Field(default=None, pattern=r"^[A-Z][A-Z0-9-]{1,9}$", description="tail number, e.g. N14228")
    user_key: str | None = Field(
        default=None, min_length=1, max_length=128, pattern=r"^[\x21-\x7e]+$",
        description="A/B assignment key (printable ASCII, no spaces)",
    )

    @field_validator("sched_dep", mode="before")
    @classmethod
    def _dep_is_naive_iso(cls, value: Any) -> Any:
        return _naive_minute(value, "sched_dep")

    @field_validator("sched_arr", mode="before")
    @classmethod
    def _arr_is_naive_iso(cls, value: Any) -> Any:
        return None if value is None else _naive_minute(value, "sched_arr")

    @field_validator("sched_dep", "sched_arr")
    @classmethod
    def _whole_minutes(cls, value: dt.datetime | None) -> dt.datetime | None:
        # Schedules are minute-grained; a second would be silently dropped by every feature.
        if value is not None and (value.second or value.microsecond):
            raise ValueError("schedule times are whole minutes: give HH:MM or HH:MM:00")
        return value

    @field_validator("sched_arr")
    @classmethod
    def _within_a_day(cls, value: dt.datetime | None, info: ValidationInfo) -> dt.datetime | None:
        # Wall clocks of two time zones: an arrival a little "before" the departure is legal (westbound),
        # a whole day or more apart is a typo. (sched_dep is validated first, being declared first.)
        dep = info.data.get("sched_dep")
        if value is not None and dep is not None and abs(value - dep) >= dt.timedelta(days=1):
            raise ValueError("sched_arr must be within a day of sched_dep (both local wall-clock times)")
        return value
