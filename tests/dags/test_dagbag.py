"""Every DAG in dags/ loads and follows the house rules; no deployable spells a name that settings own.

The DagBag runs in a subprocess with its own AIRFLOW_HOME (Airflow reads its config at import time), once
per environment: the DAG files choose between local and cloud wiring at parse time (e.g. spark-submit
vs Dataproc), and every branch must load.
"""

from __future__ import annotations

import ast
import datetime as dt
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tenfold.config import ENVIRONMENTS, get_settings
from tenfold.config.settings import project_root

ROOT = project_root()
DAGS = ROOT / "dags"

_PROBE = r"""
import json, os, sys
from pathlib import Path
from tenfold.config import get_settings
from airflow.dag_processing.dagbag import DagBag

out = {}
for env in sys.argv[2:]:
    os.environ["TENFOLD_ENV"] = env
    get_settings.cache_clear()
    bag = DagBag(dag_folder=sys.argv[1])
    dags = {}
    for dag_id, dag in bag.dags.items():
        dags[dag_id] = {
            "file_stem": Path(dag.fileloc).stem,
            "tags": sorted(dag.tags or []),
            "catchup": dag.catchup,
            "doc_md": dag.doc_md or "",
            # Airflow 3 gives a DAG without a schedule a NullTimetable, never None
            "has_schedule": type(dag.timetable).__name__ != "NullTimetable",
            "start_date": str(dag.start_date) if dag.start_date else None,
            "task_retries": {t.task_id: t.retries for t in dag.tasks},
            "timeouts": {t.task_id: t.execution_timeout.total_seconds() if t.execution_timeout else None
                         for t in dag.tasks},
            "retry_delays": {t.task_id: t.retry_delay.total_seconds() for t in dag.tasks},
            "alerting": sorted({getattr(cb, "__qualname__", str(cb)) for t in dag.tasks
                                for cb in (t.on_failure_callback if isinstance(t.on_failure_callback, list)
                                           else [t.on_failure_callback])}),
            "dag_alerting": sorted(getattr(cb, "__qualname__", str(cb)) for cb in (
                dag.on_failure_callback if isinstance(dag.on_failure_callback, list) else [dag.on_failure_callback])),
            "tasks": sorted(t.task_id for t in dag.tasks),
            "upstream": {t.task_id: sorted(t.upstream_task_ids) for t in dag.tasks},
            "mapped": sorted(t.task_id for t in dag.tasks if t.get_closest_mapped_task_group() is not None),
            "max_active_tis_per_dagrun": {t.task_id: t.max_active_tis_per_dagrun for t in dag.tasks},
            "params": {k: dag.params.get_param(k).schema for k in dag.params},
            "timetable": type(dag.timetable).__name__,
            # Airflow gives a run no task instance of a task whose end_date is before the run's logical date
            "end_dates": sorted({str(d) for d in [dag.end_date, *(t.end_date for t in dag.tasks)]}),
        }
        # What Airflow's backfill (REST, UI, CLI) reads from the serialized DAG: a periodic timetable, and allowed run
        # types that include backfill (or none given).
        from airflow.serialization.serialized_objects import DagSerialization

        core = DagSerialization.from_dict(DagSerialization.to_dict(dag))
        allowed = getattr(core, "allowed_run_types", None)
        dags[dag_id]["run_types"] = None if allowed is None else sorted(str(getattr(t, "value", t)) for t in allowed)
        dags[dag_id]["backfill"] = core.timetable.periodic and (allowed is None or "backfill" in dags[dag_id]["run_types"])
        if dag_id == "build_features":  # its first scheduled run, as the scheduler computes it
            import datetime as dt

            from airflow.serialization.serialized_objects import DagSerialization
            from airflow.timetables.base import TimeRestriction

            core = DagSerialization.from_dict(DagSerialization.to_dict(dag))
            info = core.timetable.next_dagrun_info(last_automated_data_interval=None, restriction=TimeRestriction(
                dt.datetime(2013, 1, 1, tzinfo=dt.timezone.utc), None, catchup=True))
            dags[dag_id]["first_run"] = [info.logical_date.isoformat(), info.run_after.isoformat()]
    out[env] = {"errors": {k: str(v) for k, v in bag.import_errors.items()}, "dags": dags}
heavy = [m for m in ("torch", "pyspark", "great_expectations", "sklearn") if m in sys.modules]
print("DAGBAG-JSON" + json.dumps({"envs": out, "heavy_modules": heavy}))
"""


