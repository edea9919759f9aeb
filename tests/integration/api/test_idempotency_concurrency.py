"""Idempotency-Key under concurrency and its retention (issue 12, section 3)."""

from __future__ import annotations

import asyncio
from collections import Counter

import httpx

from shared.settings import Settings
from tests.support.api_helpers import create_kb, fetch_all, object_keys, upload

TEXT = b"One key, one document, however many times the client retries at once.\n" * 30


async def test_concurrent_uploads_with_one_key_replay_the_first(api: httpx.AsyncClient, settings: Settings) -> None:
    kb = await create_kb(api)
    headers = {"Idempotency-Key": "retry-storm"}
    responses = await asyncio.gather(*(upload(api, kb, "storm.txt", TEXT, headers=headers) for _ in range(10)))

    assert Counter(r.status_code for r in responses) == {201: 10}, [r.text for r in responses]
    replayed = [r for r in responses if r.headers.get("idempotent-replayed") == "true"]
    assert len(replayed) == 9
    assert len({r.json()["id"] for r in responses}) == 1
    assert {r.headers["location"] for r in responses} == {f"/v1/documents/{responses[0].json()['id']}"}
    document_id = responses[0].json()["id"]
    assert await object_keys(settings) == [f"kb/{kb}/{document_id}"]
    assert len(await fetch_all(settings, "SELECT id FROM documents")) == 1
    assert len(await fetch_all(settings, "SELECT id FROM outbox")) == 1


async def test_keys_past_the_retention_are_pruned_and_not_replayed(api: httpx.AsyncClient, settings: Settings) -> None:
    kb = await create_kb(api)
    first = await upload(api, kb, "old.txt", TEXT, headers={"Idempotency-Key": "old"})
    assert first.status_code == 201, first.text
    await fetch_all(
        settings,
        "UPDATE idempotency_keys SET created_at = now() - make_interval(secs => :age) RETURNING key",
        age=settings.idempotency_key_retention_s + 60,
    )
    # The same key, past its retention, names a new request: a fresh upload, not the old answer.
    again = await upload(api, kb, "new.txt", TEXT + b"new", headers={"Idempotency-Key": "old"})
    assert again.status_code == 201, again.text
    assert "idempotent-replayed" not in again.headers
    assert again.json()["id"] != first.json()["id"]
    other = await upload(api, kb, "other.txt", TEXT + b"other", headers={"Idempotency-Key": "other"})
    assert other.status_code == 201, other.text
    keys = await fetch_all(settings, "SELECT key, response->>'id' AS id FROM idempotency_keys ORDER BY key")
    assert keys == [{"key": "old", "id": again.json()["id"]}, {"key": "other", "id": other.json()["id"]}]


async def test_an_expired_key_is_pruned_by_the_next_keyed_upload(api: httpx.AsyncClient, settings: Settings) -> None:
    kb = await create_kb(api)
    for name in ("a", "b"):
        response = await upload(api, kb, f"{name}.txt", TEXT + name.encode(), headers={"Idempotency-Key": name})
        assert response.status_code == 201, response.text
    await fetch_all(
        settings,
        "UPDATE idempotency_keys SET created_at = now() - make_interval(secs => :age) WHERE key = 'a' RETURNING key",
        age=settings.idempotency_key_retention_s + 60,
    )
    response = await upload(api, kb, "c.txt", TEXT + b"c", headers={"Idempotency-Key": "c"})
    assert response.status_code == 201, response.text
    assert [r["key"] for r in await fetch_all(settings, "SELECT key FROM idempotency_keys ORDER BY key")] == ["b", "c"]
