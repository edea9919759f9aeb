"""Composition of one relay: pool, HTTP client, deliverer, worker (used by the app, tests and benchmarks)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Final

from services.relay.delivery import Deliverer, build_client
from services.relay.groups import batch_endpoints, endpoints
from services.relay.metrics import RelayMetrics
from services.relay.pool import create_pool
from services.relay.routes import Router
from services.relay.worker import Relay
from shared.aio import wait_for
from shared.settings import Settings

POOL_CLOSE_TIMEOUT_S: Final = 5.0


@asynccontextmanager
async def open_relay(settings: Settings, metrics: RelayMetrics, **options: Any) -> AsyncIterator[Relay]:
    """A ready ``Relay``; on exit its HTTP client and pool are closed (connections terminated if stuck)."""
    # RELAY_CONCURRENCY is per URL: a group's members each get that many connections.
    urls = max(1, len(endpoints(Router(settings.effective_routes()).subscribers)))
    client = build_client(
        connect_timeout_s=settings.relay_connect_timeout_s,
        timeout_s=settings.relay_timeout_s,
        max_connections=settings.relay_concurrency * urls,
    )
    pool = await create_pool(settings)
    try:
        deliverer = Deliverer(
            client,
            secret=settings.relay_secret.get_secret_value(),
            concurrency=settings.relay_concurrency,
            batch_subscribers=batch_endpoints(settings.relay_batch_subscribers),
            request_timeout_s=settings.relay_connect_timeout_s + settings.relay_timeout_s,
        )
        yield Relay(settings=settings, pool=pool, deliverer=deliverer, metrics=metrics, **options)
    finally:
        await client.aclose()
        try:
            await wait_for(pool.close(), POOL_CLOSE_TIMEOUT_S)
        except TimeoutError:
            pool.terminate()
