"""A connection lost while COMMIT is in flight (issue 12, section 3).

The API cannot tell from the error whether the row committed; it asks Postgres on a new connection
(the transaction's status) and removes the object only when the transaction did not commit.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
import pytest
from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncConnection

from devstack.postgres import EmbeddedPostgres
from services.api.app import create_app
from services.api.state import AppState
from services.api.uploads.service import UploadService
from shared.db import Database, DatabaseUnavailable
from shared.settings import Settings
from tests.conftest import _client_for
from tests.support import servers
from tests.support.api_helpers import assert_error_shape, create_kb, fetch_all, object_keys, upload
from tests.support.poll import eventually

TEXT = b"Committed is committed, whatever happened to the socket afterwards.\n" * 20
DEADLINE_S = 60.0
# A standby that never connects: a commit that must wait for it waits until its session is ended.
ABSENT_STANDBY = "kbingest_absent_standby"


class _RolledBack(Exception):
    """Rolls the armed transaction back, as the server does for a session that vanished before COMMIT."""


class LosesConnectionAtCommit(Database):
    """The real database, except that the armed transaction ends the way a dropped connection does.

    ``server_commits`` says what the server did with the COMMIT the client never got an answer to.
    """

    def __init__(self, inner: Database, *, server_commits: bool) -> None:
        super().__init__(inner.engine, max_connections=inner.max_connections, acquire_timeout_s=5.0)
        self.server_commits = server_commits
        self.armed = False
        self.fired = 0

    async def arm(self, document_id: uuid.UUID) -> None:
        """The ``after_store`` seam: called inside the transaction that commits the upload."""
        self.armed = True

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncConnection]:
        lost = False
        try:
            async with super().transaction() as conn:
                yield conn
                lost, self.armed = self.armed, False
                if lost and not self.server_commits:
                    raise _RolledBack
        except _RolledBack:
            pass
        if lost:
            self.fired += 1
            raise DatabaseUnavailable("connection was closed in the middle of operation (injected at COMMIT)")


def _swap_uploads(app: FastAPI, *, server_commits: bool) -> LosesConnectionAtCommit:
    state: AppState = app.state.kb
    fake = LosesConnectionAtCommit(state.db, server_commits=server_commits)
    state.uploads = UploadService(settings=state.settings, db=fake, store=state.store, after_store=fake.arm)
    return fake


@pytest.mark.parametrize("server_commits", [True, False], ids=["row-committed", "row-rolled-back"])
async def test_an_ambiguous_commit_keeps_the_object_only_if_the_row_exists(
    settings: Settings, api_key: str, server_commits: bool
) -> None:
    app = create_app(settings)
    async for client in _client_for(app, api_key):
        kb = await create_kb(client)
        fake = _swap_uploads(app, server_commits=server_commits)
        response = await upload(client, kb, "ambiguous.txt", TEXT)
        assert fake.fired == 1
        rows = await fetch_all(settings, "SELECT id, object_key FROM documents")
        if server_commits:
            assert response.status_code == 201, response.text
            assert rows == [{"id": uuid.UUID(response.json()["id"]), "object_key": rows[0]["object_key"]}]
            assert await object_keys(settings) == [rows[0]["object_key"]]
            assert (await client.get(f"/v1/documents/{response.json()['id']}/content")).content == TEXT
        else:
            assert_error_shape(response, 503, "database_unavailable")
            assert rows == []
            assert await object_keys(settings) == []


@pytest.fixture
async def standby_pg() -> AsyncIterator[EmbeddedPostgres]:
    """A server of its own whose synchronous standby never comes.

    Commits wait for it only in sessions with ``synchronous_commit = on`` (the server's default is
    off), so the test chooses which sessions' commits hang.
    """
    pg = EmbeddedPostgres(
        servers.scratch_dir("kbi-pg-") / "data",
        servers.free_port(),
        max_connections=40,
        durable=False,
        extra_settings={"synchronous_standby_names": ABSENT_STANDBY},
    )
    pg.start()
    servers.prepare_template(pg)
    yield pg
    pg.destroy()


async def _until_waiting(admin: asyncpg.Connection, database: str) -> int:
    """The pid of the API session whose COMMIT waits for the absent standby."""

    async def waiting_pid() -> int | None:
        return await admin.fetchval(
            "SELECT pid FROM pg_stat_activity WHERE datname = $1 AND application_name = 'kbingest.api' "
            "AND wait_event = 'SyncRep'",
            database,
        )

    return int(
        await eventually(
            waiting_pid, timeout_s=DEADLINE_S, every_s=0.02, what="a COMMIT of the API waiting for the standby"
        )
    )


async def _commits_wait(admin: asyncpg.Connection, database: str, state: AppState, *, wait: bool) -> None:
    """Make the API's sessions from now on wait (or not) for the standby at every commit that wrote."""
    if wait:
        await admin.execute(f"ALTER DATABASE {database} SET synchronous_commit = on")
    else:
        await admin.execute(f"ALTER DATABASE {database} RESET synchronous_commit")
    # A database's settings apply when a session starts: the pool's open sessions must go.
    await state.db.engine.dispose()


async def test_connection_lost_while_commit_waits_keeps_the_committed_upload(
    standby_pg: EmbeddedPostgres, settings: Settings, api_key: str
) -> None:
    """A real ambiguous commit: the row is committed locally when its session is terminated mid-COMMIT."""
    database = servers.clone_database(standby_pg)
    tuned = settings.model_copy(update={"database_url": standby_pg.dsn_for(database)})
    admin = await asyncpg.connect(standby_pg.dsn_for("postgres", driver="postgresql"))
    app = create_app(tuned)
    try:
        async for client in _client_for(app, api_key):
            kb = await create_kb(client)
            # The key's last-use touch must not write (and so wait) before the upload's own commit.
            await fetch_all(tuned, "UPDATE api_keys SET last_used_at = now() + interval '1 day' RETURNING id")
            await _commits_wait(admin, database, app.state.kb, wait=True)
            try:
                uploading = asyncio.create_task(upload(client, kb, "committed.txt", TEXT))
                pid = await _until_waiting(admin, database)
                await admin.execute("SELECT pg_terminate_backend($1)", pid)
                response = await uploading
            finally:
                await _commits_wait(admin, database, app.state.kb, wait=False)
            assert response.status_code == 201, response.text
            document_id = response.json()["id"]
            rows = await fetch_all(tuned, "SELECT id, object_key FROM documents")
            assert rows == [{"id": uuid.UUID(document_id), "object_key": f"kb/{kb}/{document_id}"}]
            assert await object_keys(tuned) == [f"kb/{kb}/{document_id}"]
    finally:
        await admin.close()
