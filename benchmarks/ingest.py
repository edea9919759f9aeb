"""Ingestion throughput on the corpus's text PDFs through the real stack, per-stage times, processor memory."""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import time
from collections import defaultdict
from pathlib import Path

import asyncpg
import psutil

from benchmarks.support import ROOT, percentile, table
from tests.support.up_process import running_up

CORPUS = ROOT.parent / "shared" / "corpus"
QUICK = (
    "pdf/fake-memo.pdf",
    "pdf/reliance-annual-report-3p.pdf",
    "pdf/layout-parser-paper-with-empty-pages.pdf",
    "pdf/gao-cybersecurity-2p-invalid-structure.pdf",
    "nonenglish/korean-text-with-tables.pdf",
)
FULL = (
    *QUICK,
    "pdf/dense-passage-retrieval-2col-13p.pdf",
    "nonenglish/french-olap-paper-12p.pdf",
    "pdf/understanding-breast-cancer-76p.pdf",
)
STAGES = ("downloading", "extracting", "chunking", "embedding", "indexing")


async def _stage_times(pg_dsn: str, doc_ids: list[str]) -> dict[str, list[float]]:
    """Stage durations from the committed stage_changed/indexed events (outbox created_at)."""
    conn = await asyncpg.connect(pg_dsn)
    try:
        rows = await conn.fetch(
            "SELECT aggregate_id::text AS id, type, payload->'data'->>'stage' AS stage, "
            "extract(epoch FROM created_at)::float8 AS t FROM outbox WHERE aggregate_id::text = ANY($1::text[]) "
            "AND type IN ('document.stage_changed', 'document.indexed') ORDER BY seq",
            doc_ids,
        )
    finally:
        await conn.close()
    per_doc: dict[str, list[tuple[str, float]]] = defaultdict(list)
    for row in rows:
        stage = row["stage"] if row["type"] == "document.stage_changed" else "done"
        per_doc[row["id"]].append((stage, row["t"]))
    durations: dict[str, list[float]] = defaultdict(list)
    for marks in per_doc.values():
        for (stage, start), (_next, end) in itertools.pairwise(marks):
            durations[stage].append(end - start)
    return durations


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="only the small PDFs")
    args = parser.parse_args(argv)
    files = QUICK if args.quick else FULL
    manifest = {e["path"]: e for e in json.loads((CORPUS / "manifest.json").read_text())["files"]}
    pages = sum(int(manifest[f]["pages"] or 1) for f in files)
    # Default stage timeouts but extraction's: the 76-page PDF next to others can pass 120 s on 2 cores.
    with running_up(KBINGEST_STAGE_TIMEOUTS='{"extracting": 900}') as stack:
        with stack.client() as client:
            kb = client.post("/v1/knowledge-bases", json={"name": "bench-ingest"}).json()["id"]
            started = time.perf_counter()
            ids = [
                client.post(
                    f"/v1/knowledge-bases/{kb}/documents", files={"file": (Path(f).name, (CORPUS / f).read_bytes())}
                ).json()["id"]
                for f in files
            ]
            peak_rss = 0
            pending = set(ids)
            chunks = 0
            while pending:
                for doc_id in list(pending):
                    doc = client.get(f"/v1/documents/{doc_id}").json()
                    if doc["status"] in {"ready", "failed"}:
                        pending.discard(doc_id)
                        chunks += doc["chunk_count"] or 0
                pipeline = client.get("/v1/pipeline").json()
                for proc in pipeline.get("processors", []):
                    pid = int(str(proc.get("id", "::")).split(":")[1] or 0)
                    if psutil.pid_exists(pid):
                        family = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
                        peak_rss = max(peak_rss, sum(p.memory_info().rss for p in family if p.is_running()))
                time.sleep(0.5)
            elapsed = time.perf_counter() - started
        durations = asyncio.run(_stage_times(stack.pg_dsn, ids))
    summary = table(
        ["documents", "pages", "chunks", "seconds", "documents/s", "pages/s", "chunks/s", "processor RSS MB (peak)"],
        [
            [
                len(files),
                pages,
                chunks,
                elapsed,
                len(files) / elapsed,
                pages / elapsed,
                chunks / elapsed,
                peak_rss / 1024 / 1024,
            ]
        ],
    )
    stages = table(
        ["stage", "n", "p50 s", "p95 s"],
        [[s, len(durations[s]), percentile(durations[s], 50), percentile(durations[s], 95)] for s in STAGES],
    )
    out = f"## Ingest (text PDFs, default embedder, one processor)\n\n{summary}\n\n{stages}\n"
    print(out)
    return out


if __name__ == "__main__":
    main()
