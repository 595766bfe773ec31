"""``tenfold dlq replay`` says what it will replay: with no run, request id or ``--all`` it refuses (it replayed
every run's dead letters ever recorded); it marks what it sends before sending it, so a drain's newer record
stands, and takes the mark back when the send fails."""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any

import pytest
from typer.testing import CliRunner

from tenfold.config import Settings
from tenfold.inference import cli, dlq
from tenfold.inference.store import RunStore, work_objects


def test_replay_without_a_run_a_request_id_or_all_is_refused_before_reading_anything(monkeypatch) -> None:
    monkeypatch.setattr(cli, "command_settings", lambda env=None: (_ for _ in ()).throw(AssertionError("read settings")))
    result = CliRunner().invoke(cli.app, ["replay"])
    assert result.exit_code == 2, result.output
    assert result.exception is not None and isinstance(result.exception, SystemExit)
    assert "--run <run>, --request-id <id> or --all" in result.output


class _Publisher:
    """A publisher whose sends run ``meanwhile`` (what a concurrent drain does) and then succeed or fail."""

    def __init__(self, meanwhile: Callable[[], None] = lambda: None, fail: bool = False) -> None:
        self.meanwhile, self.fail, self.sent = meanwhile, fail, 0
        self.attributes: list[dict[str, str]] = []

    def publish(self, topic: str, data: bytes, **attrs: str) -> Any:
        publisher = self
        self.attributes.append(attrs)

        class Future:
            def result(self, timeout: float) -> str:
                publisher.meanwhile()
                if publisher.fail:
                    raise TimeoutError("publish did not complete in 60 s")
                publisher.sent += 1
                return f"m-{publisher.sent}"

        return Future()

    def stop(self) -> None:
        pass


def _dead_letter(settings: Settings, monkeypatch: pytest.MonkeyPatch, publisher: _Publisher) -> RunStore:
    from tenfold.messaging import clients

    monkeypatch.setattr(dlq, "drain_dead_letters", lambda settings, objects=None: [])
    monkeypatch.setattr(clients, "publisher_client", lambda settings: publisher)
    store = RunStore(work_objects(settings), "run-1")
    store.put_dead_letter("req-1", {"request_id": "req-1", "run": "run-1", "attributes": {"request_id": "req-1"},
                                    "data_base64": base64.b64encode(b"rows").decode(), "times_dead_lettered": 1,
                                    "error": "old", "replays": [], "replayed": False})
    return store


