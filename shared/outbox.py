"""The single writer of outbox rows: always inside the caller's transaction, with NOTIFY."""

from __future__ import annotations

import json
import uuid
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from shared.events import NOTIFY_CHANNEL, envelope

# Inserts one event; NOTIFY is delivered at commit, so the relay never sees uncommitted rows.
INSERT_EVENT = text(
    """
    INSERT INTO outbox (id, type, aggregate_type, aggregate_id, payload, available_at)
    VALUES (:id, :type, :aggregate_type, :aggregate_id, CAST(:payload AS jsonb),
            now() + make_interval(secs => :delay_s))
    """
)
NOTIFY = text(f"SELECT pg_notify('{NOTIFY_CHANNEL}', :type)")


async def add_event(
    conn: AsyncConnection,
    *,
    event_type: str,
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
