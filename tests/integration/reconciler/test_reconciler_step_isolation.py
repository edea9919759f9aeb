"""One failing reconciler step does not abort the pass: it is logged, counted and reported; the others still run."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter

import pytest
from prometheus_client import generate_latest
from structlog.testing import capture_logs

from shared import lifecycle
from shared.db import Database
from shared.storage import ObjectStore, object_key
from tests.support.pipeline_helpers import (
    age_document,
    claim,
    create_document,
    create_kb,
    execute,
    fetch_one,
)
from tests.support.reconcilers import ReconcilerFactory

# Every step of a pass, in order, and the repair kind each one shows when it ran (None: no count of its own).
STEPS = {
    "stale": "stale_requeued",
    "lost_event": "lost_event",
    "stuck_delete": "stuck_delete",
    "generations": None,
    "tombstones": None,
    "generation_purge": None,
    "objects": "orphan_object",
    "prune": "outbox_pruned",
    "sample": None,
}


async def _work_for_every_step(db: Database, store: ObjectStore) -> None:
    """Something for each step to repair, so each one's run is visible in the pass's counts."""
    kb = await create_kb(db)
    stale = await create_document(db, store, kb)
    await claim(db, stale)
    await execute(db, "UPDATE documents SET heartbeat_at = now() - interval '10 minutes' WHERE id = :id", id=stale)
    lost = await create_document(db, store, kb)
    await execute(db, "UPDATE outbox SET dead_at = now(), dead_reason = 'rejected' WHERE aggregate_id = :id", id=lost)
    await age_document(db, lost, 60)
    deleting = await create_document(db, store, kb)
    async with db.transaction() as conn:
        assert await lifecycle.request_delete(conn, deleting) is not None
    await execute(db, "UPDATE outbox SET delivered_at = now() WHERE aggregate_id = :id", id=deleting)
    await age_document(db, deleting, 60)
    await store.put_bytes(object_key(kb, uuid.uuid4()), b"orphan", content_type="text/plain")
    old = await create_document(db, store, kb)
    await execute(db, "UPDATE outbox SET delivered_at = now() - interval '2 hours' WHERE aggregate_id = :id", id=old)


@pytest.mark.parametrize("failing", list(STEPS))
async def test_a_step_that_raises_leaves_the_others_running(
    failing: str, db: Database, store: ObjectStore, make_reconciler: ReconcilerFactory
) -> None:
    await _work_for_every_step(db, store)

    async def broken() -> Counter[str]:
        raise RuntimeError(f"{failing} is broken")

    reconciler = make_reconciler(
        reconcile_interval_s=5.0, orphan_grace_s=0.0, outbox_retention_s=3600.0, step_overrides={failing: broken}
    )
    with capture_logs() as logs:
        result = await reconciler.run_once()

    assert result.leader and result.failed_steps == [failing]
    expected = {kind for name, kind in STEPS.items() if kind is not None and name != failing}
    assert expected <= set(result.counts)
    if STEPS[failing] is not None:
        assert STEPS[failing] not in result.counts
    samples = (await fetch_one(db, "SELECT count(*) AS n FROM pipeline_samples"))["n"]
    assert samples == (0 if failing == "sample" else 1)
    assert (await fetch_one(db, "SELECT passes FROM reconciler_state"))["passes"] == 1, "the pass was recorded"
    failures = [entry for entry in logs if entry["event"] == "reconciler.step_failed"]
    assert [(entry["step"], entry["log_level"]) for entry in failures] == [(failing, "error")]
    assert "RuntimeError" in failures[0]["error"]
    metrics = generate_latest(reconciler.metrics.registry).decode()
    assert f'kbingest_reconciler_errors_total{{kind="{failing}"}} 1.0' in metrics


async def test_a_failing_presence_check_is_counted_and_the_loop_goes_on(make_reconciler: ReconcilerFactory) -> None:
    reconciler = make_reconciler()
    assert (await reconciler.run_once()).leader
    stop = asyncio.Event()
    calls = 0

    async def check_once() -> Counter[str]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("presence check is broken")
        stop.set()
        return Counter()

    reconciler.presence.check_once = check_once  # type: ignore[method-assign]  # the step under test, faked
    with capture_logs() as logs:
        await asyncio.wait_for(reconciler.presence.run(stop), timeout=30)

    assert calls == 2
    assert [entry["event"] for entry in logs if entry["log_level"] == "error"] == ["reconciler.presence_check_failed"]
    metrics = generate_latest(reconciler.metrics.registry).decode()
    assert 'kbingest_reconciler_errors_total{kind="presence"} 1.0' in metrics
