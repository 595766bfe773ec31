"""The HTTP floor: a no-op endpoint on Tenfold's own server stack, for ``bench/serving.py``.

Run (in .venv, with the bench's TENFOLD_* environment)::

    .venv/bin/python bench/serving_peers/floor_app.py --port 8103 --model <version>

It is the real replica: :func:`tenfold.serving.replica.serve` with the app of
:func:`tenfold.serving.app.create_app` (so the same middleware, lifespan and uvicorn configuration), plus one
route, ``POST /bench/noop``, that reads the body and answers a constant JSON object the size of a
prediction: no auth, no validation, no model. What the real predict endpoint reaches relative to this
one is the share of a replica's HTTP ceiling that the model's work leaves.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import Response

NOOP_PATH = "/bench/noop"
BODY = (b'{"prediction_id":"00000000000000000000000000000000","probability":0.5,'
        b'"model_version":"0000000000000000000000","arm":"stable","bucket":0}')


def with_noop(create_app: Any) -> Any:
    """``create_app`` whose app also serves the no-op route."""

    def create(*args: Any, **kwargs: Any) -> FastAPI:
        app: FastAPI = create_app(*args, **kwargs)

        async def noop(request: Request) -> Response:
            await request.body()
            return Response(BODY, media_type="application/json")

        app.add_api_route(NOOP_PATH, noop, methods=["POST"], include_in_schema=False)
        return app

    return create


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--model", required=True, help="registry alias or version (the replica loads it as usual)")
    args = parser.parse_args(argv)

    from tenfold.config import get_settings
    from tenfold.serving import app as app_module
    from tenfold.serving import replica

    # serve() imports create_app from the module when it runs: the patched factory is the one it uses.
    app_module.create_app = with_noop(app_module.create_app)  # type: ignore[assignment]
    return replica.serve(get_settings(), host="127.0.0.1", port=args.port, arm="stable", model_ref=args.model,
                         log_level="warning")


if __name__ == "__main__":
    sys.exit(main())
