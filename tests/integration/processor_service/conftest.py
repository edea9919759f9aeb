"""Processor-service fixtures: fast heartbeats, an in-memory Qdrant, a blocking extractor seam."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from services.processor.extraction.elements import Element
from shared.settings import Settings
from shared.vectorstore import QdrantVectorStore


@pytest.fixture
def fast_settings(settings: Settings) -> Settings:
    return settings.model_copy(
        update={
            "heartbeat_interval_s": 0.2,
            "stale_after_s": 5.0,
            "retry_base_s": 0.05,
            "max_attempts": 2,
            "processor_concurrency": 2,
        }
    )


@pytest.fixture
async def vectors(fast_settings: Settings) -> AsyncIterator[QdrantVectorStore]:
    store = QdrantVectorStore(":memory:", embedding_model=fast_settings.embedding_model)
    yield store
    await store.close()


class GatedExtractor:
    """Extraction that waits until the test opens the gate (a stage that takes as long as we say)."""

    def __init__(self, text: str = "Gated extraction produced this paragraph about lighthouses.") -> None:
        self.gate = asyncio.Event()
        self.entered = asyncio.Event()
        self.text = text
        self.calls = 0

    async def __call__(self, path: str, media_type: str) -> list[Element]:
        self.calls += 1
        self.entered.set()
        await self.gate.wait()
        return [Element(text=self.text, kind="NarrativeText", page=1, heading=None)]


@pytest.fixture
def gated() -> GatedExtractor:
    return GatedExtractor()
