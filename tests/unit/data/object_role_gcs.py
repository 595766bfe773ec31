"""The GCS emulator as a caller holding only an object role (``roles/storage.objectUser`` / ``objectViewer``) sees it.

A loopback proxy in front of the emulator: object requests (``/storage/v1/b/<bucket>/o...``, uploads, downloads)
are passed through unchanged; a request for a bucket itself (``GET /storage/v1/b/<bucket>``, which needs
``storage.buckets.get``) or for the bucket list (``storage.buckets.list``) is answered 403, as GCS answers a
service account whose role grants neither. Every request line is logged (:attr:`ObjectRoleGcs.requests`).

It runs in a process of its own: pyarrow holds the GIL through some reads (a Parquet footer), so an in-process
server thread would never get to answer them.

fake-gcs-server's resumable-upload ``Location`` points at the emulator itself (``-external-url``), so an upload's
data chunks bypass the proxy; the upload is started through it (an object request), which is what a role governs.
"""

from __future__ import annotations

import http.client
import json
import re
import subprocess
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from urllib.parse import urlsplit

_BUCKET_LEVEL = re.compile(r"^/storage/v1/b/?(?:[^/]+/?)?$")  # the bucket list, or one bucket (not its objects)
_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "proxy-connection"}


class ObjectRoleGcs:
    """``with ObjectRoleGcs("http://127.0.0.1:PORT", log) as gcs:`` -> ``gcs.endpoint`` (``host:port``) and
    ``gcs.requests`` (``"METHOD /path?query"`` lines, written to the file ``log``)."""

    def __init__(self, upstream: str, log: Path) -> None:
        self.upstream, self.log = upstream, log
        self.endpoint = ""
        self._process: subprocess.Popen[str] | None = None

    @property
    def requests(self) -> list[str]:
        return self.log.read_text().splitlines() if self.log.exists() else []

    def bucket_requests(self) -> list[str]:
        return [r for r in self.requests if _BUCKET_LEVEL.match(r.split(" ", 1)[1].split("?", 1)[0])]

    def __enter__(self) -> ObjectRoleGcs:
        self._process = subprocess.Popen([sys.executable, __file__, self.upstream, str(self.log)],
                                         stdout=subprocess.PIPE, text=True)
        assert self._process.stdout is not None
        self.endpoint = self._process.stdout.readline().strip()
        assert self.endpoint, "the stand-in did not start"
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        if self._process is not None:
            self._process.terminate()
            self._process.wait(timeout=10)


def _handler(upstream: str, log: Path) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive and Expect: 100-continue, as libcurl uses them

        def log_message(self, *args: object) -> None:
            pass

        def _body(self) -> bytes:
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                data = b""
                while size := int(self.rfile.readline().split(b";")[0].strip(), 16):
                    data += self.rfile.read(size)
                    self.rfile.readline()
                while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                return data
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def _reply(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
            self.send_response(status)
            for name, value in headers:
                if name.lower() not in _HOP_BY_HOP:
                    self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _any(self) -> None:
            body = self._body()
            with log.open("a") as fh:
                fh.write(f"{self.command} {self.path}\n")
            if _BUCKET_LEVEL.match(self.path.split("?", 1)[0]):
                message = "the caller does not have storage.buckets.get access to the Google Cloud Storage bucket."
                error = {"error": {"code": 403, "message": message, "errors": [{"reason": "forbidden"}]}}
                self._reply(403, [("Content-Type", "application/json")], json.dumps(error).encode())
                return
            conn = http.client.HTTPConnection(upstream, timeout=30)
            try:
                headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP | {"expect"}}
                conn.request(self.command, self.path, body=body, headers=headers)
                response = conn.getresponse()
                self._reply(response.status, response.getheaders(), response.read())
            finally:
                conn.close()

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _any

    return Handler


if __name__ == "__main__":
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(urlsplit(sys.argv[1]).netloc, Path(sys.argv[2])))
    print(f"127.0.0.1:{server.server_address[1]}", flush=True)
    server.serve_forever()