TRAIN_TASK_RETRIES = 3
# Each DAG's bounds in the probe's environment (TENFOLD_PIPELINES__<DAG>__...): none is a default, and no two DAGs
# share one, so a DAG that spelled its retries or timeout, or read another DAG's settings, would not get these.
DAG_BOUNDS = {
    "build_features": {"retries": 4, "retry_delay_s": 31, "task_timeout_s": 1301},
    "train_model": {"retries": 5, "retry_delay_s": 62, "task_timeout_s": 1402},
    "rollout_model": {"retries": 6, "retry_delay_s": 13, "task_timeout_s": 7303},
    "batch_inference": {"retries": 7, "retry_delay_s": 14, "task_timeout_s": 5404},
    "monitor_drift": {"retries": 8, "retry_delay_s": 35, "task_timeout_s": 605},
}


@pytest.fixture(scope="module")
def dagbag(tmp_path_factory: pytest.TempPathFactory) -> dict:
    home = tmp_path_factory.mktemp("airflow-home")
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS),
        "TENFOLD_HOME": str(home / "tenfold"),
        # Not the default (1): the train task's retries must come from this setting (they were a literal 1).
        "TENFOLD_TRAINING__TASK_RETRIES": str(TRAIN_TASK_RETRIES),
        **{f"TENFOLD_PIPELINES__{dag_id.upper()}__{name.upper()}": str(value)
           for dag_id, bounds in DAG_BOUNDS.items() for name, value in bounds.items()},
    }
    proc = subprocess.run(
        [sys.executable, "-c", _PROBE, str(DAGS), *ENVIRONMENTS],
        env=env, capture_output=True, text=True, timeout=300, cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    (line,) = [x for x in proc.stdout.splitlines() if x.startswith("DAGBAG-JSON")]
    return json.loads(line.removeprefix("DAGBAG-JSON"))


def _dags(dagbag: dict) -> list[tuple[str, str, dict]]:
    return [(env, dag_id, d) for env, body in dagbag["envs"].items() for dag_id, d in body["dags"].items()]


def test_every_dag_file_imports_in_every_environment(dagbag):
    files = sorted(p.stem for p in DAGS.glob("*.py") if not p.name.startswith("_"))
    assert files, "dags/ holds no DAG files"
    for env, body in dagbag["envs"].items():
        assert body["errors"] == {}, f"{env}: import errors {body['errors']}"
        assert sorted(d["file_stem"] for d in body["dags"].values()) == files, f"{env}: a file defines no DAG, or two"
    assert "build_features" in dagbag["envs"]["local"]["dags"]


def test_every_dag_follows_the_house_rules(dagbag):
    problems = []
    for env, dag_id, d in _dags(dagbag):
        where = f"{env}:{dag_id}"
        if d["file_stem"] != dag_id:
            problems.append(f"{where}: file {d['file_stem']}.py defines dag_id {dag_id!r} (file stem == dag_id)")
        if not d["tags"]:
            problems.append(f"{where}: no tags")
        if d["catchup"] is not False:
            problems.append(f"{where}: catchup must be False (backfill explicitly instead)")
        if len(d["doc_md"].strip()) < 40:
            problems.append(f"{where}: doc_md missing (use doc_md=__doc__)")
        if not d["has_schedule"] or not d["start_date"]:
            problems.append(f"{where}: schedule and start_date must be explicit")
        if d["alerting"] != ["airflow_failure_callback"]:
            problems.append(f"{where}: every task must alert through on_failure_callback=airflow_failure_callback, got {d['alerting']}")
        if d["dag_alerting"] != ["airflow_dag_failure_callback"]:  # a task killed on its last try runs no callback
            problems.append(f"{where}: the DAG must alert through on_failure_callback=airflow_dag_failure_callback, "
                            f"got {d['dag_alerting']}")
        no_retry = sorted(t for t, r in d["task_retries"].items() if not r or r < 1)
        if no_retry:
            problems.append(f"{where}: tasks without retries: {no_retry}")
        unbounded = sorted(t for t, s in d["timeouts"].items() if not s)
        if unbounded:  # a hung task would hold the DAG's one active run for ever
            problems.append(f"{where}: tasks without execution_timeout: {unbounded}")
    assert not problems, "\n".join(problems)


def test_every_task_is_bound_by_its_settings(dagbag):
    """Retries, their delay and the execution timeout of every task come from settings.pipelines.<dag> (the probe sets
    DAG_BOUNDS, none of them a default); the train task's from the training settings."""
    from tenfold.pipelines.common import task_timeout_s

    for env, dag_id, d in _dags(dagbag):
        assert dag_id in DAG_BOUNDS, f"{dag_id}: add its bounds to DAG_BOUNDS"
        bounds = DAG_BOUNDS[dag_id]
        expected = {t: float(bounds["task_timeout_s"]) for t in d["timeouts"]}
        if dag_id == "train_model":  # the train task follows the training bounds (torchrun's, the group's)
            expected["train"] = float(task_timeout_s(get_settings(env), dag_id))
        assert d["timeouts"] == expected, f"{env}:{dag_id}"
        retries = {t: bounds["retries"] for t in d["task_retries"]}
        if dag_id == "train_model":  # a try can take hours: its own setting
            retries["train"] = TRAIN_TASK_RETRIES
        assert d["task_retries"] == retries, f"{env}:{dag_id}"
        assert d["retry_delays"] == {t: float(bounds["retry_delay_s"]) for t in d["retry_delays"]}, f"{env}:{dag_id}"


def test_parsing_dags_imports_nothing_heavy(dagbag):
    assert dagbag["heavy_modules"] == [], "a DAG file imports these at module top; import them inside tasks"


def test_build_features_wiring(dagbag):
    local = dagbag["envs"]["local"]["dags"]["build_features"]
    assert local["tasks"] == ["build_features", "ingest", "publish", "validate"]
    for env in ("dev", "prod"):  # the same graph everywhere: the build task runs spark-submit or a Dataproc batch
        cloud = dagbag["envs"][env]["dags"]["build_features"]
        assert cloud["tasks"] == local["tasks"]


def test_a_scheduled_build_features_run_builds_the_month_that_is_over(dagbag):
    """"@monthly" is a trigger timetable in Airflow 3 (create_cron_data_intervals is False by default): the run due
    on August 1st had logical date August 1st, so it built August, which has no data yet, and never July."""
    from tenfold.data.lake import Partition

    for env in dagbag["envs"]:
        d = dagbag["envs"][env]["dags"]["build_features"]
        assert d["timetable"] == "CronDataIntervalTimetable", env
        logical, due = (dt.datetime.fromisoformat(x) for x in d["first_run"])
        assert Partition.from_date(logical) == Partition(2013, 1) and due == dt.datetime(2013, 2, 1, tzinfo=dt.UTC)


def test_a_build_features_run_at_any_date_gets_its_tasks(dagbag):
    """With the DAG's end_date at the end of 2013, a run triggered in the UI at the form's own logical date (today)
    with month=2013-03 got no task instances and went green with nothing built."""
    for env in dagbag["envs"]:
        assert dagbag["envs"][env]["dags"]["build_features"]["end_dates"] == ["None"], env


def test_a_month_param_accepts_only_yyyy_mm(dagbag):
    from airflow.sdk import Param
    from airflow.sdk.definitions.param import ParamValidationError

    months = [(env, dag_id, d["params"]["month"]) for env, dag_id, d in _dags(dagbag) if "month" in d["params"]]
    assert {dag_id for _, dag_id, _ in months} >= {"build_features"}
    for env, dag_id, schema in months:
        param = Param(None, **schema)
        assert [param.resolve(v) for v in (None, "2013-02", "2013-12")] == [None, "2013-02", "2013-12"]
        for bad in ("2013-13", "2013-00", "2013-2", "13-02", "2013-02-01", "Feb 2013"):
            with pytest.raises(ParamValidationError):  # refused in the trigger form, before any task runs
                param.resolve(bad)
                pytest.fail(f"{env}:{dag_id}: the month param accepts {bad!r}")


def test_only_build_features_can_be_backfilled(dagbag):
    """train_model's timetable (the drift Asset or a weekly cron) is periodic, so Airflow accepted a backfill of it, and
    held the backfill's runs back apart from the DAG's others (max_active_runs counts per backfill): nine runs at once
    beside the weekly one, all training the same newest months, resizing the one training group under each other.
    The Asset-triggered DAGs are not periodic: Airflow refuses their backfills already."""
    for env in dagbag["envs"]:
        dags = dagbag["envs"][env]["dags"]
        assert sorted(dag_id for dag_id, d in dags.items() if d["backfill"]) == ["build_features"], env
        # every other run type stays allowed: the weekly run, the drift Asset's, a run triggered by hand
        assert {"scheduled", "asset_triggered", "manual"} <= set(dags["train_model"]["run_types"]), env
        assert "backfill" not in dags["train_model"]["run_types"], env


def test_batch_inference_wiring(dagbag):
    for env in dagbag["envs"]:  # the same graph everywhere: locally the score task runs the worker pool
        d = dagbag["envs"][env]["dags"]["batch_inference"]
        month = ["score_month.plan", "score_month.publish", "score_month.publish_results", "score_month.score"]
        assert d["tasks"] == ["months", *month]
        # One mapped instance of the group per month the run scores (held-back events bring several).
        assert d["mapped"] == month
        assert d["upstream"]["score_month.plan"] == ["months"]
        assert d["upstream"]["score_month.publish_results"] == ["score_month.plan", "score_month.score"]
        # Locally each score task runs a worker pool: the months are scored one after another.
        assert d["max_active_tis_per_dagrun"]["score_month.score"] == (1 if env == "local" else None)


# --- no resource name spelled outside settings ------------------------------------------------------

DEPLOYABLES = ("dags", "spark_jobs", "infra", "serving_image")
SKIP_DIRS = {"cdktf.out", ".gen", "__pycache__", "node_modules", ".terraform"}
SCANNED = {".py", ".json", ".yaml", ".yml", ".toml", ".cfg", ".conf", ".sh", ".tf", ".txt", ".ini", ".j2", ".tmpl", ""}


def _strings(value: object) -> list[str]:
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, (list, tuple)):
        return [s for v in value for s in _strings(v)]
    return [value] if isinstance(value, str) else []


