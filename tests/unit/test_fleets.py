"""The serving VMs' startup script, run for real: bash, curl, base64 against a local stand-in for the
metadata server and Secret Manager's REST API (the real ones exist only on a Google Cloud VM).

The stand-in answers as Google documents: the metadata server's token only with ``Metadata-Flavor:
Google``, the secret's ``versions/latest:access`` only with that token, 404 while the secret has no
version, the payload base64-encoded in pretty-printed JSON. ``docker`` and ``docker-credential-gcr``
are recording stubs on ``PATH``.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import stat
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tenfold import fleets
from tenfold.config import build_settings, get_settings
from tenfold.config.settings import project_root
from tenfold.serving.auth import TOKEN_FILE

VM_IP = "10.128.0.7"
ACCESS_TOKEN = "ya29.stand-in-access-token"
ENVS = ("dev", "prod")



@pytest.fixture(autouse=True)
def _curl() -> None:
    """The startup script fetches its token and secrets with curl, as the VMs do: `make setup` installs it, so a
    missing one fails these tests with what to do rather than skipping them all."""
    if shutil.which("curl") is None:
        pytest.fail("curl is not installed: run `make setup` (it installs curl with apt-get)", pytrace=False)


@dataclass
class FakeGoogle:
    """The metadata server and Secret Manager, as far as the startup script uses them."""

    project: str
    secret: str
    versions: list[bytes] = field(default_factory=list)
    sa_may_read: bool = True
    model_version: str | None = None  # the template's tenfold-model-version metadata (None: absent, 404)
    requests: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    base: str = ""

    def answer(self, path: str, headers: dict[str, str]) -> tuple[int, Any]:
        self.requests.append((path, headers))
        if path == "/ip":
            return (200, VM_IP) if headers.get("metadata-flavor") == "Google" else (403, {"error": "Missing header"})
        if path == "/model-version":
            if headers.get("metadata-flavor") != "Google":
                return 403, {"error": "Missing header"}
            return (200, self.model_version) if self.model_version else (404, "")
        if path == "/token":
            if headers.get("metadata-flavor") != "Google":
                return 403, {"error": "Missing Metadata-Flavor:Google header"}
            return 200, {"access_token": ACCESS_TOKEN, "expires_in": 3599, "token_type": "Bearer"}
        name = f"projects/{self.project}/secrets/{self.secret}"
        if path != f"/v1/{name}/versions/latest:access":
            return 404, {"error": {"code": 404, "message": f"unknown path {path}", "status": "NOT_FOUND"}}
        if headers.get("authorization") != f"Bearer {ACCESS_TOKEN}":
            return 401, {"error": {"code": 401, "message": "Request had invalid authentication credentials.",
                                   "status": "UNAUTHENTICATED"}}
        if not self.sa_may_read:
            return 403, {"error": {"code": 403, "message": f"Permission 'secretmanager.versions.access' denied for "
                                                           f"resource '{name}/versions/latest'", "status": "PERMISSION_DENIED"}}
        if not self.versions:
            return 404, {"error": {"code": 404, "message": f"Secret [{name}] not found or has no versions.",
                                   "status": "NOT_FOUND"}}
        return 200, {"name": f"{name}/versions/{len(self.versions)}",
                     "payload": {"data": base64.b64encode(self.versions[-1]).decode(), "dataCrc32c": "123"}}


@pytest.fixture
def google() -> Iterator[FakeGoogle]:
    s = get_settings("dev")
    fake = FakeGoogle(project=s.project_id, secret=s.serving.token_secret)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            status, body = fake.answer(self.path, {k.lower(): v for k, v in self.headers.items()})
            # Google's APIs answer pretty-printed JSON; the metadata server's plain values are text.
            raw = body.encode() if isinstance(body, str) else json.dumps(body, indent=2).encode()
            self.send_response(status)
            self.send_header("Content-Type", "text/plain" if isinstance(body, str) else "application/json; charset=UTF-8")
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

        def log_message(self, *args: Any) -> None:
            return None

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    fake.base = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield fake
    finally:
        server.shutdown()
        server.server_close()


def _owner() -> int:
    """The image's uid where we may chown to it (root), else our own: the script takes the uid as an argument."""
    return fleets.IMAGE_UID if os.geteuid() == 0 else os.getuid()


