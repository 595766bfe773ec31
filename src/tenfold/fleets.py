"""Startup scripts of the fleets' VMs: each runs one Tenfold module in the Tenfold image.

Each capability names the module its fleet runs (training: :mod:`tenfold.training.node`; offline
inference: :mod:`tenfold.inference.worker`; serving: the image's own CMD), and ``tests/unit/test_deployables.py`` imports every module named here. The instance
templates (``infra/components/gpu_fleet.py``) carry these scripts; they run on
Container-Optimized OS, install the GPU driver when the template has an accelerator, and run the one
Tenfold image with the environment's settings (``TENFOLD_ENV``, ``TENFOLD_PROJECT_ID``), so a VM
derives every name from the same settings module as the DAGs.

Serving VMs first fetch the replicas' bearer token: the latest version of the Secret Manager secret
``settings.serving.token_secret``, read with the VM's own service account (the metadata server's access
token and Secret Manager's REST API, with the ``curl`` Container-Optimized OS ships), written 0600 for the
image's user and mounted read-only where :func:`tenfold.serving.auth.token_path` looks in the image. When
the secret has no version (or the VM may not read it) the script says so in its log and stops: no
replica starts, and autohealing retries with a fresh VM until an operator adds a version.
"""

from __future__ import annotations

import math
import shlex
from collections.abc import Mapping, Sequence
from pathlib import Path, PurePosixPath

from tenfold.config import Settings
from tenfold.config.settings import (
    MONITORING_ENV_PREFIX,
    PIPELINES_ENV_PREFIX,
    SERVING_ENV_PREFIX,
    TRAINING_ENV_PREFIX,
    GpuGroupSettings,
    build_settings,
    deployed_env,
    settings_refusal,
)
from tenfold.serving.auth import token_path

# Serving runs the image's own CMD (serving_image/ defines it); the other roles name their module.
SERVING_COMMAND: tuple[str, ...] = ()
# How the container's replica learns its server settings (tenfold.config: TENFOLD_SERVING__SERVER__<FIELD>).
SERVER_ENV_PREFIX = f"{SERVING_ENV_PREFIX}SERVER__"
# The training node agent (tenfold.training.node): registers, rendezvouses and runs torchrun.
TRAINING_MODULE = "tenfold.training.node"
TRAINING_COMMAND: tuple[str, ...] = ("python", "-m", TRAINING_MODULE)
# The offline-inference worker (tenfold.inference.worker): pulls scoring requests until SIGTERM.
INFERENCE_MODULE = "tenfold.inference.worker"
INFERENCE_COMMAND: tuple[str, ...] = ("python", "-m", INFERENCE_MODULE)
# The feedback sink (tenfold.feedback.sink through the CLI): lands predictions and feedback until SIGTERM, joining
# them whenever it is idle.
FEEDBACK_MODULE = "tenfold.cli"
FEEDBACK_COMMAND: tuple[str, ...] = ("python", "-m", FEEDBACK_MODULE, "feedback", "sink")
# Every Tenfold module a fleet's startup script launches (the deployables test imports each).
LAUNCHED_MODULES: tuple[str, ...] = (TRAINING_MODULE, INFERENCE_MODULE, FEEDBACK_MODULE)

# The image's user and TENFOLD_HOME (serving_image/Dockerfile; tests/unit/test_fleets.py holds the two together).
IMAGE_UID = 10001
IMAGE_HOME = "/var/lib/tenfold"
# The VM's own identity and Secret Manager's REST API (https://cloud.google.com/secret-manager/docs/reference/rest).
METADATA_TOKEN_URL = "http://metadata.google.internal/computeMetadata/v1/instance/service-accounts/default/token"
# The VM's primary internal address: the replica binds to it alone (the load balancer's proxies and health
# checks reach it there), never to every interface.
METADATA_IP_URL = "http://metadata.google.internal/computeMetadata/v1/instance/network-interfaces/0/ip"
SERVING_HOST_ENV = "TENFOLD_SERVING_HOST"
# The model version a serving template pins (tenfold.rollout.cloud derives a template per version with it in
# the instance metadata); the script hands it to the replica as TENFOLD_SERVING_MODEL (tenfold.serving.replica).
# A template without it (the synthesized one) serves settings.serving.server.model_ref.
MODEL_VERSION_KEY = "tenfold-model-version"
METADATA_MODEL_URL = f"http://metadata.google.internal/computeMetadata/v1/instance/attributes/{MODEL_VERSION_KEY}"
SERVING_MODEL_ENV = "TENFOLD_SERVING_MODEL"
SECRET_MANAGER_API = "https://secretmanager.googleapis.com/v1"

