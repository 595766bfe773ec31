"""``tenfold serve`` and the fleet's entry into ``tenfold up``: clear refusals, and nothing started when it cannot start.

The commands on a running fleet are exercised in test_fleet.py (one fleet for the module).
"""

from __future__ import annotations

import datetime as dt
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from tenfold.config import Settings, get_settings
from tenfold.local import free_port, free_ports, settings_env
from tenfold.local.stack import serving_up
from tenfold.serving import fleet
from tenfold.serving.auth import read_token, token_path
from tenfold.serving.cli import app

runner = CliRunner()


@pytest.fixture(autouse=True)
def _fresh_settings() -> Iterator[None]:
    """The commands call get_settings(), which is cached: each invocation must read its own environment."""
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """A home where nothing runs, on ports nothing uses."""
    lb, gcs, pubsub = free_ports(3)
    return {"TENFOLD_ENV": "local", "TENFOLD_HOME": str(tmp_path / "home"), "TENFOLD_LOCAL__LB_PORT": str(lb),
            "TENFOLD_LOCAL__GCS_PORT": str(gcs), "TENFOLD_LOCAL__PUBSUB_PORT": str(pubsub)}


def _run(env: dict[str, str], *args: str) -> Any:
    return runner.invoke(app, list(args), env=env)


def test_status_of_a_fleet_that_is_not_running(env: dict[str, str]) -> None:
    result = _run(env, "status")
    assert result.exit_code == 3 and "serving  stopped" in result.output and "tenfold serve up" in result.output


@pytest.mark.parametrize(("args", "code", "message"), [
    (("split", "150"), 2, "from 0 to 100"),
    (("split", "--", "-5"), 2, "from 0 to 100"),
    (("split",), 1, "is the fleet up"),
    (("split", "10"), 1, "is the fleet up"),  # before the fleet ever ran: no run folder, no map file written
    (("scale",), 2, "nothing to change"),
    (("scale", "--pool", "blue", "--replicas", "2"), 2, "unknown pool 'blue'"),
    (("scale", "--replicas", "2", "--min", "1"), 2, "either --replicas or --min/--max"),
    (("scale", "--replicas", "2"), 1, "not up: run `tenfold serve up`"),
    # Bounds that can never be valid are bad usage, said before the fleet is asked (it said "not up", exit 1).
    (("scale", "--min", "5", "--max", "2"), 2, "--min 5 is above --max 2"),
    (("scale", "--max", "-1"), 2, "Invalid value for '--max'"),
    (("scale", "--replicas", "0"), 2, "the stable pool keeps at least one replica"),  # the fleet said so: exit 1
    (("scale", "--min", "0"), 2, "the stable pool keeps at least one replica"),
    # Checked before the model is resolved: resolving against a stopped platform took two minutes of the
    # storage client's retries, then a traceback.
    (("rollout", "--model", "v9"), 1, "not up: run `tenfold serve up`"),
    (("fault", "--clear"), 1, "not up: run `tenfold serve up`"),
    (("up",), 1, "where the GCS emulator (the model registry's store) should be: run `tenfold up`"),
    (("rollout", "--model", "v9", "--pool", "green"), 2, "unknown pool 'green'"),
    (("down",), 0, "serving: not running"),
])
def test_commands_refuse_clearly(env: dict[str, str], args: tuple[str, ...], code: int, message: str) -> None:
    result = _run(env, *args)
    assert result.exit_code == code, result.output
    assert message in result.output
    # CliRunner writes no traceback to the output: an exception that escaped the command is kept in
    # result.exception, and only a SystemExit (typer.Exit, or the usage error's exit 2) is a clean refusal.
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)


def test_a_busy_port_stops_up_before_anything_starts(make_settings: Any) -> None:
    settings = make_settings()
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        settings = settings.model_copy(update={"local": settings.local.model_copy(update={"lb_port": port})})
        with pytest.raises(fleet.FleetError, match=rf"127\.0\.0\.1:{port} \(lb_port\) is already in use.*TENFOLD_LOCAL__LB_PORT"):
            fleet.up(settings, "champion", resolve=lambda s, ref: pytest.fail("resolved a model despite the busy port"))
    run = settings.local.home / "run"
    assert not list(run.glob("*.pid")) and fleet.supervisor_record(settings) is None


