"""Helpers for API tests: create KBs, upload, inspect rows/objects."""

from __future__ import annotations

import uuid
from typing import Any

import httpx

from shared.settings import Settings
from shared.storage import ObjectStore
from tests.support.pipeline_helpers import fetch, open_db


async def create_kb(api: httpx.AsyncClient, name: str | None = None) -> str:
    response = await api.post("/v1/knowledge-bases", json={"name": name or f"kb-{uuid.uuid4().hex[:8]}"})
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


async def upload(
    api: httpx.AsyncClient,
    kb_id: str,
    filename: str,
    content: bytes,
    *,
    headers: dict[str, str] | None = None,
    content_type: str = "application/octet-stream",
    data: dict[str, str] | None = None,
) -> httpx.Response:
    return await api.post(
        f"/v1/knowledge-bases/{kb_id}/documents",
        files={"file": (filename, content, content_type)},
        headers=headers,
        data=data,
    )


async def upload_created(
    api: httpx.AsyncClient, kb_id: str, filename: str, content: bytes, *, headers: dict[str, str] | None = None
) -> httpx.Response:
    """``upload`` that must be accepted: the 201 answer."""
    response = await upload(api, kb_id, filename, content, headers=headers)
    assert response.status_code == 201, response.text
    return response


async def upload_documents(api: httpx.AsyncClient, kb_id: str, count: int) -> list[str]:
    """``count`` small text documents of distinct content, uploaded one after another: their ids, oldest first."""
    return [
        (await upload_created(api, kb_id, f"doc-{i}.txt", f"document number {i}".encode())).json()["id"]
        for i in range(count)
    ]


async def fetch_all(settings: Settings, sql: str, **params: Any) -> list[dict[str, Any]]:
    """One raw statement on a connection of its own (``pipeline_helpers.fetch``: rows, or [] without rows)."""
    db = open_db(settings, max_connections=1)
    try:
        return await fetch(db, sql, **params)
    finally:
        await db.dispose()


async def object_keys(settings: Settings) -> list[str]:
    store = ObjectStore.from_settings(settings)
    await store.ensure_bucket()
    return [o.key for o in await store.list("kb/")]


def assert_error_shape(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}, body
    assert body["error"]["code"] == code, body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    return dict(body["error"])
