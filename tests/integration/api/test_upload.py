"""The upload path against real Postgres and a real S3 server."""

from __future__ import annotations

import hashlib
from pathlib import Path

import httpx
import jsonschema
import pytest

from shared.events import event_schema
from shared.settings import Settings
from tests.support.api_helpers import assert_error_shape, create_kb, fetch_all, object_keys, upload, upload_created

TEXT = b"Kbingest stores every upload exactly once.\n" * 20


async def test_upload_commits_row_event_and_object(api: httpx.AsyncClient, settings: Settings) -> None:
    kb = await create_kb(api)
    response = await upload_created(api, kb, "notes.txt", TEXT)
    doc = response.json()
    assert response.headers["location"] == f"/v1/documents/{doc['id']}"
    assert doc["status"] == "queued" and doc["attempts"] == 0 and doc["error"] is None
    assert doc["media_type"] == "text/plain"
    assert doc["size_bytes"] == len(TEXT)
    assert doc["sha256"] == hashlib.sha256(TEXT).hexdigest()
    for field in (
        "stage",
        "priority",
        "max_attempts",
        "chunk_count",
        "version",
        "batch_id",
        "created_at",
        "updated_at",
        "heartbeat_at",
        "processed_at",
        "knowledge_base_id",
        "filename",
    ):
        assert field in doc

    events = await fetch_all(settings, "SELECT type, aggregate_id, payload FROM outbox ORDER BY seq")
    assert [e["type"] for e in events] == ["document.uploaded"]
    envelope = events[0]["payload"]
    jsonschema.validate(envelope, event_schema("document.uploaded"), format_checker=jsonschema.FormatChecker())
    assert envelope["subject"] == doc["id"] and envelope["data"]["document_id"] == doc["id"]
    assert await object_keys(settings) == [f"kb/{kb}/{doc['id']}"]

    fetched = await api.get(f"/v1/documents/{doc['id']}")
    assert fetched.status_code == 200 and fetched.json()["id"] == doc["id"]
    content = await api.get(f"/v1/documents/{doc['id']}/content")
    assert content.status_code == 200 and content.content == TEXT


@pytest.mark.parametrize(
    ("path", "media_type"),
    [
        ("pdf/fake-memo.pdf", "application/pdf"),
        ("docx/docx-tables.docx", "application/vnd.openxmlformats-officedocument.wordprocessingml.document"),
        ("pptx/fake-power-point.pptx", "application/vnd.openxmlformats-officedocument.presentationml.presentation"),
        ("xlsx/stanley-cups.xlsx", "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"),
        ("csv/stanley-cups.csv", "text/csv"),
        ("html/fake-html-cp1252.html", "text/html"),
        ("md/simple-table.md", "text/markdown"),
        ("txt/fake-text-utf-16.txt", "text/plain"),
        ("eml/family-day.eml", "message/rfc822"),
    ],
)
async def test_media_type_detected_from_real_files(
    api: httpx.AsyncClient, corpus: Path, path: str, media_type: str
) -> None:
    kb = await create_kb(api)
    doc = (await upload_created(api, kb, Path(path).name, (corpus / path).read_bytes())).json()
    assert doc["media_type"] == media_type


async def test_pdf_renamed_to_txt_is_still_a_pdf(api: httpx.AsyncClient, corpus: Path) -> None:
    kb = await create_kb(api)
    response = await upload(api, kb, "memo.txt", (corpus / "pdf/fake-memo.pdf").read_bytes())
    assert response.json()["media_type"] == "application/pdf"


async def test_too_large_is_413_and_stores_nothing(api: httpx.AsyncClient, settings: Settings) -> None:
    kb = await create_kb(api)
    response = await upload(api, kb, "big.txt", b"a" * (settings.max_upload_bytes + 1))
    assert_error_shape(response, 413, "file_too_large")
    assert await object_keys(settings) == []
    assert await fetch_all(settings, "SELECT id FROM documents") == []
    assert await fetch_all(settings, "SELECT id FROM outbox") == []


async def test_unsupported_media_type_is_415(api: httpx.AsyncClient, corpus: Path, settings: Settings) -> None:
    kb = await create_kb(api)
    response = await upload(api, kb, "cantina.wav", (corpus / "unsupported/cantina-band-3s.wav").read_bytes())
    assert_error_shape(response, 415, "unsupported_media_type")
    assert await object_keys(settings) == []


async def test_empty_file_is_422(api: httpx.AsyncClient, settings: Settings) -> None:
    kb = await create_kb(api)
    assert_error_shape(await upload(api, kb, "empty.txt", b""), 422, "empty_file")
    assert await fetch_all(settings, "SELECT id FROM documents") == []


async def test_missing_file_field_and_bad_priority_are_422(api: httpx.AsyncClient) -> None:
    kb = await create_kb(api)
    response = await api.post(f"/v1/knowledge-bases/{kb}/documents", data={"x": "y"}, files={"other": ("a", b"a")})
    assert_error_shape(response, 422, "validation_error")
    response = await upload(api, kb, "a.txt", TEXT, data={"priority": "urgent"})
    assert_error_shape(response, 422, "validation_error")
    response = await upload(api, kb, "a.txt", TEXT, data={"priority": "high"})
    assert response.status_code == 201 and response.json()["priority"] == "high"


