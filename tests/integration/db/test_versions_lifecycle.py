"""Content versions below the API on the real Postgres: replace_content, activation, failure, retry, delete.

docs/documents-change.md: a replacement is a hidden ``replace`` build row; its events speak for the
document; activation switches ``served_by`` in the transaction that marks the build ready.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import jsonschema
import pytest

from shared import lifecycle
from shared.db import Database
from shared.errors import DocumentError, ErrorCode, ProcessingError
from shared.events import event_schema
from shared.settings import Settings
from tests.support.pipeline_helpers import (
    claim,
    content_values,
    create_document,
    create_kb,
    execute,
    fetch,
    fetch_one,
    open_db,
    replace_content,
)

# The query search uses to keep a hit (services/api/routes/search.py, docs/documents-change.md).
SERVING_BUILDS = """
    SELECT b.id AS build_id FROM documents b JOIN documents d ON d.id = COALESCE(b.parent_id, b.id)
    WHERE b.id = ANY(:ids) AND b.status = 'ready'
      AND d.deleted_at IS NULL AND d.status = 'ready' AND COALESCE(d.served_by, d.id) = b.id
"""


@pytest.fixture
async def db(settings: Settings) -> AsyncIterator[Database]:
    database = open_db(settings, max_connections=4)
    yield database
    await database.dispose()


async def _ready(db: Database, row_id: uuid.UUID, chunks: int = 3) -> lifecycle.Ready:
    lease = await claim(db, row_id)
    async with db.transaction() as conn:
        assert await lifecycle.advance_stage(conn, lease, "indexing")
        ready = await lifecycle.mark_ready(conn, lease, chunk_count=chunks, retention=1)
    assert ready is not None
    return ready


async def _versions(db: Database, doc: uuid.UUID) -> dict[int, str]:
    rows = await fetch(db, "SELECT version, status FROM document_versions WHERE document_id = :id", id=doc)
    return {r["version"]: r["status"] for r in rows}


async def _events(db: Database, doc: uuid.UUID) -> list[dict[str, Any]]:
    rows = await fetch(db, "SELECT payload FROM outbox WHERE aggregate_id = :id ORDER BY seq", id=doc)
    return [r["payload"] for r in rows]


async def _build_of(db: Database, doc: uuid.UUID, version: int) -> dict[str, Any]:
    return await fetch_one(
        db, "SELECT * FROM documents WHERE parent_id = :id AND content_version = :v", id=doc, v=version
    )


async def _pending_replacement(db: Database, body: bytes) -> tuple[uuid.UUID, uuid.UUID, dict[str, Any]]:
    """A KB, its ready document, and the build row of the document's replacement by ``body`` (version 2, queued)."""
    kb = await create_kb(db)
    doc = await create_document(db, None, kb)
    await _ready(db, doc)
    await replace_content(db, doc, content_values(kb, body))
    return kb, doc, await _build_of(db, doc, 2)


async def test_leases_draw_versions_from_one_sequence(db: Database) -> None:
    kb = await create_kb(db)
    doc = await create_document(db, None, kb)
    assert await _versions(db, doc) == {1: "pending"}
    first = await claim(db, doc)
    async with db.transaction() as conn:
        assert await lifecycle.hand_back(conn, first, stage=None)
    second = await claim(db, doc)
    other = await claim(db, await create_document(db, None, kb))
    assert 0 < first.version < second.version < other.version


async def test_identical_content_is_a_noop_and_gone_or_deleting_documents_are_not_replaced(db: Database) -> None:
    kb = await create_kb(db)
    doc = await create_document(db, None, kb)
    row = await fetch_one(db, "SELECT sha256, object_key FROM documents WHERE id = :id", id=doc)
    same = content_values(kb, b"x") | {"sha256": row["sha256"]}
    assert (await replace_content(db, doc, same)).kind == "noop"
    assert (await replace_content(db, uuid.uuid4(), content_values(kb, b"y"))).kind == "gone"
    other = await create_document(db, None, kb)
    other_sha = (await fetch_one(db, "SELECT sha256 FROM documents WHERE id = :id", id=other))["sha256"]
    duplicate = await replace_content(db, doc, content_values(kb, b"z") | {"sha256": other_sha})
    assert duplicate.kind == "duplicate" and duplicate.document is not None and duplicate.document["id"] == other
    async with db.transaction() as conn:
        await lifecycle.request_delete(conn, doc)
    assert (await replace_content(db, doc, content_values(kb, b"y"))).kind == "deleting"
    assert await _versions(db, doc) == {1: "superseded"}