def _local_script(google: FakeGoogle, home: Path) -> str:
    """dev's serving startup script with Google's endpoints and the image's home moved to local stand-ins."""
    s = get_settings("dev")
    cpu = s.serving.stable_fleet.model_copy(update={"accelerator_type": None, "accelerator_count": 0})
    script = fleets.serving_startup_script(s, cpu, "stable")
    token_file = str(fleets.image_token_file(s))
    script = script.replace(f"{token_file} {fleets.IMAGE_UID}", f"{token_file} {_owner()}")
    script = script.replace(fleets.METADATA_TOKEN_URL, f"{google.base}/token")
    script = script.replace(fleets.METADATA_IP_URL, f"{google.base}/ip")
    script = script.replace(fleets.METADATA_MODEL_URL, f"{google.base}/model-version")
    script = script.replace(fleets.SECRET_MANAGER_API, f"{google.base}/v1")
    assert fleets.IMAGE_HOME in script
    return script.replace(fleets.IMAGE_HOME, str(home))


def _run_script(tmp_path: Path, script: str) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    """Run a startup script with recording ``docker`` stubs; returns the process and the docker calls."""
    stubs, calls = tmp_path / "bin", tmp_path / "docker-calls"
    stubs.mkdir(exist_ok=True)
    for name in ("docker", "docker-credential-gcr"):
        stub = stubs / name
        # It records the bind address docker would hand the container from the script's environment too.
        stub.write_text(f'#!/bin/bash\necho "{name} $* [model=${{TENFOLD_SERVING_MODEL:-}}] [host=${{TENFOLD_SERVING_HOST:-}}]" >> {calls}\n')
        stub.chmod(0o755)
    path = tmp_path / "startup.sh"
    path.write_text(script)
    proc = subprocess.run(["bash", str(path)], capture_output=True, text=True, timeout=60, check=False,
                          env={**os.environ, "PATH": f"{stubs}:{os.environ['PATH']}"})
    return proc, calls.read_text().splitlines() if calls.exists() else []


def test_the_replica_starts_with_the_latest_version_mounted_read_only(google: FakeGoogle, tmp_path: Path) -> None:
    home = tmp_path / "home"
    google.versions += [b"old-token\n", b"0f3a9c-current-token\n"]  # `openssl rand -hex 32` ends in a newline
    proc, docker = _run_script(tmp_path, _local_script(google, home))
    assert proc.returncode == 0, proc.stderr
    token = home / "run" / TOKEN_FILE
    assert token.read_bytes() == b"0f3a9c-current-token\n", "the latest version, byte for byte"
    mode = token.stat()
    assert stat.S_IMODE(mode.st_mode) == 0o600 and mode.st_uid == _owner() and mode.st_gid == _owner()
    assert stat.S_IMODE((home / "run").stat().st_mode) == 0o700
    assert sorted(p.name for p in (home / "run").iterdir()) == [TOKEN_FILE], "no reply or temporary file is left"
    (run,) = [c for c in docker if c.startswith("docker run ")]
    assert f"--volume {token}:{token}:ro" in run, "mounted read-only at the path the replica reads"
    assert "-e TENFOLD_SERVING__SERVER__AUTH_MODE=bearer" in run
    assert docker.index(next(c for c in docker if c.startswith("docker rm -f"))) < docker.index(run)
    # the replica binds to the VM's internal address alone (docker takes the value from the script's environment)
    assert " -e TENFOLD_SERVING_HOST " in run and run.endswith(f"[host={VM_IP}]") and "0.0.0.0" not in run
    # the VM's identity came from the metadata server, with the header it requires, and went to Secret Manager
    (ip, model, meta, secret) = google.requests
    assert model[0] == "/model-version" and "[model=]" in run, "no pinned version: the replica serves its model_ref"
    assert ip[0] == "/ip" and ip[1]["metadata-flavor"] == "Google"
    assert meta[0] == "/token" and meta[1]["metadata-flavor"] == "Google"
    assert secret[1]["authorization"] == f"Bearer {ACCESS_TOKEN}"
    assert ACCESS_TOKEN not in proc.stderr and "current-token" not in proc.stderr + proc.stdout


def test_the_model_version_the_template_pins_reaches_the_replica(google: FakeGoogle, tmp_path: Path) -> None:
    google.versions.append(b"token\n")
    google.model_version = "0123456789abcdef0123"
    proc, docker = _run_script(tmp_path, _local_script(google, tmp_path / "home"))
    assert proc.returncode == 0, proc.stderr
    (run,) = [c for c in docker if c.startswith("docker run ")]
    assert f" -e {fleets.SERVING_MODEL_ENV} " in run and "[model=0123456789abcdef0123]" in run
    from tenfold.serving.replica import MODEL_ENV

    assert fleets.SERVING_MODEL_ENV == MODEL_ENV, "the variable the replica reads its --model default from"


