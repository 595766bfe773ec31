"""The monitoring sample of a prediction stores the request as the client sent it, so that retraining
(``tenfold.feedback.training``) can parse it again with the workload's request model."""

from __future__ import annotations

import datetime as dt

from pydantic import BaseModel, ConfigDict, Field

from tenfold.feedback.schema import canonical_json
from tenfold.serving.app import _sample


class AliasedRequest(BaseModel):
    """A workload's request whose wire name is not a Python name (``from``)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    from_: str = Field(alias="from")
    amount: float


def test_a_sample_of_an_aliased_request_parses_again_with_the_request_model() -> None:
    request = AliasedRequest.model_validate({"from": "JFK", "amount": 2.5})
    record = _sample("p1", "v1", "stable", None, None, 0.3, request, 1.0, dt.datetime(2026, 1, 1, tzinfo=dt.UTC))
    assert record.request == {"from": "JFK", "amount": 2.5}  # the body the client sent, not {"from_": ...}
    assert AliasedRequest.model_validate_json(canonical_json(record.request)) == request
