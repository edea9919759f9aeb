"""Backlogs on a running stack: many small documents uploaded at once, their progress, their attempts.

Shared by the flow-control e2e tests (tests/e2e/flow) and the drain benchmark (benchmarks/drain.py).
Progress is read from the API (one request per poll, whatever the backlog size); timings come from
Postgres (``document_attempts``), so every number uses one clock.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import asyncpg
import httpx

# The API's default MAX_BATCH_FILES: one batch request carries at most this many files.
BATCH_FILES = 100
UPLOAD_WORKERS = 3
TERMINAL = ("ready", "failed")
WORDS = (
    "ledger invoice quarterly revenue audit forecast pipeline vendor contract renewal region margin "
    "backlog onboarding policy handbook release incident review capacity budget headcount roadmap"
).split()


def small_documents(n: int, tag: str | None = None) -> list[tuple[str, bytes]]:
    """``n`` distinct plain-text files of ~700 characters: one chunk each, cheap to extract and embed."""
    tag = tag or uuid.uuid4().hex[:8]
    files = []
    for i in range(n):
        words = " ".join(WORDS[(i * 7 + j) % len(WORDS)] for j in range(90))
        body = f"Note {tag}-{i}.\n\n{words.capitalize()}.\n\nReference {uuid.uuid4().hex}.\n"
        files.append((f"note-{tag}-{i:05d}.txt", body.encode()))
    return files


def create_kb(client: httpx.Client, name: str | None = None) -> str:
    response = client.post("/v1/knowledge-bases", json={"name": name or f"kb-{uuid.uuid4().hex[:8]}"})
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def upload_batches(
    client: httpx.Client, kb: str, files: Sequence[tuple[str, bytes]], *, priority: str | None = None
) -> tuple[list[str], list[str]]:
    """Upload through the batches endpoint, a few requests at once; returns (document ids, batch ids).

    Raises if any file is refused: a backlog test needs every document accepted.
    """
    groups = [files[i : i + BATCH_FILES] for i in range(0, len(files), BATCH_FILES)]
    data = {"priority": priority} if priority else None

    def send(group: Sequence[tuple[str, bytes]]) -> dict[str, Any]:
        response = client.post(
            f"/v1/knowledge-bases/{kb}/batches",
            # No content type: httpx guesses it from the name, as a browser does (text/plain, application/pdf).
            files=[("file", (name, body)) for name, body in group],
            data=data,
        )
        assert response.status_code == 201, response.text
        return dict(response.json())

    with ThreadPoolExecutor(UPLOAD_WORKERS) as pool:
        batches = list(pool.map(send, groups))
    refused = [r for b in batches for r in b["results"] if r["status_code"] != 201]
    assert not refused, refused[:3]
    ids = [str(r["document"]["id"]) for b in batches for r in b["results"]]
    return ids, [str(b["id"]) for b in batches]


def upload_one(client: httpx.Client, kb: str, name: str, body: bytes, *, priority: str | None = None) -> str:
    response = client.post(
        f"/v1/knowledge-bases/{kb}/documents",
        files={"file": (name, body, "text/plain")},
        data={"priority": priority} if priority else None,
    )
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def kb_counts(client: httpx.Client, kb: str) -> dict[str, int]:
    return dict(client.get(f"/v1/knowledge-bases/{kb}").json().get("counts") or {})


def pipeline_alerts(client: httpx.Client) -> set[str]:
    return {a["code"] for a in client.get("/v1/pipeline").json().get("alerts", [])}


def wait_drained(
    client: httpx.Client,
    kbs: Sequence[str],
    total: int,
    timeout_s: float,
    *,
    poll_s: float = 1.0,
    on_poll: Callable[[dict[str, int]], None] | None = None,
) -> tuple[bool, set[str]]:
    """Poll until ``total`` documents of ``kbs`` are terminal; returns (drained, alert codes ever seen)."""
    alerts: set[str] = set()
    deadline = time.monotonic() + timeout_s
    while True:
        alerts |= pipeline_alerts(client)
        counts: dict[str, int] = {}
        for kb in kbs:
            for status, n in kb_counts(client, kb).items():
                counts[status] = counts.get(status, 0) + n
        if on_poll is not None:
            on_poll(counts)
        if sum(counts.get(s, 0) for s in TERMINAL) >= total:
            return True, alerts
        if time.monotonic() > deadline:
            return False, alerts
        time.sleep(poll_s)


def fetch(dsn: str, sql: str, *args: object) -> list[dict[str, Any]]:
    """Rows of one query against the stack's Postgres (a short-lived connection)."""

    async def run() -> list[dict[str, Any]]:
        conn = await asyncpg.connect(dsn)
        try:
            return [dict(r) for r in await conn.fetch(sql, *args)]
        finally:
            await conn.close()

    return asyncio.run(run())


# Every attempt of a KB's documents with its timing (seconds on Postgres's clock, epoch).
ATTEMPTS = """
    SELECT a.document_id::text AS document_id, a.attempt, a.lease_owner, a.outcome,
           extract(epoch FROM a.started_at)::float8 AS started,
           extract(epoch FROM a.finished_at)::float8 AS finished
    FROM document_attempts AS a JOIN documents AS d ON d.id = a.document_id
    WHERE d.knowledge_base_id = ANY($1::uuid[])
"""

# Dead letters of a KB's documents: whole events and per-subscriber deliveries of fanned-out ones.
DEAD_LETTERS = """
    SELECT count(*) AS n FROM outbox AS o
    WHERE o.aggregate_id IN (SELECT id FROM documents WHERE knowledge_base_id = ANY($1::uuid[]))
      AND (o.dead_at IS NOT NULL
           OR EXISTS (SELECT 1 FROM outbox_deliveries AS x WHERE x.event_seq = o.seq AND x.dead_at IS NOT NULL))
"""

# The span of a drain: first document committed → last attempt finished, and what it produced.
SUMMARY = """
    SELECT count(*) AS documents,
           count(*) FILTER (WHERE status = 'ready') AS ready,
           count(*) FILTER (WHERE status = 'failed') AS failed,
           coalesce(sum(chunk_count), 0) AS chunks,
           extract(epoch FROM min(created_at))::float8 AS first_created
    FROM documents WHERE knowledge_base_id = ANY($1::uuid[])
"""


def attempts(dsn: str, kbs: Sequence[str]) -> list[dict[str, Any]]:
    return fetch(dsn, ATTEMPTS, list(kbs))


def dead_letters(dsn: str, kbs: Sequence[str]) -> int:
    return int(fetch(dsn, DEAD_LETTERS, list(kbs))[0]["n"])


def summary(dsn: str, kbs: Sequence[str]) -> dict[str, Any]:
    return fetch(dsn, SUMMARY, list(kbs))[0]
