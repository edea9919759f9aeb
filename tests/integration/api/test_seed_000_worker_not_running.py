"""Seed 000: uploads queued, processing stuck, and no worker running: nobody noticed until someone ran ``ps``.

Here the same state raises ``no_processor`` in GET /v1/pipeline (and the reconciler's gauges), the stuck
``processing`` documents are rescued without any worker, and the alert clears once a processor heartbeats.
"""

from __future__ import annotations

import httpx
from prometheus_client import generate_latest

from shared.db import Database
from tests.support.api_helpers import create_kb, upload_documents
from tests.support.pipeline_helpers import alert_codes, claim, execute, fetch, register_processor
from tests.support.poll import eventually
from tests.support.reconcilers import ReconcilerFactory


async def test_seed_000_queued_documents_and_no_worker_raise_no_processor(
    api: httpx.AsyncClient, db: Database, make_reconciler: ReconcilerFactory
) -> None:
    kb = await create_kb(api)
    ids = await upload_documents(api, kb, 6)
    # What the seed found: some documents left in "processing" by a worker that then went away.
    for doc in ids[:2]:
        await claim(db, doc, owner="worker-that-died")
    await execute(db, "UPDATE documents SET heartbeat_at = now() - interval '10 minutes' WHERE status = 'processing'")
    await execute(db, "UPDATE processors SET last_seen = now() - interval '1 hour'")

    async def raised() -> dict[str, str] | None:
        body = (await api.get("/v1/pipeline")).json()
        alerts = {a["code"]: a["message"] for a in body["alerts"]}
        return alerts if "no_processor" in alerts else None

    alerts = await eventually(raised, timeout_s=60)
    assert "4 document(s) queued" in alerts["no_processor"]

    # The reconciler needs no worker to un-stick the processing documents, and exports the alert.
    reconciler = make_reconciler()
    result = await reconciler.run_once()
    assert result.counts.get("stale_requeued") == 2
    assert "no_processor" in result.alerts
    assert 'kbingest_pipeline_alert{code="no_processor"} 1.0' in generate_latest(reconciler.metrics.registry).decode()
    statuses = {r["status"] for r in await fetch(db, "SELECT status FROM documents")}
    assert statuses == {"queued"}

    # The fix: start the worker. Its heartbeat clears the alert.
    await register_processor(db, ready=True)

    async def cleared() -> set[str] | None:
        codes = await alert_codes(api)
        return None if "no_processor" in codes else codes | {"cleared"}

    await eventually(cleared, timeout_s=60)
    result = await reconciler.run_once()
    assert "no_processor" not in result.alerts
    assert 'kbingest_pipeline_alert{code="no_processor"} 0.0' in generate_latest(reconciler.metrics.registry).decode()
