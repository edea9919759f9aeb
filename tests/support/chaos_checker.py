"""The campaign's invariant checker: Postgres, the bucket and the vector store, read directly at the end.

Each finding names the invariant (DESIGN.md §2) and the rows involved; findings are grouped into
the report's columns: lost, duplicated, orphaned, stuck, plus dead letters, connections, exits.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from unittest import mock

import asyncpg

from shared.settings import Settings
from shared.storage import ObjectStore
from tests.support.chaos_monitor import OVERDUE, OVERDUE_BOUND_S
from tests.support.chaos_workload import Ledger

TERMINAL = ("ready", "failed")
DOCUMENTS = """
SELECT d.id::text AS id, d.knowledge_base_id::text AS kb, d.filename, d.status, d.stage, d.version, d.chunk_count,
       d.attempts, d.error, d.object_key, d.deleted_at IS NOT NULL AS tombstoned,
       k.deleted_at IS NOT NULL AS kb_deleted
FROM documents AS d JOIN knowledge_bases AS k ON k.id = d.knowledge_base_id
"""
# Dead letters with the subscriber they died at (NULL: the event's only route, or unroutable).
DEAD = """
SELECT o.id::text AS id, o.type, o.aggregate_id::text AS aggregate_id, o.dead_reason, o.last_error,
       NULL::text AS subscriber
FROM outbox AS o WHERE o.dead_at IS NOT NULL
  AND NOT EXISTS (SELECT 1 FROM outbox_deliveries AS x WHERE x.event_seq = o.seq AND x.dead_at IS NOT NULL)
UNION ALL
SELECT o.id::text, o.type, o.aggregate_id::text, x.dead_reason, x.last_error, x.subscriber
FROM outbox_deliveries AS x JOIN outbox AS o ON o.seq = x.event_seq WHERE x.dead_at IS NOT NULL
"""
AUDIT_ACKED = """
SELECT o.id::text AS id, o.type FROM outbox_deliveries AS x JOIN outbox AS o ON o.seq = x.event_seq
WHERE x.subscriber = $1 AND x.delivered_at IS NOT NULL
"""


@dataclass
class Findings:
    """Violations per invariant, each a list of one-line descriptions naming the rows."""

    items: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    stats: dict[str, Any] = field(default_factory=dict)

    def add(self, invariant: str, detail: str) -> None:
        self.items[invariant].append(detail)

    def count(self, *invariants: str) -> int:
        return sum(len(self.items.get(i, [])) for i in invariants)


# Which report column each invariant counts in.
COLUMNS = {
    "lost": (
        "accepted upload has no row",
        "ready without all its points",
        "live row without its object",
        "acknowledged event never received",
    ),
    "duplicated": ("ready with extra points or versions", "search returned a chunk twice"),
    "orphaned": (
        "points without a ready document of that version",
        "object without a live row",
        "deleted document still has its object",
        "live document in a deleted KB",
        "acknowledged deletion not done",
    ),
    "stuck": ("not terminal at the end", "failed without an error code", "event overdue"),
}


def settings_for(env: dict[str, str]) -> Settings:
    """The settings the stack's services run with."""
    with mock.patch.dict(os.environ, env, clear=True):
        return Settings(_env_file=None)  # type: ignore[call-arg]


def store_for(env: dict[str, str]) -> ObjectStore:
    return ObjectStore.from_settings(settings_for(env))


def read_points(qdrant_path: Path) -> list[dict[str, Any]]:
    """Every point's payload in every kbingest collection (the API must be stopped: local mode locks the path)."""
    from qdrant_client import QdrantClient

    client = QdrantClient(path=str(qdrant_path))
    points: list[dict[str, Any]] = []
    try:
        for collection in client.get_collections().collections:
            if not collection.name.startswith("kbingest_"):
                continue
            offset = None
            while True:
                batch, offset = client.scroll(
                    collection.name, limit=1000, offset=offset, with_payload=True, with_vectors=False
                )
                points.extend({**(p.payload or {}), "point_id": str(p.id)} for p in batch)
                if offset is None:
                    break
    finally:
        client.close()
    return points


async def _fetch(dsn: str, sql: str, *args: Any) -> list[dict[str, Any]]:
    conn = await asyncpg.connect(dsn, timeout=10)
    await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")
    try:
        return [dict(r) for r in await conn.fetch(sql, *args)]
    finally:
        await conn.close()


def check(
    *,
    dsn: str,
    env: dict[str, str],
    points: list[dict[str, Any]],
    ledger: Ledger,
    subscriber_record: dict[str, Any],
    garbage_url: str,
    audit_url: str,
) -> Findings:
    found = Findings()
    rows = asyncio.run(_fetch(dsn, DOCUMENTS))
    objects = {o.key for o in asyncio.run(store_for(env).list("kb/"))}
    by_id = {r["id"]: r for r in rows}
    live_kbs = {
        r["id"] for r in asyncio.run(_fetch(dsn, "SELECT id::text AS id FROM knowledge_bases WHERE deleted_at IS NULL"))
    }
    _check_accepted(found, ledger, by_id, {kb for kb in ledger.kbs if kb not in live_kbs})
    _check_rows(found, rows, objects)
    _check_points(found, rows, points)
    _check_objects(found, rows, objects)
    for line in ledger.search_violations:
        found.add("search returned a chunk twice" if " chunk " in line else "search returned a deleted document", line)
    for row in asyncio.run(_fetch(dsn, OVERDUE, OVERDUE_BOUND_S)):
        found.add(
            "event overdue", f"at the end: {row['type']} {row['id']} of {row['aggregate_id']}, {row['late_s']:.0f} s"
        )
    _check_dead_letters(found, asyncio.run(_fetch(dsn, DEAD)), subscriber_record, garbage_url)
    audited = subscriber_record.get("audit", {})
    for row in asyncio.run(_fetch(dsn, AUDIT_ACKED, audit_url)):
        if row["id"] not in audited:
            found.add(
                "acknowledged event never received", f"{row['type']} {row['id']} delivered to audit, not seen there"
            )
    found.stats.update(
        documents=len(rows),
        accepted=len(ledger.docs),
        statuses=dict(Counter("deleted" if r["tombstoned"] else r["status"] for r in rows)),
        failed_codes=dict(Counter((r["error"] or {}).get("code") for r in rows if r["status"] == "failed")),
        points=len(points),
        objects=len(objects),
    )
    return found