def test_no_version_stops_the_script_loudly_and_no_replica_starts(google: FakeGoogle, tmp_path: Path) -> None:
    home = tmp_path / "home"
    stale = home / "run" / TOKEN_FILE
    stale.parent.mkdir(parents=True)
    stale.write_text("token-of-an-earlier-boot\n")  # a reboot must not run on it
    proc, docker = _run_script(tmp_path, _local_script(google, home))
    assert proc.returncode != 0
    s = get_settings("dev")
    assert f"the Secret Manager secret {s.serving.token_secret} has no version yet" in proc.stderr
    assert f"openssl rand -hex 32 | gcloud secrets versions add {s.serving.token_secret} --data-file=-" in proc.stderr
    assert not [c for c in docker if c.startswith("docker run")], "no replica without a token"
    assert any(c.startswith("docker rm -f tenfold-stable") for c in docker), "the previous boot's replica is gone"
    assert not stale.exists()
    assert list((home / "run").iterdir()) == []


def _fetch(google: FakeGoogle, token_file: Path) -> subprocess.CompletedProcess[str]:
    """The script's own fetch function, alone."""
    s = get_settings("dev")
    lines, _ = fleets.serving_token_setup(s)
    url = fleets.secret_version_url(s.project_id, s.serving.token_secret).replace(fleets.SECRET_MANAGER_API, f"{google.base}/v1")
    body = f"set -euo pipefail\n{lines[0]}\nfetch_serving_token {google.base}/token {url} {token_file} {_owner()}\n"
    return subprocess.run(["bash", "-c", body], capture_output=True, text=True, timeout=60, check=False)


def test_a_service_account_without_access_is_named_with_the_grant_it_needs(google: FakeGoogle, tmp_path: Path) -> None:
    google.versions.append(b"t0ken\n")
    google.sa_may_read = False
    proc = _fetch(google, tmp_path / "run" / TOKEN_FILE)
    assert proc.returncode != 0
    assert "may not read the secret" in proc.stderr and "roles/secretmanager.secretAccessor" in proc.stderr
    assert "secretmanager.versions.access" in proc.stderr, "Google's own message is passed on"
    assert not (tmp_path / "run" / TOKEN_FILE).exists()


def test_an_empty_version_is_refused(google: FakeGoogle, tmp_path: Path) -> None:
    google.versions.append(b" \n")
    proc = _fetch(google, tmp_path / "run" / TOKEN_FILE)
    assert proc.returncode != 0 and "is empty" in proc.stderr
    assert list((tmp_path / "run").iterdir()) == []


def test_a_secret_that_does_not_exist_is_a_404_too(google: FakeGoogle, tmp_path: Path) -> None:
    """The project holds a secret of another name only: the script's secret answers 404, like one without versions."""
    google.versions.append(b"t0ken\n")
    google.secret = "another-secret"
    proc = _fetch(google, tmp_path / "run" / TOKEN_FILE)
    assert proc.returncode != 0 and "has no version yet" in proc.stderr


@pytest.mark.parametrize("env", ENVS)
def test_serving_scripts_fetch_this_environments_secret_before_the_replica_starts(env: str) -> None:
    s = get_settings(env)
    for fleet, role in ((s.serving.stable_fleet, "stable"), (s.serving.canary_fleet, "canary")):
        script = fleets.serving_startup_script(s, fleet, role)
        lines = script.splitlines()
        url = f"https://secretmanager.googleapis.com/v1/projects/{s.project_id}/secrets/{s.serving.token_secret}/versions/latest:access"
        token = f"/var/lib/tenfold/run/{TOKEN_FILE}"
        fetch = lines.index(f"fetch_serving_token {fleets.METADATA_TOKEN_URL} {url} {token} 10001")
        run = next(i for i, line in enumerate(lines) if line.startswith("docker run"))
        remove = next(i for i, line in enumerate(lines) if line.startswith(f"docker rm -f tenfold-{role}"))
        assert remove < lines.index(f"rm -f {token}") < fetch < run
        assert f"--volume {token}:{token}:ro" in lines[run] and lines[run].endswith(s.container_image)
        # docker stop's default 10 s would SIGKILL a replica still draining its requests and samples
        stop = int(lines[run].split("--stop-timeout ", 1)[1].split()[0])
        assert stop > s.serving.server.drain_timeout_s + s.serving.server.feedback_publish_timeout_s
        assert lines[2] == "set -euo pipefail", "a failed fetch stops the script"
    assert "fetch_serving_token" not in fleets.training_startup_script(s), "only serving reads the token"


