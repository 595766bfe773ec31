"""``make setup`` on a machine without uv: it ran ``python3.11 -m pip install uv``, which Debian's and Ubuntu's
system Python refuses (externally managed), so ``set -e`` ended setup with pip's error and none of the script's
own messages. uv now goes into a venv of its own under .tools/uv, and a Python that cannot make one is named."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from tenfold.config.settings import project_root


def _without_uv(tmp_path: Path) -> str:
    """PATH with every folder that holds a ``uv`` left out (the tools setup checks first stay reachable)."""
    keep = [d for d in os.environ["PATH"].split(os.pathsep) if d and not (Path(d) / "uv").exists()]
    assert all(shutil.which(tool, path=os.pathsep.join(keep)) for tool in ("java", "gcloud", "node", "dpkg-query")), \
        "this test needs setup's other prerequisites outside the folders that hold uv"
    return os.pathsep.join(keep)


def test_without_uv_a_python_that_cannot_make_a_venv_is_named_with_what_to_install(tmp_path: Path) -> None:
    (tmp_path / "scripts").mkdir()
    shutil.copy(project_root() / "scripts" / "setup.sh", tmp_path / "scripts" / "setup.sh")  # runs in tmp_path
    calls = tmp_path / "python-calls"
    python = tmp_path / "python3.11"  # a system Python without venv or pip: every module run fails
    python.write_text(f"#!/bin/sh\necho \"$@\" >> {calls}\necho 'No module named ensurepip' >&2\nexit 1\n")
    python.chmod(0o755)
    proc = subprocess.run(["bash", str(tmp_path / "scripts" / "setup.sh")], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "PATH": _without_uv(tmp_path), "PYTHON": str(python)},
                          check=False)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "[setup] error:" in proc.stderr and "apt-get install python3.11-venv" in proc.stderr, proc.stderr
    assert "pipx install uv==0.13.8" in proc.stderr
    assert "-m pip install" not in calls.read_text(), "the system Python was asked to pip-install uv"
    assert not (tmp_path / ".venv").exists()
