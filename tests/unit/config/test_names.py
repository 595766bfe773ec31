"""Keys derived from a run key: readable, valid as a folder and a cloud run id, and never shared."""

from __future__ import annotations

import re

from tenfold.config.names import scoped_key


def test_a_scoped_key_is_a_valid_run_id_that_two_long_run_keys_never_share() -> None:
    # Two run keys that differ only past the readable prefix (the suffix that made them unique).
    a, b = "scheduled__2013-06-01t00-00-00-00-00-" + "x" * 13 + "-0a1b2c3d", "scheduled__2013-06-01t00-00-00-00-00-" + "x" * 13 + "-9f8e7d6c"
    assert len(a) == len(b) == 59 and a[:46] == b[:46]
    assert scoped_key(a, "v3") != scoped_key(b, "v3")
    assert scoped_key(a, "v3") != scoped_key(a, "v4") != scoped_key(a, "v3", "other-data")
    assert scoped_key(a, "v3") == scoped_key(a, "v3")  # a retried task finds its own folder again
    # The parts are not run together: ("ab", "c") and ("a", "bc") name different work.
    assert scoped_key(a, "ab", "c") != scoped_key(a, "a", "bc")
    for key in (scoped_key(a, "v3"), scoped_key("short", "v3")):
        assert len(key) <= 59 and re.fullmatch(r"[a-z0-9_.-]+", key), key
    assert scoped_key("short", "v3").startswith("short-")


def test_the_keys_a_retry_finds_again_are_the_same_in_another_process() -> None:
    """A retried task runs in a new process: the keys of its folders, requests and training job must not depend on
    anything a process salts (Python's hash() of a str, set order). Checked in a child with another hash seed."""
    import json
    import os
    import subprocess
    import sys

    code = """
import json
from tenfold.config.names import scoped_key
from tenfold.inference.requests import request_id
from tenfold.training.config import TrainConfig
from tenfold.training.jobs import training_key
cfg = TrainConfig(lake_uri="file:///lake", train_months=("2013-01", "2013-02"))
print(json.dumps([scoped_key("scheduled__2013-06-01" + "x" * 40, "v3", "data"), request_id("run-a", "2013-07", 3),
                  training_key("asset_triggered__2026-12-03t05-00-19", cfg)]))
"""
    keys = [json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                                      env={**os.environ, "PYTHONHASHSEED": seed}, timeout=120).stdout)
            for seed in ("1", "2")]
    assert keys[0] == keys[1]
    assert len(set(keys[0])) == 3 and all(keys[0])
