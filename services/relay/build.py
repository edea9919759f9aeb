"""Composition of one relay: pool, HTTP client, deliverer, worker (used by the app, tests and benchmarks)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Final

from services.relay.delivery import Deliverer
from services.relay.groups import batch_endpoints
from services.relay.http1 import Http1Client
from services.relay.metrics import RelayMetrics
from services.relay.pool import create_pool
from services.relay.worker import Relay
from shared.aio import wait_for
from shared.settings import Settings

POOL_CLOSE_TIMEOUT_S: Final = 5.0


@asynccontextmanager
async def open_relay(settings: Settings, metrics: RelayMetrics, **options: Any) -> AsyncIterator[Relay]:
    """A ready ``Relay``; on exit its HTTP client and pool are closed (connections terminated if stuck)."""
    # Connections per URL (each member of a group) stay within RELAY_CONCURRENCY: one per exchange in flight.
    client = Http1Client(connect_timeout_s=settings.relay_connect_timeout_s)
    pool = await create_pool(settings)
    try:
        deliverer = Deliverer(
            client,
            secret=settings.relay_secret.get_secret_value(),
            concurrency=settings.relay_concurrency,
            pipeline_depth=settings.relay_pipeline_depth,
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
