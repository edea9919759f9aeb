"""An open event stream does not outlive its key, and one key cannot hold unbounded streams open.

Against a real ``kbingest api`` (SSE needs a real connection), with a short key re-check interval.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest

from shared.settings import Settings
from tests.security.conftest import ApiProcess, launched_api, new_key, revoke
from tests.support.poll import eventually

pytestmark = pytest.mark.e2e

RECHECK_S = 0.5
CAP = 2
DEADLINE_S = 60.0


@pytest.fixture
def sse_api(settings: Settings, tmp_path: Path) -> Iterator[ApiProcess]:
    env = {"KBINGEST_SSE_KEY_RECHECK_S": str(RECHECK_S), "KBINGEST_SSE_MAX_STREAMS_PER_KEY": str(CAP)}
    with launched_api(settings, tmp_path / "api.log", **env) as api:
        yield api


async def _kb(api: ApiProcess, key: str) -> str:
    headers = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(base_url=api.base_url, headers=headers, timeout=DEADLINE_S) as client:
        response = await client.post("/v1/knowledge-bases", json={"name": f"sse-{time.monotonic_ns()}"})
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


@asynccontextmanager
async def _stream(client: httpx.AsyncClient, kb: str, key: str) -> AsyncIterator[httpx.Response]:
    headers = {"Authorization": f"Bearer {key}", "Accept": "text/event-stream"}
    async with client.stream("GET", f"/v1/knowledge-bases/{kb}/events", headers=headers) as response:
        yield response


async def test_revoking_the_key_ends_its_open_stream(sse_api: ApiProcess, settings: Settings) -> None:
    key = await new_key(settings)
    async with httpx.AsyncClient(base_url=sse_api.base_url, timeout=DEADLINE_S) as client:
        kb = await _kb(sse_api, key)
        async with _stream(client, kb, key) as response:
            assert response.status_code == 200
            await revoke(settings, key)
            lines: list[str] = []

            async def read_to_end() -> None:
                async for line in response.aiter_lines():
                    lines.append(line)

            # The server closes the stream; the deadline only guards against a stream that never ends.
            await asyncio.wait_for(read_to_end(), DEADLINE_S)
        closed = lines.index("event: closed")
        data = json.loads(lines[closed + 1].removeprefix("data: "))
        assert data["reason"] == "key_revoked"
        again = await client.get(f"/v1/knowledge-bases/{kb}/events", headers={"Authorization": f"Bearer {key}"})
        assert again.status_code == 401


async def test_streams_per_key_are_capped(sse_api: ApiProcess, settings: Settings) -> None:
    key, other = await new_key(settings), await new_key(settings)
    async with httpx.AsyncClient(base_url=sse_api.base_url, timeout=DEADLINE_S) as client:
        kb = await _kb(sse_api, key)
        async with _stream(client, kb, key) as first, _stream(client, kb, key) as second:
            assert (first.status_code, second.status_code) == (200, 200)
            async with _stream(client, kb, key) as third:
                assert third.status_code == 429
                body = json.loads(await third.aread())
                assert body["error"]["code"] == "too_many_streams" and body["error"]["limit"] == CAP
            async with _stream(client, kb, other) as others:
                assert others.status_code == 200  # the cap is per key

        # Closed streams give their places back once the server notices the disconnect.
        async def a_place_is_free() -> bool:
            async with _stream(client, kb, key) as again:
                return again.status_code == 200

        await eventually(a_place_is_free, timeout_s=DEADLINE_S, what="closed streams to release their places")
