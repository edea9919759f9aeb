"""Drive a real processor app in-process: signed event deliveries, status polling."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx

from services.processor.app import create_app
from services.processor.extraction.elements import Element
from shared.settings import PROCESSOR_EVENT_TYPES, Settings
from shared.signing import SIGNATURE_HEADER, TIMESTAMP_HEADER, sign
from shared.vectorstore import QdrantVectorStore
from tests.support.api_helpers import fetch_all
from tests.support.poll import eventually

ExtractFn = Callable[[str, str], Awaitable[list[Element]]]


def signed_headers(settings: Settings, body: bytes) -> dict[str, str]:
    ts = int(time.time())
    return {
        "Content-Type": "application/json",
        TIMESTAMP_HEADER: str(ts),
        SIGNATURE_HEADER: sign(settings.relay_secret.get_secret_value(), ts, body),
    }


async def post_event(client: httpx.AsyncClient, settings: Settings, envelope: dict[str, Any]) -> httpx.Response:
    body = json.dumps(envelope).encode()
    return await client.post("/v1/events", content=body, headers=signed_headers(settings, body))


async def sql(settings: Settings, statement: str, **params: Any) -> list[dict[str, Any]]:
    """``api_helpers.fetch_all``, for test_reindex_flow.py (another session's file) until it imports that."""
    return await fetch_all(settings, statement, **params)


async def deliver_due(client: httpx.AsyncClient, settings: Settings) -> list[int]:
    """A stand-in for the relay: POST every due, undelivered processor event once, oldest first."""
    rows = await sql(
        settings,
        "SELECT seq, payload FROM outbox WHERE delivered_at IS NULL AND dead_at IS NULL "
        "AND available_at <= now() AND type = ANY(:types) ORDER BY seq",
        types=list(PROCESSOR_EVENT_TYPES),
    )
    statuses = []
    for row in rows:
        response = await post_event(client, settings, row["payload"])
        statuses.append(response.status_code)
        if response.status_code < 300:
            await fetch_all(settings, "UPDATE outbox SET delivered_at = now() WHERE seq = :seq", seq=row["seq"])
    return statuses


async def document(settings: Settings, document_id: str) -> dict[str, Any]:
    rows = await fetch_all(settings, "SELECT * FROM documents WHERE id = :id", id=document_id)
    return rows[0]


async def wait_for(
    settings: Settings,
    document_id: str,
    statuses: set[str],
    *,
    client: httpx.AsyncClient | None = None,
    timeout_s: float = 120.0,
) -> dict[str, Any]:
    """Poll until the document reaches one of ``statuses`` (delivering due events meanwhile)."""

    async def reached() -> dict[str, Any] | None:
        if client is not None:
            await deliver_due(client, settings)
        doc = await document(settings, document_id)
        return doc if doc["status"] in statuses else None

    return await eventually(reached, timeout_s=timeout_s, every_s=0.1, what=f"document {document_id} in {statuses}")


async def until_idle(state: Any, timeout_s: float = 60.0) -> None:
    """Wait until the processor ``state`` has no attempt in flight (its slots are free again)."""
    await eventually(lambda: not state.worker.in_flight, timeout_s=timeout_s, every_s=0.05, what="the attempts to end")


async def no_warm_up() -> None:
    return None


@asynccontextmanager
async def processor_client(
    settings: Settings,
    *,
    extractor: ExtractFn | None = None,
    vectors: QdrantVectorStore | None = None,
) -> AsyncIterator[tuple[httpx.AsyncClient, Any]]:
    """The processor app with its lifespan running; waits for /readyz."""
    app = create_app(
        settings, extractor=extractor, vectors=vectors, extractor_warm_up=no_warm_up if extractor else None
    )
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://processor", timeout=60) as client:

            async def ready() -> bool:
                return (await client.get("/readyz")).status_code == 200

            await eventually(ready, timeout_s=120, every_s=0.1, what="the processor's /readyz to answer 200")
            yield client, app.state.processor
