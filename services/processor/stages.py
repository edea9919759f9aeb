"""The stages of one attempt: download → extract → chunk → embed → index, each under its timeout.

The attempt as a whole runs under a watchdog (``Settings.attempt_timeout()``): a stage without a
timeout of its own (chunking by default) that hangs is cut there, so its slot and lease come back.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final, TypeVar, assert_never

import structlog

from services.processor.chunking import Chunk, chunk_elements
from services.processor.deps import ProcessorDeps
from services.processor.extraction.elements import Element
from services.processor.fence import LeaseCheck, take_back
from services.processor.heartbeat import LeaseLost
from shared.aio import finish_then_cancel
from shared.embedders import Embedders
from shared.errors import ErrorCode, ProcessingError
from shared.generations import IndexSettings, settings_of_row
from shared.lifecycle import Lease
from shared.storage import ObjectMissing, StorageUnavailable
from shared.vectorstore import EmbeddedChunks, IndexTag
from shared.vocabulary import Stage

T = TypeVar("T")

# A long stage says how far it got at most this often (a 600-page document embeds for minutes).
PROGRESS_LOG_INTERVAL_S: Final = 30.0
# How long a vector write cut short (lease lost, shutdown, a deadline) may take to settle when no
# indexing timeout is configured; the take-back has to come after it.
WRITE_SETTLE_MAX_S: Final = 60.0

log = structlog.get_logger("kbingest.processor")


def timeout_code(stage: Stage) -> ErrorCode:
    """What a stage that runs out of time fails with (a new stage must say: mypy checks the match)."""
    match stage:
        case "downloading":
            return ErrorCode.STORAGE_UNAVAILABLE
        case "extracting":
            return ErrorCode.EXTRACT_TIMEOUT
        case "chunking":
            return ErrorCode.STAGE_TIMEOUT
        case "embedding":
            return ErrorCode.EMBED_TIMEOUT
        case "indexing":
            return ErrorCode.INDEX_UNAVAILABLE
        case _:
            assert_never(stage)


ExtractFn = Callable[[str, str], Awaitable[list[Element]]]
EnterStage = Callable[[Stage], Awaitable[None]]
# Renews the lease after a vector write and says, when it is gone, what the document became.
ConfirmLease = Callable[[], Awaitable[LeaseCheck]]


@dataclass(frozen=True)
class Outcome:
    chunk_count: int
    version: int


class Progress:
    """Steps of a long stage (embedded chunks): each one pushes the stage's deadline and the watchdog back."""

    def __init__(self, stage: Stage, total: int, *, watchdog: asyncio.Timeout, watchdog_s: float) -> None:
        self.stage = stage
        self.total = total
        self.done = 0
        self._logged_at = time.monotonic()
        self._deadline: asyncio.Timeout | None = None
        self._timeout_s: float | None = None
        self._watchdog = watchdog
        self._watchdog_s = watchdog_s

    def start(self, deadline: asyncio.Timeout, timeout_s: float | None) -> None:
        self._deadline, self._timeout_s = deadline, timeout_s

    def step(self, done: int) -> None:
        self.done = done
        loop_now = asyncio.get_running_loop().time()
        if self._deadline is not None and self._timeout_s is not None:
            self._deadline.reschedule(loop_now + self._timeout_s)
        # A document big enough to embed for longer than the attempt's ceiling is not hung while its
        # batches keep completing: the watchdog bounds the time without progress from here on.
        watchdog_at = self._watchdog.when()
        if watchdog_at is not None and watchdog_at < loop_now + self._watchdog_s:
            self._watchdog.reschedule(loop_now + self._watchdog_s)
        now = time.monotonic()
        if now - self._logged_at >= PROGRESS_LOG_INTERVAL_S and done < self.total:
            self._logged_at = now
            log.info("document.progress", stage=self.stage, done=done, total=self.total)

    def summary(self) -> str:
        return f"{self.done} of {self.total} done"


