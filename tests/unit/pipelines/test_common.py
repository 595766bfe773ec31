"""Helpers every DAG's tasks share (tenfold.pipelines.common)."""

from __future__ import annotations

from types import SimpleNamespace

from airflow.sdk import Asset

from tenfold.pipelines.common import event_months


def _event(**extra: object) -> SimpleNamespace:
    return SimpleNamespace(extra=extra)


def test_event_months_are_the_features_events_months_ascending_once_each() -> None:
    """A first run after unpausing receives every earlier event, newest first: the months come back sorted, each
    once, and only from the named Asset."""
    features, other = Asset("file:///lake/features"), Asset("gs://models/registry/aliases/challenger")
    context = {"triggering_asset_events": {
        features: [_event(month="2013-03"), _event(month="2013-01"), _event(month="2013-03"), _event(rows=5)],
        other: [_event(month="2099-01")],
    }}
    assert event_months(context, features.uri) == ["2013-01", "2013-03"]
    assert event_months({}, features.uri) == []
