"""Engines with a hard connection ceiling: QueuePool for the API, NullPool + semaphore for workers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Final, Literal

import asyncpg
import sqlalchemy.exc
from sqlalchemy import event
from sqlalchemy.engine import ExceptionContext, make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from shared.aio import wait_for

CONNECT_TIMEOUT_S = 5.0

# The one "is this a connection error?" list: asyncpg's ways of saying the server or the socket is
# gone (or refuses new sessions for now). InternalClientError: the server dropped the connection
# mid-operation and the client protocol lost track of its state (asyncpg#1069); the connection is
# unusable, a new one works. ``is_connection_error`` looks for these through SQLAlchemy's wrappers.
ASYNCPG_CONNECTION_LOST: Final = (
    OSError,
    TimeoutError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    asyncpg.TooManyConnectionsError,
)
# What a raw asyncpg session (LISTEN, advisory lock) reconnects after: a lost connection, or any
# server error on a session that runs nothing but LISTEN / lock calls.
ASYNCPG_CONNECTION_ERRORS: Final = (*ASYNCPG_CONNECTION_LOST, asyncpg.PostgresError)


class DatabaseUnavailable(Exception):
    """Postgres could not be reached, or no connection was free within the pool timeout."""


def create_engine(
    url: str,
    *,
    application_name: str,
    pool: Literal["queue", "null"],
    pool_size: int = 5,
    max_overflow: int = 2,
    pool_timeout_s: float = 5.0,
    statement_timeout_s: float = 30.0,
) -> AsyncEngine:
    """Build an async engine; ``application_name`` shows who holds what in pg_stat_activity."""
    connect_args = {
        "timeout": CONNECT_TIMEOUT_S,
        "server_settings": session_settings(application_name, statement_timeout_s),
    }
    if pool == "null":
        return create_async_engine(url, poolclass=NullPool, connect_args=connect_args)
    engine = create_async_engine(
        url,
        pool_size=pool_size,
        max_overflow=max_overflow,
        pool_timeout=pool_timeout_s,
        pool_pre_ping=True,
        pool_recycle=1800,
        connect_args=connect_args,
    )
    event.listen(engine.sync_engine, "handle_error", _invalidate_broken_protocol)
    return engine


def session_settings(application_name: str, statement_timeout_s: float) -> dict[str, str]:
    """A service connection's server_settings: who holds it (pg_stat_activity), and how long a statement
    (twice that for an idle transaction) may hold it before the server ends it."""
    return {
        "application_name": application_name,
        "statement_timeout": str(int(statement_timeout_s * 1000)),
        "idle_in_transaction_session_timeout": str(int(statement_timeout_s * 2000)),
    }


def _invalidate_broken_protocol(context: ExceptionContext) -> None:
    """An asyncpg InternalClientError means the connection is unusable: have the pool discard it.

    SQLAlchemy only treats "connection is closed" as a disconnect, so without this a connection
    whose protocol state broke when Postgres restarted mid-query goes back to the QueuePool and
    fails every later checkout (sqlalchemy#13241).
    """
    original = context.original_exception
    if original is not None and any(isinstance(e, asyncpg.InternalClientError) for e in exception_chain(original)):
        context.is_disconnect = True


def exception_chain(exc: BaseException) -> list[BaseException]:
    """``exc`` and up to four causes: a failed ROLLBACK after a dropped connection hides the real error."""
    chain: list[BaseException] = []
    seen: BaseException | None = exc
    while seen is not None and len(chain) < 5:
        chain.append(seen)
        seen = seen.__cause__ or (None if seen.__suppress_context__ else seen.__context__)
    return chain


def asyncpg_dsn(url: str) -> str:
    """``postgresql+asyncpg://…`` (SQLAlchemy) → ``postgresql://…`` (for raw asyncpg sessions: LISTEN, locks)."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def is_connection_error(exc: BaseException) -> bool:
    """True when ``exc`` means the database is unreachable rather than a bad statement.

    SQLAlchemy raises a DBAPIError from its adapted error, raised from asyncpg's own exception:
    the chain is searched, so the classes are matched, never their names.
    """
    for link in exception_chain(exc):
        if isinstance(link, (DatabaseUnavailable, sqlalchemy.exc.TimeoutError, *ASYNCPG_CONNECTION_LOST)):
            return True
        if isinstance(link, sqlalchemy.exc.DBAPIError) and link.connection_invalidated:
            return True
    return False


@contextmanager
def _unavailable_when_unreachable() -> Iterator[None]:
    """A lost or unreachable database surfaces as ``DatabaseUnavailable`` (503 in the API, a retry in workers)."""
    try:
        yield
    except BaseException as exc:
        if is_connection_error(exc) and not isinstance(exc, DatabaseUnavailable):
            raise DatabaseUnavailable(str(exc)) from exc
        raise


class Database:
    """An engine plus a semaphore: a process never holds more than ``max_connections``."""

    def __init__(self, engine: AsyncEngine, *, max_connections: int, acquire_timeout_s: float) -> None:
        self.engine = engine
        self.max_connections = max_connections
        self._slots = asyncio.Semaphore(max_connections)
        self._acquire_timeout_s = acquire_timeout_s

    @asynccontextmanager
    async def _slot(self) -> AsyncIterator[None]:
        try:
            await wait_for(self._slots.acquire(), self._acquire_timeout_s)
        except TimeoutError as exc:
            raise DatabaseUnavailable(
                f"no database connection free within {self._acquire_timeout_s:.1f}s (ceiling {self.max_connections})"
            ) from exc
        try:
            yield
        finally:
            self._slots.release()

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncConnection]:
        """One connection, one transaction: commits on success, rolls back on error."""
        async with self._slot():
            with _unavailable_when_unreachable():
                async with self.engine.begin() as conn:
                    yield conn

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[AsyncConnection]:
        """A connection without an implicit transaction (autocommit reads, LISTEN)."""
        async with self._slot():
            with _unavailable_when_unreachable():
                async with self.engine.connect() as conn:
                    yield conn

    async def dispose(self) -> None:
        await self.engine.dispose()


def api_database(
    url: str,
    *,
    service: str,
    pool_size: int,
    max_overflow: int,
    pool_timeout_s: float,
    statement_timeout_s: float = 30.0,
) -> Database:
    """The API's small QueuePool; the ceiling is pool_size + max_overflow."""
    engine = create_engine(
        url,
        application_name=f"kbingest.{service}",
        pool="queue",
        pool_size=pool_size,
        max_overflow=max_overflow,
        pool_timeout_s=pool_timeout_s,
        statement_timeout_s=statement_timeout_s,
    )
    return Database(engine, max_connections=pool_size + max_overflow, acquire_timeout_s=pool_timeout_s)


def worker_database(
    url: str,
    *,
    service: str,
    max_connections: int,
    acquire_timeout_s: float = 30.0,
    statement_timeout_s: float = 30.0,
) -> Database:
    """A worker's NullPool engine bounded by a semaphore of ``max_connections``."""
    engine = create_engine(
        url,
        application_name=f"kbingest.{service}",
        pool="null",
        statement_timeout_s=statement_timeout_s,
    )
    return Database(engine, max_connections=max_connections, acquire_timeout_s=acquire_timeout_s)
