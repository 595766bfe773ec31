"""Without a browser the UI tests fail, saying how to install one; they never skip silently.

Runs the first UI test in a child pytest with ``TENFOLD_CHROMIUM`` naming a browser that does not exist: it
fails at the ``chromium`` fixture, before any platform starts, with the install hint.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).parent


def test_a_missing_browser_fails_the_ui_tests_with_the_way_to_install_it(tmp_path):
    env = {**os.environ, "TENFOLD_CHROMIUM": str(tmp_path / "no-chromium")}
    test = f"{HERE / 'test_airflow_ui.py'}::test_logs_in_with_the_generated_login_and_lists_the_dags_with_their_tags"
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", test], env=env, capture_output=True, text=True,
                          timeout=300, check=False, cwd=HERE.parent.parent)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out[-3000:]  # failed (an error in setup), not skipped (0) nor crashed
    assert "1 error" in out and "skipped" not in out, out[-3000:]
    assert "`make setup`" in out and "apt-get install chromium" in out and str(tmp_path / "no-chromium") in out
