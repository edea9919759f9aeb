"""Replace in place through the API (issue 15): PUT …/content, on_conflict=replace, versions, build rows hidden.

Real Postgres and S3, no processor: a document is made ready, and a build failed, by writing the
rows the processor would (the processing itself is covered by tests/e2e/test_replace_e2e.py).
"""

from __future__ import annotations

import hashlib
import json
import uuid
from typing import Any

import httpx
import jsonschema
import pytest
from sqlalchemy import text

from services.api.queries import LIST_DOCUMENTS
from shared.db import worker_database
from shared.events import event_schema
from shared.settings import Settings
from tests.support.api_helpers import assert_error_shape, create_kb, fetch_all, object_keys, upload

OLD = b"The first version of the handbook says the office opens at nine.\n" * 20
NEW = b"The second version of the handbook says the office opens at ten.\n" * 20
NEWER = b"The third version of the handbook says the office opens at eleven.\n" * 20
ENCRYPTED_ERROR = {"code": "pdf_encrypted", "message": "the PDF is encrypted", "retryable": False}


async def put_content(
    api: httpx.AsyncClient,
    document_id: str,
    content: bytes,
    *,
    filename: str = "handbook.txt",
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    return await api.put(
        f"/v1/documents/{document_id}/content",
        files={"file": (filename, content, "application/octet-stream")},
        headers=headers,
    )


async def make_ready(settings: Settings, document_id: str) -> None:
    """What the processor commits when the first content is indexed."""
    await fetch_all(
        settings,
        "UPDATE documents SET status = 'ready', chunk_count = 3, processed_at = now() WHERE id = :id RETURNING id",
        id=uuid.UUID(document_id),
    )
    await fetch_all(
        settings,
        "UPDATE document_versions SET status = 'active', activated_at = now() "
        "WHERE document_id = :id AND version = 1 RETURNING version",
        id=uuid.UUID(document_id),
    )


async def builds_of(settings: Settings, document_id: str) -> list[dict[str, Any]]:
    return await fetch_all(
        settings,
        "SELECT id, status, content_version, object_key FROM documents WHERE parent_id = :id ORDER BY content_version",
        id=uuid.UUID(document_id),
    )


async def ready_document(api: httpx.AsyncClient, settings: Settings, kb: str) -> dict[str, Any]:
    created = await upload(api, kb, "handbook.txt", OLD)
    assert created.status_code == 201, created.text
    await make_ready(settings, created.json()["id"])
    return dict(created.json())


async def test_put_on_a_ready_document_processes_the_new_version_beside_it(
    api: httpx.AsyncClient, settings: Settings
) -> None:
    kb = await create_kb(api)
    doc = await ready_document(api, settings, kb)
    response = await put_content(api, doc["id"], NEW, filename="handbook-v2.txt")
    assert response.status_code == 202, response.text
    body = response.json()
    # The active version is unchanged until the new one is ready; the replacement shows as pending.
    assert body["id"] == doc["id"] and body["status"] == "ready" and body["sha256"] == doc["sha256"]
    assert body["content_version"] == 1
    assert body["pending_version"] == {"version": 2, "status": "queued", "stage": None, "error": None}
    assert response.headers["location"] == f"/v1/documents/{doc['id']}"

    (build,) = await builds_of(settings, doc["id"])
    assert build["status"] == "queued" and build["content_version"] == 2
    assert sorted(await object_keys(settings)) == sorted([f"kb/{kb}/{doc['id']}", build["object_key"]])

    events = await fetch_all(settings, "SELECT type, payload FROM outbox ORDER BY seq")
    assert [e["type"] for e in events] == ["document.uploaded", "document.version_created"]
    created = events[-1]["payload"]
    jsonschema.validate(created, event_schema(created["type"]), format_checker=jsonschema.FormatChecker())
    assert created["data"]["document_id"] == doc["id"] and created["data"]["content_version"] == 2
    assert created["data"]["build_id"] == str(build["id"])

    versions = (await api.get(f"/v1/documents/{doc['id']}/versions")).json()["items"]
    assert [(v["version"], v["status"]) for v in versions] == [(2, "pending"), (1, "active")]
    assert versions[0]["sha256"] == hashlib.sha256(NEW).hexdigest() and versions[0]["size_bytes"] == len(NEW)
    assert versions[1]["activated_at"] is not None and versions[0]["activated_at"] is None
    assert (await api.get(f"/v1/documents/{doc['id']}/content")).content == OLD
    assert (await api.get(f"/v1/documents/{doc['id']}/content", params={"version": 2})).content == NEW
    assert (await api.get(f"/v1/documents/{doc['id']}/content", params={"version": 1})).content == OLD


async def test_identical_content_is_a_200_noop(api: httpx.AsyncClient, settings: Settings) -> None:
    kb = await create_kb(api)
    doc = await ready_document(api, settings, kb)
    same = await put_content(api, doc["id"], OLD)
    assert same.status_code == 200, same.text
    assert same.json()["content_version"] == 1 and same.json()["pending_version"] is None
    pending = await put_content(api, doc["id"], NEW)
    assert pending.status_code == 202
    # The pending version's content again: nothing changes either.
    again = await put_content(api, doc["id"], NEW)
    assert again.status_code == 200 and again.json()["pending_version"]["version"] == 2
    assert len(await builds_of(settings, doc["id"])) == 1
    assert len(await object_keys(settings)) == 2
    types = [e["type"] for e in await fetch_all(settings, "SELECT type FROM outbox ORDER BY seq")]
    assert types == ["document.uploaded", "document.version_created"]


async def test_a_newer_replacement_supersedes_the_pending_one(api: httpx.AsyncClient, settings: Settings) -> None:
    kb = await create_kb(api)
    doc = await ready_document(api, settings, kb)
    assert (await put_content(api, doc["id"], NEW)).status_code == 202
    newer = await put_content(api, doc["id"], NEWER)
    assert newer.status_code == 202, newer.text
    assert newer.json()["pending_version"]["version"] == 3
    first, second = await builds_of(settings, doc["id"])
    assert (first["status"], second["status"]) == ("deleting", "queued")
    versions = (await api.get(f"/v1/documents/{doc['id']}/versions")).json()["items"]
    assert [(v["version"], v["status"]) for v in versions] == [(3, "pending"), (2, "superseded"), (1, "active")]
    # The superseded version's file was deleted after the commit; asking for it is 410.
    assert first["object_key"] not in await object_keys(settings)
    assert_error_shape(await api.get(f"/v1/documents/{doc['id']}/content?version=2"), 410, "version_purged")


async def test_a_failed_replacement_shows_on_the_document(api: httpx.AsyncClient, settings: Settings) -> None:
    kb = await create_kb(api)
    doc = await ready_document(api, settings, kb)
    assert (await put_content(api, doc["id"], NEW)).status_code == 202
    (build,) = await builds_of(settings, doc["id"])
    await fetch_all(
        settings,
        "UPDATE documents SET status = 'failed', error = CAST(:error AS jsonb) WHERE id = :id RETURNING id",
        id=build["id"],
        error=json.dumps(ENCRYPTED_ERROR),
    )
    fetched = (await api.get(f"/v1/documents/{doc['id']}")).json()
    assert fetched["status"] == "ready" and fetched["content_version"] == 1
    failed = {"version": 2, "status": "failed", "stage": None, "error": {**ENCRYPTED_ERROR, "cause": None}}
    assert fetched["pending_version"] == failed
    listed = (await api.get(f"/v1/knowledge-bases/{kb}/documents")).json()["items"]
    assert [d["pending_version"] for d in listed] == [fetched["pending_version"]]


async def test_put_on_a_document_never_ready_repoints_it(api: httpx.AsyncClient, settings: Settings) -> None:
    kb = await create_kb(api)
    doc = (await upload(api, kb, "handbook.txt", OLD)).json()
    response = await put_content(api, doc["id"], NEW)
    assert response.status_code == 202, response.text
    body = response.json()
    assert body["status"] == "queued" and body["content_version"] == 2 and body["pending_version"] is None
    assert body["sha256"] == hashlib.sha256(NEW).hexdigest() and body["queue_position"] == 0
    assert await builds_of(settings, doc["id"]) == []
    # The first content's file is obsolete and deleted; the document reads the new one.
    (key,) = await object_keys(settings)
    assert key != f"kb/{kb}/{doc['id']}"
    assert (await api.get(f"/v1/documents/{doc['id']}/content")).content == NEW
    versions = (await api.get(f"/v1/documents/{doc['id']}/versions")).json()["items"]
    assert [(v["version"], v["status"]) for v in versions] == [(2, "pending"), (1, "superseded")]


async def test_refusals_store_nothing(api: httpx.AsyncClient, settings: Settings) -> None:
    kb = await create_kb(api)
    doc = await ready_document(api, settings, kb)
    other = (await upload(api, kb, "other.txt", NEW)).json()
    before = sorted(await object_keys(settings))

    conflict = assert_error_shape(await put_content(api, doc["id"], NEW), 409, "duplicate_content")
    assert conflict["document_id"] == other["id"]
    assert_error_shape(await put_content(api, doc["id"], b""), 422, "empty_file")
    assert_error_shape(await put_content(api, doc["id"], b"\x00\x01\x02binary" * 100), 415, "unsupported_media_type")
    too_big = b"x" * (settings.max_upload_bytes + 1)
    assert_error_shape(await put_content(api, doc["id"], too_big), 413, "file_too_large")
    missing = api.put(f"/v1/documents/{doc['id']}/content", files={"other": ("a.txt", NEW, "text/plain")})
    assert_error_shape(await missing, 422, "validation_error")

    assert sorted(await object_keys(settings)) == before
    assert await builds_of(settings, doc["id"]) == []


async def test_missing_deleting_and_build_rows_are_refused(api: httpx.AsyncClient, settings: Settings) -> None:
    kb = await create_kb(api)
    doc = await ready_document(api, settings, kb)
    assert_error_shape(await put_content(api, str(uuid.uuid4()), NEW), 404, "not_found")
    anonymous = await put_content(api, doc["id"], NEW, headers={"Authorization": ""})
    assert_error_shape(anonymous, 401, "unauthorized")

    assert (await put_content(api, doc["id"], NEW)).status_code == 202
    build_id = str((await builds_of(settings, doc["id"]))[0]["id"])
    # A build row is no document: every route answers 404 for its id.
    assert_error_shape(await api.get(f"/v1/documents/{build_id}"), 404, "not_found")
    assert_error_shape(await put_content(api, build_id, NEWER), 404, "not_found")
    assert_error_shape(await api.get(f"/v1/documents/{build_id}/versions"), 404, "not_found")
    assert_error_shape(await api.get(f"/v1/documents/{build_id}/content"), 404, "not_found")
    assert_error_shape(await api.post(f"/v1/documents/{build_id}/retry"), 404, "not_found")
    assert_error_shape(await api.delete(f"/v1/documents/{build_id}"), 404, "not_found")
    listed = (await api.get(f"/v1/knowledge-bases/{kb}/documents")).json()["items"]
    assert [d["id"] for d in listed] == [doc["id"]]
    counts = (await api.get(f"/v1/knowledge-bases/{kb}")).json()["counts"]
    assert counts["ready"] == 1 and counts["queued"] == 0

    assert (await api.delete(f"/v1/documents/{doc['id']}")).status_code == 202
    keys = sorted(await object_keys(settings))
    deleting = assert_error_shape(await put_content(api, doc["id"], NEWER), 409, "document_deleting")
    assert deleting["document_id"] == doc["id"]
    assert sorted(await object_keys(settings)) == keys

    await fetch_all(
        settings, "UPDATE documents SET deleted_at = now() WHERE id = :id RETURNING id", id=uuid.UUID(doc["id"])
    )
    assert_error_shape(await put_content(api, doc["id"], NEWER), 404, "not_found")


async def test_unknown_and_purged_versions(api: httpx.AsyncClient, settings: Settings) -> None:
    kb = await create_kb(api)
    doc = await ready_document(api, settings, kb)
    not_found = assert_error_shape(
        await api.get(f"/v1/documents/{doc['id']}/content?version=7"), 404, "version_not_found"
    )
    assert not_found["version"] == 7
    assert_error_shape(await api.get(f"/v1/documents/{doc['id']}/content?version=0"), 422, "validation_error")
    await fetch_all(
        settings,
        "UPDATE document_versions SET status = 'purged' WHERE document_id = :id RETURNING version",
        id=uuid.UUID(doc["id"]),
    )
    purged = assert_error_shape(await api.get(f"/v1/documents/{doc['id']}/content?version=1"), 410, "version_purged")
    assert purged["version"] == 1


async def test_idempotency_key_replays_a_replacement(api: httpx.AsyncClient, settings: Settings) -> None:
    kb = await create_kb(api)
    doc = await ready_document(api, settings, kb)
    headers = {"Idempotency-Key": "replace-1"}
    first = await put_content(api, doc["id"], NEW, headers=headers)
    again = await put_content(api, doc["id"], NEW, headers=headers)
    assert first.status_code == again.status_code == 202
    assert again.headers["idempotent-replayed"] == "true"
    assert again.json()["pending_version"] == first.json()["pending_version"]
    assert len(await builds_of(settings, doc["id"])) == 1 and len(await object_keys(settings)) == 2
    assert_error_shape(await put_content(api, doc["id"], NEWER, headers=headers), 422, "idempotency_key_reused")


async def test_upload_on_conflict_replace(api: httpx.AsyncClient, settings: Settings) -> None:
    kb = await create_kb(api)
    doc = await ready_document(api, settings, kb)
    url = f"/v1/knowledge-bases/{kb}/documents"
    assert_error_shape(await upload(api, kb, "handbook.txt", NEW), 409, "duplicate_document")

    def send(content: bytes, on_conflict: str) -> Any:
        files = {"file": ("handbook.txt", content, "text/plain")}
        return api.post(url, files=files, params={"on_conflict": on_conflict})

    assert_error_shape(await send(NEW, "overwrite"), 422, "validation_error")
    assert_error_shape(await send(NEW, "reject"), 409, "duplicate_document")
    replaced = await send(NEW, "replace")
    assert replaced.status_code == 202, replaced.text
    assert replaced.json()["id"] == doc["id"] and replaced.json()["pending_version"]["version"] == 2
    unchanged = await send(NEW, "replace")
    assert unchanged.status_code == 200 and unchanged.json()["id"] == doc["id"]
    fresh = await api.post(url, files={"file": ("fresh.txt", NEWER, "text/plain")}, params={"on_conflict": "replace"})
    assert fresh.status_code == 201 and fresh.json()["content_version"] == 1 and fresh.json()["pending_version"] is None
    # A taken name whose new content is another document's: still refused.
    taken = assert_error_shape(await send(NEWER, "replace"), 409, "duplicate_content")
    assert taken["document_id"] == fresh.json()["id"]
    assert len(await builds_of(settings, doc["id"])) == 1


@pytest.mark.parametrize("route", ["/v1/documents/{id}/versions", "/v1/documents/{id}/content"])
async def test_openapi_documents_the_version_routes(api: httpx.AsyncClient, route: str) -> None:
    spec = (await api.get("/openapi.json")).json()
    assert route.replace("{id}", "{document_id}") in spec["paths"]
    schemas = spec["components"]["schemas"]
    document = schemas.get("Document") or schemas["Document-Output"]
    assert {"content_version", "pending_version"} <= set(document["properties"])
    put = spec["paths"]["/v1/documents/{document_id}/content"]["put"]
    form = put["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert form["required"] == ["file"] and set(form["properties"]) == {"file"}
    assert {"200", "202", "404", "409", "413", "415"} <= set(put["responses"])
    upload_params = spec["paths"]["/v1/knowledge-bases/{kb_id}/documents"]["post"]["parameters"]
    assert "on_conflict" in {p["name"] for p in upload_params}


async def test_the_error_catalogue_explains_the_version_codes(api: httpx.AsyncClient) -> None:
    request = (await api.get("/v1/errors")).json()["request"]
    assert {"document_deleting", "version_not_found", "version_purged", "duplicate_content"} <= set(request)


async def test_a_page_of_documents_is_one_query_on_indexes(settings: Settings) -> None:
    """The list's pending_version is a lateral lookup by parent (ix_documents_parent), not a query per document."""
    db = worker_database(settings.database_url, service="test", max_connections=1)
    try:
        async with db.transaction() as conn:
            await conn.execute(text("SET LOCAL enable_seqscan = off"))
            params = {"kb_id": uuid.uuid4(), "status": None, "limit": 51}
            plan = "\n".join(r[0] for r in await conn.execute(text(f"EXPLAIN {LIST_DOCUMENTS.text}"), params))
    finally:
        await db.dispose()
    assert "ix_documents_kb_created" in plan and "ix_documents_parent" in plan, plan
