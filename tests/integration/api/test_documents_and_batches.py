"""Listing with cursor paging, and batches with per-file results."""

from __future__ import annotations

from pathlib import Path

import httpx

from shared.settings import Settings
from tests.support.api_helpers import assert_error_shape, create_kb, fetch_all, upload, upload_documents


async def test_list_is_newest_first_with_cursor_paging_and_status_filter(api: httpx.AsyncClient) -> None:
    kb = await create_kb(api)
    ids = await upload_documents(api, kb, 5)
    seen: list[str] = []
    cursor = None
    while True:
        params = {"limit": 2} | ({"cursor": cursor} if cursor else {})
        page = (await api.get(f"/v1/knowledge-bases/{kb}/documents", params=params)).json()
        seen += [d["id"] for d in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == list(reversed(ids))
    queued = (await api.get(f"/v1/knowledge-bases/{kb}/documents", params={"status": "queued"})).json()
    assert len(queued["items"]) == 5
    ready = (await api.get(f"/v1/knowledge-bases/{kb}/documents", params={"status": "ready"})).json()
    assert ready == {"items": [], "next_cursor": None}
    bad = await api.get(f"/v1/knowledge-bases/{kb}/documents", params={"status": "done"})
    assert_error_shape(bad, 422, "validation_error")
    assert_error_shape(
        await api.get(f"/v1/knowledge-bases/{kb}/documents", params={"cursor": "zz"}), 422, "invalid_cursor"
    )


async def test_batch_reports_each_file(api: httpx.AsyncClient, settings: Settings, corpus: Path) -> None:
    kb = await create_kb(api)
    await upload(api, kb, "already.txt", b"already here")
    files = [
        ("file", ("memo.pdf", (corpus / "pdf/fake-memo.pdf").read_bytes(), "application/pdf")),
        ("file", ("notes.md", b"# Notes\n\nSome markdown text.", "text/markdown")),
        ("file", ("already.txt", b"a different body", "text/plain")),
        ("file", ("empty.txt", b"", "text/plain")),
        ("file", ("song.wav", (corpus / "unsupported/cantina-band-3s.wav").read_bytes(), "audio/wav")),
        ("file", ("big.txt", b"x" * (settings.max_upload_bytes + 10), "text/plain")),
    ]
    response = await api.post(f"/v1/knowledge-bases/{kb}/batches", files=files)
    assert response.status_code == 201, response.text
    batch = response.json()
    codes = [(r["filename"], r["status_code"], (r["error"] or {}).get("code")) for r in batch["results"]]
    assert codes == [
        ("memo.pdf", 201, None),
        ("notes.md", 201, None),
        ("already.txt", 409, "duplicate_document"),
        ("empty.txt", 422, "empty_file"),
        ("song.wav", 415, "unsupported_media_type"),
        ("big.txt", 413, "file_too_large"),
    ]
    assert batch["total"] == 6
    progress = (await api.get(f"/v1/batches/{batch['id']}")).json()
    assert progress["queued"] == 2 and progress["percent"] == 0.0
    cancelled = await api.post(f"/v1/batches/{batch['id']}/cancel")
    assert cancelled.status_code == 202
    progress = (await api.get(f"/v1/batches/{batch['id']}")).json()
    assert progress["failed"] == 2 and progress["percent"] == 100.0 and progress["cancelled_at"]
    docs = await fetch_all(settings, "SELECT error FROM documents WHERE batch_id = :b", b=batch["id"])
    assert {d["error"]["code"] for d in docs} == {"cancelled"}
    assert (await api.post(f"/v1/batches/{batch['id']}/retry-failed")).status_code == 202
    progress = (await api.get(f"/v1/batches/{batch['id']}")).json()
    assert progress["queued"] == 2
    assert_error_shape(await api.get("/v1/batches/00000000-0000-0000-0000-000000000000"), 404, "not_found")
