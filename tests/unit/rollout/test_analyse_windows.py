"""Which spans a rollout check reads: traffic over its own window, accuracy over every label since the rollout began.

The adapters are fakes that record what they were asked (the real ones run in tests/serving/test_rollout.py);
the check itself is the real :func:`tenfold.rollout.analysis.check`.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import numpy as np

from tenfold.config.serving import RolloutSettings
from tenfold.pipelines import rollout_model as pipeline
from tenfold.rollout import ArmTraffic
from tenfold.rollout.analysis import FAIL, Accuracy

T0 = dt.datetime(2026, 12, 3, 12, 0, tzinfo=dt.UTC)
RNG = np.random.default_rng(3)


class Observer:
    def __init__(self) -> None:
        self.asked: list[tuple[dt.datetime, dt.datetime]] = []

    def traffic(self, since: dt.datetime, until: dt.datetime) -> dict[str, ArmTraffic]:
        self.asked.append((since, until))
        lat = tuple(RNG.gamma(4.0, 5.0, 400))
        return {"canary": ArmTraffic(400, 0, lat), "stable": ArmTraffic(400, 0, lat)}


def _labels(since: dt.datetime, until: dt.datetime) -> tuple[Accuracy, Accuracy]:
    """20 labelled predictions a minute per arm: the canary right 60 % of the time, the control 80 %."""
    n = int((until - since).total_seconds() // 60) * 20
    return Accuracy(n, 0.60, 0.7), Accuracy(n, 0.80, 0.5)


def _analyse(asked: list[tuple[dt.datetime, dt.datetime]], since: dt.datetime, until: dt.datetime,
             observer: Observer | None = None, lag_s: float = 0.0) -> Any:
    def accuracy(a: dt.datetime, b: dt.datetime, version: str) -> tuple[Accuracy, Accuracy]:
        asked.append((a, b))
        return _labels(a, b)

    policy = RolloutSettings(min_requests=50, min_feedback=20, max_accuracy_drop=0.02, traffic_lag_s=lag_s)
    run = pipeline.RolloutRun(rollout_id="r1", airflow_run_id="manual__x", version="v2", champion="v1",
                              started_at=T0.isoformat(), policy=policy.model_dump(mode="json"))
    places = pipeline.Places(router=None, deployer=None, observer=observer or Observer(),  # type: ignore[arg-type]
                             registry=None,  # type: ignore[arg-type]
                             accuracy=accuracy)
    return pipeline.analyse(places, run, 25, since, until)


def test_accuracy_adds_up_labels_since_the_rollout_began() -> None:
    asked: list[tuple[dt.datetime, dt.datetime]] = []
    # The fourth one-minute window of the rollout: its own 20 labels per arm cannot tell 0.6 from 0.8 at
    # alpha 0.01; the 80 since the start can.
    since, until = T0 + dt.timedelta(minutes=3), T0 + dt.timedelta(minutes=4)
    own_window = pipeline.check(Observer().traffic(since, until)["canary"], Observer().traffic(since, until)["stable"],
                                *_labels(since, until), RolloutSettings(min_requests=50, min_feedback=20,
                                                                       max_accuracy_drop=0.02))
    assert own_window.verdict != FAIL
    result = _analyse(asked, since, until)
    assert asked == [(T0, until)]
    assert result.verdict == FAIL and any("online accuracy 0.600" in r for r in result.reasons), result.reasons
    assert result.values["canary_labelled"] == 80 and result.values["accuracy_since"] == T0.isoformat()


class QuietCanary(Observer):
    def traffic(self, since: dt.datetime, until: dt.datetime) -> dict[str, ArmTraffic]:
        self.asked.append((since, until))
        return {"canary": ArmTraffic(10, 0, tuple(RNG.gamma(4.0, 5.0, 10))),
                "stable": ArmTraffic(900, 0, tuple(RNG.gamma(4.0, 5.0, 900)))}


def test_a_window_with_too_few_requests_says_so_and_nothing_of_feedback_it_did_not_read() -> None:
    """It said "too little feedback (canary 0, control 0 labelled)" too, with the control's thousands of labels
    unread: the record, the status and the deadline's alert sent operators to the feedback pipeline."""
    asked: list[tuple[dt.datetime, dt.datetime]] = []
    result = _analyse(asked, T0, T0 + dt.timedelta(minutes=1), observer=QuietCanary())
    assert asked == []  # the feedback join is skipped
    assert result.verdict == "no_data" and len(result.reasons) == 1, result.reasons
    assert result.reasons[0].startswith("too few requests (canary 10, control 900")
    assert result.values["canary_labelled"] is None and result.values["control_labelled"] is None


