"""How an upload and the deletion of its knowledge base exclude each other.

A document's foreign key takes only ``FOR KEY SHARE`` on its KB, which the deletion's ``UPDATE`` of
``deleted_at`` does not conflict with: an upload could commit into a KB whose deletion had already
listed its documents, and its document was then never purged. So the upload's commit locks a *live*
KB ``FOR KEY SHARE`` (several uploads still run side by side, and the dispatcher's updates of
``last_dispatched_at`` pass), and the deletion locks it ``FOR UPDATE``, which conflicts with it:

- the upload locked first: the deletion waits for its commit, then lists its document with the rest;
- the deletion locked first: the upload waits, re-reads the row, finds it deleted and answers 404.
"""

from __future__ import annotations

import uuid
from typing import Final

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

# Locks a live KB against deletion until the upload's transaction ends; also returns the
# transaction's id, by which an ambiguous COMMIT of this transaction is resolved later.
LOCK_FOR_UPLOAD: Final = text(
    "SELECT pg_current_xact_id()::text AS xid FROM knowledge_bases WHERE id = :id AND deleted_at IS NULL FOR KEY SHARE"
)

# Locks a live KB for its deletion: waits for every upload committing into it.
LOCK_FOR_DELETE: Final = text("SELECT id FROM knowledge_bases WHERE id = :id AND deleted_at IS NULL FOR UPDATE")


async def lock_for_upload(conn: AsyncConnection, kb_id: uuid.UUID) -> int | None:
    """The id of ``conn``'s transaction once the live KB is locked; None when the KB is gone."""
    xid = (await conn.execute(LOCK_FOR_UPLOAD, {"id": kb_id})).scalar_one_or_none()
    return None if xid is None else int(xid)


async def lock_for_delete(conn: AsyncConnection, kb_id: uuid.UUID) -> bool:
    """True once the live KB is locked for its deletion; False when it is gone."""
    return (await conn.execute(LOCK_FOR_DELETE, {"id": kb_id})).first() is not None
