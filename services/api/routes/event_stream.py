"""Server-Sent Events: every status/stage change of a knowledge base's documents, resumable by Last-Event-ID."""

from __future__ import annotations

import json
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator
from dataclasses import KW_ONLY, dataclass, field
from typing import Annotated, Final

import structlog
from fastapi import APIRouter, Header
from sqlalchemy import text
from sse_starlette import EventSourceResponse, ServerSentEvent

from services.api import queries
from services.api.broadcast import Broadcaster, Resync
from services.api.deps import CurrentKey, StateDep, require_kb_access
from services.api.routes.responses import error_responses
from services.api.streams import HeldEventSourceResponse
from shared import state_notices
from shared.aio import wait_for
from shared.apikeys import key_is_live
from shared.db import Database, DatabaseUnavailable
from shared.state_notices import DocumentNotice, KnowledgeBaseNotice

log = structlog.get_logger("kbingest.api")

router = APIRouter(tags=["events"])

# Comment lines keep proxies from closing an idle stream; module-level so tests can shorten them.
HEARTBEAT_S: float = 15.0
# A client that cannot take a frame within this long is dropped (the queue bound covers memory).
SEND_TIMEOUT_S: Final = 30.0
REPLAY_PAGE: Final = 500
# Further behind than this and the client is told to refetch state instead (event ``reset``).
REPLAY_MAX: Final = 10_000
# Event ids already sent, to drop a live duplicate of a replayed event.
SENT_REMEMBERED: Final = 20_000

SEQ_OF: Final = text("SELECT seq FROM outbox WHERE id = :id")
MAX_SEQ: Final = text("SELECT coalesce(max(seq), 0) FROM outbox")
# Document events of one KB after a cursor, in outbox order (the order transitions committed per document).
REPLAY: Final = text(
    """
    SELECT seq, payload FROM outbox
    WHERE seq > :after AND aggregate_type = 'document' AND payload -> 'data' ->> 'knowledge_base_id' = :kb
    ORDER BY seq LIMIT :limit
    """
)


def _event(notice: DocumentNotice) -> ServerSentEvent:
    return ServerSentEvent(data=state_notices.to_json(notice), event="document", id=notice.event_id)


@dataclass
class Cursor:
    """Where a client is: the last event id sent, and its outbox seq when known."""

    event_id: str | None
    seq: int | None


