"""The API's composition root: ``create_app(settings)`` with a lifespan owning engines and clients."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import structlog
from fastapi import FastAPI
from prometheus_client import CollectorRegistry

from services.api.auth_first import AuthFirst
from services.api.body_limit import BodyLimit, body_limit_for
from services.api.broadcast import Broadcaster
from services.api.errors import install_error_handlers
from services.api.routes import (
    batches,
    documents,
    errors,
    event_stream,
    health,
    internal_vectors,
    knowledge_bases,
    outbox,
    pipeline,
    reindex,
    search,
    ui,
)
from services.api.security_headers import SecurityHeaders
from services.api.state import AppState
from services.api.streams import StreamLimiter
from services.api.uploads.service import AfterStoreHook, UploadService
from shared.apikeys import BOOTSTRAP_NAME, display_prefix, store_key
from shared.db import DatabaseUnavailable, api_database
from shared.embedding import Embedder
from shared.http_metrics import install_http_observability
from shared.internal_auth import internal_secret
from shared.settings import Settings
from shared.storage import ObjectStore, StorageUnavailable
from shared.vector_remote import vector_store_for

log = structlog.get_logger("kbingest.api")


def create_app(settings: Settings, *, after_store: AfterStoreHook | None = None) -> FastAPI:
    """Build the API. ``after_store`` is a fault-injection seam used by the atomicity tests."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        db = api_database(
            settings.database_url,
            service="api",
            pool_size=settings.db_pool_size,
            max_overflow=settings.db_max_overflow,
            pool_timeout_s=settings.db_pool_timeout_s,
            statement_timeout_s=settings.db_statement_timeout_s,
        )
        store = ObjectStore.from_settings(settings)
        app.state.kb = AppState(
            settings=settings,
            db=db,
            store=store,
            uploads=UploadService(settings=settings, db=db, store=store, after_store=after_store),
            broadcaster=Broadcaster(settings.database_url),
            vectors=vector_store_for(settings, role="api"),
            embedder=Embedder(settings),
            streams=StreamLimiter(settings.sse_max_streams_per_key),
            internal_secret=internal_secret(settings) if settings.is_local_qdrant else None,
        )
        # One LISTEN session per process feeds every SSE client (it reconnects by itself).
        app.state.kb.broadcaster.start()
        await _bootstrap(settings, app.state.kb)
        log.info("api.started", port=settings.api_port)
        try:
            yield
        finally:
            await app.state.kb.broadcaster.close()
            await app.state.kb.vectors.close()
            await db.dispose()
            log.info("api.stopped")

    app = FastAPI(
        title="kbingest",
        version="0.1.0",
        summary="Document ingestion for knowledge bases: upload, extract, chunk, embed, index.",
        lifespan=lifespan,
        # /docs is served from a package's files (routes/ui.py); ReDoc would need a CDN.
        docs_url=None,
        redoc_url=None,
    )
    install_error_handlers(app)
    # Each added middleware wraps the ones before it. Outside in: security headers on every answer;
    # request ids and metrics (refusals counted too); the body limit; the key check before any body.
    metrics_token = settings.metrics_token.get_secret_value() if settings.metrics_token else None
    app.add_middleware(AuthFirst, protect_metrics=settings.api_is_public, metrics_token=metrics_token)
    app.add_middleware(BodyLimit, limit_for=lambda method, path: body_limit_for(method, path, settings.max_body_bytes))
    install_http_observability(app, CollectorRegistry(), "api")
    app.add_middleware(SecurityHeaders)
    routers = [health, errors, knowledge_bases, reindex, documents, batches, search, outbox, ui, pipeline, event_stream]
    # Only a local (path) Qdrant needs the API to serve vectors to other processes.
    if settings.is_local_qdrant:
        routers.append(internal_vectors)
    for module in routers:
        app.include_router(module.router)
    return app


async def _bootstrap(settings: Settings, state: AppState) -> None:
    """Store the bootstrap key's hash and make sure the bucket exists; never hang on either."""
    try:
        await state.store.ensure_bucket()
    except StorageUnavailable as exc:
        log.error("api.bucket_unavailable", error=str(exc), bucket=settings.s3_bucket)
    if settings.api_key is None:
        return
    key = settings.api_key.get_secret_value()
    try:
        async with state.db.transaction() as conn:
            stored = await store_key(conn, key, name=BOOTSTRAP_NAME)
    except DatabaseUnavailable as exc:
        log.error("api.bootstrap_key_not_stored", error=str(exc))
        return
    if stored is None:
        # Revoked on purpose: it stays revoked; the API serves the keys that are still live.
        log.warning("api.bootstrap_key_revoked", prefix=display_prefix(key), setting="KBINGEST_API_KEY")