def test_iap_mode_passes_the_audience_and_fetches_no_token() -> None:
    s = get_settings("prod")
    audience = "/projects/123456789/global/backendServices/987654321"
    server = s.serving.server.model_copy(update={"auth_mode": "iap", "iap_audience": audience})
    iap = s.model_copy(update={"serving": s.serving.model_copy(update={"server": server})})
    script = fleets.serving_startup_script(iap, iap.serving.stable_fleet, "stable")
    assert "fetch_serving_token" not in script and "--volume /var/lib/tenfold/run" not in script
    assert f"-e TENFOLD_SERVING__SERVER__AUTH_MODE=iap -e TENFOLD_SERVING__SERVER__IAP_AUDIENCE={audience}" in script


def test_the_image_user_and_home_are_the_dockerfiles() -> None:
    dockerfile = (project_root() / "serving_image" / "Dockerfile").read_text()
    assert re.search(rf"useradd [^\n]*--uid {fleets.IMAGE_UID} [^\n]*--home-dir {fleets.IMAGE_HOME}\b", dockerfile)
    assert f"USER {fleets.IMAGE_UID}:{fleets.IMAGE_UID}" in dockerfile
    assert f"TENFOLD_HOME={fleets.IMAGE_HOME}" in dockerfile
    assert str(fleets.image_token_file(get_settings("prod"))) == f"{fleets.IMAGE_HOME}/run/{TOKEN_FILE}"


@pytest.mark.parametrize("env", ENVS)
def test_the_inference_script_runs_the_worker_in_the_image_for_the_vms_life(env: str, tmp_path: Path) -> None:
    s = get_settings(env)
    gpu_script = fleets.inference_startup_script(s)
    assert ("cos-extensions install gpu" in gpu_script) is bool(s.inference.fleet.accelerator_count)
    assert "fetch_serving_token" not in gpu_script, "only serving reads the token"
    from tenfold.inference.worker import STOP_TIMEOUT_S

    # Run for real (CPU template, the image's home moved here): what docker is asked to do, in order.
    cpu = s.inference.fleet.model_copy(update={"accelerator_type": None, "accelerator_count": 0})
    local = s.model_copy(update={"inference": s.inference.model_copy(update={"fleet": cpu})})
    script = fleets.inference_startup_script(local).replace(fleets.IMAGE_HOME, str(tmp_path / "home"))
    proc, calls = _run_script(tmp_path, script)
    assert proc.returncode == 0, proc.stderr
    registry = s.container_image.split("/", 1)[0]
    assert [c.split(" [")[0] for c in calls] == [
        f"docker-credential-gcr configure-docker --registries={registry}",
        "docker rm -f tenfold-inference",
        f"docker run -d --restart=always --name tenfold-inference --network host -e TENFOLD_ENV={env} "
        f"-e TENFOLD_PROJECT_ID={s.project_id} -e TENFOLD_ROLE=inference --no-healthcheck --stop-timeout {STOP_TIMEOUT_S} "
        f"{s.container_image} python -m {fleets.INFERENCE_MODULE} --preload {s.inference.model_ref}",
    ]
    assert fleets.INFERENCE_MODULE in fleets.LAUNCHED_MODULES


