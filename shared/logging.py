"""structlog set-up: console locally, JSON with ``LOG_FORMAT=json``; context vars carry ids."""

from __future__ import annotations

import logging
import sys
from typing import Literal

import structlog


def configure_logging(*, service: str, log_format: Literal["console", "json"] = "console", level: str = "INFO") -> None:
    """Configure structlog and the stdlib root logger once per entrypoint."""
    shared_processors: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
    ]
    renderer: structlog.types.Processor
    if log_format == "json":
        shared_processors.append(structlog.processors.format_exc_info)
        renderer = structlog.processors.JSONRenderer()
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    structlog.configure(
        processors=[*shared_processors, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(service=service)
    logging.basicConfig(level=level.upper(), stream=sys.stderr, format="%(name)s %(levelname)s %(message)s")
    for noisy in ("httpx", "httpcore", "LiteLLM", "uvicorn.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
