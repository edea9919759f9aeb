"""Idempotency-Key under concurrency and its retention (issue 12, section 3)."""

from __future__ import annotations

import asyncio
from collections import Counter

import httpx

from shared.settings import Settings
from tests.support.api_helpers import create_kb, fetch_all, object_keys, upload, upload_created

TEXT = b"One key, one document, however many times the client retries at once.\n" * 30

# Moves the named keys' creation past the retention (:age seconds ago).
EXPIRE_KEYS = "UPDATE idempotency_keys SET created_at = now() - make_interval(secs => :age) WHERE key = ANY(:keys)"


async def _expire(settings: Settings, *keys: str) -> None:
    await fetch_all(settings, EXPIRE_KEYS, keys=list(keys), age=settings.idempotency_key_retention_s + 60)


async def _keyed_upload(api: httpx.AsyncClient, kb: str, name: str, key: str) -> httpx.Response:
    """An accepted upload of a file of its own, under Idempotency-Key ``key``."""
    return await upload_created(api, kb, f"{name}.txt", TEXT + name.encode(), headers={"Idempotency-Key": key})


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
    first = await _keyed_upload(api, kb, "old", "old")
    await _expire(settings, "old")
    # The same key, past its retention, names a new request: a fresh upload, not the old answer.
    again = await _keyed_upload(api, kb, "new", "old")
    assert "idempotent-replayed" not in again.headers
    assert again.json()["id"] != first.json()["id"]
    other = await _keyed_upload(api, kb, "other", "other")
    keys = await fetch_all(settings, "SELECT key, response->>'id' AS id FROM idempotency_keys ORDER BY key")
    assert keys == [{"key": "old", "id": again.json()["id"]}, {"key": "other", "id": other.json()["id"]}]


async def test_an_expired_key_is_pruned_by_the_next_keyed_upload(api: httpx.AsyncClient, settings: Settings) -> None:
    kb = await create_kb(api)
    for name in ("a", "b"):
        await _keyed_upload(api, kb, name, name)
    await _expire(settings, "a")
    await _keyed_upload(api, kb, "c", "c")
    assert [r["key"] for r in await fetch_all(settings, "SELECT key FROM idempotency_keys ORDER BY key")] == ["b", "c"]