_GPU_SETUP = """\
# COS ships no GPU driver: install the one matching this image, then expose it to containers.
cos-extensions install gpu
mount --bind /var/lib/nvidia /var/lib/nvidia
mount -o remount,exec /var/lib/nvidia
GPU_FLAGS="--volume /var/lib/nvidia/lib64:/usr/local/nvidia/lib64 --volume /var/lib/nvidia/bin:/usr/local/nvidia/bin"
for dev in /dev/nvidia*; do GPU_FLAGS="$GPU_FLAGS --device $dev:$dev"; done
"""


# A bash function, so the tests run this very text against a local stand-in for the two endpoints. It
# needs nothing COS lacks (no gcloud, no jq): curl, sed, tr and base64. The access token reaches curl
# on stdin, not on its command line, where any process could read it.
_TOKEN_FETCH = r"""
# Writes the latest version of a Secret Manager secret to a file only the image's user can read.
fetch_serving_token() {  # <metadata token URL> <secret version URL> <token file> <owner uid>
  local token_url=$1 version_url=$2 file=$3 owner=$4
  local dir=${file%/*} secret=${version_url%/versions/*} body="" tmp="" status access data message
  secret=${secret##*/}
  install -d -m 0700 -o "$owner" -g "$owner" "$dir"
  body=$(mktemp "$dir/.reply.XXXXXX")
  status=$(curl -sS --max-time 10 --retry 10 --retry-delay 3 --retry-connrefused -o "$body" -w '%{http_code}' \
    -H 'Metadata-Flavor: Google' "$token_url") || true
  access=$(tr -d ' \r\n' < "$body" | sed -n 's/.*"access_token":"\([^"]*\)".*/\1/p')
  if [ "$status" != 200 ] || [ -z "$access" ]; then
    rm -f "$body"
    echo "tenfold: no access token from the metadata server (HTTP $status): the VM needs its service account" >&2
    return 1
  fi
  status=$(printf 'Authorization: Bearer %s\n' "$access" | curl -sS --max-time 20 --retry 5 --retry-delay 3 \
    --retry-connrefused -o "$body" -w '%{http_code}' -H @- "$version_url") || true
  if [ "$status" != 200 ]; then
    message=$(tr -d '\r\n' < "$body" | sed -n 's/.*"message": *"\([^"]*\)".*/\1/p')
    rm -f "$body"
    case $status in
      404) echo "tenfold: the Secret Manager secret $secret has no version yet ($message). Add one:" \
             "openssl rand -hex 32 | gcloud secrets versions add $secret --data-file=-" \
             "(autohealing then replaces this VM)" >&2 ;;
      403) echo "tenfold: this VM's service account may not read the secret $secret ($message): it needs" \
             "roles/secretmanager.secretAccessor on it (the platform stack grants it)" >&2 ;;
      *) echo "tenfold: cannot read the secret $secret (HTTP $status): $message" >&2 ;;
    esac
    return 1
  fi
  data=$(tr -d ' \r\n' < "$body" | sed -n 's/.*"data":"\([^"]*\)".*/\1/p')
  rm -f "$body"
  tmp=$(mktemp "$dir/.token.XXXXXX")
  if ! printf '%s' "$data" | base64 -d > "$tmp" 2>/dev/null || [ -z "$(tr -d '[:space:]' < "$tmp")" ]; then
    rm -f "$tmp"
    echo "tenfold: the latest version of the secret $secret is empty: add a version with a token" >&2
    return 1
  fi
  chmod 0600 "$tmp"
  chown "$owner:$owner" "$tmp"
  mv -f "$tmp" "$file"  # a rename: the replica never sees a half-written token
  echo "tenfold: serving token from $secret written to $file" >&2
}
"""


