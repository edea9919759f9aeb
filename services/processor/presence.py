"""The processor's presence lock (shared.presence), held on a session of its own for the process's whole life.

Taken before the processor is ready, so it never claims without it; re-taken after a lost session.
Closing the session at shutdown releases it.
"""

from __future__ import annotations

from typing import Any, Final

import structlog

from shared import presence
from shared.aio import wait_for
from shared.db import asyncpg_dsn
from shared.pg_session import SESSION_KEEPALIVE, KeptSession, SessionLost

# A closed socket is noticed at once (termination listener); the ping catches a peer that vanished silently.
PING_INTERVAL_S: Final = 1.0
# A lost session frees the lock: re-take it before the reconciler's two checks (~0.5 s apart) both miss it.
RECONNECT_BASE_S: Final = 0.05
RECONNECT_MAX_S: Final = 1.0
APPLICATION_NAME: Final = "kbingest.processor.presence"
# Start-up waits this long for the lock before reporting why it is missing (well within its check deadline).
START_WAIT_S: Final = 5.0

log = structlog.get_logger("kbingest.processor")


class PresenceTaken(Exception):
    """Another live session holds this processor's lock at start-up: two ids share a hashtext value."""


class PresenceUnavailable(Exception):
    """The presence lock is not held (yet): the processor must not claim work."""


class Presence:
    """Holds ``pg_advisory_lock(NAMESPACE, hashtext(processor_id))`` while the processor lives."""

    def __init__(self, database_url: str, processor_id: str) -> None:
        self.processor_id = processor_id
        self._session = KeptSession(
            asyncpg_dsn(database_url),
            name="processor.presence",
            server_settings={"application_name": APPLICATION_NAME, **SESSION_KEEPALIVE},
            on_open=self._lock,
            ping_interval_s=PING_INTERVAL_S,
            reconnect_base_s=RECONNECT_BASE_S,
            reconnect_max_s=RECONNECT_MAX_S,
        )

    @property
    def held(self) -> bool:
        return self._session.is_open

    async def run(self) -> None:
        """Hold the lock until cancelled (a supervised side task); only a bug or ``PresenceTaken`` ends it."""
        await self._session.run()

    async def ensure_held(self, timeout_s: float = START_WAIT_S) -> None:
        """Wait for the lock; ``PresenceUnavailable`` says why it is not held."""
        try:
            await wait_for(self._session.wait_open(), timeout_s)
        except TimeoutError:
            raise PresenceUnavailable(
                f"presence lock not held: {self._session.last_error or 'not connected yet'}"
            ) from None

    async def _lock(self, conn: Any) -> None:
        if await conn.fetchval(presence.TRY_LOCK, presence.NAMESPACE, self.processor_id):
            log.info("processor.presence_acquired", processor_id=self.processor_id, sessions=self._session.opens + 1)
            return
        if self._session.opens == 0:
            raise PresenceTaken(
                f"another session holds the presence lock of {self.processor_id!r} (hashtext collision); "
                "restart the processor to get a new id"
            )
        # Our previous session may live on in the server until its socket is found dead; then the lock frees.
        raise SessionLost("the previous session still holds the presence lock")
