"""The relay's pool never hands out a connection the server killed mid-transaction (issue 3's restart race).

When Postgres drops a session in the middle of a statement, asyncpg sometimes reports it as an
``InternalClientError`` ("cannot switch to state 12; another operation (2) is in progress",
asyncpg#1069) and leaves the connection open with a broken protocol state. The relay's pool skips
the reset round trip, so such a connection used to go back to the pool, fail the next claim with
an error nobody classified as transient, and kill the worker.
"""

from __future__ import annotations

import asyncio
from collections import Counter

import asyncpg
import pytest

from services.relay.pool import connection, create_pool, is_transient
from tests.support.relay_helpers import connect, relay_settings

ROUNDS = 60


async def _busy(conn: asyncpg.Connection) -> None:
    """Many short statements in one transaction, like a claim or a settle: the kill lands mid-protocol."""
    async with conn.transaction():
        for i in range(100_000):
            await conn.fetchval("SELECT $1::int", i)


async def test_a_connection_killed_mid_statement_never_returns_to_the_pool(database_url: str) -> None:
    # One connection at most, so every checkout after a kill gets whatever the pool kept.
    pool = await create_pool(relay_settings(database_url, {}, db_max_connections=1))
    admin = await connect(database_url)
    seen: Counter[str] = Counter()
    try:
        for round_no in range(ROUNDS):
            with pytest.raises(Exception) as caught:
                async with connection(pool) as conn:
                    pid = conn.get_server_pid()
                    busy = asyncio.create_task(_busy(conn))
                    await asyncio.sleep(0.002 * (round_no % 10))
                    await admin.execute("SELECT pg_terminate_backend($1)", pid)
                    await asyncio.wait_for(busy, 30)
            seen[type(caught.value).__name__] += 1
            assert is_transient(caught.value), repr(caught.value)
            # The very next checkout works: the pool opened a fresh connection.
            async with connection(pool) as conn:
                assert await conn.fetchval("SELECT 1") == 1
    finally:
        await admin.close()
        await asyncio.wait_for(pool.close(), 10)
    assert sum(seen.values()) == ROUNDS, seen


async def test_a_cancelled_query_does_not_leave_a_busy_connection(database_url: str) -> None:
    pool = await create_pool(relay_settings(database_url, {}, db_max_connections=1))
    try:
        with pytest.raises(TimeoutError):
            async with connection(pool) as conn:
                await asyncio.wait_for(conn.fetchval("SELECT pg_sleep(30)"), 0.2)
        async with connection(pool, timeout=5) as conn:
            assert await conn.fetchval("SELECT 1") == 1
            # Cancelled on the server, not abandoned: no backend keeps sleeping beyond the ceiling.
            sleeping = await conn.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE pid <> pg_backend_pid() AND query LIKE '%pg_sleep(30)%'"
            )
            assert sleeping == 0
    finally:
        await asyncio.wait_for(pool.close(), 10)


async def test_only_a_broken_connection_is_thrown_away(database_url: str) -> None:
    """SQL errors and bugs between statements keep the connection; a broken protocol costs it."""
    pool = await create_pool(relay_settings(database_url, {}, db_max_connections=1))
    try:
        async with connection(pool) as conn:
            first = conn.get_server_pid()
        with pytest.raises(asyncpg.DivisionByZeroError):
            async with connection(pool) as conn, conn.transaction():
                await conn.fetchval("SELECT 1 / 0")
        with pytest.raises(RuntimeError):
            async with connection(pool) as conn:
                await conn.execute("BEGIN")
                raise RuntimeError("a bug in the middle of a transaction")
        async with connection(pool) as conn:
            assert conn.get_server_pid() == first
            assert not conn.is_in_transaction(), "the pool rolled the abandoned transaction back"
        # What a statement raises when Postgres went away under it (asyncpg#1069).
        with pytest.raises(asyncpg.InternalClientError):
            async with connection(pool) as conn:
                raise asyncpg.InternalClientError("cannot switch to state 12; another operation (2) is in progress")
        async with connection(pool) as conn:
            assert conn.get_server_pid() != first
            assert await conn.fetchval("SELECT 1") == 1
    finally:
        await asyncio.wait_for(pool.close(), 10)
