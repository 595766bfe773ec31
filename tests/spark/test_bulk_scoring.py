"""The Spark bulk re-scoring path (tenfold.inference.spark): the same model, the same probabilities, published atomically.

One small synthetic features partition is published in a lake of its own and a small flights network (with a
non-identity calibration, so the folder's whole ``predict_proba`` is exercised) is registered as ``champion``
in a registry of its own on the session's GCS emulator. :func:`score_partition` then runs the real
``spark-submit`` of ``spark_jobs/score_partition.py`` (a JVM of its own, on loopback) and publishes the scores,
called as the ``batch_inference`` pipeline calls it when a partition is above its Spark threshold (0 here);
the rerun goes through the job's own ``run`` on the session's Spark, with many small Arrow batches and a log
of every model load.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import socket
import threading
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from pyspark.sql import SparkSession

from tenfold.config import Settings
from tenfold.data.lake import Lake, Partition, schema_hash
from tenfold.inference import spark as bulk
from tenfold.registry import CHAMPION, Lineage, ModelRegistry, PartitionRef
from tenfold.workloads.flights.contract import CONTRACT
from tenfold.workloads.flights.synthetic import publish_synthetic_features

MONTH = Partition(2013, 5)
ROWS = 3000


def _register(settings: Settings, directory: Path) -> str:
    import torch

    from tenfold.model import Preprocessor, save_model
    from tenfold.model.calibration import Calibrator
    from tenfold.workloads.flights import WORKLOAD
    from tenfold.workloads.flights.model import FlightDelayModel, ModelConfig
    from tenfold.workloads.flights.synthetic import synthetic_features

    pre = Preprocessor.fit(synthetic_features(MONTH.previous(), 500, seed=3), CONTRACT)
    config = ModelConfig(embedding_dim=4, hidden=(8,), dropout=0.0)
    torch.manual_seed(7)
    model = FlightDelayModel(config, list(pre.vocab_sizes.values()), pre.num_inputs)
    save_model(directory, model, config, pre, workload=WORKLOAD.name,
               calibration=Calibrator(method="temperature", temperature=1.7, offset=-0.3))
    ref = PartitionRef(partition=MONTH.previous().label, data_dir="data-synthetic", rows=500, schema_hash="synthetic",
                       run_id="bulk-scoring-tests", manifest_sha256="0" * 64)
    lineage = Lineage(feature_table=settings.storage.features_table, train_partitions=(ref,), holdout_partitions=(),
                      training_config={"seed": 7}, run_id="bulk-scoring-tests")
    registry = ModelRegistry(settings)
    version = registry.register(directory, lineage, metrics={"auc": 0.6, "log_loss": 0.69}).version
    registry.set_alias(CHAMPION, version)
    return version


RUN_ID = "manual__bulk-scoring-tests"


@pytest.fixture(scope="module")
def scoring(make_settings: Any, local_settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Settings with a lake and registry of their own and a Spark threshold of 0, the partition published,
    ``champion`` registered, and the first scoring: the batch_inference pipeline's steps, which take the Spark
    path and call :func:`score_partition` (spark-submit)."""
    from tenfold.pipelines import batch_inference

    settings = make_settings(on=local_settings, inference={"spark_threshold_rows": 0})
    lake = Lake.from_settings(settings)
    publish_synthetic_features(lake, [MONTH], ROWS, seed=11, table=settings.storage.features_table)
    version = _register(settings, tmp_path_factory.mktemp("model"))
    with ListenerWatch() as watch:
        figures = batch_inference.run_all(settings, {"month": MONTH.label}, run_id=RUN_ID)
    return {"settings": settings, "lake": lake, "version": version, "figures": figures, "listeners": watch.seen,
            "manifest": lake.read_manifest(settings.storage.scores_table, MONTH)}


