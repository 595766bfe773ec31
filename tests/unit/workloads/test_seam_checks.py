"""What get_workload, Sources and FeatureContract refuse of a workload of one's own: each mistake named in one line,
before a run fails far from it (a raw traceback retried, a table silently never gated, the lake's features overwritten)."""

from __future__ import annotations

import dataclasses
import json
import sys
import types
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import torch

from tenfold import workloads
from tenfold.config import Settings
from tenfold.model import Preprocessor
from tenfold.training.config import TrainConfig
from tenfold.training.worker import REFUSED_FILE, ModelRefused, _record_refusal, build_model
from tenfold.workloads import FeatureContract, WorkloadError, ZoneColumn, get_workload
from tenfold.workloads.flights import SOURCES, WORKLOAD, FlightsWorkload
from tenfold.workloads.flights.model import FlightDelayModel, ModelConfig


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


_ZONES = SOURCES.zone_columns[0]  # airports.tzone per faa, given to flights' origin and dest


@pytest.mark.parametrize(("zone", "says"), ids=["table_typo", "used_in_not_an_input", "used_as_empty", "used_as_text"],
                         argvalues=[
    (dataclasses.replace(_ZONES, table="airport"),
     r"zone_columns names table 'airport' \(in ZoneColumn\(table='airport'.*\)\), which is not among its month_inputs "
     r"\['flights', 'weather', 'planes', 'airports', 'airlines'\]: .* so the time zones would never be checked"),
    (dataclasses.replace(_ZONES, used_in="flight"), r"zone_columns names used_in 'flight' .* not among its month_inputs"),
    (dataclasses.replace(_ZONES, used_as=()), r"zone_columns gives used_as \(\) .*: give a tuple of the flights columns "
                                              r"that hold airports.faa values"),
    (dataclasses.replace(_ZONES, used_as="dest"), r"zone_columns gives used_as 'dest'"),
])
def test_sources_refuse_a_zone_column_the_job_would_skip(zone: ZoneColumn, says: str) -> None:
    """A ZoneColumn naming a table the month does not read was skipped by the job without a word: a typo turned the
    time zone check off, and the transform failed on a zone Spark's Java does not know, retried, naming no airport."""
    with pytest.raises(WorkloadError, match=says) as exc:
        dataclasses.replace(SOURCES, zone_columns=(zone,))
    assert _refusal(exc).startswith("sources 'nycflights13': ")


def test_sources_refuse_a_history_table_read_for_no_month() -> None:
    """history_table set with history_months 0: the history was never read and every history aggregate silently
    empty (the flights workload's route and carrier delay rates all null)."""
    with pytest.raises(WorkloadError, match=r"history_months is 0 with history_table 'flights': the history is then "
                                            r"never read .* \(1 or more\), or set history_table to None") as exc:
        dataclasses.replace(SOURCES, history_months=0)
    _refusal(exc)
    assert dataclasses.replace(SOURCES, history_months=1).history_months == 1


@pytest.mark.parametrize(("change", "says"), ids=["lookup_repeated", "lookup_uppercase", "lookup_dash", "no_keys"],
                         argvalues=[
    ({"lookup_tables": ("devices", "routes", "devices")},
     r"lookup_tables lists \['devices'\] more than once: list each lookup table once"),
    ({"lookup_tables": ("Devices",)}, r"lookup_tables names \['Devices'\], which are not lake table names: use lowercase"),
    ({"lookup_tables": ("routes", "by-day")}, r"lookup_tables names \['by-day'\], which are not lake table names"),
    ({"key_columns": (), "column_types": {"c": "string", "x": "float64", "y": "int32"}},
     r"key_columns is empty: name the column\(s\) that identify a row of the features table"),
])
def test_the_contract_refuses_lookups_and_keys_the_job_cannot_write(change: dict[str, Any], says: str) -> None:
    """Each was accepted at load: a repeated lookup was refused by write_lookups only after the whole transform (the
    workload's lookups return a dict, which cannot hold a name twice), a name that is no lake table name failed the
    lake's publish, and no key columns failed Spark's hash() of nothing, retried as any failure."""
    body: dict[str, Any] = {"key_columns": ("k",), "label": "y", "categorical_columns": ("c",),
                            "numeric_columns": ("x",), "column_types": _TYPES, **change}
    with pytest.raises(WorkloadError, match=says) as exc:
        FeatureContract(**body)
    _refusal(exc)


