"""The fleet's request log: HAProxy's request ring streamed to a file that starts anew past its size (real HAProxy).

HAProxy logs a line per request into a ring in its memory; the supervisor's :class:`RequestLog` thread streams it
through the runtime API into ``requests.log`` and starts a new file past ``serving.fleet.request_log_max_kb``, so
a fleet that serves for weeks does not fill the disk. The lines must all arrive, whole, once each: across
rotations, across the stream HAProxy closes when idle (``stats timeout``) and across a HAProxy that was SIGKILLed
and started again.
"""

from __future__ import annotations

import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tenfold.local import free_port
from tenfold.serving.haproxy import (
    REQUEST_LOG_FORMAT,
    REQUEST_LOG_MARKER,
    REQUEST_RING,
    REQUEST_RING_BYTES,
    RequestLine,
    haproxy_binary,
    parse_request_line,
)
from tenfold.serving.requestlog import RequestLog, rotated


def _config(run: Path, port: int) -> str:
    # The fleet's logging lines (tenfold.serving.haproxy.render_config) in front of a frontend that answers itself.
    return "\n".join([
        "global",
        f"    stats socket {run / 'haproxy.sock'} mode 600 level admin",
        "    stats timeout 1s",  # the fleet's is 10 s: an idle stream is closed soon here
        "    log stderr format raw local0 info",
        f"ring {REQUEST_RING}", "    format raw", "    maxlen 1024", f"    size {REQUEST_RING_BYTES}",
        "defaults", "    mode http", "    log global", "    option httplog",
        "    timeout connect 1s", "    timeout client 5s", "    timeout server 5s",
        "frontend fleet", f"    bind 127.0.0.1:{port}", "    no log", f"    log ring@{REQUEST_RING} local0 info",
        f'    log-format "{REQUEST_LOG_FORMAT}"',
        "    http-request return status 200 content-type text/plain string ok", "",
    ])