class ListenerWatch:
    """The listening sockets of this process's children (spark-submit, its JVM, its Python workers; the session's
    emulators too), sampled in the background while the job runs."""

    def __init__(self) -> None:
        self.seen: set[tuple[str, int, str]] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for proc in psutil.Process().children(recursive=True):
                try:
                    cmd, conns = " ".join(proc.cmdline()), proc.net_connections(kind="inet")
                except psutil.Error:
                    continue
                self.seen |= {(c.laddr.ip, c.laddr.port, cmd) for c in conns
                              if c.laddr and (c.status == psutil.CONN_LISTEN or (c.type == socket.SOCK_DGRAM and not c.raddr))}
            self._stop.wait(0.2)

    def __enter__(self) -> ListenerWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


def _in_process(settings: Settings, lake: Lake, version: str) -> pa.Table:
    """The features partition as a lake reader gets it, scored by the model folder loaded in this process."""
    from tenfold.model import load_model
    from tenfold.serving.loading import model_cache_dir

    features = lake.read_table(settings.storage.features_table, [MONTH])
    probs = load_model(model_cache_dir(settings) / version).predict_proba(features)
    keys = list(CONTRACT.key_columns)
    return features.select(keys).append_column(bulk.PROBABILITY, pa.array(probs, pa.float64())).sort_by(
        [(k, "ascending") for k in keys])


def test_the_spark_path_scores_like_the_model_in_process_and_publishes_the_contract(scoring: dict[str, Any]) -> None:
    settings, lake, version = scoring["settings"], scoring["lake"], scoring["version"]
    figures = scoring["figures"]
    assert (figures["path"], figures["rows_in"], figures["rows_out"], figures["model_version"]) == ("spark", ROWS, ROWS, version)
    manifest = scoring["manifest"]
    assert manifest.rows == ROWS
    # The pipeline's run id reaches the job: it names the job's staging folder and record (a retry stops the job a
    # killed try left running; tests/unit/inference/test_spark_killed_try.py) and the published manifest.
    assert manifest.run_id == RUN_ID
    features_manifest = lake.read_manifest(settings.storage.features_table, MONTH)
    extra = dict(manifest.extra)
    # The run's plan time, as the Pub/Sub path records it: later runs order their scores by plans, not publications.
    planned = dt.datetime.fromisoformat(str(extra.pop("planned_at")))
    assert abs(dt.datetime.now(dt.UTC) - planned) < dt.timedelta(hours=2), planned
    assert extra == {"model_version": version, "features_table": settings.storage.features_table,
                     "features_data_dir": features_manifest.data_dir, "scored_by": "spark"}

    scores = lake.read_table(settings.storage.scores_table, [MONTH])
    expected_schema = pa.schema([*(CONTRACT.arrow_schema().field(k) for k in CONTRACT.key_columns),
                                 pa.field("probability", pa.float64()), pa.field("model_version", pa.string())])
    assert scores.schema.remove_metadata().equals(expected_schema), scores.schema
    assert manifest.schema_hash == schema_hash(expected_schema)
    assert scores.num_rows == ROWS
    assert pc.unique(scores["model_version"]).to_pylist() == [version]
    keys = list(CONTRACT.key_columns)
    assert scores.select(keys).equals(scores.select(keys).sort_by([(k, "ascending") for k in keys])), \
        "the published scores are not sorted by the key columns"

    expected = _in_process(settings, lake, version)
    assert scores.select(keys).equals(expected.select(keys)), "one score row per features row, same keys"
    got, want = scores["probability"].to_numpy(), expected["probability"].to_numpy()
    assert np.isfinite(got).all() and got.min() > 0.0 and got.max() < 1.0
    assert float(np.max(np.abs(got - want))) <= 1e-9
    assert np.std(got) > 1e-3, "the synthetic rows must get different scores, or equality would prove little"


def _on_loopback(address: str) -> bool:
    addr = ipaddress.ip_address(address.split("%")[0])
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped  # ::ffff:127.0.0.1, a v6 socket bound to v4 loopback
    return str(addr) in ("127.0.0.1", "::1")


