"""A deliberately small second workload: the worked example of docs/workloads.md, and the seam's proof.

Two generated, time-partitioned tables (``events``: one row per event with two numeric signals and a
label, monthly; ``devices``: each device's segment, a reference table), a trivial Spark transform (a
join and a few casts), a small model (one embedding and a linear layer), and the online half: a request
model (one event) and its assembly from the one lookup table ``build_features`` publishes (``devices``). The platform reaches it
only through ``settings.workload = "tiny_workload:WORKLOAD"`` (this folder on ``PYTHONPATH``): the same
build_features and train_model pipelines, quality gate, training loop, promotion gate and registry as
the flights workload, none of them changed for it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, Strict

from tenfold.workloads import Baseline, FeatureContract, Lookups, Replayed, RequestInvalid, Sources

if TYPE_CHECKING:
    import pyarrow as pa
    from pyspark.sql import DataFrame
    from torch import nn

    from tenfold.data.partition import Partition

MONTHS = ("2020-01", "2020-02", "2020-03", "2020-04", "2020-05", "2020-06")
ROWS_PER_MONTH = 1500
DEVICES = 40  # events also come from 5 devices the reference table does not know (segment "unknown")
SEGMENT_EFFECT = {"a": -1.0, "b": 0.0, "c": 1.0, "unknown": 0.5}

CONTRACT = FeatureContract(
    key_columns=("year", "month", "event_id"),
    label="label",
    categorical_columns=("segment",),
    numeric_columns=("x1", "x2"),
    column_types={"year": "int32", "month": "int32", "event_id": "int64", "segment": "string",
                  "x1": "float64", "x2": "float64", "label": "int32"},
    non_null_columns=("year", "month", "event_id", "segment", "label"),
    required_in_file=("segment",),  # coalesce(segment, 'unknown') is never null, and Spark says so
    version=1,
    lookup_tables=("devices",),  # published beside each month's features for online assembly
)


def _segment(device: int) -> str:
    return "abc"[device % 3]


def read(table: str) -> pa.Table:
    """The whole source table, generated the same way every time (each month from its own seed)."""
    import numpy as np
    import pyarrow as pa

    if table == "devices":
        ids = [f"d{i:02d}" for i in range(DEVICES)]
        return pa.table({"device_id": ids, "segment": [_segment(i) for i in range(DEVICES)]})
    if table != "events":
        raise ValueError(f"the tiny workload has no table {table!r}: events or devices")
    parts = []
    for n, month in enumerate(MONTHS):
        year, mon = (int(x) for x in month.split("-"))
        rng = np.random.default_rng([7, year, mon])
        device = rng.integers(0, DEVICES + 5, ROWS_PER_MONTH)
        x1, x2 = rng.normal(0, 1, ROWS_PER_MONTH), rng.normal(0, 1, ROWS_PER_MONTH)
        effect = np.array([SEGMENT_EFFECT[_segment(d)] if d < DEVICES else SEGMENT_EFFECT["unknown"] for d in device])
        logit = 1.5 * x1 - 1.0 * x2 + effect
        label = (rng.random(ROWS_PER_MONTH) < 1 / (1 + np.exp(-logit))).astype(np.int32)
        parts.append(pa.table({
            "year": pa.array(np.full(ROWS_PER_MONTH, year), pa.int32()),
            "month": pa.array(np.full(ROWS_PER_MONTH, mon), pa.int32()),
            "day": pa.array(rng.integers(1, 29, ROWS_PER_MONTH), pa.int32()),
            "event_id": pa.array(n * 1_000_000 + np.arange(ROWS_PER_MONTH), pa.int64()),
            "device_id": [f"d{d:02d}" for d in device],
            "x1": x1, "x2": x2,
            "label": pa.array(label, pa.int32()),
        }))
    return pa.concat_tables(parts)


SOURCES = Sources(
    name="tiny-generator",
    monthly_tables=("events",),
    reference_tables=("devices",),
    read=read,
    month_inputs=("events", "devices"),
    first_month=MONTHS[0],
    last_month=MONTHS[-1],
)


def transform(tables: Mapping[str, DataFrame], part: Partition, history_months: int) -> DataFrame:
    """Each event with its device's segment ("unknown" for a device the reference table lacks)."""
    from pyspark.sql import functions as F

    joined = tables["events"].join(tables["devices"], "device_id", "left")
    return joined.select(
        F.col("year").cast("int"), F.col("month").cast("int"), F.col("event_id").cast("long"),
        F.coalesce(F.col("segment"), F.lit("unknown")).alias("segment"),
        F.col("x1").cast("double"), F.col("x2").cast("double"), F.col("label").cast("int"),
    )


def lookups(tables: Mapping[str, DataFrame], part: Partition, history_months: int) -> dict[str, DataFrame]:
    """What online assembly needs for ``part``: the devices' segments, as the transform joins them."""
    return {"devices": tables["devices"].select("device_id", "segment")}


