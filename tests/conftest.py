"""Shared fixtures: real embedded PostgreSQL and S3 (nanio), a fresh database and bucket per test."""

from __future__ import annotations

import shutil
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from devstack.postgres import EmbeddedPostgres
from devstack.s3 import EmbeddedS3
from services.api.app import create_app
from shared.db import Database
from shared.settings import Settings
from shared.storage import ObjectStore
from tests.support import servers
from tests.support.corpus import CORPUS, corpus_missing
from tests.support.pipeline_helpers import open_db
from tests.support.reconcilers import ReconcilerFactory, reconciler_factory


@pytest.fixture(scope="session")
def pg_server() -> Iterator[EmbeddedPostgres]:
    pg = servers.start_postgres()
    servers.prepare_template(pg)
    yield pg
    pg.destroy()
    shutil.rmtree(pg.data_dir.parent, ignore_errors=True)


@pytest.fixture(scope="session")
def s3_server() -> Iterator[EmbeddedS3]:
    s3 = servers.start_s3()
    yield s3
    s3.stop()
    shutil.rmtree(s3.data_dir.parent, ignore_errors=True)


@pytest.fixture
def own_pg() -> Iterator[servers.EmbeddedPostgres]:
    """A Postgres of the test's own, migrated: the test stops, crashes and starts it."""
    pg = servers.start_postgres(max_connections=50)
    servers.migrate(pg.dsn)
    yield pg
    pg.destroy()
    shutil.rmtree(pg.data_dir.parent, ignore_errors=True)


@pytest.fixture
def database_url(pg_server: EmbeddedPostgres) -> str:
    return pg_server.dsn_for(servers.clone_database(pg_server))


@pytest.fixture
def api_key() -> str:
    return "kbi_test_" + uuid.uuid4().hex


@pytest.fixture
def settings(database_url: str, s3_server: EmbeddedS3, tmp_path: Path, api_key: str) -> Settings:
    return Settings(
        _env_file=None,  # type: ignore[call-arg]
        database_url=database_url,
        s3_endpoint=s3_server.endpoint,
        s3_access_key=s3_server.access_key,
        s3_secret_key=s3_server.secret_key,  # type: ignore[arg-type]
        s3_bucket=f"b-{uuid.uuid4().hex[:16]}",
        data_dir=tmp_path / "data",
        api_key=api_key,  # type: ignore[arg-type]
        max_upload_bytes=2 * 1024 * 1024,
    )


@pytest.fixture
async def db(settings: Settings) -> AsyncIterator[Database]:
    """A database handle on the test database (two connections)."""
    database = open_db(settings)
    yield database
    await database.dispose()


@pytest.fixture
async def store(settings: Settings) -> ObjectStore:
    """The test bucket, created."""
    object_store = ObjectStore.from_settings(settings)
    await object_store.ensure_bucket()
    return object_store


@pytest.fixture
async def make_reconciler(settings: Settings) -> AsyncIterator[ReconcilerFactory]:
    """Reconcilers on the test database to drive by hand (tests/support/reconcilers.py)."""
    async with reconciler_factory(settings) as factory:
        yield factory


async def _client_for(app: FastAPI, api_key: str) -> AsyncIterator[httpx.AsyncClient]:
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://api", headers={"Authorization": f"Bearer {api_key}"}, timeout=60
        ) as client:
            yield client


@pytest.fixture
async def api(settings: Settings, api_key: str) -> AsyncIterator[httpx.AsyncClient]:
    """The real API app (real Postgres and S3) driven in-process over ASGI."""
    async for client in _client_for(create_app(settings), api_key):
        yield client


@pytest.fixture
def corpus() -> Path:
    if not CORPUS.exists():
        corpus_missing("corpus")
    return CORPUS
