"""The workload seam: the flights workload satisfies the protocol, and get_workload resolves or refuses clearly."""

from __future__ import annotations

import sys
import types
from pathlib import Path
from types import SimpleNamespace

import pytest

from tenfold.workloads import (
    BUILTIN,
    FeatureContract,
    Sources,
    Workload,
    WorkloadError,
    get_workload,
    missing_members,
    own_baselines,
)
from tenfold.workloads.flights import WORKLOAD
from tenfold.workloads.flights import contract as flights_contract


def test_flights_satisfies_the_protocol() -> None:
    workload = get_workload("flights")
    assert workload is WORKLOAD and isinstance(workload, Workload) and missing_members(workload) == []
    assert isinstance(workload.sources, Sources) and isinstance(workload.contract, FeatureContract)
    assert workload.contract is flights_contract.CONTRACT
    assert workload.contract.all_columns == flights_contract.ALL_COLUMNS
    assert (workload.expectations_dir / f"{workload.features_suite}.json").is_file()
    assert all((workload.expectations_dir / f"{s}.json").is_file() for s in workload.raw_suites.values())
    assert set(workload.raw_suites) <= set(workload.sources.tables)
    assert set(workload.sources.month_inputs) <= set(workload.sources.tables)
    assert workload.sources.history_table in workload.sources.monthly_tables


def test_settings_choose_the_workload() -> None:
    assert get_workload(SimpleNamespace(workload="flights")) is WORKLOAD
    from tenfold.config import get_settings

    assert get_workload(get_settings("dev")) is WORKLOAD  # the default of settings.workload


def test_flights_sources_read_the_installed_package() -> None:
    from tenfold.workloads.flights import sources

    assert set(WORKLOAD.sources.tables) == set(sources.TABLES)
    assert WORKLOAD.sources.read("airlines").schema == sources.SCHEMAS["airlines"]


def test_flights_model_hooks_delegate_to_the_model_package() -> None:
    from tenfold.workloads.flights.model import FlightDelayModel, ModelConfig

    assert WORKLOAD.model_config_type is ModelConfig
    model = WORKLOAD.build_model(ModelConfig(), [5, 7], 3)
    assert isinstance(model, FlightDelayModel)
    assert set(WORKLOAD.baselines()) == {"rate"}  # its own; the platform adds gradient boosting ("hgb")


def test_resolving_flights_imports_nothing_heavy() -> None:
    import subprocess

    code = ("import sys; from tenfold.workloads import get_workload; get_workload('flights'); "
            "print(sorted(m for m in ('pyarrow', 'pyspark', 'torch') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_unknown_workload_names_the_choices() -> None:
    with pytest.raises(WorkloadError, match=r"unknown workload 'nope': use one of flights or 'package.module:attribute'"):
        get_workload("nope")
    assert WorkloadError.__mro__[1] is ValueError


def test_module_attr_loads_a_users_workload(monkeypatch: pytest.MonkeyPatch) -> None:
    class Tiny:
        name = "tiny"
        sources = WORKLOAD.sources
        contract = WORKLOAD.contract
        expectations_dir = Path("suites")
        raw_suites = types.MappingProxyType({"flights": "raw_flights"})
        features_suite = "features"
        model_config_type = dict

        def transform(self, tables, part, history_months):  # type: ignore[no-untyped-def]
            return tables["flights"]

        def build_model(self, config, vocab_sizes, num_inputs):  # type: ignore[no-untyped-def]
            raise NotImplementedError

        def baselines(self):  # type: ignore[no-untyped-def]
            return {}

        request_model = dict

        def lookups(self, tables, part, history_months):  # type: ignore[no-untyped-def]
            return {}

        def online_features(self, lookups):  # type: ignore[no-untyped-def]
            raise NotImplementedError

        def replay(self, part):  # type: ignore[no-untyped-def]
            return []

    module = types.ModuleType("tiny_workload_for_tests")
    module.WORKLOAD = Tiny()  # type: ignore[attr-defined]
    module.NOT_ONE = object()  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, module.__name__, module)
    assert get_workload("tiny_workload_for_tests:WORKLOAD") is module.WORKLOAD  # type: ignore[attr-defined]
    with pytest.raises(WorkloadError, match="is not a Workload: it lacks baselines, build_model"):
        get_workload("tiny_workload_for_tests:NOT_ONE")
    with pytest.raises(WorkloadError, match="has no attribute 'MISSING'"):
        get_workload("tiny_workload_for_tests:MISSING")
    with pytest.raises(WorkloadError, match="cannot import no_such_module_xyz"):
        get_workload("no_such_module_xyz:W")
    assert "flights" in BUILTIN

    # A baseline of its own named like the platform's: the platform's replaced it unseen, and the gate held
    # challengers to gradient boosting under the workload's name for its own baseline.
    class Shadowing(Tiny):
        def baselines(self):  # type: ignore[no-untyped-def]
            return {"hgb": lambda pre, contract: None}

    assert own_baselines(module.WORKLOAD) == {}  # type: ignore[attr-defined]
    with pytest.raises(WorkloadError, match=r"its baselines\(\) names 'hgb'.*rename yours"):
        own_baselines(Shadowing())  # what evaluation and the gate's policy read


