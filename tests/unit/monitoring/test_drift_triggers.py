"""A drift triggers retraining once: decide() records each month's trigger (against a version, on the month's
published content) in the lake, and another run that finds it neither alerts nor retrains again, while a retry of
the run that recorded it still emits its event (without a second alert). Every features publish of a month, a
re-publish of the same content included, starts monitor_drift, and each run alerted and retrained again."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tenfold.config import build_settings
from tenfold.monitoring import alerts
from tenfold.pipelines import monitor_drift as pipeline

SUMMARIES = ({"month": "2013-07", "decision": "ok", "max_psi": 0.12, "triggered": []},
             {"month": "2013-08", "decision": "retrain", "max_psi": 0.41, "triggered": ["distance"]})
REPORTED = {"summaries": SUMMARIES, "json_uris": ("a", "b"), "html_uris": ("a.html", "b.html")}


def _run(run_id: str, contents: tuple[str, str] = ("c07", "c08"), version: str = "v1") -> dict[str, Any]:
    return {"run_key": run_id, "airflow_run_id": run_id, "months": ["2013-07", "2013-08"], "version": version,
            "version_ref": "champion", "work_dir": "/tmp/unused", "contents": list(contents)}


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, dict[str, Any]]]:
    out: list[tuple[str, dict[str, Any]]] = []
    monkeypatch.setattr(alerts, "send_alert", lambda settings, title, details: out.append((title, details)))
    return out


def test_a_drift_triggers_once_and_a_retry_of_its_run_still_emits(tmp_path: Path, sent: list[Any]) -> None:
    settings = build_settings("local", {"TENFOLD_HOME": str(tmp_path / "home")})

    first = pipeline.decide(settings, _run("run-a"), REPORTED)
    assert first["retrain"] is True and first["months"] == ["2013-08"] and len(sent) == 1
    assert sent[0][1]["months"] == "2013-08"

    # The same run again (a retry after its first attempt died, or a clear): the event again, no second alert.
    retry = pipeline.decide(settings, _run("run-a"), REPORTED)
    assert retry["retrain"] is True and len(sent) == 1

    # Another run on the same content (a re-publish of the month, a manual rerun): no alert, no retrain.
    other = pipeline.decide(settings, _run("run-b"), REPORTED)
    assert other["retrain"] is False and len(sent) == 1
    assert other["already_triggered"] == {"2013-08": "run-a"}
    assert other["max_psi"] == 0.0  # nothing triggers: the cloud's drift alert must not page for it

    # Newly published content of the month, or another version, drifting: a new trigger.
    republished = pipeline.decide(settings, _run("run-c", contents=("c07", "c08-new")), REPORTED)
    assert republished["retrain"] is True and len(sent) == 2
    assert pipeline.decide(settings, _run("run-d", version="v2"), REPORTED)["retrain"] is True and len(sent) == 3

    recorded = sorted(p.name for p in (tmp_path / "home").rglob("triggered-*.json"))
    assert recorded == ["triggered-v1-c08-new.json", "triggered-v1-c08.json", "triggered-v2-c08.json"], recorded


def test_the_score_written_is_that_of_what_triggers(tmp_path: Path, sent: list[Any],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """A month whose PSI is high by chance but which the test does not call drift (decision "report") does not
    page: the score the cloud alert watches is that of the months that trigger retraining, else 0."""
    from tenfold.monitoring import cloud_metrics

    written: list[float | None] = []
    monkeypatch.setattr(cloud_metrics, "write_drift_score", lambda settings, score: written.append(score))
    settings = build_settings("local", {"TENFOLD_HOME": str(tmp_path / "home")})
    noisy = ({"month": "2013-07", "decision": "report", "max_psi": 0.9, "triggered": []},
             {"month": "2013-08", "decision": "ok", "max_psi": 0.05, "triggered": []})
    decision = pipeline.decide(settings, _run("run-a"), {**REPORTED, "summaries": noisy})
    assert decision["retrain"] is False and written == [0.0] and not sent
    pipeline.decide(settings, _run("run-b"), {**REPORTED, "summaries": (noisy[0], SUMMARIES[1])})
    assert written[-1] == 0.41
