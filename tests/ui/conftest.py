"""Fixtures of the browser tests: the system Chromium driven by Playwright, and one local platform for the module.

* ``chromium`` -> the path of Debian's Chromium (``make setup`` installs it), or of the browser named by
  ``TENFOLD_CHROMIUM`` (another system's Chromium or Chrome). Missing, the tests FAIL saying how to install it:
  Playwright's own browser download is never used (nothing downloads at test time).
* ``browser`` -> a headless Chromium (Playwright, sync API) for the session.
* ``platform`` -> the real local platform (``tenfold.local.up``: the GCS and Pub/Sub emulators and Airflow) on
  a temporary home and free ports, with the Airflow URL and login read from ``tenfold status`` as a user reads
  them, and ``artifacts``: the folder under that home (``<home>/artifacts/ui``) where the screenshots go.
  Brought up once per module (and its DAGs parsed) and taken down after it. Without the Data Docs vendor files
  (``make setup``) it FAILS at once, naming them, before anything starts.
* ``offline`` -> ``offline(context)`` makes a browser context refuse every request that is not ``file:`` or
  loopback, and returns the list of what it refused.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from tenfold.config import Settings
from tenfold.config.settings import LocalSettings
from tenfold.local import down, free_ports, local_settings, settings_env, up
from tenfold.local.airflow_api import AirflowApi
from tenfold.quality.datadocs import missing_assets, vendor_assets_dir

# Debian's chromium package: /usr/bin/chromium is a shell wrapper around the real binary.
CHROMIUM_CANDIDATES = ("/usr/lib/chromium/chromium", "chromium", "chromium-browser")
INSTALL_HINT = (
    "the browser tests drive the system Chromium through Playwright, and none was found (looked for {looked}). "
    "Install it with `make setup`, or `apt-get install chromium` as root, or name another Chromium with "
    "TENFOLD_CHROMIUM=/path/to/chromium; Playwright's own browser download (`playwright install`) is not used"
)
TENFOLD = str(Path(sys.prefix) / "bin" / "tenfold")
LOGIN = re.compile(r"Airflow UI: (?P<url>\S+)\s+user: (?P<user>\S+)\s+password: (?P<password>\S+)")
LOOPBACK = {"127.0.0.1", "localhost", "::1", "[::1]"}
DAGS = ("build_features", "train_model")  # the DAGs the tests open


def find_chromium() -> str | None:
    chosen = os.environ.get("TENFOLD_CHROMIUM")
    for candidate in [chosen] if chosen else CHROMIUM_CANDIDATES:
        path = candidate if os.path.isabs(candidate) else shutil.which(candidate)
        # A file, as setup.sh checks (-f): a folder is "executable" too, and TENFOLD_CHROMIUM=/tmp failed in
        # Playwright's launch instead of with the install hint.
        if path and os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    return None


@pytest.fixture(scope="session")
def chromium() -> str:
    path = find_chromium()
    if path is None:
        looked = os.environ.get("TENFOLD_CHROMIUM") or ", ".join(CHROMIUM_CANDIDATES)
        pytest.fail(INSTALL_HINT.format(looked=looked), pytrace=False)
    return path


@pytest.fixture(scope="module")
def browser(chromium: str) -> Iterator[Any]:
    # Module scope, not session: Playwright's sync API keeps an asyncio loop running in this thread while it
    # is open, and every later test's asyncio.run() would fail with "cannot be called from a running loop".
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("the `playwright` package is missing: run `make setup` (it installs the dev extra)", pytrace=False)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, headless=True)
        try:
            yield browser
        finally:
            browser.close()


@dataclass(frozen=True)
class Platform:
    settings: Settings
    url: str  # the Airflow UI, as `tenfold status` prints it
    user: str
    password: str
    artifacts: Path  # screenshots: <home>/artifacts/ui

    def screenshot(self, page: Any, name: str) -> Path:
        path = self.artifacts / f"{name}.png"
        page.screenshot(path=str(path), full_page=True)
        return path

    @contextlib.contextmanager
    def failure_shot(self, page: Any, name: str) -> Iterator[None]:
        """Save ``FAILED-<name>.png`` if the block raises, so a failure shows what the browser saw."""
        try:
            yield
        except BaseException:
            with contextlib.suppress(Exception):
                self.screenshot(page, f"FAILED-{name}")
            raise


def _env(settings: Settings) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    env.update(settings_env(settings))
    return env


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    # Without the vendored Data Docs assets the site loads them from CDNs, which the offline browser refuses: the
    # Data Docs test failed after minutes on an empty table ("expected count 1, actual 0"), naming no cause.
    node_modules = vendor_assets_dir()
    if problems := missing_assets(node_modules):
        pytest.fail(f"Data Docs vendor files missing from {node_modules}: {', '.join(problems)}; run `make setup` "
                    "(it installs requirements/npm/datadocs-assets into .tools/datadocs-assets)", pytrace=False)
    home = tmp_path_factory.mktemp("ui-platform")
    # Every port the platform may open, free ones: never the ports of a `make up` on this machine.
    names = [name for name in LocalSettings.model_fields if name.endswith("_port")]
    ports = dict(zip(names, free_ports(len(names)), strict=True))
    settings = local_settings(home, **ports)
    try:
        up(settings, echo=print, tie_to_this_process=True)  # nothing outlives a killed test run
        status = subprocess.run([TENFOLD, "status"], env=_env(settings), capture_output=True, text=True, timeout=120,
                                check=False)
        login = LOGIN.search(status.stdout)
        assert login, f"`tenfold status` printed no Airflow login:\n{status.stdout}\n{status.stderr}"
        # Healthy is not parsed: the Dags page lists what the DAG processor has parsed when the page loads.
        api = AirflowApi(login["url"], login["user"], login["password"])
        for dag_id in DAGS:
            api.wait_for_dag(dag_id, timeout_s=300)
        artifacts = home / "artifacts" / "ui"
        artifacts.mkdir(parents=True)
        print(f"browser test screenshots: {artifacts}")
        yield Platform(settings, login["url"].rstrip("/"), login["user"], login["password"], artifacts)
    finally:
        down(settings, echo=print)


def _allowed(url: str) -> bool:
    parts = urlsplit(url)
    return parts.scheme in ("file", "data", "blob") or (parts.hostname or "") in LOOPBACK


@pytest.fixture(scope="session")
def offline() -> Callable[[Any], list[str]]:
    """``offline(context)``: from now on the context refuses every request off this machine; returns what it refused."""

    def install(context: Any) -> list[str]:
        refused: list[str] = []

        def route(route: Any) -> None:
            if _allowed(route.request.url):
                route.continue_()
            else:
                refused.append(route.request.url)
                route.abort("internetdisconnected")

        context.route("**/*", route)
        return refused

    return install