class Haproxy:
    def __init__(self, run: Path) -> None:
        self.run, self.port = run, free_port()
        (run / "haproxy.cfg").write_text(_config(run, self.port))
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen([haproxy_binary(), "-f", str(self.run / "haproxy.cfg")],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while not (self.run / "haproxy.sock").exists() and time.monotonic() < deadline:
            time.sleep(0.05)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(timeout=5)
        (self.run / "haproxy.sock").unlink(missing_ok=True)

    def send(self, first: int, count: int) -> None:
        for i in range(first, first + count):
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/r/{i}", timeout=5) as answer:
                assert answer.status == 200


@pytest.fixture
def haproxy(tmp_path: Path) -> Iterator[Haproxy]:
    h = Haproxy(tmp_path)
    h.start()
    try:
        yield h
    finally:
        if h.proc is not None and h.proc.poll() is None:
            h.kill()


def _numbers(path: Path) -> list[int]:
    if not path.is_file():
        return []
    lines = path.read_bytes().splitlines()
    assert all(line.startswith(REQUEST_LOG_MARKER.encode()) and line.split()[-1].startswith(b"/r/") for line in lines)
    return [int(line.split()[-1].removeprefix(b"/r/")) for line in lines]


def _wait_for(log: Path, last: int, timeout: float = 15.0) -> list[int]:
    """The numbers in the older file and the log, once request ``last`` has arrived, in order (HAProxy's threads
    can log a request a little after the next one)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        older, current = _numbers(rotated(log)), _numbers(log)
        if (last in current or last in older) and (older, current) == (_numbers(rotated(log)), _numbers(log)):
            # (read twice alike: a rotation between the two files' reads showed the older file before it and the log
            # after it, and the lines that rotated in between looked lost)
            assert len(set(older + current)) == len(older + current), "a line was read twice"
            # The older file's first lines can be a few of one request's neighbours that rotated out with the file before.
            return sorted(older + current)
        time.sleep(0.05)
    raise AssertionError(f"request {last} never reached {log}")


def test_the_log_starts_a_new_file_past_its_size_and_keeps_one_older_file(haproxy: Haproxy) -> None:
    log = haproxy.run / "requests.log"
    max_bytes = 4096  # ~60 lines a file
    writer = RequestLog(haproxy.run / "haproxy.sock", log, max_bytes, retry_s=0.05)
    writer.start()
    try:
        haproxy.send(0, 200)
        seen = _wait_for(log, 199)
    finally:
        writer.stop()
    # Rotated several times: the older file and the log hold the last lines, whole, each file under the size.
    assert seen == list(range(seen[0], 200)) and seen[0] > 0, seen
    assert 0 < rotated(log).stat().st_size <= max_bytes and log.stat().st_size <= max_bytes
    assert not writer.is_alive()


def test_every_request_line_arrives_once_across_a_broken_stream_an_idle_close_and_a_haproxy_restart(
        haproxy: Haproxy) -> None:
    log = haproxy.run / "requests.log"
    # A reader slow to come back: HAProxy has logged more requests before the reader reads its ring again.
    writer = RequestLog(haproxy.run / "haproxy.sock", log, 1 << 30, retry_s=0.5)
    writer.start()
    try:
        time.sleep(1.5)  # longer than the stats timeout: HAProxy closes the stream while nothing is logged
        haproxy.send(0, 50)
        assert _wait_for(log, 49) == list(range(50))

        # The stream breaks under traffic (as when HAProxy closes it): the reader opens it again and reads the ring.
        sock = writer._sock
        assert sock is not None
        sock.shutdown(socket.SHUT_RDWR)
        haproxy.send(50, 30)
        assert _wait_for(log, 79) == list(range(80)), "a line was lost or read twice across the broken stream"

        haproxy.kill()  # lines already streamed are kept; the new HAProxy's ring is read from its start
        haproxy.start()
        haproxy.send(80, 30)
        assert _wait_for(log, 109) == list(range(110)), "a line was lost or read twice across the HAProxy restart"
    finally:
        writer.stop()


def test_a_rotation_that_fails_leaves_the_log_writing_on_and_is_tried_again(
        haproxy: Haproxy, monkeypatch: pytest.MonkeyPatch) -> None:
    """The older file's name is taken by a folder (the rename fails for real): the log grows past its size rather
    than lose lines, and rotates once the name is free again."""
    from tenfold.serving import requestlog

    monkeypatch.setattr(requestlog, "ROTATE_RETRY_S", 0.3)
    log = haproxy.run / "requests.log"
    blocker = rotated(log)
    blocker.mkdir()
    (blocker / "keep").write_text("not empty")
    writer = RequestLog(haproxy.run / "haproxy.sock", log, 1024, retry_s=0.05)
    writer.start()
    try:
        haproxy.send(0, 60)
        assert _wait_for(log, 59) == list(range(60))  # all in the log, past its size
        assert log.stat().st_size > 1024
        (blocker / "keep").unlink()
        blocker.rmdir()
        time.sleep(0.3)  # the retry delay set above
        haproxy.send(60, 20)
        seen = _wait_for(log, 79)
        assert rotated(log).is_file() and seen == list(range(seen[0], 80))
    finally:
        writer.stop()


def test_the_one_parser_reads_every_field_of_the_format_and_the_older_formats() -> None:
    # A line as REQUEST_LOG_FORMAT renders it, field by field: the parser must read each at its place, so a change
    # of the format that the parser does not follow fails here (the rollout observer and this log both use it).
    values = {"%Ts.%ms": "1733280000.250", "%b": "canary", "%ST": "503", "%Ta": "12", "%Tt": "1500", "%rt": "41",
              "%HP": "/v1/predict"}
    line = REQUEST_LOG_FORMAT
    for field, value in values.items():
        line = line.replace(field, value)
    assert "%" not in line, f"a field of the format is not in this test: {line}"
    got = parse_request_line(line.encode() + b"\n")
    assert got == RequestLine(1733280000.25, "canary", 503, 12.0, 1500.0, 41, b"/v1/predict")
    assert got is not None and got.ended == pytest.approx(1733280001.75)

    older = f"{REQUEST_LOG_MARKER} 1733280000.250 stable 200 12 1500 /v1/predict".encode()  # no %rt
    oldest = f"{REQUEST_LOG_MARKER} 1733280000.250 stable 200 12 /v1/predict".encode()  # no %Tt either
    assert parse_request_line(older) == RequestLine(1733280000.25, "stable", 200, 12.0, 1500.0, None, b"/v1/predict")
    assert parse_request_line(oldest) == RequestLine(1733280000.25, "stable", 200, 12.0, 12.0, None, b"/v1/predict")
    for other in (b"[NOTICE] haproxy started", b"", f"{REQUEST_LOG_MARKER} x stable 200 12 1500 41 /p".encode(),
                  f"{REQUEST_LOG_MARKER} 1.0 stable 200 12 1500 41 /p extra".encode()):
        assert parse_request_line(other) is None, other


def test_a_full_disk_loses_no_line_and_counts_none_twice(haproxy: Haproxy, small_disk, caplog) -> None:
    """The log on a disk that fills up mid-write (a real ENOSPC): the lines of the failed write that reached the file
    were not counted as written, so the next stream sent them again and the canary analysis counted them twice.
    Once there is room again every request is in the log exactly once, and no line is torn."""
    log = small_disk.path / "requests.log"
    writer = RequestLog(haproxy.run / "haproxy.sock", log, 1 << 30, retry_s=0.1)
    writer.start()
    try:
        haproxy.send(0, 10)
        assert _wait_for(log, 9) == list(range(10))
        small_disk.fill(leave=1500)  # ~20 of the next lines fit
        with caplog.at_level("ERROR", logger="tenfold.serving.requestlog"):
            haproxy.send(10, 120)
            deadline = time.monotonic() + 15
            while "reading HAProxy's ring failed" not in caplog.text and time.monotonic() < deadline:
                time.sleep(0.05)
            assert "reading HAProxy's ring failed" in caplog.text and "No space left on device" in caplog.text
        small_disk.free()
        assert _wait_for(log, 129) == list(range(130))  # _wait_for refuses a line read twice; _numbers a torn one
    finally:
        writer.stop()


def test_a_torn_last_line_left_by_a_kill_stays_a_line_of_its_own(haproxy: Haproxy) -> None:
    """A supervisor SIGKILLed mid-write leaves the log ending in a torn line. The next supervisor appended to it as it
    was: the first new request line was glued to the fragment, did not parse, and dropped out of the canary analysis."""
    log = haproxy.run / "requests.log"
    torn = f"{REQUEST_LOG_MARKER} 1733280000.250 stable 200 12 15".encode()  # no newline: cut short
    log.write_bytes(torn)
    writer = RequestLog(haproxy.run / "haproxy.sock", log, 1 << 30, retry_s=0.05)
    writer.start()
    try:
        haproxy.send(0, 5)
        deadline = time.monotonic() + 15
        while log.read_bytes().count(b"\n") < 6 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        writer.stop()
    first, *lines = log.read_bytes().split(b"\n")
    assert first == torn and lines[-1] == b"", log.read_bytes()  # the fragment alone on its line, the log ends whole
    parsed = [parse_request_line(line) for line in lines[:-1]]
    assert all(p is not None for p in parsed), lines
    assert sorted(int(p.path.removeprefix(b"/r/")) for p in parsed if p is not None) == list(range(5))
