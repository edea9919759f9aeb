"""LISTEN on the outbox channel over one dedicated connection that reconnects by itself."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Callable
from typing import Any, Final

import asyncpg
import structlog

from services.relay.pool import CONNECT_TIMEOUT_S, is_transient
from shared.aio import wait_for
from shared.db import ASYNCPG_CONNECTION_ERRORS
from shared.events import NOTIFY_CHANNEL

# A silently dead peer (host gone, no FIN) is noticed within PING_INTERVAL_S + PING_TIMEOUT_S.
PING_INTERVAL_S: Final = 5.0
PING_TIMEOUT_S: Final = 5.0
RECONNECT_BASE_S: Final = 0.2
RECONNECT_MAX_S: Final = 5.0
CLOSE_TIMEOUT_S: Final = 2.0

log = structlog.get_logger("kbingest.relay")


class ConnectionLost(Exception):
    """The LISTEN connection was closed by the server or stopped answering pings."""


class Listener:
    """Calls ``on_notify`` for every NOTIFY (and after each reconnect, to catch up on missed ones)."""

    def __init__(
        self,
        dsn: str,
        *,
        server_settings: dict[str, str],
        on_notify: Callable[[], None],
        channel: str = NOTIFY_CHANNEL,
        ping_interval_s: float = PING_INTERVAL_S,
    ) -> None:
        self._dsn = dsn
        self._server_settings = server_settings
        self._on_notify = on_notify
        self._channel = channel
        self._ping_interval_s = ping_interval_s
        self.connected = False
        self.connected_since: float | None = None
        self.last_error: str | None = None
        self.reconnects = 0
        self.notifications = 0

    def status(self) -> str:
        """``ok`` or why the LISTEN connection is down (for /readyz)."""
        if self.connected:
            return "ok"
        return f"disconnected: {self.last_error or 'not connected yet'}"

    def _notified(self, _conn: Any, _pid: int, _channel: str, _payload: str) -> None:
        self.notifications += 1
        self._on_notify()

    async def run(self, stop: asyncio.Event) -> None:
        """Stay subscribed until ``stop``; transient failures reconnect with backoff, anything else raises."""
        failures = 0
        while not stop.is_set():
            try:
                await self._session(stop)
                failures = 0
            except Exception as exc:
                if not (is_transient(exc) or isinstance(exc, ConnectionLost)):
                    self.last_error = f"{type(exc).__name__}: {exc}"
                    raise
                failures += 1
                self.last_error = f"{type(exc).__name__}: {exc}"[:300]
                log.warning("relay.listen_lost", error=self.last_error, failures=failures)
            if stop.is_set():
                return
            delay = min(RECONNECT_MAX_S, RECONNECT_BASE_S * 2 ** max(0, failures - 1)) * random.uniform(0.5, 1.0)
            with contextlib.suppress(TimeoutError):
                await wait_for(stop.wait(), delay)

    async def _session(self, stop: asyncio.Event) -> None:
        conn = await asyncpg.connect(self._dsn, timeout=CONNECT_TIMEOUT_S, server_settings=self._server_settings)
        lost = asyncio.Event()
        try:
            conn.add_termination_listener(lambda _c: lost.set())
            await conn.add_listener(self._channel, self._notified)
            if self.connected_since is not None:
                self.reconnects += 1
            self.connected, self.connected_since, self.last_error = True, time.monotonic(), None
            log.info("relay.listening", channel=self._channel, reconnects=self.reconnects)
            # Events committed while we were not listening have no notification left: drain now.
            self._on_notify()
            await self._watch(conn, lost, stop)
        finally:
            self.connected = False
            await _close(conn)

    async def _watch(self, conn: Any, lost: asyncio.Event, stop: asyncio.Event) -> None:
        while not stop.is_set():
            waiters = {asyncio.ensure_future(lost.wait()), asyncio.ensure_future(stop.wait())}
            try:
                await asyncio.wait(waiters, timeout=self._ping_interval_s, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for waiter in waiters:
                    waiter.cancel()
            if lost.is_set() or conn.is_closed():
                raise ConnectionLost("the server closed the LISTEN connection")
            if stop.is_set():
                return
            await wait_for(conn.execute("SELECT 1"), PING_TIMEOUT_S)


async def _close(conn: Any) -> None:
    """Close politely; a connection to a dead server is terminated instead of waited on."""
    if conn.is_closed():
        return
    try:
        await wait_for(conn.close(), CLOSE_TIMEOUT_S)
    except ASYNCPG_CONNECTION_ERRORS:
        conn.terminate()