def test_contract_refuses_columns_out_of_order() -> None:
    with pytest.raises(WorkloadError, match="column_types must list every column once"):
        FeatureContract(key_columns=("k",), label="y", categorical_columns=(), numeric_columns=("x",),
                        column_types={"x": "float64", "k": "int32", "y": "int32"})


@pytest.mark.parametrize(("alias", "says"), [
    ("int", r"column_types\['y'\] is 'int', which is no Arrow type name: use e\.g\. int32"),
    ("timestamp[ms]", r"column_types\['y'\] is 'timestamp\[ms\]': a timestamp is stored as an instant in microseconds"),
    ("timestamp[us]", r"column_types\['y'\] is 'timestamp\[us\]': a timestamp is stored as an instant"),
])
def test_a_column_type_that_is_not_an_arrow_type_is_refused_naming_the_column(alias: str, says: str) -> None:
    """"int" ended the features job in "No type alias for int" (no column named) and a retry; a timestamp alias of
    another unit, or without a zone, was silently taken as microseconds in UTC."""
    contract = FeatureContract(key_columns=("k",), label="y", categorical_columns=(), numeric_columns=("x",),
                               column_types={"k": "int32", "x": "float64", "y": alias})
    with pytest.raises(WorkloadError, match=says):
        contract.arrow_schema()
    import pyarrow as pa

    fine = FeatureContract(key_columns=("k",), label="y", categorical_columns=(), numeric_columns=("x",),
                           column_types={"k": "date32", "x": "float64", "y": "timestamp[us, tz=UTC]"})
    assert fine.arrow_schema().types == [pa.date32(), pa.float64(), pa.timestamp("us", tz="UTC")]


def test_contract_refuses_not_model_inputs_that_are_not_features() -> None:
    with pytest.raises(WorkloadError, match=r"not_model_inputs names \['k'\], which are not feature columns"):
        FeatureContract(key_columns=("k",), label="y", categorical_columns=(), numeric_columns=("x",),
                        column_types={"k": "int32", "x": "float64", "y": "int32"}, not_model_inputs=("k",))
    ok = FeatureContract(key_columns=("k",), label="y", categorical_columns=("c",), numeric_columns=("x", "z"),
                         column_types={"k": "int32", "c": "string", "x": "float64", "z": "float64", "y": "int32"},
                         not_model_inputs=("z",))
    assert ok.model_numeric_columns == ("x",) and ok.model_categorical_columns == ("c",)
    assert ok.feature_columns == ("c", "x", "z")  # the table, online assembly and the drift monitor keep it


def test_the_jobs_history_default_is_the_workloads() -> None:
    from tenfold.features.job import parse_args

    args = parse_args(["--lake-uri", "file:///l", "--month", "2013-02", "--output", "file:///o"])
    assert args.workload == "flights" and args.history_months == WORKLOAD.sources.history_months


def test_the_spark_job_learns_the_workload_from_its_argv() -> None:
    from tenfold.config import get_settings
    from tenfold.data.partition import Partition
    from tenfold.features.submit import spark_submit_command

    settings = get_settings("local")
    cmd = spark_submit_command(settings, Partition(2013, 2), "file:///tmp/out")
    assert cmd[cmd.index("--workload") + 1] == getattr(settings, "workload", "flights")
    assert cmd[cmd.index("--features-table") + 1] == getattr(settings.storage, "features_table", "features")


def test_the_suites_travel_with_the_package_as_on_composer(tmp_path: Path) -> None:
    """Cloud Composer gets the package alone (uploaded as plugins; docs/deploy.md), run from a folder of its own: the
    suites were found at the checkout root, so there every month's raw gate refused "no suite 'raw_flights'". The
    package copied where no checkout is, imported from another folder, finds every suite of the workload."""
    import shutil
    import subprocess

    import tenfold

    plugins = tmp_path / "plugins"
    shutil.copytree(Path(tenfold.__file__).parent, plugins / "tenfold",
                    ignore=shutil.ignore_patterns("__pycache__"))
    elsewhere = tmp_path / "task"
    elsewhere.mkdir()
    probe = ("import tenfold; from tenfold.workloads import get_workload; w = get_workload('flights'); "
             "names = [w.features_suite, *w.raw_suites.values()]; "
             "print(tenfold.__file__); print(all((w.expectations_dir / f'{n}.json').is_file() for n in names))")
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(plugins), "HOME": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", probe], cwd=elsewhere, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    where, found = done.stdout.split()
    assert Path(where).is_relative_to(plugins), where  # the copy was imported, not the checkout's
    assert found == "True", done.stdout


def test_the_package_data_rule_takes_every_suite_of_the_workload() -> None:
    """A wheel (the serving image's `pip install .`, a pip-installed Airflow) holds what pyproject's package-data
    names, not the source tree: the rule must match every suite the workload names, or an install lacks them."""
    import tomllib

    import tenfold.workloads.flights as flights_package

    root = Path(flights_package.__file__).parents[4]
    rules = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    package = Path(flights_package.__file__).parent
    packaged = {p for glob in rules["tenfold.workloads.flights"] for p in package.glob(glob)}
    workload = get_workload("flights")
    wanted = {workload.expectations_dir / f"{s}.json" for s in (workload.features_suite, *workload.raw_suites.values())}
    assert wanted <= packaged, sorted(map(str, wanted - packaged))
