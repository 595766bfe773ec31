"""Every target the Makefile declares phony has a rule: `make test-fast` was declared and had none, so it ran
nothing and exited 0, which a script calling it reads as a pass."""

from __future__ import annotations

import re
import subprocess

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
    assert re.search(r'pytest -m "not slow and not integration"', dry.stdout), dry.stdout
