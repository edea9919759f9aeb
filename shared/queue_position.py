"""Where a queued document stands in the dispatch order (``shared.queue``) and when it should start.

The estimate replays the order on today's queue as if nothing else arrived: every due document of a
higher priority first, then the round-robin across knowledge bases within the document's priority.
One statement reads the whole queue's shape, so a page of documents costs one query, not one each.
"""

from __future__ import annotations

import uuid
from collections.abc import Collection
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final, NamedTuple

from sqlalchemy import bindparam, text
from sqlalchemy.dialects.postgresql import ARRAY, UUID
from sqlalchemy.ext.asyncio import AsyncConnection

from shared.flow import FLOW_WINDOW_S
from shared.pipeline_health import PROCESSOR_ALIVE_S
from shared.queue import DUE, priority_rank

# The start rate behind an ETA is measured over the pipeline's drain-rate window, so both move together.
RATE_WINDOW_S: Final = FLOW_WINDOW_S

# One pass over the queue in lane order (lane: one knowledge base's documents of one priority).
# Returns the head (oldest due document) of every lane with its due count, and each asked-for queued
# document with the due documents of its lane ahead of it. Only due documents count, so one in retry
# backoff holds no place for the others but still learns where it would stand once due. The start
# rate and the free slots ride along, so a page of documents costs one query.
ESTIMATE_INPUTS: Final = text(
    f"""
    WITH queued AS (
      SELECT d.id, d.knowledge_base_id, d.created_at, d.available_at, {priority_rank("d.priority")} AS rank,
             {DUE} AS due,
             count(*) FILTER (WHERE {DUE}) OVER (lane ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS ahead,
             count(*) FILTER (WHERE {DUE}) OVER (PARTITION BY d.knowledge_base_id, d.priority) AS lane_count
      FROM documents AS d
      WHERE d.status = 'queued' AND d.deleted_at IS NULL
      WINDOW lane AS (PARTITION BY d.knowledge_base_id, d.priority ORDER BY d.created_at, d.id)
    ),
    flow AS (
      SELECT now() AS now,
        (SELECT count(*) FROM document_attempts
         WHERE started_at > now() - make_interval(secs => :rate_window_s)) AS started,
        (SELECT coalesce(sum(concurrency), 0) FROM processors
         WHERE stopped_at IS NULL AND last_seen > now() - make_interval(secs => :alive_s))
        - (SELECT count(*) FROM documents WHERE status = 'processing') AS free_slots
    )
    SELECT q.*, q.id = ANY(:ids) AS target, k.last_dispatched_at, flow.*
    FROM queued AS q JOIN knowledge_bases AS k ON k.id = q.knowledge_base_id CROSS JOIN flow
    WHERE (q.due AND q.ahead = 0) OR q.id = ANY(:ids)
    """
).bindparams(bindparam("ids", type_=ARRAY(UUID(as_uuid=True))))

_NEVER: Final = datetime.min.replace(tzinfo=UTC)


@dataclass(frozen=True)
class Estimate:
    """``position``: documents that start before this one; ``eta_s``: seconds until it starts, or None."""

    position: int
    eta_s: float | None


@dataclass(frozen=True)
class Lane:
    """The due documents of one knowledge base at one priority rank: how many, and the oldest (its head)."""

    kb_id: uuid.UUID
    rank: int
    count: int
    head: tuple[datetime, uuid.UUID]
    last_dispatched_at: datetime | None


@dataclass(frozen=True)
class Queued:
    """One queued document: its lane, and the due documents of that lane ahead of it."""

    id: uuid.UUID
    kb_id: uuid.UUID
    rank: int
    ahead: int
    created_at: datetime
    last_dispatched_at: datetime | None


class _Turn(NamedTuple):
    """A KB's place in a priority's round-robin: lower goes first, as in ``shared.queue.ORDER``."""

    # (rank, round, turn) of its last claim while higher priorities drain; (-1, 0, 0) when it has
    # none, which puts it first: such a claim moves last_dispatched_at past every value held today.
    drained: tuple[int, int, int]
    dispatched: bool
    last_dispatched_at: datetime
    head: tuple[datetime, uuid.UUID]


