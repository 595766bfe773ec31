"""`cdktn synth` and `cdktf synth` both synthesize the app from infra/cdktf.json.

``make setup`` (scripts/setup.sh) installs both CLIs into .tools/cdk, and a Node 22 into .tools/node22 where the
system Node is older than cdktn-cli needs (>= 22.19), on every machine: a missing one fails the test (a broken
setup), it is not skipped.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tenfold.config import get_settings

ROOT = Path(__file__).resolve().parents[2]
TOOLS = ROOT / ".tools"
# prod is refused without a domain (infra.stacks.platform.require_https): the app synthesizes it with this one.
DOMAIN = {"TENFOLD_SERVING__LOAD_BALANCER__DOMAIN": "api.example.com"}


def _node_version(node: str) -> tuple[int, ...]:
    out = subprocess.run([node, "--version"], capture_output=True, text=True, check=False).stdout.strip()
    return tuple(int(p) for p in out.lstrip("v").split(".")[:3]) if out.startswith("v") else (0,)


def _cli(name: str) -> tuple[str, dict[str, str]] | None:
    exe = TOOLS / "cdk" / "node_modules" / ".bin" / name
    path = str(exe) if exe.exists() else shutil.which(name)
    if path is None:
        return None
    env = {**os.environ, "CHECKPOINT_DISABLE": "1", "JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION": "20"}
    if name == "cdktn" and _node_version(shutil.which("node") or "node") < (22, 19):
        node22 = TOOLS / "node22" / "node_modules" / ".bin"
        if not (node22 / "node").exists():
            pytest.fail("cdktn-cli needs Node >= 22.19 and .tools/node22 has none: run `make setup` (it installs "
                        "Node 22 there when the system Node is older)")
        env["PATH"] = f"{node22}:{env['PATH']}"
    return path, env


@pytest.mark.slow
@pytest.mark.parametrize("cli", ["cdktn", "cdktf"])
def test_cli_synthesizes_every_stack(cli: str, tmp_path: Path) -> None:
    found = _cli(cli)
    if found is None:
        pytest.fail(f"the {cli} CLI is not installed in .tools/cdk: run `make setup` (it installs {cli}-cli there)")
    exe, env = found
    proc = subprocess.run([exe, "synth", "--output", str(tmp_path)], cwd=ROOT / "infra", env={**env, **DOMAIN},
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    expected = {n for env_name in ("dev", "prod") for n in (get_settings(env_name).infra.data_stack,
                                                            get_settings(env_name).infra.platform_stack)}
    assert {p.name for p in (tmp_path / "stacks").iterdir()} == expected
    for name in expected:
        body = json.loads((tmp_path / "stacks" / name / "cdk.tf.json").read_text())
        assert body["terraform"]["backend"]["gcs"]["bucket"].endswith("-tfstate")


def test_the_path_docs_deploy_gives_finds_both_clis_and_a_node_cdktn_runs_on() -> None:
    """The README's `cdktn deploy` was "command not found" after `make setup` (the CLIs live in .tools/cdk), and the
    deploy guide had users npm-install unpinned CLIs again. Its PATH line, as written, finds what setup installed."""
    import re

    guide = (ROOT / "docs" / "deploy.md").read_text()
    (line,) = re.findall(r'^\s*export PATH="(\$PWD/\.tools/[^"]+)"$', guide, flags=re.MULTILINE)
    path = line.replace("$PWD", str(ROOT)).replace(":$PATH", ":" + os.environ.get("PATH", ""))
    for cli in ("cdktn", "cdktf"):
        found = shutil.which(cli, path=path)
        assert found is not None and found.startswith(str(TOOLS)), f"{cli}: {found}"
    assert _node_version(shutil.which("node", path=path) or "node") >= (22, 19)


def test_synth_refuses_a_bad_setting_in_one_line_naming_its_variable(tmp_path: Path) -> None:
    """`make synth` and `cdktn synth` run `python -m infra.main`: a TENFOLD_* value that does not parse ended it in
    pydantic's traceback. It ends as the tenfold commands do: one line naming the variable, exit code 2, and no stack
    written (the settings are refused before synthesis, so this takes no provider-sized synth)."""
    import sys

    env = {**os.environ, "CDKTF_OUTDIR": str(tmp_path), "JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION": "20",
           "TENFOLD_SERVING__LOAD_BALANCER__DOMAIN": "https://api.example.com"}
    proc = subprocess.run([sys.executable, "-m", "infra.main"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300, check=False)
    assert proc.returncode == 2, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "ValidationError" not in proc.stderr, proc.stderr[-3000:]
    (line,) = [ln for ln in proc.stderr.splitlines() if "TENFOLD_SERVING__LOAD_BALANCER__DOMAIN" in ln]
    assert line.startswith("error: invalid settings:") and "https://api.example.com" in line
    assert not list(tmp_path.rglob("cdk.tf.json")), "nothing is synthesized from refused settings"


def test_synth_without_a_domain_leaves_prod_out_saying_what_to_set(tmp_path: Path) -> None:
    """prod without serving.load_balancer.domain was synthesized with a warning, its load balancer on plain HTTP, and
    could be deployed so. `make synth` and `cdktn synth` now leave prod's stacks out, with one line naming the
    variable to set; dev (test traffic) is still synthesized, on plain HTTP with its warning."""
    import json
    import sys

    env = {k: v for k, v in os.environ.items() if k not in DOMAIN}
    env.update({"CDKTF_OUTDIR": str(tmp_path), "JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION": "20"})
    proc = subprocess.run([sys.executable, "-m", "infra.main"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    (line,) = [ln for ln in proc.stderr.splitlines() if "TENFOLD_SERVING__LOAD_BALANCER__DOMAIN" in ln]
    assert line.startswith("warning: prod: serving.load_balancer.domain is not set"), line
    assert line.endswith("prod's stacks were not synthesized"), line
    stacks = set(json.loads((tmp_path / "manifest.json").read_text())["stacks"])
    assert stacks and all("dev" in name for name in stacks) and not any("prod" in name for name in stacks), stacks


def test_a_relative_output_folder_the_clis_pass_is_written_in_infra_where_they_read_it() -> None:
    """The CLIs run cdktf.json's app from infra/ with CDKTF_OUTDIR=cdktf.out and read infra/cdktf.out/manifest.json;
    the app (`cd ..`) wrote <root>/cdktf.out: `cdktn deploy` found no manifest on a fresh clone, and after a
    `make synth` deployed that older synth. The app is run here as the CLIs run it, with a relative folder."""
    import sys
    import uuid

    name = f"cdktf.out-test-{uuid.uuid4().hex[:8]}"
    env = {**os.environ, "CDKTF_OUTDIR": name, "JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION": "20", **DOMAIN}
    try:
        proc = subprocess.run([sys.executable, "-m", "infra.main"], cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=300, check=False)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        assert (ROOT / "infra" / name / "manifest.json").is_file()
        assert not (ROOT / name).exists(), "written in the repository root, where no CLI reads it"
    finally:
        shutil.rmtree(ROOT / "infra" / name, ignore_errors=True)
        shutil.rmtree(ROOT / name, ignore_errors=True)


@pytest.mark.parametrize("where", ["app", "synth"])
def test_synth_to_a_folder_that_cannot_be_written_ends_in_one_line_naming_it(where: str, tmp_path: Path) -> None:
    """An output folder that cannot be written (a full disk, a read-only one, or as here a path through a regular
    file) ended `make synth` in Node's stack and a Python traceback, 39 lines, from jsii's RuntimeError. It ends in
    one line naming the folder and Node's cause, with the exit code of the other refusals: whether App() cannot
    create the folder ("ENOTDIR: ...") or synth() cannot write a stack into it ("Error: ENOTDIR: ...")."""
    import sys

    afile = tmp_path / "afile"
    afile.write_text("not a folder\n")
    if where == "app":
        outdir = afile / "out"
    else:
        outdir = tmp_path / "out"
        outdir.mkdir()
        (outdir / "stacks").write_text("not a folder\n")  # where synth() writes each stack's folder
    env = {**os.environ, "CDKTF_OUTDIR": str(outdir), "JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION": "20", **DOMAIN}
    proc = subprocess.run([sys.executable, "-m", "infra.main"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300, check=False)
    assert proc.returncode == 2, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "JavaScriptError" not in proc.stderr, proc.stderr[-3000:]
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith(f"error: cannot write the synthesized stacks to {outdir}: ENOTDIR: not a directory"), line
    assert afile.read_text() == "not a folder\n"


def test_a_runtime_error_that_is_not_a_write_error_keeps_its_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only Node's errno codes of a folder that cannot be written are refused in one line: any other RuntimeError
    is a fault of the app, and propagates whole."""
    import infra.main

    def fault(**_: object) -> None:
        raise RuntimeError("TypeError: Cannot read properties of undefined (reading 'node')")

    monkeypatch.setattr(infra.main, "build_app", fault)
    with pytest.raises(RuntimeError, match="Cannot read properties"):
        infra.main.main()
