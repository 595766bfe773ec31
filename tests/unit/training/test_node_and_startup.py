"""The training node's side (register, rendezvous, torchrun, marker) on the real GCS emulator, and the
startup scripts the instance templates carry."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest

from tenfold import fleets as startup
from tenfold.config import get_settings
from tenfold.training import fleet as compute
from tenfold.training import node as worker


def test_torchrun_argv_is_multi_node_c10d() -> None:
    s = get_settings("dev")
    argv = worker.torchrun_argv(s, "run-1", "node-a", ["--config", "c"])
    assert argv[1:3] == ["-m", "torch.distributed.run"]
    assert f"--nnodes={s.training.nnodes}" in argv and "--rdzv-backend=c10d" in argv
    assert f"--rdzv-endpoint=node-a:{s.training.rdzv_port}" in argv and "--rdzv-id=run-1" in argv
    assert argv[-4:] == ["-m", s.training.entry_module, "--config", "c"]


def test_a_node_runs_torchrun_with_its_ranks_hosting_the_store(monkeypatch: pytest.MonkeyPatch) -> None:
    """The agents' shared store told rounds apart by each agent's own restart count, which two nodes disagree on
    after one's rank dies (test_distributed.py has the two ranks that then never met)."""
    import subprocess

    called: list[tuple[list[str], dict[str, str]]] = []
    monkeypatch.setattr(subprocess, "call", lambda argv, env: called.append((argv, env)) or 0)
    assert worker.run_torchrun(["torchrun"]) == 0
    ((argv, env),) = called
    assert argv == ["torchrun"] and env["TORCH_DISABLE_SHARE_RDZV_TCP_STORE"] == "1" and env["PATH"]
    import inspect

    assert inspect.signature(worker.run_node).parameters["run"].default is worker.run_torchrun


def test_every_node_picks_the_same_rendezvous_host() -> None:
    assert worker.rendezvous_host(["b-2", "a-9", "c-1"]) == "a-9"
    with pytest.raises(ValueError):
        worker.rendezvous_host([])


@pytest.mark.parametrize("exit_code,status", [(0, "succeeded"), (3, "failed")])
def test_rendezvous_host_writes_the_marker_the_dag_waits_for(storage_client: Any, exit_code: int, status: str) -> None:
    s, run_id = get_settings("dev"), f"run-{uuid.uuid4().hex[:8]}"
    assert s.training.nnodes == 2
    bucket = storage_client.bucket(s.storage.artifacts_bucket)
    bucket.blob(f"{compute.run_folder(s, run_id)}/nodes/node-b").upload_from_string("node-b")  # the other node
    launched: list[list[str]] = []

    def fake_torchrun(argv: list[str]) -> int:
        launched.append(argv)
        return exit_code

    code = worker.run_node(s, run_id, ["--x"], storage=storage_client, hostname="node-a", run=fake_torchrun,
                           sleep=lambda _s: None)
    assert code == exit_code and f"--rdzv-endpoint=node-a:{s.training.rdzv_port}" in launched[0]
    marker = compute.GcsMarkerStore(storage_client).read(s.storage.artifacts_bucket, compute.marker_name(s, run_id))
    assert marker is not None and marker["status"] == status and marker["exit_code"] == exit_code


def test_other_nodes_do_not_write_the_marker_and_waits_are_bounded(storage_client: Any) -> None:
    s, run_id = get_settings("dev"), f"run-{uuid.uuid4().hex[:8]}"
    bucket = storage_client.bucket(s.storage.artifacts_bucket)
    bucket.blob(f"{compute.run_folder(s, run_id)}/nodes/node-a").upload_from_string("node-a")
    worker.run_node(s, run_id, [], storage=storage_client, hostname="node-z", run=lambda _a: 0, sleep=lambda _s: None)
    assert bucket.get_blob(compute.marker_name(s, run_id)) is None
    t = {"now": 0.0}

    def sleep(sec: float) -> None:
        t["now"] += sec

    alone = f"run-{uuid.uuid4().hex[:8]}"
    with pytest.raises(TimeoutError, match="1 of 2 nodes"):
        worker.run_node(s, alone, [], storage=storage_client, hostname="alone",
                        run=lambda _a: 0, sleep=sleep, clock=lambda: t["now"])
    # ...and says so in the run's marker: without it the DAG waited run_timeout_s (6 h) on two GPU VMs
    marker = json.loads(bucket.blob(compute.marker_name(s, alone)).download_as_bytes())
    assert marker["status"] == "failed" and "only 1 of 2 nodes registered" in marker["reason"]
    # a marker already there (a result) is never replaced by a node's failure
    worker.write_failure(s, storage_client, alone, "late", "another failure")
    assert json.loads(bucket.blob(compute.marker_name(s, alone)).download_as_bytes())["host"] == "alone"


