from __future__ import annotations

import re

import pytest

from tenfold.config import get_settings
from tenfold.data.lake import Partition
from tenfold.features import dataproc

BATCH_ID = re.compile(r"^[a-z][a-z0-9-]{2,61}[a-z0-9]$")


@pytest.mark.parametrize("env", ["dev", "prod"])
def test_batch_body_uses_settings(env: str) -> None:
    s = get_settings(env)
    b = dataproc.features_batch(s, Partition(2013, 3), 2)
    py = b["pyspark_batch"]
    assert py["main_python_file_uri"] == f"gs://{s.storage.dataproc_staging_bucket}/{s.spark.dataproc_code_prefix}/build_features.py"
    args = dict(zip(py["args"][::2], py["args"][1::2], strict=True))
    assert args["--lake-uri"] == s.storage.lake_uri and args["--month"] == "2013-03"
    assert args["--output"].startswith(f"{s.storage.lake_uri}/_staging/features/year=2013/month=3/")
    assert b["runtime_config"]["version"] == s.spark.dataproc_runtime_version
    ex = b["environment_config"]["execution_config"]
    assert ex["service_account"] == f"{s.service_accounts.dataproc}@{s.project_id}.iam.gserviceaccount.com"
    assert ex["subnetwork_uri"] == f"projects/{s.project_id}/regions/{s.region}/subnetworks/{s.network.subnet}"
    assert ex["staging_bucket"] == s.storage.dataproc_staging_bucket
    assert all(re.fullmatch(r"[a-z0-9_-]{0,63}", v) for v in b["labels"].values())


def test_output_override_and_month_as_text() -> None:
    s = get_settings("dev")
    b = dataproc.features_batch(s, "2013-11", 1, output="gs://x/y")
    assert b["pyspark_batch"]["args"][-1] == "gs://x/y"
    assert "--month" in b["pyspark_batch"]["args"] and "2013-11" in b["pyspark_batch"]["args"]


def test_batch_ids_follow_dataproc_rules_and_differ_per_attempt() -> None:
    s = get_settings("prod")
    ids = {dataproc.batch_id(s, "2013-01", n) for n in (1, 2, 3)}
    assert len(ids) == 3 and all(BATCH_ID.match(i) for i in ids)
    assert dataproc.batch_id(s, "2013-01", 1) == dataproc.batch_id(s, Partition(2013, 1), "1"), "stable per attempt"


def test_long_prefix_is_truncated_keeping_month_and_attempt() -> None:
    dev = get_settings("dev")
    s = dev.model_copy(update={"spark": dev.spark.model_copy(update={"dataproc_batch_prefix": "a" * 60})})
    bid = dataproc.batch_id(s, "2013-12", 7)
    assert len(bid) <= 63 and BATCH_ID.match(bid) and bid.endswith("-2013-12-a7")


@pytest.mark.parametrize("attempt", ["", "Has Space", "x" * 30, "-lead"])
def test_bad_attempt_is_refused_with_a_clear_message(attempt: str) -> None:
    with pytest.raises(ValueError, match="attempt"):
        dataproc.batch_id(get_settings("dev"), "2013-01", attempt)


def test_bad_month_and_local_env_are_refused() -> None:
    with pytest.raises(ValueError, match="YYYY-MM"):
        dataproc.features_batch(get_settings("dev"), "January", 1)
    with pytest.raises(ValueError, match="dev and prod"):
        dataproc.features_batch(get_settings("local"), "2013-01", 1)


@pytest.mark.parametrize("value", ["2013-01", "2013-1", "2014-12"])
def test_month_spelling_matches_the_lake(value: str) -> None:
    s = get_settings("dev")
    part = Partition.parse(value)
    out = dataproc.features_batch(s, value, 1)["pyspark_batch"]["args"][-1]
    assert f"/{part.path}/" in out and dataproc.batch_id(s, value, 1) == dataproc.batch_id(s, part, 1)
    assert part.label in dataproc.batch_id(s, value, 1)


def test_module_does_not_import_pyarrow() -> None:
    import subprocess
    import sys

    code = "import sys, tenfold.features.dataproc, tenfold.rollout.urlmap, tenfold.training.fleet; print('pyarrow' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "False", "DAG files import tenfold.cloud: keep heavy modules out of its import path"
