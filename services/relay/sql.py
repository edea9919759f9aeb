"""The relay's named SQL (asyncpg, ``$n`` parameters) and the thin functions that run it."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any, Final, Literal, NamedTuple

import asyncpg

from shared.deadletters import OUTBOX_HEALTH, OutboxHealth

Action = Literal["delivered", "retry", "dead", "release"]

# Leases up to $2 due events, oldest first, and only the head of each aggregate: an event is
# skipped while an earlier undelivered, non-dead event of its aggregate exists (that one may be
# leased by another relay: it is still undelivered, so the rule holds across replicas).
# SKIP LOCKED lets replicas claim disjoint rows at once; the lease (claimed_by, and leased_until
# $3 s ahead) hides claimed rows from every later claim until settled, released or expired.
# The claim writes no column that an index or index predicate mentions (available_at stays): with
# the outbox's fillfactor 50 it is a HOT update, adding no index entries (it used to add five: a
# third of Postgres' cost per event). Leased rows stay in ix_outbox_pending and are filtered out on
# the heap: at most the relay's in-flight window (2 × RELAY_CLAIM_BATCH) per claim.
# The claim spends an attempt (attempts + 1), so a relay that dies mid-delivery has used one and an
# event that kills every relay still reaches its dead letter; outcomes that are no attempt (429,
# release) write the count back. RETURNING gives the count from before this claim.
# The head test is a scalar min() so it stays a per-row probe of ix_outbox_pending_aggregate
# (as NOT EXISTS, a table without statistics yet was planned as an anti-join scanning the whole
# index per row). It says <= where = is meant (o is pending, so min <= o.seq): the planner then
# guesses a third of the rows match, not 0.5 %, and keeps the ordered index scan that stops at
# LIMIT instead of a seq scan + sort of the whole backlog. The UPDATE takes the leased rows by
# primary key (= ANY(ARRAY(…))): joined to the CTE, small tables got a seq scan of the outbox.
# tests/integration/relay/test_relay_resilience.py guards both plans with EXPLAIN.
CLAIM: Final = """
WITH due AS (
    SELECT o.seq
    FROM outbox AS o
    WHERE o.delivered_at IS NULL AND o.dead_at IS NULL AND o.available_at <= now()
      AND (o.claimed_by IS NULL OR o.leased_until <= now())
      AND o.seq <= (
          SELECT min(e.seq) FROM outbox AS e
          WHERE e.aggregate_id = o.aggregate_id AND e.delivered_at IS NULL AND e.dead_at IS NULL
      )
    ORDER BY o.available_at, o.seq
    LIMIT $2
    FOR UPDATE OF o SKIP LOCKED
)
UPDATE outbox AS o
SET leased_until = now() + make_interval(secs => $3::float8), claimed_by = $1, attempts = o.attempts + 1
WHERE o.seq = ANY(ARRAY(SELECT seq FROM due))
RETURNING o.seq, o.id, o.type, o.aggregate_id, o.payload::text AS body, o.attempts - 1 AS attempts,
          extract(epoch FROM o.created_at)::float8 AS created_at
"""

# Applies each claimed event's outcome in one statement; fenced by claimed_by, so a relay whose
# lease expired and was taken over by another changes nothing. The redundant seq = ANY($2) makes
# the plan start from the primary key: the planner believes claimed_by = $1 matches ~1 row and
# otherwise joins a seq scan of the outbox against the unnest (190 ms instead of 13 ms per 1,000).
SETTLE: Final = """
UPDATE outbox AS o SET
    delivered_at = CASE WHEN u.action = 'delivered' THEN now() END,
    dead_at = CASE WHEN u.action = 'dead' THEN now() END,
    dead_reason = CASE WHEN u.action = 'dead' THEN u.reason END,
    attempts = u.attempts,
    available_at = now() + make_interval(secs => u.delay_s),
    last_error = COALESCE(u.error::jsonb ->> 'error', o.last_error),
    errors = CASE WHEN u.error IS NULL THEN o.errors ELSE o.errors || jsonb_build_array(u.error::jsonb) END,
    claimed_by = NULL, leased_until = NULL
FROM unnest($2::bigint[], $3::text[], $4::int[], $5::float8[], $6::text[], $7::text[])
    AS u(seq, action, attempts, delay_s, reason, error)
