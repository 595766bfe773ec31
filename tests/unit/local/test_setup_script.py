"""``make setup`` on a machine without uv: it ran ``python3.11 -m pip install uv``, which Debian's and Ubuntu's
system Python refuses (externally managed), so ``set -e`` ended setup with pip's error and none of the script's
own messages. uv now goes into a venv of its own under .tools/uv, and a Python that cannot make one is named."""

from __future__ import annotations

import fcntl
import json
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

from tenfold.config.settings import project_root


def _without_uv(tmp_path: Path) -> str:
    """PATH with every folder that holds a ``uv`` left out (the tools setup checks first stay reachable)."""
    keep = [d for d in os.environ["PATH"].split(os.pathsep) if d and not (Path(d) / "uv").exists()]
    assert all(shutil.which(tool, path=os.pathsep.join(keep)) for tool in ("java", "gcloud", "node", "dpkg-query")), \
        "this test needs setup's other prerequisites outside the folders that hold uv"
    return os.pathsep.join(keep)


def _tools_but(tmp_path: Path, *left_out: str) -> Path:
    """A folder linking every executable on PATH but ``left_out`` (a PATH for setup without those tools)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for folder in os.environ["PATH"].split(os.pathsep):
        if not folder or not Path(folder).is_dir():
            continue
        for tool in Path(folder).iterdir():
            link = bin_dir / tool.name
            if tool.name not in left_out and not link.exists() and os.access(tool, os.X_OK) and tool.is_file():
                link.symlink_to(tool.resolve())
    return bin_dir


def test_without_uv_a_python_that_cannot_make_a_venv_is_named_with_what_to_install(tmp_path: Path) -> None:
    (tmp_path / "scripts").mkdir()
    shutil.copy(project_root() / "scripts" / "setup.sh", tmp_path / "scripts" / "setup.sh")  # runs in tmp_path
    calls = tmp_path / "python-calls"
    python = tmp_path / "python3.11"  # a system Python 3.11 without venv or pip: every module run fails
    python.write_text(f"#!/bin/sh\n[ \"$1\" = -c ] && exit 0\necho \"$@\" >> {calls}\n"
                      "echo 'No module named ensurepip' >&2\nexit 1\n")
    python.chmod(0o755)
    proc = subprocess.run(["bash", str(tmp_path / "scripts" / "setup.sh")], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "PATH": _without_uv(tmp_path), "PYTHON": str(python)},
                          check=False)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "[setup] error:" in proc.stderr and "apt-get install python3.11-venv" in proc.stderr, proc.stderr
    assert "pipx install uv==0.13.8" in proc.stderr
    assert "-m pip install" not in calls.read_text(), "the system Python was asked to pip-install uv"
    assert not (tmp_path / ".venv").exists()


def test_without_npm_setup_stops_before_the_venv_naming_what_to_install(tmp_path: Path) -> None:
    """Debian's nodejs only suggests npm: setup synced .venv for minutes, then failed on `npm: command not found`
    and "is the npm registry reachable?". The tools it checks first are kept (links to everything on PATH but npm)."""
    bin_dir = _tools_but(tmp_path, "npm", "dpkg-query", "apt-get", "sudo")
    installs = _apt_shims(bin_dir, tmp_path)  # an apt that installs nothing: npm is still missing after it
    assert shutil.which("npm", path=str(bin_dir)) is None and shutil.which("node", path=str(bin_dir))
    (tmp_path / "scripts").mkdir()
    shutil.copy(project_root() / "scripts" / "setup.sh", tmp_path / "scripts" / "setup.sh")
    proc = subprocess.run(["bash", str(tmp_path / "scripts" / "setup.sh")], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "PATH": str(bin_dir)}, check=False)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "[setup] error:" in proc.stderr and "npm is required" in proc.stderr and "apt-get install npm" in proc.stderr, proc.stderr
    assert "npm" in installs.read_text().split(), "apt was not asked for npm"
    assert not (tmp_path / ".venv").exists()


def _setup_with_sdk(tmp_path: Path, sdk: Path) -> subprocess.CompletedProcess[str]:
    """setup.sh run (in ``tmp_path``) with the Cloud SDK ``sdk`` (its gcloud answers 0 to anything, as `--help` did)
    as the only gcloud on PATH."""
    bin_dir = _tools_but(tmp_path, "gcloud")
    (sdk / "bin").mkdir(parents=True)
    (sdk / "bin" / "gcloud").write_text("#!/bin/sh\nexit 0\n")
    (sdk / "bin" / "gcloud").chmod(0o755)
    (bin_dir / "gcloud").symlink_to(sdk / "bin" / "gcloud")
    (tmp_path / "scripts").mkdir()
    shutil.copy(project_root() / "scripts" / "setup.sh", tmp_path / "scripts" / "setup.sh")
    return subprocess.run(["bash", str(tmp_path / "scripts" / "setup.sh")], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "PATH": str(bin_dir)}, check=False)


def test_a_gcloud_without_the_pubsub_emulator_is_refused_before_the_venv(tmp_path: Path) -> None:
    """The check ran `gcloud beta emulators pubsub env-init --help`, which answers 0 without the emulator: setup went
    on for minutes, then `make demo` failed in `tenfold up` and `make test` errored in every Pub/Sub test."""
    sdk = tmp_path / "sdk"
    (sdk / "platform" / "bq").mkdir(parents=True)  # an SDK with other components, not the emulator
    proc = _setup_with_sdk(tmp_path, sdk)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "the Pub/Sub emulator is missing" in proc.stderr and str(sdk / "platform" / "pubsub-emulator") in proc.stderr
    assert not (tmp_path / ".venv").exists()


def test_a_gcloud_without_its_beta_commands_is_refused_before_the_venv(tmp_path: Path) -> None:
    """The emulator runs as `gcloud beta emulators pubsub start`: an SDK with the emulator but not the beta component
    passed setup, then `tenfold up` failed (gcloud asked to install beta, offline) with the reason in a service log."""
    sdk = tmp_path / "sdk"
    (sdk / "platform" / "pubsub-emulator").mkdir(parents=True)
    (sdk / ".install").mkdir()
    for component in ("core", "pubsub-emulator"):  # what the component manager records; no beta.manifest
        (sdk / ".install" / f"{component}.manifest").write_text("")
    proc = _setup_with_sdk(tmp_path, sdk)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "gcloud's beta commands are missing" in proc.stderr, proc.stderr
    assert "gcloud components install beta" in proc.stderr and str(sdk / ".install" / "beta.manifest") in proc.stderr
    assert not (tmp_path / ".venv").exists()


def test_without_java_setup_asks_apt_for_it_and_names_it_when_still_missing(tmp_path: Path) -> None:
    """Java is a system package like HAProxy: setup refused a machine without it instead of installing it. An apt that
    installs nothing stands in: setup asks it for Java 17, then stops before the venv naming what is missing."""
    bin_dir = _tools_but(tmp_path, "java", "dpkg-query", "apt-get", "sudo")
    installs = tmp_path / "apt-calls"
    (bin_dir / "dpkg-query").write_text("#!/bin/sh\nexit 1\n")  # every system package missing
    (bin_dir / "apt-get").write_text(f"#!/bin/sh\necho \"$@\" >> {installs}\n")
    (bin_dir / "sudo").write_text('#!/bin/sh\nexec "$@"\n')
    for shim in ("dpkg-query", "apt-get", "sudo"):
        (bin_dir / shim).chmod(0o755)
    assert shutil.which("java", path=str(bin_dir)) is None
    (tmp_path / "scripts").mkdir()
    shutil.copy(project_root() / "scripts" / "setup.sh", tmp_path / "scripts" / "setup.sh")
    proc = subprocess.run(["bash", str(tmp_path / "scripts" / "setup.sh")], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "PATH": str(bin_dir)}, check=False)
    assert proc.returncode == 1 and "Java 17+ is required by Spark (found: none" in proc.stderr, proc.stdout + proc.stderr
    assert "openjdk-17-jre-headless" in installs.read_text().split(), installs.read_text()
    assert not (tmp_path / ".venv").exists()


def test_make_down_and_clean_work_without_a_venv_and_status_says_to_set_up(tmp_path: Path) -> None:
    """A setup that failed part-way (the `tenfold` entry point comes last) or a deleted .venv: `make down` failed
    with Error 127, so `make clean`, which runs it first, never removed .tenfold/."""
    shutil.copy(project_root() / "Makefile", tmp_path / "Makefile")
    (tmp_path / ".tenfold" / "run").mkdir(parents=True)
    clean = subprocess.run(["make", "-s", "clean"], cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False)
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert "nothing to stop" in clean.stdout and not (tmp_path / ".tenfold").exists()
    status = subprocess.run(["make", "-s", "status"], cwd=tmp_path, capture_output=True, text=True, timeout=60,
                            check=False)
    assert status.returncode != 0 and "run make setup" in status.stderr, status.stdout + status.stderr


def _tree_with_setup(tmp_path: Path, *files: str) -> Path:
    """A checkout in ``tmp_path`` holding setup.sh and ``files`` (copied from this one)."""
    (tmp_path / "scripts").mkdir(parents=True)
    for name in ("scripts/setup.sh", *files):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(project_root() / name, tmp_path / name)
    return tmp_path / "scripts" / "setup.sh"


UBUNTU_LISTS = " 500 http://archive.ubuntu.com/ubuntu noble/main amd64 Packages"


def _apt_shims(bin_dir: Path, tmp_path: Path, chromium_candidate: str = "150.0.7871.100-1~deb12u1") -> Path:
    """dpkg-query saying every system package is missing, an apt-get that records its calls, and an apt-cache whose
    package lists offer chromium at ``chromium_candidate`` (``(none)``: Ubuntu's, which have no chromium deb)."""
    installs = tmp_path / "apt-calls"
    policy = f"chromium:\n  Installed: (none)\n  Candidate: {chromium_candidate}\n  Version table:\n"
    shims = {
        "dpkg-query": "#!/bin/sh\nexit 1\n",
        "apt-get": f"#!/bin/sh\necho \"$@\" >> {installs}\n",
        "sudo": '#!/bin/sh\nexec "$@"\n',
        "apt-cache": (f"#!/bin/sh\n[ \"$1 $2\" = 'policy chromium' ] && printf '%s' '{policy}' && exit 0\n"
                      f"[ \"$*\" = policy ] && printf 'Package files:\\n 100 /var/lib/dpkg/status\\n{UBUNTU_LISTS}\\n'\n"),
    }
    for shim, text in shims.items():
        (bin_dir / shim).unlink(missing_ok=True)  # a link to the real tool (_tools_but): never written through
        (bin_dir / shim).write_text(text)
        (bin_dir / shim).chmod(0o755)
    return installs


def _without_debian_chromium(setup: Path) -> None:
    """The copy ``setup`` looking for Debian's Chromium where there is none (this machine may have one)."""
    setup.write_text(setup.read_text().replace("/usr/lib/chromium/chromium", "/nonexistent/chromium"))


def test_a_java_home_older_than_17_is_refused_though_path_has_a_newer_java(tmp_path: Path) -> None:
    """Spark runs $JAVA_HOME/bin/java where JAVA_HOME is set; setup checked the java on PATH, passed, and the first
    features job failed with a class-version error deep in a DAG run."""
    bin_dir = _tools_but(tmp_path, "dpkg-query", "apt-get", "sudo")
    installs = _apt_shims(bin_dir, tmp_path)
    old = tmp_path / "jdk11"
    (old / "bin").mkdir(parents=True)
    (old / "bin" / "java").write_text("#!/bin/sh\necho 'openjdk version \"11.0.2\" 2019-01-15' >&2\n")
    (old / "bin" / "java").chmod(0o755)
    assert shutil.which("java", path=str(bin_dir)), "this test needs a java on PATH"
    setup = _tree_with_setup(tmp_path / "tree")
    proc = subprocess.run(["bash", str(setup)], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PATH": str(bin_dir), "JAVA_HOME": str(old)}, check=False)
    assert proc.returncode == 1 and "Java 17+ is required by Spark (found: 11" in proc.stderr, proc.stdout + proc.stderr
    assert "JAVA_HOME" in proc.stderr and not installs.exists()


def _refused_for_the_torch_wheel(setup: Path, bin_dir: Path, tmp_path: Path) -> None:
    """Runs ``setup`` with PIP_FIND_LINKS naming a folder without the torch wheel: it stops, naming the wheel."""
    empty = tmp_path / "wheels"
    empty.mkdir()
    proc = subprocess.run(["bash", str(setup)], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PATH": str(bin_dir), "PIP_FIND_LINKS": str(empty)}, check=False)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert f"set PIP_FIND_LINKS to a folder holding torch-2.13.0+cpu-cp311-cp311-*_{platform.machine()}.whl" in \
        proc.stderr, proc.stderr


def test_without_the_torch_wheel_setup_stops_before_installing_anything(tmp_path: Path) -> None:
    """The lock pins torch's CPU build, which no index uv is given holds: setup installed the system packages, uv and
    .venv, then failed advising "the PyTorch CPU index", which it never asks."""
    bin_dir = _tools_but(tmp_path, "dpkg-query", "apt-get", "sudo")
    installs = _apt_shims(bin_dir, tmp_path)
    setup = _tree_with_setup(tmp_path / "tree", "requirements/lock.txt", "pyproject.toml")
    _refused_for_the_torch_wheel(setup, bin_dir, tmp_path)
    assert not installs.exists() and not (tmp_path / "tree" / ".venv").exists()


def test_a_venv_whose_python_is_gone_is_made_afresh(tmp_path: Path) -> None:
    """The Python a .venv was made from removed (an upgrade): uv refuses to make a venv over an existing one without
    --clear, so setup stopped with uv's error on every run until .venv was deleted by hand. A uv that records its
    calls stands in (nothing is installed)."""
    bin_dir = _tools_but(tmp_path, "uv")
    calls = tmp_path / "uv-calls"
    (bin_dir / "uv").write_text(f"#!/bin/sh\necho \"$@\" >> {calls}\nexit 0\n")
    (bin_dir / "uv").chmod(0o755)
    tree = tmp_path / "tree"
    setup = _tree_with_setup(tree, "requirements/lock.txt", "pyproject.toml")
    (tree / ".venv" / "bin").mkdir(parents=True)
    (tree / ".venv" / "pyvenv.cfg").write_text("home = /usr/lib/python-gone\n")
    (tree / ".venv" / "bin" / "python").symlink_to(tmp_path / "python-gone")  # a dangling link
    subprocess.run(["bash", str(setup)], capture_output=True, text=True, timeout=120,
                   env={**os.environ, "PATH": str(bin_dir)}, check=False)  # ends later: nothing was installed
    venv_calls = [line for line in calls.read_text().splitlines() if line.startswith("venv")]
    assert venv_calls and "--clear" in venv_calls[0].split() and venv_calls[0].endswith(".venv"), venv_calls


def test_relock_without_a_venv_says_to_set_up(tmp_path: Path) -> None:
    (tmp_path / "scripts").mkdir()
    shutil.copy(project_root() / "scripts" / "relock.sh", tmp_path / "scripts" / "relock.sh")
    proc = subprocess.run(["bash", str(tmp_path / "scripts" / "relock.sh")], capture_output=True, text=True,
                          timeout=60, check=False)
    assert proc.returncode == 1 and "run make setup first" in proc.stderr, proc.stderr


def test_a_python_other_than_3_11_is_refused_before_anything(tmp_path: Path) -> None:
    """PYTHON=python3 on a machine whose python3 is 3.12: setup made .venv with it, found the 3.11 torch wheel by a
    pattern that ignored the Python, and failed in the sync "is the package index reachable?"."""
    bin_dir = _tools_but(tmp_path, "dpkg-query", "apt-get", "sudo")
    installs = _apt_shims(bin_dir, tmp_path)
    python = tmp_path / "python3.12"
    python.write_text("#!/bin/sh\n[ \"$1\" = --version ] && echo 'Python 3.12.3' && exit 0\n"
                      "[ \"$1\" = -c ] && exit 1\nexit 0\n")  # runs, and says it is not 3.11
    python.chmod(0o755)
    setup = _tree_with_setup(tmp_path / "tree", "requirements/lock.txt", "pyproject.toml")
    proc = subprocess.run(["bash", str(setup)], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PATH": str(bin_dir), "PYTHON": str(python)}, check=False)
    assert proc.returncode == 1 and "Python 3.11 is required" in proc.stderr and "Python 3.12.3" in proc.stderr, \
        proc.stdout + proc.stderr
    assert not installs.exists() and not (tmp_path / "tree" / ".venv").exists()


def _recording_uv(bin_dir: Path, tmp_path: Path) -> Path:
    calls = tmp_path / "uv-calls"
    (bin_dir / "uv").write_text(f"#!/bin/sh\necho \"$@\" >> {calls}\nexit 0\n")
    (bin_dir / "uv").chmod(0o755)
    return calls


def test_a_venv_of_another_python_is_made_afresh(tmp_path: Path) -> None:
    """A .venv made by an IDE or `python3 -m venv` with 3.12 runs, so it was kept on every run."""
    bin_dir = _tools_but(tmp_path, "uv")
    calls = _recording_uv(bin_dir, tmp_path)
    tree = tmp_path / "tree"
    setup = _tree_with_setup(tree, "requirements/lock.txt", "pyproject.toml")
    (tree / ".venv" / "bin").mkdir(parents=True)
    (tree / ".venv" / "bin" / "python").write_text("#!/bin/sh\ncase \"$*\" in *version_info*) exit 1;; esac\nexit 0\n")
    (tree / ".venv" / "bin" / "python").chmod(0o755)
    subprocess.run(["bash", str(setup)], capture_output=True, text=True, timeout=120,
                   env={**os.environ, "PATH": str(bin_dir)}, check=False)  # ends later: nothing was installed
    venv_calls = [line for line in calls.read_text().splitlines() if line.startswith("venv")]
    assert venv_calls and "--clear" in venv_calls[0].split() and venv_calls[0].endswith(".venv"), venv_calls


def _usable_venvs(tree: Path) -> None:
    """.venv and .tools/checkov in ``tree``, runnable, their stamps current (what a finished setup leaves)."""
    python = Path(shutil.which("python3.11") or "")
    assert python.is_file(), "this test needs python3.11 on PATH"
    for venv in (".venv", ".tools/checkov"):
        (tree / venv / "bin").mkdir(parents=True)
        (tree / venv / "bin" / "python").symlink_to(python)
    for folder in ("src", "dags", "spark_jobs"):
        (tree / folder).mkdir()
    digest = subprocess.run(["bash", "-c", '(cat requirements/lock.txt pyproject.toml; echo "bytecode 1") | sha256sum'],
                            cwd=tree, capture_output=True, text=True, check=True).stdout.split()[0]
    (tree / ".venv" / ".tenfold-lock.sha").write_text(digest + "\n")
    with (tree / "requirements" / "checkov.txt").open() as requirements:
        stamp = subprocess.run(["sha256sum"], stdin=requirements, capture_output=True, text=True, check=True).stdout
    (tree / ".tools" / "checkov" / ".stamp").write_text(stamp)


def test_a_checkov_venv_made_in_another_folder_is_made_afresh_though_its_stamp_matches(tmp_path: Path) -> None:
    """The checkov venv was checked only when requirements/checkov.txt changed: in a renamed checkout its scripts'
    #! still named the old folder ("bad interpreter"), and tests/infra/test_policy.py failed on every run."""
    bin_dir = _tools_but(tmp_path, "uv")
    calls = _recording_uv(bin_dir, tmp_path)
    tree = tmp_path / "tree"
    setup = _tree_with_setup(tree, "requirements/lock.txt", "pyproject.toml", "requirements/checkov.txt")
    _usable_venvs(tree)
    (tree / ".tools" / "checkov" / "bin" / "checkov").write_text("#!/old/checkout/.tools/checkov/bin/python\n")
    subprocess.run(["bash", str(setup)], capture_output=True, text=True, timeout=120,
                   env={**os.environ, "PATH": str(bin_dir)}, check=False)  # ends later: the npm tools
    lines = calls.read_text().splitlines()
    assert not any(line.endswith(" .venv") for line in lines if line.startswith("venv")), lines
    assert any(line.startswith("venv") and "--clear" in line.split() and line.endswith(".tools/checkov")
               for line in lines), lines


def test_a_checkov_venv_reached_through_a_symlinked_checkout_is_kept(tmp_path: Path) -> None:
    """uv writes the real path into the scripts' #!, and setup compared it with $PWD, the path through the link: every
    run made the venv afresh, from the package index (an offline re-run failed)."""
    bin_dir = _tools_but(tmp_path, "uv")
    calls = _recording_uv(bin_dir, tmp_path)
    real = tmp_path / "real"
    setup = _tree_with_setup(real, "requirements/lock.txt", "pyproject.toml", "requirements/checkov.txt")
    _usable_venvs(real)
    (real / ".tools" / "checkov" / "bin" / "checkov").write_text(f"#!{real}/.tools/checkov/bin/python\n")
    (tmp_path / "link").symlink_to(real)
    subprocess.run(["bash", str(tmp_path / "link" / setup.relative_to(real))], capture_output=True, text=True,
                   timeout=120, env={**os.environ, "PATH": str(bin_dir)}, check=False)  # ends later: the npm tools
    lines = calls.read_text().splitlines() if calls.exists() else []
    assert not any(line.startswith("venv") for line in lines), lines


def test_a_user_whose_sudo_asks_for_a_password_is_told_what_to_install_as_root(tmp_path: Path) -> None:
    """sudo that needs a password (no terminal in CI) ended setup with sudo's own error, naming nothing. (At a
    terminal it may ask; here stdin is not one.)"""
    bin_dir = _tools_but(tmp_path, "dpkg-query", "apt-get", "sudo", "id", "node",  # no node: setup ends after apt
                         "chromium", "chromium-browser")
    installs = _apt_shims(bin_dir, tmp_path)
    (bin_dir / "sudo").write_text("#!/bin/sh\necho 'sudo: a terminal is required to read the password' >&2\nexit 1\n")
    (bin_dir / "id").write_text("#!/bin/sh\necho 1000\n")  # not root
    (bin_dir / "id").chmod(0o755)
    setup = _tree_with_setup(tmp_path / "tree", "requirements/lock.txt", "pyproject.toml")
    _without_debian_chromium(setup)
    env = {k: v for k, v in os.environ.items() if k != "TENFOLD_CHROMIUM"}
    proc = subprocess.run(["bash", str(setup)], capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
                          env={**env, "PATH": str(bin_dir)}, check=False)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "[setup] error:" in proc.stderr and "system packages missing: haproxy curl chromium" in proc.stderr
    assert "as root" in proc.stderr and "where sudo runs apt-get without one" in proc.stderr, proc.stderr
    assert not installs.exists()
    # A sudoers rule that allows apt-get alone without a password (CI images): setup installs through it.
    (bin_dir / "sudo").write_text('#!/bin/sh\n[ "$1" = -n ] && shift\n[ "$1" = apt-get ] && exec "$@"\nexit 1\n')
    through = subprocess.run(["bash", str(setup)], capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
                             env={**env, "PATH": str(bin_dir)}, check=False)
    assert "install -y -qq haproxy curl chromium nodejs" in installs.read_text(), "apt-get was not run through sudo"
    assert "Node.js 18+ is required" in through.stderr, through.stderr  # what the apt shim did not install


def _install_args(installs: Path) -> list[str]:
    """The arguments of the apt-get install that the apt shim recorded ([] where apt-get install was not run)."""
    calls = installs.read_text().splitlines() if installs.exists() else []
    return next((line.split() for line in calls if line.startswith("install")), [])


def test_without_a_chromium_deb_setup_stops_before_apt_naming_chromium(tmp_path: Path) -> None:
    """Ubuntu has no chromium deb: setup asked apt for it with everything else missing, and the one `apt-get install`
    failed as a whole ("no installation candidate": HAProxy, Java and Node not installed either), naming nothing,
    on every run."""
    bin_dir = _tools_but(tmp_path, "dpkg-query", "apt-get", "sudo", "apt-cache", "chromium", "chromium-browser", "uv")
    installs = _apt_shims(bin_dir, tmp_path, chromium_candidate="(none)")
    _recording_uv(bin_dir, tmp_path)
    setup = _tree_with_setup(tmp_path / "tree")
    _without_debian_chromium(setup)
    env = {k: v for k, v in os.environ.items() if k != "TENFOLD_CHROMIUM"}
    proc = subprocess.run(["bash", str(setup)], capture_output=True, text=True, timeout=120,
                          env={**env, "PATH": str(bin_dir)}, check=False)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "[setup] error:" in proc.stderr and "Chromium is required by the browser tests" in proc.stderr, proc.stderr
    assert "TENFOLD_CHROMIUM=/path/to/chromium" in proc.stderr and "apt-get install chromium" in proc.stderr
    assert not installs.exists(), "apt-get was run"


def test_a_chromium_found_as_the_ui_tests_find_it_is_not_asked_of_apt(tmp_path: Path) -> None:
    """Only Debian's chromium deb counted (dpkg-query): a `chromium-browser` on PATH (Ubuntu) or TENFOLD_CHROMIUM,
    which tests/ui uses, was asked of apt on every run. Debian's package is asked for where apt offers it."""
    bin_dir = _tools_but(tmp_path, "dpkg-query", "apt-get", "sudo", "apt-cache", "chromium", "chromium-browser", "uv")
    installs = _apt_shims(bin_dir, tmp_path)  # apt offers chromium
    _recording_uv(bin_dir, tmp_path)
    setup = _tree_with_setup(tmp_path / "tree")
    _without_debian_chromium(setup)
    env = {k: v for k, v in os.environ.items() if k != "TENFOLD_CHROMIUM"}
    browser = tmp_path / "browser"
    browser.write_text("#!/bin/sh\nexit 0\n")
    browser.chmod(0o755)
    (bin_dir / "chromium-browser").symlink_to(browser)
    subprocess.run(["bash", str(setup)], capture_output=True, text=True, timeout=120,
                   env={**env, "PATH": str(bin_dir)}, check=False)  # ends later: nothing was installed
    args = _install_args(installs)
    assert "haproxy" in args and "chromium" not in args, args
    (bin_dir / "chromium-browser").unlink()
    installs.unlink()
    subprocess.run(["bash", str(setup)], capture_output=True, text=True, timeout=120,
                   env={**env, "PATH": str(bin_dir), "TENFOLD_CHROMIUM": str(browser)}, check=False)
    args = _install_args(installs)
    assert "haproxy" in args and "chromium" not in args, args
    installs.unlink()
    subprocess.run(["bash", str(setup)], capture_output=True, text=True, timeout=120,
                   env={**env, "PATH": str(bin_dir)}, check=False)
    assert "chromium" in _install_args(installs)


def test_without_uv_a_system_python_without_venv_gets_it_from_apt_with_the_rest(tmp_path: Path) -> None:
    """Debian 12 without uv: python3.11-venv was found missing only after apt had installed everything else, when
    `python3.11 -m venv .tools/uv` failed. It is asked of apt with the other system packages."""
    bin_dir = _tools_but(tmp_path, "dpkg-query", "apt-get", "sudo", "apt-cache", "uv")
    installs = _apt_shims(bin_dir, tmp_path)
    python = tmp_path / "python3.11"  # Debian's python3.11 without python3.11-venv: no ensurepip, so no venv
    python.write_text("#!/bin/sh\ncase \"$*\" in *ensurepip*|-m\\ venv*) echo 'No module named ensurepip' >&2; exit 1;; esac\n"
                      "[ \"$1\" = -c ] && exit 0\nexit 1\n")
    python.chmod(0o755)
    setup = _tree_with_setup(tmp_path / "tree")
    proc = subprocess.run(["bash", str(setup)], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PATH": str(bin_dir), "PYTHON": str(python)}, check=False)
    assert proc.returncode == 1, proc.stdout + proc.stderr  # the apt shim installed nothing
    assert "python3.11-venv" in _install_args(installs), installs.read_text()
    assert "apt-get install python3.11-venv" in proc.stderr, proc.stderr


def test_a_venv_to_be_made_afresh_is_checked_for_the_torch_wheel_though_its_stamp_matches(tmp_path: Path) -> None:
    """A moved checkout or a Python upgraded away: .venv is made afresh and synced, but its stamp still matched, so the
    torch wheel was not checked; setup installed the system packages, emptied .venv and failed in the sync."""
    bin_dir = _tools_but(tmp_path, "dpkg-query", "apt-get", "sudo", "apt-cache", "uv")
    installs = _apt_shims(bin_dir, tmp_path)
    calls = _recording_uv(bin_dir, tmp_path)
    tree = tmp_path / "tree"
    setup = _tree_with_setup(tree, "requirements/lock.txt", "pyproject.toml")
    (tree / ".venv" / "bin").mkdir(parents=True)
    (tree / ".venv" / "bin" / "python").symlink_to(tmp_path / "python-gone")  # upgraded away: a dangling link
    digest = subprocess.run(["bash", "-c", '(cat requirements/lock.txt pyproject.toml; echo "bytecode 1") | sha256sum'],
                            cwd=tree, capture_output=True, text=True, check=True).stdout.split()[0]
    (tree / ".venv" / ".tenfold-lock.sha").write_text(digest + "\n")
    _refused_for_the_torch_wheel(setup, bin_dir, tmp_path)
    assert not installs.exists() and not calls.exists()


def test_apt_gets_the_noninteractive_frontend_through_a_sudo_that_resets_the_environment(tmp_path: Path) -> None:
    """`DEBIAN_FRONTEND=noninteractive sudo apt-get ...` set the variable for sudo, whose env_reset drops it: debconf's
    questions (tzdata, keyboard-configuration) waited for an answer on a terminal whose output went to /dev/null, and
    `make setup` hung. A sudo that resets the environment as sudo does stands in; apt's output, thrown away, is shown
    when apt fails."""
    bin_dir = _tools_but(tmp_path, "dpkg-query", "apt-get", "sudo", "id", "node")  # no node: setup ends after apt
    _apt_shims(bin_dir, tmp_path)
    frontends = tmp_path / "frontends"
    (bin_dir / "apt-get").write_text(
        f"#!/bin/sh\n[ \"$1\" = install ] || exit 0\necho \"${{DEBIAN_FRONTEND:-unset}}\" >> {frontends}\n"
        f"[ -e {tmp_path / 'broken'} ] || exit 0\necho 'dpkg: error processing package tzdata (--configure)'\nexit 100\n")
    (bin_dir / "sudo").write_text('#!/bin/sh\n[ "$1" = -n ] && shift\nexec env -i PATH="$PATH" "$@"\n')
    (bin_dir / "id").write_text("#!/bin/sh\necho 1000\n")  # not root
    for shim in ("apt-get", "sudo", "id"):
        (bin_dir / shim).chmod(0o755)
    setup = _tree_with_setup(tmp_path / "tree", "requirements/lock.txt", "pyproject.toml")
    env = {**os.environ, "PATH": str(bin_dir), "TMPDIR": str(tmp_path)}
    proc = subprocess.run(["bash", str(setup)], capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
                          env=env, check=False)
    assert "Node.js 18+ is required" in proc.stderr, proc.stdout + proc.stderr  # past apt, which installed nothing
    assert frontends.read_text().split() == ["noninteractive"], "apt-get install ran without DEBIAN_FRONTEND"
    (tmp_path / "broken").touch()
    failed = subprocess.run(["bash", str(setup)], capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
                            env=env, check=False)
    assert failed.returncode == 1 and "apt-get could not install" in failed.stderr, failed.stdout + failed.stderr
    assert "dpkg: error processing package tzdata" in failed.stderr, failed.stderr


def test_a_second_setup_in_one_checkout_waits_for_the_first(tmp_path: Path) -> None:
    """`make demo` and `make test` started together each ran setup: two syncs into one .venv (or one remaking it with
    --clear under the other) left it half-installed. The second now waits on the first's lock (held here by this
    test, as flock(1) takes it); it goes on, to refuse its stand-in Python, only once the lock is let go."""
    assert shutil.which("flock"), "this test needs flock (util-linux)"
    setup = _tree_with_setup(tmp_path / "tree", "requirements/lock.txt", "pyproject.toml")
    lock = tmp_path / "tree" / ".tools" / "setup.lock"
    lock.parent.mkdir(parents=True)
    python = tmp_path / "python3.12"
    python.write_text("#!/bin/sh\n[ \"$1\" = --version ] && echo 'Python 3.12.3' && exit 0\nexit 1\n")
    python.chmod(0o755)
    with lock.open("w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        second = subprocess.Popen(["bash", str(setup)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                  env={**os.environ, "PYTHON": str(python)})
        assert second.stdout is not None and second.stderr is not None
        first_line = second.stdout.readline()  # "" at once where setup does not wait (it refuses the Python)
        if "another setup is running in this checkout" not in first_line:
            second.kill()
            raise AssertionError(f"setup did not wait for the lock: {first_line!r} {second.communicate()}")
        assert second.poll() is None, "setup went on while another held the lock"
        fcntl.flock(held, fcntl.LOCK_UN)
    _, err = second.communicate(timeout=60)
    assert second.returncode == 1 and "Python 3.11 is required" in err, err


def _npm_tools_installed(tmp_path: Path) -> tuple[Path, Path, Path, Path]:
    """A checkout in ``tmp_path/tree`` whose setup finds its venvs usable and every npm tool installed and stamped, as
    a finished setup leaves them, with an npm that records its calls: (bin_dir, npm_calls, tree, setup.sh)."""
    bin_dir = _tools_but(tmp_path, "uv", "npm")
    _recording_uv(bin_dir, tmp_path)
    npm_calls = tmp_path / "npm-calls"
    (bin_dir / "npm").write_text(f"#!/bin/sh\necho \"$@\" >> {npm_calls}\nexit 0\n")
    (bin_dir / "npm").chmod(0o755)
    tree = tmp_path / "tree"
    tools = [p.name for p in (project_root() / "requirements" / "npm").iterdir()]
    setup = _tree_with_setup(tree, "requirements/lock.txt", "pyproject.toml", "requirements/checkov.txt",
                             *(f"requirements/npm/{t}/{f}" for t in tools for f in ("package.json", "package-lock.json")))
    _usable_venvs(tree)
    for tool in tools:  # every npm tool installed and stamped, as a finished setup leaves them
        files = [tree / "requirements" / "npm" / tool / f for f in ("package.json", "package-lock.json")]
        digest = subprocess.run(["sha256sum"], input=b"".join(f.read_bytes() for f in files), capture_output=True,
                                check=True).stdout.split()[0].decode()
        (tree / ".tools" / tool / "node_modules").mkdir(parents=True)
        (tree / ".tools" / tool / ".stamp").write_text(digest + "\n")
    return bin_dir, npm_calls, tree, setup


def test_an_npm_tool_whose_packages_are_gone_is_installed_again_though_its_stamp_matches(tmp_path: Path) -> None:
    """.tools/datadocs-assets/node_modules removed under a current stamp: every setup returned at the stamp, while the
    Data Docs warned "run make setup" for their missing assets and loaded them from CDNs (broken offline)."""
    bin_dir, npm_calls, tree, setup = _npm_tools_installed(tmp_path)
    shutil.rmtree(tree / ".tools" / "datadocs-assets" / "node_modules")
    proc = subprocess.run(["bash", str(setup)], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PATH": str(bin_dir)}, check=False)  # ends at the torch line: no torch
    installs = npm_calls.read_text().splitlines() if npm_calls.exists() else []
    assert [line for line in installs if line.startswith("ci ")] == \
        ["ci --prefix .tools/datadocs-assets --no-audit --no-fund --loglevel=error"], (installs, proc.stderr)


def test_an_npm_install_cut_short_is_not_trusted_beside_its_old_stamp(tmp_path: Path) -> None:
    """An npm ci that failed (killed, a full disk) left a partial node_modules beside the stamp of the install it
    replaced, and the next setup trusted it. The stamp goes before the install now: a failed one leaves none."""
    bin_dir = _tools_but(tmp_path, "uv", "npm")
    _recording_uv(bin_dir, tmp_path)
    (bin_dir / "npm").write_text("#!/bin/sh\nexit 1\n")  # every install fails
    (bin_dir / "npm").chmod(0o755)
    tree = tmp_path / "tree"
    tools = [p.name for p in (project_root() / "requirements" / "npm").iterdir()]
    setup = _tree_with_setup(tree, "requirements/lock.txt", "pyproject.toml", "requirements/checkov.txt",
                             *(f"requirements/npm/{t}/{f}" for t in tools for f in ("package.json", "package-lock.json")))
    _usable_venvs(tree)
    stamp = tree / ".tools" / "cdk" / ".stamp"
    stamp.parent.mkdir(parents=True)
    stamp.write_text("an older install\n")
    (stamp.parent / "node_modules").mkdir()  # what that install left
    proc = subprocess.run(["bash", str(setup)], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PATH": str(bin_dir)}, check=False)
    assert proc.returncode == 1 and "npm could not install requirements/npm/cdk" in proc.stderr, proc.stderr
    assert not stamp.exists()


def test_data_docs_assets_with_a_package_gone_are_installed_again_though_their_stamp_matches(tmp_path: Path) -> None:
    """jquery deleted from .tools/datadocs-assets/node_modules beside a current stamp: setup trusted the stamp, while the
    Data Docs warned "jquery@3.7.1 (not installed) ... Run `make setup`". Setup now asks the Data Docs' own check
    (missing_assets, src/tenfold/quality/datadocs_assets.py loaded by its path: no import of Great Expectations) and
    installs again only where it finds something missing."""
    from tenfold.quality.datadocs import ASSETS, missing_assets

    bin_dir, npm_calls, tree, setup = _npm_tools_installed(tmp_path)
    checker = "src/tenfold/quality/datadocs_assets.py"  # what setup loads by its path to ask what is missing
    (tree / checker).parent.mkdir(parents=True)
    shutil.copy(project_root() / checker, tree / checker)
    python = tree / ".venv" / "bin" / "python"  # a real one: this test's
    python.unlink()
    python.write_text(f"#!/bin/sh\nexec {sys.executable} \"$@\"\n")
    python.chmod(0o755)
    node_modules = tree / ".tools" / "datadocs-assets" / "node_modules"
    for asset in ASSETS:  # each package at its version, holding the file the pages load
        (node_modules / asset.folder / asset.path).parent.mkdir(parents=True, exist_ok=True)
        (node_modules / asset.folder / "package.json").write_text(json.dumps({"version": asset.version}))
        (node_modules / asset.folder / asset.path).write_text("")
    assert missing_assets(node_modules) == []

    def datadocs_installs() -> list[str]:
        npm_calls.unlink(missing_ok=True)
        proc = subprocess.run(["bash", str(setup)], capture_output=True, text=True, timeout=300,
                              env={**os.environ, "PATH": str(bin_dir)}, check=False)
        calls = npm_calls.read_text().splitlines() if npm_calls.exists() else []
        assert "ready: .venv" in proc.stdout, proc.stdout + proc.stderr  # it went through to the end
        return [line for line in calls if line.startswith("ci --prefix .tools/datadocs-assets ")]

    assert datadocs_installs() == [], "complete assets under a current stamp were installed again"
    shutil.rmtree(node_modules / "jquery")
    assert datadocs_installs() == ["ci --prefix .tools/datadocs-assets --no-audit --no-fund --loglevel=error"]
