"""The internal vector API is no skeleton key: its own secret, a MAC over method + path + timestamp +
body, mounted only where the API owns a local Qdrant, and default secrets refused on public binds."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import httpx
import pytest

from shared.internal_auth import SECRET_FILE, internal_secret, sign_request
from shared.settings import LOCAL_RELAY_SECRET, Settings
from shared.signing import SIGNATURE_HEADER, TIMESTAMP_HEADER, sign
from shared.vector_calls import INTERNAL_PREFIX
from shared.vector_remote import RemoteVectorStore
from shared.vectorstore import EmbeddedChunks
from tests.security.conftest import in_process
from tests.support import servers
from tests.support.api_helpers import assert_error_shape
from tests.support.pipeline_helpers import run_cli, service_env

SEARCH = f"{INTERNAL_PREFIX}/search"
COUNT = f"{INTERNAL_PREFIX}/count"
SEARCH_BODY = json.dumps({"kb_id": str(uuid.uuid4()), "vector": [0.1] * 8, "limit": 3}).encode()


async def _post(api: httpx.AsyncClient, path: str, body: bytes, headers: dict[str, str]) -> httpx.Response:
    # No API key: the internal routes never look at one.
    return await api.post(path, content=body, headers={"Authorization": "", **headers})


async def test_a_relay_secret_signature_is_refused(api: httpx.AsyncClient, settings: Settings) -> None:
    """Every event subscriber holds the relay secret; it opens nothing here (it was answered 200)."""
    timestamp = int(time.time())
    for secret in (LOCAL_RELAY_SECRET, settings.relay_secret.get_secret_value()):
        relay_style = {TIMESTAMP_HEADER: str(timestamp), SIGNATURE_HEADER: sign(secret, timestamp, SEARCH_BODY)}
        assert_error_shape(await _post(api, SEARCH, SEARCH_BODY, relay_style), 401, "invalid_signature")
        internal_style = sign_request(secret, "POST", SEARCH, SEARCH_BODY)
        assert_error_shape(await _post(api, SEARCH, SEARCH_BODY, internal_style), 401, "invalid_signature")


async def test_a_valid_signature_works_only_for_its_method_path_and_body(
    api: httpx.AsyncClient, settings: Settings
) -> None:
    secret = internal_secret(settings)
    count_body = json.dumps({"document_id": None}).encode()
    valid = sign_request(secret, "POST", COUNT, count_body)
    response = await _post(api, COUNT, count_body, valid)
    assert response.status_code == 200, response.text
    # Replayed to another operation, signed for another method, or carrying another body: refused.
    assert_error_shape(await _post(api, SEARCH, count_body, valid), 401, "invalid_signature")
    other_method = sign_request(secret, "PUT", COUNT, count_body)
    assert_error_shape(await _post(api, COUNT, count_body, other_method), 401, "invalid_signature")
    assert_error_shape(await _post(api, COUNT, b'{"document_id": "x"}', valid), 401, "invalid_signature")
    stale = sign_request(secret, "POST", COUNT, count_body, now=time.time() - 3600)
    assert_error_shape(await _post(api, COUNT, count_body, stale), 401, "invalid_signature")


async def test_a_signed_body_that_is_not_the_calls_model_is_422(api: httpx.AsyncClient, settings: Settings) -> None:
    secret = internal_secret(settings)
    for body in (b'{"document_id": null, "mode": "all"}', b'{"kb_id": "k", "vector": "no", "limit": 3}', b"not json"):
        path = COUNT if b"document_id" in body else SEARCH
        refused = await _post(api, path, body, sign_request(secret, "POST", path, body))
        assert_error_shape(refused, 422, "validation_error")


async def test_remote_store_round_trip_in_batches(settings: Settings) -> None:
    """The processor's path: many chunks, several signed upserts, the tail trimmed once at the end."""
    async with in_process(settings) as (app, _):
        store = RemoteVectorStore("http://api", internal_secret(settings), transport=httpx.ASGITransport(app=app))
        await _round_trip(store)


async def _round_trip(store: RemoteVectorStore) -> None:
    class Chunk:
        def __init__(self, n: int) -> None:
            self.chunk_no, self.text, self.page, self.heading = n, f"chunk {n} " + "x" * 50, None, None

    try:
        document, kb = uuid.uuid4(), uuid.uuid4()
        chunks = [Chunk(n) for n in range(600)]
        vectors = [[float(n % 7 + 1), 1.0, 0.5, 0.25] for n in range(600)]
        await store.ensure_collection(4)
        assert await store.upsert_chunks(EmbeddedChunks(document, kb, 1, "f.txt", chunks, vectors)) == 600
        assert await store.count(document) == 600
        assert await store.upsert_chunks(EmbeddedChunks(document, kb, 1, "f.txt", chunks[:10], vectors[:10])) == 10
        assert await store.count(document) == 10
        hits = await store.search(kb, [1.0, 1.0, 0.5, 0.25], 3)
        assert len(hits) == 3
    finally:
        await store.close()


async def test_no_internal_router_with_a_qdrant_server(settings: Settings) -> None:
    async with in_process(settings.model_copy(update={"qdrant_url": "http://127.0.0.1:9"})) as (_, client):
        body = json.dumps({"document_id": None}).encode()
        headers = sign_request(internal_secret(settings), "POST", COUNT, body)
        assert_error_shape(await client.post(COUNT, content=body, headers=headers), 404, "not_found")


def test_the_local_secret_is_generated_once_per_data_dir(tmp_path: Path) -> None:
    settings = Settings(_env_file=None, data_dir=tmp_path / "data")  # type: ignore[call-arg]
    first = internal_secret(settings)
    assert len(first) >= 32 and first != LOCAL_RELAY_SECRET
    assert internal_secret(settings) == first
    assert (tmp_path / "data" / SECRET_FILE).stat().st_mode & 0o777 == 0o600
    assert internal_secret(Settings(_env_file=None, data_dir=tmp_path / "other")) != first  # type: ignore[call-arg]


@pytest.mark.parametrize(
    ("extra", "named"),
    [
        ({"KBINGEST_API_HOST": "0.0.0.0"}, "KBINGEST_RELAY_SECRET"),
        ({"KBINGEST_BIND_HOST": "0.0.0.0"}, "KBINGEST_RELAY_SECRET"),
        ({"KBINGEST_API_HOST": "0.0.0.0", "KBINGEST_RELAY_SECRET": "r" * 32}, "KBINGEST_INTERNAL_SECRET"),
    ],
)
def test_the_api_refuses_to_start_on_a_public_address_with_default_secrets(
    settings: Settings, extra: dict[str, str], named: str
) -> None:
    env = service_env(settings, KBINGEST_API_PORT=str(servers.free_port()), **extra)
    for name in ("KBINGEST_RELAY_SECRET", "KBINGEST_INTERNAL_SECRET"):
        if name not in extra:
            env.pop(name, None)
    result = run_cli(["api"], env)
    assert result.returncode != 0
    assert named in result.stderr, result.stderr[-2000:]


def test_public_binds_start_with_their_own_secrets() -> None:
    public = Settings(  # type: ignore[call-arg]
        _env_file=None, api_host="0.0.0.0", relay_secret="r" * 32, internal_secret="i" * 32
    )
    assert public.api_is_public and public.exposed_secret_problems() == []
    server = Settings(  # type: ignore[call-arg]
        _env_file=None, api_host="0.0.0.0", relay_secret="r" * 32, qdrant_url="http://qdrant:6333"
    )
    assert server.exposed_secret_problems() == []
    assert not Settings(_env_file=None, api_host="::1").api_is_public  # type: ignore[call-arg]
