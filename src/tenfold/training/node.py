"""The training node's side of :func:`tenfold.training.fleet.run_training` (runs inside the Tenfold image).

Run by the training template's startup script on every boot::

    python -m tenfold.training.node

It reads the run id and trainer arguments from instance metadata, registers the node under the run's
folder in the artifacts bucket, waits until ``training.nnodes`` nodes have registered, takes the first
host by name as the c10d rendezvous endpoint, runs torchrun, and (on the rendezvous host) writes the
``_COMPLETE`` marker the DAG waits for. With no run id set the node exits at once (the group was
resized without the DAG).
"""

from __future__ import annotations

import json
import logging
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Sequence
from typing import Any

from tenfold.config import Settings, get_settings
from tenfold.training.fleet import ATTEMPT_KEY, RUN_ID_KEY, TRAIN_ARGS_KEY, marker_name, nodes_prefix

log = logging.getLogger(__name__)

METADATA_URL = "http://metadata.google.internal/computeMetadata/v1/instance/attributes/"


def metadata_attribute(key: str) -> str | None:
    req = urllib.request.Request(METADATA_URL + key, headers={"Metadata-Flavor": "Google"})
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return str(resp.read().decode())
    except OSError:
        return None


def rendezvous_host(hosts: Sequence[str]) -> str:
    """Every node picks the same endpoint: the smallest registered host name."""
    if not hosts:
        raise ValueError("no node has registered for this run")
    return sorted(hosts)[0]


def torchrun_argv(settings: Settings, run_id: str, rdzv_host: str, args: Sequence[str]) -> list[str]:
    t = settings.training
    return [
        sys.executable, "-m", "torch.distributed.run",
        f"--nnodes={t.nnodes}",
        f"--nproc-per-node={t.nproc_per_node}",
        "--rdzv-backend=c10d",
        f"--rdzv-endpoint={rdzv_host}:{t.rdzv_port}",
        f"--rdzv-id={run_id}",
        f"--max-restarts={t.max_restarts}",
        "-m", t.entry_module,
        *args,
    ]


def run_node(
    settings: Settings,
    run_id: str,
    args: Sequence[str],
    *,
    storage: Any,
    hostname: str,
    run: Callable[[list[str]], int] = lambda argv: subprocess.call(argv),
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
    attempt: str | None = None,
) -> int:
    """Register, rendezvous, train; returns torchrun's exit code (the marker is written by the host).

    ``attempt``: the start of the run this node belongs to (metadata); only its nodes count as peers."""
    bucket = storage.bucket(settings.storage.artifacts_bucket)
    prefix = nodes_prefix(settings, run_id, attempt)
    bucket.blob(prefix + hostname).upload_from_string(hostname)
    deadline = clock() + settings.training.stable_timeout_s
    while True:
        hosts = [name for b in storage.list_blobs(bucket, prefix=prefix) if "/" not in (name := b.name[len(prefix):])]
        if len(hosts) >= settings.training.nnodes:
            break
        if clock() >= deadline:
            raise TimeoutError(f"only {len(hosts)} of {settings.training.nnodes} nodes registered for run {run_id}")
        sleep(settings.training.poll_interval_s)
    host = rendezvous_host(hosts)
    code = run(torchrun_argv(settings, run_id, host, args))
    if host == hostname:
        marker = {"status": "succeeded" if code == 0 else "failed", "exit_code": code, "host": hostname}
        bucket.blob(marker_name(settings, run_id)).upload_from_string(json.dumps(marker), content_type="application/json")
    return code


def main() -> int:
    logging.basicConfig(level=logging.INFO)
    run_id = metadata_attribute(RUN_ID_KEY)
    if not run_id:
        log.info("no %s in instance metadata: nothing to train", RUN_ID_KEY)
        return 0
    args = json.loads(metadata_attribute(TRAIN_ARGS_KEY) or "[]")
    settings = get_settings()
    from tenfold.storage import gcs_client

    return run_node(settings, run_id, args, storage=gcs_client(settings), hostname=socket.gethostname(),
                    attempt=metadata_attribute(ATTEMPT_KEY))


if __name__ == "__main__":
    raise SystemExit(main())
