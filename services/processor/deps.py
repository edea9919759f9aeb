"""What the processor's lifespan opens once and the pipeline, the worker and the service state share."""

from __future__ import annotations

from dataclasses import dataclass

from services.processor.metrics import ProcessorMetrics
from shared.db import Database
from shared.settings import Settings
from shared.storage import ObjectStore
from shared.vectorstore import VectorStore


@dataclass(frozen=True, kw_only=True, slots=True)
class ProcessorDeps:
    settings: Settings
    db: Database
    # Heartbeats get their own connection so busy work can never starve them.
    heartbeat_db: Database
    store: ObjectStore
    vectors: VectorStore
    metrics: ProcessorMetrics
