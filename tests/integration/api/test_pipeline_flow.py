"""The pipeline's flow on the real database: slots, drain rate, utilization, the queue_stalled rule, samples."""

from __future__ import annotations

import uuid

import httpx
import pytest
from prometheus_client import generate_latest
from sqlalchemy import text

from shared.db import Database
from shared.flow import FLOW, read_flow, utilization
from shared.pipeline_health import PROCESSOR_ALIVE_S
from tests.support.api_helpers import assert_error_shape, upload
from tests.support.api_helpers import create_kb as api_create_kb
from tests.support.pipeline_helpers import (
    age_document,
    alert_codes,
    claim,
    create_document,
    create_kb,
    execute,
    fetch,
    fetch_one,
    register_processor,
)
from tests.support.reconcilers import ReconcilerFactory


async def _processor(
    db: Database,
    *,
    concurrency: int,
    ready_ago_s: float | None,
    seen_ago_s: float = 0.0,
    stopped_ago_s: float | None = None,
) -> str:
    """A processors row with its clocks in the past (ready/stopped/last seen so many seconds ago)."""
    pid = f"flow-test:{uuid.uuid4().hex[:8]}"
    await execute(
        db,
        "INSERT INTO processors (id, hostname, pid, concurrency, started_at, ready_at, last_seen, stopped_at) "
        "VALUES (:id, 'flow-test', 1, :concurrency, now() - interval '1 hour', "
        "now() - make_interval(secs => :ready), now() - make_interval(secs => :seen), "
        "now() - make_interval(secs => :stopped))",
        id=pid,
        concurrency=concurrency,
        ready=ready_ago_s,
        seen=seen_ago_s,
        stopped=stopped_ago_s,
    )
    return pid


async def _attempt(
    db: Database, doc: uuid.UUID, owner: str, *, started_ago_s: float, finished_ago_s: float, outcome: str
) -> None:
    """A finished attempt with its clocks in the past."""
    await execute(
        db,
        "INSERT INTO document_attempts (document_id, attempt, lease_epoch, lease_owner, started_at, finished_at, "
        "outcome) VALUES (:doc, 1, 0, :owner, now() - make_interval(secs => :started), "
        "now() - make_interval(secs => :finished), :outcome)",
        doc=doc,
        owner=owner,
        started=started_ago_s,
        finished=finished_ago_s,
        outcome=outcome,
    )


async def _shift_attempt(db: Database, doc: uuid.UUID, seconds: float) -> None:
    await execute(
        db,
        "UPDATE document_attempts SET started_at = started_at - make_interval(secs => :s) WHERE document_id = :id",
        id=doc,
        s=seconds,
    )


def test_utilization_is_a_clamped_ratio_and_unknown_without_capacity() -> None:
    assert utilization(150.0, 600.0) == 0.25
    assert utilization(700.0, 600.0) == 1.0
    assert utilization(10.0, 0.0) is None


async def test_slots_count_alive_ready_processors_and_their_leases(db: Database) -> None:
    kb = await create_kb(db)
    docs = [await create_document(db, None, kb) for _ in range(5)]
    busy = await _processor(db, concurrency=2, ready_ago_s=60)
    await _processor(db, concurrency=3, ready_ago_s=60)
    await _processor(db, concurrency=4, ready_ago_s=None)  # starting: no slots yet
    await _processor(db, concurrency=4, ready_ago_s=600, stopped_ago_s=30)
    gone = await _processor(db, concurrency=4, ready_ago_s=600, seen_ago_s=PROCESSOR_ALIVE_S + 30)
    for doc in docs[:3]:  # one more lease than its slots: busy never exceeds total
        await claim(db, doc, owner=busy)
    await claim(db, docs[3], owner=gone)

    async with db.transaction() as conn:
        flow = await read_flow(conn, alive_s=PROCESSOR_ALIVE_S)
    assert (flow.slots_total, flow.slots_busy) == (5, 3)
    assert (flow.queued, flow.queued_due, flow.processing) == (1, 1, 4)
    assert (flow.slots.total, flow.slots.busy) == (5, 3)
    assert flow.last_started_at is not None and flow.last_ready_at is not None


async def test_drain_rate_and_utilization_over_the_last_five_minutes(db: Database) -> None:
    kb = await create_kb(db)
    docs = [await create_document(db, None, kb) for _ in range(6)]
    alive = await _processor(db, concurrency=2, ready_ago_s=600)  # 2 × 300 slot-seconds in the window
    await _processor(db, concurrency=1, ready_ago_s=600, stopped_ago_s=150)  # 150
    await _processor(db, concurrency=1, ready_ago_s=600, seen_ago_s=PROCESSOR_ALIVE_S + 60)  # 300 - 120 = 180
    await _attempt(db, docs[0], alive, started_ago_s=240, finished_ago_s=120, outcome="ready")  # 120 busy, drained
    await _attempt(db, docs[1], alive, started_ago_s=360, finished_ago_s=240, outcome="failed")  # 60, drained
    await _attempt(db, docs[2], alive, started_ago_s=90, finished_ago_s=60, outcome="retry_scheduled")  # 30
    await _attempt(db, docs[3], alive, started_ago_s=900, finished_ago_s=600, outcome="ready")  # outside
    await claim(db, docs[4], owner=alive)
    await _shift_attempt(db, docs[4], 60)  # open, its lease current: 60 until now
    await claim(db, docs[5], owner=alive)
    await _shift_attempt(db, docs[5], 200)
    await execute(db, "UPDATE documents SET status = 'deleting' WHERE id = :id", id=docs[5])  # left open: nothing

    async with db.transaction() as conn:
        flow = await read_flow(conn, alive_s=PROCESSOR_ALIVE_S)
    assert flow.drain_rate_per_min == pytest.approx(2 / 5)
    assert flow.utilization == pytest.approx((120 + 60 + 30 + 60) / (600 + 150 + 180), abs=0.02)
    assert (flow.slots_total, flow.slots_busy) == (2, 1)