@dataclass
class Stream:
    """One client's stream: replay from the cursor, then live notices, deduplicated, in order per document."""

    db: Database
    broadcaster: Broadcaster
    kb_id: str
    _: KW_ONLY
    key_id: uuid.UUID
    key_recheck_s: float
    _sent: OrderedDict[str, None] = field(default_factory=OrderedDict, init=False, repr=False)

    def _remember(self, event_id: str) -> bool:
        """False when this event was already sent."""
        if event_id in self._sent:
            return False
        self._sent[event_id] = None
        if len(self._sent) > SENT_REMEMBERED:
            self._sent.popitem(last=False)
        return True

    async def _seq_of(self, event_id: str) -> int | None:
        async with self.db.transaction() as conn:
            seq = (await conn.execute(SEQ_OF, {"id": uuid.UUID(event_id)})).scalar_one_or_none()
        return int(seq) if seq is not None else None

    async def _key_revoked(self) -> str | None:
        """Why the stream must end now that its key is checked again, or None while the key is live."""
        try:
            async with self.db.transaction() as conn:
                live = await key_is_live(conn, self.key_id)
        except DatabaseUnavailable as exc:
            # Unverifiable counts as revoked; the client resumes from Last-Event-ID once it can auth again.
            log.warning("events.key_check_failed", key_id=str(self.key_id), error=str(exc))
            return "key_unverifiable"
        return None if live else "key_revoked"

    async def _max_seq(self) -> int:
        async with self.db.transaction() as conn:
            return int((await conn.execute(MAX_SEQ)).scalar_one())

    async def _replay(self, cursor: Cursor) -> AsyncIterator[ServerSentEvent]:
        after = cursor.seq if cursor.seq is not None else await self._seq_of(cursor.event_id or "")
        if after is None:
            yield _reset("unknown_last_event_id", cursor.event_id)
            cursor.seq = await self._max_seq()
            return
        replayed = 0
        while True:
            async with self.db.transaction() as conn:
                rows = (await conn.execute(REPLAY, {"after": after, "kb": self.kb_id, "limit": REPLAY_PAGE})).all()
            for seq, payload in rows:
                after = cursor.seq = int(seq)
                notice = DocumentNotice.from_envelope(payload)
                if self._remember(notice.event_id):
                    cursor.event_id = notice.event_id
                    yield _event(notice)
            replayed += len(rows)
            if len(rows) < REPLAY_PAGE:
                return
            if replayed >= REPLAY_MAX:
                yield _reset("too_far_behind", cursor.event_id)
                cursor.seq = await self._max_seq()
                return

    async def events(self, last_event_id: str | None) -> AsyncIterator[ServerSentEvent]:
        """The whole stream; subscribing before reading the cursor means nothing falls in between."""
        subscription = self.broadcaster.subscribe(self.kb_id)
        try:
            if last_event_id:
                cursor = Cursor(last_event_id, None)
                async for event in self._replay(cursor):
                    yield event
            else:
                cursor = Cursor(None, await self._max_seq())
            next_check = time.monotonic() + self.key_recheck_s
            while True:
                if time.monotonic() >= next_check:
                    reason = await self._key_revoked()
                    if reason is not None:
                        yield _closed(reason)
                        return
                    next_check = time.monotonic() + self.key_recheck_s
                if subscription.overflowed:
                    yield ServerSentEvent(
                        event="overflow",
                        data=json.dumps(
                            {
                                "reason": "slow_consumer",
                                "message": "the client fell behind; reconnect with Last-Event-ID to resume",
                                "last_event_id": cursor.event_id,
                            }
                        ),
                    )
                    return
                try:
                    item = await wait_for(subscription.queue.get(), next_check - time.monotonic())
                except TimeoutError:
                    continue
                if isinstance(item, Resync):
                    async for event in self._replay(cursor):
                        yield event
                    continue
                if isinstance(item, KnowledgeBaseNotice):
                    # Index progress and switches (shared/generations.py): live only, no id (not resumable).
                    yield ServerSentEvent(data=state_notices.to_json(item), event="knowledge_base")
                    continue
                if self._remember(item.event_id):
                    cursor.event_id, cursor.seq = item.event_id, None
                    yield _event(item)
        finally:
            self.broadcaster.unsubscribe(subscription)


def _reset(reason: str, last_event_id: str | None) -> ServerSentEvent:
    message = "events since Last-Event-ID are no longer available; refetch the documents, then keep listening"
    body = {"reason": reason, "message": message, "last_event_id": last_event_id}
    return ServerSentEvent(event="reset", data=json.dumps(body))


def _closed(reason: str) -> ServerSentEvent:
    message = "the API key of this stream is revoked" if reason == "key_revoked" else "the API key could not be checked"
    return ServerSentEvent(event="closed", data=json.dumps({"reason": reason, "message": message}))


def _valid_event_id(value: str | None) -> str | None:
    if not value:
        return None
    try:
        return str(uuid.UUID(value.strip()))
    except ValueError:
        return "00000000-0000-0000-0000-000000000000"


@router.get(
    "/v1/knowledge-bases/{kb_id}/events",
    response_class=EventSourceResponse,
    responses={200: {"content": {"text/event-stream": {}}}, **error_responses(429)},
)
async def kb_events(
    kb_id: uuid.UUID,
    key: CurrentKey,
    state: StateDep,
    last_event_id: Annotated[str | None, Header(max_length=100)] = None,
) -> EventSourceResponse:
    """``event: document`` per status/stage change; ``id`` is the outbox event id (see docs/operations.md).

    ``event: knowledge_base`` (no id) when a re-index makes progress or switches, with the KB's ``index``.

    At most SSE_MAX_STREAMS_PER_KEY streams per key (429 ``too_many_streams``); a stream whose key is
    revoked ends with ``event: closed`` within SSE_KEY_RECHECK_S.
    """
    require_kb_access(key, kb_id)
    async with state.db.transaction() as conn:
        await queries.live_kb(conn, kb_id)
    release = state.streams.acquire(key.id)
    stream = Stream(
        state.db, state.broadcaster, str(kb_id), key_id=key.id, key_recheck_s=state.settings.sse_key_recheck_s
    )
    return HeldEventSourceResponse(
        stream.events(_valid_event_id(last_event_id)),
        release=release,
        ping_s=HEARTBEAT_S,
        send_timeout_s=SEND_TIMEOUT_S,
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
