"""Run the relay: one process, one event loop shared by the worker and its health/metrics app."""

from __future__ import annotations

import gc
import signal
from types import FrameType

import structlog

from services.relay.app import create_app
from services.relay.worker import SHUTDOWN_GRACE_S
from shared.logging import configure_logging
from shared.serve import uvicorn_server
from shared.settings import Settings

log = structlog.get_logger("kbingest.relay")


def freeze_heap() -> None:
    """Take what start-up built (modules, classes, settings) out of the cyclic garbage collector's walks.

    The relay allocates a few short-lived containers per event, so collections run every few dozen
    events; each older-generation pass walked every object loaded at start-up, ~4 µs per event or a
    fifth of the relay's own CPU (docs/benchmarks.md#relay). Garbage is collected first, so nothing
    unreachable is kept forever.
    """
    gc.collect()
    gc.freeze()


def run(settings: Settings) -> int:
    """Serve until SIGTERM/SIGINT (exit 0 after a clean drain) or until the worker dies (exit 1)."""
    configure_logging(service="relay", log_format=settings.log_format, level=settings.log_level)
    failures: list[BaseException] = []

    def on_fatal(exc: BaseException) -> None:
        failures.append(exc)
        server.should_exit = True

    app = create_app(settings, on_fatal=on_fatal)
    server = uvicorn_server(app, host=settings.bind_host, port=settings.relay_port, grace_s=SHUTDOWN_GRACE_S)

    def _handled(signum: int, _frame: FrameType | None) -> None:
        log.info("relay.signal", signal=signal.Signals(signum).name)

    # uvicorn re-raises the signal it caught once it has shut down gracefully; with these handlers
    # in place that re-raise only logs, so a clean drain exits 0 instead of dying by SIGTERM.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _handled)
    freeze_heap()
    server.run()
    if failures:
        return 1
    return 0 if server.started else 1
