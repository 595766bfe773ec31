"""The messages the model server publishes and the feedback sink consumes (JSON bodies on Pub/Sub).

One definition for both ends: the server (``tenfold.serving``) writes them, the feedback loop
(``tenfold.feedback``) reads them, and offline inference reuses :class:`PredictionRecord`. Bodies are
UTF-8 JSON of these models; ``attributes()`` gives the Pub/Sub attributes that subscriptions can filter on.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

SCHEMA_VERSION = 1
# The log's schema_version column is int16 (tenfold.feedback.schema).
_MAX_SCHEMA_VERSION = 2**15 - 1


def utc(value: dt.datetime | None) -> dt.datetime | None:
    """``value`` as an aware UTC datetime (a naive one is taken to be UTC already: what the server writes).

    Raises ``ValueError`` for a time that has no UTC equivalent (``0001-01-01T00:00+14:00`` is before year 1
    in UTC), so that a record holding one is refused as malformed when it is parsed, never later.
    """
    if value is None:
        return None
    if value.tzinfo is None:
        return value.replace(tzinfo=dt.UTC)
    try:
        return value.astimezone(dt.UTC)
    except OverflowError:
        raise ValueError(f"{value.isoformat()} is outside the range of times in UTC") from None


class _Record(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    schema_version: int = Field(default=SCHEMA_VERSION, ge=1, le=_MAX_SCHEMA_VERSION)

    @field_validator("schema_version")
    @classmethod
    def _known(cls, value: int) -> int:
        """A record of a newer schema is refused (a dead letter, replayed once the reader is upgraded): one whose
        fields kept their names but changed meaning parsed as this version's, and its labels were mixed in."""
        if value > SCHEMA_VERSION:
            raise ValueError(f"schema_version {value} is newer than this reader's {SCHEMA_VERSION}: written by a newer "
                             "server; upgrade this one (the feedback sink), then replay its dead letters")
        return value

    @field_validator("*", mode="after")
    @classmethod
    def _times_in_utc(cls, value: Any) -> Any:
        return utc(value) if isinstance(value, dt.datetime) else value

    def to_message(self) -> bytes:
        return self.model_dump_json().encode()

    @classmethod
    def from_message(cls, data: bytes) -> Any:
        """Parse a message body; raises ``pydantic.ValidationError`` for a malformed one (a poison message)."""
        return cls.model_validate_json(data)


class PredictionRecord(_Record):
    """One prediction as served: enough to join feedback to it and to monitor the inputs and outputs."""

    prediction_id: str
    model_version: str
    arm: Literal["stable", "canary"]
    user_key: str | None = None
    bucket: int | None = Field(default=None, ge=0, le=99)
    probability: float = Field(ge=0.0, le=1.0)
    # The request as the client sent it (the workload's request schema, JSON-ready).
    request: dict[str, Any]
    latency_ms: float | None = None
    served_at: dt.datetime

    def attributes(self) -> dict[str, str]:
        return {"model_version": self.model_version, "arm": self.arm, "kind": "prediction"}


class FeedbackRecord(_Record):
    """The observed outcome of a prediction (1: the flight was delayed, 0: on time)."""

    prediction_id: str
    outcome: int = Field(ge=0, le=1)
    observed_at: dt.datetime | None = None
    received_at: dt.datetime

    def attributes(self) -> dict[str, str]:
        return {"kind": "feedback"}
