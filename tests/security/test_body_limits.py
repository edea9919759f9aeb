"""Memory exhaustion before auth: huge bodies are refused (401/413) before they are read or parsed.

The real-process case measures the API's resident memory: the peak (VmHWM, reset through
/proc/<pid>/clear_refs) may move by a few MB, never by the size of the bodies sent. Measured once
by hand with 2 GiB bodies (4 at a time per attack): every answer came within 0.1 s and the peak
moved 6 MB from a cold start; the suite streams 256 MiB to stay quick.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from shared.settings import Settings
from tests.security.conftest import ApiProcess, in_process
from tests.support.api_helpers import assert_error_shape, create_kb, upload
from tests.support.raw_http import push_body

MiB = 1024 * 1024
ATTACK_BYTES = 256 * MiB
CONCURRENT = 4
# Python's allocator keeps what a few 1 MiB bodies took; far below any body an attacker sends.
RSS_ALLOWANCE_MB = 10
FORGED = {"X-Kbingest-Signature": "sha256=" + "0" * 64, "X-Kbingest-Content-SHA256": "0" * 64}


def _status(pid: int) -> dict[str, int]:
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    return {name: int(fields[name].split()[0]) // 1024 for name in ("VmRSS", "VmHWM")}


def _attacks(api: ApiProcess) -> list[tuple[str, dict[str, Any], int, str]]:
    """(name, push_body arguments, expected status, expected code)."""
    json_type = {"Content-Type": "application/json"}
    keyed = {**json_type, "Authorization": f"Bearer {api.api_key}"}
    forged = {**FORGED, "X-Kbingest-Timestamp": str(int(time.time()))}
    kbs, search, upsert = "/v1/knowledge-bases", "/internal/v1/vectors/search", "/internal/v1/vectors/upsert_chunks"
    declared = {"chunked": False, "content_length": ATTACK_BYTES}
    return [
        ("chunked, no key", {"path": kbs, "headers": json_type}, 401, "unauthorized"),
        (
            "chunked, wrong key",
            {"path": kbs, "headers": {**keyed, "Authorization": "Bearer x"}},
            401,
            "invalid_api_key",
        ),
        ("chunked, valid key", {"path": kbs, "headers": keyed}, 413, "body_too_large"),
        ("declared length, valid key", {"path": kbs, "headers": keyed, **declared}, 413, "body_too_large"),
        ("forged signature, search", {"path": search, "headers": forged}, 401, "invalid_signature"),
        ("forged signature, upsert", {"path": upsert, "headers": forged}, 401, "invalid_signature"),
        ("no signature, upsert", {"path": upsert, "headers": json_type}, 401, "invalid_signature"),
    ]


def _run(api: ApiProcess, arguments: dict[str, Any], total: int) -> list[Any]:
    with ThreadPoolExecutor(CONCURRENT) as pool:
        futures = [pool.submit(push_body, api.port, "POST", total=total, **arguments) for _ in range(CONCURRENT)]
        return [f.result() for f in futures]


@pytest.mark.e2e
def test_huge_bodies_are_refused_without_growing_the_api_process(api_process: ApiProcess) -> None:
    attacks = _attacks(api_process)
    # Warm every path up first so the measurement sees the bodies, not first-use imports and caches.
    for _, arguments, _, _ in attacks:
        _run(api_process, arguments, 2 * MiB)
    Path(f"/proc/{api_process.pid}/clear_refs").write_text("5")
    before = _status(api_process.pid)
    for name, arguments, status, code in attacks:
        for answer in _run(api_process, arguments, ATTACK_BYTES):
            assert answer.status == status, (name, answer)
            assert answer.json()["error"]["code"] == code, (name, answer.body)
            assert answer.sent < ATTACK_BYTES // 8, f"{name}: the server read {answer.sent} bytes before answering"
    peak = _status(api_process.pid)["VmHWM"]
    assert peak - before["VmRSS"] <= RSS_ALLOWANCE_MB, f"RSS peak {peak} MB after {before['VmRSS']} MB"


@pytest.mark.e2e
def test_a_lying_content_length_is_refused_by_the_http_parser(api_process: ApiProcess) -> None:
    """A small declared length followed by megabytes: the rest is not a request, and nothing is buffered."""
    for answer in _run(api_process, {"path": "/v1/knowledge-bases", "chunked": False, "content_length": 100}, 64 * MiB):
        assert answer.status in (400, 401), answer
        assert answer.sent < 16 * MiB


class _Counting:
    """A request body that counts what the app pulled from it."""

    def __init__(self, total: int, piece: int = 64 * 1024) -> None:
        self.total, self.piece, self.pulled = total, piece, 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while self.pulled < self.total:
            self.pulled += self.piece
            yield b" " * self.piece


async def test_json_body_without_a_key_is_never_read(api: httpx.AsyncClient) -> None:
    body = _Counting(64 * MiB)
    response = await api.post(
        "/v1/knowledge-bases", content=body, headers={"Authorization": "", "Content-Type": "application/json"}
    )
    assert_error_shape(response, 401, "unauthorized")
    assert body.pulled <= 64 * 1024


async def test_chunked_body_over_the_limit_is_cut_off_at_the_limit(api: httpx.AsyncClient, settings: Settings) -> None:
    body = _Counting(64 * MiB)
    response = await api.post("/v1/knowledge-bases", content=body, headers={"Content-Type": "application/json"})
    error = assert_error_shape(response, 413, "body_too_large")
    assert error["limit_bytes"] == settings.max_body_bytes
    assert response.headers["connection"] == "close"
    assert body.pulled <= settings.max_body_bytes + body.piece


async def test_declared_length_over_the_limit_is_refused_before_reading(api: httpx.AsyncClient) -> None:
    body = b"{" + b" " * (2 * MiB) + b"}"
    response = await api.post("/v1/knowledge-bases", content=body, headers={"Content-Type": "application/json"})
    assert_error_shape(response, 413, "body_too_large")


async def test_json_search_with_a_huge_query_is_413(api: httpx.AsyncClient) -> None:
    kb = await create_kb(api)
    response = await api.post(f"/v1/knowledge-bases/{kb}/search", json={"query": "q" * (2 * MiB), "limit": 3})
    assert_error_shape(response, 413, "body_too_large")


async def test_bodies_under_the_limit_and_uploads_over_it_still_work(settings: Settings, api_key: str) -> None:
    """Uploads keep their own limit (MAX_UPLOAD_BYTES), larger than the JSON one."""
    async with in_process(settings.model_copy(update={"max_body_bytes": 64 * 1024}), api_key) as (_, client):
        kb = await create_kb(client)
        response = await upload(client, kb, "big.txt", b"words " * (200 * 1024), content_type="text/plain")
        assert response.status_code == 201, response.text
