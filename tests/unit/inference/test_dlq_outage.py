"""``tenfold dlq`` drains the dead-letter subscription before it lists or replays: with Pub/Sub away that drain is
best effort for ``inspect`` (what the lake recorded is still listed), and its first pull is held, as real Pub/Sub may
answer one that returns at once with nothing while a sparse subscription holds messages."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pyarrow as pa
import pytest
from typer.testing import CliRunner

from tenfold.config import Settings
from tenfold.inference import cli
from tenfold.inference.requests import ScoringRequest, request_id
from tenfold.inference.store import RunStore, work_objects
from tenfold.messaging.clients import subscription_path


@pytest.fixture
def pubsub_away(settings: Settings) -> Iterator[Settings]:
    """``settings`` with Pub/Sub at a loopback port that is bound and never listened on: every connection is refused,
    as with the emulator stopped (and no other process can take the port meanwhile)."""
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        port = held.getsockname()[1]
        yield settings.model_copy(update={"messaging": settings.messaging.model_copy(
            update={"emulator_host": f"127.0.0.1:{port}"})})


@pytest.mark.parametrize("as_json", [False, True])
def test_inspect_with_pubsub_away_lists_what_is_recorded_after_one_warning_line(
        pubsub_away: Settings, monkeypatch: pytest.MonkeyPatch, as_json: bool) -> None:
    """With the emulator stopped, `tenfold dlq inspect --run R` ended "cannot reach a service it needs" (exit 1) and
    listed nothing, although the run's dead letters were recorded in the lake to stay inspectable."""
    settings = pubsub_away
    monkeypatch.setattr(cli, "command_settings", lambda env=None: settings)
    RunStore(work_objects(settings), "run-1").put_dead_letter("req-1", {
        "request_id": "req-1", "run": "run-1", "partition": "2013-07", "rows": 3, "delivery_attempts": 5,
        "max_delivery_attempts": 5, "error": "ValueError: no column 'k'", "dead_lettered_at": 1.0,
        "data_base64": "", "replays": [], "replayed": False})

    result = CliRunner().invoke(cli.app, ["inspect", "--run", "run-1", *(["--json"] if as_json else [])])

    assert result.exit_code == 0, result.output
    if as_json:  # the warning stays out of what a script parses
        assert [r["request_id"] for r in json.loads(result.stdout)] == ["req-1"]
    else:
        listed, error = result.stdout.splitlines()
        assert listed.startswith("req-1  run run-1  partition 2013-07  rows 3  attempts 5/5"), listed
        assert error == "    error: ValueError: no column 'k'"
    path = subscription_path(settings, settings.messaging.subscriptions["requests"].dead_letter_subscription)
    warning, = result.stderr.splitlines()
    assert warning.startswith(f"warning: could not drain the dead-letter subscription {path} into the lake (ServiceUnavailable: "), \
        warning
    assert "listing only the dead letters recorded in the lake" in warning and "`tenfold dlq inspect` run again" in warning
    assert "Traceback" not in result.output


def _message(r: ScoringRequest, n: int) -> SimpleNamespace:
    return SimpleNamespace(ack_id=f"ack-{n}", message=SimpleNamespace(
        message_id=f"m{n}", data=r.encode(), attributes={**r.attributes(), "CloudPubSubDeadLetterSourceDeliveryCount": "5"},
        publish_time=None))


class _SparseSubscription:
    """A subscriber client at the transport boundary that answers as real Pub/Sub may for a sparse subscription: a
    pull that returns at once gets nothing, a held one gets the messages waiting."""

    def __init__(self, waiting: list[Any]) -> None:
        self.waiting = waiting
        self.acked: list[str] = []
        self.pulls: list[bool] = []  # each pull's return_immediately

    def pull(self, *, request: dict[str, Any], timeout: float, retry: Any) -> Any:
        self.pulls.append(request["return_immediately"])
        if request["return_immediately"]:
            return SimpleNamespace(received_messages=[])
        taken, self.waiting = self.waiting, []
        return SimpleNamespace(received_messages=taken)

    def acknowledge(self, *, request: dict[str, Any], retry: Any) -> None:
        self.acked += request["ack_ids"]

    def close(self) -> None:
        pass


def test_a_replay_drains_a_dead_letter_that_a_pull_returning_at_once_does_not_see(
        own_topology: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every pull of the drain returned at once: real Pub/Sub may answer such a pull with nothing while the dead-letter
    subscription holds messages, and `tenfold dlq replay --run R` refused "run R has no dead letters recorded" while
    R's dead letter waited there. The emulator always answers such a pull with what it has, so the sparse service is a
    client at the transport boundary; the replay's publish is the emulator's."""
    from tenfold.messaging import clients

    settings = own_topology
    r = ScoringRequest(run="run-1", request_id=request_id("run-1", "2013-07", 0), partition="2013-07",
                       model_version="v", rows=pa.table({"k": [1, 2, 3]}))
    sparse = _SparseSubscription([_message(r, 1)])
    monkeypatch.setattr(clients, "subscriber_client", lambda settings: sparse)
    monkeypatch.setattr(cli, "command_settings", lambda env=None: settings)

    result = CliRunner().invoke(cli.app, ["replay", "--run", "run-1"])

    assert result.exit_code == 0, result.output
    assert f"replayed {r.request_id} of run run-1 as message " in result.stdout
    assert "1 request(s) re-published" in result.stdout
    assert sparse.pulls == [False, True]  # held first; then at once, after a pull that returned messages
    assert sparse.acked == ["ack-1"]  # recorded, then acknowledged
    record = RunStore(work_objects(settings), "run-1").dead_letter(r.request_id) or {}
    assert record["replayed"] is True and record["delivery_attempts"] == 5
