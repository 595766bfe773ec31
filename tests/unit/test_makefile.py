"""Every target the Makefile declares phony has a rule: `make test-fast` was declared and had none, so it ran
nothing and exited 0, which a script calling it reads as a pass."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

from tenfold.config.settings import project_root


def test_every_phony_target_has_a_recipe() -> None:
    makefile = (project_root() / "Makefile").read_text()
    (phony,) = re.findall(r"^\.PHONY:(.*)$", makefile, flags=re.MULTILINE)
    for target in phony.split():
        dry = subprocess.run(["make", "-n", target], cwd=project_root(), capture_output=True, text=True, timeout=60,
                             check=False)
        assert dry.returncode == 0, f"make -n {target}: {dry.stderr}"
        assert "Nothing to be done" not in dry.stdout + dry.stderr, f"`make {target}` runs nothing"


def test_every_integration_module_is_marked_so_the_fast_suite_leaves_it_out() -> None:
    """The lifecycle test (the whole platform, about 13 minutes) carried only a timeout marker: `make test-fast` ran it."""
    for module in sorted((project_root() / "tests" / "integration").glob("test_*.py")):
        marks = re.search(r"^pytestmark = (.*)$", module.read_text(), flags=re.MULTILINE)
        assert marks and "pytest.mark.integration" in marks[1], f"{module.name} is not marked integration"


def test_the_fast_suite_leaves_out_the_slow_and_integration_tests() -> None:
    dry = subprocess.run(["make", "-n", "test-fast"], cwd=project_root(), capture_output=True, text=True, timeout=60,
                         check=True)
    assert re.search(r'pytest -n 2 --dist loadfile -m "not slow and not integration"', dry.stdout), dry.stdout


def test_the_suite_runs_in_two_workers_given_whole_files_and_one_process_on_request() -> None:
    """Two workers (pytest-xdist), each given whole test files (a module's fixtures are set up once);
    TEST_WORKERS=0 runs it in one process."""
    def dry(*args: str) -> str:
        return subprocess.run(["make", "-n", *args], cwd=project_root(), capture_output=True, text=True, timeout=60,
                              check=True).stdout

    assert re.search(r"^\S*pytest -n 2 --dist loadfile$", dry("test"), flags=re.MULTILINE), dry("test")
    assert re.search(r"^\S*pytest -n 0 --dist loadfile$", dry("test", "TEST_WORKERS=0"), flags=re.MULTILINE)


def test_clean_removes_the_home_the_settings_name_and_never_the_folder_it_runs_in(tmp_path: Path) -> None:
    """`make clean` ran `tenfold down` on $TENFOLD_HOME, then `rm -rf .tenfold`: the default home's lake, registry and
    Airflow database were deleted, and $TENFOLD_HOME's were left. Run here from ``tmp_path`` with this checkout's venv;
    a home that is the folder it runs in is refused, not removed."""
    root = project_root()
    other = tmp_path / "other"
    (other / "lake").mkdir(parents=True)
    (tmp_path / ".tenfold").mkdir()
    (tmp_path / ".tenfold" / "marker").write_text("the default home, which this clean must leave")
    make = ["make", "-s", "-f", str(root / "Makefile"), f"VENV={root / '.venv'}", "clean"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("TENFOLD_")}
    clean = subprocess.run(make, cwd=tmp_path, env={**env, "TENFOLD_HOME": str(other)}, capture_output=True,
                           text=True, timeout=120, check=False)
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert not other.exists(), "the home TENFOLD_HOME names was left"
    assert (tmp_path / ".tenfold" / "marker").is_file(), "a home the settings do not name was removed"
    refused = subprocess.run(make, cwd=tmp_path, env={**env, "TENFOLD_HOME": str(tmp_path)}, capture_output=True,
                             text=True, timeout=120, check=False)
    assert refused.returncode != 0 and f"not removing the local home '{tmp_path}'" in refused.stderr, \
        refused.stdout + refused.stderr
    assert (tmp_path / ".tenfold" / "marker").is_file()
    # A folder holding the one it runs in (TENFOLD_HOME=.., a parent of the checkout) would delete the checkout too.
    child = tmp_path / "parent" / "child"
    child.mkdir(parents=True)
    parent = subprocess.run(make, cwd=child, env={**env, "TENFOLD_HOME": ".."}, capture_output=True, text=True,
                            timeout=120, check=False)
    assert parent.returncode != 0 and "not removing the local home" in parent.stderr, parent.stdout + parent.stderr
    assert child.is_dir(), "make clean removed the folder it ran in, with its parent"
