"""The stages of one attempt: download → extract → chunk → embed → index, each under its timeout."""

from __future__ import annotations

import asyncio
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final, TypeVar

import structlog

from services.processor.chunking import chunk_elements
from services.processor.extraction.elements import Element
from services.processor.metrics import ProcessorMetrics
from shared.embedding import Embedder
from shared.errors import ErrorCode, ProcessingError
from shared.lifecycle import Lease, Stage
from shared.settings import Settings
from shared.storage import ObjectMissing, ObjectStore, StorageUnavailable
from shared.vectorstore import VectorStore

T = TypeVar("T")

# A long stage says how far it got at most this often (a 600-page document embeds for minutes).
PROGRESS_LOG_INTERVAL_S: Final = 30.0

log = structlog.get_logger("kbingest.processor")

# What a stage that runs out of time fails with.
TIMEOUT_CODES: Final[dict[str, ErrorCode]] = {
    "downloading": ErrorCode.STORAGE_UNAVAILABLE,
    "extracting": ErrorCode.EXTRACT_TIMEOUT,
    "chunking": ErrorCode.STAGE_TIMEOUT,
    "embedding": ErrorCode.EMBED_TIMEOUT,
    "indexing": ErrorCode.INDEX_UNAVAILABLE,
}

ExtractFn = Callable[[str, str], Awaitable[list[Element]]]
EnterStage = Callable[[Stage], Awaitable[None]]


@dataclass(frozen=True)
class Outcome:
    chunk_count: int
    version: int


class Progress:
    """Steps of a long stage (embedded chunks): each one pushes the stage's deadline back."""

    def __init__(self, stage: Stage, total: int) -> None:
        self.stage = stage
        self.total = total
        self.done = 0
        self._logged_at = time.monotonic()
        self._deadline: asyncio.Timeout | None = None
        self._timeout_s: float | None = None

    def start(self, deadline: asyncio.Timeout, timeout_s: float | None) -> None:
        self._deadline, self._timeout_s = deadline, timeout_s

    def step(self, done: int) -> None:
        self.done = done
        if self._deadline is not None and self._timeout_s is not None:
            self._deadline.reschedule(asyncio.get_running_loop().time() + self._timeout_s)
        now = time.monotonic()
        if now - self._logged_at >= PROGRESS_LOG_INTERVAL_S and done < self.total:
            self._logged_at = now
            log.info("document.progress", stage=self.stage, done=done, total=self.total)

    def summary(self) -> str:
        return f"{self.done} of {self.total} done"


class Pipeline:
    """Runs the stages for a leased document; raises ProcessingError with the failure's code."""

    def __init__(
        self,
        *,
        settings: Settings,
        store: ObjectStore,
        embedder: Embedder,
        vectors: VectorStore,
        extract: ExtractFn,
        metrics: ProcessorMetrics,
    ) -> None:
        self._settings = settings
        self._store = store
        self._embedder = embedder
        self._vectors = vectors
        self._extract = extract
        self._metrics = metrics

    async def _stage(self, stage: Stage, work: Awaitable[T], progress: Progress | None = None) -> T:
        """Run ``work`` under the stage's timeout; with ``progress``, the timeout restarts at each step."""
        timeout_s = self._settings.stage_timeout_s(stage)
        started = time.perf_counter()
        try:
            async with asyncio.timeout(timeout_s) as deadline:
                if progress is not None:
                    progress.start(deadline, timeout_s)
                return await work
        except TimeoutError as exc:
            if progress is not None:
                message = f"{stage} made no progress for {timeout_s:g}s ({progress.summary()})"
            else:
                message = f"{stage} took longer than {timeout_s:g}s"
            raise ProcessingError(TIMEOUT_CODES[stage], message) from exc
        finally:
            self._metrics.stage_duration.labels(stage).observe(time.perf_counter() - started)

    async def run(self, lease: Lease, enter: EnterStage) -> Outcome:
        row = lease.row
        with tempfile.TemporaryDirectory(prefix="kbingest-doc-") as tmp:
            path = Path(tmp) / "original"
            await enter("downloading")
            await self._stage("downloading", self._download(row["object_key"], path))

            await enter("extracting")
            elements = await self._stage("extracting", self._extract(str(path), row["media_type"]))

        await enter("chunking")
        chunks = await self._stage("chunking", asyncio.to_thread(chunk_elements, elements))
        if not chunks:
            raise ProcessingError(ErrorCode.EMPTY_TEXT, "no text to index after chunking")

        await enter("embedding")
        # A 600-page document is ~1,500 chunks: minutes with the offline embedder on 2 cores. The
        # embedding timeout is therefore a progress deadline (per batch), not a bound on the total.
        progress = Progress("embedding", total=len(chunks))
        texts = [c.text for c in chunks]
        vectors = await self._stage("embedding", self._embedder.embed_documents(texts, progress.step), progress)

        await enter("indexing")
        await self._stage("indexing", self._index(lease, chunks, vectors))
        return Outcome(chunk_count=len(chunks), version=lease.version)

    async def _download(self, key: str, path: Path) -> None:
        try:
            await self._store.get_to_file(key, path)
        except ObjectMissing as exc:
            raise ProcessingError(ErrorCode.OBJECT_MISSING, f"the stored file {key} is missing") from exc
        except StorageUnavailable as exc:
            raise ProcessingError(ErrorCode.STORAGE_UNAVAILABLE, str(exc)) from exc

    async def _index(self, lease: Lease, chunks: list, vectors: list[list[float]]) -> None:  # type: ignore[type-arg]
        row = lease.row
        await self._vectors.ensure_collection(len(vectors[0]))
        await self._vectors.upsert_chunks(
            document_id=lease.document_id,
            kb_id=row["knowledge_base_id"],
            version=lease.version,
            filename=row["filename"],
            chunks=chunks,
            vectors=vectors,
        )
        # Only older versions: a newer holder's points (if our lease was taken meanwhile) must survive.
        await self._vectors.delete_older_versions(lease.document_id, lease.version)
