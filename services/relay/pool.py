"""The relay's Postgres access: a bounded asyncpg pool and the DSN conversion from SQLAlchemy URLs.

Why not NullPool + semaphore like the other workers: a new connection costs ~5 ms here (fork +
auth, measured in benchmarks/relay.py), which alone would break the commit→delivery latency
target. ``asyncpg.Pool(min_size=0, max_size=DB_MAX_CONNECTIONS)`` keeps the same hard ceiling,
opens connections only under load and closes them after ``IDLE_CONNECTION_S`` without use.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Final

import asyncpg

from shared.db import (
    ASYNCPG_CONNECTION_LOST,
    CONNECT_TIMEOUT_S,
    asyncpg_dsn,
    exception_chain,
    is_connection_error,
    session_settings,
)
from shared.settings import Settings

APPLICATION_NAME: Final = "kbingest.relay"
LISTEN_APPLICATION_NAME: Final = "kbingest.relay.listen"
IDLE_CONNECTION_S: Final = 10.0
ACQUIRE_TIMEOUT_S: Final = 30.0

# Beyond a lost connection (shared/db.py's list), what a retry of the same statement can get past.
_RETRY_LATER: Final = (asyncpg.QueryCanceledError, asyncpg.SerializationError, asyncpg.DeadlockDetectedError)


async def _no_reset(_conn: Any) -> None:
    """The relay leaves no session state behind (no SET, LISTEN or advisory locks), so skip the reset round trip."""


async def create_pool(settings: Settings) -> asyncpg.Pool:
    """At most ``DB_MAX_CONNECTIONS`` connections, none while idle; lazy, so startup never waits on Postgres."""
    pool: asyncpg.Pool = await asyncpg.create_pool(
        asyncpg_dsn(settings.database_url),
        min_size=0,
        max_size=settings.db_max_connections,
        max_inactive_connection_lifetime=IDLE_CONNECTION_S,
        reset=_no_reset,
        timeout=CONNECT_TIMEOUT_S,
        command_timeout=settings.db_statement_timeout_s + 5.0,
        server_settings=session_settings(APPLICATION_NAME, settings.db_statement_timeout_s),
    )
    return pool


@asynccontextmanager
async def connection(pool: asyncpg.Pool, *, timeout: float = ACQUIRE_TIMEOUT_S) -> AsyncIterator[Any]:
    """A pooled connection that never goes back to the pool broken.

    The pool's ``reset`` is skipped (see ``_no_reset``), so a connection whose socket or protocol
    broke would otherwise be handed to the next caller and fail there too. Such a connection is
    terminated. A timeout or cancellation is not: asyncpg cancels the query on the server and the
    pool waits for that, where terminating would leave the backend running the query while the
    pool opens another connection (more backends than the ceiling for a while).
    """
    async with pool.acquire(timeout=timeout) as conn:
        try:
            yield conn
        except Exception as exc:
            if is_broken(exc):
                conn.terminate()
            raise


def is_broken(exc: BaseException) -> bool:
    """True when ``exc`` (or what caused it) means the connection itself is unusable.

    A timeout is not (see ``connection``): asyncpg cancels the query and the connection stays usable.
    """
    return any(isinstance(e, ASYNCPG_CONNECTION_LOST) and not isinstance(e, TimeoutError) for e in exception_chain(exc))


def is_transient(exc: BaseException) -> bool:
    """True when retrying later can help: Postgres unreachable, restarting, overloaded, or a timeout.

    The chain is searched too: when the server drops a connection mid-transaction, the ROLLBACK
    that follows fails with an asyncpg InternalClientError whose context is the real cause.
    """
    return is_connection_error(exc) or any(isinstance(e, _RETRY_LATER) for e in exception_chain(exc))