def _check_accepted(found: Findings, ledger: Ledger, by_id: dict[str, dict[str, Any]], kbs: set[str]) -> None:
    """Every 201 has its row; every acknowledged deletion (202) happened."""
    for doc in ledger.snapshot():
        row = by_id.get(doc.id)
        if row is None:
            found.add("accepted upload has no row", f"{doc.id} ({doc.name}, {doc.source}, 201 at {doc.accepted_s} s)")
        elif doc.deleted_s is not None and not row["tombstoned"]:
            found.add(
                "acknowledged deletion not done",
                f"document {doc.id} ({doc.name}): 202 at {doc.deleted_s} s, ends status={row['status']}",
            )
    for kb, deleted_s in ledger.kbs.items():
        if deleted_s is not None and kb not in kbs:
            found.add("acknowledged deletion not done", f"knowledge base {kb}: 202 at {deleted_s} s, still live")


def _check_rows(found: Findings, rows: list[dict[str, Any]], objects: set[str]) -> None:
    for r in rows:
        what = f"{r['id']} ({r['filename']}) status={r['status']} stage={r['stage']} attempts={r['attempts']}"
        if r["tombstoned"]:
            if r["object_key"] in objects:
                found.add("deleted document still has its object", what)
            continue
        if r["kb_deleted"]:
            found.add("live document in a deleted KB", f"{what} in KB {r['kb']}")
        if r["status"] not in TERMINAL:
            found.add("not terminal at the end", what)
            continue
        if r["status"] == "failed" and not (r["error"] or {}).get("code"):
            found.add("failed without an error code", what)
        if r["object_key"] not in objects:
            found.add("live row without its object", f"{what} error={(r['error'] or {}).get('code')}")


def _check_points(found: Findings, rows: list[dict[str, Any]], points: list[dict[str, Any]]) -> None:
    by_id = {r["id"]: r for r in rows}
    ready = {r["id"]: r for r in rows if r["status"] == "ready" and not r["tombstoned"] and not r["kb_deleted"]}
    per_doc: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for p in points:
        per_doc[str(p.get("document_id"))].append(p)
    for doc_id, own in per_doc.items():
        row = ready.get(doc_id)
        if row is None:
            known = by_id.get(doc_id)
            status = "no row" if known is None else "tombstoned" if known["tombstoned"] else known["status"]
            # The KB-delete race has an invariant of its own (a live row left in a deleted KB).
            in_deleted_kb = known is not None and known["kb_deleted"] and not known["tombstoned"]
            found.add(
                "points of a live document in a deleted KB"
                if in_deleted_kb
                else "points without a ready document of that version",
                f"{doc_id}: {len(own)} points, document {status}, versions {sorted({p.get('version') for p in own})}",
            )
            continue
        stale = [p for p in own if p.get("version") != row["version"]]
        chunks = Counter(p.get("chunk_no") for p in own if p.get("version") == row["version"])
        if stale or len(chunks) > (row["chunk_count"] or 0) or any(n > 1 for n in chunks.values()):
            found.add(
                "ready with extra points or versions",
                f"{doc_id}: chunk_count={row['chunk_count']} version={row['version']}, points "
                f"{dict(Counter(p.get('version') for p in own))} by version",
            )
    for doc_id, row in ready.items():
        have = {p.get("chunk_no") for p in per_doc.get(doc_id, []) if p.get("version") == row["version"]}
        if len(have) < (row["chunk_count"] or 0):
            found.add(
                "ready without all its points",
                f"{doc_id} ({row['filename']}): chunk_count={row['chunk_count']}, "
                f"{len(have)} points of v{row['version']}",
            )


def _check_objects(found: Findings, rows: list[dict[str, Any]], objects: set[str]) -> None:
    live = {r["object_key"] for r in rows if not r["tombstoned"]}
    for key in sorted(objects - live):
        found.add("object without a live row", key)


def _check_dead_letters(found: Findings, dead: list[dict[str, Any]], record: dict[str, Any], garbage_url: str) -> None:
    garbage = record.get("garbage", {})
    expected = 0
    for d in dead:
        answers = garbage.get(d["id"], [])
        if d["subscriber"] == garbage_url and answers and "ok" not in answers:
            expected += 1
            continue
        found.add(
            "dead letter that is no refusal",
            f"{d['type']} {d['id']} of {d['aggregate_id']} at {d['subscriber'] or 'its only route'}: "
            f"{d['dead_reason']}: {(d['last_error'] or '')[:160]}; garbage answers {answers}",
        )
    found.stats["dead_letters_expected"] = expected
