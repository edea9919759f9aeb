"""LISTEN on the outbox channel over one dedicated session that reconnects by itself (a ``KeptSession``)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, Final

import structlog

from services.relay.pool import is_transient
from shared.events import NOTIFY_CHANNEL
from shared.pg_session import KeptSession

# A silently dead peer (host gone, no FIN) is noticed within PING_INTERVAL_S + PING_TIMEOUT_S.
PING_INTERVAL_S: Final = 5.0
PING_TIMEOUT_S: Final = 5.0

log = structlog.get_logger("kbingest.relay")


class Listener:
    """Calls ``on_notify`` for every NOTIFY (and after each reconnect, to catch up on missed ones).

    Only transient failures reconnect (``is_transient``): a database that does not exist is a
    configuration error that ends ``run`` (and with it the relay) instead of being retried forever.
    """

    def __init__(
        self,
        dsn: str,
        *,
        server_settings: dict[str, str],
        on_notify: Callable[[], None],
        channel: str = NOTIFY_CHANNEL,
        ping_interval_s: float = PING_INTERVAL_S,
    ) -> None:
        self._on_notify = on_notify
        self._channel = channel
        self.notifications = 0
        self._session = KeptSession(
            dsn,
            name="relay.listen",
            server_settings=server_settings,
            on_open=self._listen,
            ping_interval_s=ping_interval_s,
            ping_timeout_s=PING_TIMEOUT_S,
            retryable=is_transient,
        )

    @property
    def connected(self) -> bool:
        return self._session.is_open

    @property
    def reconnects(self) -> int:
        """Sessions opened after the first one."""
        return max(0, self._session.opens - 1)

    @property
    def last_error(self) -> str | None:
        return self._session.last_error

    def status(self) -> str:
        """``ok`` or why the LISTEN connection is down (for /readyz)."""
        if self.connected:
            return "ok"
        return f"disconnected: {self.last_error or 'not connected yet'}"

    def _notified(self, _conn: Any, _pid: int, _channel: str, _payload: str) -> None:
        self.notifications += 1
        self._on_notify()

    async def _listen(self, conn: Any) -> None:
        await conn.add_listener(self._channel, self._notified)
        log.info("relay.listening", channel=self._channel, reconnects=self._session.opens)
        # Events committed while we were not listening have no notification left: drain now.
        self._on_notify()

    async def run(self, stop: asyncio.Event) -> None:
        """Stay subscribed until ``stop``; transient failures reconnect with backoff, anything else raises."""
        await self._session.run(stop)