def test_what_the_stacks_were_synthesized_with_reaches_the_vms_containers() -> None:
    """A workload of its own names its tables and months by TENFOLD_* variables at synth (the lake grants name those
    tables): every VM's container must run with the same, or it reads tables it has no grant for."""
    from tenfold.config.settings import deployed_env

    overrides = {"TENFOLD_WORKLOAD": "tiny_workload:WORKLOAD", "TENFOLD_STORAGE__FEATURES_TABLE": "tiny_features",
                 "TENFOLD_PIPELINES__BUILD_FEATURES__FIRST_MONTH": "2020-01",
                 "TENFOLD_PIPELINES__BUILD_FEATURES__LAST_MONTH": "2020-03",
                 # the training account's grant names the runs' folder; the groups' sizing and the domain, what the
                 # rollout's plan reads of them, are what was synthesized too
                 "TENFOLD_TRAINING__RUNS_PREFIX": "tiny/runs", "TENFOLD_SERVING__CANARY_FLEET__MIN_REPLICAS": "1",
                 "TENFOLD_SERVING__LOAD_BALANCER__DOMAIN": "ml.example.com",
                 "TENFOLD_SERVING__ROLLOUT__INTERVAL_S": "90.0"}
    custom = build_settings("dev", overrides)
    assert deployed_env(custom) == overrides
    assert deployed_env(build_settings("dev")) == {}  # nothing set: the scripts are as before
    # the container rebuilds exactly the settings the stacks were made from
    assert build_settings("dev", deployed_env(custom)) == custom
    # A VM gets what its process reads: the workload and its tables; a serving replica the server's settings, a
    # training node the training ones. The DAGs' settings, the groups' sizing, the domain and the rollout's policy are
    # Composer's and the stacks' (composer_env).
    def read_by(role: str, key: str) -> bool:
        if key.startswith(("TENFOLD_PIPELINES__", "TENFOLD_SERVING__")):
            return role == "stable" and key.startswith("TENFOLD_SERVING__SERVER__")
        return role == "training" if key.startswith("TENFOLD_TRAINING__") else True

    overrides["TENFOLD_SERVING__SERVER__CACHE_ENTRIES"] = "100"
    custom = build_settings("dev", overrides)
    for role, script in (("stable", fleets.serving_startup_script(custom, custom.serving.stable_fleet, "stable")),
                         ("training", fleets.training_startup_script(custom)),
                         ("feedback", fleets.feedback_startup_script(custom)),
                         ("inference", fleets.inference_startup_script(custom))):
        run = next(line for line in script.splitlines() if line.startswith("docker run"))
        for key, value in overrides.items():
            assert (f"-e {key}={value}" in run) is read_by(role, key), (role, key, run[:200])


# A lake table named "reports" is refused under the default report folders, so a workload with one moves them.
_REPORTS_TABLE = {"TENFOLD_PROJECT_ID": "tenfold-test-1", "TENFOLD_STORAGE__SCORES_TABLE": "reports",
                  "TENFOLD_MONITORING__DRIFT__REPORTS_PREFIX": "drift_reports",
                  "TENFOLD_SERVING__ROLLOUT__REPORTS_PREFIX": "rollout_reports"}
_ROLES = ("stable", "canary", "training", "inference", "feedback")


def test_every_vm_rebuilds_settings_whose_report_folders_moved_off_a_reports_table() -> None:
    """The report folders are checked against the table names, but no VM got them: with a table named "reports" synth
    passed, and every VM's container refused the default folders under it at start (the replicas crash-looped)."""
    custom = build_settings("dev", _REPORTS_TABLE)
    for role in _ROLES:
        env = fleets.vm_env(custom, role)
        rebuilt = build_settings("dev", {"TENFOLD_PROJECT_ID": custom.project_id, **env})
        assert rebuilt.storage.scores_table == "reports", role
        assert rebuilt.monitoring.drift.reports_prefix == "drift_reports", role
        assert rebuilt.serving.rollout.reports_prefix == "rollout_reports", role
    # set only where they differ from the defaults, as every other variable: the default scripts stay as they were
    assert not any("REPORTS_PREFIX" in k for role in _ROLES for k in fleets.vm_env(build_settings("dev"), role))
    script = fleets.feedback_startup_script(custom)
    assert "-e TENFOLD_MONITORING__DRIFT__REPORTS_PREFIX=drift_reports" in script
    assert "-e TENFOLD_SERVING__ROLLOUT__REPORTS_PREFIX=rollout_reports" in script


def test_a_vm_environment_its_container_would_refuse_is_refused_at_synth(monkeypatch: pytest.MonkeyPatch) -> None:
    """A check across settings that reads one a VM is not given passed synth and deploy and stopped every VM at start:
    the startup script, made at synth, is refused instead, naming the role and what the container would refuse."""
    custom = build_settings("dev", _REPORTS_TABLE)
    monkeypatch.setattr(fleets, "_REPORT_FOLDERS", ())  # a vm_env that leaves the report folders out, as it used to
    with pytest.raises(ValueError) as refused:
        fleets.feedback_startup_script(custom)
    said = str(refused.value)
    assert "feedback VMs' containers would refuse" in said and "tenfold.fleets.vm_env" in said
    assert "TENFOLD_MONITORING__DRIFT__REPORTS_PREFIX='reports/drift'" in said and "\n" not in said
    with pytest.raises(ValueError, match="stable VMs' containers would refuse"):
        fleets.serving_startup_script(custom, custom.serving.stable_fleet, "stable")