def secret_version_url(project_id: str, secret: str, version: str = "latest") -> str:
    """Secret Manager's ``access`` URL of one version of ``secret`` (``latest``: the newest)."""
    return f"{SECRET_MANAGER_API}/projects/{project_id}/secrets/{secret}/versions/{version}:access"


def image_token_file(settings: Settings) -> PurePosixPath:
    """Where a replica in the image reads its bearer token (:func:`tenfold.serving.auth.token_path` under the
    image's ``TENFOLD_HOME``); the VM keeps the file at the same path and mounts it there."""
    in_image = settings.model_copy(update={"local": settings.local.model_copy(update={"home": Path(IMAGE_HOME)})})
    return PurePosixPath(token_path(in_image).as_posix())


def serving_token_setup(settings: Settings) -> tuple[list[str], list[str]]:
    """The script lines that fetch the serving token, and the ``docker run`` flags that mount it read-only."""
    file = str(image_token_file(settings))
    url = secret_version_url(settings.project_id, settings.serving.token_secret)
    lines = [
        _TOKEN_FETCH.strip("\n"),
        # A token from an earlier boot must not outlive a failed fetch.
        f"rm -f {shlex.quote(file)}",
        f"fetch_serving_token {shlex.quote(METADATA_TOKEN_URL)} {shlex.quote(url)} {shlex.quote(file)} {IMAGE_UID}",
    ]
    return lines, ["--volume", f"{file}:{file}:ro"]


# A VM's startup script carries only the deployed settings its process reads: a change of any other one made new
# instance templates and replaced the VMs for nothing (an autoscaler's minimum raised before a rollout, as the docs
# ask, replaced every GPU VM of every group). No VM reads the DAGs' settings, the groups' sizes, the load balancer's
# domain, the rollout's policy, the drift monitor's or the local fleet's (Composer and the stacks do); only a serving
# replica reads the server's, and only a training node the training settings. The drift and the rollout reports'
# folders, which no VM reads, are passed only where the VM's settings would be refused without them: the settings
# check them against the lake's table names (a table named "reports" is refused under the default folders), and
# without them every VM's settings were refused at start; passed always, a new folder replaced every VM.
SERVING_ROLES = ("stable", "canary")
_SERVER = f"{SERVING_ENV_PREFIX}SERVER__"
_REPORT_FOLDERS = (f"{MONITORING_ENV_PREFIX}DRIFT__REPORTS_PREFIX", f"{SERVING_ENV_PREFIX}ROLLOUT__REPORTS_PREFIX")


def vm_env(settings: Settings, role: str) -> dict[str, str]:
    """:func:`deployed_env` as a VM of ``role`` reads it: the workload and its tables, the server's settings on a
    serving replica, the training settings on a training node."""
    def read_by(key: str) -> bool:
        if key.startswith((PIPELINES_ENV_PREFIX, MONITORING_ENV_PREFIX)):
            return False
        if key.startswith(SERVING_ENV_PREFIX):
            return role in SERVING_ROLES and key.startswith(_SERVER)
        if key.startswith(TRAINING_ENV_PREFIX):
            return role == "training"
        return True

    deployed = deployed_env(settings)
    env = {k: v for k, v in deployed.items() if read_by(k)}  # never the reports' folders (monitoring's, rollout's)
    if folders := {k: v for k, v in deployed.items() if k in _REPORT_FOLDERS}:
        try:
            check_vm_env(settings, role, {"TENFOLD_PROJECT_ID": settings.project_id, **env})
        except ValueError:  # refused without them (a table under a default folder): the VM gets them
            env.update(folders)
    return env


def check_vm_env(settings: Settings, role: str, env: Mapping[str, str]) -> None:
    """Refuse (ValueError, one line: at synth) a VM environment whose settings the VM's container could not build:
    it would stop at start on every VM of ``role``, and its group recreate it for ever, with synth and deploy passed
    (a check across settings that compares one the VM gets with one it does not)."""
    try:
        build_settings(settings.env, env, prefix=settings.prefix)
    except ValueError as exc:
        why = settings_refusal(exc).removeprefix("error: ").split(". Fix the TENFOLD_*", 1)[0]
        raise ValueError(
            f"{settings.env}: the {role} VMs' containers would refuse the settings they are started with ({why}), "
            f"so every {role} VM would stop at start: tenfold.fleets.vm_env leaves out a TENFOLD_* variable that "
            f"check reads; pass it to the {role} role there") from None


