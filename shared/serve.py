"""The one way a kbingest service runs under uvicorn: one process, one event loop, our logging."""

from __future__ import annotations

import uvicorn
from fastapi import FastAPI


def uvicorn_server(app: FastAPI, *, host: str, port: int, grace_s: float) -> uvicorn.Server:
    """A server for ``app``: structlog keeps the logs (no uvicorn log config, no access log), the lifespan
    always runs, and a shutdown waits ``grace_s`` for requests in flight."""
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=int(grace_s),
        lifespan="on",
    )
    return uvicorn.Server(config)
