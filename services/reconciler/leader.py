"""Leader election: a session advisory lock held on one dedicated connection.

Failover after a leader host vanishes without closing its socket (power loss, a network cut): the
server ends the lock session after about 11 s (``SESSION_KEEPALIVE``), which frees the lock, and a
standby takes it on its next pass. The old leader, if it still runs, gives up sooner: its checks on
the session (every presence check, every pass) time out after ``PING_TIMEOUT_S``, before the server
frees the lock.
"""

from __future__ import annotations

import asyncio
from typing import Any, Final

import asyncpg
import structlog

from shared.aio import wait_for
from shared.db import ASYNCPG_CONNECTION_ERRORS, CONNECT_TIMEOUT_S, asyncpg_dsn
from shared.pg_session import SESSION_KEEPALIVE, close_session

# "kbingest" as a big-endian int64: the one lock every reconciler replica competes for.
LOCK_KEY: Final = int.from_bytes(b"kbingest", "big")
PING_TIMEOUT_S: Final = 5.0
# The session runs only tiny statements (try-lock, ping, presence check): one the server cannot finish
# within these ends before the client's PING_TIMEOUT_S gives up on it, rather than running on unseen.
STATEMENT_TIMEOUT_MS: Final = 4000
LOCK_TIMEOUT_MS: Final = 2000

TRY_LOCK: Final = "SELECT pg_try_advisory_lock($1)"
UNLOCK: Final = "SELECT pg_advisory_unlock($1)"

log = structlog.get_logger("kbingest.reconciler")


def failover_bound_s(reconcile_interval_s: float) -> float:
    """Worst case from a leader host vanishing to a standby leading: the server drops the session, then a pass."""
    idle, interval, count, user_timeout_ms = (
        float(SESSION_KEEPALIVE[name])
        for name in ("tcp_keepalives_idle", "tcp_keepalives_interval", "tcp_keepalives_count", "tcp_user_timeout")
    )
    return max(idle + interval * count, user_timeout_ms / 1000) + reconcile_interval_s


def session_settings(application_name: str) -> dict[str, str]:
    """The lock session's server settings: keepalives (the lock dies with a vanished host) and timeouts."""
    return {
        "application_name": application_name,
        **SESSION_KEEPALIVE,
        "statement_timeout": str(STATEMENT_TIMEOUT_MS),
        "lock_timeout": str(LOCK_TIMEOUT_MS),
    }


class Leadership:
    """Holds the lock while its session lives; when the session dies, Postgres frees the lock for a standby."""

    def __init__(self, database_url: str, *, identity: str, application_name: str) -> None:
        self._dsn = asyncpg_dsn(database_url)
        self._server_settings = session_settings(application_name)
        self.identity = identity
        self._conn: Any = None
        # The pass and the presence check share the session; asyncpg runs one query at a time.
        self._in_use = asyncio.Lock()
        self.is_leader = False
        self.last_error: str | None = None

    async def ensure(self) -> bool:
        """Keep the lock if this session still holds it, else try to take it; False when another holds it."""
        async with self._in_use:
            return await self._ensure()

    async def fetchrow_as_leader(self, query: str, *args: object) -> Any:
        """Run a short read on the lock session while leading (no extra connection); None when not leading."""
        async with self._in_use:
            if not self.is_leader or self._conn is None:
                return None
            try:
                return await wait_for(self._conn.fetchrow(query, *args), PING_TIMEOUT_S)
            except ASYNCPG_CONNECTION_ERRORS as exc:
                if isinstance(exc, asyncpg.PostgresError) and not self._conn.is_closed():
                    raise  # a failed statement on a live session: a bug to report, not a lost lock
                self.last_error = f"{type(exc).__name__}: {exc}"[:300]
                log.warning("reconciler.leadership_lost", reconciler_id=self.identity, error=self.last_error)
                await self._drop()
                return None

    async def _ensure(self) -> bool:
        if self._conn is not None and not await self._alive():
            if self.is_leader:
                log.warning("reconciler.leadership_lost", reconciler_id=self.identity, error=self.last_error)
            await self._drop()
        if self._conn is None:
            try:
                self._conn = await asyncpg.connect(
                    self._dsn, timeout=CONNECT_TIMEOUT_S, server_settings=self._server_settings
                )
            except ASYNCPG_CONNECTION_ERRORS as exc:
                self.last_error = f"{type(exc).__name__}: {exc}"[:300]
                return False
        if self.is_leader:
            return True
        try:
            self.is_leader = bool(await wait_for(self._conn.fetchval(TRY_LOCK, LOCK_KEY), PING_TIMEOUT_S))
        except ASYNCPG_CONNECTION_ERRORS as exc:
            self.last_error = f"{type(exc).__name__}: {exc}"[:300]
            await self._drop()
            return False
        self.last_error = None
        if self.is_leader:
            log.info("reconciler.leader_elected", reconciler_id=self.identity)
        return self.is_leader

    async def _alive(self) -> bool:
        if self._conn.is_closed():
            self.last_error = "the lock connection was closed"
            return False
        try:
            await wait_for(self._conn.fetchval("SELECT 1"), PING_TIMEOUT_S)
        except ASYNCPG_CONNECTION_ERRORS as exc:
            self.last_error = f"{type(exc).__name__}: {exc}"[:300]
            return False
        return True

    async def _drop(self) -> None:
        conn, self._conn, self.is_leader = self._conn, None, False
        if conn is not None:
            await close_session(conn)

    async def release(self) -> None:
        """Give the lock back at once (clean shutdown), so a standby need not wait for a dead session."""
        async with self._in_use:
            await self._release()

    async def _release(self) -> None:
        if self._conn is not None and self.is_leader and not self._conn.is_closed():
            try:
                await wait_for(self._conn.fetchval(UNLOCK, LOCK_KEY), PING_TIMEOUT_S)
                log.info("reconciler.leadership_released", reconciler_id=self.identity)
            except ASYNCPG_CONNECTION_ERRORS as exc:
                log.warning("reconciler.release_failed", error=str(exc))
        await self._drop()
