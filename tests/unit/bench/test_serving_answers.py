"""bench/serving.py's check that every scoring server answers what Tenfold answers, over real HTTP on loopback."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest


def _answering(shape: Callable[[dict[str, Any]], Any]) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            flight = body["flights"][0] if "flights" in body else body
            data = json.dumps(shape(flight)).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: object) -> None:
            pass

    return Handler


@pytest.fixture
def serve() -> Iterator[Callable[[Callable[[dict[str, Any]], Any]], str]]:
    started: list[ThreadingHTTPServer] = []

    def start(shape: Callable[[dict[str, Any]], Any]) -> str:
        httpd = ThreadingHTTPServer(("127.0.0.1", 0), _answering(shape))
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        started.append(httpd)
        return f"http://127.0.0.1:{httpd.server_address[1]}/predict"

    yield start
    for httpd in started:
        httpd.shutdown()
        httpd.server_close()


def test_a_peer_whose_answers_differ_is_noted_and_the_rest_are_measured_against_tenfold(
        serve: Callable[[Callable[[dict[str, Any]], Any]], str], tmp_path: Path, bench_serving: ModuleType) -> None:
    serving = bench_serving
    flights = [{"flight": i, "p": i / 40} for i in range(20)]
    flat = tmp_path / "flat.jsonl"
    flat.write_text("".join(json.dumps(f) + "\n" for f in flights))
    wrapped = tmp_path / "wrapped.jsonl"
    wrapped.write_text("".join(json.dumps({"flights": [f]}) + "\n" for f in flights))

    def server(name: str, url: str, bodies: Path) -> Any:
        return serving.Server(name, [], {}, url, url, tmp_path / f"{name}.log", bodies=bodies)

    servers = {
        "tenfold": server("tenfold", serve(lambda f: {"predictions": [{"probability": f["p"], "model_version": "v"}]}),
                          flat),
        "floor": server("floor", serve(lambda f: {"ok": True}), flat),  # the no-op scores nothing: never asked
        "litserve": server("litserve", serve(lambda f: {"probability": f["p"] + 1e-7}), flat),
        "bentoml": server("bentoml", serve(lambda f: [{"probability": round(f["p"], 1)}]), wrapped),
    }
    notes: dict[str, str] = {}
    worst = serving.compare_answers(servers, notes)
    assert set(worst) == {"litserve", "bentoml"}
    assert worst["litserve"] == pytest.approx(1e-7, abs=1e-9) and "litserve" not in notes
    assert worst["bentoml"] > serving.ANSWER_TOLERANCE
    assert notes["bentoml"].startswith("its answers differ from Tenfold's") and "16 flights" in notes["bentoml"]


def test_probabilities_are_read_from_each_servers_envelope(bench_serving: ModuleType) -> None:
    serving = bench_serving
    assert serving.probabilities({"predictions": [{"probability": 0.5}, {"probability": 0.25}]}) == [0.5, 0.25]
    assert serving.probabilities([{"probability": 0.1}]) == [0.1] and serving.probabilities({"ok": 1}) == []