async def test_a_never_ready_document_takes_the_new_content_itself_and_fences_the_attempt(db: Database) -> None:
    kb = await create_kb(db)
    doc = await create_document(db, None, kb)
    old_key = (await fetch_one(db, "SELECT object_key FROM documents WHERE id = :id", id=doc))["object_key"]
    lease = await claim(db, doc)
    new = content_values(kb, b"second draft")

    outcome = await replace_content(db, doc, new)

    assert outcome.kind == "replaced" and outcome.version == 2 and outcome.obsolete_keys == [old_key]
    row = await fetch_one(db, "SELECT * FROM documents WHERE id = :id", id=doc)
    assert (row["status"], row["attempts"], row["content_version"]) == ("queued", 0, 2)
    assert row["sha256"] == new["sha256"] and row["object_key"] == new["object_key"]
    assert row["lease_epoch"] > lease.epoch
    assert await _versions(db, doc) == {1: "superseded", 2: "pending"}
    attempt = await fetch_one(db, "SELECT outcome FROM document_attempts WHERE document_id = :id", id=doc)
    assert attempt["outcome"] == "superseded"
    async with db.transaction() as conn:
        assert await lifecycle.mark_ready(conn, lease, chunk_count=1) is None, "the fenced attempt cannot finish"
    created = (await _events(db, doc))[-1]
    assert created["type"] == "document.version_created" and created["data"]["content_version"] == 2
    assert created["data"]["build_id"] == str(doc)
    await _ready(db, doc)
    assert await _versions(db, doc) == {1: "superseded", 2: "active"}


async def test_a_ready_document_gets_a_build_that_activates_in_one_transaction(db: Database) -> None:
    kb = await create_kb(db)
    doc = await create_document(db, None, kb)
    await _ready(db, doc, chunks=2)
    assert await _versions(db, doc) == {1: "active"}
    new = content_values(kb, b"new content")

    outcome = await replace_content(db, doc, new)

    assert outcome.kind == "replaced" and outcome.version == 2 and outcome.obsolete_keys == []
    build = await _build_of(db, doc, 2)
    assert (build["purpose"], build["status"], build["object_key"]) == ("replace", "queued", new["object_key"])
    assert (
        build["filename"] == (await fetch_one(db, "SELECT filename FROM documents WHERE id = :id", id=doc))["filename"]
    )
    assert await _versions(db, doc) == {1: "active", 2: "pending"}
    serving = {"ids": [doc, build["id"]]}
    assert [r["build_id"] for r in await fetch(db, SERVING_BUILDS, **serving)] == [doc]

    ready = await _ready(db, build["id"], chunks=5)

    assert ready.purge_rows == (doc,) and ready.obsolete_keys == ()
    assert [r["build_id"] for r in await fetch(db, SERVING_BUILDS, **serving)] == [build["id"]]
    row = await fetch_one(db, "SELECT * FROM documents WHERE id = :id", id=doc)
    assert (row["status"], row["served_by"], row["content_version"], row["chunk_count"]) == (
        "ready",
        build["id"],
        2,
        5,
    )
    assert row["sha256"] == new["sha256"] and row["object_key"] == new["object_key"]
    assert await _versions(db, doc) == {1: "retained", 2: "active"}
    events = await _events(db, doc)
    assert [e["type"] for e in events][-2:] == ["document.version_created", "document.version_activated"]
    assert events[-2]["data"]["sha256"] == new["sha256"], "a version event describes the new version's content"
    assert not await _events(db, build["id"]), "a build row has no events of its own"
    activated = (await _events(db, doc))[-1]
    assert activated["subject"] == str(doc) and activated["data"]["document_id"] == str(doc)
    assert activated["data"]["build_id"] == str(build["id"]) and activated["data"]["chunk_count"] == 5
    for event in await _events(db, doc):
        jsonschema.validate(event, event_schema(event["type"]), format_checker=jsonschema.FormatChecker())

    # A third version: the first is beyond VERSION_RETENTION = 1, and the second's build stops serving.
    third = content_values(kb, b"third content")
    await replace_content(db, doc, third)
    build3 = await _build_of(db, doc, 3)
    ready = await _ready(db, build3["id"])
    first = await fetch_one(
        db, "SELECT object_key FROM document_versions WHERE document_id = :id AND version = 1", id=doc
    )
    first_key = first["object_key"]
    assert ready.purge_rows == (build["id"],) and ready.obsolete_keys == (first_key,)
    assert await _versions(db, doc) == {1: "purged", 2: "retained", 3: "active"}
    old = await fetch_one(db, "SELECT status, deleted_at FROM documents WHERE id = :id", id=build["id"])
    assert old["status"] == "ready" and old["deleted_at"] is not None
    assert [r["build_id"] for r in await fetch(db, SERVING_BUILDS, ids=[doc, build["id"], build3["id"]])] == [
        build3["id"]
    ]


