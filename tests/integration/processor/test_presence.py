"""The processor's presence lock on real Postgres: where pg_locks shows it, collisions, a killed session."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest

from services.processor.presence import Presence, PresenceTaken
from shared import presence
from shared.db import asyncpg_dsn
from shared.settings import Settings
from tests.support.poll import eventually


@pytest.fixture
async def watcher(settings: Settings) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(asyncpg_dsn(settings.database_url))
    yield conn
    await conn.close()


async def _held_keys(conn: asyncpg.Connection) -> set[int]:
    return set((await conn.fetchrow(presence.CHECK, presence.NAMESPACE))["held"])


async def _key(conn: asyncpg.Connection, processor_id: str) -> int:
    return int(await conn.fetchval("SELECT hashtext($1)::oid", processor_id))


@contextlib.asynccontextmanager
async def running(p: Presence) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(p.run())
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_the_lock_is_where_the_reconciler_looks_for_it_negative_hashes_too(
    settings: Settings, watcher: asyncpg.Connection
) -> None:
    ids = [f"host:{n}:{uuid.uuid4().hex[:8]}" for n in range(40)]
    signs = {pid: await watcher.fetchval("SELECT hashtext($1) < 0", pid) for pid in ids}
    chosen = [next(p for p in ids if signs[p]), next(p for p in ids if not signs[p])]
    for pid in chosen:
        p = Presence(settings.database_url, pid)
        async with running(p):
            await p.ensure_held(timeout_s=30)
            row = await watcher.fetchrow(
                "SELECT classid, objid, objsubid, database FROM pg_locks l JOIN pg_stat_activity a USING (pid) "
                "WHERE l.locktype = 'advisory' AND a.application_name = 'kbingest.processor.presence' "
                "AND a.datname = current_database()"
            )
            assert row is not None
            assert (row["classid"], row["objid"], row["objsubid"]) == (presence.NAMESPACE, await _key(watcher, pid), 2)
            assert await _key(watcher, pid) in await _held_keys(watcher)

        async def released(pid: str = pid) -> bool:
            return await _key(watcher, pid) not in await _held_keys(watcher)

        await eventually(released, timeout_s=30, every_s=0.02)


async def test_a_second_holder_of_the_same_key_fails_start_up_clearly(settings: Settings) -> None:
    pid = f"host:1:{uuid.uuid4().hex[:8]}"
    first = Presence(settings.database_url, pid)
    async with running(first):
        await first.ensure_held(timeout_s=30)
        with pytest.raises(PresenceTaken, match="hashtext collision"):
            await asyncio.wait_for(Presence(settings.database_url, pid).run(), 30)
        assert first.held


async def test_a_killed_session_is_reopened_and_the_lock_taken_again(
    settings: Settings, watcher: asyncpg.Connection
) -> None:
    pid = f"host:2:{uuid.uuid4().hex[:8]}"
    p = Presence(settings.database_url, pid)
    async with running(p) as task:
        await p.ensure_held(timeout_s=30)
        backend = await watcher.fetchval(
            "SELECT pid FROM pg_stat_activity WHERE application_name = 'kbingest.processor.presence' "
            "AND datname = current_database()"
        )
        assert await watcher.fetchval("SELECT pg_terminate_backend($1)", backend)

        async def retaken() -> bool:
            current = await watcher.fetchval(
                "SELECT pid FROM pg_stat_activity WHERE application_name = 'kbingest.processor.presence' "
                "AND datname = current_database()"
            )
            return p.held and current not in (None, backend) and await _key(watcher, pid) in await _held_keys(watcher)

        await eventually(retaken, timeout_s=30, every_s=0.02)
        assert not task.done()