def test_the_job_listens_on_loopback_only(scoring: dict[str, Any]) -> None:
    seen = scoring["listeners"]
    # The watch saw the job while it ran: the driver's JVM listens (its RPC and block manager).
    assert any("org.apache.spark.deploy.SparkSubmit" in cmd for _, _, cmd in seen), {(port, cmd[:80]) for _, port, cmd in seen}
    beyond = sorted((ip, port, cmd[:100]) for ip, port, cmd in seen if not _on_loopback(ip))
    assert not beyond, f"listening beyond loopback: {beyond}"


def test_a_rerun_publishes_nothing_new_and_each_worker_loads_the_model_once(
    scoring: dict[str, Any], spark: SparkSession, tmp_path: Path
) -> None:
    from tenfold.serving.loading import model_cache_dir

    settings, lake, version = scoring["settings"], scoring["lake"], scoring["version"]
    st = settings.storage

    def args(output: str, *extra: str) -> Any:
        return bulk.parse_args(["--lake-uri", st.lake_uri, "--month", MONTH.label, "--output", output,
                                "--model-dir", str(model_cache_dir(settings) / version), "--model-version", version,
                                "--features-table", st.features_table, "--scores-table", st.scores_table, *extra])

    load_log = tmp_path / "loads.txt"
    spark.conf.set(bulk.LOAD_LOG_CONF, str(load_log))
    try:
        # 1. The rerun, as the job runs by hand (the default Arrow batches): the same bytes, so publish kept the
        # first run's data folder and files. (Its manifest is its own: the pipeline's run recorded its plan's time,
        # which a run by hand has none of; a retry of the pipeline's run, with the same plan, republishes nothing.)
        rerun = bulk.run(spark, args(lake.uri_of(lake.staging_path(st.scores_table, MONTH, "rerun")), "--publish",
                                     "--run-id", "rerun"))
        assert rerun["rows"] == ROWS
        after, first = lake.read_manifest(st.scores_table, MONTH), scoring["manifest"]
        assert (after.data_dir, after.files) == (first.data_dir, first.files)
        assert {k: v for k, v in first.extra.items() if k != "planned_at"} == after.extra
        # 2. Many Arrow batches per task, in workers that already hold the model: a model loaded per batch, per
        # task or per job would log a pid twice. The scores stay the published ones.
        spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", "200")
        staged = tmp_path / "small-batches"
        bulk.run(spark, args(staged.as_uri()))
    finally:
        spark.conf.unset(bulk.LOAD_LOG_CONF)
        spark.conf.unset("spark.sql.execution.arrow.maxRecordsPerBatch")
    pids = [line.split()[0] for line in load_log.read_text().splitlines()]
    assert pids, "the workers logged no model load: the hook is not wired"
    assert len(pids) == len(set(pids)), f"a Python worker loaded the model more than once: {pids}"
    published = lake.read_table(st.scores_table, [MONTH])
    small = pq.read_table(staged / bulk.SCORES_FILE)
    assert small.select(list(CONTRACT.key_columns)).equals(published.select(list(CONTRACT.key_columns)))
    assert float(np.max(np.abs(small["probability"].to_numpy() - published["probability"].to_numpy()))) <= 1e-9


def test_an_unpublished_partition_is_refused_naming_build_features(scoring: dict[str, Any]) -> None:
    with pytest.raises(bulk.ScoringJobError, match=r"not published.*run build_features for 2013-06"):
        bulk.score_partition(scoring["settings"], CHAMPION, MONTH.next())


def test_the_cloud_is_refused_before_anything_is_read() -> None:
    from tenfold.config import build_settings

    with pytest.raises(bulk.ScoringJobError, match=r"raise settings\.inference\.spark_threshold_rows"):
        bulk.score_partition(build_settings("dev"), CHAMPION, MONTH)