class TinyRequest(BaseModel):
    """One event to score: ``{"year": 2020, "month": 3, "event_id": 7, "device_id": "d01", "x1": 0.3, "x2": -1.2}``."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    year: Annotated[int, Strict()] = Field(ge=1970, le=2100)
    month: Annotated[int, Strict()] = Field(ge=1, le=12)
    event_id: Annotated[int, Strict()] = Field(ge=0)
    device_id: str = Field(min_length=1, max_length=32)
    x1: float
    x2: float


class TinyOnline:
    """The tiny workload's online assembly: each event with its device's segment ("unknown" if none)."""

    def __init__(self, lookups: Lookups) -> None:
        self.segments = {
            month: dict(zip(t["devices"]["device_id"].to_pylist(), t["devices"]["segment"].to_pylist(), strict=True))
            for month, t in lookups.items()
        }

    @property
    def months(self) -> tuple[str, ...]:
        return tuple(sorted(self.segments))

    def check(self, request: Any) -> None:
        if f"{request.year:04d}-{request.month:02d}" not in self.segments:
            raise RequestInvalid("month", f"no features are served for {request.year:04d}-{request.month:02d}: "
                                 f"send an event of {', '.join(self.months)}")

    def assemble(self, requests: Sequence[Any]) -> pa.Table:
        import pyarrow as pa

        for i, r in enumerate(requests):
            try:
                self.check(r)
            except RequestInvalid as exc:
                raise RequestInvalid(exc.field, exc.message, index=i) from None
        # As the transform's coalesce(segment, 'unknown'): only a missing segment is "unknown" ("" stays "").
        known = [self.segments[f"{r.year:04d}-{r.month:02d}"].get(r.device_id) for r in requests]
        segments = ["unknown" if s is None else s for s in known]
        schema = CONTRACT.arrow_schema()
        columns = {
            "year": [r.year for r in requests], "month": [r.month for r in requests],
            "event_id": [r.event_id for r in requests], "segment": segments,
            "x1": [r.x1 for r in requests], "x2": [r.x2 for r in requests],
        }
        return pa.table({c: pa.array(columns[c], schema.field(c).type) for c in CONTRACT.online_columns},
                        schema=pa.schema([schema.field(c) for c in CONTRACT.online_columns]))


@dataclass(frozen=True)
class TinyConfig:
    embedding_dim: int = 2

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, body: Mapping[str, Any]) -> TinyConfig:
        return cls(**{k: v for k, v in body.items() if k in cls.__dataclass_fields__})


def build_model(config: TinyConfig, vocab_sizes: Sequence[int], num_inputs: int) -> nn.Module:
    import torch
    from torch import nn

    class TinyModel(nn.Module):
        """A logistic regression over the numeric block and one small embedding per categorical."""

        def __init__(self) -> None:
            super().__init__()
            self.vocab_sizes, self.num_inputs = tuple(vocab_sizes), num_inputs
            self.embeddings = nn.ModuleList(nn.Embedding(v, config.embedding_dim) for v in vocab_sizes)
            self.linear = nn.Linear(config.embedding_dim * len(vocab_sizes) + num_inputs, 1)

        def forward(self, categorical: torch.Tensor, numeric: torch.Tensor) -> torch.Tensor:
            parts = [emb(categorical[:, j]) for j, emb in enumerate(self.embeddings)]
            return self.linear(torch.cat([*parts, numeric], dim=1)).squeeze(1)

    return TinyModel()


@dataclass
class PriorBaseline:
    """The training window's positive rate for every row: what any model must beat."""

    label: str
    name: str = "prior"
    rate: float = 0.0

    def fit(self, table: pa.Table) -> PriorBaseline:
        self.rate = float(table[self.label].to_numpy(zero_copy_only=False).mean())
        return self

    def predict_proba(self, table: pa.Table) -> Any:
        import numpy as np

        return np.full(table.num_rows, self.rate)


@dataclass(frozen=True)
class TinyWorkload:
    name: str = "tiny"
    sources: Sources = SOURCES
    contract: FeatureContract = CONTRACT
    expectations_dir: Path = field(default_factory=lambda: Path(__file__).parent / "tiny_suites")
    raw_suites: Mapping[str, str] = field(default_factory=lambda: {"events": "raw_events"})
    features_suite: str = "tiny_features"
    model_config_type: Any = TinyConfig
    request_model: type[BaseModel] = TinyRequest

    def transform(self, tables: Mapping[str, DataFrame], part: Partition, history_months: int) -> DataFrame:
        return transform(tables, part, history_months)

    def build_model(self, config: Any, vocab_sizes: Sequence[int], num_inputs: int) -> nn.Module:
        return build_model(config, vocab_sizes, num_inputs)

    def baselines(self) -> Mapping[str, Callable[[Any, FeatureContract], Baseline]]:
        return {"prior": lambda _preprocessor, contract: PriorBaseline(contract.label)}

    def lookups(self, tables: Mapping[str, DataFrame], part: Partition, history_months: int) -> Mapping[str, DataFrame]:
        return lookups(tables, part, history_months)

    def online_features(self, lookups: Lookups) -> TinyOnline:
        return TinyOnline(lookups)

    def replay(self, part: Partition) -> list[Replayed]:
        events = [r for r in read("events").to_pylist() if (r["year"], r["month"]) == (part.year, part.month)]
        return [Replayed(request={k: r[k] for k in ("year", "month", "event_id", "device_id", "x1", "x2")},
                         outcome=int(r["label"])) for r in events]


WORKLOAD = TinyWorkload()
