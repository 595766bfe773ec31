"""The local fleet's request log: HAProxy's request ring, streamed to a file that is rotated by size.

HAProxy logs a line per request of the ``fleet`` frontend (``tenfold.serving.haproxy.REQUEST_LOG_MARKER``) into a
ring buffer in its memory (``ring@requests``). :class:`RequestLog`, a thread of the fleet supervisor, reads that
ring through the runtime API (``show events requests -w``: what the ring holds, then each new line as it comes)
and appends whole lines to ``<run>/requests.log``. Past ``serving.fleet.request_log_max_kb`` it renames the file
to ``requests.log.1`` (replacing the older one) and starts a new one, so the log of a fleet that serves for weeks
takes at most about twice that on disk. :class:`~tenfold.rollout.haproxy.HaproxyObserver` reads both files.

A stream that ends (HAProxy closes an idle one after its ``stats timeout``, a connection breaks) is opened again
and reads the ring whole; the lines already written, known by HAProxy's request counter (``%rt``), are skipped. A
HAProxy that restarted (another pid or start time) has a new ring and a new counter. A line is lost only when the
reader is held up longer than the ring holds (``REQUEST_RING_BYTES``), or when HAProxy dies with lines not yet read.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import socket
import threading
import time
from pathlib import Path
from typing import BinaryIO

from tenfold.fsio import open_lines_for_append
from tenfold.serving.haproxy import (
    REQUEST_RING,
    REQUEST_RING_BYTES,
    HaproxyError,
    RuntimeApi,
    parse_request_line,
)

log = logging.getLogger(__name__)


# More lines than the ring can hold (REQUEST_RING_BYTES over a shorter line than the shortest request line, ~44 bytes).
_REMEMBERED = REQUEST_RING_BYTES // 40
ROTATE_RETRY_S = 60


def rotated(path: Path) -> Path:
    """Where the request log's older lines are (one file: the previous one is replaced)."""
    return path.with_name(f"{path.name}.1")


class RequestLog(threading.Thread):
    """Streams HAProxy's request ring (runtime API socket ``socket_path``) into ``path``, rotated past ``max_bytes``."""

    def __init__(self, socket_path: Path, path: Path, max_bytes: int, *, retry_s: float = 0.2) -> None:
        super().__init__(name="request-log", daemon=True)
        self.socket_path, self.path, self.max_bytes, self.retry_s = Path(socket_path), Path(path), max_bytes, retry_s
        self.stopping = threading.Event()
        self._sock: socket.socket | None = None
        self._out: BinaryIO | None = None
        self._rotate_after = 0.0  # monotonic time before which a failed rotation is not tried again
        # The request counters of the last lines written from this HAProxy: as many as its ring can hold.
        self._written: set[int] = set()
        self._order: collections.deque[int] = collections.deque()

    def stop(self, timeout: float = 5.0) -> None:
        self.stopping.set()
        if (sock := self._sock) is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        self.join(timeout)

    def run(self) -> None:
        read: str | None = None  # the HAProxy (pid and start) whose lines self._written holds
        failed = ""
        try:
            while not self.stopping.is_set():
                try:
                    if (haproxy := self._which()) != read:
                        self._written.clear()
                        self._order.clear()
                        read = haproxy
                    self._stream()
                    failed = ""
                except (HaproxyError, ConnectionError, FileNotFoundError):
                    pass  # HAProxy restarting, or not up yet: try again
                except Exception as exc:  # the log must outlive any one surprise (a full disk): logged once, tried again
                    if repr(exc) != failed:
                        log.exception("request log: reading HAProxy's ring failed; retrying")
                    failed = repr(exc)
                self.stopping.wait(self.retry_s)
        finally:
            if self._out is not None:
                self._out.close()

    def _which(self) -> str:
        """The HAProxy that answers now: its pid and when it started (a restart is another one)."""
        info = RuntimeApi(self.socket_path, timeout=2).execute("show info")
        fields = dict(line.split(": ", 1) for line in info.splitlines() if ": " in line)
        return f"{fields.get('Pid')}/{fields.get('Start_time_sec')}"

    def _stream(self) -> None:
        """Until HAProxy closes the stream: append what it sends and was not written yet, whole lines only."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.connect(str(self.socket_path))
            self._sock = sock
            try:
                sock.sendall(f"show events {REQUEST_RING} -w\n".encode())
                pending = b""
                while chunk := sock.recv(1 << 16):
                    pending += chunk
                    cut = pending.rfind(b"\n") + 1
                    if cut:
                        self._write(pending[:cut])
                        pending = pending[cut:]
            finally:
                self._sock = None

    def _write(self, data: bytes) -> None:
        """Append the lines of ``data`` not written yet; their counters count as written once they are flushed, so
        a write that fails (a full disk) is tried again from the ring on the next stream."""
        keep, counters = [], set()
        for line in data.split(b"\n"):
            if not line.strip():
                continue  # HAProxy ends a stream with an empty line
            request = parse_request_line(line)
            counter = request.counter if request is not None else None
            if counter is not None:
                if counter in self._written or counter in counters:
                    continue
                counters.add(counter)
            keep.append(line + b"\n")
        if not keep:
            return
        body = b"".join(keep)
        out = self._file(len(body))
        start = out.tell()
        try:
            out.write(body)
            out.flush()
        except OSError:
            # A full disk: the lines that reached the file are not counted as written, so the next stream sends
            # them again; cut the file back to where this write began, or the analysis counts them twice.
            self._out = None
            with contextlib.suppress(OSError):
                out.close()
            with contextlib.suppress(OSError):
                os.truncate(self.path, start)
            raise
        for counter in counters:
            self._written.add(counter)
            self._order.append(counter)
        while len(self._order) > _REMEMBERED:
            self._written.discard(self._order.popleft())

    def _file(self, size: int) -> BinaryIO:
        """The file to append ``size`` bytes to: a new one once the log would pass its size (the old one becomes the
        older file), and a reopened one after a failure left it closed."""
        out = self._out
        if out is not None and not out.closed:
            if not out.tell() or out.tell() + size <= self.max_bytes or time.monotonic() < self._rotate_after:
                return out
            out.close()
            try:
                os.replace(self.path, rotated(self.path))
            except OSError as exc:  # the log goes on growing rather than stop: rotation is tried again in a minute
                log.warning("request log: cannot move %s to %s (%s); writing on, trying again in %d s",
                            self.path, rotated(self.path), exc, ROTATE_RETRY_S)
                self._rotate_after = time.monotonic() + ROTATE_RETRY_S
        # A supervisor killed mid-write left a torn last line: appended as it is, the first new line would be glued to
        # it and that request would drop out of the canary analysis. open_lines_for_append mends it (a newline first).
        with open_lines_for_append(self.path):
            pass
        self._out = open(self.path, "ab")  # noqa: SIM115 (replaced on each rotation)
        return self._out