def startup_script(
    settings: Settings,
    fleet: GpuGroupSettings,
    role: str,
    command: Sequence[str],
    *,
    detach: bool,
    extra_env: dict[str, str] | None = None,
    before_run: Sequence[str] = (),
    run_flags: Sequence[str] = (),
) -> str:
    """A bash startup script that runs ``command`` in the Tenfold image on a fleet VM.

    ``before_run`` are script lines run after the previous container is removed and before the new one
    starts (under ``set -e``: one that fails stops the script, so nothing starts); ``run_flags`` are extra
    ``docker run`` flags.
    """
    registry = settings.container_image.split("/", 1)[0]
    env = {"TENFOLD_ENV": settings.env, "TENFOLD_PROJECT_ID": settings.project_id, "TENFOLD_ROLE": role,
           **vm_env(settings, role)}  # what of the settings the stacks were synthesized with this role reads
    check_vm_env(settings, role, env)
    env.update(extra_env or {})
    env_flags = " ".join(f"-e {shlex.quote(f'{k}={v}')}" for k, v in sorted(env.items()))
    run_mode = "-d --restart=always" if detach else "--rm"
    lines = [
        "#!/bin/bash",
        "# Generated by tenfold.fleets; runs at every boot of the VM.",
        "set -euo pipefail",
        'GPU_FLAGS=""',
        _GPU_SETUP if fleet.accelerator_count else "# no accelerator on this template",
        # COS's root filesystem is read-only: docker's config must live in a writable HOME.
        f"export HOME={IMAGE_HOME} && mkdir -p $HOME",
        f"docker-credential-gcr configure-docker --registries={shlex.quote(registry)}",
        f"docker rm -f tenfold-{role} >/dev/null 2>&1 || true",
        *before_run,
        f"docker run {run_mode} --name tenfold-{role} --network host $GPU_FLAGS {env_flags} "
        + (f"{shlex.join(run_flags)} " if run_flags else "")
        + f"{shlex.quote(settings.container_image)} {shlex.join(command)}".rstrip(),
    ]
    return "\n".join(lines) + "\n"


def serving_startup_script(settings: Settings, fleet: GpuGroupSettings, role: str) -> str:
    """Serving replicas: the FastAPI app on ``settings.serving.port``; ``role`` is stable or canary.

    The replica checks callers as ``settings.serving.server.auth_mode`` says (passed into the container):
    ``bearer`` (the default) fetches the token from Secret Manager first (:func:`serving_token_setup`);
    ``iap`` passes the audience instead and fetches nothing.
    """
    server = settings.serving.server
    env = {"TENFOLD_SERVING_TRACK": role, f"{SERVER_ENV_PREFIX}AUTH_MODE": server.auth_mode}
    before_run, run_flags = serving_host_setup()
    model_lines, model_flags = serving_model_setup()
    before_run, run_flags = before_run + model_lines, run_flags + model_flags
    # docker stop waits 10 s before SIGKILL by default: the replica's drain (requests in flight finish, pending
    # samples are flushed) needs drain_timeout_s and the publisher's bounded close after it.
    run_flags += ["--stop-timeout", str(serving_stop_timeout_s(settings))]
    if server.auth_mode == "iap":
        env[f"{SERVER_ENV_PREFIX}IAP_AUDIENCE"] = server.iap_audience or ""
    else:
        token_lines, token_flags = serving_token_setup(settings)
        before_run, run_flags = before_run + token_lines, run_flags + token_flags
    return startup_script(settings, fleet, role, SERVING_COMMAND, detach=True, extra_env=env,
                          before_run=before_run, run_flags=run_flags)


def serving_stop_timeout_s(settings: Settings) -> int:
    """How long ``docker stop`` lets a replica drain before SIGKILL: its drain, then its publisher's close."""
    return math.ceil(settings.serving.server.stop_timeout_s)


