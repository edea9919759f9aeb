"""GET /v1/pipeline on the real API and database, and the reconciler's pipeline gauges."""

from __future__ import annotations

import httpx
from prometheus_client import generate_latest

from shared.db import Database
from shared.settings import Settings
from tests.support.api_helpers import create_kb, upload, upload_documents
from tests.support.pipeline_helpers import alert_codes, claim, execute, fetch, register_processor
from tests.support.poll import eventually
from tests.support.reconcilers import ReconcilerFactory


async def test_pipeline_requires_a_key(api: httpx.AsyncClient) -> None:
    response = await api.get("/v1/pipeline", headers={"Authorization": ""})
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "unauthorized"


async def test_report_counts_outbox_processors_reconciler(
    api: httpx.AsyncClient, db: Database, make_reconciler: ReconcilerFactory
) -> None:
    kb = await create_kb(api)
    ids = await upload_documents(api, kb, 3)
    processor = await register_processor(db, ready=True)
    await claim(db, ids[0], owner=processor)
    await execute(db, "UPDATE documents SET stage = 'extracting' WHERE id = :id", id=ids[0])

    before = (await api.get("/v1/pipeline")).json()
    assert before["reconciler"]["passes"] == 0
    assert "reconciler_not_running" in {a["code"] for a in before["alerts"]}

    reconciler = make_reconciler()
    await reconciler.run_once()
    body = (await api.get("/v1/pipeline")).json()

    assert body["counts_by_status"] == {"queued": 2, "processing": 1, "ready": 0, "failed": 0, "deleting": 0}
    assert body["counts_by_stage"] == {"extracting": 1}
    assert body["builds"] == {"queued": 0, "processing": 0}
    assert body["queued_due"] == 2 and body["oldest_queued_age_s"] >= 0
    assert body["outbox"]["pending"] == 3 and body["outbox"]["dead"] == 0
    assert body["outbox"]["oldest_pending_age_s"] >= 0
    assert [p["id"] for p in body["processors"]] == [processor]
    assert body["processors"][0]["alive"] and body["processors"][0]["ready_at"] is not None
    assert body["processors_alive"] == body["processors_ready"] == 1
    assert body["reconciler"]["leader_id"] == reconciler.reconciler_id and body["reconciler"]["passes"] == 1
    assert body["reconciler"]["last_pass_finished_at"] is not None
    assert body["database"]["max_connections"] > body["database"]["connections_in_use"] > 0
    assert body["alerts"] == []


async def test_build_rows_count_as_queue_work_not_as_documents(api: httpx.AsyncClient) -> None:
    kb = await create_kb(api)
    doc = (await upload(api, kb, "v.txt", b"first", content_type="text/plain")).json()["id"]
    # A replacement of a document that never became ready re-points the document itself; a re-index
    # makes one hidden build row per document.
    assert (await api.post(f"/v1/knowledge-bases/{kb}/reindex")).status_code == 202

    body = (await api.get("/v1/pipeline")).json()

    assert body["counts_by_status"]["queued"] == 1, f"only the document counts: {body['counts_by_status']}"
    assert body["builds"] == {"queued": 1, "processing": 0}
    assert body["queued_due"] == 2, "the queue holds the document and its build"
    listed = (await api.get(f"/v1/knowledge-bases/{kb}/documents")).json()["items"]
    assert [d["id"] for d in listed] == [doc]


async def test_alert_since_is_remembered_by_the_reconciler(
    api: httpx.AsyncClient, db: Database, make_reconciler: ReconcilerFactory
) -> None:
    kb = await create_kb(api)
    await upload(api, kb, "a.txt", b"a", content_type="text/plain")
    reconciler = make_reconciler()
    await reconciler.run_once()
    stored = await fetch(db, "SELECT code, since FROM pipeline_alerts")
    assert [r["code"] for r in stored] == ["no_processor"]
    body = (await api.get("/v1/pipeline")).json()
    assert [a["code"] for a in body["alerts"]] == ["no_processor"]

    await register_processor(db, ready=True)
    await reconciler.run_once()
    assert await fetch(db, "SELECT code FROM pipeline_alerts") == []


async def test_queue_stalled_while_processors_are_alive(
    api: httpx.AsyncClient, db: Database, settings: Settings, make_reconciler: ReconcilerFactory
) -> None:
    kb = await create_kb(api)
    doc = (await upload(api, kb, "a.txt", b"waiting", content_type="text/plain")).json()["id"]
    await register_processor(db, ready=True)
    await make_reconciler().run_once()
    assert "queue_stalled" not in await alert_codes(api)

    await execute(
        db,
        "UPDATE documents SET available_at = now() - interval '10 minutes', "
        "updated_at = now() - interval '10 minutes' WHERE id = :id",
        id=doc,
    )
    # Just ready, the processor has not had the time to claim: stalled only once it has been ready a while.
    assert "queue_stalled" not in await alert_codes(api)
    await execute(db, "UPDATE processors SET ready_at = now() - interval '10 minutes'")
    assert "queue_stalled" in await alert_codes(api)
    body = (await api.get("/v1/pipeline")).json()
    assert body["oldest_queued_age_s"] >= 600 - 5

    await claim(db, doc)
    assert "queue_stalled" not in await eventually(lambda: _without(api, "queue_stalled"))


async def _without(api: httpx.AsyncClient, code: str) -> set[str] | None:
    codes = await alert_codes(api)
    return None if code in codes else codes | {"<none>"}


async def test_reconciler_exports_the_pipeline_gauges(
    api: httpx.AsyncClient, make_reconciler: ReconcilerFactory
) -> None:
    kb = await create_kb(api)
    await upload(api, kb, "a.txt", b"a", content_type="text/plain")
    leader, standby = make_reconciler(), make_reconciler()
    await leader.run_once()
    await standby.run_once()

    for reconciler, is_leader in ((leader, 1.0), (standby, 0.0)):
        text = generate_latest(reconciler.metrics.registry).decode()
        assert 'kbingest_documents{status="queued"} 1.0' in text
        assert 'kbingest_pipeline_alert{code="no_processor"} 1.0' in text
        assert 'kbingest_pipeline_alert{code="reconciler_not_running"} 0.0' in text
        assert f"kbingest_reconciler_is_leader {is_leader}" in text
        for name in (
            "kbingest_queue_oldest_queued_age_seconds",
            "kbingest_reconciler_last_pass_timestamp_seconds",
            "kbingest_db_connections_in_use",
            "kbingest_db_max_connections",
        ):
            assert f"\n{name} " in text, name