@pytest.mark.parametrize(("change", "says"), ids=["short_month", "not_a_month", "month_13", "not_text", "reversed"],
                         argvalues=[
    ({"first_month": "2013-1"}, r"sources 'nycflights13': first_month is '2013-1', not a month: give it as YYYY-MM"),
    ({"last_month": "2013/12"}, r"sources 'nycflights13': last_month is '2013/12', not a month: give it as YYYY-MM"),
    ({"last_month": "2013-13"}, r"last_month is '2013-13', not a month"),
    ({"first_month": 201301}, r"first_month is 201301, not a month"),
    ({"first_month": "2014-01"}, r"last_month 2013-12 is before first_month 2014-01"),
])
def test_sources_refuse_a_coverage_that_is_not_two_months_in_order(change: dict[str, object], says: str) -> None:
    """first_month and last_month were never checked, and ingest compares them as text: "2013-1" sorts after
    "2013-01".."2013-09", so those months were refused as outside "2013-1 to 2013-12", contradicting itself."""
    with pytest.raises(WorkloadError, match=says) as exc:
        dataclasses.replace(SOURCES, **change)  # type: ignore[arg-type]
    _refusal(exc)
    open_ended = dataclasses.replace(SOURCES, first_month=None, last_month=None)  # an undeclared coverage is fine
    assert (open_ended.first_month, open_ended.last_month) == (None, None)


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


_TYPES = {"k": "int32", "c": "string", "x": "float64", "y": "int32"}


@pytest.mark.parametrize(("groups", "column_types", "says"), ids=[
    "label_as_numeric", "label_as_categorical", "label_as_key", "both_categorical_and_numeric", "repeated_in_a_group",
    "analysis_and_feature",
], argvalues=[
    ({"numeric_columns": ("x", "y")}, _TYPES,
     r"the label 'y' is also in numeric_columns: a model fed its own outcome .* remove it from numeric_columns"),
    ({"categorical_columns": ("c", "y")}, {"k": "int32", "c": "string", "y": "int32", "x": "float64"},
     r"the label 'y' is also in categorical_columns: .* remove it from categorical_columns"),
    ({"key_columns": ("k", "y")}, {"k": "int32", "y": "int32", "c": "string", "x": "float64"},
     r"the label 'y' is also in key_columns: .* remove it from key_columns"),
    ({"numeric_columns": ("c", "x")}, _TYPES,
     r"\['c'\] are in both categorical_columns and numeric_columns: .* put each column in one group"),
    ({"numeric_columns": ("x", "x")}, _TYPES, r"numeric_columns lists \['x'\] more than once: list each column once"),
    ({"analysis_columns": ("x",)}, _TYPES,
     r"\['x'\] are in analysis_columns and among the feature columns: an analysis column is never a feature"),
])
def test_the_contract_refuses_a_column_in_two_groups(groups: dict[str, tuple[str, ...]], column_types: dict[str, str],
                                                     says: str) -> None:
    """column_types was checked against the groups with their repeats dropped (dict.fromkeys): the label as a feature
    (the model trained on its own outcome, passed the gate with perfect metrics, and serving needed the outcome at
    request time) and a column both categorical and numeric (the drift profile kept one of the two, and the monitor then
    failed every month) were accepted."""
    body: dict[str, Any] = {"key_columns": ("k",), "label": "y", "categorical_columns": ("c",),
                            "numeric_columns": ("x",), **groups}
    with pytest.raises(WorkloadError, match=says) as exc:
        FeatureContract(column_types=column_types, **body)
    _refusal(exc)


def test_the_shipped_contracts_keep_each_column_in_one_group(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(TINY_DIR))
    import tiny_workload  # type: ignore[import-not-found]

    for contract in (WORKLOAD.contract, tiny_workload.CONTRACT):
        assert dataclasses.replace(contract) == contract  # __post_init__ runs again on the copy
    assert "carrier" in WORKLOAD.contract.key_columns and "carrier" in WORKLOAD.contract.categorical_columns  # allowed


