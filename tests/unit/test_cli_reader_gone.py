"""A reader of a command's output that goes away (``tenfold config show | head -1``) ends any command quietly with the
code SIGPIPE gives, as ``tenfold status | head -1`` does; a broken pipe that is not stdout's (a service's connection,
lost) is said as such. Typer took every broken pipe for a closed stdout and ended the command with exit 1 and not a
word, whichever pipe it was."""

from __future__ import annotations

import fcntl
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tenfold.cli import _Guarded, app
from tenfold.clipipe import EXIT_READER_GONE

PIPE_SIZE = 4096  # the smallest a pipe can be (a page): `config show` is longer than two of them


def _tenfold_env(tmp_path: Path) -> dict[str, str]:
    """The environment of a user's shell. Without PYTHONUNBUFFERED (which a CI may set): under it Python writes stdout
    unbuffered, and takes a write that a reader closing mid-way cut short for a whole one: the rest is lost and the
    command ends 0, Python's behaviour, not the command's."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("TENFOLD_") and k != "PYTHONUNBUFFERED"}
    return {**base, "TENFOLD_HOME": str(tmp_path / "home")}


@pytest.mark.parametrize("reader", ["gone before the first line", "gone after one line"])
def test_config_show_read_by_a_reader_that_goes_away_ends_quietly(tmp_path: Path, reader: str) -> None:
    """The installed ``tenfold`` console script, its stdout a real pipe whose read end this test closes: before the
    command writes anything (``| true``), or after reading its first line while the rest waits to be written (``| head
    -1``). It ended with exit 1 (typer's own catch); now 141 and nothing on stderr (no error line, no traceback, no
    "Exception ignored" from the flush at exit)."""
    env = _tenfold_env(tmp_path)
    shown = CliRunner().invoke(app, ["config", "show"], env=env)
    assert shown.exit_code == 0 and len(shown.stdout.encode()) > 2 * PIPE_SIZE, shown.output  # cannot fit in the pipe

    tenfold = Path(sys.executable).with_name("tenfold")
    read_end, write_end = os.pipe()
    fcntl.fcntl(write_end, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
    if reader == "gone before the first line":
        os.close(read_end)
    try:
        proc = subprocess.Popen([str(tenfold), "config", "show"], stdout=write_end, stderr=subprocess.PIPE, env=env)
    finally:
        os.close(write_end)
    if reader == "gone after one line":
        with os.fdopen(read_end, "rb") as out:
            assert out.readline() == b"{\n"
    _, err = proc.communicate(timeout=120)
    assert err.decode() == "", err.decode()
    assert proc.returncode == EXIT_READER_GONE


def _losing_a_connection() -> _Guarded:
    """A root command whose sub-command writes to a connection its peer has closed: a real broken pipe, not
    stdout's."""
    guarded = _Guarded()

    @guarded.command()
    def lost() -> None:
        ours, peer = socket.socketpair()
        peer.close()
        with ours:
            ours.sendall(b"a request")

    @guarded.command()
    def other() -> None:  # two commands: typer runs a lone one without its name
        pass

    return guarded


def test_a_broken_pipe_that_is_not_stdouts_is_said_as_a_lost_connection(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("TENFOLD_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("TENFOLD_DEBUG", raising=False)
    monkeypatch.setattr("sys.argv", ["tenfold", "lost"])
    with pytest.raises(SystemExit) as ended:
        _losing_a_connection()(["lost"])
    assert ended.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith("error: `tenfold lost` cannot reach a service it needs (BrokenPipeError: "), err


def test_a_broken_pipe_that_is_not_stdouts_shows_its_traceback_with_tenfold_debug(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TENFOLD_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("TENFOLD_DEBUG", "1")
    monkeypatch.setattr("sys.argv", ["tenfold", "lost"])
    with pytest.raises(BrokenPipeError) as raised:
        _losing_a_connection()(["lost"])
    assert any(frame.name == "lost" for frame in raised.traceback), raised.traceback  # where it was lost
