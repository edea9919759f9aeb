"""The relay's Postgres access: a bounded asyncpg pool and the DSN conversion from SQLAlchemy URLs.

Why not NullPool + semaphore like the other workers: a new connection costs ~5 ms here (fork +
auth, measured in benchmarks/relay.py), which alone would break the commit→delivery latency
target. ``asyncpg.Pool(min_size=0, max_size=DB_MAX_CONNECTIONS)`` keeps the same hard ceiling,
opens connections only under load and closes them after ``IDLE_CONNECTION_S`` without use.
"""

from __future__ import annotations

from typing import Any, Final

import asyncpg

from shared.db import asyncpg_dsn
from shared.settings import Settings

APPLICATION_NAME: Final = "kbingest.relay"
LISTEN_APPLICATION_NAME: Final = "kbingest.relay.listen"
CONNECT_TIMEOUT_S: Final = 5.0
IDLE_CONNECTION_S: Final = 10.0
ACQUIRE_TIMEOUT_S: Final = 30.0

_TRANSIENT: Final = (
    OSError,
    TimeoutError,
    asyncpg.InterfaceError,
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    asyncpg.TooManyConnectionsError,
    asyncpg.QueryCanceledError,
    asyncpg.SerializationError,
    asyncpg.DeadlockDetectedError,
)


def server_settings(settings: Settings, application_name: str) -> dict[str, str]:
    return {
        "application_name": application_name,
        "statement_timeout": str(int(settings.db_statement_timeout_s * 1000)),
        "idle_in_transaction_session_timeout": str(int(settings.db_statement_timeout_s * 2000)),
    }


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
        server_settings=server_settings(settings, APPLICATION_NAME),
    )
    return pool


def is_transient(exc: BaseException) -> bool:
    """True when retrying later can help: Postgres unreachable, restarting, overloaded, or a timeout.

    The chain is searched too: when the server drops a connection mid-transaction, the ROLLBACK
    that follows fails with an asyncpg InternalClientError whose context is the real cause.
    """
    seen: BaseException | None = exc
    for _ in range(5):
        if seen is None:
            return False
        if isinstance(seen, _TRANSIENT):
            return True
        seen = seen.__cause__ or (None if seen.__suppress_context__ else seen.__context__)
    return False
