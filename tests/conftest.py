"""Shared fixtures: real local services on temporary homes and free ports.

Session-scoped and lazy: a process starts only when a test first asks for its fixture, and stops at
the end of the session. They never touch a running ``make up`` (other home, other ports).

* ``gcs_emulator`` -> endpoint URL of fake-gcs-server (e.g. ``http://127.0.0.1:40123``)
* ``pubsub_emulator`` -> ``host:port`` of Google's Pub/Sub emulator
* ``local_settings`` -> a local ``Settings`` whose home (and lake) is a temp dir and whose emulator
  endpoints are the two above; buckets and the Pub/Sub topology are provisioned. The lake is shared
  by the whole session: write under partitions/prefixes of your own.
* ``lake``, ``alerts``, ``stage`` -> the lake of ``settings``, the alerts its file hook received, and a
  writer of staged features batches (what the feature job leaves for the gate).
* ``make_settings`` -> THE way a test gets a ``Settings`` of its own: ``make_settings()`` is local
  settings on a fresh temp home (lake and alert file under it), no services; ``make_settings(on=
  local_settings)`` keeps that session's emulator endpoints with a fresh home, lake and registry
  prefix; keyword arguments replace fields or update sections (``storage={"features_table": "x"}``).
  ``settings`` is ``make_settings()`` for one test.
* ``own_topology`` -> local settings whose every topic and subscription has names of the test's own, provisioned on
  the session's emulator: what the test deletes or changes is never the session's.
* ``interrupted_after`` -> ``with interrupted_after(seconds): <wait>``: the wait is interrupted by an exception raised
  in the main thread after ``seconds`` (SIGALRM), as Airflow's task timeout or termination interrupts a waiting task;
  the block fails unless that exception came through it.
* ``airflow_env`` -> the environment for ``airflow dags test`` subprocesses: temp AIRFLOW_HOME with a
  migrated SQLite DB, the project's dags/, the emulators, and TENFOLD_* variables under which
  ``get_settings()`` in the subprocess equals ``local_settings``.
* ``flaky_webhook`` -> a :class:`FlakyWebhook`: a real alert webhook on loopback (``http.server`` in a thread) that
  answers the first ``failures`` POSTs with ``status`` (503) and 200 after; the alert hooks' pauses between tries
  are recorded in ``pauses`` instead of slept.
* ``stable_pool_serves`` -> ``stable_pool_serves(settings, version)``: the fleet status a supervisor that has died
  leaves behind, its stable pool serving ``version`` (what a rollout's plan checks; its deploy then finds no fleet).
* ``small_disk`` -> a :class:`SmallDisk`: a 256 KiB tmpfs mounted for one test (root only; skipped otherwise), where
  writes fail with ENOSPC for real. ``fill(leave=n)`` leaves ``n`` bytes free, ``free()`` gives the space back.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pydantic import SecretStr

from tenfold.config import Settings, build_settings
from tenfold.data.lake import Lake, Partition
from tenfold.local import LocalPlatformError, free_port, start_service, stop_service
from tenfold.local import local_settings as _local_settings
from tenfold.local.services import gcs_endpoint


def pytest_configure(config: pytest.Config) -> None:
    """A suite started in the background (``nohup``, ``&`` in a script, a CI runner) inherits SIGINT ignored, and so
    does every process a test starts (pytest-xdist's workers included): the tests of what Ctrl-C does sent a SIGINT
    that nothing heard, and waited out their timeouts. Each test process takes SIGINT back as a terminal's foreground
    process has it (its children then start with the default)."""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Test files with a test that needs the platform (marked integration or slow) first, each file kept together:
    `make test` hands its workers whole files in this order, and the longest (the lifecycle, over ten minutes) came
    late, running alone at the end while the other worker had nothing left. Among them, those given the longest
    timeout (the lifecycle's and the UI's, 30 min) first: in collection order the lifecycle started 30 minutes in."""
    heavy = {item.path for item in items if item.get_closest_marker("integration") or item.get_closest_marker("slow")}
    longest: dict[Path, float] = {}
    for item in items:
        marker = item.get_closest_marker("timeout")
        limit = float(marker.args[0]) if marker is not None and marker.args else 0.0
        longest[item.path] = max(longest.get(item.path, 0.0), limit)
    items.sort(key=lambda item: (item.path not in heavy, -longest[item.path]))  # stable: a file's tests stay together


@pytest.fixture(scope="session")
def tenfold_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The temporary local home (lake, emulator data, logs under run/) of this test session."""
    return tmp_path_factory.mktemp("tenfold-home")


def _start_on_free_port(home: Path, name: str, port_field: str) -> Settings:
    last: Exception | None = None
    for _ in range(3):  # a free port can be taken between choosing and binding it: try another
        settings = _local_settings(home, **{port_field: free_port()})
        try:
            start_service(settings, name, tie_to_this_process=True)  # stopped even if pytest is killed
            return settings
        except LocalPlatformError as exc:
            last = exc
            if "already in use" not in str(exc):
                break
    pytest.fail(f"could not start the {name} emulator for the tests: {last}")


@pytest.fixture(scope="session")
def gcs_emulator(tenfold_home: Path) -> Iterator[str]:
    settings = _start_on_free_port(tenfold_home, "gcs", "gcs_port")
    try:
        yield gcs_endpoint(settings)
    finally:
        stop_service(settings, "gcs")


@pytest.fixture(scope="session")
def pubsub_emulator(tenfold_home: Path) -> Iterator[str]:
    settings = _start_on_free_port(tenfold_home, "pubsub", "pubsub_port")
    try:
        yield settings.messaging.emulator_host or ""
    finally:
        stop_service(settings, "pubsub")


@pytest.fixture(scope="session")
def local_settings(tenfold_home: Path, gcs_emulator: str, pubsub_emulator: str) -> Settings:
    from tenfold.local import provision

    settings = _local_settings(
        tenfold_home,
        gcs_port=int(gcs_emulator.rsplit(":", 1)[1]),
        pubsub_port=int(pubsub_emulator.rsplit(":", 1)[1]),
        # Never bound by the fixtures; a distinct port keeps Airflow URLs in this session apart from `make up`.
        airflow_port=free_port(),
    )
    provision(settings)
    return settings


SettingsFactory = Callable[..., Settings]


@pytest.fixture(scope="session")
def make_settings(tmp_path_factory: pytest.TempPathFactory) -> SettingsFactory:
    """Settings on a fresh temp home each call (see the module docstring)."""

    def make(*, on: Settings | None = None, **update: Any) -> Settings:
        home = tmp_path_factory.mktemp("home")
        if on is None:
            base = build_settings("local", {"TENFOLD_HOME": str(home), "TENFOLD_ALERT_FILE": str(home / "alerts.jsonl")})
            sections: dict[str, Any] = {}
        else:
            base = on
            sections = {
                "local": on.local.model_copy(update={"home": home}),
                "monitoring": on.monitoring.model_copy(update={"alert_file": home / "alerts.jsonl"}),
                # The emulator and its buckets are shared by the session: a registry of its own.
                "storage": on.storage.model_copy(update={"lake_uri": (home / "lake").as_uri(),
                                                         "registry_prefix": f"registry-{uuid.uuid4().hex[:10]}"}),
            }
        for key, value in update.items():
            if isinstance(value, Mapping):
                section = sections.get(key, getattr(base, key))
                sections[key] = section.model_copy(update=dict(value))
            else:
                sections[key] = value
        return base.model_copy(update=sections)

    return make


@pytest.fixture
def own_topology(make_settings: SettingsFactory, local_settings: Settings) -> Settings:
    """The session's topology (every topic and subscription, as configured) under names of this test's own, provisioned:
    what the test deletes and changes is never the session's predictions or feedback subscriptions."""
    tag = f"topo-{uuid.uuid4().hex[:8]}"
    msg = local_settings.messaging
    subs = {kind: spec.model_copy(update={field: f"{tag}-{getattr(spec, field)}" for field in
                                          ("name", "topic", "dead_letter_topic", "dead_letter_subscription")})
            for kind, spec in msg.subscriptions.items()}
    settings = make_settings(on=local_settings, messaging={
        "requests_topic": f"{tag}-{msg.requests_topic}", "predictions_topic": f"{tag}-{msg.predictions_topic}",
        "feedback_topic": f"{tag}-{msg.feedback_topic}", "subscriptions": subs})
    assert set(settings.messaging.topics).isdisjoint(msg.topics)
    from tenfold.messaging import ensure_topology

    assert sorted(ensure_topology(settings).topics_created) == sorted(settings.messaging.topics)
    return settings


@pytest.fixture
def own_requests(make_settings: SettingsFactory, local_settings: Settings) -> Callable[..., Settings]:
    """``own_requests(attempts, **inference)`` -> settings whose inference requests topic, its workers' subscription and
    its dead-letter topic and subscription are of this test's own, provisioned: a 10 s ack deadline, ``attempts``
    deliveries before a dead letter, retried after 0 to 1 s, and a wait that polls every 0.2 s for up to 240 s
    (``inference`` sets more of settings.inference)."""
    from tenfold.config.settings import SubscriptionSettings
    from tenfold.messaging import ensure_topology

    def make(attempts: int, **inference: Any) -> Settings:
        tag = f"r{uuid.uuid4().hex[:8]}"
        topic = f"{tag}-requests"
        sub = SubscriptionSettings(name=f"{tag}-requests-workers", topic=topic, dead_letter_topic=f"{tag}-requests-dl",
                                   dead_letter_subscription=f"{tag}-requests-dl-sub", ack_deadline_s=10,
                                   max_delivery_attempts=attempts, min_retry_backoff_s=0, max_retry_backoff_s=1)
        messaging = local_settings.messaging.model_copy(update={"requests_topic": topic, "subscriptions": {"requests": sub}})
        settings = make_settings(on=local_settings, messaging=messaging, inference={
            "lease_extension_s": 10, "poll_interval_s": 0.2, "wait_timeout_s": 240, **inference})
        ensure_topology(settings)
        return settings

    return make


@pytest.fixture
def settings(make_settings: SettingsFactory) -> Settings:
    """Local settings on this test's own temp home, no services."""
    return make_settings()


@pytest.fixture
def lake(settings: Settings) -> Lake:
    return Lake.from_settings(settings)


@pytest.fixture
def alerts(settings: Settings) -> Callable[[], list[dict]]:
    """The alerts delivered to the file hook so far."""

    def read() -> list[dict]:
        path = settings.monitoring.alert_file
        assert path is not None
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []

    return read


@pytest.fixture
def stage(settings: Settings, lake: Lake) -> Callable[[pa.Table, Partition, str], str]:
    """Write ``table`` as the staged features batch ``attempt`` of ``part``; returns its URI."""

    def write(table: pa.Table, part: Partition, attempt: str = "a1") -> str:
        path = lake.staging_path(settings.storage.features_table, part, attempt)
        lake.fs.create_dir(path, recursive=True)
        pq.write_table(table, f"{path}/part-00000.parquet", filesystem=lake.fs)
        return lake.uri_of(path)

    return write


@pytest.fixture(scope="module")
def storage_client(gcs_emulator: str) -> Any:
    """A real storage client on the GCS emulator, with the dev artifacts bucket (where run markers live)."""
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    from tenfold.config import get_settings

    client = storage.Client(project="test", credentials=AnonymousCredentials(), client_options={"api_endpoint": gcs_emulator})
    bucket = get_settings("dev").storage.artifacts_bucket
    if client.lookup_bucket(bucket) is None:
        client.create_bucket(bucket)
    return client


@pytest.fixture(scope="session")
def airflow_env(local_settings: Settings) -> dict[str, str]:
    from tenfold.local import airflow_env as build_env
    from tenfold.local import ensure_airflow_db

    env = build_env(local_settings)
    ensure_airflow_db(env)
    return env


class _TaskInterrupted(Exception):
    pass


@pytest.fixture
def hung_pubsub(settings: Settings) -> Iterator[Settings]:
    """``settings`` whose Pub/Sub is a loopback port listened on and never served: the kernel accepts the real
    client's connection and nothing ever answers it, as with a SIGSTOPped or wedged emulator."""
    import socket

    with socket.create_server(("127.0.0.1", 0)) as hung:  # listening, never accepting
        host = f"127.0.0.1:{hung.getsockname()[1]}"
        yield settings.model_copy(update={"messaging": settings.messaging.model_copy(update={"emulator_host": host})})


@pytest.fixture
def interrupted_after() -> Callable[[float], contextlib.AbstractContextManager[None]]:
    @contextlib.contextmanager
    def interrupted(seconds: float) -> Iterator[None]:
        def interrupt(signum: int, frame: object) -> None:
            raise _TaskInterrupted("the task was interrupted")

        previous = signal.signal(signal.SIGALRM, interrupt)
        signal.setitimer(signal.ITIMER_REAL, seconds)
        try:
            with pytest.raises(_TaskInterrupted):
                yield
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)

    return interrupted


