"""The API's bodies besides the workload's request: responses, feedback, errors, health.

The request of one prediction is the workload's (``Workload.request_model``); :func:`batch_model` wraps
it as ``{"<the workload's batch key>": [...]}`` (``{"flights": [...]}`` for the flights workload). Responses are plain pydantic models so the OpenAPI schema describes them.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model, field_validator

from tenfold.messaging.records import utc

Arm = Literal["stable", "canary"]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Prediction(_Body):
    """One scored request."""

    prediction_id: str = Field(description="Quote it in feedback for this prediction.")
    probability: float = Field(ge=0.0, le=1.0, description="P(the flight arrives 15+ minutes late, or is cancelled).")
    model_version: str
    arm: Arm
    bucket: int | None = Field(default=None, ge=0, le=99,
                               description="The A/B bucket (0-99) the request was routed by: the load balancer's "
                                           "bucket header (a random draw for a request without a user key), else "
                                           "the user key's own (xxh32 mod 100); null when there is neither.")


class BatchPrediction(_Body):
    predictions: list[Prediction]
    model_version: str
    arm: Arm


EARLIEST_OBSERVATION = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_DASHED_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}")  # then pydantic's own ISO 8601 parsing
OBSERVATION_SKEW = dt.timedelta(days=1)  # the client's clock may run ahead of the server's


class FeedbackRequest(_Body):
    """The observed outcome of a prediction."""

    prediction_id: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._:-]+$")
    outcome: Literal[0, 1] = Field(description="1: delayed 15+ minutes or cancelled; 0: on time.")
    observed_at: dt.datetime | None = Field(
        default=None,
        description="When the outcome was observed: ISO 8601 with a UTC offset (without one, UTC), from 1970 to "
                    "at most a day after the server's clock.")

    @field_validator("outcome", mode="before")
    @classmethod
    def _integer(cls, value: Any) -> Any:
        # Only the JSON integers 0 and 1: lax mode read true, 1.0 (and "1") as 1, which a flight number refuses too.
        if not isinstance(value, int) or isinstance(value, bool):
            raise ValueError("send the outcome as the integer 0 (on time) or 1 (delayed 15+ minutes or cancelled)")
        return value

    @field_validator("observed_at", mode="before")
    @classmethod
    def _text(cls, value: Any) -> Any:
        # A number is refused rather than read as seconds (or milliseconds) since 1970, which pydantic would do, and so
        # is text of digits alone, which it reads the same way: "20240315" (ISO 8601's basic date) was 1970-08-23,
        # and an upsert keeping the latest observation let the outcome it corrected win.
        if isinstance(value, int | float) or (isinstance(value, str) and not _DASHED_DATE.match(value)):
            raise ValueError("send the time as ISO 8601 text with a dashed date, e.g. 2013-01-01T09:02:00Z, not a "
                             "number or digits alone")
        return value

    @field_validator("observed_at")
    @classmethod
    def _plausible(cls, value: dt.datetime | None) -> dt.datetime | None:
        at = utc(value)
        if at is not None and not EARLIEST_OBSERVATION <= at <= dt.datetime.now(dt.UTC) + OBSERVATION_SKEW:
            raise ValueError(f"{at.isoformat()} is not a time the outcome can have been observed at: send a time "
                             "from 1970 to now (UTC), or leave observed_at out")
        return at


class FeedbackAccepted(_Body):
    status: Literal["accepted"] = "accepted"
    prediction_id: str
    message_id: str = Field(description="The Pub/Sub message id: the feedback is durably published.")


class FieldError(_Body):
    field: str
    message: str


class ErrorBody(_Body):
    """Every error answer: a code, what is wrong and what to do, and the offending field when there is one."""

    error: str
    message: str
    field: str | None = None
    errors: list[FieldError] = Field(default_factory=list)


class Health(_Body):
    status: str


class Readiness(_Body):
    """In the cloud, a caller without the login gets ``ready`` and ``status`` only."""

    ready: bool
    status: Literal["loading", "ready", "draining", "failed", "stalled", "failing"]
    arm: Arm | None = None
    model_ref: str | None = None
    model_version: str | None = None
    detail: str | None = None


def batch_model(request_model: type[BaseModel], max_rows: int, key: str) -> type[BaseModel]:
    """``{key: [<request>, ...]}``: 1 to ``max_rows`` requests of ``request_model``."""
    fields: dict[str, Any] = {key: (list[request_model], Field(min_length=1, max_length=max_rows))}  # type: ignore[valid-type]
    model: Any = create_model("BatchPredictRequest", __config__=ConfigDict(extra="forbid"), **fields)
    return model  # type: ignore[no-any-return]
