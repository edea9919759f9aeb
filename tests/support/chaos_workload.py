"""The campaign's clients: a seeded mix of uploads, batches, deletes, retries and searches, and a ledger
of every answer the API gave (what the checker holds the system to).

Clients behave like careful users: an upload carries an ``Idempotency-Key`` and is repeated with the
same key after a 5xx or a dropped connection, so a 201 may come on any try. A search is checked on
the spot: never a document whose deletion was acknowledged before the search was sent, never the
same chunk twice.
"""

from __future__ import annotations

import asyncio
import json
import random
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tests.support.backlog import WORDS
from tests.support.servers import CORPUS

CLIENTS = 3
UPLOAD_TRIES = 4
REQUEST_TIMEOUT_S = 30.0
# Small corpus files only: the campaign is about faults, not extraction cost on 2 shared cores.
CORPUS_MAX_BYTES = 60_000
OPS: tuple[tuple[str, int], ...] = (
    ("upload_text", 30),
    ("upload_corpus", 10),
    ("batch", 8),
    ("delete_document", 8),
    ("search", 25),
    ("retry_failed", 5),
    ("delete_kb", 1),
)
MIN_LIVE_KBS = 3


@dataclass
class DocRecord:
    id: str
    kb: str
    name: str
    source: str
    accepted_s: float
    deleted_s: float | None = None
    expect: str | None = None


@dataclass
class Ledger:
    """What the clients were told, with times in seconds since the campaign started (monotonic)."""

    started: float = field(default_factory=time.monotonic)
    kbs: dict[str, float | None] = field(default_factory=dict)  # id → when its deletion was acknowledged
    docs: dict[str, DocRecord] = field(default_factory=dict)
    ambiguous: list[dict[str, Any]] = field(default_factory=list)
    answers: Counter[str] = field(default_factory=Counter)
    search_violations: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    searches: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def now(self) -> float:
        return round(time.monotonic() - self.started, 3)

    def accept(self, doc: dict[str, Any], kb: str, source: str, expect: str | None = None) -> None:
        with self.lock:
            self.docs.setdefault(
                str(doc["id"]), DocRecord(str(doc["id"]), kb, str(doc["filename"]), source, self.now(), expect=expect)
            )

    def snapshot(self) -> list[DocRecord]:
        """The accepted documents (the injector's thread adds probes while clients iterate)."""
        with self.lock:
            return list(self.docs.values())

    def live_kbs(self, exclude: str | None = None) -> list[str]:
        return [kb for kb, deleted in self.kbs.items() if deleted is None and kb != exclude]

    def deleted_before(self, at_s: float) -> set[str]:
        """Documents whose deletion (or whose KB's) the API acknowledged before ``at_s``."""
        gone_kbs = {kb for kb, t in self.kbs.items() if t is not None and t < at_s}
        return {d.id for d in self.snapshot() if (d.deleted_s is not None and d.deleted_s < at_s) or d.kb in gone_kbs}


def corpus_files() -> list[tuple[Path, str | None]]:
    """Small corpus files with the outcome the manifest expects (informational under faults)."""
    manifest = CORPUS / "manifest.json"
    if not manifest.exists():
        return []
    files = json.loads(manifest.read_text())["files"]
    return [
        (CORPUS / f["path"], f.get("expect"))
        for f in files
        if (CORPUS / f["path"]).stat().st_size <= CORPUS_MAX_BYTES and (CORPUS / f["path"]).stat().st_size > 0
    ]


