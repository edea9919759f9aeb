"""Run the reconciler with uvicorn (its own process; any number of replicas, one leader)."""

from __future__ import annotations

import uvicorn

from services.reconciler.app import STOP_TIMEOUT_S, create_app
from shared.logging import configure_logging
from shared.settings import Settings


def run(settings: Settings) -> None:
    configure_logging(service="reconciler", log_format=settings.log_format, level=settings.log_level)
    config = uvicorn.Config(
        create_app(settings),
        host=settings.bind_host,
        port=settings.reconciler_port,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=int(STOP_TIMEOUT_S),
        lifespan="on",
    )
    uvicorn.Server(config).run()