@dataclass(frozen=True, kw_only=True, slots=True)
class Pipeline:
    """Runs the stages for a leased document; raises ProcessingError with the failure's code."""

    deps: ProcessorDeps
    embedders: Embedders
    extract: ExtractFn

    async def _stage(self, stage: Stage, work: Awaitable[T], progress: Progress | None = None) -> T:
        """Run ``work`` under the stage's timeout; with ``progress``, the timeout restarts at each step."""
        timeout_s = self.deps.settings.stage_timeout_s(stage)
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
            raise ProcessingError(timeout_code(stage), message) from exc
        finally:
            self.deps.metrics.stage_duration.labels(stage).observe(time.perf_counter() - started)

    async def run(self, lease: Lease, enter: EnterStage, confirm: ConfirmLease) -> Outcome:
        """Every stage, under the attempt's watchdog; a cut attempt fails with ``stage_timeout``."""
        limit_s = self.deps.settings.attempt_timeout()
        current: list[Stage | None] = [None]

        async def entering(stage: Stage) -> None:
            await enter(stage)
            current[0] = stage

        try:
            async with asyncio.timeout(limit_s) as watchdog:
                return await self._stages(lease, entering, confirm, watchdog, limit_s)
        except TimeoutError as exc:
            if not watchdog.expired():
                raise
            stage = current[0]
            self.deps.metrics.attempt_timeouts.labels(stage or "none").inc()
            log.error("document.attempt_timeout", stage=stage, limit_s=limit_s)
            raise ProcessingError(
                ErrorCode.STAGE_TIMEOUT,
                f"the attempt ran longer than ATTEMPT_TIMEOUT_S ({limit_s:g}s); cut while {stage or 'starting'}",
            ) from exc

    async def _stages(
        self, lease: Lease, enter: EnterStage, confirm: ConfirmLease, watchdog: asyncio.Timeout, limit_s: float
    ) -> Outcome:
        row = lease.row
        # The row's index generation says how to chunk and which model embeds (one query per attempt).
        async with self.deps.db.transaction() as conn:
            index = await settings_of_row(conn, lease.document_id, self.deps.settings)
        with tempfile.TemporaryDirectory(prefix="kbingest-doc-") as tmp:
            path = Path(tmp) / "original"
            await enter("downloading")
            await self._stage("downloading", self._download(row["object_key"], path))

            await enter("extracting")
            elements = await self._stage("extracting", self.extract(str(path), row["media_type"]))

        await enter("chunking")
        chunks = await self._stage("chunking", in_daemon_thread(chunker(index), elements))
        if not chunks:
            raise ProcessingError(ErrorCode.EMPTY_TEXT, "no text to index after chunking")

        await enter("embedding")
        # A 600-page document is ~1,500 chunks: minutes with the offline embedder on 2 cores. The
        # embedding timeout is therefore a progress deadline (per batch), not a bound on the total.
        progress = Progress("embedding", total=len(chunks), watchdog=watchdog, watchdog_s=limit_s)
        texts = [c.text for c in chunks]
        embedder = self.embedders.get(index.embedding_model)
        vectors = await self._stage("embedding", embedder.embed_documents(texts, progress.step), progress)

        await enter("indexing")
        await self._stage("indexing", self._index(lease, chunks, vectors, confirm, index))
        return Outcome(chunk_count=len(chunks), version=lease.version)

    async def _download(self, key: str, path: Path) -> None:
        try:
            await self.deps.store.get_to_file(key, path)
        except ObjectMissing as exc:
            raise ProcessingError(ErrorCode.OBJECT_MISSING, f"the stored file {key} is missing") from exc
        except StorageUnavailable as exc:
            raise ProcessingError(ErrorCode.STORAGE_UNAVAILABLE, str(exc)) from exc

    async def _index(
        self,
        lease: Lease,
        chunks: list[Chunk],
        vectors: list[list[float]],
        confirm: ConfirmLease,
        index: IndexSettings,
    ) -> None:
        row = lease.row
        dim = len(vectors[0])
        tag = IndexTag(index.generation, index.embedding_model, index.fingerprint(dim))
        await self.deps.vectors.ensure_collection(dim, model=index.embedding_model)
        write = asyncio.ensure_future(
            self.deps.vectors.upsert_chunks(
                EmbeddedChunks(
                    document_id=lease.document_id,
                    kb_id=row["knowledge_base_id"],
                    version=lease.version,
                    filename=row["filename"],
                    chunks=chunks,
                    vectors=vectors,
                    index=tag,
                )
            )
        )
        await self._fenced_write(lease, write, confirm)
        # Only older versions: a newer holder's points (if our lease was taken meanwhile) must survive.
        await self.deps.vectors.delete_older_versions(lease.document_id, lease.version)

    async def _fenced_write(self, lease: Lease, write: asyncio.Future[int], confirm: ConfirmLease) -> None:
        """Wait for a vector write, then prove the lease outlived it; if it did not, take the write back."""
        try:
            await asyncio.shield(write)
        except asyncio.CancelledError:
            # Cut short mid-write: a request already sent lands whether or not we wait, so let it
            # settle first, or the take-back could run before it and leave its points behind.
            await self._settle(write)
            await self._take_back_if_lost(lease, confirm)
            raise
        except ProcessingError:
            # A failed write may have landed some of its batches; the failure stays what it was.
            await self._take_back_if_lost(lease, confirm)
            raise
        if not await self._held_or_taken_back(lease, confirm):
            raise LeaseLost("the lease was lost while writing vectors")

    async def _held_or_taken_back(self, lease: Lease, confirm: ConfirmLease) -> bool:
        # Not cut by the heartbeat's cancel: it comes when the lease is gone, i.e. exactly when the
        # take-back must run to its end (else the late write's points outlive the deletion).
        return await finish_then_cancel(self._check_after_write(lease, confirm))

    async def _check_after_write(self, lease: Lease, confirm: ConfirmLease) -> bool:
        check = await confirm()
        if not check.held:
            await take_back(self.deps.vectors, lease, check)
        return check.held

    async def _take_back_if_lost(self, lease: Lease, confirm: ConfirmLease) -> None:
        """The check on a path that already ends in an error: its own failure is logged, not raised."""
        try:
            await self._held_or_taken_back(lease, confirm)
        except Exception as exc:  # the reconciler's tombstone re-purge is the backstop; say so loudly
            log.error("document.take_back_failed", error=f"{type(exc).__name__}: {exc}"[:300])

    async def _settle(self, write: asyncio.Future[int]) -> None:
        settle_s = self.deps.settings.stage_timeout_s("indexing") or WRITE_SETTLE_MAX_S
        done, _ = await asyncio.wait({write}, timeout=settle_s)
        if not done:
            write.cancel()
            log.error("document.vector_write_unsettled", waited_s=settle_s)
        elif not write.cancelled() and (error := write.exception()) is not None:
            log.warning("document.vector_write_failed", error=f"{type(error).__name__}: {error}"[:300])


