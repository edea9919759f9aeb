"""Real processes: a kill -9 of a processor in the middle of a re-index, and the re-index still completes.

The stack (API owning the local vector store, a reconciler, two processors, a fake embedding provider)
comes from the processor-death test. Embedding is held while the re-index starts, so a build is
mid-embedding when its processor is killed; the reconciler rescues it, the other processor builds
it, and the generation switches with every document's new chunk count.
"""

from __future__ import annotations

import os
import signal
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from shared.db import Database
from shared.settings import Settings
from tests.e2e.reconciler.test_processor_death_rescue import SHORT_STALE, Stack, _stack
from tests.support.pipeline_helpers import fetch, fetch_one
from tests.support.poll import eventually

pytestmark = pytest.mark.e2e

HOLD_EMBEDDING_S = 600.0
DOCUMENTS = 4


def _text(n: int) -> bytes:
    paragraphs = [
        f"Document {n}, paragraph {i}: " + "tide pools, anemones and crabs under rocks. " * 7 for i in range(8)
    ]
    return "\n\n".join(paragraphs).encode()


@pytest.fixture
def stack(settings: Settings, tmp_path: Path) -> Iterator[Stack]:
    yield from _stack(settings, tmp_path, SHORT_STALE)


async def test_kill_9_of_a_processor_mid_reindex_still_completes_it(
    settings: Settings,
    db: Database,
    stack: Stack,
) -> None:
    headers = {"Authorization": f"Bearer {settings.api_key.get_secret_value()}"}  # type: ignore[union-attr]
    with httpx.Client(base_url=stack.api, headers=headers, timeout=60) as client:
        kb = client.post("/v1/knowledge-bases", json={"name": f"reindex-{uuid.uuid4().hex[:6]}"}).json()["id"]
        docs = [
            client.post(f"/v1/knowledge-bases/{kb}/documents", files={"file": (f"d{n}.txt", _text(n))}).json()["id"]
            for n in range(DOCUMENTS)
        ]

        async def all_ready() -> dict[str, int] | None:
            rows = await fetch(db, "SELECT id, status, chunk_count FROM documents WHERE id = ANY(:ids)", ids=docs)
            assert all(r["status"] != "failed" for r in rows), rows
            return {str(r["id"]): r["chunk_count"] for r in rows} if all(r["status"] == "ready" for r in rows) else None

        before = await eventually(all_ready, timeout_s=240)

        # Within STALE_AFTER_S of a Postgres start the fast rescue holds back; the server may be young.
        async def postgres_past_grace() -> bool:
            row = await fetch_one(db, "SELECT now() - pg_postmaster_start_time() > interval '30 seconds' AS old")
            return bool(row["old"])

        await eventually(postgres_past_grace, timeout_s=120, every_s=1.0)
        stack.provider.delay_s = HOLD_EMBEDDING_S
        started = client.post(f"/v1/knowledge-bases/{kb}/reindex", json={"chunk_size": 400, "chunk_overlap": 40})
        assert started.status_code == 202, started.text

        async def build_mid_embedding() -> dict[str, object] | None:
            rows = await fetch(
                db,
                "SELECT id, lease_owner FROM documents WHERE knowledge_base_id = :kb AND purpose = 'reindex' "
                "AND status = 'processing' AND stage = 'embedding'",
                kb=kb,
            )
            return rows[0] if rows else None

        victim_build = await eventually(build_mid_embedding, timeout_s=120)
        victim = int(str(victim_build["lease_owner"]).split(":")[1])  # a processor id is host:pid:suffix
        stack.provider.delay_s = 0.0
        os.kill(victim, signal.SIGKILL)
        stack.processors[victim].wait(timeout=30)

        async def switched() -> dict[str, object] | None:
            index = client.get(f"/v1/knowledge-bases/{kb}").json()["index"]
            return index if index["generation"] == 2 else None

        assert await eventually(switched, timeout_s=300, every_s=0.5) == {"generation": 2, "building": None}
        after = {d: client.get(f"/v1/documents/{d}").json() for d in docs}
        assert all(a["status"] == "ready" and a["chunk_count"] > before[d] for d, a in after.items()), (before, after)
        hits = client.post(f"/v1/knowledge-bases/{kb}/search", json={"query": "anemones", "limit": 5}).json()["items"]
        assert hits and {h["document_id"] for h in hits} <= set(docs)

    attempts = await fetch(
        db, "SELECT outcome FROM document_attempts WHERE document_id = :id ORDER BY attempt", id=victim_build["id"]
    )
    assert [a["outcome"] for a in attempts] == ["stalled", "ready"], attempts