def serving_host_setup() -> tuple[list[str], list[str]]:
    """The script lines that read the VM's internal address, and the ``docker run`` flag that hands it to the
    replica as its bind address (``-e NAME`` without a value: docker takes it from the script's environment)."""
    lines = [
        f"{SERVING_HOST_ENV}=$(curl -sS --fail --max-time 10 --retry 10 --retry-delay 3 --retry-connrefused "
        f"-H 'Metadata-Flavor: Google' {shlex.quote(METADATA_IP_URL)})",
        f'[ -n "${SERVING_HOST_ENV}" ] || {{ echo "tenfold: the metadata server gave no internal address" >&2; exit 1; }}',
        f"export {SERVING_HOST_ENV}",
    ]
    return lines, ["-e", SERVING_HOST_ENV]


def serving_model_setup() -> tuple[list[str], list[str]]:
    """The script lines that read the model version the template pins (404: none, the replica serves
    ``model_ref``; any other failure stops the script), and the ``docker run`` flag that hands it over."""
    lines = [
        "model_reply=$(mktemp)",
        f"model_status=$(curl -sS --max-time 10 --retry 10 --retry-delay 3 --retry-connrefused -o \"$model_reply\" "
        f"-w '%{{http_code}}' -H 'Metadata-Flavor: Google' {shlex.quote(METADATA_MODEL_URL)}) || true",
        "case $model_status in",
        f'  200) {SERVING_MODEL_ENV}=$(cat "$model_reply"); export {SERVING_MODEL_ENV}',
        f'       echo "tenfold: serving model ${SERVING_MODEL_ENV} (instance metadata {MODEL_VERSION_KEY})" >&2 ;;',
        f'  404) echo "tenfold: no {MODEL_VERSION_KEY} in the instance metadata: the replica serves its model_ref" >&2 ;;',
        f'  *) echo "tenfold: cannot read {MODEL_VERSION_KEY} from the metadata server (HTTP $model_status)" >&2',
        '     rm -f "$model_reply"; exit 1 ;;',
        "esac",
        'rm -f "$model_reply"',
    ]
    return lines, ["-e", SERVING_MODEL_ENV]


# The image's HEALTHCHECK probes a replica's port: in the other roles' containers nothing listens there, so docker
# marked them unhealthy for good and started a Python process every 10 s to find it out again (the feedback VM has
# two vCPUs).
NOT_A_REPLICA = "--no-healthcheck"


def training_startup_script(settings: Settings) -> str:
    """Training nodes run :mod:`tenfold.training.node` once per boot; it exits when the run is over."""
    return startup_script(settings, settings.training.fleet, "training", TRAINING_COMMAND, detach=False,
                          run_flags=[NOT_A_REPLICA])


def inference_startup_script(settings: Settings) -> str:
    """Offline-inference workers run :mod:`tenfold.inference.worker` for the VM's life.

    Docker restarts the worker if it exits; a stop (a scale-in, a spot preemption) sends SIGTERM, and the
    worker finishes the requests in hand. What it had not acknowledged Pub/Sub delivers again elsewhere, and
    the result written once per request id makes that harmless (:mod:`tenfold.inference.store`).
    """
    from tenfold.inference.worker import STOP_TIMEOUT_S  # docker stop's default 10 s cut its shutdown short

    # A VM the autoscaler adds loads the model the runs score with before its first pull.
    command = (*INFERENCE_COMMAND, "--preload", settings.inference.model_ref)
    return startup_script(settings, settings.inference.fleet, "inference", command, detach=True,
                          run_flags=[NOT_A_REPLICA, "--stop-timeout", str(STOP_TIMEOUT_S)])


def feedback_startup_script(settings: Settings) -> str:
    """The feedback sink runs ``tenfold feedback sink`` for the VM's life.

    It pulls the predictions and feedback subscriptions into the lake's logs and joins them every 30 s while anything lands (the
    labelled table the canary's accuracy check and retraining read). Docker restarts it if it exits; a stop
    sends SIGTERM and it lands what it holds; what it had not acknowledged Pub/Sub delivers again, and the
    join's upsert on the prediction id makes a duplicate harmless.
    """
    from tenfold.feedback.sink import STOP_TIMEOUT_S  # docker stop's default 10 s killed its last join

    return startup_script(settings, settings.feedback.fleet, "feedback", FEEDBACK_COMMAND, detach=True,
                          run_flags=[NOT_A_REPLICA, "--stop-timeout", str(STOP_TIMEOUT_S)])
