"""API keys: generated once, stored as SHA-256 hashes, optionally limited to some KBs."""

from __future__ import annotations

import hashlib
import secrets
import uuid
from dataclasses import dataclass
from typing import Final

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

KEY_PREFIX: Final = "kbi_"
BOOTSTRAP_NAME: Final = "bootstrap"

# Whether a key found earlier is still live (an open event stream re-checks its key with it).
KEY_IS_LIVE: Final = text("SELECT 1 FROM api_keys WHERE id = :id AND revoked_at IS NULL")
# Looks up a live key by hash (keys are 256-bit random, so a plain SHA-256 is enough).
FIND_KEY: Final = text(
    "SELECT id, name, knowledge_base_ids FROM api_keys WHERE key_hash = :hash AND revoked_at IS NULL"
)
INSERT_KEY: Final = text(
    """
    INSERT INTO api_keys (id, name, prefix, key_hash, knowledge_base_ids)
    VALUES (:id, :name, :prefix, :hash, :kb_ids)
    ON CONFLICT (key_hash) DO NOTHING
    """
)
TOUCH_KEY: Final = text(
    "UPDATE api_keys SET last_used_at = now() WHERE id = :id "
    "AND (last_used_at IS NULL OR last_used_at < now() - interval '1 minute')"
)


@dataclass(frozen=True)
class KeyRecord:
    id: uuid.UUID
    name: str
    knowledge_base_ids: frozenset[uuid.UUID] | None

    def allows(self, knowledge_base_id: uuid.UUID) -> bool:
        return self.knowledge_base_ids is None or knowledge_base_id in self.knowledge_base_ids


def generate_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def display_prefix(key: str) -> str:
    return key[: len(KEY_PREFIX) + 6]


async def store_key(
    conn: AsyncConnection, key: str, *, name: str, knowledge_base_ids: list[uuid.UUID] | None = None
) -> uuid.UUID | None:
    """Store a key's hash (idempotent for the same key) and return its id; None if that key was revoked."""
    key_id = uuid.uuid4()
    await conn.execute(
        INSERT_KEY,
        {
            "id": key_id,
            "name": name,
            "prefix": display_prefix(key),
            "hash": hash_key(key),
            "kb_ids": knowledge_base_ids,
        },
    )
    found = await find_key(conn, key)
    return found.id if found is not None else None


async def find_key(conn: AsyncConnection, key: str) -> KeyRecord | None:
    row = (await conn.execute(FIND_KEY, {"hash": hash_key(key)})).mappings().one_or_none()
    if row is None:
        return None
    kb_ids = row["knowledge_base_ids"]
    return KeyRecord(
        id=row["id"], name=row["name"], knowledge_base_ids=frozenset(kb_ids) if kb_ids is not None else None
    )


async def key_is_live(conn: AsyncConnection, key_id: uuid.UUID) -> bool:
    return (await conn.execute(KEY_IS_LIVE, {"id": key_id})).first() is not None


async def touch_key(conn: AsyncConnection, key_id: uuid.UUID) -> None:
    await conn.execute(TOUCH_KEY, {"id": key_id})


async def list_keys(conn: AsyncConnection) -> list[dict[str, object]]:
    rows = await conn.execute(
        text(
            "SELECT id, name, prefix, knowledge_base_ids, created_at, last_used_at, revoked_at "
            "FROM api_keys ORDER BY created_at"
        )
    )
    return [dict(r) for r in rows.mappings()]


async def revoke_key(conn: AsyncConnection, key_id_or_prefix: str) -> int:
    """Revoke by id or by the displayed prefix; returns how many keys were revoked."""
    try:
        key_id: uuid.UUID | None = uuid.UUID(key_id_or_prefix)
    except ValueError:
        key_id = None
    result = await conn.execute(
        text("UPDATE api_keys SET revoked_at = now() WHERE revoked_at IS NULL AND (id = :id OR prefix = :prefix)"),
        {"id": key_id, "prefix": key_id_or_prefix},
    )
    return int(result.rowcount)