def chunker(index: IndexSettings) -> Callable[[list[Element]], list[Chunk]]:
    """The chunker of an index generation's settings."""
    return functools.partial(chunk_elements, max_chars=index.chunk_size, overlap_chars=index.chunk_overlap)


def in_daemon_thread(fn: Callable[..., T], /, *args: object) -> Awaitable[T]:
    """Run ``fn(*args)`` on a daemon thread of its own.

    A hung call can only be abandoned, never killed: cancelling the await frees the caller at once,
    and the thread neither occupies the shared executor (storage calls run there) nor holds up the
    process's exit, as an executor thread would.
    """
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()
    context = contextvars.copy_context()

    def resolve(result: T | None, error: BaseException | None) -> None:
        if future.done():  # the caller stopped waiting (cancelled)
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)  # type: ignore[arg-type]  # result is a T whenever error is None

    def call() -> None:
        try:
            result, error = context.run(fn, *args), None
        except Exception as exc:  # handed to the awaiting task, which raises it
            result, error = None, exc
        if not loop.is_closed():  # an abandoned call may outlive the loop (a hung chunker at shutdown)
            loop.call_soon_threadsafe(resolve, result, error)

    threading.Thread(target=call, name=f"kbingest-{getattr(fn, '__name__', 'call')}", daemon=True).start()
    return future
