"""``Idempotency-Key``: one answer per key, however many requests carry it at once.

Requests with one key are serialized on a transaction-level advisory lock, taken both where an
upload first looks for an answer (with its duplicate check) and in its commit transaction: a request
that finds no answer in the commit transaction is the only one writing it; the others wait for its
commit and replay what it answered. A key is replayed for ``IDEMPOTENCY_KEY_RETENTION_S``;
each keyed upload prunes a few expired keys, so the table holds about one retention of keys.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from dataclasses import dataclass
from typing import Any, Final

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from shared.errors import ApiError

# "kbik" as a big-endian int4: the advisory-lock namespace of idempotency keys (presence uses "kbpr").
LOCK_NAMESPACE: Final = int.from_bytes(b"kbik", "big")
# Expired keys each keyed upload deletes: more than the one it adds, so the backlog cannot grow.
PRUNE_BATCH: Final = 10

# Waits until no other transaction holds this key (a hash collision only serializes two keys).
LOCK_KEY: Final = text("SELECT pg_advisory_xact_lock(:namespace, hashtext(CAST(:key_id AS text) || ':' || :key))")

# The stored answer of a key still within its retention.
FIND: Final = text(
    """
    SELECT request_hash, status_code, response FROM idempotency_keys
    WHERE api_key_id = :key_id AND key = :key AND created_at > now() - make_interval(secs => :retention_s)
    """
)

# Stores a key's answer; a row already there is past its retention (FIND saw none under the lock).
SAVE: Final = text(
    """
    INSERT INTO idempotency_keys (api_key_id, key, request_hash, status_code, response)
    VALUES (:key_id, :key, :request_hash, :status_code, CAST(:response AS jsonb))
    ON CONFLICT (api_key_id, key) DO UPDATE SET request_hash = EXCLUDED.request_hash,
        status_code = EXCLUDED.status_code, response = EXCLUDED.response, created_at = now()
    """
)

# Deletes a few keys past the retention, oldest first (ix_idempotency_keys_created_at); rows another
# upload is pruning or overwriting are skipped, never waited for.
PRUNE: Final = text(
    """
    DELETE FROM idempotency_keys WHERE (api_key_id, key) IN (
      SELECT api_key_id, key FROM idempotency_keys
      WHERE created_at <= now() - make_interval(secs => :retention_s)
      ORDER BY created_at LIMIT :batch FOR UPDATE SKIP LOCKED)
    """
)


@dataclass(frozen=True)
class KeyedRequest:
    """A request carrying an ``Idempotency-Key``, and what identifies it (to refuse the key's reuse)."""

    key_id: uuid.UUID
    key: str
    request_hash: str
    retention_s: float


def keyed(key_id: uuid.UUID, key: str | None, request: str, *, retention_s: float) -> KeyedRequest | None:
    """The keyed request ``request`` names (None without a key)."""
    if key is None:
        return None
    return KeyedRequest(key_id, key, hashlib.sha256(request.encode()).hexdigest(), retention_s)


async def answered(conn: AsyncConnection, request: KeyedRequest) -> tuple[int, dict[str, Any]] | None:
    """Hold the key until ``conn``'s transaction ends; its earlier answer, if any (422 when reused)."""
    await lock(conn, request.key_id, request.key)
    return await find(conn, request.key_id, request.key, request.request_hash, retention_s=request.retention_s)


async def save_answer(conn: AsyncConnection, request: KeyedRequest, *, status_code: int, body: dict[str, Any]) -> None:
    """Store this request's answer in ``conn``'s transaction (the key is held)."""
    await save(
        conn,
        request.key_id,
        request.key,
        request.request_hash,
        status_code=status_code,
        body=body,
        retention_s=request.retention_s,
    )


async def lock(conn: AsyncConnection, key_id: uuid.UUID, key: str) -> None:
    """Hold ``key`` until ``conn``'s transaction ends."""
    await conn.execute(LOCK_KEY, {"namespace": LOCK_NAMESPACE, "key_id": str(key_id), "key": key})


async def find(
    conn: AsyncConnection, key_id: uuid.UUID, key: str, request_hash: str, *, retention_s: float
) -> tuple[int, dict[str, Any]] | None:
    """The status and body first answered to ``key``; 422 when it was used for a different upload."""
    params = {"key_id": key_id, "key": key, "retention_s": retention_s}
    row = (await conn.execute(FIND, params)).mappings().one_or_none()
    if row is None:
        return None
    if row["request_hash"] != request_hash:
        raise ApiError(422, "idempotency_key_reused", "this Idempotency-Key was used for a different upload")
    return int(row["status_code"]), dict(row["response"])


async def save(
    conn: AsyncConnection,
    key_id: uuid.UUID,
    key: str,
    request_hash: str,
    *,
    status_code: int,
    body: dict[str, Any],
    retention_s: float,
) -> None:
    """Store the answer to ``key`` in ``conn``'s transaction and prune a few expired keys."""
    await conn.execute(
        SAVE,
        {
            "key_id": key_id,
            "key": key,
            "request_hash": request_hash,
            "status_code": status_code,
            "response": json.dumps(body),
        },
    )
    await conn.execute(PRUNE, {"retention_s": retention_s, "batch": PRUNE_BATCH})
