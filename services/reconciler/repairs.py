"""Document repairs: stale leases, lost dispatches, stuck deletions. One short transaction per document."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any, Final

import structlog
from sqlalchemy import TextClause

from services.reconciler import queries
from shared import lifecycle
from shared.db import Database
from shared.events import EventType

# Per pass and repair kind; a backlog larger than this is worked off over the next passes.
MAX_PER_PASS: Final = 500
SOURCE: Final = "kbingest/reconciler"
# A re-emit waits the grace doubled per earlier re-emit that died, at most this long: a subscriber that
# stays down for a day costs each waiting document a few dozen events, not one per pass.
REEMIT_BACKOFF_MAX_S: Final = 3600.0
# Bounds the exponent (the cap is reached long before); keeps power() finite for a document with many dead events.
REEMIT_MAX_DOUBLINGS: Final = 20

log = structlog.get_logger("kbingest.reconciler")


async def rescue_stale(db: Database, *, stale_after_s: float, limit: int = MAX_PER_PASS) -> Counter[str]:
    """Requeue (or fail, when out of attempts) processing documents whose heartbeat went stale."""
    params = {"stale_s": stale_after_s}
    return await _rescue(db, queries.STALE_PROCESSING, params, reason="stale", stale_after_s=stale_after_s, limit=limit)


async def rescue_orphaned(db: Database, *, owners: Sequence[str], limit: int = MAX_PER_PASS) -> Counter[str]:
    """Requeue (or fail, when out of attempts) the processing documents of processors whose presence lock is gone."""
    return await _rescue(db, queries.ORPHANED_PROCESSING, {"owners": list(owners)}, reason="presence_lost", limit=limit)


async def _rescue(
    db: Database,
    scan: TextClause,
    params: dict[str, Any],
    *,
    reason: lifecycle.RescueReason,
    stale_after_s: float = 0.0,
    limit: int,
) -> Counter[str]:
    counts: Counter[str] = Counter()
    for _ in range(limit):
        async with db.transaction() as conn:
            row = (await conn.execute(scan, params)).mappings().first()
            if row is None:
                break
            outcome = await lifecycle.rescue(
                conn,
                row["id"],
                epoch=row["lease_epoch"],
                reason=reason,
                owner=row["lease_owner"],
                stale_after_s=stale_after_s,
                source=SOURCE,
            )
        if outcome == "skipped":
            break
        counts[f"{reason}_{outcome}"] += 1
        log.warning(
            "document.rescued",
            document_id=str(row["id"]),
            reason=reason,
            outcome=outcome,
            lease_owner=row["lease_owner"],
            epoch=row["lease_epoch"],
        )
    return counts


def reemit_params(event_type: EventType, grace_s: float) -> dict[str, Any]:
    """The parameters of LOST_DISPATCH / STUCK_DELETE: grace, back-off and whose refusals count."""
    return {
        "grace_s": grace_s,
        "event_type": event_type,
        "source": SOURCE,
        "backoff_max_s": max(grace_s, REEMIT_BACKOFF_MAX_S),
        "max_doublings": REEMIT_MAX_DOUBLINGS,
    }


async def reemit_lost(db: Database, *, grace_s: float, limit: int = MAX_PER_PASS) -> Counter[str]:
    """Re-emit ``document.requeued`` for due queued documents that have no event in flight (backed off, not refused)."""
    counts: Counter[str] = Counter()
    params = reemit_params("document.requeued", grace_s)
    for _ in range(limit):
        async with db.transaction() as conn:
            row = (await conn.execute(queries.LOST_DISPATCH, params)).mappings().first()
            if row is None:
                break
            body = await lifecycle.requeue_event(conn, row, source=SOURCE)
        counts["lost_event"] += 1
        log.warning("document.dispatch_reemitted", document_id=str(row["id"]), event_id=body["id"])
    return counts


async def finish_stuck_deletes(db: Database, *, grace_s: float, limit: int = MAX_PER_PASS) -> Counter[str]:
    """Re-emit ``document.delete_requested`` for deletions with no event in flight (backed off, not refused)."""
    counts: Counter[str] = Counter()
    params = reemit_params("document.delete_requested", grace_s)
    for _ in range(limit):
        async with db.transaction() as conn:
            document_id = (await conn.execute(queries.STUCK_DELETE, params)).scalar_one_or_none()
            if document_id is None:
                break
            row = await lifecycle.request_delete(conn, document_id, source=SOURCE)
        if row is None:
            break
        counts["stuck_delete"] += 1
        log.warning("document.delete_reemitted", document_id=str(document_id))
    return counts