def test_up_names_a_model_the_registry_does_not_have(make_settings: Any, local_settings: Settings) -> None:
    settings = make_settings(on=local_settings, local={"lb_port": free_port()})
    with pytest.raises(fleet.UnknownModel, match=r"cannot serve 'no-such-alias'.*tenfold models list"):
        fleet.up(settings, "no-such-alias")
    assert fleet.supervisor_record(settings) is None and not list((settings.local.home / "run").glob("*.pid"))


@pytest.mark.parametrize("command", ["up", "rollout"])
def test_a_model_the_registry_does_not_hold_exits_2_as_tenfold_models_does(
        env: dict[str, str], monkeypatch: pytest.MonkeyPatch, command: str) -> None:
    """`tenfold models show nosuch` exits 2 (a refusal); `tenfold serve up/rollout --model nosuch` exited 1."""
    def unknown(*args: Any, **kwargs: Any) -> None:
        raise fleet.UnknownModel("cannot serve 'nosuch': no version or alias 'nosuch'")

    monkeypatch.setattr(fleet, command, unknown)
    result = _run(env, command, "--model", "nosuch")
    assert result.exit_code == 2 and "cannot serve 'nosuch'" in result.output, result.output


def test_tenfold_up_skips_serving_cleanly_without_a_champion(make_settings: Any, local_settings: Settings) -> None:
    settings = make_settings(on=local_settings, local={"lb_port": free_port()})  # a registry of its own: empty
    said: list[str] = []
    assert serving_up(settings, say=said.append) is False
    assert said == ["serving: skipped, no model is registered as 'champion' yet (run `make demo` to train one, "
                    "then `tenfold serve up`)"]
    assert fleet.supervisor_record(settings) is None
    # The token exists already (clients can be configured before the first model), and status prints it.
    token = read_token(settings)
    out = fleet.describe(fleet.report(settings), secrets=True)
    assert out.startswith("serving  stopped") and f"token   {token}  (file {token_path(settings)}" in out
    # What `tenfold up` and `tenfold serve up` print: where to read it, never the token itself.
    assert token not in fleet.describe(fleet.report(settings))


def test_settings_reach_the_supervisor_whole(make_settings: Any, tmp_path: Path) -> None:
    # The supervisor rebuilds the settings from the file `up` writes (fleet and server sections are
    # not environment variables); what it reads back equals what was written.
    # Values that no default holds, nested ones included: a writer that left any out fails here.
    base = make_settings()
    serving = base.serving.model_copy(update={
        "target_utilization": 0.42,
        "fleet": base.serving.fleet.model_copy(update={"stabilization_s": 7.5}),
        "server": base.serving.server.model_copy(update={"max_batch_wait_ms": 3.0}),
    })
    # (Not the alert webhook: a SecretStr, written as ********** and never read back; the fleet never holds it.)
    monitoring = base.monitoring.model_copy(update={"alert_smtp_host": "relay.internal:2525"})
    settings = base.model_copy(update={"serving": serving, "monitoring": monitoring})
    fleet.run_dir(settings).mkdir(parents=True, exist_ok=True)
    path = fleet.write_settings_file(settings)
    assert path.stat().st_mode & 0o777 == 0o600  # a workload's own settings may hold what its owner keeps private
    assert fleet.read_settings_file(path) == settings
    # A later `tenfold serve ...`, built from the environment alone, gets the running fleet's settings back.
    assert base != settings and fleet.running_settings(base) == settings
    assert settings_env(settings)["TENFOLD_HOME"] == str(settings.local.home)


