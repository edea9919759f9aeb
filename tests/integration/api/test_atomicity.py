"""Nothing half-written survives a failure; concurrency and connection ceilings hold."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import AsyncIterator

import asyncpg
import httpx
import pytest

from services.api.app import create_app
from shared.settings import Settings
from tests.conftest import _client_for
from tests.support import servers
from tests.support.api_helpers import assert_error_shape, create_kb, fetch_all, object_keys, upload

TEXT = b"The same content, uploaded many times at once.\n" * 50


async def _boom(document_id: uuid.UUID) -> None:
    raise RuntimeError(f"injected failure after storing {document_id}")


async def test_failure_between_object_write_and_commit_leaves_nothing(settings: Settings, api_key: str) -> None:
    async for client in _client_for(create_app(settings, after_store=_boom), api_key):
        kb = await create_kb(client)
        response = await upload(client, kb, "a.txt", TEXT)
        assert_error_shape(response, 500, "internal_error")
    assert await fetch_all(settings, "SELECT id FROM documents") == []
    assert await fetch_all(settings, "SELECT id FROM outbox") == []
    assert await object_keys(settings) == []


async def test_object_store_down_is_503_and_leaves_no_row(settings: Settings, api_key: str) -> None:
    down = settings.model_copy(update={"s3_endpoint": f"127.0.0.1:{servers.free_port()}", "s3_timeout_s": 2.0})
    async for client in _client_for(create_app(down), api_key):
        kb = await create_kb(client)
        response = await upload(client, kb, "a.txt", TEXT)
        assert_error_shape(response, 503, "storage_unavailable")
        ready = await client.get("/readyz")
        assert ready.status_code == 503 and "object_store" in ready.json()["failed"]
    assert await fetch_all(settings, "SELECT id FROM documents") == []
    assert await fetch_all(settings, "SELECT id FROM outbox") == []


async def test_50_concurrent_identical_uploads_give_one_201(api: httpx.AsyncClient, settings: Settings) -> None:
    kb = await create_kb(api)
    responses = await asyncio.gather(*(upload(api, kb, "same.txt", TEXT) for _ in range(50)))
    statuses = Counter(r.status_code for r in responses)
    assert statuses == {201: 1, 409: 49}, statuses
    created = next(r.json() for r in responses if r.status_code == 201)
    assert {r.json()["error"]["document_id"] for r in responses if r.status_code == 409} == {created["id"]}
    assert await object_keys(settings) == [f"kb/{kb}/{created['id']}"]
    assert len(await fetch_all(settings, "SELECT id FROM outbox")) == 1


async def test_50_concurrent_same_content_different_names(api: httpx.AsyncClient, settings: Settings) -> None:
    kb = await create_kb(api)
    responses = await asyncio.gather(*(upload(api, kb, f"copy-{i}.txt", TEXT) for i in range(50)))
    assert Counter(r.status_code for r in responses) == {201: 1, 409: 49}
    assert len(await object_keys(settings)) == 1


@pytest.fixture
async def small_pg() -> AsyncIterator[servers.EmbeddedPostgres]:
    pg = servers.start_postgres(max_connections=30)
    servers.prepare_template(pg)
    yield pg
    pg.destroy()


async def test_200_concurrent_uploads_stay_under_the_connection_ceiling(
    small_pg: servers.EmbeddedPostgres, settings: Settings, api_key: str
) -> None:
    url = small_pg.dsn_for(servers.clone_database(small_pg))
    tuned = settings.model_copy(
        update={"database_url": url, "db_pool_size": 4, "db_max_overflow": 2, "db_pool_timeout_s": 30.0}
    )
    ceiling = tuned.db_pool_size + tuned.db_max_overflow
    watcher = await asyncpg.connect(small_pg.dsn_for("postgres", driver="postgresql"))
    peak = 0
    done = asyncio.Event()

    async def sample() -> None:
        nonlocal peak
        while not done.is_set():
            count = await watcher.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'kbingest.api'"
            )
            peak = max(peak, count)
            await asyncio.sleep(0.01)

    sampler = asyncio.create_task(sample())
    try:
        async for client in _client_for(create_app(tuned), api_key):
            kb = await create_kb(client)
            responses = await asyncio.gather(
                *(upload(client, kb, f"f{i}.txt", f"unique content {i}".encode() * 100) for i in range(200))
            )
    finally:
        done.set()
        await sampler
        await watcher.close()
    statuses = Counter(r.status_code for r in responses)
    assert statuses == {201: 200}, [r.text for r in responses if r.status_code != 201][:3]
    assert not any("too many clients" in r.text for r in responses)
    assert 0 < peak <= ceiling, f"peak {peak} connections, ceiling {ceiling}"