async def test_no_processor_means_unknown_utilization(db: Database) -> None:
    async with db.transaction() as conn:
        flow = await read_flow(conn, alive_s=PROCESSOR_ALIVE_S)
    assert (flow.slots_total, flow.slots_busy, flow.drain_rate_per_min, flow.utilization) == (0, 0, 0.0, None)
    assert flow.last_started_at is None and flow.oldest_queued_since is None


async def test_flow_reads_attempts_by_their_time_indexes(db: Database) -> None:
    async with db.transaction() as conn:
        await conn.execute(text("SET LOCAL enable_seqscan = off"))
        rows = await conn.execute(text(f"EXPLAIN {FLOW.text}"), {"alive_s": 60.0, "window_s": 300.0})
        plan = "\n".join(row[0] for row in rows)
    assert "ix_document_attempts_finished_at" in plan and "ix_document_attempts_started_at" in plan


async def test_pipeline_reports_slots_drain_rate_and_utilization(api: httpx.AsyncClient, db: Database) -> None:
    kb = await api_create_kb(api)
    doc = (await upload(api, kb, "a.txt", b"slots", content_type="text/plain")).json()["id"]
    processor = await register_processor(db, ready=True)
    await claim(db, doc, owner=processor)
    body = (await api.get("/v1/pipeline")).json()
    assert body["slots"] == {"total": 2, "busy": 1}
    assert body["drain_rate_per_min"] == 0.0
    assert 0.0 <= body["utilization"] <= 1.0


async def test_a_moving_backlog_is_not_stalled_a_still_one_is(api: httpx.AsyncClient, db: Database) -> None:
    kb = await create_kb(db)
    waiting, started = await create_document(db, None, kb), await create_document(db, None, kb)
    await register_processor(db, ready=True, started_ago_s=3600)
    await execute(db, "UPDATE processors SET ready_at = now() - interval '1 hour'")
    await age_document(db, waiting, 3600)
    await claim(db, started)  # the queue moves: an attempt started just now
    codes = await alert_codes(api)
    assert "queue_stalled" not in codes

    await _shift_attempt(db, started, 600)  # ... and then nothing for 10 minutes, with a free slot
    assert "queue_stalled" in await alert_codes(api)
    body = (await api.get("/v1/pipeline")).json()
    (stalled,) = [a for a in body["alerts"] if a["code"] == "queue_stalled"]
    assert "no attempt has started for 10 min" in stalled["message"]


async def test_the_leader_samples_each_pass_and_history_serves_them(
    api: httpx.AsyncClient, db: Database, make_reconciler: ReconcilerFactory
) -> None:
    kb = await api_create_kb(api)
    await upload(api, kb, "a.txt", b"sampled", content_type="text/plain")
    await register_processor(db, ready=True)
    for ago in ("25 hours", "2 hours"):  # one past the retention, one outside the default hour
        await execute(
            db,
            "INSERT INTO pipeline_samples (at, queued, queued_due, processing, slots_total, slots_busy, "
            f"drain_rate_per_min, utilization) VALUES (now() - interval '{ago}', 9, 9, 0, 2, 0, 1.5, NULL)",
        )
    leader, standby = make_reconciler(), make_reconciler()
    await leader.run_once()
    await standby.run_once()

    assert len(await fetch(db, "SELECT at FROM pipeline_samples")) == 2  # the standby wrote none; 25 h pruned
    items = (await api.get("/v1/pipeline/history")).json()["items"]
    assert len(items) == 1
    assert {k: v for k, v in items[0].items() if k != "at"} == {
        "queued": 1,
        "queued_due": 1,
        "processing": 0,
        "slots_total": 2,
        "slots_busy": 0,
        "drain_rate_per_min": 0.0,
        "utilization": 0.0,
    }
    longer = (await api.get("/v1/pipeline/history", params={"minutes": 180})).json()["items"]
    assert [i["queued"] for i in longer] == [9, 1] and longer[0]["utilization"] is None
    assert longer[0]["at"] < longer[1]["at"]

    text_metrics = generate_latest(leader.metrics.registry).decode()
    for line in (
        "kbingest_queue_depth 1.0",
        "kbingest_queue_due 1.0",
        "kbingest_pipeline_slots_total 2.0",
        "kbingest_pipeline_slots_busy 0.0",
        "kbingest_pipeline_drain_rate_per_minute 0.0",
        "kbingest_pipeline_utilization_ratio 0.0",
    ):
        assert f"\n{line}\n" in text_metrics, line


async def test_history_checks_its_window_and_key(api: httpx.AsyncClient) -> None:
    for minutes in (0, 1441):
        assert_error_shape(await api.get("/v1/pipeline/history", params={"minutes": minutes}), 422, "validation_error")
    assert (await api.get("/v1/pipeline/history", params={"minutes": 1440})).json() == {"items": []}
    unauthorized = await api.get("/v1/pipeline/history", headers={"Authorization": ""})
    assert_error_shape(unauthorized, 401, "unauthorized")


async def test_sample_row_matches_the_flow(db: Database, make_reconciler: ReconcilerFactory) -> None:
    await make_reconciler().run_once()
    row = await fetch_one(db, "SELECT queued, slots_total, utilization FROM pipeline_samples")
    assert row == {"queued": 0, "slots_total": 0, "utilization": None}
