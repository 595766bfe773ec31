"""Benchmark: synthesize every stack of dev and prod in ONE process; time and peak memory.

Run:  .venv/bin/python bench/synth.py   (about a minute on 2 cores; writes bench/results/synth.md)

The measured run is a fresh process (so the ~10 s Google provider import is counted) that builds and
synthesizes the 4 stacks. Peak memory is the largest resident set of that process *plus* its jsii
Node child, sampled every 100 ms. The baseline, measured in the same run, is the naive layout the
issue warns against: one process per environment, each paying the provider import again. Its processes must
synthesize, between them, the same stacks and as many resources as the one process (else the bench refuses: the
two would not be the same work), and the report gives the counts each side synthesized.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import _siblings

ROOT = Path(__file__).resolve().parents[1]
TARGET_S = 15.0
CHILD_TIMEOUT_S = 600.0  # one synthesis takes seconds (a minute under heavy load): far past that, it is stuck

_CHILD = """
import json, os, sys, time
os.environ.setdefault("TENFOLD_SERVING__LOAD_BALANCER__DOMAIN", "bench.example.com")  # prod needs one to synthesize
t0 = time.perf_counter()
sys.path.insert(0, {root!r})
import cdktn, cdktn_provider_google.compute_instance_template  # noqa: F401 - the heavy import
from infra.stacks.synthesized import synthesize
from tenfold.config import get_settings
t1 = time.perf_counter()
res = synthesize(__import__("pathlib").Path({out!r}), [get_settings(e) for e in {envs!r}])
t2 = time.perf_counter()
n = sum(len(v) for st in res.stacks.values() for v in st.get("resource", {{}}).values())
print(json.dumps({{"import_s": t1 - t0, "synth_s": t2 - t1, "stacks": sorted(res.stacks), "resources": n}}))
"""


def _tree_rss(proc: Any) -> int:
    import psutil

    total = 0
    with contextlib.suppress(psutil.Error):
        for p in [proc, *proc.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):  # a child may exit between listing and reading
                total += p.memory_info().rss
    return total


def run_child(envs: list[str]) -> dict[str, Any]:
    """Synthesize ``envs`` in a fresh process; wall time, the child's own timings, peak RSS of its tree."""
    import psutil

    with tempfile.TemporaryDirectory() as out:
        code = _CHILD.format(root=str(ROOT), out=out, envs=envs)
        env = {**os.environ, "JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION": "20"}
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, env=env, cwd=ROOT)
        ps, peak, done = psutil.Process(proc.pid), [0], threading.Event()

        def sample() -> None:
            while not done.is_set():
                peak[0] = max(peak[0], _tree_rss(ps))
                time.sleep(0.1)  # each sample scans /proc: keep it light on a busy machine

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        try:
            stdout, stderr = proc.communicate(timeout=CHILD_TIMEOUT_S)
            wall = time.perf_counter() - start
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
        except BaseException as exc:
            # Past its time (or Ctrl-C): communicate kills nothing, and the child and its jsii Node child would
            # keep running while the temporary folder they write in is removed. Kill them, and wait for them.
            _siblings.kill_tree(proc.pid)
            proc.communicate()
            if isinstance(exc, subprocess.TimeoutExpired):
                raise SystemExit(f"bench/synth.py: the synth of {envs} did not finish in {CHILD_TIMEOUT_S:.0f} s: "
                                 "stopped it and its Node child; nothing written") from None
            raise
        finally:
            done.set()
            sampler.join()
    if proc.returncode != 0:
        raise SystemExit(f"synth of {envs} failed:\n{stderr[-3000:]}")
    result = json.loads(stdout.strip().splitlines()[-1])
    # CPU seconds of the process and its jsii Node child: steadier than wall time on a shared machine.
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    result.update(wall_s=wall, cpu_s=cpu, peak_rss_mib=peak[0] / 2**20, load_avg=os.getloadavg()[0])
    return result