def _folder_pattern(name: str) -> re.Pattern[str]:
    """A lake folder or table used as a path segment (``"_staging"``, ``"gs://b/_staging/x"``, ``"quarantine/"``),
    not the same word in a message or a tag (``"moved to quarantine"``, ``tags=["features"]``)."""
    n = re.escape(name)
    return re.compile(rf"(?<![\w.-]){n}/|/{n}(?![\w.-])|^{n}$")


def owned_literals() -> dict[str, re.Pattern[str]]:
    """Every name settings own in any environment (derived from each env's prefix), and the ports."""
    names: set[str] = set()
    folders: set[str] = set()
    tables: set[str] = set()
    ports: set[int] = set()
    for env in ENVIRONMENTS:
        s = get_settings(env)
        dump = s.model_dump(mode="json")
        names |= {v for v in _strings(dump) if s.prefix in v}  # buckets, topics, subscriptions, stacks, tags, ...
        names |= {s.assets.features, s.assets.challenger, s.assets.champion, s.storage.lake_uri}
        names |= {s.network.serving_tag, s.network.ssh_tag, s.infra.orchestrator_role_id}
        folders |= {s.storage.lake_layout.staging, s.storage.lake_layout.quarantine}
        tables.add(s.storage.features_table)
        ports |= {v for k, v in s.local.model_dump().items() if k.endswith("_port")}
        ports |= {s.serving.port, s.training.rdzv_port}
    patterns = {n: re.compile(re.escape(n) + r"(?![A-Za-z0-9_-])") for n in names}
    # the features table only as a path segment with a '/' (the bare word names tasks and tags too)
    patterns |= {n: re.compile(rf"(?<![\w.-]){re.escape(n)}/|/{re.escape(n)}(?![\w.-])") for n in tables}
    patterns |= {n: _folder_pattern(n) for n in folders}
    patterns |= {str(p): re.compile(rf"(?<![\w.]){p}(?![\w.])") for p in ports}
    return patterns


