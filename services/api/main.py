"""Run the API with uvicorn (one process, one event loop)."""

from __future__ import annotations

import uvicorn

from services.api.app import create_app
from shared.logging import configure_logging
from shared.settings import Settings

SHUTDOWN_GRACE_S = 10


def run(settings: Settings) -> None:
    configure_logging(service="api", log_format=settings.log_format, level=settings.log_level)
    config = uvicorn.Config(
        create_app(settings),
        host=settings.api_host,
        port=settings.api_port,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=SHUTDOWN_GRACE_S,
        lifespan="on",
    )
    uvicorn.Server(config).run()
