"""One LISTEN connection per API process on the document state channel, fanned out to per-KB queues."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Final

import asyncpg
import structlog

from shared.aio import wait_for
from shared.backoff import backoff_s
from shared.db import ASYNCPG_CONNECTION_ERRORS, asyncpg_dsn
from shared.events import STATE_CHANNEL

QUEUE_MAX: Final = 1000
CONNECT_TIMEOUT_S: Final = 5.0
# A silently dead peer is noticed within PING_INTERVAL_S + PING_TIMEOUT_S.
PING_INTERVAL_S: Final = 5.0
PING_TIMEOUT_S: Final = 5.0
RECONNECT_BASE_S: Final = 0.2
RECONNECT_MAX_S: Final = 5.0
CLOSE_TIMEOUT_S: Final = 2.0

log = structlog.get_logger("kbingest.api")


class Resync:
    """Queued to every subscriber after a (re)connect: notifications may have been missed, replay them."""


RESYNC: Final = Resync()


@dataclass(eq=False)
class Subscription:
    """One SSE client: a bounded queue; ``overflowed`` means it fell behind and must be disconnected."""

    knowledge_base_id: str
    queue: asyncio.Queue[dict[str, Any] | Resync] = field(default_factory=lambda: asyncio.Queue(QUEUE_MAX))
    overflowed: bool = False

    def offer(self, item: dict[str, Any] | Resync) -> None:
        if self.overflowed:
            return
        try:
            self.queue.put_nowait(item)
        except asyncio.QueueFull:
            self.overflowed = True


class Broadcaster:
    """Subscribers never hold a connection: a thousand SSE clients cost one LISTEN session."""

    def __init__(self, database_url: str, *, application_name: str = "kbingest.api.listen") -> None:
        self._dsn = asyncpg_dsn(database_url)
        self._server_settings = {"application_name": application_name}
        self._subscribers: dict[str, set[Subscription]] = defaultdict(set)
        self._stop = asyncio.Event()
        self.connected = False
        self.last_error: str | None = None
        self.reconnects = 0
        self._task: asyncio.Task[None] | None = None

    def subscribe(self, knowledge_base_id: str) -> Subscription:
        subscription = Subscription(knowledge_base_id)
        self._subscribers[knowledge_base_id].add(subscription)
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        subscribers = self._subscribers.get(subscription.knowledge_base_id)
        if subscribers is not None:
            subscribers.discard(subscription)
            if not subscribers:
                del self._subscribers[subscription.knowledge_base_id]

    @property
    def subscriber_count(self) -> int:
        return sum(len(s) for s in self._subscribers.values())

    def _notified(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        try:
            notice = json.loads(payload)
            kb_id = str(notice["knowledge_base_id"])
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("events.bad_notification", error=str(exc), payload=payload[:200])
            return
        for subscription in tuple(self._subscribers.get(kb_id, ())):
            subscription.offer(notice)

    async def run(self) -> None:
        """Stay subscribed until ``stop()``, reconnecting with backoff after any connection failure."""
        failures = 0
        while not self._stop.is_set():
            try:
                await self._session()
                failures = 0
            except ASYNCPG_CONNECTION_ERRORS as exc:
                failures += 1
                self.last_error = f"{type(exc).__name__}: {exc}"[:300]
                log.warning("events.listen_lost", error=self.last_error, failures=failures)
            if self._stop.is_set():
                return
            delay = backoff_s(failures, base_s=RECONNECT_BASE_S, max_s=RECONNECT_MAX_S)
            with contextlib.suppress(TimeoutError):
                await wait_for(self._stop.wait(), delay)

    async def _session(self) -> None:
        conn = await asyncpg.connect(self._dsn, timeout=CONNECT_TIMEOUT_S, server_settings=self._server_settings)
        lost = asyncio.Event()
        try:
            conn.add_termination_listener(lambda _c: lost.set())
            await conn.add_listener(STATE_CHANNEL, self._notified)
            self.connected, self.last_error = True, None
            log.info("events.listening", channel=STATE_CHANNEL, reconnects=self.reconnects)
            self.reconnects += 1
            # Whatever committed while nobody listened has no notification left: subscribers replay it.
            for subscriptions in tuple(self._subscribers.values()):
                for subscription in tuple(subscriptions):
                    subscription.offer(RESYNC)
            while not self._stop.is_set():
                with contextlib.suppress(TimeoutError):
                    await wait_for(_first(lost, self._stop), PING_INTERVAL_S)
                if lost.is_set() or conn.is_closed():
                    raise ConnectionResetError("the server closed the LISTEN connection")
                if not self._stop.is_set():
                    await wait_for(conn.execute("SELECT 1"), PING_TIMEOUT_S)
        finally:
            self.connected = False
            await _close(conn)

    def start(self) -> None:
        """Run the LISTEN loop in the background (owned by the API lifespan)."""
        self._task = asyncio.create_task(self.run(), name="events-listen")
        self._task.add_done_callback(_log_if_died)

    async def close(self) -> None:
        self._stop.set()
        if self._task is not None:
            await asyncio.wait([self._task], timeout=CLOSE_TIMEOUT_S + PING_TIMEOUT_S)


def _log_if_died(task: asyncio.Task[None]) -> None:
    """Only a bug ends the loop early (connection failures reconnect); say so loudly."""
    if not task.cancelled() and task.exception() is not None:
        log.critical("events.listen_died", error=repr(task.exception()))


async def _first(*events: asyncio.Event) -> None:
    waiters = [asyncio.ensure_future(e.wait()) for e in events]
    try:
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()


async def _close(conn: Any) -> None:
    """Close politely; a connection to a dead server is terminated instead of waited on."""
    if conn.is_closed():
        return
    try:
        await wait_for(conn.close(), CLOSE_TIMEOUT_S)
    except ASYNCPG_CONNECTION_ERRORS:
        conn.terminate()
