"""The single writer of outbox rows: always inside the caller's transaction, with NOTIFY."""

from __future__ import annotations

import json
import uuid
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from shared.events import NOTIFY_CHANNEL, EventType, envelope

# Inserts one event; NOTIFY is delivered at commit, so the relay never sees uncommitted rows.
INSERT_EVENT = text(
    """
    INSERT INTO outbox (id, type, aggregate_type, aggregate_id, payload, available_at)
    VALUES (:id, :type, :aggregate_type, :aggregate_id, CAST(:payload AS jsonb),
            now() + make_interval(secs => :delay_s))
    """
)
NOTIFY = text(f"SELECT pg_notify('{NOTIFY_CHANNEL}', :type)")

# Events of one aggregate held back only by their own delay (never attempted, not claimed).
RELEASE_HELD = text(
    """
    UPDATE outbox SET available_at = now()
    WHERE aggregate_id = :aggregate_id AND delivered_at IS NULL AND dead_at IS NULL
      AND claimed_by IS NULL AND attempts = 0 AND available_at > now()
    """
)


async def add_event(
    conn: AsyncConnection,
    *,
    event_type: EventType,
    aggregate_id: uuid.UUID,
    data: dict[str, Any],
    source: str,
    aggregate_type: str = "document",
    delay_s: float = 0.0,
) -> dict[str, Any]:
    """Write one CloudEvents envelope to the outbox in ``conn``'s transaction and return it.

    ``delay_s`` holds delivery back (a retry is delivered when the document is due again).
    """
    event_id = uuid.uuid4()
    body = envelope(event_id=event_id, event_type=event_type, source=source, subject=aggregate_id, data=data)
    await conn.execute(
        INSERT_EVENT,
        {
            "id": event_id,
            "type": event_type,
            "aggregate_type": aggregate_type,
            "aggregate_id": aggregate_id,
            "payload": json.dumps(body),
            "delay_s": delay_s,
        },
    )
    await conn.execute(NOTIFY, {"type": event_type})
    return body


async def release_held(conn: AsyncConnection, aggregate_id: uuid.UUID) -> int:
    """Make an aggregate's delayed events due now, in ``conn``'s transaction; returns how many.

    Delivery is ordered per aggregate, so a delayed event (a retry due in minutes) holds back
    every later event of the same document. A deletion must not wait for it: the delayed event
    is delivered at once (its handler finds the document deleting and does nothing), then the
    deletion.
    """
    result = await conn.execute(RELEASE_HELD, {"aggregate_id": aggregate_id})
    return int(result.rowcount or 0)
