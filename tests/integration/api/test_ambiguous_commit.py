"""A connection lost while COMMIT is in flight (issue 12, section 3).

The API cannot tell from the error whether the row committed; it asks Postgres on a new connection
(the transaction's status) and removes the object only when the transaction did not commit.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest

from devstack.postgres import EmbeddedPostgres
from services.api.app import create_app
from services.api.state import AppState
from shared.settings import Settings
from tests.conftest import _client_for
from tests.support import servers
from tests.support.api_helpers import assert_error_shape, create_kb, fetch_all, object_keys, upload
from tests.support.lost_commit import AmbiguousCommit
from tests.support.poll import eventually

TEXT = b"Committed is committed, whatever happened to the socket afterwards.\n" * 20
DEADLINE_S = 60.0
# A standby that never connects: a commit that must wait for it waits until its session is ended.
ABSENT_STANDBY = "kbingest_absent_standby"


async def test_an_ambiguous_commit_keeps_the_object_only_if_the_row_exists(
    settings: Settings, ambiguous_commit: AmbiguousCommit
) -> None:
    client = ambiguous_commit.client
    kb = await create_kb(client)
    response = await ambiguous_commit.lose_commit_of(lambda: upload(client, kb, "ambiguous.txt", TEXT))
    rows = await fetch_all(settings, "SELECT id, object_key FROM documents")
    if ambiguous_commit.server_commits:
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
