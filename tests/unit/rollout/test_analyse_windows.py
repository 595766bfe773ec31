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


def test_traffic_windows_are_read_shifted_back_by_the_logs_delay() -> None:
    """In the cloud the load balancer's log arrives up to a minute late: consecutive checks read consecutive windows
    shifted back by ``traffic_lag_s``, so a request logged late counts in the next check instead of in none."""
    observer = Observer()
    for k in range(2):
        since, until = T0 + dt.timedelta(minutes=2 * k), T0 + dt.timedelta(minutes=2 * k + 2)
        _analyse([], since, until, observer, lag_s=90)
    lag = dt.timedelta(seconds=90)
    assert observer.asked == [(T0 - lag, T0 + dt.timedelta(minutes=2) - lag),
                              (T0 + dt.timedelta(minutes=2) - lag, T0 + dt.timedelta(minutes=4) - lag)]