WHERE o.seq = ANY($2::bigint[]) AND o.seq = u.seq AND o.claimed_by = $1
RETURNING o.seq
"""
# The Settlement fields SETTLE's unnest() takes, in its order ($2…$7).
SETTLE_COLUMNS: Final = ("seq", "action", "attempts", "delay_s", "reason", "error")

# The common case, delivered at the first try of this claim (already counted by it), as one plain
# primary-key UPDATE.
ACK: Final = """
UPDATE outbox SET delivered_at = now(), claimed_by = NULL, leased_until = NULL
WHERE seq = ANY($2::bigint[]) AND claimed_by = $1
RETURNING seq
"""

# Hands leases back (shutdown) with the attempt their claim counted: due again at once for any relay,
# in its place (available_at was never moved by the claim).
RELEASE: Final = """
UPDATE outbox SET claimed_by = NULL, leased_until = NULL, attempts = attempts - 1
WHERE seq = ANY($2::bigint[]) AND claimed_by = $1 AND delivered_at IS NULL AND dead_at IS NULL
"""

# Per-subscriber state of multi-route events (absent rows mean: not attempted yet, due now).
LOAD_DELIVERIES: Final = """
SELECT event_seq, subscriber, attempts, delivered_at IS NOT NULL AS delivered, dead_at IS NOT NULL AS dead,
       dead_reason, greatest(0, extract(epoch FROM available_at - now()))::float8 AS wait_s
FROM outbox_deliveries
WHERE event_seq = ANY($1::bigint[])
"""

# Creates the rows lazily at the first attempt and keeps every error per subscriber.
UPSERT_DELIVERIES: Final = """
INSERT INTO outbox_deliveries AS d
    (event_seq, subscriber, attempts, available_at, delivered_at, dead_at, dead_reason, last_error, errors)
SELECT u.seq, u.subscriber, u.attempts, now() + make_interval(secs => u.delay_s),
       CASE WHEN u.state = 'delivered' THEN now() END,
       CASE WHEN u.state = 'dead' THEN now() END,
       u.reason, u.error::jsonb ->> 'error',
       CASE WHEN u.error IS NULL THEN '[]'::jsonb ELSE jsonb_build_array(u.error::jsonb) END
FROM unnest($1::bigint[], $2::text[], $3::text[], $4::int[], $5::float8[], $6::text[], $7::text[])
    AS u(seq, subscriber, state, attempts, delay_s, reason, error)
ON CONFLICT (event_seq, subscriber) DO UPDATE SET
    attempts = EXCLUDED.attempts,
    available_at = EXCLUDED.available_at,
    delivered_at = EXCLUDED.delivered_at,
    dead_at = EXCLUDED.dead_at,
    dead_reason = EXCLUDED.dead_reason,
    last_error = COALESCE(EXCLUDED.last_error, d.last_error),
    errors = d.errors || EXCLUDED.errors
"""
# The DeliveryUpdate fields UPSERT_DELIVERIES' unnest() takes, in its order ($1…$7).
UPSERT_DELIVERIES_COLUMNS: Final = ("seq", "subscriber", "state", "attempts", "delay_s", "reason", "error")

HEALTH: Final = str(OUTBOX_HEALTH.text)


class ClaimedEvent(NamedTuple):
    """One leased event: ``body`` is the envelope exactly as it is sent and signed.

    ``attempts`` is the count before this claim (the claim itself is one more in the row).
    """

    seq: int
    id: str
    type: str
    aggregate_id: str
    body: bytes
    attempts: int
    created_at: float


class Settlement(NamedTuple):
    """What happens to one claimed outbox row (``attempts`` is the new absolute count).

    This and ``ClaimedEvent`` are made once per event on the relay's hot path: a NamedTuple is
    immutable like a frozen dataclass at half the construction cost.
    """

    seq: int
    action: Action
    attempts: int
    delay_s: float = 0.0
    reason: str | None = None
    error: dict[str, Any] | None = None
    # A plain 2xx of a single-route event: the claim's count stands, written by the cheaper ACK statement.
    ack: bool = False


@dataclass(frozen=True, slots=True)
class DeliveryState:
    """One subscriber's state for one multi-route event."""

    subscriber: str
    attempts: int = 0
    delivered: bool = False
    dead: bool = False
    dead_reason: str | None = None
    wait_s: float = 0.0


