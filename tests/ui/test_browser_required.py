"""Without a browser the UI tests fail, saying how to install one; they never skip silently.

Runs the first UI test in a child pytest with ``TENFOLD_CHROMIUM`` naming a browser that does not exist, or a
folder (executable as far as ``os.access`` says, but no browser): it fails at the ``chromium`` fixture, before any
platform starts, with the install hint. Without the Data Docs vendor files the ``platform`` fixture fails the same
way, before it brings anything up.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent


@pytest.mark.parametrize("named", ["a missing file", "a folder"])
def test_a_missing_browser_fails_the_ui_tests_with_the_way_to_install_it(tmp_path, named):
    browser = tmp_path / "no-chromium" if named == "a missing file" else tmp_path
    env = {**os.environ, "TENFOLD_CHROMIUM": str(browser)}
    test = f"{HERE / 'test_airflow_ui.py'}::test_logs_in_with_the_generated_login_and_lists_the_dags_with_their_tags"
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", test], env=env, capture_output=True, text=True,
                          timeout=300, check=False, cwd=HERE.parent.parent)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out[-3000:]  # failed (an error in setup), not skipped (0) nor crashed
    assert "1 error" in out and "skipped" not in out, out[-3000:]
    assert "`make setup`" in out and "apt-get install chromium" in out and str(browser) in out, out[-3000:]
    # Before any platform starts: the platform fixture prints where the screenshots go once it is up, and the
    # failure report would show that line (and whatever bringing it up printed) among the setup's captured output.
    assert "browser test screenshots" not in out and "Captured stdout setup" not in out, out[-3000:]


def test_missing_data_docs_assets_fail_the_ui_tests_before_the_platform_starts(tmp_path):
    """Without the vendored Data Docs assets the Data Docs test failed after minutes on "expected count 1, actual 0"
    (the site loads them from CDNs, which the offline browser refuses), naming no cause. A child pytest with the
    Data Docs' check saying jquery is missing and ``up`` only recording a call asks for the ``platform`` fixture alone
    (the UI fixtures loaded as a plugin): it fails at once, naming what is missing and ``make setup``."""
    started = tmp_path / "up-called"
    (tmp_path / "no_assets.py").write_text(
        "import tenfold.local\nimport tenfold.quality.datadocs as datadocs\n"
        "datadocs.missing_assets = lambda node_modules: ['jquery@3.7.1 (not installed)']\n"
        f"tenfold.local.up = lambda *a, **k: open({str(started)!r}, 'w').close()\n"
        "tenfold.local.down = lambda *a, **k: None\n")
    (tmp_path / "test_platform.py").write_text("def test_the_platform(platform):\n    pass\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(HERE)])}
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no_assets", "-p", "conftest",
                           str(tmp_path / "test_platform.py")], env=env, capture_output=True, text=True, timeout=300,
                          check=False, cwd=HERE.parent.parent)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1 and "1 error" in out, out[-3000:]
    assert "Data Docs vendor files missing" in out and "jquery@3.7.1 (not installed)" in out, out[-3000:]
    assert "`make setup`" in out and not started.exists(), out[-3000:]
