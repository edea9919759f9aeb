"""The reconciler's composition root: a small FastAPI app (/healthz, /readyz, /metrics) around the loop."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import structlog
from fastapi import FastAPI, Request
from prometheus_client import CollectorRegistry

from services.reconciler.reconciler import Reconciler
from shared.aio import wait_for
from shared.health import Readiness, add_health_routes
from shared.http_metrics import install_http_observability
from shared.settings import Settings

STOP_TIMEOUT_S = 20.0

log = structlog.get_logger("kbingest.reconciler")


def create_app(settings: Settings, *, reconciler_id: str | None = None) -> FastAPI:
    """Build the reconciler service; the lifespan owns the loop, its engine and its lock session."""
    registry = CollectorRegistry()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        reconciler = Reconciler.from_settings(settings, registry=registry, reconciler_id=reconciler_id)
        app.state.reconciler = reconciler
        task = asyncio.create_task(reconciler.run(), name="reconciler")
        task.add_done_callback(_exit_if_died)
        log.info("reconciler.started", reconciler_id=reconciler.reconciler_id, port=settings.reconciler_port)
        try:
            yield
        finally:
            reconciler.stop()
            try:
                await wait_for(task, STOP_TIMEOUT_S)
            except TimeoutError:
                log.warning("reconciler.stop_timeout", timeout_s=STOP_TIMEOUT_S)
            await reconciler.close()
            log.info("reconciler.stopped", reconciler_id=reconciler.reconciler_id)

    app = FastAPI(title="kbingest reconciler", version="0.1.0", lifespan=lifespan)
    install_http_observability(app, registry, "reconciler")

    async def readiness(_request: Request) -> Readiness:
        reconciler: Reconciler = app.state.reconciler
        _, reason = reconciler.ready()
        details = {"reconciler_id": reconciler.reconciler_id, "leader": reconciler.is_leader}
        return Readiness({"loop": reason}, details)

    add_health_routes(app, readiness)

    return app


def _exit_if_died(task: asyncio.Task[None]) -> None:
    """The loop only ends on stop(); if it dies anyway, take the process down rather than look alive."""
    if task.cancelled() or task.exception() is None:
        return
    log.critical("reconciler.loop_died", error=repr(task.exception()))
    os.kill(os.getpid(), signal.SIGTERM)
