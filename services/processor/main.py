"""Run the processor with uvicorn (its own process and event loop, never inside the API)."""

from __future__ import annotations

import sys

from services.processor.app import create_app
from services.processor.worker import SHUTDOWN_GRACE_S
from shared.logging import configure_logging
from shared.serve import uvicorn_server
from shared.settings import Settings


def run(settings: Settings) -> None:
    configure_logging(service="processor", log_format=settings.log_format, level=settings.log_level)
    app = create_app(settings)
    uvicorn_server(app, host=settings.bind_host, port=settings.processor_port, grace_s=SHUTDOWN_GRACE_S).run()
    if getattr(app.state, "processor", None) is not None and app.state.processor.fatal:
        sys.exit(1)
