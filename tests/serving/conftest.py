"""Fixtures of the model server's tests (and of the fleet's and the benchmark's): a real registry with
two small flights models, one month of lookups in the lake, and real replica processes.

Session-scoped, started on first use:

* ``serving_settings`` -> local ``Settings`` on a fresh home with a GCS emulator of its own (so its
  registry and its ``champion`` never meet other tests' registries) and the session's Pub/Sub emulator
  under a project id of its own (its topics and subscriptions are private too); buckets and topology are
  provisioned, one month (:data:`SERVED_MONTH`) of synthetic features and synthetic lookup tables is
  published, and two model versions are registered. ``settings_env(serving_settings)`` reproduces these
  exact settings in a child process, so replica processes see the same registry, lake and topics.
* ``served_versions`` -> :class:`ServedVersions`: ``champion`` (alias ``champion``) and ``challenger``
  (alias ``challenger``), two versions of the same small network with different weights. Do not move
  these aliases (other tests rely on them): serve a version by its id instead (``--model <id>``).
* ``serving_env`` -> the environment for a replica process (this process's, plus ``settings_env``).
* ``serving_token`` -> the bearer token of ``serving_settings`` (``ensure_token``).

Per test (``waits``, ``server_fields`` and ``pubsub_tools`` are plain helpers, session-scoped):

* ``sample_flight`` -> a request body the lookups can score (a fresh dict each time).
* ``make_client(settings=None, arm=, model=, app_kwargs=, **server_fields)`` -> a ready ``TestClient`` on
  ``create_app`` (lifespan run, model loaded); ``server_fields`` replace ``settings.serving.server``
  fields, ``app_kwargs`` go to ``create_app`` (``loader``, ``cache``, ``on_fatal``). ``auth`` -> the
  ``Authorization`` header dict.
* ``waits`` -> ``.ready(client)`` and ``.until(check, timeout)``; ``server_fields(settings, **fields)`` ->
  ``settings`` with ``serving.server`` fields replaced.
* ``pubsub_tools`` -> ``.subscribe(settings, topic)``: a fresh subscription on ``topic``;
  ``.pull(settings, subscription, n, timeout=20)``: up to ``n`` message bodies (acknowledged).
* ``start_replica(arm="stable", model="champion", port=None, env=None, wait=True, argv=None)`` -> a
  :class:`Replica`: a real ``python -m tenfold.serving`` process (or ``argv``), ready (``/readyz`` 200)
  unless ``wait=False``, stopped after the test. ``Replica.get(path)``, ``.log()``, ``.wait_exit(timeout)``.
  ``replica_argv(port, arm, model)`` (module function) is the entry command.
* ``own_pubsub`` -> a :class:`PubSubEmulator` of this test's own (a fresh emulator on a free port, the
  topology provisioned) that the test may stop and start for real; ``own_pubsub.settings`` is
  ``serving_settings`` pointed at it.

Module functions for code outside pytest's fixtures (e.g. a benchmark's own setup): ``synthetic_lookups``
/ ``publish_synthetic_lookups`` (one month of lookup tables shaped as the flights transform writes them),
``save_small_model`` / ``register_small_model``, ``replica_argv``.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tenfold.config import Settings
from tenfold.data.lake import Lake, Partition
from tenfold.features.online import lookup_table
from tenfold.local import free_port, local_settings, provision, settings_env, start_service, stop_service
from tenfold.local import process as processes
from tenfold.messaging import ensure_topology
from tenfold.registry import CHALLENGER, CHAMPION, Lineage, ModelRegistry, PartitionRef
from tenfold.serving.auth import ensure_token
from tenfold.workloads.flights.contract import CONTRACT, WEATHER_COLUMNS
from tenfold.workloads.flights.synthetic import CARRIERS, DESTS, ORIGINS, publish_synthetic_features

SERVED_MONTH = Partition(2013, 1)
SERVING_PROJECT = "tenfold-serving-tests"
# Airport time zones of the synthetic lookups (the origins are New York's).
_ZONES = {"ATL": "America/New_York", "BOS": "America/New_York", "BWI": "America/New_York", "CLT": "America/New_York",
          "DCA": "America/New_York", "DEN": "America/Denver", "DFW": "America/Chicago", "DTW": "America/Detroit",
          "FLL": "America/New_York", "IAD": "America/New_York", "IAH": "America/Chicago", "LAS": "America/Los_Angeles",
          "LAX": "America/Los_Angeles", "MCO": "America/New_York", "MIA": "America/New_York", "MSP": "America/Chicago",
          "ORD": "America/Chicago", "PHL": "America/New_York", "PIT": "America/New_York", "RDU": "America/New_York",
          "SEA": "America/Los_Angeles", "SFO": "America/Los_Angeles", "STL": "America/Chicago", "TPA": "America/New_York",
          **{o: "America/New_York" for o in ORIGINS}}


# --- synthetic lookups ------------------------------------------------------------------------------

def synthetic_lookups(part: Partition, seed: int = 0) -> dict[str, pa.Table]:
    """Lookup tables of one month, shaped as the flights transform's ``lookups`` writes them, over the
    synthetic generator's carriers, airports and tail numbers (every hour of the month has weather)."""
    rng = np.random.default_rng([seed, part.year, part.month])
    airports = sorted(_ZONES)
    routes = [(o, d) for o in ORIGINS for d in DESTS]
    first = dt.datetime(part.year, part.month, 1, tzinfo=dt.UTC) - dt.timedelta(days=1)
    nxt = part.next()
    hours = int((dt.datetime(nxt.year, nxt.month, 1, tzinfo=dt.UTC) + dt.timedelta(days=2) - first).total_seconds() // 3600)
    times = [first + dt.timedelta(hours=h) for h in range(hours)]
    weather: dict[str, Any] = {"origin": [o for o in ORIGINS for _ in times], "time_hour": times * len(ORIGINS)}
    n = len(weather["origin"])
    for c in WEATHER_COLUMNS:
        weather[c] = rng.uniform(0, 60, n)
    tailnums = [f"N{i:04d}" for i in range(500)]
    hist_hours = list(range(5, 24))

    def history(prefix: str, keys: dict[str, list[Any]]) -> pa.Table:
        size = len(next(iter(keys.values())))
        return pa.table({**keys, f"{prefix}_delay_rate": rng.uniform(0.1, 0.4, size),
                         f"{prefix}_mean_delay": rng.uniform(0, 30, size),
                         f"{prefix}_flights": rng.integers(10, 500, size).astype(float)})

    return {
        "airports": pa.table({"faa": airports, "tzone": [_ZONES[a] for a in airports]}),
        "carriers": pa.table({"carrier": list(CARRIERS)}),
        "routes": pa.table({"origin": [o for o, _ in routes], "dest": [d for _, d in routes],
                            "distance": rng.uniform(150, 2500, len(routes))}),
        "planes": pa.table({"tailnum": tailnums, "year_built": pa.array(rng.integers(1990, 2012, 500), pa.int32()),
                            "plane_seats": rng.choice([50.0, 140.0, 180.0], 500)}),
        "weather": pa.table({**weather, "time_hour": pa.array(weather["time_hour"], pa.timestamp("us", tz="UTC"))}),
        "route_history": history("route", {"origin": [o for o, _ in routes], "dest": [d for _, d in routes]}),
        "carrier_history": history("carrier", {"carrier": list(CARRIERS)}),
        "origin_hour_history": history("origin_hour", {"origin": [o for o in ORIGINS for _ in hist_hours],
                                                       "sched_dep_hour": pa.array(hist_hours * len(ORIGINS), pa.int32())}),
    }


def publish_synthetic_lookups(settings: Settings, part: Partition, seed: int = 0) -> None:
    """Publish :func:`synthetic_lookups` as ``build_features`` publishes lookups (one lake table each)."""
    lake = Lake.from_settings(settings)
    for name, table in synthetic_lookups(part, seed).items():
        with tempfile.TemporaryDirectory(prefix="tenfold-lookups-") as tmp:
            pq.write_table(table, Path(tmp) / "part-0.parquet")
            lake.publish(lookup_table(settings.storage.lookups_table, name), part, tmp, run_id=f"synthetic-{seed}",
                         extra=CONTRACT.manifest_extra(synthetic=True))


# --- small models in a registry -----------------------------------------------------------------------

def save_small_model(directory: Path, seed: int) -> Path:
    """A small, untrained flights network (weights from ``seed``) saved as a model folder."""
    import torch

    from tenfold.model import Preprocessor, save_model
    from tenfold.workloads.flights import WORKLOAD
    from tenfold.workloads.flights.model import FlightDelayModel, ModelConfig
    from tenfold.workloads.flights.synthetic import synthetic_features

    pre = Preprocessor.fit(synthetic_features(SERVED_MONTH, 300, seed=1), CONTRACT)
    config = ModelConfig(embedding_dim=4, hidden=(8,), dropout=0.0)
    torch.manual_seed(seed)
    model = FlightDelayModel(config, list(pre.vocab_sizes.values()), pre.num_inputs)
    save_model(directory, model, config, pre, workload=WORKLOAD.name)
    return directory


def register_small_model(settings: Settings, directory: Path, seed: int) -> str:
    ref = PartitionRef(partition=SERVED_MONTH.label, data_dir="data-synthetic", rows=300, schema_hash="synthetic",
                       run_id="serving-tests", manifest_sha256="0" * 64)
    lineage = Lineage(feature_table=settings.storage.features_table, train_partitions=(ref,), holdout_partitions=(),
                      training_config={"seed": seed}, run_id=f"serving-tests-{seed}")
    metrics = {"auc": 0.5 + seed / 100, "log_loss": 0.69}
    return ModelRegistry(settings).register(save_small_model(directory, seed), lineage, metrics=metrics).version


@dataclass(frozen=True)
class ServedVersions:
    champion: str
    challenger: str


@pytest.fixture(scope="session")
def serving_settings(tmp_path_factory: pytest.TempPathFactory, pubsub_emulator: str) -> Iterator[Settings]:
    home = tmp_path_factory.mktemp("serving-home")
    settings = local_settings(home, project_id=SERVING_PROJECT, gcs_port=free_port(),
                              pubsub_port=int(pubsub_emulator.rsplit(":", 1)[1]))
    start_service(settings, "gcs", tie_to_this_process=True)
    try:
        provision(settings)
        publish_synthetic_features(Lake.from_settings(settings), [SERVED_MONTH], 200, seed=5)
        publish_synthetic_lookups(settings, SERVED_MONTH)
        yield settings
    finally:
        stop_service(settings, "gcs")


@pytest.fixture(scope="session")
def served_versions(serving_settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> ServedVersions:
    models = tmp_path_factory.mktemp("serving-models")
    champion = register_small_model(serving_settings, models / "a", seed=0)
    challenger = register_small_model(serving_settings, models / "b", seed=1)
    registry = ModelRegistry(serving_settings)
    registry.set_alias(CHAMPION, champion, reason="serving tests")
    registry.set_alias(CHALLENGER, challenger, reason="serving tests")
    return ServedVersions(champion, challenger)


@pytest.fixture(scope="session")
def serving_env(serving_settings: Settings) -> dict[str, str]:
    return {**os.environ, **settings_env(serving_settings), "PYTHONUNBUFFERED": "1"}


@pytest.fixture(scope="session")
def serving_token(serving_settings: Settings) -> str:
    return ensure_token(serving_settings)


@pytest.fixture
def auth(serving_token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {serving_token}"}


@pytest.fixture
def sample_flight() -> dict[str, Any]:
    return {"carrier": "UA", "flight": 1545, "origin": "EWR", "dest": "IAH", "sched_dep": "2013-01-01T05:15:00",
            "sched_arr": "2013-01-01T08:19:00", "tailnum": "N0042", "user_key": "u-123"}


# --- in-process apps --------------------------------------------------------------------------------

def with_server(settings: Settings, **server_fields: Any) -> Settings:
    """``settings`` with some ``serving.server`` fields replaced."""
    if not server_fields:
        return settings
    server = settings.serving.server.model_copy(update=server_fields)
    return settings.model_copy(update={"serving": settings.serving.model_copy(update={"server": server})})


def wait_ready(client: Any, timeout: float = 60.0, path: str = "/readyz") -> None:
    """Poll ``path`` of a TestClient until the app is ready; fail with its detail if it failed to load."""
    deadline = time.monotonic() + timeout
    while True:
        body = client.get(path).json()
        if body.get("ready"):
            return
        if body.get("status") == "failed":
            raise AssertionError(f"the app failed to load: {body.get('detail')}")
        if time.monotonic() > deadline:
            raise AssertionError(f"the app was not ready within {timeout} s: {body}")
        time.sleep(0.05)


@pytest.fixture
def make_client(serving_settings: Settings, served_versions: ServedVersions, serving_token: str) -> Iterator[Callable[..., Any]]:
    from fastapi.testclient import TestClient

    from tenfold.serving.app import create_app

    opened: list[Any] = []

    def make(settings: Settings | None = None, *, arm: str = "stable", model: str | None = None,
             ready: bool = True, raise_server_exceptions: bool = True, app_kwargs: dict[str, Any] | None = None,
             **server_fields: Any) -> Any:
        s = with_server(settings or serving_settings, **server_fields)
        app = create_app(s, arm=arm, model_ref=model, **(app_kwargs or {}))
        client = TestClient(app, raise_server_exceptions=raise_server_exceptions)
        client.__enter__()
        opened.append(client)
        if ready:
            wait_ready(client)
        return client

    yield make
    for client in reversed(opened):
        client.__exit__(None, None, None)


# --- replica processes ------------------------------------------------------------------------------

@dataclass
class Replica:
    """A running ``python -m tenfold.serving`` process."""

    url: str
    port: int
    arm: str
    model: str
    record: processes.ProcessRecord
    argv: list[str] = field(default_factory=list)

    @property
    def pid(self) -> int:
        return self.record.pid

    def get(self, path: str, timeout: float = 5.0) -> tuple[int, Any]:
        try:
            with urllib.request.urlopen(self.url + path, timeout=timeout) as resp:
                return resp.status, _body(resp.read())
        except urllib.error.HTTPError as err:
            return err.code, _body(err.read())

    def log(self) -> str:
        return Path(self.record.log).read_text(errors="replace")

    def wait_exit(self, timeout: float) -> int | None:
        """The process's exit status once it ended (None: it did not end within ``timeout``)."""
        import psutil

        try:
            return psutil.Process(self.record.pid).wait(timeout)
        except psutil.TimeoutExpired:
            return None
        except psutil.NoSuchProcess:
            return None


def _body(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return raw.decode(errors="replace")


def replica_argv(port: int, arm: str, model: str, host: str = "127.0.0.1") -> list[str]:
    """The entry command: what the local fleet and the image's CMD run."""
    return [sys.executable, "-m", "tenfold.serving", "--host", host, "--port", str(port), "--arm", arm, "--model", model]


@pytest.fixture
def start_replica(serving_settings: Settings, serving_env: dict[str, str], served_versions: ServedVersions,
                  serving_token: str, tmp_path: Path) -> Iterator[Callable[..., Replica]]:
    started: list[Replica] = []

    def start(arm: str = "stable", model: str = CHAMPION, port: int | None = None, env: dict[str, str] | None = None,
              wait: bool = True, timeout: float = 90.0, argv: list[str] | None = None) -> Replica:
        port = port or free_port()
        argv = argv or replica_argv(port, arm, model, serving_settings.local.bind_host)
        name = f"replica-{arm}-{port}-{uuid.uuid4().hex[:6]}"
        record = processes.start(name, argv, run_dir=tmp_path / "run", port=port, env=env or serving_env,
                                 tie_to_this_process=True)
        replica = Replica(f"http://{serving_settings.local.bind_host}:{port}", port, arm, model, record, argv)
        started.append(replica)
        if wait:
            processes.wait_until(lambda: replica.get("/readyz", timeout=1.0)[0] == 200, timeout=timeout,
                                 what=f"replica {name}", record=record)
        return replica

    yield start
    for replica in started:
        processes.stop(replica.record, timeout=30.0)


# --- a Pub/Sub emulator of one test's own -------------------------------------------------------------

@dataclass
class PubSubEmulator:
    """A Pub/Sub emulator a test may stop and restart for real (it loses its topics when stopped)."""

    control: Settings  # the settings start/stop_service act on (its own home and port)
    settings: Settings  # serving_settings pointed at this emulator

    @property
    def host(self) -> str:
        return self.settings.messaging.emulator_host or ""

    def start(self) -> None:
        start_service(self.control, "pubsub", tie_to_this_process=True)
        ensure_topology(self.settings)

    def stop(self) -> None:
        stop_service(self.control, "pubsub")


@pytest.fixture
def own_pubsub(serving_settings: Settings, tmp_path: Path) -> Iterator[PubSubEmulator]:
    port = free_port()
    home = tmp_path / "own-pubsub"
    control = local_settings(home, project_id=SERVING_PROJECT, pubsub_port=port)
    host = f"{serving_settings.local.bind_host}:{port}"
    settings = serving_settings.model_copy(update={
        "messaging": serving_settings.messaging.model_copy(update={"emulator_host": host}),
        "local": serving_settings.local.model_copy(update={"pubsub_port": port}),
    })
    emulator = PubSubEmulator(control, settings)
    emulator.start()
    try:
        yield emulator
    finally:
        emulator.stop()
        shutil.rmtree(home, ignore_errors=True)


# --- reading what the server published ----------------------------------------------------------------

def subscribe(settings: Settings, topic: str) -> str:
    """A new subscription on ``topic`` (created now, so it sees only what is published from now on)."""
    from tenfold.messaging import subscriber_client, subscription_path, topic_path

    path = subscription_path(settings, f"test-{uuid.uuid4().hex[:12]}")
    with subscriber_client(settings) as sub:
        sub.create_subscription(request={"name": path, "topic": topic_path(settings, topic)}, timeout=30)
    return path


def pull_messages(settings: Settings, subscription: str, n: int, timeout: float = 20.0,
                  quiet_s: float = 0.0) -> list[Any]:
    """Up to ``n`` messages (body and attributes) from ``subscription`` (acknowledged), waiting up to ``timeout`` s.

    With ``quiet_s``, all of them, past ``n`` too, once ``n`` came: pulled until none came for ``quiet_s`` seconds
    (or ``timeout``). Stopping at ``n`` never pulls a copy published after the originals, so a test that counts
    them cannot see a message sent twice."""
    from tenfold.messaging import subscriber_client

    out: list[Any] = []
    deadline = time.monotonic() + timeout
    last = time.monotonic()
    with subscriber_client(settings) as sub:
        while (len(out) < n or (quiet_s > 0 and time.monotonic() - last < quiet_s)) and time.monotonic() < deadline:
            resp = sub.pull(request={"subscription": subscription, "max_messages": 100}, timeout=10)
            if resp.received_messages:
                last = time.monotonic()
                out += [m.message for m in resp.received_messages]
                sub.acknowledge(request={"subscription": subscription,
                                         "ack_ids": [m.ack_id for m in resp.received_messages]})
            else:
                time.sleep(0.2)
    return out


def pull(settings: Settings, subscription: str, n: int, timeout: float = 20.0) -> list[bytes]:
    """Up to ``n`` message bodies from ``subscription`` (acknowledged), waiting up to ``timeout`` seconds."""
    return [m.data for m in pull_messages(settings, subscription, n, timeout)]


@dataclass(frozen=True)
class PubSubTools:
    """``subscribe(settings, topic)``, ``pull(settings, subscription, n, timeout=20)`` (bodies) and
    ``pull_messages`` (the same, whole messages; ``quiet_s`` pulls past ``n``) as a fixture."""

    subscribe: Callable[[Settings, str], str]
    pull: Callable[..., list[bytes]]
    pull_messages: Callable[..., list[Any]]


@pytest.fixture(scope="session")
def pubsub_tools() -> PubSubTools:
    return PubSubTools(subscribe, pull, pull_messages)


def until(check: Callable[[], bool], timeout: float, interval: float = 0.05) -> None:
    """Poll ``check`` until it is true; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(interval)


@pytest.fixture(scope="session")
def waits() -> Any:
    """``waits.ready(client)`` (a TestClient's app is ready) and ``waits.until(check, timeout)``."""
    from types import SimpleNamespace

    return SimpleNamespace(ready=wait_ready, until=until)


@pytest.fixture(scope="session")
def server_fields() -> Callable[..., Settings]:
    """``server_fields(settings, **fields)``: ``settings`` with ``serving.server`` fields replaced."""
    return with_server


@pytest.fixture(scope="session")
def register_model(serving_settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Callable[[int], str]:
    """``register_model(seed)``: a small flights model (weights from ``seed``) registered; its version id."""
    models = tmp_path_factory.mktemp("more-models")
    return lambda seed: register_small_model(serving_settings, models / f"m{seed}", seed=seed)
