"""``tenfold up`` and ``tenfold demo`` report what the platform refuses as one clear error line and exit 1, never a
traceback: the same refusals through both commands."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from tenfold.cli import app
from tenfold.local import cli as local_cli
from tenfold.local import local_settings, stack

runner = CliRunner()


def test_up_with_an_empty_token_file_names_the_file_and_what_to_do(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = local_settings(tmp_path)
    token = settings.local.home / "run" / "serving.token"
    token.parent.mkdir(parents=True)
    token.write_text("")
    monkeypatch.setattr(local_cli, "get_settings", lambda env=None: settings)
    monkeypatch.setattr(stack, "up", lambda settings, services, echo: [])  # the platform itself is up and healthy
    out = runner.invoke(app, ["up"])
    assert out.exit_code == 1, out.output
    assert out.exception is None or isinstance(out.exception, SystemExit), repr(out.exception)
    assert f"the serving token file {token} is empty: delete it and run `tenfold up`" in out.output


def test_demo_reports_a_platform_refusal_like_up_does(monkeypatch: pytest.MonkeyPatch) -> None:
    """The demo's RuntimeError branch (what `tenfold up` reports the same way: a failed migration, provisioning, a bad
    token file) as one line. A full disk is not this: it is an OSError (the next test, on a real full disk)."""
    from tenfold import demo

    def refuse(*args: object, **kwargs: object) -> None:
        raise RuntimeError("`airflow db migrate` failed (AIRFLOW_HOME=/x): exit 1")

    monkeypatch.setattr(demo, "run", refuse)
    out = runner.invoke(app, ["demo"])
    assert out.exit_code == 1 and isinstance(out.exception, SystemExit), repr(out.exception)
    assert "error: `airflow db migrate` failed (AIRFLOW_HOME=/x): exit 1" in out.output


def test_demo_on_a_full_disk_is_one_line_naming_the_home_and_leaves_no_pid(small_disk: Any) -> None:
    """TENFOLD_HOME on a real full disk (a tmpfs with no space left): the demo's first write (its lock's holder pid)
    meets ENOSPC. One line naming the home's disk and what to do, exit 1, before anything started, and no pid left
    behind to name a demo (or a service) that is not running."""
    home = small_disk.path / "home"
    small_disk.fill()
    assert small_disk.free_bytes() == 0  # not a page left: the pid's few bytes cannot land
    done = _tenfold(home, "demo")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("error: `tenfold demo` cannot go on: the disk it was writing to is full (No space left on "
                           "device)"), line
    assert f"free space there (`df -h {home}` shows TENFOLD_HOME's disk), then run the command again" in line, line
    assert done.stdout == "", done.stdout  # nothing started (no service's "starting" line)
    assert not list(home.rglob("*.pid")) and not list(home.rglob("*.pid.tmp")), sorted(home.rglob("*"))
    lock = home / "run" / ".demo.lock"
    assert not lock.exists() or lock.read_text() == "", lock.read_text()  # no holder's pid in the demo's lock


@pytest.mark.parametrize(("args", "message"), [
    (["--first", "garbage"], "'garbage' is not a month: use YYYY-MM"),
    (["--first", "2013-06", "--champion-until", "2013-06"], "the first champion needs at least two months"),
    # Outside the months build_features covers: the demo failed in that month's ingest, after replaying the rest.
    (["--months", "7"], "the demo's months 2013-01..2014-01 reach outside the months build_features covers "
                        "(2013-01..2013-12)"),
    (["--first", "2012-11"], "reach outside the months build_features covers"),
])
def test_demo_refuses_months_it_cannot_run_before_starting_anything(monkeypatch: pytest.MonkeyPatch,
                                                                     args: list[str], message: str) -> None:
    """Bad usage exited 1 (an outage's code), after the demo had started (the window is checked in run)."""
    from tenfold import demo

    monkeypatch.setattr(demo, "run", lambda *a, **k: pytest.fail("the demo started"))
    out = runner.invoke(app, ["demo", *args])
    assert out.exit_code == 2 and isinstance(out.exception, SystemExit), (repr(out.exception), out.output)
    assert message in out.output


@pytest.mark.parametrize("command", [["up", "-s", "gcs"], ["down"], ["status"]])
def test_a_home_under_a_regular_file_is_one_error_naming_it_and_what_to_do(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, command: list[str]
) -> None:
    (tmp_path / "file").write_text("")
    settings = local_settings(tmp_path / "file" / "home")  # TENFOLD_HOME=<a path under a regular file>
    monkeypatch.setattr(local_cli, "get_settings", lambda env=None: settings)
    out = runner.invoke(app, command)
    assert out.exit_code == 1 and isinstance(out.exception, SystemExit), repr(out.exception)
    assert f"error: `tenfold {command[0]}` cannot go on: Not a directory: {settings.local.home / 'run'}" in out.output
    assert f"TENFOLD_HOME ({settings.local.home}) must be a directory this user can write" in out.output
    assert "Traceback" not in out.output


def test_a_migration_that_hangs_is_stopped_with_the_children_it_started(tmp_path: Path) -> None:
    """`airflow db migrate` hung: subprocess.run's timeout killed the command alone, then waited for its output pipes,
    which a child it had started held open, so `tenfold up` hung on too, and "was stopped" was not true of the child.
    A real hang: an `airflow` first on PATH that starts a child and sleeps."""
    import contextlib
    import subprocess
    import time

    import psutil

    from tenfold.local.airflow import ensure_airflow_db

    shim = tmp_path / "bin"
    shim.mkdir()
    (shim / "airflow").write_text('#!/bin/sh\nsleep 60 &\necho $! > "$AIRFLOW_HOME/child.pid"\nsleep 60\n')
    (shim / "airflow").chmod(0o755)
    home = tmp_path / "airflow"
    env = {"PATH": f"{shim}:/usr/bin:/bin", "AIRFLOW_HOME": str(home)}
    started = time.monotonic()
    with pytest.raises(subprocess.TimeoutExpired):
        ensure_airflow_db(env, timeout=1.0)
    assert time.monotonic() - started < 10, "it waited for the hung command's child"
    child = int((home / "child.pid").read_text())
    deadline = time.monotonic() + 5
    try:
        while psutil.pid_exists(child) and psutil.Process(child).status() != psutil.STATUS_ZOMBIE:
            assert time.monotonic() < deadline, "the child the hung command started was left running"
            time.sleep(0.05)
    finally:
        with contextlib.suppress(psutil.Error):
            psutil.Process(child).kill()


def test_a_command_that_hangs_is_one_error_naming_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import subprocess

    def hang(settings: object, services: object, echo: object) -> None:
        raise subprocess.TimeoutExpired(["airflow", "db", "migrate"], 300)

    settings = local_settings(tmp_path)
    monkeypatch.setattr(local_cli, "get_settings", lambda env=None: settings)
    monkeypatch.setattr(stack, "up", hang)
    out = runner.invoke(app, ["up"])
    assert out.exit_code == 1 and isinstance(out.exception, SystemExit), repr(out.exception)
    assert "error: `airflow db migrate` did not finish within 300 s and was stopped: run `tenfold up` again" in out.output


def test_a_port_out_of_range_is_a_settings_error_not_a_traceback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tenfold.config import get_settings

    monkeypatch.setenv("TENFOLD_HOME", str(tmp_path))
    monkeypatch.setenv("TENFOLD_LOCAL__GCS_PORT", "70000")
    get_settings.cache_clear()
    try:
        out = runner.invoke(app, ["up", "-s", "gcs"])
    finally:
        get_settings.cache_clear()
    assert out.exit_code == 2 and isinstance(out.exception, SystemExit), repr(out.exception)
    assert "error: invalid settings: LocalSettings.gcs_port: Input should be less than or equal to 65535" in out.output
    assert "Traceback" not in out.output


@pytest.mark.parametrize("command", [["ingest", "--month", "2013-01"], ["serve", "status"], ["serve", "down"]])
@pytest.mark.parametrize("kind", ["a regular file", "under a regular file"])
def test_ingest_and_serve_refuse_an_unusable_home_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, command: list[str], kind: str
) -> None:
    # Through the environment, as a user sets it.
    from tenfold.config import get_settings

    (tmp_path / "file").write_text("")
    home = tmp_path / "file" if kind == "a regular file" else tmp_path / "file" / "home"
    monkeypatch.setenv("TENFOLD_HOME", str(home))
    monkeypatch.setenv("TENFOLD_PROJECT_ID", "acme-ml")  # the cloud command below gets past the project check
    get_settings.cache_clear()
    try:
        out = runner.invoke(app, command)
        names = [w for w in command if not w.startswith("-") and not w[:1].isdigit()]  # the command, no options
        helped = runner.invoke(app, [*names, "--help"])  # --help never touches the home
        cloud = runner.invoke(app, ["models", "list", "--env", "dev"])  # nor does a cloud command
    finally:
        get_settings.cache_clear()
    assert out.exit_code == 1 and isinstance(out.exception, SystemExit), (repr(out.exception), out.output)
    assert f"error: `tenfold {command[0]}` cannot go on: " in out.output, out.output
    assert f"TENFOLD_HOME ({home}) must be a directory this user can write" in out.output
    assert "Traceback" not in out.output and len(out.output.strip().splitlines()) == 1, out.output
    assert helped.exit_code == 0 and "Usage:" in helped.output, helped.output
    assert "TENFOLD_HOME" not in cloud.output, cloud.output


