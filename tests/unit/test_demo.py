"""The demo's closing table tells only what happened (the whole demo runs in tests/integration/test_lifecycle.py)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import psutil
import pytest

from tenfold import demo
from tenfold.config import Settings
from tenfold.data.lake import Lake, Partition, month_range


def test_the_first_champions_auc_on_a_month_it_was_trained_on_is_marked_in_sample() -> None:
    trained = demo.MonthRow("2013-08", auc_first=0.71, first_trained_on_it=True)
    later = demo.MonthRow("2013-11", auc_first=0.66)
    assert trained.cells()[5] == "0.7100 (trained on it)" and later.cells()[5] == "0.6600"
    assert demo.MonthRow("2013-08", first_trained_on_it=True).cells()[5] == "n/a"


def test_a_rollout_run_that_failed_is_not_shown_as_no_run(make_settings: Callable[..., Settings],
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """It moved the canary to 10 % and failed before deciding: the table said "no run"."""
    import tenfold.registry
    import tenfold.rollout.record

    monkeypatch.setattr(tenfold.registry, "ModelRegistry", lambda settings: object())
    monkeypatch.setattr(tenfold.rollout.record, "latest",
                        lambda registry, version: ("r1", {"1-set": {"step": 1, "percent": 10}}))
    api = SimpleNamespace(runs=lambda dag_id: [{"dag_run_id": "r1"}], run=lambda dag_id, run_id: {"state": "failed"},
                          failed_tasks=lambda dag_id, run_id: ["step_1"])
    said: list[str] = []
    outcome = demo.follow_rollout(make_settings(), api, set(), "v2", said.append)  # type: ignore[arg-type]
    assert outcome == "failed"
    assert "  step 1: canary at 10 %" in said and any("failed in step_1" in line for line in said)


def test_no_flights_to_send_leaves_the_traffic_thread_idle(make_settings: Callable[..., Settings],
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """`tenfold demo --flights 0`: the sender used to spin on its empty list, a core at 100 % per replayed month."""
    import tenfold.demo as module

    monkeypatch.setattr(module, "get_workload", lambda settings: SimpleNamespace(replay=lambda month: []))
    me = psutil.Process()

    def cpu_of(native_id: int | None) -> float:  # the sender thread's own CPU seconds (not the process's)
        return next(t.user_time + t.system_time for t in me.threads() if t.id == native_id)

    with demo.Traffic(make_settings(), Partition(2013, 7), 0) as live:
        before = cpu_of(live._thread.native_id)
        time.sleep(1.0)
        used = cpu_of(live._thread.native_id) - before
    assert live.items == [] and used < 0.05, f"the sender thread used {used:.2f} CPU s in 1 s with nothing to send"


@pytest.mark.parametrize("case", ["one dropped", "dropped by a replica replaced since", "short beyond the drops",
                                  "an outcome not landed"])
def test_a_prediction_sample_a_replica_dropped_is_said_not_blamed_on_the_feedback_sink(
        make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch, case: str) -> None:
    """A prediction's sample is fire-and-forget: one a replica dropped (its Pub/Sub breaker open while the emulator
    stalled on a loaded machine) was answered 200 all the same and never lands, nor joins its outcome. The month waited
    180 s for it, said "the feedback sink did not land the demo's N outcomes" of a healthy sink and failed, stopping
    the replay. The wait is for what the replicas published (as their /metrics count it), and the drop is said with
    its reason; every outcome answered 202 is still waited for, in full, and a prediction published that never lands
    is still the sink's failure."""
    import datetime as dt
    import http.server
    import threading

    import pyarrow as pa

    import tenfold.feedback
    from tenfold.feedback.log import write_batch
    from tenfold.feedback.schema import FEEDBACK_LOG
    from tenfold.serving import fleet
    from tenfold.serving.metrics import ServerMetrics
    from tenfold.serving.traffic import TrafficReport

    settings = make_settings()
    since = dt.datetime.now(dt.UTC)
    report = TrafficReport()
    report.statuses[200], report.feedback[202] = 3, 3  # three flights answered, their three outcomes accepted
    # The sink landed the three outcomes (one of them, here, not), received after `since`.
    now = dt.datetime.now(dt.UTC)
    landed = 2 if case == "an outcome not landed" else 3
    rows = pa.Table.from_pylist([{"prediction_id": f"p{i}", "outcome": 1, "observed_at": now, "received_at": now,
                                  "schema_version": 1, "message_id": f"m{i}", "publish_time": now,
                                  "delivery_attempt": 1, "landed_at": now} for i in range(landed)], schema=FEEDBACK_LOG)
    write_batch(Lake.from_settings(settings), settings.storage.feedback_table, Partition.from_date(now), rows)
    # The lake's join: of the three predictions answered, the one whose sample was dropped never landed (two with
    # "short beyond the drops"), and its outcome has none to join.
    served = 1 if case == "short beyond the drops" else 2
    joined = [SimpleNamespace(group={"model_version": "v1", "arm": "stable"}, served=served,
                              metrics=SimpleNamespace(count=served, auc=None, log_loss=None, accuracy=None))]
    monkeypatch.setattr(tenfold.feedback, "online_metrics", lambda *a, **k: joined)
    monkeypatch.setattr(tenfold.feedback, "join", lambda settings: None)
    monkeypatch.setattr(demo, "FEEDBACK_TIMEOUT_S", 0)  # one look: what it decides then is what it decides at last
    # The fleet's one replica, answering its /metrics: two samples published, one dropped while the breaker was open.
    metrics = ServerMetrics("stable")
    metrics.set_model_version("v1")
    metrics.sample_published(2)
    if case == "dropped by a replica replaced since":
        # The drop was on a replica a rollout replaced within the month: its /metrics went with it, and what it
        # counted is in the exit record it left. Records of replicas that ended before `since`, and one of a replica
        # the look above reads live (its pid), are not counted.
        ended = fleet.ended_dir(settings)
        ended.mkdir(parents=True)
        for name, pid, at, dropped in (("gone", 4242, since.timestamp() + 1, {"breaker_open": 1}),
                                       ("last-month", 4243, since.timestamp() - 60, {"buffer_full": 5}),
                                       ("live", 1, since.timestamp() + 1, {"buffer_full": 7})):
            (ended / f"{name}.json").write_text(json.dumps({"pid": pid, "ended_at": at, "dropped": dropped}))
    else:
        metrics.sample_dropped("breaker_open")

    class Replica(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            found = self.path == settings.serving.server.metrics_path
            body = metrics.exposition() if found else b"not found"
            self.send_response(200 if found else 404)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer((settings.local.bind_host, 0), Replica)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        replica = fleet.ReplicaStatus(pool="stable", slot=0, version="v1", port=server.server_address[1], pid=1,
                                      state="serving", lb_status="UP", in_flight=0, log="")
        pool = fleet.PoolStatus(version="v1", min=1, max=1, desired=1, utilization=0.0, replicas=[replica])
        fleet.run_dir(settings).mkdir(parents=True, exist_ok=True)
        (fleet.run_dir(settings) / fleet.STATUS_FILE).write_text(fleet.FleetStatus(
            generation=1, updated_at=time.time(), supervisor_pid=1, haproxy_pid=1, pools={"stable": pool}).to_json())
        said: list[str] = []
        if case in ("one dropped", "dropped by a replica replaced since"):
            demo.report_online(settings, since, report, said.append, quiet=True)
            assert any(line.strip().startswith("1 of the 3 predictions answered are not in the online metrics: the "
                                               "replicas dropped 1 prediction sample(s) (breaker_open 1)")
                       for line in said), said
            assert "  v1 stable: 2 served, 2 with outcomes, accuracy n/a, log loss n/a, AUC n/a" in said, said
        elif case == "short beyond the drops":
            with pytest.raises(demo.DemoError, match=r"^the feedback sink landed the demo's 3 outcomes, but only 1 of "
                                                     r"the 2 predictions the fleet published \(3 answered, 1 of their "
                                                     r"samples dropped\) within 0 s"):
                demo.report_online(settings, since, report, said.append, quiet=True)
        else:
            with pytest.raises(demo.DemoError, match=r"^the feedback sink did not land the demo's 3 outcomes within "
                                                     r"0 s \(2 landed\)"):
                demo.report_online(settings, since, report, said.append, quiet=True)
    finally:
        server.shutdown()
        server.server_close()


class _NoTraffic:
    """The demo's replayed traffic, replaced by none (the month's runs are what these tests follow)."""

    def __init__(self, *args: object) -> None:
        self.items: list[object] = []
        self.report = None

    def __enter__(self) -> _NoTraffic:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


class _Api:
    """The demo's Airflow client at its method boundary: records what the demo asks for."""

    def __init__(self, runs: list[dict[str, str]] | None = None, backfills: list[dict[str, object]] | None = None) -> None:
        self._runs, self._backfills = runs or [], backfills or []
        self.triggered: list[str] = []
        self.conf: dict[str, dict[str, object] | None] = {}
        self.backfilled: list[tuple[str, str]] = []
        self.paused: list[tuple[str, bool]] = []

    def runs(self, dag_id: str, *, limit: int = 100) -> list[dict[str, str]]:
        return list(self._runs)

    def run(self, dag_id: str, run_id: str) -> dict[str, str]:
        return next(r for r in self._runs if r["dag_run_id"] == run_id)

    def set_paused(self, dag_id: str, paused: bool) -> None:
        self.paused.append((dag_id, paused))

    def trigger(self, dag_id: str, run_id: str, conf: dict[str, object] | None = None) -> dict[str, str]:
        self.triggered.append(run_id)
        self.conf[run_id] = conf
        return {"dag_run_id": run_id}

    def wait_for_runs(self, dag_id: str, run_ids: list[str], **kwargs: object) -> dict[str, str]:
        return {r: "success" for r in run_ids}

    def backfills(self, dag_id: str) -> list[dict[str, object]]:
        return list(self._backfills)

    def backfill(self, dag_id: str, from_date: str, to_date: str, **kwargs: object) -> dict[str, object]:
        self.backfilled.append((from_date, to_date))
        return {"id": 9}


def test_a_rerun_demo_follows_the_first_champions_run_an_earlier_demo_left_going(
        make_settings: Callable[..., Settings]) -> None:
    """Ctrl-C while the first champion trained, then `make demo` again: this week's run already existed, so no new
    one appeared and the demo trained a second one by hand, queued behind the first (trained twice)."""
    api = _Api(runs=[{"dag_run_id": "scheduled__2026-11-30", "state": "running"}])
    months = [Partition(2013, 1), Partition(2013, 2)]
    said: list[str] = []
    assert demo.first_champion_run(make_settings(), api, months, said.append) == "scheduled__2026-11-30"  # type: ignore[arg-type]
    assert api.triggered == [] and ("train_model", False) in api.paused
    assert any("an earlier demo's, still going" in line for line in said)


def test_a_rerun_demo_follows_the_feature_backfill_an_earlier_demo_left_running(
        make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C during the features backfill, then `make demo` again: asking for a new backfill was refused while the
    old one ran (Airflow keeps one open per DAG) and the demo gave up after 150 s."""
    months = [Partition(2013, m) for m in (1, 2, 3)]
    api = _Api(runs=[{"dag_run_id": f"backfill__{m.label}", "state": "success", "logical_date": f"{m.label}-01T00:00:00Z"}
                     for m in months],
               backfills=[{"id": 4, "from_date": "2013-01-01T00:00:00Z", "to_date": "2013-03-01T00:00:00Z",
                           "completed_at": None, "is_paused": False, "reprocess_behavior": "completed"}])
    said: list[str] = []
    assert demo.build_months(make_settings(), api, months, said.append) is True  # type: ignore[arg-type]
    assert api.backfilled == [] and any("following build_features backfill 4" in line for line in said)
    done = _Api(runs=api._runs, backfills=[{**api._backfills[0], "completed_at": "2026-12-04T10:00:00Z"}])
    demo.build_months(make_settings(), done, months, said.append)  # type: ignore[arg-type]
    assert done.backfilled == [("2013-01-01T00:00:00Z", "2013-03-01T00:00:00Z")]  # an ended one is not followed


def test_months_already_published_between_two_to_build_are_not_backfilled_again(
        make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch) -> None:
    """An earlier demo over 2013-03..04, then `make demo` (01..06): one backfill from January to June, redoing completed
    runs, rebuilt and re-published March and April too. One backfill per stretch of months to build."""
    months = [Partition(2013, m) for m in range(1, 7)]
    monkeypatch.setattr(demo, "_current", lambda settings, lake, m, served: m.month in (3, 4))
    api = _Api(runs=[{"dag_run_id": f"backfill__{m.label}", "state": "success", "logical_date": f"{m.label}-01T00:00:00Z"}
                     for m in months])
    said: list[str] = []
    assert demo.build_months(make_settings(), api, months, said.append) is True  # type: ignore[arg-type]
    assert api.backfilled == [("2013-01-01T00:00:00Z", "2013-02-01T00:00:00Z"),
                              ("2013-05-01T00:00:00Z", "2013-06-01T00:00:00Z")]


def test_a_rerun_demo_backfills_again_a_month_the_earlier_demos_backfill_failed(
        make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch) -> None:
    """The earlier demo stopped on 2013-02's failure while its backfill went on: followed, the old failed run failed
    the new demo at once, on every try until that backfill ended. It waits for the backfill, then asks for a new one."""
    months = [Partition(2013, m) for m in (1, 2, 3)]
    runs = [{"dag_run_id": f"backfill__{m.label}", "state": "failed" if m.month == 2 else "success",
             "logical_date": f"{m.label}-01T00:00:00Z"} for m in months]
    backfill = {"id": 4, "from_date": "2013-01-01T00:00:00Z", "to_date": "2013-03-01T00:00:00Z", "completed_at": None,
                "is_paused": False, "reprocess_behavior": "completed"}

    class Api(_Api):
        looks = 0

        def backfills(self, dag_id: str) -> list[dict[str, object]]:
            Api.looks += 1  # open for the demo's first two looks, then ended
            return [{**backfill, "completed_at": "2026-12-05T10:00:00Z" if Api.looks > 2 else None}]

        def backfill(self, dag_id: str, from_date: str, to_date: str, **kwargs: object) -> dict[str, object]:
            for run in self._runs:  # the new backfill re-queues every month, and they succeed
                run["state"] = "success"
            return super().backfill(dag_id, from_date, to_date, **kwargs)

    monkeypatch.setattr(demo.time, "sleep", lambda s: None)
    api = Api(runs=runs)
    said: list[str] = []
    assert demo.build_months(make_settings(), api, months, said.append) is True  # type: ignore[arg-type]
    assert any("backfill 4, which an earlier demo started, failed 2013-02: waiting for it to end" in line for line in said)
    assert api.backfilled == [("2013-01-01T00:00:00Z", "2013-03-01T00:00:00Z")] and Api.looks >= 3


def test_a_month_whose_runs_failed_shows_them_failed_and_fails_the_demo(
        make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch) -> None:
    """A failed monitor_drift run showed the drift report an earlier demo left for the month (even "DRIFT"), and a
    demo whose runs failed exited 0: `make demo` said the lifecycle ran."""
    import tenfold.registry
    import tenfold.serving.fleet

    class Api(_Api):
        def wait_for_runs(self, dag_id: str, run_ids: list[str], **kwargs: object) -> dict[str, str]:
            return {r: "failed" if dag_id == demo.DRIFT else "success" for r in run_ids}

        def failed_tasks(self, dag_id: str, run_id: str) -> list[str]:
            return ["measure"]

    monkeypatch.setattr(demo, "build_months", lambda *a: True)
    monkeypatch.setattr(tenfold.serving.fleet, "reload_lookups", lambda settings, month: None)
    monkeypatch.setattr(demo, "Traffic", _NoTraffic)
    monkeypatch.setattr(tenfold.registry, "ModelRegistry", lambda settings: SimpleNamespace(resolve=lambda alias: "v1"))
    monkeypatch.setattr(demo, "new_run", lambda api, dag_id, before, timeout_s: None if dag_id == demo.TRAIN
                        else f"{dag_id}__run")
    monkeypatch.setattr(demo, "drift_cell", lambda settings, part: pytest.fail("an earlier run's report was read"))
    monkeypatch.setattr(demo, "report_online", lambda *a, **k: None)
    monkeypatch.setattr(demo, "month_auc", lambda *a: (None, None))
    monkeypatch.setattr(demo, "run_ids", lambda api, dag_id: set())
    row = demo.replay_month(make_settings(), Api(), Partition(2013, 7), None, 0, lambda line: None)  # type: ignore[arg-type]
    assert row.scored == "yes" and row.drift == "failed"
    assert demo.failures([row, demo.MonthRow("2013-08")]) == ["2013-07: monitor_drift run monitor_drift__run failed"]


def test_a_rollout_that_ended_failed_for_want_of_data_is_an_outcome_not_a_failed_run(
        make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch) -> None:
    """conclude ends a canary that got no labels FAILED and fails its run on purpose (judged neither way, rolled back,
    alerted): an outcome the table shows. A run whose conclude never finished, or whose step task failed, failed."""
    import tenfold.registry
    import tenfold.rollout.record
    from tenfold.pipelines.rollout_model import STEP_TASK_FAILED

    monkeypatch.setattr(tenfold.registry, "ModelRegistry", lambda settings: object())
    no_data = ["no data for the canary by the deadline"]
    records = {
        "no data": {"end": {"outcome": "failed", "reasons": no_data}, "done": {"outcome": "failed", "reasons": no_data, "report": "r.html"}},
        "conclude died": {"end": {"outcome": "failed", "reasons": no_data}},
        "a step failed": {"end": {"outcome": "failed", "reasons": [STEP_TASK_FAILED]},
                          "done": {"outcome": "failed", "reasons": [f"{STEP_TASK_FAILED}: step_2"], "report": "r.html"}},
    }
    seen = {}
    for case, record in records.items():
        api = SimpleNamespace(runs=lambda dag_id: [{"dag_run_id": "r1"}], run=lambda dag_id, run_id: {"state": "failed"},
                              failed_tasks=lambda dag_id, run_id: ["conclude"])
        monkeypatch.setattr(tenfold.rollout.record, "latest", lambda registry, version, r=record: ("r1", r))
        failed: list[str] = []
        assert demo.follow_rollout(make_settings(), api, set(), "v2", lambda line: None, failed=failed) == "failed"  # type: ignore[arg-type]
        seen[case] = failed
    assert seen == {"no data": [], "conclude died": ["rollout_model run r1 failed"],
                    "a step failed": ["rollout_model run r1 failed"]}
    # A step task that failed after its checks had decided (its router call): conclude rolled back and recorded no
    # mark of it, but the run failed in the step, not on purpose.
    api = SimpleNamespace(runs=lambda dag_id: [{"dag_run_id": "r1"}], run=lambda dag_id, run_id: {"state": "failed"},
                          failed_tasks=lambda dag_id, run_id: ["step_2", "steps_done"])
    monkeypatch.setattr(tenfold.rollout.record, "latest", lambda registry, version: ("r1", records["no data"]))
    failed = []
    demo.follow_rollout(make_settings(), api, set(), "v2", lambda line: None, failed=failed)  # type: ignore[arg-type]
    assert failed == ["rollout_model run r1 failed"]


def test_a_first_champion_trained_by_hand_is_split_as_the_scheduled_run_splits_it(
        make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch) -> None:
    """On a fresh home the weekly run holds out the newest two of eight months; trained by hand (its week's run
    done on an earlier demo) the same window held out only the last month: the split depended on the home's state."""
    from tenfold.pipelines.train_model import rolling_split

    monkeypatch.setattr(demo, "new_run", lambda api, dag_id, before, timeout_s: None)  # this week's run is done
    settings = make_settings()
    months = [Partition(2013, m) for m in range(1, 9)]
    api = _Api()
    demo.first_champion_run(settings, api, months, lambda line: None)  # type: ignore[arg-type]
    (run_id,) = api.triggered
    trained, held = rolling_split(months, settings.training.train_window, settings.training.holdout_window)
    assert [p.label for p in held] == ["2013-07", "2013-08"]
    assert api.conf[run_id] == {"train_months": [trained[0].label, "2013-06"], "holdout_months": ["2013-07", "2013-08"]}


def _a_month_off_airflow(monkeypatch: pytest.MonkeyPatch, *, published_before: bool, other_run: str) -> None:
    """replay_month without Airflow's side effects: no traffic, no fleet reload, champion v1 (and no champion for
    train_model's split), every report read as "ok"; the first new run of batch_inference and monitor_drift is
    ``other_run`` (formatted with the DAG id), of train_model none. ``published_before``: the month was published by
    an earlier demo, so the demo starts its runs by hand."""
    import tenfold.registry
    import tenfold.serving.fleet
    from tenfold.pipelines import train_model

    monkeypatch.setattr(demo, "build_months", lambda *a: not published_before)
    monkeypatch.setattr(tenfold.serving.fleet, "reload_lookups", lambda settings, month: None)
    monkeypatch.setattr(demo, "Traffic", _NoTraffic)
    monkeypatch.setattr(tenfold.registry, "ModelRegistry", lambda settings: SimpleNamespace(resolve=lambda alias: "v1"))
    monkeypatch.setattr(train_model, "ModelRegistry", lambda settings: SimpleNamespace(resolve=lambda alias: None))
    monkeypatch.setattr(demo, "new_run", lambda api, dag_id, before, timeout_s: None if dag_id == demo.TRAIN
                        else other_run.format(dag_id=dag_id))
    monkeypatch.setattr(demo, "drift_cell", lambda settings, part: "ok")
    monkeypatch.setattr(demo, "report_online", lambda *a, **k: None)
    monkeypatch.setattr(demo, "month_auc", lambda *a: (None, None))
    monkeypatch.setattr(demo, "run_ids", lambda api, dag_id: set())


def test_a_replayed_month_follows_the_runs_it_started_and_its_scheduled_retrain_trains_on_months_replayed(
        make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch) -> None:
    """On a home an earlier demo published through December: the scheduled retrain of 2013-08 was triggered with an
    empty conf, so it trained on 01..09 and was judged on 10..12, months the replay had not reached; and a month
    published before followed the first new run of each DAG, a leftover backfill's asset-triggered run of another
    month (it sorts before the demo's own), not the one the demo had just started for it."""
    from tenfold.workloads.flights.synthetic import publish_synthetic_features

    settings = make_settings()
    publish_synthetic_features(Lake.from_settings(settings), month_range("2013-01", "2013-12"), 20)
    followed: list[str] = []

    class Api(_Api):
        def wait_for_runs(self, dag_id: str, run_ids: list[str], **kwargs: object) -> dict[str, str]:
            followed.extend(run_ids)
            return {r: "failed" if dag_id == demo.TRAIN else "success" for r in run_ids}

        def failed_tasks(self, dag_id: str, run_id: str) -> list[str]:
            return ["train"]

    _a_month_off_airflow(monkeypatch, published_before=True, other_run="asset_triggered__{dag_id}__2013-09")
    api = Api()
    demo.replay_month(settings, api, Partition(2013, 8), None, 0, lambda line: None, scheduled_due=True)  # type: ignore[arg-type]
    started = [r for r in api.triggered if not r.startswith("demo__scheduled__")]
    assert len(started) == 2 and all(r.startswith("demo__2013-08__") for r in started)
    assert followed[:2] == started and not any(r.startswith("asset_triggered__") for r in followed)
    (retrain,) = [r for r in api.triggered if r.startswith("demo__scheduled__2013-08")]
    assert api.conf[retrain] == {"train_months": ["2013-01", "2013-06"], "holdout_months": ["2013-07", "2013-08"]}


def test_a_scheduled_retrain_without_two_consecutive_months_is_a_failed_row_not_the_demos_end(
        make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch) -> None:
    """The month before the replayed one withdrawn (a corrupt file): the split raised inside replay_month and ended
    the whole demo; the month's row now says the scheduled baseline could not run."""
    from tenfold.workloads.flights.synthetic import publish_synthetic_features

    settings = make_settings()
    publish_synthetic_features(Lake.from_settings(settings), [Partition(2013, 6), Partition(2013, 8)], 20)  # no July
    _a_month_off_airflow(monkeypatch, published_before=False, other_run="{dag_id}__run")
    api = _Api()
    row = demo.replay_month(settings, api, Partition(2013, 8), None, 0, lambda line: None, scheduled_due=True)  # type: ignore[arg-type]
    assert not any(r.startswith("demo__scheduled__") for r in api.triggered)
    assert len(row.failed_runs) == 1 and "the scheduled baseline cannot run: training needs at least two consecutive" \
        in row.failed_runs[0]


def test_a_drift_event_that_starts_no_retrain_is_said_and_shown(make_settings: Callable[..., Settings],
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """The month read "DRIFT (...)" with retrain "-", as if the drift had been handled, when no train_model run
    appeared within the wait (a slow scheduler, train_model paused by hand); and the demo exited 0 on that broken
    drift -> retrain loop, where a features or challenger event that starts no run fails it."""
    _a_month_off_airflow(monkeypatch, published_before=False, other_run="{dag_id}__run")
    monkeypatch.setattr(demo, "drift_cell", lambda settings, part: "0.300 DRIFT (dep_hour)")
    monkeypatch.setattr(demo, "task_state", lambda api, dag_id, run_id, task_id: "success")  # decide ran: an event
    said: list[str] = []
    row = demo.replay_month(make_settings(), _Api(), Partition(2013, 8), None, 0, said.append)  # type: ignore[arg-type]
    assert row.drift == "0.300 DRIFT (dep_hour) (no retrain started)" and row.retrain == "-"
    assert any(line.startswith("train_model: no run started by the drift event within 120 s") for line in said), said
    assert demo.failures([row]) == ["2013-08: train_model: no run started by the drift event within 120 s (check that "
                                    "train_model is not paused, and monitor_drift's decide task)"]


def test_a_retrain_the_weekly_cron_started_is_not_said_to_be_the_drift_events(
        make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch) -> None:
    """A demo run again a week later: unpausing train_model starts the cron tick it missed, and the month (no drift)
    followed that run saying "started by the drift event"."""
    cron = "scheduled__2026-12-07T03:00:00+00:00"

    class Api(_Api):
        def wait_for_runs(self, dag_id: str, run_ids: list[str], **kwargs: object) -> dict[str, str]:
            return {r: "failed" if dag_id == demo.TRAIN else "success" for r in run_ids}

        def failed_tasks(self, dag_id: str, run_id: str) -> list[str]:
            return ["train"]

    _a_month_off_airflow(monkeypatch, published_before=False, other_run="{dag_id}__run")
    monkeypatch.setattr(demo, "new_run", lambda api, dag_id, before, timeout_s: cron if dag_id == demo.TRAIN
                        else f"{dag_id}__run")
    said: list[str] = []
    api = Api(runs=[{"dag_run_id": cron, "run_type": "scheduled", "state": "running"}])
    demo.replay_month(make_settings(), api, Partition(2013, 8), None, 0, said.append)  # type: ignore[arg-type]
    assert f"train_model: run {cron} (started by the weekly schedule (Airflow's cron, on every published month))" \
        in said, said
    assert not any("drift event" in line for line in said), said


def test_a_champion_of_older_feature_definitions_is_refused_before_the_demo_rebuilds_anything(
        make_settings: Callable[..., Settings]) -> None:
    """A home of an older Tenfold: every month was rebuilt at the new features version, the old champion kept (a
    first champion is trained only when there is none), and every replica, offline scoring and the AUC refused it,
    after minutes of Spark, on every `make demo`."""
    from tenfold.workloads import VERSION_KEY, get_workload

    settings = make_settings()
    builds = get_workload(settings).contract.version

    class Registry:
        def __init__(self, champion: str | None, version: object) -> None:
            self.champion, self.version = champion, version

        def resolve(self, alias: str) -> str | None:
            return self.champion

        def meta(self, version: str) -> dict[str, object]:
            return {"version": 1, VERSION_KEY: self.version} if self.version is not None else {"version": 1}

    with pytest.raises(demo.DemoError, match=rf"the champion v1 can be neither served nor scored here: it "
                                             rf"learnt from version {builds - 1} of the feature definitions, and this code builds version {builds}(.|\n)*fresh platform home"):
        demo.refuse_a_champion_this_code_cannot_load(settings, Registry("v1", builds - 1))
    for fine in (Registry(None, None), Registry("v1", builds), Registry("v1", None)):  # None: saved before versions
        demo.refuse_a_champion_this_code_cannot_load(settings, fine)


@pytest.mark.parametrize("where", ["features", "a followed run", "the fleet", "the join lock"])
def test_a_month_that_cannot_go_on_ends_the_replay_with_a_row_and_the_table_still_shows_the_months_before(
        make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch, where: str) -> None:
    """build_features failing for the second replayed month (or a run followed past its bound, an AirflowApiError)
    raised out of the replay: no closing table, the first month's row lost, though the README says the demo exits 1
    after its closing table. The month's row keeps what it reached before."""
    settings = make_settings()
    months = [Partition(2013, 7), Partition(2013, 8), Partition(2013, 9)]

    def replay_month(settings: Settings, api: object, part: Partition, *args: object, row: demo.MonthRow,
                     **kwargs: object) -> demo.MonthRow:
        if part == months[1] and where == "features":
            raise demo.DemoError(f"{demo.BUILD} for {part.label} failed in validate: open the UI for its logs")
        row.validated = "yes"
        if part == months[1] and where == "the fleet":  # a LocalPlatformError, not a DemoError: it escaped the replay
            from tenfold.serving.fleet import FleetError

            raise FleetError("the fleet did not reload its lookups within 120 s")
        if part == months[1] and where == "the join lock":  # the sink's join held it: report_online's join waited 60 s
            from tenfold.data.locks import LockTimeout

            raise LockTimeout("another process holds the lock of the feedback join (waited 60 s)")
        if part == months[1]:
            row.failed_runs.append("batch_inference run x failed")
            raise demo.AirflowApiError("monitor_drift run y did not end within 900 s")
        return row

    monkeypatch.setattr(demo, "replay_month", replay_month)
    said: list[str] = []
    rows = demo.replay_months(settings, object(), months, None, 0, said.append, retrain_every=0, started=0.0,
                              first_trained_on=frozenset())
    if where == "features":
        assert [(r.month, r.validated) for r in rows] == [("2013-07", "yes"), ("2013-08", "no")]
        assert demo.failures(rows) == ["2013-08: build_features for 2013-08 failed in validate: open the UI for its logs"]
    elif where == "the fleet":
        assert [(r.month, r.validated) for r in rows] == [("2013-07", "yes"), ("2013-08", "yes")]
        assert demo.failures(rows) == ["2013-08: the fleet did not reload its lookups within 120 s"]
    elif where == "the join lock":
        assert demo.failures(rows) == ["2013-08: another process holds the lock of the feedback join (waited 60 s)"]
    else:
        assert [(r.month, r.validated) for r in rows] == [("2013-07", "yes"), ("2013-08", "yes")]
        assert demo.failures(rows) == ["2013-08: batch_inference run x failed",
                                       "2013-08: monitor_drift run y did not end within 900 s"]
    assert "the replay stops at 2013-08: 2013-09 not replayed" in said


def test_a_prediction_sample_rate_below_one_is_refused_before_the_demo_starts(
        make_settings: Callable[..., Settings]) -> None:
    """Each replayed month waits for every served flight's prediction joined to its outcome; at a rate of 0.5 half
    are never published, and the demo ended at the first replayed month blaming the feedback sink."""
    base = make_settings()
    server = base.serving.server.model_copy(update={"prediction_sample_rate": 0.5})
    settings = base.model_copy(update={"serving": base.serving.model_copy(update={"server": server})})
    with pytest.raises(demo.DemoError, match=r"prediction_sample_rate is 0.5(.|\n)*TENFOLD_SERVING__SERVER__PREDICTION_SAMPLE_RATE"):
        demo.demo_months("2013-01", "2013-02", 2, settings)
    assert demo.demo_months("2013-01", "2013-02", 2, make_settings())[1] == [Partition(2013, 3), Partition(2013, 4)]


def test_a_running_fleet_started_with_a_sample_rate_below_one_is_refused_not_rolled(
        make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch) -> None:
    """The fleet keeps the settings it started with: an earlier demo's at rate 0.5, left running, passed the shell's
    check once the variable was unset, and the first month waited out its outcomes as before."""
    import tenfold.registry
    from tenfold.local import stack
    from tenfold.serving import fleet

    settings = make_settings()
    server = settings.serving.server.model_copy(update={"prediction_sample_rate": 0.5})
    half = settings.model_copy(update={"serving": settings.serving.model_copy(update={"server": server})})

    class Registry:
        def __init__(self, settings: Settings) -> None:
            pass

        def resolve(self, alias: str) -> str:
            return "v1"

    monkeypatch.setattr(tenfold.registry, "ModelRegistry", Registry)
    monkeypatch.setattr(fleet, "supervisor_record", lambda s: object())
    monkeypatch.setattr(fleet, "running_settings", lambda s: half)
    monkeypatch.setattr(stack, "serving_drift", lambda s: "")  # the stand-in fleet has no process to read
    monkeypatch.setattr(fleet, "rollout", lambda *a, **k: pytest.fail("rolled a fleet that publishes half"))
    with pytest.raises(demo.DemoError, match=r"publishes 0.5 of its predictions(.|\n)*tenfold serve down"):
        demo.ensure_serving(settings, lambda line: None)


def test_a_fleet_port_another_program_holds_is_refused_before_anything_starts(
        make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch) -> None:
    """The fleet's ports were checked only when it started, after six months of features and the first champion's
    training; and the metrics port's refusal named no variable that moves it."""
    import socket

    from tenfold.local import stack

    monkeypatch.setattr(stack, "up", lambda *a, **k: pytest.fail("the platform was started"))
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        for where in ("local", "fleet"):
            settings = make_settings()
            if where == "local":
                settings = settings.model_copy(update={"local": settings.local.model_copy(update={"lb_port": port})})
            else:
                fleet = settings.serving.fleet.model_copy(update={"lb_metrics_port": port})
                settings = settings.model_copy(update={"serving": settings.serving.model_copy(update={"fleet": fleet})})
            with pytest.raises(demo.DemoError, match=rf"the serving fleet could not start:\n  - port 127.0.0.1:{port} "
                                                     r"\(lb_(metrics_)?port\) is already in use") as refused:
                demo.run(settings, say=lambda line: None)
            assert ("TENFOLD_LOCAL__LB_PORT" if where == "local" else "TENFOLD_SERVING__FLEET__LB_METRICS_PORT") in str(
                refused.value)


def test_a_missing_haproxy_is_refused_before_anything_starts(
        make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch) -> None:
    """`tenfold demo` without `make setup` found HAProxy missing when the fleet started: after six months of features
    and the first champion's training."""
    import shutil

    from tenfold.local import stack

    monkeypatch.setattr(stack, "up", lambda *a, **k: pytest.fail("the platform was started"))
    monkeypatch.setattr(shutil, "which", lambda name, *a, **k: None if name == "haproxy" else "/bin/true")
    monkeypatch.setattr("os.access", lambda path, mode: False)  # nor in /usr/sbin or /usr/local/sbin
    with pytest.raises(demo.DemoError, match=r"the serving fleet could not start: haproxy is not installed: run "
                                             r"`make setup`"):
        demo.run(make_settings(), say=lambda line: None)


def test_a_fault_in_the_code_during_a_month_is_not_taken_for_the_months_outcome(
        make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch) -> None:
    """A bug (a KeyError, a TypeError) is the demo's fault, with its own ending, not one line in a month's row."""
    def replay_month(*args: object, **kwargs: object) -> None:
        raise KeyError("missing")

    monkeypatch.setattr(demo, "replay_month", replay_month)
    with pytest.raises(KeyError):
        demo.replay_months(make_settings(), object(), [Partition(2013, 7)], None, 0, lambda line: None,
                           retrain_every=0, started=0.0, first_trained_on=frozenset())


def test_a_workload_that_cannot_be_loaded_is_refused_before_anything_starts(tmp_path) -> None:
    """TENFOLD_WORKLOAD=nope passed `make demo`'s checks: Airflow and the emulators started, and the first features run
    failed. `tenfold demo` refuses it as bad usage (exit 2) in one line naming it, and nothing is started in the home.
    The load balancer's port is held: were the workload not checked first, the demo would stop at its port check,
    never starting a platform from this test."""
    import os
    import socket
    import subprocess
    import sys
    from pathlib import Path

    home = tmp_path / "home"
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        env = {**{k: v for k, v in os.environ.items() if not k.startswith("TENFOLD_")}, "TENFOLD_HOME": str(home),
               "TENFOLD_WORKLOAD": "nope", "TENFOLD_LOCAL__LB_PORT": str(held.getsockname()[1])}
        proc = subprocess.run([str(Path(sys.executable).with_name("tenfold")), "demo"], env=env, capture_output=True,
                              text=True, timeout=120, check=False)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    (line,) = proc.stderr.splitlines()
    assert line.startswith("error: unknown workload 'nope'") and "Traceback" not in proc.stderr, proc.stderr
    assert not list(home.rglob("*.pid")) and not (home / "run").exists(), sorted(home.rglob("*"))


def test_a_scheduled_retrain_is_skipped_when_the_champion_learnt_the_months_it_would_hold_out(
        make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch) -> None:
    """`make demo` again on a finished home: its champion learnt 2013-01..09, so September's scheduled baseline held out
    2013-09 (at least one month), evaluate refused to score the champion on it, the gate had nothing to compare and
    the run failed, and the demo with it. Skipped and said; a month the champion never learnt is held out as before."""
    import tenfold.registry
    from tenfold.pipelines import train_model
    from tenfold.workloads.flights.synthetic import publish_synthetic_features

    settings = make_settings()
    publish_synthetic_features(Lake.from_settings(settings), month_range("2013-01", "2013-12"), 20)
    _a_month_off_airflow(monkeypatch, published_before=False, other_run="{dag_id}__run")
    learnt = SimpleNamespace(lineage=SimpleNamespace(train_partitions=[
        SimpleNamespace(partition=m.label) for m in month_range("2013-01", "2013-09")]))
    registry = SimpleNamespace(resolve=lambda alias: "v9", get=lambda version: learnt)
    monkeypatch.setattr(tenfold.registry, "ModelRegistry", lambda settings: registry)
    monkeypatch.setattr(train_model, "ModelRegistry", lambda settings: registry)

    class Api(_Api):
        def wait_for_runs(self, dag_id: str, run_ids: list[str], **kwargs: object) -> dict[str, str]:
            return {r: "failed" if dag_id == demo.TRAIN else "success" for r in run_ids}

        def failed_tasks(self, dag_id: str, run_id: str) -> list[str]:
            return ["train"]

    api, said = Api(), []
    row = demo.replay_month(settings, api, Partition(2013, 9), None, 0, said.append, scheduled_due=True)  # type: ignore[arg-type]
    assert not any(r.startswith("demo__scheduled__") for r in api.triggered), api.conf
    assert any(line.startswith("train_model: the champion v9 learnt through 2013-09: scheduled baseline skipped")
               for line in said), said
    assert row.retrain == "-" and row.failed_runs == []  # "-": the schedule stays due for the next month
    api = Api()
    demo.replay_month(settings, api, Partition(2013, 10), None, 0, lambda line: None, scheduled_due=True)  # type: ignore[arg-type]
    (retrain,) = [r for r in api.triggered if r.startswith("demo__scheduled__2013-10")]
    assert api.conf[retrain] == {"train_months": ["2013-01", "2013-09"], "holdout_months": ["2013-10", "2013-10"]}


def test_a_month_sends_each_of_its_flights_at_least_once(make_settings: Callable[..., Settings],
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """The sender stopped at the first 500-flight chunk after the month's scoring and drift runs ended: "3000 flights of
    2013-07 replayed" was followed by "traffic: 1500 predictions". A whole pass is sent before the stop is honoured;
    while the block runs (a rollout) it goes on sending; a block that ends on an error stops at the next chunk."""
    from tenfold.serving import traffic

    sent: list[object] = []

    def replay(settings: Settings, items: list[object], **kwargs: object) -> None:
        time.sleep(0.01)  # a chunk takes a while: the block ends long before a pass would
        sent.extend(items)

    monkeypatch.setattr(demo, "get_workload", lambda settings: SimpleNamespace(replay=lambda month: list(range(5000))))
    monkeypatch.setattr(traffic, "replay", replay)
    with demo.Traffic(make_settings(), Partition(2013, 7), 3000) as live:
        pass
    assert len(live.items) == 3000 and sorted(sent) == list(range(3000)), len(sent)
    sent.clear()
    with demo.Traffic(make_settings(), Partition(2013, 7), 3000):
        deadline = time.monotonic() + 30
        while len(sent) < 4000 and time.monotonic() < deadline:
            time.sleep(0.01)
    assert len(sent) >= 4000 and len(sent) % 500 == 0  # a second pass, begun while the block ran, stops at a chunk
    sent.clear()
    with pytest.raises(KeyboardInterrupt), demo.Traffic(make_settings(), Partition(2013, 7), 3000):
        raise KeyboardInterrupt
    assert len(sent) < 3000


def test_a_second_demo_on_the_same_home_is_refused_before_it_starts_anything(
        make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch) -> None:
    """A second `make demo` while one ran paused the first one's DAGs and rolled its canary pool back to the champion
    at 0 %, failing its rollout. The second is refused in one line naming the first one's pid and what to do."""
    import fcntl

    from tenfold.local import stack
    from tenfold.local.services import run_dir
    from tenfold.serving import fleet

    settings = make_settings()
    monkeypatch.setattr(stack, "up", lambda *a, **k: pytest.fail("the platform was started"))
    monkeypatch.setattr(fleet, "port_refusals", lambda s: pytest.fail("the second demo went on to its checks"))
    run_dir(settings).mkdir(parents=True, exist_ok=True)
    with open(run_dir(settings) / ".demo.lock", "a+") as held:  # the first demo, in another open file description
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        held.write("4242\n")
        held.flush()
        with pytest.raises(demo.DemoError, match=r"^another demo is running on .* \(pid 4242\): wait for it to end, "
                                                 r"or stop it \(Ctrl-C in its terminal, or `kill 4242`\), then run the "
                                                 r"demo again$") as refused:
            demo.run(settings, say=lambda line: None)
    assert "\n" not in str(refused.value)
    # The first one ended: the next demo goes on (to its port check here), and leaves the lock free when it ends.
    monkeypatch.setattr(fleet, "port_refusals", lambda s: ["port 127.0.0.1:8000 (lb_port) is already in use"])
    with pytest.raises(demo.DemoError, match="the serving fleet could not start"):
        demo.run(settings, say=lambda line: None)
    with open(run_dir(settings) / ".demo.lock", "a+") as free:
        fcntl.flock(free, fcntl.LOCK_EX | fcntl.LOCK_NB)


@pytest.mark.parametrize("case", ["refused", "ctrl-c", "no champion", "airflow away", "champion refused",
                                  "ctrl-c while the first champion trains"])
def test_a_demo_that_ends_in_its_first_window_does_not_leave_the_dags_it_paused_paused_unsaid(
        make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch, case: str) -> None:
    """Ctrl-C or a refusal between the demo pausing train_model, rollout_model, batch_inference and monitor_drift for the
    first window and unpausing them once the fleet served left them paused, unsaid: nothing ran on drift or weekly
    until the next demo. With a champion they are unpaused again; without one (or with Airflow away) the demo says
    which are left paused and how to unpause them. A champion this code cannot load leaves them paused, said (the
    refusal asks for a model trained with train_model, which only queued while paused); Ctrl-C while the first
    champion trained named train_model among the paused, which that training had unpaused."""
    import tenfold.registry
    import tenfold.serving.haproxy
    from tenfold.local import stack
    from tenfold.serving import fleet

    four = {demo.TRAIN, demo.ROLLOUT, demo.INFER, demo.DRIFT}

    class Api(_Api):
        def wait_for_dag(self, dag_id: str) -> None:
            pass

        def set_paused(self, dag_id: str, paused: bool) -> None:
            if case == "airflow away" and not paused and dag_id == demo.TRAIN:
                raise demo.AirflowApiError("PATCH /api/v2/dags/train_model: connection refused")
            super().set_paused(dag_id, paused)

    api = Api()
    monkeypatch.setattr(fleet, "port_refusals", lambda s: [])
    monkeypatch.setattr(stack, "serving_drift", lambda s: "")
    monkeypatch.setattr(tenfold.serving.haproxy, "haproxy_binary", lambda: "/usr/sbin/haproxy")
    monkeypatch.setattr(stack, "up", lambda *a, **k: [])
    monkeypatch.setattr(demo, "_api", lambda settings, say=None: api)
    champion = None if case in ("no champion", "ctrl-c while the first champion trains") else "v1"
    monkeypatch.setattr(tenfold.registry, "ModelRegistry", lambda settings: SimpleNamespace(resolve=lambda a: champion))

    def refuse(settings: Settings, registry: object) -> None:
        if case == "champion refused":  # a champion this code cannot load: every DAG would only fail on it
            raise demo.DemoError("the champion v1 can be neither served nor scored here: its meta.json is newer")

    monkeypatch.setattr(demo, "refuse_a_champion_this_code_cannot_load", refuse)

    def build_months(*args: object) -> bool:
        if case == "ctrl-c":
            raise KeyboardInterrupt
        if case == "ctrl-c while the first champion trains":
            return True
        raise demo.DemoError("build_features for 2013-03 failed in validate: open the UI for its logs")

    def new_run(api: object, dag_id: str, before: object, *, timeout_s: float) -> str:
        assert (demo.TRAIN, False) in api.paused  # type: ignore[attr-defined]  # first_champion_run unpaused it
        raise KeyboardInterrupt  # Ctrl-C while it waits for the weekly run that trains the first champion

    monkeypatch.setattr(demo, "build_months", build_months)
    monkeypatch.setattr(demo, "new_run", new_run)
    said: list[str] = []
    with pytest.raises(KeyboardInterrupt if case.startswith("ctrl-c") else demo.DemoError):
        demo.run(make_settings(), say=said.append)
    assert {d for d, paused in api.paused if paused} == four  # paused for the first window, as before
    unpaused = [d for d, paused in api.paused if not paused]
    if case in ("refused", "ctrl-c"):
        assert set(unpaused) == four and api.paused[-4:] == [(d, False) for d in unpaused]
        assert said[-1] == "batch_inference, monitor_drift, train_model, rollout_model unpaused again (the demo pauses " \
                           "them until the fleet serves the champion)", said
    elif case == "champion refused":
        assert unpaused == [] and not any("unpaused" in line for line in said), said
        assert said and said[-1].startswith("batch_inference, monitor_drift, train_model, rollout_model are left "
                                            "paused, as each would only fail on a champion this code cannot load: "
                                            "unpause train_model in the Airflow UI, http://"), said
        assert "and batch_inference, monitor_drift, rollout_model once that model is promoted" in said[-1], said
    elif case == "ctrl-c while the first champion trains":
        assert unpaused == [demo.TRAIN]  # by first_champion_run; the rest stay paused with no champion
        assert said[-1].startswith("batch_inference, monitor_drift, rollout_model are left paused: there is no "
                                   "champion yet") and "http://" in said[-1], said
    elif case == "no champion":
        assert unpaused == []
        assert said[-1].startswith("batch_inference, monitor_drift, train_model, rollout_model are left paused: there "
                                   "is no champion yet") and "http://" in said[-1], said
    else:
        assert unpaused == [demo.INFER, demo.DRIFT]
        assert said[-1].startswith("train_model, rollout_model are left paused (the demo pauses them until the fleet "
                                   "serves the champion, and Airflow did not answer: PATCH") and "Airflow UI" in said[-1]


@dataclass
class Scheduler:
    settings: Settings
    record: Any  # the ProcessRecord under the scheduler's pid file
    ups: list[list[str]]  # the services each `tenfold up` (stood in for) was asked to start


@pytest.fixture
def scheduler_pid(make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch) -> Iterator[Scheduler]:
    """A real process (`sleep`) under a fresh home's Airflow scheduler pid file, with `tenfold up` recording what it
    is asked to start; the process is killed at the end if a test left it running."""
    import os
    import signal

    from tenfold.local import process, stack
    from tenfold.local.services import run_dir

    settings = make_settings()
    run_dir(settings).mkdir(parents=True, exist_ok=True)
    record = process.start("airflow-scheduler", ["sleep", "600"], run_dir=run_dir(settings), port=0)
    ups: list[list[str]] = []
    monkeypatch.setattr(stack, "up", lambda s, services, echo: ups.append(list(services)))
    try:
        yield Scheduler(settings, record, ups)
    finally:
        if process.is_running(record):
            os.kill(record.pid, signal.SIGKILL)


def test_an_airflow_component_that_died_while_the_demo_waits_is_restarted_and_said(
        scheduler_pid: Scheduler, monkeypatch: pytest.MonkeyPatch) -> None:
    """Airflow 3's scheduler exited on a StaleDataError of its own (a backfill and a scheduled run written at once on
    SQLite) and the demo waited out its timeouts with every run queued. Its client looks, before a request and at
    most every WATCH_S, whether a component died (here a real process under the scheduler's pid file, SIGKILLed) and
    restarts Airflow as `tenfold up` does; a live one is left alone, and it looks no more often than WATCH_S."""
    import os
    import signal

    from tenfold.local import process
    from tenfold.local.airflow_api import AirflowApiError
    from tenfold.local.services import run_dir

    settings, record, ups = scheduler_pid.settings, scheduler_pid.record, scheduler_pid.ups
    said: list[str] = []
    api = demo._WatchedApi(settings, said.append, "http://127.0.0.1:9", "admin", "pw", retries=0, timeout_s=2)
    monkeypatch.setattr(demo, "WATCH_S", 60.0)

    def request(*, looked_s_ago: float) -> None:
        api._looked = time.monotonic() - looked_s_ago
        with pytest.raises(AirflowApiError):  # nothing listens there: only the look before the request matters
            api.runs("build_features")

    request(looked_s_ago=61)
    assert ups == [] and said == [], "a live scheduler was taken for dead"
    os.kill(record.pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while process.is_running(record) and time.monotonic() < deadline:
        time.sleep(0.05)
    request(looked_s_ago=30)
    assert ups == [] and said == [], "it looked again before WATCH_S passed"
    request(looked_s_ago=61)
    assert ups == [["airflow"]]
    assert len(said) == 1 and said[0].startswith("airflow-scheduler died while the demo waited on it (see "), said
    assert str(process.log_file(run_dir(settings), "airflow-scheduler")) in said[0]


def test_a_component_a_down_is_stopping_is_not_restarted_by_the_demo(scheduler_pid: Scheduler) -> None:
    """`tenfold down` stops Airflow's components one by one under the up/down lock and removes each pid file once its
    process is gone: the demo, looking in between, saw a dead scheduler and restarted Airflow after the down. It
    looks again under that lock, where the down has removed the pid file: nothing is restarted."""
    import os
    import signal
    import threading

    from tenfold.local import process, stack
    from tenfold.local.services import run_dir

    settings, record, ups = scheduler_pid.settings, scheduler_pid.record, scheduler_pid.ups
    said: list[str] = []
    held, release = threading.Event(), threading.Event()

    def say(line: str) -> None:  # the demo blocked on the lock says so: the down may finish now
        said.append(line)
        if line.startswith("waiting for another `tenfold up/down`"):
            release.set()

    api = demo._WatchedApi(settings, say, "http://127.0.0.1:9", "admin", "pw", retries=0, timeout_s=2)

    def down() -> None:  # as `tenfold down` does: under the lock, the process stopped, then its pid file removed
        with stack.exclusive(settings, echo=lambda line: None):
            os.kill(record.pid, signal.SIGKILL)
            while process.is_running(record):
                time.sleep(0.05)
            held.set()
            release.wait(30)
            process.pid_file(run_dir(settings), "airflow-scheduler").unlink()

    stopping = threading.Thread(target=down)
    stopping.start()
    try:
        assert held.wait(30)
        assert stack.died(settings, "airflow"), "the scheduler's pid file should name a dead process by now"
        api._revive()  # the down finishes while the demo waits on the lock
        assert ups == [], ups
        assert len(said) == 1 and said[0].startswith("waiting for another `tenfold up/down`"), said  # no "died"
    finally:
        release.set()
        stopping.join(30)
