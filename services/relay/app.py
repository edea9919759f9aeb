"""The relay process's small HTTP app: /healthz, /readyz, /metrics; its lifespan runs the worker."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, Final

import structlog
from fastapi import FastAPI, Request
from prometheus_client import CollectorRegistry

from services.relay.build import open_relay
from services.relay.metrics import RelayMetrics
from services.relay.worker import SHUTDOWN_GRACE_S, Relay
from shared.health import Readiness, add_health_routes
from shared.http_metrics import install_http_observability
from shared.settings import Settings

# Beyond the worker's own grace: time to hand leases back before the lifespan gives up on it.
STOP_MARGIN_S: Final = 15.0

log = structlog.get_logger("kbingest.relay")

OnFatal = Callable[[BaseException], None]


def create_app(settings: Settings, *, on_fatal: OnFatal | None = None, **relay_options: Any) -> FastAPI:
    """The relay service; ``on_fatal`` is told when the worker dies so the process can exit non-zero."""
    registry = CollectorRegistry()
    metrics = RelayMetrics(registry)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with open_relay(settings, metrics, **relay_options) as relay:
            task = asyncio.create_task(relay.run(), name="relay.worker")
            task.add_done_callback(lambda done: _worker_ended(done, on_fatal))
            app.state.relay, app.state.worker = relay, task
            log.info("relay.started", relay_id=relay.relay_id, port=settings.relay_port)
            try:
                yield
            finally:
                await _stop(relay, task, relay_options.get("shutdown_grace_s", SHUTDOWN_GRACE_S))
        log.info("relay.stopped", relay_id=relay.relay_id)

    app = FastAPI(title="kbingest relay", version="0.1.0", lifespan=lifespan)
    install_http_observability(app, registry, "relay")

    async def readiness(request: Request) -> Readiness:
        relay: Relay = request.app.state.relay
        worker: asyncio.Task[None] = request.app.state.worker
        checks = relay.health() | {"worker": "stopped" if worker.done() else "ok"}
        return Readiness(checks, {"relay_id": relay.relay_id})

    add_health_routes(app, readiness)

    return app


def _worker_ended(task: asyncio.Task[None], on_fatal: OnFatal | None) -> None:
    if task.cancelled() or task.exception() is None:
        return
    exc = task.exception()
    assert exc is not None
    log.error("relay.failed", error=f"{type(exc).__name__}: {exc}")
    if on_fatal is not None:
        on_fatal(exc)


async def _stop(relay: Relay, task: asyncio.Task[None], grace_s: float) -> None:
    relay.stop()
    done, _ = await asyncio.wait([task], timeout=grace_s + STOP_MARGIN_S)
    if not done:
        log.error("relay.stop_timeout", grace_s=grace_s)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
