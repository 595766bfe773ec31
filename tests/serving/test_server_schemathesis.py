"""Schemathesis against a live replica, from the replica's own OpenAPI schema: whatever it is sent,
valid or not, it never answers with a server error."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import pytest


@pytest.mark.slow
def test_no_generated_request_gets_a_server_error(start_replica: Any, auth: dict[str, str], tmp_path: Path) -> None:
    replica = start_replica()
    st = Path(sys.executable).with_name("st")
    argv = [str(st), "run", f"{replica.url}/openapi.json",
            "--checks", "not_a_server_error",
            "--phases", "examples,coverage,fuzzing",
            "--mode", "all",  # valid requests and invalid ones
            "--max-examples", "25", "--seed", "20130101", "--workers", "1",
            "--generation-database", "none", "--request-timeout", "10",
            "--header", f"Authorization: {auth['Authorization']}",
            "--report", "junit", "--report-dir", str(tmp_path),
            "--no-color"]
    run = subprocess.run(argv, capture_output=True, text=True, timeout=180, cwd=tmp_path)
    output = run.stdout + run.stderr
    assert run.returncode == 0, output[-6000:]
    # It really exercised the API: every operation was tested, predict and feedback included, none failed.
    [report] = tmp_path.glob("junit-*.xml")
    suite = ElementTree.parse(report).getroot()
    tested = {case.get("name") for case in suite.iter("testcase")}
    assert {"POST /v1/predict", "POST /v1/feedback", "GET /healthz", "GET /readyz", "GET /metrics"} <= tested
    assert (suite.get("failures"), suite.get("errors")) == ("0", "0")
    assert int(output.split(" generated, ")[0].rsplit(None, 1)[-1]) >= 100, output[-2000:]  # test cases run
    status, _ = replica.get("/readyz")
    assert status == 200  # and the replica is still serving