async def test_a_newer_replacement_supersedes_a_pending_one(db: Database) -> None:
    kb, doc, pending = await _pending_replacement(db, b"first replacement")
    lease = await claim(db, pending["id"])

    outcome = await replace_content(db, doc, content_values(kb, b"second replacement"))

    assert outcome.kind == "replaced" and outcome.version == 3 and outcome.obsolete_keys == [pending["object_key"]]
    superseded = await fetch_one(db, "SELECT status, lease_epoch FROM documents WHERE id = :id", id=pending["id"])
    assert superseded["status"] == "deleting" and superseded["lease_epoch"] > lease.epoch
    assert await _versions(db, doc) == {1: "active", 2: "superseded", 3: "pending"}
    async with db.transaction() as conn:
        assert await lifecycle.mark_ready(conn, lease, chunk_count=1) is None
    assert (await fetch_one(db, "SELECT served_by FROM documents WHERE id = :id", id=doc))["served_by"] is None


async def test_a_failed_replacement_leaves_the_document_serving_and_can_be_retried(db: Database) -> None:
    _, doc, build = await _pending_replacement(db, b"encrypted")
    lease = await claim(db, build["id"])
    async with db.transaction() as conn:
        outcome = await lifecycle.fail_or_retry(
            conn, lease, DocumentError(ErrorCode.PDF_ENCRYPTED, "encrypted"), stage="extracting", retry_delay_s=0
        )
    assert outcome == "failed"
    row = await fetch_one(db, "SELECT status, served_by, content_version FROM documents WHERE id = :id", id=doc)
    assert (row["status"], row["served_by"], row["content_version"]) == ("ready", None, 1)
    version = await fetch_one(
        db, "SELECT status, error FROM document_versions WHERE document_id = :id AND version = 2", id=doc
    )
    assert version["status"] == "failed" and version["error"]["code"] == "pdf_encrypted"
    failed = (await _events(db, doc))[-1]
    assert failed["type"] == "document.version_failed" and failed["subject"] == str(doc)
    assert failed["data"]["status"] == "ready" and failed["data"]["error"]["code"] == "pdf_encrypted"
    jsonschema.validate(failed, event_schema(failed["type"]), format_checker=jsonschema.FormatChecker())
    assert [r["build_id"] for r in await fetch(db, SERVING_BUILDS, ids=[doc, build["id"]])] == [doc]

    async with db.transaction() as conn:
        retried = await lifecycle.retry_failed(conn, doc)
    assert retried is not None and retried["id"] == doc and retried["status"] == "ready"
    again = await fetch_one(db, "SELECT status, attempts FROM documents WHERE id = :id", id=build["id"])
    assert (again["status"], again["attempts"]) == ("queued", 0)
    assert (await _versions(db, doc))[2] == "pending"
    async with db.transaction() as conn:
        assert await lifecycle.retry_failed(conn, doc) is None, "nothing failed any more"