Drained = dict[uuid.UUID, tuple[int, int, int]]


def _turn(kb_id: uuid.UUID, at: datetime | None, head: tuple[datetime, uuid.UUID], drained: Drained) -> _Turn:
    return _Turn(drained.get(kb_id, (-1, 0, 0)), at is not None, at or _NEVER, head)


@dataclass(frozen=True)
class _Phase:
    """The drain when one priority's turn comes: what went before, and its lanes in round-robin order."""

    higher: int
    drained: Drained
    lanes: list[tuple[_Turn, Lane]]


def _phases(lanes: Collection[Lane], ranks: set[int]) -> dict[int, _Phase]:
    phases: dict[int, _Phase] = {}
    drained: Drained = {}
    higher = 0
    for rank in sorted(ranks):
        here = [(_turn(x.kb_id, x.last_dispatched_at, x.head, drained), x) for x in lanes if x.rank == rank]
        here.sort(key=lambda pair: pair[0])
        phases[rank] = _Phase(higher, dict(drained), here)
        # Each lane's last claim lands in round count-1 at its turn; later ranks start from that order.
        drained.update({lane.kb_id: (rank, lane.count - 1, turn) for turn, (_, lane) in enumerate(here)})
        higher += sum(lane.count for _, lane in here)
    return phases


def positions(lanes: Collection[Lane], documents: Collection[Queued]) -> dict[uuid.UUID, int]:
    """Each document's number of due documents that start before it, replaying the dispatch order."""
    phases = _phases(lanes, {lane.rank for lane in lanes} | {doc.rank for doc in documents})
    result: dict[uuid.UUID, int] = {}
    for doc in documents:
        phase = phases[doc.rank]
        own = next((lane for _, lane in phase.lanes if lane.kb_id == doc.kb_id), None)
        # A document in retry backoff may be older than its lane's head: once due, it heads the lane.
        head = min(own.head, (doc.created_at, doc.id)) if own else (doc.created_at, doc.id)
        mine = _turn(doc.kb_id, doc.last_dispatched_at, head, phase.drained)
        m = doc.ahead
        # Before its m-th round, a KB served earlier in the round-robin has had m + 1 turns, a later one m.
        others = sum(
            min(lane.count, m + 1 if turn < mine else m) for turn, lane in phase.lanes if lane.kb_id != doc.kb_id
        )
        result[doc.id] = phase.higher + m + others
    return result


def eta_s(position: int, *, started: int, free_slots: int, due_in_s: float) -> float | None:
    """Seconds until a document at ``position`` starts, from the recent start rate; None when unknown."""
    if started > 0:
        eta = position * RATE_WINDOW_S / started
    elif position < free_slots:
        eta = 0.0
    else:
        return None
    return round(max(eta, due_in_s), 1)


async def estimate(conn: AsyncConnection, document_ids: Collection[uuid.UUID]) -> dict[uuid.UUID, Estimate]:
    """Position and ETA of each of these documents that is queued (the others are left out)."""
    if not document_ids:
        return {}
    params = {"ids": list(document_ids), "rate_window_s": RATE_WINDOW_S, "alive_s": PROCESSOR_ALIVE_S}
    rows = (await conn.execute(ESTIMATE_INPUTS, params)).mappings().all()
    lanes = [
        Lane(r["knowledge_base_id"], r["rank"], r["lane_count"], (r["created_at"], r["id"]), r["last_dispatched_at"])
        for r in rows
        if r["due"] and r["ahead"] == 0
    ]
    documents = [
        Queued(r["id"], r["knowledge_base_id"], r["rank"], r["ahead"], r["created_at"], r["last_dispatched_at"])
        for r in rows
        if r["target"]
    ]
    if not documents:
        return {}
    flow = rows[0]
    due_in_s = {r["id"]: (r["available_at"] - r["now"]).total_seconds() for r in rows if r["target"]}
    return {
        doc_id: Estimate(
            position, eta_s(position, started=flow["started"], free_slots=flow["free_slots"], due_in_s=due_in_s[doc_id])
        )
        for doc_id, position in positions(lanes, documents).items()
    }
