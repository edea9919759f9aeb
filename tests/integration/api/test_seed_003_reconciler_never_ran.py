"""Seed 003: connections exhausted ("too many clients"), the reconciliation job never ran, documents stuck 22 h.

Both halves are visible here within 60 s: ``reconciler_not_running`` until a real ``kbingest reconciler``
completes a pass (and it rescues the stuck document), again after it is killed; and ``db_connections_high``
on a dedicated Postgres with a small ``max_connections``.
"""

from __future__ import annotations

import shutil
import signal
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import httpx
import pytest

from devstack.postgres import EmbeddedPostgres
from services.api.app import create_app
from shared.db import Database
from shared.settings import Settings
from tests.conftest import _client_for
from tests.support import servers
from tests.support.api_helpers import create_kb, upload
from tests.support.pipeline_helpers import (
    alert_codes,
    claim,
    execute,
    fetch_one,
    open_db,
    service_env,
    start_cli,
    wait_http_ok,
)
from tests.support.poll import eventually

INTERVAL_S = 1.0


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """Short intervals: 'not running' means no pass within 3 s."""
    return settings.model_copy(
        update={"reconcile_interval_s": INTERVAL_S, "heartbeat_interval_s": 1.0, "stale_after_s": 3.0}
    )


async def _has(api: httpx.AsyncClient, code: str) -> set[str] | None:
    codes = await alert_codes(api)
    return codes if code in codes else None


async def _lacks(api: httpx.AsyncClient, code: str) -> set[str] | None:
    codes = await alert_codes(api)
    return None if code in codes else codes | {"-"}


async def test_seed_003_reconciler_not_running_until_a_pass_and_after_a_kill(
    api: httpx.AsyncClient, settings: Settings, tmp_path: Path
) -> None:
    kb = await create_kb(api)
    doc = (await upload(api, kb, "stuck.md", b"# stuck\n")).json()["id"]
    db = open_db(settings)
    try:
        await claim(db, doc, owner="worker-killed-22h-ago")
        await execute(db, "UPDATE documents SET heartbeat_at = now() - interval '22 hours' WHERE id = :id", id=doc)
        await eventually(lambda: _has(api, "reconciler_not_running"), timeout_s=60)

        port = servers.free_port()
        log = tmp_path / "reconciler.log"
        env = service_env(
            settings,
            KBINGEST_RECONCILER_PORT=str(port),
            KBINGEST_RECONCILE_INTERVAL_S="1",
            KBINGEST_HEARTBEAT_INTERVAL_S="1",
            KBINGEST_STALE_AFTER_S="3",
        )
        proc = start_cli(["reconciler"], env, log)
        try:
            wait_http_ok(f"http://127.0.0.1:{port}/readyz", proc, log)
            await eventually(lambda: _lacks(api, "reconciler_not_running"), timeout_s=60)
            row = await eventually(lambda: _requeued(db, doc), timeout_s=60)
            assert row["error"]["code"] == "stalled"
            metrics = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
            assert "kbingest_reconciler_is_leader 1.0" in metrics
            assert 'kbingest_reconciler_repairs_total{kind="stale_requeued"} 1.0' in metrics
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
        # Killed: nothing completes a pass any more, and the pipeline says so.
        await eventually(lambda: _has(api, "reconciler_not_running"), timeout_s=60)
    finally:
        await db.dispose()


async def _requeued(db: Database, doc: str) -> dict[str, object] | None:
    row = await fetch_one(db, "SELECT status, error FROM documents WHERE id = :id", id=doc)
    return row if row["status"] == "queued" else None


@pytest.fixture
def small_pg() -> Iterator[EmbeddedPostgres]:
    pg = servers.start_postgres(max_connections=20)
    try:
        name = "seed003"
        pg.psql(f"CREATE DATABASE {name}")
        servers.migrate(pg.dsn_for(name))
        yield pg
    finally:
        pg.destroy()
        shutil.rmtree(pg.data_dir.parent, ignore_errors=True)


@pytest.fixture
async def small_api(small_pg: EmbeddedPostgres, settings: Settings, api_key: str) -> AsyncIterator[httpx.AsyncClient]:
    small = settings.model_copy(update={"database_url": small_pg.dsn_for("seed003")})
    async for client in _client_for(create_app(small), api_key):
        yield client


async def test_seed_003_connection_exhaustion_raises_db_connections_high(
    small_api: httpx.AsyncClient, small_pg: EmbeddedPostgres
) -> None:
    dsn = small_pg.dsn_for("seed003").replace("postgresql+asyncpg://", "postgresql://")
    body = (await small_api.get("/v1/pipeline")).json()
    assert body["database"]["max_connections"] == 20
    assert "db_connections_high" not in {a["code"] for a in body["alerts"]}

    # A leaking worker: connections opened and never given back, until over 80 % of the server's ceiling.
    holders = []
    try:
        for _ in range(17 - body["database"]["connections_in_use"] + 1):
            holders.append(await asyncpg.connect(dsn, server_settings={"application_name": f"leak-{uuid.uuid4()}"}))
        await eventually(lambda: _has(small_api, "db_connections_high"), timeout_s=60)
        alert = next(
            a for a in (await small_api.get("/v1/pipeline")).json()["alerts"] if a["code"] == "db_connections_high"
        )
        assert "of 20 PostgreSQL connections" in alert["message"]
    finally:
        for conn in holders:
            await conn.close()
    await eventually(lambda: _lacks(small_api, "db_connections_high"), timeout_s=60)
