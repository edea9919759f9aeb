"""Re-index vs first ingest of the same documents, in one run, on the embedded stack.

``python -m benchmarks.reindex [--docs N] [--chunk-size C] [--quick]``. One ``kbingest up`` (processes,
own data dir, the offline embedder) gets N plain-text documents of ~3,000 characters uploaded into one
knowledge base, timed until every one is ready (first ingest); then ``POST …/reindex`` (with the same
settings unless ``--chunk-size`` says otherwise) is timed until the new generation is active (the
switch). Both rows count documents per minute and chunks per second over the same span definition:
request accepted → last document terminal (ingest) / generation switched (re-index). The load
average at start and end is printed beside them: on a shared machine it decides most of the numbers.
"""

from __future__ import annotations

import argparse
import os
import time
import uuid
from dataclasses import dataclass
from typing import Any

import httpx

from benchmarks.support import table
from tests.support.up_process import running_up

DEFAULT_DOCS = 40
QUICK_DOCS = 12
# One page of the documents listing (its largest): every poll reads all of them at once.
MAX_DOCS = 200
TIMEOUT_S = 3600.0
POLL_S = 1.0
WORDS = (
    "harbour lighthouse keeper tide storm lantern rocks channel pilot vessel signal beacon coast "
    "fog horn chart reef current anchor mooring quay ledger watch"
).split()


def documents(n: int) -> list[tuple[str, bytes]]:
    """``n`` distinct ~3,000-character texts: two chunks each at the default 1,500 characters."""
    tag = uuid.uuid4().hex[:6]
    files = []
    for i in range(n):
        paragraphs = [
            " ".join(WORDS[(i * 5 + p * 3 + j) % len(WORDS)] for j in range(55)).capitalize() + "." for p in range(8)
        ]
        title = f"Document {tag}-{i}."  # the word cycle repeats every len(WORDS) documents
        files.append((f"doc-{tag}-{i:04d}.txt", "\n\n".join([title, *paragraphs]).encode()))
    return files


@dataclass
class Phase:
    label: str
    documents: int
    chunks: int
    seconds: float

    def row(self) -> list[object]:
        return [
            self.label,
            self.documents,
            self.chunks,
            round(self.seconds, 1),
            round(self.documents / self.seconds * 60, 1),
            round(self.chunks / self.seconds, 2),
        ]


def _documents(client: httpx.Client, kb: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = client.get(f"/v1/knowledge-bases/{kb}/documents", params={"limit": MAX_DOCS}).json()[
        "items"
    ]
    return items


def _wait(check: Any, what: str) -> Any:
    deadline = time.monotonic() + TIMEOUT_S
    while (result := check()) is None:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} did not finish in {TIMEOUT_S:g}s")
        time.sleep(POLL_S)
    return result


def run(n: int, chunk_size: int | None) -> tuple[Phase, Phase]:
    with running_up() as stack, stack.client(timeout=120) as client:
        kb = client.post("/v1/knowledge-bases", json={"name": f"bench-reindex-{uuid.uuid4().hex[:6]}"}).json()["id"]
        started = time.monotonic()
        for name, body in documents(n):
            response = client.post(f"/v1/knowledge-bases/{kb}/documents", files={"file": (name, body)})
            response.raise_for_status()

        def ingested() -> list[dict[str, Any]] | None:
            docs = _documents(client, kb)
            return docs if len(docs) == n and all(d["status"] in ("ready", "failed") for d in docs) else None

        docs = _wait(ingested, "the first ingest")
        ingest = Phase("first ingest", n, sum(d["chunk_count"] or 0 for d in docs), time.monotonic() - started)

        settings = {"chunk_size": chunk_size, "chunk_overlap": chunk_size // 10} if chunk_size else {}
        started = time.monotonic()
        client.post(f"/v1/knowledge-bases/{kb}/reindex", json=settings).raise_for_status()

        def switched() -> list[dict[str, Any]] | None:
            index = client.get(f"/v1/knowledge-bases/{kb}").json()["index"]
            return _documents(client, kb) if index["generation"] == 2 else None

        docs = _wait(switched, "the re-index")
        reindex = Phase("re-index", n, sum(d["chunk_count"] or 0 for d in docs), time.monotonic() - started)
    return ingest, reindex


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs", type=int, default=None, help=f"documents (default {DEFAULT_DOCS})")
    parser.add_argument("--chunk-size", type=int, default=None, help="the re-index's chunk_size (default: same)")
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_DOCS} documents")
    args = parser.parse_args(argv)
    n = args.docs or (QUICK_DOCS if args.quick else DEFAULT_DOCS)
    if not 0 < n <= MAX_DOCS:
        parser.error(f"--docs must be between 1 and {MAX_DOCS}")
    load_before = os.getloadavg()
    ingest, reindex = run(n, args.chunk_size)
    load_after = os.getloadavg()
    headers = ["phase", "documents", "chunks", "seconds", "docs/min", "chunks/s"]
    print(table(headers, [ingest.row(), reindex.row()]))
    ratio = (reindex.chunks / reindex.seconds) / (ingest.chunks / ingest.seconds)
    print(f"\nre-index / first ingest, chunks/s: {ratio:.2f}x")
    print(
        f"load average (1/5/15 min): start {load_before[0]:.1f}/{load_before[1]:.1f}/{load_before[2]:.1f}, "
        f"end {load_after[0]:.1f}/{load_after[1]:.1f}/{load_after[2]:.1f}; {os.cpu_count()} cores"
    )


if __name__ == "__main__":
    main()
