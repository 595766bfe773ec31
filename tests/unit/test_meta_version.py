"""meta_problem (what promote, rollback, batch inference's plan and the demo check before a model loads) refuses every
meta.json format that read_meta (load_model's first step) refuses, and no other: a model whose meta.json said
"version": "2" (or 2.0, 0, or nothing) became the champion, and every load then refused it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tenfold.model_files import META_VERSION
from tenfold.workloads import VERSION_KEY, meta_problem
from tenfold.workloads.flights import WORKLOAD

MISSING = object()

# Every value, each parametrised once for both checks, so that they cannot drift apart.
VERSIONS = [META_VERSION, META_VERSION + 1, str(META_VERSION + 1), str(META_VERSION), float(META_VERSION + 1), 0, -1,
            None, MISSING, [META_VERSION], True, float(META_VERSION)]
REFUSED = [META_VERSION + 1, str(META_VERSION + 1), str(META_VERSION), float(META_VERSION + 1), 0, -1, None, MISSING,
           [META_VERSION]]


def _meta(version: Any) -> dict[str, Any]:
    """A meta.json of this workload and its feature definitions, which only its format could make unusable."""
    contract = WORKLOAD.contract
    meta: dict[str, Any] = {"workload": "flights", VERSION_KEY: contract.version,
                            "categorical_columns": list(contract.categorical_columns),
                            "numeric_columns": list(contract.numeric_columns)}
    if version is not MISSING:
        meta["version"] = version
    return meta


def _read_meta_refuses(tmp_path: Path, meta: dict[str, Any]) -> bool:
    from tenfold.model.io import ModelLoadError, read_meta

    (tmp_path / "meta.json").write_text(json.dumps(meta))
    try:
        read_meta(tmp_path)
    except ModelLoadError as exc:
        assert "unsupported meta version" in str(exc), exc
        return True
    return False


# MISSING named by its role: an object's repr (its address) differs between pytest-xdist workers, which then refuse to run.
@pytest.mark.parametrize("version", VERSIONS, ids=lambda v: "missing" if v is MISSING else repr(v))
def test_meta_problem_refuses_exactly_the_formats_read_meta_refuses(tmp_path: Path, version: Any) -> None:
    meta = _meta(version)
    problem = meta_problem(meta, "flights", WORKLOAD.contract)
    assert (problem is not None) == _read_meta_refuses(tmp_path, meta), (version, problem)
    assert (problem is not None) == (version in REFUSED), (version, problem)
    if problem is not None:
        assert "meta version" in problem or "upgrade tenfold" in problem, problem


def test_a_newer_format_still_says_to_upgrade_and_another_says_what_it_found() -> None:
    assert meta_problem(_meta(META_VERSION + 1), "flights", WORKLOAD.contract) == (
        f"its meta.json is format {META_VERSION + 1}; this Tenfold reads format {META_VERSION}: upgrade tenfold where "
        "it is served")
    assert meta_problem(_meta("2"), "flights", WORKLOAD.contract) == (
        f"its meta.json has an unsupported meta version ('2'; this Tenfold reads format {META_VERSION})")
    assert meta_problem(_meta(MISSING), "flights", WORKLOAD.contract) == (
        f"its meta.json has an unsupported meta version (None; this Tenfold reads format {META_VERSION})")
