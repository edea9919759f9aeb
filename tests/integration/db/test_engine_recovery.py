"""The API's QueuePool discards a connection whose asyncpg protocol broke (sqlalchemy#13241, asyncpg#1069).

After Postgres restarts mid-query, asyncpg can report a dead connection as ``InternalClientError``
("cannot switch to state 12; another operation (2) is in progress") while ``is_closed()`` is still
False. SQLAlchemy then neither invalidates it nor lets pre-ping catch it, so the broken connection
goes back to the pool and fails every later request. The failure itself is asyncpg's and cannot be
produced on demand, so it is injected here (a named fake of the driver's failure mode) on one real
pooled connection; the pool, the engine and Postgres are real.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import asyncpg
import pytest
from sqlalchemy import text
from sqlalchemy.dialects.postgresql.asyncpg import AsyncAdapt_asyncpg_connection

from shared.db import DatabaseUnavailable, api_database


class BrokenProtocol:
    """Makes the next statement on one chosen driver connection fail like asyncpg after a restart."""

    def __init__(self) -> None:
        self.target: Any = None
        self.raised = 0

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        original = AsyncAdapt_asyncpg_connection._prepare
        fake = self

        async def prepare(self: Any, operation: Any, invalidate_timestamp: Any) -> Any:
            if self is fake.target:
                fake.target = None
                fake.raised += 1
                raise asyncpg.InternalClientError("cannot switch to state 12; another operation (2) is in progress")
            return await original(self, operation, invalidate_timestamp)

        monkeypatch.setattr(AsyncAdapt_asyncpg_connection, "_prepare", prepare)


@pytest.fixture
def broken_protocol(monkeypatch: pytest.MonkeyPatch) -> Iterator[BrokenProtocol]:
    fake = BrokenProtocol()
    fake.install(monkeypatch)
    yield fake


async def test_a_broken_connection_is_discarded_and_reported_as_unavailable(
    database_url: str, broken_protocol: BrokenProtocol
) -> None:
    db = api_database(database_url, service="test", pool_size=1, max_overflow=0, pool_timeout_s=5)
    try:
        async with db.connection() as conn:
            first_pid = await conn.scalar(text("SELECT pg_backend_pid()"))
            broken_protocol.target = (await conn.get_raw_connection()).dbapi_connection

        # The API maps this to 503 database_unavailable, not a 500.
        with pytest.raises(DatabaseUnavailable):
            async with db.connection() as conn:
                await conn.scalar(text("SELECT 1"))
        assert broken_protocol.raised == 1

        # The only pooled connection was thrown away; the next request gets a fresh, working one.
        async with db.connection() as conn:
            assert await conn.scalar(text("SELECT pg_backend_pid()")) != first_pid
    finally:
        await db.dispose()
