"""Dead letters: list them, replay one. Used by the API and the CLI (never by importing the relay)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import text
from sqlalchemy.engine import RowMapping
from sqlalchemy.ext.asyncio import AsyncConnection

from shared.events import NOTIFY_CHANNEL

DeadReason = Literal["max_attempts", "rejected", "unroutable"]
ReplayResult = Literal["replayed", "not_found", "not_dead"]

# Dead events after a cursor (seq), oldest first; ix_outbox_dead narrows the scan to dead rows.
LIST_DEAD: Final = text(
    """
    SELECT seq, id, type, payload ->> 'subject' AS subject, aggregate_id, attempts, dead_at, dead_reason,
           last_error, errors
    FROM outbox
    WHERE dead_at IS NOT NULL AND seq > :after
      AND (CAST(:reason AS text) IS NULL OR dead_reason = :reason)
    ORDER BY seq
    LIMIT :limit
    """
)

# Makes a dead event due again with a fresh attempt budget; its error history is kept.
REPLAY: Final = text(
    """
    UPDATE outbox SET dead_at = NULL, dead_reason = NULL, attempts = 0, available_at = now(), claimed_by = NULL
    WHERE id = :id AND dead_at IS NOT NULL
    RETURNING seq, type
    """
)

# The subscribers of a multi-route event that gave up get a fresh budget too; delivered ones stay delivered.
REPLAY_DELIVERIES: Final = text(
    """
    UPDATE outbox_deliveries SET dead_at = NULL, dead_reason = NULL, attempts = 0, available_at = now()
    WHERE event_seq = :seq AND dead_at IS NOT NULL
    """
)

EVENT_STATE: Final = text("SELECT delivered_at IS NOT NULL AS delivered FROM outbox WHERE id = :id")
NOTIFY: Final = text(f"SELECT pg_notify('{NOTIFY_CHANNEL}', :type)")

# Pending (undelivered, not dead) and dead counts; both scans use the outbox's partial indexes.
OUTBOX_HEALTH: Final = text(
    """
    SELECT
      (SELECT count(*) FROM outbox WHERE delivered_at IS NULL AND dead_at IS NULL) AS pending,
      (SELECT extract(epoch FROM now() - min(created_at)) FROM outbox
        WHERE delivered_at IS NULL AND dead_at IS NULL) AS oldest_pending_age_s,
      (SELECT count(*) FROM outbox WHERE dead_at IS NOT NULL) AS dead,
      (SELECT count(*) FROM outbox WHERE dead_at IS NOT NULL AND dead_reason = 'unroutable') AS unroutable
    """
)


class DeadLetter(BaseModel):
    """One dead event as the API (``GET /v1/outbox/dead`` items) and the CLI show it."""

    model_config = ConfigDict(frozen=True)

    # The page cursor, not part of the item's JSON.
    seq: int = Field(exclude=True)
    id: uuid.UUID
    type: str
    subject: str
    attempts: int
    dead_at: datetime
    dead_reason: DeadReason | None
    last_error: str | None
    errors: list[dict[str, Any]]

    @classmethod
    def from_row(cls, row: RowMapping) -> DeadLetter:
        """A ``LIST_DEAD`` row: each column fills the field of its name; no subject shows the aggregate id."""
        return cls.model_validate(
            {**row, "subject": row["subject"] or str(row["aggregate_id"]), "errors": list(row["errors"] or [])}
        )


@dataclass(frozen=True)
class OutboxHealth:
    pending: int
    oldest_pending_age_s: float
    dead: int
    unroutable: int


async def list_dead(
    conn: AsyncConnection, *, limit: int = 50, after_seq: int = 0, reason: DeadReason | None = None
) -> list[DeadLetter]:
    """Up to ``limit`` dead events with ``seq > after_seq``, oldest first."""
    rows = await conn.execute(LIST_DEAD, {"after": after_seq, "limit": limit, "reason": reason})
    return [DeadLetter.from_row(row) for row in rows.mappings()]


async def replay(conn: AsyncConnection, event_id: uuid.UUID) -> ReplayResult:
    """Make a dead event deliverable again and wake the relays; says why when it cannot."""
    row = (await conn.execute(REPLAY, {"id": event_id})).mappings().first()
    if row is None:
        exists = (await conn.execute(EVENT_STATE, {"id": event_id})).first()
        return "not_found" if exists is None else "not_dead"
    await conn.execute(REPLAY_DELIVERIES, {"seq": row["seq"]})
    await conn.execute(NOTIFY, {"type": row["type"]})
    return "replayed"