def test_the_owned_literals_cover_what_matters():
    owned = owned_literals()
    for env in ENVIRONMENTS:
        s = get_settings(env)
        for name in (s.storage.lake_bucket, s.messaging.requests_topic, s.messaging.subscriptions["requests"].name,
                     s.infra.data_stack, s.assets.features, s.assets.champion,
                     s.network.serving_tag, s.network.ssh_tag, s.infra.orchestrator_role_id,
                     s.storage.lake_layout.staging, s.storage.lake_layout.quarantine, s.storage.features_table):
            assert name in owned
    assert "8080" in owned


def _code_strings(path: Path) -> list[tuple[int, str]]:
    """The literals a file really uses: in Python, constants minus docstrings (prose may cite examples)."""
    text = path.read_text(errors="replace")
    if path.suffix != ".py":
        return list(enumerate(text.splitlines(), 1))
    tree = ast.parse(text)
    docstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                docstrings.add(id(first.value))
    out = []
    for node in ast.walk(tree):
        literal = isinstance(node, ast.Constant) and id(node) not in docstrings
        if literal and (isinstance(node.value, str) or (isinstance(node.value, int) and not isinstance(node.value, bool))):
            out.append((node.lineno, str(node.value)))
    return out


def scan(base: Path, owned: dict[str, re.Pattern[str]]) -> list[str]:
    hits = []
    for path in sorted(base.rglob("*")):
        if not path.is_file() or SKIP_DIRS & set(path.relative_to(base).parts):
            continue
        if path.suffix not in SCANNED and not path.name.startswith("Dockerfile"):
            continue
        for line, text in _code_strings(path):
            hits += [f"{path.relative_to(base.parent)}:{line}: {literal!r}" for literal, pattern in owned.items() if pattern.search(text)]
    return hits


