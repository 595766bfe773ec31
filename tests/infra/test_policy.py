"""checkov on the synthesized stacks: 0 failed checks on dev and prod, and every known-bad fixture FAILED.

Skips are listed, each with its reason, in infra/checkov.yaml (the config this scan uses).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tenfold.config import get_settings

ROOT = Path(__file__).resolve().parents[2]
CHECKOV = ROOT / ".tools" / "checkov" / "bin" / "checkov"
CONFIG = ROOT / "infra" / "checkov.yaml"
BAD_STACK = "known-bad"
ENVS = ("dev", "prod")


def _stacks() -> list[str]:
    return [name for env in ENVS for name in (get_settings(env).infra.data_stack, get_settings(env).infra.platform_stack)]


TLS_PLATFORM = "tls-prod-platform"  # prod with a domain (conftest.tls_settings): the HTTPS path
IAP_PLATFORM = "iap-prod-platform"  # prod with IAP on the backend services (conftest.iap_settings)


@pytest.fixture(scope="module")
def scan(synth: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """One checkov run over dev, prod and the known-bad stack; {stack: {"passed"/"failed": [check, ...]}}."""
    if not CHECKOV.exists():
        # scripts/setup.sh installs checkov into .tools/checkov on every machine: missing, the setup is broken.
        pytest.fail(f"checkov is not installed at {CHECKOV}: run `make setup` (it installs checkov there)")
    root = tmp_path_factory.mktemp("scan")
    for name in [*_stacks(), TLS_PLATFORM, IAP_PLATFORM, BAD_STACK]:
        shutil.copytree(synth.stack_dir(name), root / name, ignore=shutil.ignore_patterns(".terraform*"))
    proc = subprocess.run([str(CHECKOV), "--config-file", str(CONFIG), "-d", str(root), "-o", "json"],
                          capture_output=True, text=True, timeout=300, check=False)
    try:
        report = json.loads(proc.stdout)
    except ValueError:
        raise AssertionError(f"checkov did not run (rc {proc.returncode}): {proc.stderr[-2000:]}") from None
    reports = report if isinstance(report, list) else [report]
    out: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for rep in reports:
        assert rep["check_type"] == "terraform_json", rep["check_type"]
        for kind in ("passed", "failed"):
            for check in rep["results"][f"{kind}_checks"]:
                stack = check["file_path"].strip("/").split("/")[0]
                out.setdefault(stack, {"passed": [], "failed": []})[kind].append(check)
    return out


@pytest.mark.parametrize("stack_index", range(6))
def test_stacks_pass_every_check(scan: dict, stack_index: int) -> None:
    name = [*_stacks(), TLS_PLATFORM, IAP_PLATFORM][stack_index]
    results = scan[name]
    assert len(results["passed"]) > 20, f"checkov scanned almost nothing in {name}"
    failed = [(c["check_id"], c["resource"], c["check_name"]) for c in results["failed"]]
    assert failed == [], f"{name}: fix these or skip them with a reason in infra/checkov.yaml"


def test_known_bad_fixtures_fail_with_their_check_ids(scan: dict, bad_stack_module: Any) -> None:
    failed = {(c["resource"], c["check_id"]) for c in scan[BAD_STACK]["failed"]}
    assert bad_stack_module.EXPECTED_FAILURES
    for (rtype, cid), check_id in bad_stack_module.EXPECTED_FAILURES.items():
        # checkov names a terraform_json resource by its logical id (the construct id at the stack's top)
        hits = {res for res, ck in failed if ck == check_id and res.split(".")[-1] == cid}
        assert hits, f"checkov did not FAIL {rtype}.{cid} with {check_id}: the scan would miss this mistake"


def test_skips_have_written_reasons() -> None:
    lines = CONFIG.read_text().splitlines()
    skips = [i for i, line in enumerate(lines) if line.strip().startswith("- CKV")]
    assert skips
    for i in skips:
        assert lines[i - 1].strip().startswith("#"), f"{lines[i].strip()} has no reason written above it"