class Clock:
    def __init__(self) -> None:
        self.t = T0

    def now(self) -> dt.datetime:
        return self.t

    def sleep(self, seconds: float) -> None:
        self.t += dt.timedelta(seconds=max(seconds, 0.001))


class Registry:
    """The registry's rollout record as step() uses it: create-only events."""

    def __init__(self) -> None:
        self.events: dict[str, dict[str, Any]] = {}

    def rollout_events(self, version: str, rollout_id: str) -> dict[str, dict[str, Any]]:
        return dict(self.events)

    def record_rollout_event(self, version: str, rollout_id: str, key: str, body: dict[str, Any]) -> bool:
        if key in self.events:
            return False
        self.events[key] = dict(body)
        return True

    def rollouts(self, version: str | None = None) -> list[tuple[str, str, str]]:
        return []  # no other rollout: this one is the newest


class Router:
    def set_canary_percent(self, percent: int) -> None:
        self.percent = percent

    def canary_percent(self) -> int:
        return self.percent


class Deployer:
    """The canary pool serving ``version`` (the version under test, unless a test changes it)."""

    def __init__(self, version: str | None = "v2") -> None:
        self.version: str | None = version

    def pool_version(self, pool: str) -> str | None:
        return self.version


def test_each_window_is_the_steps_own_and_read_only_after_the_logs_delay() -> None:
    """In the cloud the load balancer's log arrives up to a minute late: a step's checks read its own contiguous
    windows, each ``traffic_lag_s`` after it ends (not earlier, when its last requests are not logged yet; not
    shifted back into the step before, which would judge a step on the previous one's split)."""
    clock, registry = Clock(), Registry()
    registry.events["deployed"] = {"at": T0.isoformat()}

    class Timed(Observer):
        def traffic(self, since: dt.datetime, until: dt.datetime) -> dict[str, ArmTraffic]:
            self.read_at = [*getattr(self, "read_at", []), clock.now()]
            return super().traffic(since, until)

    observer = Timed()
    policy = RolloutSettings(min_requests=50, min_feedback=0, interval_s=120, traffic_lag_s=90, checks_per_step=2,
                             poll_s=5)
    run = pipeline.RolloutRun(rollout_id="r1", airflow_run_id="manual__x", version="v2", champion="v1",
                              started_at=T0.isoformat(), policy=policy.model_dump(mode="json"))
    places = pipeline.Places(router=Router(), deployer=Deployer(), observer=observer, registry=registry,  # type: ignore[arg-type]
                             accuracy=lambda a, b, v: (Accuracy(0, None), Accuracy(0, None)), now=clock.now,
                             sleep=clock.sleep)
    assert pipeline.step(None, run, 1, p=places) == pipeline.PASS  # type: ignore[arg-type]
    start = dt.datetime.fromisoformat(registry.events["s01-set"]["at"])
    two, lag = dt.timedelta(seconds=120), dt.timedelta(seconds=90)
    assert observer.asked == [(start, start + two), (start + two, start + 2 * two)]
    assert [at - until for at, (_, until) in zip(observer.read_at, observer.asked, strict=True)] == [lag, lag]
