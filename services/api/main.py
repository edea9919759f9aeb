"""Run the API with uvicorn (one process, one event loop)."""

from __future__ import annotations

from services.api.app import create_app
from shared.logging import configure_logging
from shared.serve import uvicorn_server
from shared.settings import Settings

SHUTDOWN_GRACE_S = 10


def run(settings: Settings) -> None:
    configure_logging(service="api", log_format=settings.log_format, level=settings.log_level)
    uvicorn_server(create_app(settings), host=settings.api_host, port=settings.api_port, grace_s=SHUTDOWN_GRACE_S).run()
