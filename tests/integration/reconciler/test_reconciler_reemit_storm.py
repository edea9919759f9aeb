"""No re-emit storm: a subscriber that keeps refusing gets one re-emit, a failing one fewer and fewer; dead rows expire.

The relay's side is simulated on the rows: whatever the reconciler emits is marked dead as the relay would
mark it (``rejected`` for a 401 after a secret rotation, ``max_attempts`` for a subscriber that is down).
"""

from __future__ import annotations

import uuid

import pytest
from structlog.testing import capture_logs

from services.reconciler.reconciler import Reconciler
from shared import lifecycle
from shared.db import Database
from shared.storage import ObjectStore
from tests.support.pipeline_helpers import age_document, create_document, create_kb, events_of, execute, fetch
from tests.support.reconcilers import ReconcilerFactory

# Far past the grace and the back-off cap (1 h): only the refusal rule can hold a re-emit back.
LONG_AGO_S = 2 * 3600.0


@pytest.fixture
async def doc(db: Database, store: ObjectStore) -> uuid.UUID:
    return await create_document(db, store, await create_kb(db))


async def _relay_refuses(db: Database, doc: uuid.UUID, reason: str) -> None:
    """Every event of ``doc`` not settled yet dies as the relay would settle it."""
    await execute(
        db,
        "UPDATE outbox SET dead_at = now(), dead_reason = :reason "
        "WHERE aggregate_id = :id AND delivered_at IS NULL AND dead_at IS NULL",
        id=doc,
        reason=reason,
    )


async def _reemits_after_death(
    db: Database, reconciler: Reconciler, doc: uuid.UUID, reason: str, age_s: float, kind: str = "lost_event"
) -> int:
    """The relay lets ``doc``'s pending events die of ``reason``; ``age_s`` later, one pass: its ``kind`` re-emits."""
    await _relay_refuses(db, doc, reason)
    await age_document(db, doc, age_s)
    return (await reconciler.run_once()).counts.get(kind, 0)


async def _types(db: Database, doc: uuid.UUID) -> list[str]:
    return [e["type"] for e in await events_of(db, doc)]


async def test_a_refused_document_gets_one_reemit_not_one_per_pass(
    db: Database, doc: uuid.UUID, reconciler: Reconciler
) -> None:
    # The processor answers 401: the relay dead-letters at once.
    reemits = [await _reemits_after_death(db, reconciler, doc, "rejected", LONG_AGO_S) for _ in range(5)]

    assert reemits == [1, 0, 0, 0, 0]
    assert await _types(db, doc) == ["document.uploaded", "document.requeued"]
    # The dead letters are what the operator sees and replays.
    assert "dead_letters" in (await reconciler.run_once()).alerts


async def test_a_refused_deletion_gets_one_reemit_not_one_per_pass(
    db: Database, doc: uuid.UUID, reconciler: Reconciler
) -> None:
    await execute(db, "UPDATE outbox SET delivered_at = now() WHERE aggregate_id = :id", id=doc)
    async with db.transaction() as conn:
        assert await lifecycle.request_delete(conn, doc) is not None

    reemits = [
        await _reemits_after_death(db, reconciler, doc, "rejected", LONG_AGO_S, kind="stuck_delete") for _ in range(5)
    ]

    assert reemits == [1, 0, 0, 0, 0]
    assert (await _types(db, doc)).count("document.delete_requested") == 2


async def test_reemits_back_off_exponentially_while_the_subscriber_stays_down(
    db: Database, doc: uuid.UUID, reconciler: Reconciler
) -> None:
    """Each re-emit that died doubles the wait (10 s, 20 s, 40 s, 80 s … at most 1 h) since the latest event."""
    # (age since the latest event, re-emitted?) with wide margins on each side of the doubled wait; the relay
    # ran out of attempts each time: not a refusal.
    steps = [(15, True), (12, False), (16, True), (30, False), (20, True), (60, False), (30, True)]
    reemitted = [await _reemits_after_death(db, reconciler, doc, "max_attempts", age) == 1 for age, _ in steps]
    assert reemitted == [expected for _, expected in steps]
    assert (await _types(db, doc)).count("document.requeued") == 4


async def test_the_backoff_is_capped_at_an_hour(db: Database, doc: uuid.UUID, reconciler: Reconciler) -> None:
    # Twelve re-emits that died: uncapped, the next would wait 10 s × 2^12, more than 11 hours.
    for _ in range(12):
        assert await _reemits_after_death(db, reconciler, doc, "max_attempts", 24 * 3600.0) == 1
    await _relay_refuses(db, doc, "max_attempts")

    await age_document(db, doc, 3000)
    assert "lost_event" not in (await reconciler.run_once()).counts
    await age_document(db, doc, 700)
    assert (await reconciler.run_once()).counts.get("lost_event") == 1


async def test_dead_letters_are_pruned_after_their_retention_and_counted(
    db: Database, store: ObjectStore, make_reconciler: ReconcilerFactory
) -> None:
    kb = await create_kb(db)
    docs = [await create_document(db, store, kb) for _ in range(5)]
    old, recent = docs[:3], docs[3:]
    await execute(
        db,
        "UPDATE outbox SET dead_at = now() - interval '3 days', dead_reason = 'rejected' WHERE aggregate_id = ANY(:d)",
        d=old,
    )
    await execute(
        db,
        "UPDATE outbox SET dead_at = now() - interval '1 hour', dead_reason = 'rejected' WHERE aggregate_id = ANY(:d)",
        d=recent,
    )

    default = make_reconciler()
    result = await default.run_once()
    assert "dead_pruned" not in result.counts  # default retention: 14 days
    await default.close()
    with capture_logs() as logs:
        result = await make_reconciler(dead_letter_retention_s=2 * 24 * 3600.0).run_once()

    assert result.counts.get("dead_pruned") == 3
    pruned = [entry for entry in logs if entry["event"] == "outbox.dead_letters_pruned"]
    assert [entry["rows"] for entry in pruned] == [3]
    left = await fetch(db, "SELECT aggregate_id FROM outbox WHERE dead_at IS NOT NULL")
    assert {row["aggregate_id"] for row in left} == set(recent)
    # Until the last dead letter is pruned, the alert still shows.
    assert "dead_letters" in result.alerts
