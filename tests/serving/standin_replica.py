"""A stand-in for the model server while it is being written: same flags, health paths and arm echo.

``python -m standin_replica --host 127.0.0.1 --port P --arm stable --model v1`` (with this folder on
PYTHONPATH). ``STANDIN_DELAY_MS`` makes each prediction take that long.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import uuid

import uvicorn

from tenfold.rollout.split import bucket_of


def build(arm: str, model: str):  # type: ignore[no-untyped-def]
    delay = float(os.environ.get("STANDIN_DELAY_MS", "0")) / 1000

    async def app(scope, receive, send):  # type: ignore[no-untyped-def]
        if scope["type"] != "http":
            return
        path = scope["path"]
        status, body = 404, {"detail": "not found"}
        if path in ("/healthz", "/readyz"):
            status, body = 200, {"ok": True}
        elif path == "/v1/predict":
            raw = b""
            while True:
                msg = await receive()
                raw += msg.get("body", b"")
                if not msg.get("more_body"):
                    break
            headers = dict(scope["headers"])
            key = headers.get(b"x-user-key", b"").decode() or None
            if delay:
                await asyncio.sleep(delay)
            status, body = 200, {"prediction_id": uuid.uuid4().hex, "probability": 0.5, "model_version": model,
                                 "arm": arm, "bucket": bucket_of(key) if key else None}
        data = json.dumps(body).encode()
        await send({"type": "http.response.start", "status": status, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": data})

    return app


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--host", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--arm", required=True)
    p.add_argument("--model", required=True)
    a = p.parse_args()
    uvicorn.run(build(a.arm, a.model), host=a.host, port=a.port, log_level="warning", timeout_graceful_shutdown=20)


if __name__ == "__main__":
    main()