def test_the_scan_finds_a_planted_name_and_ignores_prose(tmp_path):
    dev = get_settings("dev")
    (tmp_path / "dags").mkdir()
    (tmp_path / "dags" / "x.py").write_text(
        f'"""Reads gs://{dev.storage.lake_bucket} (prose is fine)."""\n'
        f'BUCKET = "{dev.storage.lake_bucket}"\nPORT = {get_settings("local").local.gcs_port}\nOK = "{dev.storage.lake_bucket}-ish"\n'
    )
    (tmp_path / "dags" / "Dockerfile").write_text(f"EXPOSE {dev.serving.port}\n")
    hits = scan(tmp_path / "dags", owned_literals())
    assert hits == [
        f"dags/Dockerfile:1: '{dev.serving.port}'",
        f"dags/x.py:2: '{dev.storage.lake_bucket}'",
        f"dags/x.py:3: '{get_settings('local').local.gcs_port}'",
    ]


def test_the_scan_finds_planted_layout_tags_role_and_asset_literals(tmp_path):
    """Each kind settings own besides buckets and ports, planted once; prose and look-alikes are not hits."""
    dev = get_settings("dev")
    layout, table = dev.storage.lake_layout, dev.storage.features_table
    planted = {
        "staging": f'STAGING = "{layout.staging}"',
        "staging_uri": f'OUT = "gs://bucket/{layout.staging}/{table}x/manual"',
        "quarantine": f'HELD = "{layout.quarantine}/"',
        "table": f'TABLE_DIR = "gs://bucket/{table}"',
        "serving_tag": f'TAGS = ["{dev.network.serving_tag}"]',
        "ssh_tag": f'SSH = "{dev.network.ssh_tag}"',
        "role": f'ROLE = "projects/p/roles/{dev.infra.orchestrator_role_id}"',
        "asset": f'CHAMPION = "{dev.assets.champion}"',
    }
    fine = [
        f'MSG = "the batch moved to {layout.quarantine}; see the report"',
        f'TAGS = ["tenfold", "{table}", "data-quality"]',
        f'WORD = "{layout.quarantine}d"',
        'TASK = "build_features"',
    ]
    (tmp_path / "dags").mkdir()
    (tmp_path / "dags" / "x.py").write_text("\n".join([*planted.values(), *fine]) + "\n")
    hits = scan(tmp_path / "dags", owned_literals())
    hit_lines = sorted({int(h.split(":")[1]) for h in hits})
    assert hit_lines == list(range(1, len(planted) + 1)), hits
    by_line = {int(h.split(":")[1]): h for h in hits}
    assert repr(layout.staging) in by_line[1] and repr(layout.quarantine) in by_line[3] and repr(table) in by_line[4]
    assert any(repr(dev.infra.orchestrator_role_id) in h for h in hits if ":7:" in h)
    # non-Python deployables (YAML, shell, Dockerfiles) are scanned line by line with the same patterns
    (tmp_path / "dags" / "job.yaml").write_text(f"output: gs://bucket/{layout.staging}/features\nnote: quarantine is for triage\n")
    assert sorted(h for h in scan(tmp_path / "dags", owned_literals()) if "job.yaml" in h) == [
        f"dags/job.yaml:1: {layout.staging!r}", f"dags/job.yaml:1: {table!r}"]


