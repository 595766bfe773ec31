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

import contextlib
import json
import logging
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from typing import Any

from tenfold.config import Settings, get_settings
from tenfold.training.fleet import ATTEMPT_KEY, RUN_ID_KEY, TRAIN_ARGS_KEY, marker_name, nodes_prefix

log = logging.getLogger(__name__)

METADATA_URL = "http://metadata.google.internal/computeMetadata/v1/instance/attributes/"


METADATA_TRIES = 5


def metadata_attribute(key: str, *, sleep: Callable[[float], None] = time.sleep) -> str | None:
    """The instance metadata attribute ``key``, or None when it is not set (404). Any other failure (a timeout, a
    5xx) is tried again, then raised: read as "not set", a node of a real run said "nothing to train" and exited 0,
    and the run waited out its whole bound for a marker."""
    req = urllib.request.Request(METADATA_URL + key, headers={"Metadata-Flavor": "Google"})
    last: OSError | None = None
    for attempt in range(METADATA_TRIES):
        try:
            with urllib.request.urlopen(req, timeout=5) as resp:
                return str(resp.read().decode())
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return None
            last = exc
        except OSError as exc:
            last = exc
        if attempt + 1 < METADATA_TRIES:
            sleep(1.0 + attempt)
    raise RuntimeError(f"the metadata server did not answer for {key!r} after {METADATA_TRIES} tries: {last}")


# How long a node whose torchrun failed waits for the rendezvous host's own marker before writing the run's failure:
# longer than torch's exit barrier (300 s), within which a host's ranks may still be finishing a success.
HOST_GRACE_S = 360.0
# Every torchrun of Tenfold's, on the nodes and on one machine (tenfold.training.launch.loopback_env): the agents
# share no store, and rank 0 hosts a fresh one each round (tenfold.training.worker.init_distributed). With the
# agents' shared store the rounds were told apart by TORCHELASTIC_RESTART_COUNT, a per-agent counter: an agent that
# restarts its ranks for a membership change (a peer's rank died) does not count it, so after one death the two
# nodes' ranks waited on different prefixes until the collective timeout, every round, till restarts ran out.
OWN_STORE_ENV = {"TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1"}


def run_torchrun(argv: list[str]) -> int:
    return subprocess.call(argv, env={**os.environ, **OWN_STORE_ENV})


def write_failure(settings: Settings, storage: Any, run_id: str, hostname: str, reason: str) -> None:
    """Write the run's marker as failed, unless a marker is there already (a result, or another node's failure):
    a node that fails before torchrun (its peers never registered, an error) would otherwise leave the DAG waiting
    ``training.run_timeout_s`` for a marker that never comes."""
    from google.api_core.exceptions import PreconditionFailed

    body = {"status": "failed", "exit_code": None, "host": hostname, "reason": reason[:2000]}
    with contextlib.suppress(PreconditionFailed):
        storage.bucket(settings.storage.artifacts_bucket).blob(marker_name(settings, run_id)).upload_from_string(
            json.dumps(body), content_type="application/json", if_generation_match=0)


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
    run: Callable[[list[str]], int] = run_torchrun,
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
            why = f"only {len(hosts)} of {settings.training.nnodes} nodes registered for run {run_id}"
            write_failure(settings, storage, run_id, hostname, f"{why} within {settings.training.stable_timeout_s} s")
            raise TimeoutError(why)
        sleep(settings.training.poll_interval_s)
    host = rendezvous_host(hosts)
    code = run(torchrun_argv(settings, run_id, host, args))
    marker = bucket.blob(marker_name(settings, run_id))
    if host == hostname:
        result = {"status": "succeeded" if code == 0 else "failed", "exit_code": code, "host": hostname}
        marker.upload_from_string(json.dumps(result), content_type="application/json")
    elif code != 0:
        # With a fixed node count, any node's failure ends the run. The host writes the marker only if it is still
        # there: a preempted host left the DAG waiting run_timeout_s (hours) while this node's GPU sat idle. It is
        # given HOST_GRACE_S first (longer than torch's exit barrier), so a rank that failed in teardown after the
        # host's success does not fail the run; then the failure, create-only (a result the host wrote stands).
        grace_until = clock() + HOST_GRACE_S
        while not marker.exists() and clock() < grace_until:
            sleep(settings.training.poll_interval_s)
        write_failure(settings, storage, run_id, hostname,
                      f"torchrun on {hostname} exited {code}, and the rendezvous host {host} wrote no result within "
                      f"{HOST_GRACE_S:.0f} s (gone: a preempted VM?)")
    return code


def main() -> int:
    logging.basicConfig(level=logging.INFO)
    run_id = metadata_attribute(RUN_ID_KEY)
    if not run_id:
        log.info("no %s in instance metadata: nothing to train", RUN_ID_KEY)
        return 0
    settings = get_settings()
    from tenfold.storage import gcs_client

    storage, hostname = gcs_client(settings), socket.gethostname()
    try:  # from here on a failure is the run's marker (the metadata server away, malformed arguments): not a wait
        args = json.loads(metadata_attribute(TRAIN_ARGS_KEY) or "[]")
        return run_node(settings, run_id, args, storage=storage, hostname=hostname,
                        attempt=metadata_attribute(ATTEMPT_KEY))
    except Exception as exc:
        with contextlib.suppress(Exception):  # the storage itself may be what failed
            write_failure(settings, storage, run_id, hostname, f"{type(exc).__name__}: {exc}")
        raise


if __name__ == "__main__":
    raise SystemExit(main())
