"""``kbingest keys``: create, list, revoke (talks to Postgres directly)."""

from __future__ import annotations

import uuid

from services.cli.db import one_transaction
from shared.apikeys import generate_key, list_keys, revoke_key, store_key
from shared.settings import Settings


async def create(settings: Settings, *, name: str, kb_ids: list[uuid.UUID] | None) -> str:
    key = generate_key()
    async with one_transaction(settings) as conn:
        await store_key(conn, key, name=name, knowledge_base_ids=kb_ids or None)
    return key


async def list_lines(settings: Settings) -> list[str]:
    async with one_transaction(settings) as conn:
        rows = await list_keys(conn)
    lines = []
    for r in rows:
        scope = ",".join(str(k) for k in r["knowledge_base_ids"]) if r["knowledge_base_ids"] else "all"  # type: ignore[attr-defined]
        state = "revoked" if r["revoked_at"] else "active"
        lines.append(f"{r['id']}  {r['prefix']}…  {r['name']}  scope={scope}  {state}  last_used={r['last_used_at']}")
    return lines


async def revoke(settings: Settings, key_id: str) -> int:
    async with one_transaction(settings) as conn:
        return await revoke_key(conn, key_id)