class FlakyWebhook:
    """An alert webhook on 127.0.0.1 that fails the first ``failures`` POSTs with ``status``, then answers 200."""

    def __init__(self) -> None:
        import http.server
        import threading

        self.failures, self.status = 0, 503
        self.tries = 0  # every POST, failed or not
        self.received: list[dict[str, Any]] = []  # the bodies answered 200
        self.authorization: list[str | None] = []  # each POST's Authorization header
        self.pauses: list[float] = []
        hook = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                hook.tries += 1
                hook.authorization.append(self.headers.get("Authorization"))
                failing = hook.failures > 0
                if failing:
                    hook.failures -= 1
                else:
                    hook.received.append(body)
                self.send_response(hook.status if failing else 200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def on(self, settings: Settings) -> Settings:
        """``settings`` with this webhook as its alert webhook."""
        return settings.model_copy(update={"monitoring": settings.monitoring.model_copy(
            update={"alert_webhook_url": SecretStr(self.url)})})


@pytest.fixture
def flaky_webhook(monkeypatch: pytest.MonkeyPatch) -> Iterator[FlakyWebhook]:
    from tenfold.monitoring import alerts

    hook = FlakyWebhook()
    monkeypatch.setattr(alerts, "_sleep", hook.pauses.append, raising=False)  # (the pauses asserted)
    yield hook
    hook.server.shutdown()
    hook.server.server_close()


class SmallDisk:
    """A small tmpfs mounted at ``path``: a real full disk (writes fail with ENOSPC, not a raised stand-in)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._filler = path / "filler"

    def free_bytes(self) -> int:
        st = os.statvfs(self.path)
        return st.f_bavail * st.f_frsize

    def fill(self, leave: int = 0) -> None:
        """Take the free space but ``leave`` bytes (rounded down to whole pages by tmpfs)."""
        with open(self._filler, "ab") as out:
            want = self.free_bytes() - leave
            if want > 0:
                with contextlib.suppress(OSError):  # ENOSPC: as full as it gets
                    out.write(b"\0" * want)
                    out.flush()
        assert self.free_bytes() <= max(leave, 0) + 4096, (self.free_bytes(), leave)

    def free(self) -> None:
        self._filler.unlink(missing_ok=True)


@pytest.fixture
def small_disk() -> Iterator[SmallDisk]:
    """A 256 KiB tmpfs for this test, unmounted at teardown (lazily if still busy), even when the test fails."""
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a small tmpfs (a real full disk)")
    # A short path of its own, not under tmp_path: a unix socket on it (HAProxy's runtime API) must fit in 107 bytes,
    # and pytest-xdist's basetemp (.../popen-gw0/<test name>) left too few.
    import tempfile

    mount_point = Path(tempfile.mkdtemp(prefix="tenfold-disk-"))
    try:
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount_point)], check=True,
                       capture_output=True, text=True)
    except (FileNotFoundError, subprocess.CalledProcessError) as exc:
        mount_point.rmdir()  # not mounted: the empty folder, left otherwise in /tmp by every skipped test
        if isinstance(exc, FileNotFoundError):
            pytest.skip("needs mount(8) to mount a small tmpfs (a real full disk)")
        # root without CAP_SYS_ADMIN (a default container)
        pytest.skip(f"cannot mount a small tmpfs (a real full disk): {exc.stderr.strip()}")
    try:
        yield SmallDisk(mount_point)
    finally:
        if subprocess.run(["umount", str(mount_point)], check=False, capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(mount_point)], check=False, capture_output=True)
        with contextlib.suppress(OSError):  # empty once unmounted (a lazy unmount may still hold it: left)
            mount_point.rmdir()


@pytest.fixture
def stable_pool_serves() -> Callable[..., None]:
    def write(settings: Any, version: str) -> None:
        from tenfold.serving import fleet

        replica = fleet.ReplicaStatus(pool=fleet.STABLE, slot=0, version=version, port=1, pid=0, state=fleet.SERVING,
                                      lb_status="UP", in_flight=0, log="")
        status = fleet.FleetStatus(generation=1, updated_at=0.0, supervisor_pid=0, haproxy_pid=None, pools={
            fleet.STABLE: fleet.PoolStatus(version=version, min=1, max=1, desired=1, utilization=0.0,
                                           replicas=[replica])})
        path = fleet.run_dir(settings) / fleet.STATUS_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(status.to_json())

    return write


@pytest.fixture
def killed_first_try() -> Iterator[Callable[[list[str], Path, Path], Any]]:
    """``run(argv, pid_file, records)``: start a task's first try (``argv``, a child in a session of its own) and wait
    until the job it started has written its pid to ``pid_file`` and its record under ``records``; then SIGKILL the
    try, as an eviction or the OOM killer would (no except, no finally runs in it). Returns the job's process, which
    the killed try left running. Whatever the try started is killed at teardown, the test failing or not."""
    import time

    import psutil

    started: list[subprocess.Popen[bytes]] = []
    left: list[Any] = []

    def run(argv: list[str], pid_file: Path, records: Path) -> Any:
        first = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
        started.append(first)
        deadline = time.monotonic() + 60
        while not (pid_file.is_file() and pid_file.read_text().strip()):
            assert first.poll() is None, f"the first try ended early: {first.communicate()[0].decode()}"
            assert time.monotonic() < deadline, "the first try's job did not start"
            time.sleep(0.05)
        orphan = psutil.Process(int(pid_file.read_text()))
        left.extend([orphan, psutil.Process(orphan.ppid())])  # the job's grandchild and its parent ("spark-submit")
        deadline = time.monotonic() + 10
        while not any(records.glob("*.json")) and time.monotonic() < deadline:  # recorded right after it started
            time.sleep(0.05)
        os.kill(first.pid, signal.SIGKILL)
        first.wait()
        assert orphan.is_running() and orphan.status() != psutil.STATUS_ZOMBIE  # what the killed try left running
        return orphan

    yield run
    for first in started:
        if first.poll() is None:  # the test failed before the kill: the try and all it started go
            with contextlib.suppress(psutil.Error):
                left.extend(psutil.Process(first.pid).children(recursive=True))
            first.kill()
        first.wait()
        if first.stdout is not None:
            first.stdout.close()
    for proc in left:
        with contextlib.suppress(psutil.Error):
            proc.kill()  # psutil refuses a pid that now names another process


# The retry's job, in the killed-try tests: writes whether the killed try's job is still alive as it starts.
_ORPHAN_PROBE = """
import sys
import psutil
try:
    p = psutil.Process(int(sys.argv[1]))
    # The same process: its start time within a second (psutil derives it from the boot time, which moves when the
    # wall clock is stepped, so an exact compare could call a live orphan "gone"), and still "sleep 300".
    alive = (abs(p.create_time() - float(sys.argv[2])) < 1.0 and p.status() != psutil.STATUS_ZOMBIE
             and "300" in p.cmdline())
except psutil.NoSuchProcess:
    alive = False
open(sys.argv[3], "w").write("alive" if alive else "gone")
"""


@pytest.fixture
def orphan_probe() -> Callable[[Any, Path], list[str]]:
    """``argv(orphan, seen)``: a command that, run as the retry's job, writes to ``seen`` whether ``orphan`` (what
    :func:`killed_first_try` returned) was still running when it started: "alive" or "gone"."""
    import sys

    def argv(orphan: Any, seen: Path) -> list[str]:
        return [sys.executable, "-c", _ORPHAN_PROBE, str(orphan.pid), repr(orphan.create_time()), str(seen)]

    return argv


@pytest.fixture
def register_tiny_version() -> Callable[[Settings, Path, int], str]:
    """``register(settings, folder, seed)``: a small model folder of its own bytes (per ``seed``), registered with a
    lineage of one January partition; returns its version. For tests of what moves aliases, not of models."""
    def register(settings: Settings, where: Path, seed: int) -> str:
        from tenfold.registry import ModelRegistry
        from tenfold.registry.lineage import Lineage, PartitionRef

        where.mkdir()
        (where / "weights.pt").write_bytes(bytes((seed * 7 + i) % 256 for i in range(4096)))
        # A meta.json this code reads (rollout and promotion check it before anything loads it).
        from tenfold.model_files import META_VERSION

        (where / "meta.json").write_text(json.dumps({"version": META_VERSION, "seed": seed}))
        (where / "preprocessing.json").write_text(json.dumps({"seed": seed}))
        ref = PartitionRef(partition="2013-01", data_dir="data-abc", rows=10, schema_hash="s", run_id="r1",
                           manifest_sha256="m" * 64)
        lineage = Lineage(feature_table="features", train_partitions=(ref,), holdout_partitions=(),
                          training_config={}, run_id="test-run")
        return ModelRegistry(settings).register(where, lineage, metrics={"auc": 0.7}).version

    return register


@pytest.fixture
def published_lake(tmp_path: Path) -> Callable[..., Path]:
    """``make(tables, part, quarantined=table)``: a lake folder, ``tmp_path/real/lake`` (no settings, no manifests),
    holding ``part`` published in each of ``tables`` (a data folder and its _SUCCESS) and a batch of ``part`` kept in
    ``quarantine/<quarantined>/``; returns the folder. For tests that a job leaves the lake's data as it was."""
    def make(tables: tuple[str, ...], part: Partition, *, quarantined: str) -> Path:
        lake = tmp_path / "real" / "lake"
        for table in tables:
            month = lake / table / part.path
            (month / "data-0123456789abcdef").mkdir(parents=True)
            (month / "_SUCCESS").write_text("{}")
            (month / "data-0123456789abcdef" / "part-00000.parquet").write_bytes(b"published")
        kept = lake / "quarantine" / quarantined / part.path / "attempt-1"
        kept.mkdir(parents=True)
        (kept / "part-00000.parquet").write_bytes(b"evidence")
        return lake

    return make


