"""``kbingest keys``: create, list, revoke (talks to Postgres directly)."""

from __future__ import annotations

import uuid

from shared.apikeys import generate_key, list_keys, revoke_key, store_key
from shared.db import Database, worker_database
from shared.settings import Settings


def _db(settings: Settings) -> Database:
    return worker_database(settings.database_url, service="cli", max_connections=1, acquire_timeout_s=10)


async def create(settings: Settings, *, name: str, kb_ids: list[uuid.UUID] | None) -> str:
    db = _db(settings)
    key = generate_key()
    try:
        async with db.transaction() as conn:
            await store_key(conn, key, name=name, knowledge_base_ids=kb_ids or None)
    finally:
        await db.dispose()
    return key


async def list_lines(settings: Settings) -> list[str]:
    db = _db(settings)
    try:
        async with db.transaction() as conn:
            rows = await list_keys(conn)
    finally:
        await db.dispose()
    lines = []
    for r in rows:
        scope = ",".join(str(k) for k in r["knowledge_base_ids"]) if r["knowledge_base_ids"] else "all"  # type: ignore[attr-defined]
        state = "revoked" if r["revoked_at"] else "active"
        lines.append(f"{r['id']}  {r['prefix']}…  {r['name']}  scope={scope}  {state}  last_used={r['last_used_at']}")
    return lines


async def revoke(settings: Settings, key_id: str) -> int:
    db = _db(settings)
    try:
        async with db.transaction() as conn:
            return await revoke_key(conn, key_id)
    finally:
        await db.dispose()