async def test_build_stage_changes_and_reindex_builds_emit_no_events(db: Database) -> None:
    kb = await create_kb(db)
    doc = await create_document(db, None, kb)
    await _ready(db, doc)
    before = len(await _events(db, doc))
    reindex = uuid.uuid4()
    await execute(
        db,
        "INSERT INTO documents (id, knowledge_base_id, filename, original_filename, media_type, size_bytes, sha256, "
        "object_key, status, priority, max_attempts, parent_id, purpose, generation) "
        "SELECT :b, knowledge_base_id, filename, original_filename, media_type, size_bytes, sha256, object_key, "
        "'queued', 'low', 3, id, 'reindex', 2 FROM documents WHERE id = :id",
        b=reindex,
        id=doc,
    )
    ready = await _ready(db, reindex)
    assert ready == lifecycle.Ready()
    assert len(await _events(db, doc)) == before and not await _events(db, reindex)
    assert await _versions(db, doc) == {1: "active"}, "a re-index build has no version of its own"


async def test_deleting_a_document_cancels_its_builds_and_supersedes_its_versions(db: Database) -> None:
    _, doc, build = await _pending_replacement(db, b"pending replacement")
    lease = await claim(db, build["id"])

    async with db.transaction() as conn:
        assert await lifecycle.request_delete(conn, doc) is not None

    row = await fetch_one(db, "SELECT status, lease_epoch FROM documents WHERE id = :id", id=build["id"])
    assert row["status"] == "deleting" and row["lease_epoch"] > lease.epoch
    assert await _versions(db, doc) == {1: "superseded", 2: "superseded"}
    attempt = await fetch_one(db, "SELECT outcome FROM document_attempts WHERE document_id = :id", id=build["id"])
    assert attempt["outcome"] == "deleted"
    assert [e["type"] for e in await _events(db, doc)][-1] == "document.delete_requested"
    assert not await _events(db, build["id"])
    async with db.transaction() as conn:
        assert await lifecycle.finish_delete(conn, doc)
    tombstones = await fetch(
        db, "SELECT id FROM documents WHERE deleted_at IS NOT NULL AND (id = :id OR parent_id = :id)", id=doc
    )
    assert {r["id"] for r in tombstones} == {doc, build["id"]}


async def test_rescued_builds_speak_for_their_document_only_when_they_fail(db: Database) -> None:
    _, doc, build = await _pending_replacement(db, b"stalls twice")
    await execute(db, "UPDATE documents SET max_attempts = 2 WHERE id = :id", id=build["id"])
    before = len(await _events(db, doc))
    outcomes = []
    for _ in range(2):
        lease = await claim(db, build["id"])
        await execute(
            db, "UPDATE documents SET heartbeat_at = now() - interval '1 hour' WHERE id = :id", id=lease.document_id
        )
        async with db.transaction() as conn:
            outcomes.append(
                await lifecycle.rescue(conn, build["id"], epoch=lease.epoch, reason="stale", stale_after_s=60)
            )
    assert outcomes == ["requeued", "failed"]
    events = (await _events(db, doc))[before:]
    assert [e["type"] for e in events] == ["document.version_failed"], "a requeue of a build emits nothing"
    assert events[0]["data"]["error"]["code"] == "max_attempts_exceeded" and events[0]["data"]["status"] == "ready"
    assert (await _versions(db, doc))[2] == "failed"
    assert not await _events(db, build["id"])


async def test_a_replacement_whose_content_another_document_took_meanwhile_fails_instead_of_switching(
    db: Database,
) -> None:
    body = b"uploaded twice"
    kb, doc, build = await _pending_replacement(db, body)
    other = await create_document(db, None, kb, content=body)  # accepted: the replacement is not live yet
    lease = await claim(db, build["id"])
    with pytest.raises(ProcessingError) as refused:
        async with db.transaction() as conn:
            await lifecycle.mark_ready(conn, lease, chunk_count=1)
    assert refused.value.code == ErrorCode.DUPLICATE_CONTENT and str(other) in refused.value.message
    async with db.transaction() as conn:
        error = refused.value.to_document_error()
        assert await lifecycle.fail_or_retry(conn, lease, error, stage="indexing", retry_delay_s=0) == "failed"
    row = await fetch_one(db, "SELECT status, served_by, content_version FROM documents WHERE id = :id", id=doc)
    assert (row["status"], row["served_by"], row["content_version"]) == ("ready", None, 1)
    assert await _versions(db, doc) == {1: "active", 2: "failed"}
    assert (await _events(db, doc))[-1]["data"]["error"]["code"] == "duplicate_content"
