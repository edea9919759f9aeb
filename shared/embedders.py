"""One ``Embedder`` per embedding model, made on first use and kept: KBs may index with different models."""

from __future__ import annotations

from shared.embedding import Embedder
from shared.settings import Settings


class Embedders:
    """The server's default embedder plus one per other model a KB's index generation names."""

    def __init__(self, settings: Settings, default: Embedder | None = None) -> None:
        self._settings = settings
        self._default = default or Embedder(settings)
        self._by_model: dict[str, Embedder] = {self._default.model: self._default}

    @property
    def default(self) -> Embedder:
        return self._default

    def get(self, model: str | None) -> Embedder:
        """The embedder of ``model`` (None: the default); cached, so a local model loads once."""
        if model is None:
            return self._default
        embedder = self._by_model.get(model)
        if embedder is None:
            # EMBEDDING_DIM describes the default model only; another model's dimension is probed.
            other = self._settings.model_copy(update={"embedding_model": model, "embedding_dim": None})
            embedder = self._by_model[model] = Embedder(other)
        return embedder
