"""Drain: a backlog of small documents, then the corpus's small/medium text PDFs, through the real stack.

``python -m benchmarks.drain [--docs N] [--processors 1 2] [--quick]``. For each processor count, one
``kbingest up`` (processes, own data dir, free ports; ``PROCESSOR_CONCURRENCY`` default 2 per processor)
gets N one-chunk text files uploaded at once into one knowledge base, then the mixed PDFs into another;
each set is timed until every document is ready or failed, polling ``/v1/pipeline`` every second for
alerts. Slot utilization = Σ per-attempt processing time (``document_attempts``) / (slots × drain span,
first upload → last attempt finished). After the stack stops, the same chunk texts (read back from the
local Qdrant) are embedded in this process, one call per document as the processor makes them: the
raw embedder's chunks/s, next to the end-to-end chunks/s.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.support import table
from shared.embedding import Embedder
from shared.settings import Settings
from tests.support import backlog, servers
from tests.support.up_process import UpProcess, running_up

DEFAULT_DOCS = 600
QUICK_DOCS = 100
SLOTS_PER_PROCESSOR = 2  # PROCESSOR_CONCURRENCY's default, which every run keeps
MIXED_MAX_PAGES = 20  # "small/medium": the 76- and 619-page PDFs would turn the set into a big-document run
DRAIN_TIMEOUT_S = 3600.0
RAW_SAMPLE_DOCS = 150  # enough for a stable rate; embedding all 600 again would double the run


def mixed_files() -> list[str]:
    """The corpus PDFs with a text layer that end ``ready``, up to MIXED_MAX_PAGES pages."""
    manifest = json.loads((servers.CORPUS / "manifest.json").read_text())["files"]
    return sorted(
        e["path"]
        for e in manifest
        if e["path"].endswith(".pdf")
        and e["expect"] == "ready"
        and int(e.get("text_chars") or 0) > 0
        and int(e.get("pages") or 0) <= MIXED_MAX_PAGES
    )


@dataclass
class Run:
    label: str
    processors: int
    kb: str
    documents: int = 0
    ready: int = 0
    failed: int = 0
    chunks: int = 0
    span_s: float = 0.0
    busy_s: float = 0.0
    attempts: int = 0
    dead: int = 0
    drained: bool = False
    alerts: set[str] = field(default_factory=set)
    raw_chunks_per_s: float = float("nan")
    refill_ms: list[float] = field(default_factory=list)

    @property
    def slots(self) -> int:
        return self.processors * SLOTS_PER_PROCESSOR

    @property
    def utilization(self) -> float:
        return self.busy_s / (self.slots * self.span_s) if self.span_s else float("nan")

    def row(self) -> list[object]:
        return [
            self.label if self.drained else f"{self.label} (NOT DRAINED)",
            self.processors,
            self.slots,
            self.documents,
            self.span_s,
            self.documents / self.span_s if self.span_s else float("nan"),
            f"{self.utilization:.2f}",
            self.attempts,
            self.dead,
            self.failed,
            ", ".join(sorted(self.alerts)) or "none",
            self.chunks / self.span_s if self.span_s else float("nan"),
            self.raw_chunks_per_s,
            _percentile(self.refill_ms, 0.5),
            _percentile(self.refill_ms, 0.99),
        ]


HEADERS = [
    "set",
    "processors",
    "slots",
    "documents",
    "drain s",
    "documents/s",
    "slot utilization",
    "attempts",
    "dead letters",
    "failed",
    "alerts seen",
    "chunks/s end-to-end",
    "chunks/s raw embedder",
    "slot refill p50 ms",
    "slot refill p99 ms",
]


def refill_gaps_ms(attempts: list[dict[str, Any]]) -> list[float]:
    """Per finished attempt: ms until its processor started its next document (while one was left to start).

    A slot frees when an attempt ends; the processor that owned it claims the next due document at once
    (invariant 8), so this is the time a freed slot stayed empty while work waited.
    """
    gaps = []
    for attempt in attempts:
        if attempt["finished"] is None:
            continue
        later = [
            a["started"]
            for a in attempts
            if a["lease_owner"] == attempt["lease_owner"] and a["started"] >= attempt["finished"]
        ]
        if later:
            gaps.append((min(later) - attempt["finished"]) * 1000)
    return gaps


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _drain(up: UpProcess, label: str, files: list[tuple[str, bytes]], processors: int) -> Run:
    with up.client(timeout=300) as client:
        run = Run(label, processors, backlog.create_kb(client, f"drain-{label}-{processors}"))
        started = time.time()
        ids, _batches = backlog.upload_batches(client, run.kb, files)
        run.drained, run.alerts = backlog.wait_drained(client, [run.kb], len(ids), DRAIN_TIMEOUT_S)
    attempts = backlog.attempts(up.pg_dsn, [run.kb])
    finished = [a["finished"] for a in attempts if a["finished"] is not None]
    totals = backlog.summary(up.pg_dsn, [run.kb])
    run.documents, run.ready, run.failed = totals["documents"], totals["ready"], totals["failed"]
    run.chunks = int(totals["chunks"])
    run.attempts = len(attempts)
    run.busy_s = sum(a["finished"] - a["started"] for a in attempts if a["finished"] is not None)
    run.span_s = max(finished, default=started) - started
    run.dead = backlog.dead_letters(up.pg_dsn, [run.kb])
    run.refill_ms = refill_gaps_ms(attempts)
    # The table comes at the end; a long run says how each set went as it goes.
    print(
        f"drain: {label}, {processors} processor(s): {run.documents} documents in {run.span_s:.1f} s, "
        f"utilization {run.utilization:.2f}, {run.dead} dead letters, load average {os.getloadavg()[0]:.1f}",
        flush=True,
    )
    return run


def _chunk_texts(qdrant_path: Path, kb: str) -> dict[str, list[str]]:
    """A KB's chunk texts per document, read back from the stopped stack's local Qdrant."""
    from qdrant_client import QdrantClient, models

    client = QdrantClient(path=str(qdrant_path))
    try:
        by_doc: dict[str, list[tuple[int, str]]] = defaultdict(list)
        only_kb = models.Filter(
            must=[models.FieldCondition(key="knowledge_base_id", match=models.MatchValue(value=kb))]
        )
        for collection in client.get_collections().collections:
            offset = None
            while True:
                points, offset = client.scroll(
                    collection.name, scroll_filter=only_kb, limit=1000, offset=offset, with_payload=True
                )
                for p in points:
                    payload = p.payload or {}
                    by_doc[str(payload["document_id"])].append((int(payload["chunk_no"]), str(payload["text"])))
                if offset is None:
                    break
    finally:
        client.close()
    return {doc: [text for _no, text in sorted(chunks)] for doc, chunks in by_doc.items()}


async def _raw_rate(per_document: list[list[str]]) -> float:
    """Chunks/s of the embedder alone, one call per document (what the processor's embed stage does)."""
    embedder = Embedder(Settings(_env_file=None))  # type: ignore[call-arg]  # pydantic-settings' own kwarg
    await embedder.check()  # loads the model outside the timing
    started = time.perf_counter()
    for texts in per_document:
        await embedder.embed_documents(texts)
    return sum(map(len, per_document)) / (time.perf_counter() - started)


def _run_with(processors: int, small: int, mixed: list[str]) -> list[Run]:
    runs = []
    with running_up(
        KBINGEST_PROCESSORS=str(processors),
        # The 13-page PDFs next to a backlog on 2 shared cores can pass the default 120 s extraction.
        KBINGEST_STAGE_TIMEOUTS='{"extracting": 900}',
    ) as up:
        with up.client() as client:
            alive = client.get("/v1/pipeline").json()["processors_alive"]
        if alive != processors:
            raise SystemExit(f"asked for {processors} processor(s), the stack runs {alive}")
        runs.append(_drain(up, "small text", backlog.small_documents(small), processors))
        if mixed:
            files = [(Path(p).name, (servers.CORPUS / p).read_bytes()) for p in mixed]
            runs.append(_drain(up, "mixed PDFs", files, processors))
        data_dir = up.data_dir
    try:
        for run in runs:
            texts = list(_chunk_texts(data_dir / "qdrant", run.kb).values())
            run.raw_chunks_per_s = asyncio.run(_raw_rate(texts[:RAW_SAMPLE_DOCS]))
    finally:
        shutil.rmtree(data_dir.parent, ignore_errors=True)
    return runs


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs", type=int, default=None, help=f"small documents (default {DEFAULT_DOCS})")
    parser.add_argument("--processors", type=int, nargs="+", default=None, help="processor counts (default 1 2)")
    parser.add_argument("--no-mixed", action="store_true", help="only the small-document backlog")
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_DOCS} documents, 1 processor, no mixed set")
    args = parser.parse_args(argv)
    small = args.docs or (QUICK_DOCS if args.quick else DEFAULT_DOCS)
    counts = args.processors or ([1] if args.quick else [1, 2])
    mixed = [] if args.quick or args.no_mixed or not servers.CORPUS.exists() else mixed_files()
    load_before = os.getloadavg()[0]
    rows = [run.row() for processors in counts for run in _run_with(processors, small, mixed)]
    load_after = os.getloadavg()[0]
    out = (
        f"## Drain ({small} small documents, then {len(mixed)} PDFs of ≤ {MIXED_MAX_PAGES} pages; "
        f"load average {load_before:.1f} at the start, {load_after:.1f} at the end)\n\n" + table(HEADERS, rows) + "\n"
    )
    print(out)
    return out


if __name__ == "__main__":
    main()