def test_a_change_only_composer_or_the_stacks_read_leaves_every_vms_startup_script_as_it_was() -> None:
    """Raising a group's autoscaler minimum before a rollout (as docs/rollout-cloud.md asks) changed the startup script
    of every group, so the apply made new instance templates and replaced every GPU VM; a training gate threshold
    replaced the serving VMs."""
    base = build_settings("prod")
    for change in ({"TENFOLD_SERVING__CANARY_FLEET__MIN_REPLICAS": "3"}, {"TENFOLD_SERVING__STABLE_FLEET__MAX_REPLICAS": "9",
                                                                          "TENFOLD_SERVING__CANARY_FLEET__MAX_REPLICAS": "9"},
                   {"TENFOLD_SERVING__ROLLOUT__INTERVAL_S": "90.0"}, {"TENFOLD_SERVING__LOAD_BALANCER__DOMAIN": "ml.x.com"},
                   {"TENFOLD_PIPELINES__ROLLOUT_MODEL__RETRIES": "5"},
                   {"TENFOLD_MONITORING__DRIFT__PSI_DRIFT": "0.3"},  # Composer's drift monitor alone reads it
                   # Composer alone reads the reports' folders: a VM gets them only where its settings need them.
                   {"TENFOLD_MONITORING__DRIFT__REPORTS_PREFIX": "monitoring/drift"},
                   {"TENFOLD_SERVING__ROLLOUT__REPORTS_PREFIX": "r/x"}):
        changed = build_settings("prod", change)
        for make in (lambda s: fleets.serving_startup_script(s, s.serving.stable_fleet, "stable"),
                     lambda s: fleets.serving_startup_script(s, s.serving.canary_fleet, "canary"),
                     fleets.training_startup_script, fleets.inference_startup_script, fleets.feedback_startup_script):
            assert make(changed) == make(base), change
    gate = build_settings("prod", {"TENFOLD_TRAINING__GATE_MIN_AUC": "0.7"})
    for make in (lambda s: fleets.serving_startup_script(s, s.serving.stable_fleet, "stable"),
                 fleets.inference_startup_script, fleets.feedback_startup_script):
        assert make(gate) == make(base)
    assert fleets.training_startup_script(gate) != fleets.training_startup_script(base)  # the training VM reads it
    server = build_settings("prod", {"TENFOLD_SERVING__SERVER__CACHE_ENTRIES": "100"})
    assert fleets.training_startup_script(server) == fleets.training_startup_script(base)
    assert fleets.serving_startup_script(server, server.serving.stable_fleet, "stable") != \
        fleets.serving_startup_script(base, base.serving.stable_fleet, "stable")


def test_the_feedback_sink_gets_time_to_land_and_join_on_a_stop() -> None:
    """docker stop's default 10 s SIGKILLed the sink in its last join (its locks left to go stale)."""
    script = fleets.feedback_startup_script(get_settings("prod"))
    run = next(line for line in script.splitlines() if line.startswith("docker run"))
    assert int(run.split("--stop-timeout ", 1)[1].split()[0]) >= 60


def test_an_inference_worker_gets_time_to_finish_its_shutdown_on_a_stop() -> None:
    """No --stop-timeout: docker stop's 10 s SIGKILLed a worker before its own bounded shutdown (handlers, pull, 17 s)
    ended, and the messages in hand waited out their lease, each lapse a delivery attempt spent."""
    from tenfold.inference.worker import PULL_TIMEOUT_S, SHUTDOWN_S

    script = fleets.inference_startup_script(get_settings("prod"))
    run = next(line for line in script.splitlines() if line.startswith("docker run"))
    assert int(run.split("--stop-timeout ", 1)[1].split()[0]) > SHUTDOWN_S + PULL_TIMEOUT_S + 2


def test_only_the_replicas_containers_run_the_images_health_check() -> None:
    """The image's HEALTHCHECK probes a replica's port: the training, inference and feedback containers (the same
    image, another command) were marked unhealthy for good, and each started a Python process every 10 s."""
    settings = get_settings("prod")
    scripts = {"training": fleets.training_startup_script(settings), "inference": fleets.inference_startup_script(settings),
               "feedback": fleets.feedback_startup_script(settings),
               "stable": fleets.serving_startup_script(settings, settings.serving.stable_fleet, "stable")}

    def run_flags(script: str) -> list[str]:
        return next(line for line in script.splitlines() if line.startswith("docker run")).split()

    assert {role: "--no-healthcheck" in run_flags(s) for role, s in scripts.items()} == {
        "training": True, "inference": True, "feedback": True, "stable": False}
