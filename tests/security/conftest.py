"""The API as a real process (``kbingest api``) for attacks measured from outside: RSS, raw sockets."""

from __future__ import annotations

import secrets
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from services.api.app import create_app
from shared.apikeys import display_prefix, generate_key, revoke_key, store_key
from shared.db import worker_database
from shared.settings import Settings
from tests.support import servers
from tests.support.pipeline_helpers import service_env, start_cli, stop_process, wait_http_ok


@dataclass(frozen=True)
class ApiProcess:
    port: int
    pid: int
    api_key: str
    internal_secret: str
    log: Path

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


async def new_key(settings: Settings, kb_ids: list[str] | None = None) -> str:
    """A fresh API key, limited to ``kb_ids`` when given."""
    key = generate_key()
    db = worker_database(settings.database_url, service="test", max_connections=1)
    try:
        async with db.transaction() as conn:
            await store_key(conn, key, name="test", knowledge_base_ids=[uuid.UUID(k) for k in kb_ids or []] or None)
    finally:
        await db.dispose()
    return key


async def revoke(settings: Settings, key: str) -> None:
    db = worker_database(settings.database_url, service="test", max_connections=1)
    try:
        async with db.transaction() as conn:
            assert await revoke_key(conn, display_prefix(key)) == 1
    finally:
        await db.dispose()


@asynccontextmanager
async def in_process(
    settings: Settings, api_key: str | None = None
) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    """The real app for ``settings`` (when a test needs other settings than the ``api`` fixture's)."""
    app = create_app(settings)
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://api", headers=headers) as client:
            yield app, client


@contextmanager
def launched_api(settings: Settings, log: Path, **env: str) -> Iterator[ApiProcess]:
    """``kbingest api`` on the test's database and bucket, owning a local vector store; ``env`` wins."""
    port = servers.free_port()
    internal = secrets.token_urlsafe(16)
    full_env = service_env(settings, KBINGEST_API_PORT=str(port), KBINGEST_INTERNAL_SECRET=internal, **env)
    proc = start_cli(["api"], full_env, log)
    try:
        wait_http_ok(f"http://127.0.0.1:{port}/readyz", proc, log)
        assert settings.api_key is not None
        yield ApiProcess(port, proc.pid, settings.api_key.get_secret_value(), internal, log)
    finally:
        stop_process(proc)


@pytest.fixture
def api_process(settings: Settings, tmp_path: Path) -> Iterator[ApiProcess]:
    with launched_api(settings, tmp_path / "api.log") as api:
        yield api
