"""One LISTEN connection per API process on the document state channel, fanned out to per-KB queues."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Final

import structlog
from pydantic import ValidationError

from shared import state_notices
from shared.db import asyncpg_dsn
from shared.events import STATE_CHANNEL
from shared.pg_session import CLOSE_TIMEOUT_S, KeptSession
from shared.state_notices import Notice

QUEUE_MAX: Final = 1000
# A silently dead peer is noticed within PING_INTERVAL_S + PING_TIMEOUT_S.
PING_INTERVAL_S: Final = 5.0
PING_TIMEOUT_S: Final = 5.0

log = structlog.get_logger("kbingest.api")


class Resync:
    """Queued to every subscriber after a (re)connect: notifications may have been missed, replay them."""


RESYNC: Final = Resync()


@dataclass(eq=False)
class Subscription:
    """One SSE client: a bounded queue; ``overflowed`` means it fell behind and must be disconnected."""

    knowledge_base_id: str
    queue: asyncio.Queue[Notice | Resync] = field(default_factory=lambda: asyncio.Queue(QUEUE_MAX))
    overflowed: bool = False

    def offer(self, item: Notice | Resync) -> None:
        if self.overflowed:
            return
        try:
            self.queue.put_nowait(item)
        except asyncio.QueueFull:
            self.overflowed = True


class Broadcaster:
    """Subscribers never hold a connection: a thousand SSE clients cost one LISTEN session.

    The session is a ``KeptSession`` (shared/pg_session.py): it reconnects with backoff and pings
    for a dead peer; every (re)open adds the listener and tells subscribers to replay.
    """

    def __init__(self, database_url: str, *, application_name: str = "kbingest.api.listen") -> None:
        self._subscribers: dict[str, set[Subscription]] = defaultdict(set)
        self._stop = asyncio.Event()
        self._session = KeptSession(
            asyncpg_dsn(database_url),
            name="api.listen",
            server_settings={"application_name": application_name},
            on_open=self._listen,
            ping_interval_s=PING_INTERVAL_S,
            ping_timeout_s=PING_TIMEOUT_S,
        )
        self._task: asyncio.Task[None] | None = None

    @property
    def connected(self) -> bool:
        return self._session.is_open

    @property
    def last_error(self) -> str | None:
        return self._session.last_error

    @property
    def reconnects(self) -> int:
        """Sessions opened so far (the first one included)."""
        return self._session.opens

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
            notice = state_notices.parse(payload)
        except ValidationError as exc:
            log.warning("events.bad_notification", error=str(exc), payload=payload[:200])
            return
        for subscription in tuple(self._subscribers.get(notice.knowledge_base_id, ())):
            subscription.offer(notice)

    async def _listen(self, conn: Any) -> None:
        await conn.add_listener(STATE_CHANNEL, self._notified)
        log.info("events.listening", channel=STATE_CHANNEL, reconnects=self._session.opens)
        # Whatever committed while nobody listened has no notification left: subscribers replay it.
        for subscriptions in tuple(self._subscribers.values()):
            for subscription in tuple(subscriptions):
                subscription.offer(RESYNC)

    async def run(self) -> None:
        """Stay subscribed until ``close()``, reconnecting with backoff after any connection failure."""
        await self._session.run(self._stop)

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