class Workload:
    """``CLIENTS`` concurrent loops against the API until ``stop`` is set."""

    def __init__(self, api_url: str, api_key: str, seed: int, ledger: Ledger, probe_kb: str) -> None:
        self.api_url = api_url
        self.headers = {"Authorization": f"Bearer {api_key}"}
        self.rng = random.Random(seed)
        self.ledger = ledger
        self.probe_kb = probe_kb
        self.corpus = corpus_files()
        self.counter = 0
        self.stop = asyncio.Event()

    async def run(self) -> None:
        async with httpx.AsyncClient(base_url=self.api_url, headers=self.headers, timeout=REQUEST_TIMEOUT_S) as client:
            await asyncio.gather(*(self._loop(client) for _ in range(CLIENTS)))

    async def _loop(self, client: httpx.AsyncClient) -> None:
        ops = [name for name, _ in OPS]
        weights = [w for _, w in OPS]
        while not self.stop.is_set():
            try:
                if len(self.ledger.live_kbs(self.probe_kb)) < MIN_LIVE_KBS:
                    await self.create_kb(client)
                else:
                    await getattr(self, self.rng.choices(ops, weights)[0])(client)
            except httpx.HTTPError as exc:
                self.ledger.answers[f"transport error ({type(exc).__name__})"] += 1
            try:
                await asyncio.wait_for(self.stop.wait(), self.rng.uniform(0.2, 1.0))
            except TimeoutError:
                pass

    def _name(self, prefix: str, suffix: str) -> str:
        self.counter += 1
        return f"{prefix}-{self.counter:05d}-{uuid.uuid4().hex[:6]}{suffix}"

    def _text(self) -> bytes:
        words = " ".join(self.rng.choice(WORDS) for _ in range(self.rng.randint(60, 400)))
        return f"Chaos note {uuid.uuid4().hex}.\n\n{words.capitalize()}.\n".encode()

    def _kb(self) -> str | None:
        live = self.ledger.live_kbs(self.probe_kb)
        return self.rng.choice(live) if live else None

    async def create_kb(self, client: httpx.AsyncClient) -> None:
        response = await client.post("/v1/knowledge-bases", json={"name": self._name("kb", "")})
        self.ledger.answers[f"create_kb {response.status_code}"] += 1
        if response.status_code == 201:
            self.ledger.kbs[response.json()["id"]] = None

    async def upload_text(self, client: httpx.AsyncClient) -> None:
        kb = self._kb()
        if kb is not None:
            await self._upload(client, kb, self._name("note", ".txt"), self._text(), "text", None)

    async def upload_corpus(self, client: httpx.AsyncClient) -> None:
        kb = self._kb()
        if kb is not None and self.corpus:
            path, expect = self.rng.choice(self.corpus)
            await self._upload(client, kb, path.name, path.read_bytes(), "corpus", expect)

    async def _upload(
        self, client: httpx.AsyncClient, kb: str, name: str, body: bytes, source: str, expect: str | None
    ) -> None:
        key = uuid.uuid4().hex
        for attempt in range(UPLOAD_TRIES):
            try:
                response = await client.post(
                    f"/v1/knowledge-bases/{kb}/documents",
                    files={"file": (name, body)},
                    headers={"Idempotency-Key": key},
                )
            except httpx.HTTPError as exc:
                self.ledger.answers[f"upload transport error ({type(exc).__name__})"] += 1
                await asyncio.sleep(self.rng.uniform(0.5, 2.0))
                continue
            self.ledger.answers[f"upload {response.status_code}"] += 1
            if response.status_code == 201:
                self.ledger.accept(response.json(), kb, source, expect)
                return
            if response.status_code == 409 and attempt > 0:
                # A repeat with the same key after an unanswered try: the replay should have come back as a 201.
                error = response.json().get("error", {})
                self.ledger.notes.append(f"idempotent retry of {name} answered 409 {error.get('code')}")
                if error.get("document_id"):
                    self.ledger.accept({"id": error["document_id"], "filename": name}, kb, source + " (409)", expect)
                return
            if response.status_code < 500:
                return
            await asyncio.sleep(self.rng.uniform(0.5, 2.0))
        self.ledger.ambiguous.append({"kb": kb, "name": name, "key": key, "at_s": self.ledger.now()})

    async def batch(self, client: httpx.AsyncClient) -> None:
        kb = self._kb()
        if kb is None:
            return
        files = [("file", (self._name("batch", ".txt"), self._text())) for _ in range(self.rng.randint(2, 6))]
        try:
            response = await client.post(f"/v1/knowledge-bases/{kb}/batches", files=files)
        except httpx.HTTPError:
            self.ledger.ambiguous.extend({"kb": kb, "name": f[1][0], "at_s": self.ledger.now()} for f in files)
            raise
        self.ledger.answers[f"batch {response.status_code}"] += 1
        if response.status_code == 201:
            for result in response.json()["results"]:
                self.ledger.answers[f"batch file {result['status_code']}"] += 1
                if result["status_code"] == 201:
                    self.ledger.accept(result["document"], kb, "batch")

    async def delete_document(self, client: httpx.AsyncClient) -> None:
        live = set(self.ledger.live_kbs(self.probe_kb))
        candidates = [d for d in self.ledger.snapshot() if d.deleted_s is None and d.kb in live]
        if not candidates:
            return
        doc = self.rng.choice(candidates)
        response = await client.delete(f"/v1/documents/{doc.id}")
        self.ledger.answers[f"delete_document {response.status_code}"] += 1
        if response.status_code == 202:
            doc.deleted_s = self.ledger.now()

    async def delete_kb(self, client: httpx.AsyncClient) -> None:
        kb = self._kb()
        if kb is None:
            return
        response = await client.delete(f"/v1/knowledge-bases/{kb}")
        self.ledger.answers[f"delete_kb {response.status_code}"] += 1
        if response.status_code == 202:
            self.ledger.kbs[kb] = self.ledger.now()

    async def retry_failed(self, client: httpx.AsyncClient) -> None:
        kb = self._kb()
        if kb is None:
            return
        listed = await client.get(f"/v1/knowledge-bases/{kb}/documents", params={"status": "failed", "limit": 5})
        if listed.status_code != 200 or not listed.json()["items"]:
            return
        doc = self.rng.choice(listed.json()["items"])
        response = await client.post(f"/v1/documents/{doc['id']}/retry")
        self.ledger.answers[f"retry {response.status_code}"] += 1

    async def search(self, client: httpx.AsyncClient) -> None:
        kb = self._kb()
        if kb is None:
            return
        sent_s = self.ledger.now()
        query = " ".join(self.rng.choice(WORDS) for _ in range(3))
        response = await client.post(f"/v1/knowledge-bases/{kb}/search", json={"query": query, "limit": 20})
        self.ledger.answers[f"search {response.status_code}"] += 1
        if response.status_code != 200:
            return
        self.ledger.searches += 1
        items = response.json()["items"]
        gone = self.ledger.deleted_before(sent_s)
        chunks = Counter((i["document_id"], i["chunk_no"]) for i in items)
        for (doc, chunk_no), n in chunks.items():
            if n > 1:
                self.ledger.search_violations.append(
                    f"{sent_s} s: KB {kb} search returned chunk {chunk_no} of {doc} {n}x"
                )
            if doc in gone:
                self.ledger.search_violations.append(f"{sent_s} s: KB {kb} search returned deleted document {doc}")


def probe_upload(api_url: str, api_key: str, kb: str, ledger: Ledger) -> str | None:
    """One high-priority document (jumps the queue): the flow probe after a Postgres restart."""
    body = f"Probe {uuid.uuid4().hex}: the pipeline flows again.".encode()
    try:
        response = httpx.post(
            f"{api_url}/v1/knowledge-bases/{kb}/documents",
            headers={"Authorization": f"Bearer {api_key}", "Idempotency-Key": uuid.uuid4().hex},
            files={"file": (f"probe-{uuid.uuid4().hex[:8]}.txt", body)},
            data={"priority": "high"},
            timeout=REQUEST_TIMEOUT_S,
        )
    except httpx.HTTPError:
        time.sleep(0.2)
        return None
    if response.status_code != 201:
        time.sleep(0.2)
        return None
    ledger.accept(response.json(), kb, "probe")
    return str(response.json()["id"])