@pytest.fixture
def unwritable() -> Callable[[Path], contextlib.AbstractContextManager[None]]:
    """``with unwritable(folder):`` the folder refuses new entries for real: read-only for a user, immutable
    (chattr +i) for root, whom modes do not stop; skips where root has no chattr +i."""
    import shutil

    @contextlib.contextmanager
    def refusing(folder: Path) -> Iterator[None]:
        if os.geteuid() != 0:
            folder.chmod(0o555)
            try:
                yield
            finally:
                folder.chmod(0o755)
            return
        if shutil.which("chattr") is None or subprocess.run(["chattr", "+i", str(folder)],
                                                            capture_output=True).returncode:
            pytest.skip("running as root on a filesystem without chattr +i: nothing makes a folder unwritable to root")
        try:
            yield
        finally:
            subprocess.run(["chattr", "-i", str(folder)], check=True)

    return refusing


class TcpRelay:
    """A TCP relay on loopback to ``target`` (host, port): what a client reaches an emulator through, until
    :meth:`cut` closes it and every connection it carries (the service gone from this machine's view). With
    ``cut_on``, the relay cuts itself when a client sends those bytes, which then never reach the service."""

    def __init__(self, target: tuple[str, int], *, cut_on: bytes | None = None) -> None:
        import socket
        import threading

        self.target, self.cut_on = target, cut_on
        self.conns: list[socket.socket] = []
        self.cut_ = threading.Event()
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        import socket
        import threading

        while not self.cut_.is_set():
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            self.conns += [client, upstream]
            threading.Thread(target=self._pipe, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, False), daemon=True).start()

    def _pipe(self, a: Any, b: Any, from_client: bool) -> None:
        import socket

        watch = self.cut_on if from_client else None
        tail = b""
        try:
            while data := a.recv(65536):
                if watch and watch in tail + data:  # (tail: the bytes split between two reads)
                    self.cut()
                    return
                if watch:
                    tail = (tail + data)[-len(watch):]
                b.sendall(data)
        except OSError:
            pass
        with contextlib.suppress(OSError):
            b.shutdown(socket.SHUT_WR)

    def cut(self) -> None:
        import socket

        self.cut_.set()
        with contextlib.suppress(OSError):  # a close alone leaves a socket blocked in accept() listening
            self.server.shutdown(socket.SHUT_RDWR)
        self.server.close()
        for conn in self.conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()


@pytest.fixture
def tcp_relay() -> type[TcpRelay]:
    """:class:`TcpRelay`: ``tcp_relay((host, port))`` relays to an emulator until ``.cut()`` (or ``cut_on`` bytes)."""
    return TcpRelay
