"""Alert policies (serving latency and errors, dead letters, stuck subscriptions, drift, the Airflow tasks' own
alerts) and where they go."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass

from cdktn_provider_google.monitoring_alert_policy import MonitoringAlertPolicy
from cdktn_provider_google.monitoring_metric_descriptor import MonitoringMetricDescriptor
from cdktn_provider_google.monitoring_notification_channel import MonitoringNotificationChannel
from constructs import Construct

from infra.components._jsii import structs

# Google's metric types (https://cloud.google.com/monitoring/api/metrics_gcp).
LB_LATENCY = "loadbalancing.googleapis.com/https/total_latencies"
LB_REQUESTS = "loadbalancing.googleapis.com/https/request_count"
UNDELIVERED = "pubsub.googleapis.com/subscription/num_undelivered_messages"
OLDEST_UNACKED = "pubsub.googleapis.com/subscription/oldest_unacked_message_age"
# The monitored resource of every log line of a Composer environment (its tasks', callbacks' and DAG processor's).
COMPOSER_RESOURCE = "cloud_composer_environment"
# Where a line's text lands in a log entry: plain text (Airflow 2's formatter), or a structured payload (Airflow 3's
# JSON task log keeps the message under "event"; Google's logging agents and libraries under "message").
MESSAGE_FIELDS = ("textPayload", "jsonPayload.message", "jsonPayload.event")
# Google's floor for a log-match policy: at most one notification per 5 minutes (and 20 a day) per policy.
LOG_ALERT_RATE_LIMIT_S = 300


@dataclass(frozen=True)
class LogAlertProps:
    """Page on every log line of the Composer environment ``composer_environment`` that holds ``marker`` (Tenfold's
    alert line: tenfold.monitoring.alerts.log_marker)."""

    composer_environment: str
    marker: str


@dataclass(frozen=True)
class ObservabilityProps:
    name_prefix: str
    notification_email: str
    url_map_name: str
    p99_latency_ms: int
    error_rate_5xx: float
    dead_letter_subscriptions: Sequence[str]
    dead_letter_backlog: int
    work_subscriptions: Sequence[str]
    oldest_unacked_age_s: int
    drift_metric: str
    drift_threshold: float  # the drift alert fires at or above it
    window_s: int = 300
    # None where no Composer runs the DAGs (their alerts then never reach Cloud Logging: docs/deploy.md)
    airflow_alerts: LogAlertProps | None = None


def composer_log_filter(environment: str, marker: str) -> str:
    """The Logging query of the lines of Composer environment ``environment`` whose text holds ``marker`` (``:`` is a
    case-insensitive substring test; no severity restriction, since the marker alone tells an alert line)."""
    text = " OR ".join(f"{field}:{json.dumps(marker)}" for field in MESSAGE_FIELDS)
    return (f'resource.type = "{COMPOSER_RESOURCE}" AND resource.labels.environment_name = {json.dumps(environment)}'
            f" AND ({text})")


def _subscription_filter(metric: str, names: Sequence[str]) -> str:
    ids = " OR ".join(f'resource.labels.subscription_id = "{n}"' for n in names)
    return f'metric.type = "{metric}" AND resource.type = "pubsub_subscription" AND ({ids})'


class Observability(Construct):
    def __init__(self, scope: Construct, id_: str, props: ObservabilityProps) -> None:
        super().__init__(scope, id_)
        p = props
        self.channel = MonitoringNotificationChannel(
            self, "email", display_name=f"{p.name_prefix} on-call", type="email",
            labels={"email_address": p.notification_email},
        )
        channels = [self.channel.id]
        window = f"{p.window_s}s"
        lb = f'resource.type = "https_lb_rule" AND resource.labels.url_map_name = "{p.url_map_name}"'

        # monitor_drift writes at most one point per run (tenfold.monitoring.cloud_metrics): the largest PSI of the
        # months it retrains for, 0 when none; declaring the metric lets the policy exist before the first point. Its
        # type carries the environment's prefix: a descriptor is one per project, and dev and prod may share one.
        self.drift_descriptor = MonitoringMetricDescriptor(
            self, "drift-metric", type=p.drift_metric, metric_kind="GAUGE", value_type="DOUBLE",
            display_name=f"{p.name_prefix} feature drift (PSI)",
            description="The largest population stability index of the features that trigger retraining, over the "
                        "months a monitor_drift run retrains for (0 when it retrains for none)",
        )

        def policy(cid: str, name: str, condition: dict[str, object], doc: str, after: list[object] | None = None) -> MonitoringAlertPolicy:
            return MonitoringAlertPolicy(
                self, cid, display_name=f"{p.name_prefix} {name}", combiner="OR",
                conditions=structs([{"display_name": name, "condition_threshold": condition}]),
                notification_channels=channels,
                documentation={"content": doc, "mime_type": "text/markdown"},
                alert_strategy={"auto_close": "1800s"},
                depends_on=after,  # type: ignore[arg-type]
            )

        self.policies = [
            policy("serving-p99-latency", "serving p99 latency", {
                "filter": f'metric.type = "{LB_LATENCY}" AND {lb}',
                "comparison": "COMPARISON_GT", "threshold_value": p.p99_latency_ms, "duration": window,
                # The service's p99: each series' latency distribution over the window (ALIGN_DELTA), merged across
                # series and read at its 99th percentile. Each series' own p99, then the largest (REDUCE_MAX), paged
                # on the slowest sliver of traffic (one far-away country, one response code's few slow answers).
                "aggregations": structs([{"alignment_period": window, "per_series_aligner": "ALIGN_DELTA",
                                  "cross_series_reducer": "REDUCE_PERCENTILE_99"}]),
            }, "p99 latency at the load balancer is above target: check the canary share and the fleet's autoscaler."),
            policy("serving-5xx-rate", "serving 5xx rate", {
                "filter": f'metric.type = "{LB_REQUESTS}" AND {lb} AND metric.labels.response_code_class = 500',
                "denominator_filter": f'metric.type = "{LB_REQUESTS}" AND {lb}',
                "comparison": "COMPARISON_GT", "threshold_value": p.error_rate_5xx, "duration": window,
                "aggregations": structs([{"alignment_period": window, "per_series_aligner": "ALIGN_RATE", "cross_series_reducer": "REDUCE_SUM"}]),
                "denominator_aggregations": structs([{"alignment_period": window, "per_series_aligner": "ALIGN_RATE",
                                              "cross_series_reducer": "REDUCE_SUM"}]),
            }, "More than the allowed share of requests fail with 5xx: roll the canary back to 0 % first."),
            policy("dead-letter-backlog", "dead-letter backlog", {
                "filter": _subscription_filter(UNDELIVERED, p.dead_letter_subscriptions),
                "comparison": "COMPARISON_GT", "threshold_value": max(p.dead_letter_backlog - 1, 0), "duration": "60s",
                "aggregations": structs([{"alignment_period": "60s", "per_series_aligner": "ALIGN_MAX"}]),
            }, "Messages were dead-lettered: pull them from the dead-letter subscription and triage."),
            policy("oldest-unacked-age", "oldest unacked message age", {
                "filter": _subscription_filter(OLDEST_UNACKED, p.work_subscriptions),
                "comparison": "COMPARISON_GT", "threshold_value": p.oldest_unacked_age_s, "duration": window,
                "aggregations": structs([{"alignment_period": "60s", "per_series_aligner": "ALIGN_MAX"}]),
            }, "A subscription is not being drained: check its workers and autoscaler."),
            # Pages at or above drift_threshold, as the monitor retrains at psi >= psi_drift: Cloud Monitoring's
            # threshold conditions compare strictly (COMPARISON_GT or _LT only), so the threshold is the largest double
            # below it (a PSI of exactly 0.25 retrained but did not page).
            policy("drift", "feature drift", {
                "filter": f'metric.type = "{p.drift_metric}" AND resource.type = "global"',
                "comparison": "COMPARISON_GT", "threshold_value": math.nextafter(p.drift_threshold, -math.inf),
                "duration": "0s",
                "aggregations": structs([{"alignment_period": window, "per_series_aligner": "ALIGN_MAX"}]),
            }, "The drift monitor is retraining the champion: a feature that triggers retraining drifted (its PSI at "
               "or above the monitor's threshold, and its statistical test rejects) in a month no earlier run retrained "
               "for. Open the month's drift report (monitor_drift's log links it) and follow the train_model run its "
               "drift event started.",
                [self.drift_descriptor]),
        ]

        # Every tenfold.monitoring.alerts.send_alert in Composer (quality gate and source refusals, failed tasks, drift
        # retraining) logs one line starting with the marker; without this policy nobody would see it. A log-match
        # condition needs no metric, and Google requires it a notification rate limit.
        self.airflow_alerts: MonitoringAlertPolicy | None = None
        if p.airflow_alerts is not None:
            a = p.airflow_alerts
            self.airflow_alerts = MonitoringAlertPolicy(
                self, "airflow-alerts", display_name=f"{p.name_prefix} airflow alerts", combiner="OR",
                conditions=structs([{"display_name": "airflow alerts", "condition_matched_log": {
                    "filter": composer_log_filter(a.composer_environment, a.marker)}}]),
                notification_channels=channels,
                documentation={"content": (
                    f"A Tenfold task in Composer environment `{a.composer_environment}` sent an alert (a quality gate or "
                    f"source refusal, a failed task, a drift retrain). Its log line starts with `{a.marker}` and names "
                    "the title; the lines under it in the task's log hold the details. Google sends at most one "
                    "notification per 5 minutes and 20 a day per log-match policy: search the environment's logs for "
                    "the marker to see every alert."), "mime_type": "text/markdown"},
                alert_strategy={"auto_close": "1800s",
                                "notification_rate_limit": {"period": f"{LOG_ALERT_RATE_LIMIT_S}s"}},
            )
            self.policies.append(self.airflow_alerts)
