"""One asyncpg session kept open for a process's life: it reconnects with backoff and pings for a dead peer.

For what needs a session rather than a pooled connection: an advisory lock held for life, LISTEN.
``on_open`` runs on every new session (take the lock, add the listener); raising ``SessionLost``
there asks for a retry, any other error is a bug and ends ``run``. Which connection errors are worth
a retry is ``retryable``'s call (default: any asyncpg connection or server error).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Final

import asyncpg
import structlog

from shared.aio import wait_for
from shared.backoff import backoff_s
from shared.db import ASYNCPG_CONNECTION_ERRORS, CONNECT_TIMEOUT_S

CLOSE_TIMEOUT_S: Final = 2.0

# server_settings for a session whose locks must not outlive its client: the server ends the session of a
# host that vanished without closing its socket after idle + interval x count = 11 s of silence, or after
# 10 s of unacknowledged data, which frees its advisory locks (the operating system's default: two hours).
# Ignored (reads 0) on a Unix-domain socket, where a vanished peer cannot happen.
SESSION_KEEPALIVE: Final[Mapping[str, str]] = MappingProxyType(
    {
        "tcp_keepalives_idle": "5",
        "tcp_keepalives_interval": "2",
        "tcp_keepalives_count": "3",
        "tcp_user_timeout": "10000",
    }
)

log = structlog.get_logger("kbingest.pg_session")


class SessionLost(Exception):
    """The server ended the session, it stopped answering, or ``on_open`` asked for another try."""


OnOpen = Callable[[Any], Awaitable[None]]


def _connection_error(exc: BaseException) -> bool:
    return isinstance(exc, ASYNCPG_CONNECTION_ERRORS)


@dataclass(kw_only=True, eq=False)
class KeptSession:
    """``run()`` keeps a session open until stopped; ``is_open`` is true while one is up and ``on_open`` succeeded."""

    dsn: str = field(kw_only=False, repr=False)  # it carries the password
    name: str
    server_settings: dict[str, str]
    on_open: OnOpen
    ping_interval_s: float
    ping_timeout_s: float = 5.0
    reconnect_base_s: float = 0.2
    reconnect_max_s: float = 5.0
    retryable: Callable[[BaseException], bool] = _connection_error
    opens: int = field(default=0, init=False)
    last_error: str | None = field(default=None, init=False)
    _opened: asyncio.Event = field(default_factory=asyncio.Event, init=False, repr=False)
    _failures: int = field(default=0, init=False, repr=False)

    @property
    def is_open(self) -> bool:
        return self._opened.is_set()

    async def wait_open(self) -> None:
        await self._opened.wait()

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Until ``stop`` is set (or the task is cancelled); a lost session is reopened after a backoff."""
        stop = stop or asyncio.Event()
        while not stop.is_set():
            try:
                await self._session(stop)
            except Exception as exc:
                # Kept for /readyz even when fatal: why the session is down is what an operator asks first.
                self.last_error = f"{type(exc).__name__}: {exc}"[:300]
                if not (isinstance(exc, SessionLost) or self.retryable(exc)):
                    raise
                self._failures += 1
                log.warning("pg_session.lost", session=self.name, error=self.last_error, failures=self._failures)
            delay = backoff_s(self._failures, base_s=self.reconnect_base_s, max_s=self.reconnect_max_s)
            with contextlib.suppress(TimeoutError):
                await wait_for(stop.wait(), delay)

    async def _session(self, stop: asyncio.Event) -> None:
        conn = await asyncpg.connect(self.dsn, timeout=CONNECT_TIMEOUT_S, server_settings=self.server_settings)
        lost = asyncio.Event()
        conn.add_termination_listener(lambda _conn: lost.set())
        try:
            await wait_for(self.on_open(conn), self.ping_timeout_s)
            self._failures, self.last_error = 0, None
            self.opens += 1
            self._opened.set()
            await self._watch(conn, lost, stop)
        finally:
            self._opened.clear()
            await close_session(conn)

    async def _watch(self, conn: Any, lost: asyncio.Event, stop: asyncio.Event) -> None:
        """Return on ``stop``; raise ``SessionLost`` as soon as the socket closes, or when a ping fails."""
        while not stop.is_set():
            waiters = {asyncio.ensure_future(lost.wait()), asyncio.ensure_future(stop.wait())}
            try:
                await asyncio.wait(waiters, timeout=self.ping_interval_s, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for waiter in waiters:
                    waiter.cancel()
            if lost.is_set() or conn.is_closed():
                raise SessionLost("the server closed the session")
            if not stop.is_set():
                await wait_for(conn.execute("SELECT 1"), self.ping_timeout_s)


async def close_session(conn: Any) -> None:
    """Close politely (the server frees the session's locks); a connection to a dead server is terminated."""
    if conn.is_closed():
        return
    try:
        await wait_for(conn.close(), CLOSE_TIMEOUT_S)
    except ASYNCPG_CONNECTION_ERRORS:
        conn.terminate()
    except asyncio.CancelledError:
        conn.terminate()
        raise
