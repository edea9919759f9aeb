"""Run the reconciler with uvicorn (its own process; any number of replicas, one leader)."""

from __future__ import annotations

from services.reconciler.app import STOP_TIMEOUT_S, create_app
from shared.logging import configure_logging
from shared.serve import uvicorn_server
from shared.settings import Settings


def run(settings: Settings) -> None:
    configure_logging(service="reconciler", log_format=settings.log_format, level=settings.log_level)
    app = create_app(settings)
    uvicorn_server(app, host=settings.bind_host, port=settings.reconciler_port, grace_s=STOP_TIMEOUT_S).run()
