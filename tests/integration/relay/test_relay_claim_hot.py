"""A claim writes no indexed column: on the outbox's half-empty pages it is a HOT update (migration 0009).

Half of Postgres' cost per delivered event was index entries: the lease used to move ``available_at``,
so each claim added entries to five indexes. This fails if the claim writes an indexed column again or
an index starts covering one it writes (``leased_until``, ``claimed_by``, ``attempts``).
"""

from __future__ import annotations

from services.relay import sql
from tests.support.relay_helpers import connect, fill

# This transaction's own update counts, read before it commits (no wait for the statistics collector).
UPDATES = """
SELECT pg_stat_get_xact_tuples_updated('outbox'::regclass) AS updated,
       pg_stat_get_xact_tuples_hot_updated('outbox'::regclass) AS hot
"""


async def test_a_claim_adds_no_index_entries_and_still_hides_its_events(database_url: str) -> None:
    await fill(database_url, count=200, aggregates=200)
    conn = await connect(database_url)
    try:
        async with conn.transaction():
            claimed = await sql.claim(conn, "relay-a", 200, 60.0)
            counts = await conn.fetchrow(UPDATES)
        assert len(claimed) == 200
        assert (counts["updated"], counts["hot"]) == (200, 200), "every claimed row is a heap-only update"
        # The lease alone (available_at did not move) keeps them from any other claim until it runs out.
        assert await sql.claim(conn, "relay-b", 200, 60.0) == []
        await conn.execute("UPDATE outbox SET leased_until = now() WHERE seq = $1", claimed[0].seq)
        (taken_over,) = await sql.claim(conn, "relay-b", 200, 60.0)
        assert taken_over.seq == claimed[0].seq
    finally:
        await conn.close()
