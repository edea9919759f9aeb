"""What the API's lifespan owns and hands to requests."""

from __future__ import annotations

from dataclasses import dataclass, field

from services.api.broadcast import Broadcaster
from services.api.streams import StreamLimiter
from services.api.uploads.service import UploadService
from shared.db import Database
from shared.embedders import Embedders
from shared.embedding import Embedder
from shared.settings import Settings
from shared.storage import ObjectStore
from shared.vectorstore import VectorStore


@dataclass
class AppState:
    settings: Settings
    db: Database
    store: ObjectStore
    uploads: UploadService
    broadcaster: Broadcaster
    vectors: VectorStore
    embedder: Embedder
    streams: StreamLimiter
    # Signs other processes' calls to the local vector store; None when the API owns none.
    internal_secret: str | None
    # A query is embedded with its KB's active model: one embedder per model (the default's is ``embedder``).
    embedders: Embedders = field(init=False)

    def __post_init__(self) -> None:
        self.embedders = Embedders(self.settings, self.embedder)