def _tenfold(home: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """The installed `tenfold` command, as a user runs it (the root command's guard is in its __call__)."""

    base = {k: v for k, v in os.environ.items() if not k.startswith("TENFOLD_")}
    return subprocess.run([sys.executable, "-c", "from tenfold.cli import app; app()", *args], capture_output=True,
                          text=True, timeout=120, env={**base, "TENFOLD_HOME": str(home), **env})


@pytest.mark.parametrize("command", ["status", "down", "up", "demo", "serve split 0", "serve status"])
def test_status_down_and_up_under_a_cloud_environment_say_they_manage_the_local_platform(
        tmp_path: Path, command: str) -> None:
    """`TENFOLD_ENV=dev tenfold status` ended in a ValueError's traceback from deep in the first service's status;
    `tenfold up` took the local lock and made the run folder, then exited 1 (an outage's code) saying much the same;
    `tenfold demo` did so too, naming `tenfold up`. `tenfold serve split 0`, which a failed abort advised, wrote the
    local fleet's map (or set a running local fleet's share) while the operator took the cloud's canary for
    stopped."""
    done = _tenfold(tmp_path / "home", *command.split(), TENFOLD_ENV="dev")
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert done.stderr.strip() == (f"error: `tenfold {' '.join(command.split()[:2])}` manages the local platform; "
                                   "TENFOLD_ENV is 'dev': unset "
                                   "it (or set it to local). The cloud's services are the platform stack's "
                                   "(docs/deploy.md)")
    assert not (tmp_path / "home").exists()  # nothing of a local platform made


def test_a_serve_commands_help_still_works_under_a_cloud_environment(tmp_path: Path) -> None:
    done = _tenfold(tmp_path / "home", "serve", "up", "--help", TENFOLD_ENV="dev")
    assert done.returncode == 0 and "Usage:" in done.stdout and "manages the local platform" not in done.stderr


def test_a_serving_token_file_that_is_not_text_is_named_by_status_not_a_traceback(tmp_path: Path) -> None:
    home = tmp_path / "home"
    (home / "run").mkdir(parents=True)
    token = home / "run" / "serving.token"
    token.write_bytes(b"\x8f\xe3\x00garbage\xff")
    done = _tenfold(home, "serve", "status")
    assert "Traceback" not in done.stderr and "UnicodeDecodeError" not in done.stderr
    assert f"the serving token file {token} is not text" in done.stdout + done.stderr
    assert "delete it and run `tenfold up` to generate a new one" in done.stdout + done.stderr


def test_an_error_no_command_foresaw_ends_with_one_line_and_debug_shows_the_traceback(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """The root command's guard: a refused connection (a real socket) is a service away; any other error is a fault,
    one line that says how to see its traceback."""
    import socket

    from tenfold.cli import _Guarded
    from tenfold.local import free_ports

    (port,) = free_ports(1)
    guarded = _Guarded()

    @guarded.command()
    def away() -> None:
        socket.create_connection(("127.0.0.1", port), timeout=5)

    @guarded.command()
    def fault() -> None:
        raise KeyError("pools")

    monkeypatch.setenv("TENFOLD_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("TENFOLD_DEBUG", raising=False)
    monkeypatch.setattr("sys.argv", ["tenfold", "away"])
    with pytest.raises(SystemExit) as info:
        guarded(["away"])
    assert info.value.code == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: `tenfold away` cannot reach a service it needs (ConnectionRefusedError: ")
    assert "`tenfold status` shows what is down" in err and "\n" not in err

    monkeypatch.setattr("sys.argv", ["tenfold", "fault"])
    with pytest.raises(SystemExit):
        guarded(["fault"])
    assert capsys.readouterr().err.strip() == ("error: `tenfold fault` failed on a fault in the code (KeyError: "
                                               "'pools'); run it again with TENFOLD_DEBUG=1 for the traceback, and "
                                               "report it")
    monkeypatch.setenv("TENFOLD_DEBUG", "0")  # off, as it reads: it turned the tracebacks on
    with pytest.raises(SystemExit):
        guarded(["fault"])
    assert "failed on a fault in the code" in capsys.readouterr().err
    monkeypatch.setenv("TENFOLD_DEBUG", "1")
    with pytest.raises(KeyError):
        guarded(["fault"])


def test_a_replica_started_by_hand_with_a_mistyped_variable_says_which_in_one_line(tmp_path: Path) -> None:
    """`python -m tenfold.serving` (docs/serving.md, 'Running one replica') ended in pydantic's traceback, exit 1,
    where the inference worker given the same variable says one line and exits 2, as the docs say for bad flags."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TENFOLD_")}
    done = subprocess.run([sys.executable, "-m", "tenfold.serving", "--port", "1"], capture_output=True, text=True,
                          timeout=120, env={**env, "TENFOLD_HOME": str(tmp_path / "home"),
                                            "TENFOLD_SERVING__SERVER__CACHE_ENTRIE": "0"})
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert done.stderr.startswith("error: invalid settings: EnvironSettings.serving: Value error, "
                                  "TENFOLD_SERVING__SERVER__CACHE_ENTRIE names no field of ServerSettings"), done.stderr


def test_a_command_run_from_a_deleted_folder_with_a_relative_home_ends_in_one_line(tmp_path: Path) -> None:
    """TENFOLD_HOME=rel resolves against the working folder; deleted under the shell, the settings raised
    FileNotFoundError, and the guard that turns errors into one line called them again in its handler: a chained
    traceback."""
    tenfold = str(Path(sys.executable).with_name("tenfold"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("TENFOLD_")}
    done = subprocess.run(["sh", "-c", f"mkdir gone && cd gone && rmdir ../gone && exec {tenfold} config get local.home"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120, env={**env, "TENFOLD_HOME": "rel"})
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    assert done.stderr.startswith("error: `tenfold config get` cannot go on: [Errno 2] No such file or directory"), \
        done.stderr


def test_a_bounded_command_interrupted_by_ctrl_c_is_stopped_with_its_children(tmp_path: Path) -> None:
    """In its own session the command does not get the terminal's SIGINT: a Ctrl-C of `tenfold up` left `airflow db
    migrate` (and what it started) running, holding SQLite's lock for the next `tenfold up`."""
    import contextlib
    import signal
    import subprocess
    import sys
    import time

    import psutil

    pids = tmp_path / "pids"
    code = ("import os\nfrom tenfold.local.process import run_bounded\n"
            f"run_bounded(['sh', '-c', 'sleep 60 & echo $$ $! > {pids}; sleep 60'], env=os.environ, timeout=100)\n")
    runner = subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.PIPE)
    deadline = time.monotonic() + 30
    while not (pids.exists() and pids.read_text().strip()):
        assert time.monotonic() < deadline and runner.poll() is None, "the command never started"
        time.sleep(0.05)
    shell, child = map(int, pids.read_text().split())
    runner.send_signal(signal.SIGINT)  # what Ctrl-C sends the foreground process
    runner.wait(30)
    try:
        for pid in (shell, child):
            while psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                assert time.monotonic() < deadline + 10, f"{pid} was left running after the interrupt"
                time.sleep(0.05)
    finally:
        for pid in (shell, child):
            with contextlib.suppress(psutil.Error):
                psutil.Process(pid).kill()


def test_an_unknown_workload_is_a_refusal_naming_it_not_a_fault_in_the_code(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """`TENFOLD_WORKLOAD=nosuch tenfold serve reload`: the root check reads no workload, and the WorkloadError that
    escaped was called "a fault in the code ... report it"."""
    from tenfold.cli import _Guarded
    from tenfold.workloads import get_workload

    guarded = _Guarded()

    @guarded.command()
    def reload() -> None:
        get_workload("nosuch")

    @guarded.command()
    def other() -> None:  # two commands: typer runs a lone one without its name
        pass

    monkeypatch.setenv("TENFOLD_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("TENFOLD_DEBUG", raising=False)
    monkeypatch.setattr("sys.argv", ["tenfold", "reload"])
    with pytest.raises(SystemExit):
        guarded(["reload"])
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: `tenfold reload`: unknown workload 'nosuch': use one of flights or "), err
    assert "fault in the code" not in err


def test_dlq_with_tenfold_debug_shows_the_traceback_it_advises(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`tenfold dlq` ended a fault with "run it again with TENFOLD_DEBUG=1 for the traceback", and with it set printed
    the same line again: its own catch-all never let the error reach the root command's guard."""
    from tenfold.inference import dlq

    def broken(*_: object, **__: object) -> None:
        raise TypeError("a fault in dlq")

    monkeypatch.setattr(dlq, "inspect", broken)
    monkeypatch.setenv("TENFOLD_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("TENFOLD_DEBUG", raising=False)
    out = CliRunner().invoke(app, ["dlq", "inspect"])
    assert out.exit_code == 1 and "failed on a fault in the code (TypeError: a fault in dlq); run it again with " \
        "TENFOLD_DEBUG=1" in out.output, out.output
    monkeypatch.setenv("TENFOLD_DEBUG", "1")
    out = CliRunner().invoke(app, ["dlq", "inspect"])
    assert isinstance(out.exception, TypeError) and str(out.exception) == "a fault in dlq", out.output


@pytest.mark.parametrize("reader", ["head -1", "true"])
def test_status_read_by_a_command_that_stops_reading_ends_quietly(tmp_path: Path, reader: str) -> None:
    """`tenfold status | head -1` said "cannot go on: [Errno 32] Broken pipe; fix that (its permissions, or free
    space)" and exited 1: the reader that went away was taken for a disk the user had to fix. ``true`` reads nothing:
    it has gone before the first line is written."""
    tenfold = Path(sys.executable).with_name("tenfold")
    base = {k: v for k, v in os.environ.items() if not k.startswith("TENFOLD_")}
    env = {**base, "TENFOLD_HOME": str(tmp_path / "home")}
    # What the same command prints to a file, which reads all of it: its first line is what `head -1` must pass on.
    with open(tmp_path / "status.txt", "w") as whole:
        written = subprocess.run([str(tenfold), "status"], stdout=whole, stderr=subprocess.PIPE, text=True,
                                 timeout=120, env=env)
    assert written.returncode == 3, written.stderr  # nothing runs on a new home: not healthy
    first = (tmp_path / "status.txt").read_text().splitlines()[0]
    assert first.split()[:2] == ["gcs", "stopped"], first  # the first service's line, not a warning or an error
    done = subprocess.run(f'{tenfold} status | {reader}; echo "exit ${{PIPESTATUS[0]}}" >&2', shell=True,
                          executable="/bin/bash", capture_output=True, text=True, timeout=120, env=env)
    assert "cannot go on" not in done.stderr and "Traceback" not in done.stderr, done.stderr
    assert "Exception ignored" not in done.stderr and "Broken pipe" not in done.stderr, done.stderr
    assert done.stderr.strip() == f"exit {local_cli.EXIT_READER_GONE}", done.stderr  # as SIGPIPE would end it
    if reader.startswith("head"):  # (``true`` prints nothing, whatever tenfold wrote: its case is the exit above)
        assert done.stdout == first + "\n", (done.stdout, first)


def _lose_a_connection(how: str, tcp_relay: Any) -> None:
    """Lose a connection to a service for real: ``refused``, nothing listens on the port; ``reset``, the service's
    process is SIGKILLed with bytes of ours unread, so its kernel resets the connection; ``broken pipe``, the relay to
    the service is cut (:meth:`TcpRelay.cut`), and a write after its reset fails."""
    import contextlib
    import socket
    import time

    from tenfold.local import free_ports

    if how == "refused":
        (port,) = free_ports(1)
        socket.create_connection(("127.0.0.1", port), timeout=10)
        return
    if how == "reset":
        # The service peeks at what it was sent (it arrived) and leaves it unread: closed so, a socket is reset, not
        # shut with a FIN. (A relay's cut() sends a FIN first: a reset after it is reported as a broken pipe.)
        code = ("import socket, time\ns = socket.create_server(('127.0.0.1', 0))\nprint(s.getsockname()[1], flush=True)"
                "\nc, _ = s.accept()\nc.recv(1, socket.MSG_PEEK)\nprint('read', flush=True)\ntime.sleep(300)\n")
        service = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
        try:
            assert service.stdout is not None
            conn = socket.create_connection(("127.0.0.1", int(service.stdout.readline())), timeout=10)
            with conn:
                conn.sendall(b"GET / HTTP/1.1\r\n\r\n")
                assert service.stdout.readline().strip() == "read"
                service.kill()  # SIGKILL
                service.wait(30)
                conn.recv(1)
        finally:
            with contextlib.suppress(ProcessLookupError):
                service.kill()
            service.wait(30)
        return
    target = socket.create_server(("127.0.0.1", 0))
    relay = tcp_relay(target.getsockname())
    try:
        with socket.create_connection(("127.0.0.1", relay.port), timeout=10) as conn:
            upstream, _ = target.accept()
            with upstream:
                conn.sendall(b"ping")  # through the relay: the connection is one it carries (and cuts)
                assert upstream.recv(4) == b"ping"
                relay.cut()
                assert conn.recv(1) == b""  # the relay's end is gone
                deadline = time.monotonic() + 10
                while True:  # the first write after the cut is answered with a reset; one after that fails
                    conn.sendall(b"x")
                    assert time.monotonic() < deadline, "writes to the cut connection never failed"
                    time.sleep(0.01)
    finally:
        relay.cut()
        target.close()


@pytest.mark.parametrize(("how", "lost"), [("refused", "ConnectionRefusedError"), ("reset", "ConnectionResetError"),
                                           ("broken pipe", "BrokenPipeError")])  # a service's socket; stdout is fine
def test_a_service_that_cannot_be_reached_is_named_as_such_not_as_a_path_to_fix(
        tmp_path: Path, capfd: pytest.CaptureFixture[str], tcp_relay: Any, how: str, lost: str) -> None:
    """A real socket's error inside the local commands' handler. capfd: stdout is a real file whose reader is there,
    so a broken pipe (a service's) is told apart from a reader of the output that went away by looking at stdout."""
    settings = local_settings(tmp_path)
    with pytest.raises(typer.Exit) as ended, local_cli.refusing_os_errors(settings, "status"):
        _lose_a_connection(how, tcp_relay)
    assert ended.value.exit_code == 1
    err = capfd.readouterr().err
    assert err.startswith(f"error: `tenfold status` cannot reach a service it needs ({lost}: "), err
    assert "cannot go on" not in err and "free space" not in err, err


def test_down_read_by_a_command_that_stops_reading_still_stops_every_service(tmp_path: Path) -> None:
    """`tenfold down | true` (a reader gone before the first line): the first line's broken pipe ended the command
    quietly before it stopped anything, so the services ran on behind an exit that said nothing. A command that
    changes the platform finishes its work; only its output goes nowhere."""
    from tenfold.local import process
    from tenfold.local.stack import run_dir

    home = tmp_path / "home"
    settings = local_settings(home)
    started = [process.start(name, ["sleep", "300"], run_dir=run_dir(settings), port=port, cwd=tmp_path)
               for name, port in (("gcs", settings.local.gcs_port), ("pubsub", settings.local.pubsub_port))]
    tenfold = Path(sys.executable).with_name("tenfold")
    base = {k: v for k, v in os.environ.items() if not k.startswith("TENFOLD_")}
    try:
        done = subprocess.run(f"{tenfold} down -s gcs -s pubsub | true", shell=True, executable="/bin/bash",
                              capture_output=True, text=True, timeout=180, env={**base, "TENFOLD_HOME": str(home)})
        assert "Traceback" not in done.stderr and "cannot go on" not in done.stderr, done.stderr
        assert not [r.name for r in started if process.is_running(r)], done.stderr
        assert not [r.name for r in started if process.read_record(run_dir(settings), r.name)], done.stderr
    finally:
        for record in started:
            process.stop(record, timeout=5)


def test_up_refuses_a_workload_that_cannot_be_loaded_before_starting_anything(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`TENFOLD_WORKLOAD=nope tenfold up`: up never loaded the workload (only the demo did), reported every component
    healthy, every DAG run then failed in its first task, and `up` after fixing the variable was refused as drift."""
    from tenfold.local import process

    home = tmp_path / "home"
    settings = local_settings(home, environ={"TENFOLD_WORKLOAD": "nope"})
    assert settings.workload == "nope"
    monkeypatch.setattr(local_cli, "get_settings", lambda env=None: settings)
    started: list[object] = []

    def start(*args: object, **kwargs: object) -> None:
        started.append(args)
        raise AssertionError(f"`tenfold up` started {args[:1]} on a workload it cannot load")

    monkeypatch.setattr(process, "start", start)
    out = runner.invoke(app, ["up"])
    assert out.exit_code == 2 and isinstance(out.exception, SystemExit), (repr(out.exception), out.output)
    assert "error: unknown workload 'nope': use one of flights" in out.output, out.output
    assert "fix TENFOLD_WORKLOAD" in out.output and "Traceback" not in out.output, out.output
    assert started == []
    assert not home.exists(), sorted(home.rglob("*"))  # not even the lock or the run folder

    # Without Airflow nothing runs the workload: the emulators alone are not refused for it.
    monkeypatch.setattr(stack, "up", lambda settings, services, echo: [])
    monkeypatch.setattr(stack, "serving_up", lambda settings, say: False)
    out = runner.invoke(app, ["up", "-s", "gcs"])
    assert out.exit_code == 0, (repr(out.exception), out.output)
    assert "unknown workload" not in out.output


def test_status_of_chosen_services_does_not_exit_on_the_fleets_health(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`tenfold status -s gcs` on a healthy gcs exited 3 because the serving fleet (which -s did not choose) was not
    healthy. The fleet counts when what -s chose includes what it runs on (as `tenfold up -s` starts it)."""
    from tenfold.local.stack import ServiceStatus
    from tenfold.serving import fleet

    settings = local_settings(tmp_path / "home")
    monkeypatch.setattr(local_cli, "get_settings", lambda env=None: settings)
    chosen: list[list[str]] = []

    def healthy(settings: object, services: list[str]) -> list[ServiceStatus]:
        chosen.append(list(services))
        return [ServiceStatus(name=name, url="http://127.0.0.1:1", running=True, healthy=True, pid=1,
                              log=tmp_path / f"{name}.log", service=name) for name in services]

    unhealthy = fleet.FleetReport(running=True, supervisor_pid=1, haproxy_alive=False, haproxy_pid=None,
                                  url="http://127.0.0.1:2", metrics_url="http://127.0.0.1:3", canary_percent=None,
                                  versions={}, replicas=[], token_path=str(tmp_path / "token"), token=None,
                                  log=str(tmp_path / "fleet.log"))
    assert not unhealthy.healthy
    monkeypatch.setattr(stack, "status", healthy)
    monkeypatch.setattr(fleet, "report", lambda settings: unhealthy)
    out = runner.invoke(app, ["status", "-s", "gcs"])
    assert out.exit_code == 0, (repr(out.exception), out.output)
    assert chosen == [["gcs"]]
    # What the fleet runs on chosen (all of it, by default): its health counts.
    for args in (["status"], ["status", "-s", "gcs", "-s", "pubsub"]):
        out = runner.invoke(app, args)
        assert out.exit_code == 3, (args, repr(out.exception), out.output)