def test_a_node_whose_torchrun_fails_while_the_host_is_gone_writes_the_failure(storage_client: Any) -> None:
    """The rendezvous host preempted mid-run: the other node's torchrun exits non-zero and, not being the host, wrote
    nothing, so the DAG waited run_timeout_s (6 h) with this node's GPU idle."""
    s, run_id = get_settings("dev"), f"run-{uuid.uuid4().hex[:8]}"
    bucket = storage_client.bucket(s.storage.artifacts_bucket)
    bucket.blob(f"{compute.run_folder(s, run_id)}/nodes/node-a").upload_from_string("node-a")  # the host
    t = {"now": 0.0}

    def sleep(sec: float) -> None:
        t["now"] += sec

    assert worker.run_node(s, run_id, [], storage=storage_client, hostname="node-z", run=lambda _a: 1,
                           sleep=sleep, clock=lambda: t["now"]) == 1
    marker = json.loads(bucket.blob(compute.marker_name(s, run_id)).download_as_bytes())
    assert marker["status"] == "failed" and marker["host"] == "node-z" and "host node-a wrote no result" in marker["reason"]
    assert t["now"] >= worker.HOST_GRACE_S  # the host was given its grace first

    # A host that finishes its success within the grace (a rank of this node failed in teardown): its result stands.
    done = f"run-{uuid.uuid4().hex[:8]}"
    bucket.blob(f"{compute.run_folder(s, done)}/nodes/node-a").upload_from_string("node-a")

    def host_writes_later(sec: float) -> None:
        t["now"] += sec
        if t["now"] > 60:
            bucket.blob(compute.marker_name(s, done)).upload_from_string(
                json.dumps({"status": "succeeded", "exit_code": 0, "host": "node-a"}))

    t["now"] = 0.0
    worker.run_node(s, done, [], storage=storage_client, hostname="node-z", run=lambda _a: 1, sleep=host_writes_later,
                    clock=lambda: t["now"])
    assert json.loads(bucket.blob(compute.marker_name(s, done)).download_as_bytes())["status"] == "succeeded"
    assert t["now"] < worker.HOST_GRACE_S