def test_no_deployable_spells_a_name_settings_own():
    owned = owned_literals()
    hits = [hit for folder in DEPLOYABLES if (ROOT / folder).is_dir() for hit in scan(ROOT / folder, owned)]
    assert not hits, "take these from tenfold.config settings instead:\n" + "\n".join(hits)


# The DAG processor's own code runs each DAG's failure callback (Airflow 3.3's _execute_dag_callbacks), given the run's
# last failed task instance as the scheduler sends it; the task's own callback gets the context Airflow builds from the
# same task instance. Each step prints the alerts the file hook holds after it.
_CALLBACKS_PROBE = r"""
import datetime as dt, json, os, sys, uuid
from pathlib import Path

import structlog
from airflow.api_fastapi.execution_api.datamodels.taskinstance import DagRun, TaskInstance
from airflow.callbacks.callback_requests import DagCallbackRequest, DagRunContext
from airflow.dag_processing.dagbag import DagBag
from airflow.dag_processing.processor import _execute_dag_callbacks
from airflow.sdk.api.datamodels._generated import TIRunContext
from airflow.sdk.execution_time.task_runner import RuntimeTaskInstance

bag = DagBag(dag_folder=sys.argv[1])
assert not bag.import_errors, bag.import_errors
dag = bag.dags["batch_inference"]
at = dt.datetime(2026, 1, 5, 3, tzinfo=dt.timezone.utc)
run_id = "manual__2026-01-05T03:00:00+00:00"
dag_run = DagRun(dag_id=dag.dag_id, run_id=run_id, logical_date=at, data_interval_start=at, data_interval_end=at,
                 run_after=at, start_date=at, end_date=at, run_type="manual", state="failed",
                 consumed_asset_events=[], partition_key=None)


def failed_ti(try_number):
    return TaskInstance(id=uuid.uuid4(), task_id="score_month.score", dag_id=dag.dag_id, run_id=run_id, map_index=1,
                        try_number=try_number, dag_version_id=uuid.uuid4())


def alerts():
    path = Path(os.environ["TENFOLD_ALERT_FILE"])
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def run_failed(last_ti, reason="task_failure"):
    request = DagCallbackRequest(filepath="batch_inference.py", bundle_name="dags-folder", bundle_version=None,
                                 dag_id=dag.dag_id, run_id=run_id, msg=reason,
                                 context_from_server=DagRunContext(dag_run=dag_run, last_ti=last_ti))
    _execute_dag_callbacks(bag, request, structlog.get_logger())


steps = {}
# try 2 fails in its process: its own callback alerts (the context as the task runner builds it), then the run fails
task = dag.get_task("score_month.score")
ti = RuntimeTaskInstance.model_construct(**failed_ti(2).model_dump(exclude_unset=True), task=task,
                                         _ti_context_from_server=TIRunContext.model_construct(dag_run=dag_run))
context = ti.get_template_context()
context["exception"] = RuntimeError("the month's dead letters exceed max_dead_lettered_fraction")
for callback in task.on_failure_callback if isinstance(task.on_failure_callback, list) else [task.on_failure_callback]:
    callback(context)
steps["own"] = alerts()
run_failed(failed_ti(2))
steps["own_then_run"] = alerts()
# the run is cleared and try 3 is SIGKILLed: no callback of its own ran
run_failed(failed_ti(3))
steps["killed"] = alerts()
# a run Airflow timed out (dagrun_timeout): it names the last task that had not finished (try 3, no record of its own)
run_failed(failed_ti(3), "timed_out")
steps["timed_out"] = alerts()
print("CALLBACKS-JSON" + json.dumps(steps))
"""


