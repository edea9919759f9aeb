"""Auth (401/403, scoped keys) and knowledge-base routes."""

from __future__ import annotations

import httpx

from shared.apikeys import generate_key, store_key
from shared.db import worker_database
from shared.settings import Settings
from tests.support.api_helpers import assert_error_shape, create_kb, fetch_all, upload


async def _scoped_key(settings: Settings, kb_ids: list[str] | None) -> str:
    import uuid

    key = generate_key()
    db = worker_database(settings.database_url, service="test", max_connections=1)
    async with db.transaction() as conn:
        await store_key(conn, key, name="scoped", knowledge_base_ids=[uuid.UUID(k) for k in kb_ids] if kb_ids else None)
    await db.dispose()
    return key


async def test_missing_and_invalid_keys_are_401(api: httpx.AsyncClient) -> None:
    anonymous = {"Authorization": ""}
    assert_error_shape(await api.get("/v1/knowledge-bases", headers=anonymous), 401, "unauthorized")
    bad = {"Authorization": "Bearer kbi_not_a_real_key"}
    assert_error_shape(await api.get("/v1/knowledge-bases", headers=bad), 401, "invalid_api_key")
    assert (await api.get("/healthz", headers=anonymous)).status_code == 200
    assert (await api.get("/readyz", headers=anonymous)).status_code == 200
    assert (await api.get("/metrics", headers=anonymous)).status_code == 200


async def test_scoped_key_sees_only_its_kbs(api: httpx.AsyncClient, settings: Settings) -> None:
    mine, other = await create_kb(api), await create_kb(api)
    key = await _scoped_key(settings, [mine])
    headers = {"Authorization": f"Bearer {key}"}
    listed = await api.get("/v1/knowledge-bases", headers=headers)
    assert [kb["id"] for kb in listed.json()["items"]] == [mine]
    assert (await upload(api, mine, "a.txt", b"hello world", headers=headers)).status_code == 201
    assert_error_shape(await upload(api, other, "a.txt", b"hello world", headers=headers), 403, "forbidden")
    assert_error_shape(await api.get(f"/v1/knowledge-bases/{other}", headers=headers), 403, "forbidden")
    assert_error_shape(await api.post("/v1/knowledge-bases", json={"name": "x"}, headers=headers), 403, "forbidden")


async def test_revoked_key_is_401(api: httpx.AsyncClient, settings: Settings) -> None:
    key = await _scoped_key(settings, None)
    headers = {"Authorization": f"Bearer {key}"}
    assert (await api.get("/v1/knowledge-bases", headers=headers)).status_code == 200
    await fetch_all(settings, "UPDATE api_keys SET revoked_at = now() WHERE name = 'scoped' RETURNING id")
    assert_error_shape(await api.get("/v1/knowledge-bases", headers=headers), 401, "invalid_api_key")


async def test_keys_are_stored_hashed(api: httpx.AsyncClient, settings: Settings, api_key: str) -> None:
    rows = await fetch_all(settings, "SELECT key_hash, prefix FROM api_keys")
    assert rows and all(api_key not in (r["key_hash"] + r["prefix"]) for r in rows)


async def test_kb_create_list_get_delete(api: httpx.AsyncClient, settings: Settings) -> None:
    created = await api.post("/v1/knowledge-bases", json={"name": "Handbooks"})
    assert created.status_code == 201
    kb = created.json()
    assert created.headers["location"] == f"/v1/knowledge-bases/{kb['id']}"
    assert_error_shape(await api.post("/v1/knowledge-bases", json={"name": "Handbooks"}), 409, "duplicate_name")
    assert_error_shape(await api.post("/v1/knowledge-bases", json={"name": ""}), 422, "validation_error")
    assert_error_shape(await api.post("/v1/knowledge-bases", json={}), 422, "validation_error")
    await upload(api, kb["id"], "a.txt", b"some text here")
    got = (await api.get(f"/v1/knowledge-bases/{kb['id']}")).json()
    assert got["counts"]["queued"] == 1 and got["name"] == "Handbooks"
    assert kb["id"] in [k["id"] for k in (await api.get("/v1/knowledge-bases")).json()["items"]]

    deleted = await api.delete(f"/v1/knowledge-bases/{kb['id']}")
    assert deleted.status_code == 202
    assert_error_shape(await api.get(f"/v1/knowledge-bases/{kb['id']}"), 404, "not_found")
    assert_error_shape(await api.delete(f"/v1/knowledge-bases/{kb['id']}"), 404, "not_found")
    types = [e["type"] for e in await fetch_all(settings, "SELECT type FROM outbox ORDER BY seq")]
    assert types == ["document.uploaded", "document.delete_requested", "knowledge_base.deleted"]
    assert (await api.post("/v1/knowledge-bases", json={"name": "Handbooks"})).status_code == 201


async def test_unknown_route_and_method_use_the_error_envelope(api: httpx.AsyncClient) -> None:
    assert_error_shape(await api.get("/v1/nope"), 404, "not_found")
    assert_error_shape(await api.put("/v1/knowledge-bases"), 405, "method_not_allowed")
