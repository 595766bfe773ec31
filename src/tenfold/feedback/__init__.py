"""The feedback loop: sampled predictions and observed outcomes, from Pub/Sub to a labelled table.

::

    predictions topic ─▶ FeedbackSink ─▶ lake/<predictions_table>  (append-only log, by served month)
    feedback topic    ─▶ FeedbackSink ─▶ lake/<feedback_table>     (append-only log, by received month)
                                   join ─▶ lake/<labelled_table>   (one row per prediction id, published)
                                              ├─▶ online_metrics()  per model version and arm (canary analysis)
                                              └─▶ labelled_rows()   served requests with outcomes (retraining:
                                                    feedback.training turns them into weighted training rows)

Run it with ``tenfold feedback sink``, ``tenfold feedback join`` and ``tenfold feedback metrics``
(``--help`` on each); docs/feedback.md explains the guarantees. Heavy modules load on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tenfold.feedback.metrics import (
        BinaryMetrics,
        GroupMetrics,
        binary_metrics,
        flatten_requests,
        labelled_lineage,
        labelled_rows,
        online_metrics,
    )
    from tenfold.feedback.sink import FeedbackSink, SinkError, SinkOptions, SinkStats
    from tenfold.feedback.upsert import JoinOptions, JoinReport, join

_EXPORTS = {
    "join": "upsert", "JoinOptions": "upsert", "JoinReport": "upsert",
    "online_metrics": "metrics", "labelled_rows": "metrics", "flatten_requests": "metrics",
    "labelled_lineage": "metrics", "binary_metrics": "metrics", "BinaryMetrics": "metrics", "GroupMetrics": "metrics",
    "FeedbackSink": "sink", "SinkOptions": "sink", "SinkStats": "sink", "SinkError": "sink",
}

__all__ = [
    "BinaryMetrics", "FeedbackSink", "GroupMetrics", "JoinOptions", "JoinReport", "SinkError", "SinkOptions",
    "SinkStats", "binary_metrics", "flatten_requests", "join", "labelled_lineage", "labelled_rows", "online_metrics",
]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(f"tenfold.feedback.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'tenfold.feedback' has no attribute {name!r}")