def test_a_task_killed_on_its_last_try_alerts_once_through_the_dag_processor(tmp_path):
    """Airflow 3 runs a task's failure callback in the task's own process: a task SIGKILLed on its last try (the OOM
    killer) failed with no alert at all. The DAG processor's code, with the real DAG files and the context Airflow
    builds, now alerts for the try that did not alert, not for the one whose own callback did, and for a run Airflow
    timed out, as the run's failure (Airflow names a task that had not finished, which no signal killed)."""
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(tmp_path / "airflow"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS),
        "TENFOLD_ENV": "local",
        "TENFOLD_HOME": str(tmp_path / "tenfold"),
        "TENFOLD_ALERT_FILE": str(tmp_path / "alerts.jsonl"),
    }
    for var in ("TENFOLD_ALERT_WEBHOOK", "TENFOLD_ALERT_SMTP_HOST"):
        env.pop(var, None)
    proc = subprocess.run([sys.executable, "-c", _CALLBACKS_PROBE, str(DAGS)], env=env, capture_output=True,
                          text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-4000:]
    (line,) = [x for x in proc.stdout.splitlines() if x.startswith("CALLBACKS-JSON")]
    steps = json.loads(line.removeprefix("CALLBACKS-JSON"))

    (own,) = steps["own"]
    assert own["title"] == "Airflow task batch_inference.score_month.score failed"
    assert steps["own_then_run"] == steps["own"], "the run's failure alerted a try whose own callback had alerted"
    (killed,) = steps["killed"][1:]
    assert killed["title"] == "Airflow task batch_inference.score_month.score[1] failed without its own alert"
    assert killed["details"]["run_id"] == "manual__2026-01-05T03:00:00+00:00"
    assert killed["details"]["task"] == "score_month.score[1]" and killed["details"]["try_number"] == 3
    assert "killed by a signal (SIGKILL" in killed["details"]["error"]
    (timed_out,) = steps["timed_out"][2:]
    # not "killed by a signal": Airflow ended the run, and the task it names had not finished
    assert timed_out["title"] == "Airflow DAG run batch_inference manual__2026-01-05T03:00:00+00:00 failed (timed_out)"
    assert timed_out["details"]["unfinished_task"] == "score_month.score[1]" and "error" not in timed_out["details"]