# LOAD_DELIVERIES names its columns as DeliveryState's fields.
_DELIVERY_STATE_FIELDS: Final = tuple(f.name for f in fields(DeliveryState))


@dataclass(frozen=True, slots=True)
class DeliveryUpdate:
    """A subscriber's new state after an attempt (``state`` is delivered, retry or dead)."""

    seq: int
    subscriber: str
    state: Literal["delivered", "retry", "dead"]
    attempts: int
    delay_s: float = 0.0
    reason: str | None = None
    error: dict[str, Any] | None = None


async def claim(conn: asyncpg.Connection, relay_id: str, limit: int, lease_s: float) -> list[ClaimedEvent]:
    """Lease up to ``limit`` due events for ``relay_id`` (one short transaction)."""
    rows = await conn.fetch(CLAIM, relay_id, limit, lease_s)
    return [
        ClaimedEvent(
            seq=r["seq"],
            id=str(r["id"]),
            type=r["type"],
            aggregate_id=str(r["aggregate_id"]),
            body=r["body"].encode(),
            attempts=r["attempts"],
            created_at=r["created_at"],
        )
        for r in rows
    ]


def _error_json(error: dict[str, Any] | None) -> str | None:
    return json.dumps(error) if error is not None else None


def _unnest_arrays(rows: Sequence[Settlement] | Sequence[DeliveryUpdate], columns: tuple[str, ...]) -> list[list[Any]]:
    """One array per column of a statement's unnest(), in its order; ``error`` goes as JSON text."""
    return [
        [_error_json(r.error) for r in rows] if column == "error" else [getattr(r, column) for r in rows]
        for column in columns
    ]


async def settle(
    conn: asyncpg.Connection,
    relay_id: str,
    settlements: Sequence[Settlement],
    updates: Sequence[DeliveryUpdate] = (),
) -> set[int]:
    """Apply outcomes atomically; returns the seqs actually updated (others lost their lease).

    One statement needs no explicit transaction: skipping BEGIN/COMMIT saves two round trips
    per acknowledgement group, which is most of the relay's database time at low rates.
    """
    acks = [s.seq for s in settlements if s.ack]
    rest = [s for s in settlements if not s.ack]
    if updates or (acks and rest):
        async with conn.transaction():
            return await _settle(conn, relay_id, acks, rest, updates)
    return await _settle(conn, relay_id, acks, rest, updates)


async def _settle(
    conn: asyncpg.Connection,
    relay_id: str,
    acks: list[int],
    rest: list[Settlement],
    updates: Sequence[DeliveryUpdate],
) -> set[int]:
    if updates:
        await upsert_deliveries(conn, updates)
    written: set[int] = set()
    if acks:
        written.update(r["seq"] for r in await conn.fetch(ACK, relay_id, acks))
    if rest:
        rows = await conn.fetch(SETTLE, relay_id, *_unnest_arrays(rest, SETTLE_COLUMNS))
        written.update(r["seq"] for r in rows)
    return written


async def release(conn: asyncpg.Connection, relay_id: str, seqs: Sequence[int]) -> int:
    """Give leases back so other relays can deliver at once; returns how many were released."""
    status: str = await conn.execute(RELEASE, relay_id, list(seqs))
    return int(status.rsplit(" ", 1)[-1])


async def load_deliveries(conn: asyncpg.Connection, seqs: Sequence[int]) -> dict[int, dict[str, DeliveryState]]:
    """Stored per-subscriber states of multi-route events, by seq then subscriber."""
    states: dict[int, dict[str, DeliveryState]] = {}
    for r in await conn.fetch(LOAD_DELIVERIES, list(seqs)):
        state = DeliveryState(**{name: r[name] for name in _DELIVERY_STATE_FIELDS})
        states.setdefault(r["event_seq"], {})[state.subscriber] = state
    return states


async def upsert_deliveries(conn: asyncpg.Connection, updates: Sequence[DeliveryUpdate]) -> None:
    await conn.execute(UPSERT_DELIVERIES, *_unnest_arrays(updates, UPSERT_DELIVERIES_COLUMNS))


async def health(conn: asyncpg.Connection) -> OutboxHealth:
    row = await conn.fetchrow(HEALTH)
    return OutboxHealth(
        pending=int(row["pending"]),
        oldest_pending_age_s=float(row["oldest_pending_age_s"] or 0.0),
        dead=int(row["dead"]),
        unroutable=int(row["unroutable"]),
    )
