"""The drift score as a Cloud Monitoring custom metric: what the cloud's drift alert policy watches.

``monitor_drift``'s ``decide`` writes at most one point per run in dev and prod to ``settings.monitoring.drift_metric``
(a ``GAUGE`` of ``DOUBLE`` on the ``global`` resource, declared by the platform stack's observability component): the
largest PSI over the features that trigger retraining, across the months the run retrains for; 0.0 when it retrains
for none (a high PSI the feature's test does not call drift included). Only a run that emits the drift event (the
DAG's ``decide`` task) writes it: nothing for a version that is not the champion, nothing from a run outside Airflow
(``python -m tenfold.pipelines.monitor_drift``, ``monitor()``), which retrains nothing; and it leaves out a month an
earlier try of the run already scored. So the point reaches ``monitoring.drift_psi``, where the alert ("the drift
monitor is retraining the champion") fires, only when the run retrains: written unrounded, the page and the
retrain agree (docs/drift.md). A transient error fails ``decide``'s try while its task has tries left (the next
writes the score); a :class:`MetricWriteError`, or an outage on the last try, is logged and named in the drift alert.
Locally there is no Cloud Monitoring: the alert hooks of :mod:`tenfold.monitoring.alerts` are the alerts.
"""

from __future__ import annotations

import datetime as dt
import math
from typing import Any

from tenfold.config import Settings


class MetricWriteError(RuntimeError):
    """Cloud Monitoring refused the point for good (a retry would send the same): the message says why."""

    retryable = False


def drift_series(settings: Settings, score: float, at: dt.datetime) -> Any:
    """The one-point ``TimeSeries`` of ``score`` at ``at``."""
    from google.cloud import monitoring_v3

    series = monitoring_v3.TimeSeries()
    series.metric.type = settings.monitoring.drift_metric
    series.resource.type = "global"
    series.resource.labels["project_id"] = settings.project_id
    seconds = at.timestamp()
    series.points = [monitoring_v3.Point({
        "interval": {"end_time": {"seconds": int(seconds), "nanos": int((seconds % 1) * 1e9)}},
        "value": {"double_value": float(score)},
    })]
    return series


def write_drift_score(settings: Settings, score: float | None, *, client: Any = None,
                      at: dt.datetime | None = None) -> bool:
    """Write ``score`` to the drift metric in dev and prod; False (nothing written) locally or without a score.

    A transient error (unavailable, deadline, quota) propagates for the task's retries; a refusal that a retry
    would meet again (the metric or project does not exist, no permission) is a :class:`MetricWriteError`.
    """
    if settings.is_local or score is None or not math.isfinite(score):
        return False
    from google.api_core import exceptions
    from google.cloud import monitoring_v3

    client = client or monitoring_v3.MetricServiceClient()
    try:
        client.create_time_series(name=f"projects/{settings.project_id}",
                                  time_series=[drift_series(settings, score, at or dt.datetime.now(dt.UTC))])
    except (exceptions.InvalidArgument, exceptions.NotFound, exceptions.PermissionDenied) as exc:
        raise MetricWriteError(
            f"Cloud Monitoring refused the drift score for {settings.monitoring.drift_metric} in project "
            f"{settings.project_id}: {exc.message}. Deploy the platform stack (it declares the metric and grants "
            "the orchestrator roles/monitoring.metricWriter)") from exc
    return True
