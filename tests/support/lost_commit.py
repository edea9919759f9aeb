"""An upload-path COMMIT whose answer never reaches the API (issue 12, section 3): the connection drops
while the server either committed or rolled back, and the API cannot tell which from the error."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

import httpx
from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncConnection

from services.api.state import AppState
from services.api.uploads.service import UploadService
from shared.db import Database, DatabaseUnavailable


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


@dataclass(frozen=True)
class AmbiguousCommit:
    """The real API app (``client`` drives it) and what the server does with a commit whose answer is lost."""

    app: FastAPI
    client: httpx.AsyncClient
    server_commits: bool

    async def lose_commit_of(self, request: Callable[[], Awaitable[httpx.Response]]) -> httpx.Response:
        """``request``'s answer, its upload-path commit (upload or new content) lost on the wire. Every upload
        from here on goes through the losing database: set up what must commit normally before."""
        state: AppState = self.app.state.kb
        fake = LosesConnectionAtCommit(state.db, server_commits=self.server_commits)
        state.uploads = UploadService(settings=state.settings, db=fake, store=state.store, after_store=fake.arm)
        response = await request()
        assert fake.fired == 1, "the request's commit was not the one lost"
        return response