def test_the_feedback_sink_runs_as_a_platform_process_until_serving_stops(make_settings: Any, local_settings: Settings) -> None:
    """``tenfold up`` starts ``tenfold feedback sink`` beside the fleet; a second start is a no-op; down stops it."""
    import psutil

    from tenfold.feedback import labelled_rows
    from tenfold.local.process import log_tail as process_log_tail
    from tenfold.local.stack import FEEDBACK_SINK, feedback_sink_record, feedback_sink_up, serving_down
    from tenfold.messaging import ensure_topology, publisher_client, topic_path
    from tenfold.messaging.records import PredictionRecord

    settings = make_settings(on=local_settings, local={"lb_port": free_port()})
    ensure_topology(settings)
    record = feedback_sink_up(settings, say=print, tie_to_this_process=True)
    try:
        assert feedback_sink_up(settings, say=print).pid == record.pid  # already running: not started twice
        cmdline = psutil.Process(record.pid).cmdline()
        assert cmdline[-3:] == ["tenfold.cli", "feedback", "sink"]
        # It works: a published prediction is landed and joined (unlabelled until its feedback comes).
        record_ = PredictionRecord(prediction_id="p-sink-1", model_version="v1", arm="stable", probability=0.3,
                                   request={"flight": 1}, served_at=dt.datetime.now(dt.UTC))
        publisher = publisher_client(settings)
        publisher.publish(topic_path(settings, settings.messaging.predictions_topic), record_.to_message(),
                          **record_.attributes()).result(timeout=30)
        deadline = time.monotonic() + 90
        while (rows := labelled_rows(settings, include_unlabelled=True)).num_rows == 0:
            assert time.monotonic() < deadline, process_log_tail(record.log)
            time.sleep(0.5)
        assert rows["prediction_id"].to_pylist() == ["p-sink-1"]
    finally:
        said: list[str] = []
        serving_down(settings, say=said.append)
    assert f"{FEEDBACK_SINK}: stopped" in said and feedback_sink_record(settings) is None
    assert not psutil.pid_exists(record.pid) or psutil.Process(record.pid).status() == psutil.STATUS_ZOMBIE


@pytest.mark.parametrize("corrupt", ['{"generation": 2, "pools": {"stable": {"vers', "{}"])
@pytest.mark.parametrize("args", [("scale", "--replicas", "2"), ("reload",)])
def test_a_corrupt_spec_file_is_one_line_naming_it(env: dict[str, str], corrupt: str, args: tuple[str, ...]) -> None:
    spec = Path(env["TENFOLD_HOME"]) / "run" / fleet.SPEC_FILE
    spec.parent.mkdir(parents=True)
    spec.write_text(corrupt)
    result = _run(env, *args)
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), (repr(result.exception), result.output)
    assert f"{spec} is corrupt" in result.output and "run `tenfold serve down` then `tenfold serve up`" in result.output
    assert "Traceback" not in result.output


def test_up_starts_the_feedback_sink_beside_the_fleet(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    """`tenfold serve up`, which `tenfold up` advises without a champion, started the fleet alone: predictions and
    feedback stayed on Pub/Sub, and a rollout's canary checks found no feedback until their deadline. With the Pub/Sub
    emulator not running (nothing listens on the env's port), the real feedback_sink_up started a sink anyway, which
    retried for a minute and died: `serve up` said exit 0 while no sink ran. It is refused, naming the emulator."""
    from tenfold.local import process, stack
    from tenfold.serving import fleet

    started: list[str] = []
    monkeypatch.setattr(fleet, "up", lambda settings, model, **kwargs: started.append("fleet"))
    monkeypatch.setattr(fleet, "report", lambda settings: None)
    monkeypatch.setattr(fleet, "describe", lambda report: "serving  running")
    real_sink_up = stack.feedback_sink_up
    monkeypatch.setattr(stack, "feedback_sink_up", lambda settings, **kwargs: started.append("sink"))
    result = _run(env, "up")
    assert result.exit_code == 0, result.output
    assert started == ["fleet", "sink"]

    monkeypatch.setattr(stack, "feedback_sink_up", real_sink_up)
    run = Path(env["TENFOLD_HOME"]) / "run"
    try:
        result = _run(env, "up")
        sink = process.read_record(run, stack.FEEDBACK_SINK)
    finally:
        if (left := process.read_record(run, stack.FEEDBACK_SINK)) is not None:
            process.stop(left, timeout=10)
    assert result.exit_code == 1 and "the fleet is up, but the feedback sink did not start" in result.output, \
        result.output
    port = env["TENFOLD_LOCAL__PUBSUB_PORT"]
    assert f"the Pub/Sub emulator does not answer on 127.0.0.1:{port}" in result.output, result.output
    assert "run `tenfold up`" in result.output and sink is None
    # and `serve down` stops what `serve up` started: the fleet, then the sink (it kept pulling the subscriptions)
    stopped: list[str] = []
    monkeypatch.setattr(fleet, "down", lambda settings, **kwargs: stopped.append("fleet") or True)
    monkeypatch.setattr(stack, "stop_service", lambda settings, name: stopped.append(name) or True)
    result = _run(env, "down")
    assert result.exit_code == 0 and stopped == ["fleet", stack.FEEDBACK_SINK], result.output