TINY_DIR = Path(__file__).resolve().parents[2] / "workloads"


class _OneColumnLogits(FlightDelayModel):
    """The reference model with the ``.squeeze(1)`` forgotten: logits of shape (N, 1)."""

    def forward(self, categorical: torch.Tensor, numeric: torch.Tensor) -> torch.Tensor:
        parts = [emb(categorical[:, j]) for j, emb in enumerate(self.embeddings)]
        return self.mlp(torch.cat([*parts, numeric], dim=1))


class _SwappedArguments(FlightDelayModel):
    """forward(numeric, categorical): the embeddings are handed the float block."""

    def forward(self, numeric: torch.Tensor, categorical: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return super().forward(categorical, numeric)


@dataclasses.dataclass(frozen=True)
class _OwnModel(FlightsWorkload):
    model_type: Any = None

    def build_model(self, config: Any, vocab_sizes: Sequence[int], num_inputs: int) -> torch.nn.Module:
        return self.model_type(config, vocab_sizes, num_inputs)  # type: ignore[no-any-return]


def _preprocessor() -> Preprocessor:
    return Preprocessor(categorical_columns=("a",), numeric_columns=("x", "y"), vocabularies={"a": ["p", "q"]},
                        means={"x": 0.0, "y": 0.0}, stds={"x": 1.0, "y": 1.0})


@pytest.mark.parametrize(("model_type", "says"), ids=["logits_n_by_1", "arguments_swapped", "no_input_sizes"],
                         argvalues=[
    (_OneColumnLogits, r"workload seam_own_model's model \(tenfold.workloads.Workload.build_model\): "
                       r"forward\(categorical, numeric\) on 2 rows \(categorical int64 \(2, 1\), numeric float32 "
                       r"\(2, 4\)\) returned a torch.float32 tensor of shape \(2, 1\), not a floating tensor of shape "
                       r"\(2,\): return one logit per row \(squeeze the last dimension: .squeeze\(1\)\)$"),
    (_SwappedArguments, r"forward\(categorical, numeric\) on 2 rows .* failed \(RuntimeError: Expected tensor for "
                        r"argument #1 'indices' .*\): it must take a batch of codes and a batch of numerics"),
    (lambda config, vocab_sizes, num_inputs: torch.nn.Linear(num_inputs, 1),
     r"seam_own_model's build_model returned Linear with vocab_sizes=None .* keep the sizes it was given"),
])
def test_a_workload_model_that_is_not_one_logit_per_row_is_refused_for_good(
        model_type: Any, says: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A forward of shape (N, 1) passed build_model and the first step failed in the loss on torch's "Target size ...
    must be the same as input size", naming no workload; neither it nor the missing-sizes error said retryable False,
    so no refused.json was written: torchrun restarted the rank and the task retried, six data loads in all."""
    spec = _register(monkeypatch, "seam_own_model", _OwnModel(name="seam_own_model", model_type=model_type))
    cfg = TrainConfig(lake_uri="file:///nowhere", train_months=("2013-01",), workload=spec,
                      model=ModelConfig(embedding_dim=2, hidden=(4,)))
    with pytest.raises(ModelRefused, match=says) as exc:
        build_model(cfg, _preprocessor())
    assert "\n" not in str(exc.value) and exc.value.retryable is False
    _record_refusal(exc.value, 0, tmp_path, None)  # what the rank does with it: the launch then refuses, never retries
    assert json.loads((tmp_path / REFUSED_FILE).read_text())["error"].startswith("ModelRefused: ")


def test_the_shipped_workloads_models_pass_the_forward_check(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(TINY_DIR))
    pre = _preprocessor()
    for spec in ("flights", "tiny_workload:WORKLOAD"):
        model = build_model(TrainConfig(lake_uri="file:///nowhere", train_months=("2013-01",), workload=spec), pre)
        assert all(m.training for m in model.modules())  # put back in train mode after the eval-mode check
        out = model(torch.zeros((3, 1), dtype=torch.long), torch.zeros((3, pre.num_inputs)))
        assert out.shape == (3,)
