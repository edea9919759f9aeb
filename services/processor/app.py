"""The processor's composition root: ``create_app(settings)`` with a lifespan owning everything."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import structlog
from fastapi import FastAPI, Request
from prometheus_client import CollectorRegistry

from services.processor import receiver
from services.processor.deps import ProcessorDeps
from services.processor.extraction.sandbox import extract, warm_up
from services.processor.metrics import ProcessorMetrics
from services.processor.presence import Presence
from services.processor.registry import Registry, new_processor_id
from services.processor.stages import ExtractFn, Pipeline
from services.processor.state import ProcessorState
from services.processor.worker import SHUTDOWN_GRACE_S, Worker
from shared.db import worker_database
from shared.embedders import Embedders
from shared.embedding import Embedder
from shared.health import Readiness, add_health_routes
from shared.http_metrics import install_http_observability
from shared.settings import Settings
from shared.storage import ObjectStore
from shared.vector_remote import vector_store_for
from shared.vectorstore import VectorStore

log = structlog.get_logger("kbingest.processor")

EXTRACT_MEMORY_BYTES = 2 * 1024**3
SIDE_TASK_STOP_S = 5.0


def default_extractor(settings: Settings) -> ExtractFn:
    timeout_s = settings.stage_timeout_s("extracting") or 600.0
    return functools.partial(
        extract, timeout_s=timeout_s, cpu_seconds=int(timeout_s * 1.5) + 1, memory_bytes=EXTRACT_MEMORY_BYTES
    )


def create_app(
    settings: Settings,
    *,
    extractor: ExtractFn | None = None,
    vectors: VectorStore | None = None,
    extractor_warm_up: Callable[[], Awaitable[None]] | None = None,
    processor_id: str | None = None,
) -> FastAPI:
    """Build the processor service; the keyword arguments are seams for tests (poison extractors, stores)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        deps = ProcessorDeps(
            settings=settings,
            db=worker_database(settings.database_url, service="processor", max_connections=settings.db_max_connections),
            heartbeat_db=worker_database(settings.database_url, service="processor.heartbeat", max_connections=1),
            store=ObjectStore.from_settings(settings),
            vectors=vectors or vector_store_for(settings, role="processor"),
            metrics=ProcessorMetrics(registry, settings.processor_concurrency),
        )
        embedder = Embedder(settings)
        pid = processor_id or new_processor_id()
        pipeline = Pipeline(
            deps=deps, embedders=Embedders(settings, embedder), extract=extractor or default_extractor(settings)
        )
        presence = Presence(settings.database_url, pid)
        worker = Worker(deps=deps, pipeline=pipeline, processor_id=pid, may_claim=lambda: presence.held)
        state = ProcessorState(
            deps=deps,
            embedder=embedder,
            worker=worker,
            registry=Registry(deps.db, pid, settings.processor_concurrency),
            warm_up=extractor_warm_up or warm_up,
            presence=presence,
        )
        app.state.processor = state
        state.supervise(asyncio.create_task(state.presence.run(), name="presence"))
        state.supervise(asyncio.create_task(state.start_up(), name="startup"))
        state.supervise(asyncio.create_task(state.liveness_loop(), name="liveness"))
        state.supervise(asyncio.create_task(state.work_loop(), name="work"))
        log.info("processor.started", processor_id=pid, port=settings.processor_port)
        try:
            yield
        finally:
            await worker.stop(SHUTDOWN_GRACE_S)
            for task in state.tasks:
                task.cancel()
            if state.tasks:
                # Bounded: shutdown must finish even if a side task ignored its cancellation.
                _, stuck = await asyncio.wait(state.tasks, timeout=SIDE_TASK_STOP_S)
                for task in stuck:
                    log.error("processor.side_task_stuck", task=task.get_name())
            if state.registry.registered:
                try:
                    await state.registry.mark_stopped()
                except Exception as exc:  # shutting down anyway; the row then ages out
                    log.warning("processor.mark_stopped_failed", error=str(exc))
            if vectors is None:  # only close what this app created
                await deps.vectors.close()
            await deps.db.dispose()
            await deps.heartbeat_db.dispose()
            log.info("processor.stopped", processor_id=pid)

    app = FastAPI(title="kbingest processor", version="0.1.0", lifespan=lifespan)
    registry = CollectorRegistry()
    install_http_observability(app, registry, "processor")
    app.include_router(receiver.router)

    async def readiness(_request: Request) -> Readiness:
        state: ProcessorState = app.state.processor
        lifecycle = "ok" if state.ready and state.worker.accepting and not state.fatal else state.not_ready_reason()
        details = {"in_flight": state.worker.in_flight, "processor_id": state.registry.processor_id}
        return Readiness({**state.checks, "lifecycle": lifecycle}, details)

    add_health_routes(app, readiness)

    return app