async def test_unknown_kb_is_404(api: httpx.AsyncClient) -> None:
    response = await upload(api, "00000000-0000-0000-0000-000000000000", "a.txt", TEXT)
    assert_error_shape(response, 404, "not_found")
    assert_error_shape(await api.get("/v1/knowledge-bases/not-a-uuid"), 422, "validation_error")


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("../../etc/passwd", "passwd"),
        ("..\\..\\windows\\system32\\evil.txt", "evil.txt"),
        ("/abs/path/file.txt", "file.txt"),
        ("..", "upload"),
    ],
)
async def test_path_traversal_filenames_are_sanitized(
    api: httpx.AsyncClient, settings: Settings, raw: str, expected: str
) -> None:
    kb = await create_kb(api)
    doc = (await upload_created(api, kb, raw, TEXT + hashlib.sha256(raw.encode()).hexdigest().encode())).json()
    assert doc["filename"] == expected
    assert await object_keys(settings) == [f"kb/{kb}/{doc['id']}"]


async def test_control_characters_in_raw_filename_are_removed(api: httpx.AsyncClient) -> None:
    kb = await create_kb(api)
    boundary = "kbtestboundary"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="bad\x07name\x1b.txt"\r\n'
            f"Content-Type: text/plain\r\n\r\n"
        ).encode()
        + TEXT
        + f"\r\n--{boundary}--\r\n".encode()
    )
    response = await api.post(
        f"/v1/knowledge-bases/{kb}/documents",
        content=body,
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    assert response.status_code == 201, response.text
    assert response.json()["filename"] == "badname.txt"


async def test_malformed_multipart_is_422(api: httpx.AsyncClient) -> None:
    kb = await create_kb(api)
    response = await api.post(
        f"/v1/knowledge-bases/{kb}/documents",
        content=b"--x\r\ngarbage",
        headers={"Content-Type": "multipart/form-data; boundary=x"},
    )
    assert response.status_code == 422
    response = await api.post(f"/v1/knowledge-bases/{kb}/documents", json={"file": "x"})
    assert_error_shape(response, 422, "validation_error")


async def test_duplicate_name_and_content_are_409_with_existing_document(
    api: httpx.AsyncClient, settings: Settings
) -> None:
    kb = await create_kb(api)
    first = (await upload(api, kb, "a.txt", TEXT)).json()
    same_name = assert_error_shape(await upload(api, kb, "a.txt", TEXT + b"changed"), 409, "duplicate_document")
    assert same_name["document_id"] == first["id"] and same_name["status"] == "queued"
    same_content = assert_error_shape(await upload(api, kb, "b.txt", TEXT), 409, "duplicate_content")
    assert same_content["document_id"] == first["id"]
    assert len(await object_keys(settings)) == 1
    other_kb = await create_kb(api)
    assert (await upload(api, other_kb, "a.txt", TEXT)).status_code == 201


async def test_idempotency_key_replays_the_first_response(api: httpx.AsyncClient, settings: Settings) -> None:
    kb = await create_kb(api)
    headers = {"Idempotency-Key": "upload-1"}
    first = await upload(api, kb, "a.txt", TEXT, headers=headers)
    again = await upload(api, kb, "a.txt", TEXT, headers=headers)
    assert first.status_code == again.status_code == 201
    assert again.json() == first.json()
    assert again.headers["location"] == first.headers["location"]
    assert len(await fetch_all(settings, "SELECT id FROM documents")) == 1
    assert len(await fetch_all(settings, "SELECT id FROM outbox")) == 1
    reused = await upload(api, kb, "other.txt", b"different", headers=headers)
    assert_error_shape(reused, 422, "idempotency_key_reused")


async def test_retry_of_queued_document_is_409_and_delete_is_202(api: httpx.AsyncClient, settings: Settings) -> None:
    kb = await create_kb(api)
    doc = (await upload(api, kb, "a.txt", TEXT)).json()
    assert_error_shape(await api.post(f"/v1/documents/{doc['id']}/retry"), 409, "not_retryable")
    deleted = await api.delete(f"/v1/documents/{doc['id']}")
    assert deleted.status_code == 202 and deleted.json()["status"] == "deleting"
    assert (await api.get(f"/v1/documents/{doc['id']}")).json()["status"] == "deleting"
    types = [e["type"] for e in await fetch_all(settings, "SELECT type FROM outbox ORDER BY seq")]
    assert types == ["document.uploaded", "document.delete_requested"]
    assert (await api.delete(f"/v1/documents/{doc['id']}")).status_code == 202  # idempotent
    assert_error_shape(await api.delete("/v1/documents/00000000-0000-0000-0000-000000000000"), 404, "not_found")


async def test_retry_of_failed_document_requeues_with_fresh_attempts(
    api: httpx.AsyncClient, settings: Settings
) -> None:
    kb = await create_kb(api)
    doc = (await upload(api, kb, "a.txt", TEXT)).json()
    await fetch_all(
        settings,
        "UPDATE documents SET status='failed', attempts=3, error=CAST(:err AS jsonb) WHERE id=:id RETURNING id",
        id=doc["id"],
        err='{"code": "embedder_unavailable", "message": "down", "retryable": true}',
    )
    failed = (await api.get(f"/v1/documents/{doc['id']}")).json()
    assert failed["error"] == {"code": "embedder_unavailable", "message": "down", "retryable": True, "cause": None}
    retried = await api.post(f"/v1/documents/{doc['id']}/retry")
    assert retried.status_code == 202
    assert retried.json()["status"] == "queued" and retried.json()["attempts"] == 0
    types = [e["type"] for e in await fetch_all(settings, "SELECT type FROM outbox ORDER BY seq")]
    assert types[-1] == "document.requeued"