def test_a_dead_letter_recorded_anew_while_its_replay_is_sent_is_not_overwritten(
        settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    """The replay marked the copy it read before the send: a drain's newer record (dead-lettered again) was
    overwritten and looked in flight, so the run waited for a request that had already failed again."""
    def drained_again() -> None:
        store.put_dead_letter("req-1", {**(store.dead_letter("req-1") or {}), "times_dead_lettered": 2, "error": "new",
                                        "replayed": False})

    store = _dead_letter(settings, monkeypatch, _Publisher(drained_again))
    assert dlq.replay(settings, run="run-1") == [{"run": "run-1", "request_id": "req-1", "message_id": "m-1"}]
    record = store.dead_letter("req-1") or {}
    assert (record["times_dead_lettered"], record["error"], record["replayed"]) == (2, "new", False)
    assert [r["by"] for r in record["replays"]] == ["replay"]


def test_a_replay_whose_send_fails_is_not_left_in_flight_and_is_sent_by_the_next(
        settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    during: list[bool] = []
    store = _dead_letter(settings, monkeypatch, _Publisher(lambda: during.append(
        bool((store.dead_letter("req-1") or {}).get("replayed"))), fail=True))
    with pytest.raises(TimeoutError):
        dlq.replay(settings, run="run-1")
    assert during == [True]  # marked in flight while it was being sent...
    record = store.dead_letter("req-1") or {}  # ...and the mark taken back when the send failed
    assert (record["replayed"], record["replays"], record["times_dead_lettered"]) == (False, [], 1)

    monkeypatch.setattr("tenfold.messaging.clients.publisher_client", lambda settings: _Publisher())
    assert [s["request_id"] for s in dlq.replay(settings, run="run-1")] == ["req-1"]
    record = store.dead_letter("req-1") or {}
    assert record["replayed"] is True and len(record["replays"]) == 1


def test_a_replay_marks_the_number_its_copy_carries(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    """A drain tells a dead letter of an older copy (it leaves the request in flight) from one of the copy sent last
    by the copy's replay attribute and the number the mark keeps: the two must agree."""
    from tenfold.inference.runs import _latest_replay

    publisher = _Publisher()
    store = _dead_letter(settings, monkeypatch, publisher)
    for again in (False, True):
        dlq.replay(settings, run="run-1", include_replayed=again)
        record = store.dead_letter("req-1") or {}
        assert publisher.attributes[-1]["replay"] == str(_latest_replay(record)) == str(1 + again)


@pytest.mark.parametrize("command", [["inspect"], ["replay", "--all"]])
def test_an_unknown_env_is_bad_usage_not_an_outage(command: list[str]) -> None:
    """`tenfold dlq ... --env bogus` said "cannot read the dead letters ... is the platform up?" or "replay failed ...
    what was sent is marked, re-run it" (exit 1): nothing was tried, the environment is misspelt."""
    result = CliRunner().invoke(cli.app, [*command, "--env", "bogus"])
    assert result.exit_code == 2, result.output
    assert "bogus" in result.output and "platform up" not in result.output and "replay failed" not in result.output


@pytest.mark.parametrize("command", ["inspect", "replay"])
def test_a_run_key_that_cannot_name_a_run_is_bad_usage_before_anything_is_drained(
        command: str, settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    """`--run a/b` (a path pasted in) said "replay failed ...; re-run it" or "is the platform up?" (exit 1), and
    every re-run failed the same way."""
    monkeypatch.setattr(cli, "command_settings", lambda env=None: settings)
    monkeypatch.setattr(dlq, "drain_dead_letters",
                        lambda settings, objects=None: (_ for _ in ()).throw(AssertionError("drained")))
    result = CliRunner().invoke(cli.app, [command, "--run", "runs/k1"])
    assert result.exit_code == 2, result.output
    assert "'runs/k1' is not a run key" in result.output
    assert "re-run it" not in result.output and "platform up" not in result.output


@pytest.mark.parametrize("command", [["inspect"], ["replay", "--all"]])
@pytest.mark.parametrize(("fault", "said"), [
    ("no-credentials", "application-default login"),
    ("permission", "was refused by a Google service (PermissionDenied"),
])
def test_a_cloud_failure_says_what_to_do_there_not_tenfold_up(command: list[str], fault: str, said: str,
                                                              settings: Settings,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """`TENFOLD_ENV=dev tenfold dlq inspect` without credentials said "is the platform up (`tenfold up`)?", which
    refuses dev; a denied replay said "what was sent is marked, re-run it", which fails the same way."""
    from google.api_core.exceptions import PermissionDenied
    from google.auth.exceptions import DefaultCredentialsError

    error = (DefaultCredentialsError("Your default credentials were not found") if fault == "no-credentials"
             else PermissionDenied("User not authorized to perform this action"))

    def failing(*args: object, **kwargs: object) -> None:
        raise error

    monkeypatch.setattr(cli, "command_settings", lambda env=None: settings)
    monkeypatch.setattr(dlq, command[0], failing)
    result = CliRunner().invoke(cli.app, command)
    assert result.exit_code == 1, result.output
    assert said in result.output and "tenfold up`)?" not in result.output and "fault in the code" not in result.output


def test_inspect_lists_the_newest_dead_letter_first(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    """It said "newest runs first" and listed run folders by name: asset_triggered__... before manual__... whatever
    their times."""
    monkeypatch.setattr(dlq, "drain_dead_letters", lambda settings, objects=None: None)
    objects = work_objects(settings)
    for run, request, when in (("asset_triggered__b", "b-000000", 2.0), ("manual__a", "a-000000", 1.0)):
        RunStore(objects, run).put_dead_letter(request, {"request_id": request, "run": run, "dead_lettered_at": when})
    assert [r["request_id"] for r in dlq.inspect(settings)][:2] == ["b-000000", "a-000000"]
    RunStore(objects, "manual__a").put_dead_letter("a-000001", {"request_id": "a-000001", "run": "manual__a",
                                                                "dead_lettered_at": 3.0})
    assert [r["request_id"] for r in dlq.inspect(settings)][:3] == ["a-000001", "b-000000", "a-000000"]


def test_a_second_replay_of_a_request_says_it_was_replayed_before_and_how_to_send_it_again(
        settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    """Replayed once, then the emulator restarted (losing the message) and the same replay run again: it printed
    "0 request(s) re-published", exit 0, and the run's score waited an hour for a request nobody sent."""
    monkeypatch.setattr(cli, "command_settings", lambda env=None: settings)
    _dead_letter(settings, monkeypatch, _Publisher())
    first = CliRunner().invoke(cli.app, ["replay", "--request-id", "req-1"])
    assert first.exit_code == 0 and "1 request(s) re-published" in first.output, first.output
    again = CliRunner().invoke(cli.app, ["replay", "--request-id", "req-1"])
    assert again.exit_code == 2 and "request req-1 was replayed before" in again.output, again.output
    assert "--again sends it again" in again.output
    whole_run = CliRunner().invoke(cli.app, ["replay", "--run", "run-1"])
    assert whole_run.exit_code == 0 and "0 request(s) re-published" in whole_run.output
    assert "1 request(s) replayed before were left out" in whole_run.output and "--again" in whole_run.output
    forced = CliRunner().invoke(cli.app, ["replay", "--request-id", "req-1", "--again"])
    assert forced.exit_code == 0 and "1 request(s) re-published" in forced.output, forced.output


@pytest.mark.parametrize("command", [["inspect"], ["replay", "--all"]])
@pytest.mark.parametrize("damage", [b'{"request_id": "req-1", "run": "ru', b"\x80\x81 not UTF-8"])
def test_a_damaged_dead_letter_is_refused_naming_it_not_a_fault_in_the_code(
        command: list[str], damage: bytes, settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    """A dead-letter record torn by a crash (or not UTF-8: another tool's file) ended `tenfold dlq inspect` and
    `replay` with "failed on a fault in the code (JSONDecodeError ...) ... report it", naming no file."""
    monkeypatch.setattr(cli, "command_settings", lambda env=None: settings)
    store = _dead_letter(settings, monkeypatch, _Publisher())
    path = work_objects(settings).root / "run-1" / "dead_letters" / "req-1.json"  # type: ignore[attr-defined]
    assert store.dead_letter("req-1") is not None and path.is_file()
    path.write_bytes(damage)
    result = CliRunner().invoke(cli.app, command)
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
    assert result.output.startswith(f"error: `tenfold dlq {command[0]}`: the dead-letter record {path} is damaged "
                                    "and cannot be read ("), result.output
    assert "restore it from a copy, or delete it, then run the command again" in result.output
    assert "fault in the code" not in result.output and "Traceback" not in result.output


def test_a_damaged_error_record_is_a_refusal_naming_it(settings: Settings) -> None:
    """The worker's error record of a request, torn: a refusal (retryable False: a pipeline step fails at once, and
    ``tenfold.outages.ending`` says it as it is), still a ValueError for the drain, which records over it."""
    from tenfold.inference.store import DamagedRecord
    from tenfold.outages import ending

    store = RunStore(work_objects(settings), "run-1")
    store.put_error("req-1", {"request_id": "req-1"})
    path = work_objects(settings).root / "run-1" / "errors" / "req-1.json"  # type: ignore[attr-defined]
    path.write_bytes(b"\x00\x01")
    with pytest.raises(DamagedRecord) as raised:
        store.error("req-1")
    assert isinstance(raised.value, ValueError) and raised.value.retryable is False
    said = ending(raised.value, "tenfold x", settings.local.home, debug_hint="with TENFOLD_DEBUG=1")
    assert said.startswith(f"error: `tenfold x`: the error record {path} is damaged and cannot be read"), said


def test_inspect_with_a_hung_pubsub_warns_that_it_could_not_drain_and_lists_what_is_recorded(
        settings: Settings, hung_pubsub: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    """A SIGSTOPped or wedged emulator (its port accepts connections, nothing answers) let the drain's held first pull
    run out its 5 s deadline, as the emulator does on an empty subscription: `tenfold dlq inspect` listed what was
    recorded with no warning, as though nothing waited on the dead-letter subscription. The fault is real at the
    transport: a loopback port that is listened on and never served, so the kernel accepts the real client's connection
    and nothing ever answers it."""
    from tenfold.messaging.clients import subscription_path

    RunStore(work_objects(settings), "run-1").put_dead_letter("req-1", {
        "request_id": "req-1", "run": "run-1", "partition": "2013-07", "rows": 3, "delivery_attempts": 5,
        "max_delivery_attempts": 5, "error": "ValueError: no column 'k'", "dead_lettered_at": 1.0,
        "data_base64": "", "replays": [], "replayed": False})
    monkeypatch.setattr(cli, "command_settings", lambda env=None: hung_pubsub)
    result = CliRunner().invoke(cli.app, ["inspect", "--run", "run-1"])
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("req-1  run run-1  partition 2013-07"), result.stdout
    path = subscription_path(settings, settings.messaging.subscriptions["requests"].dead_letter_subscription)
    warning, = result.stderr.splitlines()
    assert warning.startswith(f"warning: could not drain the dead-letter subscription {path} into the lake "
                              "(DeadlineExceeded: "), warning
    assert "not answering" in warning and "listing only the dead letters recorded in the lake" in warning, warning
