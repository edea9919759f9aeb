"""Leader election: any number run, exactly one acts; a lost session hands over at the next pass."""

from __future__ import annotations

from shared.db import Database
from shared.storage import ObjectStore
from tests.support.pipeline_helpers import claim, create_document, create_kb, execute, fetch, fetch_one
from tests.support.poll import eventually
from tests.support.reconcilers import ReconcilerFactory


async def _stale_documents(db: Database, store: ObjectStore, n: int) -> None:
    kb = await create_kb(db)
    for _ in range(n):
        await claim(db, await create_document(db, store, kb))
    await execute(db, "UPDATE documents SET heartbeat_at = now() - interval '10 minutes' WHERE status = 'processing'")


async def test_two_reconcilers_exactly_one_acts_per_pass(
    db: Database, store: ObjectStore, make_reconciler: ReconcilerFactory
) -> None:
    first, second = make_reconciler(), make_reconciler()
    for _ in range(3):
        await _stale_documents(db, store, 2)
        results = [await first.run_once(), await second.run_once()]
        assert [r.leader for r in results] == [True, False]
        assert results[0].counts.get("stale_requeued") == 2
        assert results[1].counts == {}
    state = await fetch_one(db, "SELECT leader_id, passes FROM reconciler_state")
    assert state == {"leader_id": first.reconciler_id, "passes": 3}
    # Every rescue happened exactly once.
    rows = await fetch(db, "SELECT count(*) AS n FROM outbox WHERE type = 'document.requeued'")
    assert rows[0]["n"] == 6


async def test_standby_takes_over_when_the_leader_session_dies(
    db: Database, store: ObjectStore, make_reconciler: ReconcilerFactory
) -> None:
    leader, standby = make_reconciler(), make_reconciler()
    assert (await leader.run_once()).leader
    assert not (await standby.run_once()).leader

    # The leader's lock session ends (network cut, backend killed): Postgres frees the lock.
    killed = await fetch(
        db,
        "SELECT pg_terminate_backend(l.pid) AS ok FROM pg_locks l WHERE l.locktype = 'advisory' AND l.granted "
        "AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())",
    )
    assert killed == [{"ok": True}]
    await _stale_documents(db, store, 1)

    taken = await standby.run_once()
    assert taken.leader and taken.counts.get("stale_requeued") == 1
    old = await leader.run_once()
    assert not old.leader and not leader.is_leader
    state = await fetch_one(db, "SELECT leader_id FROM reconciler_state")
    assert state["leader_id"] == standby.reconciler_id


async def test_clean_close_releases_the_lock_at_once(make_reconciler: ReconcilerFactory) -> None:
    leader, standby = make_reconciler(), make_reconciler()
    assert (await leader.run_once()).leader
    await leader.close()
    assert (await standby.run_once()).leader


async def test_at_most_two_connections_per_reconciler(db: Database, make_reconciler: ReconcilerFactory) -> None:
    reconciler = make_reconciler()
    await reconciler.run_once()

    async def only_the_lock_session() -> list[dict[str, object]] | None:
        rows = await fetch(
            db,
            "SELECT application_name, count(*) AS n FROM pg_stat_activity "
            "WHERE application_name LIKE 'kbingest.reconciler%' AND datname = current_database() "
            "GROUP BY application_name",
        )
        return rows if rows == [{"application_name": "kbingest.reconciler.leader", "n": 1}] else None

    # Between passes only the lock session stays open (the work engine is NullPool; a closed
    # backend may linger in pg_stat_activity for a moment, hence the polling).
    await eventually(only_the_lock_session, timeout_s=30)
