"""Helpers shared by the integration tests."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable

import pytest


def read_asset_events(env: dict[str, str], uri: str) -> list[dict[str, object]]:
    """The extras of an Asset's events in the Airflow metadatabase of ``env``, oldest first."""
    db = env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].removeprefix("sqlite:///")
    with sqlite3.connect(db) as conn:
        rows = conn.execute(
            "SELECT e.extra FROM asset_event e JOIN asset a ON a.id = e.asset_id WHERE a.uri = ? ORDER BY e.id", (uri,)
        ).fetchall()
    return [json.loads(r[0]) for r in rows]


@pytest.fixture
def asset_events() -> Callable[[dict[str, str], str], list[dict[str, object]]]:
    """``asset_events(env, uri)``: the extras of an Asset's events, as a test reads them."""
    return read_asset_events
