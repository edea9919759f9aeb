"""The CLI's Postgres access: one connection for one short command, disposed of right after."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from sqlalchemy.ext.asyncio import AsyncConnection

from shared.db import worker_database
from shared.settings import Settings


@asynccontextmanager
async def one_transaction(
    settings: Settings, *, service: str = "cli", acquire_timeout_s: float = 10.0
) -> AsyncIterator[AsyncConnection]:
    """A transaction on a single connection of its own (a command never holds more than one)."""
    db = worker_database(settings.database_url, service=service, max_connections=1, acquire_timeout_s=acquire_timeout_s)
    try:
        async with db.transaction() as conn:
            yield conn
    finally:
        await db.dispose()