def test_a_node_that_cannot_read_its_arguments_writes_the_failure(storage_client: Any,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """The arguments were read from the metadata server before the guard that writes the marker: a node that could
    not read them left the run waiting its whole bound."""
    s, run_id = get_settings("dev"), f"run-{uuid.uuid4().hex[:8]}"

    def metadata(key: str) -> str:
        if key == compute.RUN_ID_KEY:
            return run_id
        raise RuntimeError(f"the metadata server did not answer for {key!r} after 5 tries")

    monkeypatch.setattr(worker, "metadata_attribute", metadata)
    monkeypatch.setattr(worker, "get_settings", lambda: s)
    monkeypatch.setattr("tenfold.storage.gcs_client", lambda settings: storage_client)
    with pytest.raises(RuntimeError, match="did not answer"):
        worker.main()
    marker = json.loads(storage_client.bucket(s.storage.artifacts_bucket).blob(
        compute.marker_name(s, run_id)).download_as_bytes())
    assert marker["status"] == "failed" and "did not answer for 'tenfold-train-args'" in marker["reason"]


def test_a_retrys_nodes_never_take_an_earlier_starts_vm_for_a_peer(storage_client: Any) -> None:
    """The first start's VMs (gone now, resized to 0) stay registered: the retry's first node used to count them as
    its peers at once and rendezvous with a dead host, and the run waited out its whole bound."""
    s, run_id = get_settings("dev"), f"run-{uuid.uuid4().hex[:8]}"
    bucket = storage_client.bucket(s.storage.artifacts_bucket)
    for old in ("tenfold-train-k2xq", "tenfold-train-p7aa"):
        bucket.blob(compute.nodes_prefix(s, run_id, "1-first") + old).upload_from_string(old)
    t = {"now": 0.0}

    def sleep(sec: float) -> None:
        t["now"] += sec

    launched: list[list[str]] = []
    with pytest.raises(TimeoutError, match="1 of 2 nodes"):
        worker.run_node(s, run_id, [], storage=storage_client, hostname="tenfold-train-zz01", attempt="2-retry",
                        run=lambda argv: launched.append(argv) or 0, sleep=sleep, clock=lambda: t["now"])
    assert launched == []
    # its peer of the same start registers: the two rendezvous on the smaller name of the two
    bucket.blob(compute.nodes_prefix(s, run_id, "2-retry") + "tenfold-train-zz00").upload_from_string("x")
    worker.run_node(s, run_id, [], storage=storage_client, hostname="tenfold-train-zz01", attempt="2-retry",
                    run=lambda argv: launched.append(argv) or 0, sleep=sleep, clock=lambda: t["now"])
    assert f"--rdzv-endpoint=tenfold-train-zz00:{s.training.rdzv_port}" in launched[0]


def test_startup_scripts_run_the_image_with_the_environment() -> None:
    s = get_settings("prod")
    serving = startup.serving_startup_script(s, s.serving.stable_fleet, "stable")
    assert s.container_image in serving and "TENFOLD_ENV=prod" in serving and f"TENFOLD_PROJECT_ID={s.project_id}" in serving
    assert "cos-extensions install gpu" in serving, "the fleet has a GPU: the driver is installed"
    run_line = next(line for line in serving.splitlines() if line.startswith("docker run"))
    assert "--restart=always" in run_line and run_line.endswith(s.container_image), "serving runs the image's CMD"
    assert "--network host" in run_line and "$GPU_FLAGS" in run_line
    training = startup.training_startup_script(s)
    assert "--rm" in training and " ".join(startup.TRAINING_COMMAND) in training
    cpu = s.inference.fleet.model_copy(update={"accelerator_type": None, "accelerator_count": 0})
    assert "cos-extensions" not in startup.startup_script(s, cpu, "cpu", ["true"], detach=True)


def test_worker_main_without_a_run_id_exits_cleanly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(worker, "metadata_attribute", lambda key: None)
    assert worker.main() == 0
    monkeypatch.setattr(worker, "metadata_attribute", lambda key: json.dumps([]) if key != compute.RUN_ID_KEY else None)
    assert worker.main() == 0


def test_a_metadata_server_error_is_retried_and_never_read_as_no_run(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any failure read as "not set": a node of a real run met one 503 reading the run id, said "nothing to train",
    exited 0, and the run waited out its whole bound. Only a 404 means not set."""
    import http.server
    import threading

    answers = {"run": [503, 200], "gone": [404], "down": [500] * 10}
    served: list[str] = []

    class Metadata(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            key = self.path.rsplit("/", 1)[-1]
            served.append(key)
            code = answers[key].pop(0)
            self.send_response(code)
            self.end_headers()
            self.wfile.write(b"run-1" if code == 200 else b"")

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Metadata)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setattr(worker, "METADATA_URL", f"http://127.0.0.1:{server.server_address[1]}/attributes/")
    try:
        assert worker.metadata_attribute("run", sleep=lambda _s: None) == "run-1"
        assert worker.metadata_attribute("gone", sleep=lambda _s: None) is None
        with pytest.raises(RuntimeError, match=r"did not answer for 'down' after 5 tries"):
            worker.metadata_attribute("down", sleep=lambda _s: None)
    finally:
        server.shutdown()
    assert served.count("run") == 2 and served.count("down") == worker.METADATA_TRIES