def same_work(one: dict[str, Any], per_env: list[dict[str, Any]]) -> tuple[list[str], int]:
    """The stacks and the resource count the per-environment processes synthesized between them, which must be the
    one process's: a baseline that built fewer (an environment that synthesized nothing, a stack left out) would be
    timed on less work. Raises SystemExit, saying what differs, otherwise."""
    stacks = sorted(st for r in per_env for st in r["stacks"])
    resources = sum(int(r["resources"]) for r in per_env)
    if stacks != sorted(one["stacks"]) or resources != int(one["resources"]):
        raise SystemExit(
            "bench/synth.py: the one-process-per-environment baseline did not synthesize what the one process did "
            f"(stacks {stacks} and {resources} resources, against {sorted(one['stacks'])} and {one['resources']}): "
            "its time would be for other work; nothing written")
    return stacks, resources


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "synth.md")
    parser.add_argument("--no-baseline", action="store_true", help="skip the one-process-per-environment baseline")
    parser.add_argument("--repeat", type=_siblings.positive_int, default=3,
                        help="runs of each, interleaved; medians count")
    args = parser.parse_args(argv)

    ones: list[dict[str, Any]] = []
    bases: list[tuple[float, float]] = []  # (wall, CPU) of the two per-environment processes together
    base_stacks: list[str] = []
    base_resources = 0
    for _ in range(args.repeat):
        ones.append(run_child(["dev", "prod"]))
        if not args.no_baseline:
            per_env = [run_child([env]) for env in ("dev", "prod")]
            base_stacks, base_resources = same_work(ones[-1], per_env)
            bases.append((sum(float(r["wall_s"]) for r in per_env), sum(float(r["cpu_s"]) for r in per_env)))
    # Every figure of the row is the median over the runs, each on its own: the ratios and the verdict below are
    # computed from these same values (one run's wall and CPU, with an even --repeat, are neither median).
    timed = ("wall_s", "cpu_s", "import_s", "synth_s", "peak_rss_mib", "load_avg")
    one: dict[str, Any] = {**ones[-1], **{k: statistics.median(float(r[k]) for r in ones) for k in timed}}
    walls = [float(r["wall_s"]) for r in ones]
    print(f"one process, dev+prod (median of {len(ones)}): {one['wall_s']:.1f} s wall, {one['cpu_s']:.1f} s CPU (import "
          f"{one['import_s']:.1f} s, build+synth {one['synth_s']:.1f} s), peak RSS {one['peak_rss_mib']:.0f} MiB, "
          f"{len(one['stacks'])} stacks, {one['resources']} resources; target < {TARGET_S:.0f} s; every run "
          f"{', '.join(f'{w:.1f}' for w in walls)} s")
    base_wall = base_cpu = None
    if bases:
        base_wall = statistics.median(w for w, _ in bases)
        base_cpu = statistics.median(c for _, c in bases)
        print(f"baseline, one process per environment (median of {len(bases)}): {base_wall:.1f} s wall in total, "
              f"{len(base_stacks)} stacks, {base_resources} resources (the same as the one process), every "
              f"run {', '.join(f'{w:.1f}' for w, _ in bases)} s (ratio one-process/baseline: wall "
              f"{one['wall_s'] / base_wall:.2f}, CPU {one['cpu_s'] / base_cpu:.2f})")

    lines = [
        "# Synthesis benchmark (infra/)",
        "",
        f"Command: `.venv/bin/python bench/synth.py{' --repeat ' + str(args.repeat) if args.repeat != 3 else ''}"
        f"{' --no-baseline' if args.no_baseline else ''}` (fresh processes; Google provider import included; "
        f"{args.repeat} runs of each, interleaved, medians).",
        f"Machine: {os.cpu_count()} cores; CDK Terrain (cdktn) Python app, jsii on Node {_node_version()}.",
        "",
        f"Load average during the runs (median): {one['load_avg']:.1f} (other work shares the cores: wall time is "
        "noisy; CPU time is not).",
        "",
        "| what | wall s | CPU s (python + node) | import s | build+synth s | peak RSS MiB (python + jsii node) | stacks | resources |",
        "|---|---|---|---|---|---|---|---|",
        f"| dev + prod, one process (medians; every run {', '.join(f'{w:.1f}' for w in walls)} s) | "
        f"{one['wall_s']:.1f} | {one['cpu_s']:.1f} | {one['import_s']:.1f} | {one['synth_s']:.1f} | "
        f"{one['peak_rss_mib']:.0f} | {len(one['stacks'])} | {one['resources']} |",
    ]
    if base_wall is not None and base_cpu is not None:
        lines.append(f"| baseline: one process per environment (sum; medians; every run "
                     f"{', '.join(f'{w:.1f}' for w, _ in bases)} s) | {base_wall:.1f} | {base_cpu:.1f} | | | | "
                     f"{len(base_stacks)} | {base_resources} |")
        lines += ["", f"Ratio one process / baseline: wall {one['wall_s'] / base_wall:.2f}, CPU "
                  f"{one['cpu_s'] / base_cpu:.2f}."]
    verdict = "meets" if float(one["wall_s"]) < TARGET_S else "misses"
    lines += ["", f"Target: everything in under {TARGET_S:.0f} s on 2 cores; this run {verdict} it on wall time "
              f"({float(one['cpu_s']):.1f} s of CPU).", ""]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines))
    print(f"wrote {args.out.relative_to(ROOT) if args.out.is_relative_to(ROOT) else args.out}")
    return 0


def _node_version() -> str:
    try:
        return subprocess.run(["node", "--version"], capture_output=True, text=True, check=False).stdout.strip()
    except OSError:
        return "?"


if __name__ == "__main__":
    raise SystemExit(main())
