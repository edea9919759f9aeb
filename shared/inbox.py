"""The processor's inbox: each delivered event id recorded once, in the transaction of its effect.

Delivery is at least once (docs/events.md, "Deduplicate"): a redelivery finds its id and does nothing.
"""

from __future__ import annotations

import uuid
from typing import Final

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

# New event ids insert a row; a redelivery hits the primary key and inserts nothing.
RECORD_ONCE: Final = text(
    """
    INSERT INTO processor_inbox (event_id, event_type, document_id)
    VALUES (:event_id, :event_type, :document_id)
    ON CONFLICT (event_id) DO NOTHING
    RETURNING event_id
    """
)


async def record_once(
    conn: AsyncConnection, event_id: uuid.UUID | str, event_type: str, document_id: uuid.UUID | str | None
) -> bool:
    """Record ``event_id`` in ``processor_inbox``; True when it was new (do the work), False on a duplicate."""
    result = await conn.execute(
        RECORD_ONCE,
        {
            "event_id": uuid.UUID(str(event_id)),
            "event_type": event_type,
            "document_id": uuid.UUID(str(document_id)) if document_id is not None else None,
        },
    )
    return result.first() is not None
