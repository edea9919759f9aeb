"""The orphan sweep pages through the bucket across passes: bounded work per pass, resumed by a new leader, wrapped."""

from __future__ import annotations

import asyncio
import uuid
from datetime import datetime, timedelta

from shared.db import Database
from shared.storage import ObjectStore, object_key
from tests.support.pipeline_helpers import create_document, create_kb, fetch_one
from tests.support.poll import eventually
from tests.support.reconcilers import ReconcilerFactory

PAGE = 400
ORPHANS = 2000
LIVE = 40
GRACE_S = 1.0
PUTS_AT_ONCE = 32


async def _put_orphans(store: ObjectStore, keys: list[str]) -> None:
    for start in range(0, len(keys), PUTS_AT_ONCE):
        chunk = keys[start : start + PUTS_AT_ONCE]
        await asyncio.gather(*(store.put_bytes(key, b"left behind", content_type="text/plain") for key in chunk))


async def _past_the_grace(db: Database, store: ObjectStore, newest_key: str) -> None:
    """Wait (on the database clock) until the newest object is older than the grace."""
    newest = (await store.stat(newest_key)).last_modified
    assert newest is not None

    async def old_enough() -> datetime | None:
        now: datetime = (await fetch_one(db, "SELECT now() AS now"))["now"]
        return now if now - timedelta(seconds=GRACE_S) > newest else None

    await eventually(old_enough, timeout_s=30)


async def _cursor(db: Database) -> str | None:
    row = await fetch_one(db, "SELECT sweep_after FROM reconciler_state")
    value: str | None = row["sweep_after"]
    return value


async def test_passes_page_through_the_bucket_resume_on_a_new_leader_and_wrap_around(
    db: Database, store: ObjectStore, make_reconciler: ReconcilerFactory
) -> None:
    kb = await create_kb(db)
    live = [await create_document(db, store, kb) for _ in range(LIVE)]
    missing = live.pop()  # its object vanished: found by the page whose key range holds it
    await store.delete(object_key(kb, missing))
    orphans = [object_key(kb, uuid.uuid4()) for _ in range(ORPHANS)]
    await _put_orphans(store, orphans)
    await _past_the_grace(db, store, orphans[-1])
    overrides = {"orphan_grace_s": GRACE_S, "orphan_sweep_page_keys": PAGE}
    total_keys = ORPHANS + len(live)  # 2039: five full pages and a short last one

    first = make_reconciler(**overrides)
    passes = [(await first.run_once()).counts for _ in range(2)]
    cursors = [await _cursor(db)]
    await first.close()
    before = {o.key for o in await store.list("kb/")}
    assert cursors[0] is not None and not any(key <= cursors[0] for key in before & set(orphans))
    # Another replica takes over mid-round: it resumes after the stored key, not at the beginning.
    second = make_reconciler(**overrides)
    passes.append((await second.run_once()).counts)
    taken = before - {o.key for o in await store.list("kb/")}
    assert taken and all(key > cursors[0] for key in taken)
    cursors.append(await _cursor(db))
    while cursors[-1] is not None:
        assert len(passes) <= total_keys // PAGE + 1, "the round did not end"
        passes.append((await second.run_once()).counts)
        cursors.append(await _cursor(db))

    assert len(passes) == total_keys // PAGE + 1
    assert all(counts.get("orphan_object", 0) <= PAGE for counts in passes), "a pass handled more than a page"
    assert sum(counts.get("orphan_object", 0) for counts in passes) == ORPHANS
    assert [c for c in cursors if c is not None] == sorted(c for c in cursors if c is not None)
    assert {o.key for o in await store.list("kb/")} == {object_key(kb, doc) for doc in live}
    assert sum(counts.get("object_missing", 0) for counts in passes) == 1
    row = await fetch_one(db, "SELECT status, error FROM documents WHERE id = :id", id=missing)
    assert row["status"] == "failed" and row["error"]["code"] == "object_missing"
    assert (await fetch_one(db, "SELECT count(*) AS n FROM documents WHERE status = 'queued'"))["n"] == len(live)

    # The round is done: the next one starts at most once a minute, from the beginning of the bucket.
    assert "orphan_object" not in (await second.run_once()).counts
    await second.close()
    first_key = f"kb/{'0' * 8}-orphan"
    await store.put_bytes(first_key, b"sorts first", content_type="text/plain")
    await _past_the_grace(db, store, first_key)
    wrapped = await make_reconciler(**overrides).run_once()
    assert wrapped.counts.get("orphan_object") == 1
    assert not await store.exists(first_key)
